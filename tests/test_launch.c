/* Tests of the multi-machine launchers (launch/ssh.sh, launch/slurm.sbatch)
 * without real remote hosts: CRL_SSH points at a fake ssh that runs the
 * remote command locally, and CRL_BIN_DIR at stub crl-broker / crl-actor /
 * crl-learner scripts that record which "host" ran them with which
 * arguments, then wait for SIGTERM. The stub crl-learner hands `config`
 * to the real one (from the build's CRL_BIN_DIR), so ssh.sh's config checks
 * are the real ones. Needs CRL_BIN_DIR and the repository root as the
 * working directory (make test provides both); skipped otherwise. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_WAIT_S 20 /* all stubs recorded; shared machine, many bash starts */
#define STOP_WAIT_S 25  /* ssh.sh gives processes 15 s before SIGKILL */

typedef struct {
    char tmp[512];
    char real_bin[512];
    char script[1024];
    char cfg[600], hosts[600], out[600];
} env_t;

/* Appends to a NUL-terminated buffer, truncating quietly. */
static void addf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void addf(char *buf, size_t len, const char *fmt, ...)
{
    size_t used = strlen(buf);
    if (used + 1 >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
    cr_assert_eq(chmod(path, mode), 0);
}

static char *read_text(const char *path)
{
    static char buf[1 << 16];
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return buf;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int count_lines(const char *path)
{
    int n = 0;
    for (const char *p = read_text(path); *p; p++)
        n += *p == '\n';
    return n;
}

/* The line of calls.txt that starts with prefix (e.g. "node-b crl-broker"),
 * copied; "" if none. */
static const char *find_call(const char *calls, const char *prefix, int nth)
{
    static char line[4096];
    const char *p = calls;
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (strncmp(p, prefix, strlen(prefix)) == 0 && nth-- == 0) {
            snprintf(line, sizeof line, "%.*s", (int)n, p);
            return line;
        }
        p += n + (e ? 1 : 0);
    }
    return "";
}

static void setup(env_t *e)
{
    const char *bin = getenv("CRL_BIN_DIR");
    if (!bin || !*bin)
        cr_skip_test("CRL_BIN_DIR is not set (make test sets it to the build's bin folder)");
    snprintf(e->real_bin, sizeof e->real_bin, "%s", bin);
    char learner[600];
    snprintf(learner, sizeof learner, "%s/crl-learner", bin);
    if (access(learner, X_OK) != 0)
        cr_skip_test("%s is missing", learner);
    char cwd[512];
    cr_assert_not_null(getcwd(cwd, sizeof cwd));
    snprintf(e->script, sizeof e->script, "%s/launch/ssh.sh", cwd);
    if (access(e->script, R_OK) != 0)
        cr_skip_test("run from the repository root (launch/ssh.sh not found in %s)", cwd);

    const char *base = getenv("CRL_TEST_TMP");
    snprintf(e->tmp, sizeof e->tmp, "%s/launch.XXXXXX", base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(e->tmp));
    char path[700], text[4096];
    snprintf(path, sizeof path, "%s/bin", e->tmp);
    cr_assert_eq(mkdir(path, 0755), 0);

    /* Stubs: record "HOST NAME ARGS", their pid, then wait for SIGTERM.
     * The learner stub hands `crl-learner config` to the real binary. */
    const char *names[] = {"crl-broker", "crl-actor", "crl-learner"};
    for (int i = 0; i < 3; i++) {
        char head[700] = "";
        if (i == 2)
            snprintf(head, sizeof head, "if [ \"$1\" = config ]; then exec '%s/crl-learner' \"$@\"; fi\n",
                     e->real_bin);
        snprintf(path, sizeof path, "%s/bin/%s", e->tmp, names[i]);
        snprintf(text, sizeof text,
                 "#!/bin/bash\n"
                 "%s"
                 "echo \"$FAKE_HOST %s $*\" >> %s/calls.txt\n"
                 "echo $$ >> %s/pids.txt\n"
                 "trap 'echo \"%s $$\" >> %s/stopped.txt; exit 0' TERM\n"
                 "while :; do sleep 0.1; done\n",
                 head, names[i], e->tmp, e->tmp, names[i], e->tmp);
        write_file(path, text, 0755);
    }
    /* Fake ssh: HOST COMMAND... runs COMMAND here, as sshd would via a shell. */
    snprintf(path, sizeof path, "%s/fakessh", e->tmp);
    write_file(path, "#!/bin/bash\nexport FAKE_HOST=\"$1\"\nshift\nexec bash -c \"$*\"\n", 0755);

    snprintf(e->cfg, sizeof e->cfg, "%s/cfg.json", e->tmp);
    snprintf(text, sizeof text, "{\"run\": {\"name\": \"sshtest\", \"dir\": \"%s/runs\"}}\n", e->tmp);
    write_file(e->cfg, text, 0644);
    snprintf(e->hosts, sizeof e->hosts, "%s/hosts", e->tmp);
    write_file(e->hosts,
               "# test cluster\n"
               "node-a role=learner\n"
               "node-b actors=2\n"
               "me@node-c actors=1 key=keys/node-c.key   # own client key\n",
               0644);
    snprintf(e->out, sizeof e->out, "%s/out.txt", e->tmp);
}

/* Starts ssh.sh with args (NULL-terminated) in its own process group,
 * SIGINT at its default disposition (as from a terminal). */
static pid_t launch(const env_t *e, const char *const *args)
{
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        char ssh[700], bin[700];
        snprintf(ssh, sizeof ssh, "%s/fakessh", e->tmp);
        snprintf(bin, sizeof bin, "%s/bin", e->tmp);
        setenv("CRL_SSH", ssh, 1);
        setenv("CRL_BIN_DIR", bin, 1);
        int fd = open(e->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        const char *argv[32];
        int n = 0;
        argv[n++] = "bash";
        argv[n++] = e->script;
        for (int i = 0; args[i] && n < 31; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv("/bin/bash", (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Waits up to seconds for pid; its wait status, or -1 on timeout. */
static int wait_for(pid_t pid, int seconds)
{
    for (int i = 0; i < seconds * 20; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return -1;
}

static int pid_alive(int pid)
{
    if (kill(pid, 0) != 0)
        return 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    const char *s = read_text(path);
    const char *rp = strrchr(s, ')');
    return !(rp && rp[1] == ' ' && rp[2] == 'Z');
}

/* Kills every stub still alive (by its recorded pid) and the script's group:
 * a failing test must not leave processes behind. */
static void cleanup(const env_t *e, pid_t script)
{
    if (script > 0) {
        kill(-script, SIGKILL);
        waitpid(script, NULL, 0);
    }
    char path[700];
    snprintf(path, sizeof path, "%s/pids.txt", e->tmp);
    char *pids = strdup(read_text(path));
    for (char *t = strtok(pids, "\n"); t; t = strtok(NULL, "\n"))
        if (atoi(t) > 1)
            kill(atoi(t), SIGKILL);
    free(pids);
}

Test(launch, ssh_starts_each_role_with_its_endpoints_and_ctrl_c_stops_all, .timeout = 90)
{
    env_t e;
    setup(&e);
    const char *args[] = {"--insecure", "--relay", e.cfg, e.hosts, NULL};
    pid_t pid = launch(&e, args);
    char calls_path[700];
    snprintf(calls_path, sizeof calls_path, "%s/calls.txt", e.tmp);
    /* broker + learner on node-a; relay + 2 actors on node-b; relay + 1 actor on node-c */
    const int expected = 7;
    int n = 0;
    for (int i = 0; i < START_WAIT_S * 10 && (n = count_lines(calls_path)) < expected; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            pid = -1;
            break;
        }
        usleep(100000);
    }
    if (n != expected) {
        cleanup(&e, pid);
        cr_assert_fail("expected %d started processes, got %d; ssh.sh said:\n%s\ncalls:\n%s", expected, n,
                       read_text(e.out), read_text(calls_path));
    }
    char calls[1 << 15];
    snprintf(calls, sizeof calls, "%s", read_text(calls_path));

    struct {
        const char *prefix;
        int nth;
        const char *want[4];
        const char *not_want;
    } checks[] = {
        {"node-a crl-broker", 0,
         {"network.broker_announce=tcp://*:5557", "network.broker_fetch=tcp://*:5558", "network.insecure=true"},
         "broker.upstream"},
        {"node-a crl-learner rl", 0, {"network.learner_work=tcp://*:5555", "--config"}, NULL},
        {"node-b crl-broker", 0,
         {"broker.upstream=tcp://node-a:5558", "broker.upstream_announce=tcp://node-a:5557"},
         "network.broker_announce"},
        {"node-b crl-actor", 0, {"network.learner_work=tcp://node-a:5555", "actor.id=sshtest-node-b-"},
         "network.broker_fetch"},
        {"node-b crl-actor", 1, {"network.learner_work=tcp://node-a:5555"}, NULL},
        {"me@node-c crl-broker", 0, {"broker.upstream=tcp://node-a:5558", "network.curve_client_key=keys/node-c.key"},
         NULL},
        {"me@node-c crl-actor", 0,
         {"network.learner_work=tcp://node-a:5555", "network.curve_client_key=keys/node-c.key",
          "actor.id=sshtest-node-c-0"},
         NULL},
    };
    int bad = 0;
    char why[4096] = "";
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++) {
        const char *line = find_call(calls, checks[i].prefix, checks[i].nth);
        if (!*line) {
            bad = 1;
            addf(why, sizeof why, "no call #%d \"%s\"\n", checks[i].nth,
                     checks[i].prefix);
            continue;
        }
        for (int k = 0; k < 4 && checks[i].want[k]; k++)
            if (!strstr(line, checks[i].want[k])) {
                bad = 1;
                addf(why, sizeof why, "\"%s\" lacks %s\n", line, checks[i].want[k]);
            }
        if (checks[i].not_want && strstr(line, checks[i].not_want)) {
            bad = 1;
            addf(why, sizeof why, "\"%s\" should not have %s\n", line,
                     checks[i].not_want);
        }
    }
    const char *logs[] = {"node-a-broker-0", "node-a-learner-0", "node-b-relay-0", "node-b-actor-1",
                          "node-c-actor-0"};
    for (size_t i = 0; i < sizeof logs / sizeof *logs; i++) {
        char p[800];
        snprintf(p, sizeof p, "%s/runs/sshtest/logs/%s.log", e.tmp, logs[i]);
        if (access(p, F_OK) != 0) {
            bad = 1;
            addf(why, sizeof why, "missing log %s\n", p);
        }
    }
    if (bad) {
        cleanup(&e, pid);
        cr_assert_fail("%s\ncalls:\n%s", why, calls);
    }

    /* Ctrl-C: every stub gets SIGTERM, the script exits 130. */
    cr_assert_eq(kill(pid, SIGINT), 0);
    int st = wait_for(pid, STOP_WAIT_S);
    if (st == -1) {
        cleanup(&e, pid);
        cr_assert_fail("ssh.sh did not exit within %d s of SIGINT:\n%s", STOP_WAIT_S, read_text(e.out));
    }
    char pids_path[700];
    snprintf(pids_path, sizeof pids_path, "%s/pids.txt", e.tmp);
    char *pids = strdup(read_text(pids_path));
    int alive = 0;
    for (char *t = strtok(pids, "\n"); t; t = strtok(NULL, "\n"))
        alive += pid_alive(atoi(t));
    free(pids);
    char stopped_path[700];
    snprintf(stopped_path, sizeof stopped_path, "%s/stopped.txt", e.tmp);
    int stopped = count_lines(stopped_path);
    if (alive)
        cleanup(&e, -1);
    cr_assert_eq(alive, 0, "%d stubs still running after Ctrl-C", alive);
    cr_assert_eq(stopped, expected, "expected %d stubs stopped by SIGTERM, got %d", expected, stopped);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 130, "ssh.sh exit: expected status 130, got 0x%x\n%s", st,
              read_text(e.out));
}

Test(launch, ssh_refuses_network_endpoints_without_keys_or_insecure)
{
    env_t e;
    setup(&e);
    const char *args[] = {e.cfg, e.hosts, NULL};
    pid_t pid = launch(&e, args);
    int st = wait_for(pid, 20);
    if (st == -1)
        cleanup(&e, pid);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2, "expected exit 2, got 0x%x", st);
    const char *out = read_text(e.out);
    cr_assert(strstr(out, "crl-keygen") && strstr(out, "--insecure"), "unhelpful message:\n%s", out);
    char calls[700];
    snprintf(calls, sizeof calls, "%s/calls.txt", e.tmp);
    cr_assert_eq(access(calls, F_OK), -1, "processes were started:\n%s", read_text(calls));
}

Test(launch, ssh_with_keys_and_dry_run_and_bad_hosts)
{
    env_t e;
    setup(&e);
    char cfg[700], text[1024];
    /* The key folder only needs to be named: nothing here opens it. */
    snprintf(cfg, sizeof cfg, "%s/keys.json", e.tmp);
    snprintf(text, sizeof text,
             "{\"run\": {\"name\": \"sshtest\", \"dir\": \"%s/runs\"}, \"network\": {\"curve_keys_dir\": \"keys\"}}\n",
             e.tmp);
    write_file(cfg, text, 0644);
    const char *args[] = {"--dry-run", cfg, e.hosts, NULL};
    pid_t pid = launch(&e, args);
    int st = wait_for(pid, 20);
    if (st == -1)
        cleanup(&e, pid);
    const char *out = read_text(e.out);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "dry run: exit 0x%x\n%s", st, out);
    cr_assert_null(strstr(out, "network.insecure=true"), "keys given, yet insecure:\n%s", out);
    cr_assert_not_null(strstr(out, "me@node-c"), "%s", out);
    cr_assert_not_null(strstr(out, "network.broker_fetch=tcp://node-a:5558"), "no --relay: actors fetch from "
                                                                              "the learner host\n%s", out);
    char calls[700];
    snprintf(calls, sizeof calls, "%s/calls.txt", e.tmp);
    cr_assert_eq(access(calls, F_OK), -1, "a dry run started processes");

    write_file(e.hosts, "node-a role=learner\nnode-b actors=two\n", 0644);
    const char *args2[] = {"--insecure", e.cfg, e.hosts, NULL};
    pid = launch(&e, args2);
    st = wait_for(pid, 20);
    if (st == -1)
        cleanup(&e, pid);
    out = read_text(e.out);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 2, "bad hosts file: exit 0x%x", st);
    cr_assert_not_null(strstr(out, "hosts:2"), "error should name the line:\n%s", out);
}

Test(launch, slurm_script_parses)
{
    if (access("launch/slurm.sbatch", R_OK) != 0)
        cr_skip_test("run from the repository root");
    int st = system("bash -n launch/slurm.sbatch && bash -n launch/ssh.sh");
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "bash -n failed");
}
