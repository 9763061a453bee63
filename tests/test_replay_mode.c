/* Tests of `crl-learner replay` (issue 5): a short live run (crl-broker,
 * crl-learner rl, two crl-actor processes on 127.0.0.1, the tiny model and
 * world of tests/harness.h), then a replay of its trajectory log
 * that must reproduce the live weights bit for bit after every step —
 * checked against the StepMarkers the test reads from the log itself, and
 * on the final model.safetensors. Also: a replay from a mid-run checkpoint,
 * a step redone after a learner crash (the later StepMarker wins), a
 * corrupt record in the middle of the log, config mismatches, and usage
 * errors. The binaries come from $CRL_BIN_DIR (`make test` sets it);
 * without it the tests are skipped. The processes are run by the shared
 * harness of tests/harness.h. */
#include "harness.h"

#include <inttypes.h>
#include <stdint.h>

#include "proto/crl.pb-c.h"
#include "traj_log.h"

/* ------------------------------------------------------------ harness */

#define MAX_STEPS 64

static void fini(void) { h_kill_all(); }

/* The tiny world of tests/harness.h on 127.0.0.1 endpoints; every process
 * with skip_zero_variance off, so that every group of the random model
 * enters the loss and every step really moves the weights. */
static void setup(const char *name)
{
    static const char *const sets[] = {"rl.skip_zero_variance=false", "rl.lr=1e-3", NULL};
    char full[64];
    snprintf(full, sizeof(full), "rm-%s", name);
    const h_opts_t o = {.endpoints = H_EPS_TCP, .sets = sets};
    h_setup_opts(full, &o);
}

/* Runs prog to completion (timeout_s); returns its exit status and leaves
 * its output in DIR/<log>.log. */
static int run_cmd(const char *prog, const char *log, const char *const *args, double timeout_s)
{
    int rc = h_run(prog, log, args, timeout_s);
    cr_assert_neq(rc, -1, "%s (%s) did not finish within %g s", prog, log, timeout_s);
    return rc;
}

/* broker + learner + actors a1 and a2 for `steps` steps, the learner
 * logging to learner_log and the actors to a1_log, a2_log; the learner
 * (`who` in the failure message) must exit 0. */
static void run_job(const char *learner_log, const char *a1_log, const char *a2_log, int steps,
                    int ckpt_every, const char *who)
{
    const char *const ids[] = {"a1", "a2"}, *const logs[] = {a1_log, a2_log};
    pid_t lp = h_start_job(learner_log, steps, ckpt_every, ids, logs, 2);
    int rc = h_wait_exit(lp, 60);
    char *l = h_read_log(learner_log);
    cr_assert_eq(rc, 0, "%s exited with %d; log ends:\n%s", who, rc, h_tail(l));
    free(l);
}

static void live_run(int steps, int ckpt_every)
{
    run_job("learner", "a1", "a2", steps, ckpt_every, "live learner");
}

/* Runs `crl-learner replay ARGS...` (NULL-terminated) with output in
 * DIR/<log>.log; returns the exit status. */
static int replay(const char *log, ...)
{
    h_args_t a;
    memset(&a, 0, sizeof(a));
    h_arg(&a, "replay");
    va_list ap;
    va_start(ap, log);
    const char *s;
    while ((s = va_arg(ap, const char *)) != NULL)
        h_arg(&a, s);
    va_end(ap);
    return run_cmd("crl-learner", log, a.argv, 60);
}

/* ------------------------------------------------------------ the log, read by the test */

typedef struct {
    uint64_t step;
    uint32_t crc;
    char key0[64];          /* first group of the step: actor#group */
    uint32_t key0_file;     /* its GroupReceived record */
    uint64_t key0_off;
} marker_t;

/* Every StepMarker of the live log, in log order (the test's own reading,
 * independent of the replay code), with the position of the GroupReceived
 * record of each marker's first group. Returns the count. */
