/* Tests of common/kernels: fast kernels against their *_naive oracles,
 * every backward against central finite differences, and the structural
 * properties (causality, sequence independence, accumulation) the model and
 * the sampler rely on.
 *
 * Finite differences: the kernels only exist in float32, so the FD is taken
 * on the float kernels with eps = 1e-3 and the scalar loss L = sum(out * R)
 * (R fixed, random) summed in double. The float rounding of the outputs
 * (~6e-8 relative) divided by 2*eps gives ~1e-4 noise on a gradient of size
 * ~1, and truncation is O(eps^2) ~ 1e-6, so |analytic - fd| <= 5e-3 + 1e-2 |fd|
 * catches any wrong term (which shows up as O(1) errors) without flaking. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "rng.h"

#define FD_EPS 1e-3
#define FD_ATOL 5e-3
#define FD_RTOL 1e-2

static float *rand_buf(rng_t *r, size_t n, float scale)
{
    float *p = malloc(n * sizeof(float) + 1);
    cr_assert_not_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * rng_normal(r);
    return p;
}

static float *zero_buf(size_t n)
{
    float *p = calloc(n + 1, sizeof(float));
    cr_assert_not_null(p);
    return p;
}

static float *copy_buf(const float *src, size_t n)
{
    float *p = malloc(n * sizeof(float) + 1);
    cr_assert_not_null(p);
    memcpy(p, src, n * sizeof(float));
    return p;
}

static void assert_close(const char *what, const float *got, const float *want, size_t n, double atol,
                         double rtol)
{
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        cr_assert(d <= atol + rtol * fabs(want[i]), "%s[%zu]: expected %.9g, got %.9g (|diff| %.3g)",
                  what, i, want[i], got[i], d);
    }
}

/* A forward pass under test: writes nout outputs from the inputs in ctx. */
typedef void (*fwd_fn)(void *ctx, float *out);

static double loss_of(fwd_fn f, void *ctx, float *out, const float *R, size_t nout)
{
    f(ctx, out);
    double l = 0.0;
    for (size_t i = 0; i < nout; i++)
        l += (double)out[i] * R[i];
    return l;
}

/* Checks analytic[i] == dL/dparam[i] by central differences, L = sum(out*R). */
static void fd_check(const char *what, fwd_fn f, void *ctx, float *param, size_t np,
                     const float *analytic, const float *R, size_t nout)
{
    float *out = zero_buf(nout);
    for (size_t i = 0; i < np; i++) {
        float save = param[i];
        param[i] = save + (float)FD_EPS;
        double lp = loss_of(f, ctx, out, R, nout);
        param[i] = save - (float)FD_EPS;
        double lm = loss_of(f, ctx, out, R, nout);
        param[i] = save;
        double fd = (lp - lm) / (2.0 * FD_EPS);
        double d = fabs(fd - analytic[i]);
        cr_assert(d <= FD_ATOL + FD_RTOL * fabs(fd),
                  "%s[%zu]: finite difference %.6g, analytic %.6g (|diff| %.3g)", what, i, fd,
                  analytic[i], d);
    }
    free(out);
}

/* ------------------------------------------------------------------ matmul */

Test(kernels, matmul_fwd_matches_naive)
{
    rng_t r;
    rng_seed(&r, 1);
    const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {37, 64, 50}, {130, 96, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *in = rand_buf(&r, (size_t)T * K, 1.0f), *W = rand_buf(&r, (size_t)N * K, 0.3f);
        float *b = rand_buf(&r, (size_t)N, 1.0f);
        float *o1 = zero_buf((size_t)T * N), *o2 = zero_buf((size_t)T * N);
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            k_matmul_fwd(o1, in, W, with_bias ? b : NULL, T, K, N);
            k_matmul_fwd_naive(o2, in, W, with_bias ? b : NULL, T, K, N);
            assert_close("matmul out", o1, o2, (size_t)T * N, 1e-4, 1e-4);
        }
        free(in), free(W), free(b), free(o1), free(o2);
    }
}

Test(kernels, matmul_bwd_matches_naive)
{
    rng_t r;
    rng_seed(&r, 2);
    const int T = 33, K = 20, N = 17;
    float *in = rand_buf(&r, (size_t)T * K, 1.0f), *W = rand_buf(&r, (size_t)N * K, 0.5f);
    float *dout = rand_buf(&r, (size_t)T * N, 1.0f);
    /* Start from nonzero gradients: the kernels must add, not overwrite. */
    float *din1 = rand_buf(&r, (size_t)T * K, 1.0f), *dW1 = rand_buf(&r, (size_t)N * K, 1.0f);
    float *db1 = rand_buf(&r, (size_t)N, 1.0f);
    float *din2 = copy_buf(din1, (size_t)T * K), *dW2 = copy_buf(dW1, (size_t)N * K);
    float *db2 = copy_buf(db1, (size_t)N);
    k_matmul_bwd(din1, dW1, db1, dout, in, W, T, K, N);
    k_matmul_bwd_naive(din2, dW2, db2, dout, in, W, T, K, N);
    assert_close("din", din1, din2, (size_t)T * K, 1e-4, 1e-4);
    assert_close("dW", dW1, dW2, (size_t)N * K, 1e-4, 1e-4);
    assert_close("dbias", db1, db2, (size_t)N, 1e-4, 1e-4);
    /* NULL gradients are skipped, the others still computed. */
    float *din3 = zero_buf((size_t)T * K), *din4 = zero_buf((size_t)T * K);
    k_matmul_bwd(din3, NULL, NULL, dout, in, W, T, K, N);
    k_matmul_bwd_naive(din4, NULL, NULL, dout, in, W, T, K, N);
    assert_close("din only", din3, din4, (size_t)T * K, 1e-4, 1e-4);
    free(in), free(W), free(dout), free(din1), free(dW1), free(db1), free(din2), free(dW2),
        free(db2), free(din3), free(din4);
}

