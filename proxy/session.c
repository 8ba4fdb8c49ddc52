/* A session: one client connection, its backend connection, and the byte
 * relay between them. The relay forwards whole read chunks without copying,
 * stops reading a side whose peer has session_buffer bytes queued and resumes
 * below half of it, and propagates half-closes. Every teardown goes through
 * session_close(), which is idempotent and frees in the last close callback.
 */
#include <arpa/inet.h>
#include <strings.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/discovery.h"
#include "ferry/log.h"
#include "pg/codec.h"
#include "pg/stream.h"
#include "proxy.h"

struct px_chunk {
    uv_write_t req;             /* must outlive the write: embedded here */
    struct px_chunk *next_free; /* pool link */
    struct px_conn *dst;        /* borrowed: the side it is queued on */
    size_t len;
    char data[PX_CHUNK_SIZE];
};

/* One side of a session. */
struct px_conn {
    uv_tcp_t tcp;
    struct px_session *owner;
    struct px_conn *peer;
    uv_shutdown_t shutdown_req;
    size_t queued;              /* bytes written to this side, not yet completed */
    bool open;                  /* tcp initialised: must be closed */
    bool reading;               /* uv_read_start in effect (EALREADY otherwise) */
    bool paused;                /* stopped for backpressure by the peer's queue */
    bool eof;                   /* this side sent EOF: nothing more to read */
    bool shut;                  /* our shutdown of this side completed */
    const char *name;           /* "client" | "server", for logs */
};

struct px_session {
    struct px_worker *owner;
    struct px_listener *pl;                 /* owned ref: counters, name */
    struct ferry_config *cfg;               /* owned ref: keeps lcfg alive */
    const struct ferry_listener_cfg *lcfg;  /* borrowed from cfg */
    struct px_conn client;
    struct px_conn server;
    uv_timer_t timer;                       /* connect timeout */
    uv_connect_t connect_req;
    uv_getaddrinfo_t gai_req;
    bool gai_pending;
    bool connected;
    bool closing;
    bool counted;                           /* holds a max_client_connections slot */
    bool held;                              /* waiting for a writer (in owner->held) */
    bool failing;                           /* an error message is on its way to the client */
    enum px_err fail_kind;                  /* PG: error to send once the startup packet is in */
    char *fail_text;                        /* owned; that error's text */
    /* PostgreSQL (protocol-aware relay) */
    bool pg;                                /* listener speaks PostgreSQL */
    bool startup_done;                      /* the StartupMessage has been read */
    struct ferry_wbuf startup;              /* client bytes of the startup phase */
    size_t startup_off;                     /* parsed up to here */
    size_t startup_msg;                     /* the StartupMessage starts here */
    struct pg_stream scan_c2s, scan_s2c;    /* message scanners, one per direction */
    char txn;                               /* last ReadyForQuery status: I, T, E; 0 = none yet */
    bool inflight;                          /* client sent something not yet answered by ReadyForQuery */
    bool terminating;                       /* client sent Terminate */
    bool stale;                             /* the writer moved since this session was routed */
    bool fenced;                            /* stale and cut from the server: ferry answers */
    bool end_at_idle;                       /* stale: close once the server says idle */
    uint64_t topo_gen;                      /* writer generation the session was routed with */
    uint32_t cancel_pid;                    /* the key pair ferry gave the client; 0 = none */
    struct sockaddr_storage server_addr;    /* where the backend connection went */
    int pending_closes;                     /* close callbacks still due */
    uint64_t id;
    char endpoint[FERRY_HOST_MAX + 16];     /* backend address, for logs */
    char cluster[FERRY_NAME_MAX];           /* backend cluster name, for logs */
    char peer[64];                          /* client address "ip:port" */
    char user[FERRY_NAME_MAX];              /* PG: from the StartupMessage ("" if unknown) */
    char database[FERRY_NAME_MAX];
    uint64_t created_ms;
    uint64_t bytes_from_client;
    uint64_t bytes_from_server;
    struct ferry_list link;                 /* in owner->sessions */
    struct ferry_list held_link;            /* in owner->held while held */
};

static uint64_t next_session_id;

static struct px_counters *session_stats(struct px_session *s)
{
    return &s->pl->stats[s->owner->index];
}

/* ---- chunk pool (per worker, never crosses threads) ---- */

enum { POOL_KEEP = 256 };   /* chunks kept for reuse; 8 MiB per worker */

static struct px_chunk *chunk_get(struct px_worker *w)
{
    struct px_chunk *c = w->free_chunks;
    if (c) {
        w->free_chunks = c->next_free;
        w->nfree_chunks--;
        return c;
    }
    c = malloc(sizeof *c);
    if (c)
        PX_STAT_ADD(w->chunks_allocated, 1);
    return c;
}

static void chunk_put(struct px_worker *w, struct px_chunk *c)
{
    if (w->nfree_chunks >= POOL_KEEP) {
        free(c);
        PX_STAT_ADD(w->chunks_allocated, -1);
        return;
    }
    c->next_free = w->free_chunks;
    w->free_chunks = c;
    w->nfree_chunks++;
}

