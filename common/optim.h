/* optim: AdamW for the model's single parameter buffer, with global
 * gradient-norm clipping and a warm-up + constant / cosine learning-rate
 * schedule. Owns the two Adam moment buffers (same layout as model params,
 * one allocation each) and the step counter — the state a checkpoint saves. */
#ifndef CRL_OPTIM_H
#define CRL_OPTIM_H

#include "model.h"

enum { OPTIM_SCHED_CONSTANT = 0, OPTIM_SCHED_COSINE = 1 };

typedef struct {
    float lr;            /* peak learning rate */
    float beta1, beta2;  /* Adam moment decays, in [0, 1) */
    float eps;           /* added to sqrt(v_hat), > 0 */
    float weight_decay;  /* decoupled; applied only to tensors with decay = 1 */
    float grad_clip;     /* max global L2 norm of the gradient; <= 0: no clipping */
    long warmup_steps;   /* linear warm-up length (0 = none) */
    long total_steps;    /* cosine: the step at which lr reaches min_lr_ratio*lr */
    int schedule;        /* OPTIM_SCHED_CONSTANT or OPTIM_SCHED_COSINE */
    float min_lr_ratio;  /* cosine floor as a fraction of lr, in [0, 1] */
} adamw_config_t;

typedef struct adamw adamw_t;

/* Defaults of the LLaVA-Critic-R1 recipe (DESIGN.md §4): beta 0.9/0.999,
 * eps 1e-8, weight decay 1e-2, clip 1.0, constant lr 1e-5, no warm-up. */
adamw_config_t adamw_config_default(void);
/* Checks a configuration; on error writes a message naming the field. 0 = ok. */
int adamw_config_validate(const adamw_config_t *cfg, char *err, size_t errlen);

/* Learning rate for the 0-based step `step` (the step about to be taken):
 * warm-up: lr * (step+1) / warmup_steps for step < warmup_steps; then
 * constant lr, or cosine from lr at step = warmup_steps down to
 * min_lr_ratio*lr at step = total_steps (and flat after it). */
float adamw_lr_at(const adamw_config_t *cfg, long step);

/* Moments zeroed, step 0. The config is copied. NULL on a bad config, a model
 * without gradients, or out of memory. */
adamw_t *adamw_new(const model_t *m, const adamw_config_t *cfg);
void adamw_destroy(adamw_t **p);

/* Global L2 norm of m->grads (accumulated in double). */
float adamw_grad_norm(const model_t *m);

/* One AdamW step on m->params from m->grads: clips by the global gradient
 * norm (the gradient buffer itself is left unchanged; the clip factor
 * grad_clip / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_, is applied
 * on the fly), decays tensors with decay = 1 by lr*weight_decay (decoupled,
 * as torch.optim.AdamW), updates the moments, applies the bias-corrected
 * Adam update at lr = adamw_lr_at(cfg, steps) and increments the step count.
 * Returns the pre-clip gradient norm; a NaN/Inf norm skips the update (the
 * step count does not move) and is returned so the caller can log it.
 * m must have the layout adamw_new saw (same n_params). */
float adamw_step(adamw_t *opt, model_t *m);

/* Moment buffers (n_params floats, model layout) for checkpoints. */
float *adamw_m(adamw_t *opt);
float *adamw_v(adamw_t *opt);
size_t adamw_n_params(const adamw_t *opt);
long adamw_steps(const adamw_t *opt);
void adamw_set_steps(adamw_t *opt, long steps);
const adamw_config_t *adamw_config(const adamw_t *opt);
/* Changes the config (e.g. on resume with a new lr); 0 or -EINVAL. */
int adamw_set_config(adamw_t *opt, const adamw_config_t *cfg);

#endif
