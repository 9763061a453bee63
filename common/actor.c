/* actor: see actor.h. One I/O thread (the caller of actor_run) owns every
 * socket and all protocol state; one compute thread samples the group of
 * one grant at a time. They meet in `job` (mutex + condvar); the compute
 * thread signals completion through an eventfd that the I/O loop polls
 * beside the sockets, so a long generation never delays heartbeats, acks or
 * weight fetches. The model's parameters are only written (weights swap)
 * while no job runs: weights change between groups, never inside one. */
#include "actor.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "checkpoint.h"
#include "crc32c.h"
#include "grpo.h"
#include "log.h"
#include "sampler.h"
#include "security.h"
#include "weights_client.h"
#include "wire.h"

/* Hello is re-sent this often while no Welcome came (clamped heartbeat*2). */
#define ACTOR_HELLO_RETRY_MIN_MS 250
#define ACTOR_HELLO_RETRY_MAX_MS 3000
/* "waiting for learner" is repeated this often while it stays away. */
#define ACTOR_WAIT_LOG_MS 30000
/* Grants beyond what was asked for are queued up to this many, then refused. */
#define ACTOR_MAX_QUEUED_GRANTS 1024
/* Largest G a grant may ask for (= the config's rl.group_size maximum). */
#define ACTOR_MAX_GROUP 1024
/* Weight fetches: requests in flight, delay before the next attempt after
 * an evicted version or a timeout, and after a failed check. */
#define ACTOR_FETCH_WINDOW 4
#define ACTOR_FETCH_RETRY_MS 200
#define ACTOR_FETCH_FAIL_RETRY_MS 1000
/* Longest single poll: bounds the delay of a stop request and of timers. */
#define ACTOR_POLL_MAX_MS 100
#define ACTOR_CLOSE_LINGER_MS 1000

/* sint32 prompts on the wire are int32_t; the model takes int. */
_Static_assert(sizeof(int) == sizeof(int32_t), "int must be 32-bit");

typedef struct {
    uint64_t group_id;
    uint64_t grant_id;
    uint8_t *buf; /* packed Envelope{TrajectoryGroup} */
    size_t len;
    int sent;     /* went out at least once in this session */
} unacked_t;

typedef enum { JOB_IDLE = 0, JOB_BUSY, JOB_DONE } job_state_t;

typedef struct {
    Crl__Envelope *grant;  /* owned; work_grant body */
    uint64_t group_id;
    uint64_t version;
    /* results */
    int rc;
    uint8_t *buf;          /* packed TrajectoryGroup envelope (caller frees) */
    size_t len;
    double seconds;
    long tokens;
} job_t;

struct actor {
    crl_config_t cfg;
    char id[WIRE_MAX_ID_LEN + 1];
    char hostname[256];
    model_config_t expect_model;
    int have_expect;
    atomic_int stop_requests;

    /* sockets */
    void *zctx;
    security_t *sec; /* CurveZMQ client keys (plain mode without keys) */
    void *work;  /* DEALER -> learner ROUTER */
    void *sub;   /* SUB <- broker PUB */
    void *fetch; /* DEALER -> broker ROUTER */
    int wake_fd; /* eventfd: compute thread -> I/O loop */
    wire_counters_t cw, cs, cf;
    wire_limits_t lim_work;
    wire_limits_t lim_weights;

    /* session with the learner */
    int welcomed;          /* at least one Welcome taken */
    int connected;         /* Welcome taken and the learner not silent since */
    char run_id[WIRE_MAX_ID_LEN + 1];
    char digest[WIRE_MAX_TEXT_LEN + 1];
    uint32_t hb_ms, hb_timeout_ms;
    uint64_t last_rx_ms;   /* monotonic time of the learner's last message */
    time_t last_rx_wall;
    uint64_t last_hb_ms, last_hello_ms, wait_logged_ms;
    int waiting;           /* "waiting for learner" state was logged */
    uint64_t started_ms;
    time_t started_wall;

    /* model and weights */
    model_t *model;
    sampler_t *sampler;
    int sampler_group;     /* G the sampler and rollout buffers are sized for */
    grpo_rollout_t *ro;
    uint64_t version;      /* weights held (0 = none) */
    float *staging;        /* (n_params) fetched weights waiting for the swap */
    uint64_t staged_version; /* complete, crc-checked, in staging; 0 = none */
    double staged_fetch_ms;
    weights_fetcher_t *wf; /* drives the fetch socket */
    uint64_t ann_version, ann_total; /* newest usable announce */
    uint32_t ann_crc;
    uint64_t fetch_started_ms;
    uint64_t fetch_retry_at_ms; /* > 0: start no fetch before then */

    /* grants and groups */
    Crl__Envelope **queue; /* FIFO of work_grant envelopes (owned) */
    size_t q_head, q_len, q_cap;
    uint32_t credits_pending; /* asked for, not yet granted */
    int full_logged;
    unacked_t *unacked;
    size_t n_unacked, cap_unacked;
    uint64_t next_group_id;

    /* compute thread */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int quit;              /* guarded by mu */
    job_state_t job_state; /* guarded by mu */
    job_t job;             /* owned by whoever job_state says */

    pthread_mutex_t stats_mu;
    actor_stats_t st;
};

/* ------------------------------------------------------------- helpers */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *hhmmss(time_t t, char *buf, size_t len)
{
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(buf, len, "%H:%M:%S", &tm) == 0)
        snprintf(buf, len, "?");
    return buf;
}

#define STAT_ADD(a, field, n)                                                                      \
    do {                                                                                           \
        pthread_mutex_lock(&(a)->stats_mu);                                                        \
        (a)->st.field += (n);                                                                      \
        pthread_mutex_unlock(&(a)->stats_mu);                                                      \
    } while (0)

#define STAT_SET(a, field, v)                                                                      \
    do {                                                                                           \
        pthread_mutex_lock(&(a)->stats_mu);                                                        \
        (a)->st.field = (v);                                                                       \
        pthread_mutex_unlock(&(a)->stats_mu);                                                      \
    } while (0)

static int job_state(actor_t *a)
{
    pthread_mutex_lock(&a->mu);
    int s = (int)a->job_state;
    pthread_mutex_unlock(&a->mu);
    return s;
}

/* Grants the actor holds: queued plus the one being sampled. */
static size_t held_grants(actor_t *a)
{
    return a->q_len + (job_state(a) == JOB_IDLE ? 0u : 1u);
}

static int model_config_equal(const model_config_t *x, const model_config_t *y)
{
    return x->vocab_size == y->vocab_size && x->dim == y->dim && x->n_layers == y->n_layers &&
           x->n_heads == y->n_heads && x->n_kv_heads == y->n_kv_heads &&
           x->hidden_dim == y->hidden_dim && x->max_seq_len == y->max_seq_len &&
           x->image_size == y->image_size && x->patch_size == y->patch_size &&
           x->tie_embeddings == y->tie_embeddings && x->rope_theta == y->rope_theta &&
           x->norm_eps == y->norm_eps;
}

