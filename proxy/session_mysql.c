/* MySQL on top of the relay (passthrough authentication): ferry follows the
 * conversation packet by packet in both directions and relays the bytes as
 * they came, except for a few fields it rewrites in place (same length):
 *
 * - the server greeting (Handshake v10): the connection id becomes a
 *   ferry-side id (unique in the process; the registry below maps it to the
 *   server and its thread id, so KILL works through ferry), and capability
 *   bits ferry cannot relay transparently are cleared (policy below);
 * - the client's HandshakeResponse41: its capabilities masked the same way;
 * - statement ids: PREPARE_OK carries ferry's id (my_state maps it), and
 *   COM_STMT_EXECUTE / SEND_LONG_DATA / CLOSE / RESET / FETCH get the
 *   backend's id back; COM_PROCESS_KILL gets the backend thread id.
 *
 * `KILL [QUERY|CONNECTION] <ferry id>` in a COM_QUERY is replaced by a new
 * packet naming the backend thread id (its length changes, so that chunk is
 * written by ferry instead of relayed). Everything from the authentication
 * exchange on feeds my_state (protocols/mysql/state.c), which says where
 * each response ends, whether a transaction is open and what the session's
 * schema is; completed commands and transactions are counted.
 *
 * Capability policy (what passes between client and server; see also
 * protocols/mysql/handshake.c, my_caps_offer):
 * - cleared: CLIENT_COMPRESS and CLIENT_ZSTD_COMPRESSION (ferry must read
 *   packets), CLIENT_SSL (ferry does not terminate TLS yet),
 *   CLIENT_OPTIONAL_METADATA, CLIENT_MULTI_FACTOR_AUTH,
 *   CLIENT_CAPABILITY_EXTENSION, and MariaDB's extended capabilities (the
 *   greeting sets bit 0, "CLIENT_MYSQL", so MariaDB clients speak plain
 *   MySQL: no progress reports, no metadata caching, no bulk commands);
 * - kept when the server offers them, because state.c follows them:
 *   CLIENT_DEPRECATE_EOF (both result-set forms), CLIENT_SESSION_TRACK (OK
 *   layout, schema and variables), CLIENT_MULTI_STATEMENTS and
 *   CLIENT_MULTI_RESULTS (SERVER_MORE_RESULTS_EXISTS), CLIENT_LOCAL_FILES
 *   (the 0xFB exchange), CLIENT_QUERY_ATTRIBUTES (COM_QUERY prefix, skipped
 *   by my_query_text for KILL).
 * The client's response is masked with what ferry offered, so a client
 * cannot switch on what ferry cleared.
 *
 * Scanning: per direction, a header parser that streams payloads without
 * copying them. The few bytes ferry must look at are copied ("captured")
 * into a small buffer as they pass; where ferry must change bytes in place
 * or cut a packet out, it needs them in one buffer: a read chunk that ends
 * too early keeps its tail ("carry") until the next chunk, and that chunk
 * is then written by ferry (a copy) rather than relayed. Client commands up
 * to SMALL_PACKET bytes are always whole in one buffer.
 *
 * Errors ferry sends mid-session carry the sequence id the client expects
 * (the command's last sequence id + 1). Failover: when the writer moves, an
 * idle session is cut from the old writer at once and its next command gets
 * 1053 (reconnect); a session in a transaction gets 1213/40001 (rolled
 * back, retry) for every command until ROLLBACK, which ferry answers with
 * OK; the next command then gets 1053. Nothing more reaches the old writer.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "session_mysql.h"

/* ---- connection ids: ferry id -> server and thread id (any thread) ---- */

#define ID_BUCKETS 1024

struct id_entry {
    uint32_t id;                        /* what the client was given */
    uint32_t backend_id;                /* the server's thread id */
    struct sockaddr_storage addr;       /* the server */
    struct id_entry *next;
};

static pthread_mutex_t ids_lock = PTHREAD_MUTEX_INITIALIZER;
static struct id_entry *ids[ID_BUCKETS];
static uint32_t ids_last;   /* under ids_lock; starts at a random point */

static struct id_entry **id_bucket(uint32_t id)
{
    return &ids[id % ID_BUCKETS];
}

static bool id_in_use(uint32_t id)
{
    for (struct id_entry *e = *id_bucket(id); e; e = e->next)
        if (e->id == id)
            return true;
    return false;
}

/* Ids count up from a random point in [2^30, 2^31): unique among open
 * sessions of the process, and unlike the small numbers servers hand out,
 * so a ferry id that reached a server untranslated would match nothing. */
uint32_t mys_id_register(const struct sockaddr_storage *addr, uint32_t backend_id)
{
    struct id_entry *e = calloc(1, sizeof *e);
    if (!e)
        return 0;
    e->addr = *addr;
    e->backend_id = backend_id;
    pthread_mutex_lock(&ids_lock);
    if (ids_last == 0) {
        uint32_t r = 0;
        if (getrandom(&r, sizeof r, 0) != sizeof r)
            r = (uint32_t)px_now_ms();
        ids_last = (1u << 30) | (r & ((1u << 30) - 1));
    }
    do {
        ids_last = ids_last >= 0x7fffffffu ? 1u : ids_last + 1;
    } while (id_in_use(ids_last));
    e->id = ids_last;
    e->next = *id_bucket(e->id);
    *id_bucket(e->id) = e;
    pthread_mutex_unlock(&ids_lock);
    return e->id;
}

void mys_id_update(uint32_t id, const struct sockaddr_storage *addr, uint32_t backend_id)
{
    pthread_mutex_lock(&ids_lock);
    for (struct id_entry *e = *id_bucket(id); e; e = e->next)
        if (e->id == id) {
            e->addr = *addr;
            e->backend_id = backend_id;
            break;
        }
    pthread_mutex_unlock(&ids_lock);
}

static bool id_lookup(uint64_t id, struct sockaddr_storage *addr, uint32_t *backend_id)
{
    if (id == 0 || id > UINT32_MAX)
        return false;
    bool found = false;
    pthread_mutex_lock(&ids_lock);
    for (struct id_entry *e = *id_bucket((uint32_t)id); e; e = e->next)
        if (e->id == id) {
            *addr = e->addr;
            *backend_id = e->backend_id;
            found = true;
            break;
        }
    pthread_mutex_unlock(&ids_lock);
    return found;
}

static void id_unregister(uint32_t id)
{
    pthread_mutex_lock(&ids_lock);
    for (struct id_entry **p = id_bucket(id); *p; p = &(*p)->next)
        if ((*p)->id == id) {
            struct id_entry *e = *p;
            *p = e->next;
            free(e);
            break;
        }
    pthread_mutex_unlock(&ids_lock);
}

static bool same_server(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
        const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return false;
}

/* ---- errors ---- */

/* The sequence id the client expects on the next packet from the server. */
static uint8_t err_seq(const struct px_my_session *m)
{
    switch (m->phase) {
    case MS_RESPONSE:
        return 2;   /* after its response (sequence 1) */
    case MS_AUTH:
    case MS_PLAIN:
        return (uint8_t)(m->client_turn ? m->hs_next + 1 : m->hs_next);
    case MS_COMMAND:
        return m->st.phase == MY_PH_IDLE ? 1 : m->st.next_seq;
    default:
        return 0;
    }
}

