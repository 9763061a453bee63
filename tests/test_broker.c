/* Tests of common/broker and common/weights_client: an in-process broker
 * in a thread on tcp://127.0.0.1 wildcard ports, driven by real DEALER /
 * SUB sockets. Timeouts below are generous (the machine is shared); each
 * test still finishes in well under a few seconds when healthy. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "broker.h"
#include "config.h"
#include "crc32c.h"
#include "rng.h"
#include "weights_client.h"
#include "wire.h"

/* ------------------------------------------------------------ fixtures */

typedef struct {
    broker_t *b;
    pthread_t th;
    int rc;
    char publish[CONFIG_ADDR_LEN], announce[CONFIG_ADDR_LEN], fetch[CONFIG_ADDR_LEN];
} running_t;

static void *run_thread(void *arg)
{
    running_t *r = arg;
    r->rc = broker_run(r->b);
    return NULL;
}

static void test_config(crl_config_t *cfg, int chunk_bytes)
{
    char err[512];
    cr_assert_eq(config_defaults(cfg), 0);
    const char *sets[] = {"network.broker_publish=tcp://127.0.0.1:*",
                          "network.broker_announce=tcp://127.0.0.1:*",
                          "network.broker_fetch=tcp://127.0.0.1:*"};
    for (size_t i = 0; i < 3; i++)
        cr_assert_eq(config_set(cfg, sets[i], err, sizeof err), 0, "%s: %s", sets[i], err);
    cfg->broker.chunk_bytes = chunk_bytes;
}

static void start(running_t *r, const crl_config_t *cfg)
{
    char err[512] = "";
    memset(r, 0, sizeof *r);
    r->b = broker_new(cfg, err, sizeof err);
    cr_assert_not_null(r->b, "broker_new: %s", err);
    if (!cfg->broker.upstream[0])
        cr_assert_eq(broker_get_endpoint(r->b, BROKER_EP_PUBLISH, r->publish, sizeof r->publish), 0);
    else
        cr_assert_eq(broker_get_endpoint(r->b, BROKER_EP_PUBLISH, r->publish, sizeof r->publish), -ENOENT);
    cr_assert_eq(broker_get_endpoint(r->b, BROKER_EP_ANNOUNCE, r->announce, sizeof r->announce), 0);
    cr_assert_eq(broker_get_endpoint(r->b, BROKER_EP_FETCH, r->fetch, sizeof r->fetch), 0);
    cr_assert(strstr(r->fetch, "*") == NULL, "wildcard port not resolved: %s", r->fetch);
    cr_assert_eq(pthread_create(&r->th, NULL, run_thread, r), 0);
}

static void stop(running_t *r)
{
    broker_stop(r->b);
    cr_assert_eq(pthread_join(r->th, NULL), 0);
    cr_assert_eq(r->rc, 0, "broker_run returned %d", r->rc);
    broker_destroy(&r->b);
    cr_assert_null(r->b);
}

static void *connect_sock(void *ctx, int type, const char *ep)
{
    void *s = zmq_socket(ctx, type);
    cr_assert_not_null(s);
    cr_assert_eq(wire_socket_setup(s, 64 << 20), 0);
    if (type == ZMQ_SUB)
        cr_assert_eq(zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0), 0);
    cr_assert_eq(zmq_connect(s, ep), 0, "connect %s: %s", ep, zmq_strerror(errno));
    return s;
}

static uint8_t *make_blob(size_t n, uint64_t seed)
{
    uint8_t *p = malloc(n);
    cr_assert_not_null(p);
    rng_t rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rng_u64(&rng);
    return p;
}

/* Sends a WeightsPublish (+ raw) and waits for the PublishAck (caller
 * frees it with wire_envelope_free). crc/total as given (to forge bad ones). */
