/* tokenizer: see tokenizer.h.
 *
 * Training is the classic incremental BPE: distinct words with counts, pair
 * counts in a hash map, a list of the words each pair occurs in (so a merge
 * only touches words that hold it), and a max-heap of pairs with lazy
 * invalidation (an entry is live only while its count equals the pair's
 * current count). Encoding merges each word by lowest merge id first with a
 * min-heap over adjacent pairs and a linked list of symbols: O(n log n) per
 * word, so a pathological 1 MB "word" is still fast. */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOK_PRETOKENIZER "crl-words-v1"
#define TOK_MAX_VOCAB (1 << 24)
#define TOK_MAX_FILE ((size_t)1 << 31)

static const char *const special_names[TOK_N_SPECIAL] = {
    "<pad>", "<bos>", "<eos>", "<img>", "</img>", "<think>", "</think>",
};

struct tokenizer {
    int vocab_size;
    int n_merges;
    int *merges;            /* (n_merges, 2): merge i makes id TOK_N_BASE + i */
    size_t *tok_off;        /* (vocab_size) offset of each token's bytes in pool */
    uint32_t *tok_len;      /* (vocab_size) */
    unsigned char *pool;
    uint64_t *map_keys;     /* (map_mask + 1) (left << 32 | right), MAP_EMPTY if free */
    int *map_vals;          /* (map_mask + 1) merged id */
    size_t map_mask;
};

#define MAP_EMPTY UINT64_MAX

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static inline uint64_t pair_key(int a, int b)
{
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static inline size_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    return (size_t)k;
}

static int merge_lookup(const tokenizer_t *t, int a, int b)
{
    if (!t->map_keys)
        return -1;
    uint64_t key = pair_key(a, b);
    for (size_t i = mix64(key) & t->map_mask;; i = (i + 1) & t->map_mask) {
        if (t->map_keys[i] == key)
            return t->map_vals[i];
        if (t->map_keys[i] == MAP_EMPTY)
            return -1;
    }
}

/* ---------------------------------------------------------------- words */

enum { C_SPACE, C_LETTER, C_DIGIT, C_OTHER };

static inline int byte_class(unsigned char c)
{
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')
        return C_SPACE;
    if (((c | 32) >= 'a' && (c | 32) <= 'z') || c >= 0x80)
        return C_LETTER; /* bytes >= 0x80: UTF-8 letters of other scripts */
    if (c >= '0' && c <= '9')
        return C_DIGIT;
    return C_OTHER;
}

/* Special id starting at s[pos], -1 if none; *slen gets its length. */
static int special_at(const unsigned char *s, size_t len, size_t pos, size_t *slen)
{
    if (s[pos] != '<')
        return -1;
    for (int id = 0; id < TOK_N_SPECIAL; id++) {
        size_t n = strlen(special_names[id]);
        if (len - pos >= n && memcmp(s + pos, special_names[id], n) == 0) {
            if (slen)
                *slen = n;
            return id;
        }
    }
    return -1;
}

static size_t run_end(const unsigned char *s, size_t len, size_t i, int cls)
{
    while (i < len && byte_class(s[i]) == cls &&
           !(s[i] == '<' && special_at(s, len, i, NULL) >= 0))
        i++;
    return i;
}

/* End of the word starting at pos (pos is not the start of a special). */
static size_t word_end(const unsigned char *s, size_t len, size_t pos)
{
    int c = byte_class(s[pos]);
    if (s[pos] == ' ' && pos + 1 < len && byte_class(s[pos + 1]) != C_SPACE &&
        special_at(s, len, pos + 1, NULL) < 0)
        return run_end(s, len, pos + 1, byte_class(s[pos + 1]));
    if (c == C_SPACE) {
        size_t e = run_end(s, len, pos, C_SPACE);
        /* Leave the last space to the word that follows, as GPT-2 does, so
         * " the" is the same token after one space or after an indent. */
        if (e < len && e - pos >= 2 && s[e - 1] == ' ' && special_at(s, len, e, NULL) < 0)
            e--;
        return e;
    }
    return run_end(s, len, pos + 1, c);
}

/* ------------------------------------------------------------- building */

static int map_insert(tokenizer_t *t, int a, int b, int id)
{
    uint64_t key = pair_key(a, b);
    for (size_t i = mix64(key) & t->map_mask;; i = (i + 1) & t->map_mask) {
        if (t->map_keys[i] == key)
            return -EEXIST;
        if (t->map_keys[i] == MAP_EMPTY) {
            t->map_keys[i] = key;
            t->map_vals[i] = id;
            return 0;
        }
    }
}

void tok_destroy(tokenizer_t **pt)
{
    if (!pt || !*pt)
        return;
    tokenizer_t *t = *pt;
    free(t->merges);
    free(t->tok_off);
    free(t->tok_len);
    free(t->pool);
    free(t->map_keys);
    free(t->map_vals);
    free(t);
    *pt = NULL;
}

