/* MySQL terminated authentication: ferry greets the client itself, checks
 * its password (mysql_native_password, or caching_sha2_password with the
 * fast path, or full authentication over TLS or RSA), and only then
 * connects to the writer and logs in there with the user's stored password
 * in whatever method the server asks. The relay (session_mysql.c) starts in
 * the command phase once the backend said OK; the client gets that OK.
 *
 * Sequence ids: the client leg and the backend leg are separate exchanges
 * (each with its own TLS upgrade), so each keeps its own count; ferry never
 * relays a handshake packet, it builds them.
 *
 * ferry's greeting: the server version and capabilities of the listener's
 * backends (learned from the last backend greeting; the first session of a
 * listener that has seen none connects to the writer before greeting, to
 * learn them), or auth.server_version when configured. MariaDB's extended
 * capabilities never appear (my_handshake_build zeroes them), so clients
 * speak MySQL's protocol as Aurora expects.
 *
 * caching_sha2_password as MySQL 8 runs it: a user's first login since ferry
 * started (or since the config was reloaded) goes through full
 * authentication, the password sent over TLS or RSA-encrypted with ferry's
 * key; after one success ferry "caches" the user and later logins take the
 * fast path (one scramble). Unknown users go through the same exchange as
 * known ones and fail with the same 1045.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/crypto.h>

#include "ferry/tls.h"
#include "mysql/auth.h"
#include "session_mysql.h"

enum {
    DEFAULT_CHARSET = 45,       /* utf8mb4_general_ci: MySQL 8 and MariaDB both know it */
};

#define ER_ACCESS_DENIED 1045, "28000"
#define ER_SECURE_TRANSPORT 3159, "HY000"   /* ER_SECURE_TRANSPORT_REQUIRED */

/* Without a backend seen yet and with auth.server_version set: what ferry
 * offers until a greeting tells it more (no query attributes: MariaDB has
 * none, and a backend lacking a wire-format bit cannot serve the session). */
#define DEFAULT_CAPS                                                                        \
    (MY_CLIENT_LONG_PASSWORD | MY_CLIENT_FOUND_ROWS | MY_CLIENT_LONG_FLAG |                  \
     MY_CLIENT_CONNECT_WITH_DB | MY_CLIENT_LOCAL_FILES | MY_CLIENT_PROTOCOL_41 |              \
     MY_CLIENT_TRANSACTIONS | MY_CLIENT_SECURE_CONNECTION | MY_CLIENT_MULTI_STATEMENTS |      \
     MY_CLIENT_MULTI_RESULTS | MY_CLIENT_PS_MULTI_RESULTS | MY_CLIENT_PLUGIN_AUTH |           \
     MY_CLIENT_CONNECT_ATTRS | MY_CLIENT_PLUGIN_AUTH_LENENC | MY_CLIENT_SESSION_TRACK |       \
     MY_CLIENT_DEPRECATE_EOF)

/* Kept per user with the config (ferry_user_cfg.derived). */
struct my_user_cache {
    int sha2_cached;            /* atomic: a full authentication succeeded */
};

struct my_login {
    struct ferry_wbuf cin;          /* client bytes not consumed yet */
    struct ferry_wbuf sin;          /* backend bytes not consumed yet */
    struct ferry_wbuf pkt;          /* the packet being handled (payload) */
    /* the client's side */
    bool greeting_sent;
    bool response_seen;             /* its HandshakeResponse41 is in */
    bool verified;                  /* it proved its password */
    bool full_auth;                 /* caching_sha2 went through full authentication */
    uint8_t scramble[MY_SCRAMBLE_LEN];
    struct my_secret secret;
    struct my_auth_server srv;
    const struct ferry_user_cfg *user;  /* NULL: unknown user (the exchange fails) */
    char password[40];              /* an unknown user's secret: random, never sent */
    uint32_t client_caps;           /* negotiated with the client */
    /* the backend's side */
    bool backend_greeted;
    bool responded;                 /* ferry's HandshakeResponse41 went out */
    uint8_t server_next;            /* sequence id of the backend's next packet */
    uint32_t server_caps;
    uint32_t backend_id;
    uint8_t backend_scramble[MY_SCRAMBLE_LEN];
    char backend_plugin[64];
    struct my_auth_client cli;
    /* a move: replaying the session on the new writer */
    bool restoring;
    size_t replay_off;              /* next statement in m->replay */
    size_t stmt_next;               /* next prepared statement to create again */
    bool expect_prepare;            /* the command in flight is a COM_STMT_PREPARE */
    uint32_t skip;                  /* definition packets of a PREPARE_OK still to come */
};