/* Names the first differing field, for the refusal message. */
static void model_config_diff(const model_config_t *mine, const model_config_t *theirs, char *buf,
                              size_t len)
{
#define DIFF_INT(f)                                                                                \
    if (mine->f != theirs->f) {                                                                    \
        snprintf(buf, len, "model." #f " %d here, %d at the learner", mine->f, theirs->f);        \
        return;                                                                                    \
    }
    DIFF_INT(vocab_size) DIFF_INT(dim) DIFF_INT(n_layers) DIFF_INT(n_heads) DIFF_INT(n_kv_heads)
    DIFF_INT(hidden_dim) DIFF_INT(max_seq_len) DIFF_INT(image_size) DIFF_INT(patch_size)
    DIFF_INT(tie_embeddings)
#undef DIFF_INT
    if (mine->rope_theta != theirs->rope_theta) {
        snprintf(buf, len, "model.rope_theta %g here, %g at the learner", (double)mine->rope_theta,
                 (double)theirs->rope_theta);
        return;
    }
    snprintf(buf, len, "model.norm_eps %g here, %g at the learner", (double)mine->norm_eps,
             (double)theirs->norm_eps);
}

/* ------------------------------------------------------ compute thread */

/* Samples the job's grant with grpo_rollout_group and packs the
 * TrajectoryGroup. Runs on the compute thread; touches only the model,
 * sampler and rollout buffers (the I/O thread leaves them alone while a job
 * runs) and the job. */
static void run_job(actor_t *a, job_t *job)
{
    const Crl__WorkGrant *g = job->grant->work_grant;
    const model_config_t *mc = &a->model->cfg;
    grpo_rollout_request_t req;
    memset(&req, 0, sizeof req);
    req.prompt[0] = (const int *)g->prompt_tokens;
    req.prompt_len[0] = (int)g->n_prompt_tokens;
    if (g->alt_count > 0) {
        req.prompt[1] = (const int *)g->prompt_tokens_alt;
        req.prompt_len[1] = (int)g->n_prompt_tokens_alt;
        req.alt_count = (int)g->alt_count;
    }
    req.image = g->image.len ? g->image.data : NULL;
    req.G = (int)g->group_size;
    req.temperature = g->temperature;
    req.top_p = g->top_p;
    /* A prompt + response longer than the model's context cannot be
     * sampled: cut the responses (logged by the I/O thread at grant time). */
    int longest = req.prompt_len[0] > req.prompt_len[1] ? req.prompt_len[0] : req.prompt_len[1];
    int max_new = (int)g->max_new_tokens;
    if (longest + max_new > mc->max_seq_len)
        max_new = mc->max_seq_len - longest;
    req.max_new_tokens = max_new;
    req.seed = g->seed;

    double t0 = mono_s();
    job->rc = grpo_rollout_group(a->model, a->sampler, &req, a->ro);
    job->seconds = mono_s() - t0;
    if (job->rc != 0)
        return;

    const grpo_rollout_t *ro = a->ro;
    Crl__Sample *samples = calloc((size_t)ro->G, sizeof *samples);
    Crl__Sample **sp = calloc((size_t)ro->G, sizeof *sp);
    if (!samples || !sp) {
        job->rc = -ENOMEM;
        goto done;
    }
    long tokens = 0;
    for (int i = 0; i < ro->G; i++) {
        crl__sample__init(&samples[i]);
        samples[i].tokens = (int32_t *)(ro->tokens + (size_t)i * (size_t)ro->max_new);
        samples[i].n_tokens = (size_t)ro->len[i];
        samples[i].logprobs = ro->logp + (size_t)i * (size_t)ro->max_new;
        samples[i].n_logprobs = (size_t)ro->len[i];
        samples[i].finished_by_eos = ro->finished_by_eos[i] ? 1 : 0;
        samples[i].prompt_index = (uint32_t)ro->prompt_index[i];
        sp[i] = &samples[i];
        tokens += ro->len[i];
    }
    Crl__TrajectoryGroup tg;
    crl__trajectory_group__init(&tg);
    tg.actor_id = a->id;
    tg.group_id = job->group_id;
    tg.grant_id = g->grant_id;
    tg.prompt_id = g->prompt_id;
    tg.weights_version = job->version;
    tg.prompt_tokens = g->prompt_tokens;
    tg.n_prompt_tokens = g->n_prompt_tokens;
    if (g->alt_count > 0) {
        tg.prompt_tokens_alt = g->prompt_tokens_alt;
        tg.n_prompt_tokens_alt = g->n_prompt_tokens_alt;
    }
    tg.samples = sp;
    tg.n_samples = (size_t)ro->G;
    tg.generation_seconds = job->seconds;
    tg.group_size = g->group_size;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
    env.trajectory_group = &tg;
    job->buf = wire_encode(&env, &job->len);
    job->rc = job->buf ? 0 : -ENOMEM;
    job->tokens = tokens;
done:
    free(samples);
    free(sp);
}

static void *compute_main(void *arg)
{
    actor_t *a = arg;
    /* Signals go to the I/O thread, whose zmq_poll they interrupt. */
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, NULL);
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (!a->quit && a->job_state != JOB_BUSY)
            pthread_cond_wait(&a->cv, &a->mu);
        if (a->quit)
            break;
        pthread_mutex_unlock(&a->mu);
        run_job(a, &a->job);
        pthread_mutex_lock(&a->mu);
        a->job_state = JOB_DONE;
        uint64_t one = 1;
        /* The counter only wakes the poll; a failed write (never expected)
         * is caught by the I/O loop's periodic job check. */
        if (write(a->wake_fd, &one, sizeof one) < 0) {
        }
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* ------------------------------------------------------------- sending */

/* With ZMQ_IMMEDIATE a DEALER is writable only while a connection is up:
 * sending to an absent peer is skipped quietly (it is the normal "not there
 * yet" case, retried by the timers) instead of failing with a log line. */
static int writable(void *sock)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &len) != 0)
        return 1; /* let the send report the error */
    return (ev & ZMQ_POLLOUT) != 0;
}

static int send_env(void *sock, wire_counters_t *c, Crl__Envelope *env)
{
    if (!writable(sock))
        return -EAGAIN;
    return wire_send(sock, NULL, env, NULL, 0, c);
}

/* Sends an already packed envelope (unacked groups are kept packed). */
static int send_packed(actor_t *a, const uint8_t *buf, size_t len)
{
    if (!writable(a->work))
        return -EAGAIN;
    if (zmq_send(a->work, buf, len, ZMQ_DONTWAIT) < 0) {
        int e = errno;
        a->cw.send_failed++;
        return -e;
    }
    a->cw.sent++;
    return 0;
}