void px_chunk_pool_free(struct px_worker *w)
{
    while (w->free_chunks) {
        struct px_chunk *c = w->free_chunks;
        w->free_chunks = c->next_free;
        free(c);
    }
    w->nfree_chunks = 0;
}

static struct px_chunk *chunk_of(const char *base)
{
    return ferry_container_of(base, struct px_chunk, data);
}

/* ---- teardown ---- */

static void unhold(struct px_session *s)
{
    if (s->held) {
        s->held = false;
        ferry_list_remove(&s->held_link);
        PX_STAT_ADD(session_stats(s)->held, -1);
    }
}

static void session_free(struct px_session *s)
{
    struct px_worker *w = s->owner;
    ferry_list_remove(&s->link);
    unhold(s);
    w->nsessions--;
    if (s->counted) {
        __atomic_sub_fetch(&s->pl->clients, 1, __ATOMIC_RELAXED);
        PX_STAT_ADD(session_stats(s)->active, -1);
    }
    px_listener_unref(s->pl);
    ferry_config_unref(s->cfg);
    free(s->fail_text);
    ferry_wbuf_free(&s->startup);
    if (s->cancel_pid)
        px_cancel_unregister(s->cancel_pid);
    free(s);
    px_worker_session_ended(w);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct px_session *s = h->data;
    if (--s->pending_closes == 0)
        session_free(s);
}

static void close_handle(struct px_session *s, uv_handle_t *h)
{
    if (!uv_is_closing(h)) {
        h->data = s;    /* tcp handles point at their px_conn until now */
        s->pending_closes++;
        uv_close(h, on_handle_closed);
    }
}

/* Idempotent. Pending writes and the connect request complete with
 * UV_ECANCELED before the close callbacks, so the free comes last. */
static void session_close(struct px_session *s, enum ferry_log_level lvl, const char *reason)
{
    if (s->closing)
        return;
    s->closing = true;
    ferry_log(lvl, "session.closed", "listener=%s session=%llu backend=%s reason=\"%s\"",
              s->pl->name, (unsigned long long)s->id, s->endpoint, reason);
    s->pending_closes++;    /* hold the session while we close */
    /* A cancelled or already running lookup still calls on_resolved, which
     * sees closing and releases its hold. */
    if (s->gai_pending)
        uv_cancel((uv_req_t *)&s->gai_req);
    close_handle(s, (uv_handle_t *)&s->timer);
    close_handle(s, (uv_handle_t *)&s->client.tcp);
    if (s->server.open)
        close_handle(s, (uv_handle_t *)&s->server.tcp);
    if (s->gai_pending)
        s->pending_closes++;    /* released by on_resolved */
    if (--s->pending_closes == 0)
        session_free(s);
}

void px_session_close_all(struct px_worker *w, const char *reason)
{
    struct ferry_list *it = w->sessions.next;
    while (it != &w->sessions) {
        struct px_session *s = ferry_container_of(it, struct px_session, link);
        it = it->next;  /* session_close may free s only after callbacks, but be safe */
        session_close(s, FERRY_LOG_INFO, reason);
    }
}

/* ---- relay ---- */

static void on_timer(uv_timer_t *t);
static bool pg_scan(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n);
static void session_fail(struct px_session *s, enum px_err kind, const char *text);
static void on_shutdown(uv_shutdown_t *req, int status);
static void writer_moved_text(struct px_session *s, char *out, size_t len, bool in_txn);

static void conn_start_reading(struct px_conn *c);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct px_conn *c = h->data;
    struct px_chunk *ch = chunk_get(c->owner->owner);
    buf->base = ch ? ch->data : NULL;
    buf->len = ch ? PX_CHUNK_SIZE : 0;
}

static void buffered_add(struct px_worker *w, struct px_conn *dst, ssize_t n)
{
    dst->queued += (size_t)n;
    PX_STAT_ADD(w->buffered_bytes, n);
    if (dst->queued > w->buffered_peak)
        __atomic_store_n(&w->buffered_peak, (uint64_t)dst->queued, __ATOMIC_RELAXED);
}

