/* bench_broker: weights fan-out time (issue 4). From the moment a
 * publisher (the learner's role) starts sending a new version to the
 * broker until every one of N fetchers (the actors' role: SUB for the
 * announce, DEALER + weights_client for the chunks, crc32c checked) holds
 * it; for blobs of 1/16/64 MiB and 1/2/4 fetchers, all in this process
 * over tcp://127.0.0.1. Reference: a raw ZeroMQ transfer of the same bytes
 * (one ROUTER sending the blob as one zero-copy message to each of N
 * DEALERs), i.e. what the network stack alone costs. Called by crl-bench;
 * no main here. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "broker.h"
#include "config.h"
#include "crc32c.h"
#include "log.h"
#include "weights_client.h"
#include "wire.h"

int bench_broker_run(FILE *json);

#define BB_MAX_ACTORS 4
#define BB_REPS 3

static double bb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    void *ctx;
    const char *announce_ep, *fetch_ep;
    atomic_int *quit;
    atomic_int done;      /* versions completed */
    _Atomic double done_at;
    int failed;
} bb_actor_t;

/* An actor's weights loop: hear an announce, fetch it, note the time. */
static void *bb_actor(void *arg)
{
    bb_actor_t *a = arg;
    void *sub = zmq_socket(a->ctx, ZMQ_SUB);
    void *dl = zmq_socket(a->ctx, ZMQ_DEALER);
    weights_fetcher_t *f = NULL;
    uint8_t *buf = NULL;
    size_t cap = 0;
    uint64_t have = 0;
    wire_limits_t lim;
    wire_limits_default(&lim);
    if (!sub || !dl || wire_socket_setup(sub, 65536) < 0 || wire_socket_setup(dl, (2 << 20) + 65536) < 0 ||
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0) != 0 || zmq_connect(sub, a->announce_ep) != 0 ||
        zmq_connect(dl, a->fetch_ep) != 0)
        goto fail;
    weights_fetch_opts_t o;
    weights_fetch_opts_default(&o);
    o.chunk_bytes = 1u << 20;
    o.window = 4;
    o.timeout_ms = 20000;
    f = weights_fetcher_new(dl, a->fetch_ep, &o, NULL);
    if (!f)
        goto fail;
    while (!atomic_load(a->quit)) {
        Crl__Envelope *env = NULL;
        int rc = wire_recv(sub, 0, 50, &lim, NULL, NULL, &env, NULL, NULL, 0);
        if (rc != 1)
            continue;
        if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE && env->weights_announce->version > have) {
            const Crl__WeightsAnnounce *an = env->weights_announce;
            if (an->total_bytes > cap) {
                free(buf);
                cap = (size_t)an->total_bytes;
                buf = malloc(cap);
                if (!buf) {
                    wire_envelope_free(&env);
                    goto fail;
                }
            }
            rc = weights_fetch_blocking(f, an->version, an->total_bytes, an->crc32c, buf);
            if (rc != 0) {
                log_error("bench actor: fetch of version %lu failed: %s", (unsigned long)an->version,
                          weights_fetch_error(f));
                a->failed = 1;
            }
            have = an->version;
            atomic_store(&a->done_at, bb_now());
            atomic_fetch_add(&a->done, 1);
        }
        wire_envelope_free(&env);
    }
    goto out;
fail:
    log_error("bench actor: setup failed: %s", zmq_strerror(errno));
    a->failed = 1;
out:
    weights_fetcher_destroy(&f);
    free(buf);
    if (sub)
        zmq_close(sub);
    if (dl)
        zmq_close(dl);
    return NULL;
}

