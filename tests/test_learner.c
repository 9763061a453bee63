/* Unit tests of the learner's bookkeeping (learner/learner_io.c): grants,
 * de-duplication, re-grants, staleness, the accepted-group queue and the
 * accounting — no sockets, time is an argument. Also the wire validation
 * of the order-balanced fields (prompt_tokens_alt / alt_count /
 * prompt_index) that the learner relies on.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learner/learner_io.h"
#include "proto/crl.pb-c.h"
#include "wire.h"

/* ------------------------------------------------------------ helpers */

#define G 4
#define TIMEOUT_MS 1000

static lio_params_t params(void)
{
    lio_params_t p = {.group_size = G, .max_staleness = 2, .groups_per_step = 2,
                      .max_new_tokens = 8, .max_seq_len = 64, .heartbeat_timeout_ms = TIMEOUT_MS};
    return p;
}

static const int PROMPT0[] = {1, 3, -1, -1, 4, 20, 21, 22};
static const int PROMPT1[] = {1, 3, -1, -1, 4, 22, 21, 20};

/* A critic prompt with an alt prompt (alt_count = G/2). */
static lio_prompt_t *critic_prompt(const char *id)
{
    lio_prompt_t *p = lio_prompt_new(id, 1, PROMPT0, 8, PROMPT1, 8, G / 2, "A", "B", NULL, 0);
    cr_assert_not_null(p);
    return p;
}

static wire_identity_t ident(const char *s)
{
    wire_identity_t w;
    wire_identity_set(&w, s);
    return w;
}

/* A group as an actor would send it for grant g (owned by the caller:
 * free with group_free). */
typedef struct {
    Crl__TrajectoryGroup g;
    Crl__Sample s[G];
    Crl__Sample *sp[G];
    int32_t tok[G][3];
    float lp[G][3];
    int32_t p0[8], p1[8];
} test_group_t;

static void group_fill(test_group_t *t, const char *actor, uint64_t group_id, const lio_grant_t *gr,
                       uint64_t version)
{
    memset(t, 0, sizeof(*t));
    crl__trajectory_group__init(&t->g);
    t->g.actor_id = (char *)actor;
    t->g.group_id = group_id;
    t->g.grant_id = gr->grant_id;
    t->g.prompt_id = gr->prompt->prompt_id;
    t->g.weights_version = version;
    for (int i = 0; i < 8; i++) {
        t->p0[i] = PROMPT0[i];
        t->p1[i] = PROMPT1[i];
    }
    t->g.n_prompt_tokens = 8;
    t->g.prompt_tokens = t->p0;
    t->g.n_prompt_tokens_alt = 8;
    t->g.prompt_tokens_alt = t->p1;
    t->g.group_size = G;
    t->g.n_samples = G;
    t->g.samples = t->sp;
    for (int s = 0; s < G; s++) {
        crl__sample__init(&t->s[s]);
        t->sp[s] = &t->s[s];
        for (int k = 0; k < 3; k++) {
            t->tok[s][k] = 30 + k;
            t->lp[s][k] = -1.0f;
        }
        t->s[s].n_tokens = t->s[s].n_logprobs = 3;
        t->s[s].tokens = t->tok[s];
        t->s[s].logprobs = t->lp[s];
        t->s[s].prompt_index = s >= G - G / 2;
    }
}

/* Hello + credits for an actor; returns its slot. */
static int join(lio_t *l, const char *id, uint32_t pid, int credits, uint64_t now)
{
    wire_identity_t w = ident(id);
    int slot = lio_hello(l, &w, id, "host", pid, now);
    cr_assert_geq(slot, 0, "lio_hello(%s) = %d", id, slot);
    lio_add_credits(l, slot, (uint32_t)credits);
    return slot;
}

static const lio_grant_t *grant_to(lio_t *l, int slot, const char *prompt_id, uint64_t now)
{
    const lio_grant_t *g = lio_grant_issue(l, slot, critic_prompt(prompt_id), 1234, 1, 0, now);
    cr_assert_not_null(g);
    return g;
}

/* ------------------------------------------------------------ tests */

