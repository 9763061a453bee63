/* Tests of common/replay_index (the library behind crl-replay) and of the
 * crl-replay binary (from $CRL_BIN_DIR, which make test sets; those tests
 * skip with a message when it is unset). Logs are built here with the
 * traj_log writer from hand-made TrajectoryRecords: three actors, three
 * steps, a dropped group and a pending one. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "proto/crl.pb-c.h"
#include "replay_index.h"
#include "tokenizer.h"
#include "traj_log.h"

/* ------------------------------------------------------------ helpers */

static char *make_tmp_dir(const char *tag)
{
    const char *base = getenv("CRL_TEST_TMP");
    char *p = malloc(512);
    snprintf(p, 512, "%s/replay-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    cr_assert_not_null(mkdtemp(p), "mkdtemp(%s) failed", p);
    return p;
}

static char *join(const char *a, const char *b)
{
    char *p = malloc(strlen(a) + strlen(b) + 2);
    sprintf(p, "%s/%s", a, b);
    return p;
}

static tokenizer_t *tiny_tokenizer(void)
{
    const char *texts[] = {
        "Which answer is better? The first answer or the second answer.",
        "resp a 1 0 resp b 2 1 the red square is left of the blue circle",
        "answer \\boxed{A} answer \\boxed{B} <think>count the cells</think>",
    };
    char err[256] = "";
    tokenizer_t *tok = tok_train(texts, NULL, 3, 320, err, sizeof err);
    cr_assert_not_null(tok, "tok_train: %s", err);
    return tok;
}

typedef struct {
    traj_log_t *log;
    uint64_t seq;
    uint64_t ms;
    const tokenizer_t *tok;
} writer_t;

static void w_open(writer_t *w, const char *dir, const tokenizer_t *tok, uint64_t max_file)
{
    char err[512] = "";
    traj_log_options_t o;
    traj_log_options_default(&o);
    o.fsync_policy = TRAJ_FSYNC_NEVER;
    o.max_file_bytes = max_file;
    w->log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(w->log, "traj_log_open %s: %s", dir, err);
    w->seq = 0;
    w->ms = 1748772000000ull; /* 2025-06-01 10:00:00 UTC */
    w->tok = tok;
}

static void w_close(writer_t *w)
{
    cr_assert_eq(traj_log_close(&w->log), 0);
}

static void w_append(writer_t *w, Crl__TrajectoryRecord *rec)
{
    rec->seq = w->seq++;
    rec->written_unix_ms = w->ms;
    w->ms += 1500;
    size_t len = crl__trajectory_record__get_packed_size(rec);
    uint8_t *buf = malloc(len);
    cr_assert_eq(crl__trajectory_record__pack(rec, buf), len);
    int rc = traj_log_append(w->log, buf, len);
    cr_assert_eq(rc, 0, "append seq %lu: %s", (unsigned long)rec->seq, strerror(-rc));
    free(buf);
}

#define G 2
#define N_PATCHES 4

/* GroupReceived of actor#gid at weights version v: G samples whose text is
 * "resp ACTOR GID S". */
static void w_received(writer_t *w, const char *actor, uint64_t gid, uint64_t version)
{
    int prompt[64], n = 0;
    prompt[n++] = TOK_BOS;
    prompt[n++] = TOK_IMG;
    for (int k = 0; k < N_PATCHES; k++)
        prompt[n++] = -1;
    prompt[n++] = TOK_IMG_END;
    const char *q = "Which answer is better?";
    int m = tok_encode(w->tok, q, strlen(q), prompt + n, 64 - n);
    cr_assert_gt(m, 0);
    n += m;

    Crl__Sample samples[G], *sp[G];
    int toks[G][64];
    float lps[G][64];
    for (int s = 0; s < G; s++) {
        char text[64];
        snprintf(text, sizeof text, "resp %s %lu %d", actor, (unsigned long)gid, s);
        int k = tok_encode(w->tok, text, strlen(text), toks[s], 63);
        cr_assert_gt(k, 0);
        toks[s][k++] = TOK_EOS;
        for (int i = 0; i < k; i++)
            lps[s][i] = -0.5f;
        crl__sample__init(&samples[s]);
        samples[s].n_tokens = (size_t)k;
        samples[s].tokens = toks[s];
        samples[s].n_logprobs = (size_t)k;
        samples[s].logprobs = lps[s];
        samples[s].finished_by_eos = 1;
        sp[s] = &samples[s];
    }
    Crl__TrajectoryGroup tg;
    crl__trajectory_group__init(&tg);
    tg.actor_id = (char *)actor;
    tg.group_id = gid;
    tg.grant_id = 100 + gid;
    char pid[32];
    snprintf(pid, sizeof pid, "p-%s-%lu", actor, (unsigned long)gid);
    tg.prompt_id = pid;
    tg.weights_version = version;
    tg.n_prompt_tokens = (size_t)n;
    tg.prompt_tokens = prompt;
    tg.n_samples = G;
    tg.samples = sp;
    tg.group_size = G;
    tg.generation_seconds = 1.25;
    Crl__GroupReceived gr;
    crl__group_received__init(&gr);
    gr.group = &tg;
    gr.received_unix_ms = w->ms;
    gr.learner_version = version;
    gr.task_kind = CRL__TASK_KIND__TASK_KIND_CRITIC;
    Crl__TrajectoryRecord rec;
    crl__trajectory_record__init(&rec);
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_RECEIVED;
    rec.received = &gr;
    w_append(w, &rec);
}

static void w_used(writer_t *w, const char *actor, uint64_t gid, uint64_t step, uint32_t item,
                   float r0, float r1)
{
    float rewards[G] = { r0, r1 }, pref[G], fmt[G] = { 1, 1 }, adv[G];
    double mean = (r0 + r1) / 2.0, sd = fabs(r0 - r1) / 2.0;
    for (int s = 0; s < G; s++) {
        pref[s] = rewards[s] >= 0.5f;
        adv[s] = (float)((rewards[s] - mean) / (sd + 1e-6));
    }
    Crl__GroupKey key;
    crl__group_key__init(&key);
    key.actor_id = (char *)actor;
    key.group_id = gid;
    Crl__GroupOutcome o;
    crl__group_outcome__init(&o);
    o.key = &key;
    o.fate = CRL__GROUP_FATE__GROUP_FATE_USED;
    o.step = step;
    o.batch_index = item;
    o.staleness = 1;
    o.n_rewards = o.n_preference = o.n_format = o.n_advantages = G;
    o.rewards = rewards;
    o.preference = pref;
    o.format = fmt;
    o.advantages = adv;
    Crl__TrajectoryRecord rec;
    crl__trajectory_record__init(&rec);
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_OUTCOME;
    rec.outcome = &o;
    w_append(w, &rec);
}

static void w_dropped(writer_t *w, const char *actor, uint64_t gid, Crl__DropReason reason)
{
    Crl__GroupKey key;
    crl__group_key__init(&key);
    key.actor_id = (char *)actor;
    key.group_id = gid;
    Crl__GroupOutcome o;
    crl__group_outcome__init(&o);
    o.key = &key;
    o.fate = CRL__GROUP_FATE__GROUP_FATE_DROPPED;
    o.drop_reason = reason;
    Crl__TrajectoryRecord rec;
    crl__trajectory_record__init(&rec);
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_OUTCOME;
    rec.outcome = &o;
    w_append(w, &rec);
}

/* StepMarker of step with n keys "actor:gid". */
static void w_marker(writer_t *w, uint64_t step, int n, const char *const *actors,
                     const uint64_t *gids)
{
    Crl__GroupKey keys[8], *kp[8];
    cr_assert_leq(n, 8);
    for (int i = 0; i < n; i++) {
        crl__group_key__init(&keys[i]);
        keys[i].actor_id = (char *)actors[i];
        keys[i].group_id = gids[i];
        kp[i] = &keys[i];
    }
    uint64_t rng[4] = { 1, 2, 3, step };
    Crl__StepMarker m;
    crl__step_marker__init(&m);
    m.step = step;
    m.version_before = step - 1;
    m.version_after = step;
    m.n_groups = (size_t)n;
    m.groups = kp;
    m.n_rng_state = 4;
    m.rng_state = rng;
    m.weights_crc32c = 0x1234u + (uint32_t)step;
    m.formed_unix_ms = w->ms;
    m.update_seconds = 0.5;
    m.pending_offset = TRAJ_LOG_HEADER_BYTES;
    Crl__TrajectoryRecord rec;
    crl__trajectory_record__init(&rec);
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_STEP;
    rec.step = &m;
    w_append(w, &rec);
}

/* The standard log (seq in brackets):
 *   [0] R a#1 v0  [1] R b#1 v0  [2] O a#1 used s1 i0  [3] O b#1 used s1 i1
 *   [4] M step 1 (a#1, b#1)
 *   [5] R a#2 v1  [6] R c#1 v1  [7] R b#2 v0  [8] O b#2 dropped stale
 *   [9] O c#1 used s2 i0  [10] O a#2 used s2 i1  [11] M step 2 (c#1, a#2)
 *   [12] R c#2 v2  [13] O c#2 used s3 i0  [14] M step 3 (c#2)
 *   [15] R a#3 v2 (pending)
 * Mean rewards: a#1 0.5, b#1 1, c#1 0.45, a#2 0.1, c#2 0. */
static void write_standard(const char *dir, const tokenizer_t *tok, uint64_t max_file)
{
    writer_t w;
    w_open(&w, dir, tok, max_file);
    w_received(&w, "actor-a", 1, 0);
    w_received(&w, "actor-b", 1, 0);
    w_used(&w, "actor-a", 1, 1, 0, 1.0f, 0.0f);
    w_used(&w, "actor-b", 1, 1, 1, 1.0f, 1.0f);
    w_marker(&w, 1, 2, (const char *const[]){ "actor-a", "actor-b" }, (const uint64_t[]){ 1, 1 });
    w_received(&w, "actor-a", 2, 1);
    w_received(&w, "actor-c", 1, 1);
    w_received(&w, "actor-b", 2, 0);
    w_dropped(&w, "actor-b", 2, CRL__DROP_REASON__DROP_REASON_STALE);
    w_used(&w, "actor-c", 1, 2, 0, 0.9f, 0.0f);
    w_used(&w, "actor-a", 2, 2, 1, 0.1f, 0.1f);
    w_marker(&w, 2, 2, (const char *const[]){ "actor-c", "actor-a" }, (const uint64_t[]){ 1, 2 });
    w_received(&w, "actor-c", 2, 2);
    w_used(&w, "actor-c", 2, 3, 0, 0.0f, 0.0f);
    w_marker(&w, 3, 1, (const char *const[]){ "actor-c" }, (const uint64_t[]){ 2 });
    w_received(&w, "actor-a", 3, 2);
    w_close(&w);
}

static replay_index_t *load(const char *path, int skip)
{
    replay_index_options_t opt;
    replay_index_options_default(&opt);
    opt.skip_corrupt = skip;
    char err[1024] = "";
    replay_index_t *idx = replay_index_load(path, &opt, err, sizeof err);
    cr_assert_not_null(idx, "replay_index_load(%s): %s", path, err);
    return idx;
}

/* All problems as text, for failure messages. Caller frees. */
static char *problems_text(const replay_index_t *idx)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    replay_index_print_verify(idx, f);
    fclose(f);
    return buf;
}

