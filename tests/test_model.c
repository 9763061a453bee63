#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "model.h"
#include "optim.h"
#include "rng.h"

#define IMG MODEL_IMAGE_SLOT

static model_config_t tiny_config(int kvh, int tied)
{
    model_config_t c = {
        .vocab_size = 11,
        .dim = 8,
        .n_layers = 2,
        .n_heads = 2,
        .n_kv_heads = kvh,
        .hidden_dim = 12,
        .max_seq_len = 16,
        .image_size = 4,
        .patch_size = 2,
        .tie_embeddings = tied,
        .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
    return c;
}

/* Larger-than-standard random values so that every nonlinearity (GELU,
 * SiLU, softmax, RMSNorm) is exercised away from its linear regime. */
static void init_for_gradcheck(model_t *m, rng_t *r)
{
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        float *p = m->params + t->offset;
        for (size_t j = 0; j < t->numel; j++) {
            if (t->ndim == 2)
                p[j] = 0.4f * rng_normal(r);
            else if (strstr(t->name, "bias"))
                p[j] = 0.2f * rng_normal(r);
            else
                p[j] = 1.0f + 0.2f * rng_normal(r);
        }
    }
}

static void random_images(float *img, int n, int S, rng_t *r)
{
    for (size_t i = 0; i < (size_t)n * 3 * S * S; i++)
        img[i] = rng_uniform(r);
}

static double weighted_sum(const float *logits, const float *R, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)logits[i] * R[i];
    return s;
}

/* Gradient of L = sum(logits * R) against central differences, for a random
 * sample of entries of EVERY tensor.
 * Numeric derivative: central differences at steps 1e-2 and 5e-3 combined
 * by Richardson extrapolation (float32 forward, loss summed in double; the
 * plain 1e-2 difference is off by up to ~5% where RMSNorm meets a small
 * projector output). Tolerance: |num - ana| <= 2e-2 * max(|num|, |ana|) + 2e-3
 * (the absolute floor covers float32 rounding of the loss, ~1e-5 / eps). */
static void gradcheck(model_config_t cfg, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    model_t *m = model_new(&cfg, 1);
    cr_assert_not_null(m);
    init_for_gradcheck(m, &r);
    model_acts_t *a = model_acts_new(m, 32, 4);
    cr_assert_not_null(a);

    /* Two packed sequences, each with an image run (n_patches = 4). */
    int tokens[] = {3, IMG, IMG, IMG, IMG, 5, 7, 2, IMG, IMG, IMG, IMG, 9, 1, 4};
    int seq_start[] = {0, 7, 15};
    int T = 15, V = cfg.vocab_size;
    float images[2 * 3 * 4 * 4];
    random_images(images, 2, 4, &r);
    model_batch_t b = {.n_tokens = T, .n_seqs = 2, .seq_start = seq_start, .tokens = tokens,
                       .n_images = 2, .images = images};
    size_t TV = (size_t)T * V;
    float *R = malloc(TV * sizeof(float));
    float *dl = malloc(TV * sizeof(float));
    for (size_t i = 0; i < TV; i++)
        R[i] = rng_normal(&r);

    float *logits = model_forward(m, a, &b);
    cr_assert_not_null(logits);
    memcpy(dl, R, TV * sizeof(float));
    model_zero_grads(m);
    cr_assert_eq(model_backward(m, a, dl), 0);

    const float eps = 1e-2f;
    double worst = 0;
    const char *worst_name = "";
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const tensor_info_t *t = &m->tensors[ti];
        int n_check = t->numel < 6 ? (int)t->numel : 6;
        for (int s = 0; s < n_check; s++) {
            size_t j = rng_below(&r, (uint32_t)t->numel);
            float *p = m->params + t->offset + j;
            float saved = *p;
            double d[2];
            for (int k = 0; k < 2; k++) {
                float h = k == 0 ? eps : eps / 2;
                *p = saved + h;
                double lp = weighted_sum(model_forward(m, a, &b), R, TV);
                *p = saved - h;
                double lm = weighted_sum(model_forward(m, a, &b), R, TV);
                *p = saved;
                d[k] = (lp - lm) / (2.0 * h);
            }
            /* Richardson extrapolation cancels the O(eps^2) truncation term. */
            double num = (4.0 * d[1] - d[0]) / 3.0;
            double ana = m->grads[t->offset + j];
            double tol = 2e-2 * fmax(fabs(num), fabs(ana)) + 2e-3;
            double err = fabs(num - ana);
            if (err / tol > worst) {
                worst = err / tol;
                worst_name = t->name;
            }
            cr_assert(err <= tol, "%s[%zu]: analytic %.6g, numeric %.6g (err %.3g > tol %.3g)",
                      t->name, j, ana, num, err, tol);
        }
    }
    cr_log_info("gradcheck: worst err/tol %.3f (%s)", worst, worst_name);
    free(R);
    free(dl);
    model_acts_destroy(&a);
    model_destroy(&m);
}

