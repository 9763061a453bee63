#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stb_image_write.h>

#include "image.h"
#include "rng.h"

static char tmpdir[4096];

static void make_tmpdir(void)
{
    const char *base = getenv("CRL_TEST_TMP");
    snprintf(tmpdir, sizeof(tmpdir), "%s/image.XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp %s: %s", tmpdir, strerror(errno));
}

static void remove_tmpdir(void)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

TestSuite(image, .init = make_tmpdir, .fini = remove_tmpdir);

static void fill(uint8_t *hwc, int w, int h, const uint8_t left[3], const uint8_t right[3])
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(hwc + ((size_t)y * w + x) * 3, x < w / 2 ? left : right, 3);
}

Test(image, png_round_trip_is_exact)
{
    enum { S = 32 };
    uint8_t hwc[S * S * 3], chw[3 * S * S], back[S * S * 3];
    rng_t r;
    rng_seed(&r, 11);
    for (size_t i = 0; i < sizeof(hwc); i++)
        hwc[i] = (uint8_t)rng_below(&r, 256);
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/noise.png", tmpdir);
    cr_assert_eq(image_write_png(path, hwc, S, S), 0, "writing %s", path);
    int rc = image_load_rgb(path, S, chw, err, sizeof(err));
    cr_assert_eq(rc, 0, "load failed: %s", err);
    image_chw_to_hwc(chw, S, S, back);
    for (size_t i = 0; i < sizeof(hwc); i++)
        cr_assert_eq(back[i], hwc[i], "byte %zu: expected %u got %u", i, hwc[i], back[i]);
    /* channel-major layout: plane c holds channel c */
    cr_assert_eq(chw[0 * S * S + 5 * S + 7], hwc[(5 * S + 7) * 3 + 0]);
    cr_assert_eq(chw[2 * S * S + 5 * S + 7], hwc[(5 * S + 7) * 3 + 2]);
}

Test(image, resize_to_smaller_keeps_regions)
{
    /* 64x64, left half red, right half blue -> 32x32: away from the seam
     * the colours survive within 2 levels (Mitchell filter, clamped edges). */
    enum { S = 64, D = 32 };
    static uint8_t hwc[S * S * 3];
    const uint8_t red[3] = {220, 40, 40}, blue[3] = {40, 80, 220};
    fill(hwc, S, S, red, blue);
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/halves.png", tmpdir);
    cr_assert_eq(image_write_png(path, hwc, S, S), 0);
    uint8_t chw[3 * D * D];
    cr_assert_eq(image_load_rgb(path, D, chw, err, sizeof(err)), 0, "%s", err);
    for (int y = 0; y < D; y++)
        for (int x = 0; x < D; x++) {
            if (x >= D / 2 - 3 && x <= D / 2 + 2)
                continue; /* the seam is blurred by design */
            const uint8_t *want = x < D / 2 ? red : blue;
            for (int c = 0; c < 3; c++) {
                int got = chw[c * D * D + y * D + x];
                cr_assert(abs(got - want[c]) <= 2, "pixel (%d,%d) ch %d: expected %u got %d", x,
                          y, c, want[c], got);
            }
        }
}

Test(image, non_square_and_upscale_load)
{
    enum { W = 40, H = 20, D = 48 };
    uint8_t hwc[W * H * 3];
    const uint8_t grey[3] = {128, 128, 128};
    fill(hwc, W, H, grey, grey);
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/wide.png", tmpdir);
    cr_assert_eq(image_write_png(path, hwc, W, H), 0);
    static uint8_t chw[3 * D * D];
    cr_assert_eq(image_load_rgb(path, D, chw, err, sizeof(err)), 0, "%s", err);
    for (int i = 0; i < 3 * D * D; i++)
        cr_assert(abs((int)chw[i] - 128) <= 1, "value %d: expected 128 got %u", i, chw[i]);
}

