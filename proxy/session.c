/* A session: one client connection, its backend connection, and the byte
 * relay between them (see session.h for the protocol hooks). Reads land in
 * the worker's one read buffer and are written on at once; only what the
 * peer's socket does not take is copied into its write queue (ferry/outq.h),
 * sized to the data. The relay stops reading a side while the memory queued
 * towards its peer is at session_buffer and resumes below half of it, and
 * propagates half-closes. Every teardown goes through
 * px_session_close(), which is idempotent and frees in the last close callback.
 */
#include <arpa/inet.h>
#include <strings.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "ferry/discovery.h"
#include "ferry/tls.h"
#include "session.h"

/* A client request held at a safe point (parked), copied out of the read
 * buffer: at most one read per session. */
struct px_chunk {
    size_t len;
    char data[];
};

static uint64_t next_session_id;

struct px_counters *px_session_stats(struct px_session *s)
{
    return &s->pl->stats[s->owner->index];
}

/* ---- returning memory ----
 * Write queues come and go with slow peers; glibc keeps what they freed in
 * its arenas (the worker threads' arenas are trimmed only from their top).
 * Once a worker has freed TRIM_AFTER bytes of queues, malloc_trim() gives
 * the free pages back a second later (one call for a burst of closes). */

enum { TRIM_AFTER = 4 << 20, TRIM_DELAY_MS = 1000 };

static void on_trim_timer(uv_timer_t *t)
{
    struct px_worker *w = t->data;
    w->released = 0;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

void px_session_trim_init(struct px_worker *w)
{
    uv_timer_init(&w->loop, &w->trim_timer);
    w->trim_timer.data = w;
}

static void released(struct px_worker *w, size_t n)
{
    w->released += n;
    if (w->released >= TRIM_AFTER && !uv_is_active((uv_handle_t *)&w->trim_timer))
        uv_timer_start(&w->trim_timer, on_trim_timer, TRIM_DELAY_MS, 0);
}

/* ---- teardown ---- */

static const char NO_ENDPOINT[] = "-";   /* a session not routed yet */

enum { IDLE_SWEEP_MS = 1000 };   /* how often idle clients are looked for */
static void on_login_timer(uv_timer_t *t);

/* The login slot goes back (logged in, held, or the session ends). */
static void login_slot_release(struct px_session *s)
{
    if (s->login_slot) {
        s->login_slot = false;
        px_listener_login_end(s->pl, &s->source);
    }
}

static void unhold(struct px_session *s)
{
    if (s->held) {
        s->held = false;
        ferry_list_remove(&s->held_link);
        PX_STAT_ADD(px_session_stats(s)->held, -1);
    }
    if (s->login_left_ms && !s->logged_in && !s->closing) {
        /* the wait for a writer is over: the client's login time runs on */
        uv_timer_start(&s->login_timer, on_login_timer, s->login_left_ms, 0);
        s->login_left_ms = 0;
    }
}

static void unqueue_move(struct px_session *s);
static void login_set(struct px_session *s, enum px_login kind);

static void session_free(struct px_session *s)
{
    struct px_worker *w = s->owner;
    if (s->endpoint != NO_ENDPOINT)
        free((char *)s->endpoint);
    ferry_list_remove(&s->link);
    unhold(s);
    unqueue_move(s);
    login_set(s, PX_LOGIN_NONE);
    login_slot_release(s);
    w->nsessions--;
    if (s->lcfg->client_idle_timeout > 0 && --w->nidle_timed == 0)
        uv_timer_stop(&w->idle_timer);
    if (s->counted) {
        __atomic_sub_fetch(&s->pl->clients, 1, __ATOMIC_RELAXED);
        PX_STAT_ADD(px_session_stats(s)->active, -1);
    }
    if (s->server.counted)
        PX_STAT_ADD(px_session_stats(s)->backends, -1);
    px_listener_unref(s->pl);
    ferry_config_unref(s->cfg);
    free(s->parked);
    ferry_wbuf_free(&s->server_said);
    ferry_outq_free(&s->client.out);    /* (empty: writes end before the close callbacks) */
    ferry_outq_free(&s->server.out);
    ferry_tls_free(s->client.tls);
    ferry_tls_free(s->server.tls);
    if (s->proto && s->proto->free)
        s->proto->free(s);
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
void px_session_close(struct px_session *s, enum ferry_log_level lvl, const char *reason)
{
    if (s->closing)
        return;
    s->closing = true;
    char esc[512];
    ferry_log(lvl, "session.closed", "listener=%s session=%llu backend=%s reason=\"%s\"",
              s->pl->name, (unsigned long long)s->id, s->endpoint,
              ferry_log_escape(reason, esc, sizeof esc));
    s->pending_closes++;    /* hold the session while we close */
    /* A cancelled or already running lookup still calls on_resolved, which
     * sees closing and releases its hold. */
    if (s->gai)
        uv_cancel((uv_req_t *)s->gai);
    close_handle(s, (uv_handle_t *)&s->timer);
    close_handle(s, (uv_handle_t *)&s->login_timer);
    close_handle(s, (uv_handle_t *)&s->client.tcp);
    if (s->server.open)
        close_handle(s, (uv_handle_t *)&s->server.tcp);
    if (s->gai)
        s->pending_closes++;    /* released by on_resolved */
    if (--s->pending_closes == 0)
        session_free(s);
}

static void hold(struct px_session *s);
static void wait_again(struct px_session *s, bool background);
static void queue_move(struct px_session *s);

static void on_server_dropped(uv_handle_t *h)
{
    struct px_session *s = h->data;
    if (--s->pending_closes == 0 && s->closing) {
        session_free(s);
        return;
    }
    if (s->closing)
        return;
    bool background = s->login == PX_LOGIN_BACKGROUND;
    login_set(s, PX_LOGIN_NONE);
    ferry_tls_free(s->server.tls);
    ferry_outq_free(&s->server.out);
    if (s->server.counted)
        PX_STAT_ADD(px_session_stats(s)->backends, -1);
    s->server = (struct px_conn){.owner = s, .peer = &s->client, .name = "server"};
    s->client.paused = false;
    if (s->verdict_wait)
        return;     /* on_verdict_poll decides what comes next */
    if (s->hold_after_drop) {
        s->hold_after_drop = false;
        wait_again(s, background);  /* the next topology routes it again */
        return;
    }
    if (s->move_waiting) {
        queue_move(s);
        return;
    }
    px_session_route(s);
}

void px_session_reconnect(struct px_session *s)
{
    s->connected = false;
    s->relaying = false;
    uv_timer_stop(&s->timer);
    px_conn_stop_reading(&s->server);
    if (!s->server.open || uv_is_closing((uv_handle_t *)&s->server.tcp))
        return;
    s->server.tcp.data = s;
    s->pending_closes++;
    uv_close((uv_handle_t *)&s->server.tcp, on_server_dropped);
}

void px_session_move(struct px_session *s)
{
    bool drop_due = s->server.open;     /* then on_server_dropped goes on */
    s->move_waiting = !s->parked;       /* a request waits: no waiting in the queue */
    px_session_reconnect(s);
    if (drop_due)
        return;
    if (s->move_waiting)
        queue_move(s);
    else
        px_session_route(s);
}

void px_session_close_all(struct px_worker *w, const char *reason)
{
    struct ferry_list *it = w->sessions.next;
    while (it != &w->sessions) {
        struct px_session *s = ferry_container_of(it, struct px_session, link);
        it = it->next;  /* px_session_close may free s only after callbacks, but be safe */
        px_session_close(s, FERRY_LOG_INFO, reason);
    }
}

/* ---- relay ---- */

static void on_timer(uv_timer_t *t);
static void on_shutdown(uv_shutdown_t *req, int status);

static void conn_start_reading(struct px_conn *c);
static void relay(struct px_session *s, struct px_conn *src, char *data, size_t n);
static void park(struct px_session *s, const char *data, size_t n);
static void tls_failed(struct px_session *s, struct px_conn *c);
static int tls_send(struct px_session *s, struct px_conn *c, bool close_after);

void px_session_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct px_conn *c = h->data;
    ferry_readbuf_get(&c->owner->owner->readbuf, buf);
}

void px_session_free_buf(struct px_session *s, const uv_buf_t *buf)
{
    ferry_readbuf_put(&s->owner->readbuf, buf);
}

/* Queue memory of dst changed by n bytes (negative: freed). */
static void buffered_add(struct px_worker *w, struct px_conn *dst, ssize_t n)
{
    PX_STAT_ADD(w->buffered_bytes, n);
    if (n > 0 && dst->out.bytes > w->buffered_peak)
        __atomic_store_n(&w->buffered_peak, (uint64_t)dst->out.bytes, __ATOMIC_RELAXED);
    if (n < 0)
        released(w, (size_t)-n);
}

/* Resumes a side stopped for backpressure once the queue it feeds (and,
 * for the client, the queue of ferry's answers to it) is below half of
 * session_buffer. */
static void maybe_resume(struct px_session *s, struct px_conn *c)
{
    size_t half = s->lcfg->session_buffer / 2;
    if (c->paused && !s->closing && c->peer->out.bytes <= half &&
        (c != &s->client || c->out.bytes <= half)) {
        c->paused = false;
        conn_start_reading(c);
    }
}

static void on_sent(struct ferry_outq *q, int status, size_t freed)
{
    struct px_conn *dst = ferry_container_of(q, struct px_conn, out);
    struct px_session *s = dst->owner;
    buffered_add(s->owner, dst, -(ssize_t)freed);
    if (dst->close_when_sent && (status < 0 || ferry_outq_empty(q))) {
        px_session_close(s, FERRY_LOG_DEBUG, "error sent to client");   /* sent or not */
        return;
    }
    if (status < 0) {
        if (status != UV_ECANCELED)
            px_session_close(s, FERRY_LOG_INFO, dst == &s->client ? "client write failed"
                                                                : "server write failed");
        return;
    }
    maybe_resume(s, dst->peer);
    maybe_resume(s, dst);
}

/* Writes n bytes to c's socket after what is queued there (the rest of
 * what the socket does not take at once is copied into c's queue);
 * notify: the bytes go through the queue even when it is empty, so on_sent
 * runs for them. 0 or a libuv error. */
static int conn_write(struct px_session *s, struct px_conn *c, const void *p, size_t n,
                      bool notify)
{
    size_t before = c->out.bytes;
    int rc = ferry_outq_write(&c->out, (uv_stream_t *)&c->tcp, p, n, s->lcfg->session_buffer,
                              notify, on_sent);
    if (c->out.bytes != before)
        buffered_add(s->owner, c, (ssize_t)(c->out.bytes - before));
    return rc;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct px_conn *c = req->data;
    struct px_session *s = c->owner;
    if (status == UV_ECANCELED || s->closing)
        return;
    if (status < 0) {
        px_session_close(s, FERRY_LOG_DEBUG, "shutdown failed");
        return;
    }
    c->shut = true;
    if (s->client.shut && s->server.shut)
        px_session_close(s, FERRY_LOG_DEBUG, "both sides closed");
}

/* Half-closes c once what is queued towards it is written. */
static int conn_shutdown(struct px_conn *c)
{
    c->shutdown_req.data = c;
    return ferry_outq_shutdown(&c->out, (uv_stream_t *)&c->tcp, &c->shutdown_req, on_shutdown);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *src = stream->data;
    struct px_conn *dst = src->peer;
    struct px_session *s = src->owner;

    if (nread > 0) {
        relay(s, src, buf->base, (size_t)nread);
        px_session_free_buf(s, buf);
        return;
    }
    px_session_free_buf(s, buf);
    if (nread == 0)
        return;     /* EAGAIN: not an EOF */
    if (src == &s->server && s->connected && s->proto && s->proto->server_lost &&
        s->proto->server_lost(s))
        return;
    if (nread == UV_EOF) {
        src->eof = true;
        uv_read_stop(stream);
        src->reading = false;
        if (!s->connected) {
            px_session_close(s, FERRY_LOG_DEBUG, "client closed before backend connected");
            return;
        }
        /* Half-close: pass the EOF on once everything queued is written. */
        if (conn_shutdown(dst) != 0)
            px_session_close(s, FERRY_LOG_DEBUG, "shutdown failed");
        return;
    }
    if (nread == UV_ENOBUFS) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for buffers");
        return;
    }
    char reason[96];
    snprintf(reason, sizeof reason, "%s read failed: %s", src->name, uv_strerror((int)nread));
    px_session_close(s, FERRY_LOG_INFO, reason);
}

