/* fuzz_safetensors: st_open on arbitrary bytes, then st_read_into of every
 * tensor the header lists. Properties: no crash / leak / UB; a refusal
 * names the file; names are unique (st_find finds each tensor itself);
 * every listed tensor reads back with its own shape, and the floats read
 * are exactly the input's bytes at 8 + header length + begin; a wrong
 * expected shape is refused (-EINVAL) and a missing name is -ENOENT. */
#include <limits.h>
#include <string.h>

#include "fuzz_util.h"
#include "safetensors.h"

static fuzz_file_t g_file;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    fuzz_file_init(&g_file, "fuzz.safetensors");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    fuzz_file_set(&g_file, data, size);
    err[0] = '\0';
    st_file_t *f = st_open(g_file.path, err, sizeof err);
    if (!f) {
        FUZZ_CHECK(strncmp(err, g_file.path, strlen(g_file.path)) == 0,
                   "st_open error does not name the file: '%s'", err);
        return 0;
    }
    FUZZ_CHECK(size >= 8, "opened a %zu-byte file", size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | data[i];
    FUZZ_CHECK(hlen <= size - 8, "header length %llu past the end", (unsigned long long)hlen);
    const uint8_t *section = data + 8 + hlen;
    uint64_t covered = 0;

    int n = st_n_tensors(f);
    FUZZ_CHECK(n >= 0, "n %d", n);
    FUZZ_CHECK(st_tensor(f, n) == NULL && st_tensor(f, -1) == NULL, "st_tensor out of range");
    for (int i = 0; i < n; i++) {
        const st_info_t *t = st_tensor(f, i);
        FUZZ_CHECK(t && t->name, "tensor %d missing", i);
        FUZZ_CHECK(st_find(f, t->name) == t, "tensor '%s' is not unique", t->name);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "ndim %d", t->ndim);
        FUZZ_CHECK(t->end >= t->begin && t->end - t->begin == t->numel * 4,
                   "tensor '%s': offsets do not match numel", t->name);
        FUZZ_CHECK(t->end <= size - 8 - hlen, "tensor '%s' ends past the file", t->name);
        covered += t->end - t->begin;

        int shape[ST_MAX_DIMS];
        int fits = 1;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || t->shape[d] > INT_MAX)
                fits = 0;
            shape[d] = fits ? (int)t->shape[d] : 0;
        }
        size_t bytes = (size_t)(t->end - t->begin);
        float *dst = malloc(bytes ? bytes : 1);
        FUZZ_CHECK(dst != NULL, "out of memory for %zu bytes", bytes);
        if (fits) {
            int rc = st_read_into(f, t->name, t->ndim, shape, dst, err, sizeof err);
            FUZZ_CHECK(rc == 0, "reading listed tensor '%s' failed: %s", t->name, err);
            FUZZ_CHECK(bytes == 0 || memcmp(dst, section + t->begin, bytes) == 0,
                       "tensor '%s': bytes read differ from the file", t->name);
        }
        /* One more dimension than listed: must be refused, never read. */
        if (t->ndim < ST_MAX_DIMS) {
            shape[t->ndim] = 1;
            int rc = st_read_into(f, t->name, t->ndim + 1, shape, dst, err, sizeof err);
            FUZZ_CHECK(rc == -EINVAL, "wrong shape for '%s' gave %d", t->name, rc);
        }
        free(dst);
    }
    FUZZ_CHECK(covered == size - 8 - hlen, "tensors cover %llu of %llu data bytes",
               (unsigned long long)covered, (unsigned long long)(size - 8 - hlen));
    float one;
    int rc = st_read_into(f, "\x01no such tensor", 0, NULL, &one, err, sizeof err);
    FUZZ_CHECK(rc == -ENOENT || st_find(f, "\x01no such tensor"), "missing tensor gave %d", rc);
    (void)st_metadata_get(f, "format");
    st_close(&f);
    FUZZ_CHECK(f == NULL, "st_close left the pointer");
    return 0;
}
