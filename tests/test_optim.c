#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "optim.h"
#include "rng.h"

static model_t *small_model(void)
{
    model_config_t c = {
        .vocab_size = 7, .dim = 4, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
        .hidden_dim = 6, .max_seq_len = 8, .image_size = 4, .patch_size = 2,
        .tie_embeddings = 0, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
    };
    model_t *m = model_new(&c, 1);
    cr_assert_not_null(m);
    rng_t r;
    rng_seed(&r, 4);
    model_init_random(m, &r);
    /* Make norms and biases non-trivial so decay on them would be visible. */
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].ndim == 1)
            for (size_t j = 0; j < m->tensors[i].numel; j++)
                m->params[m->tensors[i].offset + j] = 0.5f + 0.1f * (float)j;
    return m;
}

#define ASSERT_NEAR(got, want, tol, ...)                                                           \
    cr_assert(fabs((double)(got) - (double)(want)) <= (tol), __VA_ARGS__)

Test(optim, lr_schedule_warmup_constant_cosine)
{
    adamw_config_t c = adamw_config_default();
    c.lr = 1e-3f;
    /* Constant, no warm-up. */
    ASSERT_NEAR(adamw_lr_at(&c, 0), 1e-3, 1e-9, "constant step 0: %g", adamw_lr_at(&c, 0));
    ASSERT_NEAR(adamw_lr_at(&c, 12345), 1e-3, 1e-9, "constant step 12345");
    /* Linear warm-up over 10 steps: step s -> lr*(s+1)/10, full lr from step 9. */
    c.warmup_steps = 10;
    ASSERT_NEAR(adamw_lr_at(&c, 0), 1e-4, 1e-9, "warm-up step 0: got %g want 1e-4",
                adamw_lr_at(&c, 0));
    ASSERT_NEAR(adamw_lr_at(&c, 4), 5e-4, 1e-9, "warm-up step 4: got %g want 5e-4",
                adamw_lr_at(&c, 4));
    ASSERT_NEAR(adamw_lr_at(&c, 9), 1e-3, 1e-9, "warm-up step 9");
    ASSERT_NEAR(adamw_lr_at(&c, 50), 1e-3, 1e-9, "after warm-up, constant");
    /* Cosine from step 10 (lr) to step 110 (0.1 lr), flat after. */
    c.schedule = OPTIM_SCHED_COSINE;
    c.total_steps = 110;
    c.min_lr_ratio = 0.1f;
    cr_assert_eq(adamw_config_validate(&c, NULL, 0), 0);
    ASSERT_NEAR(adamw_lr_at(&c, 10), 1e-3, 1e-9, "cosine start: %g", adamw_lr_at(&c, 10));
    ASSERT_NEAR(adamw_lr_at(&c, 60), 0.55e-3, 1e-9, "cosine midpoint: got %g want 5.5e-4",
                adamw_lr_at(&c, 60));
    ASSERT_NEAR(adamw_lr_at(&c, 35), 1e-4 + 9e-4 * 0.5 * (1 + cos(M_PI * 0.25)), 1e-9,
                "cosine quarter: %g", adamw_lr_at(&c, 35));
    ASSERT_NEAR(adamw_lr_at(&c, 110), 1e-4, 1e-9, "cosine end: got %g want 1e-4",
                adamw_lr_at(&c, 110));
    ASSERT_NEAR(adamw_lr_at(&c, 1000), 1e-4, 1e-9, "after the end stays at the floor");
    ASSERT_NEAR(adamw_lr_at(&c, 5), 6e-4, 1e-9, "warm-up still applies with cosine");
    /* Monotone non-increasing after warm-up. */
    for (long s = 10; s < 120; s++)
        cr_assert(adamw_lr_at(&c, s + 1) <= adamw_lr_at(&c, s), "lr rose at step %ld", s);
}

