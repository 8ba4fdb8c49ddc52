/* The TLS engine: OpenSSL SSL objects whose transport is a pair of memory
 * BIOs, so the session moves ciphertext between them and its sockets and the
 * engine never blocks or touches a file descriptor. Contexts are refcounted
 * and read-only once built; each connection holds one reference. See
 * ferry/tls.h for the calling sequence.
 */
#include "ferry/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ferry/wbuf.h"

struct ferry_tls_ctx {
    SSL_CTX *ssl_ctx;           /* owned */
    enum ferry_tls_mode mode;   /* backend mode; REQUIRE for a server context */
    int refs;                   /* atomic: sessions on any worker drop theirs */
};

struct ferry_tls {
    struct ferry_tls_ctx *ctx;  /* counted reference */
    SSL *ssl;                   /* owned; owns both BIOs */
    BIO *in;                    /* borrowed from ssl: ciphertext from the socket */
    BIO *out;                   /* borrowed from ssl: ciphertext for the socket */
    struct ferry_wbuf early;    /* owned: plaintext held until SSL_write takes it */
    size_t limit;               /* bytes held per direction */
    bool handshake_done;
    bool failed;                /* sticky */
    bool peer_closed;           /* close_notify read */
    bool sent_close;            /* close_notify queued */
    char peer_name[256];        /* verify-full name, quoted in errors */
    char err[256];              /* "" until failed */
};

/* ---- names ---- */

static const struct {
    const char *pg, *mysql;
} mode_names[] = {
    [FERRY_TLS_DISABLE] = {"disable", "disabled"},
    [FERRY_TLS_PREFER] = {"prefer", "preferred"},
    [FERRY_TLS_REQUIRE] = {"require", "required"},
    [FERRY_TLS_VERIFY_CA] = {"verify-ca", "verify_ca"},
    [FERRY_TLS_VERIFY_FULL] = {"verify-full", "verify_identity"},
};

int ferry_tls_mode_parse(const char *name, enum ferry_tls_mode *mode)
{
    for (size_t i = 0; i < sizeof mode_names / sizeof mode_names[0]; i++) {
        /* MySQL spells them in capitals on the command line (--ssl-mode=REQUIRED) */
        if (strcmp(name, mode_names[i].pg) == 0 || strcasecmp(name, mode_names[i].mysql) == 0) {
            *mode = (enum ferry_tls_mode)i;
            return 0;
        }
    }
    return -1;
}

const char *ferry_tls_mode_name(enum ferry_tls_mode mode)
{
    if ((size_t)mode >= sizeof mode_names / sizeof mode_names[0])
        return "?";
    return mode_names[mode].pg;
}

int ferry_tls_version_parse(const char *name, enum ferry_tls_version *version)
{
    if (strncmp(name, "TLSv", 4) == 0)
        name += 4;
    if (strcmp(name, "1.2") == 0)
        *version = FERRY_TLS_V1_2;
    else if (strcmp(name, "1.3") == 0)
        *version = FERRY_TLS_V1_3;
    else
        return -1;
    return 0;
}

/* ---- errors ---- */

/* Formats the oldest error on this thread's OpenSSL queue (the root cause;
 * later entries say where it surfaced) and empties the queue. */
static void ssl_reason(char *buf, size_t len)
{
    unsigned long code = ERR_get_error();
    if (code)
        ERR_error_string_n(code, buf, len);
    else
        snprintf(buf, len, "no detail from OpenSSL");
    ERR_clear_error();
}

/* err = "<what>: <OpenSSL reason>". Returns NULL for the callers' tail calls. */
static void *ctx_fail(char *err, size_t errlen, const char *what, const char *path)
{
    char reason[200];
    ssl_reason(reason, sizeof reason);
    if (path)
        snprintf(err, errlen, "%s %s: %s", what, path, reason);
    else
        snprintf(err, errlen, "%s: %s", what, reason);
    return NULL;
}

__attribute__((format(printf, 2, 3)))
static int tls_fail(struct ferry_tls *t, const char *fmt, ...)
{
    if (!t->failed) {           /* the first cause is the one worth reporting */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->err, sizeof t->err, fmt, ap);
        va_end(ap);
        t->failed = true;
    }
    ERR_clear_error();
    return FERRY_TLS_ERROR;
}

/* A hint for the verification failures operators meet most. */
static const char *verify_hint(long result)
{
    switch (result) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        return " (unknown CA: not issued by a CA in the CA file)";
    default:
        return "";
    }
}

/* The reason for a failed SSL call: the certificate check when that is what
 * failed, else OpenSSL's error queue. */