static int read_markers(marker_t *out, int max)
{
    char dir[700], err[512];
    snprintf(dir, sizeof(dir), "%s/runs/it/traj", H.dir);
    traj_log_reader_t *rd = traj_log_reader_open(dir, 0, err, sizeof(err));
    cr_assert_not_null(rd, "%s", err);
    typedef struct {
        char key[64];
        uint32_t f;
        uint64_t o;
    } rx_t;
    size_t cap = 1024, nrx = 0;
    rx_t *rx = calloc(cap, sizeof(*rx));
    const void *p;
    size_t len;
    uint32_t f;
    uint64_t o;
    int n = 0, rc;
    while ((rc = traj_log_next(rd, &p, &len, &f, &o)) == 1) {
        Crl__TrajectoryRecord *rec = crl__trajectory_record__unpack(NULL, len, p);
        cr_assert_not_null(rec, "undecodable record at %u:%" PRIu64, f, o);
        if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED && nrx < cap) {
            snprintf(rx[nrx].key, sizeof(rx[nrx].key), "%s#%" PRIu64,
                     rec->received->group->actor_id, rec->received->group->group_id);
            rx[nrx].f = f;
            rx[nrx].o = o;
            nrx++;
        } else if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_STEP && n < max) {
            marker_t *m = &out[n++];
            memset(m, 0, sizeof(*m));
            m->step = rec->step->step;
            m->crc = rec->step->weights_crc32c;
            cr_assert_geq(rec->step->n_groups, 1);
            snprintf(m->key0, sizeof(m->key0), "%s#%" PRIu64, rec->step->groups[0]->actor_id,
                     rec->step->groups[0]->group_id);
            for (size_t i = 0; i < nrx; i++)
                if (!strcmp(rx[i].key, m->key0)) {
                    m->key0_file = rx[i].f;
                    m->key0_off = rx[i].o;
                }
        }
        crl__trajectory_record__free_unpacked(rec, NULL);
    }
    cr_assert_eq(rc, 0, "reading the live log: %s", traj_log_reader_error(rd));
    traj_log_reader_close(&rd);
    free(rx);
    return n;
}

/* The crc the replay printed for step N ("step N: weights crc 0x... == live"
 * or "!= live"); 1 if found, with *match = 1 for "== live". */
static int replay_line(const char *text, uint64_t step, uint32_t *crc, int *match)
{
    char needle[64];
    snprintf(needle, sizeof(needle), "step %" PRIu64 ": weights crc 0x", step);
    const char *p = strstr(text, needle);
    if (!p)
        return 0;
    unsigned v = 0;
    char rel[8] = "";
    if (sscanf(p + strlen(needle) - 2, "0x%x %2s", &v, rel) != 2)
        return 0;
    *crc = v;
    *match = !strcmp(rel, "==");
    return 1;
}

/* Prints the replay's per-step lines (for the report) to stderr. */
static void echo_steps(const char *title, const char *text)
{
    fprintf(stderr, "---- %s\n", title);
    const char *p = text;
    while (p && *p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if ((n > 5 && !strncmp(p, "step ", 5)) || (n > 6 && !strncmp(p, "start:", 6)) ||
            (n > 7 && !strncmp(p, "replay:", 7)))
            fprintf(stderr, "%.*s\n", (int)n, p);
        p = e ? e + 1 : NULL;
    }
}

/* Tensor data (everything after the header) of a .safetensors file. */
static char *tensor_data(const char *path, size_t *len, char **whole, size_t *whole_len)
{
    char *b = h_read_file_len(path, whole_len);
    cr_assert_not_null(b, "cannot read %s", path);
    cr_assert_geq(*whole_len, 8, "%s: too short", path);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | (unsigned char)b[i];
    cr_assert_leq(8 + hl, *whole_len, "%s: bad header length", path);
    *whole = b;
    *len = *whole_len - 8 - (size_t)hl;
    return b + 8 + hl;
}

