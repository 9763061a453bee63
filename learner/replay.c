/* crl-learner replay: trains from a recorded trajectory log instead of live
 * actors (DESIGN.md §7, issue 5), to debug a run step by step.
 *
 * A live update is a pure function of (weights, optimizer state, the groups
 * in the order its StepMarker lists, the config), so the replay starts from
 * a checkpoint of the run (or its initial policy), walks the log's
 * StepMarkers in order and, for each, takes exactly the listed groups from
 * their GroupReceived records, scores them with grpo_score_group and calls
 * grpo_step — the same calls, in the same order, as learner/rl.c's compute
 * thread. With the same config (rl.micro_batch_tokens and learner.threads
 * included: they fix the summation order) the weights then equal the live
 * run's bit for bit after every step, which each marker's weights_crc32c
 * lets it check as it goes.
 *
 * The log is read through replay_index (its checks, corrupt regions and
 * StepMarker positions) and one more pass that keeps, per group key, where
 * each GroupReceived is and the scores of each USED GroupOutcome; token
 * data is read back record by record when a step needs it, so memory stays
 * small. A StepMarker names its groups by key and by the position of their
 * GroupReceived records: keys can repeat (an actor restarted under the same
 * id numbers its groups from 1 again), positions cannot. A step redone
 * after a crash and resume has a second StepMarker later in the log: a
 * marker for step N supersedes every earlier marker for steps >= N (the
 * resumed process started again from a checkpoint of step N - 1).
 *
 * Outputs go to <parent of the run folder>/<--out>/: config.json,
 * metrics.jsonl (the live fields that a replay can compute, plus the
 * weights hashes) and, at the end, ckpt/step-N/ (model, optimizer,
 * tokenizer, run_config.json, trainer.json) that --from accepts again. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "config.h"
#include "crc32c.h"
#include "grpo.h"
#include "kernels.h"
#include "learner.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "proto/crl.pb-c.h"
#include "replay_index.h"
#include "rng.h"
#include "tokenizer.h"
#include "traj_log.h"

#define RP_TRAINER_FORMAT "crl-replay-trainer"
#define RP_TRAINER_VERSION 1
#define RP_RL_TRAINER_FORMAT "crl-rl-trainer" /* learner/rl.c's checkpoints */
#define RP_MAX_NOTES 20                      /* per-step detail lines printed at most */
#define RP_MAX_LOG_PROBLEMS 5                /* problems of the log check shown */
#define RP_PATH 2048

/* Config keys that change what an update computes (grpo.c and reward.c
 * read these): a replay with another value cannot reproduce the run.
 * learner.threads is handled apart (a warning: it changes bits, not
 * meaning). */
static const char *const RP_STEP_KEYS[] = {
    "rl.group_size",  "rl.groups_per_step", "rl.temperature",       "rl.is_cap",
    "rl.clip_low",    "rl.clip_high",       "rl.dual_clip",         "rl.kl_coef",
    "rl.lr",          "rl.weight_decay",    "rl.grad_clip",         "rl.reward_w_pref",
    "rl.reward_w_format", "rl.skip_zero_variance", "rl.micro_batch_tokens",
    "data.verdict_labels",
};

/* ------------------------------------------------------------ helpers */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* dst = path without its last component ("." when there is none); trailing
 * slashes are ignored. */
static void parent_of(const char *path, char *dst, size_t len)
{
    char tmp[RP_PATH];
    textf(tmp, sizeof(tmp), "%s", path);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/')
        tmp[--n] = '\0';
    char *slash = strrchr(tmp, '/');
    if (!slash)
        textf(dst, len, ".");
    else if (slash == tmp)
        textf(dst, len, "/");
    else {
        *slash = '\0';
        textf(dst, len, "%s", tmp);
    }
}

static void base_of(const char *path, char *dst, size_t len)
{
    char tmp[RP_PATH];
    textf(tmp, sizeof(tmp), "%s", path);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/')
        tmp[--n] = '\0';
    const char *slash = strrchr(tmp, '/');
    textf(dst, len, "%s", slash ? slash + 1 : tmp);
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
        errf(err, errlen, "%s: %s", path, buf ? "too large" : "out of memory");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static int fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* Removes a folder of plain files (a leftover temporary checkpoint). */
static int remove_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *e;
    char p[RP_PATH];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        textf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    return rmdir(dir) == 0 ? 0 : -errno;
}

static const char *crc_text(uint32_t c, char *buf)
{
    textf(buf, 11, "0x%08x", c);
    return buf;
}

/* "A:B", "A:", ":B" or "A" (steps are >= 1). 0 or -EINVAL. */
static int parse_range(const char *s, uint64_t *a, int *a_set, uint64_t *b, int *b_set)
{
    *a_set = *b_set = 0;
    const char *colon = strchr(s, ':');
    char lo[32] = "", hi[32] = "";
    if (colon) {
        size_t n = (size_t)(colon - s);
        if (n >= sizeof(lo) || strlen(colon + 1) >= sizeof(hi))
            return -EINVAL;
        memcpy(lo, s, n);
        lo[n] = '\0';
        textf(hi, sizeof(hi), "%s", colon + 1);
    } else {
        if (strlen(s) >= sizeof(lo))
            return -EINVAL;
        textf(lo, sizeof(lo), "%s", s);
        textf(hi, sizeof(hi), "%s", s);
    }
    const char *parts[2] = {lo, hi};
    uint64_t *vals[2] = {a, b};
    int *sets[2] = {a_set, b_set};
    for (int k = 0; k < 2; k++) {
        if (!parts[k][0])
            continue;
        char *end = NULL;
        errno = 0;
        if (parts[k][0] == '-')
            return -EINVAL;
        unsigned long long v = strtoull(parts[k], &end, 10);
        if (errno || !end || *end || v == 0)
            return -EINVAL;
        *vals[k] = (uint64_t)v;
        *sets[k] = 1;
    }
    if (!*a_set && !*b_set)
        return -EINVAL;
    if (*a_set && *b_set && *a > *b)
        return -EINVAL;
    return 0;
}

/* ------------------------------------------------------------ state */

typedef struct {
    const char *log;
    const char *from;
    const char *out;
    uint64_t a, b;
    int a_set, b_set;
    int verify;
    int keep_going;
    int skip_corrupt;
    int checkpoint;
    int allow_config_diff;
} rp_args_t;

/* Where a group was received. Keys are not unique in a log (an actor
 * restarted under the same id numbers its groups from 1 again, and a
 * group re-sent to a restarted learner is logged twice), so every
 * occurrence is kept, in log order within a key. */
typedef struct rp_rx {
    char *actor;              /* owned */
    uint64_t gid;
    uint32_t file;
    uint64_t off;
} rp_rx_t;

/* A USED GroupOutcome: the live scores of one group at one step. */
typedef struct rp_out {
    char *actor;              /* owned */
    uint64_t gid, step;
    uint32_t item;
    uint32_t file;
    uint64_t off;
    float *scores;            /* (4, G) rewards, preference, format, advantages; owned */
} rp_out_t;

/* One group of the step being replayed: its decoded GroupReceived record
 * and the row views grpo_group_t points into. */
typedef struct {
    Crl__TrajectoryRecord *rec;
    int *prompt_index;        /* (G) */
    int *lens;                /* (G) */
    const int **tok_rows;     /* (G) into rec */
    const float **logp_rows;  /* (G) into rec */
} rp_item_t;

typedef struct {
    rp_args_t args;
    crl_config_t cfg;         /* effective: the run's config.json + --config/--set */
    crl_config_t run_cfg;     /* the run's config.json (when has_run_cfg) */
    int has_run_cfg;
    char run_dir[RP_PATH];    /* the live run's folder (parent of the log folder) */
    char run_name[CONFIG_NAME_LEN];
    char out_dir[RP_PATH];
    char start_dir[RP_PATH];  /* checkpoint the replay starts from */

    replay_index_t *idx;
    traj_log_reader_t *rd;
    size_t *win;              /* (n_win) index steps that count, in log order */
    size_t n_win;
    size_t n_superseded;      /* StepMarkers of redone steps left out */
    struct rp_rx *rx;         /* (n_rx) every GroupReceived: key and position, sorted by key */
    size_t n_rx, cap_rx;
    struct rp_out *outs;      /* (n_out) every USED GroupOutcome, sorted by key */
    size_t n_out, cap_out;

    tokenizer_t *tok;
    model_t *policy, *ref;
    adamw_t *opt;
    grpo_t *grpo;
    rng_t step_rng;
    uint64_t step;            /* updates completed (the checkpoint's step at the start) */
    uint64_t start_step;
    metrics_t *mx;

    int gps, G;
    rp_item_t *items;         /* (gps) */
    grpo_group_t *groups;     /* (gps) */
    float *rewards, *pref, *format, *adv; /* (gps, G) */
    const float **adv_rows;   /* (gps) */

    /* results */
    uint64_t steps_done, hash_match, hash_mismatch, detail_mismatch;
    uint32_t last_crc;
} rp_t;

static void item_clear(rp_item_t *it)
{
    if (it->rec)
        crl__trajectory_record__free_unpacked(it->rec, NULL);
    free(it->prompt_index);
    free(it->lens);
    free(it->tok_rows);
    free(it->logp_rows);
    memset(it, 0, sizeof(*it));
}

