#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rng.h"
#include "wire.h"

/* Small limits so that each bound is easy to cross. */
static wire_limits_t test_limits(void)
{
    wire_limits_t l;
    wire_limits_default(&l);
    l.vocab_size = 1000;
    l.max_prompt_tokens = 64;
    l.max_new_tokens = 16;
    l.max_group_size = 8;
    l.image_size = 4;
    return l;
}

/* A valid TrajectoryGroup of G samples (owned by the static storage of the
 * caller's struct; nothing is malloc'd). */
typedef struct {
    Crl__TrajectoryGroup g;
    Crl__Sample s[4];
    Crl__Sample *sp[4];
    int32_t prompt[6];
    int32_t tok[4][3];
    float lp[4][3];
} group_fixture_t;

static void group_fixture(group_fixture_t *f)
{
    memset(f, 0, sizeof *f);
    crl__trajectory_group__init(&f->g);
    f->g.actor_id = "actor-1";
    f->g.group_id = 42;
    f->g.grant_id = 7;
    f->g.prompt_id = "critic-000123";
    f->g.weights_version = 3;
    int32_t prompt[6] = { 1, -1, -1, 5, 999, 0 };
    memcpy(f->prompt, prompt, sizeof prompt);
    f->g.prompt_tokens = f->prompt;
    f->g.n_prompt_tokens = 6;
    f->g.group_size = 4;
    f->g.generation_seconds = 1.25;
    for (int i = 0; i < 4; i++) {
        crl__sample__init(&f->s[i]);
        for (int t = 0; t < 3; t++) {
            f->tok[i][t] = 10 * i + t;
            f->lp[i][t] = -0.5f * (float)(t + 1) - (float)i;
        }
        f->s[i].tokens = f->tok[i];
        f->s[i].n_tokens = 3;
        f->s[i].logprobs = f->lp[i];
        f->s[i].n_logprobs = 3;
        f->s[i].finished_by_eos = i % 2;
        f->sp[i] = &f->s[i];
    }
    f->g.samples = f->sp;
    f->g.n_samples = 4;
}

typedef struct {
    Crl__WorkGrant w;
    int32_t prompt[5];
    uint8_t image[3 * 4 * 4];
} grant_fixture_t;

static void grant_fixture(grant_fixture_t *f)
{
    memset(f, 0, sizeof *f);
    crl__work_grant__init(&f->w);
    f->w.grant_id = 99;
    f->w.prompt_id = "p-1";
    f->w.task_kind = CRL__TASK_KIND__TASK_KIND_CRITIC;
    int32_t prompt[5] = { 2, -1, -1, -1, 3 };
    memcpy(f->prompt, prompt, sizeof prompt);
    f->w.prompt_tokens = f->prompt;
    f->w.n_prompt_tokens = 5;
    for (size_t i = 0; i < sizeof f->image; i++)
        f->image[i] = (uint8_t)(i * 7);
    f->w.image.data = f->image;
    f->w.image.len = sizeof f->image;
    f->w.image_size = 4;
    f->w.group_size = 8;
    f->w.temperature = 1.0f;
    f->w.top_p = 0.99f;
    f->w.max_new_tokens = 16;
    f->w.min_weights_version = 2;
    f->w.seed = 0xdeadbeefcafeULL;
}

/* Encodes env, decodes it back with the test limits; asserts success. */
static Crl__Envelope *roundtrip(const Crl__Envelope *env)
{
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256] = "";
    size_t len = 0;
    uint8_t *buf = wire_encode(env, &len);
    cr_assert_not_null(buf);
    Crl__Envelope *out = wire_decode(buf, len, &lim, &c, err, sizeof err);
    free(buf);
    cr_assert_not_null(out, "round trip of %s failed: %s", wire_body_name(env), err);
    cr_assert_eq(out->body_case, env->body_case, "body %d came back as %d", env->body_case,
                 out->body_case);
    cr_assert_eq(c.accepted, 1);
    return out;
}

/* Decodes env and expects it refused as invalid with err containing
 * `needle`. */
static void expect_invalid(const Crl__Envelope *env, const char *needle)
{
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256] = "";
    size_t len = 0;
    uint8_t *buf = wire_encode(env, &len);
    cr_assert_not_null(buf);
    Crl__Envelope *out = wire_decode(buf, len, &lim, &c, err, sizeof err);
    free(buf);
    cr_assert_null(out, "%s was accepted, expected a refusal mentioning \"%s\"",
                   wire_body_name(env), needle);
    cr_assert_eq(c.invalid, 1, "invalid counter: expected 1, got %lu (err: %s)",
                 (unsigned long)c.invalid, err);
    cr_assert_eq(c.received, 1);
    cr_assert_eq(c.malformed + c.bad_version + c.accepted, 0);
    cr_assert(strstr(err, needle), "error \"%s\" does not mention \"%s\"", err, needle);
}