static void assert_same_weights(const char *live_ckpt, const char *replay_ckpt)
{
    char p1[700], p2[700];
    snprintf(p1, sizeof(p1), "%s/runs/%s/model.safetensors", H.dir, live_ckpt);
    snprintf(p2, sizeof(p2), "%s/runs/%s/model.safetensors", H.dir, replay_ckpt);
    char *w1, *w2;
    size_t l1, l2, wl1, wl2;
    const char *d1 = tensor_data(p1, &l1, &w1, &wl1);
    const char *d2 = tensor_data(p2, &l2, &w2, &wl2);
    cr_assert_eq(l1, l2, "tensor data sizes differ: live %zu, replay %zu bytes", l1, l2);
    size_t first = 0;
    while (first < l1 && d1[first] == d2[first])
        first++;
    cr_assert_eq(first, l1, "final weights differ from the live run's at tensor-data byte %zu of %zu",
                 first, l1);
    cr_assert_eq(wl1, wl2, "the files differ in size (%zu vs %zu) though the tensors are equal",
                 wl1, wl2);
    cr_assert_eq(memcmp(w1, w2, wl1), 0, "headers differ though the tensors are equal");
    free(w1);
    free(w2);
}

/* Every marker step in [lo, hi] has an "== live" line with the marker's
 * crc; steps outside have no line. */
static void assert_steps_match(const char *text, const marker_t *mk, int n_mk, uint64_t lo,
                               uint64_t hi)
{
    for (int i = 0; i < n_mk; i++) {
        uint32_t crc;
        int match;
        int found = replay_line(text, mk[i].step, &crc, &match);
        if (mk[i].step < lo || mk[i].step > hi) {
            cr_assert_eq(found, 0, "the replay printed step %" PRIu64 ", outside %" PRIu64
                         "..%" PRIu64 ":\n%s", mk[i].step, lo, hi, text);
            continue;
        }
        cr_assert_eq(found, 1, "no line for step %" PRIu64 " in the replay's output:\n%s",
                     mk[i].step, text);
        cr_assert_eq(crc, mk[i].crc, "step %" PRIu64 ": replay crc 0x%08x, live StepMarker 0x%08x",
                     mk[i].step, crc, mk[i].crc);
        cr_assert(match, "step %" PRIu64 " not reported as matching:\n%s", mk[i].step, text);
    }
    cr_assert_null(strstr(text, "MISMATCH"), "a mismatch was reported:\n%s", text);
}

/* ------------------------------------------------------------ tests */

/* The must-show: a 5-step live run, replayed from its initial policy,
 * equals the live weights after every step and at the end. */
Test(replay_mode, reproduces_live_run_bit_for_bit, .fini = fini, .timeout = 120)
{
    setup("bits");
    live_run(5, 2);
    marker_t mk[MAX_STEPS];
    int n_mk = read_markers(mk, MAX_STEPS);
    cr_assert_eq(n_mk, 5, "the live log holds %d StepMarkers, expected 5", n_mk);

    char log[700];
    snprintf(log, sizeof(log), "%s/runs/it/traj", H.dir);
    double t0 = h_now();
    int rc = replay("replay", "--log", log, "--out", "rp", NULL);
    double dt = h_now() - t0;
    char *out = h_read_log("replay");
    cr_assert_eq(rc, 0, "replay exited with %d:\n%s", rc, out);
    echo_steps("replay_mode/reproduces_live_run_bit_for_bit", out);
    fprintf(stderr, "replay took %.2f s (wall, with process start)\n", dt);
    assert_steps_match(out, mk, n_mk, 1, 5);
    cr_assert(strstr(out, "weights match the live run after 5 of 5 steps"), "summary:\n%s", out);
    assert_same_weights("it/ckpt/latest", "rp/ckpt/latest");
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/rp/metrics.jsonl", H.dir);
    size_t ml;
    char *metrics = h_read_file_len(p, &ml);
    cr_assert_not_null(metrics, "no %s", p);
    int lines = 0;
    for (char *q = metrics; (q = strchr(q, '\n')); q++)
        lines++;
    cr_assert_eq(lines, 5, "metrics.jsonl has %d lines, expected 5", lines);
    cr_assert(strstr(metrics, "\"crc_match\":true"), "no crc_match in metrics:\n%s", metrics);
    cr_assert_null(strstr(metrics, "\"crc_match\":false"), "a false crc_match:\n%s", metrics);
    free(metrics);
    free(out);
}

/* A replay from the live run's step-2 checkpoint reproduces steps 3..5;
 * --steps 5:5 picks the step-4 checkpoint by itself; a config that differs
 * from the run's in an update-relevant key is refused (exit 2). */
