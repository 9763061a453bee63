/* Multi-process test harness, shared by every suite that runs the real
 * programs (integration, multi, replay_mode, chaos, hostile, faults): a
 * temporary folder with a tiny built-in world and a random base model (dim
 * 32, 2 layers, 16 px images in 8 px patches, vocab ~300; the size can be
 * changed), the four endpoints (ipc:// inside that folder by default,
 * parallel-safe and nothing on TCP; or free ports on 127.0.0.1), and
 * crl-broker / crl-learner rl / crl-actor started from $CRL_BIN_DIR with
 * their stdout+stderr appended to DIR/<name>.log. Every process started is
 * recorded and killed by h_kill_all() (the tests' .fini), and dies with the
 * test process (PR_SET_PDEATHSIG). Header-only (static inline) because
 * Criterion links only tests/test_*.c: each test file includes its own copy
 * and has its own H. Without CRL_BIN_DIR the tests are skipped. */
#ifndef CRL_TESTS_HARNESS_H
#define CRL_TESTS_HARNESS_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "model.h"
#include "rng.h"
#include "tokenizer.h"

#define H_MAX_PROCS 256

/* The four endpoints of a run, in this order everywhere. */
enum { H_WORK, H_PUBLISH, H_ANNOUNCE, H_FETCH, H_N_EPS };

typedef struct {
    char ep[H_N_EPS][600];
} h_eps_t;

/* How h_setup_opts makes the endpoints. */
enum {
    H_EPS_IPC,  /* ipc://DIR/<name>.sock */
    H_EPS_TCP,  /* tcp://127.0.0.1:<a port free right now> */
    H_EPS_NONE, /* none: the test passes its own to h_common_args_at */
};

/* What differs between the suites; zero fields take the defaults. */
typedef struct {
    int endpoints;                 /* H_EPS_*, default ipc */
    const char *run_name;          /* run.name, default "it" */
    int dim, n_layers, hidden_dim; /* base model, default 32, 2, 64 */
    int heartbeat_timeout_ms;      /* learner.heartbeat_timeout_ms, default 1000 */
    const char *const *progs;      /* programs needed besides learner, actor, broker and
                                      data (NULL-terminated); the test skips without them */
    const char *const *sets;       /* "k=v" given to every process after the common
                                      settings (NULL-terminated; must outlive the test) */
} h_opts_t;

typedef struct {
    char dir[512];
    char bin[512];
    char ep[H_N_EPS][600];          /* work, publish, announce, fetch */
    char run_name[64];
    int heartbeat_timeout_ms;
    const char *const *sets;
    pid_t pids[H_MAX_PROCS];       /* 0 once reaped */
    pid_t started[H_MAX_PROCS];    /* every pid ever started (for the leak check) */
    int exit_status[H_MAX_PROCS];  /* as h_wait_exit reports it, -1 while running */
    char names[H_MAX_PROCS][48];
    int n;
} h_t;

static h_t H;

static inline double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline void h_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline int h_slot(pid_t pid)
{
    for (int i = 0; i < H.n; i++)
        if (H.started[i] == pid)
            return i;
    return -1;
}

/* Non-blocking reap of pid; 1 when it has exited (status recorded). */
static inline int h_reaped(pid_t pid)
{
    int i = h_slot(pid);
    if (i < 0 || H.pids[i] == 0)
        return 1;
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
        H.pids[i] = 0;
        H.exit_status[i] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return 1;
    }
    return 0;
}

/* Waits up to timeout_s for pid to exit; its exit status (or 128 + signal),
 * -1 on timeout. */
static inline int h_wait_exit(pid_t pid, double timeout_s)
{
    double t0 = h_now();
    for (;;) {
        if (h_reaped(pid)) {
            int i = h_slot(pid);
            return i >= 0 ? H.exit_status[i] : 0;
        }
        if (h_now() - t0 > timeout_s)
            return -1;
        h_sleep_ms(10);
    }
}

/* Sends sig and, for SIGKILL, reaps. Resumes a stopped process first so
 * that SIGTERM can act. */
