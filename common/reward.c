/* reward: response parsing and verifiable rewards (see reward.h). */
#include "reward.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char THINK_OPEN[] = "<think>";
static const char THINK_CLOSE[] = "</think>";
static const char BOX_OPEN[] = "\\boxed{";
static const char EOS_TEXT[] = "<eos>";
#define LIT_LEN(s) (sizeof(s) - 1)

/* Unwrapping "\text{\text{..}}" costs a pass each; a few levels are all
 * real answers use, and the cap keeps hostile input linear. */
#define MAX_UNWRAP 4

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static size_t skip_space(const char *s, size_t i, size_t len)
{
    while (i < len && is_space((unsigned char)s[i]))
        i++;
    return i;
}

static int starts_with(const char *s, size_t i, size_t len, const char *lit, size_t lit_len)
{
    return len - i >= lit_len && memcmp(s + i, lit, lit_len) == 0;
}

/* Position of the first `needle` in s[from, to), or `to` when absent.
 * glibc's memmem is linear (two-way algorithm). */
static size_t find(const char *s, size_t from, size_t to, const char *needle, size_t nlen)
{
    if (from >= to)
        return to;
    const char *p = memmem(s + from, to - from, needle, nlen);
    return p ? (size_t)(p - s) : to;
}

/* Given s[open] == '{', returns the index of its matching '}' in s[.., len)
 * or len when unbalanced. A backslash escapes the next byte, so "\{", "\}"
 * and "\\" never count as braces. */
static size_t match_brace(const char *s, size_t open, size_t len)
{
    size_t depth = 0;
    for (size_t i = open; i < len; i++) {
        char c = s[i];
        if (c == '\\') {
            i++; /* skip the escaped byte (may step to len: loop ends) */
        } else if (c == '{') {
            depth++;
        } else if (c == '}') {
            if (--depth == 0)
                return i;
        }
    }
    return len;
}

void reward_parse(const char *resp, size_t len, reward_parse_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!resp)
        return;

    /* The scored box: the last "\boxed{" (backward scan, linear). */
    for (size_t i = len; i >= LIT_LEN(BOX_OPEN); i--) {
        size_t at = i - LIT_LEN(BOX_OPEN);
        if (resp[at] == '\\' && memcmp(resp + at, BOX_OPEN, LIT_LEN(BOX_OPEN)) == 0) {
            size_t open = at + LIT_LEN(BOX_OPEN) - 1;
            size_t close = match_brace(resp, open, len);
            if (close < len) {
                out->has_box = 1;
                out->box_off = open + 1;
                out->box_len = close - open - 1;
            }
            break;
        }
    }

    /* The think part: the first "<think>" and the first "</think>" after it. */
    size_t t_open = find(resp, 0, len, THINK_OPEN, LIT_LEN(THINK_OPEN));
    size_t t_close = len;
    if (t_open < len) {
        t_close = find(resp, t_open + LIT_LEN(THINK_OPEN), len, THINK_CLOSE, LIT_LEN(THINK_CLOSE));
        if (t_close < len) {
            out->has_think = 1;
            out->think_off = t_open + LIT_LEN(THINK_OPEN);
            out->think_len = t_close - out->think_off;
        }
    }

    /* The format, checked left to right. */
    if (memchr(resp, '\0', len))
        return;
    if (!out->has_think || skip_space(resp, 0, len) != t_open)
        return;
    /* A second "<think>" before the close: nested or a repeated opening. */
    if (find(resp, out->think_off, t_close, THINK_OPEN, LIT_LEN(THINK_OPEN)) < t_close)
        return;
    size_t i = skip_space(resp, t_close + LIT_LEN(THINK_CLOSE), len);
    if (!starts_with(resp, i, len, BOX_OPEN, LIT_LEN(BOX_OPEN)))
        return;
    size_t open = i + LIT_LEN(BOX_OPEN) - 1;
    size_t close = match_brace(resp, open, len);
    if (close >= len)
        return;
    size_t c_off = open + 1, c_len = close - open - 1;
    if (skip_space(resp, c_off, close) == close) /* empty box */
        return;
    if (find(resp, c_off, close, BOX_OPEN, LIT_LEN(BOX_OPEN)) < close) /* nested box */
        return;
    i = skip_space(resp, close + 1, len);
    if (starts_with(resp, i, len, EOS_TEXT, LIT_LEN(EOS_TEXT)))
        i = skip_space(resp, i + LIT_LEN(EOS_TEXT), len);
    if (i != len)
        return;
    /* Nothing follows the box, so it is also the last box: the scored one. */
    if (!out->has_box || out->box_off != c_off || out->box_len != c_len)
        return;
    out->format_ok = 1;
}

/* ---- normalisation ---------------------------------------------------- */

static const char *const NUMBER_WORDS[] = {
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
};

static const char *const WRAPPERS[] = {"\\text{", "\\textbf{", "\\textrm{", "\\mathrm{", "\\mathbf{"};

