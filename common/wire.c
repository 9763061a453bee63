#include "wire.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

void wire_limits_default(wire_limits_t *lim)
{
    memset(lim, 0, sizeof *lim);
    lim->vocab_size = 65536;
    lim->max_prompt_tokens = 8192;
    lim->max_new_tokens = 4096;
    lim->max_group_size = 64;
    lim->image_size = 0;
    lim->max_envelope_bytes = (uint64_t)64 << 20;
    lim->max_weights_bytes = (uint64_t)16 << 30;
    lim->max_chunk_bytes = (uint64_t)64 << 20;
}

const char *wire_counters_format(const wire_counters_t *c, char *buf, size_t len)
{
    snprintf(buf, len,
             "recv=%" PRIu64 " ok=%" PRIu64 " malformed=%" PRIu64 " bad_version=%" PRIu64
             " invalid=%" PRIu64 " oversized=%" PRIu64 " sent=%" PRIu64 " send_failed=%" PRIu64,
             c->received, c->accepted, c->malformed, c->bad_version, c->invalid, c->oversized,
             c->sent, c->send_failed);
    return buf;
}

void wire_identity_set(wire_identity_t *who, const char *text)
{
    size_t n = text ? strlen(text) : 0;
    if (n > sizeof who->id)
        n = sizeof who->id;
    if (n)
        memcpy(who->id, text, n);
    who->len = n;
}

const char *wire_identity_format(const wire_identity_t *who, char *buf, size_t len)
{
    if (len == 0)
        return buf;
    if (!who || who->len == 0) {
        snprintf(buf, len, "-");
        return buf;
    }
    int printable = 1;
    for (size_t i = 0; i < who->len; i++)
        if (who->id[i] < 0x21 || who->id[i] > 0x7e)
            printable = 0;
    if (printable) {
        snprintf(buf, len, "%.*s", (int)who->len, (const char *)who->id);
        return buf;
    }
    /* libzmq's generated ids are 5 binary bytes starting with 0: hex. */
    size_t o = 0;
    buf[0] = '\0';
    if (len >= 3) {
        memcpy(buf, "0x", 3);
        o = 2;
    }
    for (size_t i = 0; i < who->len && o + 3 <= len; i++, o += 2)
        snprintf(buf + o, len - o, "%02x", who->id[i]);
    return buf;
}

const char *wire_body_name(const Crl__Envelope *env)
{
    if (!env)
        return "none";
    switch (env->body_case) {
    case CRL__ENVELOPE__BODY_HELLO: return "hello";
    case CRL__ENVELOPE__BODY_WELCOME: return "welcome";
    case CRL__ENVELOPE__BODY_WORK_REQUEST: return "work_request";
    case CRL__ENVELOPE__BODY_WORK_GRANT: return "work_grant";
    case CRL__ENVELOPE__BODY_TRAJECTORY_GROUP: return "trajectory_group";
    case CRL__ENVELOPE__BODY_ACK: return "ack";
    case CRL__ENVELOPE__BODY_HEARTBEAT: return "heartbeat";
    case CRL__ENVELOPE__BODY_BYE: return "bye";
    case CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH: return "weights_publish";
    case CRL__ENVELOPE__BODY_PUBLISH_ACK: return "publish_ack";
    case CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE: return "weights_announce";
    case CRL__ENVELOPE__BODY_WEIGHTS_FETCH: return "weights_fetch";
    case CRL__ENVELOPE__BODY_WEIGHTS_CHUNK: return "weights_chunk";
    default: return "none";
    }
}

void wire_envelope_init(Crl__Envelope *env)
{
    crl__envelope__init(env);
    env->protocol_version = CRL_PROTOCOL_VERSION;
}

