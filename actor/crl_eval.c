/* crl-eval: evaluates a checkpoint on a data split — as a critic (every
 * pair judged greedily in both orders), as a policy (greedy and sampled)
 * and as its own judge (self-critique best-of-N) — and prints one table;
 * with --compare, also the paired differences against a baseline
 * checkpoint (gained / lost items, exact sign test, bootstrap interval).
 * Figures can be written as JSON. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "config.h"
#include "dataset.h"
#include "eval.h"
#include "log.h"
#include "rng.h"
#include "stats.h"
#include "tokenizer.h"

#define N_BOOT 2000
#define MAX_METRICS 48

static void usage(FILE *f)
{
    fprintf(f,
            "usage: crl-eval --ckpt DIR [options]\n"
            "Evaluates the checkpoint in DIR (model.safetensors, config.json; tokenizer.json\n"
            "beside it, else tokenizer.path, else <data.dir>/tokenizer.json; its\n"
            "run_config.json, when present, is the base config under --config/--set) on\n"
            "<data.dir>/<stem>.policy.jsonl and <data.dir>/<stem>.critic.jsonl and prints one\n"
            "table: critic accuracy (each pair judged in both orders), both-orders-right,\n"
            "says-first rate (position bias, 0.5 = none), policy greedy accuracy, mean@N,\n"
            "majority@N, pass@N, format rate, length, and self-critique best-of-N (the\n"
            "model's own knockout tournament) beside single-sample, majority and oracle.\n"
            "\n"
            "  --ckpt DIR          checkpoint to evaluate (the 'after' model)\n"
            "  --compare DIR2      baseline checkpoint ('before'): adds paired differences\n"
            "                      (ckpt - baseline), gained/lost items, exact sign-test p and a\n"
            "                      %d-resample paired bootstrap 95%% interval per accuracy\n"
            "  --split NAME        train | val | test (the stems data.train/val/test) or a file\n"
            "                      stem; default test\n"
            "  --items N           items per task (default eval.max_items; 0 = all)\n"
            "  --samples N         samples per question for mean@N etc. (default eval.n_samples)\n"
            "  --ns LIST           self-critique N values, e.g. 2,4,8 (default: powers of two\n"
            "                      up to --samples, and --samples itself)\n"
            "  --temperature T     sampling temperature (default rl.temperature)\n"
            "  --rule R            self-critique when the two orders of a match disagree:\n"
            "                      first (default: the earlier sample wins), valid (a lone valid\n"
            "                      verdict decides, else the earlier sample), one-order (judge each\n"
            "                      match once, earlier sample shown first)\n"
            "  --no-self-critique  skip self-critique (also eval.self_critique=false)\n"
            "  --claims            with --compare: the paper's three claims beside the paired\n"
            "                      figures (base = --compare, RL = --ckpt), each with a verdict\n"
            "  --threads N         worker threads (default actor.threads)\n"
            "  --json OUT          write every figure (and the settings) as JSON\n"
            "  --config FILE       run config (repeatable); --set section.key=value overrides\n"
            "  --help-config       every config key\n"
            "  --help              this text\n"
            "\n"
            "Also from the config: data.dir, data.critic_variant, data.verdict_labels,\n"
            "data.on_error, rl.max_new_tokens, rl.top_p, rl.reward_w_pref/format, run.seed (all\n"
            "sampling, one random stream per item, the same for both models).\n"
            "\n"
            "Threads: evaluation is an actor's job, so it uses actor.threads threads (--threads\n"
            "overrides), each evaluating different items with its own sampler; OpenBLAS runs\n"
            "single-threaded, because a decode step's matrices (G <= 8 rows) are too small to\n"
            "split. Every figure is the same whatever the thread count.\n",
            N_BOOT);
}

/* ---- small helpers ------------------------------------------------------- */

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || !end || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "crl-eval: %s '%s': expected an integer in %ld..%ld\n", opt, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- per-model figures as a flat list of metrics ------------------------- */

typedef struct {
    char key[48];      /* JSON key */
    char label[48];    /* table text */
    double value;
    size_t n;          /* items behind the value */
    double *item;      /* (n) per-item outcome for paired tests; NULL = a rate without a test */
    int binary;        /* per-item outcomes are 0/1: Wilson interval applies */
    int is_len;        /* a length, not a rate (printed with one decimal) */
} metric_t;

typedef struct {
    metric_t m[MAX_METRICS];
    int n;
    double seconds[3]; /* critic, policy, self-critique */
    size_t judge_calls;
} report_t;

static void report_free(report_t *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->m[i].item);
    memset(r, 0, sizeof(*r));
}