Test(learner, grant_then_matching_group_is_accepted)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 100);
    int a = join(l, "a1", 1, 2, 0);
    cr_assert_eq(lio_next_grant_actor(l), a, "actor with credits should be picked");
    const lio_grant_t *g = grant_to(l, a, "rec-1", 5);
    cr_assert_eq(g->grant_id, 100, "first grant id continues from first_grant_id");
    cr_assert_eq(lio_actor_credits(l, a), 1);
    cr_assert_eq(lio_actor_open_grants(l, a), 1);
    test_group_t t;
    group_fill(&t, "a1", 7, g, 1);
    char why[256];
    const lio_grant_t *found = NULL;
    int reason = lio_check_group(l, a, &t.g, 1, &found, why, sizeof(why));
    cr_assert_eq(reason, 0, "expected accept, got %s: %s", lio_reason_name(reason), why);
    cr_assert_eq(found, g);
    cr_assert_eq(lio_commit_group(l, a, &t.g, 0), 0);
    cr_assert_eq(g->state, LIO_GRANT_RECEIVED);
    cr_assert_eq(lio_actor_open_grants(l, a), 0);
    lio_counts_t c;
    lio_get_counts(l, &c);
    cr_assert_eq(c.groups_received, 1);
    cr_assert_eq(c.groups_accepted, 1);
    cr_assert_eq(lio_inflight(l), 1, "accepted but not consumed is still in flight");
    lio_set_consumed(l, 1);
    cr_assert_eq(lio_inflight(l), 0);
    lio_destroy(&l);
    cr_assert_null(l);
}

Test(learner, duplicate_group_is_dropped_and_new_incarnation_starts_afresh)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 4, 0);
    const lio_grant_t *g = grant_to(l, a, "rec-1", 0);
    test_group_t t;
    group_fill(&t, "a1", 7, g, 1);
    cr_assert_eq(lio_check_group(l, a, &t.g, 1, NULL, NULL, 0), 0);
    lio_commit_group(l, a, &t.g, 0);
    /* the same (actor, group id) again: a re-send after a lost Ack */
    int reason = lio_check_group(l, a, &t.g, 1, NULL, NULL, 0);
    cr_assert_eq(reason, CRL__DROP_REASON__DROP_REASON_DUPLICATE, "got %s", lio_reason_name(reason));
    lio_commit_group(l, a, &t.g, reason);
    /* another group id for an already answered grant */
    t.g.group_id = 8;
    reason = lio_check_group(l, a, &t.g, 1, NULL, NULL, 0);
    cr_assert_eq(reason, CRL__DROP_REASON__DROP_REASON_DUPLICATE, "got %s", lio_reason_name(reason));
    /* the actor restarts (other pid): its group ids start over at 7 */
    wire_identity_t w = ident("a1");
    cr_assert_eq(lio_hello(l, &w, "a1", "host", 2, 10), a, "same actor id keeps its slot");
    cr_assert_eq(lio_actor_credits(l, a), 0, "Hello resets credits");
    lio_add_credits(l, a, 1);
    const lio_grant_t *g2 = grant_to(l, a, "rec-2", 10);
    group_fill(&t, "a1", 7, g2, 1);
    reason = lio_check_group(l, a, &t.g, 1, NULL, NULL, 0);
    cr_assert_eq(reason, 0, "a new incarnation's group 7 is not a duplicate (got %s)",
                 lio_reason_name(reason));
    /* ...but the same Hello again (same pid) keeps the keys */
    lio_commit_group(l, a, &t.g, 0);
    cr_assert_eq(lio_hello(l, &w, "a1", "host", 2, 11), a);
    cr_assert_eq(lio_check_group(l, a, &t.g, 1, NULL, NULL, 0), CRL__DROP_REASON__DROP_REASON_DUPLICATE);
    lio_counts_t c;
    lio_get_counts(l, &c);
    cr_assert_eq(c.groups_received, 3);
    cr_assert_eq(c.groups_accepted, 2);
    cr_assert_eq(c.dropped[CRL__DROP_REASON__DROP_REASON_DUPLICATE], 1);
    lio_destroy(&l);
}

