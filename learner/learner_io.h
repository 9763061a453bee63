/* learner_io: the learner's bookkeeping of actors, grants and groups, with
 * no sockets, threads or clocks in it (time is an argument), so every rule
 * can be unit-tested: who holds which grant, de-duplication by (actor id,
 * group id), validation of a group against its grant, re-grants when an
 * actor goes silent or says Bye, the in-flight cap that keeps staleness
 * within rl.max_staleness, the FIFO of accepted groups the compute thread
 * takes its batches from (stale ones dropped at step time), and the
 * accounting that makes every received group end as used or dropped with a
 * counted reason. learner/rl.c drives it from its I/O and compute threads.
 *
 * Owns: the actor table, the grant table, the prompts of grants (shared
 * with re-grants, reference-counted), the de-duplication set, the
 * re-grant FIFO. Single-threaded: the caller serialises access (the I/O
 * thread owns an lio_t; the group queue has its own type for the
 * thread hand-off). */
#ifndef CRL_LEARNER_IO_H
#define CRL_LEARNER_IO_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* DropReason values 0..8 of proto/crl.proto. */
#define LIO_N_REASONS 9

/* A prompt as granted: what the actor is sent (tokens, image) and what
 * the learner keeps to score it (task, expected labels / answers). Shared
 * by a grant and its re-grants (refs). */
typedef struct {
    int refs;
    int kind;              /* reward_task_t: REWARD_TASK_POLICY / REWARD_TASK_CRITIC */
    int pool;              /* which prompt pool it came from (rl_data: 0 critic, 1 policy) */
    uint64_t pool_index;   /* record position in that pool (checkpoint requeue) */
    int order;             /* critic without order balance: PROMPT_ORDER_KEEP / _SWAP */
    char *prompt_id;
    int *tokens[2];        /* (len[k]) main prompt / alt prompt (other answer order); -1 = image slot */
    int len[2];            /* len[1] = 0: no alt prompt */
    int alt_count;         /* the LAST alt_count samples use tokens[1] */
    char *expected[2];     /* verdict label / answer for prompt 0 / 1 (expected[1] NULL without alt) */
    const uint8_t *image;  /* (3, S, S), borrowed from the dataset; NULL = none */
    int image_size;        /* S (0 = none) */
} lio_prompt_t;

/* Copies everything (image stays borrowed); refs = 1. NULL on OOM / bad
 * arguments (len0 < 1, alt_count without alt tokens). */
lio_prompt_t *lio_prompt_new(const char *prompt_id, int kind, const int *tok0, int len0,
                             const int *tok1, int len1, int alt_count, const char *expected0,
                             const char *expected1, const uint8_t *image, int image_size);
void lio_prompt_ref(lio_prompt_t *p);
/* Drops a reference; frees at 0; *p = NULL. */
void lio_prompt_unref(lio_prompt_t **p);

typedef enum {
    LIO_GRANT_OPEN = 1,       /* issued, no group yet */
    LIO_GRANT_RECEIVED,       /* its group was accepted (now the compute thread's) */
    LIO_GRANT_CLOSED,         /* its group was dropped at arrival (the grant is spent) */
    LIO_GRANT_REASSIGNED,     /* actor gone: the prompt went back to the re-grant FIFO */
} lio_grant_state_t;

typedef struct {
    uint64_t grant_id;
    int actor;                /* actor slot */
    lio_grant_state_t state;
    uint64_t issued_ms;
    uint64_t seed;
    uint64_t min_version;
    int regrant;              /* 1: this grant re-issues a prompt of a lost grant */
    lio_prompt_t *prompt;     /* holds a reference (NULL once closed and released) */
} lio_grant_t;

typedef struct {
    int group_size;            /* G */
    int max_staleness;         /* rl.max_staleness */
    int groups_per_step;       /* rl.groups_per_step */
    int max_new_tokens;        /* rl.max_new_tokens */
    int max_seq_len;           /* model.max_seq_len: prompt + response must fit */
    uint64_t heartbeat_timeout_ms;
} lio_params_t;

/* Counters of the I/O side (cumulative over the run). */
typedef struct {
    uint64_t groups_received;          /* TrajectoryGroup messages from known actors */
    uint64_t groups_accepted;          /* handed to the compute thread */
    uint64_t dropped[LIO_N_REASONS];   /* at arrival, by DropReason */
    uint64_t grants_issued;
    uint64_t regrants;                 /* grants re-issued for lost ones */
    uint64_t grants_lost;              /* grants of actors that went silent / said Bye */
    uint64_t actors_expired;           /* heartbeat timeouts */
    uint64_t actors_bye;
    uint64_t hellos;
} lio_counts_t;

