/* bench_ingest: how many trajectory groups per second the learner takes in
 * (issue 4), beside what the ZeroMQ transport alone carries.
 *
 * Why a real crl-learner process: the learner's ingest path (learner/rl.c:
 * wire_recv -> handle_work_msg -> on_group: lio_check_group, the
 * GroupReceived record packed and appended to the trajectory log,
 * lio_commit_group, the hand-off queue, the Ack) is static inside rl.c and
 * bound to its rl_t, and crl-bench does not link the learner's files. A
 * copy of that glue here would measure the copy, not the learner. So this
 * starts a real crl-broker and `crl-learner rl` (the demo config, its
 * trajectory log on disk with the default fsync policy) and plays fake
 * actors that speak the wire protocol: Hello, WorkRequest, and for each
 * WorkGrant a TrajectoryGroup of G samples of max_new_tokens random tokens
 * answering the grant's real prompt (prompt tokens and the alt prompt of an
 * order-balanced critic group, as an actor echoes them).
 *
 * What is timed: a round begins once every fake actor holds its K grants
 * and its K groups are encoded; it ends when the Ack of the last group has
 * come back (the learner acks after the log append and the queue push, so
 * an Ack means "ingested"). The learner is told rl.groups_per_step = 20000,
 * so its compute thread never starts an update and never competes for the
 * cores: the figure is the I/O thread's ingest rate, not the GRPO step's.
 * Groups per second = K x peers / (last Ack - first send); the mean rate
 * over IG_ROUNDS rounds after a warm-up round (the log's periodic fsync,
 * learner.traj_fsync = interval, stalls some rounds: that is part of the
 * learner's sustained rate), and the best round beside it.
 *
 * Reference: the same fake actors (same sockets, same routing ids, the very
 * same encoded bytes of the last learner round) against a bare ROUTER with
 * the learner's socket options that receives each message, drops it and
 * answers a pre-encoded Ack: the ZeroMQ transport and the request/ack
 * pattern alone.
 *
 * Every endpoint is ipc:// inside the setup folder. Called by crl-bench;
 * no main here. */
#include <errno.h>
#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "log.h"
#include "rng.h"
#include "wire.h"

int bench_ingest_run(const char *setup_dir, const char *config, const char *bin_dir, FILE *json);

#define IG_MAX_PEERS 2
#define IG_WARMUP 200          /* groups of the untimed first round (all peers) */
/* Groups of a timed round (all peers). The learner keeps every group in
 * its hand-off queue (no update ever consumes them) and its compute thread
 * scans that queue for stale groups at each wake-up, a cost that a real
 * run (at most groups_per_step x max_staleness = 16 queued) never pays:
 * rounds stay short so that the queue stays at a few thousand. */
#define IG_PER_ROUND 1500
#define IG_ROUNDS 3
#define IG_REF_REPEAT 4        /* blasts per timed reference round */
#define IG_TIMEOUT_S 60.0      /* any one phase (start-up, grants, a round) */
#define IG_MAX_MSG 268435456   /* network.max_msg_bytes default */

static double ig_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------ processes */

/* Starts argv[0] with stdout+stderr appended to log_path; the child dies
 * with crl-bench (PR_SET_PDEATHSIG). Returns the pid or -1. */
static pid_t ig_spawn(char *const argv[], const char *log_path)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    return pid;
}

/* SIGTERM, up to 20 s for a clean exit, then SIGKILL. Returns the exit
 * status (-1 when killed or on error). */
static int ig_stop(pid_t pid)
{
    if (pid <= 0)
        return -1;
    kill(pid, SIGTERM);
    int st = 0;
    for (double end = ig_now() + 20; ig_now() < end;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0)
            return -1;
        usleep(20000);
    }
    log_warn("bench ingest: pid %d did not stop in 20 s: killing it", (int)pid);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* Bytes of the regular files in dir (the trajectory log). */
static uint64_t ig_dir_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    uint64_t n = 0;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d))) {
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
            n += (uint64_t)st.st_size;
    }
    closedir(d);
    return n;
}

/* ------------------------------------------------------------ fake actors */

typedef struct {
    uint8_t *buf;
    size_t len;
} ig_msg_t;

