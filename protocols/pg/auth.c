/* PostgreSQL authentication: SCRAM-SHA-256 both ways (RFC 5802, RFC 7677,
 * PostgreSQL's verifier format) and MD5 both ways, on OpenSSL (PBKDF2, HMAC,
 * EVP digests, RAND_bytes, CRYPTO_memcmp). Messages are parsed as slices;
 * secrets on the stack are cleansed before returning.
 */
#include "auth.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "codec.h"

#define B64_LEN(n) (((n) + 2) / 3 * 4)
#define NONCE_RANDOM_BYTES 18               /* as PostgreSQL: 24 base64 characters */

/* ---- primitives ------------------------------------------------------------------- */

static bool hmac256(const uint8_t *key, size_t klen, const void *msg, size_t n, uint8_t out[PG_SCRAM_KEY_LEN])
{
    unsigned len = 0;
    return HMAC(EVP_sha256(), key, (int)klen, msg, n, out, &len) && len == PG_SCRAM_KEY_LEN;
}

static bool sha256(const uint8_t *in, size_t n, uint8_t out[PG_SCRAM_KEY_LEN])
{
    return EVP_Digest(in, n, out, NULL, EVP_sha256(), NULL) == 1;
}

int pg_auth_random(void *buf, size_t n)
{
    return RAND_bytes(buf, (int)n) == 1 ? PG_AUTH_RC_OK : PG_AUTH_RC_INTERNAL;
}

