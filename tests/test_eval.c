/* eval tests: the tournament with stub judges of known behaviour, majority
 * vote ties, and the evaluation plumbing on a tiny dataset written to a
 * temp folder, with (a) a tiny random model (counts add up, both orders
 * judged, rates in range, deterministic for a seed) and (b) a FAKE "bigram"
 * model whose layers are zeroed so that the next token depends only on the
 * current one, wired to answer "<think></think>\boxed{A}" to every prompt:
 * its exact scores are known (policy items whose answer is "A" are right,
 * the critic always names the first-shown answer: accuracy exactly 0.5,
 * says-first 1.0, both-orders 0). Exact comparisons unless stated. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dataset.h"
#include "eval.h"
#include "image.h"
#include "model.h"
#include "rng.h"
#include "task.h"
#include "tokenizer.h"

/* ---- stub judges ---------------------------------------------------------- */

typedef struct {
    const int *value;    /* per candidate */
    int kind;
    int calls;
    int seen[64][2];     /* first 64 calls (i, j) */
} stub_t;

enum {
    PREFER_LARGER,       /* always right */
    PREFER_FIRST,        /* always names the first shown */
    PREFER_SECOND,       /* always names the second shown */
    RIGHT_IF_LOW_FIRST,  /* right when the lower index is shown first, else names the first */
    INVALID_IF_HIGH_FIRST, /* right when the lower index is shown first, else no verdict */
};

static int stub_judge(void *p, int i, int j)
{
    stub_t *s = p;
    if (s->calls < 64) {
        s->seen[s->calls][0] = i;
        s->seen[s->calls][1] = j;
    }
    s->calls++;
    int larger = s->value[i] >= s->value[j] ? i : j;
    switch (s->kind) {
    case PREFER_LARGER: return larger;
    case PREFER_FIRST: return i;
    case PREFER_SECOND: return j;
    case RIGHT_IF_LOW_FIRST: return i < j ? larger : i;
    case INVALID_IF_HIGH_FIRST: return i < j ? larger : -1;
    }
    return -1;
}