static Crl__Envelope *publish(void *dealer, uint64_t version, const void *raw, size_t raw_len,
                              uint64_t total, uint32_t crc, const char *layout)
{
    Crl__Envelope env;
    Crl__WeightsPublish p;
    wire_envelope_init(&env);
    crl__weights_publish__init(&p);
    p.version = version;
    p.total_bytes = total;
    p.crc32c = crc;
    p.layout = (char *)layout;
    p.learner_step = version - 1;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
    env.weights_publish = &p;
    if (raw_len == total) {
        cr_assert_eq(wire_send(dealer, NULL, &env, raw, raw_len, NULL), 0);
    } else { /* a lying publish: bypass wire_send's own check */
        size_t len;
        uint8_t *buf = wire_encode(&env, &len);
        cr_assert_not_null(buf);
        cr_assert_eq(zmq_send(dealer, buf, len, ZMQ_SNDMORE), (int)len);
        cr_assert_eq(zmq_send(dealer, raw, raw_len, 0), (int)raw_len);
        free(buf);
    }
    wire_limits_t lim;
    wire_limits_default(&lim);
    Crl__Envelope *ack = NULL;
    char err[512];
    int rc = wire_recv(dealer, 0, 10000, &lim, NULL, NULL, &ack, NULL, err, sizeof err);
    cr_assert_eq(rc, 1, "no PublishAck for version %lu (rc %d: %s)", (unsigned long)version, rc, err);
    cr_assert_eq(ack->body_case, CRL__ENVELOPE__BODY_PUBLISH_ACK, "got %s", wire_body_name(ack));
    return ack;
}

static void publish_ok(void *dealer, uint64_t version, const uint8_t *blob, size_t n)
{
    Crl__Envelope *ack = publish(dealer, version, blob, n, n, crc32c(blob, n), "test-bytes");
    cr_assert(ack->publish_ack->ok, "publish of version %lu refused: %s", (unsigned long)version,
              ack->publish_ack->error);
    cr_assert_eq(ack->publish_ack->version, version);
    wire_envelope_free(&ack);
}

/* Waits for an announce of `version` on sub; returns it (caller frees). */
static Crl__Envelope *wait_announce(void *sub, uint64_t version, int timeout_ms)
{
    wire_limits_t lim;
    wire_limits_default(&lim);
    uint64_t end = weights_now_ms() + (uint64_t)timeout_ms;
    while (weights_now_ms() < end) {
        Crl__Envelope *env = NULL;
        char err[512];
        int rc = wire_recv(sub, 0, 100, &lim, NULL, NULL, &env, NULL, err, sizeof err);
        if (rc != 1)
            continue;
        if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE &&
            env->weights_announce->version == version)
            return env;
        wire_envelope_free(&env);
    }
    cr_assert_fail("no announce of version %lu within %d ms", (unsigned long)version, timeout_ms);
    return NULL;
}

/* One raw WeightsFetch → the WeightsChunk reply (caller frees both). */
static Crl__Envelope *fetch_once(void *dealer, uint64_t version, uint64_t offset, uint64_t length,
                                 zmq_msg_t *raw)
{
    Crl__Envelope env;
    Crl__WeightsFetch f;
    wire_envelope_init(&env);
    crl__weights_fetch__init(&f);
    f.version = version;
    f.offset = offset;
    f.length = length;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &f;
    cr_assert_eq(wire_send(dealer, NULL, &env, NULL, 0, NULL), 0);
    wire_limits_t lim;
    wire_limits_default(&lim);
    Crl__Envelope *rep = NULL;
    char err[512];
    int rc = wire_recv(dealer, 0, 10000, &lim, NULL, NULL, &rep, raw, err, sizeof err);
    cr_assert_eq(rc, 1, "no WeightsChunk (rc %d: %s)", rc, err);
    cr_assert_eq(rep->body_case, CRL__ENVELOPE__BODY_WEIGHTS_CHUNK, "got %s", wire_body_name(rep));
    return rep;
}

static weights_fetcher_t *fetcher(void *dealer, const char *addr, uint64_t chunk, int window)
{
    weights_fetch_opts_t o;
    weights_fetch_opts_default(&o);
    o.chunk_bytes = chunk;
    o.window = window;
    o.timeout_ms = 10000;
    weights_fetcher_t *f = weights_fetcher_new(dealer, addr, &o, NULL);
    cr_assert_not_null(f);
    return f;
}

/* --------------------------------------------------------------- tests */