static void send_hello(actor_t *a, uint64_t now)
{
    Crl__Hello h;
    crl__hello__init(&h);
    h.actor_id = a->id;
    h.hostname = a->hostname;
    h.pid = (uint32_t)getpid();
    h.n_threads = (uint32_t)a->cfg.actor.threads;
    uint64_t *ids = NULL;
    if (a->n_unacked) {
        ids = malloc(a->n_unacked * sizeof *ids);
        if (ids) {
            for (size_t i = 0; i < a->n_unacked; i++)
                ids[i] = a->unacked[i].group_id;
            h.unacked_group_ids = ids;
            h.n_unacked_group_ids = a->n_unacked;
        }
    }
    h.weights_version = a->version;
    h.next_group_id = a->next_group_id;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    /* Skipped while the connection is not up: tried again on the next
     * loop turn, so the first Hello leaves as soon as it can. */
    if (send_env(a->work, &a->cw, &env) == 0) {
        a->last_hello_ms = now;
        STAT_ADD(a, hellos_sent, 1);
    }
    free(ids);
}

static int actor_state_now(actor_t *a)
{
    if (atomic_load(&a->stop_requests) > 0)
        return CRL__ACTOR_STATE__ACTOR_STATE_DRAINING;
    if (job_state(a) != JOB_IDLE)
        return CRL__ACTOR_STATE__ACTOR_STATE_GENERATING;
    if (a->wf && weights_fetch_active(a->wf))
        return CRL__ACTOR_STATE__ACTOR_STATE_FETCHING_WEIGHTS;
    return CRL__ACTOR_STATE__ACTOR_STATE_IDLE;
}

static void send_heartbeat(actor_t *a, uint64_t now)
{
    Crl__Heartbeat hb;
    crl__heartbeat__init(&hb);
    hb.sent_unix_ms = wall_ms();
    hb.state = actor_state_now(a);
    hb.weights_version = a->version;
    hb.unacked_groups = (uint32_t)a->n_unacked;
    hb.open_grants = (uint32_t)held_grants(a);
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    a->last_hb_ms = now;
    if (send_env(a->work, &a->cw, &env) == 0)
        STAT_ADD(a, heartbeats_sent, 1);
}

static void send_bye(actor_t *a, const char *reason)
{
    Crl__Bye b;
    crl__bye__init(&b);
    b.reason = (char *)reason;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_BYE;
    env.bye = &b;
    if (send_env(a->work, &a->cw, &env) != 0)
        log_warn("could not send Bye to the learner at %s (it will notice the silence)",
                 a->cfg.network.learner_work);
}

/* Asks for as many grants as keep the actor at actor.credits held, as
 * long as the groups they will produce fit the unacked table. */
static void maybe_request_work(actor_t *a)
{
    if (!a->connected || a->version == 0 || atomic_load(&a->stop_requests) > 0)
        return;
    long held = (long)held_grants(a);
    long want = (long)a->cfg.actor.credits - held - (long)a->credits_pending;
    long room = (long)a->cfg.actor.max_unacked - (long)a->n_unacked - held -
                (long)a->credits_pending;
    if (room <= 0 && want > 0) {
        if (!a->full_logged)
            log_warn("unacked table full (%zu groups held awaiting the learner's Ack, "
                     "actor.max_unacked = %d): not asking for work until acks arrive",
                     a->n_unacked, a->cfg.actor.max_unacked);
        a->full_logged = 1;
        return;
    }
    if (want > room)
        want = room;
    if (want <= 0)
        return;
    if (a->full_logged) {
        log_info("unacked table has room again (%zu held): asking for work", a->n_unacked);
        a->full_logged = 0;
    }
    Crl__WorkRequest wr;
    crl__work_request__init(&wr);
    wr.credits = (uint32_t)want;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_REQUEST;
    env.work_request = &wr;
    if (send_env(a->work, &a->cw, &env) == 0)
        a->credits_pending += (uint32_t)want;
}

/* ------------------------------------------------------------- weights */

/* Starts fetching the newest announced version when it is newer than what
 * is held or staged, and drives the fetch in progress (re-sends, timeout). */
static void maybe_fetch(actor_t *a, uint64_t now)
{
    if (!a->model || !a->wf)
        return; /* the Welcome tells the model's size */
    if (weights_fetch_active(a->wf)) {
        int rc = weights_fetch_tick(a->wf, now);
        if (rc < 0) {
            STAT_ADD(a, fetch_failures, 1);
            log_warn("weights v%" PRIu64 " from %s: %s; retrying", weights_fetch_version(a->wf),
                     a->cfg.network.broker_fetch, weights_fetch_error(a->wf));
            a->fetch_retry_at_ms = now + ACTOR_FETCH_RETRY_MS;
        }
        return;
    }
    if (a->fetch_retry_at_ms && now < a->fetch_retry_at_ms)
        return;
    uint64_t have = a->staged_version > a->version ? a->staged_version : a->version;
    if (a->ann_version <= have)
        return;
    int rc = weights_fetch_begin(a->wf, a->ann_version, a->ann_total, a->ann_crc, a->staging);
    if (rc != 0) {
        log_error("cannot start fetching weights v%" PRIu64 ": %s", a->ann_version, strerror(-rc));
        a->fetch_retry_at_ms = now + 1000;
        return;
    }
    a->fetch_started_ms = now;
    log_debug("fetching weights v%" PRIu64 " (%.1f MB) from %s", a->ann_version,
              (double)a->ann_total / 1e6, a->cfg.network.broker_fetch);
}

/* One message from the broker's fetch socket. */
static void on_fetch_msg(actor_t *a, const Crl__Envelope *env, const zmq_msg_t *raw, uint64_t now)
{
    uint64_t v = weights_fetch_version(a->wf);
    int rc = weights_fetch_on_message(a->wf, env, raw);
    if (rc == WEIGHTS_FETCH_BUSY)
        return;
    if (rc == WEIGHTS_FETCH_DONE) {
        a->staged_version = v;
        a->staged_fetch_ms = (double)(now - a->fetch_started_ms);
        a->fetch_retry_at_ms = 0;
        return;
    }
    if (rc == -ESTALE) {
        /* Evicted while we fetched: the broker holds a newer one, whose
         * announce follows (the broker re-announces its latest). */
        log_info("weights v%" PRIu64 " is gone from the broker (it holds v%" PRIu64 ")", v,
                 weights_fetch_latest_version(a->wf));
        a->fetch_retry_at_ms = now + ACTOR_FETCH_RETRY_MS;
        return;
    }
    STAT_ADD(a, fetch_failures, 1);
    log_warn("weights v%" PRIu64 " from %s failed: %s; retrying in %d ms", v,
             a->cfg.network.broker_fetch, weights_fetch_error(a->wf), ACTOR_FETCH_FAIL_RETRY_MS);
    a->fetch_retry_at_ms = now + ACTOR_FETCH_FAIL_RETRY_MS;
}

