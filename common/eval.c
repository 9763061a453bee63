/* eval: policy, critic and self-critique evaluation (see eval.h).
 *
 * Each evaluation lists its items, then workers (one per thread, each with
 * its own sampler and buffers) take items from a shared counter and write
 * each item's outcome into that item's slot; the figures are summed in
 * item order afterwards, so they do not depend on the thread count. */
#include "eval.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "log.h"
#include "sampler.h"
#include "task.h"

/* Largest tournament eval_tournament plays without allocating. */
#define EVAL_MAX_TOURNEY 1024
#define EVAL_MAX_THREADS 256
#define MEMO_UNKNOWN (-2)

/* Everything one thread needs to evaluate an item; sized once. */
typedef struct {
    sampler_t *sampler;
    int *prompt;         /* (max_prompt) */
    int *out_tokens;     /* (max_group, max_new) */
    float *out_logp;     /* (max_group, max_new) */
    int *out_len;        /* (max_group) */
    float *image;        /* (3, S, S); NULL for a text-only model */
    char *text;          /* (text_cap) scratch decode buffer */
    char *resp;          /* (max_group, text_cap) decoded samples (self-critique) */
    uint8_t *correct;    /* (max_group) */
    char **answers;      /* (max_group) normalised boxed answers of the current item */
    int8_t *memo;        /* (max_group, max_group) judge verdicts, MEMO_UNKNOWN if not yet */
} worker_t;

struct eval_ctx {
    const model_t *m;
    const tokenizer_t *tok;
    eval_options_t opt;
    prompt_options_t popt;
    int max_prompt;      /* longest prompt the samplers take */
    int max_new;
    int max_group;
    int n_patches;
    int *banned;         /* <img>, </img>, <pad>, and ids the tokenizer cannot decode */
    int n_banned;
    size_t text_cap;     /* bytes of one decoded response, NUL included */
    int n_workers;
    worker_t *workers;   /* (n_workers) */
};

void eval_options_default(eval_options_t *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->max_new_tokens = 64;
    opt->max_group = 8;
    opt->top_p = 1.0f;
    opt->variant = PROMPT_CRITIC_FULL;
    reward_config_default(&opt->reward);
    opt->tourney_rule = EVAL_TOURNEY_BOTH_ELSE_FIRST;
    opt->n_threads = 1;
}

static void worker_free(worker_t *w, int max_group)
{
    sampler_destroy(&w->sampler);
    free(w->prompt);
    free(w->out_tokens);
    free(w->out_logp);
    free(w->out_len);
    free(w->image);
    free(w->text);
    free(w->resp);
    free(w->correct);
    if (w->answers)
        for (int g = 0; g < max_group; g++)
            free(w->answers[g]);
    free(w->answers);
    free(w->memo);
    memset(w, 0, sizeof(*w));
}

static int worker_init(worker_t *w, const eval_ctx_t *c)
{
    const size_t G = (size_t)c->max_group, NN = (size_t)c->max_new;
    memset(w, 0, sizeof(*w));
    w->sampler = sampler_new(c->m, c->max_prompt, c->max_new, c->max_group);
    w->prompt = malloc(sizeof(int) * (size_t)c->max_prompt);
    w->out_tokens = malloc(sizeof(int) * G * NN);
    w->out_logp = malloc(sizeof(float) * G * NN);
    w->out_len = malloc(sizeof(int) * G);
    w->text = malloc(c->text_cap);
    w->resp = malloc(c->text_cap * G);
    w->correct = calloc(G, 1);
    w->answers = calloc(G, sizeof(char *));
    w->memo = malloc(G * G);
    if (c->m->cfg.image_size > 0)
        w->image = malloc(sizeof(float) * 3 * (size_t)c->m->cfg.image_size *
                          (size_t)c->m->cfg.image_size);
    if (!w->sampler || !w->prompt || !w->out_tokens || !w->out_logp || !w->out_len || !w->text ||
        !w->resp || !w->correct || !w->answers || !w->memo ||
        (c->m->cfg.image_size > 0 && !w->image))
        return -ENOMEM;
    return 0;
}

void eval_destroy(eval_ctx_t **pctx)
{
    if (!pctx || !*pctx)
        return;
    eval_ctx_t *c = *pctx;
    if (c->workers)
        for (int i = 0; i < c->n_workers; i++)
            worker_free(&c->workers[i], c->max_group);
    free(c->workers);
    free(c->banned);
    free(c);
    *pctx = NULL;
}

