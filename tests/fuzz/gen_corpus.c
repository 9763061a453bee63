/* gen_corpus: writes the seed corpora of tests/fuzz/corpus/<target>/ with
 * the library's own writers (valid inputs of every kind) plus a few
 * near-valid variants, and the JSON dictionaries of tests/fuzz/dict/.
 * Run by `tests/fuzz/run.sh --corpus`; the output is committed, so this
 * only needs re-running when a format changes.
 *   usage: gen_corpus OUT_DIR   (OUT_DIR = tests/fuzz) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "crc32c.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "traj_log.h"
#include "wire.h"

static const char *g_out;

static void die(const char *what, const char *why)
{
    fprintf(stderr, "gen_corpus: %s: %s\n", what, why);
    exit(1);
}

static void mkdir_p(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        die(path, strerror(errno));
}

static void put(const char *sub, const char *name, const void *data, size_t len)
{
    char dir[1024], path[1200];
    snprintf(dir, sizeof dir, "%s/%s", g_out, sub);
    mkdir_p(dir);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        die(path, strerror(errno));
}

static void put_str(const char *sub, const char *name, const char *s)
{
    put(sub, name, s, strlen(s));
}

static void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n)
        die(path, "read failed");
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* ------------------------------------------------------------ envelopes */

static void put_env(const char *name, const Crl__Envelope *env, int must_be_valid)
{
    size_t len = 0;
    uint8_t *buf = wire_encode(env, &len);
    if (!buf)
        die(name, "wire_encode failed");
    if (must_be_valid) {
        wire_limits_t lim;
        char err[256];
        wire_limits_default(&lim);
        Crl__Envelope *back = wire_decode(buf, len, &lim, NULL, err, sizeof err);
        if (!back)
            die(name, err);
        wire_envelope_free(&back);
    }
    put("corpus/fuzz_envelope", name, buf, len);
    free(buf);
}