Test(optim, config_validation_names_the_field)
{
    char err[160];
    adamw_config_t c = adamw_config_default();
    cr_assert_eq(adamw_config_validate(&c, err, sizeof err), 0);
    c.beta2 = 1.0f;
    cr_assert_neq(adamw_config_validate(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "beta2"), "message: %s", err);
    c = adamw_config_default();
    c.schedule = OPTIM_SCHED_COSINE;
    c.total_steps = 0;
    cr_assert_neq(adamw_config_validate(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "total_steps"), "message: %s", err);
    model_t *m = small_model();
    cr_assert_null(adamw_new(m, &c));
    model_config_t mc = m->cfg;
    model_t *inf = model_new(&mc, 0);
    adamw_config_t ok = adamw_config_default();
    cr_assert_null(adamw_new(inf, &ok), "a model without gradients was accepted");
    model_destroy(&inf);
    model_destroy(&m);
}

Test(optim, weight_decay_only_where_decay_is_set)
{
    model_t *m = small_model();
    float *before = malloc(m->n_params * sizeof(float));
    memcpy(before, m->params, m->n_params * sizeof(float));
    adamw_config_t c = adamw_config_default();
    c.lr = 0.1f;
    c.weight_decay = 0.5f;
    adamw_t *o = adamw_new(m, &c);
    cr_assert_not_null(o);
    model_zero_grads(m); /* zero gradient: only the decay moves anything */
    float n = adamw_step(o, m);
    cr_assert_eq(n, 0.0f);
    cr_assert_eq(adamw_steps(o), 1);
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        float f = t->decay ? 1.0f - 0.1f * 0.5f : 1.0f;
        for (size_t j = 0; j < t->numel; j++) {
            float want = before[t->offset + j] * f, got = m->params[t->offset + j];
            cr_assert(fabsf(want - got) <= 1e-7f * fabsf(want) + 1e-12f,
                      "%s[%zu] (decay %d): want %.9g got %.9g", t->name, j, t->decay, want, got);
        }
    }
    free(before);
    adamw_destroy(&o);
    cr_assert_null(o);
    model_destroy(&m);
}

Test(optim, grad_clip_scales_by_global_norm)
{
    model_t *m = small_model();
    rng_t r;
    rng_seed(&r, 8);
    double s2 = 0;
    for (int i = 0; i < m->n_tensors; i++)
        for (size_t j = 0; j < m->tensors[i].numel; j++) {
            float g = rng_normal(&r);
            m->grads[m->tensors[i].offset + j] = g;
            s2 += (double)g * g;
        }
    double norm = sqrt(s2);
    cr_assert(norm > 2.0);
    float *g0 = malloc(m->n_params * sizeof(float));
    memcpy(g0, m->grads, m->n_params * sizeof(float));
    adamw_config_t c = adamw_config_default();
    c.grad_clip = 0.5f;
    adamw_t *o = adamw_new(m, &c);
    float got = adamw_step(o, m);
    ASSERT_NEAR(got, norm, 1e-4 * norm, "pre-clip norm: want %.7g got %.7g", norm, got);
    ASSERT_NEAR(adamw_grad_norm(m), norm, 1e-4 * norm, "adamw_grad_norm");
    /* First moment after one step = (1 - beta1) * g * clip / (norm + 1e-6). */
    double scale = 0.5 / (norm + 1e-6);
    const float *mom = adamw_m(o), *vel = adamw_v(o);
    for (int i = 0; i < m->n_tensors; i++)
        for (size_t j = 0; j < m->tensors[i].numel; j++) {
            size_t k = m->tensors[i].offset + j;
            double gc = g0[k] * scale;
            ASSERT_NEAR(mom[k], 0.1 * gc, 1e-6 * fabs(gc) + 1e-12, "m[%zu]: want %.7g got %.7g",
                        k, 0.1 * gc, mom[k]);
            ASSERT_NEAR(vel[k], 0.001 * gc * gc, 1e-5 * gc * gc + 1e-15,
                        "v[%zu]: want %.7g got %.7g", k, 0.001 * gc * gc, vel[k]);
            cr_assert_eq(m->grads[k], g0[k], "gradient buffer modified at %zu", k);
        }
    adamw_destroy(&o);

    /* Below the threshold, or clipping off: no scaling. */
    c.grad_clip = 0.0f;
    o = adamw_new(m, &c);
    adamw_step(o, m);
    ASSERT_NEAR(adamw_m(o)[m->tensors[0].offset], 0.1 * g0[m->tensors[0].offset], 1e-7,
                "clip off must not scale");
    adamw_destroy(&o);
    free(g0);
    model_destroy(&m);
}