static int argmax(const int *v, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

Test(eval, tournament_max_wins_with_right_judge)
{
    rng_t r;
    rng_seed(&r, 7);
    for (int n = 1; n <= 17; n++) {
        for (int rep = 0; rep < 20; rep++) {
            int v[17];
            for (int i = 0; i < n; i++)
                v[i] = (int)(i * 1000 + rng_below(&r, 997)); /* distinct */
            rng_shuffle_int(&r, v, (size_t)n);
            for (int rule = 0; rule <= 2; rule++) {
                stub_t s = {.value = v, .kind = PREFER_LARGER};
                int calls = -1, splits = -1;
                int w = eval_tournament(n, (eval_tourney_rule_t)rule, stub_judge, &s, &calls,
                                        &splits);
                cr_assert_eq(w, argmax(v, n), "n=%d rule %d: winner %d, expected argmax %d", n,
                             rule, w, argmax(v, n));
                int per_match = rule == EVAL_TOURNEY_ONE_ORDER ? 1 : 2;
                cr_assert_eq(calls, per_match * (n - 1), "n=%d rule %d: %d calls, expected %d", n,
                             rule, calls, per_match * (n - 1));
                cr_assert_eq(s.calls, calls);
                cr_assert_eq(splits, 0, "n=%d: %d splits with a consistent judge", n, splits);
            }
        }
    }
}

Test(eval, tournament_n1_needs_no_judge_and_bad_n_fails)
{
    int v[1] = {5};
    stub_t s = {.value = v, .kind = PREFER_LARGER};
    int calls = -1, splits = -1;
    cr_assert_eq(eval_tournament(1, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s, &calls, &splits),
                 0);
    cr_assert_eq(calls, 0);
    cr_assert_eq(splits, 0);
    cr_assert_eq(s.calls, 0);
    cr_assert_eq(eval_tournament(0, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s, NULL, NULL), -1);
    cr_assert_eq(eval_tournament(-3, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s, NULL, NULL), -1);
}

/* A position-biased judge never agrees with itself across orders, so the
 * rule decides every match: the lower index, i.e. candidate 0 wins. With a
 * single order the bias decides instead. */
Test(eval, tournament_position_biased_judge_falls_back_to_rule)
{
    int v[8] = {3, 9, 1, 7, 8, 2, 6, 5};
    for (int n = 2; n <= 8; n++) {
        stub_t s = {.value = v, .kind = PREFER_FIRST};
        int calls, splits;
        int w = eval_tournament(n, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s, &calls, &splits);
        cr_assert_eq(w, 0, "n=%d: always-first judge, both orders: winner %d, expected 0", n, w);
        cr_assert_eq(splits, n - 1, "n=%d: every match is a split (%d)", n, splits);
        stub_t s2 = {.value = v, .kind = PREFER_SECOND};
        w = eval_tournament(n, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s2, &calls, &splits);
        cr_assert_eq(w, 0, "n=%d: always-second judge, both orders: winner %d, expected 0", n, w);
        /* one order, always second: each match goes to the later candidate,
         * so the last one (which may have had byes) wins */
        stub_t s3 = {.value = v, .kind = PREFER_SECOND};
        w = eval_tournament(n, EVAL_TOURNEY_ONE_ORDER, stub_judge, &s3, &calls, &splits);
        cr_assert_eq(w, n - 1, "n=%d: one order, always second: winner %d, expected %d", n, w,
                     n - 1);
        cr_assert_eq(calls, n - 1);
        cr_assert_eq(splits, 0);
    }
}

/* Right in one order only: when the better one has the lower index the
 * orders split and the lower index wins (right by the rule); when it has
 * the higher index both orders name it. So the max always wins. */
Test(eval, tournament_judge_right_in_one_order)
{
    rng_t r;
    rng_seed(&r, 11);
    for (int rep = 0; rep < 200; rep++) {
        int n = 1 + (int)rng_below(&r, 8);
        int v[8];
        for (int i = 0; i < n; i++)
            v[i] = i;
        rng_shuffle_int(&r, v, (size_t)n);
        stub_t s = {.value = v, .kind = RIGHT_IF_LOW_FIRST};
        int w = eval_tournament(n, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s, NULL, NULL);
        cr_assert_eq(w, argmax(v, n), "n=%d rep %d: winner %d, expected %d", n, rep, w,
                     argmax(v, n));
    }
    /* Invalid in one order: BOTH_ELSE_FIRST ignores the valid half (always
     * candidate 0), BOTH_ELSE_VALID uses it (the max). */
    int v[6] = {4, 0, 5, 1, 3, 2};
    stub_t s = {.value = v, .kind = INVALID_IF_HIGH_FIRST};
    int splits;
    cr_assert_eq(eval_tournament(6, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s, NULL, &splits), 0);
    cr_assert_eq(splits, 5);
    stub_t s2 = {.value = v, .kind = INVALID_IF_HIGH_FIRST};
    cr_assert_eq(eval_tournament(6, EVAL_TOURNEY_BOTH_ELSE_VALID, stub_judge, &s2, NULL, &splits),
                 2);
    cr_assert_eq(splits, 5, "every match had one invalid order");
}

/* Bracket shape for odd N: n = 5 -> (0,1) (2,3) bye 4; (w01, w23) bye 4;
 * (w, 4). Checked through the call log of a one-order judge. */
Test(eval, tournament_odd_n_gives_byes_in_order)
{
    int v[5] = {10, 20, 40, 30, 50};
    stub_t s = {.value = v, .kind = PREFER_LARGER};
    int calls;
    int w = eval_tournament(5, EVAL_TOURNEY_ONE_ORDER, stub_judge, &s, &calls, NULL);
    cr_assert_eq(w, 4);
    cr_assert_eq(calls, 4);
    const int want[4][2] = {{0, 1}, {2, 3}, {1, 2}, {2, 4}};
    for (int k = 0; k < 4; k++)
        cr_assert(s.seen[k][0] == want[k][0] && s.seen[k][1] == want[k][1],
                  "call %d: (%d,%d), expected (%d,%d)", k, s.seen[k][0], s.seen[k][1], want[k][0],
                  want[k][1]);
    /* both orders: each match is (a,b) then (b,a) */
    stub_t s2 = {.value = v, .kind = PREFER_LARGER};
    w = eval_tournament(3, EVAL_TOURNEY_BOTH_ELSE_FIRST, stub_judge, &s2, &calls, NULL);
    cr_assert_eq(w, 2);
    const int want2[4][2] = {{0, 1}, {1, 0}, {1, 2}, {2, 1}};
    for (int k = 0; k < 4; k++)
        cr_assert(s2.seen[k][0] == want2[k][0] && s2.seen[k][1] == want2[k][1],
                  "call %d: (%d,%d), expected (%d,%d)", k, s2.seen[k][0], s2.seen[k][1],
                  want2[k][0], want2[k][1]);
}

Test(eval, majority_vote_ties_and_missing_answers)
{
    const char *a1[] = {"2", "3", "3", "2", "4"}; /* tie 2:2 -> "2" (first occurrence 0) */
    cr_assert_eq(eval_majority(a1, 5), 0);
    const char *a2[] = {"4", "3", "2", "3", "2"}; /* tie 3:2 -> "3" at 1 comes before "2" at 2 */
    cr_assert_eq(eval_majority(a2, 5), 1);
    const char *a3[] = {NULL, "red", NULL, "blue", "blue"};
    cr_assert_eq(eval_majority(a3, 5), 3);
    const char *a4[] = {NULL, NULL, NULL};
    cr_assert_eq(eval_majority(a4, 3), -1);
    cr_assert_eq(eval_majority(a4, 0), -1);
    const char *a5[] = {NULL, "yes"};
    cr_assert_eq(eval_majority(a5, 2), 1);
    /* prefixes: N = 2 of a1 is a 1:1 tie -> sample 0 */
    cr_assert_eq(eval_majority(a1, 2), 0);
}

/* ---- tiny dataset, tokenizer and models ------------------------------------ */

#define IMG 8
#define EXTRA_IDS 20 /* model ids the tokenizer does not have: must never be sampled */

typedef struct {
    char dir[512];
    tokenizer_t *tok;
    dataset_t *ds;
} fixture_t;

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "fopen(%s): %s", path, strerror(errno));
    cr_assert_eq(fputs(text, f) >= 0, 1);
    cr_assert_eq(fclose(f), 0);
}