static void on_written(uv_write_t *req, int status)
{
    struct px_chunk *ch = ferry_container_of(req, struct px_chunk, req);
    struct px_conn *dst = ch->dst;
    struct px_session *s = dst->owner;
    struct px_worker *w = s->owner;
    buffered_add(w, dst, -(ssize_t)ch->len);
    chunk_put(w, ch);
    if (status < 0) {
        if (status != UV_ECANCELED)
            session_close(s, FERRY_LOG_INFO, dst == &s->client ? "client write failed"
                                                                : "server write failed");
        return;
    }
    struct px_conn *src = dst->peer;
    if (src->paused && !s->closing && dst->queued <= s->lcfg->session_buffer / 2) {
        src->paused = false;
        conn_start_reading(src);
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct px_conn *c = req->data;
    struct px_session *s = c->owner;
    if (status == UV_ECANCELED || s->closing)
        return;
    if (status < 0) {
        session_close(s, FERRY_LOG_DEBUG, "shutdown failed");
        return;
    }
    c->shut = true;
    if (s->client.shut && s->server.shut)
        session_close(s, FERRY_LOG_DEBUG, "both sides closed");
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *src = stream->data;
    struct px_conn *dst = src->peer;
    struct px_session *s = src->owner;
    struct px_worker *w = s->owner;

    if (nread <= 0) {
        if (buf->base)
            chunk_put(w, chunk_of(buf->base));
        if (nread == 0)
            return;     /* EAGAIN: not an EOF */
        if (s->pg && src == &s->server && s->startup_done && !s->client.eof && s->connected &&
            !s->terminating) {
            /* The writer went away under this session. If a statement was in
             * flight its outcome is unknown: never pretend it failed or
             * succeeded (a COMMIT may have been applied). */
            uv_read_stop(stream);
            src->reading = false;
            if (s->inflight)
                session_fail(s, PX_ERR_OUTCOME_UNKNOWN,
                             "connection to the writer was lost while a statement was in flight; "
                             "its outcome is unknown");
            else
                session_fail(s, s->txn == 'I' ? PX_ERR_WRITER_MOVED : PX_ERR_TXN_LOST,
                             s->txn == 'I' ? "connection to the writer was lost; reconnect"
                                           : "connection to the writer was lost; the transaction "
                                             "was rolled back; retry it");
            return;
        }
        if (nread == UV_EOF) {
            src->eof = true;
            uv_read_stop(stream);
            src->reading = false;
            if (!s->connected) {
                session_close(s, FERRY_LOG_DEBUG, "client closed before backend connected");
                return;
            }
            /* Half-close: pass the EOF on once everything queued is written. */
            dst->shutdown_req.data = dst;
            if (uv_shutdown(&dst->shutdown_req, (uv_stream_t *)&dst->tcp, on_shutdown) != 0)
                session_close(s, FERRY_LOG_DEBUG, "shutdown failed");
            return;
        }
        if (nread == UV_ENOBUFS) {
            session_close(s, FERRY_LOG_ERROR, "out of memory for buffers");
            return;
        }
        char reason[96];
        snprintf(reason, sizeof reason, "%s read failed: %s", src->name, uv_strerror((int)nread));
        session_close(s, FERRY_LOG_INFO, reason);
        return;
    }

    struct px_chunk *ch = chunk_of(buf->base);
    if (s->pg && !pg_scan(s, src, (uint8_t *)ch->data, (size_t)nread)) {
        chunk_put(w, ch);
        return;
    }
    ch->dst = dst;
    ch->len = (size_t)nread;
    if (src == &s->client) {
        PX_STAT_ADD(session_stats(s)->bytes_from_clients, nread);
        s->bytes_from_client += (uint64_t)nread;
    } else {
        PX_STAT_ADD(session_stats(s)->bytes_from_servers, nread);
        s->bytes_from_server += (uint64_t)nread;
    }
    uv_buf_t out = uv_buf_init(ch->data, (unsigned)nread);
    int rc = uv_write(&ch->req, (uv_stream_t *)&dst->tcp, &out, 1, on_written);
    if (rc != 0) {
        chunk_put(w, ch);
        char reason[96];
        snprintf(reason, sizeof reason, "%s write failed: %s", dst->name, uv_strerror(rc));
        session_close(s, FERRY_LOG_INFO, reason);
        return;
    }
    buffered_add(w, dst, nread);
    if (s->end_at_idle && src == &s->server) {
        /* the transaction finished on the old writer: now close (queued after the chunk) */
        char text[256];
        writer_moved_text(s, text, sizeof text, false);
        uv_read_stop(stream);
        src->reading = false;
        session_fail(s, PX_ERR_WRITER_MOVED, text);
        return;
    }
    /* Backpressure: the peer is slow; stop taking more from this side. */
    if (dst->queued >= s->lcfg->session_buffer) {
        uv_read_stop(stream);
        src->reading = false;
        src->paused = true;
    }
}

static void conn_start_reading(struct px_conn *c)
{
    if (c->reading || c->eof || c->owner->closing)
        return;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc == 0)
        c->reading = true;
    else
        session_close(c->owner, FERRY_LOG_INFO, "read start failed");
}

/* ---- errors ferry sends before any server has spoken ---- */

struct px_owned_write {
    uv_write_t req;
    struct ferry_wbuf buf;
    struct px_session *s;
    bool close_after;           /* an error message: close the session once written */
};

static void on_owned_written(uv_write_t *req, int status)
{
    struct px_owned_write *e = ferry_container_of(req, struct px_owned_write, req);
    if (e->close_after)
        session_close(e->s, FERRY_LOG_DEBUG, "error sent to client");   /* sent or not */
    else if (status < 0 && status != UV_ECANCELED)
        session_close(e->s, FERRY_LOG_INFO, "server write failed");
    ferry_wbuf_free(&e->buf);
    free(e);
}

