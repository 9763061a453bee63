/* eval: held-out evaluation of a model as a policy (greedy accuracy, mean
 * accuracy over N samples, format rate, length), as a critic (every pair
 * judged greedily in both orders: accuracy, both-orders-right, position
 * bias) and as its own judge at test time (self-critique: best-of-N by a
 * knockout tournament of the model's own pairwise verdicts, beside single
 * sample, majority vote and oracle over the same N samples).
 * An eval context owns, per worker thread, a sampler sized once and every
 * scratch buffer, so the per-item loops encode each prompt once and
 * allocate only the prompt strings. Items are spread over the workers and
 * results gathered in item order, with a random stream per item, so every
 * figure is the same whatever the number of threads. Per-item outcomes are
 * kept so that two models can be compared on the same items (stats.h).
 * A context is used by one caller thread at a time. */
#ifndef CRL_EVAL_H
#define CRL_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "model.h"
#include "prompt.h"
#include "reward.h"
#include "rng.h"
#include "tokenizer.h"

#define EVAL_MAX_NS 8 /* entries of a self-critique N list */

/* What the tournament does when the two orders of a match do not name the
 * same winner (they disagree, or a verdict is invalid). The candidates are
 * sampled i.i.d., so "the lower index" is an arbitrary but deterministic
 * and unbiased choice: it does not favour either shown position. */
typedef enum {
    /* both orders judged; a split or invalid verdict -> the lower index wins */
    EVAL_TOURNEY_BOTH_ELSE_FIRST = 0,
    /* both orders judged; if exactly one order gave a valid verdict, it
     * decides; a real split (or two invalid) -> the lower index wins */
    EVAL_TOURNEY_BOTH_ELSE_VALID = 1,
    /* one judgement per match, lower index shown first (cheaper, exposed to
     * position bias; for comparison); invalid -> the lower index wins */
    EVAL_TOURNEY_ONE_ORDER = 2,
} eval_tourney_rule_t;

typedef struct {
    int max_new_tokens;       /* longest response (policy answer or verdict); 64 */
    int max_group;            /* largest G the sampler is sized for; 8 */
    float top_p;              /* nucleus for sampled evaluation; 1 = off */
    prompt_critic_variant_t variant; /* critic prompt variant (also the self-critique judge) */
    reward_config_t reward;   /* labels, weights; prompt labels are taken from it */
    eval_tourney_rule_t tourney_rule;
    /* worker threads, each with its own sampler, evaluating different
     * items at once. The matrices of one decode step are small (G <= 8
     * rows), so items in parallel scale far better than a multi-threaded
     * BLAS: with n_threads > 1 the caller should run OpenBLAS with one
     * thread (openblas_set_num_threads(1)). */
    int n_threads;
} eval_options_t;

/* 64 new tokens, G <= 8, top_p 1, FULL variant, default reward config,
 * EVAL_TOURNEY_BOTH_ELSE_FIRST, 1 thread. */
void eval_options_default(eval_options_t *opt);

typedef struct eval_ctx eval_ctx_t;

/* The context evaluates m (read-only; its weights are read at each call,
 * so a model trained in place between calls is evaluated as it is then)
 * with tok. Each of the n_threads workers gets a sampler sized for
 * prompts of up to max_seq_len - max_new_tokens tokens and groups of up to
 * max_group. NULL on bad options (tokenizer larger than the model's
 * vocabulary, no room for a prompt, ...) or out of memory, with a message
 * in err. */
eval_ctx_t *eval_new(const model_t *m, const tokenizer_t *tok, const eval_options_t *opt,
                     char *err, size_t errlen);
void eval_destroy(eval_ctx_t **ctx);
/* Evaluates another model of the same configuration from now on (e.g. a
 * baseline checkpoint); 0 or -EINVAL when the configuration differs. */
int eval_set_model(eval_ctx_t *ctx, const model_t *m);

/* ---- policy ---- */

typedef struct {
    size_t n_items;      /* policy records evaluated */
    int n_samples;
    double greedy_acc;   /* temperature 0, one sample per question */
    double greedy_format;
    double greedy_len;   /* mean response tokens (eos included when emitted) */
    double sample_acc;   /* mean over n_samples samples per question ("mean@N") */
    double sample_format;
    double sample_len;
    double pass_at_n;    /* any of the n_samples right */
    double majority_acc; /* majority vote of the n_samples boxed answers */
} eval_policy_result_t;

/* Per-item outcomes, arrays of n (items) or n * n_samples entries.
 * Allocated by eval_policy, freed by eval_policy_items_free. */
typedef struct {
    size_t n;
    int n_samples;
    size_t *record;          /* (n) dataset index of the item */
    uint8_t *greedy_correct; /* (n) */
    uint8_t *greedy_format;  /* (n) */
    uint8_t *sample_correct; /* (n, n_samples) */
    char **answers;          /* (n, n_samples) normalised boxed answer; NULL = no box */
    uint64_t *sample_hash;   /* (n, n_samples) FNV-1a of the sampled token ids (equal samples,
                              * reproducibility checks) */
    int *majority;           /* (n) sample index representing the vote; -1 = no answer */
} eval_policy_items_t;
void eval_policy_items_free(eval_policy_items_t *it);

/* Evaluates the POLICY records of ds (other kinds are passed over), at
 * most max_items of them (0 = all) in file order. n_samples in
 * [0, max_group] samples per question at `temperature` (> 0; all n in one
 * generate call); n_samples = 0 is greedy only (cheap, e.g. validation
 * during training; rng may then be NULL and the sample figures are 0).
 * Randomness: one draw from rng seeds a stream per item
 * (rng_seed_stream(base, record index)), so an item's samples do not
 * depend on the items before it — two models compared on the same items
 * with equally seeded rngs share their random numbers item by item.
 * items may be NULL. 0 or negative errno (a
 * prompt longer than the model's context is -E2BIG, logged with the
 * record's id). */
