/* model: parameter table, training forward and backward of the LLaVA-style
 * vision-language model. Every heavy operation is a kernel call over all T
 * packed tokens at once (kernels.h); the only per-sequence / per-run loops
 * are over image runs and text runs (a handful per batch), never per token
 * around a BLAS call. */
#include "model.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "log.h"

/* Tensor offsets and every activation buffer start on a 64-byte boundary so
 * that SIMD loads in the kernels and OpenBLAS never straddle a cache line. */
#define ALIGN_FLOATS 16
#define ALIGN_BYTES (ALIGN_FLOATS * sizeof(float))

static size_t round_up(size_t n)
{
    return (n + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static void *alloc_aligned(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0)
        bytes = ALIGN_BYTES;
    if (posix_memalign(&p, ALIGN_BYTES, bytes) != 0)
        return NULL;
    return p;
}

/* ------------------------------------------------------------------ config */

int model_config_validate(const model_config_t *c, char *err, size_t errlen)
{
#define BAD(...)                                                                                   \
    do {                                                                                           \
        if (err && errlen)                                                                         \
            snprintf(err, errlen, __VA_ARGS__);                                                    \
        return -EINVAL;                                                                            \
    } while (0)
    if (!c)
        BAD("config is NULL");
    if (c->vocab_size <= 0)
        BAD("vocab_size must be > 0 (got %d)", c->vocab_size);
    if (c->dim <= 0)
        BAD("dim must be > 0 (got %d)", c->dim);
    if (c->n_layers <= 0)
        BAD("n_layers must be > 0 (got %d)", c->n_layers);
    if (c->n_heads <= 0)
        BAD("n_heads must be > 0 (got %d)", c->n_heads);
    if (c->dim % c->n_heads != 0)
        BAD("dim (%d) must be a multiple of n_heads (%d)", c->dim, c->n_heads);
    if ((c->dim / c->n_heads) % 2 != 0)
        BAD("head dim dim/n_heads (%d) must be even for RoPE", c->dim / c->n_heads);
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
        BAD("n_kv_heads (%d) must be > 0 and divide n_heads (%d)", c->n_kv_heads, c->n_heads);
    if (c->hidden_dim <= 0)
        BAD("hidden_dim must be > 0 (got %d)", c->hidden_dim);
    if (c->max_seq_len <= 0)
        BAD("max_seq_len must be > 0 (got %d)", c->max_seq_len);
    if (c->image_size < 0)
        BAD("image_size must be >= 0 (got %d)", c->image_size);
    if (c->image_size > 0) {
        if (c->patch_size <= 0 || c->image_size % c->patch_size != 0)
            BAD("patch_size (%d) must be > 0 and divide image_size (%d)", c->patch_size,
                c->image_size);
    }
    if (c->tie_embeddings != 0 && c->tie_embeddings != 1)
        BAD("tie_embeddings must be 0 or 1 (got %d)", c->tie_embeddings);
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        BAD("rope_theta must be a positive number (got %g)", (double)c->rope_theta);
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        BAD("norm_eps must be a positive number (got %g)", (double)c->norm_eps);
    /* Keep every product of sizes far from int overflow in the kernels. */
    const double big = 2147483647.0;
    if ((double)c->vocab_size * c->dim > big || (double)c->hidden_dim * c->dim > big ||
        (double)c->dim * c->dim > big)
        BAD("tensor too large (vocab_size*dim, hidden_dim*dim or dim*dim exceeds 2^31)");
    return 0;
#undef BAD
}

int model_n_patches(const model_config_t *cfg)
{
    if (!cfg || cfg->image_size <= 0 || cfg->patch_size <= 0)
        return 0;
    int g = cfg->image_size / cfg->patch_size;
    return g * g;
}

/* ------------------------------------------------------------ tensor table */

static void add_tensor(model_t *m, size_t *cursor, const char *name, int decay, int ndim, int d0,
                       int d1)
{
    tensor_info_t *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 0;
    t->shape[2] = t->shape[3] = 0;
    t->numel = (size_t)d0 * (ndim > 1 ? (size_t)d1 : 1);
    t->offset = *cursor;
    t->decay = decay;
    *cursor = round_up(*cursor + t->numel);
}

/* Builds the table; the order here is the order bind_views() walks. */
static void build_table(model_t *m)
{
    const model_config_t *c = &m->cfg;
    int D = c->dim, hd = D / c->n_heads, qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    int F = c->hidden_dim, V = c->vocab_size, pp = 3 * c->patch_size * c->patch_size;
    size_t cur = 0;
    char name[96];
    m->n_tensors = 0;
    if (c->image_size > 0) {
        add_tensor(m, &cur, "mm_projector.0.weight", 1, 2, D, pp);
        add_tensor(m, &cur, "mm_projector.0.bias", 0, 1, D, 0);
        add_tensor(m, &cur, "mm_projector.2.weight", 1, 2, D, D);
        add_tensor(m, &cur, "mm_projector.2.bias", 0, 1, D, 0);
        /* Learned patch positions, as a ViT's position embeddings: with RoPE
         * alone a token can only find "the patch of the top-left cell" by
         * relative offset, which a small model learns slowly; with this, each
         * image token carries its place in its content. */
        add_tensor(m, &cur, "mm_projector.pos_embed", 1, 2, model_n_patches(c), D);
    }
    add_tensor(m, &cur, "model.embed_tokens.weight", 1, 2, V, D);
    for (int l = 0; l < c->n_layers; l++) {
#define LNAME(s) (snprintf(name, sizeof name, "model.layers.%d.%s", l, s), name)
        add_tensor(m, &cur, LNAME("input_layernorm.weight"), 0, 1, D, 0);
        add_tensor(m, &cur, LNAME("self_attn.q_proj.weight"), 1, 2, qd, D);
        add_tensor(m, &cur, LNAME("self_attn.k_proj.weight"), 1, 2, kvd, D);
        add_tensor(m, &cur, LNAME("self_attn.v_proj.weight"), 1, 2, kvd, D);
        add_tensor(m, &cur, LNAME("self_attn.o_proj.weight"), 1, 2, D, qd);
        add_tensor(m, &cur, LNAME("post_attention_layernorm.weight"), 0, 1, D, 0);
        add_tensor(m, &cur, LNAME("mlp.gate_proj.weight"), 1, 2, F, D);
        add_tensor(m, &cur, LNAME("mlp.up_proj.weight"), 1, 2, F, D);
        add_tensor(m, &cur, LNAME("mlp.down_proj.weight"), 1, 2, D, F);
#undef LNAME
    }
    add_tensor(m, &cur, "model.norm.weight", 0, 1, D, 0);
    if (!c->tie_embeddings)
        add_tensor(m, &cur, "lm_head.weight", 1, 2, V, D);
    m->n_params = cur;
}

static void bind_views(const model_t *m, model_weights_t *w, float *base)
{
    const tensor_info_t *t = m->tensors;
    int i = 0;
#define NEXT() (base ? base + t[i++].offset : (i++, (float *)NULL))
    if (m->cfg.image_size > 0) {
        w->proj_w1 = NEXT();
        w->proj_b1 = NEXT();
        w->proj_w2 = NEXT();
        w->proj_b2 = NEXT();
        w->proj_pos = NEXT();
    } else {
        w->proj_w1 = w->proj_b1 = w->proj_w2 = w->proj_b2 = w->proj_pos = NULL;
    }
    w->embed = NEXT();
    for (int l = 0; l < m->cfg.n_layers; l++) {
        layer_weights_t *L = &w->layers[l];
        L->attn_norm = NEXT();
        L->wq = NEXT();
        L->wk = NEXT();
        L->wv = NEXT();
        L->wo = NEXT();
        L->mlp_norm = NEXT();
        L->w_gate = NEXT();
        L->w_up = NEXT();
        L->w_down = NEXT();
    }
    w->final_norm = NEXT();
    w->lm_head = m->cfg.tie_embeddings ? w->embed : NEXT();
#undef NEXT
}

model_t *model_new(const model_config_t *cfg, int with_grads)
{
    char err[160];
    if (model_config_validate(cfg, err, sizeof err) != 0) {
        log_error("model_new: bad config: %s", err);
        return NULL;
    }
    model_t *m = calloc(1, sizeof *m);
    if (!m)
        goto fail;
    m->cfg = *cfg;
    int L = cfg->n_layers, hd = cfg->dim / cfg->n_heads;
    size_t max_tensors = 5 + 1 + 9 * (size_t)L + 1 + 1; /* projector (with pos_embed), embed, layers, norm, head */
    m->tensors = calloc(max_tensors, sizeof *m->tensors);
    m->w.layers = calloc((size_t)L, sizeof *m->w.layers);
    m->g.layers = calloc((size_t)L, sizeof *m->g.layers);
    if (!m->tensors || !m->w.layers || !m->g.layers)
        goto fail;
    build_table(m);
    m->params = alloc_aligned(m->n_params * sizeof(float));
    if (!m->params)
        goto fail;
    memset(m->params, 0, m->n_params * sizeof(float));
    bind_views(m, &m->w, m->params);
    if (with_grads) {
        m->grads = alloc_aligned(m->n_params * sizeof(float));
        if (!m->grads)
            goto fail;
        memset(m->grads, 0, m->n_params * sizeof(float));
        bind_views(m, &m->g, m->grads);
    } else {
        /* Inference-only: the gradient views stay NULL, as documented. */
        free(m->g.layers);
        m->g.layers = NULL;
    }
    size_t rope_n = (size_t)cfg->max_seq_len * (size_t)(hd / 2);
    m->rope_cos = alloc_aligned(rope_n * sizeof(float));
    m->rope_sin = alloc_aligned(rope_n * sizeof(float));
    if (!m->rope_cos || !m->rope_sin)
        goto fail;
    k_rope_table(m->rope_cos, m->rope_sin, cfg->max_seq_len, hd, cfg->rope_theta);
    return m;
fail:
    log_error("model_new: out of memory");
    model_destroy(&m);
    return NULL;
}

void model_destroy(model_t **pm)
{
    if (!pm || !*pm)
        return;
    model_t *m = *pm;
    free(m->tensors);
    free(m->w.layers);
    free(m->g.layers);
    free(m->params);
    free(m->grads);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
    *pm = NULL;
}

void model_init_random(model_t *m, rng_t *rng)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        float *p = m->params + t->offset;
        if (t->ndim == 2) {
            for (size_t j = 0; j < t->numel; j++)
                p[j] = 0.02f * rng_normal(rng);
        } else {
            /* 1-D tensors are norm weights (ones) or biases (zeros). */
            float v = strstr(t->name, "bias") ? 0.0f : 1.0f;
            for (size_t j = 0; j < t->numel; j++)
                p[j] = v;
        }
    }
}