static void login_read_client(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void login_read_server(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void backend_respond(struct px_session *s);
static void check_client(struct px_session *s, struct ferry_slice used, struct ferry_slice auth);
static struct my_login *login_new(void);
static void move_restore(struct px_session *s);
static void move_failed(struct px_session *s, const char *why);
static void replay_packet(struct px_session *s, const uint8_t *p, size_t n);

void mys_login_free(struct px_my_session *m)
{
    struct my_login *l = m->login;
    if (!l)
        return;
    ferry_wbuf_free(&l->cin);
    ferry_wbuf_free(&l->sin);
    if (l->pkt.data)
        OPENSSL_cleanse(l->pkt.data, l->pkt.cap);
    ferry_wbuf_free(&l->pkt);
    OPENSSL_cleanse(l, sizeof *l);
    free(l);
    m->login = NULL;
}

/* A payload as one packet with sequence id seq (appended to out). */
static void frame(struct ferry_wbuf *out, uint8_t seq, const uint8_t *p, size_t n)
{
    size_t start = my_packet_begin(out, seq);
    ferry_wbuf_put(out, p, n);
    my_packet_end(out, start);
}

static void send_client(struct px_session *s, struct ferry_wbuf *b)
{
    if (px_session_write(s, &s->client, b, false) != 0)
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
}

static void send_server(struct px_session *s, struct ferry_wbuf *b)
{
    if (px_session_write(s, &s->server, b, false) != 0)
        px_session_close(s, FERRY_LOG_INFO, "server write failed");
}

/* Ends the session during the client's exchange; seq follows its packet. */
static void client_fail(struct px_session *s, enum px_err kind, uint16_t code, const char *state,
                        const char *text)
{
    struct px_my_session *m = mys(s);
    px_conn_stop_reading(&s->client);
    mys_fail(s, kind, code, state, m->hs_next, text);
}

/* ---- ferry's greeting ---- */

/* MySQL's scramble alphabet: 7-bit, never NUL or '$' (it is NUL-terminated
 * on the wire, and '$' separates fields of stored hashes). */
static bool make_scramble(uint8_t out[MY_SCRAMBLE_LEN])
{
    if (getrandom(out, MY_SCRAMBLE_LEN, 0) != MY_SCRAMBLE_LEN)
        return false;
    for (size_t i = 0; i < MY_SCRAMBLE_LEN; i++) {
        out[i] &= 0x7f;
        if (out[i] == 0 || out[i] == '$')
            out[i]++;
    }
    return true;
}

/* The plugin ferry's greeting announces: the first user's (a client whose
 * user takes the other gets an AuthSwitchRequest, as from MySQL). */
static const char *greeting_plugin(const struct ferry_listener_cfg *lcfg)
{
    return lcfg->nusers && lcfg->users[0].method == FERRY_AUTH_CACHING_SHA2 ? MY_PLUGIN_SHA2
                                                                            : MY_PLUGIN_NATIVE;
}

/* What the last backend greeting said; false when none was seen yet. */
static bool learned_greeting(struct px_listener *pl, char *version, size_t len, uint32_t *caps,
                             uint8_t *charset)
{
    pthread_mutex_lock(&pl->greeting_lock);
    bool known = pl->server_version[0] != '\0';
    if (known) {
        snprintf(version, len, "%s", pl->server_version);
        *caps = pl->server_caps;
        *charset = pl->server_charset;
    }
    pthread_mutex_unlock(&pl->greeting_lock);
    return known;
}

/* MariaDB prefixes "5.5.5-" for replication clients of old; not ferry's. */
static void learn_greeting(struct px_listener *pl, const struct my_handshake *hs)
{
    struct ferry_slice v = hs->server_version;
    if (v.len > 6 && memcmp(v.p, "5.5.5-", 6) == 0) {
        v.p += 6;
        v.len -= 6;
    }
    pthread_mutex_lock(&pl->greeting_lock);
    snprintf(pl->server_version, sizeof pl->server_version, "%.*s",
             (int)(v.len < sizeof pl->server_version ? v.len : sizeof pl->server_version - 1),
             (const char *)v.p);
    pl->server_caps = hs->caps;
    pl->server_charset = hs->charset;
    pthread_mutex_unlock(&pl->greeting_lock);
}

static void send_greeting(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    char version[64] = "";
    uint32_t caps = DEFAULT_CAPS;
    uint8_t charset = DEFAULT_CHARSET;
    learned_greeting(s->pl, version, sizeof version, &caps, &charset);
    if (s->lcfg->server_version[0])
        snprintf(version, sizeof version, "%s", s->lcfg->server_version);
    if (!make_scramble(l->scramble)) {
        px_session_close(s, FERRY_LOG_ERROR, "no randomness for a scramble");
        return;
    }
    const char *plugin = greeting_plugin(s->lcfg);
    m->offered = my_caps_offer(caps, s->lcfg->tls_server_ctx != NULL);
    struct my_handshake hs = {
        .server_version = {(const uint8_t *)version, strlen(version)},
        .conn_id = m->ferry_id,
        .scramble_len = MY_SCRAMBLE_LEN,
        .caps = m->offered,
        .charset = charset,
        .status = MY_STATUS_AUTOCOMMIT,
        .auth_plugin = {(const uint8_t *)plugin, strlen(plugin)},
    };
    memcpy(hs.scramble, l->scramble, MY_SCRAMBLE_LEN);
    memcpy(m->scramble, l->scramble, MY_SCRAMBLE_LEN);     /* COM_CHANGE_USER answers it */
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    my_handshake_build(&b, 0, &hs);
    l->greeting_sent = true;
    m->greeted = true;      /* errors from here carry the client's sequence */
    m->phase = MS_AUTH;
    m->hs_next = 1;
    m->client_turn = true;
    px_session_ask(s, &s->client, &b, login_read_client, 0);    /* client_login_timeout */
}

static struct my_login *login_new(void)
{
    struct my_login *l = calloc(1, sizeof *l);
    if (l) {
        ferry_wbuf_init(&l->cin, 65536 + 16);
        ferry_wbuf_init(&l->sin, 65536 + 16);
        ferry_wbuf_init(&l->pkt, 65536);
    }
    return l;
}

void mys_login_begin(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    if (!(m->login = login_new())) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for a session");
        return;
    }
    struct sockaddr_storage none = {0};
    if (!(m->ferry_id = mys_id_register(&none, 0))) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for a session");
        return;
    }
    char version[64];
    uint32_t caps;
    uint8_t charset;
    if (s->lcfg->server_version[0] ||
        learned_greeting(s->pl, version, sizeof version, &caps, &charset)) {
        send_greeting(s);
        return;
    }
    /* the listener's first session: the writer's greeting first */
    ferry_log(FERRY_LOG_INFO, "session.learn_greeting", "listener=%s session=%llu "
              "reason=\"no backend greeting seen yet: connecting before greeting the client\"",
              s->pl->name, (unsigned long long)s->id);
    px_session_route(s);
}

/* ---- the client's exchange ---- */

/* The client starts its TLS handshake right after the SSLRequest, without
 * waiting for an answer: what came with it is the ClientHello. */