Test(replay_mode, replays_from_mid_run_checkpoint, .fini = fini, .timeout = 120)
{
    setup("mid");
    live_run(5, 2);
    marker_t mk[MAX_STEPS];
    int n_mk = read_markers(mk, MAX_STEPS);
    cr_assert_eq(n_mk, 5);
    char log[700], from[700];
    snprintf(log, sizeof(log), "%s/runs/it/traj", H.dir);
    snprintf(from, sizeof(from), "%s/runs/it/ckpt/step-2", H.dir);

    int rc = replay("mid", "--log", log, "--from", from, "--out", "mid", NULL);
    char *out = h_read_log("mid");
    cr_assert_eq(rc, 0, "replay exited with %d:\n%s", rc, out);
    echo_steps("replay_mode/replays_from_mid_run_checkpoint (--from step-2)", out);
    cr_assert(strstr(out, "(step 2): weights crc"), "no start check:\n%s", out);
    cr_assert(strstr(out, "== live\n"), "%s", out);
    assert_steps_match(out, mk, n_mk, 3, 5);
    assert_same_weights("it/ckpt/latest", "mid/ckpt/latest");
    free(out);

    rc = replay("last", "--log", log, "--steps", "5:5", "--out", "last", NULL);
    out = h_read_log("last");
    cr_assert_eq(rc, 0, "replay --steps 5:5 exited with %d:\n%s", rc, out);
    cr_assert(strstr(out, "ckpt/step-4 (step 4): weights crc"), "did not start at step-4:\n%s", out);
    assert_steps_match(out, mk, n_mk, 5, 5);
    assert_same_weights("it/ckpt/latest", "last/ckpt/latest");
    free(out);

    rc = replay("lr", "--log", log, "--out", "lr", "--set", "rl.lr=0.5", NULL);
    out = h_read_log("lr");
    cr_assert_eq(rc, 2, "another rl.lr: exit %d, expected 2:\n%s", rc, out);
    cr_assert(strstr(out, "config mismatch") && strstr(out, "rl.lr = 0.5"),
              "the message does not name rl.lr:\n%s", out);
    free(out);
    rc = replay("gs", "--log", log, "--out", "gs", "--set", "rl.group_size=8", NULL);
    out = h_read_log("gs");
    cr_assert_eq(rc, 2, "another rl.group_size: exit %d, expected 2:\n%s", rc, out);
    cr_assert(strstr(out, "rl.group_size = 8"), "the message does not name rl.group_size:\n%s", out);
    free(out);
}

/* A learner killed (SIGKILL) after a checkpoint and restarted redoes the
 * steps after it: the log then holds two StepMarkers for those steps, and
 * the replay must follow the later ones (the earlier ones describe weights
 * the resumed run threw away). */