void model_zero_grads(model_t *m)
{
    if (m && m->grads)
        memset(m->grads, 0, m->n_params * sizeof(float));
}

static int config_equal(const model_config_t *a, const model_config_t *b)
{
    return a->vocab_size == b->vocab_size && a->dim == b->dim && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
           a->hidden_dim == b->hidden_dim && a->max_seq_len == b->max_seq_len &&
           a->image_size == b->image_size &&
           (a->image_size == 0 || a->patch_size == b->patch_size) &&
           a->tie_embeddings == b->tie_embeddings && a->rope_theta == b->rope_theta &&
           a->norm_eps == b->norm_eps;
}

int model_copy_params(model_t *dst, const model_t *src)
{
    if (!dst || !src || !config_equal(&dst->cfg, &src->cfg) || dst->n_params != src->n_params)
        return -EINVAL;
    if (dst != src)
        memcpy(dst->params, src->params, src->n_params * sizeof(float));
    return 0;
}

const tensor_info_t *model_find_tensor(const model_t *m, const char *name)
{
    if (!m || !name)
        return NULL;
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0)
            return &m->tensors[i];
    return NULL;
}

/* ------------------------------------------------------------- activations */

typedef struct {
    float *x_mid;    /* (T, D) residual after attention */
    float *rstd1;    /* (T) */
    float *xn1;      /* (T, D) attention-norm output */
    float *q;        /* (T, H*hd) after RoPE */
    float *k;        /* (T, KVH*hd) after RoPE */
    float *v;        /* (T, KVH*hd) */
    float *attn_out; /* (T, H*hd) input of o_proj */
    float *rstd2;    /* (T) */
    float *xn2;      /* (T, D) mlp-norm output */
    float *gate;     /* (T, F) */
    float *up;       /* (T, F) */
    float *hmid;     /* (T, F) silu(gate) * up, input of down_proj */
} layer_acts_t;