Test(wire, roundtrip_work_socket_messages)
{
    Crl__Envelope env;
    Crl__Envelope *out;

    /* Hello */
    Crl__Hello h = CRL__HELLO__INIT;
    uint64_t unacked[3] = { 5, 6, 9 };
    h.actor_id = "actor-3";
    h.hostname = "node17";
    h.pid = 4242;
    h.n_threads = 2;
    h.unacked_group_ids = unacked;
    h.n_unacked_group_ids = 3;
    h.weights_version = 12;
    h.next_group_id = 10;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    out = roundtrip(&env);
    cr_assert_str_eq(out->hello->actor_id, "actor-3");
    cr_assert_str_eq(out->hello->hostname, "node17");
    cr_assert_eq(out->hello->pid, 4242);
    cr_assert_eq(out->hello->n_threads, 2);
    cr_assert_eq(out->hello->n_unacked_group_ids, 3);
    cr_assert_eq(out->hello->unacked_group_ids[2], 9);
    cr_assert_eq(out->hello->weights_version, 12);
    cr_assert_eq(out->hello->next_group_id, 10);
    wire_envelope_free(&out);
    cr_assert_null(out);

    /* Welcome */
    Crl__Welcome w = CRL__WELCOME__INIT;
    w.run_id = "run-a";
    w.heartbeat_ms = 500;
    w.heartbeat_timeout_ms = 5000;
    w.max_staleness = 2;
    w.current_version = 77;
    w.actor_index = 3;
    w.config_digest = "c0ffee";
    w.vocab_size = 1000;
    w.image_size = 4;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    out = roundtrip(&env);
    cr_assert_str_eq(out->welcome->run_id, "run-a");
    cr_assert_eq(out->welcome->heartbeat_ms, 500);
    cr_assert_eq(out->welcome->heartbeat_timeout_ms, 5000);
    cr_assert_eq(out->welcome->max_staleness, 2);
    cr_assert_eq(out->welcome->current_version, 77);
    cr_assert_eq(out->welcome->actor_index, 3);
    cr_assert_str_eq(out->welcome->config_digest, "c0ffee");
    wire_envelope_free(&out);

    /* WorkRequest */
    Crl__WorkRequest wr = CRL__WORK_REQUEST__INIT;
    wr.credits = 3;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_REQUEST;
    env.work_request = &wr;
    out = roundtrip(&env);
    cr_assert_eq(out->work_request->credits, 3);
    wire_envelope_free(&out);

    /* WorkGrant */
    grant_fixture_t gf;
    grant_fixture(&gf);
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    env.work_grant = &gf.w;
    out = roundtrip(&env);
    const Crl__WorkGrant *og = out->work_grant;
    cr_assert_eq(og->grant_id, 99);
    cr_assert_str_eq(og->prompt_id, "p-1");
    cr_assert_eq(og->task_kind, CRL__TASK_KIND__TASK_KIND_CRITIC);
    cr_assert_eq(og->n_prompt_tokens, 5);
    cr_assert_arr_eq(og->prompt_tokens, gf.prompt, sizeof gf.prompt);
    cr_assert_eq(og->image.len, sizeof gf.image);
    cr_assert_arr_eq(og->image.data, gf.image, sizeof gf.image);
    cr_assert_eq(og->image_size, 4);
    cr_assert_eq(og->group_size, 8);
    cr_assert_eq(og->temperature, 1.0f);
    cr_assert_eq(og->top_p, 0.99f);
    cr_assert_eq(og->max_new_tokens, 16);
    cr_assert_eq(og->min_weights_version, 2);
    cr_assert_eq(og->seed, 0xdeadbeefcafeULL);
    wire_envelope_free(&out);

    /* TrajectoryGroup: every token and log-prob bit-exact */
    group_fixture_t f;
    group_fixture(&f);
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
    env.trajectory_group = &f.g;
    out = roundtrip(&env);
    const Crl__TrajectoryGroup *g = out->trajectory_group;
    cr_assert_str_eq(g->actor_id, "actor-1");
    cr_assert_eq(g->group_id, 42);
    cr_assert_eq(g->grant_id, 7);
    cr_assert_str_eq(g->prompt_id, "critic-000123");
    cr_assert_eq(g->weights_version, 3);
    cr_assert_arr_eq(g->prompt_tokens, f.prompt, sizeof f.prompt);
    cr_assert_eq(g->n_samples, 4);
    cr_assert_eq(g->generation_seconds, 1.25);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(g->samples[i]->n_tokens, 3);
        cr_assert_arr_eq(g->samples[i]->tokens, f.tok[i], sizeof f.tok[i]);
        cr_assert_arr_eq(g->samples[i]->logprobs, f.lp[i], sizeof f.lp[i]);
        cr_assert_eq(g->samples[i]->finished_by_eos, (protobuf_c_boolean)(i % 2));
    }
    wire_envelope_free(&out);

    /* Ack */
    Crl__AckEntry e1 = CRL__ACK_ENTRY__INIT, e2 = CRL__ACK_ENTRY__INIT;
    Crl__AckEntry *ents[2] = { &e1, &e2 };
    e1.group_id = 5;
    e1.status = CRL__ACK_STATUS__ACK_STATUS_ACCEPTED;
    e2.group_id = 6;
    e2.status = CRL__ACK_STATUS__ACK_STATUS_DROPPED;
    e2.reason = CRL__DROP_REASON__DROP_REASON_STALE;
    Crl__Ack ack = CRL__ACK__INIT;
    ack.entries = ents;
    ack.n_entries = 2;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_ACK;
    env.ack = &ack;
    out = roundtrip(&env);
    cr_assert_eq(out->ack->n_entries, 2);
    cr_assert_eq(out->ack->entries[1]->group_id, 6);
    cr_assert_eq(out->ack->entries[1]->status, CRL__ACK_STATUS__ACK_STATUS_DROPPED);
    cr_assert_eq(out->ack->entries[1]->reason, CRL__DROP_REASON__DROP_REASON_STALE);
    wire_envelope_free(&out);

    /* Heartbeat */
    Crl__Heartbeat hb = CRL__HEARTBEAT__INIT;
    hb.sent_unix_ms = 1700000000123ULL;
    hb.state = CRL__ACTOR_STATE__ACTOR_STATE_GENERATING;
    hb.weights_version = 4;
    hb.unacked_groups = 2;
    hb.open_grants = 1;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    out = roundtrip(&env);
    cr_assert_eq(out->heartbeat->sent_unix_ms, 1700000000123ULL);
    cr_assert_eq(out->heartbeat->state, CRL__ACTOR_STATE__ACTOR_STATE_GENERATING);
    cr_assert_eq(out->heartbeat->unacked_groups, 2);
    wire_envelope_free(&out);

    /* Bye */
    Crl__Bye bye = CRL__BYE__INIT;
    bye.reason = "SIGTERM";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_BYE;
    env.bye = &bye;
    out = roundtrip(&env);
    cr_assert_str_eq(out->bye->reason, "SIGTERM");
    wire_envelope_free(&out);
}

