/* A worker thread: one libuv loop that owns its listening handles and every
 * session accepted on them, so the per-connection path takes no locks. The
 * main thread talks to it only through the inbox (mutex + uv_async_send).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/log.h"
#include "proxy.h"

static void on_accepting_closed(uv_handle_t *h)
{
    struct px_accepting *a = h->data;
    px_listener_unref(a->pl);
    free(a);
}

static void stop_accepting(struct px_accepting *a)
{
    ferry_list_remove(&a->link);
    uv_close((uv_handle_t *)&a->tcp, on_accepting_closed);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct px_accepting *a = server->data;
    if (status < 0) {
        /* out of descriptors, libuv calls back for every queued connection
         * on every loop turn (thousands of lines a second): one per cause */
        unsigned cause = status == UV_EMFILE ? 0 : status == UV_ENFILE ? 1 : 2;
        ferry_log_limited(&a->pl->log_accept_failed[cause], FERRY_LOG_WARN,
                          "listener.accept_failed", "listener=%s error=\"%s\"", a->pl->name,
                          uv_strerror(status));
        return;
    }
    px_session_accept(a);
}

/* Adopts this worker's socket of pl and starts listening on it. */
static int start_accepting(struct px_worker *w, struct px_listener *pl,
                           const struct ferry_listener_cfg *lcfg)
{
    int fd = pl->fds[w->index];
    struct px_accepting *a = calloc(1, sizeof *a);
    if (!a || fd < 0) {
        free(a);
        return UV_ENOMEM;
    }
    pl->fds[w->index] = -1;     /* the handle owns it from here */
    a->owner = w;
    a->pl = px_listener_ref(pl);
    a->lcfg = lcfg;
    uv_tcp_init(&w->loop, &a->tcp);
    a->tcp.data = a;
    ferry_list_insert_tail(&w->accepting, &a->link);
    int rc = uv_tcp_open(&a->tcp, fd);
    if (rc != 0)
        close(fd);      /* the handle did not take it */
    else
        rc = uv_listen((uv_stream_t *)&a->tcp, 1024, on_connection);
    if (rc != 0) {
        ferry_log(FERRY_LOG_ERROR, "listener.listen_failed", "listener=%s worker=%u error=%s",
                  pl->name, w->index, uv_strerror(rc));
        stop_accepting(a);
    }
    return rc;
}

/* Applies a new config: keep listeners that are still there (with their new
 * settings), open new ones, stop accepting on removed ones. Sessions are not
 * touched: each keeps the config it was accepted under. */
static void apply_config(struct px_worker *w, struct px_msg *m)
{
    struct ferry_list *it;
    for (it = w->accepting.next; it != &w->accepting; it = it->next)
        ferry_container_of(it, struct px_accepting, link)->keep = false;

    for (size_t i = 0; i < m->cfg->nlisteners; i++) {
        struct px_listener *pl = m->listeners[i];
        struct px_accepting *found = NULL;
        for (it = w->accepting.next; it != &w->accepting; it = it->next) {
            struct px_accepting *a = ferry_container_of(it, struct px_accepting, link);
            if (a->pl == pl)
                found = a;
        }
        if (found) {
            found->lcfg = &m->cfg->listeners[i];
            found->keep = true;
        } else if (!w->draining && start_accepting(w, pl, &m->cfg->listeners[i]) == 0) {
            ferry_container_of(w->accepting.prev, struct px_accepting, link)->keep = true;
        }
    }
    for (it = w->accepting.next; it != &w->accepting;) {
        struct px_accepting *a = ferry_container_of(it, struct px_accepting, link);
        it = it->next;
        if (!a->keep)
            stop_accepting(a);
    }
    ferry_config_unref(w->cfg);
    w->cfg = m->cfg;
    m->cfg = NULL;
    if (!w->configured) {
        w->configured = true;
        __atomic_add_fetch(&px_proc.workers_ready, 1, __ATOMIC_RELEASE);
    }
}

static void maybe_finish_drain(struct px_worker *w)
{
    if (w->draining && w->nsessions == 0 && !uv_is_closing((uv_handle_t *)&w->wakeup)) {
        pthread_mutex_lock(&w->lock);
        w->inbox_closed = true;
        pthread_mutex_unlock(&w->lock);
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->move_timer, NULL);
        uv_close((uv_handle_t *)&w->idle_timer, NULL);
        uv_close((uv_handle_t *)&w->trim_timer, NULL);
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct px_worker *w = t->data;
    if (w->nsessions)
        ferry_log(FERRY_LOG_WARN, "shutdown.timeout", "worker=%u closing_sessions=%u", w->index,
                  w->nsessions);
    px_session_close_all(w, "shutdown timeout");
}

