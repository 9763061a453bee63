#include "replay_index.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "task.h"

/* Problems kept in memory; past this only counted (a badly broken log
 * must not take the inspector down with it). */
#define MAX_PROBLEMS 10000

/* ---------------------------------------------------------------- helpers */

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen,
                                                          const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Growable text buffer; oom is sticky so callers check once at the end. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf_t;

static void sb_put(sbuf_t *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->n + n + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        sb_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_put(b, big, (size_t)n);
    free(big);
}

/* Hands the buffer over (caller frees); "" for an empty one, NULL on oom. */
static char *sb_take(sbuf_t *b)
{
    if (b->oom) {
        free(b->p);
        return NULL;
    }
    if (!b->p)
        return strdup("");
    return b->p;
}

static const char k_replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* Appends s[0..n) with invalid UTF-8, NUL and control bytes (but \n, \t)
 * replaced by U+FFFD: sampled byte-level tokens can be anything, and the
 * output goes to terminals and JSON parsers. */
static void sb_put_clean(sbuf_t *b, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_len(u + i, n - i);
        if (k == 0 || (k == 1 && ((u[i] < 0x20 && u[i] != '\n' && u[i] != '\t') || u[i] == 0x7F))) {
            sb_put(b, k_replacement, 3);
            i++;
            continue;
        }
        sb_put(b, s + i, k);
        i += k;
    }
}

static char *xstrdup(const char *s)
{
    return strdup(s ? s : "");
}

static int cmp_u64(uint64_t a, uint64_t b)
{
    return a < b ? -1 : a > b;
}

/* "2025-06-01 10:00:00.123 UTC" */
static const char *format_ms(uint64_t ms, char *buf, size_t len)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(buf, len, "%" PRIu64 " ms", ms);
        return buf;
    }
    char d[32];
    strftime(d, sizeof d, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03u UTC", d, (unsigned)(ms % 1000));
    return buf;
}

/* "1h 02m 03.456s" */
static const char *format_duration(uint64_t ms, char *buf, size_t len)
{
    uint64_t s = ms / 1000, h = s / 3600, m = (s / 60) % 60;
    double sec = (double)(s % 60) + (double)(ms % 1000) / 1000.0;
    if (h)
        snprintf(buf, len, "%" PRIu64 "h %02" PRIu64 "m %06.3fs", h, m, sec);
    else if (m)
        snprintf(buf, len, "%" PRIu64 "m %06.3fs", m, sec);
    else
        snprintf(buf, len, "%.3fs", sec);
    return buf;
}

static const char *format_bytes(uint64_t n, char *buf, size_t len)
{
    if (n < 10 * 1024)
        snprintf(buf, len, "%" PRIu64 " B", n);
    else if (n < 10 * 1024 * 1024)
        snprintf(buf, len, "%.1f KiB", (double)n / 1024.0);
    else
        snprintf(buf, len, "%.1f MiB", (double)n / (1024.0 * 1024.0));
    return buf;
}

static const char *task_name(int kind)
{
    switch (kind) {
    case CRL__TASK_KIND__TASK_KIND_CRITIC:
        return "critic";
    case CRL__TASK_KIND__TASK_KIND_POLICY:
        return "policy";
    default:
        return "unspecified";
    }
}

static const char *const k_drop_names[REPLAY_N_DROP_REASONS] = {
    "none",      "stale",    "malformed", "duplicate",  "unknown_grant",
    "grant_reassigned", "wrong_prompt", "shutdown", "log_failed",
};

const char *replay_drop_reason_name(int reason)
{
    return reason >= 0 && reason < REPLAY_N_DROP_REASONS ? k_drop_names[reason] : "?";
}

int replay_drop_reason_parse(const char *s)
{
    if (!s || !*s)
        return -1;
    char buf[64];
    size_t n = strlen(s);
    if (n >= sizeof buf)
        return -1;
    if (strncasecmp(s, "drop_reason_", 12) == 0)
        s += 12, n -= 12;
    for (size_t i = 0; i <= n; i++)
        buf[i] = s[i] == '-' ? '_' : s[i];
    char *end = NULL;
    long v = strtol(buf, &end, 10);
    if (end != buf && *end == '\0')
        return v >= 0 && v < REPLAY_N_DROP_REASONS ? (int)v : -1;
    for (int i = 0; i < REPLAY_N_DROP_REASONS; i++)
        if (strcasecmp(buf, k_drop_names[i]) == 0)
            return i;
    return -1;
}

/* ---------------------------------------------------------------- index */

struct replay_index {
    char *path;
    int single;                /* path is one file, not a folder */
    int skip_corrupt;
    int complete;
    replay_group_t *groups;
    size_t n_groups, cap_groups;
    long *slots;               /* open addressing over groups; -1 = empty */
    size_t n_slots;            /* power of two */
    replay_step_t *steps;
    size_t n_steps, cap_steps;
    int steps_sorted;          /* strictly increasing step numbers */
    replay_problem_t *problems;
    size_t n_problems, cap_problems;
    uint64_t problems_dropped; /* past MAX_PROBLEMS */
    size_t n_errors;           /* counted even past MAX_PROBLEMS */
    uint64_t records, undecodable, received, outcomes, markers;
    int has_time;
    uint64_t first_ms, last_ms;
    uint64_t payload_bytes;
    uint64_t lost_records;     /* seq numbers missing where corrupt data was skipped */
    traj_log_reader_stats_t reader;
    /* sorted by actor id, built after the scan */
    replay_actor_t *actors;
    size_t n_actors;
};

static char *file_path(const replay_index_t *idx, uint32_t file_index)
{
    if (idx->single)
        return xstrdup(idx->path);
    size_t n = strlen(idx->path) + 32;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/traj-%06" PRIu32 ".log", idx->path, file_index);
    return p;
}

static uint64_t file_size(const replay_index_t *idx, uint32_t file_index)
{
    char *p = file_path(idx, file_index);
    struct stat st;
    uint64_t n = 0;
    if (p && stat(p, &st) == 0)
        n = (uint64_t)st.st_size;
    free(p);
    return n;
}

/* Or'ed into the severity of add_problem: the problem is a place in the
 * files (corrupt region, torn tail, read error), which info lists. */
#define REGION 0x100

/* file may be NULL when the message names the place itself (reader errors).
 * Out of memory here only loses the problem's text, never the count. */
__attribute__((format(printf, 5, 6))) static void add_problem(replay_index_t *idx,
                                                              int sev_flags,
                                                              const char *file, uint64_t offset,
                                                              const char *fmt, ...)
{
    replay_severity_t sev = (replay_severity_t)(sev_flags & 0xFF);
    if (sev == REPLAY_PROBLEM_ERROR || (sev == REPLAY_PROBLEM_SKIPPED && !idx->skip_corrupt))
        idx->n_errors++;
    if (idx->n_problems >= MAX_PROBLEMS) {
        idx->problems_dropped++;
        return;
    }
    if (idx->n_problems == idx->cap_problems) {
        size_t cap = idx->cap_problems ? 2 * idx->cap_problems : 16;
        replay_problem_t *p = realloc(idx->problems, cap * sizeof *p);
        if (!p) {
            idx->problems_dropped++;
            return;
        }
        idx->problems = p;
        idx->cap_problems = cap;
    }
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    replay_problem_t *p = &idx->problems[idx->n_problems];
    p->severity = sev;
    p->region = !!(sev_flags & REGION);
    p->offset = offset;
    p->file = file ? strdup(file) : NULL;
    p->message = strdup(msg);
    if ((file && !p->file) || !p->message) {
        free(p->file);
        free(p->message);
        idx->problems_dropped++;
        return;
    }
    idx->n_problems++;
}

static uint64_t key_hash(const char *actor, uint64_t group_id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *s = (const unsigned char *)actor; *s; s++)
        h = (h ^ *s) * 1099511628211ull;
    h ^= group_id + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    return h * 0xBF58476D1CE4E5B9ull;
}

long replay_index_find(const replay_index_t *idx, const char *actor_id, uint64_t group_id)
{
    if (!idx || !idx->n_slots || !actor_id)
        return -1;
    size_t mask = idx->n_slots - 1;
    for (size_t k = key_hash(actor_id, group_id) & mask;; k = (k + 1) & mask) {
        long g = idx->slots[k];
        if (g < 0)
            return -1;
        if (idx->groups[g].group_id == group_id && strcmp(idx->groups[g].actor_id, actor_id) == 0)
            return g;
    }
}

static void slot_insert(long *slots, size_t n_slots, const replay_group_t *groups, long g)
{
    size_t mask = n_slots - 1;
    size_t k = key_hash(groups[g].actor_id, groups[g].group_id) & mask;
    while (slots[k] >= 0)
        k = (k + 1) & mask;
    slots[k] = g;
}

