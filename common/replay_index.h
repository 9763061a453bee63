/* replay_index: the read side of the trajectory log (DESIGN.md §7) behind
 * crl-replay. One pass over a log decodes every TrajectoryRecord, checks it
 * (CRC via traj_log, protobuf decode, wire_validate_group, seq numbering,
 * outcomes and StepMarkers against the groups received before them) and
 * keeps a compact summary per group — GroupReceived joined with its
 * GroupOutcome by (actor_id, group_id), no token data — plus every problem
 * found, with file and offset. Token data is read again, record by record,
 * by a second pass (dump, cat), so memory stays small for long runs.
 * Owns the summaries, the problem list and a copy of the log path. */
#ifndef CRL_REPLAY_INDEX_H
#define CRL_REPLAY_INDEX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto/crl.pb-c.h"
#include "tokenizer.h"
#include "traj_log.h"
#include "wire.h"

/* DropReason values are 0..REPLAY_N_DROP_REASONS-1. */
#define REPLAY_N_DROP_REASONS 9

typedef enum {
    REPLAY_PENDING = 0, /* received, no outcome in the log (yet) */
    REPLAY_USED,        /* GroupOutcome USED (see in_marker) */
    REPLAY_DROPPED,     /* GroupOutcome DROPPED (see drop_reason) */
} replay_fate_t;

/* One received group, as far as the log tells. Read-only view owned by the
 * index. */
typedef struct {
    char *actor_id;
    uint64_t group_id;
    char *prompt_id;
    int task_kind;              /* CRL__TASK_KIND__* */
    uint32_t group_size;        /* samples */
    uint64_t response_tokens;   /* summed over the samples */
    uint64_t weights_version;   /* that generated the samples */
    uint64_t received_unix_ms;
    uint64_t learner_version;   /* at arrival */
    uint64_t learner_step;      /* updates completed at arrival */
    /* the GroupReceived record */
    uint32_t file_index;
    uint64_t offset;
    uint64_t seq;
    uint64_t written_unix_ms;
    /* fate, from the last GroupOutcome of the group */
    replay_fate_t fate;
    int drop_reason;            /* CRL__DROP_REASON__*, when DROPPED */
    uint64_t step;              /* when USED */
    uint32_t batch_index;       /* when USED */
    uint32_t staleness;
    int in_marker;              /* a StepMarker listed it: the update completed */
    uint32_t n_outcomes;
    size_t n_scores;            /* group_size when USED, else 0 */
    float *rewards;             /* (n_scores) */
    float *preference;          /* (n_scores) */
    float *format;              /* (n_scores) */
    float *advantages;          /* (n_scores) */
    double reward_mean;         /* mean of rewards; 0 when n_scores == 0 */
} replay_group_t;

/* One StepMarker. */
typedef struct {
    uint64_t step;
    uint64_t version_before, version_after;
    size_t n_groups;
    uint64_t formed_unix_ms;
    double update_seconds;
    uint32_t file_index;
    uint64_t offset;
} replay_step_t;

typedef enum {
    REPLAY_PROBLEM_ERROR = 0,  /* the log is not sound: verify fails */
    REPLAY_PROBLEM_SKIPPED,    /* corrupt region skipped (skip_corrupt), or a
                                  consequence of one (seq gap, dangling key):
                                  verify fails only without skip_corrupt */
    REPLAY_PROBLEM_NOTE,       /* worth knowing, not wrong (torn tail, an update
                                  that never completed) */
} replay_severity_t;

typedef struct {
    replay_severity_t severity;
    char *file;                /* path of the log file */
    uint64_t offset;           /* of the record (its length field) */
    char *message;
    int region;                /* a place in the files rather than a record: corrupt
                                  region, torn tail, read error (info lists these) */
} replay_problem_t;

typedef struct {
    int skip_corrupt;          /* continue past corrupt records (counted) */
    wire_limits_t limits;      /* for wire_validate_group on every GroupReceived */
} replay_index_options_t;

/* skip_corrupt 0, limits = wire_limits_default with larger G, prompt and
 * response caps (the log must hold whatever the learner accepted). */
void replay_index_options_default(replay_index_options_t *opt);

typedef struct replay_index replay_index_t;