static inline void h_signal(pid_t pid, int sig)
{
    int i = h_slot(pid);
    if (pid <= 0 || (i >= 0 && H.pids[i] == 0))
        return;
    kill(pid, sig);
    if (sig == SIGKILL)
        h_wait_exit(pid, 10);
}

static inline void h_kill_all(void)
{
    for (int i = 0; i < H.n; i++) {
        if (H.pids[i] <= 0)
            continue;
        kill(H.pids[i], SIGKILL);
        waitpid(H.pids[i], NULL, 0);
        H.pids[i] = 0;
    }
}

/* In a forked child: dies with the test process, appends stdout+stderr to
 * logp and execs argv (argv[0] a path). Never returns. */
static inline void h_exec_logged(const char *const *argv, const char *logp)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Starts BIN_DIR/prog with args (NULL-terminated), behind the command
 * `prefix` (NULL-terminated, prefix[0] a path; NULL for none: e.g. `ip
 * netns exec NS`, which must exec the program in place so that the pid is
 * the program's); stdout+stderr appended to DIR/<log>.log. Returns the pid. */
static inline pid_t h_spawn_via(const char *const *prefix, const char *prog, const char *log,
                                const char *const *args)
{
    cr_assert_lt(H.n, H_MAX_PROCS, "more than %d processes started", H_MAX_PROCS);
    char path[700], logp[700];
    snprintf(path, sizeof(path), "%s/%s", H.bin, prog);
    snprintf(logp, sizeof(logp), "%s/%s.log", H.dir, log);
    const char *argv[140];
    int n = 0;
    for (int i = 0; prefix && prefix[i] && n < 8; i++)
        argv[n++] = prefix[i];
    argv[n++] = path;
    for (int i = 0; args[i] && n < 139; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0)
        h_exec_logged(argv, logp);
    H.pids[H.n] = pid;
    H.started[H.n] = pid;
    H.exit_status[H.n] = -1;
    snprintf(H.names[H.n], sizeof(H.names[0]), "%s", log);
    H.n++;
    return pid;
}

static inline pid_t h_spawn(const char *prog, const char *log, const char *const *args)
{
    return h_spawn_via(NULL, prog, log, args);
}

/* The running process started with log name `log`, 0 if none (reaped). */
static inline pid_t h_pid_of(const char *log)
{
    for (int i = H.n - 1; i >= 0; i--)
        if (!strcmp(H.names[i], log) && H.pids[i] > 0)
            return H.pids[i];
    return 0;
}

/* A whole file, NUL-terminated (binary-safe with len); NULL if unreadable. */
static inline char *h_read_file_len(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(n > 0 ? n : 0) + 1);
    size_t got = n > 0 ? fread(b, 1, (size_t)n, f) : 0;
    b[got] = '\0';
    fclose(f);
    if (len)
        *len = got;
    return b;
}

static inline char *h_read_file(const char *path) { return h_read_file_len(path, NULL); }

static inline char *h_read_log(const char *name)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/%s.log", H.dir, name);
    char *s = h_read_file(p);
    return s ? s : calloc(1, 1);
}

/* The last 3000 characters of a text: failure messages quote logs, and a
 * runaway process's log can be huge (Criterion sends every message to its
 * runner). */
static inline const char *h_tail(const char *text)
{
    size_t n = strlen(text);
    return n > 3000 ? text + n - 3000 : text;
}

static inline int h_count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *q = text; (q = strstr(q, needle)) != NULL; q++)
        n++;
    return n;
}

/* The last occurrence of key in text, parsed with sscanf(fmt) from the key
 * on; the number of fields parsed. */
static inline int h_scan_last(const char *text, const char *key, const char *fmt, ...)
{
    const char *p = NULL, *q = text;
    while ((q = strstr(q, key)) != NULL) {
        p = q;
        q++;
    }
    if (!p)
        return 0;
    va_list ap;
    va_start(ap, fmt);
    int n = vsscanf(p, fmt, ap);
    va_end(ap);
    return n;
}

