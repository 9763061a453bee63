/* broker: weights store, announcer and chunk server (see broker.h).
 *
 * One thread runs everything (broker_run): a zmq_poll loop over the
 * publish ROUTER, the fetch ROUTER and, in relay mode, the upstream SUB and
 * DEALER. No call in the loop blocks: replies are sent with ZMQ_DONTWAIT
 * and a peer whose queue is full (ZMQ_SNDHWM) loses that reply (counted);
 * its fetcher asks again after its retry period. Weights versions are
 * immutable once stored, so every reply is a plain copy of a slice. */
#include "broker.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "crc32c.h"
#include "log.h"
#include "weights_client.h"
#include "security.h"
#include "wire.h"

/* Fetch requests and announces are tiny: cap their frames hard. */
#define BROKER_SMALL_MSG_BYTES 65536
/* Replies queued per fetch peer before further ones are dropped. Bounds the
 * memory a greedy or stuck peer can pin at SNDHWM x chunk_bytes. */
#define BROKER_FETCH_SNDHWM 64
/* Messages taken from one socket per loop turn, so that one busy socket
 * cannot starve the others (or the re-announce timer). */
#define BROKER_DRAIN_MAX 256
/* Relay: wait this long after a failed upstream fetch before the next. */
#define BROKER_RELAY_RETRY_MS 500
#define BROKER_LAYOUT_LEN 256

typedef struct {
    int used;
    uint64_t version, total;
    uint32_t crc;
    char layout[BROKER_LAYOUT_LEN];
    zmq_msg_t msg;      /* the publish's raw frame, kept without a copy */
    int has_msg;
    uint8_t *heap;      /* or a buffer filled from upstream */
    const uint8_t *data;
} version_slot_t;

/* Counters, written by the broker thread and read by any thread. */
typedef struct {
    _Atomic uint64_t bytes_served, chunks_served, chunks_dropped, fetch_requests, replies_gone,
        replies_bad_range, replies_unknown, publishes_ok, publishes_refused, versions_received,
        upstream_bytes, upstream_failures, announces_sent, malformed, latest_version;
} atomic_counters_t;

#define INC(b, field, n) atomic_fetch_add_explicit(&(b)->cnt.field, (uint64_t)(n), memory_order_relaxed)

struct broker {
    crl_config_t cfg;
    void *ctx;
    security_t *sec; /* CurveZMQ keys + ZAP handler; plain mode without keys */
    void *publish, *announce, *fetch;    /* bound sockets (publish NULL in relay mode) */
    void *up_sub, *up_dealer;            /* relay mode only */
    char ep[3][CONFIG_ADDR_LEN];
    int relay;
    atomic_int stop;
    atomic_int reload; /* set by broker_request_reload (SIGHUP) */
    atomic_counters_t cnt;

    wire_limits_t lim;
    wire_counters_t wc_publish, wc_fetch, wc_sub;

    version_slot_t *slots; /* (keep_versions) */
    int n_slots;
    uint64_t next_announce_ms;

    /* relay */
    weights_fetcher_t *fetcher;
    struct {
        int valid;
        uint64_t version, total;
        uint32_t crc;
        char layout[BROKER_LAYOUT_LEN];
    } want, fetching; /* last upstream announce; the fetch in progress */
    uint8_t *fetch_buf;
    uint64_t fetch_start_ms, relay_retry_ms;
    uint64_t upstream_drops_seen;
};

/* ------------------------------------------------------------ helpers */

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void *make_socket(broker_t *b, int type, int64_t max_msg, const char *key, char *err,
                         size_t errlen)
{
    void *s = zmq_socket(b->ctx, type);
    if (!s) {
        set_err(err, errlen, "zmq_socket for %s: %s", key, zmq_strerror(errno));
        return NULL;
    }
    if (wire_socket_setup(s, max_msg) < 0) {
        set_err(err, errlen, "setting up the socket for %s failed (see log)", key);
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* what: the ZAP domain and the name in refusal logs ("publish", ...). */
static int bind_socket(broker_t *b, void *s, const char *key, const char *what, const char *ep,
                       char *bound, char *err, size_t errlen)
{
    char serr[512];
    if (security_bind(b->sec, s, what, ep, serr, sizeof serr) != 0) {
        set_err(err, errlen, "cannot bind %s (%s): %s", key, ep, serr);
        return -1;
    }
    size_t n = CONFIG_ADDR_LEN;
    if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, bound, &n) != 0)
        snprintf(bound, CONFIG_ADDR_LEN, "%s", ep);
    bound[CONFIG_ADDR_LEN - 1] = '\0';
    return 0;
}