Test(broker, publish_is_acked_and_announced)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 1 << 20);
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *sub = connect_sock(ctx, ZMQ_SUB, r.announce);
    usleep(200 * 1000); /* let the SUB join, to see the first announce */

    size_t n = 100000;
    uint8_t *blob = make_blob(n, 1);
    publish_ok(pub, 1, blob, n);
    Crl__Envelope *a = wait_announce(sub, 1, 3000);
    cr_assert_eq(a->weights_announce->total_bytes, n, "total %lu, expected %zu",
                 (unsigned long)a->weights_announce->total_bytes, n);
    cr_assert_eq(a->weights_announce->crc32c, crc32c(blob, n));
    cr_assert_str_eq(a->weights_announce->layout, "test-bytes");
    wire_envelope_free(&a);

    /* A subscriber that joins later still learns the latest version from
     * the 500 ms re-announce. */
    void *late = connect_sock(ctx, ZMQ_SUB, r.announce);
    a = wait_announce(late, 1, 3000);
    wire_envelope_free(&a);

    /* Publishing the same version again is harmless (a learner retry). */
    publish_ok(pub, 1, blob, n);
    broker_counters_t c;
    broker_get_counters(r.b, &c);
    cr_assert_eq(c.versions_received, 1, "versions_received %lu, expected 1", (unsigned long)c.versions_received);
    cr_assert_eq(c.publishes_ok, 2);
    cr_assert_eq(c.latest_version, 1);
    cr_assert(c.announces_sent >= 2, "announces_sent %lu", (unsigned long)c.announces_sent);

    zmq_close(pub);
    zmq_close(sub);
    zmq_close(late);
    zmq_ctx_term(ctx);
    free(blob);
    stop(&r);
}

Test(broker, fetch_3mb_in_chunks)
{
    crl_config_t cfg;
    running_t r;
    /* The broker serves 256 KiB chunks, the client asks for 1 MiB: the
     * client must cope with short replies. 3 MB + 123 so the tail is odd. */
    test_config(&cfg, 256 << 10);
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    size_t n = 3000000 + 123;
    uint8_t *blob = make_blob(n, 2);
    publish_ok(pub, 1, blob, n);

    uint8_t *got = calloc(1, n);
    weights_fetcher_t *f = fetcher(dl, r.fetch, 1 << 20, 3);
    int rc = weights_fetch_blocking(f, 1, n, crc32c(blob, n), got);
    cr_assert_eq(rc, 0, "fetch: %d (%s)", rc, weights_fetch_error(f));
    cr_assert_eq(memcmp(got, blob, n), 0, "fetched bytes differ from the published ones");
    weights_fetch_stats_t st;
    weights_fetch_get_stats(f, &st);
    cr_assert_eq(st.bytes_received, n);
    cr_assert(st.chunks_received >= 12, "chunks %lu: expected >= 12 chunks of <= 256 KiB",
              (unsigned long)st.chunks_received);

    /* A second fetch with small client chunks and a wide window. */
    memset(got, 0, n);
    weights_fetcher_t *g = fetcher(dl, r.fetch, 100000, 8);
    rc = weights_fetch_blocking(g, 1, n, crc32c(blob, n), got);
    cr_assert_eq(rc, 0, "fetch 2: %d (%s)", rc, weights_fetch_error(g));
    cr_assert_eq(memcmp(got, blob, n), 0);

    /* The broker thread counts a chunk after sending it: the client may
     * hold the last bytes a moment before the counter does. */
    broker_counters_t c;
    for (int i = 0; i < 200; i++) {
        broker_get_counters(r.b, &c);
        if (c.bytes_served >= 2 * n)
            break;
        usleep(10000);
    }
    cr_assert(c.bytes_served >= 2 * n, "bytes_served %lu, expected >= %zu", (unsigned long)c.bytes_served, 2 * n);

    weights_fetcher_destroy(&f);
    weights_fetcher_destroy(&g);
    cr_assert_null(f);
    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(blob);
    free(got);
    stop(&r);
}

Test(broker, evicted_version_is_gone_with_latest)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 1 << 20);
    cfg.broker.keep_versions = 2;
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    size_t n = 5000;
    uint8_t *blob[3];
    for (int v = 0; v < 3; v++) {
        blob[v] = make_blob(n, 10 + (uint64_t)v);
        publish_ok(pub, (uint64_t)v + 1, blob[v], n);
    }
    zmq_msg_t raw;
    Crl__Envelope *rep = fetch_once(dl, 1, 0, 100, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_GONE, "status %d, expected GONE",
                 (int)rep->weights_chunk->status);
    cr_assert_eq(rep->weights_chunk->latest_version, 3, "latest %lu, expected 3",
                 (unsigned long)rep->weights_chunk->latest_version);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);

    /* Version 2 (the one before the latest) is still served. */
    rep = fetch_once(dl, 2, 10, 100, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_OK);
    cr_assert_eq(zmq_msg_size(&raw), 100);
    cr_assert_eq(memcmp(zmq_msg_data(&raw), blob[1] + 10, 100), 0);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);

    /* A version from the future: not yet. */
    rep = fetch_once(dl, 9, 0, 100, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION);
    cr_assert_eq(rep->weights_chunk->latest_version, 3);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);

    /* The client turns GONE into -ESTALE and names the latest version. */
    uint8_t *got = malloc(n);
    weights_fetcher_t *f = fetcher(dl, r.fetch, 1024, 2);
    int rc = weights_fetch_blocking(f, 1, n, crc32c(blob[0], n), got);
    cr_assert_eq(rc, -ESTALE, "fetch of evicted version: %d (%s), expected -ESTALE", rc, weights_fetch_error(f));
    cr_assert_eq(weights_fetch_latest_version(f), 3);
    cr_assert_eq(weights_fetch_blocking(f, 3, n, crc32c(blob[2], n), got), 0, "%s", weights_fetch_error(f));
    cr_assert_eq(memcmp(got, blob[2], n), 0);

    broker_counters_t c;
    broker_get_counters(r.b, &c);
    cr_assert(c.replies_gone >= 2);
    cr_assert(c.replies_unknown >= 1);

    weights_fetcher_destroy(&f);
    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    for (int v = 0; v < 3; v++)
        free(blob[v]);
    free(got);
    stop(&r);
}

