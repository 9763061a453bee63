#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stb_image_write.h>

#include "dataset.h"

/* ---- fixtures: a temp folder with tiny PNGs and JSONL files ----------- */

static char *make_tmpdir(void)
{
    const char *base = getenv("CRL_TEST_TMP");
    char *tmpl = NULL;
    cr_assert(asprintf(&tmpl, "%s/dataset-XXXXXX", base && base[0] ? base : "/tmp") > 0);
    cr_assert_not_null(mkdtemp(tmpl), "mkdtemp(%s): %s", tmpl, strerror(errno));
    return tmpl;
}

static char *path_in(const char *dir, const char *name)
{
    char *p = NULL;
    cr_assert(asprintf(&p, "%s/%s", dir, name) > 0);
    return p;
}

/* Solid-colour w x h RGB PNG. */
static void write_png(const char *dir, const char *name, int w, int h, uint8_t r, uint8_t g,
                      uint8_t b)
{
    char *p = path_in(dir, name);
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h; i++) {
        px[3 * i] = r;
        px[3 * i + 1] = g;
        px[3 * i + 2] = b;
    }
    cr_assert(stbi_write_png(p, w, h, 3, px, w * 3), "stbi_write_png(%s) failed", p);
    free(px);
    free(p);
}

static void write_file(const char *dir, const char *name, const char *text, size_t len)
{
    char *p = path_in(dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f, "fopen(%s): %s", p, strerror(errno));
    cr_assert_eq(fwrite(text, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
    free(p);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    write_file(dir, name, text, strlen(text));
}

static dataset_options_t opts(int size, dataset_on_error_t on_error)
{
    dataset_options_t o;
    dataset_options_default(&o);
    o.image_size = size;
    o.on_error = on_error;
    return o;
}

#define GOOD_POLICY "{\"id\":\"p0\",\"image\":\"img.png\",\"question\":\"How many?\",\"answer\":\"2\"}"

/* ---- loading ---------------------------------------------------------- */

Test(dataset, defaults)
{
    dataset_options_t o;
    dataset_options_default(&o);
    cr_assert_eq(o.image_size, 32);
    cr_assert_eq(o.on_error, DATASET_ON_ERROR_SKIP);
    cr_assert_eq(o.max_error_logs, 20);
    cr_assert_eq(o.max_records, 0);
}

Test(dataset, loads_every_record_kind)
{
    char *dir = make_tmpdir();
    char *sub = path_in(dir, "images");
    cr_assert_eq(mkdir(sub, 0700), 0);
    write_png(sub, "red.png", 8, 8, 255, 0, 0);
    write_png(dir, "blue.png", 5, 7, 0, 0, 255);
    write_text(dir, "d.jsonl",
               "{\"id\":\"c1\",\"image\":\"images/red.png\",\"question\":\"How many circles?\","
               "\"answers\":[\"<think>one, two</think>\\\\boxed{2}\",\"<think>one</think>\\\\boxed{1}\"],"
               "\"preferred\":0,\"source\":\"miscount\",\"type\":\"count_shape\"}\n"
               "{\"id\":\"p1\",\"image\":\"blue.png\",\"question\":\"What colour?\",\"answer\":\"blue\","
               "\"reference\":\"<think>it is blue</think>\\\\boxed{blue}\"}\n"
               "{\"question\":\"Q? Answer 1: x Answer 2: y\",\"answer\":\"2\",\"image\":\"blue.png\"}\n"
               "{\"id\":7,\"image\":\"images/red.png\",\"caption\":\"A red square.\"}\n"
               "{\"id\":\"t1\",\"image\":null,\"question\":\"2+2?\",\"answer\":\"4\"}\n"
               "{\"id\":\"t2\",\"question\":\"Pick\",\"answers\":[\"x\",\"y\"],\"preferred\":1,"
               "\"extra\":{\"ignored\":true}}\n");
    char *path = path_in(dir, "d.jsonl");
    dataset_options_t o = opts(4, DATASET_ON_ERROR_STOP);
    char err[512];
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "load failed: %s", err);
    cr_assert_eq(dataset_size(ds), 6);
    cr_assert_eq(dataset_n_skipped(ds), 0);
    cr_assert_eq(dataset_count(ds, DATASET_CRITIC), 2);
    cr_assert_eq(dataset_count(ds, DATASET_POLICY), 3);
    cr_assert_eq(dataset_count(ds, DATASET_CAPTION), 1);
    cr_assert_eq(dataset_n_images(ds), 2, "two distinct files, got %zu", dataset_n_images(ds));
    cr_assert_eq(dataset_image_size(ds), 4);

    const dataset_record_t *r = dataset_get(ds, 0);
    cr_assert_eq(r->kind, DATASET_CRITIC);
    cr_assert_str_eq(r->id, "c1");
    cr_assert_str_eq(r->question, "How many circles?");
    cr_assert_str_eq(r->answers[0], "<think>one, two</think>\\boxed{2}");
    cr_assert_str_eq(r->answers[1], "<think>one</think>\\boxed{1}");
    cr_assert_eq(r->preferred, 0);
    cr_assert_str_eq(r->source, "miscount");
    cr_assert_str_eq(r->type, "count_shape");
    cr_assert_str_eq(r->image_path, "images/red.png");
    cr_assert_eq(r->line, 1);
    const uint8_t *img = dataset_image(ds, r); /* (3, 4, 4) */
    cr_assert_not_null(img);
    for (int i = 0; i < 16; i++) {
        cr_assert(img[i] >= 253, "R plane [%d]: expected ~255, got %d", i, img[i]);
        cr_assert(img[16 + i] <= 2, "G plane [%d]: expected ~0, got %d", i, img[16 + i]);
        cr_assert(img[32 + i] <= 2, "B plane [%d]: expected ~0, got %d", i, img[32 + i]);
    }

    r = dataset_get(ds, 1);
    cr_assert_eq(r->kind, DATASET_POLICY);
    cr_assert_str_eq(r->answer, "blue");
    cr_assert_str_eq(r->reference, "<think>it is blue</think>\\boxed{blue}");
    cr_assert_eq(r->preferred, -1);
    img = dataset_image(ds, r);
    cr_assert_not_null(img);
    cr_assert(img[0] <= 2 && img[32] >= 253, "blue image: R %d B %d", img[0], img[32]);

    r = dataset_get(ds, 2); /* the paper's published RL form */
    cr_assert_eq(r->kind, DATASET_POLICY);
    cr_assert_str_eq(r->id, "L3", "default id is L<line>, got %s", r->id);
    cr_assert_str_eq(r->answer, "2");
    cr_assert_null(r->reference);
    cr_assert_null(r->source);
    cr_assert_null(r->type);

    r = dataset_get(ds, 3);
    cr_assert_eq(r->kind, DATASET_CAPTION);
    cr_assert_str_eq(r->id, "7");
    cr_assert_str_eq(r->caption, "A red square.");
    cr_assert_null(r->question);
    cr_assert_eq(dataset_image(ds, r), dataset_image(ds, dataset_get(ds, 0)));

    for (size_t i = 4; i < 6; i++) {
        r = dataset_get(ds, i);
        cr_assert_null(r->image_path, "record %zu is text-only", i);
        cr_assert_eq(r->image, -1);
        cr_assert_null(dataset_image(ds, r));
    }
    cr_assert_eq(dataset_get(ds, 5)->preferred, 1);
    cr_assert_null(dataset_get(ds, 6), "out of range");
    dataset_destroy(&ds);
    cr_assert_null(ds);
    dataset_destroy(&ds); /* no-op */
    free(path);
    free(sub);
    free(dir);
}

Test(dataset, image_cache_shares_one_copy_per_file)
{
    char *dir = make_tmpdir();
    char *sub = path_in(dir, "sub");
    cr_assert_eq(mkdir(sub, 0700), 0);
    write_png(dir, "img.png", 6, 6, 10, 20, 30);
    write_png(dir, "other.png", 6, 6, 40, 50, 60);
    char *abs = path_in(dir, "img.png");
    char *text = NULL;
    cr_assert(asprintf(&text,
                       "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"img.png\"}\n"
                       "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"./img.png\"}\n"
                       "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"sub/../img.png\"}\n"
                       "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"%s\"}\n"
                       "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"other.png\"}\n",
                       abs) > 0);
    write_text(dir, "d.jsonl", text);
    char *path = path_in(dir, "d.jsonl");
    dataset_options_t o = opts(3, DATASET_ON_ERROR_STOP);
    char err[512];
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "%s", err);
    cr_assert_eq(dataset_n_images(ds), 2, "expected 2 decoded images, got %zu",
                 dataset_n_images(ds));
    const uint8_t *first = dataset_image(ds, dataset_get(ds, 0));
    for (size_t i = 1; i < 4; i++)
        cr_assert_eq(dataset_image(ds, dataset_get(ds, i)), first, "record %zu not shared", i);
    cr_assert_neq(dataset_image(ds, dataset_get(ds, 4)), first);
    cr_assert(first[0] >= 9 && first[0] <= 11, "R: expected 10, got %d", first[0]);
    dataset_destroy(&ds);
    free(text);
    free(abs);
    free(path);
    free(sub);
    free(dir);
}

