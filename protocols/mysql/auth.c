/* MySQL auth plugins on both sides (see auth.h): the two scrambles and their
 * verification against stored stage-2 hashes, caching_sha2_password's RSA
 * exchange through OpenSSL EVP, and small step functions that tell the
 * session what to send next.
 */
#include "auth.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

/* ---- digests ------------------------------------------------------------ */

/* out = H(a || b); md is EVP_sha1() or EVP_sha256(). */
static void digest2(const EVP_MD *md, const void *a, size_t an, const void *b, size_t bn,
                    uint8_t *out)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int len;
    if (!ctx || !EVP_DigestInit_ex(ctx, md, NULL) || !EVP_DigestUpdate(ctx, a, an) ||
        (bn && !EVP_DigestUpdate(ctx, b, bn)) || !EVP_DigestFinal_ex(ctx, out, &len))
        memset(out, 0, (size_t)EVP_MD_get_size(md));   /* never matches a real hash */
    EVP_MD_CTX_free(ctx);
}

static void xor_into(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = a[i] ^ b[i];
}

/* The two plugins share one construction with different hashes:
 *   stage1 = H(pw), stage2 = H(stage1),
 *   native: resp = stage1 XOR H(scramble || stage2)
 *   sha2:   resp = stage1 XOR H(stage2 || scramble)
 */
struct scheme {
    const EVP_MD *(*md)(void);
    size_t len;
    bool scramble_first;            /* native hashes scramble || stage2 */
};
static const struct scheme native = {EVP_sha1, MY_SHA1_LEN, true};
static const struct scheme sha2 = {EVP_sha256, MY_SHA256_LEN, false};

static void mask_of(const struct scheme *sc, const uint8_t *stage2,
                    const uint8_t scramble[MY_SCRAMBLE_LEN], uint8_t *mask)
{
    if (sc->scramble_first)
        digest2(sc->md(), scramble, MY_SCRAMBLE_LEN, stage2, sc->len, mask);
    else
        digest2(sc->md(), stage2, sc->len, scramble, MY_SCRAMBLE_LEN, mask);
}

static size_t scramble_with(const struct scheme *sc, const char *pw, size_t len,
                            const uint8_t scramble[MY_SCRAMBLE_LEN], uint8_t *out)
{
    if (len == 0)
        return 0;
    uint8_t stage1[MY_SHA256_LEN], stage2[MY_SHA256_LEN], mask[MY_SHA256_LEN];
    digest2(sc->md(), pw, len, NULL, 0, stage1);
    digest2(sc->md(), stage1, sc->len, NULL, 0, stage2);
    mask_of(sc, stage2, scramble, mask);
    xor_into(out, stage1, mask, sc->len);
    OPENSSL_cleanse(stage1, sizeof stage1);
    return sc->len;
}

/* Recovers stage1 from resp and checks H(stage1) == stage2. */
static bool verify_with(const struct scheme *sc, const uint8_t *stage2,
                        const uint8_t scramble[MY_SCRAMBLE_LEN], const uint8_t *resp, size_t n)
{
    if (n != sc->len)
        return false;
    uint8_t mask[MY_SHA256_LEN], stage1[MY_SHA256_LEN], check[MY_SHA256_LEN];
    mask_of(sc, stage2, scramble, mask);
    xor_into(stage1, resp, mask, sc->len);
    digest2(sc->md(), stage1, sc->len, NULL, 0, check);
    OPENSSL_cleanse(stage1, sizeof stage1);
    return CRYPTO_memcmp(check, stage2, sc->len) == 0;
}

static void stage2_of(const struct scheme *sc, const char *pw, size_t len, uint8_t *out)
{
    uint8_t stage1[MY_SHA256_LEN];
    digest2(sc->md(), pw, len, NULL, 0, stage1);
    digest2(sc->md(), stage1, sc->len, NULL, 0, out);
    OPENSSL_cleanse(stage1, sizeof stage1);
}

size_t my_native_scramble(const char *pw, size_t len, const uint8_t scramble[MY_SCRAMBLE_LEN],
                          uint8_t out[MY_SHA1_LEN])
{
    return scramble_with(&native, pw, len, scramble, out);
}