Test(broker, bad_range_is_refused)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 1 << 20);
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    size_t n = 1000;
    uint8_t *blob = make_blob(n, 3);
    publish_ok(pub, 1, blob, n);
    struct {
        uint64_t off, len;
    } bad[] = {{1000, 1}, {995, 10}, {5000, 10}};
    for (size_t i = 0; i < 3; i++) {
        zmq_msg_t raw;
        Crl__Envelope *rep = fetch_once(dl, 1, bad[i].off, bad[i].len, &raw);
        cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_BAD_RANGE,
                     "[%lu, +%lu) of 1000 bytes: status %d, expected BAD_RANGE", (unsigned long)bad[i].off,
                     (unsigned long)bad[i].len, (int)rep->weights_chunk->status);
        cr_assert_eq(rep->weights_chunk->total_bytes, n);
        cr_assert_eq(zmq_msg_size(&raw), 0);
        wire_envelope_free(&rep);
        zmq_msg_close(&raw);
    }
    /* The last valid byte is fine. */
    zmq_msg_t raw;
    Crl__Envelope *rep = fetch_once(dl, 1, 999, 1, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_OK);
    cr_assert_eq(*(uint8_t *)zmq_msg_data(&raw), blob[999]);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);

    /* A client that believes the blob is longer gets -ERANGE. */
    uint8_t *got = malloc(2 * n);
    weights_fetcher_t *f = fetcher(dl, r.fetch, 600, 2);
    int rc = weights_fetch_blocking(f, 1, 2 * n, crc32c(blob, n), got);
    cr_assert(rc == -ERANGE || rc == -EPROTO, "fetch of 2000 bytes of a 1000-byte blob: %d (%s)", rc,
              weights_fetch_error(f));
    broker_counters_t c;
    broker_get_counters(r.b, &c);
    cr_assert(c.replies_bad_range >= 3);
    weights_fetcher_destroy(&f);
    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(blob);
    free(got);
    stop(&r);
}

Test(broker, corrupt_publish_is_refused_previous_kept)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 1 << 20);
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    size_t n = 40000;
    uint8_t *v1 = make_blob(n, 4), *v2 = make_blob(n, 5);
    publish_ok(pub, 1, v1, n);

    /* crc mismatch */
    Crl__Envelope *ack = publish(pub, 2, v2, n, n, crc32c(v2, n) ^ 1u, "test-bytes");
    cr_assert(!ack->publish_ack->ok, "a publish with a wrong crc32c was accepted");
    cr_assert(strstr(ack->publish_ack->error, "crc32c") != NULL, "error \"%s\" does not say crc32c",
              ack->publish_ack->error);
    wire_envelope_free(&ack);
    /* raw frame shorter than total_bytes */
    ack = publish(pub, 2, v2, n - 10, n, crc32c(v2, n), "test-bytes");
    cr_assert(!ack->publish_ack->ok, "a short publish was accepted");
    cr_assert(strstr(ack->publish_ack->error, "length") != NULL, "error \"%s\" does not name the length",
              ack->publish_ack->error);
    wire_envelope_free(&ack);
    /* layout that contradicts the size: 4 * 9999 != 40000 */
    ack = publish(pub, 2, v2, n, n, crc32c(v2, n), "crl-f32-params-v1 n=9999");
    cr_assert(!ack->publish_ack->ok, "a publish whose layout contradicts its size was accepted");
    cr_assert(strstr(ack->publish_ack->error, "9999") != NULL, "error: %s", ack->publish_ack->error);
    wire_envelope_free(&ack);

    broker_counters_t c;
    broker_get_counters(r.b, &c);
    cr_assert_eq(c.publishes_refused, 2, "publishes_refused %lu, expected 2 (crc, layout)",
                 (unsigned long)c.publishes_refused);
    cr_assert_eq(c.malformed, 1, "malformed %lu, expected 1 (short frame)", (unsigned long)c.malformed);
    cr_assert_eq(c.latest_version, 1);

    /* Version 1 is still served, version 2 does not exist. */
    uint8_t *got = malloc(n);
    weights_fetcher_t *f = fetcher(dl, r.fetch, 16384, 2);
    cr_assert_eq(weights_fetch_blocking(f, 1, n, crc32c(v1, n), got), 0, "%s", weights_fetch_error(f));
    cr_assert_eq(memcmp(got, v1, n), 0);
    zmq_msg_t raw;
    Crl__Envelope *rep = fetch_once(dl, 2, 0, 10, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);

    /* A correct layout is accepted. */
    ack = publish(pub, 2, v2, n, n, crc32c(v2, n), "crl-f32-params-v1 n=10000");
    cr_assert(ack->publish_ack->ok, "%s", ack->publish_ack->error);
    wire_envelope_free(&ack);

    weights_fetcher_destroy(&f);
    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(v1);
    free(v2);
    free(got);
    stop(&r);
}