/* Builds a tokenizer from a merge list (copied), validating every merge.
 * where prefixes error messages (a file name or "training"). */
static tokenizer_t *tok_build(const int *merges, int n_merges, const char *where, char *err,
                              size_t errlen)
{
    tokenizer_t *t = calloc(1, sizeof *t);
    if (!t)
        goto oom;
    if (n_merges < 0 || n_merges > TOK_MAX_VOCAB - TOK_N_BASE) {
        set_err(err, errlen, "%s: %d merges is out of range", where, n_merges);
        goto fail;
    }
    t->n_merges = n_merges;
    t->vocab_size = TOK_N_BASE + n_merges;
    t->merges = malloc(((size_t)n_merges + 1) * 2 * sizeof(int));
    t->tok_off = malloc((size_t)t->vocab_size * sizeof *t->tok_off);
    t->tok_len = malloc((size_t)t->vocab_size * sizeof *t->tok_len);
    size_t cap = 1;
    while (cap < 2 * ((size_t)n_merges + 1))
        cap <<= 1;
    t->map_mask = cap - 1;
    t->map_keys = malloc(cap * sizeof *t->map_keys);
    t->map_vals = malloc(cap * sizeof *t->map_vals);
    if (!t->merges || !t->tok_off || !t->tok_len || !t->map_keys || !t->map_vals)
        goto oom;
    for (size_t i = 0; i < cap; i++)
        t->map_keys[i] = MAP_EMPTY;
    if (n_merges)
        memcpy(t->merges, merges, (size_t)n_merges * 2 * sizeof(int));

    /* Token lengths first (validating), then one pool for all bytes. */
    size_t total = 0;
    for (int id = 0; id < TOK_N_SPECIAL; id++) {
        t->tok_len[id] = (uint32_t)strlen(special_names[id]);
        total += t->tok_len[id];
    }
    for (int b = 0; b < 256; b++)
        t->tok_len[TOK_BYTE0 + b] = 1;
    total += 256;
    for (int i = 0; i < n_merges; i++) {
        int id = TOK_N_BASE + i, a = merges[2 * i], b = merges[2 * i + 1];
        if (a < TOK_BYTE0 || a >= id || b < TOK_BYTE0 || b >= id) {
            int bad = (a < TOK_BYTE0 || a >= id) ? a : b;
            set_err(err, errlen, "%s: merges[%d] = [%d, %d]: id %d out of range (a merge making id %d "
                    "may only use ids in [%d, %d); specials are never merged)",
                    where, i, a, b, bad, id, TOK_BYTE0, id);
            goto fail;
        }
        uint64_t l = (uint64_t)t->tok_len[a] + t->tok_len[b];
        if (l > UINT32_MAX) {
            set_err(err, errlen, "%s: merges[%d]: token too long", where, i);
            goto fail;
        }
        t->tok_len[id] = (uint32_t)l;
        total += l;
        if (map_insert(t, a, b, id) != 0) {
            set_err(err, errlen, "%s: merges[%d] = [%d, %d] duplicates merge %d", where, i, a, b,
                    merge_lookup(t, a, b) - TOK_N_BASE);
            goto fail;
        }
    }
    t->pool = malloc(total ? total : 1);
    if (!t->pool)
        goto oom;
    size_t off = 0;
    for (int id = 0; id < TOK_N_SPECIAL; id++) {
        t->tok_off[id] = off;
        memcpy(t->pool + off, special_names[id], t->tok_len[id]);
        off += t->tok_len[id];
    }
    for (int b = 0; b < 256; b++) {
        t->tok_off[TOK_BYTE0 + b] = off;
        t->pool[off++] = (unsigned char)b;
    }
    for (int i = 0; i < n_merges; i++) {
        int id = TOK_N_BASE + i, a = merges[2 * i], b = merges[2 * i + 1];
        t->tok_off[id] = off;
        memcpy(t->pool + off, t->pool + t->tok_off[a], t->tok_len[a]);
        memcpy(t->pool + off + t->tok_len[a], t->pool + t->tok_off[b], t->tok_len[b]);
        off += t->tok_len[id];
    }
    return t;

oom:
    set_err(err, errlen, "%s: out of memory", where);
fail:
    tok_destroy(&t);
    return NULL;
}

int tok_vocab_size(const tokenizer_t *tok)
{
    return tok ? tok->vocab_size : 0;
}

const char *tok_special_name(int id)
{
    return (id >= 0 && id < TOK_N_SPECIAL) ? special_names[id] : NULL;
}

const char *tok_token_bytes(const tokenizer_t *tok, int id, size_t *len)
{
    if (!tok || id < 0 || id >= tok->vocab_size)
        return NULL;
    if (len)
        *len = tok->tok_len[id];
    return (const char *)tok->pool + tok->tok_off[id];
}

/* ------------------------------------------------------------- encoding */

typedef struct {
    int rank; /* merged id: lower = learned earlier = applied first */
    int pos;  /* left symbol's position */
    int a, b; /* the pair it was pushed for (stale if the symbols changed) */
} cand_t;

