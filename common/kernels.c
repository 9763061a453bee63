/* kernels: forward/backward numeric kernels over packed activations.
 *
 * Matmuls and the attention products go through OpenBLAS sgemm. The
 * elementwise and row kernels are written with AVX2/FMA intrinsics (plus a
 * scalar path doing the same arithmetic for tails and non-AVX2 builds):
 * GCC 12 at -O2 uses its "very cheap" vectorizer cost model, which leaves
 * loops of unknown length scalar, and float reductions never vectorize
 * without -ffast-math. Everything exp-based goes through exp_s / exp_v, one
 * polynomial evaluated identically in a vector lane and in scalar code, so a
 * row's result never depends on where it sits in a batch.
 * See kernels.h for the contracts. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define K_AVX2 1
#else
#define K_AVX2 0
#endif

/* ------------------------------------------------------------------ */
/* exp and row primitives                                               */
/* ------------------------------------------------------------------ */

/* exp(x) by Cephes-style range reduction x = n ln2 + r, |r| <= ln2/2, and a
 * degree-6 polynomial: within ~2 ulp of expf. Inputs above 88 are clamped
 * (exp(88) = 1.65e38, finite); inputs below -87 give exactly 0 (the true
 * value is below 2^-125, irrelevant next to the sums it enters); NaN stays
 * NaN. The scalar and vector versions perform the same operations in the same
 * order (fmaf is one rounding, like vfmadd), so they agree bit for bit. */
#define EXP_HI 88.0f
#define EXP_LO (-87.0f)
#define EXP_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

static inline float exp_s(float x)
{
    float xc = x > EXP_HI ? EXP_HI : x;
    xc = xc < EXP_LO ? EXP_LO : xc;
    float k = fmaf(xc, EXP_LOG2E, EXP_MAGIC);
    float n = k - EXP_MAGIC;
    float r = fmaf(n, -EXP_LN2_HI, xc);
    r = fmaf(n, -EXP_LN2_LO, r);
    float p = EXP_P0;
    p = fmaf(p, r, EXP_P1);
    p = fmaf(p, r, EXP_P2);
    p = fmaf(p, r, EXP_P3);
    p = fmaf(p, r, EXP_P4);
    p = fmaf(p, r, EXP_P5);
    float r2 = r * r;
    float y = fmaf(p, r2, r) + 1.0f;
    uint32_t kb; /* unsigned: wraps harmlessly for NaN instead of overflowing */
    memcpy(&kb, &k, sizeof kb);
    uint32_t sb = (kb - 0x4B400000u + 127u) << 23; /* 2^n as float bits */
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    return x < EXP_LO ? 0.0f : y * scale;
}

#if K_AVX2
static inline __m256 exp_v(__m256 x)
{
    /* max/min with the constant first: a NaN x is passed through. */
    __m256 xc = _mm256_min_ps(_mm256_set1_ps(EXP_HI), x);
    xc = _mm256_max_ps(_mm256_set1_ps(EXP_LO), xc);
    __m256 k = _mm256_fmadd_ps(xc, _mm256_set1_ps(EXP_LOG2E), _mm256_set1_ps(EXP_MAGIC));
    __m256 n = _mm256_sub_ps(k, _mm256_set1_ps(EXP_MAGIC));
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_LN2_HI), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
    __m256i sb = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(k), _mm256_set1_epi32(0x4B400000)),
                         _mm256_set1_epi32(127)),
        23);
    __m256 res = _mm256_mul_ps(y, _mm256_castsi256_ps(sb));
    __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
    return _mm256_andnot_ps(under, res);
}

/* Horizontal reductions in a fixed order. */
static inline float hsum_v(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax_v(__m256 v)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

float k_expf(float x)
{
    return exp_s(x);
}

static float row_max(const float *x, int n)
{
    float m = -INFINITY;
    int j = 0;
#if K_AVX2
    if (n >= 8) {
        __m256 vm = _mm256_loadu_ps(x);
        for (j = 8; j + 8 <= n; j += 8)
            vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + j));
        m = hmax_v(vm);
    }
#endif
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