uint8_t *wire_encode(const Crl__Envelope *env, size_t *len)
{
    size_t n = crl__envelope__get_packed_size(env);
    /* malloc(0) may return NULL; an empty envelope still gets a buffer. */
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return NULL;
    size_t w = crl__envelope__pack(env, buf);
    if (w != n) { /* cannot happen with protobuf-c; refuse rather than send junk */
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* ------------------------------------------------------------ validation */

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* Ids end up in log lines, metric names and routing ids: printable ASCII
 * without spaces only, so they can never garble a log. */
static int check_id(const char *what, const char *field, const char *s, int required, char *err,
                    size_t errlen)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0)
        return required ? fail(err, errlen, "%s: %s is empty", what, field) : 0;
    if (n > WIRE_MAX_ID_LEN)
        return fail(err, errlen, "%s: %s is %zu bytes long (max %d)", what, field, n,
                    WIRE_MAX_ID_LEN);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e)
            return fail(err, errlen, "%s: %s has a non-printable byte 0x%02x at %zu", what, field,
                        ch, i);
    }
    return 0;
}

static int check_text(const char *what, const char *field, const char *s, char *err,
                      size_t errlen)
{
    size_t n = s ? strlen(s) : 0;
    if (n > WIRE_MAX_TEXT_LEN)
        return fail(err, errlen, "%s: %s is %zu bytes long (max %d)", what, field, n,
                    WIRE_MAX_TEXT_LEN);
    return 0;
}

/* Prompt tokens: ids in [0, vocab) or -1 (image slot). */
static int check_prompt(const char *what, const int32_t *tok, size_t n, const wire_limits_t *lim,
                        size_t *n_slots, char *err, size_t errlen)
{
    if (n == 0)
        return fail(err, errlen, "%s: empty prompt", what);
    if (n > lim->max_prompt_tokens)
        return fail(err, errlen, "%s: prompt has %zu tokens (max %u)", what, n,
                    lim->max_prompt_tokens);
    size_t slots = 0;
    for (size_t i = 0; i < n; i++) {
        if (tok[i] == -1) {
            slots++;
            continue;
        }
        if (tok[i] < 0 || (uint32_t)tok[i] >= lim->vocab_size)
            return fail(err, errlen, "%s: prompt token %zu = %" PRId32 " is outside [0, %u) and not -1",
                        what, i, tok[i], lim->vocab_size);
    }
    if (n_slots)
        *n_slots = slots;
    return 0;
}

static int validate_grant(const Crl__WorkGrant *g, const wire_limits_t *lim, char *err,
                          size_t errlen)
{
    const char *w = "work_grant";
    size_t slots = 0;
    int rc;
    if ((rc = check_text(w, "prompt_id", g->prompt_id, err, errlen)) < 0)
        return rc;
    if (g->task_kind != CRL__TASK_KIND__TASK_KIND_CRITIC &&
        g->task_kind != CRL__TASK_KIND__TASK_KIND_POLICY)
        return fail(err, errlen, "%s: task_kind %d is not CRITIC or POLICY", w, (int)g->task_kind);
    if ((rc = check_prompt(w, g->prompt_tokens, g->n_prompt_tokens, lim, &slots, err, errlen)) < 0)
        return rc;
    if (g->n_prompt_tokens_alt > 0) {
        /* the same pair in the other order: same rules, same image */
        size_t alt_slots = 0;
        if ((rc = check_prompt("work_grant (prompt_tokens_alt)", g->prompt_tokens_alt,
                               g->n_prompt_tokens_alt, lim, &alt_slots, err, errlen)) < 0)
            return rc;
        if (alt_slots != slots)
            return fail(err, errlen, "%s: prompt_tokens_alt has %zu image slots, prompt_tokens %zu",
                        w, alt_slots, slots);
        if (g->alt_count < 1 || g->alt_count > g->group_size)
            return fail(err, errlen, "%s: alt_count %u outside [1, group_size %u] with an alt prompt",
                        w, g->alt_count, g->group_size);
    } else if (g->alt_count != 0) {
        return fail(err, errlen, "%s: alt_count %u without prompt_tokens_alt", w, g->alt_count);
    }
    if (g->image_size == 0) {
        if (g->image.len != 0)
            return fail(err, errlen, "%s: %zu image bytes but image_size is 0", w, g->image.len);
        if (slots)
            return fail(err, errlen, "%s: prompt has %zu image slots but no image", w, slots);
    } else {
        if (lim->image_size && g->image_size != lim->image_size)
            return fail(err, errlen, "%s: image_size %u, expected %u", w, g->image_size,
                        lim->image_size);
        uint64_t want = 3ull * g->image_size * g->image_size;
        if ((uint64_t)g->image.len != want)
            return fail(err, errlen, "%s: image has %zu bytes, expected 3*%u*%u = %" PRIu64, w,
                        g->image.len, g->image_size, g->image_size, want);
    }
    if (g->group_size < 1 || g->group_size > lim->max_group_size)
        return fail(err, errlen, "%s: group_size %u outside [1, %u]", w, g->group_size,
                    lim->max_group_size);
    if (!isfinite(g->temperature) || g->temperature < 0.0f || g->temperature > 100.0f)
        return fail(err, errlen, "%s: temperature %g outside [0, 100]", w, (double)g->temperature);
    if (!isfinite(g->top_p) || !(g->top_p > 0.0f) || g->top_p > 1.0f)
        return fail(err, errlen, "%s: top_p %g outside (0, 1]", w, (double)g->top_p);
    if (g->max_new_tokens < 1 || g->max_new_tokens > lim->max_new_tokens)
        return fail(err, errlen, "%s: max_new_tokens %u outside [1, %u]", w, g->max_new_tokens,
                    lim->max_new_tokens);
    return 0;
}