static int bb_publish(void *dealer, uint64_t version, const uint8_t *blob, size_t n, uint32_t crc)
{
    Crl__Envelope env, *ack = NULL;
    Crl__WeightsPublish p;
    wire_envelope_init(&env);
    crl__weights_publish__init(&p);
    p.version = version;
    p.total_bytes = n;
    p.crc32c = crc;
    p.layout = "bench-bytes";
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
    env.weights_publish = &p;
    /* wire_send never blocks; a fresh connection may still be coming up. */
    int rc;
    for (int tries = 0; (rc = wire_send(dealer, NULL, &env, blob, n, NULL)) == -EAGAIN && tries < 200; tries++)
        usleep(10000);
    if (rc < 0)
        return rc;
    wire_limits_t lim;
    wire_limits_default(&lim);
    rc = wire_recv(dealer, 0, 20000, &lim, NULL, NULL, &ack, NULL, NULL, 0);
    if (rc != 1 || ack->body_case != CRL__ENVELOPE__BODY_PUBLISH_ACK || !ack->publish_ack->ok) {
        wire_envelope_free(&ack);
        return -EIO;
    }
    wire_envelope_free(&ack);
    return 0;
}

static void *bb_broker_thread(void *arg)
{
    if (broker_run(arg) < 0)
        log_error("bench: broker_run failed");
    return NULL;
}

/* Best of BB_REPS: publish start -> all n_actors hold the version;
 * *publish_s = the publish -> PublishAck part of that best rep. */
static double bb_broker_fanout(const uint8_t *blob, size_t n, int n_actors, double *publish_s)
{
    crl_config_t cfg;
    char err[512];
    broker_t *b = NULL;
    pthread_t bth, ath[BB_MAX_ACTORS];
    bb_actor_t act[BB_MAX_ACTORS];
    int n_started = 0, broker_started = 0;
    atomic_int quit = 0;
    void *ctx = NULL, *pub = NULL;
    double best = -1;
    char ep_pub[CONFIG_ADDR_LEN], ep_ann[CONFIG_ADDR_LEN], ep_fetch[CONFIG_ADDR_LEN];

    if (config_defaults(&cfg) < 0)
        return -1;
    snprintf(cfg.network.broker_publish, CONFIG_ADDR_LEN, "tcp://127.0.0.1:*");
    snprintf(cfg.network.broker_announce, CONFIG_ADDR_LEN, "tcp://127.0.0.1:*");
    snprintf(cfg.network.broker_fetch, CONFIG_ADDR_LEN, "tcp://127.0.0.1:*");
    cfg.broker.chunk_bytes = 1 << 20;
    b = broker_new(&cfg, err, sizeof err);
    if (!b) {
        log_error("bench: %s", err);
        return -1;
    }
    broker_get_endpoint(b, BROKER_EP_PUBLISH, ep_pub, sizeof ep_pub);
    broker_get_endpoint(b, BROKER_EP_ANNOUNCE, ep_ann, sizeof ep_ann);
    broker_get_endpoint(b, BROKER_EP_FETCH, ep_fetch, sizeof ep_fetch);
    if (pthread_create(&bth, NULL, bb_broker_thread, b) != 0)
        goto done;
    broker_started = 1;
    ctx = zmq_ctx_new();
    if (!ctx)
        goto done;
    for (int i = 0; i < n_actors; i++) {
        memset(&act[i], 0, sizeof act[i]);
        act[i].ctx = ctx;
        act[i].announce_ep = ep_ann;
        act[i].fetch_ep = ep_fetch;
        act[i].quit = &quit;
        if (pthread_create(&ath[i], NULL, bb_actor, &act[i]) != 0)
            goto done;
        n_started++;
    }
    pub = zmq_socket(ctx, ZMQ_DEALER);
    if (!pub || wire_socket_setup(pub, 1 << 20) < 0 || zmq_connect(pub, ep_pub) != 0)
        goto done;
    uint32_t crc = crc32c(blob, n);
    /* Version 1 warms every connection up (and lets the SUBs join); the
     * timed versions follow. */
    for (uint64_t v = 1; v <= 1 + BB_REPS; v++) {
        double t0 = bb_now();
        if (bb_publish(pub, v, blob, n, crc) < 0) {
            log_error("bench: publish of version %lu failed", (unsigned long)v);
            best = -1;
            goto done;
        }
        double t_ack = bb_now() - t0;
        double deadline = t0 + 60;
        for (;;) {
            int all = 1;
            for (int i = 0; i < n_actors; i++)
                all &= atomic_load(&act[i].done) >= (int)v;
            if (all)
                break;
            if (bb_now() > deadline) {
                log_error("bench: actors did not get version %lu within 60 s", (unsigned long)v);
                best = -1;
                goto done;
            }
            usleep(200);
        }
        double last = 0;
        for (int i = 0; i < n_actors; i++) {
            if (act[i].failed) {
                best = -1;
                goto done;
            }
            double d = atomic_load(&act[i].done_at);
            if (d > last)
                last = d;
        }
        if (v > 1 && (best < 0 || last - t0 < best)) {
            best = last - t0;
            *publish_s = t_ack;
        }
    }
done:
    atomic_store(&quit, 1);
    for (int i = 0; i < n_started; i++)
        pthread_join(ath[i], NULL);
    if (pub)
        zmq_close(pub);
    if (ctx)
        zmq_ctx_term(ctx);
    if (broker_started) {
        broker_stop(b);
        pthread_join(bth, NULL);
    }
    broker_destroy(&b);
    return best;
}

