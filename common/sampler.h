/* sampler: fast generation for rollouts and evaluation. Prefills a prompt
 * once, shares its KV cache across G samples and decodes the G samples
 * together (one matrix product per layer per step). Owns the KV cache and all
 * decode buffers, sized once at creation; generation allocates nothing. */
#ifndef CRL_SAMPLER_H
#define CRL_SAMPLER_H

#include "model.h"
#include "rng.h"

typedef struct {
    float temperature;   /* 0 = greedy */
    float top_p;         /* nucleus; 1 = off */
    int max_new_tokens;  /* per sample */
    int eos_id;          /* stops a sample (the eos token is kept in its output) */
    const int *banned;   /* tokens never sampled (e.g. <img>, </img>, <pad>) */
    int n_banned;
} sample_params_t;

typedef struct sampler sampler_t;

/* max_prompt: longest prompt (image slots included); max_new: longest
 * response; max_group: largest G. NULL on bad sizes or out of memory. */
sampler_t *sampler_new(const model_t *m, int max_prompt, int max_new, int max_group);
void sampler_destroy(sampler_t **s);

/* Generates G samples continuing one prompt (tokens may hold image slots;
 * image is (3, S, S) or NULL). Writes out_tokens[g*max_new + i],
 * out_logp[g*max_new + i] and out_len[g]. out_logp is the log-probability of
 * the chosen token under the full softmax(logits / temperature) — what the
 * learner recomputes — not the top-p-renormalised or ban-masked one; for
 * greedy (temperature 0) it is taken at temperature 1.
 * Slots past out_len[g] hold token -1 and log-prob 0. eos_id < 0 means no
 * eos. Temperatures in (0, 1e-3) are refused (logits / T would overflow).
 * An image is ignored when the prompt has no image slots.
 * Returns 0, or negative errno on bad arguments (with a log line). */
int sampler_generate(sampler_t *s, const model_t *m, const int *prompt, int prompt_len,
                     const float *image, int G, const sample_params_t *p, rng_t *rng,
                     int *out_tokens, float *out_logp, int *out_len);

/* The max_new given to sampler_new: the row stride of out_tokens / out_logp. */
int sampler_max_new(const sampler_t *s);

/* Logits (G, V) of the most recent decode step (for tests and the critic
 * judge). A sample that has stopped keeps the logits its eos was drawn from. */
const float *sampler_last_logits(const sampler_t *s);

#endif