/* "actor#gid,actor#gid,..." of the selected groups, in log order. */
static char *selection(const replay_index_t *idx, const replay_filter_t *f)
{
    size_t n = replay_index_n_groups(idx);
    unsigned char *sel = calloc(n + 1, 1);
    replay_index_select(idx, f, sel);
    char *out = calloc(1, 4096);
    for (size_t i = 0; i < n; i++) {
        if (!sel[i])
            continue;
        const replay_group_t *g = replay_index_group(idx, i);
        char one[300];
        snprintf(one, sizeof one, "%s%s#%lu", *out ? "," : "", g->actor_id + 6 /* "actor-" */,
                 (unsigned long)g->group_id);
        strcat(out, one);
    }
    free(sel);
    return out;
}

static char *select_with(const replay_index_t *idx, const char *opt, const char *value)
{
    replay_filter_t f;
    char err[256] = "";
    replay_filter_init(&f);
    cr_assert_eq(replay_filter_option(&f, opt, value, err, sizeof err), 0, "%s %s: %s", opt,
                 value ? value : "(none)", err);
    return selection(idx, &f);
}

static char *dump_to_string(const replay_index_t *idx, const replay_filter_t *f,
                            const tokenizer_t *tok, replay_format_t fmt, size_t *n)
{
    char *buf = NULL, err[512] = "";
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    int rc = replay_index_dump(idx, f, tok, fmt, out, n, err, sizeof err);
    fclose(out);
    cr_assert_eq(rc, 0, "replay_index_dump: %s", err);
    return buf;
}