static void start_client_tls(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    m->client_turn = true;
    struct ferry_wbuf hello = l->cin;   /* taken: plaintext may come back at once */
    ferry_wbuf_init(&l->cin, hello.max);
    px_session_client_tls(s, hello.data, hello.len, login_read_client);
    ferry_wbuf_free(&hello);
}

static void access_denied(struct px_session *s, bool with_password)
{
    char text[FERRY_NAME_MAX + 160];
    const char *host = s->peer;
    const char *colon = strrchr(host, ':');
    snprintf(text, sizeof text, "Access denied for user '%s'@'%.*s' (using password: %s)",
             s->user, (int)(colon ? colon - host : (long)strlen(host)), host,
             with_password ? "YES" : "NO");
    client_fail(s, PX_ERR_AUTH_FAILED, ER_ACCESS_DENIED, text);
}

/* The client's check passed: connect to the writer (or log in where ferry
 * is connected already); the client waits for its OK meanwhile. */
static void client_verified(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    l->verified = true;
    px_session_logged_in(s);
    if (l->full_auth && l->user) {
        struct my_user_cache *c = l->user->derived;
        if (c)
            __atomic_store_n(&c->sha2_cached, 1, __ATOMIC_RELEASE);
    }
    m->user = l->user;
    m->client_turn = false;
    px_conn_stop_reading(&s->client);
    OPENSSL_cleanse(&l->secret, sizeof l->secret);
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    ferry_log(FERRY_LOG_DEBUG, "session.authenticated", "listener=%s session=%llu user=%s "
              "connection_id=%u", s->pl->name, (unsigned long long)s->id,
              ferry_log_quote(s->user, qu, sizeof qu), m->ferry_id);
    if (m->changing_user) {
        /* the session starts anew as this user: a fresh backend login */
        s->retry_connect = true;
        px_session_reconnect(s);
        return;
    }
    if (l->backend_greeted) {
        backend_respond(s);
        return;
    }
    /* an unreachable writer holds the client (up to hold_timeout) like a
     * new client waiting for a writer */
    s->retry_connect = true;
    px_session_route(s);
}

/* One verdict of the exchange: what to send, and what comes next. */
static void auth_verdict(struct px_session *s, enum my_auth_verdict v, struct ferry_wbuf *more,
                         bool with_password)
{
    struct px_my_session *m = mys(s);
    if (v == MY_AUTH_DENIED) {
        ferry_wbuf_free(more);
        access_denied(s, with_password);
        return;
    }
    if (more->len) {
        struct ferry_wbuf b;
        ferry_wbuf_init(&b, 0);
        my_auth_more_data_build(&b, m->hs_next++, more->data, more->len);
        send_client(s, &b);
    }
    ferry_wbuf_free(more);
    if (s->closing)
        return;
    if (v == MY_AUTH_CONTINUE) {
        m->client_turn = true;
        return;
    }
    client_verified(s);
}

/* The user's secret and the plugin ferry asks for. An unknown user gets a
 * random password nobody knows and the listener's default plugin (the
 * greeting's, as MySQL gives its mock account the default plugin), so the
 * exchange runs its course and fails like a wrong password (no way to tell
 * users apart). */
static bool prepare_secret(struct px_session *s, struct my_login *l, bool *sha2)
{
    const struct ferry_user_cfg *u = ferry_listener_user(s->lcfg, s->user);
    l->user = u;
    const char *pw = u ? u->password : NULL;
    if (!u) {
        uint8_t r[sizeof l->password / 2];
        if (getrandom(r, sizeof r, 0) != sizeof r)
            return false;
        for (size_t i = 0; i < sizeof r; i++)
            l->password[i] = (char)('a' + r[i] % 26);
        pw = l->password;
    }
    if (my_secret_from_password(&l->secret, pw, strlen(pw)) != 0)
        return false;
    *sha2 = u ? u->method == FERRY_AUTH_CACHING_SHA2
              : strcmp(greeting_plugin(s->lcfg), MY_PLUGIN_SHA2) == 0;
    if (!u) {
        l->secret.has_sha2 = false;     /* never cached: full authentication */
        return true;
    }
    if (*sha2) {
        /* the per-user "cache" lives with the config */
        void **slot = (void **)&u->derived;
        struct my_user_cache *c = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (!c) {
            struct my_user_cache *made = calloc(1, sizeof *made);
            void *expected = NULL;
            if (!made)
                return false;
            if (__atomic_compare_exchange_n(slot, &expected, made, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                c = made;
            } else {
                free(made);
                c = expected;
            }
        }
        if (!__atomic_load_n(&c->sha2_cached, __ATOMIC_ACQUIRE))
            l->secret.has_sha2 = false;     /* not cached: full authentication */
    }
    return true;
}

static void handshake_response(struct px_session *s, const uint8_t *p, size_t n)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    if (my_is_ssl_request(p, n)) {
        if (!s->lcfg->tls_server_ctx || s->client.tls) {
            client_fail(s, PX_ERR_PROTOCOL, ER_HANDSHAKE, "TLS was not offered");
            return;
        }
        start_client_tls(s);
        return;
    }
    struct my_response r;
    if (my_response_parse(p, n, &r) < 0 || r.ssl_request) {
        client_fail(s, PX_ERR_PROTOCOL, ER_HANDSHAKE, "bad handshake response");
        return;
    }
    snprintf(s->user, sizeof s->user, "%.*s",
             (int)(r.user.len < sizeof s->user ? r.user.len : sizeof s->user - 1),
             (const char *)r.user.p);
    snprintf(s->database, sizeof s->database, "%.*s",
             (int)(r.database.len < sizeof s->database ? r.database.len : sizeof s->database - 1),
             (const char *)r.database.p);
    if (s->lcfg->tls_required && !s->client.tls) {
        client_fail(s, PX_ERR_TLS_REQUIRED, ER_SECURE_TRANSPORT,
                    "Connections using insecure transport are prohibited: this listener requires TLS");
        return;
    }
    if (r.user.len >= FERRY_NAME_MAX || r.database.len >= FERRY_NAME_MAX) {
        access_denied(s, r.auth_response.len > 0);
        return;
    }
    l->client_caps = (r.caps & m->offered & ~MY_CLIENT_SSL) | MY_CLIENT_LONG_PASSWORD;
    ferry_wbuf_reset(&m->hello);
    ferry_wbuf_put(&m->hello, p, n);
    if (m->hello.failed) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for a login");
        return;
    }
    check_client(s, r.auth_plugin, r.auth_response);
}