/* Appends a group (fields filled by the caller after) and hashes it. */
static replay_group_t *add_group(replay_index_t *idx, const char *actor, uint64_t group_id,
                                 const char *prompt_id)
{
    if (idx->n_groups == idx->cap_groups) {
        size_t cap = idx->cap_groups ? 2 * idx->cap_groups : 64;
        replay_group_t *p = realloc(idx->groups, cap * sizeof *p);
        if (!p)
            return NULL;
        idx->groups = p;
        idx->cap_groups = cap;
    }
    /* Keep the table at most half full. */
    if (2 * (idx->n_groups + 1) > idx->n_slots) {
        size_t n = idx->n_slots ? 2 * idx->n_slots : 128;
        long *s = malloc(n * sizeof *s);
        if (!s)
            return NULL;
        for (size_t i = 0; i < n; i++)
            s[i] = -1;
        for (size_t i = 0; i < idx->n_groups; i++)
            slot_insert(s, n, idx->groups, (long)i);
        free(idx->slots);
        idx->slots = s;
        idx->n_slots = n;
    }
    replay_group_t *g = &idx->groups[idx->n_groups];
    memset(g, 0, sizeof *g);
    g->actor_id = xstrdup(actor);
    g->prompt_id = xstrdup(prompt_id);
    if (!g->actor_id || !g->prompt_id) {
        free(g->actor_id);
        free(g->prompt_id);
        return NULL;
    }
    g->group_id = group_id;
    idx->n_groups++;
    slot_insert(idx->slots, idx->n_slots, idx->groups, (long)(idx->n_groups - 1));
    return g;
}

static int add_step(replay_index_t *idx, const replay_step_t *s)
{
    if (idx->n_steps == idx->cap_steps) {
        size_t cap = idx->cap_steps ? 2 * idx->cap_steps : 64;
        replay_step_t *p = realloc(idx->steps, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        idx->steps = p;
        idx->cap_steps = cap;
    }
    idx->steps[idx->n_steps++] = *s;
    return 0;
}

/* Index of the StepMarker of step, or -1. */
static long marker_of(const replay_index_t *idx, uint64_t step)
{
    if (idx->steps_sorted) {
        size_t lo = 0, hi = idx->n_steps;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (idx->steps[mid].step < step)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo < idx->n_steps && idx->steps[lo].step == step ? (long)lo : -1;
    }
    for (size_t i = 0; i < idx->n_steps; i++)
        if (idx->steps[i].step == step)
            return (long)i;
    return -1;
}

void replay_index_options_default(replay_index_options_t *opt)
{
    memset(opt, 0, sizeof *opt);
    wire_limits_default(&opt->limits);
    /* The learner validated these with its own (tighter) limits when they
     * arrived; here only garbage must fail. */
    opt->limits.max_prompt_tokens = 1u << 20;
    opt->limits.max_new_tokens = 1u << 20;
    opt->limits.max_group_size = 4096;
}

static int float_ok(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static const char *fate_word(const replay_group_t *g)
{
    switch (g->fate) {
    case REPLAY_USED:
        return "used";
    case REPLAY_DROPPED:
        return "dropped";
    default:
        return "pending";
    }
}

/* Pass-1 handling of one GroupReceived. */
static int on_received(replay_index_t *idx, const Crl__TrajectoryRecord *rec,
                       const replay_index_options_t *opt, const char *file, uint32_t fi,
                       uint64_t off)
{
    const Crl__GroupReceived *gr = rec->received;
    char why[512];
    idx->received++;
    if (!gr || !gr->group) {
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off, "seq %" PRIu64 ": GroupReceived without a group",
                    rec->seq);
        return 0;
    }
    const Crl__TrajectoryGroup *tg = gr->group;
    if (wire_validate_group(tg, &opt->limits, why, sizeof why) < 0)
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off, "seq %" PRIu64 ": group %s#%" PRIu64 " is invalid: %s",
                    rec->seq, tg->actor_id, tg->group_id, why);
    long prev = replay_index_find(idx, tg->actor_id, tg->group_id);
    if (prev >= 0) {
        const replay_group_t *p = &idx->groups[prev];
        char *pf = file_path(idx, p->file_index);
        /* Expected after a reconnect or a learner restart: actors re-send
         * unacked groups and the learner logs them before de-duplicating. */
        add_problem(idx, REPLAY_PROBLEM_NOTE, file, off,
                    "seq %" PRIu64 ": group %s#%" PRIu64 " received again (first at %s offset %" PRIu64
                    "; an actor re-sent it after a reconnect or a learner restart)",
                    rec->seq, tg->actor_id, tg->group_id, pf ? pf : "?", p->offset);
        free(pf);
        return 0;
    }
    replay_group_t *g = add_group(idx, tg->actor_id, tg->group_id, tg->prompt_id);
    if (!g)
        return -ENOMEM;
    g->task_kind = (int)gr->task_kind;
    g->group_size = (uint32_t)tg->n_samples;
    for (size_t s = 0; s < tg->n_samples; s++)
        if (tg->samples[s])
            g->response_tokens += tg->samples[s]->n_tokens;
    g->weights_version = tg->weights_version;
    g->received_unix_ms = gr->received_unix_ms;
    g->learner_version = gr->learner_version;
    g->learner_step = gr->learner_step;
    g->file_index = fi;
    g->offset = off;
    g->seq = rec->seq;
    g->written_unix_ms = rec->written_unix_ms;
    return 0;
}

static void on_outcome(replay_index_t *idx, const Crl__TrajectoryRecord *rec, const char *file,
                       uint64_t off)
{
    const Crl__GroupOutcome *o = rec->outcome;
    idx->outcomes++;
    if (!o || !o->key) {
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off, "seq %" PRIu64 ": GroupOutcome without a key",
                    rec->seq);
        return;
    }
    long gi = replay_index_find(idx, o->key->actor_id, o->key->group_id);
    if (gi < 0) {
        add_problem(idx, idx->lost_records ? REPLAY_PROBLEM_SKIPPED : REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": outcome for group %s#%" PRIu64 ", which was not received before it%s",
                    rec->seq, o->key->actor_id, o->key->group_id,
                    idx->lost_records ? " (its record may be in a skipped corrupt region)" : "");
        return;
    }
    replay_group_t *g = &idx->groups[gi];
    if (o->fate != CRL__GROUP_FATE__GROUP_FATE_USED && o->fate != CRL__GROUP_FATE__GROUP_FATE_DROPPED) {
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": outcome of group %s#%" PRIu64 " has unknown fate %d", rec->seq,
                    g->actor_id, g->group_id, (int)o->fate);
        return;
    }
    /* A USED outcome of an update that never completed (no StepMarker) may
     * be followed by another one after a restart; anything else is final. */
    if (g->n_outcomes > 0 && (g->fate == REPLAY_DROPPED || g->in_marker))
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": group %s#%" PRIu64 " gets a second outcome after its final one (%s%s)",
                    rec->seq, g->actor_id, g->group_id, fate_word(g),
                    g->fate == REPLAY_DROPPED ? "" : " in a completed step");
    g->n_outcomes++;
    free(g->rewards);
    g->rewards = g->preference = g->format = g->advantages = NULL;
    g->n_scores = 0;
    g->reward_mean = 0;
    g->in_marker = 0;
    g->staleness = o->staleness;
    if (o->fate == CRL__GROUP_FATE__GROUP_FATE_DROPPED) {
        g->fate = REPLAY_DROPPED;
        g->drop_reason = (int)o->drop_reason;
        g->step = 0;
        g->batch_index = 0;
        if (o->drop_reason <= CRL__DROP_REASON__DROP_REASON_NONE ||
            (int)o->drop_reason >= REPLAY_N_DROP_REASONS)
            add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                        "seq %" PRIu64 ": group %s#%" PRIu64 " dropped with reason %d (must be 1..%d)",
                        rec->seq, g->actor_id, g->group_id, (int)o->drop_reason,
                        REPLAY_N_DROP_REASONS - 1);
        return;
    }
    g->fate = REPLAY_USED;
    g->drop_reason = 0;
    g->step = o->step;
    g->batch_index = o->batch_index;
    size_t n = g->group_size;
    if (o->step == 0)
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": group %s#%" PRIu64 " used at step 0 (steps start at 1)", rec->seq,
                    g->actor_id, g->group_id);
    if (o->drop_reason != CRL__DROP_REASON__DROP_REASON_NONE)
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": group %s#%" PRIu64 " used but with drop reason %s", rec->seq,
                    g->actor_id, g->group_id, replay_drop_reason_name((int)o->drop_reason));
    if (o->n_rewards != n || o->n_preference != n || o->n_format != n || o->n_advantages != n) {
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": outcome of group %s#%" PRIu64 " has %zu rewards, %zu preference, %zu format, %zu advantages for %zu samples",
                    rec->seq, g->actor_id, g->group_id, o->n_rewards, o->n_preference, o->n_format,
                    o->n_advantages, n);
        return;
    }
    if (!float_ok(o->rewards, n) || !float_ok(o->preference, n) || !float_ok(o->format, n) ||
        !float_ok(o->advantages, n))
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                    "seq %" PRIu64 ": outcome of group %s#%" PRIu64 " holds a non-finite score", rec->seq,
                    g->actor_id, g->group_id);
    if (n == 0)
        return;
    /* One allocation for the four arrays (freed through rewards). */
    float *buf = malloc(4 * n * sizeof *buf);
    if (!buf)
        return; /* scores are for display; the fate is recorded */
    g->rewards = buf;
    g->preference = buf + n;
    g->format = buf + 2 * n;
    g->advantages = buf + 3 * n;
    memcpy(g->rewards, o->rewards, n * sizeof *buf);
    memcpy(g->preference, o->preference, n * sizeof *buf);
    memcpy(g->format, o->format, n * sizeof *buf);
    memcpy(g->advantages, o->advantages, n * sizeof *buf);
    g->n_scores = n;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += g->rewards[i];
    g->reward_mean = sum / (double)n;
}