/* Runs $CRL_BIN_DIR/crl-replay with args; stdout (+stderr when
 * with_stderr) in *out (caller frees); returns the exit status. */
static int run_replay(char *const *args, char **out, int with_stderr)
{
    const char *bindir = getenv("CRL_BIN_DIR");
    if (!bindir || !*bindir)
        cr_skip_test("CRL_BIN_DIR is not set (make test sets it to the build's bin folder)");
    char exe[1024];
    snprintf(exe, sizeof exe, "%s/crl-replay", bindir);
    if (access(exe, X_OK) != 0)
        cr_skip_test("%s is not built", exe);
    int pfd[2];
    cr_assert_eq(pipe(pfd), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        dup2(pfd[1], 1);
        if (with_stderr)
            dup2(pfd[1], 2);
        else {
            int nul = open("/dev/null", O_WRONLY);
            dup2(nul, 2);
        }
        close(pfd[0]);
        char *argv[32];
        int n = 0;
        argv[n++] = exe;
        for (int i = 0; args[i] && n < 31; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv(exe, argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    ssize_t k;
    while ((k = read(pfd[0], buf + len, cap - len - 1)) > 0) {
        len += (size_t)k;
        if (cap - len < 2)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    close(pfd[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Offset of the record with seq number want in a single-file log. */
static uint64_t record_offset(const char *dir, uint64_t want, size_t *len_out)
{
    char err[512];
    traj_log_reader_t *r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    const void *p;
    size_t len;
    uint32_t fi;
    uint64_t off;
    for (uint64_t k = 0;; k++) {
        cr_assert_eq(traj_log_next(r, &p, &len, &fi, &off), 1, "no record %lu",
                     (unsigned long)want);
        if (k == want)
            break;
    }
    traj_log_reader_close(&r);
    if (len_out)
        *len_out = len;
    return off;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0, "open %s", path);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

/* ------------------------------------------------------------ tests */

Test(replay, info_counts)
{
    char *dir = make_tmp_dir("info");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    replay_index_t *idx = load(dir, 0);
    char *probs = problems_text(idx);
    cr_assert_eq(replay_index_n_errors(idx), 0, "standard log has problems:\n%s", probs);
    cr_assert(replay_index_complete(idx));

    replay_summary_t s;
    replay_index_summary(idx, &s);
    cr_assert_eq(s.records, 16, "records: expected 16, got %lu", (unsigned long)s.records);
    cr_assert_eq(s.received, 7);
    cr_assert_eq(s.outcomes, 6);
    cr_assert_eq(s.markers, 3);
    cr_assert_eq(s.groups, 7, "groups: expected 7, got %lu", (unsigned long)s.groups);
    cr_assert_eq(s.used, 5, "used: expected 5, got %lu", (unsigned long)s.used);
    cr_assert_eq(s.used_incomplete, 0);
    cr_assert_eq(s.dropped, 1);
    cr_assert_eq(s.pending, 1);
    cr_assert_eq(s.drops[CRL__DROP_REASON__DROP_REASON_STALE], 1);
    cr_assert(s.has_steps);
    cr_assert_eq(s.step_min, 1);
    cr_assert_eq(s.step_max, 3);
    cr_assert(s.has_versions);
    cr_assert_eq(s.version_min, 0);
    cr_assert_eq(s.version_max, 2);
    cr_assert_eq(s.n_actors, 3);
    cr_assert_eq(s.files, 1);
    cr_assert_eq(s.last_ms - s.first_ms, 15 * 1500, "time span: expected 22500 ms, got %lu",
                 (unsigned long)(s.last_ms - s.first_ms));
    /* rewards of the 10 used samples: 1,0, 1,1, 0.9,0, 0.1,0.1, 0,0 -> mean 0.41 */
    cr_assert_eq(s.scored_samples, 10);
    cr_assert_float_eq(s.reward_mean, 0.41, 1e-6, "reward mean: expected 0.41, got %g",
                       s.reward_mean);
    cr_assert_float_eq(s.reward_min, 0.0, 1e-9);
    cr_assert_float_eq(s.reward_max, 1.0, 1e-9);
    cr_assert_float_eq(s.format_rate, 1.0, 1e-9);
    /* preference = reward >= 0.5: 1,0,1,1,1,0,0,0,0,0 */
    cr_assert_float_eq(s.preference_rate, 0.4, 1e-6, "preference: expected 0.4, got %g",
                       s.preference_rate);

    const char *want_actor[3] = { "actor-a", "actor-b", "actor-c" };
    uint64_t want_groups[3] = { 3, 2, 2 }, want_used[3] = { 2, 1, 2 };
    for (size_t i = 0; i < 3; i++) {
        replay_actor_t a;
        replay_index_actor(idx, i, &a);
        cr_assert_str_eq(a.actor_id, want_actor[i]);
        cr_assert_eq(a.groups, want_groups[i], "%s: expected %lu groups, got %lu", a.actor_id,
                     (unsigned long)want_groups[i], (unsigned long)a.groups);
        cr_assert_eq(a.used, want_used[i]);
    }
    long gi = replay_index_find(idx, "actor-c", 1);
    cr_assert_geq(gi, 0);
    const replay_group_t *g = replay_index_group(idx, (size_t)gi);
    cr_assert_eq(g->fate, REPLAY_USED);
    cr_assert_eq(g->step, 2);
    cr_assert_eq(g->batch_index, 0);
    cr_assert(g->in_marker);
    cr_assert_float_eq(g->reward_mean, 0.45, 1e-6);
    cr_assert_eq(replay_index_find(idx, "actor-c", 9), -1);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    replay_index_print_info(idx, f);
    fclose(f);
    cr_assert(strstr(buf, "stale 1"), "info lacks 'stale 1':\n%s", buf);
    cr_assert(strstr(buf, "7 received: 5 used"), "info lacks the group counts:\n%s", buf);
    cr_assert(strstr(buf, "2025-06-01 10:00:00.000 UTC"), "info lacks the start date:\n%s", buf);
    cr_assert(strstr(buf, "actor-b"), "info lacks actor-b:\n%s", buf);
    free(buf);
    free(probs);
    replay_index_destroy(&idx);
    cr_assert_null(idx);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, filters_select_expected_groups)
{
    char *dir = make_tmp_dir("filter");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    replay_index_t *idx = load(dir, 0);
    struct {
        const char *opt, *value, *want;
    } cases[] = {
        { "--step", "2", "a#2,c#1" },
        { "--step", "1:2", "a#1,b#1,a#2,c#1" },
        { "--step", "3:", "c#2" },
        { "--step", ":1", "a#1,b#1" },
        { "--actor", "actor-b", "b#1,b#2" },
        { "--version", "1", "a#2,c#1" },
        { "--version", "2:9", "c#2,a#3" },
        { "--reward", "0.4:0.6", "a#1,c#1" },
        { "--reward", "0.9:", "b#1" },
        { "--dropped", NULL, "b#2" },
        { "--dropped", "stale", "b#2" },
        { "--dropped", "DROP_REASON_STALE", "b#2" },
        { "--dropped", "duplicate", "" },
        { "--limit", "2", "a#1,b#1" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = select_with(idx, cases[i].opt, cases[i].value);
        cr_expect_str_eq(got, cases[i].want, "%s %s: expected {%s}, got {%s}", cases[i].opt,
                         cases[i].value ? cases[i].value : "", cases[i].want, got);
        free(got);
    }
    /* Criteria combine with AND. */
    replay_filter_t f;
    char err[256];
    replay_filter_init(&f);
    cr_assert_eq(replay_filter_option(&f, "--actor", "actor-a", err, sizeof err), 0);
    cr_assert_eq(replay_filter_option(&f, "--version", "1:2", err, sizeof err), 0);
    char *got = selection(idx, &f);
    cr_assert_str_eq(got, "a#2,a#3", "actor-a and versions 1..2: got {%s}", got);
    free(got);
    /* Bad values are refused with a reason. */
    const char *bad[][2] = { { "--step", "3:1" }, { "--step", "x" }, { "--reward", "a:b" },
                             { "--limit", "0" }, { "--dropped", "lost" }, { "--step", ":" } };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        replay_filter_init(&f);
        err[0] = '\0';
        cr_expect_eq(replay_filter_option(&f, bad[i][0], bad[i][1], err, sizeof err), -EINVAL,
                     "%s %s should be refused", bad[i][0], bad[i][1]);
        cr_expect_neq(err[0], '\0', "%s %s: no reason given", bad[i][0], bad[i][1]);
    }
    cr_assert_eq(replay_filter_option(&f, "--nope", "1", err, sizeof err), -ENOENT);
    replay_index_destroy(&idx);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, dump_text_decodes_selected_step)
{
    char *dir = make_tmp_dir("dump");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    replay_index_t *idx = load(dir, 0);
    replay_filter_t f;
    char err[256];
    replay_filter_init(&f);
    cr_assert_eq(replay_filter_option(&f, "--step", "2", err, sizeof err), 0);
    size_t n = 0;
    char *text = dump_to_string(idx, &f, tok, REPLAY_FORMAT_TEXT, &n);
    cr_assert_eq(n, 2, "step 2: expected 2 groups, got %zu", n);
    cr_assert(strstr(text, "resp actor-c 1 0"), "decoded response missing:\n%s", text);
    cr_assert(strstr(text, "resp actor-a 2 1"), "decoded response missing:\n%s", text);
    cr_assert_null(strstr(text, "resp actor-a 1 "), "a group of step 1 is in:\n%s", text);
    cr_assert(strstr(text, "<bos><img>[4 patches]</img>Which answer is better?"),
              "prompt not decoded with its image slots:\n%s", text);
    cr_assert(strstr(text, "USED at step 2 item 0, mean reward 0.450"), "fate line missing:\n%s", text);
    cr_assert(strstr(text, "reward 0.900"), "reward missing:\n%s", text);
    cr_assert(strstr(text, "logp -0.5000/token"), "mean log-prob missing:\n%s", text);
    cr_assert(strstr(text, "traj-000000.log offset "), "file and offset missing:\n%s", text);
    cr_assert_null(strstr(text, "<eos>"), "the final <eos> should be dropped:\n%s", text);
    /* a step is shown in batch order (c#1 is item 0), not log order */
    cr_assert_lt(strstr(text, "actor-c#1"), strstr(text, "actor-a#2"), "not in batch order:\n%s",
                 text);
    free(text);

    /* Dropped group: its reason, no rewards. */
    replay_filter_init(&f);
    cr_assert_eq(replay_filter_option(&f, "--dropped", NULL, err, sizeof err), 0);
    text = dump_to_string(idx, &f, tok, REPLAY_FORMAT_TEXT, &n);
    cr_assert_eq(n, 1);
    cr_assert(strstr(text, "DROPPED (stale)") && strstr(text, "resp actor-b 2 0"),
              "dropped dump:\n%s", text);
    free(text);

    /* Without a tokenizer: ids, image runs collapsed. */
    text = dump_to_string(idx, &f, NULL, REPLAY_FORMAT_TEXT, &n);
    cr_assert(strstr(text, "1 3 [4 patches] 4 "), "ids view of the prompt:\n%s", text);
    free(text);
    replay_index_destroy(&idx);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, dump_jsonl_parses)
{
    char *dir = make_tmp_dir("jsonl");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    replay_index_t *idx = load(dir, 0);
    size_t n = 0;
    char *text = dump_to_string(idx, NULL, tok, REPLAY_FORMAT_JSONL, &n);
    cr_assert_eq(n, 7);
    int lines = 0, saw_drop = 0, saw_a1 = 0, saw_pending = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        cr_assert_not_null(o, "line %d is not JSON: %s", lines, line);
        lines++;
        const char *actor = cJSON_GetStringValue(cJSON_GetObjectItem(o, "actor_id"));
        double gid = cJSON_GetNumberValue(cJSON_GetObjectItem(o, "group_id"));
        const char *fate = cJSON_GetStringValue(cJSON_GetObjectItem(o, "fate"));
        cr_assert(actor && fate, "line %d lacks actor_id/fate", lines);
        cJSON *samples = cJSON_GetObjectItem(o, "samples");
        cr_assert_eq(cJSON_GetArraySize(samples), G);
        if (!strcmp(actor, "actor-b") && gid == 2) {
            saw_drop = 1;
            cr_assert_str_eq(fate, "dropped");
            cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(o, "drop_reason")), "stale");
        }
        if (!strcmp(actor, "actor-a") && gid == 1) {
            saw_a1 = 1;
            cr_assert_str_eq(fate, "used");
            cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(o, "step")), 1);
            cJSON *s0 = cJSON_GetArrayItem(samples, 0);
            cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(s0, "text")),
                             "resp actor-a 1 0");
            cr_assert_float_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(s0, "reward")), 1.0, 1e-6);
            cr_assert_float_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(s0, "mean_logprob")), -0.5,
                               1e-6);
            cr_assert(cJSON_IsArray(cJSON_GetObjectItem(s0, "tokens")));
        }
        if (!strcmp(actor, "actor-a") && gid == 3) {
            saw_pending = 1;
            cr_assert_str_eq(fate, "pending");
            cr_assert_null(cJSON_GetObjectItem(cJSON_GetArrayItem(samples, 0), "reward"));
        }
        cJSON_Delete(o);
    }
    cr_assert_eq(lines, 7, "expected 7 JSON lines, got %d", lines);
    cr_assert(saw_drop && saw_a1 && saw_pending);
    free(text);
    replay_index_destroy(&idx);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, text_cleaning_of_odd_tokens)
{
    tokenizer_t *tok = tiny_tokenizer();
    /* bytes 0xC3 0xA9 (é) as two byte tokens decode as é; a lone 0xFF and
     * an ESC become U+FFFD; an unknown id is shown, not guessed. */
    int32_t ids[] = { TOK_BYTE0 + 'x', TOK_BYTE0 + 0xC3, TOK_BYTE0 + 0xA9, TOK_BYTE0 + 0xFF,
                      TOK_BYTE0 + 0x1B, TOK_BYTE0 + '\n', TOK_EOS };
    char *s = replay_response_text(tok, ids, 7);
    cr_assert_str_eq(s, "x\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD\n", "got '%s'", s);
    free(s);
    int32_t bad[] = { TOK_BOS, -1, -1, 99999 };
    s = replay_prompt_text(tok, bad, 4);
    cr_assert_str_eq(s, "<bos>[2 patches]<?99999>", "got '%s'", s);
    free(s);
    s = replay_response_text(tok, bad + 3, 1);
    cr_assert_str_eq(s, "<?99999>", "got '%s'", s);
    free(s);
    tok_destroy(&tok);
}