struct mm_ctx {
    float *in, *W, *b;
    int T, K, N;
};

static void mm_fwd(void *c, float *out)
{
    struct mm_ctx *m = c;
    k_matmul_fwd(out, m->in, m->W, m->b, m->T, m->K, m->N);
}

Test(kernels, matmul_bwd_finite_difference)
{
    rng_t r;
    rng_seed(&r, 3);
    struct mm_ctx m = {.T = 4, .K = 5, .N = 3};
    m.in = rand_buf(&r, 20, 1.0f), m.W = rand_buf(&r, 15, 1.0f), m.b = rand_buf(&r, 3, 1.0f);
    float *R = rand_buf(&r, 12, 1.0f);
    float *din = zero_buf(20), *dW = zero_buf(15), *db = zero_buf(3);
    k_matmul_bwd(din, dW, db, R, m.in, m.W, m.T, m.K, m.N);
    fd_check("matmul din", mm_fwd, &m, m.in, 20, din, R, 12);
    fd_check("matmul dW", mm_fwd, &m, m.W, 15, dW, R, 12);
    fd_check("matmul dbias", mm_fwd, &m, m.b, 3, db, R, 12);
    free(m.in), free(m.W), free(m.b), free(R), free(din), free(dW), free(db);
}

/* --------------------------------------------------------------- embedding */

Test(kernels, embed_fwd_copies_rows_and_skips_image_slots)
{
    rng_t r;
    rng_seed(&r, 4);
    const int V = 6, D = 5, T = 4;
    float *table = rand_buf(&r, (size_t)V * D, 1.0f);
    int tokens[4] = {3, -1, 0, 3};
    float *out = zero_buf((size_t)T * D);
    for (int d = 0; d < D; d++)
        out[1 * D + d] = 42.0f; /* an image slot the caller has filled */
    k_embed_fwd(out, table, tokens, T, D);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            float want = tokens[t] < 0 ? 42.0f : table[tokens[t] * D + d];
            cr_assert_eq(out[t * D + d], want, "out[%d][%d]: expected %g, got %g", t, d, want,
                         out[t * D + d]);
        }
    free(table), free(out);
}

Test(kernels, embed_bwd_accumulates_repeated_tokens)
{
    rng_t r;
    rng_seed(&r, 5);
    const int V = 4, D = 3, T = 6;
    int tokens[6] = {2, 0, 2, -1, 2, 1};
    float *dout = rand_buf(&r, (size_t)T * D, 1.0f);
    float *dtab = rand_buf(&r, (size_t)V * D, 1.0f);
    float *init = copy_buf(dtab, (size_t)V * D);
    k_embed_bwd(dtab, dout, tokens, T, D);
    for (int v = 0; v < V; v++)
        for (int d = 0; d < D; d++) {
            double want = init[v * D + d];
            for (int t = 0; t < T; t++)
                if (tokens[t] == v)
                    want += dout[t * D + d];
            cr_assert(fabs(dtab[v * D + d] - want) < 1e-5, "dtable[%d][%d]: expected %g, got %g", v,
                      d, want, dtab[v * D + d]);
        }
    free(dout), free(dtab), free(init);
}

/* ----------------------------------------------------------------- RMSNorm */

Test(kernels, rmsnorm_fwd_matches_direct_formula)
{
    rng_t r;
    rng_seed(&r, 6);
    const int T = 5, D = 37;
    const float eps = 1e-5f;
    float *x = rand_buf(&r, (size_t)T * D, 2.0f), *w = rand_buf(&r, D, 1.0f);
    float *out = zero_buf((size_t)T * D), *rstd = zero_buf(T);
    k_rmsnorm_fwd(out, rstd, x, w, T, D, eps);
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int d = 0; d < D; d++)
            ss += (double)x[t * D + d] * x[t * D + d];
        double rs = 1.0 / sqrt(ss / D + eps);
        cr_assert(fabs(rstd[t] - rs) <= 1e-6 * rs, "rstd[%d]: expected %.9g, got %.9g", t, rs,
                  rstd[t]);
        for (int d = 0; d < D; d++) {
            double want = x[t * D + d] * rs * w[d];
            cr_assert(fabs(out[t * D + d] - want) <= 1e-5 * (1 + fabs(want)),
                      "out[%d][%d]: expected %.9g, got %.9g", t, d, want, out[t * D + d]);
        }
    }
    free(x), free(w), free(out), free(rstd);
}

struct rms_ctx {
    float *x, *w, *rstd;
    int T, D;
};

static void rms_fwd(void *c, float *out)
{
    struct rms_ctx *m = c;
    k_rmsnorm_fwd(out, m->rstd, m->x, m->w, m->T, m->D, 1e-5f);
}

