/* PostgreSQL on top of the relay: ferry reads the client's startup phase
 * itself (SSLRequest and GSSENCRequest get 'N', a CancelRequest is mapped
 * to the real backend key and forwarded, the StartupMessage is kept until
 * the session is routed), then scans message headers in both directions:
 * ReadyForQuery gives the transaction state, BackendKeyData is rewritten to
 * ferry's own cancel key, SQLSTATE 25006 triggers a probe. When the writer
 * moves, idle sessions end with 57P01 and busy ones are fenced: ferry
 * answers for the lost transaction until ROLLBACK.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "ferry/tls.h"
#include "pg/auth.h"
#include "pg/codec.h"
#include "session.h"

enum pg_auth_phase {
    PGA_NONE,           /* passthrough, or before the StartupMessage */
    PGA_SASL_FIRST,     /* sent AuthenticationSASL: SASLInitialResponse next */
    PGA_SASL_FINAL,     /* sent AuthenticationSASLContinue: SASLResponse next */
    PGA_PASSWORD,       /* sent AuthenticationMD5Password: PasswordMessage next */
    PGA_DONE,           /* the client is authenticated */
};

#define MOVE_SETS_MAX (16u * 1024)            /* SET statements a move replays */
#define MOVE_STATEMENTS_MAX (1024u * 1024)    /* Parse frames a move replays */

static void client_auth_begin(struct px_session *s);
static void start_tls(struct px_session *s);
static void backend_tls_failed(struct px_session *s, const char *why, bool reachable);
static void client_auth_advance(struct px_session *s);
static void login_failed(struct px_session *s, const char *why);
static void login_lost(struct px_session *s, const char *why);
static void move_begin(struct px_session *s);
static bool movable(const struct px_session *s);
static void track_client(struct px_session *s, uint8_t type, const uint8_t *body,
                         uint32_t captured, uint32_t len, const uint8_t *inplace);
static void track_server(struct px_session *s, uint8_t type, const uint8_t *body, uint32_t n);

static struct px_pg_session *pgs(struct px_session *s)
{
    return &s->u.pg;
}

/* ---- the startup phase ---- */

struct px_cancel_req {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uint8_t msg[16];
};

static void on_cancel_closed(uv_handle_t *h)
{
    free(ferry_container_of((uv_tcp_t *)h, struct px_cancel_req, tcp));
}

static void on_cancel_written(uv_write_t *w, int status)
{
    (void)status;   /* the server answers a cancel by closing: nothing to read */
    struct px_cancel_req *c = ferry_container_of(w, struct px_cancel_req, write);
    uv_close((uv_handle_t *)&c->tcp, on_cancel_closed);
}

static void on_cancel_connected(uv_connect_t *req, int status)
{
    struct px_cancel_req *c = ferry_container_of(req, struct px_cancel_req, connect);
    uv_buf_t b = uv_buf_init((char *)c->msg, sizeof c->msg);
    if (status < 0 || uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_cancel_written) != 0) {
        ferry_log(FERRY_LOG_WARN, "cancel.failed", "error=\"%s\"",
                  status < 0 ? uv_strerror(status) : "write failed");
        uv_close((uv_handle_t *)&c->tcp, on_cancel_closed);
    }
}

/* Forwards a client's CancelRequest, translated, to the server its session
 * is on. Fire and forget, as PostgreSQL's own protocol is. */
static void forward_cancel(struct px_session *s, uint32_t pid, uint32_t key)
{
    struct sockaddr_storage addr;
    uint32_t bpid, bkey;
    if (!px_cancel_lookup(pid, key, &addr, &bpid, &bkey)) {
        ferry_log(FERRY_LOG_INFO, "cancel.unknown_key", "listener=%s", s->pl->name);
        return;
    }
    struct px_cancel_req *c = calloc(1, sizeof *c);
    if (!c)
        return;
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, sizeof c->msg);
    pg_build_cancel_request(&b, bpid, bkey);
    if (b.failed || b.len != sizeof c->msg) {
        ferry_wbuf_free(&b);
        free(c);
        return;
    }
    memcpy(c->msg, b.data, sizeof c->msg);
    ferry_wbuf_free(&b);
    uv_tcp_init(&s->owner->loop, &c->tcp);
    if (uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&addr, on_cancel_connected) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_cancel_closed);
    } else {
        /* the listener's backend TCP options, as on every backend connection */
        int fd;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
            (void)ferry_tcp_apply(fd, &s->lcfg->server_tcp);
    }
    ferry_log(FERRY_LOG_INFO, "cancel.forwarded", "listener=%s backend_pid=%u", s->pl->name, bpid);
}

/* For display only: a NUL-terminated, truncated copy. */
static void copy_slice(char *out, size_t len, struct ferry_slice v)
{
    size_t n = v.p ? (v.len < len - 1 ? v.len : len - 1) : 0;
    if (n)
        memcpy(out, v.p, n);
    out[n] = '\0';
}

/* NegotiateProtocolVersion: ferry speaks 3.0 and no _pq_ options. */
static void negotiate_version(struct px_session *s, const struct pg_startup *st)
{
    struct ferry_slice options[16], list = st->params, name, value;
    size_t n = 0;
    while (n < 16 && pg_param_next(&list, &name, &value))
        if (name.len > 5 && memcmp(name.p, "_pq_.", 5) == 0)
            options[n++] = name;
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    pg_build_negotiate_version(&b, 0, options, n);
    if (px_session_write(s, &s->client, &b, false) != 0)
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
}

/* The client's bytes not parsed yet. NULL when the buffer has no storage:
 * a first read larger than the buffer's limit stores nothing, and NULL + 0
 * is undefined behaviour. */
static const uint8_t *startup_unread(const struct px_pg_session *p)
{
    return p->startup.data ? p->startup.data + p->startup_off : NULL;
}

/* Parses what the client has sent so far; acts on each complete packet. */
static void startup_advance(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    for (;;) {
        struct pg_startup st;
        const uint8_t *at = startup_unread(p);
        int rc = pg_decode_startup(at, p->startup.len - p->startup_off, &st);
        if (rc == FERRY_NEED_MORE && !p->startup.failed)
            return;
        if (rc < 0) {
            px_conn_stop_reading(&s->client);
            s->failing = false;
            p->startup_done = true;    /* the error goes out now */
            px_session_fail(s, PX_ERR_PROTOCOL, "invalid startup packet");
            return;
        }
        if (st.kind == PG_STARTUP_SSL && s->lcfg->tls_server_ctx && !s->client.tls) {
            p->startup_off += (size_t)rc;
            start_tls(s);
            return;
        }
        if (st.kind == PG_STARTUP_SSL || st.kind == PG_STARTUP_GSSENC) {
            static char no = 'N';
            uv_buf_t b = uv_buf_init(&no, 1);
            p->startup_off += (size_t)rc;
            if (uv_try_write((uv_stream_t *)&s->client.tcp, &b, 1) != 1) {
                px_session_close(s, FERRY_LOG_INFO, "client write failed");
                return;
            }
            continue;
        }
        if (st.kind == PG_STARTUP_MESSAGE && s->lcfg->tls_required && !s->client.tls) {
            px_conn_stop_reading(&s->client);
            p->startup_done = true;
            px_session_fail(s, PX_ERR_TLS_REQUIRED,
                            "this listener requires TLS (sslmode=require or stronger)");
            return;
        }
        px_conn_stop_reading(&s->client);
        p->startup_done = true;
        uv_timer_stop(&s->timer);
        if (st.kind == PG_STARTUP_CANCEL) {
            forward_cancel(s, st.cancel_pid, st.cancel_key);
            px_session_close(s, FERRY_LOG_DEBUG, "cancel request handled");
            return;
        }
        if (p->fail_text) {     /* an error was waiting for this packet */
            px_session_send_error(s, p->fail_kind, p->fail_text);
            return;
        }
        if (st.kind == PG_STARTUP_BAD_VERSION) {
            char text[96];
            snprintf(text, sizeof text, "unsupported frontend protocol %u.%u: ferry supports 3.0",
                     st.version >> 16, st.version & 0xffff);
            px_session_fail(s, PX_ERR_UNSUPPORTED, text);
            return;
        }
        p->startup_msg = p->startup_off;
        p->startup_off += (size_t)rc;
        p->startup_len = (size_t)rc;
        copy_slice(s->user, sizeof s->user, st.user);
        copy_slice(s->database, sizeof s->database, st.database.p ? st.database : st.user);
        if (s->lcfg->auth_terminated) {
            /* ferry answers the startup itself: it negotiates the version
             * too (passthrough leaves that to the server) */
            if (pg_startup_needs_negotiation(&st))
                negotiate_version(s, &st);
            client_auth_begin(s);
        } else {
            px_session_route(s);
        }
        return;
    }
}

