/* prompt: all prompt and target text of crl (see prompt.h). */
#include "prompt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the template text: everything the model reads, in one place ----- */

/* Kept short: the model is tiny and sequences are ~100-200 tokens. */
#define FORMAT_INSTRUCTION "First think inside <think></think>, then put the final answer in \\boxed{}."
#define CRITIC_QUESTION "Which answer is better?"
/* "%s or %s": the two labels */
#define CRITIC_INSTRUCTION "First think inside <think></think>, then put %s or %s in \\boxed{}."
#define CANDIDATE_LINE "Answer %s: %s"
#define CAPTION_PROMPT "Describe the image."

/* ---- text helpers ----------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* New copy of s[0, len) trimmed of whitespace and of "<think>", "</think>"
 * and "<eos>" text, so that pieces quoted inside a target's <think> never
 * close it early. NULL on OOM. */
static char *clean_piece(const char *s, size_t len)
{
    static const char *const TAGS[] = {"</think>", "<think>", "<eos>"};
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        int hit = 0;
        for (size_t k = 0; k < sizeof(TAGS) / sizeof(TAGS[0]); k++) {
            size_t tl = strlen(TAGS[k]);
            if (len - i >= tl && memcmp(s + i, TAGS[k], tl) == 0) {
                i += tl;
                hit = 1;
                break;
            }
        }
        if (!hit)
            out[n++] = s[i++];
    }
    size_t a = 0;
    while (a < n && is_space(out[a]))
        a++;
    while (n > a && is_space(out[n - 1]))
        n--;
    memmove(out, out + a, n - a);
    out[n - a] = '\0';
    return out;
}

char *prompt_reasoning(const char *response)
{
    if (!response)
        return NULL;
    size_t len = strlen(response);
    reward_parse_t p;
    reward_parse(response, len, &p);
    if (!p.has_think)
        return strdup("");
    return clean_piece(response + p.think_off, p.think_len);
}

char *prompt_final_answer(const char *response)
{
    if (!response)
        return NULL;
    size_t len = strlen(response);
    reward_parse_t p;
    reward_parse(response, len, &p);
    if (p.has_box)
        return clean_piece(response + p.box_off, p.box_len);
    if (p.has_think) {
        size_t after = p.think_off + p.think_len + strlen("</think>");
        return clean_piece(response + after, len - after);
    }
    return clean_piece(response, len);
}

/* How a candidate reads in a FULL critic prompt: its reasoning and final
 * part without the think tags (the <think> token marks only the critic's
 * own reasoning), or its text as is when it has no think part. */
static char *candidate_full(const char *response)
{
    size_t len = strlen(response);
    reward_parse_t p;
    reward_parse(response, len, &p);
    if (!p.has_think)
        return clean_piece(response, len);
    char *why = clean_piece(response + p.think_off, p.think_len);
    size_t after = p.think_off + p.think_len + strlen("</think>");
    char *rest = clean_piece(response + after, len - after);
    char *out = NULL;
    if (why && rest && asprintf(&out, "%s%s%s", why, why[0] && rest[0] ? " " : "", rest) < 0)
        out = NULL;
    free(why);
    free(rest);
    return out;
}

static int labels_ok(const prompt_options_t *opt)
{
    reward_config_t cfg;
    char err[128];
    reward_config_default(&cfg);
    memcpy(cfg.labels, opt->labels, sizeof(cfg.labels));
    return reward_config_check(&cfg, err, sizeof(err)) == 0;
}

/* ---- public ----------------------------------------------------------- */

void prompt_options_default(prompt_options_t *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->variant = PROMPT_CRITIC_FULL;
    strcpy(opt->labels[0], "A");
    strcpy(opt->labels[1], "B");
}

void prompt_options_from_reward(prompt_options_t *opt, const reward_config_t *cfg)
{
    memcpy(opt->labels, cfg->labels, sizeof(opt->labels));
}

char *prompt_policy(const char *question)
{
    char *out = NULL;
    if (!question || asprintf(&out, "%s\n" FORMAT_INSTRUCTION, question) < 0)
        return NULL;
    return out;
}

char *prompt_caption(void)
{
    return strdup(CAPTION_PROMPT);
}

int prompt_critic(const prompt_options_t *opt, const char *question, const char *const answers[2],
                  int preferred, int order, rng_t *rng, prompt_critic_t *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!opt || !question || !answers || !answers[0] || !answers[1] ||
        (preferred != 0 && preferred != 1) || !labels_ok(opt) ||
        (opt->variant != PROMPT_CRITIC_FULL && opt->variant != PROMPT_CRITIC_FINAL_ONLY))
        return -EINVAL;
    int swapped;
    if (order == PROMPT_ORDER_RANDOM) {
        if (!rng)
            return -EINVAL;
        swapped = (int)rng_below(rng, 2);
    } else if (order == PROMPT_ORDER_KEEP || order == PROMPT_ORDER_SWAP) {
        swapped = order == PROMPT_ORDER_SWAP;
    } else {
        return -EINVAL;
    }

    /* shown[k] = the candidate under labels[k] */
    const char *shown[2] = {answers[swapped], answers[1 - swapped]};
    char *cand[2] = {NULL, NULL};
    int rc = -ENOMEM;
    for (int k = 0; k < 2; k++) {
        if (opt->variant == PROMPT_CRITIC_FULL) {
            cand[k] = candidate_full(shown[k]);
        } else {
            char *fin = prompt_final_answer(shown[k]);
            if (fin && asprintf(&cand[k], "\\boxed{%s}", fin) < 0)
                cand[k] = NULL;
            free(fin);
        }
        if (!cand[k])
            goto fail;
    }
    char *instr = NULL;
    if (asprintf(&instr, CRITIC_INSTRUCTION, opt->labels[0], opt->labels[1]) < 0)
        goto fail;
    int n = asprintf(&out->text, "%s\n" CANDIDATE_LINE "\n" CANDIDATE_LINE "\n" CRITIC_QUESTION " %s",
                     question, opt->labels[0], cand[0], opt->labels[1], cand[1], instr);
    free(instr);
    if (n < 0) {
        out->text = NULL;
        goto fail;
    }
    out->swapped = swapped;
    /* answers[preferred] sits under label 0 when (preferred == swapped). */
    out->preferred_label = preferred == swapped ? 0 : 1;
    rc = 0;