/* Hands n bytes read from src to the protocol, then to the peer. The bytes
 * stay the caller's (the read buffer): what is kept is copied. */
static void relay(struct px_session *s, struct px_conn *src, char *data, size_t n)
{
    struct px_worker *w = s->owner;
    struct px_conn *dst = src->peer;
    s->last_traffic = uv_now(&w->loop);
    enum px_scan verdict = s->proto && s->proto->scan
                               ? s->proto->scan(s, src, (uint8_t *)data, n) : PX_SCAN_RELAY;
    if (verdict == PX_SCAN_PARK && src == &s->client && !s->parked) {
        park(s, data, n);
        return;
    }
    if (verdict != PX_SCAN_RELAY) {
        /* Ferry answered the client itself: a client that sends without
         * reading those answers is stopped like one whose server is slow. */
        if (src == &s->client && !s->closing && src->out.bytes >= s->lcfg->session_buffer) {
            px_conn_stop_reading(src);
            src->paused = true;
        }
        return;
    }
    if (src == &s->client) {
        PX_STAT_ADD(px_session_stats(s)->bytes_from_clients, n);
        s->bytes_from_client += (uint64_t)n;
    } else {
        PX_STAT_ADD(px_session_stats(s)->bytes_from_servers, n);
        s->bytes_from_server += (uint64_t)n;
    }
    if (dst->tls) {
        /* the plaintext goes into the engine; its ciphertext is ferry's own write */
        if (ferry_tls_write(dst->tls, data, n) < 0) {
            tls_failed(s, dst);
            return;
        }
        if (tls_send(s, dst, false) != 0) {
            px_session_close(s, FERRY_LOG_INFO, "write failed");
            return;
        }
    } else {
        /* The fast path: the socket takes it all (uv_try_write), nothing is
         * copied or queued, no epoll_ctl. */
        int rc = conn_write(s, dst, data, n, false);
        if (rc < 0) {
            char reason[96];
            snprintf(reason, sizeof reason, "%s write failed: %s", dst->name, uv_strerror(rc));
            px_session_close(s, FERRY_LOG_INFO, reason);
            return;
        }
    }
    if (src == &s->server && s->proto && s->proto->relayed) {
        s->proto->relayed(s);
        if (s->failing || s->closing)
            return;
    }
    /* Backpressure: the peer is slow; stop taking more from this side. */
    if (dst->out.bytes >= s->lcfg->session_buffer) {
        px_conn_stop_reading(src);
        src->paused = true;
    }
}

/* ---- parking: a session's next request held at a safe point ---- */

/* Waits for a writer (or a resume). One wait lasts hold_timeout in all,
 * however often a connect attempt in between fails and holds again. */
static bool route_and_connect(struct px_session *s);
static bool connect_now(struct px_session *s, enum px_login kind);
static void try_prelogin(struct px_session *s);
static bool route_to(struct px_session *s, const char *cluster, const struct ferry_hostport *ep,
                     const char *addr);
static void set_topo_gen(struct px_session *s);
static void prelogin_failed(struct px_session *s, const char *error);
static bool prelogin_settle(struct px_session *s);

enum { RETRY_CONNECT_MS = 250 };    /* a held session's next try at an unreachable writer */

static void hold(struct px_session *s)
{
    if (!s->logged_in && uv_is_active((uv_handle_t *)&s->login_timer)) {
        /* Waiting for a writer is ferry's wait, not the client's: its login
         * time stops (hold_timeout bounds the wait), and it costs no
         * backend connection meanwhile, so it gives its login slot back
         * (a reconnect storm in a failover window must not be refused). */
        uint64_t left = uv_timer_get_due_in(&s->login_timer);
        s->login_left_ms = left ? left : 1;
        uv_timer_stop(&s->login_timer);
        login_slot_release(s);
    }
    uint64_t now = px_now_ms();
    if (!s->hold_until)
        s->hold_until = now + (uint64_t)(s->cfg->discovery.hold_timeout * 1000.0);
    if (!s->held) {     /* a parked session being moved may be held already */
        s->held = true;
        ferry_list_insert_tail(&s->owner->held, &s->held_link);
        PX_STAT_ADD(px_session_stats(s)->held, 1);
    }
    uint64_t left = s->hold_until > now ? s->hold_until - now : 0;
    bool retry = s->retry_soon && !s->server.open && left > RETRY_CONNECT_MS;
    px_session_arm_timer(s, retry ? RETRY_CONNECT_MS : left);
    try_prelogin(s);
}