Test(learner, dedup_set_survives_growth)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 0, 0);
    Crl__TrajectoryGroup g;
    crl__trajectory_group__init(&g);
    g.actor_id = "a1";
    g.grant_id = 999999; /* unknown: dropped, but the key is remembered */
    for (uint64_t i = 0; i < 5000; i++) {
        g.group_id = i * 7919;
        cr_assert_eq(lio_commit_group(l, a, &g, CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT), 0);
    }
    for (uint64_t i = 0; i < 5000; i++) {
        g.group_id = i * 7919;
        cr_assert_eq(lio_check_group(l, a, &g, 1, NULL, NULL, 0), CRL__DROP_REASON__DROP_REASON_DUPLICATE,
                     "key %llu lost after rehashing", (unsigned long long)g.group_id);
    }
    g.group_id = 1;
    cr_assert_eq(lio_check_group(l, a, &g, 1, NULL, NULL, 0), CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT);
    lio_destroy(&l);
}

Test(learner, group_must_match_its_grant)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 4, 0);
    int b = join(l, "b1", 1, 4, 0);
    const lio_grant_t *g = grant_to(l, a, "rec-1", 0);
    test_group_t t;
    char why[256];
    struct {
        const char *what;
        int want;
    } cases[] = {
        {"prompt token changed", CRL__DROP_REASON__DROP_REASON_WRONG_PROMPT},
        {"alt prompt dropped", CRL__DROP_REASON__DROP_REASON_WRONG_PROMPT},
        {"prompt id changed", CRL__DROP_REASON__DROP_REASON_WRONG_PROMPT},
        {"prompt_index split wrong", CRL__DROP_REASON__DROP_REASON_WRONG_PROMPT},
        {"version above the latest", CRL__DROP_REASON__DROP_REASON_MALFORMED},
        {"version 0", CRL__DROP_REASON__DROP_REASON_MALFORMED},
        {"sample longer than max_new_tokens", CRL__DROP_REASON__DROP_REASON_MALFORMED},
        {"actor id of another actor", CRL__DROP_REASON__DROP_REASON_MALFORMED},
        {"unknown grant id", CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT},
        {"grant id below this process's first", CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT},
    };
    int32_t long_tok[9] = {0};
    float long_lp[9] = {0};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        group_fill(&t, "a1", 10 + k, g, 1);
        switch (k) {
        case 0: t.p0[6] = 99; break;
        case 1: t.g.n_prompt_tokens_alt = 0; break;
        case 2: t.g.prompt_id = "rec-2"; break;
        case 3: t.s[0].prompt_index = 1; break;
        case 4: t.g.weights_version = 3; break;
        case 5: t.g.weights_version = 0; break;
        case 6:
            t.s[1].n_tokens = t.s[1].n_logprobs = 9;
            t.s[1].tokens = long_tok;
            t.s[1].logprobs = long_lp;
            break;
        case 7: t.g.actor_id = "b1"; break;
        case 8: t.g.grant_id = 77; break;
        case 9: t.g.grant_id = 0; break;
        }
        int reason = lio_check_group(l, a, &t.g, 2, NULL, why, sizeof(why));
        cr_assert_eq(reason, cases[k].want, "%s: expected %s, got %s (%s)", cases[k].what,
                     lio_reason_name(cases[k].want), lio_reason_name(reason), why);
    }
    /* a grant of actor a answered by actor b */
    group_fill(&t, "b1", 1, g, 1);
    int reason = lio_check_group(l, b, &t.g, 1, NULL, why, sizeof(why));
    cr_assert_eq(reason, CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT, "got %s", lio_reason_name(reason));
    /* nothing was committed: the grant is still open and answerable */
    cr_assert_eq(g->state, LIO_GRANT_OPEN);
    group_fill(&t, "a1", 50, g, 2);
    cr_assert_eq(lio_check_group(l, a, &t.g, 2, NULL, why, sizeof(why)), 0, "%s", why);
    /* a malformed answer spends the grant */
    lio_commit_group(l, a, &t.g, CRL__DROP_REASON__DROP_REASON_MALFORMED);
    cr_assert_eq(g->state, LIO_GRANT_CLOSED);
    cr_assert_eq(lio_inflight(l), 0);
    lio_destroy(&l);
}