struct model_acts {
    model_config_t cfg;
    int max_tokens, max_seqs;
    int D, hd, qd, kvd, F, V, np, pp;

    /* The last forward's batch, copied so that backward does not depend on
     * the caller keeping it alive. */
    int ready; /* 1 after a successful forward */
    int T, nseq, n_images;
    int *seq_start; /* (max_seqs+1) */
    int *tokens;    /* (max_tokens) */
    int *pos;       /* (max_tokens) position within its sequence */
    int *img_start; /* (max_tokens/np + 1) first token of image run k */

    float *fbuf; /* one allocation carved into everything below */
    float **xs;  /* (L+1) residual stream; xs[0] = embeddings, xs[L] = last layer output */
    layer_acts_t *layers; /* (L) */
    float *rstd_f; /* (T) */
    float *xn_f;   /* (T, D) */
    float *logits; /* (T, V) */
    float *tmp;    /* (T, D) o_proj / down_proj output before the residual add */
    /* projector, rows = image patches of the batch (at most max_tokens) */
    float *patches; /* (NP, 3*P*P) */
    float *h1;      /* (NP, D) pre-GELU */
    float *h1g;     /* (NP, D) post-GELU */
    float *pout;    /* (NP, D) projector output */
    /* backward scratch, shared by all layers */
    float *dx;    /* (T, D) gradient of the residual stream */
    float *dxn;   /* (T, D) */
    float *dq;    /* (T, H*hd) */
    float *dk;    /* (T, KVH*hd) */
    float *dv;    /* (T, KVH*hd) */
    float *dattn; /* (T, H*hd) */
    float *dgate; /* (T, F) */
    float *dup;   /* (T, F) */
    float *dh;    /* (T, F) */
    float *dh1;   /* (NP, D) */

