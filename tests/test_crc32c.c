#include <criterion/criterion.h>
#include <string.h>

#include "crc32c.h"
#include "rng.h"

/* Known answers: the CRC-32C check value and the iSCSI vectors of
 * RFC 3720 appendix B.4. Exact (integer) comparisons. */
Test(crc32c, known_vectors)
{
    const char *check = "123456789";
    cr_assert_eq(crc32c(check, 9), 0xE3069283u, "crc32c(\"123456789\"): expected 0xE3069283, got 0x%08X",
                 crc32c(check, 9));
    cr_assert_eq(crc32c_update_sw(0, check, 9), 0xE3069283u, "sw path: got 0x%08X",
                 crc32c_update_sw(0, check, 9));
    cr_assert_eq(crc32c_update_naive(0, check, 9), 0xE3069283u, "naive: got 0x%08X",
                 crc32c_update_naive(0, check, 9));
    cr_assert_eq(crc32c("", 0), 0u, "empty input: expected 0, got 0x%08X", crc32c("", 0));
    cr_assert_eq(crc32c(NULL, 0), 0u);

    uint8_t b[32];
    struct { uint8_t fill; int mode; uint32_t want; } v[] = {
        { 0x00, 0, 0x8A9136AAu }, /* 32 zero bytes */
        { 0xFF, 0, 0x62A8AB43u }, /* 32 bytes of 0xFF */
        { 0, 1, 0x46DD794Eu },    /* 0, 1, ..., 31 */
        { 0, 2, 0x113FDB5Cu },    /* 31, 30, ..., 0 */
    };
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
        for (int i = 0; i < 32; i++)
            b[i] = v[k].mode == 0 ? v[k].fill : v[k].mode == 1 ? (uint8_t)i : (uint8_t)(31 - i);
        cr_assert_eq(crc32c(b, 32), v[k].want, "vector %zu: expected 0x%08X, got 0x%08X", k,
                     v[k].want, crc32c(b, 32));
        cr_assert_eq(crc32c_update_sw(0, b, 32), v[k].want, "sw vector %zu: got 0x%08X", k,
                     crc32c_update_sw(0, b, 32));
    }
}

/* Fast paths (hardware if built in, slice-by-8) equal the bitwise oracle
 * for every length 0..300 at every alignment 0..7. */
Test(crc32c, fast_paths_match_naive_oracle)
{
    static uint8_t buf[400];
    rng_t r;
    rng_seed(&r, 11);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rng_u32(&r);
    for (size_t align = 0; align < 8; align++)
        for (size_t len = 0; len <= 300; len++) {
            uint32_t want = crc32c_update_naive(0, buf + align, len);
            uint32_t hw = crc32c(buf + align, len), sw = crc32c_update_sw(0, buf + align, len);
            cr_assert_eq(hw, want, "len %zu align %zu: expected 0x%08X, got 0x%08X", len, align, want, hw);
            cr_assert_eq(sw, want, "sw len %zu align %zu: expected 0x%08X, got 0x%08X", len, align, want, sw);
        }
}

/* Feeding random pieces gives the one-shot value. */
Test(crc32c, incremental_equals_one_shot)
{
    static uint8_t buf[100000];
    rng_t r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rng_u32(&r);
    uint32_t whole = crc32c(buf, sizeof buf);
    cr_assert_eq(whole, crc32c_update_sw(0, buf, sizeof buf));
    for (int trial = 0; trial < 20; trial++) {
        uint32_t c = 0, s = 0;
        size_t off = 0;
        while (off < sizeof buf) {
            size_t n = rng_below(&r, 5000);
            if (n > sizeof buf - off)
                n = sizeof buf - off;
            c = crc32c_update(c, buf + off, n);
            s = crc32c_update_sw(s, buf + off, n);
            off += n;
        }
        cr_assert_eq(c, whole, "trial %d: pieces gave 0x%08X, one shot 0x%08X", trial, c, whole);
        cr_assert_eq(s, whole, "trial %d (sw): pieces gave 0x%08X, one shot 0x%08X", trial, s, whole);
    }
}