static void gen_envelopes(void)
{
    Crl__Envelope env;
    int32_t prompt[] = { 1, 3, -1, -1, 4, 300, 12, 5 };
    int32_t prompt_alt[] = { 1, 3, -1, -1, 4, 12, 300, 5 };
    int32_t toks[] = { 40, 41, 2 };
    float lps[] = { -0.5f, -1.25f, -0.01f };
    uint8_t image[3 * 2 * 2] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
    uint64_t unacked[] = { 7, 9 };

    Crl__Hello hello = CRL__HELLO__INIT;
    hello.actor_id = "actor-1";
    hello.hostname = "host";
    hello.pid = 1234;
    hello.n_threads = 2;
    hello.n_unacked_group_ids = 2;
    hello.unacked_group_ids = unacked;
    hello.weights_version = 3;
    hello.next_group_id = 10;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HELLO;
    env.hello = &hello;
    put_env("hello", &env, 1);
    env.protocol_version = 2;
    put_env("hello-bad-version", &env, 0);
    hello.actor_id = "bad id";
    env.protocol_version = CRL_PROTOCOL_VERSION;
    put_env("hello-bad-id", &env, 0);

    Crl__Welcome welcome = CRL__WELCOME__INIT;
    welcome.run_id = "run1";
    welcome.heartbeat_ms = 500;
    welcome.heartbeat_timeout_ms = 5000;
    welcome.max_staleness = 2;
    welcome.current_version = 4;
    welcome.config_digest = "abc123";
    welcome.vocab_size = 512;
    welcome.image_size = 2;
    welcome.model_config_json = "{\"dim\": 64}";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WELCOME;
    env.welcome = &welcome;
    put_env("welcome", &env, 1);

    Crl__WorkRequest wr = CRL__WORK_REQUEST__INIT;
    wr.credits = 2;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_REQUEST;
    env.work_request = &wr;
    put_env("work-request", &env, 1);

    Crl__WorkGrant g = CRL__WORK_GRANT__INIT;
    g.grant_id = 77;
    g.prompt_id = "critic-0001";
    g.task_kind = CRL__TASK_KIND__TASK_KIND_CRITIC;
    g.n_prompt_tokens = sizeof prompt / sizeof *prompt;
    g.prompt_tokens = prompt;
    g.image.len = sizeof image;
    g.image.data = image;
    g.image_size = 2;
    g.group_size = 4;
    g.temperature = 1.0f;
    g.top_p = 0.95f;
    g.max_new_tokens = 64;
    g.min_weights_version = 3;
    g.seed = 42;
    g.n_prompt_tokens_alt = sizeof prompt_alt / sizeof *prompt_alt;
    g.prompt_tokens_alt = prompt_alt;
    g.alt_count = 2;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    env.work_grant = &g;
    put_env("work-grant", &env, 1);
    g.top_p = 0.0f;
    put_env("work-grant-bad-top-p", &env, 0);

    Crl__Sample s[2] = { CRL__SAMPLE__INIT, CRL__SAMPLE__INIT };
    Crl__Sample *sp[2] = { &s[0], &s[1] };
    for (int i = 0; i < 2; i++) {
        s[i].n_tokens = 3;
        s[i].tokens = toks;
        s[i].n_logprobs = 3;
        s[i].logprobs = lps;
        s[i].finished_by_eos = 1;
        s[i].prompt_index = (uint32_t)i;
    }
    Crl__TrajectoryGroup tg = CRL__TRAJECTORY_GROUP__INIT;
    tg.actor_id = "actor-1";
    tg.group_id = 5;
    tg.grant_id = 77;
    tg.prompt_id = "critic-0001";
    tg.weights_version = 3;
    tg.n_prompt_tokens = sizeof prompt / sizeof *prompt;
    tg.prompt_tokens = prompt;
    tg.n_prompt_tokens_alt = sizeof prompt_alt / sizeof *prompt_alt;
    tg.prompt_tokens_alt = prompt_alt;
    tg.n_samples = 2;
    tg.samples = sp;
    tg.generation_seconds = 0.25;
    tg.group_size = 2;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_TRAJECTORY_GROUP;
    env.trajectory_group = &tg;
    put_env("trajectory-group", &env, 1);

    Crl__AckEntry ae[2] = { CRL__ACK_ENTRY__INIT, CRL__ACK_ENTRY__INIT };
    Crl__AckEntry *aep[2] = { &ae[0], &ae[1] };
    ae[0].group_id = 5;
    ae[0].status = CRL__ACK_STATUS__ACK_STATUS_ACCEPTED;
    ae[1].group_id = 6;
    ae[1].status = CRL__ACK_STATUS__ACK_STATUS_DROPPED;
    ae[1].reason = CRL__DROP_REASON__DROP_REASON_STALE;
    Crl__Ack ack = CRL__ACK__INIT;
    ack.n_entries = 2;
    ack.entries = aep;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_ACK;
    env.ack = &ack;
    put_env("ack", &env, 1);

    Crl__Heartbeat hb = CRL__HEARTBEAT__INIT;
    hb.sent_unix_ms = 1700000000000ull;
    hb.state = CRL__ACTOR_STATE__ACTOR_STATE_GENERATING;
    hb.weights_version = 3;
    hb.unacked_groups = 1;
    hb.open_grants = 2;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_HEARTBEAT;
    env.heartbeat = &hb;
    put_env("heartbeat", &env, 1);

    Crl__Bye bye = CRL__BYE__INIT;
    bye.reason = "shutting down";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_BYE;
    env.bye = &bye;
    put_env("bye", &env, 1);

    Crl__WeightsPublish wp = CRL__WEIGHTS_PUBLISH__INIT;
    wp.version = 4;
    wp.total_bytes = 4096;
    wp.crc32c = 0xdeadbeef;
    wp.layout = "f32le;tensor-table-v1";
    wp.learner_step = 4;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH;
    env.weights_publish = &wp;
    put_env("weights-publish", &env, 1);

    Crl__PublishAck pa = CRL__PUBLISH_ACK__INIT;
    pa.version = 4;
    pa.ok = 1;
    pa.error = "";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_PUBLISH_ACK;
    env.publish_ack = &pa;
    put_env("publish-ack", &env, 1);

    Crl__WeightsAnnounce wa = CRL__WEIGHTS_ANNOUNCE__INIT;
    wa.version = 4;
    wa.total_bytes = 4096;
    wa.crc32c = 0xdeadbeef;
    wa.layout = "f32le;tensor-table-v1";
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE;
    env.weights_announce = &wa;
    put_env("weights-announce", &env, 1);

    Crl__WeightsFetch wf = CRL__WEIGHTS_FETCH__INIT;
    wf.version = 4;
    wf.offset = 1024;
    wf.length = 1024;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_FETCH;
    env.weights_fetch = &wf;
    put_env("weights-fetch", &env, 1);

    Crl__WeightsChunk wc = CRL__WEIGHTS_CHUNK__INIT;
    wc.version = 4;
    wc.offset = 1024;
    wc.length = 1024;
    wc.total_bytes = 4096;
    wc.crc32c = 0xdeadbeef;
    wc.status = CRL__CHUNK_STATUS__CHUNK_STATUS_OK;
    wc.latest_version = 4;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WEIGHTS_CHUNK;
    env.weights_chunk = &wc;
    put_env("weights-chunk", &env, 1);
    wc.status = CRL__CHUNK_STATUS__CHUNK_STATUS_GONE;
    put_env("weights-chunk-gone", &env, 1);
    wc.status = CRL__CHUNK_STATUS__CHUNK_STATUS_OK;
    wc.length = 4000;
    put_env("weights-chunk-bad-range", &env, 0);

    wire_envelope_init(&env);
    put_env("no-body", &env, 0);
}