static void rp_free(rp_t *r)
{
    if (r->items)
        for (int i = 0; i < r->gps; i++)
            item_clear(&r->items[i]);
    free(r->items);
    free(r->groups);
    free(r->rewards);
    free(r->pref);
    free(r->format);
    free(r->adv);
    free(r->adv_rows);
    free(r->win);
    for (size_t i = 0; i < r->n_rx; i++)
        free(r->rx[i].actor);
    free(r->rx);
    for (size_t i = 0; i < r->n_out; i++) {
        free(r->outs[i].actor);
        free(r->outs[i].scores);
    }
    free(r->outs);
    metrics_close(&r->mx);
    grpo_destroy(&r->grpo);
    adamw_destroy(&r->opt);
    model_destroy(&r->policy);
    model_destroy(&r->ref);
    tok_destroy(&r->tok);
    traj_log_reader_close(&r->rd);
    replay_index_destroy(&r->idx);
}

/* ------------------------------------------------------------ arguments */

static void print_help(void)
{
    printf(
        "usage: crl-learner replay --log RUN_DIR/traj [--from CKPT_DIR] [--out NAME] [--steps A:B]\n"
        "                          [--config FILE] [--set key=value]... [--no-verify-hashes]\n"
        "                          [--keep-going] [--skip-corrupt] [--no-checkpoint]\n"
        "                          [--allow-config-diff] [--help]\n"
        "\n"
        "Trains from a recorded trajectory log instead of live actors: for every StepMarker of\n"
        "the log, in order, takes exactly the groups it lists, scores them and runs the GRPO\n"
        "update, as the live learner did. With the run's config it reproduces the live weights\n"
        "bit for bit, which it checks after every step against the marker's weights crc32c.\n"
        "\n"
        "  --log DIR          the run's trajectory log (runs/NAME/traj); the run folder is its\n"
        "                     parent: its config.json is the base config, ref/ the reference\n"
        "  --from DIR         start from this checkpoint (runs/NAME/ckpt/step-N: model,\n"
        "                     optimizer, trainer.json); default: the run's initial policy\n"
        "                     (rl.init), or with --steps A:B the run's newest checkpoint\n"
        "                     before step A\n"
        "  --out NAME         outputs go to <runs>/NAME/ (default NAME-replay): config.json,\n"
        "                     metrics.jsonl, ckpt/step-N/ at the end\n"
        "  --steps A:B        replay up to step B (A:, :B, A also work); A picks the start\n"
        "  --verify-hashes    compare the weights with the log after every step (default)\n"
        "  --no-verify-hashes do not compare\n"
        "  --keep-going       continue after a mismatch or a step that cannot be formed\n"
        "  --skip-corrupt     read past corrupt records of the log (the steps that needed\n"
        "                     them are reported and cannot match)\n"
        "  --no-checkpoint    write no checkpoint at the end\n"
        "  --allow-config-diff  run even when an update-relevant key differs from the run's\n"
        "                     config.json (a what-if; the hashes will then differ)\n"
        "\n"
        "Bit-identical results need the run's rl.micro_batch_tokens and learner.threads\n"
        "(the OpenBLAS thread count): both come from the run's config.json.\n"
        "Exit status: 0 every replayed step matched (or was not checked), 1 a mismatch or a\n"
        "step that could not be replayed, 2 a usage, config or missing-input error.\n");
}

/* Parses the replay's own options (config options are gone by then). 0,
 * 1 for --help, or -EINVAL with err set. */
static int parse_args(rp_args_t *a, int argc, char **argv, char *err, size_t errlen)
{
    memset(a, 0, sizeof(*a));
    a->verify = 1;
    a->checkpoint = 1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char *val = NULL;
        int takes = !strcmp(s, "--log") || !strcmp(s, "--from") || !strcmp(s, "--out") ||
                    !strcmp(s, "--steps");
        if (takes) {
            if (i + 1 >= argc) {
                errf(err, errlen, "%s needs a value", s);
                return -EINVAL;
            }
            val = argv[++i];
            if (!val[0]) {
                errf(err, errlen, "%s needs a non-empty value", s);
                return -EINVAL;
            }
        }
        if (!strcmp(s, "--help") || !strcmp(s, "-h"))
            return 1;
        else if (!strcmp(s, "--log"))
            a->log = val;
        else if (!strcmp(s, "--from"))
            a->from = val;
        else if (!strcmp(s, "--out")) {
            if (strchr(val, '/') || !strcmp(val, ".") || !strcmp(val, "..") ||
                strlen(val) >= CONFIG_NAME_LEN) {
                errf(err, errlen, "--out %s: give a run name (no '/', at most %d characters)", val,
                     CONFIG_NAME_LEN - 1);
                return -EINVAL;
            }
            a->out = val;
        } else if (!strcmp(s, "--steps")) {
            if (parse_range(val, &a->a, &a->a_set, &a->b, &a->b_set) != 0) {
                errf(err, errlen, "--steps %s: expected A:B, A:, :B or A with 1 <= A <= B", val);
                return -EINVAL;
            }
        } else if (!strcmp(s, "--verify-hashes"))
            a->verify = 1;
        else if (!strcmp(s, "--no-verify-hashes"))
            a->verify = 0;
        else if (!strcmp(s, "--keep-going"))
            a->keep_going = 1;
        else if (!strcmp(s, "--skip-corrupt"))
            a->skip_corrupt = 1;
        else if (!strcmp(s, "--no-checkpoint"))
            a->checkpoint = 0;
        else if (!strcmp(s, "--allow-config-diff"))
            a->allow_config_diff = 1;
        else {
            errf(err, errlen, "unexpected argument '%s' (see crl-learner replay --help)", s);
            return -EINVAL;
        }
    }
    if (!a->log) {
        errf(err, errlen, "--log RUN_DIR/traj is required (see crl-learner replay --help)");
        return -EINVAL;
    }
    return 0;
}

/* The value of --log before config parsing (which needs the run folder
 * first); NULL if absent. */
static const char *find_log_arg(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--log"))
            return argv[i + 1];
    return NULL;
}

/* ------------------------------------------------------------ config */

/* config_parse_args on top of the run's config.json, except for the final
 * validation: a config.json that the live learner wrote may itself fail
 * config_validate (it keeps keys that only other stages use, e.g. a
 * tokenizer.vocab_size above the checkpoint's model.vocab_size), and that
 * must not stop a replay of the run. So problems already in the run's
 * config are warnings; any that the command line adds are errors. Returns
 * 0, 1 for --help-config, or -EINVAL with err set. */
static int apply_config_args(rp_t *r, int *argc, char **argv, char *err, size_t errlen)
{
    int n = *argc, kept = 1, rc = 0;
    const char **files = calloc((size_t)n + 1, sizeof(*files));
    const char **sets = calloc((size_t)n + 1, sizeof(*sets));
    int n_files = 0, n_sets = 0;
    char mine[2048], theirs[2048];
    if (!files || !sets) {
        errf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (int i = 1; i < n; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help-config")) {
            rc = 1;
            goto out;
        }
        if (!strcmp(a, "--config") || !strcmp(a, "--set")) {
            if (i + 1 >= n) {
                errf(err, errlen, "%s needs a value (%s)", a,
                     a[2] == 'c' ? "a JSON file name" : "section.key=value");
                rc = -EINVAL;
                goto out;
            }
            if (a[2] == 'c')
                files[n_files++] = argv[++i];
            else
                sets[n_sets++] = argv[++i];
        } else if (!strncmp(a, "--config=", 9)) {
            files[n_files++] = a + 9;
        } else if (!strncmp(a, "--set=", 6)) {
            sets[n_sets++] = a + 6;
        } else {
            argv[kept++] = argv[i];
        }
    }
    for (int f = 0; f < n_files; f++)
        if ((rc = config_load_file(&r->cfg, files[f], err, errlen)) != 0)
            goto out;
    for (int s = 0; s < n_sets; s++)
        if ((rc = config_set(&r->cfg, sets[s], err, errlen)) != 0)
            goto out;
    if (config_validate(&r->cfg, mine, sizeof(mine)) != 0) {
        int known = r->has_run_cfg && config_validate(&r->run_cfg, theirs, sizeof(theirs)) != 0 &&
                    !strcmp(mine, theirs);
        if (!known) {
            errf(err, errlen, "%s", mine);
            rc = -EINVAL;
            goto out;
        }
        log_warn("%s/config.json does not pass the config checks (%s): ignored, the replay "
                 "uses the model of its checkpoint", r->run_dir, mine);
    }
    *argc = kept;
    argv[kept] = NULL;
out:
    free(files);
    free(sets);
    return rc;
}

/* Update-relevant keys whose value differs from the run's config.json are
 * errors (unless --allow-config-diff); learner.threads is a warning. */
