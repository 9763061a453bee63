/* crl-learner rl: the distributed GRPO learner (DESIGN.md §1-§4, §7, §8).
 *
 * Three threads:
 *   main     start-up (config, pinning, run folder, initial policy or
 *            resume, frozen reference, data), then joins the others and
 *            writes the final checkpoint, plot and accounting;
 *   I/O      every socket: the work ROUTER (Hello/Welcome, WorkRequest ->
 *            WorkGrant, TrajectoryGroup -> GroupReceived in the log ->
 *            Ack, heartbeats, Bye, re-grants) and the publish DEALER to the
 *            broker (WeightsPublish + raw, PublishAck, retries). It never
 *            waits on the compute thread;
 *   compute  takes rl.groups_per_step accepted groups in arrival order
 *            (too stale ones dropped with a GroupOutcome), scores them,
 *            runs grpo_step, writes GroupOutcome/StepMarker, hands the new
 *            weights to the I/O thread, writes metrics and checkpoints.
 * They share one mutex (the accepted-group queue, the trajectory log, the
 * weights to publish, counters and the checkpoint snapshot hand-off).
 *
 * The step is a pure function of (weights, optimizer state, the groups in
 * the order the StepMarker lists, rng state), so `crl-learner replay` can
 * reproduce it from the log (issue 5). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <zmq.h>

#include "checkpoint.h"
#include "config.h"
#include "crc32c.h"
#include "grpo.h"
#include "kernels.h"
#include "learner.h"
#include "learner_io.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "prompt.h"
#include "rl_data.h"
#include "rng.h"
#include "tokenizer.h"
#include "topology.h"
#include "traj_log.h"
#include "security.h"
#include "wire.h"

#define RL_TRAINER_FORMAT "crl-rl-trainer"
#define RL_TRAINER_VERSION 1
#define RL_POLL_MS 5
#define RL_WAIT_LOG_S 5.0      /* "waiting for ..." lines at most this often */
#define RL_DRAIN_MAX_MS 10000
#define RL_MAX_HB_SLOTS 4096   /* actors tracked for heartbeat send failures */  /* after the last step: wait this long at most for actors' Byes */

/* ------------------------------------------------------------ helpers */

static volatile sig_atomic_t g_stop;
static volatile sig_atomic_t g_reload; /* SIGHUP: re-read the allowed client keys */

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        g_reload = 1;
    else
        g_stop++;
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
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char *clock_text(time_t t, char *buf, size_t len)
{
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(buf, len, "%H:%M:%S", &tm);
    return buf;
}

/* ------------------------------------------------------------ state */

/* One accepted group on its way to the compute thread. */
typedef struct {
    Crl__Envelope *env;       /* owns the decoded TrajectoryGroup */
    lio_prompt_t *prompt;     /* reference: tokens, image, expected answers */
    uint32_t log_file;        /* position of its GroupReceived record */
    uint64_t log_off;
    uint64_t version;
    int *prompt_index;        /* (G) */
    int *lens;                /* (G) */
    const int **tok_rows;     /* (G) into env */
    const float **logp_rows;  /* (G) into env */
} rl_item_t;

static void item_free(rl_item_t **ip)
{
    if (!ip || !*ip)
        return;
    rl_item_t *it = *ip;
    wire_envelope_free(&it->env);
    lio_prompt_unref(&it->prompt);
    free(it->prompt_index);
    free(it->lens);
    free(it->tok_rows);
    free(it->logp_rows);
    free(it);
    *ip = NULL;
}

typedef struct {
    int pool;
    uint64_t index;
    int order;
} rl_requeue_t;

/* What a checkpoint needs from the I/O side, taken at one instant. */
typedef struct {
    rld_cursor_t cursor;
    rng_t grant_rng;
    uint64_t next_grant_id;
    lio_counts_t io;
    rl_requeue_t *requeue;    /* malloc'd */
    size_t n_requeue;
    uint32_t log_file, pending_file;
    uint64_t log_off, pending_off, log_seq;
} rl_snapshot_t;

typedef struct {
    crl_config_t cfg;
    char run_dir[CONFIG_PATH_LEN + CONFIG_NAME_LEN + 8];
    char ckpt_root[sizeof(((crl_config_t *)0)->run.dir) + CONFIG_NAME_LEN + 16];
    char metrics_path[CONFIG_PATH_LEN + CONFIG_NAME_LEN + 32];

    /* model side (compute thread; main before/after) */
    tokenizer_t *tok;
    model_t *policy, *ref;
    adamw_t *opt;
    grpo_t *grpo;
    rng_t step_rng;           /* anything stochastic inside an update (recorded per step) */
    uint64_t step;            /* updates completed */
    double elapsed_before;    /* seconds of training before this process */
    metrics_t *mx;
    char *model_json;         /* Welcome.model_config_json */
    char digest[32];

    /* I/O side */
    rld_t *data;
    lio_t *lio;
    rng_t grant_rng;          /* grant seeds */
    wire_limits_t lim_work, lim_pub;
    void *zctx, *work, *pub;
    void *pub_mon;            /* PAIR: handshake events of pub (a restarted broker) */
    security_t *sec; /* CurveZMQ keys and ZAP handler (plain mode without keys) */

    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    lio_queue_t *queue;
    traj_log_t *log;
    uint64_t log_seq;
    uint64_t consumed;                 /* groups taken off the queue (used or dropped) */
    uint64_t consumed_base;            /* consumed at the start of this process */
    uint64_t used;                     /* groups used in updates */
    uint64_t samples_used;
    uint64_t cdropped[LIO_N_REASONS];  /* dropped after acceptance (STALE, SHUTDOWN) */
    float *pub_buf;                    /* weights to publish (n_params) */
    uint64_t pub_version;
    uint32_t pub_crc;
    uint64_t acked_version;            /* the broker holds it */
    lio_counts_t io_counts;            /* posted by the I/O thread */
    int live_actors;
    int compute_done, io_done, fatal;
    int final_saved; /* the end's checkpoint is written (or will not be): actors may leave */
    int snap_req, snap_ready;
    rl_snapshot_t snap;
    char fatal_msg[1024];
} rl_t;

static void snapshot_free(rl_snapshot_t *s)
{
    free(s->requeue);
    s->requeue = NULL;
    s->n_requeue = 0;
}

/* ------------------------------------------------------------ trajectory log */

/* Appends one record (caller holds mu). *file / *off (may be NULL) get the
 * record's start. 0 or -errno. */
static int log_record(rl_t *r, Crl__TrajectoryRecord *rec, uint32_t *file, uint64_t *off)
{
    rec->seq = r->log_seq;
    rec->written_unix_ms = unix_ms();
    size_t n = crl__trajectory_record__get_packed_size(rec);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return -ENOMEM;
    crl__trajectory_record__pack(rec, buf);
    uint32_t f;
    uint64_t o;
    traj_log_position(r->log, &f, &o);
    int rc = traj_log_append(r->log, buf, n);
    free(buf);
    if (rc == 0) {
        r->log_seq++;
        if (file)
            *file = f;
        if (off)
            *off = o;
    }
    return rc;
}

static void fill_key(Crl__GroupKey *k, const Crl__TrajectoryGroup *g)
{
    crl__group_key__init(k);
    k->actor_id = g->actor_id;
    k->group_id = g->group_id;
}

/* GroupOutcome DROPPED for an accepted group (caller holds mu). */
static void log_dropped(rl_t *r, const rl_item_t *it, int reason, uint64_t V)
{
    Crl__TrajectoryRecord rec;
    Crl__GroupOutcome o;
    Crl__GroupKey key;
    crl__trajectory_record__init(&rec);
    crl__group_outcome__init(&o);
    fill_key(&key, it->env->trajectory_group);
    o.key = &key;
    o.fate = CRL__GROUP_FATE__GROUP_FATE_DROPPED;
    o.drop_reason = (Crl__DropReason)reason;
    o.step = r->step;
    o.staleness = V > it->version ? (uint32_t)(V - it->version) : 0;
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_OUTCOME;
    rec.outcome = &o;
    int rc = log_record(r, &rec, NULL, NULL);
    if (rc != 0)
        log_error("trajectory log: cannot write the outcome of group (%s, %" PRIu64 "): %s",
                  key.actor_id, key.group_id, strerror(-rc));
}

/* ------------------------------------------------------------ I/O thread */

static const char *who_text(const wire_identity_t *w, char *buf, size_t len)
{
    return wire_identity_format(w, buf, len);
}

static int send_env(rl_t *r, const wire_identity_t *to, Crl__Envelope *env, wire_counters_t *wc)
{
    return wire_send(r->work, to, env, NULL, 0, wc);
}

static void send_ack(rl_t *r, const wire_identity_t *to, uint64_t group_id, int reason,
                     wire_counters_t *wc)
{
    Crl__Envelope env;
    Crl__Ack ack;
    Crl__AckEntry e, *ep = &e;
    wire_envelope_init(&env);
    crl__ack__init(&ack);
    crl__ack_entry__init(&e);
    e.group_id = group_id;
    e.status = reason == 0 ? CRL__ACK_STATUS__ACK_STATUS_ACCEPTED : CRL__ACK_STATUS__ACK_STATUS_DROPPED;
    e.reason = (Crl__DropReason)reason;
    ack.n_entries = 1;
    ack.entries = &ep;
    env.body_case = CRL__ENVELOPE__BODY_ACK;
    env.ack = &ack;
    send_env(r, to, &env, wc);
}

static void send_welcome(rl_t *r, const wire_identity_t *to, int slot, uint64_t version,
                         wire_counters_t *wc)
{
    Crl__Envelope env;
    Crl__Welcome w;
    wire_envelope_init(&env);
    crl__welcome__init(&w);
    w.run_id = r->cfg.run.name;
    w.heartbeat_ms = (uint32_t)r->cfg.learner.heartbeat_ms;
    w.heartbeat_timeout_ms = (uint32_t)r->cfg.learner.heartbeat_timeout_ms;
    w.max_staleness = (uint32_t)r->cfg.rl.max_staleness;
    w.current_version = version;
    w.actor_index = (uint32_t)slot;
    w.config_digest = r->digest;
    w.vocab_size = (uint32_t)r->policy->cfg.vocab_size;
    w.image_size = (uint32_t)r->policy->cfg.image_size;
    w.model_config_json = r->model_json;
    env.body_case = CRL__ENVELOPE__BODY_WELCOME;
    env.welcome = &w;
    send_env(r, to, &env, wc);
}

static void send_bye(rl_t *r, const wire_identity_t *to, const char *reason, wire_counters_t *wc)
{
    Crl__Envelope env;
    Crl__Bye b;
    wire_envelope_init(&env);
    crl__bye__init(&b);
    b.reason = (char *)reason;
    env.body_case = CRL__ENVELOPE__BODY_BYE;
    env.bye = &b;
    send_env(r, to, &env, wc);
}

static int send_grant(rl_t *r, const wire_identity_t *to, const lio_grant_t *g, wire_counters_t *wc)
{
    const lio_prompt_t *p = g->prompt;
    Crl__Envelope env;
    Crl__WorkGrant w;
    wire_envelope_init(&env);
    crl__work_grant__init(&w);
    w.grant_id = g->grant_id;
    w.prompt_id = p->prompt_id;
    w.task_kind = p->kind == REWARD_TASK_CRITIC ? CRL__TASK_KIND__TASK_KIND_CRITIC
                                                : CRL__TASK_KIND__TASK_KIND_POLICY;
    w.n_prompt_tokens = (size_t)p->len[0];
    w.prompt_tokens = (int32_t *)p->tokens[0];
    if (p->image) {
        w.image.len = (size_t)3 * p->image_size * p->image_size;
        w.image.data = (uint8_t *)p->image;
        w.image_size = (uint32_t)p->image_size;
    }
    w.group_size = (uint32_t)r->cfg.rl.group_size;
    w.temperature = (float)r->cfg.rl.temperature;
    w.top_p = (float)r->cfg.rl.top_p;
    w.max_new_tokens = (uint32_t)r->cfg.rl.max_new_tokens;
    w.min_weights_version = g->min_version;
    w.seed = g->seed;
    if (p->len[1] > 0) {
        w.n_prompt_tokens_alt = (size_t)p->len[1];
        w.prompt_tokens_alt = (int32_t *)p->tokens[1];
        w.alt_count = (uint32_t)p->alt_count;
    }
    env.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    env.work_grant = &w;
    return send_env(r, to, &env, wc);
}