Test(kernels, rmsnorm_bwd_finite_difference)
{
    rng_t r;
    rng_seed(&r, 7);
    struct rms_ctx m = {.T = 3, .D = 6};
    size_t n = 18;
    m.x = rand_buf(&r, n, 1.0f), m.w = rand_buf(&r, 6, 1.0f), m.rstd = zero_buf(3);
    float *R = rand_buf(&r, n, 1.0f), *out = zero_buf(n);
    rms_fwd(&m, out);
    float *dx = zero_buf(n), *dw = zero_buf(6);
    k_rmsnorm_bwd(dx, dw, R, m.x, m.w, m.rstd, m.T, m.D);
    fd_check("rmsnorm dx", rms_fwd, &m, m.x, n, dx, R, n);
    fd_check("rmsnorm dw", rms_fwd, &m, m.w, 6, dw, R, n);
    free(m.x), free(m.w), free(m.rstd), free(R), free(out), free(dx), free(dw);
}

/* -------------------------------------------------------------------- RoPE */

Test(kernels, rope_fwd_matches_direct_formula)
{
    rng_t r;
    rng_seed(&r, 8);
    const int T = 5, H = 3, hd = 8, half = 4, maxp = 64;
    const float theta = 10000.0f;
    float *ct = zero_buf((size_t)maxp * half), *st = zero_buf((size_t)maxp * half);
    k_rope_table(ct, st, maxp, hd, theta);
    int pos[5] = {0, 1, 7, 30, 63};
    float *x = rand_buf(&r, (size_t)T * H * hd, 1.0f), *x0 = copy_buf(x, (size_t)T * H * hd);
    k_rope_fwd(x, pos, ct, st, T, H, hd);
    /* Direct formula in double: pair (i, i+half) rotated by pos * theta^(-2i/hd). */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < half; i++) {
                double ang = pos[t] * pow(theta, -2.0 * i / hd);
                const float *a = x0 + ((size_t)t * H + h) * hd;
                double w1 = a[i] * cos(ang) - a[i + half] * sin(ang);
                double w2 = a[i + half] * cos(ang) + a[i] * sin(ang);
                const float *g = x + ((size_t)t * H + h) * hd;
                /* 1e-5: the table rounds the angle to float as Hugging Face does. */
                cr_assert(fabs(g[i] - w1) < 1e-5 && fabs(g[i + half] - w2) < 1e-5,
                          "t %d h %d i %d: expected (%g, %g), got (%g, %g)", t, h, i, w1, w2, g[i],
                          g[i + half]);
            }
    free(ct), free(st), free(x), free(x0);
}

Test(kernels, rope_bwd_inverts_fwd)
{
    rng_t r;
    rng_seed(&r, 9);
    const int T = 6, H = 2, hd = 16, maxp = 100;
    float *ct = zero_buf((size_t)maxp * hd / 2), *st = zero_buf((size_t)maxp * hd / 2);
    k_rope_table(ct, st, maxp, hd, 10000.0f);
    int pos[6] = {0, 3, 99, 50, 2, 2};
    size_t n = (size_t)T * H * hd;
    float *x = rand_buf(&r, n, 1.0f), *x0 = copy_buf(x, n);
    k_rope_fwd(x, pos, ct, st, T, H, hd);
    k_rope_bwd(x, pos, ct, st, T, H, hd);
    assert_close("rope bwd(fwd(x))", x, x0, n, 1e-6, 1e-6);
    free(ct), free(st), free(x), free(x0);
}

struct rope_ctx {
    float *x, *ct, *st;
    const int *pos;
    int T, H, hd;
};

static void rope_fwd_copy(void *c, float *out)
{
    struct rope_ctx *m = c;
    memcpy(out, m->x, (size_t)m->T * m->H * m->hd * sizeof(float));
    k_rope_fwd(out, m->pos, m->ct, m->st, m->T, m->H, m->hd);
}

Test(kernels, rope_bwd_finite_difference)
{
    rng_t r;
    rng_seed(&r, 10);
    int pos[3] = {1, 5, 12};
    struct rope_ctx m = {.pos = pos, .T = 3, .H = 2, .hd = 4};
    size_t n = 24;
    m.ct = zero_buf(16 * 2), m.st = zero_buf(16 * 2);
    k_rope_table(m.ct, m.st, 16, 4, 10000.0f);
    m.x = rand_buf(&r, n, 1.0f);
    float *R = rand_buf(&r, n, 1.0f), *dx = copy_buf(R, n);
    k_rope_bwd(dx, pos, m.ct, m.st, m.T, m.H, m.hd);
    fd_check("rope dx", rope_fwd_copy, &m, m.x, n, dx, R, n);
    free(m.ct), free(m.st), free(m.x), free(R), free(dx);
}

/* --------------------------------------------------------------- attention */

struct att_ctx {
    float *q, *k, *v, *att;
    const int *ss;
    int nseq, H, KVH, hd;
};

static void att_fwd(void *c, float *out)
{
    struct att_ctx *a = c;
    k_attention_fwd(out, a->att, a->q, a->k, a->v, a->ss, a->nseq, a->H, a->KVH, a->hd);
}

static void att_setup(struct att_ctx *a, rng_t *r, const int *ss, int nseq, int H, int KVH, int hd)
{
    int T = ss[nseq];
    a->ss = ss, a->nseq = nseq, a->H = H, a->KVH = KVH, a->hd = hd;
    a->q = rand_buf(r, (size_t)T * H * hd, 1.0f);
    a->k = rand_buf(r, (size_t)T * KVH * hd, 1.0f);
    a->v = rand_buf(r, (size_t)T * KVH * hd, 1.0f);
    a->att = zero_buf(k_attention_att_size(ss, nseq, H));
}

