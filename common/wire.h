/* wire: the crl wire protocol on ZeroMQ (DESIGN.md §2). Encodes and decodes
 * Envelopes (proto/crl.proto), validates every decoded body against size
 * limits, and sends/receives the multipart [routing id?][envelope][raw?]
 * messages. Bad input is counted, logged with the peer's name and dropped;
 * it never crashes the receiver. Owns nothing but its counters. */
#ifndef CRL_WIRE_H
#define CRL_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "proto/crl.pb-c.h"

/* Bumped on any incompatible change of proto/crl.proto. */
#define CRL_PROTOCOL_VERSION 1

/* Log-probs may exceed 0 by this much (float rounding in log-softmax). */
#define WIRE_LOGPROB_EPS 1e-5f
/* Longest actor id / prompt id / free-text string accepted. */
#define WIRE_MAX_ID_LEN 256
#define WIRE_MAX_TEXT_LEN 4096
/* Most group ids a Hello or an Ack may list. */
#define WIRE_MAX_LIST 65536

/* What a decoded body may hold. 0 in a field means "no limit" for the
 * byte caps, never for vocab_size (which must be set). */
typedef struct {
    uint32_t vocab_size;         /* token ids in [0, vocab_size) */
    uint32_t max_prompt_tokens;  /* image slots included */
    uint32_t max_new_tokens;     /* per sample */
    uint32_t max_group_size;     /* G */
    uint32_t image_size;         /* S of (3, S, S) images; 0 = any S */
    uint64_t max_envelope_bytes; /* envelope frame cap; 0 = none */
    uint64_t max_weights_bytes;  /* WeightsPublish/Chunk total_bytes cap; 0 = none */
    uint64_t max_chunk_bytes;    /* WeightsFetch/Chunk length cap; 0 = none */
} wire_limits_t;

/* Generous defaults (vocab 65536, prompts 8192, responses 4096, G 64,
 * envelopes 64 MiB, weights 16 GiB, chunks 64 MiB, any image size). */
void wire_limits_default(wire_limits_t *lim);

/* Per-socket (or per-process) message accounting. Not atomic: one owner. */
typedef struct {
    uint64_t received;    /* multipart messages taken off a socket / decodes tried */
    uint64_t accepted;    /* decoded, valid, handed to the caller */
    uint64_t malformed;   /* wrong frame count, unpack failure, no body, raw frame mismatch */
    uint64_t bad_version; /* protocol_version != CRL_PROTOCOL_VERSION */
    uint64_t invalid;     /* body failed validation against wire_limits_t */
    uint64_t oversized;   /* envelope frame above max_envelope_bytes */
    uint64_t sent;        /* messages sent */
    uint64_t send_failed; /* sends that failed (unroutable, would block, ...) */
} wire_counters_t;

/* One line, e.g. "recv=10 ok=8 malformed=1 bad_version=1 invalid=0
 * oversized=0 sent=9 send_failed=0". Returns buf. */
const char *wire_counters_format(const wire_counters_t *c, char *buf, size_t len);

/* A ZeroMQ routing id (ROUTER side). Binary in general; actors set theirs
 * to their actor id so that logs are readable. */
typedef struct {
    size_t len;        /* 0 = none (DEALER / SUB side) */
    uint8_t id[255];   /* ZeroMQ caps routing ids at 255 bytes */
} wire_identity_t;

/* Sets id from a string (truncated to 255 bytes). */
void wire_identity_set(wire_identity_t *who, const char *text);
/* Printable name: the id as text when it is printable ASCII, else
 * "0x" + hex; "-" when empty. Returns buf. */
const char *wire_identity_format(const wire_identity_t *who, char *buf, size_t len);

/* Name of the envelope's body ("hello", "work_grant", ...; "none"). */
const char *wire_body_name(const Crl__Envelope *env);

/* Initialises env and stamps CRL_PROTOCOL_VERSION. */
void wire_envelope_init(Crl__Envelope *env);

