/* grpo: everything numeric of a GRPO update — rewards and group advantages,
 * the decoupled-PPO loss (IS weight to the behaviour policy, clip around the
 * learner's own pre-update policy, dual clip, k3 KL to a frozen reference)
 * and its gradient, the packed forward/backward and the AdamW step — plus
 * grpo_rollout_group, the one function that turns (policy, prompt(s), image,
 * G, sampling settings, seed) into a group, used by actors and by in-process
 * tests alike. A grpo_t owns the batch buffers and activations, sized once by
 * grpo_new; it is used by one thread at a time (the learner's compute thread).
 *
 * Objective (DESIGN.md §4), per response token t of sample i:
 *   A_i   = (r_i - mean(r)) / (std(r) + 1e-6)     population std over the group
 *   w     = min(exp(logp_prox - logp_behav), is_cap)               (detached)
 *   ratio = exp(logp_new - logp_prox)        logp_prox = logp_new detached
 *   surr  = min(ratio*A, clip(ratio, 1-clip_low, 1+clip_high)*A)
 *   pg    = A < 0 ? max(surr, dual_clip*A) : surr
 *   k3    = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1
 *   loss  = mean over all kept response tokens of ( -w*pg + kl_coef*k3 ).
 * Log-probs are of softmax(logits / rl.temperature), on both sides. */
#ifndef CRL_GRPO_H
#define CRL_GRPO_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "model.h"
#include "optim.h"
#include "reward.h"
#include "sampler.h"
#include "tokenizer.h"

/* One trajectory group, learner side. Nothing is owned: every pointer must
 * stay valid for the duration of the call it is passed to. */
typedef struct {
    const int *prompt[2];        /* prompt token ids (image slots -1) for prompt_index 0 / 1 */
    int prompt_len[2];           /* prompt_len[1] = 0 when no alt prompt */
    const uint8_t *image;        /* (3, S, S) or NULL */
    int G;
    const int *prompt_index;     /* (G) 0 or 1 */
    const int *const *tokens;    /* (G) response tokens of each sample (eos included if hit) */
    const int *len;              /* (G) */
    const float *const *logp;    /* (G) behaviour log-probs, per token */
    uint64_t version;            /* weights version that generated it */
    reward_task_t task;          /* critic or policy */
    const char *expected[2];     /* expected verdict label / answer for prompt 0 / 1 */
} grpo_group_t;

typedef struct {
    /* loss terms, means over the response tokens of the kept (non-skipped) samples */
    double loss;                 /* the optimised scalar */
    double pg_loss;              /* mean of -w*pg */
    double kl;                   /* mean k3 (0 when rl.kl_coef == 0: no reference forward) */
    double entropy;              /* mean entropy of softmax(logits / temperature) */
    double clip_fraction;        /* tokens whose PPO gradient is cut by the clip or dual clip */
    double dual_clip_fraction;   /* tokens where the dual clip binds (A < 0) */
    double is_weight_mean;       /* mean w */
    double is_capped_fraction;   /* tokens with exp(logp_prox - logp_behav) > is_cap */
    double ratio_max;            /* largest exp(logp_new - logp_prox) (1 in a one-step update) */
    double grad_norm;            /* pre-clip global gradient norm (0 when no update was taken) */
    double lr;                   /* learning rate of this step */
    /* rollout quality, over all samples of all groups (skipped ones too) */
    double reward_mean;
    double preference_acc;       /* mean preference (critic) / accuracy (policy) */
    double format_rate;
    double response_len_mean;    /* tokens */
    double says_first_rate;      /* critic samples whose verdict names the first shown label,
                                    among critic samples with a verdict; -1 if none */
    double staleness_mean;       /* learner_version - group version */
    double staleness_max;
    /* max |logp_prox - logp_behav| over the kept samples whose version ==
     * learner_version: actors and learner run the same kernels, so this must
     * be ~0 (<= 1e-5). -1 when no such sample. */
    double max_logp_diff_onpolicy;
    double max_logp_diff;        /* the same over every kept sample (any version) */
    long tokens;                 /* response tokens in the loss */
    long forward_tokens;         /* packed tokens through the model (prompts included) */
    int samples;                 /* all samples */
    int samples_used;            /* samples in the loss */
    int groups_used;
    int groups_skipped;          /* zero-variance groups left out of forward/backward */
    int micro_batches;
    int updated;                 /* 1: an AdamW step was taken; 0: nothing to learn from
                                    (every group skipped) or a non-finite gradient */
    double seconds;              /* wall time of grpo_step */
} grpo_stats_t;