static void att_free(struct att_ctx *a)
{
    free(a->q), free(a->k), free(a->v), free(a->att);
}

static void check_attention_vs_naive(const int *ss, int nseq, int H, int KVH, int hd, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    struct att_ctx a;
    att_setup(&a, &r, ss, nseq, H, KVH, hd);
    int T = ss[nseq];
    size_t no = (size_t)T * H * hd, na = k_attention_att_size(ss, nseq, H);
    float *o1 = zero_buf(no), *o2 = zero_buf(no), *att2 = zero_buf(na);
    k_attention_fwd(o1, a.att, a.q, a.k, a.v, ss, nseq, H, KVH, hd);
    k_attention_fwd_naive(o2, att2, a.q, a.k, a.v, ss, nseq, H, KVH, hd);
    assert_close("attention out", o1, o2, no, 2e-5, 1e-4);
    /* probabilities: only the causal part (j <= i) of each block is defined */
    size_t off = 0;
    for (int s = 0; s < nseq; s++) {
        int n = ss[s + 1] - ss[s];
        for (int h = 0; h < H; h++, off += (size_t)n * n)
            for (int i = 0; i < n; i++)
                assert_close("attention probs", a.att + off + (size_t)i * n, att2 + off + (size_t)i * n,
                             (size_t)i + 1, 1e-6, 1e-4);
    }
    free(o1), free(o2), free(att2);
    att_free(&a);
}

Test(kernels, attention_fwd_matches_naive_packed_gqa)
{
    int ss[4] = {0, 1, 6, 9}; /* lengths 1, 5, 3 */
    check_attention_vs_naive(ss, 3, 4, 2, 8, 11);
    check_attention_vs_naive(ss, 3, 4, 4, 8, 12);
    check_attention_vs_naive(ss, 3, 4, 1, 8, 13);
}

Test(kernels, attention_fwd_matches_naive_long_sequences)
{
    int ss[4] = {0, 70, 103, 232}; /* crosses any block boundary */
    check_attention_vs_naive(ss, 3, 4, 2, 16, 14);
}

/* The backward crosses ATT_BLOCK (64) boundaries only for long sequences,
 * which the finite-difference tests cannot afford: check it against the
 * double-precision oracle there. Gradients start nonzero (they accumulate). */
Test(kernels, attention_bwd_matches_naive_long_sequences)
{
    rng_t r;
    rng_seed(&r, 26);
    int ss[5] = {0, 70, 103, 232, 233};
    const int nseq = 4, H = 4, KVH = 2, hd = 16, T = 233;
    struct att_ctx a;
    att_setup(&a, &r, ss, nseq, H, KVH, hd);
    size_t nq = (size_t)T * H * hd, nk = (size_t)T * KVH * hd;
    float *out = zero_buf(nq), *dout = rand_buf(&r, nq, 1.0f);
    float *dq1 = rand_buf(&r, nq, 1.0f), *dk1 = rand_buf(&r, nk, 1.0f), *dv1 = rand_buf(&r, nk, 1.0f);
    float *dq2 = copy_buf(dq1, nq), *dk2 = copy_buf(dk1, nk), *dv2 = copy_buf(dv1, nk);
    float *scratch = zero_buf(k_attention_scratch_size(ss, nseq, H, hd));
    k_attention_fwd(out, a.att, a.q, a.k, a.v, ss, nseq, H, KVH, hd);
    k_attention_bwd(dq1, dk1, dv1, dout, a.att, a.q, a.k, a.v, ss, nseq, H, KVH, hd, scratch);
    k_attention_bwd_naive(dq2, dk2, dv2, dout, a.att, a.q, a.k, a.v, ss, nseq, H, KVH, hd);
    assert_close("attention dq", dq1, dq2, nq, 1e-4, 1e-4);
    assert_close("attention dk", dk1, dk2, nk, 1e-4, 1e-4);
    assert_close("attention dv", dv1, dv2, nk, 1e-4, 1e-4);
    free(out), free(dout), free(dq1), free(dk1), free(dv1), free(dq2), free(dk2), free(dv2),
        free(scratch);
    att_free(&a);
}

/* Changing every q/k/v value of sequence 2 leaves sequences 1 and 3 bit for
 * bit unchanged; changing row j of a sequence leaves its rows < j unchanged. */
