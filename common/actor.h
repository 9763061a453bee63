/* actor: a rollout actor (DESIGN.md §1-§3) as a library object, so that
 * crl-actor is a thin main and tests can run an actor in a thread. Owns its
 * ZeroMQ sockets (work DEALER to the learner, SUB to the broker's announces,
 * DEALER to the broker's fetch socket), a copy of the weights, the grant
 * queue, the table of completed groups awaiting the learner's Ack, and one
 * compute thread that samples groups (grpo_rollout_group) while the I/O
 * loop keeps heartbeats, acks and weight fetches going.
 *
 * Protocol notes (the learner's side must agree):
 *  - WorkRequest.credits is "grants I can take beyond those I hold or have
 *    already asked for": the actor sends actor.credits minus what it holds
 *    after every Welcome, then 1 per finished grant. A learner that adds
 *    credits up and one that sets them both behave (the learner resets an
 *    actor's credits on every Hello).
 *  - Every Welcome is treated as a (re)connection: the actor re-sends every
 *    unacked group; the learner de-duplicates by (actor_id, group_id).
 *  - Welcome.config_digest: the first Welcome fixes it; a later Welcome with
 *    another digest (or another model config) means another run and stops
 *    the actor with an error naming both. A model config given to
 *    actor_new (the run's --config) must equal the Welcome's.
 *  - A Bye from the learner whose reason starts with "finished" ends the
 *    actor cleanly (the run is over); any other Bye makes it wait and
 *    Hello again until a learner answers.
 *  - The work socket uses ZMQ_IMMEDIATE, so nothing queues up while the
 *    learner is away (no burst of stale Hellos on reconnect); groups stay
 *    in the unacked table and are re-sent after the next Welcome. */
#ifndef CRL_ACTOR_H
#define CRL_ACTOR_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "model.h"

typedef struct actor actor_t;

typedef struct {
    uint64_t groups_generated;   /* groups the compute thread completed */
    uint64_t groups_sent;        /* sends within the session the group was made in */
    uint64_t groups_resent;      /* sends of held groups after a (re-)Welcome */
    uint64_t groups_accepted;    /* acked ACCEPTED */
    uint64_t groups_dropped;     /* acked DROPPED by the learner (any reason) */
    uint64_t groups_unacked;     /* held now */
    uint64_t grants_received;
    uint64_t grants_refused;     /* grants this actor could not sample (logged) */
    uint64_t welcomes;
    uint64_t hellos_sent;
    uint64_t heartbeats_sent;
    uint64_t versions_seen;      /* weights versions loaded */
    uint64_t weights_version;    /* held now (0 = none) */
    uint64_t fetch_failures;     /* fetches that failed a check and were retried */
    uint64_t bad_messages;       /* malformed / invalid / unexpected messages (any socket) */
} actor_stats_t;

/* Creates the actor: id from cfg->actor.id (or "<hostname>-<pid>"),
 * sockets connected to cfg->network.{learner_work, broker_announce,
 * broker_fetch}. expect_model (may be NULL) is the model config this actor
 * was told to run (e.g. from the run's --config): a learner announcing
 * another one is refused. Pinning and OpenBLAS threads are process-wide,
 * so they are the caller's business (crl-actor does both). NULL on error
 * with a message in err. */
actor_t *actor_new(const crl_config_t *cfg, const model_config_t *expect_model, char *err,
                   size_t errlen);

/* Runs the actor until actor_stop (or a fatal error: a learner whose model
 * or digest this actor cannot serve). On stop it finishes (and sends) the
 * group in progress, sends Bye and logs a final counters line. Returns 0
 * after a clean stop, negative errno on failure (message in err). Call
 * once. */
int actor_run(actor_t *a, char *err, size_t errlen);

/* Asks actor_run to stop; a second call abandons the group in progress.
 * Async-signal-safe and thread-safe (an atomic increment). */
void actor_stop(actor_t *a);

/* The actor's id (owned by the actor). */
const char *actor_id(const actor_t *a);

/* A snapshot of the counters (thread-safe). */
void actor_get_stats(actor_t *a, actor_stats_t *out);

/* Joins the compute thread, closes the sockets, frees everything. NULL ok. */
void actor_destroy(actor_t **a);

#endif