/* y[j] = exp(x[j] - sub) (y may equal x); returns the sum of the y[j]. */
static float row_exp_sum(float *y, const float *x, int n, float sub)
{
    float s = 0.0f;
    int j = 0;
#if K_AVX2
    __m256 vs = _mm256_setzero_ps(), vsub = _mm256_set1_ps(sub);
    for (; j + 8 <= n; j += 8) {
        __m256 e = exp_v(_mm256_sub_ps(_mm256_loadu_ps(x + j), vsub));
        _mm256_storeu_ps(y + j, e);
        vs = _mm256_add_ps(vs, e);
    }
    s = hsum_v(vs);
#endif
    for (; j < n; j++) {
        y[j] = exp_s(x[j] - sub);
        s += y[j];
    }
    return s;
}

static void row_scale(float *x, int n, float a)
{
    int j = 0;
#if K_AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), va));
#endif
    for (; j < n; j++)
        x[j] *= a;
}

static float row_dot(const float *a, const float *b, int n)
{
    float s = 0.0f;
    int j = 0;
#if K_AVX2
    __m256 vs = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8)
        vs = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), vs);
    s = hsum_v(vs);
#endif
    for (; j < n; j++)
        s = fmaf(a[j], b[j], s);
    return s;
}

/* dst[j] += src[j] */
static void row_acc(float *dst, const float *src, size_t n)
{
    size_t j = 0;
#if K_AVX2
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_add_ps(_mm256_loadu_ps(dst + j), _mm256_loadu_ps(src + j)));
#endif
    for (; j < n; j++)
        dst[j] += src[j];
}

/* ------------------------------------------------------------------ */
/* linear                                                               */
/* ------------------------------------------------------------------ */

void k_matmul_fwd(float *out, const float *in, const float *W, const float *bias, int T, int K, int N)
{
    if (T <= 0 || N <= 0)
        return;
    float beta = 0.0f;
    if (bias) {
        for (int t = 0; t < T; t++)
            memcpy(out + (size_t)t * N, bias, (size_t)N * sizeof(float));
        beta = 1.0f;
    }
    if (K <= 0) {
        if (!bias)
            memset(out, 0, (size_t)T * N * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, N, K, 1.0f, in, K, W, K, beta, out, N);
}

void k_matmul_bwd(float *din, float *dW, float *dbias, const float *dout, const float *in,
                  const float *W, int T, int K, int N)
{
    if (T <= 0 || N <= 0 || K < 0)
        return;
    if (din && K > 0) /* din[T,K] += dout[T,N] @ W[N,K] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, K, N, 1.0f, dout, N, W, K, 1.0f,
                    din, K);
    if (dW && K > 0) /* dW[N,K] += dout^T @ in */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, N, K, T, 1.0f, dout, N, in, K, 1.0f,
                    dW, K);
    if (dbias)
        for (int t = 0; t < T; t++)
            row_acc(dbias, dout + (size_t)t * N, (size_t)N);
}

void k_matmul_fwd_naive(float *out, const float *in, const float *W, const float *bias, int T,
                        int K, int N)
{
    for (int t = 0; t < T; t++) {
        for (int n = 0; n < N; n++) {
            double s = bias ? bias[n] : 0.0;
            for (int k = 0; k < K; k++)
                s += (double)in[(size_t)t * K + k] * W[(size_t)n * K + k];
            out[(size_t)t * N + n] = (float)s;
        }
    }
}

void k_matmul_bwd_naive(float *din, float *dW, float *dbias, const float *dout, const float *in,
                        const float *W, int T, int K, int N)
{
    if (din) {
        for (int t = 0; t < T; t++) {
            for (int k = 0; k < K; k++) {
                double s = 0.0;
                for (int n = 0; n < N; n++)
                    s += (double)dout[(size_t)t * N + n] * W[(size_t)n * K + k];
                din[(size_t)t * K + k] += (float)s;
            }
        }
    }
    if (dW) {
        for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) {
                double s = 0.0;
                for (int t = 0; t < T; t++)
                    s += (double)dout[(size_t)t * N + n] * in[(size_t)t * K + k];
                dW[(size_t)n * K + k] += (float)s;
            }
        }
    }
    if (dbias) {
        for (int n = 0; n < N; n++) {
            double s = 0.0;
            for (int t = 0; t < T; t++)
                s += dout[(size_t)t * N + n];
            dbias[n] += (float)s;
        }
    }
}

/* ------------------------------------------------------------------ */
/* embedding                                                            */
/* ------------------------------------------------------------------ */