/* ---- moving idle sessions ----
 * A writer that moves leaves every idle session of a terminated-auth
 * listener without a backend at once. Logging them all into the new writer
 * at that moment puts a login storm in front of the clients that are
 * waiting (held new clients, requests parked on a move): in the drill, ten
 * idle moves next to six reconnecting writers made the writers wait for the
 * idle sessions, and writes resumed ~0.8 s after the switch instead of as
 * soon as the six logins were done. So an idle session's move waits in
 * w->to_move: it starts when its client sends a request (park: then it is as
 * urgent as a new client), or in the background once no login a client
 * waits for is under way on this worker, BACKGROUND_MOVES at a time. A
 * background move that cannot connect waits in the queue again, and the
 * queue rests RETRY_CONNECT_MS (or until the next topology). A waiting idle
 * session has no hold timer: it did nothing, so nothing of it times out;
 * hold_timeout counts from its next request. Counting is per worker (no
 * cross-thread traffic); each worker's own logins decide its moves. */

enum { BACKGROUND_MOVES = 2 };

static unsigned *login_counter(struct px_worker *w, unsigned kind)
{
    return kind == PX_LOGIN_WAITED_ON    ? &w->logins_waited_on
           : kind == PX_LOGIN_BACKGROUND ? &w->background_moves
                                         : NULL;
}

static void schedule_moves(struct px_worker *w, uint64_t ms);

/* s's backend login counts as kind from now on (PX_LOGIN_NONE: it is over,
 * one way or the other). */
static void login_set(struct px_session *s, enum px_login kind)
{
    struct px_worker *w = s->owner;
    unsigned *was = login_counter(w, s->login), *now = login_counter(w, kind);
    if (was == now)
        return;
    if (was)
        (*was)--;
    if (now)
        (*now)++;
    s->login = (uint8_t)kind;
    if (was)
        schedule_moves(w, 0);   /* a slot may have opened */
}

/* Routes and connects s, its login counted as kind; false: no route now. */
static bool connect_now(struct px_session *s, enum px_login kind)
{
    unqueue_move(s);    /* whatever path connects it, it waits no more */
    login_set(s, kind);
    if (route_and_connect(s))
        return true;
    login_set(s, PX_LOGIN_NONE);
    return false;
}

static bool move_queued(const struct px_session *s)
{
    return s->move_link.next != &s->move_link;
}

static void enqueue_move(struct px_session *s)
{
    s->move_waiting = true;
    if (!move_queued(s)) {
        ferry_list_insert_tail(&s->owner->to_move, &s->move_link);
        s->owner->nto_move++;
        PX_STAT_ADD(px_session_stats(s)->waiting_to_move, 1);
    }
}

/* s waits for its move (its old backend is gone); no timer runs for it. */
static void queue_move(struct px_session *s)
{
    uv_timer_stop(&s->timer);
    enqueue_move(s);
    s->owner->moves_blocked = false;
    schedule_moves(s->owner, 0);
}

static void unqueue_move(struct px_session *s)
{
    s->move_waiting = false;
    if (move_queued(s)) {
        ferry_list_remove(&s->move_link);
        s->owner->nto_move--;
        PX_STAT_ADD(px_session_stats(s)->waiting_to_move, -1);
    }
}

/* A connect failed and the session may wait: a background move queues
 * again (the queue rests, so an unreachable writer is not hammered); what
 * a client waits for is held (and retried on its own timer). */
static void wait_again(struct px_session *s, bool background)
{
    if (background && !s->parked) {
        s->owner->moves_retry_at = px_now_ms() + RETRY_CONNECT_MS;
        queue_move(s);
        return;
    }
    hold(s);
}

/* The backend failed and the session may wait: once the backend is gone
 * (on_server_dropped, or now if there is none) it waits again. */
static void drop_and_wait(struct px_session *s)
{
    if (s->server.open && !uv_is_closing((uv_handle_t *)&s->server.tcp)) {
        s->hold_after_drop = true;
        px_session_reconnect(s);
        return;
    }
    bool background = s->login == PX_LOGIN_BACKGROUND;
    login_set(s, PX_LOGIN_NONE);
    wait_again(s, background);
}

static void start_waiting_moves(uv_timer_t *t)
{
    struct px_worker *w = t->data;
    uint64_t now = px_now_ms();
    if (now < w->moves_retry_at) {
        schedule_moves(w, w->moves_retry_at - now);
        return;
    }
    /* each waiting session is looked at once: those whose listener has no
     * writer now (or while paused) go back to the end of the queue */
    unsigned tried = 0, started = 0, n = w->nto_move;
    while (tried < n && w->logins_waited_on == 0 && w->background_moves < BACKGROUND_MOVES &&
           !ferry_list_empty(&w->to_move) && px_now_ms() >= w->moves_retry_at) {
        struct px_session *s = ferry_container_of(w->to_move.next, struct px_session, move_link);
        unqueue_move(s);
        tried++;
        if (s->server.open || s->gai || s->closing || s->failing)
            continue;   /* connecting already (cannot happen: connect_now unqueues) */
        if (connect_now(s, PX_LOGIN_BACKGROUND))
            started++;
        else
            enqueue_move(s);    /* at the end: no route for it now */
    }
    if (tried == n && started == 0)
        w->moves_blocked = true;    /* nothing routable: the next topology looks again */
}

/* Looks at the waiting moves in ms (0: once this loop iteration is done,
 * so a burst of changes is looked at once). */
static void schedule_moves(struct px_worker *w, uint64_t ms)
{
    if (ferry_list_empty(&w->to_move) || w->moves_blocked)
        return;
    if (ms && uv_is_active((uv_handle_t *)&w->move_timer))
        return;     /* due sooner already */
    uv_timer_start(&w->move_timer, start_waiting_moves, ms, 0);
}

/* ---- logging in ahead of a promotion ----
 * libpq's multi-host failover keeps trying every host while there is no
 * writer, so its connection to the replica being promoted is often logged
 * in by the time the promotion ends. A proxy that starts its logins when it
 * sees the promotion adds a whole login to the window: ~30 ms on an idle
 * server here, 200-500 ms on one that takes every reconnecting client at
 * once (the drill). So a session that waits for a writer, and whose
 * protocol logs in by itself (terminated auth: can_prelogin), logs into the
 * candidate discovery names while there is no writer or the writer is in
 * doubt (the one healthy replica, px_route_candidate). Nothing of the
 * client's goes there: the login (and for a move the session's SETs and
 * prepared statements, which a hot standby takes) ends with the session
 * still held. When the candidate becomes the writer the relay starts at
 * once; when another cluster becomes (or stays) the writer, the session
 * moves there like any idle session; when the login fails, the session
 * waits as before (one try per topology snapshot). */

static void try_prelogin(struct px_session *s)
{
    struct px_worker *w = s->owner;
    if (s->server.open || s->gai || s->closing || s->failing || !w->topology ||
        s->prelogin_serial == w->topology->serial || !s->proto || !s->proto->can_prelogin ||
        !s->proto->can_prelogin(s) || px_session_paused(s))
        return;
    const char *cluster = NULL;
    const struct ferry_hostport *ep = px_route_candidate(s->lcfg, w->topology, &cluster);
    if (!ep)
        return;
    s->prelogin_serial = w->topology->serial;
    s->prelogin = true;
    s->prelogin_ready = false;
    route_to(s, cluster, ep, px_route_address(s->lcfg, w->topology, true));
}

static void prelogin_failed(struct px_session *s, const char *error)
{
    char esc[512];
    ferry_log(FERRY_LOG_INFO, "session.prelogin_failed",
              "listener=%s session=%llu cluster=%s backend=%s error=\"%s\"", s->pl->name,
              (unsigned long long)s->id, s->cluster, s->endpoint,
              ferry_log_escape(error, esc, sizeof esc));
    s->prelogin = s->prelogin_ready = false;
    uv_timer_stop(&s->timer);
    drop_and_wait(s);
}