Test(dataset, image_paths_are_relative_to_the_jsonl_folder)
{
    char *dir = make_tmpdir();
    char *data = path_in(dir, "data");
    cr_assert_eq(mkdir(data, 0700), 0);
    write_png(data, "img.png", 4, 4, 1, 2, 3);
    write_text(data, "d.jsonl", GOOD_POLICY "\n");
    /* the working directory holds no img.png */
    cr_assert_eq(chdir(dir), 0);
    dataset_options_t o = opts(4, DATASET_ON_ERROR_STOP);
    char err[512];
    dataset_t *ds = dataset_load("data/d.jsonl", &o, err, sizeof(err));
    cr_assert_not_null(ds, "relative JSONL path: %s", err);
    cr_assert_not_null(dataset_image(ds, dataset_get(ds, 0)));
    dataset_destroy(&ds);
    /* a bare file name: folder "." */
    cr_assert_eq(chdir(data), 0);
    ds = dataset_load("d.jsonl", &o, err, sizeof(err));
    cr_assert_not_null(ds, "bare JSONL name: %s", err);
    dataset_destroy(&ds);
    free(data);
    free(dir);
}

/* ---- bad records -------------------------------------------------------- */

struct bad_case {
    const char *line;
    const char *reason; /* substring the message must contain */
};

