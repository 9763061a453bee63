/* rl_data: the learner's prompt source for GRPO — the training split's
 * critic and policy records (data.dir/<data.train>.critic.jsonl,
 * .policy.jsonl, and the mixed <data.train>.jsonl when present), a
 * deterministic order (per-pool epoch permutations that are a pure
 * function of run.seed, pool and epoch; the kind of each prompt drawn by
 * rl.task_mix_critic from the cursor's rng), and the encoded prompt of a
 * record (prompt.h text, task.h tokens): critic prompts order-balanced
 * when rl.order_balanced (main prompt KEEP, alt prompt SWAP, alt_count =
 * G/2), otherwise one order drawn from the cursor's rng.
 *
 * Owns the datasets and the pools; the tokenizer is borrowed. The cursor
 * (position in the order) is a plain struct saved in trainer.json. */
#ifndef CRL_RL_DATA_H
#define CRL_RL_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "learner_io.h"
#include "rng.h"
#include "tokenizer.h"

#define RLD_POOL_CRITIC 0
#define RLD_POOL_POLICY 1
#define RLD_N_POOLS 2

typedef struct {
    rng_t rng;                   /* kind draws and (unbalanced) critic orders */
    uint64_t epoch[RLD_N_POOLS]; /* passes completed over each pool */
    uint64_t pos[RLD_N_POOLS];   /* next index into the current pass's permutation */
} rld_cursor_t;

typedef struct rld rld_t;

/* Loads the training split at the model's image size (mc->image_size)
 * with cfg->data.* (on_error, critic_variant, verdict_labels) and builds
 * the pools. With the FINAL_ONLY critic variant, pairs whose two final
 * answers are equal (nothing to judge) are left out, counted and logged
 * once. NULL with a message naming the file / key when there is no usable
 * record for the configured mix. */
rld_t *rld_new(const crl_config_t *cfg, const model_config_t *mc, const tokenizer_t *tok,
               char *err, size_t errlen);
void rld_destroy(rld_t **d);

/* Cursor at the start of the order for run.seed. */
void rld_cursor_init(rld_cursor_t *c, uint64_t seed);
rld_cursor_t rld_get_cursor(const rld_t *d);
void rld_set_cursor(rld_t *d, const rld_cursor_t *c);

/* The next prompt in the order (records whose prompt does not fit
 * model.max_seq_len are skipped and counted). NULL with err set when no
 * record at all can be encoded. Caller owns the reference. */
lio_prompt_t *rld_next(rld_t *d, char *err, size_t errlen);
/* The prompt of pool record `index` in a given order (PROMPT_ORDER_KEEP /
 * _SWAP; ignored for policy and balanced critic prompts) — to rebuild the
 * prompts a checkpoint listed for re-granting. NULL with err set. */
lio_prompt_t *rld_make(rld_t *d, int pool, uint64_t index, int order, char *err, size_t errlen);

size_t rld_pool_size(const rld_t *d, int pool);
size_t rld_skipped_equal(const rld_t *d);  /* FINAL_ONLY pairs with equal final answers */
size_t rld_skipped_long(const rld_t *d);   /* draws skipped: prompt too long */

#endif