static int check_config(rp_t *r, char *err, size_t errlen)
{
    if (!r->has_run_cfg)
        return 0;
    char mine[256], theirs[256], list[1024] = "";
    size_t ll = 0;
    int n_diff = 0;
    for (size_t k = 0; k < sizeof(RP_STEP_KEYS) / sizeof(RP_STEP_KEYS[0]); k++) {
        if (config_get(&r->cfg, RP_STEP_KEYS[k], mine, sizeof(mine)) != 0 ||
            config_get(&r->run_cfg, RP_STEP_KEYS[k], theirs, sizeof(theirs)) != 0)
            continue;
        if (strcmp(mine, theirs) != 0) {
            n_diff++;
            if (ll < sizeof(list))
                ll += (size_t)textf(list + ll, sizeof(list) - ll, "%s%s = %s (the run had %s)",
                                    n_diff > 1 ? "; " : "", RP_STEP_KEYS[k], mine, theirs);
        }
    }
    if (r->cfg.learner.threads != r->run_cfg.learner.threads)
        log_warn("learner.threads = %d but the run used %d: the OpenBLAS summation order "
                 "differs, so the weights will not match bit for bit", r->cfg.learner.threads,
                 r->run_cfg.learner.threads);
    if (!n_diff)
        return 0;
    if (r->args.allow_config_diff) {
        log_warn("config differs from %s/config.json (--allow-config-diff): %s; the weights "
                 "hashes will not match the live run's", r->run_dir, list);
        return 0;
    }
    errf(err, errlen, "config mismatch with the run's %s/config.json: %s. A replay with another "
         "value cannot reproduce the run; use --allow-config-diff for a what-if", r->run_dir, list);
    return -EINVAL;
}

/* ------------------------------------------------------------ the log */

/* Which StepMarkers count, in log order. A marker for step N supersedes
 * every earlier one for a step >= N: its process resumed from a checkpoint
 * of step N - 1, so what the earlier process did after that is gone. */