/* ------------------------------------------------------------- datasets */

static void gen_datasets(void)
{
    const char *d = "corpus/fuzz_dataset";
    put_str(d, "critic.jsonl",
            "{\"id\": \"c1\", \"question\": \"How many red squares?\", \"answers\": "
            "[\"<think>I count 3.</think> \\\\boxed{3}\", \"<think>2</think> \\\\boxed{2}\"], "
            "\"preferred\": 0, \"image\": null, \"source\": \"world\", \"type\": \"count_color\"}\n");
    put_str(d, "policy.jsonl",
            "{\"id\": 17, \"question\": \"Which answer is better? A: 3 B: 2\", \"answer\": \"A\", "
            "\"reference\": \"<think>A counts right.</think> \\\\boxed{A}\"}\n"
            "{\"question\": \"What colour is the circle?\", \"answer\": \"blue\"}\n");
    put_str(d, "caption.jsonl",
            "{\"id\": \"cap1\", \"caption\": \"a red square left of a blue circle\", "
            "\"image\": \"/dev/null\"}\n");
    put_str(d, "mixed.jsonl",
            "{\"id\": \"c2\", \"question\": \"q\", \"answers\": [\"a\", \"b\"], \"preferred\": 1}\n"
            "\n"
            "   \r\n"
            "{\"question\": \"q2\", \"answer\": \"x\", \"extra\": [1, {\"y\": null}]}\r\n"
            "{\"caption\": \"c\", \"image\": \"missing.png\"}\n"
            "{\"question\": \"q3\", \"answers\": [\"a\"], \"preferred\": 0}\n"
            "{\"answer\": \"no question\"}\n"
            "{\"question\": \"q\", \"answer\": \"a\"} trailing\n"
            "[1, 2, 3]\n"
            "{\"preferred\": 2}\n"
            "{\"question\": \"q\", \"answer\": \"a\", \"reference\": \"no think\"}\n");
    static const char nul_line[] = "{\"question\": \"q\", \"answer\": \"a\"}\n{\"question\": \"q\0\"}\n";
    put(d, "nul-byte.jsonl", nul_line, sizeof nul_line - 1);
}

/* --------------------------------------------------------- safetensors */

