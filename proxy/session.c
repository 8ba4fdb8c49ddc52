/* A session: one client connection, its backend connection, and the byte
 * relay between them. The relay forwards whole read chunks without copying,
 * stops reading a side whose peer has session_buffer bytes queued and resumes
 * below half of it, and propagates half-closes. Every teardown goes through
 * session_close(), which is idempotent and frees in the last close callback.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
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
    int pending_closes;                     /* close callbacks still due */
    uint64_t id;
    char endpoint[FERRY_HOST_MAX + 16];     /* backend address, for logs */
    struct ferry_list link;                 /* in owner->sessions */
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

static void session_free(struct px_session *s)
{
    struct px_worker *w = s->owner;
    ferry_list_remove(&s->link);
    w->nsessions--;
    __atomic_sub_fetch(&s->pl->clients, 1, __ATOMIC_RELAXED);
    PX_STAT_ADD(session_stats(s)->active, -1);
    px_listener_unref(s->pl);
    ferry_config_unref(s->cfg);
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
    ch->dst = dst;
    ch->len = (size_t)nread;
    if (src == &s->client)
        PX_STAT_ADD(session_stats(s)->bytes_from_clients, nread);
    else
        PX_STAT_ADD(session_stats(s)->bytes_from_servers, nread);
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

/* ---- backend connect ---- */

static void on_connect_timeout(uv_timer_t *t)
{
    struct px_session *s = t->data;
    PX_STAT_ADD(session_stats(s)->backend_connect_failed, 1);
    ferry_log(FERRY_LOG_WARN, "backend.connect_failed",
              "listener=%s session=%llu backend=%s error=\"timed out after %gs\"", s->pl->name,
              (unsigned long long)s->id, s->endpoint, s->lcfg->connect_timeout);
    session_close(s, FERRY_LOG_INFO, "backend connect timeout");
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
        PX_STAT_ADD(session_stats(s)->backend_connect_failed, 1);
        ferry_log(FERRY_LOG_WARN, "backend.connect_failed",
                  "listener=%s session=%llu backend=%s error=\"%s\"", s->pl->name,
                  (unsigned long long)s->id, s->endpoint, uv_strerror(status));
        session_close(s, FERRY_LOG_INFO, "backend connect failed");
        return;
    }
    uv_timer_stop(&s->timer);
    s->connected = true;
    tune_tcp(&s->server.tcp);
    ferry_log(FERRY_LOG_DEBUG, "session.connected", "listener=%s session=%llu backend=%s",
              s->pl->name, (unsigned long long)s->id, s->endpoint);
    conn_start_reading(&s->client);
    conn_start_reading(&s->server);
}

static void connect_to(struct px_session *s, const struct sockaddr *sa)
{
    uv_tcp_init(&s->owner->loop, &s->server.tcp);
    s->server.tcp.data = &s->server;
    s->server.open = true;
    s->connect_req.data = s;
    int rc = uv_tcp_connect(&s->connect_req, &s->server.tcp, sa, on_connected);
    if (rc != 0) {
        PX_STAT_ADD(session_stats(s)->backend_connect_failed, 1);
        ferry_log(FERRY_LOG_WARN, "backend.connect_failed",
                  "listener=%s session=%llu backend=%s error=\"%s\"", s->pl->name,
                  (unsigned long long)s->id, s->endpoint, uv_strerror(rc));
        session_close(s, FERRY_LOG_INFO, "backend connect failed");
    }
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
        PX_STAT_ADD(session_stats(s)->backend_connect_failed, 1);
        ferry_log(FERRY_LOG_WARN, "backend.connect_failed",
                  "listener=%s session=%llu backend=%s error=\"resolve: %s\"", s->pl->name,
                  (unsigned long long)s->id, s->endpoint, uv_strerror(status));
        uv_freeaddrinfo(res);
        session_close(s, FERRY_LOG_INFO, "backend name resolution failed");
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
        session_close(s, FERRY_LOG_WARN, "backend name resolution failed");
        return;
    }
    s->gai_pending = true;
}

/* ---- accept ---- */

static void on_refused_closed(uv_handle_t *h)
{
    free(h);
}

/* Over the limit: accept and close at once so the kernel queue drains.
 * The protocol layers turn this into a proper error message. */
static void refuse(struct px_accepting *a)
{
    struct px_worker *w = a->owner;
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t)
        return;
    uv_tcp_init(&w->loop, t);
    if (uv_accept((uv_stream_t *)&a->tcp, (uv_stream_t *)t) == 0)
        uv_tcp_close_reset(t, on_refused_closed);
    else
        uv_close((uv_handle_t *)t, on_refused_closed);
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

void px_session_accept(struct px_accepting *a)
{
    struct px_worker *w = a->owner;
    uint32_t n = __atomic_add_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
    if (n > a->lcfg->max_client_connections) {
        __atomic_sub_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
        refuse(a);
        return;
    }
    struct px_session *s = calloc(1, sizeof *s);
    if (!s) {
        __atomic_sub_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
        refuse(a);
        return;
    }
    s->owner = w;
    s->pl = px_listener_ref(a->pl);
    s->cfg = ferry_config_ref(w->cfg);
    s->lcfg = a->lcfg;
    s->id = __atomic_add_fetch(&next_session_id, 1, __ATOMIC_RELAXED);
    s->client = (struct px_conn){.owner = s, .peer = &s->server, .name = "client", .open = true};
    s->server = (struct px_conn){.owner = s, .peer = &s->client, .name = "server"};
    ferry_list_insert_tail(&w->sessions, &s->link);
    w->nsessions++;
    PX_STAT_ADD(session_stats(s)->active, 1);
    PX_STAT_ADD(session_stats(s)->accepted, 1);

    uv_tcp_init(&w->loop, &s->client.tcp);
    s->client.tcp.data = &s->client;
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    strcpy(s->endpoint, "-");
    int rc = uv_accept((uv_stream_t *)&a->tcp, (uv_stream_t *)&s->client.tcp);
    if (rc != 0) {
        session_close(s, FERRY_LOG_INFO, "accept failed");
        return;
    }
    tune_tcp(&s->client.tcp);

    const char *cluster = NULL;
    const struct ferry_hostport *ep = px_route(s->lcfg, &cluster);
    ferry_hostport_format(ep, s->endpoint, sizeof s->endpoint);
    ferry_log(FERRY_LOG_DEBUG, "session.accepted", "listener=%s session=%llu cluster=%s backend=%s",
              s->pl->name, (unsigned long long)s->id, cluster, s->endpoint);
    uv_timer_start(&s->timer, on_connect_timeout, (uint64_t)(s->lcfg->connect_timeout * 1000.0), 0);
    start_backend(s, ep);
}
