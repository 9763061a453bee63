/* sampler: batched KV-cache generation. The prompt is prefilled once and its
 * K/V (after RoPE) are kept in one cache shared by every sample; each sample
 * owns a small cache for its own generated tokens. The G samples advance in
 * lock step (they all sit at the same position), so every projection of a
 * decode step is one (n_active x D) @ W^T matrix product.
 *
 * Finished samples (eos) are compacted away: act[] lists the samples still
 * running and row r of the decode buffers belongs to sample act[r]. Only the
 * token embeddings feed a step (the residual stream is rebuilt from them),
 * and the generated caches are indexed by sample, not row, so compaction
 * costs nothing but an index list, and finished samples cost no compute.
 *
 * Numerics follow model_forward: the same math in the same order, through
 * the same kernels where they fit (RMSNorm, RoPE tables, SwiGLU, GELU,
 * log-probs, sgemm for the prompt), and through two small kernels of this
 * file where they do not (few-row matmul, attention against the caches;
 * both float with FMA like sgemm). So the learner's recomputed log-probs
 * match the behaviour log-probs to float rounding: sgemm itself gives a
 * row different bits depending on how many rows it is batched with, so
 * bit-equality is not on offer even between two model_forward calls.
 *
 * sampler_last_logits: row g holds the logits sample g's most recent token
 * was drawn from (a finished sample keeps the row of its eos). Output slots
 * past out_len[g] are set to token -1, log-prob 0. eos_id < 0 means none. */
#include "sampler.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "log.h"

struct sampler {
    model_config_t cfg; /* of the model the buffers were sized for */
    int max_prompt, max_new, max_group;
    int hd, qd, kvd;     /* head dim, H*hd, KVH*hd */
    int n_patches, patch_dim;
    int rows;            /* max(max_prompt, max_group): rows of the shared buffers */

    /* K is cached transposed, (kv head, dim, position), so that the scores
     * of one query against many positions are a broadcast-FMA over
     * contiguous positions (no horizontal sums); V stays position-major for
     * the weighted sum over positions. */
    float *prompt_kt;    /* (L, KVH, hd, max_prompt) shared prompt cache, K after RoPE */
    float *prompt_v;     /* (L, max_prompt, kvd) */
    float *gen_kt;       /* (L, max_group, KVH, hd, max_new) per-sample generated cache */
    float *gen_v;        /* (L, max_group, max_new, kvd) */

    float *x;            /* (rows, D) residual stream */
    float *xn;           /* (rows, D) normed input of a block */
    float *tmp;          /* (rows, D) block output before the residual add */
    float *rstd;         /* (rows) */
    float *q;            /* (rows, qd) */
    float *ao;           /* (rows, qd) attention output */
    float *gate;         /* (rows, F) */
    float *up;           /* (rows, F) */
    float *hid;          /* (rows, F) silu(gate) * up */
    float *k_rows;       /* (rows, kvd) K before it is transposed into a cache */
    float *v_step;       /* (max_group, kvd) */
    float *logits;       /* (max_group, V) in sample order */
    float *scores;       /* (max_prompt + max_new) attention scratch for one head */
    int *pos;            /* (rows) positions handed to k_rope_fwd */

    float *patches;      /* (n_patches, 3*P*P) */
    float *proj_h;       /* (n_patches, D) */
    float *proj_a;       /* (n_patches, D) */
    float *proj_out;     /* (n_patches, D) */

    int *act;            /* (max_group) samples still running, row order */
    int *cur_tok;        /* (max_group) last token of each sample */
    unsigned char *banned; /* (V) 1 = never sample */
    float *probs;        /* (V) unnormalised sampling weights */
    int *heap;           /* (V) token ids: candidates, heap-ordered for top-p */
};

static void *alloc_floats(size_t n)
{
    return calloc(n ? n : 1, sizeof(float));
}

int sampler_max_new(const sampler_t *s)
{
    return s ? s->max_new : 0;
}

