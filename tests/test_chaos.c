/* Chaos and no-hang tests (issue 7): a real local run (crl-broker,
 * crl-learner rl, several crl-actor processes; tiny model, ipc:// endpoints
 * in the test's folder) while a driver SIGKILLs random actors and starts
 * new ones, kills and restarts the broker, and SIGKILLs the learner and
 * resumes it from runs/NAME/ckpt/latest. `make test` runs a short version;
 * `make chaos` (tests/chaos/chaos.sh) a long one through the environment:
 *   CRL_CHAOS_FAULTS  faults to inject (default 12)
 *   CRL_CHAOS_GAP     learner steps between faults (default 3)
 *   CRL_CHAOS_ACTORS  actors running at once (default 3)
 *   CRL_CHAOS_SEED    fault schedule seed (default: time)
 *   CRL_CHAOS_STALL_S seconds without a step that count as a hang (default 60)
 *
 * Accounting across learner incarnations: the last learner's accounting
 * line is cumulative over the chain of checkpoints it resumed from. A
 * learner killed with SIGKILL loses what it did after its last checkpoint:
 * the groups it accepted then are in the trajectory log (GroupReceived
 * records after the checkpoint's log position, written by that process)
 * and their prompts are granted again by the next learner (data cursor and
 * requeue list restored). The driver counts them from the log at each kill
 * ("lost with the learner") and checks
 *   groups accepted into the log = used + dropped-after-acceptance (final
 *   learner) + lost with killed learners,
 * besides the final learner's own balance (used + dropped == received). */
#include "harness.h"

#include <inttypes.h>

#include "traj_log.h"
#include "proto/crl.pb-c.h"

static void fini(void) { h_kill_all(); }

static long env_long(const char *name, long dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end;
    long v = strtol(s, &end, 10);
    return *end ? dflt : v;
}

/* ------------------------------------------------------------ the log */

typedef struct {
    uint32_t file;
    uint64_t off;
} logpos_t;

static int pos_lt(logpos_t a, logpos_t b)
{
    return a.file < b.file || (a.file == b.file && a.off < b.off);
}

typedef struct {
    unsigned long long received;     /* GroupReceived */
    unsigned long long used;         /* GroupOutcome USED */
    unsigned long long dropped;      /* GroupOutcome DROPPED */
    unsigned long long by_reason[H_N_REASONS];
    unsigned long long steps;        /* StepMarker */
    logpos_t end;                    /* after the last complete record */
} logcount_t;

/* Counts the records of runs/it/traj in [from, to) (to.file == UINT32_MAX:
 * to the end). */
static logcount_t count_log(logpos_t from, logpos_t to)
{
    logcount_t c;
    memset(&c, 0, sizeof(c));
    char dir[700], err[512];
    snprintf(dir, sizeof(dir), "%s/runs/it/traj", H.dir);
    traj_log_reader_t *rd = traj_log_reader_open(dir, 1, err, sizeof(err));
    cr_assert_not_null(rd, "trajectory log %s: %s", dir, err);
    if (from.file || from.off)
        cr_assert_eq(traj_log_reader_seek(rd, from.file, from.off), 0,
                     "cannot seek the trajectory log to file %u offset %" PRIu64, from.file,
                     from.off);
    c.end = from;
    const void *p;
    size_t len;
    uint32_t f;
    uint64_t o;
    int rc;
    while ((rc = traj_log_next(rd, &p, &len, &f, &o)) == 1) {
        logpos_t here = {f, o};
        if (to.file != UINT32_MAX && !pos_lt(here, to))
            break;
        c.end = (logpos_t){f, o + 8 + len};
        Crl__TrajectoryRecord *rec = crl__trajectory_record__unpack(NULL, len, p);
        cr_assert_not_null(rec, "undecodable record at file %u offset %" PRIu64, f, o);
        if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED)
            c.received++;
        else if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_STEP)
            c.steps++;
        else if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_OUTCOME) {
            if (rec->outcome->fate == CRL__GROUP_FATE__GROUP_FATE_USED)
                c.used++;
            else {
                c.dropped++;
                int r = (int)rec->outcome->drop_reason;
                if (r > 0 && r < H_N_REASONS)
                    c.by_reason[r]++;
            }
        }
        crl__trajectory_record__free_unpacked(rec, NULL);
    }
    cr_assert_geq(rc, 0, "trajectory log: %s", traj_log_reader_error(rd));
    traj_log_reader_close(&rd);
    return c;
}

