/* The relay's PostgreSQL scanner: wanted bodies arrive whole whatever the
 * chunking, in-place rewriting works when a body is contiguous, bad lengths
 * are caught, long bodies are captured up to the limit. */
#include <stdlib.h>

#include "ferry/wbuf.h"
#include "pg/stream.h"
#include "unit.h"

struct seen {
    int n;
    uint8_t types[16];
    uint32_t lens[16];
    uint32_t captured[16];
    uint8_t first[16];
    int inplace;
};

static void on_msg(void *ud, uint8_t type, const uint8_t *body, uint32_t captured, uint32_t len,
                   uint8_t *inplace)
{
    struct seen *s = ud;
    if (s->n < 16) {
        s->types[s->n] = type;
        s->lens[s->n] = len;
        s->captured[s->n] = captured;
        s->first[s->n] = captured ? body[0] : 0;
    }
    s->n++;
    if (inplace) {
        s->inplace++;
        if (type == 'K')
            inplace[0] = 0xAA;  /* rewrite: visible in the caller's bytes */
    }
}

/* AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery, DataRow (long) */
static size_t sample(uint8_t *out)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    ferry_wbuf_u8(&b, 'R'); ferry_wbuf_u32be(&b, 8); ferry_wbuf_u32be(&b, 0);
    ferry_wbuf_u8(&b, 'S'); ferry_wbuf_u32be(&b, 4 + 9 + 4);
    ferry_wbuf_cstr(&b, "TimeZone"); ferry_wbuf_cstr(&b, "UTC");
    ferry_wbuf_u8(&b, 'K'); ferry_wbuf_u32be(&b, 12); ferry_wbuf_u32be(&b, 0x01020304);
    ferry_wbuf_u32be(&b, 0x05060708);
    ferry_wbuf_u8(&b, 'Z'); ferry_wbuf_u32be(&b, 5); ferry_wbuf_u8(&b, 'I');
    ferry_wbuf_u8(&b, 'D'); ferry_wbuf_u32be(&b, 4 + 600);
    for (int i = 0; i < 600; i++)
        ferry_wbuf_u8(&b, (uint8_t)i);
    ferry_wbuf_u8(&b, 'Z'); ferry_wbuf_u32be(&b, 5); ferry_wbuf_u8(&b, 'T');
    size_t n = b.len;
    memcpy(out, b.data, n);
    ferry_wbuf_free(&b);
    return n;
}

static void test_every_split(void)
{
    uint8_t msg[1024];
    size_t n = sample(msg);
    for (size_t cut1 = 0; cut1 <= n; cut1++) {
        for (size_t cut2 = cut1; cut2 <= n; cut2 += 7) {
            uint8_t copy[1024];
            memcpy(copy, msg, n);
            struct pg_stream st;
            struct seen seen = {0};
            pg_stream_init(&st, 1 << 20, "SKZD");
            ASSERT_EQ_INT(pg_stream_feed(&st, copy, cut1, on_msg, &seen), 0);
            ASSERT_EQ_INT(pg_stream_feed(&st, copy + cut1, cut2 - cut1, on_msg, &seen), 0);
            ASSERT_EQ_INT(pg_stream_feed(&st, copy + cut2, n - cut2, on_msg, &seen), 0);
            ASSERT_EQ_INT(seen.n, 5);
            ASSERT_EQ_INT(seen.types[0], 'S');
            ASSERT_EQ_INT(seen.lens[0], 13);
            ASSERT_EQ_INT(seen.types[1], 'K');
            ASSERT_EQ_INT(seen.first[1], 0x01);
            ASSERT_EQ_INT(seen.types[2], 'Z');
            ASSERT_EQ_INT(seen.first[2], 'I');
            ASSERT_EQ_INT(seen.types[3], 'D');
            ASSERT_EQ_INT(seen.lens[3], 600);
            ASSERT_EQ_INT(seen.captured[3], PG_STREAM_CAPTURE);
            ASSERT_EQ_INT(seen.first[4], 'T');
            /* K's body is bytes 32..39: rewritten in place exactly when no cut splits it */
            bool split = (cut1 > 32 && cut1 < 40) || (cut2 > 32 && cut2 < 40);
            ASSERT_EQ_INT(copy[32] == 0xAA, !split);
        }
    }
}

static void test_inplace_rewrite(void)
{
    uint8_t msg[1024];
    size_t n = sample(msg);
    struct pg_stream st;
    struct seen seen = {0};
    pg_stream_init(&st, 1 << 20, "K");
    ASSERT_EQ_INT(pg_stream_feed(&st, msg, n, on_msg, &seen), 0);
    ASSERT_EQ_INT(seen.n, 1);
    ASSERT_EQ_INT(msg[32], 0xAA);       /* the first byte of the backend pid */
    /* split inside K's body: no in-place pointer, bytes untouched */
    n = sample(msg);
    memset(&seen, 0, sizeof seen);
    pg_stream_init(&st, 1 << 20, "K");
    ASSERT_EQ_INT(pg_stream_feed(&st, msg, 35, on_msg, &seen), 0);
    ASSERT_EQ_INT(pg_stream_feed(&st, msg + 35, n - 35, on_msg, &seen), 0);
    ASSERT_EQ_INT(seen.n, 1);
    ASSERT_EQ_INT(seen.inplace, 0);
    ASSERT_EQ_INT(msg[32], 0x01);
}