typedef struct {
    int *sym;    /* (cap) symbol id at each position, -1 once merged away */
    int *next;   /* (cap) next live position or -1 */
    int *prev;   /* (cap) */
    cand_t *heap;/* (3 * cap) */
    size_t cap;
    size_t n_heap;
} enc_scratch_t;

static int scratch_reserve(enc_scratch_t *s, size_t n)
{
    if (n <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n)
        cap *= 2;
    int *sym = realloc(s->sym, cap * sizeof *sym);
    if (sym)
        s->sym = sym;
    int *next = realloc(s->next, cap * sizeof *next);
    if (next)
        s->next = next;
    int *prev = realloc(s->prev, cap * sizeof *prev);
    if (prev)
        s->prev = prev;
    cand_t *heap = realloc(s->heap, 3 * cap * sizeof *heap);
    if (heap)
        s->heap = heap;
    if (!sym || !next || !prev || !heap)
        return -ENOMEM;
    s->cap = cap;
    return 0;
}

static inline int cand_less(const cand_t *x, const cand_t *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(enc_scratch_t *s, cand_t c)
{
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
}

static cand_t heap_pop(enc_scratch_t *s)
{
    cand_t top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const cand_t *best = &last;
        if (l < n && cand_less(&s->heap[l], best)) {
            m = l;
            best = &s->heap[l];
        }
        if (r < n && cand_less(&s->heap[r], best))
            m = r;
        if (m == i)
            break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

static void push_pair(const tokenizer_t *t, enc_scratch_t *s, int pos)
{
    int q = s->next[pos];
    if (q < 0)
        return;
    int id = merge_lookup(t, s->sym[pos], s->sym[q]);
    if (id >= 0)
        heap_push(s, (cand_t){id, pos, s->sym[pos], s->sym[q]});
}

/* Merges one word; the result is the live symbols from position 0 along next. */
static void encode_word(const tokenizer_t *t, enc_scratch_t *s, const unsigned char *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        s->sym[i] = TOK_BYTE0 + w[i];
        s->next[i] = i + 1 < n ? (int)i + 1 : -1;
        s->prev[i] = (int)i - 1;
    }
    if (n < 2 || t->n_merges == 0)
        return;
    s->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, s, (int)i);
    /* Each pop either discards a stale candidate or merges (removing one
     * symbol and pushing at most two): the heap never exceeds 3n. */
    while (s->n_heap > 0) {
        cand_t c = heap_pop(s);
        int p = c.pos, q = s->next[p];
        if (s->sym[p] != c.a || q < 0 || s->sym[q] != c.b)
            continue; /* stale: a neighbour was merged since */
        s->sym[p] = c.rank;
        s->sym[q] = -1;
        s->next[p] = s->next[q];
        if (s->next[q] >= 0)
            s->prev[s->next[q]] = p;
        if (s->prev[p] >= 0)
            push_pair(t, s, s->prev[p]);
        push_pair(t, s, p);
    }
}

int tok_encode(const tokenizer_t *tok, const char *text, size_t len, int *out, int max_out)
{
    if (!tok || (!text && len > 0) || max_out < 0 || len > (size_t)INT32_MAX)
        return -EINVAL;
    const unsigned char *s = (const unsigned char *)text;
    enc_scratch_t sc = {0};
    int count = 0, rc = 0;
    size_t pos = 0;

#define EMIT(id_)                                  \
    do {                                           \
        if (out) {                                 \
            if (count >= max_out) {                \
                rc = -ENOSPC;                      \
                goto done;                         \
            }                                      \
            out[count] = (id_);                    \
        }                                          \
        count++;                                   \
    } while (0)

    while (pos < len) {
        size_t slen;
        int sp = special_at(s, len, pos, &slen);
        if (sp >= 0) {
            EMIT(sp);
            pos += slen;
            continue;
        }
        size_t end = word_end(s, len, pos);
        size_t n = end - pos;
        if (n == 1) {
            EMIT(TOK_BYTE0 + s[pos]);
        } else {
            if (scratch_reserve(&sc, n) != 0) {
                rc = -ENOMEM;
                goto done;
            }
            encode_word(tok, &sc, s + pos, n);
            for (int i = 0; i >= 0; i = sc.next[i])
                EMIT(sc.sym[i]);
        }
        pos = end;
    }
#undef EMIT
done:
    free(sc.sym);
    free(sc.next);
    free(sc.prev);
    free(sc.heap);
    return rc < 0 ? rc : count;
}

long tok_decode(const tokenizer_t *tok, const int *ids, int n, char *out, size_t cap)
{
    if (!tok || n < 0 || (n > 0 && !ids) || !out || cap == 0)
        return -EINVAL;
    size_t pos = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= tok->vocab_size) {
            out[0] = '\0';
            return -EINVAL;
        }
    for (int i = 0; i < n; i++) {
        size_t l = tok->tok_len[ids[i]];
        if (pos + l + 1 > cap) {
            size_t fit = cap - 1 - pos;
            memcpy(out + pos, tok->pool + tok->tok_off[ids[i]], fit);
            out[pos + fit] = '\0';
            return -ENOSPC;
        }
        memcpy(out + pos, tok->pool + tok->tok_off[ids[i]], l);
        pos += l;
    }
    out[pos] = '\0';
    return (long)pos;
}

