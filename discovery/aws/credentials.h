/* AWS credentials: the value type, the environment snapshot that selects a
 * source of the chain (reference/aws.md §11: env → web identity → container
 * → EC2 IMDSv2), and the pure parsers/builders for each source's wire format.
 * The fetching itself (async, on the loop) is credprovider.c. No I/O here
 * except aws_read_token_file(); thread: any.
 *
 * Secrets: never log secret_access_key, session_token or token-file contents;
 * log the access key id only through aws_akid_prefix().
 */
#ifndef FERRY_AWS_CREDENTIALS_H
#define FERRY_AWS_CREDENTIALS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/wbuf.h"
#include "xml.h"

#define AWS_AKID_MAX 128
#define AWS_SECRET_MAX 128
#define AWS_TOKEN_MAX 4096      /* STS session tokens run to ~1-2 KB */
#define AWS_URL_MAX 1024
#define AWS_PATH_MAX 1024
#define AWS_STS_VERSION "2011-06-15"

enum aws_cred_source {
    AWS_CRED_NONE = 0,
    AWS_CRED_STATIC,            /* given in the client config */
    AWS_CRED_ENV,               /* AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [/ AWS_SESSION_TOKEN] */
    AWS_CRED_WEB_IDENTITY,      /* AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN → STS (IRSA) */
    AWS_CRED_CONTAINER,         /* AWS_CONTAINER_CREDENTIALS_{FULL,RELATIVE}_URI (ECS, EKS Pod Identity) */
    AWS_CRED_IMDS,              /* EC2 instance metadata, IMDSv2 */
};

struct aws_credentials {
    char access_key_id[AWS_AKID_MAX];
    char secret_access_key[AWS_SECRET_MAX];   /* secret */
    char session_token[AWS_TOKEN_MAX];        /* secret; "" for long-term keys */
    int64_t expiration;                       /* epoch seconds; 0 = does not expire */
    enum aws_cred_source source;
};

/* What the environment says about every source; read once. */
struct aws_cred_env {
    char access_key_id[AWS_AKID_MAX];
    char secret_access_key[AWS_SECRET_MAX];
    char session_token[AWS_TOKEN_MAX];
    char role_arn[AWS_URL_MAX];               /* AWS_ROLE_ARN */
    char web_identity_token_file[AWS_PATH_MAX];
    char role_session_name[65];               /* AWS_ROLE_SESSION_NAME, else generated */
    char sts_endpoint[AWS_URL_MAX];           /* AWS_ENDPOINT_URL_STS */
    char container_full_uri[AWS_URL_MAX];
    char container_relative_uri[AWS_URL_MAX];
    char container_auth_token[AWS_TOKEN_MAX]; /* secret: AWS_CONTAINER_AUTHORIZATION_TOKEN */
    char container_auth_token_file[AWS_PATH_MAX];
    char imds_endpoint[AWS_URL_MAX];          /* AWS_EC2_METADATA_SERVICE_ENDPOINT */
    bool imds_disabled;                       /* AWS_EC2_METADATA_DISABLED=true */
    char region[32];                          /* AWS_REGION, else AWS_DEFAULT_REGION */
};

/* Fills e from get(name) (getenv, or a test's table). Overlong values are
 * dropped (treated as unset) rather than truncated. */
void aws_cred_env_read(struct aws_cred_env *e, const char *(*get)(const char *name));

/* The first source in chain order that the environment configures; IMDS
 * when none is and it is not disabled; AWS_CRED_NONE otherwise. An env key
 * pair needs both halves. */
enum aws_cred_source aws_cred_env_pick(const struct aws_cred_env *e);

/* Copies the env key pair into out (source AWS_CRED_ENV, no expiry). 0 or -1. */
int aws_creds_from_env(const struct aws_cred_env *e, struct aws_credentials *out);

/* Body of the unsigned STS AssumeRoleWithWebIdentity call; token is the
 * web-identity JWT (secret). 0, or -1 when b failed. */
int aws_sts_web_identity_body(struct ferry_wbuf *b, const char *role_arn, const char *session_name,
                              const char *token, size_t token_len);

/* Parsers; each returns 0 and fills *out (source left to the caller), or -1
 * with a reason in err (never containing secret values). */
int aws_creds_parse_sts(const void *body, size_t len, struct aws_credentials *out,
                        char err[AWS_ERRMSG_MAX]);
/* Container-credentials and IMDS JSON: AccessKeyId, SecretAccessKey, Token,
 * Expiration (and IMDS's Code, which must be "Success" when present). */
int aws_creds_parse_json(const void *body, size_t len, struct aws_credentials *out,
                         char err[AWS_ERRMSG_MAX]);
/* IMDS role listing: the first line, trimmed. 0 or -1. */
int aws_imds_parse_role(const void *body, size_t len, char *role, size_t rolelen,
                        char err[AWS_ERRMSG_MAX]);

/* Whether a container-credentials URL may be used: https anywhere; plain
 * http only to loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23. */
bool aws_container_uri_allowed(const char *url);

/* Reads a whole token file (re-read on every use: kubelet rotates it) into
 * out, trimmed of trailing whitespace, NUL-terminated. 0 or -errno. Blocking
 * file I/O on a small local file; see credprovider.c for why that is fine. */
int aws_read_token_file(const char *path, char *out, size_t outlen);

/* "AKIDEXAM…" — the only form of a key id that goes in a log line. */
void aws_akid_prefix(const char *akid, char out[16]);

/* Wipes secrets (OPENSSL_cleanse) and zeroes the struct. */
void aws_credentials_clear(struct aws_credentials *c);

const char *aws_cred_source_name(enum aws_cred_source s);

#endif
