/* grpo tests: advantages, the per-token loss and its hand-derived gradient
 * against finite differences of an independent double-precision
 * implementation (clip / dual clip / IS cap / KL cases), the whole-model
 * gradient of grpo_step against finite differences on a tiny model, actor /
 * learner log-prob agreement on policy, bit-for-bit determinism, and a
 * learning test on an easy synthetic critic task (supervised format warm-up
 * with random verdicts, then GRPO must lift the reward by >= 0.2). */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "grpo.h"
#include "kernels.h"
#include "model.h"
#include "optim.h"
#include "reward.h"
#include "rng.h"
#include "sampler.h"
#include "task.h"
#include "tokenizer.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t hash_floats(const float *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n * sizeof(float); i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ------------------------------------------------------------------ */
/* Independent reference of the token loss (verl's loss form, written as
 * a loss to minimise rather than an objective):
 *   l1 = -A r, l2 = -A clip(r), lc = max(l1, l2); A < 0: lc = min(lc, -c A);
 *   loss = w lc + kl (e^(ref-new) - (ref-new) - 1). */
typedef struct {
    double clip_low, clip_high, dual, cap, kl;
} ref_params_t;

static double ref_token_loss(const ref_params_t *p, double lnew, double lprox, double lbehav,
                             double lref, double A)
{
    double r = exp(lnew - lprox);
    double w = fmin(exp(lprox - lbehav), p->cap);
    double l1 = -A * r;
    double l2 = -A * fmin(fmax(r, 1.0 - p->clip_low), 1.0 + p->clip_high);
    double lc = fmax(l1, l2);
    if (A < 0)
        lc = fmin(lc, -A * p->dual);
    double x = lref - lnew;
    return w * lc + p->kl * (exp(x) - x - 1.0);
}