typedef struct {
    void *sock;
    char id[32];
    uint64_t next_group_id;
    /* grants held for the next round (decoded WorkGrant envelopes) */
    Crl__Envelope **grants;
    size_t n_grants, cap_grants;
    size_t requested;          /* credits asked for in this round */
    /* the round's encoded groups */
    ig_msg_t *msgs;
    size_t n_msgs, cap_msgs;
    size_t sent, acked, accepted;
} ig_peer_t;

typedef struct {
    uint32_t vocab;
    int max_new_tokens;
    rng_t rng;
    wire_limits_t lim;
    /* of the last round built */
    uint64_t bytes;
    uint64_t groups;
    uint64_t prompt_tokens;
} ig_gen_t;

static int ig_send_env(void *s, const Crl__Envelope *env)
{
    size_t n;
    uint8_t *buf = wire_encode(env, &n);
    if (!buf)
        return -ENOMEM;
    int rc = zmq_send(s, buf, n, 0);
    free(buf);
    return rc < 0 ? -errno : 0;
}

static int ig_hello(ig_peer_t *p)
{
    Crl__Envelope env;
    Crl__Hello h;
    wire_envelope_init(&env);
    crl__hello__init(&h);
    h.actor_id = p->id;
    h.hostname = (char *)"crl-bench";
    h.pid = (uint32_t)getpid();
    h.n_threads = 1;
    env.body_case = CRL__ENVELOPE__BODY_HELLO;
    env.hello = &h;
    return ig_send_env(p->sock, &env);
}

static int ig_work_request(ig_peer_t *p, uint32_t credits)
{
    Crl__Envelope env;
    Crl__WorkRequest w;
    wire_envelope_init(&env);
    crl__work_request__init(&w);
    w.credits = credits;
    env.body_case = CRL__ENVELOPE__BODY_WORK_REQUEST;
    env.work_request = &w;
    return ig_send_env(p->sock, &env);
}

static void ig_peer_clear_round(ig_peer_t *p)
{
    for (size_t i = 0; i < p->n_grants; i++)
        wire_envelope_free(&p->grants[i]);
    p->n_grants = 0;
    for (size_t i = 0; i < p->n_msgs; i++)
        free(p->msgs[i].buf);
    p->n_msgs = 0;
    p->requested = p->sent = p->acked = p->accepted = 0;
}

static void ig_peer_close(ig_peer_t *p)
{
    ig_peer_clear_round(p);
    free(p->grants);
    free(p->msgs);
    p->grants = NULL;
    p->msgs = NULL;
    p->cap_grants = p->cap_msgs = 0;
    if (p->sock)
        zmq_close(p->sock);
    p->sock = NULL;
}

static int ig_peer_open(ig_peer_t *p, void *ctx, const char *ep, int index)
{
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "bench-peer-%d", index);
    p->next_group_id = 1;
    p->sock = zmq_socket(ctx, ZMQ_DEALER);
    /* Acks must never be lost to a full queue on our side: an unlimited
     * receive queue keeps the learner's ROUTER sends from failing. */
    int zero = 0;
    if (!p->sock || wire_socket_setup(p->sock, IG_MAX_MSG) != 0 ||
        zmq_setsockopt(p->sock, ZMQ_RCVHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(p->sock, ZMQ_ROUTING_ID, p->id, strlen(p->id)) != 0 ||
        zmq_connect(p->sock, ep) != 0) {
        log_error("bench ingest: peer socket to %s: %s", ep, zmq_strerror(errno));
        if (p->sock)
            zmq_close(p->sock); /* an open socket would hang zmq_ctx_term */
        p->sock = NULL;
        return -1;
    }
    return 0;
}

/* Takes one message off p without waiting: 1 with *env (caller frees),
 * 0 when none, -1 on a hard error. */
static int ig_recv(ig_peer_t *p, const wire_limits_t *lim, Crl__Envelope **env)
{
    char err[256];
    for (;;) {
        int rc = wire_recv(p->sock, 0, 0, lim, NULL, NULL, env, NULL, err, sizeof err);
        if (rc == -EPROTO)
            continue; /* logged by wire_recv */
        if (rc < 0 && rc != -EAGAIN && rc != -EINTR)
            return -1;
        return rc == 1 ? 1 : 0;
    }
}

/* Counts the entries of an Ack; other bodies (Welcome, Heartbeat, ...) are
 * ignored. */
