/* Tests of the built-in world. The checker below is deliberately
 * independent of world.c: it reads the question and the answers as text,
 * looks at the scene grid, and works out the truth itself. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "image.h"
#include "world.h"

/* ------------------------------------------------------------ the checker */

static const char *const T_COLORS[] = {"red", "green", "blue", "yellow", "purple", "orange"};
static const char *const T_SHAPES[] = {"circle", "square", "triangle", "diamond"};
static const char *const T_CELLS[] = {"top left",    "top middle",    "top right",
                                      "middle left", "middle",        "middle right",
                                      "bottom left", "bottom middle", "bottom right"};

typedef struct {
    int rows, cols;
    int color[WORLD_MAX_CELLS], shape[WORLD_MAX_CELLS]; /* -1 empty */
    int n_colors, n_shapes;
} grid_t;

static grid_t grid_of(const world_scene_t *scene, const world_config_t *cfg)
{
    grid_t g;
    g.rows = scene->rows;
    g.cols = scene->cols;
    g.n_colors = cfg->n_colors;
    g.n_shapes = cfg->n_shapes;
    for (int i = 0; i < g.rows * g.cols; i++) {
        g.color[i] = scene->color[i];
        g.shape[i] = scene->shape[i];
    }
    return g;
}

static int word_index(const char *const *table, int n, const char *w, size_t len)
{
    for (int i = 0; i < n; i++)
        if (strlen(table[i]) == len && strncmp(table[i], w, len) == 0)
            return i;
    return -1;
}

/* Parses a cell name at s; returns characters consumed (0 if none). */
static size_t parse_cell(const grid_t *g, const char *s, int *cell)
{
    if (g->rows == 3 && g->cols == 3) {
        size_t best = 0;
        for (int i = 0; i < 9; i++) {
            size_t n = strlen(T_CELLS[i]);
            if (strncmp(s, T_CELLS[i], n) == 0 && n > best) {
                best = n;
                *cell = i;
            }
        }
        return best;
    }
    int r, c, used = 0;
    if (sscanf(s, "row %d column %d%n", &r, &c, &used) == 2 && r >= 1 && r <= g->rows && c >= 1 &&
        c <= g->cols) {
        *cell = (r - 1) * g->cols + (c - 1);
        return (size_t)used;
    }
    return 0;
}

static int g_match(const grid_t *g, int i, int color, int shape)
{
    return g->color[i] >= 0 && (color < 0 || g->color[i] == color) &&
           (shape < 0 || g->shape[i] == shape);
}

static int g_count(const grid_t *g, int color, int shape)
{
    int n = 0;
    for (int i = 0; i < g->rows * g->cols; i++)
        n += g_match(g, i, color, shape);
    return n;
}

static int g_unique(const grid_t *g, int color, int shape)
{
    int found = -1;
    for (int i = 0; i < g->rows * g->cols; i++)
        if (g_match(g, i, color, shape)) {
            if (found >= 0)
                return -2;
            found = i;
        }
    return found;
}

enum { Q_COUNT, Q_AT_COLOR, Q_AT_SHAPE, Q_EXISTS, Q_MORE, Q_NB_COLOR, Q_NB_SHAPE, Q_REL };

typedef struct {
    int kind;
    int color, shape, color2, shape2, cell, dir; /* dir: 0 left 1 right 2 above 3 below */
    char truth[32];
} parsed_q_t;

/* Splits a string into words (at most 24), dropping a final '?'. */
static int words_of(const char *s, char w[24][32])
{
    int n = 0;
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", s);
    size_t len = strlen(buf);
    if (len && buf[len - 1] == '?')
        buf[len - 1] = '\0';
    char *save = NULL;
    for (char *tok = strtok_r(buf, " ", &save); tok && n < 24; tok = strtok_r(NULL, " ", &save))
        snprintf(w[n++], 32, "%s", tok);
    return n;
}

static int color_w(const char *w) { return word_index(T_COLORS, 6, w, strlen(w)); }
static int shape_w(const char *w) { return word_index(T_SHAPES, 4, w, strlen(w)); }
static int shapes_w(const char *w) /* plural */
{
    size_t n = strlen(w);
    return n > 1 && w[n - 1] == 's' ? word_index(T_SHAPES, 4, w, n - 1) : -1;
}

static int neighbor(const grid_t *g, int cell, int dir)
{
    int r = cell / g->cols, c = cell % g->cols;
    if (dir == 0)
        c--;
    else if (dir == 1)
        c++;
    else if (dir == 2)
        r--;
    else
        r++;
    return r < 0 || c < 0 || r >= g->rows || c >= g->cols ? -1 : r * g->cols + c;
}

/* Parses the question and computes the true answer from the grid.
 * Returns 0, or -1 with why[] set when the question is malformed or not
 * answerable (an ambiguous anchor, a neighbour off the grid). */
static int check_question(const grid_t *g, const char *question, parsed_q_t *q, char *why,
                          size_t whylen)
{
    char w[24][32];
    int n = words_of(question, w);
    memset(q, 0, sizeof(*q));
    q->color = q->shape = q->color2 = q->shape2 = q->cell = q->dir = -1;
    const char *at = strstr(question, " at ");
    if (n >= 4 && !strcmp(w[0], "how") && !strcmp(w[1], "many") && !strcmp(w[n - 2], "are") &&
        !strcmp(w[n - 1], "there")) {
        q->kind = Q_COUNT;
        if (n == 6 && color_w(w[2]) >= 0 && !strcmp(w[3], "objects"))
            q->color = color_w(w[2]);
        else if (n == 5 && shapes_w(w[2]) >= 0)
            q->shape = shapes_w(w[2]);
        else if (n == 6 && color_w(w[2]) >= 0 && shapes_w(w[3]) >= 0) {
            q->color = color_w(w[2]);
            q->shape = shapes_w(w[3]);
        } else
            goto bad;
        snprintf(q->truth, sizeof(q->truth), "%d", g_count(g, q->color, q->shape));
        return 0;
    }
    if (n >= 6 && !strcmp(w[0], "what") && !strcmp(w[2], "is") && !strcmp(w[3], "the") &&
        !strcmp(w[4], "object") && at) {
        int cell;
        size_t used = parse_cell(g, at + 4, &cell);
        if (!used || strcmp(at + 4 + used, "?") != 0)
            goto bad;
        q->cell = cell;
        if (!strcmp(w[1], "colour")) {
            q->kind = Q_AT_COLOR;
            snprintf(q->truth, sizeof(q->truth), "%s",
                     g->color[cell] < 0 ? "nothing" : T_COLORS[g->color[cell]]);
        } else if (!strcmp(w[1], "shape")) {
            q->kind = Q_AT_SHAPE;
            snprintf(q->truth, sizeof(q->truth), "%s",
                     g->shape[cell] < 0 ? "nothing" : T_SHAPES[g->shape[cell]]);
        } else
            goto bad;
        return 0;
    }
    if (n == 5 && !strcmp(w[0], "is") && !strcmp(w[1], "there") && !strcmp(w[2], "a") &&
        color_w(w[3]) >= 0 && shape_w(w[4]) >= 0) {
        q->kind = Q_EXISTS;
        q->color = color_w(w[3]);
        q->shape = shape_w(w[4]);
        snprintf(q->truth, sizeof(q->truth), "%s", g_count(g, q->color, q->shape) ? "yes" : "no");
        return 0;
    }
    if (n >= 6 && !strcmp(w[0], "are") && !strcmp(w[1], "there") && !strcmp(w[2], "more")) {
        q->kind = Q_MORE;
        int a, b;
        if (n == 7 && color_w(w[3]) >= 0 && !strcmp(w[4], "than") && color_w(w[5]) >= 0 &&
            !strcmp(w[6], "objects")) {
            q->color = color_w(w[3]);
            q->color2 = color_w(w[5]);
            a = g_count(g, q->color, -1);
            b = g_count(g, q->color2, -1);
        } else if (n == 6 && shapes_w(w[3]) >= 0 && !strcmp(w[4], "than") && shapes_w(w[5]) >= 0) {
            q->shape = shapes_w(w[3]);
            q->shape2 = shapes_w(w[5]);
            a = g_count(g, -1, q->shape);
            b = g_count(g, -1, q->shape2);
        } else
            goto bad;
        snprintf(q->truth, sizeof(q->truth), "%s", a > b ? "yes" : "no");
        return 0;
    }
    if (n >= 7 && !strcmp(w[0], "what") && !strcmp(w[2], "is") && !strcmp(w[3], "directly")) {
        int k = 4;
        if (!strcmp(w[k], "left") && !strcmp(w[k + 1], "of")) {
            q->dir = 0;
            k += 2;
        } else if (!strcmp(w[k], "right") && !strcmp(w[k + 1], "of")) {
            q->dir = 1;
            k += 2;
        } else if (!strcmp(w[k], "above")) {
            q->dir = 2;
            k += 1;
        } else if (!strcmp(w[k], "below")) {
            q->dir = 3;
            k += 1;
        } else
            goto bad;
        if (n != k + 3 || strcmp(w[k], "the") || color_w(w[k + 1]) < 0 || shape_w(w[k + 2]) < 0)
            goto bad;
        q->color = color_w(w[k + 1]);
        q->shape = shape_w(w[k + 2]);
        int anchor = g_unique(g, q->color, q->shape);
        if (anchor < 0) {
            snprintf(why, whylen, "anchor %s %s is %s", w[k + 1], w[k + 2],
                     anchor == -1 ? "absent" : "not unique");
            return -1;
        }
        int nb = neighbor(g, anchor, q->dir);
        if (nb < 0) {
            snprintf(why, whylen, "neighbour is off the grid");
            return -1;
        }
        q->cell = nb;
        if (!strcmp(w[1], "colour")) {
            q->kind = Q_NB_COLOR;
            snprintf(q->truth, sizeof(q->truth), "%s",
                     g->color[nb] < 0 ? "nothing" : T_COLORS[g->color[nb]]);
        } else if (!strcmp(w[1], "shape")) {
            q->kind = Q_NB_SHAPE;
            snprintf(q->truth, sizeof(q->truth), "%s",
                     g->shape[nb] < 0 ? "nothing" : T_SHAPES[g->shape[nb]]);
        } else
            goto bad;
        return 0;
    }
    if (n >= 8 && !strcmp(w[0], "is") && !strcmp(w[1], "the") && color_w(w[2]) >= 0 &&
        shape_w(w[3]) >= 0) {
        q->kind = Q_REL;
        q->color = color_w(w[2]);
        q->shape = shape_w(w[3]);
        int k = 4;
        if (!strcmp(w[k], "left") && !strcmp(w[k + 1], "of")) {
            q->dir = 0;
            k += 2;
        } else if (!strcmp(w[k], "right") && !strcmp(w[k + 1], "of")) {
            q->dir = 1;
            k += 2;
        } else if (!strcmp(w[k], "above")) {
            q->dir = 2;
            k++;
        } else if (!strcmp(w[k], "below")) {
            q->dir = 3;
            k++;
        } else
            goto bad;
        if (n != k + 3 || strcmp(w[k], "the") || color_w(w[k + 1]) < 0 || shape_w(w[k + 2]) < 0)
            goto bad;
        q->color2 = color_w(w[k + 1]);
        q->shape2 = shape_w(w[k + 2]);
        int a = g_unique(g, q->color, q->shape), b = g_unique(g, q->color2, q->shape2);
        if (a < 0 || b < 0 || a == b) {
            snprintf(why, whylen, "relation objects are absent or not unique");
            return -1;
        }
        int ra = a / g->cols, ca = a % g->cols, rb = b / g->cols, cb = b % g->cols;
        int yes = q->dir == 0 ? ca < cb : q->dir == 1 ? ca > cb : q->dir == 2 ? ra < rb : ra > rb;
        snprintf(q->truth, sizeof(q->truth), "%s", yes ? "yes" : "no");
        return 0;
    }
bad:
    snprintf(why, whylen, "unparsable question '%s'", question);
    return -1;
}