typedef struct lio lio_t;

/* first_grant_id: grant ids continue across a resume (ids below it are
 * unknown to this process). NULL on bad params / OOM. */
lio_t *lio_new(const lio_params_t *p, uint64_t first_grant_id);
void lio_destroy(lio_t **l);

/* ---- actors ---- */

/* A Hello: finds the actor by actor_id (or adds it) and binds it to the
 * routing identity `who`. A Hello with another (hostname, pid) than the
 * actor's last one is a new incarnation (a restarted actor whose group-id
 * counter may start over): its de-duplication keys start afresh and the
 * open grants of the old incarnation are re-granted (also when that one
 * was only known from messages before a Hello, pid 0). Credits are reset to 0
 * (the actor asks again after the Welcome); a reconnect of the same
 * process keeps its open grants. Returns the slot (>= 0) or -ENOMEM. */
int lio_hello(lio_t *l, const wire_identity_t *who, const char *actor_id, const char *hostname,
              uint32_t pid, uint64_t now_ms);
/* Slot of the actor bound to routing identity who; -1 if none. */
int lio_find_actor(const lio_t *l, const wire_identity_t *who);
/* Any message from slot: refreshes its liveness (revives a timed-out
 * actor; its lost grants stay lost). */
void lio_touch(lio_t *l, int slot, uint64_t now_ms);
/* WorkRequest: credits are added up (the actor asks for more beyond what
 * it holds and asked for); capped at 1024. */
void lio_add_credits(lio_t *l, int slot, uint32_t credits);
/* Bye: the actor is gone now; its open grants are re-granted. Returns how
 * many grants went back to the re-grant FIFO. */
int lio_bye(lio_t *l, int slot);
/* Actors silent for longer than heartbeat_timeout_ms are gone and their
 * open grants re-granted. Returns the number of actors that timed out
 * now; their slots go to expired[0..max) when expired is not NULL. */
int lio_expire(lio_t *l, uint64_t now_ms, int *expired, int max);
int lio_live_actors(const lio_t *l);
int lio_n_actors(const lio_t *l);
const char *lio_actor_id(const lio_t *l, int slot);
const wire_identity_t *lio_actor_identity(const lio_t *l, int slot);
int lio_actor_alive(const lio_t *l, int slot);
int lio_actor_credits(const lio_t *l, int slot);
int lio_actor_open_grants(const lio_t *l, int slot);
uint64_t lio_actor_last_seen(const lio_t *l, int slot);
/* Weights version an actor reported (Hello / Heartbeat). */
void lio_actor_set_version(lio_t *l, int slot, uint64_t version);
uint64_t lio_actor_version(const lio_t *l, int slot);
/* 1 when every live actor reported at least version v. */
int lio_all_live_at_version(const lio_t *l, uint64_t v);

/* ---- staleness ---- */

/* 1 when a group of version v may still be used at learner version V. */
int lio_usable(uint64_t learner_version, uint64_t group_version, int max_staleness);
/* min_weights_version of a grant issued at published version V:
 * max(1, V - max_staleness + 1), and never above V. */
uint64_t lio_min_version(uint64_t published_version, int max_staleness);
/* Groups in flight (open grants + accepted groups not yet consumed) the
 * learner allows: groups_per_step * max(1, max_staleness). Keeping at most
 * this many in flight means a grant issued at version V is consumed
 * within max_staleness steps, so STALE drops stay rare. */
int lio_inflight_cap(const lio_t *l);
/* Open grants + accepted groups the compute thread has not consumed. */
int lio_inflight(const lio_t *l);
/* The compute thread's cumulative count of groups it took off the queue
 * (used or dropped): lowers lio_inflight. */
void lio_set_consumed(lio_t *l, uint64_t consumed_total);

/* ---- grants ---- */

/* The next actor to grant to: a live actor with credits, round-robin;
 * -1 when none or when the in-flight cap is reached. */
int lio_next_grant_actor(lio_t *l);
/* Oldest prompt waiting to be re-granted (the caller now owns that
 * reference), or NULL. Requeued prompts go out before new data. */
lio_prompt_t *lio_take_requeued(lio_t *l);
/* Puts a prompt at the end of the re-grant FIFO (takes the reference;
 * used on resume for the prompts a checkpoint listed). 0 or -ENOMEM. */
