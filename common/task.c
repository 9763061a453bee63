#include "task.h"

#include <errno.h>
#include <string.h>

#include "model.h"

int task_encode_prompt(const tokenizer_t *tok, int n_patches, int with_image, const char *text,
                       int *out, int max_out)
{
    if (!tok || !text || !out || max_out < 1 || (with_image && n_patches < 1))
        return -EINVAL;
    int n = 0;
    out[n++] = TOK_BOS;
    if (with_image) {
        if (max_out < n + n_patches + 2)
            return -ENOSPC;
        out[n++] = TOK_IMG;
        for (int i = 0; i < n_patches; i++)
            out[n++] = MODEL_IMAGE_SLOT;
        out[n++] = TOK_IMG_END;
    }
    int k = tok_encode(tok, text, strlen(text), out + n, max_out - n);
    if (k < 0)
        return k;
    return n + k;
}

int task_encode_response(const tokenizer_t *tok, const char *text, int *out, int max_out)
{
    if (!tok || !text || !out || max_out < 1)
        return -EINVAL;
    int k = tok_encode(tok, text, strlen(text), out, max_out - 1);
    if (k < 0)
        return k;
    out[k++] = TOK_EOS;
    return k;
}

long task_decode_response(const tokenizer_t *tok, const int *ids, int n, char *out, size_t cap)
{
    if (!tok || (!ids && n > 0) || n < 0 || !out || cap < 1)
        return -EINVAL;
    int len = 0;
    while (len < n && ids[len] != TOK_EOS)
        len++;
    return tok_decode(tok, ids, len, out, cap);
}