/* Ends the session with an ERR of the given code (the next defer_error
 * picks these up); kind is its class for the error counters. */
void mys_fail(struct px_session *s, enum px_err kind, uint16_t code, const char *sqlstate,
              uint8_t seq, const char *text)
{
    struct px_my_session *m = mys(s);
    if (s->failing || s->closing)
        return;
    m->fail_set = true;
    m->fail_code = code;
    m->fail_state = sqlstate;
    m->fail_seq = seq;
    px_session_fail(s, kind, text);
}

/* The same for malformed, hostile or unsupported traffic. */
static void fail_with(struct px_session *s, uint16_t code, const char *sqlstate, uint8_t seq,
                      const char *text)
{
    mys_fail(s, PX_ERR_PROTOCOL, code, sqlstate, seq, text);
}

/* Before the greeting, errors.c's ERR (sequence 0) is right; afterwards
 * ferry sends its own with the sequence id the client expects. */
static bool my_defer_error(struct px_session *s, enum px_err kind, const char *text)
{
    struct px_my_session *m = mys(s);
    if (!m || !m->greeted)
        return false;
    px_conn_stop_reading(&s->server);
    px_conn_stop_reading(&s->client);
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 4096);
    if (m->fail_set) {
        my_err_build(&b, m->fail_seq, m->fail_code, m->fail_state, text);
    } else {
        px_error_message(FERRY_PROTO_MYSQL, kind, text, &b);
        if (!b.failed && b.len >= MY_HDR_LEN)
            b.data[3] = err_seq(m);
    }
    if (px_session_write(s, &s->client, &b, true) != 0)
        px_session_close(s, FERRY_LOG_INFO, text);
    return true;
}

/* An ERR (or OK) ferry sends while the session goes on. */
static bool answer(struct px_session *s, struct ferry_wbuf *b)
{
    if (px_session_write(s, &s->client, b, false) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
        return false;
    }
    return true;
}

static bool answer_err(struct px_session *s, uint8_t seq, uint16_t code, const char *sqlstate,
                       const char *text)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 4096);
    my_err_build(&b, seq, code, sqlstate, text);
    return answer(s, &b);
}

static bool stopped(const struct px_session *s)
{
    return s->failing || s->closing;
}

/* ---- one buffer's walk ---- */

struct walk {
    struct px_session *s;
    bool from_client;
    uint8_t *buf;
    size_t n;
    bool owned;                 /* output is built in out (something was cut or carried) */
    size_t emit_from;           /* buf[emit_from..] not yet in out */
    struct ferry_wbuf out;
    size_t carry_from;          /* SIZE_MAX: nothing to keep */
};

/* Replaces buf[start..end) by rep in the output. */
static void cut(struct walk *w, size_t start, size_t end, const uint8_t *rep, size_t replen)
{
    if (!w->owned) {
        w->owned = true;
        ferry_wbuf_init(&w->out, 0);
    }
    ferry_wbuf_put(&w->out, w->buf + w->emit_from, start - w->emit_from);
    if (replen)
        ferry_wbuf_put(&w->out, rep, replen);
    w->emit_from = end;
}

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Payload bytes of a client packet that must be in the buffer before its
 * header is taken (they are read or changed in place, or the packet may be
 * cut out). */
static size_t client_need(const struct px_session *s, const struct my_dir *d,
                          const struct my_header *h)
{
    const struct px_my_session *m = mys(s);
    if (d->reasm.continuing)
        return 0;
    if (m->phase == MS_RESPONSE)
        return h->len;      /* checked against HS_MAX before */
    if (m->phase == MS_COMMAND && !m->fenced && m->st.phase == MY_PH_IDLE)
        return h->len <= SMALL_PACKET ? h->len : PREFIX;
    return 0;
}

/* Payload bytes of a server packet that must be in the buffer before it
 * is looked at: the greeting (rewritten in place) and PREPARE_OK. */
static size_t server_need(const struct px_session *s, size_t len)
{
    const struct px_my_session *m = mys(s);
    if (m->phase == MS_GREETING)
        return len;         /* checked against GREETING_MAX before */
    if (m->phase == MS_COMMAND && m->st.phase == MY_PH_FIRST && m->st.cmd == MY_COM_STMT_PREPARE)
        return min_size(len, PREFIX);
    return 0;
}

/* How much of a first fragment the tracker (or ferry) reads. */
static size_t capture_want(const struct px_session *s, bool from_client, uint8_t byte0, size_t len)
{
    const struct px_my_session *m = mys(s);
    if (from_client) {
        if (m->phase == MS_RESPONSE)
            return len;
        if (m->phase != MS_COMMAND)
            return 0;
        if (m->fenced)
            return min_size(len, byte0 == MY_COM_QUERY ? PREFIX : 5);
        if (m->st.phase != MY_PH_IDLE)
            return 0;       /* LOCAL INFILE data, auth data: only lengths matter */
        switch (byte0) {
        case MY_COM_STMT_PREPARE: return min_size(len, m->st.lim.max_stmt_sql + 2);
        case MY_COM_INIT_DB: return min_size(len, m->st.lim.max_name_len + 2);
        case MY_COM_CHANGE_USER: return min_size(len, CHANGE_USER_MAX);
        case MY_COM_STMT_EXECUTE: return min_size(len, 6);     /* id, then the cursor flags */
        default: return min_size(len, 5);
        }
    }
    if (m->phase != MS_COMMAND || byte0 == MY_ERR)
        return min_size(len, SERVER_CAPTURE);
    switch (m->st.phase) {
    case MY_PH_DEFS:
    case MY_PH_ONE:
        return min_size(len, 1);
    case MY_PH_ROWS:
    case MY_PH_FIELDS:
        /* a row starting 0xFE is at least 16 MB long: 9 bytes tell it from EOF */
        if (byte0 == MY_EOF)
            return min_size(len, len >= MY_MAX_PHYSICAL ? 9 : SERVER_CAPTURE);
        return min_size(len, 1);
    default:
        return min_size(len, SERVER_CAPTURE);
    }
}

static void client_packet(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end);
static void server_packet(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end);
static void payload_start(struct walk *w, struct my_dir *d, size_t off);

static void dir_violation(struct walk *w, const struct my_header *h, bool too_large)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    if (!w->from_client) {
        fail_with(s, CR_MALFORMED, err_seq(m), too_large
                  ? "the server sent a packet larger than max_message_size"
                  : "the server's packets are out of order");
        return;
    }
    uint8_t seq = m->phase == MS_COMMAND ? (uint8_t)(h->seq + 1) : err_seq(m);
    if (too_large)
        fail_with(s, ER_TOO_LARGE, seq, "packet larger than max_message_size from the client");
    else
        fail_with(s, ER_OUT_OF_ORDER, seq, "packet out of order from the client");
}

