/* The bytes queued towards one side of a session: what the socket did not
 * take at once. As PgBouncer and HAProxy keep one buffer per direction per
 * connection, but held only while the peer is slower than its source: an
 * idle or keeping-up connection has no buffer at all.
 *
 * Reads land in one buffer per worker (ferry_readbuf_*); the relay writes them
 * on at once with uv_try_write and nothing is copied when the socket takes
 * everything (the common case). Only the unwritten rest is copied into the
 * queue, which has at most two segments: `sending` (in a uv_write now) and
 * `pending` (what arrived since, appended in place, sent as one write when
 * `sending` completes). Each segment is sized to its data (grown
 * geometrically, but not past the queue's limit), so memory follows the
 * bytes queued, not the number of reads: a client that pipelines thousands
 * of tiny queries and never reads the answers costs what the answers weigh.
 * q->bytes is that memory, and the session's backpressure compares
 * it with session_buffer.
 *
 * Thread: the owning worker's loop only.
 */
#ifndef FERRY_OUTQ_H
#define FERRY_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct ferry_outq_seg;
struct ferry_outq;

/* After a write the queue submitted completed: status 0, or a libuv error
 * (UV_ECANCELED when the handle closes), in which case whatever was still
 * queued was dropped. freed: the bytes that left q->bytes with it. The next
 * segment is already submitted. */
typedef void (*ferry_outq_cb)(struct ferry_outq *q, int status, size_t freed);

struct ferry_outq {
    struct ferry_outq_seg *sending;    /* owned: submitted (uv_write in flight), or NULL */
    struct ferry_outq_seg *pending;    /* owned: queued after it, or NULL (always NULL
                                       while sending is) */
    size_t bytes;                   /* memory held for queued bytes: both segments'
                                       capacity (0 when empty) */
};

static inline bool ferry_outq_empty(const struct ferry_outq *q) { return !q->sending; }

/* Writes n bytes of p to stream after whatever is queued. With an empty
 * queue it tries the socket first (no copy, no allocation when it takes
 * everything); what is left is copied into the queue and goes out in order
 * with later writes. limit: growth of the pending segment stops once the
 * queue holds this much (session_buffer; a single write may pass it).
 * notify: queue even with nothing queued and n == 0, so that cb runs once
 * these bytes are sent (a last message before a close). 0, or a libuv error
 * (UV_ENOMEM; the socket's error): then nothing of p was queued. */
int ferry_outq_write(struct ferry_outq *q, uv_stream_t *stream, const void *p, size_t n, size_t limit,
                  bool notify, ferry_outq_cb cb);

/* uv_shutdown once everything queued is written (at once when nothing is).
 * 0 or uv_shutdown's error now; a deferred shutdown that uv_shutdown refuses
 * calls cb with that error. */
int ferry_outq_shutdown(struct ferry_outq *q, uv_stream_t *stream, uv_shutdown_t *req,
                     uv_shutdown_cb cb);

/* Frees what is queued without sending it; only when no write is in flight
 * (the handle has closed, so libuv called back with UV_ECANCELED). */
void ferry_outq_free(struct ferry_outq *q);

/* ---- the per-worker read buffer ----
 * libuv asks for a buffer before each read; a worker hands out its one read
 * buffer, so a read costs no allocation and a session holds no read memory.
 * A read inside another's callback (a protocol starting a read while
 * scanning, a TLS engine's buffered plaintext handed out at once) gets a
 * buffer of its own from malloc, freed when returned. */
struct ferry_readbuf {
    char *base;     /* owned: FERRY_READ_SIZE bytes, allocated at the first read */
    bool lent;      /* base is handed out now */
};

enum { FERRY_READ_SIZE = 64 * 1024 };  /* one read; the largest single write to the queue */

/* Fills buf (len 0 when out of memory). */
void ferry_readbuf_get(struct ferry_readbuf *rb, uv_buf_t *buf);
/* Returns a buffer from ferry_readbuf_get (base NULL: nothing). */
void ferry_readbuf_put(struct ferry_readbuf *rb, const uv_buf_t *buf);
void ferry_readbuf_free(struct ferry_readbuf *rb);

#endif
