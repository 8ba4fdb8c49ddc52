/* The TLS engine, client against server entirely in memory: handshakes, data
 * both ways (1 MB in pieces with the bytes held bounded), every backend mode's
 * verification (right and wrong names, unknown CA, expired certificate),
 * garbage input, close_notify, limits and context lifetimes. The certificates
 * are made at test time (tls_testpki.c). */
#include <stdint.h>

#include "ferry/tls.h"
#include "ferry/wbuf.h"
#include "tls_testpki.h"
#include "unit.h"

static struct tls_testpki pki;

/* A client and a server engine talking to each other. */
struct pair {
    struct ferry_tls *client;
    struct ferry_tls *server;
};

static struct ferry_tls_ctx *server_ctx(const char *cert, const char *key,
                                        enum ferry_tls_version min)
{
    char err[256];
    struct ferry_tls_ctx *ctx = ferry_tls_server_ctx_new(cert, key, min, NULL, NULL, err, sizeof err);
    if (!ctx)
        fprintf(stderr, "  server context: %s\n", err);
    return ctx;
}

/* Engines for a backend in mode (trusting ca) reaching the server with
 * cert/key under server_name. Both are NULL if a context failed. */
static struct pair pair_new(enum ferry_tls_mode mode, const char *ca, const char *server_name,
                            const char *cert, const char *key)
{
    char err[256];
    struct pair p = {0};
    struct ferry_tls_ctx *sctx = server_ctx(cert, key, FERRY_TLS_V1_2);
    struct ferry_tls_ctx *cctx = ferry_tls_client_ctx_new(mode, ca, err, sizeof err);
    if (sctx && cctx) {
        p.server = ferry_tls_new(sctx, NULL, err, sizeof err);
        p.client = ferry_tls_new(cctx, server_name, err, sizeof err);
    }
    /* The engines hold their own references. */
    ferry_tls_ctx_unref(sctx);
    ferry_tls_ctx_unref(cctx);
    return p;
}

static void pair_free(struct pair *p)
{
    ferry_tls_free(p->client);
    ferry_tls_free(p->server);
}

/* Moves all ciphertext from one engine to the other, as a socket would.
 * Returns the bytes moved, or -1 when the receiver refused them. */
static long shuttle(struct ferry_tls *from, struct ferry_tls *to)
{
    uint8_t buf[8192];
    long moved = 0;
    size_t n;
    while ((n = ferry_tls_take_out_buf(from, buf, sizeof buf)) > 0) {
        if (ferry_tls_feed(to, buf, n) != 0)
            return -1;
        moved += (long)n;
    }
    return moved;
}

/* Drives both handshakes to the end: 0 when both are done, -1 when a side
 * failed (its alert has been delivered) or they are still not done after
 * more round trips than any TLS handshake takes. */
static int handshake(struct pair *p)
{
    for (int round = 0; round < 5; round++) {
        int rc = ferry_tls_handshake(p->client);
        long sent = shuttle(p->client, p->server);
        int rs = rc < 0 ? 0 : ferry_tls_handshake(p->server);
        long back = shuttle(p->server, p->client);
        if (rc < 0 || rs < 0 || sent < 0 || back < 0)
            return -1;
        if (rc == 1 && rs == 1)
            return 0;
    }
    return -1;
}

/* Reads everything the engine can give into buf; returns the bytes read or
 * the engine's negative result when it ended before any. */
static long read_all(struct ferry_tls *t, uint8_t *buf, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = ferry_tls_read(t, buf + got, cap - got);
        if (n <= 0)
            return got ? (long)got : n;
        got += (size_t)n;
    }
}

static bool contains(const char *haystack, const char *needle)
{
    return strstr(haystack, needle) != NULL;
}

/* ---- names and contexts ---- */