int wire_validate_group(const Crl__TrajectoryGroup *g, const wire_limits_t *lim, char *err,
                        size_t errlen)
{
    const char *w = "trajectory_group";
    int rc;
    if ((rc = check_id(w, "actor_id", g->actor_id, 1, err, errlen)) < 0)
        return rc;
    if ((rc = check_text(w, "prompt_id", g->prompt_id, err, errlen)) < 0)
        return rc;
    if ((rc = check_prompt(w, g->prompt_tokens, g->n_prompt_tokens, lim, NULL, err, errlen)) < 0)
        return rc;
    if (g->n_prompt_tokens_alt > 0 &&
        (rc = check_prompt("trajectory_group (prompt_tokens_alt)", g->prompt_tokens_alt,
                           g->n_prompt_tokens_alt, lim, NULL, err, errlen)) < 0)
        return rc;
    if (g->group_size < 1 || g->group_size > lim->max_group_size)
        return fail(err, errlen, "%s: group_size %u outside [1, %u]", w, g->group_size,
                    lim->max_group_size);
    if (g->n_samples != g->group_size)
        return fail(err, errlen, "%s: %zu samples, group_size is %u", w, g->n_samples,
                    g->group_size);
    if (!isfinite(g->generation_seconds) || g->generation_seconds < 0)
        return fail(err, errlen, "%s: generation_seconds %g is not a finite non-negative number",
                    w, g->generation_seconds);
    for (size_t s = 0; s < g->n_samples; s++) {
        const Crl__Sample *sm = g->samples[s];
        if (!sm)
            return fail(err, errlen, "%s: sample %zu missing", w, s);
        if (sm->n_tokens != sm->n_logprobs)
            return fail(err, errlen, "%s: sample %zu has %zu tokens but %zu logprobs", w, s,
                        sm->n_tokens, sm->n_logprobs);
        if (sm->prompt_index > 1 || (sm->prompt_index == 1 && g->n_prompt_tokens_alt == 0))
            return fail(err, errlen, "%s: sample %zu has prompt_index %u (%s)", w, s,
                        sm->prompt_index,
                        g->n_prompt_tokens_alt ? "must be 0 or 1" : "must be 0: no alt prompt");
        if (sm->n_tokens > lim->max_new_tokens)
            return fail(err, errlen, "%s: sample %zu has %zu tokens (max %u)", w, s, sm->n_tokens,
                        lim->max_new_tokens);
        for (size_t i = 0; i < sm->n_tokens; i++) {
            int32_t t = sm->tokens[i];
            if (t < 0 || (uint32_t)t >= lim->vocab_size)
                return fail(err, errlen, "%s: sample %zu token %zu = %" PRId32 " is outside [0, %u)",
                            w, s, i, t, lim->vocab_size);
            float lp = sm->logprobs[i];
            if (!isfinite(lp) || lp > WIRE_LOGPROB_EPS)
                return fail(err, errlen,
                            "%s: sample %zu logprob %zu = %g is not a finite value <= 0", w, s, i,
                            (double)lp);
        }
    }
    return 0;
}