/* Adds a metric; item (n values) is copied from u8 (scaled by 1/div) when given. */
static int add_metric(report_t *r, const char *key, const char *label, double value, size_t n,
                      const uint8_t *u8, size_t stride, size_t off, double div, int binary)
{
    if (r->n >= MAX_METRICS)
        return -ENOSPC;
    metric_t *m = &r->m[r->n];
    memset(m, 0, sizeof(*m));
    snprintf(m->key, sizeof(m->key), "%s", key);
    snprintf(m->label, sizeof(m->label), "%s", label);
    m->value = value;
    m->n = n;
    m->binary = binary;
    if (u8 && n) {
        m->item = malloc(sizeof(double) * n);
        if (!m->item)
            return -ENOMEM;
        for (size_t i = 0; i < n; i++)
            m->item[i] = u8[i * stride + off] / div;
    }
    r->n++;
    return 0;
}

typedef struct {
    const dataset_t *policy, *critic;
    size_t max_items;
    int n_samples;
    int ns[EVAL_MAX_NS];
    int n_ns;
    float temperature;
    uint64_t seed;
} plan_t;

/* Runs every evaluation of the plan with the context's current model. */
static int evaluate(eval_ctx_t *ctx, const plan_t *p, report_t *r)
{
    memset(r, 0, sizeof(*r));
    int rc = 0;
    double t0;
    if (p->critic) {
        eval_critic_result_t cr;
        eval_critic_items_t ci;
        t0 = now_s();
        if ((rc = eval_critic(ctx, p->critic, p->max_items, &cr, &ci)) != 0)
            return rc;
        r->seconds[0] = now_s() - t0;
        /* a pair's outcome is the mean of its two orders */
        uint8_t *pair = malloc(ci.n ? ci.n : 1);
        if (!pair) {
            eval_critic_items_free(&ci);
            return -ENOMEM;
        }
        for (size_t i = 0; i < ci.n; i++)
            pair[i] = (uint8_t)(ci.right[2 * i] + ci.right[2 * i + 1]);
        rc = add_metric(r, "critic_accuracy", "critic accuracy (2 orders)", cr.accuracy, ci.n, pair,
                        1, 0, 2.0, 0);
        if (!rc)
            rc = add_metric(r, "critic_both_orders", "critic both orders right", cr.both_right,
                            ci.n, ci.both, 1, 0, 1.0, 1);
        if (!rc)
            rc = add_metric(r, "critic_says_first", "critic says first (0.5=none)", cr.says_first,
                            cr.n_valid, NULL, 0, 0, 1, 0);
        if (!rc)
            rc = add_metric(r, "critic_invalid", "critic invalid verdicts", cr.invalid_rate,
                            cr.n_judgements, NULL, 0, 0, 1, 0);
        if (!rc)
            rc = add_metric(r, "critic_format", "critic format", cr.format_rate, cr.n_judgements,
                            NULL, 0, 0, 1, 0);
        if (!rc && (rc = add_metric(r, "critic_length", "critic length (tokens)", cr.mean_len,
                                    cr.n_judgements, NULL, 0, 0, 1, 0)) == 0)
            r->m[r->n - 1].is_len = 1;
        free(pair);
        eval_critic_items_free(&ci);
        if (rc)
            return rc;
    }
    if (p->policy) {
        eval_policy_result_t pr;
        eval_policy_items_t pi;
        rng_t rng;
        rng_seed_stream(&rng, p->seed, 1);
        t0 = now_s();
        if ((rc = eval_policy(ctx, p->policy, p->max_items, p->n_samples, p->temperature, &rng,
                              &pr, &pi)) != 0)
            return rc;
        r->seconds[1] = now_s() - t0;
        const size_t n = pi.n;
        const int S = p->n_samples;
        uint8_t *cnt = malloc(n ? n : 1), *any = malloc(n ? n : 1), *maj = malloc(n ? n : 1);
        if (!cnt || !any || !maj)
            rc = -ENOMEM;
        for (size_t i = 0; !rc && i < n; i++) {
            cnt[i] = any[i] = 0;
            for (int g = 0; g < S; g++)
                cnt[i] = (uint8_t)(cnt[i] + pi.sample_correct[i * (size_t)S + (size_t)g]);
            any[i] = cnt[i] > 0;
            maj[i] = pi.majority[i] >= 0 &&
                     pi.sample_correct[i * (size_t)S + (size_t)pi.majority[i]];
        }
        char label[48], key[48];
        if (!rc)
            rc = add_metric(r, "policy_greedy", "policy greedy accuracy", pr.greedy_acc, n,
                            pi.greedy_correct, 1, 0, 1, 1);
        snprintf(label, sizeof label, "policy mean@%d", S);
        if (!rc)
            rc = add_metric(r, "policy_mean_at_n", label, pr.sample_acc, n, cnt, 1, 0, S, 0);
        snprintf(label, sizeof label, "policy majority@%d", S);
        if (!rc)
            rc = add_metric(r, "policy_majority_at_n", label, pr.majority_acc, n, maj, 1, 0, 1, 1);
        snprintf(label, sizeof label, "policy pass@%d", S);
        if (!rc)
            rc = add_metric(r, "policy_pass_at_n", label, pr.pass_at_n, n, any, 1, 0, 1, 1);
        if (!rc)
            rc = add_metric(r, "policy_format", "policy format (greedy)", pr.greedy_format, n,
                            pi.greedy_format, 1, 0, 1, 1);
        snprintf(key, sizeof key, "policy_sample_format");
        if (!rc)
            rc = add_metric(r, key, "policy format (sampled)", pr.sample_format, n * (size_t)S,
                            NULL, 0, 0, 1, 0);
        if (!rc && (rc = add_metric(r, "policy_length", "policy length (greedy, tokens)",
                                    pr.greedy_len, n, NULL, 0, 0, 1, 0)) == 0)
            r->m[r->n - 1].is_len = 1;
        if (!rc && (rc = add_metric(r, "policy_sample_length", "policy length (sampled)",
                                    pr.sample_len, n * (size_t)S, NULL, 0, 0, 1, 0)) == 0)
            r->m[r->n - 1].is_len = 1;
        free(cnt);
        free(any);
        free(maj);
        eval_policy_items_free(&pi);
        if (rc)
            return rc;
    }
    if (p->policy && p->n_ns > 0) {
        eval_sc_result_t sr;
        eval_sc_items_t si;
        rng_t rng;
        rng_seed_stream(&rng, p->seed, 2);
        t0 = now_s();
        if ((rc = eval_self_critique(ctx, p->policy, p->max_items, p->ns, p->n_ns, p->temperature,
                                     &rng, &sr, &si)) != 0)
            return rc;
        r->seconds[2] = now_s() - t0;
        r->judge_calls = sr.judge_calls;
        const size_t n = si.n, K = (size_t)si.n_ns;
        for (int k = 0; k < p->n_ns && !rc; k++) {
            const eval_sc_row_t *row = &sr.rows[k];
            char key[48], label[48];
            snprintf(key, sizeof key, "sc%d_tournament", row->n);
            snprintf(label, sizeof label, "self-critique N=%d best-of-N", row->n);
            rc = add_metric(r, key, label, row->tourney_acc, n, si.tourney, K, (size_t)k, 1, 1);
            snprintf(key, sizeof key, "sc%d_single", row->n);
            snprintf(label, sizeof label, "  N=%d single sample (mean)", row->n);
            if (!rc)
                rc = add_metric(r, key, label, row->single_acc, n, si.n_right, K, (size_t)k,
                                row->n, 0);
            snprintf(key, sizeof key, "sc%d_majority", row->n);
            snprintf(label, sizeof label, "  N=%d majority vote", row->n);
            if (!rc)
                rc = add_metric(r, key, label, row->majority_acc, n, si.majority, K, (size_t)k, 1,
                                1);
            snprintf(key, sizeof key, "sc%d_oracle", row->n);
            snprintf(label, sizeof label, "  N=%d oracle (any right)", row->n);
            if (!rc)
                rc = add_metric(r, key, label, row->oracle_acc, n, si.oracle, K, (size_t)k, 1, 1);
            snprintf(key, sizeof key, "sc%d_split_rate", row->n);
            snprintf(label, sizeof label, "  N=%d matches split by order", row->n);
            if (!rc)
                rc = add_metric(r, key, label, row->split_rate, n, NULL, 0, 0, 1, 0);
        }
        eval_sc_items_free(&si);
    }
    return rc;
}