static void test_mode_names(void)
{
    enum ferry_tls_mode m;
    ASSERT_EQ_INT(ferry_tls_mode_parse("verify-full", &m), 0);
    ASSERT_EQ_INT(m, FERRY_TLS_VERIFY_FULL);
    ASSERT_EQ_INT(ferry_tls_mode_parse("VERIFY_IDENTITY", &m), 0);
    ASSERT_EQ_INT(m, FERRY_TLS_VERIFY_FULL);
    ASSERT_EQ_INT(ferry_tls_mode_parse("verify_ca", &m), 0);
    ASSERT_EQ_INT(m, FERRY_TLS_VERIFY_CA);
    ASSERT_EQ_INT(ferry_tls_mode_parse("Preferred", &m), 0);
    ASSERT_EQ_INT(m, FERRY_TLS_PREFER);
    ASSERT_EQ_INT(ferry_tls_mode_parse("disabled", &m), 0);
    ASSERT_EQ_INT(m, FERRY_TLS_DISABLE);
    ASSERT_EQ_INT(ferry_tls_mode_parse("VERIFY-FULL", &m), -1);   /* PG names are lower case */
    ASSERT_EQ_INT(ferry_tls_mode_parse("allow", &m), -1);
    ASSERT_EQ_STR(ferry_tls_mode_name(FERRY_TLS_REQUIRE), "require");
    ASSERT_TRUE(ferry_tls_mode_allows_plaintext(FERRY_TLS_PREFER));
    ASSERT_TRUE(!ferry_tls_mode_allows_plaintext(FERRY_TLS_REQUIRE));

    enum ferry_tls_version v;
    ASSERT_EQ_INT(ferry_tls_version_parse("TLSv1.3", &v), 0);
    ASSERT_EQ_INT(v, FERRY_TLS_V1_3);
    ASSERT_EQ_INT(ferry_tls_version_parse("1.2", &v), 0);
    ASSERT_EQ_INT(v, FERRY_TLS_V1_2);
    ASSERT_EQ_INT(ferry_tls_version_parse("1.1", &v), -1);
}

static void test_context_errors(void)
{
    char err[256];
    ASSERT_TRUE(!ferry_tls_server_ctx_new("/nonexistent/cert.pem", pki.server_key,
                                          FERRY_TLS_V1_2, NULL, NULL, err, sizeof err));
    ASSERT_TRUE(contains(err, "certificate file /nonexistent/cert.pem"));
    ASSERT_TRUE(contains(err, "No such file"));

    ASSERT_TRUE(!ferry_tls_server_ctx_new(pki.server_cert, pki.expired_key, FERRY_TLS_V1_2,
                                          NULL, NULL, err, sizeof err));
    ASSERT_TRUE(contains(err, "key values mismatch"));

    ASSERT_TRUE(!ferry_tls_server_ctx_new(pki.server_cert, pki.server_key, FERRY_TLS_V1_2,
                                          "NO-SUCH-CIPHER", NULL, err, sizeof err));
    ASSERT_TRUE(contains(err, "ciphers: no usable cipher in \"NO-SUCH-CIPHER\""));
    ASSERT_TRUE(!ferry_tls_server_ctx_new(pki.server_cert, pki.server_key, FERRY_TLS_V1_2, NULL,
                                          "TLS_NO_SUCH_SUITE", err, sizeof err));
    ASSERT_TRUE(contains(err, "ciphersuites: no usable TLS 1.3 suite"));

    ASSERT_TRUE(!ferry_tls_client_ctx_new(FERRY_TLS_DISABLE, NULL, err, sizeof err));
    ASSERT_TRUE(contains(err, "disable"));

    ASSERT_TRUE(!ferry_tls_client_ctx_new(FERRY_TLS_VERIFY_CA, "/nonexistent/ca.pem", err,
                                          sizeof err));
    ASSERT_TRUE(contains(err, "CA file /nonexistent/ca.pem"));

    struct ferry_tls_ctx *full = ferry_tls_client_ctx_new(FERRY_TLS_VERIFY_FULL, pki.ca, err,
                                                          sizeof err);
    ASSERT_TRUE(full);
    ASSERT_EQ_INT(ferry_tls_ctx_mode(full), FERRY_TLS_VERIFY_FULL);
    struct ferry_tls *t = ferry_tls_new(full, NULL, err, sizeof err);
    ferry_tls_ctx_unref(full);
    ASSERT_TRUE(!t);
    ASSERT_TRUE(contains(err, "needs the server's host name"));
}

/* ---- handshake and data ---- */