/* Takes one physical header. False: the walk stops (carry or failure). */
static bool take_header(struct walk *w, struct my_dir *d, const struct my_header *h, long hdr_at)
{
    struct my_reasm probe = d->reasm;
    int rc = my_reasm_feed(&d->reasm, h);
    if (rc < 0) {
        dir_violation(w, h, !(probe.continuing && h->seq != probe.next_seq));
        return false;
    }
    if (!d->in_logical) {
        d->in_logical = true;
        d->frags = 0;
        d->first_seq = h->seq;
        d->pkt_start = hdr_at;
        d->pay_off = -1;
        d->id_fixed = false;
        d->cap_want = 0;
        ferry_wbuf_reset(&d->cap);
        d->at_payload_start = true;
    }
    d->frags++;
    d->last_seq = h->seq;
    d->left = h->len;
    d->last_frag = rc == 1;
    d->in_packet = true;
    return true;
}

static void end_logical(struct walk *w, struct my_dir *d, size_t end)
{
    struct my_logical lp = {
        .first_seq = d->first_seq, .last_seq = d->last_seq, .fragments = d->frags,
        .len = d->reasm.total,
        .payload = {d->cap.data, d->cap.len},
    };
    d->in_logical = false;
    if (d->cap.failed) {
        fail_with(w->s, ER_MALFORMED, err_seq(mys(w->s)), "out of memory reading a packet");
        return;
    }
    if (w->from_client)
        client_packet(w, d, &lp, end);
    else
        server_packet(w, d, &lp, end);
    if (d->cap.cap > 65536)
        ferry_wbuf_free(&d->cap);   /* a large capture is not kept for the next packet */
    ferry_wbuf_reset(&d->cap);
}

static void walk(struct walk *w, struct my_dir *d)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    size_t off = 0;
    d->pkt_start = d->pay_off = -1;     /* offsets into an earlier buffer mean nothing here */
    while (!stopped(s)) {
        if (!d->in_packet) {
            if (off >= w->n)
                return;
            struct my_header h;
            long hdr_at = -1;
            if (w->from_client) {
                /* client headers are always whole in one buffer, so that a
                 * small packet can be cut out */
                if (w->n - off < MY_HDR_LEN) {
                    w->carry_from = off;
                    return;
                }
                my_header_decode(w->buf + off, w->n - off, &h);
                if (!d->reasm.continuing && (m->phase == MS_RESPONSE || m->phase == MS_AUTH) &&
                    h.len > HS_MAX) {
                    fail_with(s, ER_HANDSHAKE, err_seq(m), "handshake packet too large");
                    return;
                }
                if (w->n - off - MY_HDR_LEN < client_need(s, d, &h)) {
                    w->carry_from = off;
                    return;
                }
                hdr_at = (long)off;
                off += MY_HDR_LEN;
            } else {
                size_t take = min_size(MY_HDR_LEN - d->hdr_have, w->n - off);
                memcpy(d->hdr + d->hdr_have, w->buf + off, take);
                d->hdr_have += take;
                off += take;
                if (d->hdr_have < MY_HDR_LEN)
                    return;
                d->hdr_have = 0;
                my_header_decode(d->hdr, MY_HDR_LEN, &h);
                if (take == MY_HDR_LEN)
                    hdr_at = (long)(off - MY_HDR_LEN);
                if (m->phase == MS_GREETING && h.len > GREETING_MAX) {
                    fail_with(s, CR_MALFORMED, 0, "the server's greeting is too large");
                    return;
                }
            }
            if (!take_header(w, d, &h, hdr_at))
                return;
            continue;
        }
        if (d->at_payload_start && d->frags == 1) {
            if (d->left > 0 && off >= w->n)
                return;     /* its first byte comes with the next chunk */
            if (!w->from_client && w->n - off < server_need(s, d->left)) {
                w->carry_from = off;
                return;
            }
            d->at_payload_start = false;
            d->pay_off = (long)off;
            d->cap_want = capture_want(s, w->from_client, d->left ? w->buf[off] : 0, d->left);
            payload_start(w, d, off);
            if (stopped(s))
                return;
        }
        size_t take = min_size(d->left, w->n - off);
        if (take == 0 && d->left > 0)
            return;
        if (d->frags == 1 && d->cap.len < d->cap_want)
            ferry_wbuf_put(&d->cap, w->buf + off, min_size(take, d->cap_want - d->cap.len));
        off += take;
        d->left -= take;
        if (d->left == 0) {
            d->in_packet = false;
            if (d->last_frag)
                end_logical(w, d, off);
        }
    }
}

/* ---- client packets ---- */

static bool is_stmt_command(uint8_t cmd)
{
    return cmd == MY_COM_STMT_EXECUTE || cmd == MY_COM_STMT_SEND_LONG_DATA ||
           cmd == MY_COM_STMT_CLOSE || cmd == MY_COM_STMT_RESET || cmd == MY_COM_STMT_FETCH;
}

/* A command's first bytes, in place: statement ids become the backend's
 * (the tracker is later given the id the client used). A COM_QUERY too long
 * to be kept whole must not be a KILL, which ferry could not translate. */
static void payload_start(struct walk *w, struct my_dir *d, size_t off)
{
    struct px_my_session *m = mys(w->s);
    if (!w->from_client || m->phase != MS_COMMAND || m->fenced || m->st.phase != MY_PH_IDLE ||
        d->left == 0)
        return;
    uint8_t *p = w->buf + off;
    size_t avail = w->n - off;
    if (p[0] == MY_COM_QUERY && d->left > SMALL_PACKET) {
        struct ferry_slice sql;
        uint64_t id;
        if (my_query_text(p, min_size(avail, PREFIX), m->st.caps, &sql) == 0 &&
            my_kill_parse(sql.p, sql.len, &id) != MY_KILL_NONE)
            fail_with(w->s, ER_NOT_SUPPORTED, 1, "KILL statement too long for ferry to translate");
        return;
    }
    if (d->left > SMALL_PACKET && my_command_lookup(p[0])->reply == MY_REPLY_UNSUPPORTED) {
        /* too long to be cut out and answered: it must not reach the server */
        fail_with(w->s, ER_UNKNOWN_COM, 1, "unsupported command from the client");
        return;
    }
    if (d->left < 5 || avail < 5 || !is_stmt_command(p[0]))
        return;
    uint32_t id;
    my_id_at_1_get(p, 5, &id);
    const struct my_stmt *st = my_state_stmt_find(&m->st, id);
    d->id_fixed = true;
    d->orig_id = id;
    /* an unknown id becomes 0, which no server hands out: it answers
     * "unknown prepared statement handler" */
    my_id_at_1_set(p, 5, st ? st->backend_id : 0);
}

