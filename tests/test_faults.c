/* Disk faults (issue 7): checkpoints are written atomically (a writer
 * killed mid-write leaves the previous checkpoint loadable and `latest`
 * pointing at a complete one), an unwritable run folder gives a clear
 * error naming the path, and a full disk (a 512 KiB tmpfs, when this
 * process may mount one) gives a clear ENOSPC error and a finished
 * process, never a corrupt checkpoint. Multi-process cases use the
 * harness of tests/harness.h (tiny model, ipc:// endpoints). */
#include "harness.h"

#include <inttypes.h>
#include <sched.h>
#include <sys/mount.h>

#include "optim.h"

static char g_mnt[700]; /* mounted tmpfs to undo in fini */

static void fini(void)
{
    h_kill_all();
    if (g_mnt[0]) {
        umount2(g_mnt, MNT_DETACH);
        g_mnt[0] = '\0';
    }
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* Name of an entry of dir starting with prefix (first found), or "". */
static int dir_has_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0;
    size_t n = strlen(prefix);
    while (!found && (e = readdir(d)))
        found = strncmp(e->d_name, prefix, n) == 0;
    closedir(d);
    return found;
}

/* ------------------------------------------------------------ atomic file */

/* A child writing a large file with ckpt_write_file_atomic is killed while
 * it writes: the old file is intact (no mix of old and new bytes). */
Test(faults, atomic_write_killed_midway_keeps_old_file)
{
    const char *base = getenv("CRL_TEST_TMP");
    char dir[600], path[700], tmp[720];
    if (base && *base)
        (void)ckpt_mkdirs(base, path, sizeof(path));
    snprintf(dir, sizeof(dir), "%s/atomic-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/trainer.json", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    static const char old[] = "{\"step\": 1, \"old\": true}\n";
    char err[512];
    cr_assert_eq(ckpt_write_file_atomic(path, old, sizeof(old) - 1, err, sizeof(err)), 0, "%s", err);
    int killed_mid = 0;
    for (int attempt = 0; attempt < 5; attempt++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            size_t n = 256u << 20; /* slow enough to be caught mid-write */
            char *big = malloc(n);
            if (!big)
                _exit(2);
            memset(big, 'N', n);
            char e[512];
            _exit(ckpt_write_file_atomic(path, big, n, e, sizeof(e)) == 0 ? 0 : 1);
        }
        double t0 = h_now();
        struct stat st;
        while (!(stat(tmp, &st) == 0 && st.st_size > 0) && h_now() - t0 < 20)
            h_sleep_ms(1);
        int st_code = 0;
        if (waitpid(pid, &st_code, WNOHANG) == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st_code, 0);
            killed_mid += WIFSIGNALED(st_code);
        }
        char *got = h_read_file(path);
        cr_assert_not_null(got, "%s is gone after the writer was killed", path);
        cr_assert_str_eq(got, old, "%s changed after a killed write (%zu bytes, starts \"%.20s\")",
                         path, strlen(got), got);
        free(got);
    }
    cr_assert_geq(killed_mid, 1, "the writer was never caught mid-write");
    /* a write that completes replaces it, and leaves no temporary file */
    static const char fresh[] = "{\"step\": 2}\n";
    cr_assert_eq(ckpt_write_file_atomic(path, fresh, sizeof(fresh) - 1, err, sizeof(err)), 0);
    char *got = h_read_file(path);
    cr_assert_str_eq(got, fresh);
    free(got);
    cr_assert(!file_exists(tmp), "%s left behind by a completed write", tmp);
    fprintf(stderr, "faults/atomic: writer killed mid-write %d times; the old file stayed whole\n",
            killed_mid);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    (void)!system(cmd);
}

/* ------------------------------------------------------------ learner */

/* latest -> step-N must be complete: every file present, model and
 * optimizer load, trainer.json says step N. Returns N (-1: no latest). */
static long check_latest(void)
{
    char link[700], target[64], dir[800], p[900], err[1024];
    snprintf(link, sizeof(link), "%s/runs/it/ckpt/latest", H.dir);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n < 0)
        return -1;
    target[n] = '\0';
    long step = -1;
    cr_assert_eq(sscanf(target, "step-%ld", &step), 1, "latest points at \"%s\"", target);
    snprintf(dir, sizeof(dir), "%s/runs/it/ckpt/%s", H.dir, target);
    static const char *const files[] = {"model.safetensors", "config.json", "optimizer.safetensors",
                                        "tokenizer.json", "run_config.json", "trainer.json"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        cr_assert(file_exists(p), "latest (%s) lacks %s", target, files[i]);
    }
    model_t *m = ckpt_load_model(dir, 0, err, sizeof(err));
    cr_assert_not_null(m, "latest (%s) does not load: %s", target, err);
    float *am = calloc(m->n_params, sizeof(float)), *av = calloc(m->n_params, sizeof(float));
    long ostep = -1;
    snprintf(p, sizeof(p), "%s/optimizer.safetensors", dir);
    cr_assert_eq(ckpt_load_optimizer(m, am, av, &ostep, p, err, sizeof(err)), 0,
                 "latest (%s) optimizer: %s", target, err);
    free(am);
    free(av);
    model_destroy(&m);
    long tstep;
    double pos;
    cr_assert_eq(h_ckpt_position(target, &tstep, &pos), 0, "%s/trainer.json unreadable", target);
    cr_assert_eq(tstep, step, "%s/trainer.json says step %ld", target, tstep);
    return step;
}