Test(grpo, advantages_known_values)
{
    /* {1,0,1,0}: mean .5, population std .5 -> +-1/(.5+1e-6). */
    const float r1[4] = {1, 0, 1, 0};
    float a[8];
    grpo_advantages(r1, 4, a);
    double e = 0.5 / (0.5 + 1e-6);
    for (int i = 0; i < 4; i++) {
        double want = (i % 2 == 0) ? e : -e;
        cr_assert(fabs(a[i] - want) < 1e-6, "A[%d]: expected %.7f got %.7f", i, want, (double)a[i]);
    }
    /* {.9,.1,.1,.1}: mean .3, population std sqrt(.12) = .3464102 */
    const float r2[4] = {0.9f, 0.1f, 0.1f, 0.1f};
    grpo_advantages(r2, 4, a);
    double sd = sqrt(((0.9 - 0.3) * (0.9 - 0.3) + 3 * 0.04) / 4.0);
    double want0 = 0.6 / (sd + 1e-6), want1 = -0.2 / (sd + 1e-6);
    cr_assert(fabs(a[0] - want0) < 1e-5, "A[0]: expected %.6f got %.6f", want0, (double)a[0]);
    for (int i = 1; i < 4; i++)
        cr_assert(fabs(a[i] - want1) < 1e-5, "A[%d]: expected %.6f got %.6f", i, want1, (double)a[i]);
    /* zero variance, including a value whose float mean is inexact */
    const float r3[8] = {0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    grpo_advantages(r3, 8, a);
    for (int i = 0; i < 8; i++)
        cr_assert(a[i] == 0.0f, "zero-variance A[%d]: expected exactly 0, got %g", i, (double)a[i]);
    double s = 0;
    grpo_advantages(r2, 4, a);
    for (int i = 0; i < 4; i++)
        s += a[i];
    cr_assert(fabs(s) < 1e-5, "advantages must sum to 0, got %g", s);
}

/* ------------------------------------------------------------------ */

typedef struct {
    const char *name;
    float d;       /* logp_new - logp_prox */
    float lw;      /* logp_prox - logp_behav */
    float A;
    int flows;     /* expected: PPO gradient flows */
} loss_case_t;

Test(grpo, token_loss_clip_cases_and_finite_differences)
{
    const loss_case_t cases[] = {
        {"A>0 ratio 1", 0.0f, 0.0f, 1.0f, 1},
        {"A>0 ratio 1.49 above 1+eh: clipped", 0.4f, 0.1f, 0.8f, 0},
        {"A>0 ratio 1.22 inside", 0.2f, -0.3f, 1.3f, 1},
        {"A>0 ratio .61 below 1-el: unclipped side", -0.5f, 0.2f, 0.5f, 1},
        {"A<0 ratio .61 below 1-el: clipped", -0.5f, 0.0f, -1.0f, 0},
        {"A<0 ratio .9 inside", -0.1f, 0.3f, -0.7f, 1},
        {"A<0 ratio 1.65 above 1+eh: flows", 0.5f, 0.0f, -1.0f, 1},
        {"A<0 ratio 4.48 > dual 3: dual clip", 1.5f, 0.0f, -1.0f, 0},
        {"A<0 ratio 2.7 < dual 3: flows", 1.0f, -0.2f, -1.2f, 1},
        {"IS capped (e^1 > 2)", 0.1f, 1.0f, 1.0f, 1},
        {"IS capped, A<0", -0.1f, 1.5f, -0.6f, 1},
        {"IS weight .5", 0.05f, -0.693f, -0.9f, 1},
        {"A = 0", 0.3f, 0.0f, 0.0f, 1},
    };
    const int n = (int)(sizeof cases / sizeof cases[0]);
    float lnew[32], lprox[32], lbehav[32], lref[32], adv[32], dl[32];
    for (int kl = 0; kl < 2; kl++) {
        grpo_loss_params_t p = {.clip_low = 0.2f, .clip_high = 0.3f, .dual_clip = 3.0f,
                                .is_cap = 2.0f, .kl_coef = kl ? 0.1f : 0.0f};
        ref_params_t rp = {0.2, 0.3, 3.0, 2.0, kl ? 0.1 : 0.0};
        for (int i = 0; i < n; i++) {
            lprox[i] = -1.0f - 0.1f * (float)i;
            lnew[i] = lprox[i] + cases[i].d;
            lbehav[i] = lprox[i] - cases[i].lw;
            lref[i] = lnew[i] + 0.3f * (float)((i % 5) - 2); /* KL both signs and 0 */
            adv[i] = cases[i].A;
        }
        const float scale = 1.0f / (float)n;
        grpo_token_acc_t acc;
        memset(&acc, 0, sizeof acc);
        double loss = grpo_token_loss_grad(&p, n, lnew, lprox, lbehav, lref, adv, scale, dl, &acc);
        double want_loss = 0;
        for (int i = 0; i < n; i++)
            want_loss += ref_token_loss(&rp, lnew[i], lprox[i], lbehav[i], lref[i], adv[i]);
        want_loss *= scale;
        cr_assert(fabs(loss - want_loss) < 1e-9 + 1e-7 * fabs(want_loss),
                  "kl %d: loss expected %.10f got %.10f", kl, want_loss, loss);
        int n_clip_expected = 0;
        for (int i = 0; i < n; i++) {
            const double h = 1e-6;
            double fd = (ref_token_loss(&rp, (double)lnew[i] + h, lprox[i], lbehav[i], lref[i], adv[i]) -
                         ref_token_loss(&rp, (double)lnew[i] - h, lprox[i], lbehav[i], lref[i], adv[i])) /
                        (2 * h) * scale;
            cr_assert(fabs(dl[i] - fd) <= 1e-6 + 1e-5 * fabs(fd),
                      "kl %d case '%s': dloss/dlogp_new expected (FD) %.9f got %.9f", kl, cases[i].name,
                      fd, (double)dl[i]);
            if (!kl) {
                /* Without KL, a clipped token has exactly no gradient. */
                if (!cases[i].flows)
                    cr_assert(dl[i] == 0.0f, "case '%s': clipped, expected gradient 0, got %g",
                              cases[i].name, (double)dl[i]);
                else if (cases[i].A != 0.0f)
                    cr_assert(dl[i] != 0.0f, "case '%s': expected a gradient", cases[i].name);
            }
            n_clip_expected += !cases[i].flows;
        }
        cr_assert_eq(acc.clipped, n_clip_expected, "clipped tokens: expected %d got %ld",
                     n_clip_expected, acc.clipped);
        cr_assert_eq(acc.dual_clipped, 1, "dual-clipped tokens: expected 1 got %ld", acc.dual_clipped);
        cr_assert_eq(acc.is_capped, 2, "IS-capped tokens: expected 2 got %ld", acc.is_capped);
    }

    /* Random tokens across the whole range, KL on. */
    rng_t r;
    rng_seed(&r, 7);
    grpo_loss_params_t p = {.clip_low = 0.2f, .clip_high = 0.3f, .dual_clip = 3.0f, .is_cap = 2.0f,
                            .kl_coef = 0.05f};
    ref_params_t rp = {0.2, 0.3, 3.0, 2.0, 0.05};
    int checked = 0;
    for (int it = 0; it < 2000; it++) {
        float a = 2.0f * rng_normal(&r), ln = -3.0f * rng_uniform(&r) - 0.01f;
        float lpx = ln - 1.5f * rng_normal(&r), lb = lpx - 1.0f * rng_normal(&r);
        float lr = ln + 0.5f * rng_normal(&r);
        double ratio = exp((double)ln - lpx);
        /* keep away from the kinks, where FD is not defined */
        if (fabs(ratio - 0.8) < 1e-3 || fabs(ratio - 1.3) < 1e-3 || fabs(ratio - 3.0) < 1e-3)
            continue;
        float d;
        grpo_token_loss_grad(&p, 1, &ln, &lpx, &lb, &lr, &a, 1.0f, &d, NULL);
        const double h = 1e-6;
        double fd = (ref_token_loss(&rp, (double)ln + h, lpx, lb, lr, a) -
                     ref_token_loss(&rp, (double)ln - h, lpx, lb, lr, a)) / (2 * h);
        cr_assert(fabs(d - fd) <= 1e-5 + 1e-5 * fabs(fd),
                  "random token %d (A %g ratio %g): FD %.8f got %.8f", it, (double)a, ratio, fd, (double)d);
        checked++;
    }
    cr_assert(checked > 1900, "too few random tokens checked (%d)", checked);
}

/* ------------------------------------------------------------------ */
/* Fixtures: a tiny tokenizer and model */

static const char *k_fixture_texts[] = {
    "<think>count the shapes</think>\\boxed{A}",
    "<think>the first is right</think>\\boxed{B}",
    "which answer is better? A: two B: three",
    "which answer is better? A: red B: blue",
    "\\boxed{A} \\boxed{B} answer",
};

static tokenizer_t *fixture_tok(void)
{
    char err[256];
    tokenizer_t *tok = tok_train(k_fixture_texts, NULL, 5, 290, err, sizeof err);
    cr_assert_not_null(tok, "tok_train: %s", err);
    return tok;
}

static model_config_t tiny_model_cfg(int V, int with_image)
{
    model_config_t c = {
        .vocab_size = V, .dim = 16, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1, .hidden_dim = 24,
        .max_seq_len = 48, .image_size = with_image ? 8 : 0, .patch_size = with_image ? 4 : 0,
        .tie_embeddings = 0, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
    };
    return c;
}

static model_t *tiny_model(const model_config_t *c, int with_grads, uint64_t seed, float mat_scale)
{
    model_t *m = model_new(c, with_grads);
    cr_assert_not_null(m, "model_new failed");
    rng_t r;
    rng_seed(&r, seed);
    model_init_random(m, &r);
    /* Larger than the 0.02 init so that logits and their gradients are not
     * all tiny; perturb norms so every parameter matters. */
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        float *p = m->params + t->offset;
        for (size_t j = 0; j < t->numel; j++)
            p[j] = t->decay ? p[j] * mat_scale : p[j] + 0.1f * rng_normal(&r);
    }
    return m;
}

static void base_cfg(crl_config_t *cfg, const model_config_t *mc)
{
    cr_assert_eq(config_defaults(cfg), 0);
    cfg->model = *mc;
    cfg->rl.group_size = 4;
    cfg->rl.groups_per_step = 3;
}