    /* Attention probabilities (L slices of att_cap floats) and the attention
     * backward scratch live apart from fbuf because their size depends on the
     * sequence lengths; see model_acts_new for how they are sized. */
    float *att;      /* (L, att_cap) */
    size_t att_cap;  /* floats per layer */
    float *att_scratch;
    size_t scratch_cap;
};

/* Worst-case attention storage for any batch of at most max_tokens tokens with
 * no sequence longer than max_len: the kernels' sizes grow at least linearly
 * in each sequence's length (quadratically for the probabilities), so the
 * largest total comes from packing as many max_len sequences as fit plus one
 * remainder; the scratch may instead depend on the longest sequence only,
 * which the same packing also contains. */
static int attention_worst_case(int max_tokens, int max_len, int H, int hd, size_t *att,
                                size_t *scratch)
{
    int len = max_len < max_tokens ? max_len : max_tokens;
    int n = (max_tokens + len - 1) / len;
    int *ss = malloc(((size_t)n + 1) * sizeof *ss);
    if (!ss)
        return -ENOMEM;
    ss[0] = 0;
    for (int s = 0; s < n; s++)
        ss[s + 1] = (ss[s] + len < max_tokens) ? ss[s] + len : max_tokens;
    *att = k_attention_att_size(ss, n, H);
    *scratch = k_attention_scratch_size(ss, n, H, hd);
    /* A single longest sequence, in case scratch is sized per sequence. */
    int one[2] = {0, len};
    size_t s1 = k_attention_scratch_size(one, 1, H, hd);
    if (s1 > *scratch)
        *scratch = s1;
    free(ss);
    return 0;
}

model_acts_t *model_acts_new(const model_t *m, int max_tokens, int max_seqs)
{
    if (!m || max_tokens <= 0 || max_seqs <= 0) {
        log_error("model_acts_new: bad sizes (max_tokens %d, max_seqs %d)", max_tokens, max_seqs);
        return NULL;
    }
    const model_config_t *c = &m->cfg;
    model_acts_t *a = calloc(1, sizeof *a);
    if (!a)
        goto fail;
    a->cfg = *c;
    a->max_tokens = max_tokens;
    a->max_seqs = max_seqs;
    a->D = c->dim;
    a->hd = c->dim / c->n_heads;
    a->qd = c->n_heads * a->hd;
    a->kvd = c->n_kv_heads * a->hd;
    a->F = c->hidden_dim;
    a->V = c->vocab_size;
    a->np = model_n_patches(c);
    a->pp = c->image_size > 0 ? 3 * c->patch_size * c->patch_size : 0;
    int L = c->n_layers;
    size_t T = (size_t)max_tokens;
    size_t max_img = a->np > 0 ? T / (size_t)a->np : 0;

    a->seq_start = malloc(((size_t)max_seqs + 1) * sizeof(int));
    a->tokens = malloc(T * sizeof(int));
    a->pos = malloc(T * sizeof(int));
    a->img_start = malloc((max_img + 1) * sizeof(int));
    a->xs = calloc((size_t)L + 1, sizeof *a->xs);
    a->layers = calloc((size_t)L, sizeof *a->layers);
    if (!a->seq_start || !a->tokens || !a->pos || !a->img_start || !a->xs || !a->layers)
        goto fail;

    size_t D = (size_t)a->D, qd = (size_t)a->qd, kvd = (size_t)a->kvd, F = (size_t)a->F;
    size_t V = (size_t)a->V, pp = (size_t)a->pp;
    size_t NP = a->np > 0 ? T : 0; /* every patch occupies one token slot */
    /* Two passes over the same carving: the first (base NULL) measures. */
    for (int pass = 0; pass < 2; pass++) {
        size_t cur = 0;
#define CARVE(ptr, n)                                                                              \
    do {                                                                                           \
        (ptr) = a->fbuf ? a->fbuf + cur : NULL;                                                    \
        cur = round_up(cur + (n));                                                                 \
    } while (0)
        for (int l = 0; l <= L; l++)
            CARVE(a->xs[l], T * D);
        for (int l = 0; l < L; l++) {
            layer_acts_t *la = &a->layers[l];
            CARVE(la->x_mid, T * D);
            CARVE(la->rstd1, T);
            CARVE(la->xn1, T * D);
            CARVE(la->q, T * qd);
            CARVE(la->k, T * kvd);
            CARVE(la->v, T * kvd);
            CARVE(la->attn_out, T * qd);
            CARVE(la->rstd2, T);
            CARVE(la->xn2, T * D);
            CARVE(la->gate, T * F);
            CARVE(la->up, T * F);
            CARVE(la->hmid, T * F);
        }
        CARVE(a->rstd_f, T);
        CARVE(a->xn_f, T * D);
        CARVE(a->logits, T * V);
        CARVE(a->tmp, T * D);
        CARVE(a->patches, NP * pp);
        CARVE(a->h1, NP * D);
        CARVE(a->h1g, NP * D);
        CARVE(a->pout, NP * D);
        CARVE(a->dx, T * D);
        CARVE(a->dxn, T * D);
        CARVE(a->dq, T * qd);
        CARVE(a->dk, T * kvd);
        CARVE(a->dv, T * kvd);
        CARVE(a->dattn, T * qd);
        CARVE(a->dgate, T * F);
        CARVE(a->dup, T * F);
        CARVE(a->dh, T * F);
        CARVE(a->dh1, NP * D);
#undef CARVE
        if (pass == 0) {
            a->fbuf = alloc_aligned(cur * sizeof(float));
            if (!a->fbuf)
                goto fail;
            /* Zeroed once so that no uninitialised value can ever leak into a
             * result, e.g. through an unused padding float. */
            memset(a->fbuf, 0, cur * sizeof(float));
        }
    }

    /* Attention probabilities: sized for the worst batch allowed by
     * (max_tokens, max_seq_len) — not max_tokens^2 — so that at the training
     * shape (8 x 256 tokens) they cost 8 x 256^2 x H floats per layer instead
     * of 2048^2 x H. Forward still checks each batch and grows (with a log
     * line) if a kernel ever needs more than this bound. */
    if (attention_worst_case(max_tokens, c->max_seq_len, c->n_heads, a->hd, &a->att_cap,
                             &a->scratch_cap) != 0)
        goto fail;
    if (a->att_cap == 0)
        a->att_cap = 1;
    if (a->scratch_cap == 0)
        a->scratch_cap = 1;
    a->att_cap = round_up(a->att_cap);
    a->att = alloc_aligned((size_t)L * a->att_cap * sizeof(float));
    a->att_scratch = alloc_aligned(a->scratch_cap * sizeof(float));
    if (!a->att || !a->att_scratch)
        goto fail;
    return a;
fail:
    log_error("model_acts_new: out of memory (max_tokens %d, max_seqs %d)", max_tokens, max_seqs);
    model_acts_destroy(&a);
    return NULL;
}

