/* sampler tests: KV-cache decoding against the full training forward on a
 * tiny random model (V=37, D=16, L=2, H=4, KVH=2 so grouped-query attention
 * is exercised, F=24, 8x8 images in 4x4 patches), with and without an image.
 * Tolerances: logits 1e-4, log-probs 1e-5 (float rounding only: both sides
 * run the same kernels, only the attention summation order differs). */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"

#define V_TEST 37
#define MAX_NEW 24
#define MAX_GROUP 8
#define MAX_PROMPT 24

static model_t *make_model(int with_image, int tied, uint64_t seed)
{
    model_config_t c = {
        .vocab_size = V_TEST, .dim = 16, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
        .hidden_dim = 24, .max_seq_len = 64, .image_size = with_image ? 8 : 0,
        .patch_size = with_image ? 4 : 0, .tie_embeddings = tied, .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
    model_t *m = model_new(&c, 0);
    cr_assert_not_null(m, "model_new failed");
    rng_t r;
    rng_seed(&r, seed);
    model_init_random(m, &r);
    /* The standard 0.02 init gives almost uniform logits (greedy would hinge
     * on near-ties); scale matrices up to ~1/sqrt(fan-in) and perturb the
     * norm weights and biases so that every parameter matters. */
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        float *p = m->params + t->offset;
        for (size_t j = 0; j < t->numel; j++) {
            if (t->decay)
                p[j] *= 15.0f;
            else
                p[j] += 0.1f * rng_normal(&r);
        }
    }
    return m;
}

static void make_image(float *img, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    for (int i = 0; i < 3 * 8 * 8; i++)
        img[i] = rng_uniform(&r);
}

/* Prompt: bos, some text, and (with an image) <img> 4 slots </img>. */
static int make_prompt(int *p, int with_image)
{
    int n = 0;
    p[n++] = 1;
    if (with_image) {
        p[n++] = 2;
        for (int i = 0; i < 4; i++)
            p[n++] = MODEL_IMAGE_SLOT;
        p[n++] = 3;
    }
    const int text[] = {10, 20, 5, 17, 30, 8};
    for (size_t i = 0; i < sizeof text / sizeof text[0]; i++)
        p[n++] = text[i];
    return n;
}

static sample_params_t params(float temperature, float top_p, int max_new)
{
    sample_params_t p = {.temperature = temperature, .top_p = top_p, .max_new_tokens = max_new,
                         .eos_id = -1, .banned = NULL, .n_banned = 0};
    return p;
}

typedef struct {
    int tokens[MAX_GROUP * MAX_NEW];
    float logp[MAX_GROUP * MAX_NEW];
    int len[MAX_GROUP];
} gen_out_t;

static void generate(sampler_t *s, const model_t *m, const int *prompt, int plen,
                     const float *img, int G, const sample_params_t *p, uint64_t seed,
                     gen_out_t *o)
{
    rng_t r;
    rng_seed(&r, seed);
    int rc = sampler_generate(s, m, prompt, plen, img, G, p, &r, o->tokens, o->logp, o->len);
    cr_assert_eq(rc, 0, "sampler_generate failed: %d", rc);
}

/* Full forward over the G sequences [prompt ; response_g] packed in one
 * batch (as the learner does). Returns the logits; seq_start filled. */
static float *full_forward(const model_t *m, model_acts_t *a, const int *prompt, int plen,
                           const float *img, int G, const gen_out_t *o, int *tok, int *seq_start,
                           float *imgs)
{
    int T = 0, n_images = 0;
    seq_start[0] = 0;
    for (int g = 0; g < G; g++) {
        memcpy(tok + T, prompt, (size_t)plen * sizeof(int));
        memcpy(tok + T + plen, o->tokens + g * MAX_NEW, (size_t)o->len[g] * sizeof(int));
        T += plen + o->len[g];
        seq_start[g + 1] = T;
        if (img)
            memcpy(imgs + (size_t)n_images++ * 3 * 8 * 8, img, 3 * 8 * 8 * sizeof(float));
    }
    model_batch_t b = {.n_tokens = T, .n_seqs = G, .seq_start = seq_start, .tokens = tok,
                       .n_images = n_images, .images = img ? imgs : NULL};
    float *logits = model_forward(m, a, &b);
    cr_assert_not_null(logits, "model_forward failed");
    return logits;
}