static int validate_ack(const Crl__Ack *a, char *err, size_t errlen)
{
    if (a->n_entries > WIRE_MAX_LIST)
        return fail(err, errlen, "ack: %zu entries (max %d)", a->n_entries, WIRE_MAX_LIST);
    for (size_t i = 0; i < a->n_entries; i++) {
        const Crl__AckEntry *e = a->entries[i];
        if (!e)
            return fail(err, errlen, "ack: entry %zu missing", i);
        if (e->reason < CRL__DROP_REASON__DROP_REASON_NONE ||
            e->reason > CRL__DROP_REASON__DROP_REASON_LOG_FAILED)
            return fail(err, errlen, "ack: entry %zu (group %" PRIu64 ") has unknown reason %d", i,
                        e->group_id, (int)e->reason);
        if (e->status == CRL__ACK_STATUS__ACK_STATUS_ACCEPTED) {
            if (e->reason != CRL__DROP_REASON__DROP_REASON_NONE)
                return fail(err, errlen, "ack: entry %zu (group %" PRIu64 ") accepted with drop reason %d",
                            i, e->group_id, (int)e->reason);
        } else if (e->status == CRL__ACK_STATUS__ACK_STATUS_DROPPED) {
            if (e->reason == CRL__DROP_REASON__DROP_REASON_NONE)
                return fail(err, errlen, "ack: entry %zu (group %" PRIu64 ") dropped without a reason",
                            i, e->group_id);
        } else {
            return fail(err, errlen, "ack: entry %zu (group %" PRIu64 ") has unknown status %d", i,
                        e->group_id, (int)e->status);
        }
    }
    return 0;
}

static int check_blob(const char *w, uint64_t version, uint64_t total, const char *layout,
                      const wire_limits_t *lim, char *err, size_t errlen)
{
    if (version == 0)
        return fail(err, errlen, "%s: version 0 (versions start at 1)", w);
    if (total == 0)
        return fail(err, errlen, "%s: total_bytes is 0", w);
    if (lim->max_weights_bytes && total > lim->max_weights_bytes)
        return fail(err, errlen, "%s: total_bytes %" PRIu64 " above the limit %" PRIu64, w, total,
                    lim->max_weights_bytes);
    return check_text(w, "layout", layout, err, errlen);
}

