#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proto/crl.pb-c.h"
#include "rng.h"
#include "traj_log.h"

/* ------------------------------------------------------------ helpers */

static char *make_tmp_dir(void)
{
    const char *base = getenv("CRL_TEST_TMP");
    char *p = malloc(512);
    snprintf(p, 512, "%s/traj-XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(p), "mkdtemp(%s) failed", p);
    return p;
}

static char *log_file(const char *dir, unsigned index)
{
    char *p = malloc(600);
    snprintf(p, 600, "%s/traj-%06u.log", dir, index);
    return p;
}

/* Deterministic payload i of length 20..(20+spread). */
static size_t payload(unsigned i, size_t spread, uint8_t *out)
{
    rng_t r;
    rng_seed_stream(&r, 77, i);
    size_t len = 20 + (spread ? rng_below(&r, (uint32_t)spread) : 0);
    for (size_t k = 0; k < len; k++)
        out[k] = (uint8_t)rng_u32(&r);
    return len;
}

static traj_log_options_t opts(uint64_t max_file, traj_fsync_t policy)
{
    traj_log_options_t o;
    traj_log_options_default(&o);
    o.max_file_bytes = max_file;
    o.fsync_policy = policy;
    return o;
}

/* Writes payloads first..first+n-1 to an open log. */
static void append_n(traj_log_t *log, unsigned first, unsigned n, size_t spread)
{
    uint8_t buf[4096];
    for (unsigned i = first; i < first + n; i++) {
        size_t len = payload(i, spread, buf);
        int rc = traj_log_append(log, buf, len);
        cr_assert_eq(rc, 0, "append %u: %s", i, strerror(-rc));
    }
}

static void write_log(const char *dir, unsigned n, uint64_t max_file, size_t spread)
{
    char err[512] = "";
    traj_log_options_t o = opts(max_file, TRAJ_FSYNC_NEVER);
    traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(log, "open %s: %s", dir, err);
    append_n(log, 0, n, spread);
    cr_assert_eq(traj_log_close(&log), 0);
    cr_assert_null(log);
}

/* Reads the whole log, checking record k is payload ids[k]; returns the
 * count (or the negative error of traj_log_next). */
static long read_check(const char *path, int skip, const unsigned *ids, size_t n_ids,
                       size_t spread, traj_log_reader_stats_t *st, char *err, size_t errlen)
{
    char oerr[512] = "";
    traj_log_reader_t *r = traj_log_reader_open(path, skip, oerr, sizeof oerr);
    cr_assert_not_null(r, "reader open %s: %s", path, oerr);
    const void *p;
    size_t len;
    long count = 0;
    int rc;
    uint8_t want[4096];
    while ((rc = traj_log_next(r, &p, &len, NULL, NULL)) == 1) {
        cr_assert_lt((size_t)count, n_ids, "more records than expected (%zu)", n_ids);
        size_t wl = payload(ids[count], spread, want);
        cr_assert_eq(len, wl, "record %ld: length %zu, expected %zu", count, len, wl);
        cr_assert_eq(memcmp(p, want, wl), 0, "record %ld: payload differs", count);
        count++;
    }
    if (st)
        traj_log_reader_stats(r, st);
    if (err)
        snprintf(err, errlen, "%s", traj_log_reader_error(r));
    traj_log_reader_close(&r);
    cr_assert_null(r);
    return rc < 0 ? rc : count;
}

static unsigned *seq_ids(unsigned n)
{
    unsigned *ids = malloc(n * sizeof *ids + 1);
    for (unsigned i = 0; i < n; i++)
        ids[i] = i;
    return ids;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s", path);
    return (uint64_t)st.st_size;
}

static void flip_byte(const char *path, uint64_t off)
{
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b;
    cr_assert_eq(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

/* Offset of record k in a single-file log of payloads 0.. (spread). */
static uint64_t record_offset(unsigned k, size_t spread)
{
    uint8_t buf[4096];
    uint64_t off = TRAJ_LOG_HEADER_BYTES;
    for (unsigned i = 0; i < k; i++)
        off += TRAJ_LOG_RECORD_OVERHEAD + payload(i, spread, buf);
    return off;
}

/* -------------------------------------------------------------- tests */

Test(traj_log, roundtrip_records_and_positions)
{
    char *dir = make_tmp_dir();
    char err[512] = "";
    traj_log_options_t o = opts(0, TRAJ_FSYNC_NEVER);
    traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    uint32_t f;
    uint64_t off;
    traj_log_position(log, &f, &off);
    cr_assert_eq(f, 0);
    cr_assert_eq(off, TRAJ_LOG_HEADER_BYTES);
    unsigned n = 300;
    uint64_t *end = malloc(n * sizeof *end);
    uint8_t buf[4096];
    for (unsigned i = 0; i < n; i++) {
        size_t len = payload(i, 2000, buf);
        cr_assert_eq(traj_log_append(log, buf, len), 0);
        traj_log_position(log, &f, &end[i]);
        cr_assert_eq(f, 0);
    }
    cr_assert_eq(traj_log_append(log, buf, 0), -EINVAL, "empty records are refused");
    cr_assert_eq(traj_log_close(&log), 0);

    traj_log_reader_t *r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    const void *p;
    size_t len;
    uint32_t fi;
    uint64_t ro;
    for (unsigned i = 0; i < n; i++) {
        cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 1, "record %u: %s", i,
                     traj_log_reader_error(r));
        size_t wl = payload(i, 2000, buf);
        cr_assert_eq(len, wl);
        cr_assert_eq(memcmp(p, buf, wl), 0, "record %u differs", i);
        cr_assert_eq(fi, 0);
        cr_assert_eq(ro + TRAJ_LOG_RECORD_OVERHEAD + len, end[i],
                     "record %u ends at %lu, the writer said %lu", i,
                     (unsigned long)(ro + 8 + len), (unsigned long)end[i]);
    }
    cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 0);
    cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 0, "end is stable");
    traj_log_reader_stats_t st;
    traj_log_reader_stats(r, &st);
    cr_assert_eq(st.records, n);
    cr_assert_eq(st.torn_bytes + st.skipped_bytes + st.skipped_regions, 0);
    traj_log_reader_close(&r);
    free(end);
    free(dir);
}