void model_acts_destroy(model_acts_t **pa)
{
    if (!pa || !*pa)
        return;
    model_acts_t *a = *pa;
    free(a->seq_start);
    free(a->tokens);
    free(a->pos);
    free(a->img_start);
    free(a->xs);
    free(a->layers);
    free(a->fbuf);
    free(a->att);
    free(a->att_scratch);
    free(a);
    *pa = NULL;
}

/* ---------------------------------------------------------------- forward */

/* Checks the batch and copies what backward needs into a. 0 or -EINVAL with a
 * log line naming the problem. */
static int load_batch(const model_t *m, model_acts_t *a, const model_batch_t *b)
{
    const model_config_t *c = &m->cfg;
    if (!b || !b->tokens || !b->seq_start) {
        log_error("model_forward: batch or its tokens / seq_start is NULL");
        return -EINVAL;
    }
    int T = b->n_tokens, n = b->n_seqs;
    if (T <= 0 || T > a->max_tokens) {
        log_error("model_forward: n_tokens %d outside [1, %d] (max_tokens of the activations)",
                  T, a->max_tokens);
        return -EINVAL;
    }
    if (n <= 0 || n > a->max_seqs) {
        log_error("model_forward: n_seqs %d outside [1, %d] (max_seqs of the activations)", n,
                  a->max_seqs);
        return -EINVAL;
    }
    if (b->seq_start[0] != 0 || b->seq_start[n] != T) {
        log_error("model_forward: seq_start[0] = %d and seq_start[%d] = %d, want 0 and n_tokens %d",
                  b->seq_start[0], n, b->seq_start[n], T);
        return -EINVAL;
    }
    for (int s = 0; s < n; s++) {
        int len = b->seq_start[s + 1] - b->seq_start[s];
        if (len <= 0) {
            log_error("model_forward: seq_start not strictly increasing at sequence %d (%d -> %d)",
                      s, b->seq_start[s], b->seq_start[s + 1]);
            return -EINVAL;
        }
        if (len > c->max_seq_len) {
            log_error("model_forward: sequence %d has %d tokens, longer than max_seq_len %d", s,
                      len, c->max_seq_len);
            return -EINVAL;
        }
    }
    if (b->n_images < 0 || (b->n_images > 0 && !b->images)) {
        log_error("model_forward: n_images %d with images %s", b->n_images,
                  b->images ? "set" : "NULL");
        return -EINVAL;
    }
    int runs = 0;
    for (int s = 0; s < n; s++) {
        int t = b->seq_start[s], end = b->seq_start[s + 1];
        while (t < end) {
            int tok = b->tokens[t];
            if (tok != MODEL_IMAGE_SLOT) {
                if (tok < 0 || tok >= c->vocab_size) {
                    log_error("model_forward: token %d at position %d is outside [0, %d)", tok, t,
                              c->vocab_size);
                    return -EINVAL;
                }
                t++;
                continue;
            }
            if (a->np == 0) {
                log_error("model_forward: image slot at position %d but the model is text-only",
                          t);
                return -EINVAL;
            }
            int r = t;
            while (r < end && b->tokens[r] == MODEL_IMAGE_SLOT)
                r++;
            if (r - t != a->np) {
                log_error("model_forward: image-slot run at positions %d..%d of sequence %d has %d "
                          "slots, want exactly n_patches = %d",
                          t, r - 1, s, r - t, a->np);
                return -EINVAL;
            }
            if (runs >= b->n_images) {
                log_error("model_forward: image-slot run %d at position %d but only %d image(s) "
                          "given",
                          runs, t, b->n_images);
                return -EINVAL;
            }
            a->img_start[runs++] = t;
            t = r;
        }
    }
    if (runs != b->n_images) {
        log_error("model_forward: %d image(s) given but the tokens hold %d image-slot run(s)",
                  b->n_images, runs);
        return -EINVAL;
    }
    a->T = T;
    a->nseq = n;
    a->n_images = runs;
    memcpy(a->seq_start, b->seq_start, ((size_t)n + 1) * sizeof(int));
    memcpy(a->tokens, b->tokens, (size_t)T * sizeof(int));
    for (int s = 0; s < n; s++)
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++)
            a->pos[t] = t - b->seq_start[s];
    return 0;
}