/* Packs env into a new buffer (caller frees) and sets *len. NULL on out of
 * memory. env->protocol_version is packed as is. */
uint8_t *wire_encode(const Crl__Envelope *env, size_t *len);

/* Checks a decoded envelope's body against lim: 0 if valid, else -EINVAL
 * with the reason in err (e.g. "work_grant: prompt token 12 = 70000 is
 * outside [0, 65536)"). Does not look at protocol_version. */
int wire_validate(const Crl__Envelope *env, const wire_limits_t *lim, char *err, size_t errlen);
/* The TrajectoryGroup part of wire_validate (also used on log records). */
int wire_validate_group(const Crl__TrajectoryGroup *g, const wire_limits_t *lim, char *err,
                        size_t errlen);

/* Unpacks and checks one envelope frame. Returns the envelope (free with
 * wire_envelope_free) or NULL with the reason in err and one counter of c
 * incremented (malformed / bad_version / invalid / oversized); c may be
 * NULL. c->received is incremented on every call and c->accepted on
 * success. Refuses: unpack failures, protocol_version !=
 * CRL_PROTOCOL_VERSION (err names both versions), no body, and bodies that
 * fail wire_validate. */
Crl__Envelope *wire_decode(const void *buf, size_t len, const wire_limits_t *lim,
                           wire_counters_t *c, char *err, size_t errlen);
void wire_envelope_free(Crl__Envelope **env);

/* 1 when a message with this body carries a raw frame after the envelope:
 * WeightsPublish always, WeightsChunk when status is OK. */
int wire_body_has_raw(const Crl__Envelope *env);

/* Sets the options every crl socket uses, before bind/connect:
 * ZMQ_MAXMSGSIZE = max_msg_size (per frame; larger inbound messages make
 * libzmq drop the connection, the peer reconnects), ZMQ_LINGER = 200 ms
 * (close never hangs on a dead peer), TCP keepalive on, and for ROUTER
 * sockets ZMQ_ROUTER_MANDATORY (sending to an unknown peer fails with
 * EHOSTUNREACH instead of vanishing silently). 0 or -errno, each failure
 * logged with zmq_strerror. */
int wire_socket_setup(void *sock, int64_t max_msg_size);

/* Sends [to->id if to][envelope][raw if raw_len > 0 or wire_body_has_raw].
 * to must be NULL on DEALER/PUB sockets and set on ROUTER sockets. Refuses
 * (-EINVAL) an envelope whose protocol_version is not CRL_PROTOCOL_VERSION
 * or whose raw-frame presence does not match wire_body_has_raw. Does not
 * block when the peer's queue is full: -EAGAIN. 0 or -errno; c (may be
 * NULL) counts sent / send_failed. */
int wire_send(void *sock, const wire_identity_t *to, const Crl__Envelope *env, const void *raw,
              size_t raw_len, wire_counters_t *c);

/* Waits up to timeout_ms (0 = poll, -1 = forever) for one multipart message
 * and decodes it.
 *   is_router: the first frame is the sender's routing id (stored in from;
 *              from may be NULL). Otherwise from->len is set to 0.
 *   raw:       always initialised by wire_recv (empty when the message has
 *              no raw frame) — the caller zmq_msg_close()s it after every
 *              call. It holds the raw frame without a copy. NULL when this
 *              socket never carries raw frames (one arriving is malformed).
 * Returns 1 with *env set (caller wire_envelope_free()s it), 0 when nothing
 * arrived in time, -EPROTO when a message arrived but was dropped (counted,
 * logged with the peer's name, reason in err; just call again), or another
 * -errno from ZeroMQ (-ETERM, -EINTR, ...). A message with too few or too
 * many frames is read to its end and dropped as malformed, so the next call
 * starts at a message boundary. */
int wire_recv(void *sock, int is_router, int timeout_ms, const wire_limits_t *lim,
              wire_counters_t *c, wire_identity_t *from, Crl__Envelope **env, zmq_msg_t *raw,
              char *err, size_t errlen);

#endif
