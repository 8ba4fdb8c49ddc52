/* The message buffer: byte order of every writer, patching, growth, and the
 * sticky failure once the maximum is passed. */
#include "ferry/wbuf.h"
#include "unit.h"

static void test_writers(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    ferry_wbuf_u8(&b, 0x51);
    ferry_wbuf_u32be(&b, 0);            /* length, patched below */
    ferry_wbuf_u16be(&b, 0x0102);
    ferry_wbuf_u16le(&b, 0x0102);
    ferry_wbuf_u24le(&b, 0x010203);
    ferry_wbuf_u32le(&b, 0x01020304);
    ferry_wbuf_cstr(&b, "ab");
    ferry_wbuf_patch_u32be(&b, 1, (uint32_t)b.len - 1);
    static const uint8_t want[] = {0x51, 0, 0, 0, 18, 1, 2, 2, 1, 3, 2, 1, 4, 3, 2, 1, 'a', 'b', 0};
    ASSERT_TRUE(!b.failed);
    ASSERT_EQ_INT(b.len, sizeof want);
    ASSERT_TRUE(memcmp(b.data, want, sizeof want) == 0);
    ASSERT_EQ_INT(ferry_get_u32be(b.data + 1), 18);
    ASSERT_EQ_INT(ferry_get_u24le(b.data + 9), 0x010203);
    ASSERT_EQ_INT(ferry_get_u32le(b.data + 12), 0x01020304);
    ASSERT_EQ_INT(ferry_get_u16le(b.data + 7), 0x0102);
    ferry_wbuf_free(&b);
}

static void test_growth_and_limit(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 1000);
    for (int i = 0; i < 1000; i++)
        ferry_wbuf_u8(&b, (uint8_t)i);
    ASSERT_TRUE(!b.failed);
    ASSERT_EQ_INT(b.len, 1000);
    ASSERT_EQ_INT(b.data[999], (uint8_t)999);
    ferry_wbuf_u8(&b, 1);               /* one past the maximum */
    ASSERT_TRUE(b.failed);
    ASSERT_EQ_INT(b.len, 1000);
    ferry_wbuf_cstr(&b, "");            /* sticky: nothing more is written */
    ASSERT_EQ_INT(b.len, 1000);
    ferry_wbuf_patch_u32be(&b, 0, 7);   /* nor patched */
    ASSERT_EQ_INT(b.data[0], 0);
    ferry_wbuf_reset(&b);
    ASSERT_TRUE(!b.failed);
    ASSERT_EQ_INT(b.len, 0);
    ferry_wbuf_patch_u24le(&b, 0, 1);   /* out of range: ignored */
    ferry_wbuf_free(&b);
}

int main(void)
{
    RUN(test_writers);
    RUN(test_growth_and_limit);
    UNIT_DONE();
}