static void on_startup_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* SSLRequest on a listener with a certificate: answer 'S' and go on over
 * TLS. Bytes the client sent after the SSLRequest arrived unencrypted, so
 * a man in the middle could have injected them (CVE-2021-23214): they end
 * the session. */
static void start_tls(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (p->startup_off != p->startup.len) {
        px_conn_stop_reading(&s->client);
        p->startup_done = true;
        px_session_fail(s, PX_ERR_PROTOCOL, "unencrypted bytes after the SSLRequest");
        return;
    }
    static char yes = 'S';
    uv_buf_t b = uv_buf_init(&yes, 1);
    if (uv_try_write((uv_stream_t *)&s->client.tcp, &b, 1) != 1) {
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
        return;
    }
    ferry_wbuf_reset(&p->startup);      /* what follows is the encrypted startup */
    p->startup_off = 0;
    px_session_client_tls(s, NULL, 0, on_startup_read);
}

static void on_startup_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_session *s = ((struct px_conn *)stream->data)->owner;
    nread = px_session_read_into(s, &pgs(s)->startup, nread, buf);
    if (nread == 0)
        return;
    if (nread < 0) {
        px_session_close(s, FERRY_LOG_DEBUG, "client left during startup");
        return;
    }
    if (pgs(s)->auth_phase)
        client_auth_advance(s);
    else
        startup_advance(s);
}

static void pg_begin(struct px_session *s)
{
    /* room for a StartupMessage after an SSLRequest and a GSSENCRequest */
    ferry_wbuf_init(&pgs(s)->startup, PG_STARTUP_MAX_BODY + 4 + 16);
    if (px_conn_read_start(&s->client, on_startup_read) != 0)
        px_session_close(s, FERRY_LOG_INFO, "read start failed");
    /* no timer here: client_login_timeout (session.c) bounds the startup
     * phase; a refused client's wait is pg_defer_error's */
}

/* libpq shows an error only after its startup packet: wait for it (the
 * startup reader sends this error when the packet is in). */
static bool pg_defer_error(struct px_session *s, enum px_err kind, const char *text)
{
    struct px_pg_session *p = pgs(s);
    /* a login timeout has waited long enough: the error goes out now */
    if (p->startup_done || kind == PX_ERR_LOGIN_TIMEOUT || (p->fail_text = strdup(text)) == NULL)
        return false;
    p->fail_kind = kind;
    uint64_t login_ms = (uint64_t)(s->lcfg->client_login_timeout * 1000.0);
    px_session_arm_timer(s, login_ms < 10000 ? login_ms : 10000);
    return true;
}

static bool pg_timer(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (s->connected && s->lcfg->tls_backend_ctx && !s->server.tls_settled) {
        backend_tls_failed(s, "no answer to the SSLRequest in time", false);
        return true;
    }
    if (p->login && p->auth_phase == PGA_DONE && s->connected) {
        login_lost(s, "login timed out");
        return true;
    }
    if (p->startup_done && p->auth_phase != PGA_SASL_FIRST && p->auth_phase != PGA_SASL_FINAL &&
        p->auth_phase != PGA_PASSWORD)
        return false;
    px_session_close(s, FERRY_LOG_INFO, "client sent no startup packet");
    return true;
}

/* ---- terminated authentication: ferry checks the client ----
 * The client authenticates against the listener's user list (SCRAM-SHA-256,
 * MD5 or trust, as configured per user); only then is the session routed,
 * so a wrong password never opens a backend connection. Unknown users go
 * through the same exchange as known ones and fail the same way, so the
 * answer does not tell which user names exist: as PostgreSQL does, their
 * SCRAM salt is SHA-256 over the name and a server secret (the same on every
 * attempt, like a real user's), with the iteration count real users have. */

/* The server secret behind made-up salts (PostgreSQL's mock authentication
 * nonce): random at start and kept for the process's life, so a reload keeps
 * every salt. Written once under mock_once, before any worker reads it. */
static uint8_t mock_nonce[PG_SCRAM_MOCK_NONCE_LEN];
static pthread_once_t mock_once = PTHREAD_ONCE_INIT;
static bool mock_nonce_ok;

static void mock_nonce_init(void)
{
    mock_nonce_ok = pg_auth_random(mock_nonce, sizeof mock_nonce) == PG_AUTH_RC_OK;
}

/* The iteration count most of the listener's stored verifiers have (an
 * earlier user wins a tie); PostgreSQL's default without any. */
static uint32_t common_iterations(const struct ferry_listener_cfg *l)
{
    uint32_t best = PG_SCRAM_DEFAULT_ITERATIONS;
    size_t best_n = 0;
    for (size_t i = 0; i < l->nusers; i++) {
        const struct pg_scram_secret *a = l->users[i].derived;
        size_t n = 0;
        for (size_t j = 0; a && j < l->nusers; j++) {
            const struct pg_scram_secret *b = l->users[j].derived;
            n += b && b->iterations == a->iterations;
        }
        if (n > best_n) {
            best = a->iterations;
            best_n = n;
        }
    }
    return best;
}

/* Parses every stored verifier, derives the secret of users given only a
 * password (their salt: the mock one, so it is as stable as an unknown
 * user's), and picks what unknown users are shown. */
bool px_pg_auth_prepare(struct ferry_listener_cfg *l, char *why, size_t whylen)
{
    pthread_once(&mock_once, mock_nonce_init);
    if (!mock_nonce_ok) {
        snprintf(why, whylen, "auth: no randomness for the mock authentication nonce");
        return false;
    }
    size_t md5 = 0, scram = 0;
    for (size_t i = 0; i < l->nusers; i++) {   /* verifiers first: they set the count */
        struct ferry_user_cfg *u = &l->users[i];
        md5 += u->method == FERRY_AUTH_MD5;
        scram += u->method == FERRY_AUTH_SCRAM;
        if (u->method != FERRY_AUTH_SCRAM || !u->scram_verifier)
            continue;
        if (!(u->derived = malloc(sizeof(struct pg_scram_secret))) ||
            pg_scram_secret_parse(u->scram_verifier, u->derived) != PG_AUTH_RC_OK) {
            snprintf(why, whylen, "auth.users[%zu].scram_verifier: %s", i,
                     u->derived ? "not a valid SCRAM-SHA-256 verifier" : "out of memory");
            return false;
        }
    }
    l->scram_mock_iterations = common_iterations(l);
    l->mock_md5 = md5 > scram;
    for (size_t i = 0; i < l->nusers; i++) {
        struct ferry_user_cfg *u = &l->users[i];
        const struct pg_scram_secret *sec = u->derived;
        if (sec && sec->iterations != l->scram_mock_iterations) {
            char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
            ferry_log(FERRY_LOG_WARN, "config.scram_iterations", "listener=%s user=%s "
                      "iterations=%u others=%u reason=\"the count tells clients this user exists\"",
                      l->name, ferry_log_quote(u->name, qu, sizeof qu), sec->iterations,
                      l->scram_mock_iterations);
        }
        if (u->method != FERRY_AUTH_SCRAM || u->scram_verifier)
            continue;
        uint8_t salt[PG_SCRAM_SALT_LEN];
        if (!(u->derived = malloc(sizeof(struct pg_scram_secret))) ||
            pg_scram_mock_salt(mock_nonce, u->name, salt) != PG_AUTH_RC_OK ||
            pg_scram_secret_from_password(u->password, l->scram_mock_iterations, salt, sizeof salt,
                                          u->derived) != PG_AUTH_RC_OK) {
            snprintf(why, whylen, "auth.users[%zu]: cannot derive a SCRAM secret", i);
            return false;
        }
    }
    return true;
}

void px_pg_auth_release(struct ferry_listener_cfg *l)
{
    for (size_t i = 0; i < l->nusers; i++) {
        if (l->users[i].derived)
            OPENSSL_cleanse(l->users[i].derived, sizeof(struct pg_scram_secret));
        free(l->users[i].derived);
        l->users[i].derived = NULL;
    }
}

/* Exchange state while either side authenticates. */
struct px_pg_login {
    struct pg_scram_server server;      /* ferry as the client's server */
    struct pg_scram_client client;      /* ferry as the backend's client */
    uint8_t md5_salt[4];
    struct ferry_wbuf in;               /* backend bytes during login */
};

