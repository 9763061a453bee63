#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reward.h"
#include "rng.h"

/* Scores a C-string response, copied into a buffer of exactly its length so
 * that AddressSanitizer catches any read past `len`. */
static reward_parts_t score(const reward_config_t *cfg, reward_task_t task, const char *resp,
                            const char *expected)
{
    size_t len = strlen(resp);
    char *buf = malloc(len ? len : 1);
    cr_assert_not_null(buf);
    memcpy(buf, resp, len);
    reward_parts_t p;
    int rc = reward_score(cfg, task, buf, len, expected, &p);
    cr_assert_eq(rc, 0, "reward_score(\"%s\") returned %d", resp, rc);
    free(buf);
    return p;
}

static reward_config_t defcfg(void)
{
    reward_config_t c;
    reward_config_default(&c);
    return c;
}

static int fmt(const char *resp)
{
    reward_config_t c = defcfg();
    return score(&c, REWARD_TASK_POLICY, resp, "x").format;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

Test(reward, defaults_are_paper_weights_and_ab_labels)
{
    reward_config_t c = defcfg();
    cr_assert_float_eq(c.w_main, 0.9f, 1e-7);
    cr_assert_float_eq(c.w_format, 0.1f, 1e-7);
    cr_assert_str_eq(c.labels[0], "A");
    cr_assert_str_eq(c.labels[1], "B");
    char err[256];
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), 0, "%s", err);
}

Test(reward, well_formed_critic_response_scores_one)
{
    reward_config_t c = defcfg();
    reward_parts_t p = score(&c, REWARD_TASK_CRITIC, "<think>B counts right.</think>\\boxed{B}", "B");
    cr_assert_eq(p.format, 1);
    cr_assert_eq(p.preference, 1);
    cr_assert_eq(p.accuracy, -1, "accuracy is n/a for critic tasks, got %d", p.accuracy);
    cr_assert_eq(p.verdict, 1);
    cr_assert_float_eq(p.total, 1.0f, 1e-6, "total: expected 1.0, got %g", p.total);
    p = score(&c, REWARD_TASK_CRITIC, "<think>B counts right.</think>\\boxed{B}", "A");
    cr_assert_eq(p.preference, 0);
    cr_assert_float_eq(p.total, 0.1f, 1e-6, "total: expected 0.1 (format only), got %g", p.total);
}