static void ig_count_ack(ig_peer_t *p, const Crl__Envelope *env)
{
    if (env->body_case != CRL__ENVELOPE__BODY_ACK)
        return;
    for (size_t i = 0; i < env->ack->n_entries; i++) {
        p->acked++;
        if (env->ack->entries[i]->status == CRL__ACK_STATUS__ACK_STATUS_ACCEPTED)
            p->accepted++;
        else if (p->acked - p->accepted <= 3)
            log_warn("bench ingest: the learner dropped group %" PRIu64 " of %s (reason %d)",
                     env->ack->entries[i]->group_id, p->id, (int)env->ack->entries[i]->reason);
    }
}

/* Waits for a Welcome on every peer. */
static int ig_welcome_all(ig_peer_t *peers, int n, const wire_limits_t *lim, uint32_t *vocab)
{
    int got[IG_MAX_PEERS] = {0}, left = n;
    for (int i = 0; i < n; i++)
        if (ig_hello(&peers[i]) != 0)
            return -1;
    double end = ig_now() + IG_TIMEOUT_S;
    while (left > 0 && ig_now() < end) {
        zmq_pollitem_t it[IG_MAX_PEERS];
        for (int i = 0; i < n; i++)
            it[i] = (zmq_pollitem_t){peers[i].sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(it, n, 100) < 0 && errno != EINTR)
            return -1;
        for (int i = 0; i < n; i++) {
            Crl__Envelope *env = NULL;
            while (ig_recv(&peers[i], lim, &env) == 1) {
                if (env->body_case == CRL__ENVELOPE__BODY_WELCOME && !got[i]) {
                    got[i] = 1;
                    left--;
                    *vocab = env->welcome->vocab_size;
                }
                wire_envelope_free(&env);
            }
        }
    }
    if (left > 0) {
        log_error("bench ingest: no Welcome from the learner within %.0f s (see its log)", IG_TIMEOUT_S);
        return -1;
    }
    return 0;
}

/* Asks for credits until every peer holds k grants. The learner grants
 * only once the broker holds version 1. */
static int ig_collect_grants(ig_peer_t *peers, int n, size_t k, const wire_limits_t *lim)
{
    double end = ig_now() + IG_TIMEOUT_S;
    for (;;) {
        int done = 1;
        for (int i = 0; i < n; i++) {
            ig_peer_t *p = &peers[i];
            if (p->n_grants < k)
                done = 0;
            /* the learner caps an actor's credits at 1024 (more are lost):
             * ask in steps that keep what it owes us below the cap */
            size_t owed = p->requested - p->n_grants; /* an upper bound of its credits there */
            if (p->requested < k && owed < 512) {
                size_t ask = k - p->requested < 1024 - owed ? k - p->requested : 1024 - owed;
                if (ig_work_request(p, (uint32_t)ask) != 0)
                    return -1;
                p->requested += ask;
            }
        }
        if (done)
            return 0;
        if (ig_now() > end) {
            log_error("bench ingest: the learner granted %zu of %zu groups within %.0f s (see its log)",
                      peers[0].n_grants, k, IG_TIMEOUT_S);
            return -1;
        }
        zmq_pollitem_t it[IG_MAX_PEERS];
        for (int i = 0; i < n; i++)
            it[i] = (zmq_pollitem_t){peers[i].sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(it, n, 100) < 0 && errno != EINTR)
            return -1;
        for (int i = 0; i < n; i++) {
            ig_peer_t *p = &peers[i];
            Crl__Envelope *env = NULL;
            while (ig_recv(p, lim, &env) == 1) {
                if (env->body_case == CRL__ENVELOPE__BODY_WORK_GRANT) {
                    if (p->n_grants == p->cap_grants) {
                        size_t cap = p->cap_grants ? 2 * p->cap_grants : 1024;
                        Crl__Envelope **g = realloc(p->grants, cap * sizeof *g);
                        if (!g) {
                            wire_envelope_free(&env);
                            return -1;
                        }
                        p->grants = g;
                        p->cap_grants = cap;
                    }
                    p->grants[p->n_grants++] = env;
                    env = NULL;
                }
                wire_envelope_free(&env);
            }
        }
    }
}