/* Builds the compute-side view of an accepted group. */
static rl_item_t *item_new(Crl__Envelope **envp, lio_prompt_t *prompt)
{
    rl_item_t *it = calloc(1, sizeof(*it));
    if (!it)
        return NULL;
    const Crl__TrajectoryGroup *g = (*envp)->trajectory_group;
    size_t G = g->n_samples;
    it->prompt_index = malloc(G * sizeof(int));
    it->lens = malloc(G * sizeof(int));
    it->tok_rows = malloc(G * sizeof(int *));
    it->logp_rows = malloc(G * sizeof(float *));
    if (!it->prompt_index || !it->lens || !it->tok_rows || !it->logp_rows) {
        item_free(&it);
        return NULL;
    }
    for (size_t s = 0; s < G; s++) {
        const Crl__Sample *sm = g->samples[s];
        it->prompt_index[s] = (int)sm->prompt_index;
        it->lens[s] = (int)sm->n_tokens;
        it->tok_rows[s] = (const int *)sm->tokens;
        it->logp_rows[s] = sm->logprobs;
    }
    it->version = g->weights_version;
    it->env = *envp;
    *envp = NULL;
    lio_prompt_ref(prompt);
    it->prompt = prompt;
    return it;
}

typedef struct {
    wire_counters_t wc;       /* work socket */
    wire_counters_t wc_pub;   /* publish socket */
    uint64_t sent_version;    /* last version sent to the broker */
    uint64_t sent_ms;
    uint64_t waiting_since_ms;
    time_t waiting_since_wall;
    double last_wait_log;
    uint64_t last_hb_ms;
    uint64_t unknown_peer_msgs;
    int draining;              /* no more grants; arriving groups are dropped SHUTDOWN */
    int finished;              /* the run is complete (not stopped): Bye waits for the checkpoint */
    int said_bye;
    const char *bye_reason;
    uint64_t drain_deadline;   /* phase 1: actors pick up the final weights */
    uint64_t bye_deadline;     /* phase 2: actors say Bye */
    int data_exhausted;
    int republish;             /* the broker connection was made again: send the latest version */
    uint64_t pub_handshakes;   /* handshakes with a broker on the publish socket */
    time_t grants_paused_since; /* grant_work waits for the broker (0 = not) */
    uint64_t hb_failed_seen[RL_MAX_HB_SLOTS]; /* last_seen + 1 when a heartbeat to it failed */
} io_state_t;

/* A TrajectoryGroup from slot (or an unknown sender when slot < 0). */
static void on_group(rl_t *r, io_state_t *s, const wire_identity_t *from, int slot,
                     Crl__Envelope **envp)
{
    const Crl__TrajectoryGroup *g = (*envp)->trajectory_group;
    char who[600], why[512];
    who_text(from, who, sizeof(who));
    if (slot < 0) {
        lio_count_unattributed(r->lio, 2);
        log_warn("group %" PRIu64 " from %s, which never said Hello: dropped (malformed)",
                 g->group_id, who);
        send_ack(r, from, g->group_id, CRL__DROP_REASON__DROP_REASON_MALFORMED, &s->wc);
        return;
    }
    pthread_mutex_lock(&r->mu);
    uint64_t maxv = r->pub_version;
    pthread_mutex_unlock(&r->mu);
    const lio_grant_t *grant = NULL;
    int reason = lio_check_group(r->lio, slot, g, maxv, &grant, why, sizeof(why));
    if (reason == 0 && s->draining)
        reason = CRL__DROP_REASON__DROP_REASON_SHUTDOWN;
    if (reason != 0) {
        if (reason != CRL__DROP_REASON__DROP_REASON_SHUTDOWN)
            log_warn("group %" PRIu64 " (grant %" PRIu64 ") from %s dropped (%s): %s", g->group_id,
                     g->grant_id, who, lio_reason_name(reason), why);
        lio_commit_group(r->lio, slot, g, reason);
        send_ack(r, from, g->group_id, reason, &s->wc);
        return;
    }
    /* accepted: into the log first, then to the compute thread */
    rl_item_t *it = item_new(envp, grant->prompt);
    if (!it) {
        reason = CRL__DROP_REASON__DROP_REASON_LOG_FAILED;
        log_error("group %" PRIu64 " from %s: out of memory: dropped", g->group_id, who);
        lio_commit_group(r->lio, slot, g, reason);
        send_ack(r, from, g->group_id, reason, &s->wc);
        return;
    }
    g = it->env->trajectory_group;
    Crl__TrajectoryRecord rec;
    Crl__GroupReceived gr;
    crl__trajectory_record__init(&rec);
    crl__group_received__init(&gr);
    gr.group = (Crl__TrajectoryGroup *)g;
    gr.received_unix_ms = unix_ms();
    gr.task_kind = it->prompt->kind == REWARD_TASK_CRITIC ? CRL__TASK_KIND__TASK_KIND_CRITIC
                                                          : CRL__TASK_KIND__TASK_KIND_POLICY;
    /* the grant's learner-side facts, so that a replay needs only the log */
    char *expected[2] = {it->prompt->expected[0], it->prompt->expected[1]};
    gr.n_expected = expected[0] ? (expected[1] ? 2 : 1) : 0;
    gr.expected = expected;
    if (it->prompt->image) {
        gr.image.len = (size_t)3 * it->prompt->image_size * it->prompt->image_size;
        gr.image.data = (uint8_t *)it->prompt->image;
        gr.image_size = (uint32_t)it->prompt->image_size;
    }
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_RECEIVED;
    rec.received = &gr;
    pthread_mutex_lock(&r->mu);
    gr.learner_step = r->step;
    gr.learner_version = r->step + 1;
    int rc = log_record(r, &rec, &it->log_file, &it->log_off);
    pthread_mutex_unlock(&r->mu);
    const uint64_t gid = g->group_id;
    /* Commit before the hand-off: once queued, the compute thread may use
     * and free the group at any moment. */
    if (rc != 0) {
        log_error("group %" PRIu64 " from %s: trajectory log: %s: dropped", gid, who, strerror(-rc));
        if (rc == -ENOSPC || rc == -EDQUOT || rc == -EIO || rc == -EROFS) {
            /* The log cannot take groups any more, and will not heal by
             * itself: every group would be dropped from now on. Stop (with
             * a checkpoint if one fits) instead of spinning. */
            pthread_mutex_lock(&r->mu);
            if (!r->fatal) {
                r->fatal = 1;
                textf(r->fatal_msg, sizeof(r->fatal_msg),
                      "the trajectory log in %s/traj cannot be written (%s): free space (or fix the "
                      "disk) and start the learner again; it resumes from its last checkpoint",
                      r->run_dir, strerror(-rc));
                pthread_cond_broadcast(&r->cv);
            }
            pthread_mutex_unlock(&r->mu);
        }
        reason = CRL__DROP_REASON__DROP_REASON_LOG_FAILED;
        lio_commit_group(r->lio, slot, g, reason);
        item_free(&it);
        send_ack(r, from, gid, reason, &s->wc);
        return;
    }
    lio_commit_group(r->lio, slot, g, 0);
    pthread_mutex_lock(&r->mu);
    rc = lio_queue_push(r->queue, it, it->version);
    if (rc == 0)
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (rc != 0) {
        /* logged and accepted, but no room in the queue: a counted drop
         * after acceptance, with its outcome in the log */
        log_error("group %" PRIu64 " from %s: out of memory queueing it: dropped", gid, who);
        pthread_mutex_lock(&r->mu);
        log_dropped(r, it, CRL__DROP_REASON__DROP_REASON_SHUTDOWN, r->step + 1);
        r->cdropped[CRL__DROP_REASON__DROP_REASON_SHUTDOWN]++;
        r->consumed++;
        pthread_mutex_unlock(&r->mu);
        item_free(&it);
    }
    send_ack(r, from, gid, 0, &s->wc);
}

static void handle_work_msg(rl_t *r, io_state_t *s, const wire_identity_t *from,
                            Crl__Envelope **envp, uint64_t now)
{
    Crl__Envelope *env = *envp;
    char who[600];
    int slot = lio_find_actor(r->lio, from);
    if (env->body_case == CRL__ENVELOPE__BODY_HELLO) {
        const Crl__Hello *h = env->hello;
        if (!h->actor_id || !h->actor_id[0]) {
            log_warn("Hello without actor_id from %s: dropped", who_text(from, who, sizeof(who)));
            return;
        }
        int was = lio_find_actor(r->lio, from);
        slot = lio_hello(r->lio, from, h->actor_id, h->hostname, h->pid, now);
        if (slot < 0) {
            log_error("Hello from %s: out of memory", h->actor_id);
            return;
        }
        pthread_mutex_lock(&r->mu);
        uint64_t v = r->acked_version;
        pthread_mutex_unlock(&r->mu);
        log_info("actor %s (#%d, %s pid %u, %u threads, holds v%" PRIu64 ", %zu unacked groups) %s",
                 h->actor_id, slot, h->hostname ? h->hostname : "?", h->pid, h->n_threads,
                 h->weights_version, h->n_unacked_group_ids, was >= 0 ? "said Hello again" : "joined");
        lio_actor_set_version(r->lio, slot, h->weights_version);
        send_welcome(r, from, slot, v, &s->wc);
        if (s->said_bye)
            send_bye(r, from, s->bye_reason, &s->wc);
        return;
    }
    if (slot < 0) {
        /* A peer that never said Hello (e.g. it was connected to a learner
         * process before this one): a Welcome makes it re-send what it
         * holds and ask for work. Actors use their id as routing id. */
        char idtext[300];
        who_text(from, idtext, sizeof(idtext));
        if (s->unknown_peer_msgs++ < 20)
            log_info("%s from %s, which has not said Hello to this learner: welcoming it",
                     wire_body_name(env), idtext);
        slot = lio_hello(r->lio, from, idtext, "", 0, now);
        if (slot < 0)
            return;
        pthread_mutex_lock(&r->mu);
        uint64_t v = r->acked_version;
        pthread_mutex_unlock(&r->mu);
        send_welcome(r, from, slot, v, &s->wc);
        if (s->said_bye)
            send_bye(r, from, s->bye_reason, &s->wc);
    }
    int was_alive = lio_actor_alive(r->lio, slot);
    lio_touch(r->lio, slot, now);
    if (!was_alive && env->body_case != CRL__ENVELOPE__BODY_BYE) {
        /* Timed out (e.g. both sides stalled), now heard from again: its
         * grants and credits were taken back, so it would wait for grants
         * it asked for that never come. A Welcome starts a new session:
         * the actor re-sends what it holds and asks for work afresh. */
        log_info("actor %s is back after its heartbeat timeout: welcoming it again",
                 lio_actor_id(r->lio, slot));
        pthread_mutex_lock(&r->mu);
        uint64_t v = r->acked_version;
        pthread_mutex_unlock(&r->mu);
        send_welcome(r, from, slot, v, &s->wc);
        if (s->said_bye)
            send_bye(r, from, s->bye_reason, &s->wc);
    }
    switch (env->body_case) {
    case CRL__ENVELOPE__BODY_WORK_REQUEST:
        lio_add_credits(r->lio, slot, env->work_request->credits);
        break;
    case CRL__ENVELOPE__BODY_TRAJECTORY_GROUP:
        on_group(r, s, from, slot, envp);
        break;
    case CRL__ENVELOPE__BODY_HEARTBEAT:
        lio_actor_set_version(r->lio, slot, env->heartbeat->weights_version);
        break;
    case CRL__ENVELOPE__BODY_BYE: {
        int n = lio_bye(r->lio, slot);
        log_info("actor %s said bye (%s); %d open grant%s to re-grant", lio_actor_id(r->lio, slot),
                 env->bye->reason ? env->bye->reason : "", n, n == 1 ? "" : "s");
        break;
    }
    default:
        s->wc.malformed++;
        log_warn("unexpected %s from %s on the work socket: dropped", wire_body_name(env),
                 who_text(from, who, sizeof(who)));
        break;
    }
}