static int on_marker(replay_index_t *idx, const Crl__TrajectoryRecord *rec, const char *file,
                     uint32_t fi, uint64_t off)
{
    const Crl__StepMarker *m = rec->step;
    idx->markers++;
    if (!m) {
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off, "seq %" PRIu64 ": empty StepMarker", rec->seq);
        return 0;
    }
    if (idx->n_steps > 0 && m->step <= idx->steps[idx->n_steps - 1].step) {
        /* A learner resumed from a checkpoint redoes the steps after it; the
         * later marker is the one that counts (crl-learner replay follows it). */
        add_problem(idx, REPLAY_PROBLEM_NOTE, file, off,
                    "seq %" PRIu64 ": StepMarker for step %" PRIu64 " comes after step %" PRIu64
                    " (a step redone after a learner restart; the later marker counts)",
                    rec->seq, m->step, idx->steps[idx->n_steps - 1].step);
        idx->steps_sorted = 0;
    }
    if (m->step == 0)
        add_problem(idx, REPLAY_PROBLEM_ERROR, file, off, "seq %" PRIu64 ": StepMarker for step 0 (steps start at 1)",
                    rec->seq);
    replay_step_t s = {
        .step = m->step,
        .version_before = m->version_before,
        .version_after = m->version_after,
        .n_groups = m->n_groups,
        .formed_unix_ms = m->formed_unix_ms,
        .update_seconds = m->update_seconds,
        .file_index = fi,
        .offset = off,
    };
    if (add_step(idx, &s) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < m->n_groups; i++) {
        const Crl__GroupKey *k = m->groups[i];
        if (!k) {
            add_problem(idx, REPLAY_PROBLEM_ERROR, file, off, "seq %" PRIu64 ": step %" PRIu64 ": key %zu missing",
                        rec->seq, m->step, i);
            continue;
        }
        long gi = replay_index_find(idx, k->actor_id, k->group_id);
        if (gi < 0) {
            add_problem(idx, idx->lost_records ? REPLAY_PROBLEM_SKIPPED : REPLAY_PROBLEM_ERROR, file, off,
                        "seq %" PRIu64 ": step %" PRIu64 " item %zu is group %s#%" PRIu64 ", which was not received before it%s",
                        rec->seq, m->step, i, k->actor_id, k->group_id,
                        idx->lost_records ? " (its record may be in a skipped corrupt region)" : "");
            continue;
        }
        replay_group_t *g = &idx->groups[gi];
        if (g->fate != REPLAY_USED) {
            add_problem(idx, idx->lost_records && g->fate == REPLAY_PENDING ? REPLAY_PROBLEM_SKIPPED : REPLAY_PROBLEM_ERROR,
                        file, off,
                        "seq %" PRIu64 ": step %" PRIu64 " item %zu is group %s#%" PRIu64 ", whose outcome is %s%s%s",
                        rec->seq, m->step, i, g->actor_id, g->group_id,
                        g->fate == REPLAY_DROPPED ? "dropped: " : "missing",
                        g->fate == REPLAY_DROPPED ? replay_drop_reason_name(g->drop_reason) : "",
                        idx->lost_records && g->fate == REPLAY_PENDING ? " (it may be in a skipped corrupt region)" : "");
            continue;
        }
        if (g->step != m->step || g->batch_index != i) {
            add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                        "seq %" PRIu64 ": step %" PRIu64 " item %zu is group %s#%" PRIu64 ", whose outcome says step %" PRIu64 " item %" PRIu32,
                        rec->seq, m->step, i, g->actor_id, g->group_id, g->step, g->batch_index);
            continue;
        }
        if (g->in_marker) {
            add_problem(idx, REPLAY_PROBLEM_ERROR, file, off,
                        "seq %" PRIu64 ": step %" PRIu64 " lists group %s#%" PRIu64 " twice", rec->seq,
                        m->step, g->actor_id, g->group_id);
            continue;
        }
        g->in_marker = 1;
    }
    return 0;
}

static int cmp_actor(const void *a, const void *b)
{
    return strcmp(((const replay_actor_t *)a)->actor_id, ((const replay_actor_t *)b)->actor_id);
}

static int build_actors(replay_index_t *idx)
{
    free(idx->actors);
    idx->actors = NULL;
    idx->n_actors = 0;
    if (!idx->n_groups)
        return 0;
    /* Groups sorted by actor through an index array, then run-length. */
    replay_actor_t *tmp = malloc(idx->n_groups * sizeof *tmp);
    if (!tmp)
        return -ENOMEM;
    for (size_t i = 0; i < idx->n_groups; i++) {
        const replay_group_t *g = &idx->groups[i];
        tmp[i] = (replay_actor_t){ .actor_id = g->actor_id,
                                   .groups = 1,
                                   .used = g->fate == REPLAY_USED,
                                   .dropped = g->fate == REPLAY_DROPPED,
                                   .pending = g->fate == REPLAY_PENDING };
    }
    qsort(tmp, idx->n_groups, sizeof *tmp, cmp_actor);
    size_t n = 0;
    for (size_t i = 0; i < idx->n_groups; i++) {
        if (n > 0 && strcmp(tmp[n - 1].actor_id, tmp[i].actor_id) == 0) {
            tmp[n - 1].groups += tmp[i].groups;
            tmp[n - 1].used += tmp[i].used;
            tmp[n - 1].dropped += tmp[i].dropped;
            tmp[n - 1].pending += tmp[i].pending;
        } else {
            tmp[n++] = tmp[i];
        }
    }
    idx->actors = tmp;
    idx->n_actors = n;
    return 0;
}

/* Largest file number of a folder log (the one a torn tail can be in). */
static int last_file_index(const replay_index_t *idx, uint32_t *out)
{
    if (idx->single)
        return 0;
    DIR *d = opendir(idx->path);
    if (!d)
        return -errno;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned v;
        int used = 0;
        if (sscanf(e->d_name, "traj-%u.log%n", &v, &used) == 1 && e->d_name[used] == '\0' &&
            (!found || v > *out)) {
            *out = v;
            found = 1;
        }
    }
    closedir(d);
    return found ? 1 : 0;
}