/* Encodes, for every grant p holds, the group a well-behaved actor would
 * send: the grant's prompt(s) echoed, G samples of max_new_tokens tokens
 * in [0, vocab) with log-probs in (-8, 0], the grant's minimum version. */
static int ig_build_groups(ig_peer_t *p, ig_gen_t *gen)
{
    size_t T = (size_t)gen->max_new_tokens;
    int32_t *tok = malloc(64 * T * sizeof *tok);
    float *lp = malloc(64 * T * sizeof *lp);
    Crl__Sample s[64], *sp[64];
    int rc = -1;
    if (!tok || !lp)
        goto done;
    if (p->cap_msgs < p->n_grants) {
        ig_msg_t *m = realloc(p->msgs, p->n_grants * sizeof *m);
        if (!m)
            goto done;
        p->msgs = m;
        p->cap_msgs = p->n_grants;
    }
    for (size_t i = 0; i < p->n_grants; i++) {
        const Crl__WorkGrant *g = p->grants[i]->work_grant;
        if (g->group_size < 1 || g->group_size > 64 || g->max_new_tokens < T) {
            log_error("bench ingest: grant with G=%u, max_new_tokens %u (expected G <= 64, >= %zu)",
                      g->group_size, g->max_new_tokens, T);
            goto done;
        }
        Crl__TrajectoryGroup tg;
        crl__trajectory_group__init(&tg);
        tg.actor_id = p->id;
        tg.group_id = p->next_group_id++;
        tg.grant_id = g->grant_id;
        tg.prompt_id = g->prompt_id;
        tg.weights_version = g->min_weights_version;
        tg.n_prompt_tokens = g->n_prompt_tokens;
        tg.prompt_tokens = g->prompt_tokens;
        tg.n_prompt_tokens_alt = g->n_prompt_tokens_alt;
        tg.prompt_tokens_alt = g->prompt_tokens_alt;
        tg.group_size = g->group_size;
        tg.generation_seconds = 0.5;
        for (uint32_t k = 0; k < g->group_size; k++) {
            crl__sample__init(&s[k]);
            for (size_t t = 0; t < T; t++) {
                tok[k * T + t] = (int32_t)rng_below(&gen->rng, gen->vocab);
                lp[k * T + t] = -8.0f * rng_uniform(&gen->rng);
            }
            s[k].n_tokens = s[k].n_logprobs = T;
            s[k].tokens = tok + k * T;
            s[k].logprobs = lp + k * T;
            s[k].prompt_index = k >= g->group_size - g->alt_count ? 1 : 0;
            sp[k] = &s[k];
        }
        tg.n_samples = g->group_size;
        tg.samples = sp;
        Crl__Envelope env;
        wire_envelope_init(&env);
        env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
        env.trajectory_group = &tg;
        ig_msg_t *m = &p->msgs[p->n_msgs];
        m->buf = wire_encode(&env, &m->len);
        if (!m->buf)
            goto done;
        p->n_msgs++;
        gen->bytes += m->len;
        gen->groups++;
        gen->prompt_tokens += g->n_prompt_tokens + g->n_prompt_tokens_alt;
    }
    rc = 0;
done:
    free(tok);
    free(lp);
    return rc;
}

/* Sends every peer's encoded groups and collects one Ack per group.
 * Returns the seconds from the first send to the last Ack, or -1. */
static double ig_blast(ig_peer_t *peers, int n, const wire_limits_t *lim)
{
    size_t want = 0;
    for (int i = 0; i < n; i++) {
        peers[i].sent = peers[i].acked = peers[i].accepted = 0;
        want += peers[i].n_msgs;
    }
    double t0 = ig_now(), end = t0 + IG_TIMEOUT_S;
    size_t acked = 0;
    while (acked < want) {
        if (ig_now() > end) {
            log_error("bench ingest: %zu of %zu Acks within %.0f s", acked, want, IG_TIMEOUT_S);
            return -1;
        }
        zmq_pollitem_t it[IG_MAX_PEERS];
        for (int i = 0; i < n; i++)
            it[i] = (zmq_pollitem_t){peers[i].sock, 0,
                                     (short)(ZMQ_POLLIN | (peers[i].sent < peers[i].n_msgs ? ZMQ_POLLOUT : 0)), 0};
        if (zmq_poll(it, n, 100) < 0 && errno != EINTR)
            return -1;
        for (int i = 0; i < n; i++) {
            ig_peer_t *p = &peers[i];
            /* Acks first, so that they never pile up behind our sends. */
            Crl__Envelope *env = NULL;
            while (ig_recv(p, lim, &env) == 1) {
                size_t before = p->acked;
                ig_count_ack(p, env);
                acked += p->acked - before;
                wire_envelope_free(&env);
            }
            for (int k = 0; k < 16 && p->sent < p->n_msgs; k++) {
                const ig_msg_t *m = &p->msgs[p->sent];
                if (zmq_send(p->sock, m->buf, m->len, ZMQ_DONTWAIT) < 0) {
                    if (errno == EAGAIN || errno == EINTR)
                        break;
                    log_error("bench ingest: send: %s", zmq_strerror(errno));
                    return -1;
                }
                p->sent++;
            }
        }
    }
    return ig_now() - t0;
}