/* 4 policy records (answers A, B, A, 3), 3 critic pairs, one 8x8 image. */
static void fixture_init(fixture_t *fx)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(fx->dir, sizeof(fx->dir), "%s/eval-XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(fx->dir), "mkdtemp(%s) failed", fx->dir);
    uint8_t px[IMG * IMG * 3];
    for (int i = 0; i < IMG * IMG * 3; i++)
        px[i] = (uint8_t)(i * 37);
    char path[600];
    snprintf(path, sizeof(path), "%s/img.png", fx->dir);
    cr_assert_eq(image_write_png(path, px, IMG, IMG), 0, "writing %s", path);
    snprintf(path, sizeof(path), "%s/d.jsonl", fx->dir);
    write_text(path,
               "{\"id\":\"p1\",\"image\":\"img.png\",\"question\":\"Which letter?\",\"answer\":\"A\"}\n"
               "{\"id\":\"c1\",\"image\":\"img.png\",\"question\":\"How many?\","
               "\"answers\":[\"<think>one two</think>\\\\boxed{2}\",\"<think>one</think>\\\\boxed{1}\"],"
               "\"preferred\":0}\n"
               "{\"id\":\"p2\",\"image\":\"img.png\",\"question\":\"Which other letter?\",\"answer\":\"B\"}\n"
               "{\"id\":\"c2\",\"question\":\"Colour?\","
               "\"answers\":[\"<think>x</think>\\\\boxed{red}\",\"<think>y</think>\\\\boxed{blue}\"],"
               "\"preferred\":1}\n"
               "{\"id\":\"p3\",\"question\":\"Text only?\",\"answer\":\"a\"}\n"
               "{\"id\":\"c3\",\"image\":\"img.png\",\"question\":\"Shape?\","
               "\"answers\":[\"\\\\boxed{circle}\",\"<think>z</think>\\\\boxed{square}\"],"
               "\"preferred\":0}\n"
               "{\"id\":\"p4\",\"image\":\"img.png\",\"question\":\"How many?\",\"answer\":\"3\"}\n");
    dataset_options_t o;
    dataset_options_default(&o);
    o.image_size = IMG;
    o.on_error = DATASET_ON_ERROR_STOP;
    char err[512];
    fx->ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(fx->ds, "dataset_load: %s", err);
    cr_assert_eq(dataset_count(fx->ds, DATASET_POLICY), 4);
    cr_assert_eq(dataset_count(fx->ds, DATASET_CRITIC), 3);
    /* byte-level tokenizer (no merges): every string is its bytes */
    const char *texts[] = {"abc"};
    fx->tok = tok_train(texts, NULL, 1, TOK_N_BASE, err, sizeof(err));
    cr_assert_not_null(fx->tok, "tok_train: %s", err);
}

static void fixture_fini(fixture_t *fx)
{
    char path[600];
    dataset_destroy(&fx->ds);
    tok_destroy(&fx->tok);
    snprintf(path, sizeof(path), "%s/img.png", fx->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/d.jsonl", fx->dir);
    unlink(path);
    rmdir(fx->dir);
}

static model_config_t tiny_config(int vocab)
{
    model_config_t c = {
        .vocab_size = vocab, .dim = 32, .n_layers = 1, .n_heads = 4, .n_kv_heads = 4,
        .hidden_dim = 32, .max_seq_len = 320, .image_size = IMG, .patch_size = 4,
        .tie_embeddings = 0, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
    };
    return c;
}

static model_t *random_model(int vocab, uint64_t seed)
{
    model_config_t c = tiny_config(vocab);
    model_t *m = model_new(&c, 0);
    cr_assert_not_null(m);
    rng_t r;
    rng_seed(&r, seed);
    model_init_random(m, &r);
    /* sharper than the 0.02 init so samples vary and greedy is not a near-tie */
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].decay)
            for (size_t j = 0; j < m->tensors[i].numel; j++)
                m->params[m->tensors[i].offset + j] *= 10.0f;
    return m;
}