static int fail_ssl(struct ferry_tls *t, const char *what)
{
    long result = SSL_get_verify_result(t->ssl);
    if (t->ctx->mode >= FERRY_TLS_VERIFY_CA && result != X509_V_OK) {
        const char *why = X509_verify_cert_error_string(result);
        if (result == X509_V_ERR_HOSTNAME_MISMATCH || result == X509_V_ERR_IP_ADDRESS_MISMATCH)
            return tls_fail(t, "certificate verify failed: %s (server name \"%s\")", why,
                            t->peer_name);
        return tls_fail(t, "certificate verify failed: %s%s", why, verify_hint(result));
    }
    char reason[200];
    ssl_reason(reason, sizeof reason);
    return tls_fail(t, "%s: %s", what, reason);
}

/* Maps an SSL call's failure: 0 when it only waits for the peer,
 * FERRY_TLS_CLOSED on close_notify, FERRY_TLS_ERROR otherwise. */
static int ssl_result(struct ferry_tls *t, int rc, const char *what)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:  /* the memory BIO never refuses a write; kept for safety */
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        t->peer_closed = true;
        return FERRY_TLS_CLOSED;
    default:
        return fail_ssl(t, what);
    }
}

/* ---- contexts ---- */

static struct ferry_tls_ctx *ctx_wrap(SSL_CTX *ssl_ctx, enum ferry_tls_mode mode, char *err,
                                      size_t errlen)
{
    struct ferry_tls_ctx *ctx = malloc(sizeof *ctx);
    if (!ctx) {
        SSL_CTX_free(ssl_ctx);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    *ctx = (struct ferry_tls_ctx){.ssl_ctx = ssl_ctx, .mode = mode, .refs = 1};
    return ctx;
}

/* Settings both sides share. */
static void ctx_common(SSL_CTX *c)
{
    /* Idle sessions then hold no 16 KiB record buffers: ferry has thousands. */
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Renegotiation is a DoS lever and nothing ferry talks to needs it. */
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
}

static int min_proto(enum ferry_tls_version v)
{
    return v == FERRY_TLS_V1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
}

struct ferry_tls_ctx *ferry_tls_server_ctx_new(const char *cert_file, const char *key_file,
                                               enum ferry_tls_version min_version,
                                               const char *ciphers, const char *ciphersuites,
                                               char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c)
        return ctx_fail(err, errlen, "TLS context", NULL);
    ctx_common(c);
    SSL_CTX_set_min_proto_version(c, min_proto(min_version));
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_num_tickets(c, 0);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_set_cipher_list(c, ciphers ? ciphers : FERRY_TLS_DEFAULT_CIPHERS) != 1) {
        SSL_CTX_free(c);
        snprintf(err, errlen, "ciphers: no usable cipher in \"%.100s\"", ciphers ? ciphers : "");
        return NULL;
    }
    if (ciphersuites && SSL_CTX_set_ciphersuites(c, ciphersuites) != 1) {
        SSL_CTX_free(c);
        snprintf(err, errlen, "ciphersuites: no usable TLS 1.3 suite in \"%.100s\"", ciphersuites);
        return NULL;
    }
    const char *what = NULL, *path = NULL;
    if (SSL_CTX_use_certificate_chain_file(c, cert_file) != 1)
        what = "certificate file", path = cert_file;
    else if (SSL_CTX_use_PrivateKey_file(c, key_file, SSL_FILETYPE_PEM) != 1)
        what = "key file", path = key_file;     /* also checks it matches the certificate */
    if (what) {
        SSL_CTX_free(c);
        return ctx_fail(err, errlen, what, path);
    }
    return ctx_wrap(c, FERRY_TLS_REQUIRE, err, errlen);
}

static int load_trust(SSL_CTX *c, const char *ca_file)
{
    if (ca_file)
        return SSL_CTX_load_verify_locations(c, ca_file, NULL);
    return SSL_CTX_set_default_verify_paths(c);
}