Test(wire, roundtrip_weights_messages)
{
    Crl__Envelope env;
    Crl__Envelope *out;

    Crl__WeightsPublish p = CRL__WEIGHTS_PUBLISH__INIT;
    p.version = 5;
    p.total_bytes = 1 << 20;
    p.crc32c = 0x12345678;
    p.layout = "f32le;tensor-table-v1";
    p.learner_step = 4;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
    env.weights_publish = &p;
    cr_assert_eq(wire_body_has_raw(&env), 1);
    out = roundtrip(&env);
    cr_assert_eq(out->weights_publish->version, 5);
    cr_assert_eq(out->weights_publish->total_bytes, 1 << 20);
    cr_assert_eq(out->weights_publish->crc32c, 0x12345678);
    cr_assert_str_eq(out->weights_publish->layout, "f32le;tensor-table-v1");
    cr_assert_eq(out->weights_publish->learner_step, 4);
    wire_envelope_free(&out);

    Crl__PublishAck pa = CRL__PUBLISH_ACK__INIT;
    pa.version = 5;
    pa.ok = 1;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_PUBLISH_ACK;
    env.publish_ack = &pa;
    out = roundtrip(&env);
    cr_assert_eq(out->publish_ack->version, 5);
    cr_assert(out->publish_ack->ok);
    wire_envelope_free(&out);

    Crl__WeightsAnnounce a = CRL__WEIGHTS_ANNOUNCE__INIT;
    a.version = 6;
    a.total_bytes = 1000;
    a.crc32c = 0xABCDEF01;
    a.layout = "f32le";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
    env.weights_announce = &a;
    out = roundtrip(&env);
    cr_assert_eq(out->weights_announce->version, 6);
    cr_assert_eq(out->weights_announce->total_bytes, 1000);
    cr_assert_eq(out->weights_announce->crc32c, 0xABCDEF01);
    wire_envelope_free(&out);

    Crl__WeightsFetch fe = CRL__WEIGHTS_FETCH__INIT;
    fe.version = 6;
    fe.offset = 512;
    fe.length = 256;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &fe;
    out = roundtrip(&env);
    cr_assert_eq(out->weights_fetch->version, 6);
    cr_assert_eq(out->weights_fetch->offset, 512);
    cr_assert_eq(out->weights_fetch->length, 256);
    wire_envelope_free(&out);

    Crl__WeightsChunk ch = CRL__WEIGHTS_CHUNK__INIT;
    ch.version = 6;
    ch.offset = 512;
    ch.length = 256;
    ch.total_bytes = 1000;
    ch.crc32c = 0xABCDEF01;
    ch.status = CRL__CHUNK_STATUS__CHUNK_STATUS_OK;
    ch.latest_version = 6;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_CHUNK;
    env.weights_chunk = &ch;
    cr_assert_eq(wire_body_has_raw(&env), 1);
    out = roundtrip(&env);
    cr_assert_eq(out->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_OK);
    cr_assert_eq(out->weights_chunk->offset, 512);
    cr_assert_eq(out->weights_chunk->total_bytes, 1000);
    wire_envelope_free(&out);

    /* A GONE chunk carries no raw frame and needs no valid range. */
    ch.status = CRL__CHUNK_STATUS__CHUNK_STATUS_GONE;
    ch.offset = 5000;
    ch.latest_version = 9;
    cr_assert_eq(wire_body_has_raw(&env), 0);
    out = roundtrip(&env);
    cr_assert_eq(out->weights_chunk->status, CRL__CHUNK_STATUS__CHUNK_STATUS_GONE);
    cr_assert_eq(out->weights_chunk->latest_version, 9);
    wire_envelope_free(&out);
}