/* ---- raw ZeroMQ reference ---- */

typedef struct {
    void *ctx;
    const char *ep;
    size_t n;
    _Atomic double got_at;
    int ok;
    int reps;
} bb_raw_rx_t;

static void *bb_raw_receiver(void *arg)
{
    bb_raw_rx_t *r = arg;
    void *s = zmq_socket(r->ctx, ZMQ_DEALER);
    int64_t max = (int64_t)r->n + 65536;
    if (!s || zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0 || zmq_connect(s, r->ep) != 0)
        goto out;
    for (int rep = 0; rep < r->reps; rep++) {
        if (zmq_send(s, "ready", 5, 0) != 5)
            goto out;
        zmq_msg_t m;
        zmq_msg_init(&m);
        int rc = zmq_msg_recv(&m, s, 0);
        if (rc < 0 || (size_t)rc != r->n) {
            zmq_msg_close(&m);
            goto out;
        }
        atomic_store(&r->got_at, bb_now());
        zmq_msg_close(&m);
        /* Tell the sender this rep landed. */
        if (zmq_send(s, "got", 3, 0) != 3)
            goto out;
    }
    r->ok = 1;
out:
    if (s)
        zmq_close(s);
    return NULL;
}

static void bb_free_nothing(void *data, void *hint)
{
    (void)data;
    (void)hint;
}

/* Best of BB_REPS: first send -> all receivers hold the bytes. */
static double bb_raw_fanout(const uint8_t *blob, size_t n, int n_rx)
{
    void *ctx = zmq_ctx_new();
    void *router = ctx ? zmq_socket(ctx, ZMQ_ROUTER) : NULL;
    char ep[256];
    size_t eplen = sizeof ep;
    pthread_t th[BB_MAX_ACTORS];
    bb_raw_rx_t rx[BB_MAX_ACTORS];
    int started = 0;
    double best = -1;
    if (!router || zmq_bind(router, "tcp://127.0.0.1:*") != 0 ||
        zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &eplen) != 0)
        goto done;
    for (int i = 0; i < n_rx; i++) {
        rx[i] = (bb_raw_rx_t){.ctx = ctx, .ep = ep, .n = n, .reps = 1 + BB_REPS};
        if (pthread_create(&th[i], NULL, bb_raw_receiver, &rx[i]) != 0)
            goto done;
        started++;
    }
    uint8_t ids[BB_MAX_ACTORS][256];
    size_t idlen[BB_MAX_ACTORS];
    int n_ready = 0;
    for (int rep = 0; rep < 1 + BB_REPS; rep++) {
        /* Wait for every receiver's "ready" and note its routing id (a
         * fast receiver's next "ready" may already have come in with the
         * "got"s of the previous rep). */
        while (n_ready < n_rx) {
            uint8_t id[256];
            char tmp[16];
            int rc = zmq_recv(router, id, sizeof id, 0);
            if (rc < 0 || zmq_recv(router, tmp, sizeof tmp, 0) < 0)
                goto done;
            memcpy(ids[n_ready], id, (size_t)rc);
            idlen[n_ready++] = (size_t)rc;
        }
        n_ready = 0;
        double t0 = bb_now();
        zmq_msg_t whole;
        /* One zero-copy message, shared by every send (refcounted). */
        if (zmq_msg_init_data(&whole, (void *)blob, n, bb_free_nothing, NULL) != 0)
            goto done;
        for (int i = 0; i < n_rx; i++) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            zmq_msg_copy(&m, &whole);
            if (zmq_send(router, ids[i], idlen[i], ZMQ_SNDMORE) < 0 || zmq_msg_send(&m, router, 0) < 0) {
                zmq_msg_close(&m);
                zmq_msg_close(&whole);
                goto done;
            }
        }
        zmq_msg_close(&whole);
        for (int n_got = 0; n_got < n_rx;) {
            uint8_t id[256];
            char tmp[16];
            int rc = zmq_recv(router, id, sizeof id, 0);
            int m = rc < 0 ? -1 : zmq_recv(router, tmp, sizeof tmp, 0);
            if (m < 0)
                goto done;
            if (m == 3 && memcmp(tmp, "got", 3) == 0) {
                n_got++;
            } else if (n_ready < n_rx) { /* an early "ready" for the next rep */
                memcpy(ids[n_ready], id, (size_t)rc);
                idlen[n_ready++] = (size_t)rc;
            }
        }
        double last = 0;
        for (int i = 0; i < n_rx; i++)
            if (atomic_load(&rx[i].got_at) > last)
                last = atomic_load(&rx[i].got_at);
        if (rep > 0 && (best < 0 || last - t0 < best))
            best = last - t0;
    }