/* Remembers the newest announce whose blob fits this model. Before the
 * Welcome the size cannot be checked yet: on_welcome checks it then. */
static void on_announce(actor_t *a, const Crl__WeightsAnnounce *an)
{
    /* An older version than the newest announced, or the same version with
     * other bytes: the learner resumed from an earlier checkpoint and the
     * broker dropped the versions after it. The weights of that abandoned
     * history must go, or every group made with them is refused (its
     * version is above anything the resumed learner published) and no
     * grant can ever be served: a livelock. */
    int rewound = a->ann_version > 0 && (an->version < a->ann_version ||
                                         (an->version == a->ann_version && an->crc32c != a->ann_crc));
    if (!rewound && an->version <= a->ann_version)
        return;
    if (a->model) {
        uint64_t want = (uint64_t)a->model->n_params * sizeof(float);
        char layout[64];
        snprintf(layout, sizeof layout, "crl-f32-params-v1 n=%zu", a->model->n_params);
        if (an->total_bytes != want || (an->layout && an->layout[0] && strcmp(an->layout, layout))) {
            STAT_ADD(a, bad_messages, 1);
            log_warn("broker at %s announces v%" PRIu64 " of %" PRIu64
                     " bytes, layout \"%s\"; this model needs %" PRIu64 " bytes, \"%s\": ignored",
                     a->cfg.network.broker_announce, an->version, an->total_bytes,
                     an->layout ? an->layout : "", want, layout);
            return;
        }
    }
    if (rewound) {
        /* Held weights of the same version stay when their bytes match
         * (a resumed learner re-publishes its checkpoint's weights). */
        int keep = a->model && a->version > 0 && a->version == an->version &&
                   crc32c(a->model->params, a->model->n_params * sizeof(float)) == an->crc32c;
        log_warn("broker at %s now announces v%" PRIu64 " (crc32c 0x%08x) after v%" PRIu64
                 " (0x%08x): the learner went back to an earlier checkpoint; %s",
                 a->cfg.network.broker_announce, an->version, an->crc32c, a->ann_version,
                 a->ann_crc,
                 keep || a->version < an->version ? "fetching it"
                                                  : "the newer weights held here are dropped");
        if (a->wf && weights_fetch_active(a->wf))
            weights_fetch_cancel(a->wf);
        a->staged_version = 0;
        a->fetch_retry_at_ms = 0;
        if (!keep && a->version >= an->version) {
            a->version = 0; /* no grant starts until v is fetched */
            STAT_SET(a, weights_version, 0);
        }
    }
    a->ann_version = an->version;
    a->ann_total = an->total_bytes;
    a->ann_crc = an->crc32c;
}

/* Swaps staged weights in while no group is being sampled. */
static void maybe_swap_weights(actor_t *a)
{
    if (a->staged_version <= a->version || job_state(a) != JOB_IDLE)
        return;
    memcpy(a->model->params, a->staging, a->model->n_params * sizeof(float));
    log_info("weights v%" PRIu64 " -> v%" PRIu64 " (fetched in %.0f ms)", a->version,
             a->staged_version, a->staged_fetch_ms);
    a->version = a->staged_version;
    a->staged_version = 0;
    pthread_mutex_lock(&a->stats_mu);
    a->st.versions_seen++;
    a->st.weights_version = a->version;
    pthread_mutex_unlock(&a->stats_mu);
}

/* ------------------------------------------------------ learner messages */

/* Takes a Welcome: builds (or checks) the model, sets the session
 * parameters, re-sends every unacked group. Returns -EPROTO when this
 * actor cannot serve the learner (fatal; message in err). */
static int on_welcome(actor_t *a, const Crl__Welcome *w, uint64_t now, char *err, size_t errlen)
{
    const char *addr = a->cfg.network.learner_work;
    model_config_t mc;
    char cerr[512];
    if (ckpt_config_from_json(w->model_config_json, &mc, cerr, sizeof cerr) != 0) {
        set_err(err, errlen, "learner at %s sent a model config this actor cannot use: %s", addr,
                cerr);
        return -EPROTO;
    }
    if ((int64_t)w->vocab_size != mc.vocab_size || (int64_t)w->image_size != mc.image_size) {
        set_err(err, errlen,
                "learner at %s: Welcome says vocab_size %u / image_size %u but its model config "
                "has %d / %d",
                addr, w->vocab_size, w->image_size, mc.vocab_size, mc.image_size);
        return -EPROTO;
    }
    if (a->have_expect && !model_config_equal(&a->expect_model, &mc)) {
        char d[256];
        model_config_diff(&a->expect_model, &mc, d, sizeof d);
        set_err(err, errlen,
                "learner at %s runs another model than this actor's config (%s): start the actor "
                "with the run's config or without --config",
                addr, d);
        return -EPROTO;
    }
    const char *digest = w->config_digest ? w->config_digest : "";
    if (a->welcomed && strcmp(digest, a->digest) != 0) {
        set_err(err, errlen,
                "learner at %s now has config digest \"%s\", this actor joined with \"%s\" (another "
                "run?): restart the actor",
                addr, digest, a->digest);
        return -EPROTO;
    }
    if (a->model && !model_config_equal(&a->model->cfg, &mc)) {
        char d[256];
        model_config_diff(&a->model->cfg, &mc, d, sizeof d);
        set_err(err, errlen, "learner at %s changed its model (%s): restart the actor", addr, d);
        return -EPROTO;
    }
    if (!a->model) {
        a->model = model_new(&mc, 0);
        a->staging = a->model ? malloc(a->model->n_params * sizeof(float)) : NULL;
        if (!a->model || !a->staging) {
            set_err(err, errlen, "cannot allocate the model (%d layers, dim %d): out of memory",
                    mc.n_layers, mc.dim);
            return -ENOMEM;
        }
        log_info("model from the learner: %d layers, dim %d, vocab %d, image %d, %zu parameters",
                 mc.n_layers, mc.dim, mc.vocab_size, mc.image_size, a->model->n_params);
        if (a->ann_version && a->ann_total != (uint64_t)a->model->n_params * sizeof(float)) {
            log_warn("broker at %s announced v%" PRIu64 " of %" PRIu64 " bytes, this model needs "
                     "%zu: ignored",
                     a->cfg.network.broker_announce, a->ann_version, a->ann_total,
                     a->model->n_params * sizeof(float));
            a->ann_version = 0;
        }
    }
    snprintf(a->digest, sizeof a->digest, "%s", digest);
    if (w->run_id && strcmp(w->run_id, a->run_id) != 0 && a->run_id[0])
        log_warn("learner run id changed from %s to %s", a->run_id, w->run_id);
    snprintf(a->run_id, sizeof a->run_id, "%s", w->run_id ? w->run_id : "");

    wire_limits_default(&a->lim_work);
    a->lim_work.vocab_size = (uint32_t)mc.vocab_size;
    a->lim_work.max_prompt_tokens = (uint32_t)mc.max_seq_len;
    a->lim_work.max_new_tokens = (uint32_t)mc.max_seq_len;
    a->lim_work.max_group_size = ACTOR_MAX_GROUP;
    a->lim_work.image_size = (uint32_t)mc.image_size;
    a->lim_work.max_envelope_bytes = (uint64_t)a->cfg.network.max_msg_bytes;

    a->hb_ms = w->heartbeat_ms;
    a->hb_timeout_ms = w->heartbeat_timeout_ms;
    int again = a->welcomed;
    a->welcomed = 1;
    a->connected = 1;
    a->last_rx_ms = now;
    a->credits_pending = 0; /* a new session: the learner forgot what was asked */
    STAT_ADD(a, welcomes, 1);
    if (a->waiting) {
        log_info("learner at %s is back (run %s, version %" PRIu64 ")", addr, a->run_id,
                 w->current_version);
        a->waiting = 0;
    } else {
        log_info("%s learner at %s (run %s, actor #%u, version %" PRIu64 ", heartbeat %u/%u ms)",
                 again ? "re-welcomed by" : "joined", addr, a->run_id, w->actor_index,
                 w->current_version, w->heartbeat_ms, w->heartbeat_timeout_ms);
    }
    size_t resent = 0;
    for (size_t i = 0; i < a->n_unacked; i++) {
        a->unacked[i].sent = send_packed(a, a->unacked[i].buf, a->unacked[i].len) == 0;
        resent += (size_t)a->unacked[i].sent;
    }
    if (a->n_unacked) {
        log_info("re-sent %zu of %zu unacked groups", resent, a->n_unacked);
        STAT_ADD(a, groups_resent, resent);
    }
    send_heartbeat(a, now);
    return 0;
}

