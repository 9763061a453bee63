/* dataset: JSON-lines records and their images (see dataset.h). */
#include "dataset.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image.h"
#include "log.h"
#include "reward.h"

#define REASON_MAX 512

/* One distinct image file: decoded into the image table, or the reason it
 * could not be, so that records sharing a bad file all say why without
 * decoding it again. */
typedef struct {
    char *key;   /* resolved path; NULL = empty slot */
    long index;  /* row of the image table; -1 = failed or not decoded (S = 0) */
    char *error; /* why it failed; NULL when it did not */
} cache_slot_t;

struct dataset {
    char *path;
    int image_size;
    dataset_record_t *records;
    size_t n_records, cap_records;
    uint8_t *images; /* (n_images, 3, S, S) */
    size_t n_images, cap_images;
    cache_slot_t *slots;
    size_t n_slots, n_used;
    size_t n_skipped;
    char **skip_msgs;
    size_t n_skip_msgs;
    size_t kind_count[3];
};

void dataset_options_default(dataset_options_t *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->image_size = 32;
    opt->on_error = DATASET_ON_ERROR_SKIP;
    opt->max_error_logs = 20;
    opt->max_records = 0;
}

const char *dataset_kind_name(dataset_kind_t kind)
{
    switch (kind) {
    case DATASET_CRITIC: return "critic";
    case DATASET_POLICY: return "policy";
    case DATASET_CAPTION: return "caption";
    }
    return "unknown";
}

/* ---- small helpers ---------------------------------------------------- */

static size_t image_bytes(const dataset_t *ds)
{
    return (size_t)3 * (size_t)ds->image_size * (size_t)ds->image_size;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static const char *json_type_name(const cJSON *v)
{
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsObject(v)) return "object";
    return "invalid";
}

static int is_blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n' && *s != '\v' && *s != '\f')
            return 0;
    return 1;
}

static void record_free(dataset_record_t *r)
{
    free((char *)r->id);
    free((char *)r->question);
    free((char *)r->answer);
    free((char *)r->reference);
    free((char *)r->answers[0]);
    free((char *)r->answers[1]);
    free((char *)r->caption);
    free((char *)r->source);
    free((char *)r->type);
    free((char *)r->image_path);
    memset(r, 0, sizeof(*r));
}

/* Result of one record's checks: OK, BAD (reason written), or -ENOMEM. */
enum { REC_OK = 0, REC_BAD = 1 };

/* Reads obj[key] as a string into *out (new copy).
 * required: absent/null is BAD; otherwise absent/null leaves *out NULL.
 * nonblank: an empty or all-space string is BAD. */
static int take_string(const cJSON *obj, const char *key, int required, int nonblank, char **out,
                       char *reason)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        if (!required)
            return REC_OK;
        snprintf(reason, REASON_MAX, "missing \"%s\"", key);
        return REC_BAD;
    }
    if (!cJSON_IsString(v) || !v->valuestring) {
        snprintf(reason, REASON_MAX, "\"%s\" must be a string (got %s)", key, json_type_name(v));
        return REC_BAD;
    }
    if (nonblank && is_blank(v->valuestring)) {
        snprintf(reason, REASON_MAX, "empty \"%s\"", key);
        return REC_BAD;
    }
    *out = strdup(v->valuestring);
    return *out ? REC_OK : -ENOMEM;
}

/* ---- image cache ------------------------------------------------------ */