#define FAKE_RESPONSE "<think></think>\\boxed{A}"

/* Every layer zeroed (attention and MLP add nothing), so the final hidden
 * state is rmsnorm(embed[current token]) and the model is a bigram table:
 * the token after the prompt's last token ('.') is the first of
 * FAKE_RESPONSE, and so on to <eos>. Each chain token gets its own
 * embedding axis; lm_head row `next` points along the axis of `cur`. */
static model_t *bigram_model(const tokenizer_t *tok, int *resp_len)
{
    model_config_t c = tiny_config(tok_vocab_size(tok));
    model_t *m = model_new(&c, 0);
    cr_assert_not_null(m);
    memset(m->params, 0, m->n_params * sizeof(float));
    const int D = c.dim;
    for (int l = 0; l < c.n_layers; l++) {
        for (int d = 0; d < D; d++) {
            m->w.layers[l].attn_norm[d] = 1.0f;
            m->w.layers[l].mlp_norm[d] = 1.0f;
        }
    }
    for (int d = 0; d < D; d++)
        m->w.final_norm[d] = 1.0f;
    int chain[40];
    int n = 0;
    cr_assert_eq(tok_encode(tok, ".", 1, chain, 1), 1);
    n = 1;
    int k = task_encode_response(tok, FAKE_RESPONSE, chain + 1, 39);
    cr_assert_gt(k, 0);
    n += k;
    cr_assert_leq(n, D, "chain of %d tokens needs dim >= %d", n, n);
    for (int i = 0; i < n; i++)
        for (int q = 0; q < i; q++)
            cr_assert_neq(chain[i], chain[q], "chain tokens must be distinct");
    for (int i = 0; i + 1 < n; i++) {
        m->w.embed[(size_t)chain[i] * D + i] = 1.0f;
        m->w.lm_head[(size_t)chain[i + 1] * D + i] = 10.0f;
    }
    *resp_len = k; /* eos included */
    return m;
}

static eval_ctx_t *make_ctx_threads(const model_t *m, const tokenizer_t *tok, int variant,
                                    int n_threads)
{
    eval_options_t o;
    eval_options_default(&o);
    o.n_threads = n_threads;
    o.max_new_tokens = 24;
    o.max_group = 8;
    o.variant = (prompt_critic_variant_t)variant;
    char err[256];
    eval_ctx_t *ctx = eval_new(m, tok, &o, err, sizeof(err));
    cr_assert_not_null(ctx, "eval_new: %s", err);
    return ctx;
}

static eval_ctx_t *make_ctx(const model_t *m, const tokenizer_t *tok, int variant)
{
    return make_ctx_threads(m, tok, variant, 1);
}

static void assert_rate(double x, const char *what)
{
    cr_assert(x >= 0.0 && x <= 1.0 && isfinite(x), "%s = %g outside [0, 1]", what, x);
}