static bool same_endpoint(const struct px_session *s, const char *cluster,
                          const struct ferry_hostport *ep)
{
    char text[FERRY_HOST_MAX + 16];
    ferry_hostport_format(ep, text, sizeof text);
    return strcmp(cluster, s->cluster) == 0 && strcmp(text, s->endpoint) == 0;
}

/* The login ahead of a promotion is done (or was, and the topology
 * changed): true when the relay starts now (the candidate is the writer);
 * otherwise the session waits on (no writer, or one in doubt while this is
 * still the candidate), or moves to the writer that is not this cluster (the
 * one promoted instead, or the writer in doubt that answered again). */
static bool prelogin_settle(struct px_session *s)
{
    const struct ferry_topology *topo = s->owner->topology;
    const char *cluster = NULL, *candidate = NULL;
    const struct ferry_hostport *writer = px_route(s->lcfg, topo, &cluster);
    const struct ferry_hostport *next = px_route_candidate(s->lcfg, topo, &candidate);
    bool is_writer = writer && same_endpoint(s, cluster, writer);
    if (!is_writer && (!writer || (next && same_endpoint(s, candidate, next)))) {
        if (!s->prelogin_ready) {
            s->prelogin_ready = true;
            ferry_log(FERRY_LOG_DEBUG, "session.ready_ahead_of_promotion",
                      "listener=%s session=%llu cluster=%s", s->pl->name,
                      (unsigned long long)s->id, s->cluster);
        }
        hold(s);    /* hold_timeout still counts */
        return false;
    }
    s->prelogin = s->prelogin_ready = false;
    unhold(s);
    if (is_writer) {
        set_topo_gen(s);
        return true;
    }
    uv_timer_stop(&s->timer);
    s->proto->writer_moved(s, false);    /* an early login: nothing was relayed */
    return false;
}

void px_session_moves_init(struct px_worker *w)
{
    ferry_list_init(&w->to_move);
    uv_timer_init(&w->loop, &w->move_timer);
    w->move_timer.data = w;
}

/* The protocol said the client's next request must wait (pause): keep a
 * copy of what was read, read nothing more from the client, and wait like a
 * new client waits for a writer. */
static void park(struct px_session *s, const char *data, size_t n)
{
    struct px_chunk *ch = malloc(sizeof *ch + n);
    if (!ch) {
        px_session_close(s, FERRY_LOG_ERROR, "out of memory for buffers");
        return;
    }
    ch->len = n;
    memcpy(ch->data, data, n);
    s->parked = ch;
    px_conn_stop_reading(&s->client);
    ferry_log(FERRY_LOG_DEBUG, "session.parked", "listener=%s session=%llu", s->pl->name,
              (unsigned long long)s->id);
    /* A move under way or waiting is now what a client waits for. */
    if (s->login == PX_LOGIN_BACKGROUND)
        login_set(s, PX_LOGIN_WAITED_ON);
    if (s->move_waiting) {
        bool dropping = s->server.open;     /* its old backend: on_server_dropped routes it */
        unqueue_move(s);
        if (!dropping) {
            px_session_route(s);
            return;
        }
    }
    hold(s);
}

/* Released: the kept request goes through the protocol again (which may
 * park it anew), then the client is read again. */
static void unpark(struct px_session *s);

void px_session_start_relay(struct px_session *s)
{
    if (s->prelogin && !prelogin_settle(s))
        return;
    login_set(s, PX_LOGIN_NONE);
    s->relaying = true;
    s->last_traffic = uv_now(&s->owner->loop);
    s->retry_connect = s->retry_soon = false;
    s->hold_until = 0;
    uv_timer_stop(&s->timer);   /* a protocol's login timer ends with the login */
    conn_start_reading(&s->server);
    if (s->parked)
        unpark(s);
    else
        conn_start_reading(&s->client);
}

static void unpark(struct px_session *s)
{
    struct px_chunk *ch = s->parked;
    s->parked = NULL;
    s->hold_until = 0;
    unhold(s);
    uv_timer_stop(&s->timer);
    relay(s, &s->client, ch->data, ch->len);     /* (may park a copy again) */
    free(ch);
    if (!s->parked && !s->client.paused)
        conn_start_reading(&s->client);
}

void px_conn_stop_reading(struct px_conn *c)
{
    if (c->open)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

void px_session_shutdown_server(struct px_session *s)
{
    conn_shutdown(&s->server);
}

ssize_t px_session_read_into(struct px_session *s, struct ferry_wbuf *into, ssize_t nread,
                             const uv_buf_t *buf)
{
    if (nread > 0 && into)
        ferry_wbuf_put(into, buf->base, (size_t)nread);
    px_session_free_buf(s, buf);
    return nread;
}

bool px_session_client_tls(struct px_session *s, const void *hello, size_t n, uv_read_cb cb)
{
    char err[256];
    s->client.tls = ferry_tls_new(s->lcfg->tls_server_ctx, NULL, err, sizeof err);
    if (!s->client.tls) {
        px_session_close(s, FERRY_LOG_ERROR, err);
        return false;
    }
    ferry_tls_set_limit(s->client.tls, s->lcfg->session_buffer);
    if (n && ferry_tls_feed(s->client.tls, hello, n) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "TLS from the client failed");
        return false;
    }
    px_conn_stop_reading(&s->client);   /* reads go through the engine from here */
    if (px_conn_read_start(&s->client, cb) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "read start failed");
        return false;
    }
    return true;
}

bool px_session_ask(struct px_session *s, struct px_conn *c, struct ferry_wbuf *b, uv_read_cb cb,
                    uint64_t ms)
{
    if (px_session_write(s, c, b, false) != 0) {
        px_session_close(s, FERRY_LOG_INFO, c == &s->client ? "client write failed"
                                                             : "server write failed");
        return false;
    }
    if (px_conn_read_start(c, cb) != 0) {
        px_session_close(s, FERRY_LOG_INFO, "read start failed");
        return false;
    }
    if (ms)
        px_session_arm_timer(s, ms);
    else
        uv_timer_stop(&s->timer);
    return true;
}

void px_session_arm_timer(struct px_session *s, uint64_t ms)
{
    uv_timer_start(&s->timer, on_timer, ms, 0);
}

void px_session_writer_moved_text(const struct px_session *s, char *out, size_t len, bool in_txn)
{
    snprintf(out, len, "the writer of listener %s moved away from %s; %s", s->pl->name, s->cluster,
             in_txn ? "this session's transaction was rolled back; retry it on a new connection"
                    : "reconnect to reach the new writer");
}

void px_session_probe_now(const struct px_session *s)
{
    if (s->lcfg->probe_enabled && px_proc.discovery)
        ferry_discovery_probe_now(px_proc.discovery);
}

bool px_session_may_reveal_password(const struct px_session *s)
{
    if (s->lcfg->backend_allow_insecure_password)
        return true;
    const struct ferry_tls_ctx *ctx = s->lcfg->tls_backend_ctx;
    /* a verifying context ends the handshake on a bad certificate, so TLS
     * that carries data under one is TLS to a verified server */
    return s->server.tls && ctx && ferry_tls_ctx_mode(ctx) >= FERRY_TLS_VERIFY_CA;
}

void px_session_insecure_password_text(const struct px_session *s, const char *asked,
                                       char *out, size_t len)
{
    const struct ferry_tls_ctx *ctx = s->lcfg->tls_backend_ctx;
    snprintf(out, len, "the server asked for %s, which it could read, over %s; ferry sends "
             "it only to a server it verified (backend_tls.mode verify-full or verify-ca) "
             "unless backend_tls.allow_insecure_password is true", asked,
             !s->server.tls ? "a connection without TLS"
                            : ctx ? "TLS without certificate verification" : "TLS");
}

static void conn_start_reading(struct px_conn *c)
{
    if (c->reading || c->eof || c->owner->closing)
        return;
    if (px_conn_read_start(c, on_read) != 0)
        px_session_close(c->owner, FERRY_LOG_INFO, "read start failed");
}

/* ---- TLS on a connection: decrypt reads, encrypt writes ----
 * The engine (proxy/tls.c) works on memory buffers; here its ciphertext
 * meets the socket. Plaintext is handed to the connection's read callback
 * in the read buffer, exactly as if it had been read, so the relay and the
 * protocols do not know TLS is there. */