sampler_t *sampler_new(const model_t *m, int max_prompt, int max_new, int max_group)
{
    if (!m || max_prompt <= 0 || max_new <= 0 || max_group <= 0) {
        log_error("sampler_new: bad arguments (model %p, max_prompt %d, max_new %d, max_group %d)",
                  (const void *)m, max_prompt, max_new, max_group);
        return NULL;
    }
    const model_config_t *c = &m->cfg;
    if (c->n_heads <= 0 || c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads ||
        c->dim % c->n_heads || (c->dim / c->n_heads) % 2) {
        log_error("sampler_new: unsupported head layout (D %d, H %d, KVH %d)", c->dim, c->n_heads,
                  c->n_kv_heads);
        return NULL;
    }
    sampler_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->cfg = *c;
    s->max_prompt = max_prompt;
    s->max_new = max_new;
    s->max_group = max_group;
    s->hd = c->dim / c->n_heads;
    s->qd = c->n_heads * s->hd;
    s->kvd = c->n_kv_heads * s->hd;
    s->rows = max_prompt > max_group ? max_prompt : max_group;
    if (c->image_size > 0) {
        s->n_patches = model_n_patches(c);
        s->patch_dim = 3 * c->patch_size * c->patch_size;
    }

    const size_t L = (size_t)c->n_layers, D = (size_t)c->dim, F = (size_t)c->hidden_dim;
    const size_t V = (size_t)c->vocab_size, R = (size_t)s->rows;
    const size_t prompt_cache = L * (size_t)max_prompt * (size_t)s->kvd;
    const size_t gen_cache = L * (size_t)max_group * (size_t)max_new * (size_t)s->kvd;
    s->prompt_kt = alloc_floats(prompt_cache);
    s->prompt_v = alloc_floats(prompt_cache);
    s->gen_kt = alloc_floats(gen_cache);
    s->gen_v = alloc_floats(gen_cache);
    s->x = alloc_floats(R * D);
    s->xn = alloc_floats(R * D);
    s->tmp = alloc_floats(R * D);
    s->rstd = alloc_floats(R);
    s->q = alloc_floats(R * (size_t)s->qd);
    s->ao = alloc_floats(R * (size_t)s->qd);
    s->gate = alloc_floats(R * F);
    s->up = alloc_floats(R * F);
    s->hid = alloc_floats(R * F);
    s->k_rows = alloc_floats(R * (size_t)s->kvd);
    s->v_step = alloc_floats((size_t)max_group * (size_t)s->kvd);
    s->logits = alloc_floats((size_t)max_group * V);
    s->scores = alloc_floats((size_t)max_prompt + (size_t)max_new);
    s->pos = calloc(R, sizeof(int));
    s->patches = alloc_floats((size_t)s->n_patches * (size_t)s->patch_dim);
    s->proj_h = alloc_floats((size_t)s->n_patches * D);
    s->proj_a = alloc_floats((size_t)s->n_patches * D);
    s->proj_out = alloc_floats((size_t)s->n_patches * D);
    s->act = calloc((size_t)max_group, sizeof(int));
    s->cur_tok = calloc((size_t)max_group, sizeof(int));
    s->banned = calloc(V, 1);
    s->probs = alloc_floats(V);
    s->heap = calloc(V, sizeof(int));
    if (!s->prompt_kt || !s->prompt_v || !s->gen_kt || !s->gen_v || !s->x || !s->xn || !s->tmp ||
        !s->rstd || !s->q || !s->ao || !s->gate || !s->up || !s->hid || !s->k_rows ||
        !s->v_step || !s->logits || !s->scores || !s->pos || !s->patches || !s->proj_h ||
        !s->proj_a || !s->proj_out || !s->act || !s->cur_tok || !s->banned || !s->probs ||
        !s->heap)
        goto fail;
    return s;
fail:
    log_error("sampler_new: out of memory (max_prompt %d, max_new %d, max_group %d)", max_prompt,
              max_new, max_group);
    sampler_destroy(&s);
    return NULL;
}

void sampler_destroy(sampler_t **ps)
{
    if (!ps || !*ps)
        return;
    sampler_t *s = *ps;
    free(s->prompt_kt);
    free(s->prompt_v);
    free(s->gen_kt);
    free(s->gen_v);
    free(s->x);
    free(s->xn);
    free(s->tmp);
    free(s->rstd);
    free(s->q);
    free(s->ao);
    free(s->gate);
    free(s->up);
    free(s->hid);
    free(s->k_rows);
    free(s->v_step);
    free(s->logits);
    free(s->scores);
    free(s->pos);
    free(s->patches);
    free(s->proj_h);
    free(s->proj_a);
    free(s->proj_out);
    free(s->act);
    free(s->cur_tok);
    free(s->banned);
    free(s->probs);
    free(s->heap);
    free(s);
    *ps = NULL;
}

const float *sampler_last_logits(const sampler_t *s)
{
    return s ? s->logits : NULL;
}

/* ---- small-row matrix product ----
 * A decode step multiplies only G (1..16) rows by each weight matrix.
 * OpenBLAS sgemm repacks the whole weight on every call, which at so few
 * rows costs more than the product itself (measured: ~70% of decode time
 * went to sgemm_incopy). Here every weight row is read once, straight from
 * the model, and used for all rows of the step: still one (G x K) @ W^T
 * product per projection, not G matrix-vector products. Accumulation is in
 * float with FMA, like sgemm; only the summation order differs. */

/* Fused multiply-add where the hardware has it (as sgemm uses), a plain
 * multiply-add otherwise (fmaf would be a slow library call). */
#ifdef __FMA__
#define MADD(a, b, c) fmaf(a, b, c)
#else
#define MADD(a, b, c) ((a) * (b) + (c))
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SAMPLER_AVX2 1