typedef struct {
    int ok_format;      /* <think>..</think>\boxed{..} */
    char boxed[64];
    int false_claims;   /* statements about the image that the grid contradicts */
    int inconsistent;   /* steps that do not follow from the answer's own statements */
    int words;          /* after the scene description, if any */
    int described;      /* the reasoning opens with the whole scene in raster order */
    char why[512];      /* first problem seen */
} verdict_t;

static void note(verdict_t *v, int *counter, const char *fmt, const char *arg)
{
    (*counter)++;
    char short_arg[200];
    snprintf(short_arg, sizeof(short_arg), "%.190s", arg);
    if (!v->why[0])
        snprintf(v->why, sizeof(v->why), fmt, short_arg);
}

/* Parses "<phrase>" of a list claim into (color, shape) wildcards. */
static int parse_phrase(const char *p, size_t len, int *color, int *shape)
{
    char buf[64];
    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    char a[32] = "", b[32] = "";
    int n = sscanf(buf, "%31s %31s", a, b);
    *color = *shape = -1;
    if (n == 2 && color_w(a) >= 0 && !strcmp(b, "objects")) {
        *color = color_w(a);
        return 0;
    }
    if (n == 2 && color_w(a) >= 0 && shapes_w(b) >= 0) {
        *color = color_w(a);
        *shape = shapes_w(b);
        return 0;
    }
    if (n == 1 && shapes_w(a) >= 0) {
        *shape = shapes_w(a);
        return 0;
    }
    return -1;
}

/* Checks an answer's reasoning claim by claim against the grid and the
 * question, and its own internal consistency. */
