/* A growable byte buffer for building wire messages, with a sticky failure
 * flag (as PgBouncer's pktbuf): after any write fails (out of memory or past
 * the buffer's maximum), later writes do nothing and the caller checks
 * `failed` once at the end. Used by both codecs and by the AWS request
 * builders. No I/O; thread: owner only.
 */
#ifndef FERRY_WBUF_H
#define FERRY_WBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ferry_wbuf {
    uint8_t *data;      /* owned (malloc); NULL until the first write */
    size_t len;         /* bytes written */
    size_t cap;         /* bytes allocated */
    size_t max;         /* hard limit on len; 0 = SIZE_MAX */
    bool failed;        /* sticky: a write did not fit or allocation failed */
};

void ferry_wbuf_init(struct ferry_wbuf *b, size_t max);
void ferry_wbuf_free(struct ferry_wbuf *b);
void ferry_wbuf_reset(struct ferry_wbuf *b);        /* len = 0, failed = false; keeps memory */

void ferry_wbuf_put(struct ferry_wbuf *b, const void *p, size_t n);
void ferry_wbuf_u8(struct ferry_wbuf *b, uint8_t v);
void ferry_wbuf_u16be(struct ferry_wbuf *b, uint16_t v);
void ferry_wbuf_u32be(struct ferry_wbuf *b, uint32_t v);
void ferry_wbuf_u16le(struct ferry_wbuf *b, uint16_t v);
void ferry_wbuf_u24le(struct ferry_wbuf *b, uint32_t v);
void ferry_wbuf_u32le(struct ferry_wbuf *b, uint32_t v);
void ferry_wbuf_cstr(struct ferry_wbuf *b, const char *s);   /* with its NUL */

/* Overwrites bytes already written at off (for length fields filled in last). */
void ferry_wbuf_patch_u32be(struct ferry_wbuf *b, size_t off, uint32_t v);
void ferry_wbuf_patch_u24le(struct ferry_wbuf *b, size_t off, uint32_t v);

/* Big/little-endian reads from wire bytes (no bounds checks: callers have
 * checked the length). */
static inline uint16_t ferry_get_u16be(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t ferry_get_u32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t ferry_get_u16le(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t ferry_get_u24le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}
static inline uint32_t ferry_get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
