/* CloudWatch GetMetricData (query protocol): the lag request body (a SEARCH
 * expression, byte-equal to botocore's serialization but for "+" / "%20"),
 * reply parsing, the newest datapoint across a SEARCH's several series, the
 * absent-series signal, garbage and truncation. */
#include <string.h>

#include "cloudwatch.h"
#include "unit.h"

/* One query: a SEARCH() on the namespace, metric and cluster identifier
 * (lower-cased), not a MetricStat on a guessed dimension set (cloudwatch.c).
 * Decoded, this is exactly what botocore's query serializer makes of
 * {"Id": "lag", "Expression": "SEARCH(...)"} (it writes spaces as "+"). */
static void test_body_is_a_search_expression(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    const char *ids[] = {"Ferry-Secondary"}, *qids[] = {"lag"};
    ASSERT_EQ_INT(aws_cw_metric_data_body(&b, AWS_CW_LAG_METRIC, ids, qids, 1, 60,
                                          1705319400 /* 11:50Z */, 1705320000 /* 12:00Z */, NULL), 0);
    ferry_wbuf_u8(&b, 0);
    ASSERT_EQ_STR((char *)b.data,
        "Action=GetMetricData&Version=2010-08-01&MetricDataQueries.member.1.Id=lag"
        "&MetricDataQueries.member.1.Expression=SEARCH%28%27Namespace%3D%22AWS%2FRDS%22"
        "%20MetricName%3D%22AuroraGlobalDBReplicationLag%22"
        "%20DBClusterIdentifier%3D%22ferry-secondary%22%27%2C%20%27Maximum%27%2C%2060%29"
        "&StartTime=2024-01-15T11%3A50%3A00Z&EndTime=2024-01-15T12%3A00%3A00Z"
        "&ScanBy=TimestampDescending");
    /* no MetricStat (and so no dimension set) anywhere */
    ASSERT_TRUE(strstr((char *)b.data, "MetricStat") == NULL);
    ASSERT_TRUE(strstr((char *)b.data, "Dimensions") == NULL);
    ferry_wbuf_free(&b);
}

static void test_body_many_clusters(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    const char *ids[] = {"a", "b-2"};
    ASSERT_EQ_INT(aws_cw_metric_data_body(&b, AWS_CW_LAG_METRIC, ids, NULL, 2, 60, 0, 60, "tok"), 0);
    ferry_wbuf_u8(&b, 0);
    const char *s = (char *)b.data;
    ASSERT_TRUE(strstr(s, "MetricDataQueries.member.1.Id=m0&") != NULL);
    ASSERT_TRUE(strstr(s, "MetricDataQueries.member.2.Id=m1&") != NULL);
    ASSERT_TRUE(strstr(s, "member.2.Expression=SEARCH%28%27Namespace%3D%22AWS%2FRDS%22%20MetricName"
                          "%3D%22AuroraGlobalDBReplicationLag%22%20DBClusterIdentifier%3D%22b-2%22") != NULL);
    ASSERT_TRUE(strstr(s, "&NextToken=tok") != NULL);
    ASSERT_EQ_INT(aws_cw_metric_data_body(&b, AWS_CW_LAG_METRIC, ids, NULL, 0, 60, 0, 60, NULL), -1);
    ferry_wbuf_free(&b);
}

/* Identifiers go into a quoted SEARCH term: anything but an RDS identifier
 * (letters, digits, hyphens) is refused rather than escaped. */
static void test_body_refuses_odd_identifiers(void)
{
    const char *bad[] = {"", "a\"b", "a'b", "a b", "a(b)", "a\\b", "a=b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct ferry_wbuf b;
        ferry_wbuf_init(&b, 0);
        const char *ids[] = {"ok-1", bad[i]};
        ASSERT_EQ_INT(aws_cw_metric_data_body(&b, AWS_CW_LAG_METRIC, ids, NULL, 2, 60, 0, 60, NULL), -1);
        ferry_wbuf_free(&b);
    }
}

static const char reply[] =
    "<GetMetricDataResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\">\n"
    "  <GetMetricDataResult>\n"
    "    <MetricDataResults>\n"
    "      <member>\n"
    "        <Timestamps>\n"
    "          <member>2024-01-15T11:59:00Z</member>\n"
    "          <member>2024-01-15T11:58:00Z</member>\n"
    "        </Timestamps>\n"
    "        <StatusCode>Complete</StatusCode>\n"
    "        <Values>\n"
    "          <member>142.0</member>\n"
    "          <member>97.5</member>\n"
    "        </Values>\n"
    "        <Label>AuroraGlobalDBReplicationLag</Label>\n"
    "        <Id>m0</Id>\n"
    "      </member>\n"
    "      <member>\n"
    "        <Timestamps/>\n"
    "        <StatusCode>Complete</StatusCode>\n"
    "        <Values/>\n"
    "        <Label>AuroraGlobalDBReplicationLag</Label>\n"
    "        <Id>m1</Id>\n"
    "      </member>\n"
    "    </MetricDataResults>\n"
    "    <Messages/>\n"
    "  </GetMetricDataResult>\n"
    "  <ResponseMetadata><RequestId>7a7b1c2d-0000-4e5f-8a9b-0c1d2e3f4a5b</RequestId></ResponseMetadata>\n"
    "</GetMetricDataResponse>\n";

