/* fuzz_traj_log: the trajectory-log reader on a log file built from the
 * input, read once without and once with skip_corrupt.
 *
 * Input: byte 0 picks how the file is made from the rest, so that the
 * fuzzer gets past the CRCs it cannot forge by mutation:
 *   bit 0  prepend a valid 32-byte header (file index 0);
 *   bit 1  the rest is a list of records [ctl][len][len bytes] that the
 *          harness frames as [u32 len][u32 crc32c][payload] with a valid
 *          CRC, except ctl bit 0 = wrong CRC, ctl bit 1 = wrong length
 *          field (len + ctl/4), ctl bit 2 = cut the record short (a torn
 *          tail when it is the last);
 *   else   the rest is the file as is.
 * Properties: no crash / leak / UB / hang; every record returned lies
 * inside the file, at increasing offsets, is the file's bytes there and has
 * a matching CRC; without skip_corrupt the records are a prefix of those
 * read with it, and the same list when the read ended cleanly; seeking back
 * to a returned record reads it again. Payloads are also unpacked as
 * crl.TrajectoryRecord and received groups checked with
 * wire_validate_group, as a replay would. */
#include <string.h>

#include "crc32c.h"
#include "fuzz_util.h"
#include "traj_log.h"
#include "wire.h"

#define MAX_FILE (1u << 20)
#define MAX_RECS 4096

static fuzz_file_t g_file;
static uint8_t *g_buf; /* (MAX_FILE) the file as written */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    fuzz_file_init(&g_file, "traj-000000.log");
    g_buf = malloc(MAX_FILE);
    if (!g_buf)
        abort();
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Builds the file in g_buf; returns its size. */
static size_t build_file(const uint8_t *data, size_t size)
{
    size_t n = 0;
    uint8_t mode = size ? data[0] : 0;
    data++, size = size ? size - 1 : 0;
    if (mode & 1) {
        memset(g_buf, 0, TRAJ_LOG_HEADER_BYTES);
        memcpy(g_buf, "CRLTRAJ", 8);
        put32(g_buf + 8, TRAJ_LOG_FORMAT_VERSION);
        put32(g_buf + 12, TRAJ_LOG_HEADER_BYTES);
        put32(g_buf + 16, 0x12345678u); /* created ms, low half */
        put32(g_buf + 24, 0);
        put32(g_buf + 28, crc32c(g_buf, 28));
        n = TRAJ_LOG_HEADER_BYTES;
    }
    if (!(mode & 2)) {
        if (size > MAX_FILE - n)
            size = MAX_FILE - n;
        memcpy(g_buf + n, data, size);
        return n + size;
    }
    size_t i = 0;
    while (i + 2 <= size) {
        uint8_t ctl = data[i], len = data[i + 1];
        i += 2;
        size_t take = len <= size - i ? len : size - i;
        if (n + 8 + take > MAX_FILE)
            break;
        uint32_t lenfield = (uint32_t)take + ((ctl & 2) ? (uint32_t)(ctl >> 2) : 0);
        uint32_t crc = crc32c(data + i, take) ^ ((ctl & 1) ? 0x5a5a5a5au : 0);
        put32(g_buf + n, lenfield);
        put32(g_buf + n + 4, crc);
        memcpy(g_buf + n + 8, data + i, take);
        size_t rec = 8 + take;
        if ((ctl & 4) && rec > 1)
            rec = 1 + (ctl >> 3) % (rec - 1); /* torn: keep a strict prefix */
        n += rec;
        i += take;
    }
    return n;
}

typedef struct {
    uint64_t off;
    size_t len;
} rec_t;

static rec_t g_recs[2][MAX_RECS];

/* Reads the whole file; returns the final traj_log_next code (0 or
 * negative) and the records in g_recs[pass], their count in *count. */
