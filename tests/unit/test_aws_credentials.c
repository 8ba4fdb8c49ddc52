/* The credentials chain's pure half: source selection from the environment,
 * STS / container / IMDS reply parsing (malformed and truncated too), the
 * STS request body, container-URI rules, token files, and the log-safe key
 * id prefix. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "credentials.h"
#include "unit.h"

static const char *const *env_table;

static const char *fake_getenv(const char *name)
{
    for (const char *const *e = env_table; e && *e; e += 2)
        if (strcmp(e[0], name) == 0)
            return e[1];
    return NULL;
}

static enum aws_cred_source pick(const char *const *table)
{
    static struct aws_cred_env e;
    env_table = table;
    aws_cred_env_read(&e, fake_getenv);
    return aws_cred_env_pick(&e);
}

static void test_chain_order(void)
{
    const char *const all[] = {"AWS_ACCESS_KEY_ID", "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY", "s",
                               "AWS_ROLE_ARN", "arn:aws:iam::1:role/r",
                               "AWS_WEB_IDENTITY_TOKEN_FILE", "/t",
                               "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds", NULL};
    ASSERT_EQ_INT(pick(all), AWS_CRED_ENV);
    ASSERT_EQ_INT(pick(all + 4), AWS_CRED_WEB_IDENTITY);
    const char *const half[] = {"AWS_ACCESS_KEY_ID", "AKIDEXAMPLE", "AWS_ROLE_ARN", "r", NULL};
    ASSERT_EQ_INT(pick(half), AWS_CRED_IMDS);   /* half a key pair, half a web identity */
    ASSERT_EQ_INT(pick(all + 8), AWS_CRED_CONTAINER);
    const char *const full[] = {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials", NULL};
    ASSERT_EQ_INT(pick(full), AWS_CRED_CONTAINER);
    const char *const none[] = {NULL};
    ASSERT_EQ_INT(pick(none), AWS_CRED_IMDS);
    const char *const off[] = {"AWS_EC2_METADATA_DISABLED", "TRUE", NULL};
    ASSERT_EQ_INT(pick(off), AWS_CRED_NONE);
}

static void test_env_credentials(void)
{
    const char *const t[] = {"AWS_ACCESS_KEY_ID", "ASIAEXAMPLE", "AWS_SECRET_ACCESS_KEY", "sek",
                             "AWS_SESSION_TOKEN", "tok", "AWS_DEFAULT_REGION", "eu-west-1", NULL};
    struct aws_cred_env e;
    env_table = t;
    aws_cred_env_read(&e, fake_getenv);
    struct aws_credentials c;
    ASSERT_EQ_INT(aws_creds_from_env(&e, &c), 0);
    ASSERT_EQ_STR(c.access_key_id, "ASIAEXAMPLE");
    ASSERT_EQ_STR(c.session_token, "tok");
    ASSERT_EQ_INT(c.expiration, 0);
    ASSERT_EQ_INT(c.source, AWS_CRED_ENV);
    ASSERT_EQ_STR(e.region, "eu-west-1");
    aws_credentials_clear(&c);
    ASSERT_EQ_STR(c.secret_access_key, "");
}

static const char sts_reply[] =
    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
    "  <AssumeRoleWithWebIdentityResult>\n"
    "    <SubjectFromWebIdentityToken>system:serviceaccount:ferry:ferry</SubjectFromWebIdentityToken>\n"
    "    <Audience>sts.amazonaws.com</Audience>\n"
    "    <AssumedRoleUser>\n"
    "      <Arn>arn:aws:sts::123456789012:assumed-role/ferry-discovery/ferry-1705320000</Arn>\n"
    "      <AssumedRoleId>AROAEXAMPLE:ferry-1705320000</AssumedRoleId>\n"
    "    </AssumedRoleUser>\n"
    "    <Credentials>\n"
    "      <SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>\n"
    "      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY</SecretAccessKey>\n"
    "      <Expiration>2024-01-15T13:00:00Z</Expiration>\n"
    "      <AccessKeyId>ASIAIOSFODNN7EXAMPLE</AccessKeyId>\n"
    "    </Credentials>\n"
    "    <Provider>arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/X</Provider>\n"
    "  </AssumeRoleWithWebIdentityResult>\n"
    "  <ResponseMetadata><RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId></ResponseMetadata>\n"
    "</AssumeRoleWithWebIdentityResponse>\n";

static void test_parse_sts(void)
{
    struct aws_credentials c;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_creds_parse_sts(sts_reply, strlen(sts_reply), &c, err), 0);
    ASSERT_EQ_STR(c.access_key_id, "ASIAIOSFODNN7EXAMPLE");
    ASSERT_EQ_STR(c.secret_access_key, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY");
    ASSERT_EQ_STR(c.session_token, "IQoJb3JpZ2luX2VjEXAMPLE");
    ASSERT_EQ_INT(c.expiration, 1705323600);
    for (size_t n = 0; n < strlen(sts_reply) - 1; n++) {
        ASSERT_EQ_INT(aws_creds_parse_sts(sts_reply, n, &c, err), -1);
        ASSERT_EQ_STR(c.access_key_id, "");     /* nothing half-filled survives */
    }
    const char *no_creds = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult/>"
                           "</AssumeRoleWithWebIdentityResponse>";
    ASSERT_EQ_INT(aws_creds_parse_sts(no_creds, strlen(no_creds), &c, err), -1);
    ASSERT_TRUE(strstr(err, "Credentials") != NULL);
}

