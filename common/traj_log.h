/* traj_log: the learner's append-only trajectory log (DESIGN.md §7) and its
 * reader. A log is a folder (runs/NAME/traj/) of files traj-000000.log,
 * traj-000001.log, ... Each file starts with a 32-byte header, then records
 * [u32 length][u32 crc32c(payload)][payload], little-endian; a payload is a
 * packed crl.TrajectoryRecord (the log itself treats it as bytes).
 *
 * File header (32 bytes, little-endian):
 *   0  "CRLTRAJ\0"            magic
 *   8  u32 format version     TRAJ_LOG_FORMAT_VERSION
 *  12  u32 header size        32 (records start here; later versions may grow it)
 *  16  u64 created unix ms
 *  24  u32 file index         must match the name
 *  28  u32 crc32c of bytes 0..27
 *
 * Crash safety: a record is complete on disk or, after a crash mid-write,
 * a "torn" tail of the last file that the writer cuts on reopen. A bad
 * record with a valid one after it is corruption, never cut silently. */
#ifndef CRL_TRAJ_LOG_H
#define CRL_TRAJ_LOG_H

#include <stddef.h>
#include <stdint.h>

#define TRAJ_LOG_FORMAT_VERSION 1u
#define TRAJ_LOG_HEADER_BYTES 32u
#define TRAJ_LOG_RECORD_OVERHEAD 8u
/* Largest payload accepted (bigger "lengths" are corruption). */
#define TRAJ_LOG_MAX_RECORD ((size_t)256 << 20)

typedef enum {
    TRAJ_FSYNC_EVERY_RECORD = 0, /* fdatasync after every append (default) */
    TRAJ_FSYNC_INTERVAL,         /* at an append when fsync_interval_ms have passed,
                                    and at traj_log_sync / close */
    TRAJ_FSYNC_NEVER,            /* leave it to the OS (tests, throwaway runs) */
} traj_fsync_t;

typedef struct {
    uint64_t max_file_bytes;     /* rotate before a record would pass this; a single
                                    larger record gets a file of its own. 0 = 64 MiB */
    traj_fsync_t fsync_policy;
    uint32_t fsync_interval_ms;  /* for TRAJ_FSYNC_INTERVAL; 0 = 1000 */
} traj_log_options_t;

void traj_log_options_default(traj_log_options_t *opt);

/* ------------------------------------------------------------- writer */

typedef struct traj_log traj_log_t;

/* Opens (creating it and its parents if needed) the log folder dir for
 * appending; opt NULL = defaults. An existing log continues in its last
 * file after recovery: a torn tail is cut (logged with the byte count),
 * while a corrupt record followed by valid ones, a bad header, a gap in
 * the file numbers or another process holding the folder are errors.
 * NULL on failure with the reason (naming the file) in err. */
traj_log_t *traj_log_open(const char *dir, const traj_log_options_t *opt, char *err,
                          size_t errlen);

/* Appends one record (1 <= len <= TRAJ_LOG_MAX_RECORD), rotating to a new
 * file first when needed. 0 or -errno; on failure nothing of the record
 * stays in the file (it is truncated back). After an error that could not
 * be undone (truncate or fsync failed) every later call returns -EIO. */
int traj_log_append(traj_log_t *log, const void *payload, size_t len);

/* fdatasync of what was appended and not yet synced (for the INTERVAL
 * policy from an idle loop). 0 or -errno. */
int traj_log_sync(traj_log_t *log);

/* End of the data written so far: (current file index, its size). Every
 * record appended before the call lies before this position; store it in
 * a checkpoint and give it to traj_log_reader_seek to continue there. */
void traj_log_position(const traj_log_t *log, uint32_t *file_index, uint64_t *offset);

/* Syncs (unless TRAJ_FSYNC_NEVER), closes, frees, *log = NULL. NULL is a
 * no-op. 0 or the -errno of the final sync. */
int traj_log_close(traj_log_t **log);

/* ------------------------------------------------------------- reader */

typedef struct traj_log_reader traj_log_reader_t;

typedef struct {
    uint64_t records;          /* records returned */
    uint64_t skipped_regions;  /* corrupt spots skipped (skip_corrupt) */
    uint64_t skipped_bytes;    /* bytes skipped over at those spots */
    uint64_t torn_bytes;       /* torn tail at the end of the last file */
    uint32_t files;            /* files in the log */
} traj_log_reader_stats_t;

/* Opens a log folder, or a single log file, for reading. Every file's
 * header is checked here: wrong magic, an unsupported format version, a
 * bad header checksum or a gap in the numbering -> NULL with an error
 * naming the file. An empty folder or file reads as zero records.
 * skip_corrupt: a corrupt record in the middle is skipped (the reader
 * resyncs at the next offset where a record with a valid CRC starts and
 * counts the region) instead of being an error. */
traj_log_reader_t *traj_log_reader_open(const char *path, int skip_corrupt, char *err,
                                        size_t errlen);

/* Next record, in file order across rotations. Returns 1 with *payload
 * (reader-owned, valid until the next call) and *len, and the record's
 * start (file index, offset of its length field) in *file_index / *offset
 * (either may be NULL); 0 at the end (a torn tail of the last file is an
 * end, counted in torn_bytes, not an error); negative -errno on an I/O
 * error or corruption (-EBADMSG), with traj_log_reader_error() naming the
 * file and offset. Errors are sticky. */
int traj_log_next(traj_log_reader_t *r, const void **payload, size_t *len, uint32_t *file_index,
                  uint64_t *offset);

/* Continue reading at a position from traj_log_position (the end of file
 * F is fine). 0 or -errno (unknown file, offset past its end). */
int traj_log_reader_seek(traj_log_reader_t *r, uint32_t file_index, uint64_t offset);

const char *traj_log_reader_error(const traj_log_reader_t *r);
void traj_log_reader_stats(const traj_log_reader_t *r, traj_log_reader_stats_t *out);
void traj_log_reader_close(traj_log_reader_t **r);

#endif
