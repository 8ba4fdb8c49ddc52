/* SigV4 signing, step by step as in reference/aws.md §9: canonical request →
 * string to sign → derived key → signature → Authorization header, plus the
 * query-presign variant used for RDS IAM tokens. Inputs are decoded values;
 * all canonical encoding happens here, with form.c's RFC 3986 encoder.
 */
#include "sigv4.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "form.h"

static void put_str(struct ferry_wbuf *b, const char *s)
{
    ferry_wbuf_put(b, s, strlen(s));
}

static void hex(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void aws_sha256_hex(const void *data, size_t len, char out[AWS_SHA256_HEX_LEN + 1])
{
    uint8_t md[32];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data ? data : "", len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        memset(md, 0, sizeof md);       /* cannot happen with the default provider */
    hex(md, 32, out);
}

static int hmac(const uint8_t *key, size_t keylen, const void *data, size_t len, uint8_t out[32])
{
    unsigned int outlen = 0;
    if (!HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &outlen) || outlen != 32)
        return -1;
    return 0;
}

int aws_sigv4_signing_key(const char *secret, const char *date8, const char *region,
                          const char *service, uint8_t out[32])
{
    size_t slen = strlen(secret);
    uint8_t *k0 = malloc(slen + 4);
    if (!k0)
        return -1;
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, secret, slen);
    uint8_t k[32];
    int rc = hmac(k0, slen + 4, date8, strlen(date8), k);
    OPENSSL_cleanse(k0, slen + 4);
    free(k0);
    if (rc == 0)
        rc = hmac(k, 32, region, strlen(region), k);
    if (rc == 0)
        rc = hmac(k, 32, service, strlen(service), k);
    if (rc == 0)
        rc = hmac(k, 32, "aws4_request", 12, out);
    OPENSSL_cleanse(k, sizeof k);
    return rc;
}

/* ---- canonical pieces ---------------------------------------------------- */

/* Canonical URI: each segment of the decoded path encoded twice (the second
 * pass is what non-S3 services expect of an already-encoded URL path). */
static void canonical_uri(struct ferry_wbuf *b, const char *path)
{
    if (!path || !*path) {
        ferry_wbuf_u8(b, '/');
        return;
    }
    const char *p = path;
    while (*p) {
        if (*p == '/') {
            ferry_wbuf_u8(b, '/');
            p++;
            continue;
        }
        size_t n = strcspn(p, "/");
        struct ferry_wbuf once;
        ferry_wbuf_init(&once, 0);
        aws_uri_encode(&once, p, n);
        if (once.failed)
            b->failed = true;
        else
            aws_uri_encode(b, (const char *)once.data, once.len);
        ferry_wbuf_free(&once);
        p += n;
    }
}

struct enc_pair {
    char *name;                         /* owned, encoded, NUL-terminated */
    char *value;                        /* owned, encoded, NUL-terminated */
};

static char *encode_dup(const char *s)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    aws_uri_encode(&b, s, strlen(s));
    ferry_wbuf_u8(&b, '\0');
    if (b.failed) {
        ferry_wbuf_free(&b);
        return NULL;
    }
    return (char *)b.data;
}

static int cmp_pair(const void *a, const void *b)
{
    const struct enc_pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->value, y->value);
}

/* Canonical query string: encode names and values, sort by name then value
 * (byte order of the encoded forms), join with '&'. */
static void canonical_query(struct ferry_wbuf *b, const struct aws_kv *q, size_t n)
{
    if (n == 0)
        return;
    struct enc_pair *pairs = calloc(n, sizeof *pairs);
    if (!pairs) {
        b->failed = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        pairs[i].name = encode_dup(q[i].name);
        pairs[i].value = encode_dup(q[i].value ? q[i].value : "");
        if (!pairs[i].name || !pairs[i].value)
            b->failed = true;
    }
    if (!b->failed) {
        qsort(pairs, n, sizeof *pairs, cmp_pair);
        for (size_t i = 0; i < n; i++) {
            if (i)
                ferry_wbuf_u8(b, '&');
            put_str(b, pairs[i].name);
            ferry_wbuf_u8(b, '=');
            put_str(b, pairs[i].value);
        }
    }
    for (size_t i = 0; i < n; i++) {
        free(pairs[i].name);
        free(pairs[i].value);
    }
    free(pairs);
}

struct canon_header {
    char *name;                         /* owned, lowercased */
    const char *value;                  /* borrowed, as sent */
    size_t order;                       /* input position: keeps duplicates in order */
};