/* Waits until the log `name` holds `needle`. The loop checks with a plain
 * if: Criterion sends every assertion, passing ones too, to its runner. */
static inline void h_wait_log(const char *name, const char *needle, double timeout_s)
{
    double t0 = h_now();
    for (;;) {
        char *l = h_read_log(name);
        if (strstr(l, needle)) {
            free(l);
            return;
        }
        if (h_now() - t0 > timeout_s)
            cr_assert_fail("\"%s\" did not appear in %s.log within %g s; the log ends:\n%s",
                           needle, name, timeout_s, h_tail(l));
        free(l);
        h_sleep_ms(20);
    }
}

/* The learner grants nothing before the broker holds version 1: starting
 * the broker only once every actor said Hello makes all of them take part
 * from the first step (a tiny run is over in a fraction of a second). */
static inline void h_wait_joined(const char *learner_log, const char *id)
{
    char needle[96];
    snprintf(needle, sizeof(needle), "actor %s (#", id);
    h_wait_log(learner_log, needle, 30);
}

/* Runs prog to completion; its exit status, -1 if it was still running
 * after timeout_s (it is then killed). Its output is in DIR/<log>.log. */
static inline int h_run(const char *prog, const char *log, const char *const *args,
                        double timeout_s)
{
    pid_t pid = h_spawn(prog, log, args);
    int rc = h_wait_exit(pid, timeout_s);
    if (rc == -1)
        h_signal(pid, SIGKILL);
    return rc;
}

static inline void h_run_ok(const char *prog, const char *log, const char *const *args,
                            double timeout_s)
{
    int rc = h_run(prog, log, args, timeout_s);
    char *l = h_read_log(log);
    cr_assert_eq(rc, 0, "%s exited with %d; its log:\n%s", prog, rc, l);
    free(l);
}

/* A TCP port on 127.0.0.1 that the OS reports free right now. */
static inline int h_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s", strerror(errno));
    socklen_t len = sizeof(a);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static inline h_eps_t h_loopback_eps(void)
{
    h_eps_t e;
    for (int i = 0; i < H_N_EPS; i++)
        snprintf(e.ep[i], sizeof(e.ep[i]), "tcp://127.0.0.1:%d", h_free_port());
    return e;
}

/* $CRL_BIN_DIR (skips without it or without one of progs, NULL-terminated
 * or NULL) and a fresh DIR = $CRL_TEST_TMP/<name>-XXXXXX; no world. */
static inline void h_begin(const char *name, const char *const *progs)
{
    memset(&H, 0, sizeof(H));
    snprintf(H.run_name, sizeof(H.run_name), "it");
    H.heartbeat_timeout_ms = 1000;
    const char *bin = getenv("CRL_BIN_DIR");
    if (!bin || !*bin)
        cr_skip_test("CRL_BIN_DIR is not set (run through `make test`, or set it to build/bin)");
    snprintf(H.bin, sizeof(H.bin), "%s", bin);
    char p[700];
    for (int i = 0; progs && progs[i]; i++) {
        snprintf(p, sizeof(p), "%s/%s", bin, progs[i]);
        if (access(p, X_OK) != 0)
            cr_skip_test("%s is not built", p);
    }
    const char *base = getenv("CRL_TEST_TMP");
    char why[256];
    if (base && *base)
        (void)ckpt_mkdirs(base, why, sizeof(why)); /* mkdtemp below says what is wrong */
    snprintf(H.dir, sizeof(H.dir), "%s/%s-XXXXXX", base && *base ? base : "/tmp", name);
    cr_assert_not_null(mkdtemp(H.dir), "mkdtemp %s: %s", H.dir, strerror(errno));
}

/* Temp folder, endpoints, the tiny world and a random base model with a
 * tokenizer trained on the data. Skips without CRL_BIN_DIR. */