void k_embed_fwd(float *out, const float *table, const int *tokens, int T, int D)
{
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0) /* image slot: filled by the caller */
            continue;
        memcpy(out + (size_t)t * D, table + (size_t)tokens[t] * D, (size_t)D * sizeof(float));
    }
}

void k_embed_bwd(float *dtable, const float *dout, const int *tokens, int T, int D)
{
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0)
            continue;
        row_acc(dtable + (size_t)tokens[t] * D, dout + (size_t)t * D, (size_t)D);
    }
}

/* ------------------------------------------------------------------ */
/* RMSNorm                                                              */
/* ------------------------------------------------------------------ */

void k_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int T, int D, float eps)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *o = out + (size_t)t * D;
        float ss = row_dot(xr, xr, D);
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        rstd[t] = r;
        /* (x * r) * w, in Hugging Face's order */
        int d = 0;
#if K_AVX2
        __m256 vr = _mm256_set1_ps(r);
        for (; d + 8 <= D; d += 8)
            _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + d), vr),
                                                  _mm256_loadu_ps(w + d)));
#endif
        for (; d < D; d++)
            o[d] = xr[d] * r * w[d];
    }
}

/* y = x r w with r = (mean x^2 + eps)^-1/2:
 * dx = r w g - x r^3 / D * sum(g w x),  dw = sum_t g x r. */
void k_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
                   const float *rstd, int T, int D)
{
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        const float *g = dout + (size_t)t * D;
        const float r = rstd[t];
        float dot = 0.0f; /* sum_d g*w*x */
        int d = 0;
#if K_AVX2
        __m256 vd = _mm256_setzero_ps();
        for (; d + 8 <= D; d += 8)
            vd = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(g + d), _mm256_loadu_ps(w + d)),
                                 _mm256_loadu_ps(xr + d), vd);
        dot = hsum_v(vd);
#endif
        for (; d < D; d++)
            dot = fmaf(g[d] * w[d], xr[d], dot);
        const float c = dot * r * r * r / (float)D;
        if (dx) {
            float *dxr = dx + (size_t)t * D;
            d = 0;
#if K_AVX2
            __m256 vr = _mm256_set1_ps(r), vc = _mm256_set1_ps(c);
            for (; d + 8 <= D; d += 8) {
                __m256 gw = _mm256_mul_ps(_mm256_loadu_ps(g + d), _mm256_loadu_ps(w + d));
                __m256 v = _mm256_fmsub_ps(vr, gw, _mm256_mul_ps(vc, _mm256_loadu_ps(xr + d)));
                _mm256_storeu_ps(dxr + d, _mm256_add_ps(_mm256_loadu_ps(dxr + d), v));
            }
#endif
            for (; d < D; d++)
                dxr[d] += r * (g[d] * w[d]) - c * xr[d];
        }
        if (dw) {
            d = 0;
#if K_AVX2
            __m256 vr = _mm256_set1_ps(r);
            for (; d + 8 <= D; d += 8) {
                __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(g + d), _mm256_loadu_ps(xr + d)), vr);
                _mm256_storeu_ps(dw + d, _mm256_add_ps(_mm256_loadu_ps(dw + d), v));
            }
#endif
            for (; d < D; d++)
                dw[d] += g[d] * xr[d] * r;
        }
    }
}

/* ------------------------------------------------------------------ */
/* RoPE                                                                 */
/* ------------------------------------------------------------------ */

/* Mirrors the float32 arithmetic of Hugging Face's LlamaRotaryEmbedding
 * (inv_freq and pos*inv_freq rounded to float) so that positions far from 0
 * give the same angles as the reference, not more exact ones. */
void k_rope_table(float *cos_t, float *sin_t, int max_pos, int hd, float theta)
{
    int half = hd / 2;
    for (int i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)hd;
        float inv = 1.0f / powf(theta, e);
        for (int p = 0; p < max_pos; p++) {
            float ang = (float)p * inv;
            cos_t[(size_t)p * half + i] = (float)cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)sin((double)ang);
        }
    }
}