static void gen_safetensors(const char *tmp)
{
    const char *d = "corpus/fuzz_safetensors";
    char path[600], err[512];
    float w[6] = { 1, 2, 3, 4, 5, 6 }, b[2] = { -1, 0.5f }, scalar[1] = { 3.25f };
    st_tensor_t t[3] = {
        { .name = "layer.w", .ndim = 2, .shape = { 2, 3 }, .data = w },
        { .name = "layer.b", .ndim = 1, .shape = { 2 }, .data = b },
        { .name = "scale", .ndim = 0, .shape = { 0 }, .data = scalar },
    };
    const char *meta[] = { "format", "crl", "step", "12" };
    snprintf(path, sizeof path, "%s/a.safetensors", tmp);
    if (st_write(path, t, 3, meta, 2, err, sizeof err) != 0)
        die(path, err);
    size_t len;
    uint8_t *buf = slurp(path, &len);
    put(d, "three-tensors.safetensors", buf, len);
    put(d, "truncated.safetensors", buf, len - 5);
    free(buf);

    st_tensor_t empty = { .name = "empty", .ndim = 2, .shape = { 0, 4 }, .data = w };
    if (st_write(path, &empty, 1, NULL, 0, err, sizeof err) != 0)
        die(path, err);
    buf = slurp(path, &len);
    put(d, "empty-tensor.safetensors", buf, len);
    free(buf);

    /* Hand-written headers: overlap, and a gap. */
    static const char hdr_overlap[] =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    static const char hdr_gap[] =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
        "\"__metadata__\":{\"k\":\"v\"}}";
    const char *hdrs[2] = { hdr_overlap, hdr_gap };
    const char *names[2] = { "overlap.safetensors", "gap.safetensors" };
    for (int k = 0; k < 2; k++) {
        size_t hl = strlen(hdrs[k]);
        uint8_t file[512];
        for (int i = 0; i < 8; i++)
            file[i] = (uint8_t)((uint64_t)hl >> (8 * i));
        memcpy(file + 8, hdrs[k], hl);
        memset(file + 8 + hl, 0, 8);
        put(d, names[k], file, 8 + hl + 8);
    }
}

/* ------------------------------------------------------------ traj log */

static uint8_t *pack_record(const Crl__TrajectoryRecord *r, size_t *len)
{
    *len = crl__trajectory_record__get_packed_size(r);
    uint8_t *b = malloc(*len ? *len : 1);
    if (!b)
        die("pack", "out of memory");
    crl__trajectory_record__pack(r, b);
    return b;
}

static void gen_traj_log(const char *tmp)
{
    const char *d = "corpus/fuzz_traj_log";
    char dir[600], path[700], err[512];
    snprintf(dir, sizeof dir, "%s/traj", tmp);
    traj_log_options_t opt;
    traj_log_options_default(&opt);
    opt.fsync_policy = TRAJ_FSYNC_NEVER;
    traj_log_t *log = traj_log_open(dir, &opt, err, sizeof err);
    if (!log)
        die(dir, err);

    int32_t prompt[] = { 1, 3, -1, 4, 12 };
    int32_t toks[] = { 40, 2 };
    float lps[] = { -0.5f, -0.01f };
    Crl__Sample s = CRL__SAMPLE__INIT;
    Crl__Sample *sp[1] = { &s };
    s.n_tokens = 2;
    s.tokens = toks;
    s.n_logprobs = 2;
    s.logprobs = lps;
    Crl__TrajectoryGroup tg = CRL__TRAJECTORY_GROUP__INIT;
    tg.actor_id = "actor-1";
    tg.group_id = 1;
    tg.prompt_id = "p1";
    tg.n_prompt_tokens = 5;
    tg.prompt_tokens = prompt;
    tg.n_samples = 1;
    tg.samples = sp;
    tg.group_size = 1;
    Crl__GroupReceived gr = CRL__GROUP_RECEIVED__INIT;
    gr.group = &tg;
    gr.received_unix_ms = 1700000000000ull;
    gr.task_kind = CRL__TASK_KIND__TASK_KIND_CRITIC;
    Crl__TrajectoryRecord r1 = CRL__TRAJECTORY_RECORD__INIT;
    r1.seq = 0;
    r1.kind_case = CRL__TRAJECTORY_RECORD__KIND_RECEIVED;
    r1.received = &gr;

    Crl__GroupKey key = CRL__GROUP_KEY__INIT;
    Crl__GroupKey *keys[1] = { &key };
    key.actor_id = "actor-1";
    key.group_id = 1;
    uint64_t rng[4] = { 1, 2, 3, 4 };
    Crl__StepMarker sm = CRL__STEP_MARKER__INIT;
    sm.step = 1;
    sm.version_before = 0;
    sm.version_after = 1;
    sm.n_groups = 1;
    sm.groups = keys;
    sm.n_rng_state = 4;
    sm.rng_state = rng;
    sm.weights_crc32c = 0x1234;
    Crl__TrajectoryRecord r2 = CRL__TRAJECTORY_RECORD__INIT;
    r2.seq = 1;
    r2.kind_case = CRL__TRAJECTORY_RECORD__KIND_STEP;
    r2.step = &sm;

    size_t l1, l2;
    uint8_t *p1 = pack_record(&r1, &l1), *p2 = pack_record(&r2, &l2);
    if (traj_log_append(log, p1, l1) != 0 || traj_log_append(log, p2, l2) != 0 ||
        traj_log_close(&log) != 0)
        die(dir, "append failed");
    snprintf(path, sizeof path, "%s/traj-000000.log", dir);
    size_t len;
    uint8_t *file = slurp(path, &len);
    uint8_t *in = malloc(len + 1);
    /* mode 0: the file as is */
    in[0] = 0;
    memcpy(in + 1, file, len);
    put(d, "two-records.raw", in, len + 1);
    /* torn tail, and a corrupt first record (valid one after it) */
    put(d, "torn-tail.raw", in, len + 1 - 3);
    in[1 + TRAJ_LOG_HEADER_BYTES + 8] ^= 0xff;
    put(d, "corrupt-first.raw", in, len + 1);
    free(in);
    free(file);

    /* mode 3: harness header + harness-framed records */
    uint8_t sbuf[1024];
    size_t n = 0;
    sbuf[n++] = 3;
    sbuf[n++] = 0, sbuf[n++] = (uint8_t)l1;
    memcpy(sbuf + n, p1, l1), n += l1;
    sbuf[n++] = 0, sbuf[n++] = (uint8_t)l2;
    memcpy(sbuf + n, p2, l2), n += l2;
    put(d, "framed-two-records.bin", sbuf, n);
    sbuf[3] = 1; /* first record's CRC wrong */
    put(d, "framed-bad-crc.bin", sbuf, n);
    sbuf[3] = 0;
    sbuf[3 + l1 + 1] = 4 | (5 << 3); /* second record torn */
    put(d, "framed-torn.bin", sbuf, n);
    free(p1);
    free(p2);
}