typedef struct grpo grpo_t;      /* buffers sized once */

/* Sizes every buffer for rl.groups_per_step * rl.group_size sequences of up
 * to model.max_seq_len tokens, processed in micro-batches of at most
 * rl.micro_batch_tokens tokens (gradients accumulate across them). Builds the
 * reward config from rl.reward_w_pref / rl.reward_w_format and
 * data.verdict_labels. tok is borrowed (must outlive the grpo_t). NULL on
 * error, with a message in err. */
grpo_t *grpo_new(const model_t *policy, const crl_config_t *cfg, const tokenizer_t *tok, char *err,
                 size_t errlen);
void grpo_destroy(grpo_t **g);

/* AdamW settings of an RL run: adamw_config_default() with rl.lr,
 * rl.weight_decay and rl.grad_clip. */
adamw_config_t grpo_adamw_config(const crl_config_t *cfg);

/* The reward config grpo_new built (for logs and tests). */
const reward_config_t *grpo_reward_config(const grpo_t *g);

/* Scores every sample (decode tokens -> text -> reward_score against
 * expected[prompt_index]), fills rewards/preference/format (G each) and
 * advantages (G) = (r - mean) / (std + 1e-6) within the group, population
 * std (divide by G), computed in double. A group whose rewards are all equal
 * gets advantages exactly 0 (that is how grpo_step recognises it). Any of
 * preference / format may be NULL. 0 or negative errno (bad group, decode or
 * reward error; the message is logged). */
int grpo_score_group(grpo_t *g, const grpo_group_t *grp, float *rewards, float *preference,
                     float *format, float *advantages);

/* Advantages alone from G rewards (same rule as grpo_score_group). */
void grpo_advantages(const float *rewards, int G, float *advantages);

/* One update of policy (which must have gradients) from n_groups groups with
 * their advantages (as computed by grpo_score_group). Forward of the current
 * policy over all kept samples ([prompt ; response] packed, targets at the
 * response positions), logp_prox = those log-probs detached, the loss above,
 * backward, one adamw_step. A group whose advantages are all 0 is skipped
 * from forward/backward when rl.skip_zero_variance (counted in
 * groups_skipped; the KL term then only covers the kept samples). ref is the
 * frozen reference model (same config), used only when rl.kl_coef > 0 (may
 * be NULL otherwise). Groups are also re-scored for the reward statistics.
 * Deterministic: the same inputs in the same order (and the same
 * rl.micro_batch_tokens and OpenBLAS thread count, which fix the summation
 * order) give bit-identical weights. When every group is skipped (or has
 * no response token) no AdamW step is taken (stats->updated = 0): a zero
 * gradient would still move the weights through momentum and decay.
 * stats may be NULL. 0 or negative errno (-EINVAL: a group that
 * does not fit the buffers or is malformed; nothing is changed then). */
int grpo_step(grpo_t *g, model_t *policy, const model_t *ref, adamw_t *opt,
              const grpo_group_t *groups, const float *const *advantages, int n_groups,
              uint64_t learner_version, grpo_stats_t *stats);

/* ---- the per-token loss, exposed for tests ---- */

typedef struct {
    float clip_low, clip_high;   /* ratio clipped to [1 - clip_low, 1 + clip_high] */
    float dual_clip;             /* c > 1: for A < 0, pg = max(surr, c*A) */
    float is_cap;                /* w = min(exp(logp_prox - logp_behav), is_cap) */
    float kl_coef;               /* 0: no KL term (logp_ref may be NULL) */
} grpo_loss_params_t;

typedef struct {                 /* counts over the n tokens of one call (added to) */
    double pg_sum;               /* sum of -w*pg */
    double kl_sum;               /* sum of k3 */
    double w_sum;
    long clipped;                /* PPO gradient cut by the clip (either side) or dual clip */
    long dual_clipped;
    long is_capped;
    double ratio_max;
    double max_abs_prox_behav;   /* max |logp_prox - logp_behav| */
} grpo_token_acc_t;