/* ---- output -------------------------------------------------------------- */

static void fmt_value(const metric_t *m, char *buf, size_t len)
{
    if (m->n == 0 || !isfinite(m->value))
        snprintf(buf, len, "-");
    else if (m->is_len)
        snprintf(buf, len, "%.1f", m->value);
    else
        snprintf(buf, len, "%.3f", m->value);
}

static void print_single(const report_t *r, const char *name)
{
    printf("%-32s %9s %6s  %s\n", "metric", name, "n", "95% CI (Wilson)");
    for (int i = 0; i < r->n; i++) {
        const metric_t *m = &r->m[i];
        char v[32], ci[48] = "";
        fmt_value(m, v, sizeof v);
        if (m->binary && m->item && m->n) {
            double k = 0, lo, hi;
            for (size_t j = 0; j < m->n; j++)
                k += m->item[j];
            stats_wilson((size_t)(k + 0.5), m->n, 1.959963984540054, &lo, &hi);
            snprintf(ci, sizeof ci, "[%.3f, %.3f]", lo, hi);
        }
        printf("%-32s %9s %6zu  %s\n", m->label, v, m->n, ci);
    }
}

static int print_compare(const report_t *a, const report_t *b, uint64_t seed, cJSON *paired)
{
    printf("%-32s %9s %9s %8s %11s %8s  %s\n", "metric", "baseline", "ckpt", "diff",
           "gained/lost", "p(sign)", "95% CI of diff (bootstrap)");
    for (int i = 0; i < b->n && i < a->n; i++) {
        const metric_t *ma = &a->m[i], *mb = &b->m[i];
        char va[32], vb[32];
        fmt_value(ma, va, sizeof va);
        fmt_value(mb, vb, sizeof vb);
        if (!ma->item || !mb->item || ma->n != mb->n || ma->n == 0) {
            char d[32] = "-";
            double diff = mb->value - ma->value;
            if (ma->n && mb->n && isfinite(diff))
                snprintf(d, sizeof d, mb->is_len ? "%+.1f" : "%+.3f", diff);
            printf("%-32s %9s %9s %8s\n", mb->label, va, vb, d);
            continue;
        }
        rng_t rng;
        rng_seed_stream(&rng, seed, 100 + (uint64_t)i); /* one stream per metric */
        stats_paired_t s;
        int rc = stats_paired(ma->item, mb->item, ma->n, N_BOOT, 0.95, &rng, &s);
        if (rc)
            return rc;
        char gl[32];
        snprintf(gl, sizeof gl, "%zu/%zu", s.gained, s.lost);
        printf("%-32s %9s %9s %+8.3f %11s %8.3g  [%+.3f, %+.3f]\n", mb->label, va, vb, s.diff, gl,
               s.p_sign, s.ci_lo, s.ci_hi);
        cJSON *o = cJSON_AddObjectToObject(paired, mb->key);
        if (!o || !cJSON_AddNumberToObject(o, "baseline", s.mean_a) ||
            !cJSON_AddNumberToObject(o, "ckpt", s.mean_b) ||
            !cJSON_AddNumberToObject(o, "diff", s.diff) ||
            !cJSON_AddNumberToObject(o, "gained", (double)s.gained) ||
            !cJSON_AddNumberToObject(o, "lost", (double)s.lost) ||
            !cJSON_AddNumberToObject(o, "p_sign", s.p_sign) ||
            !cJSON_AddNumberToObject(o, "ci95_lo", s.ci_lo) ||
            !cJSON_AddNumberToObject(o, "ci95_hi", s.ci_hi) ||
            !cJSON_AddNumberToObject(o, "n", (double)s.n) ||
            !cJSON_AddNumberToObject(o, "n_boot", s.n_boot))
            return -ENOMEM;
    }
    return 0;
}


