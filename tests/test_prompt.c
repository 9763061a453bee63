#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt.h"

static const char *Q = "How many red circles are there?";
static const char *const ANS[2] = {
    "<think>I see a red circle at the top and another at the bottom left.</think>\\boxed{2}",
    "<think>I see a red circle at the top.</think>\\boxed{1}",
};

static prompt_options_t popts(prompt_critic_variant_t v, const char *l0, const char *l1)
{
    prompt_options_t o;
    prompt_options_default(&o);
    o.variant = v;
    strcpy(o.labels[0], l0);
    strcpy(o.labels[1], l1);
    return o;
}

static reward_config_t rcfg(const prompt_options_t *o)
{
    reward_config_t c;
    reward_config_default(&c);
    memcpy(c.labels, o->labels, sizeof(c.labels));
    return c;
}

Test(prompt, policy_prompt_text)
{
    char *p = prompt_policy(Q);
    cr_assert_str_eq(p, "How many red circles are there?\n"
                        "First think inside <think></think>, then put the final answer in "
                        "\\boxed{}.");
    free(p);
    p = prompt_caption();
    cr_assert_str_eq(p, "Describe the image.");
    free(p);
    cr_assert_null(prompt_policy(NULL));
}

Test(prompt, critic_full_shows_reasoning_in_both_orders)
{
    prompt_options_t o = popts(PROMPT_CRITIC_FULL, "A", "B");
    prompt_critic_t c;
    cr_assert_eq(prompt_critic(&o, Q, ANS, 0, PROMPT_ORDER_KEEP, NULL, &c), 0);
    cr_assert_str_eq(c.text,
                     "How many red circles are there?\n"
                     "Answer A: I see a red circle at the top and another at the bottom left. "
                     "\\boxed{2}\n"
                     "Answer B: I see a red circle at the top. \\boxed{1}\n"
                     "Which answer is better? First think inside <think></think>, then put A or B "
                     "in \\boxed{}.");
    cr_assert_eq(c.swapped, 0);
    cr_assert_eq(c.preferred_label, 0, "answers[0] preferred and shown first: label A");
    free(c.text);

    cr_assert_eq(prompt_critic(&o, Q, ANS, 0, PROMPT_ORDER_SWAP, NULL, &c), 0);
    cr_assert_str_eq(c.text,
                     "How many red circles are there?\n"
                     "Answer A: I see a red circle at the top. \\boxed{1}\n"
                     "Answer B: I see a red circle at the top and another at the bottom left. "
                     "\\boxed{2}\n"
                     "Which answer is better? First think inside <think></think>, then put A or B "
                     "in \\boxed{}.");
    cr_assert_eq(c.swapped, 1);
    cr_assert_eq(c.preferred_label, 1, "answers[0] preferred and shown second: label B");
    free(c.text);

    /* preferred = 1 flips the label in both orders */
    cr_assert_eq(prompt_critic(&o, Q, ANS, 1, PROMPT_ORDER_KEEP, NULL, &c), 0);
    cr_assert_eq(c.preferred_label, 1);
    free(c.text);
    cr_assert_eq(prompt_critic(&o, Q, ANS, 1, PROMPT_ORDER_SWAP, NULL, &c), 0);
    cr_assert_eq(c.preferred_label, 0);
    free(c.text);
}

Test(prompt, critic_final_only_hides_the_reasoning)
{
    prompt_options_t o = popts(PROMPT_CRITIC_FINAL_ONLY, "A", "B");
    prompt_critic_t c;
    cr_assert_eq(prompt_critic(&o, Q, ANS, 0, PROMPT_ORDER_SWAP, NULL, &c), 0);
    cr_assert_str_eq(c.text,
                     "How many red circles are there?\n"
                     "Answer A: \\boxed{1}\n"
                     "Answer B: \\boxed{2}\n"
                     "Which answer is better? First think inside <think></think>, then put A or B "
                     "in \\boxed{}.");
    cr_assert_null(strstr(c.text, "bottom left"), "reasoning leaked into a FINAL_ONLY prompt");
    cr_assert_eq(c.preferred_label, 1);
    free(c.text);
}

