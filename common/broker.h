/* broker: the weights broker as a library object (DESIGN.md §1, §2, §9).
 * Holds the newest broker.keep_versions weights versions, takes new ones
 * from the learner (publish ROUTER) or, as a relay, from an upstream
 * broker (SUB + DEALER), announces each new version on a PUB socket (and
 * re-announces the latest every 500 ms for late joiners), and serves
 * chunked fetches on a ROUTER without ever blocking on a slow peer.
 * crl-broker (broker/crl_broker.c) is a thin main around it; tests run it
 * in a thread. Owns its ZeroMQ context, sockets and the weights copies. */
#ifndef CRL_BROKER_H
#define CRL_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Re-announce period of the latest version on the PUB socket. */
#define BROKER_REANNOUNCE_MS 500

typedef struct broker broker_t;

typedef enum {
    BROKER_EP_PUBLISH = 0, /* not bound in relay mode */
    BROKER_EP_ANNOUNCE,
    BROKER_EP_FETCH,
} broker_endpoint_t;

/* Cumulative counters (a consistent-enough snapshot: each field is read
 * atomically, the set is not). */
typedef struct {
    uint64_t bytes_served;        /* chunk payload bytes handed to ZeroMQ */
    uint64_t chunks_served;       /* OK chunks sent */
    uint64_t chunks_dropped;      /* replies not sent: peer's queue full or peer gone */
    uint64_t fetch_requests;      /* WeightsFetch received */
    uint64_t replies_gone;        /* GONE replies */
    uint64_t replies_bad_range;   /* BAD_RANGE replies */
    uint64_t replies_unknown;     /* UNKNOWN_VERSION replies */
    uint64_t publishes_ok;        /* publishes stored */
    uint64_t publishes_refused;   /* publishes refused (crc/size/layout/...) */
    uint64_t versions_received;   /* new versions stored (publish or upstream) */
    uint64_t upstream_bytes;      /* relay: chunk bytes fetched from upstream */
    uint64_t upstream_failures;   /* relay: upstream fetches that failed */
    uint64_t announces_sent;      /* WeightsAnnounce sent (re-announces included) */
    uint64_t malformed;           /* messages dropped: undecodable, wrong version,
                                     invalid, oversized, wrong frames, unexpected type */
    uint64_t latest_version;      /* newest version held (0 = none) */
} broker_counters_t;

/* Creates the broker from cfg (copied): binds network.broker_publish
 * (unless cfg->broker.upstream is set: a relay takes no publishes),
 * network.broker_announce and network.broker_fetch, and in relay mode
 * connects a SUB to broker.upstream_announce and a DEALER to
 * broker.upstream. Endpoints may use a wildcard port ("tcp://127.0.0.1:*");
 * broker_get_endpoint tells what was bound. Does not pin (the caller
 * does). NULL on failure with err naming the endpoint and the ZeroMQ error
 * (e.g. "cannot bind network.broker_fetch (tcp://127.0.0.1:5558): Address
 * already in use"). */
broker_t *broker_new(const crl_config_t *cfg, char *err, size_t errlen);

/* Serves until broker_stop() is called (from any thread or a signal
 * handler). Uses the sockets from the calling thread only; call it from
 * one thread at a time. Logs a final counters line. 0, or -errno on a
 * ZeroMQ failure (logged). */
int broker_run(broker_t *b);

/* Asks broker_run to return (within ~100 ms). Async-signal-safe. */
void broker_stop(broker_t *b);
/* Asks the run loop to re-read the allowed client keys (the clients folder);
 * async-signal-safe (an atomic store), for SIGHUP. */
void broker_request_reload(broker_t *b);

/* Closes the sockets, terminates the context and frees everything; *b =
 * NULL. Must not race broker_run (join its thread first). */
void broker_destroy(broker_t **b);

/* The endpoint actually bound (ZMQ_LAST_ENDPOINT at bind time, so a
 * wildcard port shows its number). 0, -ENOENT when that socket is not
 * bound (publish in relay mode), -ENOSPC if len is too small. Thread-safe. */
int broker_get_endpoint(const broker_t *b, broker_endpoint_t which, char *buf, size_t len);

/* Thread-safe snapshot of the counters. */
void broker_get_counters(const broker_t *b, broker_counters_t *c);

/* "bytes_served=... chunks_served=... ..." (one line). Returns buf. */
const char *broker_counters_format(const broker_counters_t *c, char *buf, size_t len);

#endif