static void start_drain(struct px_worker *w)
{
    if (w->draining)
        return;
    w->draining = true;
    while (!ferry_list_empty(&w->accepting))
        stop_accepting(ferry_container_of(w->accepting.next, struct px_accepting, link));
    uint64_t ms = (uint64_t)(w->cfg ? w->cfg->shutdown_timeout * 1000.0 : 0);
    uv_timer_start(&w->drain_timer, on_drain_timeout, ms, 0);
}

void px_worker_session_ended(struct px_worker *w)
{
    maybe_finish_drain(w);
}

static void free_msg(struct px_msg *m)
{
    for (size_t i = 0; i < m->nlisteners; i++)
        px_listener_unref(m->listeners[i]);
    free(m->listeners);
    ferry_config_unref(m->cfg);
    ferry_topology_unref(m->topology);
    px_collector_unref(m->collector);
    free(m);
}

/* Takes the whole inbox (sends coalesce: drain everything each time). */
static struct px_msg *take_inbox(struct px_worker *w)
{
    pthread_mutex_lock(&w->lock);
    struct px_msg *m = w->inbox;
    w->inbox = NULL;
    pthread_mutex_unlock(&w->lock);
    return m;
}

static void on_wakeup(uv_async_t *h)
{
    struct px_worker *w = h->data;
    struct px_msg *m = take_inbox(w);
    while (m) {
        struct px_msg *next = m->next;
        if (m->type == PX_MSG_CONFIG) {
            apply_config(w, m);     /* takes m->cfg; the listener refs go with m */
        } else if (m->type == PX_MSG_TOPOLOGY) {
            ferry_topology_unref(w->topology);
            w->topology = m->topology;
            m->topology = NULL;
            px_session_topology_changed(w);
            px_session_release_held(w);
        } else if (m->type == PX_MSG_DESCRIBE) {
            px_session_describe_all(w, m->collector);
        } else if (m->type == PX_MSG_RELEASE) {
            px_session_release_held(w);
        } else if (m->type == PX_MSG_DRAIN) {
            start_drain(w);
        } else {
            start_drain(w);
            px_session_close_all(w, "shutdown forced");
        }
        free_msg(m);
        m = next;
    }
    maybe_finish_drain(w);
}

static void *worker_main(void *arg)
{
    struct px_worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    __atomic_store_n(&w->finished, 1, __ATOMIC_RELEASE);
    /* Everything is closed by now; drop what is left in the inbox. */
    struct px_msg *m = take_inbox(w);
    while (m) {
        struct px_msg *next = m->next;
        free_msg(m);
        m = next;
    }
    return NULL;
}

int px_worker_start(struct px_worker *w, unsigned index)
{
    w->index = index;
    ferry_list_init(&w->accepting);
    ferry_list_init(&w->sessions);
    ferry_list_init(&w->held);
    pthread_mutex_init(&w->lock, NULL);
    int rc = uv_loop_init(&w->loop);
    if (rc)
        return rc;
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    px_session_moves_init(w);
    px_session_idle_init(w);
    px_session_trim_init(w);
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : UV_EAGAIN;
}

void px_worker_post(struct px_worker *w, struct px_msg *m)
{
    m->next = NULL;
    pthread_mutex_lock(&w->lock);
    if (w->inbox_closed) {
        pthread_mutex_unlock(&w->lock);
        free_msg(m);
        return;
    }
    struct px_msg **tail = &w->inbox;
    while (*tail)
        tail = &(*tail)->next;
    *tail = m;
    /* Sent under the lock, so it cannot race with the worker closing the
     * handle (which sets inbox_closed under the same lock first). */
    uv_async_send(&w->wakeup);
    pthread_mutex_unlock(&w->lock);
}

void px_worker_join(struct px_worker *w)
{
    pthread_join(w->thread, NULL);
    ferry_config_unref(w->cfg);
    w->cfg = NULL;
    ferry_topology_unref(w->topology);
    w->topology = NULL;
    /* Free the read buffer and close the loop; every handle is closed. */
    ferry_readbuf_free(&w->readbuf);
    int rc = uv_loop_close(&w->loop);
    if (rc != 0)
        ferry_log(FERRY_LOG_WARN, "worker.loop_not_empty", "worker=%u", w->index);
    pthread_mutex_destroy(&w->lock);
}
