/* sft: supervised warm-up (see sft.h). */
#include "sft.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "eval.h"
#include "kernels.h"
#include "log.h"
#include "metrics.h"
#include "optim.h"
#include "task.h"
#include "world.h"

/* ---- small helpers ---------------------------------------------------- */

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
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

/* splitmix64 finaliser: a well-mixed 64-bit hash of x. */
static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

#define SFT_MAX_WORKERS 64

static const char *const KIND_KEY[SFT_N_KINDS] = {"critic", "policy", "caption"};

/* ---- record stream ---------------------------------------------------- */

struct sft_stream {
    uint64_t seed;
    double mix[SFT_N_KINDS];
    size_t n[SFT_N_KINDS];
    const dataset_record_t **rec[SFT_N_KINDS]; /* (n[k]) */
    const dataset_t **ds[SFT_N_KINDS];         /* (n[k]) the record's dataset */
    int *perm[SFT_N_KINDS];                    /* (n[k]) permutation of the cached pass */
    uint64_t perm_epoch[SFT_N_KINDS];
    int perm_valid[SFT_N_KINDS];
};

void sft_stream_destroy(sft_stream_t **ps)
{
    if (!ps || !*ps)
        return;
    sft_stream_t *s = *ps;
    for (int k = 0; k < SFT_N_KINDS; k++) {
        free(s->rec[k]);
        free(s->ds[k]);
        free(s->perm[k]);
    }
    free(s);
    *ps = NULL;
}

static int has_target(const dataset_record_t *r)
{
    switch (r->kind) {
    case DATASET_POLICY:
        return r->reference != NULL;
    case DATASET_CRITIC:
        return 1;
    case DATASET_CAPTION:
        return r->caption != NULL;
    }
    return 0;
}

sft_stream_t *sft_stream_new(const dataset_t *const *sets, int n_sets,
                             const double mix[SFT_N_KINDS], uint64_t seed, char *err,
                             size_t errlen)
{
    if (!sets || n_sets < 0 || !mix) {
        errf(err, errlen, "sft_stream_new: bad arguments");
        return NULL;
    }
    sft_stream_t *s = calloc(1, sizeof(*s));
    if (!s)
        goto oom;
    s->seed = seed;
    for (int i = 0; i < n_sets; i++)
        for (size_t j = 0; sets[i] && j < dataset_size(sets[i]); j++) {
            const dataset_record_t *r = dataset_get(sets[i], j);
            if (r && has_target(r))
                s->n[r->kind]++;
        }
    for (int k = 0; k < SFT_N_KINDS; k++) {
        size_t n = s->n[k] ? s->n[k] : 1;
        s->rec[k] = malloc(n * sizeof(*s->rec[k]));
        s->ds[k] = malloc(n * sizeof(*s->ds[k]));
        s->perm[k] = malloc(n * sizeof(int));
        if (!s->rec[k] || !s->ds[k] || !s->perm[k])
            goto oom;
        if (s->n[k] > (size_t)INT32_MAX) {
            errf(err, errlen, "sft: more than 2^31 %s records", KIND_KEY[k]);
            goto fail;
        }
        s->n[k] = 0;
    }
    for (int i = 0; i < n_sets; i++)
        for (size_t j = 0; sets[i] && j < dataset_size(sets[i]); j++) {
            const dataset_record_t *r = dataset_get(sets[i], j);
            if (!r || !has_target(r))
                continue;
            s->rec[r->kind][s->n[r->kind]] = r;
            s->ds[r->kind][s->n[r->kind]] = sets[i];
            s->n[r->kind]++;
        }
    double total = 0;
    for (int k = 0; k < SFT_N_KINDS; k++) {
        double w = mix[k] > 0 ? mix[k] : 0;
        if (w > 0 && s->n[k] == 0)
            log_warn("sft: the training data has no %s records with a target; their share of "
                     "the mix (%.2f) goes to the other kinds",
                     KIND_KEY[k], w);
        s->mix[k] = s->n[k] ? w : 0;
        total += s->mix[k];
    }
    if (!(total > 0)) {
        errf(err, errlen,
             "sft: no training records of a kind with a positive share in sft.mix_* "
             "(critic %zu, policy %zu with a reference, caption %zu)",
             s->n[0], s->n[1], s->n[2]);
        goto fail;
    }
    for (int k = 0; k < SFT_N_KINDS; k++)
        s->mix[k] /= total;
    return s;
oom:
    errf(err, errlen, "sft: out of memory pooling the training records");
fail:
    sft_stream_destroy(&s);
    return NULL;
}

size_t sft_stream_pool_size(const sft_stream_t *s, dataset_kind_t kind)
{
    return s && (int)kind >= 0 && kind < SFT_N_KINDS ? s->n[kind] : 0;
}

double sft_stream_mix(const sft_stream_t *s, dataset_kind_t kind)
{
    return s && (int)kind >= 0 && kind < SFT_N_KINDS ? s->mix[kind] : 0;
}

void sft_cursor_init(sft_cursor_t *c, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    rng_seed_stream(&c->rng, seed, 0x5f7d0001ULL);
}

/* Pass `epoch` over kind k is a fixed permutation of seed, k and epoch. */
static void make_perm(sft_stream_t *s, int k, uint64_t epoch)
{
    rng_t r;
    rng_seed_stream(&r, s->seed ^ 0x5f7d5eedULL, ((uint64_t)(k + 1) << 48) ^ epoch);
    for (size_t i = 0; i < s->n[k]; i++)
        s->perm[k][i] = (int)i;
    rng_shuffle_int(&r, s->perm[k], s->n[k]);
    s->perm_epoch[k] = epoch;
    s->perm_valid[k] = 1;
}

const dataset_record_t *sft_stream_next(sft_stream_t *s, sft_cursor_t *c, const dataset_t **ds,
                                        int *order)
{
    if (!s || !c)
        return NULL;
    double u = rng_uniform_double(&c->rng);
    int k = -1;
    double acc = 0;
    for (int i = 0; i < SFT_N_KINDS; i++) {
        if (s->mix[i] <= 0)
            continue;
        k = i; /* the last kind with a share also takes rounding leftovers */
        acc += s->mix[i];
        if (u < acc)
            break;
    }
    if (k < 0)
        return NULL;
    if (c->pos[k] >= s->n[k]) {
        c->epoch[k]++;
        c->pos[k] = 0;
    }
    if (!s->perm_valid[k] || s->perm_epoch[k] != c->epoch[k])
        make_perm(s, k, c->epoch[k]);
    size_t i = (size_t)s->perm[k][c->pos[k]++];
    int ord = PROMPT_ORDER_KEEP;
    if (k == DATASET_CRITIC) {
        /* Pairs of critic draws get one KEEP and one SWAP, which goes first
         * decided by a hash of the pair number: random, yet exactly balanced
         * and a pure function of the cursor (nothing extra to save). */
        uint64_t pair = c->critic_drawn / 2;
        int first = (int)(mix64(s->seed * 0x2545f4914f6cdd1dULL + pair) & 1);
        ord = (first ^ (int)(c->critic_drawn & 1)) ? PROMPT_ORDER_SWAP : PROMPT_ORDER_KEEP;
        c->critic_drawn++;
    }
    if (ds)
        *ds = s->ds[k][i];
    if (order)
        *order = ord;
    return s->rec[k][i];
}

/* ---- trainer ---------------------------------------------------------- */

/* sft.threads, or one per core of learner.cpus, or one per online core. */
static int pick_threads(const crl_config_t *cfg)
{
    if (cfg->sft.threads > 0)
        return cfg->sft.threads;
    if (cfg->learner.cpus.n > 0)
        return cfg->learner.cpus.n;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}


/* One data-parallel worker: a slice of the batch (whole sequences) on its
 * own model copy. Worker 0 trains s->m itself; the others hold replicas
 * whose parameters are refreshed from s->m each step and whose gradients
 * are summed into s->m's (fixed order: deterministic for a given count). */
typedef struct {
    sft_t *s;
    model_t *m;          /* worker 0: s->m; else a replica with its own grads */
    model_acts_t *acts;
    int *seq_start;      /* (max_seqs+1) the slice's sequence starts, rebased to 0 */
    model_batch_t mb;
    int tok0;            /* first batch position of the slice */
    int rc;
} sft_worker_t;

struct sft {
    crl_config_t cfg;
    model_config_t mcfg;
    const tokenizer_t *tok;
    prompt_options_t popt;
    sft_stream_t *stream;
    sft_cursor_t cur;
    model_t *m;
    adamw_t *opt;
    model_acts_t *acts;
    int batch_tokens, max_seqs, max_images, n_patches, image_size;
    int *tokens;      /* (batch_tokens) */
    int *targets;     /* (batch_tokens) */
    float *logp;      /* (batch_tokens) */
    float *dlogp;     /* (batch_tokens) */
    int *seq_start;   /* (max_seqs+1) */
    int *seq_kind;    /* (max_seqs) */
    int *seq_plen;    /* (max_seqs) */
    int *seq_img;     /* (max_seqs) image index of each sequence, -1 = none */
    float *images;    /* (max_images, 3, S, S) */
    int *scratch;     /* (max_seq_len) one encoded sequence */
    int n_workers;
    sft_worker_t *workers; /* (n_workers) */
    float g_scale;    /* -1 / n_targets of the current batch */
    long steps;
    uint64_t tokens_seen;
    double elapsed_before;
    int have_val;
    long val_step;             /* step of last_val */
    sft_val_result_t last_val;
};

