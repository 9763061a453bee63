/* Integration tests of the distributed system: crl-broker, crl-learner rl
 * and crl-actor as separate processes on 127.0.0.1, with a tiny model
 * (dim 32, 2 layers, 16 px images in 8 px patches, vocab 300) and a tiny
 * built-in world made in the test's temporary folder. The binaries come
 * from $CRL_BIN_DIR (`make test` sets it to build/bin); without it the
 * tests are skipped. Every process a test starts is killed when it ends
 * (and dies with the test process: PR_SET_PDEATHSIG). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

/* ------------------------------------------------------------ harness */

#define MAX_PROCS 16

typedef struct {
    char dir[512];
    char bin[512];
    char ep[4][64]; /* work, publish, announce, fetch */
    pid_t pids[MAX_PROCS];
    char names[MAX_PROCS][32];
    int n;
} itest_t;

static itest_t T;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A TCP port on 127.0.0.1 that the OS reports free right now. */
static int free_port(void)
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

static void kill_all(void)
{
    for (int i = 0; i < T.n; i++) {
        if (T.pids[i] <= 0)
            continue;
        kill(T.pids[i], SIGKILL);
        waitpid(T.pids[i], NULL, 0);
        T.pids[i] = 0;
    }
}

static void fini(void) { kill_all(); }

/* Starts BIN_DIR/prog with args (NULL-terminated), stdout+stderr into
 * DIR/<log>.log. Returns the pid. */
static pid_t spawn(const char *prog, const char *log, const char *const *args)
{
    cr_assert_lt(T.n, MAX_PROCS);
    char path[700], logp[700];
    snprintf(path, sizeof(path), "%s/%s", T.bin, prog);
    snprintf(logp, sizeof(logp), "%s/%s.log", T.dir, log);
    const char *argv[64];
    int n = 0;
    argv[n++] = path;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(path, (char *const *)argv);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    T.pids[T.n] = pid;
    snprintf(T.names[T.n], sizeof(T.names[0]), "%s", log);
    T.n++;
    return pid;
}

/* Waits up to timeout_s for pid to exit; returns its exit status (or
 * 128 + signal), -1 on timeout. */
static int wait_exit(pid_t pid, double timeout_s)
{
    double t0 = now_s();
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            for (int i = 0; i < T.n; i++)
                if (T.pids[i] == pid)
                    T.pids[i] = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        if (now_s() - t0 > timeout_s)
            return -1;
        sleep_ms(20);
    }
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    size_t got = fread(b, 1, (size_t)n, f);
    b[got] = '\0';
    fclose(f);
    return b;
}

static char *read_log(const char *name)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/%s.log", T.dir, name);
    char *s = read_file(p);
    return s ? s : calloc(1, 1);
}

/* The last line of a log holding `key`, parsed with sscanf(fmt) from the
 * key on; returns the number of fields parsed. */
static int scan_last(const char *text, const char *key, const char *fmt, ...)
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

static void run_cmd_ok(const char *prog, const char *log, const char *const *args, double timeout)
{
    pid_t pid = spawn(prog, log, args);
    int rc = wait_exit(pid, timeout);
    char *l = read_log(log);
    cr_assert_eq(rc, 0, "%s exited with %d; its log:\n%s", prog, rc, l);
    free(l);
}

/* Temp folder, endpoints, the tiny world and a random base model with a
 * tokenizer trained on the data. Skips without CRL_BIN_DIR. */
