/* fuzz_util: shared by the libFuzzer targets of tests/fuzz/. The parsers
 * under test read files by path, so each target keeps one in-memory file
 * (memfd) for the whole run, rewrites it with every input and hands the
 * parser its /proc/self/fd/N name: no disk I/O and no temp files to clean
 * up when a run is killed. Header-only: each target is one program. */
#ifndef CRL_FUZZ_UTIL_H
#define CRL_FUZZ_UTIL_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"

typedef struct {
    int fd;
    char path[64];
} fuzz_file_t;

/* Dies on failure: a harness that cannot set itself up must not report
 * "0 crashes". */
static inline void fuzz_file_init(fuzz_file_t *f, const char *name)
{
    f->fd = memfd_create(name, MFD_CLOEXEC);
    if (f->fd < 0) {
        perror("fuzz: memfd_create");
        abort();
    }
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

/* Replaces the file's contents with data[0..size). */
static inline void fuzz_file_set(fuzz_file_t *f, const void *data, size_t size)
{
    if (ftruncate(f->fd, 0) != 0) {
        perror("fuzz: ftruncate");
        abort();
    }
    const uint8_t *p = data;
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(f->fd, p + done, size - done, (off_t)done);
        if (w <= 0) {
            perror("fuzz: pwrite");
            abort();
        }
        done += (size_t)w;
    }
}

/* Rejections of bad input are logged by the modules at WARN/ERROR; at
 * thousands of inputs a second that is noise and most of the run time. */
static inline void fuzz_quiet_logs(void)
{
    if (!getenv("CRL_FUZZ_VERBOSE"))
        log_set_level((log_level_t)(LOG_ERROR + 1));
}

/* A property check that must hold for every input: a violation is a bug,
 * reported as a crash with the input saved by libFuzzer. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
