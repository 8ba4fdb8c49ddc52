/* Growable message buffer with a sticky failure flag; see ferry/wbuf.h. */
#include "ferry/wbuf.h"

#include <stdlib.h>
#include <string.h>

void ferry_wbuf_init(struct ferry_wbuf *b, size_t max)
{
    *b = (struct ferry_wbuf){.max = max ? max : SIZE_MAX};
}

void ferry_wbuf_free(struct ferry_wbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void ferry_wbuf_reset(struct ferry_wbuf *b)
{
    b->len = 0;
    b->failed = false;
}

/* Makes room for n more bytes; false (and failed) if it cannot. */
static bool reserve(struct ferry_wbuf *b, size_t n)
{
    if (b->failed)
        return false;
    if (n > b->max - b->len) {
        b->failed = true;
        return false;
    }
    if (b->len + n <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n)
        cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void ferry_wbuf_put(struct ferry_wbuf *b, const void *p, size_t n)
{
    if (n && reserve(b, n)) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
}

void ferry_wbuf_u8(struct ferry_wbuf *b, uint8_t v) { ferry_wbuf_put(b, &v, 1); }

void ferry_wbuf_u16be(struct ferry_wbuf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    ferry_wbuf_put(b, x, 2);
}

void ferry_wbuf_u32be(struct ferry_wbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    ferry_wbuf_put(b, x, 4);
}

void ferry_wbuf_u16le(struct ferry_wbuf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    ferry_wbuf_put(b, x, 2);
}

void ferry_wbuf_u24le(struct ferry_wbuf *b, uint32_t v)
{
    uint8_t x[3] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16)};
    ferry_wbuf_put(b, x, 3);
}

void ferry_wbuf_u32le(struct ferry_wbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    ferry_wbuf_put(b, x, 4);
}

void ferry_wbuf_cstr(struct ferry_wbuf *b, const char *s) { ferry_wbuf_put(b, s, strlen(s) + 1); }

void ferry_wbuf_patch_u32be(struct ferry_wbuf *b, size_t off, uint32_t v)
{
    if (b->failed || off > b->len || b->len - off < 4)
        return;
    uint8_t *p = b->data + off;
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

void ferry_wbuf_patch_u24le(struct ferry_wbuf *b, size_t off, uint32_t v)
{
    if (b->failed || off > b->len || b->len - off < 3)
        return;
    uint8_t *p = b->data + off;
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16);
}