struct ferry_tls_ctx *ferry_tls_client_ctx_new(enum ferry_tls_mode mode, const char *ca_file,
                                               char *err, size_t errlen)
{
    if (mode <= FERRY_TLS_DISABLE || mode > FERRY_TLS_VERIFY_FULL) {
        snprintf(err, errlen, "TLS mode %s needs no TLS context", ferry_tls_mode_name(mode));
        return NULL;
    }
    ERR_clear_error();
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (!c)
        return ctx_fail(err, errlen, "TLS context", NULL);
    ctx_common(c);
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    bool verify = mode >= FERRY_TLS_VERIFY_CA;
    SSL_CTX_set_verify(c, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (verify && load_trust(c, ca_file) != 1) {
        SSL_CTX_free(c);
        return ctx_fail(err, errlen, "CA file", ca_file ? ca_file : "(system default)");
    }
    return ctx_wrap(c, mode, err, errlen);
}

struct ferry_tls_ctx *ferry_tls_ctx_ref(struct ferry_tls_ctx *ctx)
{
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
    return ctx;
}

void ferry_tls_ctx_unref(struct ferry_tls_ctx *ctx)
{
    /* acq_rel: the freeing thread must see every other thread's last use */
    if (ctx && __atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        SSL_CTX_free(ctx->ssl_ctx);
        free(ctx);
    }
}

enum ferry_tls_mode ferry_tls_ctx_mode(const struct ferry_tls_ctx *ctx) { return ctx->mode; }

/* ---- connections ---- */

static bool is_ip_address(const char *name)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name);
    ASN1_OCTET_STRING_free(ip);
    ERR_clear_error();          /* a name that is not an address leaves an error behind */
    return ip != NULL;
}

/* SNI and, under verify-full, the identity the certificate must carry. */
static int set_peer_name(struct ferry_tls *t, const char *name, char *err, size_t errlen)
{
    if (!name) {
        if (t->ctx->mode != FERRY_TLS_VERIFY_FULL)
            return 0;
        snprintf(err, errlen, "verify-full needs the server's host name");
        return -1;
    }
    if (strlen(name) >= sizeof t->peer_name) {
        snprintf(err, errlen, "server name longer than %zu bytes", sizeof t->peer_name - 1);
        return -1;
    }
    strcpy(t->peer_name, name);
    bool ip = is_ip_address(name);
    /* RFC 6066 §3: SNI carries host names only, never addresses */
    if (!ip && SSL_set_tlsext_host_name(t->ssl, name) != 1)
        goto bad;
    if (t->ctx->mode != FERRY_TLS_VERIFY_FULL)
        return 0;
    X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if ((ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name)
            : X509_VERIFY_PARAM_set1_host(param, name, 0)) != 1)
        goto bad;
    return 0;
bad:
    ctx_fail(err, errlen, "server name", name);
    return -1;
}

/* Wires a fresh SSL to two memory BIOs. */
static int attach_bios(struct ferry_tls *t)
{
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    if (!in || !out) {
        BIO_free(in);
        BIO_free(out);
        return -1;
    }
    /* An empty input BIO means "wait for the socket", not end of stream. */
    BIO_set_mem_eof_return(in, -1);
    SSL_set_bio(t->ssl, in, out);
    t->in = in;
    t->out = out;
    return 0;
}

struct ferry_tls *ferry_tls_new(struct ferry_tls_ctx *ctx, const char *server_name,
                                char *err, size_t errlen)
{
    struct ferry_tls *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->ctx = ferry_tls_ctx_ref(ctx);
    t->limit = FERRY_TLS_DEFAULT_LIMIT;
    ferry_wbuf_init(&t->early, 0);
    ERR_clear_error();
    t->ssl = SSL_new(ctx->ssl_ctx);
    if (!t->ssl || attach_bios(t) != 0) {
        ctx_fail(err, errlen, "TLS connection", NULL);
        ferry_tls_free(t);
        return NULL;
    }
    if (SSL_is_server(t->ssl)) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (set_peer_name(t, server_name, err, errlen) != 0) {
            ferry_tls_free(t);
            return NULL;
        }
    }
    return t;
}

void ferry_tls_free(struct ferry_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    ferry_wbuf_free(&t->early);
    ferry_tls_ctx_unref(t->ctx);
    free(t);
}

void ferry_tls_set_limit(struct ferry_tls *t, size_t bytes) { t->limit = bytes; }

size_t ferry_tls_pending_out(const struct ferry_tls *t) { return BIO_ctrl_pending(t->out); }

size_t ferry_tls_buffered(const struct ferry_tls *t)
{
    return BIO_ctrl_pending(t->in) + BIO_ctrl_pending(t->out) + t->early.len;
}

/* Hands held plaintext to SSL_write. It stays held while SSL_write waits
 * (MOVING_WRITE_BUFFER lets the retry pass a grown buffer). */
static int flush_early(struct ferry_tls *t)
{
    if (!t->early.len)
        return 0;
    size_t written = 0;
    ERR_clear_error();
    int rc = SSL_write_ex(t->ssl, t->early.data, t->early.len, &written);
    if (rc == 1) {
        ferry_wbuf_reset(&t->early);
        return 0;
    }
    return ssl_result(t, rc, "TLS write") == FERRY_TLS_ERROR ? FERRY_TLS_ERROR : 0;
}