/* Cuts image k (3, S, S) into its patches: patch p = py*G + px in row-major
 * order, each flattened channel-major (c, iy, ix) — the order of a Conv2d
 * weight (D, 3, P, P), so a conv patch-embedding checkpoint maps onto
 * mm_projector.0 by a reshape. */
void model_extract_patches(float *out, const float *img, int S, int P)
{
    int G = S / P;
    size_t pp = 3 * (size_t)P * P;
    for (int py = 0; py < G; py++)
        for (int px = 0; px < G; px++) {
            float *dst = out + ((size_t)py * G + px) * pp;
            for (int c = 0; c < 3; c++)
                for (int iy = 0; iy < P; iy++) {
                    const float *src = img + ((size_t)c * S + (size_t)py * P + iy) * S + (size_t)px * P;
                    float *d = dst + ((size_t)c * P + iy) * P;
                    for (int ix = 0; ix < P; ix++)
                        d[ix] = (src[ix] - MODEL_PIXEL_MEAN) * MODEL_PIXEL_SCALE;
                }
        }
}

static int grow(float **buf, size_t *cap, size_t need, size_t copies, const char *what)
{
    if (need <= *cap)
        return 0;
    log_warn("model: growing %s from %zu to %zu floats (batch exceeds the precomputed bound)",
             what, *cap, need);
    float *p = alloc_aligned(round_up(need) * copies * sizeof(float));
    if (!p) {
        log_error("model: out of memory growing %s to %zu floats", what, need);
        return -ENOMEM;
    }
    free(*buf);
    *buf = p;
    *cap = round_up(need);
    return 0;
}