static void tls_failed(struct px_session *s, struct px_conn *c)
{
    char reason[FERRY_HOST_MAX + FERRY_NAME_MAX + 400];
    if (c == &s->server)
        snprintf(reason, sizeof reason, "TLS with the writer %s (%s) failed: %s", s->cluster,
                 s->endpoint, ferry_tls_error(c->tls));
    else
        snprintf(reason, sizeof reason, "TLS with the client failed: %s", ferry_tls_error(c->tls));
    struct ferry_wbuf alert;   /* a fatal alert may be waiting: send it, then close */
    ferry_wbuf_init(&alert, 0);
    if (ferry_tls_take_out(c->tls, &alert) > 0) {
        uv_buf_t b = uv_buf_init((char *)alert.data, (unsigned)alert.len);
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    }
    ferry_wbuf_free(&alert);
    if (c == &s->server) {      /* the client is fine: tell it why */
        px_conn_stop_reading(c);
        px_session_fail(s, PX_ERR_BACKEND_DOWN, reason);
        return;
    }
    px_session_close(s, FERRY_LOG_INFO, reason);
}

int px_conn_tls_flush(struct px_session *s, struct px_conn *c)
{
    return tls_send(s, c, false);
}

static int write_raw(struct px_session *s, struct px_conn *conn, struct ferry_wbuf *buf,
                     bool close_after);

/* Sends whatever ciphertext the engine has (handshake messages, records);
 * close_after: end the session once it is written (even if it is none). */
static int tls_send(struct px_session *s, struct px_conn *c, bool close_after)
{
    if (!close_after && !ferry_tls_pending_out(c->tls))
        return 0;
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    if (ferry_tls_take_out(c->tls, &out) < 0) {
        ferry_wbuf_free(&out);
        return UV_ENOMEM;
    }
    return write_raw(s, c, &out, close_after);
}

/* Hands the engine's plaintext to the read callback while it reads. */
static void tls_drain(struct px_session *s, struct px_conn *c)
{
    c->in_tls_loop = true;
    while (c->reading && !s->closing && !s->failing) {
        uv_buf_t plain;
        px_session_alloc((uv_handle_t *)&c->tcp, FERRY_READ_SIZE, &plain);
        if (!plain.base) {
            px_session_close(s, FERRY_LOG_ERROR, "out of memory for buffers");
            break;
        }
        ssize_t n = ferry_tls_read(c->tls, plain.base, plain.len);
        if (n > 0) {
            c->plain_cb((uv_stream_t *)&c->tcp, n, &plain);
            continue;
        }
        px_session_free_buf(s, &plain);
        if (n == FERRY_TLS_CLOSED) {
            uv_buf_t none = uv_buf_init(NULL, 0);
            c->plain_cb((uv_stream_t *)&c->tcp, UV_EOF, &none);
        } else if (n == FERRY_TLS_ERROR) {
            c->in_tls_loop = false;
            tls_failed(s, c);
            return;
        }
        break;
    }
    c->in_tls_loop = false;
    if (!s->closing && tls_send(s, c, false) != 0)
        px_session_close(s, FERRY_LOG_INFO, "write failed");
}

static void on_tls_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct px_conn *c = stream->data;
    struct px_session *s = c->owner;
    if (nread <= 0) {
        c->plain_cb(stream, nread, buf);    /* EOF or an error: as without TLS */
        return;
    }
    int rc = ferry_tls_feed(c->tls, buf->base, (size_t)nread);
    px_session_free_buf(s, buf);
    if (rc < 0) {
        tls_failed(s, c);
        return;
    }
    tls_drain(s, c);
}

int px_conn_read_start(struct px_conn *c, uv_read_cb cb)
{
    if (!c->tls) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, px_session_alloc, cb);
        c->reading = rc == 0;
        return rc;
    }
    c->plain_cb = cb;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, px_session_alloc, on_tls_read);
    c->reading = rc == 0;
    /* records already decrypted but not handed out (reading had stopped):
     * the socket may stay silent, so hand them out now (an outer drain
     * loop of this connection goes on by itself) */
    if (rc == 0 && !c->in_tls_loop && ferry_tls_buffered(c->tls))
        tls_drain(c->owner, c);
    return rc;
}

/* ---- errors ferry sends before any server has spoken ---- */

/* Writes bytes that ferry made (taking buf's memory) to conn: plaintext
 * goes through conn's TLS engine first. */
int px_session_write(struct px_session *s, struct px_conn *conn, struct ferry_wbuf *buf,
                       bool close_after)
{
    if (!conn->tls)
        return write_raw(s, conn, buf, close_after);
    int rc = buf->failed ? FERRY_TLS_ERROR : ferry_tls_write(conn->tls, buf->data, buf->len);
    ferry_wbuf_free(buf);
    if (rc < 0)
        return UV_ENOMEM;
    return tls_send(s, conn, close_after);
}

/* Writes bytes as they are (taking buf's memory) to conn's socket, in
 * order with relayed bytes; they count towards backpressure like them. */
static int write_raw(struct px_session *s, struct px_conn *conn, struct ferry_wbuf *buf,
                     bool close_after)
{
    int rc = buf->failed ? UV_ENOMEM : conn_write(s, conn, buf->data, buf->len, close_after);
    ferry_wbuf_free(buf);
    if (rc == 0 && close_after)
        conn->close_when_sent = true;
    return rc;
}

/* Sends one error message to the client, then closes the session. */
void px_session_send_error(struct px_session *s, enum px_err kind, const char *text)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 4096);
    px_error_message(s->lcfg->protocol, kind, text, &b);
    if (px_session_write(s, &s->client, &b, true) != 0)
        px_session_close(s, FERRY_LOG_INFO, text);
}

void px_session_count_error(struct px_session *s, enum px_err kind)
{
    struct px_counters *c = px_session_stats(s);
    switch (kind) {
    case PX_ERR_PROTOCOL:
    case PX_ERR_UNSUPPORTED:
        PX_STAT_ADD(c->errors_protocol, 1);
        break;
    case PX_ERR_AUTH_FAILED:
    case PX_ERR_TLS_REQUIRED:
        PX_STAT_ADD(c->errors_auth, 1);
        break;
    case PX_ERR_WRITER_MOVED:
    case PX_ERR_TXN_LOST:
    case PX_ERR_OUTCOME_UNKNOWN:
        PX_STAT_ADD(c->errors_failover, 1);
        break;
    default:    /* too many clients, no writer, backend down, login timeout: counted where
                   they happen */
        break;
    }
}

void px_session_fail(struct px_session *s, enum px_err kind, const char *text)
{
    if (s->closing || s->failing)
        return;
    s->failing = true;
    px_session_count_error(s, kind);
    char esc[512];      /* the text may quote a client's user name */
    /* refusals and login timeouts are a peer's doing, at its own rate: the
     * rate-limited listener.connection_refused / session.login_timeout
     * lines tell of them, as backend.connect_failed does of descriptors
     * running out */
    bool peer_paced = kind == PX_ERR_TOO_MANY_CLIENTS || kind == PX_ERR_LOGIN_TIMEOUT ||
                      s->out_of_fds;
    ferry_log(peer_paced ? FERRY_LOG_DEBUG : FERRY_LOG_INFO, "session.failed", "listener=%s session=%llu reason=\"%s\"",
              s->pl->name, (unsigned long long)s->id, ferry_log_escape(text, esc, sizeof esc));
    uv_timer_stop(&s->timer);
    if (s->proto && s->proto->defer_error && s->proto->defer_error(s, kind, text))
        return;
    px_session_send_error(s, kind, text);
}

/* ---- a backend the server ended ----
 * A session moves only because the writer moved. A backend that ends
 * while the session's writer generation is current may be the server
 * ending that one session (KILL, wait_timeout, pg_terminate_backend,
 * idle_session_timeout): the client must see that, as it would directly,
 * and not carry on in a new session without its temporary tables, locks
 * and variables. It may also be the first sign of the writer going down
 * (a crash or shutdown closes every backend before discovery notices),
 * and then an idle session should move as before. The two look alike on
 * the connection, so discovery decides: a probe starts now, and the
 * session waits (without a backend, its client not read) until the worker
 * sees a new writer generation (moved) or discovery's writer answers a
 * probe that began after the loss (healthy: the server ended the session
 * on its own). A verdict that takes longer than hold_timeout ends the
 * session: the writer stayed in doubt without being replaced. */

