/* weights_client: chunked, windowed weights fetch (see weights_client.h).
 *
 * Bookkeeping: the blob is cut into ranges as requests are made. Each
 * request in flight sits in one of `window` slots (offset, length, when
 * sent). A reply is matched to its slot by offset; a short reply (the
 * broker serves at most its broker.chunk_bytes) pushes the unanswered tail
 * of the range onto a to-do stack. Ranges never overlap, so the sum of the
 * accepted lengths reaching total_bytes means every byte is there. A
 * reply whose slot is gone (a late duplicate after a retry) is ignored. */
#include "weights_client.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crc32c.h"
#include "log.h"

typedef struct {
    uint64_t offset, length;
} range_t;

typedef struct {
    int active;
    uint64_t offset, length;
    uint64_t sent_ms;
} slot_t;

struct weights_fetcher {
    void *dealer;
    char addr[256];
    weights_fetch_opts_t opts;
    wire_limits_t lim;
    wire_counters_t wire;
    weights_fetch_stats_t stats;

    /* the fetch in progress */
    int active;
    uint64_t version, total, got;
    uint32_t crc;
    uint8_t *buf;
    uint64_t cursor;           /* bytes before it have been handed to a request */
    slot_t *slots;             /* (window) */
    range_t *todo;             /* tails of short replies, asked again first */
    size_t n_todo, cap_todo;
    uint64_t begin_ms, last_progress_ms, last_wait_log_ms;
    uint64_t latest_seen;
    char error[512];
};

uint64_t weights_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void weights_fetch_opts_default(weights_fetch_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->window = 4;
    o->chunk_bytes = 1u << 20;
    o->retry_ms = 1000;
    o->timeout_ms = 30000;
}

weights_fetcher_t *weights_fetcher_new(void *dealer, const char *addr,
                                       const weights_fetch_opts_t *opts, const wire_limits_t *lim)
{
    weights_fetcher_t *f = NULL;
    if (!dealer) {
        log_error("weights_fetcher_new: no socket");
        return NULL;
    }
    f = calloc(1, sizeof *f);
    if (!f)
        goto fail;
    f->dealer = dealer;
    snprintf(f->addr, sizeof f->addr, "%s", addr ? addr : "?");
    if (opts)
        f->opts = *opts;
    else
        weights_fetch_opts_default(&f->opts);
    if (f->opts.window < 1 || f->opts.window > 1024 || f->opts.chunk_bytes == 0 ||
        f->opts.retry_ms < 1 || f->opts.timeout_ms < 1) {
        log_error("weights_fetcher_new: bad options (window %d in [1, 1024], chunk_bytes %" PRIu64
                  " > 0, retry_ms %d > 0, timeout_ms %d > 0)",
                  f->opts.window, f->opts.chunk_bytes, f->opts.retry_ms, f->opts.timeout_ms);
        goto fail;
    }
    if (lim)
        f->lim = *lim;
    else
        wire_limits_default(&f->lim);
    f->slots = calloc((size_t)f->opts.window, sizeof *f->slots);
    if (!f->slots)
        goto fail;
    return f;
fail:
    if (f)
        free(f->slots);
    free(f);
    return NULL;
}

void weights_fetcher_destroy(weights_fetcher_t **pf)
{
    if (!pf || !*pf)
        return;
    weights_fetcher_t *f = *pf;
    free(f->slots);
    free(f->todo);
    free(f);
    *pf = NULL;
}

static void end_fetch(weights_fetcher_t *f, int ok)
{
    f->active = 0;
    for (int i = 0; i < f->opts.window; i++)
        f->slots[i].active = 0;
    f->n_todo = 0;
    if (ok)
        f->stats.fetches_done++;
    else
        f->stats.fetches_failed++;
}

static int fail_fetch(weights_fetcher_t *f, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_fetch(weights_fetcher_t *f, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->error, sizeof f->error, fmt, ap);
    va_end(ap);
    end_fetch(f, 0);
    return rc;
}

/* A request whose send would block (the broker not connected yet, or its
 * queue full) is sent again after this long rather than after retry_ms. */
