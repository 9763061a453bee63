#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "metrics.h"

static char *make_tmpdir(const char *name)
{
    const char *base = getenv("CRL_TEST_TMP");
    char *dir = malloc(4096);
    snprintf(dir, 4096, "%s/%s-XXXXXX", base && base[0] ? base : "/tmp", name);
    cr_assert_not_null(mkdtemp(dir), "mkdtemp(%s) failed", dir);
    return dir;
}

/* Reads a whole file; caller frees. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0, r;
    char tmp[4096];
    while ((r = fread(tmp, 1, sizeof(tmp), f)) > 0) {
        if (n + r + 1 > cap) {
            cap = (n + r + 1) * 2;
            buf = realloc(buf, cap);
        }
        memcpy(buf + n, tmp, r);
        n += r;
    }
    fclose(f);
    if (buf == NULL)
        buf = calloc(1, 1);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* Splits text into lines and parses each with cJSON; all must parse. */
static int parse_lines(char *text, cJSON **out, int max)
{
    int n = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cr_assert_lt(n, max);
        out[n] = cJSON_Parse(line);
        cr_assert_not_null(out[n], "line %d is not valid JSON: %s", n + 1, line);
        n++;
    }
    return n;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot create %s", path);
    fputs(text, f);
    fclose(f);
}

Test(metrics, lines_are_valid_json_and_append)
{
    char *dir = make_tmpdir("metrics");
    char path[4200], err[512] = "";
    snprintf(path, sizeof(path), "%s/metrics.jsonl", dir);
    for (int round = 0; round < 2; round++) { /* reopening appends */
        metrics_t *m = metrics_open(path, err, sizeof(err));
        cr_assert_not_null(m, "open: %s", err);
        for (int step = 0; step < 3; step++) {
            metrics_begin_line(m, round * 3 + step);
            metrics_add_float(m, "reward", 0.41 + step);
            metrics_add_int(m, "drops.stale", -5 + step);
            metrics_add_string(m, "note", "say \"hi\"\n\ttab\\ \x01 é");
            metrics_add_bool(m, "ok", step % 2);
            metrics_add_float(m, "tiny", 1e-300);
            cr_assert_eq(metrics_end_line(m), 0);
        }
        metrics_close(&m);
        cr_assert_null(m);
    }
    char *text = slurp(path, NULL);
    cJSON *lines[16];
    int n = parse_lines(text, lines, 16);
    cr_assert_eq(n, 6, "want 6 lines, got %d", n);
    for (int i = 0; i < n; i++) {
        cJSON *j = lines[i];
        cr_assert_eq(cJSON_GetObjectItem(j, "step")->valuedouble, i);
        cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(j, "time")));
        double r = cJSON_GetObjectItem(j, "reward")->valuedouble;
        cr_assert_eq(r, 0.41 + i % 3, "reward %.17g, want %.17g (exact round trip)", r, 0.41 + i % 3);
        cr_assert_eq(cJSON_GetObjectItem(j, "drops.stale")->valuedouble, -5 + i % 3);
        cr_assert_str_eq(cJSON_GetObjectItem(j, "note")->valuestring, "say \"hi\"\n\ttab\\ \x01 é");
        cr_assert_eq(cJSON_IsTrue(cJSON_GetObjectItem(j, "ok")), i % 3 % 2);
        cr_assert_eq(cJSON_GetObjectItem(j, "tiny")->valuedouble, 1e-300);
        cJSON_Delete(j);
    }
    free(text);
    free(dir);
}

Test(metrics, nan_and_inf_are_written_as_null)
{
    char *dir = make_tmpdir("metrics");
    char path[4200], err[512] = "";
    snprintf(path, sizeof(path), "%s/m.jsonl", dir);
    metrics_t *m = metrics_open(path, err, sizeof(err));
    cr_assert_not_null(m, "%s", err);
    metrics_begin_line(m, 1);
    metrics_add_float(m, "kl", NAN);
    metrics_add_float(m, "up", INFINITY);
    metrics_add_float(m, "down", -INFINITY);
    metrics_add_float(m, "zero", -0.0);
    metrics_add_string(m, "none", NULL);
    cr_assert_eq(metrics_end_line(m), 0);
    metrics_close(&m);
    char *text = slurp(path, NULL);
    cr_assert(strstr(text, "\"kl\":null,\"up\":null,\"down\":null") != NULL, "got %s", text);
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j, "not JSON: %s", text);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "kl")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(j, "none")));
    cJSON_Delete(j);
    free(text);
    free(dir);
}

