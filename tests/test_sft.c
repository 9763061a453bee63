/* Tests of the supervised warm-up (common/sft.h): the record stream, the
 * batch builder (packing, prompt masking), a tiny end-to-end run through
 * sft_run, checkpoint reload and bit-exact resume. Everything runs on a
 * tiny built-in world (3x3 grid, 24 px images) written to a temp folder. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "dataset.h"
#include "kernels.h"
#include "model.h"
#include "prompt.h"
#include "sft.h"
#include "task.h"
#include "tokenizer.h"
#include "world.h"

static void make_tmpdir(char *dir, size_t cap)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(dir, cap, "%s/sft.XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp(%s) failed", dir);
}

static void rm_tree(const char *dir)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* A tiny run config: model d=32, 2 layers, 24 px images in 8 px patches
 * (9 image tokens); a 3x3 world of 40 training scenes. */
static void tiny_config(crl_config_t *c, const char *tmp, int steps)
{
    cr_assert_eq(config_defaults(c), 0);
    snprintf(c->run.dir, sizeof c->run.dir, "%s/runs", tmp);
    snprintf(c->run.name, sizeof c->run.name, "tiny");
    c->run.seed = 7;
    snprintf(c->data.dir, sizeof c->data.dir, "%s/data", tmp);
    c->data.grid = 3;
    c->data.image_size_px = 24;
    c->data.train_scenes = 40;
    c->data.val_scenes = 8;
    c->data.test_scenes = 4;
    c->tokenizer.vocab_size = 320;
    c->model.vocab_size = 320;
    c->model.dim = 32;
    c->model.n_layers = 2;
    c->model.n_heads = 2;
    c->model.n_kv_heads = 2;
    c->model.hidden_dim = 64;
    c->model.max_seq_len = 320;
    c->model.image_size = 24;
    c->model.patch_size = 8;
    c->sft.steps = steps;
    c->sft.batch_tokens = 1024;
    c->sft.lr = 3e-3;
    c->sft.warmup = 5;
    c->sft.checkpoint_every = 0;
    c->sft.threads = 1; /* bit-exact comparisons: one BLAS thread */
    char err[1024];
    cr_assert_eq(config_validate(c, err, sizeof err), 0, "tiny config invalid: %s", err);
}

static void quiet_options(sft_run_options_t *o)
{
    sft_run_options_default(o);
    o->quiet = 1;
    o->val_every = 0;
    o->val.policy_items = 0;
    o->val.critic_pairs = 0;
    o->val.caption_items = 0;
}

/* Writes the tiny world of c and loads the train split's three files
 * (index = dataset_kind_t) at the model's image size. */
static void tiny_data(const crl_config_t *c, dataset_t *sets[3])
{
    world_config_t wc;
    world_config_default(&wc);
    wc.rows = wc.cols = c->data.grid;
    wc.image_size = c->data.image_size_px;
    wc.seed = 3;
    char err[1024];
    cr_assert_eq(ckpt_mkdirs(c->data.dir, err, sizeof err), 0, "%s", err);
    cr_assert_eq(world_write_split(&wc, WORLD_SPLIT_TRAIN, (size_t)c->data.train_scenes, c->data.dir,
                                   NULL, err, sizeof err),
                 0, "world: %s", err);
    static const char *const files[3] = {"critic", "policy", "captions"};
    dataset_options_t o;
    dataset_options_default(&o);
    o.image_size = c->model.image_size;
    for (int k = 0; k < 3; k++) {
        char p[1200];
        snprintf(p, sizeof p, "%s/train.%s.jsonl", c->data.dir, files[k]);
        sets[k] = dataset_load(p, &o, err, sizeof err);
        cr_assert_not_null(sets[k], "dataset_load(%s): %s", p, err);
    }
}

