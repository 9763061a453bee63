#include <criterion/criterion.h>
#include <math.h>

#include "rng.h"

Test(rng, same_seed_same_stream)
{
    rng_t a, b;
    rng_seed(&a, 42);
    rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(rng_u64(&a), rng_u64(&b), "streams diverged at draw %d", i);
}

Test(rng, different_seeds_and_streams_differ)
{
    rng_t a, b, c;
    rng_seed(&a, 1);
    rng_seed(&b, 2);
    rng_seed_stream(&c, 1, 7);
    uint64_t x = rng_u64(&a), y = rng_u64(&b), z = rng_u64(&c);
    cr_assert_neq(x, y);
    cr_assert_neq(x, z);
}

Test(rng, state_copy_resumes_exactly)
{
    rng_t a;
    rng_seed(&a, 9);
    for (int i = 0; i < 17; i++)
        rng_u64(&a);
    rng_t saved = a;
    uint64_t want = rng_u64(&a);
    cr_assert_eq(rng_u64(&saved), want);
}

Test(rng, uniform_and_normal_moments)
{
    rng_t r;
    rng_seed(&r, 123);
    const int n = 200000;
    double su = 0, sn = 0, sn2 = 0;
    for (int i = 0; i < n; i++) {
        float u = rng_uniform(&r);
        cr_assert(u >= 0.0f && u < 1.0f, "uniform out of range: %g", u);
        su += u;
        float g = rng_normal(&r);
        sn += g;
        sn2 += (double)g * g;
    }
    /* Tolerances: ~5 standard errors for n = 2e5. */
    cr_assert(fabs(su / n - 0.5) < 0.004, "uniform mean %g", su / n);
    cr_assert(fabs(sn / n) < 0.012, "normal mean %g", sn / n);
    cr_assert(fabs(sn2 / n - 1.0) < 0.02, "normal variance %g", sn2 / n);
}

Test(rng, below_is_in_range_and_covers)
{
    rng_t r;
    rng_seed(&r, 5);
    int counts[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint32_t v = rng_below(&r, 7);
        cr_assert_lt(v, 7u);
        counts[v]++;
    }
    for (int k = 0; k < 7; k++)
        cr_assert(counts[k] > 9400 && counts[k] < 10600, "bucket %d has %d of 70000", k, counts[k]);
}

Test(rng, shuffle_is_permutation)
{
    rng_t r;
    rng_seed(&r, 77);
    int a[50], seen[50] = {0};
    for (int i = 0; i < 50; i++)
        a[i] = i;
    rng_shuffle_int(&r, a, 50);
    int moved = 0;
    for (int i = 0; i < 50; i++) {
        seen[a[i]]++;
        moved += a[i] != i;
    }
    for (int i = 0; i < 50; i++)
        cr_assert_eq(seen[i], 1, "value %d appears %d times", i, seen[i]);
    cr_assert_gt(moved, 25, "only %d of 50 moved", moved);
}