static void setup(const char *name)
{
    memset(&T, 0, sizeof(T));
    const char *bin = getenv("CRL_BIN_DIR");
    if (!bin || !*bin)
        cr_skip_test("CRL_BIN_DIR is not set (run through `make test`, or set it to build/bin)");
    snprintf(T.bin, sizeof(T.bin), "%s", bin);
    char p[700];
    static const char *const progs[] = {"crl-learner", "crl-actor", "crl-broker", "crl-data"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof(p), "%s/%s", bin, progs[i]);
        if (access(p, X_OK) != 0)
            cr_skip_test("%s is not built", p);
    }
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(T.dir, sizeof(T.dir), "%s/it-%s-XXXXXX", base && *base ? base : "/tmp", name);
    cr_assert_not_null(mkdtemp(T.dir), "mkdtemp: %s", strerror(errno));
    for (int i = 0; i < 4; i++)
        snprintf(T.ep[i], sizeof(T.ep[i]), "tcp://127.0.0.1:%d", free_port());

    char data[600];
    snprintf(data, sizeof(data), "%s/data", T.dir);
    const char *dargs[] = {"--out", data, "--train", "30", "--val", "4", "--test", "4", "--grid",
                           "2", "--image-size", "16", "--quiet", NULL};
    run_cmd_ok("crl-data", "data", dargs, 60);

    char c[700], pol[700], err[1024];
    snprintf(c, sizeof(c), "%s/train.critic.jsonl", data);
    snprintf(pol, sizeof(pol), "%s/train.policy.jsonl", data);
    const char *paths[2] = {c, pol};
    tokenizer_t *tok = tok_train_files(paths, 2, 300, err, sizeof(err));
    cr_assert_not_null(tok, "tokenizer: %s", err);
    model_config_t mc = {.vocab_size = tok_vocab_size(tok), .dim = 32, .n_layers = 2, .n_heads = 2,
                         .n_kv_heads = 2, .hidden_dim = 64, .max_seq_len = 512, .image_size = 16,
                         .patch_size = 8, .tie_embeddings = 0, .rope_theta = 10000,
                         .norm_eps = 1e-5f};
    model_t *m = model_new(&mc, 0);
    cr_assert_not_null(m);
    rng_t r;
    rng_seed(&r, 7);
    model_init_random(m, &r);
    snprintf(p, sizeof(p), "%s/base", T.dir);
    cr_assert_eq(ckpt_save_model(m, p, err, sizeof(err)), 0, "%s", err);
    snprintf(p, sizeof(p), "%s/base/tokenizer.json", T.dir);
    cr_assert_eq(tok_save(tok, p, err, sizeof(err)), 0, "%s", err);
    model_destroy(&m);
    tok_destroy(&tok);
}

/* Arguments shared by every process of a test, plus extra ones. */
typedef struct {
    char buf[40][700];
    const char *argv[96];
    int n;
} args_t;

static void args_add(args_t *a, const char *s) { a->argv[a->n++] = s; }

static void args_set(args_t *a, int *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->buf[*k], sizeof(a->buf[0]), fmt, ap);
    va_end(ap);
    args_add(a, "--set");
    args_add(a, a->buf[*k]);
    (*k)++;
}

/* The run config of these tests. steps, checkpoint_every; extra "k=v"
 * strings (NULL-terminated) are appended. */
static void common_args(args_t *a, const char *sub, int steps, int ckpt_every,
                        const char *const *extra)
{
    memset(a, 0, sizeof(*a));
    int k = 0;
    if (sub)
        args_add(a, sub);
    args_set(a, &k, "network.learner_work=%s", T.ep[0]);
    args_set(a, &k, "network.broker_publish=%s", T.ep[1]);
    args_set(a, &k, "network.broker_announce=%s", T.ep[2]);
    args_set(a, &k, "network.broker_fetch=%s", T.ep[3]);
    args_set(a, &k, "run.dir=%s/runs", T.dir);
    args_set(a, &k, "run.name=it");
    args_set(a, &k, "data.dir=%s/data", T.dir);
    args_set(a, &k, "rl.init=%s/base", T.dir);
    args_set(a, &k, "rl.group_size=4");
    args_set(a, &k, "rl.groups_per_step=2");
    args_set(a, &k, "rl.max_new_tokens=24");
    args_set(a, &k, "rl.steps=%d", steps);
    args_set(a, &k, "rl.checkpoint_every=%d", ckpt_every);
    args_set(a, &k, "learner.heartbeat_ms=100");
    args_set(a, &k, "learner.heartbeat_timeout_ms=1000");
    args_set(a, &k, "learner.traj_fsync=never");
    for (int i = 0; extra && extra[i]; i++) {
        args_add(a, "--set");
        args_add(a, extra[i]);
    }
    a->argv[a->n] = NULL;
}

static pid_t start_broker(void)
{
    args_t a;
    common_args(&a, NULL, 1, 0, NULL);
    return spawn("crl-broker", "broker", a.argv);
}

