#include "image.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

void image_hwc_to_chw(const uint8_t *hwc, int w, int h, uint8_t *chw)
{
    size_t plane = (size_t)w * (size_t)h;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++)
            chw[(size_t)c * plane + p] = hwc[p * 3 + (size_t)c];
}

void image_chw_to_hwc(const uint8_t *chw, int w, int h, uint8_t *hwc)
{
    size_t plane = (size_t)w * (size_t)h;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++)
            hwc[p * 3 + (size_t)c] = chw[(size_t)c * plane + p];
}

int image_resize_rgb(const uint8_t *in, int in_w, int in_h, uint8_t *out, int out_w, int out_h)
{
    if (in_w <= 0 || in_h <= 0 || out_w <= 0 || out_h <= 0)
        return -EINVAL;
    if (in_w == out_w && in_h == out_h) {
        memcpy(out, in, (size_t)in_w * (size_t)in_h * 3);
        return 0;
    }
    if (!stbir_resize_uint8(in, in_w, in_h, 0, out, out_w, out_h, 0, 3))
        return -EINVAL;
    return 0;
}

int image_load_rgb(const char *path, int size, uint8_t *out, char *err, size_t errlen)
{
    uint8_t *pixels = NULL, *resized = NULL;
    FILE *f = NULL;
    int rc = 0;

    if (size <= 0 || size > IMAGE_MAX_SIZE) {
        snprintf(err, errlen, "%s: requested image size %d is outside 1..%d", path, size,
                 IMAGE_MAX_SIZE);
        return -ERANGE;
    }
    /* Opening the file ourselves gives a real errno for missing files,
     * which stb_image would report only as "can't fopen". */
    f = fopen(path, "rb");
    if (!f) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot open image: %s", path, strerror(errno));
        return rc;
    }
    int w = 0, h = 0, channels = 0;
    pixels = stbi_load_from_file(f, &w, &h, &channels, 3);
    if (!pixels) {
        const char *why = stbi_failure_reason();
        snprintf(err, errlen, "%s: cannot decode image (PNG or JPEG expected): %s", path,
                 why ? why : "unknown reason");
        rc = -EINVAL;
        goto fail;
    }
    if (w == size && h == size) {
        image_hwc_to_chw(pixels, size, size, out);
    } else {
        resized = malloc((size_t)size * (size_t)size * 3);
        if (!resized) {
            snprintf(err, errlen, "%s: out of memory resizing %dx%d to %dx%d", path, w, h, size,
                     size);
            rc = -ENOMEM;
            goto fail;
        }
        if (image_resize_rgb(pixels, w, h, resized, size, size) != 0) {
            snprintf(err, errlen, "%s: resizing %dx%d to %dx%d failed", path, w, h, size, size);
            rc = -EINVAL;
            goto fail;
        }
        image_hwc_to_chw(resized, size, size, out);
    }
fail:
    free(resized);
    if (pixels)
        stbi_image_free(pixels);
    if (f)
        fclose(f);
    return rc;
}

void image_to_float(const uint8_t *rgb, int size, float *out)
{
    size_t n = (size_t)3 * (size_t)size * (size_t)size;
    for (size_t i = 0; i < n; i++)
        out[i] = (float)rgb[i] * (1.0f / 255.0f);
}

int image_write_png(const char *path, const uint8_t *rgb_interleaved, int w, int h)
{
    if (w <= 0 || h <= 0)
        return -EINVAL;
    if (!stbi_write_png(path, w, h, 3, rgb_interleaved, w * 3))
        return -EIO;
    return 0;
}
