#include "world.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "image.h"
#include "rng.h"

/* ------------------------------------------------------------------ names */

static const char *const color_names[WORLD_MAX_COLORS] = {"red",    "green",  "blue",
                                                          "yellow", "purple", "orange"};
/* Saturated and far apart, and none of them grey, so no object can be
 * mistaken for the background or a grid line. */
static const uint8_t color_rgb[WORLD_MAX_COLORS][3] = {
    {220, 40, 40}, {40, 170, 60}, {40, 80, 220}, {235, 200, 30}, {150, 60, 190}, {245, 130, 20}};
static const char *const shape_names[WORLD_MAX_SHAPES] = {"circle", "square", "triangle",
                                                          "diamond"};
static const char *const cell_names_3x3[9] = {
    "top left",    "top middle", "top right",     "middle left",  "middle",
    "middle right", "bottom left", "bottom middle", "bottom right"};
static const char *const qtype_names[WQ_N_TYPES] = {
    "count_color", "count_shape",   "count_both",     "color_at",       "shape_at", "exists",
    "compare_color", "compare_shape", "neighbor_color", "neighbor_shape", "relation"};
static const char *const kind_names[WK_N_KINDS] = {"miscount",    "wrong_color", "wrong_shape",
                                                   "hallucinated", "missed",      "flipped",
                                                   "wrong_reasoning"};
static const char *const split_names[WORLD_N_SPLITS] = {"train", "val", "test"};

/* Directions: neighbour questions say "directly <word>", relation questions
 * "<word>". 0 left, 1 right, 2 above, 3 below. */
enum { DIR_LEFT = 0, DIR_RIGHT, DIR_ABOVE, DIR_BELOW, N_DIRS };
static const char *const dir_words[N_DIRS] = {"left of", "right of", "above", "below"};

const char *world_split_name(world_split_t split)
{
    return (unsigned)split < WORLD_N_SPLITS ? split_names[split] : "?";
}
const char *world_qtype_name(world_qtype_t type)
{
    return (unsigned)type < WQ_N_TYPES ? qtype_names[type] : "?";
}
const char *world_kind_name(world_kind_t kind)
{
    return (unsigned)kind < WK_N_KINDS ? kind_names[kind] : "?";
}
const char *world_color_name(int color)
{
    return color >= 0 && color < WORLD_MAX_COLORS ? color_names[color] : NULL;
}
const char *world_shape_name(int shape)
{
    return shape >= 0 && shape < WORLD_MAX_SHAPES ? shape_names[shape] : NULL;
}
int world_color_rgb(int color, uint8_t rgb[3])
{
    if (color < 0 || color >= WORLD_MAX_COLORS)
        return -EINVAL;
    memcpy(rgb, color_rgb[color], 3);
    return 0;
}

const char *world_cell_name(int rows, int cols, int cell, char *buf, size_t len)
{
    if (rows == 3 && cols == 3 && cell >= 0 && cell < 9)
        snprintf(buf, len, "%s", cell_names_3x3[cell]);
    else
        snprintf(buf, len, "row %d column %d", cell / cols + 1, cell % cols + 1);
    return buf;
}

static int is_count_type(world_qtype_t t)
{
    return t == WQ_COUNT_COLOR || t == WQ_COUNT_SHAPE || t == WQ_COUNT_BOTH;
}
static int is_yesno_type(world_qtype_t t)
{
    return t == WQ_EXISTS || t == WQ_COMPARE_COLOR || t == WQ_COMPARE_SHAPE || t == WQ_RELATION;
}
static int is_color_valued(world_qtype_t t)
{
    return t == WQ_COLOR_AT || t == WQ_NEIGHBOR_COLOR;
}
static int is_shape_valued(world_qtype_t t)
{
    return t == WQ_SHAPE_AT || t == WQ_NEIGHBOR_SHAPE;
}

int world_answer_space(const world_config_t *cfg, world_qtype_t type)
{
    if (is_count_type(type))
        return cfg->max_count + 1;
    if (is_color_valued(type))
        return cfg->n_colors + 1;
    if (is_shape_valued(type))
        return cfg->n_shapes + 1;
    return 2;
}

const char *world_answer_text(const world_config_t *cfg, world_qtype_t type, int answer, char *buf,
                              size_t len)
{
    if (is_count_type(type))
        snprintf(buf, len, "%d", answer);
    else if (is_color_valued(type))
        snprintf(buf, len, "%s", answer >= 0 && answer < cfg->n_colors ? color_names[answer]
                                                                        : "nothing");
    else if (is_shape_valued(type))
        snprintf(buf, len, "%s", answer >= 0 && answer < cfg->n_shapes ? shape_names[answer]
                                                                        : "nothing");
    else
        snprintf(buf, len, "%s", answer ? "yes" : "no");
    return buf;
}

/* ----------------------------------------------------------------- config */

void world_config_default(world_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->rows = 3;
    cfg->cols = 3;
    cfg->image_size = 48;
    cfg->n_colors = 4;
    cfg->n_shapes = 3;
    cfg->empty_prob = 0.5f;
    cfg->seed = 1;
    cfg->max_count = 3;
    cfg->policy_per_scene = 4;
    cfg->critic_per_scene = 4;
    cfg->qtype_mask = (1u << WQ_N_TYPES) - 1;
    cfg->wrong_reasoning_frac = 0.15f;
    cfg->grid_lines = 1;
    cfg->caption_all_cells = 1;
    cfg->caption_shuffle = 0;
    cfg->describe_first = 0;
}

int world_config_check(const world_config_t *cfg, char *err, size_t errlen)
{
    if (cfg->rows < 1 || cfg->rows > WORLD_MAX_SIDE || cfg->cols < 1 || cfg->cols > WORLD_MAX_SIDE) {
        snprintf(err, errlen, "world: grid %dx%d: rows and cols must be in 1..%d", cfg->rows,
                 cfg->cols, WORLD_MAX_SIDE);
        return -EINVAL;
    }
    if (cfg->rows * cfg->cols < 2) {
        snprintf(err, errlen, "world: grid %dx%d has fewer than 2 cells", cfg->rows, cfg->cols);
        return -EINVAL;
    }
    int side = cfg->rows > cfg->cols ? cfg->rows : cfg->cols;
    if (cfg->image_size < side * WORLD_MIN_CELL_PX || cfg->image_size > IMAGE_MAX_SIZE) {
        snprintf(err, errlen,
                 "world: image_size %d: must give at least %d px per cell (>= %d for this grid) "
                 "and be <= %d",
                 cfg->image_size, WORLD_MIN_CELL_PX, side * WORLD_MIN_CELL_PX, IMAGE_MAX_SIZE);
        return -EINVAL;
    }
    if (cfg->n_colors < 2 || cfg->n_colors > WORLD_MAX_COLORS) {
        snprintf(err, errlen, "world: n_colors %d must be in 2..%d", cfg->n_colors,
                 WORLD_MAX_COLORS);
        return -EINVAL;
    }
    if (cfg->n_shapes < 2 || cfg->n_shapes > WORLD_MAX_SHAPES) {
        snprintf(err, errlen, "world: n_shapes %d must be in 2..%d", cfg->n_shapes,
                 WORLD_MAX_SHAPES);
        return -EINVAL;
    }
    if (!(cfg->empty_prob >= 0.0f && cfg->empty_prob <= 0.95f)) {
        snprintf(err, errlen, "world: empty_prob %g must be in 0..0.95", (double)cfg->empty_prob);
        return -EINVAL;
    }
    if (cfg->max_count < 1 || cfg->max_count > WORLD_MAX_COUNT ||
        cfg->max_count > cfg->rows * cfg->cols) {
        snprintf(err, errlen, "world: max_count %d must be in 1..%d and at most the cell count",
                 cfg->max_count, WORLD_MAX_COUNT);
        return -EINVAL;
    }
    if (cfg->policy_per_scene < 0 || cfg->policy_per_scene > WORLD_MAX_PER_SCENE ||
        cfg->critic_per_scene < 0 || cfg->critic_per_scene > WORLD_MAX_PER_SCENE) {
        snprintf(err, errlen, "world: policy_per_scene %d / critic_per_scene %d must be in 0..%d",
                 cfg->policy_per_scene, cfg->critic_per_scene, WORLD_MAX_PER_SCENE);
        return -EINVAL;
    }
    if ((cfg->qtype_mask & ((1u << WQ_N_TYPES) - 1)) == 0) {
        snprintf(err, errlen, "world: qtype_mask 0x%x enables no question type", cfg->qtype_mask);
        return -EINVAL;
    }
    if (!(cfg->wrong_reasoning_frac >= 0.0f && cfg->wrong_reasoning_frac <= 1.0f)) {
        snprintf(err, errlen, "world: wrong_reasoning_frac %g must be in 0..1",
                 (double)cfg->wrong_reasoning_frac);
        return -EINVAL;
    }
    return 0;
}