static const metric_t *find_metric(const report_t *r, const char *key)
{
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->m[i].key, key))
            return &r->m[i];
    return NULL;
}

/* Verdict on a paired difference: only a significant change counts — the
 * sign test AND the bootstrap interval of the mean difference must agree.
 * (With per-item fractions, e.g. a single sample's mean accuracy, nearly
 * every item "changes", so the sign test alone speaks about the median and
 * can call a tiny mean difference significant.) */
static const char *claim_verdict(const stats_paired_t *s)
{
    if (s->p_sign < 0.05 && s->diff > 0 && s->ci_lo > 0)
        return "SUPPORTED (p < 0.05, CI > 0)";
    if (s->p_sign < 0.05 && s->diff < 0 && s->ci_hi < 0)
        return "CONTRADICTED (significant drop)";
    return "NOT SHOWN (no significant change)";
}

/* One claim row: paired test of metric kb in report b against ka in report a. */
static int claim_row(cJSON *arr, const char *claim, const char *what, const report_t *a,
                     const char *ka, const report_t *b, const char *kb, uint64_t seed, int stream)
{
    const metric_t *ma = find_metric(a, ka), *mb = find_metric(b, kb);
    if (!ma || !mb || !ma->item || !mb->item || ma->n != mb->n || ma->n == 0) {
        printf("%-44s %-34s %s\n", claim, what, "not measured (evaluation skipped)");
        return 0;
    }
    rng_t rng;
    rng_seed_stream(&rng, seed, 1000 + (uint64_t)stream);
    stats_paired_t s;
    int rc = stats_paired(ma->item, mb->item, ma->n, N_BOOT, 0.95, &rng, &s);
    if (rc)
        return rc;
    char fig[128];
    snprintf(fig, sizeof fig, "%.3f -> %.3f (%+.3f, p=%.2g, CI [%+.3f, %+.3f])", s.mean_a, s.mean_b,
             s.diff, s.p_sign, s.ci_lo, s.ci_hi);
    const char *verdict = claim_verdict(&s);
    printf("%-44s %-34s %-52s %s\n", claim, what, fig, verdict);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddItemToArray(arr, o) || !cJSON_AddStringToObject(o, "claim", claim) ||
        !cJSON_AddStringToObject(o, "measure", what) ||
        !cJSON_AddNumberToObject(o, "before", s.mean_a) ||
        !cJSON_AddNumberToObject(o, "after", s.mean_b) || !cJSON_AddNumberToObject(o, "diff", s.diff) ||
        !cJSON_AddNumberToObject(o, "p_sign", s.p_sign) ||
        !cJSON_AddNumberToObject(o, "ci95_lo", s.ci_lo) ||
        !cJSON_AddNumberToObject(o, "ci95_hi", s.ci_hi) || !cJSON_AddNumberToObject(o, "n", (double)s.n) ||
        !cJSON_AddStringToObject(o, "verdict", verdict))
        return -ENOMEM;
    return 0;
}