static int cmp_header(const void *a, const void *b)
{
    const struct canon_header *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* A header value trimmed at both ends with inner runs of spaces collapsed. */
static void put_trimmed(struct ferry_wbuf *b, const char *v)
{
    while (*v == ' ' || *v == '\t')
        v++;
    bool space = false;
    for (; *v; v++) {
        if (*v == ' ' || *v == '\t') {
            space = true;
            continue;
        }
        if (space)
            ferry_wbuf_u8(b, ' ');
        space = false;
        ferry_wbuf_u8(b, (uint8_t)*v);
    }
}

/* Canonical headers block ("name:value\n" each, duplicates joined with ',')
 * into b, and the signed-headers list into sh. */
static void canonical_headers(struct ferry_wbuf *b, struct ferry_wbuf *sh,
                              const struct aws_kv *h, size_t n)
{
    struct canon_header *hs = calloc(n ? n : 1, sizeof *hs);
    if (!hs) {
        b->failed = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        hs[i].name = strdup(h[i].name);
        hs[i].value = h[i].value ? h[i].value : "";
        hs[i].order = i;
        if (!hs[i].name) {
            b->failed = true;
            continue;
        }
        for (char *c = hs[i].name; *c; c++)
            *c = (char)tolower((unsigned char)*c);
    }
    if (!b->failed) {
        qsort(hs, n, sizeof *hs, cmp_header);
        for (size_t i = 0; i < n; i++) {
            bool dup = i > 0 && strcmp(hs[i].name, hs[i - 1].name) == 0;
            if (dup) {
                ferry_wbuf_u8(b, ',');
            } else {
                if (i > 0) {
                    ferry_wbuf_u8(b, '\n');
                    ferry_wbuf_u8(sh, ';');
                }
                ferry_wbuf_put(b, hs[i].name, strlen(hs[i].name));
                ferry_wbuf_u8(b, ':');
                ferry_wbuf_put(sh, hs[i].name, strlen(hs[i].name));
            }
            put_trimmed(b, hs[i].value);
        }
        if (n)
            ferry_wbuf_u8(b, '\n');
    }
    for (size_t i = 0; i < n; i++)
        free(hs[i].name);
    free(hs);
}

static bool valid_amz_date(const char *d)
{
    if (!d || strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
        return false;
    for (int i = 0; i < 15; i++)
        if (i != 8 && !isdigit((unsigned char)d[i]))
            return false;
    return true;
}

static bool has_header(const struct aws_sigv4_request *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return true;
    return false;
}

/* "YYYYMMDD/<region>/<service>/aws4_request" */
static void put_scope(struct ferry_wbuf *b, const struct aws_sigv4_request *r)
{
    ferry_wbuf_put(b, r->amz_date, 8);
    ferry_wbuf_u8(b, '/');
    put_str(b, r->region);
    ferry_wbuf_u8(b, '/');
    put_str(b, r->service);
    put_str(b, "/aws4_request");
}

/* ---- signing ------------------------------------------------------------- */

void aws_sigv4_out_free(struct aws_sigv4_out *out)
{
    ferry_wbuf_free(&out->canonical_request);
    ferry_wbuf_free(&out->string_to_sign);
    ferry_wbuf_free(&out->signed_headers);
    ferry_wbuf_free(&out->authorization);
}

/* Steps 1-5: canonical request, string to sign, signature. */
static int sign_core(const struct aws_sigv4_request *r, const struct aws_sigv4_key *key,
                     struct aws_sigv4_out *out)
{
    struct ferry_wbuf *cr = &out->canonical_request;
    put_str(cr, r->method);
    ferry_wbuf_u8(cr, '\n');
    canonical_uri(cr, r->path);
    ferry_wbuf_u8(cr, '\n');
    canonical_query(cr, r->query, r->nquery);
    ferry_wbuf_u8(cr, '\n');
    canonical_headers(cr, &out->signed_headers, r->headers, r->nheaders);
    ferry_wbuf_u8(cr, '\n');
    ferry_wbuf_put(cr, out->signed_headers.data, out->signed_headers.len);
    ferry_wbuf_u8(cr, '\n');
    char h[AWS_SHA256_HEX_LEN + 1];
    aws_sha256_hex(r->body, r->body_len, h);
    ferry_wbuf_put(cr, h, AWS_SHA256_HEX_LEN);
    ferry_wbuf_u8(&out->signed_headers, '\0');
    if (cr->failed || out->signed_headers.failed)
        return -1;

    struct ferry_wbuf *sts = &out->string_to_sign;
    put_str(sts, AWS_SIGV4_ALGORITHM "\n");
    put_str(sts, r->amz_date);
    ferry_wbuf_u8(sts, '\n');
    put_scope(sts, r);
    ferry_wbuf_u8(sts, '\n');
    aws_sha256_hex(cr->data, cr->len, h);
    ferry_wbuf_put(sts, h, AWS_SHA256_HEX_LEN);
    if (sts->failed)
        return -1;

    char date8[9];
    memcpy(date8, r->amz_date, 8);
    date8[8] = '\0';
    uint8_t k[32], sig[32];
    int rc = aws_sigv4_signing_key(key->secret_access_key, date8, r->region, r->service, k);
    if (rc == 0)
        rc = hmac(k, 32, sts->data, sts->len, sig);
    OPENSSL_cleanse(k, sizeof k);
    if (rc == 0)
        hex(sig, 32, out->signature);
    return rc;
}

static void out_init(struct aws_sigv4_out *out)
{
    memset(out, 0, sizeof *out);
    ferry_wbuf_init(&out->canonical_request, 0);
    ferry_wbuf_init(&out->string_to_sign, 0);
    ferry_wbuf_init(&out->signed_headers, 0);
    ferry_wbuf_init(&out->authorization, 0);
}

int aws_sigv4_sign(const struct aws_sigv4_request *r, const struct aws_sigv4_key *key,
                   struct aws_sigv4_out *out)
{
    out_init(out);
    if (!valid_amz_date(r->amz_date) || !has_header(r, "host") || !r->region || !r->service ||
        !r->method || !key->access_key_id || !key->secret_access_key)
        return -1;
    if (sign_core(r, key, out) < 0)
        return -1;
    struct ferry_wbuf *a = &out->authorization;
    put_str(a, AWS_SIGV4_ALGORITHM " Credential=");
    put_str(a, key->access_key_id);
    ferry_wbuf_u8(a, '/');
    put_scope(a, r);
    put_str(a, ", SignedHeaders=");
    put_str(a, (const char *)out->signed_headers.data);
    put_str(a, ", Signature=");
    put_str(a, out->signature);
    ferry_wbuf_u8(a, '\0');
    return a->failed ? -1 : 0;
}

int aws_sigv4_presign(const struct aws_sigv4_request *r, const struct aws_sigv4_key *key,
                      const char *session_token, unsigned expires_seconds,
                      struct ferry_wbuf *query_out)
{
    if (!valid_amz_date(r->amz_date) || r->nheaders != 1 || !has_header(r, "host"))
        return -1;
    size_t n = r->nquery;
    struct aws_kv *q = calloc(n + 6, sizeof *q);
    if (!q)
        return -1;
    memcpy(q, r->query, n * sizeof *q);

    struct ferry_wbuf cred;
    ferry_wbuf_init(&cred, 0);
    put_str(&cred, key->access_key_id);
    ferry_wbuf_u8(&cred, '/');
    put_scope(&cred, r);
    ferry_wbuf_u8(&cred, '\0');
    char expires[16];
    snprintf(expires, sizeof expires, "%u", expires_seconds);

    q[n++] = (struct aws_kv){"X-Amz-Algorithm", AWS_SIGV4_ALGORITHM};
    q[n++] = (struct aws_kv){"X-Amz-Credential", cred.failed ? "" : (const char *)cred.data};
    q[n++] = (struct aws_kv){"X-Amz-Date", r->amz_date};
    q[n++] = (struct aws_kv){"X-Amz-Expires", expires};
    q[n++] = (struct aws_kv){"X-Amz-SignedHeaders", "host"};
    if (session_token)
        q[n++] = (struct aws_kv){"X-Amz-Security-Token", session_token};

    struct aws_sigv4_request pr = *r;
    pr.method = "GET";
    pr.query = q;
    pr.nquery = n;
    pr.body = NULL;
    pr.body_len = 0;

    struct aws_sigv4_out out;
    out_init(&out);
    int rc = cred.failed ? -1 : sign_core(&pr, key, &out);
    if (rc == 0) {
        /* The presigned URL carries the canonical query itself, so the
         * server rebuilds the exact bytes that were signed. */
        canonical_query(query_out, q, n);
        put_str(query_out, "&X-Amz-Signature=");
        put_str(query_out, out.signature);
        rc = query_out->failed ? -1 : 0;
    }
    aws_sigv4_out_free(&out);
    ferry_wbuf_free(&cred);
    free(q);
    return rc;
}

int aws_rds_auth_token(const char *host, unsigned port, const char *db_user, const char *region,
                       const struct aws_sigv4_key *key, const char *session_token,
                       const char *amz_date, struct ferry_wbuf *out)
{
    char hostport[300];
    int n = snprintf(hostport, sizeof hostport, "%s:%u", host, port);
    if (n < 0 || (size_t)n >= sizeof hostport)
        return -1;
    struct aws_kv query[] = {{"Action", "connect"}, {"DBUser", db_user}};
    struct aws_kv headers[] = {{"host", hostport}};
    struct aws_sigv4_request r = {
        .method = "GET", .path = "/", .query = query, .nquery = 2,
        .headers = headers, .nheaders = 1, .region = region, .service = "rds-db",
        .amz_date = amz_date,
    };
    put_str(out, hostport);
    put_str(out, "/?");
    if (aws_sigv4_presign(&r, key, session_token, 900, out) < 0)
        return -1;
    ferry_wbuf_u8(out, '\0');
    return out->failed ? -1 : 0;
}
