/* Tests of the rollout actor: the crl-actor binary (from $CRL_BIN_DIR)
 * against a fake learner (ROUTER) and a fake broker (PUB + ROUTER) written
 * here, speaking the protocol with wire_send / wire_recv over ipc:// in a
 * per-test temporary folder. Also the checkpoint config-json helpers the
 * Welcome relies on. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "checkpoint.h"
#include "broker.h"
#include "config.h"
#include "crc32c.h"
#include "grpo.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "tokenizer.h"
#include "wire.h"

#define MAX_VERSIONS 4
#define HB_MS 100
#define HB_TIMEOUT_MS 1000
#define ANNOUNCE_MS 200

typedef struct {
    uint64_t version;
    float *blob;   /* (n_params) */
    size_t bytes;
    uint32_t crc;
    uint64_t served_bytes;
} version_t;

typedef struct {
    char dir[512];
    char ep_work[600], ep_ann[600], ep_fetch[600], log[600];
    void *ctx, *work, *pub, *fetch;
    pid_t pid;
    model_config_t mc;
    char *mc_json;
    size_t n_params;
    version_t v[MAX_VERSIONS];
    int n_versions;
    int learner_alive;       /* send heartbeats to the actor */
    int announce;            /* re-announce the latest version */
    wire_identity_t actor;   /* routing id, once it said Hello */
    uint64_t last_hb, last_ann;
    wire_limits_t lim;
    uint32_t credits_requested;
    int hellos;
} harness_t;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A tiny vision-language model: 2x2 patches of an 8x8 image. */
static void tiny_config(model_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->vocab_size = 64;
    c->dim = 16;
    c->n_layers = 1;
    c->n_heads = 2;
    c->n_kv_heads = 2;
    c->hidden_dim = 32;
    c->max_seq_len = 48;
    c->image_size = 8;
    c->patch_size = 4;
    c->tie_embeddings = 0;
    c->rope_theta = 10000.0f;
    c->norm_eps = 1e-5f;
}

static void *bind_socket(harness_t *h, int type, const char *ep)
{
    void *s = zmq_socket(h->ctx, type);
    cr_assert_not_null(s);
    cr_assert_eq(wire_socket_setup(s, 64 << 20), 0);
    cr_assert_eq(zmq_bind(s, ep), 0, "bind %s: %s", ep, zmq_strerror(errno));
    return s;
}

static harness_t *g_harness;