static verdict_t check_steps(const grid_t *g, const parsed_q_t *q, const char *ans)
{
    verdict_t v;
    memset(&v, 0, sizeof(v));
    const char *t0 = "<think>", *t1 = "</think>\\boxed{";
    const char *end_think = strstr(ans, t1);
    size_t alen = strlen(ans);
    if (strncmp(ans, t0, strlen(t0)) != 0 || !end_think || ans[alen - 1] != '}') {
        snprintf(v.why, sizeof(v.why), "bad format: %s", ans);
        return v;
    }
    v.ok_format = 1;
    const char *bx = end_think + strlen(t1);
    snprintf(v.boxed, sizeof(v.boxed), "%.*s", (int)(ans + alen - 1 - bx), bx);
    char think[WORLD_TEXT_MAX];
    snprintf(think, sizeof(think), "%.*s", (int)(end_think - ans - strlen(t0)), ans + strlen(t0));
    for (char *p = think; *p;) {
        while (*p == ' ')
            p++;
        if (*p) {
            v.words++;
            while (*p && *p != ' ')
                p++;
        }
    }
    /* Sentences end with ". " or a final "." */
    int lists = 0, list_n[2] = {0, 0}, list_cell[2] = {-1, -1};
    int list_color[2] = {-1, -1}, list_shape[2] = {-1, -1};
    int claim_cell = -1, claim_color = -2, claim_shape = -2;
    char concluded[64] = "";
    size_t tlen = strlen(think);
    if (tlen == 0 || think[tlen - 1] != '.') {
        note(&v, &v.inconsistent, "reasoning does not end with a full stop: %s", think);
        return v;
    }
    char *s = think;
    while (*s) {
        char *e = strstr(s, ". ");
        if (!e)
            e = think + tlen - 1;
        *e = '\0';
        char *colon = strstr(s, ": ");
        int a, b, used = 0;
        char word[32], axis1[16], axis2[16], rel[16], rel2[16], not_[8];
        if (colon) {
            int cell;
            size_t used_cell = parse_cell(g, s, &cell);
            if (used_cell && s + used_cell == colon) {
                /* cell claim */
                const char *rest = colon + 2;
                char cw[32], sw[32];
                claim_cell = cell;
                if (!strcmp(rest, "empty")) {
                    claim_color = claim_shape = -1;
                    if (g->color[cell] >= 0)
                        note(&v, &v.false_claims, "claims empty cell: %s", s);
                } else if (sscanf(rest, "%31s %31s", cw, sw) == 2 && color_w(cw) >= 0 &&
                           shape_w(sw) >= 0) {
                    claim_color = color_w(cw);
                    claim_shape = shape_w(sw);
                    if (g->color[cell] != claim_color || g->shape[cell] != claim_shape)
                        note(&v, &v.false_claims, "wrong cell claim: %s", s);
                } else {
                    note(&v, &v.inconsistent, "unparsable cell claim: %s", s);
                }
            } else {
                /* list claim */
                int color, shape;
                if (parse_phrase(s, (size_t)(colon - s), &color, &shape) != 0 || lists >= 2) {
                    note(&v, &v.inconsistent, "unparsable list claim: %s", s);
                } else {
                    int listed[WORLD_MAX_CELLS] = {0}, n = 0, bad = 0;
                    const char *p = colon + 2;
                    if (strcmp(p, "none") != 0) {
                        while (*p) {
                            int cell;
                            size_t u = parse_cell(g, p, &cell);
                            if (!u) {
                                bad = 1;
                                break;
                            }
                            listed[cell]++;
                            list_cell[lists] = cell;
                            n++;
                            p += u;
                            if (!strncmp(p, ", ", 2))
                                p += 2;
                            else if (*p) {
                                bad = 1;
                                break;
                            }
                        }
                    }
                    if (bad)
                        note(&v, &v.inconsistent, "unparsable cell list: %s", s);
                    for (int i = 0; i < g->rows * g->cols; i++)
                        if (listed[i] != g_match(g, i, color, shape)) {
                            note(&v, &v.false_claims, "wrong list: %s", s);
                            break;
                        }
                    list_n[lists] = n;
                    list_color[lists] = color;
                    list_shape[lists] = shape;
                    lists++;
                }
            }
        } else if (sscanf(s, "%d in all%n", &a, &used) == 1 && s[used] == '\0') {
            if (lists != 1 || a != list_n[0])
                note(&v, &v.inconsistent, "total does not match the list: %s", s);
            snprintf(concluded, sizeof(concluded), "%d", a);
        } else if (sscanf(s, "%d vs %d, so %31s%n", &a, &b, word, &used) == 3 && !s[used]) {
            if (lists != 2 || a != list_n[0] || b != list_n[1])
                note(&v, &v.inconsistent, "comparison does not match the lists: %s", s);
            if (strcmp(word, a > b ? "yes" : "no") != 0)
                note(&v, &v.inconsistent, "comparison concludes wrongly: %s", s);
            snprintf(concluded, sizeof(concluded), "%s", word);
        } else if (sscanf(s, "%15s %d is %7s", axis1, &a, not_) == 3) {
            int has_not = !strcmp(not_, "not");
            const char *after = strstr(s, " is ") + 4 + (has_not ? 4 : 0);
            int ok = 0, yes_claim = -1;
            rel2[0] = '\0';
            if (sscanf(after, "%15s of %15s %d, so %31s%n", rel, axis2, &b, word, &used) == 4 &&
                !after[used])
                ok = 1;
            else if (sscanf(after, "%15s %15s %d, so %31s%n", rel, axis2, &b, word, &used) == 4 &&
                     !after[used])
                ok = 1;
            if (!ok || lists != 2 || list_n[0] != 1 || list_n[1] != 1) {
                note(&v, &v.inconsistent, "unparsable relation step: %s", s);
            } else {
                int by_row = !strcmp(axis1, "row");
                int va = by_row ? list_cell[0] / g->cols + 1 : list_cell[0] % g->cols + 1;
                int vb = by_row ? list_cell[1] / g->cols + 1 : list_cell[1] % g->cols + 1;
                int holds = !strcmp(rel, "left") ? a < b
                            : !strcmp(rel, "right") ? a > b
                            : !strcmp(rel, "above") ? a < b
                                                    : a > b;
                yes_claim = holds;
                if (a != va || b != vb || strcmp(axis1, axis2) != 0)
                    note(&v, &v.inconsistent, "relation numbers do not match the lists: %s", s);
                if (holds == has_not)
                    note(&v, &v.inconsistent, "relation step is false arithmetic: %s", s);
                if (strcmp(word, yes_claim ? "yes" : "no") != 0)
                    note(&v, &v.inconsistent, "relation concludes wrongly: %s", s);
                if (q->dir >= 0 && strcmp(rel, q->dir == 0   ? "left"
                                              : q->dir == 1 ? "right"
                                              : q->dir == 2 ? "above"
                                                            : "below") != 0)
                    note(&v, &v.inconsistent, "relation step uses another direction: %s", s);
            }
            snprintf(concluded, sizeof(concluded), "%s", word);
        } else if (sscanf(s, "so %31s%n", word, &used) == 1 && !s[used]) {
            snprintf(concluded, sizeof(concluded), "%s", word);
            if (q->kind == Q_EXISTS) {
                if (lists != 1 || strcmp(word, list_n[0] ? "yes" : "no") != 0)
                    note(&v, &v.inconsistent, "existence conclusion does not follow: %s", s);
            } else if (claim_cell < 0) {
                note(&v, &v.inconsistent, "conclusion without a cell claim: %s", s);
            } else {
                int colour_q = q->kind == Q_AT_COLOR || q->kind == Q_NB_COLOR;
                int val = colour_q ? claim_color : claim_shape;
                const char *want = val < 0 ? "nothing" : colour_q ? T_COLORS[val] : T_SHAPES[val];
                if (strcmp(word, want) != 0)
                    note(&v, &v.inconsistent, "conclusion does not follow from the cell: %s", s);
            }
        } else {
            note(&v, &v.inconsistent, "unknown reasoning step: %s", s);
        }
        (void)rel2;
        s = e + 1;
        while (*s == ' ')
            s++;
    }
    if (strcmp(concluded, v.boxed) != 0)
        note(&v, &v.inconsistent, "boxed answer differs from the reasoning's: %s", v.boxed);
    /* The reasoning must be about what the question asks. */
    switch (q->kind) {
    case Q_COUNT:
    case Q_EXISTS:
        if (lists != 1 || list_color[0] != q->color || list_shape[0] != q->shape)
            note(&v, &v.inconsistent, "%s", "list is not about the asked objects");
        break;
    case Q_MORE:
        if (lists != 2 || list_color[0] != q->color || list_shape[0] != q->shape ||
            list_color[1] != q->color2 || list_shape[1] != q->shape2)
            note(&v, &v.inconsistent, "%s", "lists are not about the compared objects");
        break;
    case Q_AT_COLOR:
    case Q_AT_SHAPE:
        if (claim_cell != q->cell)
            note(&v, &v.inconsistent, "%s", "cell claim is not about the asked cell");
        break;
    case Q_NB_COLOR:
    case Q_NB_SHAPE:
        if (lists != 1 || list_n[0] != 1 || list_color[0] != q->color ||
            list_shape[0] != q->shape)
            note(&v, &v.inconsistent, "%s", "anchor list is not about the anchor");
        else if (claim_cell != neighbor(g, list_cell[0], q->dir))
            note(&v, &v.inconsistent, "%s", "cell claim is not the claimed anchor's neighbour");
        break;
    case Q_REL:
        if (lists != 2 || list_color[0] != q->color || list_shape[0] != q->shape ||
            list_color[1] != q->color2 || list_shape[1] != q->shape2)
            note(&v, &v.inconsistent, "%s", "lists are not about the related objects");
        break;
    default: break;
    }
    return v;
}

/* Parses a scene description "top left: red circle. top middle: empty. ..."
 * (every cell in raster order) at the start of s into d; returns the
 * characters consumed, 0 if s does not open with a whole description. */
static size_t parse_description(const grid_t *g, const char *s, grid_t *d)
{
    *d = *g;
    const char *p = s;
    for (int i = 0; i < g->rows * g->cols; i++) {
        int cell = -1;
        size_t used = parse_cell(g, p, &cell);
        if (!used || cell != i || strncmp(p + used, ": ", 2) != 0)
            return 0;
        p += used + 2;
        const char *end = strchr(p, '.');
        if (!end || end[1] != ' ')
            return 0;
        char cw[32] = "", sw[32] = "";
        if ((size_t)(end - p) == 5 && !strncmp(p, "empty", 5)) {
            d->color[i] = d->shape[i] = -1;
        } else if (sscanf(p, "%31s %31[a-z]", cw, sw) == 2 && color_w(cw) >= 0 && shape_w(sw) >= 0) {
            d->color[i] = color_w(cw);
            d->shape[i] = shape_w(sw);
        } else {
            return 0;
        }
        p = end + 2;
    }
    return (size_t)(p - s);
}

/* check_steps, after a scene description when the reasoning opens with one:
 * the description's cells that the grid contradicts are false claims, and
 * the steps after it must follow from the description (a step that
 * contradicts it is an inconsistency, whatever the image shows). */
static verdict_t check_answer(const grid_t *g, const parsed_q_t *q, const char *ans)
{
    const char *t0 = "<think>";
    grid_t d;
    size_t used = strncmp(ans, t0, strlen(t0)) == 0 ? parse_description(g, ans + strlen(t0), &d) : 0;
    if (!used)
        return check_steps(g, q, ans);
    char rest[WORLD_TEXT_MAX];
    snprintf(rest, sizeof(rest), "%s%s", t0, ans + strlen(t0) + used);
    verdict_t v = check_steps(&d, q, rest);
    v.described = 1;
    v.inconsistent += v.false_claims; /* against its own description */
    v.false_claims = 0;
    for (int i = 0; i < g->rows * g->cols; i++)
        if (d.color[i] != g->color[i] || d.shape[i] != g->shape[i]) {
            v.false_claims++;
            if (!v.why[0])
                snprintf(v.why, sizeof(v.why), "description of cell %d is false: %.200s", i, ans);
        }
    return v;
}

/* ------------------------------------------------------ collecting records */

#define MAX_SCENES 4000

/* Compact heap copies of the generator's records (whose fixed-size text
 * buffers are large). */