enum { VERDICT_POLL_MS = 25 };

void px_session_end_by_server(struct px_session *s, const char *why)
{
    if (s->closing || s->failing)
        return;
    s->failing = true;
    s->verdict_wait = false;
    PX_STAT_ADD(px_session_stats(s)->ended_by_server, 1);
    char esc[256];
    ferry_log(FERRY_LOG_INFO, "session.ended_by_server",
              "listener=%s session=%llu cluster=%s reason=\"%s\"", s->pl->name,
              (unsigned long long)s->id, s->cluster, ferry_log_escape(why, esc, sizeof esc));
    uv_timer_stop(&s->timer);
    px_conn_stop_reading(&s->server);
    px_conn_stop_reading(&s->client);
    struct ferry_wbuf said = s->server_said;  /* may be empty: then only the close */
    s->server_said = (struct ferry_wbuf){0};
    int rc = said.len           ? px_session_write(s, &s->client, &said, true)
             : s->client.tls    ? tls_send(s, &s->client, true)
                                : write_raw(s, &s->client, &said, true);
    if (rc != 0)
        px_session_close(s, FERRY_LOG_INFO, "client write failed");
}

static void on_verdict_poll(uv_timer_t *t)
{
    struct px_session *s = t->data;
    if (s->closing || s->failing || !s->verdict_wait)
        return;
    const char *name = s->lcfg->name;
    const struct ferry_topology_listener *tl = ferry_topology_find(s->owner->topology, name);
    if (!tl || tl->generation != s->topo_gen) {
        /* the writer moved (this worker's snapshot says so, so routing
         * goes to the new one): the move goes on as after a topology */
        s->verdict_wait = false;
        ferry_wbuf_free(&s->server_said);   /* the old writer's goodbye is not the client's */
        s->stale = true;
        s->proto->writer_moved(s, tl && tl->cut_old);
        if (!s->failing)    /* moving: its next request parks until the move is done */
            conn_start_reading(&s->client);
        return;
    }
    enum ferry_writer_verdict v =
        ferry_discovery_writer_verdict(px_proc.discovery, name, s->topo_gen, s->lost_ns);
    uint64_t waited_ms = (uv_hrtime() - s->lost_ns) / 1000000u;
    if (v == FERRY_VERDICT_HEALTHY) {
        px_session_end_by_server(s, s->server_said.len ? "the server ended the session; "
                                 "its writer answers probes" : "the server closed the connection; "
                                 "its writer answers probes");
        return;
    }
    if (waited_ms > (uint64_t)(s->cfg->discovery.hold_timeout * 1000.0)) {
        px_session_end_by_server(s, "the connection ended and the writer stayed in doubt past "
                                 "hold_timeout without being replaced");
        return;
    }
    uv_timer_start(&s->timer, on_verdict_poll, VERDICT_POLL_MS, 0);
}

void px_session_await_verdict(struct px_session *s, const char *why)
{
    if (!s->lcfg->probe_enabled || !px_proc.discovery) {
        px_session_end_by_server(s, why);   /* a static writer never moves */
        return;
    }
    char esc[256];
    ferry_log(FERRY_LOG_INFO, "session.backend_ended", "listener=%s session=%llu cluster=%s "
              "reason=\"%s\" action=\"asking discovery whether the writer moved\"",
              s->pl->name, (unsigned long long)s->id, s->cluster,
              ferry_log_escape(why, esc, sizeof esc));
    s->verdict_wait = true;
    s->lost_ns = uv_hrtime();
    px_conn_stop_reading(&s->client);
    px_session_reconnect(s);    /* drops the backend; on_server_dropped routes nothing */
    px_session_probe_now(s);
    uv_timer_start(&s->timer, on_verdict_poll, VERDICT_POLL_MS, 0);
}

/* ---- backend connect ---- */

void px_session_backend_failed(struct px_session *s, const char *error)
{
    if (s->prelogin) {
        prelogin_failed(s, error);
        return;
    }
    PX_STAT_ADD(px_session_stats(s)->backend_connect_failed, 1);
    /* Live traffic found the writer unreachable: look now, not at the next tick. */
    px_session_probe_now(s);
    char esc[512];
    if (s->out_of_fds)  /* every new client fails the same way: once a second */
        ferry_log_limited(&s->pl->log_out_of_fds, FERRY_LOG_WARN, "backend.connect_failed",
                          "listener=%s cluster=%s backend=%s error=\"%s\"", s->pl->name,
                          s->cluster, s->endpoint, ferry_log_escape(error, esc, sizeof esc));
    else
        ferry_log(FERRY_LOG_WARN, "backend.connect_failed",
                  "listener=%s session=%llu cluster=%s backend=%s error=\"%s\"", s->pl->name,
                  (unsigned long long)s->id, s->cluster, s->endpoint,
                  ferry_log_escape(error, esc, sizeof esc));
    if (s->retry_connect && !s->failing && !s->closing) {
        /* a session that may wait keeps its client: wait for the next
         * topology, and try again shortly in case the writer stays */
        s->retry_soon = true;
        s->connected = false;
        uv_timer_stop(&s->timer);
        drop_and_wait(s);
        return;
    }
    char text[400];
    snprintf(text, sizeof text, "cannot reach the writer %s (%s): %s", s->cluster, s->endpoint,
             error);
    px_session_fail(s, PX_ERR_BACKEND_DOWN, text);
}

static void hold_expired(struct px_session *s)
{
    unhold(s);
    PX_STAT_ADD(px_session_stats(s)->hold_timeouts, 1);
    char text[300];
    if (px_listener_paused(s->pl))
        snprintf(text, sizeof text, "listener %s is paused by the operator; gave up after %gs",
                 s->pl->name, s->cfg->discovery.hold_timeout);
    else if (px_listener_holding(s->pl))
        snprintf(text, sizeof text, "listener %s is held for a switchover; gave up after %gs",
                 s->pl->name, s->cfg->discovery.hold_timeout);
    else
        snprintf(text, sizeof text, "no writer for listener %s after waiting %gs", s->pl->name,
                 s->cfg->discovery.hold_timeout);
    px_session_fail(s, PX_ERR_NO_WRITER, text);
}

static void on_timer(uv_timer_t *t)
{
    struct px_session *s = t->data;
    if (s->proto && s->proto->timer && s->proto->timer(s))
        return;
    char error[64];
    snprintf(error, sizeof error, "timed out after %gs", s->lcfg->connect_timeout);
    if (s->prelogin && !s->prelogin_ready) {
        px_session_backend_failed(s, error);    /* the candidate: the session waits on */
        return;
    }
    uint64_t now = px_now_ms();
    if (s->held && s->retry_soon && now < s->hold_until && !s->server.open) {
        /* the writer refused or timed out: discovery has been asked to look,
         * and may well keep it (a blip); try it again meanwhile */
        s->retry_soon = false;
        if (connect_now(s, PX_LOGIN_WAITED_ON))
            unhold(s);
        else
            hold(s);
        return;
    }
    if (s->held && now < s->hold_until) {
        hold(s);    /* a retry tick while logged in ahead of a promotion */
        return;
    }
    if (s->held) {
        hold_expired(s);
        return;
    }
    px_session_backend_failed(s, error);
}

/* Nagle off, and the listener's keepalive (and towards backends
 * TCP_USER_TIMEOUT: a partitioned writer is noticed in seconds). */
static void tune_tcp(struct px_session *s, struct px_conn *c, const struct ferry_tcp_cfg *cfg)
{
    uv_tcp_nodelay(&c->tcp, 1);
    int fd = -1;
    int rc = uv_fileno((uv_handle_t *)&c->tcp, &fd);
    if (rc == 0)
        rc = ferry_tcp_apply(fd, cfg);
    if (rc != 0)
        ferry_log(FERRY_LOG_DEBUG, "session.tcp_options_failed",
                  "listener=%s session=%llu side=%s error=\"%s\"", s->pl->name,
                  (unsigned long long)s->id, c->name, uv_strerror(rc));
}