static int cache_grow(dataset_t *ds)
{
    size_t n = ds->n_slots ? ds->n_slots * 2 : 64;
    cache_slot_t *slots = calloc(n, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    for (size_t i = 0; i < ds->n_slots; i++) {
        if (!ds->slots[i].key)
            continue;
        size_t j = hash_str(ds->slots[i].key) & (n - 1);
        while (slots[j].key)
            j = (j + 1) & (n - 1);
        slots[j] = ds->slots[i];
    }
    free(ds->slots);
    ds->slots = slots;
    ds->n_slots = n;
    return 0;
}

/* Slot for `key`, existing or new (key copied, index -1). NULL when out of memory. */
static cache_slot_t *cache_slot(dataset_t *ds, const char *key, int *fresh)
{
    if (2 * (ds->n_used + 1) > ds->n_slots && cache_grow(ds) != 0)
        return NULL;
    size_t j = hash_str(key) & (ds->n_slots - 1);
    while (ds->slots[j].key) {
        if (strcmp(ds->slots[j].key, key) == 0) {
            *fresh = 0;
            return &ds->slots[j];
        }
        j = (j + 1) & (ds->n_slots - 1);
    }
    ds->slots[j].key = strdup(key);
    if (!ds->slots[j].key)
        return NULL;
    ds->slots[j].index = -1;
    ds->slots[j].error = NULL;
    ds->n_used++;
    *fresh = 1;
    return &ds->slots[j];
}

/* Decodes `full` into a new row of the image table. */
static int decode_into_table(dataset_t *ds, const char *full, cache_slot_t *slot)
{
    if (ds->n_images == ds->cap_images) {
        size_t cap = ds->cap_images ? ds->cap_images * 2 : 16;
        uint8_t *p = realloc(ds->images, cap * image_bytes(ds));
        if (!p)
            return -ENOMEM;
        ds->images = p;
        ds->cap_images = cap;
    }
    char err[REASON_MAX];
    err[0] = '\0';
    uint8_t *dst = ds->images + ds->n_images * image_bytes(ds); /* (3, S, S) */
    if (image_load_rgb(full, ds->image_size, dst, err, sizeof(err)) != 0) {
        slot->error = strdup(err[0] ? err : "cannot decode");
        return slot->error ? 0 : -ENOMEM;
    }
    slot->index = (long)ds->n_images++;
    return 0;
}

/* Resolves rel against the JSONL file's folder, finds or loads the image.
 * Sets *index (-1 when not decoded because S = 0). */
static int resolve_image(dataset_t *ds, const char *dir, const char *rel, long *index,
                         char *reason)
{
    char *full = NULL, *canon = NULL;
    int rc = REC_OK;
    if (rel[0] == '/')
        full = strdup(rel);
    else if (asprintf(&full, "%s/%s", dir, rel) < 0)
        full = NULL;
    if (!full)
        return -ENOMEM;
    /* The canonical path is the cache key, so "a/../x.png" and "x.png"
     * share one decoded copy. */
    canon = realpath(full, NULL);
    if (!canon) {
        snprintf(reason, REASON_MAX, "image \"%s\" not found (%s: %s)", rel, full, strerror(errno));
        rc = REC_BAD;
        goto done;
    }
    int fresh = 0;
    cache_slot_t *slot = cache_slot(ds, canon, &fresh);
    if (!slot) {
        rc = -ENOMEM;
        goto done;
    }
    if (fresh) {
        if (ds->image_size > 0) {
            rc = decode_into_table(ds, canon, slot);
            if (rc < 0)
                goto done;
        } else if (access(canon, R_OK) != 0) {
            slot->error = strdup(strerror(errno));
            if (!slot->error) {
                rc = -ENOMEM;
                goto done;
            }
        }
    }
    if (slot->error) {
        snprintf(reason, REASON_MAX, "image \"%s\" unusable: %s", rel, slot->error);
        rc = REC_BAD;
        goto done;
    }
    *index = slot->index;
done:
    free(full);
    free(canon);
    return rc;
}

/* ---- one record ------------------------------------------------------- */

static int parse_record(dataset_t *ds, const char *dir, const char *line, size_t line_no,
                        dataset_record_t *rec, char *reason)
{
    memset(rec, 0, sizeof(*rec));
    rec->preferred = -1;
    rec->image = -1;
    rec->line = line_no;
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithOpts(line, &end, 1);
    int rc = REC_OK;
    if (!obj) {
        size_t col = end && end >= line ? (size_t)(end - line) + 1 : 0;
        snprintf(reason, REASON_MAX, "bad JSON near column %zu", col);
        return REC_BAD;
    }
    if (!cJSON_IsObject(obj)) {
        snprintf(reason, REASON_MAX, "a record must be a JSON object (got %s)", json_type_name(obj));
        rc = REC_BAD;
        goto done;
    }

    const cJSON *answers = cJSON_GetObjectItemCaseSensitive(obj, "answers");
    const cJSON *answer = cJSON_GetObjectItemCaseSensitive(obj, "answer");
    const cJSON *caption = cJSON_GetObjectItemCaseSensitive(obj, "caption");
    const cJSON *preferred = cJSON_GetObjectItemCaseSensitive(obj, "preferred");
    if (answers)
        rec->kind = DATASET_CRITIC;
    else if (preferred) {
        snprintf(reason, REASON_MAX, "\"preferred\" given but \"answers\" missing");
        rc = REC_BAD;
        goto done;
    } else if (answer)
        rec->kind = DATASET_POLICY;
    else if (caption)
        rec->kind = DATASET_CAPTION;
    else {
        snprintf(reason, REASON_MAX,
                 "unknown record shape: needs \"answers\"+\"preferred\" (critic), "
                 "\"answer\" (policy) or \"caption\"");
        rc = REC_BAD;
        goto done;
    }

    /* id: a string or an integer; absent = "L<line>". */
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    char idbuf[32];
    if (!id || cJSON_IsNull(id)) {
        snprintf(idbuf, sizeof(idbuf), "L%zu", line_no);
        rec->id = strdup(idbuf);
    } else if (cJSON_IsString(id) && id->valuestring && id->valuestring[0]) {
        rec->id = strdup(id->valuestring);
    } else if (cJSON_IsNumber(id) && fabs(id->valuedouble) < 9.0e15 &&
               id->valuedouble == (double)(long long)id->valuedouble) {
        /* The range check comes first: casting a double outside long long's
         * range is undefined behaviour (found by fuzz_dataset). Integers
         * beyond 2^53 are not exact in JSON doubles anyway. */
        snprintf(idbuf, sizeof(idbuf), "%lld", (long long)id->valuedouble);
        rec->id = strdup(idbuf);
    } else {
        snprintf(reason, REASON_MAX, "\"id\" must be a non-empty string or an integer (got %s)",
                 json_type_name(id));
        rc = REC_BAD;
        goto done;
    }
    if (!rec->id) {
        rc = -ENOMEM;
        goto done;
    }

    char *s = NULL;
    if ((rc = take_string(obj, "source", 0, 0, &s, reason)) != REC_OK)
        goto done;
    rec->source = s;
    if ((rc = take_string(obj, "type", 0, 0, &s, reason)) != REC_OK)
        goto done;
    rec->type = s;

    if (rec->kind == DATASET_CRITIC || rec->kind == DATASET_POLICY) {
        if ((rc = take_string(obj, "question", 1, 1, &s, reason)) != REC_OK)
            goto done;
        rec->question = s;
    }
    if (rec->kind == DATASET_CRITIC) {
        if (!cJSON_IsArray(answers) || cJSON_GetArraySize(answers) != 2) {
            if (cJSON_IsArray(answers))
                snprintf(reason, REASON_MAX, "\"answers\" must hold exactly 2 strings (got %d)",
                         cJSON_GetArraySize(answers));
            else
                snprintf(reason, REASON_MAX, "\"answers\" must be an array of 2 strings (got %s)",
                         json_type_name(answers));
            rc = REC_BAD;
            goto done;
        }
        for (int k = 0; k < 2; k++) {
            const cJSON *a = cJSON_GetArrayItem(answers, k);
            if (!cJSON_IsString(a) || !a->valuestring) {
                snprintf(reason, REASON_MAX, "\"answers\"[%d] must be a string (got %s)", k,
                         json_type_name(a));
                rc = REC_BAD;
                goto done;
            }
            if (is_blank(a->valuestring)) {
                snprintf(reason, REASON_MAX, "\"answers\"[%d] is empty", k);
                rc = REC_BAD;
                goto done;
            }
            rec->answers[k] = strdup(a->valuestring);
            if (!rec->answers[k]) {
                rc = -ENOMEM;
                goto done;
            }
        }
        if (!preferred) {
            snprintf(reason, REASON_MAX, "missing \"preferred\"");
            rc = REC_BAD;
            goto done;
        }
        if (!cJSON_IsNumber(preferred) ||
            (preferred->valuedouble != 0.0 && preferred->valuedouble != 1.0)) {
            if (cJSON_IsNumber(preferred))
                snprintf(reason, REASON_MAX, "\"preferred\" must be 0 or 1 (got %g)",
                         preferred->valuedouble);
            else
                snprintf(reason, REASON_MAX, "\"preferred\" must be 0 or 1 (got %s)",
                         json_type_name(preferred));
            rc = REC_BAD;
            goto done;
        }
        rec->preferred = preferred->valuedouble == 1.0;
    } else if (rec->kind == DATASET_POLICY) {
        if ((rc = take_string(obj, "answer", 1, 1, &s, reason)) != REC_OK)
            goto done;
        rec->answer = s;
        if ((rc = take_string(obj, "reference", 0, 0, &s, reason)) != REC_OK)
            goto done;
        rec->reference = s;
        if (s) {
            reward_parse_t p;
            reward_parse(s, strlen(s), &p);
            if (!p.format_ok) {
                snprintf(reason, REASON_MAX,
                         "\"reference\" is not \"<think>..</think>\\boxed{..}\"");
                rc = REC_BAD;
                goto done;
            }
        }
    } else {
        if ((rc = take_string(obj, "caption", 1, 1, &s, reason)) != REC_OK)
            goto done;
        rec->caption = s;
    }

    /* image: missing or null = none (caption records need one). */
    const cJSON *image = cJSON_GetObjectItemCaseSensitive(obj, "image");
    if (!image || cJSON_IsNull(image)) {
        if (rec->kind == DATASET_CAPTION) {
            snprintf(reason, REASON_MAX, "a caption record needs an \"image\"");
            rc = REC_BAD;
            goto done;
        }
    } else {
        if ((rc = take_string(obj, "image", 1, 1, &s, reason)) != REC_OK)
            goto done;
        rec->image_path = s;
        rc = resolve_image(ds, dir, s, &rec->image, reason);
    }
done:
    cJSON_Delete(obj);
    if (rc != REC_OK)
        record_free(rec);
    return rc;
}

/* ---- load ------------------------------------------------------------- */

static int push_record(dataset_t *ds, const dataset_record_t *rec)
{
    if (ds->n_records == ds->cap_records) {
        size_t cap = ds->cap_records ? ds->cap_records * 2 : 256;
        dataset_record_t *p = realloc(ds->records, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        ds->records = p;
        ds->cap_records = cap;
    }
    ds->records[ds->n_records++] = *rec;
    ds->kind_count[rec->kind]++;
    return 0;
}

dataset_t *dataset_load(const char *jsonl_path, const dataset_options_t *opt_in, char *err,
                        size_t errlen)
{
    dataset_options_t opt;
    if (opt_in)
        opt = *opt_in;
    else
        dataset_options_default(&opt);
    dataset_t *ds = NULL;
    FILE *f = NULL;
    char *line = NULL, *dir = NULL;
    size_t cap = 0, line_no = 0;
    char reason[REASON_MAX];

    if (!jsonl_path || !err) {
        if (err)
            snprintf(err, errlen, "dataset_load: NULL path");
        return NULL;
    }
    if (opt.image_size < 0 || opt.image_size > 4096) {
        snprintf(err, errlen, "%s: image_size %d out of range (0..4096)", jsonl_path,
                 opt.image_size);
        return NULL;
    }
    if (opt.on_error != DATASET_ON_ERROR_SKIP && opt.on_error != DATASET_ON_ERROR_STOP) {
        snprintf(err, errlen, "%s: unknown on_error policy %d", jsonl_path, (int)opt.on_error);
        return NULL;
    }
    ds = calloc(1, sizeof(*ds));
    if (!ds)
        goto oom;
    ds->image_size = opt.image_size;
    ds->path = strdup(jsonl_path);
    const char *slash = strrchr(jsonl_path, '/');
    dir = slash ? strndup(jsonl_path, (size_t)(slash - jsonl_path) + (slash == jsonl_path))
                : strdup(".");
    if (!ds->path || !dir)
        goto oom;
    f = fopen(jsonl_path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", jsonl_path, strerror(errno));
        goto fail;
    }

    ssize_t n;
    errno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        line_no++;
        /* A NUL inside a line would hide the rest of it from the parser. */
        int has_nul = strlen(line) != (size_t)n;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (!has_nul && is_blank(line))
            continue;
        dataset_record_t rec;
        int rc;
        if (has_nul) {
            snprintf(reason, sizeof(reason), "line holds a NUL byte");
            rc = REC_BAD;
        } else {
            rc = parse_record(ds, dir, line, line_no, &rec, reason);
        }
        if (rc < 0)
            goto oom;
        if (rc == REC_OK) {
            if (push_record(ds, &rec) != 0) {
                record_free(&rec);
                goto oom;
            }
            if (opt.max_records && ds->n_records >= opt.max_records)
                break;
            continue;
        }
        if (opt.on_error == DATASET_ON_ERROR_STOP) {
            snprintf(err, errlen, "%s:%zu: %s", jsonl_path, line_no, reason);
            goto fail;
        }
        if (ds->n_skipped < opt.max_error_logs) {
            /* grown as needed: max_error_logs may be set very large */
            char **msgs = realloc(ds->skip_msgs, (ds->n_skip_msgs + 1) * sizeof(*msgs));
            if (!msgs)
                goto oom;
            ds->skip_msgs = msgs;
            if (asprintf(&ds->skip_msgs[ds->n_skip_msgs], "%s:%zu: %s", jsonl_path, line_no,
                         reason) < 0) {
                ds->skip_msgs[ds->n_skip_msgs] = NULL;
                goto oom;
            }
            log_warn("skipping bad record %s", ds->skip_msgs[ds->n_skip_msgs]);
            ds->n_skip_msgs++;
        }
        ds->n_skipped++;
        errno = 0;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s:%zu: read error: %s", jsonl_path, line_no + 1,
                 strerror(errno ? errno : EIO));
        goto fail;
    }
    if (ds->n_skipped > 0)
        log_warn("%s: skipped %zu bad record(s) of %zu (%zu listed above)", jsonl_path,
                 ds->n_skipped, ds->n_skipped + ds->n_records, ds->n_skip_msgs);
    if (ds->n_records == 0) {
        if (ds->n_skipped > 0)
            snprintf(err, errlen, "%s: no usable record (%zu bad; first: %s)", jsonl_path,
                     ds->n_skipped, ds->n_skip_msgs ? ds->skip_msgs[0] : "?");
        else
            snprintf(err, errlen, "%s: no records", jsonl_path);
        goto fail;
    }
    log_info("%s: %zu records (%zu critic, %zu policy, %zu caption), %zu images, %zu skipped",
             jsonl_path, ds->n_records, ds->kind_count[DATASET_CRITIC],
             ds->kind_count[DATASET_POLICY], ds->kind_count[DATASET_CAPTION], ds->n_images,
             ds->n_skipped);
    free(line);
    free(dir);
    fclose(f);
    return ds;

oom:
    snprintf(err, errlen, "%s:%zu: out of memory", jsonl_path, line_no);
fail:
    free(line);
    free(dir);
    if (f)
        fclose(f);
    dataset_destroy(&ds);
    return NULL;
}