/* The real payload: a packed TrajectoryRecord survives the log. */
Test(traj_log, trajectory_record_payload)
{
    char *dir = make_tmp_dir();
    char err[512] = "";
    traj_log_t *log = traj_log_open(dir, NULL, err, sizeof err); /* default: fsync every record */
    cr_assert_not_null(log, "%s", err);

    int32_t prompt[3] = { 1, -1, 2 };
    int32_t tok[2] = { 5, 6 };
    float lp[2] = { -0.25f, -1.5f };
    Crl__Sample s = CRL__SAMPLE__INIT;
    s.tokens = tok;
    s.n_tokens = 2;
    s.logprobs = lp;
    s.n_logprobs = 2;
    Crl__Sample *sp[1] = { &s };
    Crl__TrajectoryGroup g = CRL__TRAJECTORY_GROUP__INIT;
    g.actor_id = "actor-2";
    g.group_id = 17;
    g.prompt_tokens = prompt;
    g.n_prompt_tokens = 3;
    g.samples = sp;
    g.n_samples = 1;
    g.group_size = 1;
    Crl__GroupReceived gr = CRL__GROUP_RECEIVED__INIT;
    gr.group = &g;
    gr.received_unix_ms = 123456;
    Crl__TrajectoryRecord rec = CRL__TRAJECTORY_RECORD__INIT;
    rec.seq = 0;
    rec.kind_case = CRL__TRAJECTORY_RECORD__KIND_RECEIVED;
    rec.received = &gr;

    Crl__GroupKey key = CRL__GROUP_KEY__INIT;
    key.actor_id = "actor-2";
    key.group_id = 17;
    Crl__GroupKey *keys[1] = { &key };
    uint64_t rng_state[4] = { 1, 2, 3, 4 };
    Crl__StepMarker sm = CRL__STEP_MARKER__INIT;
    sm.step = 1;
    sm.version_before = 0;
    sm.version_after = 1;
    sm.groups = keys;
    sm.n_groups = 1;
    sm.rng_state = rng_state;
    sm.n_rng_state = 4;
    sm.weights_crc32c = 0xfeedbeef;
    Crl__TrajectoryRecord rec2 = CRL__TRAJECTORY_RECORD__INIT;
    rec2.seq = 1;
    rec2.kind_case = CRL__TRAJECTORY_RECORD__KIND_STEP;
    rec2.step = &sm;

    uint8_t buf[1024];
    size_t n1 = crl__trajectory_record__pack(&rec, buf);
    cr_assert_eq(traj_log_append(log, buf, n1), 0);
    size_t n2 = crl__trajectory_record__pack(&rec2, buf);
    cr_assert_eq(traj_log_append(log, buf, n2), 0);
    cr_assert_eq(traj_log_close(&log), 0);

    traj_log_reader_t *r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    const void *p;
    size_t len;
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 1);
    Crl__TrajectoryRecord *back = crl__trajectory_record__unpack(NULL, len, p);
    cr_assert_not_null(back);
    cr_assert_eq(back->kind_case, CRL__TRAJECTORY_RECORD__KIND_RECEIVED);
    cr_assert_str_eq(back->received->group->actor_id, "actor-2");
    cr_assert_eq(back->received->group->samples[0]->logprobs[1], -1.5f);
    cr_assert_eq(back->received->received_unix_ms, 123456);
    crl__trajectory_record__free_unpacked(back, NULL);
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 1);
    back = crl__trajectory_record__unpack(NULL, len, p);
    cr_assert_not_null(back);
    cr_assert_eq(back->kind_case, CRL__TRAJECTORY_RECORD__KIND_STEP);
    cr_assert_eq(back->step->n_groups, 1);
    cr_assert_eq(back->step->groups[0]->group_id, 17);
    cr_assert_eq(back->step->rng_state[3], 4);
    cr_assert_eq(back->step->weights_crc32c, 0xfeedbeef);
    crl__trajectory_record__free_unpacked(back, NULL);
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 0);
    traj_log_reader_close(&r);
    free(dir);
}