/* For n tokens: token loss l_t = -w_t*pg_t + kl_coef*k3_t (formulas at the
 * top), with logp_prox and logp_behav held fixed, and its gradient
 * dlogp[t] = scale * d l_t / d logp_new[t]:
 *   d(-w*pg)/dlogp_new = -w*A*ratio when the unclipped term ratio*A is the
 *   active one (ties go to it), 0 when the clip or the dual clip binds;
 *   d(k3)/dlogp_new    = 1 - exp(logp_ref - logp_new).
 * adv holds one advantage per token. logp_ref may be NULL when kl_coef == 0.
 * Returns scale * sum_t l_t; acc (may be NULL) is accumulated into. Computed
 * in double (exp, expm1 of libm) from the float inputs; dlogp is rounded to
 * float at the end. dlogp may be NULL (loss only). */
double grpo_token_loss_grad(const grpo_loss_params_t *p, int n, const float *logp_new,
                            const float *logp_prox, const float *logp_behav,
                            const float *logp_ref, const float *adv, float scale, float *dlogp,
                            grpo_token_acc_t *acc);

/* ---- rollouts: the single function actors and tests sample groups with ---- */

typedef struct {
    const int *prompt[2];        /* main prompt, alt prompt (other answer order) or NULL */
    int prompt_len[2];           /* prompt_len[1] = 0 without alt */
    int alt_count;               /* the LAST alt_count samples continue prompt[1]; 0 without alt */
    const uint8_t *image;        /* (3, S, S) or NULL (text-only prompt) */
    int G;
    float temperature;
    float top_p;
    int max_new_tokens;
    uint64_t seed;               /* grant seed: prompt k samples with rng_seed_stream(seed, k) */
} grpo_rollout_request_t;

/* Output buffers of one group (plain struct; allocate with grpo_rollout_new). */
typedef struct {
    int G_cap, max_new_cap;
    int G;
    int max_new;                 /* row stride of tokens / logp (== max_new_cap) */
    int *tokens;                 /* (G_cap, max_new_cap) */
    float *logp;                 /* (G_cap, max_new_cap) behaviour log-probs */
    int *len;                    /* (G_cap) */
    int *prompt_index;           /* (G_cap) 0 or 1 */
    int *finished_by_eos;        /* (G_cap) 1 when the last token is TOK_EOS */
    const int **token_rows;      /* (G_cap) row pointers, for grpo_group_t */
    const float **logp_rows;     /* (G_cap) */
    float *image_f;              /* (3, S, S) scratch for the float image (NULL if S == 0) */
    int image_size;
} grpo_rollout_t;

/* Buffers for groups of up to G_cap samples of up to max_new tokens, images
 * of image_size (0 = text only). max_new must equal the sampler's
 * (sampler_max_new): sampler_generate writes rows of that stride, and
 * grpo_rollout_group refuses a mismatch. NULL on bad sizes or out of memory. */
grpo_rollout_t *grpo_rollout_new(int G_cap, int max_new, int image_size);
void grpo_rollout_destroy(grpo_rollout_t **r);

/* Samples one group exactly as an actor does for a grant: the first
 * G - alt_count samples continue prompt[0] with an rng seeded
 * rng_seed_stream(seed, 0), the last alt_count continue prompt[1] with
 * rng_seed_stream(seed, 1); eos = TOK_EOS (kept in the output), banned
 * TOK_IMG, TOK_IMG_END, TOK_PAD; log-probs of softmax(logits/temperature).
 * The sampler must have been made for policy with max_prompt >= each
 * prompt_len, max_new >= max_new_tokens and max_group >= G. 0 or negative
 * errno (bad request, sizes beyond the buffers, sampler error). */
int grpo_rollout_group(const model_t *policy, sampler_t *s, const grpo_rollout_request_t *req,
                       grpo_rollout_t *out);

/* Fills a learner-side group view over a rollout (pointers into req and out;
 * both must outlive grp). expected[k] is the verdict label / answer of
 * prompt k (expected[1] may be NULL without alt). */
void grpo_rollout_as_group(const grpo_rollout_request_t *req, const grpo_rollout_t *out,
                           uint64_t version, reward_task_t task, const char *const expected[2],
                           grpo_group_t *grp);

#endif