Test(learner, silent_actor_grants_are_regranted)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 2, 0);
    const lio_grant_t *g1 = grant_to(l, a, "rec-1", 0);
    const lio_grant_t *g2 = grant_to(l, a, "rec-2", 0);
    int b = join(l, "b1", 1, 0, 0);
    /* b keeps talking, a goes silent */
    lio_touch(l, b, 900);
    cr_assert_eq(lio_expire(l, TIMEOUT_MS, NULL, 0), 0, "exactly the timeout is not yet silent");
    lio_touch(l, b, 1500);
    int expired[4];
    cr_assert_eq(lio_expire(l, TIMEOUT_MS + 1, expired, 4), 1);
    cr_assert_eq(expired[0], a);
    cr_assert_eq(lio_live_actors(l), 1);
    cr_assert_eq(g1->state, LIO_GRANT_REASSIGNED);
    cr_assert_eq(g2->state, LIO_GRANT_REASSIGNED);
    cr_assert_eq(lio_requeued_count(l), 2);
    cr_assert_eq(lio_inflight(l), 0, "lost grants are no longer in flight");
    /* the prompts go out again first, in order, under new grant ids */
    lio_add_credits(l, b, 2);
    cr_assert_eq(lio_next_grant_actor(l), b, "the timed-out actor gets nothing");
    lio_prompt_t *p1 = lio_take_requeued(l);
    cr_assert_str_eq(p1->prompt_id, "rec-1");
    const lio_grant_t *n1 = lio_grant_issue(l, b, p1, 5, 1, 1, TIMEOUT_MS + 2);
    cr_assert_neq(n1->grant_id, g1->grant_id);
    lio_prompt_t *p2 = lio_take_requeued(l);
    cr_assert_str_eq(p2->prompt_id, "rec-2");
    lio_grant_issue(l, b, p2, 6, 1, 1, TIMEOUT_MS + 2);
    cr_assert_null(lio_take_requeued(l));
    /* a's late group for its old grant */
    test_group_t t;
    group_fill(&t, "a1", 1, n1, 1); /* same prompt; old grant id below */
    t.g.grant_id = g1->grant_id;
    int reason = lio_check_group(l, a, &t.g, 1, NULL, NULL, 0);
    cr_assert_eq(reason, CRL__DROP_REASON__DROP_REASON_GRANT_REASSIGNED, "got %s", lio_reason_name(reason));
    lio_commit_group(l, a, &t.g, reason);
    cr_assert_eq(lio_actor_alive(l, a), 0, "lio_touch revives; commit alone does not");
    /* b's group for the new grant is fine */
    group_fill(&t, "b1", 1, n1, 1);
    cr_assert_eq(lio_check_group(l, b, &t.g, 1, NULL, NULL, 0), 0);
    lio_counts_t c;
    lio_get_counts(l, &c);
    cr_assert_eq(c.actors_expired, 1);
    cr_assert_eq(c.grants_lost, 2);
    cr_assert_eq(c.regrants, 2);
    cr_assert_eq(c.grants_issued, 4);
    lio_destroy(&l);
}

Test(learner, bye_regrants_at_once)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 3, 0);
    grant_to(l, a, "rec-1", 0);
    grant_to(l, a, "rec-2", 0);
    cr_assert_eq(lio_bye(l, a), 2);
    cr_assert_eq(lio_requeued_count(l), 2);
    cr_assert_eq(lio_live_actors(l), 0);
    cr_assert_eq(lio_next_grant_actor(l), -1, "a gone actor's credits are void");
    /* it comes back: Hello again, credits from scratch */
    join(l, "a1", 1, 1, 5);
    cr_assert_eq(lio_next_grant_actor(l), a);
    lio_counts_t c;
    lio_get_counts(l, &c);
    cr_assert_eq(c.actors_bye, 1);
    cr_assert_eq(c.grants_lost, 2);
    lio_destroy(&l);
}

