/* world: crl's built-in data world. A seeded generator of grid scenes (each
 * cell empty or holding one coloured shape), their rendered images,
 * captions, policy questions with reference answers, and critic pairs (a
 * correct answer and a plausible wrong one), in disjoint train/val/test
 * splits. Everything is a pure function of the config and the split, so the
 * data loader and tests can re-derive a split in memory instead of reading
 * files (world_generate_split), and crl-data writes the same records to
 * disk (world_write_split).
 *
 * Design levers (see /work/shared/RECIPE.md):
 * - Answers are balanced per question type: a slot's target answer is chosen
 *   first (the least used one so far) and the scene is built or selected to
 *   make it true, so shifting an answer prior earns nothing.
 * - A wrong critic answer is the reference reasoning run on a *misperceived*
 *   scene (one or a few cell edits), so it is internally consistent: it can
 *   only be caught by looking at the image. For every unordered pair of final
 *   answers, each side is the preferred one equally often.
 * - Split membership is a fixed function of the scene's contents hash, so
 *   no scene can appear in two splits whatever the seeds and sizes. */
#ifndef CRL_WORLD_H
#define CRL_WORLD_H

#include <stddef.h>
#include <stdint.h>

#define WORLD_MAX_SIDE 8
#define WORLD_MAX_CELLS (WORLD_MAX_SIDE * WORLD_MAX_SIDE)
#define WORLD_MAX_COLORS 6 /* red green blue yellow purple orange, in that order */
#define WORLD_MAX_SHAPES 4 /* circle square triangle diamond, in that order */
#define WORLD_MAX_COUNT 8  /* largest count answer a count question may have */
#define WORLD_MAX_ANSWERS 16
#define WORLD_MAX_PER_SCENE 16
#define WORLD_MIN_CELL_PX 8 /* smaller cells cannot show a shape reliably */
#define WORLD_TEXT_MAX 3072
#define WORLD_CAPTION_MAX 4096
#define WORLD_ANSWER_MAX 32
#define WORLD_EMPTY (-1)

typedef enum { WORLD_SPLIT_TRAIN = 0, WORLD_SPLIT_VAL, WORLD_SPLIT_TEST, WORLD_N_SPLITS } world_split_t;

typedef enum {
    WQ_COUNT_COLOR = 0, /* how many red objects are there?            -> 0..max_count */
    WQ_COUNT_SHAPE,     /* how many circles are there?                -> 0..max_count */
    WQ_COUNT_BOTH,      /* how many red circles are there?            -> 0..max_count */
    WQ_COLOR_AT,        /* what colour is the object at top left?     -> colour | nothing */
    WQ_SHAPE_AT,        /* what shape is the object at top left?      -> shape | nothing */
    WQ_EXISTS,          /* is there a red circle?                     -> yes | no */
    WQ_COMPARE_COLOR,   /* are there more red than blue objects?      -> yes | no (ties: no) */
    WQ_COMPARE_SHAPE,   /* are there more circles than squares?       -> yes | no */
    WQ_NEIGHBOR_COLOR,  /* what colour is directly left of the blue square? -> colour | nothing */
    WQ_NEIGHBOR_SHAPE,  /* what shape is directly above the blue square?    -> shape | nothing */
    WQ_RELATION,        /* is the red circle above the green triangle?      -> yes | no */
    WQ_N_TYPES
} world_qtype_t;

/* How a critic pair's rejected answer is wrong. */
typedef enum {
    WK_MISCOUNT = 0,     /* count off by one: its enumeration misses or adds an item */
    WK_WRONG_COLOR,      /* names another colour for a real object */
    WK_WRONG_SHAPE,      /* names another shape for a real object */
    WK_HALLUCINATED,     /* describes an object in an empty cell */
    WK_MISSED,           /* says "nothing" where there is an object */
    WK_FLIPPED,          /* yes/no flipped, its enumeration misplaced/missed to match */
    WK_WRONG_REASONING,  /* right final answer, but its reasoning states something false */
    WK_N_KINDS
} world_kind_t;

typedef struct {
    int rows, cols;           /* grid; default 3 x 3, each 1..WORLD_MAX_SIDE */
    int image_size;           /* pixels per side; default 48 (16 px per cell) */
    int n_colors;             /* first n of the palette; default 4, 2..WORLD_MAX_COLORS */
    int n_shapes;             /* first n shapes; default 3, 2..WORLD_MAX_SHAPES */
    float empty_prob;         /* chance a cell is empty in a plain scene; default 0.5 */
    uint64_t seed;            /* default 1 */
    int max_count;            /* count answers are balanced over 0..max_count; default 3 */
    int policy_per_scene;     /* policy questions per scene; default 4 */
    int critic_per_scene;     /* critic pairs per scene; default 4 */
    uint32_t qtype_mask;      /* bit t enables world_qtype_t t; default all */
    float wrong_reasoning_frac; /* share of critic pairs of kind WK_WRONG_REASONING
                                 * (per type, where possible); default 0.15 */
    int grid_lines;           /* draw thin grid lines; default 1 */
    int caption_all_cells;    /* caption lists empty cells too; default 1 */
    int caption_shuffle;      /* caption lists the cells in a random order (drawn per scene
                               * from seed and scene, so nothing else in the split changes);
                               * default 0 = raster order. A 4-layer model did not learn in
                               * 800 steps to read a cell by its name from shuffled captions. */
    int describe_first;       /* every reasoning opens with the whole scene in raster order
                               * ("<think>top left: red circle. top middle: empty. ...
                               * so red.</think>"); default 0. Measured at the demo's
                               * size: the model describes scenes perfectly after ~300
                               * steps but does not learn to answer from its own
                               * description any sooner than from the image (policy
                               * 0.34 vs 0.40 at step 800), and answers are 3x longer. */
} world_config_t;