/* Rotates the pairs (a[i], b[i]) by the angle with cosine c[i], sine sgn*s[i]. */
static void rope_rows(float *x, const int *pos, const float *cos_t, const float *sin_t, int T, int H,
                      int hd, float sgn)
{
    const int half = hd / 2;
    for (int t = 0; t < T; t++) {
        const float *c = cos_t + (size_t)pos[t] * half;
        const float *s = sin_t + (size_t)pos[t] * half;
        for (int h = 0; h < H; h++) {
            float *a = x + ((size_t)t * H + h) * hd;
            float *b = a + half;
            int i = 0;
#if K_AVX2
            __m256 vsg = _mm256_set1_ps(sgn);
            for (; i + 8 <= half; i += 8) {
                __m256 x1 = _mm256_loadu_ps(a + i), x2 = _mm256_loadu_ps(b + i);
                __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_mul_ps(vsg, _mm256_loadu_ps(s + i));
                _mm256_storeu_ps(a + i, _mm256_sub_ps(_mm256_mul_ps(x1, vc), _mm256_mul_ps(x2, vs)));
                _mm256_storeu_ps(b + i, _mm256_add_ps(_mm256_mul_ps(x2, vc), _mm256_mul_ps(x1, vs)));
            }
#endif
            for (; i < half; i++) {
                float x1 = a[i], x2 = b[i], si = sgn * s[i];
                a[i] = x1 * c[i] - x2 * si;
                b[i] = x2 * c[i] + x1 * si;
            }
        }
    }
}

void k_rope_fwd(float *x, const int *pos, const float *cos_t, const float *sin_t, int T, int H, int hd)
{
    rope_rows(x, pos, cos_t, sin_t, T, H, hd, 1.0f);
}

void k_rope_bwd(float *dx, const int *pos, const float *cos_t, const float *sin_t, int T, int H, int hd)
{
    /* R(theta)^T = R(-theta) */
    rope_rows(dx, pos, cos_t, sin_t, T, H, hd, -1.0f);
}

/* ------------------------------------------------------------------ */
/* attention                                                            */
/* ------------------------------------------------------------------ */

/* att layout: for each sequence s (length n) and head h, an n x n row-major
 * block of probabilities P[i][j]; blocks are laid out sequence-major, then
 * head. Only j <= i is meaningful: the rest is not guaranteed to be written.
 *
 * The causal triangle is covered by row blocks of ATT_BLOCK rows: block
 * [i0, i1) computes scores against keys [0, i1) with one sgemm, so about
 * half of the square is skipped while the products stay large enough for
 * sgemm to run near full speed. Inside the diagonal block the entries j > i
 * are written as zeros so the following sgemms over [0, i1) ignore them.
 * Every sgemm covers one (sequence, head), so a row's result depends only
 * on its own sequence.
 *
 * Block size: at the benchmark shape (n = 256, hd = 64) 32, 64 and 128 ran
 * within noise of each other; 64 computes 62% of the square at n = 256 and
 * tends to 50% for longer sequences. Hand-written 4x16 / 4x2 AVX2 tiles
 * that skip the packing were tried and ran well below sgemm (~35 vs ~60
 * GFLOP/s on hot data).
 * Overridable at compile time (-DATT_BLOCK=n) to exercise block edges. */
#ifndef ATT_BLOCK
#define ATT_BLOCK 64
#endif

size_t k_attention_att_size(const int *seq_start, int nseq, int H)
{
    size_t total = 0;
    for (int s = 0; s < nseq; s++) {
        size_t n = (size_t)(seq_start[s + 1] - seq_start[s]);
        total += (size_t)H * n * n;
    }
    return total;
}

size_t k_attention_scratch_size(const int *seq_start, int nseq, int H, int hd)
{
    (void)H;
    (void)hd;
    size_t mx = 0;
    for (int s = 0; s < nseq; s++) {
        size_t n = (size_t)(seq_start[s + 1] - seq_start[s]);
        if (n * n > mx)
            mx = n * n;
    }
    return mx;
}