Test(learner, staleness_rules)
{
    /* V - v <= S is usable */
    cr_assert(lio_usable(5, 3, 2));
    cr_assert_not(lio_usable(5, 2, 2));
    cr_assert(lio_usable(5, 5, 0));
    cr_assert_not(lio_usable(5, 4, 0));
    cr_assert(lio_usable(5, 6, 0), "a version from the future is never called stale");
    /* min_weights_version = max(1, V - S + 1), at most V */
    cr_assert_eq(lio_min_version(1, 2), 1);
    cr_assert_eq(lio_min_version(2, 2), 1);
    cr_assert_eq(lio_min_version(10, 2), 9);
    cr_assert_eq(lio_min_version(10, 0), 10, "synchronous: the current version");
    cr_assert_eq(lio_min_version(10, 100), 1);
    /* the in-flight cap: groups_per_step * max(1, S) */
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    cr_assert_eq(lio_inflight_cap(l), 4);
    int a = join(l, "a1", 1, 10, 0);
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(lio_next_grant_actor(l), a, "grant %d should be allowed", i);
        grant_to(l, a, "r", 0);
    }
    cr_assert_eq(lio_next_grant_actor(l), -1, "cap of 4 in flight reached");
    lio_destroy(&l);
    p.max_staleness = 0;
    l = lio_new(&p, 1);
    cr_assert_eq(lio_inflight_cap(l), 2, "S = 0 still lets one step's groups fly");
    lio_destroy(&l);
}

Test(learner, inflight_counts_accepted_until_consumed)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 10, 0);
    test_group_t t;
    for (int i = 0; i < 4; i++) {
        const lio_grant_t *g = grant_to(l, a, "r", 0);
        group_fill(&t, "a1", (uint64_t)i, g, 1);
        cr_assert_eq(lio_check_group(l, a, &t.g, 1, NULL, NULL, 0), 0);
        lio_commit_group(l, a, &t.g, 0);
    }
    cr_assert_eq(lio_inflight(l), 4);
    cr_assert_eq(lio_next_grant_actor(l), -1, "accepted groups still count against the cap");
    lio_set_consumed(l, 2);
    cr_assert_eq(lio_inflight(l), 2);
    cr_assert_eq(lio_next_grant_actor(l), a);
    lio_destroy(&l);
}

Test(learner, queue_takes_batches_in_arrival_order_and_drops_stale)
{
    lio_queue_t *q = lio_queue_new();
    static int items[8];
    /* versions by arrival: 1 1 2 3 3 4 */
    uint64_t ver[] = {1, 1, 2, 3, 3, 4};
    for (int i = 0; i < 6; i++)
        cr_assert_eq(lio_queue_push(q, &items[i], ver[i]), 0);
    void *batch[4], *stale[8];
    int ns = -1;
    /* at V = 3, S = 1: versions 1 are stale (3 - 1 > 1) */
    int got = lio_queue_take_batch(q, 3, 1, 2, batch, stale, 8, &ns);
    cr_assert_eq(ns, 2, "two stale, got %d", ns);
    cr_assert_eq(stale[0], &items[0]);
    cr_assert_eq(stale[1], &items[1]);
    cr_assert_eq(got, 2);
    cr_assert_eq(batch[0], &items[2], "arrival order");
    cr_assert_eq(batch[1], &items[3]);
    cr_assert_eq(lio_queue_len(q), 2);
    /* not enough for a batch of 3: nothing taken */
    got = lio_queue_take_batch(q, 4, 1, 3, batch, stale, 8, &ns);
    cr_assert_eq(got, 0);
    cr_assert_eq(ns, 0);
    cr_assert_eq(lio_queue_len(q), 2);
    /* stale cap reached: the caller is told to come back */
    got = lio_queue_take_batch(q, 10, 1, 1, batch, stale, 1, &ns);
    cr_assert_eq(ns, 1);
    cr_assert_eq(got, 0, "max_stale reached: nothing taken this call");
    got = lio_queue_take_batch(q, 10, 1, 1, batch, stale, 1, &ns);
    cr_assert_eq(ns, 1);
    cr_assert_eq(lio_queue_len(q), 0);
    lio_queue_destroy(&q);
    cr_assert_null(q);
}

/* A whole scenario: every group ends as used or dropped for a counted
 * reason, and the totals balance. */
