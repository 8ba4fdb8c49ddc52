/* AWS Signature Version 4 (reference/aws.md §9): canonical request, string to
 * sign, signing key, Authorization header, and query presigning (the RDS IAM
 * auth token, §8). Pure: no clock, no I/O, no global state; the caller passes
 * X-Amz-Date. Thread: any.
 */
#ifndef FERRY_AWS_SIGV4_H
#define FERRY_AWS_SIGV4_H

#include <stddef.h>
#include <stdint.h>

#include "ferry/wbuf.h"

#ifndef FERRY_MUST_CHECK
#define FERRY_MUST_CHECK __attribute__((warn_unused_result))
#endif

#define AWS_SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define AWS_SHA256_HEX_LEN 64

/* A name/value pair; both borrowed NUL-terminated strings. */
struct aws_kv {
    const char *name;
    const char *value;
};

/* What gets signed. Every pointer is borrowed for the duration of the call. */
struct aws_sigv4_request {
    const char *method;                 /* "GET", "POST" */
    const char *path;                   /* decoded absolute path; NULL or "" = "/". Segments are
                                           encoded twice (all services but S3); dot segments
                                           are not normalised (ferry only signs "/") */
    const struct aws_kv *query;         /* decoded query parameters, any order */
    size_t nquery;
    const struct aws_kv *headers;       /* the headers to sign, exactly as sent: must include
                                           host and x-amz-date (header signing) */
    size_t nheaders;
    const void *body;                   /* request payload; NULL with body_len 0 = empty */
    size_t body_len;
    const char *region;                 /* "us-east-1" */
    const char *service;                /* signing name: "rds", "monitoring", "rds-db" */
    const char *amz_date;               /* "YYYYMMDDTHHMMSSZ" (UTC) */
};

/* Long-term or temporary key; borrowed. The session token is not here: with
 * header signing the caller adds X-Amz-Security-Token to the signed headers;
 * presigning takes it as a parameter. */
struct aws_sigv4_key {
    const char *access_key_id;
    const char *secret_access_key;
};

/* Results of aws_sigv4_sign(); the caller frees with aws_sigv4_out_free().
 * The intermediate forms are kept because tests compare them byte for byte
 * and because a SignatureDoesNotMatch is debugged by reading them. */
struct aws_sigv4_out {
    struct ferry_wbuf canonical_request;  /* owned; not NUL-terminated */
    struct ferry_wbuf string_to_sign;     /* owned; not NUL-terminated */
    struct ferry_wbuf signed_headers;     /* owned; NUL-terminated: "host;x-amz-date" */
    struct ferry_wbuf authorization;      /* owned; NUL-terminated Authorization header value */
    char signature[AWS_SHA256_HEX_LEN + 1]; /* lowercase hex */
};

/* Hex SHA-256 of data (lowercase, NUL-terminated). */
void aws_sha256_hex(const void *data, size_t len, char out[AWS_SHA256_HEX_LEN + 1]);

/* kSigning = HMAC chain over "AWS4"+secret, date8 ("YYYYMMDD"), region,
 * service, "aws4_request". Returns 0, or -1 on a crypto failure. */
int aws_sigv4_signing_key(const char *secret, const char *date8, const char *region,
                          const char *service, uint8_t out[32]) FERRY_MUST_CHECK;

/* Signs r with header signing. Fills *out (initialised here; free it with
 * aws_sigv4_out_free() whatever the result). Returns 0, or -1 on bad input
 * (malformed amz_date, missing host header) or allocation failure. */
int aws_sigv4_sign(const struct aws_sigv4_request *r, const struct aws_sigv4_key *key,
                   struct aws_sigv4_out *out) FERRY_MUST_CHECK;
void aws_sigv4_out_free(struct aws_sigv4_out *out);

/* Query presigning (method GET, signed header "host", empty payload): adds
 * X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders and, when
 * session_token is not NULL, -Security-Token to r->query, signs, and appends
 * "<canonical query>&X-Amz-Signature=<hex>" to query_out. r->headers must hold
 * exactly the host header. Returns 0 or -1 (as aws_sigv4_sign). */
int aws_sigv4_presign(const struct aws_sigv4_request *r, const struct aws_sigv4_key *key,
                      const char *session_token, unsigned expires_seconds,
                      struct ferry_wbuf *query_out) FERRY_MUST_CHECK;

/* The RDS IAM authentication token (the password for an IAM-enabled DB user):
 * "<host>:<port>/?Action=connect&DBUser=<user>&...&X-Amz-Signature=<hex>",
 * valid 15 minutes from amz_date. Appended to out, NUL-terminated.
 * Returns 0 or -1. Never log the result: it is a credential. */
int aws_rds_auth_token(const char *host, unsigned port, const char *db_user, const char *region,
                       const struct aws_sigv4_key *key, const char *session_token,
                       const char *amz_date, struct ferry_wbuf *out) FERRY_MUST_CHECK;

#endif
