/* The credentials chain's pure half: which source the environment selects,
 * and the wire formats of STS (XML), container credentials and IMDS (JSON).
 * Separate from the transport (credprovider.c) so that every parser is unit
 * tested with malformed and truncated bodies and fuzzed.
 */
#include "credentials.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "form.h"
#include "timefmt.h"

static void env_copy(char *dst, size_t n, const char *(*get)(const char *), const char *name)
{
    const char *v = get(name);
    dst[0] = '\0';
    if (v && strlen(v) < n)
        strcpy(dst, v);
}

#define ENV(field, name) env_copy(e->field, sizeof e->field, get, name)

void aws_cred_env_read(struct aws_cred_env *e, const char *(*get)(const char *name))
{
    memset(e, 0, sizeof *e);
    ENV(access_key_id, "AWS_ACCESS_KEY_ID");
    ENV(secret_access_key, "AWS_SECRET_ACCESS_KEY");
    ENV(session_token, "AWS_SESSION_TOKEN");
    ENV(role_arn, "AWS_ROLE_ARN");
    ENV(web_identity_token_file, "AWS_WEB_IDENTITY_TOKEN_FILE");
    ENV(role_session_name, "AWS_ROLE_SESSION_NAME");
    ENV(sts_endpoint, "AWS_ENDPOINT_URL_STS");
    ENV(container_full_uri, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    ENV(container_relative_uri, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    ENV(container_auth_token, "AWS_CONTAINER_AUTHORIZATION_TOKEN");
    ENV(container_auth_token_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    ENV(imds_endpoint, "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    ENV(region, "AWS_REGION");
    if (!e->region[0])
        ENV(region, "AWS_DEFAULT_REGION");
    const char *d = get("AWS_EC2_METADATA_DISABLED");
    e->imds_disabled = d && strcasecmp(d, "true") == 0;
}

enum aws_cred_source aws_cred_env_pick(const struct aws_cred_env *e)
{
    if (e->access_key_id[0] && e->secret_access_key[0])
        return AWS_CRED_ENV;
    if (e->web_identity_token_file[0] && e->role_arn[0])
        return AWS_CRED_WEB_IDENTITY;
    if (e->container_full_uri[0] || e->container_relative_uri[0])
        return AWS_CRED_CONTAINER;
    return e->imds_disabled ? AWS_CRED_NONE : AWS_CRED_IMDS;
}

int aws_creds_from_env(const struct aws_cred_env *e, struct aws_credentials *out)
{
    aws_credentials_clear(out);
    if (!e->access_key_id[0] || !e->secret_access_key[0])
        return -1;
    strcpy(out->access_key_id, e->access_key_id);
    strcpy(out->secret_access_key, e->secret_access_key);
    strcpy(out->session_token, e->session_token);
    out->source = AWS_CRED_ENV;
    return 0;
}

int aws_sts_web_identity_body(struct ferry_wbuf *b, const char *role_arn, const char *session_name,
                              const char *token, size_t token_len)
{
    aws_form_begin(b, "AssumeRoleWithWebIdentity", AWS_STS_VERSION);
    aws_form_add(b, "RoleArn", role_arn);
    aws_form_add(b, "RoleSessionName", session_name);
    ferry_wbuf_put(b, "&WebIdentityToken=", 18);
    aws_uri_encode(b, token, token_len);
    return b->failed ? -1 : 0;
}

/* Copies src into a secret/ID field; -1 with err naming the field if it is
 * missing or does not fit. */
static int set_field(char *dst, size_t n, const char *src, const char *name,
                     char err[AWS_ERRMSG_MAX])
{
    if (!src || !*src) {
        snprintf(err, AWS_ERRMSG_MAX, "%s missing", name);
        return -1;
    }
    if (strlen(src) >= n) {
        snprintf(err, AWS_ERRMSG_MAX, "%s longer than %zu bytes", name, n - 1);
        return -1;
    }
    strcpy(dst, src);
    return 0;
}

static int set_expiration(struct aws_credentials *out, const char *s, char err[AWS_ERRMSG_MAX])
{
    if (!s || !*s) {
        out->expiration = 0;
        return 0;
    }
    if (aws_parse_iso8601(s, &out->expiration) < 0) {
        snprintf(err, AWS_ERRMSG_MAX, "Expiration is not an ISO-8601 time");
        return -1;
    }
    return 0;
}

int aws_creds_parse_sts(const void *body, size_t len, struct aws_credentials *out,
                        char err[AWS_ERRMSG_MAX])
{
    aws_credentials_clear(out);
    xmlDocPtr doc = aws_xml_parse(body, len, err);
    if (!doc)
        return -1;
    int rc = -1;
    xmlNodePtr res = aws_xml_result(doc, "AssumeRoleWithWebIdentity", err);
    xmlNodePtr c = aws_xml_child(res, "Credentials");
    char exp[64];
    if (!c) {
        if (res)
            snprintf(err, AWS_ERRMSG_MAX, "STS reply without Credentials");
        goto done;
    }
    if (aws_xml_text(c, "AccessKeyId", out->access_key_id, sizeof out->access_key_id, err) <= 0 ||
        aws_xml_text(c, "SecretAccessKey", out->secret_access_key, sizeof out->secret_access_key, err) <= 0 ||
        aws_xml_text(c, "SessionToken", out->session_token, sizeof out->session_token, err) <= 0 ||
        aws_xml_text(c, "Expiration", exp, sizeof exp, err) <= 0) {
        snprintf(err, AWS_ERRMSG_MAX, "STS Credentials incomplete or too long");
        goto done;
    }
    rc = set_expiration(out, exp, err);
done:
    xmlFreeDoc(doc);
    if (rc < 0)
        aws_credentials_clear(out);
    return rc;
}

static const char *json_str(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

int aws_creds_parse_json(const void *body, size_t len, struct aws_credentials *out,
                         char err[AWS_ERRMSG_MAX])
{
    aws_credentials_clear(out);
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!o || !json_is_object(o)) {
        snprintf(err, AWS_ERRMSG_MAX, "malformed credentials JSON%s%.100s", o ? "" : ": ",
                 o ? "" : je.text);
        json_decref(o);
        return -1;
    }
    int rc = -1;
    const char *code = json_str(o, "Code");
    if (code && strcmp(code, "Success") != 0) {
        snprintf(err, AWS_ERRMSG_MAX, "credentials endpoint answered Code=%.64s", code);
        goto done;
    }
    if (set_field(out->access_key_id, sizeof out->access_key_id, json_str(o, "AccessKeyId"),
                  "AccessKeyId", err) < 0 ||
        set_field(out->secret_access_key, sizeof out->secret_access_key,
                  json_str(o, "SecretAccessKey"), "SecretAccessKey", err) < 0)
        goto done;
    const char *token = json_str(o, "Token");
    if (token && set_field(out->session_token, sizeof out->session_token, token, "Token", err) < 0)
        goto done;
    rc = set_expiration(out, json_str(o, "Expiration"), err);
done:
    json_decref(o);     /* jansson does not wipe; the secrets it held are freed heap */
    if (rc < 0)
        aws_credentials_clear(out);
    return rc;
}

int aws_imds_parse_role(const void *body, size_t len, char *role, size_t rolelen,
                        char err[AWS_ERRMSG_MAX])
{
    const char *p = body, *end = p + len;
    while (p < end && isspace((unsigned char)*p))
        p++;
    const char *q = p;
    while (q < end && *q != '\n' && *q != '\r')
        q++;
    while (q > p && isspace((unsigned char)q[-1]))
        q--;
    size_t n = (size_t)(q - p);
    if (n == 0) {
        snprintf(err, AWS_ERRMSG_MAX, "IMDS lists no instance role");
        return -1;
    }
    if (n >= rolelen || memchr(p, '/', n) || memchr(p, '\0', n)) {
        snprintf(err, AWS_ERRMSG_MAX, "IMDS role name invalid");
        return -1;
    }
    memcpy(role, p, n);
    role[n] = '\0';
    return 0;
}

bool aws_container_uri_allowed(const char *url)
{
    if (strncasecmp(url, "https://", 8) == 0)
        return true;
    if (strncasecmp(url, "http://", 7) != 0)
        return false;
    const char *h = url + 7;
    static const char *const hosts[] = {"127.", "localhost", "[::1]", "169.254.170.2",
                                        "169.254.170.23", "[fd00:ec2::23]"};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        size_t n = strlen(hosts[i]);
        if (strncasecmp(h, hosts[i], n) != 0)
            continue;
        if (hosts[i][n - 1] == '.')     /* 127.0.0.0/8: any rest of the address */
            return true;
        char c = h[n];
        if (c == '\0' || c == ':' || c == '/')
            return true;
    }
    return false;
}

int aws_read_token_file(const char *path, char *out, size_t outlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, out + n, outlen - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == outlen - 1) {
            close(fd);
            return -EFBIG;
        }
    }
    close(fd);
    while (n > 0 && isspace((unsigned char)out[n - 1]))
        n--;
    out[n] = '\0';
    return n ? 0 : -ENODATA;
}

void aws_akid_prefix(const char *akid, char out[16])
{
    snprintf(out, 16, "%.8s%s", akid, strlen(akid) > 8 ? "..." : "");
}

void aws_credentials_clear(struct aws_credentials *c)
{
    OPENSSL_cleanse(c, sizeof *c);
    memset(c, 0, sizeof *c);
}

const char *aws_cred_source_name(enum aws_cred_source s)
{
    switch (s) {
    case AWS_CRED_NONE: return "none";
    case AWS_CRED_STATIC: return "static";
    case AWS_CRED_ENV: return "env";
    case AWS_CRED_WEB_IDENTITY: return "web_identity";
    case AWS_CRED_CONTAINER: return "container";
    case AWS_CRED_IMDS: return "imds";
    }
    return "unknown";
}
