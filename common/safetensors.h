/* safetensors: reads and writes the standard .safetensors container (8-byte
 * little-endian header length, JSON header, raw tensor bytes), F32 only.
 * Writing is atomic (path.tmp, fsync, rename). Opening a file validates the
 * whole header against the file size before any data is read, so a corrupt or
 * truncated file fails with a message naming the problem, never a crash. */
#ifndef CRL_SAFETENSORS_H
#define CRL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
/* Sanity bound on the JSON header (the reference implementation uses 100 MB). */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

/* A tensor to write: float32, row-major, ndim in [0, ST_MAX_DIMS]. */
typedef struct {
    const char *name;
    int ndim;
    int shape[ST_MAX_DIMS];
    const float *data; /* (prod(shape)) */
} st_tensor_t;

/* Writes n tensors (stored in the given order) and n_meta string key/value
 * pairs of metadata (meta[2*i] = key, meta[2*i+1] = value; meta may be NULL
 * when n_meta == 0) to path, atomically. Names must be distinct and not
 * "__metadata__". 0 or negative errno, with a message in err. */
int st_write(const char *path, const st_tensor_t *tensors, int n,
             const char *const *meta, int n_meta, char *err, size_t errlen);

/* One tensor of an opened file, as described by its header. */
typedef struct {
    const char *name;  /* owned by the st_file_t */
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end; /* byte offsets relative to the data section */
} st_info_t;

typedef struct st_file st_file_t; /* opaque: open file + parsed header */

/* Opens path and validates the header fully: header length vs file size,
 * JSON syntax, dtype F32, shape product * 4 == end - begin, offsets inside
 * the data section, no overlap, no gap, data section size. NULL on error
 * with a message (naming the file and the tensor) in err. */
st_file_t *st_open(const char *path, char *err, size_t errlen);
void st_close(st_file_t **f);

int st_n_tensors(const st_file_t *f);
/* i-th tensor in header order, NULL when out of range. */
const st_info_t *st_tensor(const st_file_t *f, int i);
/* NULL when absent. */
const st_info_t *st_find(const st_file_t *f, const char *name);
/* Value of a __metadata__ key, owned by f; NULL when absent. */
const char *st_metadata_get(const st_file_t *f, const char *key);

/* Reads tensor name into dst (prod(shape) floats) after checking that it
 * exists and has exactly the expected shape; otherwise -ENOENT / -EINVAL
 * with a message naming the tensor and both shapes. -EIO on a read error. */
int st_read_into(st_file_t *f, const char *name, int ndim, const int *shape,
                 float *dst, char *err, size_t errlen);

/* Formats a shape as "[2, 3]" into buf; returns buf. */
char *st_shape_str(int ndim, const int *shape, char *buf, size_t cap);

#endif