static inline void h_setup_opts(const char *name, const h_opts_t *o)
{
    static const h_opts_t defaults = {0};
    if (!o)
        o = &defaults;
    const char *progs[16] = {"crl-learner", "crl-actor", "crl-broker", "crl-data"};
    for (int i = 0, n = 4; o->progs && o->progs[i] && n < 15; i++)
        progs[n++] = o->progs[i];
    h_begin(name, progs);
    if (o->run_name)
        snprintf(H.run_name, sizeof(H.run_name), "%s", o->run_name);
    if (o->heartbeat_timeout_ms)
        H.heartbeat_timeout_ms = o->heartbeat_timeout_ms;
    H.sets = o->sets;
    if (o->endpoints == H_EPS_IPC) {
        static const char *const ep_names[H_N_EPS] = {"work", "publish", "announce", "fetch"};
        char dir[sizeof(H.dir)]; /* a copy: H.dir and H.ep share one object (-Wrestrict) */
        memcpy(dir, H.dir, sizeof(dir));
        for (int i = 0; i < H_N_EPS; i++)
            snprintf(H.ep[i], sizeof(H.ep[i]), "ipc://%s/%s.sock", dir, ep_names[i]);
        cr_assert_lt(strlen(H.ep[1]), 100, "ipc path too long for a unix socket: %s", H.ep[1]);
    } else if (o->endpoints == H_EPS_TCP) {
        h_eps_t e = h_loopback_eps();
        memcpy(H.ep, e.ep, sizeof(H.ep));
    }

    char p[700], data[600];
    snprintf(data, sizeof(data), "%s/data", H.dir);
    const char *dargs[] = {"--out", data, "--train", "30", "--val", "4", "--test", "4", "--grid",
                           "2", "--image-size", "16", "--quiet", NULL};
    h_run_ok("crl-data", "data", dargs, 60);

    char c[700], pol[700], err[1024];
    snprintf(c, sizeof(c), "%s/train.critic.jsonl", data);
    snprintf(pol, sizeof(pol), "%s/train.policy.jsonl", data);
    const char *paths[2] = {c, pol};
    tokenizer_t *tok = tok_train_files(paths, 2, 300, err, sizeof(err));
    cr_assert_not_null(tok, "tokenizer: %s", err);
    model_config_t mc = {.vocab_size = tok_vocab_size(tok), .dim = o->dim ? o->dim : 32,
                         .n_layers = o->n_layers ? o->n_layers : 2, .n_heads = 2,
                         .n_kv_heads = 2, .hidden_dim = o->hidden_dim ? o->hidden_dim : 64,
                         .max_seq_len = 512, .image_size = 16, .patch_size = 8,
                         .tie_embeddings = 0, .rope_theta = 10000, .norm_eps = 1e-5f};
    model_t *m = model_new(&mc, 0);
    cr_assert_not_null(m);
    rng_t r;
    rng_seed(&r, 7);
    model_init_random(m, &r);
    snprintf(p, sizeof(p), "%s/base", H.dir);
    cr_assert_eq(ckpt_save_model(m, p, err, sizeof(err)), 0, "%s", err);
    snprintf(p, sizeof(p), "%s/base/tokenizer.json", H.dir);
    cr_assert_eq(tok_save(tok, p, err, sizeof(err)), 0, "%s", err);
    model_destroy(&m);
    tok_destroy(&tok);
}

/* The defaults: ipc:// endpoints, run "it", the 32-dim model. */
static inline void h_setup(const char *name) { h_setup_opts(name, NULL); }

/* Arguments of one process; argv stays NULL-terminated. */
typedef struct {
    char buf[48][700];
    const char *argv[128];
    int n, k;
} h_args_t;

static inline void h_arg(h_args_t *a, const char *s)
{
    if (a->n >= 126) /* a plain if: see h_wait_log */
        cr_assert_fail("more than 126 arguments");
    a->argv[a->n++] = s;
    a->argv[a->n] = NULL;
}