/* Trims whitespace and strips up to MAX_UNWRAP "\text{...}"-style wrappers
 * that enclose the whole string. Adjusts *off / *len in place. */
static void unwrap(const char *s, size_t *off, size_t *len)
{
    for (int level = 0; level <= MAX_UNWRAP; level++) {
        size_t a = *off, b = *off + *len;
        while (a < b && is_space((unsigned char)s[a]))
            a++;
        while (b > a && is_space((unsigned char)s[b - 1]))
            b--;
        *off = a;
        *len = b - a;
        if (level == MAX_UNWRAP)
            return;
        int done = 1;
        for (size_t w = 0; w < sizeof(WRAPPERS) / sizeof(WRAPPERS[0]); w++) {
            size_t wl = strlen(WRAPPERS[w]);
            if (b - a > wl && memcmp(s + a, WRAPPERS[w], wl) == 0 &&
                match_brace(s, a + wl - 1, b) == b - 1) {
                *off = a + wl;
                *len = b - 1 - (a + wl);
                done = 0;
                break;
            }
        }
        if (done)
            return;
    }
}

/* Writes the normalised form of s[0, len) into out (capacity len + 1):
 * unwrapped, lowercased, whitespace runs collapsed to one space and
 * trimmed, trailing periods removed, number words mapped to digits.
 * Returns the output length. Never longer than the input, since every
 * number word is longer than its digits. */
static size_t normalize_into(const char *s, size_t len, char *out)
{
    size_t off = 0;
    unwrap(s, &off, &len);
    size_t n = 0;
    int pending_space = 0;
    for (size_t i = off; i < off + len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_space(c)) {
            pending_space = n > 0;
            continue;
        }
        if (pending_space)
            out[n++] = ' ';
        pending_space = 0;
        out[n++] = (char)tolower(c);
    }
    while (n > 0 && (out[n - 1] == '.' || out[n - 1] == ' '))
        n--;
    /* Number words, token by token, in place (the output only shrinks). */
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && out[j] != ' ')
            j++;
        const char *repl = NULL;
        char digits[4];
        for (size_t k = 0; k < sizeof(NUMBER_WORDS) / sizeof(NUMBER_WORDS[0]); k++) {
            if (strlen(NUMBER_WORDS[k]) == j - i && memcmp(out + i, NUMBER_WORDS[k], j - i) == 0) {
                snprintf(digits, sizeof(digits), "%zu", k);
                repl = digits;
                break;
            }
        }
        if (repl) {
            size_t rl = strlen(repl);
            memcpy(out + w, repl, rl);
            w += rl;
        } else {
            memmove(out + w, out + i, j - i);
            w += j - i;
        }
        if (j < n)
            out[w++] = ' ';
        i = j + 1;
    }
    out[w] = '\0';
    return w;
}

char *reward_normalize_answer(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    normalize_into(s ? s : "", s ? len : 0, out);
    return out;
}

/* 1 / 0, or -ENOMEM. */
static int answer_match(const char *got, size_t len, const char *want)
{
    size_t wlen = strlen(want);
    char *a = malloc(len + 1), *b = malloc(wlen + 1);
    int rc = -ENOMEM;
    if (a && b) {
        size_t na = normalize_into(got, len, a);
        size_t nb = normalize_into(want, wlen, b);
        rc = na == nb && memcmp(a, b, na) == 0;
    }
    free(a);
    free(b);
    return rc;
}

int reward_answer_matches(const char *got, size_t len, const char *want)
{
    if (!got || !want)
        return 0;
    return answer_match(got, len, want) == 1;
}

static int in_set(char c, const char *set)
{
    return c != '\0' && strchr(set, c) != NULL;
}

/* Verdict form of a normalised string (in place): strips surrounding
 * brackets/quotes/punctuation and one leading "answer"-like word.
 * Returns the new length; the result starts at *start. */
static size_t verdict_strip(char *s, size_t n, size_t *start)
{
    static const char *const PREFIXES[] = {"answer", "option", "candidate", "response"};
    static const char TRIM[] = " ()[].:'\"*";
    size_t a = 0, b = n;
    for (int pass = 0; pass < 2; pass++) {
        while (a < b && in_set(s[a], TRIM))
            a++;
        while (b > a && in_set(s[b - 1], TRIM))
            b--;
        if (pass == 1)
            break;
        for (size_t k = 0; k < sizeof(PREFIXES) / sizeof(PREFIXES[0]); k++) {
            size_t pl = strlen(PREFIXES[k]);
            if (b - a >= pl && memcmp(s + a, PREFIXES[k], pl) == 0 &&
                (b - a == pl || in_set(s[a + pl], TRIM))) {
                a += pl;
                break;
            }
        }
    }
    *start = a;
    return b - a;
}

/* Normalised verdict form of s into a new string of *n bytes (it may hold
 * NULs from the input, so compare with the length); NULL when out of memory. */
