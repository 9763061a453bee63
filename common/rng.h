/* rng: the one seeded, reproducible random number generator used everywhere
 * randomness appears in crl (xoshiro256** seeded through splitmix64).
 * State is a plain struct so it can be copied, saved in trainer.json and
 * restored bit for bit. */
#ifndef CRL_RNG_H
#define CRL_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4];
} rng_t;

/* Seeds the state from a 64-bit seed; equal seeds give equal streams. */
void rng_seed(rng_t *r, uint64_t seed);
/* Derives an independent stream: seed mixed with a stream id (e.g. actor id). */
void rng_seed_stream(rng_t *r, uint64_t seed, uint64_t stream);
uint64_t rng_u64(rng_t *r);
uint32_t rng_u32(rng_t *r);
/* Uniform in [0, 1) with 24 bits of precision. */
float rng_uniform(rng_t *r);
/* Uniform in [0, 1) with 53 bits of precision. */
double rng_uniform_double(rng_t *r);
/* Standard normal (Box-Muller, no cached second value so state stays simple). */
float rng_normal(rng_t *r);
/* Uniform integer in [0, n), unbiased; n must be > 0. */
uint32_t rng_below(rng_t *r, uint32_t n);
/* Fisher-Yates shuffle of n ints in place. */
void rng_shuffle_int(rng_t *r, int *a, size_t n);

#endif