/* ------------------------------------------------------------ scene logic */

uint64_t world_scene_hash(const world_scene_t *s)
{
    /* FNV-1a over the canonical contents, then a splitmix finaliser so that
     * the low bits used by world_split_of_hash are well mixed. */
    uint64_t h = 0xcbf29ce484222325ULL;
#define MIX(byte)                                                                                 \
    do {                                                                                           \
        h ^= (uint8_t)(byte);                                                                      \
        h *= 0x100000001b3ULL;                                                                     \
    } while (0)
    MIX(s->rows);
    MIX(s->cols);
    for (int i = 0; i < s->rows * s->cols; i++) {
        MIX(s->color[i]);
        MIX(s->shape[i]);
    }
#undef MIX
    h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
    h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

world_split_t world_split_of_hash(uint64_t hash)
{
    unsigned bucket = (unsigned)(hash % 8);
    if (bucket < 6)
        return WORLD_SPLIT_TRAIN;
    return bucket == 6 ? WORLD_SPLIT_VAL : WORLD_SPLIT_TEST;
}

/* Question parameters; meaning depends on the type:
 * count_color a=colour; count_shape a=shape; count_both/exists a=colour b=shape;
 * color_at/shape_at a=cell; compare_* a, b = the two colours/shapes;
 * neighbor_* (a,b)=anchor, dir; relation (a,b) vs (c,d), dir. */
typedef struct {
    int8_t a, b, c, d, dir;
} wparam_t;

enum { ED_COLOR = 0, ED_SHAPE, ED_REMOVE, ED_ADD, ED_SWAP };
typedef struct {
    uint8_t op, cell, cell2;
    int8_t color, shape;
} wedit_t;

static int matches(const world_scene_t *s, int i, int color, int shape)
{
    if (s->color[i] == WORLD_EMPTY)
        return 0;
    return (color < 0 || s->color[i] == color) && (shape < 0 || s->shape[i] == shape);
}

static int count_matching(const world_scene_t *s, int color, int shape)
{
    int n = 0;
    for (int i = 0; i < s->rows * s->cols; i++)
        n += matches(s, i, color, shape);
    return n;
}

/* Cell of the only (color, shape) object, or -1 if there are none or several. */
static int unique_cell(const world_scene_t *s, int color, int shape)
{
    int found = -1;
    for (int i = 0; i < s->rows * s->cols; i++) {
        if (matches(s, i, color, shape)) {
            if (found >= 0)
                return -1;
            found = i;
        }
    }
    return found;
}

static int neighbor_of(const world_scene_t *s, int cell, int dir)
{
    int r = cell / s->cols, c = cell % s->cols;
    switch (dir) {
    case DIR_LEFT: c--; break;
    case DIR_RIGHT: c++; break;
    case DIR_ABOVE: r--; break;
    default: r++; break;
    }
    if (r < 0 || r >= s->rows || c < 0 || c >= s->cols)
        return -1;
    return r * s->cols + c;
}

/* The true answer index of a question on a scene, or -1 when the question
 * is not askable there (anchor missing or ambiguous, neighbour off the grid,
 * count above max_count). */
static int answer_of(const world_config_t *cfg, const world_scene_t *s, world_qtype_t t,
                     wparam_t p)
{
    int n, m, ca, cb, nb;
    switch (t) {
    case WQ_COUNT_COLOR:
        n = count_matching(s, p.a, -1);
        return n <= cfg->max_count ? n : -1;
    case WQ_COUNT_SHAPE:
        n = count_matching(s, -1, p.a);
        return n <= cfg->max_count ? n : -1;
    case WQ_COUNT_BOTH:
        n = count_matching(s, p.a, p.b);
        return n <= cfg->max_count ? n : -1;
    case WQ_COLOR_AT:
        return s->color[p.a] == WORLD_EMPTY ? cfg->n_colors : s->color[p.a];
    case WQ_SHAPE_AT:
        return s->shape[p.a] == WORLD_EMPTY ? cfg->n_shapes : s->shape[p.a];
    case WQ_EXISTS:
        return count_matching(s, p.a, p.b) > 0;
    case WQ_COMPARE_COLOR:
        n = count_matching(s, p.a, -1);
        m = count_matching(s, p.b, -1);
        return n > m;
    case WQ_COMPARE_SHAPE:
        n = count_matching(s, -1, p.a);
        m = count_matching(s, -1, p.b);
        return n > m;
    case WQ_NEIGHBOR_COLOR:
    case WQ_NEIGHBOR_SHAPE:
        ca = unique_cell(s, p.a, p.b);
        if (ca < 0)
            return -1;
        nb = neighbor_of(s, ca, p.dir);
        if (nb < 0)
            return -1;
        if (t == WQ_NEIGHBOR_COLOR)
            return s->color[nb] == WORLD_EMPTY ? cfg->n_colors : s->color[nb];
        return s->shape[nb] == WORLD_EMPTY ? cfg->n_shapes : s->shape[nb];
    case WQ_RELATION:
        ca = unique_cell(s, p.a, p.b);
        cb = unique_cell(s, p.c, p.d);
        if (ca < 0 || cb < 0 || ca == cb)
            return -1;
        switch (p.dir) {
        case DIR_LEFT: return ca % s->cols < cb % s->cols;
        case DIR_RIGHT: return ca % s->cols > cb % s->cols;
        case DIR_ABOVE: return ca / s->cols < cb / s->cols;
        default: return ca / s->cols > cb / s->cols;
        }
    default:
        return -1;
    }
}

/* All parameters of type t that are askable on s (answer >= 0 is checked
 * by the caller). Returns how many were written (at most cap). */
static size_t enum_params(const world_config_t *cfg, const world_scene_t *s, world_qtype_t t,
                          wparam_t *out, size_t cap)
{
    size_t n = 0;
    int cells = s->rows * s->cols;
#define PUSH(...)                                                                                 \
    do {                                                                                           \
        if (n < cap)                                                                               \
            out[n++] = (wparam_t){__VA_ARGS__};                                                    \
    } while (0)
    switch (t) {
    case WQ_COUNT_COLOR:
        for (int c = 0; c < cfg->n_colors; c++)
            PUSH(.a = (int8_t)c);
        break;
    case WQ_COUNT_SHAPE:
        for (int k = 0; k < cfg->n_shapes; k++)
            PUSH(.a = (int8_t)k);
        break;
    case WQ_COUNT_BOTH:
    case WQ_EXISTS:
        for (int c = 0; c < cfg->n_colors; c++)
            for (int k = 0; k < cfg->n_shapes; k++)
                PUSH(.a = (int8_t)c, .b = (int8_t)k);
        break;
    case WQ_COLOR_AT:
    case WQ_SHAPE_AT:
        for (int i = 0; i < cells; i++)
            PUSH(.a = (int8_t)i);
        break;
    case WQ_COMPARE_COLOR:
    case WQ_COMPARE_SHAPE: {
        int m = t == WQ_COMPARE_COLOR ? cfg->n_colors : cfg->n_shapes;
        for (int x = 0; x < m; x++)
            for (int y = 0; y < m; y++)
                if (x != y)
                    PUSH(.a = (int8_t)x, .b = (int8_t)y);
        break;
    }
    case WQ_NEIGHBOR_COLOR:
    case WQ_NEIGHBOR_SHAPE:
        for (int i = 0; i < cells; i++) {
            if (s->color[i] == WORLD_EMPTY || unique_cell(s, s->color[i], s->shape[i]) != i)
                continue;
            for (int d = 0; d < N_DIRS; d++)
                if (neighbor_of(s, i, d) >= 0)
                    PUSH(.a = s->color[i], .b = s->shape[i], .dir = (int8_t)d);
        }
        break;
    case WQ_RELATION:
        for (int i = 0; i < cells; i++) {
            if (s->color[i] == WORLD_EMPTY || unique_cell(s, s->color[i], s->shape[i]) != i)
                continue;
            for (int j = 0; j < cells; j++) {
                if (j == i || s->color[j] == WORLD_EMPTY ||
                    unique_cell(s, s->color[j], s->shape[j]) != j)
                    continue;
                for (int d = 0; d < N_DIRS; d++)
                    PUSH(.a = s->color[i], .b = s->shape[i], .c = s->color[j], .d = s->shape[j],
                         .dir = (int8_t)d);
            }
        }
        break;
    default:
        break;
    }
#undef PUSH
    return n;
}

/* ----------------------------------------------------------------- text */

typedef struct {
    char *buf;
    size_t cap, len;
    int overflow;
} sb_t;

static void sb_init(sb_t *sb, char *buf, size_t cap)
{
    sb->buf = buf;
    sb->cap = cap;
    sb->len = 0;
    sb->overflow = 0;
    buf[0] = '\0';
}

__attribute__((format(printf, 2, 3))) static void sb_printf(sb_t *sb, const char *fmt, ...)
{
    if (sb->overflow)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(sb->buf + sb->len, sb->cap - sb->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sb->cap - sb->len) {
        sb->overflow = 1;
        sb->buf[sb->len] = '\0';
        return;
    }
    sb->len += (size_t)n;
}

static void sb_cell(sb_t *sb, const world_scene_t *s, int cell)
{
    char name[32];
    sb_printf(sb, "%s", world_cell_name(s->rows, s->cols, cell, name, sizeof(name)));
}

/* "top left: red circle." or "top left: empty." */
static void sb_cell_claim(sb_t *sb, const world_scene_t *s, int cell)
{
    sb_cell(sb, s, cell);
    if (s->color[cell] == WORLD_EMPTY)
        sb_printf(sb, ": empty.");
    else
        sb_printf(sb, ": %s %s.", color_names[s->color[cell]], shape_names[s->shape[cell]]);
}

/* "red objects: top left, middle." / "circles: none." / "red circles: middle."
 * Returns how many cells were listed. */
static int sb_list_claim(sb_t *sb, const world_scene_t *s, int color, int shape)
{
    if (color >= 0 && shape >= 0)
        sb_printf(sb, "%s %ss:", color_names[color], shape_names[shape]);
    else if (color >= 0)
        sb_printf(sb, "%s objects:", color_names[color]);
    else
        sb_printf(sb, "%ss:", shape_names[shape]);
    int n = 0;
    for (int i = 0; i < s->rows * s->cols; i++) {
        if (!matches(s, i, color, shape))
            continue;
        sb_printf(sb, n ? ", " : " ");
        sb_cell(sb, s, i);
        n++;
    }
    sb_printf(sb, n ? "." : " none.");
    return n;
}

static void question_text(const world_config_t *cfg, const world_scene_t *s, world_qtype_t t,
                          wparam_t p, sb_t *sb)
{
    (void)cfg;
    switch (t) {
    case WQ_COUNT_COLOR: sb_printf(sb, "how many %s objects are there?", color_names[p.a]); break;
    case WQ_COUNT_SHAPE: sb_printf(sb, "how many %ss are there?", shape_names[p.a]); break;
    case WQ_COUNT_BOTH:
        sb_printf(sb, "how many %s %ss are there?", color_names[p.a], shape_names[p.b]);
        break;
    case WQ_COLOR_AT:
        sb_printf(sb, "what colour is the object at ");
        sb_cell(sb, s, p.a);
        sb_printf(sb, "?");
        break;
    case WQ_SHAPE_AT:
        sb_printf(sb, "what shape is the object at ");
        sb_cell(sb, s, p.a);
        sb_printf(sb, "?");
        break;
    case WQ_EXISTS: sb_printf(sb, "is there a %s %s?", color_names[p.a], shape_names[p.b]); break;
    case WQ_COMPARE_COLOR:
        sb_printf(sb, "are there more %s than %s objects?", color_names[p.a], color_names[p.b]);
        break;
    case WQ_COMPARE_SHAPE:
        sb_printf(sb, "are there more %ss than %ss?", shape_names[p.a], shape_names[p.b]);
        break;
    case WQ_NEIGHBOR_COLOR:
    case WQ_NEIGHBOR_SHAPE:
        sb_printf(sb, "what %s is directly %s the %s %s?",
                  t == WQ_NEIGHBOR_COLOR ? "colour" : "shape", dir_words[p.dir], color_names[p.a],
                  shape_names[p.b]);
        break;
    case WQ_RELATION:
        sb_printf(sb, "is the %s %s %s the %s %s?", color_names[p.a], shape_names[p.b],
                  dir_words[p.dir], color_names[p.c], shape_names[p.d]);
        break;
    default: break;
    }
}

/* "<think>REASONING</think>\boxed{ANSWER}" for question (t, p) as seen on
 * scene s (the true scene for a reference, a misperceived one for a wrong
 * answer). The reasoning enumerates what the scene shows, so it is always
 * consistent with its final answer. Returns the answer index, -1 if the
 * question is not askable on s, -ENAMETOOLONG if the text does not fit. */
static int reference_text(const world_config_t *cfg, const world_scene_t *s, world_qtype_t t,
                          wparam_t p, char *out, size_t cap)
{
    int ans = answer_of(cfg, s, t, p);
    if (ans < 0)
        return -1;
    char word[WORLD_ANSWER_MAX];
    world_answer_text(cfg, t, ans, word, sizeof(word));
    sb_t sb;
    sb_init(&sb, out, cap);
    sb_printf(&sb, "<think>");
    if (cfg->describe_first)
        for (int i = 0; i < s->rows * s->cols; i++) {
            sb_cell_claim(&sb, s, i);
            sb_printf(&sb, " ");
        }
    int n, m, ca, cb, nb;
    switch (t) {
    case WQ_COUNT_COLOR:
    case WQ_COUNT_SHAPE:
    case WQ_COUNT_BOTH:
        n = t == WQ_COUNT_COLOR   ? sb_list_claim(&sb, s, p.a, -1)
            : t == WQ_COUNT_SHAPE ? sb_list_claim(&sb, s, -1, p.a)
                                  : sb_list_claim(&sb, s, p.a, p.b);
        sb_printf(&sb, " %d in all.", n);
        break;
    case WQ_COLOR_AT:
    case WQ_SHAPE_AT:
        sb_cell_claim(&sb, s, p.a);
        sb_printf(&sb, " so %s.", word);
        break;
    case WQ_EXISTS:
        sb_list_claim(&sb, s, p.a, p.b);
        sb_printf(&sb, " so %s.", word);
        break;
    case WQ_COMPARE_COLOR:
    case WQ_COMPARE_SHAPE:
        if (t == WQ_COMPARE_COLOR) {
            n = sb_list_claim(&sb, s, p.a, -1);
            sb_printf(&sb, " ");
            m = sb_list_claim(&sb, s, p.b, -1);
        } else {
            n = sb_list_claim(&sb, s, -1, p.a);
            sb_printf(&sb, " ");
            m = sb_list_claim(&sb, s, -1, p.b);
        }
        sb_printf(&sb, " %d vs %d, so %s.", n, m, word);
        break;
    case WQ_NEIGHBOR_COLOR:
    case WQ_NEIGHBOR_SHAPE:
        ca = unique_cell(s, p.a, p.b);
        nb = neighbor_of(s, ca, p.dir);
        sb_list_claim(&sb, s, p.a, p.b);
        sb_printf(&sb, " ");
        sb_cell_claim(&sb, s, nb);
        sb_printf(&sb, " so %s.", word);
        break;
    case WQ_RELATION: {
        ca = unique_cell(s, p.a, p.b);
        cb = unique_cell(s, p.c, p.d);
        sb_list_claim(&sb, s, p.a, p.b);
        sb_printf(&sb, " ");
        sb_list_claim(&sb, s, p.c, p.d);
        int by_row = p.dir == DIR_ABOVE || p.dir == DIR_BELOW;
        int va = by_row ? ca / s->cols + 1 : ca % s->cols + 1;
        int vb = by_row ? cb / s->cols + 1 : cb % s->cols + 1;
        const char *axis = by_row ? "row" : "column";
        sb_printf(&sb, " %s %d is %s%s %s %d, so %s.", axis, va, ans ? "" : "not ",
                  dir_words[p.dir], axis, vb, word);
        break;
    }
    default: break;
    }
    sb_printf(&sb, "</think>\\boxed{%s}", word);
    return sb.overflow ? -ENAMETOOLONG : ans;
}

static int caption_text(const world_config_t *cfg, const world_scene_t *s, char *out, size_t cap)
{
    sb_t sb;
    sb_init(&sb, out, cap);
    int any = 0, n = s->rows * s->cols, order[WORLD_MAX_CELLS];
    for (int i = 0; i < n; i++)
        order[i] = i;
    if (cfg->caption_shuffle) {
        /* Own stream keyed by the scene, so that the split's other draws
         * (and so every question and pair) are the same in both orders. */
        rng_t r;
        rng_seed_stream(&r, cfg->seed ^ world_scene_hash(s), 0x63617074696f6eULL /* "caption" */);
        rng_shuffle_int(&r, order, (size_t)n);
    }
    for (int k = 0; k < n; k++) {
        int i = order[k];
        if (!cfg->caption_all_cells && s->color[i] == WORLD_EMPTY)
            continue;
        sb_printf(&sb, any ? " " : "");
        sb_cell_claim(&sb, s, i);
        any = 1;
    }
    if (!any)
        sb_printf(&sb, "the grid is empty.");
    return sb.overflow ? -ENAMETOOLONG : 0;
}

/* -------------------------------------------------------------- rendering */

void world_render(const world_config_t *cfg, const world_scene_t *s, uint8_t *rgb)
{
    int size = cfg->image_size;
    float cw = (float)size / (float)s->cols, ch = (float)size / (float)s->rows;
    float unit = cw < ch ? cw : ch;
    uint8_t bg = s->background, line = (uint8_t)(s->background - 60);
    for (int y = 0; y < size; y++) {
        int r = (int)((float)y / ch);
        if (r >= s->rows)
            r = s->rows - 1;
        for (int x = 0; x < size; x++) {
            int c = (int)((float)x / cw);
            if (c >= s->cols)
                c = s->cols - 1;
            uint8_t *px = rgb + ((size_t)y * (size_t)size + (size_t)x) * 3;
            px[0] = px[1] = px[2] = bg;
            /* A one-pixel line on the first row/column of every inner cell. */
            if (cfg->grid_lines && ((c > 0 && x == (int)ceilf((float)c * cw)) ||
                                    (r > 0 && y == (int)ceilf((float)r * ch))))
                px[0] = px[1] = px[2] = line;
            int i = r * s->cols + c;
            if (s->color[i] == WORLD_EMPTY)
                continue;
            /* Pixel centre relative to the jittered shape centre, in pixels. */
            float ox = (float)x + 0.5f - ((float)c + 0.5f + s->dx[i]) * cw;
            float oy = (float)y + 0.5f - ((float)r + 0.5f + s->dy[i]) * ch;
            float rad = s->radius[i] * unit;
            int inside;
            switch (s->shape[i]) {
            case 0: inside = ox * ox + oy * oy <= rad * rad; break;
            case 1: inside = fabsf(ox) <= 0.85f * rad && fabsf(oy) <= 0.85f * rad; break;
            case 2: /* apex up at -rad, base at +0.8 rad, base half-width rad */
                inside = oy >= -rad && oy <= 0.8f * rad && fabsf(ox) <= (oy + rad) / 1.8f;
                break;
            default: inside = fabsf(ox) + fabsf(oy) <= 1.1f * rad; break;
            }
            if (inside)
                memcpy(px, color_rgb[s->color[i]], 3);
        }
    }
}

/* -------------------------------------------------------------- generator */

#define N_CANDIDATES_PER_SLOT 2
#define MAX_SCENE_TRIES 20000
#define TARGET_TRIES 64
#define PARAMS_TRIED 8
#define MAX_EDIT_STEPS 4
#define OPT(correct, wrong) ((correct) * WORLD_MAX_ANSWERS + (wrong))

typedef struct {
    int critic;
    world_qtype_t type;
    int wrong_reasoning;                          /* critic: same final answer wanted */
    int n_opts;
    int opts[WORLD_MAX_ANSWERS * WORLD_MAX_ANSWERS]; /* preference order */
} slot_t;

typedef struct {
    world_config_t cfg;
    world_split_t split;
    rng_t rng;
    int cells;
    int n_types;
    world_qtype_t types[WQ_N_TYPES];
    size_t type_use[2][WQ_N_TYPES];
    size_t policy_count[WQ_N_TYPES][WORLD_MAX_ANSWERS];
    size_t critic_count[WQ_N_TYPES][WORLD_MAX_ANSWERS * WORLD_MAX_ANSWERS];
    size_t wr_count[WQ_N_TYPES], critic_total[WQ_N_TYPES];
    size_t critic_emitted;
    int preferred_bit;
    wparam_t *params; /* (params_cap) */
    size_t params_cap;
    wparam_t *matching; /* (params_cap) */
    wedit_t *edits;     /* (edits_cap) per step */
    size_t edits_cap;
    wedit_t *improving; /* (edits_cap) */
    uint64_t *seen; /* open-addressing set of scene hashes, 0 = free slot */
    size_t seen_cap;
    slot_t slots[2 * WORLD_MAX_PER_SCENE];
    int n_slots;
    world_record_t *rec;
    world_stats_t stats;
    char tmp_ref[WORLD_TEXT_MAX], tmp_alt[WORLD_TEXT_MAX];
} gen_t;

static void gen_destroy(gen_t **pg)
{
    if (!pg || !*pg)
        return;
    gen_t *g = *pg;
    free(g->params);
    free(g->matching);
    free(g->edits);
    free(g->improving);
    free(g->seen);
    free(g->rec);
    free(g);
    *pg = NULL;
}

static gen_t *gen_new(const world_config_t *cfg, world_split_t split, size_t n_scenes)
{
    gen_t *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->cfg = *cfg;
    g->split = split;
    /* Each split has its own stream; the content-hash partition, not the
     * stream, is what guarantees disjointness. */
    rng_seed_stream(&g->rng, cfg->seed, 0x776f726c64000000ULL + (uint64_t)split);
    g->cells = cfg->rows * cfg->cols;
    for (int t = 0; t < WQ_N_TYPES; t++)
        if (cfg->qtype_mask & (1u << t))
            g->types[g->n_types++] = (world_qtype_t)t;
    size_t cells = (size_t)g->cells;
    g->params_cap = cells * cells * N_DIRS + (size_t)WORLD_MAX_COLORS * WORLD_MAX_SHAPES + 16;
    g->edits_cap = cells * (size_t)(WORLD_MAX_COLORS * WORLD_MAX_SHAPES + WORLD_MAX_COLORS +
                                    WORLD_MAX_SHAPES + 1) +
                   cells * cells / 2 + 16;
    g->seen_cap = 64;
    while (g->seen_cap < 2 * n_scenes + 64)
        g->seen_cap *= 2;
    g->params = malloc(g->params_cap * sizeof(wparam_t));
    g->matching = malloc(g->params_cap * sizeof(wparam_t));
    g->edits = malloc(g->edits_cap * sizeof(wedit_t));
    g->improving = malloc(g->edits_cap * sizeof(wedit_t));
    g->seen = calloc(g->seen_cap, sizeof(uint64_t));
    g->rec = calloc(1, sizeof(world_record_t));
    if (!g->params || !g->matching || !g->edits || !g->improving || !g->seen || !g->rec)
        gen_destroy(&g);
    return g;
}

static int seen_has(const gen_t *g, uint64_t h)
{
    if (h == 0)
        h = 1; /* 0 marks a free slot */
    for (size_t i = h & (g->seen_cap - 1);; i = (i + 1) & (g->seen_cap - 1)) {
        if (g->seen[i] == 0)
            return 0;
        if (g->seen[i] == h)
            return 1;
    }
}

static void seen_add(gen_t *g, uint64_t h)
{
    if (h == 0)
        h = 1;
    size_t i = h & (g->seen_cap - 1);
    while (g->seen[i] != 0 && g->seen[i] != h)
        i = (i + 1) & (g->seen_cap - 1);
    g->seen[i] = h;
}

static void sample_cell(gen_t *g, world_scene_t *s, int i)
{
    if (rng_uniform(&g->rng) < g->cfg.empty_prob) {
        s->color[i] = s->shape[i] = WORLD_EMPTY;
    } else {
        s->color[i] = (int8_t)rng_below(&g->rng, (uint32_t)g->cfg.n_colors);
        s->shape[i] = (int8_t)rng_below(&g->rng, (uint32_t)g->cfg.n_shapes);
    }
}

static void sample_plain(gen_t *g, world_scene_t *s)
{
    memset(s, 0, sizeof(*s));
    s->rows = g->cfg.rows;
    s->cols = g->cfg.cols;
    for (int i = 0; i < WORLD_MAX_CELLS; i++)
        s->color[i] = s->shape[i] = WORLD_EMPTY;
    for (int i = 0; i < g->cells; i++)
        sample_cell(g, s, i);
}

/* A scene drawn to make a count question of type t have answer n: exactly n
 * random cells hold a matching object and the others are drawn from the
 * plain distribution conditioned on not matching (the exact conditional of
 * the plain distribution, since cells are independent). */
static void sample_with_count(gen_t *g, world_scene_t *s, world_qtype_t t, int n)
{
    sample_plain(g, s);
    int color = -1, shape = -1;
    if (t == WQ_COUNT_COLOR || t == WQ_COUNT_BOTH)
        color = (int)rng_below(&g->rng, (uint32_t)g->cfg.n_colors);
    if (t == WQ_COUNT_SHAPE || t == WQ_COUNT_BOTH)
        shape = (int)rng_below(&g->rng, (uint32_t)g->cfg.n_shapes);
    int order[WORLD_MAX_CELLS];
    for (int i = 0; i < g->cells; i++)
        order[i] = i;
    rng_shuffle_int(&g->rng, order, (size_t)g->cells);
    for (int k = 0; k < g->cells; k++) {
        int i = order[k];
        if (k < n) {
            s->color[i] = (int8_t)(color >= 0 ? color
                                              : (int)rng_below(&g->rng, (uint32_t)g->cfg.n_colors));
            s->shape[i] = (int8_t)(shape >= 0 ? shape
                                              : (int)rng_below(&g->rng, (uint32_t)g->cfg.n_shapes));
        } else {
            for (int tries = 0; tries < 1000 && matches(s, i, color, shape); tries++)
                sample_cell(g, s, i);
            if (matches(s, i, color, shape))
                s->color[i] = s->shape[i] = WORLD_EMPTY;
        }
    }
}

/* Bit a set when some askable parameter of type t has answer a on s. */
static uint32_t answer_mask(gen_t *g, const world_scene_t *s, world_qtype_t t)
{
    size_t n = enum_params(&g->cfg, s, t, g->params, g->params_cap);
    uint32_t mask = 0;
    for (size_t i = 0; i < n; i++) {
        int a = answer_of(&g->cfg, s, t, g->params[i]);
        if (a >= 0)
            mask |= 1u << a;
    }
    return mask;
}

/* Parameters of type t whose answer on s is a, into g->matching, shuffled. */
static size_t matching_params(gen_t *g, const world_scene_t *s, world_qtype_t t, int a)
{
    size_t n = enum_params(&g->cfg, s, t, g->params, g->params_cap), m = 0;
    for (size_t i = 0; i < n; i++)
        if (answer_of(&g->cfg, s, t, g->params[i]) == a)
            g->matching[m++] = g->params[i];
    for (size_t i = m; i > 1; i--) {
        size_t j = rng_below(&g->rng, (uint32_t)i);
        wparam_t tmp = g->matching[i - 1];
        g->matching[i - 1] = g->matching[j];
        g->matching[j] = tmp;
    }
    return m;
}

static int slot_correct(const slot_t *sl, int opt)
{
    return sl->critic ? opt / WORLD_MAX_ANSWERS : opt;
}

/* False where the reasoning behind answer x is forced ("red objects: none.
 * 0 in all.", "top left: empty. so nothing.", "red circles: none. so no."),
 * so no misperception can keep the answer and change the reasoning. */
static int wrong_reasoning_possible(const world_config_t *cfg, world_qtype_t t, int x)
{
    if (is_count_type(t) || t == WQ_EXISTS)
        return x != 0;
    if (t == WQ_COLOR_AT)
        return x != cfg->n_colors;
    if (t == WQ_SHAPE_AT)
        return x != cfg->n_shapes;
    return 1;
}

/* Orders a slot's options least-used first, ties in random order, so the
 * first reachable option keeps every answer (or answer pair) equally used. */
static void order_options(gen_t *g, slot_t *sl)
{
    int space = world_answer_space(&g->cfg, sl->type);
    sl->n_opts = 0;
    if (!sl->critic) {
        for (int a = 0; a < space; a++)
            sl->opts[sl->n_opts++] = a;
    } else {
        for (int x = 0; x < space; x++)
            for (int y = 0; y < space; y++) {
                int ok = sl->wrong_reasoning ? x == y && wrong_reasoning_possible(&g->cfg, sl->type, x)
                         : is_count_type(sl->type) ? abs(x - y) == 1
                                                   : x != y;
                if (ok)
                    sl->opts[sl->n_opts++] = OPT(x, y);
            }
    }
    rng_shuffle_int(&g->rng, sl->opts, (size_t)sl->n_opts);
    /* Stable insertion sort by use count keeps the random tie order. */
    for (int i = 1; i < sl->n_opts; i++) {
        int v = sl->opts[i];
        size_t cv = sl->critic ? g->critic_count[sl->type][v] : g->policy_count[sl->type][v];
        int j = i - 1;
        while (j >= 0) {
            size_t cj = sl->critic ? g->critic_count[sl->type][sl->opts[j]]
                                   : g->policy_count[sl->type][sl->opts[j]];
            if (cj <= cv)
                break;
            sl->opts[j + 1] = sl->opts[j];
            j--;
        }
        sl->opts[j + 1] = v;
    }
}

/* Picks distinct, least-used types for the scene's slots: policy and critic
 * slots avoid each other's types when there are enough types. */
static void plan_slots(gen_t *g)
{
    int used_in_scene[WQ_N_TYPES] = {0};
    int n_total = g->cfg.policy_per_scene + g->cfg.critic_per_scene;
    g->n_slots = 0;
    for (int k = 0; k < n_total; k++) {
        int critic = k >= g->cfg.policy_per_scene;
        if (k == g->cfg.policy_per_scene && n_total > g->n_types)
            memset(used_in_scene, 0, sizeof(used_in_scene)); /* too few types to avoid reuse */
        int order[WQ_N_TYPES];
        for (int i = 0; i < g->n_types; i++)
            order[i] = (int)g->types[i];
        rng_shuffle_int(&g->rng, order, (size_t)g->n_types);
        int best = -1;
        for (int pass = 0; pass < 2 && best < 0; pass++)
            for (int i = 0; i < g->n_types; i++) {
                int t = order[i];
                if (pass == 0 && used_in_scene[t])
                    continue;
                if (best < 0 || g->type_use[critic][t] < g->type_use[critic][best])
                    best = t;
            }
        used_in_scene[best]++;
        g->type_use[critic][best]++;
        slot_t *sl = &g->slots[g->n_slots++];
        sl->critic = critic;
        sl->type = (world_qtype_t)best;
        sl->wrong_reasoning = 0;
        if (critic) {
            size_t wr = g->wr_count[best], total = g->critic_total[best];
            sl->wrong_reasoning =
                (double)(wr + 1) <= (double)g->cfg.wrong_reasoning_frac * (double)(total + 1);
        }
        order_options(g, sl);
    }
}

/* One candidate scene aimed at making slot j's first-choice answer true. */
static void sample_candidate(gen_t *g, world_scene_t *s, int j)
{
    const slot_t *sl = &g->slots[j];
    int want = slot_correct(sl, sl->opts[0]);
    if (is_count_type(sl->type))
        sample_with_count(g, s, sl->type, want);
    else
        sample_plain(g, s);
}

/* How many slots could get their first-choice answer on s, or -1 when some
 * slot's question cannot be asked at all (e.g. a relation question needs two
 * objects that are each the only one of their kind). */
static int candidate_score(gen_t *g, const world_scene_t *s)
{
    int score = 0;
    for (int j = 0; j < g->n_slots; j++) {
        const slot_t *sl = &g->slots[j];
        uint32_t mask = answer_mask(g, s, sl->type);
        if (mask == 0)
            return -1;
        score += (mask >> slot_correct(sl, sl->opts[0])) & 1u;
    }
    return score;
}

static int choose_scene(gen_t *g, world_scene_t *out, char *err, size_t errlen)
{
    int best_score = -1, have_dup = 0, target_tries = 0, valid = 0;
    int n_candidates = g->n_slots > 0 ? N_CANDIDATES_PER_SLOT * g->n_slots : 1;
    world_scene_t s, dup;
    for (int attempt = 0; attempt < MAX_SCENE_TRIES && valid < n_candidates; attempt++) {
        int j = g->n_slots > 0 ? valid % g->n_slots : -1;
        /* Aim at slot j's target for a while, then fall back to plain
         * scenes: a target can rule out other slots' questions (three red
         * circles on a 2x2 grid leave no pair of unique objects). */
        int aimed = j >= 0 && target_tries < TARGET_TRIES;
        if (aimed)
            sample_candidate(g, &s, j);
        else
            sample_plain(g, &s);
        uint64_t h = world_scene_hash(&s);
        if (world_split_of_hash(h) != g->split)
            continue;
        if (seen_has(g, h)) {
            if (!have_dup)
                dup = s;
            have_dup = 1;
            continue;
        }
        /* Rejection towards slot j's target, bounded so a hard target
         * cannot stall the run. */
        if (aimed) {
            const slot_t *sl = &g->slots[j];
            if (!((answer_mask(g, &s, sl->type) >> slot_correct(sl, sl->opts[0])) & 1u)) {
                target_tries++;
                continue;
            }
        }
        int score = g->n_slots > 0 ? candidate_score(g, &s) : 0;
        if (score < 0) {
            target_tries++;
            continue;
        }
        target_tries = 0;
        valid++;
        if (score > best_score) {
            best_score = score;
            *out = s;
        }
        if (score == g->n_slots)
            break;
    }
    if (best_score >= 0)
        return 0;
    if (have_dup && (g->n_slots == 0 || candidate_score(g, &dup) >= 0)) {
        *out = dup;
        g->stats.duplicate_scenes++;
        return 0;
    }
    snprintf(err, errlen,
             "world: no new %s scene on which every planned question can be asked was found in "
             "%d tries; the %dx%d grid is too small for these settings",
             world_split_name(g->split), MAX_SCENE_TRIES, g->cfg.rows, g->cfg.cols);
    return -EDOM;
}

static void draw_jitter(gen_t *g, world_scene_t *s)
{
    /* Bounded so that the pixel at a cell's centre always lies inside the
     * object (checked by tests down to 8 px cells). */
    for (int i = 0; i < WORLD_MAX_CELLS; i++) {
        s->dx[i] = (rng_uniform(&g->rng) - 0.5f) * 0.08f;
        s->dy[i] = (rng_uniform(&g->rng) - 0.5f) * 0.08f;
        s->radius[i] = 0.33f + 0.09f * rng_uniform(&g->rng);
    }
    s->background = (uint8_t)(232 + rng_below(&g->rng, 24));
}

/* Misperception edits of s: change one attribute of an object, remove it,
 * add an object to an empty cell, or swap two cells' contents. */
static size_t enum_edits(const gen_t *g, const world_scene_t *s, wedit_t *out)
{
    size_t n = 0;
    for (int i = 0; i < g->cells; i++) {
        if (s->color[i] == WORLD_EMPTY) {
            for (int c = 0; c < g->cfg.n_colors; c++)
                for (int k = 0; k < g->cfg.n_shapes; k++)
                    out[n++] = (wedit_t){ED_ADD, (uint8_t)i, 0, (int8_t)c, (int8_t)k};
            continue;
        }
        for (int c = 0; c < g->cfg.n_colors; c++)
            if (c != s->color[i])
                out[n++] = (wedit_t){ED_COLOR, (uint8_t)i, 0, (int8_t)c, s->shape[i]};
        for (int k = 0; k < g->cfg.n_shapes; k++)
            if (k != s->shape[i])
                out[n++] = (wedit_t){ED_SHAPE, (uint8_t)i, 0, s->color[i], (int8_t)k};
        out[n++] = (wedit_t){ED_REMOVE, (uint8_t)i, 0, WORLD_EMPTY, WORLD_EMPTY};
    }
    for (int i = 0; i < g->cells; i++)
        for (int j = i + 1; j < g->cells; j++)
            if (s->color[i] != s->color[j] || s->shape[i] != s->shape[j])
                out[n++] = (wedit_t){ED_SWAP, (uint8_t)i, (uint8_t)j, 0, 0};
    return n;
}

static void apply_edit(world_scene_t *s, wedit_t e)
{
    if (e.op == ED_SWAP) {
        int8_t c = s->color[e.cell], k = s->shape[e.cell];
        s->color[e.cell] = s->color[e.cell2];
        s->shape[e.cell] = s->shape[e.cell2];
        s->color[e.cell2] = c;
        s->shape[e.cell2] = k;
    } else {
        s->color[e.cell] = e.color;
        s->shape[e.cell] = e.shape;
    }
}

/* How far s is from giving answer `want` to a yes/no question that may need
 * several edits to flip (0 = there). */
static int flip_distance(const world_scene_t *s, world_qtype_t t, wparam_t p, int want)
{
    int n, m;
    switch (t) {
    case WQ_EXISTS:
        n = count_matching(s, p.a, p.b);
        return want ? (n > 0 ? 0 : 1) : n;
    case WQ_COMPARE_COLOR:
    case WQ_COMPARE_SHAPE:
        n = t == WQ_COMPARE_COLOR ? count_matching(s, p.a, -1) : count_matching(s, -1, p.a);
        m = t == WQ_COMPARE_COLOR ? count_matching(s, p.b, -1) : count_matching(s, -1, p.b);
        return want ? (n > m ? 0 : m - n + 1) : (n > m ? n - m : 0);
    default:
        return -1;
    }
}

/* Builds the misperceived scene behind a wrong answer to (t, p): its
 * reference text has final answer `wrong`, or for same_answer the same
 * final answer with different reasoning. Random among the qualifying
 * single edits; exists/compare flips may take a few greedy steps. Returns
 * 1 and fills *out, or 0 when no such misperception exists. */
static int make_wrong(gen_t *g, const world_scene_t *truth, world_qtype_t t, wparam_t p,
                      int correct, int wrong, int same_answer, world_scene_t *out)
{
    world_scene_t cur = *truth, trial;
    if (same_answer &&
        reference_text(&g->cfg, truth, t, p, g->tmp_ref, sizeof(g->tmp_ref)) != correct)
        return 0;
    for (int step = 0; step < MAX_EDIT_STEPS; step++) {
        size_t n = enum_edits(g, &cur, g->edits), n_improving = 0;
        for (size_t i = n; i > 1; i--) {
            size_t j = rng_below(&g->rng, (uint32_t)i);
            wedit_t tmp = g->edits[i - 1];
            g->edits[i - 1] = g->edits[j];
            g->edits[j] = tmp;
        }
        int dist_now = same_answer ? -1 : flip_distance(&cur, t, p, wrong);
        for (size_t i = 0; i < n; i++) {
            trial = cur;
            apply_edit(&trial, g->edits[i]);
            int a = answer_of(&g->cfg, &trial, t, p);
            if (a < 0)
                continue;
            if (same_answer) {
                if (a != correct)
                    continue;
                if (reference_text(&g->cfg, &trial, t, p, g->tmp_alt, sizeof(g->tmp_alt)) < 0)
                    continue;
                if (strcmp(g->tmp_alt, g->tmp_ref) == 0)
                    continue;
                *out = trial;
                return 1;
            }
            if (a == wrong) {
                *out = trial;
                return 1;
            }
            if (dist_now > 0 && flip_distance(&trial, t, p, wrong) < dist_now)
                g->improving[n_improving++] = g->edits[i];
        }
        if (same_answer || n_improving == 0)
            return 0;
        apply_edit(&cur, g->improving[0]); /* already in random order */
    }
    return 0;
}

static world_kind_t kind_of(world_qtype_t t, int correct, int wrong, const world_config_t *cfg)
{
    if (correct == wrong)
        return WK_WRONG_REASONING;
    if (is_count_type(t))
        return WK_MISCOUNT;
    if (is_yesno_type(t))
        return WK_FLIPPED;
    int nothing = is_color_valued(t) ? cfg->n_colors : cfg->n_shapes;
    if (correct == nothing)
        return WK_HALLUCINATED;
    if (wrong == nothing)
        return WK_MISSED;
    return is_color_valued(t) ? WK_WRONG_COLOR : WK_WRONG_SHAPE;
}

static int emit_policy(gen_t *g, const world_scene_t *s, slot_t *sl)
{
    for (int o = 0; o < sl->n_opts; o++) {
        int a = sl->opts[o];
        size_t m = matching_params(g, s, sl->type, a);
        if (m == 0)
            continue;
        wparam_t p = g->matching[0];
        world_policy_item_t *it = &g->rec->policy[g->rec->n_policy];
        sb_t sb;
        sb_init(&sb, it->question, sizeof(it->question));
        question_text(&g->cfg, s, sl->type, p, &sb);
        if (sb.overflow ||
            reference_text(&g->cfg, s, sl->type, p, it->reference, sizeof(it->reference)) != a)
            return -ENAMETOOLONG;
        it->type = sl->type;
        world_answer_text(&g->cfg, sl->type, a, it->answer, sizeof(it->answer));
        g->rec->n_policy++;
        g->policy_count[sl->type][a]++;
        g->stats.policy_by_type[sl->type]++;
        g->stats.policy_answers[sl->type][a]++;
        if (o > 0)
            g->stats.target_fallbacks++;
        return 0;
    }
    return -EDOM; /* unreachable: every scene answers some value of every type */
}

static int emit_critic(gen_t *g, const world_scene_t *s, slot_t *sl)
{
    world_scene_t wrong_scene;
    for (int mode = 0; mode < 2; mode++) {
        if (mode == 1) {
            sl->wrong_reasoning = !sl->wrong_reasoning;
            order_options(g, sl);
        }
        for (int o = 0; o < sl->n_opts; o++) {
            int correct = sl->opts[o] / WORLD_MAX_ANSWERS, wrong = sl->opts[o] % WORLD_MAX_ANSWERS;
            size_t m = matching_params(g, s, sl->type, correct);
            if (m > PARAMS_TRIED)
                m = PARAMS_TRIED;
            for (size_t k = 0; k < m; k++) {
                wparam_t p = g->matching[k];
                if (!make_wrong(g, s, sl->type, p, correct, wrong, correct == wrong, &wrong_scene))
                    continue;
                world_critic_item_t *it = &g->rec->critic[g->rec->n_critic];
                /* Balanced and unpredictable: each consecutive two pairs
                 * put the preferred answer first once. */
                if (g->critic_emitted % 2 == 0)
                    g->preferred_bit = (int)rng_below(&g->rng, 2);
                else
                    g->preferred_bit = !g->preferred_bit;
                int pref = g->preferred_bit;
                sb_t sb;
                sb_init(&sb, it->question, sizeof(it->question));
                question_text(&g->cfg, s, sl->type, p, &sb);
                if (sb.overflow ||
                    reference_text(&g->cfg, s, sl->type, p, it->answers[pref],
                                   sizeof(it->answers[pref])) != correct ||
                    reference_text(&g->cfg, &wrong_scene, sl->type, p, it->answers[!pref],
                                   sizeof(it->answers[!pref])) != wrong)
                    return -ENAMETOOLONG;
                it->type = sl->type;
                it->kind = kind_of(sl->type, correct, wrong, &g->cfg);
                it->preferred = pref;
                g->rec->n_critic++;
                g->critic_emitted++;
                g->critic_count[sl->type][sl->opts[o]]++;
                g->critic_total[sl->type]++;
                g->wr_count[sl->type] += correct == wrong;
                g->stats.critic_by_type[sl->type]++;
                g->stats.critic_by_kind[it->kind]++;
                g->stats.critic_correct[sl->type][correct]++;
                g->stats.critic_wrong[sl->type][wrong]++;
                g->stats.preferred[pref]++;
                if (mode > 0 || o > 0)
                    g->stats.target_fallbacks++;
                return 0;
            }
        }
    }
    g->stats.skipped_slots++;
    return 0;
}

int world_generate_split(const world_config_t *cfg, world_split_t split, size_t n_scenes,
                         world_record_fn fn, void *user, world_stats_t *stats, char *err,
                         size_t errlen)
{
    gen_t *g = NULL;
    int rc = world_config_check(cfg, err, errlen);
    if (rc)
        return rc;
    if ((unsigned)split >= WORLD_N_SPLITS) {
        snprintf(err, errlen, "world: unknown split %d", (int)split);
        return -EINVAL;
    }
    g = gen_new(cfg, split, n_scenes);
    if (!g) {
        snprintf(err, errlen, "world: out of memory for %zu scenes", n_scenes);
        return -ENOMEM;
    }
    for (size_t idx = 0; idx < n_scenes; idx++) {
        world_record_t *rec = g->rec;
        plan_slots(g);
        world_scene_t s;
        rc = choose_scene(g, &s, err, errlen);
        if (rc)
            goto fail;
        draw_jitter(g, &s);
        seen_add(g, world_scene_hash(&s));
        memset(rec, 0, sizeof(*rec));
        rec->split = split;
        rec->index = idx;
        rec->scene = s;
        rec->hash = world_scene_hash(&s);
        if (caption_text(cfg, &s, rec->caption, sizeof(rec->caption)) != 0) {
            snprintf(err, errlen, "world: caption of scene %zu does not fit", idx);
            rc = -ENAMETOOLONG;
            goto fail;
        }
        for (int j = 0; j < g->n_slots; j++) {
            rc = g->slots[j].critic ? emit_critic(g, &s, &g->slots[j])
                                    : emit_policy(g, &s, &g->slots[j]);
            if (rc) {
                snprintf(err, errlen, "world: %s question of scene %zu could not be written (%s)",
                         world_qtype_name(g->slots[j].type), idx, strerror(-rc));
                goto fail;
            }
        }
        g->stats.scenes++;
        if (fn) {
            rc = fn(rec, user);
            if (rc)
                goto fail;
        }
    }
fail:
    if (stats && g)
        *stats = g->stats;
    gen_destroy(&g);
    return rc;
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    const world_config_t *cfg;
    const char *dir;
    FILE *policy, *critic, *captions;
    uint8_t *pixels; /* (S, S, 3) */
    char *err;
    size_t errlen;
} writer_t;

static int put_json_line(FILE *f, cJSON *obj, const char *path, char *err, size_t errlen)
{
    char *line = obj ? cJSON_PrintUnformatted(obj) : NULL;
    int rc = 0;
    if (!line) {
        snprintf(err, errlen, "%s: out of memory building a JSON record", path);
        rc = -ENOMEM;
    } else if (fputs(line, f) == EOF || fputc('\n', f) == EOF) {
        rc = -errno;
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
    }
    if (line)
        cJSON_free(line);
    cJSON_Delete(obj);
    return rc;
}

static int write_record(const world_record_t *rec, void *user)
{
    writer_t *w = user;
    const char *split = world_split_name(rec->split);
    char image_rel[64], image_path[4096], id[96], path[4096], src[64];
    snprintf(image_rel, sizeof(image_rel), "images/%s-%06zu.png", split, rec->index);
    snprintf(image_path, sizeof(image_path), "%s/%s", w->dir, image_rel);
    world_render(w->cfg, &rec->scene, w->pixels);
    if (image_write_png(image_path, w->pixels, w->cfg->image_size, w->cfg->image_size) != 0) {
        snprintf(w->err, w->errlen, "%s: cannot write PNG", image_path);
        return -EIO;
    }
    int rc;
    cJSON *o = cJSON_CreateObject();
    snprintf(id, sizeof(id), "%s-%06zu", split, rec->index);
    snprintf(path, sizeof(path), "%s/%s.captions.jsonl", w->dir, split);
    if (o && (!cJSON_AddStringToObject(o, "id", id) ||
              !cJSON_AddStringToObject(o, "image", image_rel) ||
              !cJSON_AddStringToObject(o, "caption", rec->caption))) {
        cJSON_Delete(o);
        o = NULL;
    }
    if ((rc = put_json_line(w->captions, o, path, w->err, w->errlen)) != 0)
        return rc;
    snprintf(path, sizeof(path), "%s/%s.policy.jsonl", w->dir, split);
    for (int k = 0; k < rec->n_policy; k++) {
        const world_policy_item_t *it = &rec->policy[k];
        snprintf(id, sizeof(id), "%s-%06zu-p%d", split, rec->index, k);
        snprintf(src, sizeof(src), "builtin:%s", world_qtype_name(it->type));
        o = cJSON_CreateObject();
        if (o && (!cJSON_AddStringToObject(o, "id", id) ||
                  !cJSON_AddStringToObject(o, "image", image_rel) ||
                  !cJSON_AddStringToObject(o, "question", it->question) ||
                  !cJSON_AddStringToObject(o, "answer", it->answer) ||
                  !cJSON_AddStringToObject(o, "reference", it->reference) ||
                  !cJSON_AddStringToObject(o, "type", world_qtype_name(it->type)) ||
                  !cJSON_AddStringToObject(o, "source", src))) {
            cJSON_Delete(o);
            o = NULL;
        }
        if ((rc = put_json_line(w->policy, o, path, w->err, w->errlen)) != 0)
            return rc;
    }
    snprintf(path, sizeof(path), "%s/%s.critic.jsonl", w->dir, split);
    for (int k = 0; k < rec->n_critic; k++) {
        const world_critic_item_t *it = &rec->critic[k];
        snprintf(id, sizeof(id), "%s-%06zu-c%d", split, rec->index, k);
        snprintf(src, sizeof(src), "builtin:%s", world_kind_name(it->kind));
        o = cJSON_CreateObject();
        cJSON *arr = cJSON_CreateArray();
        cJSON *a0 = cJSON_CreateString(it->answers[0]), *a1 = cJSON_CreateString(it->answers[1]);
        int ok = o && arr && a0 && a1;
        if (ok) {
            cJSON_AddItemToArray(arr, a0);
            cJSON_AddItemToArray(arr, a1);
            a0 = a1 = NULL;
            ok = cJSON_AddStringToObject(o, "id", id) &&
                 cJSON_AddStringToObject(o, "image", image_rel) &&
                 cJSON_AddStringToObject(o, "question", it->question);
            if (ok) {
                cJSON_AddItemToObject(o, "answers", arr);
                arr = NULL;
                ok = cJSON_AddNumberToObject(o, "preferred", it->preferred) &&
                     cJSON_AddStringToObject(o, "source", src) &&
                     cJSON_AddStringToObject(o, "type", world_qtype_name(it->type));
            }
        }
        cJSON_Delete(arr);
        cJSON_Delete(a0);
        cJSON_Delete(a1);
        if (!ok) {
            cJSON_Delete(o);
            o = NULL;
        }
        if ((rc = put_json_line(w->critic, o, path, w->err, w->errlen)) != 0)
            return rc;
    }
    return 0;
}

static int make_dir(const char *path, char *err, size_t errlen)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        int rc = -errno;
        snprintf(err, errlen, "%s: cannot create directory: %s", path, strerror(errno));
        return rc;
    }
    return 0;
}