/* The paper's three claims beside what this run measured (base = a, RL = b). */
static int print_claims(const report_t *base, const report_t *rl, uint64_t seed, int max_n,
                        cJSON *arr)
{
    printf("\nThe paper's claims (LLaVA-Critic-R1) against this run, paired on the same items:\n");
    printf("%-44s %-34s %-52s %s\n", "claim", "measure", "base -> RL (diff, sign-test p, 95% CI)",
           "verdict");
    int rc = claim_row(arr, "1. RL on critic data makes a better critic", "critic accuracy (both orders)",
                       base, "critic_accuracy", rl, "critic_accuracy", seed, 1);
    if (!rc)
        rc = claim_row(arr, "2. ... and a better policy (never trained", "policy greedy accuracy", base,
                       "policy_greedy", rl, "policy_greedy", seed, 2);
    if (!rc)
        printf("%-44s\n", "   on answers)");
    char tk[48], sk[48], mk[48], label[64];
    snprintf(tk, sizeof tk, "sc%d_tournament", max_n);
    snprintf(sk, sizeof sk, "sc%d_single", max_n);
    snprintf(mk, sizeof mk, "sc%d_majority", max_n);
    snprintf(label, sizeof label, "RL: single sample -> best-of-%d", max_n);
    if (!rc)
        rc = claim_row(arr, "3. self-critique at test time (best-of-N", label, rl, sk, rl, tk, seed, 3);
    if (!rc) {
        printf("%-44s\n", "   by the model's own judgement) helps");
        snprintf(label, sizeof label, "RL: majority@%d -> best-of-%d", max_n, max_n);
        rc = claim_row(arr, "   (stronger bar: beat majority vote)", label, rl, mk, rl, tk, seed, 4);
    }
    printf("Verdicts need p < 0.05 (exact sign test on items that changed) and a bootstrap 95%% CI of\n"
           "the difference that excludes 0; RECIPE.md explains why claim 2 is not expected to appear\n"
           "by itself at this scale.\n");
    return rc;
}

static cJSON *report_json(const report_t *r, const char *ckpt)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "ckpt", ckpt))
        goto fail;
    cJSON *fig = cJSON_AddObjectToObject(o, "metrics");
    if (!fig)
        goto fail;
    for (int i = 0; i < r->n; i++) {
        cJSON *m = cJSON_AddObjectToObject(fig, r->m[i].key);
        if (!m || !cJSON_AddNumberToObject(m, "value", r->m[i].value) ||
            !cJSON_AddNumberToObject(m, "n", (double)r->m[i].n))
            goto fail;
    }
    if (!cJSON_AddNumberToObject(o, "seconds_critic", r->seconds[0]) ||
        !cJSON_AddNumberToObject(o, "seconds_policy", r->seconds[1]) ||
        !cJSON_AddNumberToObject(o, "seconds_self_critique", r->seconds[2]) ||
        !cJSON_AddNumberToObject(o, "judge_generations", (double)r->judge_calls))
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