/* The learner is SIGKILLed while it writes a checkpoint (caught by the
 * temporary step folder appearing), several times: each time `latest`
 * still points at a complete, loadable checkpoint, and the resumed run
 * finishes with every step once. */
Test(faults, learner_killed_mid_checkpoint_latest_stays_complete, .fini = fini)
{
    h_setup("ckptkill");
    const int steps = 30;
    h_start_broker("broker");
    h_start_actor("k1", "k1");
    h_start_actor("k2", "k2");
    char ckdir[700];
    snprintf(ckdir, sizeof(ckdir), "%s/runs/it/ckpt", H.dir);
    int mid = 0, attempts = 0;
    long last = -1;
    for (; attempts < 6; attempts++) {
        char log[32];
        snprintf(log, sizeof(log), "learner-%d", attempts + 1);
        pid_t lp = h_start_learner(log, steps, 1, NULL);
        double t0 = h_now();
        int caught = 0;
        while (h_now() - t0 < 60 && !h_reaped(lp)) {
            /* a step folder being written, past the learner's first one */
            if (dir_has_prefix(ckdir, ".tmp-step-") && h_now() - t0 > 0.3) {
                caught = 1;
                break;
            }
        }
        if (!caught)
            break; /* finished (or failed: checked below) */
        h_signal(lp, SIGKILL);
        mid++;
        long s = check_latest();
        cr_assert_geq(s, last, "latest went back from step %ld to %ld", last, s);
        last = s;
    }
    cr_assert_geq(mid, 1, "the learner was never killed during a checkpoint");
    char log[32];
    snprintf(log, sizeof(log), "learner-%d", attempts + 2);
    pid_t lp = h_start_learner(log, steps, 1, NULL);
    int rc = h_wait_exit(lp, 120);
    char *l = h_read_log(log);
    cr_assert_eq(rc, 0, "the last learner exited with %d:\n%s", rc, l);
    free(l);
    cr_assert_eq(check_latest(), steps, "latest is not the final step");
    static int st[256];
    int n = h_metrics_steps(st, 256);
    cr_assert_eq(n, steps, "metrics.jsonl has %d lines, expected %d", n, steps);
    for (int i = 0; i < n; i++)
        cr_assert_eq(st[i], i + 1, "metrics line %d is step %d", i + 1, st[i]);
    fprintf(stderr, "faults/ckpt: learner killed %d times while writing a checkpoint; latest always "
                    "complete and loadable; the run finished its %d steps\n", mid, steps);
}

/* ------------------------------------------------------------ bad folders */

/* run.dir under a regular file, and a checkpoint folder that cannot be
 * made: clear errors naming the path; no checkpoint claims to be there. */