Test(metrics, misuse_is_an_error_and_writes_nothing)
{
    char *dir = make_tmpdir("metrics");
    char path[4200], err[512] = "";
    snprintf(path, sizeof(path), "%s/m.jsonl", dir);
    metrics_t *m = metrics_open(path, err, sizeof(err));
    cr_assert_not_null(m, "%s", err);
    metrics_add_int(m, "x", 1); /* no begin */
    cr_assert_eq(metrics_end_line(m), -EINVAL);
    metrics_begin_line(m, 1);
    metrics_add_int(m, NULL, 1);
    cr_assert_eq(metrics_end_line(m), -EINVAL);
    metrics_close(&m);
    metrics_close(&m); /* destroying NULL is a no-op */
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 0, "%lld bytes written by failed lines", (long long)st.st_size);
    cr_assert_null(metrics_open("/nonexistent-dir/m.jsonl", err, sizeof(err)));
    cr_assert(strstr(err, "/nonexistent-dir/m.jsonl") != NULL, "error does not name the file: %s", err);
    free(dir);
}

Test(metrics, time_continues_from_set_elapsed)
{
    char *dir = make_tmpdir("metrics");
    char path[4200], err[512] = "";
    snprintf(path, sizeof(path), "%s/m.jsonl", dir);
    metrics_t *m = metrics_open(path, err, sizeof(err));
    cr_assert_not_null(m, "%s", err);
    metrics_set_elapsed(m, 100.0);
    metrics_begin_line(m, 5);
    cr_assert_eq(metrics_end_line(m), 0);
    metrics_close(&m);
    char *text = slurp(path, NULL);
    cJSON *j = cJSON_Parse(text);
    double t = cJSON_GetObjectItem(j, "time")->valuedouble;
    /* Tolerance: the line is written within a second of set_elapsed. */
    cr_assert(t >= 100.0 && t < 101.0, "time %g, want ~100", t);
    cJSON_Delete(j);
    free(text);
    free(dir);
}

Test(metrics, eta_and_duration_formatting)
{
    cr_assert_float_eq(metrics_eta(50, 100, 10.0), 10.0, 1e-12);
    cr_assert_float_eq(metrics_eta(1, 4, 2.0), 6.0, 1e-12);
    cr_assert_eq(metrics_eta(0, 100, 5.0), -1);
    cr_assert_eq(metrics_eta(100, 100, 5.0), 0);
    char b[32];
    cr_assert_str_eq(metrics_format_duration(12.4, b, sizeof(b)), "12s");
    cr_assert_str_eq(metrics_format_duration(245, b, sizeof(b)), "4m05s");
    cr_assert_str_eq(metrics_format_duration(3720, b, sizeof(b)), "1h02m");
    cr_assert_str_eq(metrics_format_duration(-1, b, sizeof(b)), "?");
    cr_assert_str_eq(metrics_format_duration(NAN, b, sizeof(b)), "?");
}

Test(metrics, progress_lines_mode_is_throttled_and_keeps_the_last)
{
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    progress_t p;
    progress_init(&p, f, PROGRESS_LINES, 3600.0);
    for (int i = 1; i <= 5; i++)
        progress_line(&p, "step %d/5 reward %.2f", i, 0.1 * i);
    progress_end(&p);
    rewind(f);
    char text[1024] = "";
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    cr_assert_str_eq(text, "step 1/5 reward 0.10\nstep 5/5 reward 0.50\n",
                     "want the first line and the final one, got: %s", text);
}

Test(metrics, progress_tty_mode_rewrites_one_line)
{
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    progress_t p;
    progress_init(&p, f, PROGRESS_TTY, 0);
    progress_line(&p, "step %d", 1);
    progress_line(&p, "step %d", 2); /* within 0.1 s: held back */
    progress_end(&p);
    rewind(f);
    char text[1024] = "";
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    cr_assert_str_eq(text, "\rstep 1\033[K\rstep 2\033[K\n", "got: %s", text);
}

static const char *gnuplot_missing(void)
{
    return access("/usr/bin/gnuplot", X_OK) == 0 || access("/usr/local/bin/gnuplot", X_OK) == 0
               ? NULL
               : "gnuplot is not installed";
}

static void assert_png(const char *path)
{
    size_t len = 0;
    char *png = slurp(path, &len);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    cr_assert_gt(len, 1000u, "%s has only %zu bytes", path, len);
    cr_assert_eq(memcmp(png, sig, 8), 0, "%s does not start with the PNG signature", path);
    free(png);
}

