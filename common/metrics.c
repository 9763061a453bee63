/* metrics: JSONL step records, live progress line, gnuplot PNG (metrics.h). */
#include "metrics.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

extern char **environ;

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------- writer ---------- */

struct metrics {
    int fd;
    double t_open;   /* monotonic seconds at open */
    double t_offset; /* elapsed seconds carried over from a previous process */
    char *buf;       /* the line being built */
    size_t len, cap;
    int in_line;
    int err;         /* first error of the current line (negative errno) */
};

metrics_t *metrics_open(const char *path, char *err, size_t errlen)
{
    metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    m->fd = -1;
    m->cap = 1024;
    m->buf = malloc(m->cap);
    if (m->buf == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    m->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (m->fd < 0) {
        snprintf(err, errlen, "%s: cannot open metrics file for appending: %s", path, strerror(errno));
        goto fail;
    }
    m->t_open = mono_now();
    return m;
fail:
    metrics_close(&m);
    return NULL;
}

void metrics_close(metrics_t **pm)
{
    if (pm == NULL || *pm == NULL)
        return;
    metrics_t *m = *pm;
    if (m->fd >= 0)
        close(m->fd);
    free(m->buf);
    free(m);
    *pm = NULL;
}

void metrics_set_elapsed(metrics_t *m, double seconds)
{
    m->t_offset = seconds - (mono_now() - m->t_open);
}

double metrics_elapsed(const metrics_t *m)
{
    return m->t_offset + (mono_now() - m->t_open);
}

static void put(metrics_t *m, const char *s, size_t n)
{
    if (m->err)
        return;
    if (m->len + n + 1 > m->cap) {
        size_t cap = m->cap;
        while (m->len + n + 1 > cap)
            cap *= 2;
        char *b = realloc(m->buf, cap);
        if (b == NULL) {
            m->err = -ENOMEM;
            return;
        }
        m->buf = b;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, s, n);
    m->len += n;
}

static void puts_(metrics_t *m, const char *s)
{
    put(m, s, strlen(s));
}

static void put_json_string(metrics_t *m, const char *s)
{
    put(m, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"':
            put(m, "\\\"", 2);
            break;
        case '\\':
            put(m, "\\\\", 2);
            break;
        case '\n':
            put(m, "\\n", 2);
            break;
        case '\t':
            put(m, "\\t", 2);
            break;
        case '\r':
            put(m, "\\r", 2);
            break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", *p);
                put(m, esc, 6);
            } else {
                put(m, (const char *)p, 1);
            }
        }
    }
    put(m, "\"", 1);
}

/* ,"key": */
static int put_key(metrics_t *m, const char *key)
{
    if (!m->in_line || key == NULL) {
        if (!m->err)
            m->err = -EINVAL;
        return -1;
    }
    put(m, ",", 1);
    put_json_string(m, key);
    put(m, ":", 1);
    return 0;
}

