/* Header-only scanning of an established PostgreSQL stream (after the
 * startup packet), one direction at a time, across arbitrary read-chunk
 * boundaries. The relay forwards bytes untouched; the scanner only checks
 * every message length (a bad one ends the session with 08P01) and hands
 * the bodies of a few chosen message types to a callback — whole when they
 * are short, the first PG_STREAM_CAPTURE bytes otherwise.
 * Pure code: no I/O; one scanner per direction, owner thread only.
 */
#ifndef FERRY_PG_STREAM_H
#define FERRY_PG_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/codec.h"

#define PG_STREAM_CAPTURE 256u

struct pg_stream {
    uint32_t max_len;               /* largest allowed length word (it counts itself) */
    const char *wanted;             /* message types whose bodies the callback gets */
    uint32_t left;                  /* body bytes of the current message still to come */
    uint8_t hdr[5];                 /* a header split across chunks */
    uint8_t nhdr;
    uint8_t type;                   /* current message type */
    uint32_t len;                   /* current message body length */
    bool capture;                   /* current message is wanted */
    uint8_t *inplace;               /* body start inside the current chunk, NULL if split */
    uint32_t ncap;
    uint8_t cap[PG_STREAM_CAPTURE]; /* captured body prefix */
    const char *gather;             /* wanted types whose whole body is needed (or NULL) */
    uint32_t gather_max;            /* longest body gathered; longer ones come as a prefix */
    uint8_t *whole;                 /* owned while gathering a body split across chunks */
};

/* A wanted message: body (first min(len, PG_STREAM_CAPTURE) bytes, borrowed),
 * its full length, and `inplace` when the whole body lies in the chunk being
 * fed (the callback may then rewrite those bytes before they are relayed). */
typedef void (*pg_stream_cb)(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                             uint32_t len, uint8_t *inplace);

void pg_stream_init(struct pg_stream *s, uint32_t max_len, const char *wanted);

/* Wanted types (a subset of `wanted`) whose bodies up to max bytes are
 * delivered whole even when split across chunks (copied then, so
 * `inplace` is NULL); memory is held only while such a body is incomplete. */
void pg_stream_gather(struct pg_stream *s, const char *types, uint32_t max);

/* Releases a body being gathered (a scanner dropped mid-message). */
void pg_stream_free(struct pg_stream *s);

/* Scans one chunk. Returns 0, or FERRY_BAD_MSG (a length word below 4 or
 * above max_len); after an error the scanner must not be fed again. */
int pg_stream_feed(struct pg_stream *s, uint8_t *data, size_t n, pg_stream_cb cb, void *ud);

#endif
