/* AWS error replies: parsing <ErrorResponse> (and the EC2 form) and the
 * retry classification of reference/aws.md §10. */
#include <string.h>

#include "awserror.h"
#include "unit.h"

#define ERR_DOC(type, code, msg)                                                       \
    "<ErrorResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\">"               \
    "<Error><Type>" type "</Type><Code>" code "</Code><Message>" msg "</Message></Error>" \
    "<RequestId>5f1b4a2e-8d1c-4b0e-9a53-0c2b8b1f7d11</RequestId></ErrorResponse>"

static enum aws_err_class classify(long status, const char *body)
{
    struct aws_error e = {0};
    (void)aws_error_parse(body, strlen(body), status, &e);
    return aws_error_classify(&e);
}

static void test_parse_error_response(void)
{
    const char *b = ERR_DOC("Sender", "AccessDenied",
                            "User: arn:aws:sts::123456789012:assumed-role/ferry/i-0abc is not "
                            "authorized to perform: rds:DescribeGlobalClusters");
    struct aws_error e = {0};
    ASSERT_EQ_INT(aws_error_parse(b, strlen(b), 403, &e), 0);
    ASSERT_EQ_INT(e.http_status, 403);
    ASSERT_EQ_STR(e.type, "Sender");
    ASSERT_EQ_STR(e.code, "AccessDenied");
    ASSERT_TRUE(strstr(e.message, "rds:DescribeGlobalClusters") != NULL);
    ASSERT_EQ_STR(e.request_id, "5f1b4a2e-8d1c-4b0e-9a53-0c2b8b1f7d11");
    ASSERT_EQ_INT(aws_error_classify(&e), AWS_ERR_ACCESS_DENIED);
}

static void test_parse_ec2_style(void)
{
    const char *b = "<Response><Errors><Error><Code>UnauthorizedOperation</Code>"
                    "<Message>You are not authorized</Message></Error></Errors>"
                    "<RequestID>abc</RequestID></Response>";
    struct aws_error e = {0};
    ASSERT_EQ_INT(aws_error_parse(b, strlen(b), 403, &e), 0);
    ASSERT_EQ_STR(e.code, "UnauthorizedOperation");
    ASSERT_EQ_STR(e.request_id, "abc");
    ASSERT_EQ_INT(aws_error_classify(&e), AWS_ERR_ACCESS_DENIED);
}

static void test_garbage_and_truncated(void)
{
    struct aws_error e = {0};
    const char *garbage = "<html><body>502 Bad Gateway</body></html";
    ASSERT_EQ_INT(aws_error_parse(garbage, strlen(garbage), 502, &e), -1);
    ASSERT_EQ_STR(e.code, "");
    ASSERT_EQ_INT(aws_error_classify(&e), AWS_ERR_TRANSIENT);   /* by status */
    const char *full = ERR_DOC("Sender", "Throttling", "Rate exceeded");
    for (size_t n = 0; n < strlen(full); n += 7) {
        struct aws_error t = {0};
        if (aws_error_parse(full, n, 400, &t) == 0)
            ASSERT_EQ_STR(t.code, "Throttling");    /* never a half-read code */
    }
    struct aws_error t = {0};
    ASSERT_EQ_INT(aws_error_parse("", 0, 400, &t), -1);
    ASSERT_EQ_INT(aws_error_classify(&t), AWS_ERR_BAD_RESPONSE);
}

static void test_classification_table(void)
{
    struct {
        long status;
        const char *code, *msg;
        enum aws_err_class want;
    } rows[] = {
        {400, "Throttling", "Rate exceeded", AWS_ERR_THROTTLED},
        {400, "ThrottlingException", "", AWS_ERR_THROTTLED},
        {503, "RequestLimitExceeded", "", AWS_ERR_THROTTLED},
        {429, "TooManyRequestsException", "", AWS_ERR_THROTTLED},
        {500, "InternalFailure", "", AWS_ERR_TRANSIENT},
        {503, "ServiceUnavailable", "", AWS_ERR_TRANSIENT},
        {400, "IDPCommunicationError", "", AWS_ERR_TRANSIENT},
        {400, "ExpiredToken", "The security token included in the request is expired",
         AWS_ERR_EXPIRED_CREDS},
        {400, "ExpiredTokenException", "", AWS_ERR_EXPIRED_CREDS},
        {400, "RequestExpired", "", AWS_ERR_CLOCK_SKEW},
        {403, "SignatureDoesNotMatch", "Signature expired: 20240115T120000Z is now earlier than",
         AWS_ERR_CLOCK_SKEW},
        {403, "SignatureDoesNotMatch", "The request signature we calculated does not match",
         AWS_ERR_AUTH},
        {403, "InvalidClientTokenId", "", AWS_ERR_AUTH},
        {403, "AccessDenied", "", AWS_ERR_ACCESS_DENIED},
        {400, "AccessDeniedException", "", AWS_ERR_ACCESS_DENIED},
        {404, "GlobalClusterNotFoundFault", "", AWS_ERR_CALLER},
        {400, "InvalidParameterValue", "", AWS_ERR_CALLER},
        {429, "", "", AWS_ERR_THROTTLED},
        {504, "", "", AWS_ERR_TRANSIENT},
        {404, "", "", AWS_ERR_BAD_RESPONSE},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct aws_error e = {.http_status = rows[i].status};
        snprintf(e.code, sizeof e.code, "%s", rows[i].code);
        snprintf(e.message, sizeof e.message, "%s", rows[i].msg);
        if (aws_error_classify(&e) != rows[i].want)
            fprintf(stderr, "  row %zu (%s)\n", i, rows[i].code);
        ASSERT_EQ_INT(aws_error_classify(&e), rows[i].want);
    }
    ASSERT_EQ_INT(classify(400, ERR_DOC("Sender", "Throttling", "Rate exceeded")), AWS_ERR_THROTTLED);
}

static void test_retryable(void)
{
    ASSERT_TRUE(aws_err_class_retryable(AWS_ERR_THROTTLED));
    ASSERT_TRUE(aws_err_class_retryable(AWS_ERR_TRANSPORT));
    ASSERT_TRUE(aws_err_class_retryable(AWS_ERR_EXPIRED_CREDS));
    ASSERT_TRUE(!aws_err_class_retryable(AWS_ERR_ACCESS_DENIED));
    ASSERT_TRUE(!aws_err_class_retryable(AWS_ERR_BAD_RESPONSE));
    ASSERT_EQ_STR(aws_err_class_name(AWS_ERR_ACCESS_DENIED), "access_denied");
}

int main(void)
{
    RUN(test_parse_error_response);
    RUN(test_parse_ec2_style);
    RUN(test_garbage_and_truncated);
    RUN(test_classification_table);
    RUN(test_retryable);
    UNIT_DONE();
}