/* Hand-made groups for the gradient and determinism tests. */
#define FX_G 4
#define FX_GROUPS 3
#define FX_MAXR 16
typedef struct {
    int prompt[2][32];
    int prompt_len[2];
    int tokens[FX_GROUPS][FX_G][FX_MAXR];
    const int *tok_rows[FX_GROUPS][FX_G];
    int len[FX_GROUPS][FX_G];
    float logp[FX_GROUPS][FX_G][FX_MAXR];
    const float *logp_rows[FX_GROUPS][FX_G];
    int prompt_index[FX_GROUPS][FX_G];
    float adv[FX_GROUPS][FX_G];
    const float *adv_rows[FX_GROUPS];
    grpo_group_t groups[FX_GROUPS];
} fixture_groups_t;

/* Double-precision log-softmax(logits/temp)[target] of one row. */
static double ref_logp(const float *row, int V, int target, double temp)
{
    double mx = -INFINITY;
    for (int v = 0; v < V; v++)
        mx = fmax(mx, row[v] / temp);
    double s = 0;
    for (int v = 0; v < V; v++)
        s += exp(row[v] / temp - mx);
    return row[target] / temp - mx - log(s);
}

/* Log-probs of the response tokens of one sample under m, computed by the
 * test on its own (one-sequence batch, double log-softmax). */
static void sample_logps(const model_t *m, model_acts_t *a, const int *prompt, int pl,
                         const int *resp, int n, double temp, double *out)
{
    int seq[64];
    int T = pl + n - 1;
    memcpy(seq, prompt, (size_t)pl * sizeof(int));
    memcpy(seq + pl, resp, (size_t)(n - 1) * sizeof(int));
    int ss[2] = {0, T};
    model_batch_t b = {.n_tokens = T, .n_seqs = 1, .seq_start = ss, .tokens = seq};
    const float *logits = model_forward(m, a, &b);
    cr_assert_not_null(logits);
    const int V = m->cfg.vocab_size;
    for (int t = 0; t < n; t++)
        out[t] = ref_logp(logits + (size_t)(pl - 1 + t) * V, V, resp[t], temp);
}

static void build_fixture_groups(fixture_groups_t *fx, const tokenizer_t *tok, const model_t *m,
                                 double temp, float behav_noise)
{
    memset(fx, 0, sizeof *fx);
    const char *p0 = "which answer is better? A: two B: three";
    const char *p1 = "which answer is better? A: three B: two";
    fx->prompt_len[0] = task_encode_prompt(tok, 0, 0, p0, fx->prompt[0], 32);
    fx->prompt_len[1] = task_encode_prompt(tok, 0, 0, p1, fx->prompt[1], 32);
    cr_assert(fx->prompt_len[0] > 0 && fx->prompt_len[1] > 0);
    /* Group 0/1 mixed rewards; group 2 all the same (zero variance). */
    const char *resp[FX_GROUPS][FX_G] = {
        {"<think>count</think>\\boxed{A}", "<think>two</think>\\boxed{B}", "\\boxed{A}", "red"},
        {"<think>the first</think>\\boxed{B}", "\\boxed{B}", "<think>x</think>\\boxed{A}", "\\boxed{A} two"},
        {"blue", "answer", "three", "red B"},
    };
    model_acts_t *a = model_acts_new(m, 64, 1);
    cr_assert_not_null(a);
    rng_t r;
    rng_seed(&r, 99);
    for (int k = 0; k < FX_GROUPS; k++) {
        for (int i = 0; i < FX_G; i++) {
            int n = task_encode_response(tok, resp[k][i], fx->tokens[k][i], FX_MAXR);
            cr_assert(n > 0, "encode '%s' -> %d", resp[k][i], n);
            fx->len[k][i] = n;
            fx->prompt_index[k][i] = (k == 1 && i >= 2) ? 1 : 0;
            int pi = fx->prompt_index[k][i];
            double lp[FX_MAXR];
            sample_logps(m, a, fx->prompt[pi], fx->prompt_len[pi], fx->tokens[k][i], n, temp, lp);
            for (int t = 0; t < n; t++) {
                /* behaviour = current policy + noise: IS weights != 1, some capped */
                float u = behav_noise * (2.0f * rng_uniform(&r) - 1.2f);
                fx->logp[k][i][t] = (float)lp[t] + u;
                if (fx->logp[k][i][t] > 0.0f)
                    fx->logp[k][i][t] = 0.0f;
            }
            fx->tok_rows[k][i] = fx->tokens[k][i];
            fx->logp_rows[k][i] = fx->logp[k][i];
        }
        grpo_group_t *g = &fx->groups[k];
        g->prompt[0] = fx->prompt[0];
        g->prompt_len[0] = fx->prompt_len[0];
        g->prompt[1] = fx->prompt[1];
        g->prompt_len[1] = fx->prompt_len[1];
        g->G = FX_G;
        g->prompt_index = fx->prompt_index[k];
        g->tokens = fx->tok_rows[k];
        g->len = fx->len[k];
        g->logp = fx->logp_rows[k];
        g->version = 5;
        g->task = REWARD_TASK_CRITIC;
        g->expected[0] = "A";
        g->expected[1] = "B";
    }
    model_acts_destroy(&a);
}

/* The test's own scalar loss at the model's current weights, with the
 * detached pi_prox given (per group, sample, token) and the reference
 * log-probs fixed. Zero-variance groups are left out as grpo does. */
static double plain_loss(const model_t *m, model_acts_t *a, const fixture_groups_t *fx,
                         double prox[FX_GROUPS][FX_G][FX_MAXR], double lref[FX_GROUPS][FX_G][FX_MAXR],
                         const ref_params_t *rp, double temp, const int *kept)
{
    double sum = 0;
    long n_tok = 0;
    for (int k = 0; k < FX_GROUPS; k++) {
        if (!kept[k])
            continue;
        for (int i = 0; i < FX_G; i++) {
            int pi = fx->prompt_index[k][i], n = fx->len[k][i];
            double lp[FX_MAXR];
            sample_logps(m, a, fx->prompt[pi], fx->prompt_len[pi], fx->tokens[k][i], n, temp, lp);
            for (int t = 0; t < n; t++)
                sum += ref_token_loss(rp, lp[t], prox[k][i][t], fx->logp[k][i][t], lref[k][i][t],
                                      fx->adv[k][i]);
            n_tok += n;
        }
    }
    return sum / (double)n_tok;
}