Test(reward, whitespace_around_tags_and_box_is_tolerated)
{
    const char *ok[] = {
        "  \n<think> a </think>\n\n \\boxed{ B }\n",
        "\t<think>\nx\n</think>\\boxed{B}   \r\n",
        "<think></think>\\boxed{B}", /* empty think allowed, as in the paper's check */
        "<think>a</think> \\boxed{B}<eos>",
        "<think>a</think> \\boxed{B} <eos>\n",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        cr_assert_eq(fmt(ok[i]), 1, "expected format 1 for \"%s\"", ok[i]);
}

Test(reward, missing_or_misordered_tags_fail_format)
{
    const char *bad[] = {
        "\\boxed{B}",                               /* no think at all */
        "<think>a \\boxed{B}",                      /* never closed */
        "a</think>\\boxed{B}",                      /* no opening */
        "</think>a<think>\\boxed{B}",               /* out of order */
        "<think>a</think><think>b</think>\\boxed{B}", /* two blocks */
        "<think>a<think>b</think>\\boxed{B}",       /* nested opening */
        "x<think>a</think>\\boxed{B}",              /* text before */
        "<think>a</think>so\\boxed{B}",             /* text between */
        "<think>a</think>\\boxed{B}</think>",       /* tag after the box */
        "<think>a</think>",                          /* no box */
        "<think>a</think>\\boxed B",                 /* not a box */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        cr_assert_eq(fmt(bad[i]), 0, "expected format 0 for \"%s\"", bad[i]);
}

Test(reward, preference_is_independent_of_format_unless_required)
{
    reward_config_t c = defcfg();
    reward_parts_t p = score(&c, REWARD_TASK_CRITIC, "\\boxed{A}", "A");
    cr_assert_eq(p.format, 0);
    cr_assert_eq(p.preference, 1);
    cr_assert_float_eq(p.total, 0.9f, 1e-6, "expected 0.9, got %g", p.total);
    c.require_format = 1;
    p = score(&c, REWARD_TASK_CRITIC, "\\boxed{A}", "A");
    cr_assert_eq(p.preference, 1, "the part is still reported");
    cr_assert_float_eq(p.total, 0.0f, 1e-6, "require_format: expected 0, got %g", p.total);
}

Test(reward, two_boxes_fail_format_and_the_last_one_counts)
{
    reward_config_t c = defcfg();
    reward_parts_t p = score(&c, REWARD_TASK_CRITIC, "<think>a</think>\\boxed{A}\\boxed{B}", "B");
    cr_assert_eq(p.format, 0);
    cr_assert_eq(p.preference, 1, "last box names B");
    p = score(&c, REWARD_TASK_CRITIC, "<think>a</think>\\boxed{A} \\boxed{B}", "A");
    cr_assert_eq(p.preference, 0);
    /* a box nested in the box is not "exactly one" */
    cr_assert_eq(fmt("<think>a</think>\\boxed{\\boxed{A}}"), 0);
    /* a box quoted inside the reasoning does not break the format */
    cr_assert_eq(fmt("<think>answer A said \\boxed{2}</think>\\boxed{A}"), 1);
}

Test(reward, empty_box_fails)
{
    reward_config_t c = defcfg();
    const char *r[] = {"<think>a</think>\\boxed{}", "<think>a</think>\\boxed{   }"};
    for (int i = 0; i < 2; i++) {
        reward_parts_t p = score(&c, REWARD_TASK_CRITIC, r[i], "A");
        cr_assert_eq(p.format, 0, "empty box must fail format: \"%s\"", r[i]);
        cr_assert_eq(p.preference, 0);
        cr_assert_float_eq(p.total, 0.0f, 1e-6);
    }
}

Test(reward, trailing_text_after_box_fails_format_only)
{
    reward_config_t c = defcfg();
    reward_parts_t p = score(&c, REWARD_TASK_CRITIC, "<think>a</think>\\boxed{A} because", "A");
    cr_assert_eq(p.format, 0);
    cr_assert_eq(p.preference, 1);
    cr_assert_eq(fmt("<think>a</think>\\boxed{A}<eos>x"), 0);
    cr_assert_eq(fmt("<think>a</think>\\boxed{A}<eos><eos>"), 0);
    cr_assert_eq(fmt("<think>a</think>\\boxed{A}}"), 0);
}

Test(reward, verdict_forms_name_the_right_label)
{
    reward_config_t c = defcfg();
    struct {
        const char *box;
        int want;
    } cases[] = {
        {"B", 1},        {"b", 1},         {"Answer B", 1}, {"answer b", 1}, {"(B)", 1},
        {"B.", 1},       {" B ", 1},       {"Answer: B", 1}, {"\\text{B}", 1}, {"Answer (B)", 1},
        {"A", 0},        {"a", 0},         {"Answer A", 0}, {"(a).", 0},
        {"A and B", -1}, {"AB", -1},       {"C", -1},       {"", -1},        {"Answer", -1},
        {"B is better", -1}, {"A or B", -1}, {"1", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = reward_verdict(&c, cases[i].box, strlen(cases[i].box));
        cr_assert_eq(got, cases[i].want, "verdict \"%s\": expected %d, got %d", cases[i].box,
                     cases[i].want, got);
    }
    /* through reward_score too */
    const char *forms[] = {"\\boxed{Answer A}", "\\boxed{A}", "\\boxed{a}"};
    for (int i = 0; i < 3; i++) {
        char resp[128];
        snprintf(resp, sizeof(resp), "<think>x</think>%s", forms[i]);
        reward_parts_t p = score(&c, REWARD_TASK_CRITIC, resp, "A");
        cr_assert_eq(p.preference, 1, "%s should name A", forms[i]);
        cr_assert_eq(p.format, 1, "%s is well formed", forms[i]);
        p = score(&c, REWARD_TASK_CRITIC, resp, "B");
        cr_assert_eq(p.preference, 0, "%s does not name B", forms[i]);
    }
    /* expected given in any verdict form */
    reward_parts_t p = score(&c, REWARD_TASK_CRITIC, "<think>x</think>\\boxed{B}", "b");
    cr_assert_eq(p.preference, 1);
}

Test(reward, labels_are_configurable)
{
    reward_config_t c = defcfg();
    strcpy(c.labels[0], "1");
    strcpy(c.labels[1], "2");
    char err[256];
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(reward_verdict(&c, "2", 1), 1);
    cr_assert_eq(reward_verdict(&c, "Answer 1", 8), 0);
    cr_assert_eq(reward_verdict(&c, "(2).", 4), 1);
    cr_assert_eq(reward_verdict(&c, "B", 1), -1);
    reward_parts_t p = score(&c, REWARD_TASK_CRITIC, "<think>x</think>\\boxed{2}", "2");
    cr_assert_eq(p.preference, 1);
    int rc = reward_score(&c, REWARD_TASK_CRITIC, "\\boxed{2}", 9, "B", &p);
    cr_assert_eq(rc, -EINVAL, "expected label not among the labels: expected -EINVAL, got %d", rc);
}

Test(reward, bad_configs_are_rejected)
{
    char err[256];
    reward_config_t c = defcfg();
    strcpy(c.labels[1], "(a)");
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "same"), "message: %s", err);
    c = defcfg();
    c.labels[0][0] = '\0';
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), -EINVAL);
    c = defcfg();
    strcpy(c.labels[0], "{A}");
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), -EINVAL);
    c = defcfg();
    memset(c.labels[0], 'x', REWARD_LABEL_MAX); /* unterminated */
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), -EINVAL);
    c = defcfg();
    c.w_main = 1.0f / 0.0f;
    cr_assert_eq(reward_config_check(&c, err, sizeof(err)), -EINVAL);
    reward_parts_t p;
    cr_assert_eq(reward_score(NULL, REWARD_TASK_CRITIC, "x", 1, "A", &p), -EINVAL);
    c = defcfg();
    cr_assert_eq(reward_score(&c, (reward_task_t)7, "x", 1, "A", &p), -EINVAL);
    cr_assert_eq(reward_score(&c, REWARD_TASK_POLICY, NULL, 0, "A", &p), -EINVAL);
}