static int labels_from_config(const crl_config_t *cfg, prompt_options_t *popt,
                              reward_config_t *rcfg, char *err, size_t errlen)
{
    reward_config_t r;
    reward_config_default(&r);
    const char *l = cfg->data.verdict_labels;
    if (strlen(l) != 2) {
        errf(err, errlen, "data.verdict_labels '%s': expected two characters, e.g. \"AB\"", l);
        return -EINVAL;
    }
    r.labels[0][0] = l[0];
    r.labels[0][1] = '\0';
    r.labels[1][0] = l[1];
    r.labels[1][1] = '\0';
    char why[256];
    if (reward_config_check(&r, why, sizeof(why)) != 0) {
        errf(err, errlen, "data.verdict_labels '%s': %s", l, why);
        return -EINVAL;
    }
    if (popt) {
        prompt_options_default(popt);
        popt->variant = cfg->data.critic_variant == CONFIG_CRITIC_FULL ? PROMPT_CRITIC_FULL
                                                                        : PROMPT_CRITIC_FINAL_ONLY;
        prompt_options_from_reward(popt, &r);
    }
    if (rcfg)
        *rcfg = r;
    return 0;
}

void sft_destroy(sft_t **ps)
{
    if (!ps || !*ps)
        return;
    sft_t *s = *ps;
    sft_stream_destroy(&s->stream);
    for (int i = 0; s->workers && i < s->n_workers; i++) {
        if (i > 0) {
            model_destroy(&s->workers[i].m);
            model_acts_destroy(&s->workers[i].acts);
        }
        free(s->workers[i].seq_start);
    }
    free(s->workers);
    model_acts_destroy(&s->acts);
    adamw_destroy(&s->opt);
    model_destroy(&s->m);
    free(s->tokens);
    free(s->targets);
    free(s->logp);
    free(s->dlogp);
    free(s->seq_start);
    free(s->seq_kind);
    free(s->seq_plen);
    free(s->seq_img);
    free(s->images);
    free(s->scratch);
    free(s);
    *ps = NULL;
}

static adamw_config_t optim_config(const crl_config_t *cfg)
{
    adamw_config_t oc = adamw_config_default();
    oc.lr = (float)cfg->sft.lr;
    oc.weight_decay = (float)cfg->sft.weight_decay;
    oc.grad_clip = (float)cfg->sft.grad_clip;
    oc.warmup_steps = cfg->sft.warmup;
    oc.total_steps = cfg->sft.steps > cfg->sft.warmup ? cfg->sft.steps : cfg->sft.warmup + 1;
    oc.schedule = OPTIM_SCHED_COSINE;
    oc.min_lr_ratio = 0.1f;
    return oc;
}