/* Writes bytes that ferry made (taking buf's memory) to conn. */
static int write_owned(struct px_session *s, struct px_conn *conn, struct ferry_wbuf *buf,
                       bool close_after)
{
    struct px_owned_write *e = calloc(1, sizeof *e);
    if (!e || buf->failed) {
        free(e);
        ferry_wbuf_free(buf);
        return UV_ENOMEM;
    }
    e->buf = *buf;
    e->s = s;
    e->close_after = close_after;
    *buf = (struct ferry_wbuf){0};
    uv_buf_t b = uv_buf_init((char *)e->buf.data, (unsigned)e->buf.len);
    int rc = uv_write(&e->req, (uv_stream_t *)&conn->tcp, &b, 1, on_owned_written);
    if (rc != 0) {
        ferry_wbuf_free(&e->buf);
        free(e);
    }
    return rc;
}

/* Sends one error message to the client, then closes the session. */
static void send_error(struct px_session *s, enum px_err kind, const char *text)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 4096);
    px_error_message(s->lcfg->protocol, kind, text, &b);
    if (write_owned(s, &s->client, &b, true) != 0)
        session_close(s, FERRY_LOG_INFO, text);
}

static void session_fail(struct px_session *s, enum px_err kind, const char *text)
{
    if (s->closing || s->failing)
        return;
    s->failing = true;
    ferry_log(FERRY_LOG_INFO, "session.failed", "listener=%s session=%llu reason=\"%s\"",
              s->pl->name, (unsigned long long)s->id, text);
    uv_timer_stop(&s->timer);
    /* libpq shows an error only after its startup packet: wait for it
     * (the startup reader sends this error when the packet is in) */
    if (s->pg && !s->startup_done && (s->fail_text = strdup(text)) != NULL) {
        s->fail_kind = kind;
        uv_timer_start(&s->timer, on_timer, 10000, 0);
        return;
    }
    send_error(s, kind, text);
}

/* ---- PostgreSQL: the startup phase ----
 * A PostgreSQL client speaks first. ferry reads its first packets itself:
 * SSLRequest and GSSENCRequest get 'N' (no TLS yet), a CancelRequest is
 * mapped to the real backend key and forwarded, and the StartupMessage is
 * kept to be sent to the backend once the session is routed. */

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

static void begin_routing(struct px_session *s);

/* For display only: a NUL-terminated, truncated copy. */
static void copy_slice(char *out, size_t len, struct ferry_slice v)
{
    size_t n = v.p ? (v.len < len - 1 ? v.len : len - 1) : 0;
    if (n)
        memcpy(out, v.p, n);
    out[n] = '\0';
}

static void startup_stop(struct px_session *s)
{
    uv_read_stop((uv_stream_t *)&s->client.tcp);
    s->client.reading = false;
}

/* Parses what the client has sent so far; acts on each complete packet. */
static void startup_advance(struct px_session *s)
{
    for (;;) {
        struct pg_startup st;
        const uint8_t *p = s->startup.data + s->startup_off;
        int rc = pg_decode_startup(p, s->startup.len - s->startup_off, &st);
        if (rc == FERRY_NEED_MORE && !s->startup.failed)
            return;
        if (rc < 0) {
            startup_stop(s);
            s->failing = false;
            s->startup_done = true;    /* the error goes out now */
            session_fail(s, PX_ERR_PROTOCOL, "invalid startup packet");
            return;
        }
        if (st.kind == PG_STARTUP_SSL || st.kind == PG_STARTUP_GSSENC) {
            static char no = 'N';
            uv_buf_t b = uv_buf_init(&no, 1);
            s->startup_off += (size_t)rc;
            if (uv_try_write((uv_stream_t *)&s->client.tcp, &b, 1) != 1) {
                session_close(s, FERRY_LOG_INFO, "client write failed");
                return;
            }
            continue;
        }
        startup_stop(s);
        s->startup_done = true;
        uv_timer_stop(&s->timer);
        if (st.kind == PG_STARTUP_CANCEL) {
            forward_cancel(s, st.cancel_pid, st.cancel_key);
            session_close(s, FERRY_LOG_DEBUG, "cancel request handled");
            return;
        }
        if (s->fail_text) {     /* an error was waiting for this packet */
            send_error(s, s->fail_kind, s->fail_text);
            return;
        }
        if (st.kind == PG_STARTUP_BAD_VERSION) {
            char text[96];
            snprintf(text, sizeof text, "unsupported frontend protocol %u.%u: ferry supports 3.0",
                     st.version >> 16, st.version & 0xffff);
            session_fail(s, PX_ERR_UNSUPPORTED, text);
            return;
        }
        s->startup_msg = s->startup_off;
        s->startup_off += (size_t)rc;
        copy_slice(s->user, sizeof s->user, st.user);
        copy_slice(s->database, sizeof s->database, st.database.p ? st.database : st.user);
        begin_routing(s);
        return;
    }
}