Test(image, jpeg_loads_approximately)
{
    enum { S = 32 };
    uint8_t hwc[S * S * 3];
    const uint8_t a[3] = {200, 60, 60}, b[3] = {60, 60, 200};
    fill(hwc, S, S, a, b);
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/halves.jpg", tmpdir);
    cr_assert_neq(stbi_write_jpg(path, S, S, 3, hwc, 95), 0);
    uint8_t chw[3 * S * S];
    cr_assert_eq(image_load_rgb(path, S, chw, err, sizeof(err)), 0, "%s", err);
    /* JPEG is lossy: tolerance 12 levels away from the seam. */
    int got = chw[0 * S * S + 10 * S + 4], got_b = chw[2 * S * S + 10 * S + 28];
    cr_assert(abs(got - 200) <= 12, "red channel at left: expected ~200 got %d", got);
    cr_assert(abs(got_b - 200) <= 12, "blue channel at right: expected ~200 got %d", got_b);
}

Test(image, missing_file_names_the_file)
{
    char path[4200], err[512] = "";
    uint8_t chw[3 * 8 * 8];
    snprintf(path, sizeof(path), "%s/no-such-image.png", tmpdir);
    int rc = image_load_rgb(path, 8, chw, err, sizeof(err));
    cr_assert_eq(rc, -ENOENT, "expected -ENOENT, got %d (%s)", rc, err);
    cr_assert_not_null(strstr(err, path), "error does not name the file: %s", err);
}

Test(image, truncated_png_gives_error_naming_file)
{
    enum { S = 32 };
    uint8_t hwc[S * S * 3];
    rng_t r;
    rng_seed(&r, 3);
    for (size_t i = 0; i < sizeof(hwc); i++)
        hwc[i] = (uint8_t)rng_below(&r, 256);
    char path[4200], err[512] = "";
    snprintf(path, sizeof(path), "%s/cut.png", tmpdir);
    cr_assert_eq(image_write_png(path, hwc, S, S), 0);
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fclose(f);
    cr_assert_eq(truncate(path, len / 2), 0);
    uint8_t chw[3 * S * S];
    int rc = image_load_rgb(path, S, chw, err, sizeof(err));
    cr_assert_eq(rc, -EINVAL, "expected -EINVAL for a truncated PNG, got %d (%s)", rc, err);
    cr_assert_not_null(strstr(err, path), "error does not name the file: %s", err);
    cr_assert_not_null(strstr(err, "decode"), "error does not say what failed: %s", err);
}

Test(image, garbage_file_and_bad_size_are_errors)
{
    char path[4200], err[512] = "";
    snprintf(path, sizeof(path), "%s/garbage.png", tmpdir);
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    fputs("this is not an image at all", f);
    fclose(f);
    uint8_t chw[3 * 8 * 8];
    int rc = image_load_rgb(path, 8, chw, err, sizeof(err));
    cr_assert_eq(rc, -EINVAL, "got %d (%s)", rc, err);
    cr_assert_not_null(strstr(err, path), "%s", err);
    rc = image_load_rgb(path, 0, chw, err, sizeof(err));
    cr_assert_eq(rc, -ERANGE, "size 0: expected -ERANGE got %d", rc);
}

Test(image, to_float_and_layout_helpers)
{
    uint8_t chw[3 * 2 * 2] = {0, 51, 102, 255, 1, 2, 3, 4, 5, 6, 7, 8}, hwc[12], back[12];
    float f[12];
    image_to_float(chw, 2, f);
    cr_assert_float_eq(f[0], 0.0f, 1e-7);
    cr_assert_float_eq(f[1], 0.2f, 1e-6);
    cr_assert_float_eq(f[3], 1.0f, 1e-7);
    image_chw_to_hwc(chw, 2, 2, hwc);
    cr_assert_eq(hwc[0], 0);
    cr_assert_eq(hwc[1], 1);  /* green of pixel 0 = plane 1, index 0 */
    cr_assert_eq(hwc[2], 5);  /* blue of pixel 0 */
    cr_assert_eq(hwc[3], 51); /* red of pixel 1 */
    image_hwc_to_chw(hwc, 2, 2, back);
    cr_assert_arr_eq(back, chw, sizeof(chw));
}

Test(image, write_to_unwritable_path_fails)
{
    uint8_t px[3 * 4 * 4] = {0};
    char path[4200];
    snprintf(path, sizeof(path), "%s/no-such-dir/x.png", tmpdir);
    cr_assert_eq(image_write_png(path, px, 4, 4), -EIO);
    cr_assert_eq(image_write_png(path, px, 0, 4), -EINVAL);
}