typedef struct {
    world_qtype_t type;
    char *question, *answer, *reference;
} tpol_t;
typedef struct {
    world_qtype_t type;
    world_kind_t kind;
    int preferred;
    char *question, *answers[2];
} tcri_t;
typedef struct {
    size_t index;
    world_scene_t scene;
    char *caption;
    int n_policy, n_critic;
    tpol_t policy[WORLD_MAX_PER_SCENE];
    tcri_t critic[WORLD_MAX_PER_SCENE];
} trec_t;

typedef struct {
    world_config_t cfg;
    size_t n, cap;
    trec_t *recs; /* (cap) */
} collect_t;

static char *dup_str(const char *s)
{
    char *d = strdup(s);
    cr_assert_not_null(d);
    return d;
}

static int collect_fn(const world_record_t *rec, void *user)
{
    collect_t *c = user;
    if (c->n >= c->cap)
        return -ENOSPC;
    trec_t *t = &c->recs[c->n++];
    t->index = rec->index;
    t->scene = rec->scene;
    t->caption = dup_str(rec->caption);
    t->n_policy = rec->n_policy;
    t->n_critic = rec->n_critic;
    for (int k = 0; k < rec->n_policy; k++) {
        t->policy[k].type = rec->policy[k].type;
        t->policy[k].question = dup_str(rec->policy[k].question);
        t->policy[k].answer = dup_str(rec->policy[k].answer);
        t->policy[k].reference = dup_str(rec->policy[k].reference);
    }
    for (int k = 0; k < rec->n_critic; k++) {
        t->critic[k].type = rec->critic[k].type;
        t->critic[k].kind = rec->critic[k].kind;
        t->critic[k].preferred = rec->critic[k].preferred;
        t->critic[k].question = dup_str(rec->critic[k].question);
        t->critic[k].answers[0] = dup_str(rec->critic[k].answers[0]);
        t->critic[k].answers[1] = dup_str(rec->critic[k].answers[1]);
    }
    return 0;
}

static collect_t *collect(const world_config_t *cfg, world_split_t split, size_t n,
                          world_stats_t *stats)
{
    cr_assert_leq(n, MAX_SCENES);
    collect_t *c = calloc(1, sizeof(*c));
    cr_assert_not_null(c);
    c->cfg = *cfg;
    c->cap = n;
    c->recs = calloc(n, sizeof(trec_t));
    cr_assert_not_null(c->recs, "out of memory for %zu records", n);
    char err[512] = "";
    int rc = world_generate_split(cfg, split, n, collect_fn, c, stats, err, sizeof(err));
    cr_assert_eq(rc, 0, "world_generate_split(%s, %zu) failed: %d %s", world_split_name(split), n,
                 rc, err);
    cr_assert_eq(c->n, n, "expected %zu scenes, got %zu", n, c->n);
    return c;
}

static void collect_free(collect_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        trec_t *t = &c->recs[i];
        free(t->caption);
        for (int k = 0; k < t->n_policy; k++) {
            free(t->policy[k].question);
            free(t->policy[k].answer);
            free(t->policy[k].reference);
        }
        for (int k = 0; k < t->n_critic; k++) {
            free(t->critic[k].question);
            free(t->critic[k].answers[0]);
            free(t->critic[k].answers[1]);
        }
    }
    free(c->recs);
    free(c);
}

static int is_yes_no(const char *s) { return !strcmp(s, "yes") || !strcmp(s, "no"); }

/* --------------------------------------------------------------- tests */

Test(world, reference_answers_are_correct_for_every_type)
{
    world_config_t cfg;
    world_config_default(&cfg);
    collect_t *c = collect(&cfg, WORLD_SPLIT_TRAIN, 1500, NULL);
    int seen[8] = {0}, max_words = 0;
    for (size_t i = 0; i < c->n; i++) {
        grid_t g = grid_of(&c->recs[i].scene, &cfg);
        for (int k = 0; k < c->recs[i].n_policy; k++) {
            const tpol_t *it = &c->recs[i].policy[k];
            parsed_q_t q;
            char why[256];
            cr_assert_eq(check_question(&g, it->question, &q, why, sizeof(why)), 0,
                         "scene %zu: %s", i, why);
            seen[q.kind]++;
            cr_assert_str_eq(it->answer, q.truth, "scene %zu '%s': answer '%s', truth '%s'", i,
                             it->question, it->answer, q.truth);
            verdict_t v = check_answer(&g, &q, it->reference);
            cr_assert(v.ok_format, "scene %zu: %s", i, v.why);
            cr_assert_eq(v.described, cfg.describe_first,
                         "scene %zu: reference '%s' %s a scene description", i, it->reference,
                         v.described ? "opens with" : "lacks");
            cr_assert_str_eq(v.boxed, q.truth, "scene %zu '%s': boxed '%s' truth '%s'", i,
                             it->question, v.boxed, q.truth);
            cr_assert_eq(v.false_claims + v.inconsistent, 0,
                         "scene %zu '%s' reference '%s': %s", i, it->question, it->reference,
                         v.why);
            if (v.words > max_words)
                max_words = v.words;
        }
    }
    for (int k = 0; k < 8; k++)
        cr_assert_gt(seen[k], 100, "question family %d asked only %d times", k, seen[k]);
    cr_assert_lt(max_words, 40, "longest reasoning has %d words (expected < 40 on 3x3)",
                 max_words);
    fprintf(stderr, "world: longest reference reasoning %d words\n", max_words);
    collect_free(c);
}

static void check_critic_pairs(const world_config_t *cfg, size_t n_scenes, int print)
{
    collect_t *c = collect(cfg, WORLD_SPLIT_TRAIN, n_scenes, NULL);
    size_t kinds[WK_N_KINDS] = {0}, pref[2] = {0};
    for (size_t i = 0; i < c->n; i++) {
        grid_t g = grid_of(&c->recs[i].scene, cfg);
        for (int k = 0; k < c->recs[i].n_critic; k++) {
            const tcri_t *it = &c->recs[i].critic[k];
            parsed_q_t q;
            char why[256];
            cr_assert_eq(check_question(&g, it->question, &q, why, sizeof(why)), 0,
                         "scene %zu: %s", i, why);
            cr_assert(it->preferred == 0 || it->preferred == 1);
            pref[it->preferred]++;
            kinds[it->kind]++;
            verdict_t good = check_answer(&g, &q, it->answers[it->preferred]);
            verdict_t bad = check_answer(&g, &q, it->answers[!it->preferred]);
            cr_assert(good.ok_format && bad.ok_format, "scene %zu: %s%s", i, good.why, bad.why);
            cr_assert(good.described == cfg->describe_first && bad.described == cfg->describe_first,
                      "scene %zu: description expected %d, preferred %d, rejected %d", i,
                      cfg->describe_first, good.described, bad.described);
            cr_assert_str_eq(good.boxed, q.truth, "scene %zu '%s': preferred says '%s', truth '%s'",
                             i, it->question, good.boxed, q.truth);
            cr_assert_eq(good.false_claims + good.inconsistent, 0,
                         "scene %zu '%s': preferred answer '%s' is flawed: %s", i, it->question,
                         it->answers[it->preferred], good.why);
            /* The wrong answer must be wrong, yet consistent with itself:
             * only the image can tell it apart. */
            cr_assert(strcmp(bad.boxed, q.truth) != 0 || bad.false_claims > 0,
                      "scene %zu '%s': rejected answer '%s' is not wrong", i, it->question,
                      it->answers[!it->preferred]);
            cr_assert_eq(bad.inconsistent, 0,
                         "scene %zu '%s': rejected answer '%s' contradicts itself: %s", i,
                         it->question, it->answers[!it->preferred], bad.why);
            const char *t = q.truth, *w = bad.boxed;
            int tn = strcmp(t, "nothing") == 0, wn = strcmp(w, "nothing") == 0;
            switch (it->kind) {
            case WK_MISCOUNT:
                cr_assert(q.kind == Q_COUNT && abs(atoi(t) - atoi(w)) == 1,
                          "miscount '%s': truth %s, wrong %s", it->question, t, w);
                break;
            case WK_WRONG_COLOR:
                cr_assert(color_w(t) >= 0 && color_w(w) >= 0 && strcmp(t, w),
                          "wrong_color: truth %s, wrong %s", t, w);
                break;
            case WK_WRONG_SHAPE:
                cr_assert(shape_w(t) >= 0 && shape_w(w) >= 0 && strcmp(t, w),
                          "wrong_shape: truth %s, wrong %s", t, w);
                break;
            case WK_HALLUCINATED:
                cr_assert(tn && !wn, "hallucinated: truth %s, wrong %s", t, w);
                break;
            case WK_MISSED:
                cr_assert(!tn && wn, "missed: truth %s, wrong %s", t, w);
                break;
            case WK_FLIPPED:
                cr_assert(is_yes_no(t) && is_yes_no(w) && strcmp(t, w),
                          "flipped: truth %s, wrong %s", t, w);
                break;
            case WK_WRONG_REASONING:
                cr_assert(!strcmp(t, w) && bad.false_claims > 0,
                          "wrong_reasoning: truth %s, wrong %s, false claims %d", t, w,
                          bad.false_claims);
                break;
            default: cr_assert_fail("unknown kind %d", it->kind);
            }
        }
    }
    for (int k = 0; k < WK_N_KINDS; k++)
        cr_assert_gt(kinds[k], 0, "no critic pair of kind %s", world_kind_name((world_kind_t)k));
    size_t total = pref[0] + pref[1];
    cr_assert(pref[0] + 1 >= pref[1] && pref[1] + 1 >= pref[0],
              "preferred index unbalanced: %zu first, %zu second", pref[0], pref[1]);
    if (print) {
        fprintf(stderr, "world: %zu critic pairs checked; kinds:", total);
        for (int k = 0; k < WK_N_KINDS; k++)
            fprintf(stderr, " %s %.1f%%", world_kind_name((world_kind_t)k),
                    100.0 * (double)kinds[k] / (double)total);
        fprintf(stderr, "; preferred first %zu / second %zu\n", pref[0], pref[1]);
    }
    collect_free(c);
}