/* Max |behaviour logp - recomputed logp| over every generated token. */
static double logp_diff(const model_t *m, const int *prompt, int plen, const float *img, int G,
                        const gen_out_t *o, float temp)
{
    model_acts_t *a = model_acts_new(m, MAX_GROUP * (MAX_PROMPT + MAX_NEW), MAX_GROUP);
    cr_assert_not_null(a);
    static int tok[MAX_GROUP * (MAX_PROMPT + MAX_NEW)], seq_start[MAX_GROUP + 1];
    static float imgs[MAX_GROUP * 3 * 8 * 8];
    float *logits = full_forward(m, a, prompt, plen, img, G, o, tok, seq_start, imgs);
    double worst = 0.0;
    for (int g = 0; g < G; g++)
        for (int i = 0; i < o->len[g]; i++) {
            /* Row predicting response token i of sequence g. */
            int row = seq_start[g] + plen - 1 + i;
            int target = o->tokens[g * MAX_NEW + i];
            float lp;
            k_logprobs_fwd(&lp, NULL, logits + (size_t)row * V_TEST, &target, 1, V_TEST, temp);
            double d = fabs((double)lp - o->logp[g * MAX_NEW + i]);
            cr_assert(isfinite(o->logp[g * MAX_NEW + i]));
            worst = d > worst ? d : worst;
        }
    model_acts_destroy(&a);
    return worst;
}

/* Decoded logits at every step equal the full forward's, for G samples. */
static void check_logits(int with_image, int G)
{
    model_t *m = make_model(with_image, 0, 7);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    model_acts_t *a = model_acts_new(m, MAX_PROMPT + MAX_NEW, 1);
    cr_assert_not_null(a);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, with_image);
    float img[3 * 8 * 8];
    make_image(img, 3);
    const int N = 12;
    static gen_out_t full, o;
    sample_params_t p = params(1.0f, 1.0f, N);
    generate(s, m, prompt, plen, with_image ? img : NULL, G, &p, 11, &full);

    double worst = 0.0;
    for (int k = 1; k <= N; k++) {
        /* The same seed replays the same first k tokens; the last logits are
         * then those token k was drawn from. */
        p.max_new_tokens = k;
        generate(s, m, prompt, plen, with_image ? img : NULL, G, &p, 11, &o);
        const float *last = sampler_last_logits(s);
        for (int g = 0; g < G; g++) {
            cr_assert_eq(o.len[g], k);
            for (int i = 0; i < k; i++)
                cr_assert_eq(o.tokens[g * MAX_NEW + i], full.tokens[g * MAX_NEW + i],
                             "replay diverged: sample %d token %d", g, i);
            int tok[MAX_PROMPT + MAX_NEW];
            memcpy(tok, prompt, (size_t)plen * sizeof(int));
            memcpy(tok + plen, o.tokens + g * MAX_NEW, (size_t)(k - 1) * sizeof(int));
            int T = plen + k - 1, ss[2] = {0, T};
            model_batch_t b = {.n_tokens = T, .n_seqs = 1, .seq_start = ss, .tokens = tok,
                               .n_images = with_image, .images = with_image ? img : NULL};
            float *ref = model_forward(m, a, &b);
            cr_assert_not_null(ref);
            for (int v = 0; v < V_TEST; v++) {
                double d = fabs((double)ref[(size_t)(T - 1) * V_TEST + v] - last[g * V_TEST + v]);
                worst = d > worst ? d : worst;
            }
        }
    }
    printf("sampler: image %d G %d: max |cached - full| logits over %d steps = %.3g\n",
           with_image, G, N, worst);
    cr_assert(worst <= 1e-4, "cached logits differ from the full forward by %g (want <= 1e-4)",
              worst);
    model_acts_destroy(&a);
    sampler_destroy(&s);
    model_destroy(&m);
}

Test(sampler, cached_logits_match_full_forward_text_g1) { check_logits(0, 1); }
Test(sampler, cached_logits_match_full_forward_text_g3) { check_logits(0, 3); }
Test(sampler, cached_logits_match_full_forward_image_g1) { check_logits(1, 1); }
Test(sampler, cached_logits_match_full_forward_image_g3) { check_logits(1, 3); }

