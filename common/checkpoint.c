/* checkpoint: see checkpoint.h. config.json uses the Hugging Face Llama key
 * names so that other tools can read the sizes; crl_format_version is the
 * format marker of the crl-specific parts (image_size, patch_size, the
 * mm_projector tensors). */
#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

#define CKPT_MAX_CONFIG ((size_t)1 << 20)

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int ckpt_mkdirs(const char *dir, char *err, size_t errlen)
{
    if (!dir || !dir[0]) {
        set_err(err, errlen, "ckpt_mkdirs: empty path");
        return -EINVAL;
    }
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) {
        set_err(err, errlen, "%s: out of memory", dir);
        return -ENOMEM;
    }
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int e = errno;
            set_err(err, errlen, "%s: cannot create folder: %s", p, strerror(e));
            free(p);
            return -e;
        }
        p[i] = c;
    }
    struct stat sb;
    int rc = 0;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        set_err(err, errlen, "%s: exists and is not a folder", dir);
        rc = -ENOTDIR;
    }
    free(p);
    return rc;
}

int ckpt_write_file_atomic(const char *path, const void *data, size_t len, char *err,
                           size_t errlen)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    int rc = 0, fd = -1;
    if (!tmp) {
        set_err(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = -errno;
            set_err(err, errlen, "%s: write failed: %s", tmp, strerror(errno));
            goto done;
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
        goto done;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: rename failed: %s", path, strerror(errno));
        goto done;
    }
    char *copy = strdup(path);
    if (copy) {
        int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd); /* best effort: makes the rename durable where supported */
            close(dfd);
        }
        free(copy);
    }
done:
    if (fd >= 0)
        close(fd);
    if (rc != 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

/* Shortest decimal that reads back as the same float, so config.json both
 * looks like "1e-05" and round-trips bit for bit. */
static void format_float(float v, char *buf, size_t cap)
{
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, cap, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v)
            return;
    }
}

static cJSON *add_raw_float(cJSON *obj, const char *key, float v)
{
    char buf[64];
    format_float(v, buf, sizeof buf);
    return cJSON_AddRawToObject(obj, key, buf);
}

static char *config_to_json(const model_config_t *c)
{
    cJSON *o = cJSON_CreateObject();
    char *out = NULL;
    if (!o)
        return NULL;
    cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
    cJSON *a0 = cJSON_CreateString(CKPT_ARCHITECTURE);
    if (!arch || !a0 || !cJSON_AddItemToArray(arch, a0)) {
        cJSON_Delete(a0);
        goto done;
    }
    if (!cJSON_AddStringToObject(o, "model_type", CKPT_MODEL_TYPE) ||
        !cJSON_AddNumberToObject(o, "crl_format_version", CKPT_FORMAT_VERSION) ||
        !cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size) ||
        !cJSON_AddNumberToObject(o, "hidden_size", c->dim) ||
        !cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers) ||
        !cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads) ||
        !cJSON_AddNumberToObject(o, "num_key_value_heads", c->n_kv_heads) ||
        !cJSON_AddNumberToObject(o, "intermediate_size", c->hidden_dim) ||
        !cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_seq_len) ||
        !add_raw_float(o, "rope_theta", c->rope_theta) ||
        !add_raw_float(o, "rms_norm_eps", c->norm_eps) ||
        !cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_embeddings) ||
        !cJSON_AddNumberToObject(o, "image_size", c->image_size) ||
        !cJSON_AddNumberToObject(o, "patch_size", c->patch_size) ||
        /* Informative for other tools; crl's architecture fixes them. */
        !cJSON_AddStringToObject(o, "hidden_act", "silu") ||
        !cJSON_AddStringToObject(o, "mm_projector_type", "mlp2x_gelu") ||
        !cJSON_AddNumberToObject(o, "pad_token_id", 0) ||
        !cJSON_AddNumberToObject(o, "bos_token_id", 1) ||
        !cJSON_AddNumberToObject(o, "eos_token_id", 2) ||
        !cJSON_AddStringToObject(o, "torch_dtype", "float32"))
        goto done;
    out = cJSON_Print(o);
done:
    cJSON_Delete(o);
    return out;
}

