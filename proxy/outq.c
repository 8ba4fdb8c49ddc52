/* Write queues sized to their data, and the per-worker read buffer; see
 * ferry/outq.h. */
#include "ferry/outq.h"

#include <stdlib.h>
#include <string.h>

struct ferry_outq_seg {
    uv_write_t req;             /* req.data: the queue */
    ferry_outq_cb cb;
    uv_shutdown_t *shutdown;    /* due once this segment is written (moves to pending) */
    uv_shutdown_cb shutdown_cb;
    size_t len;                 /* bytes queued in data */
    size_t cap;                 /* bytes allocated for data */
    char data[];
};

/* Appends to the pending segment, growing it: doubling while the queue is
 * under limit (few reallocs for many small appends), never past what the
 * limit leaves, never below what is needed. */
static int pending_put(struct ferry_outq *q, const void *p, size_t n, size_t limit,
                       ferry_outq_cb cb)
{
    struct ferry_outq_seg *g = q->pending;
    size_t len = g ? g->len : 0, cap = g ? g->cap : 0, need = len + n;
    if (!g || need > cap) {
        size_t room = limit > q->bytes ? limit - q->bytes : 0;
        size_t grow = cap < room ? cap : room;      /* at most double, within the limit */
        size_t want = need > cap + grow ? need : cap + grow;
        struct ferry_outq_seg *ng = realloc(g, sizeof *ng + want);
        if (!ng)
            return UV_ENOMEM;
        if (!g) {
            memset(ng, 0, sizeof *ng);
            ng->cb = cb;
        }
        q->bytes += want - cap;
        ng->cap = want;
        q->pending = g = ng;
    }
    if (n)
        memcpy(g->data + g->len, p, n);
    g->len = need;
    return 0;
}

static void on_seg_written(uv_write_t *req, int status);

/* pending becomes sending and goes to libuv. */
static int submit(struct ferry_outq *q, uv_stream_t *stream)
{
    struct ferry_outq_seg *g = q->pending;
    q->pending = NULL;
    q->sending = g;
    g->req.data = q;
    uv_buf_t b = uv_buf_init(g->data, (unsigned)g->len);
    int rc = uv_write(&g->req, stream, &b, 1, on_seg_written);
    if (rc != 0) {
        q->sending = NULL;
        q->bytes -= g->cap;
        free(g);
    }
    return rc;
}

static void on_seg_written(uv_write_t *req, int status)
{
    struct ferry_outq_seg *g = (struct ferry_outq_seg *)req;    /* req is its first member */
    struct ferry_outq *q = req->data;
    uv_stream_t *stream = req->handle;
    ferry_outq_cb cb = g->cb;
    uv_shutdown_t *shutdown = g->shutdown;
    uv_shutdown_cb shutdown_cb = g->shutdown_cb;
    size_t freed = g->cap;
    q->sending = NULL;
    free(g);
    if (status < 0) {
        /* (a shutdown waiting with it is dropped: the session ends) */
        freed += q->pending ? q->pending->cap : 0;
        free(q->pending);
        q->pending = NULL;
        q->bytes -= freed;
        cb(q, status, freed);
        return;
    }
    q->bytes -= freed;
    if (q->pending) {
        if (shutdown) {     /* written since it was asked for: it waits for these too */
            q->pending->shutdown = shutdown;
            q->pending->shutdown_cb = shutdown_cb;
        }
        size_t before = q->bytes;
        status = submit(q, stream);
        freed += before - q->bytes;     /* (refused: dropped) */
    } else if (shutdown) {
        int rc = uv_shutdown(shutdown, stream, shutdown_cb);
        if (rc != 0)
            shutdown_cb(shutdown, rc);
    }
    cb(q, status, freed);
}

int ferry_outq_write(struct ferry_outq *q, uv_stream_t *stream, const void *p, size_t n,
                     size_t limit, bool notify, ferry_outq_cb cb)
{
    size_t done = 0;
    if (!q->sending && !notify) {
        if (n == 0)
            return 0;
        /* Most writes complete at once: then libuv neither queues a request
         * nor re-arms the socket in epoll for it, and nothing is copied. */
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int rc = uv_try_write(stream, &b, 1);
        if (rc >= 0 && (size_t)rc == n)
            return 0;
        if (rc < 0 && rc != UV_EAGAIN)
            return rc;
        done = rc > 0 ? (size_t)rc : 0;
    }
    /* p may be NULL with n 0 (a notify-only write): no pointer arithmetic on it */
    int rc = pending_put(q, n ? (const char *)p + done : p, n - done, limit, cb);
    if (rc == 0 && !q->sending)
        rc = submit(q, stream);
    return rc;
}

int ferry_outq_shutdown(struct ferry_outq *q, uv_stream_t *stream, uv_shutdown_t *req,
                        uv_shutdown_cb cb)
{
    if (!q->sending)
        return uv_shutdown(req, stream, cb);
    struct ferry_outq_seg *last = q->pending ? q->pending : q->sending;
    last->shutdown = req;
    last->shutdown_cb = cb;
    return 0;
}

void ferry_outq_free(struct ferry_outq *q)
{
    free(q->sending);
    free(q->pending);
    q->sending = q->pending = NULL;
    q->bytes = 0;
}

void ferry_readbuf_get(struct ferry_readbuf *rb, uv_buf_t *buf)
{
    if (!rb->lent) {
        if (!rb->base)
            rb->base = malloc(FERRY_READ_SIZE);
        if (rb->base) {
            rb->lent = true;
            *buf = uv_buf_init(rb->base, FERRY_READ_SIZE);
            return;
        }
    }
    char *p = malloc(FERRY_READ_SIZE);     /* a read inside another read's callback */
    *buf = uv_buf_init(p, p ? FERRY_READ_SIZE : 0);
}

void ferry_readbuf_put(struct ferry_readbuf *rb, const uv_buf_t *buf)
{
    if (!buf->base)
        return;
    if (buf->base == rb->base)
        rb->lent = false;
    else
        free(buf->base);
}

void ferry_readbuf_free(struct ferry_readbuf *rb)
{
    free(rb->base);
    rb->base = NULL;
    rb->lent = false;
}
