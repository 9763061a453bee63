/* safetensors: see safetensors.h. Format reference:
 * https://github.com/huggingface/safetensors (8-byte LE header size, JSON
 * header with dtype/shape/data_offsets per tensor and optional __metadata__,
 * then a byte buffer fully covered by the tensors, without holes). */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c writes host floats as little-endian F32; port needed for big-endian hosts"
#endif

struct st_file {
    char *path;
    int fd;
    uint64_t data_start; /* absolute file offset of the data section */
    uint64_t data_size;
    int n;
    st_info_t *info;     /* (n) in header order */
    char **names;        /* (n) owned strings */
    int n_meta;
    char **meta;         /* (2*n_meta) key, value, ... */
};

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

char *st_shape_str(int ndim, const int *shape, char *buf, size_t cap)
{
    size_t pos = 0;
    if (cap == 0)
        return buf;
    buf[0] = '\0';
    pos += (size_t)snprintf(buf + pos, cap - pos, "[");
    for (int i = 0; i < ndim && pos < cap; i++)
        pos += (size_t)snprintf(buf + pos, cap - pos, "%s%d", i ? ", " : "", shape[i]);
    if (pos < cap)
        snprintf(buf + pos, cap - pos, "]");
    return buf;
}

static char *shape64_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t pos = 0;
    buf[0] = '\0';
    pos += (size_t)snprintf(buf + pos, cap - pos, "[");
    for (int i = 0; i < ndim && pos < cap; i++)
        pos += (size_t)snprintf(buf + pos, cap - pos, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (pos < cap)
        snprintf(buf + pos, cap - pos, "]");
    return buf;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -EIO; /* file shrank under us */
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* fsync the folder holding path so that the rename itself is durable. */
static void fsync_parent(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        (void)fsync(dfd); /* best effort: some filesystems refuse fsync on folders */
        close(dfd);
    }
    free(copy);
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int st_write(const char *path, const st_tensor_t *tensors, int n,
             const char *const *meta, int n_meta, char *err, size_t errlen)
{
    int rc = -EINVAL, fd = -1;
    cJSON *root = NULL;
    char *json = NULL, *header = NULL, *tmp = NULL;
    const char **sorted = NULL;

    if (!path || n < 0 || (n > 0 && !tensors) || n_meta < 0 || (n_meta > 0 && !meta)) {
        set_err(err, errlen, "st_write: bad arguments");
        return -EINVAL;
    }
    root = cJSON_CreateObject();
    if (!root)
        goto oom;
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        if (!m)
            goto oom;
        for (int i = 0; i < n_meta; i++) {
            if (!meta[2 * i] || !meta[2 * i + 1]) {
                set_err(err, errlen, "%s: metadata entry %d is NULL", path, i);
                goto fail;
            }
            if (!cJSON_AddStringToObject(m, meta[2 * i], meta[2 * i + 1]))
                goto oom;
        }
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const st_tensor_t *t = &tensors[i];
        if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0) {
            set_err(err, errlen, "%s: tensor %d has an invalid name", path, i);
            goto fail;
        }
        if (t->ndim < 0 || t->ndim > ST_MAX_DIMS) {
            set_err(err, errlen, "%s: tensor '%s' has ndim %d (max %d)", path, t->name,
                    t->ndim, ST_MAX_DIMS);
            goto fail;
        }
        uint64_t numel = 1;
        int overflow = 0;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) {
                set_err(err, errlen, "%s: tensor '%s' has negative dimension %d", path,
                        t->name, t->shape[d]);
                goto fail;
            }
            if (__builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
                overflow = 1;
        }
        if (overflow || numel > (UINT64_C(1) << 50) || (numel > 0 && !t->data)) {
            set_err(err, errlen, "%s: tensor '%s' is too large or has no data", path, t->name);
            goto fail;
        }
        cJSON *o = cJSON_AddObjectToObject(root, t->name);
        cJSON *shape = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
        cJSON *offs = o ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
        if (!o || !shape || !offs || !cJSON_AddStringToObject(o, "dtype", "F32"))
            goto oom;
        for (int d = 0; d < t->ndim; d++) {
            cJSON *v = cJSON_CreateNumber(t->shape[d]);
            if (!v || !cJSON_AddItemToArray(shape, v))
                goto oom;
        }
        cJSON *b = cJSON_CreateNumber((double)off);
        if (!b || !cJSON_AddItemToArray(offs, b))
            goto oom;
        off += numel * 4;
        cJSON *e = cJSON_CreateNumber((double)off);
        if (!e || !cJSON_AddItemToArray(offs, e))
            goto oom;
    }
    /* Distinct names: a reader keyed by name would silently drop one. */
    if (n > 1) {
        sorted = malloc((size_t)n * sizeof *sorted);
        if (!sorted)
            goto oom;
        for (int i = 0; i < n; i++)
            sorted[i] = tensors[i].name;
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_strp);
        for (int i = 1; i < n; i++)
            if (strcmp(sorted[i - 1], sorted[i]) == 0) {
                set_err(err, errlen, "%s: duplicate tensor name '%s'", path, sorted[i]);
                goto fail;
            }
    }
    json = cJSON_PrintUnformatted(root);
    if (!json)
        goto oom;
    size_t jlen = strlen(json);
    size_t hlen = (jlen + 7) / 8 * 8; /* pad with spaces so the data is 8-byte aligned */
    header = malloc(8 + hlen);
    if (!header)
        goto oom;
    for (int i = 0; i < 8; i++)
        header[i] = (char)(((uint64_t)hlen >> (8 * i)) & 0xff);
    memcpy(header + 8, json, jlen);
    memset(header + 8 + jlen, ' ', hlen - jlen);

    size_t plen = strlen(path);
    tmp = malloc(plen + 5);
    if (!tmp)
        goto oom;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        goto fail;
    }
    if ((rc = write_all(fd, header, 8 + hlen)) < 0)
        goto io_fail;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++)
            numel *= (size_t)tensors[i].shape[d];
        if (numel && (rc = write_all(fd, tensors[i].data, numel * sizeof(float))) < 0)
            goto io_fail;
    }
    if (fsync(fd) != 0) {
        rc = -errno;
        goto io_fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        goto io_fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: rename from %s failed: %s", path, tmp, strerror(errno));
        unlink(tmp);
        goto fail;
    }
    fsync_parent(path);
    rc = 0;
    goto done;