Test(replay_mode, redone_steps_later_marker_wins, .fini = fini, .timeout = 150)
{
    setup("crash");
    /* a slower step (more tokens) gives the test time to kill the learner
     * between two checkpoints */
    pid_t lp = h_start_learner("learner", 8, 3, NULL);
    pid_t others[3];
    others[0] = h_start_actor("a1", "a1");
    others[1] = h_start_actor("a2", "a2");
    h_wait_joined("learner", "a1");
    h_wait_joined("learner", "a2");
    others[2] = h_start_broker("broker");
    char ck[700], mpath[700];
    snprintf(ck, sizeof(ck), "%s/runs/it/ckpt/step-3/trainer.json", H.dir);
    snprintf(mpath, sizeof(mpath), "%s/runs/it/metrics.jsonl", H.dir);
    double t0 = h_now();
    int killed = 0;
    while (!killed) {
        if (h_now() - t0 > 60)
            cr_assert_fail("no checkpoint at step 3 within 60 s");
        if (access(ck, R_OK) == 0) {
            char *m = h_read_file(mpath);
            int lines = 0;
            for (char *q = m; q && (q = strchr(q, '\n')); q++)
                lines++;
            free(m);
            if (lines >= 4) {
                kill(lp, SIGKILL);
                killed = 1;
            }
        }
        if (!killed && h_wait_exit(lp, 0) != -1)
            cr_assert_fail("the learner finished before it could be killed");
        if (!killed)
            h_sleep_ms(2);
    }
    cr_assert_eq(h_wait_exit(lp, 10), 128 + SIGKILL);
    marker_t mk1[MAX_STEPS];
    int n1 = read_markers(mk1, MAX_STEPS);
    cr_assert_geq(n1, 4, "the killed learner logged %d markers", n1);
    /* The whole job restarts, as after a machine crash: a broker and actors
     * that outlived the learner hold weights of versions the resumed
     * learner has not made (yet), which the live system does not sort out
     * by itself (reported; not what this test is about). */
    for (int i = 0; i < 3; i++) {
        kill(others[i], SIGKILL);
        h_wait_exit(others[i], 10);
    }
    run_job("learner2", "a1-2", "a2-2", 8, 3, "restarted learner");

    marker_t mk[MAX_STEPS];
    int n_mk = read_markers(mk, MAX_STEPS);
    /* the winners: for each step its last marker */
    marker_t win[MAX_STEPS];
    int n_win = 0;
    for (int i = 0; i < n_mk; i++) {
        while (n_win > 0 && win[n_win - 1].step >= mk[i].step)
            n_win--;
        win[n_win++] = mk[i];
    }
    cr_assert_eq(n_win, 8, "%d distinct steps in the log, expected 8", n_win);
    /* the kill lands after step 4 or 5 (a checkpoint at 3, the next at 6),
     * so step 4 at least is redone; under heavy load the window may be
     * missed, which weakens the test but does not make the run wrong */
    int redone = n_mk > n_win;
    if (!redone)
        fprintf(stderr, "[note] no step was redone (%d markers): the kill came after a checkpoint\n", n_mk);
    int differ = 0;
    for (int i = 0; i < n_mk; i++)
        for (int j = 0; j < n_win; j++)
            differ += mk[i].step == win[j].step && mk[i].crc != win[j].crc;
    fprintf(stderr, "replay_mode/redone: %d markers for 8 steps, %d superseded with another crc\n",
            n_mk, differ);

    char log[700];
    snprintf(log, sizeof(log), "%s/runs/it/traj", H.dir);
    int rc = replay("replay", "--log", log, "--out", "rp", NULL);
    char *out = h_read_log("replay");
    cr_assert_eq(rc, 0, "replay exited with %d:\n%s", rc, out);
    echo_steps("replay_mode/redone_steps_later_marker_wins", out);
    assert_steps_match(out, win, n_win, 1, 8);
    if (redone)
        cr_assert(strstr(out, "superseded"), "the superseded markers were not reported:\n%s", out);
    assert_same_weights("it/ckpt/latest", "rp/ckpt/latest");
    free(out);
}

/* A corrupt record in the middle of the log (the GroupReceived of step
 * 3's first group): the replay stops naming file and offset; with
 * --skip-corrupt it replays steps 1-2 exactly and stops at step 3 naming
 * the missing group; with --keep-going too it reports the mismatches that
 * follow. */