sft_t *sft_new(const crl_config_t *cfg, const tokenizer_t *tok, const dataset_t *const *train,
               int n_train, char *err, size_t errlen)
{
    if (!cfg || !tok || (!train && n_train > 0)) {
        errf(err, errlen, "sft_new: bad arguments");
        return NULL;
    }
    sft_t *s = calloc(1, sizeof(*s));
    if (!s) {
        errf(err, errlen, "sft: out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->tok = tok;
    s->mcfg = cfg->model;
    s->mcfg.vocab_size = tok_vocab_size(tok);
    char why[512];
    if (model_config_validate(&s->mcfg, why, sizeof(why)) != 0) {
        errf(err, errlen, "model config: %s", why);
        goto fail;
    }
    if (labels_from_config(cfg, &s->popt, NULL, err, errlen) != 0)
        goto fail;
    for (int i = 0; i < n_train; i++)
        if (train[i] && dataset_image_size(train[i]) != s->mcfg.image_size) {
            errf(err, errlen,
                 "sft: a training set was loaded at image size %d but model.image_size is %d",
                 dataset_image_size(train[i]), s->mcfg.image_size);
            goto fail;
        }
    if (cfg->sft.batch_tokens < s->mcfg.max_seq_len) {
        errf(err, errlen, "sft.batch_tokens (%d) must hold one sequence of model.max_seq_len (%d)",
             cfg->sft.batch_tokens, s->mcfg.max_seq_len);
        goto fail;
    }
    double mix[SFT_N_KINDS];
    mix[DATASET_CRITIC] = cfg->sft.mix_critic;
    mix[DATASET_POLICY] = cfg->sft.mix_policy;
    mix[DATASET_CAPTION] = cfg->sft.mix_captions;
    s->stream = sft_stream_new(train, n_train, mix, (uint64_t)cfg->run.seed, err, errlen);
    if (!s->stream)
        goto fail;
    sft_cursor_init(&s->cur, (uint64_t)cfg->run.seed);

    s->m = model_new(&s->mcfg, 1);
    if (!s->m) {
        errf(err, errlen, "sft: cannot build the model (out of memory?)");
        goto fail;
    }
    rng_t init;
    rng_seed_stream(&init, (uint64_t)cfg->run.seed, 0x1417ULL);
    model_init_random(s->m, &init);
    adamw_config_t oc = optim_config(cfg);
    if (adamw_config_validate(&oc, why, sizeof(why)) != 0) {
        errf(err, errlen, "sft optimizer (sft.lr / sft.weight_decay / sft.grad_clip / sft.warmup): %s",
             why);
        goto fail;
    }
    s->opt = adamw_new(s->m, &oc);
    if (!s->opt) {
        errf(err, errlen, "sft: cannot create the optimizer");
        goto fail;
    }
    s->batch_tokens = cfg->sft.batch_tokens;
    s->image_size = s->mcfg.image_size;
    s->n_patches = s->image_size > 0 ? model_n_patches(&s->mcfg) : 0;
    /* Every sequence holds at least <bos> and <eos>; one with an image
     * also its n_patches slots and the two image tags. */
    s->max_seqs = s->batch_tokens / 2 + 1;
    s->max_images = s->image_size > 0 ? s->batch_tokens / (s->n_patches + 4) + 1 : 0;
    size_t bt = (size_t)s->batch_tokens;
    size_t img = (size_t)3 * s->image_size * s->image_size;
    s->tokens = malloc(bt * sizeof(int));
    s->targets = malloc(bt * sizeof(int));
    s->logp = malloc(bt * sizeof(float));
    s->dlogp = malloc(bt * sizeof(float));
    s->seq_start = malloc(((size_t)s->max_seqs + 1) * sizeof(int));
    s->seq_kind = malloc((size_t)s->max_seqs * sizeof(int));
    s->seq_plen = malloc((size_t)s->max_seqs * sizeof(int));
    s->seq_img = malloc((size_t)s->max_seqs * sizeof(int));
    s->images = malloc(((size_t)s->max_images * img + 1) * sizeof(float));
    s->scratch = malloc((size_t)s->mcfg.max_seq_len * sizeof(int));
    s->acts = model_acts_new(s->m, s->batch_tokens, s->max_seqs);
    if (!s->tokens || !s->targets || !s->logp || !s->dlogp || !s->seq_start || !s->seq_kind ||
        !s->seq_plen || !s->seq_img || !s->images || !s->scratch || !s->acts) {
        errf(err, errlen, "sft: out of memory sizing batches of %d tokens", s->batch_tokens);
        goto fail;
    }
    s->n_workers = pick_threads(cfg);
    if (s->n_workers > SFT_MAX_WORKERS)
        s->n_workers = SFT_MAX_WORKERS;
    s->workers = calloc((size_t)s->n_workers, sizeof(sft_worker_t));
    if (!s->workers)
        goto oom;
    for (int i = 0; i < s->n_workers; i++) {
        sft_worker_t *w = &s->workers[i];
        w->s = s;
        w->m = i == 0 ? s->m : model_new(&s->mcfg, 1);
        w->acts = i == 0 ? s->acts : (w->m ? model_acts_new(w->m, s->batch_tokens, s->max_seqs) : NULL);
        w->seq_start = malloc(((size_t)s->max_seqs + 1) * sizeof(int));
        if (!w->m || !w->acts || !w->seq_start)
            goto oom;
    }
    return s;
oom:
    errf(err, errlen, "sft: out of memory for %d data-parallel workers (sft.threads)", s->n_workers);
fail:
    sft_destroy(&s);
    return NULL;
}

model_t *sft_model(sft_t *s) { return s ? s->m : NULL; }
const tokenizer_t *sft_tokenizer(const sft_t *s) { return s ? s->tok : NULL; }
long sft_steps_done(const sft_t *s) { return s ? s->steps : 0; }
const sft_cursor_t *sft_cursor(const sft_t *s) { return s ? &s->cur : NULL; }
uint64_t sft_tokens_seen(const sft_t *s) { return s ? s->tokens_seen : 0; }
double sft_elapsed_before(const sft_t *s) { return s ? s->elapsed_before : 0; }
long sft_total_steps(const sft_t *s) { return s ? s->cfg.sft.steps : 0; }

/* Records in a row too long for model.max_seq_len before we give up. */
#define MAX_CONSECUTIVE_SKIPS 1000

int sft_next_batch(sft_t *s, sft_batch_t *out)
{
    if (!s || !out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    const int L = s->mcfg.max_seq_len;
    const size_t img_floats = (size_t)3 * s->image_size * s->image_size;
    int T = 0, ns = 0, ni = 0, skips_in_row = 0;
    s->seq_start[0] = 0;
    for (;;) {
        sft_cursor_t saved = s->cur;
        const dataset_t *ds = NULL;
        int order = PROMPT_ORDER_KEEP;
        const dataset_record_t *rec = sft_stream_next(s->stream, &s->cur, &ds, &order);
        if (!rec)
            return -EIO;
        prompt_task_t pt;
        int rc = prompt_for_record(&s->popt, rec, order, NULL, &pt);
        if (rc != 0) {
            log_error("sft: record %s (line %zu): cannot build its prompt (%s)", rec->id, rec->line,
                      strerror(-rc));
            return rc;
        }
        const uint8_t *img = s->image_size > 0 ? dataset_image(ds, rec) : NULL;
        int with_image = img != NULL;
        int p = task_encode_prompt(s->tok, s->n_patches, with_image, pt.text, s->scratch, L);
        int r = -ENOSPC;
        if (p >= 0 && p < L - 1)
            r = task_encode_response(s->tok, pt.target ? pt.target : "", s->scratch + p, L - p);
        else if (p >= 0)
            p = -ENOSPC;
        prompt_task_free(&pt);
        if (p == -ENOSPC || r == -ENOSPC) {
            out->n_skipped++;
            if (out->n_skipped <= 3 && s->steps < 3)
                log_warn("sft: record %s (line %zu) is longer than model.max_seq_len (%d): skipped",
                         rec->id, rec->line, L);
            if (++skips_in_row > MAX_CONSECUTIVE_SKIPS) {
                log_error("sft: %d records in a row are longer than model.max_seq_len (%d): raise it",
                          skips_in_row, L);
                return -E2BIG;
            }
            continue;
        }
        if (p < 0 || r < 0) {
            log_error("sft: record %s (line %zu): cannot encode (%s)", rec->id, rec->line,
                      strerror(-(p < 0 ? p : r)));
            return p < 0 ? p : r;
        }
        skips_in_row = 0;
        int n = p + r;
        if (T + n > s->batch_tokens || ns == s->max_seqs || (with_image && ni == s->max_images)) {
            /* Does not fit: it opens the next batch (the cursor steps back,
             * so the record order does not depend on batch boundaries). */
            s->cur = saved;
            break;
        }
        memcpy(s->tokens + T, s->scratch, (size_t)n * sizeof(int));
        for (int i = 0; i < n; i++)
            s->targets[T + i] = (i >= p - 1 && i < n - 1) ? s->scratch[i + 1] : -1;
        s->seq_img[ns] = with_image ? ni : -1;
        if (with_image) {
            float *dst = s->images + (size_t)ni * img_floats;
            for (size_t i = 0; i < img_floats; i++)
                dst[i] = (float)img[i] * (1.0f / 255.0f);
            ni++;
        }
        int kind = (int)rec->kind;
        s->seq_kind[ns] = kind;
        s->seq_plen[ns] = p;
        out->n_targets += r;
        out->n_targets_kind[kind] += r;
        out->n_seqs_kind[kind]++;
        ns++;
        T += n;
        s->seq_start[ns] = T;
    }
    out->mb.n_tokens = T;
    out->mb.n_seqs = ns;
    out->mb.seq_start = s->seq_start;
    out->mb.tokens = s->tokens;
    out->mb.n_images = ni;
    out->mb.images = s->images;
    out->targets = s->targets;
    out->seq_kind = s->seq_kind;
    out->seq_prompt_len = s->seq_plen;
    return 0;
}

/* Forward + log-probs of batch b; fills s->logp and returns the logits. */
static float *forward_logp(sft_t *s, const sft_batch_t *b)
{
    float *logits = model_forward(s->m, s->acts, &b->mb);
    if (!logits)
        return NULL;
    k_logprobs_fwd(s->logp, NULL, logits, b->targets, b->mb.n_tokens, s->mcfg.vocab_size, 1.0f);
    return logits;
}

double sft_batch_loss(sft_t *s, const sft_batch_t *b)
{
    if (!s || !b || b->n_targets <= 0 || forward_logp(s, b) == NULL)
        return NAN;
    double sum = 0;
    for (int t = 0; t < b->mb.n_tokens; t++)
        if (b->targets[t] >= 0)
            sum += s->logp[t];
    return -sum / b->n_targets;
}

/* Forward + backward of one worker's slice; the gradient of
 * loss = -sum(logp over all targets of the batch) / n_targets lands in
 * w->m->grads (zeroed first). */
static void *worker_run(void *arg)
{
    sft_worker_t *w = arg;
    sft_t *s = w->s;
    w->rc = 0;
    model_zero_grads(w->m);
    if (w->mb.n_tokens == 0)
        return NULL;
    if (w->m != s->m)
        memcpy(w->m->params, s->m->params, s->m->n_params * sizeof(float));
    const int T = w->mb.n_tokens, V = s->mcfg.vocab_size;
    const int *targets = s->targets + w->tok0;
    float *logp = s->logp + w->tok0, *dlogp = s->dlogp + w->tok0;
    float *logits = model_forward(w->m, w->acts, &w->mb);
    if (!logits) {
        w->rc = -EINVAL;
        return NULL;
    }
    k_logprobs_fwd(logp, NULL, logits, targets, T, V, 1.0f);
    for (int t = 0; t < T; t++)
        dlogp[t] = targets[t] >= 0 ? s->g_scale : 0.0f;
    k_logprobs_bwd(logits, dlogp, logits, targets, T, V, 1.0f);
    w->rc = model_backward(w->m, w->acts, logits);
    return NULL;
}

/* Cuts the batch into n_workers slices of whole sequences with about equal
 * token counts. */
static void split_batch(sft_t *s, const sft_batch_t *b)
{
    const int n = s->n_workers, T = b->mb.n_tokens;
    const size_t img_floats = (size_t)3 * s->image_size * s->image_size;
    int q = 0;
    for (int i = 0; i < n; i++) {
        sft_worker_t *w = &s->workers[i];
        int q0 = q;
        long goal = (long)T * (i + 1) / n; /* slice i ends at the first boundary >= goal */
        while (q < b->mb.n_seqs && (i == n - 1 || s->seq_start[q] < goal))
            q++;
        int t0 = s->seq_start[q0], t1 = s->seq_start[q];
        int img0 = -1, n_img = 0;
        for (int k = q0; k < q; k++) {
            w->seq_start[k - q0] = s->seq_start[k] - t0;
            if (s->seq_img[k] >= 0) {
                if (img0 < 0)
                    img0 = s->seq_img[k];
                n_img++;
            }
        }
        w->seq_start[q - q0] = t1 - t0;
        w->tok0 = t0;
        w->mb.n_tokens = t1 - t0;
        w->mb.n_seqs = q - q0;
        w->mb.seq_start = w->seq_start;
        w->mb.tokens = s->tokens + t0;
        w->mb.n_images = n_img;
        w->mb.images = n_img ? s->images + (size_t)img0 * img_floats : s->images;
    }
}

int sft_step(sft_t *s, sft_step_stats_t *st)
{
    if (!s)
        return -EINVAL;
    sft_batch_t b;
    int rc = sft_next_batch(s, &b);
    if (rc != 0)
        return rc;
    if (b.n_targets <= 0)
        return -EIO;
    const int T = b.mb.n_tokens;
    s->g_scale = -1.0f / (float)b.n_targets;
    split_batch(s, &b);
    pthread_t th[SFT_MAX_WORKERS];
    int started = 1;
    for (int i = 1; i < s->n_workers; i++) {
        if (pthread_create(&th[i], NULL, worker_run, &s->workers[i]) != 0) {
            /* run the rest here: slower, same result */
            for (int j = i; j < s->n_workers; j++)
                worker_run(&s->workers[j]);
            break;
        }
        started++;
    }
    worker_run(&s->workers[0]);
    for (int i = 1; i < started; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < s->n_workers; i++)
        if (s->workers[i].rc != 0)
            return s->workers[i].rc;
    /* sum the replicas' gradients into the model's, in worker order */
    for (int i = 1; i < s->n_workers; i++) {
        if (s->workers[i].mb.n_tokens == 0)
            continue;
        float *dst = s->m->grads;
        const float *src = s->workers[i].m->grads;
        for (size_t k = 0; k < s->m->n_params; k++)
            dst[k] += src[k];
    }
    double sum = 0, sum_kind[SFT_N_KINDS] = {0};
    for (int q = 0; q < b.mb.n_seqs; q++) {
        double ss = 0;
        for (int t = s->seq_start[q]; t < s->seq_start[q + 1]; t++)
            if (b.targets[t] >= 0)
                ss += s->logp[t];
        sum += ss;
        sum_kind[s->seq_kind[q]] += ss;
    }
    float lr = adamw_lr_at(adamw_config(s->opt), adamw_steps(s->opt));
    float gn = adamw_step(s->opt, s->m);
    s->steps++;
    s->tokens_seen += (uint64_t)T;
    if (st) {
        memset(st, 0, sizeof(*st));
        st->step = s->steps;
        st->loss = -sum / b.n_targets;
        for (int k = 0; k < SFT_N_KINDS; k++)
            st->loss_kind[k] = b.n_targets_kind[k] ? -sum_kind[k] / b.n_targets_kind[k] : NAN;
        st->lr = lr;
        st->grad_norm = gn;
        st->n_tokens = T;
        st->n_targets = b.n_targets;
        st->n_seqs = b.mb.n_seqs;
        st->n_skipped = b.n_skipped;
    }
    return 0;
}

/* ---- checkpoints ------------------------------------------------------ */

static int fsync_path(const char *path, int is_dir)
{
    int fd = open(path, (is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Removes a folder of plain files (one level: checkpoint folders only). */
static int remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *e;
    char path[CONFIG_PATH_LEN + 512];
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (unlink(path) != 0 && rc == 0)
            rc = -errno;
    }
    closedir(d);
    if (rmdir(dir) != 0 && rc == 0)
        rc = -errno;
    return rc;
}

static char *u64_hex(uint64_t v, char buf[17])
{
    snprintf(buf, 17, "%016llx", (unsigned long long)v);
    return buf;
}

static int parse_u64_hex(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsString(item) || strlen(item->valuestring) != 16)
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(item->valuestring, &end, 16);
    if (errno || !end || *end)
        return -EINVAL;
    *out = (uint64_t)v;
    return 0;
}

static cJSON *val_to_json(const sft_val_result_t *v)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "policy_n", v->policy_n);
    cJSON_AddNumberToObject(o, "policy_acc", v->policy_acc);
    cJSON_AddNumberToObject(o, "policy_format", v->policy_format);
    cJSON_AddNumberToObject(o, "policy_sample_acc", v->policy_sample_acc);
    cJSON_AddNumberToObject(o, "critic_n", v->critic_n);
    cJSON_AddNumberToObject(o, "critic_acc", v->critic_acc);
    cJSON_AddNumberToObject(o, "critic_both", v->critic_both);
    cJSON_AddNumberToObject(o, "critic_says_a", v->critic_says_a);
    cJSON_AddNumberToObject(o, "critic_format", v->critic_format);
    cJSON_AddNumberToObject(o, "critic_no_verdict", v->critic_no_verdict);
    cJSON_AddNumberToObject(o, "caption_n", v->caption_n);
    cJSON_AddNumberToObject(o, "caption_recall", v->caption_recall);
    return o;
}

static void val_from_json(const cJSON *o, sft_val_result_t *v)
{
    memset(v, 0, sizeof(*v));
#define GETNUM(field)                                                                              \
    do {                                                                                           \
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, #field);                             \
        if (cJSON_IsNumber(it))                                                                    \
            v->field = it->valuedouble;                                                            \
    } while (0)
    GETNUM(policy_acc);
    GETNUM(policy_format);
    GETNUM(policy_sample_acc);
    GETNUM(critic_acc);
    GETNUM(critic_both);
    GETNUM(critic_says_a);
    GETNUM(critic_format);
    GETNUM(critic_no_verdict);
    GETNUM(caption_recall);
#undef GETNUM
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, "policy_n");
    v->policy_n = cJSON_IsNumber(it) ? it->valueint : 0;
    it = cJSON_GetObjectItemCaseSensitive(o, "critic_n");
    v->critic_n = cJSON_IsNumber(it) ? it->valueint : 0;
    it = cJSON_GetObjectItemCaseSensitive(o, "caption_n");
    v->caption_n = cJSON_IsNumber(it) ? it->valueint : 0;
}