static void test_handshake_and_echo(void)
{
    struct pair p = pair_new(FERRY_TLS_REQUIRE, NULL, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_STR(ferry_tls_protocol(p.client), "(none)");
    ASSERT_TRUE(!ferry_tls_handshake_done(p.client));
    ASSERT_EQ_INT(handshake(&p), 0);
    ASSERT_TRUE(ferry_tls_handshake_done(p.client) && ferry_tls_handshake_done(p.server));
    ASSERT_EQ_STR(ferry_tls_protocol(p.server), "TLSv1.3");
    ASSERT_TRUE(strcmp(ferry_tls_cipher(p.client), "(none)") != 0);

    uint8_t buf[64];
    ASSERT_EQ_INT(ferry_tls_write(p.client, "hello", 5), 0);
    ASSERT_EQ_INT(shuttle(p.client, p.server) > 5, 1);
    ASSERT_EQ_INT(read_all(p.server, buf, sizeof buf), 5);
    ASSERT_TRUE(memcmp(buf, "hello", 5) == 0);
    ASSERT_EQ_INT(ferry_tls_read(p.server, buf, sizeof buf), 0);      /* wants more */

    /* the other way, through a wbuf as the session may do */
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    ASSERT_EQ_INT(ferry_tls_write(p.server, "world!", 6), 0);
    ASSERT_TRUE(ferry_tls_pending_out(p.server) > 6);
    ssize_t n = ferry_tls_take_out(p.server, &out);
    ASSERT_TRUE(n > 6 && (size_t)n == out.len);
    ASSERT_EQ_INT(ferry_tls_pending_out(p.server), 0);
    ASSERT_EQ_INT(ferry_tls_feed(p.client, out.data, out.len), 0);
    ASSERT_EQ_INT(read_all(p.client, buf, sizeof buf), 6);
    ASSERT_TRUE(memcmp(buf, "world!", 6) == 0);
    ferry_wbuf_free(&out);
    pair_free(&p);
}

/* A wbuf too small for the pending ciphertext fails and leaves it in place. */
static void test_take_out_into_full_wbuf(void)
{
    struct pair p = pair_new(FERRY_TLS_REQUIRE, NULL, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_INT(ferry_tls_handshake(p.client), 0);
    size_t pending = ferry_tls_pending_out(p.client);
    ASSERT_TRUE(pending > 100);
    struct ferry_wbuf small;
    ferry_wbuf_init(&small, 100);
    ASSERT_EQ_INT(ferry_tls_take_out(p.client, &small), FERRY_TLS_ERROR);
    ASSERT_EQ_INT(ferry_tls_pending_out(p.client), pending);
    ferry_wbuf_free(&small);
    ASSERT_EQ_INT(handshake(&p), 0);
    pair_free(&p);
}

/* The backend side writes its startup message right after starting the
 * handshake: it waits in the engine and goes out once the handshake is done. */
static void test_write_before_handshake(void)
{
    struct pair p = pair_new(FERRY_TLS_VERIFY_FULL, pki.ca, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_INT(ferry_tls_write(p.client, "startup", 7), 0);
    ASSERT_EQ_INT(ferry_tls_buffered(p.client), 7);
    ASSERT_EQ_INT(handshake(&p), 0);
    ASSERT_TRUE(shuttle(p.client, p.server) >= 0);
    uint8_t buf[32];
    ASSERT_EQ_INT(read_all(p.server, buf, sizeof buf), 7);
    ASSERT_TRUE(memcmp(buf, "startup", 7) == 0);
    pair_free(&p);
}

static uint8_t pattern_byte(size_t i) { return (uint8_t)(i * 7 + (i >> 11)); }

/* Sends total bytes in pieces from one engine to the other, reading after
 * each piece like a relay, and checks content and the bytes held. */
static void send_in_pieces(struct ferry_tls *from, struct ferry_tls *to, size_t total,
                           size_t bound)
{
    static uint8_t piece[16384], got[20000];
    size_t sent = 0, received = 0;
    while (received < total) {
        size_t n = total - sent < sizeof piece ? total - sent : sizeof piece;
        for (size_t i = 0; i < n; i++)
            piece[i] = pattern_byte(sent + i);
        ASSERT_EQ_INT(ferry_tls_write(from, piece, n), 0);
        sent += n;
        ASSERT_TRUE(ferry_tls_buffered(from) <= bound);
        ASSERT_TRUE(shuttle(from, to) >= 0);
        ASSERT_TRUE(ferry_tls_buffered(to) <= bound);
        ssize_t r;
        while ((r = ferry_tls_read(to, got, sizeof got)) > 0) {
            for (ssize_t i = 0; i < r; i++)
                ASSERT_EQ_INT(got[i], pattern_byte(received + (size_t)i));
            received += (size_t)r;
        }
        ASSERT_EQ_INT(r, 0);
        ASSERT_TRUE(received == sent);
    }
}

static void test_megabyte_both_ways(void)
{
    struct pair p = pair_new(FERRY_TLS_VERIFY_CA, pki.ca, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ferry_tls_set_limit(p.client, 64 * 1024);
    ferry_tls_set_limit(p.server, 64 * 1024);
    ASSERT_EQ_INT(handshake(&p), 0);
    /* one piece plus record overhead is all either engine ever holds */
    send_in_pieces(p.client, p.server, 1 << 20, 17 * 1024);
    send_in_pieces(p.server, p.client, 1 << 20, 17 * 1024);
    ASSERT_EQ_INT(ferry_tls_buffered(p.client) + ferry_tls_buffered(p.server), 0);
    pair_free(&p);
}

static void test_limits(void)
{
    struct pair p = pair_new(FERRY_TLS_REQUIRE, NULL, NULL, pki.server_cert, pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_INT(handshake(&p), 0);
    ferry_tls_set_limit(p.server, 1000);
    static uint8_t big[2000];
    ASSERT_EQ_INT(ferry_tls_feed(p.server, big, 600), 0);
    ASSERT_EQ_INT(ferry_tls_feed(p.server, big, 600), FERRY_TLS_ERROR);   /* never read */
    ASSERT_TRUE(contains(ferry_tls_error(p.server), "over the 1000-byte limit"));
    ASSERT_EQ_INT(ferry_tls_read(p.server, big, sizeof big), FERRY_TLS_ERROR);   /* sticky */

    ferry_tls_set_limit(p.client, 1000);
    ASSERT_EQ_INT(ferry_tls_write(p.client, big, 900), 0);
    ASSERT_EQ_INT(ferry_tls_write(p.client, big, 900), FERRY_TLS_ERROR);  /* never taken out */
    ASSERT_TRUE(contains(ferry_tls_error(p.client), "outgoing TLS data over"));
    pair_free(&p);
}

/* ---- verification per mode ---- */

/* The handshake of a backend in mode against a server; returns the client's
 * error ("" on success) in err. */
static int try_connect(enum ferry_tls_mode mode, const char *ca, const char *name,
                       const char *cert, const char *key, char *err, size_t errlen)
{
    struct pair p = pair_new(mode, ca, name, cert, key);
    if (!p.client || !p.server) {
        pair_free(&p);
        snprintf(err, errlen, "(no engines)");
        return -2;
    }
    int rc = handshake(&p);
    snprintf(err, errlen, "%s", ferry_tls_error(p.client));
    pair_free(&p);
    return rc;
}

static void test_verify_full_right_names(void)
{
    char err[256];
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_FULL, pki.ca, "localhost", pki.server_cert,
                              pki.server_key, err, sizeof err), 0);
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_FULL, pki.ca, "127.0.0.1", pki.server_cert,
                              pki.server_key, err, sizeof err), 0);
}

static void test_verify_full_wrong_names(void)
{
    char err[256];
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_FULL, pki.ca, "db.example.com", pki.server_cert,
                              pki.server_key, err, sizeof err), -1);
    ASSERT_EQ_STR(err, "certificate verify failed: hostname mismatch (server name "
                       "\"db.example.com\")");
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_FULL, pki.ca, "127.0.0.2", pki.server_cert,
                              pki.server_key, err, sizeof err), -1);
    ASSERT_TRUE(contains(err, "IP address mismatch (server name \"127.0.0.2\")"));
}

