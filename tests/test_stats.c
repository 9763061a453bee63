/* stats tests: the sign test against exact values (by hand for small n,
 * and from exact integer arithmetic in Python's math.comb for the rest,
 * relative tolerance 1e-9), the paired bootstrap (contains the sample
 * difference, agrees with the normal approximation within 10%, ~95%
 * coverage of the population difference, deterministic for a seed), and
 * the Wilson interval against its closed form (1e-9). */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "stats.h"

static void assert_rel(double got, double want, double tol, const char *what)
{
    double err = fabs(got - want) / (fabs(want) > 1e-300 ? fabs(want) : 1.0);
    cr_assert(err <= tol, "%s: got %.12g, expected %.12g (rel. tol %g)", what, got, want, tol);
}

Test(stats, sign_test_small_n_by_hand)
{
    /* n = 5, k = 0: 2 * 1/32 */
    assert_rel(stats_sign_test(5, 0), 0.0625, 1e-12, "5 vs 0");
    assert_rel(stats_sign_test(0, 5), 0.0625, 1e-12, "0 vs 5 (symmetric)");
    /* n = 4, k = 1: 2 * (1 + 4) / 16 */
    assert_rel(stats_sign_test(3, 1), 0.625, 1e-12, "3 vs 1");
    /* n = 9, k = 2: 2 * (1 + 9 + 36) / 512 */
    assert_rel(stats_sign_test(7, 2), 0.1796875, 1e-12, "7 vs 2");
    /* n = 11, k = 1: 2 * (1 + 11) / 2048 */
    assert_rel(stats_sign_test(10, 1), 0.01171875, 1e-12, "10 vs 1");
    /* n = 1: 2 * 1/2 = 1 */
    assert_rel(stats_sign_test(1, 0), 1.0, 1e-12, "1 vs 0");
    assert_rel(stats_sign_test(0, 0), 1.0, 0, "no discordant pairs");
}

Test(stats, sign_test_known_values)
{
    /* RECIPE: +1.7 points, 131 gained / 121 lost -> p = .57; 125/125 -> 1 */
    assert_rel(stats_sign_test(131, 121), 0.570837567200976, 1e-9, "131 vs 121");
    assert_rel(stats_sign_test(125, 125), 1.0, 1e-12, "125 vs 125");
    assert_rel(stats_sign_test(60, 40), 0.05688793364098079, 1e-9, "60 vs 40");
    /* large n: terms far below double range individually, still exact */
    assert_rel(stats_sign_test(600, 400), 2.7284641560660184e-10, 1e-8, "600 vs 400");
    double p = stats_sign_test(5000, 5000);
    assert_rel(p, 1.0, 1e-12, "5000 vs 5000");
    p = stats_sign_test(100000, 0);
    cr_assert(p >= 0.0 && p < 1e-300, "100000 vs 0: p = %g, expected ~0 without NaN", p);
}

Test(stats, paired_counts_and_difference)
{
    const double a[8] = {0, 0, 1, 1, 0, 1, 0, 1};
    const double b[8] = {1, 1, 1, 0, 0, 1, 1, 1};
    rng_t r;
    rng_seed(&r, 1);
    stats_paired_t s;
    cr_assert_eq(stats_paired(a, b, 8, 500, 0.95, &r, &s), 0);
    cr_assert_eq(s.n, 8);
    cr_assert_eq(s.gained, 3, "gained %zu", s.gained);
    cr_assert_eq(s.lost, 1, "lost %zu", s.lost);
    assert_rel(s.mean_a, 0.5, 1e-12, "mean_a");
    assert_rel(s.mean_b, 0.75, 1e-12, "mean_b");
    assert_rel(s.diff, 0.25, 1e-12, "diff");
    assert_rel(s.p_sign, 0.625, 1e-12, "p (3 vs 1)");
    cr_assert(s.ci_lo <= s.diff && s.diff <= s.ci_hi, "[%g, %g] holds %g", s.ci_lo, s.ci_hi, s.diff);
    /* differences are in {-1, 0, 1}: a mean of 8 lies in [-1, 1] on a 1/8 grid */
    cr_assert(s.ci_lo >= -1.0 && s.ci_hi <= 1.0);

    /* no bootstrap: the interval collapses to the difference */
    cr_assert_eq(stats_paired(a, b, 8, 0, 0.95, NULL, &s), 0);
    cr_assert(s.ci_lo == s.diff && s.ci_hi == s.diff);
    /* bad arguments */
    cr_assert_eq(stats_paired(a, b, 0, 10, 0.95, &r, &s), -EINVAL);
    cr_assert_eq(stats_paired(a, b, 8, 10, 1.0, &r, &s), -EINVAL);
    cr_assert_eq(stats_paired(a, b, 8, 10, 0.95, NULL, &s), -EINVAL);
    cr_assert_eq(stats_paired(NULL, b, 8, 10, 0.95, &r, &s), -EINVAL);
}