/* 20000 random buffers (lengths 0..300, some starting with a plausible
 * version field) never crash the decoder, and every decode lands in
 * exactly one counter. */
Test(wire, random_garbage_never_crashes)
{
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256];
    uint8_t buf[300];
    rng_t r;
    rng_seed(&r, 2024);
    int n = 20000;
    for (int i = 0; i < n; i++) {
        size_t len = rng_below(&r, sizeof buf + 1);
        for (size_t k = 0; k < len; k++)
            buf[k] = (uint8_t)rng_u32(&r);
        if (len >= 2 && (i & 1)) { /* field 1 varint = 1, then a body tag */
            buf[0] = 0x08;
            buf[1] = 0x01;
        }
        Crl__Envelope *e = wire_decode(buf, len, &lim, &c, err, sizeof err);
        wire_envelope_free(&e);
    }
    cr_assert_eq(c.received, (uint64_t)n);
    cr_assert_eq(c.accepted + c.malformed + c.bad_version + c.invalid + c.oversized, (uint64_t)n,
                 "counters do not add up: ok=%lu malformed=%lu bad_version=%lu invalid=%lu",
                 (unsigned long)c.accepted, (unsigned long)c.malformed,
                 (unsigned long)c.bad_version, (unsigned long)c.invalid);
    cr_assert_gt(c.malformed, 0);
}

/* Every strict prefix of a valid encoding decodes without a crash, and
 * none is taken for the full message. */
Test(wire, truncated_encodings_refused_or_partial)
{
    group_fixture_t f;
    group_fixture(&f);
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
    env.trajectory_group = &f.g;
    size_t len = 0;
    uint8_t *buf = wire_encode(&env, &len);
    cr_assert_not_null(buf);
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256];
    for (size_t n = 0; n < len; n++) {
        /* A fresh heap copy so ASan sees reads past the prefix. */
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf, n);
        Crl__Envelope *e = wire_decode(p, n, &lim, &c, err, sizeof err);
        if (e) { /* a prefix cut at a field boundary: must still be valid, and smaller */
            cr_assert_eq(wire_validate(e, &lim, err, sizeof err), 0);
            wire_envelope_free(&e);
        }
        free(p);
    }
    free(buf);
    cr_assert_eq(c.received, len);
    cr_assert_eq(c.accepted + c.malformed + c.bad_version + c.invalid, len);
    /* The group is the last field: cutting into it always breaks it. */
    cr_assert_eq(c.accepted, 0, "a truncated group was accepted %lu times", (unsigned long)c.accepted);
}

Test(wire, wrong_version_and_missing_body)
{
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256] = "";
    Crl__Heartbeat hb = CRL__HEARTBEAT__INIT;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.protocol_version = 2;
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    size_t len;
    uint8_t *buf = wire_encode(&env, &len);
    Crl__Envelope *e = wire_decode(buf, len, &lim, &c, err, sizeof err);
    free(buf);
    cr_assert_null(e);
    cr_assert_eq(c.bad_version, 1);
    cr_assert(strstr(err, "version 2") && strstr(err, "speaks 1"),
              "error should name both versions, got \"%s\"", err);

    wire_envelope_init(&env); /* no body */
    buf = wire_encode(&env, &len);
    e = wire_decode(buf, len, &lim, &c, err, sizeof err);
    free(buf);
    cr_assert_null(e);
    cr_assert_eq(c.malformed, 1);
    cr_assert(strstr(err, "no body"), "got \"%s\"", err);

    /* An empty frame is version 0. */
    e = wire_decode("", 0, &lim, &c, err, sizeof err);
    cr_assert_null(e);
    cr_assert_eq(c.bad_version, 2);

    /* Above max_envelope_bytes: oversized, not even unpacked. */
    lim.max_envelope_bytes = 8;
    uint8_t big[64] = { 0 };
    e = wire_decode(big, sizeof big, &lim, &c, err, sizeof err);
    cr_assert_null(e);
    cr_assert_eq(c.oversized, 1);
    cr_assert_eq(c.received, 4);
    char line[256];
    wire_counters_format(&c, line, sizeof line);
    cr_assert(strstr(line, "bad_version=2") && strstr(line, "oversized=1"), "summary: %s", line);
}