char *ckpt_config_to_json_text(const model_config_t *cfg)
{
    char *json = config_to_json(cfg);
    if (!json)
        return NULL;
    size_t n = strlen(json);
    char *withnl = realloc(json, n + 2);
    if (!withnl) {
        free(json);
        return NULL;
    }
    withnl[n] = '\n';
    withnl[n + 1] = '\0';
    return withnl;
}

int ckpt_write_config(const char *path, const model_config_t *cfg, char *err, size_t errlen)
{
    char *text = ckpt_config_to_json_text(cfg);
    if (!text) {
        set_err(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    int rc = ckpt_write_file_atomic(path, text, strlen(text), err, errlen);
    free(text);
    return rc;
}

static int get_int(const cJSON *root, const char *key, int min, int *out, const char *path,
                   char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        set_err(err, errlen, "%s: missing key '%s'", path, key);
        return -EINVAL;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= min && d <= INT_MAX) || floor(d) != d) {
        set_err(err, errlen, "%s: key '%s' must be an integer >= %d", path, key, min);
        return -EINVAL;
    }
    *out = (int)d;
    return 0;
}

static int get_float(const cJSON *root, const char *key, float *out, const char *path, char *err,
                     size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        set_err(err, errlen, "%s: missing key '%s'", path, key);
        return -EINVAL;
    }
    float f = cJSON_IsNumber(v) ? (float)v->valuedouble : NAN;
    if (!isfinite(f) || !(f > 0)) {
        set_err(err, errlen, "%s: key '%s' must be a positive finite number", path, key);
        return -EINVAL;
    }
    *out = f;
    return 0;
}

static int expect_string(const cJSON *root, const char *key, const char *want, int required,
                         const char *path, char *err, size_t errlen)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v && !required)
        return 0;
    if (!v) {
        set_err(err, errlen, "%s: missing key '%s'", path, key);
        return -EINVAL;
    }
    if (!cJSON_IsString(v) || strcmp(v->valuestring, want) != 0) {
        set_err(err, errlen, "%s: key '%s' must be \"%s\"%s%.40s%s", path, key, want,
                cJSON_IsString(v) ? " (got \"" : "", cJSON_IsString(v) ? v->valuestring : "",
                cJSON_IsString(v) ? "\")" : "");
        return -EINVAL;
    }
    return 0;
}

/* The config.json reader shared by files and in-memory text (the Welcome's
 * model_config_json); path names the source in every message. */
static int parse_config_text(const char *buf, size_t n, const char *path, model_config_t *cfg,
                             char *err, size_t errlen)
{
    cJSON *root = NULL;
    int rc = -EINVAL;
    model_config_t c;
    memset(&c, 0, sizeof c);

    if (n > CKPT_MAX_CONFIG) {
        set_err(err, errlen, "%s: larger than %zu bytes", path, CKPT_MAX_CONFIG);
        return -EINVAL;
    }
    root = cJSON_ParseWithLength(buf, n);
    if (!root || !cJSON_IsObject(root)) {
        set_err(err, errlen, "%s: not valid JSON (expected an object)", path);
        goto done;
    }
    if (expect_string(root, "model_type", CKPT_MODEL_TYPE, 1, path, err, errlen) != 0)
        goto done;
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (!arch) {
        set_err(err, errlen, "%s: missing key 'architectures'", path);
        goto done;
    }
    if (!cJSON_IsArray(arch) || cJSON_GetArraySize(arch) != 1 || !cJSON_IsString(arch->child) ||
        strcmp(arch->child->valuestring, CKPT_ARCHITECTURE) != 0) {
        set_err(err, errlen, "%s: key 'architectures' must be [\"%s\"]", path, CKPT_ARCHITECTURE);
        goto done;
    }
    int version;
    if (get_int(root, "crl_format_version", 0, &version, path, err, errlen) != 0)
        goto done;
    if (version != CKPT_FORMAT_VERSION) {
        set_err(err, errlen, "%s: key 'crl_format_version' is %d; this build reads version %d", path,
                version, CKPT_FORMAT_VERSION);
        goto done;
    }
    if (expect_string(root, "torch_dtype", "float32", 1, path, err, errlen) != 0 ||
        expect_string(root, "hidden_act", "silu", 0, path, err, errlen) != 0 ||
        expect_string(root, "mm_projector_type", "mlp2x_gelu", 0, path, err, errlen) != 0)
        goto done;
    if (get_int(root, "vocab_size", 1, &c.vocab_size, path, err, errlen) != 0 ||
        get_int(root, "hidden_size", 1, &c.dim, path, err, errlen) != 0 ||
        get_int(root, "num_hidden_layers", 1, &c.n_layers, path, err, errlen) != 0 ||
        get_int(root, "num_attention_heads", 1, &c.n_heads, path, err, errlen) != 0 ||
        get_int(root, "num_key_value_heads", 1, &c.n_kv_heads, path, err, errlen) != 0 ||
        get_int(root, "intermediate_size", 1, &c.hidden_dim, path, err, errlen) != 0 ||
        get_int(root, "max_position_embeddings", 1, &c.max_seq_len, path, err, errlen) != 0 ||
        get_float(root, "rope_theta", &c.rope_theta, path, err, errlen) != 0 ||
        get_float(root, "rms_norm_eps", &c.norm_eps, path, err, errlen) != 0 ||
        get_int(root, "image_size", 0, &c.image_size, path, err, errlen) != 0 ||
        get_int(root, "patch_size", 0, &c.patch_size, path, err, errlen) != 0)
        goto done;
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    if (!tie) {
        set_err(err, errlen, "%s: missing key 'tie_word_embeddings'", path);
        goto done;
    }
    if (!cJSON_IsBool(tie)) {
        set_err(err, errlen, "%s: key 'tie_word_embeddings' must be true or false", path);
        goto done;
    }
    c.tie_embeddings = cJSON_IsTrue(tie) ? 1 : 0;
    char verr[256];
    if (model_config_validate(&c, verr, sizeof verr) != 0) {
        set_err(err, errlen, "%s: invalid model configuration: %s", path, verr);
        goto done;
    }
    *cfg = c;
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}

