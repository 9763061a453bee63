/* rl_data: prompt source of the GRPO learner (see rl_data.h). */
#include "rl_data.h"

#include "learner.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dataset.h"
#include "log.h"
#include "model.h"
#include "prompt.h"
#include "reward.h"
#include "task.h"

#define RLD_N_FILES 3 /* <stem>.critic.jsonl, <stem>.policy.jsonl, <stem>.jsonl */
/* A prompt must leave at least this many tokens (or max_new_tokens if
 * fewer) for the response. */
#define RLD_MIN_RESPONSE_ROOM 32

typedef struct {
    const dataset_t *ds;
    size_t rec;
} rld_ref_t;

struct rld {
    crl_config_t cfg;
    model_config_t mc;
    const tokenizer_t *tok;
    prompt_options_t popt;
    dataset_t *sets[RLD_N_FILES];
    rld_ref_t *pool[RLD_N_POOLS];
    size_t n[RLD_N_POOLS];
    /* permutation of the current pass of each pool (a function of seed, pool, epoch) */
    uint32_t *perm[RLD_N_POOLS];
    uint64_t perm_epoch[RLD_N_POOLS];
    int perm_valid[RLD_N_POOLS];
    rld_cursor_t cur;
    int *buf;          /* (max_seq_len) encoding scratch */
    int *buf_alt;
    size_t skipped_equal, skipped_long;
};

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

void rld_cursor_init(rld_cursor_t *c, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    rng_seed_stream(&c->rng, seed, 0x524c44415441ull); /* "RLDATA" */
}

/* Final answers of a FINAL_ONLY pair equal (after the answer
 * normalisation of the rewards): a critic cannot tell them apart. */
static int final_answers_equal(const dataset_record_t *r)
{
    char *a = prompt_final_answer(r->answers[0]);
    char *b = prompt_final_answer(r->answers[1]);
    int eq = 0;
    if (a && b)
        eq = reward_answer_matches(a, strlen(a), b);
    free(a);
    free(b);
    return eq;
}

