/* SigV4 known-answer tests: every vector in reference/aws.md §9 (V1-V8) and
 * further cases from AWS's published aws-sig-v4-test-suite (as maintained in
 * awslabs/aws-c-auth tests/aws-signing-test-suite/v4/<case>), byte-exact.
 */
#include <stdint.h>
#include <string.h>

#include "sigv4.h"
#include "unit.h"

#define AKID "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define FORM_CT "application/x-www-form-urlencoded; charset=utf-8"

static const struct aws_sigv4_key suite_key = {AKID, SECRET};

static char *cstr(const struct ferry_wbuf *b)
{
    static char s[4096];
    size_t n = b->len < sizeof s - 1 ? b->len : sizeof s - 1;
    memcpy(s, b->data, n);
    s[n] = '\0';
    return s;
}

static void hexstr(const uint8_t *k, char out[65])
{
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", k[i]);
}

/* Signs a suite request (example.amazonaws.com, 20150830T123600Z, service
 * "service") with the given method, query and extra headers. */
static int sign_suite(const char *method, const struct aws_kv *q, size_t nq,
                      const struct aws_kv *extra, size_t nextra, struct aws_sigv4_out *out)
{
    struct aws_kv h[8] = {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", "20150830T123600Z"}};
    size_t nh = 2;
    for (size_t i = 0; i < nextra; i++)
        h[nh++] = extra[i];
    struct aws_sigv4_request r = {
        .method = method, .path = "/", .query = q, .nquery = nq, .headers = h, .nheaders = nh,
        .region = "us-east-1", .service = "service", .amz_date = "20150830T123600Z",
    };
    return aws_sigv4_sign(&r, &suite_key, out);
}

static void test_suite_signing_key(void)
{
    uint8_t k[32];
    char h[65];
    ASSERT_EQ_INT(aws_sigv4_signing_key(SECRET, "20150830", "us-east-1", "service", k), 0);
    hexstr(k, h);
    ASSERT_EQ_STR(h, "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75");
}

static void test_v4_signing_key_iam(void)
{
    uint8_t k[32];
    char h[65];
    ASSERT_EQ_INT(aws_sigv4_signing_key(SECRET, "20120215", "us-east-1", "iam", k), 0);
    hexstr(k, h);
    ASSERT_EQ_STR(h, "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d");
}

static void test_v1_get_vanilla(void)
{
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", NULL, 0, NULL, 0, &o), 0);
    ASSERT_EQ_STR(cstr(&o.canonical_request),
                  "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
                  "host;x-amz-date\n"
                  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    ASSERT_EQ_STR(cstr(&o.string_to_sign),
                  "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
                  "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
    ASSERT_EQ_STR((char *)o.authorization.data,
                  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                  "SignedHeaders=host;x-amz-date, "
                  "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
    aws_sigv4_out_free(&o);
}

/* The last line of the string to sign is the canonical request's hash. */
static const char *cr_hash(struct aws_sigv4_out *o)
{
    char *s = cstr(&o->string_to_sign);
    char *nl = strrchr(s, '\n');
    return nl ? nl + 1 : "";
}

static void test_v2_query_order_key_case(void)
{
    struct aws_kv q[] = {{"Param2", "value2"}, {"Param1", "value1"}};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", q, 2, NULL, 0, &o), 0);
    ASSERT_TRUE(strstr(cstr(&o.canonical_request), "\n/\nParam1=value1&Param2=value2\n") != NULL);
    ASSERT_EQ_STR(cr_hash(&o), "816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0");
    ASSERT_EQ_STR(o.signature, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
    aws_sigv4_out_free(&o);
}

static void test_v3_post_vanilla(void)
{
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("POST", NULL, 0, NULL, 0, &o), 0);
    ASSERT_EQ_STR(cr_hash(&o), "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87");
    ASSERT_EQ_STR(o.signature, "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
    aws_sigv4_out_free(&o);
}

/* Suite cases beyond the reference's three (aws-c-auth copies). */
static void test_suite_header_value_trim(void)
{
    struct aws_kv h[] = {{"My-Header1", " value1"}, {"My-Header2", " \"a   b   c\""}};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", NULL, 0, h, 2, &o), 0);
    ASSERT_TRUE(strstr(cstr(&o.canonical_request), "my-header1:value1\nmy-header2:\"a b c\"\n"));
    ASSERT_EQ_STR((char *)o.signed_headers.data, "host;my-header1;my-header2;x-amz-date");
    ASSERT_EQ_STR(o.signature, "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736");
    aws_sigv4_out_free(&o);
}

static void test_suite_header_key_duplicate(void)
{
    struct aws_kv h[] = {{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", NULL, 0, h, 3, &o), 0);
    ASSERT_TRUE(strstr(cstr(&o.canonical_request), "my-header1:value2,value2,value1\n"));
    ASSERT_EQ_STR(o.signature, "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea");
    aws_sigv4_out_free(&o);
}

static void test_suite_query_unreserved(void)
{
    const char *u = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    struct aws_kv q[] = {{u, u}};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", q, 1, NULL, 0, &o), 0);
    ASSERT_EQ_STR(o.signature, "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197");
    aws_sigv4_out_free(&o);
}

static void test_suite_utf8_query(void)
{
    struct aws_kv q[] = {{"\xe1\x88\xb4", "bar"}};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", q, 1, NULL, 0, &o), 0);
    ASSERT_TRUE(strstr(cstr(&o.canonical_request), "\n%E1%88%B4=bar\n"));
    ASSERT_EQ_STR(o.signature, "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04");
    aws_sigv4_out_free(&o);
}

static void test_suite_session_token(void)
{
    struct aws_kv h[] = {{"X-Amz-Security-Token",
                          "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"}};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_suite("GET", NULL, 0, h, 1, &o), 0);
    ASSERT_EQ_STR((char *)o.signed_headers.data, "host;x-amz-date;x-amz-security-token");
    ASSERT_EQ_STR(o.signature, "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8");
    aws_sigv4_out_free(&o);
}

/* V5-V7: query-protocol POSTs signed as ferry sends them. */
static int sign_post(const char *host, const char *region, const char *service, const char *body,
                     const char *token, struct aws_sigv4_out *out)
{
    struct aws_kv h[4] = {{"Content-Type", FORM_CT}, {"Host", host},
                          {"X-Amz-Date", "20240115T120000Z"}};
    size_t nh = 3;
    if (token)
        h[nh++] = (struct aws_kv){"X-Amz-Security-Token", token};
    struct aws_sigv4_request r = {
        .method = "POST", .path = "/", .headers = h, .nheaders = nh, .body = body,
        .body_len = strlen(body), .region = region, .service = service,
        .amz_date = "20240115T120000Z",
    };
    return aws_sigv4_sign(&r, &suite_key, out);
}

#define V5_BODY "Action=DescribeGlobalClusters&Version=2014-10-31&GlobalClusterIdentifier=ferry-global"

static void test_v5_rds_describe_global_clusters(void)
{
    char h[65];
    aws_sha256_hex(V5_BODY, strlen(V5_BODY), h);
    ASSERT_EQ_STR(h, "f46942072053d72aa3d8f0186fa5d0deae600151c470d70164b38fb8527b4a56");
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_post("rds.us-east-1.amazonaws.com", "us-east-1", "rds", V5_BODY, NULL, &o), 0);
    ASSERT_EQ_STR(cstr(&o.canonical_request),
                  "POST\n/\n\n"
                  "content-type:application/x-www-form-urlencoded; charset=utf-8\n"
                  "host:rds.us-east-1.amazonaws.com\n"
                  "x-amz-date:20240115T120000Z\n\n"
                  "content-type;host;x-amz-date\n"
                  "f46942072053d72aa3d8f0186fa5d0deae600151c470d70164b38fb8527b4a56");
    ASSERT_EQ_STR(cr_hash(&o), "a0fc1e4d44c7ad8113d136ad350867ad3e43de8fd661acc291e7c807f6ede133");
    ASSERT_EQ_STR((char *)o.authorization.data,
                  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240115/us-east-1/rds/aws4_request, "
                  "SignedHeaders=content-type;host;x-amz-date, "
                  "Signature=35926bdc1a6332752273f00f5ede3023ca1c0c51d5fe2ccb861764f7f7b7c0a5");
    aws_sigv4_out_free(&o);
}

static void test_v6_rds_with_session_token(void)
{
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_post("rds.us-east-1.amazonaws.com", "us-east-1", "rds", V5_BODY,
                            "FQoGZXIvYXdzEXAMPLETOKEN", &o), 0);
    ASSERT_EQ_STR(cr_hash(&o), "5d2703cd5e1e9b133f90bec8cc67f64c4336e22465fb178b23ba1723de2f8d23");
    ASSERT_EQ_STR((char *)o.signed_headers.data, "content-type;host;x-amz-date;x-amz-security-token");
    ASSERT_EQ_STR(o.signature, "9569b99f54b097f4a0d4eec0d6b7217b5e76c4e295075687d6c4b19effe4ee79");
    aws_sigv4_out_free(&o);
}

#define V7_BODY                                                                          \
    "Action=GetMetricData&Version=2010-08-01&MetricDataQueries.member.1.Id=lag"          \
    "&MetricDataQueries.member.1.MetricStat.Metric.Namespace=AWS%2FRDS"                  \
    "&MetricDataQueries.member.1.MetricStat.Metric.MetricName=AuroraGlobalDBReplicationLag" \
    "&MetricDataQueries.member.1.MetricStat.Metric.Dimensions.member.1.Name=DBClusterIdentifier" \
    "&MetricDataQueries.member.1.MetricStat.Metric.Dimensions.member.1.Value=ferry-secondary" \
    "&MetricDataQueries.member.1.MetricStat.Period=60"                                   \
    "&MetricDataQueries.member.1.MetricStat.Stat=Maximum"                                \
    "&StartTime=2024-01-15T11%3A50%3A00Z&EndTime=2024-01-15T12%3A00%3A00Z"               \
    "&ScanBy=TimestampDescending"

static void test_v7_cloudwatch_get_metric_data(void)
{
    char h[65];
    aws_sha256_hex(V7_BODY, strlen(V7_BODY), h);
    ASSERT_EQ_STR(h, "33e918d9dc7465b5fc5d570ba1409d580cc1d0b0ac503953a7abc314ce68f566");
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(sign_post("monitoring.eu-west-1.amazonaws.com", "eu-west-1", "monitoring",
                            V7_BODY, NULL, &o), 0);
    ASSERT_EQ_STR(cr_hash(&o), "7e577a6b5cf3dfc00255e838e791830b0d7207edc838ee4489a1e18ddd9f2758");
    ASSERT_EQ_STR((char *)o.signed_headers.data, "content-type;host;x-amz-date");
    ASSERT_EQ_STR(o.signature, "c848f924b13b3384760fd1f0f2fa1f70f0af27525d5e78456a60e206f0fcfdbe");
    aws_sigv4_out_free(&o);
}

#define V8_HOST "ferry-primary.cluster-abc123xyz.us-east-1.rds.amazonaws.com"

static void test_v8_rds_iam_token(void)
{
    struct ferry_wbuf t;
    ferry_wbuf_init(&t, 0);
    ASSERT_EQ_INT(aws_rds_auth_token(V8_HOST, 5432, "ferry_app", "us-east-1", &suite_key, NULL,
                                     "20240115T120000Z", &t), 0);
    char want[1024];
    snprintf(want, sizeof want,
             "%s:5432/?Action=connect&DBUser=ferry_app&X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIDEXAMPLE%%2F20240115%%2Fus-east-1%%2Frds-db%%2Faws4_request"
             "&X-Amz-Date=20240115T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=e14f51424d5e4db59237ceecd2e2b3eb89cae012a48e21482bda8818d9740d87",
             V8_HOST);
    ASSERT_EQ_STR((char *)t.data, want);
    ferry_wbuf_free(&t);
}

static void test_v8_rds_iam_token_with_session_token(void)
{
    struct ferry_wbuf t;
    ferry_wbuf_init(&t, 0);
    ASSERT_EQ_INT(aws_rds_auth_token(V8_HOST, 5432, "ferry_app", "us-east-1", &suite_key,
                                     "FQoGZXIvYXdzEXAMPLETOKEN", "20240115T120000Z", &t), 0);
    const char *s = (const char *)t.data;
    ASSERT_TRUE(strstr(s, "&X-Amz-Expires=900&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLETOKEN"
                          "&X-Amz-SignedHeaders=host&") != NULL);
    ASSERT_TRUE(strstr(s, "X-Amz-Signature=92477cf7cec43fa676f32740d5dc30e2f3690a5e04f12241bb94458bf2502e37") != NULL);
    ferry_wbuf_free(&t);
}

static void test_rejects_bad_input(void)
{
    struct aws_kv h[] = {{"X-Amz-Date", "20150830T123600Z"}};     /* no host */
    struct aws_sigv4_request r = {.method = "GET", .headers = h, .nheaders = 1,
                                  .region = "us-east-1", .service = "s",
                                  .amz_date = "20150830T123600Z"};
    struct aws_sigv4_out o;
    ASSERT_EQ_INT(aws_sigv4_sign(&r, &suite_key, &o), -1);
    aws_sigv4_out_free(&o);
    struct aws_kv h2[] = {{"Host", "x"}};
    r.headers = h2;
    r.amz_date = "2015-08-30T12:36:00Z";
    ASSERT_EQ_INT(aws_sigv4_sign(&r, &suite_key, &o), -1);
    aws_sigv4_out_free(&o);
}

int main(void)
{
    RUN(test_suite_signing_key);
    RUN(test_v4_signing_key_iam);
    RUN(test_v1_get_vanilla);
    RUN(test_v2_query_order_key_case);
    RUN(test_v3_post_vanilla);
    RUN(test_suite_header_value_trim);
    RUN(test_suite_header_key_duplicate);
    RUN(test_suite_query_unreserved);
    RUN(test_suite_utf8_query);
    RUN(test_suite_session_token);
    RUN(test_v5_rds_describe_global_clusters);
    RUN(test_v6_rds_with_session_token);
    RUN(test_v7_cloudwatch_get_metric_data);
    RUN(test_v8_rds_iam_token);
    RUN(test_v8_rds_iam_token_with_session_token);
    RUN(test_rejects_bad_input);
    UNIT_DONE();
}