Test(eval, fake_bigram_model_scores_exactly)
{
    fixture_t fx;
    fixture_init(&fx);
    int resp_len;
    model_t *m = bigram_model(fx.tok, &resp_len);
    /* the prompts end in '.', the bigram's entry point */
    const char *endings[2] = {prompt_policy("q"), NULL};
    size_t el = strlen(endings[0]);
    cr_assert_eq(endings[0][el - 1], '.', "policy prompt must end with '.' for this fake");
    free((void *)endings[0]);

    eval_ctx_t *ctx = make_ctx(m, fx.tok, PROMPT_CRITIC_FULL);
    rng_t rng;
    rng_seed(&rng, 3);
    eval_policy_result_t pr;
    eval_policy_items_t pi;
    cr_assert_eq(eval_policy(ctx, fx.ds, 0, 4, 1.0f, &rng, &pr, &pi), 0);
    cr_assert_eq(pr.n_items, 4);
    /* answers A, B, a, 3: "A" matches A and a (case-insensitive) */
    const uint8_t want[4] = {1, 0, 1, 0};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(pi.greedy_correct[i], want[i], "item %d greedy: got %d, expected %d", i,
                     pi.greedy_correct[i], want[i]);
        cr_assert_eq(pi.greedy_format[i], 1);
        for (int g = 0; g < 4; g++) {
            cr_assert_eq(pi.sample_correct[i * 4 + g], want[i]);
            cr_assert_str_eq(pi.answers[i * 4 + g], "a", "normalised boxed answer");
        }
        cr_assert_eq(pi.majority[i], 0);
    }
    cr_assert_float_eq(pr.greedy_acc, 0.5, 1e-12);
    cr_assert_float_eq(pr.sample_acc, 0.5, 1e-12);
    cr_assert_float_eq(pr.majority_acc, 0.5, 1e-12);
    cr_assert_float_eq(pr.pass_at_n, 0.5, 1e-12);
    cr_assert_float_eq(pr.greedy_format, 1.0, 1e-12);
    cr_assert_float_eq(pr.greedy_len, (double)resp_len, 1e-12, "length %g, expected %d",
                       pr.greedy_len, resp_len);
    cr_assert_float_eq(pr.sample_len, (double)resp_len, 1e-12);
    eval_policy_items_free(&pi);

    /* The critic always says "A" = the first shown: right in exactly one of
     * the two orders of every pair. */
    eval_critic_result_t cres;
    eval_critic_items_t ci;
    cr_assert_eq(eval_critic(ctx, fx.ds, 0, &cres, &ci), 0);
    cr_assert_eq(cres.n_pairs, 3);
    cr_assert_eq(cres.n_judgements, 6);
    cr_assert_float_eq(cres.accuracy, 0.5, 1e-12);
    cr_assert_float_eq(cres.both_right, 0.0, 1e-12);
    cr_assert_float_eq(cres.says_first, 1.0, 1e-12);
    cr_assert_eq(cres.n_valid, 6);
    cr_assert_float_eq(cres.invalid_rate, 0.0, 1e-12);
    cr_assert_float_eq(cres.format_rate, 1.0, 1e-12);
    for (size_t i = 0; i < ci.n; i++) {
        cr_assert_eq(ci.verdict[2 * i], 0);
        cr_assert_eq(ci.verdict[2 * i + 1], 0);
        cr_assert_eq(ci.right[2 * i] + ci.right[2 * i + 1], 1, "pair %zu right in one order", i);
        /* KEEP order shows answers[0] first: right iff preferred == 0 */
        const dataset_record_t *rec = dataset_get(fx.ds, ci.record[i]);
        cr_assert_eq(ci.right[2 * i], rec->preferred == 0);
    }
    eval_critic_items_free(&ci);

    /* Self-critique: all samples identical and the judge names the first
     * shown, so every match splits and candidate 0 wins; memoisation makes
     * N = 2, 4 free after N = 8: 7 matches x 2 orders per item. */
    int ns[3] = {2, 4, 8};
    eval_sc_result_t sr;
    eval_sc_items_t si;
    cr_assert_eq(eval_self_critique(ctx, fx.ds, 0, ns, 3, 1.0f, &rng, &sr, &si), 0);
    cr_assert_eq(sr.n_items, 4);
    cr_assert_eq(sr.judge_calls, 4 * 14, "judge generations %zu, expected %d", sr.judge_calls,
                 4 * 14);
    for (int k = 0; k < 3; k++) {
        cr_assert_eq(sr.rows[k].n, ns[k]);
        cr_assert_float_eq(sr.rows[k].tourney_acc, 0.5, 1e-12);
        cr_assert_float_eq(sr.rows[k].single_acc, 0.5, 1e-12);
        cr_assert_float_eq(sr.rows[k].majority_acc, 0.5, 1e-12);
        cr_assert_float_eq(sr.rows[k].oracle_acc, 0.5, 1e-12);
        cr_assert_float_eq(sr.rows[k].split_rate, 1.0, 1e-12);
    }
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(si.first[i], want[i]);
        for (int k = 0; k < 3; k++)
            cr_assert_eq(si.tourney[i * 3 + k], want[i]);
    }
    eval_sc_items_free(&si);

    eval_destroy(&ctx);
    cr_assert_null(ctx);
    eval_destroy(&ctx); /* no-op */
    model_destroy(&m);
    fixture_fini(&fx);
}

/* A random model: nothing is known about its answers, but the bookkeeping
 * is: per-item flags add up to the reported rates, every pair is judged in
 * two orders, rates lie in [0, 1], and a seed fixes everything. Its
 * vocabulary is larger than the tokenizer's: sampling one of the extra ids
 * would make decoding fail, so success also shows they are banned. */