Test(grpo, step_gradient_matches_finite_differences)
{
    tokenizer_t *tok = fixture_tok();
    model_config_t mc = tiny_model_cfg(tok_vocab_size(tok), 0);
    model_t *m = tiny_model(&mc, 1, 11, 8.0f);
    model_t *ref = tiny_model(&mc, 0, 11, 8.0f);
    /* reference = a perturbed copy, so the KL term is not ~0 */
    rng_t r;
    rng_seed(&r, 5);
    for (size_t j = 0; j < ref->n_params; j++)
        ref->params[j] += 0.05f * rng_normal(&r);
    crl_config_t cfg;
    base_cfg(&cfg, &mc);
    cfg.rl.temperature = 0.7;
    cfg.rl.kl_coef = 0.1;
    cfg.rl.is_cap = 2.0;
    cfg.rl.skip_zero_variance = 1;
    cfg.rl.micro_batch_tokens = 48; /* several passes: gradients must accumulate */
    const double temp = cfg.rl.temperature;
    char err[256];
    grpo_t *g = grpo_new(m, &cfg, tok, err, sizeof err);
    cr_assert_not_null(g, "grpo_new: %s", err);
    fixture_groups_t *fx = malloc(sizeof *fx);
    build_fixture_groups(fx, tok, m, temp, 1.0f);
    float rew[FX_G], pref[FX_G], fmt[FX_G];
    int kept[FX_GROUPS];
    for (int k = 0; k < FX_GROUPS; k++) {
        cr_assert_eq(grpo_score_group(g, &fx->groups[k], rew, pref, fmt, fx->adv[k]), 0);
        fx->adv_rows[k] = fx->adv[k];
        kept[k] = 0;
        for (int i = 0; i < FX_G; i++)
            kept[k] |= fx->adv[k][i] != 0.0f;
    }
    cr_assert(kept[0] && kept[1] && !kept[2], "fixture rewards: expected groups 0,1 varied and 2 flat");
    /* group 0: A, A-wrong-fmt... check the scores of a few samples */
    cr_assert(fabs(fx->adv[0][0]) > 0.1f);

    /* pi_prox and the reference log-probs at the current weights, by the test */
    model_acts_t *a = model_acts_new(m, 64, 1);
    static double prox[FX_GROUPS][FX_G][FX_MAXR], lref[FX_GROUPS][FX_G][FX_MAXR];
    for (int k = 0; k < FX_GROUPS; k++)
        for (int i = 0; i < FX_G; i++) {
            int pi = fx->prompt_index[k][i];
            sample_logps(m, a, fx->prompt[pi], fx->prompt_len[pi], fx->tokens[k][i], fx->len[k][i],
                         temp, prox[k][i]);
            sample_logps(ref, a, fx->prompt[pi], fx->prompt_len[pi], fx->tokens[k][i], fx->len[k][i],
                         temp, lref[k][i]);
        }
    ref_params_t rp = {cfg.rl.clip_low, cfg.rl.clip_high, cfg.rl.dual_clip, cfg.rl.is_cap, cfg.rl.kl_coef};
    double L0 = plain_loss(m, a, fx, prox, lref, &rp, temp, kept);

    float *p0 = malloc(m->n_params * sizeof(float));
    memcpy(p0, m->params, m->n_params * sizeof(float));
    adamw_config_t oc = grpo_adamw_config(&cfg);
    adamw_t *opt = adamw_new(m, &oc);
    grpo_stats_t st;
    const float *const *advs = fx->adv_rows;
    cr_assert_eq(grpo_step(g, m, ref, opt, fx->groups, advs, FX_GROUPS, 6, &st), 0);
    cr_assert(fabs(st.loss - L0) < 1e-5 * (1 + fabs(L0)), "loss: plain %.8f grpo %.8f", L0, st.loss);
    cr_assert_eq(st.groups_skipped, 1, "groups skipped: expected 1 got %d", st.groups_skipped);
    cr_assert_eq(st.groups_used, 2);
    cr_assert(st.micro_batches >= 2, "expected several passes, got %d", st.micro_batches);
    cr_assert(st.is_capped_fraction > 0.0 && st.is_capped_fraction < 1.0,
              "IS cap should bind on some tokens: %g", st.is_capped_fraction);
    cr_assert(st.updated == 1);
    float *grad = malloc(m->n_params * sizeof(float));
    memcpy(grad, m->grads, m->n_params * sizeof(float));
    memcpy(m->params, p0, m->n_params * sizeof(float));

    /* finite differences on the 16 largest gradient entries and 16 random ones */
    size_t idx[32];
    int ni = 0;
    for (int k = 0; k < 16; k++) {
        size_t best = 0;
        float bv = -1;
        for (size_t j = 0; j < m->n_params; j++) {
            int dup = 0;
            for (int q = 0; q < ni; q++)
                dup |= idx[q] == j;
            if (!dup && fabsf(grad[j]) > bv) {
                bv = fabsf(grad[j]);
                best = j;
            }
        }
        idx[ni++] = best;
    }
    for (int k = 0; k < 16; k++)
        idx[ni++] = rng_below(&r, (uint32_t)m->n_params);
    double max_err = 0;
    for (int q = 0; q < ni; q++) {
        size_t j = idx[q];
        const float h = 1e-3f;
        float keep = m->params[j];
        m->params[j] = keep + h;
        double lp = plain_loss(m, a, fx, prox, lref, &rp, temp, kept);
        m->params[j] = keep - h;
        double lm = plain_loss(m, a, fx, prox, lref, &rp, temp, kept);
        m->params[j] = keep;
        double fd = (lp - lm) / (double)((keep + h) - (keep - h));
        double e = fabs(fd - grad[j]);
        if (e > max_err)
            max_err = e;
        cr_assert(e <= 2e-2 * fabs(fd) + 3e-4, "param %zu: FD %.6f grpo %.6f", j, fd, (double)grad[j]);
    }
    fprintf(stderr, "grpo gradient check: %d params, loss %.6f, max |FD - grpo| = %.2e, largest |g| %.4f\n",
            ni, L0, max_err, (double)fabsf(grad[idx[0]]));

    /* The same step in one pass gives the same gradient (summation order only). */
    cfg.rl.micro_batch_tokens = 0;
    grpo_t *g1 = grpo_new(m, &cfg, tok, err, sizeof err);
    cr_assert_not_null(g1, "%s", err);
    adamw_t *opt1 = adamw_new(m, &oc);
    cr_assert_eq(grpo_step(g1, m, ref, opt1, fx->groups, advs, FX_GROUPS, 6, &st), 0);
    cr_assert_eq(st.micro_batches, 1);
    for (size_t j = 0; j < m->n_params; j++)
        cr_assert(fabsf(m->grads[j] - grad[j]) <= 1e-5f + 1e-3f * fabsf(grad[j]),
                  "one-pass gradient %zu: %g vs micro-batched %g", j, (double)m->grads[j], (double)grad[j]);

    adamw_destroy(&opt);
    adamw_destroy(&opt1);
    grpo_destroy(&g);
    grpo_destroy(&g1);
    model_acts_destroy(&a);
    free(p0);
    free(grad);
    free(fx);
    model_destroy(&m);
    model_destroy(&ref);
    tok_destroy(&tok);
}