int wire_validate(const Crl__Envelope *env, const wire_limits_t *lim, char *err, size_t errlen)
{
    int rc;
    switch (env->body_case) {
    case CRL__ENVELOPE__BODY_HELLO: {
        const Crl__Hello *h = env->hello;
        if ((rc = check_id("hello", "actor_id", h->actor_id, 1, err, errlen)) < 0)
            return rc;
        if ((rc = check_text("hello", "hostname", h->hostname, err, errlen)) < 0)
            return rc;
        if (h->n_unacked_group_ids > WIRE_MAX_LIST)
            return fail(err, errlen, "hello: %zu unacked group ids (max %d)",
                        h->n_unacked_group_ids, WIRE_MAX_LIST);
        return 0;
    }
    case CRL__ENVELOPE__BODY_WELCOME: {
        const Crl__Welcome *w = env->welcome;
        if ((rc = check_id("welcome", "run_id", w->run_id, 0, err, errlen)) < 0)
            return rc;
        if ((rc = check_text("welcome", "config_digest", w->config_digest, err, errlen)) < 0)
            return rc;
        if (w->heartbeat_ms == 0 || w->heartbeat_timeout_ms <= w->heartbeat_ms)
            return fail(err, errlen, "welcome: heartbeat_ms %u / heartbeat_timeout_ms %u (need 0 < interval < timeout)",
                        w->heartbeat_ms, w->heartbeat_timeout_ms);
        return 0;
    }
    case CRL__ENVELOPE__BODY_WORK_REQUEST:
        if (env->work_request->credits > WIRE_MAX_LIST)
            return fail(err, errlen, "work_request: %u credits (max %d)",
                        env->work_request->credits, WIRE_MAX_LIST);
        return 0;
    case CRL__ENVELOPE__BODY_WORK_GRANT:
        return validate_grant(env->work_grant, lim, err, errlen);
    case CRL__ENVELOPE__BODY_TRAJECTORY_GROUP:
        return wire_validate_group(env->trajectory_group, lim, err, errlen);
    case CRL__ENVELOPE__BODY_ACK:
        return validate_ack(env->ack, err, errlen);
    case CRL__ENVELOPE__BODY_HEARTBEAT:
        if (env->heartbeat->state < CRL__ACTOR_STATE__ACTOR_STATE_UNSPECIFIED ||
            env->heartbeat->state > CRL__ACTOR_STATE__ACTOR_STATE_DRAINING)
            return fail(err, errlen, "heartbeat: unknown actor state %d", (int)env->heartbeat->state);
        return 0;
    case CRL__ENVELOPE__BODY_BYE:
        return check_text("bye", "reason", env->bye->reason, err, errlen);
    case CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH: {
        const Crl__WeightsPublish *p = env->weights_publish;
        return check_blob("weights_publish", p->version, p->total_bytes, p->layout, lim, err,
                          errlen);
    }
    case CRL__ENVELOPE__BODY_PUBLISH_ACK:
        return check_text("publish_ack", "error", env->publish_ack->error, err, errlen);
    case CRL__ENVELOPE__BODY_WEIGHTS_ANNOUNCE: {
        const Crl__WeightsAnnounce *a = env->weights_announce;
        return check_blob("weights_announce", a->version, a->total_bytes, a->layout, lim, err,
                          errlen);
    }
    case CRL__ENVELOPE__BODY_WEIGHTS_FETCH: {
        const Crl__WeightsFetch *f = env->weights_fetch;
        if (f->version == 0)
            return fail(err, errlen, "weights_fetch: version 0 (versions start at 1)");
        if (f->length == 0 || (lim->max_chunk_bytes && f->length > lim->max_chunk_bytes))
            return fail(err, errlen, "weights_fetch: length %" PRIu64 " outside [1, %" PRIu64 "]",
                        f->length, lim->max_chunk_bytes);
        if (f->offset > UINT64_MAX - f->length)
            return fail(err, errlen, "weights_fetch: offset %" PRIu64 " + length overflows",
                        f->offset);
        return 0;
    }
    case CRL__ENVELOPE__BODY_WEIGHTS_CHUNK: {
        const Crl__WeightsChunk *k = env->weights_chunk;
        switch (k->status) {
        case CRL__CHUNK_STATUS__CHUNK_STATUS_GONE:
        case CRL__CHUNK_STATUS__CHUNK_STATUS_BAD_RANGE:
        case CRL__CHUNK_STATUS__CHUNK_STATUS_UNKNOWN_VERSION:
            return 0;
        case CRL__CHUNK_STATUS__CHUNK_STATUS_OK:
            break;
        default:
            return fail(err, errlen, "weights_chunk: unknown status %d", (int)k->status);
        }
        if ((rc = check_blob("weights_chunk", k->version, k->total_bytes, "", lim, err, errlen)) < 0)
            return rc;
        if (k->length == 0 || (lim->max_chunk_bytes && k->length > lim->max_chunk_bytes))
            return fail(err, errlen, "weights_chunk: length %" PRIu64 " outside [1, %" PRIu64 "]",
                        k->length, lim->max_chunk_bytes);
        if (k->offset > k->total_bytes || k->length > k->total_bytes - k->offset)
            return fail(err, errlen,
                        "weights_chunk: range [%" PRIu64 ", +%" PRIu64 ") outside the %" PRIu64 "-byte blob",
                        k->offset, k->length, k->total_bytes);
        return 0;
    }
    default:
        return fail(err, errlen, "envelope has no body");
    }
}

/* ---------------------------------------------------------------- decode */

/* 1 when m or a message inside it holds an unknown field numbered 0.
 * protobuf-c refuses tag 0 written in one byte but keeps it as an unknown
 * field when written in several (0x82 0x00); packed again it becomes the
 * one-byte form, which nothing can unpack. A group logged as received
 * (GroupReceived) would then make the trajectory log unreadable, so such
 * an envelope is malformed: field 0 is invalid protobuf anyway. */