io_fail:
    set_err(err, errlen, "%s: write failed: %s", tmp, strerror(-rc));
    if (fd >= 0)
        close(fd);
    fd = -1;
    unlink(tmp);
    goto done;
oom:
    rc = -ENOMEM;
    set_err(err, errlen, "%s: out of memory", path);
fail:
done:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    free(header);
    free(json);
    free(sorted);
    cJSON_Delete(root);
    return rc;
}

void st_close(st_file_t **pf)
{
    if (!pf || !*pf)
        return;
    st_file_t *f = *pf;
    if (f->fd >= 0)
        close(f->fd);
    if (f->names)
        for (int i = 0; i < f->n; i++)
            free(f->names[i]);
    if (f->meta)
        for (int i = 0; i < 2 * f->n_meta; i++)
            free(f->meta[i]);
    free(f->names);
    free(f->meta);
    free(f->info);
    free(f->path);
    free(f);
    *pf = NULL;
}

/* A JSON number that is a non-negative integer representable exactly. */
static int json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

static int cmp_by_offset(const void *a, const void *b, void *ctx)
{
    const st_info_t *info = ctx;
    const st_info_t *x = &info[*(const int *)a], *y = &info[*(const int *)b];
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_name_idx(const void *a, const void *b, void *ctx)
{
    char **names = ctx;
    return strcmp(names[*(const int *)a], names[*(const int *)b]);
}

st_file_t *st_open(const char *path, char *err, size_t errlen)
{
    st_file_t *f = NULL;
    char *hbuf = NULL;
    cJSON *root = NULL;
    int *order = NULL;
    char s1[160];

    f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) {
        set_err(err, errlen, "%s: fstat failed: %s", path, strerror(errno));
        goto fail;
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    if (fsize < 8) {
        set_err(err, errlen, "%s: file is %" PRIu64 " bytes, too short for the 8-byte header length (truncated?)",
                path, fsize);
        goto fail;
    }
    unsigned char lenbuf[8];
    if (pread_all(f->fd, lenbuf, 8, 0) != 0) {
        set_err(err, errlen, "%s: cannot read the header length", path);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | lenbuf[i];
    if (hlen > fsize - 8) {
        set_err(err, errlen, "%s: header length %" PRIu64 " larger than the file allows (%" PRIu64
                " bytes after the length field; truncated, or not a safetensors file?)", path, hlen, fsize - 8);
        goto fail;
    }
    if (hlen > ST_MAX_HEADER) {
        set_err(err, errlen, "%s: header length %" PRIu64 " exceeds the %" PRIu64 "-byte limit",
                path, hlen, ST_MAX_HEADER);
        goto fail;
    }
    if (hlen < 2) {
        set_err(err, errlen, "%s: header length %" PRIu64 " is too small for a JSON object", path, hlen);
        goto fail;
    }
    hbuf = malloc(hlen + 1);
    if (!hbuf) {
        set_err(err, errlen, "%s: out of memory for a %" PRIu64 "-byte header", path, hlen);
        goto fail;
    }
    if (pread_all(f->fd, hbuf, hlen, 8) != 0) {
        set_err(err, errlen, "%s: cannot read the %" PRIu64 "-byte header", path, hlen);
        goto fail;
    }
    hbuf[hlen] = '\0';
    f->data_start = 8 + hlen;
    f->data_size = fsize - 8 - hlen;

    const char *endp = NULL;
    root = cJSON_ParseWithLengthOpts(hbuf, hlen, &endp, 0);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr(); /* global in cJSON: only trust it if it points into our buffer */
        if (ep >= hbuf && ep <= hbuf + hlen)
            set_err(err, errlen, "%s: header is not valid JSON (error near byte %td of %" PRIu64 ")",
                    path, ep - hbuf, hlen);
        else
            set_err(err, errlen, "%s: header is not valid JSON", path);
        goto fail;
    }
    /* Trailing bytes after the JSON object may only be padding spaces. */
    for (const char *p = endp; p && p < hbuf + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            set_err(err, errlen, "%s: header is not valid JSON (trailing garbage at byte %td)",
                    path, p - hbuf);
            goto fail;
        }
    if (!cJSON_IsObject(root)) {
        set_err(err, errlen, "%s: header is not valid JSON: top level is not an object", path);
        goto fail;
    }
    int count = 0, n_meta_obj = 0;
    for (cJSON *c = root->child; c; c = c->next) {
        if (c->string && strcmp(c->string, "__metadata__") == 0)
            n_meta_obj++;
        else
            count++;
    }
    if (n_meta_obj > 1) {
        set_err(err, errlen, "%s: header has %d __metadata__ entries", path, n_meta_obj);
        goto fail;
    }
    f->info = calloc((size_t)count + 1, sizeof *f->info);
    f->names = calloc((size_t)count + 1, sizeof *f->names);
    order = malloc(((size_t)count + 1) * sizeof *order);
    if (!f->info || !f->names || !order) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    for (cJSON *c = root->child; c; c = c->next) {
        if (!c->string) {
            set_err(err, errlen, "%s: header entry without a name", path);
            goto fail;
        }
        if (strcmp(c->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(c)) {
                set_err(err, errlen, "%s: __metadata__ is not an object", path);
                goto fail;
            }
            int nm = cJSON_GetArraySize(c);
            f->meta = calloc(2 * (size_t)nm + 1, sizeof *f->meta);
            if (!f->meta) {
                set_err(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            for (cJSON *m = c->child; m; m = m->next) {
                if (!cJSON_IsString(m) || !m->string) {
                    set_err(err, errlen, "%s: __metadata__ value for '%s' is not a string", path,
                            m->string ? m->string : "?");
                    goto fail;
                }
                f->meta[2 * f->n_meta] = strdup(m->string);
                f->meta[2 * f->n_meta + 1] = strdup(m->valuestring);
                f->n_meta++;
                if (!f->meta[2 * f->n_meta - 2] || !f->meta[2 * f->n_meta - 1]) {
                    set_err(err, errlen, "%s: out of memory", path);
                    goto fail;
                }
            }
            continue;
        }
        const char *name = c->string;
        int i = f->n;
        f->names[i] = strdup(name);
        if (!f->names[i]) {
            set_err(err, errlen, "%s: out of memory", path);
            goto fail;
        }
        f->n++;
        st_info_t *t = &f->info[i];
        t->name = f->names[i];
        if (!cJSON_IsObject(c)) {
            set_err(err, errlen, "%s: tensor '%s': entry is not an object", path, name);
            goto fail;
        }
        cJSON *dtype = cJSON_GetObjectItemCaseSensitive(c, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(c, "shape");
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(c, "data_offsets");
        if (!cJSON_IsString(dtype)) {
            set_err(err, errlen, "%s: tensor '%s': missing or non-string dtype", path, name);
            goto fail;
        }
        if (strcmp(dtype->valuestring, "F32") != 0) {
            set_err(err, errlen, "%s: tensor '%s' has dtype %.16s; only F32 is supported", path,
                    name, dtype->valuestring);
            goto fail;
        }
        if (!cJSON_IsArray(shape)) {
            set_err(err, errlen, "%s: tensor '%s': missing or non-array shape", path, name);
            goto fail;
        }
        int nd = cJSON_GetArraySize(shape);
        if (nd > ST_MAX_DIMS) {
            set_err(err, errlen, "%s: tensor '%s' has %d dimensions (max %d)", path, name, nd,
                    ST_MAX_DIMS);
            goto fail;
        }
        t->ndim = nd;
        uint64_t numel = 1;
        int d = 0, overflow = 0;
        for (cJSON *s = shape->child; s; s = s->next, d++) {
            uint64_t v;
            if (json_u64(s, &v) != 0) {
                set_err(err, errlen, "%s: tensor '%s': shape entry %d is not a non-negative integer",
                        path, name, d);
                goto fail;
            }
            t->shape[d] = (int64_t)v;
            if (__builtin_mul_overflow(numel, v, &numel))
                overflow = 1;
        }
        if (overflow || numel > (UINT64_MAX / 8)) {
            set_err(err, errlen, "%s: tensor '%s': shape %s is absurdly large", path, name,
                    shape64_str(nd, t->shape, s1, sizeof s1));
            goto fail;
        }
        t->numel = numel;
        if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
            json_u64(offs->child, &t->begin) != 0 || json_u64(offs->child->next, &t->end) != 0) {
            set_err(err, errlen, "%s: tensor '%s': data_offsets must be [begin, end] with non-negative integers",
                    path, name);
            goto fail;
        }
        if (t->end < t->begin) {
            set_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before begin",
                    path, name, t->begin, t->end);
            goto fail;
        }
        if (numel * 4 != t->end - t->begin) {
            set_err(err, errlen, "%s: tensor '%s': shape %s needs %" PRIu64 " bytes but data_offsets [%" PRIu64
                    ", %" PRIu64 "] span %" PRIu64 " (shape/size mismatch)", path, name,
                    shape64_str(nd, t->shape, s1, sizeof s1), numel * 4, t->begin, t->end,
                    t->end - t->begin);
            goto fail;
        }
        if (t->end > f->data_size) {
            set_err(err, errlen, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                    "] out of range: data section has %" PRIu64 " bytes (truncated?)", path, name,
                    t->begin, t->end, f->data_size);
            goto fail;
        }
    }
    for (int i = 0; i < f->n; i++)
        order[i] = i;
    /* cJSON keeps duplicate keys as separate entries; a name must be unique. */
    qsort_r(order, (size_t)f->n, sizeof *order, cmp_name_idx, f->names);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->names[order[i - 1]], f->names[order[i]]) == 0) {
            set_err(err, errlen, "%s: tensor '%s' appears twice in the header", path,
                    f->names[order[i]]);
            goto fail;
        }
    /* The buffer must be exactly covered: sorted by offset, each tensor starts
     * where the previous one ended. */
    for (int i = 0; i < f->n; i++)
        order[i] = i;
    qsort_r(order, (size_t)f->n, sizeof *order, cmp_by_offset, f->info);
    uint64_t pos = 0;
    const char *prev = NULL;
    for (int k = 0; k < f->n; k++) {
        const st_info_t *t = &f->info[order[k]];
        if (t->begin < pos) {
            set_err(err, errlen, "%s: tensors '%s' and '%s' overlap (offsets %" PRIu64 " < %" PRIu64 ")",
                    path, prev, t->name, t->begin, pos);
            goto fail;
        }
        if (t->begin > pos) {
            set_err(err, errlen, "%s: gap in the data section before tensor '%s' (bytes %" PRIu64
                    "..%" PRIu64 " unused)", path, t->name, pos, t->begin);
            goto fail;
        }
        pos = t->end;
        prev = t->name;
    }
    if (pos != f->data_size) {
        set_err(err, errlen, "%s: data section size mismatch: %" PRIu64 " bytes in the file, tensors cover %"
                PRIu64, path, f->data_size, pos);
        goto fail;
    }
    free(order);
    free(hbuf);
    cJSON_Delete(root);
    return f;

fail:
    free(order);
    free(hbuf);
    cJSON_Delete(root);
    st_close(&f);
    return NULL;
}