int ferry_tls_handshake(struct ferry_tls *t)
{
    if (t->failed)
        return FERRY_TLS_ERROR;
    if (t->handshake_done)
        return 1;
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc != 1) {
        int r = ssl_result(t, rc, "TLS handshake");
        if (r == FERRY_TLS_CLOSED)
            return tls_fail(t, "TLS handshake: the peer closed the connection");
        return r;
    }
    t->handshake_done = true;
    return flush_early(t) < 0 ? FERRY_TLS_ERROR : 1;
}

bool ferry_tls_handshake_done(const struct ferry_tls *t) { return t->handshake_done; }

int ferry_tls_feed(struct ferry_tls *t, const void *cipher, size_t n)
{
    if (t->failed)
        return FERRY_TLS_ERROR;
    if (n > t->limit || BIO_ctrl_pending(t->in) > t->limit - n)
        return tls_fail(t, "incoming TLS data over the %zu-byte limit", t->limit);
    size_t written = 0;
    if (n && BIO_write_ex(t->in, cipher, n, &written) != 1)
        return tls_fail(t, "out of memory buffering TLS input");
    return 0;
}

ssize_t ferry_tls_read(struct ferry_tls *t, void *plain, size_t cap)
{
    if (t->peer_closed)
        return FERRY_TLS_CLOSED;
    int hs = ferry_tls_handshake(t);
    if (hs <= 0)
        return hs;
    if (flush_early(t) < 0)     /* a write that waited on the peer may go now */
        return FERRY_TLS_ERROR;
    size_t got = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(t->ssl, plain, cap, &got);
    if (rc == 1)
        return (ssize_t)got;
    return ssl_result(t, rc, "TLS read");
}

int ferry_tls_write(struct ferry_tls *t, const void *plain, size_t n)
{
    if (t->failed)
        return FERRY_TLS_ERROR;
    if (t->sent_close)
        return tls_fail(t, "write after TLS close_notify");
    size_t held = BIO_ctrl_pending(t->out) + t->early.len;
    if (n > t->limit || held > t->limit - n)
        return tls_fail(t, "outgoing TLS data over the %zu-byte limit", t->limit);
    /* Append, then flush: keeps the order when an earlier write still waits. */
    ferry_wbuf_put(&t->early, plain, n);
    if (t->early.failed)
        return tls_fail(t, "out of memory buffering TLS output");
    return t->handshake_done ? flush_early(t) : 0;
}

int ferry_tls_shutdown(struct ferry_tls *t)
{
    if (t->failed)
        return FERRY_TLS_ERROR;
    if (!t->handshake_done || t->sent_close)
        return 0;
    if (flush_early(t) < 0)     /* close_notify goes after the data */
        return FERRY_TLS_ERROR;
    t->sent_close = true;
    ERR_clear_error();
    /* 0: sent, the peer's close_notify not yet seen; 1: both sent. */
    int rc = SSL_shutdown(t->ssl);
    return rc >= 0 ? 0 : fail_ssl(t, "TLS shutdown");
}

size_t ferry_tls_take_out_buf(struct ferry_tls *t, void *buf, size_t cap)
{
    size_t got = 0;
    if (cap && BIO_read_ex(t->out, buf, cap, &got) != 1)
        got = 0;                /* empty */
    return got;
}

ssize_t ferry_tls_take_out(struct ferry_tls *t, struct ferry_wbuf *out)
{
    char *data = NULL;
    long len = BIO_get_mem_data(t->out, &data);
    if (len <= 0)
        return 0;
    ferry_wbuf_put(out, data, (size_t)len);
    if (out->failed)
        return FERRY_TLS_ERROR;
    /* Consume what was copied; a read into a scratch chunk avoids BIO_reset,
     * which would clear the whole buffer's capacity. */
    char scratch[4096];
    while (ferry_tls_take_out_buf(t, scratch, sizeof scratch))
        ;
    return len;
}

bool ferry_tls_peer_closed(const struct ferry_tls *t) { return t->peer_closed; }

const char *ferry_tls_error(const struct ferry_tls *t) { return t->err; }

const char *ferry_tls_protocol(const struct ferry_tls *t)
{
    return t->handshake_done ? SSL_get_version(t->ssl) : "(none)";
}

const char *ferry_tls_cipher(const struct ferry_tls *t)
{
    const char *name = t->handshake_done ? SSL_get_cipher_name(t->ssl) : NULL;
    return name ? name : "(none)";
}