void k_attention_fwd(float *out, float *att, const float *q, const float *k, const float *v,
                     const int *seq_start, int nseq, int H, int KVH, int hd)
{
    const int qs = H * hd, ks = KVH * hd, group = H / KVH;
    const float scale = 1.0f / sqrtf((float)hd);
    float *P = att;
    for (int s = 0; s < nseq; s++) {
        const int r0 = seq_start[s], n = seq_start[s + 1] - seq_start[s];
        if (n <= 0)
            continue;
        for (int h = 0; h < H; h++, P += (size_t)n * n) {
            const int kh = h / group;
            const float *Q = q + (size_t)r0 * qs + (size_t)h * hd;
            const float *Kp = k + (size_t)r0 * ks + (size_t)kh * hd;
            const float *Vp = v + (size_t)r0 * ks + (size_t)kh * hd;
            float *O = out + (size_t)r0 * qs + (size_t)h * hd;
            for (int i0 = 0; i0 < n; i0 += ATT_BLOCK) {
                const int i1 = i0 + ATT_BLOCK < n ? i0 + ATT_BLOCK : n;
                float *Pb = P + (size_t)i0 * n;
                /* S = scale * Q[i0:i1] K[0:i1]^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1, hd, scale,
                            Q + (size_t)i0 * qs, qs, Kp, ks, 0.0f, Pb, n);
                for (int i = i0; i < i1; i++) {
                    float *row = P + (size_t)i * n;
                    float m = row_max(row, i + 1);
                    float sum = row_exp_sum(row, row, i + 1, m);
                    row_scale(row, i + 1, 1.0f / sum);
                    if (i1 > i + 1)
                        memset(row + i + 1, 0, (size_t)(i1 - i - 1) * sizeof(float));
                }
                /* O[i0:i1] = P[i0:i1, 0:i1] V[0:i1] */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, hd, i1, 1.0f, Pb, n,
                            Vp, ks, 0.0f, O + (size_t)i0 * qs, qs);
            }
        }
    }
}

/* With P = softmax(S), S = scale Q K^T, O = P V:
 *   dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),
 *   dQ = scale dS K,  dK = scale dS^T Q,  dV = P^T dO.
 * dS (scale folded in) is built row block by row block in scratch; dK and dV
 * are then formed column block by column block so each sgemm runs over the
 * whole remaining column (a long inner dimension) instead of many thin
 * row-block updates. */
void k_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *att,
                     const float *q, const float *k, const float *v, const int *seq_start, int nseq,
                     int H, int KVH, int hd, float *scratch)
{
    const int qs = H * hd, ks = KVH * hd, group = H / KVH;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *P = att;
    for (int s = 0; s < nseq; s++) {
        const int r0 = seq_start[s], n = seq_start[s + 1] - seq_start[s];
        if (n <= 0)
            continue;
        for (int h = 0; h < H; h++, P += (size_t)n * n) {
            const int kh = h / group;
            const size_t qo = (size_t)r0 * qs + (size_t)h * hd;
            const size_t ko = (size_t)r0 * ks + (size_t)kh * hd;
            float *dS = scratch; /* n x n, row-major like P */
            for (int i0 = 0; i0 < n; i0 += ATT_BLOCK) {
                const int i1 = i0 + ATT_BLOCK < n ? i0 + ATT_BLOCK : n;
                /* dP[i0:i1, 0:i1] = dO[i0:i1] V[0:i1]^T */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1, hd, 1.0f,
                            dout + qo + (size_t)i0 * qs, qs, v + ko, ks, 0.0f, dS + (size_t)i0 * n,
                            n);
                for (int i = i0; i < i1; i++) {
                    const float *pr = P + (size_t)i * n;
                    float *dr = dS + (size_t)i * n;
                    const int len = i + 1;
                    const float dot = row_dot(pr, dr, len);
                    int j = 0;
#if K_AVX2
                    __m256 vdot = _mm256_set1_ps(dot), vsc = _mm256_set1_ps(scale);
                    for (; j + 8 <= len; j += 8) {
                        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(dr + j), vdot);
                        _mm256_storeu_ps(dr + j,
                                         _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(pr + j), d), vsc));
                    }
#endif
                    for (; j < len; j++)
                        dr[j] = pr[j] * (dr[j] - dot) * scale;
                    if (i1 > len)
                        memset(dr + len, 0, (size_t)(i1 - len) * sizeof(float));
                }
                if (dq) /* dQ[i0:i1] += dS[i0:i1, 0:i1] K[0:i1] */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, hd, i1, 1.0f,
                                dS + (size_t)i0 * n, n, k + ko, ks, 1.0f, dq + qo + (size_t)i0 * qs,
                                qs);
            }
            for (int j0 = 0; j0 < n; j0 += ATT_BLOCK) {
                const int j1 = j0 + ATT_BLOCK < n ? j0 + ATT_BLOCK : n;
                const size_t diag = (size_t)j0 * n + (size_t)j0;
                if (dk) /* dK[j0:j1] += dS[j0:n, j0:j1]^T Q[j0:n] */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, hd, n - j0, 1.0f,
                                dS + diag, n, q + qo + (size_t)j0 * qs, qs, 1.0f,
                                dk + ko + (size_t)j0 * ks, ks);
                if (dv) /* dV[j0:j1] += P[j0:n, j0:j1]^T dO[j0:n] */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, hd, n - j0, 1.0f,
                                P + diag, n, dout + qo + (size_t)j0 * qs, qs, 1.0f,
                                dv + ko + (size_t)j0 * ks, ks);
            }
        }
    }
}