static void harness_init_ex(harness_t *h, int real_broker)
{
    memset(h, 0, sizeof *h);
    g_harness = h;
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(h->dir, sizeof h->dir, "%s/actor-XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(h->dir), "mkdtemp(%s) failed", h->dir);
    snprintf(h->ep_work, sizeof h->ep_work, "ipc://%s/work", h->dir);
    snprintf(h->ep_ann, sizeof h->ep_ann, "ipc://%s/ann", h->dir);
    snprintf(h->ep_fetch, sizeof h->ep_fetch, "ipc://%s/fetch", h->dir);
    snprintf(h->log, sizeof h->log, "%s/actor.log", h->dir);
    h->ctx = zmq_ctx_new();
    cr_assert_not_null(h->ctx);
    h->work = bind_socket(h, ZMQ_ROUTER, h->ep_work);
    if (!real_broker) {
        h->pub = bind_socket(h, ZMQ_PUB, h->ep_ann);
        h->fetch = bind_socket(h, ZMQ_ROUTER, h->ep_fetch);
    }
    tiny_config(&h->mc);
    h->mc_json = ckpt_config_to_json_text(&h->mc);
    cr_assert_not_null(h->mc_json);
    model_t *m = model_new(&h->mc, 0);
    cr_assert_not_null(m);
    h->n_params = m->n_params;
    model_destroy(&m);
    h->learner_alive = 1;
    h->announce = 1;
    wire_limits_default(&h->lim);
    h->lim.vocab_size = (uint32_t)h->mc.vocab_size;
    h->pid = -1;
}

static void harness_init(harness_t *h)
{
    harness_init_ex(h, 0);
}

/* Weights of version v: a random init seeded with v (so versions differ). */
static version_t *add_version(harness_t *h, uint64_t v)
{
    cr_assert_lt(h->n_versions, MAX_VERSIONS);
    model_t *m = model_new(&h->mc, 0);
    rng_t r;
    rng_seed(&r, 1000 + v);
    model_init_random(m, &r);
    version_t *ver = &h->v[h->n_versions++];
    ver->version = v;
    ver->bytes = m->n_params * sizeof(float);
    ver->blob = malloc(ver->bytes);
    memcpy(ver->blob, m->params, ver->bytes);
    ver->crc = crc32c(ver->blob, ver->bytes);
    model_destroy(&m);
    return ver;
}

static version_t *find_version(harness_t *h, uint64_t v)
{
    for (int i = 0; i < h->n_versions; i++)
        if (h->v[i].version == v)
            return &h->v[i];
    return NULL;
}

static void announce(harness_t *h, const version_t *ver)
{
    Crl__WeightsAnnounce a;
    crl__weights_announce__init(&a);
    a.version = ver->version;
    a.total_bytes = ver->bytes;
    a.crc32c = ver->crc;
    char layout[64];
    snprintf(layout, sizeof layout, "crl-f32-params-v1 n=%zu", h->n_params);
    a.layout = layout;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
    env.weights_announce = &a;
    cr_assert_eq(wire_send(h->pub, NULL, &env, NULL, 0, NULL), 0);
}

static void serve_fetch(harness_t *h)
{
    for (;;) {
        Crl__Envelope *env = NULL;
        wire_identity_t from;
        int r = wire_recv(h->fetch, 1, 0, &h->lim, NULL, &from, &env, NULL, NULL, 0);
        if (r <= 0)
            return;
        cr_assert_eq(env->body_case, CRL__ENVELOPE__BODY_WEIGHTS_FETCH, "fetch socket got %s",
                     wire_body_name(env));
        const Crl__WeightsFetch *f = env->weights_fetch;
        version_t *ver = find_version(h, f->version);
        Crl__WeightsChunk k;
        crl__weights_chunk__init(&k);
        k.version = f->version;
        k.offset = f->offset;
        k.length = f->length;
        k.latest_version = h->n_versions ? h->v[h->n_versions - 1].version : 0;
        const void *raw = NULL;
        size_t raw_len = 0;
        if (!ver) {
            k.status = CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION;
        } else if (f->offset >= ver->bytes) {
            k.status = CRL__CHUNK_STATUS__CHUNK_STATUS_BAD_RANGE;
        } else {
            if (k.length > ver->bytes - f->offset)
                k.length = ver->bytes - f->offset;
            k.status = CRL__CHUNK_STATUS__CHUNK_STATUS_OK;
            k.total_bytes = ver->bytes;
            k.crc32c = ver->crc;
            raw = (const uint8_t *)ver->blob + f->offset;
            raw_len = (size_t)k.length;
            ver->served_bytes += k.length;
        }
        Crl__Envelope out;
        wire_envelope_init(&out);
        out.body_case = CRL__ENVELOPE__BODY_WEIGHTS_CHUNK;
        out.weights_chunk = &k;
        cr_assert_eq(wire_send(h->fetch, &from, &out, raw, raw_len, NULL), 0);
        wire_envelope_free(&env);
    }
}

static void to_actor(harness_t *h, Crl__Envelope *env)
{
    cr_assert_gt(h->actor.len, 0, "the actor has not said Hello yet");
    int rc = wire_send(h->work, &h->actor, env, NULL, 0, NULL);
    cr_assert_eq(rc, 0, "sending %s to the actor: %s", wire_body_name(env), strerror(-rc));
}

static void send_heartbeat(harness_t *h)
{
    Crl__Heartbeat hb;
    crl__heartbeat__init(&hb);
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    /* Best effort: the actor may just have exited (tests of its exit). */
    wire_send(h->work, &h->actor, &env, NULL, 0, NULL);
}

/* Runs the fake broker and learner background duties for up to timeout_ms
 * and returns the next message from the actor on the work socket (1), or 0
 * on timeout. */
static int pump(harness_t *h, int timeout_ms, Crl__Envelope **out)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    *out = NULL;
    for (;;) {
        uint64_t now = now_ms();
        if (h->pub && h->announce && h->n_versions && now - h->last_ann >= ANNOUNCE_MS) {
            announce(h, &h->v[h->n_versions - 1]);
            h->last_ann = now;
        }
        if (h->learner_alive && h->actor.len && now - h->last_hb >= HB_MS) {
            send_heartbeat(h);
            h->last_hb = now;
        }
        if (now >= end)
            return 0;
        zmq_pollitem_t items[2] = { { .socket = h->work, .events = ZMQ_POLLIN },
                                    { .socket = h->fetch, .events = ZMQ_POLLIN } };
        cr_assert_geq(zmq_poll(items, h->fetch ? 2 : 1, 20), 0);
        if (items[1].revents & ZMQ_POLLIN)
            serve_fetch(h);
        if (items[0].revents & ZMQ_POLLIN) {
            wire_identity_t from;
            int r = wire_recv(h->work, 1, 0, &h->lim, NULL, &from, out, NULL, NULL, 0);
            cr_assert_geq(r, 0, "the actor sent something malformed");
            if (r == 1) {
                if ((*out)->body_case == CRL__ENVELOPE__BODY_HELLO) {
                    h->actor = from;
                    h->hellos++;
                }
                if ((*out)->body_case == CRL__ENVELOPE__BODY_WORK_REQUEST)
                    h->credits_requested += (*out)->work_request->credits;
                return 1;
            }
        }
    }
}

/* Pumps until a message with this body arrives (others are dropped). */
static Crl__Envelope *wait_for(harness_t *h, Crl__Envelope__BodyCase want, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = now_ms();
        if (now >= end)
            return NULL;
        Crl__Envelope *env = NULL;
        if (pump(h, (int)(end - now), &env) == 1) {
            if (env->body_case == want)
                return env;
            wire_envelope_free(&env);
        }
    }
}

