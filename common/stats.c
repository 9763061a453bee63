/* stats: paired tests and intervals (see stats.h). */
#include "stats.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* log of the binomial coefficient C(n, k) */
static double log_choose(double n, double k)
{
    return lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0);
}

double stats_sign_test(size_t gained, size_t lost)
{
    const size_t n = gained + lost;
    if (n == 0)
        return 1.0;
    const size_t k = gained < lost ? gained : lost;
    /* log P(X <= k) by log-sum-exp over the terms C(n, i) / 2^n; the
     * largest term is the last one (i = k <= n/2), so factor it out. */
    const double ln2n = (double)n * log(2.0);
    const double top = log_choose((double)n, (double)k) - ln2n;
    double sum = 0.0;
    for (size_t i = 0; i <= k; i++)
        sum += exp(log_choose((double)n, (double)i) - ln2n - top);
    double p = 2.0 * exp(top + log(sum));
    return p > 1.0 ? 1.0 : p;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Percentile of sorted v[0..n) at q in [0, 1], linear interpolation. */
static double percentile(const double *v, int n, double q)
{
    double pos = q * (double)(n - 1);
    int lo = (int)floor(pos);
    if (lo >= n - 1)
        return v[n - 1];
    double f = pos - lo;
    return v[lo] * (1.0 - f) + v[lo + 1] * f;
}

int stats_paired(const double *a, const double *b, size_t n, int n_boot, double level, rng_t *rng,
                 stats_paired_t *out)
{
    if (!out)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    if (!a || !b || n == 0 || n > UINT32_MAX || n_boot < 0 || (n_boot > 0 && !rng) ||
        !(level > 0.0 && level < 1.0))
        return -EINVAL;
    double sa = 0, sb = 0;
    for (size_t i = 0; i < n; i++) {
        sa += a[i];
        sb += b[i];
        out->gained += b[i] > a[i];
        out->lost += b[i] < a[i];
    }
    out->n = n;
    out->mean_a = sa / (double)n;
    out->mean_b = sb / (double)n;
    out->diff = out->mean_b - out->mean_a;
    out->p_sign = stats_sign_test(out->gained, out->lost);
    out->n_boot = n_boot;
    out->ci_lo = out->ci_hi = out->diff;
    if (n_boot == 0)
        return 0;
    double *d = malloc(sizeof(double) * n);
    double *boot = malloc(sizeof(double) * (size_t)n_boot);
    if (!d || !boot) {
        free(d);
        free(boot);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        d[i] = b[i] - a[i];
    for (int r = 0; r < n_boot; r++) {
        double s = 0;
        for (size_t i = 0; i < n; i++)
            s += d[rng_below(rng, (uint32_t)n)];
        boot[r] = s / (double)n;
    }
    qsort(boot, (size_t)n_boot, sizeof(double), cmp_double);
    out->ci_lo = percentile(boot, n_boot, (1.0 - level) / 2.0);
    out->ci_hi = percentile(boot, n_boot, 1.0 - (1.0 - level) / 2.0);
    free(d);
    free(boot);
    return 0;
}

void stats_wilson(size_t k, size_t n, double z, double *lo, double *hi)
{
    if (n == 0) {
        *lo = 0.0;
        *hi = 1.0;
        return;
    }
    const double nn = (double)n, p = (double)k / nn, z2 = z * z;
    const double denom = 1.0 + z2 / nn;
    const double centre = (p + z2 / (2.0 * nn)) / denom;
    const double half = z * sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn)) / denom;
    *lo = centre - half < 0.0 ? 0.0 : centre - half;
    *hi = centre + half > 1.0 ? 1.0 : centre + half;
}