#define PG_AUTH_MSG_MAX 4096u           /* longest message of an auth exchange */

static void login_free(struct px_pg_session *p)
{
    if (!p->login)
        return;
    pg_scram_server_clear(&p->login->server);
    pg_scram_client_clear(&p->login->client);
    ferry_wbuf_free(&p->login->in);
    free(p->login);
    p->login = NULL;
}

/* The SCRAM secret the client's exchange runs against: the user's (made by
 * px_pg_auth_prepare), or for an unknown name a mock one that fails at the
 * proof check. */
static int client_secret(const struct px_session *s, const struct ferry_user_cfg *u,
                         struct pg_scram_secret *out)
{
    if (u && u->derived) {
        *out = *(const struct pg_scram_secret *)u->derived;
        return PG_AUTH_RC_OK;
    }
    return pg_scram_secret_mock(mock_nonce, s->user, s->lcfg->scram_mock_iterations, out);
}

static void auth_failed(struct px_session *s)
{
    char text[FERRY_NAME_MAX + 64];
    snprintf(text, sizeof text, "password authentication failed for user \"%s\"", s->user);
    login_free(pgs(s));
    px_session_fail(s, PX_ERR_AUTH_FAILED, text);
}

static void send_to_client(struct px_session *s, struct ferry_wbuf *b)
{
    if (px_session_write(s, &s->client, b, false) != 0)
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
}

/* The client proved who it is: AuthenticationOk, then route. The client's
 * ParameterStatus, BackendKeyData and ReadyForQuery come from the backend
 * once ferry has logged in there. */
static void client_authenticated(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    p->auth_phase = PGA_DONE;
    px_session_logged_in(s);
    /* the client waits quietly from here: an unreachable writer holds it
     * (up to hold_timeout) like a new client waiting for a writer */
    s->retry_connect = true;
    pg_scram_server_clear(&p->login->server);
    px_conn_stop_reading(&s->client);
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    pg_build_auth_ok(&b);
    send_to_client(s, &b);
    if (s->closing)
        return;
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    ferry_log(FERRY_LOG_DEBUG, "session.authenticated", "listener=%s session=%llu user=%s",
              s->pl->name, (unsigned long long)s->id, ferry_log_quote(s->user, qu, sizeof qu));
    px_session_route(s);
}

static void client_auth_begin(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    const struct ferry_user_cfg *u = ferry_listener_user(s->lcfg, s->user);
    p->user = u;
    ferry_wbuf_init(&p->sets, MOVE_SETS_MAX);
    ferry_wbuf_init(&p->pending_set, MOVE_SETS_MAX);
    ferry_wbuf_init(&p->statements, MOVE_STATEMENTS_MAX);
    if (!(p->login = calloc(1, sizeof *p->login))) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory");
        return;
    }
    if (u && u->method == FERRY_AUTH_TRUST) {
        client_authenticated(s);
        return;
    }
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    if (u ? u->method == FERRY_AUTH_MD5 : s->lcfg->mock_md5) {
        if (pg_auth_random(p->login->md5_salt, sizeof p->login->md5_salt) != PG_AUTH_RC_OK) {
            ferry_wbuf_free(&b);
            px_session_close(s, FERRY_LOG_ERROR, "no randomness for an MD5 salt");
            return;
        }
        pg_build_auth_md5(&b, p->login->md5_salt);
        p->auth_phase = PGA_PASSWORD;
    } else {
        struct pg_scram_secret secret;
        if (client_secret(s, u, &secret) != PG_AUTH_RC_OK) {
            ferry_wbuf_free(&b);
            px_session_close(s, FERRY_LOG_ERROR, "no randomness for SCRAM");
            return;
        }
        pg_scram_server_init(&p->login->server, &secret);
        OPENSSL_cleanse(&secret, sizeof secret);
        static const char *const mechs[] = {PG_SCRAM_MECHANISM};
        pg_build_auth_sasl(&b, mechs, 1);
        p->auth_phase = PGA_SASL_FIRST;
    }
    /* client_login_timeout covers the exchange too */
    px_session_ask(s, &s->client, &b, on_startup_read, 0);
}

/* One client message of the exchange: 'p' with the phase's content. */
static void client_auth_message(struct px_session *s, const uint8_t *body, size_t n)
{
    struct px_pg_session *p = pgs(s);
    struct pg_scram_server *srv = &p->login->server;
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    int rc = PG_AUTH_RC_MALFORMED;
    switch (p->auth_phase) {
    case PGA_SASL_FIRST: {
        struct pg_sasl_initial init;
        if (pg_decode_sasl_initial(body, n, &init) < 0 || !init.data.p)
            break;
        if (!pg_slice_eq(init.mechanism, PG_SCRAM_MECHANISM)) {
            ferry_wbuf_free(&b);
            auth_failed(s);
            return;
        }
        struct ferry_wbuf data;
        ferry_wbuf_init(&data, PG_SCRAM_MSG_MAX);
        rc = pg_scram_server_first(srv, init.data.p, init.data.len, NULL, &data);
        if (rc == PG_AUTH_RC_OK)
            pg_build_auth_sasl_continue(&b, data.data, data.len);
        ferry_wbuf_free(&data);
        p->auth_phase = PGA_SASL_FINAL;
        break;
    }
    case PGA_SASL_FINAL: {
        struct ferry_wbuf data;
        ferry_wbuf_init(&data, PG_SCRAM_MSG_MAX);
        rc = pg_scram_server_final(srv, body, n, &data);
        if (rc == PG_AUTH_RC_OK)
            pg_build_auth_sasl_final(&b, data.data, data.len);
        ferry_wbuf_free(&data);
        break;
    }
    case PGA_PASSWORD: {
        struct ferry_slice answer;
        /* an unknown user fails here, as in PostgreSQL (no secret to check) */
        if (pg_decode_cstr_body(body, n, &answer) >= 0)
            rc = !p->user ? PG_AUTH_RC_REJECTED
                          : pg_md5_verify(p->user->password, p->user->name, p->login->md5_salt,
                                          answer.p, answer.len);
        break;
    }
    default:
        break;
    }
    if (rc == PG_AUTH_RC_REJECTED) {
        ferry_wbuf_free(&b);
        auth_failed(s);
        return;
    }
    if (rc != PG_AUTH_RC_OK) {
        ferry_wbuf_free(&b);
        login_free(p);
        px_session_fail(s, rc == PG_AUTH_RC_INTERNAL ? PX_ERR_BACKEND_DOWN : PX_ERR_PROTOCOL,
                        rc == PG_AUTH_RC_INTERNAL ? "internal error during authentication"
                                                  : "invalid authentication message");
        return;
    }
    if (b.len)
        send_to_client(s, &b);
    else
        ferry_wbuf_free(&b);
    if (!s->closing && (p->auth_phase == PGA_PASSWORD ||
                        (p->auth_phase == PGA_SASL_FINAL && srv->step == 2)))
        client_authenticated(s);
}

static void client_auth_advance(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    while (p->auth_phase != PGA_DONE && !s->closing && !s->failing) {
        uint8_t type;
        uint32_t total;
        const uint8_t *at = startup_unread(p);
        int rc = pg_frame(at, p->startup.len - p->startup_off, PG_AUTH_MSG_MAX, &type, &total);
        if (rc == FERRY_NEED_MORE && !p->startup.failed)
            return;
        if (rc < 0 || type != 'p') {
            px_conn_stop_reading(&s->client);
            login_free(p);
            px_session_fail(s, PX_ERR_PROTOCOL, "expected a password message");
            return;
        }
        p->startup_off += total;
        client_auth_message(s, at + PG_HEADER_LEN, total - PG_HEADER_LEN);
    }
}

/* ---- the relay's message scanners ---- */

/* SQLSTATE of an ErrorResponse prefix, or "" (fields: type byte, C string). */
/* One field of an ErrorResponse body (the first n bytes): its text and
 * length, or NULL. */
static const uint8_t *error_field(const uint8_t *body, uint32_t n, uint8_t want, size_t *len)
{
    for (uint32_t i = 0; i < n && body[i];) {
        uint8_t field = body[i++];
        const uint8_t *v = body + i;
        const uint8_t *end = memchr(v, 0, n - i);
        if (!end)
            return NULL;
        if (field == want) {
            *len = (size_t)(end - v);
            return v;
        }
        i = (uint32_t)(end - body) + 1;
    }
    return NULL;
}