Test(model, gradient_matches_finite_differences_gqa)
{
    gradcheck(tiny_config(1, 0), 11);
}

Test(model, gradient_matches_finite_differences_mha_tied)
{
    gradcheck(tiny_config(2, 1), 12);
}

Test(model, tensor_table_names_layout_and_decay)
{
    model_config_t c = tiny_config(1, 0);
    model_t *m = model_new(&c, 1);
    cr_assert_not_null(m);
    const char *want[] = {"mm_projector.0.weight", "mm_projector.0.bias", "mm_projector.2.weight",
                          "mm_projector.2.bias", "mm_projector.pos_embed",
                          "model.embed_tokens.weight",
                          "model.layers.0.input_layernorm.weight",
                          "model.layers.0.self_attn.q_proj.weight",
                          "model.layers.0.self_attn.k_proj.weight",
                          "model.layers.0.self_attn.v_proj.weight",
                          "model.layers.0.self_attn.o_proj.weight",
                          "model.layers.0.post_attention_layernorm.weight",
                          "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                          "model.layers.0.mlp.down_proj.weight"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        cr_assert_str_eq(m->tensors[i].name, want[i]);
    cr_assert_eq(m->n_tensors, 5 + 1 + 2 * 9 + 1 + 1);
    cr_assert_str_eq(m->tensors[m->n_tensors - 1].name, "lm_head.weight");
    size_t end = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        cr_assert_eq(t->offset % 16, 0, "%s offset %zu not 16-float aligned", t->name, t->offset);
        cr_assert(t->offset >= end, "%s overlaps the previous tensor", t->name);
        end = t->offset + t->numel;
        int want_decay = t->ndim == 2;
        cr_assert_eq(t->decay, want_decay, "%s decay %d, want %d", t->name, t->decay, want_decay);
        cr_assert_eq(model_find_tensor(m, t->name), t);
    }
    cr_assert(end <= m->n_params);
    const tensor_info_t *k = model_find_tensor(m, "model.layers.1.self_attn.k_proj.weight");
    cr_assert_not_null(k);
    cr_assert_eq(k->shape[0], 4, "k_proj rows %d, want KVH*hd = 4", k->shape[0]);
    cr_assert_eq(k->shape[1], 8);
    cr_assert_eq(m->w.layers[1].wk, m->params + k->offset);
    cr_assert_eq(m->g.layers[1].wk, m->grads + k->offset);
    const tensor_info_t *p1 = model_find_tensor(m, "mm_projector.0.weight");
    cr_assert_eq(p1->shape[0], 8);
    cr_assert_eq(p1->shape[1], 12);
    cr_assert_null(model_find_tensor(m, "nope"));
    model_destroy(&m);
    cr_assert_null(m);

    /* Tied, text-only, inference-only: no lm_head, no projector, no grads. */
    c.tie_embeddings = 1;
    c.image_size = 0;
    m = model_new(&c, 0);
    cr_assert_not_null(m);
    cr_assert_null(model_find_tensor(m, "lm_head.weight"));
    cr_assert_null(model_find_tensor(m, "mm_projector.0.weight"));
    cr_assert_eq(m->w.lm_head, m->w.embed);
    cr_assert_null(m->grads);
    cr_assert_null(m->w.proj_w1);
    cr_assert_eq(model_n_patches(&c), 0);
    model_destroy(&m);
    model_destroy(&m); /* destroying NULL is a no-op */
}