/* Synthetic pairs: a ~ Bern(0.5); b flips a 0 to 1 with prob 0.3 and a 1
 * to 0 with prob 0.1, so the population difference is 0.5*0.3 - 0.5*0.1 =
 * 0.1 and the sd of one item's difference is sqrt(0.2 - 0.01). */
static void synth(rng_t *r, double *a, double *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        a[i] = rng_uniform(r) < 0.5f;
        float u = rng_uniform(r);
        b[i] = a[i] == 0 ? (u < 0.3f) : (u >= 0.1f);
    }
}

Test(stats, bootstrap_matches_normal_width_and_is_deterministic)
{
    enum { N = 600 };
    double a[N], b[N];
    rng_t r;
    rng_seed(&r, 42);
    synth(&r, a, b, N);
    stats_paired_t s1, s2;
    rng_t r1, r2;
    rng_seed(&r1, 7);
    rng_seed(&r2, 7);
    cr_assert_eq(stats_paired(a, b, N, 2000, 0.95, &r1, &s1), 0);
    cr_assert_eq(stats_paired(a, b, N, 2000, 0.95, &r2, &s2), 0);
    cr_assert(memcmp(&s1, &s2, sizeof(s1)) == 0, "same seed, different results");
    cr_assert(s1.ci_lo < s1.diff && s1.diff < s1.ci_hi, "[%g, %g] holds %g", s1.ci_lo, s1.ci_hi,
              s1.diff);
    /* normal approximation from the sample: diff +- 1.96 sd(d) / sqrt(n) */
    double m = s1.diff, v = 0;
    for (int i = 0; i < N; i++)
        v += (b[i] - a[i] - m) * (b[i] - a[i] - m);
    double se = sqrt(v / (N - 1) / N);
    double half = (s1.ci_hi - s1.ci_lo) / 2;
    cr_assert(fabs(half - 1.96 * se) <= 0.1 * 1.96 * se,
              "bootstrap half-width %g vs normal %g (10%% tolerance)", half, 1.96 * se);
    /* another seed: a close interval (endpoints lie on the 1/N grid, so
     * they may even coincide) */
    rng_seed(&r2, 8);
    cr_assert_eq(stats_paired(a, b, N, 2000, 0.95, &r2, &s2), 0);
    cr_assert(fabs(s2.ci_lo - s1.ci_lo) <= 0.2 * half && fabs(s2.ci_hi - s1.ci_hi) <= 0.2 * half,
              "seed 8 [%g, %g] vs seed 7 [%g, %g]", s2.ci_lo, s2.ci_hi, s1.ci_lo, s1.ci_hi);
}

Test(stats, bootstrap_covers_population_difference)
{
    enum { N = 300, REPS = 200 };
    double a[N], b[N];
    rng_t r;
    rng_seed(&r, 123);
    int covered = 0;
    for (int k = 0; k < REPS; k++) {
        synth(&r, a, b, N);
        stats_paired_t s;
        cr_assert_eq(stats_paired(a, b, N, 400, 0.95, &r, &s), 0);
        covered += s.ci_lo <= 0.1 && 0.1 <= s.ci_hi;
    }
    /* expected 190 of 200; binomial sd ~3, so >= 178 is a 4-sd margin */
    cr_assert(covered >= 178 && covered <= 200, "covered %d of %d, expected ~95%%", covered, REPS);
}

Test(stats, wilson_interval)
{
    double lo, hi;
    stats_wilson(81, 263, 1.959963984540054, &lo, &hi);
    assert_rel(lo, 0.2552885198782742, 1e-9, "81/263 lo");
    assert_rel(hi, 0.36620957698280004, 1e-9, "81/263 hi");
    stats_wilson(0, 10, 1.959963984540054, &lo, &hi);
    cr_assert(lo == 0.0, "0/10 lo %g", lo);
    assert_rel(hi, 0.2775327998628892, 1e-9, "0/10 hi");
    stats_wilson(10, 10, 1.959963984540054, &lo, &hi);
    assert_rel(lo, 0.7224672001371107, 1e-9, "10/10 lo");
    cr_assert(hi <= 1.0 && hi > 0.9999999, "10/10 hi %g", hi);
    stats_wilson(300, 600, 1.959963984540054, &lo, &hi);
    assert_rel(lo, 0.4601198639241893, 1e-9, "300/600 lo");
    assert_rel(hi, 0.5398801360758106, 1e-9, "300/600 hi");
    stats_wilson(0, 0, 1.96, &lo, &hi);
    cr_assert(lo == 0.0 && hi == 1.0);
}