Test(traj_log, rotation_keeps_order_and_positions)
{
    char *dir = make_tmp_dir();
    char err[512] = "";
    /* 1000-byte files, records of 28..227 bytes: several per file */
    traj_log_options_t o = opts(1000, TRAJ_FSYNC_NEVER);
    traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    unsigned n = 200;
    uint32_t *ef = malloc(n * sizeof *ef);
    uint64_t *eo = malloc(n * sizeof *eo);
    uint8_t buf[4096];
    for (unsigned i = 0; i < n; i++) {
        size_t len = payload(i, 200, buf);
        cr_assert_eq(traj_log_append(log, buf, len), 0);
        traj_log_position(log, &ef[i], &eo[i]);
        cr_assert_leq(eo[i], 1000, "file %u grew to %lu bytes", ef[i], (unsigned long)eo[i]);
    }
    /* one record larger than a file gets a file of its own */
    static uint8_t huge[3000];
    memset(huge, 7, sizeof huge);
    cr_assert_eq(traj_log_append(log, huge, sizeof huge), 0);
    uint32_t hf;
    uint64_t ho;
    traj_log_position(log, &hf, &ho);
    cr_assert_eq(hf, ef[n - 1] + 1);
    cr_assert_eq(ho, TRAJ_LOG_HEADER_BYTES + 8 + sizeof huge);
    cr_assert_eq(traj_log_close(&log), 0);
    cr_assert_gt(ef[n - 1], 10, "expected many files, got %u", ef[n - 1] + 1);

    traj_log_reader_t *r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    const void *p;
    size_t len;
    uint32_t fi;
    uint64_t ro;
    for (unsigned i = 0; i < n; i++) {
        cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 1, "record %u: %s", i,
                     traj_log_reader_error(r));
        size_t wl = payload(i, 200, buf);
        cr_assert_eq(len, wl);
        cr_assert_eq(memcmp(p, buf, wl), 0, "record %u differs", i);
        cr_assert_eq(fi, ef[i], "record %u in file %u, writer said %u", i, fi, ef[i]);
        cr_assert_eq(ro + 8 + len, eo[i]);
    }
    cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 1);
    cr_assert_eq(len, sizeof huge);
    cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 0);
    traj_log_reader_stats_t st;
    traj_log_reader_stats(r, &st);
    cr_assert_eq(st.files, hf + 1);

    /* Seek to the position after record 99 (possibly the end of a file):
     * the next record is record 100. */
    cr_assert_eq(traj_log_reader_seek(r, ef[99], eo[99]), 0, "%s", traj_log_reader_error(r));
    cr_assert_eq(traj_log_next(r, &p, &len, &fi, &ro), 1);
    size_t wl = payload(100, 200, buf);
    cr_assert_eq(len, wl);
    cr_assert_eq(memcmp(p, buf, wl), 0, "record after the seek is not record 100");
    cr_assert_eq(traj_log_reader_seek(r, hf + 5, 32), -ENOENT);
    traj_log_reader_close(&r);

    /* Reopen for append continues in the last file, in order. */
    log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    traj_log_position(log, &fi, &ro);
    cr_assert_eq(fi, hf);
    cr_assert_eq(ro, ho);
    append_n(log, 500, 3, 200);
    cr_assert_eq(traj_log_close(&log), 0);
    unsigned *ids = seq_ids(n + 4);
    ids[n] = 0; /* placeholder for the huge record, checked by length only below */
    r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    unsigned count = 0;
    while (traj_log_next(r, &p, &len, NULL, NULL) == 1)
        count++;
    cr_assert_eq(count, n + 4);
    cr_assert_eq(len, payload(502, 200, buf));
    cr_assert_eq(memcmp(p, buf, len), 0, "last record is not the last appended");
    traj_log_reader_close(&r);
    free(ids);
    free(ef);
    free(eo);
    free(dir);
}