Test(replay_mode, corrupt_record_reported, .fini = fini, .timeout = 120)
{
    setup("corrupt");
    live_run(5, 0);
    marker_t mk[MAX_STEPS];
    int n_mk = read_markers(mk, MAX_STEPS);
    cr_assert_eq(n_mk, 5);
    const marker_t *m3 = &mk[2];
    cr_assert_eq(m3->step, 3);
    cr_assert_gt(m3->key0_off, 0, "the GroupReceived of %s was not found", m3->key0);
    char file[700];
    snprintf(file, sizeof(file), "%s/runs/it/traj/traj-%06u.log", H.dir, m3->key0_file);
    int fd = open(file, O_RDWR);
    cr_assert_geq(fd, 0, "%s: %s", file, strerror(errno));
    unsigned char b;
    off_t at = (off_t)m3->key0_off + 8 + 20; /* inside the payload */
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x5a;
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);

    char log[700];
    snprintf(log, sizeof(log), "%s/runs/it/traj", H.dir);
    int rc = replay("plain", "--log", log, "--out", "c1", NULL);
    char *out = h_read_log("plain");
    cr_assert_eq(rc, 1, "replay of a corrupt log exited with %d, expected 1:\n%s", rc, out);
    char want[256], want_off[64];
    snprintf(want, sizeof(want), "traj-%06u.log", m3->key0_file);
    snprintf(want_off, sizeof(want_off), "offset %" PRIu64 ":", m3->key0_off);
    cr_assert(strstr(out, want) && strstr(out, want_off),
              "the error does not name \"%s\" and \"%s\":\n%s", want, want_off, out);
    cr_assert_null(strstr(out, "weights crc"), "it replayed steps of a corrupt log:\n%s", out);
    free(out);

    rc = replay("skip", "--log", log, "--out", "c2", "--skip-corrupt", NULL);
    out = h_read_log("skip");
    echo_steps("replay_mode/corrupt_record_reported (--skip-corrupt)", out);
    cr_assert_eq(rc, 1, "--skip-corrupt: exit %d, expected 1:\n%s", rc, out);
    assert_steps_match(out, mk, n_mk, 1, 2);
    snprintf(want, sizeof(want), "step 3: group %s (item 0) is not in the log", m3->key0);
    cr_assert(strstr(out, want), "no \"%s\":\n%s", want, out);
    free(out);

    rc = replay("keep", "--log", log, "--out", "c3", "--skip-corrupt", "--keep-going", NULL);
    out = h_read_log("keep");
    echo_steps("replay_mode/corrupt_record_reported (--skip-corrupt --keep-going)", out);
    cr_assert_eq(rc, 1, "--keep-going: exit %d, expected 1:\n%s", rc, out);
    for (uint64_t s = 3; s <= 5; s++) {
        uint32_t crc;
        int match = 1;
        cr_assert(replay_line(out, s, &crc, &match), "no line for step %" PRIu64 ":\n%s", s, out);
        cr_assert(!match, "step %" PRIu64 " matched though step 3 lacked a group:\n%s", s, out);
    }
    cr_assert(strstr(out, "weights match the live run after 2 of 5 steps"), "summary:\n%s", out);
    free(out);
}

static void copy_file(const char *from, const char *to)
{
    size_t n;
    char *b = h_read_file_len(from, &n);
    cr_assert_not_null(b, "cannot read %s", from);
    FILE *f = fopen(to, "wb");
    cr_assert_not_null(f, "cannot write %s: %s", to, strerror(errno));
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
    free(b);
}

/* A log whose StepMarkers lack the groups' positions (as written before
 * they existed) is replayed by key, the last group of that key received
 * before the marker, and still matches. */
Test(replay_mode, log_without_group_positions, .fini = fini, .timeout = 120)
{
    setup("keys");
    live_run(4, 0);
    marker_t mk[MAX_STEPS];
    int n_mk = read_markers(mk, MAX_STEPS);
    cr_assert_eq(n_mk, 4);
    char src[700], dst[700], err[512], a[700], b[700];
    snprintf(src, sizeof(src), "%s/runs/it/traj", H.dir);
    snprintf(dst, sizeof(dst), "%s/runs/old/traj", H.dir);
    traj_log_options_t opt;
    traj_log_options_default(&opt);
    opt.fsync_policy = TRAJ_FSYNC_NEVER;
    traj_log_t *out = traj_log_open(dst, &opt, err, sizeof(err));
    cr_assert_not_null(out, "%s", err);
    traj_log_reader_t *rd = traj_log_reader_open(src, 0, err, sizeof(err));
    cr_assert_not_null(rd, "%s", err);
    const void *p;
    size_t len;
    int rc, stripped = 0;
    while ((rc = traj_log_next(rd, &p, &len, NULL, NULL)) == 1) {
        Crl__TrajectoryRecord *rec = crl__trajectory_record__unpack(NULL, len, p);
        cr_assert_not_null(rec);
        if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_STEP) {
            cr_assert_eq(rec->step->n_group_offset, rec->step->n_groups,
                         "the live learner did not record the groups' positions");
            rec->step->n_group_file_index = rec->step->n_group_offset = 0;
            stripped++;
        }
        size_t n = crl__trajectory_record__get_packed_size(rec);
        uint8_t *buf = malloc(n);
        crl__trajectory_record__pack(rec, buf);
        cr_assert_eq(traj_log_append(out, buf, n), 0);
        free(buf);
        crl__trajectory_record__free_unpacked(rec, NULL);
    }
    cr_assert_eq(rc, 0);
    traj_log_reader_close(&rd);
    cr_assert_eq(traj_log_close(&out), 0);
    cr_assert_eq(stripped, 4);
    snprintf(a, sizeof(a), "%s/runs/old/ref", H.dir);
    cr_assert_eq(ckpt_mkdirs(a, err, sizeof(err)), 0, "%s", err);
    static const char *const files[] = {"config.json", "ref/config.json", "ref/model.safetensors",
                                        "ref/tokenizer.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(a, sizeof(a), "%s/runs/it/%s", H.dir, files[i]);
        snprintf(b, sizeof(b), "%s/runs/old/%s", H.dir, files[i]);
        copy_file(a, b);
    }
    rc = replay("old", "--log", dst, "--out", "oldrp", NULL);
    char *text = h_read_log("old");
    cr_assert_eq(rc, 0, "replay exited with %d:\n%s", rc, text);
    echo_steps("replay_mode/log_without_group_positions", text);
    assert_steps_match(text, mk, n_mk, 1, 4);
    assert_same_weights("it/ckpt/latest", "oldrp/ckpt/latest");
    free(text);
}