Test(reward, nested_and_escaped_braces)
{
    reward_config_t c = defcfg();
    reward_parts_t p = score(&c, REWARD_TASK_POLICY, "<think>half</think>\\boxed{\\frac{1}{2}}",
                             "\\frac{1}{2}");
    cr_assert_eq(p.format, 1);
    cr_assert_eq(p.accuracy, 1);
    p = score(&c, REWARD_TASK_POLICY, "<think>set</think>\\boxed{\\{1, 2\\}}", "\\{1, 2\\}");
    cr_assert_eq(p.format, 1, "escaped braces do not count");
    cr_assert_eq(p.accuracy, 1);
    /* unbalanced: never closed */
    p = score(&c, REWARD_TASK_POLICY, "<think>a</think>\\boxed{\\frac{1}{2}", "\\frac{1}{2}");
    cr_assert_eq(p.format, 0);
    cr_assert_eq(p.accuracy, 0);
    /* the last box is unclosed: no answer, even though an earlier box closed */
    p = score(&c, REWARD_TASK_POLICY, "<think>a</think>\\boxed{2} \\boxed{3", "2");
    cr_assert_eq(p.accuracy, 0);
    reward_parse_t q;
    reward_parse("}}}{{{\\boxed{", 13, &q);
    cr_assert_eq(q.has_box, 0);
    cr_assert_eq(q.format_ok, 0);
}