replay_index_t *replay_index_load(const char *path, const replay_index_options_t *opt_in,
                                  char *err, size_t errlen)
{
    replay_index_options_t defopt;
    const replay_index_options_t *opt = opt_in;
    if (!opt) {
        replay_index_options_default(&defopt);
        opt = &defopt;
    }
    traj_log_reader_t *r = NULL;
    char *cur_file = NULL;
    uint32_t cur_fi = 0;
    replay_index_t *idx = calloc(1, sizeof *idx);
    if (!idx || !(idx->path = strdup(path))) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    idx->skip_corrupt = opt->skip_corrupt;
    idx->steps_sorted = 1;
    struct stat st;
    if (stat(path, &st) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    idx->single = !S_ISDIR(st.st_mode);
    r = traj_log_reader_open(path, opt->skip_corrupt, err, errlen);
    if (!r)
        goto fail;

    uint64_t expect_seq = 0;
    int have_prev = 0;
    uint32_t prev_file = 0;
    uint64_t prev_end = 0;
    uint64_t gaps_seen = 0;
    for (;;) {
        const void *payload = NULL;
        size_t len = 0;
        uint32_t fi = 0;
        uint64_t off = 0;
        int rc = traj_log_next(r, &payload, &len, &fi, &off);
        if (rc == 0) {
            idx->complete = 1;
            break;
        }
        if (rc < 0) {
            add_problem(idx, REPLAY_PROBLEM_ERROR | REGION, NULL, 0, "%s", traj_log_reader_error(r));
            break;
        }
        if (!cur_file || fi != cur_fi) {
            free(cur_file);
            if (!(cur_file = file_path(idx, fi))) {
                set_err(err, errlen, "out of memory");
                goto fail;
            }
            cur_fi = fi;
        }
        /* Where the reader skipped corrupt bytes (skip_corrupt), records do
         * not follow each other: report the region where it lies. */
        int gap = 0;
        if (have_prev && fi == prev_file && off > prev_end) {
            add_problem(idx, REPLAY_PROBLEM_SKIPPED | REGION, cur_file, prev_end,
                        "corrupt region of %" PRIu64 " bytes skipped", off - prev_end);
            gap = 1;
        } else if (have_prev && fi != prev_file) {
            uint64_t sz = file_size(idx, prev_file);
            if (sz > prev_end) {
                char *pf = file_path(idx, prev_file);
                add_problem(idx, REPLAY_PROBLEM_SKIPPED | REGION, pf ? pf : "?", prev_end,
                            "corrupt region of %" PRIu64 " bytes skipped (to the end of the file)",
                            sz - prev_end);
                free(pf);
                gap = 1;
            }
        }
        if ((!have_prev || fi != prev_file) && off > TRAJ_LOG_HEADER_BYTES) {
            add_problem(idx, REPLAY_PROBLEM_SKIPPED | REGION, cur_file, TRAJ_LOG_HEADER_BYTES,
                        "corrupt region of %" PRIu64 " bytes skipped", off - TRAJ_LOG_HEADER_BYTES);
            gap = 1;
        }
        gaps_seen += (uint64_t)gap;
        have_prev = 1;
        prev_file = fi;
        prev_end = off + TRAJ_LOG_RECORD_OVERHEAD + len;
        idx->records++;
        idx->payload_bytes += len;

        Crl__TrajectoryRecord *rec = crl__trajectory_record__unpack(NULL, len, payload);
        if (!rec) {
            idx->undecodable++;
            expect_seq++; /* it most likely held the next seq number */
            add_problem(idx, REPLAY_PROBLEM_ERROR, cur_file, off,
                        "record of %zu bytes (valid CRC) is not a TrajectoryRecord (protobuf decode failed)",
                        len);
            continue;
        }
        if (rec->seq != expect_seq) {
            if (rec->seq > expect_seq) {
                uint64_t missing = rec->seq - expect_seq;
                if (gap)
                    idx->lost_records += missing;
                add_problem(idx, gap ? REPLAY_PROBLEM_SKIPPED : REPLAY_PROBLEM_ERROR, cur_file, off,
                            "seq %" PRIu64 " where %" PRIu64 " was expected: %" PRIu64 " record(s) missing%s",
                            rec->seq, expect_seq, missing, gap ? " (in the skipped region)" : "");
            } else {
                add_problem(idx, REPLAY_PROBLEM_ERROR, cur_file, off,
                            "seq %" PRIu64 " where %" PRIu64 " was expected: seq numbers repeat or go back",
                            rec->seq, expect_seq);
            }
        }
        expect_seq = rec->seq + 1;
        if (!idx->has_time || rec->written_unix_ms < idx->first_ms)
            idx->first_ms = rec->written_unix_ms;
        if (!idx->has_time || rec->written_unix_ms > idx->last_ms)
            idx->last_ms = rec->written_unix_ms;
        idx->has_time = 1;

        int orc = 0;
        switch (rec->kind_case) {
        case CRL__TRAJECTORY_RECORD__KIND_RECEIVED:
            orc = on_received(idx, rec, opt, cur_file, fi, off);
            break;
        case CRL__TRAJECTORY_RECORD__KIND_OUTCOME:
            on_outcome(idx, rec, cur_file, off);
            break;
        case CRL__TRAJECTORY_RECORD__KIND_STEP:
            orc = on_marker(idx, rec, cur_file, fi, off);
            break;
        default:
            idx->undecodable++;
            add_problem(idx, REPLAY_PROBLEM_ERROR, cur_file, off,
                        "seq %" PRIu64 ": record of no known kind (written by a newer learner?)",
                        rec->seq);
            break;
        }
        crl__trajectory_record__free_unpacked(rec, NULL);
        if (orc < 0) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
    }
    traj_log_reader_stats(r, &idx->reader);
    traj_log_reader_close(&r);

    if (idx->reader.skipped_regions > gaps_seen)
        add_problem(idx, REPLAY_PROBLEM_SKIPPED | REGION, NULL, 0,
                    "%s: %" PRIu64 " more corrupt region(s) skipped with nothing readable after them in their file",
                    idx->path, idx->reader.skipped_regions - gaps_seen);
    if (idx->reader.torn_bytes > 0) {
        uint32_t last = have_prev ? prev_file : 0;
        if (last_file_index(idx, &last) < 0)
            last = prev_file;
        char *lf = file_path(idx, last);
        uint64_t sz = file_size(idx, last);
        add_problem(idx, REPLAY_PROBLEM_NOTE | REGION, lf ? lf : idx->path,
                    sz >= idx->reader.torn_bytes ? sz - idx->reader.torn_bytes : 0,
                    "torn tail of %" PRIu64 " bytes (an append cut short by a crash, or one in progress); not corruption: the learner cuts it when it reopens the log",
                    idx->reader.torn_bytes);
        free(lf);
    }
    /* USED outcomes without their StepMarker: either the step's marker is
     * there and does not list them (wrong), or the update never completed
     * (normal after a crash: replay ignores them). */
    {
        uint64_t inc_step = 0, inc_count = 0;
        for (size_t i = 0; i < idx->n_groups; i++) {
            replay_group_t *g = &idx->groups[i];
            if (g->fate != REPLAY_USED || g->in_marker)
                continue;
            long mk = marker_of(idx, g->step);
            if (mk >= 0) {
                /* Its item is another group's in the marker: the outcome is
                 * from an attempt at this step that a crash cut short, and
                 * the restarted learner formed the step anew. Otherwise the
                 * learner wrote an outcome its step does not account for. */
                int redone = g->batch_index < idx->steps[mk].n_groups;
                char *gf = file_path(idx, g->file_index);
                if (redone)
                    add_problem(idx, REPLAY_PROBLEM_NOTE, gf, g->offset,
                                "group %s#%" PRIu64 ": its outcome (step %" PRIu64 " item %" PRIu32 ") is from an attempt at step %" PRIu64 " that did not complete; the completed step used other groups",
                                g->actor_id, g->group_id, g->step, g->batch_index, g->step);
                else
                    add_problem(idx, REPLAY_PROBLEM_ERROR, gf, g->offset,
                                "group %s#%" PRIu64 " was used at step %" PRIu64 " item %" PRIu32 " but step %" PRIu64 "'s StepMarker (%zu groups) does not list it",
                                g->actor_id, g->group_id, g->step, g->batch_index, g->step,
                                idx->steps[mk].n_groups);
                free(gf);
                continue;
            }
            if (inc_count && g->step != inc_step) {
                add_problem(idx, REPLAY_PROBLEM_NOTE, NULL, 0,
                            "%s: step %" PRIu64 ": %" PRIu64 " group outcome(s) but no StepMarker (the update did not complete; replay ignores them)",
                            idx->path, inc_step, inc_count);
                inc_count = 0;
            }
            inc_step = g->step;
            inc_count++;
        }
        if (inc_count)
            add_problem(idx, REPLAY_PROBLEM_NOTE, NULL, 0,
                        "%s: step %" PRIu64 ": %" PRIu64 " group outcome(s) but no StepMarker (the update did not complete; replay ignores them)",
                        idx->path, inc_step, inc_count);
    }
    if (build_actors(idx) < 0) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    free(cur_file);
    return idx;
fail:
    free(cur_file);
    traj_log_reader_close(&r);
    replay_index_destroy(&idx);
    return NULL;
}

void replay_index_destroy(replay_index_t **pidx)
{
    if (!pidx || !*pidx)
        return;
    replay_index_t *idx = *pidx;
    for (size_t i = 0; i < idx->n_groups; i++) {
        free(idx->groups[i].actor_id);
        free(idx->groups[i].prompt_id);
        free(idx->groups[i].rewards);
    }
    for (size_t i = 0; i < idx->n_problems; i++) {
        free(idx->problems[i].file);
        free(idx->problems[i].message);
    }
    free(idx->groups);
    free(idx->slots);
    free(idx->steps);
    free(idx->problems);
    free(idx->actors);
    free(idx->path);
    free(idx);
    *pidx = NULL;
}

const char *replay_index_path(const replay_index_t *idx)
{
    return idx->path;
}

int replay_index_complete(const replay_index_t *idx)
{
    return idx->complete;
}

size_t replay_index_n_groups(const replay_index_t *idx)
{
    return idx->n_groups;
}

const replay_group_t *replay_index_group(const replay_index_t *idx, size_t i)
{
    return i < idx->n_groups ? &idx->groups[i] : NULL;
}

size_t replay_index_n_steps(const replay_index_t *idx)
{
    return idx->n_steps;
}

const replay_step_t *replay_index_step(const replay_index_t *idx, size_t i)
{
    return i < idx->n_steps ? &idx->steps[i] : NULL;
}

size_t replay_index_n_problems(const replay_index_t *idx)
{
    return idx->n_problems;
}

const replay_problem_t *replay_index_problem(const replay_index_t *idx, size_t i)
{
    return i < idx->n_problems ? &idx->problems[i] : NULL;
}

size_t replay_index_n_errors(const replay_index_t *idx)
{
    return idx->n_errors;
}

void replay_index_actor(const replay_index_t *idx, size_t i, replay_actor_t *out)
{
    if (i < idx->n_actors)
        *out = idx->actors[i];
    else
        memset(out, 0, sizeof *out);
}

void replay_index_summary(const replay_index_t *idx, replay_summary_t *s)
{
    memset(s, 0, sizeof *s);
    s->records = idx->records;
    s->undecodable = idx->undecodable;
    s->received = idx->received;
    s->outcomes = idx->outcomes;
    s->markers = idx->markers;
    s->groups = idx->n_groups;
    s->n_actors = idx->n_actors;
    s->has_time = idx->has_time;
    s->first_ms = idx->first_ms;
    s->last_ms = idx->last_ms;
    s->payload_bytes = idx->payload_bytes;
    s->reader = idx->reader;
    s->files = idx->reader.files;
    double rsum = 0, psum = 0, fsum = 0;
    for (size_t i = 0; i < idx->n_groups; i++) {
        const replay_group_t *g = &idx->groups[i];
        if (!s->has_versions || g->weights_version < s->version_min)
            s->version_min = g->weights_version;
        if (!s->has_versions || g->weights_version > s->version_max)
            s->version_max = g->weights_version;
        s->has_versions = 1;
        switch (g->fate) {
        case REPLAY_USED:
            s->used++;
            s->used_incomplete += !g->in_marker;
            for (size_t k = 0; k < g->n_scores; k++) {
                double r = g->rewards[k];
                if (!s->scored_samples || r < s->reward_min)
                    s->reward_min = r;
                if (!s->scored_samples || r > s->reward_max)
                    s->reward_max = r;
                rsum += r;
                psum += g->preference[k];
                fsum += g->format[k];
                s->scored_samples++;
            }
            break;
        case REPLAY_DROPPED:
            s->dropped++;
            if (g->drop_reason >= 0 && g->drop_reason < REPLAY_N_DROP_REASONS)
                s->drops[g->drop_reason]++;
            break;
        default:
            s->pending++;
            break;
        }
    }
    if (s->scored_samples) {
        s->reward_mean = rsum / (double)s->scored_samples;
        s->preference_rate = psum / (double)s->scored_samples;
        s->format_rate = fsum / (double)s->scored_samples;
    }
    for (size_t i = 0; i < idx->n_steps; i++) {
        const replay_step_t *st = &idx->steps[i];
        if (!s->has_steps || st->step < s->step_min)
            s->step_min = st->step;
        if (!s->has_steps || st->step > s->step_max)
            s->step_max = st->step;
        s->has_steps = 1;
    }
    /* Bytes on disk: every file of the log. */
    if (idx->single) {
        struct stat st;
        if (stat(idx->path, &st) == 0)
            s->file_bytes = (uint64_t)st.st_size;
    } else {
        DIR *d = opendir(idx->path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            unsigned v;
            int used = 0;
            if (sscanf(e->d_name, "traj-%u.log%n", &v, &used) == 1 && e->d_name[used] == '\0')
                s->file_bytes += file_size(idx, v);
        }
        if (d)
            closedir(d);
    }
}

/* ---------------------------------------------------------------- filters */

void replay_filter_init(replay_filter_t *f)
{
    memset(f, 0, sizeof *f);
    f->drop_reason = -1;
}

int replay_filter_active(const replay_filter_t *f)
{
    return f->by_step || f->actor[0] || f->by_version || f->by_reward || f->dropped || f->limit;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!*s || *s == '-' || *s == '+')
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    if (!*s)
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* "A", "A:B", "A:", ":B" (is_double: numbers, else u64). A lone "A" is
 * the range [A, A]. */
static int parse_range(const char *s, int is_double, void *lo, void *hi)
{
    char buf[128];
    if (!s || strlen(s) >= sizeof buf)
        return -1;
    strcpy(buf, s);
    char *colon = strchr(buf, ':');
    char *a = buf, *b = NULL;
    if (colon) {
        *colon = '\0';
        b = colon + 1;
    }
    if (is_double) {
        double *l = lo, *h = hi;
        *l = -INFINITY;
        *h = INFINITY;
        if (*a && parse_double(a, l) < 0)
            return -1;
        if (b && *b && parse_double(b, h) < 0)
            return -1;
        if (!b)
            *h = *l;
        if (!*a && (!b || !*b))
            return -1;
        return *l <= *h ? 0 : -1;
    }
    uint64_t *l = lo, *h = hi;
    *l = 0;
    *h = UINT64_MAX;
    if (*a && parse_u64(a, l) < 0)
        return -1;
    if (b && *b && parse_u64(b, h) < 0)
        return -1;
    if (!b)
        *h = *l;
    if (!*a && (!b || !*b))
        return -1;
    return *l <= *h ? 0 : -1;
}

int replay_filter_option(replay_filter_t *f, const char *opt, const char *value, char *err,
                         size_t errlen)
{
    if (!strcmp(opt, "--step")) {
        if (parse_range(value, 0, &f->step_lo, &f->step_hi) < 0)
            goto bad_range;
        f->by_step = 1;
        return 0;
    }
    if (!strcmp(opt, "--version")) {
        if (parse_range(value, 0, &f->version_lo, &f->version_hi) < 0)
            goto bad_range;
        f->by_version = 1;
        return 0;
    }
    if (!strcmp(opt, "--reward")) {
        if (parse_range(value, 1, &f->reward_lo, &f->reward_hi) < 0)
            goto bad_range;
        f->by_reward = 1;
        return 0;
    }
    if (!strcmp(opt, "--actor")) {
        if (!value || !*value || strlen(value) > WIRE_MAX_ID_LEN) {
            set_err(err, errlen, "--actor: expected an actor id of 1..%d bytes", WIRE_MAX_ID_LEN);
            return -EINVAL;
        }
        strcpy(f->actor, value);
        return 0;
    }
    if (!strcmp(opt, "--limit")) {
        if (!value || parse_u64(value, &f->limit) < 0 || f->limit == 0) {
            set_err(err, errlen, "--limit '%s': expected a positive integer", value ? value : "");
            return -EINVAL;
        }
        return 0;
    }
    if (!strcmp(opt, "--dropped")) {
        f->dropped = 1;
        f->drop_reason = -1;
        if (value) {
            int r = replay_drop_reason_parse(value);
            if (r <= 0) {
                set_err(err, errlen,
                        "--dropped '%s': unknown reason (one of stale, malformed, duplicate, unknown_grant, grant_reassigned, wrong_prompt, shutdown, log_failed)",
                        value);
                return -EINVAL;
            }
            f->drop_reason = r;
        }
        return 0;
    }
    return -ENOENT;
bad_range:
    set_err(err, errlen, "%s '%s': expected a range A:B (or A, A:, :B) with A <= B", opt,
            value ? value : "");
    return -EINVAL;
}

int replay_filter_match(const replay_filter_t *f, const replay_group_t *g)
{
    if (f->by_step && (g->fate != REPLAY_USED || g->step < f->step_lo || g->step > f->step_hi))
        return 0;
    if (f->actor[0] && strcmp(f->actor, g->actor_id) != 0)
        return 0;
    if (f->by_version && (g->weights_version < f->version_lo || g->weights_version > f->version_hi))
        return 0;
    if (f->by_reward && (g->fate != REPLAY_USED || g->n_scores == 0 ||
                         g->reward_mean < f->reward_lo || g->reward_mean > f->reward_hi))
        return 0;
    if (f->dropped && (g->fate != REPLAY_DROPPED ||
                       (f->drop_reason >= 0 && g->drop_reason != f->drop_reason)))
        return 0;
    return 1;
}

size_t replay_index_select(const replay_index_t *idx, const replay_filter_t *f,
                           unsigned char *sel)
{
    size_t n = 0;
    for (size_t i = 0; i < idx->n_groups; i++) {
        sel[i] = (!f->limit || n < f->limit) && replay_filter_match(f, &idx->groups[i]);
        n += sel[i];
    }
    return n;
}

/* ---------------------------------------------------------------- second pass */

int replay_index_scan(const replay_index_t *idx, replay_visit_fn fn, void *ctx, char *err,
                      size_t errlen)
{
    char rerr[512];
    traj_log_reader_t *r = traj_log_reader_open(idx->path, idx->skip_corrupt, rerr, sizeof rerr);
    if (!r) {
        set_err(err, errlen, "%s", rerr);
        return -EIO;
    }
    int ret = 0;
    for (uint64_t k = 0; k < idx->records; k++) {
        const void *payload;
        size_t len;
        uint32_t fi;
        uint64_t off;
        int rc = traj_log_next(r, &payload, &len, &fi, &off);
        if (rc <= 0) {
            /* The first pass read this far: the log changed under us. */
            set_err(err, errlen, "%s: record %" PRIu64 " cannot be read again: %s", idx->path, k,
                    rc < 0 ? traj_log_reader_error(r) : "the log got shorter");
            ret = rc < 0 ? rc : -EIO;
            break;
        }
        Crl__TrajectoryRecord *rec = crl__trajectory_record__unpack(NULL, len, payload);
        if (!rec)
            continue; /* reported by the first pass */
        replay_record_t rr = { .rec = rec, .payload = payload, .len = len, .file_index = fi,
                               .offset = off, .group = -1 };
        if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED && rec->received &&
            rec->received->group) {
            long g = replay_index_find(idx, rec->received->group->actor_id,
                                       rec->received->group->group_id);
            /* A duplicate GroupReceived is not the indexed one. */
            if (g >= 0 && idx->groups[g].file_index == fi && idx->groups[g].offset == off)
                rr.group = g;
        } else if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_OUTCOME && rec->outcome &&
                   rec->outcome->key) {
            rr.group = replay_index_find(idx, rec->outcome->key->actor_id,
                                         rec->outcome->key->group_id);
        }
        ret = fn(ctx, &rr);
        crl__trajectory_record__free_unpacked(rec, NULL);
        if (ret)
            break;
    }
    traj_log_reader_close(&r);
    return ret;
}