Test(world, critic_pairs_prefer_the_correct_answer)
{
    world_config_t cfg;
    world_config_default(&cfg);
    check_critic_pairs(&cfg, 1500, 1);
}

Test(world, critic_pairs_correct_on_other_grids)
{
    /* 4x4 at 8 px per cell (the probe's world) and a non-square grid with
     * every colour and shape and more per scene. */
    world_config_t cfg;
    world_config_default(&cfg);
    cfg.rows = cfg.cols = 4;
    cfg.image_size = 32;
    cfg.max_count = 4;
    check_critic_pairs(&cfg, 300, 0);
    world_config_default(&cfg);
    cfg.rows = 2;
    cfg.cols = 5;
    cfg.image_size = 80;
    cfg.n_colors = WORLD_MAX_COLORS;
    cfg.n_shapes = WORLD_MAX_SHAPES;
    cfg.empty_prob = 0.3f;
    cfg.policy_per_scene = 6;
    cfg.critic_per_scene = 6;
    check_critic_pairs(&cfg, 300, 0);
    /* a tiny grid, where targets often rule each other out */
    world_config_default(&cfg);
    cfg.rows = cfg.cols = 2;
    cfg.image_size = 32;
    check_critic_pairs(&cfg, 300, 0);
    /* reasoning that opens with the scene description */
    world_config_default(&cfg);
    cfg.describe_first = 1;
    check_critic_pairs(&cfg, 300, 0);
}

static int answer_index(const world_config_t *cfg, world_qtype_t t, const char *s)
{
    for (int a = 0; a < world_answer_space(cfg, t); a++) {
        char buf[WORLD_ANSWER_MAX];
        if (!strcmp(world_answer_text(cfg, t, a, buf, sizeof(buf)), s))
            return a;
    }
    return -1;
}

Test(world, answer_distributions_are_balanced)
{
    world_config_t cfg;
    world_config_default(&cfg);
    world_stats_t st;
    collect_t *c = collect(&cfg, WORLD_SPLIT_TRAIN, 3000, &st);
    size_t hist[WQ_N_TYPES][WORLD_MAX_ANSWERS] = {{0}}, total[WQ_N_TYPES] = {0};
    /* critic: for each unordered pair of final answers, how often the
     * smaller index is the preferred one */
    static size_t pair_lo_pref[WQ_N_TYPES][WORLD_MAX_ANSWERS][WORLD_MAX_ANSWERS],
        pair_n[WQ_N_TYPES][WORLD_MAX_ANSWERS][WORLD_MAX_ANSWERS];
    size_t color_asked[WORLD_MAX_COLORS] = {0};
    for (size_t i = 0; i < c->n; i++) {
        for (int k = 0; k < c->recs[i].n_policy; k++) {
            const tpol_t *it = &c->recs[i].policy[k];
            int a = answer_index(&cfg, it->type, it->answer);
            cr_assert_geq(a, 0, "unknown answer '%s'", it->answer);
            hist[it->type][a]++;
            total[it->type]++;
            char col[32];
            if (it->type == WQ_COUNT_COLOR && sscanf(it->question, "how many %31s", col) == 1)
                color_asked[color_w(col)]++;
        }
        for (int k = 0; k < c->recs[i].n_critic; k++) {
            const tcri_t *it = &c->recs[i].critic[k];
            char b0[64], b1[64];
            cr_assert_eq(sscanf(strstr(it->answers[0], "\\boxed{") + 7, "%63[^}]", b0), 1);
            cr_assert_eq(sscanf(strstr(it->answers[1], "\\boxed{") + 7, "%63[^}]", b1), 1);
            int x = answer_index(&cfg, it->type, b0), y = answer_index(&cfg, it->type, b1);
            if (x == y)
                continue;
            int lo = x < y ? x : y, hi = x < y ? y : x;
            int pref_val = it->preferred == 0 ? x : y;
            pair_n[it->type][lo][hi]++;
            pair_lo_pref[it->type][lo][hi] += pref_val == lo;
        }
    }
    fprintf(stderr, "world: policy answer shares over %zu train scenes:\n", c->n);
    for (int t = 0; t < WQ_N_TYPES; t++) {
        int space = world_answer_space(&cfg, (world_qtype_t)t);
        fprintf(stderr, "  %-15s n=%4zu ", world_qtype_name((world_qtype_t)t), total[t]);
        cr_assert_gt(total[t], 500, "type %s asked only %zu times", world_qtype_name(t), total[t]);
        for (int a = 0; a < space; a++) {
            char buf[WORLD_ANSWER_MAX];
            double share = (double)hist[t][a] / (double)total[t], want = 1.0 / space;
            fprintf(stderr, " %s %.3f", world_answer_text(&cfg, t, a, buf, sizeof(buf)), share);
            /* Tolerance: within 10% (relative) of uniform. The generator
             * targets exact balance, so this only allows for the odd slot
             * whose least-used answer was unreachable. */
            cr_assert(share > 0.9 * want && share < 1.1 * want,
                      "%s answer %s: share %.3f, expected %.3f +-10%%", world_qtype_name(t), buf,
                      share, want);
        }
        fprintf(stderr, "\n");
    }
    for (int col = 0; col < cfg.n_colors; col++) {
        double share = (double)color_asked[col] / (double)total[WQ_COUNT_COLOR];
        cr_assert(share > 0.15 && share < 0.35, "count_color asks %s %.3f of the time",
                  T_COLORS[col], share);
    }
    /* Pair symmetry: which of two shown final answers is right must not be
     * guessable from the values. Tolerance: 0.5 +- 0.1 for pairs seen >= 50
     * times. */
    int pairs_checked = 0;
    for (int t = 0; t < WQ_N_TYPES; t++)
        for (int lo = 0; lo < WORLD_MAX_ANSWERS; lo++)
            for (int hi = lo + 1; hi < WORLD_MAX_ANSWERS; hi++) {
                if (pair_n[t][lo][hi] < 50)
                    continue;
                double share = (double)pair_lo_pref[t][lo][hi] / (double)pair_n[t][lo][hi];
                cr_assert(share > 0.4 && share < 0.6,
                          "%s pair (%d,%d): smaller preferred %.3f of %zu times",
                          world_qtype_name(t), lo, hi, share, pair_n[t][lo][hi]);
                pairs_checked++;
            }
    cr_assert_gt(pairs_checked, 40, "only %d answer pairs were frequent enough", pairs_checked);
    size_t crit = st.preferred[0] + st.preferred[1];
    double wr = (double)st.critic_by_kind[WK_WRONG_REASONING] / (double)crit;
    cr_assert(wr > 0.10 && wr < 0.20, "wrong_reasoning share %.3f, configured 0.15", wr);
    fprintf(stderr, "world: %d answer pairs symmetric within 0.5+-0.1; fallbacks %zu, skipped %zu\n",
            pairs_checked, st.target_fallbacks, st.skipped_slots);
    collect_free(c);
}

