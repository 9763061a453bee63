#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"

static void make_tmpdir(char *dir, size_t cap)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(dir, cap, "%s/ckpt.XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp(%s) failed", dir);
}

static void rm_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

static model_config_t small_config(int tie, int image_size, int kv_heads)
{
    model_config_t c = {
        .vocab_size = 300,
        .dim = 32,
        .n_layers = 2,
        .n_heads = 4,
        .n_kv_heads = kv_heads,
        .hidden_dim = 48,
        .max_seq_len = 64,
        .image_size = image_size,
        .patch_size = image_size ? 4 : 0,
        .tie_embeddings = tie,
        .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
    return c;
}

static model_t *random_model(model_config_t c, uint64_t seed)
{
    model_t *m = model_new(&c, 0);
    cr_assert_not_null(m, "model_new failed");
    rng_t r;
    rng_seed(&r, seed);
    model_init_random(m, &r);
    /* Norm weights init to exactly 1: perturb them so a swapped tensor shows. */
    for (size_t i = 0; i < m->n_params; i++)
        m->params[i] += 1e-3f * rng_normal(&r);
    return m;
}

static void assert_models_equal(const model_t *a, const model_t *b)
{
    const model_config_t *x = &a->cfg, *y = &b->cfg;
    cr_assert(x->vocab_size == y->vocab_size && x->dim == y->dim && x->n_layers == y->n_layers &&
                  x->n_heads == y->n_heads && x->n_kv_heads == y->n_kv_heads &&
                  x->hidden_dim == y->hidden_dim && x->max_seq_len == y->max_seq_len &&
                  x->image_size == y->image_size && x->patch_size == y->patch_size &&
                  x->tie_embeddings == y->tie_embeddings,
              "integer config fields differ after reload");
    cr_assert(memcmp(&x->rope_theta, &y->rope_theta, sizeof(float)) == 0, "rope_theta %g vs %g",
              (double)x->rope_theta, (double)y->rope_theta);
    cr_assert(memcmp(&x->norm_eps, &y->norm_eps, sizeof(float)) == 0, "norm_eps %.9g vs %.9g",
              (double)x->norm_eps, (double)y->norm_eps);
    cr_assert_eq(a->n_tensors, b->n_tensors);
    for (int i = 0; i < a->n_tensors; i++) {
        const tensor_info_t *ta = &a->tensors[i], *tb = &b->tensors[i];
        cr_assert_str_eq(ta->name, tb->name);
        cr_assert_eq(ta->numel, tb->numel);
        cr_assert_eq(memcmp(a->params + ta->offset, b->params + tb->offset, ta->numel * sizeof(float)), 0,
                     "tensor %s is not bit-exact after reload", ta->name);
    }
}

static void round_trip(model_config_t c, uint64_t seed)
{
    char dir[256], sub[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    snprintf(sub, sizeof sub, "%s/ckpt/step-7", dir); /* nested: save creates parents */
    model_t *m = random_model(c, seed);
    cr_assert_eq(ckpt_save_model(m, sub, err, sizeof err), 0, "save: %s", err);
    model_t *l = ckpt_load_model(sub, 1, err, sizeof err);
    cr_assert_not_null(l, "load: %s", err);
    cr_assert_not_null(l->grads, "with_grads=1 gave no gradient buffer");
    assert_models_equal(m, l);
    model_destroy(&l);
    l = ckpt_load_model(sub, 0, err, sizeof err);
    cr_assert_not_null(l, "load: %s", err);
    cr_assert_null(l->grads);
    model_destroy(&l);
    model_destroy(&m);
    rm_tree(dir);
}

Test(checkpoint, round_trip_tied_text_only)
{
    round_trip(small_config(1, 0, 4), 1);
}

Test(checkpoint, round_trip_untied_with_projector)
{
    round_trip(small_config(0, 16, 4), 2);
}

Test(checkpoint, round_trip_gqa_tied_with_projector_odd_floats)
{
    model_config_t c = small_config(1, 8, 2);
    c.rope_theta = 500000.0f;
    c.norm_eps = 1.2345678e-6f;
    round_trip(c, 3);
}

/* Path helpers and JSON edits on a saved checkpoint. */
static cJSON *read_json(const char *path)
{
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp, "cannot open %s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    cr_assert_not_null(j, "%s is not JSON", path);
    return j;
}

static void write_json(const char *path, const cJSON *j)
{
    char *s = cJSON_Print(j);
    FILE *fp = fopen(path, "wb");
    cr_assert(s && fp);
    fputs(s, fp);
    fclose(fp);
    free(s);
}

Test(checkpoint, config_json_has_hugging_face_keys)
{
    char dir[256], path[512], err[512];
    make_tmpdir(dir, sizeof dir);
    model_config_t c = small_config(0, 16, 2);
    model_t *m = random_model(c, 4);
    cr_assert_eq(ckpt_save_model(m, dir, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *j = read_json(path);
    cr_assert_str_eq(cJSON_GetObjectItem(j, "model_type")->valuestring, "crl_llava");
    cr_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring,
                     "CrlLlavaForCausalLM");
    cr_assert_str_eq(cJSON_GetObjectItem(j, "torch_dtype")->valuestring, "float32");
    struct { const char *key; int want; } ints[] = {
        {"vocab_size", 300}, {"hidden_size", 32}, {"num_hidden_layers", 2},
        {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 48},
        {"max_position_embeddings", 64}, {"image_size", 16}, {"patch_size", 4},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        cJSON *v = cJSON_GetObjectItem(j, ints[i].key);
        cr_assert(cJSON_IsNumber(v) && v->valueint == ints[i].want, "%s: expected %d", ints[i].key,
                  ints[i].want);
    }
    cr_assert(cJSON_IsFalse(cJSON_GetObjectItem(j, "tie_word_embeddings")));
    cr_assert_float_eq(cJSON_GetObjectItem(j, "rope_theta")->valuedouble, 10000.0, 1e-9);
    cr_assert_float_eq(cJSON_GetObjectItem(j, "rms_norm_eps")->valuedouble, 1e-5, 1e-12);
    cJSON_Delete(j);
    /* Tensor names in the safetensors file follow HF Llama + mm_projector. */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_file_t *f = st_open(path, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_eq(st_n_tensors(f), m->n_tensors);
    cr_assert_not_null(st_find(f, "model.layers.1.self_attn.k_proj.weight"));
    cr_assert_not_null(st_find(f, "mm_projector.0.weight"));
    cr_assert_not_null(st_find(f, "lm_head.weight"));
    cr_assert_str_eq(st_metadata_get(f, "format"), "pt");
    st_close(&f);
    model_destroy(&m);
    rm_tree(dir);
}

/* Saves a model, applies edit to its config.json, expects load to fail with
 * every string of want in the message. */
static void expect_load_failure(model_config_t c, void (*edit)(cJSON *, const void *), const void *arg,
                                const char *want1, const char *want2)
{
    char dir[256], path[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    model_t *m = random_model(c, 5);
    cr_assert_eq(ckpt_save_model(m, dir, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    cJSON *j = read_json(path);
    edit(j, arg);
    write_json(path, j);
    cJSON_Delete(j);
    model_t *l = ckpt_load_model(dir, 0, err, sizeof err);
    cr_assert_null(l, "a corrupted checkpoint was accepted");
    cr_assert(strstr(err, want1), "expected '%s' in the error, got '%s'", want1, err);
    if (want2)
        cr_assert(strstr(err, want2), "expected '%s' in the error, got '%s'", want2, err);
    model_destroy(&m);
    rm_tree(dir);
}

static void set_number(cJSON *j, const void *arg)
{
    const char *const *kv = arg;
    cJSON_ReplaceItemInObject(j, kv[0], cJSON_CreateNumber(atof(kv[1])));
}

static void set_bool(cJSON *j, const void *arg)
{
    const char *const *kv = arg;
    cJSON_ReplaceItemInObject(j, kv[0], cJSON_CreateBool(strcmp(kv[1], "true") == 0));
}

static void delete_key(cJSON *j, const void *arg)
{
    cJSON_DeleteItemFromObject(j, (const char *)arg);
}

Test(checkpoint, shape_mismatch_names_the_tensor)
{
    /* vocab 300 -> 301 in config.json: the embedding no longer fits. */
    const char *vocab[2] = {"vocab_size", "301"};
    expect_load_failure(small_config(1, 0, 4), set_number, vocab, "'model.embed_tokens.weight'",
                        "[300, 32] in the file, expected [301, 32]");
    /* intermediate_size 48 -> 64: the first MLP tensor in table order. */
    const char *ffn[2] = {"intermediate_size", "64"};
    expect_load_failure(small_config(1, 0, 4), set_number, ffn, "'model.layers.0.mlp.gate_proj.weight'",
                        "[48, 32] in the file, expected [64, 32]");
    /* patch_size 4 -> 8 changes the projector input. */
    const char *patch[2] = {"patch_size", "8"};
    expect_load_failure(small_config(0, 16, 4), set_number, patch, "'mm_projector.0.weight'",
                        "expected [32, 192]");
}

Test(checkpoint, missing_or_extra_tensor_is_named)
{
    /* Saved tied (no lm_head), config says untied: lm_head is missing. */
    const char *untie[2] = {"tie_word_embeddings", "false"};
    expect_load_failure(small_config(1, 0, 4), set_bool, untie, "'lm_head.weight' is missing", NULL);
    /* Saved untied, config says tied: lm_head is an extra. */
    const char *tie[2] = {"tie_word_embeddings", "true"};
    expect_load_failure(small_config(0, 0, 4), set_bool, tie, "unexpected tensor 'lm_head.weight'", NULL);
    /* Saved with a projector, config says text-only. */
    const char *noimg[2] = {"image_size", "0"};
    expect_load_failure(small_config(0, 16, 4), set_number, noimg, "unexpected tensor 'mm_projector.", NULL);
    /* Saved with 2 layers, config says 3. */
    const char *layers[2] = {"num_hidden_layers", "3"};
    expect_load_failure(small_config(1, 0, 4), set_number, layers,
                        "'model.layers.2.input_layernorm.weight' is missing", NULL);
}

Test(checkpoint, missing_config_key_is_named)
{
    const char *keys[] = {"model_type", "architectures", "crl_format_version", "vocab_size",
                          "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size", "max_position_embeddings",
                          "rope_theta", "rms_norm_eps", "tie_word_embeddings", "image_size",
                          "patch_size", "torch_dtype"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char want[96];
        snprintf(want, sizeof want, "missing key '%s'", keys[i]);
        expect_load_failure(small_config(1, 0, 4), delete_key, keys[i], want, "config.json");
    }
}

Test(checkpoint, bad_config_values_are_named)
{
    const char *heads[2] = {"num_attention_heads", "5"};
    expect_load_failure(small_config(1, 0, 4), set_number, heads, "config.json: invalid model configuration",
                        "n_heads");
    const char *neg[2] = {"hidden_size", "-3"};
    expect_load_failure(small_config(1, 0, 4), set_number, neg, "key 'hidden_size' must be an integer", NULL);
    const char *frac[2] = {"vocab_size", "300.5"};
    expect_load_failure(small_config(1, 0, 4), set_number, frac, "key 'vocab_size' must be an integer", NULL);
    const char *eps[2] = {"rms_norm_eps", "0"};
    expect_load_failure(small_config(1, 0, 4), set_number, eps, "key 'rms_norm_eps' must be a positive", NULL);
    const char *tie[2] = {"tie_word_embeddings", "1"};
    expect_load_failure(small_config(1, 0, 4), set_number, tie,
                        "key 'tie_word_embeddings' must be true or false", NULL);
    const char *ver[2] = {"crl_format_version", "2"};
    expect_load_failure(small_config(1, 0, 4), set_number, ver, "'crl_format_version' is 2", NULL);
}

Test(checkpoint, missing_files_are_reported)
{
    char dir[256], path[512], err[512];
    make_tmpdir(dir, sizeof dir);
    cr_assert_null(ckpt_load_model(dir, 0, err, sizeof err));
    cr_assert(strstr(err, "config.json: cannot open"), "got '%s'", err);
    model_t *m = random_model(small_config(1, 0, 4), 6);
    cr_assert_eq(ckpt_save_model(m, dir, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    cr_assert_eq(unlink(path), 0);
    cr_assert_null(ckpt_load_model(dir, 0, err, sizeof err));
    cr_assert(strstr(err, "model.safetensors: cannot open"), "got '%s'", err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    fputs("{\"model_type\": \"crl_llava\",", fp);
    fclose(fp);
    cr_assert_null(ckpt_load_model(dir, 0, err, sizeof err));
    cr_assert(strstr(err, "config.json: not valid JSON"), "got '%s'", err);
    model_destroy(&m);
    rm_tree(dir);
}

Test(checkpoint, optimizer_round_trip_and_mismatch)
{
    char dir[256], path[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    model_t *m = random_model(small_config(0, 8, 2), 7);
    size_t n = m->n_params;
    float *am = calloc(n, sizeof *am), *av = calloc(n, sizeof *av);
    float *bm = calloc(n, sizeof *bm), *bv = calloc(n, sizeof *bv);
    rng_t r;
    rng_seed(&r, 8);
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *t = &m->tensors[i];
        for (size_t k = 0; k < t->numel; k++) {
            am[t->offset + k] = rng_normal(&r);
            av[t->offset + k] = rng_uniform(&r);
        }
    }
    cr_assert_eq(ckpt_save_optimizer(m, am, av, 1234, path, err, sizeof err), 0, "%s", err);
    long step = -1;
    cr_assert_eq(ckpt_load_optimizer(m, bm, bv, &step, path, err, sizeof err), 0, "%s", err);
    cr_assert_eq(step, 1234);
    cr_assert_eq(memcmp(am, bm, n * sizeof *am), 0, "exp_avg differs after reload");
    cr_assert_eq(memcmp(av, bv, n * sizeof *av), 0, "exp_avg_sq differs after reload");

    st_file_t *f = st_open(path, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_not_null(st_find(f, "exp_avg.model.embed_tokens.weight"));
    cr_assert_not_null(st_find(f, "exp_avg_sq.mm_projector.2.bias"));
    cr_assert_eq(st_n_tensors(f), 2 * m->n_tensors);
    st_close(&f);

    /* A model of another shape refuses this state, naming a tensor. */
    model_t *other = random_model(small_config(0, 8, 4), 9);
    float *om = calloc(other->n_params, sizeof *om), *ov = calloc(other->n_params, sizeof *ov);
    int rc = ckpt_load_optimizer(other, om, ov, &step, path, err, sizeof err);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err, "'exp_avg.model.layers.0.self_attn.k_proj.weight'") &&
                  strstr(err, "expected [32, 32]"), "got '%s'", err);
    /* A tied model: lm_head moments are extra. */
    model_t *tied = random_model(small_config(1, 8, 2), 10);
    rc = ckpt_load_optimizer(tied, om, ov, &step, path, err, sizeof err);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err, "unexpected tensor 'exp_avg.lm_head.weight'"), "got '%s'", err);
    /* A model file is not an optimizer file. */
    cr_assert_eq(ckpt_save_model(m, dir, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rc = ckpt_load_optimizer(m, bm, bv, &step, path, err, sizeof err);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err, "metadata 'format' is \"pt\", expected \"crl-adamw\""), "got '%s'", err);

    free(am);
    free(av);
    free(bm);
    free(bv);
    free(om);
    free(ov);
    model_destroy(&other);
    model_destroy(&tied);
    model_destroy(&m);
    rm_tree(dir);
}

Test(checkpoint, write_file_atomic_and_mkdirs)
{
    char dir[256], sub[512], path[600], err[512];
    make_tmpdir(dir, sizeof dir);
    snprintf(sub, sizeof sub, "%s/a/b/c", dir);
    cr_assert_eq(ckpt_mkdirs(sub, err, sizeof err), 0, "%s", err);
    cr_assert_eq(ckpt_mkdirs(sub, err, sizeof err), 0, "second mkdirs: %s", err);
    snprintf(path, sizeof path, "%s/trainer.json", sub);
    cr_assert_eq(ckpt_write_file_atomic(path, "{\"step\": 3}\n", 12, err, sizeof err), 0, "%s", err);
    FILE *fp = fopen(path, "rb");
    char buf[64] = "";
    cr_assert_eq(fread(buf, 1, sizeof buf, fp), 12);
    fclose(fp);
    cr_assert_str_eq(buf, "{\"step\": 3}\n");
    cr_assert_lt(ckpt_mkdirs(path, err, sizeof err), 0, "mkdirs over a file succeeded");
    cr_assert(strstr(err, "not a folder"), "got '%s'", err);
    rm_tree(dir);
}