/* ----------------------------------------------------------- tokenizer */

static void gen_tokenizer(const char *tmp)
{
    const char *d = "corpus/fuzz_tokenizer";
    const char *texts[] = {
        "<think>The red square is left of the blue circle.</think> \\boxed{A}",
        "How many red squares are there? There are 3 red squares and 2 blue circles.",
        "Which answer is better? Answer A says three, answer B says two.",
    };
    char err[512], path[600];
    tokenizer_t *tok = tok_train(texts, NULL, 3, TOK_N_BASE + 40, err, sizeof err);
    if (!tok)
        die("tok_train", err);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmp);
    if (tok_save(tok, path, err, sizeof err) != 0)
        die(path, err);
    tok_destroy(&tok);
    size_t len;
    char *buf = slurp(path, &len);
    buf[len] = '\0';
    put(d, "trained.json", buf, len);
    /* near-valid: a merge that refers to itself (the id of the first merge) */
    char *m = strstr(buf, "\"merges\"");
    char *open = m ? strchr(m, '[') : NULL;
    char *first = open ? strchr(open + 1, '[') : NULL;
    if (first) {
        char *copy = strdup(buf);
        size_t at = (size_t)(first - buf) + 1;
        char num[16];
        snprintf(num, sizeof num, "%d", (int)TOK_N_BASE);
        memcpy(copy + at, num, strlen(num)); /* the ids here are >= 7, 3 digits */
        put(d, "self-merge.json", copy, len);
        free(copy);
    }
    char *v = strstr(buf, "\"version\": 1");
    if (v) {
        v[11] = '2';
        put(d, "version-2.json", buf, len);
    }
    free(buf);
}

/* -------------------------------------------------------------- config */