/* The client named its user (s->user) and answered ferry's scramble, in a
 * handshake response or a COM_CHANGE_USER: check it, after asking for its
 * user's plugin if it answered for another. */
static void check_client(struct px_session *s, struct ferry_slice used, struct ferry_slice auth)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    l->response_seen = true;
    bool sha2 = false;
    if (!prepare_secret(s, l, &sha2)) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory or randomness for a login");
        return;
    }
    l->srv = (struct my_auth_server){
        .secret = &l->secret, .sha2 = sha2, .tls = s->client.tls != NULL,
        .key = s->lcfg->mysql_rsa_key, .step = MY_AUTH_STEP_FIRST,
    };
    memcpy(l->srv.scramble, l->scramble, MY_SCRAMBLE_LEN);
    const char *plugin = sha2 ? MY_PLUGIN_SHA2 : MY_PLUGIN_NATIVE;
    bool same = used.len == strlen(plugin) && memcmp(used.p, plugin, used.len) == 0;
    if (!same) {
        /* the client answered for another plugin: ask again (same scramble) */
        struct ferry_wbuf b;
        ferry_wbuf_init(&b, 0);
        my_auth_switch_build(&b, m->hs_next++, plugin, l->scramble, MY_SCRAMBLE_LEN);
        m->client_turn = true;
        send_client(s, &b);
        return;
    }
    struct ferry_wbuf more;
    ferry_wbuf_init(&more, 4096);
    enum my_auth_verdict v = my_auth_server_step(&l->srv, auth.p, auth.len, &more);
    l->full_auth = l->srv.step == MY_AUTH_STEP_FULL;
    auth_verdict(s, v, &more, auth.len > 0);
}

/* An answer to an AuthSwitchRequest or AuthMoreData. */
static void auth_answer(struct px_session *s, const uint8_t *p, size_t n)
{
    struct my_login *l = mys(s)->login;
    struct ferry_wbuf more;
    ferry_wbuf_init(&more, 4096);
    enum my_auth_verdict v = my_auth_server_step(&l->srv, p, n, &more);
    l->full_auth = l->full_auth || l->srv.step == MY_AUTH_STEP_FULL;
    auth_verdict(s, v, &more, n > 0);
}

/* Takes the first whole packet off buf into pkt (its payload): 1 = one
 * taken, 0 = need more, -1 = malformed or too large. Handshake packets are
 * small; copying them out leaves buf holding only what follows. */
static int take_packet(struct ferry_wbuf *buf, struct ferry_wbuf *pkt, uint8_t *seq)
{
    struct my_logical lp;
    if (buf->len == 0)
        return buf->failed ? -1 : 0;
    int rc = my_logical_decode(buf->data, buf->len, 65536, &lp);
    if (rc == FERRY_NEED_MORE)
        return buf->failed ? -1 : 0;
    if (rc < 0 || lp.fragments != 1)
        return -1;
    ferry_wbuf_reset(pkt);
    ferry_wbuf_put(pkt, buf->data + MY_HDR_LEN, lp.len);
    OPENSSL_cleanse(buf->data, (size_t)rc);     /* passwords travel in these */
    memmove(buf->data, buf->data + rc, buf->len - (size_t)rc);
    buf->len -= (size_t)rc;
    *seq = lp.first_seq;
    return pkt->failed ? -1 : 1;
}

static void client_advance(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    while (!s->closing && !s->failing && m->login && !m->login->verified) {
        struct my_login *l = m->login;
        uint8_t seq;
        int rc = take_packet(&l->cin, &l->pkt, &seq);
        if (rc == 0)
            return;
        if (rc < 0) {
            client_fail(s, PX_ERR_PROTOCOL, ER_HANDSHAKE, "malformed or oversized handshake packet");
            return;
        }
        if (!m->client_turn || seq != m->hs_next) {
            client_fail(s, PX_ERR_PROTOCOL, ER_OUT_OF_ORDER, "handshake packet out of order");
            return;
        }
        m->hs_next++;
        m->client_turn = false;
        if (!l->response_seen)
            handshake_response(s, l->pkt.data, l->pkt.len);
        else
            auth_answer(s, l->pkt.data, l->pkt.len);
        if (m->login && m->login->pkt.data)
            OPENSSL_cleanse(m->login->pkt.data, m->login->pkt.cap);
    }
}

static void login_read_client(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_session *s = ((struct px_conn *)stream->data)->owner;
    struct my_login *l = mys(s)->login;
    nread = px_session_read_into(s, l ? &l->cin : NULL, nread, buf);
    if (nread < 0)
        px_session_close(s, FERRY_LOG_DEBUG, "client left during the handshake");
    else if (nread > 0)
        client_advance(s);
}

/* ---- ferry's login into the backend ---- */

/* The backend refused or broke the login. A client that may wait for a
 * writer waits (the server is going away or not serving); others get it. */
static void backend_lost(struct px_session *s, const char *why)
{
    px_conn_stop_reading(&s->server);
    px_session_backend_failed(s, why);
}