static Crl__Envelope group_env(group_fixture_t *f)
{
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
    env.trajectory_group = &f->g;
    return env;
}

Test(wire, group_validation_failures)
{
    group_fixture_t f;
    Crl__Envelope env;

    group_fixture(&f);
    f.tok[1][2] = 1000; /* == vocab */
    env = group_env(&f);
    expect_invalid(&env, "token 2 = 1000");

    group_fixture(&f);
    f.tok[0][0] = -1; /* image slot only allowed in prompts */
    env = group_env(&f);
    expect_invalid(&env, "token 0 = -1");

    group_fixture(&f);
    f.prompt[0] = -2;
    env = group_env(&f);
    expect_invalid(&env, "prompt token 0 = -2");

    group_fixture(&f);
    f.lp[2][1] = NAN;
    env = group_env(&f);
    expect_invalid(&env, "logprob 1");

    group_fixture(&f);
    f.lp[2][1] = -INFINITY;
    env = group_env(&f);
    expect_invalid(&env, "logprob 1");

    group_fixture(&f);
    f.lp[3][0] = 1e-3f; /* > 0 beyond WIRE_LOGPROB_EPS (1e-5) */
    env = group_env(&f);
    expect_invalid(&env, "logprob 0");

    group_fixture(&f);
    f.g.n_samples = 3; /* != group_size 4 */
    env = group_env(&f);
    expect_invalid(&env, "3 samples, group_size is 4");

    group_fixture(&f);
    f.g.group_size = 9;
    f.g.n_samples = 4;
    env = group_env(&f);
    expect_invalid(&env, "group_size 9");

    group_fixture(&f);
    f.s[1].n_logprobs = 2;
    env = group_env(&f);
    expect_invalid(&env, "3 tokens but 2 logprobs");

    group_fixture(&f);
    f.g.actor_id = "";
    env = group_env(&f);
    expect_invalid(&env, "actor_id is empty");

    group_fixture(&f);
    f.g.generation_seconds = NAN;
    env = group_env(&f);
    expect_invalid(&env, "generation_seconds");

    /* The tolerated rounding: +1e-6 passes. */
    group_fixture(&f);
    f.lp[0][0] = 1e-6f;
    env = group_env(&f);
    Crl__Envelope *out = roundtrip(&env);
    wire_envelope_free(&out);
}

Test(wire, grant_and_other_validation_failures)
{
    grant_fixture_t gf;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    env.work_grant = &gf.w;

    grant_fixture(&gf);
    gf.w.image.len = 3 * 4 * 4 - 1;
    expect_invalid(&env, "expected 3*4*4 = 48");

    grant_fixture(&gf);
    gf.w.image_size = 0;
    gf.w.image.len = 0;
    expect_invalid(&env, "image slots but no image");

    grant_fixture(&gf);
    gf.w.image_size = 8; /* limits say S = 4 */
    expect_invalid(&env, "image_size 8");

    grant_fixture(&gf);
    gf.prompt[4] = 5000;
    expect_invalid(&env, "prompt token 4 = 5000");

    grant_fixture(&gf);
    gf.w.n_prompt_tokens = 0;
    expect_invalid(&env, "empty prompt");

    grant_fixture(&gf);
    gf.w.task_kind = 7;
    expect_invalid(&env, "task_kind 7");

    grant_fixture(&gf);
    gf.w.max_new_tokens = 17;
    expect_invalid(&env, "max_new_tokens 17");

    grant_fixture(&gf);
    gf.w.top_p = 0.0f;
    expect_invalid(&env, "top_p");

    grant_fixture(&gf);
    gf.w.temperature = NAN;
    expect_invalid(&env, "temperature");

    /* Prompt longer than max_prompt_tokens (64). */
    static int32_t long_prompt[65];
    grant_fixture(&gf);
    gf.w.prompt_tokens = long_prompt;
    gf.w.n_prompt_tokens = 65;
    gf.w.image_size = 0;
    gf.w.image.len = 0;
    expect_invalid(&env, "65 tokens");

    /* Ack rules */
    Crl__AckEntry e = CRL__ACK_ENTRY__INIT;
    Crl__AckEntry *ents[1] = { &e };
    Crl__Ack ack = CRL__ACK__INIT;
    ack.entries = ents;
    ack.n_entries = 1;
    env.body_case = CRL__ENVELOPE__BODY_ACK;
    env.ack = &ack;
    e.status = CRL__ACK_STATUS__ACK_STATUS_DROPPED;
    expect_invalid(&env, "without a reason");
    e.status = CRL__ACK_STATUS__ACK_STATUS_ACCEPTED;
    e.reason = CRL__DROP_REASON__DROP_REASON_STALE;
    expect_invalid(&env, "accepted with drop reason");
    e.status = 9;
    e.reason = 0;
    expect_invalid(&env, "unknown status 9");

    /* Weights ranges */
    Crl__WeightsChunk ch = CRL__WEIGHTS_CHUNK__INIT;
    ch.version = 2;
    ch.total_bytes = 100;
    ch.offset = 90;
    ch.length = 20;
    ch.status = CRL__CHUNK_STATUS__CHUNK_STATUS_OK;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_CHUNK;
    env.weights_chunk = &ch;
    expect_invalid(&env, "outside the 100-byte blob");

    Crl__WeightsFetch fe = CRL__WEIGHTS_FETCH__INIT;
    fe.version = 2;
    fe.offset = UINT64_MAX - 3;
    fe.length = 10;
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &fe;
    expect_invalid(&env, "overflows");

    Crl__Hello h = CRL__HELLO__INIT;
    h.actor_id = "bad id"; /* space: not allowed in ids */
    env.body_case = CRL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    expect_invalid(&env, "non-printable byte 0x20");
}