static void gen_config(void)
{
    const char *d = "corpus/fuzz_config";
    crl_config_t cfg;
    if (config_defaults(&cfg) != 0)
        die("config_defaults", "bad defaults");
    char *json = config_to_json(&cfg);
    if (!json)
        die("config_to_json", "failed");
    put_str(d, "defaults.json", json);
    free(json);
    put_str(d, "small.json",
            "{\"run\": {\"name\": \"tiny\", \"seed\": 7}, \"rl\": {\"group_size\": 4, "
            "\"temperature\": 0.7}, \"actor\": {\"cpus\": \"auto\"}, "
            "\"learner\": {\"cpus\": [0, 1]}, \"data\": {\"on_error\": \"stop\"}}");
    put_str(d, "unknown-key.json", "{\"rl\": {\"group_sise\": 4}}");
    put_str(d, "out-of-range.json", "{\"rl\": {\"top_p\": 1.5}, \"sft\": {\"lr\": -1}}");

    /* Dictionary: every section and key name. */
    size_t nk = 0;
    const config_key_t *keys = config_schema(&nk);
    size_t cap = 64 * nk + 1024, o = 0;
    char *dict = malloc(cap);
    o += (size_t)snprintf(dict + o, cap - o, "\"{\"\n\"}\"\n\"[\"\n\"]\"\n\"true\"\n\"false\"\n"
                                             "\"auto\"\n\"null\"\n\"1e308\"\n\"-0\"\n");
    char prev[64] = "";
    for (size_t i = 0; i < nk; i++) {
        const char *dot = strchr(keys[i].key, '.');
        size_t sl = (size_t)(dot - keys[i].key);
        if (strlen(prev) != sl || strncmp(prev, keys[i].key, sl) != 0) {
            snprintf(prev, sizeof prev, "%.*s", (int)sl, keys[i].key);
            o += (size_t)snprintf(dict + o, cap - o, "\"\\\"%s\\\"\"\n", prev);
        }
        o += (size_t)snprintf(dict + o, cap - o, "\"\\\"%s\\\"\"\n", dot + 1);
        if (keys[i].enum_values)
            for (const char *const *e = keys[i].enum_values; *e; e++)
                o += (size_t)snprintf(dict + o, cap - o, "\"\\\"%s\\\"\"\n", *e);
    }
    put("dict", "fuzz_config.dict", dict, o);
    free(dict);
}

static void gen_dicts(void)
{
    put_str("dict", "fuzz_dataset.dict",
            "\"\\\"id\\\"\"\n\"\\\"question\\\"\"\n\"\\\"answer\\\"\"\n\"\\\"answers\\\"\"\n"
            "\"\\\"preferred\\\"\"\n\"\\\"reference\\\"\"\n\"\\\"caption\\\"\"\n\"\\\"image\\\"\"\n"
            "\"\\\"source\\\"\"\n\"\\\"type\\\"\"\n\"<think>\"\n\"</think>\"\n\"\\\\\\\\boxed{\"\n"
            "\"null\"\n\"\\x0a\"\n\"\\x00\"\n\"/dev/null\"\n\"\\\\u0000\"\n");
    put_str("dict", "fuzz_tokenizer.dict",
            "\"\\\"format\\\"\"\n\"\\\"crl-bpe\\\"\"\n\"\\\"version\\\"\"\n\"\\\"pretokenizer\\\"\"\n"
            "\"\\\"byte_offset\\\"\"\n\"\\\"special\\\"\"\n\"\\\"merges\\\"\"\n\"\\\"vocab_size\\\"\"\n"
            "\"\\\"<think>\\\"\"\n\"\\\"<pad>\\\"\"\n\"263\"\n\"262\"\n\"-1\"\n\"2147483647\"\n");
    put_str("dict", "fuzz_safetensors.dict",
            "\"\\\"dtype\\\"\"\n\"\\\"F32\\\"\"\n\"\\\"shape\\\"\"\n\"\\\"data_offsets\\\"\"\n"
            "\"\\\"__metadata__\\\"\"\n\"18446744073709551615\"\n\"4294967296\"\n\"1e3\"\n");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: gen_corpus OUT_DIR\n");
        return 2;
    }
    g_out = argv[1];
    char tmp[] = "/tmp/crl-gen-corpus-XXXXXX";
    if (!mkdtemp(tmp))
        die("mkdtemp", strerror(errno));
    gen_envelopes();
    gen_datasets();
    gen_safetensors(tmp);
    gen_traj_log(tmp);
    gen_tokenizer(tmp);
    gen_config();
    gen_dicts();
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "gen_corpus: could not remove %s\n", tmp);
    return 0;
}