Test(eval, random_model_counts_add_up_and_are_deterministic)
{
    fixture_t fx;
    fixture_init(&fx);
    model_t *m = random_model(tok_vocab_size(fx.tok) + EXTRA_IDS, 5);
    eval_ctx_t *ctx = make_ctx(m, fx.tok, PROMPT_CRITIC_FINAL_ONLY);
    eval_policy_result_t r1, r2;
    eval_policy_items_t it;
    rng_t rng;
    rng_seed(&rng, 9);
    cr_assert_eq(eval_policy(ctx, fx.ds, 3, 5, 1.0f, &rng, &r1, &it), 0);
    cr_assert_eq(r1.n_items, 3, "max_items 3");
    cr_assert_eq(it.n, 3);
    double g = 0, s = 0;
    for (size_t i = 0; i < it.n; i++) {
        g += it.greedy_correct[i];
        for (int k = 0; k < 5; k++)
            s += it.sample_correct[i * 5 + k];
        cr_assert_eq(dataset_get(fx.ds, it.record[i])->kind, DATASET_POLICY);
    }
    cr_assert_float_eq(r1.greedy_acc, g / 3, 1e-12);
    cr_assert_float_eq(r1.sample_acc, s / 15, 1e-12);
    assert_rate(r1.greedy_format, "greedy format");
    assert_rate(r1.sample_format, "sample format");
    cr_assert(r1.greedy_len >= 1 && r1.greedy_len <= 24, "greedy length %g", r1.greedy_len);
    cr_assert(r1.sample_len >= 1 && r1.sample_len <= 24, "sample length %g", r1.sample_len);
    cr_assert(r1.pass_at_n >= r1.sample_acc - 1e-12);
    rng_seed(&rng, 9);
    cr_assert_eq(eval_policy(ctx, fx.ds, 3, 5, 1.0f, &rng, &r2, NULL), 0);
    cr_assert(memcmp(&r1, &r2, sizeof(r1)) == 0, "same seed, different policy results");
    /* per-item random streams: the first item's samples do not depend on
     * how many items follow */
    eval_policy_items_t one;
    rng_seed(&rng, 9);
    cr_assert_eq(eval_policy(ctx, fx.ds, 1, 5, 1.0f, &rng, &r2, &one), 0);
    for (int k = 0; k < 5; k++) {
        const char *x = one.answers[k], *y = it.answers[k];
        cr_assert((x == NULL) == (y == NULL) && (!x || strcmp(x, y) == 0),
                  "sample %d of item 0 differs with max_items 1 vs 3", k);
        cr_assert_eq(one.sample_correct[k], it.sample_correct[k]);
        cr_assert_eq(one.sample_hash[k], it.sample_hash[k],
                     "sample %d of item 0: tokens differ with max_items 1 vs 3", k);
    }
    /* ... and the samples are random: not all 5 alike */
    int distinct = 0;
    for (int k = 1; k < 5; k++)
        distinct |= it.sample_hash[k] != it.sample_hash[0];
    cr_assert(distinct, "5 samples at T=1 from a random model all identical");
    /* another item has another stream */
    cr_assert_neq(it.sample_hash[5], it.sample_hash[0]);
    eval_policy_items_free(&one);
    eval_policy_items_free(&it);

    eval_critic_result_t c1, c2;
    eval_critic_items_t ci;
    cr_assert_eq(eval_critic(ctx, fx.ds, 0, &c1, &ci), 0);
    cr_assert_eq(c1.n_pairs, 3);
    cr_assert_eq(c1.n_judgements, 2 * c1.n_pairs, "both orders judged");
    double right = 0, both = 0;
    for (size_t i = 0; i < ci.n; i++) {
        right += ci.right[2 * i] + ci.right[2 * i + 1];
        both += ci.both[i];
        cr_assert_eq(ci.both[i], ci.right[2 * i] && ci.right[2 * i + 1]);
        cr_assert(ci.verdict[2 * i] >= -1 && ci.verdict[2 * i] <= 1);
    }
    cr_assert_float_eq(c1.accuracy, right / 6, 1e-12);
    cr_assert_float_eq(c1.both_right, both / 3, 1e-12);
    if (c1.n_valid > 0)
        assert_rate(c1.says_first, "says_first");
    else
        cr_assert(isnan(c1.says_first), "no valid verdict: says_first must be NaN, got %g",
                  c1.says_first);
    size_t n_valid = 0;
    for (size_t i = 0; i < 2 * ci.n; i++)
        n_valid += ci.verdict[i] >= 0;
    cr_assert_eq(c1.n_valid, n_valid, "n_valid %zu, per-item count %zu", c1.n_valid, n_valid);
    cr_assert_float_eq(c1.invalid_rate, (6.0 - (double)n_valid) / 6.0, 1e-12);
    assert_rate(c1.invalid_rate, "invalid_rate");
    assert_rate(c1.format_rate, "format_rate");
    cr_assert_eq(eval_critic(ctx, fx.ds, 2, &c2, NULL), 0);
    cr_assert_eq(c2.n_pairs, 2, "max_items 2");
    eval_critic_items_free(&ci);

    int ns[2] = {3, 5};
    eval_sc_result_t sr;
    rng_seed(&rng, 1);
    cr_assert_eq(eval_self_critique(ctx, fx.ds, 2, ns, 2, 1.0f, &rng, &sr, NULL), 0);
    cr_assert_eq(sr.n_items, 2);
    for (int k = 0; k < 2; k++) {
        const eval_sc_row_t *row = &sr.rows[k];
        assert_rate(row->tourney_acc, "tourney");
        assert_rate(row->single_acc, "single");
        assert_rate(row->majority_acc, "majority");
        assert_rate(row->split_rate, "split");
        cr_assert(row->oracle_acc >= row->tourney_acc && row->oracle_acc >= row->majority_acc &&
                      row->oracle_acc >= row->single_acc - 1e-12,
                  "oracle is an upper bound");
    }
    /* at most 2 * (5 - 1) judge generations per item (shared with N = 3) */
    cr_assert_leq(sr.judge_calls, 2 * 8);

    /* greedy only: the same greedy figures, no samples, no rng needed */
    eval_policy_result_t g0;
    cr_assert_eq(eval_policy(ctx, fx.ds, 3, 0, 0.0f, NULL, &g0, NULL), 0);
    cr_assert_eq(g0.n_items, 3);
    cr_assert_float_eq(g0.greedy_acc, r1.greedy_acc, 1e-12);
    cr_assert_float_eq(g0.greedy_len, r1.greedy_len, 1e-12);
    cr_assert_float_eq(g0.greedy_format, r1.greedy_format, 1e-12);
    cr_assert(g0.sample_acc == 0 && g0.pass_at_n == 0 && g0.sample_len == 0);

    /* bad arguments */
    cr_assert_eq(eval_policy(ctx, fx.ds, 0, 9, 1.0f, &rng, &r1, NULL), -EINVAL, "G > max_group");
    cr_assert_eq(eval_policy(ctx, fx.ds, 0, 2, 0.0f, &rng, &r1, NULL), -EINVAL, "temperature 0");
    int bad[1] = {9};
    cr_assert_eq(eval_self_critique(ctx, fx.ds, 0, bad, 1, 1.0f, &rng, &sr, NULL), -EINVAL);
    eval_destroy(&ctx);
    model_destroy(&m);
    fixture_fini(&fx);
}