/* ---------------------------------------------------------------- reports */

void replay_index_print_info(const replay_index_t *idx, FILE *out)
{
    replay_summary_t s;
    char a[64], b[64], c[64];
    replay_index_summary(idx, &s);
    fprintf(out, "log        %s\n", idx->path);
    fprintf(out, "files      %" PRIu32 " (%s on disk), %" PRIu64 " records (%s of payload)\n",
            s.files, format_bytes(s.file_bytes, a, sizeof a), s.records,
            format_bytes(s.payload_bytes, b, sizeof b));
    fprintf(out, "records    %" PRIu64 " GroupReceived, %" PRIu64 " GroupOutcome, %" PRIu64 " StepMarker",
            s.received, s.outcomes, s.markers);
    if (s.undecodable)
        fprintf(out, ", %" PRIu64 " undecodable", s.undecodable);
    fputc('\n', out);
    if (s.has_time)
        fprintf(out, "time       %s .. %s (%s)\n", format_ms(s.first_ms, a, sizeof a),
                format_ms(s.last_ms, b, sizeof b),
                format_duration(s.last_ms - s.first_ms, c, sizeof c));
    else
        fprintf(out, "time       -\n");
    fprintf(out, "groups     %" PRIu64 " received: %" PRIu64 " used", s.groups, s.used);
    if (s.used_incomplete)
        fprintf(out, " (%" PRIu64 " in an update that did not complete)", s.used_incomplete);
    fprintf(out, ", %" PRIu64 " dropped, %" PRIu64 " pending (no outcome)\n", s.dropped, s.pending);
    fprintf(out, "actors     %zu\n", s.n_actors);
    for (size_t i = 0; i < s.n_actors; i++) {
        replay_actor_t ac;
        replay_index_actor(idx, i, &ac);
        fprintf(out, "  %-24s %6" PRIu64 " groups: %" PRIu64 " used, %" PRIu64 " dropped, %" PRIu64 " pending\n",
                ac.actor_id, ac.groups, ac.used, ac.dropped, ac.pending);
    }
    if (s.has_versions)
        fprintf(out, "versions   %" PRIu64 " .. %" PRIu64 " (weights that generated the groups)\n",
                s.version_min, s.version_max);
    else
        fprintf(out, "versions   -\n");
    if (s.has_steps)
        fprintf(out, "steps      %" PRIu64 " .. %" PRIu64 " (%" PRIu64 " StepMarkers)\n", s.step_min,
                s.step_max, s.markers);
    else
        fprintf(out, "steps      - (no StepMarker)\n");
    if (s.scored_samples)
        fprintf(out, "rewards    used groups, %" PRIu64 " samples: mean %.4f, min %.4f, max %.4f; preference %.4f, format %.4f\n",
                s.scored_samples, s.reward_mean, s.reward_min, s.reward_max, s.preference_rate,
                s.format_rate);
    else
        fprintf(out, "rewards    - (no used group)\n");
    fprintf(out, "drops      ");
    if (!s.dropped)
        fprintf(out, "none");
    for (int k = 1, first = 1; k < REPLAY_N_DROP_REASONS; k++) {
        if (!s.drops[k])
            continue;
        fprintf(out, "%s%s %" PRIu64, first ? "" : ", ", replay_drop_reason_name(k), s.drops[k]);
        first = 0;
    }
    fputc('\n', out);
    fprintf(out, "integrity  ");
    if (!idx->complete)
        fprintf(out, "READ STOPPED EARLY (see below); ");
    if (s.reader.skipped_regions)
        fprintf(out, "%" PRIu64 " corrupt region(s) skipped (%" PRIu64 " bytes, %" PRIu64 " records lost); ",
                s.reader.skipped_regions, s.reader.skipped_bytes, idx->lost_records);
    else
        fprintf(out, "no corrupt region; ");
    if (s.reader.torn_bytes)
        fprintf(out, "torn tail of %" PRIu64 " bytes; ", s.reader.torn_bytes);
    fprintf(out, "%zu other problem(s)%s\n", idx->n_errors,
            idx->n_problems ? " (crl-replay verify lists them)" : "");
    for (size_t i = 0; i < idx->n_problems; i++) {
        const replay_problem_t *p = &idx->problems[i];
        if (!p->region)
            continue;
        if (p->file)
            fprintf(out, "  %s offset %" PRIu64 ": %s\n", p->file, p->offset, p->message);
        else
            fprintf(out, "  %s\n", p->message);
    }
}