Test(grpo, step_is_deterministic)
{
    tokenizer_t *tok = fixture_tok();
    model_config_t mc = tiny_model_cfg(tok_vocab_size(tok), 0);
    crl_config_t cfg;
    base_cfg(&cfg, &mc);
    cfg.rl.micro_batch_tokens = 64;
    uint64_t h[2];
    uint64_t h_before = 0;
    for (int run = 0; run < 2; run++) {
        model_t *m = tiny_model(&mc, 1, 3, 5.0f);
        model_t *ref = tiny_model(&mc, 0, 3, 5.0f);
        h_before = hash_floats(m->params, m->n_params);
        char err[256];
        grpo_t *g = grpo_new(m, &cfg, tok, err, sizeof err);
        cr_assert_not_null(g, "%s", err);
        fixture_groups_t *fx = malloc(sizeof *fx);
        build_fixture_groups(fx, tok, m, cfg.rl.temperature, 0.5f);
        float rew[FX_G];
        for (int k = 0; k < FX_GROUPS; k++) {
            cr_assert_eq(grpo_score_group(g, &fx->groups[k], rew, NULL, NULL, fx->adv[k]), 0);
            fx->adv_rows[k] = fx->adv[k];
        }
        adamw_config_t oc = grpo_adamw_config(&cfg);
        oc.lr = 1e-2f;
        adamw_t *opt = adamw_new(m, &oc);
        /* two steps, so the optimizer state enters too */
        for (int s = 0; s < 2; s++)
            cr_assert_eq(grpo_step(g, m, ref, opt, fx->groups, fx->adv_rows, FX_GROUPS, 5 + s, NULL), 0);
        h[run] = hash_floats(m->params, m->n_params);
        adamw_destroy(&opt);
        grpo_destroy(&g);
        free(fx);
        model_destroy(&m);
        model_destroy(&ref);
    }
    cr_assert_neq(h[0], h_before, "the step did not change the weights");
    cr_assert_eq(h[0], h[1], "weights differ between identical runs: %016llx vs %016llx",
                 (unsigned long long)h[0], (unsigned long long)h[1]);
    fprintf(stderr, "grpo determinism: weights hash %016llx in both runs\n", (unsigned long long)h[0]);
    tok_destroy(&tok);
}

/* ------------------------------------------------------------------ */