static pid_t start_actor(const char *id)
{
    args_t a;
    char set[64];
    snprintf(set, sizeof(set), "actor.id=%s", id);
    const char *extra[] = {set, NULL};
    common_args(&a, NULL, 1, 0, extra);
    return spawn("crl-actor", id, a.argv);
}

/* Waits until the log `name` holds `needle`. */
static void wait_log(const char *name, const char *needle, double timeout_s)
{
    double t0 = now_s();
    for (;;) {
        char *l = read_log(name);
        int ok = strstr(l, needle) != NULL;
        free(l);
        if (ok)
            return;
        cr_assert_lt(now_s() - t0, timeout_s, "\"%s\" did not appear in %s.log within %g s",
                     needle, name, timeout_s);
        sleep_ms(10);
    }
}

/* The learner grants nothing before the broker holds version 1: starting
 * the broker only once every actor said Hello makes all of them take part
 * from the first step (a tiny run is over in a fraction of a second). */
static void wait_joined(const char *learner_log, const char *const *ids, int n)
{
    char needle[64];
    for (int i = 0; i < n; i++) {
        snprintf(needle, sizeof(needle), "actor %s (#", ids[i]);
        wait_log(learner_log, needle, 30);
    }
}

static pid_t start_learner(const char *log, int steps, int ckpt_every, const char *const *extra)
{
    args_t a;
    common_args(&a, "rl", steps, ckpt_every, extra);
    return spawn("crl-learner", log, a.argv);
}

/* Steps listed in metrics.jsonl (each line's "step"), in file order. */
static int metrics_steps(int *steps, int max)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/metrics.jsonl", T.dir);
    char *s = read_file(p);
    int n = 0;
    for (char *q = s; q && (q = strstr(q, "\"step\":")) != NULL && n < max; q += 7)
        steps[n++] = atoi(q + 7);
    free(s);
    return n;
}

typedef struct {
    unsigned long long received, used, dropped, issued, regranted, lost;
    int balanced;
} acct_t;

static acct_t learner_accounting(const char *log)
{
    acct_t a;
    memset(&a, 0, sizeof(a));
    char *l = read_log(log);
    int n = scan_last(l, "accounting:",
                      "accounting: groups received=%llu used=%llu dropped=%llu", &a.received,
                      &a.used, &a.dropped);
    cr_assert_eq(n, 3, "no accounting line in the learner's log:\n%s", l);
    scan_last(l, "grants issued=", "grants issued=%llu re-granted=%llu lost=%llu", &a.issued,
              &a.regranted, &a.lost);
    const char *acc = strstr(l, "accounting:");
    a.balanced = acc && strstr(acc, "balanced (used + dropped == received)") != NULL;
    free(l);
    return a;
}

/* groups the actor sent (first sends + re-sends) and its final version. */
static void actor_final(const char *id, unsigned long long *sent, unsigned long long *version)
{
    char *l = read_log(id);
    unsigned long long gen = 0, s = 0, rs = 0;
    int n = scan_last(l, "final: groups generated=", "final: groups generated=%llu sent=%llu resent=%llu",
                      &gen, &s, &rs);
    cr_assert_eq(n, 3, "no final counters line in actor %s's log:\n%s", id, l);
    *sent = s + rs;
    *version = 0;
    scan_last(l, "(now v", "(now v%llu)", version);
    free(l);
}

/* ------------------------------------------------------------ tests */

/* a) broker + learner + 2 actors for 4 steps: exits 0, every group an
 * actor completed is accounted for, the last version reaches every actor. */