Test(broker, malformed_messages_are_counted_and_dropped)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 1 << 20);
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    size_t n = 2000;
    uint8_t *blob = make_blob(n, 6);
    publish_ok(pub, 1, blob, n);

    /* 1: not protobuf at all */
    const char junk[] = "\xff\xff\xff\xff garbage";
    cr_assert_eq(zmq_send(dl, junk, sizeof junk, 0), (int)sizeof junk);
    /* 2: a valid envelope of another protocol version */
    Crl__Envelope env;
    Crl__WeightsFetch wf;
    wire_envelope_init(&env);
    crl__weights_fetch__init(&wf);
    wf.version = 1;
    wf.length = 10;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &wf;
    env.protocol_version = CRL_PROTOCOL_VERSION + 7;
    size_t len;
    uint8_t *buf = wire_encode(&env, &len);
    cr_assert_eq(zmq_send(dl, buf, len, 0), (int)len);
    free(buf);
    /* 3: three frames */
    env.protocol_version = CRL_PROTOCOL_VERSION;
    buf = wire_encode(&env, &len);
    cr_assert_eq(zmq_send(dl, buf, len, ZMQ_SNDMORE), (int)len);
    cr_assert_eq(zmq_send(dl, "x", 1, ZMQ_SNDMORE), 1);
    cr_assert_eq(zmq_send(dl, "y", 1, 0), 1);
    free(buf);
    /* 4: a valid message of the wrong kind (a Bye on the fetch socket) */
    Crl__Bye bye;
    crl__bye__init(&bye);
    bye.reason = "hi";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_BYE;
    env.bye = &bye;
    cr_assert_eq(wire_send(dl, NULL, &env, NULL, 0, NULL), 0);
    /* 5: an invalid fetch (version 0) */
    wf.version = 0;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &wf;
    cr_assert_eq(wire_send(dl, NULL, &env, NULL, 0, NULL), 0);

    /* The broker answered none of them and still serves. */
    zmq_msg_t raw;
    Crl__Envelope *rep = fetch_once(dl, 1, 0, n, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_OK);
    cr_assert_eq(rep->weights_chunk->offset, 0, "the first reply is not the valid fetch's");
    cr_assert_eq(memcmp(zmq_msg_data(&raw), blob, n), 0);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);
    broker_counters_t c;
    broker_get_counters(r.b, &c);
    cr_assert_eq(c.malformed, 5, "malformed %lu, expected 5", (unsigned long)c.malformed);
    cr_assert_eq(c.fetch_requests, 1);

    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(blob);
    stop(&r);
}

/* A client fetching from a relay in its own thread. */
typedef struct {
    const char *ep;
    uint64_t version, total;
    uint32_t crc;
    uint8_t *buf;
    int rc;
} client_job_t;

static void *client_thread(void *arg)
{
    client_job_t *j = arg;
    void *ctx = zmq_ctx_new();
    void *dl = zmq_socket(ctx, ZMQ_DEALER);
    wire_socket_setup(dl, 64 << 20);
    zmq_connect(dl, j->ep);
    weights_fetch_opts_t o;
    weights_fetch_opts_default(&o);
    o.chunk_bytes = 256 << 10;
    o.timeout_ms = 10000;
    weights_fetcher_t *f = weights_fetcher_new(dl, j->ep, &o, NULL);
    j->rc = f ? weights_fetch_blocking(f, j->version, j->total, j->crc, j->buf) : -ENOMEM;
    weights_fetcher_destroy(&f);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    return NULL;
}

