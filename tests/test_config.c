#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static char *make_tmpdir(void)
{
    const char *base = getenv("CRL_TEST_TMP");
    char *dir = malloc(4096);
    snprintf(dir, 4096, "%s/config-XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp(%s) failed", dir);
    return dir;
}

static char *write_tmp(const char *dir, const char *name, const char *text)
{
    char *path = malloc(4096);
    snprintf(path, 4096, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot create %s", path);
    fputs(text, f);
    fclose(f);
    return path;
}

static crl_config_t *new_defaults(void)
{
    crl_config_t *c = malloc(sizeof(*c));
    cr_assert_not_null(c);
    cr_assert_eq(config_defaults(c), 0, "config_defaults failed");
    return c;
}

static void assert_contains(const char *hay, const char *needle)
{
    cr_assert(strstr(hay, needle) != NULL, "expected the message to contain \"%s\", got: %s", needle, hay);
}

Test(config, schema_rows_are_consistent)
{
    size_t n;
    const config_key_t *s = config_schema(&n);
    cr_assert_gt(n, 80u, "only %zu keys", n);
    for (size_t i = 0; i < n; i++) {
        const char *dot = strchr(s[i].key, '.');
        cr_assert(dot && dot != s[i].key && dot[1] && !strchr(dot + 1, '.'), "key %s is not section.name",
                  s[i].key);
        cr_assert(s[i].offset + s[i].size <= sizeof(crl_config_t), "%s lies outside the struct", s[i].key);
        cr_assert(s[i].help && s[i].help[0], "%s has no description", s[i].key);
        cr_assert(s[i].def != NULL, "%s has no default", s[i].key);
        if (s[i].type == CONFIG_T_ENUM)
            cr_assert(s[i].enum_values && s[i].enum_values[0], "%s has no enum values", s[i].key);
        for (size_t j = 0; j < i; j++) {
            cr_assert_str_neq(s[i].key, s[j].key, "key %s appears twice", s[i].key);
            /* Fields must not overlap: each row owns its bytes. */
            int overlap = s[i].offset < s[j].offset + s[j].size && s[j].offset < s[i].offset + s[i].size;
            cr_assert(!overlap, "%s and %s share struct bytes", s[i].key, s[j].key);
        }
        cr_assert_eq(config_find_key(s[i].key), &s[i]);
    }
    cr_assert_null(config_find_key("rl.nope"));
}

Test(config, defaults_validate_and_match_the_design)
{
    crl_config_t *c = new_defaults();
    char err[2048];
    int rc = config_validate(c, err, sizeof(err));
    cr_assert_eq(rc, 0, "defaults do not validate: %s", err);
    cr_assert_str_eq(c->run.name, "demo");
    cr_assert_eq(c->run.seed, 1);
    cr_assert_eq(c->model.dim, 128);
    cr_assert_eq(c->model.hidden_dim, 344);
    cr_assert_eq(c->model.tie_embeddings, 0);
    cr_assert_eq(c->model.norm_eps, 1e-5f, "norm_eps %g", (double)c->model.norm_eps);
    cr_assert_eq(c->model.rope_theta, 10000.0f);
    cr_assert_eq(c->data.on_error, CONFIG_ON_ERROR_STOP);
    cr_assert_eq(c->data.critic_variant, CONFIG_CRITIC_FINAL_ONLY);
    cr_assert_str_eq(c->data.verdict_labels, "AB");
    cr_assert_eq(c->rl.group_size, 8);
    cr_assert_eq(c->rl.max_staleness, 2);
    cr_assert_eq(c->rl.is_cap, 2.0);
    cr_assert_eq(c->rl.clip_low, 0.2);
    cr_assert_eq(c->rl.clip_high, 0.3);
    cr_assert_eq(c->rl.dual_clip, 3.0);
    cr_assert_eq(c->rl.kl_coef, 1e-2);
    cr_assert_eq(c->rl.order_balanced, 1);
    cr_assert_eq(c->sft.mix_critic, 0.4);
    cr_assert_eq(c->actor.cpus.n, CONFIG_CPUS_AUTO);
    cr_assert_eq(c->learner.traj_fsync, CONFIG_FSYNC_INTERVAL);
    cr_assert_eq(c->broker.chunk_bytes, 1 << 20);
    cr_assert_eq(c->network.max_msg_bytes, 256 << 20);
    cr_assert_str_eq(c->network.learner_work, "tcp://127.0.0.1:5555");
    cr_assert_str_eq(c->network.broker_fetch, "tcp://127.0.0.1:5558");
    free(c);
}

static const char *every_section_json =
    "{\n"
    "  \"run\": {\"name\": \"exp1\", \"dir\": \"out\", \"seed\": 7},\n"
    "  \"model\": {\"dim\": 64, \"n_heads\": 2, \"n_kv_heads\": 1, \"tie_embeddings\": true, \"norm_eps\": 1e-6},\n"
    "  \"data\": {\"dir\": \"data/x\", \"on_error\": \"skip\", \"critic_variant\": \"full\", \"verdict_labels\": "
    "\"12\", \"grid\": 4},\n"
    "  \"tokenizer\": {\"vocab_size\": 300, \"path\": \"tok.json\"},\n"
    "  \"sft\": {\"steps\": 10, \"mix_captions\": 0.3, \"mix_policy\": 0.3, \"mix_critic\": 0.4},\n"
    "  \"rl\": {\"max_staleness\": 3, \"lr\": 3e-5, \"order_balanced\": false, \"task_mix_critic\": 0.5},\n"
    "  \"eval\": {\"n_samples\": 4, \"self_critique\": false},\n"
    "  \"actor\": {\"count\": 3, \"cpus\": [0, 1]},\n"
    "  \"learner\": {\"cpus\": \"2-3\", \"traj_fsync\": \"record\"},\n"
    "  \"broker\": {\"cpus\": \"auto\", \"keep_versions\": 3, \"upstream\": \"tcp://127.0.0.1:6000\"},\n"
    "  \"network\": {\"learner_work\": \"ipc:///tmp/crl-work\", \"max_msg_bytes\": 67108864}\n"
    "}\n";

Test(config, file_with_every_section_loads)
{
    char *dir = make_tmpdir();
    char *path = write_tmp(dir, "run.json", every_section_json);
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    int rc = config_load_file(c, path, err, sizeof(err));
    cr_assert_eq(rc, 0, "load failed: %s", err);
    cr_assert_str_eq(c->run.name, "exp1");
    cr_assert_eq(c->run.seed, 7);
    cr_assert_eq(c->model.dim, 64);
    cr_assert_eq(c->model.n_kv_heads, 1);
    cr_assert_eq(c->model.tie_embeddings, 1);
    cr_assert_eq(c->model.norm_eps, 1e-6f);
    cr_assert_eq(c->model.n_layers, 4, "untouched keys keep their defaults");
    cr_assert_eq(c->data.on_error, CONFIG_ON_ERROR_SKIP);
    cr_assert_eq(c->data.critic_variant, CONFIG_CRITIC_FULL);
    cr_assert_str_eq(c->data.verdict_labels, "12");
    cr_assert_eq(c->tokenizer.vocab_size, 300);
    cr_assert_eq(c->sft.mix_captions, 0.3);
    cr_assert_eq(c->rl.max_staleness, 3);
    cr_assert_eq(c->rl.lr, 3e-5);
    cr_assert_eq(c->rl.order_balanced, 0);
    cr_assert_eq(c->eval.self_critique, 0);
    cr_assert_eq(c->actor.cpus.n, 2);
    cr_assert_eq(c->actor.cpus.v[1], 1);
    cr_assert_eq(c->learner.cpus.n, 2);
    cr_assert_eq(c->learner.cpus.v[0], 2);
    cr_assert_eq(c->learner.cpus.v[1], 3);
    cr_assert_eq(c->learner.traj_fsync, CONFIG_FSYNC_RECORD);
    cr_assert_eq(c->broker.cpus.n, CONFIG_CPUS_AUTO);
    cr_assert_str_eq(c->broker.upstream, "tcp://127.0.0.1:6000");
    cr_assert_str_eq(c->network.learner_work, "ipc:///tmp/crl-work");
    rc = config_validate(c, err, sizeof(err));
    cr_assert_eq(rc, 0, "loaded config does not validate: %s", err);
    free(c);
    free(path);
    free(dir);
}

Test(config, unknown_key_is_named_with_a_suggestion)
{
    crl_config_t *c = new_defaults(), *before = new_defaults();
    char err[1024] = "";
    int rc = config_load_json(c, "{\"rl\": {\"lr\": 0.5, \"max_stalenes\": 3}}", "cfg.json", err, sizeof(err));
    cr_assert_eq(rc, -EINVAL);
    assert_contains(err, "cfg.json");
    assert_contains(err, "rl.max_stalenes ");
    assert_contains(err, "did you mean rl.max_staleness?");
    cr_assert_eq(memcmp(c, before, sizeof(*c)), 0, "a failed load changed the config (rl.lr applied?)");

    rc = config_set(c, "rl.max_stalenes=3", err, sizeof(err));
    cr_assert_eq(rc, -EINVAL);
    assert_contains(err, "rl.max_stalenes");
    assert_contains(err, "rl.max_staleness");
    free(c);
    free(before);
}

Test(config, unknown_section_and_non_object_section)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    cr_assert_eq(config_load_json(c, "{\"rll\": {\"lr\": 1}}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "unknown section \"rll\"");
    assert_contains(err, "did you mean rl?");
    cr_assert_eq(config_load_json(c, "{\"rl\": 3}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "section \"rl\" must be an object");
    cr_assert_eq(config_load_json(c, "[1, 2]", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "top level");
    free(c);
}

Test(config, wrong_type_names_key_and_value)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    cr_assert_eq(config_load_json(c, "{\"model\": {\"dim\": \"abc\"}}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "f.json: model.dim: expected an integer in [8, 65536], got \"abc\"");
    cr_assert_eq(config_load_json(c, "{\"model\": {\"tie_embeddings\": 1}}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "model.tie_embeddings: expected true or false, got 1");
    cr_assert_eq(config_load_json(c, "{\"run\": {\"name\": 5}}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "run.name");
    cr_assert_eq(config_set(c, "model.dim=abc", err, sizeof(err)), -EINVAL);
    assert_contains(err, "model.dim");
    assert_contains(err, "\"abc\"");
    cr_assert_eq(config_set(c, "rl.lr=0x10", err, sizeof(err)), -EINVAL, "hex accepted");
    cr_assert_eq(config_set(c, "rl.lr=nan", err, sizeof(err)), -EINVAL, "nan accepted");
    cr_assert_eq(c->model.dim, 128, "rejected values must not be stored");
    free(c);
}

Test(config, out_of_range_names_key_value_and_range)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    cr_assert_eq(config_load_json(c, "{\"rl\": {\"top_p\": 1.5}}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "rl.top_p: expected a number in (0, 1], got 1.5");
    cr_assert_eq(config_load_json(c, "{\"model\": {\"dim\": 3.5}}", "f.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "model.dim");
    assert_contains(err, "3.5");
    cr_assert_eq(config_set(c, "rl.group_size=1", err, sizeof(err)), -EINVAL);
    assert_contains(err, "rl.group_size: expected an integer in [2, 1024], got \"1\"");
    cr_assert_eq(config_set(c, "rl.clip_low=0", err, sizeof(err)), -EINVAL);
    assert_contains(err, "(0, 1)");
    cr_assert_eq(config_set(c, "model.dim=99999999999", err, sizeof(err)), -EINVAL);
    cr_assert_eq(config_set(c, "rl.max_staleness=0", err, sizeof(err)), 0, "0 is in range: %s", err);
    cr_assert_eq(c->rl.max_staleness, 0);
    free(c);
}

Test(config, parse_args_applies_files_then_sets_in_order)
{
    char *dir = make_tmpdir();
    char *path = write_tmp(dir, "a.json", "{\"rl\": {\"lr\": 0.25, \"steps\": 7}, \"run\": {\"name\": \"file\"}}");
    char *path2 = write_tmp(dir, "b.json", "{\"run\": {\"name\": \"file2\"}}");
    char cfgopt[4200];
    snprintf(cfgopt, sizeof(cfgopt), "--config=%s", path2);
    char *argv[] = {"prog",       "--set",          "rl.lr=0.5", "--config", path, "pos1",   "--set",
                    "rl.lr=0.125", "pos2",          cfgopt,      "--set=rl.steps=9", "--", "--set", "x=1",
                    NULL};
    int argc = 14;
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    int rc = config_parse_args(c, &argc, argv, err, sizeof(err));
    cr_assert_eq(rc, 0, "parse_args: %s", err);
    cr_assert_eq(c->rl.lr, 0.125, "the last --set wins over the file: got %g", c->rl.lr);
    cr_assert_eq(c->rl.steps, 9);
    cr_assert_str_eq(c->run.name, "file2", "files apply in order");
    cr_assert_eq(argc, 6, "left %d args", argc);
    const char *want[] = {"prog", "pos1", "pos2", "--", "--set", "x=1"};
    for (int i = 0; i < 6; i++)
        cr_assert_str_eq(argv[i], want[i], "argv[%d]", i);
    cr_assert_null(argv[6]);
    free(c);
    free(path);
    free(path2);
    free(dir);
}

Test(config, parse_args_errors_and_help)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    char *a1[] = {"prog", "--help-config", NULL};
    int n1 = 2;
    cr_assert_eq(config_parse_args(c, &n1, a1, err, sizeof(err)), 1);
    char *a2[] = {"prog", "--set", NULL};
    int n2 = 2;
    cr_assert_eq(config_parse_args(c, &n2, a2, err, sizeof(err)), -EINVAL);
    assert_contains(err, "--set needs a value");
    char *a3[] = {"prog", "--config", "/nonexistent/crl.json", NULL};
    int n3 = 3;
    cr_assert_lt(config_parse_args(c, &n3, a3, err, sizeof(err)), 0);
    assert_contains(err, "/nonexistent/crl.json");
    char *a4[] = {"prog", "--set", "model.dim=130", NULL};
    int n4 = 3;
    cr_assert_eq(config_parse_args(c, &n4, a4, err, sizeof(err)), -EINVAL, "validation must run at the end");
    assert_contains(err, "model.dim (130)");
    cr_assert_eq(config_set(c, "model.dim", err, sizeof(err)), -EINVAL);
    assert_contains(err, "section.key=value");
    free(c);
}

Test(config, enum_parsing)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    cr_assert_eq(config_set(c, "data.on_error=skip", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(c->data.on_error, CONFIG_ON_ERROR_SKIP);
    cr_assert_eq(config_set(c, "learner.traj_fsync=\"never\"", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(c->learner.traj_fsync, CONFIG_FSYNC_NEVER);
    cr_assert_eq(config_set(c, "data.critic_variant=partial", err, sizeof(err)), -EINVAL);
    assert_contains(err, "data.critic_variant: expected one of full, final_only, got \"partial\"");
    cr_assert_eq(config_load_json(c, "{\"data\": {\"on_error\": 1}}", "f", err, sizeof(err)), -EINVAL);
    assert_contains(err, "one of skip, stop");
    char buf[64];
    cr_assert_eq(config_get(c, "learner.traj_fsync", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "never");
    free(c);
}

Test(config, list_and_cpus_parsing)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "", buf[128];
    struct {
        const char *text;
        int n;
        int v0, vlast;
    } ok[] = {{"0,1,2", 3, 0, 2},   {"0-3,8", 5, 0, 8}, {"[4, 5]", 2, 4, 5},
              {" 7 ", 1, 7, 7},     {"auto", -1, 0, 0}, {"\"auto\"", -1, 0, 0}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char a[64];
        snprintf(a, sizeof(a), "actor.cpus=%s", ok[i].text);
        cr_assert_eq(config_set(c, a, err, sizeof(err)), 0, "%s rejected: %s", a, err);
        cr_assert_eq(c->actor.cpus.n, ok[i].n, "%s: n = %d, want %d", a, c->actor.cpus.n, ok[i].n);
        if (ok[i].n > 0) {
            cr_assert_eq(c->actor.cpus.v[0], ok[i].v0, "%s first", a);
            cr_assert_eq(c->actor.cpus.v[ok[i].n - 1], ok[i].vlast, "%s last", a);
        }
    }
    cr_assert_eq(config_set(c, "actor.cpus=0-3,8", err, sizeof(err)), 0);
    cr_assert_eq(config_get(c, "actor.cpus", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "0,1,2,3,8");
    const char *bad[] = {"1,,2", "1,a", "[]", "", "1,1", "-1", "3-1", "[1,2", "1,2]", "1,", "70000", "auto,1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char a[64];
        snprintf(a, sizeof(a), "learner.cpus=%s", bad[i]);
        cr_assert_eq(config_set(c, a, err, sizeof(err)), -EINVAL, "%s accepted", a);
        assert_contains(err, "learner.cpus");
    }
    cr_assert_eq(config_set(c, "learner.cpus=1,1", err, sizeof(err)), -EINVAL);
    assert_contains(err, "core 1 appears twice");
    cr_assert_eq(config_load_json(c, "{\"broker\": {\"cpus\": [0, 1.5]}}", "f", err, sizeof(err)), -EINVAL);
    assert_contains(err, "broker.cpus");
    assert_contains(err, "[0,1.5]");
    cr_assert_eq(config_load_json(c, "{\"broker\": {\"cpus\": [3, 2]}}", "f", err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(c->broker.cpus.n, 2);
    cr_assert_eq(c->broker.cpus.v[0], 3);
    free(c);
}

Test(config, bool_and_string_parsing)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    cr_assert_eq(config_set(c, "model.tie_embeddings=true", err, sizeof(err)), 0);
    cr_assert_eq(c->model.tie_embeddings, 1);
    cr_assert_eq(config_set(c, "model.tie_embeddings=0", err, sizeof(err)), 0);
    cr_assert_eq(c->model.tie_embeddings, 0);
    cr_assert_eq(config_set(c, "model.tie_embeddings=yes", err, sizeof(err)), -EINVAL);
    assert_contains(err, "true or false");
    cr_assert_eq(config_set(c, "run.name=my run", err, sizeof(err)), -EINVAL, "spaces accepted in run.name");
    cr_assert_eq(config_set(c, "run.name=../x", err, sizeof(err)), -EINVAL, "a path accepted as run.name");
    cr_assert_eq(config_set(c, "run.name=abc=d", err, sizeof(err)), 0, "only the first '=' splits: %s", err);
    cr_assert_str_eq(c->run.name, "abc=d");
    cr_assert_eq(config_set(c, "run.dir=\"/a b/\\\"q\\\"\"", err, sizeof(err)), 0, "%s", err);
    cr_assert_str_eq(c->run.dir, "/a b/\"q\"");
    cr_assert_eq(config_set(c, "tokenizer.path=", err, sizeof(err)), 0, "empty string: %s", err);
    cr_assert_str_eq(c->tokenizer.path, "");
    char longname[200];
    memset(longname, 'x', sizeof(longname));
    memcpy(longname, "run.name=", 9);
    longname[sizeof(longname) - 1] = '\0';
    cr_assert_eq(config_set(c, longname, err, sizeof(err)), -EINVAL);
    assert_contains(err, "at most 63 bytes");
    cr_assert_eq(config_set(c, "data.verdict_labels=AA", err, sizeof(err)), -EINVAL);
    assert_contains(err, "data.verdict_labels");
    cr_assert_eq(config_set(c, "data.verdict_labels=A}", err, sizeof(err)), -EINVAL);
    cr_assert_eq(config_set(c, "network.broker_fetch=localhost:5558", err, sizeof(err)), -EINVAL);
    assert_contains(err, "ZeroMQ endpoint");
    free(c);
}

static void expect_invalid(const char *const *sets, int n, const char *const *needles, int n_needles)
{
    crl_config_t *c = new_defaults();
    char err[2048] = "";
    for (int i = 0; i < n; i++)
        cr_assert_eq(config_set(c, sets[i], err, sizeof(err)), 0, "%s: %s", sets[i], err);
    cr_assert_eq(config_validate(c, err, sizeof(err)), -EINVAL, "validate accepted %s", sets[0]);
    for (int i = 0; i < n_needles; i++)
        assert_contains(err, needles[i]);
    free(c);
}

#define EXPECT_INVALID(SETS, NEEDLES)                                                                            \
    do {                                                                                                         \
        const char *const s_[] = SETS;                                                                           \
        const char *const n_[] = NEEDLES;                                                                        \
        expect_invalid(s_, (int)(sizeof(s_) / sizeof(s_[0])), n_, (int)(sizeof(n_) / sizeof(n_[0])));           \
    } while (0)
#define L(...) {__VA_ARGS__}

Test(config, cross_field_validation_names_the_keys)
{
    EXPECT_INVALID(L("model.dim=130"), L("model.dim (130)", "model.n_heads (4)"));
    EXPECT_INVALID(L("model.dim=132", "model.n_heads=4"), L("model.dim / model.n_heads", "even"));
    EXPECT_INVALID(L("model.n_kv_heads=3"), L("model.n_heads (4)", "model.n_kv_heads (3)"));
    EXPECT_INVALID(L("model.image_size=50"), L("model.image_size (50)", "model.patch_size (8)"));
    EXPECT_INVALID(L("sft.mix_critic=0.5"), L("sft.mix_captions + sft.mix_policy + sft.mix_critic", "sum to 1"));
    EXPECT_INVALID(L("rl.group_size=7"), L("rl.order_balanced", "rl.group_size (got 7)"));
    EXPECT_INVALID(L("learner.heartbeat_timeout_ms=1500"),
                   L("learner.heartbeat_timeout_ms (1500)", "learner.heartbeat_ms (1000)"));
    EXPECT_INVALID(L("model.max_seq_len=100"), L("model.max_seq_len (100)", "rl.max_new_tokens"));
    EXPECT_INVALID(L("sft.batch_tokens=100"), L("sft.batch_tokens (100)", "model.max_seq_len"));
    EXPECT_INVALID(L("eval.n_samples=1"), L("eval.self_critique", "eval.n_samples"));
    EXPECT_INVALID(L("rl.reward_w_pref=0", "rl.reward_w_format=0"), L("rl.reward_w_pref", "rl.reward_w_format"));
    EXPECT_INVALID(L("broker.chunk_bytes=268435456"), L("broker.chunk_bytes", "network.max_msg_bytes"));
    EXPECT_INVALID(L("network.broker_fetch=tcp://127.0.0.1:5557"),
                   L("network.broker_announce and network.broker_fetch are the same endpoint"));
    EXPECT_INVALID(L("network.learner_work=tcp://0.0.0.0:5555"),
                   L("network.learner_work (tcp://0.0.0.0:5555)", "network.curve_keys_dir", "network.insecure"));
    /* Two problems at once: both reported. */
    EXPECT_INVALID(L("model.dim=130", "rl.group_size=7"), L("model.dim (130)", "; ", "rl.group_size (got 7)"));

    /* The same endpoint is fine with keys, or when declared insecure. */
    crl_config_t *c = new_defaults();
    char err[2048] = "";
    cr_assert_eq(config_set(c, "network.learner_work=tcp://10.0.0.5:5555", err, sizeof(err)), 0);
    cr_assert_eq(config_set(c, "network.insecure=true", err, sizeof(err)), 0);
    cr_assert_eq(config_validate(c, err, sizeof(err)), 0, "%s", err);
    /* Values written straight into the struct are range-checked too. */
    c->rl.clip_low = -0.1;
    c->rl.dual_clip = 0.5;
    cr_assert_eq(config_validate(c, err, sizeof(err)), -EINVAL);
    assert_contains(err, "rl.clip_low: expected a number in (0, 1), got -0.1");
    assert_contains(err, "rl.dual_clip");
    free(c);
}

static void apply_many(crl_config_t *c, const char *const *sets, int n)
{
    char err[1024];
    for (int i = 0; i < n; i++)
        cr_assert_eq(config_set(c, sets[i], err, sizeof(err)), 0, "%s: %s", sets[i], err);
}

Test(config, to_json_round_trips_exactly)
{
    const char *const sets[] = {
        "rl.lr=0.30000000000000004", "rl.kl_coef=1e-7",        "model.norm_eps=3.3e-6",
        "model.rope_theta=500000",   "actor.cpus=0-2,9",       "learner.cpus=[5]",
        "run.dir=/tmp/a \"b\"\\c é", "data.on_error=skip",     "model.tie_embeddings=true",
        "rl.top_p=0.123456789012345", "tokenizer.path=",        "data.verdict_labels=12",
        "broker.upstream=ipc:///tmp/up"};
    crl_config_t *a = new_defaults();
    apply_many(a, sets, (int)(sizeof(sets) / sizeof(sets[0])));
    char *json = config_to_json(a);
    cr_assert_not_null(json);
    /* Load onto a config that differs everywhere we changed, and more. */
    crl_config_t *b = new_defaults();
    const char *const other[] = {"rl.lr=0.9", "actor.cpus=7", "run.dir=zzzzzzzzzzzzzzzzzzzzzzzzz", "rl.steps=3"};
    apply_many(b, other, 4);
    char err[1024] = "";
    int rc = config_load_json(b, json, "to_json", err, sizeof(err));
    cr_assert_eq(rc, 0, "reloading the output failed: %s\n%s", err, json);
    size_t n;
    const config_key_t *s = config_schema(&n);
    for (size_t i = 0; i < n; i++) {
        char va[600], vb[600];
        config_get(a, s[i].key, va, sizeof(va));
        config_get(b, s[i].key, vb, sizeof(vb));
        cr_assert_str_eq(va, vb, "%s differs after the round trip", s[i].key);
    }
    cr_assert_eq(memcmp(a, b, sizeof(*a)), 0, "structs differ bytewise after the round trip");
    /* Every key appears in the output. */
    for (size_t i = 0; i < n; i++) {
        char q[96];
        snprintf(q, sizeof(q), "\"%s\":", strchr(s[i].key, '.') + 1);
        assert_contains(json, q);
    }
    free(json);
    free(a);
    free(b);
}

Test(config, write_file_then_load_file_is_identical)
{
    char *dir = make_tmpdir();
    char path[4200];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    crl_config_t *a = new_defaults(), *b = new_defaults();
    const char *const sets[] = {"run.name=rt", "learner.cpus=1,3", "rl.temperature=0.7"};
    apply_many(a, sets, 3);
    char err[1024] = "";
    cr_assert_eq(config_write_file(a, path, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(config_load_file(b, path, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(memcmp(a, b, sizeof(*a)), 0);
    free(a);
    free(b);
    free(dir);
}

Test(config, malformed_json_reports_line_and_duplicates)
{
    crl_config_t *c = new_defaults();
    char err[1024] = "";
    cr_assert_eq(config_load_json(c, "{\n  \"rl\": {\n    \"lr\": ,\n  }\n}", "bad.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "bad.json:3:");
    assert_contains(err, "not valid JSON");
    cr_assert_eq(config_load_json(c, "{\"rl\": {\"lr\": 0.1, \"lr\": 0.2}}", "dup.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "rl.lr appears twice");
    cr_assert_eq(config_load_json(c, "{\"rl\": {}, \"rl\": {}}", "dup.json", err, sizeof(err)), -EINVAL);
    assert_contains(err, "section \"rl\" appears twice");
    cr_assert_eq(config_load_json(c, "{} trailing", "t.json", err, sizeof(err)), -EINVAL);
    cr_assert_eq(config_load_json(c, "{}", "empty.json", err, sizeof(err)), 0, "an empty object is fine: %s", err);
    free(c);
}

Test(config, help_lists_every_key)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    config_print_help(f);
    fclose(f);
    size_t n;
    const config_key_t *s = config_schema(&n);
    for (size_t i = 0; i < n; i++)
        assert_contains(text, s[i].key);
    assert_contains(text, "rl.max_staleness               int [0, 1000], default 2");
    assert_contains(text, "one of skip|stop, default stop");
    free(text);
}