Test(integration, two_actors_four_steps_accounted, .fini = fini, .timeout = 120)
{
    setup("a");
    static const char *const ids[] = {"a1", "a2"};
    pid_t lp = start_learner("learner", 4, 0, NULL);
    start_actor("a1");
    start_actor("a2");
    wait_joined("learner", ids, 2);
    start_broker();
    int rc = wait_exit(lp, 60);
    char *l = read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    free(l);
    acct_t a = learner_accounting("learner");
    cr_assert(a.balanced, "accounting does not balance");
    cr_assert_eq(a.used + a.dropped, a.received, "used %llu + dropped %llu != received %llu",
                 a.used, a.dropped, a.received);
    cr_assert_eq(a.used, 8, "4 steps x 2 groups used, got %llu", a.used);
    unsigned long long total_sent = 0;
    for (int i = 0; i < 2; i++) {
        /* the actors stop on the learner's Bye(finished) and print their
         * final counters */
        wait_log(ids[i], "final: groups generated=", 20);
        for (int k = 0; k < T.n; k++)
            if (!strcmp(T.names[k], ids[i]) && T.pids[k] > 0) {
                int arc = wait_exit(T.pids[k], 10);
                if (arc == -1) /* the actor's business, not the learner's: say so */
                    cr_log_warn("actor %s printed its final counters but had not exited 10 s later",
                                ids[i]);
                else
                    cr_assert_eq(arc, 0, "actor %s exited with %d", ids[i], arc);
            }
        unsigned long long sent, ver;
        actor_final(ids[i], &sent, &ver);
        total_sent += sent;
        cr_assert_eq(ver, 5, "actor %s ended at version %llu, the last is 5", ids[i], ver);
    }
    cr_assert_eq(total_sent, a.received, "actors sent %llu groups, the learner received %llu",
                 total_sent, a.received);
    int steps[64];
    int n = metrics_steps(steps, 64);
    cr_assert_eq(n, 4, "metrics.jsonl has %d lines, expected 4", n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(steps[i], i + 1);
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/latest/trainer.json", T.dir);
    cr_assert_eq(access(p, R_OK), 0, "no final checkpoint %s", p);
    snprintf(p, sizeof(p), "%s/runs/it/ref/model.safetensors", T.dir);
    cr_assert_eq(access(p, R_OK), 0, "no reference model %s", p);
}

/* b) an actor killed (SIGKILL) mid-run: its grants are re-granted after
 * the heartbeat timeout and the run still finishes. */
Test(integration, killed_actor_grants_are_regranted, .fini = fini, .timeout = 120)
{
    setup("b");
    start_broker();
    pid_t a1 = start_actor("a1");
    pid_t lp = start_learner("learner", 8, 0, NULL);
    /* a1 alone: once a step is done it holds grants (the learner keeps it busy) */
    int steps[64];
    double t0 = now_s();
    while (metrics_steps(steps, 64) < 1) {
        cr_assert_lt(now_s() - t0, 40, "no step within 40 s");
        cr_assert_eq(wait_exit(lp, 0), -1, "learner exited early");
        sleep_ms(20);
    }
    kill(a1, SIGKILL);
    cr_assert_eq(wait_exit(a1, 5), 128 + SIGKILL);
    /* nobody works until the learner gives a1 up; then a2 must get a1's
     * prompts first */
    wait_log("learner", "actor a1 silent for more than", 20);
    start_actor("a2");
    int rc = wait_exit(lp, 60);
    char *l = read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    free(l);
    acct_t a = learner_accounting("learner");
    cr_assert(a.balanced, "accounting does not balance");
    cr_assert_geq(a.lost, 1, "a1 held no grant when killed (lost %llu)", a.lost);
    cr_assert_geq(a.regranted, 1, "no grant was re-granted (lost %llu)", a.lost);
    cr_assert_eq(a.used, 16, "8 steps x 2 groups, got %llu", a.used);
    int n = metrics_steps(steps, 64);
    cr_assert_eq(n, 8);
}

/* Reads (step, data position sum) of a checkpoint's trainer.json. */
static void ckpt_position(const char *which, long *step, double *pos)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/%s/trainer.json", T.dir, which);
    char *s = read_file(p);
    cr_assert_not_null(s, "cannot read %s", p);
    cJSON *o = cJSON_Parse(s);
    free(s);
    cr_assert_not_null(o, "%s is not JSON", p);
    *step = (long)cJSON_GetObjectItem(o, "step")->valuedouble;
    const cJSON *posa = cJSON_GetObjectItem(cJSON_GetObjectItem(o, "data"), "pos");
    *pos = 0;
    for (int i = 0; i < cJSON_GetArraySize(posa); i++)
        *pos += cJSON_GetArrayItem(posa, i)->valuedouble;
    cJSON_Delete(o);
}

/* c) a learner stopped (SIGTERM) after its first checkpoint and restarted
 * continues at the right step and data position. */