static void error_sqlstate(const uint8_t *body, uint32_t n, char out[6])
{
    size_t len = 0;
    const uint8_t *v = error_field(body, n, 'C', &len);
    out[0] = '\0';
    if (v && len == 5) {
        memcpy(out, v, 5);
        out[5] = '\0';
    }
}

/* An ErrorResponse that ends the session: severity FATAL or PANIC (V is
 * the untranslated severity, S the localized one of older servers). */
static bool error_is_fatal(const uint8_t *body, uint32_t n)
{
    size_t len = 0;
    const uint8_t *sev = error_field(body, n, 'V', &len);
    if (!sev)
        sev = error_field(body, n, 'S', &len);
    return sev && ((len == 5 && memcmp(sev, "FATAL", 5) == 0) ||
                   (len == 5 && memcmp(sev, "PANIC", 5) == 0));
}

/* A FATAL that a writer going down sends too: 57P01 admin_shutdown (a fast
 * or smart shutdown, and pg_terminate_backend), 57P02 crash_shutdown,
 * 57P03 cannot_connect_now. Any other (57P05 idle_session_timeout, 25P03,
 * 57P04, ...) is the server ending this one session. */
static bool fatal_may_be_shutdown(const char *state)
{
    return strcmp(state, "57P01") == 0 || strcmp(state, "57P02") == 0 ||
           strcmp(state, "57P03") == 0;
}

/* Passthrough auth: SCRAM with channel binding binds the client's TLS
 * connection, which ends at ferry, so the backend's proof could never
 * match. A backend on TLS offers SCRAM-SHA-256-PLUS; ferry renames that
 * mechanism in place (same length, so the message is relayed as it is) to
 * one no client knows, and clients pick plain SCRAM-SHA-256. */
static void hide_channel_binding(struct px_session *s, const uint8_t *body, uint32_t captured,
                                 uint32_t len, uint8_t *inplace)
{
    static const char plus[] = "SCRAM-SHA-256-PLUS", renamed[] = "X-FERRY-NO-BINDING";
    _Static_assert(sizeof plus == sizeof renamed, "a rename must keep the length");
    if (captured < 4 || ferry_get_u32be(body) != PG_AUTH_SASL)
        return;
    if (!inplace) {
        ferry_log(FERRY_LOG_WARN, "auth.sasl_not_rewritten", "listener=%s session=%llu "
                  "reason=\"mechanism list split across reads\"", s->pl->name,
                  (unsigned long long)s->id);
        return;
    }
    for (uint32_t i = 4; i < len && inplace[i];) {
        const uint8_t *end = memchr(inplace + i, 0, len - i);
        if (!end)
            return;
        size_t n = (size_t)(end - (inplace + i));
        if (n == sizeof plus - 1 && memcmp(inplace + i, plus, n) == 0)
            memcpy(inplace + i, renamed, n);
        i += (uint32_t)n + 1;
    }
}

static void on_server_message(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                              uint32_t len, uint8_t *inplace)
{
    struct px_session *s = ud;
    struct px_pg_session *p = pgs(s);
    /* passthrough: the server accepted the client (terminated mode said so
     * in client_authenticated) */
    if (type == 'Z' || (type == 'R' && captured >= 4 && ferry_get_u32be(body) == PG_AUTH_OK))
        px_session_logged_in(s);
    if (p->user && (type == 'S' || type == 'E' || (type == 'Z' && len == 1)))
        track_server(s, type, body, captured);
    if (type == 'Z' && len == 1) {
        PX_STAT_ADD(px_session_stats(s)->queries, 1);
        if ((p->txn == 'T' || p->txn == 'E') && body[0] == 'I')
            PX_STAT_ADD(px_session_stats(s)->transactions, 1);
        p->txn = (char)body[0];
        p->inflight = false;
        if (s->stale && p->txn == 'I')
            p->end_at_idle = true;  /* closed once this chunk is relayed */
    } else if (type == 'K' && len == 8 && !p->cancel_pid) {
        /* Give the client ferry's own key: cancels then come through ferry,
         * which knows the backend the session is on now. */
        uint32_t pid, key;
        if (inplace && px_cancel_register((struct sockaddr *)&s->server_addr, ferry_get_u32be(body),
                                          ferry_get_u32be(body + 4), &pid, &key)) {
            p->cancel_pid = pid;
            for (int i = 0; i < 4; i++) {
                inplace[i] = (uint8_t)(pid >> (24 - 8 * i));
                inplace[4 + i] = (uint8_t)(key >> (24 - 8 * i));
            }
        } else {
            ferry_log(FERRY_LOG_WARN, "cancel.key_not_mapped", "listener=%s session=%llu",
                      s->pl->name, (unsigned long long)s->id);
        }
    } else if (type == 'R' && !p->client_ready) {
        /* the client's own password, through ferry, to a server ferry has
         * not verified: the rule that holds for ferry's stored passwords
         * holds for the ones it relays (pg_scan ends the session) */
        if (captured >= 4 && ferry_get_u32be(body) == PG_AUTH_CLEARTEXT &&
            !px_session_may_reveal_password(s))
            p->cleartext_refused = true;
        hide_channel_binding(s, body, captured, len, inplace);
    } else if (type == 'E') {
        char state[6];
        error_sqlstate(body, captured, state);
        /* read_only_sql_transaction: the writer was demoted under us */
        if (strcmp(state, "25006") == 0)
            px_session_probe_now(s);
        /* passthrough, before the first ReadyForQuery: the server refuses
         * the login (a database is checked after AuthenticationOk) */
        if (!p->user && !p->txn && !p->login_refused) {
            size_t mlen = 0;
            const uint8_t *msg = error_field(body, captured, 'M', &mlen);
            p->login_refused = true;
            px_session_login_refused(s, state, state, (const char *)msg, mlen);
        }
        if (error_is_fatal(body, captured)) {
            p->server_fatal = true;     /* relayed; the server closes next */
            memcpy(p->fatal_state, state, sizeof p->fatal_state);
        }
    }
}

static void on_client_message(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                              uint32_t len, uint8_t *inplace)
{
    (void)body, (void)captured, (void)len, (void)inplace;
    struct px_session *s = ud;
    if (type == 'X')
        pgs(s)->terminating = true;  /* the server closing next is the expected answer */
    else if (pgs(s)->user)
        track_client(s, type, body, captured, len, inplace);
}

/* Once fenced, ferry speaks for the lost transaction: every statement gets
 * a retryable 40001 error (the transaction is gone), ROLLBACK succeeds, and
 * then the session ends with 57P01 so the client reconnects to the new
 * writer. Sync ends an extended-protocol batch like a Query does. */
static void on_stale_message(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                             uint32_t len, uint8_t *inplace)
{
    (void)inplace;
    struct px_session *s = ud;
    if (s->failing || s->closing)
        return;
    if (type == 'X') {
        px_session_close(s, FERRY_LOG_DEBUG, "client terminated");
        return;
    }
    if (type != 'Q' && type != 'S')
        return;     /* Parse/Bind/Execute...: answered at their Sync */
    char text[256];
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 4096);
    bool rollback = type == 'Q' && captured == len && len > 8 &&
                    (strncasecmp((const char *)body, "ROLLBACK", 8) == 0 ||
                     strncasecmp((const char *)body, "ABORT", 5) == 0);
    if (rollback) {
        pg_build_command_complete(&b, "ROLLBACK");
        pg_build_ready(&b, 'I');
    } else {
        px_session_writer_moved_text(s, text, sizeof text, true);
        pg_build_error(&b, "ERROR", "40001", text);
        px_session_count_error(s, PX_ERR_TXN_LOST);
        pg_build_ready(&b, 'E');
    }
    if (px_session_write(s, &s->client, &b, false) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
        return;
    }
    if (!rollback)
        return;
    struct px_pg_session *p = pgs(s);
    if (movable(s)) {
        /* the transaction is over for the client too: the session moves
         * like an idle one, and talks to the new writer from here on */
        p->fenced = false;
        p->txn = 'I';
        p->inflight = false;
        p->scan_c2s.wanted = "XQPC";
        move_begin(s);
        return;
    }
    px_session_writer_moved_text(s, text, sizeof text, false);
    px_session_fail(s, PX_ERR_WRITER_MOVED, text);
}

/* An idle session that could move gets a FATAL that a shutdown sends too
 * (the whole chunk, one ErrorResponse, as the server writes it before it
 * closes): it is held back until discovery says whether the writer is
 * going away (then the session moves and the client never sees it) or not
 * (then it is relayed and the session ends; px_session_await_verdict). */