void dataset_destroy(dataset_t **pds)
{
    if (!pds || !*pds)
        return;
    dataset_t *ds = *pds;
    for (size_t i = 0; i < ds->n_records; i++)
        record_free(&ds->records[i]);
    free(ds->records);
    free(ds->images);
    for (size_t i = 0; i < ds->n_slots; i++) {
        free(ds->slots[i].key);
        free(ds->slots[i].error);
    }
    free(ds->slots);
    for (size_t i = 0; i < ds->n_skip_msgs; i++)
        free(ds->skip_msgs[i]);
    free(ds->skip_msgs);
    free(ds->path);
    free(ds);
    *pds = NULL;
}

size_t dataset_size(const dataset_t *ds)
{
    return ds ? ds->n_records : 0;
}

const dataset_record_t *dataset_get(const dataset_t *ds, size_t i)
{
    return ds && i < ds->n_records ? &ds->records[i] : NULL;
}

const uint8_t *dataset_image(const dataset_t *ds, const dataset_record_t *rec)
{
    if (!ds || !rec || rec->image < 0 || (size_t)rec->image >= ds->n_images)
        return NULL;
    return ds->images + (size_t)rec->image * image_bytes(ds);
}

int dataset_image_size(const dataset_t *ds)
{
    return ds ? ds->image_size : 0;
}

size_t dataset_n_images(const dataset_t *ds)
{
    return ds ? ds->n_images : 0;
}

size_t dataset_count(const dataset_t *ds, dataset_kind_t kind)
{
    if (!ds || (int)kind < 0 || kind > DATASET_CAPTION)
        return 0;
    return ds->kind_count[kind];
}

size_t dataset_n_skipped(const dataset_t *ds)
{
    return ds ? ds->n_skipped : 0;
}

const char *dataset_skip_message(const dataset_t *ds, size_t i)
{
    return ds && i < ds->n_skip_msgs ? ds->skip_msgs[i] : NULL;
}