static inline float hsum8(__m256 v)
{
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* out[MR x NR] (row stride ldo) = in[MR x K] @ W[NR x K]^T, K % 8 == 0.
 * The fixed-size loops must be unrolled so that acc[][] lives in registers
 * (at -O2 GCC otherwise keeps it on the stack: 3x slower). */
#define UNROLL _Pragma("GCC unroll 8")
#define ROWS_TILE(MR, NR)                                                                      \
    static void rows_tile_##MR##x##NR(float *out, int ldo, const float *in, const float *W,  \
                                      int K)                                                   \
    {                                                                                          \
        __m256 acc[MR][NR];                                                                    \
        UNROLL for (int i = 0; i < MR; i++)                                                    \
        UNROLL for (int j = 0; j < NR; j++)                                                    \
            acc[i][j] = _mm256_setzero_ps();                                                   \
        for (int k = 0; k < K; k += 8) {                                                       \
            __m256 w[NR];                                                                      \
            UNROLL for (int j = 0; j < NR; j++)                                                \
                w[j] = _mm256_loadu_ps(W + (size_t)j * K + k);                                 \
            UNROLL for (int i = 0; i < MR; i++)                                                \
            {                                                                                  \
                __m256 x = _mm256_loadu_ps(in + (size_t)i * K + k);                            \
                UNROLL for (int j = 0; j < NR; j++)                                            \
                    acc[i][j] = _mm256_fmadd_ps(x, w[j], acc[i][j]);                           \
            }                                                                                  \
        }                                                                                      \
        UNROLL for (int i = 0; i < MR; i++)                                                    \
        UNROLL for (int j = 0; j < NR; j++)                                                    \
            out[(size_t)i * ldo + j] = hsum8(acc[i][j]);                                       \
    }
/* 4 rows x 3 weight rows: 12 accumulators + 3 weight vectors + 1 input
 * vector = the 16 ymm registers, 7 loads per 12 FMAs. One row (G = 1) is
 * bandwidth-bound; 8 weight rows give it 8 independent FMA chains. */
ROWS_TILE(4, 3)
ROWS_TILE(3, 3)
ROWS_TILE(2, 3)
ROWS_TILE(1, 3)
ROWS_TILE(1, 8)
#undef ROWS_TILE
#undef UNROLL

static float dot_avx(const float *a, const float *b, int K)
{
    __m256 acc = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= K; k += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc);
    float sum = hsum8(acc);
    for (; k < K; k++)
        sum = MADD(a[k], b[k], sum);
    return sum;
}
#endif

/* out[M, N] = in[M, K] @ W[N, K]^T (no bias). Exported for the tests only
 * (not in sampler.h): they check it against k_matmul_fwd_naive. */
void sampler_matmul_rows(float *out, const float *in, const float *W, int M, int K, int N);
void sampler_matmul_rows(float *out, const float *in, const float *W, int M, int K, int N)
{
#ifdef SAMPLER_AVX2
    if (K % 8 == 0) {
        int n = 0;
        /* n outer: a few weight rows stay in L1 while every input row (G x K
         * floats, also L1-resident) passes over them. */
        if (M == 1)
            for (; n + 8 <= N; n += 8)
                rows_tile_1x8(out + n, N, in, W + (size_t)n * K, K);
        for (; n + 3 <= N; n += 3) {
            const float *w = W + (size_t)n * K;
            int m = 0;
            for (; m + 4 <= M; m += 4)
                rows_tile_4x3(out + (size_t)m * N + n, N, in + (size_t)m * K, w, K);
            float *o = out + (size_t)m * N + n;
            const float *x = in + (size_t)m * K;
            switch (M - m) {
            case 3: rows_tile_3x3(o, N, x, w, K); break;
            case 2: rows_tile_2x3(o, N, x, w, K); break;
            case 1: rows_tile_1x3(o, N, x, w, K); break;
            default: break;
            }
        }
        const int N4 = n;
        for (int n = N4; n < N; n++)
            for (int m = 0; m < M; m++)
                out[(size_t)m * N + n] = dot_avx(in + (size_t)m * K, W + (size_t)n * K, K);
        return;
    }
#endif
    for (int n = 0; n < N; n++)
        for (int m = 0; m < M; m++) {
            const float *a = in + (size_t)m * K, *b = W + (size_t)n * K;
            float sum = 0.0f;
            for (int k = 0; k < K; k++)
                sum = MADD(a[k], b[k], sum);
            out[(size_t)m * N + n] = sum;
        }
}

/* Rows up to this count go through sampler_matmul_rows, more through sgemm
 * (whose packing pays off for the prompt). */
#define SMALL_ROWS 16

static void matmul(float *out, const float *in, const float *W, int M, int K, int N)
{
    if (M <= SMALL_ROWS)
        sampler_matmul_rows(out, in, W, M, K, N);
    else
        k_matmul_fwd(out, in, W, NULL, M, K, N);
}

/* ---- attention of one query row against cached keys/values ---- */

/* sc[j] = scale * sum_d q[d] kt[d * ld + j] for j < n: kt is one kv head of
 * a transposed K cache (hd rows of ld positions). */