Test(model, config_validation_names_the_field)
{
    char err[160];
    model_config_t c = tiny_config(2, 0);
    cr_assert_eq(model_config_validate(&c, err, sizeof err), 0);
    c.n_kv_heads = 3;
    cr_assert_neq(model_config_validate(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "n_kv_heads"), "message: %s", err);
    c = tiny_config(2, 0);
    c.patch_size = 3;
    cr_assert_neq(model_config_validate(&c, err, sizeof err), 0);
    cr_assert(strstr(err, "patch_size"), "message: %s", err);
    c = tiny_config(2, 0);
    c.dim = 6; /* hd = 3, odd: RoPE impossible */
    cr_assert_neq(model_config_validate(&c, err, sizeof err), 0);
    cr_assert_null(model_new(&c, 1));
}

/* Runs a batch and returns a malloc'd copy of its logits. */
static float *run_copy(const model_t *m, model_acts_t *a, const model_batch_t *b)
{
    float *l = model_forward(m, a, b);
    cr_assert_not_null(l);
    size_t n = (size_t)b->n_tokens * m->cfg.vocab_size;
    float *out = malloc(n * sizeof(float));
    memcpy(out, l, n * sizeof(float));
    return out;
}

static void check_packing(const model_config_t *cfg, int with_images)
{
    rng_t r;
    rng_seed(&r, 21);
    model_t *m = model_new(cfg, 0);
    cr_assert_not_null(m);
    init_for_gradcheck(m, &r);
    model_acts_t *a = model_acts_new(m, 32, 4);
    cr_assert_not_null(a);
    int S = cfg->image_size, V = cfg->vocab_size;
    float images[2 * 3 * 4 * 4];
    if (with_images)
        random_images(images, 2, S, &r);
    int ta[] = {3, IMG, IMG, IMG, IMG, 5, 7};
    int tb[] = {2, IMG, IMG, IMG, IMG, 9, 1, 4, 4};
    int na = 7, nb = 9;
    if (!with_images) {
        for (int i = 0; i < na; i++)
            if (ta[i] == IMG)
                ta[i] = 6;
        for (int i = 0; i < nb; i++)
            if (tb[i] == IMG)
                tb[i] = 8;
    }
    int packed[16];
    memcpy(packed, ta, sizeof ta);
    memcpy(packed + na, tb, sizeof tb);
    int ss_pack[] = {0, na, na + nb}, ss_a[] = {0, na}, ss_b[] = {0, nb};
    int nimg = with_images ? 1 : 0;
    model_batch_t bp = {na + nb, 2, ss_pack, packed, 2 * nimg, with_images ? images : NULL};
    model_batch_t ba = {na, 1, ss_a, ta, nimg, with_images ? images : NULL};
    model_batch_t bb = {nb, 1, ss_b, tb, nimg, with_images ? images + 3 * S * S : NULL};
    float *lp = run_copy(m, a, &bp);
    float *la = run_copy(m, a, &ba);
    float *lb = run_copy(m, a, &bb);
    /* Tolerance 1e-5 absolute: only BLAS blocking differs between runs. */
    for (int t = 0; t < na + nb; t++)
        for (int v = 0; v < V; v++) {
            float want = t < na ? la[t * V + v] : lb[(t - na) * V + v];
            float got = lp[t * V + v];
            cr_assert(fabsf(want - got) <= 1e-5f, "token %d logit %d: alone %.7g, packed %.7g", t,
                      v, want, got);
        }
    /* And the sequences really differ (so the check is not vacuous). */
    cr_assert(fabsf(la[0] - lb[0]) > 1e-4f);
    free(lp);
    free(la);
    free(lb);
    model_acts_destroy(&a);
    model_destroy(&m);
}

Test(model, packed_sequences_match_separate_runs_with_images)
{
    model_config_t c = tiny_config(1, 0);
    check_packing(&c, 1);
}

Test(model, packed_sequences_match_separate_runs_text_only)
{
    model_config_t c = tiny_config(2, 1);
    check_packing(&c, 0);
    c.image_size = 0; /* text-only model (no projector at all) */
    check_packing(&c, 0);
}