void k_attention_fwd_naive(float *out, float *att, const float *q, const float *k, const float *v,
                           const int *seq_start, int nseq, int H, int KVH, int hd)
{
    const int qs = H * hd, ks = KVH * hd, group = H / KVH;
    const double scale = 1.0 / sqrt((double)hd);
    float *P = att;
    for (int s = 0; s < nseq; s++) {
        const int r0 = seq_start[s], n = seq_start[s + 1] - seq_start[s];
        for (int h = 0; h < H; h++, P += (size_t)n * n) {
            const int kh = h / group;
            for (int i = 0; i < n; i++) {
                const float *qi = q + (size_t)(r0 + i) * qs + (size_t)h * hd;
                float *row = P + (size_t)i * n;
                /* scores kept in row (float) for j <= i; max/sum in double */
                double m = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    const float *kj = k + (size_t)(r0 + j) * ks + (size_t)kh * hd;
                    double d = 0.0;
                    for (int c = 0; c < hd; c++)
                        d += (double)qi[c] * kj[c];
                    d *= scale;
                    row[j] = (float)d;
                    if (d > m)
                        m = d;
                }
                double sum = 0.0;
                for (int j = 0; j <= i; j++)
                    sum += exp((double)row[j] - m);
                for (int j = 0; j < n; j++)
                    row[j] = j <= i ? (float)(exp((double)row[j] - m) / sum) : 0.0f;
                float *o = out + (size_t)(r0 + i) * qs + (size_t)h * hd;
                for (int c = 0; c < hd; c++) {
                    double acc = 0.0;
                    for (int j = 0; j <= i; j++)
                        acc += (double)row[j] * v[(size_t)(r0 + j) * ks + (size_t)kh * hd + c];
                    o[c] = (float)acc;
                }
            }
        }
    }
}

/* Plain loops in double straight from the formulas above, for the tests. */
void k_attention_bwd_naive(float *dq, float *dk, float *dv, const float *dout, const float *att,
                           const float *q, const float *k, const float *v, const int *seq_start,
                           int nseq, int H, int KVH, int hd)
{
    const int qs = H * hd, ks = KVH * hd, group = H / KVH;
    const double scale = 1.0 / sqrt((double)hd);
    const float *P = att;
    for (int s = 0; s < nseq; s++) {
        const int r0 = seq_start[s], n = seq_start[s + 1] - seq_start[s];
        for (int h = 0; h < H; h++, P += (size_t)n * n) {
            const int kh = h / group;
            for (int i = 0; i < n; i++) {
                const float *go = dout + (size_t)(r0 + i) * qs + (size_t)h * hd;
                const float *qi = q + (size_t)(r0 + i) * qs + (size_t)h * hd;
                const float *pr = P + (size_t)i * n;
                double rowdot = 0.0;
                for (int j = 0; j <= i; j++) {
                    double dp = 0.0;
                    for (int c = 0; c < hd; c++)
                        dp += (double)go[c] * v[(size_t)(r0 + j) * ks + (size_t)kh * hd + c];
                    rowdot += pr[j] * dp;
                }
                for (int j = 0; j <= i; j++) {
                    const size_t kj = (size_t)(r0 + j) * ks + (size_t)kh * hd;
                    double dp = 0.0;
                    for (int c = 0; c < hd; c++)
                        dp += (double)go[c] * v[kj + c];
                    const double ds = pr[j] * (dp - rowdot) * scale;
                    for (int c = 0; c < hd; c++) {
                        if (dq)
                            dq[(size_t)(r0 + i) * qs + (size_t)h * hd + c] += (float)(ds * k[kj + c]);
                        if (dk)
                            dk[kj + c] += (float)(ds * qi[c]);
                        if (dv)
                            dv[kj + c] += (float)((double)pr[j] * go[c]);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* SwiGLU, GELU, residual                                               */
/* ------------------------------------------------------------------ */

void k_swiglu_fwd(float *out, const float *gate, const float *up, size_t n)
{
    size_t i = 0;
#if K_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp_v(_mm256_xor_ps(g, neg))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sg), _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        float g = gate[i];
        float sg = 1.0f / (1.0f + exp_s(-g));
        out[i] = g * sg * up[i];
    }
}

/* d silu(g)/dg = s (1 + g (1 - s)), s = sigmoid(g) */
void k_swiglu_bwd(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                  size_t n)
{
    size_t i = 0;
#if K_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), neg = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i), d = _mm256_loadu_ps(dout + i);
        __m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp_v(_mm256_xor_ps(g, neg))));
        if (dgate) {
            __m256 ds = _mm256_mul_ps(sg, _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, sg))));
            __m256 v = _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), ds);
            _mm256_storeu_ps(dgate + i, _mm256_add_ps(_mm256_loadu_ps(dgate + i), v));
        }
        if (dup) {
            __m256 v = _mm256_mul_ps(d, _mm256_mul_ps(g, sg));
            _mm256_storeu_ps(dup + i, _mm256_add_ps(_mm256_loadu_ps(dup + i), v));
        }
    }