static inline void h_set(h_args_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void h_set(h_args_t *a, const char *fmt, ...)
{
    if (a->k >= 48)
        cr_assert_fail("more than 48 formatted arguments");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->buf[a->k], sizeof(a->buf[0]), fmt, ap);
    va_end(ap);
    h_arg(a, "--set");
    h_arg(a, a->buf[a->k]);
    a->k++;
}

/* The run config with endpoints ep (work, publish, announce, fetch): steps,
 * checkpoint_every, the setup's extra settings, then extra "k=v" strings
 * (NULL-terminated). sub: "rl" for the learner, else NULL. */
static inline void h_common_args_at(h_args_t *a, const char *sub, const char (*ep)[600],
                                    int steps, int ckpt_every, const char *const *extra)
{
    memset(a, 0, sizeof(*a));
    if (sub)
        h_arg(a, sub);
    h_set(a, "network.learner_work=%s", ep[H_WORK]);
    h_set(a, "network.broker_publish=%s", ep[H_PUBLISH]);
    h_set(a, "network.broker_announce=%s", ep[H_ANNOUNCE]);
    h_set(a, "network.broker_fetch=%s", ep[H_FETCH]);
    h_set(a, "run.dir=%s/runs", H.dir);
    h_set(a, "run.name=%s", H.run_name);
    h_set(a, "data.dir=%s/data", H.dir);
    h_set(a, "rl.init=%s/base", H.dir);
    h_set(a, "rl.group_size=4");
    h_set(a, "rl.groups_per_step=2");
    h_set(a, "rl.max_new_tokens=24");
    h_set(a, "rl.steps=%d", steps);
    h_set(a, "rl.checkpoint_every=%d", ckpt_every);
    h_set(a, "learner.heartbeat_ms=100");
    h_set(a, "learner.heartbeat_timeout_ms=%d", H.heartbeat_timeout_ms);
    h_set(a, "learner.traj_fsync=never");
    for (int i = 0; H.sets && H.sets[i]; i++) {
        h_arg(a, "--set");
        h_arg(a, H.sets[i]);
    }
    for (int i = 0; extra && extra[i]; i++) {
        h_arg(a, "--set");
        h_arg(a, extra[i]);
    }
}

/* The same with the setup's endpoints. */
static inline void h_common_args(h_args_t *a, const char *sub, int steps, int ckpt_every,
                                 const char *const *extra)
{
    h_common_args_at(a, sub, (const char (*)[600])H.ep, steps, ckpt_every, extra);
}

static inline pid_t h_start_broker(const char *log)
{
    h_args_t a;
    h_common_args(&a, NULL, 1, 0, NULL);
    return h_spawn("crl-broker", log, a.argv);
}

/* An actor with id `id` logging to `log`. */
static inline pid_t h_start_actor(const char *id, const char *log)
{
    h_args_t a;
    char set[96];
    snprintf(set, sizeof(set), "actor.id=%s", id);
    const char *extra[] = {set, NULL};
    h_common_args(&a, NULL, 1, 0, extra);
    return h_spawn("crl-actor", log, a.argv);
}

static inline pid_t h_start_learner(const char *log, int steps, int ckpt_every,
                                    const char *const *extra)
{
    h_args_t a;
    h_common_args(&a, "rl", steps, ckpt_every, extra);
    return h_spawn("crl-learner", log, a.argv);
}

/* A job whose actors all take part from the first step: the learner
 * (with `steps`, `ckpt_every`), the actors ids[0..n) (logging to logs[i],
 * or to their id when logs is NULL), and the broker only once every actor
 * has joined. Returns the learner's pid. */
static inline pid_t h_start_job(const char *learner_log, int steps, int ckpt_every,
                                const char *const *ids, const char *const *logs, int n)
{
    pid_t lp = h_start_learner(learner_log, steps, ckpt_every, NULL);
    for (int i = 0; i < n; i++)
        h_start_actor(ids[i], logs ? logs[i] : ids[i]);
    for (int i = 0; i < n; i++)
        h_wait_joined(learner_log, ids[i]);
    h_start_broker("broker");
    return lp;
}