static int has_field_zero(const ProtobufCMessage *m, int depth)
{
    if (!m || depth > 16) /* crl messages nest 3 deep */
        return m != NULL;
    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return 1;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        const char *base = (const char *)m;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++)
                if (has_field_zero(arr[k], depth + 1))
                    return 1;
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue; /* another member of the oneof owns the storage */
        if (has_field_zero(*(ProtobufCMessage *const *)(base + f->offset), depth + 1))
            return 1;
    }
    return 0;
}

Crl__Envelope *wire_decode(const void *buf, size_t len, const wire_limits_t *lim,
                           wire_counters_t *c, char *err, size_t errlen)
{
    if (c)
        c->received++;
    if (lim->max_envelope_bytes && len > lim->max_envelope_bytes) {
        if (c)
            c->oversized++;
        fail(err, errlen, "envelope of %zu bytes above the limit %" PRIu64, len,
             lim->max_envelope_bytes);
        return NULL;
    }
    Crl__Envelope *env = crl__envelope__unpack(NULL, len, buf);
    if (!env) {
        if (c)
            c->malformed++;
        fail(err, errlen, "envelope of %zu bytes is not a valid protobuf Envelope", len);
        return NULL;
    }
    if (has_field_zero(&env->base, 0)) {
        if (c)
            c->malformed++;
        fail(err, errlen, "envelope of %zu bytes holds a field numbered 0 (invalid protobuf)", len);
        goto fail;
    }
    if (env->protocol_version != CRL_PROTOCOL_VERSION) {
        if (c)
            c->bad_version++;
        fail(err, errlen, "protocol version %u, this build speaks %d (upgrade the older side)",
             env->protocol_version, CRL_PROTOCOL_VERSION);
        goto fail;
    }
    if (env->body_case == CRL__ENVELOPE__BODY__NOT_SET) {
        if (c)
            c->malformed++;
        fail(err, errlen, "envelope has no body (unknown message type from a newer peer?)");
        goto fail;
    }
    if (wire_validate(env, lim, err, errlen) < 0) {
        if (c)
            c->invalid++;
        goto fail;
    }
    if (c)
        c->accepted++;
    return env;
fail:
    crl__envelope__free_unpacked(env, NULL);
    return NULL;
}

void wire_envelope_free(Crl__Envelope **env)
{
    if (!env || !*env)
        return;
    crl__envelope__free_unpacked(*env, NULL);
    *env = NULL;
}

int wire_body_has_raw(const Crl__Envelope *env)
{
    if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH)
        return 1;
    if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_CHUNK &&
        env->weights_chunk->status == CRL__CHUNK_STATUS__CHUNK_STATUS_OK)
        return 1;
    return 0;
}

/* Length the raw frame of env must have (only when wire_body_has_raw). */
static uint64_t raw_expected_len(const Crl__Envelope *env)
{
    if (env->body_case == CRL__ENVELOPE__BODY_WEIGHTS_PUBLISH)
        return env->weights_publish->total_bytes;
    return env->weights_chunk->length;
}

/* ---------------------------------------------------------------- sockets */

static int set_opt(void *sock, int opt, const char *name, const void *val, size_t len)
{
    if (zmq_setsockopt(sock, opt, val, len) != 0) {
        int e = errno;
        log_error("wire: zmq_setsockopt(%s): %s", name, zmq_strerror(e));
        return -e;
    }
    return 0;
}