static void scores_t(float *sc, const float *q, const float *kt, int ld, int n, int hd, float scale)
{
    int j = 0;
#ifdef SAMPLER_AVX2
    const __m256 vs = _mm256_set1_ps(scale);
    for (; j + 32 <= n; j += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < hd; d++) {
            const float *row = kt + (size_t)d * ld + j;
            __m256 qd = _mm256_set1_ps(q[d]);
            a0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row), a0);
            a1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + 8), a1);
            a2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + 16), a2);
            a3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(row + 24), a3);
        }
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(a0, vs));
        _mm256_storeu_ps(sc + j + 8, _mm256_mul_ps(a1, vs));
        _mm256_storeu_ps(sc + j + 16, _mm256_mul_ps(a2, vs));
        _mm256_storeu_ps(sc + j + 24, _mm256_mul_ps(a3, vs));
    }
    for (; j + 8 <= n; j += 8) {
        __m256 a0 = _mm256_setzero_ps();
        for (int d = 0; d < hd; d++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(q[d]), _mm256_loadu_ps(kt + (size_t)d * ld + j), a0);
        _mm256_storeu_ps(sc + j, _mm256_mul_ps(a0, vs));
    }
#endif
    for (; j < n; j++) {
        float a = 0.0f;
        for (int d = 0; d < hd; d++)
            a = MADD(q[d], kt[(size_t)d * ld + j], a);
        sc[j] = a * scale;
    }
}

/* out[d] += sum_j p[j] v[j * ld + d] for d < hd, j < n. */
static void weighted_sum(float *out, const float *p, const float *v, int ld, int n, int hd)
{
    int d = 0;
#ifdef SAMPLER_AVX2
    for (; d + 32 <= hd; d += 32) {
        __m256 a0 = _mm256_loadu_ps(out + d), a1 = _mm256_loadu_ps(out + d + 8);
        __m256 a2 = _mm256_loadu_ps(out + d + 16), a3 = _mm256_loadu_ps(out + d + 24);
        for (int j = 0; j < n; j++) {
            const float *row = v + (size_t)j * ld + d;
            __m256 pj = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row), a0);
            a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row + 8), a1);
            a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row + 16), a2);
            a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(row + 24), a3);
        }
        _mm256_storeu_ps(out + d, a0);
        _mm256_storeu_ps(out + d + 8, a1);
        _mm256_storeu_ps(out + d + 16, a2);
        _mm256_storeu_ps(out + d + 24, a3);
    }
    for (; d + 8 <= hd; d += 8) {
        __m256 a0 = _mm256_loadu_ps(out + d);
        for (int j = 0; j < n; j++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + (size_t)j * ld + d), a0);
        _mm256_storeu_ps(out + d, a0);
    }
#endif
    for (; d < hd; d++) {
        float a = out[d];
        for (int j = 0; j < n; j++)
            a = MADD(p[j], v[(size_t)j * ld + d], a);
        out[d] = a;
    }
}

/* out[H*hd] = softmax(q K^T * scale) V for one query q[H*hd] over n1
 * positions of the first cache (kt1: (KVH, hd, ld1); v1: (n1, kvd))
 * followed by n2 positions of the second (kt2: (KVH, hd, ld2); v2). Head h
 * reads kv head h / (H/KVH). scores holds n1 + n2 floats. The softmax is
 * k_attention_fwd's: max-subtracted expf, float sum, probabilities scaled by
 * 1/sum before the weighted sum. */
static void attend_row(float *out, const float *q, const float *kt1, int ld1, const float *v1,
                       int n1, const float *kt2, int ld2, const float *v2, int n2, int H, int KVH,
                       int hd, float scale, float *scores)
{
    const int grp = H / KVH, kvd = KVH * hd, n = n1 + n2;
    for (int h = 0; h < H; h++) {
        const int kh = h / grp;
        const float *qh = q + (size_t)h * hd;
        scores_t(scores, qh, kt1 + (size_t)kh * hd * ld1, ld1, n1, hd, scale);
        if (n2 > 0)
            scores_t(scores + n1, qh, kt2 + (size_t)kh * hd * ld2, ld2, n2, hd, scale);
        float mx = scores[0];
        for (int j = 1; j < n; j++)
            mx = scores[j] > mx ? scores[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            scores[j] = expf(scores[j] - mx);
            sum += scores[j];
        }
        const float inv = 1.0f / sum;
        for (int j = 0; j < n; j++)
            scores[j] *= inv;
        float *oh = out + (size_t)h * hd;
        memset(oh, 0, (size_t)hd * sizeof(float));
        weighted_sum(oh, scores, v1 + (size_t)kh * hd, kvd, n1, hd);
        if (n2 > 0)
            weighted_sum(oh, scores + n1, v2 + (size_t)kh * hd, kvd, n2, hd);
    }
}

/* Writes rows k[n, KVH*hd] into a transposed cache kt (KVH, hd, ld) at
 * positions pos0 .. pos0+n-1. */