Test(prompt, labels_are_configurable)
{
    prompt_options_t o = popts(PROMPT_CRITIC_FINAL_ONLY, "1", "2");
    prompt_critic_t c;
    cr_assert_eq(prompt_critic(&o, Q, ANS, 1, PROMPT_ORDER_KEEP, NULL, &c), 0);
    cr_assert_str_eq(c.text,
                     "How many red circles are there?\n"
                     "Answer 1: \\boxed{2}\n"
                     "Answer 2: \\boxed{1}\n"
                     "Which answer is better? First think inside <think></think>, then put 1 or 2 "
                     "in \\boxed{}.");
    cr_assert_eq(c.preferred_label, 1);
    free(c.text);
    /* bad labels and arguments */
    prompt_options_t bad = popts(PROMPT_CRITIC_FULL, "A", "a");
    cr_assert_eq(prompt_critic(&bad, Q, ANS, 0, PROMPT_ORDER_KEEP, NULL, &c), -EINVAL);
    cr_assert_null(c.text);
    bad = popts(PROMPT_CRITIC_FULL, "A", "}");
    cr_assert_eq(prompt_critic(&bad, Q, ANS, 0, PROMPT_ORDER_KEEP, NULL, &c), -EINVAL);
    cr_assert_null(prompt_critic_target(&bad, ANS, 0, 0));
    cr_assert_eq(prompt_critic(&o, Q, ANS, 2, PROMPT_ORDER_KEEP, NULL, &c), -EINVAL);
    cr_assert_eq(prompt_critic(&o, Q, ANS, 0, PROMPT_ORDER_RANDOM, NULL, &c), -EINVAL,
                 "RANDOM needs an rng");
    cr_assert_eq(prompt_critic(&o, Q, ANS, 0, 5, NULL, &c), -EINVAL);
    reward_config_t r;
    reward_config_default(&r);
    strcpy(r.labels[0], "X");
    prompt_options_from_reward(&o, &r);
    cr_assert_str_eq(o.labels[0], "X");
    cr_assert_str_eq(o.labels[1], "B");
}

Test(prompt, random_order_uses_both_orders_and_tracks_the_preferred_label)
{
    prompt_options_t o = popts(PROMPT_CRITIC_FULL, "A", "B");
    rng_t r;
    rng_seed(&r, 11);
    int n_swapped = 0;
    for (int i = 0; i < 200; i++) {
        int pref = i % 2;
        prompt_critic_t c;
        cr_assert_eq(prompt_critic(&o, Q, ANS, pref, PROMPT_ORDER_RANDOM, &r, &c), 0);
        n_swapped += c.swapped;
        /* the preferred answer's text must sit on the line of its label */
        char line[64];
        snprintf(line, sizeof(line), "Answer %s: I see a red circle at the top%s",
                 o.labels[c.preferred_label], pref == 0 ? " and another" : ". \\boxed{1}");
        cr_assert(strstr(c.text, line), "draw %d: \"%s\" not in\n%s", i, line, c.text);
        free(c.text);
    }
    cr_assert(n_swapped > 70 && n_swapped < 130, "swapped %d of 200 (expected ~100)", n_swapped);
    /* same seed, same orders */
    rng_t a, b;
    rng_seed(&a, 5);
    rng_seed(&b, 5);
    for (int i = 0; i < 20; i++) {
        prompt_critic_t x, y;
        prompt_critic(&o, Q, ANS, 0, PROMPT_ORDER_RANDOM, &a, &x);
        prompt_critic(&o, Q, ANS, 0, PROMPT_ORDER_RANDOM, &b, &y);
        cr_assert_eq(x.swapped, y.swapped);
        free(x.text);
        free(y.text);
    }
}

Test(prompt, critic_target_texts)
{
    prompt_options_t o = popts(PROMPT_CRITIC_FINAL_ONLY, "A", "B");
    char *t = prompt_critic_target(&o, ANS, 0, 1);
    cr_assert_str_eq(t, "<think>I see a red circle at the top and another at the bottom left. So "
                        "the answer is 2. Answer A says 1: wrong. Answer B says 2: correct."
                        "</think>\\boxed{B}");
    free(t);
    /* the preferred answer shown first: the check stops there */
    t = prompt_critic_target(&o, ANS, 0, 0);
    cr_assert_str_eq(t, "<think>I see a red circle at the top and another at the bottom left. So "
                        "the answer is 2. Answer A says 2: correct.</think>\\boxed{A}");
    free(t);
    /* same final answer, different reasoning: the target says the answers
     * cannot decide and still names the preferred one */
    const char *same[2] = {"<think>two red circles.</think>\\boxed{2}",
                           "<think>a red and a blue circle.</think>\\boxed{2}"};
    t = prompt_critic_target(&o, same, 1, 0);
    cr_assert_str_eq(t, "<think>a red and a blue circle. So the answer is 2. Answer A says 2; "
                        "answer B says the same.</think>\\boxed{B}");
    free(t);
    o.variant = PROMPT_CRITIC_FULL;
    t = prompt_critic_target(&o, ANS, 0, 0);
    cr_assert_str_eq(t, "<think>Answer A says 2; answer B says 1. The answer is 2, so answer A is "
                        "better.</think>\\boxed{A}");
    free(t);
}

/* Every target, in every variant, order, preference and label set, must
 * earn the full reward for its own prompt and lose the preference term
 * against the other label. */