static void on_startup_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *c = stream->data;
    struct px_session *s = c->owner;
    if (nread > 0)
        ferry_wbuf_put(&s->startup, buf->base, (size_t)nread);
    if (buf->base)
        chunk_put(s->owner, chunk_of(buf->base));
    if (nread == 0)
        return;
    if (nread < 0) {
        session_close(s, FERRY_LOG_DEBUG, "client left during startup");
        return;
    }
    startup_advance(s);
}

static void startup_begin(struct px_session *s)
{
    /* room for a StartupMessage after an SSLRequest and a GSSENCRequest */
    ferry_wbuf_init(&s->startup, PG_STARTUP_MAX_BODY + 4 + 16);
    if (uv_read_start((uv_stream_t *)&s->client.tcp, on_alloc, on_startup_read) != 0) {
        session_close(s, FERRY_LOG_INFO, "read start failed");
        return;
    }
    s->client.reading = true;
    uv_timer_start(&s->timer, on_timer, 30000, 0);  /* PostgreSQL allows 60 s; clients need ms */
}

/* ---- PostgreSQL: the relay's message scanners ---- */

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
    if (type == 'Z' && len == 1) {
        PX_STAT_ADD(session_stats(s)->queries, 1);
        if ((s->txn == 'T' || s->txn == 'E') && body[0] == 'I')
            PX_STAT_ADD(session_stats(s)->transactions, 1);
        s->txn = (char)body[0];
        s->inflight = false;
        if (s->stale && s->txn == 'I')
            s->end_at_idle = true;  /* closed once this chunk is relayed */
    } else if (type == 'K' && len == 8 && !s->cancel_pid) {
        /* Give the client ferry's own key: cancels then come through ferry,
         * which knows the backend the session is on now. */
        uint32_t pid, key;
        if (inplace && px_cancel_register((struct sockaddr *)&s->server_addr, ferry_get_u32be(body),
                                          ferry_get_u32be(body + 4), &pid, &key)) {
            s->cancel_pid = pid;
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
        if (strcmp(state, "25006") == 0 && s->lcfg->probe_enabled && px_proc.discovery)
            ferry_discovery_probe_now(px_proc.discovery);
    }
}

static void on_client_message(void *ud, uint8_t type, const uint8_t *body, uint32_t captured,
                              uint32_t len, uint8_t *inplace)
{
    (void)body, (void)captured, (void)len, (void)inplace;
    struct px_session *s = ud;
    if (type == 'X')
        s->terminating = true;  /* the server closing next is the expected answer */
}

/* Checks a chunk's messages before it is relayed; false: the session ended. */
static void writer_moved_text(struct px_session *s, char *out, size_t len, bool in_txn)
{
    snprintf(out, len, "the writer of listener %s moved away from %s; %s", s->pl->name, s->cluster,
             in_txn ? "this session's transaction was rolled back; retry it on a new connection"
                    : "reconnect to reach the new writer");
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
        session_close(s, FERRY_LOG_DEBUG, "client terminated");
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
        writer_moved_text(s, text, sizeof text, true);
        pg_build_error(&b, "ERROR", "40001", text);
        pg_build_ready(&b, 'E');
    }
    if (write_owned(s, &s->client, &b, false) != 0) {
        session_close(s, FERRY_LOG_INFO, "client write failed");
        return;
    }
    if (rollback) {
        writer_moved_text(s, text, sizeof text, false);
        session_fail(s, PX_ERR_WRITER_MOVED, text);
    }
}

static bool pg_scan(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n)
{
    bool from_client = src == &s->client;
    if (from_client && s->stale && n > 0) {
        /* Fencing: nothing more reaches the old writer from this session.
         * ferry answers the client itself (see on_stale_message). */
        if (!s->fenced) {
            s->fenced = true;
            s->scan_c2s.wanted = "QSX";   /* the messages ferry now answers */
            uv_read_stop((uv_stream_t *)&s->server.tcp);
            s->server.reading = false;
            /* the old writer rolls the transaction back when its client goes */
            s->server.shutdown_req.data = &s->server;
            uv_shutdown(&s->server.shutdown_req, (uv_stream_t *)&s->server.tcp, on_shutdown);
        }
        if (pg_stream_feed(&s->scan_c2s, data, n, on_stale_message, s) != 0)
            session_fail(s, PX_ERR_PROTOCOL, "invalid message length from the client");
        return false;
    }
    if (from_client && n > 0)
        s->inflight = true;
    int rc = from_client ? pg_stream_feed(&s->scan_c2s, data, n, on_client_message, s)
                         : pg_stream_feed(&s->scan_s2c, data, n, on_server_message, s);
    if (rc == 0)
        return true;
    if (from_client) {
        uv_read_stop((uv_stream_t *)&s->server.tcp);
        s->server.reading = false;
        session_fail(s, PX_ERR_PROTOCOL, "invalid message length from the client");
    } else {
        session_close(s, FERRY_LOG_WARN, "invalid message length from the server");
    }
    return false;
}