/* The trajectory log position a checkpoint recorded. */
static logpos_t ckpt_logpos(const char *which)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/%s/trainer.json", H.dir, which);
    char *s = h_read_file(p);
    cr_assert_not_null(s, "cannot read %s", p);
    cJSON *o = cJSON_Parse(s);
    free(s);
    cr_assert_not_null(o, "%s is not JSON", p);
    const cJSON *t = cJSON_GetObjectItem(o, "traj");
    logpos_t pos = {(uint32_t)cJSON_GetObjectItem(t, "file_index")->valuedouble,
                    (uint64_t)cJSON_GetObjectItem(t, "offset")->valuedouble};
    cJSON_Delete(o);
    return pos;
}

/* ------------------------------------------------------------ the run */

#define MAX_ACTORS 16

typedef struct {
    pid_t pid;
    char id[32];
    char log[48];
} actor_slot_t;

typedef struct {
    actor_slot_t actors[MAX_ACTORS];
    int n_actors;
    int next_actor;          /* actor ids a1, a2, ... */
    pid_t broker;
    int broker_inc;
    pid_t learner;
    int learner_inc;
    char learner_log[48];
    int actor_kills, broker_restarts, learner_restarts;
    logpos_t inc_start;      /* log end when the current learner started */
    unsigned long long lost_with_learner, redone_used, redone_steps;
    unsigned long long lost_dropped_after_accept;
    double ckpt_pos_seen;    /* data position of the last checkpoint resumed from */
} chaos_t;

static void new_actor(chaos_t *c, int slot, const char *reuse_id)
{
    actor_slot_t *a = &c->actors[slot];
    char id[32], log[48];
    if (reuse_id)
        snprintf(id, sizeof(id), "%s", reuse_id);
    else
        snprintf(id, sizeof(id), "a%d", ++c->next_actor);
    snprintf(log, sizeof(log), "actor-%s-%d", id, H.n);
    memcpy(a->id, id, sizeof(id));
    memcpy(a->log, log, sizeof(log));
    a->pid = h_start_actor(a->id, a->log);
}

static void new_broker(chaos_t *c)
{
    char log[32];
    snprintf(log, sizeof(log), "broker-%d", ++c->broker_inc);
    c->broker = h_start_broker(log);
}

static void new_learner(chaos_t *c, int steps, int ckpt_every)
{
    snprintf(c->learner_log, sizeof(c->learner_log), "learner-%d", ++c->learner_inc);
    c->learner = h_start_learner(c->learner_log, steps, ckpt_every, NULL);
}

static void tail_logs(chaos_t *c, char *out, size_t outlen)
{
    size_t o = 0;
    const char *names[MAX_ACTORS + 2];
    int n = 0;
    names[n++] = c->learner_log;
    for (int i = 0; i < c->n_actors; i++)
        names[n++] = c->actors[i].log;
    for (int i = 0; i < n && o < outlen; i++) {
        char *l = h_read_log(names[i]);
        size_t len = strlen(l);
        const char *t = len > 1500 ? l + len - 1500 : l;
        o += (size_t)snprintf(out + o, outlen - o, "\n--- %s.log (tail) ---\n%s", names[i], t);
        free(l);
    }
}

/* Waits until the learner's metrics reach step `target` (or it exits). */
static void wait_step(chaos_t *c, int target, double stall_s)
{
    double t0 = h_now();
    int last = -1;
    for (;;) {
        int s = h_last_step();
        if (s >= target || h_reaped(c->learner))
            return;
        if (s != last) {
            last = s;
            t0 = h_now();
        }
        if (h_now() - t0 > stall_s) {
            static char tails[16384];
            tail_logs(c, tails, sizeof(tails));
            cr_assert_fail("HANG: no learner step for %.0f s (at step %d, waiting for %d)%s",
                           stall_s, s, target, tails);
        }
        h_sleep_ms(25);
    }
}

static void fault_actor(chaos_t *c, rng_t *r)
{
    int i = (int)rng_below(r, (uint64_t)c->n_actors);
    h_signal(c->actors[i].pid, SIGKILL);
    /* half the replacements reuse the id (a restarted actor), half are new */
    char id[32];
    snprintf(id, sizeof(id), "%s", c->actors[i].id);
    new_actor(c, i, rng_below(r, 2) ? id : NULL);
    c->actor_kills++;
}

static void fault_broker(chaos_t *c, rng_t *r)
{
    h_signal(c->broker, SIGKILL);
    h_sleep_ms((int)rng_below(r, 300));
    new_broker(c);
    c->broker_restarts++;
}

/* SIGKILL the learner (only once a checkpoint exists: before it a
 * restart starts the run over), count what it loses, resume it. */
