/* sft: crl's supervised warm-up — trains the base model that RL improves.
 * Draws caption / policy / critic records by a mix from the training split
 * (critic records order-balanced: half shown as is, half swapped), renders
 * them with prompt.h, encodes them with task.h, packs them without padding
 * into batches of at most sft.batch_tokens tokens, and minimises the mean
 * cross-entropy of the response tokens (+ <eos>) only, with AdamW (warm-up
 * + cosine). Owns the model, the optimizer, the batch buffers (sized once:
 * the step loop allocates no tensor memory) and the resumable data cursor;
 * writes DESIGN §8 checkpoints (runs/NAME/ckpt/step-N + `latest`).
 *
 * Layers, so tests can use each piece:
 *   sft_stream_*  deterministic record order (per-kind epoch permutations)
 *   sft_t         trainer: batch builder + step + checkpoint save / resume
 *   sft_validate  quick greedy validation (policy accuracy, critic accuracy
 *                 in both orders, position bias)
 *   sft_run       the whole `crl-learner sft` command from a crl_config_t */
#ifndef CRL_SFT_H
#define CRL_SFT_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dataset.h"
#include "model.h"
#include "prompt.h"
#include "reward.h"
#include "rng.h"
#include "tokenizer.h"

#define SFT_N_KINDS 3 /* indexed by dataset_kind_t: critic, policy, caption */

#define SFT_TRAINER_FORMAT "crl-sft-trainer"
#define SFT_TRAINER_VERSION 1

/* ---- record stream ---------------------------------------------------- */

/* Where the stream is: everything needed to continue the same record order
 * (saved in trainer.json). Plain values, copyable. */
typedef struct {
    rng_t rng;                   /* draws the kind of each record */
    uint64_t epoch[SFT_N_KINDS]; /* passes completed over each kind's pool */
    uint64_t pos[SFT_N_KINDS];   /* next index into the current pass's permutation */
    uint64_t critic_drawn;       /* critic records drawn so far (order balance) */
} sft_cursor_t;

typedef struct sft_stream sft_stream_t; /* opaque: pools + permutation cache */

/* Pools the records of n_sets datasets by kind (records without a warm-up
 * target — policy records without "reference" — are left out). mix[k] is the
 * share of kind k (dataset_kind_t); kinds with an empty pool get their share
 * spread over the others (logged). The datasets must outlive the stream.
 * NULL with a message when no kind with a positive share has records. */
sft_stream_t *sft_stream_new(const dataset_t *const *sets, int n_sets,
                             const double mix[SFT_N_KINDS], uint64_t seed, char *err,
                             size_t errlen);
void sft_stream_destroy(sft_stream_t **s);
size_t sft_stream_pool_size(const sft_stream_t *s, dataset_kind_t kind);
/* The effective mix (after empty pools were dropped), summing to 1. */
double sft_stream_mix(const sft_stream_t *s, dataset_kind_t kind);
/* Cursor at the start of the stream for a seed. */
void sft_cursor_init(sft_cursor_t *c, uint64_t seed);
/* Next record: kind by the mix, then the next record of that kind's pass
 * (each pass is a fresh permutation, a pure function of seed, kind and
 * pass number). *order gets PROMPT_ORDER_KEEP or _SWAP for critic records —
 * consecutive critic draws come in pairs of one KEEP and one SWAP, in random
 * order — and PROMPT_ORDER_KEEP otherwise. *ds gets the record's dataset. */
const dataset_record_t *sft_stream_next(sft_stream_t *s, sft_cursor_t *c, const dataset_t **ds,
                                        int *order);

/* ---- trainer ---------------------------------------------------------- */

/* One packed batch, views into the trainer's buffers (valid until the next
 * batch). */
typedef struct {
    model_batch_t mb;          /* tokens, seq_start, images for model_forward */
    const int *targets;        /* (T) token to predict at each position; -1 = no loss */
    const int *seq_kind;       /* (n_seqs) dataset_kind_t */
    const int *seq_prompt_len; /* (n_seqs) prompt tokens (image block included) */
    int n_targets;             /* positions with a target: the response tokens + <eos> */
    int n_targets_kind[SFT_N_KINDS];
    int n_seqs_kind[SFT_N_KINDS];
    int n_skipped;             /* records dropped: longer than model.max_seq_len */
} sft_batch_t;

typedef struct {
    long step;                        /* steps done, this one included */
    double loss;                      /* mean cross-entropy per target token */
    double loss_kind[SFT_N_KINDS];    /* per kind; NaN when the kind had no tokens */
    float lr;
    float grad_norm;                  /* before clipping */
    int n_tokens, n_targets, n_seqs, n_skipped;
} sft_step_stats_t;

typedef struct sft sft_t; /* opaque */

/* A trainer for cfg (model.*, sft.*, data.critic_variant /
 * data.verdict_labels, run.seed) on the records of `train`. The model is
 * built from cfg->model with vocab_size = tok_vocab_size(tok) and randomly
 * initialised from run.seed. tok and the datasets are borrowed (they must
 * outlive the trainer). NULL with a message naming the key on error. */
sft_t *sft_new(const crl_config_t *cfg, const tokenizer_t *tok, const dataset_t *const *train,
               int n_train, char *err, size_t errlen);
void sft_destroy(sft_t **s);