static void on_ack(actor_t *a, const Crl__Ack *ack)
{
    for (size_t e = 0; e < ack->n_entries; e++) {
        const Crl__AckEntry *en = ack->entries[e];
        size_t i;
        for (i = 0; i < a->n_unacked; i++)
            if (a->unacked[i].group_id == en->group_id)
                break;
        if (i == a->n_unacked) {
            log_debug("ack for group %" PRIu64 " that is not held (acked twice?)", en->group_id);
            continue;
        }
        if (en->status == CRL__ACK_STATUS__ACK_STATUS_ACCEPTED) {
            STAT_ADD(a, groups_accepted, 1);
        } else {
            STAT_ADD(a, groups_dropped, 1);
            const ProtobufCEnumValue *ev =
                protobuf_c_enum_descriptor_get_value(&crl__drop_reason__descriptor, en->reason);
            log_info("learner dropped group %" PRIu64 " (grant %" PRIu64 "): %s", en->group_id,
                     a->unacked[i].grant_id, ev ? ev->name : "?");
        }
        free(a->unacked[i].buf);
        a->unacked[i] = a->unacked[--a->n_unacked];
    }
    STAT_SET(a, groups_unacked, a->n_unacked);
}

static void on_grant(actor_t *a, Crl__Envelope **envp)
{
    const Crl__WorkGrant *g = (*envp)->work_grant;
    STAT_ADD(a, grants_received, 1);
    if (a->credits_pending)
        a->credits_pending--;
    if (a->q_len >= ACTOR_MAX_QUEUED_GRANTS) {
        STAT_ADD(a, grants_refused, 1);
        log_error("grant %" PRIu64 " refused: %zu grants already queued (the learner grants more "
                  "than asked)",
                  g->grant_id, a->q_len);
        return;
    }
    if (a->q_len == a->q_cap) {
        size_t cap = a->q_cap ? a->q_cap * 2 : 16;
        Crl__Envelope **q = malloc(cap * sizeof *q);
        if (!q) {
            STAT_ADD(a, grants_refused, 1);
            log_error("grant %" PRIu64 " refused: out of memory", g->grant_id);
            return;
        }
        for (size_t i = 0; i < a->q_len; i++)
            q[i] = a->queue[(a->q_head + i) % a->q_cap];
        free(a->queue);
        a->queue = q;
        a->q_cap = cap;
        a->q_head = 0;
    }
    a->queue[(a->q_head + a->q_len) % a->q_cap] = *envp;
    a->q_len++;
    *envp = NULL; /* the queue owns it */
    log_debug("grant %" PRIu64 " (%s, G %u, min version %" PRIu64 ") queued", g->grant_id,
              g->prompt_id, g->group_size, g->min_weights_version);
}

static void handle_learner_msg(actor_t *a, Crl__Envelope **envp, uint64_t now, int *fatal,
                               char *err, size_t errlen)
{
    Crl__Envelope *env = *envp;
    a->last_rx_ms = now;
    a->last_rx_wall = time(NULL);
    if (env->body_case == CRL__ENVELOPE__BODY_WELCOME) {
        int rc = on_welcome(a, env->welcome, now, err, errlen);
        if (rc == -EPROTO || rc == -ENOMEM)
            *fatal = rc;
        return;
    }
    if (!a->welcomed) {
        STAT_ADD(a, bad_messages, 1);
        log_warn("learner at %s sent %s before any Welcome: dropped", a->cfg.network.learner_work,
                 wire_body_name(env));
        return;
    }
    switch (env->body_case) {
    case CRL__ENVELOPE__BODY_WORK_GRANT:
        on_grant(a, envp);
        break;
    case CRL__ENVELOPE__BODY_ACK:
        on_ack(a, env->ack);
        break;
    case CRL__ENVELOPE__BODY_HEARTBEAT:
        break;
    case CRL__ENVELOPE__BODY_BYE:
        log_info("learner at %s said bye: %s", a->cfg.network.learner_work,
                 env->bye->reason ? env->bye->reason : "");
        if (env->bye->reason && strncmp(env->bye->reason, "finished", 8) == 0) {
            log_info("the run is finished: stopping");
            actor_stop(a);
        } else {
            a->connected = 0; /* Hello again until it comes back */
        }
        break;
    default:
        STAT_ADD(a, bad_messages, 1);
        log_warn("learner at %s sent an unexpected %s: dropped", a->cfg.network.learner_work,
                 wire_body_name(env));
        break;
    }
}

/* ------------------------------------------------------------ the job */

/* Grows the sampler and rollout buffers to G (they are sized once per
 * largest G seen; max_prompt = max_new = the model's context). */