static void test_parse_reply(void)
{
    struct aws_metric_data md;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_cw_parse_metric_data(reply, strlen(reply), &md, err), 0);
    ASSERT_EQ_INT(md.n, 2);
    const struct aws_metric_series *s = aws_metric_data_find(&md, "m0");
    ASSERT_TRUE(s != NULL);
    ASSERT_EQ_INT(s->n, 2);
    ASSERT_EQ_INT(s->timestamps[0], 1705319940);
    ASSERT_TRUE(s->values[0] == 142.0 && s->values[1] == 97.5);
    ASSERT_EQ_STR(s->status, "Complete");
    /* The primary's series: empty and Complete — a signal, not an error. */
    const struct aws_metric_series *p = aws_metric_data_find(&md, "m1");
    ASSERT_TRUE(p != NULL);
    ASSERT_EQ_INT(p->n, 0);
    ASSERT_EQ_STR(md.next_token, "");
    ASSERT_TRUE(aws_metric_data_find(&md, "m2") == NULL);
    aws_metric_data_free(&md);
}

/* A SEARCH returns one series per matching metric, all under the query's
 * Id: the newest datapoint wins, its own timestamp comes with it, and at
 * equal times the largest value (the worst lag). */
static const char search_reply[] =
    "<GetMetricDataResponse><GetMetricDataResult><MetricDataResults>"
    "<member><Id>m0</Id><Label>ferry-secondary us-east-1</Label><StatusCode>Complete</StatusCode>"
    "<Timestamps><member>2024-01-15T11:57:00Z</member><member>2024-01-15T11:58:00Z</member>"
    "</Timestamps><Values><member>10</member><member>20</member></Values></member>"
    "<member><Id>m1</Id><Label>other</Label><StatusCode>Complete</StatusCode>"
    "<Timestamps><member>2024-01-15T12:09:00Z</member></Timestamps>"
    "<Values><member>999</member></Values></member>"
    "<member><Id>m0</Id><Label>ferry-secondary</Label><StatusCode>Complete</StatusCode>"
    "<Timestamps><member>2024-01-15T11:58:00Z</member><member>2024-01-15T11:56:00Z</member>"
    "</Timestamps><Values><member>35.5</member><member>50</member></Values></member>"
    "<member><Id>m2</Id><Label>primary</Label><StatusCode>Complete</StatusCode>"
    "<Timestamps/><Values/></member>"
    "</MetricDataResults></GetMetricDataResult></GetMetricDataResponse>";

static void test_newest_across_series(void)
{
    struct aws_metric_data md;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_cw_parse_metric_data(search_reply, strlen(search_reply), &md, err), 0);
    double v = -1;
    int64_t at = -1;
    ASSERT_EQ_INT(aws_cw_newest(&md, "m0", &v, &at), 4);
    ASSERT_EQ_INT(at, 1705319880);      /* 11:58Z, in both series */
    ASSERT_TRUE(v == 35.5);
    ASSERT_EQ_INT(aws_cw_newest(&md, "m1", &v, &at), 1);
    ASSERT_EQ_INT(at, 1705320540);
    ASSERT_TRUE(v == 999.0);
    v = -1, at = -1;
    ASSERT_EQ_INT(aws_cw_newest(&md, "m2", &v, &at), 0);    /* empty: absent */
    ASSERT_EQ_INT(aws_cw_newest(&md, "m3", &v, &at), 0);    /* no series at all: absent */
    ASSERT_TRUE(v == -1 && at == -1);                       /* untouched */
    aws_metric_data_free(&md);
}

static void test_rejects(void)
{
    const char *bad[] = {
        "garbage",
        "<GetMetricDataResponse><GetMetricDataResult><MetricDataResults><member><Id>m0</Id>"
        "<Timestamps><member>2024-01-15T11:59:00Z</member></Timestamps><Values/></member>"
        "</MetricDataResults></GetMetricDataResult></GetMetricDataResponse>",
        "<GetMetricDataResponse><GetMetricDataResult><MetricDataResults><member><Id>m0</Id>"
        "<Timestamps><member>yesterday</member></Timestamps><Values><member>1</member></Values>"
        "</member></MetricDataResults></GetMetricDataResult></GetMetricDataResponse>",
        "<GetMetricDataResponse><GetMetricDataResult><MetricDataResults><member><Id>m0</Id>"
        "<Timestamps><member>2024-01-15T11:59:00Z</member></Timestamps><Values><member>1ms</member>"
        "</Values></member></MetricDataResults></GetMetricDataResult></GetMetricDataResponse>",
        "<DescribeGlobalClustersResponse/>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct aws_metric_data md;
        char err[AWS_ERRMSG_MAX] = "";
        ASSERT_EQ_INT(aws_cw_parse_metric_data(bad[i], strlen(bad[i]), &md, err), -1);
        aws_metric_data_free(&md);
        ASSERT_TRUE(err[0] != '\0');
    }
    for (size_t n = 0; n < strlen(reply) - 1; n++) {
        struct aws_metric_data md;
        char err[AWS_ERRMSG_MAX];
        int rc = aws_cw_parse_metric_data(reply, n, &md, err);
        aws_metric_data_free(&md);
        ASSERT_EQ_INT(rc, -1);
    }
}

int main(void)
{
    RUN(test_body_is_a_search_expression);
    RUN(test_body_many_clusters);
    RUN(test_body_refuses_odd_identifiers);
    RUN(test_parse_reply);
    RUN(test_newest_across_series);
    RUN(test_rejects);
    UNIT_DONE();
}
