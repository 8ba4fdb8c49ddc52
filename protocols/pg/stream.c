/* Incremental PostgreSQL message scanner for the relay's fast path: it
 * walks headers, skips bodies and surfaces only the wanted ones (see
 * stream.h). Each byte is looked at once at most.
 */
#include "pg/stream.h"

#include <stdlib.h>
#include <string.h>

#include "ferry/wbuf.h"

void pg_stream_init(struct pg_stream *s, uint32_t max_len, const char *wanted)
{
    memset(s, 0, sizeof *s);
    s->max_len = max_len;
    s->wanted = wanted;
}

void pg_stream_gather(struct pg_stream *s, const char *types, uint32_t max)
{
    s->gather = types;
    s->gather_max = max;
}

void pg_stream_free(struct pg_stream *s)
{
    free(s->whole);
    s->whole = NULL;
}

static void deliver(struct pg_stream *s, pg_stream_cb cb, void *ud)
{
    if (s->whole && !s->inplace) {
        cb(ud, s->type, s->whole, s->len, s->len, NULL);
        pg_stream_free(s);
    } else {
        cb(ud, s->type, s->cap, s->ncap, s->len, s->inplace);
        pg_stream_free(s);  /* the body turned out contiguous after all */
    }
    s->capture = false;
    s->inplace = NULL;
}

int pg_stream_feed(struct pg_stream *s, uint8_t *data, size_t n, pg_stream_cb cb, void *ud)
{
    size_t i = 0;
    while (i < n) {
        if (s->left == 0 && !s->capture) {
            /* at a header: gather its 5 bytes */
            size_t need = 5u - s->nhdr;
            size_t take = need < n - i ? need : n - i;
            memcpy(s->hdr + s->nhdr, data + i, take);
            s->nhdr += (uint8_t)take;
            i += take;
            if (s->nhdr < 5)
                return 0;
            s->nhdr = 0;
            uint32_t len = ferry_get_u32be(s->hdr + 1);
            if (len < 4 || len > s->max_len)
                return FERRY_BAD_MSG;
            s->type = s->hdr[0];
            s->len = s->left = len - 4;
            s->ncap = 0;
            s->capture = s->type != 0 && s->wanted && strchr(s->wanted, s->type) != NULL;
            s->inplace = NULL;
            if (s->capture && s->len == 0) {
                deliver(s, cb, ud);
                continue;
            }
        }
        size_t take = s->left < n - i ? s->left : n - i;
        if (s->capture && s->left == s->len && take == s->left)
            s->inplace = data + i;  /* the whole body is in this chunk */
        else if (s->capture && s->left == s->len && s->len > PG_STREAM_CAPTURE && s->gather &&
                 s->len <= s->gather_max && strchr(s->gather, s->type))
            s->whole = malloc(s->len);  /* split: gather it (NULL: a prefix will do) */
        if (s->whole)
            memcpy(s->whole + (s->len - s->left), data + i, take);
        if (s->capture && s->ncap < PG_STREAM_CAPTURE) {
            size_t room = PG_STREAM_CAPTURE - s->ncap;
            size_t copy = take < room ? take : room;
            memcpy(s->cap + s->ncap, data + i, copy);
            s->ncap += (uint32_t)copy;
        }
        s->left -= (uint32_t)take;
        i += take;
        if (s->left == 0 && s->capture)
            deliver(s, cb, ud);
    }
    return 0;
}