int ckpt_read_config(const char *path, model_config_t *cfg, char *err, size_t errlen)
{
    FILE *fp = NULL;
    char *buf = NULL;
    int rc = -EINVAL;

    fp = fopen(path, "rb");
    if (!fp) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return rc;
    }
    buf = malloc(CKPT_MAX_CONFIG + 1);
    if (!buf) {
        set_err(err, errlen, "%s: out of memory", path);
        rc = -ENOMEM;
        goto done;
    }
    size_t n = fread(buf, 1, CKPT_MAX_CONFIG + 1, fp);
    if (ferror(fp) || n > CKPT_MAX_CONFIG) {
        set_err(err, errlen, "%s: read error or larger than %zu bytes", path, CKPT_MAX_CONFIG);
        goto done;
    }
    rc = parse_config_text(buf, n, path, cfg, err, errlen);
done:
    free(buf);
    if (fp)
        fclose(fp);
    return rc;
}

int ckpt_config_from_json(const char *json, model_config_t *cfg, char *err, size_t errlen)
{
    if (!json || !cfg) {
        set_err(err, errlen, "model_config_json: missing");
        return -EINVAL;
    }
    return parse_config_text(json, strlen(json), "model_config_json", cfg, err, errlen);
}

static int join(char *out, size_t cap, const char *dir, const char *file, char *err, size_t errlen)
{
    int n = snprintf(out, cap, "%s/%s", dir, file);
    if (n < 0 || (size_t)n >= cap) {
        set_err(err, errlen, "%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    return 0;
}

/* Tensor list of m over base (params or a moment buffer), names prefixed. */
static st_tensor_t *tensor_list(const model_t *m, const float *base, const char *prefix,
                                char (*names)[128])
{
    st_tensor_t *t = calloc((size_t)m->n_tensors + 1, sizeof *t);
    if (!t)
        return NULL;
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *ti = &m->tensors[i];
        snprintf(names[i], 128, "%s%s", prefix, ti->name);
        t[i].name = names[i];
        t[i].ndim = ti->ndim;
        for (int d = 0; d < ti->ndim && d < 4; d++)
            t[i].shape[d] = ti->shape[d];
        t[i].data = base + ti->offset;
    }
    return t;
}

int ckpt_save_model(const model_t *m, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    char (*names)[128] = NULL;
    st_tensor_t *t = NULL;
    int rc;
    if (!m || !dir) {
        set_err(err, errlen, "ckpt_save_model: bad arguments");
        return -EINVAL;
    }
    if ((rc = ckpt_mkdirs(dir, err, errlen)) != 0)
        return rc;
    names = calloc((size_t)m->n_tensors + 1, sizeof *names);
    t = names ? tensor_list(m, m->params, "", names) : NULL;
    if (!t) {
        set_err(err, errlen, "%s: out of memory", dir);
        rc = -ENOMEM;
        goto done;
    }
    /* "format": "pt" is what Hugging Face loaders look for. */
    const char *meta[] = {"format", "pt", "crl_format_version", "1"};
    if ((rc = join(path, sizeof path, dir, "model.safetensors", err, errlen)) != 0 ||
        (rc = st_write(path, t, m->n_tensors, meta, 2, err, errlen)) != 0)
        goto done;
    if ((rc = join(path, sizeof path, dir, "config.json", err, errlen)) != 0 ||
        (rc = ckpt_write_config(path, &m->cfg, err, errlen)) != 0)
        goto done;
done:
    free(t);
    free(names);
    return rc;
}

/* Loads every tensor of m from f into base (prefixed names), then refuses
 * tensors in f that m does not have. */
static int load_tensors(const model_t *m, st_file_t *f, float *base, const char *prefix,
                        const char *path, const char *hint, char *err, size_t errlen)
{
    char name[128], msg[512];
    size_t plen = strlen(prefix);
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor_info_t *ti = &m->tensors[i];
        snprintf(name, sizeof name, "%s%s", prefix, ti->name);
        int rc = st_read_into(f, name, ti->ndim, ti->shape, base + ti->offset, msg, sizeof msg);
        if (rc != 0) {
            set_err(err, errlen, "%s%s", msg, rc == -EIO ? "" : hint);
            return rc;
        }
    }
    for (int i = 0; i < st_n_tensors(f); i++) {
        const char *n = st_tensor(f, i)->name;
        if (strncmp(n, prefix, plen) != 0 || !model_find_tensor(m, n + plen)) {
            set_err(err, errlen, "%s: unexpected tensor '%s'%s", path, n, hint);
            return -EINVAL;
        }
    }
    return 0;
}

