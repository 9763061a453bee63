/* crl-bench: speed figures for `make bench`, each printed beside its
 * reference. `--threads N --json FILE` measures at N threads and appends
 * JSON lines to FILE; `--report DIR` reads crl-{1,2}.jsonl and
 * torch-{1,2}.jsonl from DIR and prints the side-by-side table with the
 * targets of the foundation issue. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "log.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "sampler.h"

/* The benchmark shape of the foundation issue. */
#define B_VOCAB 512
#define B_DIM 256
#define B_LAYERS 4
#define B_HEADS 4
#define B_HIDDEN 688
#define B_BATCH 8
#define B_SEQ 256
#define B_PROMPT 192
#define B_NEW 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static model_config_t bench_config(void)
{
    model_config_t c = {
        .vocab_size = B_VOCAB, .dim = B_DIM, .n_layers = B_LAYERS, .n_heads = B_HEADS,
        .n_kv_heads = B_HEADS, .hidden_dim = B_HIDDEN, .max_seq_len = B_SEQ + B_NEW + 8,
        .image_size = 0, .patch_size = 0, .tie_embeddings = 0, .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
    return c;
}

/* Best of several timed repetitions (less noise from a shared machine). */
static double bench_sgemm(void)
{
    const int n = 1024;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n),
          *c = malloc(sizeof(float) * n * n);
    if (!a || !b || !c) {
        free(a), free(b), free(c);
        return 0;
    }
    rng_t r;
    rng_seed(&r, 1);
    for (int i = 0; i < n * n; i++)
        a[i] = rng_normal(&r), b[i] = rng_normal(&r);
    double best = 1e30;
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = now_s() - t0;
        if (rep > 0 && dt < best)
            best = dt;
    }
    free(a), free(b), free(c);
    return 2.0 * n * n * n / best / 1e9;
}

/* Model FLOPs of one training step: 6 per matmul parameter per token
 * (forward 2, backward 4) plus causal attention, 6 * L * D * seq per token
 * (QK^T and PV, forward and backward, half of the square). */
static double train_flops(const model_config_t *c, int tokens, int seq)
{
    double D = c->dim, F = c->hidden_dim, V = c->vocab_size, L = c->n_layers;
    double kvd = D / c->n_heads * c->n_kv_heads;
    double per_layer = D * D * 2 + D * kvd * 2 + 3 * D * F;
    double matmul_params = L * per_layer + V * D;
    return tokens * (6.0 * matmul_params + 6.0 * L * D * seq);
}

static int bench_train(FILE *json, int threads, double sgemm_gflops)
{
    model_config_t cfg = bench_config();
    model_t *m = model_new(&cfg, 1);
    if (!m)
        return -1;
    rng_t r;
    rng_seed(&r, 2);
    model_init_random(m, &r);
    const int T = B_BATCH * B_SEQ;
    model_acts_t *a = model_acts_new(m, T, B_BATCH);
    adamw_config_t oc = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                         .weight_decay = 1e-2f, .grad_clip = 1.0f, .warmup_steps = 0,
                         .total_steps = 100, .schedule = OPTIM_SCHED_CONSTANT, .min_lr_ratio = 0.1f};
    adamw_t *opt = adamw_new(m, &oc);
    int *tokens = malloc(sizeof(int) * T), *targets = malloc(sizeof(int) * T);
    int seq_start[B_BATCH + 1];
    float *logp = malloc(sizeof(float) * T), *dlogp = malloc(sizeof(float) * T);
    if (!a || !opt || !tokens || !targets || !logp || !dlogp)
        goto fail;
    for (int s = 0; s <= B_BATCH; s++)
        seq_start[s] = s * B_SEQ;
    for (int t = 0; t < T; t++)
        tokens[t] = (int)rng_below(&r, B_VOCAB);
    for (int t = 0; t < T; t++)
        targets[t] = (t + 1) % B_SEQ == 0 ? -1 : tokens[t + 1];
    for (int t = 0; t < T; t++)
        dlogp[t] = targets[t] < 0 ? 0.0f : -1.0f / T;
    model_batch_t b = {.n_tokens = T, .n_seqs = B_BATCH, .seq_start = seq_start, .tokens = tokens};
    double best = 1e30;
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now_s();
        model_zero_grads(m);
        float *logits = model_forward(m, a, &b);
        if (!logits)
            goto fail;
        k_logprobs_fwd(logp, NULL, logits, targets, T, B_VOCAB, 1.0f);
        k_logprobs_bwd(logits, dlogp, logits, targets, T, B_VOCAB, 1.0f);
        if (model_backward(m, a, logits) != 0)
            goto fail;
        adamw_step(opt, m);
        double dt = now_s() - t0;
        if (rep > 0 && dt < best)
            best = dt;
    }
    double gflops = train_flops(&cfg, T, B_SEQ) / best / 1e9;
    fprintf(json,
            "{\"impl\":\"crl\",\"workload\":\"train\",\"threads\":%d,\"ms_per_step\":%.3f,"
            "\"tokens_per_s\":%.1f,\"gflops\":%.2f,\"sgemm_gflops\":%.2f,\"sgemm_fraction\":%.3f}\n",
            threads, best * 1e3, T / best, gflops, sgemm_gflops, gflops / sgemm_gflops);
    fflush(json);
    int rc = 0;
    goto done;