Test(faults, unwritable_run_folder_gives_clear_error, .fini = fini)
{
    h_setup("unwritable");
    /* 1. run.dir is under a regular file: nothing can be made */
    char file[700], set[800];
    snprintf(file, sizeof(file), "%s/not-a-dir", H.dir);
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    fputs("x\n", f);
    fclose(f);
    snprintf(set, sizeof(set), "run.dir=%s/runs", file);
    const char *extra[] = {set, NULL};
    pid_t lp = h_start_learner("learner-file", 4, 2, extra);
    int rc = h_wait_exit(lp, 30);
    char *l = h_read_log("learner-file");
    cr_assert(rc > 0 && rc < 128, "learner under a file: exit %d (expected an error exit):\n%s", rc, l);
    char want[800];
    snprintf(want, sizeof(want), "%s/runs", file);
    cr_assert(strstr(l, want), "the error does not name %s:\n%s", want, l);
    cr_assert(strstr(l, "Not a directory") || strstr(l, "not a directory"),
              "the error does not say why:\n%s", l);
    free(l);

    /* 2. a read-only run folder (only meaningful without root, who may
     * write anyway) */
    if (geteuid() != 0) {
        char rd[700];
        snprintf(rd, sizeof(rd), "%s/ro", H.dir);
        mkdir(rd, 0755);
        snprintf(set, sizeof(set), "%s/ro/it", H.dir);
        mkdir(set, 0755);
        chmod(set, 0500);
        snprintf(set, sizeof(set), "run.dir=%s", rd);
        const char *ex2[] = {set, NULL};
        lp = h_start_learner("learner-ro", 4, 2, ex2);
        rc = h_wait_exit(lp, 30);
        l = h_read_log("learner-ro");
        cr_assert(rc > 0 && rc < 128, "read-only run folder: exit %d:\n%s", rc, l);
        cr_assert(strstr(l, "Permission denied"), "the error does not say why:\n%s", l);
        free(l);
        snprintf(set, sizeof(set), "%s/ro/it", H.dir);
        chmod(set, 0755);
    } else {
        fprintf(stderr, "faults/unwritable: running as root: the chmod 0500 case is skipped (root writes anyway)\n");
    }

    /* 3. the checkpoint folder cannot be made (a file is in its place):
     * training goes on with an error per checkpoint naming the folder, and
     * the process exits non-zero because its final checkpoint failed */
    char runs[700];
    snprintf(runs, sizeof(runs), "%s/runs/it", H.dir);
    cr_assert_eq(ckpt_mkdirs(runs, set, sizeof(set)), 0);
    snprintf(file, sizeof(file), "%s/runs/it/ckpt", H.dir);
    f = fopen(file, "w");
    cr_assert_not_null(f);
    fclose(f);
    h_start_broker("broker");
    h_start_actor("u1", "u1");
    lp = h_start_learner("learner-ckpt", 4, 2, NULL);
    rc = h_wait_exit(lp, 60);
    l = h_read_log("learner-ckpt");
    cr_assert(rc > 0 && rc < 128, "learner whose checkpoints fail exited %d:\n%s", rc, l);
    snprintf(want, sizeof(want), "checkpoint of step 2 in %s", file);
    cr_assert(strstr(l, want), "no error naming %s:\n%s", file, l);
    snprintf(want, sizeof(want), "checkpoint of step 4 in %s", file);
    cr_assert(strstr(l, want), "the final checkpoint's failure is not reported:\n%s", l);
    free(l);
}

/* ------------------------------------------------------------ full disk */

/* The run folder on a 512 KiB tmpfs: the learner fills it and must say
 * so (ENOSPC, naming the file) and end instead of sitting there; `latest`
 * (if any) is complete. Needs permission to mount (root in a container
 * that allows it); skipped otherwise. */
Test(faults, full_disk_reports_enospc, .fini = fini)
{
    h_setup("enospc");
    snprintf(g_mnt, sizeof(g_mnt), "%s/mnt", H.dir);
    cr_assert_eq(mkdir(g_mnt, 0755), 0);
    /* A private mount namespace: the tmpfs vanishes with this test process
     * (and the processes it starts) even if it is killed on a timeout. */
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", g_mnt, "tmpfs", 0, "size=512k") != 0) {
        int e = errno;
        g_mnt[0] = '\0';
        cr_skip_test("cannot mount a 512 KiB tmpfs (%s): the full-disk case needs root with "
                     "CAP_SYS_ADMIN", strerror(e));
    }
    char set[800];
    snprintf(set, sizeof(set), "run.dir=%s/runs", g_mnt);
    const char *extra[] = {set, NULL};
    h_start_broker("broker");
    h_start_actor("f1", "f1");
    pid_t lp = h_start_learner("learner", 200, 1, extra);
    int rc = h_wait_exit(lp, 90);
    if (rc == -1)
        h_signal(lp, SIGKILL);
    char *l = h_read_log("learner");
    cr_assert_neq(rc, -1, "the learner on a full disk did not end within 90 s:\n%s", l);
    cr_assert(rc > 0 && rc < 128, "learner on a full disk exited %d:\n%s", rc, l);
    cr_assert(strstr(l, "No space left on device"), "no ENOSPC message:\n%s", l);
    char want[800];
    snprintf(want, sizeof(want), "%s/runs/it", g_mnt);
    cr_assert(strstr(l, want), "the error does not name a path under %s:\n%s", want, l);
    /* whatever latest points at is complete */
    char link[800], target[256];
    snprintf(link, sizeof(link), "%s/runs/it/ckpt/latest", g_mnt);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n > 0) {
        target[n] = '\0';
        char dir[1100], err[1024];
        snprintf(dir, sizeof(dir), "%s/runs/it/ckpt/%s", g_mnt, target);
        model_t *m = ckpt_load_model(dir, 0, err, sizeof(err));
        cr_assert_not_null(m, "latest (%s) on the full disk does not load: %s", target, err);
        model_destroy(&m);
    }
    const char *e = strstr(l, "No space left on device");
    const char *ls = e;
    while (ls > l && ls[-1] != '\n')
        ls--;
    const char *le = strchr(e, '\n');
    fprintf(stderr, "faults/enospc: learner exit %d; first ENOSPC line: %.*s\n", rc,
            (int)(le ? le - ls : (long)strlen(ls)), ls);
    free(l);
}