Test(integration, learner_restart_continues, .fini = fini, .timeout = 120)
{
    setup("c");
    static const char *const ids[] = {"a1", "a2"};
    pid_t lp = start_learner("learner1", 10, 2, NULL);
    start_actor("a1");
    start_actor("a2");
    wait_joined("learner1", ids, 2);
    start_broker();
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/step-2/trainer.json", T.dir);
    double t0 = now_s();
    while (access(p, R_OK) != 0) {
        cr_assert_lt(now_s() - t0, 40, "no checkpoint within 40 s");
        cr_assert_eq(wait_exit(lp, 0), -1, "learner exited before its first checkpoint");
        sleep_ms(10);
    }
    kill(lp, SIGTERM);
    int rc = wait_exit(lp, 30);
    char *l = read_log("learner1");
    cr_assert_eq(rc, 0, "SIGTERM: learner exited with %d; log:\n%s", rc, l);
    free(l);
    long step1;
    double pos1;
    ckpt_position("latest", &step1, &pos1);
    cr_assert_geq(step1, 2, "stopped learner's checkpoint is at step %ld", step1);
    cr_assert_lt(step1, 10, "the learner finished before SIGTERM arrived (step %ld)", step1);
    cr_assert_gt(pos1, 0, "data position not saved");
    int steps[64];
    int n1 = metrics_steps(steps, 64);
    cr_assert_geq(n1, step1, "metrics lines %d < checkpoint step %ld", n1, step1);

    lp = start_learner("learner2", 10, 2, NULL);
    rc = wait_exit(lp, 60);
    l = read_log("learner2");
    cr_assert_eq(rc, 0, "restarted learner exited with %d; log:\n%s", rc, l);
    char want[128];
    snprintf(want, sizeof(want), "at step %ld (version %ld", step1, step1 + 1);
    cr_assert(strstr(l, want), "restarted learner did not resume at step %ld:\n%s", step1, l);
    free(l);
    long step2;
    double pos2;
    ckpt_position("latest", &step2, &pos2);
    cr_assert_eq(step2, 10);
    cr_assert_gt(pos2, pos1, "the data position did not continue (%g after %g)", pos2, pos1);
    int n = metrics_steps(steps, 64);
    cr_assert_eq(n, 10, "metrics.jsonl has %d lines, expected 10 (no step repeated or skipped)", n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(steps[i], i + 1, "metrics line %d is step %d", i, steps[i]);
    acct_t a = learner_accounting("learner2");
    cr_assert(a.balanced, "accounting over both processes does not balance");
    cr_assert_eq(a.used, 20);
}

/* d) on-policy check: for groups generated at the learner's current
 * version, the learner's recomputed log-probs equal the actors' behaviour
 * log-probs (max |logp_prox - logp_behav| <= 1e-5). */
Test(integration, onpolicy_logprobs_match_actors, .fini = fini, .timeout = 120)
{
    setup("d");
    start_broker();
    start_actor("a1");
    /* every group enters the loss (random model: rewards are mostly equal) */
    const char *extra[] = {"rl.skip_zero_variance=false", "rl.max_staleness=0", NULL};
    pid_t lp = start_learner("learner", 3, 0, extra);
    int rc = wait_exit(lp, 60);
    char *l = read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    free(l);
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/metrics.jsonl", T.dir);
    char *s = read_file(p);
    cr_assert_not_null(s);
    int lines = 0, measured = 0;
    double worst = 0;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        cr_assert_not_null(o, "bad metrics line: %s", line);
        lines++;
        const cJSON *d = cJSON_GetObjectItem(o, "max_logp_diff_onpolicy");
        cr_assert_not_null(d, "metrics line without max_logp_diff_onpolicy: %s", line);
        if (cJSON_IsNumber(d)) {
            measured++;
            if (d->valuedouble > worst)
                worst = d->valuedouble;
        }
        cJSON_Delete(o);
    }
    free(s);
    cr_assert_eq(lines, 3);
    cr_assert_gt(measured, 0, "no step had a group at the learner's version (max_staleness 0)");
    cr_log_info("max |logp_prox - logp_behav| at equal version: %.3g over %d steps", worst, measured);
    fprintf(stderr, "integration/onpolicy: max |logp_prox - logp_behav| at equal version = %.3g\n",
            worst);
    cr_assert_leq(worst, 1e-5, "max |logp_prox - logp_behav| = %g > 1e-5", worst);
}