#define WEIGHTS_BLOCKED_RETRY_MS 50

/* Sends the request of slot s (a send that would block still counts as
 * sent: the retry timer covers it, sooner than for a lost request). */
static void send_slot(weights_fetcher_t *f, slot_t *s, uint64_t now_ms)
{
    Crl__Envelope env;
    Crl__WeightsFetch body;
    wire_envelope_init(&env);
    crl__weights_fetch__init(&body);
    body.version = f->version;
    body.offset = s->offset;
    body.length = s->length;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &body;
    int rc = wire_send(f->dealer, NULL, &env, NULL, 0, &f->wire);
    f->stats.requests_sent++;
    s->sent_ms = now_ms;
    /* An actor started before its broker would otherwise wait a whole
     * retry_ms (1 s) for its first weights. */
    if (rc != 0 && f->opts.retry_ms > WEIGHTS_BLOCKED_RETRY_MS &&
        now_ms > (uint64_t)f->opts.retry_ms)
        s->sent_ms = now_ms - (uint64_t)(f->opts.retry_ms - WEIGHTS_BLOCKED_RETRY_MS);
}

/* Fills free slots with the next ranges: tails first, then fresh ones. */
static void fill_window(weights_fetcher_t *f, uint64_t now_ms)
{
    for (int i = 0; i < f->opts.window; i++) {
        slot_t *s = &f->slots[i];
        if (s->active)
            continue;
        if (f->n_todo) {
            range_t r = f->todo[--f->n_todo];
            s->offset = r.offset;
            s->length = r.length;
        } else if (f->cursor < f->total) {
            uint64_t left = f->total - f->cursor;
            s->offset = f->cursor;
            s->length = left < f->opts.chunk_bytes ? left : f->opts.chunk_bytes;
            f->cursor += s->length;
        } else {
            return;
        }
        s->active = 1;
        send_slot(f, s, now_ms);
    }
}

int weights_fetch_begin(weights_fetcher_t *f, uint64_t version, uint64_t total_bytes,
                        uint32_t crc, void *buf)
{
    if (!f || version == 0 || total_bytes == 0 || !buf)
        return -EINVAL;
    if (f->active)
        end_fetch(f, 0);
    f->active = 1;
    f->version = version;
    f->total = total_bytes;
    f->crc = crc;
    f->buf = buf;
    f->got = 0;
    f->cursor = 0;
    f->n_todo = 0;
    f->error[0] = '\0';
    f->latest_seen = 0;
    uint64_t now = weights_now_ms();
    f->begin_ms = f->last_progress_ms = f->last_wait_log_ms = now;
    fill_window(f, now);
    return 0;
}

void weights_fetch_cancel(weights_fetcher_t *f)
{
    if (f && f->active)
        end_fetch(f, 0);
}