Test(broker, relay_fetches_upstream_once)
{
    crl_config_t cfg, rcfg;
    running_t root, relay;
    test_config(&cfg, 256 << 10);
    start(&root, &cfg);
    test_config(&rcfg, 256 << 10);
    snprintf(rcfg.broker.upstream, sizeof rcfg.broker.upstream, "%s", root.fetch);
    snprintf(rcfg.broker.upstream_announce, sizeof rcfg.broker.upstream_announce, "%s", root.announce);
    start(&relay, &rcfg);

    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, root.publish);
    void *sub = connect_sock(ctx, ZMQ_SUB, relay.announce);
    size_t n = 3 << 20;
    uint8_t *blob = make_blob(n, 7);
    uint32_t crc = crc32c(blob, n);
    publish_ok(pub, 1, blob, n);

    /* The relay announces version 1 once it holds it. */
    Crl__Envelope *a = wait_announce(sub, 1, 8000);
    cr_assert_eq(a->weights_announce->crc32c, crc);
    wire_envelope_free(&a);

    client_job_t jobs[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        jobs[i] = (client_job_t){.ep = relay.fetch, .version = 1, .total = n, .crc = crc, .buf = calloc(1, n)};
        cr_assert_eq(pthread_create(&th[i], NULL, client_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(jobs[i].rc, 0, "client %d: fetch from the relay returned %d", i, jobs[i].rc);
        cr_assert_eq(memcmp(jobs[i].buf, blob, n), 0, "client %d: bytes differ", i);
        free(jobs[i].buf);
    }
    broker_counters_t rc, uc;
    broker_get_counters(root.b, &uc);
    broker_get_counters(relay.b, &rc);
    cr_assert_eq(uc.bytes_served, n, "upstream served %lu bytes, expected the blob once (%zu)",
                 (unsigned long)uc.bytes_served, n);
    cr_assert_eq(rc.upstream_bytes, n, "relay fetched %lu bytes upstream, expected %zu",
                 (unsigned long)rc.upstream_bytes, n);
    cr_assert_eq(rc.bytes_served, 2 * n, "relay served %lu bytes, expected %zu", (unsigned long)rc.bytes_served,
                 2 * n);
    cr_assert_eq(rc.versions_received, 1);
    cr_assert_eq(rc.latest_version, 1);

    zmq_close(pub);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    free(blob);
    stop(&relay);
    stop(&root);
}

Test(broker, relay_follows_new_versions)
{
    crl_config_t cfg, rcfg;
    running_t root, relay;
    test_config(&cfg, 64 << 10);
    start(&root, &cfg);
    test_config(&rcfg, 64 << 10);
    snprintf(rcfg.broker.upstream, sizeof rcfg.broker.upstream, "%s", root.fetch);
    snprintf(rcfg.broker.upstream_announce, sizeof rcfg.broker.upstream_announce, "%s", root.announce);
    start(&relay, &rcfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, root.publish);
    void *sub = connect_sock(ctx, ZMQ_SUB, relay.announce);
    void *dl = connect_sock(ctx, ZMQ_DEALER, relay.fetch);
    size_t n = 300000;
    uint8_t *got = malloc(n);
    weights_fetcher_t *f = fetcher(dl, relay.fetch, 64 << 10, 4);
    for (uint64_t v = 1; v <= 3; v++) {
        uint8_t *blob = make_blob(n, 20 + v);
        publish_ok(pub, v, blob, n);
        Crl__Envelope *a = wait_announce(sub, v, 8000);
        wire_envelope_free(&a);
        cr_assert_eq(weights_fetch_blocking(f, v, n, crc32c(blob, n), got), 0, "v%lu: %s", (unsigned long)v,
                     weights_fetch_error(f));
        cr_assert_eq(memcmp(got, blob, n), 0, "version %lu differs", (unsigned long)v);
        free(blob);
    }
    broker_counters_t c;
    broker_get_counters(relay.b, &c);
    cr_assert_eq(c.versions_received, 3);
    cr_assert_eq(c.upstream_bytes, 3 * n);
    weights_fetcher_destroy(&f);
    zmq_close(pub);
    zmq_close(sub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(got);
    stop(&relay);
    stop(&root);
}

Test(broker, bind_failure_names_endpoint)
{
    crl_config_t cfg;
    running_t r;
    char err[512] = "";
    test_config(&cfg, 1 << 20);
    start(&r, &cfg);
    crl_config_t dup = cfg;
    snprintf(dup.network.broker_fetch, sizeof dup.network.broker_fetch, "%s", r.fetch);
    broker_t *b = broker_new(&dup, err, sizeof err);
    cr_assert_null(b, "a second broker bound the same fetch endpoint");
    cr_assert(strstr(err, "network.broker_fetch") && strstr(err, r.fetch) && strstr(err, "in use"),
              "error \"%s\" does not name the key, the endpoint (%s) and the zmq error", err, r.fetch);
    stop(&r);
}

Test(broker, fetch_times_out_without_broker)
{
    void *ctx = zmq_ctx_new();
    /* Nobody listens here (port 1 is privileged and unused). */
    void *dl = connect_sock(ctx, ZMQ_DEALER, "tcp://127.0.0.1:1");
    weights_fetch_opts_t o;
    weights_fetch_opts_default(&o);
    o.timeout_ms = 400;
    o.retry_ms = 100;
    weights_fetcher_t *f = weights_fetcher_new(dl, "tcp://127.0.0.1:1", &o, NULL);
    cr_assert_not_null(f);
    uint8_t buf[100];
    uint64_t t0 = weights_now_ms();
    int rc = weights_fetch_blocking(f, 1, sizeof buf, 0, buf);
    uint64_t el = weights_now_ms() - t0;
    cr_assert_eq(rc, -ETIMEDOUT, "rc %d, expected -ETIMEDOUT", rc);
    cr_assert(el >= 400 && el < 3000, "timed out after %lu ms, expected ~400", (unsigned long)el);
    cr_assert(strstr(weights_fetch_error(f), "tcp://127.0.0.1:1") != NULL, "error: %s", weights_fetch_error(f));
    weights_fetch_stats_t st;
    weights_fetch_get_stats(f, &st);
    cr_assert(st.retries >= 1, "no retries in 400 ms with retry_ms 100");
    weights_fetcher_destroy(&f);
    zmq_close(dl);
    zmq_ctx_term(ctx);
}

/* The crl-broker binary: SIGTERM stops it with exit 0 and a counters line.
 * Needs CRL_BIN_DIR (set by tests/run.sh); skipped otherwise. */
Test(broker, process_stops_cleanly_on_sigterm)
{
    const char *dir = getenv("CRL_BIN_DIR");
    char bin[1024];
    if (!dir) {
        cr_skip_test("CRL_BIN_DIR not set");
        return;
    }
    snprintf(bin, sizeof bin, "%s/crl-broker", dir);
    if (access(bin, X_OK) != 0) {
        cr_skip_test("%s not built", bin);
        return;
    }
    const char *tmpd = getenv("CRL_TEST_TMP") ? getenv("CRL_TEST_TMP") : "/tmp";
    char tdir[512];
    snprintf(tdir, sizeof tdir, "%s/crl-broker-XXXXXX", tmpd);
    cr_assert_not_null(mkdtemp(tdir));
    char s1[700], s2[700], s3[700], logf[700];
    snprintf(s1, sizeof s1, "network.broker_publish=ipc://%s/p", tdir);
    snprintf(s2, sizeof s2, "network.broker_announce=ipc://%s/a", tdir);
    snprintf(s3, sizeof s3, "network.broker_fetch=ipc://%s/f", tdir);
    snprintf(logf, sizeof logf, "%s/log", tdir);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        FILE *lf = freopen(logf, "w", stderr);
        (void)lf;
        execl(bin, bin, "--set", s1, "--set", s2, "--set", s3, "--set", "broker.cpus=0", (char *)NULL);
        _exit(127);
    }
    /* Publish one version through the real process, then stop it. */
    void *ctx = zmq_ctx_new();
    char ep[700];
    snprintf(ep, sizeof ep, "ipc://%s/p", tdir);
    void *pub = connect_sock(ctx, ZMQ_DEALER, ep);
    uint8_t blob[4096];
    memset(blob, 7, sizeof blob);
    publish_ok(pub, 1, blob, sizeof blob);
    zmq_close(pub);
    zmq_ctx_term(ctx);
    cr_assert_eq(kill(pid, SIGTERM), 0);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "crl-broker exit status 0x%x, expected exit 0",
              status);
    FILE *f = fopen(logf, "r");
    cr_assert_not_null(f);
    char text[8192];
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = '\0';
    fclose(f);
    cr_assert(strstr(text, "publishes_ok=1") != NULL, "no final counters line in:\n%s", text);
    cr_assert(strstr(text, "pinned to cpus 0") != NULL, "no pinning line in:\n%s", text);
    unlink(logf);
    rmdir(tdir);
}

