/* metrics: what a run reports about itself — one JSON object per step
 * appended to runs/NAME/metrics.jsonl, a one-line live progress display
 * for the terminal (plain periodic lines when stderr is a log file), and
 * a PNG of the curves drawn by gnuplot (best-effort: a missing gnuplot is
 * an error message, never a failed run). */
#ifndef CRL_METRICS_H
#define CRL_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- metrics.jsonl writer ---- */

typedef struct metrics metrics_t; /* opaque; one writer, not thread-safe */

/* Opens (creating) path for appending. Lines go out with O_APPEND, one
 * write(2) per line, so concurrent readers (plots, tail -f) and a resumed
 * run never see interleaved or half-written lines except at a crash.
 * NULL with err set on failure. */
metrics_t *metrics_open(const char *path, char *err, size_t errlen);
void metrics_close(metrics_t **m);

/* Starts a line {"step":STEP,"time":T,... where T is the seconds since
 * metrics_open plus the offset given to metrics_set_elapsed. */
void metrics_begin_line(metrics_t *m, int64_t step);
/* On resume: makes "time" continue from `seconds` (saved in trainer.json). */
void metrics_set_elapsed(metrics_t *m, double seconds);
double metrics_elapsed(const metrics_t *m);
void metrics_add_int(metrics_t *m, const char *key, int64_t v);
/* NaN and +-Inf are written as null (JSON has no NaN). */
void metrics_add_float(metrics_t *m, const char *key, double v);
void metrics_add_string(metrics_t *m, const char *key, const char *v);
void metrics_add_bool(metrics_t *m, const char *key, int v);
/* Closes the object and appends the line with a single write. Errors of
 * the add calls (no begin, NULL key, out of memory) surface here.
 * 0 or negative errno; the line is dropped on error. */
int metrics_end_line(metrics_t *m);

/* ---- live progress ---- */

typedef enum {
    PROGRESS_AUTO = 0, /* TTY -> rewrite one line; otherwise periodic lines */
    PROGRESS_TTY,      /* force \r rewriting */
    PROGRESS_LINES,    /* force plain lines */
} progress_mode_t;

/* Plain struct: the state of one progress display (no allocation). */
typedef struct {
    FILE *f;
    int tty;               /* rewriting one terminal line with \r */
    double interval_s;     /* LINES mode: seconds between printed lines */
    double last_print;     /* monotonic seconds of the last output */
    int shown_len;         /* TTY: characters of the line on screen */
    int pending;           /* text holds a line not yet printed */
    char text[512];
} progress_t;

/* interval_s <= 0 picks 10 s for plain lines. TTY rewrites are throttled
 * to 10 per second. */
void progress_init(progress_t *p, FILE *f, progress_mode_t mode, double interval_s);
/* Shows a status line: rewritten in place on a terminal (cut to the
 * terminal width), or printed as a normal line at most every interval_s
 * (through log_info when f is stderr, so it carries time and role). */
void progress_line(progress_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints the last line if it was held back and ends the terminal line. */
void progress_end(progress_t *p);

/* Seconds left at the mean rate so far; -1 when unknown (step <= 0). */
double metrics_eta(int64_t step, int64_t total, double elapsed_s);
/* "1h02m", "4m05s", "12s", or "?" for negative; returns buf. */
char *metrics_format_duration(double seconds, char *buf, size_t len);

/* ---- plot ---- */

/* Draws each named field against "step" (one panel per field, at most 16)
 * from a metrics.jsonl into a PNG, using gnuplot (pngcairo, else png).
 * Lines that are not JSON objects with a numeric "step" (e.g. a torn last
 * line) are skipped; a null value breaks the curve, an absent one is
 * skipped (so fields logged every k steps draw as one curve); a field with
 * no value at all gets an empty "(no data)" panel. gnuplot is found as
 * $CRL_GNUPLOT or on PATH and run without a shell; user paths never enter
 * the gnuplot script (it runs in a private temporary folder next to the
 * PNG, which is renamed into place). 0, or negative errno with err naming
 * the problem (-ENOENT: gnuplot missing). Blocks while gnuplot runs. */
int metrics_plot(const char *jsonl_path, const char *png_path, const char *const *fields, int n_fields,
                 char *err, size_t errlen);

#endif