Test(reward, parse_gives_think_and_box_offsets)
{
    const char *r = " <think>count: 2</think> \\boxed{ 2 }";
    reward_parse_t q;
    reward_parse(r, strlen(r), &q);
    cr_assert_eq(q.has_think, 1);
    cr_assert_eq(q.think_len, 8);
    cr_assert_eq(memcmp(r + q.think_off, "count: 2", 8), 0);
    cr_assert_eq(q.has_box, 1);
    cr_assert_eq(q.box_len, 3);
    cr_assert_eq(memcmp(r + q.box_off, " 2 ", 3), 0);
    cr_assert_eq(q.format_ok, 1);
}

Test(reward, accuracy_normalisation)
{
    struct {
        const char *got, *want;
        int same;
    } cases[] = {
        {"two", "2", 1},          {"Two.", "2", 1},         {"twenty", "20", 1},
        {"zero", "0", 1},         {" 2 ", "2", 1},          {"TWELVE", "12", 1},
        {"Red", "red", 1},        {"light  \n blue", "light blue", 1},
        {"two red", "2 red", 1},  {"3.5", "3.5", 1},        {"3.5.", "3.5", 1},
        {"\\text{red}", "red", 1}, {"top left", "top  left.", 1},
        {"yes", "true", 0},       {"no", "false", 0},       {"yes", "no", 0},
        {"2", "3", 0},            {"twentyone", "21", 0},   {"2 circles", "2", 0},
        {"red.", "red!", 0},      {"", "2", 0},             {"(2)", "2", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = reward_answer_matches(cases[i].got, strlen(cases[i].got), cases[i].want);
        cr_assert_eq(got, cases[i].same, "\"%s\" vs \"%s\": expected %d, got %d", cases[i].got,
                     cases[i].want, cases[i].same, got);
    }
    char *n = reward_normalize_answer("  Three   Blue.. ", 17);
    cr_assert_str_eq(n, "3 blue");
    free(n);
    reward_config_t c = defcfg();
    reward_parts_t p = score(&c, REWARD_TASK_POLICY, "<think>one, two</think>\\boxed{Two}", "2");
    cr_assert_eq(p.accuracy, 1);
    cr_assert_eq(p.preference, -1);
    cr_assert_float_eq(p.total, 1.0f, 1e-6);
}

Test(reward, weights_are_configurable)
{
    reward_config_t c = defcfg();
    c.w_main = 0.5f;
    c.w_format = 0.25f;
    reward_parts_t p = score(&c, REWARD_TASK_POLICY, "<think>a</think>\\boxed{3}", "3");
    cr_assert_float_eq(p.total, 0.75f, 1e-6, "expected 0.75, got %g", p.total);
    p = score(&c, REWARD_TASK_POLICY, "\\boxed{3}", "3");
    cr_assert_float_eq(p.total, 0.5f, 1e-6);
}

Test(reward, nul_bytes_are_data_not_terminators)
{
    reward_config_t c = defcfg();
    const char r[] = "<think>a\0b</think>\\boxed{A}";
    reward_parts_t p;
    cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, r, sizeof(r) - 1, "A", &p), 0);
    cr_assert_eq(p.format, 0, "a NUL byte never has the format");
    cr_assert_eq(p.preference, 1, "the box after the NUL is still read");
    const char v[] = "B\0A";
    cr_assert_eq(reward_verdict(&c, v, 3), -1);
}