fail:
    rc = -1;
done:
    free(tokens), free(targets), free(logp), free(dlogp);
    adamw_destroy(&opt);
    model_acts_destroy(&a);
    model_destroy(&m);
    return rc;
}

static int bench_sample(FILE *json, int threads, int G)
{
    model_config_t cfg = bench_config();
    model_t *m = model_new(&cfg, 0);
    if (!m)
        return -1;
    rng_t r;
    rng_seed(&r, 3);
    model_init_random(m, &r);
    sampler_t *s = sampler_new(m, B_PROMPT, B_NEW, G);
    int prompt[B_PROMPT];
    int *out = malloc(sizeof(int) * G * B_NEW), lens[64];
    float *lp = malloc(sizeof(float) * G * B_NEW);
    int rc = -1;
    if (!s || !out || !lp)
        goto done;
    for (int i = 0; i < B_PROMPT; i++)
        prompt[i] = (int)rng_below(&r, B_VOCAB);
    /* No eos: every sample runs the full B_NEW tokens, as in the reference. */
    sample_params_t p = {.temperature = 1.0f, .top_p = 1.0f, .max_new_tokens = B_NEW, .eos_id = -1};
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s();
        if (sampler_generate(s, m, prompt, B_PROMPT, NULL, G, &p, &r, out, lp, lens) != 0)
            goto done;
        double dt = now_s() - t0;
        if (rep > 0 && dt < best)
            best = dt;
    }
    long total = 0;
    for (int g = 0; g < G; g++)
        total += lens[g];
    fprintf(json,
            "{\"impl\":\"crl\",\"workload\":\"sample_g%d\",\"threads\":%d,\"ms_per_call\":%.3f,"
            "\"tokens_per_s\":%.1f}\n",
            G, threads, best * 1e3, total / best);
    fflush(json);
    rc = 0;
done:
    free(out), free(lp);
    sampler_destroy(&s);
    model_destroy(&m);
    return rc;
}

static cJSON *load_rows(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    cJSON *arr = cJSON_CreateArray();
    if (!f)
        return arr;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        if (o)
            cJSON_AddItemToArray(arr, o);
    }
    free(line);
    fclose(f);
    return arr;
}

static double field(cJSON *rows, const char *workload, const char *key)
{
    cJSON *o;
    cJSON_ArrayForEach(o, rows)
    {
        cJSON *w = cJSON_GetObjectItem(o, "workload");
        cJSON *v = cJSON_GetObjectItem(o, key);
        if (cJSON_IsString(w) && !strcmp(w->valuestring, workload) && cJSON_IsNumber(v))
            return v->valuedouble;
    }
    return NAN;
}

static void report(const char *dir)
{
    printf("\ncrl benchmark — model d=%d L=%d H=%d F=%d V=%d untied, no image tokens\n", B_DIM,
           B_LAYERS, B_HEADS, B_HIDDEN, B_VOCAB);
    printf("train: batch %d x %d tokens (fwd, loss, bwd, AdamW); sample: prompt %d, %d new tokens\n\n",
           B_BATCH, B_SEQ, B_PROMPT, B_NEW);
    printf("%-8s %-26s %12s %12s %9s  %s\n", "threads", "measure", "crl", "pytorch", "ratio",
           "target");
    for (int t = 1; t <= 2; t++) {
        char a[64], b[64];
        snprintf(a, sizeof a, "crl-%d.jsonl", t);
        snprintf(b, sizeof b, "torch-%d.jsonl", t);
        cJSON *c = load_rows(dir, a), *p = load_rows(dir, b);
        double sg = field(c, "train", "sgemm_gflops");
        printf("%-8d %-26s %12.1f %12s %9s  %s\n", t, "sgemm 1024^3 GFLOP/s", sg, "-", "-",
               "(physical reference)");
        double ct = field(c, "train", "tokens_per_s"), pt = field(p, "train", "tokens_per_s");
        printf("%-8d %-26s %12.1f %12.1f %8.2fx  %s\n", t, "train tokens/s", ct, pt, ct / pt,
               ">= 1.3x pytorch");
        printf("%-8d %-26s %12.1f %12.1f %9s\n", t, "train ms/step", field(c, "train", "ms_per_step"),
               field(p, "train", "ms_per_step"), "");
        double frac = field(c, "train", "sgemm_fraction");
        printf("%-8d %-26s %12.1f %12s %8.0f%%  %s\n", t, "train GFLOP/s (model)",
               field(c, "train", "gflops"), "-", 100 * frac, t == 1 ? ">= 65% of sgemm" : "");
        double c8 = field(c, "sample_g8", "tokens_per_s"), p8 = field(p, "sample_g8", "tokens_per_s");
        printf("%-8d %-26s %12.1f %12.1f %8.2fx  %s\n", t, "sample G=8 tokens/s", c8, p8, c8 / p8,
               ">= 3x pytorch");
        double c1 = field(c, "sample_g1", "tokens_per_s"), p1 = field(p, "sample_g1", "tokens_per_s");
        printf("%-8d %-26s %12.1f %12.1f %8.2fx  %s\n", t, "sample G=1 tokens/s", c1, p1, c1 / p1,
               t == 1 ? ">= 1500 tokens/s" : "");
        cJSON_Delete(c);
        cJSON_Delete(p);
    }
}

