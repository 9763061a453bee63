/* Integration tests of the distributed system: crl-broker, crl-learner rl
 * and crl-actor as separate processes on 127.0.0.1, with a tiny model
 * (dim 32, 2 layers, 16 px images in 8 px patches, vocab 300) and a tiny
 * built-in world made in the test's temporary folder (tests/harness.h).
 * The binaries come from $CRL_BIN_DIR (`make test` sets it to build/bin);
 * without it the tests are skipped. Every process a test starts is killed
 * when it ends (and dies with the test process: PR_SET_PDEATHSIG). */
#include "harness.h"

/* ------------------------------------------------------------ harness */

static void fini(void) { h_kill_all(); }

/* The tiny world of tests/harness.h, with the endpoints on 127.0.0.1. */
static void setup(const char *name)
{
    char full[64];
    snprintf(full, sizeof(full), "it-%s", name);
    const h_opts_t o = {.endpoints = H_EPS_TCP};
    h_setup_opts(full, &o);
}

/* ------------------------------------------------------------ tests */

/* a) broker + learner + 2 actors for 4 steps: exits 0, every group an
 * actor completed is accounted for, the last version reaches every actor. */
Test(integration, two_actors_four_steps_accounted, .fini = fini, .timeout = 120)
{
    setup("a");
    static const char *const ids[] = {"a1", "a2"};
    pid_t lp = h_start_job("learner", 4, 0, ids, NULL, 2);
    int rc = h_wait_exit(lp, 60);
    char *l = h_read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    free(l);
    h_acct_t a = h_learner_accounting("learner");
    cr_assert(a.balanced, "accounting does not balance");
    cr_assert_eq(a.used + a.dropped, a.received, "used %llu + dropped %llu != received %llu",
                 a.used, a.dropped, a.received);
    cr_assert_eq(a.used, 8, "4 steps x 2 groups used, got %llu", a.used);
    unsigned long long total_sent = 0;
    for (int i = 0; i < 2; i++) {
        /* the actors stop on the learner's Bye(finished) and print their
         * final counters */
        h_wait_log(ids[i], "final: groups generated=", 20);
        pid_t ap = h_pid_of(ids[i]);
        if (ap > 0) {
            int arc = h_wait_exit(ap, 10);
            if (arc == -1) /* the actor's business, not the learner's: say so */
                fprintf(stderr, "[note] actor %s printed its final counters but had not exited 10 s later\n",
                            ids[i]);
            else
                cr_assert_eq(arc, 0, "actor %s exited with %d", ids[i], arc);
        }
        unsigned long long sent, ver;
        h_actor_final(ids[i], &sent, &ver, NULL);
        total_sent += sent;
        cr_assert_eq(ver, 5, "actor %s ended at version %llu, the last is 5", ids[i], ver);
    }
    cr_assert_eq(total_sent, a.received, "actors sent %llu groups, the learner received %llu",
                 total_sent, a.received);
    int steps[64];
    int n = h_metrics_steps(steps, 64);
    cr_assert_eq(n, 4, "metrics.jsonl has %d lines, expected 4", n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(steps[i], i + 1);
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/latest/trainer.json", H.dir);
    cr_assert_eq(access(p, R_OK), 0, "no final checkpoint %s", p);
    snprintf(p, sizeof(p), "%s/runs/it/ref/model.safetensors", H.dir);
    cr_assert_eq(access(p, R_OK), 0, "no reference model %s", p);
}

/* b) an actor killed (SIGKILL) mid-run: its grants are re-granted after
 * the heartbeat timeout and the run still finishes. */
Test(integration, killed_actor_grants_are_regranted, .fini = fini, .timeout = 120)
{
    setup("b");
    h_start_broker("broker");
    pid_t a1 = h_start_actor("a1", "a1");
    pid_t lp = h_start_learner("learner", 8, 0, NULL);
    /* a1 alone: once a step is done it holds grants (the learner keeps it busy) */
    int steps[64];
    double t0 = h_now();
    while (h_metrics_steps(steps, 64) < 1) {
        cr_assert_lt(h_now() - t0, 40, "no step within 40 s");
        cr_assert_eq(h_wait_exit(lp, 0), -1, "learner exited early");
        h_sleep_ms(20);
    }
    kill(a1, SIGKILL);
    cr_assert_eq(h_wait_exit(a1, 5), 128 + SIGKILL);
    /* nobody works until the learner gives a1 up; then a2 must get a1's
     * prompts first */
    h_wait_log("learner", "actor a1 silent for more than", 20);
    h_start_actor("a2", "a2");
    int rc = h_wait_exit(lp, 60);
    char *l = h_read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    free(l);
    h_acct_t a = h_learner_accounting("learner");
    cr_assert(a.balanced, "accounting does not balance");
    cr_assert_geq(a.lost, 1, "a1 held no grant when killed (lost %llu)", a.lost);
    cr_assert_geq(a.regranted, 1, "no grant was re-granted (lost %llu)", a.lost);
    cr_assert_eq(a.used, 16, "8 steps x 2 groups, got %llu", a.used);
    int n = h_metrics_steps(steps, 64);
    cr_assert_eq(n, 8);
}

/* (step, data position) of a checkpoint's trainer.json. */
static void ckpt_position(const char *which, long *step, double *pos)
{
    cr_assert_eq(h_ckpt_position(which, step, pos), 0,
                 "cannot read %s/runs/it/ckpt/%s/trainer.json", H.dir, which);
}

/* c) a learner stopped (SIGTERM) after its first checkpoint and restarted
 * continues at the right step and data position. */
Test(integration, learner_restart_continues, .fini = fini, .timeout = 120)
{
    setup("c");
    static const char *const ids[] = {"a1", "a2"};
    pid_t lp = h_start_job("learner1", 10, 2, ids, NULL, 2);
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/ckpt/step-2/trainer.json", H.dir);
    double t0 = h_now();
    while (access(p, R_OK) != 0) {
        cr_assert_lt(h_now() - t0, 40, "no checkpoint within 40 s");
        cr_assert_eq(h_wait_exit(lp, 0), -1, "learner exited before its first checkpoint");
        h_sleep_ms(10);
    }
    kill(lp, SIGTERM);
    int rc = h_wait_exit(lp, 30);
    char *l = h_read_log("learner1");
    cr_assert_eq(rc, 0, "SIGTERM: learner exited with %d; log:\n%s", rc, l);
    free(l);
    long step1;
    double pos1;
    ckpt_position("latest", &step1, &pos1);
    cr_assert_geq(step1, 2, "stopped learner's checkpoint is at step %ld", step1);
    cr_assert_lt(step1, 10, "the learner finished before SIGTERM arrived (step %ld)", step1);
    cr_assert_gt(pos1, 0, "data position not saved");
    int steps[64];
    int n1 = h_metrics_steps(steps, 64);
    cr_assert_geq(n1, step1, "metrics lines %d < checkpoint step %ld", n1, step1);

    lp = h_start_learner("learner2", 10, 2, NULL);
    rc = h_wait_exit(lp, 60);
    l = h_read_log("learner2");
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
    int n = h_metrics_steps(steps, 64);
    cr_assert_eq(n, 10, "metrics.jsonl has %d lines, expected 10 (no step repeated or skipped)", n);
    for (int i = 0; i < n; i++)
        cr_assert_eq(steps[i], i + 1, "metrics line %d is step %d", i, steps[i]);
    h_acct_t a = h_learner_accounting("learner2");
    cr_assert(a.balanced, "accounting over both processes does not balance");
    cr_assert_eq(a.used, 20);
}

/* d) on-policy check: for groups generated at the learner's current
 * version, the learner's recomputed log-probs equal the actors' behaviour
 * log-probs (max |logp_prox - logp_behav| <= 1e-5). */
Test(integration, onpolicy_logprobs_match_actors, .fini = fini, .timeout = 120)
{
    setup("d");
    h_start_broker("broker");
    h_start_actor("a1", "a1");
    /* every group enters the loss (random model: rewards are mostly equal) */
    const char *extra[] = {"rl.skip_zero_variance=false", "rl.max_staleness=0", NULL};
    pid_t lp = h_start_learner("learner", 3, 0, extra);
    int rc = h_wait_exit(lp, 60);
    char *l = h_read_log("learner");
    cr_assert_eq(rc, 0, "learner exited with %d; log:\n%s", rc, l);
    free(l);
    char p[700];
    snprintf(p, sizeof(p), "%s/runs/it/metrics.jsonl", H.dir);
    char *s = h_read_file(p);
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