/* Steps listed in runs/<run>/metrics.jsonl (each line's "step"), in order. */
static inline int h_metrics_steps(int *steps, int max)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/%s/metrics.jsonl", H.dir, H.run_name);
    char *s = h_read_file(p);
    int n = 0;
    for (char *q = s; q && (q = strstr(q, "\"step\":")) != NULL && n < max; q += 7)
        steps[n++] = atoi(q + 7);
    free(s);
    return n;
}

/* The last complete step in metrics.jsonl (0 when none). */
static inline int h_last_step(void)
{
    static int steps[100000];
    int n = h_metrics_steps(steps, 100000);
    return n > 0 ? steps[n - 1] : 0;
}

/* The learner's final accounting line (DropReason names from lio). */
#define H_N_REASONS 9
static const char *const h_reason_names[H_N_REASONS] = {
    "none", "stale", "malformed", "duplicate", "unknown_grant",
    "grant_reassigned", "wrong_prompt", "shutdown", "log_failed"};

typedef struct {
    unsigned long long received, used, dropped, issued, regranted, lost, timed_out, bye;
    unsigned long long by_reason[H_N_REASONS];
    int balanced, found;
    int grants_found; /* fields of "grants issued= re-granted= lost=" parsed */
    char line[1024];  /* the line itself, for messages */
} h_acct_t;

static inline h_acct_t h_accounting(const char *log)
{
    h_acct_t a;
    memset(&a, 0, sizeof(a));
    char *l = h_read_log(log);
    int n = h_scan_last(l, "accounting:", "accounting: groups received=%llu used=%llu dropped=%llu",
                        &a.received, &a.used, &a.dropped);
    a.found = n == 3;
    a.grants_found = h_scan_last(l, "grants issued=",
                                 "grants issued=%llu re-granted=%llu lost=%llu", &a.issued,
                                 &a.regranted, &a.lost);
    h_scan_last(l, "actors timed out=", "actors timed out=%llu said bye=%llu", &a.timed_out,
                &a.bye);
    const char *acc = NULL, *q = l;
    while ((q = strstr(q, "accounting:")) != NULL)
        acc = q++;
    if (acc) {
        const char *eol = strchr(acc, '\n');
        size_t len = eol ? (size_t)(eol - acc) : strlen(acc);
        snprintf(a.line, sizeof(a.line), "%.*s",
                 (int)(len < sizeof(a.line) - 1 ? len : sizeof(a.line) - 1), acc);
        a.balanced = strstr(a.line, "balanced (used + dropped == received)") != NULL &&
                     strstr(a.line, "NOT BALANCED") == NULL;
        for (int k = 1; k < H_N_REASONS; k++) {
            char key[64];
            snprintf(key, sizeof(key), " %s=", h_reason_names[k]);
            const char *p = strstr(a.line, key);
            if (!p) {
                snprintf(key, sizeof(key), "(%s=", h_reason_names[k]);
                p = strstr(a.line, key);
            }
            if (p)
                a.by_reason[k] = strtoull(p + strlen(key), NULL, 10);
        }
    }
    free(l);
    return a;
}

/* h_accounting, failing the test when the learner printed none. */
static inline h_acct_t h_learner_accounting(const char *log)
{
    h_acct_t a = h_accounting(log);
    if (!a.found) {
        char *l = h_read_log(log);
        cr_assert_fail("no accounting line in the learner's log:\n%s", l);
    }
    return a;
}

/* An actor's final counters line: the groups it sent (first sends +
 * re-sends), the version it ended at and (if versions_seen) how many
 * versions it saw. Fails the test without that line. */
static inline void h_actor_final(const char *id, unsigned long long *sent,
                                 unsigned long long *version, unsigned long long *versions_seen)
{
    char *l = h_read_log(id);
    unsigned long long gen = 0, s = 0, rs = 0;
    int n = h_scan_last(l, "final: groups generated=",
                        "final: groups generated=%llu sent=%llu resent=%llu", &gen, &s, &rs);
    cr_assert_eq(n, 3, "no final counters line in actor %s's log:\n%s", id, l);
    *sent = s + rs;
    *version = 0;
    h_scan_last(l, "(now v", "(now v%llu)", version);
    if (versions_seen) {
        *versions_seen = 0;
        h_scan_last(l, "versions-seen=", "versions-seen=%llu", versions_seen);
    }
    free(l);
}