/* Behaviour log-probs equal what the learner recomputes. */
static void check_logp(int with_image, int tied)
{
    model_t *m = make_model(with_image, tied, 21);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, with_image);
    float img[3 * 8 * 8];
    make_image(img, 5);
    const float temps[] = {0.7f, 1.0f, 0.0f};
    const float top_ps[] = {0.9f, 1.0f, 1.0f};
    for (int i = 0; i < 3; i++) {
        static gen_out_t o;
        sample_params_t p = params(temps[i], top_ps[i], MAX_NEW);
        generate(s, m, prompt, plen, with_image ? img : NULL, 4, &p, 100 + i, &o);
        float lt = temps[i] > 0.0f ? temps[i] : 1.0f;
        double d = logp_diff(m, prompt, plen, with_image ? img : NULL, 4, &o, lt);
        printf("sampler: image %d tied %d temperature %.1f: max |logp - recomputed| = %.3g\n",
               with_image, tied, (double)temps[i], d);
        cr_assert(d <= 1e-5, "temperature %g: behaviour log-probs differ by %g (want <= 1e-5)",
                  (double)temps[i], d);
    }
    sampler_destroy(&s);
    model_destroy(&m);
}

Test(sampler, logprobs_match_recompute_text) { check_logp(0, 0); }
Test(sampler, logprobs_match_recompute_image) { check_logp(1, 0); }
Test(sampler, logprobs_match_recompute_tied) { check_logp(1, 1); }

Test(sampler, greedy_is_full_forward_argmax_and_tiny_top_p_is_greedy)
{
    model_t *m = make_model(1, 0, 8);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    model_acts_t *a = model_acts_new(m, MAX_PROMPT + MAX_NEW, 1);
    cr_assert_not_null(a);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, 1);
    float img[3 * 8 * 8];
    make_image(img, 9);
    static gen_out_t o, o2;
    sample_params_t p = params(0.0f, 1.0f, MAX_NEW);
    generate(s, m, prompt, plen, img, 2, &p, 1, &o);
    int tok[MAX_PROMPT + MAX_NEW];
    memcpy(tok, prompt, (size_t)plen * sizeof(int));
    memcpy(tok + plen, o.tokens, MAX_NEW * sizeof(int));
    int T = plen + MAX_NEW, ss[2] = {0, T};
    model_batch_t b = {.n_tokens = T, .n_seqs = 1, .seq_start = ss, .tokens = tok,
                       .n_images = 1, .images = img};
    float *ref = model_forward(m, a, &b);
    cr_assert_not_null(ref);
    for (int i = 0; i < MAX_NEW; i++) {
        const float *row = ref + (size_t)(plen - 1 + i) * V_TEST;
        int best = 0;
        for (int v = 1; v < V_TEST; v++)
            if (row[v] > row[best])
                best = v;
        cr_assert_eq(o.tokens[i], best, "step %d: greedy picked %d, full-forward argmax %d", i,
                     o.tokens[i], best);
        cr_assert_eq(o.tokens[MAX_NEW + i], o.tokens[i], "greedy samples differ at step %d", i);
    }
    /* A nucleus of (almost) zero mass keeps only the most likely token. */
    p = params(1.0f, 1e-6f, MAX_NEW);
    generate(s, m, prompt, plen, img, 3, &p, 77, &o2);
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < MAX_NEW; i++)
            cr_assert_eq(o2.tokens[g * MAX_NEW + i], o.tokens[i],
                         "top_p 1e-6 sample %d step %d: got %d, greedy %d", g, i,
                         o2.tokens[g * MAX_NEW + i], o.tokens[i]);
    model_acts_destroy(&a);
    sampler_destroy(&s);
    model_destroy(&m);
}

Test(sampler, seeds_reproduce_and_samples_differ)
{
    model_t *m = make_model(0, 0, 3);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, 0);
    static gen_out_t a, b, c;
    sample_params_t p = params(1.0f, 0.99f, MAX_NEW);
    generate(s, m, prompt, plen, NULL, MAX_GROUP, &p, 5, &a);
    generate(s, m, prompt, plen, NULL, MAX_GROUP, &p, 5, &b);
    generate(s, m, prompt, plen, NULL, MAX_GROUP, &p, 6, &c);
    cr_assert(memcmp(a.tokens, b.tokens, sizeof a.tokens) == 0, "same seed, different tokens");
    cr_assert(memcmp(a.logp, b.logp, sizeof a.logp) == 0, "same seed, different log-probs");
    cr_assert(memcmp(a.tokens, c.tokens, sizeof a.tokens) != 0, "seeds 5 and 6 gave equal output");
    /* Independent continuations of the shared prompt: all pairs differ. */
    for (int g = 0; g < MAX_GROUP; g++)
        for (int h = g + 1; h < MAX_GROUP; h++)
            cr_assert(memcmp(a.tokens + g * MAX_NEW, a.tokens + h * MAX_NEW,
                             MAX_NEW * sizeof(int)) != 0,
                      "samples %d and %d are identical", g, h);
    sampler_destroy(&s);
    model_destroy(&m);
}