Test(prompt, targets_score_full_reward)
{
    const char *labels[2][2] = {{"A", "B"}, {"1", "2"}};
    const char *odd[2] = {
        "plain text answer without tags", /* free text candidate */
        "<think>tricky </think> text</think>\\boxed{\\frac{1}{2}}",
    };
    const char *const *sets[2] = {ANS, odd};
    for (int s = 0; s < 2; s++)
        for (int v = 0; v < 2; v++)
            for (int l = 0; l < 2; l++)
                for (int pref = 0; pref < 2; pref++)
                    for (int order = 0; order < 2; order++) {
                        prompt_options_t o = popts(v, labels[l][0], labels[l][1]);
                        reward_config_t rc = rcfg(&o);
                        prompt_critic_t c;
                        cr_assert_eq(prompt_critic(&o, Q, sets[s], pref, order, NULL, &c), 0);
                        char *t = prompt_critic_target(&o, sets[s], pref, c.swapped);
                        cr_assert_not_null(t);
                        reward_parts_t p;
                        cr_assert_eq(reward_score(&rc, REWARD_TASK_CRITIC, t, strlen(t),
                                                  o.labels[c.preferred_label], &p), 0);
                        cr_assert(p.format == 1 && p.preference == 1,
                                  "set %d variant %d labels %d pref %d order %d: format %d "
                                  "preference %d for target\n%s",
                                  s, v, l, pref, order, p.format, p.preference, t);
                        cr_assert_float_eq(p.total, 1.0f, 1e-6);
                        cr_assert_eq(reward_score(&rc, REWARD_TASK_CRITIC, t, strlen(t),
                                                  o.labels[1 - c.preferred_label], &p), 0);
                        cr_assert_eq(p.preference, 0);
                        free(t);
                        free(c.text);
                    }
}

Test(prompt, final_answer_and_reasoning_helpers)
{
    char *s = prompt_final_answer("<think>x</think>\\boxed{ \\frac{1}{2} }");
    cr_assert_str_eq(s, "\\frac{1}{2}");
    free(s);
    s = prompt_final_answer("<think>x</think> blue ");
    cr_assert_str_eq(s, "blue", "no box: the text after </think>");
    free(s);
    s = prompt_final_answer("  just text ");
    cr_assert_str_eq(s, "just text");
    free(s);
    s = prompt_reasoning("<think> one, two </think>\\boxed{2}");
    cr_assert_str_eq(s, "one, two");
    free(s);
    s = prompt_reasoning("\\boxed{2}");
    cr_assert_str_eq(s, "");
    free(s);
}

Test(prompt, tasks_for_records)
{
    prompt_options_t o = popts(PROMPT_CRITIC_FINAL_ONLY, "A", "B");
    reward_config_t rc = rcfg(&o);
    prompt_task_t t;
    reward_parts_t p;

    dataset_record_t pol = {.kind = DATASET_POLICY, .id = "p", .question = Q, .answer = "two",
                            .reference = "<think>one, two</think>\\boxed{2}", .preferred = -1,
                            .image = -1};
    cr_assert_eq(prompt_for_record(&o, &pol, PROMPT_ORDER_RANDOM, NULL, &t), 0);
    cr_assert_eq(t.scored, 1);
    cr_assert_eq(t.task, REWARD_TASK_POLICY);
    cr_assert_str_eq(t.expected, "two");
    cr_assert_str_eq(t.target, pol.reference);
    cr_assert_eq(t.preferred_label, -1);
    cr_assert(strncmp(t.text, Q, strlen(Q)) == 0);
    cr_assert_eq(reward_score(&rc, t.task, t.target, strlen(t.target), t.expected, &p), 0);
    cr_assert(p.format == 1 && p.accuracy == 1, "policy target: format %d accuracy %d", p.format,
              p.accuracy);
    prompt_task_free(&t);
    pol.reference = NULL;
    cr_assert_eq(prompt_for_record(&o, &pol, PROMPT_ORDER_KEEP, NULL, &t), 0);
    cr_assert_null(t.target, "no reference, no target");
    prompt_task_free(&t);

    dataset_record_t cri = {.kind = DATASET_CRITIC, .id = "c", .question = Q,
                            .answers = {ANS[0], ANS[1]}, .preferred = 1, .image = -1};
    rng_t r;
    rng_seed(&r, 3);
    cr_assert_eq(prompt_for_record(&o, &cri, PROMPT_ORDER_RANDOM, &r, &t), 0);
    cr_assert_eq(t.task, REWARD_TASK_CRITIC);
    cr_assert_str_eq(t.expected, o.labels[t.preferred_label]);
    cr_assert_eq(t.preferred_label, t.swapped ? 0 : 1);
    cr_assert_eq(reward_score(&rc, t.task, t.target, strlen(t.target), t.expected, &p), 0);
    cr_assert(p.format == 1 && p.preference == 1);
    prompt_task_free(&t);

    dataset_record_t cap = {.kind = DATASET_CAPTION, .id = "k", .caption = "A red circle.",
                            .preferred = -1, .image = 0};
    cr_assert_eq(prompt_for_record(&o, &cap, PROMPT_ORDER_KEEP, NULL, &t), 0);
    cr_assert_eq(t.scored, 0);
    cr_assert_str_eq(t.text, "Describe the image.");
    cr_assert_str_eq(t.target, "A red circle.");
    cr_assert_null(t.expected);
    prompt_task_free(&t);

    cr_assert_eq(prompt_for_record(&o, NULL, PROMPT_ORDER_KEEP, NULL, &t), -EINVAL);
    cri.preferred = 3;
    cr_assert_eq(prompt_for_record(&o, &cri, PROMPT_ORDER_KEEP, NULL, &t), -EINVAL);
    cr_assert_null(t.text);
}