eval_ctx_t *eval_new(const model_t *m, const tokenizer_t *tok, const eval_options_t *opt,
                     char *err, size_t errlen)
{
    eval_ctx_t *c = NULL;
    if (!m || !tok || !opt) {
        snprintf(err, errlen, "eval_new: NULL argument");
        return NULL;
    }
    char why[256];
    if (reward_config_check(&opt->reward, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "eval: bad reward config: %s", why);
        return NULL;
    }
    const int V = m->cfg.vocab_size, TV = tok_vocab_size(tok);
    if (TV > V) {
        snprintf(err, errlen, "eval: tokenizer has %d ids but the model only %d", TV, V);
        return NULL;
    }
    if (opt->max_new_tokens < 1 || opt->max_group < 1 || opt->max_group > 127 ||
        !(opt->top_p > 0.0f) || !(opt->top_p <= 1.0f) || (int)opt->tourney_rule < 0 ||
        opt->tourney_rule > 2 || opt->n_threads < 1 || opt->n_threads > EVAL_MAX_THREADS ||
        (opt->variant != PROMPT_CRITIC_FULL && opt->variant != PROMPT_CRITIC_FINAL_ONLY)) {
        snprintf(err, errlen,
                 "eval: bad options (max_new_tokens %d, max_group %d of 1..127, top_p %g, rule "
                 "%d, variant %d, n_threads %d of 1..%d)",
                 opt->max_new_tokens, opt->max_group, (double)opt->top_p, (int)opt->tourney_rule,
                 (int)opt->variant, opt->n_threads, EVAL_MAX_THREADS);
        return NULL;
    }
    /* The prompt must leave room for the response within the RoPE table. */
    const int min_prompt = 8 + (m->cfg.image_size > 0 ? model_n_patches(&m->cfg) + 2 : 0);
    if (m->cfg.max_seq_len - opt->max_new_tokens < min_prompt) {
        snprintf(err, errlen,
                 "eval: max_new_tokens %d leaves no room for a prompt in max_seq_len %d",
                 opt->max_new_tokens, m->cfg.max_seq_len);
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        goto oom;
    c->m = m;
    c->tok = tok;
    c->opt = *opt;
    prompt_options_default(&c->popt);
    c->popt.variant = opt->variant;
    prompt_options_from_reward(&c->popt, &opt->reward);
    c->max_new = opt->max_new_tokens;
    c->max_group = opt->max_group;
    c->max_prompt = m->cfg.max_seq_len - c->max_new;
    c->n_patches = m->cfg.image_size > 0 ? model_n_patches(&m->cfg) : 0;

    /* Never sample image markers or padding (RECIPE 6), nor ids past the
     * tokenizer's vocabulary (a model may be sized larger): they could not
     * be decoded. */
    c->banned = malloc(sizeof(int) * (size_t)(3 + V - TV));
    if (!c->banned)
        goto oom;
    c->banned[c->n_banned++] = TOK_IMG;
    c->banned[c->n_banned++] = TOK_IMG_END;
    c->banned[c->n_banned++] = TOK_PAD;
    for (int id = TV; id < V; id++)
        c->banned[c->n_banned++] = id;

    size_t max_tok_bytes = 1;
    for (int id = 0; id < TV; id++) {
        size_t len = 0;
        if (tok_token_bytes(tok, id, &len) && len > max_tok_bytes)
            max_tok_bytes = len;
    }
    c->text_cap = (size_t)c->max_new * max_tok_bytes + 1;
    c->workers = calloc((size_t)opt->n_threads, sizeof(worker_t));
    if (!c->workers)
        goto oom;
    c->n_workers = opt->n_threads;
    for (int i = 0; i < c->n_workers; i++)
        if (worker_init(&c->workers[i], c) != 0)
            goto oom;
    return c;
oom:
    snprintf(err, errlen, "eval: out of memory");
    eval_destroy(&c);
    return NULL;
}

int eval_set_model(eval_ctx_t *ctx, const model_t *m)
{
    if (!ctx || !m || memcmp(&ctx->m->cfg, &m->cfg, sizeof(m->cfg)) != 0)
        return -EINVAL;
    ctx->m = m;
    return 0;
}

/* ---- shared steps -------------------------------------------------------- */

/* Encodes prompt text for rec (with its image when the model takes one)
 * into w->prompt and loads the image. Returns the prompt length, -E2BIG
 * when it does not fit the context, or negative errno. */
static int load_prompt(const eval_ctx_t *ctx, worker_t *w, const dataset_t *ds,
                       const dataset_record_t *rec, const char *text)
{
    const uint8_t *img = w->image ? dataset_image(ds, rec) : NULL;
    if (img)
        image_to_float(img, ctx->m->cfg.image_size, w->image);
    int n = task_encode_prompt(ctx->tok, ctx->n_patches, img != NULL, text, w->prompt,
                               ctx->max_prompt);
    return n == -ENOSPC ? -E2BIG : n;
}

static int generate(const eval_ctx_t *ctx, worker_t *w, int prompt_len, int G, float temperature,
                    rng_t *rng)
{
    sample_params_t p = {
        .temperature = temperature,
        .top_p = temperature > 0.0f ? ctx->opt.top_p : 1.0f,
        .max_new_tokens = ctx->max_new,
        .eos_id = TOK_EOS,
        .banned = ctx->banned,
        .n_banned = ctx->n_banned,
    };
    return sampler_generate(w->sampler, ctx->m, w->prompt, prompt_len,
                            w->image /* ignored without image slots */, G, &p, rng,
                            w->out_tokens, w->out_logp, w->out_len);
}

/* Decodes sample g into out (text_cap bytes); returns its length or -errno. */
static long decode(const eval_ctx_t *ctx, const worker_t *w, int g, char *out)
{
    return task_decode_response(ctx->tok, w->out_tokens + (size_t)g * ctx->max_new,
                                w->out_len[g], out, ctx->text_cap);
}

/* Normalised boxed answer of a response; *ans = NULL when there is none
 * (or it is empty). 0 or -ENOMEM. */
static int boxed_answer(const char *resp, size_t len, char **ans)
{
    reward_parse_t p;
    reward_parse(resp, len, &p);
    *ans = NULL;
    if (!p.has_box)
        return 0;
    char *a = reward_normalize_answer(resp + p.box_off, p.box_len);
    if (!a)
        return -ENOMEM;
    if (!a[0]) {
        free(a);
        return 0;
    }
    *ans = a;
    return 0;
}

static void free_answers(worker_t *w, int max_group)
{
    for (int g = 0; g < max_group; g++) {
        free(w->answers[g]);
        w->answers[g] = NULL;
    }
}

static uint64_t fnv1a_ids(const int *ids, int n)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)ids[i];
        for (int b = 0; b < 4; b++) {
            h ^= (v >> (8 * b)) & 0xffu;
            h *= 1099511628211ull;
        }
    }
    return h;
}