static void store_kt(float *kt, int ld, int pos0, const float *k, int n, int kvd)
{
    for (int t = 0; t < n; t++)
        for (int c = 0; c < kvd; c++)
            kt[(size_t)c * ld + pos0 + t] = k[(size_t)t * kvd + c];
}

/* ---- prefill ---- */

/* Image (3, S, S) channel-major -> (n_patches, 3*P*P): patches in raster
 * order over the (S/P x S/P) grid, each flattened channel, row, column (the
 * layout of a Conv2d(3, D, P, stride P) weight), as model_forward does. */
/* Runs the prompt through the decoder, filling the shared prompt cache, and
 * writes the last position's logits to s->logits row 0. */
static void prefill(sampler_t *s, const model_t *m, const int *prompt, int T, const float *image)
{
    const model_config_t *c = &m->cfg;
    const model_weights_t *w = &m->w;
    const int D = c->dim, F = c->hidden_dim, V = c->vocab_size, L = c->n_layers;
    const int H = c->n_heads, KVH = c->n_kv_heads, hd = s->hd, qd = s->qd, kvd = s->kvd;
    const int ld = s->max_prompt;
    const float scale = 1.0f / sqrtf((float)hd);

    if (image) {
        model_extract_patches(s->patches, image, c->image_size, c->patch_size);
        k_matmul_fwd(s->proj_h, s->patches, w->proj_w1, w->proj_b1, s->n_patches, s->patch_dim, D);
        k_gelu_fwd(s->proj_a, s->proj_h, (size_t)s->n_patches * D);
        k_matmul_fwd(s->proj_out, s->proj_a, w->proj_w2, w->proj_b2, s->n_patches, D, D);
        k_add(s->proj_out, s->proj_out, w->proj_pos, (size_t)s->n_patches * D);
    }
    int patch = 0;
    for (int t = 0; t < T; t++) {
        const float *src = prompt[t] == MODEL_IMAGE_SLOT ? s->proj_out + (size_t)patch++ * D
                                                         : w->embed + (size_t)prompt[t] * D;
        memcpy(s->x + (size_t)t * D, src, (size_t)D * sizeof(float));
        s->pos[t] = t;
    }

    for (int l = 0; l < L; l++) {
        const layer_weights_t *lw = &w->layers[l];
        float *pkt = s->prompt_kt + (size_t)l * ld * kvd; /* (KVH, hd, ld) */
        float *pv = s->prompt_v + (size_t)l * ld * kvd;   /* (T, kvd) */
        k_rmsnorm_fwd(s->xn, s->rstd, s->x, lw->attn_norm, T, D, c->norm_eps);
        matmul(s->q, s->xn, lw->wq, T, D, qd);
        matmul(s->k_rows, s->xn, lw->wk, T, D, kvd);
        matmul(pv, s->xn, lw->wv, T, D, kvd);
        k_rope_fwd(s->q, s->pos, m->rope_cos, m->rope_sin, T, H, hd);
        k_rope_fwd(s->k_rows, s->pos, m->rope_cos, m->rope_sin, T, KVH, hd);
        store_kt(pkt, ld, 0, s->k_rows, T, kvd);
        /* The last layer's K/V are needed for every row but its output only
         * for the last one: only that row goes on through the block. */
        const int r0 = l == L - 1 ? T - 1 : 0, nr = T - r0;
        for (int t = r0; t < T; t++)
            attend_row(s->ao + (size_t)t * qd, s->q + (size_t)t * qd, pkt, ld, pv, t + 1, NULL, 0,
                       NULL, 0, H, KVH, hd, scale, s->scores);
        float *x = s->x + (size_t)r0 * D; /* (nr, D) */
        matmul(s->tmp, s->ao + (size_t)r0 * qd, lw->wo, nr, qd, D);
        k_add(x, x, s->tmp, (size_t)nr * D);
        k_rmsnorm_fwd(s->xn, s->rstd, x, lw->mlp_norm, nr, D, c->norm_eps);
        matmul(s->gate, s->xn, lw->w_gate, nr, D, F);
        matmul(s->up, s->xn, lw->w_up, nr, D, F);
        k_swiglu_fwd(s->hid, s->gate, s->up, (size_t)nr * F);
        matmul(s->tmp, s->hid, lw->w_down, nr, F, D);
        k_add(x, x, s->tmp, (size_t)nr * D);
    }
    k_rmsnorm_fwd(s->xn, s->rstd, s->x + (size_t)(T - 1) * D, w->final_norm, 1, D, c->norm_eps);
    matmul(s->logits, s->xn, w->lm_head, 1, D, V);
}

/* ---- one decode step for the n active samples ---- */

/* Feeds token cur_tok[act[r]] of every active sample at sequence position
 * pos, stores its K/V in generated-cache slot `slot`, and writes the next
 * logits to s->logits rows act[r]. */