int lio_requeue(lio_t *l, lio_prompt_t *p);
size_t lio_requeued_count(const lio_t *l);
const lio_prompt_t *lio_requeued_at(const lio_t *l, size_t i);
/* Issues a grant of prompt p (takes the reference) to slot: new grant id,
 * one credit used. regrant marks a re-issued prompt (counted). Returns
 * the grant (owned by l, valid until lio_destroy) or NULL (ENOMEM; p is
 * released). */
const lio_grant_t *lio_grant_issue(lio_t *l, int slot, lio_prompt_t *p, uint64_t seed,
                                   uint64_t min_version, int regrant, uint64_t now_ms);
/* The grant of an id, NULL if this process never issued it. */
const lio_grant_t *lio_grant_find(const lio_t *l, uint64_t grant_id);
uint64_t lio_next_grant_id(const lio_t *l);
/* Open grants, oldest first (for a checkpoint's requeue list). Returns
 * how many; fills out[0..max) when out is not NULL. */
size_t lio_open_grants(const lio_t *l, const lio_grant_t **out, size_t max);

/* ---- groups ---- */

/* Decides a TrajectoryGroup that arrived from slot (already through
 * wire_validate_group): 0 (= DROP_REASON_NONE) to accept, else the
 * DropReason: DUPLICATE (key seen), UNKNOWN_GRANT (never issued by this
 * process, or issued to another actor), GRANT_REASSIGNED (the actor lost
 * it), DUPLICATE (grant already answered), WRONG_PROMPT (prompt id,
 * tokens, alt tokens, group size or prompt-index split differ from the
 * grant), MALFORMED (actor id differs from the sender's, version 0 /
 * below the grant's minimum / above max_version, a sample longer than
 * max_new_tokens or the context). Changes nothing; why (may be NULL)
 * gets a line for the log. *grant gets the grant (when found). */
int lio_check_group(const lio_t *l, int slot, const Crl__TrajectoryGroup *g,
                    uint64_t max_version, const lio_grant_t **grant, char *why, size_t whylen);
/* Records the decision (reason 0 = accepted, or the drop reason, e.g.
 * LOG_FAILED when the log append after a 0 from lio_check_group failed):
 * counts it, remembers the (actor, group id) key, moves the grant to
 * RECEIVED (accepted) or CLOSED (dropped for a reason that spends it:
 * MALFORMED / WRONG_PROMPT / LOG_FAILED). 0 or -ENOMEM. */
int lio_commit_group(lio_t *l, int slot, const Crl__TrajectoryGroup *g, int reason);
/* Counts a group that could not even be attributed (unknown sender). */
void lio_count_unattributed(lio_t *l, int reason);

void lio_get_counts(const lio_t *l, lio_counts_t *out);
/* Restores the counters (resume). */
void lio_set_counts(lio_t *l, const lio_counts_t *c);

/* ---- the accepted-group queue (I/O thread -> compute thread) ---- */

/* FIFO of accepted groups in arrival order. Not thread-safe by itself:
 * rl.c guards it with its mutex. Items are opaque to the queue except for
 * the weights version that made them. */
typedef struct {
    void *item;
    uint64_t version;
} lio_qitem_t;

typedef struct lio_queue lio_queue_t;
lio_queue_t *lio_queue_new(void);
void lio_queue_destroy(lio_queue_t **q); /* items are not freed: drain first */
int lio_queue_push(lio_queue_t *q, void *item, uint64_t version); /* 0 / -ENOMEM */
size_t lio_queue_len(const lio_queue_t *q);
/* Item i from the front (no removal), NULL beyond the end. */
void *lio_queue_peek(const lio_queue_t *q, size_t i);
/* Removes and returns the front item; NULL when empty. */
void *lio_queue_pop(lio_queue_t *q, uint64_t *version);
/* Step-time selection at learner version V: removes every queued item that
 * is too stale (V - version > max_staleness) into stale[] (their count in
 * *n_stale); then, when at least `need` items are queued, moves the first
 * `need`, in arrival order, into batch[] and returns need. Returns 0
 * (nothing taken) when fewer are queued, or when max_stale stale items
 * were removed (more may remain: handle those and call again). */
int lio_queue_take_batch(lio_queue_t *q, uint64_t V, int max_staleness, int need, void **batch,
                         void **stale, int max_stale, int *n_stale);

/* Name of a DropReason ("stale", "malformed", ...; "none"). */
const char *lio_reason_name(int reason);

#endif
