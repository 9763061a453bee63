#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rng.h"
#include "tokenizer.h"

static void make_tmpdir(char *dir, size_t cap)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(dir, cap, "%s/tok.XXXXXX", base && base[0] ? base : "/tmp");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp(%s) failed", dir);
}

static void rm_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp, "cannot write %s", path);
    fputs(text, fp);
    cr_assert_eq(fclose(fp), 0);
}

static const char *const words[] = {
    "the", "a", "red", "blue", "green", "circle", "square", "triangle", "is", "left", "of",
    "right", "above", "below", "there", "are", "two", "three", "shapes", "in", "image", "answer",
    "which", "better", "because", "count", "colour", "row", "column", "grid", "and", "not",
};

/* English-like text over a small vocabulary: words, numbers, punctuation,
 * newlines and the odd special token, as critic prompts look. */
static char *make_corpus(uint64_t seed, size_t target)
{
    rng_t r;
    rng_seed(&r, seed);
    char *buf = malloc(target + 64);
    cr_assert_not_null(buf);
    size_t n = 0;
    while (n < target) {
        int k = (int)rng_below(&r, 100);
        const char *w;
        char num[16];
        if (k < 80) {
            w = words[rng_below(&r, sizeof words / sizeof words[0])];
        } else if (k < 88) {
            snprintf(num, sizeof num, "%u", rng_below(&r, 100));
            w = num;
        } else if (k < 95) {
            w = k < 92 ? "." : ",";
        } else if (k < 98) {
            w = "\n";
        } else {
            w = k == 98 ? "<think>" : "</think>";
        }
        int space = n > 0 && k < 88 && buf[n - 1] != '\n';
        size_t l = strlen(w);
        if (n + l + 1 > target + 63)
            break;
        if (space)
            buf[n++] = ' ';
        memcpy(buf + n, w, l);
        n += l;
    }
    buf[n] = '\0';
    return buf;
}

static tokenizer_t *train_corpus(int vocab, uint64_t seed)
{
    char *c = make_corpus(seed, 200000);
    const char *texts[1] = {c};
    char err[256] = "";
    tokenizer_t *t = tok_train(texts, NULL, 1, vocab, err, sizeof err);
    cr_assert_not_null(t, "tok_train: %s", err);
    free(c);
    return t;
}

/* Encodes then decodes; asserts an exact byte round trip and returns #ids. */
static int round_trip(const tokenizer_t *t, const char *s, size_t len)
{
    int *ids = malloc((len + 1) * sizeof *ids);
    char *back = malloc(len + 1);
    cr_assert(ids && back);
    int n = tok_encode(t, s, len, ids, (int)len);
    cr_assert_geq(n, 0, "encode failed: %d (len %zu)", n, len);
    cr_assert_leq((size_t)n, len, "%d ids for %zu bytes", n, len);
    int counted = tok_encode(t, s, len, NULL, 0);
    cr_assert_eq(counted, n, "count-only encode gave %d, real encode %d", counted, n);
    long m = tok_decode(t, ids, n, back, len + 1);
    cr_assert_eq(m, (long)len, "decoded %ld bytes, expected %zu", m, len);
    cr_assert_eq(memcmp(back, s, len), 0, "round trip changed the bytes (len %zu)", len);
    cr_assert_eq(back[len], '\0');
    free(ids);
    free(back);
    return n;
}

Test(tokenizer, special_ids_are_fixed)
{
    cr_assert_str_eq(tok_special_name(TOK_PAD), "<pad>");
    cr_assert_str_eq(tok_special_name(TOK_BOS), "<bos>");
    cr_assert_str_eq(tok_special_name(TOK_EOS), "<eos>");
    cr_assert_str_eq(tok_special_name(TOK_IMG), "<img>");
    cr_assert_str_eq(tok_special_name(TOK_IMG_END), "</img>");
    cr_assert_str_eq(tok_special_name(TOK_THINK), "<think>");
    cr_assert_str_eq(tok_special_name(TOK_THINK_END), "</think>");
    cr_assert_null(tok_special_name(7));
    cr_assert_eq(TOK_BYTE0, 7);
    cr_assert_eq(TOK_N_BASE, 263);
}