int wire_socket_setup(void *sock, int64_t max_msg_size)
{
    if (!sock || max_msg_size <= 0)
        return -EINVAL;
    int type = 0;
    size_t tlen = sizeof type;
    if (zmq_getsockopt(sock, ZMQ_TYPE, &type, &tlen) != 0) {
        int e = errno;
        log_error("wire: zmq_getsockopt(ZMQ_TYPE): %s", zmq_strerror(e));
        return -e;
    }
    int linger = 200, one = 1, rc;
    if ((rc = set_opt(sock, ZMQ_MAXMSGSIZE, "ZMQ_MAXMSGSIZE", &max_msg_size, sizeof max_msg_size)) < 0)
        return rc;
    if ((rc = set_opt(sock, ZMQ_LINGER, "ZMQ_LINGER", &linger, sizeof linger)) < 0)
        return rc;
    if ((rc = set_opt(sock, ZMQ_TCP_KEEPALIVE, "ZMQ_TCP_KEEPALIVE", &one, sizeof one)) < 0)
        return rc;
    if (type == ZMQ_ROUTER) {
        /* Unknown peers fail loudly instead of silently eating messages. */
        if ((rc = set_opt(sock, ZMQ_ROUTER_MANDATORY, "ZMQ_ROUTER_MANDATORY", &one, sizeof one)) < 0)
            return rc;
        /* An actor that reconnects under the same routing id (its actor
         * id) takes over from its dead connection instead of being
         * refused. */
        if ((rc = set_opt(sock, ZMQ_ROUTER_HANDOVER, "ZMQ_ROUTER_HANDOVER", &one, sizeof one)) < 0)
            return rc;
    }
    return 0;
}

/* Name of the peer for log lines: the routing id on a ROUTER, else the
 * endpoint this socket connected/bound to last. */
static const char *peer_name(void *sock, const wire_identity_t *from, char *buf, size_t len)
{
    if (from && from->len)
        return wire_identity_format(from, buf, len);
    size_t n = len;
    if (len && zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, buf, &n) == 0 && n > 0) {
        buf[len - 1] = '\0';
        return buf;
    }
    snprintf(buf, len, "?");
    return buf;
}

/* Log the first 10 drops of a kind, then only every power of two, so a
 * peer flooding garbage cannot flood the log. */
static int should_log(uint64_t count)
{
    return count <= 10 || (count & (count - 1)) == 0;
}