size_t replay_index_print_verify(const replay_index_t *idx, FILE *out)
{
    static const char *const tag[] = { "ERROR", "skipped", "note" };
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < idx->n_problems; i++) {
            const replay_problem_t *p = &idx->problems[i];
            if ((int)p->severity != pass)
                continue;
            const char *t = p->severity == REPLAY_PROBLEM_SKIPPED && !idx->skip_corrupt ? "ERROR"
                                                                                       : tag[pass];
            if (p->file)
                fprintf(out, "%s: %s offset %" PRIu64 ": %s\n", t, p->file, p->offset, p->message);
            else
                fprintf(out, "%s: %s\n", t, p->message);
        }
    }
    if (idx->problems_dropped)
        fprintf(out, "... and %" PRIu64 " more problem(s) not listed\n", idx->problems_dropped);
    replay_summary_t s;
    replay_index_summary(idx, &s);
    if (idx->n_errors) {
        fprintf(out, "FAILED: %zu problem(s) in %s (%" PRIu64 " records read%s)\n", idx->n_errors,
                idx->path, s.records, idx->complete ? "" : ", reading stopped early");
    } else {
        fprintf(out, "OK: %s: %" PRIu64 " records in %" PRIu32 " file(s), %" PRIu64 " groups, %zu steps",
                idx->path, s.records, s.files, s.groups, idx->n_steps);
        if (s.reader.skipped_regions)
            fprintf(out, "; skipped %" PRIu64 " corrupt region(s) (%" PRIu64 " bytes, %" PRIu64 " records lost)",
                    s.reader.skipped_regions, s.reader.skipped_bytes, idx->lost_records);
        if (s.reader.torn_bytes)
            fprintf(out, "; torn tail of %" PRIu64 " bytes", s.reader.torn_bytes);
        fputc('\n', out);
    }
    return idx->n_errors;
}

/* ---------------------------------------------------------------- text */

static void put_ids(sbuf_t *b, const int32_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == -1) {
            size_t k = i;
            while (k < n && ids[k] == -1)
                k++;
            sb_printf(b, "%s[%zu patches]", i ? " " : "", k - i);
            i = k - 1;
            continue;
        }
        sb_printf(b, "%s%" PRId32, i ? " " : "", ids[i]);
    }
}

char *replay_prompt_text(const tokenizer_t *tok, const int32_t *ids, size_t n)
{
    sbuf_t raw = { 0 }, b = { 0 };
    if (!tok) {
        put_ids(&b, ids, n);
        return sb_take(&b);
    }
    /* Token bytes first, cleaned at the end: a UTF-8 character may be
     * split across tokens. */
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == -1) {
            size_t k = i;
            while (k < n && ids[k] == -1)
                k++;
            sb_printf(&raw, "[%zu patches]", k - i);
            i = k - 1;
            continue;
        }
        size_t len = 0;
        const char *special = tok_special_name(ids[i]);
        const char *s = special ? special : tok_token_bytes(tok, ids[i], &len);
        if (special)
            len = strlen(special);
        if (s)
            sb_put(&raw, s, len);
        else
            sb_printf(&raw, "<?%" PRId32 ">", ids[i]);
    }
    if (raw.oom) {
        free(raw.p);
        return NULL;
    }
    sb_put_clean(&b, raw.p ? raw.p : "", raw.n);
    free(raw.p);
    return sb_take(&b);
}

char *replay_response_text(const tokenizer_t *tok, const int32_t *ids, size_t n)
{
    sbuf_t b = { 0 };
    if (!tok) {
        put_ids(&b, ids, n);
        return sb_take(&b);
    }
    size_t cap = 1;
    int in_range = n <= (size_t)INT32_MAX;
    for (size_t i = 0; i < n && in_range; i++) {
        size_t len = 0;
        if (!tok_token_bytes(tok, ids[i], &len))
            in_range = 0;
        cap += len;
    }
    if (!in_range) /* ids the tokenizer does not know: show them, not guess */
        return replay_prompt_text(tok, ids, n);
    char *raw = malloc(cap);
    if (!raw)
        return NULL;
    long got = task_decode_response(tok, (const int *)ids, (int)n, raw, cap);
    if (got < 0) {
        free(raw);
        return replay_prompt_text(tok, ids, n);
    }
    sb_put_clean(&b, raw, (size_t)got);
    free(raw);
    return sb_take(&b);
}

/* Mean behaviour log-prob per token of a sample (0 for an empty one). */
static double mean_logprob(const Crl__Sample *s)
{
    double sum = 0;
    if (!s->n_logprobs)
        return 0;
    for (size_t i = 0; i < s->n_logprobs; i++)
        sum += s->logprobs[i];
    return sum / (double)s->n_logprobs;
}

/* Prints a multi-line text with every line indented. */
static void put_indented(FILE *out, const char *text, const char *indent)
{
    fputs(indent, out);
    for (const char *p = text; *p; p++) {
        fputc(*p, out);
        if (*p == '\n' && p[1])
            fputs(indent, out);
    }
    fputc('\n', out);
}

typedef struct {
    const replay_index_t *idx;
    const tokenizer_t *tok;
    replay_format_t format;
    FILE *out;
    size_t written;
    char *err;
    size_t errlen;
} dump_ctx_t;