Test(learner, accounting_balances)
{
    lio_params_t p = params();
    p.groups_per_step = 4;
    lio_t *l = lio_new(&p, 1);
    lio_queue_t *q = lio_queue_new();
    int a = join(l, "a1", 1, 100, 0), b = join(l, "b1", 2, 100, 0);
    uint64_t used = 0, stale_dropped = 0, consumed = 0, V = 1;
    uint64_t gid[2] = {0, 0};
    test_group_t t;
    for (int round = 0; round < 30; round++) {
        uint64_t now = (uint64_t)round * 10;
        int slot;
        while ((slot = lio_next_grant_actor(l)) >= 0) {
            lio_prompt_t *rp = lio_take_requeued(l);
            lio_grant_issue(l, slot, rp ? rp : critic_prompt("r"), 1, lio_min_version(V, 2),
                            rp != NULL, now);
        }
        /* every open grant is answered, some twice (a re-send), some by the wrong actor */
        const lio_grant_t *open[64];
        size_t n = lio_open_grants(l, open, 64);
        for (size_t i = 0; i < n; i++) {
            int s = open[i]->actor;
            const char *id = s == a ? "a1" : "b1";
            /* old versions make some groups stale at step time */
            group_fill(&t, id, gid[s]++, open[i], round % 5 == 0 && V > 3 ? V - 3 : V);
            if (t.g.weights_version < open[i]->min_version)
                t.g.weights_version = open[i]->min_version;
            for (int rep = 0; rep < (i % 3 == 0 ? 2 : 1); rep++) {
                int reason = lio_check_group(l, s, &t.g, V, NULL, NULL, 0);
                lio_commit_group(l, s, &t.g, reason);
                if (reason == 0)
                    lio_queue_push(q, &t, t.g.weights_version);
            }
            if (i % 4 == 1) { /* the wrong actor answers */
                t.g.actor_id = s == a ? "b1" : "a1";
                t.g.group_id = 1000000u + (uint64_t)round * 100u + i; /* fresh for that actor */
                int o = s == a ? b : a;
                int reason = lio_check_group(l, o, &t.g, V, NULL, NULL, 0);
                cr_assert_neq(reason, 0);
                lio_commit_group(l, o, &t.g, reason);
            }
        }
        /* compute: one step whenever a batch is there */
        void *batch[4], *stale[64];
        int ns = 0;
        int got = lio_queue_take_batch(q, V, 2, 4, batch, stale, 64, &ns);
        stale_dropped += (uint64_t)ns;
        consumed += (uint64_t)ns;
        if (got) {
            used += (uint64_t)got;
            consumed += (uint64_t)got;
            V++;
        }
        lio_set_consumed(l, consumed);
    }
    /* shutdown: the rest of the queue is dropped */
    uint64_t shutdown = lio_queue_len(q);
    while (lio_queue_pop(q, NULL))
        ;
    lio_counts_t c;
    lio_get_counts(l, &c);
    uint64_t dropped = stale_dropped + shutdown;
    for (int k = 1; k < LIO_N_REASONS; k++)
        dropped += c.dropped[k];
    cr_assert_gt(used, 20, "the scenario should train (used %llu)", (unsigned long long)used);
    cr_assert_gt(c.dropped[CRL__DROP_REASON__DROP_REASON_DUPLICATE], 0);
    cr_assert_gt(c.dropped[CRL__DROP_REASON__DROP_REASON_MALFORMED] +
                 c.dropped[CRL__DROP_REASON__DROP_REASON_UNKNOWN_GRANT], 0);
    cr_assert_eq(used + dropped, c.groups_received,
                 "used %llu + dropped %llu != received %llu", (unsigned long long)used,
                 (unsigned long long)dropped, (unsigned long long)c.groups_received);
    cr_assert_eq(c.groups_accepted, used + stale_dropped + shutdown);
    lio_queue_destroy(&q);
    lio_destroy(&l);
}