/* Base64 of n bytes into out (B64_LEN(n) + 1 bytes, NUL-terminated); returns the length. */
static size_t b64_encode(const uint8_t *in, size_t n, char *out)
{
    return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static bool is_b64_char(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/* Strict base64 (length a multiple of 4, '=' only as padding) into at most
 * outmax bytes; returns the decoded length or -1. */
static int b64_decode(struct ferry_slice in, uint8_t *out, size_t outmax)
{
    if (in.len == 0 || in.len % 4 || in.len >= PG_SCRAM_MSG_MAX)
        return -1;
    size_t pad = in.p[in.len - 1] == '=' ? 1 + (in.p[in.len - 2] == '=') : 0;
    for (size_t i = 0; i < in.len - pad; i++)
        if (!is_b64_char(in.p[i]))
            return -1;
    uint8_t tmp[PG_SCRAM_MSG_MAX];
    int got = EVP_DecodeBlock(tmp, in.p, (int)in.len);
    int len = got < 0 ? -1 : got - (int)pad;
    if (len > (int)outmax)
        len = -1;
    if (len > 0)
        memcpy(out, tmp, (size_t)len);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return len;
}

/* The three keys of RFC 5802 from a password. */
struct scram_keys {
    uint8_t client_key[PG_SCRAM_KEY_LEN];
    uint8_t stored_key[PG_SCRAM_KEY_LEN];
    uint8_t server_key[PG_SCRAM_KEY_LEN];
};

static int derive_keys(const char *password, const uint8_t *salt, size_t salt_len, uint32_t iterations,
                       struct scram_keys *k)
{
    if (iterations == 0 || iterations > INT32_MAX)
        return PG_AUTH_RC_MALFORMED;
    uint8_t salted[PG_SCRAM_KEY_LEN];
    bool ok = PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len, (int)iterations,
                                EVP_sha256(), sizeof salted, salted) == 1 &&
              hmac256(salted, sizeof salted, "Client Key", 10, k->client_key) &&
              sha256(k->client_key, PG_SCRAM_KEY_LEN, k->stored_key) &&
              hmac256(salted, sizeof salted, "Server Key", 10, k->server_key);
    OPENSSL_cleanse(salted, sizeof salted);
    return ok ? PG_AUTH_RC_OK : PG_AUTH_RC_INTERNAL;
}

/* ---- SCRAM message syntax --------------------------------------------------------------- */

/* Reads "<name>=<value>" and the ',' after it (not a trailing one); name 0
 * accepts any letter (an extension). */
static bool attr_read(struct ferry_slice *m, char name, struct ferry_slice *val)
{
    if (m->len < 2 || m->p[1] != '=' || (name ? m->p[0] != (uint8_t)name : !((m->p[0] | 0x20) >= 'a' && (m->p[0] | 0x20) <= 'z')))
        return false;
    const uint8_t *start = m->p + 2;
    const uint8_t *comma = memchr(start, ',', m->len - 2);
    *val = (struct ferry_slice){start, comma ? (size_t)(comma - start) : m->len - 2};
    size_t used = 2 + val->len + (comma != NULL);
    if (comma && used == m->len)
        return false;
    m->p += used;
    m->len -= used;
    return true;
}

/* printable except ',' (RFC 5802 "printable") */
static bool nonce_ok(struct ferry_slice s)
{
    for (size_t i = 0; i < s.len; i++)
        if (s.p[i] < 0x21 || s.p[i] > 0x7e || s.p[i] == ',')
            return false;
    return s.len > 0;
}

/* A given nonce, or NONCE_RANDOM_BYTES random ones in base64, into buf. */
static int make_nonce(const char *given, char buf[B64_LEN(NONCE_RANDOM_BYTES) + 1], struct ferry_slice *out)
{
    if (given) {
        *out = (struct ferry_slice){(const uint8_t *)given, strlen(given)};
    } else {
        uint8_t raw[NONCE_RANDOM_BYTES];
        if (pg_auth_random(raw, sizeof raw) != PG_AUTH_RC_OK)
            return PG_AUTH_RC_INTERNAL;
        *out = (struct ferry_slice){(const uint8_t *)buf, b64_encode(raw, sizeof raw, buf)};
    }
    return nonce_ok(*out) && out->len < 256 ? PG_AUTH_RC_OK : PG_AUTH_RC_MALFORMED;
}

/* Appends printf output to a fixed buffer; false if it does not fit. */
static bool append(char *buf, size_t cap, size_t *len, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static bool append(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *len)
        return false;
    *len += (size_t)n;
    return true;
}

/* AuthMessage = client-first-bare "," server-first "," client-final-without-proof,
 * and the HMAC of it under key. */
static bool auth_message_hmac(const uint8_t *key, const char *bare, size_t bare_len, const char *sfirst,
                              size_t sfirst_len, const void *cfinal, size_t cfinal_len,
                              uint8_t out[PG_SCRAM_KEY_LEN])
{
    char msg[3 * PG_SCRAM_MSG_MAX];
    size_t len = 0;
    bool ok = append(msg, sizeof msg, &len, "%.*s,%.*s,%.*s", (int)bare_len, bare, (int)sfirst_len, sfirst,
                     (int)cfinal_len, (const char *)cfinal) &&
              hmac256(key, PG_SCRAM_KEY_LEN, msg, len, out);
    OPENSSL_cleanse(msg, sizeof msg);
    return ok;
}

/* ---- verifiers ----------------------------------------------------------------------- */

int pg_scram_secret_parse(const char *verifier, struct pg_scram_secret *out)
{
    static const char prefix[] = "SCRAM-SHA-256$";
    memset(out, 0, sizeof *out);
    if (strncmp(verifier, prefix, sizeof prefix - 1) != 0)
        return PG_AUTH_RC_MALFORMED;
    const char *iter = verifier + sizeof prefix - 1;
    const char *colon1 = strchr(iter, ':');
    const char *dollar = colon1 ? strchr(colon1, '$') : NULL;
    const char *colon2 = dollar ? strchr(dollar, ':') : NULL;
    if (!colon2 || colon1 == iter || colon1 - iter > 10)
        return PG_AUTH_RC_MALFORMED;
    unsigned long long it = 0;
    for (const char *p = iter; p < colon1; p++)
        it = *p >= '0' && *p <= '9' ? it * 10 + (unsigned)(*p - '0') : ~0ull;
    struct ferry_slice salt = {(const uint8_t *)colon1 + 1, (size_t)(dollar - colon1 - 1)};
    struct ferry_slice stored = {(const uint8_t *)dollar + 1, (size_t)(colon2 - dollar - 1)};
    struct ferry_slice server = {(const uint8_t *)colon2 + 1, strlen(colon2 + 1)};
    int salt_len = b64_decode(salt, out->salt, sizeof out->salt);
    if (it == 0 || it > INT32_MAX || salt_len <= 0 ||
        b64_decode(stored, out->stored_key, PG_SCRAM_KEY_LEN) != PG_SCRAM_KEY_LEN ||
        b64_decode(server, out->server_key, PG_SCRAM_KEY_LEN) != PG_SCRAM_KEY_LEN)
        return PG_AUTH_RC_MALFORMED;
    out->iterations = (uint32_t)it;
    out->salt_len = (size_t)salt_len;
    return PG_AUTH_RC_OK;
}

int pg_scram_secret_from_password(const char *password, uint32_t iterations, const uint8_t *salt,
                                  size_t salt_len, struct pg_scram_secret *out)
{
    memset(out, 0, sizeof *out);
    if (!salt) {
        salt_len = PG_SCRAM_SALT_LEN;
        if (pg_auth_random(out->salt, salt_len) != PG_AUTH_RC_OK)
            return PG_AUTH_RC_INTERNAL;
    } else if (salt_len == 0 || salt_len > sizeof out->salt) {
        return PG_AUTH_RC_MALFORMED;
    } else {
        memcpy(out->salt, salt, salt_len);
    }
    struct scram_keys k;
    int rc = derive_keys(password, out->salt, salt_len, iterations, &k);
    memcpy(out->stored_key, k.stored_key, PG_SCRAM_KEY_LEN);
    memcpy(out->server_key, k.server_key, PG_SCRAM_KEY_LEN);
    OPENSSL_cleanse(&k, sizeof k);
    out->iterations = iterations;
    out->salt_len = salt_len;
    return rc;
}

int pg_scram_mock_salt(const uint8_t nonce[PG_SCRAM_MOCK_NONCE_LEN], const char *user,
                       uint8_t salt[PG_SCRAM_SALT_LEN])
{
    uint8_t d[PG_SCRAM_KEY_LEN];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, user, strlen(user)) == 1 &&
              EVP_DigestUpdate(ctx, nonce, PG_SCRAM_MOCK_NONCE_LEN) == 1 &&
              EVP_DigestFinal_ex(ctx, d, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    if (ok)
        memcpy(salt, d, PG_SCRAM_SALT_LEN);
    OPENSSL_cleanse(d, sizeof d);
    return ok ? PG_AUTH_RC_OK : PG_AUTH_RC_INTERNAL;
}

int pg_scram_secret_mock(const uint8_t nonce[PG_SCRAM_MOCK_NONCE_LEN], const char *user,
                         uint32_t iterations, struct pg_scram_secret *out)
{
    memset(out, 0, sizeof *out);
    out->mock = true;
    out->iterations = iterations;
    out->salt_len = PG_SCRAM_SALT_LEN;
    if (pg_scram_mock_salt(nonce, user, out->salt) != PG_AUTH_RC_OK ||
        pg_auth_random(out->stored_key, sizeof out->stored_key) != PG_AUTH_RC_OK ||
        pg_auth_random(out->server_key, sizeof out->server_key) != PG_AUTH_RC_OK)
        return PG_AUTH_RC_INTERNAL;
    return PG_AUTH_RC_OK;
}

bool pg_scram_secret_format(const struct pg_scram_secret *s, char *out, size_t outlen)
{
    char salt[B64_LEN(PG_SCRAM_SALT_MAX) + 1], stored[B64_LEN(PG_SCRAM_KEY_LEN) + 1],
        server[B64_LEN(PG_SCRAM_KEY_LEN) + 1];
    b64_encode(s->salt, s->salt_len, salt);
    b64_encode(s->stored_key, PG_SCRAM_KEY_LEN, stored);
    b64_encode(s->server_key, PG_SCRAM_KEY_LEN, server);
    size_t len = 0;
    return append(out, outlen, &len, "SCRAM-SHA-256$%u:%s$%s:%s", s->iterations, salt, stored, server);
}

/* ---- server side ----------------------------------------------------------------------- */

void pg_scram_server_init(struct pg_scram_server *s, const struct pg_scram_secret *secret)
{
    memset(s, 0, sizeof *s);
    s->secret = *secret;
}

void pg_scram_server_clear(struct pg_scram_server *s) { OPENSSL_cleanse(s, sizeof *s); }

/* gs2-header without channel binding or authzid: "n,," or "y,,". */
static bool read_gs2_header(struct ferry_slice *m, char *flag)
{
    if (m->len < 3 || (m->p[0] != 'n' && m->p[0] != 'y') || m->p[1] != ',' || m->p[2] != ',')
        return false;
    *flag = (char)m->p[0];
    m->p += 3;
    m->len -= 3;
    return true;
}

int pg_scram_server_first(struct pg_scram_server *s, const uint8_t *client_first, size_t n,
                          const char *server_nonce, struct ferry_wbuf *out)
{
    struct ferry_slice m = {client_first, n}, user, cnonce, snonce;
    if (s->step != 0 || n >= PG_SCRAM_MSG_MAX || !read_gs2_header(&m, &s->cbind_flag))
        return PG_AUTH_RC_MALFORMED;
    struct ferry_slice bare = m;
    /* "n=" must come first: a reserved "m=" extension is refused here; the
     * user name is ignored (PostgreSQL uses the startup packet's). */
    if (!attr_read(&m, 'n', &user) || !attr_read(&m, 'r', &cnonce) || !nonce_ok(cnonce))
        return PG_AUTH_RC_MALFORMED;
    char nonce_buf[B64_LEN(NONCE_RANDOM_BYTES) + 1], salt[B64_LEN(PG_SCRAM_SALT_MAX) + 1];
    int rc = make_nonce(server_nonce, nonce_buf, &snonce);
    if (rc != PG_AUTH_RC_OK)
        return rc;
    b64_encode(s->secret.salt, s->secret.salt_len, salt);
    if (!append(s->server_first, sizeof s->server_first, &s->server_first_len, "r=%.*s%.*s,s=%s,i=%u",
                (int)cnonce.len, (const char *)cnonce.p, (int)snonce.len, (const char *)snonce.p, salt,
                s->secret.iterations))
        return PG_AUTH_RC_MALFORMED;
    s->nonce_len = cnonce.len + snonce.len;
    memcpy(s->client_first_bare, bare.p, bare.len);
    s->client_first_bare_len = bare.len;
    ferry_wbuf_put(out, s->server_first, s->server_first_len);
    s->step = 1;
    return PG_AUTH_RC_OK;
}

/* Splits a client-final-message into its checked parts; *without_proof_len
 * is the length up to (not including) ",p=". */
static int read_client_final(const struct pg_scram_server *s, struct ferry_slice m,
                             uint8_t proof[PG_SCRAM_KEY_LEN], size_t *without_proof_len)
{
    const uint8_t *start = m.p;
    struct ferry_slice cbind, nonce, attr;
    if (!attr_read(&m, 'c', &cbind) || !pg_slice_eq(cbind, s->cbind_flag == 'y' ? "eSws" : "biws"))
        return PG_AUTH_RC_MALFORMED;    /* base64 of the same gs2 header, no binding data */
    if (!attr_read(&m, 'r', &nonce) || nonce.len != s->nonce_len ||
        memcmp(nonce.p, s->server_first + 2, nonce.len) != 0)
        return PG_AUTH_RC_MALFORMED;
    while (m.len > 2 && !(m.p[0] == 'p' && m.p[1] == '='))
        if (!attr_read(&m, 0, &attr))
            return PG_AUTH_RC_MALFORMED;    /* extensions are skipped */
    *without_proof_len = (size_t)(m.p - start) - 1;
    if (!attr_read(&m, 'p', &attr) || m.len != 0 || b64_decode(attr, proof, PG_SCRAM_KEY_LEN) != PG_SCRAM_KEY_LEN)
        return PG_AUTH_RC_MALFORMED;
    return PG_AUTH_RC_OK;
}

/* ClientKey = proof XOR HMAC(StoredKey, AuthMessage); it must hash to StoredKey. */
static int check_proof(const struct pg_scram_server *s, const uint8_t *cfinal, size_t without_proof_len,
                       uint8_t key[PG_SCRAM_KEY_LEN])
{
    uint8_t sig[PG_SCRAM_KEY_LEN], stored[PG_SCRAM_KEY_LEN];
    bool ok = auth_message_hmac(s->secret.stored_key, s->client_first_bare, s->client_first_bare_len,
                                s->server_first, s->server_first_len, cfinal, without_proof_len, sig);
    for (size_t i = 0; i < PG_SCRAM_KEY_LEN; i++)
        key[i] ^= sig[i];
    ok = ok && sha256(key, PG_SCRAM_KEY_LEN, stored);
    /* a mock secret is compared all the same (same work), then fails */
    bool match = ok && CRYPTO_memcmp(stored, s->secret.stored_key, PG_SCRAM_KEY_LEN) == 0;
    int rc = !ok ? PG_AUTH_RC_INTERNAL : match && !s->secret.mock ? PG_AUTH_RC_OK : PG_AUTH_RC_REJECTED;
    OPENSSL_cleanse(sig, sizeof sig);
    OPENSSL_cleanse(stored, sizeof stored);
    return rc;
}

int pg_scram_server_final(struct pg_scram_server *s, const uint8_t *client_final, size_t n,
                          struct ferry_wbuf *out)
{
    if (s->step != 1 || n >= PG_SCRAM_MSG_MAX)
        return PG_AUTH_RC_MALFORMED;
    uint8_t key[PG_SCRAM_KEY_LEN];
    size_t without_proof_len;
    int rc = read_client_final(s, (struct ferry_slice){client_final, n}, key, &without_proof_len);
    if (rc == PG_AUTH_RC_OK)
        rc = check_proof(s, client_final, without_proof_len, key);
    uint8_t sig[PG_SCRAM_KEY_LEN];
    if (rc == PG_AUTH_RC_OK &&
        !auth_message_hmac(s->secret.server_key, s->client_first_bare, s->client_first_bare_len, s->server_first,
                           s->server_first_len, client_final, without_proof_len, sig))
        rc = PG_AUTH_RC_INTERNAL;
    if (rc == PG_AUTH_RC_OK) {
        char v[B64_LEN(PG_SCRAM_KEY_LEN) + 1];
        b64_encode(sig, sizeof sig, v);
        ferry_wbuf_put(out, "v=", 2);
        ferry_wbuf_put(out, v, strlen(v));
        s->step = 2;
    }
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

/* ---- client side ------------------------------------------------------------------------ */

void pg_scram_client_clear(struct pg_scram_client *c) { OPENSSL_cleanse(c, sizeof *c); }

int pg_scram_client_first(struct pg_scram_client *c, const char *user, const char *nonce, struct ferry_wbuf *out)
{
    memset(c, 0, sizeof *c);
    char nonce_buf[B64_LEN(NONCE_RANDOM_BYTES) + 1];
    struct ferry_slice cnonce;
    int rc = make_nonce(nonce, nonce_buf, &cnonce);
    if (rc != PG_AUTH_RC_OK)
        return rc;
    bool ok = append(c->client_first_bare, sizeof c->client_first_bare, &c->client_first_bare_len, "n=");
    for (const char *u = user; ok && *u; u++)   /* saslname escapes ',' and '=' */
        ok = append(c->client_first_bare, sizeof c->client_first_bare, &c->client_first_bare_len, "%s",
                    *u == ',' ? "=2C" : *u == '=' ? "=3D" : (char[2]){*u, 0});
    ok = ok && append(c->client_first_bare, sizeof c->client_first_bare, &c->client_first_bare_len, ",r=%.*s",
                      (int)cnonce.len, (const char *)cnonce.p);
    if (!ok)
        return PG_AUTH_RC_MALFORMED;
    c->client_nonce_len = cnonce.len;
    ferry_wbuf_put(out, "n,,", 3);
    ferry_wbuf_put(out, c->client_first_bare, c->client_first_bare_len);
    c->step = 1;
    return PG_AUTH_RC_OK;
}

/* "r=<nonce>,s=<salt>,i=<iterations>": our nonce extended by the server's. */
static int read_server_first(const struct pg_scram_client *c, struct ferry_slice m, struct ferry_slice *nonce,
                             uint8_t *salt, size_t *salt_len, uint32_t *iterations)
{
    struct ferry_slice salt_b64, iter;
    const char *cnonce = c->client_first_bare + c->client_first_bare_len - c->client_nonce_len;
    if (!attr_read(&m, 'r', nonce) || !nonce_ok(*nonce) || nonce->len <= c->client_nonce_len ||
        memcmp(nonce->p, cnonce, c->client_nonce_len) != 0 || !attr_read(&m, 's', &salt_b64) ||
        !attr_read(&m, 'i', &iter) || iter.len == 0 || iter.len > 10)
        return PG_AUTH_RC_MALFORMED;
    int len = b64_decode(salt_b64, salt, PG_SCRAM_SALT_MAX);
    unsigned long long it = 0;
    for (size_t i = 0; i < iter.len; i++)
        it = iter.p[i] >= '0' && iter.p[i] <= '9' ? it * 10 + (unsigned)(iter.p[i] - '0') : ~0ull;
    if (len <= 0 || it == 0 || it > PG_SCRAM_MAX_ITERATIONS)
        return PG_AUTH_RC_MALFORMED;
    *salt_len = (size_t)len;
    *iterations = (uint32_t)it;
    return PG_AUTH_RC_OK;
}

int pg_scram_client_final(struct pg_scram_client *c, const char *password, const uint8_t *server_first,
                          size_t n, struct ferry_wbuf *out)
{
    struct ferry_slice nonce;
    uint8_t salt[PG_SCRAM_SALT_MAX];
    size_t salt_len;
    uint32_t iterations;
    if (c->step != 1 || n >= PG_SCRAM_MSG_MAX)
        return PG_AUTH_RC_MALFORMED;
    int rc = read_server_first(c, (struct ferry_slice){server_first, n}, &nonce, salt, &salt_len, &iterations);
    struct scram_keys k;
    if (rc == PG_AUTH_RC_OK)
        rc = derive_keys(password, salt, salt_len, iterations, &k);
    char final[PG_SCRAM_MSG_MAX];
    size_t len = 0;
    uint8_t sig[PG_SCRAM_KEY_LEN];
    if (rc == PG_AUTH_RC_OK && !append(final, sizeof final, &len, "c=biws,r=%.*s", (int)nonce.len, (const char *)nonce.p))
        rc = PG_AUTH_RC_MALFORMED;
    const char *sfirst = (const char *)server_first;
    if (rc == PG_AUTH_RC_OK &&
        (!auth_message_hmac(k.stored_key, c->client_first_bare, c->client_first_bare_len, sfirst, n, final, len, sig) ||
         !auth_message_hmac(k.server_key, c->client_first_bare, c->client_first_bare_len, sfirst, n, final, len,
                            c->server_signature)))
        rc = PG_AUTH_RC_INTERNAL;
    if (rc == PG_AUTH_RC_OK) {
        for (size_t i = 0; i < PG_SCRAM_KEY_LEN; i++)
            sig[i] ^= k.client_key[i];   /* the proof */
        char proof[B64_LEN(PG_SCRAM_KEY_LEN) + 1];
        b64_encode(sig, sizeof sig, proof);
        ferry_wbuf_put(out, final, len);
        ferry_wbuf_put(out, ",p=", 3);
        ferry_wbuf_put(out, proof, strlen(proof));
        c->step = 2;
    }
    OPENSSL_cleanse(&k, sizeof k);
    OPENSSL_cleanse(sig, sizeof sig);
    return rc;
}

int pg_scram_client_verify(struct pg_scram_client *c, const uint8_t *server_final, size_t n)
{
    struct ferry_slice m = {server_final, n}, v;
    uint8_t sig[PG_SCRAM_KEY_LEN];
    if (c->step != 2)
        return PG_AUTH_RC_MALFORMED;
    if (attr_read(&m, 'e', &v))
        return PG_AUTH_RC_REJECTED;     /* server-error */
    if (!attr_read(&m, 'v', &v) || b64_decode(v, sig, sizeof sig) != PG_SCRAM_KEY_LEN)
        return PG_AUTH_RC_MALFORMED;
    if (CRYPTO_memcmp(sig, c->server_signature, sizeof sig) != 0)
        return PG_AUTH_RC_REJECTED;
    c->step = 3;
    return PG_AUTH_RC_OK;
}

/* ---- MD5 ---------------------------------------------------------------------------------- */

/* md5hex(a + b) into out (33 bytes); on a digest failure a non-hex string
 * that matches nothing. */
static void md5_hex(const void *a, size_t an, const void *b, size_t bn, char *out)
{
    uint8_t d[16];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 && EVP_DigestUpdate(ctx, a, an) == 1 &&
              EVP_DigestUpdate(ctx, b, bn) == 1 && EVP_DigestFinal_ex(ctx, d, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    for (size_t i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", ok ? d[i] : 0);
    if (!ok)
        memset(out, '!', 32);
}

void pg_md5_stored(const char *user, const char *password, char *out)
{
    memcpy(out, "md5", 3);
    md5_hex(password, strlen(password), user, strlen(user), out + 3);
}

static bool is_md5_hash(const char *s)
{
    if (strlen(s) != PG_MD5_LEN || strncmp(s, "md5", 3) != 0)
        return false;
    return strspn(s + 3, "0123456789abcdef") == 32;
}

/* "md5" + md5hex(<32 hex digits of the stored form> + salt). */
static void md5_salted(const char *stored, const uint8_t salt[4], char *out)
{
    memcpy(out, "md5", 3);
    md5_hex(stored + 3, 32, salt, 4, out + 3);
}

void pg_md5_response(const char *user, const char *password, const uint8_t salt[4], char *out)
{
    char stored[PG_MD5_LEN + 1];
    pg_md5_stored(user, password, stored);
    md5_salted(stored, salt, out);
    OPENSSL_cleanse(stored, sizeof stored);
}

int pg_md5_verify(const char *kept, const char *user, const uint8_t salt[4], const uint8_t *response, size_t n)
{
    char stored[PG_MD5_LEN + 1], want[PG_MD5_LEN + 1];
    if (is_md5_hash(kept))
        memcpy(stored, kept, sizeof stored);
    else
        pg_md5_stored(user, kept, stored);
    md5_salted(stored, salt, want);
    bool ok = n == PG_MD5_LEN && CRYPTO_memcmp(want, response, PG_MD5_LEN) == 0;
    OPENSSL_cleanse(stored, sizeof stored);
    OPENSSL_cleanse(want, sizeof want);
    return ok ? PG_AUTH_RC_OK : PG_AUTH_RC_REJECTED;
}