static bool hold_goodbye(struct px_session *s, const uint8_t *data, size_t n)
{
    struct px_pg_session *p = pgs(s);
    if (n < 5 || data[0] != 'E' || (size_t)ferry_get_u32be(data + 1) + 1 != n ||
        p->txn != 'I' || p->inflight || s->stale || !movable(s) || s->server_said.len)
        return false;
    const uint8_t *body = data + 5;
    uint32_t len = (uint32_t)n - 5;
    char state[6];
    error_sqlstate(body, len, state);
    if (!error_is_fatal(body, len) || !fatal_may_be_shutdown(state))
        return false;
    ferry_wbuf_init(&s->server_said, 0);
    ferry_wbuf_put(&s->server_said, data, n);
    p->server_fatal = true;
    memcpy(p->fatal_state, state, sizeof p->fatal_state);
    return true;
}

/* Checks a chunk's messages before it is relayed. */
static enum px_scan pg_scan(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n)
{
    struct px_pg_session *p = pgs(s);
    bool from_client = src == &s->client;
    if (from_client && n > 0 && p->moving)
        return PX_SCAN_PARK;    /* sent on once the new writer is ready */
    /* Paused: the next transaction of an idle session waits (like
     * PgBouncer's PAUSE); one already open runs to its end. */
    if (from_client && n > 0 && p->txn == 'I' && !p->inflight && !s->stale && px_session_paused(s))
        return PX_SCAN_PARK;
    if (from_client && s->stale && n > 0) {
        /* Fencing: nothing more reaches the old writer from this session.
         * ferry answers the client itself (see on_stale_message). */
        if (!p->fenced) {
            p->fenced = true;
            p->scan_c2s.wanted = "QSX";   /* the messages ferry now answers */
            px_conn_stop_reading(&s->server);
            /* the old writer rolls the transaction back when its client goes */
            px_session_shutdown_server(s);
        }
        if (pg_stream_feed(&p->scan_c2s, data, n, on_stale_message, s) != 0)
            px_session_fail(s, PX_ERR_PROTOCOL, "invalid message length from the client");
        return PX_SCAN_DROP;
    }
    if (!from_client && hold_goodbye(s, data, n))
        return PX_SCAN_DROP;
    if (from_client && n > 0)
        p->inflight = true;
    int rc = from_client ? pg_stream_feed(&p->scan_c2s, data, n, on_client_message, s)
                         : pg_stream_feed(&p->scan_s2c, data, n, on_server_message, s);
    if (rc == 0 && p->cleartext_refused) {
        char why[400];
        px_session_insecure_password_text(s, "the client's password in cleartext", why,
                                          sizeof why);
        px_conn_stop_reading(&s->server);
        px_session_fail(s, PX_ERR_TLS_REQUIRED, why);
        return PX_SCAN_DROP;
    }
    if (rc == 0)
        return PX_SCAN_RELAY;
    if (from_client) {
        px_conn_stop_reading(&s->server);
        px_session_fail(s, PX_ERR_PROTOCOL, "invalid message length from the client");
    } else {
        px_session_close(s, FERRY_LOG_WARN, "invalid message length from the server");
    }
    return PX_SCAN_DROP;
}

/* The transaction finished on the old writer: now close (the error is
 * queued after the chunk that said so). */
static void pg_relayed(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (!p->end_at_idle)
        return;
    if (movable(s)) {   /* the transaction ended on the old writer: move now */
        p->end_at_idle = false;
        move_begin(s);
        return;
    }
    char text[256];
    px_session_writer_moved_text(s, text, sizeof text, false);
    px_conn_stop_reading(&s->server);
    px_session_fail(s, PX_ERR_WRITER_MOVED, text);
}

/* ---- terminated authentication: ferry logs into the backend ----
 * ferry sends the client's StartupMessage, answers whatever the backend asks
 * (SCRAM-SHA-256, MD5, cleartext, or nothing) with the user's stored
 * password, and hands the client what follows AuthenticationOk (its
 * ParameterStatus, BackendKeyData and ReadyForQuery) through the scanner,
 * which gives the client ferry's cancel key. */

static void move_failed(struct px_session *s, const char *why);
static void move_logged_in(struct px_session *s, const uint8_t *msgs, size_t n);
static void restore_advance(struct px_session *s);

/* The backend went away or stopped answering during a login: while the
 * session may wait for a writer (retry_connect: a move, or a new session
 * whose client already has AuthenticationOk), it waits for the next
 * topology; otherwise the login failed. */
static void login_lost(struct px_session *s, const char *why)
{
    if (!s->retry_connect) {
        login_failed(s, why);
        return;
    }
    login_free(pgs(s));
    px_session_backend_failed(s, why);
}

static void login_failed(struct px_session *s, const char *why)
{
    if (s->prelogin) {      /* ahead of a promotion: the session waits on */
        login_free(pgs(s));
        px_session_backend_failed(s, why);
        return;
    }
    if (pgs(s)->client_ready) {     /* moving: the client is still fine */
        move_failed(s, why);
        return;
    }
    char text[720];
    snprintf(text, sizeof text, "cannot log into the writer %s as \"%s\": %s", s->cluster,
             s->user, why);
    login_free(pgs(s));
    px_conn_stop_reading(&s->server);
    px_session_fail(s, PX_ERR_BACKEND_DOWN, text);
}

/* Answers one AuthenticationXXX request; false when the login failed. */
static bool login_answer(struct px_session *s, const uint8_t *body, size_t n)
{
    struct px_pg_session *p = pgs(s);
    const char *password = p->user->password;
    struct pg_auth_request req;
    if (pg_decode_auth(body, n, &req) < 0) {
        login_failed(s, "malformed authentication request");
        return false;
    }
    struct ferry_wbuf out, data;
    ferry_wbuf_init(&out, 0);
    ferry_wbuf_init(&data, PG_SCRAM_MSG_MAX);
    int rc = PG_AUTH_RC_OK;
    switch (req.code) {
    case PG_AUTH_OK:
        break;
    case PG_AUTH_CLEARTEXT:
        if (!px_session_may_reveal_password(s)) {
            char why[400];
            px_session_insecure_password_text(s, "the password in cleartext", why, sizeof why);
            ferry_wbuf_free(&data);
            ferry_wbuf_free(&out);
            login_failed(s, why);
            return false;
        }
        pg_build_password(&out, password);
        break;
    case PG_AUTH_MD5: {
        char resp[PG_MD5_LEN + 1];
        pg_md5_response(p->user->name, password, req.md5_salt, resp);
        pg_build_password(&out, resp);
        memset(resp, 0, sizeof resp);
        break;
    }
    case PG_AUTH_SASL: {
        bool scram = false;
        struct ferry_slice list = req.data, mech;
        while (pg_cstr_next(&list, &mech))
            scram = scram || pg_slice_eq(mech, PG_SCRAM_MECHANISM);
        rc = scram ? pg_scram_client_first(&p->login->client, "", NULL, &data) : PG_AUTH_RC_MALFORMED;
        if (rc == PG_AUTH_RC_OK)
            pg_build_sasl_initial(&out, PG_SCRAM_MECHANISM, data.data, data.len);
        break;
    }
    case PG_AUTH_SASL_CONTINUE:
        rc = pg_scram_client_final(&p->login->client, password, req.data.p, req.data.len, &data);
        if (rc == PG_AUTH_RC_OK)
            pg_build_sasl_response(&out, data.data, data.len);
        break;
    case PG_AUTH_SASL_FINAL:
        rc = pg_scram_client_verify(&p->login->client, req.data.p, req.data.len);
        break;
    default:
        rc = PG_AUTH_RC_MALFORMED;
        break;
    }
    ferry_wbuf_free(&data);
    if (rc != PG_AUTH_RC_OK) {
        ferry_wbuf_free(&out);
        login_failed(s, rc == PG_AUTH_RC_REJECTED ? "the server's SCRAM proof is wrong"
                                                  : "unsupported or malformed authentication request");
        return false;
    }
    if (out.len && px_session_write(s, &s->server, &out, false) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "server write failed");
        return false;
    }
    ferry_wbuf_free(&out);
    return true;
}

static enum px_scan pg_scan(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n);

/* A login ahead of a promotion got the standby's in_hot_standby = on; the
 * client's requests go to that server only once it is the writer, where it
 * is off (and libpq's target_session_attrs=read-write would refuse "on"). */
