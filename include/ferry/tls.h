/* TLS for sessions: a non-blocking engine over OpenSSL memory BIOs.
 *
 * The engine knows no sockets and no loop: ciphertext read from a socket goes
 * in with ferry_tls_feed(), plaintext comes out of ferry_tls_read(); plaintext
 * to send goes in with ferry_tls_write(), ciphertext for the socket comes out
 * of ferry_tls_take_out(). So it runs alone in unit tests and fuzzers, and a
 * session drives it from its uv read and write callbacks:
 *
 *   on read(cipher):  ferry_tls_feed(); loop ferry_tls_read() until it
 *                     returns 0 (or CLOSED/ERROR); then ferry_tls_take_out()
 *                     and write that to the socket (handshake replies, alerts)
 *   to send(plain):   ferry_tls_write(); ferry_tls_take_out(); write it
 *   client side:      ferry_tls_handshake() once to produce the ClientHello
 *   on ERROR:         ferry_tls_take_out() may still hold a fatal alert: send
 *                     it, then close with ferry_tls_error() as the reason
 *
 * Threads: a ferry_tls_ctx is created on one thread (the main thread, from the
 * config) and is then only read, so every worker may use it; its refcount is
 * atomic, so a reload can swap contexts while old sessions keep theirs. A
 * ferry_tls belongs to the one thread that created it.
 *
 * Backend modes use PostgreSQL's sslmode names; MySQL's --ssl-mode names map
 * one to one and are accepted by ferry_tls_mode_parse():
 *   disable     = DISABLED         no TLS
 *   prefer      = PREFERRED        TLS if the server offers it, no verification
 *   require     = REQUIRED         TLS or fail, no verification
 *   verify-ca   = VERIFY_CA        TLS, chain must lead to a CA in the CA file
 *   verify-full = VERIFY_IDENTITY  verify-ca + certificate matches the host name
 * Falling back to plaintext under `prefer` is the session's decision (the
 * server answered 'N' / did not advertise CLIENT_SSL): see
 * ferry_tls_mode_allows_plaintext().
 */
#ifndef FERRY_TLS_H
#define FERRY_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct ferry_wbuf;

enum ferry_tls_mode {
    FERRY_TLS_DISABLE,
    FERRY_TLS_PREFER,
    FERRY_TLS_REQUIRE,
    FERRY_TLS_VERIFY_CA,
    FERRY_TLS_VERIFY_FULL,
};

/* Lowest protocol version a server context accepts. */
enum ferry_tls_version {
    FERRY_TLS_V1_2,     /* the default */
    FERRY_TLS_V1_3,
};

/* Negative results of the engine calls. */
enum {
    FERRY_TLS_ERROR = -1,   /* fatal, sticky: ferry_tls_error() says why */
    FERRY_TLS_CLOSED = -2,  /* the peer sent close_notify: no more plaintext */
};

/* Bytes an engine may hold per direction unless ferry_tls_set_limit() says
 * otherwise (the default listeners[].session_buffer). */
#define FERRY_TLS_DEFAULT_LIMIT (256 * 1024)

/* Accepts the PostgreSQL names (disable, prefer, ...) and the MySQL ones in
 * any case (DISABLED, ..., VERIFY_IDENTITY). 0, or -1 for an unknown name. */
int ferry_tls_mode_parse(const char *name, enum ferry_tls_mode *mode);
/* The PostgreSQL name of a mode; a static string. */
const char *ferry_tls_mode_name(enum ferry_tls_mode mode);
/* prefer (and disable) may go on without TLS when the server has none. */
static inline bool ferry_tls_mode_allows_plaintext(enum ferry_tls_mode mode)
{
    return mode <= FERRY_TLS_PREFER;
}
/* Accepts "1.2", "1.3", "TLSv1.2", "TLSv1.3". 0, or -1. */
int ferry_tls_version_parse(const char *name, enum ferry_tls_version *version);

/* ---- contexts: one per configured certificate or backend mode ---- */

struct ferry_tls_ctx;

/* A context for terminating TLS from clients, with the certificate chain and
 * the (unencrypted) private key from PEM files. No client certificates are
 * asked for; no session tickets or cache (clients of databases do not resume,
 * and a cache would be shared state across workers).
 * Returns a context holding one reference, or NULL with the reason in err
 * (naming the file, never key material). Thread: any; typically main. */
/* Forward-secret AEAD suites only for TLS 1.2 (Mozilla's "intermediate"
 * list without the DHE ones); TLS 1.3 suites are all AEAD and forward
 * secret, OpenSSL's defaults. */
#define FERRY_TLS_DEFAULT_CIPHERS                                                      \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                       \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                       \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* ciphers (TLS 1.2, OpenSSL's list syntax) and ciphersuites (TLS 1.3):
 * NULL = the defaults above. An unusable list is an error naming it. */
struct ferry_tls_ctx *ferry_tls_server_ctx_new(const char *cert_file, const char *key_file,
                                               enum ferry_tls_version min_version,
                                               const char *ciphers, const char *ciphersuites,
                                               char *err, size_t errlen);

/* A context for connecting to backends in mode (not FERRY_TLS_DISABLE: a
 * disabled backend needs no context). ca_file is a PEM bundle (e.g. the RDS
 * global-bundle.pem) used by verify-ca and verify-full; NULL means the
 * system's default store. prefer and require never verify, even with a
 * ca_file. Returns a context holding one reference, or NULL with the reason
 * in err. Thread: any; typically main. */