Test(model, malformed_batches_return_null)
{
    model_config_t c = tiny_config(1, 0);
    c.max_seq_len = 10;
    model_t *m = model_new(&c, 1);
    cr_assert_not_null(m);
    rng_t r;
    rng_seed(&r, 3);
    model_init_random(m, &r);
    model_acts_t *a = model_acts_new(m, 16, 2);
    cr_assert_not_null(a);
    float images[2 * 3 * 4 * 4];
    random_images(images, 2, 4, &r);
    int good[] = {3, IMG, IMG, IMG, IMG, 5};
    int ss[] = {0, 6};
    model_batch_t b = {6, 1, ss, good, 1, images};
    cr_assert_not_null(model_forward(m, a, &b), "the well-formed batch must run");

    int bad_tok[] = {3, IMG, IMG, IMG, IMG, 11};
    b.tokens = bad_tok;
    cr_assert_null(model_forward(m, a, &b), "token == vocab_size accepted");
    cr_assert_neq(model_backward(m, a, m->params), 0, "backward after a failed forward");
    int neg_tok[] = {3, IMG, IMG, IMG, IMG, -2};
    b.tokens = neg_tok;
    cr_assert_null(model_forward(m, a, &b), "token -2 accepted");
    int short_run[] = {3, IMG, IMG, IMG, 4, 5};
    b.tokens = short_run;
    cr_assert_null(model_forward(m, a, &b), "image run of 3 slots accepted");
    int long_run[] = {3, IMG, IMG, IMG, IMG, IMG};
    b.tokens = long_run;
    cr_assert_null(model_forward(m, a, &b), "image run of 5 slots accepted");
    b.tokens = good;
    b.n_images = 2;
    cr_assert_null(model_forward(m, a, &b), "2 images for 1 run accepted");
    b.n_images = 1;
    b.images = NULL;
    cr_assert_null(model_forward(m, a, &b), "NULL images accepted");
    b.images = images;

    /* Image run split across a sequence boundary. */
    int split[] = {3, IMG, IMG, IMG, IMG, 5};
    int ss_split[] = {0, 3, 6};
    model_batch_t bs = {6, 2, ss_split, split, 1, images};
    cr_assert_null(model_forward(m, a, &bs), "image run split by a sequence boundary accepted");

    /* Sequence longer than max_seq_len (10), within max_tokens (16). */
    int longseq[11] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1};
    int ss_long[] = {0, 11};
    model_batch_t bl = {11, 1, ss_long, longseq, 0, NULL};
    cr_assert_null(model_forward(m, a, &bl), "sequence of 11 > max_seq_len 10 accepted");
    /* More tokens than the activations hold. */
    int many[17] = {0};
    int ss_many[] = {0, 8, 17};
    model_batch_t bm = {17, 2, ss_many, many, 0, NULL};
    cr_assert_null(model_forward(m, a, &bm), "17 tokens > max_tokens 16 accepted");
    /* seq_start not ending at n_tokens; not increasing; too many sequences. */
    int ss_bad[] = {0, 5};
    model_batch_t bbad = {6, 1, ss_bad, good, 1, images};
    cr_assert_null(model_forward(m, a, &bbad), "seq_start[n] != n_tokens accepted");
    int ss_dec[] = {0, 6, 6};
    model_batch_t bdec = {6, 2, ss_dec, good, 1, images};
    cr_assert_null(model_forward(m, a, &bdec), "empty sequence accepted");
    int ss3[] = {0, 1, 2, 6};
    int three[] = {1, 2, 3, 4, 5, 6};
    model_batch_t b3 = {6, 3, ss3, three, 0, NULL};
    cr_assert_null(model_forward(m, a, &b3), "3 sequences > max_seqs 2 accepted");
    cr_assert_null(model_forward(m, a, NULL));

    /* Image slots in a text-only model. */
    model_config_t ct = c;
    ct.image_size = 0;
    model_t *mt = model_new(&ct, 0);
    model_acts_t *at = model_acts_new(mt, 16, 2);
    cr_assert_not_null(at);
    cr_assert_null(model_forward(mt, at, &b), "image slots accepted by a text-only model");
    /* Activations of another config. */
    cr_assert_null(model_forward(m, at, &b), "activations of another config accepted");
    model_acts_destroy(&at);
    model_destroy(&mt);

    model_acts_destroy(&a);
    model_destroy(&m);
}