static void as_promoted(struct ferry_wbuf *msgs)
{
    static const char standby[] = "in_hot_standby\0on";   /* with both NULs: sizeof */
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, msgs->len + 8);
    for (size_t off = 0; off + PG_HEADER_LEN <= msgs->len;) {
        size_t total = 1 + ferry_get_u32be(msgs->data + off + 1);
        if (total > msgs->len - off)
            total = msgs->len - off;    /* (framed by login_advance: cannot happen) */
        if (msgs->data[off] == 'S' && total - PG_HEADER_LEN == sizeof standby &&
            memcmp(msgs->data + off + PG_HEADER_LEN, standby, sizeof standby) == 0)
            pg_build_parameter_status(&out, "in_hot_standby", "off");
        else
            ferry_wbuf_put(&out, msgs->data + off, total);
        off += total;
    }
    ferry_wbuf_free(msgs);
    *msgs = out;
}

/* Logged in (ReadyForQuery seen): what followed AuthenticationOk goes to
 * the client, then the relay starts. */
static void login_done(struct px_session *s, size_t from, size_t to)
{
    struct px_pg_session *p = pgs(s);
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    ferry_wbuf_put(&out, p->login->in.data + from, to - from);
    size_t rest = p->login->in.len - to;    /* a server says nothing more until asked */
    login_free(p);
    px_conn_stop_reading(&s->server);
    if (rest) {
        ferry_wbuf_free(&out);
        px_session_close(s, FERRY_LOG_WARN, "the server spoke out of turn after login");
        return;
    }
    if (s->prelogin)
        as_promoted(&out);
    if (out.failed || pg_scan(s, &s->server, out.data, out.len) != PX_SCAN_RELAY) {
        ferry_wbuf_free(&out);
        return;
    }
    p->client_ready = true;
    s->retry_connect = false;
    send_to_client(s, &out);
    if (s->closing)
        return;
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    ferry_log(FERRY_LOG_DEBUG, "session.logged_in", "listener=%s session=%llu backend=%s user=%s",
              s->pl->name, (unsigned long long)s->id, s->endpoint,
              ferry_log_quote(s->user, qu, sizeof qu));
    px_session_start_relay(s);
}

/* Walks the backend's login messages from the start of the buffer. */
static void login_advance(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (p->restoring) {
        restore_advance(s);
        return;
    }
    size_t off = 0, after_ok = 0;
    bool ok = false;
    for (;;) {
        uint8_t type;
        uint32_t total;
        const uint8_t *at = p->login->in.data + off;
        int rc = pg_frame(at, p->login->in.len - off, PG_AUTH_MSG_MAX, &type, &total);
        if (rc == FERRY_NEED_MORE && !p->login->in.failed)
            break;
        if (rc < 0) {
            login_failed(s, "malformed message");
            return;
        }
        const uint8_t *body = at + PG_HEADER_LEN;
        size_t n = total - PG_HEADER_LEN;
        if (type == 'E') {
            char state[6];
            error_sqlstate(body, (uint32_t)n, state);
            /* shutting down, starting up, connection trouble: not this
             * session's fault; a session that may wait, waits for the next writer */
            if (s->prelogin || (s->retry_connect && (strncmp(state, "57", 2) == 0 ||
                                                     strncmp(state, "08", 2) == 0))) {
                login_lost(s, "the server refused the login while it is not serving");
                return;
            }
            if (p->client_ready) {
                move_failed(s, "the new writer refused the login");
                return;
            }
        }
        if (type == 'E') {
            /* the server refused: its own words, relayed */
            struct ferry_wbuf out;
            ferry_wbuf_init(&out, 0);
            ferry_wbuf_put(&out, at, total);
            login_free(p);
            px_conn_stop_reading(&s->server);
            s->failing = true;
            if (px_session_write(s, &s->client, &out, true) != 0)
                px_session_close(s, FERRY_LOG_INFO, "client write failed");
            return;
        }
        off += total;
        if (type == 'R' && !ok) {
            if (!login_answer(s, body, n))
                return;
            if (n >= 4 && ferry_get_u32be(body) == PG_AUTH_OK) {
                ok = true;
                after_ok = off;
            }
        } else if (type == 'Z' && ok) {
            if (p->client_ready)
                move_logged_in(s, p->login->in.data + after_ok, off - after_ok);
            else
                login_done(s, after_ok, off);
            return;
        } else if (!ok && type != 'v') {  /* NegotiateProtocolVersion: ferry told the client */
            login_failed(s, "unexpected message before authentication completed");
            return;
        }
    }
    /* keep only what is not answered yet: drop the answered requests */
    if (!ok && off) {
        memmove(p->login->in.data, p->login->in.data + off, p->login->in.len - off);
        p->login->in.len -= off;
    }
}

static void on_login_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_session *s = ((struct px_conn *)stream->data)->owner;
    nread = px_session_read_into(s, &pgs(s)->login->in, nread, buf);
    if (nread < 0)
        login_lost(s, nread == UV_EOF ? "the server closed the connection during login"
                                      : uv_strerror((int)nread));
    else if (nread > 0)
        login_advance(s);
}

/* Terminated mode: send the StartupMessage and log in. */
static bool login_begin(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (!p->login && !(p->login = calloc(1, sizeof *p->login))) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory");
        return false;
    }
    ferry_wbuf_init(&p->login->in, PG_AUTH_MSG_MAX * 16);
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    ferry_wbuf_put(&out, p->startup.data + p->startup_msg, p->startup_len);
    px_session_ask(s, &s->server, &out, on_login_read,
                   (uint64_t)(s->lcfg->connect_timeout * 1000.0));
    return false;   /* login_done starts the relay */
}

/* ---- moving a session to a new writer (terminated mode) ----
 * An idle session whose writer moved logs into the new writer on its own:
 * ferry replays the client's StartupMessage, authenticates with the stored
 * password, then replays what it saw change the session: SET statements
 * run outside a transaction (in order), the last reported values of the
 * parameters below, and every named prepared statement (its Parse). The
 * client's next request waits (parked) meanwhile and then goes to the new
 * writer: it sees nothing. Anything ferry could not follow (a statement too
 * long to have been seen whole, too much state) makes the session
 * unmovable: it is closed with 57P01 instead, as in passthrough mode. */

static const char *const tracked_params[4] = {"application_name", "DateStyle", "IntervalStyle",
                                              "TimeZone"};

static bool starts_with_word(const uint8_t *body, size_t n, const char *word)
{
    size_t k = strlen(word);
    return n > k && strncasecmp((const char *)body, word, k) == 0 &&
           (body[k] == ' ' || body[k] == '\t' || body[k] == '\n' || body[k] == ';' || body[k] == 0);
}

/* A whole frame (type, length, body) from a scanner callback, or false. */
static bool whole_frame(struct ferry_wbuf *out, uint8_t type, const uint8_t *body,
                        uint32_t captured, uint32_t len, const uint8_t *inplace)
{
    const uint8_t *whole = inplace ? inplace : captured == len ? body : NULL;
    if (!whole)
        return false;
    ferry_wbuf_u8(out, type);
    ferry_wbuf_u32be(out, len + 4);
    ferry_wbuf_put(out, whole, len);
    return !out->failed;
}

/* Removes the Parse frame named name (NUL-terminated) from statements. */
static void forget_statement(struct px_pg_session *p, const char *name)
{
    struct ferry_wbuf *b = &p->statements;
    size_t off = 0;
    while (off + PG_HEADER_LEN <= b->len) {
        size_t total = 1 + ferry_get_u32be(b->data + off + 1);
        if (strcmp((const char *)b->data + off + PG_HEADER_LEN, name) == 0) {
            memmove(b->data + off, b->data + off + total, b->len - off - total);
            b->len -= total;
            return;
        }
        off += total;
    }
}

/* Client messages that change what a move must replay. */
static void track_client(struct px_session *s, uint8_t type, const uint8_t *body,
                         uint32_t captured, uint32_t len, const uint8_t *inplace)
{
    struct px_pg_session *p = pgs(s);
    if (p->unmovable)
        return;
    const uint8_t *text = inplace ? inplace : body;
    size_t seen = inplace ? len : captured;
    if (type == 'Q') {
        if (starts_with_word(text, seen, "DISCARD") || starts_with_word(text, seen, "RESET")) {
            ferry_wbuf_reset(&p->sets);     /* RESET ALL / DISCARD ALL undo the SETs */
            if (starts_with_word(text, seen, "DISCARD"))
                ferry_wbuf_reset(&p->statements);
        } else if (starts_with_word(text, seen, "SET") && p->txn == 'I' &&
                   !starts_with_word(text + 4, seen - 4, "LOCAL") &&
                   !starts_with_word(text + 4, seen - 4, "TRANSACTION")) {
            ferry_wbuf_reset(&p->pending_set);
            if (!whole_frame(&p->pending_set, type, body, captured, len, inplace))
                p->unmovable = true;
        } else if (starts_with_word(text, seen, "PREPARE") || starts_with_word(text, seen, "DEALLOCATE")) {
            p->unmovable = true;    /* SQL-level statements are not followed */
        }
    } else if (type == 'P' && seen > 0 && text[0] != 0) {   /* a named statement */
        if (!inplace && captured != len) {
            p->unmovable = true;
            return;
        }
        forget_statement(p, (const char *)text);
        if (!whole_frame(&p->statements, type, body, captured, len, inplace) ||
            p->statements.len > MOVE_STATEMENTS_MAX)
            p->unmovable = true;
    } else if (type == 'C' && seen > 1 && text[0] == 'S' && memchr(text, 0, seen)) {
        forget_statement(p, (const char *)text + 1);
    }
}