static void decode_step(sampler_t *s, const model_t *m, int n, int prompt_len, int pos, int slot)
{
    const model_config_t *c = &m->cfg;
    const model_weights_t *w = &m->w;
    const int D = c->dim, F = c->hidden_dim, V = c->vocab_size, L = c->n_layers;
    const int H = c->n_heads, KVH = c->n_kv_heads, hd = s->hd, qd = s->qd, kvd = s->kvd;
    const int ldp = s->max_prompt, ldg = s->max_new;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t sample_stride = (size_t)ldg * kvd; /* one sample's generated cache */

    for (int r = 0; r < n; r++) {
        memcpy(s->x + (size_t)r * D, w->embed + (size_t)s->cur_tok[s->act[r]] * D,
               (size_t)D * sizeof(float));
        s->pos[r] = pos;
    }
    for (int l = 0; l < L; l++) {
        const layer_weights_t *lw = &w->layers[l];
        const float *pkt = s->prompt_kt + (size_t)l * ldp * kvd;
        const float *pv = s->prompt_v + (size_t)l * ldp * kvd;
        float *gkt = s->gen_kt + (size_t)l * s->max_group * sample_stride;
        float *gv = s->gen_v + (size_t)l * s->max_group * sample_stride;
        k_rmsnorm_fwd(s->xn, s->rstd, s->x, lw->attn_norm, n, D, c->norm_eps);
        matmul(s->q, s->xn, lw->wq, n, D, qd);
        matmul(s->k_rows, s->xn, lw->wk, n, D, kvd);
        matmul(s->v_step, s->xn, lw->wv, n, D, kvd);
        k_rope_fwd(s->q, s->pos, m->rope_cos, m->rope_sin, n, H, hd);
        k_rope_fwd(s->k_rows, s->pos, m->rope_cos, m->rope_sin, n, KVH, hd);
        for (int r = 0; r < n; r++) {
            float *skt = gkt + (size_t)s->act[r] * sample_stride; /* (KVH, hd, max_new) */
            float *sv = gv + (size_t)s->act[r] * sample_stride;   /* (max_new, kvd) */
            store_kt(skt, ldg, slot, s->k_rows + (size_t)r * kvd, 1, kvd);
            memcpy(sv + (size_t)slot * kvd, s->v_step + (size_t)r * kvd, (size_t)kvd * sizeof(float));
            attend_row(s->ao + (size_t)r * qd, s->q + (size_t)r * qd, pkt, ldp, pv, prompt_len, skt,
                       ldg, sv, slot + 1, H, KVH, hd, scale, s->scores);
        }
        matmul(s->tmp, s->ao, lw->wo, n, qd, D);
        k_add(s->x, s->x, s->tmp, (size_t)n * D);
        k_rmsnorm_fwd(s->xn, s->rstd, s->x, lw->mlp_norm, n, D, c->norm_eps);
        matmul(s->gate, s->xn, lw->w_gate, n, D, F);
        matmul(s->up, s->xn, lw->w_up, n, D, F);
        k_swiglu_fwd(s->hid, s->gate, s->up, (size_t)n * F);
        matmul(s->tmp, s->hid, lw->w_down, n, F, D);
        k_add(s->x, s->x, s->tmp, (size_t)n * D);
    }
    k_rmsnorm_fwd(s->xn, s->rstd, s->x, w->final_norm, n, D, c->norm_eps);
    matmul(s->logits, s->xn, w->lm_head, n, D, V);
    /* Rows are compact; move row r to sample act[r]. act[] is increasing, so
     * act[r] >= r and going from the last row down never overwrites a row
     * that is still to be moved. */
    for (int r = n - 1; r >= 0; r--)
        if (s->act[r] != r)
            memcpy(s->logits + (size_t)s->act[r] * V, s->logits + (size_t)r * V,
                   (size_t)V * sizeof(float));
}

/* ---- choosing a token ---- */

static inline int ranks_below(const float *p, int a, int b)
{
    /* "a ranks below b": lower weight, ties broken towards the lower id so
     * the order (and hence the sample) depends on the values only. */
    return p[a] < p[b] || (p[a] == p[b] && a > b);
}

/* Restores the heap property below i. top_is_max: max-heap (most likely
 * token on top), else min-heap. */
static void heap_sift_down(int *h, int n, int i, const float *p, int top_is_max)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, top = i;
        if (l < n && (top_is_max ? ranks_below(p, h[top], h[l]) : ranks_below(p, h[l], h[top])))
            top = l;
        if (r < n && (top_is_max ? ranks_below(p, h[top], h[r]) : ranks_below(p, h[r], h[top])))
            top = r;
        if (top == i)
            return;
        int t = h[i];
        h[i] = h[top];
        h[top] = t;
        i = top;
    }
}

/* Draws from h[0..n) with weights p (their sum is mass). */
static int draw(const int *h, int n, const float *p, double mass, rng_t *rng)
{
    double u = rng_uniform_double(rng) * mass, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += p[h[i]];
        if (u < acc)
            return h[i];
    }
    return h[n - 1]; /* u rounded up to the mass */
}