Test(sampler, banned_tokens_never_sampled)
{
    model_t *m = make_model(1, 0, 4);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, 1);
    float img[3 * 8 * 8];
    make_image(img, 4);
    int banned[V_TEST], nb = 0;
    for (int v = 0; v < V_TEST; v++)
        if (v != 5 && v != 6 && v != 7)
            banned[nb++] = v;
    const float temps[] = {1.0f, 2.0f, 0.0f};
    for (int i = 0; i < 3; i++) {
        static gen_out_t o;
        sample_params_t p = params(temps[i], i == 1 ? 0.5f : 1.0f, MAX_NEW);
        p.banned = banned;
        p.n_banned = nb;
        generate(s, m, prompt, plen, img, MAX_GROUP, &p, 9, &o);
        for (int g = 0; g < MAX_GROUP; g++)
            for (int j = 0; j < o.len[g]; j++) {
                int t = o.tokens[g * MAX_NEW + j];
                cr_assert(t >= 5 && t <= 7, "temperature %g: banned token %d sampled",
                          (double)temps[i], t);
            }
        /* Bans do not renormalise the reported log-probs. */
        float lt = temps[i] > 0.0f ? temps[i] : 1.0f;
        double d = logp_diff(m, prompt, plen, img, MAX_GROUP, &o, lt);
        cr_assert(d <= 1e-5, "log-probs with bans differ from recompute by %g", d);
    }
    sampler_destroy(&s);
    model_destroy(&m);
}

Test(sampler, eos_stops_a_sample_and_lengths_are_right)
{
    model_t *m = make_model(1, 0, 12);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, 1);
    float img[3 * 8 * 8];
    make_image(img, 12);
    /* Only eos (4) and two other tokens allowed: samples stop at varied
     * steps, so rows get compacted while others keep decoding. */
    int banned[V_TEST], nb = 0;
    for (int v = 0; v < V_TEST; v++)
        if (v != 4 && v != 9 && v != 13)
            banned[nb++] = v;
    const int max_new = 20; /* below the sampler's MAX_NEW */
    sample_params_t p = params(1.0f, 1.0f, max_new);
    p.eos_id = 4;
    p.banned = banned;
    p.n_banned = nb;
    int early = 0, full_len = 0;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        static gen_out_t o;
        generate(s, m, prompt, plen, img, MAX_GROUP, &p, seed, &o);
        for (int g = 0; g < MAX_GROUP; g++) {
            int len = o.len[g];
            cr_assert(len >= 1 && len <= max_new, "sample %d length %d outside [1, %d]", g, len,
                      max_new);
            for (int i = 0; i < len - 1; i++)
                cr_assert_neq(o.tokens[g * MAX_NEW + i], 4, "eos inside sample %d at %d", g, i);
            if (len < max_new) {
                cr_assert_eq(o.tokens[g * MAX_NEW + len - 1], 4,
                             "sample %d stopped at %d without eos", g, len);
                early++;
            } else {
                full_len++;
            }
            for (int i = len; i < MAX_NEW; i++)
                cr_assert_eq(o.tokens[g * MAX_NEW + i], -1, "sample %d slot %d past its end", g,
                             i);
        }
        double d = logp_diff(m, prompt, plen, img, MAX_GROUP, &o, 1.0f);
        cr_assert(d <= 1e-5, "seed %d: log-probs after compaction differ by %g", (int)seed, d);
    }
    cr_assert(early > 0, "no sample stopped at eos");
    printf("sampler: eos test: %d samples stopped early, %d ran to max_new\n", early, full_len);
    sampler_destroy(&s);
    model_destroy(&m);
}

Test(sampler, bad_arguments_rejected)
{
    model_t *m = make_model(1, 0, 2);
    model_t *text = make_model(0, 0, 2);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, 4);
    cr_assert_not_null(s);
    cr_assert_null(sampler_new(NULL, 8, 8, 1));
    cr_assert_null(sampler_new(m, 0, 8, 1));
    cr_assert_null(sampler_new(m, 8, -1, 1));
    cr_assert_null(sampler_new(m, 8, 8, 0));
    int prompt[64], plen = make_prompt(prompt, 1);
    float img[3 * 8 * 8];
    make_image(img, 1);
    static gen_out_t o;
    rng_t r;
    rng_seed(&r, 1);
    sample_params_t p = params(1.0f, 1.0f, 8);
