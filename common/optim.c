/* optim: AdamW (decoupled weight decay, Loshchilov & Hutter) matching
 * torch.optim.AdamW's update order: decay, moments, bias-corrected step. */
#include "optim.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct adamw {
    adamw_config_t cfg;
    size_t n;  /* n_params of the model it was made for */
    float *m;  /* (n) first moment, model layout */
    float *v;  /* (n) second moment */
    long steps;
};

adamw_config_t adamw_config_default(void)
{
    adamw_config_t c = {
        .lr = 1e-5f,
        .beta1 = 0.9f,
        .beta2 = 0.999f,
        .eps = 1e-8f,
        .weight_decay = 1e-2f,
        .grad_clip = 1.0f,
        .warmup_steps = 0,
        .total_steps = 0,
        .schedule = OPTIM_SCHED_CONSTANT,
        .min_lr_ratio = 0.0f,
    };
    return c;
}

int adamw_config_validate(const adamw_config_t *c, char *err, size_t errlen)
{
#define BAD(...)                                                                                   \
    do {                                                                                           \
        if (err && errlen)                                                                         \
            snprintf(err, errlen, __VA_ARGS__);                                                    \
        return -EINVAL;                                                                            \
    } while (0)
    if (!c)
        BAD("config is NULL");
    if (!(c->lr >= 0.0f) || !isfinite(c->lr))
        BAD("lr must be a finite number >= 0 (got %g)", (double)c->lr);
    if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f))
        BAD("beta1 must be in [0, 1) (got %g)", (double)c->beta1);
    if (!(c->beta2 >= 0.0f && c->beta2 < 1.0f))
        BAD("beta2 must be in [0, 1) (got %g)", (double)c->beta2);
    if (!(c->eps > 0.0f) || !isfinite(c->eps))
        BAD("eps must be > 0 (got %g)", (double)c->eps);
    if (!(c->weight_decay >= 0.0f) || !isfinite(c->weight_decay))
        BAD("weight_decay must be >= 0 (got %g)", (double)c->weight_decay);
    if (isnan(c->grad_clip))
        BAD("grad_clip must be a number (<= 0 disables clipping)");
    if (c->warmup_steps < 0)
        BAD("warmup_steps must be >= 0 (got %ld)", c->warmup_steps);
    if (c->schedule != OPTIM_SCHED_CONSTANT && c->schedule != OPTIM_SCHED_COSINE)
        BAD("schedule must be constant (%d) or cosine (%d) (got %d)", OPTIM_SCHED_CONSTANT,
            OPTIM_SCHED_COSINE, c->schedule);
    if (c->schedule == OPTIM_SCHED_COSINE && c->total_steps <= c->warmup_steps)
        BAD("cosine schedule needs total_steps (%ld) > warmup_steps (%ld)", c->total_steps,
            c->warmup_steps);
    if (!(c->min_lr_ratio >= 0.0f && c->min_lr_ratio <= 1.0f))
        BAD("min_lr_ratio must be in [0, 1] (got %g)", (double)c->min_lr_ratio);
    return 0;
#undef BAD
}

float adamw_lr_at(const adamw_config_t *c, long step)
{
    if (step < 0)
        step = 0;
    if (c->warmup_steps > 0 && step < c->warmup_steps)
        return (float)((double)c->lr * (double)(step + 1) / (double)c->warmup_steps);
    if (c->schedule != OPTIM_SCHED_COSINE)
        return c->lr;
    long span = c->total_steps - c->warmup_steps;
    double progress = span > 0 ? (double)(step - c->warmup_steps) / (double)span : 1.0;
    if (progress > 1.0)
        progress = 1.0;
    double floor_lr = (double)c->lr * c->min_lr_ratio;
    return (float)(floor_lr + ((double)c->lr - floor_lr) * 0.5 * (1.0 + cos(M_PI * progress)));
}