static int read_all(int pass, size_t fsize, size_t *count)
{
    char err[1024];
    err[0] = '\0';
    *count = 0;
    traj_log_reader_t *r = traj_log_reader_open(g_file.path, pass, err, sizeof err);
    if (!r) {
        FUZZ_CHECK(strstr(err, g_file.path) != NULL, "open error does not name the file: '%s'",
                   err);
        return -1000;
    }
    int rc;
    uint64_t last = 0;
    for (;;) {
        const void *payload = NULL;
        size_t len = 0;
        uint32_t fi = 99;
        uint64_t off = 0;
        rc = traj_log_next(r, &payload, &len, &fi, &off);
        if (rc <= 0)
            break;
        FUZZ_CHECK(rc == 1, "traj_log_next returned %d", rc);
        FUZZ_CHECK(*count < MAX_RECS, "more records than the file can hold");
        FUZZ_CHECK(len >= 1 && off >= TRAJ_LOG_HEADER_BYTES && off + 8 + len <= fsize,
                   "record at %llu (+%zu) outside the %zu-byte file", (unsigned long long)off, len,
                   fsize);
        FUZZ_CHECK(*count == 0 || off > last, "offsets not increasing: %llu after %llu",
                   (unsigned long long)off, (unsigned long long)last);
        FUZZ_CHECK(get32(g_buf + off) == len, "length field differs");
        FUZZ_CHECK(memcmp(payload, g_buf + off + 8, len) == 0, "payload differs from the file");
        FUZZ_CHECK(crc32c(payload, len) == get32(g_buf + off + 4), "returned a record with a bad CRC");
        last = off;
        g_recs[pass][*count].off = off;
        g_recs[pass][*count].len = len;
        (*count)++;

        Crl__TrajectoryRecord *tr = crl__trajectory_record__unpack(NULL, len, payload);
        if (tr) {
            if (tr->kind_case == CRL__TRAJECTORY_RECORD__KIND_RECEIVED && tr->received &&
                tr->received->group) {
                wire_limits_t lim;
                wire_limits_default(&lim);
                char why[256];
                (void)wire_validate_group(tr->received->group, &lim, why, sizeof why);
            }
            crl__trajectory_record__free_unpacked(tr, NULL);
        }
    }
    if (rc < 0)
        FUZZ_CHECK(traj_log_reader_error(r)[0] != '\0', "error %d without a message", rc);
    /* Errors are sticky. */
    if (rc < 0) {
        const void *p;
        size_t l;
        FUZZ_CHECK(traj_log_next(r, &p, &l, NULL, NULL) == rc, "error not sticky");
    }
    traj_log_reader_stats_t st;
    traj_log_reader_stats(r, &st);
    FUZZ_CHECK(st.records == *count, "stats.records %llu != %zu",
               (unsigned long long)st.records, *count);
    if (rc == 0 && *count > 0) {
        /* Seek back to the middle record: it must read again, the same. */
        size_t k = *count / 2;
        int s = traj_log_reader_seek(r, 0, g_recs[pass][k].off);
        FUZZ_CHECK(s == 0, "seek to a returned record failed: %d %s", s,
                   traj_log_reader_error(r));
        const void *p;
        size_t l = 0;
        uint64_t off = 0;
        s = traj_log_next(r, &p, &l, NULL, &off);
        FUZZ_CHECK(s == 1 && off == g_recs[pass][k].off && l == g_recs[pass][k].len,
                   "re-read after seek differs (rc %d)", s);
    }
    traj_log_reader_close(&r);
    FUZZ_CHECK(r == NULL, "close left the pointer");
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t fsize = build_file(data, size);
    fuzz_file_set(&g_file, g_buf, fsize);
    size_t n0 = 0, n1 = 0;
    int rc0 = read_all(0, fsize, &n0);
    int rc1 = read_all(1, fsize, &n1);
    FUZZ_CHECK((rc0 == -1000) == (rc1 == -1000), "open failed in one mode only");
    FUZZ_CHECK(n0 <= n1, "skip_corrupt read fewer records (%zu) than a strict read (%zu)", n1, n0);
    for (size_t i = 0; i < n0; i++)
        FUZZ_CHECK(g_recs[0][i].off == g_recs[1][i].off && g_recs[0][i].len == g_recs[1][i].len,
                   "record %zu differs between modes", i);
    if (rc0 == 0)
        FUZZ_CHECK(n0 == n1, "clean strict read has %zu records, skipping read %zu", n0, n1);
    return 0;
}
