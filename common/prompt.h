/* prompt: every prompt template and supervised target of crl, in one
 * place — the policy prompt, the critic prompt (two variants, candidates in
 * a chosen order under configurable verdict labels), the caption prompt,
 * and the warm-up targets that teach the response format the rewards check.
 * Prompts are text only: whoever builds the token sequence puts the image
 * tokens (<img> ... </img>) in front of the text.
 *
 * Every function returns new strings that the caller frees (free(), or
 * prompt_task_free for a prompt_task_t). */
#ifndef CRL_PROMPT_H
#define CRL_PROMPT_H

#include <stddef.h>

#include "dataset.h"
#include "reward.h"
#include "rng.h"

typedef enum {
    /* candidates shown as written, reasoning included */
    PROMPT_CRITIC_FULL = 0,
    /* candidates shown as their final answer only ("Answer A: \boxed{2}"),
     * so the critic must work the question out from the image itself */
    PROMPT_CRITIC_FINAL_ONLY = 1,
} prompt_critic_variant_t;

/* Order of the two candidates in a critic prompt. */
enum {
    PROMPT_ORDER_RANDOM = -1, /* drawn from the rng (rng_below(rng, 2)) */
    PROMPT_ORDER_KEEP = 0,    /* answers[0] under labels[0], answers[1] under labels[1] */
    PROMPT_ORDER_SWAP = 1,    /* answers[1] under labels[0], answers[0] under labels[1] */
};

typedef struct {
    prompt_critic_variant_t variant;
    /* verdict labels: labels[0] names the candidate shown first. Must be
     * the same as the reward config's (see prompt_options_from_reward). */
    char labels[2][REWARD_LABEL_MAX];
} prompt_options_t;

/* A critic prompt after the shuffle. */
typedef struct {
    char *text;          /* prompt text; caller frees */
    int swapped;         /* 1 when answers[1] is shown first */
    int preferred_label; /* 0/1: the label that names the preferred answer */
} prompt_critic_t;

/* Everything a learner needs for one record: what to show, how to score
 * the responses, and what to imitate in the supervised warm-up. */
typedef struct {
    char *text;          /* prompt text */
    int scored;          /* 1: critic/policy task with a verifiable reward */
    reward_task_t task;  /* when scored */
    char *expected;      /* when scored: the preferred label or the ground truth */
    char *target;        /* warm-up target; NULL when the record has none
                            (a policy record without "reference") */
    int swapped;         /* critic: candidates shown in swapped order */
    int preferred_label; /* critic: 0/1; -1 otherwise */
} prompt_task_t;

/* FULL variant, labels "A" / "B". */
void prompt_options_default(prompt_options_t *opt);
/* Copies the labels of a reward config into opt (variant unchanged). */
void prompt_options_from_reward(prompt_options_t *opt, const reward_config_t *cfg);

/* Policy prompt: the question, then the format instruction. NULL on OOM. */
char *prompt_policy(const char *question);
/* Caption prompt (fixed text). NULL on OOM. */
char *prompt_caption(void);

/* Critic prompt for a question and two full responses of which
 * answers[preferred] is the better one. order: PROMPT_ORDER_* (rng needed
 * only for RANDOM). Returns 0, -EINVAL (bad arguments or labels), -ENOMEM. */
int prompt_critic(const prompt_options_t *opt, const char *question, const char *const answers[2],
                  int preferred, int order, rng_t *rng, prompt_critic_t *out);

/* Warm-up target for a critic prompt built with the same opt and `swapped`:
 * FINAL_ONLY: "<think>" + the preferred answer's own reasoning + " So the
 * answer is X." then the candidates checked in the order shown, stopping at
 * the one that agrees: " Answer A says X: correct.</think>\boxed{A}" or
 * " Answer A says Y: wrong. Answer B says X: correct.</think>\boxed{B}"
 * (" Answer A says X; answer B says the same." when both final answers are
 * equal and only the reasoning differs);
 * FULL: "<think>Answer A says Y; answer B says Z. The answer is X, so
 * answer L is better.</think>\boxed{L}". X, Y, Z are the candidates' boxed
 * answers (or their text after </think> when they have no box). Returns a
 * new string or NULL (OOM / bad arguments). */
char *prompt_critic_target(const prompt_options_t *opt, const char *const answers[2], int preferred,
                           int swapped);

/* The final answer of a full response as shown to a FINAL_ONLY critic:
 * the boxed content; else the text after "</think>"; else the whole text
 * (trimmed). New string, NULL on OOM. */
char *prompt_final_answer(const char *response);
/* The reasoning of a full response: its <think> content, trimmed; "" when
 * it has none. New string, NULL on OOM. */
char *prompt_reasoning(const char *response);

/* Prompt, scoring and target for a dataset record (critic order as for
 * prompt_critic). Captions: not scored, target = the caption. Policy:
 * target = the record's reference when it has one. Returns 0, -EINVAL,
 * -ENOMEM; on error *out holds no allocations. */
int prompt_for_record(const prompt_options_t *opt, const dataset_record_t *rec, int order,
                      rng_t *rng, prompt_task_t *out);
void prompt_task_free(prompt_task_t *t);

#endif