static void start_actor(harness_t *h, const char *id, const char *extra_set)
{
    const char *bindir = getenv("CRL_BIN_DIR");
    if (!bindir || !bindir[0])
        cr_skip_test("CRL_BIN_DIR is not set (make test sets it to the build's bin folder)");
    char bin[600];
    snprintf(bin, sizeof bin, "%s/crl-actor", bindir);
    cr_assert_eq(access(bin, X_OK), 0, "%s is not an executable", bin);
    char hb[64], hbt[64];
    snprintf(hb, sizeof hb, "learner.heartbeat_ms=%d", HB_MS);
    snprintf(hbt, sizeof hbt, "learner.heartbeat_timeout_ms=%d", HB_TIMEOUT_MS);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* Dies with the test, even when an assertion ends it early. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        FILE *lf = freopen(h->log, "w", stderr);
        FILE *of = freopen("/dev/null", "w", stdout);
        (void)lf;
        (void)of;
        const char *argv[32];
        int n = 0;
        argv[n++] = bin;
        argv[n++] = "--learner";
        argv[n++] = h->ep_work;
        argv[n++] = "--broker-announce";
        argv[n++] = h->ep_ann;
        argv[n++] = "--broker-fetch";
        argv[n++] = h->ep_fetch;
        argv[n++] = "--id";
        argv[n++] = id;
        argv[n++] = "--set";
        argv[n++] = "broker.chunk_bytes=4096";
        argv[n++] = "--set";
        argv[n++] = hb;
        argv[n++] = "--set";
        argv[n++] = hbt;
        if (extra_set) {
            argv[n++] = "--set";
            argv[n++] = extra_set;
        }
        argv[n] = NULL;
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    h->pid = pid;
}

/* Waits for the actor to exit; returns its exit status (-1: killed/timeout). */
static int wait_exit(harness_t *h, int timeout_ms)
{
    uint64_t end = now_ms() + (uint64_t)timeout_ms;
    int st = 0;
    while (now_ms() < end) {
        Crl__Envelope *env = NULL;
        pid_t r = waitpid(h->pid, &st, WNOHANG);
        if (r == h->pid) {
            h->pid = -1;
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        }
        if (pump(h, 20, &env) == 1)
            wire_envelope_free(&env);
    }
    return -2;
}