/* Images are read as (3, S, S) of the model's S: a dataset decoded at
 * another size would be read out of bounds. */
static int check_dataset(const eval_ctx_t *ctx, const dataset_t *ds, const char *who)
{
    if (ctx->m->cfg.image_size > 0 && dataset_image_size(ds) != ctx->m->cfg.image_size) {
        log_error("%s: dataset images are %d px, the model takes %d px (load the dataset with "
                  "image_size = model.image_size)",
                  who, dataset_image_size(ds), ctx->m->cfg.image_size);
        return -EINVAL;
    }
    return 0;
}

/* Record indices of the first max_items (0 = all) records of a kind;
 * caller frees. NULL on OOM (*n = 0 and a non-NULL result for none). */
static size_t *list_items(const dataset_t *ds, dataset_kind_t kind, size_t max_items, size_t *n)
{
    size_t want = dataset_count(ds, kind);
    if (max_items && max_items < want)
        want = max_items;
    size_t *idx = malloc(sizeof(size_t) * (want ? want : 1));
    *n = 0;
    if (!idx)
        return NULL;
    for (size_t r = 0; r < dataset_size(ds) && *n < want; r++)
        if (dataset_get(ds, r)->kind == kind)
            idx[(*n)++] = r;
    return idx;
}

int eval_majority(const char *const *answers, int n)
{
    int best = -1, best_votes = 0;
    for (int i = 0; i < n; i++) {
        if (!answers[i])
            continue;
        int seen = 0;
        for (int k = 0; k < i && !seen; k++)
            seen = answers[k] && strcmp(answers[k], answers[i]) == 0;
        if (seen)
            continue; /* counted at its first occurrence */
        int votes = 0;
        for (int k = i; k < n; k++)
            votes += answers[k] && strcmp(answers[k], answers[i]) == 0;
        /* strictly more: a tie keeps the earlier first occurrence */
        if (votes > best_votes) {
            best_votes = votes;
            best = i;
        }
    }
    return best;
}

/* ---- running items on the workers ------------------------------------------ */

typedef struct job job_t;
/* Evaluates item k into its slot; 0 or negative errno (logged by the callee). */
typedef int (*item_fn_t)(const eval_ctx_t *ctx, worker_t *w, job_t *job, size_t k);

struct job {
    const dataset_t *ds;
    const size_t *rec;     /* (n) record index of each item */
    size_t n;
    item_fn_t fn;
    void *out;             /* per-item outcomes of the evaluation */
    void *extra;           /* per-item figures only the sums need */
    int n_samples;         /* policy */
    float temperature;
    uint64_t base;         /* seed of the per-item random streams */
    const int *ns;         /* self-critique */
    int n_ns;
    int n_max;
    atomic_size_t next;
    atomic_int err;
};

typedef struct {
    const eval_ctx_t *ctx;
    worker_t *w;
    job_t *job;
} run_arg_t;

static void *run_worker(void *p)
{
    run_arg_t *a = p;
    job_t *job = a->job;
    while (atomic_load(&job->err) == 0) {
        size_t k = atomic_fetch_add(&job->next, 1);
        if (k >= job->n)
            break;
        int rc = a->job->fn(a->ctx, a->w, job, k);
        if (rc != 0) {
            int none = 0;
            atomic_compare_exchange_strong(&job->err, &none, rc);
            break;
        }
    }
    return NULL;
}

/* Runs job->fn on every item, on up to n_workers threads (the caller's
 * thread is one of them). 0 or the first item's error. */
static int run_job(const eval_ctx_t *ctx, job_t *job)
{
    atomic_init(&job->next, 0);
    atomic_init(&job->err, 0);
    int nt = ctx->n_workers;
    if ((size_t)nt > job->n)
        nt = job->n ? (int)job->n : 1;
    pthread_t th[EVAL_MAX_THREADS];
    run_arg_t args[EVAL_MAX_THREADS];
    int started = 0;
    for (int t = 0; t < nt; t++)
        args[t] = (run_arg_t){.ctx = ctx, .w = &ctx->workers[t], .job = job};
    for (int t = 1; t < nt; t++) {
        int rc = pthread_create(&th[t], NULL, run_worker, &args[t]);
        if (rc != 0) {
            /* fewer threads is slower, not wrong */
            log_warn("eval: pthread_create failed (%s); running on %d threads", strerror(rc), t);
            break;
        }
        started++;
    }
    run_worker(&args[0]);
    for (int t = 1; t <= started; t++)
        pthread_join(th[t], NULL);
    return atomic_load(&job->err);
}

static void log_item_error(const char *who, const dataset_t *ds, size_t rec, int rc)
{
    const dataset_record_t *r = dataset_get(ds, rec);
    log_error("%s: record %s (line %zu): %s", who, r ? r->id : "?", r ? r->line : (size_t)0,
              rc == -E2BIG ? "prompt longer than the model's context" : strerror(-rc));
}

/* ---- policy ---------------------------------------------------------------- */