Test(eval, rejects_mismatched_sizes)
{
    fixture_t fx;
    fixture_init(&fx);
    model_t *m = random_model(tok_vocab_size(fx.tok) - 1, 5); /* smaller than the tokenizer */
    eval_options_t o;
    eval_options_default(&o);
    char err[256] = "";
    cr_assert_null(eval_new(m, fx.tok, &o, err, sizeof(err)));
    cr_assert(strstr(err, "tokenizer"), "message names the tokenizer: %s", err);
    model_destroy(&m);
    m = random_model(tok_vocab_size(fx.tok), 5);
    o.max_new_tokens = 400; /* > max_seq_len 320 */
    cr_assert_null(eval_new(m, fx.tok, &o, err, sizeof(err)));
    cr_assert(strstr(err, "max_new_tokens"), "message names the option: %s", err);
    /* a model of another configuration cannot be swapped in */
    eval_options_default(&o);
    eval_ctx_t *ctx = eval_new(m, fx.tok, &o, err, sizeof(err));
    cr_assert_not_null(ctx, "%s", err);
    model_t *m2 = random_model(tok_vocab_size(fx.tok) + 1, 5);
    cr_assert_eq(eval_set_model(ctx, m2), -EINVAL);
    model_t *m3 = random_model(tok_vocab_size(fx.tok), 6);
    cr_assert_eq(eval_set_model(ctx, m3), 0);
    eval_destroy(&ctx);
    model_destroy(&m);
    model_destroy(&m2);
    model_destroy(&m3);
    fixture_fini(&fx);
}

/* Items are spread over worker threads but gathered in item order with a
 * random stream per item: 1 and 3 threads give bit-identical figures and
 * per-item outcomes. */