static char *read_log(harness_t *h)
{
    FILE *f = fopen(h->log, "rb");
    if (!f)
        return strdup("");
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void harness_fini(harness_t *h)
{
    if (!h || !h->ctx)
        return;
    if (h->pid > 0) {
        kill(h->pid, SIGKILL);
        waitpid(h->pid, NULL, 0);
        h->pid = -1;
    }
    zmq_close(h->work);
    if (h->pub)
        zmq_close(h->pub);
    if (h->fetch)
        zmq_close(h->fetch);
    zmq_ctx_term(h->ctx);
    for (int i = 0; i < h->n_versions; i++)
        free(h->v[i].blob);
    free(h->mc_json);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", h->dir);
    if (system(cmd) != 0) {
    }
    h->ctx = NULL;
    g_harness = NULL;
}

/* Runs after every test, also after a failed assertion ended it early. */
static void suite_fini(void)
{
    harness_fini(g_harness);
}

TestSuite(actor, .fini = suite_fini);

static void send_welcome(harness_t *h, uint32_t vocab, const char *digest)
{
    Crl__Welcome w;
    crl__welcome__init(&w);
    w.run_id = "test-run";
    w.heartbeat_ms = HB_MS;
    w.heartbeat_timeout_ms = HB_TIMEOUT_MS;
    w.max_staleness = 2;
    w.current_version = h->n_versions ? h->v[h->n_versions - 1].version : 0;
    w.actor_index = 0;
    w.config_digest = (char *)digest;
    w.vocab_size = vocab;
    w.image_size = (uint32_t)h->mc.image_size;
    w.model_config_json = h->mc_json;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    to_actor(h, &env);
    h->last_hb = now_ms();
}

/* Hello -> Welcome -> (announce v1) -> fetch -> WorkRequest. */
static void join(harness_t *h, const char *id)
{
    add_version(h, 1);
    start_actor(h, id, NULL);
    Crl__Envelope *env = wait_for(h, CRL__ENVELOPE__BODY_HELLO, 10000);
    cr_assert_not_null(env, "no Hello within 10 s");
    wire_envelope_free(&env);
    send_welcome(h, (uint32_t)h->mc.vocab_size, "digest-1");
    env = wait_for(h, CRL__ENVELOPE__BODY_WORK_REQUEST, 10000);
    cr_assert_not_null(env, "no WorkRequest within 10 s of the Welcome and announce");
    wire_envelope_free(&env);
}

/* A grant: <bos> <img> 4 slots </img> text (main), the same with other
 * text (alt); image of 8x8x3 bytes. */
typedef struct {
    Crl__WorkGrant g;
    int32_t prompt[10], alt[10];
    uint8_t image[3 * 8 * 8];
} grant_t;

static void make_grant(grant_t *gr, uint64_t grant_id, uint32_t G, uint32_t alt_count,
                       uint64_t min_version)
{
    memset(gr, 0, sizeof *gr);
    crl__work_grant__init(&gr->g);
    int32_t p[10] = { TOK_BOS, TOK_IMG, -1, -1, -1, -1, TOK_IMG_END, 20, 21, 22 };
    int32_t q[10] = { TOK_BOS, TOK_IMG, -1, -1, -1, -1, TOK_IMG_END, 30, 31, 32 };
    memcpy(gr->prompt, p, sizeof p);
    memcpy(gr->alt, q, sizeof q);
    for (size_t i = 0; i < sizeof gr->image; i++)
        gr->image[i] = (uint8_t)(i * 37 % 251);
    gr->g.grant_id = grant_id;
    gr->g.prompt_id = "prompt-7";
    gr->g.task_kind = CRL__TASK_KIND__TASK_KIND_CRITIC;
    gr->g.prompt_tokens = gr->prompt;
    gr->g.n_prompt_tokens = 10;
    gr->g.image.data = gr->image;
    gr->g.image.len = sizeof gr->image;
    gr->g.image_size = 8;
    gr->g.group_size = G;
    gr->g.temperature = 1.0f;
    gr->g.top_p = 0.99f;
    gr->g.max_new_tokens = 12;
    gr->g.min_weights_version = min_version;
    gr->g.seed = 12345 + grant_id;
    if (alt_count) {
        gr->g.prompt_tokens_alt = gr->alt;
        gr->g.n_prompt_tokens_alt = 10;
        gr->g.alt_count = alt_count;
    }
}

static void send_grant(harness_t *h, grant_t *gr)
{
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    env.work_grant = &gr->g;
    to_actor(h, &env);
}

static void send_ack(harness_t *h, uint64_t group_id, int accepted)
{
    Crl__AckEntry e;
    crl__ack_entry__init(&e);
    e.group_id = group_id;
    e.status = accepted ? CRL__ACK_STATUS__ACK_STATUS_ACCEPTED : CRL__ACK_STATUS__ACK_STATUS_DROPPED;
    e.reason = accepted ? CRL__DROP_REASON__DROP_REASON_NONE : CRL__DROP_REASON__DROP_REASON_STALE;
    Crl__AckEntry *ep = &e;
    Crl__Ack a;
    crl__ack__init(&a);
    a.entries = &ep;
    a.n_entries = 1;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_ACK;
    env.ack = &a;
    to_actor(h, &env);
}

/* The group the actor must have sent for this grant with these weights:
 * grpo_rollout_group in-process (the same function the actor calls). */
static void check_group_matches(harness_t *h, const Crl__TrajectoryGroup *tg, const grant_t *gr,
                                uint64_t version)
{
    version_t *ver = find_version(h, version);
    cr_assert_not_null(ver);
    model_t *m = model_new(&h->mc, 0);
    memcpy(m->params, ver->blob, ver->bytes);
    int G = (int)gr->g.group_size;
    sampler_t *s = sampler_new(m, h->mc.max_seq_len, h->mc.max_seq_len, G);
    grpo_rollout_t *ro = grpo_rollout_new(G, h->mc.max_seq_len, h->mc.image_size);
    cr_assert(s && ro);
    grpo_rollout_request_t req;
    memset(&req, 0, sizeof req);
    req.prompt[0] = gr->prompt;
    req.prompt_len[0] = 10;
    if (gr->g.alt_count) {
        req.prompt[1] = gr->alt;
        req.prompt_len[1] = 10;
        req.alt_count = (int)gr->g.alt_count;
    }
    req.image = gr->image;
    req.G = G;
    req.temperature = gr->g.temperature;
    req.top_p = gr->g.top_p;
    req.max_new_tokens = (int)gr->g.max_new_tokens;
    req.seed = gr->g.seed;
    cr_assert_eq(grpo_rollout_group(m, s, &req, ro), 0);
    for (int i = 0; i < G; i++) {
        const Crl__Sample *sm = tg->samples[i];
        cr_assert_eq((int)sm->n_tokens, ro->len[i], "sample %d: %zu tokens, in-process %d", i,
                     sm->n_tokens, ro->len[i]);
        for (int t = 0; t < ro->len[i]; t++) {
            cr_assert_eq(sm->tokens[t], ro->tokens[(size_t)i * ro->max_new + t],
                         "sample %d token %d: actor %d, in-process %d", i, t, sm->tokens[t],
                         ro->tokens[(size_t)i * ro->max_new + t]);
            float d = fabsf(sm->logprobs[t] - ro->logp[(size_t)i * ro->max_new + t]);
            cr_assert_leq(d, 1e-6f, "sample %d logprob %d: actor %g, in-process %g", i, t,
                          (double)sm->logprobs[t], (double)ro->logp[(size_t)i * ro->max_new + t]);
        }
        cr_assert_eq(sm->finished_by_eos ? 1 : 0, ro->finished_by_eos[i] ? 1 : 0);
    }
    grpo_rollout_destroy(&ro);
    sampler_destroy(&s);
    model_destroy(&m);
}

static void check_group_shape(harness_t *h, const Crl__TrajectoryGroup *tg, const grant_t *gr,
                              const char *id, uint64_t version)
{
    cr_assert_str_eq(tg->actor_id, id);
    cr_assert_eq(tg->grant_id, gr->g.grant_id);
    cr_assert_str_eq(tg->prompt_id, gr->g.prompt_id);
    cr_assert_eq(tg->weights_version, version, "weights_version %lu, expected %lu",
                 (unsigned long)tg->weights_version, (unsigned long)version);
    cr_assert_eq(tg->group_size, gr->g.group_size);
    cr_assert_eq(tg->n_samples, gr->g.group_size, "%zu samples, expected G = %u", tg->n_samples,
                 gr->g.group_size);
    cr_assert_eq(tg->n_prompt_tokens, 10);
    cr_assert_eq(memcmp(tg->prompt_tokens, gr->prompt, sizeof gr->prompt), 0);
    cr_assert_eq(tg->n_prompt_tokens_alt, gr->g.alt_count ? 10u : 0u);
    cr_assert(isfinite(tg->generation_seconds) && tg->generation_seconds >= 0);
    uint32_t n_alt = 0;
    for (size_t i = 0; i < tg->n_samples; i++) {
        const Crl__Sample *s = tg->samples[i];
        uint32_t want_pi = i >= tg->n_samples - gr->g.alt_count ? 1u : 0u;
        cr_assert_eq(s->prompt_index, want_pi, "sample %zu: prompt_index %u, expected %u", i,
                     s->prompt_index, want_pi);
        n_alt += s->prompt_index;
        cr_assert_eq(s->n_tokens, s->n_logprobs);
        cr_assert(s->n_tokens >= 1 && s->n_tokens <= gr->g.max_new_tokens);
        for (size_t t = 0; t < s->n_tokens; t++) {
            cr_assert(s->tokens[t] >= 0 && s->tokens[t] < h->mc.vocab_size);
            cr_assert(s->tokens[t] != TOK_IMG && s->tokens[t] != TOK_IMG_END &&
                      s->tokens[t] != TOK_PAD, "banned token %d sampled", s->tokens[t]);
            cr_assert(isfinite(s->logprobs[t]) && s->logprobs[t] <= 0.0f,
                      "sample %zu logprob %zu = %g (want finite, <= 0)", i, t,
                      (double)s->logprobs[t]);
        }
        if (s->finished_by_eos)
            cr_assert_eq(s->tokens[s->n_tokens - 1], TOK_EOS);
    }
    cr_assert_eq(n_alt, gr->g.alt_count, "%u alt samples, expected %u", n_alt, gr->g.alt_count);
}

/* ------------------------------------------------------------------ tests */

Test(actor, config_json_round_trip_and_errors)
{
    model_config_t c, back;
    tiny_config(&c);
    char *text = ckpt_config_to_json_text(&c);
    cr_assert_not_null(text);
    cr_assert_eq(text[strlen(text) - 1], '\n');
    char err[512] = "";
    cr_assert_eq(ckpt_config_from_json(text, &back, err, sizeof err), 0, "%s", err);
    cr_assert_eq(memcmp(&c, &back, sizeof c), 0, "config did not round-trip");
    /* The file writer and the text agree byte for byte. */
    harness_t tmp;
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(tmp.dir, sizeof tmp.dir, "%s/actor-cfg-XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(tmp.dir));
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", tmp.dir);
    cr_assert_eq(ckpt_write_config(path, &c, err, sizeof err), 0, "%s", err);
    FILE *f = fopen(path, "rb");
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cr_assert_str_eq(buf, text);
    unlink(path);
    rmdir(tmp.dir);
    /* A missing key is named. */
    char *bad = strdup(text);
    char *k = strstr(bad, "\"hidden_size\"");
    cr_assert_not_null(k);
    memcpy(k, "\"hidden_sixe\"", 13);
    cr_assert_neq(ckpt_config_from_json(bad, &back, err, sizeof err), 0);
    cr_assert_not_null(strstr(err, "model_config_json"), "error: %s", err);
    cr_assert_not_null(strstr(err, "hidden_size"), "error: %s", err);
    cr_assert_neq(ckpt_config_from_json("{not json", &back, err, sizeof err), 0);
    cr_assert_neq(ckpt_config_from_json(NULL, &back, err, sizeof err), 0);
    free(bad);
    free(text);
}

Test(actor, hello_carries_its_id)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    start_actor(&h, "hello-actor", NULL);
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_HELLO, 10000);
    cr_assert_not_null(env, "no Hello within 10 s");
    cr_assert_str_eq(env->hello->actor_id, "hello-actor");
    cr_assert_eq(env->hello->pid, (uint32_t)h.pid);
    cr_assert_eq(env->hello->weights_version, 0);
    cr_assert_eq(env->hello->n_unacked_group_ids, 0);
    char who[300];
    cr_assert_str_eq(wire_identity_format(&h.actor, who, sizeof who), "hello-actor",
                     "routing id is %s", who);
    wire_envelope_free(&env);
    harness_fini(&h);
}

