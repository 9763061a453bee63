#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rng.h"
#include "safetensors.h"

static void make_tmpdir(char *dir, size_t cap)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(dir, cap, "%s/st.XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp(%s) failed", dir);
}

static void rm_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

/* Writes an 8-byte LE header length, the header text and n data bytes. */
static void write_raw(const char *path, uint64_t hlen_field, const char *header,
                      const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(hlen_field >> (8 * i));
    cr_assert_eq(fwrite(len, 1, 8, fp), 8);
    size_t hl = strlen(header);
    cr_assert_eq(fwrite(header, 1, hl, fp), hl);
    if (n)
        cr_assert_eq(fwrite(data, 1, n, fp), n);
    cr_assert_eq(fclose(fp), 0);
}

/* Expects st_open(header + n zero data bytes) to fail with want in the message. */
static void expect_reject(const char *dir, const char *header, size_t n, const char *want)
{
    char path[512], err[512] = "";
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    char *data = calloc(n + 1, 1);
    write_raw(path, strlen(header), header, data, n);
    free(data);
    st_file_t *f = st_open(path, err, sizeof err);
    cr_assert_null(f, "header %s was accepted", header);
    cr_assert(strstr(err, want), "header %s: expected an error containing '%s', got '%s'",
              header, want, err);
}

/* Three tensors of different ranks filled with normals, plus a scalar. */
typedef struct {
    float a[2 * 3 * 4], b[5], c[7 * 2], s[1];
    st_tensor_t t[4];
} fixture_t;

static void fixture_init(fixture_t *fx, uint64_t seed)
{
    rng_t r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < 24; i++)
        fx->a[i] = rng_normal(&r);
    for (size_t i = 0; i < 5; i++)
        fx->b[i] = rng_normal(&r);
    for (size_t i = 0; i < 14; i++)
        fx->c[i] = rng_normal(&r);
    fx->s[0] = -0.0f;
    fx->t[0] = (st_tensor_t){.name = "model.layers.0.self_attn.q_proj.weight", .ndim = 3,
                             .shape = {2, 3, 4}, .data = fx->a};
    fx->t[1] = (st_tensor_t){.name = "model.norm.weight", .ndim = 1, .shape = {5}, .data = fx->b};
    fx->t[2] = (st_tensor_t){.name = "lm_head.weight", .ndim = 2, .shape = {7, 2}, .data = fx->c};
    fx->t[3] = (st_tensor_t){.name = "scalar", .ndim = 0, .data = fx->s};
}

Test(safetensors, round_trip_bit_exact_with_metadata)
{
    char dir[256], path[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    fixture_t fx;
    fixture_init(&fx, 1);
    const char *meta[] = {"format", "pt", "step", "123", "quote\"key", "va\\lue\n"};
    int rc = st_write(path, fx.t, 4, meta, 3, err, sizeof err);
    cr_assert_eq(rc, 0, "st_write: %s", err);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0, "temporary file %s left behind", tmp);

    st_file_t *f = st_open(path, err, sizeof err);
    cr_assert_not_null(f, "st_open: %s", err);
    cr_assert_eq(st_n_tensors(f), 4);
    cr_assert_str_eq(st_metadata_get(f, "format"), "pt");
    cr_assert_str_eq(st_metadata_get(f, "step"), "123");
    cr_assert_str_eq(st_metadata_get(f, "quote\"key"), "va\\lue\n");
    cr_assert_null(st_metadata_get(f, "absent"));
    const st_info_t *ia = st_find(f, "model.layers.0.self_attn.q_proj.weight");
    cr_assert_not_null(ia);
    cr_assert_eq(ia->ndim, 3);
    cr_assert(ia->shape[0] == 2 && ia->shape[1] == 3 && ia->shape[2] == 4);
    cr_assert_eq(ia->numel, 24);
    cr_assert_null(st_find(f, "nope"));

    for (int i = 0; i < 4; i++) {
        const st_tensor_t *t = &fx.t[i];
        size_t n = 1;
        for (int d = 0; d < t->ndim; d++)
            n *= (size_t)t->shape[d];
        float got[32];
        rc = st_read_into(f, t->name, t->ndim, t->shape, got, err, sizeof err);
        cr_assert_eq(rc, 0, "read %s: %s", t->name, err);
        cr_assert_eq(memcmp(got, t->data, n * sizeof(float)), 0, "tensor %s differs", t->name);
    }
    st_close(&f);
    cr_assert_null(f);
    st_close(&f); /* no-op on NULL */
    rm_tree(dir);
}