float *model_forward(const model_t *m, model_acts_t *a, const model_batch_t *b)
{
    if (!m || !a) {
        log_error("model_forward: model or activations NULL");
        return NULL;
    }
    if (!config_equal(&m->cfg, &a->cfg)) {
        log_error("model_forward: activations were made for a different model config");
        return NULL;
    }
    a->ready = 0;
    if (load_batch(m, a, b) != 0)
        return NULL;
    const model_config_t *c = &m->cfg;
    const model_weights_t *w = &m->w;
    int T = a->T, D = a->D, F = a->F, V = a->V, H = c->n_heads, KVH = c->n_kv_heads;
    int hd = a->hd, qd = a->qd, kvd = a->kvd, L = c->n_layers;
    size_t TD = (size_t)T * D;

    size_t need = k_attention_att_size(a->seq_start, a->nseq, H);
    if (grow(&a->att, &a->att_cap, need, (size_t)L, "attention probabilities") != 0)
        return NULL;

    /* Embeddings: text runs from the table, image runs from the projector. */
    float *x0 = a->xs[0];
    int NP = a->n_images * a->np;
    if (NP > 0) {
        int S = c->image_size, P = c->patch_size;
        size_t img_n = 3 * (size_t)S * S;
        for (int k = 0; k < a->n_images; k++)
            model_extract_patches(a->patches + (size_t)k * a->np * a->pp, b->images + k * img_n, S, P);
        k_matmul_fwd(a->h1, a->patches, w->proj_w1, w->proj_b1, NP, a->pp, D);
        k_gelu_fwd(a->h1g, a->h1, (size_t)NP * D);
        k_matmul_fwd(a->pout, a->h1g, w->proj_w2, w->proj_b2, NP, D, D);
        for (int k = 0; k < a->n_images; k++)
            k_add(a->pout + (size_t)k * a->np * D, a->pout + (size_t)k * a->np * D, w->proj_pos,
                  (size_t)a->np * D);
    }
    for (int t = 0, k = 0; t < T;) {
        if (k < a->n_images && t == a->img_start[k]) {
            memcpy(x0 + (size_t)t * D, a->pout + (size_t)k * a->np * D,
                   (size_t)a->np * D * sizeof(float));
            t += a->np;
            k++;
            continue;
        }
        int end = k < a->n_images ? a->img_start[k] : T;
        k_embed_fwd(x0 + (size_t)t * D, w->embed, a->tokens + t, end - t, D);
        t = end;
    }

    for (int l = 0; l < L; l++) {
        const layer_weights_t *lw = &w->layers[l];
        layer_acts_t *la = &a->layers[l];
        float *x_in = a->xs[l], *x_out = a->xs[l + 1];
        float *att = a->att + (size_t)l * a->att_cap;

        k_rmsnorm_fwd(la->xn1, la->rstd1, x_in, lw->attn_norm, T, D, c->norm_eps);
        k_matmul_fwd(la->q, la->xn1, lw->wq, NULL, T, D, qd);
        k_matmul_fwd(la->k, la->xn1, lw->wk, NULL, T, D, kvd);
        k_matmul_fwd(la->v, la->xn1, lw->wv, NULL, T, D, kvd);
        k_rope_fwd(la->q, a->pos, m->rope_cos, m->rope_sin, T, H, hd);
        k_rope_fwd(la->k, a->pos, m->rope_cos, m->rope_sin, T, KVH, hd);
        k_attention_fwd(la->attn_out, att, la->q, la->k, la->v, a->seq_start, a->nseq, H, KVH, hd);
        k_matmul_fwd(a->tmp, la->attn_out, lw->wo, NULL, T, qd, D);
        k_add(la->x_mid, x_in, a->tmp, TD);

        k_rmsnorm_fwd(la->xn2, la->rstd2, la->x_mid, lw->mlp_norm, T, D, c->norm_eps);
        k_matmul_fwd(la->gate, la->xn2, lw->w_gate, NULL, T, D, F);
        k_matmul_fwd(la->up, la->xn2, lw->w_up, NULL, T, D, F);
        k_swiglu_fwd(la->hmid, la->gate, la->up, (size_t)T * F);
        k_matmul_fwd(a->tmp, la->hmid, lw->w_down, NULL, T, F, D);
        k_add(x_out, la->x_mid, a->tmp, TD);
    }
    k_rmsnorm_fwd(a->xn_f, a->rstd_f, a->xs[L], w->final_norm, T, D, c->norm_eps);
    k_matmul_fwd(a->logits, a->xn_f, w->lm_head, NULL, T, D, V);
    a->ready = 1;
    return a->logits;
}

/* --------------------------------------------------------------- backward */

