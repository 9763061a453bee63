/* reward: the verifiable rewards of crl's GRPO tasks, and the one parser of
 * model responses ("<think>REASONING</think>\boxed{X}") that every other
 * module (prompts, evaluation, replay) uses. Pure functions, no state.
 *
 * Every function takes the response length explicitly: responses may hold
 * NUL bytes or be cut anywhere, and are never read past `len`. All scans
 * are linear in `len`.
 *
 * Format (reward_parse().format_ok == 1): optional whitespace, "<think>",
 * anything without another "<think>", "</think>", optional whitespace,
 * "\boxed{CONTENT}" with balanced braces ("\{" and "\}" are escaped
 * literals), optional whitespace, optionally the literal text "<eos>"
 * (the sampler keeps the eos token, so a decoded response may end with
 * it), optional whitespace, end. CONTENT must hold a non-space character
 * and must not contain another "\boxed". The think part may be empty (as
 * in the paper's format check). A response holding a NUL byte never has
 * the format.
 *
 * Answer extraction (independent of the format, as in the paper: reward =
 * 0.9 * correctness + 0.1 * format): the scored answer is the content of
 * the LAST "\boxed{" in the response; if that last box is never closed,
 * there is no answer. */
#ifndef CRL_REWARD_H
#define CRL_REWARD_H

#include <stddef.h>

#define REWARD_LABEL_MAX 16 /* bytes of a verdict label, NUL included */

typedef enum {
    REWARD_TASK_POLICY = 0, /* score: boxed answer == ground truth (accuracy) */
    REWARD_TASK_CRITIC = 1, /* score: boxed verdict names the preferred label */
} reward_task_t;

typedef struct {
    float w_main;   /* weight of preference (critic) or accuracy (policy); 0.9 */
    float w_format; /* weight of the format term; 0.1 */
    /* 1: preference/accuracy only count when the format is right too.
     * 0 (default, the paper's rule): the two terms are independent. */
    int require_format;
    /* verdict labels, label[0] first in the prompt; default "A", "B". */
    char labels[2][REWARD_LABEL_MAX];
} reward_config_t;

typedef struct {
    int format;     /* 0/1 */
    int preference; /* critic: 0/1; -1 for policy tasks */
    int accuracy;   /* policy: 0/1; -1 for critic tasks */
    int verdict;    /* critic: label index the box names, -1 none or both */
    float total;    /* w_main * (preference or accuracy) + w_format * format */
} reward_parts_t;

/* Offsets into a response; a part is absent when its `has_` flag is 0. */
typedef struct {
    int has_think;    /* "<think>" ... "</think>" found (first pair) */
    size_t think_off; /* content between the tags */
    size_t think_len;
    int has_box;      /* last "\boxed{" found and closed */
    size_t box_off;   /* content inside the braces */
    size_t box_len;
    int format_ok;    /* whole response has the format described above */
} reward_parse_t;

/* Fills the defaults: 0.9 / 0.1, require_format 0, labels "A" / "B". */
void reward_config_default(reward_config_t *cfg);

/* Checks weights are finite and labels are non-empty, NUL-terminated,
 * free of braces and distinct once normalised ("a" and "(A)" collide).
 * Returns 0 or -EINVAL with a message in err. */
int reward_config_check(const reward_config_t *cfg, char *err, size_t errlen);

/* Parses a response of `len` bytes (NULs allowed). Never fails. */
void reward_parse(const char *resp, size_t len, reward_parse_t *out);

/* Which label a verdict (box content, `len` bytes) names: 0, 1, or -1 when
 * it names neither or both. Case-insensitive; tolerates surrounding
 * whitespace, "\text{..}" wrappers, a leading "answer"/"option"/"candidate"/
 * "response" word, surrounding parentheses or brackets and trailing '.' or
 * ':'  ("B", "b", "Answer B", "(B)", "B." all name "B"). */
int reward_verdict(const reward_config_t *cfg, const char *box, size_t len);

/* 1 when `got` (`len` bytes) equals the ground truth `want` (a C string)
 * after normalisation: ASCII case, whitespace runs (collapsed, trimmed),
 * trailing periods, "\text{..}"-style wrappers, number words zero..twenty
 * ("two" == "2"). Nothing else is merged ("yes" != "true"). */
int reward_answer_matches(const char *got, size_t len, const char *want);

/* Scores one response of `len` bytes. `expected` is the preferred label
 * for critic tasks (must be one of cfg->labels, compared normalised) or
 * the ground-truth answer for policy tasks. Returns 0, -EINVAL for NULL
 * arguments or an unknown task or an expected label that is not one of
 * the labels, -ENOMEM when out of memory (out then holds zeros). */
int reward_score(const reward_config_t *cfg, reward_task_t task, const char *resp, size_t len,
                 const char *expected, reward_parts_t *out);

/* Copies the normalised form used by reward_answer_matches into a new
 * string (caller frees); NULL when out of memory. For logs and tests. */
char *reward_normalize_answer(const char *s, size_t len);

#endif