/* A tokenizer trained on the questions, answers and captions of the sets. */
static tokenizer_t *tiny_tokenizer(dataset_t *sets[3], int vocab)
{
    size_t cap = 0;
    for (int k = 0; k < 3; k++)
        cap += 4 * dataset_size(sets[k]);
    const char **texts = calloc(cap, sizeof(char *));
    cr_assert_not_null(texts);
    int n = 0;
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < dataset_size(sets[k]); i++) {
            const dataset_record_t *r = dataset_get(sets[k], i);
            const char *f[4] = {r->question, r->reference, r->caption,
                                r->kind == DATASET_CRITIC ? r->answers[0] : NULL};
            for (int j = 0; j < 4; j++)
                if (f[j])
                    texts[n++] = f[j];
        }
    char err[256];
    tokenizer_t *tok = tok_train(texts, NULL, n, vocab, err, sizeof err);
    free(texts);
    cr_assert_not_null(tok, "tok_train: %s", err);
    return tok;
}

static void free_sets(dataset_t *sets[3])
{
    for (int k = 0; k < 3; k++)
        dataset_destroy(&sets[k]);
}

/* ------------------------------------------------------------------------ */

Test(sft, stream_is_deterministic_mixed_and_order_balanced)
{
    char tmp[400];
    make_tmpdir(tmp, sizeof tmp);
    crl_config_t c;
    tiny_config(&c, tmp, 10);
    dataset_t *sets[3];
    tiny_data(&c, sets);
    const double mix[3] = {0.4, 0.4, 0.2}; /* critic, policy, caption */
    char err[512];
    const dataset_t *cs[3] = {sets[0], sets[1], sets[2]};
    sft_stream_t *s = sft_stream_new(cs, 3, mix, 11, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(sft_stream_pool_size(s, DATASET_POLICY), dataset_size(sets[1]));

    sft_cursor_t a, b;
    sft_cursor_init(&a, 11);
    sft_cursor_init(&b, 11);
    const int N = 4000;
    int kind_n[3] = {0}, keep = 0, swap = 0;
    sft_cursor_t mid;
    const dataset_record_t *after_mid[50];
    for (int i = 0; i < N; i++) {
        if (i == 1000)
            mid = a;
        int oa, ob;
        const dataset_record_t *ra = sft_stream_next(s, &a, NULL, &oa);
        const dataset_record_t *rb = sft_stream_next(s, &b, NULL, &ob);
        cr_assert(ra && ra == rb && oa == ob, "draw %d differs between two cursors of one seed", i);
        if (i >= 1000 && i < 1050)
            after_mid[i - 1000] = ra;
        kind_n[ra->kind]++;
        if (ra->kind == DATASET_CRITIC)
            *(oa == PROMPT_ORDER_SWAP ? &swap : &keep) += 1;
        else
            cr_assert_eq(oa, PROMPT_ORDER_KEEP);
    }
    /* shares within 0.03 of the mix (binomial sd ~0.008 at N = 4000) */
    for (int k = 0; k < 3; k++)
        cr_assert(fabs((double)kind_n[k] / N - mix[k]) < 0.03, "kind %d share %.3f, mix %.2f", k,
                  (double)kind_n[k] / N, mix[k]);
    cr_assert(abs(keep - swap) <= 1, "critic orders unbalanced: keep %d swap %d", keep, swap);
    /* a saved cursor continues the same stream (what resume relies on) */
    for (int i = 0; i < 50; i++) {
        const dataset_record_t *r = sft_stream_next(s, &mid, NULL, NULL);
        cr_assert_eq(r, after_mid[i], "restored cursor draws another record at %d", i);
    }
    /* each pass over a pool visits every record once */
    sft_cursor_t e;
    sft_cursor_init(&e, 5);
    const double only_policy[3] = {0, 1, 0};
    sft_stream_t *sp = sft_stream_new(cs, 3, only_policy, 5, err, sizeof err);
    cr_assert_not_null(sp, "%s", err);
    size_t n = dataset_size(sets[1]);
    char *seen = calloc(n, 1);
    for (size_t i = 0; i < n; i++) {
        const dataset_record_t *r = sft_stream_next(sp, &e, NULL, NULL);
        size_t idx = (size_t)(r - dataset_get(sets[1], 0));
        cr_assert(idx < n && !seen[idx], "record %zu drawn twice in one pass", idx);
        seen[idx] = 1;
    }
    free(seen);
    sft_stream_destroy(&sp);
    sft_stream_destroy(&s);
    free_sets(sets);
    rm_tree(tmp);
}

Test(sft, batch_packs_to_budget_and_masks_the_prompt)
{
    char tmp[400];
    make_tmpdir(tmp, sizeof tmp);
    crl_config_t c;
    tiny_config(&c, tmp, 10);
    c.sft.batch_tokens = 700;
    dataset_t *sets[3];
    tiny_data(&c, sets);
    tokenizer_t *tok = tiny_tokenizer(sets, 320);
    const dataset_t *cs[3] = {sets[0], sets[1], sets[2]};
    char err[1024];
    sft_t *s = sft_new(&c, tok, cs, 3, err, sizeof err);
    cr_assert_not_null(s, "sft_new: %s", err);

    /* A second stream with the same seed and mix replays the records, so
     * the expected target of every sequence can be rebuilt independently. */
    const double mix[3] = {c.sft.mix_critic, c.sft.mix_policy, c.sft.mix_captions};
    sft_stream_t *ref = sft_stream_new(cs, 3, mix, (uint64_t)c.run.seed, err, sizeof err);
    cr_assert_not_null(ref, "%s", err);
    sft_cursor_t rc;
    sft_cursor_init(&rc, (uint64_t)c.run.seed);
    prompt_options_t popt;
    prompt_options_default(&popt);
    popt.variant = PROMPT_CRITIC_FINAL_ONLY; /* data.critic_variant default */

    const int n_patches = 9;
    char text[8192];
    int kinds_seen[3] = {0};
    for (int bi = 0; bi < 3; bi++) {
        sft_batch_t b;
        cr_assert_eq(sft_next_batch(s, &b), 0);
        int T = b.mb.n_tokens;
        cr_assert(T > 0 && T <= c.sft.batch_tokens, "batch %d has %d tokens (budget %d)", bi, T,
                  c.sft.batch_tokens);
        cr_assert_eq(b.mb.seq_start[0], 0);
        cr_assert_eq(b.mb.seq_start[b.mb.n_seqs], T);
        int n_targets = 0, n_img = 0;
        for (int q = 0; q < b.mb.n_seqs; q++) {
            int a = b.mb.seq_start[q], e = b.mb.seq_start[q + 1], p = b.seq_prompt_len[q];
            const dataset_t *ds;
            int order;
            const dataset_record_t *rec = sft_stream_next(ref, &rc, &ds, &order);
            cr_assert_eq((int)rec->kind, b.seq_kind[q], "seq %d: kind %d, expected %d", q,
                         b.seq_kind[q], (int)rec->kind);
            kinds_seen[rec->kind]++;
            prompt_task_t pt;
            cr_assert_eq(prompt_for_record(&popt, rec, order, NULL, &pt), 0);
            cr_assert_eq(b.mb.tokens[a], TOK_BOS);
            cr_assert_eq(b.mb.tokens[e - 1], TOK_EOS, "seq %d does not end with <eos>", q);
            cr_assert_eq(b.mb.tokens[a + 1], TOK_IMG);
            cr_assert_eq(b.mb.tokens[a + 2 + n_patches], TOK_IMG_END);
            for (int i = 0; i < n_patches; i++)
                cr_assert_eq(b.mb.tokens[a + 2 + i], MODEL_IMAGE_SLOT);
            n_img++;
            /* no loss on the prompt: targets start at the last prompt token */
            for (int t = a; t < a + p - 1; t++)
                cr_assert_eq(b.targets[t], -1, "seq %d: prompt position %d has a target", q, t - a);
            for (int t = a + p - 1; t < e - 1; t++) {
                cr_assert_eq(b.targets[t], b.mb.tokens[t + 1], "seq %d: target at %d is not the next token",
                             q, t - a);
                n_targets++;
            }
            cr_assert_eq(b.targets[e - 1], -1, "seq %d: <eos> position has a target", q);
            /* the targets are exactly the warm-up target text + <eos> */
            long len = tok_decode(tok, b.mb.tokens + a + p, e - a - p - 1, text, sizeof text);
            cr_assert(len >= 0);
            cr_assert_str_eq(text, pt.target, "seq %d: response decodes to\n%s\nexpected\n%s", q,
                             text, pt.target);
            /* and the prompt is the prompt text */
            len = tok_decode(tok, b.mb.tokens + a + 3 + n_patches, p - 3 - n_patches, text, sizeof text);
            cr_assert(len >= 0);
            cr_assert_str_eq(text, pt.text, "seq %d: prompt decodes to something else", q);
            prompt_task_free(&pt);
        }
        cr_assert_eq(b.n_targets, n_targets, "n_targets %d, counted %d", b.n_targets, n_targets);
        cr_assert_eq(b.mb.n_images, n_img);
        /* packed to the budget: the next record (first of the next batch) did not fit */
        sft_batch_t nb;
        sft_cursor_t save = *sft_cursor(s);
        cr_assert_eq(sft_next_batch(s, &nb), 0);
        int next_len = nb.mb.seq_start[1];
        cr_assert(T + next_len > c.sft.batch_tokens,
                  "batch %d: %d tokens, the next sequence (%d) would have fit in %d", bi, T,
                  next_len, c.sft.batch_tokens);
        /* put the cursor back: next iteration reads the same batch again */
        (void)save;
        sft_destroy(&s);
        s = sft_new(&c, tok, cs, 3, err, sizeof err);
        cr_assert_not_null(s);
        for (int j = 0; j <= bi; j++)
            cr_assert_eq(sft_next_batch(s, &nb), 0);
    }
    cr_assert(kinds_seen[0] && kinds_seen[1] && kinds_seen[2], "kinds seen %d/%d/%d", kinds_seen[0],
              kinds_seen[1], kinds_seen[2]);
    /* the loss of a batch is a mean over targets only: an untrained model is near ln(V) */
    sft_batch_t b;
    cr_assert_eq(sft_next_batch(s, &b), 0);
    double loss = sft_batch_loss(s, &b);
    double lnv = log((double)tok_vocab_size(tok));
    cr_assert(fabs(loss - lnv) < 0.5, "untrained loss %.3f, ln(V) = %.3f", loss, lnv);
    sft_stream_destroy(&ref);
    sft_destroy(&s);
    tok_destroy(&tok);
    free_sets(sets);
    rm_tree(tmp);
}

Test(sft, training_lowers_loss_and_checkpoint_reloads_to_identical_logits)
{
    char tmp[400];
    make_tmpdir(tmp, sizeof tmp);
    crl_config_t c;
    tiny_config(&c, tmp, 40);
    dataset_t *sets[3];
    tiny_data(&c, sets);
    tokenizer_t *tok = tiny_tokenizer(sets, 320);
    const dataset_t *cs[3] = {sets[0], sets[1], sets[2]};
    char err[1024];
    sft_t *s = sft_new(&c, tok, cs, 3, err, sizeof err);
    cr_assert_not_null(s, "sft_new: %s", err);
    k_set_threads(1);
    double first = 0, last = 0;
    for (int i = 0; i < 40; i++) {
        sft_step_stats_t st;
        cr_assert_eq(sft_step(s, &st), 0, "step %d failed", i);
        cr_assert(isfinite(st.loss) && isfinite(st.grad_norm), "step %d: loss %g grad %g", i,
                  st.loss, st.grad_norm);
        cr_assert_eq(st.step, i + 1);
        if (i < 5)
            first += st.loss / 5;
        if (i >= 35)
            last += st.loss / 5;
    }
    /* from ~ln(320) = 5.8: the template alone is worth far more than 1.5 nats */
    cr_assert(last < first - 1.5, "loss went from %.3f to %.3f (want a drop > 1.5)", first, last);

    char root[700];
    snprintf(root, sizeof root, "%s/ckpt", tmp);
    cr_assert_eq(sft_save(s, root, &c, 1.0, NULL, err, sizeof err), 0, "sft_save: %s", err);
    char dir[760];
    snprintf(dir, sizeof dir, "%s/latest", root);
    model_t *m2 = ckpt_load_model(dir, 0, err, sizeof err);
    cr_assert_not_null(m2, "ckpt_load_model(%s): %s", dir, err);
    model_t *m = sft_model(s);
    cr_assert_eq(m2->n_params, m->n_params);
    cr_assert_eq(memcmp(m2->params, m->params, m->n_params * sizeof(float)), 0,
                 "reloaded parameters differ");
    /* identical logits on a batch */
    sft_batch_t b;
    cr_assert_eq(sft_next_batch(s, &b), 0);
    model_acts_t *a1 = model_acts_new(m, b.mb.n_tokens, b.mb.n_seqs);
    model_acts_t *a2 = model_acts_new(m2, b.mb.n_tokens, b.mb.n_seqs);
    float *l1 = model_forward(m, a1, &b.mb);
    cr_assert_not_null(l1);
    size_t nl = (size_t)b.mb.n_tokens * (size_t)m->cfg.vocab_size;
    float *copy = malloc(nl * sizeof(float));
    memcpy(copy, l1, nl * sizeof(float));
    float *l2 = model_forward(m2, a2, &b.mb);
    cr_assert_not_null(l2);
    size_t diff = 0;
    for (size_t i = 0; i < nl; i++)
        diff += copy[i] != l2[i];
    cr_assert_eq(diff, 0, "%zu of %zu logits differ after reload", diff, nl);
    free(copy);
    model_acts_destroy(&a1);
    model_acts_destroy(&a2);
    model_destroy(&m2);
    sft_destroy(&s);
    tok_destroy(&tok);
    free_sets(sets);
    rm_tree(tmp);
}

static model_t *load_latest(const crl_config_t *c)
{
    char dir[1400], err[1024];
    snprintf(dir, sizeof dir, "%s/%s/ckpt/latest", c->run.dir, c->run.name);
    model_t *m = ckpt_load_model(dir, 0, err, sizeof err);
    cr_assert_not_null(m, "ckpt_load_model(%s): %s", dir, err);
    return m;
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int n = 0, ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

Test(sft, run_end_to_end_then_resume_matches_an_uninterrupted_run)
{
    char tmp[400];
    make_tmpdir(tmp, sizeof tmp);
    crl_config_t c;
    tiny_config(&c, tmp, 20);
    char err[2048];
    sft_run_options_t o;
    quiet_options(&o);
    o.val.policy_items = 4; /* a tiny final validation, to run that path */
    o.val.critic_pairs = 2;
    o.val.caption_items = 3;
    o.val.max_new_tokens = 24;

    c.sft.threads = 2; /* two data-parallel workers: still bit-exact across a resume */
    /* uninterrupted: generates the world and the tokenizer, trains 20 steps */
    snprintf(c.run.name, sizeof c.run.name, "whole");
    sft_summary_t sa;
    cr_assert_eq(sft_run(&c, &o, &sa, err, sizeof err), 0, "sft_run: %s", err);
    cr_assert_eq(sa.steps_done, 20);
    cr_assert_eq(sa.resumed, 0);
    cr_assert(sa.validated && sa.val.policy_n == 4 && sa.val.critic_n == 2 && sa.val.caption_n == 3,
              "final validation: %d policy items, %d pairs, %d captions", sa.val.policy_n,
              sa.val.critic_n, sa.val.caption_n);
    cr_assert(sa.val.caption_recall >= 0 && sa.val.caption_recall <= 1, "caption recall %g",
              sa.val.caption_recall);
    cr_assert(sa.final_loss < sa.first_loss - 0.5, "loss %.3f -> %.3f", sa.first_loss, sa.final_loss);
    char path[1400];
    snprintf(path, sizeof path, "%s/tokenizer.json", c.data.dir);
    cr_assert(access(path, F_OK) == 0, "no tokenizer saved at %s", path);
    snprintf(path, sizeof path, "%s/whole/metrics.jsonl", c.run.dir);
    int lines = count_lines(path);
    cr_assert(lines == 21, "metrics.jsonl has %d lines, expected 20 steps + 1 final validation", lines);
    snprintf(path, sizeof path, "%s/whole/ckpt/step-20/trainer.json", c.run.dir);
    cr_assert(access(path, F_OK) == 0, "missing %s", path);

    /* interrupted after 10 steps, then continued */
    snprintf(c.run.name, sizeof c.run.name, "split");
    o.stop_after = 10;
    sft_summary_t s1, s2;
    cr_assert_eq(sft_run(&c, &o, &s1, err, sizeof err), 0, "sft_run (first half): %s", err);
    cr_assert_eq(s1.steps_done, 10);
    snprintf(path, sizeof path, "%s/split/ckpt/step-10/optimizer.safetensors", c.run.dir);
    cr_assert(access(path, F_OK) == 0, "missing %s", path);
    o.stop_after = 0;
    cr_assert_eq(sft_run(&c, &o, &s2, err, sizeof err), 0, "sft_run (resume): %s", err);
    cr_assert_eq(s2.resumed, 1);
    cr_assert_eq(s2.steps_done, 20);
    snprintf(path, sizeof path, "%s/split/metrics.jsonl", c.run.dir);
    lines = count_lines(path);
    cr_assert(lines == 21, "resumed metrics.jsonl has %d lines, expected 21", lines);

    model_t *ma = load_latest(&c);
    snprintf(c.run.name, sizeof c.run.name, "whole");
    model_t *mb = load_latest(&c);
    cr_assert_eq(ma->n_params, mb->n_params);
    size_t diff = 0;
    for (size_t i = 0; i < ma->n_params; i++)
        diff += memcmp(&ma->params[i], &mb->params[i], sizeof(float)) != 0;
    cr_assert_eq(diff, 0, "%zu of %zu weights differ between 20 steps and 10 + resumed 10", diff,
                 ma->n_params);
    model_destroy(&ma);
    model_destroy(&mb);

    /* a run already at sft.steps does nothing but report */
    sft_summary_t s3;
    cr_assert_eq(sft_run(&c, &o, &s3, err, sizeof err), 0, "sft_run (done): %s", err);
    cr_assert_eq(s3.steps_done, 20);
    cr_assert(s3.validated && s3.val.policy_n == 4, "the stored validation was not reported");
    cr_assert(s3.val.caption_n == 3 && s3.val.caption_recall == sa.val.caption_recall,
              "stored caption validation: %d captions, recall %g (the run reported %g)",
              s3.val.caption_n, s3.val.caption_recall, sa.val.caption_recall);
    snprintf(path, sizeof path, "%s/whole/metrics.jsonl", c.run.dir);
    lines = count_lines(path);
    cr_assert(lines == 21, "a finished run re-run changed metrics.jsonl to %d lines", lines);
    rm_tree(tmp);
}

Test(sft, bad_checkpoint_and_missing_data_are_named)
{
    char tmp[400];
    make_tmpdir(tmp, sizeof tmp);
    crl_config_t c;
    tiny_config(&c, tmp, 4);
    char err[2048];
    sft_run_options_t o;
    quiet_options(&o);
    cr_assert_eq(sft_run(&c, &o, NULL, err, sizeof err), 0, "sft_run: %s", err);
    /* corrupt trainer.json: resume must fail naming the file */
    char path[1400];
    snprintf(path, sizeof path, "%s/tiny/ckpt/latest/trainer.json", c.run.dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("{\"format\": \"crl-sft-trainer\", \"version\": 1, \"step\": \"x\"}", f);
    fclose(f);
    c.sft.steps = 8;
    cr_assert_neq(sft_run(&c, &o, NULL, err, sizeof err), 0, "a corrupt trainer.json was accepted");
    cr_assert(strstr(err, "trainer.json") != NULL, "error does not name trainer.json: %s", err);
    /* a model of another shape in the run folder is refused, naming the key */
    snprintf(c.run.name, sizeof c.run.name, "tiny2");
    c.sft.steps = 2;
    cr_assert_eq(sft_run(&c, &o, NULL, err, sizeof err), 0, "sft_run: %s", err);
    c.model.dim = 64;
    c.sft.steps = 4;
    cr_assert_neq(sft_run(&c, &o, NULL, err, sizeof err), 0, "a mismatched checkpoint was accepted");
    cr_assert(strstr(err, "model.dim") != NULL, "error does not name model.dim: %s", err);
    /* a data folder with other files but none of the train stem: no world is generated */
    snprintf(c.data.dir, sizeof c.data.dir, "%s/other", tmp);
    snprintf(c.data.train, sizeof c.data.train, "mine");
    snprintf(c.run.name, sizeof c.run.name, "tiny3");
    c.model.dim = 32;
    cr_assert_neq(sft_run(&c, &o, NULL, err, sizeof err), 0);
    cr_assert(strstr(err, "mine") != NULL, "error does not name the stem: %s", err);
    rm_tree(tmp);
}

Test(sft, two_workers_match_one_worker)
{
    char tmp[400];
    make_tmpdir(tmp, sizeof tmp);
    crl_config_t c;
    tiny_config(&c, tmp, 6);
    dataset_t *sets[3];
    tiny_data(&c, sets);
    tokenizer_t *tok = tiny_tokenizer(sets, 320);
    const dataset_t *cs[3] = {sets[0], sets[1], sets[2]};
    char err[1024];
    k_set_threads(1);
    sft_t *one = sft_new(&c, tok, cs, 3, err, sizeof err);
    cr_assert_not_null(one, "%s", err);
    c.sft.threads = 3;
    sft_t *three = sft_new(&c, tok, cs, 3, err, sizeof err);
    cr_assert_not_null(three, "%s", err);
    for (int i = 0; i < 6; i++) {
        sft_step_stats_t a, b;
        cr_assert_eq(sft_step(one, &a), 0);
        cr_assert_eq(sft_step(three, &b), 0);
        /* same batch, gradients summed in another order: float rounding only */
        cr_assert(fabs(a.loss - b.loss) < 1e-4 * fabs(a.loss) + 1e-5,
                  "step %d: loss %.7f with 1 worker, %.7f with 3", i, a.loss, b.loss);
        cr_assert(fabsf(a.grad_norm - b.grad_norm) < 1e-3f * a.grad_norm,
                  "step %d: grad norm %.6f vs %.6f", i, a.grad_norm, b.grad_norm);
        cr_assert_eq(a.n_tokens, b.n_tokens);
    }
    const model_t *m1 = sft_model(one), *m3 = sft_model(three);
    double num = 0, den = 0;
    for (size_t i = 0; i < m1->n_params; i++) {
        double d = (double)m1->params[i] - m3->params[i];
        num += d * d;
        den += (double)m1->params[i] * m1->params[i];
    }
    cr_assert(sqrt(num / den) < 1e-4, "weights differ by %.2e (relative L2) after 6 steps",
              sqrt(num / den));
    sft_destroy(&one);
    sft_destroy(&three);
    tok_destroy(&tok);
    free_sets(sets);
    rm_tree(tmp);
}