static char *verdict_form(const char *s, size_t len, size_t *n)
{
    char *buf = malloc(len + 1);
    if (!buf)
        return NULL;
    size_t a;
    *n = normalize_into(s, len, buf);
    *n = verdict_strip(buf, *n, &a);
    memmove(buf, buf + a, *n);
    buf[*n] = '\0';
    return buf;
}

/* Label index the verdict names, -1 none/both, -2 out of memory. */
static int verdict_index(const reward_config_t *cfg, const char *box, size_t len)
{
    size_t vn, ln;
    char *v = verdict_form(box, len, &vn);
    if (!v)
        return -2;
    int hit = -1;
    for (int k = 0; k < 2; k++) {
        char *l = verdict_form(cfg->labels[k], strnlen(cfg->labels[k], REWARD_LABEL_MAX), &ln);
        if (!l) {
            free(v);
            return -2;
        }
        if (ln > 0 && ln == vn && memcmp(v, l, ln) == 0)
            hit = hit == -1 ? k : -1;
        free(l);
    }
    free(v);
    return hit;
}

int reward_verdict(const reward_config_t *cfg, const char *box, size_t len)
{
    if (!cfg || !box)
        return -1;
    int v = verdict_index(cfg, box, len);
    return v < 0 ? -1 : v;
}

void reward_config_default(reward_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->w_main = 0.9f;
    cfg->w_format = 0.1f;
    cfg->require_format = 0;
    strcpy(cfg->labels[0], "A");
    strcpy(cfg->labels[1], "B");
}

int reward_config_check(const reward_config_t *cfg, char *err, size_t errlen)
{
    if (!cfg) {
        snprintf(err, errlen, "reward config: NULL");
        return -EINVAL;
    }
    if (!isfinite(cfg->w_main) || !isfinite(cfg->w_format)) {
        snprintf(err, errlen, "reward config: weights must be finite (w_main %g, w_format %g)",
                 (double)cfg->w_main, (double)cfg->w_format);
        return -EINVAL;
    }
    char *form[2] = {NULL, NULL};
    int rc = 0;
    for (int k = 0; k < 2; k++) {
        size_t n = strnlen(cfg->labels[k], REWARD_LABEL_MAX);
        if (n == 0 || n == REWARD_LABEL_MAX) {
            snprintf(err, errlen, "reward config: label %d must hold 1..%d bytes", k,
                     REWARD_LABEL_MAX - 1);
            rc = -EINVAL;
            goto fail;
        }
        if (strpbrk(cfg->labels[k], "{}\\")) {
            snprintf(err, errlen, "reward config: label \"%s\" must not contain braces or backslashes",
                     cfg->labels[k]);
            rc = -EINVAL;
            goto fail;
        }
        size_t fn;
        form[k] = verdict_form(cfg->labels[k], n, &fn);
        if (!form[k]) {
            rc = -ENOMEM;
            snprintf(err, errlen, "reward config: out of memory");
            goto fail;
        }
        if (form[k][0] == '\0') {
            snprintf(err, errlen, "reward config: label \"%s\" is empty once normalised",
                     cfg->labels[k]);
            rc = -EINVAL;
            goto fail;
        }
    }
    if (strcmp(form[0], form[1]) == 0) {
        snprintf(err, errlen, "reward config: labels \"%s\" and \"%s\" are the same once normalised",
                 cfg->labels[0], cfg->labels[1]);
        rc = -EINVAL;
    }
fail:
    free(form[0]);
    free(form[1]);
    return rc;
}

int reward_score(const reward_config_t *cfg, reward_task_t task, const char *resp, size_t len,
                 const char *expected, reward_parts_t *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->preference = out->accuracy = out->verdict = -1;
    if (!cfg || !resp || !expected || (task != REWARD_TASK_POLICY && task != REWARD_TASK_CRITIC))
        return -EINVAL;

    reward_parse_t p;
    reward_parse(resp, len, &p);
    out->format = p.format_ok;
    int main_term = 0, rc;
    if (task == REWARD_TASK_CRITIC) {
        int want = verdict_index(cfg, expected, strlen(expected));
        if (want < 0) {
            rc = want == -2 ? -ENOMEM : -EINVAL;
            goto fail;
        }
        int got = p.has_box ? verdict_index(cfg, resp + p.box_off, p.box_len) : -1;
        if (got == -2) {
            rc = -ENOMEM;
            goto fail;
        }
        out->verdict = got;
        out->preference = got == want;
        main_term = out->preference;
    } else {
        int hit = p.has_box ? answer_match(resp + p.box_off, p.box_len, expected) : 0;
        if (hit < 0) {
            rc = hit;
            goto fail;
        }
        out->accuracy = hit;
        main_term = hit;
    }
    if (cfg->require_format && !out->format)
        main_term = 0;
    out->total = cfg->w_main * (float)main_term + cfg->w_format * (float)out->format;
    return 0;
fail:
    memset(out, 0, sizeof(*out));
    out->preference = out->accuracy = out->verdict = -1;
    return rc;
}