rld_t *rld_new(const crl_config_t *cfg, const model_config_t *mc, const tokenizer_t *tok,
               char *err, size_t errlen)
{
    if (!cfg || !mc || !tok)
        return NULL;
    rld_t *d = calloc(1, sizeof(*d));
    if (!d) {
        errf(err, errlen, "out of memory");
        return NULL;
    }
    d->cfg = *cfg;
    d->mc = *mc;
    d->tok = tok;
    rld_cursor_init(&d->cur, (uint64_t)cfg->run.seed);

    /* prompt options from data.critic_variant / data.verdict_labels */
    const char *lab = cfg->data.verdict_labels;
    if (strlen(lab) != 2 || lab[0] == lab[1]) {
        errf(err, errlen, "data.verdict_labels '%s': expected two distinct characters, e.g. \"AB\"",
             lab);
        goto fail;
    }
    prompt_options_default(&d->popt);
    d->popt.variant = cfg->data.critic_variant == CONFIG_CRITIC_FULL ? PROMPT_CRITIC_FULL
                                                                      : PROMPT_CRITIC_FINAL_ONLY;
    d->popt.labels[0][0] = lab[0];
    d->popt.labels[0][1] = '\0';
    d->popt.labels[1][0] = lab[1];
    d->popt.labels[1][1] = '\0';

    dataset_options_t o;
    dataset_options_default(&o);
    o.image_size = mc->image_size;
    o.on_error = cfg->data.on_error == CONFIG_ON_ERROR_STOP ? DATASET_ON_ERROR_STOP
                                                           : DATASET_ON_ERROR_SKIP;
    static const char *const suffix[RLD_N_FILES] = {".critic.jsonl", ".policy.jsonl", ".jsonl"};
    char path[2 * CONFIG_PATH_LEN + 64], why[1024];
    int found = 0;
    for (int k = 0; k < RLD_N_FILES; k++) {
        snprintf(path, sizeof(path), "%s/%s%s", cfg->data.dir, cfg->data.train, suffix[k]);
        if (!file_exists(path))
            continue;
        d->sets[k] = dataset_load(path, &o, why, sizeof(why));
        if (!d->sets[k]) {
            errf(err, errlen, "training data (data.dir / data.train): %s", why);
            goto fail;
        }
        if (dataset_n_skipped(d->sets[k]))
            log_warn("rl: %s: %zu bad records skipped", path, dataset_n_skipped(d->sets[k]));
        found++;
    }
    if (!found) {
        errf(err, errlen, "no training data: expected %s/%s.critic.jsonl, %s/%s.policy.jsonl or "
             "%s/%s.jsonl (data.dir / data.train; `crl-data` makes the built-in world)",
             cfg->data.dir, cfg->data.train, cfg->data.dir, cfg->data.train, cfg->data.dir,
             cfg->data.train);
        goto fail;
    }
    /* pools */
    size_t cap[RLD_N_POOLS] = {0, 0};
    for (int k = 0; k < RLD_N_FILES; k++)
        if (d->sets[k]) {
            cap[RLD_POOL_CRITIC] += dataset_count(d->sets[k], DATASET_CRITIC);
            cap[RLD_POOL_POLICY] += dataset_count(d->sets[k], DATASET_POLICY);
        }
    for (int p = 0; p < RLD_N_POOLS; p++) {
        d->pool[p] = calloc(cap[p] ? cap[p] : 1, sizeof(rld_ref_t));
        if (!d->pool[p]) {
            errf(err, errlen, "out of memory");
            goto fail;
        }
    }
    int final_only = d->popt.variant == PROMPT_CRITIC_FINAL_ONLY;
    for (int k = 0; k < RLD_N_FILES; k++) {
        if (!d->sets[k])
            continue;
        for (size_t i = 0; i < dataset_size(d->sets[k]); i++) {
            const dataset_record_t *r = dataset_get(d->sets[k], i);
            int p;
            if (r->kind == DATASET_CRITIC)
                p = RLD_POOL_CRITIC;
            else if (r->kind == DATASET_POLICY)
                p = RLD_POOL_POLICY;
            else
                continue; /* captions: no verifiable reward */
            if (p == RLD_POOL_CRITIC && final_only && final_answers_equal(r)) {
                d->skipped_equal++;
                continue;
            }
            d->pool[p][d->n[p]++] = (rld_ref_t){d->sets[k], i};
        }
    }
    if (d->skipped_equal)
        log_info("rl: %zu critic pairs left out: their two final answers are equal, so a "
                 "final-only critic prompt (data.critic_variant = final_only) cannot tell them "
                 "apart (e.g. source builtin:wrong_reasoning)", d->skipped_equal);
    double mix = cfg->rl.task_mix_critic;
    if ((mix > 0 && d->n[RLD_POOL_CRITIC] == 0 && mix >= 1) ||
        (mix < 1 && d->n[RLD_POOL_POLICY] == 0 && mix <= 0) ||
        (d->n[RLD_POOL_CRITIC] == 0 && d->n[RLD_POOL_POLICY] == 0)) {
        errf(err, errlen, "rl.task_mix_critic = %g but %s/%s has %zu usable critic and %zu policy "
             "records", mix, cfg->data.dir, cfg->data.train, d->n[RLD_POOL_CRITIC],
             d->n[RLD_POOL_POLICY]);
        goto fail;
    }
    if (mix > 0 && mix < 1 && (d->n[RLD_POOL_CRITIC] == 0 || d->n[RLD_POOL_POLICY] == 0))
        log_warn("rl: rl.task_mix_critic = %g but there are no %s records: all prompts are %s",
                 mix, d->n[RLD_POOL_CRITIC] ? "policy" : "critic",
                 d->n[RLD_POOL_CRITIC] ? "critic" : "policy");
    for (int p = 0; p < RLD_N_POOLS; p++) {
        d->perm[p] = malloc((d->n[p] ? d->n[p] : 1) * sizeof(uint32_t));
        if (!d->perm[p]) {
            errf(err, errlen, "out of memory");
            goto fail;
        }
    }
    d->buf = malloc((size_t)mc->max_seq_len * sizeof(int));
    d->buf_alt = malloc((size_t)mc->max_seq_len * sizeof(int));
    if (!d->buf || !d->buf_alt) {
        errf(err, errlen, "out of memory");
        goto fail;
    }
    log_info("rl: training prompts from %s/%s: %zu critic, %zu policy records (mix critic %.2f, "
             "%s critic prompts%s)", cfg->data.dir, cfg->data.train, d->n[RLD_POOL_CRITIC],
             d->n[RLD_POOL_POLICY], mix, final_only ? "final-only" : "full",
             cfg->rl.order_balanced ? ", order-balanced groups" : "");
    return d;
fail:
    rld_destroy(&d);
    return NULL;
}