static int write_text_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "crl-eval: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    int bad = fputs(text, f) == EOF || fputc('\n', f) == EOF;
    if (fclose(f) != 0 || bad) {
        fprintf(stderr, "crl-eval: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- loading ------------------------------------------------------------- */

static model_t *load_model(const char *dir)
{
    char path[4096], err[1024];
    if (!dir_exists(dir)) {
        fprintf(stderr, "crl-eval: checkpoint folder %s not found\n", dir);
        return NULL;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!file_exists(path)) {
        fprintf(stderr, "crl-eval: %s is not a checkpoint: %s is missing\n", dir, path);
        return NULL;
    }
    model_t *m = ckpt_load_model(dir, 0, err, sizeof err);
    if (!m)
        fprintf(stderr, "crl-eval: cannot load checkpoint %s: %s\n", dir, err);
    return m;
}

static tokenizer_t *load_tokenizer(const char *ckpt, const crl_config_t *cfg)
{
    char path[4096], err[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", ckpt);
    if (!file_exists(path)) {
        if (cfg->tokenizer.path[0])
            snprintf(path, sizeof path, "%s", cfg->tokenizer.path);
        else
            snprintf(path, sizeof path, "%s/tokenizer.json", cfg->data.dir);
        if (!file_exists(path)) {
            fprintf(stderr,
                    "crl-eval: no tokenizer: neither %s/tokenizer.json nor %s exists (set "
                    "tokenizer.path or data.dir)\n",
                    ckpt, path);
            return NULL;
        }
    }
    tokenizer_t *tok = tok_load(path, err, sizeof err);
    if (!tok)
        fprintf(stderr, "crl-eval: cannot load tokenizer %s: %s\n", path, err);
    else
        log_info("tokenizer %s (%d ids)", path, tok_vocab_size(tok));
    return tok;
}

static dataset_t *load_split(const crl_config_t *cfg, const char *stem, const char *what,
                             int image_size, int *missing)
{
    char path[4096], err[2048];
    snprintf(path, sizeof path, "%s/%s.%s.jsonl", cfg->data.dir, stem, what);
    *missing = 0;
    if (!file_exists(path)) {
        *missing = 1;
        log_warn("%s not found: no %s evaluation", path, what);
        return NULL;
    }
    dataset_options_t o;
    dataset_options_default(&o);
    o.image_size = image_size;
    o.on_error = cfg->data.on_error == CONFIG_ON_ERROR_STOP ? DATASET_ON_ERROR_STOP
                                                            : DATASET_ON_ERROR_SKIP;
    dataset_t *ds = dataset_load(path, &o, err, sizeof err);
    if (!ds)
        fprintf(stderr, "crl-eval: cannot load %s: %s\n", path, err);
    return ds;
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
    log_set_tag("eval");
    crl_config_t cfg;
    char err[2048];
    if (config_defaults(&cfg) != 0) {
        fprintf(stderr, "crl-eval: bad built-in config defaults\n");
        return 1;
    }
    /* The checkpoint's own run config (written by the trainer) is the base:
     * data folder, critic variant, labels, lengths come out right without
     * flags; --config files and --set apply on top. */
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--ckpt") != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/run_config.json", argv[i + 1]);
        if (file_exists(path)) {
            if (config_load_file(&cfg, path, err, sizeof err) == 0)
                log_info("run config %s", path);
            else
                log_warn("ignoring %s: %s", path, err);
        }
        break;
    }
    int rc = config_parse_args(&cfg, &argc, argv, err, sizeof err);
    if (rc == 1) {
        config_print_help(stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-eval: %s\n", err);
        return 2;
    }
    const char *ckpt = NULL, *compare = NULL, *split = "test", *json_out = NULL, *ns_arg = NULL;
    long items = cfg.eval.max_items, samples = cfg.eval.n_samples, threads = cfg.actor.threads;
    double temperature = cfg.rl.temperature;
    int self_critique = cfg.eval.self_critique;
    int claims = 0;
    eval_tourney_rule_t rule = EVAL_TOURNEY_BOTH_ELSE_FIRST;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-self-critique")) {
            self_critique = 0;
            continue;
        }
        if (!strcmp(a, "--claims")) {
            claims = 1;
            continue;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "crl-eval: %s '%s' (see --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value after", a);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--ckpt")) {
            ckpt = v;
        } else if (!strcmp(a, "--compare")) {
            compare = v;
        } else if (!strcmp(a, "--split")) {
            split = v;
        } else if (!strcmp(a, "--json")) {
            json_out = v;
        } else if (!strcmp(a, "--ns")) {
            ns_arg = v;
        } else if (!strcmp(a, "--items")) {
            if (parse_int(a, v, 0, 1000000000L, &items))
                return 2;
        } else if (!strcmp(a, "--threads")) {
            if (parse_int(a, v, 1, 256, &threads))
                return 2;
        } else if (!strcmp(a, "--samples")) {
            if (parse_int(a, v, 1, 127, &samples))
                return 2;
        } else if (!strcmp(a, "--temperature")) {
            char *end = NULL;
            temperature = strtod(v, &end);
            if (!end || *end || !(temperature > 0.0 && temperature <= 10.0)) {
                fprintf(stderr, "crl-eval: --temperature '%s': expected a number in (0, 10]\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--rule")) {
            if (!strcmp(v, "first"))
                rule = EVAL_TOURNEY_BOTH_ELSE_FIRST;
            else if (!strcmp(v, "valid"))
                rule = EVAL_TOURNEY_BOTH_ELSE_VALID;
            else if (!strcmp(v, "one-order"))
                rule = EVAL_TOURNEY_ONE_ORDER;
            else {
                fprintf(stderr, "crl-eval: --rule '%s': expected first, valid or one-order\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "crl-eval: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!ckpt) {
        fprintf(stderr, "crl-eval: --ckpt DIR is required (see --help)\n");
        return 2;
    }

    plan_t plan = {.max_items = (size_t)items, .n_samples = (int)samples,
                   .temperature = (float)temperature, .seed = (uint64_t)cfg.run.seed};
    int max_group = plan.n_samples;
    if (self_critique) {
        if (ns_arg) {
            const char *s = ns_arg;
            while (*s) {
                char *end = NULL;
                long v = strtol(s, &end, 10);
                if (end == s || v < 1 || v > 127 || plan.n_ns >= EVAL_MAX_NS ||
                    (*end && *end != ',')) {
                    fprintf(stderr,
                            "crl-eval: --ns '%s': expected up to %d comma-separated values in "
                            "1..127\n",
                            ns_arg, EVAL_MAX_NS);
                    return 2;
                }
                plan.ns[plan.n_ns++] = (int)v;
                s = *end ? end + 1 : end;
            }
        } else {
            for (int n = 2; n <= plan.n_samples && plan.n_ns < EVAL_MAX_NS; n *= 2)
                plan.ns[plan.n_ns++] = n;
            if (plan.n_samples >= 2 && plan.ns[plan.n_ns - 1] != plan.n_samples &&
                plan.n_ns < EVAL_MAX_NS)
                plan.ns[plan.n_ns++] = plan.n_samples;
        }
        for (int k = 0; k < plan.n_ns; k++)
            if (plan.ns[k] > max_group)
                max_group = plan.ns[k];
    }
    const char *stem = !strcmp(split, "train") ? cfg.data.train
                       : !strcmp(split, "val") ? cfg.data.val
                       : !strcmp(split, "test") ? cfg.data.test
                                                : split;

    /* parallel over items, not inside the small matrix products */
    openblas_set_num_threads(1);

    model_t *model = NULL, *base = NULL;
    tokenizer_t *tok = NULL;
    dataset_t *dpol = NULL, *dcri = NULL;
    eval_ctx_t *ctx = NULL;
    report_t ra = {0}, rb = {0};
    cJSON *root = NULL;
    int status = 1;

    if (!(model = load_model(ckpt)))
        goto done;
    if (compare) {
        if (!(base = load_model(compare)))
            goto done;
        if (memcmp(&base->cfg, &model->cfg, sizeof(model->cfg)) != 0) {
            fprintf(stderr,
                    "crl-eval: %s and %s have different model configurations (config.json); "
                    "paired comparison needs the same architecture\n",
                    ckpt, compare);
            goto done;
        }
    }
    if (!(tok = load_tokenizer(ckpt, &cfg)))
        goto done;
    int miss_p, miss_c;
    dpol = load_split(&cfg, stem, "policy", model->cfg.image_size, &miss_p);
    if (!dpol && !miss_p)
        goto done;
    dcri = load_split(&cfg, stem, "critic", model->cfg.image_size, &miss_c);
    if (!dcri && !miss_c)
        goto done;
    if (miss_p && miss_c) {
        fprintf(stderr,
                "crl-eval: neither %s/%s.policy.jsonl nor %s/%s.critic.jsonl exists (check "
                "data.dir and --split; crl-data writes the built-in world)\n",
                cfg.data.dir, stem, cfg.data.dir, stem);
        goto done;
    }
    plan.policy = dpol;
    plan.critic = dcri;
    if (!dpol)
        plan.n_ns = 0;

    eval_options_t eo;
    eval_options_default(&eo);
    eo.max_new_tokens = cfg.rl.max_new_tokens;
    eo.max_group = max_group;
    eo.top_p = (float)cfg.rl.top_p;
    eo.variant = cfg.data.critic_variant == CONFIG_CRITIC_FINAL_ONLY ? PROMPT_CRITIC_FINAL_ONLY
                                                                     : PROMPT_CRITIC_FULL;
    eo.reward.w_main = (float)cfg.rl.reward_w_pref;
    eo.reward.w_format = (float)cfg.rl.reward_w_format;
    for (int k = 0; k < 2; k++) {
        eo.reward.labels[k][0] = cfg.data.verdict_labels[k];
        eo.reward.labels[k][1] = '\0';
    }
    eo.tourney_rule = rule;
    eo.n_threads = (int)threads;
    if (!(ctx = eval_new(model, tok, &eo, err, sizeof err))) {
        fprintf(stderr, "crl-eval: %s\n", err);
        goto done;
    }

    log_info("evaluating %s on %s (%zu policy, %zu critic records; at most %ld each)", ckpt, stem,
             dpol ? dataset_count(dpol, DATASET_POLICY) : 0,
             dcri ? dataset_count(dcri, DATASET_CRITIC) : 0, items);
    if ((rc = evaluate(ctx, &plan, &ra)) != 0) {
        fprintf(stderr, "crl-eval: evaluating %s failed: %s\n", ckpt, strerror(-rc));
        goto done;
    }
    log_info("%s: critic %.1f s, policy %.1f s, self-critique %.1f s (%zu judge generations)",
             ckpt, ra.seconds[0], ra.seconds[1], ra.seconds[2], ra.judge_calls);
    if (base) {
        if (eval_set_model(ctx, base) != 0) {
            fprintf(stderr, "crl-eval: cannot switch to %s\n", compare);
            goto done;
        }
        log_info("evaluating baseline %s", compare);
        if ((rc = evaluate(ctx, &plan, &rb)) != 0) {
            fprintf(stderr, "crl-eval: evaluating %s failed: %s\n", compare, strerror(-rc));
            goto done;
        }
        log_info("%s: critic %.1f s, policy %.1f s, self-critique %.1f s", compare, rb.seconds[0],
                 rb.seconds[1], rb.seconds[2]);
    }

    root = cJSON_CreateObject();
    cJSON *settings = root ? cJSON_AddObjectToObject(root, "settings") : NULL;
    if (!settings || !cJSON_AddStringToObject(settings, "split", stem) ||
        !cJSON_AddStringToObject(settings, "data_dir", cfg.data.dir) ||
        !cJSON_AddNumberToObject(settings, "max_items", (double)items) ||
        !cJSON_AddNumberToObject(settings, "n_samples", plan.n_samples) ||
        !cJSON_AddNumberToObject(settings, "temperature", plan.temperature) ||
        !cJSON_AddNumberToObject(settings, "top_p", eo.top_p) ||
        !cJSON_AddNumberToObject(settings, "max_new_tokens", eo.max_new_tokens) ||
        !cJSON_AddStringToObject(settings, "critic_variant",
                                 eo.variant == PROMPT_CRITIC_FULL ? "full" : "final_only") ||
        !cJSON_AddStringToObject(settings, "tournament_rule",
                                 rule == EVAL_TOURNEY_BOTH_ELSE_FIRST   ? "first"
                                 : rule == EVAL_TOURNEY_BOTH_ELSE_VALID ? "valid"
                                                                        : "one-order") ||
        !cJSON_AddNumberToObject(settings, "seed", (double)plan.seed) ||
        !cJSON_AddNumberToObject(settings, "threads", (double)threads)) {
        fprintf(stderr, "crl-eval: out of memory\n");
        goto done;
    }
    cJSON *ja = report_json(&ra, ckpt);
    if (!ja || !cJSON_AddItemToObject(root, "ckpt", ja)) {
        cJSON_Delete(ja);
        fprintf(stderr, "crl-eval: out of memory\n");
        goto done;
    }

    printf("crl-eval  %s  split %s  T=%.2g top_p=%.2g  max %d new tokens  critic %s  "
           "tournament rule %s\n",
           ckpt, stem, (double)plan.temperature, (double)eo.top_p, eo.max_new_tokens,
           eo.variant == PROMPT_CRITIC_FULL ? "full" : "final_only",
           rule == EVAL_TOURNEY_BOTH_ELSE_FIRST   ? "first"
           : rule == EVAL_TOURNEY_BOTH_ELSE_VALID ? "valid"
                                                  : "one-order");
    if (!base) {
        print_single(&ra, "ckpt");
    } else {
        printf("baseline %s\n", compare);
        cJSON *jb = report_json(&rb, compare);
        cJSON *paired = cJSON_CreateObject();
        if (!jb || !paired || !cJSON_AddItemToObject(root, "baseline", jb) ||
            !cJSON_AddItemToObject(root, "paired", paired)) {
            fprintf(stderr, "crl-eval: out of memory\n");
            goto done;
        }
        if ((rc = print_compare(&rb, &ra, plan.seed, paired)) != 0) {
            fprintf(stderr, "crl-eval: paired statistics failed: %s\n", strerror(-rc));
            goto done;
        }
        printf("p(sign): exact two-sided sign test on items gained vs lost; CI: %d-resample paired "
               "bootstrap\n",
               N_BOOT);
        if (claims) {
            int max_n = 0;
            for (int k = 0; k < plan.n_ns; k++)
                if (plan.ns[k] > max_n)
                    max_n = plan.ns[k];
            cJSON *jc = cJSON_CreateArray();
            if (!jc || !cJSON_AddItemToObject(root, "claims", jc)) {
                fprintf(stderr, "crl-eval: out of memory\n");
                goto done;
            }
            if ((rc = print_claims(&rb, &ra, plan.seed, max_n, jc)) != 0) {
                fprintf(stderr, "crl-eval: claims table failed: %s\n", strerror(-rc));
                goto done;
            }
        }
    }
    fflush(stdout);
    if (json_out) {
        char *text = cJSON_Print(root);
        if (!text || write_text_file(json_out, text) != 0) {
            cJSON_free(text);
            goto done;
        }
        cJSON_free(text);
        log_info("figures written to %s", json_out);
    }
    status = 0;
done:
    cJSON_Delete(root);
    report_free(&ra);
    report_free(&rb);
    eval_destroy(&ctx);
    dataset_destroy(&dpol);
    dataset_destroy(&dcri);
    tok_destroy(&tok);
    model_destroy(&model);
    model_destroy(&base);
    return status;
}