static int ensure_sampler(actor_t *a, int G)
{
    if (a->sampler && G <= a->sampler_group)
        return 0;
    sampler_destroy(&a->sampler);
    grpo_rollout_destroy(&a->ro);
    const model_config_t *mc = &a->model->cfg;
    a->sampler = sampler_new(a->model, mc->max_seq_len, mc->max_seq_len, G);
    a->ro = grpo_rollout_new(G, mc->max_seq_len, mc->image_size);
    if (!a->sampler || !a->ro) {
        sampler_destroy(&a->sampler);
        grpo_rollout_destroy(&a->ro);
        a->sampler_group = 0;
        return -ENOMEM;
    }
    a->sampler_group = G;
    return 0;
}

/* Checks a grant this actor's model can sample; logs and returns -EINVAL
 * otherwise. */
static int check_grant(actor_t *a, const Crl__WorkGrant *g)
{
    const model_config_t *mc = &a->model->cfg;
    const char *why = NULL;
    char buf[256];
    if (g->alt_count > 0 && g->n_prompt_tokens_alt == 0)
        why = "alt_count > 0 without prompt_tokens_alt";
    else if (g->alt_count >= g->group_size && g->alt_count > 0)
        why = "alt_count must be below group_size";
    else if ((uint64_t)g->image_size != (uint64_t)mc->image_size && g->image.len)
        why = "image size differs from the model's";
    else if ((int)g->n_prompt_tokens >= mc->max_seq_len ||
             (int)g->n_prompt_tokens_alt >= mc->max_seq_len) {
        snprintf(buf, sizeof buf, "prompt of %zu/%zu tokens leaves no room in max_seq_len %d",
                 g->n_prompt_tokens, g->n_prompt_tokens_alt, mc->max_seq_len);
        why = buf;
    }
    if (!why && g->alt_count > 0) {
        /* wire_validate checks the main prompt only. */
        for (size_t i = 0; i < g->n_prompt_tokens_alt && !why; i++) {
            int32_t t = g->prompt_tokens_alt[i];
            if (t != MODEL_IMAGE_SLOT && (t < 0 || t >= mc->vocab_size)) {
                snprintf(buf, sizeof buf, "alt prompt token %zu = %d outside [0, %d)", i, (int)t,
                         mc->vocab_size);
                why = buf;
            }
        }
    }
    if (why) {
        log_error("grant %" PRIu64 " (%s) refused: %s", g->grant_id, g->prompt_id, why);
        return -EINVAL;
    }
    int longest = (int)(g->n_prompt_tokens > g->n_prompt_tokens_alt ? g->n_prompt_tokens
                                                                     : g->n_prompt_tokens_alt);
    if (longest + (int)g->max_new_tokens > mc->max_seq_len)
        log_warn("grant %" PRIu64 ": prompt %d + max_new_tokens %u exceed max_seq_len %d; "
                 "responses are cut at %d tokens",
                 g->grant_id, longest, g->max_new_tokens, mc->max_seq_len,
                 mc->max_seq_len - longest);
    return 0;
}

/* Starts the oldest queued grant when the weights are new enough, the
 * compute thread is free and the unacked table has room. */
static void maybe_start_job(actor_t *a)
{
    while (a->q_len && job_state(a) == JOB_IDLE && atomic_load(&a->stop_requests) == 0 &&
           a->version > 0 && a->n_unacked < (size_t)a->cfg.actor.max_unacked) {
        Crl__Envelope *env = a->queue[a->q_head];
        const Crl__WorkGrant *g = env->work_grant;
        if (g->min_weights_version > a->version)
            return; /* maybe_fetch gets a newer version first */
        a->q_head = (a->q_head + 1) % a->q_cap;
        a->q_len--;
        if (check_grant(a, g) != 0 || ensure_sampler(a, (int)g->group_size) != 0) {
            STAT_ADD(a, grants_refused, 1);
            wire_envelope_free(&env);
            continue;
        }
        pthread_mutex_lock(&a->mu);
        memset(&a->job, 0, sizeof a->job);
        a->job.grant = env;
        a->job.group_id = a->next_group_id++;
        a->job.version = a->version;
        a->job_state = JOB_BUSY;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
    }
}

/* Takes a finished job: the group goes into the unacked table and out to
 * the learner. */
static void collect_job(actor_t *a)
{
    pthread_mutex_lock(&a->mu);
    if (a->job_state != JOB_DONE) {
        pthread_mutex_unlock(&a->mu);
        return;
    }
    job_t job = a->job;
    memset(&a->job, 0, sizeof a->job);
    a->job_state = JOB_IDLE;
    pthread_mutex_unlock(&a->mu);

    const Crl__WorkGrant *g = job.grant->work_grant;
    if (job.rc != 0) {
        STAT_ADD(a, grants_refused, 1);
        log_error("grant %" PRIu64 " (%s): sampling failed (%s); grant dropped", g->grant_id,
                  g->prompt_id, strerror(-job.rc));
        goto done;
    }
    STAT_ADD(a, groups_generated, 1);
    if (a->n_unacked == a->cap_unacked) {
        size_t cap = a->cap_unacked ? a->cap_unacked * 2 : 16;
        unacked_t *u = realloc(a->unacked, cap * sizeof *u);
        if (!u) {
            log_error("group %" PRIu64 " lost: out of memory", job.group_id);
            free(job.buf);
            goto done;
        }
        a->unacked = u;
        a->cap_unacked = cap;
    }
    unacked_t *u = &a->unacked[a->n_unacked++];
    *u = (unacked_t){ .group_id = job.group_id, .grant_id = g->grant_id, .buf = job.buf,
                      .len = job.len };
    STAT_SET(a, groups_unacked, a->n_unacked);
    log_debug("group %" PRIu64 " (grant %" PRIu64 ", v%" PRIu64 "): %u samples, %ld tokens in "
              "%.2f s",
              job.group_id, g->grant_id, job.version, g->group_size, job.tokens, job.seconds);
    if (a->connected && send_packed(a, job.buf, job.len) == 0) {
        u->sent = 1;
        STAT_ADD(a, groups_sent, 1);
    }
    /* else: held; run_timers retries while connected, and every Welcome
     * re-sends all */
done:
    wire_envelope_free(&job.grant);
}

/* ---------------------------------------------------------- the loop */

static void drain_wake(actor_t *a)
{
    uint64_t v;
    if (read(a->wake_fd, &v, sizeof v) < 0) {
        /* EAGAIN: nothing pending; the job state is checked anyway */
    }
}

static void count_drop(actor_t *a, int rc)
{
    if (rc == -EPROTO)
        STAT_ADD(a, bad_messages, 1);
}