Test(learner, prompt_refcount_shared_by_regrant)
{
    lio_prompt_t *p = critic_prompt("x");
    cr_assert_eq(p->refs, 1);
    lio_prompt_ref(p);
    lio_prompt_t *q = p;
    lio_prompt_unref(&q);
    cr_assert_null(q);
    cr_assert_eq(p->refs, 1);
    cr_assert_eq(p->alt_count, G / 2);
    cr_assert_str_eq(p->expected[1], "B");
    lio_prompt_unref(&p);
    cr_assert_null(lio_prompt_new("y", 0, PROMPT0, 8, NULL, 0, 2, "a", NULL, NULL, 0),
                   "alt_count without alt tokens is refused");
    cr_assert_null(lio_prompt_new("y", 0, PROMPT0, 0, NULL, 0, 0, "a", NULL, NULL, 0),
                   "empty prompt is refused");
}

/* ---- wire validation of the order-balanced fields ---- */

static wire_limits_t limits(void)
{
    wire_limits_t lim;
    wire_limits_default(&lim);
    lim.vocab_size = 100;
    return lim;
}

Test(learner, wire_validates_alt_prompt_of_groups)
{
    lio_params_t p = params();
    lio_t *l = lio_new(&p, 1);
    int a = join(l, "a1", 1, 1, 0);
    const lio_grant_t *g = grant_to(l, a, "r", 0);
    test_group_t t;
    wire_limits_t lim = limits();
    char err[256];
    group_fill(&t, "a1", 1, g, 1);
    cr_assert_eq(wire_validate_group(&t.g, &lim, err, sizeof(err)), 0, "%s", err);
    t.p1[5] = 100; /* outside the vocabulary */
    cr_assert_eq(wire_validate_group(&t.g, &lim, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "prompt_tokens_alt"), "error should name the alt prompt: %s", err);
    group_fill(&t, "a1", 1, g, 1);
    t.s[0].prompt_index = 2;
    cr_assert_eq(wire_validate_group(&t.g, &lim, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "prompt_index"), "%s", err);
    group_fill(&t, "a1", 1, g, 1);
    t.g.n_prompt_tokens_alt = 0; /* prompt_index 1 without an alt prompt */
    cr_assert_eq(wire_validate_group(&t.g, &lim, err, sizeof(err)), -EINVAL);
    cr_assert(strstr(err, "no alt prompt"), "%s", err);
    lio_destroy(&l);
}

Test(learner, wire_validates_alt_prompt_of_grants)
{
    Crl__WorkGrant w;
    crl__work_grant__init(&w);
    int32_t p0[] = {1, 5, 6}, p1[] = {1, 6, 5}, p2[] = {1, -1, 5};
    w.prompt_id = "r";
    w.task_kind = CRL__TASK_KIND__TASK_KIND_CRITIC;
    w.prompt_tokens = p0;
    w.n_prompt_tokens = 3;
    w.prompt_tokens_alt = p1;
    w.n_prompt_tokens_alt = 3;
    w.alt_count = 2;
    w.group_size = 4;
    w.temperature = 1;
    w.top_p = 1;
    w.max_new_tokens = 8;
    Crl__Envelope env;
    wire_envelope_init(&env);
    env.body_case = CRL__ENVELOPE__BODY_WORK_GRANT;
    env.work_grant = &w;
    wire_limits_t lim = limits();
    char err[256];
    cr_assert_eq(wire_validate(&env, &lim, err, sizeof(err)), 0, "%s", err);
    w.alt_count = 5;
    cr_assert_eq(wire_validate(&env, &lim, err, sizeof(err)), -EINVAL, "alt_count > G accepted");
    cr_assert(strstr(err, "alt_count"), "%s", err);
    w.alt_count = 0;
    cr_assert_eq(wire_validate(&env, &lim, err, sizeof(err)), -EINVAL, "alt prompt with alt_count 0 accepted");
    w.alt_count = 2;
    w.prompt_tokens_alt = p2; /* an image slot without an image */
    cr_assert_eq(wire_validate(&env, &lim, err, sizeof(err)), -EINVAL);
    w.n_prompt_tokens_alt = 0;
    cr_assert_eq(wire_validate(&env, &lim, err, sizeof(err)), -EINVAL, "alt_count without alt prompt accepted");
    w.alt_count = 0;
    cr_assert_eq(wire_validate(&env, &lim, err, sizeof(err)), 0, "%s", err);
}