Test(tokenizer, known_merges_on_tiny_corpus)
{
    /* Words "ab", " ab", " ab": (a,b) occurs 3 times, then (' ', ab) twice,
     * then nothing occurs twice, so training stops at 265 despite asking 300. */
    const char *texts[] = {"ab ab ab"};
    char err[256];
    tokenizer_t *t = tok_train(texts, NULL, 1, 300, err, sizeof err);
    cr_assert_not_null(t, "%s", err);
    cr_assert_eq(tok_vocab_size(t), 265, "vocab %d", tok_vocab_size(t));
    size_t l;
    const char *b = tok_token_bytes(t, 263, &l);
    cr_assert(l == 2 && memcmp(b, "ab", 2) == 0, "merge 263 is '%.*s'", (int)l, b);
    b = tok_token_bytes(t, 264, &l);
    cr_assert(l == 3 && memcmp(b, " ab", 3) == 0, "merge 264 is '%.*s'", (int)l, b);
    int ids[16];
    int n = tok_encode(t, "ab ab abc", 9, ids, 16);
    cr_assert_eq(n, 4, "got %d ids", n);
    cr_assert(ids[0] == 263 && ids[1] == 264 && ids[2] == 264 && ids[3] == TOK_BYTE0 + 'c',
              "got %d %d %d %d", ids[0], ids[1], ids[2], ids[3]);
    cr_assert_null(tok_token_bytes(t, 265, &l));
    tok_destroy(&t);
    cr_assert_null(t);
    tok_destroy(&t);
}

Test(tokenizer, round_trip_random_bytes)
{
    tokenizer_t *t = train_corpus(512, 1);
    rng_t r;
    rng_seed(&r, 77);
    static char buf[2048];
    /* Alphabets: all 256 bytes; text-like bytes (letters, spaces, '<', '/', '>')
     * so that partial and complete special strings appear often. */
    const char *textlike = "abcdefghijklmnopqrstuvwxyz <>/thinkimg \n\t.,0123456789\xff\x80";
    size_t tl = strlen(textlike);
    for (int it = 0; it < 600; it++) {
        size_t len = it < 5 ? (size_t)it : rng_below(&r, it % 10 == 0 ? 2000 : 120);
        for (size_t i = 0; i < len; i++)
            buf[i] = (it & 1) ? (char)rng_below(&r, 256) : textlike[rng_below(&r, (uint32_t)tl + 1) % tl];
        if (!(it & 1) && len > 0 && rng_below(&r, 3) == 0)
            buf[rng_below(&r, (uint32_t)len)] = '\0';
        round_trip(t, buf, len);
    }
    const char edge[] = "\0\xff\0\xff  x  \n\n\t <thin <think> </think</think>>";
    round_trip(t, edge, sizeof edge - 1);
    tok_destroy(&t);
}

Test(tokenizer, special_tokens_in_text_map_to_their_ids)
{
    tokenizer_t *t = train_corpus(400, 2);
    const char *s = "<bos><img></img>the <think>red</think> \\boxed{1}<eos><pad>";
    int ids[128];
    int n = tok_encode(t, s, strlen(s), ids, 128);
    cr_assert_gt(n, 0);
    cr_assert_eq(ids[0], TOK_BOS);
    cr_assert_eq(ids[1], TOK_IMG);
    cr_assert_eq(ids[2], TOK_IMG_END);
    int seen_think = 0, seen_end = 0;
    for (int i = 0; i < n; i++) {
        seen_think += ids[i] == TOK_THINK;
        seen_end += ids[i] == TOK_THINK_END;
    }
    cr_assert(seen_think == 1 && seen_end == 1, "think %d, /think %d", seen_think, seen_end);
    cr_assert_eq(ids[n - 2], TOK_EOS);
    cr_assert_eq(ids[n - 1], TOK_PAD);
    char out[256];
    long m = tok_decode(t, ids, n, out, sizeof out);
    cr_assert_eq(m, (long)strlen(s));
    cr_assert_str_eq(out, s);
    /* A near-miss is plain bytes, never a special id. */
    n = tok_encode(t, "<thinkk <img", 12, ids, 128);
    for (int i = 0; i < n; i++)
        cr_assert_geq(ids[i], TOK_BYTE0, "special id %d from a near-miss", ids[i]);
    /* No learned token contains a special string (they are cut out first). */
    for (int id = TOK_N_BASE; id < tok_vocab_size(t); id++) {
        size_t l;
        const char *b = tok_token_bytes(t, id, &l);
        cr_assert_null(memmem(b, l, "<think>", 7), "token %d contains <think>", id);
    }
    tok_destroy(&t);
}