/* Shortest %g text that reads back to the same double. */
static void format_double(char *buf, size_t len, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) { /* "12000", not "1.2e+04" */
        snprintf(buf, len, "%.0f", v);
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

void metrics_begin_line(metrics_t *m, int64_t step)
{
    /* A line begun and never ended is dropped, and reported here. */
    int dangling = m->in_line;
    m->len = 0;
    m->err = 0;
    m->in_line = 1;
    char tmp[96];
    snprintf(tmp, sizeof(tmp), "{\"step\":%lld,\"time\":%.3f", (long long)step, metrics_elapsed(m));
    puts_(m, tmp);
    if (dangling)
        log_warn("metrics: a line was begun but never ended; dropped");
}

void metrics_add_int(metrics_t *m, const char *key, int64_t v)
{
    if (put_key(m, key) != 0)
        return;
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    puts_(m, tmp);
}

void metrics_add_float(metrics_t *m, const char *key, double v)
{
    if (put_key(m, key) != 0)
        return;
    if (!isfinite(v)) {
        puts_(m, "null");
        return;
    }
    char tmp[40];
    format_double(tmp, sizeof(tmp), v);
    puts_(m, tmp);
}

void metrics_add_string(metrics_t *m, const char *key, const char *v)
{
    if (put_key(m, key) != 0)
        return;
    if (v == NULL)
        puts_(m, "null");
    else
        put_json_string(m, v);
}

void metrics_add_bool(metrics_t *m, const char *key, int v)
{
    if (put_key(m, key) != 0)
        return;
    puts_(m, v ? "true" : "false");
}

int metrics_end_line(metrics_t *m)
{
    if (!m->in_line)
        return -EINVAL;
    put(m, "}\n", 2);
    m->in_line = 0;
    if (m->err) {
        log_warn("metrics: line dropped: %s", strerror(-m->err));
        return m->err;
    }
    /* One write per line; O_APPEND makes it land whole at the end. A
     * short write only happens on a full disk, where we finish the line
     * rather than leave a torn one. */
    size_t done = 0;
    while (done < m->len) {
        ssize_t w = write(m->fd, m->buf + done, m->len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        done += (size_t)w;
    }
    return 0;
}

/* ---------- progress ---------- */

void progress_init(progress_t *p, FILE *f, progress_mode_t mode, double interval_s)
{
    memset(p, 0, sizeof(*p));
    p->f = f;
    if (mode == PROGRESS_TTY)
        p->tty = 1;
    else if (mode == PROGRESS_LINES)
        p->tty = 0;
    else
        p->tty = isatty(fileno(f));
    p->interval_s = interval_s > 0 ? interval_s : 10.0;
    p->last_print = -1e30;
}

static int terminal_columns(FILE *f)
{
    struct winsize ws;
    if (ioctl(fileno(f), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 0;
}

static void progress_show(progress_t *p, double now)
{
    if (p->tty) {
        int n = (int)strlen(p->text);
        int cols = terminal_columns(p->f);
        /* A wrapped line cannot be rewritten with \r: cut it, at a UTF-8
         * character boundary. */
        if (cols > 1 && n > cols - 1) {
            n = cols - 1;
            while (n > 0 && ((unsigned char)p->text[n] & 0xC0) == 0x80)
                n--;
        }
        fprintf(p->f, "\r%.*s\033[K", n, p->text);
        fflush(p->f);
        p->shown_len = n > 0 ? n : 1;
    } else if (p->f == stderr) {
        log_info("%s", p->text);
    } else {
        fprintf(p->f, "%s\n", p->text);
        fflush(p->f);
    }
    p->last_print = now;
    p->pending = 0;
}

void progress_line(progress_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->text, sizeof(p->text), fmt, ap);
    va_end(ap);
    /* One status line: a newline in the text would break the rewrite. */
    for (char *c = p->text; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    double now = mono_now();
    double gap = p->tty ? 0.1 : p->interval_s;
    if (now - p->last_print >= gap)
        progress_show(p, now);
    else
        p->pending = 1;
}

void progress_end(progress_t *p)
{
    if (p->pending)
        progress_show(p, mono_now());
    if (p->tty && p->shown_len) {
        fputc('\n', p->f);
        fflush(p->f);
        p->shown_len = 0;
    }
}

double metrics_eta(int64_t step, int64_t total, double elapsed_s)
{
    if (step <= 0 || total <= 0 || !(elapsed_s >= 0))
        return -1;
    if (step >= total)
        return 0;
    return elapsed_s / (double)step * (double)(total - step);
}

char *metrics_format_duration(double s, char *buf, size_t len)
{
    if (!(s >= 0) || !isfinite(s)) {
        snprintf(buf, len, "?");
        return buf;
    }
    long t = (long)(s + 0.5);
    if (t < 60)
        snprintf(buf, len, "%lds", t);
    else if (t < 3600)
        snprintf(buf, len, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(buf, len, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    return buf;
}

/* ---------- plot ---------- */

#define PLOT_MAX_FIELDS 16
#define PLOT_TIMEOUT_S 60.0

/* Absolute path of the gnuplot to run, or NULL (err set). Caller frees. */
static char *find_gnuplot(char *err, size_t errlen)
{
    const char *env = getenv("CRL_GNUPLOT");
    if (env && env[0]) {
        char *abs = realpath(env, NULL);
        if (abs == NULL || access(abs, X_OK) != 0) {
            snprintf(err, errlen,
                     "gnuplot not found: CRL_GNUPLOT=%s is not an executable file; no plot written "
                     "(plotting is best-effort, the run continues)",
                     env);
            free(abs);
            return NULL;
        }
        return abs;
    }
    const char *path = getenv("PATH");
    if (path == NULL || !path[0])
        path = "/usr/local/bin:/usr/bin:/bin";
    const char *p = path;
    while (*p) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        char cand[4096];
        if (n > 0 && n + 9 < sizeof(cand)) {
            snprintf(cand, sizeof(cand), "%.*s/gnuplot", (int)n, p);
            struct stat st;
            if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
                /* Absolute, because gnuplot starts in another folder. */
                char *abs = realpath(cand, NULL);
                if (abs)
                    return abs;
            }
        }
        p += n;
        if (*p == ':')
            p++;
    }
    snprintf(err, errlen,
             "gnuplot not found on PATH (install gnuplot, or set CRL_GNUPLOT); no plot written "
             "(plotting is best-effort, the run continues)");
    return NULL;
}

/* A field name as a gnuplot title: only characters that mean nothing
 * inside a double-quoted gnuplot string (no quotes, backslashes, @, $). */
static void safe_title(const char *s, char *buf, size_t len)
{
    size_t i = 0;
    for (; s[i] && i + 1 < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 strchr(" _.:/+-()[]", c) != NULL;
        buf[i] = ok ? c : '_';
    }
    buf[i] = '\0';
}

typedef struct {
    double *rows; /* (n_rows, 1 + n_fields): step, then values (NaN = missing) */
    size_t n_rows, cap;
    int n_fields;
    int *n_values; /* (n_fields) */
    size_t skipped;
} plot_data_t;

static int read_metrics(const char *path, const char *const *fields, plot_data_t *d, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open metrics file: %s", path, strerror(errno));
        return -errno;
    }
    int rc = 0;
    char *line = NULL;
    size_t linecap = 0;
    ssize_t n;
    const size_t w = 1 + (size_t)d->n_fields;
    while ((n = getline(&line, &linecap, f)) > 0) {
        cJSON *j = NULL;
        /* A line without its newline is being written or was torn by a
         * crash: skip it like any unreadable line. */
        if (line[n - 1] == '\n')
            j = cJSON_ParseWithLength(line, (size_t)n);
        const cJSON *step = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
        if (!cJSON_IsObject(j) || !cJSON_IsNumber(step) || !isfinite(step->valuedouble)) {
            d->skipped++;
            cJSON_Delete(j);
            continue;
        }
        if (d->n_rows == d->cap) {
            size_t cap = d->cap ? 2 * d->cap : 256;
            double *r = realloc(d->rows, cap * w * sizeof(double));
            if (r == NULL) {
                cJSON_Delete(j);
                snprintf(err, errlen, "%s: out of memory", path);
                rc = -ENOMEM;
                goto out;
            }
            d->rows = r;
            d->cap = cap;
        }
        double *row = d->rows + d->n_rows * w;
        row[0] = step->valuedouble;
        for (int k = 0; k < d->n_fields; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, fields[k]);
            /* NaN = absent (skipped: sparse fields such as periodic evals
             * stay connected); +Inf = null or non-finite (drawn as a gap). */
            double x = NAN;
            if (cJSON_IsNumber(v))
                x = isfinite(v->valuedouble) ? v->valuedouble : INFINITY;
            else if (cJSON_IsBool(v))
                x = cJSON_IsTrue(v) ? 1 : 0;
            else if (cJSON_IsNull(v))
                x = INFINITY;
            row[1 + k] = x;
            if (isfinite(x))
                d->n_values[k]++;
        }
        d->n_rows++;
        cJSON_Delete(j);
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: read error: %s", path, strerror(errno));
        rc = -EIO;
    }
out:
    free(line);
    fclose(f);
    return rc;
}

static int write_text_file(const char *path, const char *text, char *err, size_t errlen)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        return -errno;
    }
    int ok = fputs(text, f) >= 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        snprintf(err, errlen, "%s: write failed", path);
        return -EIO;
    }
    return 0;
}

