/* fuzz_envelope: wire_decode + wire_validate on arbitrary bytes, as a
 * receiver sees a frame off a socket. Properties: no crash / leak / UB; a
 * refusal always says why; an accepted envelope re-encodes and decodes
 * again to an accepted envelope of the same body (nothing the validator
 * passes is unrepresentable). wire_validate also runs on every envelope
 * protobuf-c can unpack, whatever its version, and under tight limits
 * (small vocab, small images) to reach the range checks. */
#include <string.h>

#include "fuzz_util.h"
#include "wire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    return 0;
}

static void tight_limits(wire_limits_t *lim)
{
    wire_limits_default(lim);
    lim->vocab_size = 300;
    lim->max_prompt_tokens = 64;
    lim->max_new_tokens = 32;
    lim->max_group_size = 4;
    lim->image_size = 4;
    lim->max_envelope_bytes = 4096;
    lim->max_weights_bytes = 1 << 20;
    lim->max_chunk_bytes = 1 << 16;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    wire_limits_t lim, tight;
    wire_limits_default(&lim);
    tight_limits(&tight);

    /* The validator on anything protobuf-c accepts (version not checked). */
    Crl__Envelope *raw = crl__envelope__unpack(NULL, size, data);
    if (raw) {
        err[0] = '\0';
        int rc = wire_validate(raw, &lim, err, sizeof err);
        FUZZ_CHECK(rc == 0 || (rc == -EINVAL && err[0]), "wire_validate rc %d err '%s'", rc, err);
        err[0] = '\0';
        rc = wire_validate(raw, &tight, err, sizeof err);
        FUZZ_CHECK(rc == 0 || (rc == -EINVAL && err[0]), "tight wire_validate rc %d err '%s'", rc,
                   err);
        (void)wire_body_name(raw);
        crl__envelope__free_unpacked(raw, NULL);
    }

    wire_counters_t c;
    memset(&c, 0, sizeof c);
    err[0] = '\0';
    Crl__Envelope *env = wire_decode(data, size, &lim, &c, err, sizeof err);
    FUZZ_CHECK(c.received == 1, "received %llu", (unsigned long long)c.received);
    if (!env) {
        FUZZ_CHECK(err[0] != '\0', "wire_decode refused without a reason");
        FUZZ_CHECK(c.malformed + c.bad_version + c.invalid + c.oversized == 1 && c.accepted == 0,
                   "a refusal must count exactly once");
        return 0;
    }
    FUZZ_CHECK(c.accepted == 1, "accepted not counted");
    FUZZ_CHECK(wire_validate(env, &lim, err, sizeof err) == 0, "decoded but invalid: %s", err);
    const char *name = wire_body_name(env);
    FUZZ_CHECK(strcmp(name, "none") != 0, "accepted an envelope with no body");
    (void)wire_body_has_raw(env);

    /* Round trip: what was accepted must encode and be accepted again. */
    size_t len = 0;
    uint8_t *buf = wire_encode(env, &len);
    FUZZ_CHECK(buf != NULL, "wire_encode failed on an accepted envelope");
    Crl__Envelope *again = wire_decode(buf, len, &lim, NULL, err, sizeof err);
    FUZZ_CHECK(again != NULL, "re-encoded envelope refused: %s", err);
    FUZZ_CHECK(again->body_case == env->body_case, "body changed in the round trip");
    FUZZ_CHECK(strcmp(wire_body_name(again), name) == 0, "body name changed");
    size_t len2 = 0;
    uint8_t *buf2 = wire_encode(again, &len2);
    FUZZ_CHECK(buf2 && len2 == len && memcmp(buf, buf2, len) == 0,
               "encode(decode(encode(x))) differs from encode(x)");
    free(buf2);
    free(buf);
    wire_envelope_free(&again);
    wire_envelope_free(&env);
    FUZZ_CHECK(env == NULL, "wire_envelope_free left the pointer");
    return 0;
}
