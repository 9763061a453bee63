/* image: the one place crl decodes, resizes and writes pixels. Decoding is
 * stb_image (PNG or JPEG, any bit depth, forced to 3 channels); resizing is
 * stb_image_resize's stbir_resize_uint8 (Mitchell filter when shrinking,
 * Catmull-Rom when enlarging, linear colour space, both axes scaled
 * independently so non-square images are squashed, not cropped); writing is
 * stb_image_write PNG. Model-side buffers are channel-major (3, S, S); files
 * and the renderer are interleaved (h, w, 3). Stateless and thread-safe
 * (stb_image keeps its failure reason in thread-local storage). */
#ifndef CRL_IMAGE_H
#define CRL_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* Largest side image_load_rgb resizes to; larger requests are refused. */
#define IMAGE_MAX_SIZE 4096

/* Loads `path` (PNG or JPEG), resizes it to size x size and writes it
 * channel-major into out (3, size, size), caller-allocated.
 * Returns 0, or a negative errno with a message naming the file in err:
 * -ENOENT/-EACCES/... when the file cannot be opened, -EINVAL when it does
 * not decode (the message carries stbi_failure_reason()), -ERANGE for a bad
 * size, -ENOMEM. */
int image_load_rgb(const char *path, int size, uint8_t *out /* (3, size, size) */, char *err,
                   size_t errlen);

/* out[i] = rgb[i] / 255 for the 3*size*size values (layout preserved). */
void image_to_float(const uint8_t *rgb /* (3, S, S) */, int size, float *out /* (3, S, S) */);

/* Writes an interleaved RGB image as PNG. Returns 0 or -EIO (errno is not
 * reliable after stb_image_write, so the caller names the file). */
int image_write_png(const char *path, const uint8_t *rgb_interleaved /* (h, w, 3) */, int w,
                    int h);

/* Layout conversions between interleaved (h, w, 3) and channel-major (3, h, w). */
void image_hwc_to_chw(const uint8_t *hwc /* (h, w, 3) */, int w, int h,
                      uint8_t *chw /* (3, h, w) */);
void image_chw_to_hwc(const uint8_t *chw /* (3, h, w) */, int w, int h,
                      uint8_t *hwc /* (h, w, 3) */);

/* Resizes interleaved RGB (in_w x in_h) to (out_w x out_h) with the same
 * filter as image_load_rgb; copies when the sizes are equal. Returns 0 or
 * -EINVAL. Lets in-memory images (the built-in world) take exactly the path
 * file images take. */
int image_resize_rgb(const uint8_t *in /* (in_h, in_w, 3) */, int in_w, int in_h,
                     uint8_t *out /* (out_h, out_w, 3) */, int out_w, int out_h);

#endif
