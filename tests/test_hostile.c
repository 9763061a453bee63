/* Hostile peers (issue 7): a test client speaks to the learner's work
 * socket and the broker's publish and fetch sockets with malformed
 * envelopes (garbage bytes, wrong frame counts), oversized frames, a wrong
 * protocol version, unexpected message types, groups for grants never
 * given, duplicate groups, wrong sample counts, out-of-range tokens and NaN
 * log-probs, while a real run (crl-broker, crl-learner rl, one crl-actor;
 * tiny model, ipc:// endpoints) goes on. Each case must be refused with a
 * counter and a log line, and the run must finish unharmed with its
 * accounting balanced. */
#include "harness.h"

#include <inttypes.h>
#include <math.h>
#include <zmq.h>

#include "wire.h"

static void fini(void) { h_kill_all(); }

#define MAX_MSG 2000000 /* network.max_msg_bytes of this test (weights are ~190 KB) */

/* ------------------------------------------------------------ client */

static void *dealer(void *ctx, const char *ep, const char *id)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    cr_assert_not_null(s);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
    if (id)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, id, strlen(id));
    cr_assert_eq(zmq_connect(s, ep), 0, "connect %s: %s", ep, zmq_strerror(errno));
    return s;
}

/* Sends frames (NULL-terminated pairs of pointer and length). */
static void send_frames(void *s, int n, const void *const *data, const size_t *len)
{
    for (int i = 0; i < n; i++) {
        int rc = zmq_send(s, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0);
        cr_assert_geq(rc, 0, "zmq_send: %s", zmq_strerror(errno));
    }
}

static void send_env(void *s, const Crl__Envelope *env, const void *raw, size_t raw_len)
{
    size_t n;
    uint8_t *buf = wire_encode(env, &n);
    cr_assert_not_null(buf);
    const void *d[2] = {buf, raw};
    size_t l[2] = {n, raw_len};
    send_frames(s, raw ? 2 : 1, d, l);
    free(buf);
}

/* Next envelope of the wanted body from a DEALER (others are skipped);
 * NULL after timeout_ms. raw (may be NULL) gets a raw frame. */
static Crl__Envelope *recv_body(void *s, int body, int timeout_ms, zmq_msg_t *raw)
{
    wire_limits_t lim;
    wire_limits_default(&lim);
    double end = h_now() + timeout_ms / 1000.0;
    while (h_now() < end) {
        Crl__Envelope *env = NULL;
        zmq_msg_t r;
        int rc = wire_recv(s, 0, 50, &lim, NULL, NULL, &env, &r, NULL, 0);
        if (rc == 1 && (int)env->body_case == body) {
            if (raw)
                zmq_msg_move(raw, &r);
            zmq_msg_close(&r);
            return env;
        }
        zmq_msg_close(&r);
        if (rc == 1)
            wire_envelope_free(&env);
    }
    return NULL;
}

static void send_hello(void *s, const char *id)
{
    Crl__Envelope env;
    Crl__Hello h;
    wire_envelope_init(&env);
    crl__hello__init(&h);
    h.actor_id = (char *)id;
    h.hostname = (char *)"hostile";
    h.pid = 4242;
    h.n_threads = 1;
    env.body_case = CRL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    send_env(s, &env, NULL, 0);
}

static void send_work_request(void *s, uint32_t credits)
{
    Crl__Envelope env;
    Crl__WorkRequest w;
    wire_envelope_init(&env);
    crl__work_request__init(&w);
    w.credits = credits;
    env.body_case = CRL__ENVELOPE__BODY_WORK_REQUEST;
    env.work_request = &w;
    send_env(s, &env, NULL, 0);
}

/* A group that answers grant g as a well-behaved actor would (tokens and
 * log-probs in range, the grant's prompt, its minimum version), then
 * spoiled by the caller. */
typedef struct {
    Crl__TrajectoryGroup g;
    Crl__Sample s[64];
    Crl__Sample *sp[64];
    int32_t tok[64][4];
    float lp[64][4];
} group_t;

