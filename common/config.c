/* config: schema-driven run configuration (see config.h). Every key lives in
 * one row of `schema` below; parsing, range checks, defaults, help text and
 * JSON output all walk that table, so adding a key is adding a row. */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define CONFIG_MAX_FILE_BYTES (16u << 20)

/* ---------- per-key checks (beyond type and range) ---------- */

static int check_nonempty(const void *field, char *why, size_t whylen)
{
    if (((const char *)field)[0] == '\0') {
        snprintf(why, whylen, "a non-empty string");
        return -1;
    }
    return 0;
}

/* A run name becomes a folder under run.dir: keep it one plain path
 * component so it can never escape that folder. */
static int check_run_name(const void *field, char *why, size_t whylen)
{
    const char *s = field;
    int bad = s[0] == '\0' || strcmp(s, ".") == 0 || strcmp(s, "..") == 0;
    for (const char *p = s; *p && !bad; p++)
        bad = *p == '/' || (unsigned char)*p <= ' ' || *p == 0x7f;
    if (bad) {
        snprintf(why, whylen, "a non-empty name without '/', spaces or control characters");
        return -1;
    }
    return 0;
}

/* An actor id is the actor's ZeroMQ routing id and appears in every log
 * line and trajectory record: printable, no spaces, "" = <hostname>-<pid>. */
static int check_actor_id(const void *field, char *why, size_t whylen)
{
    const char *s = field;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f) {
            snprintf(why, whylen, "printable ASCII without spaces (\"\" = <hostname>-<pid>)");
            return -1;
        }
    return 0;
}

static int check_stem(const void *field, char *why, size_t whylen)
{
    const char *s = field;
    if (s[0] == '\0' || strchr(s, '/') != NULL) {
        snprintf(why, whylen, "a non-empty file stem without '/'");
        return -1;
    }
    return 0;
}

/* Verdicts appear as \boxed{X}: each label is one character that cannot
 * break the box syntax, and the two must differ. */
static int check_verdict_labels(const void *field, char *why, size_t whylen)
{
    const unsigned char *s = field;
    int ok = strlen((const char *)s) == 2 && s[0] != s[1];
    for (int i = 0; ok && i < 2; i++)
        ok = s[i] > ' ' && s[i] < 0x7f && s[i] != '{' && s[i] != '}' && s[i] != '\\';
    if (!ok) {
        snprintf(why, whylen,
                 "two different printable characters, first = verdict for answer 1 (e.g. \"AB\" or \"12\"; "
                 "not space, braces or backslash)");
        return -1;
    }
    return 0;
}

static int endpoint_ok(const char *s)
{
    const char *rest = NULL;
    if (strncmp(s, "tcp://", 6) == 0) {
        rest = s + 6;
        const char *colon = strrchr(rest, ':');
        if (colon == NULL || colon == rest || colon[1] == '\0')
            return 0;
        for (const char *p = colon + 1; *p; p++)
            if ((*p < '0' || *p > '9') && *p != '*')
                return 0;
        return 1;
    }
    if (strncmp(s, "ipc://", 6) == 0)
        rest = s + 6;
    else if (strncmp(s, "inproc://", 9) == 0)
        rest = s + 9;
    return rest != NULL && rest[0] != '\0';
}

static int check_endpoint(const void *field, char *why, size_t whylen)
{
    if (!endpoint_ok(field)) {
        snprintf(why, whylen, "a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH or inproc://NAME)");
        return -1;
    }
    return 0;
}

static int check_endpoint_or_empty(const void *field, char *why, size_t whylen)
{
    if (((const char *)field)[0] != '\0' && !endpoint_ok(field)) {
        snprintf(why, whylen, "\"\" or a ZeroMQ endpoint (tcp://HOST:PORT, ipc://PATH or inproc://NAME)");
        return -1;
    }
    return 0;
}

static int check_cpu_list(const void *field, char *why, size_t whylen)
{
    const config_int_list_t *l = field;
    for (int i = 0; i < l->n; i++)
        for (int j = 0; j < i; j++)
            if (l->v[i] == l->v[j]) {
                snprintf(why, whylen, "a list of distinct core ids (core %d appears twice)", l->v[i]);
                return -1;
            }
    return 0;
}

/* ---------- the schema ---------- */

static const char *const on_error_values[] = {"skip", "stop", NULL};
static const char *const critic_variant_values[] = {"full", "final_only", NULL};
static const char *const fsync_values[] = {"record", "interval", "never", NULL};

#define FIELD(f) .offset = offsetof(crl_config_t, f), .size = sizeof(((crl_config_t *)0)->f)
#define IN(lo, hi) .flags = CONFIG_HAS_MIN | CONFIG_HAS_MAX, .min = (lo), .max = (hi)
/* (0, hi]: strictly positive */
#define POS(hi) .flags = CONFIG_HAS_MIN | CONFIG_MIN_EXCL | CONFIG_HAS_MAX, .min = 0, .max = (hi)
#define I(k, f, lo, hi, d, h) {.key = k, .type = CONFIG_T_INT, FIELD(f), IN(lo, hi), .def = d, .help = h}
#define B(k, f, d, h) {.key = k, .type = CONFIG_T_BOOL, FIELD(f), .def = d, .help = h}
#define S(k, f, chk, d, h) {.key = k, .type = CONFIG_T_STRING, FIELD(f), .check = chk, .def = d, .help = h}
#define E(k, f, vals, d, h) {.key = k, .type = CONFIG_T_ENUM, FIELD(f), .enum_values = vals, .def = d, .help = h}
#define CPUS(k, f, h)                                                                              \
    {.key = k, .type = CONFIG_T_CPUS, FIELD(f), IN(0, 65535), .check = check_cpu_list, .def = "auto", \
     .help = h}