Test(kernels, attention_respects_sequence_and_causal_boundaries)
{
    rng_t r;
    rng_seed(&r, 15);
    int ss[4] = {0, 1, 6, 9};
    const int H = 4, KVH = 2, hd = 8, T = 9, qs = H * hd, ks = KVH * hd;
    struct att_ctx a;
    att_setup(&a, &r, ss, 3, H, KVH, hd);
    float *o1 = zero_buf((size_t)T * qs), *o2 = zero_buf((size_t)T * qs);
    k_attention_fwd(o1, a.att, a.q, a.k, a.v, ss, 3, H, KVH, hd);
    for (int t = 1; t < 6; t++) {
        for (int c = 0; c < qs; c++)
            a.q[t * qs + c] += 1.5f;
        for (int c = 0; c < ks; c++)
            a.k[t * ks + c] -= 0.7f, a.v[t * ks + c] *= 3.0f;
    }
    k_attention_fwd(o2, a.att, a.q, a.k, a.v, ss, 3, H, KVH, hd);
    for (int t = 0; t < T; t++) {
        if (t >= 1 && t < 6)
            continue;
        for (int c = 0; c < qs; c++)
            cr_assert_eq(o1[t * qs + c], o2[t * qs + c],
                         "row %d (not in sequence 2) changed: %.9g -> %.9g", t, o1[t * qs + c],
                         o2[t * qs + c]);
    }
    /* causal: perturb k, v of row 4 (position 3 of sequence 2) */
    k_attention_fwd(o1, a.att, a.q, a.k, a.v, ss, 3, H, KVH, hd);
    for (int c = 0; c < ks; c++)
        a.k[4 * ks + c] += 2.0f, a.v[4 * ks + c] -= 1.0f;
    k_attention_fwd(o2, a.att, a.q, a.k, a.v, ss, 3, H, KVH, hd);
    for (int t = 1; t < 4; t++)
        for (int c = 0; c < qs; c++)
            cr_assert_eq(o1[t * qs + c], o2[t * qs + c], "row %d saw a later token: %.9g -> %.9g", t,
                         o1[t * qs + c], o2[t * qs + c]);
    int changed = 0;
    for (int c = 0; c < qs; c++)
        changed += o1[4 * qs + c] != o2[4 * qs + c];
    cr_assert_gt(changed, 0, "row 4 did not see its own changed key/value");
    /* a length-1 sequence attends only to itself: out = v */
    for (int h = 0; h < H; h++)
        for (int c = 0; c < hd; c++)
            cr_assert(fabs(o2[h * hd + c] - a.v[(h / 2) * hd + c]) < 1e-6,
                      "length-1 sequence head %d: expected v, got %g", h, o2[h * hd + c]);
    free(o1), free(o2);
    att_free(&a);
}

static void check_attention_bwd_fd(int H, int KVH, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    int ss[4] = {0, 1, 6, 9};
    const int hd = 4, T = 9;
    struct att_ctx a;
    att_setup(&a, &r, ss, 3, H, KVH, hd);
    size_t nq = (size_t)T * H * hd, nk = (size_t)T * KVH * hd;
    float *R = rand_buf(&r, nq, 1.0f), *out = zero_buf(nq);
    float *dq = zero_buf(nq), *dk = zero_buf(nk), *dv = zero_buf(nk);
    float *scratch = zero_buf(k_attention_scratch_size(ss, 3, H, hd));
    att_fwd(&a, out);
    k_attention_bwd(dq, dk, dv, R, a.att, a.q, a.k, a.v, ss, 3, H, KVH, hd, scratch);
    fd_check("attention dq", att_fwd, &a, a.q, nq, dq, R, nq);
    fd_check("attention dk", att_fwd, &a, a.k, nk, dk, R, nq);
    fd_check("attention dv", att_fwd, &a, a.v, nk, dv, R, nq);
    free(R), free(out), free(dq), free(dk), free(dv), free(scratch);
    att_free(&a);
}

Test(kernels, attention_bwd_finite_difference_gqa)
{
    check_attention_bwd_fd(4, 2, 16);
}

Test(kernels, attention_bwd_finite_difference_mha)
{
    check_attention_bwd_fd(4, 4, 17);
}

/* ------------------------------------------------------- SwiGLU, GELU, add */

Test(kernels, swiglu_fwd_matches_direct_formula)
{
    rng_t r;
    rng_seed(&r, 18);
    const size_t n = 301;
    float *g = rand_buf(&r, n, 4.0f), *u = rand_buf(&r, n, 1.0f), *o = zero_buf(n);
    g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f;
    k_swiglu_fwd(o, g, u, n);
    for (size_t i = 0; i < n; i++) {
        double want = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        cr_assert(fabs(o[i] - want) <= 1e-6 * (1 + fabs(want)), "swiglu[%zu] (g=%g): expected %.9g, got %.9g",
                  i, g[i], want, o[i]);
    }
    free(g), free(u), free(o);
}

struct ew_ctx {
    float *a, *b;
    size_t n;
};

static void swiglu_f(void *c, float *out)
{
    struct ew_ctx *m = c;
    k_swiglu_fwd(out, m->a, m->b, m->n);
}

Test(kernels, swiglu_bwd_finite_difference)
{
    rng_t r;
    rng_seed(&r, 19);
    struct ew_ctx m = {.n = 40};
    m.a = rand_buf(&r, m.n, 3.0f), m.b = rand_buf(&r, m.n, 1.0f);
    float *R = rand_buf(&r, m.n, 1.0f), *dg = zero_buf(m.n), *du = zero_buf(m.n);
    k_swiglu_bwd(dg, du, R, m.a, m.b, m.n);
    fd_check("swiglu dgate", swiglu_f, &m, m.a, m.n, dg, R, m.n);
    fd_check("swiglu dup", swiglu_f, &m, m.b, m.n, du, R, m.n);
    free(m.a), free(m.b), free(R), free(dg), free(du);
}