/* ------------------------------------------------------------- training */

typedef struct {
    uint64_t hash;
    size_t off;    /* in trainer pool */
    uint32_t len;  /* 0 = empty slot */
    int64_t count;
} word_slot_t;

typedef struct {
    word_slot_t *slots;
    size_t mask, used;
    unsigned char *pool;
    size_t pool_len, pool_cap;
} trainer_t;

static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = UINT64_C(1469598103934665603);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= UINT64_C(1099511628211);
    }
    return h;
}

static int trainer_init(trainer_t *tr)
{
    memset(tr, 0, sizeof *tr);
    tr->mask = 4095;
    tr->slots = calloc(tr->mask + 1, sizeof *tr->slots);
    return tr->slots ? 0 : -ENOMEM;
}

static void trainer_free(trainer_t *tr)
{
    free(tr->slots);
    free(tr->pool);
    memset(tr, 0, sizeof *tr);
}

static int trainer_grow(trainer_t *tr)
{
    size_t ncap = (tr->mask + 1) * 2;
    word_slot_t *ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -ENOMEM;
    for (size_t i = 0; i <= tr->mask; i++) {
        if (!tr->slots[i].len)
            continue;
        size_t j = (size_t)tr->slots[i].hash & (ncap - 1);
        while (ns[j].len)
            j = (j + 1) & (ncap - 1);
        ns[j] = tr->slots[i];
    }
    free(tr->slots);
    tr->slots = ns;
    tr->mask = ncap - 1;
    return 0;
}

static int trainer_add_word(trainer_t *tr, const unsigned char *w, size_t n)
{
    if (n > UINT32_MAX)
        return -E2BIG;
    uint64_t h = fnv1a(w, n);
    size_t i = (size_t)h & tr->mask;
    for (; tr->slots[i].len; i = (i + 1) & tr->mask) {
        word_slot_t *sl = &tr->slots[i];
        if (sl->hash == h && sl->len == n && memcmp(tr->pool + sl->off, w, n) == 0) {
            sl->count++;
            return 0;
        }
    }
    if (tr->pool_len + n > tr->pool_cap) {
        size_t nc = tr->pool_cap ? tr->pool_cap : 1 << 16;
        while (nc < tr->pool_len + n)
            nc *= 2;
        unsigned char *np = realloc(tr->pool, nc);
        if (!np)
            return -ENOMEM;
        tr->pool = np;
        tr->pool_cap = nc;
    }
    memcpy(tr->pool + tr->pool_len, w, n);
    tr->slots[i] = (word_slot_t){h, tr->pool_len, (uint32_t)n, 1};
    tr->pool_len += n;
    if (++tr->used * 2 > tr->mask + 1)
        return trainer_grow(tr);
    return 0;
}

static int trainer_add_text(trainer_t *tr, const unsigned char *s, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        size_t slen;
        if (special_at(s, len, pos, &slen) >= 0) {
            pos += slen;
            continue;
        }
        size_t end = word_end(s, len, pos);
        int rc = trainer_add_word(tr, s + pos, end - pos);
        if (rc != 0)
            return rc;
        pos = end;
    }
    return 0;
}

typedef struct {
    int a, b;
    int64_t count;
    int *words; /* (n_words) words that held this pair when it was counted */
    int n_words, cap_words;
    int dirty;
} pair_t;

typedef struct {
    int64_t count;
    int pair;
} pentry_t;

typedef struct {
    pair_t *pairs;
    int n_pairs, cap_pairs;
    int *map;           /* (mask + 1) pair index or -1 */
    size_t mask;
    pentry_t *heap;
    size_t n_heap, cap_heap;
    int *dirty;         /* pairs changed by the current merge */
    int n_dirty, cap_dirty;
} pairs_t;

static int pairs_map_grow(pairs_t *P)
{
    size_t ncap = P->map ? (P->mask + 1) * 2 : 1 << 16;
    int *nm = malloc(ncap * sizeof *nm);
    if (!nm)
        return -ENOMEM;
    for (size_t i = 0; i < ncap; i++)
        nm[i] = -1;
    for (int p = 0; p < P->n_pairs; p++) {
        size_t j = mix64(pair_key(P->pairs[p].a, P->pairs[p].b)) & (ncap - 1);
        while (nm[j] >= 0)
            j = (j + 1) & (ncap - 1);
        nm[j] = p;
    }
    free(P->map);
    P->map = nm;
    P->mask = ncap - 1;
    return 0;
}