/* A scene: contents plus the per-object rendering jitter drawn with it. */
typedef struct {
    int rows, cols;
    int8_t color[WORLD_MAX_CELLS]; /* row-major; WORLD_EMPTY or palette index */
    int8_t shape[WORLD_MAX_CELLS]; /* WORLD_EMPTY or shape index */
    float dx[WORLD_MAX_CELLS], dy[WORLD_MAX_CELLS]; /* centre offset, fraction of a cell */
    float radius[WORLD_MAX_CELLS];                  /* fraction of a cell */
    uint8_t background;                             /* grey level of the background */
} world_scene_t;

typedef struct {
    world_qtype_t type;
    char question[WORLD_TEXT_MAX];
    char answer[WORLD_ANSWER_MAX];  /* final answer: "2", "red", "yes", "nothing", ... */
    char reference[WORLD_TEXT_MAX]; /* "<think>REASONING</think>\boxed{ANSWER}" */
} world_policy_item_t;

typedef struct {
    world_qtype_t type;
    world_kind_t kind;
    char question[WORLD_TEXT_MAX];
    char answers[2][WORLD_TEXT_MAX]; /* both "<think>..</think>\boxed{..}" */
    int preferred;                   /* index of the correct answer, 0 or 1 */
} world_critic_item_t;

/* Everything generated for one scene. Owned by the generator; valid only
 * during the callback. */
typedef struct {
    world_split_t split;
    size_t index;  /* scene number within the split, 0-based */
    uint64_t hash; /* world_scene_hash(&scene) */
    world_scene_t scene;
    char caption[WORLD_CAPTION_MAX];
    int n_policy, n_critic;
    world_policy_item_t policy[WORLD_MAX_PER_SCENE];
    world_critic_item_t critic[WORLD_MAX_PER_SCENE];
} world_record_t;

/* What a split run produced, for summaries and balance tests. Answer
 * indices: counts are the number; colour/shape types use the palette index
 * and n_colors / n_shapes for "nothing"; yes/no types use 0 = no, 1 = yes. */
typedef struct {
    size_t scenes;
    size_t duplicate_scenes; /* accepted although seen before in this split (tiny grids only) */
    size_t policy_by_type[WQ_N_TYPES];
    size_t policy_answers[WQ_N_TYPES][WORLD_MAX_ANSWERS];
    size_t critic_by_type[WQ_N_TYPES];
    size_t critic_by_kind[WK_N_KINDS];
    size_t critic_correct[WQ_N_TYPES][WORLD_MAX_ANSWERS]; /* preferred answer's value */
    size_t critic_wrong[WQ_N_TYPES][WORLD_MAX_ANSWERS];   /* rejected answer's value */
    size_t preferred[2];
    size_t target_fallbacks; /* slots whose first-choice answer was not reachable */
    size_t skipped_slots;    /* critic slots for which no wrong answer existed */
} world_stats_t;

/* Called once per scene in order; return nonzero to stop the run (that
 * value is then returned by world_generate_split). */
typedef int (*world_record_fn)(const world_record_t *rec, void *user);

void world_config_default(world_config_t *cfg);
/* 0 if usable, else -EINVAL with the offending field named in err. */
int world_config_check(const world_config_t *cfg, char *err, size_t errlen);

/* Generates n_scenes scenes of a split, deterministically from (cfg, split),
 * calling fn for each. stats (may be NULL) is zeroed and filled. Returns 0,
 * fn's nonzero value, or a negative errno with err set. */
int world_generate_split(const world_config_t *cfg, world_split_t split, size_t n_scenes,
                         world_record_fn fn, void *user, world_stats_t *stats, char *err,
                         size_t errlen);

/* Writes a split under dir (created if missing, parent must exist):
 * dir/images/<split>-NNNNNN.png and dir/<split>.{policy,critic,captions}.jsonl
 * with image paths relative to dir. Returns 0 or a negative errno with err
 * naming the file. */
int world_write_split(const world_config_t *cfg, world_split_t split, size_t n_scenes,
                      const char *dir, world_stats_t *stats, char *err, size_t errlen);

/* Renders the scene as interleaved RGB (size, size, 3) with cfg->image_size
 * and cfg->grid_lines. */
void world_render(const world_config_t *cfg, const world_scene_t *scene,
                  uint8_t *rgb /* (S, S, 3) */);

/* Hash of the scene's contents (grid size, colours, shapes; not the jitter). */
uint64_t world_scene_hash(const world_scene_t *scene);
/* The only split a scene with this hash may belong to: 6/8 train, 1/8 val,
 * 1/8 test, independent of seed. */
world_split_t world_split_of_hash(uint64_t hash);

const char *world_split_name(world_split_t split);   /* "train", "val", "test" */
const char *world_qtype_name(world_qtype_t type);    /* "count_color", ... */
const char *world_kind_name(world_kind_t kind);      /* "miscount", ... */
const char *world_color_name(int color);             /* "red", ...; NULL out of range */
const char *world_shape_name(int shape);             /* "circle", ...; NULL out of range */
/* Palette colour as RGB; returns -EINVAL out of range. */
int world_color_rgb(int color, uint8_t rgb[3]);
/* "top left" ... "bottom right" for 3 x 3 grids, else "row R column C"
 * (1-based). Writes into buf and returns it. */
const char *world_cell_name(int rows, int cols, int cell, char *buf, size_t len);
/* Text of an answer index of a question type (see world_stats_t). */
const char *world_answer_text(const world_config_t *cfg, world_qtype_t type, int answer, char *buf,
                              size_t len);
/* Number of answer values of a type under cfg. */
int world_answer_space(const world_config_t *cfg, world_qtype_t type);

#endif