/* The server learns why from the client's alert. */
static void test_server_sees_alert(void)
{
    struct pair p = pair_new(FERRY_TLS_VERIFY_CA, pki.other_ca, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_INT(handshake(&p), -1);
    uint8_t buf[16];
    ASSERT_EQ_INT(ferry_tls_read(p.server, buf, sizeof buf), FERRY_TLS_ERROR);
    ASSERT_TRUE(contains(ferry_tls_error(p.server), "alert unknown ca"));
    pair_free(&p);
}

static void test_verify_ca(void)
{
    char err[256];
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_CA, pki.ca, "db.example.com", pki.server_cert,
                              pki.server_key, err, sizeof err), 0);   /* names not checked */
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_CA, pki.other_ca, "localhost", pki.server_cert,
                              pki.server_key, err, sizeof err), -1);
    ASSERT_TRUE(contains(err, "certificate verify failed: unable to get local issuer"));
    ASSERT_TRUE(contains(err, "unknown CA"));
}

static void test_expired_rejected(void)
{
    char err[256];
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_FULL, pki.ca, "localhost", pki.expired_cert,
                              pki.expired_key, err, sizeof err), -1);
    ASSERT_EQ_STR(err, "certificate verify failed: certificate has expired");
    ASSERT_EQ_INT(try_connect(FERRY_TLS_VERIFY_CA, pki.ca, "localhost", pki.expired_cert,
                              pki.expired_key, err, sizeof err), -1);
}