int eval_policy(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items, int n_samples,
                float temperature, rng_t *rng, eval_policy_result_t *res,
                eval_policy_items_t *items);

/* ---- captions (perception) ---- */

typedef struct {
    size_t n_items;      /* caption records evaluated */
    double claim_recall; /* reference sentences reproduced verbatim, over all items */
    double exact;        /* captions whose sentence list equals the reference */
    double mean_len;     /* mean response tokens */
} eval_caption_result_t;

/* Sentences of `ref` (split at '.', trimmed, empty ones ignored) that
 * appear as whole sentences of `gen`, each sentence of gen used at most
 * once. *matched and *total receive the counts; returns 1 when gen has
 * exactly ref's sentences in ref's order, else 0. */
int eval_caption_match(const char *ref, const char *gen, int *matched, int *total);

/* Greedy captions of the CAPTION records of ds (at most max_items, 0 =
 * all) under the caption prompt, scored by eval_caption_match against the
 * record's caption: how much of a scene the model reads right, apart from
 * what it does with it. 0 or negative errno. */
int eval_caption(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items,
                 eval_caption_result_t *res);

/* ---- critic ---- */

typedef struct {
    size_t n_pairs;
    size_t n_judgements;  /* 2 * n_pairs: KEEP and SWAP order */
    double accuracy;      /* over all judgements */
    double both_right;    /* pairs right in both orders */
    size_t n_valid;       /* judgements whose verdict names one of the labels */
    double says_first;    /* of the n_valid verdicts, those naming the first-shown label
                           * (0.5 = no position bias); NaN when n_valid = 0 */
    double invalid_rate;  /* verdicts naming neither label (incl. no box) */
    double format_rate;
    double mean_len;      /* response tokens */
} eval_critic_result_t;

typedef struct {
    size_t n;
    size_t *record;    /* (n) dataset index */
    uint8_t *right;    /* (n, 2) [KEEP, SWAP] verdict names the preferred answer */
    int8_t *verdict;   /* (n, 2) label index named (0 = first shown), -1 invalid */
    uint8_t *both;     /* (n) right in both orders */
} eval_critic_items_t;
void eval_critic_items_free(eval_critic_items_t *it);

/* Judges each CRITIC record of ds (at most max_items, 0 = all) greedily in
 * both orders. items may be NULL. 0 or negative errno. */
int eval_critic(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items,
                eval_critic_result_t *res, eval_critic_items_t *items);

/* ---- self-critique ---- */

/* Judge callback: i shown first, j second; returns i or j (the winner), or
 * -1 for no valid verdict. */
typedef int (*eval_judge_fn)(void *judge_ctx, int i, int j);

/* Knockout tournament over candidates 0..n-1: round by round, neighbours
 * (0,1), (2,3), ... meet, an odd one out gets a bye, winners keep their
 * order. Each match is judged per `rule` (see eval_tourney_rule_t).
 * Returns the winner (0 for n == 1, no judge call), or -1 for n < 1.
 * *n_calls / *n_splits (may be NULL) get the judge calls made and the
 * matches whose orders did not agree. */
int eval_tournament(int n, eval_tourney_rule_t rule, eval_judge_fn judge, void *judge_ctx,
                    int *n_calls, int *n_splits);

/* Majority vote over n normalised answers (NULL = no answer, no vote).
 * Ties go to the answer whose first occurrence comes first. Returns the
 * index of the first sample holding the winning answer, -1 if none. */
int eval_majority(const char *const *answers, int n);

typedef struct {
    int n;                /* N */
    double tourney_acc;   /* the tournament's pick is right */
    double single_acc;    /* mean over the N samples */
    double majority_acc;
    double oracle_acc;    /* any of the N right */
    double split_rate;    /* matches whose two orders disagreed (or were invalid) */
} eval_sc_row_t;

typedef struct {
    size_t n_items;
    int n_ns;
    eval_sc_row_t rows[EVAL_MAX_NS];
    size_t judge_calls;   /* judge generations actually run (memoised across N) */
} eval_sc_result_t;

typedef struct {
    size_t n;
    int n_ns;
    size_t *record;         /* (n) */
    uint8_t *tourney;       /* (n, n_ns) the pick of N = ns[k] is right */
    uint8_t *majority;      /* (n, n_ns) */
    uint8_t *oracle;        /* (n, n_ns) */
    uint8_t *n_right;       /* (n, n_ns) right answers among the first N (single = n_right / N) */
    uint8_t *first;         /* (n) sample 0 is right (a single sample, paired) */
} eval_sc_items_t;
void eval_sc_items_free(eval_sc_items_t *it);

/* For each POLICY record (at most max_items), samples max(ns) answers in
 * one generate call at `temperature` (per-item streams as in eval_policy),
 * and for each N in ns (n_ns <=
 * EVAL_MAX_NS, each in [1, max_group]) picks among the first N by a
 * tournament judged by the model itself with the critic prompt (greedy
 * verdicts, memoised per item so N = 2, 4, 8 share their matches).
 * items may be NULL. 0 or negative errno. */
int eval_self_critique(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items, const int *ns,
                       int n_ns, float temperature, rng_t *rng, eval_sc_result_t *res,
                       eval_sc_items_t *items);

#endif
