/* fuzz_tokenizer: tok_load on arbitrary bytes as tokenizer.json. Whenever
 * a file loads, the tokenizer must be usable: encode then decode gives
 * back every test string exactly (a fixed text with special tokens, every
 * byte value, and a slice of the input itself), the count never exceeds
 * the text's length, ids are in range, and every id has bytes. Properties
 * otherwise: no crash / leak / UB; a refusal names the file. */
#include <string.h>

#include "fuzz_util.h"
#include "tokenizer.h"

static fuzz_file_t g_file;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    fuzz_file_init(&g_file, "tokenizer.json");
    return 0;
}

static void round_trip(const tokenizer_t *tok, const char *text, size_t len)
{
    int vocab = tok_vocab_size(tok);
    int *ids = malloc((len ? len : 1) * sizeof *ids);
    char *back = malloc(len + 1);
    FUZZ_CHECK(ids && back, "out of memory");
    int n = tok_encode(tok, text, len, NULL, 0);
    FUZZ_CHECK(n >= 0 && (size_t)n <= len, "count-only encode gave %d for %zu bytes", n, len);
    int m = tok_encode(tok, text, len, ids, (int)len);
    FUZZ_CHECK(m == n, "encode gave %d ids, count-only %d", m, n);
    for (int i = 0; i < m; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d out of [0, %d)", ids[i], vocab);
    long got = tok_decode(tok, ids, m, back, len + 1);
    FUZZ_CHECK(got == (long)len && memcmp(back, text, len) == 0 && back[len] == '\0',
               "round trip of %zu bytes gave %ld bytes%s", len, got,
               got == (long)len ? " that differ" : "");
    if (m > 0 && len > 0) {
        long short_cap = tok_decode(tok, ids, m, back, len);
        FUZZ_CHECK(short_cap == -ENOSPC && back[len - 1] == '\0', "decode into a short buffer gave %ld",
                   short_cap);
    }
    free(ids);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    fuzz_file_set(&g_file, data, size);
    err[0] = '\0';
    tokenizer_t *tok = tok_load(g_file.path, err, sizeof err);
    if (!tok) {
        FUZZ_CHECK(strncmp(err, g_file.path, strlen(g_file.path)) == 0,
                   "tok_load error does not name the file: '%s'", err);
        return 0;
    }
    int vocab = tok_vocab_size(tok);
    FUZZ_CHECK(vocab >= TOK_N_BASE, "vocab %d below the base %d", vocab, TOK_N_BASE);
    for (int id = 0; id < vocab; id++) {
        size_t len = 0;
        const char *b = tok_token_bytes(tok, id, &len);
        FUZZ_CHECK(b != NULL && len > 0, "token %d has no bytes", id);
    }
    size_t len;
    FUZZ_CHECK(tok_token_bytes(tok, vocab, &len) == NULL, "token past the vocab has bytes");

    static const char text[] = "<bos>Which is better? <img></img> <think>A says 12 red, B says "
                               "7.</think> \\boxed{A}<eos> hello  world\n\t caf\xc3\xa9 <thi";
    round_trip(tok, text, sizeof text - 1);
    char all[256];
    for (int b = 0; b < 256; b++)
        all[b] = (char)b;
    round_trip(tok, all, sizeof all);
    round_trip(tok, (const char *)data, size < 96 ? size : 96);
    int bad = vocab;
    FUZZ_CHECK(tok_decode(tok, &bad, 1, err, sizeof err) == -EINVAL, "out-of-range id decoded");

    tok_destroy(&tok);
    FUZZ_CHECK(tok == NULL, "tok_destroy left the pointer");
    return 0;
}