/* Four random images, one shared text prompt, a distinct 3-token caption per
 * image: only the image tells which caption to produce, so reaching ~0 loss
 * proves the projector output reaches the decoder. Stated budget: loss (mean
 * caption-token cross-entropy) < 0.05 within 400 AdamW steps (lr 3e-3, no
 * decay, clip 1.0); with seed 7 it gets there in 65. */
Test(model, overfits_image_captions)
{
    model_config_t c = {
        .vocab_size = 16, .dim = 32, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
        .hidden_dim = 64, .max_seq_len = 32, .image_size = 8, .patch_size = 4,
        .tie_embeddings = 0, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
    };
    rng_t r;
    rng_seed(&r, 7);
    model_t *m = model_new(&c, 1);
    cr_assert_not_null(m);
    model_init_random(m, &r);
    enum { N = 4, LEN = 13 };
    float images[N * 3 * 8 * 8];
    random_images(images, N, 8, &r);
    int tokens[N * LEN], targets[N * LEN], ss[N + 1];
    int n_target = 0;
    for (int k = 0; k < N; k++) {
        int cap[3] = {6 + k, 10 + k, 6 + (k + 2) % 4};
        int seq[LEN] = {1, 2, IMG, IMG, IMG, IMG, 3, 4, 5, cap[0], cap[1], cap[2], 15};
        ss[k] = k * LEN;
        for (int i = 0; i < LEN; i++) {
            tokens[k * LEN + i] = seq[i];
            /* Predict the caption and the end token from the prompt's last token on. */
            targets[k * LEN + i] = (i >= 8 && i < LEN - 1) ? seq[i + 1] : -1;
            n_target += targets[k * LEN + i] >= 0;
        }
    }
    ss[N] = N * LEN;
    model_batch_t b = {N * LEN, N, ss, tokens, N, images};
    model_acts_t *a = model_acts_new(m, N * LEN, N);
    cr_assert_not_null(a);
    adamw_config_t oc = adamw_config_default();
    oc.lr = 3e-3f;
    oc.weight_decay = 0.0f;
    adamw_t *opt = adamw_new(m, &oc);
    cr_assert_not_null(opt);
    float logp[N * LEN], dlogp[N * LEN];
    for (int i = 0; i < N * LEN; i++)
        dlogp[i] = -1.0f / n_target;
    double loss = 1e9;
    int step;
    for (step = 0; step < 400; step++) {
        float *logits = model_forward(m, a, &b);
        cr_assert_not_null(logits);
        k_logprobs_fwd(logp, NULL, logits, targets, N * LEN, c.vocab_size, 1.0f);
        loss = 0;
        for (int i = 0; i < N * LEN; i++)
            loss -= logp[i];
        loss /= n_target;
        if (loss < 0.05)
            break;
        k_logprobs_bwd(logits, dlogp, logits, targets, N * LEN, c.vocab_size, 1.0f);
        model_zero_grads(m);
        cr_assert_eq(model_backward(m, a, logits), 0);
        float gn = adamw_step(opt, m);
        cr_assert(isfinite(gn));
    }
    cr_log_info("overfit: loss %.4f after %d steps", loss, step);
    cr_assert(loss < 0.05, "caption loss %.4f after %d steps, want < 0.05", loss, step);
    adamw_destroy(&opt);
    model_acts_destroy(&a);
    model_destroy(&m);
}

Test(model, copy_params_and_init)
{
    model_config_t c = tiny_config(1, 0);
    model_t *a = model_new(&c, 0), *b = model_new(&c, 1);
    rng_t r;
    rng_seed(&r, 1);
    model_init_random(a, &r);
    cr_assert_eq(a->w.final_norm[0], 1.0f);
    cr_assert_eq(a->w.proj_b1[0], 0.0f);
    double s2 = 0;
    const tensor_info_t *e = model_find_tensor(a, "model.embed_tokens.weight");
    for (size_t i = 0; i < e->numel; i++)
        s2 += (double)a->params[e->offset + i] * a->params[e->offset + i];
    double sd = sqrt(s2 / e->numel);
    cr_assert(sd > 0.014 && sd < 0.026, "embedding std %.4f, want ~0.02", sd);
    cr_assert_eq(model_copy_params(b, a), 0);
    cr_assert_eq(memcmp(a->params, b->params, a->n_params * sizeof(float)), 0);
    model_config_t c2 = tiny_config(2, 0);
    model_t *d = model_new(&c2, 0);
    cr_assert_eq(model_copy_params(d, a), -EINVAL);
    model_destroy(&a);
    model_destroy(&b);
    model_destroy(&d);
}