/* Usage errors exit 2 with a message, before any work. */
Test(replay_mode, missing_log_and_bad_arguments, .fini = fini, .timeout = 60)
{
    h_begin("rm-args", NULL); /* no world: nothing runs */
    char traj[700], missing[700], noinit[700];
    snprintf(traj, sizeof(traj), "%s/runs/x/traj", H.dir);
    snprintf(missing, sizeof(missing), "%s/runs/nope/traj", H.dir);
    snprintf(noinit, sizeof(noinit), "%s/no-such-ckpt", H.dir);
    char err[512];
    cr_assert_eq(ckpt_mkdirs(traj, err, sizeof(err)), 0, "%s", err);

    struct {
        const char *name;
        const char *args[8];
        const char *says;
    } cases[] = {
        {"nolog", {NULL}, "--log RUN_DIR/traj is required"},
        {"missing", {"--log", missing, NULL}, "No such file or directory"},
        {"unknown", {"--log", traj, "--bogus", NULL}, "unexpected argument '--bogus'"},
        {"steps", {"--log", traj, "--steps", "5:2", NULL}, "--steps 5:2"},
        {"steps0", {"--log", traj, "--steps", "0:3", NULL}, "--steps 0:3"},
        {"from", {"--log", traj, "--from", noinit, NULL}, "no such checkpoint folder"},
        {"set", {"--log", traj, "--set", "rl.nope=1", NULL}, "rl.nope"},
        {"out", {"--log", traj, "--out", "a/b", NULL}, "--out a/b"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        h_args_t a;
        memset(&a, 0, sizeof(a));
        h_arg(&a, "replay");
        for (int k = 0; cases[i].args[k]; k++)
            h_arg(&a, cases[i].args[k]);
        int rc = run_cmd("crl-learner", cases[i].name, a.argv, 30);
        char *out = h_read_log(cases[i].name);
        cr_assert_eq(rc, 2, "case %s: exit %d, expected 2:\n%s", cases[i].name, rc, out);
        cr_assert(strstr(out, cases[i].says), "case %s: the message lacks \"%s\":\n%s",
                  cases[i].name, cases[i].says, out);
        free(out);
    }
    /* an empty log folder is no usage error, but nothing can be replayed */
    h_args_t a;
    memset(&a, 0, sizeof(a));
    h_arg(&a, "replay");
    h_arg(&a, "--log");
    h_arg(&a, traj);
    int rc = run_cmd("crl-learner", "empty", a.argv, 30);
    char *out = h_read_log("empty");
    cr_assert_eq(rc, 1, "empty log: exit %d, expected 1:\n%s", rc, out);
    cr_assert(strstr(out, "no StepMarker"), "%s", out);
    free(out);
    /* --help */
    memset(&a, 0, sizeof(a));
    h_arg(&a, "replay");
    h_arg(&a, "--help");
    rc = run_cmd("crl-learner", "help", a.argv, 30);
    out = h_read_log("help");
    cr_assert_eq(rc, 0);
    cr_assert(strstr(out, "usage: crl-learner replay --log"), "%s", out);
    free(out);
}
