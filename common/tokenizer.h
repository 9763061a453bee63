/* tokenizer: byte-level BPE trained by crl on its own text. Ids 0..6 are
 * fixed special tokens, 7..262 the 256 bytes, merges after that; every byte
 * string encodes and decodes back exactly. Owns the merge table and the byte
 * string of every token; saved as JSON (tokenizer.json) beside a checkpoint.
 * A trained or loaded tokenizer is read-only: tok_encode / tok_decode may be
 * called from several threads at once. */
#ifndef CRL_TOKENIZER_H
#define CRL_TOKENIZER_H

#include <stddef.h>

enum {
    TOK_PAD = 0,       /* "<pad>" */
    TOK_BOS = 1,       /* "<bos>" */
    TOK_EOS = 2,       /* "<eos>" */
    TOK_IMG = 3,       /* "<img>" */
    TOK_IMG_END = 4,   /* "</img>" */
    TOK_THINK = 5,     /* "<think>" */
    TOK_THINK_END = 6, /* "</think>" */
    TOK_N_SPECIAL = 7,
    TOK_BYTE0 = 7,     /* byte b is id TOK_BYTE0 + b */
    TOK_N_BASE = 263   /* specials + bytes; the first merge gets this id */
};

#define TOK_FORMAT "crl-bpe"
#define TOK_VERSION 1

typedef struct tokenizer tokenizer_t; /* opaque */

/* Learns merges from n texts (lens[i] bytes each; lens == NULL: NUL-terminated)
 * until the vocabulary has vocab_size ids or no pair occurs twice, so the
 * result may be smaller than asked (see tok_vocab_size). Special-token strings
 * are cut out first and never merged; the rest is split into words (an
 * optional leading space plus a run of letters (ASCII or any byte >= 0x80), of
 * digits, or of other non-space bytes; whitespace runs on their own) and
 * merges never cross a word boundary. Ties in pair frequency go to the
 * smallest (left id, right id), so training is reproducible.
 * vocab_size >= TOK_N_BASE. NULL on error, with a message in err. */
tokenizer_t *tok_train(const char *const *texts, const size_t *lens, int n, int vocab_size,
                       char *err, size_t errlen);
/* The same from files. A .jsonl file contributes the string values of each
 * record (keys "id" and "image" skipped: never tokenized); any other file
 * contributes its raw bytes. Errors name the file (and line). */
tokenizer_t *tok_train_files(const char *const *paths, int n, int vocab_size, char *err,
                             size_t errlen);
void tok_destroy(tokenizer_t **tok);

int tok_vocab_size(const tokenizer_t *tok);

/* Encodes len bytes of text into out (at most max_out ids) and returns the
 * number of ids. Special-token strings in the text become their ids. The
 * count never exceeds len, so max_out = len is always enough. With out ==
 * NULL nothing is written and the count is returned. Returns -ENOSPC when
 * max_out is too small (out then holds a prefix), -EINVAL on bad arguments. */
int tok_encode(const tokenizer_t *tok, const char *text, size_t len, int *out, int max_out);

/* Writes the bytes of ids[0..n) to out followed by a NUL (the text itself may
 * contain NUL bytes: use the return value) and returns the number of bytes
 * written, NUL excluded. Special ids decode to their strings. -EINVAL if an
 * id is out of range, -ENOSPC if cap < bytes + 1 (out then holds a
 * NUL-terminated prefix). */
long tok_decode(const tokenizer_t *tok, const int *ids, int n, char *out, size_t cap);

/* Bytes of one token (not NUL-terminated; *len set); NULL if id out of range.
 * Owned by tok. For streaming output one token at a time. */
const char *tok_token_bytes(const tokenizer_t *tok, int id, size_t *len);
/* "<think>" etc. for a special id; NULL otherwise. */
const char *tok_special_name(int id);

/* Saves as JSON (atomic: path.tmp then rename); 0 or negative errno. */
int tok_save(const tokenizer_t *tok, const char *path, char *err, size_t errlen);
/* Loads and validates (format, version, special ids, counts, every merge id in
 * range and below its own id, no duplicate merge). NULL with a message naming
 * the problem on error. */
tokenizer_t *tok_load(const char *path, char *err, size_t errlen);

#endif