static void fate_text(const replay_group_t *g, char *buf, size_t len)
{
    if (g->fate == REPLAY_USED)
        snprintf(buf, len, "USED at step %" PRIu64 " item %" PRIu32 ", mean reward %.3f%s", g->step,
                 g->batch_index, g->reward_mean,
                 g->in_marker ? "" : " (update not completed: no StepMarker)");
    else if (g->fate == REPLAY_DROPPED)
        snprintf(buf, len, "DROPPED (%s)", replay_drop_reason_name(g->drop_reason));
    else
        snprintf(buf, len, "PENDING (no outcome in the log)");
}

static int dump_text(dump_ctx_t *c, const replay_group_t *g, const Crl__GroupReceived *gr,
                     const char *file, uint64_t seq)
{
    const Crl__TrajectoryGroup *tg = gr->group;
    FILE *out = c->out;
    char fate[128], when[64];
    fate_text(g, fate, sizeof fate);
    fprintf(out, "=== %s#%" PRIu64 "  %s  (%s offset %" PRIu64 ", seq %" PRIu64 ")\n", g->actor_id,
            g->group_id, fate, file, g->offset, seq);
    fprintf(out, "prompt_id %s  task %s  weights v%" PRIu64 "  staleness %" PRIu32 "  G %zu  generation %.2fs\n",
            tg->prompt_id, task_name(g->task_kind), tg->weights_version, g->staleness,
            tg->n_samples, tg->generation_seconds);
    fprintf(out, "received %s  (learner v%" PRIu64 ", %" PRIu64 " updates done)\n",
            format_ms(gr->received_unix_ms, when, sizeof when), gr->learner_version,
            gr->learner_step);
    char *p = replay_prompt_text(c->tok, tg->prompt_tokens, tg->n_prompt_tokens);
    if (!p)
        return -ENOMEM;
    fprintf(out, "prompt%s:\n", tg->n_prompt_tokens_alt ? " 0" : "");
    put_indented(out, p, "    ");
    free(p);
    if (tg->n_prompt_tokens_alt) {
        p = replay_prompt_text(c->tok, tg->prompt_tokens_alt, tg->n_prompt_tokens_alt);
        if (!p)
            return -ENOMEM;
        fprintf(out, "prompt 1 (alt order):\n");
        put_indented(out, p, "    ");
        free(p);
    }
    for (size_t s = 0; s < tg->n_samples; s++) {
        const Crl__Sample *sm = tg->samples[s];
        if (!sm)
            continue;
        fprintf(out, "  sample %zu", s);
        if (tg->n_prompt_tokens_alt)
            fprintf(out, " (prompt %" PRIu32 ")", sm->prompt_index);
        if (s < g->n_scores)
            fprintf(out, "  reward %.3f  pref %g  format %g  adv %+.4f", g->rewards[s],
                    (double)g->preference[s], (double)g->format[s], (double)g->advantages[s]);
        else
            fprintf(out, "  reward -");
        fprintf(out, "  logp %.4f/token  %zu tokens%s\n", mean_logprob(sm), sm->n_tokens,
                sm->finished_by_eos ? ", eos" : ", cut at max_new_tokens");
        p = replay_response_text(c->tok, sm->tokens, sm->n_tokens);
        if (!p)
            return -ENOMEM;
        put_indented(out, p, "    | ");
        free(p);
    }
    fputc('\n', out);
    return 0;
}

/* Token ids as a raw JSON array: cJSON's generic number printing costs
 * about a microsecond per id, which dominates a dump of long responses. */
static cJSON *ids_json(const int32_t *ids, size_t n)
{
    sbuf_t b = { 0 };
    char num[16];
    sb_put(&b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        int k = snprintf(num, sizeof num, i ? ",%" PRId32 : "%" PRId32, ids[i]);
        sb_put(&b, num, (size_t)k);
    }
    sb_put(&b, "]", 1);
    char *text = sb_take(&b);
    if (!text)
        return NULL;
    cJSON *a = cJSON_CreateRaw(text);
    free(text);
    return a;
}

/* Adds text (taking ownership of it) as key; 0 or -ENOMEM. */
static int add_text(cJSON *o, const char *key, char *text)
{
    if (!text)
        return -ENOMEM;
    cJSON *v = cJSON_AddStringToObject(o, key, text);
    free(text);
    return v ? 0 : -ENOMEM;
}

static int dump_json(dump_ctx_t *c, const replay_group_t *g, const Crl__GroupReceived *gr,
                     const char *file, uint64_t seq)
{
    const Crl__TrajectoryGroup *tg = gr->group;
    int ok = 1;
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -ENOMEM;
    ok &= !!cJSON_AddStringToObject(o, "actor_id", g->actor_id);
    ok &= !!cJSON_AddNumberToObject(o, "group_id", (double)g->group_id);
    ok &= !!cJSON_AddStringToObject(o, "prompt_id", tg->prompt_id);
    ok &= !!cJSON_AddStringToObject(o, "task", task_name(g->task_kind));
    ok &= !!cJSON_AddNumberToObject(o, "grant_id", (double)tg->grant_id);
    ok &= !!cJSON_AddNumberToObject(o, "weights_version", (double)tg->weights_version);
    ok &= !!cJSON_AddStringToObject(o, "fate", fate_word(g));
    if (g->fate == REPLAY_USED) {
        ok &= !!cJSON_AddNumberToObject(o, "step", (double)g->step);
        ok &= !!cJSON_AddNumberToObject(o, "batch_index", g->batch_index);
        ok &= !!cJSON_AddBoolToObject(o, "step_completed", g->in_marker);
        ok &= !!cJSON_AddNumberToObject(o, "reward_mean", g->reward_mean);
    }
    if (g->fate == REPLAY_DROPPED)
        ok &= !!cJSON_AddStringToObject(o, "drop_reason", replay_drop_reason_name(g->drop_reason));
    if (g->fate != REPLAY_PENDING)
        ok &= !!cJSON_AddNumberToObject(o, "staleness", g->staleness);
    ok &= !!cJSON_AddNumberToObject(o, "received_unix_ms", (double)gr->received_unix_ms);
    ok &= !!cJSON_AddNumberToObject(o, "learner_version", (double)gr->learner_version);
    ok &= !!cJSON_AddNumberToObject(o, "learner_step", (double)gr->learner_step);
    ok &= !!cJSON_AddNumberToObject(o, "generation_seconds", tg->generation_seconds);
    ok &= !!cJSON_AddStringToObject(o, "file", file);
    ok &= !!cJSON_AddNumberToObject(o, "offset", (double)g->offset);
    ok &= !!cJSON_AddNumberToObject(o, "seq", (double)seq);
    if (!ok)
        goto oom;
    if (add_text(o, "prompt", replay_prompt_text(c->tok, tg->prompt_tokens, tg->n_prompt_tokens)) < 0 ||
        !cJSON_AddItemToObject(o, "prompt_tokens", ids_json(tg->prompt_tokens, tg->n_prompt_tokens)))
        goto oom;
    if (tg->n_prompt_tokens_alt &&
        (add_text(o, "prompt_alt",
                  replay_prompt_text(c->tok, tg->prompt_tokens_alt, tg->n_prompt_tokens_alt)) < 0 ||
         !cJSON_AddItemToObject(o, "prompt_alt_tokens",
                                ids_json(tg->prompt_tokens_alt, tg->n_prompt_tokens_alt))))
        goto oom;
    cJSON *samples = cJSON_AddArrayToObject(o, "samples");
    if (!samples)
        goto oom;
    for (size_t s = 0; s < tg->n_samples; s++) {
        const Crl__Sample *sm = tg->samples[s];
        cJSON *js = cJSON_CreateObject();
        if (!js || !cJSON_AddItemToArray(samples, js)) {
            cJSON_Delete(js);
            goto oom;
        }
        if (!sm)
            continue;
        ok &= !!cJSON_AddNumberToObject(js, "prompt_index", sm->prompt_index);
        ok &= !!cJSON_AddNumberToObject(js, "n_tokens", (double)sm->n_tokens);
        ok &= !!cJSON_AddBoolToObject(js, "finished_by_eos", sm->finished_by_eos);
        ok &= !!cJSON_AddNumberToObject(js, "mean_logprob", mean_logprob(sm));
        if (s < g->n_scores) {
            ok &= !!cJSON_AddNumberToObject(js, "reward", g->rewards[s]);
            ok &= !!cJSON_AddNumberToObject(js, "preference", g->preference[s]);
            ok &= !!cJSON_AddNumberToObject(js, "format", g->format[s]);
            ok &= !!cJSON_AddNumberToObject(js, "advantage", g->advantages[s]);
        }
        if (!ok || add_text(js, "text", replay_response_text(c->tok, sm->tokens, sm->n_tokens)) < 0 ||
            !cJSON_AddItemToObject(js, "tokens", ids_json(sm->tokens, sm->n_tokens)))
            goto oom;
    }
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line)
        return -ENOMEM;
    fputs(line, c->out);
    fputc('\n', c->out);
    free(line);
    return 0;
oom:
    cJSON_Delete(o);
    return -ENOMEM;
}

/* Dump order: by (step, batch item) when steps are selected — a step reads
 * as its batch — else log order (received order). */
typedef struct {
    uint64_t step;
    uint32_t item;
    size_t group;
} dump_order_t;

static int cmp_batch_order(const void *pa, const void *pb)
{
    const dump_order_t *a = pa, *b = pb;
    int c = cmp_u64(a->step, b->step);
    if (!c)
        c = cmp_u64(a->item, b->item);
    return c ? c : cmp_u64(a->group, b->group);
}