/* FNV-1a over everything a record would put in a file, plus its image. */
static uint64_t digest_split(const world_config_t *cfg, world_split_t split, size_t n)
{
    collect_t *c = collect(cfg, split, n, NULL);
    uint64_t h = 0xcbf29ce484222325ULL;
    uint8_t *px = malloc((size_t)cfg->image_size * cfg->image_size * 3);
    cr_assert_not_null(px);
#define EAT(ptr, len)                                                                             \
    for (size_t z = 0; z < (len); z++) {                                                          \
        h ^= ((const uint8_t *)(ptr))[z];                                                         \
        h *= 0x100000001b3ULL;                                                                    \
    }
    for (size_t i = 0; i < c->n; i++) {
        const trec_t *r = &c->recs[i];
        EAT(r->caption, strlen(r->caption));
        for (int k = 0; k < r->n_policy; k++) {
            EAT(r->policy[k].question, strlen(r->policy[k].question));
            EAT(r->policy[k].reference, strlen(r->policy[k].reference));
        }
        for (int k = 0; k < r->n_critic; k++) {
            EAT(r->critic[k].answers[0], strlen(r->critic[k].answers[0]));
            EAT(r->critic[k].answers[1], strlen(r->critic[k].answers[1]));
            EAT(&r->critic[k].preferred, sizeof(int));
        }
        world_render(cfg, &r->scene, px);
        EAT(px, (size_t)cfg->image_size * cfg->image_size * 3);
    }
#undef EAT
    free(px);
    collect_free(c);
    return h;
}

Test(world, same_seed_same_data_different_seed_different)
{
    world_config_t cfg;
    world_config_default(&cfg);
    cfg.seed = 7;
    uint64_t a = digest_split(&cfg, WORLD_SPLIT_VAL, 200);
    uint64_t b = digest_split(&cfg, WORLD_SPLIT_VAL, 200);
    cr_assert_eq(a, b, "same seed gave different data: %016llx vs %016llx", (unsigned long long)a,
                 (unsigned long long)b);
    cfg.seed = 8;
    uint64_t d = digest_split(&cfg, WORLD_SPLIT_VAL, 200);
    cr_assert_neq(a, d, "seeds 7 and 8 gave identical data");
    /* A prefix is stable: asking for fewer scenes gives the same first ones. */
    cfg.seed = 7;
    collect_t *x = collect(&cfg, WORLD_SPLIT_VAL, 50, NULL);
    collect_t *y = collect(&cfg, WORLD_SPLIT_VAL, 20, NULL);
    for (size_t i = 0; i < 20; i++)
        cr_assert_str_eq(x->recs[i].caption, y->recs[i].caption, "scene %zu differs", i);
    collect_free(x);
    collect_free(y);
}

typedef struct {
    char key[WORLD_MAX_CELLS + 1];
} scene_key_t;

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const scene_key_t *)a)->key, ((const scene_key_t *)b)->key);
}

/* The test's own canonical form of a scene: one character per cell. */
static scene_key_t *scene_keys(const collect_t *c)
{
    scene_key_t *k = calloc(c->n, sizeof(scene_key_t));
    cr_assert_not_null(k);
    for (size_t i = 0; i < c->n; i++) {
        const world_scene_t *s = &c->recs[i].scene;
        for (int j = 0; j < s->rows * s->cols; j++)
            k[i].key[j] = s->color[j] < 0 ? '.' : (char)('A' + s->color[j] * 8 + s->shape[j]);
    }
    qsort(k, c->n, sizeof(scene_key_t), key_cmp);
    return k;
}

static size_t overlap(const scene_key_t *a, size_t na, const scene_key_t *b, size_t nb)
{
    size_t i = 0, j = 0, n = 0;
    while (i < na && j < nb) {
        int d = strcmp(a[i].key, b[j].key);
        if (d == 0) {
            n++;
            i++;
            j++;
        } else if (d < 0)
            i++;
        else
            j++;
    }
    return n;
}

Test(world, splits_are_disjoint_and_scenes_unique)
{
    world_config_t cfg;
    world_config_default(&cfg);
    cfg.seed = 3;
    cfg.policy_per_scene = cfg.critic_per_scene = 1; /* scenes are what matter here */
    size_t n[3] = {3000, 400, 400};
    collect_t *c[4];
    scene_key_t *k[4];
    for (int s = 0; s < 3; s++) {
        c[s] = collect(&cfg, (world_split_t)s, n[s], NULL);
        k[s] = scene_keys(c[s]);
        for (size_t i = 1; i < n[s]; i++)
            cr_assert_str_neq(k[s][i - 1].key, k[s][i].key, "%s repeats scene %s",
                              world_split_name((world_split_t)s), k[s][i].key);
        for (size_t i = 0; i < n[s]; i++)
            cr_assert_eq(world_split_of_hash(world_scene_hash(&c[s]->recs[i].scene)),
                         (world_split_t)s);
    }
    cr_assert_eq(overlap(k[0], n[0], k[1], n[1]), 0, "train and val share scenes");
    cr_assert_eq(overlap(k[0], n[0], k[2], n[2]), 0, "train and test share scenes");
    cr_assert_eq(overlap(k[1], n[1], k[2], n[2]), 0, "val and test share scenes");
    /* The partition does not depend on the seed: another seed's test split
     * is still disjoint from this train split. */
    cfg.seed = 4;
    c[3] = collect(&cfg, WORLD_SPLIT_TEST, 400, NULL);
    k[3] = scene_keys(c[3]);
    cr_assert_eq(overlap(k[0], n[0], k[3], 400), 0, "seed 4 test shares scenes with seed 3 train");
    for (int s = 0; s < 4; s++) {
        free(k[s]);
        collect_free(c[s]);
    }
}

static void check_rendering(const world_config_t *cfg, size_t n_scenes)
{
    collect_t *c = collect(cfg, WORLD_SPLIT_TRAIN, n_scenes, NULL);
    int S = cfg->image_size;
    uint8_t *px = malloc((size_t)S * S * 3);
    cr_assert_not_null(px);
    float cw = (float)S / (float)cfg->cols, ch = (float)S / (float)cfg->rows;
    for (size_t i = 0; i < c->n; i++) {
        const world_scene_t *s = &c->recs[i].scene;
        world_render(cfg, s, px);
        for (int j = 0; j < s->rows * s->cols; j++) {
            int r = j / s->cols, col = j % s->cols;
            int x = (int)(((float)col + 0.5f) * cw), y = (int)(((float)r + 0.5f) * ch);
            const uint8_t *p = px + ((size_t)y * S + x) * 3;
            if (s->color[j] < 0) {
                cr_assert(p[0] == p[1] && p[1] == p[2] && p[0] >= 220,
                          "scene %zu empty cell %d centre (%d,%d) is %u,%u,%u, expected light grey",
                          i, j, x, y, p[0], p[1], p[2]);
                continue;
            }
            uint8_t want[3];
            cr_assert_eq(world_color_rgb(s->color[j], want), 0);
            cr_assert(!memcmp(p, want, 3),
                      "scene %zu cell %d (%s %s) centre (%d,%d) is %u,%u,%u, expected %u,%u,%u", i,
                      j, world_color_name(s->color[j]), world_shape_name(s->shape[j]), x, y, p[0],
                      p[1], p[2], want[0], want[1], want[2]);
            /* The object is a sizeable blob inside its own cell: between
             * 10% and 60% of the cell's pixels carry its colour. */
            int x0 = (int)((float)col * cw), x1 = (int)((float)(col + 1) * cw);
            int y0 = (int)((float)r * ch), y1 = (int)((float)(r + 1) * ch), hit = 0;
            for (int yy = y0; yy < y1; yy++)
                for (int xx = x0; xx < x1; xx++)
                    hit += !memcmp(px + ((size_t)yy * S + xx) * 3, want, 3);
            double frac = (double)hit / (double)((x1 - x0) * (y1 - y0));
            cr_assert(frac > 0.10 && frac < 0.60, "scene %zu cell %d: object covers %.2f of it", i,
                      j, frac);
        }
    }
    free(px);
    collect_free(c);
}

Test(world, rendering_puts_object_colours_at_cell_centres)
{
    world_config_t cfg;
    world_config_default(&cfg);
    check_rendering(&cfg, 400);
    cfg.rows = cfg.cols = 4;
    cfg.image_size = 32; /* the smallest allowed cell, 8 px */
    cfg.n_shapes = WORLD_MAX_SHAPES;
    check_rendering(&cfg, 200);
    world_config_default(&cfg);
    cfg.rows = 2;
    cfg.cols = 3;
    cfg.image_size = 50; /* cells not a whole number of pixels */
    cfg.grid_lines = 0;
    check_rendering(&cfg, 200);
}

