/* bench_e2e: the table of the end-to-end benchmark (tests/bench/e2e.sh runs
 * the broker, learner and actors with launch/local.sh; this reads what the
 * learner wrote). For each run ROOT/e2e-N (N actors): the learner's
 * metrics.jsonl without step 1 (it includes start-up: the actors' first
 * weights fetch and first groups), so samples/s and idle are steady-state
 * figures; beside them the learner's own whole-run summary line
 * ("compute: N steps in X s, idle P% of the time, S samples/s"). Called by
 * crl-bench; no main here. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bench_e2e_report(const char *root, FILE *json);

typedef struct {
    int ok;
    int steps;           /* steady-state steps counted */
    double wall_s;       /* their step_s sum */
    double samples;      /* their samples */
    double idle_s;       /* their idle seconds */
    double update_s;     /* their update_s sum */
    double resp_len;     /* their mean response length (tokens) */
    int live_actors;     /* at the last step */
    /* the learner's summary line (whole run, step 1 included) */
    int sum_steps;
    double sum_wall, sum_idle_pct, sum_sps;
    char model[256];
} e2e_run_t;

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void e2e_read(const char *root, int actors, e2e_run_t *r)
{
    char path[4096];
    memset(r, 0, sizeof *r);
    snprintf(path, sizeof path, "%s/e2e-%d/metrics.jsonl", root, actors);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "bench e2e: %s is missing (the run failed; see its logs)\n", path);
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    double len_sum = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *o = cJSON_Parse(line);
        if (!o)
            continue;
        double step = num(o, "step"), wall = num(o, "step_s"), idle = num(o, "idle_fraction"),
               sps = num(o, "samples_per_s"), up = num(o, "update_s"), len = num(o, "response_len"),
               live = num(o, "live_actors");
        if (step >= 2 && isfinite(wall) && isfinite(idle) && isfinite(sps) && isfinite(up)) {
            r->steps++;
            r->wall_s += wall;
            r->samples += sps * wall;
            r->idle_s += idle * wall;
            r->update_s += up;
            len_sum += isfinite(len) ? len : 0;
            r->live_actors = isfinite(live) ? (int)live : 0;
        }
        cJSON_Delete(o);
    }
    fclose(f);
    r->resp_len = r->steps ? len_sum / r->steps : 0;
    r->ok = r->steps > 0 && r->wall_s > 0;
    snprintf(path, sizeof path, "%s/e2e-%d/logs/learner.log", root, actors);
    f = fopen(path, "r");
    while (f && getline(&line, &cap, f) > 0) {
        const char *c = strstr(line, "compute: ");
        if (c)
            sscanf(c, "compute: %d steps in %lf s, idle %lf%% of the time, %lf samples/s", &r->sum_steps,
                   &r->sum_wall, &r->sum_idle_pct, &r->sum_sps);
        const char *m = strstr(line, "initial policy ");
        if (m) {
            const char *p = strchr(m, ':');
            if (p) {
                snprintf(r->model, sizeof r->model, "%s", p + 2);
                r->model[strcspn(r->model, "\n")] = '\0';
            }
        }
    }
    if (f)
        fclose(f);
    free(line);
}

int bench_e2e_report(const char *root, FILE *json)
{
    e2e_run_t run[2];
    e2e_read(root, 1, &run[0]);
    e2e_read(root, 2, &run[1]);
    printf("\nend-to-end RL: launch/local.sh (broker + learner + N actors) with launch/demo.json: 8 groups\n"
           "x G=8 = 64 samples per step, max_new_tokens 64, 1 thread per process; an untrained model%s\n"
           "%s\n",
           run[0].model[0] ? ":" : "", run[0].model);
    printf("steady state = steps 2..N of metrics.jsonl (step 1 includes start-up); the learner's own\n"
           "whole-run summary line on the right\n");
    printf("  %6s %10s %8s %12s %12s %9s %8s | %s\n", "actors", "samples/s", "idle %", "wall s/step",
           "update s", "resp len", "vs 1", "learner summary");
    for (int i = 0; i < 2; i++) {
        const e2e_run_t *r = &run[i];
        if (!r->ok) {
            printf("  %6d %10s (see its log: the run folder e2e-%d)\n", i + 1, "FAILED", i + 1);
            continue;
        }
        double sps = r->samples / r->wall_s, idle = 100 * r->idle_s / r->wall_s;
        double base = run[0].ok ? run[0].samples / run[0].wall_s : NAN;
        printf("  %6d %10.1f %8.0f %12.2f %12.2f %9.1f %7.2fx | %d steps, %.1f samples/s, idle %.0f%%\n",
               i + 1, sps, idle, r->wall_s / r->steps, r->update_s / r->steps, r->resp_len,
               sps / base, r->sum_steps, r->sum_sps, r->sum_idle_pct);
        if (json) {
            fprintf(json,
                    "{\"impl\":\"crl\",\"workload\":\"e2e\",\"actors\":%d,\"samples_per_s\":%.2f,"
                    "\"idle_pct\":%.1f,\"wall_s_per_step\":%.3f,\"update_s_per_step\":%.3f,\"steps\":%d}\n",
                    i + 1, sps, idle, r->wall_s / r->steps, r->update_s / r->steps, r->steps);
            fflush(json);
        }
    }
    if (run[0].ok)
        printf("  reference: RECIPE.md, PyTorch on this machine: GRPO step (64 samples) 0.8 s critic, 0.5 s\n"
               "  policy | crl learner update (critic, 64 samples, full backward): %.2f s\n",
               run[0].update_s / run[0].steps);
    if (run[0].ok && 100 * run[0].idle_s / run[0].wall_s < 10)
        printf("  the learner is idle < 10%% of the time with 1 actor: its update, not the actors' sampling,\n"
               "  limits samples/s at this model size\n");
    printf("  note: this machine has 2 cores: 1 actor + learner fill them, 2 actors + learner\n"
           "  oversubscribe them (3 busy processes), so the 2-actor row measures contention as much as\n"
           "  scaling. A fresh model's rewards are all 0, so rl.skip_zero_variance=false keeps the\n"
           "  learner's full backward pass on every group (an upper bound of a trained model's step).\n");
    fflush(stdout);
    return run[0].ok && run[1].ok ? 0 : -1;
}