static void test_prefer_require_do_not_verify(void)
{
    char err[256];
    enum ferry_tls_mode modes[] = {FERRY_TLS_PREFER, FERRY_TLS_REQUIRE};
    for (size_t i = 0; i < 2; i++) {
        /* an unknown CA, a wrong name and an expired certificate all pass */
        ASSERT_EQ_INT(try_connect(modes[i], pki.other_ca, "db.example.com", pki.expired_cert,
                                  pki.expired_key, err, sizeof err), 0);
        ASSERT_EQ_INT(try_connect(modes[i], NULL, "127.0.0.2", pki.server_cert, pki.server_key,
                                  err, sizeof err), 0);
    }
}

static void test_server_min_tls13(void)
{
    char err[256];
    struct ferry_tls_ctx *sctx = server_ctx(pki.server_cert, pki.server_key, FERRY_TLS_V1_3);
    struct ferry_tls_ctx *cctx = ferry_tls_client_ctx_new(FERRY_TLS_REQUIRE, NULL, err,
                                                          sizeof err);
    ASSERT_TRUE(sctx && cctx);
    struct pair p = {ferry_tls_new(cctx, "localhost", err, sizeof err),
                     ferry_tls_new(sctx, NULL, err, sizeof err)};
    ferry_tls_ctx_unref(sctx);
    ferry_tls_ctx_unref(cctx);
    ASSERT_EQ_INT(handshake(&p), 0);
    ASSERT_EQ_STR(ferry_tls_protocol(p.client), "TLSv1.3");
    pair_free(&p);
}

/* ---- hostile input and endings ---- */

static void test_garbage_before_handshake(void)
{
    char err[256];
    struct ferry_tls_ctx *sctx = server_ctx(pki.server_cert, pki.server_key, FERRY_TLS_V1_2);
    ASSERT_TRUE(sctx);
    /* a plaintext PostgreSQL StartupMessage where a ClientHello belongs */
    static const uint8_t startup[] = {0, 0, 0, 23, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0,
                                      'a', 'l', 'i', 'c', 'e', 0, 0, 0, 0, 0};
    struct ferry_tls *t = ferry_tls_new(sctx, NULL, err, sizeof err);
    ferry_tls_ctx_unref(sctx);
    ASSERT_TRUE(t);
    ASSERT_EQ_INT(ferry_tls_feed(t, startup, sizeof startup), 0);
    uint8_t buf[64];
    ASSERT_EQ_INT(ferry_tls_read(t, buf, sizeof buf), FERRY_TLS_ERROR);
    ASSERT_TRUE(contains(ferry_tls_error(t), "TLS handshake: error:"));
    ASSERT_TRUE(!contains(ferry_tls_error(t), "alice"));     /* input never echoed */
    ASSERT_EQ_INT(ferry_tls_feed(t, startup, 4), FERRY_TLS_ERROR);
    ASSERT_EQ_INT(ferry_tls_write(t, "x", 1), FERRY_TLS_ERROR);
    ferry_tls_free(t);
}