static const config_key_t schema[] = {
    /* run */
    S("run.name", run.name, check_run_name, "demo", "name of the run; its outputs go to <run.dir>/<run.name>/"),
    S("run.dir", run.dir, check_nonempty, "runs", "folder that holds the runs"),
    I("run.seed", run.seed, 0, INT_MAX, "1", "seed of every random stream of the run (data order, init, sampling)"),

    /* model */
    I("model.vocab_size", model.vocab_size, 8, 1 << 21, "512", "rows of the embedding and LM head (>= tokenizer.vocab_size)"),
    I("model.dim", model.dim, 8, 65536, "128", "model width D"),
    I("model.n_layers", model.n_layers, 1, 1024, "4", "decoder layers L"),
    I("model.n_heads", model.n_heads, 1, 1024, "4", "attention heads H (divides model.dim)"),
    I("model.n_kv_heads", model.n_kv_heads, 1, 1024, "4", "key/value heads (divides model.n_heads; < n_heads = grouped-query attention)"),
    I("model.hidden_dim", model.hidden_dim, 1, 1 << 20, "344", "SwiGLU hidden size F"),
    I("model.max_seq_len", model.max_seq_len, 16, 1 << 20, "320", "longest sequence in tokens: image + prompt + response"),
    I("model.image_size", model.image_size, 0, 4096, "48", "images are resized to this side in pixels (0 = text-only model)"),
    I("model.patch_size", model.patch_size, 1, 4096, "8", "side of the square image patches (divides model.image_size)"),
    B("model.tie_embeddings", model.tie_embeddings, "false", "LM head shares the token embedding matrix"),
    {.key = "model.rope_theta", .type = CONFIG_T_FLOAT32, FIELD(model.rope_theta), POS(1e9), .def = "10000",
     .help = "RoPE base frequency"},
    {.key = "model.norm_eps", .type = CONFIG_T_FLOAT32, FIELD(model.norm_eps), POS(1), .def = "1e-5",
     .help = "RMSNorm epsilon"},

    /* data */
    S("data.dir", data.dir, check_nonempty, "data/builtin", "dataset folder: <stem>.jsonl files and their images"),
    S("data.train", data.train, check_stem, "train", "training split file stem (<data.dir>/<stem>.jsonl)"),
    S("data.val", data.val, check_stem, "val", "validation split file stem"),
    S("data.test", data.test, check_stem, "test", "test split file stem"),
    E("data.on_error", data.on_error, on_error_values, "stop", "a malformed record: skip it (counted, logged) or stop with an error"),
    E("data.critic_variant", data.critic_variant, critic_variant_values, "final_only",
      "critic prompts show the candidates' full reasoning, or only their final answers"),
    S("data.verdict_labels", data.verdict_labels, check_verdict_labels, "AB",
      "verdict characters naming the first and second answer in \\boxed{}"),
    I("data.grid", data.grid, 1, 16, "3", "built-in world: grid cells per side"),
    I("data.image_size_px", data.image_size_px, 8, 4096, "48", "built-in world: rendered image side in pixels"),
    I("data.train_scenes", data.train_scenes, 1, 100000000, "4000", "built-in world: training scenes"),
    I("data.val_scenes", data.val_scenes, 1, 100000000, "300", "built-in world: validation scenes"),
    I("data.test_scenes", data.test_scenes, 1, 100000000, "600", "built-in world: test scenes"),

    /* tokenizer */
    I("tokenizer.vocab_size", tokenizer.vocab_size, 256, 1 << 21, "512", "BPE vocabulary size incl. 256 byte tokens and specials"),
    S("tokenizer.path", tokenizer.path, NULL, "", "tokenizer JSON (\"\" = <data.dir>/tokenizer.json)"),

    /* sft */
    I("sft.steps", sft.steps, 0, 1000000000, "1000", "supervised warm-up steps"),
    I("sft.batch_tokens", sft.batch_tokens, 1, 1 << 24, "4096", "tokens per warm-up batch (>= model.max_seq_len)"),
    {.key = "sft.lr", .type = CONFIG_T_FLOAT, FIELD(sft.lr), POS(1), .def = "1e-3", .help = "warm-up peak learning rate"},
    I("sft.warmup", sft.warmup, 0, 1000000000, "50", "linear learning-rate warm-up steps"),
    {.key = "sft.weight_decay", .type = CONFIG_T_FLOAT, FIELD(sft.weight_decay), IN(0, 1), .def = "1e-2",
     .help = "AdamW weight decay (matrices only)"},
    {.key = "sft.grad_clip", .type = CONFIG_T_FLOAT, FIELD(sft.grad_clip), IN(0, 1e6), .def = "1.0",
     .help = "gradient-norm clip (0 = off)"},
    {.key = "sft.mix_captions", .type = CONFIG_T_FLOAT, FIELD(sft.mix_captions), IN(0, 1), .def = "0.2",
     .help = "fraction of warm-up examples that are image captions"},
    {.key = "sft.mix_policy", .type = CONFIG_T_FLOAT, FIELD(sft.mix_policy), IN(0, 1), .def = "0.4",
     .help = "fraction that are question -> answer (policy) examples"},
    {.key = "sft.mix_critic", .type = CONFIG_T_FLOAT, FIELD(sft.mix_critic), IN(0, 1), .def = "0.4",
     .help = "fraction that are critic (which answer is better) examples"},
    I("sft.checkpoint_every", sft.checkpoint_every, 0, 1000000000, "200", "checkpoint period in steps (0 = only at the end)"),
    I("sft.threads", sft.threads, 0, 1024, "0", "compute threads (0 = one per core of learner.cpus)"),

    /* rl */
    I("rl.group_size", rl.group_size, 2, 1024, "8", "samples per prompt G"),
    {.key = "rl.temperature", .type = CONFIG_T_FLOAT, FIELD(rl.temperature), POS(10), .def = "1.0",
     .help = "sampling temperature (logits are divided by it on both actor and learner)"},
    {.key = "rl.top_p", .type = CONFIG_T_FLOAT, FIELD(rl.top_p), POS(1), .def = "0.99", .help = "nucleus sampling mass"},
    I("rl.max_new_tokens", rl.max_new_tokens, 1, 1 << 20, "96", "longest sampled response in tokens (built-in world critic answers: up to ~70)"),
    I("rl.max_staleness", rl.max_staleness, 0, 1000, "2", "largest learner version minus behaviour version of a group still used"),
    {.key = "rl.is_cap", .type = CONFIG_T_FLOAT, FIELD(rl.is_cap), IN(1, 1e6), .def = "2.0",
     .help = "truncation of the decoupled-PPO importance weight pi_prox / pi_behav"},
    {.key = "rl.clip_low", .type = CONFIG_T_FLOAT, FIELD(rl.clip_low),
     .flags = CONFIG_HAS_MIN | CONFIG_MIN_EXCL | CONFIG_HAS_MAX | CONFIG_MAX_EXCL, .min = 0, .max = 1, .def = "0.2",
     .help = "PPO clip epsilon below 1"},
    {.key = "rl.clip_high", .type = CONFIG_T_FLOAT, FIELD(rl.clip_high), POS(10), .def = "0.3",
     .help = "PPO clip epsilon above 1"},
    {.key = "rl.dual_clip", .type = CONFIG_T_FLOAT, FIELD(rl.dual_clip),
     .flags = CONFIG_HAS_MIN | CONFIG_MIN_EXCL | CONFIG_HAS_MAX, .min = 1, .max = 1e6, .def = "3.0",
     .help = "dual-clip bound c on the loss of negative-advantage tokens"},
    {.key = "rl.kl_coef", .type = CONFIG_T_FLOAT, FIELD(rl.kl_coef), IN(0, 100), .def = "1e-2",
     .help = "weight of the k3 KL estimate to the frozen reference model (0 = no reference)"},
    {.key = "rl.lr", .type = CONFIG_T_FLOAT, FIELD(rl.lr), POS(1), .def = "1e-4", .help = "RL learning rate"},
    {.key = "rl.weight_decay", .type = CONFIG_T_FLOAT, FIELD(rl.weight_decay), IN(0, 1), .def = "1e-2",
     .help = "AdamW weight decay (matrices only)"},
    {.key = "rl.grad_clip", .type = CONFIG_T_FLOAT, FIELD(rl.grad_clip), IN(0, 1e6), .def = "1.0",
     .help = "gradient-norm clip (0 = off)"},
    I("rl.steps", rl.steps, 0, 1000000000, "100", "RL updates (learner versions) to run"),
    I("rl.groups_per_step", rl.groups_per_step, 1, 1000000, "8", "prompt groups per update"),
    {.key = "rl.task_mix_critic", .type = CONFIG_T_FLOAT, FIELD(rl.task_mix_critic), IN(0, 1), .def = "1.0",
     .help = "fraction of critic prompts; the rest are policy prompts"},
    {.key = "rl.reward_w_pref", .type = CONFIG_T_FLOAT, FIELD(rl.reward_w_pref), IN(0, 100), .def = "0.9",
     .help = "reward weight of a correct verdict / answer"},
    {.key = "rl.reward_w_format", .type = CONFIG_T_FLOAT, FIELD(rl.reward_w_format), IN(0, 100), .def = "0.1",
     .help = "reward weight of the <think>...</think>\\boxed{} format"},
    B("rl.order_balanced", rl.order_balanced, "true", "half of each critic group sees the answers in swapped order"),
    B("rl.skip_zero_variance", rl.skip_zero_variance, "true", "skip the backward pass of groups whose rewards are all equal"),
    I("rl.checkpoint_every", rl.checkpoint_every, 0, 1000000000, "50", "checkpoint period in updates (0 = only at the end)"),
    I("rl.micro_batch_tokens", rl.micro_batch_tokens, 0, 1 << 24, "4096",
      "packed tokens per forward/backward pass of an update; gradients accumulate across passes (0 = one pass)"),
    S("rl.init", rl.init, check_nonempty, "runs/base/ckpt/latest",
      "checkpoint folder of the initial policy (and frozen reference), tokenizer.json beside it"),

    /* eval */
    I("eval.n_samples", eval.n_samples, 1, 1024, "8", "samples per question for pass@N, majority vote and self-critique"),
    I("eval.max_items", eval.max_items, 0, 1000000000, "600", "evaluated items per task (0 = all)"),
    B("eval.self_critique", eval.self_critique, "true", "pick the best of the samples with the model's own verdicts"),

    /* actor */
    I("actor.count", actor.count, 0, 4096, "2", "actors the launcher starts on this machine (more may join by hand)"),
    I("actor.credits", actor.credits, 1, 1024, "2", "work grants an actor holds at once"),
    CPUS("actor.cpus", actor.cpus, "cores for the actors, split among them (\"auto\" = let the topology choose)"),
    I("actor.threads", actor.threads, 1, 1024, "1", "compute threads per actor"),
    S("actor.id", actor.id, check_actor_id, "", "actor id, stable across restarts (\"\" = <hostname>-<pid>)"),
    I("actor.max_unacked", actor.max_unacked, 1, 65536, "16",
      "completed groups an actor holds awaiting the learner's Ack; when full it stops asking for work"),

    /* learner */
    CPUS("learner.cpus", learner.cpus, "cores of the learner (\"auto\" = let the topology choose)"),
    I("learner.threads", learner.threads, 1, 1024, "1", "compute threads of the learner"),
    I("learner.heartbeat_ms", learner.heartbeat_ms, 10, 3600000, "1000", "heartbeat period"),
    I("learner.heartbeat_timeout_ms", learner.heartbeat_timeout_ms, 10, 86400000, "10000",
      "a peer silent this long is gone; its grants go to other actors"),
    E("learner.traj_fsync", learner.traj_fsync, fsync_values, "interval",
      "fsync the trajectory log after every record, every traj_fsync_ms, or never"),
    I("learner.traj_fsync_ms", learner.traj_fsync_ms, 1, 3600000, "1000", "fsync period when learner.traj_fsync = interval"),
    I("learner.traj_rotate_mb", learner.traj_rotate_mb, 1, 1 << 20, "256", "start a new trajectory log file after this many MiB"),
    I("learner.publish_timeout_ms", learner.publish_timeout_ms, 100, 86400000, "5000",
      "wait this long for the broker's PublishAck before sending the weights again"),

    /* broker */
    CPUS("broker.cpus", broker.cpus, "cores of the broker (\"auto\" = let the topology choose)"),
    I("broker.chunk_bytes", broker.chunk_bytes, 4096, INT_MAX, "1048576", "bytes per weights fetch chunk"),
    I("broker.keep_versions", broker.keep_versions, 1, 64, "2", "weights versions kept for fetching"),
    S("broker.upstream", broker.upstream, check_endpoint_or_empty, "",
      "fetch endpoint of an upstream broker to take weights from (\"\" = from the learner)"),
    S("broker.upstream_announce", broker.upstream_announce, check_endpoint_or_empty, "",
      "announce endpoint (PUB) of the upstream broker; required with broker.upstream"),

    /* network */
    S("network.learner_work", network.learner_work, check_endpoint, "tcp://127.0.0.1:5555",
      "learner ROUTER for actors (work, trajectories, heartbeats)"),
    S("network.broker_publish", network.broker_publish, check_endpoint, "tcp://127.0.0.1:5556",
      "broker ROUTER where the learner publishes weights"),
    S("network.broker_announce", network.broker_announce, check_endpoint, "tcp://127.0.0.1:5557",
      "broker PUB announcing new weights versions"),
    S("network.broker_fetch", network.broker_fetch, check_endpoint, "tcp://127.0.0.1:5558",
      "broker ROUTER serving chunked weights fetches"),
    I("network.max_msg_bytes", network.max_msg_bytes, 65536, INT_MAX, "268435456", "ZMQ_MAXMSGSIZE of every receiving socket"),
    S("network.curve_keys_dir", network.curve_keys_dir, NULL, "", "CurveZMQ key folder (\"\" = no encryption)"),
    S("network.curve_client_key", network.curve_client_key, NULL, "",
      "this process's CurveZMQ client secret key file (\"\" = <curve_keys_dir>/client.key)"),
    B("network.insecure", network.insecure, "false", "allow non-loopback endpoints without CurveZMQ keys"),
};