#endif
    for (; i < n; i++) {
        float g = gate[i];
        float sg = 1.0f / (1.0f + exp_s(-g));
        if (dgate)
            dgate[i] += dout[i] * up[i] * (sg * (1.0f + g * (1.0f - sg)));
        if (dup)
            dup[i] += dout[i] * (g * sg);
    }
}

/* GELU, exact form 0.5 x (1 + erf(x / sqrt 2)) = x Phi(x). Phi is taken
 * from erfc (Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7
 * over the whole line) so both tails keep full relative precision:
 * Phi(x) = 1 - erfc(z)/2 for x >= 0 and erfc(z)/2 for x < 0, z = |x|/sqrt 2.
 * Agrees with libm's erff to ~1e-7 relative; vectorizes through exp_v. */
#define GELU_C0 (-1.26551223f)
#define GELU_C1 1.00002368f
#define GELU_C2 0.37409196f
#define GELU_C3 0.09678418f
#define GELU_C4 (-0.18628806f)
#define GELU_C5 0.27886807f
#define GELU_C6 (-1.13520398f)
#define GELU_C7 1.48851587f
#define GELU_C8 (-0.82215223f)
#define GELU_C9 0.17087277f
#define INV_SQRT_2PI 0.3989422804014327f

static inline float gelu_cdf_s(float x)
{
    float z = fabsf(x) * (float)M_SQRT1_2;
    float t = 1.0f / fmaf(0.5f, z, 1.0f);
    float p = GELU_C9;
    p = fmaf(p, t, GELU_C8);
    p = fmaf(p, t, GELU_C7);
    p = fmaf(p, t, GELU_C6);
    p = fmaf(p, t, GELU_C5);
    p = fmaf(p, t, GELU_C4);
    p = fmaf(p, t, GELU_C3);
    p = fmaf(p, t, GELU_C2);
    p = fmaf(p, t, GELU_C1);
    p = fmaf(p, t, GELU_C0);
    float half_erfc = 0.5f * (t * exp_s(fmaf(-z, z, p)));
    return x >= 0.0f ? 1.0f - half_erfc : half_erfc;
}

#if K_AVX2
static inline __m256 gelu_cdf_v(__m256 x)
{
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps((float)M_SQRT1_2));
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, z, one));
    __m256 p = _mm256_set1_ps(GELU_C9);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C8));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C7));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C6));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C5));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C4));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C3));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C2));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C1));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(GELU_C0));
    __m256 half_erfc = _mm256_mul_ps(half, _mm256_mul_ps(t, exp_v(_mm256_fnmadd_ps(z, z, p))));
    __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    return _mm256_blendv_ps(half_erfc, _mm256_sub_ps(one, half_erfc), pos);
}
#endif

void k_gelu_fwd(float *out, const float *in, size_t n)
{
    size_t i = 0;
#if K_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(in + i);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(x, gelu_cdf_v(x)));
    }
#endif
    for (; i < n; i++)
        out[i] = in[i] * gelu_cdf_s(in[i]);
}

/* d/dx x Phi(x) = Phi(x) + x phi(x) */
void k_gelu_bwd(float *din, const float *dout, const float *in, size_t n)
{
    size_t i = 0;
#if K_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(in + i);
        __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(INV_SQRT_2PI),
                                   exp_v(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(x, x))));
        __m256 dg = _mm256_fmadd_ps(x, pdf, gelu_cdf_v(x));
        _mm256_storeu_ps(din + i, _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), dg, _mm256_loadu_ps(din + i)));
    }