/* ------------------------------------------------------------ sockets */

typedef struct {
    void *ctx, *router, *dealer;
    char endpoint[256];
} pair_t;

/* ROUTER bound on tcp://127.0.0.1:* (the port read back from
 * ZMQ_LAST_ENDPOINT), DEALER with routing id "actor-7" connected to it. */
static void pair_open(pair_t *p, int64_t router_max_msg)
{
    p->ctx = zmq_ctx_new();
    cr_assert_not_null(p->ctx);
    p->router = zmq_socket(p->ctx, ZMQ_ROUTER);
    p->dealer = zmq_socket(p->ctx, ZMQ_DEALER);
    cr_assert(p->router && p->dealer);
    cr_assert_eq(wire_socket_setup(p->router, router_max_msg), 0);
    cr_assert_eq(wire_socket_setup(p->dealer, 1 << 20), 0);
    cr_assert_eq(zmq_setsockopt(p->dealer, ZMQ_ROUTING_ID, "actor-7", 7), 0);
    int ivl = 20; /* reconnect fast after an oversized-message disconnect */
    cr_assert_eq(zmq_setsockopt(p->dealer, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl), 0);
    cr_assert_eq(zmq_bind(p->router, "tcp://127.0.0.1:*"), 0, "bind: %s", zmq_strerror(errno));
    size_t n = sizeof p->endpoint;
    cr_assert_eq(zmq_getsockopt(p->router, ZMQ_LAST_ENDPOINT, p->endpoint, &n), 0);
    cr_assert_eq(zmq_connect(p->dealer, p->endpoint), 0, "connect %s: %s", p->endpoint,
                 zmq_strerror(errno));
}

static void pair_close(pair_t *p)
{
    zmq_close(p->dealer);
    zmq_close(p->router);
    zmq_ctx_term(p->ctx);
}

static Crl__Envelope heartbeat_env(Crl__Heartbeat *hb, uint64_t ms)
{
    Crl__Envelope env;
    crl__heartbeat__init(hb);
    hb->sent_unix_ms = ms;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = hb;
    return env;
}