void eval_policy_items_free(eval_policy_items_t *it)
{
    if (!it)
        return;
    if (it->answers)
        for (size_t i = 0; i < it->n * (size_t)it->n_samples; i++)
            free(it->answers[i]);
    free(it->answers);
    free(it->record);
    free(it->greedy_correct);
    free(it->greedy_format);
    free(it->sample_correct);
    free(it->majority);
    free(it->sample_hash);
    memset(it, 0, sizeof(*it));
}

static int policy_items_alloc(eval_policy_items_t *it, size_t n, int n_samples)
{
    memset(it, 0, sizeof(*it));
    it->n = n;
    it->n_samples = n_samples;
    size_t ns = (n ? n : 1) * (size_t)n_samples, n1 = n ? n : 1;
    it->record = calloc(n1, sizeof(size_t));
    it->greedy_correct = calloc(n1, 1);
    it->greedy_format = calloc(n1, 1);
    it->sample_correct = calloc(ns, 1);
    it->answers = calloc(ns, sizeof(char *));
    it->majority = calloc(n1, sizeof(int));
    it->sample_hash = calloc(ns, sizeof(uint64_t));
    if (!it->record || !it->greedy_correct || !it->greedy_format || !it->sample_correct ||
        !it->answers || !it->majority || !it->sample_hash) {
        eval_policy_items_free(it);
        return -ENOMEM;
    }
    return 0;
}

typedef struct {
    int greedy_len;
    int sample_format; /* samples with the format */
    long sample_len;   /* summed over the samples */
} policy_extra_t;

static int policy_item(const eval_ctx_t *ctx, worker_t *w, job_t *job, size_t k)
{
    eval_policy_items_t *it = job->out;
    policy_extra_t *ex = (policy_extra_t *)job->extra + k;
    const size_t r = job->rec[k];
    const dataset_record_t *rec = dataset_get(job->ds, r);
    const int S = job->n_samples;
    int rc = 0;
    long len;
    reward_parts_t parts;
    char *text = prompt_policy(rec->question);
    if (!text) {
        rc = -ENOMEM;
        goto fail;
    }
    int plen = load_prompt(ctx, w, job->ds, rec, text);
    free(text);
    if (plen < 0) {
        rc = plen;
        goto fail;
    }
    /* greedy */
    if ((rc = generate(ctx, w, plen, 1, 0.0f, NULL)) != 0)
        goto fail;
    if ((len = decode(ctx, w, 0, w->text)) < 0) {
        rc = (int)len;
        goto fail;
    }
    if ((rc = reward_score(&ctx->opt.reward, REWARD_TASK_POLICY, w->text, (size_t)len, rec->answer,
                           &parts)) != 0)
        goto fail;
    it->record[k] = r;
    it->greedy_correct[k] = (uint8_t)parts.accuracy;
    it->greedy_format[k] = (uint8_t)parts.format;
    ex->greedy_len = w->out_len[0];
    if (S == 0) {
        it->majority[k] = -1;
        return 0; /* greedy only */
    }
    /* S samples of the same prompt, decoded together, from the item's stream */
    rng_t rng;
    rng_seed_stream(&rng, job->base, (uint64_t)r);
    if ((rc = generate(ctx, w, plen, S, job->temperature, &rng)) != 0)
        goto fail;
    for (int g = 0; g < S; g++) {
        size_t slot = k * (size_t)S + (size_t)g;
        if ((len = decode(ctx, w, g, w->text)) < 0) {
            rc = (int)len;
            goto fail;
        }
        if ((rc = reward_score(&ctx->opt.reward, REWARD_TASK_POLICY, w->text, (size_t)len,
                               rec->answer, &parts)) != 0 ||
            (rc = boxed_answer(w->text, (size_t)len, &it->answers[slot])) != 0)
            goto fail;
        it->sample_correct[slot] = (uint8_t)parts.accuracy;
        it->sample_hash[slot] = fnv1a_ids(w->out_tokens + (size_t)g * ctx->max_new, w->out_len[g]);
        ex->sample_format += parts.format;
        ex->sample_len += w->out_len[g];
    }
    it->majority[k] = eval_majority((const char *const *)it->answers + k * (size_t)S, S);
    return 0;
fail:
    log_item_error("eval_policy", job->ds, r, rc);
    return rc;
}