/* Timers: heartbeats, learner silence, Hello retries. */
static void run_timers(actor_t *a, uint64_t now)
{
    const char *addr = a->cfg.network.learner_work;
    uint32_t hb = a->welcomed ? a->hb_ms : (uint32_t)a->cfg.learner.heartbeat_ms;
    uint32_t timeout =
        a->welcomed ? a->hb_timeout_ms : (uint32_t)a->cfg.learner.heartbeat_timeout_ms;
    uint64_t retry = (uint64_t)hb * 2;
    if (retry < ACTOR_HELLO_RETRY_MIN_MS)
        retry = ACTOR_HELLO_RETRY_MIN_MS;
    if (retry > ACTOR_HELLO_RETRY_MAX_MS)
        retry = ACTOR_HELLO_RETRY_MAX_MS;

    if (a->connected && now - a->last_rx_ms > timeout)
        a->connected = 0;
    if (a->connected) {
        if (now - a->last_hb_ms >= hb)
            send_heartbeat(a, now);
        /* Groups whose send failed (queue full, connection just dropped). */
        for (size_t i = 0; i < a->n_unacked; i++)
            if (!a->unacked[i].sent &&
                send_packed(a, a->unacked[i].buf, a->unacked[i].len) == 0) {
                a->unacked[i].sent = 1;
                STAT_ADD(a, groups_sent, 1);
            }
        return;
    }
    /* Not connected: (re-)Hello now and then, and say what we wait for. */
    uint64_t silent_since = a->welcomed ? a->last_rx_ms : a->started_ms;
    if (now - silent_since > timeout &&
        (!a->waiting || now - a->wait_logged_ms >= ACTOR_WAIT_LOG_MS)) {
        char t[32];
        time_t since = a->welcomed ? a->last_rx_wall : a->started_wall;
        log_warn("waiting for learner at %s since %s (%zu unacked groups held)", addr,
                 hhmmss(since, t, sizeof t), a->n_unacked);
        a->waiting = 1;
        a->wait_logged_ms = now;
    }
    if (a->last_hello_ms == 0 || now - a->last_hello_ms >= retry)
        send_hello(a, now);
}

int actor_run(actor_t *a, char *err, size_t errlen)
{
    char rerr[512];
    int rc = 0;
    int fatal = 0;
    a->started_ms = mono_ms();
    a->started_wall = time(NULL);
    log_info("actor %s starting: learner %s, broker %s / %s, credits %d", a->id,
             a->cfg.network.learner_work, a->cfg.network.broker_announce,
             a->cfg.network.broker_fetch, a->cfg.actor.credits);
    send_hello(a, a->started_ms);
    int drain_logged = 0;

    for (;;) {
        uint64_t now = mono_ms();
        int stops = atomic_load(&a->stop_requests);
        if (stops > 0 && !drain_logged) {
            log_info("stopping%s", job_state(a) == JOB_BUSY ? " after the group in progress" : "");
            drain_logged = 1;
        }
        collect_job(a);
        if (stops >= 2 || (stops > 0 && job_state(a) == JOB_IDLE))
            break;
        run_timers(a, now);
        maybe_swap_weights(a);
        maybe_fetch(a, now);
        maybe_start_job(a);
        maybe_request_work(a);

        zmq_pollitem_t items[4] = {
            { .socket = a->work, .events = ZMQ_POLLIN },
            { .socket = a->sub, .events = ZMQ_POLLIN },
            { .socket = a->fetch, .events = ZMQ_POLLIN },
            { .socket = NULL, .fd = a->wake_fd, .events = ZMQ_POLLIN },
        };
        int n = zmq_poll(items, 4, ACTOR_POLL_MAX_MS);
        if (n < 0) {
            if (errno == EINTR)
                continue; /* a signal: the loop head looks at stop_requests */
            rc = -errno;
            set_err(err, errlen, "zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        now = mono_ms();
        if (items[3].revents & ZMQ_POLLIN)
            drain_wake(a);
        /* Each socket is drained (bounded) so a busy one cannot starve the rest. */
        for (int i = 0; i < 64 && (items[0].revents & ZMQ_POLLIN); i++) {
            Crl__Envelope *env = NULL;
            int r = wire_recv(a->work, 0, 0, a->welcomed ? &a->lim_work : &a->lim_weights, &a->cw,
                              NULL, &env, NULL, rerr, sizeof rerr);
            if (r <= 0) {
                count_drop(a, r);
                if (r == -EPROTO)
                    continue;
                break;
            }
            handle_learner_msg(a, &env, now, &fatal, err, errlen);
            wire_envelope_free(&env);
            if (fatal)
                break;
        }
        if (fatal) {
            rc = fatal;
            log_error("%s", err);
            break;
        }
        for (int i = 0; i < 64 && (items[1].revents & ZMQ_POLLIN); i++) {
            Crl__Envelope *env = NULL;
            int r = wire_recv(a->sub, 0, 0, &a->lim_weights, &a->cs, NULL, &env, NULL, rerr,
                              sizeof rerr);
            if (r <= 0) {
                count_drop(a, r);
                if (r == -EPROTO)
                    continue;
                break;
            }
            if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE) {
                on_announce(a, env->weights_announce);
            } else {
                STAT_ADD(a, bad_messages, 1);
                log_warn("broker at %s announced an unexpected %s: dropped",
                         a->cfg.network.broker_announce, wire_body_name(env));
            }
            wire_envelope_free(&env);
        }
        for (int i = 0; i < 64 && (items[2].revents & ZMQ_POLLIN); i++) {
            Crl__Envelope *env = NULL;
            zmq_msg_t raw;
            int r = wire_recv(a->fetch, 0, 0, &a->lim_weights, &a->cf, NULL, &env, &raw, rerr,
                              sizeof rerr);
            if (r <= 0) {
                zmq_msg_close(&raw);
                count_drop(a, r);
                if (r == -EPROTO)
                    continue;
                break;
            }
            if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_CHUNK) {
                on_fetch_msg(a, env, &raw, now);
            } else {
                STAT_ADD(a, bad_messages, 1);
                log_warn("broker at %s sent an unexpected %s on the fetch socket: dropped",
                         a->cfg.network.broker_fetch, wire_body_name(env));
            }
            zmq_msg_close(&raw);
            wire_envelope_free(&env);
        }
    }

    /* A group finished while stopping still goes out: the learner may use it. */
    collect_job(a);
    if (atomic_load(&a->stop_requests) >= 2 && job_state(a) == JOB_BUSY)
        log_warn("abandoning the group in progress");
    if (a->welcomed)
        send_bye(a, rc == 0 ? "shutdown" : "error");

    actor_stats_t s;
    actor_get_stats(a, &s);
    char cw[256], cs[256], cf[256];
    log_info("final: groups generated=%" PRIu64 " sent=%" PRIu64 " resent=%" PRIu64
             " acked=%" PRIu64 " dropped-by-learner=%" PRIu64 " unacked-lost=%" PRIu64
             " grants=%" PRIu64 " refused=%" PRIu64 " versions-seen=%" PRIu64 " (now v%" PRIu64
             ") fetch-failures=%" PRIu64 " bad-messages=%" PRIu64,
             s.groups_generated, s.groups_sent, s.groups_resent, s.groups_accepted,
             s.groups_dropped, s.groups_unacked, s.grants_received, s.grants_refused,
             s.versions_seen, s.weights_version, s.fetch_failures, s.bad_messages);
    log_info("final: work socket %s; announce socket %s; fetch socket %s",
             wire_counters_format(&a->cw, cw, sizeof cw), wire_counters_format(&a->cs, cs, sizeof cs),
             wire_counters_format(&a->cf, cf, sizeof cf));
    return rc;
}