model_t *ckpt_load_model(const char *dir, int with_grads, char *err, size_t errlen)
{
    char path[4096];
    model_config_t cfg;
    model_t *m = NULL;
    st_file_t *f = NULL;
    if (!dir) {
        set_err(err, errlen, "ckpt_load_model: NULL folder");
        return NULL;
    }
    if (join(path, sizeof path, dir, "config.json", err, errlen) != 0 ||
        ckpt_read_config(path, &cfg, err, errlen) != 0)
        return NULL;
    m = model_new(&cfg, with_grads);
    if (!m) {
        set_err(err, errlen, "%s: cannot allocate the model (out of memory?)", path);
        return NULL;
    }
    if (join(path, sizeof path, dir, "model.safetensors", err, errlen) != 0)
        goto fail;
    f = st_open(path, err, errlen);
    if (!f)
        goto fail;
    const char *ver = st_metadata_get(f, "crl_format_version");
    if (ver && strcmp(ver, "1") != 0) {
        set_err(err, errlen, "%s: crl_format_version %.20s; this build reads 1", path, ver);
        goto fail;
    }
    if (load_tensors(m, f, m->params, "", path, " (config.json and model.safetensors disagree)",
                     err, errlen) != 0)
        goto fail;
    st_close(&f);
    return m;
fail:
    st_close(&f);
    model_destroy(&m);
    return NULL;
}

