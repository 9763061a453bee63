/* dataset: loads a JSON-lines file of critic, policy and caption records
 * (DESIGN §6) with their images, decoded once per distinct image file and
 * kept as uint8 (3, S, S). Owns every record string and image; read-only
 * once loaded, so several threads may read one dataset.
 *
 * Record kinds, told apart by their fields:
 *   critic  {"answers": [a0, a1], "preferred": 0|1, "question", ...}
 *   policy  {"question", "answer", optional "reference"}  — also the form of
 *           the paper's published RL data (the question shows both answers,
 *           the answer is the verdict), which therefore loads as is
 *   caption {"caption", "image"}  (no "answers", no "answer")
 * Common fields: "id" (string or integer; optional, defaults to "L<line>"),
 * "image" (path relative to the JSONL file's folder, or absolute; missing
 * or null = no image: text-only critic/policy records are allowed, caption
 * records must have an image), "source" and "type" (optional strings).
 * Other fields are ignored so that richer files load.
 *
 * A bad record (bad JSON, trailing garbage, a NUL byte, an unknown shape, a
 * missing or ill-typed field, an empty question/answer/caption, "answers"
 * not exactly two non-empty strings, "preferred" not 0 or 1, a "reference"
 * that is not "<think>..</think>\boxed{..}", an image that is missing or
 * does not decode) is reported as "FILE:LINE: reason" and, by option,
 * either skipped and counted or makes the load fail. Blank lines are not
 * records and are passed over. A file with no usable record fails. */
#ifndef CRL_DATASET_H
#define CRL_DATASET_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DATASET_CRITIC = 0,
    DATASET_POLICY = 1,
    DATASET_CAPTION = 2,
} dataset_kind_t;

typedef enum {
    DATASET_ON_ERROR_SKIP = 0, /* log (up to max_error_logs), count, go on */
    DATASET_ON_ERROR_STOP = 1, /* the load fails with the record's message */
} dataset_on_error_t;

typedef struct {
    /* S: images are decoded and resized to S x S. 0 = text-only model:
     * images are not decoded, only checked to be readable files, and
     * dataset_image() returns NULL. */
    int image_size;
    dataset_on_error_t on_error;
    size_t max_error_logs; /* skipped-record lines logged (and kept) before a summary; 20 */
    size_t max_records;    /* stop after this many good records; 0 = all */
} dataset_options_t;

/* A record; strings are owned by the dataset (valid until destroy),
 * absent ones are NULL. */
typedef struct {
    dataset_kind_t kind;
    const char *id;
    const char *question;   /* critic, policy */
    const char *answer;     /* policy: verifiable ground truth */
    const char *reference;  /* policy, optional: full reference response */
    const char *answers[2]; /* critic: two full responses */
    int preferred;          /* critic: 0 or 1; -1 for other kinds */
    const char *caption;    /* caption */
    const char *source;     /* optional */
    const char *type;       /* optional question type ("count_color", ...), for per-type metrics */
    const char *image_path; /* as written in the file; NULL = no image */
    long image;             /* index in the image table; -1 = no image (or S = 0) */
    size_t line;            /* 1-based line of the record in the file */
} dataset_record_t;

typedef struct dataset dataset_t;

/* image_size 32, skip bad records, 20 logged, all records. */
void dataset_options_default(dataset_options_t *opt);

/* Loads `jsonl_path`. opt NULL = defaults. Returns NULL on failure with the
 * reason ("FILE:LINE: ..." for a record) in err. Caller destroys. */
dataset_t *dataset_load(const char *jsonl_path, const dataset_options_t *opt, char *err,
                        size_t errlen);
void dataset_destroy(dataset_t **ds);

size_t dataset_size(const dataset_t *ds);
/* Record i (< dataset_size), or NULL when out of range. */
const dataset_record_t *dataset_get(const dataset_t *ds, size_t i);
/* The record's image, uint8 (3, S, S) channel-major, or NULL when it has
 * none. Records naming the same file share one copy. */
const uint8_t *dataset_image(const dataset_t *ds, const dataset_record_t *rec);
int dataset_image_size(const dataset_t *ds);
/* Distinct images decoded (the cache's size). */
size_t dataset_n_images(const dataset_t *ds);
/* Records of one kind. */
size_t dataset_count(const dataset_t *ds, dataset_kind_t kind);
/* Bad records skipped (DATASET_ON_ERROR_SKIP). */
size_t dataset_n_skipped(const dataset_t *ds);
/* Message of skipped record i ("FILE:LINE: reason") for i < the number
 * kept (min(n_skipped, max_error_logs)); NULL beyond. */
const char *dataset_skip_message(const dataset_t *ds, size_t i);

const char *dataset_kind_name(dataset_kind_t kind);

#endif