Test(actor, fetches_announced_weights_then_asks_for_work)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    join(&h, "fetch-actor");
    version_t *v1 = find_version(&h, 1);
    cr_assert_geq(v1->served_bytes, v1->bytes, "broker served %lu of %zu bytes",
                  (unsigned long)v1->served_bytes, v1->bytes);
    cr_assert_eq(h.credits_requested, 2, "credits requested %u, expected actor.credits = 2",
                 h.credits_requested);
    /* The next heartbeat reports version 1. */
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_HEARTBEAT, 5000);
    cr_assert_not_null(env);
    cr_assert_eq(env->heartbeat->weights_version, 1);
    wire_envelope_free(&env);
    harness_fini(&h);
}

Test(actor, grant_yields_group_sampled_like_in_process)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    join(&h, "grant-actor");
    grant_t gr;
    make_grant(&gr, 77, 6, 3, 1);
    send_grant(&h, &gr);
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 15000);
    cr_assert_not_null(env, "no TrajectoryGroup within 15 s");
    const Crl__TrajectoryGroup *tg = env->trajectory_group;
    check_group_shape(&h, tg, &gr, "grant-actor", 1);
    cr_assert_eq(tg->group_id, 1);
    check_group_matches(&h, tg, &gr, 1);
    /* The finished grant is replaced: one more credit. */
    wire_envelope_free(&env);
    env = wait_for(&h, CRL__ENVELOPE__BODY_WORK_REQUEST, 5000);
    cr_assert_not_null(env, "no WorkRequest after the group");
    cr_assert_eq(env->work_request->credits, 1);
    wire_envelope_free(&env);
    harness_fini(&h);
}