#define N_KEYS (sizeof(schema) / sizeof(schema[0]))

const config_key_t *config_schema(size_t *n_keys)
{
    if (n_keys)
        *n_keys = N_KEYS;
    return schema;
}

const config_key_t *config_find_key(const char *dotted)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strcmp(schema[i].key, dotted) == 0)
            return &schema[i];
    return NULL;
}

/* ---------- small helpers ---------- */

static void *field_ptr(crl_config_t *cfg, const config_key_t *k)
{
    return (char *)cfg + k->offset;
}

static const void *field_cptr(const crl_config_t *cfg, const config_key_t *k)
{
    return (const char *)cfg + k->offset;
}

/* Length of the section part of a dotted key. */
static size_t section_len(const char *key)
{
    const char *dot = strchr(key, '.');
    return dot ? (size_t)(dot - key) : strlen(key);
}

static int is_section(const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < N_KEYS; i++)
        if (section_len(schema[i].key) == n && strncmp(schema[i].key, name, n) == 0)
            return 1;
    return 0;
}

/* Shortest %g text that reads back to the same value through the same
 * conversion the loader uses, so config_to_json round-trips exactly. */
static void format_double(char *buf, size_t len, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) { /* "10000", not "1e+04" */
        snprintf(buf, len, "%.0f", v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

static void format_float(char *buf, size_t len, float v)
{
    if (v == floorf(v) && fabsf(v) < 1e7f) {
        snprintf(buf, len, "%.0f", (double)v);
        return;
    }
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, len, "%.*g", p, (double)v);
        if ((float)strtod(buf, NULL) == v)
            return;
    }
}

/* Integral bounds in full ("1000", not "1e+03"), others shortest. */
static void format_bound(char *buf, size_t len, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, len, "%.0f", v);
    else
        format_double(buf, len, v);
}

/* "[1, 65536]", "(0, 1]", ">= 0" */
static void format_range(const config_key_t *k, char *buf, size_t len)
{
    char lo[32], hi[32];
    format_bound(lo, sizeof(lo), k->min);
    format_bound(hi, sizeof(hi), k->max);
    int has_min = (k->flags & CONFIG_HAS_MIN) != 0, has_max = (k->flags & CONFIG_HAS_MAX) != 0;
    if (has_min && has_max)
        snprintf(buf, len, "%c%s, %s%c", (k->flags & CONFIG_MIN_EXCL) ? '(' : '[', lo, hi,
                 (k->flags & CONFIG_MAX_EXCL) ? ')' : ']');
    else if (has_min)
        snprintf(buf, len, "%s %s", (k->flags & CONFIG_MIN_EXCL) ? ">" : ">=", lo);
    else if (has_max)
        snprintf(buf, len, "%s %s", (k->flags & CONFIG_MAX_EXCL) ? "<" : "<=", hi);
    else
        buf[0] = '\0';
}