static void on_connected(uv_connect_t *req, int status)
{
    struct px_session *s = req->data;
    if (status == UV_ECANCELED || s->closing)
        return;
    if (status < 0) {
        px_session_backend_failed(s, uv_strerror(status));
        return;
    }
    uv_timer_stop(&s->timer);
    s->connected = true;
    s->server.counted = true;
    PX_STAT_ADD(px_session_stats(s)->backends, 1);
    tune_tcp(s, &s->server, &s->lcfg->server_tcp);
    ferry_log(FERRY_LOG_DEBUG, "session.connected", "listener=%s session=%llu backend=%s",
              s->pl->name, (unsigned long long)s->id, s->endpoint);
    if (s->proto && s->proto->connected && !s->proto->connected(s))
        return;
    px_session_start_relay(s);
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
    s->out_of_fds = rc == UV_EMFILE || rc == UV_ENFILE;
    if (rc != 0)
        px_session_backend_failed(s, uv_strerror(rc));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct px_session *s = req->data;
    free(req);
    s->gai = NULL;
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
        px_session_backend_failed(s, error);
        return;
    }
    connect_to(s, res->ai_addr);
    uv_freeaddrinfo(res);
}

/* Literal addresses connect at once, and so do names discovery resolved for
 * this route (addr: the address its probe found writable, so a session goes
 * exactly where the probe looked, and a connection storm costs no lookups);
 * other names go through the libuv threadpool. */
static void start_backend(struct px_session *s, const struct ferry_hostport *ep, const char *addr)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    const char *host = addr ? addr : ep->host;
    if (uv_ip4_addr(host, ep->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, ep->port, (struct sockaddr_in6 *)&ss) == 0) {
        connect_to(s, (struct sockaddr *)&ss);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    char port[8];
    snprintf(port, sizeof port, "%u", ep->port);
    /* allocated per lookup: an idle session should not carry it */
    uv_getaddrinfo_t *req = malloc(sizeof *req);
    if (!req) {
        px_session_backend_failed(s, "out of memory");
        return;
    }
    req->data = s;
    int rc = uv_getaddrinfo(&s->owner->loop, req, on_resolved, ep->host, port, &hints);
    if (rc != 0) {
        free(req);
        px_session_backend_failed(s, uv_strerror(rc));
        return;
    }
    s->gai = req;
}

/* Routes s and starts connecting; false (nothing started) when there is no
 * writer to route to. */
/* Connects s to ep of cluster (the route's or a candidate's); false: out of
 * memory for the endpoint's name. */
static bool route_to(struct px_session *s, const char *cluster, const struct ferry_hostport *ep,
                     const char *addr)
{
    snprintf(s->cluster, sizeof s->cluster, "%s", cluster);
    char text[FERRY_HOST_MAX + 16];
    ferry_hostport_format(ep, text, sizeof text);
    if (strcmp(text, s->endpoint) != 0) {
        char *copy = strdup(text);
        if (!copy)
            return false;   /* held; the hold timeout ends it */
        if (s->endpoint != NO_ENDPOINT)
            free((char *)s->endpoint);
        s->endpoint = copy;
    }
    ferry_log(FERRY_LOG_DEBUG, "session.routed", "listener=%s session=%llu cluster=%s backend=%s%s",
              s->pl->name, (unsigned long long)s->id, s->cluster, s->endpoint,
              s->prelogin ? " ahead_of_promotion=yes" : "");
    uv_timer_start(&s->timer, on_timer, (uint64_t)(s->lcfg->connect_timeout * 1000.0), 0);
    start_backend(s, ep, addr);
    return true;
}

static void set_topo_gen(struct px_session *s)
{
    const struct ferry_topology_listener *t = ferry_topology_find(s->owner->topology, s->lcfg->name);
    s->topo_gen = t ? t->generation : 0;
}

static bool route_and_connect(struct px_session *s)
{
    if (px_session_paused(s))
        return false;   /* POST /v1/pause, a switchover: hold like a failover window */
    const char *cluster = NULL;
    const struct ferry_hostport *ep = px_route(s->lcfg, s->owner->topology, &cluster);
    if (!ep)
        return false;
    set_topo_gen(s);
    return route_to(s, cluster, ep, px_route_address(s->lcfg, s->owner->topology, false));
}

/* ---- client_idle_timeout ----
 * Idle clients are looked for once a second by one timer per worker, which
 * runs only while a session of a listener with a timeout is open (as
 * PgBouncer's janitor does): a timer per session would cost every idle pair
 * its memory. A session is idle when its protocol says so (logged in, no
 * request in flight, outside a transaction) and ferry is doing nothing for
 * it (no wait for a writer, no parked request, no login; waiting to move
 * without a backend counts as idle). Idle time counts from the last bytes
 * relayed either way, so a statement's answer or a NOTIFY restarts it. */

static bool session_idle(const struct px_session *s)
{
    if (!s->counted || s->closing || s->failing || s->held || s->parked || !s->proto ||
        !s->proto->idle)
        return false;
    if (!s->relaying && !(s->move_waiting && !s->server.open))
        return false;
    return s->proto->idle(s);
}

static void idle_expired(struct px_session *s)
{
    PX_STAT_ADD(px_session_stats(s)->idle_timeouts, 1);
    char text[200];
    snprintf(text, sizeof text, "terminating connection due to idle-session timeout "
             "(client_idle_timeout %gs of listener %s)", s->lcfg->client_idle_timeout, s->pl->name);
    px_conn_stop_reading(&s->server);   /* nothing of the server's after the error */
    px_session_fail(s, PX_ERR_IDLE_TIMEOUT, text);
}

static void idle_sweep(uv_timer_t *t)
{
    struct px_worker *w = t->data;
    uint64_t now = uv_now(&w->loop);
    struct ferry_list *it = w->sessions.next;
    while (it != &w->sessions) {
        struct px_session *s = ferry_container_of(it, struct px_session, link);
        it = it->next;  /* closing frees s only in later callbacks */
        double limit = s->lcfg->client_idle_timeout;
        if (limit > 0 && now - s->last_traffic >= (uint64_t)(limit * 1000.0) && session_idle(s))
            idle_expired(s);
    }
}

void px_session_idle_init(struct px_worker *w)
{
    uv_timer_init(&w->loop, &w->idle_timer);
    w->idle_timer.data = w;
}

/* ---- accept ---- */

/* The client's "ip:port" for logs, and its address for the login limits. */
static void format_peer(const uv_tcp_t *t, char *out, size_t len, struct px_source *src)
{
    struct sockaddr_storage ss;
    int n = sizeof ss;
    char ip[64] = "?";
    int port = 0;
    memset(src, 0, sizeof *src);
    if (uv_tcp_getpeername(t, (struct sockaddr *)&ss, &n) == 0) {
        src->family = (uint8_t)ss.ss_family;
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            memcpy(src->addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            memcpy(src->addr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
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
            "cluster", s->connected || s->gai || s->server.open ? s->cluster : NULL,
            "backend", s->server.open ? s->endpoint : NULL,
            "age_seconds", (double)(now - s->created_ms) / 1000.0,
            "bytes_from_client", (json_int_t)s->bytes_from_client,
            "bytes_from_server", (json_int_t)s->bytes_from_server, "worker", (int)w->index));
        json_t *last = json_array_get(c->sessions, json_array_size(c->sessions) - 1);
        if (s->proto && s->proto->describe)
            s->proto->describe(s, last);
    }
    c->pending--;
    pthread_cond_broadcast(&c->done);
    pthread_mutex_unlock(&c->lock);
}

