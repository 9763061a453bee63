/* task: turns prompt text (and an optional image) into the token sequence
 * the model sees, and a response into tokens — the one place where the
 * layout  <bos> [<img> SLOT x n_patches </img>] prompt-text  response <eos>
 * is decided, shared by the warm-up, evaluation, the actors and the learner. */
#ifndef CRL_TASK_H
#define CRL_TASK_H

#include <stddef.h>

#include "tokenizer.h"

/* Encodes a prompt: <bos>, then when with_image the image block (<img>,
 * n_patches MODEL_IMAGE_SLOT entries, </img>), then the text. Returns the
 * number of ids written, -ENOSPC when max_out is too small, -EINVAL on bad
 * arguments. */
int task_encode_prompt(const tokenizer_t *tok, int n_patches, int with_image, const char *text,
                       int *out, int max_out);

/* Encodes a response (warm-up target) followed by <eos>. Same returns. */
int task_encode_response(const tokenizer_t *tok, const char *text, int *out, int max_out);

/* Decodes generated ids to text, dropping a final <eos> (and anything after
 * it). Returns the number of bytes (NUL-terminated in out) or negative errno. */
long task_decode_response(const tokenizer_t *tok, const int *ids, int n, char *out, size_t cap);

#endif