static const struct bad_case BAD[] = {
    {"{\"question\": \"q\", \"answer\": ", "bad JSON"},
    {"{\"question\":\"q\",\"answer\":\"a\"} trailing", "bad JSON"},
    {"[1, 2]", "must be a JSON object (got array)"},
    {"\"just a string\"", "must be a JSON object (got string)"},
    {"{\"question\":\"q\"}", "unknown record shape"},
    {"{\"question\":\"q\",\"preferred\":0,\"answer\":\"a\"}", "\"preferred\" given but \"answers\" missing"},
    {"{\"answers\":[\"a\",\"b\"],\"preferred\":0}", "missing \"question\""},
    {"{\"question\":5,\"answers\":[\"a\",\"b\"],\"preferred\":0}", "\"question\" must be a string (got number)"},
    {"{\"question\":\"\",\"answers\":[\"a\",\"b\"],\"preferred\":0}", "empty \"question\""},
    {"{\"question\":\"  \\n\",\"answer\":\"a\"}", "empty \"question\""},
    {"{\"question\":\"q\",\"answers\":[\"a\",\"b\",\"c\"],\"preferred\":0}", "exactly 2 strings (got 3)"},
    {"{\"question\":\"q\",\"answers\":[\"a\"],\"preferred\":0}", "exactly 2 strings (got 1)"},
    {"{\"question\":\"q\",\"answers\":\"ab\",\"preferred\":0}", "\"answers\" must be an array of 2 strings (got string)"},
    {"{\"question\":\"q\",\"answers\":[\"a\",3],\"preferred\":0}", "\"answers\"[1] must be a string (got number)"},
    {"{\"question\":\"q\",\"answers\":[\"\",\"b\"],\"preferred\":0}", "\"answers\"[0] is empty"},
    {"{\"question\":\"q\",\"answers\":[\"a\",\"b\"]}", "missing \"preferred\""},
    {"{\"question\":\"q\",\"answers\":[\"a\",\"b\"],\"preferred\":2}", "\"preferred\" must be 0 or 1 (got 2)"},
    {"{\"question\":\"q\",\"answers\":[\"a\",\"b\"],\"preferred\":0.5}", "\"preferred\" must be 0 or 1 (got 0.5)"},
    {"{\"question\":\"q\",\"answers\":[\"a\",\"b\"],\"preferred\":\"1\"}", "\"preferred\" must be 0 or 1 (got string)"},
    {"{\"question\":\"q\",\"answers\":[\"a\",\"b\"],\"preferred\":true}", "\"preferred\" must be 0 or 1 (got boolean)"},
    {"{\"question\":\"q\",\"answer\":\"\"}", "empty \"answer\""},
    {"{\"question\":\"q\",\"answer\":3}", "\"answer\" must be a string (got number)"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"reference\":\"just a\"}", "\"reference\" is not"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"reference\":7}", "\"reference\" must be a string"},
    {"{\"caption\":\"a red square\"}", "caption record needs an \"image\""},
    {"{\"caption\":\"\",\"image\":\"img.png\"}", "empty \"caption\""},
    {"{\"question\":\"q\",\"answer\":\"a\",\"image\":\"nope.png\"}", "image \"nope.png\" not found"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"image\":\"junk.png\"}", "image \"junk.png\" unusable"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"image\":3}", "\"image\" must be a string (got number)"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"image\":\"\"}", "empty \"image\""},
    {"{\"question\":\"q\",\"answer\":\"a\",\"id\":[1]}", "\"id\" must be a non-empty string or an integer"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"id\":1.5}", "\"id\" must be a non-empty string or an integer"},
    {"{\"question\":\"q\",\"answer\":\"a\",\"source\":{}}", "\"source\" must be a string (got object)"},
};
#define N_BAD (sizeof(BAD) / sizeof(BAD[0]))