static void backend_fail(struct px_session *s, enum px_err kind, const char *why)
{
    char text[FERRY_HOST_MAX + FERRY_NAME_MAX + 400];
    snprintf(text, sizeof text, "login into the writer %s (%s) failed: %s", s->cluster,
             s->endpoint, why);
    px_conn_stop_reading(&s->server);
    px_session_fail(s, kind, text);
}

static void backend_greeting(struct px_session *s, const uint8_t *p, size_t n)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    if (n && p[0] == MY_ERR) {
        struct my_err e;
        char why[300];
        if (my_err_parse(p, n, &e) == 0)
            snprintf(why, sizeof why, "the server refused the connection: %u %.*s", e.code,
                     (int)e.message.len, (const char *)e.message.p);
        else
            snprintf(why, sizeof why, "the server refused the connection");
        backend_lost(s, why);
        return;
    }
    struct my_handshake hs;
    const uint32_t need = MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION |
                          MY_CLIENT_PLUGIN_AUTH;
    if (my_handshake_parse(p, n, &hs) < 0 || (hs.caps & need) != need ||
        hs.scramble_len < MY_SCRAMBLE_LEN) {
        backend_fail(s, PX_ERR_UNSUPPORTED, "the server's greeting is not a MySQL 4.1+ handshake");
        return;
    }
    learn_greeting(s->pl, &hs);
    l->backend_greeted = true;
    l->server_caps = hs.caps;
    l->backend_id = hs.conn_id;
    memcpy(l->backend_scramble, hs.scramble, MY_SCRAMBLE_LEN);
    snprintf(l->backend_plugin, sizeof l->backend_plugin, "%.*s",
             (int)(hs.auth_plugin.len < sizeof l->backend_plugin ? hs.auth_plugin.len
                                                                 : sizeof l->backend_plugin - 1),
             (const char *)hs.auth_plugin.p);
    if (!l->greeting_sent) {
        /* learned what to greet with: now the client (the backend waits) */
        px_conn_stop_reading(&s->server);
        send_greeting(s);
        return;
    }
    if (l->verified)
        backend_respond(s);
}

/* ferry's HandshakeResponse41 (after an SSLRequest and the TLS handshake
 * when the backend leg is encrypted), for the client's user, database,
 * character set and connect attributes, with the stored password. */
static void backend_respond(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    struct ferry_tls_ctx *ctx = s->lcfg->tls_backend_ctx;
    bool tls = false;
    if (ctx && (l->server_caps & MY_CLIENT_SSL)) {
        tls = true;
    } else if (ctx && !ferry_tls_mode_allows_plaintext(ferry_tls_ctx_mode(ctx))) {
        backend_fail(s, PX_ERR_BACKEND_DOWN, "the server does not accept TLS");
        return;
    }
    uint32_t caps = my_caps_for_backend(l->client_caps, l->server_caps, tls);
    if ((caps & MY_CAPS_WIRE_FORMAT) != (l->client_caps & MY_CAPS_WIRE_FORMAT)) {
        char why[160];
        snprintf(why, sizeof why, "the server lacks capabilities the client negotiated "
                 "(0x%08x)", (l->client_caps & ~caps) & MY_CAPS_WIRE_FORMAT);
        backend_fail(s, PX_ERR_UNSUPPORTED, why);
        return;
    }
    struct my_response r;
    if (my_response_parse(m->hello.data, m->hello.len, &r) < 0) {
        backend_fail(s, PX_ERR_PROTOCOL, "the client's handshake response is gone");
        return;
    }
    /* the SSLRequest carries the same capabilities as the response after
     * it: MariaDB takes them from the SSLRequest alone */
    caps |= r.has_database ? MY_CLIENT_CONNECT_WITH_DB : 0;
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    if (tls) {
        struct my_response req = {.caps = caps, .max_packet = r.max_packet, .charset = r.charset,
                                  .ssl_request = true};
        my_response_build(&out, l->server_next++, &req);
        const struct ferry_cluster_cfg *cl = ferry_listener_cluster(s->lcfg, s->cluster);
        char err[256];
        send_server(s, &out);
        if (s->closing)
            return;
        s->server.tls = ferry_tls_new(ctx, cl ? cl->endpoint.host : NULL, err, sizeof err);
        if (!s->server.tls) {
            backend_fail(s, PX_ERR_BACKEND_DOWN, err);
            return;
        }
        ferry_tls_set_limit(s->server.tls, s->lcfg->session_buffer);
        if (ferry_tls_handshake(s->server.tls) < 0 || px_conn_tls_flush(s, &s->server) != 0) {
            backend_fail(s, PX_ERR_BACKEND_DOWN, ferry_tls_error(s->server.tls));
            return;
        }
        px_conn_stop_reading(&s->server);   /* reads go through the engine from here */
        if (px_conn_read_start(&s->server, login_read_server) != 0) {
            px_session_close(s, FERRY_LOG_INFO, "read start failed");
            return;
        }
        ferry_wbuf_init(&out, 0);
    }
    const char *pw = m->user->password;
    l->cli = (struct my_auth_client){.password = pw, .password_len = strlen(pw), .tls = tls,
                                     .may_reveal = px_session_may_reveal_password(s)};
    struct ferry_slice plugin = {(const uint8_t *)l->backend_plugin, strlen(l->backend_plugin)};
    struct ferry_slice data = {l->backend_scramble, MY_SCRAMBLE_LEN};
    struct ferry_wbuf auth;
    ferry_wbuf_init(&auth, 0);
    if (my_auth_client_start(&l->cli, plugin, data, &auth) != 0) {
        /* a plugin ferry does not speak: answer for native, the server switches */
        plugin = (struct ferry_slice){(const uint8_t *)MY_PLUGIN_NATIVE, strlen(MY_PLUGIN_NATIVE)};
        ferry_wbuf_reset(&auth);
        my_auth_client_start(&l->cli, plugin, data, &auth);
    }
    struct my_response resp = {
        .caps = caps,
        .max_packet = r.max_packet,
        .charset = m->st_init ? (uint8_t)m->st.charset : r.charset,   /* a move: the current one */
        .user = r.user,
        .auth_response = {auth.data, auth.len},
        .has_database = r.has_database,
        .database = r.database,
        .auth_plugin = plugin,
        .attrs = r.attrs,
    };
    my_response_build(&out, l->server_next++, &resp);
    if (auth.data)
        OPENSSL_cleanse(auth.data, auth.cap);
    ferry_wbuf_free(&auth);
    l->responded = true;
    send_server(s, &out);
    if (s->closing)
        return;
    if (!s->server.reading && px_conn_read_start(&s->server, login_read_server) != 0)
        px_session_close(s, FERRY_LOG_INFO, "read start failed");
}

