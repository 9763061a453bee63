/* crc32c: CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the
 * checksum of weights blobs and trajectory-log records. A slice-by-8 table
 * path runs everywhere; the SSE4.2 crc32 instruction is used when the build
 * targets it (-march=native on x86-64). Both give identical results. */
#ifndef CRL_CRC32C_H
#define CRL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C of buf[0..len). crc32c("123456789", 9) == 0xE3069283. */
uint32_t crc32c(const void *buf, size_t len);

/* Incremental form, zlib-style: start from crc = 0 and feed pieces;
 * crc32c_update(crc32c_update(0, a, n), b, m) == crc32c(a||b, n+m).
 * The value passed in and returned is the finished CRC (not inverted). */
uint32_t crc32c_update(uint32_t crc, const void *buf, size_t len);

/* The portable slice-by-8 path, whatever the build supports. */
uint32_t crc32c_update_sw(uint32_t crc, const void *buf, size_t len);

/* Bit-at-a-time oracle (slow; for tests). */
uint32_t crc32c_update_naive(uint32_t crc, const void *buf, size_t len);

/* 1 when crc32c_update uses the SSE4.2 instruction, else 0. */
int crc32c_hw_enabled(void);

#endif