/* A folder with img.png, junk.png (not an image) and d.jsonl = a good
 * record, a blank line, then `bad` on line 3, then a good record. */
static char *bad_fixture(const char *bad, size_t bad_len, char **dir_out)
{
    char *dir = make_tmpdir();
    write_png(dir, "img.png", 4, 4, 9, 9, 9);
    write_text(dir, "junk.png", "this is not a PNG file");
    size_t cap = bad_len + 2 * strlen(GOOD_POLICY) + 8;
    char *text = malloc(cap);
    size_t n = 0;
    n += (size_t)sprintf(text + n, "%s\n\n", GOOD_POLICY);
    memcpy(text + n, bad, bad_len);
    n += bad_len;
    n += (size_t)sprintf(text + n, "\n%s\n", GOOD_POLICY);
    write_file(dir, "d.jsonl", text, n);
    free(text);
    *dir_out = dir;
    return path_in(dir, "d.jsonl");
}

static void check_bad(const char *bad, size_t bad_len, const char *reason)
{
    char *dir;
    char *path = bad_fixture(bad, bad_len, &dir);
    char want[1024], err[1024];
    snprintf(want, sizeof(want), "%s:3: ", path); /* then the reason */

    /* skip: the two good records load, the bad one is counted and kept */
    dataset_options_t o = opts(4, DATASET_ON_ERROR_SKIP);
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "skip mode must load (line %s): %s", bad, err);
    cr_assert_eq(dataset_size(ds), 2, "line %s: expected 2 records, got %zu", bad,
                 dataset_size(ds));
    cr_assert_eq(dataset_n_skipped(ds), 1);
    const char *msg = dataset_skip_message(ds, 0);
    cr_assert_not_null(msg);
    cr_assert(strncmp(msg, want, strlen(want)) == 0 && strstr(msg, reason),
              "skip message: expected \"%s...%s\", got \"%s\"", want, reason, msg);
    char *msg_copy = strdup(msg);
    cr_assert_null(dataset_skip_message(ds, 1));
    cr_assert_eq(dataset_get(ds, 1)->line, 4, "line numbers count blank and bad lines");
    dataset_destroy(&ds);

    /* stop: the load fails with the same message */
    o.on_error = DATASET_ON_ERROR_STOP;
    err[0] = '\0';
    ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_null(ds, "stop mode must fail on %s", bad);
    cr_assert(strcmp(err, msg_copy) == 0, "stop message: expected \"%s\", got \"%s\"", msg_copy,
              err);
    free(msg_copy);
    free(path);
    free(dir);
}