#define GEN(mm, pr, pl, im, G, pp, rr)                                                          \
    sampler_generate(s, mm, pr, pl, im, G, pp, rr, o.tokens, o.logp, o.len)
    cr_assert_eq(GEN(m, prompt, plen, img, 4, &p, &r), 0);
    cr_assert_eq(GEN(m, prompt, plen, img, 5, &p, &r), -EINVAL, "G > max_group accepted");
    cr_assert_eq(GEN(m, prompt, plen, img, 0, &p, &r), -EINVAL, "G = 0 accepted");
    int longp[MAX_PROMPT + 1];
    for (int i = 0; i < MAX_PROMPT + 1; i++)
        longp[i] = 1;
    cr_assert_eq(GEN(m, longp, MAX_PROMPT + 1, NULL, 1, &p, &r), -EINVAL, "long prompt accepted");
    cr_assert_eq(GEN(m, prompt, 0, img, 1, &p, &r), -EINVAL, "empty prompt accepted");
    cr_assert_eq(GEN(m, NULL, plen, img, 1, &p, &r), -EINVAL);
    cr_assert_eq(GEN(m, prompt, plen, img, 1, NULL, &r), -EINVAL);
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &p, NULL), -EINVAL, "no rng at temperature 1");
    cr_assert_eq(sampler_generate(NULL, m, prompt, plen, img, 1, &p, &r, o.tokens, o.logp, o.len),
                 -EINVAL);
    cr_assert_eq(sampler_generate(s, m, prompt, plen, img, 1, &p, &r, NULL, o.logp, o.len),
                 -EINVAL);
    cr_assert_eq(GEN(m, prompt, plen, NULL, 1, &p, &r), -EINVAL, "image slots without image");
    cr_assert_eq(GEN(text, prompt, plen, img, 1, &p, &r), -EINVAL, "model of another config");
    int bad_tok[3] = {1, V_TEST, 2};
    cr_assert_eq(GEN(m, bad_tok, 3, NULL, 1, &p, &r), -EINVAL, "out-of-vocab prompt token");
    int three_slots[5] = {1, MODEL_IMAGE_SLOT, MODEL_IMAGE_SLOT, MODEL_IMAGE_SLOT, 2};
    cr_assert_eq(GEN(m, three_slots, 5, img, 1, &p, &r), -EINVAL, "short image run accepted");
    sample_params_t q = p;
    q.max_new_tokens = MAX_NEW + 1;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "max_new_tokens too big");
    q = p;
    q.temperature = -1.0f;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "negative temperature");
    q.temperature = 1e-30f;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "temperature 1e-30 (overflows)");
    q.temperature = NAN;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "NaN temperature");
    q = p;
    q.top_p = 0.0f;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "top_p 0");
    int ban_bad = V_TEST;
    q = p;
    q.banned = &ban_bad;
    q.n_banned = 1;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "out-of-vocab ban");
    int all[V_TEST];
    for (int v = 0; v < V_TEST; v++)
        all[v] = v;
    q.banned = all;
    q.n_banned = V_TEST;
    cr_assert_eq(GEN(m, prompt, plen, img, 1, &q, &r), -EINVAL, "everything banned");
    /* Still usable after the rejections. */
    cr_assert_eq(GEN(m, prompt, plen, img, 4, &p, &r), 0);
#undef GEN
    sampler_destroy(&s);
    sampler_destroy(&s); /* no-op on NULL */
    model_destroy(&text);
    model_destroy(&m);
}

/* Exported by sampler.c for this test only (not in sampler.h). */
void sampler_matmul_rows(float *out, const float *in, const float *W, int M, int K, int N);