/* Index of pair (a, b), created with count 0 when absent; -ENOMEM on failure. */
static int pairs_get(pairs_t *P, int a, int b)
{
    uint64_t key = pair_key(a, b);
    size_t i = mix64(key) & P->mask;
    for (; P->map[i] >= 0; i = (i + 1) & P->mask) {
        const pair_t *q = &P->pairs[P->map[i]];
        if (q->a == a && q->b == b)
            return P->map[i];
    }
    if (P->n_pairs == P->cap_pairs) {
        int nc = P->cap_pairs ? P->cap_pairs * 2 : 1 << 12;
        pair_t *np = realloc(P->pairs, (size_t)nc * sizeof *np);
        if (!np)
            return -ENOMEM;
        P->pairs = np;
        P->cap_pairs = nc;
    }
    int idx = P->n_pairs++;
    P->pairs[idx] = (pair_t){.a = a, .b = b};
    P->map[i] = idx;
    if ((size_t)P->n_pairs * 2 > P->mask + 1 && pairs_map_grow(P) != 0)
        return -ENOMEM;
    return idx;
}

/* Adds delta occurrences of (a, b); word w gets recorded when delta > 0. */
static int pairs_add(pairs_t *P, int a, int b, int64_t delta, int w)
{
    int idx = pairs_get(P, a, b);
    if (idx < 0)
        return idx;
    pair_t *p = &P->pairs[idx];
    p->count += delta;
    if (delta > 0 && (p->n_words == 0 || p->words[p->n_words - 1] != w)) {
        if (p->n_words == p->cap_words) {
            int nc = p->cap_words ? p->cap_words * 2 : 4;
            int *nw = realloc(p->words, (size_t)nc * sizeof *nw);
            if (!nw)
                return -ENOMEM;
            p->words = nw;
            p->cap_words = nc;
        }
        p->words[p->n_words++] = w;
    }
    if (!p->dirty) {
        if (P->n_dirty == P->cap_dirty) {
            int nc = P->cap_dirty ? P->cap_dirty * 2 : 256;
            int *nd = realloc(P->dirty, (size_t)nc * sizeof *nd);
            if (!nd)
                return -ENOMEM;
            P->dirty = nd;
            P->cap_dirty = nc;
        }
        p->dirty = 1;
        P->dirty[P->n_dirty++] = idx;
    }
    return 0;
}

/* Max-heap order: higher count first, then smaller (a, b): the reproducible tie-break. */
static int pentry_before(const pairs_t *P, const pentry_t *x, const pentry_t *y)
{
    if (x->count != y->count)
        return x->count > y->count;
    const pair_t *px = &P->pairs[x->pair], *py = &P->pairs[y->pair];
    if (px->a != py->a)
        return px->a < py->a;
    return px->b < py->b;
}

static int pheap_push(pairs_t *P, pentry_t e)
{
    if (P->n_heap == P->cap_heap) {
        size_t nc = P->cap_heap ? P->cap_heap * 2 : 1 << 12;
        pentry_t *nh = realloc(P->heap, nc * sizeof *nh);
        if (!nh)
            return -ENOMEM;
        P->heap = nh;
        P->cap_heap = nc;
    }
    size_t i = P->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!pentry_before(P, &e, &P->heap[p]))
            break;
        P->heap[i] = P->heap[p];
        i = p;
    }
    P->heap[i] = e;
    return 0;
}

static pentry_t pheap_pop(pairs_t *P)
{
    pentry_t top = P->heap[0], last = P->heap[--P->n_heap];
    size_t i = 0, n = P->n_heap;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const pentry_t *best = &last;
        if (l < n && pentry_before(P, &P->heap[l], best)) {
            m = l;
            best = &P->heap[l];
        }
        if (r < n && pentry_before(P, &P->heap[r], best))
            m = r;
        if (m == i)
            break;
        P->heap[i] = P->heap[m];
        i = m;
    }
    if (n > 0)
        P->heap[i] = last;
    return top;
}

static int flush_dirty(pairs_t *P)
{
    for (int k = 0; k < P->n_dirty; k++) {
        pair_t *p = &P->pairs[P->dirty[k]];
        p->dirty = 0;
        if (p->count > 0 && pheap_push(P, (pentry_t){p->count, P->dirty[k]}) != 0)
            return -ENOMEM;
    }
    P->n_dirty = 0;
    return 0;
}