Test(kernels, gelu_is_exact_erf_form)
{
    /* Reference values of 0.5 x (1 + erf(x / sqrt 2)); the tanh approximation
     * is off by ~1.5e-4 at x = 1, far beyond the 1e-6 tolerance. */
    const float x[5] = {1.0f, -1.0f, 0.5f, 3.0f, -4.0f};
    const double want[5] = {0.8413447460685429, -0.15865525393145707, 0.34573123063700656,
                            2.9959502005229350, -1.2668566867320e-4};
    float out[5];
    k_gelu_fwd(out, x, 5);
    for (int i = 0; i < 5; i++)
        cr_assert(fabs(out[i] - want[i]) <= 1e-6 * (1 + fabs(want[i])),
                  "gelu(%g): expected %.9g, got %.9g", x[i], want[i], out[i]);
}

static void gelu_f(void *c, float *out)
{
    struct ew_ctx *m = c;
    k_gelu_fwd(out, m->a, m->n);
}

Test(kernels, gelu_bwd_finite_difference)
{
    rng_t r;
    rng_seed(&r, 20);
    struct ew_ctx m = {.n = 40};
    m.a = rand_buf(&r, m.n, 2.0f);
    float *R = rand_buf(&r, m.n, 1.0f), *d = zero_buf(m.n);
    k_gelu_bwd(d, R, m.a, m.n);
    fd_check("gelu din", gelu_f, &m, m.a, m.n, d, R, m.n);
    free(m.a), free(R), free(d);
}

Test(kernels, add_allows_aliasing)
{
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {10, 20, 30, 40, 50};
    k_add(a, a, b, 5);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(a[i], (float)(11 * (i + 1)), "a[%d] = %g", i, a[i]);
    k_add(b, a, b, 5);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(b[i], (float)(21 * (i + 1)), "b[%d] = %g", i, b[i]);
}

Test(kernels, exp_matches_libm)
{
    /* 4e-7 relative = about 3 float ulps, over the whole finite range. */
    for (double x = -87.0; x <= 88.0; x += 0.00731) {
        double want = exp(x);
        float got = k_expf((float)x);
        double w = exp((double)(float)x);
        cr_assert(fabs(got - w) <= 4e-7 * w, "exp(%.9g): expected %.9g, got %.9g (rel %.3g)", (float)x,
                  w, got, fabs(got - w) / w);
        (void)want;
    }
    cr_assert_eq(k_expf(0.0f), 1.0f, "exp(0) = %.9g", k_expf(0.0f));
    cr_assert_eq(k_expf(-100.0f), 0.0f, "exp(-100) = %g, expected flush to 0", k_expf(-100.0f));
    cr_assert_eq(k_expf(-INFINITY), 0.0f, "exp(-inf) = %g", k_expf(-INFINITY));
    cr_assert(isnan(k_expf(NAN)), "exp(nan) = %g, expected nan", k_expf(NAN));
    cr_assert(isfinite(k_expf(1000.0f)), "exp(1000) should clamp to a finite value");
}

Test(kernels, gelu_matches_erf_over_range)
{
    /* Relative error <= 1e-6 + 2e-7 x^2 in both tails (x Phi(x) ~ 1e-30 at
     * x = -11): the float rounding of the exp argument -x^2/2 grows with x^2.
     * (PyTorch's float 1 + erf(x) is far worse there: it cancels.) */
    const size_t n = 2401;
    float *x = zero_buf(n), *y = zero_buf(n);
    for (size_t i = 0; i < n; i++)
        x[i] = -12.0f + 0.01f * (float)i;
    k_gelu_fwd(y, x, n);
    for (size_t i = 0; i < n; i++) {
        double xd = x[i];
        double want = 0.5 * xd * erfc(-xd / sqrt(2.0));
        cr_assert(fabs(y[i] - want) <= (1e-6 + 2e-7 * xd * xd) * fabs(want) + 1e-35, "gelu(%.9g): expected %.9g, got %.9g",
                  x[i], want, y[i]);
    }
    free(x), free(y);
}

/* The AVX2 body and the scalar tail compute the same arithmetic, so an
 * element's value does not depend on its position in the array (the sampler
 * scores one row at a time, the learner whole batches). */
Test(kernels, vector_and_scalar_paths_agree_bitwise)
{
    rng_t r;
    rng_seed(&r, 25);
    const size_t n = 19;
    float *g = rand_buf(&r, n, 3.0f), *u = rand_buf(&r, n, 1.0f), *d = rand_buf(&r, n, 1.0f);
    float *all = zero_buf(n), *dg_all = zero_buf(n), *du_all = zero_buf(n);
    k_swiglu_fwd(all, g, u, n);
    k_swiglu_bwd(dg_all, du_all, d, g, u, n);
    for (size_t i = 0; i < n; i++) {
        float one, dg1 = 0, du1 = 0;
        k_swiglu_fwd(&one, g + i, u + i, 1);
        k_swiglu_bwd(&dg1, &du1, d + i, g + i, u + i, 1);
        cr_assert_eq(one, all[i], "swiglu element %zu: alone %.9g, in array %.9g", i, one, all[i]);
        cr_assert_eq(dg1, dg_all[i], "swiglu dgate element %zu: %.9g vs %.9g", i, dg1, dg_all[i]);
        cr_assert_eq(du1, du_all[i], "swiglu dup element %zu: %.9g vs %.9g", i, du1, du_all[i]);
    }
    k_gelu_fwd(all, g, n);
    memset(dg_all, 0, n * sizeof(float));
    k_gelu_bwd(dg_all, d, g, n);
    for (size_t i = 0; i < n; i++) {
        float one, d1 = 0;
        k_gelu_fwd(&one, g + i, 1);
        k_gelu_bwd(&d1, d + i, g + i, 1);
        cr_assert_eq(one, all[i], "gelu element %zu: alone %.9g, in array %.9g", i, one, all[i]);
        cr_assert_eq(d1, dg_all[i], "gelu din element %zu: alone %.9g, in array %.9g", i, d1, dg_all[i]);
    }
    free(g), free(u), free(d), free(all), free(dg_all), free(du_all);
}