void rld_destroy(rld_t **dp)
{
    if (!dp || !*dp)
        return;
    rld_t *d = *dp;
    for (int k = 0; k < RLD_N_FILES; k++)
        dataset_destroy(&d->sets[k]);
    for (int p = 0; p < RLD_N_POOLS; p++) {
        free(d->pool[p]);
        free(d->perm[p]);
    }
    free(d->buf);
    free(d->buf_alt);
    free(d);
    *dp = NULL;
}

rld_cursor_t rld_get_cursor(const rld_t *d) { return d->cur; }

void rld_set_cursor(rld_t *d, const rld_cursor_t *c)
{
    d->cur = *c;
    for (int p = 0; p < RLD_N_POOLS; p++)
        d->perm_valid[p] = 0;
}

size_t rld_pool_size(const rld_t *d, int pool)
{
    return pool >= 0 && pool < RLD_N_POOLS ? d->n[pool] : 0;
}
size_t rld_skipped_equal(const rld_t *d) { return d->skipped_equal; }
size_t rld_skipped_long(const rld_t *d) { return d->skipped_long; }

/* The permutation of pass `epoch` over pool p: a pure function of
 * (run.seed, p, epoch), so a resumed run recomputes it. */
static void ensure_perm(rld_t *d, int p)
{
    uint64_t e = d->cur.epoch[p];
    if (d->perm_valid[p] && d->perm_epoch[p] == e)
        return;
    rng_t r;
    rng_seed_stream(&r, (uint64_t)d->cfg.run.seed, 0x5045524d00000000ull ^ ((uint64_t)p << 48) ^ e);
    size_t n = d->n[p];
    for (size_t i = 0; i < n; i++)
        d->perm[p][i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = rng_below(&r, (uint32_t)i);
        uint32_t t = d->perm[p][i - 1];
        d->perm[p][i - 1] = d->perm[p][j];
        d->perm[p][j] = t;
    }
    d->perm_epoch[p] = e;
    d->perm_valid[p] = 1;
}

/* Encodes one prompt text; the length or a negative errno (-ENOSPC: does
 * not leave room for a response). */
static int encode(rld_t *d, const char *text, int with_image, int *out)
{
    int room = d->cfg.rl.max_new_tokens < RLD_MIN_RESPONSE_ROOM ? d->cfg.rl.max_new_tokens
                                                                 : RLD_MIN_RESPONSE_ROOM;
    int max = d->mc.max_seq_len - room;
    if (max < 2)
        return -ENOSPC;
    int n = task_encode_prompt(d->tok, with_image ? model_n_patches(&d->mc) : 0, with_image, text,
                               out, max);
    return n;
}

