/* Conventions shared by the wire codecs (protocols/pg, protocols/mysql).
 *
 * A decode function returns the number of bytes of one complete message it
 * consumed (> 0), FERRY_NEED_MORE when the input holds only part of one, or
 * FERRY_BAD_MSG when the input can never become a valid message (the session
 * then ends with a protocol error). Decoded fields are slices pointing into
 * the caller's buffer (no copies, not NUL-terminated). Codecs never include
 * <uv.h> and do no I/O, so they run alone in unit tests and fuzzers.
 */
#ifndef FERRY_CODEC_H
#define FERRY_CODEC_H

#include <stddef.h>
#include <stdint.h>

enum { FERRY_BAD_MSG = -1, FERRY_NEED_MORE = -2 };

/* A view into a buffer owned by someone else. */
struct ferry_slice {
    const uint8_t *p;
    size_t len;
};

#endif