/* Appends printf output to a growing string; returns -1 on OOM. */
static int sappend(char **s, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int sappend(char **s, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(*s ? *s + *len : NULL, *s ? *cap - *len : 0, fmt, ap);
        va_end(ap);
        if (w < 0)
            return -1;
        if (*s && *len + (size_t)w < *cap) {
            *len += (size_t)w;
            return 0;
        }
        size_t ncap = *cap ? *cap : 1024;
        while (ncap <= *len + (size_t)w)
            ncap *= 2;
        char *n = realloc(*s, ncap);
        if (n == NULL)
            return -1;
        *s = n;
        *cap = ncap;
    }
}

/* Runs gnuplot on plot.gp inside dir; 0 or negative errno with err set. */
static int run_gnuplot(const char *gnuplot, const char *dir, char *err, size_t errlen)
{
    posix_spawn_file_actions_t fa;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc != 0) {
        snprintf(err, errlen, "gnuplot: cannot prepare spawn: %s", strerror(rc));
        return -rc;
    }
    pid_t pid = -1;
    /* Order matters: chdir first, so the relative opens land in dir. */
    if ((rc = posix_spawn_file_actions_addchdir_np(&fa, dir)) != 0 ||
        (rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) != 0 ||
        (rc = posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0)) != 0 ||
        (rc = posix_spawn_file_actions_addopen(&fa, 2, "gnuplot.err", O_WRONLY | O_CREAT | O_TRUNC, 0600)) !=
            0) {
        snprintf(err, errlen, "gnuplot: cannot prepare spawn: %s", strerror(rc));
        posix_spawn_file_actions_destroy(&fa);
        return -rc;
    }
    char *const argv[] = {"gnuplot", "plot.gp", NULL};
    rc = posix_spawn(&pid, gnuplot, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        snprintf(err, errlen, "gnuplot: cannot start %s: %s (plotting is best-effort, the run continues)", gnuplot,
                 strerror(rc));
        return -rc;
    }
    int status = 0;
    double t0 = mono_now();
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            /* ECHILD: the caller ignores SIGCHLD; judge by the PNG. */
            status = 0;
            break;
        }
        if (mono_now() - t0 > PLOT_TIMEOUT_S) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
            snprintf(err, errlen, "gnuplot: no result after %.0f s; killed", PLOT_TIMEOUT_S);
            return -ETIMEDOUT;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        char msg[320] = "";
        char path[4096 + 32];
        snprintf(path, sizeof(path), "%s/gnuplot.err", dir);
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(msg, 1, sizeof(msg) - 1, f);
            msg[n] = '\0';
            fclose(f);
            for (char *c = msg; *c; c++)
                if (*c == '\n' || *c == '\r' || *c == '\t')
                    *c = ' ';
        }
        if (WIFEXITED(status))
            snprintf(err, errlen, "gnuplot failed (exit %d): %s", WEXITSTATUS(status), msg);
        else
            snprintf(err, errlen, "gnuplot killed by signal %d: %s", WTERMSIG(status), msg);
        return -EIO;
    }
    return 0;
}