/* Reads the whole log at path (a folder of traj-NNNNNN.log or one file).
 * NULL (reason in err, naming the file) only when the log cannot be opened
 * at all (missing, bad header, numbering gap) or out of memory. A record
 * that cannot be read (corruption without skip_corrupt, I/O error) ends the
 * scan and becomes an ERROR problem: the index then holds what came before
 * it and replay_index_complete() is 0. */
replay_index_t *replay_index_load(const char *path, const replay_index_options_t *opt,
                                  char *err, size_t errlen);
void replay_index_destroy(replay_index_t **idx);

const char *replay_index_path(const replay_index_t *idx);
/* 1 when the scan reached the end of the log. */
int replay_index_complete(const replay_index_t *idx);

size_t replay_index_n_groups(const replay_index_t *idx);
const replay_group_t *replay_index_group(const replay_index_t *idx, size_t i);
/* Index of the group (actor_id, group_id), or -1. */
long replay_index_find(const replay_index_t *idx, const char *actor_id, uint64_t group_id);

size_t replay_index_n_steps(const replay_index_t *idx);
const replay_step_t *replay_index_step(const replay_index_t *idx, size_t i);

size_t replay_index_n_problems(const replay_index_t *idx);
const replay_problem_t *replay_index_problem(const replay_index_t *idx, size_t i);
/* Problems that make verify fail: ERROR ones, plus SKIPPED ones when the
 * index was loaded without skip_corrupt (then there are none anyway). */
size_t replay_index_n_errors(const replay_index_t *idx);

typedef struct {
    const char *actor_id;      /* owned by the index */
    uint64_t groups, used, dropped, pending;
} replay_actor_t;

typedef struct {
    uint64_t records;          /* read (decodable or not) */
    uint64_t undecodable;      /* failed protobuf decode / no kind */
    uint64_t received, outcomes, markers;
    uint64_t groups, used, used_incomplete, dropped, pending;
    uint64_t drops[REPLAY_N_DROP_REASONS];
    size_t n_actors;
    int has_time;
    uint64_t first_ms, last_ms;          /* written_unix_ms over all records */
    int has_versions;
    uint64_t version_min, version_max;   /* weights_version of the groups */
    int has_steps;
    uint64_t step_min, step_max;         /* of the StepMarkers */
    uint64_t scored_samples;             /* samples of USED groups */
    double reward_mean, reward_min, reward_max;
    double preference_rate, format_rate;
    uint32_t files;
    uint64_t file_bytes;                 /* on disk, headers included */
    uint64_t payload_bytes;              /* record payloads */
    traj_log_reader_stats_t reader;      /* skipped regions, torn tail */
} replay_summary_t;

void replay_index_summary(const replay_index_t *idx, replay_summary_t *out);
/* Actor i (0 <= i < summary.n_actors), sorted by actor id. */
void replay_index_actor(const replay_index_t *idx, size_t i, replay_actor_t *out);

/* ------------------------------------------------------------ filters */

/* Groups to select. Every set criterion must hold. */
typedef struct {
    int by_step;               /* USED at a step in [step_lo, step_hi] */
    uint64_t step_lo, step_hi;
    char actor[WIRE_MAX_ID_LEN + 1]; /* "" = any */
    int by_version;            /* weights_version in [version_lo, version_hi] */
    uint64_t version_lo, version_hi;
    int by_reward;             /* USED, mean reward of its samples in [lo, hi] */
    double reward_lo, reward_hi;
    int dropped;               /* DROPPED only ... */
    int drop_reason;           /* ... for this reason; -1 = any */
    uint64_t limit;            /* the first `limit` matches in log order; 0 = all */
} replay_filter_t;

void replay_filter_init(replay_filter_t *f);
/* 1 when any criterion (or a limit) is set. */
int replay_filter_active(const replay_filter_t *f);
/* Applies one command-line option: "--step" "A[:B]", "--actor" ID,
 * "--version" "A[:B]", "--reward" "A:B", "--dropped" [REASON] (value NULL =
 * any reason), "--limit" N. Ranges may leave one end open ("A:", ":B").
 * 0, -ENOENT when opt is not a filter option, -EINVAL on a bad value
 * (reason in err). */
