#include "traj_log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"

static const uint8_t k_magic[8] = { 'C', 'R', 'L', 'T', 'R', 'A', 'J', '\0' };
#define MAX_HEADER_BYTES 4096u
#define DEFAULT_MAX_FILE_BYTES ((uint64_t)64 << 20)

/* ---------------------------------------------------------------- helpers */

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen,
                                                          const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t now_ms(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static char *file_path(const char *dir, uint32_t index)
{
    size_t n = strlen(dir) + 32;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/traj-%06" PRIu32 ".log", dir, index);
    return p;
}

/* Reads exactly len bytes at off; -EIO on a short read (the file shrank). */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* Writes all of iov at off, continuing after short writes. */
static int pwritev_full(int fd, struct iovec *iov, int cnt, uint64_t off)
{
    while (cnt > 0) {
        ssize_t n = pwritev(fd, iov, cnt, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (uint64_t)n;
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

static int grow(uint8_t **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return 0;
    size_t n = *cap ? *cap : 4096;
    while (n < need)
        n *= 2;
    uint8_t *p = realloc(*buf, n);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

/* Parses "traj-<6+ digits>.log"; 1 and *index on a match. */
static int parse_name(const char *name, uint32_t *index)
{
    if (strncmp(name, "traj-", 5) != 0)
        return 0;
    const char *p = name + 5;
    size_t digits = 0;
    uint64_t v = 0;
    while (p[digits] >= '0' && p[digits] <= '9') {
        v = v * 10 + (uint64_t)(p[digits] - '0');
        if (v > UINT32_MAX)
            return 0;
        digits++;
    }
    if (digits < 6 || strcmp(p + digits, ".log") != 0)
        return 0;
    *index = (uint32_t)v;
    return 1;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Lists the log files of dir, sorted; they must be numbered without gaps
 * (the first may be > 0: old files may have been pruned). *out is
 * malloc'd (NULL when there are none). */
static int list_files(const char *dir, uint32_t **out, size_t *n_out, char *err, size_t errlen)
{
    uint32_t *idx = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    DIR *d = opendir(dir);
    *out = NULL;
    *n_out = 0;
    if (!d) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot open log folder: %s", dir, strerror(-rc));
        return rc;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint32_t i;
        if (!parse_name(e->d_name, &i))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            uint32_t *p = realloc(idx, nc * sizeof *p);
            if (!p) {
                rc = -ENOMEM;
                set_err(err, errlen, "%s: out of memory listing files", dir);
                goto fail;
            }
            idx = p;
            cap = nc;
        }
        idx[n++] = i;
    }
    if (n > 1) /* qsort(NULL, 0) is undefined */
        qsort(idx, n, sizeof *idx, cmp_u32);
    for (size_t k = 1; k < n; k++) {
        if (idx[k] == idx[k - 1]) {
            rc = -EBADMSG;
            set_err(err, errlen, "%s: two files are numbered %" PRIu32 " (e.g. traj-%" PRIu32 ".log and traj-%06" PRIu32 ".log)",
                    dir, idx[k], idx[k], idx[k]);
            goto fail;
        }
        if (idx[k] != idx[k - 1] + 1) {
            rc = -EBADMSG;
            set_err(err, errlen, "%s: traj-%06" PRIu32 ".log is missing (found %" PRIu32 " then %" PRIu32 "); a log must be numbered without gaps",
                    dir, idx[k - 1] + 1, idx[k - 1], idx[k]);
            goto fail;
        }
    }
    closedir(d);
    *out = idx;
    *n_out = n;
    return 0;
fail:
    closedir(d);
    free(idx);
    return rc;
}

/* ---------------------------------------------------------------- headers */

static void header_encode(uint8_t h[TRAJ_LOG_HEADER_BYTES], uint32_t index)
{
    memset(h, 0, TRAJ_LOG_HEADER_BYTES);
    memcpy(h, k_magic, 8);
    put_le32(h + 8, TRAJ_LOG_FORMAT_VERSION);
    put_le32(h + 12, TRAJ_LOG_HEADER_BYTES);
    put_le64(h + 16, now_ms(CLOCK_REALTIME));
    put_le32(h + 24, index);
    put_le32(h + 28, crc32c(h, 28));
}

/* Checks a file's header. 1: valid, *hsize = where records start, *index
 * from the header. 0: the file is empty or its header is torn (only
 * allowed when is_last: the writer crashed while creating it). Negative:
 * error described in err. */
static int header_check(int fd, uint64_t size, const char *path, int is_last, int check_index,
                        uint32_t want_index, uint32_t *hsize, uint32_t *index, char *err,
                        size_t errlen)
{
    uint8_t h[TRAJ_LOG_HEADER_BYTES];
    size_t n = size < sizeof h ? (size_t)size : sizeof h;
    int rc;
    if (n > 0 && (rc = pread_full(fd, h, n, 0)) < 0) {
        set_err(err, errlen, "%s: cannot read header: %s", path, strerror(-rc));
        return rc;
    }
    size_t m = n < 8 ? n : 8;
    if (memcmp(h, k_magic, m) != 0) {
        set_err(err, errlen, "%s: not a crl trajectory log (bad magic, expected \"CRLTRAJ\")", path);
        return -EINVAL;
    }
    if (size < TRAJ_LOG_HEADER_BYTES) {
        if (is_last)
            return 0;
        set_err(err, errlen, "%s: truncated header (%" PRIu64 " of %u bytes) in a file that is not the last",
                path, size, TRAJ_LOG_HEADER_BYTES);
        return -EBADMSG;
    }
    uint32_t version = get_le32(h + 8);
    if (version != TRAJ_LOG_FORMAT_VERSION) {
        set_err(err, errlen, "%s: trajectory log format version %" PRIu32 ", this build reads version %u",
                path, version, TRAJ_LOG_FORMAT_VERSION);
        return -EPROTONOSUPPORT;
    }
    uint32_t crc = crc32c(h, 28);
    if (get_le32(h + 28) != crc) {
        set_err(err, errlen, "%s: header checksum mismatch (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 ")",
                path, get_le32(h + 28), crc);
        return -EBADMSG;
    }
    uint32_t hs = get_le32(h + 12);
    if (hs < TRAJ_LOG_HEADER_BYTES || hs > MAX_HEADER_BYTES || hs > size) {
        set_err(err, errlen, "%s: impossible header size %" PRIu32, path, hs);
        return -EBADMSG;
    }
    uint32_t idx = get_le32(h + 24);
    if (check_index && idx != want_index) {
        set_err(err, errlen, "%s: header says file index %" PRIu32 " but the name says %" PRIu32,
                path, idx, want_index);
        return -EBADMSG;
    }
    *hsize = hs;
    *index = idx;
    return 1;
}

/* ---------------------------------------------------------------- records */

/* Checks the record at off. 1: valid, payload in *buf, length in *len.
 * 0: not a valid record, reason in why. Negative: I/O error. */
static int record_at(int fd, uint64_t size, uint64_t off, uint8_t **buf, size_t *cap,
                     uint32_t *len, char *why, size_t whylen)
{
    uint8_t h[TRAJ_LOG_RECORD_OVERHEAD];
    int rc;
    if (size - off < TRAJ_LOG_RECORD_OVERHEAD) {
        set_err(why, whylen, "truncated record header (%" PRIu64 " bytes left)", size - off);
        return 0;
    }
    if ((rc = pread_full(fd, h, sizeof h, off)) < 0)
        return rc;
    uint32_t n = get_le32(h), want = get_le32(h + 4);
    /* Zero-length records are never written: zero-filled tails (a crash
     * on some filesystems) must not parse as valid empty records. */
    if (n == 0 || n > TRAJ_LOG_MAX_RECORD) {
        set_err(why, whylen, "impossible record length %" PRIu32, n);
        return 0;
    }
    if (n > size - off - TRAJ_LOG_RECORD_OVERHEAD) {
        set_err(why, whylen, "record length %" PRIu32 " runs past the end of the file (%" PRIu64 " bytes left)",
                n, size - off - TRAJ_LOG_RECORD_OVERHEAD);
        return 0;
    }
    if ((rc = grow(buf, cap, n)) < 0)
        return rc;
    if ((rc = pread_full(fd, *buf, n, off + TRAJ_LOG_RECORD_OVERHEAD)) < 0)
        return rc;
    uint32_t got = crc32c(*buf, n);
    if (got != want) {
        set_err(why, whylen, "crc32c mismatch (stored 0x%08" PRIx32 ", computed 0x%08" PRIx32 ", length %" PRIu32 ")",
                want, got, n);
        return 0;
    }
    *len = n;
    return 1;
}

/* First offset q in [from, size) where a valid record starts; size when
 * there is none. Only used after corruption, so it simply loads the rest
 * of the file. */
static int find_next_record(int fd, uint64_t size, uint64_t from, uint64_t *q)
{
    *q = size;
    if (from >= size || size - from < TRAJ_LOG_RECORD_OVERHEAD + 1)
        return 0;
    uint64_t span = size - from;
    if (span > SIZE_MAX)
        return -EFBIG;
    uint8_t *b = malloc((size_t)span);
    if (!b)
        return -ENOMEM;
    int rc = pread_full(fd, b, (size_t)span, from);
    if (rc < 0)
        goto out;
    for (uint64_t p = 0; p + TRAJ_LOG_RECORD_OVERHEAD < span; p++) {
        uint32_t n = get_le32(b + p);
        if (n == 0 || n > TRAJ_LOG_MAX_RECORD || n > span - p - TRAJ_LOG_RECORD_OVERHEAD)
            continue;
        if (crc32c(b + p + TRAJ_LOG_RECORD_OVERHEAD, n) == get_le32(b + p + 4)) {
            *q = from + p;
            break;
        }
    }
out:
    free(b);
    return rc;
}

/* ---------------------------------------------------------------- writer */

struct traj_log {
    char *dir;
    int dir_fd;              /* holds the flock that keeps other writers out */
    int fd;                  /* current file */
    uint32_t file_index;
    uint64_t offset;         /* size of the current file = where the next record goes */
    traj_log_options_t opt;
    uint64_t last_sync_ms;   /* CLOCK_MONOTONIC */
    int dirty;               /* appended since the last fdatasync */
    int broken;
};

void traj_log_options_default(traj_log_options_t *opt)
{
    memset(opt, 0, sizeof *opt);
    opt->max_file_bytes = DEFAULT_MAX_FILE_BYTES;
    opt->fsync_policy = TRAJ_FSYNC_EVERY_RECORD;
    opt->fsync_interval_ms = 1000;
}

static int mkdir_p(const char *dir)
{
    char *p = strdup(dir);
    int rc = 0;
    if (!p)
        return -ENOMEM;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -errno;
            goto out;
        }
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        rc = -errno;
out:
    free(p);
    return rc;
}

/* Creates file `index` with its header (O_EXCL: never clobbers a file)
 * and, unless fsync is off, makes it and its folder entry durable. */
static int create_file(traj_log_t *log, uint32_t index, int *fd_out)
{
    char *path = file_path(log->dir, index);
    uint8_t h[TRAJ_LOG_HEADER_BYTES];
    struct iovec iov = { h, sizeof h };
    int rc = 0, fd = -1;
    if (!path)
        return -ENOMEM;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        log_error("traj_log: cannot create %s: %s", path, strerror(-rc));
        goto fail;
    }
    header_encode(h, index);
    if ((rc = pwritev_full(fd, &iov, 1, 0)) < 0) {
        log_error("traj_log: cannot write the header of %s: %s", path, strerror(-rc));
        goto fail;
    }
    if (log->opt.fsync_policy != TRAJ_FSYNC_NEVER) {
        if (fdatasync(fd) != 0 || fsync(log->dir_fd) != 0) {
            rc = -errno;
            log_error("traj_log: cannot sync new file %s: %s", path, strerror(-rc));
            goto fail;
        }
    }
    free(path);
    *fd_out = fd;
    return 0;
fail:
    if (fd >= 0) {
        close(fd);
        unlink(path); /* it is ours (O_EXCL) and incomplete */
    }
    free(path);
    return rc;
}

/* Opens the last file for appending after recovering its tail. */
static int recover_last(traj_log_t *log, uint32_t index, char *err, size_t errlen)
{
    char *path = file_path(log->dir, index);
    uint8_t *buf = NULL;
    size_t cap = 0;
    int fd = -1, rc;
    struct stat st;
    char why[160];
    if (!path) {
        rc = -ENOMEM;
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(-rc));
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    uint32_t hsize = 0, hidx = 0;
    rc = header_check(fd, size, path, 1, 1, index, &hsize, &hidx, err, errlen);
    if (rc < 0)
        goto fail;
    if (rc == 0) { /* empty or torn header: the crash hit file creation */
        uint8_t h[TRAJ_LOG_HEADER_BYTES];
        struct iovec iov = { h, sizeof h };
        header_encode(h, index);
        if (ftruncate(fd, 0) != 0 || (rc = pwritev_full(fd, &iov, 1, 0)) < 0 ||
            (log->opt.fsync_policy != TRAJ_FSYNC_NEVER && fdatasync(fd) != 0)) {
            rc = rc < 0 ? rc : -errno;
            set_err(err, errlen, "%s: cannot rewrite its torn header: %s", path, strerror(-rc));
            goto fail;
        }
        if (size > 0)
            log_warn("traj_log: %s: rewrote a torn header (%" PRIu64 " bytes)", path, size);
        log->offset = TRAJ_LOG_HEADER_BYTES;
        goto done;
    }
    uint64_t off = hsize;
    while (off < size) {
        uint32_t n = 0;
        rc = record_at(fd, size, off, &buf, &cap, &n, why, sizeof why);
        if (rc < 0) {
            set_err(err, errlen, "%s: read error at offset %" PRIu64 ": %s", path, off, strerror(-rc));
            goto fail;
        }
        if (rc == 0)
            break;
        off += TRAJ_LOG_RECORD_OVERHEAD + n;
    }
    if (off < size) {
        uint64_t q;
        if ((rc = find_next_record(fd, size, off + 1, &q)) < 0) {
            set_err(err, errlen, "%s: cannot scan after offset %" PRIu64 ": %s", path, off,
                    strerror(-rc));
            goto fail;
        }
        if (q < size) {
            rc = -EBADMSG;
            set_err(err, errlen, "%s: corrupt record at offset %" PRIu64 " (%s) followed by a valid record at offset %" PRIu64 "; refusing to append (inspect it with crl-replay verify)",
                    path, off, why, q);
            goto fail;
        }
        if (ftruncate(fd, (off_t)off) != 0 ||
            (log->opt.fsync_policy != TRAJ_FSYNC_NEVER && fdatasync(fd) != 0)) {
            rc = -errno;
            set_err(err, errlen, "%s: cannot cut the torn tail at offset %" PRIu64 ": %s", path,
                    off, strerror(-rc));
            goto fail;
        }
        log_warn("traj_log: %s: cut %" PRIu64 " bytes of a torn last record at offset %" PRIu64 " (%s)",
                 path, size - off, off, why);
    }
    log->offset = off;
done:
    log->fd = fd;
    log->file_index = index;
    free(path);
    free(buf);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(path);
    free(buf);
    return rc;
}

traj_log_t *traj_log_open(const char *dir, const traj_log_options_t *opt, char *err,
                          size_t errlen)
{
    traj_log_t *log = calloc(1, sizeof *log);
    uint32_t *idx = NULL;
    size_t n = 0;
    int rc;
    if (!log) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    log->dir_fd = -1;
    log->fd = -1;
    traj_log_options_default(&log->opt);
    if (opt)
        log->opt = *opt;
    if (log->opt.max_file_bytes == 0)
        log->opt.max_file_bytes = DEFAULT_MAX_FILE_BYTES;
    if (log->opt.fsync_interval_ms == 0)
        log->opt.fsync_interval_ms = 1000;
    if (log->opt.fsync_policy != TRAJ_FSYNC_EVERY_RECORD &&
        log->opt.fsync_policy != TRAJ_FSYNC_INTERVAL && log->opt.fsync_policy != TRAJ_FSYNC_NEVER) {
        set_err(err, errlen, "%s: unknown fsync policy %d", dir, (int)log->opt.fsync_policy);
        goto fail;
    }
    log->dir = strdup(dir);
    if (!log->dir) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if ((rc = mkdir_p(dir)) < 0) {
        set_err(err, errlen, "%s: cannot create the log folder: %s", dir, strerror(-rc));
        goto fail;
    }
    log->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (log->dir_fd < 0) {
        set_err(err, errlen, "%s: cannot open the log folder: %s", dir, strerror(errno));
        goto fail;
    }
    /* Two learners appending to one log would interleave garbage. */
    if (flock(log->dir_fd, LOCK_EX | LOCK_NB) != 0) {
        set_err(err, errlen, "%s: %s", dir,
                errno == EWOULDBLOCK ? "another process is writing this trajectory log"
                                     : strerror(errno));
        goto fail;
    }
    if (list_files(dir, &idx, &n, err, errlen) < 0)
        goto fail;
    if (n == 0) {
        if ((rc = create_file(log, 0, &log->fd)) < 0) {
            set_err(err, errlen, "%s: cannot create traj-000000.log: %s", dir, strerror(-rc));
            goto fail;
        }
        log->file_index = 0;
        log->offset = TRAJ_LOG_HEADER_BYTES;
    } else if (recover_last(log, idx[n - 1], err, errlen) < 0) {
        goto fail;
    }
    free(idx);
    log->last_sync_ms = now_ms(CLOCK_MONOTONIC);
    return log;
fail:
    free(idx);
    traj_log_close(&log);
    return NULL;
}

static int sync_now(traj_log_t *log)
{
    if (fdatasync(log->fd) != 0) {
        int e = errno;
        /* After a failed fsync the kernel may have dropped the dirty
         * pages: what is on disk is unknown, so stop writing. */
        log->broken = 1;
        log_error("traj_log: %s/traj-%06" PRIu32 ".log: fdatasync failed: %s; the log is now read-only",
                  log->dir, log->file_index, strerror(e));
        return -e;
    }
    log->dirty = 0;
    log->last_sync_ms = now_ms(CLOCK_MONOTONIC);
    return 0;
}

static int rotate(traj_log_t *log)
{
    int rc, fd = -1;
    if (log->opt.fsync_policy != TRAJ_FSYNC_NEVER && log->dirty && (rc = sync_now(log)) < 0)
        return rc;
    /* Create the next file before closing this one: if that fails the log
     * still appends where it was. */
    if ((rc = create_file(log, log->file_index + 1, &fd)) < 0)
        return rc;
    close(log->fd);
    log->fd = fd;
    log->file_index++;
    log->offset = TRAJ_LOG_HEADER_BYTES;
    return 0;
}

int traj_log_append(traj_log_t *log, const void *payload, size_t len)
{
    if (!log || (!payload && len))
        return -EINVAL;
    if (log->broken)
        return -EIO;
    if (len == 0 || len > TRAJ_LOG_MAX_RECORD)
        return -EINVAL;
    uint64_t rec = TRAJ_LOG_RECORD_OVERHEAD + (uint64_t)len;
    int rc;
    if (log->offset > TRAJ_LOG_HEADER_BYTES && log->offset + rec > log->opt.max_file_bytes &&
        (rc = rotate(log)) < 0)
        return rc;
    uint8_t h[TRAJ_LOG_RECORD_OVERHEAD];
    put_le32(h, (uint32_t)len);
    put_le32(h + 4, crc32c(payload, len));
    struct iovec iov[2] = { { h, sizeof h }, { (void *)payload, len } };
    if ((rc = pwritev_full(log->fd, iov, 2, log->offset)) < 0) {
        /* Take back whatever part of the record reached the file. */
        if (ftruncate(log->fd, (off_t)log->offset) != 0) {
            log->broken = 1;
            log_error("traj_log: %s/traj-%06" PRIu32 ".log: cannot undo a failed append at offset %" PRIu64 ": %s; the log is now read-only",
                      log->dir, log->file_index, log->offset, strerror(errno));
        }
        log_error("traj_log: %s/traj-%06" PRIu32 ".log: append of %zu bytes failed: %s", log->dir,
                  log->file_index, len, strerror(-rc));
        return rc;
    }
    log->offset += rec;
    log->dirty = 1;
    if (log->opt.fsync_policy == TRAJ_FSYNC_EVERY_RECORD ||
        (log->opt.fsync_policy == TRAJ_FSYNC_INTERVAL &&
         now_ms(CLOCK_MONOTONIC) - log->last_sync_ms >= log->opt.fsync_interval_ms))
        return sync_now(log);
    return 0;
}

int traj_log_sync(traj_log_t *log)
{
    if (!log)
        return -EINVAL;
    if (log->broken)
        return -EIO;
    return log->dirty ? sync_now(log) : 0;
}

void traj_log_position(const traj_log_t *log, uint32_t *file_index, uint64_t *offset)
{
    if (file_index)
        *file_index = log->file_index;
    if (offset)
        *offset = log->offset;
}

int traj_log_close(traj_log_t **logp)
{
    int rc = 0;
    if (!logp || !*logp)
        return 0;
    traj_log_t *log = *logp;
    if (log->fd >= 0) {
        if (!log->broken && log->dirty && log->opt.fsync_policy != TRAJ_FSYNC_NEVER)
            rc = sync_now(log);
        close(log->fd);
    }
    if (log->dir_fd >= 0)
        close(log->dir_fd); /* releases the flock */
    free(log->dir);
    free(log);
    *logp = NULL;
    return rc;
}

/* ---------------------------------------------------------------- reader */

struct traj_log_reader {
    char *path;               /* folder, or the single file */
    int single;               /* path is one file */
    uint32_t *index;          /* file numbers, ascending (folder mode) */
    size_t n_files;
    size_t cur;               /* position in index[] */
    int fd;                   /* open file, -1 between files */
    uint64_t size;            /* its size when opened */
    uint64_t off;             /* next record */
    uint32_t file_index;      /* from its header */
    char *cur_path;
    int skip_corrupt;
    uint8_t *buf;
    size_t cap;
    traj_log_reader_stats_t stats;
    int failed;               /* sticky error */
    char err[512];
};

/* Opens file number k of the reader. 1: ready at its first record; 0:
 * empty or torn header (last file only), nothing to read; negative:
 * error in r->err. */
static int reader_open_file(traj_log_reader_t *r, size_t k)
{
    struct stat st;
    uint32_t hsize = 0, hidx = 0;
    int is_last = k + 1 == r->n_files;
    int rc;
    free(r->cur_path);
    r->cur_path = r->single ? strdup(r->path) : file_path(r->path, r->index[k]);
    if (!r->cur_path) {
        snprintf(r->err, sizeof r->err, "out of memory");
        return -ENOMEM;
    }
    r->fd = open(r->cur_path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0 || fstat(r->fd, &st) != 0) {
        rc = -errno;
        snprintf(r->err, sizeof r->err, "%s: cannot open: %s", r->cur_path, strerror(-rc));
        return rc;
    }
    r->size = (uint64_t)st.st_size;
    rc = header_check(r->fd, r->size, r->cur_path, is_last, !r->single,
                      r->single ? 0 : r->index[k], &hsize, &hidx, r->err, sizeof r->err);
    if (rc <= 0) {
        if (rc == 0)
            r->stats.torn_bytes += r->size;
        close(r->fd);
        r->fd = -1;
        return rc;
    }
    r->off = hsize;
    r->file_index = hidx;
    return 1;
}

traj_log_reader_t *traj_log_reader_open(const char *path, int skip_corrupt, char *err,
                                        size_t errlen)
{
    traj_log_reader_t *r = calloc(1, sizeof *r);
    struct stat st;
    if (!r) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    r->fd = -1;
    r->skip_corrupt = skip_corrupt;
    r->path = strdup(path);
    if (!r->path) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (stat(path, &st) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (S_ISDIR(st.st_mode)) {
        if (list_files(path, &r->index, &r->n_files, err, errlen) < 0)
            goto fail;
    } else {
        r->single = 1;
        r->n_files = 1;
    }
    r->stats.files = (uint32_t)r->n_files;
    /* Check every header now, so that a foreign or too-new file is
     * reported before anything is read. */
    for (size_t k = 0; k < r->n_files; k++) {
        int rc = reader_open_file(r, k);
        if (rc < 0) {
            set_err(err, errlen, "%s", r->err);
            goto fail;
        }
        if (r->fd >= 0) {
            close(r->fd);
            r->fd = -1;
        }
    }
    r->stats.torn_bytes = 0; /* counted again while reading */
    return r;
fail:
    traj_log_reader_close(&r);
    return NULL;
}

static void reader_next_file(traj_log_reader_t *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->cur++;
}

int traj_log_next(traj_log_reader_t *r, const void **payload, size_t *len, uint32_t *file_index,
                  uint64_t *offset)
{
    char why[160];
    int rc;
    if (!r)
        return -EINVAL;
    if (r->failed)
        return r->failed;
    for (;;) {
        if (r->fd < 0) {
            if (r->cur >= r->n_files)
                return 0;
            rc = reader_open_file(r, r->cur);
            if (rc < 0)
                goto fail;
            if (rc == 0) {
                reader_next_file(r);
                continue;
            }
        }
        if (r->off >= r->size) {
            reader_next_file(r);
            continue;
        }
        uint32_t n = 0;
        rc = record_at(r->fd, r->size, r->off, &r->buf, &r->cap, &n, why, sizeof why);
        if (rc < 0) {
            snprintf(r->err, sizeof r->err, "%s: read error at offset %" PRIu64 ": %s",
                     r->cur_path, r->off, strerror(-rc));
            goto fail;
        }
        if (rc == 1) {
            *payload = r->buf;
            *len = n;
            if (file_index)
                *file_index = r->file_index;
            if (offset)
                *offset = r->off;
            r->off += TRAJ_LOG_RECORD_OVERHEAD + n;
            r->stats.records++;
            return 1;
        }
        /* A bad record. At the end of the last file with nothing valid
         * after it, it is a torn tail (crash mid-append, or a writer
         * still appending); anywhere else it is corruption. */
        int is_last = r->cur + 1 == r->n_files;
        uint64_t q = r->size;
        if (is_last || r->skip_corrupt) {
            if ((rc = find_next_record(r->fd, r->size, r->off + 1, &q)) < 0) {
                snprintf(r->err, sizeof r->err, "%s: cannot scan after offset %" PRIu64 ": %s",
                         r->cur_path, r->off, strerror(-rc));
                goto fail;
            }
        }
        if (is_last && q == r->size) {
            r->stats.torn_bytes += r->size - r->off;
            reader_next_file(r);
            continue;
        }
        if (!r->skip_corrupt) {
            snprintf(r->err, sizeof r->err, "%s: corrupt record at offset %" PRIu64 ": %s",
                     r->cur_path, r->off, why);
            rc = -EBADMSG;
            goto fail;
        }
        log_warn("traj_log: %s: skipped %" PRIu64 " corrupt bytes at offset %" PRIu64 " (%s)",
                 r->cur_path, q - r->off, r->off, why);
        r->stats.skipped_regions++;
        r->stats.skipped_bytes += q - r->off;
        r->off = q;
    }
fail:
    r->failed = rc;
    return rc;
}

int traj_log_reader_seek(traj_log_reader_t *r, uint32_t file_index, uint64_t offset)
{
    if (!r || r->failed)
        return r ? r->failed : -EINVAL;
    size_t k = 0;
    if (!r->single) {
        if (r->n_files == 0 || file_index < r->index[0] || file_index > r->index[r->n_files - 1]) {
            snprintf(r->err, sizeof r->err, "%s: no file number %" PRIu32 " to seek to", r->path,
                     file_index);
            return -ENOENT;
        }
        k = file_index - r->index[0];
    }
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    r->cur = k;
    int rc = reader_open_file(r, k);
    if (rc < 0)
        return rc;
    if (rc == 0) {
        if (offset > TRAJ_LOG_HEADER_BYTES) {
            snprintf(r->err, sizeof r->err, "%s: offset %" PRIu64 " is past the end of the file",
                     r->cur_path, offset);
            return -EINVAL;
        }
        reader_next_file(r);
        return 0;
    }
    if (r->single && file_index != r->file_index) {
        snprintf(r->err, sizeof r->err, "%s: the file is number %" PRIu32 ", not %" PRIu32,
                 r->cur_path, r->file_index, file_index);
        return -ENOENT;
    }
    if (offset > r->size) {
        snprintf(r->err, sizeof r->err, "%s: offset %" PRIu64 " is past the end of the file (%" PRIu64 " bytes)",
                 r->cur_path, offset, r->size);
        return -EINVAL;
    }
    if (offset > r->off)
        r->off = offset;
    return 0;
}

const char *traj_log_reader_error(const traj_log_reader_t *r)
{
    return r ? r->err : "no reader";
}

void traj_log_reader_stats(const traj_log_reader_t *r, traj_log_reader_stats_t *out)
{
    *out = r->stats;
}

void traj_log_reader_close(traj_log_reader_t **rp)
{
    if (!rp || !*rp)
        return;
    traj_log_reader_t *r = *rp;
    if (r->fd >= 0)
        close(r->fd);
    free(r->path);
    free(r->cur_path);
    free(r->index);
    free(r->buf);
    free(r);
    *rp = NULL;
}