int metrics_plot(const char *jsonl_path, const char *png_path, const char *const *fields, int n_fields,
                 char *err, size_t errlen)
{
    int rc = 0;
    char *gnuplot = NULL, *script = NULL, *data = NULL;
    char dir[4096] = "", path[4096 + 32];
    int made_dir = 0;
    plot_data_t d = {0};
    size_t slen = 0, scap = 0, dlen = 0, dcap = 0;

    if (jsonl_path == NULL || png_path == NULL || fields == NULL || n_fields < 1 || n_fields > PLOT_MAX_FIELDS) {
        snprintf(err, errlen, "metrics_plot: need a metrics file, a PNG path and 1 to %d fields (got %d)",
                 PLOT_MAX_FIELDS, n_fields);
        return -EINVAL;
    }
    for (int k = 0; k < n_fields; k++)
        if (fields[k] == NULL || fields[k][0] == '\0') {
            snprintf(err, errlen, "metrics_plot: field %d is empty", k);
            return -EINVAL;
        }
    if ((gnuplot = find_gnuplot(err, errlen)) == NULL)
        return -ENOENT;

    d.n_fields = n_fields;
    d.n_values = calloc((size_t)n_fields, sizeof(int));
    if (d.n_values == NULL) {
        snprintf(err, errlen, "metrics_plot: out of memory");
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = read_metrics(jsonl_path, fields, &d, err, errlen)) != 0)
        goto out;
    if (d.n_rows == 0) {
        snprintf(err, errlen, "%s: no lines with a numeric \"step\" (%zu lines skipped); no plot written",
                 jsonl_path, d.skipped);
        rc = -ENODATA;
        goto out;
    }

    /* Private folder beside the PNG: fixed names inside it, and a rename
     * (same file system) puts the finished PNG in place atomically. */
    const char *slash = strrchr(png_path, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), "./.crl-plot-XXXXXX");
    else if ((size_t)(slash - png_path) + 20 < sizeof(dir))
        snprintf(dir, sizeof(dir), "%.*s/.crl-plot-XXXXXX", (int)(slash - png_path), png_path);
    else {
        snprintf(err, errlen, "%s: path too long", png_path);
        rc = -ENAMETOOLONG;
        goto out;
    }
    if (mkdtemp(dir) == NULL) {
        snprintf(err, errlen, "%s: cannot make a temporary folder: %s", dir, strerror(errno));
        rc = -errno;
        goto out;
    }
    made_dir = 1;

    double xmin = INFINITY, xmax = -INFINITY;
    const size_t w = 1 + (size_t)n_fields;
    for (size_t i = 0; i < d.n_rows; i++) {
        const double *row = d.rows + i * w;
        xmin = fmin(xmin, row[0]);
        xmax = fmax(xmax, row[0]);
        if (sappend(&data, &dlen, &dcap, "%.17g", row[0]) != 0)
            goto oom;
        for (int k = 0; k < n_fields; k++) {
            double x = row[1 + k];
            int e = isfinite(x) ? sappend(&data, &dlen, &dcap, "\t%.9g", x)
                                : sappend(&data, &dlen, &dcap, isnan(x) ? "\t?" : "\tNaN");
            if (e != 0)
                goto oom;
        }
        if (sappend(&data, &dlen, &dcap, "\n") != 0)
            goto oom;
    }
    if (xmin == xmax) {
        xmin -= 1;
        xmax += 1;
    }
    int cols = n_fields == 1 ? 1 : 2, rows = (n_fields + cols - 1) / cols;
    int width = 640 * cols, height = 320 * rows < 400 ? 400 : 320 * rows;
    const char *style = d.n_rows <= 200 ? "linespoints pt 7 ps 0.5" : "lines";
    if (sappend(&script, &slen, &scap,
                "if (strstrt(GPVAL_TERMINALS, \" pngcairo \") > 0) {\n"
                "  set terminal pngcairo noenhanced size %d,%d\n"
                "} else {\n"
                "  set terminal png noenhanced size %d,%d\n"
                "}\n"
                "set output \"plot.png\"\n"
                "set datafile separator \"\\t\"\n"
                "set datafile missing \"?\"\n"
                "set grid\n"
                "set xlabel \"step\"\n"
                "set multiplot layout %d,%d\n",
                width, height, width, height, rows, cols) != 0)
        goto oom;
    for (int k = 0; k < n_fields; k++) {
        char title[128];
        safe_title(fields[k], title, sizeof(title));
        int e;
        if (d.n_values[k] > 0)
            e = sappend(&script, &slen, &scap,
                        "set title \"%s\"\nplot \"data.tsv\" using 1:%d with %s lw 1.5 notitle\n", title, k + 2,
                        style);
        else /* an empty panel: a constant drawn outside its y range */
            e = sappend(&script, &slen, &scap, "set title \"%s (no data)\"\nplot [%.17g:%.17g] [0:1] 2 notitle\n",
                        title, xmin, xmax);
        if (e != 0)
            goto oom;
    }
    if (sappend(&script, &slen, &scap, "unset multiplot\nset output\n") != 0)
        goto oom;

    snprintf(path, sizeof(path), "%s/data.tsv", dir);
    if ((rc = write_text_file(path, data, err, errlen)) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s/plot.gp", dir);
    if ((rc = write_text_file(path, script, err, errlen)) != 0)
        goto out;
    if ((rc = run_gnuplot(gnuplot, dir, err, errlen)) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s/plot.png", dir);
    struct stat st;
    if (stat(path, &st) != 0 || st.st_size == 0) {
        snprintf(err, errlen, "gnuplot exited without writing a PNG");
        rc = -EIO;
        goto out;
    }
    if (rename(path, png_path) != 0) {
        snprintf(err, errlen, "%s: cannot move the plot into place: %s", png_path, strerror(errno));
        rc = -errno;
        goto out;
    }
    goto out;
oom:
    snprintf(err, errlen, "metrics_plot: out of memory");
    rc = -ENOMEM;
out:
    if (made_dir) {
        static const char *const names[] = {"data.tsv", "plot.gp", "gnuplot.err", "plot.png"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
            unlink(path);
        }
        rmdir(dir);
    }
    free(gnuplot);
    free(script);
    free(data);
    free(d.rows);
    free(d.n_values);
    return rc;
}