/* ------------------------------------------------------------ reference */

typedef struct {
    void *ctx;
    char ep[600];
    atomic_int stop;
    atomic_int ready;
    int failed;
    uint64_t received;
} ig_sink_t;

/* A bare ROUTER with the learner's socket options: receive, drop, answer a
 * pre-encoded Ack of one ACCEPTED entry (the learner's Ack size). */
static void *ig_sink_main(void *arg)
{
    ig_sink_t *k = arg;
    void *s = zmq_socket(k->ctx, ZMQ_ROUTER);
    int tmo = 100;
    uint8_t *ack = NULL;
    size_t ack_len = 0;
    {
        Crl__Envelope env;
        Crl__Ack a;
        Crl__AckEntry e, *ep = &e;
        wire_envelope_init(&env);
        crl__ack__init(&a);
        crl__ack_entry__init(&e);
        e.group_id = 1000; /* a typical id's varint size */
        e.status = CRL__ACK_STATUS__ACK_STATUS_ACCEPTED;
        a.n_entries = 1;
        a.entries = &ep;
        env.body_case = CRL__ENVELOPE__BODY_ACK;
        env.ack = &a;
        ack = wire_encode(&env, &ack_len);
    }
    if (!s || !ack || wire_socket_setup(s, IG_MAX_MSG) != 0 ||
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo) != 0 || zmq_bind(s, k->ep) != 0) {
        log_error("bench ingest: reference ROUTER on %s: %s", k->ep, zmq_strerror(errno));
        k->failed = 1;
        atomic_store(&k->ready, 1);
        goto out;
    }
    atomic_store(&k->ready, 1);
    while (!atomic_load(&k->stop)) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, s, 0) < 0) {
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            continue;
        }
        int more = zmq_msg_more(&id);
        if (more && zmq_msg_recv(&body, s, 0) >= 0) {
            k->received++;
            /* drop it; answer as the learner does (never blocking) */
            if (zmq_msg_send(&id, s, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
                zmq_send(s, ack, ack_len, ZMQ_DONTWAIT);
        }
        zmq_msg_close(&id);
        zmq_msg_close(&body);
    }
out:
    free(ack);
    if (s)
        zmq_close(s);
    return NULL;
}

/* ------------------------------------------------------------ one configuration */

typedef struct {
    double learner_best_s;     /* best timed round */
    double learner_total_s;    /* all timed rounds */
    double ref_best_s, ref_total_s;
    size_t per_round;
    uint64_t wire_bytes;       /* of the learner rounds' groups */
    uint64_t wire_groups;
    uint64_t prompt_tokens;
    uint64_t log_bytes;        /* trajectory log growth per timed group */
    int group_size, max_new_tokens;
} ig_result_t;