Test(wire, router_dealer_roundtrip_with_raw_frame, .timeout = 30)
{
    pair_t p;
    pair_open(&p, 1 << 20);
    wire_limits_t lim = test_limits();
    wire_counters_t rc_router = { 0 }, rc_dealer = { 0 };
    char err[256];

    /* dealer -> router: a group, identity seen as "actor-7" */
    group_fixture_t f;
    group_fixture(&f);
    Crl__Envelope env = group_env(&f);
    cr_assert_eq(wire_send(p.dealer, NULL, &env, NULL, 0, &rc_dealer), 0);
    wire_identity_t from;
    Crl__Envelope *got = NULL;
    zmq_msg_t raw;
    int r = wire_recv(p.router, 1, 5000, &lim, &rc_router, &from, &got, &raw, err, sizeof err);
    cr_assert_eq(r, 1, "router recv: %d (%s)", r, err);
    char name[64];
    cr_assert_str_eq(wire_identity_format(&from, name, sizeof name), "actor-7");
    cr_assert_eq(got->body_case, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP);
    cr_assert_eq(got->trajectory_group->group_id, 42);
    cr_assert_eq(zmq_msg_size(&raw), 0);
    zmq_msg_close(&raw);
    wire_envelope_free(&got);

    /* router -> dealer: a chunk with a 100 kB raw frame, intact */
    size_t n = 100000;
    uint8_t *blob = malloc(n);
    for (size_t i = 0; i < n; i++)
        blob[i] = (uint8_t)(i * 131 + 7);
    Crl__WeightsChunk ch = CRL__WEIGHTS_CHUNK__INIT;
    ch.version = 3;
    ch.offset = 0;
    ch.length = n;
    ch.total_bytes = n;
    ch.status = CRL__CHUNK_STATUS__CHUNK_STATUS_OK;
    Crl__Envelope cenv;
    wire_envelope_init(&cenv);
    cenv.body_case = CRL__ENVELOPE__BODY_WEIGHTS_CHUNK;
    cenv.weights_chunk = &ch;
    cr_assert_eq(wire_send(p.router, &from, &cenv, blob, n, &rc_router), 0);
    r = wire_recv(p.dealer, 0, 5000, &lim, &rc_dealer, NULL, &got, &raw, err, sizeof err);
    cr_assert_eq(r, 1, "dealer recv: %d (%s)", r, err);
    cr_assert_eq(got->body_case, CRL__ENVELOPE__BODY_WEIGHTS_CHUNK);
    cr_assert_eq(zmq_msg_size(&raw), n, "raw frame: expected %zu bytes, got %zu", n,
                 zmq_msg_size(&raw));
    cr_assert_eq(memcmp(zmq_msg_data(&raw), blob, n), 0, "raw frame content differs");
    zmq_msg_close(&raw);
    wire_envelope_free(&got);

    /* A send whose raw frame disagrees with the envelope is refused locally. */
    cr_assert_eq(wire_send(p.router, &from, &cenv, blob, n - 1, &rc_router), -EINVAL);
    /* Sending to an unknown peer fails (ROUTER_MANDATORY) instead of vanishing. */
    wire_identity_t ghost;
    wire_identity_set(&ghost, "nobody");
    Crl__Heartbeat hb;
    Crl__Envelope henv = heartbeat_env(&hb, 1);
    cr_assert_eq(wire_send(p.router, &ghost, &henv, NULL, 0, &rc_router), -EHOSTUNREACH);
    cr_assert_eq(rc_router.sent, 1);
    cr_assert_eq(rc_router.send_failed, 2);
    /* Nothing pending: a poll returns 0. */
    r = wire_recv(p.dealer, 0, 0, &lim, &rc_dealer, NULL, &got, &raw, err, sizeof err);
    cr_assert_eq(r, 0);
    zmq_msg_close(&raw);
    free(blob);
    pair_close(&p);
}

Test(wire, unexpected_frame_counts_are_malformed, .timeout = 30)
{
    pair_t p;
    pair_open(&p, 1 << 20);
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256];
    Crl__Heartbeat hb;
    Crl__Envelope env = heartbeat_env(&hb, 77);
    size_t len;
    uint8_t *buf = wire_encode(&env, &len);
    Crl__Envelope *got = NULL;
    zmq_msg_t raw;
    int r;

    /* [heartbeat][junk]: a heartbeat takes no raw frame */
    cr_assert_eq(zmq_send(p.dealer, buf, len, ZMQ_SNDMORE), (int)len);
    cr_assert_eq(zmq_send(p.dealer, "junk", 4, 0), 4);
    r = wire_recv(p.router, 1, 5000, &lim, &c, NULL, &got, &raw, err, sizeof err);
    zmq_msg_close(&raw);
    cr_assert_eq(r, -EPROTO, "expected -EPROTO, got %d", r);
    cr_assert_null(got);
    cr_assert_eq(c.malformed, 1);
    cr_assert(strstr(err, "unexpected extra frame"), "got \"%s\"", err);

    /* five frames: too many */
    for (int i = 0; i < 4; i++)
        cr_assert_eq(zmq_send(p.dealer, buf, len, ZMQ_SNDMORE), (int)len);
    cr_assert_eq(zmq_send(p.dealer, buf, len, 0), (int)len);
    r = wire_recv(p.router, 1, 5000, &lim, &c, NULL, &got, &raw, err, sizeof err);
    zmq_msg_close(&raw);
    cr_assert_eq(r, -EPROTO);
    cr_assert_eq(c.malformed, 2);
    cr_assert(strstr(err, "6 frames"), "got \"%s\"", err);

    /* a weights_publish without its raw frame: too few */
    Crl__WeightsPublish pub = CRL__WEIGHTS_PUBLISH__INIT;
    pub.version = 1;
    pub.total_bytes = 10;
    Crl__Envelope penv;
    wire_envelope_init(&penv);
    penv.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
    penv.weights_publish = &pub;
    size_t plen;
    uint8_t *pbuf = wire_encode(&penv, &plen);
    cr_assert_eq(zmq_send(p.dealer, pbuf, plen, 0), (int)plen);
    r = wire_recv(p.router, 1, 5000, &lim, &c, NULL, &got, &raw, err, sizeof err);
    zmq_msg_close(&raw);
    cr_assert_eq(r, -EPROTO);
    cr_assert_eq(c.malformed, 3);
    cr_assert(strstr(err, "missing its raw frame"), "got \"%s\"", err);
    free(pbuf);

    /* the stream is still aligned: a proper heartbeat comes through */
    cr_assert_eq(wire_send(p.dealer, NULL, &env, NULL, 0, NULL), 0);
    r = wire_recv(p.router, 1, 5000, &lim, &c, NULL, &got, &raw, err, sizeof err);
    zmq_msg_close(&raw);
    cr_assert_eq(r, 1, "got %d (%s)", r, err);
    cr_assert_eq(got->heartbeat->sent_unix_ms, 77);
    wire_envelope_free(&got);
    cr_assert_eq(c.received, 4);
    cr_assert_eq(c.accepted, 1);
    free(buf);
    pair_close(&p);
}