Test(actor, unacked_group_resent_after_rewelcome_not_after_ack)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    join(&h, "resend-actor");
    grant_t gr;
    make_grant(&gr, 5, 4, 0, 1);
    send_grant(&h, &gr);
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 15000);
    cr_assert_not_null(env);
    uint64_t gid = env->trajectory_group->group_id;
    wire_envelope_free(&env);

    /* Learner goes silent: the actor waits, says Hello again listing the
     * unacked group. */
    h.learner_alive = 0;
    env = wait_for(&h, CRL__ENVELOPE__BODY_HELLO, 3 * HB_TIMEOUT_MS + 3000);
    cr_assert_not_null(env, "no re-Hello after the learner went silent");
    cr_assert_eq(env->hello->n_unacked_group_ids, 1);
    cr_assert_eq(env->hello->unacked_group_ids[0], gid);
    cr_assert_eq(env->hello->weights_version, 1);
    wire_envelope_free(&env);
    char *log = read_log(&h);
    cr_assert_not_null(strstr(log, "waiting for learner at"), "log has no waiting line:\n%s", log);
    cr_assert_not_null(strstr(log, "(1 unacked groups held)"), "log:\n%s", log);
    free(log);

    /* Re-Welcome: the group comes again, same id. */
    h.learner_alive = 1;
    send_welcome(&h, (uint32_t)h.mc.vocab_size, "digest-1");
    env = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 5000);
    cr_assert_not_null(env, "unacked group not re-sent after the Welcome");
    cr_assert_eq(env->trajectory_group->group_id, gid);
    check_group_shape(&h, env->trajectory_group, &gr, "resend-actor", 1);
    wire_envelope_free(&env);

    /* Acked: a further Welcome re-sends nothing. */
    send_ack(&h, gid, 1);
    Crl__Envelope *hb = wait_for(&h, CRL__ENVELOPE__BODY_HEARTBEAT, 3000);
    cr_assert_not_null(hb);
    wire_envelope_free(&hb);
    hb = wait_for(&h, CRL__ENVELOPE__BODY_HEARTBEAT, 3000);
    cr_assert_not_null(hb);
    cr_assert_eq(hb->heartbeat->unacked_groups, 0, "heartbeat says %u unacked after the Ack",
                 hb->heartbeat->unacked_groups);
    wire_envelope_free(&hb);
    send_welcome(&h, (uint32_t)h.mc.vocab_size, "digest-1");
    env = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 1500);
    cr_assert_null(env, "an acked group was re-sent");
    harness_fini(&h);
}

Test(actor, sigterm_sends_bye_and_exits_zero)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    join(&h, "bye-actor");
    cr_assert_eq(kill(h.pid, SIGTERM), 0);
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_BYE, 10000);
    cr_assert_not_null(env, "no Bye after SIGTERM");
    wire_envelope_free(&env);
    int st = wait_exit(&h, 10000);
    cr_assert_eq(st, 0, "exit status %d, expected 0", st);
    char *log = read_log(&h);
    cr_assert_not_null(strstr(log, "final: groups generated=0"), "no final counters line:\n%s",
                       log);
    free(log);
    harness_fini(&h);
}