/* Cut the last record at several points (inside its length, its crc, its
 * payload, one byte short) and flip its last byte: the reader sees the
 * good records and a torn tail, reopening cuts the tail, appending works. */
Test(traj_log, torn_tail_cut_on_reopen)
{
    uint8_t buf[4096];
    unsigned n = 6;
    uint64_t last = record_offset(n - 1, 100);
    size_t last_len = payload(n - 1, 100, buf);
    uint64_t full = last + 8 + last_len;
    uint64_t cuts[] = { last + 2, last + 6, last + 8, last + 8 + last_len / 2, full - 1, 0 };
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        char *dir = make_tmp_dir();
        write_log(dir, n, 0, 100);
        char *path = log_file(dir, 0);
        cr_assert_eq(file_size(path), full);
        uint64_t cut = cuts[k];
        if (cut) {
            cr_assert_eq(truncate(path, (off_t)cut), 0);
        } else { /* crc mismatch in the very last byte */
            flip_byte(path, full - 1);
            cut = full;
        }

        unsigned *ids = seq_ids(n + 1);
        traj_log_reader_stats_t st;
        char err[512];
        long got = read_check(dir, 0, ids, n, 100, &st, err, sizeof err);
        cr_assert_eq(got, (long)n - 1, "cut %lu: read %ld records (%s)", (unsigned long)cut, got,
                     err);
        cr_assert_eq(st.torn_bytes, cut - last, "cut %lu: torn_bytes %lu, expected %lu",
                     (unsigned long)cut, (unsigned long)st.torn_bytes,
                     (unsigned long)(cut - last));
        cr_assert_eq(st.skipped_regions, 0);

        traj_log_options_t o = opts(0, TRAJ_FSYNC_EVERY_RECORD);
        traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
        cr_assert_not_null(log, "reopen after cut %lu: %s", (unsigned long)cut, err);
        uint32_t f;
        uint64_t off;
        traj_log_position(log, &f, &off);
        cr_assert_eq(off, last, "cut %lu: writer resumes at %lu, expected %lu",
                     (unsigned long)cut, (unsigned long)off, (unsigned long)last);
        cr_assert_eq(file_size(path), last, "torn bytes were not cut");
        append_n(log, 100, 2, 100);
        cr_assert_eq(traj_log_close(&log), 0);
        ids[n - 1] = 100;
        ids[n] = 101;
        got = read_check(dir, 0, ids, n + 1, 100, &st, err, sizeof err);
        cr_assert_eq(got, (long)n + 1, "after append: read %ld (%s)", got, err);
        cr_assert_eq(st.torn_bytes, 0);
        free(ids);
        free(path);
        free(dir);
    }
}

/* A header cut short at creation (crash while rotating) is rewritten. */
Test(traj_log, torn_header_of_last_file)
{
    char *dir = make_tmp_dir();
    char err[512];
    write_log(dir, 3, 0, 50);
    char *p1 = log_file(dir, 1);
    FILE *fp = fopen(p1, "wb");
    fwrite("CRLTR", 1, 5, fp);
    fclose(fp);
    unsigned *ids = seq_ids(8);
    traj_log_reader_stats_t st;
    cr_assert_eq(read_check(dir, 0, ids, 3, 50, &st, err, sizeof err), 3, "%s", err);
    cr_assert_eq(st.torn_bytes, 5);
    traj_log_options_t o = opts(0, TRAJ_FSYNC_NEVER);
    traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    append_n(log, 3, 2, 50);
    cr_assert_eq(traj_log_close(&log), 0);
    cr_assert_eq(read_check(dir, 0, ids, 5, 50, &st, err, sizeof err), 5, "%s", err);
    free(ids);
    free(p1);
    free(dir);
}