static tokenizer_t *trainer_finish(trainer_t *tr, int vocab_size, char *err, size_t errlen)
{
    tokenizer_t *tok = NULL;
    int *syms = NULL, *wlen = NULL, *merges = NULL, *stamp = NULL;
    size_t *wstart = NULL;
    int64_t *wfreq = NULL;
    pairs_t P = {0};
    int n_merges = 0, max_merges = vocab_size - TOK_N_BASE;

    size_t nw = tr->used;
    if (nw > INT32_MAX) {
        set_err(err, errlen, "training: too many distinct words (%zu)", nw);
        goto fail;
    }
    syms = malloc((tr->pool_len + 1) * sizeof *syms);
    wstart = malloc((nw + 1) * sizeof *wstart);
    wlen = malloc((nw + 1) * sizeof *wlen);
    wfreq = malloc((nw + 1) * sizeof *wfreq);
    stamp = calloc(nw + 1, sizeof *stamp);
    merges = malloc(((size_t)max_merges + 1) * 2 * sizeof *merges);
    if (!syms || !wstart || !wlen || !wfreq || !stamp || !merges || pairs_map_grow(&P) != 0)
        goto oom;
    size_t off = 0;
    int w = 0;
    for (size_t i = 0; i <= tr->mask; i++) {
        const word_slot_t *sl = &tr->slots[i];
        if (!sl->len)
            continue;
        wstart[w] = off;
        wlen[w] = (int)sl->len;
        wfreq[w] = sl->count;
        for (uint32_t k = 0; k < sl->len; k++)
            syms[off + k] = TOK_BYTE0 + tr->pool[sl->off + k];
        for (uint32_t k = 0; k + 1 < sl->len; k++)
            if (pairs_add(&P, syms[off + k], syms[off + k + 1], sl->count, w) != 0)
                goto oom;
        off += sl->len;
        w++;
    }
    if (flush_dirty(&P) != 0)
        goto oom;

    while (n_merges < max_merges && P.n_heap > 0) {
        pentry_t top = pheap_pop(&P);
        pair_t *best = &P.pairs[top.pair];
        if (best->count != top.count)
            continue; /* stale entry */
        if (top.count < 2)
            break; /* nothing occurs twice: more merges would only memorise */
        int a = best->a, b = best->b, x = TOK_N_BASE + n_merges, pidx = top.pair;
        merges[2 * n_merges] = a;
        merges[2 * n_merges + 1] = b;
        n_merges++;
        /* pairs_add never touches (a, b) itself (x is new), so this list is stable. */
        int *list = best->words, n_list = best->n_words;
        for (int k = 0; k < n_list; k++) {
            int wi = list[k];
            if (stamp[wi] == n_merges)
                continue;
            stamp[wi] = n_merges;
            int *s = syms + wstart[wi];
            int n = wlen[wi], o = 0;
            int64_t f = wfreq[wi];
            for (int i = 0; i < n;) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                    if (o > 0) {
                        if (!(s[o - 1] == a && a == b) && pairs_add(&P, s[o - 1], a, -f, wi) != 0)
                            goto oom;
                        if (pairs_add(&P, s[o - 1], x, f, wi) != 0)
                            goto oom;
                    }
                    if (i + 2 < n) {
                        if (!(b == a && s[i + 2] == b) && pairs_add(&P, b, s[i + 2], -f, wi) != 0)
                            goto oom;
                        if (pairs_add(&P, x, s[i + 2], f, wi) != 0)
                            goto oom;
                    }
                    s[o++] = x;
                    i += 2;
                } else {
                    s[o++] = s[i++];
                }
            }
            wlen[wi] = o;
        }
        best = &P.pairs[pidx]; /* pairs may have moved */
        best->count = 0;
        free(best->words);
        best->words = NULL;
        best->n_words = best->cap_words = 0;
        if (flush_dirty(&P) != 0)
            goto oom;
    }
    tok = tok_build(merges, n_merges, "training", err, errlen);
    goto done;

oom:
    set_err(err, errlen, "training: out of memory");
fail:
done:
    for (int p = 0; p < P.n_pairs; p++)
        free(P.pairs[p].words);
    free(P.pairs);
    free(P.map);
    free(P.heap);
    free(P.dirty);
    free(syms);
    free(wstart);
    free(wlen);
    free(wfreq);
    free(stamp);
    free(merges);
    return tok;
}

static int check_vocab_size(int vocab_size, char *err, size_t errlen)
{
    if (vocab_size < TOK_N_BASE || vocab_size > TOK_MAX_VOCAB) {
        set_err(err, errlen, "vocab_size %d out of range [%d, %d] (7 specials + 256 bytes + merges)",
                vocab_size, TOK_N_BASE, TOK_MAX_VOCAB);
        return -EINVAL;
    }
    return 0;
}

tokenizer_t *tok_train(const char *const *texts, const size_t *lens, int n, int vocab_size,
                       char *err, size_t errlen)
{
    trainer_t tr;
    if (check_vocab_size(vocab_size, err, errlen) != 0)
        return NULL;
    if (n < 0 || (n > 0 && !texts)) {
        set_err(err, errlen, "tok_train: bad arguments");
        return NULL;
    }
    if (trainer_init(&tr) != 0) {
        set_err(err, errlen, "training: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (!texts[i]) {
            set_err(err, errlen, "tok_train: text %d is NULL", i);
            trainer_free(&tr);
            return NULL;
        }
        size_t len = lens ? lens[i] : strlen(texts[i]);
        if (trainer_add_text(&tr, (const unsigned char *)texts[i], len) != 0) {
            set_err(err, errlen, "training: out of memory");
            trainer_free(&tr);
            return NULL;
        }
    }
    tokenizer_t *t = trainer_finish(&tr, vocab_size, err, errlen);
    trainer_free(&tr);
    return t;
}