Test(tokenizer, training_is_deterministic_and_order_independent)
{
    char *c1 = make_corpus(5, 60000), *c2 = make_corpus(6, 60000);
    const char *fwd[2] = {c1, c2}, *rev[2] = {c2, c1};
    char err[256], dir[256], p1[512], p2[512], p3[512];
    tokenizer_t *a = tok_train(fwd, NULL, 2, 450, err, sizeof err);
    tokenizer_t *b = tok_train(fwd, NULL, 2, 450, err, sizeof err);
    tokenizer_t *c = tok_train(rev, NULL, 2, 450, err, sizeof err);
    cr_assert(a && b && c, "%s", err);
    cr_assert_eq(tok_vocab_size(a), 450);
    make_tmpdir(dir, sizeof dir);
    snprintf(p1, sizeof p1, "%s/a.json", dir);
    snprintf(p2, sizeof p2, "%s/b.json", dir);
    snprintf(p3, sizeof p3, "%s/c.json", dir);
    cr_assert_eq(tok_save(a, p1, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tok_save(b, p2, err, sizeof err), 0, "%s", err);
    cr_assert_eq(tok_save(c, p3, err, sizeof err), 0, "%s", err);
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s' && cmp -s '%s' '%s'", p1, p2, p1, p3);
    cr_assert_eq(system(cmd), 0, "two trainings on the same texts saved different files");
    tok_destroy(&a);
    tok_destroy(&b);
    tok_destroy(&c);
    free(c1);
    free(c2);
    rm_tree(dir);
}

Test(tokenizer, merges_compress_english_like_text)
{
    tokenizer_t *t = train_corpus(512, 3);
    char *held_out = make_corpus(99, 50000);
    size_t len = strlen(held_out);
    int n = round_trip(t, held_out, len);
    double ratio = (double)n / (double)len;
    cr_log_info("512-vocab BPE: %zu bytes -> %d tokens (%.3f tokens/byte)", len, n, ratio);
    /* The corpus has ~32 distinct words: nearly every word becomes one token,
     * about 0.2 tokens/byte; bytes alone would be 1.0. */
    cr_assert_lt(ratio, 0.35, "%.3f tokens per byte, expected < 0.35", ratio);
    /* Merges stay inside words: " triangle" is one token, never "e r". */
    int ids[8];
    int k = tok_encode(t, " triangle", 9, ids, 8);
    cr_assert_eq(k, 1, "' triangle' took %d tokens", k);
    free(held_out);
    tok_destroy(&t);
}

Test(tokenizer, save_load_gives_identical_encodings)
{
    tokenizer_t *t = train_corpus(600, 4);
    char dir[256], path[512], err[256];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    cr_assert_eq(tok_save(t, path, err, sizeof err), 0, "%s", err);
    tokenizer_t *u = tok_load(path, err, sizeof err);
    cr_assert_not_null(u, "tok_load: %s", err);
    cr_assert_eq(tok_vocab_size(u), tok_vocab_size(t));
    char *c = make_corpus(42, 30000);
    size_t len = strlen(c);
    int *x = malloc(len * sizeof *x), *y = malloc(len * sizeof *y);
    int nx = tok_encode(t, c, len, x, (int)len), ny = tok_encode(u, c, len, y, (int)len);
    cr_assert_eq(nx, ny, "%d vs %d ids", nx, ny);
    cr_assert_eq(memcmp(x, y, (size_t)nx * sizeof *x), 0, "encodings differ after reload");
    for (int id = 0; id < tok_vocab_size(t); id++) {
        size_t l1, l2;
        const char *b1 = tok_token_bytes(t, id, &l1), *b2 = tok_token_bytes(u, id, &l2);
        cr_assert(l1 == l2 && memcmp(b1, b2, l1) == 0, "token %d differs", id);
    }
    free(x);
    free(y);
    free(c);
    tok_destroy(&t);
    tok_destroy(&u);
    rm_tree(dir);
}

static void expect_load_error(const char *dir, const char *json, const char *want)
{
    char path[512], err[512] = "";
    snprintf(path, sizeof path, "%s/bad.json", dir);
    write_text(path, json);
    tokenizer_t *t = tok_load(path, err, sizeof err);
    cr_assert_null(t, "accepted: %s", json);
    cr_assert(strstr(err, want), "for %s\nexpected an error containing '%s', got '%s'", json, want, err);
    cr_assert(strstr(err, "bad.json"), "error does not name the file: '%s'", err);
}

#define HDR "{\"format\":\"crl-bpe\",\"version\":1,\"pretokenizer\":\"crl-words-v1\",\"byte_offset\":7," \
            "\"special\":{\"<pad>\":0,\"<bos>\":1,\"<eos>\":2,\"<img>\":3,\"</img>\":4,\"<think>\":5,\"</think>\":6},"

Test(tokenizer, load_rejects_corrupt_files_with_a_message)
{
    char dir[256], path[512], err[512];
    make_tmpdir(dir, sizeof dir);
    /* The base case loads, so each rejection below is down to its one defect. */
    snprintf(path, sizeof path, "%s/good.json", dir);
    write_text(path, HDR "\"vocab_size\":265,\"merges\":[[104,105],[263,108]]}");
    tokenizer_t *t = tok_load(path, err, sizeof err);
    cr_assert_not_null(t, "%s", err);
    size_t l;
    const char *b = tok_token_bytes(t, 264, &l);
    cr_assert(l == 3 && memcmp(b, "abe", 3) == 0, "token 264 = '%.*s'", (int)l, b);
    tok_destroy(&t);

    expect_load_error(dir, HDR "\"vocab_size\":265,\"merges\":[[104,101],[263,108]]", "not valid JSON");
    expect_load_error(dir, "", "not valid JSON");
    expect_load_error(dir, "{\"format\":\"gpt2\",\"version\":1}", "'format' is \"gpt2\", expected \"crl-bpe\"");
    expect_load_error(dir, "{\"version\":1}", "'format' is missing");
    expect_load_error(dir, "{\"format\":\"crl-bpe\",\"version\":2}", "unsupported version 2");
    expect_load_error(dir, "{\"format\":\"crl-bpe\",\"version\":\"1\"}", "'version' missing or not an integer");
    expect_load_error(dir, HDR "\"vocab_size\":266,\"merges\":[[104,101],[263,108]]}",
                      "'vocab_size' 266 does not match 263 base ids + 2 merges");
    expect_load_error(dir, HDR "\"vocab_size\":265,\"merges\":[[104,101],[263,900]]}",
                      "merges[1] = [263, 900]: id 900 out of range");
    expect_load_error(dir, HDR "\"vocab_size\":264,\"merges\":[[263,101]]}",
                      "merges[0] = [263, 101]: id 263 out of range");
    expect_load_error(dir, HDR "\"vocab_size\":264,\"merges\":[[5,101]]}", "id 5 out of range");
    expect_load_error(dir, HDR "\"vocab_size\":265,\"merges\":[[104,101],[104,101]]}",
                      "merges[1] = [104, 101] duplicates merge 0");
    expect_load_error(dir, HDR "\"vocab_size\":264,\"merges\":[[104]]}", "merges[0] is not a pair");
    expect_load_error(dir, HDR "\"vocab_size\":264,\"merges\":[[104, 1.5]]}", "merges[0] is not a pair");
    expect_load_error(dir, HDR "\"vocab_size\":263}", "'merges' missing");
    expect_load_error(dir,
                      "{\"format\":\"crl-bpe\",\"version\":1,\"pretokenizer\":\"crl-words-v1\",\"byte_offset\":7,"
                      "\"special\":{\"<pad>\":0,\"<bos>\":2,\"<eos>\":1,\"<img>\":3,\"</img>\":4,\"<think>\":5,"
                      "\"</think>\":6},\"vocab_size\":263,\"merges\":[]}",
                      "special token \"<bos>\" must have id 1");
    cr_assert_null(tok_load("/nonexistent/tokenizer.json", err, sizeof err));
    cr_assert(strstr(err, "cannot open"), "got '%s'", err);
    rm_tree(dir);
}

Test(tokenizer, encode_decode_bounds)
{
    tokenizer_t *t = train_corpus(300, 7);
    const char *s = "the red circle is left of the blue square";
    int ids[64];
    int n = tok_encode(t, s, strlen(s), ids, 64);
    cr_assert_gt(n, 2);
    cr_assert_eq(tok_encode(t, s, strlen(s), ids, n - 1), -ENOSPC);
    cr_assert_eq(tok_encode(t, s, strlen(s), ids, n), n);
    cr_assert_eq(tok_encode(t, "", 0, ids, 0), 0);
    char out[64];
    cr_assert_eq(tok_decode(t, ids, n, out, strlen(s)), -ENOSPC, "cap without room for NUL");
    cr_assert_eq(out[strlen(s) - 1], '\0', "truncated output must stay NUL-terminated");
    int bad[3] = {TOK_BOS, tok_vocab_size(t), TOK_EOS};
    cr_assert_eq(tok_decode(t, bad, 3, out, sizeof out), -EINVAL);
    bad[1] = -1;
    cr_assert_eq(tok_decode(t, bad, 3, out, sizeof out), -EINVAL);
    cr_assert_eq(tok_decode(t, ids, 0, out, sizeof out), 0);
    cr_assert_str_eq(out, "");
    char err[256];
    cr_assert_null(tok_train(NULL, NULL, 0, 100, err, sizeof err));
    cr_assert(strstr(err, "vocab_size 100 out of range"), "got '%s'", err);
    tok_destroy(&t);
}

Test(tokenizer, train_from_text_and_jsonl_files)
{
    char dir[256], txt[512], jl[512], bad[512], err[512];
    make_tmpdir(dir, sizeof dir);
    snprintf(txt, sizeof txt, "%s/a.txt", dir);
    snprintf(jl, sizeof jl, "%s/b.jsonl", dir);
    snprintf(bad, sizeof bad, "%s/bad.jsonl", dir);
    char *c = make_corpus(8, 20000);
    write_text(txt, c);
    write_text(jl,
               "{\"id\":\"zzqx-1\",\"image\":\"images/zzqx.png\",\"question\":\"how many squares\","
               "\"answers\":[\"<think>count them</think>\\\\boxed{2}\",\"<think>guess</think>\\\\boxed{3}\"]}\n"
               "\n"
               "{\"id\":\"zzqx-2\",\"question\":\"how many squares\",\"answer\":\"two squares\"}\n");
    const char *paths[2] = {txt, jl};
    tokenizer_t *t = tok_train_files(paths, 2, 500, err, sizeof err);
    cr_assert_not_null(t, "%s", err);
    int ids[16];
    cr_assert_eq(tok_encode(t, " squares", 8, ids, 16), 1, "' squares' (from the jsonl) is not one token");
    /* "id"/"image" values are skipped: "zzqx" occurs in them only. */
    cr_assert_gt(tok_encode(t, "zzqx", 4, ids, 16), 1, "'zzqx' came from an id field");
    tok_destroy(&t);

    write_text(bad, "{\"question\":\"ok\"}\n{\"question\": oops}\n");
    const char *bp[1] = {bad};
    cr_assert_null(tok_train_files(bp, 1, 500, err, sizeof err));
    cr_assert(strstr(err, "bad.jsonl:2: not valid JSON"), "got '%s'", err);
    const char *missing[1] = {"/nonexistent/x.txt"};
    cr_assert_null(tok_train_files(missing, 1, 500, err, sizeof err));
    cr_assert(strstr(err, "/nonexistent/x.txt: cannot open"), "got '%s'", err);
    free(c);
    rm_tree(dir);
}

Test(tokenizer, encode_throughput)
{
    tokenizer_t *t = train_corpus(512, 9);
    size_t len = 4 << 20;
    char *c = make_corpus(10, len);
    len = strlen(c);
    int *ids = malloc(len * sizeof *ids);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int n = tok_encode(t, c, len, ids, (int)len);
    clock_gettime(CLOCK_MONOTONIC, &b);
    cr_assert_gt(n, 0);
    double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    double mbs = (double)len / 1e6 / s;
    cr_log_info("encode: %.1f MB in %.3f s = %.1f MB/s (512 vocab; shared machine, noisy)",
                (double)len / 1e6, s, mbs);
    /* Target is > 1 MB/s at -O2; the bound is loose so that ASan builds and
     * a busy machine pass. */
    cr_assert_gt(mbs, 0.3, "encode at %.2f MB/s", mbs);
    /* A pathological single 1 MB word must not go quadratic. */
    memset(c, 'a', 1 << 20);
    clock_gettime(CLOCK_MONOTONIC, &a);
    n = tok_encode(t, c, 1 << 20, ids, (int)len);
    clock_gettime(CLOCK_MONOTONIC, &b);
    s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    cr_assert_gt(n, 0);
    cr_assert_lt(s, 5.0, "1 MB single word took %.2f s", s);
    free(ids);
    free(c);
    tok_destroy(&t);
}

/* ------------------------------------------------------------------
 * Naive oracle: the spec re-implemented as plainly as possible (split
 * words by the rule in tokenizer.h, recount every pair each round, apply
 * merges to whole words), to check the incremental trainer and the heap
 * encoder against. */

#define ORACLE_V 360

static int o_class(unsigned char c)
{
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')
        return 0;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80)
        return 1;
    if (c >= '0' && c <= '9')
        return 2;
    return 3;
}