static char *trainer_json(const sft_t *s, double elapsed_s, const char *extra_json)
{
    cJSON *o = cJSON_CreateObject();
    char hex[17];
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "format", SFT_TRAINER_FORMAT);
    cJSON_AddNumberToObject(o, "version", SFT_TRAINER_VERSION);
    cJSON_AddStringToObject(o, "stage", "sft");
    cJSON_AddNumberToObject(o, "step", (double)s->steps);
    cJSON_AddNumberToObject(o, "optimizer_step", (double)adamw_steps(s->opt));
    cJSON_AddNumberToObject(o, "total_steps", (double)s->cfg.sft.steps);
    cJSON_AddNumberToObject(o, "tokens_seen", (double)s->tokens_seen);
    cJSON_AddNumberToObject(o, "elapsed_s", elapsed_s);
    cJSON_AddStringToObject(o, "seed", u64_hex((uint64_t)s->cfg.run.seed, hex));
    cJSON *data = cJSON_AddObjectToObject(o, "data");
    cJSON *rng = data ? cJSON_AddArrayToObject(data, "rng") : NULL;
    if (!rng) {
        cJSON_Delete(o);
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        cJSON_AddItemToArray(rng, cJSON_CreateString(u64_hex(s->cur.rng.s[i], hex)));
    cJSON_AddStringToObject(data, "critic_drawn", u64_hex(s->cur.critic_drawn, hex));
    for (int k = 0; k < SFT_N_KINDS; k++) {
        cJSON *kd = cJSON_AddObjectToObject(data, KIND_KEY[k]);
        if (!kd)
            continue;
        cJSON_AddStringToObject(kd, "epoch", u64_hex(s->cur.epoch[k], hex));
        cJSON_AddStringToObject(kd, "pos", u64_hex(s->cur.pos[k], hex));
        cJSON_AddNumberToObject(kd, "pool", (double)s->stream->n[k]);
    }
    if (s->have_val) {
        cJSON *v = val_to_json(&s->last_val);
        if (v)
            cJSON_AddNumberToObject(v, "step", (double)s->val_step);
        cJSON_AddItemToObject(o, "val", v);
    }
    if (extra_json) {
        cJSON *x = cJSON_Parse(extra_json);
        if (x)
            cJSON_AddItemToObject(o, "extra", x);
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

int sft_save(const sft_t *s, const char *root, const crl_config_t *cfg, double elapsed_s,
             const char *extra_json, char *err, size_t errlen)
{
    if (!s || !root)
        return -EINVAL;
    char tmp[CONFIG_PATH_LEN + 128], fin[CONFIG_PATH_LEN + 128], path[CONFIG_PATH_LEN + 256];
    char why[4 * CONFIG_PATH_LEN];
    int rc = ckpt_mkdirs(root, why, sizeof(why));
    if (rc != 0) {
        errf(err, errlen, "%s: %s", root, why);
        return rc;
    }
    snprintf(tmp, sizeof(tmp), "%s/.tmp-step-%ld", root, s->steps);
    snprintf(fin, sizeof(fin), "%s/step-%ld", root, s->steps);
    remove_flat_dir(tmp); /* a leftover of a crash */
    char *tj = NULL;
    if ((rc = ckpt_save_model(s->m, tmp, why, sizeof(why))) != 0)
        goto fail_why;
    snprintf(path, sizeof(path), "%s/optimizer.safetensors", tmp);
    if ((rc = ckpt_save_optimizer(s->m, adamw_m(s->opt), adamw_v(s->opt), adamw_steps(s->opt), path,
                                  why, sizeof(why))) != 0)
        goto fail_why;
    snprintf(path, sizeof(path), "%s/tokenizer.json", tmp);
    if ((rc = tok_save(s->tok, path, why, sizeof(why))) != 0)
        goto fail_why;
    if ((rc = fsync_path(path, 0)) != 0) {
        snprintf(why, sizeof(why), "%s: fsync: %s", path, strerror(-rc));
        goto fail_why;
    }
    if (cfg) {
        snprintf(path, sizeof(path), "%s/run_config.json", tmp);
        if ((rc = config_write_file(cfg, path, why, sizeof(why))) != 0)
            goto fail_why;
    }
    tj = trainer_json(s, elapsed_s, extra_json);
    if (!tj) {
        rc = -ENOMEM;
        snprintf(why, sizeof(why), "out of memory");
        goto fail_why;
    }
    snprintf(path, sizeof(path), "%s/trainer.json", tmp);
    if ((rc = ckpt_write_file_atomic(path, tj, strlen(tj), why, sizeof(why))) != 0)
        goto fail_why;
    free(tj);
    tj = NULL;
    if ((rc = fsync_path(tmp, 1)) != 0) {
        snprintf(why, sizeof(why), "%s: fsync: %s", tmp, strerror(-rc));
        goto fail_why;
    }
    /* A folder of the same step (a resumed run saving again) is replaced. */
    if (dir_exists(fin) && (rc = remove_flat_dir(fin)) != 0) {
        snprintf(why, sizeof(why), "cannot replace %s: %s", fin, strerror(-rc));
        goto fail_why;
    }
    if (rename(tmp, fin) != 0) {
        rc = -errno;
        snprintf(why, sizeof(why), "rename %s -> %s: %s", tmp, fin, strerror(errno));
        goto fail_why;
    }
    /* latest -> step-N, swapped in atomically */
    char link_tmp[CONFIG_PATH_LEN + 64], link[CONFIG_PATH_LEN + 64], target[64];
    snprintf(link_tmp, sizeof(link_tmp), "%s/.latest.tmp", root);
    snprintf(link, sizeof(link), "%s/latest", root);
    snprintf(target, sizeof(target), "step-%ld", s->steps);
    unlink(link_tmp);
    if (symlink(target, link_tmp) != 0 || rename(link_tmp, link) != 0) {
        rc = -errno;
        snprintf(why, sizeof(why), "cannot point %s at %s: %s", link, target, strerror(errno));
        goto fail_why;
    }
    fsync_path(root, 1);
    return 0;
fail_why:
    free(tj);
    errf(err, errlen, "checkpoint %s: %s", fin, why);
    return rc ? rc : -EIO;
}

static char *read_small_file(const char *path, size_t max, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad || n > max) {
        errf(err, errlen, "%s: %s", path, !buf ? "out of memory" : bad ? "read error" : "too large");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static int model_config_diff(const model_config_t *a, const model_config_t *b, char *err,
                             size_t errlen)
{
#define CMP(f, key)                                                                                \
    if (a->f != b->f) {                                                                            \
        errf(err, errlen, "%s: checkpoint has %g, the config %g", key, (double)a->f, (double)b->f); \
        return -EINVAL;                                                                            \
    }
    CMP(vocab_size, "model.vocab_size (from the tokenizer)");
    CMP(dim, "model.dim");
    CMP(n_layers, "model.n_layers");
    CMP(n_heads, "model.n_heads");
    CMP(n_kv_heads, "model.n_kv_heads");
    CMP(hidden_dim, "model.hidden_dim");
    CMP(max_seq_len, "model.max_seq_len");
    CMP(image_size, "model.image_size");
    CMP(patch_size, "model.patch_size");
    CMP(tie_embeddings, "model.tie_embeddings");
    CMP(rope_theta, "model.rope_theta");
    CMP(norm_eps, "model.norm_eps");
#undef CMP
    return 0;
}

int sft_load(sft_t *s, const char *dir, char *err, size_t errlen)
{
    if (!s || !dir)
        return -EINVAL;
    char path[CONFIG_PATH_LEN + 256], why[512];
    int rc = -EINVAL;
    model_t *lm = NULL;
    cJSON *o = NULL;
    snprintf(path, sizeof(path), "%s/trainer.json", dir);
    char *text = read_small_file(path, 1 << 20, err, errlen);
    if (!text)
        return -ENOENT;
    o = cJSON_Parse(text);
    free(text);
    if (!o || !cJSON_IsObject(o)) {
        errf(err, errlen, "%s: not a JSON object", path);
        goto out;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "version");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, SFT_TRAINER_FORMAT) != 0) {
        errf(err, errlen, "%s: \"format\" is not \"%s\" (not a warm-up checkpoint)", path,
             SFT_TRAINER_FORMAT);
        goto out;
    }
    if (!cJSON_IsNumber(ver) || ver->valueint != SFT_TRAINER_VERSION) {
        errf(err, errlen, "%s: \"version\" must be %d", path, SFT_TRAINER_VERSION);
        goto out;
    }
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(o, "step");
    const cJSON *tokens = cJSON_GetObjectItemCaseSensitive(o, "tokens_seen");
    const cJSON *elapsed = cJSON_GetObjectItemCaseSensitive(o, "elapsed_s");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data");
    const cJSON *rng = data ? cJSON_GetObjectItemCaseSensitive(data, "rng") : NULL;
    if (!cJSON_IsNumber(step) || step->valuedouble < 0 || !cJSON_IsNumber(tokens) ||
        !cJSON_IsNumber(elapsed) || !cJSON_IsObject(data) || !cJSON_IsArray(rng) ||
        cJSON_GetArraySize(rng) != 4) {
        errf(err, errlen, "%s: missing or bad \"step\", \"tokens_seen\", \"elapsed_s\" or \"data.rng\"",
             path);
        goto out;
    }
    sft_cursor_t cur;
    memset(&cur, 0, sizeof(cur));
    for (int i = 0; i < 4; i++)
        if (parse_u64_hex(cJSON_GetArrayItem(rng, i), &cur.rng.s[i]) != 0) {
            errf(err, errlen, "%s: data.rng[%d] is not a 16-digit hex string", path, i);
            goto out;
        }
    if (parse_u64_hex(cJSON_GetObjectItemCaseSensitive(data, "critic_drawn"), &cur.critic_drawn)) {
        errf(err, errlen, "%s: data.critic_drawn is not a 16-digit hex string", path);
        goto out;
    }
    for (int k = 0; k < SFT_N_KINDS; k++) {
        const cJSON *kd = cJSON_GetObjectItemCaseSensitive(data, KIND_KEY[k]);
        const cJSON *pool = kd ? cJSON_GetObjectItemCaseSensitive(kd, "pool") : NULL;
        if (!cJSON_IsObject(kd) ||
            parse_u64_hex(cJSON_GetObjectItemCaseSensitive(kd, "epoch"), &cur.epoch[k]) ||
            parse_u64_hex(cJSON_GetObjectItemCaseSensitive(kd, "pos"), &cur.pos[k]) ||
            !cJSON_IsNumber(pool)) {
            errf(err, errlen, "%s: data.%s needs \"epoch\", \"pos\" (hex strings) and \"pool\"", path,
                 KIND_KEY[k]);
            goto out;
        }
        if ((size_t)pool->valuedouble != s->stream->n[k]) {
            log_warn("sft: resuming with %zu %s records where the checkpoint had %.0f: the data "
                     "changed, so the record order will not be the one of an uninterrupted run",
                     s->stream->n[k], KIND_KEY[k], pool->valuedouble);
            if (cur.pos[k] > s->stream->n[k])
                cur.pos[k] = s->stream->n[k];
        }
    }
    snprintf(path, sizeof(path), "%s/config.json", dir);
    model_config_t mc;
    if ((rc = ckpt_read_config(path, &mc, why, sizeof(why))) != 0) {
        errf(err, errlen, "%s", why);
        goto out;
    }
    if ((rc = model_config_diff(&mc, &s->mcfg, why, sizeof(why))) != 0) {
        errf(err, errlen,
             "%s: the checkpoint's model differs from the config: %s (use another run.name, or "
             "the checkpoint's settings)",
             dir, why);
        goto out;
    }
    lm = ckpt_load_model(dir, 0, why, sizeof(why));
    if (!lm) {
        rc = -EINVAL;
        errf(err, errlen, "%s", why);
        goto out;
    }
    if ((rc = model_copy_params(s->m, lm)) != 0) {
        errf(err, errlen, "%s: the checkpoint's parameters do not fit the model", dir);
        goto out;
    }
    snprintf(path, sizeof(path), "%s/optimizer.safetensors", dir);
    long ostep = 0;
    if ((rc = ckpt_load_optimizer(s->m, adamw_m(s->opt), adamw_v(s->opt), &ostep, path, why,
                                  sizeof(why))) != 0) {
        errf(err, errlen, "%s", why);
        goto out;
    }
    adamw_set_steps(s->opt, ostep);
    s->cur = cur;
    s->steps = (long)step->valuedouble;
    s->tokens_seen = (uint64_t)tokens->valuedouble;
    s->elapsed_before = elapsed->valuedouble;
    const cJSON *val = cJSON_GetObjectItemCaseSensitive(o, "val");
    s->have_val = cJSON_IsObject(val);
    if (s->have_val) {
        val_from_json(val, &s->last_val);
        const cJSON *vs = cJSON_GetObjectItemCaseSensitive(val, "step");
        s->val_step = cJSON_IsNumber(vs) ? (long)vs->valuedouble : -1;
    }
    rc = 0;
out:
    cJSON_Delete(o);
    model_destroy(&lm);
    return rc;
}

/* ---- validation ------------------------------------------------------- */

/* Accuracy per question type ("count_color .25 exists .60 ...") of the
 * greedy answers, for the log. */
static void policy_by_type(const dataset_t *ds, const eval_policy_items_t *it, char *buf,
                           size_t cap)
{
    enum { MAX_TYPES = 24 };
    const char *name[MAX_TYPES];
    int n_types = 0, right[MAX_TYPES] = {0}, all[MAX_TYPES] = {0};
    for (size_t i = 0; i < it->n; i++) {
        const dataset_record_t *r = dataset_get(ds, it->record[i]);
        const char *t = r && r->type ? r->type : "other";
        int k = 0;
        while (k < n_types && strcmp(name[k], t) != 0)
            k++;
        if (k == n_types) {
            if (n_types == MAX_TYPES)
                continue;
            name[n_types++] = t;
        }
        all[k]++;
        right[k] += it->greedy_correct[i];
    }
    size_t len = 0;
    buf[0] = '\0';
    for (int k = 0; k < n_types && len + 1 < cap; k++) {
        int w = snprintf(buf + len, cap - len, "%s%s %.2f", k ? ", " : "", name[k],
                         (double)right[k] / all[k]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

void sft_val_options_default(sft_val_options_t *o)
{
    o->policy_items = 200;
    o->critic_pairs = 100;
    o->caption_items = 50;
    o->max_new_tokens = 96;
    o->n_threads = 0;
}

int sft_validate(const model_t *m, const tokenizer_t *tok, const dataset_t *policy,
                 const dataset_t *critic, const dataset_t *captions, const prompt_options_t *popt,
                 const reward_config_t *rcfg, const sft_val_options_t *opt, sft_val_result_t *out)
{
    if (!m || !tok || !popt || !rcfg || !opt || !out || opt->max_new_tokens <= 0 ||
        opt->max_new_tokens >= m->cfg.max_seq_len)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    double t0 = now_s();
    eval_options_t eo;
    eval_options_default(&eo);
    eo.max_new_tokens = opt->max_new_tokens;
    eo.max_group = 1;
    eo.variant = popt->variant;
    eo.reward = *rcfg;
    eo.n_threads = opt->n_threads > 0 ? opt->n_threads : 1;
    char why[512];
    eval_ctx_t *ctx = eval_new(m, tok, &eo, why, sizeof(why));
    if (!ctx) {
        log_error("sft: validation: %s", why);
        return -EINVAL;
    }
    /* Items run in parallel on n_threads workers, each single-threaded. */
    int blas = k_set_threads(1);
    int rc = 0;
    if (policy && opt->policy_items > 0) {
        eval_policy_result_t pr;
        eval_policy_items_t items;
        memset(&items, 0, sizeof(items));
        rng_t r;
        rng_seed(&r, 0x5f7e7a1ULL);
        rc = eval_policy(ctx, policy, (size_t)opt->policy_items, 1, 1.0f, &r, &pr, &items);
        if (rc != 0)
            goto out;
        out->policy_n = (int)pr.n_items;
        out->policy_acc = pr.greedy_acc;
        out->policy_format = pr.greedy_format;
        out->policy_sample_acc = pr.sample_acc;
        policy_by_type(policy, &items, out->policy_by_type, sizeof(out->policy_by_type));
        eval_policy_items_free(&items);
    }
    if (critic && opt->critic_pairs > 0) {
        eval_critic_result_t cr;
        rc = eval_critic(ctx, critic, (size_t)opt->critic_pairs, &cr, NULL);
        if (rc != 0)
            goto out;
        out->critic_n = (int)cr.n_pairs;
        out->critic_acc = cr.accuracy;
        out->critic_both = cr.both_right;
        out->critic_says_a = cr.says_first;
        out->critic_format = cr.format_rate;
        out->critic_no_verdict = cr.invalid_rate;
    }
    if (captions && opt->caption_items > 0 && dataset_count(captions, DATASET_CAPTION) > 0) {
        eval_caption_result_t cap;
        rc = eval_caption(ctx, captions, (size_t)opt->caption_items, &cap);
        if (rc != 0)
            goto out;
        out->caption_n = (int)cap.n_items;
        out->caption_recall = cap.claim_recall;
    }
out:
    k_set_threads(blas);
    eval_destroy(&ctx);
    out->seconds = now_s() - t0;
    return rc;
}

/* ---- the command ------------------------------------------------------ */

void sft_run_options_default(sft_run_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->val_every = 100;
    sft_val_options_default(&o->val);
}

static const char *const KIND_FILE[SFT_N_KINDS] = {"critic", "policy", "captions"};

/* True when data.dir holds any file of the split stem. */
static int split_present(const char *dir, const char *stem)
{
    char p[CONFIG_PATH_LEN * 2];
    snprintf(p, sizeof(p), "%s/%s.jsonl", dir, stem);
    if (file_exists(p))
        return 1;
    for (int k = 0; k < SFT_N_KINDS; k++) {
        snprintf(p, sizeof(p), "%s/%s.%s.jsonl", dir, stem, KIND_FILE[k]);
        if (file_exists(p))
            return 1;
    }
    return 0;
}

static int generate_world(const crl_config_t *cfg, char *err, size_t errlen)
{
    const config_data_t *d = &cfg->data;
    if (strcmp(d->train, "train") || strcmp(d->val, "val") || strcmp(d->test, "test")) {
        errf(err, errlen,
             "data.dir %s has no files of data.train '%s' (expected %s/%s.jsonl or "
             "%s/%s.{policy,critic,captions}.jsonl); the built-in world is only generated with "
             "the default stems train/val/test",
             d->dir, d->train, d->dir, d->train, d->dir, d->train);
        return -ENOENT;
    }
    world_config_t wc;
    world_config_default(&wc);
    wc.rows = wc.cols = d->grid;
    wc.image_size = d->image_size_px;
    wc.seed = (uint64_t)cfg->run.seed;
    char why[512];
    if (world_config_check(&wc, why, sizeof(why)) != 0) {
        errf(err, errlen, "built-in world from data.grid (%d) / data.image_size_px (%d): %s",
             d->grid, d->image_size_px, why);
        return -EINVAL;
    }
    int rc = ckpt_mkdirs(d->dir, why, sizeof(why));
    if (rc != 0) {
        errf(err, errlen, "data.dir %s: %s", d->dir, why);
        return rc;
    }
    log_info("sft: %s has no training data: generating the built-in world there (grid %dx%d, %d "
             "px, %d/%d/%d train/val/test scenes, seed %d; same as `crl-data --out %s`)",
             d->dir, d->grid, d->grid, d->image_size_px, d->train_scenes, d->val_scenes,
             d->test_scenes, cfg->run.seed, d->dir);
    double t0 = now_s();
    const size_t n[3] = {(size_t)d->train_scenes, (size_t)d->val_scenes, (size_t)d->test_scenes};
    for (int s = 0; s < WORLD_N_SPLITS; s++) {
        rc = world_write_split(&wc, (world_split_t)s, n[s], d->dir, NULL, why, sizeof(why));
        if (rc != 0) {
            errf(err, errlen, "generating the built-in world in %s: %s", d->dir, why);
            return rc;
        }
    }
    log_info("sft: built-in world written in %.1f s", now_s() - t0);
    return 0;
}

/* Loads the files of a split stem that exist: <stem>.jsonl and
 * <stem>.{critic,policy,captions}.jsonl. sets[k] for the kind files
 * (index = dataset_kind_t), sets[3] for the plain file. */
static int load_split(const crl_config_t *cfg, const char *stem, dataset_t *sets[4], char *err,
                      size_t errlen)
{
    dataset_options_t o;
    dataset_options_default(&o);
    o.image_size = cfg->model.image_size;
    o.on_error = cfg->data.on_error == CONFIG_ON_ERROR_STOP ? DATASET_ON_ERROR_STOP
                                                            : DATASET_ON_ERROR_SKIP;
    char p[CONFIG_PATH_LEN * 2], why[1024];
    int found = 0;
    for (int k = 0; k < 4; k++) {
        sets[k] = NULL;
        if (k < SFT_N_KINDS)
            snprintf(p, sizeof(p), "%s/%s.%s.jsonl", cfg->data.dir, stem, KIND_FILE[k]);
        else
            snprintf(p, sizeof(p), "%s/%s.jsonl", cfg->data.dir, stem);
        if (!file_exists(p))
            continue;
        sets[k] = dataset_load(p, &o, why, sizeof(why));
        if (!sets[k]) {
            errf(err, errlen, "%s", why);
            for (int j = 0; j < k; j++)
                dataset_destroy(&sets[j]);
            return -EINVAL;
        }
        if (dataset_n_skipped(sets[k]))
            log_warn("sft: %s: %zu bad records skipped", p, dataset_n_skipped(sets[k]));
        found++;
    }
    if (!found) {
        errf(err, errlen, "no data files for '%s' in %s (expected %s.jsonl or %s.{policy,critic,"
             "captions}.jsonl)", stem, cfg->data.dir, stem, stem);
        return -ENOENT;
    }
    return 0;
}

/* Trains a tokenizer on the training text plus rendered prompts and
 * targets of a sample of records (so the template words become tokens). */
static tokenizer_t *train_tokenizer(const crl_config_t *cfg, dataset_t *const sets[4],
                                    char *err, size_t errlen)
{
    size_t n_rec = 0;
    for (int k = 0; k < 4; k++)
        n_rec += sets[k] ? dataset_size(sets[k]) : 0;
    /* Enough text for the statistics; more only slows training down. */
    const size_t max_rec = 12000, max_rendered = 2000;
    size_t stride = n_rec > max_rec ? (n_rec + max_rec - 1) / max_rec : 1;
    size_t cap = (n_rec / stride + 2) * 5 + max_rendered * 2 + 16;
    const char **texts = calloc(cap, sizeof(char *));
    char **owned = calloc(max_rendered * 2 + 1, sizeof(char *));
    size_t nt = 0, no = 0;
    tokenizer_t *tok = NULL;
    prompt_options_t popt;
    if (!texts || !owned) {
        errf(err, errlen, "sft: out of memory gathering tokenizer text");
        goto out;
    }
    if (labels_from_config(cfg, &popt, NULL, err, errlen) != 0)
        goto out;
    size_t seen = 0, rendered = 0;
    size_t render_stride = n_rec > max_rendered ? n_rec / max_rendered : 1;
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; sets[k] && i < dataset_size(sets[k]); i++, seen++) {
            const dataset_record_t *r = dataset_get(sets[k], i);
            if (seen % stride == 0) {
                const char *f[5] = {r->question, r->answer, r->reference, r->caption, NULL};
                for (int j = 0; j < 4; j++)
                    if (f[j] && nt < cap)
                        texts[nt++] = f[j];
                for (int j = 0; j < 2; j++)
                    if (r->kind == DATASET_CRITIC && r->answers[j] && nt < cap)
                        texts[nt++] = r->answers[j];
            }
            if (seen % render_stride == 0 && rendered < max_rendered) {
                prompt_task_t pt;
                int order = rendered % 2 ? PROMPT_ORDER_SWAP : PROMPT_ORDER_KEEP;
                if (prompt_for_record(&popt, r, order, NULL, &pt) == 0) {
                    if (pt.text && nt < cap) {
                        owned[no++] = pt.text;
                        texts[nt++] = pt.text;
                        pt.text = NULL;
                    }
                    if (pt.target && nt < cap) {
                        owned[no++] = pt.target;
                        texts[nt++] = pt.target;
                        pt.target = NULL;
                    }
                    prompt_task_free(&pt);
                }
                rendered++;
            }
        }
    char why[512];
    double t0 = now_s();
    tok = tok_train(texts, NULL, (int)nt, cfg->tokenizer.vocab_size, why, sizeof(why));
    if (!tok)
        errf(err, errlen, "training the tokenizer (tokenizer.vocab_size %d): %s",
             cfg->tokenizer.vocab_size, why);
    else
        log_info("sft: trained a %d-token BPE tokenizer on %zu texts in %.1f s", tok_vocab_size(tok),
                 nt, now_s() - t0);
out:
    for (size_t i = 0; owned && i < no; i++)
        free(owned[i]);
    free(owned);
    free(texts);
    return tok;
}

/* Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites
 * what came after its checkpoint). Best-effort. */
static void trim_metrics(const char *path, long step)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    char *kept = NULL;
    size_t klen = 0;
    FILE *mem = open_memstream(&kept, &klen);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int dropped = 0;
    while (mem && (n = getline(&line, &cap, f)) > 0) {
        const char *p = strstr(line, "\"step\":");
        long st = p ? strtol(p + 7, NULL, 10) : -1;
        if (p && st <= step && line[n - 1] == '\n')
            fwrite(line, 1, (size_t)n, mem);
        else
            dropped++;
    }
    free(line);
    fclose(f);
    if (mem)
        fclose(mem);
    if (kept && dropped) {
        char why[256];
        if (ckpt_write_file_atomic(path, kept, klen, why, sizeof(why)) != 0)
            log_warn("sft: %s: %s", path, why);
    }
    free(kept);
}


static void log_val(const char *what, long step, const sft_val_result_t *v)
{
    log_info("sft: %s at step %ld: policy acc %.3f (format %.2f, n=%d) | critic acc %.3f, both "
             "orders %.3f, says-A %.2f, no verdict %.2f (format %.2f, n=%d pairs) [%.1f s]",
             what, step, v->policy_acc, v->policy_format, v->policy_n, v->critic_acc, v->critic_both,
             v->critic_says_a, v->critic_no_verdict, v->critic_format, v->critic_n, v->seconds);
    if (v->policy_by_type[0])
        log_info("sft:   policy accuracy by type: %s", v->policy_by_type);
    if (v->caption_n > 0)
        log_info("sft:   captions: %.3f of the scene sentences right (n=%d): what the model "
                 "sees, apart from what it does with it",
                 v->caption_recall, v->caption_n);
}

static void add_val_metrics(metrics_t *mx, const sft_val_result_t *v)
{
    metrics_add_float(mx, "val_policy_acc", v->policy_acc);
    metrics_add_float(mx, "val_policy_sample_acc", v->policy_sample_acc);
    metrics_add_float(mx, "val_critic_acc", v->critic_acc);
    metrics_add_float(mx, "val_critic_both", v->critic_both);
    metrics_add_float(mx, "val_says_a", v->critic_says_a);
    metrics_add_float(mx, "val_policy_format", v->policy_format);
    metrics_add_float(mx, "val_critic_format", v->critic_format);
    if (v->caption_n > 0)
        metrics_add_float(mx, "val_caption_recall", v->caption_recall);
}

#define LOSS_WINDOW 10

int sft_run(const crl_config_t *cfg, const sft_run_options_t *opt_in, sft_summary_t *sum,
            char *err, size_t errlen)
{
    if (!cfg)
        return -EINVAL;
    sft_run_options_t opt;
    if (opt_in)
        opt = *opt_in;
    else
        sft_run_options_default(&opt);
    sft_summary_t sdummy;
    if (!sum)
        sum = &sdummy;
    memset(sum, 0, sizeof(*sum));

    int rc = 0;
    dataset_t *train[4] = {NULL}, *val[4] = {NULL};
    tokenizer_t *tok = NULL;
    sft_t *s = NULL;
    metrics_t *mx = NULL;
    char why[1024];
    char run_dir[CONFIG_PATH_LEN * 2 + 8], ckpt_root[sizeof(run_dir) + 8],
        latest[sizeof(ckpt_root) + 16], path[sizeof(run_dir) + 64];
    snprintf(run_dir, sizeof(run_dir), "%s/%s", cfg->run.dir, cfg->run.name);
    snprintf(ckpt_root, sizeof(ckpt_root), "%s/ckpt", run_dir);
    snprintf(latest, sizeof(latest), "%s/latest", ckpt_root);
    int resuming = file_exists(latest) || dir_exists(latest);
    if (resuming) {
        char tj[sizeof(latest) + 16];
        snprintf(tj, sizeof(tj), "%s/trainer.json", latest);
        if (!file_exists(tj)) {
            errf(err, errlen, "%s exists but has no trainer.json: not a warm-up checkpoint (use "
                 "another run.name)", latest);
            return -EINVAL;
        }
    }

    /* 1. data */
    if (!split_present(cfg->data.dir, cfg->data.train)) {
        if ((rc = generate_world(cfg, err, errlen)) != 0)
            return rc;
    }
    double t_load = now_s();
    if ((rc = load_split(cfg, cfg->data.train, train, err, errlen)) != 0)
        goto out;
    if (split_present(cfg->data.dir, cfg->data.val)) {
        if ((rc = load_split(cfg, cfg->data.val, val, err, errlen)) != 0)
            goto out;
    } else {
        log_warn("sft: no validation files '%s' in %s: no validation", cfg->data.val, cfg->data.dir);
    }
    {
        size_t cnt[SFT_N_KINDS] = {0};
        for (int k = 0; k < 4; k++)
            for (int j = 0; train[k] && j < SFT_N_KINDS; j++)
                cnt[j] += dataset_count(train[k], (dataset_kind_t)j);
        log_info("sft: loaded %s/%s: %zu policy, %zu critic, %zu caption records (%.1f s)",
                 cfg->data.dir, cfg->data.train, cnt[DATASET_POLICY], cnt[DATASET_CRITIC],
                 cnt[DATASET_CAPTION], now_s() - t_load);
    }

    /* 2. tokenizer: the checkpoint's when resuming, else the data's, else a new one */
    char tok_path[CONFIG_PATH_LEN * 2 + 32];
    if (cfg->tokenizer.path[0])
        snprintf(tok_path, sizeof(tok_path), "%s", cfg->tokenizer.path);
    else
        snprintf(tok_path, sizeof(tok_path), "%s/tokenizer.json", cfg->data.dir);
    if (resuming) {
        snprintf(path, sizeof(path), "%s/tokenizer.json", latest);
        tok = tok_load(path, why, sizeof(why));
        if (!tok) {
            errf(err, errlen, "%s", why);
            rc = -EINVAL;
            goto out;
        }
    } else if (file_exists(tok_path)) {
        tok = tok_load(tok_path, why, sizeof(why));
        if (!tok) {
            errf(err, errlen, "%s (delete it to train a new tokenizer)", why);
            rc = -EINVAL;
            goto out;
        }
        log_info("sft: tokenizer %s (%d tokens)", tok_path, tok_vocab_size(tok));
    } else {
        tok = train_tokenizer(cfg, train, err, errlen);
        if (!tok) {
            rc = -EINVAL;
            goto out;
        }
        if ((rc = tok_save(tok, tok_path, why, sizeof(why))) != 0) {
            errf(err, errlen, "saving the tokenizer: %s", why);
            goto out;
        }
        log_info("sft: saved the tokenizer to %s", tok_path);
    }

    /* 3. model */
    const dataset_t *tsets[4] = {train[0], train[1], train[2], train[3]};
    s = sft_new(cfg, tok, tsets, 4, err, errlen);
    if (!s) {
        rc = -EINVAL;
        goto out;
    }
    if (resuming) {
        if ((rc = sft_load(s, latest, err, errlen)) != 0)
            goto out;
        log_info("sft: resuming %s at step %ld", latest, s->steps);
        sum->resumed = 1;
    } else {
        log_info("sft: new model: %zu parameters (dim %d, %d layers, %d heads, vocab %d, image "
                 "%d px / patch %d)",
                 s->m->n_params, s->mcfg.dim, s->mcfg.n_layers, s->mcfg.n_heads,
                 s->mcfg.vocab_size, s->mcfg.image_size, s->mcfg.patch_size);
    }
    prompt_options_t popt = s->popt;
    reward_config_t rcfg;
    labels_from_config(cfg, NULL, &rcfg, NULL, 0);
    const dataset_t *val_policy = val[DATASET_POLICY] ? val[DATASET_POLICY] : val[3];
    const dataset_t *val_critic = val[DATASET_CRITIC] ? val[DATASET_CRITIC] : val[3];
    const dataset_t *val_captions = val[DATASET_CAPTION] ? val[DATASET_CAPTION] : val[3];
    int can_val = (val_policy || val_critic || val_captions) &&
                  (opt.val.policy_items > 0 || opt.val.critic_pairs > 0 ||
                   opt.val.caption_items > 0);

    /* 4. reporting */
    if ((rc = ckpt_mkdirs(run_dir, why, sizeof(why))) != 0) {
        errf(err, errlen, "run folder %s: %s", run_dir, why);
        goto out;
    }
    snprintf(path, sizeof(path), "%s/config.json", run_dir);
    if ((rc = config_write_file(cfg, path, why, sizeof(why))) != 0) {
        errf(err, errlen, "%s", why);
        goto out;
    }
    snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
    if (resuming)
        trim_metrics(path, s->steps);
    mx = metrics_open(path, why, sizeof(why));
    if (!mx) {
        errf(err, errlen, "%s", why);
        rc = -EIO;
        goto out;
    }
    metrics_set_elapsed(mx, s->elapsed_before);
    /* Data-parallel workers, each with a single-threaded BLAS: on these
     * small matrices that beats one multi-threaded BLAS (and suffers far
     * less when the cores are shared). */
    int threads = s->n_workers;
    k_set_threads(1);
    if (opt.val.n_threads <= 0)
        opt.val.n_threads = threads;
    const long total = cfg->sft.steps;
    log_info("sft: %ld steps of %d tokens, lr %g (warm-up %d, cosine), mix captions %.2f / policy "
             "%.2f / critic %.2f (%s critic prompts, order-balanced), %d thread%s; run folder %s",
             total, cfg->sft.batch_tokens, cfg->sft.lr, cfg->sft.warmup,
             sft_stream_mix(s->stream, DATASET_CAPTION), sft_stream_mix(s->stream, DATASET_POLICY),
             sft_stream_mix(s->stream, DATASET_CRITIC),
             cfg->data.critic_variant == CONFIG_CRITIC_FULL ? "full" : "final-only", threads,
             threads == 1 ? "" : "s", run_dir);

    progress_t prog;
    progress_init(&prog, stderr, PROGRESS_AUTO, 10.0);
    double t_start = now_s();
    long steps_here = 0, last_saved = resuming ? s->steps : -1;
    double loss_hist[LOSS_WINDOW];
    int n_hist = 0;
    double first_sum = 0;
    int first_n = 0;
    uint64_t tokens_here = 0;
    double train_time = 0; /* excludes validation and checkpoints */
    long skipped_total = 0;
    double tps_ema = 0;
    while (s->steps < total && !(opt.stop && *opt.stop) &&
           !(opt.stop_after > 0 && steps_here >= opt.stop_after)) {
        double t0 = now_s();
        sft_step_stats_t st;
        if ((rc = sft_step(s, &st)) != 0) {
            errf(err, errlen, "warm-up step %ld failed: %s", s->steps + 1, strerror(-rc));
            goto out;
        }
        double dt = now_s() - t0;
        train_time += dt;
        steps_here++;
        tokens_here += (uint64_t)st.n_tokens;
        skipped_total += st.n_skipped;
        double tps = dt > 0 ? st.n_tokens / dt : 0;
        tps_ema = tps_ema > 0 ? 0.9 * tps_ema + 0.1 * tps : tps;
        loss_hist[(steps_here - 1) % LOSS_WINDOW] = st.loss;
        n_hist = n_hist < LOSS_WINDOW ? n_hist + 1 : LOSS_WINDOW;
        if (first_n < LOSS_WINDOW) {
            first_sum += st.loss;
            first_n++;
        }
        if (!isfinite(st.grad_norm))
            log_warn("sft: step %ld: gradient norm is %g: update skipped", st.step, st.grad_norm);

        metrics_begin_line(mx, st.step);
        metrics_add_string(mx, "stage", "sft");
        metrics_add_float(mx, "loss", st.loss);
        metrics_add_float(mx, "loss_caption", st.loss_kind[DATASET_CAPTION]);
        metrics_add_float(mx, "loss_policy", st.loss_kind[DATASET_POLICY]);
        metrics_add_float(mx, "loss_critic", st.loss_kind[DATASET_CRITIC]);
        metrics_add_float(mx, "lr", st.lr);
        metrics_add_float(mx, "grad_norm", st.grad_norm);
        metrics_add_int(mx, "tokens", st.n_tokens);
        metrics_add_int(mx, "target_tokens", st.n_targets);
        metrics_add_int(mx, "seqs", st.n_seqs);
        if (st.n_skipped)
            metrics_add_int(mx, "skipped_long", st.n_skipped);
        metrics_add_float(mx, "tokens_per_s", tps);
        metrics_add_float(mx, "elapsed", s->elapsed_before + (now_s() - t_start));
        int do_val = can_val && opt.val_every > 0 && st.step % opt.val_every == 0 &&
                     st.step < total;
        if (do_val) {
            sft_val_result_t v;
            if ((rc = sft_validate(s->m, tok, val_policy, val_critic, val_captions, &popt, &rcfg,
                                   &opt.val, &v)) != 0) {
                errf(err, errlen, "validation at step %ld failed: %s", st.step, strerror(-rc));
                goto out;
            }
            s->last_val = v;
            s->have_val = 1;
            s->val_step = st.step;
            add_val_metrics(mx, &v);
            if (!opt.quiet)
                progress_end(&prog);
            log_val("validation", st.step, &v);
        }
        if (metrics_end_line(mx) != 0)
            log_warn("sft: could not append to metrics.jsonl");
        if (!opt.quiet) {
            char eta[32], el[32];
            double elapsed = now_s() - t_start;
            metrics_format_duration(metrics_eta(steps_here, total - (s->steps - steps_here), elapsed),
                                    eta, sizeof(eta));
            metrics_format_duration(s->elapsed_before + elapsed, el, sizeof(el));
            progress_line(&prog,
                          "sft step %ld/%ld  loss %.3f (cap %.2f pol %.2f cri %.2f)  lr %.2e  "
                          "%.0f tok/s  %s elapsed, ETA %s",
                          st.step, total, st.loss, st.loss_kind[DATASET_CAPTION],
                          st.loss_kind[DATASET_POLICY], st.loss_kind[DATASET_CRITIC], st.lr, tps_ema,
                          el, eta);
        }
        if (cfg->sft.checkpoint_every > 0 && st.step % cfg->sft.checkpoint_every == 0 &&
            st.step < total) {
            if ((rc = sft_save(s, ckpt_root, cfg, s->elapsed_before + (now_s() - t_start), NULL,
                               err, errlen)) != 0)
                goto out;
            last_saved = st.step;
        }
    }
    if (!opt.quiet)
        progress_end(&prog);
    if (skipped_total)
        log_warn("sft: %ld records longer than model.max_seq_len (%d) were skipped",
                 skipped_total, s->mcfg.max_seq_len);
    int finished = s->steps >= total;
    if (finished && can_val && !(s->have_val && s->val_step == s->steps)) {
        sft_val_result_t v;
        if ((rc = sft_validate(s->m, tok, val_policy, val_critic, val_captions, &popt, &rcfg,
                               &opt.val, &v)) != 0) {
            errf(err, errlen, "final validation failed: %s", strerror(-rc));
            goto out;
        }
        s->last_val = v;
        s->have_val = 1;
        s->val_step = s->steps;
        metrics_begin_line(mx, s->steps);
        metrics_add_string(mx, "stage", "sft_final");
        add_val_metrics(mx, &v);
        metrics_end_line(mx);
        log_val("final validation", s->steps, &v);
    }
    if (last_saved != s->steps) {
        if ((rc = sft_save(s, ckpt_root, cfg, s->elapsed_before + (now_s() - t_start), NULL, err,
                           errlen)) != 0)
            goto out;
    }
    snprintf(sum->ckpt_dir, sizeof(sum->ckpt_dir), "%s/step-%ld", ckpt_root, s->steps);
    sum->steps_done = s->steps;
    sum->validated = s->have_val;
    sum->val = s->last_val;
    sum->tokens_per_s = train_time > 0 ? (double)tokens_here / train_time : 0;
    sum->first_loss = first_n ? first_sum / first_n : NAN;
    double ls = 0;
    for (int i = 0; i < n_hist; i++)
        ls += loss_hist[i];
    sum->final_loss = n_hist ? ls / n_hist : NAN;
    if (steps_here > 0) {
        metrics_close(&mx);
        snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
        char png[sizeof(run_dir) + 16];
        snprintf(png, sizeof(png), "%s/sft.png", run_dir);
        static const char *const fields[] = {"loss", "loss_policy", "loss_critic", "loss_caption",
                                             "lr", "grad_norm", "tokens_per_s", "val_policy_acc",
                                             "val_critic_acc", "val_critic_both", "val_says_a"};
        if (metrics_plot(path, png, fields, (int)(sizeof(fields) / sizeof(fields[0])), why,
                         sizeof(why)) != 0)
            log_info("sft: no plot (%s)", why);
    }
    if (finished) {
        char el[32];
        log_info("sft: done: %ld steps in %s (this run: %ld steps, %.0f tokens/s); the base model "
                 "is %s (also %s)",
                 s->steps,
                 metrics_format_duration(s->elapsed_before + (now_s() - t_start), el, sizeof(el)),
                 steps_here, sum->tokens_per_s, sum->ckpt_dir, latest);
        if (s->have_val)
            log_val("base model", s->steps, &s->last_val);
    } else {
        log_info("sft: stopped at step %ld of %ld; checkpoint %s — run the same command again to "
                 "continue",
                 s->steps, total, sum->ckpt_dir);
    }
    rc = 0;
out:
    metrics_close(&mx);
    sft_destroy(&s);
    tok_destroy(&tok);
    for (int k = 0; k < 4; k++) {
        dataset_destroy(&train[k]);
        dataset_destroy(&val[k]);
    }
    return rc;
}
