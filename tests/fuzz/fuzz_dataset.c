/* fuzz_dataset: the JSON-lines record parser (dataset_load) on arbitrary
 * bytes, image_size 0 (images are only checked to be readable files: no
 * decoder in the loop, and whatever path a record names is never read).
 * Each input is loaded twice: skipping bad records, and stopping at the
 * first. Properties: no crash / leak / UB; a failure names the file; every
 * loaded record has the fields its kind requires, non-empty; the two modes
 * agree (stop fails exactly when skip skipped something or found nothing). */
#include <string.h>

#include "dataset.h"
#include "fuzz_util.h"

static fuzz_file_t g_file;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    fuzz_file_init(&g_file, "fuzz-dataset.jsonl");
    return 0;
}

static void check_record(const dataset_record_t *r)
{
    FUZZ_CHECK(r->id && r->id[0], "record at line %zu without an id", r->line);
    FUZZ_CHECK(r->line >= 1, "line %zu", r->line);
    FUZZ_CHECK(r->image == -1, "image index %ld with image_size 0", r->image);
    switch (r->kind) {
    case DATASET_CRITIC:
        FUZZ_CHECK(r->question && r->question[0] && r->answers[0] && r->answers[0][0] &&
                       r->answers[1] && r->answers[1][0],
                   "critic record at line %zu misses a field", r->line);
        FUZZ_CHECK(r->preferred == 0 || r->preferred == 1, "preferred %d", r->preferred);
        break;
    case DATASET_POLICY:
        FUZZ_CHECK(r->question && r->question[0] && r->answer && r->answer[0],
                   "policy record at line %zu misses a field", r->line);
        FUZZ_CHECK(r->preferred == -1, "preferred %d on a policy record", r->preferred);
        break;
    case DATASET_CAPTION:
        FUZZ_CHECK(r->caption && r->caption[0] && r->image_path,
                   "caption record at line %zu misses a field", r->line);
        break;
    default:
        FUZZ_CHECK(0, "unknown kind %d", (int)r->kind);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    fuzz_file_set(&g_file, data, size);

    dataset_options_t opt;
    dataset_options_default(&opt);
    opt.image_size = 0;
    opt.on_error = DATASET_ON_ERROR_SKIP;
    opt.max_error_logs = 3;
    err[0] = '\0';
    dataset_t *ds = dataset_load(g_file.path, &opt, err, sizeof err);
    size_t n = 0, skipped = 0;
    if (ds) {
        n = dataset_size(ds);
        skipped = dataset_n_skipped(ds);
        FUZZ_CHECK(n > 0, "a loaded dataset must hold a record");
        size_t per_kind = 0;
        for (int k = DATASET_CRITIC; k <= DATASET_CAPTION; k++)
            per_kind += dataset_count(ds, (dataset_kind_t)k);
        FUZZ_CHECK(per_kind == n, "kind counts %zu != size %zu", per_kind, n);
        for (size_t i = 0; i < n; i++) {
            const dataset_record_t *r = dataset_get(ds, i);
            FUZZ_CHECK(r != NULL, "record %zu missing", i);
            check_record(r);
            FUZZ_CHECK(dataset_image(ds, r) == NULL, "an image with image_size 0");
            if (i > 0)
                FUZZ_CHECK(r->line > dataset_get(ds, i - 1)->line, "records out of line order");
        }
        FUZZ_CHECK(dataset_get(ds, n) == NULL, "dataset_get past the end");
        for (size_t i = 0; i < skipped && i < 3; i++) {
            const char *m = dataset_skip_message(ds, i);
            FUZZ_CHECK(m && strncmp(m, g_file.path, strlen(g_file.path)) == 0,
                       "skip message %zu does not name the file: %s", i, m ? m : "(null)");
        }
        dataset_destroy(&ds);
        FUZZ_CHECK(ds == NULL, "dataset_destroy left the pointer");
    } else {
        FUZZ_CHECK(strncmp(err, g_file.path, strlen(g_file.path)) == 0,
                   "error does not name the file: '%s'", err);
    }

    opt.on_error = DATASET_ON_ERROR_STOP;
    err[0] = '\0';
    dataset_t *ds2 = dataset_load(g_file.path, &opt, err, sizeof err);
    if (ds2) {
        FUZZ_CHECK(n > 0 && skipped == 0 && dataset_size(ds2) == n,
                   "stop mode loaded %zu records, skip mode %zu with %zu skipped",
                   dataset_size(ds2), n, skipped);
        dataset_destroy(&ds2);
    } else {
        FUZZ_CHECK(n == 0 || skipped > 0, "stop mode failed (%s) where skip mode skipped nothing",
                   err);
        FUZZ_CHECK(strncmp(err, g_file.path, strlen(g_file.path)) == 0,
                   "error does not name the file: '%s'", err);
    }
    return 0;
}