static int o_special(const char *s, size_t len, size_t i)
{
    for (int id = 0; id < TOK_N_SPECIAL; id++) {
        const char *n = tok_special_name(id);
        size_t l = strlen(n);
        if (i + l <= len && memcmp(s + i, n, l) == 0)
            return (int)l;
    }
    return 0;
}

/* Splits s into pieces; starts[k], ends[k]; special pieces get special[k] = 1. */
static int o_split(const char *s, size_t len, size_t *starts, size_t *ends, int *special)
{
    int k = 0;
    size_t i = 0;
    while (i < len) {
        int sl = o_special(s, len, i);
        if (sl) {
            starts[k] = i;
            ends[k] = i + (size_t)sl;
            special[k++] = 1;
            i += (size_t)sl;
            continue;
        }
        size_t j = i;
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' && i + 1 < len && o_class((unsigned char)s[i + 1]) != 0 && !o_special(s, len, i + 1))
            j = i + 1;
        int cls = o_class((unsigned char)s[j]);
        size_t e = j + 1;
        while (e < len && o_class((unsigned char)s[e]) == cls && !o_special(s, len, e))
            e++;
        if (cls == 0 && e < len && e - i >= 2 && s[e - 1] == ' ' && !o_special(s, len, e))
            e--;
        starts[k] = i;
        ends[k] = e;
        special[k++] = 0;
        i = e;
    }
    return k;
}