/* The backend said OK: the client gets that OK (its status flags and
 * session state are the session's), and the relay starts. */
static void backend_logged_in(struct px_session *s, const uint8_t *p, size_t n)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    struct my_response r;
    if (my_response_parse(m->hello.data, m->hello.len, &r) < 0) {
        backend_fail(s, PX_ERR_PROTOCOL, "the client's handshake response is gone");
        return;
    }
    m->backend_id = l->backend_id;
    mys_id_update(m->ferry_id, &s->server_addr, l->backend_id);
    if (m->moving) {
        move_restore(s);
        return;
    }
    if (m->st_init)
        my_state_free(&m->st);
    my_state_init(&m->st, NULL, l->client_caps, r.charset);
    m->st_init = true;
    if (r.has_database && r.database.len &&
        !(m->st.schema = strndup((const char *)r.database.p, r.database.len))) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory");
        return;
    }
    struct my_ok ok;
    if (my_ok_parse(p, n, m->st.caps, &ok) == 0)
        my_state_apply_status(&m->st, ok.status);
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    frame(&out, m->hs_next, p, n);
    px_conn_stop_reading(&s->server);
    mys_login_free(m);
    m->phase = MS_COMMAND;
    m->changing_user = false;
    ferry_wbuf_reset(&m->replay);           /* a new session: nothing to replay */
    s->retry_connect = false;
    send_client(s, &out);
    if (s->closing)
        return;
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    ferry_log(FERRY_LOG_DEBUG, "session.logged_in", "listener=%s session=%llu backend=%s user=%s "
              "connection_id=%u backend_id=%u", s->pl->name, (unsigned long long)s->id,
              s->endpoint, ferry_log_quote(s->user, qu, sizeof qu), m->ferry_id, m->backend_id);
    px_session_start_relay(s);
}

/* The server refused the login: its ERR goes to the client (with the
 * client's sequence id), and the session ends. */
static void backend_refused(struct px_session *s, const uint8_t *p, size_t n)
{
    struct px_my_session *m = mys(s);
    struct my_err e;
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    if (m->moving) {
        move_failed(s, "the new writer refused the login");
        return;
    }
    if (my_err_parse(p, n, &e) == 0)
        ferry_log(FERRY_LOG_WARN, "session.backend_login_refused", "listener=%s session=%llu "
                  "backend=%s user=%s code=%u", s->pl->name, (unsigned long long)s->id,
                  s->endpoint, ferry_log_quote(s->user, qu, sizeof qu), e.code);
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    frame(&out, m->hs_next, p, n);
    px_conn_stop_reading(&s->server);
    px_session_count_error(s, PX_ERR_AUTH_FAILED);
    s->failing = true;
    if (px_session_write(s, &s->client, &out, true) != 0)
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
}

static void backend_auth_packet(struct px_session *s, const uint8_t *p, size_t n)
{
    struct my_login *l = mys(s)->login;
    if (n == 0) {
        backend_fail(s, PX_ERR_PROTOCOL, "empty packet from the server");
        return;
    }
    if (p[0] == MY_OK) {
        backend_logged_in(s, p, n);
        return;
    }
    if (p[0] == MY_ERR) {
        backend_refused(s, p, n);
        return;
    }
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    struct ferry_wbuf data;
    ferry_wbuf_init(&data, 0);
    bool reply = true;
    int rc = -1;
    if (p[0] == MY_EOF) {
        struct my_auth_switch as;
        if (my_auth_switch_parse(p, n, &as) == 0)
            rc = my_auth_client_start(&l->cli, as.plugin, as.data, &data);
    } else if (p[0] == MY_AUTH_MORE_DATA) {
        struct ferry_slice more;
        if (my_auth_more_data_parse(p, n, &more) == 0)
            rc = my_auth_client_more(&l->cli, more, &data, &reply);
    }
    if (rc != 0) {
        ferry_wbuf_free(&data);
        ferry_wbuf_free(&out);
        char why[400];
        if (rc == MY_AUTH_CLIENT_INSECURE)
            px_session_insecure_password_text(s, "the password in full (caching_sha2_password "
                                              "full authentication)", why, sizeof why);
        backend_fail(s, PX_ERR_UNSUPPORTED, rc == MY_AUTH_CLIENT_INSECURE ? why
                     : "the server asked for an authentication ferry cannot give (plugin or step)");
        return;
    }
    if (reply) {
        frame(&out, l->server_next++, data.data, data.len);
        send_server(s, &out);
    } else {
        ferry_wbuf_free(&out);
    }
    if (data.data)
        OPENSSL_cleanse(data.data, data.cap);
    ferry_wbuf_free(&data);
}

static void server_advance(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    while (!s->closing && !s->failing && m->login) {
        struct my_login *l = m->login;
        if (l->backend_greeted && !l->responded)
            return;     /* a server says nothing more until answered */
        uint8_t seq;
        int rc = take_packet(&l->sin, &l->pkt, &seq);
        if (rc == 0)
            return;
        if (rc < 0 || seq != l->server_next) {
            backend_fail(s, PX_ERR_PROTOCOL, rc < 0 ? "malformed packet from the server"
                                                    : "the server's packets are out of order");
            return;
        }
        l->server_next++;
        if (!l->backend_greeted)
            backend_greeting(s, l->pkt.data, l->pkt.len);
        else if (l->restoring)
            replay_packet(s, l->pkt.data, l->pkt.len);
        else
            backend_auth_packet(s, l->pkt.data, l->pkt.len);
    }
}