Test(broker, slow_peer_never_blocks_others)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 256 << 10);
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    size_t n = 1 << 20;
    uint8_t *blob = make_blob(n, 8);
    publish_ok(pub, 1, blob, n);

    /* A greedy peer asks for 1000 chunks and never reads a reply. */
    void *greedy = zmq_socket(ctx, ZMQ_DEALER);
    int one = 1;
    cr_assert_eq(zmq_setsockopt(greedy, ZMQ_RCVHWM, &one, sizeof one), 0);
    cr_assert_eq(wire_socket_setup(greedy, 64 << 20), 0);
    cr_assert_eq(zmq_connect(greedy, r.fetch), 0);
    Crl__Envelope env;
    Crl__WeightsFetch wf;
    wire_envelope_init(&env);
    crl__weights_fetch__init(&wf);
    wf.version = 1;
    wf.length = 256 << 10;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &wf;
    int sent = 0;
    for (int i = 0; i < 1000; i++)
        sent += wire_send(greedy, NULL, &env, NULL, 0, NULL) == 0;
    cr_assert(sent > 500, "only %d requests queued", sent);

    /* Meanwhile a normal actor gets the whole blob promptly. */
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    uint8_t *got = malloc(n);
    weights_fetcher_t *f = fetcher(dl, r.fetch, 256 << 10, 4);
    uint64_t t0 = weights_now_ms();
    int rc = weights_fetch_blocking(f, 1, n, crc32c(blob, n), got);
    uint64_t el = weights_now_ms() - t0;
    cr_assert_eq(rc, 0, "fetch beside a greedy peer: %d (%s)", rc, weights_fetch_error(f));
    cr_assert(el < 5000, "fetch took %lu ms beside a greedy peer", (unsigned long)el);
    cr_assert_eq(memcmp(got, blob, n), 0);

    /* Let the broker work through the greedy requests, then look. */
    uint64_t end = weights_now_ms() + 5000;
    broker_counters_t c;
    do {
        usleep(20000);
        broker_get_counters(r.b, &c);
    } while (c.fetch_requests < (uint64_t)sent + 4 && weights_now_ms() < end);
    cr_assert(c.chunks_dropped > 0, "no chunk dropped for a peer that never reads (%lu served)",
              (unsigned long)c.chunks_served);
    weights_fetcher_destroy(&f);
    zmq_close(greedy);
    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(blob);
    free(got);
    stop(&r);
}