static int pick_markers(rp_t *r, char *err, size_t errlen)
{
    size_t n = replay_index_n_steps(r->idx);
    r->win = calloc(n ? n : 1, sizeof(size_t));
    if (!r->win) {
        errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    size_t superseded = 0;
    for (size_t i = 0; i < n; i++) {
        const replay_step_t *s = replay_index_step(r->idx, i);
        while (r->n_win > 0 && replay_index_step(r->idx, r->win[r->n_win - 1])->step >= s->step) {
            const replay_step_t *old = replay_index_step(r->idx, r->win[r->n_win - 1]);
            log_info("log: step %" PRIu64 " was redone after a resume: its StepMarker at "
                     "file %u offset %" PRIu64 " is superseded by the later one at file %u "
                     "offset %" PRIu64, old->step, old->file_index, old->offset,
                     s->file_index, s->offset);
            r->n_win--;
            superseded++;
        }
        r->win[r->n_win++] = i;
    }
    r->n_superseded = superseded;
    if (superseded)
        log_info("log: %zu superseded StepMarker%s (the later marker of a step wins)", superseded,
                 superseded == 1 ? "" : "s");
    return 0;
}

/* Reads the record at (file, off) and decodes it. Caller frees *out with
 * crl__trajectory_record__free_unpacked. 0 or -errno with err naming the
 * position. */
static int read_record_at(rp_t *r, uint32_t file, uint64_t off, Crl__TrajectoryRecord **out,
                          char *err, size_t errlen)
{
    *out = NULL;
    int rc = traj_log_reader_seek(r->rd, file, off);
    if (rc != 0) {
        errf(err, errlen, "%s: cannot seek to file %u offset %" PRIu64 ": %s", r->args.log, file,
             off, traj_log_reader_error(r->rd) ? traj_log_reader_error(r->rd) : strerror(-rc));
        return rc;
    }
    const void *payload;
    size_t len;
    uint32_t f;
    uint64_t o;
    rc = traj_log_next(r->rd, &payload, &len, &f, &o);
    if (rc <= 0) {
        const char *why = traj_log_reader_error(r->rd);
        errf(err, errlen, "%s: cannot read the record at file %u offset %" PRIu64 ": %s",
             r->args.log, file, off, rc == 0 ? "end of log" : why ? why : strerror(-rc));
        return rc == 0 ? -EBADMSG : rc;
    }
    if (f != file || o != off) {
        /* with skip_corrupt the reader resyncs past a bad record: that is
         * not the record the index saw */
        errf(err, errlen, "%s: the record at file %u offset %" PRIu64 " is unreadable", r->args.log,
             file, off);
        return -EBADMSG;
    }
    *out = crl__trajectory_record__unpack(NULL, len, payload);
    if (!*out) {
        errf(err, errlen, "%s: file %u offset %" PRIu64 ": not a TrajectoryRecord", r->args.log,
             file, off);
        return -EBADMSG;
    }
    return 0;
}

/* (file, off) a < b: log order. */
static int pos_before(uint32_t fa, uint64_t oa, uint32_t fb, uint64_t ob)
{
    return fa < fb || (fa == fb && oa < ob);
}

static int key_cmp(const char *a1, uint64_t g1, uint32_t f1, uint64_t o1, const char *a2,
                   uint64_t g2, uint32_t f2, uint64_t o2)
{
    int c = strcmp(a1, a2);
    if (c)
        return c;
    if (g1 != g2)
        return g1 < g2 ? -1 : 1;
    if (f1 != f2)
        return f1 < f2 ? -1 : 1;
    return o1 < o2 ? -1 : o1 > o2 ? 1 : 0;
}

static int rx_cmp(const void *a, const void *b)
{
    const rp_rx_t *x = a, *y = b;
    return key_cmp(x->actor, x->gid, x->file, x->off, y->actor, y->gid, y->file, y->off);
}

static int out_cmp(const void *a, const void *b)
{
    const rp_out_t *x = a, *y = b;
    return key_cmp(x->actor, x->gid, x->file, x->off, y->actor, y->gid, y->file, y->off);
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? 2 * *cap : 256;
    void *p = realloc(*arr, nc * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

static int scan_visit(void *ctx, const replay_record_t *rr)
{
    rp_t *r = ctx;
    const Crl__TrajectoryRecord *rec = rr->rec;
    if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED && rec->received &&
        rec->received->group) {
        const Crl__TrajectoryGroup *g = rec->received->group;
        if (grow((void **)&r->rx, &r->cap_rx, r->n_rx, sizeof(rp_rx_t)) != 0)
            return -ENOMEM;
        rp_rx_t *x = &r->rx[r->n_rx];
        x->actor = strdup(g->actor_id ? g->actor_id : "");
        if (!x->actor)
            return -ENOMEM;
        x->gid = g->group_id;
        x->file = rr->file_index;
        x->off = rr->offset;
        r->n_rx++;
    } else if (rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_OUTCOME && rec->outcome &&
               rec->outcome->key && rec->outcome->fate == CRL__GROUP_FATE__GROUP_FATE_USED) {
        const Crl__GroupOutcome *o = rec->outcome;
        if (grow((void **)&r->outs, &r->cap_out, r->n_out, sizeof(rp_out_t)) != 0)
            return -ENOMEM;
        rp_out_t *x = &r->outs[r->n_out];
        memset(x, 0, sizeof(*x));
        x->actor = strdup(o->key->actor_id ? o->key->actor_id : "");
        if (!x->actor)
            return -ENOMEM;
        x->gid = o->key->group_id;
        x->step = o->step;
        x->item = o->batch_index;
        x->file = rr->file_index;
        x->off = rr->offset;
        r->n_out++;
        const size_t G = (size_t)r->G;
        if (o->n_rewards == G && o->n_preference == G && o->n_format == G &&
            o->n_advantages == G) {
            x->scores = malloc(4 * G * sizeof(float));
            if (!x->scores)
                return -ENOMEM;
            memcpy(x->scores, o->rewards, G * sizeof(float));
            memcpy(x->scores + G, o->preference, G * sizeof(float));
            memcpy(x->scores + 2 * G, o->format, G * sizeof(float));
            memcpy(x->scores + 3 * G, o->advantages, G * sizeof(float));
        }
    }
    return 0;
}

/* Every GroupReceived position and USED outcome of the log, sorted by key
 * (second pass over the records the index saw). 0 or -errno. */
static int scan_log(rp_t *r, char *err, size_t errlen)
{
    int rc = replay_index_scan(r->idx, scan_visit, r, err, errlen);
    if (rc != 0) {
        if (rc == -ENOMEM)
            errf(err, errlen, "out of memory reading the log");
        return rc < 0 ? rc : -EIO;
    }
    if (r->n_rx)
        qsort(r->rx, r->n_rx, sizeof(rp_rx_t), rx_cmp);
    if (r->n_out)
        qsort(r->outs, r->n_out, sizeof(rp_out_t), out_cmp);
    return 0;
}

/* First index of key (actor, gid) in a table sorted by key_cmp (elem
 * bytes per entry, actor / gid read through the accessors). */
static size_t rx_lower(const rp_t *r, const char *actor, uint64_t gid)
{
    size_t lo = 0, hi = r->n_rx;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp(r->rx[mid].actor, r->rx[mid].gid, 0, 0, actor, gid, 0, 0) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t out_lower(const rp_t *r, const char *actor, uint64_t gid)
{
    size_t lo = 0, hi = r->n_out;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (key_cmp(r->outs[mid].actor, r->outs[mid].gid, 0, 0, actor, gid, 0, 0) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The GroupReceived of key for a StepMarker at (mf, mo) of a log without
 * group positions: the last occurrence before the marker (*n_before gets
 * how many there were: more than one is ambiguous). NULL if none. */
static const rp_rx_t *rx_find(const rp_t *r, const char *actor, uint64_t gid, uint32_t mf,
                              uint64_t mo, int *n_before)
{
    const rp_rx_t *best = NULL;
    *n_before = 0;
    for (size_t i = rx_lower(r, actor, gid);
         i < r->n_rx && r->rx[i].gid == gid && !strcmp(r->rx[i].actor, actor); i++)
        if (pos_before(r->rx[i].file, r->rx[i].off, mf, mo)) {
            best = &r->rx[i];
            (*n_before)++;
        }
    return best;
}

/* The live scores of item `item` of step `step`: the last USED outcome of
 * that key, step and item before the StepMarker at (mf, mo). */
static const rp_out_t *out_find(const rp_t *r, const char *actor, uint64_t gid, uint64_t step,
                                uint32_t item, uint32_t mf, uint64_t mo)
{
    const rp_out_t *best = NULL;
    for (size_t i = out_lower(r, actor, gid);
         i < r->n_out && r->outs[i].gid == gid && !strcmp(r->outs[i].actor, actor); i++) {
        const rp_out_t *x = &r->outs[i];
        if (x->step == step && x->item == item && pos_before(x->file, x->off, mf, mo))
            best = x;
    }
    return best;
}

/* Builds the learner-side view of one group from its GroupReceived
 * record, as rl.c's group_view does from the grant: the prompt tokens the
 * group echoes are the grant's (the learner refused any other), the image
 * and expected answers are the grant's as recorded. 0, -ERANGE when the
 * group does not fit the config (rl.group_size), or another -errno. */
static int build_group(rp_t *r, rp_item_t *it, grpo_group_t *g, uint64_t step, size_t item,
                       char *err, size_t errlen)
{
    const Crl__GroupReceived *gr = it->rec->received;
    const Crl__TrajectoryGroup *tg = gr ? gr->group : NULL;
    if (it->rec->kind_case != CRL__TRAJECTORY_RECORD__KIND_RECEIVED || !tg) {
        errf(err, errlen, "step %" PRIu64 " item %zu: the record at the group's position is not a "
             "GroupReceived", step, item);
        return -EBADMSG;
    }
    const char *key = tg->actor_id ? tg->actor_id : "";
    if (gr->n_expected == 0 || !gr->expected[0]) {
        errf(err, errlen, "step %" PRIu64 ": group %s#%" PRIu64 " has no expected answer in the log "
             "(written by a learner from before replay support): this log cannot be replayed",
             step, key, tg->group_id);
        return -EINVAL;
    }
    size_t G = tg->n_samples;
    if (G != (size_t)r->G) {
        errf(err, errlen, "config mismatch: step %" PRIu64 ": group %s#%" PRIu64 " has %zu samples "
             "but rl.group_size = %d", step, key, tg->group_id, G, r->G);
        return -ERANGE;
    }
    const int S = r->policy->cfg.image_size;
    if (gr->image.len != 0 && (gr->image_size != (uint32_t)S || gr->image.len != (size_t)3 * S * S)) {
        errf(err, errlen, "step %" PRIu64 ": group %s#%" PRIu64 ": image of %zu bytes (size %u) "
             "but the model takes %d px images", step, key, tg->group_id, gr->image.len,
             gr->image_size, S);
        return -EINVAL;
    }
    if (tg->n_prompt_tokens == 0) {
        errf(err, errlen, "step %" PRIu64 ": group %s#%" PRIu64 " has an empty prompt", step, key,
             tg->group_id);
        return -EINVAL;
    }
    it->prompt_index = malloc(G * sizeof(int));
    it->lens = malloc(G * sizeof(int));
    it->tok_rows = malloc(G * sizeof(int *));
    it->logp_rows = malloc(G * sizeof(float *));
    if (!it->prompt_index || !it->lens || !it->tok_rows || !it->logp_rows) {
        errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t s = 0; s < G; s++) {
        const Crl__Sample *sm = tg->samples[s];
        if (!sm || sm->n_tokens != sm->n_logprobs || sm->prompt_index > 1 ||
            (sm->prompt_index == 1 && (tg->n_prompt_tokens_alt == 0 || gr->n_expected < 2))) {
            errf(err, errlen, "step %" PRIu64 ": group %s#%" PRIu64 " sample %zu is malformed "
                 "(tokens, log-probs or prompt_index)", step, key, tg->group_id, s);
            return -EBADMSG;
        }
        it->prompt_index[s] = (int)sm->prompt_index;
        it->lens[s] = (int)sm->n_tokens;
        it->tok_rows[s] = (const int *)sm->tokens;
        it->logp_rows[s] = sm->logprobs;
    }
    memset(g, 0, sizeof(*g));
    g->prompt[0] = (const int *)tg->prompt_tokens;
    g->prompt_len[0] = (int)tg->n_prompt_tokens;
    g->prompt[1] = tg->n_prompt_tokens_alt ? (const int *)tg->prompt_tokens_alt : NULL;
    g->prompt_len[1] = (int)tg->n_prompt_tokens_alt;
    g->image = gr->image.len ? gr->image.data : NULL;
    g->G = (int)G;
    g->prompt_index = it->prompt_index;
    g->tokens = it->tok_rows;
    g->len = it->lens;
    g->logp = it->logp_rows;
    g->version = tg->weights_version;
    g->task = gr->task_kind == CRL__TASK_KIND__TASK_KIND_CRITIC ? REWARD_TASK_CRITIC
                                                                : REWARD_TASK_POLICY;
    g->expected[0] = gr->expected[0];
    g->expected[1] = gr->n_expected > 1 ? gr->expected[1] : NULL;
    return 0;
}

/* ------------------------------------------------------------ start state */

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

/* Reads step and step_rng of an RL (live or replay) checkpoint's
 * trainer.json. Returns 1 when it is one, 0 when dir holds no trainer.json
 * of those formats (a plain model folder: step 0), -EINVAL on a bad file
 * (err names file and key). */
static int read_trainer(const char *dir, uint64_t *step, rng_t *rng, int *has_rng, char *err,
                        size_t errlen)
{
    char path[RP_PATH];
    textf(path, sizeof(path), "%s/trainer.json", dir);
    *has_rng = 0;
    if (!path_exists(path))
        return 0;
    char *text = read_text(path, 64u << 20, err, errlen);
    if (!text)
        return -EINVAL;
    cJSON *o = cJSON_Parse(text);
    free(text);
    if (!o) {
        errf(err, errlen, "%s: not valid JSON", path);
        return -EINVAL;
    }
    int rc = 1;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
    if (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, RP_RL_TRAINER_FORMAT) != 0 &&
                                 strcmp(fmt->valuestring, RP_TRAINER_FORMAT) != 0)) {
        rc = 0; /* e.g. an SFT checkpoint: only its model counts */
    } else if (!cJSON_IsNumber(st) || st->valuedouble < 0) {
        errf(err, errlen, "%s: bad or missing key \"step\"", path);
        rc = -EINVAL;
    } else {
        *step = (uint64_t)st->valuedouble;
        const cJSON *jr = cJSON_GetObjectItemCaseSensitive(o, "step_rng");
        if (jr) {
            if (parse_rng(jr, rng) != 0) {
                errf(err, errlen, "%s: bad key \"step_rng\" (four hex strings expected)", path);
                rc = -EINVAL;
            } else
                *has_rng = 1;
        }
    }
    cJSON_Delete(o);
    return rc;
}

/* The newest checkpoint of the run at a step <= max_step, into dir; 0 if
 * found, -ENOENT otherwise. */
static int find_run_checkpoint(const rp_t *r, uint64_t max_step, char *dir, size_t len)
{
    char root[RP_PATH];
    textf(root, sizeof(root), "%s/ckpt", r->run_dir);
    DIR *d = opendir(root);
    if (!d)
        return -ENOENT;
    struct dirent *e;
    uint64_t best = 0;
    int found = 0;
    while ((e = readdir(d))) {
        unsigned long long s;
        char tail;
        if (sscanf(e->d_name, "step-%llu%c", &s, &tail) != 1 || s == 0 || s > max_step)
            continue;
        char tj[RP_PATH];
        textf(tj, sizeof(tj), "%s/%s/trainer.json", root, e->d_name);
        if (!path_exists(tj))
            continue;
        if (!found || s > best) {
            best = s;
            found = 1;
        }
    }
    closedir(d);
    if (!found)
        return -ENOENT;
    textf(dir, len, "%s/step-%" PRIu64, root, best);
    return 0;
}

/* Policy (with gradients), tokenizer, reference, optimizer, step and step
 * rng as the live learner had them at the start checkpoint. Returns 0, or
 * 2 / 1 as the exit status for a user error / failure (logged). */
static int load_start(rp_t *r)
{
    char why[2048], path[RP_PATH];
    const rp_args_t *a = &r->args;
    int auto_ckpt = 0;
    if (a->from) {
        textf(r->start_dir, sizeof(r->start_dir), "%s", a->from);
        if (!is_dir(r->start_dir)) {
            log_error("--from %s: no such checkpoint folder", a->from);
            return 2;
        }
    } else if (a->a_set && a->a > 1 &&
               find_run_checkpoint(r, a->a - 1, r->start_dir, sizeof(r->start_dir)) == 0) {
        auto_ckpt = 1;
    } else {
        textf(r->start_dir, sizeof(r->start_dir), "%s", r->cfg.rl.init);
        if (!is_dir(r->start_dir)) {
            log_error("the run's initial policy rl.init = %s does not exist: give the starting "
                      "checkpoint with --from CKPT_DIR", r->cfg.rl.init);
            return 2;
        }
    }
    textf(path, sizeof(path), "%s/model.safetensors", r->start_dir);
    if (!path_exists(path)) {
        log_error("%s: no model.safetensors: not a checkpoint folder", r->start_dir);
        return 2;
    }
    /* step and rng: the same seeding as rl.c for a fresh run */
    rng_seed_stream(&r->step_rng, (uint64_t)r->cfg.run.seed, 0x5354455000000000ull); /* "STEP" */
    int has_rng = 0;
    uint64_t step = 0;
    rng_t rng;
    int tr = read_trainer(r->start_dir, &step, &rng, &has_rng, why, sizeof(why));
    if (tr < 0) {
        log_error("%s", why);
        return 2;
    }
    if (tr == 0 && a->from)
        log_info("%s holds no RL trainer.json: used as the policy at step 0", r->start_dir);
    if (tr == 1) {
        r->step = step;
        if (has_rng)
            r->step_rng = rng;
    }
    r->start_step = r->step;
    if (auto_ckpt)
        log_info("--steps %" PRIu64 ":... starts from the run's checkpoint %s (step %" PRIu64 ")",
                 a->a, r->start_dir, r->step);

    textf(path, sizeof(path), "%s/tokenizer.json", r->start_dir);
    if (!path_exists(path))
        textf(path, sizeof(path), "%s/ref/tokenizer.json", r->run_dir);
    r->tok = tok_load(path, why, sizeof(why));
    if (!r->tok) {
        log_error("tokenizer %s: %s", path, why);
        return 2;
    }
    r->policy = ckpt_load_model(r->start_dir, 1, why, sizeof(why));
    if (!r->policy) {
        log_error("policy from %s: %s", r->start_dir, why);
        return 2;
    }
    if (r->policy->cfg.vocab_size != tok_vocab_size(r->tok)) {
        log_error("%s: the model's vocab_size (%d) differs from the tokenizer's (%d)", r->start_dir,
                  r->policy->cfg.vocab_size, tok_vocab_size(r->tok));
        return 2;
    }
    r->cfg.model = r->policy->cfg;
    char refdir[RP_PATH];
    textf(refdir, sizeof(refdir), "%s/ref", r->run_dir);
    if (is_dir(refdir)) {
        r->ref = ckpt_load_model(refdir, 0, why, sizeof(why));
        if (!r->ref) {
            log_error("reference model %s: %s", refdir, why);
            return 2;
        }
        if (memcmp(&r->ref->cfg, &r->policy->cfg, sizeof(model_config_t)) != 0) {
            log_error("%s holds another model config than %s", refdir, r->start_dir);
            return 2;
        }
    } else if (r->cfg.rl.kl_coef > 0) {
        log_error("%s is missing: the reference model of the run is needed (rl.kl_coef = %g)",
                  refdir, r->cfg.rl.kl_coef);
        return 2;
    }
    adamw_config_t ac = grpo_adamw_config(&r->cfg);
    r->opt = adamw_new(r->policy, &ac);
    if (!r->opt) {
        log_error("optimizer: bad rl.lr / rl.weight_decay / rl.grad_clip or out of memory");
        return 2;
    }
    if (r->step > 0) {
        textf(path, sizeof(path), "%s/optimizer.safetensors", r->start_dir);
        long ostep = 0;
        if (ckpt_load_optimizer(r->policy, adamw_m(r->opt), adamw_v(r->opt), &ostep, path, why,
                                sizeof(why)) != 0) {
            log_error("optimizer state of %s (step %" PRIu64 "): %s", r->start_dir, r->step, why);
            return 2;
        }
        adamw_set_steps(r->opt, ostep);
    } else if (r->ref) {
        /* the reference is the initial policy: starting anywhere else at
         * step 0 cannot reproduce the run */
        uint32_t cp = crc32c(r->policy->params, r->policy->n_params * sizeof(float));
        uint32_t cr = crc32c(r->ref->params, r->ref->n_params * sizeof(float));
        char b1[12], b2[12];
        if (cp != cr)
            log_warn("start %s (crc %s) is not the run's initial policy %s (crc %s): the replay "
                     "will not match the live run", r->start_dir, crc_text(cp, b1), refdir,
                     crc_text(cr, b2));
    }
    return 0;
}

/* ------------------------------------------------------------ checkpoint */

static cJSON *rng_json(const rng_t *g)
{
    cJSON *a = cJSON_CreateArray();
    char h[17];
    for (int i = 0; a && i < 4; i++) {
        textf(h, sizeof(h), "%016" PRIx64, g->s[i]);
        cJSON_AddItemToArray(a, cJSON_CreateString(h));
    }
    return a;
}

static char *trainer_json(const rp_t *r)
{
    cJSON *o = cJSON_CreateObject();
    char h[12];
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "format", RP_TRAINER_FORMAT);
    cJSON_AddNumberToObject(o, "version", RP_TRAINER_VERSION);
    cJSON_AddStringToObject(o, "stage", "replay");
    cJSON_AddNumberToObject(o, "step", (double)r->step);
    cJSON_AddNumberToObject(o, "weights_version", (double)(r->step + 1));
    cJSON_AddNumberToObject(o, "optimizer_step", (double)adamw_steps(r->opt));
    cJSON_AddItemToObject(o, "step_rng", rng_json(&r->step_rng));
    cJSON_AddStringToObject(o, "weights_crc32c", crc_text(r->last_crc, h));
    cJSON_AddStringToObject(o, "source_log", r->args.log);
    cJSON_AddStringToObject(o, "source_run", r->run_dir);
    cJSON_AddStringToObject(o, "started_from", r->start_dir);
    cJSON_AddNumberToObject(o, "start_step", (double)r->start_step);
    cJSON_AddNumberToObject(o, "steps_replayed", (double)r->steps_done);
    cJSON_AddNumberToObject(o, "hash_matches", (double)r->hash_match);
    cJSON_AddNumberToObject(o, "hash_mismatches", (double)r->hash_mismatch);
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

/* OUT/ckpt/step-N, written like the live learner's: temporary folder,
 * fsync, rename, `latest` symlink. 0 or -errno (logged). */
static int save_checkpoint(rp_t *r)
{
    char root[RP_PATH], tmp[RP_PATH], fin[RP_PATH], path[RP_PATH], why[2048];
    char *tj = NULL;
    int rc;
    textf(root, sizeof(root), "%s/ckpt", r->out_dir);
    textf(tmp, sizeof(tmp), "%s/.tmp-step-%" PRIu64, root, r->step);
    textf(fin, sizeof(fin), "%s/step-%" PRIu64, root, r->step);
    if ((rc = ckpt_mkdirs(root, why, sizeof(why))) != 0)
        goto fail;
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
    textf(path, sizeof(path), "%s/run_config.json", tmp);
    if ((rc = config_write_file(&r->cfg, path, why, sizeof(why))) != 0)
        goto fail;
    tj = trainer_json(r);
    if (!tj) {
        rc = -ENOMEM;
        textf(why, sizeof(why), "out of memory");
        goto fail;
    }
    textf(path, sizeof(path), "%s/trainer.json", tmp);
    if ((rc = ckpt_write_file_atomic(path, tj, strlen(tj), why, sizeof(why))) != 0)
        goto fail;
    fsync_dir(tmp);
    if (path_exists(fin) && (rc = remove_flat_dir(fin)) != 0) {
        textf(why, sizeof(why), "cannot replace %s: %s", fin, strerror(-rc));
        goto fail;
    }
    if (rename(tmp, fin) != 0) {
        rc = -errno;
        textf(why, sizeof(why), "rename %s -> %s: %s", tmp, fin, strerror(errno));
        goto fail;
    }
    char link_tmp[RP_PATH], link[RP_PATH], target[48];
    textf(link_tmp, sizeof(link_tmp), "%s/.latest.tmp", root);
    textf(link, sizeof(link), "%s/latest", root);
    textf(target, sizeof(target), "step-%" PRIu64, r->step);
    unlink(link_tmp);
    if (symlink(target, link_tmp) != 0 || rename(link_tmp, link) != 0) {
        rc = -errno;
        textf(why, sizeof(why), "cannot point %s at %s: %s", link, target, strerror(errno));
        goto fail;
    }
    free(tj);
    log_info("checkpoint %s", fin);
    return 0;
fail:
    free(tj);
    log_error("checkpoint of step %" PRIu64 " in %s: %s", r->step, root, why);
    return rc ? rc : -EIO;
}

/* ------------------------------------------------------------ one step */

/* Bitwise comparison of the recomputed scores with the group's
 * GroupOutcome (o; NULL when the log has none). Returns the number of
 * differing arrays (0..4); prints the first difference of each. */
static int compare_scores(const rp_t *r, const rp_out_t *o, const char *actor, uint64_t gid,
                          uint64_t step, const float *rw, const float *pf, const float *fm,
                          const float *ad, int *notes)
{
    if (!o || !o->scores) {
        if ((*notes)++ < RP_MAX_NOTES)
            printf("step %" PRIu64 ": note: group %s#%" PRIu64 " has no outcome for this step in "
                   "the log; scores not compared\n", step, actor, gid);
        return 0;
    }
    const size_t G = (size_t)r->G;
    const float *mine[4] = {rw, pf, fm, ad};
    static const char *const names[4] = {"rewards", "preference", "format", "advantages"};
    int bad = 0;
    for (int k = 0; k < 4; k++) {
        const float *theirs = o->scores + (size_t)k * G;
        if (memcmp(mine[k], theirs, G * sizeof(float)) == 0)
            continue;
        bad++;
        size_t s = 0;
        while (s < G && memcmp(&mine[k][s], &theirs[s], sizeof(float)) == 0)
            s++;
        if ((*notes)++ < RP_MAX_NOTES)
            printf("step %" PRIu64 ": group %s#%" PRIu64 " %s differ from the log's outcome "
                   "(sample %zu: replay %.9g, live %.9g)\n", step, actor, gid, names[k], s,
                   s < G ? (double)mine[k][s] : 0.0, s < G ? (double)theirs[s] : 0.0);
    }
    return bad;
}

typedef enum {
    RP_STEP_OK = 0,       /* replayed (hash compared or not) */
    RP_STEP_MISMATCH,     /* replayed, hash differs */
    RP_STEP_UNFORMED,     /* could not be formed (missing group, bad record) */
    RP_STEP_CONFIG,       /* the log does not fit the config: stop, exit 2 */
    RP_STEP_ERROR,        /* the update itself failed: stop */
} rp_step_result_t;

static void write_metrics(rp_t *r, const grpo_stats_t *st, double update_s, uint32_t crc,
                          int have_live, uint32_t live_crc, double live_update_s, int n_groups)
{
    char b1[12], b2[12];
    metrics_begin_line(r->mx, (int64_t)r->step);
    metrics_add_int(r->mx, "version", (int64_t)(r->step + 1));
    metrics_add_float(r->mx, "reward", st->reward_mean);
    metrics_add_float(r->mx, "preference_acc", st->preference_acc);
    metrics_add_float(r->mx, "format_rate", st->format_rate);
    metrics_add_float(r->mx, "response_len", st->response_len_mean);
    metrics_add_float(r->mx, "loss", st->loss);
    metrics_add_float(r->mx, "pg_loss", st->pg_loss);
    metrics_add_float(r->mx, "kl", st->kl);
    metrics_add_float(r->mx, "entropy", st->entropy);
    metrics_add_float(r->mx, "clip_fraction", st->clip_fraction);
    metrics_add_float(r->mx, "is_weight_mean", st->is_weight_mean);
    metrics_add_float(r->mx, "grad_norm", st->grad_norm);
    metrics_add_float(r->mx, "lr", st->lr);
    metrics_add_float(r->mx, "staleness_mean", st->staleness_mean);
    metrics_add_float(r->mx, "staleness_max", st->staleness_max);
    metrics_add_float(r->mx, "max_logp_diff_onpolicy",
                      st->max_logp_diff_onpolicy < 0 ? NAN : st->max_logp_diff_onpolicy);
    metrics_add_float(r->mx, "max_logp_diff", st->max_logp_diff);
    metrics_add_float(r->mx, "says_a_rate", st->says_first_rate < 0 ? NAN : st->says_first_rate);
    metrics_add_int(r->mx, "groups_skipped", st->groups_skipped);
    metrics_add_int(r->mx, "tokens", st->tokens);
    metrics_add_bool(r->mx, "updated", st->updated);
    metrics_add_float(r->mx, "update_s", update_s);
    metrics_add_int(r->mx, "groups", n_groups);
    metrics_add_string(r->mx, "weights_crc32c", crc_text(crc, b1));
    if (have_live) {
        metrics_add_string(r->mx, "live_weights_crc32c", crc_text(live_crc, b2));
        metrics_add_bool(r->mx, "crc_match", crc == live_crc);
        metrics_add_float(r->mx, "live_update_s", live_update_s);
    }
    if (metrics_end_line(r->mx) != 0)
        log_warn("could not append to %s/metrics.jsonl", r->out_dir);
}

/* Replays the update of one StepMarker (the winner at index w). */
static rp_step_result_t replay_step(rp_t *r, size_t w)
{
    char err[2048], b1[12], b2[12];
    const replay_step_t *rs = replay_index_step(r->idx, r->win[w]);
    const uint64_t N = rs->step;
    Crl__TrajectoryRecord *mrec = NULL;
    rp_step_result_t result = RP_STEP_OK;
    int notes = 0;
    int n = 0;
    if (read_record_at(r, rs->file_index, rs->offset, &mrec, err, sizeof(err)) != 0) {
        printf("step %" PRIu64 ": cannot read its StepMarker: %s\n", N, err);
        return RP_STEP_UNFORMED;
    }
    const Crl__StepMarker *m = mrec->step;
    if (mrec->kind_case != CRL__TRAJECTORY_RECORD__KIND_STEP || !m) {
        printf("step %" PRIu64 ": the record at file %u offset %" PRIu64 " is not a StepMarker\n",
               N, rs->file_index, rs->offset);
        result = RP_STEP_UNFORMED;
        goto out;
    }
    if (m->n_groups != (size_t)r->gps) {
        log_error("config mismatch: step %" PRIu64 " lists %zu groups but rl.groups_per_step = %d",
                  N, m->n_groups, r->gps);
        result = RP_STEP_CONFIG;
        goto out;
    }
    if (m->version_before != r->step + 1)
        printf("step %" PRIu64 ": note: the live step started at version %" PRIu64 ", the replay "
               "is at %" PRIu64 "\n", N, m->version_before, r->step + 1);
    if (m->n_rng_state == 4 && memcmp(m->rng_state, r->step_rng.s, sizeof(r->step_rng.s)) != 0)
        printf("step %" PRIu64 ": note: the learner's rng state before the step differs from the "
               "replay's (another run.seed?)\n", N);

    /* the groups, in the marker's order, from the positions the marker
     * records (older logs: by key, the last one received before it) */
    int missing = 0;
    const int have_pos = m->n_group_file_index == m->n_groups && m->n_group_offset == m->n_groups;
    for (size_t i = 0; i < m->n_groups; i++) {
        const Crl__GroupKey *k = m->groups[i];
        const char *aid = k && k->actor_id ? k->actor_id : "";
        uint64_t gid = k ? k->group_id : 0;
        uint32_t gf = 0;
        uint64_t go = 0;
        if (have_pos) {
            gf = m->group_file_index[i];
            go = m->group_offset[i];
        } else {
            int n_before = 0;
            const rp_rx_t *x = k ? rx_find(r, aid, gid, rs->file_index, rs->offset, &n_before) : NULL;
            if (!x) {
                printf("step %" PRIu64 ": group %s#%" PRIu64 " (item %zu) is not in the log%s\n", N,
                       aid, gid, i,
                       r->args.skip_corrupt ? " (it may be in a skipped corrupt region)" : "");
                missing++;
                continue;
            }
            if (n_before > 1 && notes++ < RP_MAX_NOTES)
                printf("step %" PRIu64 ": note: group %s#%" PRIu64 " was received %d times before "
                       "the step (an actor restarted?) and this log does not record which one the "
                       "step used: the last is taken\n", N, aid, gid, n_before);
            gf = x->file;
            go = x->off;
        }
        rp_item_t *it = &r->items[n];
        if (read_record_at(r, gf, go, &it->rec, err, sizeof(err)) != 0) {
            printf("step %" PRIu64 ": group %s#%" PRIu64 " (item %zu) is not in the log: %s\n", N,
                   aid, gid, i, err);
            item_clear(it);
            missing++;
            continue;
        }
        const Crl__TrajectoryGroup *tg =
            it->rec->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED && it->rec->received
                ? it->rec->received->group : NULL;
        if (!tg || tg->group_id != gid || strcmp(tg->actor_id ? tg->actor_id : "", aid) != 0) {
            printf("step %" PRIu64 ": group %s#%" PRIu64 " (item %zu): the record at file %u "
                   "offset %" PRIu64 " is not its GroupReceived\n", N, aid, gid, i, gf, go);
            item_clear(it);
            missing++;
            continue;
        }
        int rc = build_group(r, it, &r->groups[n], N, i, err, sizeof(err));
        if (rc == -ERANGE) {
            log_error("%s", err);
            result = RP_STEP_CONFIG;
            goto out;
        }
        if (rc != 0) {
            printf("step %" PRIu64 ": %s\n", N, err);
            item_clear(it);
            missing++;
            continue;
        }
        r->adv_rows[n] = r->adv + (size_t)n * r->G;
        rc = grpo_score_group(r->grpo, &r->groups[n], r->rewards + (size_t)n * r->G,
                              r->pref + (size_t)n * r->G, r->format + (size_t)n * r->G,
                              r->adv + (size_t)n * r->G);
        if (rc != 0) {
            printf("step %" PRIu64 ": scoring group %s#%" PRIu64 " failed: %s\n", N, aid, gid,
                   strerror(-rc));
            item_clear(it);
            missing++;
            continue;
        }
        const rp_out_t *o = out_find(r, aid, gid, N, (uint32_t)i, rs->file_index, rs->offset);
        if (compare_scores(r, o, aid, gid, N, r->rewards + (size_t)n * r->G,
                           r->pref + (size_t)n * r->G, r->format + (size_t)n * r->G,
                           r->adv + (size_t)n * r->G, &notes))
            r->detail_mismatch++;
        n++;
    }
    if (missing) {
        printf("step %" PRIu64 ": %d of %zu groups are missing: the step cannot be formed as the "
               "live learner formed it\n", N, missing, m->n_groups);
        if (!r->args.keep_going || n == 0) {
            result = RP_STEP_UNFORMED;
            goto out;
        }
        printf("step %" PRIu64 ": --keep-going: updating from the %d group%s there %s (the "
               "weights cannot match from here on)\n", N, n, n == 1 ? "" : "s",
               n == 1 ? "is" : "are");
    }

    /* the update */
    grpo_stats_t st;
    memset(&st, 0, sizeof(st));
    double t0 = mono_s();
    int rc = grpo_step(r->grpo, r->policy, r->ref, r->opt, r->groups, r->adv_rows, n, r->step + 1,
                       &st);
    double update_s = mono_s() - t0;
    if (rc != 0) {
        log_error("step %" PRIu64 ": grpo_step failed: %s", N, strerror(-rc));
        result = RP_STEP_ERROR;
        goto out;
    }
    uint32_t crc = crc32c(r->policy->params, r->policy->n_params * sizeof(float));
    r->step = N;
    r->last_crc = crc;
    r->steps_done++;
    const int facts = m->lr != 0; /* markers written before these fields existed hold 0 */
    if (facts && (m->optimizer_steps != (uint64_t)adamw_steps(r->opt) ||
                  m->updated != (st.updated != 0) || m->lr != st.lr)) {
        r->detail_mismatch++;
        printf("step %" PRIu64 ": optimizer differs from the live step: steps %ld (live %" PRIu64
               "), updated %d (live %d), lr %.9g (live %.9g)\n", N, adamw_steps(r->opt),
               m->optimizer_steps, st.updated, (int)m->updated, st.lr, m->lr);
    }
    if (!r->args.verify) {
        printf("step %" PRIu64 ": weights crc %s (not verified)\n", N, crc_text(crc, b1));
    } else if (crc == m->weights_crc32c && !missing) {
        r->hash_match++;
        printf("step %" PRIu64 ": weights crc %s == live\n", N, crc_text(crc, b1));
    } else {
        r->hash_mismatch++;
        printf("step %" PRIu64 ": weights crc %s != live %s: MISMATCH\n", N, crc_text(crc, b1),
               crc_text(m->weights_crc32c, b2));
        result = RP_STEP_MISMATCH;
    }
    fflush(stdout);
    write_metrics(r, &st, update_s, crc, 1, m->weights_crc32c, m->update_seconds, n);
out:
    for (int i = 0; i < r->gps; i++)
        item_clear(&r->items[i]);
    crl__trajectory_record__free_unpacked(mrec, NULL);
    return result;
}

/* ------------------------------------------------------------ main */

static int alloc_step_bufs(rp_t *r)
{
    size_t n = (size_t)r->gps * (size_t)r->G;
    r->items = calloc((size_t)r->gps, sizeof(rp_item_t));
    r->groups = calloc((size_t)r->gps, sizeof(grpo_group_t));
    r->rewards = calloc(n, sizeof(float));
    r->pref = calloc(n, sizeof(float));
    r->format = calloc(n, sizeof(float));
    r->adv = calloc(n, sizeof(float));
    r->adv_rows = calloc((size_t)r->gps, sizeof(float *));
    if (!r->items || !r->groups || !r->rewards || !r->pref || !r->format || !r->adv ||
        !r->adv_rows)
        return -ENOMEM;
    return 0;
}

/* "FILE offset N: message", or the message alone for problems of a place
 * in the files (the reader's message names file and offset itself). */
static const char *problem_text(const replay_problem_t *p, char *buf, size_t len)
{
    if (p->file && !p->region)
        textf(buf, len, "%s offset %" PRIu64 ": %s", p->file, p->offset, p->message);
    else
        textf(buf, len, "%s", p->message ? p->message : "?");
    return buf;
}

/* Prints the index's problems that matter for a replay; returns 1 when the
 * log cannot be replayed as is (corruption without --skip-corrupt). */
static int report_log_problems(rp_t *r)
{
    char text[2048];
    size_t np = replay_index_n_problems(r->idx);
    int fatal = 0;
    size_t shown = 0;
    for (size_t i = 0; i < np; i++) {
        const replay_problem_t *p = replay_index_problem(r->idx, i);
        if (p->severity == REPLAY_PROBLEM_NOTE)
            continue;
        if (!replay_index_complete(r->idx) && p->severity == REPLAY_PROBLEM_ERROR && p->region &&
            !r->args.skip_corrupt) {
            log_error("the log cannot be read past this point: %s (replay stops; --skip-corrupt "
                      "reads past it)", problem_text(p, text, sizeof(text)));
            fatal = 1;
            continue;
        }
        /* a redone step's second marker: the index calls it out of order,
         * pick_markers has already said which one counts */
        if (r->n_superseded && p->message && strstr(p->message, "(steps must increase)"))
            continue;
        if (shown++ < RP_MAX_LOG_PROBLEMS)
            log_warn("log check: %s", problem_text(p, text, sizeof(text)));
    }
    if (!replay_index_complete(r->idx) && !fatal && !r->args.skip_corrupt) {
        /* the scan ended early without a region problem: say where */
        for (size_t i = np; i-- > 0;) {
            const replay_problem_t *p = replay_index_problem(r->idx, i);
            if (p->severity == REPLAY_PROBLEM_ERROR) {
                log_error("the log cannot be read past this point: %s (replay stops; "
                          "--skip-corrupt reads past it)", problem_text(p, text, sizeof(text)));
                break;
            }
        }
        fatal = 1;
    }
    if (shown > RP_MAX_LOG_PROBLEMS)
        log_warn("log check: %zu more (crl-replay verify lists them all)",
                 shown - RP_MAX_LOG_PROBLEMS);
    return fatal;
}

int learner_replay_main(int argc, char **argv)
{
    static rp_t R;
    rp_t *r = &R;
    memset(r, 0, sizeof(*r));
    char err[4096], why[2048], path[RP_PATH];
    int status = 1;
    log_set_tag("replay");

    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            print_help();
            return 0;
        }

    /* ---- the run folder, its config, then the command line on top ---- */
    const char *log_arg = find_log_arg(argc, argv);
    if (!log_arg || !log_arg[0]) {
        fprintf(stderr, "crl-learner replay: --log RUN_DIR/traj is required (see --help)\n");
        return 2;
    }
    if (!path_exists(log_arg)) {
        fprintf(stderr, "crl-learner replay: --log %s: %s (give a run's trajectory log, "
                "runs/NAME/traj)\n", log_arg, strerror(errno));
        return 2;
    }
    {
        char logdir[RP_PATH];
        if (is_dir(log_arg))
            textf(logdir, sizeof(logdir), "%s", log_arg);
        else
            parent_of(log_arg, logdir, sizeof(logdir));
        parent_of(logdir, r->run_dir, sizeof(r->run_dir));
        base_of(r->run_dir, r->run_name, sizeof(r->run_name));
    }
    if (config_defaults(&r->cfg) != 0)
        return 2;
    textf(path, sizeof(path), "%s/config.json", r->run_dir);
    if (path_exists(path)) {
        if (config_load_file(&r->cfg, path, err, sizeof(err)) != 0) {
            fprintf(stderr, "crl-learner replay: the run's config: %s\n", err);
            return 2;
        }
        r->run_cfg = r->cfg;
        r->has_run_cfg = 1;
    } else {
        log_warn("%s is missing: the config comes from defaults, --config and --set only, and "
                 "cannot be checked against the run's", path);
    }
    int rc = apply_config_args(r, &argc, argv, err, sizeof(err));
    if (rc == 1) {
        config_print_help(stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-learner replay: %s\n", err);
        return 2;
    }
    rc = parse_args(&r->args, argc, argv, err, sizeof(err));
    if (rc == 1) {
        print_help();
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "crl-learner replay: %s\n", err);
        return 2;
    }
    rp_args_t *a = &r->args;
    if (a->from && !is_dir(a->from)) {
        fprintf(stderr, "crl-learner replay: --from %s: no such checkpoint folder\n", a->from);
        return 2;
    }
    if (check_config(r, err, sizeof(err)) != 0) {
        log_error("%s", err);
        return 2;
    }
    r->gps = r->cfg.rl.groups_per_step;
    r->G = r->cfg.rl.group_size;
    k_set_threads(r->cfg.learner.threads);

    /* ---- the log ---- */
    replay_index_options_t io;
    replay_index_options_default(&io);
    io.skip_corrupt = a->skip_corrupt;
    double t_idx = mono_s();
    r->idx = replay_index_load(a->log, &io, err, sizeof(err));
    if (!r->idx) {
        log_error("log %s: %s", a->log, err);
        status = 2;
        goto out;
    }
    if (pick_markers(r, err, sizeof(err)) != 0) {
        log_error("%s", err);
        goto out;
    }
    if (report_log_problems(r)) {
        status = 1;
        goto out;
    }
    r->rd = traj_log_reader_open(a->log, a->skip_corrupt, err, sizeof(err));
    if (!r->rd) {
        log_error("log %s: %s", a->log, err);
        status = 2;
        goto out;
    }
    if (scan_log(r, err, sizeof(err)) != 0) {
        log_error("log %s: %s", a->log, err);
        goto out;
    }
    if (r->n_win == 0) {
        log_error("log %s holds no StepMarker: no completed update to replay", a->log);
        status = 1;
        goto out;
    }
    log_info("log %s: %zu GroupReceived, %zu steps (%" PRIu64 " .. %" PRIu64 ") read in %.2f s",
             a->log, r->n_rx, r->n_win,
             replay_index_step(r->idx, r->win[0])->step,
             replay_index_step(r->idx, r->win[r->n_win - 1])->step, mono_s() - t_idx);

    /* ---- the start ---- */
    if ((rc = load_start(r)) != 0) {
        status = rc;
        goto out;
    }
    const uint64_t last_step = replay_index_step(r->idx, r->win[r->n_win - 1])->step;
    uint64_t end = a->b_set ? a->b : last_step;
    if (a->a_set && a->a <= r->step) {
        log_error("--steps starts at %" PRIu64 " but %s is already at step %" PRIu64
                  " (start from an earlier checkpoint)", a->a, r->start_dir, r->step);
        status = 2;
        goto out;
    }
    if (end > last_step) {
        log_error("--steps ends at %" PRIu64 " but the log's last step is %" PRIu64, end, last_step);
        status = 2;
        goto out;
    }
    if (end <= r->step) {
        log_error("%s is at step %" PRIu64 " and the replay would end at step %" PRIu64
                  ": nothing to replay", r->start_dir, r->step, end);
        status = 2;
        goto out;
    }
    if (a->a_set && a->a > r->step + 1)
        log_info("steps %" PRIu64 "..%" PRIu64 " are replayed first to reach step %" PRIu64
                 " (no checkpoint of the run closer to it)", r->step + 1, a->a - 1, a->a);
    /* The start must be where the live run was: the checkpoint's weights
     * against the marker of its step. */
    char b1[12], b2[12];
    uint32_t start_crc = crc32c(r->policy->params, r->policy->n_params * sizeof(float));
    r->last_crc = start_crc;
    size_t w0 = 0;
    while (w0 < r->n_win && replay_index_step(r->idx, r->win[w0])->step <= r->step)
        w0++;
    if (r->step > 0) {
        const replay_step_t *prev = w0 > 0 ? replay_index_step(r->idx, r->win[w0 - 1]) : NULL;
        Crl__TrajectoryRecord *pm = NULL;
        if (prev && prev->step == r->step &&
            read_record_at(r, prev->file_index, prev->offset, &pm, err, sizeof(err)) == 0 &&
            pm->kind_case == CRL__TRAJECTORY_RECORD__KIND_STEP && pm->step) {
            uint32_t live = pm->step->weights_crc32c;
            if (live == start_crc)
                printf("start: %s (step %" PRIu64 "): weights crc %s == live\n", r->start_dir,
                       r->step, crc_text(start_crc, b1));
            else {
                printf("start: %s (step %" PRIu64 "): weights crc %s != live %s: the checkpoint "
                       "is not the live run's state after step %" PRIu64 "\n", r->start_dir,
                       r->step, crc_text(start_crc, b1), crc_text(live, b2), r->step);
                if (a->verify && !a->keep_going) {
                    crl__trajectory_record__free_unpacked(pm, NULL);
                    status = 1;
                    goto out;
                }
            }
        } else {
            printf("start: %s (step %" PRIu64 "): no StepMarker of that step to check it against\n",
                   r->start_dir, r->step);
        }
        if (pm)
            crl__trajectory_record__free_unpacked(pm, NULL);
    } else {
        printf("start: %s (step 0): weights crc %s\n", r->start_dir, crc_text(start_crc, b1));
    }

    r->grpo = grpo_new(r->policy, &r->cfg, r->tok, why, sizeof(why));
    if (!r->grpo) {
        log_error("grpo: %s", why);
        status = 2;
        goto out;
    }
    if (alloc_step_bufs(r) != 0) {
        log_error("out of memory");
        goto out;
    }

    /* ---- outputs ---- */
    {
        char out_name[CONFIG_NAME_LEN], root[RP_PATH];
        if (a->out)
            textf(out_name, sizeof(out_name), "%s", a->out);
        else if (strlen(r->run_name) + 8 <= sizeof(out_name))
            textf(out_name, sizeof(out_name), "%s-replay", r->run_name);
        else
            textf(out_name, sizeof(out_name), "replay");
        if (!strcmp(out_name, r->run_name)) {
            log_error("--out %s is the live run itself: give another name", out_name);
            status = 2;
            goto out;
        }
        parent_of(r->run_dir, root, sizeof(root));
        textf(r->out_dir, sizeof(r->out_dir), "%s/%s", root, out_name);
        if (ckpt_mkdirs(r->out_dir, why, sizeof(why)) != 0) {
            log_error("output folder %s: %s", r->out_dir, why);
            goto out;
        }
        textf(r->cfg.run.name, sizeof(r->cfg.run.name), "%s", out_name);
        textf(r->cfg.run.dir, sizeof(r->cfg.run.dir), "%s", root);
        textf(path, sizeof(path), "%s/config.json", r->out_dir);
        if (config_write_file(&r->cfg, path, why, sizeof(why)) != 0) {
            log_error("%s", why);
            goto out;
        }
        textf(path, sizeof(path), "%s/metrics.jsonl", r->out_dir);
        if (unlink(path) == 0)
            log_info("%s: replaced (an earlier replay's)", path);
        r->mx = metrics_open(path, why, sizeof(why));
        if (!r->mx) {
            log_error("%s", why);
            goto out;
        }
    }
    log_info("replaying steps %" PRIu64 "..%" PRIu64 " of %s from %s: %d groups x G=%d per step, "
             "%d thread%s, rl.micro_batch_tokens %d, hashes %s; outputs in %s", r->step + 1, end,
             r->run_dir, r->start_dir, r->gps, r->G, r->cfg.learner.threads,
             r->cfg.learner.threads == 1 ? "" : "s", r->cfg.rl.micro_batch_tokens,
             a->verify ? "verified" : "not verified", r->out_dir);

    /* ---- the steps ---- */
    int failed = 0, unformed = 0;
    double t_start = mono_s();
    for (size_t w = w0; w < r->n_win; w++) {
        uint64_t N = replay_index_step(r->idx, r->win[w])->step;
        if (N > end)
            break;
        if (N != r->step + 1) {
            printf("step %" PRIu64 ": no StepMarker in the log%s\n", r->step + 1,
                   a->skip_corrupt ? " (it may be in a skipped corrupt region)" : "");
            unformed++;
            failed = 1;
            if (!a->keep_going)
                break;
            /* carry on from the next marker: the steps are numbered by the log */
            r->step = N - 1;
        }
        rp_step_result_t res = replay_step(r, w);
        if (res == RP_STEP_CONFIG || res == RP_STEP_ERROR) {
            failed = res == RP_STEP_CONFIG ? 2 : 1;
            break;
        }
        if (res == RP_STEP_UNFORMED) {
            unformed++;
            failed = 1;
            if (!a->keep_going)
                break;
            r->step = N; /* skipped: the next marker continues the numbering */
            continue;
        }
        if (res == RP_STEP_MISMATCH) {
            failed = 1;
            if (!a->keep_going) {
                printf("replay stops at the first mismatch (--keep-going continues)\n");
                break;
            }
        }
    }
    double wall = mono_s() - t_start;
    if (r->detail_mismatch)
        failed = failed ? failed : 1;

    /* ---- the end ---- */
    if (r->steps_done > 0 && a->checkpoint)
        save_checkpoint(r);
    char fc[12];
    printf("replay: %" PRIu64 " step%s replayed (%" PRIu64 "..%" PRIu64 ") from %s in %.1f s",
           r->steps_done, r->steps_done == 1 ? "" : "s", r->start_step + 1, r->step, r->start_dir,
           wall);
    if (a->verify)
        printf("; weights match the live run after %" PRIu64 " of %" PRIu64 " step%s", r->hash_match,
               r->steps_done, r->steps_done == 1 ? "" : "s");
    if (unformed)
        printf("; %d step%s could not be formed", unformed, unformed == 1 ? "" : "s");
    if (r->detail_mismatch)
        printf("; %" PRIu64 " score/optimizer difference%s", r->detail_mismatch,
               r->detail_mismatch == 1 ? "" : "s");
    printf("; final weights crc %s\n", crc_text(r->last_crc, fc));
    if (failed == 2)
        status = 2;
    else
        status = failed ? 1 : 0;
out:
    fflush(stdout);
    rp_free(r);
    return status;
}