Test(dataset, every_bad_record_is_reported_with_file_line_and_reason)
{
    for (size_t i = 0; i < N_BAD; i++)
        check_bad(BAD[i].line, strlen(BAD[i].line), BAD[i].reason);
}

Test(dataset, nul_byte_in_a_line_is_a_bad_record)
{
    const char line[] = "{\"question\":\"q\0\",\"answer\":\"a\"}";
    check_bad(line, sizeof(line) - 1, "NUL byte");
}

Test(dataset, skip_logs_are_capped_but_all_bad_records_counted)
{
    char *dir = make_tmpdir();
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    fprintf(f, GOOD_POLICY "\n");
    for (int i = 0; i < 30; i++)
        fprintf(f, "{bad %d\n", i);
    fclose(f);
    write_png(dir, "img.png", 4, 4, 0, 0, 0);
    write_text(dir, "d.jsonl", text);
    char *path = path_in(dir, "d.jsonl");
    dataset_options_t o = opts(4, DATASET_ON_ERROR_SKIP);
    o.max_error_logs = 5;
    char err[512];
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "%s", err);
    cr_assert_eq(dataset_n_skipped(ds), 30, "expected 30 skipped, got %zu", dataset_n_skipped(ds));
    cr_assert_eq(dataset_size(ds), 1);
    cr_assert_not_null(dataset_skip_message(ds, 4));
    cr_assert(strstr(dataset_skip_message(ds, 4), ":6: bad JSON"), "%s",
              dataset_skip_message(ds, 4));
    cr_assert_null(dataset_skip_message(ds, 5), "only max_error_logs messages are kept");
    dataset_destroy(&ds);
    free(text);
    free(path);
    free(dir);
}

Test(dataset, files_without_usable_records_fail)
{
    char *dir = make_tmpdir();
    char err[512];
    write_text(dir, "bad.jsonl", "{nope\n[]\n");
    write_text(dir, "empty.jsonl", "\n  \n");
    char *bad = path_in(dir, "bad.jsonl"), *empty = path_in(dir, "empty.jsonl");
    char *missing = path_in(dir, "missing.jsonl");
    dataset_options_t o = opts(4, DATASET_ON_ERROR_SKIP);
    cr_assert_null(dataset_load(bad, &o, err, sizeof(err)));
    cr_assert(strstr(err, "no usable record (2 bad; first:"), "%s", err);
    cr_assert(strstr(err, ":1: bad JSON"), "%s", err);
    cr_assert_null(dataset_load(empty, &o, err, sizeof(err)));
    cr_assert(strstr(err, "no records"), "%s", err);
    cr_assert_null(dataset_load(missing, &o, err, sizeof(err)));
    cr_assert(strstr(err, "cannot open") && strstr(err, "missing.jsonl"), "%s", err);
    o.image_size = -1;
    cr_assert_null(dataset_load(bad, &o, err, sizeof(err)));
    cr_assert(strstr(err, "image_size"), "%s", err);
    free(bad);
    free(empty);
    free(missing);
    free(dir);
}