#endif
    for (; i < n; i++) {
        float x = in[i];
        float pdf = INV_SQRT_2PI * exp_s(-0.5f * (x * x));
        din[i] = fmaf(dout[i], fmaf(x, pdf, gelu_cdf_s(x)), din[i]);
    }
}

void k_add(float *out, const float *a, const float *b, size_t n)
{
    size_t i = 0;
#if K_AVX2
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
#endif
    for (; i < n; i++)
        out[i] = a[i] + b[i];
}

/* ------------------------------------------------------------------ */
/* log-probabilities                                                    */
/* ------------------------------------------------------------------ */

/* Row statistics of z = l / temp, taken relative to the row max so huge
 * logits cannot overflow: d_j = z_j - max z = (l_j - lmax) * invt <= 0,
 * logsum = log sum_j exp(d_j) and, when wanted, wsum = sum_j exp(d_j) d_j
 * (entropy = logsum - wsum / sum). Depends on this row only, so a row gives
 * the same value in any batch and at any position. */
static void row_lse(const float *l, int V, float invt, float *lmax_out, float *logsum_out,
                    float *ent_out)
{
    const float lmax = row_max(l, V);
    float sum = 0.0f, wsum = 0.0f;
    int j = 0;
#if K_AVX2
    __m256 vs = _mm256_setzero_ps(), vw = _mm256_setzero_ps();
    const __m256 vm = _mm256_set1_ps(lmax), vt = _mm256_set1_ps(invt);
    for (; j + 8 <= V; j += 8) {
        __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(l + j), vm), vt);
        __m256 e = exp_v(d);
        vs = _mm256_add_ps(vs, e);
        vw = _mm256_fmadd_ps(e, d, vw);
    }
    sum = hsum_v(vs);
    wsum = hsum_v(vw);
#endif
    for (; j < V; j++) {
        float d = (l[j] - lmax) * invt;
        float e = exp_s(d);
        sum += e;
        wsum = fmaf(e, d, wsum);
    }
    *lmax_out = lmax;
    *logsum_out = logf(sum);
    if (ent_out)
        *ent_out = logf(sum) - wsum / sum;
}

void k_logprobs_fwd(float *logp, float *entropy, const float *logits, const int *targets, int T,
                    int V, float temp)
{
    const float invt = 1.0f / temp;
    for (int t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * V;
        float lmax, logsum, ent;
        row_lse(l, V, invt, &lmax, &logsum, &ent);
        if (entropy)
            entropy[t] = ent;
        const int y = targets[t];
        logp[t] = y >= 0 ? (l[y] - lmax) * invt - logsum : 0.0f;
    }
}

void k_logprobs_bwd(float *dlogits, const float *dlogp, const float *logits, const int *targets,
                    int T, int V, float temp)
{
    const float invt = 1.0f / temp;
    for (int t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * V;
        float *dl = dlogits + (size_t)t * V;
        const int y = targets[t];
        if (y < 0) {
            memset(dl, 0, (size_t)V * sizeof(float));
            continue;
        }
        float lmax, logsum;
        row_lse(l, V, invt, &lmax, &logsum, NULL);
        const float g = dlogp[t] * invt;
        /* dl_j = g (onehot_j - p_j), p_j = exp(d_j - logsum). Each l[j] is
         * read before dl[j] is written, so dlogits may alias logits. */
        int j = 0;
#if K_AVX2
        const __m256 vm = _mm256_set1_ps(lmax), vt = _mm256_set1_ps(invt);
        const __m256 vls = _mm256_set1_ps(logsum), vng = _mm256_set1_ps(-g);
        for (; j + 8 <= V; j += 8) {
            __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(l + j), vm), vt);
            _mm256_storeu_ps(dl + j, _mm256_mul_ps(vng, exp_v(_mm256_sub_ps(d, vls))));
        }
#endif
        for (; j < V; j++)
            dl[j] = -g * exp_s((l[j] - lmax) * invt - logsum);
        dl[y] += g;
    }
}

int k_set_threads(int n)
{
    int prev = openblas_get_num_threads();
    if (n < 1)
        n = 1;
    openblas_set_num_threads(n);
    return prev;
}