Test(grpo, onpolicy_logprobs_match_actor)
{
    tokenizer_t *tok = fixture_tok();
    model_config_t mc = tiny_model_cfg(tok_vocab_size(tok), 1); /* with an 8x8 image */
    model_t *m = tiny_model(&mc, 1, 21, 6.0f);
    crl_config_t cfg;
    base_cfg(&cfg, &mc);
    cfg.rl.group_size = 8;
    cfg.rl.groups_per_step = 2;
    cfg.rl.kl_coef = 0.0;
    cfg.rl.temperature = 0.8;
    cfg.rl.skip_zero_variance = 0; /* random text scores 0: keep every group */
    char err[256];
    grpo_t *g = grpo_new(m, &cfg, tok, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    const int max_new = 16;
    sampler_t *s = sampler_new(m, 32, max_new, 8);
    grpo_rollout_t *ro[2] = {grpo_rollout_new(8, max_new, 8), grpo_rollout_new(8, max_new, 8)};
    cr_assert(s && ro[0] && ro[1]);
    int np = model_n_patches(&mc);
    int prompt[2][32], pl[2];
    pl[0] = task_encode_prompt(tok, np, 1, "which answer is better? A: two B: three", prompt[0], 32);
    pl[1] = task_encode_prompt(tok, np, 1, "which answer is better? A: three B: two", prompt[1], 32);
    cr_assert(pl[0] > 0 && pl[1] > 0);
    uint8_t img[3 * 8 * 8];
    for (int i = 0; i < 3 * 64; i++)
        img[i] = (uint8_t)((i * 37) & 255);
    grpo_group_t groups[2];
    float adv[2][8], rew[8];
    const float *advs[2] = {adv[0], adv[1]};
    const char *expected[2] = {"A", "B"};
    grpo_rollout_request_t req[2];
    for (int k = 0; k < 2; k++) {
        req[k] = (grpo_rollout_request_t){
            .prompt = {prompt[0], prompt[1]}, .prompt_len = {pl[0], pl[1]}, .alt_count = 4,
            .image = img, .G = 8, .temperature = 0.8f, .top_p = k ? 0.9f : 1.0f,
            .max_new_tokens = max_new, .seed = 1000 + (uint64_t)k};
        cr_assert_eq(grpo_rollout_group(m, s, &req[k], ro[k]), 0);
        grpo_rollout_as_group(&req[k], ro[k], 7, REWARD_TASK_CRITIC, expected, &groups[k]);
        cr_assert_eq(grpo_score_group(g, &groups[k], rew, NULL, NULL, adv[k]), 0);
        for (int i = 0; i < 8; i++)
            adv[k][i] = (i % 2) ? 0.5f : -0.5f; /* nonzero, so every sample is in the loss */
        cr_assert_eq(ro[k]->prompt_index[0], 0);
        cr_assert_eq(ro[k]->prompt_index[7], 1);
    }
    /* Same seed -> same group (the actor contract). */
    grpo_rollout_t *again = grpo_rollout_new(8, max_new, 8);
    cr_assert_eq(grpo_rollout_group(m, s, &req[0], again), 0);
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(again->len[i], ro[0]->len[i]);
        cr_assert(memcmp(again->token_rows[i], ro[0]->token_rows[i], (size_t)again->len[i] * sizeof(int)) == 0);
    }
    adamw_config_t oc = grpo_adamw_config(&cfg);
    adamw_t *opt = adamw_new(m, &oc);
    grpo_stats_t st;
    cr_assert_eq(grpo_step(g, m, NULL, opt, groups, advs, 2, 7, &st), 0);
    fprintf(stderr, "grpo on-policy: max |logp_prox - logp_behav| = %.3g over %ld tokens (%d samples)\n",
            st.max_logp_diff_onpolicy, st.tokens, st.samples_used);
    cr_assert(st.max_logp_diff_onpolicy >= 0.0, "no on-policy sample was seen");
    cr_assert(st.max_logp_diff_onpolicy <= 1e-5, "max |logp_prox - logp_behav| = %g > 1e-5",
              st.max_logp_diff_onpolicy);
    cr_assert(fabs(st.is_weight_mean - 1.0) < 1e-4, "IS weight mean %g, expected 1", st.is_weight_mean);
    cr_assert_eq(st.clip_fraction, 0.0);
    cr_assert_eq(st.samples_used, 16);
    /* A group from an older version is reported as stale, not on policy. */
    groups[0].version = 6;
    groups[1].version = 6;
    cr_assert_eq(grpo_step(g, m, NULL, opt, groups, advs, 2, 7, &st), 0);
    cr_assert(st.max_logp_diff_onpolicy == -1.0);
    cr_assert(st.staleness_max == 1.0 && st.max_logp_diff > 1e-6, "staleness %g, diff %g",
              st.staleness_max, st.max_logp_diff);

    adamw_destroy(&opt);
    grpo_rollout_destroy(&ro[0]);
    grpo_rollout_destroy(&ro[1]);
    grpo_rollout_destroy(&again);
    sampler_destroy(&s);
    grpo_destroy(&g);
    model_destroy(&m);
    tok_destroy(&tok);
}