/* ---- backend connect ---- */

static void backend_failed(struct px_session *s, const char *error)
{
    PX_STAT_ADD(session_stats(s)->backend_connect_failed, 1);
    /* Live traffic found the writer unreachable: look now, not at the next tick. */
    if (s->lcfg->probe_enabled && px_proc.discovery)
        ferry_discovery_probe_now(px_proc.discovery);
    ferry_log(FERRY_LOG_WARN, "backend.connect_failed",
              "listener=%s session=%llu cluster=%s backend=%s error=\"%s\"", s->pl->name,
              (unsigned long long)s->id, s->cluster, s->endpoint, error);
    char text[400];
    snprintf(text, sizeof text, "cannot reach the writer %s (%s): %s", s->cluster, s->endpoint,
             error);
    session_fail(s, PX_ERR_BACKEND_DOWN, text);
}

static void hold_expired(struct px_session *s)
{
    unhold(s);
    PX_STAT_ADD(session_stats(s)->hold_timeouts, 1);
    char text[300];
    snprintf(text, sizeof text, "no writer for listener %s after waiting %gs", s->pl->name,
             s->cfg->discovery.hold_timeout);
    session_fail(s, PX_ERR_NO_WRITER, text);
}

static void on_timer(uv_timer_t *t)
{
    struct px_session *s = t->data;
    if (s->pg && !s->startup_done) {
        session_close(s, FERRY_LOG_INFO, "client sent no startup packet");
        return;
    }
    if (s->held) {
        hold_expired(s);
        return;
    }
    char error[64];
    snprintf(error, sizeof error, "timed out after %gs", s->lcfg->connect_timeout);
    backend_failed(s, error);
}

static void tune_tcp(uv_tcp_t *t)
{
    uv_tcp_nodelay(t, 1);
    uv_tcp_keepalive(t, 1, 60);
}

static void on_connected(uv_connect_t *req, int status)
{
    struct px_session *s = req->data;
    if (status == UV_ECANCELED || s->closing)
        return;
    if (status < 0) {
        backend_failed(s, uv_strerror(status));
        return;
    }
    uv_timer_stop(&s->timer);
    s->connected = true;
    tune_tcp(&s->server.tcp);
    ferry_log(FERRY_LOG_DEBUG, "session.connected", "listener=%s session=%llu backend=%s",
              s->pl->name, (unsigned long long)s->id, s->endpoint);
    if (s->pg) {
        /* the StartupMessage (and anything the client sent after it) goes first */
        struct ferry_wbuf out;
        ferry_wbuf_init(&out, 0);
        ferry_wbuf_put(&out, s->startup.data + s->startup_msg, s->startup.len - s->startup_msg);
        ferry_wbuf_free(&s->startup);
        uint32_t max = s->lcfg->max_message_size;
        pg_stream_init(&s->scan_c2s, max, "X");
        pg_stream_init(&s->scan_s2c, max, "ZKE");
        /* bytes after the StartupMessage are regular messages: scan them too */
        size_t after = s->startup_off - s->startup_msg;
        if (out.len > after && !pg_scan(s, &s->client, out.data + after, out.len - after)) {
            ferry_wbuf_free(&out);
            return;
        }
        if (write_owned(s, &s->server, &out, false) != 0) {
            session_close(s, FERRY_LOG_INFO, "server write failed");
            return;
        }
    }
    conn_start_reading(&s->client);
    conn_start_reading(&s->server);
}