/* What a key accepts, in words ("an integer in [1, 1024]"). */
static void describe_expected(const config_key_t *k, char *buf, size_t len)
{
    char range[96];
    format_range(k, range, sizeof(range));
    /* "in [a, b]" for intervals, ">= a" for half-bounded ranges */
    const char *in = (range[0] == '[' || range[0] == '(') ? " in " : range[0] ? " " : "";
    switch (k->type) {
    case CONFIG_T_INT:
        snprintf(buf, len, "an integer%s%s", in, range);
        break;
    case CONFIG_T_FLOAT:
    case CONFIG_T_FLOAT32:
        snprintf(buf, len, "a number%s%s", in, range);
        break;
    case CONFIG_T_BOOL:
        snprintf(buf, len, "true or false");
        break;
    case CONFIG_T_STRING:
        snprintf(buf, len, "a string of at most %zu bytes", k->size - 1);
        break;
    case CONFIG_T_ENUM: {
        size_t off = (size_t)snprintf(buf, len, "one of");
        for (int i = 0; k->enum_values[i] && off < len; i++)
            off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : " ", k->enum_values[i]);
        break;
    }
    case CONFIG_T_INT_LIST:
        snprintf(buf, len, "a list of at most %d integers in %s (e.g. 0,1,2, 0-3 or [0,1,2])", CONFIG_MAX_LIST, range);
        break;
    case CONFIG_T_CPUS:
        snprintf(buf, len, "\"auto\" or a non-empty list of at most %d core ids in %s (e.g. 0,1,2, 0-3 or [0,1,2])",
                 CONFIG_MAX_LIST, range);
        break;
    }
}

static int in_range(const config_key_t *k, double v)
{
    if (k->flags & CONFIG_HAS_MIN) {
        if ((k->flags & CONFIG_MIN_EXCL) ? !(v > k->min) : !(v >= k->min))
            return 0;
    }
    if (k->flags & CONFIG_HAS_MAX) {
        if ((k->flags & CONFIG_MAX_EXCL) ? !(v < k->max) : !(v <= k->max))
            return 0;
    }
    return 1;
}

/* ---------- storing values (all parse paths end here) ---------- */

/* Each store_* checks the value against the key and writes it, or fills
 * `why` with what was expected and returns -1. */
static int store_number(crl_config_t *cfg, const config_key_t *k, double v, char *why, size_t whylen)
{
    if (!isfinite(v) || !in_range(k, v))
        goto bad;
    switch (k->type) {
    case CONFIG_T_INT:
        if (v != floor(v) || v < INT_MIN || v > INT_MAX)
            goto bad;
        *(int *)field_ptr(cfg, k) = (int)v;
        return 0;
    case CONFIG_T_FLOAT:
        *(double *)field_ptr(cfg, k) = v;
        return 0;
    case CONFIG_T_FLOAT32:
        if (fabs(v) > FLT_MAX)
            goto bad;
        *(float *)field_ptr(cfg, k) = (float)v;
        return 0;
    default:
        goto bad;
    }
bad:
    describe_expected(k, why, whylen);
    return -1;
}

static int store_bool(crl_config_t *cfg, const config_key_t *k, int b)
{
    *(int *)field_ptr(cfg, k) = b ? 1 : 0;
    return 0;
}

static int store_string(crl_config_t *cfg, const config_key_t *k, const char *s, char *why, size_t whylen)
{
    size_t n = strlen(s);
    if (k->type == CONFIG_T_ENUM) {
        for (int i = 0; k->enum_values[i]; i++)
            if (strcmp(k->enum_values[i], s) == 0) {
                *(int *)field_ptr(cfg, k) = i;
                return 0;
            }
        describe_expected(k, why, whylen);
        return -1;
    }
    if (n + 1 > k->size) {
        describe_expected(k, why, whylen);
        return -1;
    }
    /* Check on a copy so a rejected value leaves the field untouched. */
    char tmp[CONFIG_PATH_LEN];
    if (n + 1 > sizeof(tmp)) {
        describe_expected(k, why, whylen);
        return -1;
    }
    memset(tmp, 0, sizeof(tmp));
    memcpy(tmp, s, n);
    if (k->check && k->check(tmp, why, whylen) != 0)
        return -1;
    char *dst = field_ptr(cfg, k);
    memset(dst, 0, k->size); /* zero padding keeps equal configs memcmp-equal */
    memcpy(dst, s, n);
    return 0;
}

static int store_list(crl_config_t *cfg, const config_key_t *k, const config_int_list_t *l, char *why,
                      size_t whylen)
{
    if (l->n == CONFIG_CPUS_AUTO) {
        if (k->type != CONFIG_T_CPUS)
            goto bad;
    } else {
        if (l->n == 0 && k->type == CONFIG_T_CPUS)
            goto bad;
        for (int i = 0; i < l->n; i++)
            if (!in_range(k, l->v[i]))
                goto bad;
        if (k->check && k->check(l, why, whylen) != 0)
            return -1;
    }
    config_int_list_t *dst = field_ptr(cfg, k);
    memset(dst, 0, sizeof(*dst));
    dst->n = l->n;
    if (l->n > 0)
        memcpy(dst->v, l->v, sizeof(int) * (size_t)l->n);
    return 0;
bad:
    describe_expected(k, why, whylen);
    return -1;
}

/* ---------- text values (--set) ---------- */

/* Strict number syntax: decimal only (no hex, no inf/nan words). */
static int parse_number_text(const char *s, double *out)
{
    if (*s == '\0')
        return -1;
    for (const char *p = s; *p; p++)
        if (!strchr("0123456789+-.eE", *p))
            return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno == ERANGE)
        return -1;
    *out = v;
    return 0;
}

static int parse_int_token(const char **p, long *out)
{
    char *end = NULL;
    if (!((**p >= '0' && **p <= '9') || **p == '-' || **p == '+'))
        return -1;
    errno = 0;
    long v = strtol(*p, &end, 10);
    if (end == *p || errno == ERANGE || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = v;
    *p = end;
    return 0;
}

/* "0,1,2", "0-3,8", "[0, 1, 2]", "" (empty list) or "auto". */
static int parse_list_text(const char *s, config_int_list_t *l)
{
    memset(l, 0, sizeof(*l));
    while (*s == ' ')
        s++;
    if (strcmp(s, "auto") == 0 || strcmp(s, "\"auto\"") == 0) {
        l->n = CONFIG_CPUS_AUTO;
        return 0;
    }
    int bracket = *s == '[';
    if (bracket)
        s++;
    for (;;) {
        while (*s == ' ')
            s++;
        if (*s == '\0' || (bracket && *s == ']'))
            break;
        long a, b;
        if (parse_int_token(&s, &a) != 0)
            return -1;
        b = a;
        if (*s == '-') {
            s++;
            if (parse_int_token(&s, &b) != 0 || b < a)
                return -1;
        }
        for (long v = a; v <= b; v++) {
            if (l->n >= CONFIG_MAX_LIST)
                return -1;
            l->v[l->n++] = (int)v;
        }
        while (*s == ' ')
            s++;
        if (*s == ',') {
            s++;
            while (*s == ' ')
                s++;
            if (*s == '\0' || *s == ']')
                return -1; /* trailing comma */
        } else if (*s != '\0' && !(bracket && *s == ']')) {
            return -1;
        }
    }
    if (bracket) {
        if (*s != ']')
            return -1;
        s++;
        while (*s == ' ')
            s++;
    }
    return *s == '\0' ? 0 : -1;
}

static int apply_text(crl_config_t *cfg, const config_key_t *k, const char *text, char *why, size_t whylen)
{
    switch (k->type) {
    case CONFIG_T_INT:
    case CONFIG_T_FLOAT:
    case CONFIG_T_FLOAT32: {
        double v;
        if (parse_number_text(text, &v) != 0) {
            describe_expected(k, why, whylen);
            return -1;
        }
        return store_number(cfg, k, v, why, whylen);
    }
    case CONFIG_T_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "1") == 0)
            return store_bool(cfg, k, 1);
        if (strcmp(text, "false") == 0 || strcmp(text, "0") == 0)
            return store_bool(cfg, k, 0);
        describe_expected(k, why, whylen);
        return -1;
    case CONFIG_T_STRING:
    case CONFIG_T_ENUM: {
        size_t n = strlen(text);
        if (n >= 2 && text[0] == '"' && text[n - 1] == '"') {
            /* A JSON-quoted value: unquote (and unescape) it. */
            cJSON *j = cJSON_Parse(text);
            int rc;
            if (j == NULL || !cJSON_IsString(j)) {
                snprintf(why, whylen, "a valid JSON string when quoted");
                rc = -1;
            } else {
                rc = store_string(cfg, k, j->valuestring, why, whylen);
            }
            cJSON_Delete(j);
            return rc;
        }
        return store_string(cfg, k, text, why, whylen);
    }
    case CONFIG_T_INT_LIST:
    case CONFIG_T_CPUS: {
        config_int_list_t *l = malloc(sizeof(*l));
        if (l == NULL) {
            snprintf(why, whylen, "(out of memory)");
            return -1;
        }
        int rc;
        if (parse_list_text(text, l) != 0) {
            describe_expected(k, why, whylen);
            rc = -1;
        } else {
            rc = store_list(cfg, k, l, why, whylen);
        }
        free(l);
        return rc;
    }
    }
    return -1;
}