int eval_policy(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items, int n_samples,
                float temperature, rng_t *rng, eval_policy_result_t *res,
                eval_policy_items_t *items)
{
    if (!ctx || !ds || !res || n_samples < 0 || n_samples > ctx->max_group ||
        (n_samples > 0 && (!rng || !(temperature > 0.0f)))) {
        log_error("eval_policy: bad arguments (n_samples %d of at most %d, temperature %g)",
                  n_samples, ctx ? ctx->max_group : 0, (double)temperature);
        return -EINVAL;
    }
    if (check_dataset(ctx, ds, "eval_policy"))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    res->n_samples = n_samples;
    eval_policy_items_t own, *it = items ? items : &own;
    size_t n = 0;
    size_t *idx = list_items(ds, DATASET_POLICY, max_items, &n);
    policy_extra_t *ex = calloc(n ? n : 1, sizeof(*ex));
    int rc = -ENOMEM;
    if (!idx || !ex || policy_items_alloc(it, n, n_samples) != 0)
        goto done;
    job_t job = {.ds = ds, .rec = idx, .n = n, .fn = policy_item, .out = it, .extra = ex,
                 .n_samples = n_samples, .temperature = temperature,
                 .base = n_samples > 0 ? rng_u64(rng) : 0};
    if ((rc = run_job(ctx, &job)) != 0) {
        eval_policy_items_free(it);
        goto done;
    }
    double g_acc = 0, g_fmt = 0, g_len = 0, s_acc = 0, s_fmt = 0, s_len = 0, pass = 0, maj = 0;
    for (size_t k = 0; k < n; k++) {
        int any = 0;
        for (int g = 0; g < n_samples; g++) {
            int c = it->sample_correct[k * (size_t)n_samples + (size_t)g];
            s_acc += c;
            any |= c;
        }
        g_acc += it->greedy_correct[k];
        g_fmt += it->greedy_format[k];
        g_len += ex[k].greedy_len;
        s_fmt += ex[k].sample_format;
        s_len += (double)ex[k].sample_len;
        pass += any;
        maj += it->majority[k] >= 0 &&
               it->sample_correct[k * (size_t)n_samples + (size_t)it->majority[k]];
    }
    res->n_items = n;
    if (n) {
        const double dn = (double)n, ns = dn * n_samples;
        res->greedy_acc = g_acc / dn;
        res->greedy_format = g_fmt / dn;
        res->greedy_len = g_len / dn;
        if (n_samples > 0) {
            res->sample_acc = s_acc / ns;
            res->sample_format = s_fmt / ns;
            res->sample_len = s_len / ns;
            res->pass_at_n = pass / dn;
            res->majority_acc = maj / dn;
        }
    }
    if (!items)
        eval_policy_items_free(it);
    rc = 0;
done:
    free(idx);
    free(ex);
    return rc;
}

/* ---- critic ---------------------------------------------------------------- */

void eval_critic_items_free(eval_critic_items_t *it)
{
    if (!it)
        return;
    free(it->record);
    free(it->right);
    free(it->verdict);
    free(it->both);
    memset(it, 0, sizeof(*it));
}

typedef struct {
    uint8_t format[2];
    int len[2];
} critic_extra_t;

static int critic_item(const eval_ctx_t *ctx, worker_t *w, job_t *job, size_t k)
{
    eval_critic_items_t *it = job->out;
    critic_extra_t *ex = (critic_extra_t *)job->extra + k;
    const size_t r = job->rec[k];
    const dataset_record_t *rec = dataset_get(job->ds, r);
    int rc = 0;
    it->record[k] = r;
    for (int order = PROMPT_ORDER_KEEP; order <= PROMPT_ORDER_SWAP; order++) {
        prompt_critic_t pc;
        rc = prompt_critic(&ctx->popt, rec->question, rec->answers, rec->preferred, order, NULL,
                           &pc);
        if (rc != 0)
            goto fail;
        int plen = load_prompt(ctx, w, job->ds, rec, pc.text);
        free(pc.text);
        if (plen < 0) {
            rc = plen;
            goto fail;
        }
        if ((rc = generate(ctx, w, plen, 1, 0.0f, NULL)) != 0)
            goto fail;
        long len = decode(ctx, w, 0, w->text);
        if (len < 0) {
            rc = (int)len;
            goto fail;
        }
        reward_parts_t parts;
        rc = reward_score(&ctx->opt.reward, REWARD_TASK_CRITIC, w->text, (size_t)len,
                          ctx->popt.labels[pc.preferred_label], &parts);
        if (rc != 0)
            goto fail;
        it->right[2 * k + (size_t)order] = (uint8_t)parts.preference;
        it->verdict[2 * k + (size_t)order] = (int8_t)parts.verdict;
        ex->format[order] = (uint8_t)parts.format;
        ex->len[order] = w->out_len[0];
    }
    it->both[k] = it->right[2 * k] && it->right[2 * k + 1];
    return 0;
fail:
    log_item_error("eval_critic", job->ds, r, rc);
    return rc;
}

int eval_critic(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items,
                eval_critic_result_t *res, eval_critic_items_t *items)
{
    if (!ctx || !ds || !res || check_dataset(ctx, ds, "eval_critic"))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    eval_critic_items_t own, *it = items ? items : &own;
    memset(it, 0, sizeof(*it));
    size_t n = 0;
    size_t *idx = list_items(ds, DATASET_CRITIC, max_items, &n);
    critic_extra_t *ex = calloc(n ? n : 1, sizeof(*ex));
    const size_t n1 = n ? n : 1;
    it->n = n;
    it->record = calloc(n1, sizeof(size_t));
    it->right = calloc(2 * n1, 1);
    it->verdict = calloc(2 * n1, 1);
    it->both = calloc(n1, 1);
    int rc = -ENOMEM;
    if (!idx || !ex || !it->record || !it->right || !it->verdict || !it->both) {
        eval_critic_items_free(it);
        goto done;
    }
    job_t job = {.ds = ds, .rec = idx, .n = n, .fn = critic_item, .out = it, .extra = ex};
    if ((rc = run_job(ctx, &job)) != 0) {
        eval_critic_items_free(it);
        goto done;
    }
    double right = 0, both = 0, first = 0, valid = 0, fmt = 0, len_sum = 0;
    for (size_t k = 0; k < n; k++) {
        for (int o = 0; o < 2; o++) {
            right += it->right[2 * k + (size_t)o];
            int v = it->verdict[2 * k + (size_t)o];
            valid += v >= 0;
            first += v == 0;
            fmt += ex[k].format[o];
            len_sum += ex[k].len[o];
        }
        both += it->both[k];
    }
    res->n_pairs = n;
    res->n_judgements = 2 * n;
    res->n_valid = (size_t)valid;
    res->says_first = NAN;
    if (n) {
        const double nj = 2.0 * (double)n;
        res->accuracy = right / nj;
        res->both_right = both / (double)n;
        res->says_first = valid > 0 ? first / valid : NAN;
        res->invalid_rate = (nj - valid) / nj;
        res->format_rate = fmt / nj;
        res->mean_len = len_sum / nj;
    }
    if (!items)
        eval_critic_items_free(it);
    rc = 0;
done:
    free(idx);
    free(ex);
    return rc;
}