/* Reads a whole file; caller frees *buf (NUL-terminated for convenience). */
static int read_whole(const char *path, char **buf, size_t *len, char *err, size_t errlen)
{
    *buf = NULL;
    *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        int e = errno;
        set_err(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || (size_t)sb.st_size > TOK_MAX_FILE) {
        set_err(err, errlen, "%s: cannot stat or larger than %zu bytes", path, TOK_MAX_FILE);
        fclose(fp);
        return -EFBIG;
    }
    size_t size = (size_t)sb.st_size;
    char *b = malloc(size + 1);
    if (!b) {
        set_err(err, errlen, "%s: out of memory", path);
        fclose(fp);
        return -ENOMEM;
    }
    size_t got = fread(b, 1, size, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad || got != size) {
        set_err(err, errlen, "%s: read error (%zu of %zu bytes)", path, got, size);
        free(b);
        return -EIO;
    }
    b[size] = '\0';
    *buf = b;
    *len = size;
    return 0;
}

static int add_json_strings(trainer_t *tr, const cJSON *v)
{
    if (cJSON_IsString(v) && v->valuestring)
        return trainer_add_text(tr, (const unsigned char *)v->valuestring, strlen(v->valuestring));
    for (const cJSON *c = (cJSON_IsArray(v) || cJSON_IsObject(v)) ? v->child : NULL; c; c = c->next) {
        if (c->string && (strcmp(c->string, "id") == 0 || strcmp(c->string, "image") == 0))
            continue;
        int rc = add_json_strings(tr, c);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

tokenizer_t *tok_train_files(const char *const *paths, int n, int vocab_size, char *err,
                             size_t errlen)
{
    trainer_t tr;
    char *buf = NULL;
    tokenizer_t *t = NULL;
    if (check_vocab_size(vocab_size, err, errlen) != 0)
        return NULL;
    if (n < 0 || (n > 0 && !paths)) {
        set_err(err, errlen, "tok_train_files: bad arguments");
        return NULL;
    }
    if (trainer_init(&tr) != 0) {
        set_err(err, errlen, "training: out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        size_t len;
        if (read_whole(paths[i], &buf, &len, err, errlen) != 0)
            goto fail;
        if (!ends_with(paths[i], ".jsonl")) {
            if (trainer_add_text(&tr, (const unsigned char *)buf, len) != 0)
                goto oom;
        } else {
            size_t pos = 0;
            int line = 0;
            while (pos < len) {
                line++;
                char *nl = memchr(buf + pos, '\n', len - pos);
                size_t end = nl ? (size_t)(nl - buf) : len;
                int blank = 1;
                for (size_t k = pos; k < end && blank; k++)
                    blank = byte_class((unsigned char)buf[k]) == C_SPACE;
                if (!blank) {
                    cJSON *rec = cJSON_ParseWithLength(buf + pos, end - pos);
                    if (!rec) {
                        set_err(err, errlen, "%s:%d: not valid JSON", paths[i], line);
                        goto fail;
                    }
                    int rc = add_json_strings(&tr, rec);
                    cJSON_Delete(rec);
                    if (rc != 0)
                        goto oom;
                }
                pos = end + 1;
            }
        }
        free(buf);
        buf = NULL;
    }
    t = trainer_finish(&tr, vocab_size, err, errlen);
    goto done;
oom:
    set_err(err, errlen, "training: out of memory");
fail:
done:
    free(buf);
    trainer_free(&tr);
    return t;
}

/* ------------------------------------------------------------ save/load */

int tok_save(const tokenizer_t *tok, const char *path, char *err, size_t errlen)
{
    if (!tok || !path) {
        set_err(err, errlen, "tok_save: bad arguments");
        return -EINVAL;
    }
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        set_err(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int rc = 0;
    FILE *fp = fopen(tmp, "w");
    if (!fp) {
        rc = -errno;
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    /* Written by hand rather than with cJSON_Print: one merge per line keeps
     * the file readable and diffable. No string here needs escaping. */
    fprintf(fp, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n  \"pretokenizer\": \"%s\",\n",
            TOK_FORMAT, TOK_VERSION, TOK_PRETOKENIZER);
    fprintf(fp, "  \"vocab_size\": %d,\n  \"byte_offset\": %d,\n  \"special\": {", tok->vocab_size,
            TOK_BYTE0);
    for (int id = 0; id < TOK_N_SPECIAL; id++)
        fprintf(fp, "%s\"%s\": %d", id ? ", " : "", special_names[id], id);
    fprintf(fp, "},\n  \"merges\": [");
    for (int i = 0; i < tok->n_merges; i++)
        fprintf(fp, "%s\n    [%d, %d]", i ? "," : "", tok->merges[2 * i], tok->merges[2 * i + 1]);
    fprintf(fp, "%s]\n}\n", tok->n_merges ? "\n  " : "");
    if (fflush(fp) != 0 || ferror(fp) || fsync(fileno(fp)) != 0) {
        rc = -(errno ? errno : EIO);
        set_err(err, errlen, "%s: write failed: %s", tmp, strerror(-rc));
        fclose(fp);
        unlink(tmp);
        free(tmp);
        return rc;
    }
    if (fclose(fp) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: close failed: %s", tmp, strerror(errno));
        unlink(tmp);
        free(tmp);
        return rc;
    }
    if (rename(tmp, path) != 0) {
        rc = -errno;
        set_err(err, errlen, "%s: rename failed: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return rc;
}

static int json_int(const cJSON *v, int *out)
{
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= INT32_MIN && v->valuedouble <= INT32_MAX) ||
        v->valuedouble != (double)(int)v->valuedouble)
        return -1;
    *out = (int)v->valuedouble;
    return 0;
}

tokenizer_t *tok_load(const char *path, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    int *merges = NULL;
    tokenizer_t *t = NULL;
    int ival;

    if (!path) {
        set_err(err, errlen, "tok_load: NULL path");
        return NULL;
    }
    if (read_whole(path, &buf, &len, err, errlen) != 0)
        return NULL;
    root = cJSON_ParseWithLength(buf, len);
    if (!root || !cJSON_IsObject(root)) {
        set_err(err, errlen, "%s: not valid JSON (expected a crl-bpe tokenizer object)", path);
        goto fail;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, TOK_FORMAT) != 0) {
        set_err(err, errlen, "%s: key 'format' is %s%.40s%s, expected \"%s\"", path,
                cJSON_IsString(fmt) ? "\"" : "", cJSON_IsString(fmt) ? fmt->valuestring : "missing",
                cJSON_IsString(fmt) ? "\"" : "", TOK_FORMAT);
        goto fail;
    }
    const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
    if (json_int(ver, &ival) != 0) {
        set_err(err, errlen, "%s: key 'version' missing or not an integer", path);
        goto fail;
    }
    if (ival != TOK_VERSION) {
        set_err(err, errlen, "%s: unsupported version %d (this build reads version %d)", path, ival,
                TOK_VERSION);
        goto fail;
    }
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pretokenizer");
    if (!cJSON_IsString(pre) || strcmp(pre->valuestring, TOK_PRETOKENIZER) != 0) {
        set_err(err, errlen, "%s: key 'pretokenizer' missing or not \"%s\"", path, TOK_PRETOKENIZER);
        goto fail;
    }
    const cJSON *bo = cJSON_GetObjectItemCaseSensitive(root, "byte_offset");
    if (json_int(bo, &ival) != 0 || ival != TOK_BYTE0) {
        set_err(err, errlen, "%s: key 'byte_offset' missing or not %d", path, TOK_BYTE0);
        goto fail;
    }
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(root, "special");
    if (!cJSON_IsObject(sp) || cJSON_GetArraySize(sp) != TOK_N_SPECIAL) {
        set_err(err, errlen, "%s: key 'special' must be an object with the %d special tokens", path,
                TOK_N_SPECIAL);
        goto fail;
    }
    for (int id = 0; id < TOK_N_SPECIAL; id++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(sp, special_names[id]);
        if (json_int(v, &ival) != 0 || ival != id) {
            set_err(err, errlen, "%s: special token \"%s\" must have id %d", path, special_names[id], id);
            goto fail;
        }
    }
    const cJSON *ml = cJSON_GetObjectItemCaseSensitive(root, "merges");
    if (!cJSON_IsArray(ml)) {
        set_err(err, errlen, "%s: key 'merges' missing or not an array", path);
        goto fail;
    }
    int n_merges = cJSON_GetArraySize(ml);
    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(root, "vocab_size");
    if (json_int(vs, &ival) != 0) {
        set_err(err, errlen, "%s: key 'vocab_size' missing or not an integer", path);
        goto fail;
    }
    if (ival != TOK_N_BASE + n_merges) {
        set_err(err, errlen, "%s: 'vocab_size' %d does not match %d base ids + %d merges", path, ival,
                TOK_N_BASE, n_merges);
        goto fail;
    }
    merges = malloc(((size_t)n_merges + 1) * 2 * sizeof *merges);
    if (!merges) {
        set_err(err, errlen, "%s: out of memory", path);
        goto fail;
    }
    int i = 0;
    for (const cJSON *m = ml->child; m; m = m->next, i++) {
        if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != 2 || json_int(m->child, &merges[2 * i]) != 0 ||
            json_int(m->child->next, &merges[2 * i + 1]) != 0) {
            set_err(err, errlen, "%s: merges[%d] is not a pair of integer ids", path, i);
            goto fail;
        }
    }
    t = tok_build(merges, n_merges, path, err, errlen);
fail:
    free(merges);
    cJSON_Delete(root);
    free(buf);
    return t;
}