Test(replay, verify_good_log_and_rotation)
{
    char *dir = make_tmp_dir("good");
    tokenizer_t *tok = tiny_tokenizer();
    /* ~300-byte files: every record rotates. */
    write_standard(dir, tok, 300);
    replay_index_t *idx = load(dir, 0);
    char *probs = problems_text(idx);
    cr_assert_eq(replay_index_n_errors(idx), 0, "problems:\n%s", probs);
    cr_assert(strstr(probs, "OK: "), "no OK line:\n%s", probs);
    replay_summary_t s;
    replay_index_summary(idx, &s);
    cr_assert_gt(s.files, 5, "expected many files, got %u", s.files);
    cr_assert_eq(s.groups, 7);
    long gi = replay_index_find(idx, "actor-a", 3);
    cr_assert_gt(replay_index_group(idx, (size_t)gi)->file_index, 0);
    free(probs);

    /* cat of a rotated log keeps the pending positions pointing at records. */
    char *out = make_tmp_dir("good-cat");
    char err[512];
    rmdir(out);
    traj_log_t *log = traj_log_open(out, NULL, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    uint64_t seq = 0;
    replay_cat_stats_t st = { 0 };
    cr_assert_eq(replay_index_cat(idx, NULL, log, &seq, &st, err, sizeof err), 0, "%s", err);
    cr_assert_eq(traj_log_close(&log), 0);
    cr_assert_eq(st.records, 16);
    cr_assert_eq(st.markers_kept, 3);
    replay_index_t *copy = load(out, 0);
    probs = problems_text(copy);
    cr_assert_eq(replay_index_n_errors(copy), 0, "copy has problems:\n%s", probs);
    free(probs);
    replay_index_destroy(&copy);
    replay_index_destroy(&idx);

    char *o = NULL;
    int rc = run_replay((char *[]){ "verify", dir, NULL }, &o, 0);
    cr_assert_eq(rc, 0, "crl-replay verify: exit %d\n%s", rc, o);
    cr_assert(strstr(o, "OK"), "output:\n%s", o);
    free(o);
    tok_destroy(&tok);
    free(out);
    free(dir);
}

Test(replay, verify_flipped_byte_names_file_and_offset)
{
    char *dir = make_tmp_dir("flip");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    size_t len;
    uint64_t off = record_offset(dir, 7, &len); /* R b#2, in the middle */
    char *file = join(dir, "traj-000000.log");
    flip_byte(file, off + TRAJ_LOG_RECORD_OVERHEAD + len / 2);

    replay_index_t *idx = load(dir, 0);
    cr_assert(!replay_index_complete(idx), "reading should stop at the corrupt record");
    cr_assert_gt(replay_index_n_errors(idx), 0);
    char *probs = problems_text(idx);
    char want[128];
    snprintf(want, sizeof want, "offset %lu", (unsigned long)off);
    cr_assert(strstr(probs, file) && strstr(probs, want) && strstr(probs, "corrupt"),
              "expected '%s' and '%s' in:\n%s", file, want, probs);
    cr_assert(strstr(probs, "FAILED"), "%s", probs);
    free(probs);
    replay_index_destroy(&idx);

    /* skip_corrupt: the region is counted, its consequences explained. */
    idx = load(dir, 1);
    probs = problems_text(idx);
    cr_assert_eq(replay_index_n_errors(idx), 0, "with skip_corrupt:\n%s", probs);
    replay_summary_t s;
    replay_index_summary(idx, &s);
    cr_assert_eq(s.reader.skipped_regions, 1);
    cr_assert_eq(s.records, 15);
    cr_assert(strstr(probs, "skipped 1 corrupt region"), "%s", probs);
    cr_assert(strstr(probs, want), "the skipped region's offset (%s) is not named:\n%s", want,
              probs);
    free(probs);
    char *info = NULL;
    size_t info_len = 0;
    FILE *f = open_memstream(&info, &info_len);
    replay_index_print_info(idx, f);
    fclose(f);
    cr_assert(strstr(info, "1 corrupt region(s) skipped") && strstr(info, want),
              "info does not list the corrupt region at %s:\n%s", want, info);
    free(info);
    replay_index_destroy(&idx);

    char *o = NULL;
    int rc = run_replay((char *[]){ "verify", dir, NULL }, &o, 0);
    cr_assert_eq(rc, 1, "verify of a corrupt log: exit %d\n%s", rc, o);
    cr_assert(strstr(o, file) && strstr(o, want), "verify output lacks file/offset:\n%s", o);
    free(o);
    rc = run_replay((char *[]){ "verify", "--skip-corrupt", dir, NULL }, &o, 0);
    cr_assert_eq(rc, 0, "verify --skip-corrupt: exit %d\n%s", rc, o);
    cr_assert(strstr(o, "skipped 1 corrupt region"), "%s", o);
    free(o);
    free(file);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, torn_tail_is_not_corruption)
{
    char *dir = make_tmp_dir("torn");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    char *file = join(dir, "traj-000000.log");
    /* Half a record: a header announcing 100 bytes, 20 of them written. */
    FILE *f = fopen(file, "ab");
    cr_assert_not_null(f);
    uint8_t torn[28] = { 100, 0, 0, 0, 1, 2, 3, 4 };
    cr_assert_eq(fwrite(torn, 1, sizeof torn, f), sizeof torn);
    fclose(f);
    replay_index_t *idx = load(dir, 0);
    char *probs = problems_text(idx);
    cr_assert(replay_index_complete(idx));
    cr_assert_eq(replay_index_n_errors(idx), 0, "a torn tail is not an error:\n%s", probs);
    replay_summary_t s;
    replay_index_summary(idx, &s);
    cr_assert_eq(s.reader.torn_bytes, 28);
    cr_assert_eq(s.groups, 7);
    cr_assert(strstr(probs, "torn tail of 28 bytes"), "%s", probs);
    cr_assert_null(strstr(probs, "corrupt region"), "%s", probs);
    free(probs);
    replay_index_destroy(&idx);

    char *o = NULL;
    int rc = run_replay((char *[]){ "verify", dir, NULL }, &o, 0);
    cr_assert_eq(rc, 0, "exit %d\n%s", rc, o);
    cr_assert(strstr(o, "torn") && !strstr(o, "ERROR"), "%s", o);
    free(o);
    free(file);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, empty_log)
{
    char *dir = make_tmp_dir("empty");
    /* an empty folder, then a log with a header and no record */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            char err[256];
            traj_log_t *log = traj_log_open(dir, NULL, err, sizeof err);
            cr_assert_not_null(log, "%s", err);
            cr_assert_eq(traj_log_close(&log), 0);
        }
        replay_index_t *idx = load(dir, 0);
        replay_summary_t s;
        replay_index_summary(idx, &s);
        cr_assert_eq(s.records, 0);
        cr_assert_eq(s.groups, 0);
        cr_assert_eq(replay_index_n_errors(idx), 0);
        size_t n = 1;
        char *text = dump_to_string(idx, NULL, NULL, REPLAY_FORMAT_TEXT, &n);
        cr_assert_eq(n, 0);
        cr_assert_str_eq(text, "");
        free(text);
        replay_index_destroy(&idx);
        char *o = NULL;
        int rc = run_replay((char *[]){ "info", dir, NULL }, &o, 0);
        cr_assert_eq(rc, 0, "info on an empty log: exit %d\n%s", rc, o);
        cr_assert(strstr(o, "0 received"), "%s", o);
        free(o);
        rc = run_replay((char *[]){ "verify", dir, NULL }, &o, 0);
        cr_assert_eq(rc, 0, "verify on an empty log: exit %d\n%s", rc, o);
        free(o);
    }
    free(dir);
}