static void fault_learner(chaos_t *c, int steps, int ckpt_every, double stall_s)
{
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/latest/trainer.json", H.dir);
    double t0 = h_now();
    while (access(p, R_OK) != 0) {
        cr_assert_lt(h_now() - t0, stall_s, "no checkpoint within %.0f s", stall_s);
        if (h_reaped(c->learner))
            return;
        h_sleep_ms(20);
    }
    h_signal(c->learner, SIGKILL);
    long ck_step;
    double ck_pos;
    cr_assert_eq(h_ckpt_position("latest", &ck_step, &ck_pos), 0, "latest checkpoint unreadable");
    cr_assert_geq(ck_pos, c->ckpt_pos_seen, "data position went back: %g after %g", ck_pos,
                  c->ckpt_pos_seen);
    c->ckpt_pos_seen = ck_pos;
    /* what this learner did after the checkpoint the next one resumes from */
    logpos_t ck = ckpt_logpos("latest");
    logpos_t from = pos_lt(ck, c->inc_start) ? c->inc_start : ck;
    logcount_t dead = count_log(from, (logpos_t){UINT32_MAX, 0});
    c->lost_with_learner += dead.received;
    c->redone_used += dead.used;
    c->redone_steps += dead.steps;
    c->lost_dropped_after_accept += dead.dropped;
    c->inc_start = dead.end;
    fprintf(stderr, "chaos: learner #%d killed: resumes from step %ld; %llu groups accepted after that "
                "checkpoint are lost with it, %llu steps redone\n",
                c->learner_inc, ck_step, dead.received, dead.steps);
    new_learner(c, steps, ckpt_every);
    char want[96];
    snprintf(want, sizeof(want), "at step %ld (version %ld", ck_step, ck_step + 1);
    h_wait_log(c->learner_log, want, stall_s);
    c->learner_restarts++;
}