Test(sampler, small_row_matmul_matches_naive)
{
    const int Ks[] = {8, 16, 24, 256, 13, 1};
    const int Ns[] = {1, 2, 3, 4, 5, 8, 11, 37};
    rng_t r;
    rng_seed(&r, 3);
    static float in[17 * 256], W[37 * 256], out[17 * 37], ref[17 * 37];
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        in[i] = rng_normal(&r);
    for (size_t i = 0; i < sizeof W / sizeof W[0]; i++)
        W[i] = rng_normal(&r);
    double worst = 0.0;
    for (int M = 1; M <= 17; M++)
        for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
            for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
                int K = Ks[ki], N = Ns[ni];
                sampler_matmul_rows(out, in, W, M, K, N);
                k_matmul_fwd_naive(ref, in, W, NULL, M, K, N);
                for (int i = 0; i < M * N; i++) {
                    /* Relative to sqrt(K): the size of a sum of K unit terms. */
                    double d = fabs((double)out[i] - ref[i]) / sqrt((double)K);
                    cr_assert(d <= 1e-5, "M %d K %d N %d [%d]: got %g, naive %g", M, K, N, i,
                              (double)out[i], (double)ref[i]);
                    worst = d > worst ? d : worst;
                }
            }
    printf("sampler: small-row matmul vs naive: max scaled diff %.3g\n", worst);
}

/* Every sampled token lies in the nucleus computed from the full forward's
 * logits by a plain sort (tolerance: a token whose preceding mass is within
 * 1e-4 of top_p counts as on the boundary). */
static void check_nucleus(float temperature, float top_p)
{
    model_t *m = make_model(1, 0, 31);
    sampler_t *s = sampler_new(m, MAX_PROMPT, MAX_NEW, MAX_GROUP);
    cr_assert_not_null(s);
    int prompt[MAX_PROMPT], plen = make_prompt(prompt, 1);
    float img[3 * 8 * 8];
    make_image(img, 31);
    static gen_out_t o;
    sample_params_t p = params(temperature, top_p, MAX_NEW);
    generate(s, m, prompt, plen, img, MAX_GROUP, &p, 4, &o);
    model_acts_t *a = model_acts_new(m, MAX_GROUP * (MAX_PROMPT + MAX_NEW), MAX_GROUP);
    cr_assert_not_null(a);
    static int tok[MAX_GROUP * (MAX_PROMPT + MAX_NEW)], seq_start[MAX_GROUP + 1];
    static float imgs[MAX_GROUP * 3 * 8 * 8];
    float *logits = full_forward(m, a, prompt, plen, img, MAX_GROUP, &o, tok, seq_start, imgs);
    int max_size = 0, min_size = V_TEST;
    for (int g = 0; g < MAX_GROUP; g++)
        for (int i = 0; i < o.len[g]; i++) {
            const float *row = logits + (size_t)(seq_start[g] + plen - 1 + i) * V_TEST;
            double pr[V_TEST], total = 0.0;
            for (int v = 0; v < V_TEST; v++)
                total += pr[v] = exp((double)row[v] / temperature);
            int t = o.tokens[g * MAX_NEW + i];
            double before = 0.0; /* mass of tokens ranked above t */
            int size = 0;        /* nucleus size */
            double cum = 0.0;
            for (int v = 0; v < V_TEST; v++)
                if (pr[v] > pr[t])
                    before += pr[v] / total;
            int order[V_TEST];
            for (int v = 0; v < V_TEST; v++)
                order[v] = v;
            for (int x = 1; x < V_TEST; x++) /* insertion sort, descending */
                for (int y = x; y > 0 && pr[order[y]] > pr[order[y - 1]]; y--) {
                    int tmp = order[y];
                    order[y] = order[y - 1];
                    order[y - 1] = tmp;
                }
            while (size < V_TEST && cum < top_p)
                cum += pr[order[size++]] / total;
            max_size = size > max_size ? size : max_size;
            min_size = size < min_size ? size : min_size;
            cr_assert(before < top_p + 1e-4,
                      "sample %d step %d: token %d has %.6f mass above it, outside top_p %.3f", g,
                      i, t, before, (double)top_p);
        }
    printf("sampler: temperature %.1f top_p %.2f: nucleus sizes %d..%d of %d\n",
           (double)temperature, (double)top_p, min_size, max_size, V_TEST);
    model_acts_destroy(&a);
    sampler_destroy(&s);
    model_destroy(&m);
}

/* Peaked distribution, small nucleus (the few-candidates path). */
Test(sampler, top_p_keeps_to_nucleus_peaked) { check_nucleus(0.7f, 0.5f); }
/* Flat distribution (temperature 5), nucleus of most of the vocabulary (the
 * path that pops the least likely tokens). */
Test(sampler, top_p_keeps_to_nucleus_flat) { check_nucleus(5.0f, 0.9f); }