/* One line a second per listener and cause, not one per client. */
static void log_refusal(struct px_accepting *a, enum px_refusal why, const struct px_session *s)
{
    struct px_worker *w = a->owner;
    PX_STAT_ADD(a->pl->stats[w->index].refused, 1);
    const struct ferry_listener_cfg *l = a->lcfg;
    char reason[96];
    if (why == PX_REFUSE_CLIENTS)
        snprintf(reason, sizeof reason, "max_client_connections %u reached",
                 l->max_client_connections);
    else if (why == PX_REFUSE_LOGINS)
        snprintf(reason, sizeof reason, "max_login_clients %u reached", l->max_login_clients);
    else
        snprintf(reason, sizeof reason, "max_login_clients_per_source %u reached",
                 l->max_login_clients_per_source);
    ferry_log_limited(&a->pl->log_refused[why], FERRY_LOG_WARN, "listener.connection_refused",
                      "listener=%s client=%s reason=\"%s\" refused_total=%llu", a->pl->name,
                      s->peer, reason,
                      (unsigned long long)PX_STAT_GET(a->pl->stats[w->index].refused));
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

static void on_login_timer(uv_timer_t *t)
{
    struct px_session *s = t->data;
    if (s->closing || s->failing || s->logged_in)
        return;
    login_slot_release(s);
    PX_STAT_ADD(px_session_stats(s)->login_timeouts, 1);
    ferry_log_limited(&s->pl->log_login_timeout, FERRY_LOG_WARN, "session.login_timeout",
                      "listener=%s session=%llu client=%s client_login_timeout=%g", s->pl->name,
                      (unsigned long long)s->id, s->peer, s->lcfg->client_login_timeout);
    char text[FERRY_NAME_MAX + 160];
    snprintf(text, sizeof text, "login timeout: the client did not complete its login within "
             "%gs (client_login_timeout of listener %s)", s->lcfg->client_login_timeout,
             s->pl->name);
    px_session_fail(s, PX_ERR_LOGIN_TIMEOUT, text);
}

void px_session_logged_in(struct px_session *s)
{
    if (s->logged_in)
        return;
    s->logged_in = true;
    s->login_left_ms = 0;
    uv_timer_stop(&s->login_timer);
    login_slot_release(s);
}

/* Which limit a new client from s->source would pass, if any; takes its
 * max_client_connections slot (s->counted) and login slot when none. */
static enum px_refusal admit(struct px_accepting *a, struct px_session *s)
{
    uint32_t n = __atomic_add_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
    if (n > a->lcfg->max_client_connections) {
        __atomic_sub_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
        return PX_REFUSE_CLIENTS;
    }
    enum px_refusal why = px_listener_login_begin(a->pl, &s->source, a->lcfg->max_login_clients,
                                                  a->lcfg->max_login_clients_per_source);
    if (why != PX_REFUSE_NONE) {
        __atomic_sub_fetch(&a->pl->clients, 1, __ATOMIC_RELAXED);
        return why;
    }
    s->counted = s->login_slot = true;
    PX_STAT_ADD(px_session_stats(s)->active, 1);
    PX_STAT_ADD(px_session_stats(s)->accepted, 1);
    return PX_REFUSE_NONE;
}

/* The refusal in the client's protocol; no backend is contacted. */
static void refuse(struct px_accepting *a, struct px_session *s, enum px_refusal why)
{
    log_refusal(a, why, s);
    const struct ferry_listener_cfg *l = a->lcfg;
    char text[FERRY_NAME_MAX + 160];
    if (why == PX_REFUSE_CLIENTS)
        snprintf(text, sizeof text, "too many clients on listener %s (max_client_connections %u)",
                 a->pl->name, l->max_client_connections);
    else if (why == PX_REFUSE_LOGINS)
        snprintf(text, sizeof text, "too many clients logging in on listener %s "
                 "(max_login_clients %u)", a->pl->name, l->max_login_clients);
    else
        snprintf(text, sizeof text, "too many clients logging in from this address on listener "
                 "%s (max_login_clients_per_source %u)", a->pl->name,
                 l->max_login_clients_per_source);
    px_session_fail(s, PX_ERR_TOO_MANY_CLIENTS, text);
}

void px_session_accept(struct px_accepting *a)
{
    struct px_worker *w = a->owner;
    struct px_session *s = calloc(1, sizeof *s);
    if (!s) {
        drop_connection(a);
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
    if (s->lcfg->client_idle_timeout > 0 && w->nidle_timed++ == 0)
        uv_timer_start(&w->idle_timer, idle_sweep, IDLE_SWEEP_MS, IDLE_SWEEP_MS);
    ferry_list_init(&s->held_link);
    ferry_list_init(&s->move_link);
    w->nsessions++;

    uv_tcp_init(&w->loop, &s->client.tcp);
    s->client.tcp.data = &s->client;
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    uv_timer_init(&w->loop, &s->login_timer);
    s->login_timer.data = s;
    s->endpoint = NO_ENDPOINT;
    strcpy(s->cluster, "-");
    int rc = uv_accept((uv_stream_t *)&a->tcp, (uv_stream_t *)&s->client.tcp);
    if (rc != 0) {
        px_session_close(s, FERRY_LOG_DEBUG, "accept failed");
        return;
    }
    tune_tcp(s, &s->client, &s->lcfg->client_tcp);
    s->created_ms = px_now_ms();
    format_peer(&s->client.tcp, s->peer, sizeof s->peer, &s->source);
    /* Over a limit the connection still becomes a session, but only to be
     * told why in its own protocol and closed; it counts nowhere, and the
     * protocol's begin hook contacts no backend for it. */
    enum px_refusal refused = admit(a, s);
    if (!refused)
        uv_timer_start(&s->login_timer, on_login_timer,
                       (uint64_t)(s->lcfg->client_login_timeout * 1000.0), 0);
    s->proto = s->lcfg->protocol == FERRY_PROTO_POSTGRESQL ? &px_proto_pg : &px_proto_mysql;
    if (s->proto && s->proto->begin)
        s->proto->begin(s);
    if (refused) {
        if (!s->closing)
            refuse(a, s, refused);
        return;
    }
    ferry_log(FERRY_LOG_DEBUG, "session.accepted", "listener=%s session=%llu", s->pl->name,
              (unsigned long long)s->id);
    if (!s->proto || !s->proto->begin)
        px_session_route(s);   /* else the protocol routes after its client phase */
}

/* Routes the session, or holds it while there is no writer. */
void px_session_route(struct px_session *s)
{
    /* With discovery, an unreachable writer may be failing over: the
     * client waits for the next one (up to hold_timeout) rather than
     * getting an error; a static route has nothing to wait for. */
    if (s->lcfg->probe_enabled && !s->relaying)
        s->retry_connect = true;
    if (!connect_now(s, PX_LOGIN_WAITED_ON)) {
        /* No writer now: wait for one instead of failing (the failover window). */
        hold(s);
        ferry_log(FERRY_LOG_DEBUG, "session.held", "listener=%s session=%llu hold_timeout=%g",
                  s->pl->name, (unsigned long long)s->id, s->cfg->discovery.hold_timeout);
    }
}

/* A new topology: sessions routed under an older writer generation must
 * not send anything more to it. What happens to them is the protocol's
 * call (a plain relay keeps its connection). */
void px_session_topology_changed(struct px_worker *w)
{
    struct ferry_list *it = w->sessions.next;
    while (it != &w->sessions) {
        struct px_session *s = ferry_container_of(it, struct px_session, link);
        it = it->next;
        if (!s->proto || !s->proto->writer_moved || !s->lcfg->probe_enabled || !s->connected ||
            s->closing || s->failing || s->stale || s->prelogin)
            continue;   /* (a login ahead of a promotion: px_session_release_held) */
        const struct ferry_topology_listener *t = ferry_topology_find(w->topology, s->lcfg->name);
        if (t && t->generation == s->topo_gen)
            continue;
        s->stale = true;
        s->proto->writer_moved(s, t && t->cut_old);
    }
}

void px_session_release_held(struct px_worker *w)
{
    struct ferry_list *it = w->held.next;
    while (it != &w->held) {
        struct px_session *s = ferry_container_of(it, struct px_session, held_link);
        it = it->next;
        if (s->closing || s->failing || px_session_paused(s))
            continue;   /* (paused: nothing of its listener may start yet) */
        if (s->parked && s->relaying) {
            unpark(s);  /* may end s; `it` was taken before */
            continue;
        }
        if (s->prelogin) {
            /* one still logging in decides when its login is done */
            if (s->prelogin_ready && prelogin_settle(s))
                px_session_start_relay(s);
            continue;
        }
        if (s->server.open)
            continue;   /* connecting, logging in, or dropping its old backend: it
                           goes on by itself (a second connect would reuse the handle) */
        if (!connect_now(s, PX_LOGIN_WAITED_ON))
            continue;
        unhold(s);
    }
    /* a new writer (or the end of a pause): waiting moves may start again */
    w->moves_blocked = false;
    w->moves_retry_at = 0;
    schedule_moves(w, 0);
}

bool px_session_paused(const struct px_session *s)
{
    return px_listener_paused(s->pl) || px_listener_holding(s->pl);
}