int model_backward(model_t *m, model_acts_t *a, const float *dlogits)
{
    if (!m || !a || !dlogits)
        return -EINVAL;
    if (!m->grads) {
        log_error("model_backward: model was created without gradients");
        return -EINVAL;
    }
    if (!config_equal(&m->cfg, &a->cfg)) {
        log_error("model_backward: activations were made for a different model config");
        return -EINVAL;
    }
    if (!a->ready) {
        log_error("model_backward: no successful forward to differentiate");
        return -EINVAL;
    }
    const model_config_t *c = &m->cfg;
    const model_weights_t *w = &m->w;
    const model_weights_t *g = &m->g;
    int T = a->T, D = a->D, F = a->F, V = a->V, H = c->n_heads, KVH = c->n_kv_heads;
    int hd = a->hd, qd = a->qd, kvd = a->kvd, L = c->n_layers;
    size_t TD = (size_t)T * D, TF = (size_t)T * F;

    size_t need = k_attention_scratch_size(a->seq_start, a->nseq, H, hd);
    if (grow(&a->att_scratch, &a->scratch_cap, need, 1, "attention backward scratch") != 0)
        return -ENOMEM;

    /* Head and final norm. The kernels accumulate, so every d-input is
     * zeroed before the kernel that produces it. */
    memset(a->dxn, 0, TD * sizeof(float));
    k_matmul_bwd(a->dxn, g->lm_head, NULL, dlogits, a->xn_f, w->lm_head, T, D, V);
    memset(a->dx, 0, TD * sizeof(float));
    k_rmsnorm_bwd(a->dx, g->final_norm, a->dxn, a->xs[L], w->final_norm, a->rstd_f, T, D);

    for (int l = L - 1; l >= 0; l--) {
        const layer_weights_t *lw = &w->layers[l];
        const layer_weights_t *lg = &g->layers[l];
        layer_acts_t *la = &a->layers[l];
        const float *att = a->att + (size_t)l * a->att_cap;

        /* MLP: dx holds d(x_out); afterwards it holds d(x_mid). */
        memset(a->dh, 0, TF * sizeof(float));
        k_matmul_bwd(a->dh, lg->w_down, NULL, a->dx, la->hmid, lw->w_down, T, F, D);
        memset(a->dgate, 0, TF * sizeof(float));
        memset(a->dup, 0, TF * sizeof(float));
        k_swiglu_bwd(a->dgate, a->dup, a->dh, la->gate, la->up, TF);
        memset(a->dxn, 0, TD * sizeof(float));
        k_matmul_bwd(a->dxn, lg->w_gate, NULL, a->dgate, la->xn2, lw->w_gate, T, D, F);
        k_matmul_bwd(a->dxn, lg->w_up, NULL, a->dup, la->xn2, lw->w_up, T, D, F);
        k_rmsnorm_bwd(a->dx, lg->mlp_norm, a->dxn, la->x_mid, lw->mlp_norm, la->rstd2, T, D);

        /* Attention: dx holds d(x_mid); afterwards d(x_in). */
        memset(a->dattn, 0, (size_t)T * qd * sizeof(float));
        k_matmul_bwd(a->dattn, lg->wo, NULL, a->dx, la->attn_out, lw->wo, T, qd, D);
        memset(a->dq, 0, (size_t)T * qd * sizeof(float));
        memset(a->dk, 0, (size_t)T * kvd * sizeof(float));
        memset(a->dv, 0, (size_t)T * kvd * sizeof(float));
        k_attention_bwd(a->dq, a->dk, a->dv, a->dattn, att, la->q, la->k, la->v, a->seq_start,
                        a->nseq, H, KVH, hd, a->att_scratch);
        k_rope_bwd(a->dq, a->pos, m->rope_cos, m->rope_sin, T, H, hd);
        k_rope_bwd(a->dk, a->pos, m->rope_cos, m->rope_sin, T, KVH, hd);
        memset(a->dxn, 0, TD * sizeof(float));
        k_matmul_bwd(a->dxn, lg->wq, NULL, a->dq, la->xn1, lw->wq, T, D, qd);
        k_matmul_bwd(a->dxn, lg->wk, NULL, a->dk, la->xn1, lw->wk, T, D, kvd);
        k_matmul_bwd(a->dxn, lg->wv, NULL, a->dv, la->xn1, lw->wv, T, D, kvd);
        k_rmsnorm_bwd(a->dx, lg->attn_norm, a->dxn, a->xs[l], lw->attn_norm, la->rstd1, T, D);
    }

    /* dx = d(embeddings): text runs into the table, image runs into the
     * projector (gathered into dxn, reused as d(pout)). */
    float *dpout = a->dxn;
    for (int t = 0, k = 0; t < T;) {
        if (k < a->n_images && t == a->img_start[k]) {
            memcpy(dpout + (size_t)k * a->np * D, a->dx + (size_t)t * D,
                   (size_t)a->np * D * sizeof(float));
            t += a->np;
            k++;
            continue;
        }
        int end = k < a->n_images ? a->img_start[k] : T;
        k_embed_bwd(g->embed, a->dx + (size_t)t * D, a->tokens + t, end - t, D);
        t = end;
    }
    int NP = a->n_images * a->np;
    if (NP > 0) {
        size_t ND = (size_t)NP * D;
        /* d(h1g) goes into dx (free now), d(h1) into dh1. */
        float *dh1g = a->dx;
        for (int k = 0; k < a->n_images; k++)
            k_add(g->proj_pos, g->proj_pos, dpout + (size_t)k * a->np * D, (size_t)a->np * D);
        memset(dh1g, 0, ND * sizeof(float));
        k_matmul_bwd(dh1g, g->proj_w2, g->proj_b2, dpout, a->h1g, w->proj_w2, NP, D, D);
        memset(a->dh1, 0, ND * sizeof(float));
        k_gelu_bwd(a->dh1, dh1g, a->h1, ND);
        k_matmul_bwd(NULL, g->proj_w1, g->proj_b1, a->dh1, a->patches, w->proj_w1, NP, a->pp, D);
    }
    return 0;
}