/* Learner side of one configuration: broker + learner processes, n peers. */
static int ig_learner_side(const char *setup, const char *config, const char *bin, int n_peers,
                           ig_peer_t *peers, ig_gen_t *gen, ig_result_t *res)
{
    char name[32], ep[4][600], log_b[4200], log_l[4200], traj[4200];
    /* a run folder of its own each time (a left-over one would be continued) */
    snprintf(name, sizeof name, "ingest-%d-%d", n_peers, (int)getpid());
    static const char *const keys[4] = {"network.learner_work", "network.broker_publish",
                                        "network.broker_announce", "network.broker_fetch"};
    static const char *const sfx[4] = {"w", "p", "a", "f"};
    for (int i = 0; i < 4; i++)
        snprintf(ep[i], sizeof ep[i], "ipc://%s/%s.%s", setup, name, sfx[i]);
    snprintf(log_b, sizeof log_b, "%s/%s-broker.log", setup, name);
    snprintf(log_l, sizeof log_l, "%s/%s-learner.log", setup, name);
    snprintf(traj, sizeof traj, "%s/runs/%s/traj", setup, name);

    char sets[16][4200];
    int ns = 0;
    for (int i = 0; i < 4; i++)
        snprintf(sets[ns++], sizeof sets[0], "%s=%s", keys[i], ep[i]);
    snprintf(sets[ns++], sizeof sets[0], "run.dir=%s/runs", setup);
    snprintf(sets[ns++], sizeof sets[0], "run.name=%s", name);
    snprintf(sets[ns++], sizeof sets[0], "data.dir=%s/data", setup);
    snprintf(sets[ns++], sizeof sets[0], "rl.init=%s/runs/base/ckpt/latest", setup);
    snprintf(sets[ns++], sizeof sets[0], "rl.steps=1");
    /* never reached: the compute thread waits, the I/O thread ingests */
    snprintf(sets[ns++], sizeof sets[0], "rl.groups_per_step=20000");
    snprintf(sets[ns++], sizeof sets[0], "rl.checkpoint_every=0");
    snprintf(sets[ns++], sizeof sets[0], "learner.heartbeat_timeout_ms=120000");
    /* CRL_BENCH_INGEST_SET=key=value: one more learner override, to try
     * e.g. learner.traj_fsync=never */
    const char *extra = getenv("CRL_BENCH_INGEST_SET");
    if (extra && *extra)
        snprintf(sets[ns++], sizeof sets[0], "%s", extra);
    char exe_b[4200], exe_l[4200];
    snprintf(exe_b, sizeof exe_b, "%s/crl-broker", bin);
    snprintf(exe_l, sizeof exe_l, "%s/crl-learner", bin);
    char *argv_b[40], *argv_l[40];
    int ab = 0, al = 0;
    argv_b[ab++] = exe_b;
    argv_l[al++] = exe_l;
    argv_l[al++] = (char *)"rl";
    argv_b[ab++] = argv_l[al++] = (char *)"--config";
    argv_b[ab++] = argv_l[al++] = (char *)config;
    for (int i = 0; i < ns; i++) {
        argv_l[al++] = (char *)"--set";
        argv_l[al++] = sets[i];
        if (i < 4) {
            argv_b[ab++] = (char *)"--set";
            argv_b[ab++] = sets[i];
        }
    }
    argv_b[ab] = argv_l[al] = NULL;

    pid_t pb = ig_spawn(argv_b, log_b), pl = ig_spawn(argv_l, log_l);
    void *ctx = zmq_ctx_new();
    int rc = -1, opened = 0;
    if (pb < 0 || pl < 0 || !ctx) {
        log_error("bench ingest: cannot start %s / %s", exe_b, exe_l);
        goto done;
    }
    for (; opened < n_peers; opened++)
        if (ig_peer_open(&peers[opened], ctx, ep[0], opened) != 0)
            goto done;
    if (ig_welcome_all(peers, n_peers, &gen->lim, &gen->vocab) != 0)
        goto done;
    size_t k_warm = IG_WARMUP / (size_t)n_peers, k = IG_PER_ROUND / (size_t)n_peers;
    res->per_round = k * (size_t)n_peers;
    res->learner_best_s = -1;
    for (int round = 0; round <= IG_ROUNDS; round++) {
        for (int i = 0; i < n_peers; i++)
            ig_peer_clear_round(&peers[i]);
        size_t kk = round == 0 ? k_warm : k;
        if (ig_collect_grants(peers, n_peers, kk, &gen->lim) != 0)
            goto done;
        gen->bytes = gen->groups = gen->prompt_tokens = 0;
        for (int i = 0; i < n_peers; i++)
            if (ig_build_groups(&peers[i], gen) != 0)
                goto done;
        uint64_t log0 = ig_dir_bytes(traj);
        double t = ig_blast(peers, n_peers, &gen->lim);
        if (t < 0)
            goto done;
        size_t acc = 0;
        for (int i = 0; i < n_peers; i++)
            acc += peers[i].accepted;
        if (acc != kk * (size_t)n_peers) {
            log_error("bench ingest: the learner accepted %zu of %zu groups (see %s)", acc,
                      kk * (size_t)n_peers, log_l);
            goto done;
        }
        log_info("bench ingest: %d peer(s), %s round %d: %zu groups in %.3f s = %.0f groups/s",
                 n_peers, "learner", round, kk * (size_t)n_peers, t, (double)(kk * (size_t)n_peers) / t);
        if (round > 0) {
            res->learner_total_s += t;
            if (res->learner_best_s < 0 || t < res->learner_best_s)
                res->learner_best_s = t;
            res->log_bytes = (ig_dir_bytes(traj) - log0) / (kk * (size_t)n_peers);
        }
        res->wire_bytes = gen->bytes;
        res->wire_groups = gen->groups;
        res->prompt_tokens = gen->prompt_tokens;
    }
    rc = 0;
done:
    /* the peers keep their last round's encoded groups for the reference */
    for (int i = 0; i < opened; i++) {
        zmq_close(peers[i].sock);
        peers[i].sock = NULL;
    }
    if (ctx)
        zmq_ctx_term(ctx);
    int sl = ig_stop(pl), sb = ig_stop(pb);
    if (rc == 0 && (sl != 0 || sb != 0))
        log_warn("bench ingest: learner exit %d, broker exit %d (logs %s, %s)", sl, sb, log_l, log_b);
    return rc;
}