int replay_filter_option(replay_filter_t *f, const char *opt, const char *value, char *err,
                         size_t errlen);
/* Whether group g passes f (limit not applied). */
int replay_filter_match(const replay_filter_t *f, const replay_group_t *g);
/* sel[i] = 1 for the selected groups (limit applied), caller-allocated with
 * replay_index_n_groups() entries. Returns the count. */
size_t replay_index_select(const replay_index_t *idx, const replay_filter_t *f,
                           unsigned char *sel);

/* "stale", "malformed", ... ("none" for 0, "?" outside the enum). */
const char *replay_drop_reason_name(int reason);
/* Accepts those names, case-insensitive, with or without "DROP_REASON_",
 * '-' for '_', or the number. -1 when unknown. */
int replay_drop_reason_parse(const char *s);

/* ------------------------------------------------------------ second pass */

typedef struct {
    Crl__TrajectoryRecord *rec; /* decoded; the callee may change it (cat renumbers seq) */
    const void *payload;        /* as stored */
    size_t len;
    uint32_t file_index;
    uint64_t offset;
    long group;                 /* received / outcome: its group's index; -1 for a
                                   marker, or a record the index does not know (a
                                   duplicate GroupReceived, an orphan outcome) */
} replay_record_t;

/* Returns 0 to continue, anything else stops the scan and is returned. */
typedef int (*replay_visit_fn)(void *ctx, const replay_record_t *r);

/* Reads the log again, up to the last record the index saw (a log still
 * being appended to reads as the same snapshot), and calls fn for every
 * decodable record. 0, fn's non-zero return, or -errno (reason in err). */
int replay_index_scan(const replay_index_t *idx, replay_visit_fn fn, void *ctx, char *err,
                      size_t errlen);

/* ------------------------------------------------------------ reports */

/* Human-readable summary (crl-replay info). */
void replay_index_print_info(const replay_index_t *idx, FILE *out);

/* Every problem, "FILE offset N: message", errors first marked ERROR, then
 * a last line "OK ..." or "FAILED: ..."; returns replay_index_n_errors(). */
size_t replay_index_print_verify(const replay_index_t *idx, FILE *out);

typedef enum { REPLAY_FORMAT_TEXT = 0, REPLAY_FORMAT_JSONL } replay_format_t;

/* Writes the selected groups, decoded (tok may be NULL: token ids are shown
 * instead of text), with their per-sample scores; in log order, or by (step,
 * batch item) when f selects steps. *n_written (may be NULL)
 * gets the group count. 0 or -errno with the reason in err. */
int replay_index_dump(const replay_index_t *idx, const replay_filter_t *f,
                      const tokenizer_t *tok, replay_format_t format, FILE *out,
                      size_t *n_written, char *err, size_t errlen);

/* Text of prompt ids: image-slot runs (-1) become "[N patches]", special
 * ids their names, unknown ids "<?ID>"; invalid UTF-8 and control bytes
 * (but \n, \t) become U+FFFD. Caller frees. NULL on out of memory. */
char *replay_prompt_text(const tokenizer_t *tok, const int32_t *ids, size_t n);
/* Text of a response (task_decode_response: a final <eos> dropped), cleaned
 * the same way. Caller frees. */
char *replay_response_text(const tokenizer_t *tok, const int32_t *ids, size_t n);

typedef struct {
    uint64_t groups;           /* groups kept */
    uint64_t records;          /* records written */
    uint64_t markers_kept, markers_dropped;
    uint64_t other_dropped;    /* records of unknown groups left out under a filter */
} replay_cat_stats_t;

/* Appends the records of the selected groups (their GroupReceived and
 * GroupOutcome records) and the StepMarkers whose groups are all selected
 * to out, in log order. Without an active filter every decodable record is
 * copied. Seq numbers are renumbered from *next_seq (updated), so the new
 * log verifies; StepMarker pending positions are remapped into the new log.
 * st accumulates (not reset). 0 or -errno (reason in err). */
int replay_index_cat(const replay_index_t *idx, const replay_filter_t *f, traj_log_t *out,
                     uint64_t *next_seq, replay_cat_stats_t *st, char *err, size_t errlen);

#endif