/* ---- captions -------------------------------------------------------------- */

#define CAPTION_MAX_SENTENCES 256

/* Splits text at '.' into trimmed, non-empty sentences (pointers into buf,
 * a writable copy). Returns the count (at most max). */
static int split_sentences(char *buf, char **out, int max)
{
    int n = 0;
    char *p = buf;
    while (*p && n < max) {
        char *end = strchr(p, '.');
        if (end)
            *end = '\0';
        while (*p == ' ' || *p == '\n' || *p == '\t')
            p++;
        size_t l = strlen(p);
        while (l > 0 && (p[l - 1] == ' ' || p[l - 1] == '\n' || p[l - 1] == '\t'))
            p[--l] = '\0';
        if (l > 0)
            out[n++] = p;
        if (!end)
            break;
        p = end + 1;
    }
    return n;
}

int eval_caption_match(const char *ref, const char *gen, int *matched, int *total)
{
    *matched = *total = 0;
    char *rb = strdup(ref ? ref : ""), *gb = strdup(gen ? gen : "");
    char *rs[CAPTION_MAX_SENTENCES], *gs[CAPTION_MAX_SENTENCES];
    uint8_t used[CAPTION_MAX_SENTENCES] = {0};
    int exact = 0;
    if (!rb || !gb)
        goto out;
    int nr = split_sentences(rb, rs, CAPTION_MAX_SENTENCES);
    int ng = split_sentences(gb, gs, CAPTION_MAX_SENTENCES);
    *total = nr;
    exact = nr == ng;
    for (int i = 0; i < nr; i++) {
        if (exact && strcmp(rs[i], gs[i]) != 0)
            exact = 0;
        for (int j = 0; j < ng; j++)
            if (!used[j] && strcmp(rs[i], gs[j]) == 0) {
                used[j] = 1;
                (*matched)++;
                break;
            }
    }
out:
    free(rb);
    free(gb);
    return exact;
}

typedef struct {
    int matched, total, exact, len;
} caption_extra_t;

static int caption_item(const eval_ctx_t *ctx, worker_t *w, job_t *job, size_t k)
{
    caption_extra_t *ex = (caption_extra_t *)job->extra + k;
    const size_t r = job->rec[k];
    const dataset_record_t *rec = dataset_get(job->ds, r);
    char *text = prompt_caption();
    int rc = text ? 0 : -ENOMEM;
    int plen = text ? load_prompt(ctx, w, job->ds, rec, text) : 0;
    free(text);
    if (rc == 0 && plen < 0)
        rc = plen;
    if (rc == 0)
        rc = generate(ctx, w, plen, 1, 0.0f, NULL);
    long len = rc == 0 ? decode(ctx, w, 0, w->text) : 0;
    if (rc == 0 && len < 0)
        rc = (int)len;
    if (rc != 0) {
        log_item_error("eval_caption", job->ds, r, rc);
        return rc;
    }
    ex->exact = eval_caption_match(rec->caption, w->text, &ex->matched, &ex->total);
    ex->len = w->out_len[0];
    return 0;
}

int eval_caption(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items,
                 eval_caption_result_t *res)
{
    if (!ctx || !ds || !res || check_dataset(ctx, ds, "eval_caption"))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    size_t n = 0;
    size_t *idx = list_items(ds, DATASET_CAPTION, max_items, &n);
    caption_extra_t *ex = calloc(n ? n : 1, sizeof(*ex));
    int rc = -ENOMEM;
    if (!idx || !ex)
        goto done;
    job_t job = {.ds = ds, .rec = idx, .n = n, .fn = caption_item, .extra = ex};
    if ((rc = run_job(ctx, &job)) != 0)
        goto done;
    double matched = 0, total = 0, exact = 0, len = 0;
    for (size_t k = 0; k < n; k++) {
        matched += ex[k].matched;
        total += ex[k].total;
        exact += ex[k].exact;
        len += ex[k].len;
    }
    res->n_items = n;
    if (n) {
        res->claim_recall = total > 0 ? matched / total : 0;
        res->exact = exact / (double)n;
        res->mean_len = len / (double)n;
    }
done:
    free(idx);
    free(ex);
    return rc;
}

/* ---- tournament -------------------------------------------------------- */

static int match(int a, int b, eval_tourney_rule_t rule, eval_judge_fn judge, void *jctx,
                 int *calls, int *splits)
{
    int v1 = judge(jctx, a, b);
    (*calls)++;
    if (v1 != a && v1 != b)
        v1 = -1;
    if (rule == EVAL_TOURNEY_ONE_ORDER) {
        if (v1 >= 0)
            return v1;
        (*splits)++;
        return a;
    }
    int v2 = judge(jctx, b, a);
    (*calls)++;
    if (v2 != a && v2 != b)
        v2 = -1;
    if (v1 >= 0 && v1 == v2)
        return v1;
    (*splits)++;
    if (rule == EVAL_TOURNEY_BOTH_ELSE_VALID && (v1 < 0) != (v2 < 0))
        return v1 >= 0 ? v1 : v2;
    return a; /* a < b: the lower index */
}