/* The client's HandshakeResponse41: capabilities masked in place. */
static void handshake_response(struct walk *w, struct my_dir *d, struct my_logical *lp)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    if (lp->first_seq != m->hs_next) {
        fail_with(s, ER_OUT_OF_ORDER, 2, "handshake response out of order");
        return;
    }
    uint8_t *p = w->buf + d->pay_off;
    size_t n = lp->len;
    struct my_response r;
    if (my_is_ssl_request(p, n) || (my_response_parse(p, n, &r) == 0 && r.ssl_request)) {
        fail_with(s, ER_HANDSHAKE, 2, "TLS between client and ferry is not supported yet");
        return;
    }
    if (my_response_parse(p, n, &r) < 0) {
        fail_with(s, ER_HANDSHAKE, 2, "bad handshake response");
        return;
    }
    uint32_t caps = (r.caps & m->offered) | MY_CLIENT_LONG_PASSWORD;
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(caps >> (8 * i));
        p[28 + i] = 0;      /* MariaDB's extended capabilities (end of the filler) */
    }
    snprintf(s->user, sizeof s->user, "%.*s", (int)min_size(r.user.len, sizeof s->user - 1),
             (const char *)r.user.p);
    snprintf(s->database, sizeof s->database, "%.*s",
             (int)min_size(r.database.len, sizeof s->database - 1), (const char *)r.database.p);
    my_state_init(&m->st, NULL, caps, r.charset);
    m->st_init = true;
    if (r.has_database && r.database.len) {
        m->st.schema = strndup((const char *)r.database.p, r.database.len);
        if (!m->st.schema) {
            fail_with(s, ER_HANDSHAKE, 2, "out of memory");
            return;
        }
    }
    m->hs_next = (uint8_t)(lp->last_seq + 1);
    m->client_turn = false;
    m->phase = MS_AUTH;
}

/* "ROLLBACK" or "ROLLBACK WORK", with blanks and a trailing ';'. */
static bool is_rollback(const struct px_my_session *m, const struct my_logical *lp)
{
    struct ferry_slice sql;
    if (lp->len > PREFIX ||
        my_query_text(lp->payload.p, lp->payload.len, m->st.caps, &sql) < 0)
        return false;
    char text[PREFIX + 1];
    size_t n = 0;
    for (size_t i = 0; i < sql.len; i++)
        text[n++] = (char)sql.p[i];
    text[n] = '\0';
    char *t = text;
    while (*t && isspace((unsigned char)*t))
        t++;
    char *e = t + strlen(t);
    while (e > t && (isspace((unsigned char)e[-1]) || e[-1] == ';'))
        *--e = '\0';
    /* collapse inner blanks to one space */
    char norm[PREFIX + 1];
    size_t k = 0;
    for (char *q = t; *q; q++) {
        if (isspace((unsigned char)*q)) {
            if (k && norm[k - 1] != ' ')
                norm[k++] = ' ';
        } else {
            norm[k++] = *q;
        }
    }
    norm[k] = '\0';
    return strcasecmp(norm, "ROLLBACK") == 0 || strcasecmp(norm, "ROLLBACK WORK") == 0;
}

/* Fenced: ferry speaks for the old writer's lost session. */
static void fenced_packet(struct walk *w, struct my_logical *lp)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    uint8_t seq = (uint8_t)(lp->last_seq + 1);
    char text[256];
    if (lp->payload.len == 0) {
        fail_with(s, ER_MALFORMED, seq, "empty command packet from the client");
        return;
    }
    uint8_t cmd = lp->payload.p[0];
    if (cmd == MY_COM_QUIT) {
        px_session_close(s, FERRY_LOG_DEBUG, "client quit");
        return;
    }
    if (cmd == MY_COM_STMT_CLOSE || cmd == MY_COM_STMT_SEND_LONG_DATA)
        return;     /* no answer expected */
    if (!m->txn_lost) {
        px_session_writer_moved_text(s, text, sizeof text, false);
        mys_fail(s, PX_ERR_WRITER_MOVED, 1053, "08S01", seq, text);   /* reconnect */
        return;
    }
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 4096);
    if (cmd == MY_COM_QUERY && is_rollback(m, lp)) {
        m->txn_lost = false;
        m->st.in_trans = false;
        struct my_ok ok = {.status = (uint16_t)(m->st.autocommit ? MY_STATUS_AUTOCOMMIT : 0)};
        my_ok_build(&b, seq, m->st.caps, &ok);
        if (answer(s, &b) && mys_movable(s))
            mys_move_begin(s);      /* the transaction is over: to the new writer */
        return;
    } else {
        px_session_writer_moved_text(s, text, sizeof text, true);
        my_err_build(&b, seq, ER_TXN_LOST, text);
        px_session_count_error(s, PX_ERR_TXN_LOST);
    }
    answer(s, &b);
}

/* KILL [QUERY|CONNECTION] <ferry id>: the backend's thread id instead, or
 * ferry's own error. True: go on with the packet (maybe replaced). */
static bool translate_kill(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    uint8_t seq = (uint8_t)(lp->last_seq + 1);
    if (lp->len > SMALL_PACKET || d->pkt_start < 0 || d->pay_off < 0)
        return true;    /* long ones were looked at in payload_start */
    struct ferry_slice sql;
    if (my_query_text(w->buf + d->pay_off, lp->len, m->st.caps, &sql) < 0)
        return true;    /* the server judges it */
    uint64_t id;
    enum my_kill_kind kind = my_kill_parse(sql.p, sql.len, &id);
    if (kind == MY_KILL_NONE)
        return true;
    char text[160];
    if (kind == MY_KILL_UNPARSED) {
        cut(w, (size_t)d->pkt_start, end, NULL, 0);
        answer_err(s, seq, ER_NOT_SUPPORTED,
                   "through ferry, KILL takes the form KILL [QUERY|CONNECTION] <connection id>");
        return false;
    }
    struct sockaddr_storage addr;
    uint32_t backend_id;
    if (!id_lookup(id, &addr, &backend_id) || !same_server(&addr, &s->server_addr)) {
        cut(w, (size_t)d->pkt_start, end, NULL, 0);
        snprintf(text, sizeof text, "Unknown thread id: %llu", (unsigned long long)id);
        answer_err(s, seq, ER_NO_SUCH_THREAD, text);
        return false;
    }
    struct ferry_wbuf rep;
    ferry_wbuf_init(&rep, 0);
    size_t start = my_packet_begin(&rep, lp->first_seq);
    ferry_wbuf_u8(&rep, MY_COM_QUERY);
    if (m->st.caps & MY_CLIENT_QUERY_ATTRIBUTES) {
        my_put_lenenc(&rep, 0);     /* no attributes */
        my_put_lenenc(&rep, 1);     /* one parameter set */
    }
    snprintf(text, sizeof text, "KILL %s %u", kind == MY_KILL_QUERY ? "QUERY" : "CONNECTION",
             backend_id);
    ferry_wbuf_put(&rep, text, strlen(text));
    my_packet_end(&rep, start);
    if (rep.failed) {
        ferry_wbuf_free(&rep);
        fail_with(s, ER_MALFORMED, seq, "out of memory");
        return false;
    }
    cut(w, (size_t)d->pkt_start, end, rep.data, rep.len);
    ferry_wbuf_free(&rep);
    ferry_log(FERRY_LOG_INFO, "kill.translated", "listener=%s session=%llu kind=%s id=%llu "
              "backend_id=%u", s->pl->name, (unsigned long long)s->id,
              kind == MY_KILL_QUERY ? "query" : "connection", (unsigned long long)id, backend_id);
    return true;
}