/* ---- independent oracle: the same model written in PyTorch (float64) ----
 * Checks the conventions a finite-difference test cannot see: Hugging Face
 * rotate_half RoPE, GQA head mapping (head h uses kv head h / (H/KVH)),
 * exact GELU, channel-major patch flattening, SwiGLU order, RMSNorm. */
static const char *torch_oracle_py =
    "import json, sys, torch\n"
    "import torch.nn.functional as F\n"
    "torch.set_default_dtype(torch.float64)\n"
    "def load(path):\n"
    "    with open(path, 'rb') as f:\n"
    "        return torch.frombuffer(bytearray(f.read()), dtype=torch.float32).double()\n"
    "for d in sys.argv[1:]:\n"
    "    meta = json.load(open(d + '/meta.json'))\n"
    "    c = meta['config']\n"
    "    flat = load(d + '/params.bin')\n"
    "    P = {}\n"
    "    for t in meta['tensors']:\n"
    "        P[t['name']] = flat[t['offset']:t['offset'] + t['numel']].reshape(t['shape']).clone().requires_grad_()\n"
    "    D, H, KVH, V = c['dim'], c['n_heads'], c['n_kv_heads'], c['vocab_size']\n"
    "    hd = D // H; S = c['image_size']; p = c['patch_size']\n"
    "    tokens, ss = meta['tokens'], meta['seq_start']\n"
    "    T = len(tokens)\n"
    "    imgs = load(d + '/images.bin').reshape(-1, 3, S, S) if meta['n_images'] else None\n"
    "    rows, k, t = [], 0, 0\n"
    "    while t < T:\n"
    "        if tokens[t] == -1:\n"
    "            G = S // p\n"
    "            x = imgs[k].reshape(3, G, p, G, p).permute(1, 3, 0, 2, 4).reshape(G * G, 3 * p * p)\n"
    "            x = (x - 0.5) * 4.0\n"
    "            h = F.gelu(F.linear(x, P['mm_projector.0.weight'], P['mm_projector.0.bias']))\n"
    "            h = F.linear(h, P['mm_projector.2.weight'], P['mm_projector.2.bias'])\n"
    "            h = h + P['mm_projector.pos_embed']\n"
    "            rows += list(h); t += G * G; k += 1\n"
    "        else:\n"
    "            rows.append(P['model.embed_tokens.weight'][tokens[t]]); t += 1\n"
    "    x = torch.stack(rows)\n"
    "    def rms(x, w): return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + c['norm_eps']) * w\n"
    "    pos = torch.cat([torch.arange(ss[i + 1] - ss[i]) for i in range(len(ss) - 1)]).double()\n"
    "    inv = 1.0 / (c['rope_theta'] ** (torch.arange(0, hd, 2).double() / hd))\n"
    "    fr = pos[:, None] * inv[None, :]\n"
    "    emb = torch.cat([fr, fr], -1); cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]\n"
    "    def rot(x): return torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)\n"
    "    for l in range(c['n_layers']):\n"
    "        pre = 'model.layers.%d.' % l\n"
    "        xn = rms(x, P[pre + 'input_layernorm.weight'])\n"
    "        q = F.linear(xn, P[pre + 'self_attn.q_proj.weight']).reshape(T, H, hd)\n"
    "        kk = F.linear(xn, P[pre + 'self_attn.k_proj.weight']).reshape(T, KVH, hd)\n"
    "        v = F.linear(xn, P[pre + 'self_attn.v_proj.weight']).reshape(T, KVH, hd)\n"
    "        q = q * cos + rot(q) * sin; kk = kk * cos + rot(kk) * sin\n"
    "        kk = kk.repeat_interleave(H // KVH, dim=1); v = v.repeat_interleave(H // KVH, dim=1)\n"
    "        outs = []\n"
    "        for i in range(len(ss) - 1):\n"
    "            a, b = ss[i], ss[i + 1]; n = b - a\n"
    "            s = torch.einsum('qhd,khd->hqk', q[a:b], kk[a:b]) / hd ** 0.5\n"
    "            s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float('-inf'))\n"
    "            outs.append(torch.einsum('hqk,khd->qhd', s.softmax(-1), v[a:b]))\n"
    "        x = x + F.linear(torch.cat(outs).reshape(T, H * hd), P[pre + 'self_attn.o_proj.weight'])\n"
    "        xn = rms(x, P[pre + 'post_attention_layernorm.weight'])\n"
    "        g = F.linear(xn, P[pre + 'mlp.gate_proj.weight']); u = F.linear(xn, P[pre + 'mlp.up_proj.weight'])\n"
    "        x = x + F.linear(F.silu(g) * u, P[pre + 'mlp.down_proj.weight'])\n"
    "    head = P['lm_head.weight'] if 'lm_head.weight' in P else P['model.embed_tokens.weight']\n"
    "    logits = F.linear(rms(x, P['model.norm.weight']), head)\n"
    "    R = load(d + '/R.bin').reshape(T, V)\n"
    "    (logits * R).sum().backward()\n"
    "    grads = torch.zeros(flat.numel())\n"
    "    for t in meta['tensors']:\n"
    "        grads[t['offset']:t['offset'] + t['numel']] = P[t['name']].grad.reshape(-1)\n"
    "    open(d + '/logits.bin', 'wb').write(logits.detach().float().numpy().tobytes())\n"
    "    open(d + '/grads.bin', 'wb').write(grads.float().numpy().tobytes())\n";