fail:
    free(cand[0]);
    free(cand[1]);
    return rc;
}

char *prompt_critic_target(const prompt_options_t *opt, const char *const answers[2], int preferred,
                           int swapped)
{
    if (!opt || !answers || !answers[0] || !answers[1] || (preferred != 0 && preferred != 1) ||
        (swapped != 0 && swapped != 1) || !labels_ok(opt))
        return NULL;
    int shown_first = swapped; /* index into answers[] of the candidate under labels[0] */
    int pref_label = preferred == swapped ? 0 : 1;
    const char *L = opt->labels[pref_label];
    char *fin[2] = {prompt_final_answer(answers[shown_first]),
                    prompt_final_answer(answers[1 - shown_first])};
    char *truth = prompt_final_answer(answers[preferred]);
    char *why = NULL, *out = NULL;
    if (!fin[0] || !fin[1] || !truth)
        goto done;
    int n;
    if (opt->variant == PROMPT_CRITIC_FINAL_ONLY) {
        /* Work it out first (the preferred answer's own reasoning), then compare. */
        why = prompt_reasoning(answers[preferred]);
        if (!why)
            goto done;
        size_t wl = strlen(why);
        const char *stop = wl == 0 || strchr(".!?", why[wl - 1]) ? "" : ".";
        const char *so = wl ? " So" : "So";
        /* Check the candidates in the order shown and stop at the one that
         * agrees, so the verdict is the label just written: each step is a
         * comparison of two nearby words, which a small model learns in a
         * few hundred steps, where picking the label whose answer equals X
         * out of "Answer A says Y; answer B says Z" was still a coin flip
         * after 1,600 (measured: 0.7 nats on the verdict token). When
         * both candidates give the same final answer, the final answers
         * cannot decide, and the target says so. */
        if (strcmp(fin[0], fin[1]) == 0)
            n = asprintf(&out,
                         "<think>%s%s%s the answer is %s. Answer %s says %s; answer %s says the "
                         "same.</think>\\boxed{%s}",
                         why, stop, so, truth, opt->labels[0], fin[0], opt->labels[1], L);
        else if (pref_label == 0)
            n = asprintf(&out,
                         "<think>%s%s%s the answer is %s. Answer %s says %s: correct.</think>"
                         "\\boxed{%s}",
                         why, stop, so, truth, opt->labels[0], fin[0], L);
        else
            n = asprintf(&out,
                         "<think>%s%s%s the answer is %s. Answer %s says %s: wrong. Answer %s says "
                         "%s: correct.</think>\\boxed{%s}",
                         why, stop, so, truth, opt->labels[0], fin[0], opt->labels[1], fin[1], L);
    } else {
        n = asprintf(&out,
                     "<think>Answer %s says %s; answer %s says %s. The answer is %s, so answer %s "
                     "is better.</think>\\boxed{%s}",
                     opt->labels[0], fin[0], opt->labels[1], fin[1], truth, L, L);
    }
    if (n < 0)
        out = NULL;
done:
    free(fin[0]);
    free(fin[1]);
    free(truth);
    free(why);
    return out;
}

void prompt_task_free(prompt_task_t *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->expected);
    free(t->target);
    memset(t, 0, sizeof(*t));
    t->preferred_label = -1;
}

int prompt_for_record(const prompt_options_t *opt, const dataset_record_t *rec, int order,
                      rng_t *rng, prompt_task_t *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->preferred_label = -1;
    if (!opt || !rec)
        return -EINVAL;
    int rc = -ENOMEM;
    switch (rec->kind) {
    case DATASET_POLICY:
        out->scored = 1;
        out->task = REWARD_TASK_POLICY;
        out->text = prompt_policy(rec->question);
        out->expected = rec->answer ? strdup(rec->answer) : NULL;
        if (!out->text || !out->expected)
            goto fail;
        if (rec->reference && !(out->target = strdup(rec->reference)))
            goto fail;
        break;
    case DATASET_CRITIC: {
        prompt_critic_t pc;
        rc = prompt_critic(opt, rec->question, rec->answers, rec->preferred, order, rng, &pc);
        if (rc != 0)
            goto fail;
        rc = -ENOMEM;
        out->text = pc.text;
        out->scored = 1;
        out->task = REWARD_TASK_CRITIC;
        out->swapped = pc.swapped;
        out->preferred_label = pc.preferred_label;
        out->expected = strdup(opt->labels[pc.preferred_label]);
        out->target = prompt_critic_target(opt, rec->answers, rec->preferred, pc.swapped);
        if (!out->expected || !out->target)
            goto fail;
        break;
    }
    case DATASET_CAPTION:
        out->text = prompt_caption();
        out->target = rec->caption ? strdup(rec->caption) : NULL;
        if (!out->text || !out->target)
            goto fail;
        break;
    default:
        rc = -EINVAL;
        goto fail;
    }
    return 0;
fail:
    prompt_task_free(out);
    return rc;
}