static void group_for(group_t *t, const Crl__WorkGrant *g, const char *actor, uint64_t group_id)
{
    memset(t, 0, sizeof(*t));
    crl__trajectory_group__init(&t->g);
    t->g.actor_id = (char *)actor;
    t->g.group_id = group_id;
    t->g.grant_id = g->grant_id;
    t->g.prompt_id = g->prompt_id;
    t->g.weights_version = g->min_weights_version;
    t->g.n_prompt_tokens = g->n_prompt_tokens;
    t->g.prompt_tokens = g->prompt_tokens;
    t->g.n_prompt_tokens_alt = g->n_prompt_tokens_alt;
    t->g.prompt_tokens_alt = g->prompt_tokens_alt;
    t->g.group_size = g->group_size;
    t->g.generation_seconds = 0.01;
    cr_assert_leq(g->group_size, 64);
    for (uint32_t i = 0; i < g->group_size; i++) {
        crl__sample__init(&t->s[i]);
        for (int k = 0; k < 4; k++) {
            t->tok[i][k] = 10 + k;
            t->lp[i][k] = -1.5f;
        }
        t->s[i].n_tokens = t->s[i].n_logprobs = 4;
        t->s[i].tokens = t->tok[i];
        t->s[i].logprobs = t->lp[i];
        t->s[i].prompt_index = i >= g->group_size - g->alt_count ? 1 : 0;
        t->sp[i] = &t->s[i];
    }
    t->g.n_samples = g->group_size;
    t->g.samples = t->sp;
}

static void send_group(void *s, group_t *t)
{
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
    env.trajectory_group = &t->g;
    send_env(s, &env, NULL, 0);
}

/* The Ack for group_id: its DropReason (0 = accepted); -1 on timeout. */
static int ack_of(void *s, uint64_t group_id, int timeout_ms)
{
    double end = h_now() + timeout_ms / 1000.0;
    while (h_now() < end) {
        Crl__Envelope *env = recv_body(s, CRL__ENVELOPE__BODY_ACK, 100, NULL);
        if (!env)
            continue;
        int found = -1;
        for (size_t i = 0; i < env->ack->n_entries; i++)
            if (env->ack->entries[i]->group_id == group_id)
                found = env->ack->entries[i]->status == CRL__ACK_STATUS__ACK_STATUS_ACCEPTED
                            ? 0
                            : (int)env->ack->entries[i]->reason;
        wire_envelope_free(&env);
        if (found >= 0)
            return found;
    }
    return -1;
}