/* COM_PROCESS_KILL <ferry id>: translated in place, or ferry's error. */
static bool translate_process_kill(struct walk *w, struct my_dir *d, struct my_logical *lp,
                                   size_t end)
{
    struct px_session *s = w->s;
    uint8_t seq = (uint8_t)(lp->last_seq + 1);
    uint32_t id;
    if (my_id_at_1_get(lp->payload.p, lp->payload.len, &id) < 0)
        return true;    /* the tracker rejects it */
    if (lp->len > SMALL_PACKET || d->pkt_start < 0) {
        fail_with(s, ER_MALFORMED, seq, "malformed COM_PROCESS_KILL");
        return false;
    }
    struct sockaddr_storage addr;
    uint32_t backend_id;
    if (!id_lookup(id, &addr, &backend_id) || !same_server(&addr, &s->server_addr)) {
        cut(w, (size_t)d->pkt_start, end, NULL, 0);
        char text[64];
        snprintf(text, sizeof text, "Unknown thread id: %u", id);
        answer_err(s, seq, ER_NO_SUCH_THREAD, text);
        return false;
    }
    my_id_at_1_set(w->buf + d->pay_off, 5, backend_id);
    return true;
}

/* The tracker refused a command (unsupported, or past a limit): ferry
 * answers it and the server never sees it; if part of it has gone
 * already, the session ends. */
static void refuse(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end)
{
    struct px_session *s = w->s;
    uint8_t seq = (uint8_t)(lp->last_seq + 1);
    uint8_t cmd = lp->payload.len ? lp->payload.p[0] : 0;
    const struct my_command *c = my_command_lookup(cmd);
    char text[160];
    uint16_t code;
    const char *state;
    if (c->reply == MY_REPLY_UNSUPPORTED) {
        snprintf(text, sizeof text, "command 0x%02x is not supported through ferry", cmd);
        code = 1047, state = "08S01";
    } else if (cmd == MY_COM_STMT_PREPARE) {
        snprintf(text, sizeof text, "prepared statement limit reached (count or SQL size)");
        code = 1461, state = "42000";
    } else {
        snprintf(text, sizeof text, "database name too long");
        code = 1102, state = "42000";
    }
    if (d->pkt_start < 0) {
        fail_with(s, code, state, seq, text);
        return;
    }
    cut(w, (size_t)d->pkt_start, end, NULL, 0);
    answer_err(s, seq, code, state, text);
}

/* ---- what a move replays (terminated mode) ----
 * SET and USE statements change the session for good (a SET is not undone
 * by ROLLBACK), and ferry cannot rely on CLIENT_SESSION_TRACK (PyMySQL and
 * others do not ask for it): it keeps the text of each one that succeeded,
 * in order, and a move runs them again on the new writer. COM_INIT_DB is
 * kept as the USE it amounts to; COM_RESET_CONNECTION forgets them all.
 * A statement too long to be seen whole, or one carrying more statements
 * after a ';', makes the session unmovable (closed with 1053 on a move). */

enum { REPLAY_MAX = 65536 };    /* bytes of replayed statements per session */

static bool starts_with_word(const uint8_t *p, size_t n, const char *word)
{
    size_t i = 0, k = strlen(word);
    while (i < n && isspace(p[i]))
        i++;
    return n - i > k && strncasecmp((const char *)p + i, word, k) == 0 && isspace(p[i + k]);
}

static bool more_statements(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == ';') {
            while (++i < n)
                if (!isspace(p[i]))
                    return true;
        }
    return false;
}

static void note_replayable(struct walk *w, struct my_dir *d, struct my_logical *lp)
{
    struct px_my_session *m = mys(w->s);
    struct ferry_slice sql;
    ferry_wbuf_reset(&m->pending_sql);
    bool whole = lp->len <= SMALL_PACKET && d->pay_off >= 0;
    const uint8_t *text = whole ? w->buf + d->pay_off : lp->payload.p;
    size_t len = whole ? lp->len : lp->payload.len;
    if (my_query_text(text, len, m->st.caps, &sql) < 0 ||
        (!starts_with_word(sql.p, sql.len, "SET") && !starts_with_word(sql.p, sql.len, "USE")))
        return;
    if (!whole || more_statements(sql.p, sql.len)) {
        m->unmovable = true;
        return;
    }
    ferry_wbuf_put(&m->pending_sql, sql.p, sql.len);
}

static void keep_replayable(struct px_my_session *m, const void *sql, size_t len)
{
    if (m->replay.len + 4 + len > REPLAY_MAX) {
        m->unmovable = true;
        return;
    }
    ferry_wbuf_u32le(&m->replay, (uint32_t)len);
    ferry_wbuf_put(&m->replay, sql, len);
    if (m->replay.failed)
        m->unmovable = true;
}

/* A command finished: keep what it changed for a move. */
static void replayable_done(struct px_my_session *m, uint8_t cmd, bool ok)
{
    if (!m->user)
        return;
    if (ok && cmd == MY_COM_QUERY && m->pending_sql.len)
        keep_replayable(m, m->pending_sql.data, m->pending_sql.len);
    if (ok && cmd == MY_COM_INIT_DB && m->st.schema) {
        struct ferry_wbuf use;
        ferry_wbuf_init(&use, 0);
        ferry_wbuf_put(&use, "USE `", 5);
        for (const char *c = m->st.schema; *c; c++) {
            if (*c == '`')
                ferry_wbuf_u8(&use, '`');
            ferry_wbuf_u8(&use, (uint8_t)*c);
        }
        ferry_wbuf_u8(&use, '`');
        if (use.failed)
            m->unmovable = true;
        else
            keep_replayable(m, use.data, use.len);
        ferry_wbuf_free(&use);
    }
    if (ok && cmd == MY_COM_RESET_CONNECTION)
        ferry_wbuf_reset(&m->replay);
    ferry_wbuf_reset(&m->pending_sql);
}

static void command_packet(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    if (m->fenced) {
        fenced_packet(w, lp);
        return;
    }
    bool command = m->st.phase == MY_PH_IDLE;
    uint8_t cmd = lp->payload.len ? lp->payload.p[0] : 0;
    if (command && cmd == MY_COM_QUERY && !translate_kill(w, d, lp, end))
        return;
    if (command && cmd == MY_COM_PROCESS_KILL && !translate_process_kill(w, d, lp, end))
        return;
    if (command && cmd == MY_COM_CHANGE_USER && m->user) {
        /* its auth response answers ferry's scramble: ferry checks it */
        if (d->pkt_start < 0 || d->pay_off < 0 || lp->fragments != 1) {
            fail_with(s, ER_MALFORMED, (uint8_t)(lp->last_seq + 1), "COM_CHANGE_USER too long");
            return;
        }
        cut(w, (size_t)d->pkt_start, end, NULL, 0);
        mys_change_user(s, w->buf + d->pay_off, lp->len);
        return;
    }
    if (d->id_fixed && d->cap.len >= 5)
        my_id_at_1_set(d->cap.data, 5, d->orig_id);
    int rc = my_state_client_packet(&m->st, lp);
    if (rc == MY_STATE_REFUSE) {
        refuse(w, d, lp, end);
        return;
    }
    if (rc < 0) {
        uint8_t seq = command ? 1 : (uint8_t)(lp->last_seq + 1);
        if (lp->first_seq != (command ? 0 : m->st.next_seq))
            fail_with(s, ER_OUT_OF_ORDER, seq, "packet out of order from the client");
        else
            fail_with(s, ER_MALFORMED, seq, "malformed command from the client");
        return;
    }
    if (command && cmd == MY_COM_QUERY && m->user)
        note_replayable(w, d, lp);
    if (command && cmd == MY_COM_CHANGE_USER) {
        struct my_change_user cu;
        if (my_change_user_parse(lp->payload.p, lp->payload.len, m->st.caps, &cu) == 0)
            snprintf(m->pending_user, sizeof m->pending_user, "%.*s",
                     (int)min_size(cu.user.len, sizeof m->pending_user - 1),
                     (const char *)cu.user.p);
    }
}