/* Merges every (a, b) in w[0..n) left to right; returns the new length. */
static int o_apply(int *w, int n, int a, int b, int x)
{
    int o = 0;
    for (int i = 0; i < n;) {
        if (i + 1 < n && w[i] == a && w[i + 1] == b) {
            w[o++] = x;
            i += 2;
        } else {
            w[o++] = w[i++];
        }
    }
    return o;
}

Test(tokenizer, matches_naive_oracle)
{
    char *c = make_corpus(11, 12000);
    /* Add awkward bytes so that whitespace runs and high bytes are covered. */
    const char *extra = "  x   y\t\t z \xc3\xa9t\xc3\xa9 \xc3\xa9t\xc3\xa9 \xff\xfe  <<think>> ((( ((( 12.5 12.5";
    size_t len = strlen(c), el = strlen(extra);
    char *text = malloc(len + 3 * el + 1);
    memcpy(text, c, len);
    for (int r = 0; r < 3; r++)
        memcpy(text + len + (size_t)r * el, extra, el);
    len += 3 * el;
    text[len] = '\0';

    size_t *st = malloc(len * sizeof *st), *en = malloc(len * sizeof *en);
    int *sp = malloc(len * sizeof *sp);
    int np = o_split(text, len, st, en, sp);
    int *syms = malloc(len * sizeof *syms), *wl = malloc((size_t)np * sizeof *wl);
    size_t *ws = malloc((size_t)np * sizeof *ws);
    size_t off = 0;
    for (int k = 0; k < np; k++) {
        ws[k] = off;
        wl[k] = sp[k] ? 0 : (int)(en[k] - st[k]);
        for (int i = 0; i < wl[k]; i++)
            syms[off + (size_t)i] = TOK_BYTE0 + (unsigned char)text[st[k] + (size_t)i];
        off += (size_t)wl[k];
    }
    static long long cnt[ORACLE_V][ORACLE_V];
    int ma[ORACLE_V], mb[ORACLE_V], nm = 0;
    for (int x = TOK_N_BASE; x < ORACLE_V; x++) {
        memset(cnt, 0, sizeof cnt);
        for (int k = 0; k < np; k++)
            for (int i = 0; i + 1 < wl[k]; i++)
                cnt[syms[ws[k] + (size_t)i]][syms[ws[k] + (size_t)i + 1]]++;
        long long best = 1;
        int ba = -1, bb = -1;
        for (int a = 0; a < x; a++)
            for (int b = 0; b < x; b++)
                if (cnt[a][b] > best) {
                    best = cnt[a][b];
                    ba = a;
                    bb = b;
                }
        if (ba < 0)
            break;
        ma[nm] = ba;
        mb[nm++] = bb;
        for (int k = 0; k < np; k++)
            wl[k] = o_apply(syms + ws[k], wl[k], ba, bb, x);
    }

    const char *texts[1] = {text};
    size_t lens[1] = {len};
    char err[256];
    tokenizer_t *t = tok_train(texts, lens, 1, ORACLE_V, err, sizeof err);
    cr_assert_not_null(t, "%s", err);
    cr_assert_eq(tok_vocab_size(t), TOK_N_BASE + nm, "trained %d ids, oracle %d", tok_vocab_size(t),
                 TOK_N_BASE + nm);
    /* Same merges: compare each token's bytes with the oracle's (a, b). */
    for (int i = 0; i < nm; i++) {
        size_t la, lb, lx;
        const char *a = tok_token_bytes(t, ma[i], &la), *b = tok_token_bytes(t, mb[i], &lb);
        const char *x = tok_token_bytes(t, TOK_N_BASE + i, &lx);
        cr_assert(lx == la + lb && memcmp(x, a, la) == 0 && memcmp(x + la, b, lb) == 0,
                  "merge %d: trainer made '%.*s', oracle '%.*s'+'%.*s'", i, (int)lx, x, (int)la, a,
                  (int)lb, b);
    }

    /* Encoding: oracle applies merges in rank order to each piece. */
    rng_t r;
    rng_seed(&r, 12);
    char *held = make_corpus(13, 20000);
    size_t hl = strlen(held);
    for (int it = 0; it < 200; it++) { /* sprinkle odd bytes in */
        size_t p = rng_below(&r, (uint32_t)hl);
        held[p] = (char)(rng_below(&r, 4) == 0 ? ' ' : rng_below(&r, 256));
    }
    int *got = malloc(hl * sizeof *got), *want = malloc(hl * sizeof *want);
    int ng = tok_encode(t, held, hl, got, (int)hl);
    cr_assert_geq(ng, 0);
    np = o_split(held, hl, st, en, sp);
    int nw = 0;
    for (int k = 0; k < np; k++) {
        if (sp[k]) {
            want[nw++] = -1;
            for (int id = 0; id < TOK_N_SPECIAL; id++)
                if (en[k] - st[k] == strlen(tok_special_name(id)) &&
                    memcmp(held + st[k], tok_special_name(id), en[k] - st[k]) == 0)
                    want[nw - 1] = id;
            continue;
        }
        int w[4096], n = (int)(en[k] - st[k]);
        cr_assert_leq(n, 4096);
        for (int i = 0; i < n; i++)
            w[i] = TOK_BYTE0 + (unsigned char)held[st[k] + (size_t)i];
        for (int m = 0; m < nm; m++)
            n = o_apply(w, n, ma[m], mb[m], TOK_N_BASE + m);
        memcpy(want + nw, w, (size_t)n * sizeof *w);
        nw += n;
    }
    cr_assert_eq(ng, nw, "encoder gave %d ids, oracle %d", ng, nw);
    for (int i = 0; i < ng; i++)
        cr_assert_eq(got[i], want[i], "id %d: encoder %d, oracle %d", i, got[i], want[i]);

    free(got);
    free(want);
    free(held);
    free(st);
    free(en);
    free(sp);
    free(syms);
    free(wl);
    free(ws);
    free(text);
    free(c);
    tok_destroy(&t);
}