struct ferry_tls_ctx *ferry_tls_client_ctx_new(enum ferry_tls_mode mode, const char *ca_file,
                                               char *err, size_t errlen);

/* Takes one more reference; returns ctx. Thread: any. */
struct ferry_tls_ctx *ferry_tls_ctx_ref(struct ferry_tls_ctx *ctx);
/* Drops one reference; the last one frees the context. NULL is a no-op.
 * Thread: any. */
void ferry_tls_ctx_unref(struct ferry_tls_ctx *ctx);
/* The backend mode of a client context; FERRY_TLS_REQUIRE for a server one. */
enum ferry_tls_mode ferry_tls_ctx_mode(const struct ferry_tls_ctx *ctx);

/* ---- one TLS connection ---- */

struct ferry_tls;

/* A connection on ctx (it takes its own reference, so the caller may drop
 * its one at once). For a client context, server_name is the backend's host
 * name or IP address as configured: sent as SNI when it is a name (RFC 6066
 * has no SNI for addresses), and matched against the certificate under
 * verify-full (required then). Ignored for a server context; may be NULL.
 * Returns the connection, or NULL with the reason in err.
 * Thread: the calling thread owns it from now on. */
struct ferry_tls *ferry_tls_new(struct ferry_tls_ctx *ctx, const char *server_name,
                                char *err, size_t errlen);
/* Frees the connection and drops its context reference. NULL is a no-op. */
void ferry_tls_free(struct ferry_tls *t);

/* Caps the bytes held per direction: ciphertext fed but not yet read, and
 * plaintext written plus ciphertext not yet taken out. Going past it is a
 * FERRY_TLS_ERROR, so memory per session stays bounded whatever the peer
 * sends; a session that stops reading its socket while it cannot pass the
 * plaintext on never reaches it. */
void ferry_tls_set_limit(struct ferry_tls *t, size_t bytes);

/* Advances the handshake (ferry_tls_read() also does). The client side calls
 * it once before anything was fed, to produce its ClientHello.
 * Returns 1 when the handshake is complete, 0 while it needs more bytes
 * from the peer (take out and send what it produced), FERRY_TLS_ERROR. */
int ferry_tls_handshake(struct ferry_tls *t);
bool ferry_tls_handshake_done(const struct ferry_tls *t);

/* Hands over n bytes read from the socket (copied). 0, or FERRY_TLS_ERROR
 * (the limit would be passed, or an earlier error). */
int ferry_tls_feed(struct ferry_tls *t, const void *cipher, size_t n);

/* Decrypts into plain (up to cap bytes), driving the handshake first.
 * Returns the bytes of plaintext (> 0); 0 when it needs more ciphertext;
 * FERRY_TLS_CLOSED once the peer's close_notify is read; FERRY_TLS_ERROR.
 * Call it until it returns <= 0 after each feed: one record may hold more
 * than cap. */
ssize_t ferry_tls_read(struct ferry_tls *t, void *plain, size_t cap);

/* Queues n bytes of plaintext (copied): encrypted at once when the handshake
 * is done, held and sent right after it otherwise. 0, or FERRY_TLS_ERROR
 * (over the limit, after ferry_tls_shutdown(), or an earlier error). */
int ferry_tls_write(struct ferry_tls *t, const void *plain, size_t n);

/* Queues a close_notify (once; writes after it fail). Before the handshake
 * is done there is nothing to close politely and it does nothing. Reading
 * stays possible until the peer's own close_notify. 0, or FERRY_TLS_ERROR. */
int ferry_tls_shutdown(struct ferry_tls *t);

/* Ciphertext waiting to be taken out for the socket. */
size_t ferry_tls_pending_out(const struct ferry_tls *t);
/* Everything the engine holds (both directions, plaintext and ciphertext):
 * for the session's memory and backpressure accounting. */
size_t ferry_tls_buffered(const struct ferry_tls *t);
/* Appends all pending ciphertext to out. Returns the bytes appended (>= 0),
 * or FERRY_TLS_ERROR when out failed (out of memory or past out->max; the
 * ciphertext then stays in the engine). */
ssize_t ferry_tls_take_out(struct ferry_tls *t, struct ferry_wbuf *out);
/* Moves up to cap bytes of pending ciphertext into buf (e.g. a pooled write
 * chunk); returns the bytes moved. */
size_t ferry_tls_take_out_buf(struct ferry_tls *t, void *buf, size_t cap);

/* The peer's close_notify has been read. */
bool ferry_tls_peer_closed(const struct ferry_tls *t);
/* Why the engine failed ("" while it has not): a sentence for logs and error
 * packets, e.g. "certificate verify failed: Hostname mismatch (server name
 * \"db.example\")". Valid until the next call on t. */
const char *ferry_tls_error(const struct ferry_tls *t);
/* Negotiated protocol ("TLSv1.3") and cipher ("TLS_AES_256_GCM_SHA384") for
 * logs; "(none)" before the handshake. Static strings. */
const char *ferry_tls_protocol(const struct ferry_tls *t);
const char *ferry_tls_cipher(const struct ferry_tls *t);

#endif
