/* Form encoding (query-protocol bodies), RFC 3986 percent-encoding and the
 * AWS time formats. */
#include <stdint.h>
#include <string.h>

#include "form.h"
#include "timefmt.h"
#include "unit.h"

static const char *str(struct ferry_wbuf *b)
{
    ferry_wbuf_u8(b, '\0');
    b->len--;
    return (const char *)b->data;
}

static void test_uri_encode(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    const char *in = "a-_.~Z9 /:+=&\xe1\x88\xb4";
    aws_uri_encode(&b, in, strlen(in));
    ASSERT_EQ_STR(str(&b), "a-_.~Z9%20%2F%3A%2B%3D%26%E1%88%B4");
    ferry_wbuf_free(&b);
}

static void test_form_body(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    aws_form_begin(&b, "DescribeGlobalClusters", "2014-10-31");
    aws_form_add(&b, "GlobalClusterIdentifier", "ferry-global");
    aws_form_addf(&b, "x y", "Filters.Filter.%d.Values.Value.%d", 1, 2);
    ASSERT_TRUE(!b.failed);
    ASSERT_EQ_STR(str(&b), "Action=DescribeGlobalClusters&Version=2014-10-31"
                           "&GlobalClusterIdentifier=ferry-global&Filters.Filter.1.Values.Value.2=x%20y");
    ferry_wbuf_free(&b);
}

static void test_form_sticky_failure(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 16);
    aws_form_begin(&b, "DescribeGlobalClusters", "2014-10-31");
    aws_form_add(&b, "A", "b");
    ASSERT_TRUE(b.failed);
    ferry_wbuf_free(&b);
}

static void test_time_formats(void)
{
    char d[AWS_AMZ_DATE_LEN + 1], iso[AWS_ISO8601_LEN + 1];
    aws_amz_date(1705320000, d);            /* 2024-01-15T12:00:00Z */
    ASSERT_EQ_STR(d, "20240115T120000Z");
    aws_iso8601(1705319400, iso);
    ASSERT_EQ_STR(iso, "2024-01-15T11:50:00Z");
}

static void test_parse_iso8601(void)
{
    int64_t t = 0;
    ASSERT_EQ_INT(aws_parse_iso8601("2024-01-15T12:00:00Z", &t), 0);
    ASSERT_EQ_INT(t, 1705320000);
    ASSERT_EQ_INT(aws_parse_iso8601("2024-01-15T12:00:00.123Z", &t), 0);
    ASSERT_EQ_INT(t, 1705320000);
    ASSERT_EQ_INT(aws_parse_iso8601("2024-01-15T13:00:00+01:00", &t), 0);
    ASSERT_EQ_INT(t, 1705320000);
    ASSERT_EQ_INT(aws_parse_iso8601("2024-01-15T12:00:00+0000", &t), 0);
    ASSERT_EQ_INT(t, 1705320000);
    const char *bad[] = {"", "2024-01-15", "2024-01-15T12:00:00", "2024-13-15T12:00:00Z",
                         "2024-01-15T12:00:00Zjunk", "2024-01-15T12:00Z", "yesterday",
                         "2024-01-15T12:00:00.Z"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ASSERT_EQ_INT(aws_parse_iso8601(bad[i], &t), -1);
}

int main(void)
{
    RUN(test_uri_encode);
    RUN(test_form_body);
    RUN(test_form_sticky_failure);
    RUN(test_time_formats);
    RUN(test_parse_iso8601);
    UNIT_DONE();
}