int eval_tournament(int n, eval_tourney_rule_t rule, eval_judge_fn judge, void *judge_ctx,
                    int *n_calls, int *n_splits)
{
    int calls = 0, splits = 0;
    if (n_calls)
        *n_calls = 0;
    if (n_splits)
        *n_splits = 0;
    if (n < 1 || n > EVAL_MAX_TOURNEY || !judge)
        return -1;
    int alive[EVAL_MAX_TOURNEY];
    for (int i = 0; i < n; i++)
        alive[i] = i;
    int m = n;
    while (m > 1) {
        int out = 0;
        for (int k = 0; k + 1 < m; k += 2)
            alive[out++] = match(alive[k], alive[k + 1], rule, judge, judge_ctx, &calls, &splits);
        if (m % 2)
            alive[out++] = alive[m - 1]; /* bye */
        m = out;
    }
    if (n_calls)
        *n_calls = calls;
    if (n_splits)
        *n_splits = splits;
    return alive[0];
}

/* ---- self-critique ------------------------------------------------------- */

void eval_sc_items_free(eval_sc_items_t *it)
{
    if (!it)
        return;
    free(it->record);
    free(it->tourney);
    free(it->majority);
    free(it->oracle);
    free(it->n_right);
    free(it->first);
    memset(it, 0, sizeof(*it));
}

typedef struct {
    int splits[EVAL_MAX_NS];
    int runs;     /* judge generations run */
    int too_long; /* judge prompts that did not fit (verdict invalid) */
} sc_extra_t;

typedef struct {
    const eval_ctx_t *ctx;
    worker_t *w;
    const dataset_t *ds;
    const dataset_record_t *rec;
    int n;              /* candidates (memo stride) */
    sc_extra_t *ex;
    int err;            /* first hard error (negative errno) */
} sc_judge_t;

/* The model judges resp[i] (shown first) against resp[j], greedily. */
static int sc_judge(void *p, int i, int j)
{
    sc_judge_t *J = p;
    const eval_ctx_t *ctx = J->ctx;
    worker_t *w = J->w;
    int8_t *slot = &w->memo[(size_t)i * (size_t)J->n + (size_t)j];
    if (*slot != MEMO_UNKNOWN)
        return *slot;
    if (J->err)
        return -1;
    const char *cand[2] = {w->resp + (size_t)i * ctx->text_cap, w->resp + (size_t)j * ctx->text_cap};
    prompt_critic_t pc;
    /* preferred is unknown here; 0 is a placeholder that only sets
     * pc.preferred_label, which is not used. */
    int rc = prompt_critic(&ctx->popt, J->rec->question, cand, 0, PROMPT_ORDER_KEEP, NULL, &pc);
    if (rc != 0) {
        J->err = rc;
        return -1;
    }
    int plen = load_prompt(ctx, w, J->ds, J->rec, pc.text);
    free(pc.text);
    int winner = -1;
    if (plen == -E2BIG) {
        J->ex->too_long++; /* two long candidates: no verdict, the rule decides */
    } else if (plen < 0) {
        J->err = plen;
        return -1;
    } else {
        if ((rc = generate(ctx, w, plen, 1, 0.0f, NULL)) != 0) {
            J->err = rc;
            return -1;
        }
        J->ex->runs++;
        long len = decode(ctx, w, 0, w->text);
        if (len < 0) {
            J->err = (int)len;
            return -1;
        }
        reward_parse_t pp;
        reward_parse(w->text, (size_t)len, &pp);
        int v = pp.has_box ? reward_verdict(&ctx->opt.reward, w->text + pp.box_off, pp.box_len)
                           : -1;
        winner = v == 0 ? i : v == 1 ? j : -1;
    }
    *slot = (int8_t)winner;
    return winner;
}