Test(traj_log, corrupt_middle_record)
{
    char *dir = make_tmp_dir();
    char err[512];
    unsigned n = 10;
    write_log(dir, n, 0, 100);
    char *path = log_file(dir, 0);
    uint64_t off4 = record_offset(4, 100);
    uint8_t buf[4096];
    size_t len4 = payload(4, 100, buf);
    flip_byte(path, off4 + 8 + len4 / 2); /* inside record 4's payload */

    unsigned *ids = seq_ids(n);
    traj_log_reader_stats_t st;
    long got = read_check(dir, 0, ids, n, 100, &st, err, sizeof err);
    cr_assert_eq(got, -EBADMSG, "expected -EBADMSG, got %ld", got);
    cr_assert_eq(st.records, 4, "records before the corruption: %lu", (unsigned long)st.records);
    char want[700];
    snprintf(want, sizeof want, "%s: corrupt record at offset %lu", path, (unsigned long)off4);
    cr_assert(strstr(err, want), "error \"%s\" should contain \"%s\"", err, want);

    /* skip_corrupt: the 9 others are read, one region is counted */
    unsigned ids9[9] = { 0, 1, 2, 3, 5, 6, 7, 8, 9 };
    got = read_check(dir, 1, ids9, 9, 100, &st, err, sizeof err);
    cr_assert_eq(got, 9, "skip_corrupt read %ld records (%s)", got, err);
    cr_assert_eq(st.skipped_regions, 1);
    cr_assert_eq(st.skipped_bytes, 8 + len4);

    /* the writer refuses to append after a corrupt middle */
    traj_log_options_t o = opts(0, TRAJ_FSYNC_NEVER);
    traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_null(log);
    cr_assert(strstr(err, "refusing to append"), "got \"%s\"", err);
    free(ids);
    free(path);
    free(dir);
}

/* An impossible length in a middle record of a non-last file. */
Test(traj_log, corrupt_length_in_earlier_file)
{
    char *dir = make_tmp_dir();
    char err[512];
    unsigned n = 40;
    write_log(dir, n, 600, 100); /* several files */
    char *p0 = log_file(dir, 0), *p2 = log_file(dir, 2);
    cr_assert_eq(access(p2, F_OK), 0, "expected at least 3 files");
    /* record 1 of file 0: set the top byte of its length */
    uint64_t off1 = record_offset(1, 100);
    flip_byte(p0, off1 + 3);
    unsigned *ids = seq_ids(n);
    traj_log_reader_stats_t st;
    long got = read_check(dir, 0, ids, n, 100, &st, err, sizeof err);
    cr_assert_eq(got, -EBADMSG);
    char want[700];
    snprintf(want, sizeof want, "%s: corrupt record at offset %lu: impossible record length", p0,
             (unsigned long)off1);
    cr_assert(strstr(err, want), "error \"%s\" should contain \"%s\"", err, want);

    ids[1] = 0; /* drop record 1 from the expected list */
    memmove(ids + 1, ids + 2, (n - 2) * sizeof *ids);
    got = read_check(dir, 1, ids, n - 1, 100, &st, err, sizeof err);
    cr_assert_eq(got, (long)n - 1, "%s", err);
    cr_assert_eq(st.skipped_regions, 1);
    /* the writer only checks the last file: appending is allowed */
    traj_log_options_t o = opts(600, TRAJ_FSYNC_NEVER);
    traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    traj_log_close(&log);
    free(ids);
    free(p0);
    free(p2);
    free(dir);
}