/* tests/bench/bench_broker.c: weights fan-out through the broker vs raw zmq. */
int bench_broker_run(FILE *json);
/* tests/bench/bench_ingest.c: learner ingest (real crl-learner) vs raw zmq. */
int bench_ingest_run(const char *setup_dir, const char *config, const char *bin_dir, FILE *json);
/* tests/bench/bench_e2e.c: the end-to-end table of tests/bench/e2e.sh's runs. */
int bench_e2e_report(const char *root, FILE *json);

/* Folder of this executable (crl-broker and crl-learner sit beside it). */
static int self_dir(char *buf, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", buf, len - 1);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: crl-bench --threads N --json FILE   measure at N threads, append JSON lines\n"
               "       crl-bench --broker --json FILE      weights fan-out: broker vs raw zmq\n"
               "       crl-bench --ingest SETUP --config FILE [--json FILE]\n"
               "                                           learner ingest (crl-learner rl with SETUP/data and\n"
               "                                           SETUP/runs/base/ckpt/latest) vs raw zmq\n"
               "       crl-bench --e2e-report ROOT         table of tests/bench/e2e.sh's runs ROOT/e2e-{1,2}\n"
               "       crl-bench --report DIR              print the side-by-side table\n");
}

int main(int argc, char **argv)
{
    int threads = 1;
    const char *json_path = NULL, *report_dir = NULL, *ingest_dir = NULL, *config = NULL,
               *e2e_root = NULL;
    int broker = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json_path = argv[++i];
        else if (!strcmp(argv[i], "--broker"))
            broker = 1;
        else if (!strcmp(argv[i], "--report") && i + 1 < argc)
            report_dir = argv[++i];
        else if (!strcmp(argv[i], "--ingest") && i + 1 < argc)
            ingest_dir = argv[++i];
        else if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config = argv[++i];
        else if (!strcmp(argv[i], "--e2e-report") && i + 1 < argc)
            e2e_root = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "crl-bench: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    log_set_tag("bench");
    if (report_dir) {
        report(report_dir);
        return 0;
    }
    if (e2e_root || ingest_dir) {
        FILE *js = json_path ? fopen(json_path, "a") : NULL;
        if (json_path && !js) {
            fprintf(stderr, "crl-bench: cannot open %s: %s\n", json_path, strerror(errno));
            return 1;
        }
        int brc;
        if (e2e_root) {
            brc = bench_e2e_report(e2e_root, js);
        } else {
            char bin[4096];
            if (!config) {
                fprintf(stderr, "crl-bench: --ingest needs --config FILE (e.g. launch/demo.json)\n");
                if (js)
                    fclose(js);
                return 2;
            }
            if (self_dir(bin, sizeof bin) != 0) {
                fprintf(stderr, "crl-bench: cannot find my own folder (/proc/self/exe)\n");
                if (js)
                    fclose(js);
                return 1;
            }
            brc = bench_ingest_run(ingest_dir, config, bin, js);
        }
        if (js)
            fclose(js);
        return brc == 0 ? 0 : 1;
    }
    if (!json_path || threads < 1) {
        usage(stderr);
        return 2;
    }
    FILE *json = fopen(json_path, "a");
    if (!json) {
        fprintf(stderr, "crl-bench: cannot open %s: %s\n", json_path, strerror(errno));
        return 1;
    }
    if (broker) {
        int brc = bench_broker_run(json);
        fclose(json);
        return brc == 0 ? 0 : 1;
    }
    k_set_threads(threads);
    double sg = bench_sgemm();
    fprintf(stderr, "sgemm 1024^3: %.1f GFLOP/s\n", sg);
    int rc = bench_train(json, threads, sg);
    if (rc == 0)
        rc = bench_sample(json, threads, 8);
    if (rc == 0)
        rc = bench_sample(json, threads, 1);
    fclose(json);
    if (rc != 0) {
        fprintf(stderr, "crl-bench: a benchmark failed (see the log above)\n");
        return 1;
    }
    return 0;
}
