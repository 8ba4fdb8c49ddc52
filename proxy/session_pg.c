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
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pg/codec.h"
#include "session.h"

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
    if (uv_tcp_connect(&c->connect, &c->tcp, (struct sockaddr *)&addr, on_cancel_connected) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_cancel_closed);
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

/* Parses what the client has sent so far; acts on each complete packet. */
static void startup_advance(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    for (;;) {
        struct pg_startup st;
        const uint8_t *at = p->startup.data + p->startup_off;
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
        copy_slice(s->user, sizeof s->user, st.user);
        copy_slice(s->database, sizeof s->database, st.database.p ? st.database : st.user);
        px_session_route(s);
        return;
    }
}

static void on_startup_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *c = stream->data;
    struct px_session *s = c->owner;
    if (nread > 0)
        ferry_wbuf_put(&pgs(s)->startup, buf->base, (size_t)nread);
    px_session_free_buf(s, buf);
    if (nread == 0)
        return;
    if (nread < 0) {
        px_session_close(s, FERRY_LOG_DEBUG, "client left during startup");
        return;
    }
    startup_advance(s);
}

static void pg_begin(struct px_session *s)
{
    /* room for a StartupMessage after an SSLRequest and a GSSENCRequest */
    ferry_wbuf_init(&pgs(s)->startup, PG_STARTUP_MAX_BODY + 4 + 16);
    if (uv_read_start((uv_stream_t *)&s->client.tcp, px_session_alloc, on_startup_read) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "read start failed");
        return;
    }
    s->client.reading = true;
    px_session_arm_timer(s, 30000);  /* PostgreSQL allows 60 s; clients need ms */
}

/* libpq shows an error only after its startup packet: wait for it (the
 * startup reader sends this error when the packet is in). */
static bool pg_defer_error(struct px_session *s, enum px_err kind, const char *text)
{
    struct px_pg_session *p = pgs(s);
    if (p->startup_done || (p->fail_text = strdup(text)) == NULL)
        return false;
    p->fail_kind = kind;
    px_session_arm_timer(s, 10000);
    return true;
}

static bool pg_timer(struct px_session *s)
{
    if (pgs(s)->startup_done)
        return false;
    px_session_close(s, FERRY_LOG_INFO, "client sent no startup packet");
    return true;
}

/* ---- the relay's message scanners ---- */

/* SQLSTATE of an ErrorResponse prefix, or "" (fields: type byte, C string). */
static void error_sqlstate(const uint8_t *body, uint32_t n, char out[6])
{
    out[0] = '\0';
    for (uint32_t i = 0; i < n && body[i];) {
        uint8_t field = body[i++];
        const uint8_t *v = body + i;
        const uint8_t *end = memchr(v, 0, n - i);
        if (!end)
            return;
        if (field == 'C' && end - v == 5) {
            memcpy(out, v, 5);
            out[5] = '\0';
            return;
        }
        i = (uint32_t)(end - body) + 1;
    }
}

static void on_server_message(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                              uint32_t len, uint8_t *inplace)
{
    struct px_session *s = ud;
    struct px_pg_session *p = pgs(s);
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
    } else if (type == 'E') {
        char state[6];
        error_sqlstate(body, captured, state);
        /* read_only_sql_transaction: the writer was demoted under us */
        if (strcmp(state, "25006") == 0)
            px_session_probe_now(s);
    }
}

static void on_client_message(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                              uint32_t len, uint8_t *inplace)
{
    (void)body, (void)captured, (void)len, (void)inplace;
    struct px_session *s = ud;
    if (type == 'X')
        pgs(s)->terminating = true;  /* the server closing next is the expected answer */
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
        pg_build_ready(&b, 'E');
    }
    if (px_session_write(s, &s->client, &b, false) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
        return;
    }
    if (rollback) {
        px_session_writer_moved_text(s, text, sizeof text, false);
        px_session_fail(s, PX_ERR_WRITER_MOVED, text);
    }
}

/* Checks a chunk's messages before it is relayed. */
static enum px_scan pg_scan(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n)
{
    struct px_pg_session *p = pgs(s);
    bool from_client = src == &s->client;
    /* Paused: the next transaction of an idle session waits (like
     * PgBouncer's PAUSE); one already open runs to its end. */
    if (from_client && n > 0 && p->txn == 'I' && !p->inflight && !s->stale && px_session_paused())
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
    if (from_client && n > 0)
        p->inflight = true;
    int rc = from_client ? pg_stream_feed(&p->scan_c2s, data, n, on_client_message, s)
                         : pg_stream_feed(&p->scan_s2c, data, n, on_server_message, s);
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
    if (!pgs(s)->end_at_idle)
        return;
    char text[256];
    px_session_writer_moved_text(s, text, sizeof text, false);
    px_conn_stop_reading(&s->server);
    px_session_fail(s, PX_ERR_WRITER_MOVED, text);
}

/* The StartupMessage (and anything the client sent after it) goes first. */
static bool pg_connected(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    ferry_wbuf_put(&out, p->startup.data + p->startup_msg, p->startup.len - p->startup_msg);
    ferry_wbuf_free(&p->startup);
    uint32_t max = s->lcfg->max_message_size;
    pg_stream_init(&p->scan_c2s, max, "X");
    pg_stream_init(&p->scan_s2c, max, "ZKE");
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
    if (!p->startup_done || s->client.eof || p->terminating)
        return false;
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

/* Idle sessions are closed now with an error that pools treat as
 * "reconnect"; ones inside a transaction are closed when the transaction
 * ends or fenced at their next statement. (Moving them without an error
 * needs ferry-terminated authentication.) */
static void pg_writer_moved(struct px_session *s)
{
    struct px_pg_session *p = pgs(s);
    bool idle = p->txn == 'I' && !p->inflight;
    ferry_log(FERRY_LOG_INFO, "session.writer_moved", "listener=%s session=%llu from=%s state=%s",
              s->pl->name, (unsigned long long)s->id, s->cluster, idle ? "idle" : "busy");
    if (idle) {
        char text[256];
        px_session_writer_moved_text(s, text, sizeof text, false);
        px_conn_stop_reading(&s->server);
        px_session_fail(s, PX_ERR_WRITER_MOVED, text);
    }
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
    .describe = pg_describe,
    .free = pg_free,
};