static void close_socket(void **s)
{
    if (*s)
        zmq_close(*s);
    *s = NULL;
}

static void slot_free(version_slot_t *s)
{
    if (!s->used)
        return;
    if (s->has_msg)
        zmq_msg_close(&s->msg);
    free(s->heap);
    memset(s, 0, sizeof *s);
}

static version_slot_t *find_version(broker_t *b, uint64_t v)
{
    for (int i = 0; i < b->n_slots; i++)
        if (b->slots[i].used && b->slots[i].version == v)
            return &b->slots[i];
    return NULL;
}

static version_slot_t *latest_slot(broker_t *b)
{
    version_slot_t *best = NULL;
    for (int i = 0; i < b->n_slots; i++)
        if (b->slots[i].used && (!best || b->slots[i].version > best->version))
            best = &b->slots[i];
    return best;
}

/* "crl-f32-params-v1 n=<n>" promises total = 4 n; other layouts are opaque
 * to the broker. 0 or -1 with why. */
static int check_layout(const char *layout, uint64_t total, char *why, size_t whylen)
{
    static const char prefix[] = "crl-f32-params-v1 n=";
    if (strncmp(layout, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *p = layout + sizeof prefix - 1;
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(p, &end, 10);
    if (errno || end == p || (*end != '\0' && *end != ' ' && *end != ';')) {
        snprintf(why, whylen, "layout \"%s\": cannot read n", layout);
        return -1;
    }
    if (n > UINT64_MAX / 4 || (uint64_t)n * 4 != total) {
        snprintf(why, whylen, "layout \"%s\" means %llu float32 = %llu bytes, but total_bytes is %" PRIu64,
                 layout, n, n * 4ull, total);
        return -1;
    }
    return 0;
}

/* ----------------------------------------------------------- announce */

static void announce(broker_t *b, const version_slot_t *s, uint64_t now)
{
    Crl__Envelope env;
    Crl__WeightsAnnounce a;
    wire_envelope_init(&env);
    crl__weights_announce__init(&a);
    a.version = s->version;
    a.total_bytes = s->total;
    a.crc32c = s->crc;
    a.layout = (char *)s->layout;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
    env.weights_announce = &a;
    /* PUB never blocks: a subscriber that is too slow misses this one and
     * hears the next re-announce. */
    if (wire_send(b->announce, NULL, &env, NULL, 0, NULL) == 0)
        INC(b, announces_sent, 1);
    b->next_announce_ms = now + BROKER_REANNOUNCE_MS;
}

/* -------------------------------------------------------------- store */

/* Takes a new version: exactly one of msg (moved from when stored; the
 * caller still closes it) or heap (ownership taken) holds its bytes. A version already held with the same bytes is a
 * repeat (ok, nothing changes). A version not newer than the latest means
 * the source rewound (learner resumed from an older checkpoint): the
 * versions at or after it are dropped, since they belong to a history
 * that no longer exists. Announces the new version at once. */
static void store_version(broker_t *b, uint64_t version, uint64_t total, uint32_t crc,
                          const char *layout, zmq_msg_t *msg, uint8_t *heap, const char *source,
                          uint64_t now)
{
    /* The rewind check comes first: a resumed learner re-publishes its
     * checkpoint's version, which may still be held here with the same
     * bytes, and the versions after it must go all the same (announcing
     * them would keep actors on an abandoned history). */
    version_slot_t *latest = latest_slot(b);
    if (latest && version < latest->version) {
        log_warn("version %" PRIu64 " from %s is older than the latest held (%" PRIu64
                 "): the source rewound; dropping versions > %" PRIu64,
                 version, source, latest->version, version);
        for (int i = 0; i < b->n_slots; i++)
            if (b->slots[i].used && b->slots[i].version > version)
                slot_free(&b->slots[i]);
    }
    version_slot_t *held = find_version(b, version);
    if (held && held->total == total && held->crc == crc) {
        log_info("version %" PRIu64 " from %s: already held (same %" PRIu64 " bytes, crc32c 0x%08x)",
                 version, source, total, crc);
        free(heap); /* msg stays with the caller, who closes it */
        atomic_store_explicit(&b->cnt.latest_version, latest_slot(b)->version, memory_order_relaxed);
        announce(b, latest_slot(b), now);
        return;
    }
    if (held) {
        log_warn("version %" PRIu64 " from %s differs from the one held (crc32c 0x%08x, held 0x%08x): "
                 "the source rewound; replacing it", version, source, crc, held->crc);
        slot_free(held);
    }
    version_slot_t *s = NULL;
    for (int i = 0; i < b->n_slots && !s; i++)
        if (!b->slots[i].used)
            s = &b->slots[i];
    if (!s) { /* evict the oldest */
        for (int i = 0; i < b->n_slots; i++)
            if (!s || b->slots[i].version < s->version)
                s = &b->slots[i];
        log_info("evicting version %" PRIu64, s->version);
        slot_free(s);
    }
    s->used = 1;
    s->version = version;
    s->total = total;
    s->crc = crc;
    snprintf(s->layout, sizeof s->layout, "%s", layout ? layout : "");
    if (msg) {
        zmq_msg_init(&s->msg);
        zmq_msg_move(&s->msg, msg);
        s->has_msg = 1;
        s->data = zmq_msg_data(&s->msg);
    } else {
        s->heap = heap;
        s->data = heap;
    }
    INC(b, versions_received, 1);
    atomic_store_explicit(&b->cnt.latest_version, latest_slot(b)->version, memory_order_relaxed);
    log_info("version %" PRIu64 ": %" PRIu64 " bytes (%.1f MiB), crc32c 0x%08x, from %s", version,
             total, (double)total / (1 << 20), crc, source);
    announce(b, latest_slot(b), now);
}

/* ------------------------------------------------------------ publish */

static void send_publish_ack(broker_t *b, const wire_identity_t *to, uint64_t version, int ok,
                             const char *error)
{
    Crl__Envelope env;
    Crl__PublishAck a;
    wire_envelope_init(&env);
    crl__publish_ack__init(&a);
    a.version = version;
    a.ok = ok;
    char msg[WIRE_MAX_TEXT_LEN];
    snprintf(msg, sizeof msg, "%s", error ? error : ""); /* keep it within the wire's text cap */
    a.error = msg;
    env.body_case = CRL__ENVELOPE__BODY_PUBLISH_ACK;
    env.publish_ack = &a;
    (void)wire_send(b->publish, to, &env, NULL, 0, &b->wc_publish);
}

static void refuse_publish(broker_t *b, const wire_identity_t *from, uint64_t version,
                           const char *why)
{
    char who[600];
    INC(b, publishes_refused, 1);
    log_warn("refused publish of version %" PRIu64 " from %s: %s", version,
             wire_identity_format(from, who, sizeof who), why);
    send_publish_ack(b, from, version, 0, why);
}

static int handle_publish(broker_t *b)
{
    wire_identity_t from;
    Crl__Envelope *env = NULL;
    zmq_msg_t raw;
    char err[1024];
    int rc = wire_recv(b->publish, 1, 0, &b->lim, &b->wc_publish, &from, &env, &raw, err, sizeof err);
    if (rc == -EPROTO) {
        /* The learner waits for an ack: tell it why (wire_recv logged it). */
        INC(b, malformed, 1);
        char why[1100];
        snprintf(why, sizeof why, "malformed message: %s", err);
        if (from.len)
            send_publish_ack(b, &from, 0, 0, why);
        zmq_msg_close(&raw);
        return 1;
    }
    if (rc <= 0) {
        zmq_msg_close(&raw);
        return rc;
    }
    uint64_t now = weights_now_ms();
    if (env->body_case != CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH) {
        char who[600], why[256];
        INC(b, malformed, 1);
        log_warn("unexpected %s from %s on the publish socket: dropped", wire_body_name(env),
                 wire_identity_format(&from, who, sizeof who));
        snprintf(why, sizeof why, "unexpected %s on the publish socket", wire_body_name(env));
        send_publish_ack(b, &from, 0, 0, why);
        goto out;
    }
    const Crl__WeightsPublish *p = env->weights_publish;
    /* wire_recv checked that the raw frame has total_bytes bytes. */
    uint32_t crc = crc32c(zmq_msg_data(&raw), zmq_msg_size(&raw));
    double secs = (double)(weights_now_ms() - now) / 1e3;
    char why[512];
    if (crc != p->crc32c) {
        snprintf(why, sizeof why, "crc32c mismatch: the %" PRIu64 " bytes have crc32c 0x%08x, the message says 0x%08x",
                 p->total_bytes, crc, p->crc32c);
        refuse_publish(b, &from, p->version, why);
        goto out;
    }
    if (check_layout(p->layout, p->total_bytes, why, sizeof why) < 0) {
        refuse_publish(b, &from, p->version, why);
        goto out;
    }
    char source[700], who[600];
    snprintf(source, sizeof source, "publisher %s (learner step %" PRIu64 "; crc checked in %.1f ms)",
             wire_identity_format(&from, who, sizeof who), p->learner_step, secs * 1e3);
    store_version(b, p->version, p->total_bytes, p->crc32c, p->layout, &raw, NULL, source, now);
    INC(b, publishes_ok, 1);
    send_publish_ack(b, &from, p->version, 1, "");
out:
    wire_envelope_free(&env);
    zmq_msg_close(&raw);
    return 1;
}

/* -------------------------------------------------------------- fetch */

static void send_chunk(broker_t *b, const wire_identity_t *to, const Crl__WeightsFetch *f,
                       Crl__ChunkStatus status, const version_slot_t *s, uint64_t len)
{
    Crl__Envelope env;
    Crl__WeightsChunk k;
    wire_envelope_init(&env);
    crl__weights_chunk__init(&k);
    const version_slot_t *latest = latest_slot(b);
    k.version = f->version;
    k.offset = f->offset;
    k.length = status == CRL__CHUNK_STATUS__CHUNK_STATUS_OK ? len : f->length;
    k.status = status;
    k.latest_version = latest ? latest->version : 0;
    if (s) {
        k.total_bytes = s->total;
        k.crc32c = s->crc;
    }
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_CHUNK;
    env.weights_chunk = &k;
    const void *raw = status == CRL__CHUNK_STATUS__CHUNK_STATUS_OK ? s->data + f->offset : NULL;
    int rc = wire_send(b->fetch, to, &env, raw, status == CRL__CHUNK_STATUS__CHUNK_STATUS_OK ? len : 0,
                       &b->wc_fetch);
    if (rc < 0) {
        INC(b, chunks_dropped, 1); /* full or gone: it will ask again */
        return;
    }
    if (status == CRL__CHUNK_STATUS__CHUNK_STATUS_OK) {
        INC(b, chunks_served, 1);
        INC(b, bytes_served, len);
    }
}

static int handle_fetch(broker_t *b)
{
    wire_identity_t from;
    Crl__Envelope *env = NULL;
    char err[1024];
    int rc = wire_recv(b->fetch, 1, 0, &b->lim, &b->wc_fetch, &from, &env, NULL, err, sizeof err);
    if (rc == -EPROTO) {
        INC(b, malformed, 1);
        return 1;
    }
    if (rc <= 0)
        return rc;
    if (env->body_case != CRL__ENVELOPE__BODY_WEIGHTS_FETCH) {
        char who[600];
        INC(b, malformed, 1);
        log_warn("unexpected %s from %s on the fetch socket: dropped", wire_body_name(env),
                 wire_identity_format(&from, who, sizeof who));
        wire_envelope_free(&env);
        return 1;
    }
    const Crl__WeightsFetch *f = env->weights_fetch;
    INC(b, fetch_requests, 1);
    version_slot_t *s = find_version(b, f->version);
    if (s) {
        /* wire_validate ruled out offset + length overflowing. */
        if (f->offset >= s->total || f->length > s->total - f->offset) {
            INC(b, replies_bad_range, 1);
            send_chunk(b, &from, f, CRL__CHUNK_STATUS__CHUNK_STATUS_BAD_RANGE, s, 0);
        } else {
            uint64_t len = f->length;
            if (len > (uint64_t)b->cfg.broker.chunk_bytes)
                len = (uint64_t)b->cfg.broker.chunk_bytes;
            send_chunk(b, &from, f, CRL__CHUNK_STATUS__CHUNK_STATUS_OK, s, len);
        }
    } else {
        const version_slot_t *latest = latest_slot(b);
        if (latest && f->version < latest->version) {
            INC(b, replies_gone, 1);
            send_chunk(b, &from, f, CRL__CHUNK_STATUS__CHUNK_STATUS_GONE, NULL, 0);
        } else { /* newer than anything here: not yet */
            INC(b, replies_unknown, 1);
            send_chunk(b, &from, f, CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION, NULL, 0);
        }
    }
    wire_envelope_free(&env);
    return 1;
}

/* -------------------------------------------------------------- relay */

static int handle_upstream_announce(broker_t *b)
{
    Crl__Envelope *env = NULL;
    char err[1024];
    int rc = wire_recv(b->up_sub, 0, 0, &b->lim, &b->wc_sub, NULL, &env, NULL, err, sizeof err);
    if (rc == -EPROTO) {
        INC(b, malformed, 1);
        return 1;
    }
    if (rc <= 0)
        return rc;
    if (env->body_case != CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE) {
        INC(b, malformed, 1);
        log_warn("unexpected %s from upstream announce %s: dropped", wire_body_name(env),
                 b->cfg.broker.upstream_announce);
    } else {
        const Crl__WeightsAnnounce *a = env->weights_announce;
        if (!b->want.valid || b->want.version != a->version || b->want.crc != a->crc32c ||
            b->want.total != a->total_bytes) {
            b->want.valid = 1;
            b->want.version = a->version;
            b->want.total = a->total_bytes;
            b->want.crc = a->crc32c;
            snprintf(b->want.layout, sizeof b->want.layout, "%s", a->layout);
        }
    }
    wire_envelope_free(&env);
    return 1;
}

static void relay_fetch_ended(broker_t *b, int rc, uint64_t now)
{
    weights_fetch_stats_t st;
    weights_fetch_get_stats(b->fetcher, &st);
    atomic_store_explicit(&b->cnt.upstream_bytes, st.bytes_received, memory_order_relaxed);
    if (rc == WEIGHTS_FETCH_DONE) {
        char source[CONFIG_ADDR_LEN + 64];
        snprintf(source, sizeof source, "upstream %s, received in %.1f ms", b->cfg.broker.upstream,
                 (double)(now - b->fetch_start_ms));
        uint8_t *buf = b->fetch_buf;
        b->fetch_buf = NULL;
        store_version(b, b->fetching.version, b->fetching.total, b->fetching.crc, b->fetching.layout,
                      NULL, buf, source, now);
    } else {
        INC(b, upstream_failures, 1);
        log_warn("fetching version %" PRIu64 " from upstream %s failed: %s", b->fetching.version,
                 b->cfg.broker.upstream, weights_fetch_error(b->fetcher));
        free(b->fetch_buf);
        b->fetch_buf = NULL;
        b->relay_retry_ms = now + BROKER_RELAY_RETRY_MS;
        /* GONE: the announce we hold is stale; wait for the next one. */
        if (rc == -ESTALE && b->want.version <= b->fetching.version)
            b->want.valid = 0;
    }
    b->fetching.valid = 0;
}

/* Messages the fetcher's wire_recv dropped on the upstream DEALER count
 * as malformed too. */
static void count_upstream_drops(broker_t *b)
{
    const wire_counters_t *w = weights_fetch_wire_counters(b->fetcher);
    uint64_t drops = w->malformed + w->bad_version + w->invalid + w->oversized;
    if (drops > b->upstream_drops_seen) {
        INC(b, malformed, drops - b->upstream_drops_seen);
        b->upstream_drops_seen = drops;
    }
}

/* Starts fetching the last announced version when we lack it. */
static void relay_maybe_begin(broker_t *b, uint64_t now)
{
    if (!b->want.valid || weights_fetch_active(b->fetcher) || now < b->relay_retry_ms)
        return;
    version_slot_t *held = find_version(b, b->want.version);
    if (held && held->crc == b->want.crc && held->total == b->want.total)
        return;
    if (b->want.total > SIZE_MAX) {
        b->want.valid = 0;
        return;
    }
    b->fetch_buf = malloc((size_t)b->want.total);
    if (!b->fetch_buf) {
        log_error("relay: out of memory for version %" PRIu64 " (%" PRIu64 " bytes)", b->want.version,
                  b->want.total);
        b->relay_retry_ms = now + BROKER_RELAY_RETRY_MS;
        return;
    }
    b->fetching.valid = 1;
    b->fetching.version = b->want.version;
    b->fetching.total = b->want.total;
    b->fetching.crc = b->want.crc;
    memcpy(b->fetching.layout, b->want.layout, sizeof b->fetching.layout);
    b->fetch_start_ms = now;
    log_info("relay: fetching version %" PRIu64 " (%" PRIu64 " bytes) from upstream %s",
             b->want.version, b->want.total, b->cfg.broker.upstream);
    if (weights_fetch_begin(b->fetcher, b->want.version, b->want.total, b->want.crc, b->fetch_buf) < 0) {
        free(b->fetch_buf);
        b->fetch_buf = NULL;
        b->fetching.valid = 0;
        b->relay_retry_ms = now + BROKER_RELAY_RETRY_MS;
    }
}

/* ----------------------------------------------------------- lifecycle */

broker_t *broker_new(const crl_config_t *cfg, char *err, size_t errlen)
{
    broker_t *b = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!cfg) {
        set_err(err, errlen, "broker_new: no config");
        return NULL;
    }
    b = calloc(1, sizeof *b);
    if (!b) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    b->cfg = *cfg;
    atomic_init(&b->stop, 0);
    wire_limits_default(&b->lim);
    b->lim.max_chunk_bytes = 0; /* requests may ask any length; we serve <= chunk_bytes */
    b->relay = cfg->broker.upstream[0] != '\0';
    if (b->relay && cfg->broker.upstream_announce[0] == '\0') {
        set_err(err, errlen, "broker.upstream is set (%s) but broker.upstream_announce is empty",
                cfg->broker.upstream);
        goto fail;
    }
    if (cfg->broker.keep_versions < 1 || cfg->broker.chunk_bytes < 1) {
        set_err(err, errlen, "broker.keep_versions (%d) and broker.chunk_bytes (%d) must be >= 1",
                cfg->broker.keep_versions, cfg->broker.chunk_bytes);
        goto fail;
    }
    b->n_slots = cfg->broker.keep_versions;
    b->slots = calloc((size_t)b->n_slots, sizeof *b->slots);
    if (!b->slots) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    b->ctx = zmq_ctx_new();
    if (!b->ctx) {
        set_err(err, errlen, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto fail;
    }
    b->sec = security_new(cfg, b->ctx, err, errlen);
    if (!b->sec)
        goto fail;
    int64_t big = cfg->network.max_msg_bytes;
    if (!b->relay) {
        b->publish = make_socket(b, ZMQ_ROUTER, big, "network.broker_publish", err, errlen);
        if (!b->publish ||
            bind_socket(b, b->publish, "network.broker_publish", "publish", cfg->network.broker_publish,
                        b->ep[BROKER_EP_PUBLISH], err, errlen) < 0)
            goto fail;
    }
    b->announce = make_socket(b, ZMQ_PUB, BROKER_SMALL_MSG_BYTES, "network.broker_announce", err, errlen);
    if (!b->announce ||
        bind_socket(b, b->announce, "network.broker_announce", "announce", cfg->network.broker_announce,
                    b->ep[BROKER_EP_ANNOUNCE], err, errlen) < 0)
        goto fail;
    b->fetch = make_socket(b, ZMQ_ROUTER, BROKER_SMALL_MSG_BYTES, "network.broker_fetch", err, errlen);
    if (!b->fetch)
        goto fail;
    int hwm = BROKER_FETCH_SNDHWM;
    if (zmq_setsockopt(b->fetch, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0) {
        set_err(err, errlen, "zmq_setsockopt(ZMQ_SNDHWM) on network.broker_fetch: %s", zmq_strerror(errno));
        goto fail;
    }
    if (bind_socket(b, b->fetch, "network.broker_fetch", "fetch", cfg->network.broker_fetch, b->ep[BROKER_EP_FETCH],
                    err, errlen) < 0)
        goto fail;
    if (b->relay) {
        b->up_sub = make_socket(b, ZMQ_SUB, BROKER_SMALL_MSG_BYTES, "broker.upstream_announce", err, errlen);
        if (!b->up_sub)
            goto fail;
        if (zmq_setsockopt(b->up_sub, ZMQ_SUBSCRIBE, "", 0) != 0) {
            set_err(err, errlen, "zmq_setsockopt(ZMQ_SUBSCRIBE): %s", zmq_strerror(errno));
            goto fail;
        }
        char serr[512];
        if (security_connect(b->sec, b->up_sub, cfg->broker.upstream_announce, serr, sizeof serr) != 0) {
            set_err(err, errlen, "cannot connect broker.upstream_announce (%s): %s",
                    cfg->broker.upstream_announce, serr);
            goto fail;
        }
        int64_t chunk_max = (int64_t)cfg->broker.chunk_bytes + BROKER_SMALL_MSG_BYTES;
        if (chunk_max < big)
            chunk_max = big;
        b->up_dealer = make_socket(b, ZMQ_DEALER, chunk_max, "broker.upstream", err, errlen);
        if (!b->up_dealer)
            goto fail;
        if (security_connect(b->sec, b->up_dealer, cfg->broker.upstream, serr, sizeof serr) != 0) {
            set_err(err, errlen, "cannot connect broker.upstream (%s): %s", cfg->broker.upstream, serr);
            goto fail;
        }
        weights_fetch_opts_t fo;
        weights_fetch_opts_default(&fo);
        fo.chunk_bytes = (uint64_t)cfg->broker.chunk_bytes;
        b->fetcher = weights_fetcher_new(b->up_dealer, cfg->broker.upstream, &fo, NULL);
        if (!b->fetcher) {
            set_err(err, errlen, "cannot create the upstream fetcher (see log)");
            goto fail;
        }
    }
    return b;
fail:
    broker_destroy(&b);
    return NULL;
}

void broker_stop(broker_t *b)
{
    if (b)
        atomic_store(&b->stop, 1);
}

void broker_request_reload(broker_t *b)
{
    if (b)
        atomic_store(&b->reload, 1);
}

int broker_run(broker_t *b)
{
    if (!b)
        return -EINVAL;
    int rc = 0;
    if (b->relay)
        log_info("relay broker: upstream fetch %s, announce %s; serving announce %s, fetch %s "
                 "(keep %d versions, chunks of %d bytes)",
                 b->cfg.broker.upstream, b->cfg.broker.upstream_announce, b->ep[BROKER_EP_ANNOUNCE],
                 b->ep[BROKER_EP_FETCH], b->n_slots, b->cfg.broker.chunk_bytes);
    else
        log_info("broker: publish %s, announce %s, fetch %s (keep %d versions, chunks of %d bytes)",
                 b->ep[BROKER_EP_PUBLISH], b->ep[BROKER_EP_ANNOUNCE], b->ep[BROKER_EP_FETCH], b->n_slots,
                 b->cfg.broker.chunk_bytes);
    b->next_announce_ms = weights_now_ms() + BROKER_REANNOUNCE_MS;
    while (!atomic_load(&b->stop)) {
        if (atomic_exchange(&b->reload, 0)) {
            int nk = security_reload_clients(b->sec);
            if (nk < 0)
                log_error("reloading the allowed client keys failed; the previous list stays");
            else
                log_info("reloaded the allowed client keys: %d listed", nk);
        }
        zmq_pollitem_t items[4];
        int (*handler[4])(broker_t *);
        int n = 0;
        if (b->publish) {
            items[n] = (zmq_pollitem_t){.socket = b->publish, .events = ZMQ_POLLIN};
            handler[n++] = handle_publish;
        }
        items[n] = (zmq_pollitem_t){.socket = b->fetch, .events = ZMQ_POLLIN};
        handler[n++] = handle_fetch;
        int i_dealer = -1;
        if (b->relay) {
            items[n] = (zmq_pollitem_t){.socket = b->up_sub, .events = ZMQ_POLLIN};
            handler[n++] = handle_upstream_announce;
            i_dealer = n;
            items[n] = (zmq_pollitem_t){.socket = b->up_dealer, .events = ZMQ_POLLIN};
            handler[n++] = NULL; /* the fetcher reads it */
        }
        uint64_t now = weights_now_ms();
        long wait = b->next_announce_ms > now ? (long)(b->next_announce_ms - now) : 0;
        if (wait > 100) /* notice broker_stop promptly */
            wait = 100;
        int np = zmq_poll(items, n, wait);
        if (np < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            log_error("broker: zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        for (int i = 0; i < n && np > 0; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            if (i == i_dealer) {
                int r = weights_fetch_poll(b->fetcher, 0);
                count_upstream_drops(b);
                /* Only an ended fetch releases its buffer (a ZeroMQ error
                 * leaves it running). */
                if (b->fetching.valid && !weights_fetch_active(b->fetcher))
                    relay_fetch_ended(b, r, weights_now_ms());
                else if (r == -ETERM) {
                    rc = r;
                    goto out;
                }
                continue;
            }
            for (int k = 0; k < BROKER_DRAIN_MAX; k++) {
                int r = handler[i](b);
                if (r == 0)
                    break;
                if (r < 0 && r != -EAGAIN) {
                    if (r == -ETERM) {
                        rc = r;
                        goto out;
                    }
                    break;
                }
            }
        }
        now = weights_now_ms();
        if (b->relay) {
            if (b->fetching.valid) {
                int r = weights_fetch_tick(b->fetcher, now);
                if (!weights_fetch_active(b->fetcher))
                    relay_fetch_ended(b, r, now);
                else {
                    weights_fetch_stats_t st;
                    weights_fetch_get_stats(b->fetcher, &st);
                    atomic_store_explicit(&b->cnt.upstream_bytes, st.bytes_received,
                                          memory_order_relaxed);
                }
            }
            relay_maybe_begin(b, now);
        }
        if (now >= b->next_announce_ms) {
            version_slot_t *latest = latest_slot(b);
            if (latest)
                announce(b, latest, now);
            else
                b->next_announce_ms = now + BROKER_REANNOUNCE_MS;
        }
    }
out:;
    broker_counters_t c;
    char line[1024];
    broker_get_counters(b, &c);
    log_info("broker stopped: %s", broker_counters_format(&c, line, sizeof line));
    return rc;
}

void broker_destroy(broker_t **pb)
{
    if (!pb || !*pb)
        return;
    broker_t *b = *pb;
    weights_fetcher_destroy(&b->fetcher);
    close_socket(&b->publish);
    close_socket(&b->announce);
    close_socket(&b->fetch);
    close_socket(&b->up_sub);
    close_socket(&b->up_dealer);
    /* After the server sockets are closed: a CURVE server socket without its
     * ZAP handler would admit every client. */
    security_destroy(&b->sec);
    if (b->ctx)
        zmq_ctx_term(b->ctx);
    for (int i = 0; b->slots && i < b->n_slots; i++)
        slot_free(&b->slots[i]);
    free(b->slots);
    free(b->fetch_buf);
    free(b);
    *pb = NULL;
}

int broker_get_endpoint(const broker_t *b, broker_endpoint_t which, char *buf, size_t len)
{
    if (!b || (int)which < 0 || which > BROKER_EP_FETCH || !buf || !len)
        return -EINVAL;
    if (b->ep[which][0] == '\0')
        return -ENOENT;
    if (strlen(b->ep[which]) >= len)
        return -ENOSPC;
    strcpy(buf, b->ep[which]);
    return 0;
}

void broker_get_counters(const broker_t *b, broker_counters_t *c)
{
    if (!b || !c)
        return;
#define LD(f) c->f = atomic_load_explicit(&((broker_t *)b)->cnt.f, memory_order_relaxed)
    LD(bytes_served);
    LD(chunks_served);
    LD(chunks_dropped);
    LD(fetch_requests);
    LD(replies_gone);
    LD(replies_bad_range);
    LD(replies_unknown);
    LD(publishes_ok);
    LD(publishes_refused);
    LD(versions_received);
    LD(upstream_bytes);
    LD(upstream_failures);
    LD(announces_sent);
    LD(malformed);
    LD(latest_version);
#undef LD
}

const char *broker_counters_format(const broker_counters_t *c, char *buf, size_t len)
{
    snprintf(buf, len,
             "latest_version=%" PRIu64 " versions_received=%" PRIu64 " publishes_ok=%" PRIu64
             " publishes_refused=%" PRIu64 " fetch_requests=%" PRIu64 " chunks_served=%" PRIu64
             " bytes_served=%" PRIu64 " chunks_dropped=%" PRIu64 " gone=%" PRIu64 " bad_range=%" PRIu64
             " unknown_version=%" PRIu64 " upstream_bytes=%" PRIu64 " upstream_failures=%" PRIu64
             " announces=%" PRIu64 " malformed=%" PRIu64,
             c->latest_version, c->versions_received, c->publishes_ok, c->publishes_refused,
             c->fetch_requests, c->chunks_served, c->bytes_served, c->chunks_dropped, c->replies_gone,
             c->replies_bad_range, c->replies_unknown, c->upstream_bytes, c->upstream_failures,
             c->announces_sent, c->malformed);
    return buf;
}