static FILE *open_out(const char *dir, const char *split, const char *what, char *err,
                      size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.%s.jsonl", dir, split, what);
    FILE *f = fopen(path, "w");
    if (!f)
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    return f;
}

static int close_out(FILE **f, const char *dir, const char *split, const char *what, char *err,
                     size_t errlen, int rc)
{
    if (!*f)
        return rc;
    if (fclose(*f) != 0 && rc == 0) {
        rc = -errno;
        snprintf(err, errlen, "%s/%s.%s.jsonl: close failed: %s", dir, split, what,
                 strerror(errno));
    }
    *f = NULL;
    return rc;
}

int world_write_split(const world_config_t *cfg, world_split_t split, size_t n_scenes,
                      const char *dir, world_stats_t *stats, char *err, size_t errlen)
{
    writer_t w = {.cfg = cfg, .dir = dir, .err = err, .errlen = errlen};
    char images[4096];
    const char *name = world_split_name(split);
    int rc = world_config_check(cfg, err, errlen);
    if (rc)
        return rc;
    if ((unsigned)split >= WORLD_N_SPLITS) {
        snprintf(err, errlen, "world: unknown split %d", (int)split);
        return -EINVAL;
    }
    snprintf(images, sizeof(images), "%s/images", dir);
    if ((rc = make_dir(dir, err, errlen)) != 0 || (rc = make_dir(images, err, errlen)) != 0)
        return rc;
    w.pixels = malloc((size_t)cfg->image_size * (size_t)cfg->image_size * 3);
    if (!w.pixels) {
        snprintf(err, errlen, "world: out of memory for a %d px image", cfg->image_size);
        return -ENOMEM;
    }
    if (!(w.policy = open_out(dir, name, "policy", err, errlen)) ||
        !(w.critic = open_out(dir, name, "critic", err, errlen)) ||
        !(w.captions = open_out(dir, name, "captions", err, errlen))) {
        rc = -EIO;
        goto fail;
    }
    rc = world_generate_split(cfg, split, n_scenes, write_record, &w, stats, err, errlen);
fail:
    rc = close_out(&w.policy, dir, name, "policy", err, errlen, rc);
    rc = close_out(&w.critic, dir, name, "critic", err, errlen, rc);
    rc = close_out(&w.captions, dir, name, "captions", err, errlen, rc);
    free(w.pixels);
    return rc;
}