/* ---------- JSON values (files) ---------- */

static int apply_json(crl_config_t *cfg, const config_key_t *k, const cJSON *item, char *why, size_t whylen)
{
    switch (k->type) {
    case CONFIG_T_INT:
    case CONFIG_T_FLOAT:
    case CONFIG_T_FLOAT32:
        if (!cJSON_IsNumber(item))
            break;
        return store_number(cfg, k, item->valuedouble, why, whylen);
    case CONFIG_T_BOOL:
        if (!cJSON_IsBool(item))
            break;
        return store_bool(cfg, k, cJSON_IsTrue(item));
    case CONFIG_T_STRING:
    case CONFIG_T_ENUM:
        if (!cJSON_IsString(item))
            break;
        return store_string(cfg, k, item->valuestring, why, whylen);
    case CONFIG_T_INT_LIST:
    case CONFIG_T_CPUS: {
        if (cJSON_IsString(item))
            return apply_text(cfg, k, item->valuestring, why, whylen);
        if (!cJSON_IsArray(item))
            break;
        config_int_list_t *l = calloc(1, sizeof(*l));
        if (l == NULL) {
            snprintf(why, whylen, "(out of memory)");
            return -1;
        }
        int ok = 1;
        const cJSON *e;
        cJSON_ArrayForEach(e, item)
        {
            double v = cJSON_IsNumber(e) ? e->valuedouble : NAN;
            if (!isfinite(v) || v != floor(v) || v < INT_MIN || v > INT_MAX || l->n >= CONFIG_MAX_LIST) {
                ok = 0;
                break;
            }
            l->v[l->n++] = (int)v;
        }
        int rc = -1;
        if (ok)
            rc = store_list(cfg, k, l, why, whylen);
        else
            describe_expected(k, why, whylen);
        free(l);
        return rc;
    }
    }
    describe_expected(k, why, whylen);
    return -1;
}

/* ---------- did-you-mean ---------- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* Closest known key (or section, when sections_only) within a few edits. */
static const char *suggest(const char *name, int sections_only, char *buf, size_t len)
{
    size_t best = SIZE_MAX;
    const char *found = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        char cand[96];
        if (sections_only)
            snprintf(cand, sizeof(cand), "%.*s", (int)section_len(schema[i].key), schema[i].key);
        else
            snprintf(cand, sizeof(cand), "%s", schema[i].key);
        size_t d = edit_distance(name, cand);
        if (d < best) {
            best = d;
            snprintf(buf, len, "%s", cand);
            found = buf;
        }
    }
    size_t limit = strlen(name) / 3 + 1;
    return (found && best <= (limit < 3 ? limit : 3)) ? found : NULL;
}

/* Copies a user-supplied name for an error message, replacing control
 * characters and cutting it short. */
static void printable(const char *s, char *buf, size_t len)
{
    size_t i = 0;
    for (; s[i] && i + 1 < len; i++)
        buf[i] = ((unsigned char)s[i] < ' ' || s[i] == 0x7f) ? '?' : s[i];
    buf[i] = '\0';
    if (s[i] && len > 4)
        memcpy(buf + len - 4, "...", 4);
}

static void unknown_key_message(const char *source, const char *dotted, char *err, size_t errlen)
{
    char shown[128], sug[96];
    printable(dotted, shown, sizeof(shown));
    const char *s = suggest(dotted, 0, sug, sizeof(sug));
    if (s)
        snprintf(err, errlen, "%s: unknown key %s (did you mean %s?)", source, shown, s);
    else
        snprintf(err, errlen, "%s: unknown key %s (see --help-config for the keys)", source, shown);
}

/* ---------- public: defaults, set, load ---------- */

int config_defaults(crl_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_KEYS; i++) {
        char why[256];
        if (apply_text(cfg, &schema[i], schema[i].def, why, sizeof(why)) != 0) {
            log_error("config: built-in default of %s (\"%s\") is invalid: expected %s", schema[i].key,
                      schema[i].def, why);
            return -EINVAL;
        }
    }
    return 0;
}

static int set_one(crl_config_t *cfg, const char *assignment, char *err, size_t errlen)
{
    const char *eq = strchr(assignment, '=');
    char shown[160];
    printable(assignment, shown, sizeof(shown));
    if (eq == NULL || eq == assignment) {
        snprintf(err, errlen, "--set %s: expected section.key=value", shown);
        return -EINVAL;
    }
    char key[128];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof(key))
        klen = sizeof(key) - 1;
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    const config_key_t *k = config_find_key(key);
    if (k == NULL) {
        unknown_key_message("--set", key, err, errlen);
        return -EINVAL;
    }
    char why[384];
    if (apply_text(cfg, k, eq + 1, why, sizeof(why)) != 0) {
        char val[128];
        printable(eq + 1, val, sizeof(val));
        snprintf(err, errlen, "--set: %s: expected %s, got \"%s\"", k->key, why, val);
        return -EINVAL;
    }
    return 0;
}

int config_set(crl_config_t *cfg, const char *assignment, char *err, size_t errlen)
{
    crl_config_t *tmp = malloc(sizeof(*tmp));
    if (tmp == NULL) {
        snprintf(err, errlen, "--set: out of memory");
        return -ENOMEM;
    }
    memcpy(tmp, cfg, sizeof(*tmp));
    int rc = set_one(tmp, assignment, err, errlen);
    if (rc == 0)
        memcpy(cfg, tmp, sizeof(*tmp));
    free(tmp);
    return rc;
}