static void connect_to(struct px_session *s, const struct sockaddr *sa)
{
    uv_tcp_init(&s->owner->loop, &s->server.tcp);
    s->server.tcp.data = &s->server;
    s->server.open = true;
    memcpy(&s->server_addr, sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                          : sizeof(struct sockaddr_in));
    s->connect_req.data = s;
    int rc = uv_tcp_connect(&s->connect_req, &s->server.tcp, sa, on_connected);
    if (rc != 0)
        backend_failed(s, uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct px_session *s = req->data;
    s->gai_pending = false;
    if (s->closing) {
        uv_freeaddrinfo(res);
        if (--s->pending_closes == 0)
            session_free(s);
        return;
    }
    if (status < 0 || !res) {
        char error[128];
        snprintf(error, sizeof error, "resolve: %s", uv_strerror(status));
        uv_freeaddrinfo(res);
        backend_failed(s, error);
        return;
    }
    connect_to(s, res->ai_addr);
    uv_freeaddrinfo(res);
}

/* Literal addresses connect at once; names go through the libuv threadpool. */
static void start_backend(struct px_session *s, const struct ferry_hostport *ep)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(ep->host, ep->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(ep->host, ep->port, (struct sockaddr_in6 *)&ss) == 0) {
        connect_to(s, (struct sockaddr *)&ss);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    char port[8];
    snprintf(port, sizeof port, "%u", ep->port);
    s->gai_req.data = s;
    int rc = uv_getaddrinfo(&s->owner->loop, &s->gai_req, on_resolved, ep->host, port, &hints);
    if (rc != 0) {
        backend_failed(s, uv_strerror(rc));
        return;
    }
    s->gai_pending = true;
}

/* Routes s and starts connecting; false (nothing started) when there is no
 * writer to route to. */
static bool route_and_connect(struct px_session *s)
{
    if (__atomic_load_n(&px_proc.paused, __ATOMIC_RELAXED))
        return false;   /* POST /v1/pause: hold like a failover window */
    const char *cluster = NULL;
    const struct ferry_hostport *ep = px_route(s->lcfg, s->owner->topology, &cluster);
    if (!ep)
        return false;
    snprintf(s->cluster, sizeof s->cluster, "%s", cluster);
    ferry_hostport_format(ep, s->endpoint, sizeof s->endpoint);
    const struct ferry_topology_listener *t = ferry_topology_find(s->owner->topology, s->lcfg->name);
    s->topo_gen = t ? t->generation : 0;
    ferry_log(FERRY_LOG_DEBUG, "session.routed", "listener=%s session=%llu cluster=%s backend=%s",
              s->pl->name, (unsigned long long)s->id, s->cluster, s->endpoint);
    uv_timer_start(&s->timer, on_timer, (uint64_t)(s->lcfg->connect_timeout * 1000.0), 0);
    start_backend(s, ep);
    return true;
}

/* ---- accept ---- */

static void format_peer(const uv_tcp_t *t, char *out, size_t len)
{
    struct sockaddr_storage ss;
    int n = sizeof ss;
    char ip[64] = "?";
    int port = 0;
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &n) == 0) {
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    snprintf(out, len, strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
}

static const char *session_state(const struct px_session *s)
{
    if (s->closing || s->failing)
        return "closing";
    if (s->held)
        return "held";
    return s->connected ? "active" : "connecting";
}

void px_session_describe_all(struct px_worker *w, struct px_collector *c)
{
    uint64_t now = px_now_ms();
    pthread_mutex_lock(&c->lock);
    for (struct ferry_list *it = w->sessions.next; it != &w->sessions; it = it->next) {
        const struct px_session *s = ferry_container_of(it, struct px_session, link);
        if (!s->counted)
            continue;
        json_array_append_new(c->sessions, json_pack(
            "{s:I, s:s, s:s, s:s, s:s?, s:s?, s:f, s:I, s:I, s:i}", "id", (json_int_t)s->id,
            "listener", s->pl->name, "client", s->peer, "state", session_state(s),
            "cluster", s->connected || s->gai_pending || s->server.open ? s->cluster : NULL,
            "backend", s->server.open ? s->endpoint : NULL,
            "age_seconds", (double)(now - s->created_ms) / 1000.0,
            "bytes_from_client", (json_int_t)s->bytes_from_client,
            "bytes_from_server", (json_int_t)s->bytes_from_server, "worker", (int)w->index));
        json_t *last = json_array_get(c->sessions, json_array_size(c->sessions) - 1);
        if (s->pg && s->user[0]) {
            json_object_set_new(last, "user", json_string(s->user));
            json_object_set_new(last, "database", json_string(s->database));
        }
        if (s->pg)
            json_object_set_new(last,
                                "transaction", s->txn == 'I'   ? json_string("idle")
                                               : s->txn == 'T' ? json_string("in_transaction")
                                               : s->txn == 'E' ? json_string("failed")
                                                               : json_null());
    }
    c->pending--;
    pthread_cond_broadcast(&c->done);
    pthread_mutex_unlock(&c->lock);
}

static void log_refusal(struct px_accepting *a)
{
    struct px_worker *w = a->owner;
    PX_STAT_ADD(a->pl->stats[w->index].refused, 1);
    uint64_t now = px_now_ms();
    if (now - w->last_refuse_log_ms >= 1000) {  /* one line a second, not one per client */
        w->last_refuse_log_ms = now;
        ferry_log(FERRY_LOG_WARN, "listener.connection_refused",
                  "listener=%s reason=\"max_client_connections %u reached\" refused_total=%llu",
                  a->pl->name, a->lcfg->max_client_connections,
                  (unsigned long long)PX_STAT_GET(a->pl->stats[w->index].refused));
    }
}

static void on_bare_closed(uv_handle_t *h)
{
    free(h);
}

/* Out of memory for a session: take the connection off the queue and close it. */
static void drop_connection(struct px_accepting *a)
{
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        return;
    uv_tcp_init(&a->owner->loop, t);
    uv_accept((uv_stream_t *)&a->tcp, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, on_bare_closed);
}

void px_session_accept(struct px_accepting *a)
{
    struct px_worker *w = a->owner;
    /* Over the limit the connection still becomes a session, but only to be
     * told why in its own protocol and closed; it does not count. */
    uint32_t n = __atomic_add_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
    bool over = n > a->lcfg->max_client_connections;
    if (over)
        __atomic_sub_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
    struct px_session *s = calloc(1, sizeof *s);
    if (!s) {
        if (!over)
            __atomic_sub_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
        drop_connection(a);
        return;
    }
    s->counted = !over;
    s->owner = w;
    s->pl = px_listener_ref(a->pl);
    s->cfg = ferry_config_ref(w->cfg);
    s->lcfg = a->lcfg;
    s->id = __atomic_add_fetch(&next_session_id, 1, __ATOMIC_RELAXED);
    s->client = (struct px_conn){.owner = s, .peer = &s->server, .name = "client", .open = true};
    s->server = (struct px_conn){.owner = s, .peer = &s->client, .name = "server"};
    ferry_list_insert_tail(&w->sessions, &s->link);
    ferry_list_init(&s->held_link);
    w->nsessions++;
    if (s->counted) {
        PX_STAT_ADD(session_stats(s)->active, 1);
        PX_STAT_ADD(session_stats(s)->accepted, 1);
    }

    uv_tcp_init(&w->loop, &s->client.tcp);
    s->client.tcp.data = &s->client;
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    strcpy(s->endpoint, "-");
    strcpy(s->cluster, "-");
    int rc = uv_accept((uv_stream_t *)&a->tcp, (uv_stream_t *)&s->client.tcp);
    if (rc != 0) {
        session_close(s, FERRY_LOG_INFO, "accept failed");
        return;
    }
    tune_tcp(&s->client.tcp);
    s->created_ms = px_now_ms();
    format_peer(&s->client.tcp, s->peer, sizeof s->peer);
    s->pg = s->lcfg->protocol == FERRY_PROTO_POSTGRESQL;
    if (s->pg)
        startup_begin(s);
    if (!s->counted) {
        log_refusal(a);
        char text[128];
        snprintf(text, sizeof text, "too many clients on listener %s (max_client_connections %u)",
                 a->pl->name, a->lcfg->max_client_connections);
        session_fail(s, PX_ERR_TOO_MANY_CLIENTS, text);
        return;
    }
    ferry_log(FERRY_LOG_DEBUG, "session.accepted", "listener=%s session=%llu", s->pl->name,
              (unsigned long long)s->id);
    if (!s->pg)
        begin_routing(s);
}

/* Routes the session, or holds it while there is no writer. */
static void begin_routing(struct px_session *s)
{
    struct px_worker *w = s->owner;
    if (!route_and_connect(s)) {
        /* No writer now: wait for one instead of failing (the failover window). */
        s->held = true;
        ferry_list_insert_tail(&w->held, &s->held_link);
        PX_STAT_ADD(session_stats(s)->held, 1);
        uv_timer_start(&s->timer, on_timer, (uint64_t)(s->cfg->discovery.hold_timeout * 1000.0), 0);
        ferry_log(FERRY_LOG_DEBUG, "session.held", "listener=%s session=%llu hold_timeout=%g",
                  s->pl->name, (unsigned long long)s->id, s->cfg->discovery.hold_timeout);
    }
}

/* A new topology: PostgreSQL sessions routed under an older writer
 * generation must not send anything more to it. Idle ones are closed now
 * with an error that pools treat as "reconnect"; ones inside a transaction
 * are closed when the transaction ends or at their next statement. (Moving
 * them without an error needs ferry-terminated authentication.) */
void px_session_topology_changed(struct px_worker *w)
{
    struct ferry_list *it = w->sessions.next;
    while (it != &w->sessions) {
        struct px_session *s = ferry_container_of(it, struct px_session, link);
        it = it->next;
        if (!s->pg || !s->lcfg->probe_enabled || !s->connected || s->closing || s->failing ||
            s->stale)
            continue;
        const struct ferry_topology_listener *t = ferry_topology_find(w->topology, s->lcfg->name);
        if (t && t->generation == s->topo_gen)
            continue;
        s->stale = true;
        ferry_log(FERRY_LOG_INFO, "session.writer_moved", "listener=%s session=%llu from=%s state=%s",
                  s->pl->name, (unsigned long long)s->id, s->cluster,
                  s->txn == 'I' && !s->inflight ? "idle" : "busy");
        if (s->txn == 'I' && !s->inflight) {
            char text[256];
            writer_moved_text(s, text, sizeof text, false);
            uv_read_stop((uv_stream_t *)&s->server.tcp);
            s->server.reading = false;
            session_fail(s, PX_ERR_WRITER_MOVED, text);
        }
    }
}

void px_session_release_held(struct px_worker *w)
{
    struct ferry_list *it = w->held.next;
    while (it != &w->held) {
        struct px_session *s = ferry_container_of(it, struct px_session, held_link);
        it = it->next;
        if (s->closing || s->failing || !route_and_connect(s))
            continue;
        unhold(s);
    }
}