Test(grpo, rejects_malformed_groups)
{
    tokenizer_t *tok = fixture_tok();
    model_config_t mc = tiny_model_cfg(tok_vocab_size(tok), 0);
    model_t *m = tiny_model(&mc, 1, 3, 5.0f);
    crl_config_t cfg;
    base_cfg(&cfg, &mc);
    cfg.rl.kl_coef = 0.0;
    char err[256];
    grpo_t *g = grpo_new(m, &cfg, tok, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    fixture_groups_t *fx = malloc(sizeof *fx);
    build_fixture_groups(fx, tok, m, 1.0, 0.0f);
    for (int k = 0; k < FX_GROUPS; k++)
        fx->adv_rows[k] = fx->adv[k];
    adamw_config_t oc = grpo_adamw_config(&cfg);
    adamw_t *opt = adamw_new(m, &oc);
    uint64_t h0 = hash_floats(m->params, m->n_params);
    fx->tokens[1][2][1] = mc.vocab_size; /* out of range */
    cr_assert_eq(grpo_step(g, m, NULL, opt, fx->groups, fx->adv_rows, FX_GROUPS, 5, NULL), -EINVAL);
    fx->tokens[1][2][1] = 3;
    fx->groups[0].G = 99; /* larger than rl.group_size */
    cr_assert_eq(grpo_step(g, m, NULL, opt, fx->groups, fx->adv_rows, FX_GROUPS, 5, NULL), -EINVAL);
    fx->groups[0].G = FX_G;
    fx->adv[2][1] = NAN;
    cr_assert_eq(grpo_step(g, m, NULL, opt, fx->groups, fx->adv_rows, FX_GROUPS, 5, NULL), -EINVAL);
    cr_assert_eq(hash_floats(m->params, m->n_params), h0, "a rejected step changed the weights");
    /* kl_coef > 0 without a reference model */
    cfg.rl.kl_coef = 0.01;
    grpo_t *g2 = grpo_new(m, &cfg, tok, err, sizeof err);
    fx->adv[2][1] = 0.0f;
    cr_assert_eq(grpo_step(g2, m, NULL, opt, fx->groups, fx->adv_rows, FX_GROUPS, 5, NULL), -EINVAL);
    adamw_destroy(&opt);
    grpo_destroy(&g);
    grpo_destroy(&g2);
    free(fx);
    model_destroy(&m);
    tok_destroy(&tok);
}

/* ------------------------------------------------------------------ */
/* The learning test: an easy critic task. The prompt shows two candidate
 * answers, one a word from a "correct" set and one from a "wrong" set; the
 * preferred answer is the correct-set word. A supervised warm-up (250 steps
 * of 16) teaches the response format "<think>check</think>\boxed{X}" with X
 * drawn at random (independent of the prompt), so the run starts at chance
 * preference (reward ~0.55 = 0.9*0.5 + 0.1); its language-model loss on the
 * prompt text gives the model a representation of the candidates (without
 * it, a model this small did not learn the task from RL in 60 steps; the
 * recipe's "base critic above chance" point). GRPO with order-balanced
 * groups (16 groups x G=8 per step, lr 3e-3 with a 10-step warm-up, KL
 * 1e-2) must then learn to name the right candidate: mean reward of the
 * last 10 of 60 steps >= first 10 + 0.2. Seeds tried gave +0.41..+0.45 (set
 * CRL_GRPO_TEST_SEED to try others; CRL_GRPO_TEST_DUMP=1 prints samples). */

static const char *k_good[] = {"true", "right", "good", "yes", "correct", "fine"};
static const char *k_bad[] = {"false", "wrong", "bad", "no", "broken", "poor"};
#define N_WORDS 6

static void critic_prompt(char *buf, size_t cap, const char *first, const char *second)
{
    snprintf(buf, cap, "which answer is right? A: %s B: %s", first, second);
}

/* Supervised warm-up on [prompt ; target] with targets at the response. */
static void warmup(model_t *m, const tokenizer_t *tok, int steps, uint64_t seed)
{
    adamw_config_t oc = adamw_config_default();
    oc.lr = 1e-2f;
    oc.weight_decay = 0.0f;
    adamw_t *opt = adamw_new(m, &oc);
    const int B = 16, V = m->cfg.vocab_size;
    model_acts_t *a = model_acts_new(m, B * m->cfg.max_seq_len, B);
    int *toks = malloc((size_t)B * m->cfg.max_seq_len * sizeof(int));
    int *tg = malloc((size_t)B * m->cfg.max_seq_len * sizeof(int));
    float *dl = malloc((size_t)B * m->cfg.max_seq_len * sizeof(float));
    float *lp = malloc((size_t)B * m->cfg.max_seq_len * sizeof(float));
    int ss[17];
    cr_assert(opt && a && toks && tg && dl && lp);
    rng_t r;
    rng_seed(&r, seed);
    for (int step = 0; step < steps; step++) {
        int T = 0, n_tg = 0;
        ss[0] = 0;
        for (int b = 0; b < B; b++) {
            const char *gw = k_good[rng_below(&r, N_WORDS)], *bw = k_bad[rng_below(&r, N_WORDS)];
            int good_first = (int)rng_below(&r, 2);
            char text[128];
            critic_prompt(text, sizeof text, good_first ? gw : bw, good_first ? bw : gw);
            int p[64], resp[32];
            int pl = task_encode_prompt(tok, 0, 0, text, p, 64);
            const char *verdict = rng_below(&r, 2) ? "<think>check</think>\\boxed{A}"
                                                   : "<think>check</think>\\boxed{B}";
            int rl = task_encode_response(tok, verdict, resp, 32);
            cr_assert(pl > 0 && rl > 0);
            /* Language-model loss on the prompt too: predicting the second
             * candidate (always of the other kind than the first) makes the
             * model represent which kind the first one is — the feature the
             * critic needs, which RL then learns to read out. */
            for (int t = 0; t < pl; t++) {
                toks[T + t] = p[t];
                tg[T + t] = t + 1 < pl ? p[t + 1] : resp[0];
            }
            n_tg += pl - 1;
            for (int t = 0; t + 1 < rl; t++) {
                toks[T + pl + t] = resp[t];
                tg[T + pl + t] = resp[t + 1];
            }
            T += pl + rl - 1;
            n_tg += rl;
            ss[b + 1] = T;
        }
        model_batch_t batch = {.n_tokens = T, .n_seqs = B, .seq_start = ss, .tokens = toks};
        float *logits = model_forward(m, a, &batch);
        cr_assert_not_null(logits);
        k_logprobs_fwd(lp, NULL, logits, tg, T, V, 1.0f);
        for (int t = 0; t < T; t++)
            dl[t] = tg[t] >= 0 ? -1.0f / (float)n_tg : 0.0f;
        k_logprobs_bwd(logits, dl, logits, tg, T, V, 1.0f);
        model_zero_grads(m);
        cr_assert_eq(model_backward(m, a, logits), 0);
        adamw_step(opt, m);
    }
    free(toks);
    free(tg);
    free(dl);
    free(lp);
    model_acts_destroy(&a);
    adamw_destroy(&opt);
}

Test(grpo, learns_easy_critic_task, .timeout = 240)
{
    double t0 = now_s();
    /* tokenizer trained on the task's text */
    const char *texts[2 * N_WORDS * N_WORDS + 40];
    char store[2 * N_WORDS * N_WORDS][128];
    int nt = 0;
    for (int i = 0; i < N_WORDS; i++)
        for (int j = 0; j < N_WORDS; j++) {
            critic_prompt(store[nt], 128, k_good[i], k_bad[j]);
            texts[nt] = store[nt];
            nt++;
            critic_prompt(store[nt], 128, k_bad[j], k_good[i]);
            texts[nt] = store[nt];
            nt++;
        }
    /* often enough that "check" and "boxed" become single tokens */
    for (int i = 0; i < 36; i++)
        texts[nt++] = "<think>check</think>\\boxed{A} <think>check</think>\\boxed{B}";
    char err[256];
    tokenizer_t *tok = tok_train(texts, NULL, nt, 320, err, sizeof err);
    cr_assert_not_null(tok, "%s", err);

    model_config_t mc = {
        .vocab_size = tok_vocab_size(tok), .dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 4,
        .hidden_dim = 64, .max_seq_len = 48, .image_size = 0, .patch_size = 0, .tie_embeddings = 0,
        .rope_theta = 10000.0f, .norm_eps = 1e-5f,
    };
    model_t *m = model_new(&mc, 1);
    cr_assert_not_null(m);
    rng_t r;
    uint64_t seed = getenv("CRL_GRPO_TEST_SEED") ? strtoull(getenv("CRL_GRPO_TEST_SEED"), NULL, 10) : 2024;
    rng_seed(&r, seed);
    model_init_random(m, &r);
    warmup(m, tok, 250, seed + 1);
    model_t *ref = model_new(&mc, 0);
    cr_assert_eq(model_copy_params(ref, m), 0);
    double t_warm = now_s() - t0;

    crl_config_t cfg;
    cr_assert_eq(config_defaults(&cfg), 0);
    cfg.model = mc;
    cfg.rl.group_size = 8;
    cfg.rl.groups_per_step = 16;
    cfg.rl.temperature = 1.0;
    cfg.rl.top_p = 1.0;
    cfg.rl.max_new_tokens = 16;
    cfg.rl.lr = 3e-3;
    cfg.rl.kl_coef = 1e-2;
    grpo_t *g = grpo_new(m, &cfg, tok, err, sizeof err);
    cr_assert_not_null(g, "%s", err);
    adamw_config_t oc = grpo_adamw_config(&cfg);
    /* Adam's first steps move every weight by ~lr whatever the gradient:
     * a short warm-up keeps them from wrecking the warmed-up format. */
    oc.warmup_steps = 10;
    adamw_t *opt = adamw_new(m, &oc);
    const int max_new = cfg.rl.max_new_tokens, G = cfg.rl.group_size, NG = cfg.rl.groups_per_step;
    sampler_t *s = sampler_new(m, 32, max_new, G);
    cr_assert(opt && s);
    grpo_rollout_t *ro[16];
    grpo_rollout_request_t req[16];
    grpo_group_t groups[16];
    int prompts[16][2][32];
    float adv[16][8], rew[8];
    const float *advs[16];
    const char *expected[2] = {"A", "B"};
    for (int k = 0; k < NG; k++) {
        ro[k] = grpo_rollout_new(G, max_new, 0);
        cr_assert_not_null(ro[k]);
        advs[k] = adv[k];
    }

    enum { STEPS = 60, K = 10 };
    double curve[STEPS], pref_curve[STEPS], max_onpolicy_diff = 0;
    uint64_t version = 1;
    for (int step = 0; step < STEPS; step++) {
        for (int k = 0; k < NG; k++) {
            /* main prompt: good word first or second at random; alt = swapped */
            const char *gw = k_good[rng_below(&r, N_WORDS)], *bw = k_bad[rng_below(&r, N_WORDS)];
            int good_first = (int)rng_below(&r, 2);
            char t0s[128], t1s[128];
            critic_prompt(t0s, sizeof t0s, good_first ? gw : bw, good_first ? bw : gw);
            critic_prompt(t1s, sizeof t1s, good_first ? bw : gw, good_first ? gw : bw);
            int l0 = task_encode_prompt(tok, 0, 0, t0s, prompts[k][0], 32);
            int l1 = task_encode_prompt(tok, 0, 0, t1s, prompts[k][1], 32);
            cr_assert(l0 > 0 && l1 > 0);
            req[k] = (grpo_rollout_request_t){
                .prompt = {prompts[k][0], prompts[k][1]}, .prompt_len = {l0, l1}, .alt_count = G / 2,
                .image = NULL, .G = G, .temperature = (float)cfg.rl.temperature,
                .top_p = (float)cfg.rl.top_p, .max_new_tokens = max_new,
                .seed = 1000003ull * (uint64_t)step + (uint64_t)k};
            const char *exp_k[2] = {good_first ? expected[0] : expected[1],
                                    good_first ? expected[1] : expected[0]};
            cr_assert_eq(grpo_rollout_group(m, s, &req[k], ro[k]), 0);
            /* expected strings must outlive the step: point at the static labels */
            grpo_rollout_as_group(&req[k], ro[k], version, REWARD_TASK_CRITIC, exp_k, &groups[k]);
            cr_assert_eq(grpo_score_group(g, &groups[k], rew, NULL, NULL, adv[k]), 0);
            if (getenv("CRL_GRPO_TEST_DUMP") && k == 0 && (step == 0 || step == STEPS - 1)) {
                char txt[512];
                for (int i = 0; i < G; i++) {
                    long n = tok_decode(tok, ro[k]->token_rows[i], ro[k]->len[i], txt, sizeof txt);
                    fprintf(stderr, "  [%s] len %d r %.2f: %s\n", t0s, ro[k]->len[i], (double)rew[i],
                            n >= 0 ? txt : "?");
                }
            }
        }
        grpo_stats_t st;
        cr_assert_eq(grpo_step(g, m, ref, opt, groups, advs, NG, version, &st), 0);
        curve[step] = st.reward_mean;
        pref_curve[step] = st.preference_acc;
        if (step == 0 || step % 10 == 9)
            fprintf(stderr,
                    "grpo learn step %2d: reward %.3f pref %.3f format %.3f says-A %.2f kl %.4f "
                    "entropy %.3f skipped %d/%d onpolicy-diff %.2g\n",
                    step + 1, st.reward_mean, st.preference_acc, st.format_rate, st.says_first_rate,
                    st.kl, st.entropy, st.groups_skipped, NG, st.max_logp_diff_onpolicy);
        /* Actor (KV-cache decode) and learner (packed forward) sum in
         * different orders; as the weights grow the difference grows past
         * the fresh-model 1e-6 (1.9e-5 seen at step 50 of one seed). */
        if (st.max_logp_diff_onpolicy > max_onpolicy_diff)
            max_onpolicy_diff = st.max_logp_diff_onpolicy;
        cr_assert(st.max_logp_diff_onpolicy <= 1e-4, "step %d: on-policy log-prob mismatch %g",
                  step, st.max_logp_diff_onpolicy);
        version++;
    }
    double first = 0, last = 0, pf = 0, pl = 0;
    for (int i = 0; i < K; i++) {
        first += curve[i] / K;
        last += curve[STEPS - K + i] / K;
        pf += pref_curve[i] / K;
        pl += pref_curve[STEPS - K + i] / K;
    }
    fprintf(stderr, "grpo learning curve (mean reward per step):");
    for (int i = 0; i < STEPS; i++)
        fprintf(stderr, "%s%.2f", i % 15 ? " " : "\n  ", curve[i]);
    fprintf(stderr, "\ngrpo learn: first %d steps %.3f (pref %.3f), last %d steps %.3f (pref %.3f), "
                    "gain %+.3f; max on-policy |logp diff| %.2g; warm-up %.1f s, total %.1f s\n",
            K, first, pf, K, last, pl, last - first, max_onpolicy_diff, t_warm, now_s() - t0);
    cr_assert(last - first >= 0.2, "mean reward: first %d steps %.3f, last %d steps %.3f: gain %.3f < 0.2",
              K, first, K, last, last - first);

    for (int k = 0; k < NG; k++)
        grpo_rollout_destroy(&ro[k]);
    sampler_destroy(&s);
    adamw_destroy(&opt);
    grpo_destroy(&g);
    model_destroy(&m);
    model_destroy(&ref);
    tok_destroy(&tok);
}