/* ZMQ_MAXMSGSIZE: libzmq drops an oversized message (and the connection);
 * the receiver never sees it and the socket keeps working once the DEALER
 * has reconnected. */
Test(wire, oversized_message_dropped_socket_usable, .timeout = 60)
{
    pair_t p;
    pair_open(&p, 4096);
    wire_limits_t lim = test_limits();
    wire_counters_t c = { 0 };
    char err[256];
    Crl__Envelope *got = NULL;
    zmq_msg_t raw;

    static uint8_t big[20000];
    memset(big, 0x5a, sizeof big);
    cr_assert_eq(zmq_send(p.dealer, big, sizeof big, 0), (int)sizeof big);
    int r = wire_recv(p.router, 1, 300, &lim, &c, NULL, &got, &raw, err, sizeof err);
    zmq_msg_close(&raw);
    cr_assert_eq(r, 0, "the oversized message should never arrive, got %d", r);
    cr_assert_eq(c.received, 0);

    int delivered = 0;
    for (int attempt = 0; attempt < 100 && !delivered; attempt++) {
        Crl__Heartbeat hb;
        Crl__Envelope env = heartbeat_env(&hb, 1000 + (uint64_t)attempt);
        int s = wire_send(p.dealer, NULL, &env, NULL, 0, NULL);
        cr_assert(s == 0 || s == -EAGAIN, "send: %d", s);
        r = wire_recv(p.router, 1, 100, &lim, &c, NULL, &got, &raw, err, sizeof err);
        zmq_msg_close(&raw);
        if (r == 1) {
            cr_assert_eq(got->body_case, CRL__ENVELOPE__BODY_HEARTBEAT);
            cr_assert_geq(got->heartbeat->sent_unix_ms, 1000);
            wire_envelope_free(&got);
            delivered = 1;
        }
    }
    cr_assert(delivered, "no message got through after the oversized one");
    cr_assert_eq(c.malformed + c.invalid + c.bad_version, 0);
    pair_close(&p);
}

Test(wire, identity_formatting)
{
    wire_identity_t id = { .len = 5, .id = { 0x00, 0x6b, 0x8b, 0x45, 0x67 } };
    char buf[64];
    cr_assert_str_eq(wire_identity_format(&id, buf, sizeof buf), "0x006b8b4567");
    wire_identity_set(&id, "actor-12");
    cr_assert_str_eq(wire_identity_format(&id, buf, sizeof buf), "actor-12");
    id.len = 0;
    cr_assert_str_eq(wire_identity_format(&id, buf, sizeof buf), "-");
    /* a tiny buffer truncates, never overflows */
    wire_identity_t bin = { .len = 4, .id = { 1, 2, 3, 4 } };
    char small[6];
    wire_identity_format(&bin, small, sizeof small);
    cr_assert_str_eq(small, "0x01");
}

/* Found by fuzz_envelope: protobuf-c keeps a field numbered 0 written with a
 * two-byte tag as an unknown field; repacked it becomes one byte that nothing
 * can unpack, so one hostile actor could poison the trajectory log. */
Test(wire, field_zero_with_multibyte_tag_is_refused)
{
    static const uint8_t bytes[] = {0x82, 0x01, 0x02, 0x18, 0x02, 0x08, 0x01,
                                    0x82, 0x00, 0x02, 0x00, 0x0e, 0x18, 0x02};
    wire_limits_t lim;
    wire_limits_default(&lim);
    wire_counters_t c;
    memset(&c, 0, sizeof c);
    char err[256] = "";
    Crl__Envelope *env = wire_decode(bytes, sizeof bytes, &lim, &c, err, sizeof err);
    cr_assert_null(env, "decoded an envelope holding a field numbered 0");
    cr_assert_eq(c.malformed, 1, "malformed counter %llu, expected 1",
                 (unsigned long long)c.malformed);
    cr_assert(strstr(err, "field numbered 0"), "error was: %s", err);
}