/* Picks a token from one row of logits (V). Greedy: allowed argmax (lowest id
 * on ties). Otherwise softmax(logits / temperature) restricted to allowed
 * tokens, cut to the nucleus: the smallest most-likely set whose mass
 * reaches top_p. No allocation; O(V) plus heap work on the few tokens near
 * the nucleus boundary. */
static int pick_token(sampler_t *s, const float *logits, const sample_params_t *p, rng_t *rng)
{
    const int V = s->cfg.vocab_size;
    const unsigned char *ban = s->banned;
    int best = -1;
    for (int i = 0; i < V; i++)
        if (!ban[i] && (best < 0 || logits[i] > logits[best]))
            best = i;
    if (p->temperature == 0.0f)
        return best;

    const float inv_t = 1.0f / p->temperature, mx = logits[best];
    float *pr = s->probs;
    int *h = s->heap, n = 0;
    double total = 0.0;
    for (int i = 0; i < V; i++) {
        pr[i] = ban[i] ? 0.0f : expf((logits[i] - mx) * inv_t);
        total += pr[i];
        if (!ban[i])
            h[n++] = i;
    }
    if (p->top_p >= 1.0f)
        return draw(h, n, pr, total, rng);

    /* Tokens outside the nucleus have total mass at most budget. Those below
     * budget / n are outside for sure (all of them together weigh less than
     * budget, and all rank below the rest): drop them first. This leaves
     * only plausible tokens when the distribution is peaked. */
    const double budget = total - (double)p->top_p * total;
    const float floor_p = (float)(budget / n);
    double tail = 0.0;
    int na = 0;
    for (int i = 0; i < n; i++) {
        if (pr[h[i]] < floor_p)
            tail += pr[h[i]];
        else
            h[na++] = h[i];
    }
    n = na;
    if (n <= 32) {
        /* Few candidates: pop the most likely until the mass reaches top_p;
         * popped tokens collect at the end of h. */
        for (int i = n / 2 - 1; i >= 0; i--)
            heap_sift_down(h, n, i, pr, 1);
        const double target = total - budget;
        double mass = 0.0;
        int left = n;
        while (left > 0 && (left == n || mass < target)) {
            int top = h[0];
            mass += pr[top];
            h[0] = h[--left];
            h[left] = top;
            heap_sift_down(h, left, 0, pr, 1);
        }
        return draw(h + left, n - left, pr, mass, rng);
    }
    /* Many candidates (a flat distribution): the excluded tail is what is
     * small, so pop the least likely while the tail stays within budget. */
    for (int i = n / 2 - 1; i >= 0; i--)
        heap_sift_down(h, n, i, pr, 0);
    while (n > 1 && tail + pr[h[0]] <= budget) {
        tail += pr[h[0]];
        h[0] = h[--n];
        heap_sift_down(h, n, 0, pr, 0);
    }
    double mass = 0.0;
    for (int i = 0; i < n; i++)
        mass += pr[h[i]];
    return draw(h, n, pr, mass, rng);
}

/* ---- generation ---- */