Test(reward, every_prefix_of_a_response_is_safe)
{
    reward_config_t c = defcfg();
    const char *full = "<think>I see \\boxed{2} {x</think>\n\\boxed{\\frac{1}{Answer B}}<eos> ";
    size_t n = strlen(full);
    for (size_t len = 0; len <= n; len++) {
        char *buf = malloc(len ? len : 1);
        memcpy(buf, full, len);
        reward_parts_t p;
        cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, buf, len, "B", &p), 0);
        cr_assert_eq(reward_score(&c, REWARD_TASK_POLICY, buf, len, "2", &p), 0);
        reward_parse_t q;
        reward_parse(buf, len, &q);
        /* well formed: up to the final '}', then with "<eos>", then with " " */
        int want = len == n - 6 || len == n - 1 || len == n;
        cr_assert_eq(q.format_ok, want, "prefix of %zu/%zu bytes: expected format %d", len, n, want);
        free(buf);
    }
}

Test(reward, hostile_megabyte_inputs_are_linear_and_safe)
{
    reward_config_t c = defcfg();
    const size_t n = 1 << 20;
    char *buf = malloc(n);
    cr_assert_not_null(buf);
    const char *pats[] = {"\\boxed{", "{", "<think>", "\\boxed{\\text{", "}", "\\"};
    reward_parts_t p;
    for (size_t k = 0; k < sizeof(pats) / sizeof(pats[0]); k++) {
        size_t pl = strlen(pats[k]);
        for (size_t i = 0; i < n; i++)
            buf[i] = pats[k][i % pl];
        double t0 = now_s();
        cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, buf, n, "A", &p), 0);
        cr_assert_eq(reward_score(&c, REWARD_TASK_POLICY, buf, n, "2", &p), 0);
        double dt = now_s() - t0;
        cr_assert_eq(p.format, 0);
        /* linear: ~ms at -O2; a quadratic scan would take minutes */
        cr_assert(dt < 5.0, "pattern \"%s\" x 1 MB took %.2f s", pats[k], dt);
    }
    /* a well-formed 1 MB response */
    const char *head = "<think>", *tail = "</think>\\boxed{A}";
    memcpy(buf, head, 7);
    memset(buf + 7, 'x', n - 7 - strlen(tail));
    memcpy(buf + n - strlen(tail), tail, strlen(tail));
    cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, buf, n, "A", &p), 0);
    cr_assert_eq(p.format, 1);
    cr_assert_eq(p.preference, 1);
    /* a 1 MB box */
    memcpy(buf, "<think></think>\\boxed{", 22);
    memset(buf + 22, 'A', n - 23);
    buf[n - 1] = '}';
    cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, buf, n, "A", &p), 0);
    cr_assert_eq(p.format, 1);
    cr_assert_eq(p.preference, 0, "\"AAAA...\" is not the label A");
    /* random binary garbage with NULs */
    rng_t r;
    rng_seed(&r, 7);
    for (int round = 0; round < 4; round++) {
        for (size_t i = 0; i < n; i++)
            buf[i] = (char)(rng_u32(&r) & 0xff);
        cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, buf, n, "A", &p), 0);
        cr_assert_eq(p.format, 0);
        cr_assert_eq(reward_score(&c, REWARD_TASK_POLICY, buf, n, "2", &p), 0);
    }
    /* garbage made of the grammar's own pieces */
    const char *pieces[] = {"<think>", "</think>", "\\boxed{", "{", "}", "\\", " ", "A", "<eos>", "\0"};
    for (int round = 0; round < 200; round++) {
        size_t len = 0, want = 1 + rng_below(&r, 64);
        for (size_t k = 0; k < want; k++) {
            const char *pc = pieces[rng_below(&r, 10)];
            size_t pl = pc[0] ? strlen(pc) : 1;
            memcpy(buf + len, pc, pl);
            len += pl;
        }
        char *exact = malloc(len);
        memcpy(exact, buf, len);
        cr_assert_eq(reward_score(&c, REWARD_TASK_CRITIC, exact, len, "A", &p), 0);
        cr_assert(p.format == 0 || p.format == 1);
        free(exact);
    }
    free(buf);
}