/* 1-based line and column of a position in text. */
static void line_col(const char *text, const char *pos, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (const char *p = text; p < pos && *p; p++) {
        if (*p == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

/* cJSON keeps duplicate object members; a repeated key is a mistake in a
 * config file (which one wins is not obvious), so it is an error. */
static int duplicate_before(const cJSON *first, const cJSON *item)
{
    for (const cJSON *p = first; p && p != item; p = p->next)
        if (p->string && item->string && strcmp(p->string, item->string) == 0)
            return 1;
    return 0;
}

static int load_tree(crl_config_t *cfg, const cJSON *root, const char *source, char *err, size_t errlen)
{
    char why[384], shown[96];
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: expected a JSON object of sections ({\"rl\": {...}, ...}) at the top level",
                 source);
        return -EINVAL;
    }
    for (const cJSON *sec = root->child; sec; sec = sec->next) {
        printable(sec->string, shown, sizeof(shown));
        if (!is_section(sec->string)) {
            char sug[96];
            const char *s = suggest(sec->string, 1, sug, sizeof(sug));
            snprintf(err, errlen, "%s: unknown section \"%s\"%s%s%s", source, shown, s ? " (did you mean " : "",
                     s ? s : "", s ? "?)" : " (sections: run, model, data, tokenizer, sft, rl, eval, actor, "
                                            "learner, broker, network)");
            return -EINVAL;
        }
        if (duplicate_before(root->child, sec)) {
            snprintf(err, errlen, "%s: section \"%s\" appears twice", source, shown);
            return -EINVAL;
        }
        if (!cJSON_IsObject(sec)) {
            snprintf(err, errlen, "%s: section \"%s\" must be an object of keys, e.g. {\"%s\": {...}}", source,
                     shown, shown);
            return -EINVAL;
        }
        for (const cJSON *item = sec->child; item; item = item->next) {
            char dotted[160];
            snprintf(dotted, sizeof(dotted), "%s.%s", sec->string, item->string);
            const config_key_t *k = config_find_key(dotted);
            if (k == NULL) {
                unknown_key_message(source, dotted, err, errlen);
                return -EINVAL;
            }
            if (duplicate_before(sec->child, item)) {
                snprintf(err, errlen, "%s: key %s appears twice", source, k->key);
                return -EINVAL;
            }
            if (apply_json(cfg, k, item, why, sizeof(why)) != 0) {
                char *val = cJSON_PrintUnformatted(item);
                char vshown[96];
                printable(val ? val : "?", vshown, sizeof(vshown));
                free(val);
                snprintf(err, errlen, "%s: %s: expected %s, got %s", source, k->key, why, vshown);
                return -EINVAL;
            }
        }
    }
    return 0;
}

int config_load_json(crl_config_t *cfg, const char *json, const char *source, char *err, size_t errlen)
{
    if (source == NULL)
        source = "config";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (root == NULL) {
        int line, col;
        const char *pos = end ? end : json;
        line_col(json, pos, &line, &col);
        char near[32];
        printable(pos, near, sizeof(near));
        snprintf(err, errlen, "%s:%d:%d: not valid JSON (near \"%s\")", source, line, col, near);
        return -EINVAL;
    }
    crl_config_t *tmp = malloc(sizeof(*tmp));
    if (tmp == NULL) {
        cJSON_Delete(root);
        snprintf(err, errlen, "%s: out of memory", source);
        return -ENOMEM;
    }
    memcpy(tmp, cfg, sizeof(*tmp));
    int rc = load_tree(tmp, root, source, err, errlen);
    if (rc == 0)
        memcpy(cfg, tmp, sizeof(*tmp));
    free(tmp);
    cJSON_Delete(root);
    return rc;
}

/* Reads a whole file (at most max bytes) into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t max, char *err, size_t errlen, int *rc)
{
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *rc = -errno;
        snprintf(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        *rc = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        *rc = -EINVAL;
        snprintf(err, errlen, "%s: not a regular file of at most %zu bytes", path, max);
        goto fail;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        *rc = -ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            *rc = r < 0 ? -errno : -EIO;
            snprintf(err, errlen, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
            goto fail;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    if (strlen(buf) != size) {
        *rc = -EINVAL;
        snprintf(err, errlen, "%s: contains a NUL byte; not a JSON text file", path);
        goto fail;
    }
    close(fd);
    return buf;
fail:
    free(buf);
    close(fd);
    return NULL;
}

int config_load_file(crl_config_t *cfg, const char *path, char *err, size_t errlen)
{
    int rc = 0;
    char *text = read_file(path, CONFIG_MAX_FILE_BYTES, err, errlen, &rc);
    if (text == NULL)
        return rc;
    rc = config_load_json(cfg, text, path, err, errlen);
    free(text);
    return rc;
}

int config_parse_args(crl_config_t *cfg, int *argc, char **argv, char *err, size_t errlen)
{
    int n = *argc, kept = 1, rc = 0;
    const char **files = calloc((size_t)n + 1, sizeof(*files));
    const char **sets = calloc((size_t)n + 1, sizeof(*sets));
    int n_files = 0, n_sets = 0;
    if (files == NULL || sets == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    int i = 1;
    for (; i < n; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0)
            break;
        if (strcmp(a, "--help-config") == 0) {
            rc = 1;
            goto out;
        }
        if (strcmp(a, "--config") == 0 || strcmp(a, "--set") == 0) {
            if (i + 1 >= n) {
                snprintf(err, errlen, "%s needs a value (%s)", a,
                         a[2] == 'c' ? "a JSON file name" : "section.key=value");
                rc = -EINVAL;
                goto out;
            }
            if (a[2] == 'c')
                files[n_files++] = argv[++i];
            else
                sets[n_sets++] = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            files[n_files++] = a + 9;
        } else if (strncmp(a, "--set=", 6) == 0) {
            sets[n_sets++] = a + 6;
        } else {
            argv[kept++] = argv[i];
        }
    }
    for (; i < n; i++) /* "--" and everything after it stay */
        argv[kept++] = argv[i];
    for (int f = 0; f < n_files; f++)
        if ((rc = config_load_file(cfg, files[f], err, errlen)) != 0)
            goto out;
    for (int s = 0; s < n_sets; s++)
        if ((rc = config_set(cfg, sets[s], err, errlen)) != 0)
            goto out;
    rc = config_validate(cfg, err, errlen);
    if (rc == 0) {
        *argc = kept;
        argv[kept] = NULL;
    }
out:
    free(files);
    free(sets);
    return rc;
}

/* ---------- validation ---------- */

typedef struct {
    char *buf;
    size_t len;
    size_t used;
    int problems;
} problems_t;

static void problem(problems_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(problems_t *p, const char *fmt, ...)
{
    p->problems++;
    if (p->buf == NULL || p->len == 0 || p->used + 1 >= p->len)
        return;
    if (p->problems > 1)
        p->used += (size_t)snprintf(p->buf + p->used, p->len - p->used, "; ");
    if (p->used + 1 >= p->len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(p->buf + p->used, p->len - p->used, fmt, ap);
    va_end(ap);
    if (w > 0)
        p->used += (size_t)w;
    if (p->used >= p->len)
        p->used = p->len - 1;
}

/* True when an endpoint only reaches this machine (config.h). */
int config_endpoint_is_local(const char *ep)
{
    if (strncmp(ep, "tcp://", 6) != 0)
        return 1; /* ipc:// and inproc:// never leave the machine */
    const char *host = ep + 6;
    const char *colon = strrchr(host, ':');
    size_t hl = colon ? (size_t)(colon - host) : strlen(host);
    /* ZeroMQ "iface;peer" form: judge the address being connected to. */
    const char *semi = memchr(host, ';', hl);
    if (semi) {
        hl -= (size_t)(semi + 1 - host);
        host = semi + 1;
    }
    if (hl >= 4 && strncmp(host, "127.", 4) == 0)
        return 1;
    if ((hl == 9 && strncmp(host, "localhost", 9) == 0) || (hl == 5 && strncmp(host, "[::1]", 5) == 0) ||
        (hl == 2 && strncmp(host, "lo", 2) == 0))
        return 1;
    return 0;
}

/* Re-checks every key's own constraints, so a struct filled by code (not
 * through set/load) is held to the same rules. */
static void validate_keys(const crl_config_t *cfg, problems_t *p)
{
    crl_config_t *tmp = malloc(sizeof(*tmp));
    if (tmp == NULL) {
        problem(p, "out of memory");
        return;
    }
    memcpy(tmp, cfg, sizeof(*tmp));
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key_t *k = &schema[i];
        const void *f = field_cptr(cfg, k);
        char why[384];
        int bad = 0;
        switch (k->type) {
        case CONFIG_T_INT:
            bad = store_number(tmp, k, *(const int *)f, why, sizeof(why));
            break;
        case CONFIG_T_FLOAT:
            bad = store_number(tmp, k, *(const double *)f, why, sizeof(why));
            break;
        case CONFIG_T_FLOAT32:
            bad = store_number(tmp, k, *(const float *)f, why, sizeof(why));
            break;
        case CONFIG_T_BOOL: {
            int b = *(const int *)f;
            bad = b != 0 && b != 1;
            if (bad)
                describe_expected(k, why, sizeof(why));
            break;
        }
        case CONFIG_T_STRING:
            if (memchr(f, '\0', k->size) == NULL) {
                bad = 1;
                describe_expected(k, why, sizeof(why));
            } else {
                bad = store_string(tmp, k, f, why, sizeof(why));
            }
            break;
        case CONFIG_T_ENUM: {
            int v = *(const int *)f, n = 0;
            while (k->enum_values[n])
                n++;
            bad = v < 0 || v >= n;
            if (bad)
                describe_expected(k, why, sizeof(why));
            break;
        }
        case CONFIG_T_INT_LIST:
        case CONFIG_T_CPUS: {
            const config_int_list_t *l = f;
            bad = l->n > CONFIG_MAX_LIST || (l->n < 0 && !(k->type == CONFIG_T_CPUS && l->n == CONFIG_CPUS_AUTO));
            if (bad)
                describe_expected(k, why, sizeof(why));
            else
                bad = store_list(tmp, k, l, why, sizeof(why));
            break;
        }
        }
        if (bad) {
            char val[128];
            if (config_get(cfg, k->key, val, sizeof(val)) != 0)
                snprintf(val, sizeof(val), "(unprintable)");
            problem(p, "%s: expected %s, got %s", k->key, why, val);
        }
    }
    free(tmp);
}

int config_validate(const crl_config_t *cfg, char *err, size_t errlen)
{
    problems_t p = {err, errlen, 0, 0};
    if (err && errlen)
        err[0] = '\0';
    validate_keys(cfg, &p);

    const model_config_t *m = &cfg->model;
    if (m->n_heads > 0 && m->dim % m->n_heads != 0)
        problem(&p, "model.dim (%d) must be a multiple of model.n_heads (%d)", m->dim, m->n_heads);
    else if (m->n_heads > 0 && (m->dim / m->n_heads) % 2 != 0)
        problem(&p, "head size model.dim / model.n_heads (%d / %d = %d) must be even for RoPE", m->dim, m->n_heads,
                m->dim / m->n_heads);
    if (m->n_kv_heads > 0 && m->n_heads % m->n_kv_heads != 0)
        problem(&p, "model.n_heads (%d) must be a multiple of model.n_kv_heads (%d)", m->n_heads, m->n_kv_heads);
    int image_tokens = 0;
    if (m->image_size > 0 && m->patch_size > 0) {
        if (m->image_size % m->patch_size != 0)
            problem(&p, "model.image_size (%d) must be a multiple of model.patch_size (%d)", m->image_size,
                    m->patch_size);
        int side = m->image_size / m->patch_size;
        image_tokens = side * side + 2; /* patches + <img> </img> */
    }
    /* Leave at least 16 tokens for the question text. */
    if ((long)image_tokens + cfg->rl.max_new_tokens + 16 > m->max_seq_len)
        problem(&p,
                "model.max_seq_len (%d) is too short: the image takes %d tokens (model.image_size / "
                "model.patch_size), rl.max_new_tokens is %d, and a prompt needs at least 16 more",
                m->max_seq_len, image_tokens, cfg->rl.max_new_tokens);
    /* No check of tokenizer.vocab_size against model.vocab_size: the former is
     * the BPE trainer's target, which it may stop short of; the model takes
     * the trained tokenizer's real size (the warm-up sets it, and rl/eval take
     * the model from a checkpoint), so a run's saved config legitimately has
     * model.vocab_size < tokenizer.vocab_size. */

    const config_sft_t *s = &cfg->sft;
    double mix = s->mix_captions + s->mix_policy + s->mix_critic;
    if (fabs(mix - 1.0) > 1e-6)
        problem(&p, "sft.mix_captions + sft.mix_policy + sft.mix_critic must sum to 1 (got %g + %g + %g = %.9g)",
                s->mix_captions, s->mix_policy, s->mix_critic, mix);
    if (s->batch_tokens < m->max_seq_len)
        problem(&p, "sft.batch_tokens (%d) must hold one full sequence of model.max_seq_len (%d) tokens",
                s->batch_tokens, m->max_seq_len);

    const config_rl_t *r = &cfg->rl;
    if (r->order_balanced && r->group_size % 2 != 0)
        problem(&p, "rl.order_balanced needs an even rl.group_size (got %d)", r->group_size);
    if (r->reward_w_pref + r->reward_w_format <= 0)
        problem(&p, "rl.reward_w_pref and rl.reward_w_format are both 0: every reward would be 0");

    if (cfg->eval.self_critique && cfg->eval.n_samples < 2)
        problem(&p, "eval.self_critique needs eval.n_samples >= 2 (got %d)", cfg->eval.n_samples);

    const config_learner_t *l = &cfg->learner;
    if ((long)l->heartbeat_timeout_ms < 2L * l->heartbeat_ms)
        problem(&p,
                "learner.heartbeat_timeout_ms (%d) must be at least twice learner.heartbeat_ms (%d), so one late "
                "heartbeat does not drop a peer",
                l->heartbeat_timeout_ms, l->heartbeat_ms);

    const config_network_t *n = &cfg->network;
    /* A chunk travels with its envelope; 64 KiB is ample for the header. */
    if ((long)cfg->broker.chunk_bytes + 65536 > n->max_msg_bytes)
        problem(&p, "broker.chunk_bytes (%d) plus 64 KiB of envelope exceeds network.max_msg_bytes (%d)",
                cfg->broker.chunk_bytes, n->max_msg_bytes);

    struct {
        const char *key;
        const char *ep;
    } eps[] = {{"network.learner_work", n->learner_work},
               {"network.broker_publish", n->broker_publish},
               {"network.broker_announce", n->broker_announce},
               {"network.broker_fetch", n->broker_fetch},
               {"broker.upstream", cfg->broker.upstream},
               {"broker.upstream_announce", cfg->broker.upstream_announce}};
    const int n_eps = (int)(sizeof(eps) / sizeof(eps[0]));
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < i; j++)
            if (eps[i].ep[0] && strcmp(eps[i].ep, eps[j].ep) == 0)
                problem(&p, "%s and %s are the same endpoint (%s)", eps[j].key, eps[i].key, eps[i].ep);
    if (n->curve_keys_dir[0] == '\0' && !n->insecure)
        for (int i = 0; i < n_eps; i++)
            if (eps[i].ep[0] && !config_endpoint_is_local(eps[i].ep))
                problem(&p,
                        "%s (%s) is not a loopback address and network.curve_keys_dir is empty: set "
                        "network.curve_keys_dir to encrypt, or network.insecure=true on a trusted network",
                        eps[i].key, eps[i].ep);
    return p.problems ? -EINVAL : 0;
}

/* ---------- output ---------- */

static int format_value(const config_key_t *k, const void *f, char *buf, size_t len)
{
    size_t need = 0;
    switch (k->type) {
    case CONFIG_T_INT:
        need = (size_t)snprintf(buf, len, "%d", *(const int *)f);
        break;
    case CONFIG_T_FLOAT: {
        char tmp[40];
        format_double(tmp, sizeof(tmp), *(const double *)f);
        need = (size_t)snprintf(buf, len, "%s", tmp);
        break;
    }
    case CONFIG_T_FLOAT32: {
        char tmp[40];
        format_float(tmp, sizeof(tmp), *(const float *)f);
        need = (size_t)snprintf(buf, len, "%s", tmp);
        break;
    }
    case CONFIG_T_BOOL:
        need = (size_t)snprintf(buf, len, "%s", *(const int *)f ? "true" : "false");
        break;
    case CONFIG_T_STRING:
        need = (size_t)snprintf(buf, len, "%.*s", (int)k->size, (const char *)f);
        break;
    case CONFIG_T_ENUM: {
        int v = *(const int *)f, n = 0;
        while (k->enum_values[n])
            n++;
        need = (size_t)snprintf(buf, len, "%s", (v >= 0 && v < n) ? k->enum_values[v] : "(invalid)");
        break;
    }
    case CONFIG_T_INT_LIST:
    case CONFIG_T_CPUS: {
        const config_int_list_t *l = f;
        if (l->n == CONFIG_CPUS_AUTO && k->type == CONFIG_T_CPUS) {
            need = (size_t)snprintf(buf, len, "auto");
            break;
        }
        if (len)
            buf[0] = '\0';
        int cnt = l->n < 0 ? 0 : (l->n > CONFIG_MAX_LIST ? CONFIG_MAX_LIST : l->n);
        for (int i = 0; i < cnt; i++) {
            size_t off = need < len ? need : len;
            need += (size_t)snprintf(buf + off, len - off, "%s%d", i ? "," : "", l->v[i]);
        }
        break;
    }
    }
    return need < len ? 0 : -ENOSPC;
}

int config_get(const crl_config_t *cfg, const char *dotted, char *buf, size_t len)
{
    const config_key_t *k = config_find_key(dotted);
    if (k == NULL)
        return -EINVAL;
    return format_value(k, field_cptr(cfg, k), buf, len);
}

static cJSON *value_json(const config_key_t *k, const void *f)
{
    char num[40];
    switch (k->type) {
    case CONFIG_T_INT:
        return cJSON_CreateNumber(*(const int *)f);
    case CONFIG_T_FLOAT:
        format_double(num, sizeof(num), *(const double *)f);
        return cJSON_CreateRaw(num);
    case CONFIG_T_FLOAT32:
        format_float(num, sizeof(num), *(const float *)f);
        return cJSON_CreateRaw(num);
    case CONFIG_T_BOOL:
        return cJSON_CreateBool(*(const int *)f);
    case CONFIG_T_STRING: {
        char *s = strndup(f, k->size);
        cJSON *j = s ? cJSON_CreateString(s) : NULL;
        free(s);
        return j;
    }
    case CONFIG_T_ENUM: {
        int v = *(const int *)f;
        return cJSON_CreateString(k->enum_values[v]);
    }
    case CONFIG_T_INT_LIST:
    case CONFIG_T_CPUS: {
        const config_int_list_t *l = f;
        if (l->n == CONFIG_CPUS_AUTO)
            return cJSON_CreateString("auto");
        return cJSON_CreateIntArray(l->v, l->n);
    }
    }
    return NULL;
}

char *config_to_json(const crl_config_t *cfg)
{
    char why[512];
    crl_config_t *chk = NULL;
    cJSON *root = cJSON_CreateObject();
    char *out = NULL;
    if (root == NULL)
        goto fail;
    /* Refuse to emit values the loader would reject (a corrupt struct). */
    chk = malloc(sizeof(*chk));
    if (chk == NULL)
        goto fail;
    memcpy(chk, cfg, sizeof(*chk));
    cJSON *sec = NULL;
    char sec_name[64] = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key_t *k = &schema[i];
        size_t sl = section_len(k->key);
        if (sec == NULL || strlen(sec_name) != sl || strncmp(sec_name, k->key, sl) != 0) {
            snprintf(sec_name, sizeof(sec_name), "%.*s", (int)sl, k->key);
            sec = cJSON_AddObjectToObject(root, sec_name);
            if (sec == NULL)
                goto fail;
        }
        const void *f = field_cptr(cfg, k);
        if (k->type == CONFIG_T_ENUM) {
            int v = *(const int *)f, n = 0;
            while (k->enum_values[n])
                n++;
            if (v < 0 || v >= n)
                goto bad;
        } else if (k->type == CONFIG_T_INT_LIST || k->type == CONFIG_T_CPUS) {
            if (store_list(chk, k, f, why, sizeof(why)) != 0)
                goto bad;
        } else if (k->type == CONFIG_T_STRING && memchr(f, '\0', k->size) == NULL) {
            goto bad;
        } else if (k->type == CONFIG_T_FLOAT && !isfinite(*(const double *)f)) {
            goto bad;
        } else if (k->type == CONFIG_T_FLOAT32 && !isfinite(*(const float *)f)) {
            goto bad;
        }
        cJSON *v = value_json(k, f);
        if (v == NULL)
            goto fail;
        cJSON_AddItemToObject(sec, k->key + sl + 1, v);
        continue;
    bad:
        log_error("config_to_json: %s holds an invalid value", k->key);
        goto fail;
    }
    out = cJSON_Print(root);
fail:
    free(chk);
    cJSON_Delete(root);
    return out;
}

int config_write_file(const crl_config_t *cfg, const char *path, char *err, size_t errlen)
{
    int rc = 0, fd = -1;
    char *tmp = NULL;
    char *json = config_to_json(cfg);
    if (json == NULL) {
        snprintf(err, errlen, "%s: cannot format the config (invalid value or out of memory)", path);
        return -EINVAL;
    }
    size_t plen = strlen(path);
    tmp = malloc(plen + 32);
    if (tmp == NULL) {
        rc = -ENOMEM;
        snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    size_t len = strlen(json), done = 0;
    while (done < len) {
        ssize_t w = write(fd, json + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
            goto out;
        }
        done += (size_t)w;
    }
    if (write(fd, "\n", 1) != 1 || fsync(fd) != 0) {
        rc = errno ? -errno : -EIO;
        snprintf(err, errlen, "%s: write/fsync failed: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        snprintf(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        goto out;
    }
out:
    if (fd >= 0)
        close(fd);
    if (rc != 0 && tmp != NULL)
        unlink(tmp);
    free(tmp);
    free(json);
    return rc;
}

void config_print_help(FILE *f)
{
    fprintf(f,
            "Configuration keys. Give a JSON file with --config FILE (one object per section, e.g.\n"
            "{\"rl\": {\"max_staleness\": 2}}) and override single keys with --set section.key=value\n"
            "(repeatable; applied after the file, in order). Lists: 0,1,2 or 0-3 or [0,1,2].\n");
    char sec_name[64] = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const config_key_t *k = &schema[i];
        size_t sl = section_len(k->key);
        if (strlen(sec_name) != sl || strncmp(sec_name, k->key, sl) != 0) {
            snprintf(sec_name, sizeof(sec_name), "%.*s", (int)sl, k->key);
            fprintf(f, "\n[%s]\n", sec_name);
        }
        char type[512], range[96];
        format_range(k, range, sizeof(range));
        switch (k->type) {
        case CONFIG_T_INT:
            snprintf(type, sizeof(type), "int %s", range);
            break;
        case CONFIG_T_FLOAT:
        case CONFIG_T_FLOAT32:
            snprintf(type, sizeof(type), "float %s", range);
            break;
        case CONFIG_T_BOOL:
            snprintf(type, sizeof(type), "bool");
            break;
        case CONFIG_T_STRING:
            snprintf(type, sizeof(type), "string");
            break;
        case CONFIG_T_ENUM: {
            size_t off = (size_t)snprintf(type, sizeof(type), "one of ");
            for (int e = 0; k->enum_values[e] && off < sizeof(type); e++)
                off += (size_t)snprintf(type + off, sizeof(type) - off, "%s%s", e ? "|" : "", k->enum_values[e]);
            break;
        }
        case CONFIG_T_INT_LIST:
            snprintf(type, sizeof(type), "list of ints %s", range);
            break;
        case CONFIG_T_CPUS:
            snprintf(type, sizeof(type), "\"auto\" or list of core ids");
            break;
        }
        const char *q = k->type == CONFIG_T_STRING ? "\"" : "";
        fprintf(f, "  %-30s %s, default %s%s%s\n      %s\n", k->key, type, q, k->def, q, k->help);
    }
}