static void client_packet(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    switch (m->phase) {
    case MS_RESPONSE:
        handshake_response(w, d, lp);
        return;
    case MS_AUTH:
        if (lp->first_seq != m->hs_next) {
            fail_with(s, ER_OUT_OF_ORDER, err_seq(m), "authentication packet out of order");
            return;
        }
        m->hs_next = (uint8_t)(lp->last_seq + 1);
        m->client_turn = false;
        return;
    case MS_COMMAND:
        command_packet(w, d, lp, end);
        return;
    default:
        fail_with(s, ER_HANDSHAKE, 0, "the client spoke before the server");
        return;
    }
}

/* ---- server packets ---- */

/* The server answered the client's login with ERR (passthrough): counted
 * by its SQLSTATE, 28000 for a refused password (session.h). */
static void login_refused(struct px_session *s, const uint8_t *p, size_t n)
{
    struct my_err e;
    if (s->lcfg->auth_terminated || my_err_parse(p, n, &e) != 0)
        return;     /* terminated: ferry's own login to the server (session_mysql_login.c) */
    char code[8];
    snprintf(code, sizeof code, "%u", e.code);
    /* a greeting's ERR has no SQLSTATE: 1045 ER_ACCESS_DENIED_ERROR and 1698
     * ER_ACCESS_DENIED_NO_PASSWORD_ERROR are 28000 */
    const char *state = e.has_sqlstate ? e.sqlstate : e.code == 1045 || e.code == 1698 ? "28000" : "";
    px_session_login_refused(s, code, state, (const char *)e.message.p, e.message.len);
}

/* The greeting: ferry's connection id and capabilities, in place. */
static void greeting(struct walk *w, struct my_dir *d, struct my_logical *lp)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    uint8_t *p = w->buf + d->pay_off;
    size_t n = lp->len;
    m->greeted = true;
    if (n > 0 && p[0] == MY_ERR) {      /* e.g. too many connections, host blocked */
        login_refused(s, p, n);
        m->phase = MS_PLAIN;
        m->hs_next = (uint8_t)(lp->last_seq + 1);
        return;
    }
    m->greeted = false;     /* errors below go out as errors.c's (sequence 0) */
    struct my_handshake hs;
    const uint32_t need = MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION |
                          MY_CLIENT_PLUGIN_AUTH;
    if (lp->first_seq != 0 || my_handshake_parse(p, n, &hs) < 0 || (hs.caps & need) != need ||
        n < 2 + hs.server_version.len + 31) {
        px_session_fail(s, PX_ERR_UNSUPPORTED,
                        "the server's greeting is not a MySQL 4.1+ handshake ferry can relay");
        return;
    }
    m->ferry_id = mys_id_register(&s->server_addr, hs.conn_id);
    if (!m->ferry_id) {
        px_session_fail(s, PX_ERR_BACKEND_DOWN, "out of memory");
        return;
    }
    m->backend_id = hs.conn_id;
    m->offered = my_caps_offer(hs.caps, false);
    uint8_t *a = p + 2 + hs.server_version.len;   /* the connection id */
    for (int i = 0; i < 4; i++)
        a[i] = (uint8_t)(m->ferry_id >> (8 * i));
    a[13] = (uint8_t)m->offered;
    a[14] = (uint8_t)(m->offered >> 8);
    a[18] = (uint8_t)(m->offered >> 16);
    a[19] = (uint8_t)(m->offered >> 24);
    memset(a + 27, 0, 4);   /* MariaDB's extended capabilities */
    m->greeted = true;
    m->hs_next = 1;
    m->phase = MS_RESPONSE;
}

static void auth_packet(struct walk *w, struct my_logical *lp)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    if (lp->first_seq != m->hs_next) {
        fail_with(s, CR_MALFORMED, err_seq(m), "the server's authentication is out of order");
        return;
    }
    m->hs_next = (uint8_t)(lp->last_seq + 1);
    uint8_t head = lp->payload.len ? lp->payload.p[0] : 0xFD;
    if (head == MY_OK) {
        struct my_ok ok;
        if (my_ok_parse(lp->payload.p, lp->payload.len, m->st.caps, &ok) == 0)
            my_state_apply_status(&m->st, ok.status);
        m->phase = MS_COMMAND;
        px_session_logged_in(s);
        ferry_log(FERRY_LOG_DEBUG, "session.authenticated", "listener=%s session=%llu "
                  "connection_id=%u backend_id=%u", s->pl->name, (unsigned long long)s->id,
                  m->ferry_id, m->backend_id);
    } else if (head == MY_ERR) {
        login_refused(s, lp->payload.p, lp->payload.len);
        m->phase = MS_PLAIN;    /* the server closes after it */
    } else {
        m->client_turn = true;
    }
}

static void command_reply(struct walk *w, struct my_dir *d, struct my_logical *lp)
{
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    const uint8_t *p = lp->payload.p;
    if (lp->payload.len && p[0] == MY_ERR) {
        struct my_err e;
        if (my_err_parse(p, lp->payload.len, &e) == 0 &&
            (e.code == ER_OPTION_PREVENTS_STATEMENT || e.code == ER_READ_ONLY_MODE ||
             e.code == ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION)) {
            ferry_log(FERRY_LOG_INFO, "session.read_only_error", "listener=%s session=%llu "
                      "code=%u", s->pl->name, (unsigned long long)s->id, e.code);
            px_session_probe_now(s);
        }
    }
    enum my_phase before = m->st.phase;
    bool was_in_trans = m->st.in_trans;
    uint8_t cmd = m->st.cmd;
    bool ok_head = lp->payload.len && p[0] == MY_OK;
    int rc = my_state_server_packet(&m->st, lp);
    if (rc < 0) {
        ferry_log(FERRY_LOG_WARN, "session.server_protocol", "listener=%s session=%llu "
                  "phase=%d", s->pl->name, (unsigned long long)s->id, (int)before);
        fail_with(s, CR_MALFORMED, lp->first_seq, "ferry cannot follow the server's response");
        return;
    }
    if ((rc & MY_STATE_PREPARED) && d->pay_off >= 0 && lp->len >= 5 && lp->len <= PREFIX)
        my_id_at_1_set(w->buf + d->pay_off, 5, m->st.prepared_id);
    if (rc & MY_STATE_DONE) {
        if (before != MY_PH_IDLE && before != MY_PH_CLOSED)
            PX_STAT_ADD(px_session_stats(s)->queries, 1);
        if (was_in_trans && !m->st.in_trans)
            PX_STAT_ADD(px_session_stats(s)->transactions, 1);
        replayable_done(m, cmd, ok_head);
        if (cmd == MY_COM_CHANGE_USER && before == MY_PH_AUTH && ok_head) {
            snprintf(s->user, sizeof s->user, "%s", m->pending_user);
            snprintf(s->database, sizeof s->database, "%s", m->st.schema ? m->st.schema : "");
        }
    }
}