int wire_send(void *sock, const wire_identity_t *to, const Crl__Envelope *env, const void *raw,
              size_t raw_len, wire_counters_t *c)
{
    char who[600];
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = -EINVAL;
    int want_raw = 0;

    if (!sock || !env)
        goto fail;
    if (env->protocol_version != CRL_PROTOCOL_VERSION) {
        log_error("wire: refusing to send %s with protocol version %u (expected %d; use wire_envelope_init)",
                  wire_body_name(env), env->protocol_version, CRL_PROTOCOL_VERSION);
        goto fail;
    }
    want_raw = wire_body_has_raw(env);
    if (!want_raw && raw_len) {
        log_error("wire: %s takes no raw frame (%zu bytes given)", wire_body_name(env), raw_len);
        goto fail;
    }
    if (want_raw && ((raw_len && !raw) || raw_len != raw_expected_len(env))) {
        log_error("wire: %s needs a raw frame of %" PRIu64 " bytes, got %zu", wire_body_name(env),
                  raw_expected_len(env), raw_len);
        goto fail;
    }
    buf = wire_encode(env, &len);
    if (!buf) {
        rc = -ENOMEM;
        goto fail;
    }
    if (to && to->len) {
        if (zmq_send(sock, to->id, to->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            goto zmq_fail;
    }
    if (zmq_send(sock, buf, len, (want_raw ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
        goto zmq_fail;
    /* Later parts of a multipart message cannot fail on a full queue: the
     * first part reserved the pipe. */
    if (want_raw && zmq_send(sock, raw_len ? raw : "", raw_len, ZMQ_DONTWAIT) < 0)
        goto zmq_fail;
    free(buf);
    if (c)
        c->sent++;
    return 0;

zmq_fail:
    rc = -errno;
    if (!c || should_log(c->send_failed + 1))
        log_warn("wire: sending %s to %s failed: %s", wire_body_name(env),
                 peer_name(sock, to, who, sizeof who), zmq_strerror(-rc));
fail:
    free(buf);
    if (c)
        c->send_failed++;
    return rc;
}

int wire_recv(void *sock, int is_router, int timeout_ms, const wire_limits_t *lim,
              wire_counters_t *c, wire_identity_t *from, Crl__Envelope **env, zmq_msg_t *raw,
              char *err, size_t errlen)
{
    /* frames[0..2] keep the first three parts; any further part is read
     * into `extra` and discarded (but counted). */
    zmq_msg_t frames[3], extra;
    int n_kept = 0;
    size_t n_frames = 0;
    int rc = 0;
    char who[600];
    wire_identity_t local_from;
    char local_err[512];

    *env = NULL;
    if (raw)
        zmq_msg_init(raw);
    if (!from)
        from = &local_from;
    from->len = 0;
    if (!err || errlen == 0) { /* the reason still goes to the log */
        err = local_err;
        errlen = sizeof local_err;
    }
    err[0] = '\0';

    if (timeout_ms != 0) {
        zmq_pollitem_t item = { .socket = sock, .fd = 0, .events = ZMQ_POLLIN, .revents = 0 };
        int n = zmq_poll(&item, 1, timeout_ms);
        if (n < 0) {
            rc = -errno;
            fail(err, errlen, "zmq_poll: %s", zmq_strerror(-rc));
            return rc;
        }
        if (n == 0)
            return 0;
    }

    int more = 1;
    while (more) {
        zmq_msg_t *m = n_kept < 3 ? &frames[n_kept] : &extra;
        zmq_msg_init(m);
        /* A multipart message arrives whole, so only the first part can
         * be missing (EAGAIN = nothing there). */
        if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) < 0) {
            int e = errno;
            zmq_msg_close(m);
            if (e == EAGAIN && n_frames == 0) {
                rc = 0;
                goto out;
            }
            rc = -e;
            fail(err, errlen, "zmq_msg_recv: %s", zmq_strerror(e));
            goto out;
        }
        more = zmq_msg_more(m);
        n_frames++;
        if (m == &extra)
            zmq_msg_close(m);
        else
            n_kept++;
    }

    size_t head = is_router ? 1 : 0; /* frames before the envelope */
    if (is_router) {
        size_t idlen = zmq_msg_size(&frames[0]);
        if (idlen > sizeof from->id)
            idlen = sizeof from->id;
        memcpy(from->id, zmq_msg_data(&frames[0]), idlen);
        from->len = idlen;
    }
    if (n_frames < head + 1 || n_frames > head + 2) {
        if (c) {
            c->received++;
            c->malformed++;
        }
        fail(err, errlen, "message of %zu frames (expected %zu or %zu)", n_frames, head + 1,
             head + 2);
        rc = -EPROTO;
        goto drop;
    }
    *env = wire_decode(zmq_msg_data(&frames[head]), zmq_msg_size(&frames[head]), lim, c, err,
                       errlen);
    if (!*env) { /* wire_decode counted it */
        rc = -EPROTO;
        goto drop;
    }
    int has_raw = n_frames == head + 2;
    int want_raw = wire_body_has_raw(*env);
    const char *problem = NULL;
    if (has_raw != want_raw)
        problem = want_raw ? "is missing its raw frame" : "has an unexpected extra frame";
    else if (want_raw && !raw)
        problem = "carries a raw frame this socket does not take";
    else if (want_raw && zmq_msg_size(&frames[head + 1]) != raw_expected_len(*env))
        problem = "has a raw frame of the wrong length";
    if (problem) {
        if (want_raw && has_raw)
            fail(err, errlen, "%s %s (%zu bytes, expected %" PRIu64 ")", wire_body_name(*env),
                 problem, zmq_msg_size(&frames[head + 1]), raw_expected_len(*env));
        else
            fail(err, errlen, "%s %s", wire_body_name(*env), problem);
        if (c) {
            c->accepted--; /* wire_decode counted it as accepted */
            c->malformed++;
        }
        wire_envelope_free(env);
        rc = -EPROTO;
        goto drop;
    }
    if (want_raw)
        zmq_msg_move(raw, &frames[head + 1]);
    rc = 1;
    goto out;

drop:
    if (!c || should_log(c->malformed + c->bad_version + c->invalid + c->oversized))
        log_warn("wire: dropped message from %s: %s", peer_name(sock, from, who, sizeof who), err);
out:
    for (int i = 0; i < n_kept; i++)
        zmq_msg_close(&frames[i]);
    return rc;
}