int ckpt_save_optimizer(const model_t *m, const float *adam_m, const float *adam_v, long step,
                        const char *path, char *err, size_t errlen)
{
    char (*names)[128] = NULL;
    st_tensor_t *t = NULL, *tv = NULL, *all = NULL;
    int rc = -ENOMEM;
    if (!m || !adam_m || !adam_v || !path || step < 0) {
        set_err(err, errlen, "ckpt_save_optimizer: bad arguments");
        return -EINVAL;
    }
    int n = m->n_tensors;
    names = calloc(2 * (size_t)n + 1, sizeof *names);
    all = calloc(2 * (size_t)n + 1, sizeof *all);
    if (!names || !all || !(t = tensor_list(m, adam_m, "exp_avg.", names)) ||
        !(tv = tensor_list(m, adam_v, "exp_avg_sq.", names + n))) {
        set_err(err, errlen, "%s: out of memory", path);
        goto done;
    }
    memcpy(all, t, (size_t)n * sizeof *all);
    memcpy(all + n, tv, (size_t)n * sizeof *all);
    char steps[32], ver[16];
    snprintf(steps, sizeof steps, "%ld", step);
    snprintf(ver, sizeof ver, "%d", CKPT_OPTIM_VERSION);
    const char *meta[] = {"format", CKPT_OPTIM_FORMAT, "version", ver, "step", steps};
    rc = st_write(path, all, 2 * n, meta, 3, err, errlen);
done:
    free(t);
    free(tv);
    free(all);
    free(names);
    return rc;
}

int ckpt_load_optimizer(const model_t *m, float *adam_m, float *adam_v, long *step,
                        const char *path, char *err, size_t errlen)
{
    char msg[512];
    int rc = -EINVAL;
    if (!m || !adam_m || !adam_v || !step || !path) {
        set_err(err, errlen, "ckpt_load_optimizer: bad arguments");
        return -EINVAL;
    }
    st_file_t *f = st_open(path, err, errlen);
    if (!f)
        return -EINVAL;
    const char *fmt = st_metadata_get(f, "format");
    const char *ver = st_metadata_get(f, "version");
    const char *st = st_metadata_get(f, "step");
    if (!fmt || strcmp(fmt, CKPT_OPTIM_FORMAT) != 0) {
        set_err(err, errlen, "%s: metadata 'format' is %s%.40s%s, expected \"%s\"", path,
                fmt ? "\"" : "", fmt ? fmt : "missing", fmt ? "\"" : "", CKPT_OPTIM_FORMAT);
        goto done;
    }
    if (!ver || strcmp(ver, "1") != 0) {
        set_err(err, errlen, "%s: metadata 'version' is %.20s; this build reads %d", path,
                ver ? ver : "missing", CKPT_OPTIM_VERSION);
        goto done;
    }
    char *end = NULL;
    errno = 0;
    long s = st ? strtol(st, &end, 10) : -1;
    if (!st || errno != 0 || end == st || *end != '\0' || s < 0) {
        set_err(err, errlen, "%s: metadata 'step' missing or not a non-negative integer", path);
        goto done;
    }
    /* Check every name and shape before touching the caller's buffers. */
    char name[128];
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < m->n_tensors; i++) {
            const tensor_info_t *ti = &m->tensors[i];
            snprintf(name, sizeof name, "%s%s", k ? "exp_avg_sq." : "exp_avg.", ti->name);
            const st_info_t *si = st_find(f, name);
            int same = si && si->ndim == ti->ndim;
            for (int d = 0; same && d < ti->ndim; d++)
                same = si->shape[d] == ti->shape[d];
            if (!same) {
                /* st_read_into formats the precise message (missing / both shapes). */
                st_read_into(f, name, ti->ndim, ti->shape, NULL, msg, sizeof msg);
                set_err(err, errlen, "%s (optimizer state does not match the model)", msg);
                goto done;
            }
        }
    if (st_n_tensors(f) != 2 * m->n_tensors) {
        for (int i = 0; i < st_n_tensors(f); i++) {
            const char *n = st_tensor(f, i)->name;
            const char *base = strncmp(n, "exp_avg_sq.", 11) == 0 ? n + 11
                               : strncmp(n, "exp_avg.", 8) == 0  ? n + 8
                                                                 : NULL;
            if (!base || !model_find_tensor(m, base)) {
                set_err(err, errlen, "%s: unexpected tensor '%s' (optimizer state does not match the model)",
                        path, n);
                goto done;
            }
        }
    }
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < m->n_tensors; i++) {
            const tensor_info_t *ti = &m->tensors[i];
            snprintf(name, sizeof name, "%s%s", k ? "exp_avg_sq." : "exp_avg.", ti->name);
            float *dst = (k ? adam_v : adam_m) + ti->offset;
            if ((rc = st_read_into(f, name, ti->ndim, ti->shape, dst, err, errlen)) != 0)
                goto done;
        }
    *step = s;
    rc = 0;
done:
    st_close(&f);
    return rc;
}
