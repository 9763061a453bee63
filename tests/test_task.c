#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "model.h"
#include "task.h"
#include "tokenizer.h"

static tokenizer_t *small_tok(void)
{
    const char *texts[] = {"how many red circles are there? <think>red: top left</think>\\boxed{1}",
                           "the the the red red blue"};
    char err[256];
    tokenizer_t *t = tok_train(texts, NULL, 2, 300, err, sizeof err);
    cr_assert_not_null(t, "tok_train: %s", err);
    return t;
}

Test(task, prompt_layout_with_image)
{
    tokenizer_t *tok = small_tok();
    int ids[128];
    int n = task_encode_prompt(tok, 4, 1, "how many red circles?", ids, 128);
    cr_assert_gt(n, 7, "got %d ids", n);
    cr_assert_eq(ids[0], TOK_BOS);
    cr_assert_eq(ids[1], TOK_IMG);
    for (int i = 2; i < 6; i++)
        cr_assert_eq(ids[i], MODEL_IMAGE_SLOT, "id %d is %d, expected an image slot", i, ids[i]);
    cr_assert_eq(ids[6], TOK_IMG_END);
    char text[256];
    long len = tok_decode(tok, ids + 7, n - 7, text, sizeof text);
    cr_assert_eq(len, (long)strlen("how many red circles?"));
    cr_assert_str_eq(text, "how many red circles?");
    tok_destroy(&tok);
}

Test(task, prompt_without_image_and_small_buffer)
{
    tokenizer_t *tok = small_tok();
    int ids[64];
    int n = task_encode_prompt(tok, 4, 0, "red", ids, 64);
    cr_assert_eq(ids[0], TOK_BOS);
    cr_assert(n >= 2 && ids[1] != TOK_IMG, "no image block expected");
    cr_assert_eq(task_encode_prompt(tok, 4, 1, "red", ids, 5), -ENOSPC);
    cr_assert_eq(task_encode_prompt(tok, 0, 1, "red", ids, 64), -EINVAL);
    tok_destroy(&tok);
}

Test(task, response_ends_with_eos_and_decodes_back)
{
    tokenizer_t *tok = small_tok();
    const char *resp = "<think>red: top left</think>\\boxed{1}";
    int ids[128];
    int n = task_encode_response(tok, resp, ids, 128);
    cr_assert_gt(n, 1);
    cr_assert_eq(ids[n - 1], TOK_EOS);
    cr_assert_eq(ids[0], TOK_THINK, "special <think> should be one id, got %d", ids[0]);
    /* Text after <eos> is not part of the response. */
    ids[n] = TOK_BOS;
    char text[256];
    long len = task_decode_response(tok, ids, n + 1, text, sizeof text);
    cr_assert_eq(len, (long)strlen(resp));
    cr_assert_str_eq(text, resp);
    tok_destroy(&tok);
}