static void publish_if_needed(rl_t *r, io_state_t *s, uint64_t now)
{
    pthread_mutex_lock(&r->mu);
    uint64_t v = r->pub_version, acked = r->acked_version;
    int resend = v == s->sent_version && acked < v &&
                 now - s->sent_ms >= (uint64_t)r->cfg.learner.publish_timeout_ms;
    int again = s->republish && v > 0;
    s->republish = 0;
    if (v > s->sent_version || resend || again) {
        Crl__Envelope env;
        Crl__WeightsPublish wp;
        char layout[96];
        size_t bytes = r->policy->n_params * sizeof(float);
        textf(layout, sizeof(layout), "crl-f32-params-v1 n=%zu", r->policy->n_params);
        wire_envelope_init(&env);
        crl__weights_publish__init(&wp);
        wp.version = v;
        wp.total_bytes = bytes;
        wp.crc32c = r->pub_crc;
        wp.layout = layout;
        wp.learner_step = v - 1;
        env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
        env.weights_publish = &wp;
        int rc = wire_send(r->pub, NULL, &env, r->pub_buf, bytes, &s->wc_pub);
        if (rc == 0 || rc == -EAGAIN) {
            /* EAGAIN: not connected yet; counted as an attempt, retried on timeout */
            if (resend && rc == 0)
                log_warn("no PublishAck for version %" PRIu64 " from the broker at %s within %d ms: "
                         "sent again", v, r->cfg.network.broker_publish,
                         r->cfg.learner.publish_timeout_ms);
            s->sent_version = v;
            s->sent_ms = now;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

static void handle_pub_msg(rl_t *r, io_state_t *s, Crl__Envelope *env)
{
    if (env->body_case != CRL__ENVELOPE__BODY_PUBLISH_ACK) {
        s->wc_pub.malformed++;
        log_warn("unexpected %s from the broker at %s: dropped", wire_body_name(env),
                 r->cfg.network.broker_publish);
        return;
    }
    const Crl__PublishAck *a = env->publish_ack;
    if (!a->ok) {
        log_error("the broker at %s refused version %" PRIu64 ": %s (sending it again)",
                  r->cfg.network.broker_publish, a->version, a->error ? a->error : "");
        s->sent_ms = 0; /* retry after the timeout */
        return;
    }
    pthread_mutex_lock(&r->mu);
    if (a->version > r->acked_version && a->version <= r->pub_version) {
        if (r->acked_version == 0 || s->waiting_since_ms)
            log_info("broker at %s holds version %" PRIu64, r->cfg.network.broker_publish,
                     a->version);
        r->acked_version = a->version;
        s->waiting_since_ms = 0;
    }
    pthread_mutex_unlock(&r->mu);
}

/* Grants work to actors with credits while the in-flight cap allows. */
static void grant_work(rl_t *r, io_state_t *s, uint64_t now, uint64_t published)
{
    if (published == 0 || s->draining || s->data_exhausted)
        return;
    /* Actors sample with at most the version the broker holds. While the
     * broker has not taken the newer ones (down, restarting), a group
     * granted now would already be too stale for the learner's version:
     * granting it only burns samples on STALE drops, so wait instead. */
    pthread_mutex_lock(&r->mu);
    uint64_t V = r->step + 1;
    pthread_mutex_unlock(&r->mu);
    if (V > published + (uint64_t)r->cfg.rl.max_staleness) {
        if (mono_s() - s->last_wait_log >= RL_WAIT_LOG_S) {
            char t[32];
            if (!s->grants_paused_since)
                s->grants_paused_since = time(NULL);
            log_warn("waiting for broker at %s since %s: it holds version %" PRIu64 ", the learner "
                     "is at %" PRIu64 "; no grants until it takes a newer one (their groups would "
                     "be too stale)", r->cfg.network.broker_publish,
                     clock_text(s->grants_paused_since, t, sizeof(t)), published, V);
            s->last_wait_log = mono_s();
        }
        return;
    }
    s->grants_paused_since = 0;
    /* The oldest version a grant may be served with: within the staleness
     * window of the published version, and not already too stale for the
     * learner's own version V (when publishing lags behind the steps). */
    uint64_t min_v = lio_min_version(published, r->cfg.rl.max_staleness);
    if (V > (uint64_t)r->cfg.rl.max_staleness && V - (uint64_t)r->cfg.rl.max_staleness > min_v)
        min_v = V - (uint64_t)r->cfg.rl.max_staleness;
    int slot;
    while ((slot = lio_next_grant_actor(r->lio)) >= 0) {
        lio_prompt_t *p = lio_take_requeued(r->lio);
        int regrant = p != NULL;
        if (!p) {
            char err[1024];
            p = rld_next(r->data, err, sizeof(err));
            if (!p) {
                log_error("no more prompts: %s", err);
                s->data_exhausted = 1;
                pthread_mutex_lock(&r->mu);
                r->fatal = 1;
                textf(r->fatal_msg, sizeof(r->fatal_msg), "prompt source: %s", err);
                pthread_cond_broadcast(&r->cv);
                pthread_mutex_unlock(&r->mu);
                return;
            }
        }
        uint64_t seed = rng_u64(&r->grant_rng);
        const lio_grant_t *g = lio_grant_issue(r->lio, slot, p, seed, min_v, regrant, now);
        if (!g) {
            log_error("out of memory issuing a grant");
            return;
        }
        const wire_identity_t *to = lio_actor_identity(r->lio, slot);
        int rc = send_grant(r, to, g, &s->wc);
        if (rc != 0) {
            char who[600];
            log_warn("cannot send grant %" PRIu64 " to %s (%s): treating the actor as gone",
                     g->grant_id, who_text(to, who, sizeof(who)), strerror(-rc));
            lio_bye(r->lio, slot);
        }
    }
}

static void heartbeats(rl_t *r, io_state_t *s, uint64_t now, uint64_t version)
{
    if (now - s->last_hb_ms < (uint64_t)r->cfg.learner.heartbeat_ms)
        return;
    s->last_hb_ms = now;
    Crl__Envelope env;
    Crl__Heartbeat hb;
    wire_envelope_init(&env);
    crl__heartbeat__init(&hb);
    hb.sent_unix_ms = unix_ms();
    hb.weights_version = version;
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    for (int i = 0; i < lio_n_actors(r->lio) && i < RL_MAX_HB_SLOTS; i++) {
        if (!lio_actor_alive(r->lio, i))
            continue;
        /* a peer whose connection is gone (EHOSTUNREACH) is not heartbeated
         * again until it talks: one log line, not one per period */
        uint64_t seen = lio_actor_last_seen(r->lio, i);
        if (s->hb_failed_seen[i] == seen + 1)
            continue;
        hb.open_grants = (uint32_t)lio_actor_open_grants(r->lio, i);
        if (send_env(r, lio_actor_identity(r->lio, i), &env, &s->wc) != 0)
            s->hb_failed_seen[i] = seen + 1;
    }
}

/* Fills r->snap (caller holds mu). */
static int take_snapshot(rl_t *r, rl_snapshot_t *sn)
{
    memset(sn, 0, sizeof(*sn));
    sn->cursor = rld_get_cursor(r->data);
    sn->grant_rng = r->grant_rng;
    sn->next_grant_id = lio_next_grant_id(r->lio);
    lio_get_counts(r->lio, &sn->io);
    size_t n_open = lio_open_grants(r->lio, NULL, 0);
    size_t n_fifo = lio_requeued_count(r->lio);
    size_t n_q = lio_queue_len(r->queue);
    size_t cap = n_open + n_fifo + n_q;
    sn->requeue = calloc(cap ? cap : 1, sizeof(rl_requeue_t));
    const lio_grant_t **open = calloc(n_open ? n_open : 1, sizeof(*open));
    if (!sn->requeue || !open) {
        free(open);
        snapshot_free(sn);
        return -ENOMEM;
    }
    lio_open_grants(r->lio, open, n_open);
    /* oldest first: lost grants, then the queue (accepted earlier), then open grants */
    for (size_t i = 0; i < n_fifo; i++) {
        const lio_prompt_t *p = lio_requeued_at(r->lio, i);
        sn->requeue[sn->n_requeue++] = (rl_requeue_t){p->pool, p->pool_index, p->order};
    }
    for (size_t i = 0; i < n_q; i++) {
        const rl_item_t *it = lio_queue_peek(r->queue, i);
        const lio_prompt_t *p = it->prompt;
        sn->requeue[sn->n_requeue++] = (rl_requeue_t){p->pool, p->pool_index, p->order};
    }
    for (size_t i = 0; i < n_open; i++) {
        const lio_prompt_t *p = open[i]->prompt;
        sn->requeue[sn->n_requeue++] = (rl_requeue_t){p->pool, p->pool_index, p->order};
    }
    free(open);
    traj_log_position(r->log, &sn->log_file, &sn->log_off);
    sn->log_seq = r->log_seq;
    const rl_item_t *front = lio_queue_peek(r->queue, 0);
    if (front) {
        sn->pending_file = front->log_file;
        sn->pending_off = front->log_off;
    } else {
        sn->pending_file = sn->log_file;
        sn->pending_off = sn->log_off;
    }
    return 0;
}

static int open_sockets(rl_t *r, char *err, size_t errlen)
{
    r->zctx = zmq_ctx_new();
    if (!r->zctx) {
        errf(err, errlen, "zmq_ctx_new: %s", zmq_strerror(errno));
        return -EIO;
    }
    r->sec = security_new(&r->cfg, r->zctx, err, errlen);
    if (!r->sec)
        return -EINVAL;
    r->work = zmq_socket(r->zctx, ZMQ_ROUTER);
    r->pub = zmq_socket(r->zctx, ZMQ_DEALER);
    if (!r->work || !r->pub) {
        errf(err, errlen, "zmq_socket: %s", zmq_strerror(errno));
        return -EIO;
    }
    int64_t maxmsg = r->cfg.network.max_msg_bytes;
    int one = 1;
    if (wire_socket_setup(r->work, maxmsg) != 0 || wire_socket_setup(r->pub, maxmsg) != 0 ||
        zmq_setsockopt(r->work, ZMQ_ROUTER_HANDOVER, &one, sizeof(one)) != 0) {
        errf(err, errlen, "socket options: %s", zmq_strerror(errno));
        return -EIO;
    }
    /* a weights message is large: let it wait in the queue rather than fail */
    int hwm = 4;
    zmq_setsockopt(r->pub, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    /* security_bind applies the bind rule (loopback only without keys or
     * network.insecure) and the CURVE server options before binding. */
    char serr[512];
    if (security_bind(r->sec, r->work, "work", r->cfg.network.learner_work, serr, sizeof serr) != 0) {
        errf(err, errlen, "cannot bind the work socket to network.learner_work = %s: %s",
             r->cfg.network.learner_work, serr);
        return -EADDRINUSE;
    }
    /* A restarted broker holds no weights, and the learner would publish
     * again only after its next step, which may need actors that cannot
     * work without weights: every new handshake on the publish socket
     * makes the I/O thread publish its latest version again. */
    char mon_ep[64];
    textf(mon_ep, sizeof(mon_ep), "inproc://crl-learner-pub-monitor-%p", (void *)r);
    if (zmq_socket_monitor(r->pub, mon_ep, ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0 ||
        !(r->pub_mon = zmq_socket(r->zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(r->pub_mon, ZMQ_LINGER, &(int){0}, sizeof(int)) != 0 ||
        zmq_connect(r->pub_mon, mon_ep) != 0) {
        errf(err, errlen, "monitor of the publish socket: %s", zmq_strerror(errno));
        return -EIO;
    }
    if (security_connect(r->sec, r->pub, r->cfg.network.broker_publish, serr, sizeof serr) != 0) {
        errf(err, errlen, "cannot connect to the broker at network.broker_publish = %s: %s",
             r->cfg.network.broker_publish, serr);
        return -EINVAL;
    }
    return 0;
}

static void *io_main(void *arg)
{
    rl_t *r = arg;
    io_state_t s;
    memset(&s, 0, sizeof(s));
    s.waiting_since_ms = mono_ms();
    s.waiting_since_wall = time(NULL);
    s.last_wait_log = mono_s();
    uint64_t consumed_seen = r->consumed_base;
    for (;;) {
        uint64_t now = mono_ms();
        if (g_reload) {
            g_reload = 0;
            int nk = security_reload_clients(r->sec);
            if (nk < 0)
                log_error("reloading the allowed client keys failed; the previous list stays");
            else
                log_info("reloaded the allowed client keys: %d listed", nk);
        }
        zmq_pollitem_t items[3] = {{r->work, 0, ZMQ_POLLIN, 0}, {r->pub, 0, ZMQ_POLLIN, 0},
                                   {r->pub_mon, 0, ZMQ_POLLIN, 0}};
        int prc = zmq_poll(items, 3, RL_POLL_MS);
        if (prc < 0 && errno != EINTR) {
            pthread_mutex_lock(&r->mu);
            r->fatal = 1;
            textf(r->fatal_msg, sizeof(r->fatal_msg), "zmq_poll: %s", zmq_strerror(errno));
            pthread_mutex_unlock(&r->mu);
            break;
        }
        now = mono_ms();
        /* work socket: everything queued */
        for (int k = 0; k < 256 && (items[0].revents & ZMQ_POLLIN); k++) {
            wire_identity_t from;
            Crl__Envelope *env = NULL;
            char err[1024];
            int rc = wire_recv(r->work, 1, 0, &r->lim_work, &s.wc, &from, &env, NULL, err,
                               sizeof(err));
            if (rc == 0)
                break;
            if (rc == -EPROTO) {
                continue; /* counted and logged by wire_recv */
            }
            if (rc < 0) {
                if (rc != -EINTR && rc != -EAGAIN)
                    log_warn("work socket: %s", strerror(-rc));
                break;
            }
            handle_work_msg(r, &s, &from, &env, now);
            wire_envelope_free(&env);
        }
        for (int k = 0; k < 16 && (items[1].revents & ZMQ_POLLIN); k++) {
            Crl__Envelope *env = NULL;
            char err[1024];
            int rc = wire_recv(r->pub, 0, 0, &r->lim_pub, &s.wc_pub, NULL, &env, NULL, err,
                               sizeof(err));
            if (rc <= 0)
                break;
            handle_pub_msg(r, &s, env);
            wire_envelope_free(&env);
        }
        for (int k = 0; k < 16 && (items[2].revents & ZMQ_POLLIN); k++) {
            /* monitor event: [u16 event][u32 value] then the endpoint */
            zmq_msg_t ev;
            zmq_msg_init(&ev);
            if (zmq_msg_recv(&ev, r->pub_mon, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&ev);
                break;
            }
            int more = zmq_msg_more(&ev);
            uint16_t code = 0;
            if (zmq_msg_size(&ev) >= 2)
                memcpy(&code, zmq_msg_data(&ev), 2);
            zmq_msg_close(&ev);
            while (more) {
                zmq_msg_t part;
                zmq_msg_init(&part);
                if (zmq_msg_recv(&part, r->pub_mon, 0) < 0)
                    more = 0;
                else
                    more = zmq_msg_more(&part);
                zmq_msg_close(&part);
            }
            if (code == ZMQ_EVENT_HANDSHAKE_SUCCEEDED && s.pub_handshakes++ > 0) {
                pthread_mutex_lock(&r->mu);
                uint64_t v = r->pub_version;
                pthread_mutex_unlock(&r->mu);
                log_info("connected to the broker at %s again: publishing version %" PRIu64
                         " again (a restarted broker holds nothing)",
                         r->cfg.network.broker_publish, v);
                s.republish = 1;
            }
        }
        publish_if_needed(r, &s, now);

        pthread_mutex_lock(&r->mu);
        uint64_t published = r->acked_version;
        uint64_t consumed = r->consumed;
        int compute_done = r->compute_done || r->fatal;
        pthread_mutex_unlock(&r->mu);
        if (published == 0 && mono_s() - s.last_wait_log >= RL_WAIT_LOG_S) {
            char t[32];
            log_info("waiting for broker at %s since %s (version 1 not acknowledged yet)",
                     r->cfg.network.broker_publish, clock_text(s.waiting_since_wall, t, sizeof(t)));
            s.last_wait_log = mono_s();
        }
        if (consumed != consumed_seen) {
            /* lio counts acceptances of this process only */
            lio_set_consumed(r->lio, consumed - r->consumed_base);
            consumed_seen = consumed;
        }
        int expired[16];
        int n_exp = lio_expire(r->lio, now, expired, 16);
        for (int i = 0; i < n_exp && i < 16; i++)
            log_warn("actor %s silent for more than %d ms: gone; its grants go to other actors",
                     lio_actor_id(r->lio, expired[i]), r->cfg.learner.heartbeat_timeout_ms);
        if (!compute_done)
            grant_work(r, &s, now, published);
        heartbeats(r, &s, now, published);

        pthread_mutex_lock(&r->mu);
        lio_get_counts(r->lio, &r->io_counts);
        r->live_actors = lio_live_actors(r->lio);
        if (r->snap_req && !r->snap_ready) {
            if (take_snapshot(r, &r->snap) != 0)
                log_error("checkpoint snapshot: out of memory");
            r->snap_ready = 1;
            pthread_cond_broadcast(&r->cv);
        }
        pthread_mutex_unlock(&r->mu);

        /* The end. A finished run first lets every live actor pick up the
         * final weights (their heartbeats report the version; no more
         * grants, so they go idle and swap), then says Bye and waits for
         * the actors' last groups and Byes so that the totals are
         * complete. A stopped (signalled) run says Bye at once: the
         * actors keep their work and wait for the learner to come back. */
        if (compute_done && !s.draining) {
            s.draining = 1;
            int finished = !g_stop && !r->fatal;
            s.finished = finished;
            s.bye_reason = finished ? "finished" : "stopping (learner shut down; it may come back)";
            uint64_t wait = finished ? (uint64_t)r->cfg.learner.heartbeat_timeout_ms : 0;
            if (wait > RL_DRAIN_MAX_MS)
                wait = RL_DRAIN_MAX_MS;
            s.drain_deadline = now + wait;
        }
        if (s.draining && !s.said_bye) {
            pthread_mutex_lock(&r->mu);
            uint64_t final_v = r->pub_version, acked = r->acked_version;
            /* "finished" sends actors away for good: say it only once the
             * final checkpoint is on disk, or a learner killed while
             * writing it would come back to a run with no actors. */
            int saved = r->final_saved || !s.finished || g_stop || r->fatal;
            pthread_mutex_unlock(&r->mu);
            if (saved && (now >= s.drain_deadline ||
                          (acked >= final_v && lio_all_live_at_version(r->lio, final_v)))) {
                if (now >= s.drain_deadline && s.drain_deadline > 0 && !g_stop && acked >= final_v &&
                    !lio_all_live_at_version(r->lio, final_v))
                    log_warn("not every actor reported version %" PRIu64 " before the end",
                             final_v);
                for (int i = 0; i < lio_n_actors(r->lio); i++)
                    if (lio_actor_alive(r->lio, i))
                        send_bye(r, lio_actor_identity(r->lio, i), s.bye_reason, &s.wc);
                s.said_bye = 1;
                uint64_t wait = g_stop || r->fatal ? 0 : (uint64_t)r->cfg.learner.heartbeat_timeout_ms;
                if (wait > RL_DRAIN_MAX_MS)
                    wait = RL_DRAIN_MAX_MS;
                s.bye_deadline = now + wait;
            }
        }
        if (s.said_bye && (lio_live_actors(r->lio) == 0 || now >= s.bye_deadline))
            break;
    }
    char a[256], b[256];
    log_info("work socket: %s", wire_counters_format(&s.wc, a, sizeof(a)));
    log_info("publish socket: %s", wire_counters_format(&s.wc_pub, b, sizeof(b)));
    pthread_mutex_lock(&r->mu);
    lio_get_counts(r->lio, &r->io_counts);
    r->io_done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ------------------------------------------------------------ checkpoints */

static void hex64(uint64_t v, char *buf) { textf(buf, 17, "%016" PRIx64, v); }

static cJSON *rng_json(const rng_t *g)
{
    cJSON *a = cJSON_CreateArray();
    char h[17];
    for (int i = 0; a && i < 4; i++) {
        hex64(g->s[i], h);
        cJSON_AddItemToArray(a, cJSON_CreateString(h));
    }
    return a;
}

static char *trainer_json(const rl_t *r, const rl_snapshot_t *sn, double elapsed)
{
    cJSON *o = cJSON_CreateObject();
    char h[17];
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "format", RL_TRAINER_FORMAT);
    cJSON_AddNumberToObject(o, "version", RL_TRAINER_VERSION);
    cJSON_AddStringToObject(o, "stage", "rl");
    cJSON_AddNumberToObject(o, "step", (double)r->step);
    cJSON_AddNumberToObject(o, "weights_version", (double)(r->step + 1));
    cJSON_AddNumberToObject(o, "optimizer_step", (double)adamw_steps(r->opt));
    cJSON_AddNumberToObject(o, "total_steps", (double)r->cfg.rl.steps);
    cJSON_AddNumberToObject(o, "elapsed_s", elapsed);
    cJSON_AddStringToObject(o, "init", r->cfg.rl.init);
    cJSON_AddItemToObject(o, "step_rng", rng_json(&r->step_rng));
    cJSON_AddItemToObject(o, "grant_rng", rng_json(&sn->grant_rng));
    hex64(sn->next_grant_id, h);
    cJSON_AddStringToObject(o, "next_grant_id", h);
    cJSON *d = cJSON_AddObjectToObject(o, "data");
    if (d) {
        cJSON_AddItemToObject(d, "rng", rng_json(&sn->cursor.rng));
        cJSON *ep = cJSON_AddArrayToObject(d, "epoch");
        cJSON *ps = cJSON_AddArrayToObject(d, "pos");
        for (int p = 0; p < RLD_N_POOLS; p++) {
            if (ep)
                cJSON_AddItemToArray(ep, cJSON_CreateNumber((double)sn->cursor.epoch[p]));
            if (ps)
                cJSON_AddItemToArray(ps, cJSON_CreateNumber((double)sn->cursor.pos[p]));
        }
    }
    cJSON *rq = cJSON_AddArrayToObject(o, "requeue");
    for (size_t i = 0; rq && i < sn->n_requeue; i++) {
        cJSON *e = cJSON_CreateArray();
        cJSON_AddItemToArray(e, cJSON_CreateNumber(sn->requeue[i].pool));
        cJSON_AddItemToArray(e, cJSON_CreateNumber((double)sn->requeue[i].index));
        cJSON_AddItemToArray(e, cJSON_CreateNumber(sn->requeue[i].order));
        cJSON_AddItemToArray(rq, e);
    }
    cJSON *t = cJSON_AddObjectToObject(o, "traj");
    if (t) {
        cJSON_AddNumberToObject(t, "file_index", sn->log_file);
        cJSON_AddNumberToObject(t, "offset", (double)sn->log_off);
        cJSON_AddNumberToObject(t, "seq", (double)sn->log_seq);
        cJSON_AddNumberToObject(t, "pending_file_index", sn->pending_file);
        cJSON_AddNumberToObject(t, "pending_offset", (double)sn->pending_off);
    }
    cJSON *c = cJSON_AddObjectToObject(o, "counters");
    if (c) {
        const lio_counts_t *io = &sn->io;
        cJSON_AddNumberToObject(c, "groups_received", (double)io->groups_received);
        cJSON_AddNumberToObject(c, "groups_accepted", (double)io->groups_accepted);
        cJSON_AddNumberToObject(c, "groups_used", (double)r->used);
        cJSON_AddNumberToObject(c, "groups_consumed", (double)r->consumed);
        cJSON_AddNumberToObject(c, "samples_used", (double)r->samples_used);
        cJSON_AddNumberToObject(c, "grants_issued", (double)io->grants_issued);
        cJSON_AddNumberToObject(c, "regrants", (double)io->regrants);
        cJSON_AddNumberToObject(c, "grants_lost", (double)io->grants_lost);
        cJSON_AddNumberToObject(c, "actors_expired", (double)io->actors_expired);
        cJSON_AddNumberToObject(c, "actors_bye", (double)io->actors_bye);
        cJSON_AddNumberToObject(c, "hellos", (double)io->hellos);
        cJSON *da = cJSON_AddObjectToObject(c, "dropped_at_arrival");
        cJSON *dc = cJSON_AddObjectToObject(c, "dropped_after_accept");
        for (int k = 1; k < LIO_N_REASONS; k++) {
            if (da)
                cJSON_AddNumberToObject(da, lio_reason_name(k), (double)io->dropped[k]);
            if (dc)
                cJSON_AddNumberToObject(dc, lio_reason_name(k), (double)r->cdropped[k]);
        }
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

static int fsync_path(const char *path, int is_dir)
{
    int fd = open(path, is_dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Removes a folder of plain files (a leftover temporary checkpoint). */
static int remove_flat_dir(const char *dir)
{
    char cmd_path[CONFIG_PATH_LEN * 3];
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        textf(cmd_path, sizeof(cmd_path), "%s/%s", dir, e->d_name);
        unlink(cmd_path);
    }
    closedir(d);
    return rmdir(dir) == 0 ? 0 : -errno;
}

/* runs/NAME/ckpt/step-N: model, optimizer, tokenizer, config, trainer.json;
 * written to .tmp-step-N, fsynced, renamed; `latest` then points at it. */
static int save_checkpoint(rl_t *r, const rl_snapshot_t *sn, char *err, size_t errlen)
{
    char tmp[sizeof(r->ckpt_root) + 64], fin[sizeof(r->ckpt_root) + 64], path[sizeof(tmp) + 64];
    char why[2048];
    char *tj = NULL;
    int rc = ckpt_mkdirs(r->ckpt_root, why, sizeof(why));
    if (rc != 0)
        goto fail;
    textf(tmp, sizeof(tmp), "%s/.tmp-step-%" PRIu64, r->ckpt_root, r->step);
    textf(fin, sizeof(fin), "%s/step-%" PRIu64, r->ckpt_root, r->step);
    remove_flat_dir(tmp);
    if ((rc = ckpt_save_model(r->policy, tmp, why, sizeof(why))) != 0)
        goto fail;
    textf(path, sizeof(path), "%s/optimizer.safetensors", tmp);
    if ((rc = ckpt_save_optimizer(r->policy, adamw_m(r->opt), adamw_v(r->opt), adamw_steps(r->opt),
                                  path, why, sizeof(why))) != 0)
        goto fail;
    textf(path, sizeof(path), "%s/tokenizer.json", tmp);
    if ((rc = tok_save(r->tok, path, why, sizeof(why))) != 0)
        goto fail;
    fsync_path(path, 0);
    textf(path, sizeof(path), "%s/run_config.json", tmp);
    if ((rc = config_write_file(&r->cfg, path, why, sizeof(why))) != 0)
        goto fail;
    double elapsed = r->mx ? metrics_elapsed(r->mx) : r->elapsed_before;
    tj = trainer_json(r, sn, elapsed);
    if (!tj) {
        rc = -ENOMEM;
        textf(why, sizeof(why), "out of memory");
        goto fail;
    }
    textf(path, sizeof(path), "%s/trainer.json", tmp);
    if ((rc = ckpt_write_file_atomic(path, tj, strlen(tj), why, sizeof(why))) != 0)
        goto fail;
    if ((rc = fsync_path(tmp, 1)) != 0) {
        textf(why, sizeof(why), "fsync %s: %s", tmp, strerror(-rc));
        goto fail;
    }
    if (path_exists(fin) && (rc = remove_flat_dir(fin)) != 0) {
        textf(why, sizeof(why), "cannot replace %s: %s", fin, strerror(-rc));
        goto fail;
    }
    if (rename(tmp, fin) != 0) {
        rc = -errno;
        textf(why, sizeof(why), "rename %s -> %s: %s", tmp, fin, strerror(errno));
        goto fail;
    }
    char link_tmp[sizeof(r->ckpt_root) + 32], link[sizeof(r->ckpt_root) + 32], target[48];
    textf(link_tmp, sizeof(link_tmp), "%s/.latest.tmp", r->ckpt_root);
    textf(link, sizeof(link), "%s/latest", r->ckpt_root);
    textf(target, sizeof(target), "step-%" PRIu64, r->step);
    unlink(link_tmp);
    if (symlink(target, link_tmp) != 0 || rename(link_tmp, link) != 0) {
        rc = -errno;
        textf(why, sizeof(why), "cannot point %s at %s: %s", link, target, strerror(errno));
        goto fail;
    }
    fsync_path(r->ckpt_root, 1);
    free(tj);
    return 0;
fail:
    free(tj);
    errf(err, errlen, "checkpoint of step %" PRIu64 " in %s: %s", r->step, r->ckpt_root, why);
    return rc ? rc : -EIO;
}

/* ------------------------------------------------------------ compute thread */

typedef struct {
    int gps, G;
    float *rewards, *pref, *format, *adv;   /* (gps, G) each */
    const float **adv_rows;                 /* (gps) */
    grpo_group_t *groups;                   /* (gps) */
    rl_item_t **batch;                      /* (gps) */
    rl_item_t **stale;                      /* (gps * 4) */
} step_bufs_t;

static void step_bufs_free(step_bufs_t *b)
{
    free(b->rewards);
    free(b->pref);
    free(b->format);
    free(b->adv);
    free(b->adv_rows);
    free(b->groups);
    free(b->batch);
    free(b->stale);
}

static int step_bufs_init(step_bufs_t *b, int gps, int G)
{
    memset(b, 0, sizeof(*b));
    b->gps = gps;
    b->G = G;
    size_t n = (size_t)gps * (size_t)G;
    b->rewards = calloc(n, sizeof(float));
    b->pref = calloc(n, sizeof(float));
    b->format = calloc(n, sizeof(float));
    b->adv = calloc(n, sizeof(float));
    b->adv_rows = calloc((size_t)gps, sizeof(float *));
    b->groups = calloc((size_t)gps, sizeof(grpo_group_t));
    b->batch = calloc((size_t)gps, sizeof(rl_item_t *));
    b->stale = calloc((size_t)gps * 4, sizeof(rl_item_t *));
    if (!b->rewards || !b->pref || !b->format || !b->adv || !b->adv_rows || !b->groups ||
        !b->batch || !b->stale) {
        step_bufs_free(b);
        return -ENOMEM;
    }
    return 0;
}

static void group_view(const rl_item_t *it, grpo_group_t *g)
{
    const lio_prompt_t *p = it->prompt;
    memset(g, 0, sizeof(*g));
    g->prompt[0] = p->tokens[0];
    g->prompt_len[0] = p->len[0];
    g->prompt[1] = p->tokens[1];
    g->prompt_len[1] = p->len[1];
    g->image = p->image;
    g->G = (int)it->env->trajectory_group->n_samples;
    g->prompt_index = it->prompt_index;
    g->tokens = it->tok_rows;
    g->len = it->lens;
    g->logp = it->logp_rows;
    g->version = it->version;
    g->task = (reward_task_t)p->kind;
    g->expected[0] = p->expected[0];
    g->expected[1] = p->expected[1];
}

/* Asks the I/O thread for a snapshot and writes a checkpoint. */
static int periodic_checkpoint(rl_t *r)
{
    pthread_mutex_lock(&r->mu);
    r->snap_req = 1;
    r->snap_ready = 0;
    while (!r->snap_ready && !r->io_done && !r->fatal)
        pthread_cond_wait(&r->cv, &r->mu);
    int ok = r->snap_ready;
    rl_snapshot_t sn = r->snap;
    memset(&r->snap, 0, sizeof(r->snap));
    r->snap_req = 0;
    r->snap_ready = 0;
    pthread_mutex_unlock(&r->mu);
    if (!ok || !sn.requeue) {
        snapshot_free(&sn);
        return -EIO;
    }
    char err[2048];
    double t0 = mono_s();
    int rc = save_checkpoint(r, &sn, err, sizeof(err));
    if (rc != 0)
        log_error("%s", err);
    else
        log_info("checkpoint %s/step-%" PRIu64 " (%.2f s)", r->ckpt_root, r->step, mono_s() - t0);
    snapshot_free(&sn);
    return rc;
}

static void *compute_main(void *arg)
{
    rl_t *r = arg;
    const crl_config_t *cfg = &r->cfg;
    const int gps = cfg->rl.groups_per_step, G = cfg->rl.group_size, S = cfg->rl.max_staleness;
    const uint64_t total = (uint64_t)cfg->rl.steps;
    step_bufs_t b;
    progress_t prog;
    progress_init(&prog, stderr, PROGRESS_AUTO, 10.0);
    if (step_bufs_init(&b, gps, G) != 0) {
        pthread_mutex_lock(&r->mu);
        r->fatal = 1;
        textf(r->fatal_msg, sizeof(r->fatal_msg), "compute thread: out of memory");
        r->compute_done = 1;
        pthread_mutex_unlock(&r->mu);
        return NULL;
    }
    const uint64_t step0 = r->step;
    const double t_start = mono_s();
    double t_last = t_start;
    double idle_total = 0;
    uint64_t samples_here = 0;
    while (r->step < total && !g_stop) {
        const uint64_t V = r->step + 1;
        /* 1. wait for a batch (stale groups dropped as they are found) */
        double t_wait = mono_s();
        int got = 0, failed = 0;
        pthread_mutex_lock(&r->mu);
        for (;;) {
            int n_stale = 0;
            got = lio_queue_take_batch(r->queue, V, S, gps, (void **)b.batch, (void **)b.stale,
                                       gps * 4, &n_stale);
            for (int i = 0; i < n_stale; i++) {
                log_dropped(r, b.stale[i], CRL__DROP_REASON__DROP_REASON_STALE, V);
                r->cdropped[CRL__DROP_REASON__DROP_REASON_STALE]++;
                r->consumed++;
                item_free(&b.stale[i]);
            }
            if (got || g_stop || r->fatal || r->io_done) {
                failed = !got;
                break;
            }
            if (n_stale)
                continue;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        }
        pthread_mutex_unlock(&r->mu);
        double idle = mono_s() - t_wait;
        idle_total += idle;
        if (failed)
            break;

        /* 2. score, record the outcomes, update */
        int rc = 0;
        for (int i = 0; i < gps && rc == 0; i++) {
            group_view(b.batch[i], &b.groups[i]);
            b.adv_rows[i] = b.adv + (size_t)i * G;
            rc = grpo_score_group(r->grpo, &b.groups[i], b.rewards + (size_t)i * G,
                                  b.pref + (size_t)i * G, b.format + (size_t)i * G,
                                  b.adv + (size_t)i * G);
        }
        Crl__GroupKey *keys = calloc((size_t)gps, sizeof(Crl__GroupKey));
        Crl__GroupKey **kp = calloc((size_t)gps, sizeof(Crl__GroupKey *));
        if (!keys || !kp)
            rc = -ENOMEM;
        if (rc != 0) {
            pthread_mutex_lock(&r->mu);
            r->fatal = 1;
            textf(r->fatal_msg, sizeof(r->fatal_msg), "scoring the groups of step %" PRIu64
                     " failed: %s", V, strerror(-rc));
            for (int i = 0; i < gps; i++) {
                log_dropped(r, b.batch[i], CRL__DROP_REASON__DROP_REASON_SHUTDOWN, V);
                r->cdropped[CRL__DROP_REASON__DROP_REASON_SHUTDOWN]++;
                r->consumed++;
                item_free(&b.batch[i]);
            }
            pthread_mutex_unlock(&r->mu);
            free(keys);
            free(kp);
            break;
        }
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < gps; i++) {
            const rl_item_t *it = b.batch[i];
            Crl__TrajectoryRecord rec;
            Crl__GroupOutcome o;
            crl__trajectory_record__init(&rec);
            crl__group_outcome__init(&o);
            fill_key(&keys[i], it->env->trajectory_group);
            kp[i] = &keys[i];
            o.key = &keys[i];
            o.fate = CRL__GROUP_FATE__GROUP_FATE_USED;
            o.step = V; /* 1-based: the update that makes version V + 1 */
            o.batch_index = (uint32_t)i;
            o.staleness = (uint32_t)(V - it->version);
            o.n_rewards = o.n_preference = o.n_format = o.n_advantages = (size_t)G;
            o.rewards = b.rewards + (size_t)i * G;
            o.preference = b.pref + (size_t)i * G;
            o.format = b.format + (size_t)i * G;
            o.advantages = b.adv + (size_t)i * G;
            rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_OUTCOME;
            rec.outcome = &o;
            int lrc = log_record(r, &rec, NULL, NULL);
            if (lrc != 0)
                log_error("trajectory log: outcome of step %" PRIu64 ": %s", V, strerror(-lrc));
        }
        pthread_mutex_unlock(&r->mu);
        rng_t rng_before = r->step_rng;
        grpo_stats_t st;
        memset(&st, 0, sizeof(st));
        double t_up = mono_s();
        rc = grpo_step(r->grpo, r->policy, r->ref, r->opt, b.groups, b.adv_rows, gps, V, &st);
        double update_s = mono_s() - t_up;
        if (rc != 0) {
            pthread_mutex_lock(&r->mu);
            r->fatal = 1;
            textf(r->fatal_msg, sizeof(r->fatal_msg), "grpo_step of step %" PRIu64 " failed: %s",
                     V, strerror(-rc));
            for (int i = 0; i < gps; i++) {
                r->cdropped[CRL__DROP_REASON__DROP_REASON_SHUTDOWN]++;
                r->consumed++;
                item_free(&b.batch[i]);
            }
            pthread_mutex_unlock(&r->mu);
            free(keys);
            free(kp);
            break;
        }
        uint32_t crc = crc32c(r->policy->params, r->policy->n_params * sizeof(float));

        /* 3. step marker, counters, weights for the broker */
        pthread_mutex_lock(&r->mu);
        r->step++;
        r->used += (uint64_t)gps;
        r->consumed += (uint64_t)gps;
        for (int i = 0; i < gps; i++)
            r->samples_used += (uint64_t)b.groups[i].G;
        {
            Crl__TrajectoryRecord rec;
            Crl__StepMarker m;
            crl__trajectory_record__init(&rec);
            crl__step_marker__init(&m);
            m.step = r->step;
            m.version_before = V;
            m.version_after = V + 1;
            m.n_groups = (size_t)gps;
            m.groups = kp;
            /* positions of the groups' GroupReceived records: keys repeat
             * when an actor restarts, positions do not (replay uses them) */
            uint32_t *gfile = calloc((size_t)gps, sizeof(uint32_t));
            uint64_t *goff = calloc((size_t)gps, sizeof(uint64_t));
            if (gfile && goff) {
                for (int i = 0; i < gps; i++) {
                    gfile[i] = b.batch[i]->log_file;
                    goff[i] = b.batch[i]->log_off;
                }
                m.n_group_file_index = m.n_group_offset = (size_t)gps;
                m.group_file_index = gfile;
                m.group_offset = goff;
            }
            uint64_t rs[4] = {rng_before.s[0], rng_before.s[1], rng_before.s[2], rng_before.s[3]};
            m.n_rng_state = 4;
            m.rng_state = rs;
            m.weights_crc32c = crc;
            const rl_item_t *front = lio_queue_peek(r->queue, 0);
            if (front) {
                m.pending_file_index = front->log_file;
                m.pending_offset = front->log_off;
            } else {
                traj_log_position(r->log, &m.pending_file_index, &m.pending_offset);
            }
            m.formed_unix_ms = unix_ms();
            m.update_seconds = update_s;
            m.optimizer_steps = (uint64_t)adamw_steps(r->opt);
            m.updated = st.updated != 0;
            m.lr = st.lr;
            rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_STEP;
            rec.step = &m;
            int lrc = log_record(r, &rec, NULL, NULL);
            free(gfile);
            free(goff);
            if (lrc != 0)
                log_error("trajectory log: step marker %" PRIu64 ": %s", r->step, strerror(-lrc));
        }
        memcpy(r->pub_buf, r->policy->params, r->policy->n_params * sizeof(float));
        r->pub_version = r->step + 1;
        r->pub_crc = crc;
        lio_counts_t io = r->io_counts;
        int live = r->live_actors;
        uint64_t cd[LIO_N_REASONS];
        memcpy(cd, r->cdropped, sizeof(cd));
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        free(keys);
        free(kp);
        for (int i = 0; i < gps; i++)
            item_free(&b.batch[i]);

        /* 4. metrics and progress */
        double now = mono_s();
        double wall = now - t_last;
        t_last = now;
        samples_here += (uint64_t)st.samples;
        uint64_t dropped_total = 0;
        metrics_begin_line(r->mx, (int64_t)r->step);
        metrics_add_int(r->mx, "version", (int64_t)(r->step + 1));
        metrics_add_float(r->mx, "reward", st.reward_mean);
        metrics_add_float(r->mx, "preference_acc", st.preference_acc);
        metrics_add_float(r->mx, "format_rate", st.format_rate);
        metrics_add_float(r->mx, "response_len", st.response_len_mean);
        metrics_add_float(r->mx, "loss", st.loss);
        metrics_add_float(r->mx, "pg_loss", st.pg_loss);
        metrics_add_float(r->mx, "kl", st.kl);
        metrics_add_float(r->mx, "entropy", st.entropy);
        metrics_add_float(r->mx, "clip_fraction", st.clip_fraction);
        metrics_add_float(r->mx, "is_weight_mean", st.is_weight_mean);
        metrics_add_float(r->mx, "grad_norm", st.grad_norm);
        metrics_add_float(r->mx, "lr", st.lr);
        metrics_add_float(r->mx, "staleness_mean", st.staleness_mean);
        metrics_add_float(r->mx, "staleness_max", st.staleness_max);
        metrics_add_float(r->mx, "max_logp_diff_onpolicy",
                          st.max_logp_diff_onpolicy < 0 ? NAN : st.max_logp_diff_onpolicy);
        metrics_add_float(r->mx, "max_logp_diff", st.max_logp_diff);
        metrics_add_float(r->mx, "says_a_rate", st.says_first_rate < 0 ? NAN : st.says_first_rate);
        metrics_add_int(r->mx, "groups_skipped", st.groups_skipped);
        metrics_add_int(r->mx, "tokens", st.tokens);
        metrics_add_bool(r->mx, "updated", st.updated);
        metrics_add_float(r->mx, "idle_fraction", wall > 0 ? idle / wall : 0);
        metrics_add_float(r->mx, "samples_per_s", wall > 0 ? st.samples / wall : 0);
        metrics_add_float(r->mx, "update_s", update_s);
        metrics_add_float(r->mx, "step_s", wall);
        metrics_add_int(r->mx, "live_actors", live);
        metrics_add_int(r->mx, "groups_received", (int64_t)io.groups_received);
        metrics_add_int(r->mx, "groups_used", (int64_t)r->used);
        for (int k = 1; k < LIO_N_REASONS; k++) {
            char key[48];
            uint64_t n = io.dropped[k] + cd[k];
            dropped_total += n;
            textf(key, sizeof(key), "dropped_%s", lio_reason_name(k));
            metrics_add_int(r->mx, key, (int64_t)n);
        }
        metrics_add_int(r->mx, "regrants", (int64_t)io.regrants);
        if (metrics_end_line(r->mx) != 0)
            log_warn("could not append to %s", r->metrics_path);
        char eta[32];
        metrics_format_duration(metrics_eta((int64_t)(r->step - step0), (int64_t)(total - step0),
                                            now - t_start), eta, sizeof(eta));
        progress_line(&prog,
                      "rl step %" PRIu64 "/%" PRIu64 " | reward %.3f pref %.3f fmt %.2f | kl %.4f "
                      "| stale %.1f | idle %.0f%% | %.1f samples/s | actors %d | drops %" PRIu64
                      " | ETA %s",
                      r->step, total, st.reward_mean, st.preference_acc, st.format_rate, st.kl,
                      st.staleness_mean, 100.0 * (wall > 0 ? idle / wall : 0),
                      wall > 0 ? st.samples / wall : 0, live, dropped_total, eta);

        /* 5. periodic checkpoint (the final one is written by main) */
        if (cfg->rl.checkpoint_every > 0 && r->step % (uint64_t)cfg->rl.checkpoint_every == 0 &&
            r->step < total && !g_stop)
            periodic_checkpoint(r);
    }
    progress_end(&prog);
    double wall = mono_s() - t_start;
    log_info("compute: %" PRIu64 " steps in %.1f s, idle %.0f%% of the time, %.1f samples/s",
             r->step - step0, wall, wall > 0 ? 100.0 * idle_total / wall : 0,
             wall > 0 ? (double)samples_here / wall : 0);
    step_bufs_free(&b);
    pthread_mutex_lock(&r->mu);
    r->compute_done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* ------------------------------------------------------------ start-up */

static int parse_hex64(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsString(j))
        return -1;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(j->valuestring, &end, 16);
    if (errno || !end || *end || end == j->valuestring)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_rng(const cJSON *a, rng_t *g)
{
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 4)
        return -1;
    for (int i = 0; i < 4; i++)
        if (parse_hex64(cJSON_GetArrayItem(a, i), &g->s[i]) != 0)
            return -1;
    return 0;
}

static int num_u64(const cJSON *o, const char *key, uint64_t *out)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(j) || j->valuedouble < 0)
        return -1;
    *out = (uint64_t)j->valuedouble;
    return 0;
}

static char *read_text(const char *path, size_t max, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        errf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        errf(err, errlen, "%s: %s", path, buf ? "too large" : "out of memory");
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

typedef struct {
    uint64_t step, next_grant_id, log_seq, log_off, pending_off;
    uint32_t log_file, pending_file;
    rng_t step_rng, grant_rng;
    rld_cursor_t cursor;
    double elapsed;
    lio_counts_t io;
    uint64_t used, consumed, samples_used, cdropped[LIO_N_REASONS];
    rl_requeue_t *requeue;
    size_t n_requeue;
} rl_resume_t;

/* Reads trainer.json of an RL checkpoint; errors name the file and key. */
static int load_trainer_json(const char *path, rl_resume_t *rs, char *err, size_t errlen)
{
    memset(rs, 0, sizeof(*rs));
    char *text = read_text(path, 64u << 20, err, errlen);
    if (!text)
        return -ENOENT;
    cJSON *o = cJSON_Parse(text);
    free(text);
    const char *bad = NULL;
    if (!o) {
        errf(err, errlen, "%s: not valid JSON", path);
        return -EINVAL;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(o, "version");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data");
    const cJSON *traj = cJSON_GetObjectItemCaseSensitive(o, "traj");
    const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(o, "counters");
    const cJSON *rq = cJSON_GetObjectItemCaseSensitive(o, "requeue");
    uint64_t tmp = 0;
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, RL_TRAINER_FORMAT) != 0)
        bad = "format (not an RL checkpoint: use another run.name, or set rl.init to start from it)";
    else if (!cJSON_IsNumber(ver) || ver->valueint != RL_TRAINER_VERSION)
        bad = "version";
    else if (num_u64(o, "step", &rs->step) != 0)
        bad = "step";
    else if (parse_rng(cJSON_GetObjectItemCaseSensitive(o, "step_rng"), &rs->step_rng) != 0)
        bad = "step_rng";
    else if (parse_rng(cJSON_GetObjectItemCaseSensitive(o, "grant_rng"), &rs->grant_rng) != 0)
        bad = "grant_rng";
    else if (parse_hex64(cJSON_GetObjectItemCaseSensitive(o, "next_grant_id"), &rs->next_grant_id) != 0 ||
             rs->next_grant_id == 0)
        bad = "next_grant_id";
    else if (!cJSON_IsObject(data) ||
             parse_rng(cJSON_GetObjectItemCaseSensitive(data, "rng"), &rs->cursor.rng) != 0)
        bad = "data.rng";
    else if (!cJSON_IsObject(traj) || num_u64(traj, "offset", &rs->log_off) != 0 ||
             num_u64(traj, "seq", &rs->log_seq) != 0 || num_u64(traj, "pending_offset", &rs->pending_off) != 0)
        bad = "traj";
    else if (!cJSON_IsObject(cnt))
        bad = "counters";
    else if (!cJSON_IsArray(rq))
        bad = "requeue";
    if (!bad) {
        const cJSON *ep = cJSON_GetObjectItemCaseSensitive(data, "epoch");
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(data, "pos");
        if (!cJSON_IsArray(ep) || !cJSON_IsArray(ps) || cJSON_GetArraySize(ep) != RLD_N_POOLS ||
            cJSON_GetArraySize(ps) != RLD_N_POOLS)
            bad = "data.epoch / data.pos";
        for (int p = 0; !bad && p < RLD_N_POOLS; p++) {
            const cJSON *e = cJSON_GetArrayItem(ep, p), *q = cJSON_GetArrayItem(ps, p);
            if (!cJSON_IsNumber(e) || !cJSON_IsNumber(q) || e->valuedouble < 0 || q->valuedouble < 0)
                bad = "data.epoch / data.pos";
            else {
                rs->cursor.epoch[p] = (uint64_t)e->valuedouble;
                rs->cursor.pos[p] = (uint64_t)q->valuedouble;
            }
        }
    }
    if (!bad) {
        num_u64(traj, "file_index", &tmp);
        rs->log_file = (uint32_t)tmp;
        tmp = 0;
        num_u64(traj, "pending_file_index", &tmp);
        rs->pending_file = (uint32_t)tmp;
        const cJSON *el = cJSON_GetObjectItemCaseSensitive(o, "elapsed_s");
        rs->elapsed = cJSON_IsNumber(el) ? el->valuedouble : 0;
        num_u64(cnt, "groups_received", &rs->io.groups_received);
        num_u64(cnt, "groups_accepted", &rs->io.groups_accepted);
        num_u64(cnt, "groups_used", &rs->used);
        num_u64(cnt, "groups_consumed", &rs->consumed);
        num_u64(cnt, "samples_used", &rs->samples_used);
        num_u64(cnt, "grants_issued", &rs->io.grants_issued);
        num_u64(cnt, "regrants", &rs->io.regrants);
        num_u64(cnt, "grants_lost", &rs->io.grants_lost);
        num_u64(cnt, "actors_expired", &rs->io.actors_expired);
        num_u64(cnt, "actors_bye", &rs->io.actors_bye);
        num_u64(cnt, "hellos", &rs->io.hellos);
        const cJSON *da = cJSON_GetObjectItemCaseSensitive(cnt, "dropped_at_arrival");
        const cJSON *dc = cJSON_GetObjectItemCaseSensitive(cnt, "dropped_after_accept");
        for (int k = 1; k < LIO_N_REASONS; k++) {
            if (cJSON_IsObject(da))
                num_u64(da, lio_reason_name(k), &rs->io.dropped[k]);
            if (cJSON_IsObject(dc))
                num_u64(dc, lio_reason_name(k), &rs->cdropped[k]);
        }
        int n = cJSON_GetArraySize(rq);
        rs->requeue = calloc(n > 0 ? (size_t)n : 1, sizeof(rl_requeue_t));
        if (!rs->requeue)
            bad = "requeue (out of memory)";
        for (int i = 0; !bad && i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(rq, i);
            if (!cJSON_IsArray(e) || cJSON_GetArraySize(e) != 3) {
                bad = "requeue";
                break;
            }
            const cJSON *a = cJSON_GetArrayItem(e, 0), *b = cJSON_GetArrayItem(e, 1),
                        *c = cJSON_GetArrayItem(e, 2);
            if (!cJSON_IsNumber(a) || !cJSON_IsNumber(b) || !cJSON_IsNumber(c) || a->valueint < 0 ||
                a->valueint >= RLD_N_POOLS || b->valuedouble < 0) {
                bad = "requeue";
                break;
            }
            rs->requeue[rs->n_requeue++] =
                (rl_requeue_t){a->valueint, (uint64_t)b->valuedouble, c->valueint};
        }
    }
    cJSON_Delete(o);
    if (bad) {
        free(rs->requeue);
        rs->requeue = NULL;
        errf(err, errlen, "%s: bad or missing key \"%s\"", path, bad);
        return -EINVAL;
    }
    return 0;
}

/* Keeps the lines of metrics.jsonl up to `step` (a resumed run rewrites
 * what came after its checkpoint). Best-effort. */
static void trim_metrics(const char *path, uint64_t step)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return;
    char *kept = NULL;
    size_t klen = 0;
    FILE *mem = open_memstream(&kept, &klen);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int dropped = 0;
    while (mem && (n = getline(&line, &cap, f)) > 0) {
        const char *p = strstr(line, "\"step\":");
        long long st = p ? strtoll(p + 7, NULL, 10) : -1;
        if (p && st >= 0 && (uint64_t)st <= step && line[n - 1] == '\n')
            fwrite(line, 1, (size_t)n, mem);
        else
            dropped++;
    }
    free(line);
    fclose(f);
    if (mem)
        fclose(mem);
    if (kept && dropped) {
        char why[256];
        if (ckpt_write_file_atomic(path, kept, klen, why, sizeof(why)) != 0)
            log_warn("%s: %s", path, why);
        else
            log_info("%s: %d lines after step %" PRIu64 " removed (they are redone)", path, dropped,
                     step);
    }
    free(kept);
}

/* Counts the log records after a position (records a crashed process wrote
 * after its last checkpoint), so that seq numbers keep increasing. */
static uint64_t count_records_after(const char *dir, uint32_t file, uint64_t off)
{
    char err[512];
    traj_log_reader_t *rd = traj_log_reader_open(dir, 1, err, sizeof(err));
    if (!rd)
        return 0;
    uint64_t n = 0;
    if (traj_log_reader_seek(rd, file, off) == 0) {
        const void *p;
        size_t len;
        while (traj_log_next(rd, &p, &len, NULL, NULL) == 1)
            n++;
    }
    traj_log_reader_close(&rd);
    return n;
}

static void print_help(void)
{
    printf("usage: crl-learner rl [--config FILE] [--set key=value]... [--help] [--help-config]\n"
           "\n"
           "GRPO from live actors: loads the initial policy from rl.init (a checkpoint folder\n"
           "with tokenizer.json, e.g. runs/base/ckpt/latest) or resumes runs/<run.name>/ckpt/latest,\n"
           "publishes its weights to the broker (network.broker_publish), grants prompts of the\n"
           "training split to actors on network.learner_work, and takes rl.steps updates of\n"
           "rl.groups_per_step groups each. Writes runs/<run.name>/{config.json, metrics.jsonl,\n"
           "traj/, ckpt/, ref/, curves.png}. SIGINT/SIGTERM: checkpoint and exit 0.\n"
           "Keys: run.*, data.*, rl.*, learner.*, network.* (see --help-config).\n");
}

static void rl_free(rl_t *r)
{
    if (r->work)
        zmq_close(r->work);
    if (r->pub_mon)
        zmq_close(r->pub_mon);
    if (r->pub)
        zmq_close(r->pub);
    /* After the server sockets are closed: without its ZAP handler a CURVE
     * server socket would admit every client. */
    security_destroy(&r->sec);
    if (r->zctx)
        zmq_ctx_term(r->zctx);
    if (r->queue) {
        rl_item_t *it;
        while ((it = lio_queue_pop(r->queue, NULL)))
            item_free(&it);
        lio_queue_destroy(&r->queue);
    }
    traj_log_close(&r->log);
    metrics_close(&r->mx);
    grpo_destroy(&r->grpo);
    adamw_destroy(&r->opt);
    model_destroy(&r->policy);
    model_destroy(&r->ref);
    tok_destroy(&r->tok);
    rld_destroy(&r->data);
    lio_destroy(&r->lio);
    free(r->pub_buf);
    free(r->model_json);
    snapshot_free(&r->snap);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
}

int learner_rl_main(int argc, char **argv)
{
    static rl_t R;
    rl_t *r = &R;
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    char err[4096], why[2048];
    int status = 1;
    rl_resume_t rs;
    memset(&rs, 0, sizeof(rs));
    log_set_tag("learner");

    /* ---- arguments and config ---- */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_help();
            rl_free(r);
            return 0;
        }
    if (config_defaults(&r->cfg) != 0) {
        rl_free(r);
        return 2;
    }
    int rc = config_parse_args(&r->cfg, &argc, argv, err, sizeof(err));
    if (rc == 1) {
        config_print_help(stdout);
        rl_free(r);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-learner rl: %s\n", err);
        rl_free(r);
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "crl-learner rl: unexpected argument '%s' (see --help)\n", argv[1]);
        rl_free(r);
        return 2;
    }
    crl_config_t *cfg = &r->cfg;
    if (cfg->rl.order_balanced && cfg->rl.group_size < 2) {
        fprintf(stderr, "crl-learner rl: rl.order_balanced needs rl.group_size >= 2\n");
        rl_free(r);
        return 2;
    }
    if ((rc = topology_pin(&cfg->learner.cpus, why, sizeof(why))) != 0) {
        log_error("learner.cpus: %s", why);
        rl_free(r);
        return 2;
    }
    k_set_threads(cfg->learner.threads);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* ---- run folder, resume or initial policy ---- */
    textf(r->run_dir, sizeof(r->run_dir), "%s/%s", cfg->run.dir, cfg->run.name);
    textf(r->ckpt_root, sizeof(r->ckpt_root), "%s/ckpt", r->run_dir);
    textf(r->metrics_path, sizeof(r->metrics_path), "%s/metrics.jsonl", r->run_dir);
    char latest[sizeof(r->ckpt_root) + 16], refdir[sizeof(r->run_dir) + 8],
        path[sizeof(r->run_dir) + 256], trajdir[sizeof(r->run_dir) + 8];
    textf(latest, sizeof(latest), "%s/latest", r->ckpt_root);
    textf(refdir, sizeof(refdir), "%s/ref", r->run_dir);
    textf(trajdir, sizeof(trajdir), "%s/traj", r->run_dir);
    int resuming = path_exists(latest);
    const char *src = resuming ? latest : cfg->rl.init;
    if (!path_exists(src)) {
        log_error("rl.init = %s does not exist: give the base model's checkpoint folder (e.g. "
                  "runs/base/ckpt/latest, made by `crl-learner sft`)", cfg->rl.init);
        status = 2;
        goto out;
    }
    if ((rc = ckpt_mkdirs(r->run_dir, why, sizeof(why))) != 0) {
        log_error("run folder %s: %s", r->run_dir, why);
        goto out;
    }
    textf(path, sizeof(path), "%s/tokenizer.json", src);
    r->tok = tok_load(path, why, sizeof(why));
    if (!r->tok) {
        log_error("tokenizer of %s: %s", src, why);
        goto out;
    }
    r->policy = ckpt_load_model(src, 1, why, sizeof(why));
    if (!r->policy) {
        log_error("policy from %s: %s", src, why);
        goto out;
    }
    if (r->policy->cfg.vocab_size != tok_vocab_size(r->tok)) {
        log_error("%s: the model's vocab_size (%d) differs from its tokenizer.json's (%d)", src,
                  r->policy->cfg.vocab_size, tok_vocab_size(r->tok));
        goto out;
    }
    if (memcmp(&cfg->model, &r->policy->cfg, sizeof(model_config_t)) != 0)
        log_info("model config from %s (overrides model.*): dim %d, %d layers, vocab %d, image %d/%d",
                 src, r->policy->cfg.dim, r->policy->cfg.n_layers, r->policy->cfg.vocab_size,
                 r->policy->cfg.image_size, r->policy->cfg.patch_size);
    cfg->model = r->policy->cfg;
    /* the frozen reference: the initial policy, kept in runs/NAME/ref */
    if (path_exists(refdir)) {
        r->ref = ckpt_load_model(refdir, 0, why, sizeof(why));
        if (!r->ref) {
            log_error("reference model %s: %s", refdir, why);
            goto out;
        }
        if (memcmp(&r->ref->cfg, &r->policy->cfg, sizeof(model_config_t)) != 0) {
            log_error("%s holds another model config than %s (another run under this run.name?)",
                      refdir, src);
            goto out;
        }
    } else {
        if (resuming) {
            log_error("%s is missing: the reference model of this run is lost", refdir);
            goto out;
        }
        r->ref = model_new(&r->policy->cfg, 0);
        if (!r->ref || model_copy_params(r->ref, r->policy) != 0) {
            log_error("out of memory for the reference model");
            goto out;
        }
        char tmpref[sizeof(refdir) + 8];
        textf(tmpref, sizeof(tmpref), "%s.tmp", refdir);
        remove_flat_dir(tmpref);
        textf(path, sizeof(path), "%s/tokenizer.json", tmpref);
        if ((rc = ckpt_save_model(r->ref, tmpref, why, sizeof(why))) != 0 ||
            (rc = tok_save(r->tok, path, why, sizeof(why))) != 0) {
            log_error("saving the reference model to %s: %s", tmpref, why);
            goto out;
        }
        fsync_path(tmpref, 1);
        if (rename(tmpref, refdir) != 0) {
            log_error("rename %s -> %s: %s", tmpref, refdir, strerror(errno));
            goto out;
        }
    }
    adamw_config_t ac = adamw_config_default();
    ac.lr = (float)cfg->rl.lr;
    ac.weight_decay = (float)cfg->rl.weight_decay;
    ac.grad_clip = (float)cfg->rl.grad_clip;
    ac.warmup_steps = 0;
    ac.schedule = OPTIM_SCHED_CONSTANT;
    r->opt = adamw_new(r->policy, &ac);
    if (!r->opt) {
        log_error("optimizer: bad rl.lr / rl.weight_decay / rl.grad_clip or out of memory");
        status = 2;
        goto out;
    }
    rng_seed_stream(&r->step_rng, (uint64_t)cfg->run.seed, 0x5354455000000000ull); /* "STEP" */
    rng_seed_stream(&r->grant_rng, (uint64_t)cfg->run.seed, 0x4752414e54000000ull); /* "GRANT" */
    if (resuming) {
        textf(path, sizeof(path), "%s/trainer.json", latest);
        if ((rc = load_trainer_json(path, &rs, why, sizeof(why))) != 0) {
            log_error("resume: %s", why);
            goto out;
        }
        textf(path, sizeof(path), "%s/optimizer.safetensors", latest);
        long ostep = 0;
        if ((rc = ckpt_load_optimizer(r->policy, adamw_m(r->opt), adamw_v(r->opt), &ostep, path, why,
                                      sizeof(why))) != 0) {
            log_error("resume: %s", why);
            goto out;
        }
        adamw_set_steps(r->opt, ostep);
        r->step = rs.step;
        r->step_rng = rs.step_rng;
        r->grant_rng = rs.grant_rng;
        r->elapsed_before = rs.elapsed;
        r->used = rs.used;
        r->consumed = rs.consumed;
        r->samples_used = rs.samples_used;
        memcpy(r->cdropped, rs.cdropped, sizeof(r->cdropped));
        /* Groups the checkpoint counted as accepted but not yet taken by
         * the compute thread lived in the memory of the process that wrote
         * it. After a crash they are gone (their prompts are on the
         * requeue list and granted again): count them as dropped
         * (shutdown), or received would exceed used + dropped forever.
         * A clean stop drains its queue first, so this is 0 then. */
        uint64_t queued = rs.io.groups_accepted > rs.consumed ? rs.io.groups_accepted - rs.consumed : 0;
        if (queued) {
            r->cdropped[CRL__DROP_REASON__DROP_REASON_SHUTDOWN] += queued;
            r->consumed += queued;
            log_warn("resume: groups queued at the checkpoint and lost with the previous process: "
                     "%" PRIu64 ", counted as dropped (shutdown); their prompts are granted again",
                     queued);
        }
        r->consumed_base = r->consumed;
        log_info("resuming %s at step %" PRIu64 " (version %" PRIu64 ", %zu prompts to re-grant)",
                 latest, r->step, r->step + 1, rs.n_requeue);
    } else {
        log_info("initial policy %s: %zu parameters (dim %d, %d layers, vocab %d, image %d px / "
                 "patch %d)", src, r->policy->n_params, r->policy->cfg.dim, r->policy->cfg.n_layers,
                 r->policy->cfg.vocab_size, r->policy->cfg.image_size, r->policy->cfg.patch_size);
    }
    textf(path, sizeof(path), "%s/config.json", r->run_dir);
    if ((rc = config_write_file(cfg, path, why, sizeof(why))) != 0) {
        log_error("%s", why);
        goto out;
    }

    /* ---- data, GRPO, bookkeeping ---- */
    r->data = rld_new(cfg, &r->policy->cfg, r->tok, why, sizeof(why));
    if (!r->data) {
        log_error("%s", why);
        status = 2;
        goto out;
    }
    r->grpo = grpo_new(r->policy, cfg, r->tok, why, sizeof(why));
    if (!r->grpo) {
        log_error("grpo: %s", why);
        status = 2;
        goto out;
    }
    lio_params_t lp = {
        .group_size = cfg->rl.group_size,
        .max_staleness = cfg->rl.max_staleness,
        .groups_per_step = cfg->rl.groups_per_step,
        .max_new_tokens = cfg->rl.max_new_tokens,
        .max_seq_len = r->policy->cfg.max_seq_len,
        .heartbeat_timeout_ms = (uint64_t)cfg->learner.heartbeat_timeout_ms,
    };
    r->lio = lio_new(&lp, resuming ? rs.next_grant_id : 1);
    r->queue = lio_queue_new();
    r->pub_buf = malloc(r->policy->n_params * sizeof(float));
    r->model_json = ckpt_config_to_json_text(&r->policy->cfg);
    if (!r->lio || !r->queue || !r->pub_buf || !r->model_json) {
        log_error("out of memory");
        goto out;
    }
    if (resuming) {
        lio_set_counts(r->lio, &rs.io);
        rld_set_cursor(r->data, &rs.cursor);
        for (size_t i = 0; i < rs.n_requeue; i++) {
            lio_prompt_t *p = rld_make(r->data, rs.requeue[i].pool, rs.requeue[i].index,
                                       rs.requeue[i].order, why, sizeof(why));
            if (!p) {
                log_warn("resume: a prompt to re-grant is skipped: %s", why);
                continue;
            }
            if (lio_requeue(r->lio, p) != 0)
                lio_prompt_unref(&p);
        }
        /* grants the checkpoint counted as open/queued are re-issued: they
         * are in flight again, not lost */
    }
    {
        /* config digest: what an actor's sampling depends on */
        char dtext[8192];
        textf(dtext, sizeof(dtext), "%s|G=%d|T=%.9g|p=%.9g|n=%d", r->model_json,
                 cfg->rl.group_size, cfg->rl.temperature, cfg->rl.top_p, cfg->rl.max_new_tokens);
        textf(r->digest, sizeof(r->digest), "%08x", crc32c(dtext, strlen(dtext)));
    }
    wire_limits_default(&r->lim_work);
    r->lim_work.vocab_size = (uint32_t)r->policy->cfg.vocab_size;
    r->lim_work.max_prompt_tokens = (uint32_t)r->policy->cfg.max_seq_len;
    r->lim_work.max_new_tokens = (uint32_t)r->policy->cfg.max_seq_len;
    r->lim_work.max_group_size = (uint32_t)(cfg->rl.group_size > 64 ? cfg->rl.group_size : 64);
    r->lim_work.image_size = (uint32_t)r->policy->cfg.image_size;
    r->lim_work.max_envelope_bytes = (uint64_t)cfg->network.max_msg_bytes;
    wire_limits_default(&r->lim_pub);
    r->lim_pub.vocab_size = (uint32_t)r->policy->cfg.vocab_size;

    /* ---- trajectory log, metrics ---- */
    traj_log_options_t to;
    traj_log_options_default(&to);
    to.fsync_policy = cfg->learner.traj_fsync == CONFIG_FSYNC_RECORD     ? TRAJ_FSYNC_EVERY_RECORD
                      : cfg->learner.traj_fsync == CONFIG_FSYNC_INTERVAL ? TRAJ_FSYNC_INTERVAL
                                                                          : TRAJ_FSYNC_NEVER;
    to.fsync_interval_ms = (uint32_t)cfg->learner.traj_fsync_ms;
    to.max_file_bytes = (uint64_t)cfg->learner.traj_rotate_mb << 20;
    r->log = traj_log_open(trajdir, &to, why, sizeof(why));
    if (!r->log) {
        log_error("trajectory log: %s", why);
        goto out;
    }
    if (resuming) {
        uint64_t extra = count_records_after(trajdir, rs.log_file, rs.log_off);
        r->log_seq = rs.log_seq + extra;
        if (extra)
            log_warn("trajectory log: %" PRIu64 " records after the checkpoint's position belong "
                     "to the previous (interrupted) process; they stay, seq continues at %" PRIu64,
                     extra, r->log_seq);
        trim_metrics(r->metrics_path, r->step);
    } else {
        /* A fresh start in a run folder that a process killed before its
         * first checkpoint left behind: its metrics lines are redone, and
         * the log's seq numbers continue after its records. */
        uint64_t old = 0;
        {
            char rerr[512];
            traj_log_reader_t *rd = traj_log_reader_open(trajdir, 1, rerr, sizeof(rerr));
            const void *rp;
            size_t rlen;
            while (rd && traj_log_next(rd, &rp, &rlen, NULL, NULL) == 1)
                old++;
            traj_log_reader_close(&rd);
        }
        r->log_seq = old;
        if (old)
            log_warn("trajectory log: %" PRIu64 " records of an earlier attempt (no checkpoint was "
                     "written) stay; seq continues at %" PRIu64, old, old);
        trim_metrics(r->metrics_path, 0);
    }
    r->mx = metrics_open(r->metrics_path, why, sizeof(why));
    if (!r->mx) {
        log_error("%s", why);
        goto out;
    }
    metrics_set_elapsed(r->mx, r->elapsed_before);

    /* ---- sockets; version step+1 goes to the broker first ---- */
    if ((rc = open_sockets(r, why, sizeof(why))) != 0) {
        log_error("%s", why);
        status = 2;
        goto out;
    }
    memcpy(r->pub_buf, r->policy->params, r->policy->n_params * sizeof(float));
    r->pub_version = r->step + 1;
    r->pub_crc = crc32c(r->pub_buf, r->policy->n_params * sizeof(float));
    if (r->step >= (uint64_t)cfg->rl.steps)
        log_warn("rl.steps = %d and the run is at step %" PRIu64 ": nothing to do", cfg->rl.steps,
                 r->step);
    log_info("rl run %s: %d steps of %d groups x G=%d (max staleness %d, in flight <= %d), work %s, "
             "broker %s, %d thread%s, run folder %s",
             cfg->run.name, cfg->rl.steps, cfg->rl.groups_per_step, cfg->rl.group_size,
             cfg->rl.max_staleness, lio_inflight_cap(r->lio), cfg->network.learner_work,
             cfg->network.broker_publish, cfg->learner.threads, cfg->learner.threads == 1 ? "" : "s",
             r->run_dir);

    pthread_t io_thr, comp_thr;
    if (pthread_create(&io_thr, NULL, io_main, r) != 0) {
        log_error("cannot start the I/O thread");
        goto out;
    }
    if (pthread_create(&comp_thr, NULL, compute_main, r) != 0) {
        log_error("cannot start the compute thread");
        pthread_mutex_lock(&r->mu);
        r->compute_done = 1;
        r->final_saved = 1;
        pthread_mutex_unlock(&r->mu);
        pthread_join(io_thr, NULL);
        goto out;
    }
    pthread_join(comp_thr, NULL);
    /* The I/O thread keeps draining (actors pick up the final weights,
     * late groups are dropped) while the final checkpoint is written; it
     * says Bye only after that (final_saved). */

    /* ---- the end: leftover groups, final checkpoint, plot, accounting ---- */
    {
        uint64_t V = r->step + 1;
        rl_item_t *it;
        pthread_mutex_lock(&r->mu);
        /* snapshot first, so that the prompts of the queued groups are
         * re-granted on resume; then the groups themselves are dropped */
        rl_snapshot_t sn;
        /* The I/O thread still runs (it owns the grant state): it takes
         * the snapshot, as for a periodic checkpoint; once it has exited
         * the state is ours to read. */
        r->snap_req = 1;
        r->snap_ready = 0;
        while (!r->snap_ready && !r->io_done)
            pthread_cond_wait(&r->cv, &r->mu);
        int snap_ok, from_io = r->snap_ready;
        if (from_io) {
            sn = r->snap;
            memset(&r->snap, 0, sizeof(r->snap));
            snap_ok = sn.requeue != NULL;
        } else {
            snap_ok = take_snapshot(r, &sn) == 0;
        }
        r->snap_req = 0;
        r->snap_ready = 0;
        while ((it = lio_queue_pop(r->queue, NULL)) != NULL) {
            log_dropped(r, it, CRL__DROP_REASON__DROP_REASON_SHUTDOWN, V);
            r->cdropped[CRL__DROP_REASON__DROP_REASON_SHUTDOWN]++;
            r->consumed++;
            item_free(&it);
        }
        if (snap_ok) {
            /* nothing is pending in the log any more */
            traj_log_position(r->log, &sn.log_file, &sn.log_off);
            sn.pending_file = sn.log_file;
            sn.pending_off = sn.log_off;
            sn.log_seq = r->log_seq;
            if (!from_io)
                lio_get_counts(r->lio, &sn.io);
        }
        int fatal = r->fatal;
        pthread_mutex_unlock(&r->mu);
        traj_log_sync(r->log);
        if (fatal)
            log_error("stopped: %s", r->fatal_msg);
        int ckpt_failed = 0; /* the exit status says so: the last steps are not saved */
        if (snap_ok && r->step == 0) {
            log_info("no update was taken: no checkpoint written");
            snapshot_free(&sn);
        } else if (snap_ok) {
            double t0 = mono_s();
            if (save_checkpoint(r, &sn, err, sizeof(err)) != 0) {
                log_error("%s", err);
                ckpt_failed = 1;
            } else
                log_info("checkpoint %s/step-%" PRIu64 " (%.2f s)", r->ckpt_root, r->step,
                         mono_s() - t0);
            snapshot_free(&sn);
        } else {
            log_error("final checkpoint: out of memory");
            ckpt_failed = 1;
        }
        pthread_mutex_lock(&r->mu);
        r->final_saved = 1;
        pthread_mutex_unlock(&r->mu);
        pthread_join(io_thr, NULL);
        /* groups queued by the I/O thread after the snapshot */
        pthread_mutex_lock(&r->mu);
        while ((it = lio_queue_pop(r->queue, NULL)) != NULL) {
            log_dropped(r, it, CRL__DROP_REASON__DROP_REASON_SHUTDOWN, V);
            r->cdropped[CRL__DROP_REASON__DROP_REASON_SHUTDOWN]++;
            r->consumed++;
            item_free(&it);
        }
        pthread_mutex_unlock(&r->mu);
        traj_log_sync(r->log);
        metrics_close(&r->mx);
        static const char *const fields[] = {"reward", "preference_acc", "format_rate",
                                             "response_len", "kl", "entropy", "clip_fraction",
                                             "grad_norm", "staleness_mean", "idle_fraction",
                                             "samples_per_s", "says_a_rate"};
        char png[sizeof(r->run_dir) + 16];
        textf(png, sizeof(png), "%s/curves.png", r->run_dir);
        if (r->step > 0) {
            if (metrics_plot(r->metrics_path, png, fields, (int)(sizeof(fields) / sizeof(fields[0])),
                             why, sizeof(why)) != 0)
                log_warn("no plot: %s", why);
            else
                log_info("curves: %s", png);
        }
        lio_counts_t io;
        lio_get_counts(r->lio, &io);
        uint64_t dropped = 0;
        char drops[512] = "";
        size_t dl = 0;
        for (int k = 1; k < LIO_N_REASONS; k++) {
            uint64_t n = io.dropped[k] + r->cdropped[k];
            dropped += n;
            if (n && dl < sizeof(drops))
                dl += (size_t)textf(drops + dl, sizeof(drops) - dl, " %s=%" PRIu64,
                                       lio_reason_name(k), n);
        }
        log_info("accounting: groups received=%" PRIu64 " used=%" PRIu64 " dropped=%" PRIu64
                 "%s%s%s | grants issued=%" PRIu64 " re-granted=%" PRIu64 " lost=%" PRIu64
                 " | actors timed out=%" PRIu64 " said bye=%" PRIu64 " | %s",
                 io.groups_received, r->used, dropped, dropped ? " (" : "", drops + (dl ? 1 : 0),
                 dropped ? ")" : "", io.grants_issued, io.regrants, io.grants_lost,
                 io.actors_expired, io.actors_bye,
                 r->used + dropped == io.groups_received ? "balanced (used + dropped == received)"
                                                         : "NOT BALANCED");
        log_info("final: step=%" PRIu64 " version=%" PRIu64 " received=%" PRIu64 " used=%" PRIu64
                 " dropped=%" PRIu64, r->step, r->step + 1, io.groups_received, r->used, dropped);
        status = fatal || ckpt_failed ? 1 : 0;
    }
out:
    free(rs.requeue);
    rl_free(r);
    return status;
}