static void test_sts_body(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    ASSERT_EQ_INT(aws_sts_web_identity_body(&b, "arn:aws:iam::1:role/r", "ferry-1", "ey.J+/=", 7), 0);
    ferry_wbuf_u8(&b, 0);
    ASSERT_EQ_STR((char *)b.data, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15"
                                  "&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&RoleSessionName=ferry-1"
                                  "&WebIdentityToken=ey.J%2B%2F%3D");
    ferry_wbuf_free(&b);
}

static const char imds_json[] =
    "{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2024-01-15T11:55:00Z\",\n"
    "  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"ASIAIMDSEXAMPLE\",\n"
    "  \"SecretAccessKey\" : \"imdssecret\",\n  \"Token\" : \"imdstoken\",\n"
    "  \"Expiration\" : \"2024-01-15T18:00:00Z\"\n}";

static void test_parse_json_creds(void)
{
    struct aws_credentials c;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_creds_parse_json(imds_json, strlen(imds_json), &c, err), 0);
    ASSERT_EQ_STR(c.access_key_id, "ASIAIMDSEXAMPLE");
    ASSERT_EQ_STR(c.session_token, "imdstoken");
    ASSERT_EQ_INT(c.expiration, 1705341600);
    /* Container form: no Code. */
    const char *ecs = "{\"AccessKeyId\":\"ASIAECS\",\"SecretAccessKey\":\"s\",\"Token\":\"t\","
                      "\"Expiration\":\"2024-01-15T18:00:00Z\",\"RoleArn\":\"arn:aws:iam::1:role/x\"}";
    ASSERT_EQ_INT(aws_creds_parse_json(ecs, strlen(ecs), &c, err), 0);
    ASSERT_EQ_STR(c.access_key_id, "ASIAECS");
    for (size_t n = 0; n < strlen(imds_json) - 1; n++)
        ASSERT_EQ_INT(aws_creds_parse_json(imds_json, n, &c, err), -1);
    const char *bad[] = {
        "[]", "{}", "{\"Code\":\"Failure\",\"AccessKeyId\":\"a\",\"SecretAccessKey\":\"b\"}",
        "{\"AccessKeyId\":\"a\"}", "{\"AccessKeyId\":1,\"SecretAccessKey\":\"b\"}",
        "{\"AccessKeyId\":\"a\",\"SecretAccessKey\":\"b\",\"Expiration\":\"soon\"}",
        "{\"AccessKeyId\":\"a\",\"AccessKeyId\":\"b\",\"SecretAccessKey\":\"b\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        ASSERT_EQ_INT(aws_creds_parse_json(bad[i], strlen(bad[i]), &c, err), -1);
        ASSERT_TRUE(err[0] != '\0');
        ASSERT_TRUE(strstr(err, "imdssecret") == NULL);
    }
}

static void test_imds_role(void)
{
    char role[64], err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_imds_parse_role("ferry-node-role\n", 16, role, sizeof role, err), 0);
    ASSERT_EQ_STR(role, "ferry-node-role");
    ASSERT_EQ_INT(aws_imds_parse_role("  \n", 3, role, sizeof role, err), -1);
    ASSERT_EQ_INT(aws_imds_parse_role("../etc", 6, role, sizeof role, err), -1);
}

static void test_container_uri_rules(void)
{
    ASSERT_TRUE(aws_container_uri_allowed("http://169.254.170.2/v2/credentials/x"));
    ASSERT_TRUE(aws_container_uri_allowed("http://169.254.170.23/v1/credentials"));
    ASSERT_TRUE(aws_container_uri_allowed("http://[fd00:ec2::23]/v1/credentials"));
    ASSERT_TRUE(aws_container_uri_allowed("http://127.0.0.1:8080/creds"));
    ASSERT_TRUE(aws_container_uri_allowed("http://localhost/creds"));
    ASSERT_TRUE(aws_container_uri_allowed("https://creds.example.com/x"));
    ASSERT_TRUE(!aws_container_uri_allowed("http://169.254.170.20/x"));
    ASSERT_TRUE(!aws_container_uri_allowed("http://localhost.evil.com/x"));
    ASSERT_TRUE(!aws_container_uri_allowed("http://10.0.0.1/x"));
    ASSERT_TRUE(!aws_container_uri_allowed("file:///etc/passwd"));
}

static void test_token_file(void)
{
    char path[] = "/tmp/ferry-aws-token-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ_INT(write(fd, "eyJhbGciOi.token\n", 17), 17);
    close(fd);
    char buf[64];
    ASSERT_EQ_INT(aws_read_token_file(path, buf, sizeof buf), 0);
    ASSERT_EQ_STR(buf, "eyJhbGciOi.token");
    char tiny[8];
    ASSERT_TRUE(aws_read_token_file(path, tiny, sizeof tiny) < 0);
    unlink(path);
    ASSERT_TRUE(aws_read_token_file(path, buf, sizeof buf) < 0);
}

static void test_akid_prefix(void)
{
    char p[16];
    aws_akid_prefix("ASIAIOSFODNN7EXAMPLE", p);
    ASSERT_EQ_STR(p, "ASIAIOSF...");
    aws_akid_prefix("AKID", p);
    ASSERT_EQ_STR(p, "AKID");
}

int main(void)
{
    RUN(test_chain_order);
    RUN(test_env_credentials);
    RUN(test_parse_sts);
    RUN(test_sts_body);
    RUN(test_parse_json_creds);
    RUN(test_imds_role);
    RUN(test_container_uri_rules);
    RUN(test_token_file);
    RUN(test_akid_prefix);
    UNIT_DONE();
}