Test(chaos, kill_actors_broker_learner_run_completes, .fini = fini)
{
    const int n_faults = (int)env_long("CRL_CHAOS_FAULTS", 12);
    const int gap = (int)env_long("CRL_CHAOS_GAP", 3);
    const int n_act = (int)env_long("CRL_CHAOS_ACTORS", 3);
    const double stall_s = (double)env_long("CRL_CHAOS_STALL_S", 60);
    uint64_t seed = (uint64_t)env_long("CRL_CHAOS_SEED", (long)time(NULL));
    cr_assert(n_act >= 1 && n_act <= MAX_ACTORS, "CRL_CHAOS_ACTORS in [1, %d]", MAX_ACTORS);
    /* a learner restart redoes up to rl.checkpoint_every steps: one more
     * step per fault keeps every fault inside the run */
    const int steps = n_faults * (gap + 1) + 2 * gap;
    const int ckpt_every = 2;
    const int max_staleness = 2; /* the default of rl.max_staleness */
    h_setup("chaos");
    rng_t r;
    rng_seed(&r, seed);
    fprintf(stderr, "chaos: seed %" PRIu64 " (CRL_CHAOS_SEED), %d faults every %d steps, %d actors, "
                    "%d steps, folder %s\n", seed, n_faults, gap, n_act, steps, H.dir);
    double t_start = h_now();

    static chaos_t C;
    memset(&C, 0, sizeof(C));
    C.n_actors = n_act;
    new_learner(&C, steps, ckpt_every);
    for (int i = 0; i < n_act; i++)
        new_actor(&C, i, NULL);
    new_broker(&C);

    /* The short run covers every kind: A B L A L B A A, then random. */
    static const char plan[] = "ABLALBAA";
    for (int f = 0; f < n_faults; f++) {
        int target = h_last_step() + gap;
        wait_step(&C, target, stall_s);
        if (h_reaped(C.learner))
            break; /* finished early (or died: checked below) */
        char kind = f < (int)sizeof(plan) - 1 ? plan[f] : "AAABBLL"[rng_below(&r, 7)];
        if (kind == 'A')
            fault_actor(&C, &r);
        else if (kind == 'B')
            fault_broker(&C, &r);
        else
            fault_learner(&C, steps, ckpt_every, stall_s);
    }
    /* calm: the run finishes */
    wait_step(&C, steps, stall_s);
    int rc = h_wait_exit(C.learner, stall_s);
    char *l = h_read_log(C.learner_log);
    cr_assert_eq(rc, 0, "the last learner exited with %d; its log:\n%s", rc, l);
    free(l);
    h_signal(C.broker, SIGTERM);
    cr_assert_eq(h_wait_exit(C.broker, 20), 0, "broker did not exit 0 on SIGTERM");
    char left[2048];
    /* Actors leave on the learner's final Bye; one that missed it (it was
     * reconnecting or fetching at that moment) is stopped with SIGTERM, as
     * launch/local.sh does at the end of a run, and must then exit. */
    int n_term = h_stop_stragglers(15, left, sizeof(left));
    if (n_term > 0)
        fprintf(stderr, "[note] chaos: %d actor(s) still running 15 s after the run ended, stopped with SIGTERM:%s\n",
                    n_term, left);
    int n_left = h_leftovers(30, left, sizeof(left));
    cr_assert_eq(n_left, 0, "%d processes left running after the run (even after SIGTERM):%s", n_left, left);

    /* 1. training reached its step count; the steps continue across
     * restarts (the lines after a checkpoint are rewritten by the resumed
     * learner): exactly 1..steps, none skipped, none doubled */
    static int st[100000];
    int n = h_metrics_steps(st, 100000);
    cr_assert_eq(n, steps, "metrics.jsonl has %d lines, expected %d", n, steps);
    for (int i = 0; i < n; i++)
        cr_assert_eq(st[i], i + 1, "metrics line %d is step %d (expected %d)", i + 1, st[i], i + 1);
    long fstep;
    double fpos;
    cr_assert_eq(h_ckpt_position("latest", &fstep, &fpos), 0);
    cr_assert_eq(fstep, steps, "final checkpoint at step %ld, expected %d", fstep, steps);
    cr_assert_geq(fpos, C.ckpt_pos_seen, "data position %g went back from %g", fpos,
                 C.ckpt_pos_seen);

    /* 2. staleness within rl.max_staleness on every step */
    char mp[700];
    snprintf(mp, sizeof(mp), "%s/runs/it/metrics.jsonl", H.dir);
    char *ms = h_read_file(mp);
    double worst_stale = 0;
    int line_no = 0;
    for (char *line = strtok(ms, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *o = cJSON_Parse(line);
        line_no++;
        cr_assert_not_null(o, "metrics line %d is not JSON: %s", line_no, line);
        const cJSON *sm = cJSON_GetObjectItem(o, "staleness_max");
        cr_assert(cJSON_IsNumber(sm), "metrics line %d has no staleness_max", line_no);
        if (sm->valuedouble > worst_stale)
            worst_stale = sm->valuedouble;
        cr_assert_leq(sm->valuedouble, max_staleness, "step %d: staleness_max %g > %d", line_no,
                      sm->valuedouble, max_staleness);
        cJSON_Delete(o);
    }
    free(ms);

    /* 3. accounting */
    h_acct_t a = h_accounting(C.learner_log);
    cr_assert(a.found, "no accounting line in %s.log", C.learner_log);
    cr_assert(a.balanced, "the last learner's accounting does not balance: received %llu used %llu "
              "dropped %llu", a.received, a.used, a.dropped);
    cr_assert_eq(a.used, (unsigned long long)steps * 2, "used %llu groups, expected %d x 2", a.used,
                 steps);
    logcount_t all = count_log((logpos_t){0, 0}, (logpos_t){UINT32_MAX, 0});
    /* In the log: every accepted group has a GroupReceived record. The
     * final learner's chain accounts for those written before each
     * checkpoint it (transitively) resumed from; the rest were lost with
     * a killed learner (counted at each kill). */
    unsigned long long log_used = all.used - C.redone_used;
    cr_assert_eq(log_used, a.used, "log: %llu USED outcomes (%llu of them in redone steps), the "
                 "learner used %llu", all.used, C.redone_used, a.used);
    /* The final checkpoint's counters split the drops into those at
     * arrival (never accepted, not in the log) and those after acceptance
     * (stale, or shutdown: queued when a learner stopped or crashed). */
    unsigned long long accepted = 0, after_accept = 0;
    {
        char p[700];
        snprintf(p, sizeof(p), "%s/runs/it/ckpt/latest/trainer.json", H.dir);
        char *s = h_read_file(p);
        cJSON *o = s ? cJSON_Parse(s) : NULL;
        free(s);
        const cJSON *cn = cJSON_GetObjectItem(o, "counters");
        const cJSON *ga = cJSON_GetObjectItem(cn, "groups_accepted");
        const cJSON *da = cJSON_GetObjectItem(cn, "dropped_after_accept");
        cr_assert(cJSON_IsNumber(ga) && cJSON_IsObject(da), "%s: no counters", p);
        accepted = (unsigned long long)ga->valuedouble;
        for (const cJSON *e = da->child; e; e = e->next)
            after_accept += (unsigned long long)e->valuedouble;
        cJSON_Delete(o);
    }
    cr_assert_eq(accepted, a.used + after_accept, "final checkpoint: %llu accepted, %llu used + %llu "
                 "dropped after acceptance", accepted, a.used, after_accept);
    unsigned long long accepted_chain = all.received - C.lost_with_learner;
    cr_assert_eq(accepted_chain, accepted,
                 "log: %llu groups accepted (%llu more lost with killed learners); the learners' "
                 "counters say %llu", accepted_chain, C.lost_with_learner, accepted);

    double secs = h_now() - t_start;
    char drops[512] = "";
    size_t dl = 0;
    for (int k = 1; k < H_N_REASONS; k++)
        if (a.by_reason[k])
            dl += (size_t)snprintf(drops + dl, sizeof(drops) - dl, " %s=%llu", h_reason_names[k],
                                   a.by_reason[k]);
    fprintf(stderr,
            "chaos: %d steps in %.1f s (seed %" PRIu64 "): survived %d actor kills, %d broker "
            "restarts, %d learner restarts\n"
            "chaos: groups completed (received by a learner) = %llu: used %llu, dropped %llu (%s ), "
            "lost with killed learners %llu (their prompts re-granted; %llu steps redone)\n"
            "chaos: grants issued %llu, re-granted %llu, lost with actors %llu; staleness_max %g "
            "<= %d; no process left running\n",
            steps, secs, seed, C.actor_kills, C.broker_restarts, C.learner_restarts,
            a.received + C.lost_with_learner, a.used, a.dropped, dl ? drops : " none",
            C.lost_with_learner, C.redone_steps, a.issued, a.regranted, a.lost, worst_stale,
            max_staleness);
    if (n_faults >= 8) {
        cr_assert_geq(C.actor_kills, 1, "no actor was killed");
        cr_assert_geq(C.broker_restarts, 1, "the broker was never restarted");
        cr_assert_geq(C.learner_restarts, 1, "the learner was never restarted");
    }
}

/* ------------------------------------------------------------ no hangs */

/* The learner is stopped (SIGSTOP) under running actors: each actor says
 * what it waits for and since when, and carries on when the learner
 * continues (SIGCONT); the run finishes with every group accounted for. */
Test(chaos, sigstop_learner_actors_wait_and_resume, .fini = fini)
{
    h_setup("stop");
    const int steps = 12;
    pid_t lp = h_start_learner("learner", steps, 0, NULL);
    h_start_actor("s1", "s1");
    h_start_actor("s2", "s2");
    pid_t bp = h_start_broker("broker");
    double t0 = h_now();
    while (h_last_step() < 2) {
        cr_assert_lt(h_now() - t0, 60, "no step within 60 s");
        cr_assert(!h_reaped(lp), "learner exited early");
        h_sleep_ms(20);
    }
    cr_assert(h_last_step() < steps, "the run finished before the learner could be stopped");
    kill(lp, SIGSTOP);
    double stopped_at = h_now();
    /* heartbeat timeout 1 s: both actors must say so within a few seconds */
    h_wait_log("s1", "waiting for learner at ", 15);
    h_wait_log("s2", "waiting for learner at ", 15);
    char *l1 = h_read_log("s1");
    const char *w = strstr(l1, "waiting for learner at ");
    cr_assert(w && strstr(w, " since "), "the wait line does not say since when: %s", w ? w : "");
    free(l1);
    int stopped_step = h_last_step();
    h_sleep_ms(1500);
    cr_assert_eq(h_last_step(), stopped_step, "steps advanced while the learner was stopped");
    kill(lp, SIGCONT);
    double waited = h_now() - stopped_at;
    h_wait_log("s1", "is back", 20);
    h_wait_log("s2", "is back", 20);
    int rc = h_wait_exit(lp, 90);
    char *l = h_read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d after SIGCONT; log:\n%s", rc, l);
    free(l);
    int st[64];
    int n = h_metrics_steps(st, 64);
    cr_assert_eq(n, steps, "metrics.jsonl has %d lines, expected %d", n, steps);
    h_acct_t a = h_accounting("learner");
    cr_assert(a.balanced, "accounting does not balance");
    cr_assert_eq(a.used, (unsigned long long)steps * 2);
    h_signal(bp, SIGTERM);
    cr_assert_eq(h_wait_exit(bp, 20), 0);
    char left[1024];
    int n_left = h_leftovers(30, left, sizeof(left));
    cr_assert_eq(n_left, 0, "%d processes left running:%s", n_left, left);
    fprintf(stderr, "chaos/sigstop: learner stopped %.1f s; both actors logged the wait and resumed; "
                    "%d steps, %llu groups used, %llu dropped\n",
            waited, steps, a.used, a.dropped);
}