Test(dataset, records_sharing_a_bad_image_all_report_it)
{
    char *dir = make_tmpdir();
    write_text(dir, "junk.png", "\x89PNG but not really");
    write_png(dir, "img.png", 4, 4, 0, 0, 0);
    write_text(dir, "d.jsonl",
               "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"junk.png\"}\n" GOOD_POLICY "\n"
               "{\"question\":\"q2\",\"answer\":\"b\",\"image\":\"junk.png\"}\n");
    char *path = path_in(dir, "d.jsonl");
    dataset_options_t o = opts(4, DATASET_ON_ERROR_SKIP);
    char err[512];
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "%s", err);
    cr_assert_eq(dataset_n_skipped(ds), 2);
    cr_assert(strstr(dataset_skip_message(ds, 0), ":1: image \"junk.png\" unusable"), "%s",
              dataset_skip_message(ds, 0));
    cr_assert(strstr(dataset_skip_message(ds, 1), ":3: image \"junk.png\" unusable"), "%s",
              dataset_skip_message(ds, 1));
    cr_assert_eq(dataset_n_images(ds), 1);
    dataset_destroy(&ds);
    free(path);
    free(dir);
}

Test(dataset, very_long_lines_and_crlf_load_intact)
{
    char *dir = make_tmpdir();
    const size_t qlen = 1 << 20; /* far past any fixed line buffer */
    char *q = malloc(qlen + 1);
    for (size_t i = 0; i < qlen; i++)
        q[i] = (char)('a' + i % 26);
    q[qlen] = '\0';
    char *text = NULL;
    cr_assert(asprintf(&text,
                       "{\"question\":\"%s\",\"answer\":\"x\"}\r\n"
                       "{\"question\":\"short\",\"answer\":\"y\"}\r\n",
                       q) > 0);
    write_text(dir, "d.jsonl", text);
    char *path = path_in(dir, "d.jsonl");
    dataset_options_t o = opts(4, DATASET_ON_ERROR_STOP);
    char err[512];
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "%s", err);
    cr_assert_eq(dataset_size(ds), 2);
    cr_assert_eq(strlen(dataset_get(ds, 0)->question), qlen);
    cr_assert_eq(memcmp(dataset_get(ds, 0)->question, q, qlen), 0);
    cr_assert_str_eq(dataset_get(ds, 1)->answer, "y", "CR stripped");
    cr_assert_eq(dataset_get(ds, 1)->line, 2);
    dataset_destroy(&ds);
    free(text);
    free(q);
    free(path);
    free(dir);
}

Test(dataset, max_records_and_text_only_mode)
{
    char *dir = make_tmpdir();
    write_png(dir, "img.png", 4, 4, 0, 0, 0);
    write_text(dir, "d.jsonl",
               GOOD_POLICY "\n" GOOD_POLICY "\n"
               "{\"question\":\"q\",\"answer\":\"a\",\"image\":\"gone.png\"}\n" GOOD_POLICY "\n");
    char *path = path_in(dir, "d.jsonl");
    char err[512];
    dataset_options_t o = opts(4, DATASET_ON_ERROR_STOP);
    o.max_records = 2;
    dataset_t *ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "%s", err);
    cr_assert_eq(dataset_size(ds), 2, "max_records stops before the bad line");
    dataset_destroy(&ds);

    /* S = 0: no decoding, no pixels, but a missing file is still caught */
    o = opts(0, DATASET_ON_ERROR_SKIP);
    ds = dataset_load(path, &o, err, sizeof(err));
    cr_assert_not_null(ds, "%s", err);
    cr_assert_eq(dataset_size(ds), 3);
    cr_assert_eq(dataset_n_skipped(ds), 1);
    cr_assert(strstr(dataset_skip_message(ds, 0), ":3: image \"gone.png\" not found"), "%s",
              dataset_skip_message(ds, 0));
    cr_assert_eq(dataset_n_images(ds), 0);
    cr_assert_null(dataset_image(ds, dataset_get(ds, 0)));
    cr_assert_str_eq(dataset_get(ds, 0)->image_path, "img.png");
    dataset_destroy(&ds);
    free(path);
    free(dir);
}