/* Server messages: confirmed SETs and reported parameters. */
static void track_server(struct px_session *s, uint8_t type, const uint8_t *body, uint32_t n)
{
    struct px_pg_session *p = pgs(s);
    if (type == 'E') {
        ferry_wbuf_reset(&p->pending_set);
    } else if (type == 'Z' && p->pending_set.len) {
        if (body[0] == 'I') {
            ferry_wbuf_put(&p->sets, p->pending_set.data, p->pending_set.len);
            if (p->sets.failed || p->sets.len > MOVE_SETS_MAX)
                p->unmovable = true;
        }
        ferry_wbuf_reset(&p->pending_set);
    } else if (type == 'S') {
        struct pg_parameter_status ps;
        if (pg_decode_parameter_status(body, n, &ps) < 0)
            return;
        for (size_t i = 0; i < 4; i++)
            if (pg_slice_eq(ps.name, tracked_params[i])) {
                free(p->params[i]);
                p->params[i] = strndup((const char *)ps.value.p, ps.value.len);
            }
    }
}

/* Appends "SET name TO 'value'" as a Query frame (value quoted as a literal). */
static void build_set(struct ferry_wbuf *out, const char *name, const char *value)
{
    struct ferry_wbuf sql;
    ferry_wbuf_init(&sql, 0);
    ferry_wbuf_put(&sql, "SET ", 4);
    ferry_wbuf_put(&sql, name, strlen(name));
    ferry_wbuf_put(&sql, " TO '", 5);
    for (const char *c = value; *c; c++) {
        if (*c == '\'')
            ferry_wbuf_u8(&sql, '\'');
        ferry_wbuf_u8(&sql, (uint8_t)*c);
    }
    ferry_wbuf_put(&sql, "'", 2);   /* with the NUL */
    if (!sql.failed)
        pg_build_query(out, (const char *)sql.data);
    else
        out->failed = true;
    ferry_wbuf_free(&sql);
}

static void move_failed(struct px_session *s, const char *why)
{
    struct px_pg_session *p = pgs(s);
    if (s->prelogin) {      /* ahead of a promotion: the move waits on */
        p->restoring = false;
        login_free(p);
        px_session_backend_failed(s, why);
        return;
    }
    char esc[512];
    ferry_log(FERRY_LOG_WARN, "session.move_failed", "listener=%s session=%llu to=%s reason=\"%s\"",
              s->pl->name, (unsigned long long)s->id, s->cluster,
              ferry_log_escape(why, esc, sizeof esc));
    PX_STAT_ADD(px_session_stats(s)->moves_failed, 1);
    p->moving = p->restoring = false;
    s->retry_connect = false;
    login_free(p);
    px_conn_stop_reading(&s->server);
    char text[256];
    px_session_writer_moved_text(s, text, sizeof text, false);
    px_session_fail(s, PX_ERR_WRITER_MOVED, text);
}

static void move_done(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    p->moving = p->restoring = false;
    s->stale = false;
    s->retry_connect = false;
    login_free(p);
    px_conn_stop_reading(&s->server);
    PX_STAT_ADD(px_session_stats(s)->moves, 1);
    ferry_log(FERRY_LOG_INFO, "session.moved", "listener=%s session=%llu to=%s backend=%s",
              s->pl->name, (unsigned long long)s->id, s->cluster, s->endpoint);
    px_session_start_relay(s);
}

/* Logged into the new writer: remap the cancel key, replay the state. */
static void move_logged_in(struct px_session *s, const uint8_t *msgs, size_t n)
{
    struct px_pg_session *p = pgs(s);
    for (size_t off = 0; off + PG_HEADER_LEN <= n;) {
        size_t total = 1 + ferry_get_u32be(msgs + off + 1);
        struct pg_backend_key key;
        if (msgs[off] == 'K' && p->cancel_pid &&
            pg_decode_backend_key(msgs + off + PG_HEADER_LEN, total - PG_HEADER_LEN, &key) >= 0)
            px_cancel_update(p->cancel_pid, (struct sockaddr *)&s->server_addr, key.pid, key.key);
        off += total;
    }
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    unsigned answers = 0;
    for (size_t off = 0; off < p->sets.len; answers++)
        off += 1 + ferry_get_u32be(p->sets.data + off + 1);
    ferry_wbuf_put(&out, p->sets.data, p->sets.len);
    for (size_t i = 0; i < 4; i++)
        if (p->params[i]) {
            build_set(&out, tracked_params[i], p->params[i]);
            answers++;
        }
    if (p->statements.len) {
        ferry_wbuf_put(&out, p->statements.data, p->statements.len);
        pg_build_sync(&out);
        answers++;
    }
    if (out.failed) {
        ferry_wbuf_free(&out);
        move_failed(s, "out of memory");
        return;
    }
    if (!answers) {
        ferry_wbuf_free(&out);
        move_done(s);
        return;
    }
    p->restoring = true;
    p->replay_left = answers;
    ferry_wbuf_reset(&p->login->in);
    if (px_session_write(s, &s->server, &out, false) != 0)
        move_failed(s, "server write failed");
}

/* Answers to the replay: count ReadyForQuery, fail on any error. */
static void restore_advance(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    struct ferry_wbuf *in = &p->login->in;
    size_t off = 0;
    for (;;) {
        uint8_t type;
        uint32_t total;
        int rc = pg_frame(in->data + off, in->len - off, s->lcfg->max_message_size, &type, &total);
        if (rc == FERRY_NEED_MORE && !in->failed)
            break;
        if (rc < 0) {
            move_failed(s, "malformed message while restoring the session");
            return;
        }
        if (type == 'E') {
            move_failed(s, "the new writer refused to restore the session's state");
            return;
        }
        off += total;
        if (type == 'Z' && --p->replay_left == 0) {
            if (off != in->len) {
                move_failed(s, "the server spoke out of turn");
                return;
            }
            move_done(s);
            return;
        }
    }
    memmove(in->data, in->data + off, in->len - off);
    in->len -= off;
}

/* Terminated auth, logged in once, and every change to its state seen. */
static bool movable(const struct px_session *s)
{
    const struct px_pg_session *p = &s->u.pg;
    return p->user && p->client_ready && !p->unmovable;
}

static void move_begin(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    p->moving = true;
    s->stale = true;            /* routed anew; no second move for the same change */
    s->retry_connect = true;    /* an unreachable writer holds the session, not fails it */
    ferry_log(FERRY_LOG_INFO, "session.moving", "listener=%s session=%llu from=%s", s->pl->name,
              (unsigned long long)s->id, s->cluster);
    login_free(p);
    px_session_move(s);
}

/* The StartupMessage (and anything the client sent after it) goes first. */
/* ---- TLS towards the backend ----
 * With backend_tls other than disable, ferry opens each backend connection
 * with an SSLRequest: 'S' starts the handshake (verify-ca / verify-full
 * check the certificate against ca_file and the cluster's host name), 'N'
 * goes on in plaintext only under prefer. The StartupMessage follows; the
 * engine holds it until the handshake is done. */

static bool pg_connected(struct px_session *s);

/* reachable: the server answered and refused (no TLS, a certificate that
 * does not verify): the client gets the reason. Otherwise the server went
 * away or stayed silent: counted as a failed connect, and a session that
 * may wait for a writer waits. */
static void backend_tls_failed(struct px_session *s, const char *why, bool reachable)
{
    char text[FERRY_HOST_MAX + FERRY_NAME_MAX + 400];
    px_conn_stop_reading(&s->server);
    if (!reachable || s->prelogin) {
        snprintf(text, sizeof text, "no answer to TLS negotiation: %s", why);
        px_session_backend_failed(s, text);
        return;
    }
    snprintf(text, sizeof text, "TLS with the writer %s (%s) failed: %s", s->cluster, s->endpoint,
             why);
    px_session_fail(s, PX_ERR_BACKEND_DOWN, text);
}