done:
    if (router)
        zmq_close(router);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < started; i++)
        if (!rx[i].ok)
            best = -1;
    if (ctx)
        zmq_ctx_term(ctx);
    return best;
}

int bench_broker_run(FILE *json)
{
    static const int sizes_mb[] = {1, 16, 64};
    static const int actors[] = {1, 2, 4};
    size_t max_n = (size_t)64 << 20;
    uint8_t *blob = malloc(max_n);
    int rc = 0;
    if (!blob)
        return -1;
    for (size_t i = 0; i < max_n; i++)
        blob[i] = (uint8_t)(i * 2654435761u >> 13);
    printf("\nweights fan-out: publish -> every actor holds the version (best of %d; raw = one zero-copy\n"
           "ZeroMQ message per actor over the same loopback, no chunking, no crc)\n",
           BB_REPS);
    printf("  %6s %6s %12s %12s %12s %8s %12s\n", "MiB", "actors", "broker ms", "(publish ms)", "raw zmq ms",
           "ratio", "broker MB/s");
    for (size_t s = 0; s < sizeof sizes_mb / sizeof sizes_mb[0]; s++) {
        for (size_t a = 0; a < sizeof actors / sizeof actors[0]; a++) {
            size_t n = (size_t)sizes_mb[s] << 20;
            double pub_s = 0;
            double t = bb_broker_fanout(blob, n, actors[a], &pub_s);
            double r = bb_raw_fanout(blob, n, actors[a]);
            if (t < 0 || r < 0) {
                log_error("bench_broker: %d MiB x %d actors failed (broker %.3f, raw %.3f)", sizes_mb[s],
                          actors[a], t, r);
                rc = -1;
                continue;
            }
            double mbps = (double)n * actors[a] / t / 1e6;
            printf("  %6d %6d %12.2f %12.2f %12.2f %8.2f %12.0f\n", sizes_mb[s], actors[a], t * 1e3,
                   pub_s * 1e3, r * 1e3, t / r, mbps);
            if (json) {
                fprintf(json,
                        "{\"impl\":\"crl\",\"workload\":\"broker_fanout\",\"mib\":%d,\"actors\":%d,"
                        "\"broker_ms\":%.3f,\"publish_ms\":%.3f,\"raw_zmq_ms\":%.3f,\"ratio\":%.3f,"
                        "\"broker_mb_per_s\":%.1f}\n",
                        sizes_mb[s], actors[a], t * 1e3, pub_s * 1e3, r * 1e3, t / r, mbps);
                fflush(json);
            }
        }
    }
    fflush(stdout);
    free(blob);
    return rc;
}