static int check_args(const sampler_t *s, const model_t *m, const int *prompt, int prompt_len,
                      const float *image, int G, const sample_params_t *p, const int *out_tokens,
                      const float *out_logp, const int *out_len)
{
    if (!s || !m || !prompt || !p || !out_tokens || !out_logp || !out_len) {
        log_error("sampler_generate: NULL argument");
        return -EINVAL;
    }
    const model_config_t *c = &m->cfg, *sc = &s->cfg;
    if (c->vocab_size != sc->vocab_size || c->dim != sc->dim || c->n_layers != sc->n_layers ||
        c->n_heads != sc->n_heads || c->n_kv_heads != sc->n_kv_heads ||
        c->hidden_dim != sc->hidden_dim || c->image_size != sc->image_size ||
        c->patch_size != sc->patch_size || c->max_seq_len != sc->max_seq_len) {
        log_error("sampler_generate: model config differs from the one the sampler was sized for");
        return -EINVAL;
    }
    if (G <= 0 || G > s->max_group) {
        log_error("sampler_generate: G = %d outside [1, %d]", G, s->max_group);
        return -EINVAL;
    }
    if (prompt_len <= 0 || prompt_len > s->max_prompt) {
        log_error("sampler_generate: prompt length %d outside [1, %d]", prompt_len, s->max_prompt);
        return -EINVAL;
    }
    if (p->max_new_tokens < 0 || p->max_new_tokens > s->max_new) {
        log_error("sampler_generate: max_new_tokens %d outside [0, %d]", p->max_new_tokens,
                  s->max_new);
        return -EINVAL;
    }
    if (prompt_len + p->max_new_tokens > c->max_seq_len) {
        log_error("sampler_generate: prompt %d + %d new tokens exceed max_seq_len %d", prompt_len,
                  p->max_new_tokens, c->max_seq_len);
        return -EINVAL;
    }
    /* Below 1e-3, logits / T overflows for ordinary logits: use 0 (greedy). */
    if (!(p->temperature == 0.0f || p->temperature >= 1e-3f) || !isfinite(p->temperature) ||
        !(p->top_p > 0.0f) || !(p->top_p <= 1.0f)) {
        log_error("sampler_generate: bad temperature %g or top_p %g (need T = 0 or T >= 1e-3, "
                  "0 < top_p <= 1)",
                  (double)p->temperature, (double)p->top_p);
        return -EINVAL;
    }
    if (p->n_banned < 0 || (p->n_banned > 0 && !p->banned)) {
        log_error("sampler_generate: bad banned list (n_banned %d)", p->n_banned);
        return -EINVAL;
    }
    for (int i = 0; i < p->n_banned; i++)
        if (p->banned[i] < 0 || p->banned[i] >= c->vocab_size) {
            log_error("sampler_generate: banned token %d outside the vocabulary (%d)",
                      p->banned[i], c->vocab_size);
            return -EINVAL;
        }
    /* Image slots: none, or one run of exactly n_patches with an image. */
    int first = -1, n_slots = 0;
    for (int t = 0; t < prompt_len; t++) {
        if (prompt[t] == MODEL_IMAGE_SLOT) {
            if (first < 0)
                first = t;
            n_slots++;
        } else if (prompt[t] < 0 || prompt[t] >= c->vocab_size) {
            log_error("sampler_generate: prompt token %d at %d outside the vocabulary (%d)",
                      prompt[t], t, c->vocab_size);
            return -EINVAL;
        }
    }
    if (n_slots > 0) {
        if (c->image_size <= 0 || !image) {
            log_error("sampler_generate: prompt has image slots but %s",
                      c->image_size <= 0 ? "the model is text-only" : "no image was given");
            return -EINVAL;
        }
        if (n_slots != s->n_patches) {
            log_error("sampler_generate: prompt has %d image slots, the model takes %d per image",
                      n_slots, s->n_patches);
            return -EINVAL;
        }
        for (int t = first; t < first + n_slots; t++)
            if (prompt[t] != MODEL_IMAGE_SLOT) {
                log_error("sampler_generate: image slots are not one contiguous run");
                return -EINVAL;
            }
    }
    return 0;
}

int sampler_generate(sampler_t *s, const model_t *m, const int *prompt, int prompt_len,
                     const float *image, int G, const sample_params_t *p, rng_t *rng,
                     int *out_tokens, float *out_logp, int *out_len)
{
    int rc = check_args(s, m, prompt, prompt_len, image, G, p, out_tokens, out_logp, out_len);
    if (rc)
        return rc;
    if (p->temperature > 0.0f && !rng) {
        log_error("sampler_generate: sampling at temperature %g needs an rng",
                  (double)p->temperature);
        return -EINVAL;
    }
    const int V = m->cfg.vocab_size, max_new = s->max_new, n_new = p->max_new_tokens;
    memset(s->banned, 0, (size_t)V);
    for (int i = 0; i < p->n_banned; i++)
        s->banned[p->banned[i]] = 1;
    int n_allowed = 0;
    for (int i = 0; i < V; i++)
        n_allowed += !s->banned[i];
    if (n_allowed == 0) {
        log_error("sampler_generate: every token is banned");
        return -EINVAL;
    }

    for (int g = 0; g < G; g++) {
        out_len[g] = 0;
        for (int i = 0; i < max_new; i++) {
            out_tokens[(size_t)g * max_new + i] = -1;
            out_logp[(size_t)g * max_new + i] = 0.0f;
        }
    }
    if (n_new == 0)
        return 0;

    int has_slots = 0;
    for (int t = 0; t < prompt_len && !has_slots; t++)
        has_slots = prompt[t] == MODEL_IMAGE_SLOT;
    prefill(s, m, prompt, prompt_len, has_slots ? image : NULL);
    for (int g = 1; g < G; g++)
        memcpy(s->logits + (size_t)g * V, s->logits, (size_t)V * sizeof(float));

    /* Log-probs at temperature 1 for greedy: the learner's convention. */
    const float lp_temp = p->temperature > 0.0f ? p->temperature : 1.0f;
    int n_act = G;
    for (int g = 0; g < G; g++)
        s->act[g] = g;
    for (int i = 0; i < n_new; i++) {
        int n_next = 0;
        for (int r = 0; r < n_act; r++) {
            const int g = s->act[r];
            const float *row = s->logits + (size_t)g * V;
            int tok = pick_token(s, row, p, rng);
            float lp;
            k_logprobs_fwd(&lp, NULL, row, &tok, 1, V, lp_temp);
            out_tokens[(size_t)g * max_new + i] = tok;
            out_logp[(size_t)g * max_new + i] = lp;
            out_len[g] = i + 1;
            s->cur_tok[g] = tok;
            if (tok != p->eos_id)
                s->act[n_next++] = g;
        }
        n_act = n_next;
        if (n_act == 0 || i + 1 == n_new)
            break;
        decode_step(s, m, n_act, prompt_len, prompt_len + i, i);
    }
    return 0;
}