static void on_backend_ssl_answer(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *c = stream->data;
    struct px_session *s = c->owner;
    char answer = nread > 0 ? buf->base[0] : 0;
    px_session_free_buf(s, buf);
    if (nread == 0)
        return;
    px_conn_stop_reading(&s->server);
    /* more than the one byte: injected before the handshake (CVE-2021-23222) */
    if (nread < 0) {
        backend_tls_failed(s, "the server closed the connection", false);
        return;
    }
    if (nread != 1 || (answer != 'S' && answer != 'N')) {
        backend_tls_failed(s, "unexpected answer to the SSLRequest", true);
        return;
    }
    struct ferry_tls_ctx *ctx = s->lcfg->tls_backend_ctx;
    if (answer == 'N') {
        if (!ferry_tls_mode_allows_plaintext(ferry_tls_ctx_mode(ctx))) {
            backend_tls_failed(s, "the server does not accept TLS", true);
            return;
        }
    } else {
        const struct ferry_cluster_cfg *cl = ferry_listener_cluster(s->lcfg, s->cluster);
        char err[256];
        s->server.tls = ferry_tls_new(ctx, cl ? cl->endpoint.host : NULL, err, sizeof err);
        if (!s->server.tls) {
            backend_tls_failed(s, err, true);
            return;
        }
        ferry_tls_set_limit(s->server.tls, s->lcfg->session_buffer);
        if (ferry_tls_handshake(s->server.tls) < 0 || px_conn_tls_flush(s, &s->server) != 0) {
            backend_tls_failed(s, ferry_tls_error(s->server.tls), true);
            return;
        }
    }
    s->server.tls_settled = true;
    if (pg_connected(s))
        px_session_start_relay(s);
}

static bool pg_connected(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (s->lcfg->tls_backend_ctx && !s->server.tls_settled) {
        struct ferry_wbuf req;
        ferry_wbuf_init(&req, 0);
        pg_build_ssl_request(&req);
        px_session_ask(s, &s->server, &req, on_backend_ssl_answer,
                       (uint64_t)(s->lcfg->connect_timeout * 1000.0));
        return false;   /* on_backend_ssl_answer goes on */
    }
    uint32_t max = s->lcfg->max_message_size;
    p->server_fatal = false;    /* a new backend: the old one's goodbye is history */
    p->fatal_state[0] = '\0';
    pg_stream_free(&p->scan_c2s);
    pg_stream_init(&p->scan_c2s, max, p->user ? "XQPC" : "X");
    pg_stream_init(&p->scan_s2c, max, p->user ? "ZKES" : "ZKER");
    /* a move replays Parse messages and SETs: have them whole however read */
    if (p->user)
        pg_stream_gather(&p->scan_c2s, "PQ", MOVE_STATEMENTS_MAX);
    if (p->user)
        return login_begin(s);  /* keeps the StartupMessage for logins elsewhere */
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    ferry_wbuf_put(&out, p->startup.data + p->startup_msg, p->startup.len - p->startup_msg);
    ferry_wbuf_free(&p->startup);
    /* bytes after the StartupMessage are regular messages: scan them too */
    size_t after = p->startup_off - p->startup_msg;
    if (out.len > after &&
        pg_scan(s, &s->client, out.data + after, out.len - after) != PX_SCAN_RELAY) {
        ferry_wbuf_free(&out);
        return false;
    }
    if (px_session_write(s, &s->server, &out, false) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "server write failed");
        return false;
    }
    return true;
}

/* The writer went away under this session. If a statement was in flight
 * its outcome is unknown: never pretend it failed or succeeded (a COMMIT
 * may have been applied). */
static bool pg_server_lost(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    if (!p->startup_done || s->client.eof || p->terminating || p->login_refused)
        return false;   /* login_refused: the server's error goes out, then its EOF */
    bool idle = !p->inflight && p->txn == 'I';
    char why[64];
    snprintf(why, sizeof why, p->server_fatal ? "FATAL %s" : "closed without a message",
             p->fatal_state);
    if (p->server_fatal && !(idle && s->server_said.len)) {
        /* the server said why it ends the session: that, and nothing more */
        px_session_end_by_server(s, why);
        return true;
    }
    if (idle && movable(s)) {
        if (s->stale) {
            move_begin(s);  /* the writer moved already */
            return true;
        }
        /* the writer going down, or the server ending this session? */
        px_session_await_verdict(s, why);
        return true;
    }
    px_conn_stop_reading(&s->server);
    if (p->inflight)
        px_session_fail(s, PX_ERR_OUTCOME_UNKNOWN,
                        "connection to the writer was lost while a statement was in flight; "
                        "its outcome is unknown");
    else if (p->txn == 'I')
        px_session_fail(s, PX_ERR_WRITER_MOVED, "connection to the writer was lost; reconnect");
    else
        px_session_fail(s, PX_ERR_TXN_LOST,
                        "connection to the writer was lost; the transaction was rolled back; "
                        "retry it");
    return true;
}

/* Terminated auth: ferry can log into a backend on the session's behalf
 * (session.c logs in ahead of a promotion). */
static bool pg_can_prelogin(const struct px_session *s)
{
    return s->u.pg.user && s->u.pg.startup_done;
}

/* Idle sessions are closed now with an error that pools treat as
 * "reconnect"; ones inside a transaction are closed when the transaction
 * ends or fenced at their next statement. (Moving them without an error
 * needs ferry-terminated authentication.) */
static void pg_writer_moved(struct px_session *s, bool cut)
{
    struct px_pg_session *p = pgs(s);
    bool idle = p->txn == 'I' && !p->inflight;
    ferry_log(FERRY_LOG_INFO, "session.writer_moved", "listener=%s session=%llu from=%s state=%s%s",
              s->pl->name, (unsigned long long)s->id, s->cluster, idle ? "idle" : "busy",
              !p->user ? "" : movable(s) ? " movable=yes" : " movable=no");
    if (idle && movable(s)) {
        move_begin(s);
        return;
    }
    if (idle) {
        char text[256];
        px_session_writer_moved_text(s, text, sizeof text, false);
        px_conn_stop_reading(&s->server);
        px_session_fail(s, PX_ERR_WRITER_MOVED, text);
    } else if (cut && p->inflight) {
        /* the old writer would acknowledge a write the new one never sees */
        px_conn_stop_reading(&s->server);
        px_session_fail(s, PX_ERR_OUTCOME_UNKNOWN,
                        "the writer moved to a promoted cluster while a statement was in flight "
                        "on the old one, which still accepted writes; ferry cut it off: its "
                        "outcome is unknown");
    }
}

/* Outside a transaction with nothing in flight (PostgreSQL's own
 * idle_session_timeout applies to the same state). */
static bool pg_idle(const struct px_session *s)
{
    const struct px_pg_session *p = &s->u.pg;
    return p->startup_done && p->txn == 'I' && !p->inflight && !p->terminating && !p->restoring;
}

static void pg_describe(const struct px_session *s, json_t *entry)
{
    char txn = s->u.pg.txn;
    if (s->user[0]) {
        json_object_set_new(entry, "user", json_string(s->user));
        json_object_set_new(entry, "database", json_string(s->database));
    }
    json_object_set_new(entry, "transaction", txn == 'I'   ? json_string("idle")
                                              : txn == 'T' ? json_string("in_transaction")
                                              : txn == 'E' ? json_string("failed")
                                                           : json_null());
}

static void pg_free(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    free(p->fail_text);
    login_free(p);
    pg_stream_free(&p->scan_c2s);
    ferry_wbuf_free(&p->sets);
    ferry_wbuf_free(&p->pending_set);
    ferry_wbuf_free(&p->statements);
    for (size_t i = 0; i < 4; i++)
        free(p->params[i]);
    ferry_wbuf_free(&p->startup);
    if (p->cancel_pid)
        px_cancel_unregister(p->cancel_pid);
}

const struct px_proto px_proto_pg = {
    .begin = pg_begin,
    .defer_error = pg_defer_error,
    .connected = pg_connected,
    .scan = pg_scan,
    .relayed = pg_relayed,
    .server_lost = pg_server_lost,
    .timer = pg_timer,
    .writer_moved = pg_writer_moved,
    .can_prelogin = pg_can_prelogin,
    .idle = pg_idle,
    .describe = pg_describe,
    .free = pg_free,
};