static void login_read_server(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_session *s = ((struct px_conn *)stream->data)->owner;
    struct my_login *l = mys(s)->login;
    nread = px_session_read_into(s, l ? &l->sin : NULL, nread, buf);
    if (nread < 0)
        backend_lost(s, nread == UV_EOF ? "the server closed the connection during login"
                                        : uv_strerror((int)nread));
    else if (nread > 0)
        server_advance(s);
}

bool mys_login_connected(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    if (!l) {
        px_session_close(s, FERRY_LOG_ERROR, "connected without a login");
        return false;
    }
    ferry_wbuf_reset(&l->sin);
    l->backend_greeted = l->responded = false;
    l->server_next = 0;
    if (px_conn_read_start(&s->server, login_read_server) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "read start failed");
        return false;
    }
    px_session_arm_timer(s, (uint64_t)(s->lcfg->connect_timeout * 1000.0));
    return false;   /* backend_logged_in starts the relay */
}

bool mys_login_timer(struct px_session *s)
{
    struct my_login *l = mys(s)->login;
    if (l->greeting_sent && !l->verified) {
        px_session_close(s, FERRY_LOG_INFO, "the client did not finish the handshake in time");
        return true;
    }
    if (s->connected) {
        backend_lost(s, "login timed out");
        return true;
    }
    return false;
}

/* ---- moving a session to a new writer ----
 * An idle session whose writer moved logs into the new writer on its own:
 * the client's own HandshakeResponse41 again (its user, database, connect
 * attributes; the current character set), the stored password, then the
 * SET / USE statements it ran (session_mysql.c keeps them), then every
 * prepared statement is prepared again and its new backend id kept behind
 * the id the client knows. The client's next command waits (parked)
 * meanwhile and then goes to the new writer: it sees nothing. */

bool mys_movable(const struct px_session *s)
{
    const struct px_my_session *m = mys(s);
    return m->user && m->phase == MS_COMMAND && !m->unmovable && !m->moving && !m->login &&
           m->st_init && my_state_at_safe_point(&m->st) && !m->st.in_trans;
}

void mys_move_begin(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    mys_login_free(m);
    struct my_login *l = login_new();
    if (!l) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for a move");
        return;
    }
    l->greeting_sent = l->response_seen = l->verified = true;
    l->user = m->user;
    l->client_caps = m->st.caps;
    m->login = l;
    m->moving = true;
    s->stale = true;            /* routed anew; no second move for the same change */
    s->retry_connect = true;    /* an unreachable writer holds the session, not fails it */
    ferry_log(FERRY_LOG_INFO, "session.moving", "listener=%s session=%llu from=%s", s->pl->name,
              (unsigned long long)s->id, s->cluster);
    px_session_move(s);
}

static void move_failed(struct px_session *s, const char *why)
{
    struct px_my_session *m = mys(s);
    char esc[512];
    ferry_log(FERRY_LOG_WARN, "session.move_failed", "listener=%s session=%llu to=%s reason=\"%s\"",
              s->pl->name, (unsigned long long)s->id, s->cluster,
              ferry_log_escape(why, esc, sizeof esc));
    PX_STAT_ADD(px_session_stats(s)->moves_failed, 1);
    m->moving = false;
    s->retry_connect = false;
    mys_login_free(m);
    px_conn_stop_reading(&s->server);
    char text[256];
    px_session_writer_moved_text(s, text, sizeof text, false);
    mys_fail(s, PX_ERR_WRITER_MOVED, 1053, "08S01", 1, text);     /* reconnect */
}

static void move_done(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    m->moving = m->fenced = m->txn_lost = m->server_cut = false;
    s->stale = false;
    s->retry_connect = false;
    mys_login_free(m);
    px_conn_stop_reading(&s->server);
    PX_STAT_ADD(px_session_stats(s)->moves, 1);
    ferry_log(FERRY_LOG_INFO, "session.moved", "listener=%s session=%llu to=%s backend=%s "
              "backend_id=%u", s->pl->name, (unsigned long long)s->id, s->cluster, s->endpoint,
              m->backend_id);
    px_session_start_relay(s);
}