static int sc_item(const eval_ctx_t *ctx, worker_t *w, job_t *job, size_t k)
{
    eval_sc_items_t *it = job->out;
    sc_extra_t *ex = (sc_extra_t *)job->extra + k;
    const size_t r = job->rec[k], K = (size_t)job->n_ns;
    const dataset_record_t *rec = dataset_get(job->ds, r);
    const int n_max = job->n_max;
    int rc = 0;
    char *text = prompt_policy(rec->question);
    if (!text) {
        rc = -ENOMEM;
        goto fail;
    }
    int plen = load_prompt(ctx, w, job->ds, rec, text);
    free(text);
    if (plen < 0) {
        rc = plen;
        goto fail;
    }
    /* Sampled once for the largest N; smaller N use prefixes. */
    rng_t rng;
    rng_seed_stream(&rng, job->base, (uint64_t)r);
    if ((rc = generate(ctx, w, plen, n_max, job->temperature, &rng)) != 0)
        goto fail;
    for (int g = 0; g < n_max; g++) {
        char *out = w->resp + (size_t)g * ctx->text_cap;
        long len = decode(ctx, w, g, out);
        reward_parts_t parts;
        if (len < 0) {
            rc = (int)len;
            goto fail;
        }
        if ((rc = reward_score(&ctx->opt.reward, REWARD_TASK_POLICY, out, (size_t)len, rec->answer,
                               &parts)) != 0 ||
            (rc = boxed_answer(out, (size_t)len, &w->answers[g])) != 0)
            goto fail;
        w->correct[g] = (uint8_t)parts.accuracy;
    }
    memset(w->memo, MEMO_UNKNOWN, (size_t)n_max * (size_t)n_max);
    sc_judge_t J = {.ctx = ctx, .w = w, .ds = job->ds, .rec = rec, .n = n_max, .ex = ex};
    it->record[k] = r;
    it->first[k] = w->correct[0];
    for (size_t q = 0; q < K; q++) {
        const int N = job->ns[q];
        int calls = 0, nsplit = 0;
        int win = eval_tournament(N, ctx->opt.tourney_rule, sc_judge, &J, &calls, &nsplit);
        if (J.err) {
            rc = J.err;
            goto fail;
        }
        int any = 0, n_right = 0;
        for (int g = 0; g < N; g++) {
            any |= w->correct[g];
            n_right += w->correct[g];
        }
        int vote = eval_majority((const char *const *)w->answers, N);
        it->tourney[k * K + q] = (uint8_t)(win >= 0 && w->correct[win]);
        it->majority[k * K + q] = (uint8_t)(vote >= 0 && w->correct[vote]);
        it->oracle[k * K + q] = (uint8_t)any;
        it->n_right[k * K + q] = (uint8_t)n_right;
        ex->splits[q] = nsplit;
    }
    free_answers(w, ctx->max_group);
    return 0;
fail:
    free_answers(w, ctx->max_group);
    log_item_error("eval_self_critique", job->ds, r, rc);
    return rc;
}

int eval_self_critique(eval_ctx_t *ctx, const dataset_t *ds, size_t max_items, const int *ns,
                       int n_ns, float temperature, rng_t *rng, eval_sc_result_t *res,
                       eval_sc_items_t *items)
{
    if (!ctx || !ds || !ns || !res || !rng || n_ns < 1 || n_ns > EVAL_MAX_NS ||
        !(temperature > 0.0f))
        return -EINVAL;
    int n_max = 0;
    for (int k = 0; k < n_ns; k++) {
        if (ns[k] < 1 || ns[k] > ctx->max_group) {
            log_error("eval_self_critique: N = %d outside [1, %d]", ns[k], ctx->max_group);
            return -EINVAL;
        }
        if (ns[k] > n_max)
            n_max = ns[k];
    }
    if (check_dataset(ctx, ds, "eval_self_critique"))
        return -EINVAL;
    memset(res, 0, sizeof(*res));
    res->n_ns = n_ns;
    for (int k = 0; k < n_ns; k++)
        res->rows[k].n = ns[k];
    eval_sc_items_t own, *it = items ? items : &own;
    memset(it, 0, sizeof(*it));
    size_t n = 0;
    size_t *idx = list_items(ds, DATASET_POLICY, max_items, &n);
    sc_extra_t *ex = calloc(n ? n : 1, sizeof(*ex));
    const size_t n1 = n ? n : 1, nk = n1 * (size_t)n_ns;
    it->n = n;
    it->n_ns = n_ns;
    it->record = calloc(n1, sizeof(size_t));
    it->tourney = calloc(nk, 1);
    it->majority = calloc(nk, 1);
    it->oracle = calloc(nk, 1);
    it->n_right = calloc(nk, 1);
    it->first = calloc(n1, 1);
    int rc = -ENOMEM;
    if (!idx || !ex || !it->record || !it->tourney || !it->majority || !it->oracle ||
        !it->n_right || !it->first) {
        eval_sc_items_free(it);
        goto done;
    }
    job_t job = {.ds = ds, .rec = idx, .n = n, .fn = sc_item, .out = it, .extra = ex,
                 .temperature = temperature, .base = rng_u64(rng), .ns = ns, .n_ns = n_ns,
                 .n_max = n_max};
    if ((rc = run_job(ctx, &job)) != 0) {
        eval_sc_items_free(it);
        goto done;
    }
    double tour[EVAL_MAX_NS] = {0}, single[EVAL_MAX_NS] = {0}, maj[EVAL_MAX_NS] = {0},
           orc[EVAL_MAX_NS] = {0}, splits[EVAL_MAX_NS] = {0};
    size_t too_long = 0;
    for (size_t k = 0; k < n; k++) {
        for (int q = 0; q < n_ns; q++) {
            size_t i = k * (size_t)n_ns + (size_t)q;
            tour[q] += it->tourney[i];
            single[q] += (double)it->n_right[i] / ns[q];
            maj[q] += it->majority[i];
            orc[q] += it->oracle[i];
            splits[q] += ex[k].splits[q];
        }
        res->judge_calls += (size_t)ex[k].runs;
        too_long += (size_t)ex[k].too_long;
    }
    res->n_items = n;
    if (too_long)
        log_warn("eval_self_critique: %zu judge prompts did not fit the context (no verdict)",
                 too_long);
    for (int q = 0; q < n_ns && n; q++) {
        const double dn = (double)n, matches = dn * (ns[q] - 1);
        res->rows[q].tourney_acc = tour[q] / dn;
        res->rows[q].single_acc = single[q] / dn;
        res->rows[q].majority_acc = maj[q] / dn;
        res->rows[q].oracle_acc = orc[q] / dn;
        res->rows[q].split_rate = matches > 0 ? splits[q] / matches : 0.0;
    }
    if (!items)
        eval_sc_items_free(it);
    rc = 0;
done:
    free(idx);
    free(ex);
    return rc;
}