/* ------------------------------------------------------------ lifecycle */

void actor_stop(actor_t *a)
{
    if (a)
        atomic_fetch_add(&a->stop_requests, 1);
}

const char *actor_id(const actor_t *a)
{
    return a ? a->id : "";
}

void actor_get_stats(actor_t *a, actor_stats_t *out)
{
    pthread_mutex_lock(&a->stats_mu);
    *out = a->st;
    pthread_mutex_unlock(&a->stats_mu);
}

static void *open_socket(actor_t *a, int type, const char *addr, const char *what,
                         const char *routing_id, char *err, size_t errlen)
{
    void *s = zmq_socket(a->zctx, type);
    if (!s) {
        set_err(err, errlen, "zmq_socket (%s): %s", what, zmq_strerror(errno));
        return NULL;
    }
    if (wire_socket_setup(s, (int64_t)a->cfg.network.max_msg_bytes) != 0)
        goto fail;
    if (type == ZMQ_DEALER) {
        /* Queue nothing for a peer that is not connected (see actor.h). */
        int one = 1;
        if (zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof one) != 0)
            goto fail;
    }
    if (type == ZMQ_SUB && zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0) != 0)
        goto fail;
    if (routing_id && zmq_setsockopt(s, ZMQ_ROUTING_ID, routing_id, strlen(routing_id)) != 0)
        goto fail;
    char cerr[512];
    if (security_connect(a->sec, s, addr, cerr, sizeof cerr) != 0) {
        set_err(err, errlen, "%s socket: %s", what, cerr);
        zmq_close(s);
        return NULL;
    }
    return s;
fail:
    set_err(err, errlen, "%s socket to %s: %s", what, addr, zmq_strerror(errno));
    zmq_close(s);
    return NULL;
}

actor_t *actor_new(const crl_config_t *cfg, const model_config_t *expect_model, char *err,
                   size_t errlen)
{
    actor_t *a = calloc(1, sizeof *a);
    if (!a) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    a->cfg = *cfg;
    a->wake_fd = -1;
    atomic_init(&a->stop_requests, 0);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    pthread_mutex_init(&a->stats_mu, NULL);
    a->next_group_id = 1;
    if (expect_model) {
        a->expect_model = *expect_model;
        a->have_expect = 1;
    }
    if (gethostname(a->hostname, sizeof a->hostname - 1) != 0)
        snprintf(a->hostname, sizeof a->hostname, "unknown");
    if (cfg->actor.id[0])
        snprintf(a->id, sizeof a->id, "%s", cfg->actor.id);
    else
        snprintf(a->id, sizeof a->id, "%.200s-%d", a->hostname, (int)getpid());
    for (char *p = a->id; *p; p++) /* routing ids and logs: printable, no spaces */
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            *p = '_';

    wire_limits_default(&a->lim_weights);
    a->lim_weights.max_envelope_bytes = (uint64_t)cfg->network.max_msg_bytes;
    a->lim_work = a->lim_weights;

    a->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->wake_fd < 0) {
        set_err(err, errlen, "eventfd: %s", strerror(errno));
        goto fail;
    }
    a->zctx = zmq_ctx_new();
    if (!a->zctx) {
        set_err(err, errlen, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto fail;
    }
    if (!(a->sec = security_new(cfg, a->zctx, err, errlen)))
        goto fail;
    /* The learner's ROUTER sees this actor under its id (readable logs);
     * the broker's fetch ROUTER gets a generated one, so two actors that
     * were given the same id by mistake still get their own chunks. */
    if (!(a->work = open_socket(a, ZMQ_DEALER, cfg->network.learner_work, "work", a->id, err,
                                errlen)) ||
        !(a->sub = open_socket(a, ZMQ_SUB, cfg->network.broker_announce, "announce", NULL, err,
                               errlen)) ||
        !(a->fetch = open_socket(a, ZMQ_DEALER, cfg->network.broker_fetch, "fetch", NULL, err,
                                 errlen)))
        goto fail;
    weights_fetch_opts_t fo;
    weights_fetch_opts_default(&fo);
    fo.window = ACTOR_FETCH_WINDOW;
    fo.chunk_bytes = (uint64_t)cfg->broker.chunk_bytes;
    a->wf = weights_fetcher_new(a->fetch, cfg->network.broker_fetch, &fo, &a->lim_weights);
    if (!a->wf) {
        set_err(err, errlen, "cannot create the weights fetcher for %s", cfg->network.broker_fetch);
        goto fail;
    }
    if (pthread_create(&a->thread, NULL, compute_main, a) != 0) {
        set_err(err, errlen, "cannot start the compute thread");
        goto fail;
    }
    a->thread_started = 1;
    return a;
fail:
    actor_destroy(&a);
    return NULL;
}

void actor_destroy(actor_t **ap)
{
    if (!ap || !*ap)
        return;
    actor_t *a = *ap;
    if (a->thread_started) {
        pthread_mutex_lock(&a->mu);
        a->quit = 1;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
        /* A job in progress finishes first (the sampler cannot be cut short). */
        pthread_join(a->thread, NULL);
    }
    free(a->job.buf);
    wire_envelope_free(&a->job.grant);
    int linger = ACTOR_CLOSE_LINGER_MS;
    if (a->work) {
        zmq_setsockopt(a->work, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(a->work);
    }
    if (a->sub)
        zmq_close(a->sub);
    if (a->fetch)
        zmq_close(a->fetch);
    if (a->zctx)
        zmq_ctx_term(a->zctx);
    security_destroy(&a->sec);
    if (a->wake_fd >= 0)
        close(a->wake_fd);
    for (size_t i = 0; i < a->q_len; i++)
        wire_envelope_free(&a->queue[(a->q_head + i) % a->q_cap]);
    free(a->queue);
    for (size_t i = 0; i < a->n_unacked; i++)
        free(a->unacked[i].buf);
    free(a->unacked);
    weights_fetcher_destroy(&a->wf);
    free(a->staging);
    sampler_destroy(&a->sampler);
    grpo_rollout_destroy(&a->ro);
    model_destroy(&a->model);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->stats_mu);
    free(a);
    *ap = NULL;
}