/* ---------------------------------------------------------------- logprobs */

/* Direct double-precision log softmax(l / temp)[y] and entropy. */
static void direct_logp(const float *l, int V, float temp, int y, double *logp, double *ent)
{
    double m = -INFINITY;
    for (int j = 0; j < V; j++)
        m = fmax(m, (double)l[j] / temp);
    double s = 0;
    for (int j = 0; j < V; j++)
        s += exp((double)l[j] / temp - m);
    double lse = m + log(s);
    *logp = y >= 0 ? (double)l[y] / temp - lse : 0.0;
    double h = 0;
    for (int j = 0; j < V; j++) {
        double lp = (double)l[j] / temp - lse;
        h -= exp(lp) * lp;
    }
    *ent = h;
}

Test(kernels, logprobs_fwd_matches_direct_with_temperature)
{
    rng_t r;
    rng_seed(&r, 21);
    const int T = 6, V = 50;
    float *l = rand_buf(&r, (size_t)T * V, 3.0f);
    int tg[6] = {0, 49, -1, 7, 7, 20};
    const float temps[3] = {1.0f, 0.7f, 1.6f};
    float logp[6], ent[6];
    for (int k = 0; k < 3; k++) {
        k_logprobs_fwd(logp, ent, l, tg, T, V, temps[k]);
        for (int t = 0; t < T; t++) {
            double wl, we;
            direct_logp(l + t * V, V, temps[k], tg[t], &wl, &we);
            cr_assert(fabs(logp[t] - wl) < 1e-5, "temp %g row %d logp: expected %.9g, got %.9g",
                      temps[k], t, wl, logp[t]);
            cr_assert(fabs(ent[t] - we) < 1e-5, "temp %g row %d entropy: expected %.9g, got %.9g",
                      temps[k], t, we, ent[t]);
        }
        cr_assert_eq(logp[2], 0.0f, "untargeted row has logp %g", logp[2]);
    }
    /* Entropy pointer may be NULL. */
    float logp2[6];
    k_logprobs_fwd(logp2, NULL, l, tg, T, V, 0.7f);
    k_logprobs_fwd(logp, ent, l, tg, T, V, 0.7f);
    for (int t = 0; t < T; t++)
        cr_assert_eq(logp[t], logp2[t]);
    free(l);
}

Test(kernels, logprobs_stable_for_huge_logits)
{
    const int V = 8;
    float l[8];
    for (int j = 0; j < V; j++)
        l[j] = 1e4f + (float)j; /* naive exp would overflow */
    int tg = 7;
    float logp, ent;
    k_logprobs_fwd(&logp, &ent, l, &tg, 1, V, 1.0f);
    double wl, we;
    float shifted[8];
    for (int j = 0; j < V; j++)
        shifted[j] = (float)j;
    direct_logp(shifted, V, 1.0f, 7, &wl, &we);
    cr_assert(isfinite(logp) && fabs(logp - wl) < 1e-5, "logp: expected %.9g, got %.9g", wl, logp);
    cr_assert(isfinite(ent) && fabs(ent - we) < 1e-5, "entropy: expected %.9g, got %.9g", we, ent);
    float d[8], one = 1.0f;
    k_logprobs_bwd(d, &one, l, &tg, 1, V, 1.0f);
    for (int j = 0; j < V; j++)
        cr_assert(isfinite(d[j]), "dlogits[%d] = %g", j, d[j]);
    /* very negative logits too */
    for (int j = 0; j < V; j++)
        l[j] = -1e4f - (float)j;
    tg = 0;
    k_logprobs_fwd(&logp, &ent, l, &tg, 1, V, 0.5f);
    direct_logp(l, V, 0.5f, 0, &wl, &we);
    cr_assert(fabs(logp - wl) < 1e-5, "logp: expected %.9g, got %.9g", wl, logp);
}

struct lp_ctx {
    float *l;
    const int *tg;
    int T, V;
    float temp;
};

static void lp_f(void *c, float *out)
{
    struct lp_ctx *m = c;
    k_logprobs_fwd(out, NULL, m->l, m->tg, m->T, m->V, m->temp);
}

Test(kernels, logprobs_bwd_finite_difference_and_untargeted_rows)
{
    rng_t r;
    rng_seed(&r, 22);
    int tg[4] = {3, -1, 0, 9};
    struct lp_ctx m = {.tg = tg, .T = 4, .V = 10, .temp = 0.8f};
    size_t n = 40;
    m.l = rand_buf(&r, n, 2.0f);
    float *R = rand_buf(&r, 4, 1.0f), *d = zero_buf(n);
    for (size_t i = 0; i < n; i++)
        d[i] = 99.0f; /* bwd overwrites */
    k_logprobs_bwd(d, R, m.l, tg, m.T, m.V, m.temp);
    for (int j = 0; j < m.V; j++)
        cr_assert_eq(d[1 * m.V + j], 0.0f, "untargeted row gradient[%d] = %g", j, d[m.V + j]);
    fd_check("logprobs dlogits", lp_f, &m, m.l, n, d, R, 4);
    /* aliasing: dlogits == logits gives the same result */
    float *l2 = copy_buf(m.l, n);
    k_logprobs_bwd(l2, R, l2, tg, m.T, m.V, m.temp);
    assert_close("aliased dlogits", l2, d, n, 1e-7, 1e-6);
    free(m.l), free(R), free(d), free(l2);
}