/* Reference of one configuration: the same peers' bytes into a bare ROUTER. */
static int ig_reference_side(const char *setup, int n_peers, ig_peer_t *peers, ig_gen_t *gen,
                             ig_result_t *res)
{
    ig_sink_t sink;
    memset(&sink, 0, sizeof sink);
    snprintf(sink.ep, sizeof sink.ep, "ipc://%s/ref-%d.w", setup, n_peers);
    sink.ctx = zmq_ctx_new();
    void *ctx = zmq_ctx_new();
    pthread_t th;
    int rc = -1, started = 0, opened = 0;
    ig_peer_t tmp[IG_MAX_PEERS];
    if (!sink.ctx || !ctx || pthread_create(&th, NULL, ig_sink_main, &sink) != 0)
        goto done;
    started = 1;
    while (!atomic_load(&sink.ready))
        usleep(1000);
    if (sink.failed)
        goto done;
    /* fresh sockets under the same routing ids, the learner rounds' messages */
    for (; opened < n_peers; opened++) {
        if (ig_peer_open(&tmp[opened], ctx, sink.ep, opened) != 0)
            goto done;
        peers[opened].sock = tmp[opened].sock;
    }
    res->ref_best_s = -1;
    /* The transport is ~10x faster: a round sends the learner round's
     * messages IG_REF_REPEAT times over, so that it lasts long enough to
     * time; ref_best_s is per IG_PER_ROUND groups. */
    for (int round = 0; round <= IG_ROUNDS; round++) {
        double t = 0;
        for (int rep = 0; rep < IG_REF_REPEAT; rep++) {
            double dt = ig_blast(peers, n_peers, &gen->lim);
            if (dt < 0)
                goto done;
            t += dt;
        }
        t /= IG_REF_REPEAT;
        log_info("bench ingest: %d peer(s), %s round %d: %zu groups in %.3f s = %.0f groups/s",
                 n_peers, "zmq-alone", round, res->per_round, t, (double)res->per_round / t);
        if (round > 0) {
            res->ref_total_s += t;
            if (res->ref_best_s < 0 || t < res->ref_best_s)
                res->ref_best_s = t;
        }
    }
    rc = 0;
done:
    for (int i = 0; i < opened; i++) {
        zmq_close(peers[i].sock);
        peers[i].sock = NULL;
    }
    if (started) {
        atomic_store(&sink.stop, 1);
        pthread_join(th, NULL);
    }
    if (ctx)
        zmq_ctx_term(ctx);
    if (sink.ctx)
        zmq_ctx_term(sink.ctx);
    return rc;
}