Test(world, config_errors_name_the_field)
{
    world_config_t cfg;
    char err[256];
    world_config_default(&cfg);
    cr_assert_eq(world_config_check(&cfg, err, sizeof(err)), 0, "%s", err);
    cfg.image_size = 20;
    cr_assert_eq(world_config_check(&cfg, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "image_size"), "%s", err);
    world_config_default(&cfg);
    cfg.n_colors = 9;
    cr_assert_eq(world_config_check(&cfg, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "n_colors"), "%s", err);
    world_config_default(&cfg);
    cfg.empty_prob = 1.0f;
    cr_assert_eq(world_config_check(&cfg, err, sizeof(err)), -EINVAL);
    cr_assert_not_null(strstr(err, "empty_prob"), "%s", err);
    world_config_default(&cfg);
    cfg.rows = 9;
    cr_assert_eq(world_generate_split(&cfg, WORLD_SPLIT_TRAIN, 1, NULL, NULL, NULL, err,
                                      sizeof(err)),
                 -EINVAL);
    cr_assert_not_null(strstr(err, "grid"), "%s", err);
    char name[32];
    cr_assert_str_eq(world_cell_name(3, 3, 4, name, sizeof(name)), "middle");
    cr_assert_str_eq(world_cell_name(4, 4, 6, name, sizeof(name)), "row 2 column 3");
    for (int i = 0; i < WORLD_MAX_COLORS; i++)
        cr_assert_str_eq(world_color_name(i), T_COLORS[i]);
    for (int i = 0; i < WORLD_MAX_SHAPES; i++)
        cr_assert_str_eq(world_shape_name(i), T_SHAPES[i]);
}

static int stop_after_three(const world_record_t *rec, void *user)
{
    (void)user;
    return rec->index == 2 ? 42 : 0;
}

Test(world, callback_can_stop_the_run)
{
    world_config_t cfg;
    world_config_default(&cfg);
    char err[256];
    world_stats_t st;
    int rc = world_generate_split(&cfg, WORLD_SPLIT_TEST, 10, stop_after_three, NULL, &st, err,
                                  sizeof(err));
    cr_assert_eq(rc, 42, "expected the callback's 42, got %d", rc);
    cr_assert_eq(st.scenes, 3);
}

/* ------------------------------------------------------- files on disk */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void tmp_dir(char *out, size_t len, const char *tag)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(out, len, "%s/world-%s.XXXXXX", base && *base ? base : "/tmp", tag);
    cr_assert_not_null(mkdtemp(out), "mkdtemp %s", out);
}

static void rm_rf(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static const char *str_field(const cJSON *o, const char *key, const char *path, int line)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    cr_assert(cJSON_IsString(v), "%s line %d: field '%s' missing or not a string", path, line,
              key);
    return v->valuestring;
}

Test(world, write_split_gives_parsable_jsonl_and_images)
{
    world_config_t cfg;
    world_config_default(&cfg);
    cfg.seed = 5;
    char dir[4096], dir2[4096], err[512] = "";
    tmp_dir(dir, sizeof(dir), "a");
    tmp_dir(dir2, sizeof(dir2), "b");
    const size_t n = 25;
    world_stats_t st;
    cr_assert_eq(world_write_split(&cfg, WORLD_SPLIT_TEST, n, dir, &st, err, sizeof(err)), 0, "%s",
                 err);
    cr_assert_eq(world_write_split(&cfg, WORLD_SPLIT_TEST, n, dir2, NULL, err, sizeof(err)), 0,
                 "%s", err);
    const char *files[3] = {"test.policy.jsonl", "test.critic.jsonl", "test.captions.jsonl"};
    size_t want_lines[3] = {n * (size_t)cfg.policy_per_scene,
                            st.preferred[0] + st.preferred[1], n};
    cr_assert_eq(want_lines[1], n * (size_t)cfg.critic_per_scene);
    uint8_t *chw = malloc((size_t)3 * cfg.image_size * cfg.image_size);
    uint8_t *hwc = malloc((size_t)3 * cfg.image_size * cfg.image_size);
    uint8_t *ref = malloc((size_t)3 * cfg.image_size * cfg.image_size);
    collect_t *c = collect(&cfg, WORLD_SPLIT_TEST, n, NULL);
    for (int f = 0; f < 3; f++) {
        char path[4200], path2[4200];
        snprintf(path, sizeof(path), "%s/%s", dir, files[f]);
        snprintf(path2, sizeof(path2), "%s/%s", dir2, files[f]);
        size_t len, len2;
        char *text = slurp(path, &len), *text2 = slurp(path2, &len2);
        cr_assert(len == len2 && !memcmp(text, text2, len), "%s differs between two runs",
                  files[f]);
        size_t lines = 0;
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            lines++;
            cJSON *o = cJSON_Parse(line);
            cr_assert_not_null(o, "%s line %zu does not parse: %s", path, lines, line);
            const char *image = str_field(o, "image", path, (int)lines);
            str_field(o, "id", path, (int)lines);
            size_t scene;
            cr_assert_eq(sscanf(image, "images/test-%zu.png", &scene), 1, "bad image path %s",
                         image);
            cr_assert_lt(scene, n);
            if (f == 0) {
                const char *q = str_field(o, "question", path, (int)lines);
                const char *a = str_field(o, "answer", path, (int)lines);
                const char *ref_text = str_field(o, "reference", path, (int)lines);
                str_field(o, "type", path, (int)lines);
                grid_t g = grid_of(&c->recs[scene].scene, &cfg);
                parsed_q_t pq;
                char why[256];
                cr_assert_eq(check_question(&g, q, &pq, why, sizeof(why)), 0, "%s", why);
                cr_assert_str_eq(a, pq.truth, "%s line %zu", path, lines);
                char tail[96];
                snprintf(tail, sizeof(tail), "\\boxed{%s}", a);
                cr_assert_not_null(strstr(ref_text, tail), "reference does not end in %s", tail);
            } else if (f == 1) {
                str_field(o, "question", path, (int)lines);
                const cJSON *ans = cJSON_GetObjectItemCaseSensitive(o, "answers");
                cr_assert(cJSON_IsArray(ans) && cJSON_GetArraySize(ans) == 2,
                          "%s line %zu: answers must be an array of 2", path, lines);
                cr_assert(cJSON_IsString(cJSON_GetArrayItem(ans, 0)) &&
                          cJSON_IsString(cJSON_GetArrayItem(ans, 1)));
                const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "preferred");
                cr_assert(cJSON_IsNumber(p) && (p->valueint == 0 || p->valueint == 1));
                const char *src = str_field(o, "source", path, (int)lines);
                cr_assert_eq(strncmp(src, "builtin:", 8), 0, "source %s", src);
            } else {
                str_field(o, "caption", path, (int)lines);
                /* the image on disk is exactly the rendered scene */
                char ipath[4300];
                snprintf(ipath, sizeof(ipath), "%s/%s", dir, image);
                cr_assert_eq(image_load_rgb(ipath, cfg.image_size, chw, err, sizeof(err)), 0,
                             "%s", err);
                image_chw_to_hwc(chw, cfg.image_size, cfg.image_size, hwc);
                world_render(&cfg, &c->recs[scene].scene, ref);
                cr_assert(!memcmp(hwc, ref, (size_t)3 * cfg.image_size * cfg.image_size),
                          "%s differs from the rendered scene", ipath);
            }
            cJSON_Delete(o);
        }
        cr_assert_eq(lines, want_lines[f], "%s: %zu lines, expected %zu", files[f], lines,
                     want_lines[f]);
        free(text);
        free(text2);
    }
    collect_free(c);
    free(chw);
    free(hwc);
    free(ref);
    /* unwritable output is an error naming the folder */
    char bad[4300];
    snprintf(bad, sizeof(bad), "%s/missing/deeper", dir);
    int rc = world_write_split(&cfg, WORLD_SPLIT_TEST, 1, bad, NULL, err, sizeof(err));
    cr_assert_lt(rc, 0);
    cr_assert_not_null(strstr(err, "missing"), "error does not name the folder: %s", err);
    rm_rf(dir);
    rm_rf(dir2);
}

Test(world, crl_data_end_to_end)
{
    const char *bin = getenv("CRL_BIN_DIR");
    char exe[4200];
    snprintf(exe, sizeof(exe), "%s/crl-data", bin && *bin ? bin : "build/bin");
    struct stat sb;
    if (stat(exe, &sb) != 0) {
        cr_skip_test("%s not built (set CRL_BIN_DIR)", exe);
    }
    char dir[4096], cmd[8800];
    tmp_dir(dir, sizeof(dir), "cli");
    snprintf(cmd, sizeof(cmd), "'%s' --out '%s/data' --train 20 --val 5 --test 5 --quiet", exe,
             dir);
    cr_assert_eq(system(cmd), 0, "command failed: %s", cmd);
    const char *names[] = {"train.policy.jsonl", "val.critic.jsonl", "test.captions.jsonl",
                           "world.json", "images/test-000004.png"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char path[4300];
        snprintf(path, sizeof(path), "%s/data/%s", dir, names[i]);
        cr_assert_eq(stat(path, &sb), 0, "%s was not written", path);
    }
    snprintf(cmd, sizeof(cmd), "'%s' --out '%s/x' --grid 3y3 2>/dev/null", exe, dir);
    cr_assert_neq(system(cmd), 0, "a bad --grid was accepted");
    snprintf(cmd, sizeof(cmd), "'%s' --train 5 2>/dev/null", exe);
    cr_assert_neq(system(cmd), 0, "a missing --out was accepted");
    rm_rf(dir);
}