static unsigned long long counter(const char *line, const char *key)
{
    const char *p = line ? strstr(line, key) : NULL;
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

/* ------------------------------------------------------------ the test */

Test(hostile, learner_and_broker_refuse_bad_peers_run_unharmed, .fini = fini)
{
    h_setup("hostile");
    const int steps = 10;
    char mm[64];
    snprintf(mm, sizeof(mm), "network.max_msg_bytes=%d", MAX_MSG);
    const char *extra[] = {mm, NULL};
    pid_t lp = h_start_learner("learner", steps, 0, extra);
    h_args_t ba;
    h_common_args(&ba, NULL, 1, 0, extra);
    pid_t bp = h_spawn("crl-broker", "broker", ba.argv);

    void *ctx = zmq_ctx_new();
    void *evil = dealer(ctx, H.ep[0], "evil");
    int cases = 0;

    /* -- learner work socket -- */
    /* 1. garbage bytes */
    static const char garbage[] = "\xff\xfe\x00garbage, not a protobuf Envelope\x07\x07";
    const void *d1[1] = {garbage};
    size_t l1[1] = {sizeof(garbage)};
    send_frames(evil, 1, d1, l1);
    cases++;
    /* 2. wrong frame count: envelope + 2 extra frames */
    const void *d3[3] = {garbage, garbage, garbage};
    size_t l3[3] = {4, 4, 4};
    send_frames(evil, 3, d3, l3);
    cases++;
    /* 3. wrong protocol version */
    {
        Crl__Envelope env;
        Crl__Hello h;
        wire_envelope_init(&env);
        crl__hello__init(&h);
        h.actor_id = (char *)"evil";
        env.protocol_version = 99;
        env.body_case = CRL__ENVELOPE__BODY_HELLO;
        env.hello = &h;
        send_env(evil, &env, NULL, 0);
        cases++;
    }
    /* 4. a message type the work socket does not take */
    {
        Crl__Envelope env;
        Crl__WeightsAnnounce a;
        wire_envelope_init(&env);
        crl__weights_announce__init(&a);
        a.version = 7;
        a.total_bytes = 4;
        env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
        env.weights_announce = &a;
        send_env(evil, &env, NULL, 0);
        cases++;
    }
    /* 5. an oversized frame (above ZMQ_MAXMSGSIZE: libzmq drops the
     * connection; the client reconnects) */
    {
        size_t big = MAX_MSG + 1000;
        char *b = calloc(1, big);
        const void *d[1] = {b};
        size_t l[1] = {big};
        send_frames(evil, 1, d, l);
        free(b);
        cases++;
        h_sleep_ms(300);
    }

    /* a proper session: Hello, two grants */
    send_hello(evil, "evil");
    Crl__Envelope *wel = recv_body(evil, CRL__ENVELOPE__BODY_WELCOME, 30000, NULL);
    cr_assert_not_null(wel, "no Welcome for the hostile client");
    uint32_t vocab = wel->welcome->vocab_size;
    wire_envelope_free(&wel);
    send_work_request(evil, 2);
    Crl__Envelope *g1 = recv_body(evil, CRL__ENVELOPE__BODY_WORK_GRANT, 30000, NULL);
    cr_assert_not_null(g1, "no grant for the hostile client (is the broker up?)");
    Crl__Envelope *g2 = recv_body(evil, CRL__ENVELOPE__BODY_WORK_GRANT, 30000, NULL);
    cr_assert_not_null(g2, "no second grant for the hostile client");
    /* the real actor joins now, so that the run goes on beside what follows */
    h_start_actor("real1", "real1");

    static group_t t;
    uint64_t gid = 100;
    /* 6. a group for a grant never given */
    group_for(&t, g1->work_grant, "evil", gid);
    t.g.grant_id = 987654321;
    send_group(evil, &t);
    int r6 = ack_of(evil, gid++, 10000);
    cr_assert_eq(r6, CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT, "never-granted group: ack %d", r6);
    cases++;
    /* 7. a valid group, then the same again (duplicate), then another
     * group id for the same grant (already answered) */
    group_for(&t, g1->work_grant, "evil", gid);
    send_group(evil, &t);
    int r7 = ack_of(evil, gid, 10000);
    cr_assert_eq(r7, 0, "a well-formed group for a real grant was refused (reason %d)", r7);
    send_group(evil, &t);
    int r7b = ack_of(evil, gid++, 10000);
    cr_assert_eq(r7b, CRL__DROP_REASON__DROP_REASON_DUPLICATE, "duplicate group: ack %d", r7b);
    t.g.group_id = gid;
    send_group(evil, &t);
    int r7c = ack_of(evil, gid++, 10000);
    cr_assert_eq(r7c, CRL__DROP_REASON__DROP_REASON_DUPLICATE, "second answer to a grant: ack %d",
                 r7c);
    cases += 2;
    /* 8. out-of-range token (wire validation: no ack, counted invalid) */
    group_for(&t, g2->work_grant, "evil", gid++);
    t.tok[0][1] = (int32_t)vocab + 5;
    send_group(evil, &t);
    /* 9. NaN log-prob */
    group_for(&t, g2->work_grant, "evil", gid++);
    t.lp[1][2] = NAN;
    send_group(evil, &t);
    /* 10. sample count differs from group_size (wire) */
    group_for(&t, g2->work_grant, "evil", gid++);
    t.g.n_samples = t.g.group_size - 1;
    send_group(evil, &t);
    /* 11. positive log-prob (not a probability) */
    group_for(&t, g2->work_grant, "evil", gid++);
    t.lp[0][0] = 3.0f;
    send_group(evil, &t);
    cases += 4;
    /* 12. group size differs from the grant's (consistent message: the
     * learner's check) */
    group_for(&t, g2->work_grant, "evil", gid);
    t.g.group_size = t.g.n_samples = g2->work_grant->group_size - 1;
    send_group(evil, &t);
    int r12 = ack_of(evil, gid++, 10000);
    cr_assert_eq(r12, CRL__DROP_REASON__DROP_REASON_WRONG_PROMPT, "wrong group size: ack %d", r12);
    cases++;
    /* 13. a group claiming another actor's id */
    group_for(&t, g2->work_grant, "someone-else", gid);
    send_group(evil, &t);
    int r13 = ack_of(evil, gid++, 10000);
    cr_assert_eq(r13, CRL__DROP_REASON__DROP_REASON_MALFORMED, "foreign actor id: ack %d", r13);
    cases++;
    wire_envelope_free(&g1);
    wire_envelope_free(&g2);

    /* -- broker publish and fetch sockets -- */
    void *pub = dealer(ctx, H.ep[1], "evil-pub");
    void *fet = dealer(ctx, H.ep[3], "evil-fetch");
    send_frames(pub, 1, d1, l1); /* garbage: refused with a PublishAck */
    Crl__Envelope *pa = recv_body(pub, CRL__ENVELOPE__BODY_PUBLISH_ACK, 10000, NULL);
    cr_assert_not_null(pa, "no PublishAck for garbage");
    cr_assert(!pa->publish_ack->ok, "garbage publish acknowledged as ok");
    wire_envelope_free(&pa);
    cases++;
    {
        /* wrong protocol version */
        Crl__Envelope env;
        Crl__WeightsPublish wp;
        wire_envelope_init(&env);
        crl__weights_publish__init(&wp);
        uint8_t blob[64] = {1, 2, 3};
        wp.version = 1000;
        wp.total_bytes = sizeof(blob);
        wp.crc32c = 0;
        wp.layout = (char *)"opaque";
        env.protocol_version = 2;
        env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
        env.weights_publish = &wp;
        send_env(pub, &env, blob, sizeof(blob));
        pa = recv_body(pub, CRL__ENVELOPE__BODY_PUBLISH_ACK, 10000, NULL);
        cr_assert(pa && !pa->publish_ack->ok, "wrong-version publish not refused");
        wire_envelope_free(&pa);
        /* raw frame shorter than total_bytes */
        env.protocol_version = CRL_PROTOCOL_VERSION;
        send_env(pub, &env, blob, 10);
        pa = recv_body(pub, CRL__ENVELOPE__BODY_PUBLISH_ACK, 10000, NULL);
        cr_assert(pa && !pa->publish_ack->ok, "short raw frame not refused");
        wire_envelope_free(&pa);
        /* crc32c that does not match the bytes (a huge version: it must
         * not replace the run's weights) */
        wp.crc32c = 0xdeadbeef;
        send_env(pub, &env, blob, sizeof(blob));
        pa = recv_body(pub, CRL__ENVELOPE__BODY_PUBLISH_ACK, 10000, NULL);
        cr_assert(pa && !pa->publish_ack->ok, "bad-crc publish not refused");
        cr_assert(pa->publish_ack->error && strstr(pa->publish_ack->error, "crc32c"),
                  "refusal does not name the crc: %s", pa->publish_ack->error);
        wire_envelope_free(&pa);
        cases += 3;
    }
    {
        /* fetch socket: garbage, a range past the end, a version from the future */
        send_frames(fet, 1, d1, l1);
        Crl__Envelope env;
        Crl__WeightsFetch f;
        wire_envelope_init(&env);
        crl__weights_fetch__init(&f);
        f.version = 1;
        f.offset = 1u << 30;
        f.length = 16;
        env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
        env.weights_fetch = &f;
        send_env(fet, &env, NULL, 0);
        Crl__Envelope *ch = recv_body(fet, CRL__ENVELOPE__BODY_WEIGHTS_CHUNK, 10000, NULL);
        cr_assert_not_null(ch, "no reply to an out-of-range fetch");
        cr_assert(ch->weights_chunk->status == CRL__CHUNK_STATUS__CHUNK_STATUS_BAD_RANGE ||
                      ch->weights_chunk->status == CRL__CHUNK_STATUS__CHUNK_STATUS_GONE,
                  "out-of-range fetch answered with status %d", ch->weights_chunk->status);
        wire_envelope_free(&ch);
        f.version = 1000000;
        f.offset = 0;
        send_env(fet, &env, NULL, 0);
        ch = recv_body(fet, CRL__ENVELOPE__BODY_WEIGHTS_CHUNK, 10000, NULL);
        cr_assert(ch && ch->weights_chunk->status == CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION,
                  "future version not answered UNKNOWN_VERSION");
        wire_envelope_free(&ch);
        cases += 3;
    }
    zmq_close(evil);
    zmq_close(pub);
    zmq_close(fet);
    zmq_ctx_term(ctx);

    /* -- the run finishes unharmed -- */
    int rc = h_wait_exit(lp, 120);
    char *l = h_read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    int st[64];
    int n = h_metrics_steps(st, 64);
    cr_assert_eq(n, steps, "metrics.jsonl has %d lines, expected %d", n, steps);
    h_acct_t a = h_accounting("learner");
    cr_assert(a.balanced, "accounting does not balance:\n%s", l);
    cr_assert_eq(a.used, (unsigned long long)steps * 2, "used %llu", a.used);
    cr_assert_geq(a.by_reason[4], 1, "no unknown_grant drop counted");
    cr_assert_geq(a.by_reason[3], 2, "duplicates counted %llu, expected >= 2", a.by_reason[3]);
    cr_assert_geq(a.by_reason[6], 1, "no wrong_prompt drop counted");
    cr_assert_geq(a.by_reason[2], 1, "no malformed drop counted");
    /* wire-level refusals: the work socket's counters and their log lines */
    const char *ws = NULL, *q = l;
    while ((q = strstr(q, "work socket: recv=")) != NULL)
        ws = q++;
    cr_assert_not_null(ws, "no work socket counters line");
    unsigned long long w_mal = counter(ws, "malformed="), w_ver = counter(ws, "bad_version="),
                       w_inv = counter(ws, "invalid=");
    cr_assert_geq(w_mal, 3, "work socket malformed=%llu, expected >= 3 (garbage, 3 frames, "
                  "unexpected type)", w_mal);
    cr_assert_geq(w_ver, 1, "work socket bad_version=%llu", w_ver);
    cr_assert_geq(w_inv, 4, "work socket invalid=%llu, expected >= 4 (token, NaN, count, logprob > 0)",
                  w_inv);
    static const char *const lines[] = {
        "is not a valid protobuf Envelope", "message of 4 frames", "protocol version 99",
        "unexpected weights_announce", "is outside [0,", "is not a finite value <= 0",
        "samples, group_size is", "dropped (unknown_grant)", "dropped (duplicate)",
        "dropped (wrong_prompt)", "dropped (malformed): actor_id \"someone-else\""};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        cr_assert(strstr(l, lines[i]), "no log line with \"%s\" in the learner's log", lines[i]);
    free(l);

    /* the real actor: every group it made was acked (accepted or dropped) */
    h_wait_log("real1", "final: groups generated=", 30);
    char *al = h_read_log("real1");
    unsigned long long gen = 0, sent = 0, resent = 0, acked = 0, dropped = 0, lost = 0;
    int k = h_scan_last(al, "final: groups generated=",
                        "final: groups generated=%llu sent=%llu resent=%llu acked=%llu "
                        "dropped-by-learner=%llu unacked-lost=%llu",
                        &gen, &sent, &resent, &acked, &dropped, &lost);
    cr_assert_eq(k, 6, "actor final line:\n%s", al);
    /* unacked at the end: at most the group that was being made when the
     * learner said its final Bye (the run was over; the actor reports it) */
    cr_assert_leq(lost, 1, "the real actor ended with %llu unacked groups", lost);
    cr_assert_eq(acked + dropped + lost, gen,
                 "real actor: generated %llu, acked %llu + dropped %llu + unacked at the end %llu",
                 gen, acked, dropped, lost);
    free(al);

    h_signal(bp, SIGTERM);
    cr_assert_eq(h_wait_exit(bp, 20), 0, "broker did not exit 0");
    char *bl = h_read_log("broker");
    const char *bs = strstr(bl, "broker stopped:");
    cr_assert_not_null(bs, "no broker counters line:\n%s", bl);
    unsigned long long b_mal = counter(bs, "malformed="), b_ref = counter(bs, "publishes_refused="),
                       b_range = counter(bs, "bad_range="), b_unk = counter(bs, "unknown_version="),
                       b_gone = counter(bs, "gone=");
    cr_assert_geq(b_mal, 3, "broker malformed=%llu, expected >= 3", b_mal);
    cr_assert_geq(b_ref, 1, "broker publishes_refused=%llu", b_ref);
    cr_assert_geq(b_range + b_gone, 1, "broker bad_range=%llu gone=%llu", b_range, b_gone);
    cr_assert_geq(b_unk, 1, "broker unknown_version=%llu", b_unk);
    cr_assert(strstr(bl, "crc32c mismatch"), "no crc refusal line in the broker's log");
    cr_assert(strstr(bl, "protocol version 2"), "no wrong-version line in the broker's log");
    free(bl);
    char left[512];
    cr_assert_eq(h_leftovers(30, left, sizeof(left)), 0, "processes left running:%s", left);
    fprintf(stderr,
            "hostile: %d cases refused; learner work socket malformed=%llu bad_version=%llu "
            "invalid=%llu; drops unknown_grant=%llu duplicate=%llu wrong_prompt=%llu "
            "malformed=%llu; broker malformed=%llu publishes_refused=%llu bad_range+gone=%llu "
            "unknown_version=%llu; run: %d steps, %llu groups used, balanced\n",
            cases, w_mal, w_ver, w_inv, a.by_reason[4], a.by_reason[3], a.by_reason[6],
            a.by_reason[2], b_mal, b_ref, b_range + b_gone, b_unk, steps, a.used);
}
