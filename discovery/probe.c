/* The probe driver shared by every engine: runs an engine's step function on
 * socket readiness, enforces the deadline, and turns any failure into a
 * dropped connection and a FAILED result (see probe.h).
 */
#include "probe.h"

#include <stdlib.h>
#include <string.h>

static void on_poll(uv_poll_t *h, int status, int events);

static void free_poll(uv_handle_t *h)
{
    free(h);
}

static void forget_poll(struct disc_probe *p)
{
    if (p->poll) {
        uv_close((uv_handle_t *)p->poll, free_poll);
        p->poll = NULL;
        p->poll_fd = -1;
    }
}

static void finish(struct disc_probe *p, bool failed)
{
    uv_timer_stop(&p->deadline);
    if (p->poll)
        uv_poll_stop(p->poll);
    if (failed) {
        p->result.ok = false;
        forget_poll(p);     /* before drop: the engine closes the socket */
        p->engine->drop(p);
    }
    p->running = false;
    p->result.latency_ms = (double)(uv_hrtime() - p->started_ns) / 1e6;
    struct disc_probe_result r = p->result;
    p->cb(p, &r, p->ud);
}

/* Calls the engine and waits for what it asks, or finishes. */
static void advance(struct disc_probe *p)
{
    if (p->poll)
        uv_poll_stop(p->poll);  /* the engine may close and reopen the fd */
    int fd = -1;
    int events = p->engine->step(p, &p->result, &fd);
    if (events <= 0) {
        finish(p, events < 0);
        return;
    }
    if (fd != p->poll_fd || !p->poll) {
        forget_poll(p);
        p->poll = malloc(sizeof *p->poll);
        if (!p->poll || uv_poll_init(p->loop, p->poll, fd) != 0) {
            free(p->poll);
            p->poll = NULL;
            snprintf(p->result.detail, sizeof p->result.detail, "cannot watch socket");
            finish(p, true);
            return;
        }
        p->poll->data = p;
        p->poll_fd = fd;
    }
    uv_poll_start(p->poll, events, on_poll);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct disc_probe *p = h->data;
    /* libuv reports POLLERR (e.g. a refused non-blocking connect) as
     * UV_EBADF: let the engine read the socket error and say what it is. */
    p->ready_events = status < 0 ? UV_READABLE | UV_WRITABLE : events;
    if (!p->running)
        return;
    advance(p);
}

static void on_deadline(uv_timer_t *t)
{
    struct disc_probe *p = t->data;
    if (!p->running)
        return;
    snprintf(p->result.detail, sizeof p->result.detail, "timed out after %gs", p->timeout);
    finish(p, true);
}

int disc_probe_init(struct disc_probe *p, uv_loop_t *loop, const struct disc_engine *engine,
                    const char *listener, const struct ferry_cluster_cfg *cluster,
                    const struct ferry_listener_cfg *lcfg, double timeout)
{
    memset(p, 0, sizeof *p);
    p->loop = loop;
    p->engine = engine;
    snprintf(p->listener, sizeof p->listener, "%s", listener);
    snprintf(p->cluster, sizeof p->cluster, "%s", cluster->name);
    p->endpoint = cluster->endpoint;
    snprintf(p->user, sizeof p->user, "%s", lcfg->probe_user);
    snprintf(p->database, sizeof p->database, "%s", lcfg->probe_database);
    p->password = lcfg->probe_password ? strdup(lcfg->probe_password) : NULL;
    p->timeout = timeout;
    p->poll_fd = -1;
    uv_timer_init(loop, &p->deadline);
    p->deadline.data = p;
    return 0;
}

int disc_probe_run(struct disc_probe *p, disc_probe_cb cb, void *ud)
{
    if (p->running || p->closing)
        return UV_EBUSY;
    p->running = true;
    p->cb = cb;
    p->ud = ud;
    p->started_ns = uv_hrtime();
    memset(&p->result, 0, sizeof p->result);
    p->ready_events = 0;
    uv_timer_start(&p->deadline, on_deadline, (uint64_t)(p->timeout * 1000.0), 0);
    advance(p);
    return 0;
}

static void on_deadline_closed(uv_handle_t *h)
{
    struct disc_probe *p = h->data;
    if (p->password) {
        memset(p->password, 0, strlen(p->password));
        free(p->password);
        p->password = NULL;
    }
    p->close_cb(p);
}

void disc_probe_close(struct disc_probe *p, void (*close_cb)(struct disc_probe *p))
{
    p->closing = true;
    p->running = false;
    forget_poll(p);
    p->engine->drop(p);
    p->close_cb = close_cb;
    uv_close((uv_handle_t *)&p->deadline, on_deadline_closed);
}