size_t my_sha2_scramble(const char *pw, size_t len, const uint8_t scramble[MY_SCRAMBLE_LEN],
                        uint8_t out[MY_SHA256_LEN])
{
    return scramble_with(&sha2, pw, len, scramble, out);
}

/* ---- secrets ------------------------------------------------------------ */

int my_secret_from_password(struct my_secret *s, const char *pw, size_t len)
{
    *s = (struct my_secret){.password = pw, .password_len = len, .has_native = true,
                            .has_sha2 = true};
    stage2_of(&native, pw, len, s->native_stage2);
    stage2_of(&sha2, pw, len, s->sha2_stage2);
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int my_secret_set_native_hash(struct my_secret *s, const char *star_hex)
{
    if (star_hex[0] != '*' || strlen(star_hex) != 1 + 2 * MY_SHA1_LEN)
        return -1;
    for (size_t i = 0; i < MY_SHA1_LEN; i++) {
        int hi = hex_value(star_hex[1 + 2 * i]), lo = hex_value(star_hex[2 + 2 * i]);
        if (hi < 0 || lo < 0)
            return -1;
        s->native_stage2[i] = (uint8_t)(hi << 4 | lo);
    }
    s->has_native = true;
    return 0;
}

/* An empty password is proved by an empty response (and nothing else). */
static bool is_empty_password(const struct my_secret *s)
{
    return s->password && s->password_len == 0;
}

bool my_native_verify(const struct my_secret *s, const uint8_t scramble[MY_SCRAMBLE_LEN],
                      const uint8_t *resp, size_t n)
{
    if (n == 0 || is_empty_password(s))
        return n == 0 && is_empty_password(s);
    return s->has_native && verify_with(&native, s->native_stage2, scramble, resp, n);
}

bool my_sha2_verify_fast(const struct my_secret *s, const uint8_t scramble[MY_SCRAMBLE_LEN],
                         const uint8_t *resp, size_t n)
{
    if (n == 0 || is_empty_password(s))
        return n == 0 && is_empty_password(s);
    return s->has_sha2 && verify_with(&sha2, s->sha2_stage2, scramble, resp, n);
}

bool my_cleartext_verify(const struct my_secret *s, const uint8_t *pw, size_t n)
{
    if (n > 0 && pw[n - 1] == 0)
        n--;
    uint8_t got[MY_SHA256_LEN];
    bool ok;
    if (s->password) {          /* compare digests: constant time whatever the lengths */
        uint8_t want[MY_SHA256_LEN];
        digest2(EVP_sha256(), pw, n, NULL, 0, got);
        digest2(EVP_sha256(), s->password, s->password_len, NULL, 0, want);
        ok = CRYPTO_memcmp(got, want, sizeof got) == 0;
    } else if (s->has_sha2) {
        stage2_of(&sha2, (const char *)pw, n, got);
        ok = CRYPTO_memcmp(got, s->sha2_stage2, MY_SHA256_LEN) == 0;
    } else if (s->has_native) {
        stage2_of(&native, (const char *)pw, n, got);
        ok = CRYPTO_memcmp(got, s->native_stage2, MY_SHA1_LEN) == 0;
    } else {
        ok = false;
    }
    return ok;
}

/* ---- RSA ---------------------------------------------------------------- */

static EVP_PKEY *read_public_pem(const uint8_t *pem, size_t len)
{
    if (len > INT32_MAX)
        return NULL;
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    return key;
}

/* An encrypt or decrypt context with OAEP padding (SHA-1, MGF1 SHA-1). */
static EVP_PKEY_CTX *oaep_ctx(EVP_PKEY *key, bool encrypt)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    if (!ctx)
        return NULL;
    int ok = encrypt ? EVP_PKEY_encrypt_init(ctx) : EVP_PKEY_decrypt_init(ctx);
    if (ok <= 0 || EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0) {
        EVP_PKEY_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* Runs ctx over in and appends the result to out (RSA keys up to 8192 bits).
 * 0 or -1. */
static int pkey_crypt(EVP_PKEY_CTX *ctx, bool encrypt, const uint8_t *in, size_t n,
                      struct ferry_wbuf *out, size_t *out_len)
{
    uint8_t buf[1024];
    size_t len = sizeof buf;
    int ok = encrypt ? EVP_PKEY_encrypt(ctx, buf, &len, in, n)
                     : EVP_PKEY_decrypt(ctx, buf, &len, in, n);
    if (ok > 0) {
        ferry_wbuf_put(out, buf, len);
        *out_len = len;
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return ok > 0 && !out->failed ? 0 : -1;
}

/* (pw + NUL) XOR the scramble repeated; dst holds len + 1 bytes. */
static void xor_scramble(uint8_t *dst, const uint8_t *src, size_t len,
                         const uint8_t scramble[MY_SCRAMBLE_LEN])
{
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ scramble[i % MY_SCRAMBLE_LEN];
}

int my_sha2_rsa_encrypt(const uint8_t *pem, size_t pem_len, const char *pw, size_t len,
                        const uint8_t scramble[MY_SCRAMBLE_LEN], struct ferry_wbuf *out)
{
    uint8_t plain[512];
    if (len + 1 > sizeof plain)
        return -1;
    if (len)
        memcpy(plain, pw, len);
    plain[len] = 0;
    xor_scramble(plain, plain, len + 1, scramble);
    EVP_PKEY *key = read_public_pem(pem, pem_len);
    EVP_PKEY_CTX *ctx = key ? oaep_ctx(key, true) : NULL;
    size_t done;
    int rc = ctx ? pkey_crypt(ctx, true, plain, len + 1, out, &done) : -1;
    OPENSSL_cleanse(plain, sizeof plain);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(key);
    return rc;
}

int my_sha2_rsa_decrypt(EVP_PKEY *key, const uint8_t *in, size_t n,
                        const uint8_t scramble[MY_SCRAMBLE_LEN], struct ferry_wbuf *out)
{
    EVP_PKEY_CTX *ctx = oaep_ctx(key, false);
    size_t start = out->len, len = 0;
    int rc = ctx ? pkey_crypt(ctx, false, in, n, out, &len) : -1;
    EVP_PKEY_CTX_free(ctx);
    if (rc < 0)
        return -1;
    uint8_t *plain = out->data + start;
    xor_scramble(plain, plain, len, scramble);
    if (len == 0 || plain[len - 1] != 0) {      /* the client always adds a NUL */
        OPENSSL_cleanse(plain, len);
        out->len = start;
        return -1;
    }
    out->len = start + len - 1;
    return 0;
}

int my_rsa_public_pem(EVP_PKEY *key, struct ferry_wbuf *out)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    if (!bio || !PEM_write_bio_PUBKEY(bio, key)) {
        BIO_free(bio);
        return -1;
    }
    long len = BIO_get_mem_data(bio, &data);
    ferry_wbuf_put(out, data, (size_t)len);
    BIO_free(bio);
    return out->failed ? -1 : 0;
}

/* ---- ferry as a client -------------------------------------------------- */

static bool slice_is(struct ferry_slice s, const char *str)
{
    return s.len == strlen(str) && (s.len == 0 || memcmp(s.p, str, s.len) == 0);
}

int my_auth_client_start(struct my_auth_client *c, struct ferry_slice plugin,
                         struct ferry_slice data, struct ferry_wbuf *out)
{
    if (data.len < MY_SCRAMBLE_LEN)
        return -1;
    memcpy(c->scramble, data.p, MY_SCRAMBLE_LEN);
    uint8_t resp[MY_SHA256_LEN];
    size_t len;
    if (slice_is(plugin, MY_PLUGIN_NATIVE)) {
        c->sha2 = false;
        len = my_native_scramble(c->password, c->password_len, c->scramble, resp);
    } else if (slice_is(plugin, MY_PLUGIN_SHA2)) {
        c->sha2 = true;
        len = my_sha2_scramble(c->password, c->password_len, c->scramble, resp);
    } else {
        return -1;
    }
    ferry_wbuf_put(out, resp, len);
    OPENSSL_cleanse(resp, sizeof resp);
    return out->failed ? -1 : 0;
}

/* Full authentication: cleartext over TLS, RSA with a known key, or ask for the key. */
static int send_full_auth(struct my_auth_client *c, struct ferry_wbuf *out)
{
    if (!c->may_reveal)
        return MY_AUTH_CLIENT_INSECURE;
    if (c->tls) {
        ferry_wbuf_put(out, c->password, c->password_len);
        ferry_wbuf_u8(out, 0);
        return out->failed ? -1 : 0;
    }
    if (c->server_key)
        return my_sha2_rsa_encrypt(c->server_key, c->server_key_len, c->password,
                                   c->password_len, c->scramble, out);
    ferry_wbuf_u8(out, MY_SHA2_REQUEST_KEY);
    return out->failed ? -1 : 0;
}

int my_auth_client_more(struct my_auth_client *c, struct ferry_slice data,
                        struct ferry_wbuf *out, bool *reply)
{
    *reply = false;
    if (!c->sha2 || data.len == 0)
        return -1;
    if (data.len == 1 && data.p[0] == MY_SHA2_FAST_OK)
        return 0;
    *reply = true;
    if (data.len == 1 && data.p[0] == MY_SHA2_FULL_AUTH)
        return send_full_auth(c, out);
    if (c->tls || c->server_key || !c->may_reveal)
        return -1;              /* a key we did not ask for */
    /* The public key we asked for. */
    return my_sha2_rsa_encrypt(data.p, data.len, c->password, c->password_len, c->scramble, out);
}

/* ---- ferry as a server -------------------------------------------------- */

/* Full authentication packet from the client: cleartext, key request, or RSA. */
static enum my_auth_verdict server_full_auth(struct my_auth_server *s, const uint8_t *resp,
                                             size_t n, struct ferry_wbuf *out)
{
    if (s->tls)
        return my_cleartext_verify(s->secret, resp, n) ? MY_AUTH_OK : MY_AUTH_DENIED;
    if (!s->key)
        return MY_AUTH_DENIED;  /* neither TLS nor RSA: the password cannot travel */
    if (n == 1 && resp[0] == MY_SHA2_REQUEST_KEY)
        return my_rsa_public_pem(s->key, out) == 0 ? MY_AUTH_CONTINUE : MY_AUTH_DENIED;
    struct ferry_wbuf pw;
    ferry_wbuf_init(&pw, 1024);
    bool ok = my_sha2_rsa_decrypt(s->key, resp, n, s->scramble, &pw) == 0 &&
              my_cleartext_verify(s->secret, pw.data, pw.len);
    if (pw.data)
        OPENSSL_cleanse(pw.data, pw.cap);
    ferry_wbuf_free(&pw);
    return ok ? MY_AUTH_OK : MY_AUTH_DENIED;
}

enum my_auth_verdict my_auth_server_step(struct my_auth_server *s, const uint8_t *resp, size_t n,
                                         struct ferry_wbuf *out)
{
    if (s->step == MY_AUTH_STEP_FULL)
        return server_full_auth(s, resp, n, out);
    if (!s->sha2)
        return my_native_verify(s->secret, s->scramble, resp, n) ? MY_AUTH_OK : MY_AUTH_DENIED;
    if (my_sha2_verify_fast(s->secret, s->scramble, resp, n)) {
        ferry_wbuf_u8(out, MY_SHA2_FAST_OK);
        return MY_AUTH_OK;
    }
    /* A mismatch and a missing SHA256 stage 2 (MySQL's cache miss) both ask
     * for the password in full, as MySQL does ("we either failed to
     * authenticate or did not find entry in the cache"): a cached user with a
     * wrong password is answered like an uncached or unknown one. */
    if (n == 0)
        return MY_AUTH_DENIED;
    s->step = MY_AUTH_STEP_FULL;
    ferry_wbuf_u8(out, MY_SHA2_FULL_AUTH);
    return MY_AUTH_CONTINUE;
}
