/* learner_io: actor / grant / group bookkeeping of the learner (see
 * learner_io.h). Plain arrays and one open-addressing hash set; the
 * numbers involved (actors, grants in flight) are small. */
#include "learner_io.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIO_MAX_CREDITS 1024

/* ------------------------------------------------------------ prompts */

static char *dup_str(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

lio_prompt_t *lio_prompt_new(const char *prompt_id, int kind, const int *tok0, int len0,
                             const int *tok1, int len1, int alt_count, const char *expected0,
                             const char *expected1, const uint8_t *image, int image_size)
{
    if (!tok0 || len0 < 1 || len1 < 0 || (len1 > 0 && !tok1) || (alt_count > 0) != (len1 > 0) ||
        alt_count < 0)
        return NULL;
    lio_prompt_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->refs = 1;
    p->kind = kind;
    p->prompt_id = dup_str(prompt_id ? prompt_id : "");
    p->tokens[0] = malloc((size_t)len0 * sizeof(int));
    p->len[0] = len0;
    if (len1 > 0) {
        p->tokens[1] = malloc((size_t)len1 * sizeof(int));
        p->len[1] = len1;
    }
    p->alt_count = alt_count;
    p->expected[0] = dup_str(expected0 ? expected0 : "");
    p->expected[1] = expected1 ? dup_str(expected1) : NULL;
    p->image = image;
    p->image_size = image ? image_size : 0;
    if (!p->prompt_id || !p->tokens[0] || (len1 > 0 && !p->tokens[1]) || !p->expected[0] ||
        (expected1 && !p->expected[1])) {
        lio_prompt_unref(&p);
        return NULL;
    }
    memcpy(p->tokens[0], tok0, (size_t)len0 * sizeof(int));
    if (len1 > 0)
        memcpy(p->tokens[1], tok1, (size_t)len1 * sizeof(int));
    return p;
}

void lio_prompt_ref(lio_prompt_t *p)
{
    if (p)
        p->refs++;
}

void lio_prompt_unref(lio_prompt_t **pp)
{
    if (!pp || !*pp)
        return;
    lio_prompt_t *p = *pp;
    *pp = NULL;
    if (--p->refs > 0)
        return;
    free(p->prompt_id);
    free(p->tokens[0]);
    free(p->tokens[1]);
    free(p->expected[0]);
    free(p->expected[1]);
    free(p);
}

/* ------------------------------------------------------------ state */

typedef struct {
    char *actor_id;
    char hostname[128];
    uint32_t pid;
    uint32_t epoch;        /* incarnation: bumps on a Hello from another (host, pid) */
    wire_identity_t who;
    int alive;
    uint64_t last_seen_ms;
    int credits;
    int open_grants;
    uint64_t weights_version;
} lio_actor_t;

/* De-duplication key: (actor slot, incarnation, group id). */
typedef struct {
    uint64_t group_id;
    uint32_t slot_plus1;   /* 0 = empty bucket */
    uint32_t epoch;
} lio_key_t;

struct lio {
    lio_params_t p;
    lio_actor_t *actors;
    int n_actors, cap_actors;
    int rr;                          /* round-robin cursor of lio_next_grant_actor */
    /* grants of this process: id = first_id + index */
    uint64_t first_id;
    lio_grant_t *grants;
    size_t n_grants, cap_grants;
    size_t oldest_open;              /* every grant below is not OPEN (scan start) */
    int n_open;
    uint64_t accepted_total, consumed_total;
    /* re-grant FIFO (ring) */
    lio_prompt_t **fifo;
    size_t fifo_head, fifo_len, fifo_cap;
    /* de-duplication set */
    lio_key_t *keys;
    size_t n_keys, cap_keys;         /* cap a power of two */
    lio_counts_t c;
};

lio_t *lio_new(const lio_params_t *p, uint64_t first_grant_id)
{
    if (!p || p->group_size < 1 || p->groups_per_step < 1 || p->max_staleness < 0 ||
        p->max_new_tokens < 1 || p->max_seq_len < 2 || first_grant_id == 0)
        return NULL;
    lio_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->p = *p;
    l->first_id = first_grant_id;
    l->cap_keys = 1024;
    l->keys = calloc(l->cap_keys, sizeof(lio_key_t));
    if (!l->keys) {
        free(l);
        return NULL;
    }
    return l;
}

void lio_destroy(lio_t **lp)
{
    if (!lp || !*lp)
        return;
    lio_t *l = *lp;
    for (int i = 0; i < l->n_actors; i++)
        free(l->actors[i].actor_id);
    free(l->actors);
    for (size_t i = 0; i < l->n_grants; i++)
        lio_prompt_unref(&l->grants[i].prompt);
    free(l->grants);
    for (size_t i = 0; i < l->fifo_len; i++)
        lio_prompt_unref(&l->fifo[(l->fifo_head + i) % l->fifo_cap]);
    free(l->fifo);
    free(l->keys);
    free(l);
    *lp = NULL;
}

/* ------------------------------------------------------------ actors */

static int identity_eq(const wire_identity_t *a, const wire_identity_t *b)
{
    return a->len == b->len && memcmp(a->id, b->id, a->len) == 0;
}

int lio_find_actor(const lio_t *l, const wire_identity_t *who)
{
    if (!who || who->len == 0)
        return -1;
    for (int i = 0; i < l->n_actors; i++)
        if (identity_eq(&l->actors[i].who, who))
            return i;
    return -1;
}

static int lose_grants(lio_t *l, int slot);

int lio_hello(lio_t *l, const wire_identity_t *who, const char *actor_id, const char *hostname,
              uint32_t pid, uint64_t now_ms)
{
    if (!actor_id || !who)
        return -EINVAL;
    int slot = -1;
    for (int i = 0; i < l->n_actors; i++)
        if (strcmp(l->actors[i].actor_id, actor_id) == 0) {
            slot = i;
            break;
        }
    /* another actor may have used this routing identity before: unbind it */
    int other = lio_find_actor(l, who);
    if (other >= 0 && other != slot)
        l->actors[other].who.len = 0;
    if (slot < 0) {
        if (l->n_actors == l->cap_actors) {
            int cap = l->cap_actors ? l->cap_actors * 2 : 8;
            lio_actor_t *a = realloc(l->actors, (size_t)cap * sizeof(*a));
            if (!a)
                return -ENOMEM;
            l->actors = a;
            l->cap_actors = cap;
        }
        lio_actor_t *a = &l->actors[l->n_actors];
        memset(a, 0, sizeof(*a));
        a->actor_id = dup_str(actor_id);
        if (!a->actor_id)
            return -ENOMEM;
        snprintf(a->hostname, sizeof(a->hostname), "%s", hostname ? hostname : "");
        a->pid = pid;
        slot = l->n_actors++;
    } else {
        lio_actor_t *a = &l->actors[slot];
        if (a->pid != pid || strcmp(a->hostname, hostname ? hostname : "") != 0) {
            a->epoch++; /* a restarted actor: its group ids may start over */
            /* The new process never heard of the old one's open grants, and
             * its heartbeats would keep them open (and inside the in-flight
             * cap) forever: re-grant them now. Also when the old entry came
             * from messages before any Hello (pid 0): it may be a killed
             * process; if it is this one, its groups for them are dropped
             * (grant_reassigned), which costs samples, not a hang. */
            lose_grants(l, slot);
            snprintf(a->hostname, sizeof(a->hostname), "%s", hostname ? hostname : "");
            a->pid = pid;
        }
    }
    lio_actor_t *a = &l->actors[slot];
    a->who = *who;
    a->alive = 1;
    a->last_seen_ms = now_ms;
    a->credits = 0;
    l->c.hellos++;
    return slot;
}

void lio_touch(lio_t *l, int slot, uint64_t now_ms)
{
    if (slot < 0 || slot >= l->n_actors)
        return;
    l->actors[slot].last_seen_ms = now_ms;
    if (!l->actors[slot].alive) {
        l->actors[slot].alive = 1;
        l->actors[slot].credits = 0; /* it asks again as it finishes what it holds */
    }
}

void lio_add_credits(lio_t *l, int slot, uint32_t credits)
{
    if (slot < 0 || slot >= l->n_actors)
        return;
    long c = (long)l->actors[slot].credits + (long)credits;
    l->actors[slot].credits = c > LIO_MAX_CREDITS ? LIO_MAX_CREDITS : (int)c;
}

static int fifo_push(lio_t *l, lio_prompt_t *p)
{
    if (l->fifo_len == l->fifo_cap) {
        size_t cap = l->fifo_cap ? l->fifo_cap * 2 : 16;
        lio_prompt_t **f = malloc(cap * sizeof(*f));
        if (!f)
            return -ENOMEM;
        for (size_t i = 0; i < l->fifo_len; i++)
            f[i] = l->fifo[(l->fifo_head + i) % l->fifo_cap];
        free(l->fifo);
        l->fifo = f;
        l->fifo_cap = cap;
        l->fifo_head = 0;
    }
    l->fifo[(l->fifo_head + l->fifo_len) % l->fifo_cap] = p;
    l->fifo_len++;
    return 0;
}

/* The actor in slot is gone: its open grants become REASSIGNED and their
 * prompts go to the re-grant FIFO. */
static int lose_grants(lio_t *l, int slot)
{
    int n = 0;
    for (size_t i = l->oldest_open; i < l->n_grants; i++) {
        lio_grant_t *g = &l->grants[i];
        if (g->state != LIO_GRANT_OPEN || g->actor != slot)
            continue;
        g->state = LIO_GRANT_REASSIGNED;
        l->n_open--;
        l->actors[slot].open_grants--;
        lio_prompt_t *p = g->prompt;
        g->prompt = NULL;
        if (fifo_push(l, p) != 0)
            lio_prompt_unref(&p); /* out of memory: the prompt is skipped, the grant stays lost */
        n++;
    }
    l->c.grants_lost += (uint64_t)n;
    return n;
}

int lio_bye(lio_t *l, int slot)
{
    if (slot < 0 || slot >= l->n_actors)
        return 0;
    l->actors[slot].alive = 0;
    l->actors[slot].credits = 0;
    l->c.actors_bye++;
    return lose_grants(l, slot);
}

int lio_expire(lio_t *l, uint64_t now_ms, int *expired, int max)
{
    int n = 0;
    for (int i = 0; i < l->n_actors; i++) {
        lio_actor_t *a = &l->actors[i];
        if (!a->alive || now_ms < a->last_seen_ms ||
            now_ms - a->last_seen_ms <= l->p.heartbeat_timeout_ms)
            continue;
        a->alive = 0;
        a->credits = 0;
        l->c.actors_expired++;
        lose_grants(l, i);
        if (expired && n < max)
            expired[n] = i;
        n++;
    }
    return n;
}

int lio_live_actors(const lio_t *l)
{
    int n = 0;
    for (int i = 0; i < l->n_actors; i++)
        n += l->actors[i].alive;
    return n;
}

int lio_n_actors(const lio_t *l) { return l->n_actors; }

#define SLOT_OK(l, s) ((s) >= 0 && (s) < (l)->n_actors)
const char *lio_actor_id(const lio_t *l, int s) { return SLOT_OK(l, s) ? l->actors[s].actor_id : ""; }
const wire_identity_t *lio_actor_identity(const lio_t *l, int s)
{
    return SLOT_OK(l, s) ? &l->actors[s].who : NULL;
}
int lio_actor_alive(const lio_t *l, int s) { return SLOT_OK(l, s) ? l->actors[s].alive : 0; }
int lio_actor_credits(const lio_t *l, int s) { return SLOT_OK(l, s) ? l->actors[s].credits : 0; }
int lio_actor_open_grants(const lio_t *l, int s) { return SLOT_OK(l, s) ? l->actors[s].open_grants : 0; }
uint64_t lio_actor_last_seen(const lio_t *l, int s) { return SLOT_OK(l, s) ? l->actors[s].last_seen_ms : 0; }

void lio_actor_set_version(lio_t *l, int s, uint64_t v)
{
    if (SLOT_OK(l, s))
        l->actors[s].weights_version = v;
}
uint64_t lio_actor_version(const lio_t *l, int s) { return SLOT_OK(l, s) ? l->actors[s].weights_version : 0; }

int lio_all_live_at_version(const lio_t *l, uint64_t v)
{
    for (int i = 0; i < l->n_actors; i++)
        if (l->actors[i].alive && l->actors[i].weights_version < v)
            return 0;
    return 1;
}

/* ------------------------------------------------------------ staleness */

int lio_usable(uint64_t V, uint64_t v, int max_staleness)
{
    if (v > V)
        return 1; /* cannot happen (v <= published <= V); never drop it as stale */
    return V - v <= (uint64_t)max_staleness;
}

uint64_t lio_min_version(uint64_t V, int max_staleness)
{
    if (V <= 1)
        return 1;
    uint64_t s = (uint64_t)max_staleness;
    uint64_t m = V > s ? V - s + 1 : 1;
    if (m > V)
        m = V;
    return m < 1 ? 1 : m;
}

int lio_inflight_cap(const lio_t *l)
{
    int s = l->p.max_staleness > 1 ? l->p.max_staleness : 1;
    return l->p.groups_per_step * s;
}

int lio_inflight(const lio_t *l)
{
    uint64_t q = l->accepted_total > l->consumed_total ? l->accepted_total - l->consumed_total : 0;
    return l->n_open + (int)q;
}

void lio_set_consumed(lio_t *l, uint64_t consumed_total) { l->consumed_total = consumed_total; }

/* ------------------------------------------------------------ grants */

int lio_next_grant_actor(lio_t *l)
{
    if (l->n_actors == 0 || lio_inflight(l) >= lio_inflight_cap(l))
        return -1;
    for (int k = 0; k < l->n_actors; k++) {
        int i = (l->rr + k) % l->n_actors;
        if (l->actors[i].alive && l->actors[i].credits > 0 && l->actors[i].who.len > 0) {
            l->rr = (i + 1) % l->n_actors;
            return i;
        }
    }
    return -1;
}

lio_prompt_t *lio_take_requeued(lio_t *l)
{
    if (l->fifo_len == 0)
        return NULL;
    lio_prompt_t *p = l->fifo[l->fifo_head];
    l->fifo_head = (l->fifo_head + 1) % l->fifo_cap;
    l->fifo_len--;
    return p;
}

int lio_requeue(lio_t *l, lio_prompt_t *p)
{
    if (!p)
        return -EINVAL;
    return fifo_push(l, p);
}

size_t lio_requeued_count(const lio_t *l) { return l->fifo_len; }

const lio_prompt_t *lio_requeued_at(const lio_t *l, size_t i)
{
    return i < l->fifo_len ? l->fifo[(l->fifo_head + i) % l->fifo_cap] : NULL;
}

const lio_grant_t *lio_grant_issue(lio_t *l, int slot, lio_prompt_t *p, uint64_t seed,
                                   uint64_t min_version, int regrant, uint64_t now_ms)
{
    if (!SLOT_OK(l, slot) || !p) {
        lio_prompt_unref(&p);
        return NULL;
    }
    if (l->n_grants == l->cap_grants) {
        size_t cap = l->cap_grants ? l->cap_grants * 2 : 64;
        lio_grant_t *g = realloc(l->grants, cap * sizeof(*g));
        if (!g) {
            lio_prompt_unref(&p);
            return NULL;
        }
        l->grants = g;
        l->cap_grants = cap;
    }
    lio_grant_t *g = &l->grants[l->n_grants];
    memset(g, 0, sizeof(*g));
    g->grant_id = l->first_id + l->n_grants;
    g->actor = slot;
    g->state = LIO_GRANT_OPEN;
    g->issued_ms = now_ms;
    g->seed = seed;
    g->min_version = min_version;
    g->regrant = regrant;
    g->prompt = p;
    l->n_grants++;
    l->n_open++;
    l->actors[slot].open_grants++;
    if (l->actors[slot].credits > 0)
        l->actors[slot].credits--;
    l->c.grants_issued++;
    if (regrant)
        l->c.regrants++;
    return g;
}

const lio_grant_t *lio_grant_find(const lio_t *l, uint64_t id)
{
    if (id < l->first_id || id - l->first_id >= l->n_grants)
        return NULL;
    return &l->grants[id - l->first_id];
}

uint64_t lio_next_grant_id(const lio_t *l) { return l->first_id + l->n_grants; }

size_t lio_open_grants(const lio_t *l, const lio_grant_t **out, size_t max)
{
    size_t n = 0;
    for (size_t i = l->oldest_open; i < l->n_grants; i++)
        if (l->grants[i].state == LIO_GRANT_OPEN) {
            if (out && n < max)
                out[n] = &l->grants[i];
            n++;
        }
    return n;
}

static void advance_oldest_open(lio_t *l)
{
    while (l->oldest_open < l->n_grants && l->grants[l->oldest_open].state != LIO_GRANT_OPEN)
        l->oldest_open++;
}

/* ------------------------------------------------------------ dedup set */

static uint64_t key_hash(uint32_t slot, uint32_t epoch, uint64_t gid)
{
    uint64_t h = gid * 0x9E3779B97F4A7C15ull ^ ((uint64_t)slot << 32 | epoch);
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    return h;
}

static int key_find(const lio_t *l, uint32_t slot, uint32_t epoch, uint64_t gid)
{
    size_t mask = l->cap_keys - 1;
    for (size_t i = key_hash(slot, epoch, gid) & mask;; i = (i + 1) & mask) {
        const lio_key_t *k = &l->keys[i];
        if (k->slot_plus1 == 0)
            return 0;
        if (k->slot_plus1 == slot + 1 && k->epoch == epoch && k->group_id == gid)
            return 1;
    }
}

static void key_put(lio_key_t *keys, size_t cap, uint32_t slot, uint32_t epoch, uint64_t gid)
{
    size_t mask = cap - 1;
    size_t i = key_hash(slot, epoch, gid) & mask;
    while (keys[i].slot_plus1 != 0)
        i = (i + 1) & mask;
    keys[i].slot_plus1 = slot + 1;
    keys[i].epoch = epoch;
    keys[i].group_id = gid;
}

static int key_add(lio_t *l, uint32_t slot, uint32_t epoch, uint64_t gid)
{
    if (key_find(l, slot, epoch, gid))
        return 0;
    if ((l->n_keys + 1) * 2 > l->cap_keys) {
        size_t cap = l->cap_keys * 2;
        lio_key_t *k = calloc(cap, sizeof(*k));
        if (!k)
            return -ENOMEM;
        for (size_t i = 0; i < l->cap_keys; i++)
            if (l->keys[i].slot_plus1)
                key_put(k, cap, l->keys[i].slot_plus1 - 1, l->keys[i].epoch, l->keys[i].group_id);
        free(l->keys);
        l->keys = k;
        l->cap_keys = cap;
    }
    key_put(l->keys, l->cap_keys, slot, epoch, gid);
    l->n_keys++;
    return 0;
}

/* ------------------------------------------------------------ groups */

static int why_set(char *why, size_t len, int reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int why_set(char *why, size_t len, int reason, const char *fmt, ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return reason;
}

static int tokens_equal(const int32_t *a, size_t na, const int *b, int nb)
{
    if (na != (size_t)nb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

int lio_check_group(const lio_t *l, int slot, const Crl__TrajectoryGroup *g,
                    uint64_t max_version, const lio_grant_t **grant_out, char *why, size_t whylen)
{
    if (grant_out)
        *grant_out = NULL;
    if (why && whylen)
        why[0] = '\0';
    if (!SLOT_OK(l, slot) || !g)
        return why_set(why, whylen, 2, "no sender");
    const lio_actor_t *a = &l->actors[slot];
    if (!g->actor_id || strcmp(g->actor_id, a->actor_id) != 0)
        return why_set(why, whylen, 2 /* MALFORMED */, "actor_id \"%s\" but sent by actor \"%s\"",
                       g->actor_id ? g->actor_id : "", a->actor_id);
    if (key_find(l, (uint32_t)slot, a->epoch, g->group_id))
        return why_set(why, whylen, 3 /* DUPLICATE */, "group %" PRIu64 " already received",
                       g->group_id);
    const lio_grant_t *gr = lio_grant_find(l, g->grant_id);
    if (grant_out)
        *grant_out = gr;
    if (!gr)
        return why_set(why, whylen, 4 /* UNKNOWN_GRANT */, "grant %" PRIu64 " was never issued by "
                       "this learner process", g->grant_id);
    if (gr->actor != slot)
        return why_set(why, whylen, 4, "grant %" PRIu64 " belongs to actor %s", g->grant_id,
                       l->actors[gr->actor].actor_id);
    if (gr->state == LIO_GRANT_REASSIGNED)
        return why_set(why, whylen, 5 /* GRANT_REASSIGNED */,
                       "grant %" PRIu64 " was re-granted after the actor went silent", g->grant_id);
    if (gr->state != LIO_GRANT_OPEN)
        return why_set(why, whylen, 3, "grant %" PRIu64 " was already answered", g->grant_id);
    const lio_prompt_t *p = gr->prompt;
    if (strcmp(g->prompt_id ? g->prompt_id : "", p->prompt_id) != 0)
        return why_set(why, whylen, 6 /* WRONG_PROMPT */, "prompt_id \"%s\", granted \"%s\"",
                       g->prompt_id ? g->prompt_id : "", p->prompt_id);
    if (g->group_size != (uint32_t)l->p.group_size || g->n_samples != (size_t)l->p.group_size)
        return why_set(why, whylen, 6, "group_size %u with %zu samples, granted %d", g->group_size,
                       g->n_samples, l->p.group_size);
    if (!tokens_equal(g->prompt_tokens, g->n_prompt_tokens, p->tokens[0], p->len[0]))
        return why_set(why, whylen, 6, "prompt_tokens differ from the grant's");
    if (!tokens_equal(g->prompt_tokens_alt, g->n_prompt_tokens_alt, p->tokens[1], p->len[1]))
        return why_set(why, whylen, 6, "prompt_tokens_alt differ from the grant's");
    int n_alt = 0;
    for (size_t s = 0; s < g->n_samples; s++) {
        const Crl__Sample *sm = g->samples[s];
        int want = (int)s >= l->p.group_size - p->alt_count;
        if ((int)sm->prompt_index != want)
            return why_set(why, whylen, 6, "sample %zu has prompt_index %u, expected %d (the last "
                           "%d samples use the alt prompt)", s, sm->prompt_index, want, p->alt_count);
        n_alt += want;
        int plen = p->len[sm->prompt_index ? 1 : 0];
        if (sm->n_tokens > (size_t)l->p.max_new_tokens || (long)plen + (long)sm->n_tokens > l->p.max_seq_len)
            return why_set(why, whylen, 2, "sample %zu has %zu tokens (max_new_tokens %d, prompt %d, "
                           "context %d)", s, sm->n_tokens, l->p.max_new_tokens, plen, l->p.max_seq_len);
        if (sm->n_tokens == 0)
            return why_set(why, whylen, 2, "sample %zu is empty", s);
    }
    (void)n_alt;
    if (g->weights_version == 0 || g->weights_version < gr->min_version ||
        g->weights_version > max_version)
        return why_set(why, whylen, 2, "weights_version %" PRIu64 " outside [%" PRIu64 ", %" PRIu64
                       "] (grant minimum, latest published)", g->weights_version,
                       gr->min_version, max_version);
    return 0;
}

int lio_commit_group(lio_t *l, int slot, const Crl__TrajectoryGroup *g, int reason)
{
    if (!SLOT_OK(l, slot) || !g || reason < 0 || reason >= LIO_N_REASONS)
        return -EINVAL;
    lio_actor_t *a = &l->actors[slot];
    l->c.groups_received++;
    if (reason == 0)
        l->c.groups_accepted++;
    else
        l->c.dropped[reason]++;
    int rc = key_add(l, (uint32_t)slot, a->epoch, g->group_id);
    /* the grant: only when it is this actor's open grant */
    const lio_grant_t *cg = lio_grant_find(l, g->grant_id);
    if (cg && cg->actor == slot && cg->state == LIO_GRANT_OPEN &&
        (reason == 0 || reason == 2 || reason == 6 || reason == 8)) {
        lio_grant_t *gr = &l->grants[g->grant_id - l->first_id];
        gr->state = reason == 0 ? LIO_GRANT_RECEIVED : LIO_GRANT_CLOSED;
        l->n_open--;
        a->open_grants--;
        if (reason == 0)
            l->accepted_total++;
        /* the queue item holds its own reference for as long as it needs the prompt */
        lio_prompt_unref(&gr->prompt);
        advance_oldest_open(l);
    }
    return rc;
}

void lio_count_unattributed(lio_t *l, int reason)
{
    if (reason <= 0 || reason >= LIO_N_REASONS)
        return;
    l->c.groups_received++;
    l->c.dropped[reason]++;
}

void lio_get_counts(const lio_t *l, lio_counts_t *out) { *out = l->c; }
void lio_set_counts(lio_t *l, const lio_counts_t *c) { l->c = *c; }

/* ------------------------------------------------------------ queue */

struct lio_queue {
    lio_qitem_t *a;
    size_t head, len, cap;
};

lio_queue_t *lio_queue_new(void) { return calloc(1, sizeof(lio_queue_t)); }

void lio_queue_destroy(lio_queue_t **q)
{
    if (!q || !*q)
        return;
    free((*q)->a);
    free(*q);
    *q = NULL;
}

int lio_queue_push(lio_queue_t *q, void *item, uint64_t version)
{
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 32;
        lio_qitem_t *a = malloc(cap * sizeof(*a));
        if (!a)
            return -ENOMEM;
        for (size_t i = 0; i < q->len; i++)
            a[i] = q->a[(q->head + i) % q->cap];
        free(q->a);
        q->a = a;
        q->cap = cap;
        q->head = 0;
    }
    q->a[(q->head + q->len) % q->cap] = (lio_qitem_t){item, version};
    q->len++;
    return 0;
}

size_t lio_queue_len(const lio_queue_t *q) { return q->len; }

void *lio_queue_peek(const lio_queue_t *q, size_t i)
{
    return i < q->len ? q->a[(q->head + i) % q->cap].item : NULL;
}

void *lio_queue_pop(lio_queue_t *q, uint64_t *version)
{
    if (q->len == 0)
        return NULL;
    lio_qitem_t it = q->a[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    if (version)
        *version = it.version;
    return it.item;
}

/* Removes element i (keeps the order of the rest). */
static void queue_remove_at(lio_queue_t *q, size_t i)
{
    for (size_t j = i; j + 1 < q->len; j++)
        q->a[(q->head + j) % q->cap] = q->a[(q->head + j + 1) % q->cap];
    q->len--;
}

int lio_queue_take_batch(lio_queue_t *q, uint64_t V, int max_staleness, int need, void **batch,
                         void **stale, int max_stale, int *n_stale)
{
    int ns = 0;
    for (size_t i = 0; i < q->len && ns < max_stale;) {
        lio_qitem_t *it = &q->a[(q->head + i) % q->cap];
        if (!lio_usable(V, it->version, max_staleness)) {
            stale[ns++] = it->item;
            queue_remove_at(q, i);
        } else {
            i++;
        }
    }
    if (n_stale)
        *n_stale = ns;
    if (ns == max_stale)
        return 0; /* stale items may remain: the caller drops these and asks again */
    if (need <= 0 || q->len < (size_t)need)
        return 0;
    for (int k = 0; k < need; k++)
        batch[k] = lio_queue_pop(q, NULL);
    return need;
}

const char *lio_reason_name(int reason)
{
    static const char *const names[LIO_N_REASONS] = {
        "none", "stale", "malformed", "duplicate", "unknown_grant",
        "grant_reassigned", "wrong_prompt", "shutdown", "log_failed"};
    return reason >= 0 && reason < LIO_N_REASONS ? names[reason] : "?";
}