Test(safetensors, empty_file_and_zero_size_tensor)
{
    char dir[256], path[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/e.safetensors", dir);
    cr_assert_eq(st_write(path, NULL, 0, NULL, 0, err, sizeof err), 0, "%s", err);
    st_file_t *f = st_open(path, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    cr_assert_eq(st_n_tensors(f), 0);
    st_close(&f);

    float one = 3.5f;
    st_tensor_t t[2] = {{.name = "empty", .ndim = 2, .shape = {0, 4}, .data = NULL},
                        {.name = "one", .ndim = 1, .shape = {1}, .data = &one}};
    cr_assert_eq(st_write(path, t, 2, NULL, 0, err, sizeof err), 0, "%s", err);
    f = st_open(path, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    float got = 0;
    cr_assert_eq(st_read_into(f, "one", 1, (int[]){1}, &got, err, sizeof err), 0, "%s", err);
    cr_assert_eq(got, 3.5f);
    cr_assert_eq(st_read_into(f, "empty", 2, (int[]){0, 4}, &got, err, sizeof err), 0, "%s", err);
    st_close(&f);
    rm_tree(dir);
}

Test(safetensors, write_rejects_duplicate_and_bad_names)
{
    char dir[256], path[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/d.safetensors", dir);
    float v[2] = {1, 2};
    st_tensor_t t[2] = {{.name = "w", .ndim = 1, .shape = {2}, .data = v},
                        {.name = "w", .ndim = 1, .shape = {2}, .data = v}};
    cr_assert_eq(st_write(path, t, 2, NULL, 0, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "duplicate tensor name 'w'"), "got '%s'", err);
    t[1].name = "__metadata__";
    cr_assert_eq(st_write(path, t, 2, NULL, 0, err, sizeof err), -EINVAL);
    cr_assert(strstr(err, "invalid name"), "got '%s'", err);
    cr_assert_neq(access(path, F_OK), 0, "a failed write left %s", path);
    rm_tree(dir);
}

Test(safetensors, read_into_refuses_missing_and_shape_mismatch)
{
    char dir[256], path[512], err[512] = "";
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    fixture_t fx;
    fixture_init(&fx, 2);
    cr_assert_eq(st_write(path, fx.t, 3, NULL, 0, err, sizeof err), 0, "%s", err);
    st_file_t *f = st_open(path, err, sizeof err);
    cr_assert_not_null(f, "%s", err);
    float buf[64];
    int rc = st_read_into(f, "model.embed_tokens.weight", 2, (int[]){7, 2}, buf, err, sizeof err);
    cr_assert_eq(rc, -ENOENT);
    cr_assert(strstr(err, "'model.embed_tokens.weight' is missing"), "got '%s'", err);
    rc = st_read_into(f, "lm_head.weight", 2, (int[]){2, 7}, buf, err, sizeof err);
    cr_assert_eq(rc, -EINVAL);
    cr_assert(strstr(err, "'lm_head.weight'") && strstr(err, "[7, 2]") && strstr(err, "[2, 7]"),
              "expected the tensor and both shapes, got '%s'", err);
    rc = st_read_into(f, "model.norm.weight", 2, (int[]){5, 1}, buf, err, sizeof err);
    cr_assert_eq(rc, -EINVAL);
    cr_assert(strstr(err, "[5]") && strstr(err, "[5, 1]"), "got '%s'", err);
    st_close(&f);
    rm_tree(dir);
}

Test(safetensors, truncated_file_rejected_at_every_cut)
{
    char dir[256], path[512], cut[512], err[512];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    snprintf(cut, sizeof cut, "%s/cut.safetensors", dir);
    fixture_t fx;
    fixture_init(&fx, 3);
    cr_assert_eq(st_write(path, fx.t, 4, NULL, 0, err, sizeof err), 0, "%s", err);
    FILE *fp = fopen(path, "rb");
    cr_assert_not_null(fp);
    static unsigned char buf[4096];
    size_t size = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    cr_assert(size > 8 + hlen + 8, "unexpected file size %zu", size);
    size_t cuts[] = {0, 1, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 3,
                     8 + hlen + 50, size - 4, size - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        FILE *o = fopen(cut, "wb");
        cr_assert_not_null(o);
        cr_assert_eq(fwrite(buf, 1, cuts[k], o), cuts[k]);
        fclose(o);
        err[0] = '\0';
        st_file_t *f = st_open(cut, err, sizeof err);
        cr_assert_null(f, "file cut at %zu of %zu bytes was accepted", cuts[k], size);
        cr_assert(strstr(err, "truncated"), "cut at %zu: expected a truncation hint, got '%s'",
                  cuts[k], err);
    }
    rm_tree(dir);
}

Test(safetensors, header_length_larger_than_file)
{
    char dir[256], path[512], err[512];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/h.safetensors", dir);
    write_raw(path, 1000000, "{}", NULL, 0);
    cr_assert_null(st_open(path, err, sizeof err));
    cr_assert(strstr(err, "header length 1000000 larger than the file"), "got '%s'", err);
    write_raw(path, UINT64_MAX, "{}", NULL, 0);
    cr_assert_null(st_open(path, err, sizeof err));
    cr_assert(strstr(err, "larger than the file"), "got '%s'", err);
    cr_assert_null(st_open("/nonexistent/dir/x.safetensors", err, sizeof err));
    cr_assert(strstr(err, "cannot open"), "got '%s'", err);
    rm_tree(dir);
}

Test(safetensors, malformed_headers_rejected_with_specific_messages)
{
    char dir[256];
    make_tmpdir(dir, sizeof dir);
    expect_reject(dir, "{\"a\": {\"dtype\":", 0, "not valid JSON");
    expect_reject(dir, "[1, 2]", 0, "top level is not an object");
    expect_reject(dir, "{} xx", 0, "trailing garbage");
    expect_reject(dir, "{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'w' has dtype F16; only F32");
    expect_reject(dir, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
                  "dtype BF16");
    expect_reject(dir, "{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w': missing or non-string dtype");
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "'w': missing or non-array shape");
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8,
                  "shape entry 0 is not a non-negative integer");
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
                  "shape entry 0");
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8,
                  "'w': data_offsets must be [begin, end]");
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                  "end before begin");
    /* shape/size mismatch */
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  "tensor 'w': shape [3] needs 12 bytes but data_offsets [0, 8] span 8");
    /* out-of-range offsets */
    expect_reject(dir, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
                  "tensor 'w': data_offsets [0, 16] out of range: data section has 8 bytes");
    /* overlap */
    expect_reject(dir,
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                  24, "tensors 'a' and 'b' overlap");
    /* gap, and trailing bytes nobody owns */
    expect_reject(dir,
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                  24, "gap in the data section before tensor 'b'");
    expect_reject(dir, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
                  "data section size mismatch: 12 bytes in the file, tensors cover 8");
    expect_reject(dir,
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                  16, "tensor 'a' appears twice");
    expect_reject(dir,
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                  "\"data_offsets\":[0,8]}}", 8, "absurdly large");
    expect_reject(dir, "{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value for 'k' is not a string");
    expect_reject(dir, "{\"w\":[1,2]}", 0, "tensor 'w': entry is not an object");
    rm_tree(dir);
}