Test(actor, survives_malformed_messages)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    join(&h, "robust-actor");
    /* Garbage, a wrong protocol version, an invalid grant (token outside
     * the vocabulary), a grant with a bad alt prompt, an unexpected body. */
    cr_assert_geq(zmq_send(h.work, h.actor.id, h.actor.len, ZMQ_SNDMORE), 0);
    cr_assert_geq(zmq_send(h.work, "\xff\xfe garbage", 10, 0), 0);
    Crl__Bye bye;
    crl__bye__init(&bye);
    bye.reason = "x";
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_BYE;
    env.bye = &bye;
    env.protocol_version = CRL_PROTOCOL_VERSION + 7;
    size_t len;
    uint8_t *buf = wire_encode(&env, &len);
    cr_assert_geq(zmq_send(h.work, h.actor.id, h.actor.len, ZMQ_SNDMORE), 0);
    cr_assert_geq(zmq_send(h.work, buf, len, 0), 0);
    free(buf);
    grant_t bad;
    make_grant(&bad, 90, 4, 0, 1);
    bad.prompt[8] = 5000;
    Crl__Envelope ge;
    wire_envelope_init(&ge);
    ge.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    ge.work_grant = &bad.g;
    buf = wire_encode(&ge, &len);
    cr_assert_geq(zmq_send(h.work, h.actor.id, h.actor.len, ZMQ_SNDMORE), 0);
    cr_assert_geq(zmq_send(h.work, buf, len, 0), 0);
    free(buf);
    grant_t bad_alt;
    make_grant(&bad_alt, 91, 4, 2, 1);
    bad_alt.alt[8] = 4000;
    send_grant(&h, &bad_alt);
    Crl__WeightsAnnounce wa;
    crl__weights_announce__init(&wa);
    wa.version = 9;
    wa.total_bytes = 4;
    wa.layout = "";
    Crl__Envelope ae;
    wire_envelope_init(&ae);
    ae.body_case = CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
    ae.weights_announce = &wa;
    to_actor(&h, &ae);

    /* Still alive and working. */
    grant_t gr;
    make_grant(&gr, 92, 4, 2, 1);
    send_grant(&h, &gr);
    Crl__Envelope *out = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 15000);
    cr_assert_not_null(out, "no group after the malformed messages");
    cr_assert_eq(out->trajectory_group->grant_id, 92, "group for grant %lu, expected 92",
                 (unsigned long)out->trajectory_group->grant_id);
    check_group_shape(&h, out->trajectory_group, &gr, "robust-actor", 1);
    wire_envelope_free(&out);
    cr_assert_eq(waitpid(h.pid, NULL, WNOHANG), 0, "the actor exited");
    char *log = read_log(&h);
    cr_assert_not_null(strstr(log, "prompt_tokens_alt"), "bad alt grant not logged:\n%s", log);
    free(log);
    harness_fini(&h);
}

Test(actor, newer_min_version_fetched_before_generating)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    join(&h, "version-actor");
    /* v2 exists at the broker but is not announced yet: the grant alone
     * must not make the actor sample with v1. */
    h.announce = 0;
    add_version(&h, 2);
    grant_t gr;
    make_grant(&gr, 8, 4, 0, 2);
    send_grant(&h, &gr);
    Crl__Envelope *env = NULL;
    uint64_t end = now_ms() + 600;
    while (now_ms() < end) {
        if (pump(&h, 50, &env) == 1) {
            cr_assert_neq(env->body_case, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP,
                          "sampled before v2 was available");
            wire_envelope_free(&env);
        }
    }
    h.announce = 1;
    env = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 15000);
    cr_assert_not_null(env, "no group after v2 was announced");
    check_group_shape(&h, env->trajectory_group, &gr, "version-actor", 2);
    check_group_matches(&h, env->trajectory_group, &gr, 2);
    version_t *v2 = find_version(&h, 2);
    cr_assert_geq(v2->served_bytes, v2->bytes);
    wire_envelope_free(&env);
    char *log = read_log(&h);
    cr_assert_not_null(strstr(log, "weights v1 -> v2"), "no version switch line:\n%s", log);
    free(log);
    harness_fini(&h);
}

Test(actor, refuses_welcome_with_mismatched_vocab)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    start_actor(&h, "mismatch-actor", NULL);
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_HELLO, 10000);
    cr_assert_not_null(env);
    wire_envelope_free(&env);
    send_welcome(&h, (uint32_t)h.mc.vocab_size + 1, "d");
    int st = wait_exit(&h, 10000);
    cr_assert_eq(st, 1, "exit status %d, expected 1", st);
    char *log = read_log(&h);
    cr_assert_not_null(strstr(log, "vocab_size 65"), "log does not name the mismatch:\n%s", log);
    free(log);
    harness_fini(&h);
}

Test(actor, refuses_learner_with_another_model_than_its_config)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init(&h);
    start_actor(&h, "model-actor", "model.dim=32");
    Crl__Envelope *env = wait_for(&h, CRL__ENVELOPE__BODY_HELLO, 10000);
    cr_assert_not_null(env);
    wire_envelope_free(&env);
    send_welcome(&h, (uint32_t)h.mc.vocab_size, "d");
    int st = wait_exit(&h, 10000);
    cr_assert_eq(st, 1, "exit status %d, expected 1", st);
    char *log = read_log(&h);
    /* The defaults of the other model.* keys differ too: the first is named. */
    cr_assert_not_null(strstr(log, "runs another model than this actor's config (model."),
                       "log:\n%s", log);
    free(log);
    harness_fini(&h);
}