static void write_floats(const char *dir, const char *name, const float *x, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    cr_assert_eq(fwrite(x, sizeof(float), n, f), n);
    fclose(f);
}

static void read_floats(const char *dir, const char *name, float *x, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "oracle did not write %s", path);
    cr_assert_eq(fread(x, sizeof(float), n, f), n, "%s is short", path);
    fclose(f);
}

typedef struct {
    model_t *m;
    model_acts_t *a;
    float *R, *logits, *grads;
    int T;
    char dir[256];
} oracle_case_t;

static void oracle_prepare(oracle_case_t *oc, const char *root, int idx, model_config_t cfg,
                           const model_batch_t *b, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    snprintf(oc->dir, sizeof oc->dir, "%s/case%d", root, idx);
    cr_assert_eq(mkdir(oc->dir, 0700), 0);
    oc->m = model_new(&cfg, 1);
    cr_assert_not_null(oc->m);
    init_for_gradcheck(oc->m, &r);
    oc->a = model_acts_new(oc->m, 32, 4);
    cr_assert_not_null(oc->a);
    size_t TV = (size_t)b->n_tokens * cfg.vocab_size;
    oc->T = b->n_tokens;
    oc->R = malloc(TV * sizeof(float));
    for (size_t i = 0; i < TV; i++)
        oc->R[i] = rng_normal(&r);
    float *l = model_forward(oc->m, oc->a, b);
    cr_assert_not_null(l);
    oc->logits = malloc(TV * sizeof(float));
    memcpy(oc->logits, l, TV * sizeof(float));
    model_zero_grads(oc->m);
    cr_assert_eq(model_backward(oc->m, oc->a, oc->R), 0);

    char path[512];
    snprintf(path, sizeof path, "%s/meta.json", oc->dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fprintf(f, "{\"config\": {\"vocab_size\": %d, \"dim\": %d, \"n_layers\": %d, \"n_heads\": %d, "
               "\"n_kv_heads\": %d, \"image_size\": %d, \"patch_size\": %d, \"rope_theta\": %.9g, "
               "\"norm_eps\": %.9g},\n \"tensors\": [",
            cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.image_size,
            cfg.patch_size, (double)cfg.rope_theta, (double)cfg.norm_eps);
    for (int i = 0; i < oc->m->n_tensors; i++) {
        const tensor_info_t *t = &oc->m->tensors[i];
        fprintf(f, "%s{\"name\": \"%s\", \"offset\": %zu, \"numel\": %zu, \"shape\": [%d", i ? ", " : "",
                t->name, t->offset, t->numel, t->shape[0]);
        if (t->ndim == 2)
            fprintf(f, ", %d", t->shape[1]);
        fprintf(f, "]}");
    }
    fprintf(f, "],\n \"tokens\": [");
    for (int t = 0; t < b->n_tokens; t++)
        fprintf(f, "%s%d", t ? ", " : "", b->tokens[t]);
    fprintf(f, "], \"seq_start\": [");
    for (int s = 0; s <= b->n_seqs; s++)
        fprintf(f, "%s%d", s ? ", " : "", b->seq_start[s]);
    fprintf(f, "], \"n_images\": %d}\n", b->n_images);
    fclose(f);
    write_floats(oc->dir, "params.bin", oc->m->params, oc->m->n_params);
    write_floats(oc->dir, "R.bin", oc->R, TV);
    if (b->n_images)
        write_floats(oc->dir, "images.bin", b->images,
                     (size_t)b->n_images * 3 * cfg.image_size * cfg.image_size);
}

static void oracle_check(oracle_case_t *oc)
{
    const model_t *m = oc->m;
    size_t TV = (size_t)oc->T * m->cfg.vocab_size;
    float *want = malloc(TV * sizeof(float));
    read_floats(oc->dir, "logits.bin", want, TV);
    /* Tolerance: float32 model vs float64 oracle, 1e-4 abs + 1e-4 rel. */
    for (size_t i = 0; i < TV; i++)
        cr_assert(fabsf(want[i] - oc->logits[i]) <= 1e-4f + 1e-4f * fabsf(want[i]),
                  "%s logit %zu: torch %.7g, crl %.7g", oc->dir, i, want[i], oc->logits[i]);
    free(want);
    float *gw = malloc(m->n_params * sizeof(float));
    read_floats(oc->dir, "grads.bin", gw, m->n_params);
    /* Gradients: 1e-3 rel of the tensor's largest gradient + 1e-4 abs. */
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const tensor_info_t *t = &m->tensors[ti];
        float scale = 0;
        for (size_t j = 0; j < t->numel; j++)
            scale = fmaxf(scale, fabsf(gw[t->offset + j]));
        for (size_t j = 0; j < t->numel; j++) {
            float w = gw[t->offset + j], g = m->grads[t->offset + j];
            cr_assert(fabsf(w - g) <= 1e-4f + 1e-3f * scale, "%s grad of %s[%zu]: torch %.7g, crl %.7g",
                      oc->dir, t->name, j, w, g);
        }
    }
    free(gw);
    free(oc->R);
    free(oc->logits);
    model_acts_destroy(&oc->a);
    model_destroy(&oc->m);
}