adamw_t *adamw_new(const model_t *m, const adamw_config_t *cfg)
{
    char err[160];
    if (adamw_config_validate(cfg, err, sizeof err) != 0) {
        log_error("adamw_new: bad config: %s", err);
        return NULL;
    }
    if (!m || !m->grads) {
        log_error("adamw_new: model %s", m ? "has no gradient buffer" : "is NULL");
        return NULL;
    }
    adamw_t *o = calloc(1, sizeof *o);
    if (!o)
        goto fail;
    o->cfg = *cfg;
    o->n = m->n_params;
    o->m = calloc(o->n ? o->n : 1, sizeof(float));
    o->v = calloc(o->n ? o->n : 1, sizeof(float));
    if (!o->m || !o->v)
        goto fail;
    return o;
fail:
    log_error("adamw_new: out of memory (%zu parameters)", m->n_params);
    adamw_destroy(&o);
    return NULL;
}

void adamw_destroy(adamw_t **p)
{
    if (!p || !*p)
        return;
    free((*p)->m);
    free((*p)->v);
    free(*p);
    *p = NULL;
}

float adamw_grad_norm(const model_t *m)
{
    if (!m || !m->grads)
        return 0.0f;
    double s = 0.0;
    const float *g = m->grads;
    for (size_t i = 0; i < m->n_params; i++)
        s += (double)g[i] * g[i];
    return (float)sqrt(s);
}

float adamw_step(adamw_t *o, model_t *m)
{
    if (!o || !m || !m->grads || m->n_params != o->n) {
        log_error("adamw_step: model does not match the optimizer (%zu vs %zu parameters)",
                  m ? m->n_params : 0, o ? o->n : 0);
        return NAN;
    }
    const adamw_config_t *c = &o->cfg;
    float norm = adamw_grad_norm(m);
    if (!isfinite(norm)) {
        log_warn("adamw_step: gradient norm is %g; update skipped", (double)norm);
        return norm;
    }
    float scale = 1.0f;
    if (c->grad_clip > 0.0f && norm > c->grad_clip)
        scale = c->grad_clip / (norm + 1e-6f);
    long t = o->steps + 1;
    float lr = adamw_lr_at(c, o->steps);
    float b1 = c->beta1, b2 = c->beta2;
    /* Bias corrections in double: beta^t underflows gracefully and 1-beta^t
     * keeps its precision early on. */
    double bc1 = 1.0 - pow((double)b1, (double)t);
    double bc2 = 1.0 - pow((double)b2, (double)t);
    float step_size = (float)((double)lr / bc1);
    float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const tensor_info_t *tn = &m->tensors[ti];
        float *p = m->params + tn->offset;
        const float *g = m->grads + tn->offset;
        float *mm = o->m + tn->offset;
        float *vv = o->v + tn->offset;
        float decay = tn->decay ? 1.0f - lr * c->weight_decay : 1.0f;
        for (size_t i = 0; i < tn->numel; i++) {
            float gi = g[i] * scale;
            float mi = b1 * mm[i] + (1.0f - b1) * gi;
            float vi = b2 * vv[i] + (1.0f - b2) * gi * gi;
            mm[i] = mi;
            vv[i] = vi;
            float denom = sqrtf(vi) * inv_sqrt_bc2 + c->eps;
            p[i] = p[i] * decay - step_size * mi / denom;
        }
    }
    o->steps = t;
    return norm;
}

float *adamw_m(adamw_t *o)
{
    return o ? o->m : NULL;
}

float *adamw_v(adamw_t *o)
{
    return o ? o->v : NULL;
}

size_t adamw_n_params(const adamw_t *o)
{
    return o ? o->n : 0;
}

long adamw_steps(const adamw_t *o)
{
    return o ? o->steps : 0;
}

void adamw_set_steps(adamw_t *o, long steps)
{
    if (o)
        o->steps = steps < 0 ? 0 : steps;
}

const adamw_config_t *adamw_config(const adamw_t *o)
{
    return o ? &o->cfg : NULL;
}

int adamw_set_config(adamw_t *o, const adamw_config_t *cfg)
{
    char err[160];
    if (!o || adamw_config_validate(cfg, err, sizeof err) != 0) {
        log_error("adamw_set_config: bad config: %s", o ? err : "optimizer is NULL");
        return -EINVAL;
    }
    o->cfg = *cfg;
    return 0;
}