int bench_ingest_run(const char *setup_dir, const char *config, const char *bin_dir, FILE *json)
{
    static const int n_peers[] = {1, 2};
    ig_result_t res[2];
    int rc = 0;
    memset(res, 0, sizeof res);
    for (size_t c = 0; c < sizeof n_peers / sizeof n_peers[0]; c++) {
        ig_peer_t peers[IG_MAX_PEERS];
        memset(peers, 0, sizeof peers);
        ig_gen_t gen;
        memset(&gen, 0, sizeof gen);
        rng_seed(&gen.rng, 42 + c);
        wire_limits_default(&gen.lim);
        gen.max_new_tokens = 64; /* launch/demo.json rl.max_new_tokens: every sample full length */
        res[c].group_size = 8;
        res[c].max_new_tokens = gen.max_new_tokens;
        int lrc = ig_learner_side(setup_dir, config, bin_dir, n_peers[c], peers, &gen, &res[c]);
        if (lrc == 0 && ig_reference_side(setup_dir, n_peers[c], peers, &gen, &res[c]) != 0)
            lrc = -1;
        for (int i = 0; i < n_peers[c]; i++)
            ig_peer_close(&peers[i]);
        if (lrc != 0) {
            log_error("bench ingest: %d peer(s) failed", n_peers[c]);
            rc = -1;
            res[c].learner_best_s = -1;
        }
    }
    const ig_result_t *r0 = &res[0];
    double bpg = r0->wire_groups ? (double)r0->wire_bytes / (double)r0->wire_groups : 0;
    double ptok = r0->wire_groups ? (double)r0->prompt_tokens / (double)r0->wire_groups : 0;
    printf("\nlearner ingest: a real crl-learner rl (launch/demo.json: trajectory log on disk, fsync every\n"
           "1 s) fed by fake actors over ipc://, timed from the first send to the last Ack (the learner\n"
           "acks after the log append and the hand-off); %d rounds of %d groups after a warm-up, mean\n"
           "rate over all rounds (the fsync stalls included) and the best round. Reference: the same\n"
           "encoded groups, same DEALER -> ROUTER sockets, into a bare ROUTER that drops them and acks.\n"
           "A group: G=%d samples x %d new tokens + its prompt (%.0f prompt tokens incl. the alt order)\n"
           "= %.0f bytes on the wire, %.0f bytes in the trajectory log (it also keeps the image).\n",
           IG_ROUNDS, IG_PER_ROUND, r0->group_size, r0->max_new_tokens, ptok, bpg,
           (double)r0->log_bytes);
    printf("  %5s %17s %12s %8s %19s %12s %7s\n", "peers", "learner groups/s", "(best round)", "MB/s",
           "zmq alone groups/s", "(best round)", "ratio");
    for (size_t c = 0; c < 2; c++) {
        const ig_result_t *r = &res[c];
        if (r->learner_total_s <= 0 || r->ref_total_s <= 0) {
            printf("  %5d %17s\n", n_peers[c], "FAILED");
            continue;
        }
        double n = (double)r->per_round * IG_ROUNDS;
        double lg = n / r->learner_total_s, zg = n / r->ref_total_s;
        double lb = (double)r->per_round / r->learner_best_s, zb = (double)r->per_round / r->ref_best_s;
        double b = r->wire_groups ? (double)r->wire_bytes / (double)r->wire_groups : 0;
        printf("  %5d %17.0f %12.0f %8.1f %19.0f %12.0f %7.2f\n", n_peers[c], lg, lb, lg * b / 1e6, zg,
               zb, lg / zg);
        if (json) {
            fprintf(json,
                    "{\"impl\":\"crl\",\"workload\":\"learner_ingest\",\"peers\":%d,\"groups_per_s\":%.1f,"
                    "\"best_groups_per_s\":%.1f,\"mb_per_s\":%.2f,\"zmq_groups_per_s\":%.1f,"
                    "\"zmq_best_groups_per_s\":%.1f,\"ratio\":%.3f,\"bytes_per_group\":%.0f,"
                    "\"log_bytes_per_group\":%" PRIu64 "}\n",
                    n_peers[c], lg, lb, lg * b / 1e6, zg, zb, lg / zg, b, r->log_bytes);
            fflush(json);
        }
    }
    printf("  (what a real run needs: the end-to-end samples/s below divided by G=%d)\n", r0->group_size);
    fflush(stdout);
    return rc;
}