Test(metrics, plot_writes_a_png)
{
    if (gnuplot_missing())
        cr_skip_test("skipped: %s", gnuplot_missing());
    /* A directory name that would break a naively quoted gnuplot script. */
    char *base = make_tmpdir("plot");
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/we'ird \"dir\" @x $y", base);
    cr_assert_eq(mkdir(dir, 0700), 0);
    char jsonl[4300], png[4300], err[1024] = "";
    snprintf(jsonl, sizeof(jsonl), "%s/metrics.jsonl", dir);
    snprintf(png, sizeof(png), "%s/curves.png", dir);
    metrics_t *m = metrics_open(jsonl, err, sizeof(err));
    cr_assert_not_null(m, "%s", err);
    for (int s = 1; s <= 20; s++) {
        metrics_begin_line(m, s);
        metrics_add_float(m, "reward", 0.3 + 0.02 * s);
        metrics_add_float(m, "kl", s == 7 ? NAN : 0.001 * s);
        metrics_add_int(m, "live_actors", 2);
        if (s % 5 == 0) /* a sparse field, e.g. a periodic evaluation */
            metrics_add_float(m, "eval_acc", 0.4 + 0.01 * s);
        cr_assert_eq(metrics_end_line(m), 0);
    }
    metrics_close(&m);
    const char *fields[] = {"reward", "kl", "live_actors", "eval_acc", "never_logged"};
    int rc = metrics_plot(jsonl, png, fields, 5, err, sizeof(err));
    cr_assert_eq(rc, 0, "plot failed: %s", err);
    assert_png(png);
    free(base);
}

Test(metrics, plot_tolerates_torn_lines_and_odd_field_names)
{
    if (gnuplot_missing())
        cr_skip_test("skipped: %s", gnuplot_missing());
    char *dir = make_tmpdir("plot");
    char jsonl[4200], png[4200], err[1024] = "";
    snprintf(jsonl, sizeof(jsonl), "%s/m.jsonl", dir);
    snprintf(png, sizeof(png), "%s/p.png", dir);
    write_text(jsonl, "{\"step\":1,\"a\\\"b@$\":0.5}\n"
                      "not json\n"
                      "{\"no_step\":1}\n"
                      "{\"step\":2,\"a\\\"b@$\":0.7}\n"
                      "{\"step\":3,\"a\\\"b@$\":0.");
    const char *fields[] = {"a\"b@$"};
    int rc = metrics_plot(jsonl, png, fields, 1, err, sizeof(err));
    cr_assert_eq(rc, 0, "plot failed: %s", err);
    assert_png(png);
    free(dir);
}

Test(metrics, plot_errors_name_the_problem)
{
    char *dir = make_tmpdir("plot");
    char jsonl[4200], png[4200], err[1024] = "";
    snprintf(jsonl, sizeof(jsonl), "%s/m.jsonl", dir);
    snprintf(png, sizeof(png), "%s/p.png", dir);
    write_text(jsonl, "{\"step\":1,\"reward\":0.5}\n");
    const char *fields[] = {"reward"};

    setenv("CRL_GNUPLOT", "/nonexistent/gnuplot", 1);
    int rc = metrics_plot(jsonl, png, fields, 1, err, sizeof(err));
    cr_assert_eq(rc, -ENOENT, "rc %d: %s", rc, err);
    cr_assert(strstr(err, "gnuplot not found") && strstr(err, "best-effort"), "got: %s", err);
    unsetenv("CRL_GNUPLOT");

    if (gnuplot_missing())
        return;
    char missing[4300];
    snprintf(missing, sizeof(missing), "%s/absent.jsonl", dir);
    rc = metrics_plot(missing, png, fields, 1, err, sizeof(err));
    cr_assert_lt(rc, 0);
    cr_assert(strstr(err, "absent.jsonl") != NULL, "error does not name the file: %s", err);

    write_text(jsonl, "garbage\n");
    rc = metrics_plot(jsonl, png, fields, 1, err, sizeof(err));
    cr_assert_eq(rc, -ENODATA, "rc %d: %s", rc, err);
    cr_assert(strstr(err, "no lines with a numeric \"step\"") != NULL, "got: %s", err);

    cr_assert_eq(metrics_plot(jsonl, png, fields, 0, err, sizeof(err)), -EINVAL);
    struct stat st;
    cr_assert_neq(stat(png, &st), 0, "a failed plot left a PNG behind");
    free(dir);
}
