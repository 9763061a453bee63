/* weights_client: fetches one weights version from a broker's fetch socket
 * in chunks, with a window of requests in flight, into a caller buffer, and
 * verifies its crc32c. Used by actors and by relaying brokers.
 *
 * Non-blocking and pollable: the caller owns the DEALER socket (connected
 * to a broker's network.broker_fetch) and its poll loop. Either
 *   - weights_fetch_poll(f, timeout_ms) reads the socket itself (when the
 *     DEALER carries nothing but fetch replies — the usual case), or
 *   - the caller wire_recv()s and hands each message to
 *     weights_fetch_on_message(), and calls weights_fetch_tick() now and
 *     then (it re-sends lost requests and enforces the timeout).
 * weights_fetch_blocking() wraps the first form for callers with nothing
 * else to do.
 *
 * Owns its request table and counters; not the socket, not the buffer. */
#ifndef CRL_WEIGHTS_CLIENT_H
#define CRL_WEIGHTS_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "wire.h"

/* Return values of the step functions (negative = -errno, see below). */
#define WEIGHTS_FETCH_BUSY 0  /* in progress (or idle: nothing begun) */
#define WEIGHTS_FETCH_DONE 1  /* every byte arrived and the crc32c matched */

typedef struct {
    int window;            /* chunk requests in flight (default 4) */
    uint64_t chunk_bytes;  /* bytes asked per request (default 1 MiB). A
                              broker with a smaller broker.chunk_bytes
                              answers shorter chunks; the rest is asked
                              for again, so any value works. */
    int retry_ms;          /* re-send a request unanswered this long: the
                              broker drops chunks for a peer whose queue is
                              full, and a reconnect loses requests (default
                              1000) */
    int timeout_ms;        /* give up (-ETIMEDOUT) after this long without
                              any chunk arriving (default 30000) */
} weights_fetch_opts_t;

/* What happened so far (cumulative over every fetch of this fetcher). */
typedef struct {
    uint64_t bytes_received;  /* payload bytes accepted into buffers */
    uint64_t chunks_received; /* OK chunks accepted */
    uint64_t requests_sent;   /* WeightsFetch messages sent (retries included) */
    uint64_t retries;         /* requests re-sent after retry_ms */
    uint64_t ignored;         /* replies for other versions / ranges no longer
                                 wanted (late duplicates after a retry) and
                                 unexpected messages */
    uint64_t not_yet;         /* UNKNOWN_VERSION replies (broker does not hold
                                 the version yet: retried) */
    uint64_t fetches_done;    /* fetches that ended WEIGHTS_FETCH_DONE */
    uint64_t fetches_failed;  /* fetches that ended with an error */
} weights_fetch_stats_t;

typedef struct weights_fetcher weights_fetcher_t;

void weights_fetch_opts_default(weights_fetch_opts_t *o);

/* dealer: a DEALER socket already connected (or connecting) to a broker's
 * fetch endpoint; the fetcher sends on it and (in weights_fetch_poll)
 * receives from it, never closes it; give it ZMQ_MAXMSGSIZE of at least
 * the broker's chunk size + 64 KiB (wire_socket_setup). addr names the broker in log lines
 * (copied). opts NULL = defaults. lim NULL = wire_limits_default. Returns
 * NULL on bad arguments or out of memory (logged). */
weights_fetcher_t *weights_fetcher_new(void *dealer, const char *addr,
                                       const weights_fetch_opts_t *opts,
                                       const wire_limits_t *lim);
void weights_fetcher_destroy(weights_fetcher_t **f);

/* Starts fetching `version` of total_bytes bytes whose whole-blob crc32c is
 * crc (all three from a WeightsAnnounce) into buf, which must hold
 * total_bytes bytes and stay valid until the fetch ends or another begins
 * (the fetcher writes into it; caller owns it). Abandons any fetch in
 * progress (its late replies are ignored). Sends the first window of
 * requests. 0, or -EINVAL on bad arguments, -ENOMEM. */
int weights_fetch_begin(weights_fetcher_t *f, uint64_t version, uint64_t total_bytes,
                        uint32_t crc, void *buf);

/* Abandons the fetch in progress, if any (late replies are ignored). */
void weights_fetch_cancel(weights_fetcher_t *f);

/* Feeds one message received on the DEALER (env and its raw frame, as
 * wire_recv returned them; the caller still frees/closes both). Returns:
 *   WEIGHTS_FETCH_BUSY  chunk stored (or message ignored), not finished;
 *   WEIGHTS_FETCH_DONE  the blob is complete and its crc32c matched;
 *   -ESTALE     the broker evicted the version (GONE);
 *               weights_fetch_latest_version() says which it holds now;
 *   -EBADMSG    all bytes arrived but the crc32c does not match;
 *   -EPROTO     the broker describes another blob under this version
 *               (total_bytes or crc32c differ from those given to begin)
 *               or answered a chunk of the wrong length;
 *   -ERANGE     BAD_RANGE: the broker's blob is shorter than total_bytes.
 * After DONE or an error the fetch is over (weights_fetch_active() == 0);
 * weights_fetch_error() holds the reason of an error. Calls without an
 * active fetch return BUSY and count the message as ignored. */
int weights_fetch_on_message(weights_fetcher_t *f, const Crl__Envelope *env,
                             const zmq_msg_t *raw);

/* Re-sends requests unanswered for retry_ms, sends new ones while the
 * window has room, and enforces timeout_ms: returns BUSY, or -ETIMEDOUT
 * (after logging "waiting for broker at ADDR since HH:MM:SS" once per
 * stalled retry period along the way). now_ms: weights_now_ms(). */
int weights_fetch_tick(weights_fetcher_t *f, uint64_t now_ms);

/* Receives from the DEALER for up to timeout_ms (0 = only what is queued),
 * feeding every message to weights_fetch_on_message, then ticks. Returns
 * as soon as the fetch ends. Same return values as on_message/tick, plus
 * -ETERM / -EINTR from ZeroMQ. Malformed messages are counted by the
 * fetcher's wire counters (weights_fetch_wire_counters) and dropped. */
int weights_fetch_poll(weights_fetcher_t *f, int timeout_ms);

/* begin + poll until it ends. BLOCKS up to opts.timeout_ms without
 * progress. 0 on success (WEIGHTS_FETCH_DONE), else the negative errno of
 * weights_fetch_on_message / tick. */
int weights_fetch_blocking(weights_fetcher_t *f, uint64_t version, uint64_t total_bytes,
                           uint32_t crc, void *buf);

/* 1 while a fetch is in progress. */
int weights_fetch_active(const weights_fetcher_t *f);
/* Version of the fetch in progress / last begun (0 = none). */
uint64_t weights_fetch_version(const weights_fetcher_t *f);
/* Bytes of the current fetch received so far. */
uint64_t weights_fetch_progress(const weights_fetcher_t *f);
/* Newest version the broker named in a non-OK chunk (GONE et al.); 0 =
 * not known. */
uint64_t weights_fetch_latest_version(const weights_fetcher_t *f);
/* Reason of the last error ("" if none). */
const char *weights_fetch_error(const weights_fetcher_t *f);
void weights_fetch_get_stats(const weights_fetcher_t *f, weights_fetch_stats_t *s);
const wire_counters_t *weights_fetch_wire_counters(const weights_fetcher_t *f);

/* CLOCK_MONOTONIC in milliseconds (the clock weights_fetch_tick expects). */
uint64_t weights_now_ms(void);

#endif