int st_n_tensors(const st_file_t *f)
{
    return f ? f->n : 0;
}

const st_info_t *st_tensor(const st_file_t *f, int i)
{
    if (!f || i < 0 || i >= f->n)
        return NULL;
    return &f->info[i];
}

const st_info_t *st_find(const st_file_t *f, const char *name)
{
    if (!f || !name)
        return NULL;
    /* Linear: checkpoints hold a few hundred tensors, looked up once each
     * per load; not worth an index. */
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->names[i], name) == 0)
            return &f->info[i];
    return NULL;
}

const char *st_metadata_get(const st_file_t *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0)
            return f->meta[2 * i + 1];
    return NULL;
}

int st_read_into(st_file_t *f, const char *name, int ndim, const int *shape,
                 float *dst, char *err, size_t errlen)
{
    char s1[160], s2[160];
    if (!f || !name || ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape)) {
        set_err(err, errlen, "st_read_into: bad arguments");
        return -EINVAL;
    }
    const st_info_t *t = st_find(f, name);
    if (!t) {
        set_err(err, errlen, "%s: tensor '%s' is missing (expected shape %s)", f->path, name,
                st_shape_str(ndim, shape, s1, sizeof s1));
        return -ENOENT;
    }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == (int64_t)shape[d];
    if (!same) {
        set_err(err, errlen, "%s: tensor '%s' has shape %s in the file, expected %s", f->path,
                name, shape64_str(t->ndim, t->shape, s1, sizeof s1),
                st_shape_str(ndim, shape, s2, sizeof s2));
        return -EINVAL;
    }
    size_t bytes = (size_t)(t->end - t->begin);
    if (bytes == 0)
        return 0;
    int rc = pread_all(f->fd, dst, bytes, f->data_start + t->begin);
    if (rc != 0) {
        set_err(err, errlen, "%s: reading tensor '%s' failed: %s", f->path, name, strerror(-rc));
        return -EIO;
    }
    return 0;
}