lio_prompt_t *rld_make(rld_t *d, int pool, uint64_t index, int order, char *err, size_t errlen)
{
    if (pool < 0 || pool >= RLD_N_POOLS || index >= d->n[pool]) {
        errf(err, errlen, "prompt pool %d has no record %llu (the data changed since the "
             "checkpoint?)", pool, (unsigned long long)index);
        errno = EINVAL;
        return NULL;
    }
    const rld_ref_t *ref = &d->pool[pool][index];
    const dataset_record_t *rec = dataset_get(ref->ds, ref->rec);
    const uint8_t *img = d->mc.image_size > 0 ? dataset_image(ref->ds, rec) : NULL;
    int with_image = img != NULL;
    int balanced = pool == RLD_POOL_CRITIC && d->cfg.rl.order_balanced;
    int order0 = pool == RLD_POOL_CRITIC && !balanced ? order : PROMPT_ORDER_KEEP;
    prompt_task_t t0, t1;
    memset(&t1, 0, sizeof(t1));
    int rc = prompt_for_record(&d->popt, rec, order0, NULL, &t0);
    if (rc != 0) {
        errf(err, errlen, "record %s (line %zu): cannot build its prompt (%s)", rec->id, rec->line,
             strerror(-rc));
        errno = -rc;
        return NULL;
    }
    lio_prompt_t *p = NULL;
    int n0 = encode(d, t0.text, with_image, d->buf), n1 = 0;
    if (n0 >= 0 && balanced) {
        rc = prompt_for_record(&d->popt, rec, PROMPT_ORDER_SWAP, NULL, &t1);
        if (rc != 0) {
            errf(err, errlen, "record %s (line %zu): cannot build its swapped prompt (%s)", rec->id,
                 rec->line, strerror(-rc));
            prompt_task_free(&t0);
            errno = -rc;
            return NULL;
        }
        n1 = encode(d, t1.text, with_image, d->buf_alt);
    }
    if (n0 < 0 || n1 < 0) {
        int e = n0 < 0 ? n0 : n1;
        errf(err, errlen, "record %s (line %zu): %s", rec->id, rec->line,
             e == -ENOSPC ? "prompt too long for model.max_seq_len" : strerror(-e));
        prompt_task_free(&t0);
        prompt_task_free(&t1);
        errno = -e;
        return NULL;
    }
    int G = d->cfg.rl.group_size;
    p = lio_prompt_new(rec->id, pool == RLD_POOL_CRITIC ? REWARD_TASK_CRITIC : REWARD_TASK_POLICY,
                       d->buf, n0, balanced ? d->buf_alt : NULL, balanced ? n1 : 0,
                       balanced ? G / 2 : 0, t0.expected, balanced ? t1.expected : NULL, img,
                       with_image ? d->mc.image_size : 0);
    prompt_task_free(&t0);
    prompt_task_free(&t1);
    if (!p) {
        errf(err, errlen, "out of memory");
        errno = ENOMEM;
        return NULL;
    }
    p->pool = pool;
    p->pool_index = index;
    p->order = order0;
    return p;
}

lio_prompt_t *rld_next(rld_t *d, char *err, size_t errlen)
{
    size_t total = d->n[0] + d->n[1];
    /* every record of both pools may be skipped once before giving up */
    for (size_t tries = 0; tries <= total; tries++) {
        double u = rng_uniform_double(&d->cur.rng);
        int pool = u < d->cfg.rl.task_mix_critic ? RLD_POOL_CRITIC : RLD_POOL_POLICY;
        if (d->n[pool] == 0)
            pool = 1 - pool;
        int order = PROMPT_ORDER_KEEP;
        if (pool == RLD_POOL_CRITIC && !d->cfg.rl.order_balanced)
            order = rng_below(&d->cur.rng, 2) ? PROMPT_ORDER_SWAP : PROMPT_ORDER_KEEP;
        ensure_perm(d, pool);
        uint64_t idx = d->perm[pool][d->cur.pos[pool]];
        if (++d->cur.pos[pool] >= d->n[pool]) {
            d->cur.pos[pool] = 0;
            d->cur.epoch[pool]++;
        }
        char why[512];
        lio_prompt_t *p = rld_make(d, pool, idx, order, why, sizeof(why));
        if (p)
            return p;
        if (errno != ENOSPC) {
            errf(err, errlen, "%s", why);
            return NULL;
        }
        if (d->skipped_long++ < 5)
            log_warn("rl: skipped: %s", why);
    }
    errf(err, errlen, "no training prompt fits model.max_seq_len (%d) with room for a response",
         d->mc.max_seq_len);
    return NULL;
}