Test(traj_log, wrong_magic_and_version)
{
    char err[512];
    /* wrong magic */
    char *dir = make_tmp_dir();
    char *path = log_file(dir, 0);
    FILE *fp = fopen(path, "wb");
    char junk[64];
    memset(junk, 'x', sizeof junk);
    fwrite(junk, 1, sizeof junk, fp);
    fclose(fp);
    traj_log_reader_t *r = traj_log_reader_open(dir, 1, err, sizeof err);
    cr_assert_null(r);
    cr_assert(strstr(err, path) && strstr(err, "bad magic"), "got \"%s\"", err);
    traj_log_t *log = traj_log_open(dir, NULL, err, sizeof err);
    cr_assert_null(log);
    cr_assert(strstr(err, path) && strstr(err, "bad magic"), "writer: got \"%s\"", err);
    free(path);
    free(dir);

    /* a version from the future */
    dir = make_tmp_dir();
    write_log(dir, 2, 0, 10);
    path = log_file(dir, 0);
    int fd = open(path, O_RDWR);
    uint8_t v[4] = { 7, 0, 0, 0 };
    cr_assert_eq(pwrite(fd, v, 4, 8), 4);
    close(fd);
    r = traj_log_reader_open(path, 0, err, sizeof err); /* single-file mode */
    cr_assert_null(r);
    cr_assert(strstr(err, path) && strstr(err, "format version 7"), "got \"%s\"", err);
    log = traj_log_open(dir, NULL, err, sizeof err);
    cr_assert_null(log);
    cr_assert(strstr(err, "format version 7"), "writer: got \"%s\"", err);
    free(path);
    free(dir);

    /* a damaged header checksum */
    dir = make_tmp_dir();
    write_log(dir, 2, 0, 10);
    path = log_file(dir, 0);
    flip_byte(path, 17);
    r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_null(r);
    cr_assert(strstr(err, "header checksum mismatch"), "got \"%s\"", err);
    free(path);
    free(dir);
}

Test(traj_log, empty_logs_and_gaps)
{
    char err[512] = "";
    const void *p;
    size_t len;
    /* empty folder */
    char *dir = make_tmp_dir();
    traj_log_reader_t *r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 0);
    traj_log_reader_close(&r);
    /* empty file */
    char *path = log_file(dir, 0);
    FILE *fp = fopen(path, "wb");
    fclose(fp);
    r = traj_log_reader_open(path, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 0);
    traj_log_reader_close(&r);
    r = traj_log_reader_open(dir, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 0);
    traj_log_reader_close(&r);
    /* a freshly created log with no records */
    char *dir2 = make_tmp_dir();
    char sub[600];
    snprintf(sub, sizeof sub, "%s/runs/x/traj", dir2); /* parents are created */
    traj_log_t *log = traj_log_open(sub, NULL, err, sizeof err);
    cr_assert_not_null(log, "%s", err);
    /* a second writer on the same folder is refused */
    traj_log_t *log2 = traj_log_open(sub, NULL, err, sizeof err);
    cr_assert_null(log2);
    cr_assert(strstr(err, "another process"), "got \"%s\"", err);
    cr_assert_eq(traj_log_close(&log), 0);
    r = traj_log_reader_open(sub, 0, err, sizeof err);
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(traj_log_next(r, &p, &len, NULL, NULL), 0);
    traj_log_reader_close(&r);
    /* a gap in the numbering */
    write_log(dir2, 30, 300, 50);
    char *p1 = log_file(dir2, 1);
    cr_assert_eq(unlink(p1), 0);
    r = traj_log_reader_open(dir2, 1, err, sizeof err);
    cr_assert_null(r);
    cr_assert(strstr(err, "traj-000001.log is missing"), "got \"%s\"", err);
    free(p1);
    free(path);
    free(dir);
    free(dir2);
}

Test(traj_log, fsync_policies)
{
    traj_fsync_t pol[3] = { TRAJ_FSYNC_EVERY_RECORD, TRAJ_FSYNC_INTERVAL, TRAJ_FSYNC_NEVER };
    for (int k = 0; k < 3; k++) {
        char *dir = make_tmp_dir();
        char err[512];
        traj_log_options_t o = opts(2000, pol[k]);
        o.fsync_interval_ms = 2;
        traj_log_t *log = traj_log_open(dir, &o, err, sizeof err);
        cr_assert_not_null(log, "policy %d: %s", k, err);
        uint8_t buf[4096];
        for (unsigned i = 0; i < 30; i++) {
            size_t len = payload(i, 300, buf);
            cr_assert_eq(traj_log_append(log, buf, len), 0, "policy %d record %u", k, i);
            if (i % 10 == 0) {
                struct timespec ts = { 0, 3 * 1000 * 1000 };
                nanosleep(&ts, NULL);
            }
        }
        cr_assert_eq(traj_log_sync(log), 0);
        cr_assert_eq(traj_log_close(&log), 0);
        unsigned *ids = seq_ids(30);
        traj_log_reader_stats_t st;
        cr_assert_eq(read_check(dir, 0, ids, 30, 300, &st, err, sizeof err), 30,
                     "policy %d: %s", k, err);
        cr_assert_gt(st.files, 1, "policy %d: expected rotation", k);
        free(ids);
        free(dir);
    }
}