static void server_packet(struct walk *w, struct my_dir *d, struct my_logical *lp, size_t end)
{
    (void)end;
    struct px_session *s = w->s;
    struct px_my_session *m = mys(s);
    switch (m->phase) {
    case MS_GREETING:
        greeting(w, d, lp);
        return;
    case MS_RESPONSE:   /* the server spoke out of turn: only an ERR before it closes */
        if (lp->payload.len && lp->payload.p[0] == MY_ERR) {
            m->phase = MS_PLAIN;
            m->hs_next = (uint8_t)(lp->last_seq + 1);
            return;
        }
        fail_with(s, CR_MALFORMED, err_seq(m), "the server spoke out of turn");
        return;
    case MS_AUTH:
        auth_packet(w, lp);
        return;
    case MS_COMMAND:
        command_reply(w, d, lp);
        return;
    default:
        return;
    }
}

/* ---- the scan hook ---- */

/* The old writer is out of this session's reach from now on. */
static void cut_server(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    px_conn_stop_reading(&s->server);
    if (!m->server_cut && s->server.open && !s->server.shut) {
        m->server_cut = true;
        px_session_shutdown_server(s);  /* the old writer rolls back when its client goes */
    }
}

static bool mid_packet(const struct my_dir *d)
{
    return d->in_logical || d->in_packet || d->carry.len > 0;
}

/* First client bytes after the writer moved: cut from the old writer. A
 * command in flight that still needs client data (LOCAL INFILE, auth) is
 * lost with its transaction. False: the session ended. */
static bool fence(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    m->fenced = true;
    m->txn_lost = m->st.in_trans;
    cut_server(s);
    if (m->st.phase != MY_PH_IDLE || mid_packet(&m->c2s)) {
        char text[256];
        px_session_writer_moved_text(s, text, sizeof text, true);
        px_session_fail(s, PX_ERR_TXN_LOST, text);
        return false;
    }
    return true;
}

static enum px_scan my_scan(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n)
{
    struct px_my_session *m = mys(s);
    bool from_client = src == &s->client;
    if (stopped(s))
        return PX_SCAN_DROP;
    if (m->phase == MS_PLAIN)
        return PX_SCAN_RELAY;
    if (from_client && m->moving && n > 0)
        return PX_SCAN_PARK;    /* sent on once the new writer is ready */
    if (from_client && m->changing_user && n > 0)
        return mys_change_user_packet(s, data, n);
    if (from_client && m->phase == MS_COMMAND) {
        if (s->stale && !m->fenced && !mid_packet(&m->c2s) && mys_movable(s)) {
            /* what was in flight at the switch has finished: move first */
            mys_move_begin(s);
            return PX_SCAN_PARK;
        }
        if (s->stale && !m->fenced) {
            if (!fence(s))
                return PX_SCAN_DROP;
        } else if (!s->stale && !m->fenced && my_state_at_safe_point(&m->st) &&
                   !mid_packet(&m->c2s) && px_session_paused(s)) {
            /* Paused: the next command of an idle session waits for resume
             * (a transaction already open runs to its end). */
            return PX_SCAN_PARK;
        }
    }
    struct my_dir *d = from_client ? &m->c2s : &m->s2c;
    struct walk w = {.s = s, .from_client = from_client, .buf = data, .n = n,
                     .carry_from = SIZE_MAX};
    struct ferry_wbuf joined = {0};
    if (d->carry.len) {
        ferry_wbuf_init(&joined, 0);
        ferry_wbuf_put(&joined, d->carry.data, d->carry.len);
        ferry_wbuf_put(&joined, data, n);
        ferry_wbuf_reset(&d->carry);
        if (joined.failed) {
            ferry_wbuf_free(&joined);
            px_session_close(s, FERRY_LOG_ERROR, "out of memory for buffers");
            return PX_SCAN_DROP;
        }
        w.buf = joined.data;
        w.n = joined.len;
        w.owned = true;
        ferry_wbuf_init(&w.out, 0);
    }
    walk(&w, d);
    enum px_scan verdict = PX_SCAN_DROP;
    if (stopped(s) || (from_client && (m->fenced || m->changing_user))) {
        ferry_wbuf_free(&w.out);    /* nothing more goes to the old writer */
        if (from_client && m->fenced && w.carry_from != SIZE_MAX)
            ferry_wbuf_put(&d->carry, w.buf + w.carry_from, w.n - w.carry_from);
        ferry_wbuf_free(&joined);
        return PX_SCAN_DROP;
    }
    size_t end = w.n;
    if (w.carry_from != SIZE_MAX) {
        end = w.carry_from;
        ferry_wbuf_put(&d->carry, w.buf + w.carry_from, w.n - w.carry_from);
        if (!w.owned) {
            w.owned = true;
            ferry_wbuf_init(&w.out, 0);
        }
    }
    if (!w.owned) {
        ferry_wbuf_free(&joined);
        return PX_SCAN_RELAY;
    }
    ferry_wbuf_put(&w.out, w.buf + w.emit_from, end - w.emit_from);
    ferry_wbuf_free(&joined);
    if (w.out.failed || d->carry.failed) {
        ferry_wbuf_free(&w.out);
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for buffers");
        return verdict;
    }
    if (w.out.len == 0) {
        ferry_wbuf_free(&w.out);
        return verdict;
    }
    size_t len = w.out.len;
    if (from_client) {
        PX_STAT_ADD(px_session_stats(s)->bytes_from_clients, len);
        s->bytes_from_client += len;
    } else {
        PX_STAT_ADD(px_session_stats(s)->bytes_from_servers, len);
        s->bytes_from_server += len;
    }
    if (px_session_write(s, src->peer, &w.out, false) != 0)
        px_session_close(s, FERRY_LOG_INFO, from_client ? "server write failed"
                                                        : "client write failed");
    return verdict;
}

/* ---- the other hooks ---- */

static void dir_init(struct my_dir *d, size_t max)
{
    my_reasm_init(&d->reasm, max);
    ferry_wbuf_init(&d->cap, 0);
    ferry_wbuf_init(&d->carry, 0);
    d->pkt_start = d->pay_off = -1;
}