Test(kernels, logprobs_row_independent_of_batch)
{
    rng_t r;
    rng_seed(&r, 23);
    const int T = 9, V = 517;
    float *l = rand_buf(&r, (size_t)T * V, 5.0f);
    int tg[9] = {1, 2, 3, 4, 5, 516, 0, 100, 200};
    float lp_all[9], ent_all[9];
    k_logprobs_fwd(lp_all, ent_all, l, tg, T, V, 0.9f);
    for (int t = 0; t < T; t++) {
        float lp1, e1;
        k_logprobs_fwd(&lp1, &e1, l + (size_t)t * V, &tg[t], 1, V, 0.9f);
        cr_assert_eq(lp1, lp_all[t], "row %d alone %.9g, in batch %.9g", t, lp1, lp_all[t]);
        cr_assert_eq(e1, ent_all[t], "row %d entropy alone %.9g, in batch %.9g", t, e1, ent_all[t]);
    }
    free(l);
}

/* ------------------------------------------------------------ accumulation */

/* Every backward except k_logprobs_bwd adds into its outputs: two calls on
 * zeroed gradients give exactly twice one call (up to rounding). */
Test(kernels, backward_functions_accumulate)
{
    rng_t r;
    rng_seed(&r, 24);
    const int T = 9, D = 8, N = 6, H = 2, KVH = 1, hd = 4;
    int ss[4] = {0, 1, 6, 9};
    int tokens[9] = {0, 1, 1, 2, 3, 3, 3, 0, 4};
    size_t cap = 4096;
    float *x = rand_buf(&r, cap, 1.0f), *y = rand_buf(&r, cap, 1.0f), *z = rand_buf(&r, cap, 1.0f);
    float *g = rand_buf(&r, cap, 1.0f);
    float *a1 = zero_buf(cap), *b1 = zero_buf(cap), *c1 = zero_buf(cap);
    float *a2 = zero_buf(cap), *b2 = zero_buf(cap), *c2 = zero_buf(cap);
    float *att = zero_buf(k_attention_att_size(ss, 3, H));
    float *scr = zero_buf(k_attention_scratch_size(ss, 3, H, hd));
    float *rstd = zero_buf(T), *tmp = zero_buf(cap);
#define TWICE(call_a, call_b)                                                                      \
    do {                                                                                           \
        memset(a1, 0, cap * 4), memset(b1, 0, cap * 4), memset(c1, 0, cap * 4);                    \
        memset(a2, 0, cap * 4), memset(b2, 0, cap * 4), memset(c2, 0, cap * 4);                    \
        call_a;                                                                                    \
        call_b;                                                                                    \
        call_b;                                                                                    \
        for (size_t i = 0; i < cap; i++) {                                                         \
            cr_assert(fabsf(a2[i] - 2 * a1[i]) <= 1e-5f * (1 + fabsf(a1[i])) &&                    \
                          fabsf(b2[i] - 2 * b1[i]) <= 1e-5f * (1 + fabsf(b1[i])) &&                \
                          fabsf(c2[i] - 2 * c1[i]) <= 1e-5f * (1 + fabsf(c1[i])),                  \
                      "%s: element %zu did not double (%g %g %g -> %g %g %g)", #call_a, i, a1[i], \
                      b1[i], c1[i], a2[i], b2[i], c2[i]);                                          \
        }                                                                                          \
    } while (0)
    TWICE(k_matmul_bwd(a1, b1, c1, g, x, y, T, D, N), k_matmul_bwd(a2, b2, c2, g, x, y, T, D, N));
    TWICE(k_embed_bwd(a1, g, tokens, T, D), k_embed_bwd(a2, g, tokens, T, D));
    k_rmsnorm_fwd(tmp, rstd, x, y, T, D, 1e-5f);
    TWICE(k_rmsnorm_bwd(a1, b1, g, x, y, rstd, T, D), k_rmsnorm_bwd(a2, b2, g, x, y, rstd, T, D));
    k_attention_fwd(tmp, att, x, y, z, ss, 3, H, KVH, hd);
    TWICE(k_attention_bwd(a1, b1, c1, g, att, x, y, z, ss, 3, H, KVH, hd, scr),
          k_attention_bwd(a2, b2, c2, g, att, x, y, z, ss, 3, H, KVH, hd, scr));
    TWICE(k_swiglu_bwd(a1, b1, g, x, y, cap), k_swiglu_bwd(a2, b2, g, x, y, cap));
    TWICE(k_gelu_bwd(a1, g, x, cap), k_gelu_bwd(a2, g, x, cap));
#undef TWICE
    free(x), free(y), free(z), free(g), free(a1), free(b1), free(c1), free(a2), free(b2), free(c2),
        free(att), free(scr), free(rstd), free(tmp);
}

Test(kernels, set_threads_returns_previous)
{
    int prev = k_set_threads(1);
    cr_assert_geq(prev, 1);
    cr_assert_eq(k_set_threads(prev), 1, "after setting 1 thread the count is not 1");
}