Test(actor, help_and_bad_flags)
{
    const char *bindir = getenv("CRL_BIN_DIR");
    if (!bindir || !bindir[0])
        cr_skip_test("CRL_BIN_DIR is not set");
    char cmd[800];
    snprintf(cmd, sizeof cmd, "'%s/crl-actor' --help > /dev/null", bindir);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "--help: status %d", st);
    snprintf(cmd, sizeof cmd, "'%s/crl-actor' --bogus 2> /dev/null", bindir);
    st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "--bogus: status %d", st);
    snprintf(cmd, sizeof cmd, "'%s/crl-actor' --set actor.id='a b' 2> /dev/null", bindir);
    st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "bad actor.id: status %d", st);
}

/* The real broker (common/broker.h, in a thread) between a publishing fake
 * learner and the actor: the weights reach the actor through it. */
static void *broker_thread(void *arg)
{
    broker_run(arg);
    return NULL;
}

Test(actor, fetches_through_the_real_broker)
{
    static harness_t h; /* static: the suite's fini reaches it after a failed assert */
    harness_init_ex(&h, 1);
    static crl_config_t bc;
    char err[512] = "";
    cr_assert_eq(config_defaults(&bc), 0);
    char set[700];
    snprintf(set, sizeof set, "network.broker_publish=ipc://%s/publish", h.dir);
    cr_assert_eq(config_set(&bc, set, err, sizeof err), 0, "%s", err);
    snprintf(set, sizeof set, "network.broker_announce=%s", h.ep_ann);
    cr_assert_eq(config_set(&bc, set, err, sizeof err), 0, "%s", err);
    snprintf(set, sizeof set, "network.broker_fetch=%s", h.ep_fetch);
    cr_assert_eq(config_set(&bc, set, err, sizeof err), 0, "%s", err);
    cr_assert_eq(config_set(&bc, "broker.chunk_bytes=4096", err, sizeof err), 0, "%s", err);
    broker_t *b = broker_new(&bc, err, sizeof err);
    cr_assert_not_null(b, "broker_new: %s", err);
    pthread_t bt;
    cr_assert_eq(pthread_create(&bt, NULL, broker_thread, b), 0);

    /* Publish v1 as the learner does. */
    version_t *v1 = add_version(&h, 1);
    void *pubd = zmq_socket(h.ctx, ZMQ_DEALER);
    cr_assert_eq(wire_socket_setup(pubd, 64 << 20), 0);
    snprintf(set, sizeof set, "ipc://%s/publish", h.dir);
    cr_assert_eq(zmq_connect(pubd, set), 0);
    Crl__WeightsPublish wp;
    crl__weights_publish__init(&wp);
    wp.version = 1;
    wp.total_bytes = v1->bytes;
    wp.crc32c = v1->crc;
    char layout[64];
    snprintf(layout, sizeof layout, "crl-f32-params-v1 n=%zu", h.n_params);
    wp.layout = layout;
    wp.learner_step = 0;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
    env.weights_publish = &wp;
    int sent = -1;
    for (int i = 0; i < 100 && sent != 0; i++) { /* until the connection is up */
        sent = wire_send(pubd, NULL, &env, v1->blob, v1->bytes, NULL);
        if (sent != 0)
            usleep(20000);
    }
    cr_assert_eq(sent, 0);
    Crl__Envelope *ack = NULL;
    int r = wire_recv(pubd, 0, 5000, &h.lim, NULL, NULL, &ack, NULL, err, sizeof err);
    cr_assert_eq(r, 1, "no PublishAck from the broker (%s)", err);
    cr_assert_eq(ack->body_case, CRL__ENVELOPE__BODY_PUBLISH_ACK);
    cr_assert(ack->publish_ack->ok, "publish refused: %s", ack->publish_ack->error);
    wire_envelope_free(&ack);

    start_actor(&h, "broker-actor", NULL);
    Crl__Envelope *e = wait_for(&h, CRL__ENVELOPE__BODY_HELLO, 10000);
    cr_assert_not_null(e);
    wire_envelope_free(&e);
    send_welcome(&h, (uint32_t)h.mc.vocab_size, "digest-1");
    e = wait_for(&h, CRL__ENVELOPE__BODY_WORK_REQUEST, 10000);
    cr_assert_not_null(e, "no WorkRequest: the weights did not arrive through the broker");
    wire_envelope_free(&e);
    grant_t gr;
    make_grant(&gr, 3, 4, 2, 1);
    send_grant(&h, &gr);
    e = wait_for(&h, CRL__ENVELOPE__BODY_TRAJECTORY_GROUP, 15000);
    cr_assert_not_null(e, "no group");
    check_group_shape(&h, e->trajectory_group, &gr, "broker-actor", 1);
    check_group_matches(&h, e->trajectory_group, &gr, 1);
    wire_envelope_free(&e);

    zmq_close(pubd);
    broker_stop(b);
    pthread_join(bt, NULL);
    /* Read after the broker stopped: its counters may trail while it runs. */
    broker_counters_t bcnt;
    broker_get_counters(b, &bcnt);
    broker_destroy(&b);
    cr_assert_geq(bcnt.bytes_served, v1->bytes, "broker served %lu bytes, blob is %zu",
                  (unsigned long)bcnt.bytes_served, v1->bytes);
    harness_fini(&h);
}