static int dump_one(dump_ctx_t *c, traj_log_reader_t *r, const replay_group_t *g)
{
    const void *payload;
    size_t len;
    uint32_t fi;
    uint64_t off;
    int rc = traj_log_reader_seek(r, g->file_index, g->offset);
    if (rc == 0)
        rc = traj_log_next(r, &payload, &len, &fi, &off);
    if (rc <= 0 || fi != g->file_index || off != g->offset) {
        set_err(c->err, c->errlen, "group %s#%" PRIu64 ": cannot read its record again at file %" PRIu32 " offset %" PRIu64 ": %s",
                g->actor_id, g->group_id, g->file_index, g->offset,
                rc < 0 ? traj_log_reader_error(r) : "the log changed");
        return rc < 0 ? rc : -EIO;
    }
    Crl__TrajectoryRecord *rec = crl__trajectory_record__unpack(NULL, len, payload);
    if (!rec || rec->kind_case != CRL__TRAJECTORY_RECORD__KIND_RECEIVED || !rec->received ||
        !rec->received->group) {
        if (rec)
            crl__trajectory_record__free_unpacked(rec, NULL);
        set_err(c->err, c->errlen, "group %s#%" PRIu64 ": the record at file %" PRIu32 " offset %" PRIu64 " is no longer its GroupReceived",
                g->actor_id, g->group_id, g->file_index, g->offset);
        return -EIO;
    }
    char *file = file_path(c->idx, fi);
    rc = -ENOMEM;
    if (file)
        rc = c->format == REPLAY_FORMAT_JSONL ? dump_json(c, g, rec->received, file, rec->seq)
                                              : dump_text(c, g, rec->received, file, rec->seq);
    free(file);
    crl__trajectory_record__free_unpacked(rec, NULL);
    if (rc < 0) {
        set_err(c->err, c->errlen, "out of memory while printing group %s#%" PRIu64, g->actor_id,
                g->group_id);
        return rc;
    }
    if (ferror(c->out)) {
        set_err(c->err, c->errlen, "write error on the output");
        return -EIO;
    }
    c->written++;
    return 0;
}

int replay_index_dump(const replay_index_t *idx, const replay_filter_t *f,
                      const tokenizer_t *tok, replay_format_t format, FILE *out,
                      size_t *n_written, char *err, size_t errlen)
{
    replay_filter_t none;
    traj_log_reader_t *r = NULL;
    dump_order_t *order = NULL;
    int rc = 0;
    if (!f) {
        replay_filter_init(&none);
        f = &none;
    }
    if (n_written)
        *n_written = 0;
    unsigned char *sel = calloc(idx->n_groups ? idx->n_groups : 1, 1);
    if (!sel)
        goto oom;
    size_t n = replay_index_select(idx, f, sel);
    if (n == 0)
        goto out;
    if (!(order = malloc(n * sizeof *order)))
        goto oom;
    for (size_t i = 0, k = 0; i < idx->n_groups; i++)
        if (sel[i])
            order[k++] = (dump_order_t){ idx->groups[i].step, idx->groups[i].batch_index, i };
    if (f->by_step)
        qsort(order, n, sizeof *order, cmp_batch_order);
    char rerr[512];
    r = traj_log_reader_open(idx->path, idx->skip_corrupt, rerr, sizeof rerr);
    if (!r) {
        set_err(err, errlen, "%s", rerr);
        rc = -EIO;
        goto out;
    }
    dump_ctx_t c = { .idx = idx, .tok = tok, .format = format, .out = out,
                     .err = err, .errlen = errlen };
    for (size_t k = 0; k < n && rc == 0; k++)
        rc = dump_one(&c, r, &idx->groups[order[k].group]);
    if (n_written)
        *n_written = c.written;
out:
    traj_log_reader_close(&r);
    free(order);
    free(sel);
    return rc;
oom:
    set_err(err, errlen, "out of memory");
    rc = -ENOMEM;
    goto out;
}

/* ---------------------------------------------------------------- cat */

typedef struct {
    uint32_t old_file, new_file;
    uint64_t old_off, new_off;
} pos_map_t;

typedef struct {
    const replay_index_t *idx;
    const unsigned char *sel;
    int filtering;
    traj_log_t *out;
    uint64_t *next_seq;
    replay_cat_stats_t *st;
    pos_map_t *map;            /* written records, in order */
    size_t n_map, cap_map;
    uint8_t *buf;
    size_t cap;
    char *err;
    size_t errlen;
} cat_ctx_t;

static int pos_cmp(uint32_t fa, uint64_t oa, uint32_t fb, uint64_t ob)
{
    return fa != fb ? (fa < fb ? -1 : 1) : cmp_u64(oa, ob);
}

/* New position of the first written record at or after (f, off) of the
 * source log; the current end of the new log when there is none (the
 * record such a position points to comes later). */
static void remap(const cat_ctx_t *c, uint32_t f, uint64_t off, uint32_t *nf, uint64_t *noff)
{
    size_t lo = 0, hi = c->n_map;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pos_cmp(c->map[mid].old_file, c->map[mid].old_off, f, off) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < c->n_map) {
        *nf = c->map[lo].new_file;
        *noff = c->map[lo].new_off;
    } else {
        traj_log_position(c->out, nf, noff);
    }
}

static int cat_visit(void *ctx, const replay_record_t *r)
{
    cat_ctx_t *c = ctx;
    Crl__TrajectoryRecord *rec = r->rec;
    int keep = 1;
    if (c->filtering) {
        switch (rec->kind_case) {
        case CRL__TRAJECTORY_RECORD__KIND_RECEIVED:
        case CRL__TRAJECTORY_RECORD__KIND_OUTCOME:
            keep = r->group >= 0 && c->sel[r->group];
            if (r->group < 0)
                c->st->other_dropped++;
            break;
        case CRL__TRAJECTORY_RECORD__KIND_STEP:
            for (size_t i = 0; keep && rec->step && i < rec->step->n_groups; i++) {
                const Crl__GroupKey *k = rec->step->groups[i];
                long g = k ? replay_index_find(c->idx, k->actor_id, k->group_id) : -1;
                keep = g >= 0 && c->sel[g];
            }
            if (keep)
                c->st->markers_kept++;
            else
                c->st->markers_dropped++;
            break;
        default:
            keep = 0;
            c->st->other_dropped++;
            break;
        }
    } else if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_STEP) {
        c->st->markers_kept++;
    }
    if (!keep)
        return 0;
    if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED && r->group >= 0)
        c->st->groups++;
    rec->seq = (*c->next_seq)++;
    if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_STEP && rec->step) {
        uint32_t nf;
        uint64_t noff;
        remap(c, rec->step->pending_file_index, rec->step->pending_offset, &nf, &noff);
        rec->step->pending_file_index = nf;
        rec->step->pending_offset = noff;
    }
    size_t len = crl__trajectory_record__get_packed_size(rec);
    if (len > c->cap) {
        uint8_t *b = realloc(c->buf, len);
        if (!b)
            goto oom;
        c->buf = b;
        c->cap = len;
    }
    if (crl__trajectory_record__pack(rec, c->buf) != len) {
        set_err(c->err, c->errlen, "protobuf pack of record seq %" PRIu64 " gave an unexpected size",
                rec->seq);
        return -EIO;
    }
    if (c->n_map == c->cap_map) {
        size_t cap = c->cap_map ? 2 * c->cap_map : 256;
        pos_map_t *m = realloc(c->map, cap * sizeof *m);
        if (!m)
            goto oom;
        c->map = m;
        c->cap_map = cap;
    }
    pos_map_t *m = &c->map[c->n_map];
    m->old_file = r->file_index;
    m->old_off = r->offset;
    int rc = traj_log_append(c->out, c->buf, len);
    if (rc < 0) {
        set_err(c->err, c->errlen, "cannot append to the new log: %s", strerror(-rc));
        return rc;
    }
    /* traj_log_append may rotate first: the record starts at the end of
     * the data after the append minus its own size. */
    traj_log_position(c->out, &m->new_file, &m->new_off);
    m->new_off -= TRAJ_LOG_RECORD_OVERHEAD + len;
    c->n_map++;
    c->st->records++;
    return 0;
oom:
    set_err(c->err, c->errlen, "out of memory");
    return -ENOMEM;
}

int replay_index_cat(const replay_index_t *idx, const replay_filter_t *f, traj_log_t *out,
                     uint64_t *next_seq, replay_cat_stats_t *st, char *err, size_t errlen)
{
    replay_filter_t none;
    if (!f) {
        replay_filter_init(&none);
        f = &none;
    }
    unsigned char *sel = calloc(idx->n_groups ? idx->n_groups : 1, 1);
    if (!sel) {
        set_err(err, errlen, "out of memory");
        return -ENOMEM;
    }
    replay_index_select(idx, f, sel);
    cat_ctx_t c = { .idx = idx, .sel = sel, .filtering = replay_filter_active(f), .out = out,
                    .next_seq = next_seq, .st = st, .err = err, .errlen = errlen };
    int rc = replay_index_scan(idx, cat_visit, &c, err, errlen);
    free(c.map);
    free(c.buf);
    free(sel);
    return rc < 0 ? rc : (rc ? -EIO : 0);
}