static int push_todo(weights_fetcher_t *f, uint64_t offset, uint64_t length)
{
    if (f->n_todo == f->cap_todo) {
        size_t cap = f->cap_todo ? 2 * f->cap_todo : 16;
        range_t *t = realloc(f->todo, cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        f->todo = t;
        f->cap_todo = cap;
    }
    f->todo[f->n_todo].offset = offset;
    f->todo[f->n_todo].length = length;
    f->n_todo++;
    return 0;
}

int weights_fetch_on_message(weights_fetcher_t *f, const Crl__Envelope *env, const zmq_msg_t *raw)
{
    if (!f || !env)
        return -EINVAL;
    if (!f->active || env->body_case != CRL__ENVELOPE__BODY_WEIGHTS_CHUNK) {
        f->stats.ignored++;
        return WEIGHTS_FETCH_BUSY;
    }
    const Crl__WeightsChunk *k = env->weights_chunk;
    if (k->latest_version > f->latest_seen)
        f->latest_seen = k->latest_version;
    if (k->version != f->version) { /* a reply to an abandoned fetch */
        f->stats.ignored++;
        return WEIGHTS_FETCH_BUSY;
    }
    /* Find the request this answers. */
    slot_t *s = NULL;
    for (int i = 0; i < f->opts.window; i++)
        if (f->slots[i].active && f->slots[i].offset == k->offset) {
            s = &f->slots[i];
            break;
        }
    switch (k->status) {
    case CRL__CHUNK_STATUS__CHUNK_STATUS_OK:
        break;
    case CRL__CHUNK_STATUS__CHUNK_STATUS_GONE:
        return fail_fetch(f, -ESTALE,
                          "broker at %s no longer holds version %" PRIu64 " (latest %" PRIu64 ")",
                          f->addr, f->version, k->latest_version);
    case CRL__CHUNK_STATUS__CHUNK_STATUS_BAD_RANGE:
        if (!s) {
            f->stats.ignored++;
            return WEIGHTS_FETCH_BUSY;
        }
        return fail_fetch(f, -ERANGE,
                          "broker at %s refused range [%" PRIu64 ", +%" PRIu64 ") of version %" PRIu64
                          " (its blob: %" PRIu64 " bytes, expected %" PRIu64 ")",
                          f->addr, k->offset, k->length, f->version, k->total_bytes, f->total);
    case CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION:
        /* Not there yet (e.g. a relay still fetching it): the retry timer
         * asks again; timeout_ms bounds the wait. */
        f->stats.not_yet++;
        return WEIGHTS_FETCH_BUSY;
    default:
        f->stats.ignored++;
        return WEIGHTS_FETCH_BUSY;
    }
    if (k->total_bytes != f->total || k->crc32c != f->crc)
        return fail_fetch(f, -EPROTO,
                          "broker at %s serves version %" PRIu64 " as %" PRIu64 " bytes crc32c 0x%08x, "
                          "announced as %" PRIu64 " bytes crc32c 0x%08x",
                          f->addr, f->version, k->total_bytes, k->crc32c, f->total, f->crc);
    if (!s) { /* late duplicate of a retried request */
        f->stats.ignored++;
        return WEIGHTS_FETCH_BUSY;
    }
    size_t n = raw ? zmq_msg_size((zmq_msg_t *)raw) : 0;
    if (k->length == 0 || k->length > s->length || n != k->length)
        return fail_fetch(f, -EPROTO,
                          "broker at %s answered [%" PRIu64 ", +%" PRIu64 ") of version %" PRIu64
                          " with %" PRIu64 " bytes (raw frame %zu)",
                          f->addr, s->offset, s->length, f->version, k->length, n);
    memcpy(f->buf + s->offset, zmq_msg_data((zmq_msg_t *)raw), n);
    f->got += n;
    f->stats.bytes_received += n;
    f->stats.chunks_received++;
    uint64_t now = weights_now_ms();
    f->last_progress_ms = now;
    if (k->length < s->length && push_todo(f, s->offset + k->length, s->length - k->length) < 0)
        return fail_fetch(f, -ENOMEM, "out of memory");
    s->active = 0;
    if (f->got == f->total) {
        uint32_t c = crc32c(f->buf, (size_t)f->total);
        if (c != f->crc)
            return fail_fetch(f, -EBADMSG,
                              "version %" PRIu64 " from broker at %s: crc32c 0x%08x, announced 0x%08x",
                              f->version, f->addr, c, f->crc);
        end_fetch(f, 1);
        return WEIGHTS_FETCH_DONE;
    }
    fill_window(f, now);
    return WEIGHTS_FETCH_BUSY;
}

int weights_fetch_tick(weights_fetcher_t *f, uint64_t now_ms)
{
    if (!f)
        return -EINVAL;
    if (!f->active)
        return WEIGHTS_FETCH_BUSY;
    uint64_t stalled = now_ms > f->last_progress_ms ? now_ms - f->last_progress_ms : 0;
    if (stalled >= (uint64_t)f->opts.timeout_ms)
        return fail_fetch(f, -ETIMEDOUT,
                          "no chunk of version %" PRIu64 " from broker at %s for %" PRIu64
                          " ms (%" PRIu64 " of %" PRIu64 " bytes)",
                          f->version, f->addr, stalled, f->got, f->total);
    if (stalled >= (uint64_t)f->opts.retry_ms &&
        now_ms - f->last_wait_log_ms >= (uint64_t)f->opts.retry_ms) {
        /* Wall-clock time of the last progress, for people reading logs. */
        time_t since = time(NULL) - (time_t)(stalled / 1000u);
        struct tm tm;
        char when[32] = "?";
        if (localtime_r(&since, &tm))
            strftime(when, sizeof when, "%H:%M:%S", &tm);
        log_warn("waiting for broker at %s since %s (version %" PRIu64 ", %" PRIu64 " of %" PRIu64
                 " bytes)",
                 f->addr, when, f->version, f->got, f->total);
        f->last_wait_log_ms = now_ms;
    }
    for (int i = 0; i < f->opts.window; i++) {
        slot_t *s = &f->slots[i];
        if (s->active && now_ms - s->sent_ms >= (uint64_t)f->opts.retry_ms) {
            f->stats.retries++;
            send_slot(f, s, now_ms);
        }
    }
    fill_window(f, now_ms);
    return WEIGHTS_FETCH_BUSY;
}

int weights_fetch_poll(weights_fetcher_t *f, int timeout_ms)
{
    if (!f)
        return -EINVAL;
    uint64_t now = weights_now_ms();
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now + (uint64_t)timeout_ms;
    uint64_t last_tick = now;
    for (;;) {
        /* Never sleep past a retry period without ticking. */
        uint64_t wait = deadline > now ? deadline - now : 0;
        if (wait > (uint64_t)f->opts.retry_ms)
            wait = (uint64_t)f->opts.retry_ms;
        Crl__Envelope *env = NULL;
        zmq_msg_t raw;
        char err[512];
        int rc = wire_recv(f->dealer, 0, (int)wait, &f->lim, &f->wire, NULL, &env, &raw, err,
                           sizeof err);
        if (rc == 1) {
            int r = weights_fetch_on_message(f, env, &raw);
            wire_envelope_free(&env);
            zmq_msg_close(&raw);
            if (r != WEIGHTS_FETCH_BUSY)
                return r;
        } else {
            zmq_msg_close(&raw);
            if (rc < 0 && rc != -EPROTO) /* -EPROTO: dropped and counted */
                return rc;
        }
        now = weights_now_ms();
        if (rc == 0 || now - last_tick >= (uint64_t)f->opts.retry_ms / 2) {
            int r = weights_fetch_tick(f, now);
            if (r != WEIGHTS_FETCH_BUSY)
                return r;
            last_tick = now;
        }
        if (rc == 0 && now >= deadline)
            return WEIGHTS_FETCH_BUSY;
    }
}

int weights_fetch_blocking(weights_fetcher_t *f, uint64_t version, uint64_t total_bytes,
                           uint32_t crc, void *buf)
{
    int rc = weights_fetch_begin(f, version, total_bytes, crc, buf);
    if (rc < 0)
        return rc;
    while (f->active) {
        int wait = f->opts.retry_ms < 100 ? f->opts.retry_ms : 100;
        rc = weights_fetch_poll(f, wait);
        if (rc == WEIGHTS_FETCH_DONE)
            return 0;
        if (rc < 0)
            return rc;
    }
    return f->error[0] ? -EIO : 0;
}

int weights_fetch_active(const weights_fetcher_t *f)
{
    return f && f->active;
}

uint64_t weights_fetch_version(const weights_fetcher_t *f)
{
    return f ? f->version : 0;
}

uint64_t weights_fetch_progress(const weights_fetcher_t *f)
{
    return f ? f->got : 0;
}

uint64_t weights_fetch_latest_version(const weights_fetcher_t *f)
{
    return f ? f->latest_seen : 0;
}

const char *weights_fetch_error(const weights_fetcher_t *f)
{
    return f ? f->error : "";
}

void weights_fetch_get_stats(const weights_fetcher_t *f, weights_fetch_stats_t *s)
{
    if (f && s)
        *s = f->stats;
}

const wire_counters_t *weights_fetch_wire_counters(const weights_fetcher_t *f)
{
    return f ? &f->wire : NULL;
}