Test(eval, thread_count_does_not_change_results)
{
    fixture_t fx;
    fixture_init(&fx);
    model_t *m = random_model(tok_vocab_size(fx.tok), 21);
    eval_ctx_t *c1 = make_ctx_threads(m, fx.tok, PROMPT_CRITIC_FULL, 1);
    eval_ctx_t *c3 = make_ctx_threads(m, fx.tok, PROMPT_CRITIC_FULL, 3);
    rng_t r1, r3;
    eval_policy_result_t p1, p3;
    eval_policy_items_t i1, i3;
    rng_seed(&r1, 4);
    rng_seed(&r3, 4);
    cr_assert_eq(eval_policy(c1, fx.ds, 0, 3, 1.0f, &r1, &p1, &i1), 0);
    cr_assert_eq(eval_policy(c3, fx.ds, 0, 3, 1.0f, &r3, &p3, &i3), 0);
    cr_assert(memcmp(&p1, &p3, sizeof(p1)) == 0, "policy results differ with 3 threads");
    cr_assert_eq(memcmp(i1.sample_hash, i3.sample_hash, sizeof(uint64_t) * 12), 0);
    cr_assert_eq(memcmp(i1.record, i3.record, sizeof(size_t) * 4), 0);
    cr_assert_eq(memcmp(i1.greedy_correct, i3.greedy_correct, 4), 0);
    eval_policy_items_free(&i1);
    eval_policy_items_free(&i3);
    eval_critic_result_t q1, q3;
    eval_critic_items_t k1, k3;
    cr_assert_eq(eval_critic(c1, fx.ds, 0, &q1, &k1), 0);
    cr_assert_eq(eval_critic(c3, fx.ds, 0, &q3, &k3), 0);
    cr_assert(memcmp(&q1, &q3, sizeof(q1)) == 0 || (isnan(q1.says_first) && isnan(q3.says_first) &&
                                                    q1.accuracy == q3.accuracy &&
                                                    q1.n_valid == q3.n_valid),
              "critic results differ with 3 threads");
    cr_assert_eq(memcmp(k1.verdict, k3.verdict, 6), 0);
    cr_assert_eq(memcmp(k1.right, k3.right, 6), 0);
    eval_critic_items_free(&k1);
    eval_critic_items_free(&k3);
    int ns[2] = {2, 4};
    eval_sc_result_t s1, s3;
    eval_sc_items_t j1, j3;
    cr_assert_eq(eval_self_critique(c1, fx.ds, 0, ns, 2, 1.0f, &r1, &s1, &j1), 0);
    cr_assert_eq(eval_self_critique(c3, fx.ds, 0, ns, 2, 1.0f, &r3, &s3, &j3), 0);
    cr_assert(memcmp(&s1, &s3, sizeof(s1)) == 0, "self-critique results differ with 3 threads");
    cr_assert_eq(memcmp(j1.tourney, j3.tourney, 8), 0);
    cr_assert_eq(memcmp(j1.n_right, j3.n_right, 8), 0);
    eval_sc_items_free(&j1);
    eval_sc_items_free(&j3);
    eval_destroy(&c1);
    eval_destroy(&c3);
    model_destroy(&m);
    fixture_fini(&fx);
}

/* Caption scoring counts whole sentences: "middle: empty" is not found
 * inside "top middle: empty", each generated sentence counts once, and
 * only the full list in order is exact. */
Test(eval, caption_match_counts_whole_sentences)
{
    const char *ref = "top middle: empty. middle: red circle. bottom left: empty.";
    int m = -1, t = -1;
    cr_assert_eq(eval_caption_match(ref, ref, &m, &t), 1);
    cr_assert(m == 3 && t == 3, "identical: %d/%d", m, t);
    cr_assert_eq(eval_caption_match(ref, " top middle: empty.middle: red circle. bottom left: empty ",
                                    &m, &t),
                 1, "spacing and the last full stop do not matter");
    cr_assert_eq(eval_caption_match(ref, "middle: red circle. top middle: empty. bottom left: empty.",
                                    &m, &t),
                 0, "reordered is not exact");
    cr_assert(m == 3 && t == 3, "reordered still recalls all: %d/%d", m, t);
    cr_assert_eq(eval_caption_match("middle: empty.", "top middle: empty.", &m, &t), 0);
    cr_assert(m == 0 && t == 1, "a sentence inside another is no match: %d/%d", m, t);
    cr_assert_eq(eval_caption_match("a: x. a: x.", "a: x.", &m, &t), 0);
    cr_assert(m == 1 && t == 2, "one generated sentence matches once: %d/%d", m, t);
    cr_assert_eq(eval_caption_match(ref, "", &m, &t), 0);
    cr_assert(m == 0 && t == 3, "empty caption: %d/%d", m, t);
    cr_assert_eq(eval_caption_match(ref, "middle: blue circle. top middle: empty. garbage", &m, &t), 0);
    cr_assert(m == 1 && t == 3, "one right of three: %d/%d", m, t);
}