/* Reads a checkpoint's trainer.json: step and the data position (sum over
 * the pools of 1e6 x epoch + position in the epoch). 0, or -1 when missing/unreadable. */
static inline int h_ckpt_position(const char *which, long *step, double *pos)
{
    char p[1400];
    snprintf(p, sizeof(p), "%s/runs/%s/ckpt/%s/trainer.json", H.dir, H.run_name, which);
    char *s = h_read_file(p);
    if (!s)
        return -1;
    cJSON *o = cJSON_Parse(s);
    free(s);
    if (!o)
        return -1;
    const cJSON *st = cJSON_GetObjectItem(o, "step");
    const cJSON *posa = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "data"), "pos");
    const cJSON *epa = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "data"), "epoch");
    int ok = cJSON_IsNumber(st) && cJSON_IsArray(posa) && cJSON_IsArray(epa) &&
             cJSON_GetArraySize(posa) == cJSON_GetArraySize(epa);
    if (ok) {
        *step = (long)st->valuedouble;
        *pos = 0;
        /* (epoch, pos) per pool, as one number that only grows */
        for (int i = 0; i < cJSON_GetArraySize(posa); i++)
            *pos += 1e6 * cJSON_GetArrayItem(epa, i)->valuedouble +
                    cJSON_GetArrayItem(posa, i)->valuedouble;
    }
    cJSON_Delete(o);
    return ok ? 0 : -1;
}

/* Waits up to timeout_s for every process started to have exited
 * (reaped); how many still run. */
static inline int h_wait_all(double timeout_s)
{
    double t0 = h_now();
    int left;
    do {
        left = 0;
        for (int i = 0; i < H.n; i++)
            if (!h_reaped(H.started[i]))
                left++;
        if (left == 0)
            break;
        h_sleep_ms(50);
    } while (h_now() - t0 < timeout_s);
    return left;
}

/* Waits up to wait_s for every started process to exit by itself (actors
 * leave on the learner's final Bye); then sends SIGTERM to the ones still
 * running, as launch/local.sh does at the end of a run. Returns how many
 * needed the SIGTERM and names them in `out`. */
static inline int h_stop_stragglers(double wait_s, char *out, size_t outlen)
{
    h_wait_all(wait_s);
    size_t o = 0;
    if (outlen)
        out[0] = '\0';
    int n = 0;
    for (int i = 0; i < H.n; i++)
        if (H.pids[i] > 0 && !h_reaped(H.pids[i])) {
            if (o < outlen)
                o += (size_t)snprintf(out + o, outlen - o, " %s(pid %d)", H.names[i], (int)H.pids[i]);
            h_signal(H.pids[i], SIGTERM);
            n++;
        }
    return n;
}

/* Every process started has exited (reaped), waiting up to timeout_s for
 * the stragglers; names those still running (and kills them) in `out`.
 * Returns how many were left running. The check also uses kill(pid, 0):
 * a reaped child is gone (ESRCH) unless its pid was reused meanwhile. */
static inline int h_leftovers(double timeout_s, char *out, size_t outlen)
{
    int left = h_wait_all(timeout_s);
    size_t o = 0;
    if (outlen)
        out[0] = '\0';
    for (int i = 0; i < H.n; i++)
        if (H.pids[i] > 0 && kill(H.pids[i], 0) == 0) {
            if (o < outlen)
                o += (size_t)snprintf(out + o, outlen - o, " %s(pid %d)", H.names[i], (int)H.pids[i]);
            kill(H.pids[i], SIGKILL);
            waitpid(H.pids[i], NULL, 0);
            H.pids[i] = 0;
        }
    return left;
}

#endif
