/* stats: the statistics crl reports beside every before/after figure —
 * paired comparison of two models on the same items (gained / lost
 * counts, exact sign test, paired bootstrap interval of the difference)
 * and the Wilson interval of a single proportion. Pure functions; the
 * bootstrap draws from a caller-seeded rng_t, so results are reproducible. */
#ifndef CRL_STATS_H
#define CRL_STATS_H

#include <stddef.h>

#include "rng.h"

typedef struct {
    size_t n;          /* paired items */
    double mean_a;     /* "before" */
    double mean_b;     /* "after" */
    double diff;       /* mean_b - mean_a */
    size_t gained;     /* b > a */
    size_t lost;       /* b < a */
    double p_sign;     /* exact two-sided sign test on gained vs lost (ties dropped) */
    double ci_lo;      /* paired bootstrap percentile interval of diff */
    double ci_hi;
    int n_boot;
} stats_paired_t;

/* Exact two-sided sign test: P(|X - n/2| >= |k - n/2|) for X ~ Bin(n, 1/2)
 * with n = gained + lost and k = min(gained, lost), i.e. min(1, 2 P(X <= k)).
 * Summed in log space, so exact to rounding for any n. 1.0 when n = 0. */
double stats_sign_test(size_t gained, size_t lost);

/* Paired comparison of per-item outcomes a (before) and b (after), each
 * of n values (0/1 flags, or per-item rates such as mean@N: the sign test
 * then counts items that went up or down). n_boot resamples of the n
 * items with replacement (e.g. 2000) drawn from rng give the central
 * `level` (e.g. 0.95) percentile interval of mean(b - a); n_boot = 0 skips
 * it (ci = diff). Allocates n_boot doubles. 0, -EINVAL (n = 0, NULL, bad
 * level), -ENOMEM. */
int stats_paired(const double *a, const double *b, size_t n, int n_boot, double level, rng_t *rng,
                 stats_paired_t *out);

/* Wilson score interval for k successes in n trials at normal quantile z
 * (1.959964 for 95%). n = 0 gives [0, 1]. */
void stats_wilson(size_t k, size_t n, double z, double *lo, double *hi);

#endif