Test(replay, verify_finds_logical_problems)
{
    char *dir = make_tmp_dir("logic");
    tokenizer_t *tok = tiny_tokenizer();
    writer_t w;
    w_open(&w, dir, tok, 0);
    w_received(&w, "actor-a", 1, 0);
    w_received(&w, "actor-a", 2, 0);
    w_dropped(&w, "actor-a", 2, CRL__DROP_REASON__DROP_REASON_DUPLICATE);
    w_used(&w, "actor-a", 1, 1, 0, 1, 0);
    w.seq += 2; /* two records lost */
    /* step 1 lists a dropped group and one never received */
    w_marker(&w, 1, 3, (const char *const[]){ "actor-a", "actor-a", "actor-z" },
             (const uint64_t[]){ 1, 2, 7 });
    w_used(&w, "actor-q", 5, 2, 0, 1, 0);  /* outcome of a group never received */
    w_received(&w, "actor-a", 1, 0);       /* received twice */
    w_close(&w);
    replay_index_t *idx = load(dir, 0);
    char *probs = problems_text(idx);
    /* "received again" is a note (actors re-send after reconnects), not an error. */
    cr_assert_eq(replay_index_n_errors(idx), 4, "expected 4 errors:\n%s", probs);
    const char *want[] = { "2 record(s) missing", "whose outcome is dropped: duplicate",
                           "actor-z#7, which was not received", "actor-q#5, which was not received",
                           "received again" };
    for (size_t i = 0; i < 5; i++)
        cr_expect(strstr(probs, want[i]), "'%s' not reported:\n%s", want[i], probs);
    free(probs);
    replay_index_destroy(&idx);

    char *o = NULL;
    int rc = run_replay((char *[]){ "verify", dir, NULL }, &o, 0);
    cr_assert_eq(rc, 1, "exit %d\n%s", rc, o);
    cr_assert(strstr(o, "traj-000000.log offset "), "%s", o);
    free(o);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, cat_with_filter_keeps_only_selected)
{
    char *dir = make_tmp_dir("catsrc");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    char *base = make_tmp_dir("catdst");
    char *out_actor = join(base, "actor-a");
    char *out_step = join(base, "step3");

    /* library: --actor actor-a -> its 3 groups, no StepMarker complete */
    replay_index_t *idx = load(dir, 0);
    char err[512];
    replay_filter_t f;
    replay_filter_init(&f);
    cr_assert_eq(replay_filter_option(&f, "--actor", "actor-a", err, sizeof err), 0);
    traj_log_t *log = traj_log_open(out_actor, NULL, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    uint64_t seq = 0;
    replay_cat_stats_t st = { 0 };
    cr_assert_eq(replay_index_cat(idx, &f, log, &seq, &st, err, sizeof err), 0, "%s", err);
    cr_assert_eq(traj_log_close(&log), 0);
    cr_assert_eq(st.groups, 3);
    cr_assert_eq(st.records, 5, "3 received + 2 outcomes, got %lu", (unsigned long)st.records);
    cr_assert_eq(st.markers_kept, 0);
    cr_assert_eq(st.markers_dropped, 3);
    replay_index_destroy(&idx);

    idx = load(out_actor, 0);
    replay_summary_t s;
    replay_index_summary(idx, &s);
    cr_assert_eq(s.groups, 3);
    cr_assert_eq(s.n_actors, 1);
    cr_assert_eq(s.markers, 0);
    /* used outcomes whose StepMarker was left out: noted, not errors */
    char *probs = problems_text(idx);
    cr_assert_eq(replay_index_n_errors(idx), 0, "%s", probs);
    free(probs);
    replay_index_destroy(&idx);

    /* binary: --step 3 keeps c#2 with its StepMarker */
    char *o = NULL;
    int rc = run_replay((char *[]){ "cat", out_step, dir, "--step", "3", NULL }, &o, 0);
    cr_assert_eq(rc, 0, "cat: exit %d\n%s", rc, o);
    cr_assert(strstr(o, "1 groups, 1 StepMarkers"), "%s", o);
    free(o);
    rc = run_replay((char *[]){ "info", out_step, NULL }, &o, 0);
    cr_assert_eq(rc, 0, "info: exit %d\n%s", rc, o);
    cr_assert(strstr(o, "1 received: 1 used") && strstr(o, "actor-c") && !strstr(o, "actor-a"),
              "info of the slice:\n%s", o);
    free(o);
    rc = run_replay((char *[]){ "verify", out_step, NULL }, &o, 0);
    cr_assert_eq(rc, 0, "verify of the slice: exit %d\n%s", rc, o);
    free(o);
    /* refuses a non-empty OUTDIR */
    rc = run_replay((char *[]){ "cat", out_step, dir, NULL }, &o, 1);
    cr_assert_eq(rc, 1, "cat into a non-empty folder: exit %d\n%s", rc, o);
    cr_assert(strstr(o, "not empty"), "%s", o);
    free(o);
    free(out_actor);
    free(out_step);
    free(base);
    tok_destroy(&tok);
    free(dir);
}

Test(replay, binary_dump_and_help)
{
    char *dir = make_tmp_dir("bin");
    tokenizer_t *tok = tiny_tokenizer();
    write_standard(dir, tok, 0);
    char *tok_path = join(dir, "../tok-bin.json");
    char err[256];
    cr_assert_eq(tok_save(tok, tok_path, err, sizeof err), 0, "%s", err);
    char *o = NULL;
    int rc = run_replay((char *[]){ "dump", dir, "--tokenizer", tok_path, "--actor", "actor-b",
                                    "--dropped", NULL },
                        &o, 0);
    cr_assert_eq(rc, 0, "dump: exit %d\n%s", rc, o);
    cr_assert(strstr(o, "actor-b#2") && strstr(o, "resp actor-b 2 1") && !strstr(o, "actor-b#1"),
              "%s", o);
    free(o);
    rc = run_replay((char *[]){ "dump", dir, "--format", "jsonl", "--tokenizer", tok_path,
                                "--step", "1", NULL },
                    &o, 0);
    cr_assert_eq(rc, 0);
    int lines = 0;
    for (char *p = o; (p = strchr(p, '\n')); p++)
        lines++;
    cr_assert_eq(lines, 2, "step 1 has 2 groups, got %d lines:\n%s", lines, o);
    free(o);
    const char *cmds[] = { "info", "dump", "verify", "cat" };
    for (int i = 0; i < 4; i++) {
        rc = run_replay((char *[]){ (char *)cmds[i], "--help", NULL }, &o, 0);
        cr_expect_eq(rc, 0, "%s --help: exit %d", cmds[i], rc);
        cr_expect(strstr(o, "usage: crl-replay"), "%s --help:\n%s", cmds[i], o);
        free(o);
    }
    rc = run_replay((char *[]){ "dump", dir, "--step", "x", NULL }, &o, 1);
    cr_assert_eq(rc, 2, "bad --step: exit %d\n%s", rc, o);
    free(o);
    rc = run_replay((char *[]){ "info", "/nonexistent/log", NULL }, &o, 1);
    cr_assert_eq(rc, 1);
    cr_assert(strstr(o, "/nonexistent/log"), "the error names the path:\n%s", o);
    free(o);
    free(tok_path);
    tok_destroy(&tok);
    free(dir);
}

/* A crash between the outcomes of step 1 and its StepMarker, then the
 * restarted learner forms step 1 anew from other groups: the abandoned
 * outcomes are notes, not errors; an outcome no marker can account for is. */
Test(replay, crash_redo_of_a_step_is_a_note)
{
    char *dir = make_tmp_dir("redo");
    tokenizer_t *tok = tiny_tokenizer();
    writer_t w;
    w_open(&w, dir, tok, 0);
    w_received(&w, "actor-a", 1, 0);
    w_received(&w, "actor-b", 1, 0);
    w_used(&w, "actor-a", 1, 1, 0, 1, 0);
    w_used(&w, "actor-b", 1, 1, 1, 1, 0);
    /* crash here; restart */
    w_received(&w, "actor-c", 1, 0);
    w_used(&w, "actor-c", 1, 1, 0, 0, 1);
    w_used(&w, "actor-a", 1, 1, 1, 1, 0);
    w_marker(&w, 1, 2, (const char *const[]){ "actor-c", "actor-a" }, (const uint64_t[]){ 1, 1 });
    w_close(&w);
    replay_index_t *idx = load(dir, 0);
    char *probs = problems_text(idx);
    cr_assert_eq(replay_index_n_errors(idx), 0, "a redone step is not an error:\n%s", probs);
    cr_assert(strstr(probs, "actor-b#1: its outcome (step 1 item 1) is from an attempt"), "%s",
              probs);
    free(probs);
    const replay_group_t *a = replay_index_group(idx, (size_t)replay_index_find(idx, "actor-a", 1));
    cr_assert_eq(a->batch_index, 1, "the last outcome counts");
    cr_assert(a->in_marker);
    cr_assert_eq(a->n_outcomes, 2);
    replay_index_destroy(&idx);

    /* An outcome at an item the marker does not have: an error. */
    w_open(&w, dir, tok, 0);
    w.seq = 8;
    w_received(&w, "actor-d", 1, 0);
    w_used(&w, "actor-d", 1, 2, 5, 1, 0);
    w_marker(&w, 2, 1, (const char *const[]){ "actor-b" }, (const uint64_t[]){ 1 });
    w_close(&w);
    idx = load(dir, 0);
    probs = problems_text(idx);
    cr_assert_eq(replay_index_n_errors(idx), 2, "expected 2 errors:\n%s", probs);
    cr_assert(strstr(probs, "actor-d#1 was used at step 2 item 5 but step 2's StepMarker (1 groups) does not list it"),
              "%s", probs);
    cr_assert(strstr(probs, "whose outcome says step 1 item 1"), "%s", probs);
    free(probs);
    replay_index_destroy(&idx);
    tok_destroy(&tok);
    free(dir);
}