/* The checker above is only worth something if it catches mistakes: feed
 * it hand-written right and wrong answers about a hand-made scene. */
Test(world, checker_catches_wrong_answers)
{
    world_scene_t s;
    memset(&s, 0, sizeof(s));
    s.rows = s.cols = 3;
    for (int i = 0; i < 9; i++)
        s.color[i] = s.shape[i] = -1;
    s.color[0] = 0, s.shape[0] = 0; /* top left: red circle */
    s.color[4] = 2, s.shape[4] = 1; /* middle: blue square */
    s.color[8] = 0, s.shape[8] = 2; /* bottom right: red triangle */
    world_config_t cfg;
    world_config_default(&cfg);
    grid_t g = grid_of(&s, &cfg);
    struct {
        const char *q, *truth, *ans;
        int false_claims, inconsistent;
    } cases[] = {
        {"how many red objects are there?", "2",
         "<think>red objects: top left, bottom right. 2 in all.</think>\\boxed{2}", 0, 0},
        {"how many red objects are there?", "2",
         "<think>red objects: top left. 1 in all.</think>\\boxed{1}", 1, 0},
        {"how many red objects are there?", "2",
         "<think>red objects: top left, bottom right. 3 in all.</think>\\boxed{3}", 0, 1},
        {"how many red objects are there?", "2",
         "<think>red objects: top left, middle. 2 in all.</think>\\boxed{2}", 1, 0},
        {"how many circles are there?", "1",
         "<think>red objects: top left, bottom right. 2 in all.</think>\\boxed{2}", 0, 1},
        {"what colour is the object at middle?", "blue",
         "<think>middle: blue circle. so blue.</think>\\boxed{blue}", 1, 0},
        {"what colour is the object at middle?", "blue",
         "<think>middle: blue square. so red.</think>\\boxed{red}", 0, 1},
        {"is the red circle above the blue square?", "yes",
         "<think>red circles: top left. blue squares: middle. row 1 is above row 2, so "
         "yes.</think>\\boxed{yes}",
         0, 0},
        {"is the red circle above the blue square?", "yes",
         "<think>red circles: top left. blue squares: middle. row 1 is not above row 2, so "
         "no.</think>\\boxed{no}",
         0, 1},
        {"is the red circle left of the blue square?", "yes",
         "<think>red circles: middle right. blue squares: middle. column 3 is not left of column "
         "2, so no.</think>\\boxed{no}",
         1, 0},
        {"what colour is directly left of the blue square?", "nothing",
         "<think>blue squares: middle. middle left: empty. so nothing.</think>\\boxed{nothing}", 0,
         0},
        {"what colour is directly left of the blue square?", "nothing",
         "<think>blue squares: middle. top left: red circle. so red.</think>\\boxed{red}", 0, 1},
        {"are there more red than blue objects?", "yes",
         "<think>red objects: top left, bottom right. blue objects: middle. 2 vs 1, so "
         "yes.</think>\\boxed{yes}",
         0, 0},
        {"are there more red than blue objects?", "yes",
         "<think>red objects: top left, bottom right. blue objects: middle. 2 vs 1, so "
         "no.</think>\\boxed{no}",
         0, 1},
        {"is there a green circle?", "no",
         "<think>green circles: bottom left. so yes.</think>\\boxed{yes}", 1, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        parsed_q_t q;
        char why[256];
        cr_assert_eq(check_question(&g, cases[i].q, &q, why, sizeof(why)), 0, "%s", why);
        cr_assert_str_eq(q.truth, cases[i].truth, "case %zu '%s'", i, cases[i].q);
        verdict_t v = check_answer(&g, &q, cases[i].ans);
        cr_assert(v.ok_format, "case %zu", i);
        cr_assert_eq(v.false_claims > 0, cases[i].false_claims,
                     "case %zu '%s': false claims %d, expected %s", i, cases[i].ans,
                     v.false_claims, cases[i].false_claims ? "some" : "none");
        cr_assert_eq(v.inconsistent > 0, cases[i].inconsistent,
                     "case %zu '%s': inconsistencies %d (%s), expected %s", i, cases[i].ans,
                     v.inconsistent, v.why, cases[i].inconsistent ? "some" : "none");
    }
    /* ambiguous or malformed questions are refused, not answered */
    parsed_q_t q;
    char why[256];
    cr_assert_neq(check_question(&g, "what colour is directly above the red circle?", &q, why,
                                 sizeof(why)),
                  0, "a neighbour off the grid was answered");
    cr_assert_neq(check_question(&g, "how many things are there?", &q, why, sizeof(why)), 0);
}

/* Parses a caption into the cell order it lists; checks every claim against
 * the scene. Returns the number of cells listed. */
static int caption_cells(const grid_t *g, const char *caption, int *order)
{
    int n = 0, seen[WORLD_MAX_CELLS] = {0};
    const char *p = caption;
    while (*p) {
        int cell = -1;
        size_t used = parse_cell(g, p, &cell);
        cr_assert(used > 0 && p[used] == ':', "caption '%s': no cell name at '%s'", caption, p);
        cr_assert(!seen[cell], "caption '%s' names cell %d twice", caption, cell);
        seen[cell] = 1;
        order[n++] = cell;
        p += used + 2;
        const char *end = strchr(p, '.');
        cr_assert_not_null(end, "caption '%s': claim without a full stop", caption);
        char claim[64];
        snprintf(claim, sizeof(claim), "%.*s", (int)(end - p), p);
        if (g->color[cell] < 0) {
            cr_assert_str_eq(claim, "empty", "caption '%s': cell %d is empty", caption, cell);
        } else {
            char want[64];
            snprintf(want, sizeof(want), "%s %s", T_COLORS[g->color[cell]], T_SHAPES[g->shape[cell]]);
            cr_assert_str_eq(claim, want, "caption '%s': cell %d", caption, cell);
        }
        p = end[1] == ' ' ? end + 2 : end + 1;
    }
    return n;
}

Test(world, captions_name_every_cell_in_shuffled_or_raster_order)
{
    world_config_t shuf, raster;
    world_config_default(&raster);
    cr_assert_eq(raster.caption_shuffle, 0, "raster captions are the default");
    shuf = raster;
    shuf.caption_shuffle = 1;
    const size_t n = 200;
    collect_t *a = collect(&shuf, WORLD_SPLIT_TRAIN, n, NULL);
    collect_t *b = collect(&raster, WORLD_SPLIT_TRAIN, n, NULL);
    size_t not_raster = 0, first_cell[9] = {0};
    for (size_t i = 0; i < n; i++) {
        const trec_t *x = &a->recs[i], *y = &b->recs[i];
        grid_t g = grid_of(&x->scene, &shuf);
        int oa[WORLD_MAX_CELLS], ob[WORLD_MAX_CELLS];
        cr_assert_eq(caption_cells(&g, x->caption, oa), 9, "shuffled caption lists every cell");
        cr_assert_eq(caption_cells(&g, y->caption, ob), 9, "raster caption lists every cell");
        int differs = 0;
        for (int k = 0; k < 9; k++) {
            cr_assert_eq(ob[k], k, "raster caption of scene %zu out of order: '%s'", i, y->caption);
            differs |= oa[k] != k;
        }
        not_raster += differs;
        first_cell[oa[0]]++;
        /* The shuffle draws from its own stream: nothing else changes. */
        cr_assert_eq(x->n_policy, y->n_policy);
        cr_assert_eq(x->n_critic, y->n_critic);
        for (int k = 0; k < x->n_policy; k++)
            cr_assert_str_eq(x->policy[k].reference, y->policy[k].reference, "scene %zu", i);
        for (int k = 0; k < x->n_critic; k++)
            cr_assert_str_eq(x->critic[k].answers[x->critic[k].preferred],
                             y->critic[k].answers[y->critic[k].preferred], "scene %zu", i);
    }
    cr_assert_geq(not_raster, n - 2, "only %zu of %zu shuffled captions differ from raster order",
                  not_raster, n);
    for (int c = 0; c < 9; c++) /* 200 draws over 9 cells: 22 expected each */
        cr_assert(first_cell[c] >= 5 && first_cell[c] <= 50,
                  "cell %d opens %zu of %zu shuffled captions (expected about 22)", c,
                  first_cell[c], n);
    collect_free(a);
    collect_free(b);
}