/* An independent reader: /usr/bin/python3 with json + struct only. Prints
 * "name dims bits_of_first bits_of_last" per tensor, sorted by name. */
static const char *py_reader =
    "import json,struct,sys\n"
    "b=open(sys.argv[1],'rb').read()\n"
    "n=struct.unpack('<Q',b[:8])[0]\n"
    "h=json.loads(b[8:8+n].decode('utf-8'))\n"
    "d=b[8+n:]\n"
    "print('meta', h.get('__metadata__',{}).get('format'))\n"
    "for k in sorted(x for x in h if x!='__metadata__'):\n"
    "  t=h[k]; s,e=t['data_offsets']\n"
    "  assert t['dtype']=='F32'\n"
    "  f=struct.unpack('<%dI'%((e-s)//4), d[s:e])\n"
    "  print(k, 'x'.join(map(str,t['shape'])) or '-', '%08x'%f[0], '%08x'%f[-1])\n";

Test(safetensors, readable_by_python_json_struct)
{
    if (access("/usr/bin/python3", X_OK) != 0) {
        cr_skip_test("/usr/bin/python3 not available");
    }
    char dir[256], path[512], script[512], err[512];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    snprintf(script, sizeof script, "%s/read.py", dir);
    fixture_t fx;
    fixture_init(&fx, 4);
    const char *meta[] = {"format", "pt"};
    cr_assert_eq(st_write(path, fx.t, 4, meta, 1, err, sizeof err), 0, "%s", err);
    FILE *sp = fopen(script, "w");
    cr_assert_not_null(sp);
    fputs(py_reader, sp);
    fclose(sp);

    char cmd[1200];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char out[2048] = "";
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    int status = pclose(p);
    cr_assert_eq(status, 0, "python reader failed (status %d), output: %s", status, out);

    /* Expected lines in name order: lm_head, model.layers..., model.norm, scalar. */
    const int order[4] = {2, 0, 1, 3};
    const char *dims[4] = {"2x3x4", "5", "7x2", "-"};
    char want[2048];
    size_t pos = (size_t)snprintf(want, sizeof want, "meta pt\n");
    for (int k = 0; k < 4; k++) {
        const st_tensor_t *t = &fx.t[order[k]];
        size_t n = 1;
        for (int d = 0; d < t->ndim; d++)
            n *= (size_t)t->shape[d];
        uint32_t first, last;
        memcpy(&first, &t->data[0], 4);
        memcpy(&last, &t->data[n - 1], 4);
        pos += (size_t)snprintf(want + pos, sizeof want - pos, "%s %s %08x %08x\n", t->name,
                                dims[order[k]], first, last);
    }
    cr_assert_str_eq(out, want, "python saw:\n%s\nexpected:\n%s", out, want);
    rm_tree(dir);
}