/* Sends the next statement of the replay (sequence 0, a new command). */
static void replay_next(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    size_t start = my_packet_begin(&out, 0);
    if (l->replay_off + 4 <= m->replay.len) {
        const uint8_t *at = m->replay.data + l->replay_off;
        uint32_t len = (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 |
                       (uint32_t)at[3] << 24;
        ferry_wbuf_u8(&out, MY_COM_QUERY);
        if (m->st.caps & MY_CLIENT_QUERY_ATTRIBUTES) {
            my_put_lenenc(&out, 0);     /* no attributes */
            my_put_lenenc(&out, 1);     /* one parameter set */
        }
        ferry_wbuf_put(&out, at + 4, len);
        l->replay_off += 4 + len;
        l->expect_prepare = false;
    } else if (l->stmt_next < m->st.nstmts) {
        const struct my_stmt *st = &m->st.stmts[l->stmt_next];
        ferry_wbuf_u8(&out, MY_COM_STMT_PREPARE);
        ferry_wbuf_put(&out, st->sql, st->sql_len);
        l->expect_prepare = true;
    } else {
        ferry_wbuf_free(&out);
        move_done(s);
        return;
    }
    my_packet_end(&out, start);
    if (out.failed) {
        ferry_wbuf_free(&out);
        move_failed(s, "out of memory");
        return;
    }
    l->server_next = 1;
    send_server(s, &out);
}

static void move_restore(struct px_session *s)
{
    struct my_login *l = mys(s)->login;
    l->restoring = true;
    l->replay_off = l->stmt_next = 0;
    replay_next(s);
}

/* One packet of an answer to the replay: OK goes on, ERR ends the move; a
 * PREPARE_OK gives the statement's new id, then its definitions pass. */
static void replay_packet(struct px_session *s, const uint8_t *p, size_t n)
{
    struct px_my_session *m = mys(s);
    struct my_login *l = m->login;
    if (l->skip) {
        if (--l->skip == 0)
            replay_next(s);
        return;
    }
    if (n && p[0] == MY_ERR) {
        struct my_err e;
        char why[300] = "the new writer refused to restore the session's state";
        if (my_err_parse(p, n, &e) == 0)
            snprintf(why, sizeof why, "the new writer refused to restore the session's state: "
                     "%u %.*s", e.code, (int)(e.message.len > 200 ? 200 : e.message.len),
                     (const char *)e.message.p);
        move_failed(s, why);
        return;
    }
    if (n == 0 || p[0] != MY_OK) {
        move_failed(s, "unexpected answer while restoring the session's state");
        return;
    }
    if (!l->expect_prepare) {
        replay_next(s);
        return;
    }
    if (n < 12) {
        move_failed(s, "malformed PREPARE_OK while restoring the session's state");
        return;
    }
    uint32_t id = (uint32_t)p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 |
                  (uint32_t)p[4] << 24;
    uint16_t columns = (uint16_t)(p[5] | p[6] << 8);
    uint16_t params = (uint16_t)(p[7] | p[8] << 8);
    m->st.stmts[l->stmt_next++].backend_id = id;
    bool eofs = !(m->st.caps & MY_CLIENT_DEPRECATE_EOF);
    l->skip = (uint32_t)params + columns + (eofs ? (params > 0) + (columns > 0) : 0);
    if (l->skip == 0)
        replay_next(s);
}

/* ---- COM_CHANGE_USER (terminated mode) ----
 * The client's auth response answers ferry's scramble from the greeting,
 * which no backend ever saw: ferry checks it like a login (auth switch and
 * full authentication included), then starts the session anew as that
 * user on a fresh backend connection, and the client gets that login's OK.
 * Its handshake response is rewritten to the new user, database and
 * character set, so later moves log in as the new user too. As with
 * MySQL, a failed change ends the connection. */

void mys_change_user(struct px_session *s, const uint8_t *p, size_t n)
{
    struct px_my_session *m = mys(s);
    struct my_change_user cu;
    struct my_response old;
    if (my_change_user_parse(p, n, m->st.caps, &cu) < 0 ||
        my_response_parse(m->hello.data, m->hello.len, &old) < 0) {
        mys_fail(s, PX_ERR_PROTOCOL, ER_MALFORMED, 1, "malformed COM_CHANGE_USER");
        return;
    }
    if (cu.user.len >= FERRY_NAME_MAX || cu.database.len >= FERRY_NAME_MAX) {
        mys_fail(s, PX_ERR_AUTH_FAILED, ER_ACCESS_DENIED, 1, "Access denied: name too long");
        return;
    }
    struct my_response r = {
        .caps = (old.caps & ~MY_CLIENT_CONNECT_WITH_DB) |
                (cu.database.len ? MY_CLIENT_CONNECT_WITH_DB : 0),
        .max_packet = old.max_packet,
        .charset = cu.charset ? (uint8_t)cu.charset : old.charset,
        .user = cu.user,
        .auth_response = cu.auth_response,
        .has_database = cu.database.len > 0,
        .database = cu.database,
        .auth_plugin = cu.auth_plugin,
        .attrs = (old.caps & MY_CLIENT_CONNECT_ATTRS) ? cu.attrs : (struct ferry_slice){0},
    };
    struct ferry_wbuf hello;
    ferry_wbuf_init(&hello, 0);
    my_response_build(&hello, 0, &r);
    struct my_login *l = login_new();
    if (hello.failed || !l) {
        ferry_wbuf_free(&hello);
        free(l);
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for COM_CHANGE_USER");
        return;
    }
    snprintf(s->user, sizeof s->user, "%.*s", (int)cu.user.len, (const char *)cu.user.p);
    snprintf(s->database, sizeof s->database, "%.*s", (int)cu.database.len,
             (const char *)cu.database.p);
    mys_login_free(m);
    m->login = l;
    l->greeting_sent = true;
    l->client_caps = m->st.caps;
    memcpy(l->scramble, m->scramble, MY_SCRAMBLE_LEN);
    m->changing_user = true;
    m->hs_next = 1;             /* the command was sequence 0 */
    m->client_turn = false;
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    ferry_log(FERRY_LOG_INFO, "session.change_user", "listener=%s session=%llu user=%s",
              s->pl->name, (unsigned long long)s->id, ferry_log_quote(s->user, qu, sizeof qu));
    /* the new response: the rewritten one, without its packet header */
    ferry_wbuf_reset(&m->hello);
    ferry_wbuf_put(&m->hello, hello.data + MY_HDR_LEN, hello.len - MY_HDR_LEN);
    ferry_wbuf_free(&hello);
    if (my_response_parse(m->hello.data, m->hello.len, &r) < 0) {
        px_session_close(s, FERRY_LOG_ERROR, "COM_CHANGE_USER could not be rewritten");
        return;
    }
    check_client(s, r.auth_plugin, r.auth_response);
}

enum px_scan mys_change_user_packet(struct px_session *s, const uint8_t *data, size_t n)
{
    struct my_login *l = mys(s)->login;
    if (!l || l->verified)
        return PX_SCAN_PARK;    /* logging in anew: the client's next command waits */
    ferry_wbuf_put(&l->cin, data, n);
    client_advance(s);
    return PX_SCAN_DROP;
}