Test(broker, rewound_publisher_replaces_newer_versions)
{
    crl_config_t cfg;
    running_t r;
    test_config(&cfg, 1 << 20);
    cfg.broker.keep_versions = 3;
    start(&r, &cfg);
    void *ctx = zmq_ctx_new();
    void *pub = connect_sock(ctx, ZMQ_DEALER, r.publish);
    void *dl = connect_sock(ctx, ZMQ_DEALER, r.fetch);
    size_t n = 4096;
    uint8_t *a = make_blob(n, 30), *b2 = make_blob(n, 31), *b3 = make_blob(n, 32), *c2 = make_blob(n, 33);
    publish_ok(pub, 1, a, n);
    publish_ok(pub, 2, b2, n);
    publish_ok(pub, 3, b3, n);
    /* The learner restarts from a checkpoint of step 1 and makes another
     * version 2: it replaces 2 and 3 (a history that no longer exists). */
    publish_ok(pub, 2, c2, n);
    broker_counters_t c;
    broker_get_counters(r.b, &c);
    cr_assert_eq(c.latest_version, 2, "latest %lu, expected 2", (unsigned long)c.latest_version);
    zmq_msg_t raw;
    Crl__Envelope *rep = fetch_once(dl, 2, 0, n, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_OK);
    cr_assert_eq(memcmp(zmq_msg_data(&raw), c2, n), 0, "version 2 is not the re-published one");
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);
    rep = fetch_once(dl, 3, 0, n, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION);
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);
    rep = fetch_once(dl, 1, 0, n, &raw);
    cr_assert_eq(rep->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_OK, "version 1 lost");
    wire_envelope_free(&rep);
    zmq_msg_close(&raw);
    zmq_close(pub);
    zmq_close(dl);
    zmq_ctx_term(ctx);
    free(a), free(b2), free(b3), free(c2);
    stop(&r);
}