/* The server speaks first: route at once. */
static void my_begin(struct px_session *s)
{
    struct px_my_session *m = calloc(1, sizeof *m);
    if (!m) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for a session");
        return;
    }
    s->u.my = m;
    size_t max = s->lcfg->max_message_size;
    dir_init(&m->c2s, max);
    dir_init(&m->s2c, max);
    ferry_wbuf_init(&m->hello, HS_MAX);
    ferry_wbuf_init(&m->replay, REPLAY_MAX);
    ferry_wbuf_init(&m->pending_sql, SMALL_PACKET);
    if (s->lcfg->auth_terminated) {
        if (s->counted)
            mys_login_begin(s);
        return;
    }
    if (s->counted)
        px_session_route(s);
}

static bool my_connected(struct px_session *s)
{
    return s->lcfg->auth_terminated ? mys_login_connected(s) : true;
}

static bool my_timer(struct px_session *s)
{
    return mys(s)->login ? mys_login_timer(s) : false;
}

/* A transaction cannot outlive its connection; only a command in flight
 * has an outcome ferry cannot know (it may have committed). */
static bool my_server_lost(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    if (m->phase != MS_COMMAND && !s->client.eof)
        return false;
    if (!s->client.eof && !m->fenced && !mid_packet(&m->c2s) && mys_movable(s)) {
        /* nothing was lost: if the writer moved, log into the next one;
         * if the server ended this session (KILL, wait_timeout: MariaDB
         * closes without a word), the client sees it end, as directly */
        if (s->stale)
            mys_move_begin(s);
        else
            px_session_await_verdict(s, "closed without a message");
        return true;
    }
    if (s->client.eof && mid_packet(&m->c2s)) {
        /* the client sent part of a packet and hung up its side */
        px_conn_stop_reading(&s->server);
        fail_with(s, ER_MALFORMED, err_seq(m), "truncated packet from the client");
        return true;
    }
    if (m->phase == MS_COMMAND && !s->client.eof && !m->fenced && m->st.in_trans &&
        m->st.phase == MY_PH_IDLE && !mid_packet(&m->c2s)) {
        /* between statements of a transaction: it is lost with the server.
         * As after a switchover, ferry answers 1213 until ROLLBACK; then
         * the session moves (terminated) or gets 1053. */
        ferry_log(FERRY_LOG_INFO, "session.writer_lost", "listener=%s session=%llu cluster=%s "
                  "state=in_transaction", s->pl->name, (unsigned long long)s->id, s->cluster);
        px_session_probe_now(s);
        m->fenced = m->txn_lost = m->server_cut = true;
        px_conn_stop_reading(&s->server);
        return true;
    }
    if (m->phase != MS_COMMAND || s->client.eof || m->fenced || m->st.phase == MY_PH_IDLE ||
        m->st.phase == MY_PH_CLOSED)
        return false;   /* the client sees the connection end, as with the server itself */
    px_conn_stop_reading(&s->server);
    /* MySQL's own signal for "outcome unknown" is the client library's
     * 2013 (CR_SERVER_LOST) when the connection ends mid-command: every
     * connector knows it, while an ERR with a client-side number would be
     * taken for a malformed packet by Connector/C. So ferry closes. */
    px_session_count_error(s, PX_ERR_OUTCOME_UNKNOWN);
    px_session_close(s, FERRY_LOG_INFO, "connection to the writer was lost while a statement "
                     "was in flight; its outcome is unknown (client sees 2013)");
    return true;
}

/* Idle sessions are cut from the old writer now and told at their next
 * command; busy ones at their next command (see fence). */
static void my_writer_moved(struct px_session *s, bool cut)
{
    struct px_my_session *m = mys(s);
    if (m->phase == MS_PLAIN || m->changing_user)
        return;     /* a COM_CHANGE_USER logs in afresh; s->stale moves it after */
    bool idle = m->phase == MS_COMMAND && my_state_at_safe_point(&m->st) && !mid_packet(&m->c2s);
    ferry_log(FERRY_LOG_INFO, "session.writer_moved", "listener=%s session=%llu from=%s state=%s",
              s->pl->name, (unsigned long long)s->id, s->cluster,
              m->phase != MS_COMMAND ? "handshake" : idle ? "idle" : "busy");
    if (m->phase != MS_COMMAND) {
        char text[256];
        px_session_writer_moved_text(s, text, sizeof text, false);
        px_conn_stop_reading(&s->server);
        px_session_fail(s, PX_ERR_WRITER_MOVED, text);
        return;
    }
    if (idle && mys_movable(s)) {
        mys_move_begin(s);
        return;
    }
    if (idle) {
        m->fenced = true;
        m->txn_lost = false;
        cut_server(s);
    } else if (cut && m->st.phase != MY_PH_IDLE && m->st.phase != MY_PH_CLOSED) {
        /* the old writer would acknowledge a write the new one never sees;
         * a closed connection is MySQL's "outcome unknown" (client's 2013) */
        px_conn_stop_reading(&s->server);
        px_session_count_error(s, PX_ERR_OUTCOME_UNKNOWN);
        px_session_close(s, FERRY_LOG_INFO, "the writer moved to a promoted cluster while a "
                         "command was in flight on the old one, which still accepted writes; "
                         "ferry cut it off: its outcome is unknown (client sees 2013)");
    }
}

/* Command phase, no command in flight, no transaction open (a fenced
 * session's lost transaction counts as open until its ROLLBACK). */
static bool my_idle(const struct px_session *s)
{
    const struct px_my_session *m = mys(s);
    return m && m->phase == MS_COMMAND && !m->changing_user && !mid_packet(&m->c2s) &&
           (m->fenced ? !m->txn_lost : my_state_at_safe_point(&m->st));
}

static void my_describe(const struct px_session *s, json_t *entry)
{
    const struct px_my_session *m = mys(s);
    if (!m)
        return;
    if (s->user[0])
        json_object_set_new(entry, "user", json_string(s->user));
    const char *db = m->st_init ? m->st.schema : NULL;
    json_object_set_new(entry, "database", db ? json_string(db) : json_null());
    json_object_set_new(entry, "transaction",
                        m->phase != MS_COMMAND ? json_null()
                        : (m->fenced ? m->txn_lost : m->st.in_trans) ? json_string("in_transaction")
                                                                     : json_string("idle"));
    if (m->ferry_id)
        json_object_set_new(entry, "connection_id", json_integer(m->ferry_id));
}

static void dir_free(struct my_dir *d)
{
    ferry_wbuf_free(&d->cap);
    ferry_wbuf_free(&d->carry);
}

static void my_free(struct px_session *s)
{
    struct px_my_session *m = mys(s);
    if (!m)
        return;
    if (m->ferry_id)
        id_unregister(m->ferry_id);
    if (m->st_init)
        my_state_free(&m->st);
    mys_login_free(m);
    ferry_wbuf_free(&m->hello);
    ferry_wbuf_free(&m->replay);
    ferry_wbuf_free(&m->pending_sql);
    dir_free(&m->c2s);
    dir_free(&m->s2c);
    free(m);
    s->u.my = NULL;
}

const struct px_proto px_proto_mysql = {
    .begin = my_begin,
    .defer_error = my_defer_error,
    .connected = my_connected,
    .scan = my_scan,
    .server_lost = my_server_lost,
    .timer = my_timer,
    .writer_moved = my_writer_moved,
    .idle = my_idle,
    .describe = my_describe,
    .free = my_free,
};