/* Three steps against the AdamW formulas evaluated in double by hand:
 * p <- p*(1 - lr*wd) - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps). */
Test(optim, adam_steps_match_hand_computation)
{
    model_t *m = small_model();
    adamw_config_t c = adamw_config_default();
    c.lr = 0.01f;
    c.beta1 = 0.8f;
    c.beta2 = 0.95f;
    c.eps = 1e-3f; /* large eps so the update is not sign-like and eps is checked */
    c.weight_decay = 0.1f;
    c.grad_clip = 0.0f;
    c.warmup_steps = 2; /* lr 0.005, 0.01, 0.01 */
    adamw_t *o = adamw_new(m, &c);
    size_t n = m->n_params;
    double *p = malloc(n * sizeof(double)), *mm = calloc(n, sizeof(double)),
           *vv = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++)
        p[i] = m->params[i];
    rng_t r;
    rng_seed(&r, 77);
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < m->n_tensors; i++)
            for (size_t j = 0; j < m->tensors[i].numel; j++)
                m->grads[m->tensors[i].offset + j] = 0.01f * rng_normal(&r);
        double lr = step == 0 ? 0.005 : 0.01;
        double bc1 = 1 - pow(0.8, step + 1), bc2 = 1 - pow(0.95, step + 1);
        for (int i = 0; i < m->n_tensors; i++) {
            const tensor_info_t *t = &m->tensors[i];
            for (size_t j = 0; j < t->numel; j++) {
                size_t k = t->offset + j;
                double g = m->grads[k];
                mm[k] = 0.8 * mm[k] + 0.2 * g;
                vv[k] = 0.95 * vv[k] + 0.05 * g * g;
                if (t->decay)
                    p[k] *= 1 - lr * 0.1;
                p[k] -= lr / bc1 * mm[k] / (sqrt(vv[k]) / sqrt(bc2) + (double)1e-3f);
            }
        }
        adamw_step(o, m);
    }
    cr_assert_eq(adamw_steps(o), 3);
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        for (size_t j = 0; j < t->numel; j++) {
            size_t k = t->offset + j;
            /* Tolerance 1e-6 abs: float32 state over three steps of size <= 0.03. */
            ASSERT_NEAR(m->params[k], p[k], 1e-6, "%s[%zu]: want %.9g got %.9g", t->name, j, p[k],
                        m->params[k]);
        }
    }
    adamw_set_steps(o, 42);
    cr_assert_eq(adamw_steps(o), 42);
    cr_assert_eq(adamw_n_params(o), m->n_params);
    free(p);
    free(mm);
    free(vv);
    adamw_destroy(&o);
    model_destroy(&m);
}

Test(optim, nonfinite_gradient_skips_the_update)
{
    model_t *m = small_model();
    float *before = malloc(m->n_params * sizeof(float));
    memcpy(before, m->params, m->n_params * sizeof(float));
    adamw_config_t c = adamw_config_default();
    adamw_t *o = adamw_new(m, &c);
    model_zero_grads(m);
    m->grads[m->tensors[2].offset] = NAN;
    float n = adamw_step(o, m);
    cr_assert(!isfinite(n), "norm %g should be reported non-finite", n);
    cr_assert_eq(adamw_steps(o), 0);
    cr_assert_eq(memcmp(before, m->params, m->n_params * sizeof(float)), 0);
    free(before);
    adamw_destroy(&o);
    model_destroy(&m);
}

/* Optional independent oracle: torch.optim.AdamW with clipping by
 * clip_grad_norm_, a warm-up, weight decay on matrices only. */