static void test_bad_lengths(void)
{
    static const uint8_t small[] = {'Q', 0, 0, 0, 3};
    static const uint8_t huge[] = {'Q', 0x7f, 0xff, 0xff, 0xff};
    static const uint8_t negative[] = {'Q', 0x80, 0, 0, 0};
    const uint8_t *cases[] = {small, huge, negative};
    for (int i = 0; i < 3; i++) {
        uint8_t copy[5];
        memcpy(copy, cases[i], 5);
        struct pg_stream st;
        struct seen seen = {0};
        pg_stream_init(&st, 1 << 20, "Q");
        ASSERT_EQ_INT(pg_stream_feed(&st, copy, 5, on_msg, &seen), FERRY_BAD_MSG);
        ASSERT_EQ_INT(seen.n, 0);
    }
    /* exactly the maximum is fine, one more is not */
    uint8_t at_max[5] = {'d', 0, 0, 0x10, 0x00};
    struct pg_stream st;
    struct seen seen = {0};
    pg_stream_init(&st, 0x1000, "");
    ASSERT_EQ_INT(pg_stream_feed(&st, at_max, 5, on_msg, &seen), 0);
    uint8_t over[5] = {'d', 0, 0, 0x10, 0x01};
    pg_stream_init(&st, 0x1000, "");
    ASSERT_EQ_INT(pg_stream_feed(&st, over, 5, on_msg, &seen), FERRY_BAD_MSG);
}

/* A gathered type arrives whole however the chunks split it; other long
 * bodies still come as a prefix; bodies over the limit too. */
struct whole {
    int n;
    uint32_t captured, len;
    int same;
    bool inplace;
};

static uint8_t body_byte(uint32_t i) { return (uint8_t)('a' + i % 26); }

static void on_whole(void *ud, uint8_t type, const uint8_t *body, uint32_t captured, uint32_t len,
                     uint8_t *inplace)
{
    struct whole *w = ud;
    if (type != 'P')
        return;
    /* a contiguous body is whole in place; a split one whole in body */
    const uint8_t *all = inplace ? inplace : body;
    w->n++;
    w->captured = inplace ? len : captured;
    w->len = len;
    w->inplace = inplace != NULL;
    w->same = 1;
    for (uint32_t i = 0; i < w->captured; i++)
        if (all[i] != body_byte(i))
            w->same = 0;
}

static void test_gather_split_bodies(void)
{
    enum { LEN = 1000 };
    uint8_t msg[5 + LEN];
    msg[0] = 'P';
    msg[1] = 0, msg[2] = 0, msg[3] = (LEN + 4) >> 8, msg[4] = (LEN + 4) & 0xff;
    for (uint32_t i = 0; i < LEN; i++)
        msg[5 + i] = body_byte(i);
    for (size_t cut = 1; cut < sizeof msg; cut += 7) {
        struct pg_stream s;
        pg_stream_init(&s, 1 << 20, "P");
        pg_stream_gather(&s, "P", 4096);
        struct whole w = {0};
        ASSERT_EQ_INT(pg_stream_feed(&s, msg, cut, on_whole, &w), 0);
        ASSERT_EQ_INT(pg_stream_feed(&s, msg + cut, sizeof msg - cut, on_whole, &w), 0);
        ASSERT_EQ_INT(w.n, 1);
        ASSERT_EQ_INT(w.captured, LEN);
        ASSERT_TRUE(w.same && w.len == LEN);
        ASSERT_TRUE(w.inplace == (cut <= 5));   /* contiguous only when the body was */
        ASSERT_TRUE(s.whole == NULL);
    }
    /* over the limit, or not a gathered type: the prefix as before */
    struct pg_stream s;
    pg_stream_init(&s, 1 << 20, "P");
    pg_stream_gather(&s, "P", 500);
    struct whole w = {0};
    pg_stream_feed(&s, msg, 300, on_whole, &w);
    pg_stream_feed(&s, msg + 300, sizeof msg - 300, on_whole, &w);
    ASSERT_TRUE(w.n == 1 && w.captured == PG_STREAM_CAPTURE && w.same);
    /* dropped mid-body: freed */
    pg_stream_init(&s, 1 << 20, "P");
    pg_stream_gather(&s, "P", 4096);
    pg_stream_feed(&s, msg, 300, on_whole, &w);
    ASSERT_TRUE(s.whole != NULL);
    pg_stream_free(&s);
    ASSERT_TRUE(s.whole == NULL);
}

static void test_flood_of_tiny_messages(void)
{
    /* 100k Sync messages: scanned without allocation, all delivered */
    size_t n = 100000 * 5;
    uint8_t *buf = malloc(n);
    ASSERT_TRUE(buf != NULL);
    for (size_t i = 0; i < n; i += 5) {
        buf[i] = 'S';
        buf[i + 1] = buf[i + 2] = buf[i + 3] = 0;
        buf[i + 4] = 4;
    }
    struct pg_stream st;
    struct seen seen = {0};
    pg_stream_init(&st, 1 << 20, "S");
    int rc = pg_stream_feed(&st, buf, n, on_msg, &seen);
    free(buf);
    ASSERT_EQ_INT(rc, 0);
    ASSERT_EQ_INT(seen.n, 100000);
}

int main(void)
{
    RUN(test_every_split);
    RUN(test_inplace_rewrite);
    RUN(test_bad_lengths);
    RUN(test_flood_of_tiny_messages);
    RUN(test_gather_split_bodies);
    UNIT_DONE();
}