Test(model, matches_pytorch_reference)
{
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
        cr_skip_test("/usr/bin/python3 with torch not available");
    const char *base = getenv("CRL_TEST_TMP");
    char root[256];
    snprintf(root, sizeof root, "%s/model-torch-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(root));
    rng_t r;
    rng_seed(&r, 99);
    float images[3 * 3 * 4 * 4];
    random_images(images, 3, 4, &r);
    int tokens[] = {3, IMG, IMG, IMG, IMG, 5, 7, 2, IMG, IMG, IMG, IMG, 9, 1, 4, IMG, IMG, IMG, IMG, 6, 10, 0};
    int ss[] = {0, 7, 19, 22};
    model_batch_t b = {22, 3, ss, tokens, 3, images};
    oracle_case_t cases[2];
    oracle_prepare(&cases[0], root, 0, tiny_config(1, 0), &b, 5);
    oracle_prepare(&cases[1], root, 1, tiny_config(2, 1), &b, 6);

    char path[512], cmd[1200];
    snprintf(path, sizeof path, "%s/oracle.py", root);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(torch_oracle_py, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %s", path, cases[0].dir, cases[1].dir);
    cr_assert_eq(system(cmd), 0, "torch oracle failed: %s", cmd);
    oracle_check(&cases[0]);
    oracle_check(&cases[1]);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    cr_assert_eq(system(cmd), 0);
}