Test(optim, matches_torch_adamw)
{
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
        cr_skip_test("/usr/bin/python3 with torch not available");
    const char *base = getenv("CRL_TEST_TMP");
    char dir[256], path[512], cmd[1024];
    snprintf(dir, sizeof dir, "%s/optim-torch-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir));
    model_t *m = small_model();
    size_t n = m->n_params;
    enum { STEPS = 4 };
    float *grads = malloc(STEPS * n * sizeof(float));
    rng_t r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < STEPS * n; i++)
        grads[i] = rng_normal(&r);
    int *decay = calloc(n, sizeof(int)), *used = calloc(n, sizeof(int));
    for (int i = 0; i < m->n_tensors; i++)
        for (size_t j = 0; j < m->tensors[i].numel; j++) {
            decay[m->tensors[i].offset + j] = m->tensors[i].decay;
            used[m->tensors[i].offset + j] = 1;
        }
    for (int s = 0; s < STEPS; s++) /* padding between tensors stays 0 */
        for (size_t i = 0; i < n; i++)
            if (!used[i])
                grads[s * n + i] = 0;
    snprintf(path, sizeof path, "%s/in.bin", dir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fwrite(m->params, sizeof(float), n, f);
    fwrite(grads, sizeof(float), STEPS * n, f);
    for (size_t i = 0; i < n; i++) {
        float d = (float)decay[i];
        fwrite(&d, sizeof d, 1, f);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/adamw.py", dir);
    f = fopen(path, "w");
    fprintf(f,
            "import sys, torch\n"
            "n, S = %zu, %d\n"
            "x = torch.frombuffer(bytearray(open(sys.argv[1] + '/in.bin', 'rb').read()), dtype=torch.float32)\n"
            "p0, g, dec = x[:n], x[n:n + S * n].reshape(S, n), x[n + S * n:]\n"
            "pd = torch.nn.Parameter(p0[dec > 0].clone()); pn = torch.nn.Parameter(p0[dec == 0].clone())\n"
            "opt = torch.optim.AdamW([{'params': [pd], 'weight_decay': 0.05}, {'params': [pn], 'weight_decay': 0.0}],\n"
            "                        lr=0.02, betas=(0.9, 0.99), eps=1e-6)\n"
            "sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))\n"
            "for s in range(S):\n"
            "    pd.grad = g[s][dec > 0].clone(); pn.grad = g[s][dec == 0].clone()\n"
            "    torch.nn.utils.clip_grad_norm_([pd, pn], 2.0)\n"
            "    opt.step(); sched.step()\n"
            "out = p0.clone(); out[dec > 0] = pd.detach(); out[dec == 0] = pn.detach()\n"
            "open(sys.argv[1] + '/out.bin', 'wb').write(out.numpy().tobytes())\n",
            n, (int)STEPS);
    fclose(f);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s", path, dir);
    cr_assert_eq(system(cmd), 0, "torch script failed: %s", cmd);

    adamw_config_t c = adamw_config_default();
    c.lr = 0.02f;
    c.beta1 = 0.9f;
    c.beta2 = 0.99f;
    c.eps = 1e-6f;
    c.weight_decay = 0.05f;
    c.grad_clip = 2.0f;
    c.warmup_steps = 3;
    adamw_t *o = adamw_new(m, &c);
    for (int s = 0; s < STEPS; s++) {
        memcpy(m->grads, grads + s * n, n * sizeof(float));
        adamw_step(o, m);
    }
    float *want = malloc(n * sizeof(float));
    snprintf(path, sizeof path, "%s/out.bin", dir);
    f = fopen(path, "rb");
    cr_assert_not_null(f);
    cr_assert_eq(fread(want, sizeof(float), n, f), n);
    fclose(f);
    /* Tolerance 2e-6 abs: both float32, different operation order. */
    for (size_t i = 0; i < n; i++)
        ASSERT_NEAR(m->params[i], want[i], 2e-6, "param %zu: torch %.9g crl %.9g", i, want[i],
                    m->params[i]);
    free(want);
    free(grads);
    free(decay);
    free(used);
    adamw_destroy(&o);
    model_destroy(&m);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}