static void test_garbage_after_handshake(void)
{
    struct pair p = pair_new(FERRY_TLS_REQUIRE, NULL, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_INT(handshake(&p), 0);
    /* an application-data record header and junk that fails authentication */
    uint8_t junk[5 + 100] = {23, 3, 3, 0, 100};
    for (size_t i = 5; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 31);
    ASSERT_EQ_INT(ferry_tls_feed(p.server, junk, sizeof junk), 0);
    uint8_t buf[256];
    ASSERT_EQ_INT(ferry_tls_read(p.server, buf, sizeof buf), FERRY_TLS_ERROR);
    ASSERT_TRUE(contains(ferry_tls_error(p.server), "TLS read: error:"));
    ASSERT_TRUE(ferry_tls_pending_out(p.server) > 0);       /* the fatal alert */
    ASSERT_TRUE(shuttle(p.server, p.client) > 0);
    ASSERT_EQ_INT(ferry_tls_read(p.client, buf, sizeof buf), FERRY_TLS_ERROR);
    ASSERT_TRUE(contains(ferry_tls_error(p.client), "alert"));
    pair_free(&p);
}

static void test_close_notify(void)
{
    struct pair p = pair_new(FERRY_TLS_REQUIRE, NULL, "localhost", pki.server_cert,
                             pki.server_key);
    ASSERT_TRUE(p.client && p.server);
    ASSERT_EQ_INT(handshake(&p), 0);
    uint8_t buf[64];
    ASSERT_EQ_INT(ferry_tls_write(p.client, "bye", 3), 0);
    ASSERT_EQ_INT(ferry_tls_shutdown(p.client), 0);
    ASSERT_EQ_INT(ferry_tls_shutdown(p.client), 0);             /* once */
    ASSERT_TRUE(shuttle(p.client, p.server) > 0);
    ASSERT_EQ_INT(ferry_tls_read(p.server, buf, sizeof buf), 3);   /* data before the close */
    ASSERT_EQ_INT(ferry_tls_read(p.server, buf, sizeof buf), FERRY_TLS_CLOSED);
    ASSERT_TRUE(ferry_tls_peer_closed(p.server));
    ASSERT_EQ_STR(ferry_tls_error(p.server), "");

    /* half-close: the server may still answer, then close its side */
    ASSERT_EQ_INT(ferry_tls_write(p.server, "ok", 2), 0);
    ASSERT_EQ_INT(ferry_tls_shutdown(p.server), 0);
    ASSERT_TRUE(shuttle(p.server, p.client) > 0);
    ASSERT_EQ_INT(ferry_tls_write(p.server, "x", 1), FERRY_TLS_ERROR);
    ASSERT_EQ_STR(ferry_tls_error(p.server), "write after TLS close_notify");
    ASSERT_EQ_INT(ferry_tls_read(p.client, buf, sizeof buf), 2);
    ASSERT_EQ_INT(ferry_tls_read(p.client, buf, sizeof buf), FERRY_TLS_CLOSED);
    pair_free(&p);
}

/* A context unreferenced by its creator lives on in its connections. */
static void test_context_outlives_its_creator(void)
{
    char err[256];
    struct ferry_tls_ctx *sctx = server_ctx(pki.server_cert, pki.server_key, FERRY_TLS_V1_2);
    struct ferry_tls_ctx *cctx = ferry_tls_client_ctx_new(FERRY_TLS_VERIFY_FULL, pki.ca, err,
                                                          sizeof err);
    ASSERT_TRUE(sctx && cctx);
    struct pair p = {ferry_tls_new(cctx, "localhost", err, sizeof err),
                     ferry_tls_new(sctx, NULL, err, sizeof err)};
    struct pair q = {ferry_tls_new(ferry_tls_ctx_ref(cctx), "localhost", err, sizeof err),
                     ferry_tls_new(sctx, NULL, err, sizeof err)};
    ferry_tls_ctx_unref(cctx);          /* the extra reference taken for q */
    ferry_tls_ctx_unref(sctx);          /* a reload swapped the contexts */
    ferry_tls_ctx_unref(cctx);
    ASSERT_EQ_INT(handshake(&p), 0);
    pair_free(&p);
    ASSERT_EQ_INT(handshake(&q), 0);    /* the last connections keep them alive */
    pair_free(&q);
}

int main(void)
{
    if (tls_testpki_make(&pki) != 0)
        return 1;
    RUN(test_mode_names);
    RUN(test_context_errors);
    RUN(test_handshake_and_echo);
    RUN(test_take_out_into_full_wbuf);
    RUN(test_write_before_handshake);
    RUN(test_megabyte_both_ways);
    RUN(test_limits);
    RUN(test_verify_full_right_names);
    RUN(test_verify_full_wrong_names);
    RUN(test_server_sees_alert);
    RUN(test_verify_ca);
    RUN(test_expired_rejected);
    RUN(test_prefer_require_do_not_verify);
    RUN(test_server_min_tls13);
    RUN(test_garbage_before_handshake);
    RUN(test_garbage_after_handshake);
    RUN(test_close_notify);
    RUN(test_context_outlives_its_creator);
    tls_testpki_remove(&pki);
    UNIT_DONE();
}
