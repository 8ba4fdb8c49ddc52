/* Private to protocols/mysql: a bounds-checked payload reader with a sticky
 * failure flag (the read-side twin of struct ferry_wbuf). Every read past
 * the end sets `bad` and yields zeros or empty slices, so parsers read all
 * fields straight through and check `bad` once.
 */
#ifndef FERRY_MY_INTERNAL_H
#define FERRY_MY_INTERNAL_H

#include <string.h>

#include "codec.h"

struct my_reader {
    const uint8_t *p;           /* view: next unread byte */
    size_t left;                /* bytes left */
    bool bad;                   /* sticky: a read went past the end or was malformed */
};

static inline struct my_reader my_reader_of(const uint8_t *p, size_t n)
{
    return (struct my_reader){.p = p, .left = n};
}

/* Takes n bytes as a slice; on short input marks bad and returns empty. */
static inline struct ferry_slice my_rd_bytes(struct my_reader *r, size_t n)
{
    struct ferry_slice s = {0};
    if (r->bad || n > r->left) {
        r->bad = true;
        return s;
    }
    s.p = r->p;
    s.len = n;
    r->p += n;
    r->left -= n;
    return s;
}

static inline uint8_t my_rd_u8(struct my_reader *r)
{
    struct ferry_slice s = my_rd_bytes(r, 1);
    return s.len ? s.p[0] : 0;
}

static inline uint16_t my_rd_u16(struct my_reader *r)
{
    struct ferry_slice s = my_rd_bytes(r, 2);
    return s.len ? ferry_get_u16le(s.p) : 0;
}

static inline uint32_t my_rd_u32(struct my_reader *r)
{
    struct ferry_slice s = my_rd_bytes(r, 4);
    return s.len ? ferry_get_u32le(s.p) : 0;
}

static inline struct ferry_slice my_rd_rest(struct my_reader *r)
{
    return my_rd_bytes(r, r->left);
}

/* NUL-terminated string (NUL consumed, not in the slice); no NUL = bad. */
static inline struct ferry_slice my_rd_cstr(struct my_reader *r)
{
    const uint8_t *nul = r->bad || r->left == 0 ? NULL : memchr(r->p, 0, r->left);
    if (!nul) {
        r->bad = true;
        return (struct ferry_slice){0};
    }
    struct ferry_slice s = my_rd_bytes(r, (size_t)(nul - r->p));
    my_rd_bytes(r, 1);
    return s;
}

/* NUL-terminated, or the rest when no NUL (tolerated where servers omit it). */
static inline struct ferry_slice my_rd_cstr_or_rest(struct my_reader *r)
{
    if (!r->bad && (r->left == 0 || !memchr(r->p, 0, r->left)))
        return my_rd_rest(r);
    return my_rd_cstr(r);
}

/* Length-encoded integer; NULL (0xFB) and 0xFF are bad here. */
static inline uint64_t my_rd_lenenc(struct my_reader *r)
{
    uint64_t v = 0;
    bool is_null = false;
    int used = r->bad ? FERRY_BAD_MSG : my_lenenc_decode(r->p, r->left, &v, &is_null);
    if (used < 0 || is_null) {
        r->bad = true;
        return 0;
    }
    my_rd_bytes(r, (size_t)used);
    return v;
}

/* Length-encoded string; its length must fit in what is left. */
static inline struct ferry_slice my_rd_lenenc_str(struct my_reader *r)
{
    uint64_t len = my_rd_lenenc(r);
    if (len > r->left) {
        r->bad = true;
        return (struct ferry_slice){0};
    }
    return my_rd_bytes(r, (size_t)len);
}

/* Ends one step of an iterator over *rest: advances it past what r read.
 * 1 (one item read), or FERRY_BAD_MSG if r went bad (rest unchanged). */
static inline int my_rd_advance(struct ferry_slice *rest, const struct my_reader *r)
{
    if (r->bad)
        return FERRY_BAD_MSG;
    rest->p = r->p;
    rest->len = r->left;
    return 1;
}

/* 0 when the reader is still good, FERRY_BAD_MSG otherwise. */
static inline int my_rd_result(const struct my_reader *r)
{
    return r->bad ? FERRY_BAD_MSG : 0;
}

#endif