model_t *sft_model(sft_t *s);
const tokenizer_t *sft_tokenizer(const sft_t *s);
long sft_steps_done(const sft_t *s);
const sft_cursor_t *sft_cursor(const sft_t *s);
/* Tokens trained on so far (all tokens of all batches). */
uint64_t sft_tokens_seen(const sft_t *s);
/* Seconds of training before this process (from a resumed checkpoint). */
double sft_elapsed_before(const sft_t *s);
/* Total steps the learning-rate schedule runs to (sft.steps). */
long sft_total_steps(const sft_t *s);

/* Builds the next batch from the stream, advancing the cursor (what
 * sft_step does first). 0 or negative errno (-E2BIG: no record fits). */
int sft_next_batch(sft_t *s, sft_batch_t *out);
/* One training step: next batch, forward, cross-entropy on targets,
 * backward, AdamW. 0 or negative errno (a NaN/Inf gradient is not an
 * error: the update is skipped by the optimizer and reported). */
int sft_step(sft_t *s, sft_step_stats_t *st);
/* Mean cross-entropy per target token of a batch under the current model,
 * without training (for tests). NAN on error. */
double sft_batch_loss(sft_t *s, const sft_batch_t *b);

/* Writes root/step-N (N = steps done): model.safetensors, config.json,
 * optimizer.safetensors, tokenizer.json, trainer.json and run_config.json
 * (the effective crl config); written into root/.tmp-step-N, fsynced,
 * renamed, then root/latest is pointed at it (symlink, replaced atomically).
 * `extra_json` (may be NULL) is a JSON object text stored under "extra" in
 * trainer.json (e.g. the last validation figures). 0 or negative errno. */
int sft_save(const sft_t *s, const char *root, const crl_config_t *cfg, double elapsed_s,
             const char *extra_json, char *err, size_t errlen);
/* Loads model, optimizer and trainer state from a checkpoint folder made by
 * sft_save (the model's config must match this trainer's: errors name the
 * key). The tokenizer is not reloaded: the caller loads ckpt/tokenizer.json
 * before sft_new. 0 or negative errno. */
int sft_load(sft_t *s, const char *dir, char *err, size_t errlen);

/* ---- validation ------------------------------------------------------- */

typedef struct {
    int policy_items;   /* the first this many policy records, answered greedily (0 = skip) */
    int critic_pairs;   /* the first this many critic records, each judged in both orders */
    int caption_items;  /* the first this many caption records, captioned greedily (0 = skip) */
    int max_new_tokens; /* per answer */
    int n_threads;      /* eval workers, items in parallel (0 = the training threads) */
} sft_val_options_t;

typedef struct {
    int policy_n;
    double policy_acc;     /* boxed answer == ground truth */
    double policy_format;  /* <think>..</think>\boxed{..} */
    double policy_sample_acc; /* one sample at temperature 1 */
    char policy_by_type[640]; /* "count_color 0.25, exists 0.60, ..." for the log */
    int critic_n;          /* pairs */
    double critic_acc;     /* over the 2 * critic_n judgements */
    double critic_both;    /* pairs judged right in both orders */
    double critic_says_a;  /* share of judgements with a verdict that name the first answer */
    double critic_format;
    double critic_no_verdict; /* share of judgements naming no label */
    int caption_n;
    double caption_recall; /* caption sentences reproduced: what the model sees, apart
                              from what it does with it (eval_caption) */
    double seconds;
} sft_val_result_t;

/* 200 policy items, 100 pairs, 50 captions, 96 new tokens, threads as training. */
void sft_val_options_default(sft_val_options_t *o);
/* Quick validation through eval.h (eval_policy, eval_critic) of m on the
 * first records of `policy` and `critic` (either may be NULL), with the
 * critic variant of popt and the labels of rcfg. 0 or negative errno. */
int sft_validate(const model_t *m, const tokenizer_t *tok, const dataset_t *policy,
                 const dataset_t *critic, const dataset_t *captions, const prompt_options_t *popt,
                 const reward_config_t *rcfg, const sft_val_options_t *opt, sft_val_result_t *out);

/* ---- the command ------------------------------------------------------ */

typedef struct {
    int val_every;           /* steps between validations (0 = only at the end) */
    sft_val_options_t val;
    long stop_after;         /* stop (with a checkpoint) after this many steps of
                                this invocation; 0 = run to sft.steps */
    volatile sig_atomic_t *stop; /* set asynchronously (SIGINT): checkpoint and return */
    int quiet;               /* no progress line */
} sft_run_options_t;

typedef struct {
    long steps_done;
    double final_loss;      /* mean over the last few steps */
    double first_loss;      /* mean over the first few steps of this invocation */
    double tokens_per_s;    /* this invocation */
    int resumed;            /* 1: continued from a checkpoint */
    int validated;          /* val below is filled */
    sft_val_result_t val;   /* last validation */
    char ckpt_dir[2 * CONFIG_PATH_LEN + 96]; /* the final checkpoint (the base model) */
} sft_summary_t;

void sft_run_options_default(sft_run_options_t *o);
/* The warm-up of a run: data (generates the built-in world in data.dir
 * when its train files are missing), tokenizer (loads tokenizer.path /
 * data.dir/tokenizer.json, else trains and saves one), model (resumes
 * from run.dir/run.name/ckpt/latest when present), the training loop with
 * metrics.jsonl, progress, periodic validation and checkpoints.
 * 0 on success; negative errno with the problem (file, key) in err. */
int sft_run(const crl_config_t *cfg, const sft_run_options_t *opt, sft_summary_t *sum, char *err,
            size_t errlen);

#endif
