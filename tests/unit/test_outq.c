/* The write queue and the read buffer (ferry/outq.h) on a real libuv loop
 * over a socket pair: nothing is queued when the socket takes everything;
 * a peer that does not read makes the queue hold memory that follows the
 * bytes, not the number of writes; order survives; a shutdown waits for the
 * queue; a notified write calls back; nested reads get their own buffer. */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/outq.h"
#include "unit.h"

static int calls, last_status;
static size_t freed_total;

static void on_sent(struct ferry_outq *q, int status, size_t freed)
{
    (void)q;
    calls++;
    last_status = status;
    freed_total += freed;
}

static int shutdowns;
static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    if (status == 0)
        shutdowns++;
}

struct pair {
    uv_loop_t loop;
    uv_pipe_t pipe;     /* ferry's side */
    int peer;           /* the other end, read (or not) by the test */
};

static int pair_open(struct pair *p)
{
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0)
        return -1;
    int small = 4096;   /* feel a peer that does not read after a few KiB */
    setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(fds[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    fcntl(fds[1], F_SETFL, O_NONBLOCK);
    uv_loop_init(&p->loop);
    uv_pipe_init(&p->loop, &p->pipe, 0);
    p->peer = fds[1];
    return uv_pipe_open(&p->pipe, fds[0]);
}

static void pair_close(struct pair *p)
{
    uv_close((uv_handle_t *)&p->pipe, NULL);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    uv_loop_close(&p->loop);
    close(p->peer);
}

/* Reads what the peer has into out (up to cap); the count read. */
static size_t peer_drain(struct pair *p, char *out, size_t cap)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = read(p->peer, out + got, cap - got);
        if (n <= 0)
            return got;
        got += (size_t)n;
    }
}

static void test_fast_path_queues_nothing(void)
{
    struct pair p;
    ASSERT_EQ_INT(pair_open(&p), 0);
    struct ferry_outq q = {0};
    calls = 0;
    ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, "hello", 5, 65536, false, on_sent), 0);
    ASSERT_TRUE(ferry_outq_empty(&q));
    ASSERT_EQ_INT(q.bytes, 0);
    uv_run(&p.loop, UV_RUN_NOWAIT);
    ASSERT_EQ_INT(calls, 0);    /* nothing was queued: no callback */
    char buf[16];
    ASSERT_EQ_INT(peer_drain(&p, buf, sizeof buf), 5);
    ASSERT_TRUE(memcmp(buf, "hello", 5) == 0);
    pair_close(&p);
}

enum { MSG = 66, LIMIT = 64 * 1024 };

static void test_small_writes_to_a_peer_that_does_not_read(void)
{
    struct pair p;
    ASSERT_EQ_INT(pair_open(&p), 0);
    struct ferry_outq q = {0};
    calls = 0;
    freed_total = 0;
    size_t written = 0;
    unsigned n = 0;
    char msg[MSG];
    /* like the relay: tiny writes until the queue holds session_buffer */
    while (q.bytes < LIMIT) {
        memset(msg, 'a' + (int)(n % 26), sizeof msg);
        ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, msg, sizeof msg, LIMIT, false,
                                       on_sent), 0);
        written += sizeof msg;
        n++;
        ASSERT_TRUE(n < 100000);
    }
    /* memory follows the bytes queued: about LIMIT for ~1000 writes, not a
     * buffer per write */
    ASSERT_TRUE(n > 500);
    ASSERT_TRUE(q.bytes <= LIMIT + MSG);
    ASSERT_TRUE(q.bytes <= 2 * written);    /* (growth doubles) */
    /* the peer reads at last: everything arrives, in order */
    char *got = malloc(written);
    ASSERT_TRUE(got != NULL);
    size_t have = 0;
    for (int spins = 0; have < written && spins < 100000; spins++) {
        have += peer_drain(&p, got + have, written - have);
        uv_run(&p.loop, UV_RUN_NOWAIT);
    }
    ASSERT_EQ_INT(have, written);
    for (size_t i = 0; i < written; i++)
        if (got[i] != 'a' + (int)((i / MSG) % 26)) {
            free(got);
            ASSERT_TRUE(!"bytes out of order");
        }
    free(got);
    uv_run(&p.loop, UV_RUN_NOWAIT);
    ASSERT_TRUE(ferry_outq_empty(&q));
    ASSERT_EQ_INT(q.bytes, 0);
    ASSERT_TRUE(calls >= 1);
    ASSERT_EQ_INT(last_status, 0);
    pair_close(&p);
}

static void test_shutdown_waits_for_the_queue(void)
{
    struct pair p;
    ASSERT_EQ_INT(pair_open(&p), 0);
    struct ferry_outq q = {0};
    static char big[256 * 1024];
    memset(big, 'x', sizeof big);
    ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, big, sizeof big, LIMIT, false,
                                   on_sent), 0);
    ASSERT_TRUE(!ferry_outq_empty(&q));
    ASSERT_TRUE(q.bytes < sizeof big);      /* the socket took some: only the rest is held */
    uv_shutdown_t req;
    shutdowns = 0;
    ASSERT_EQ_INT(ferry_outq_shutdown(&q, (uv_stream_t *)&p.pipe, &req, on_shutdown), 0);
    ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, "end", 3, LIMIT, false, on_sent),
                  0);
    static char got[sizeof big + 3];
    size_t have = 0;
    int eof = 0;
    for (int spins = 0; !eof && spins < 100000; spins++) {
        ssize_t r = read(p.peer, got + have, sizeof got - have);
        if (r > 0)
            have += (size_t)r;
        else if (r == 0)
            eof = 1;
        uv_run(&p.loop, UV_RUN_NOWAIT);
    }
    ASSERT_TRUE(eof);
    ASSERT_EQ_INT(have, sizeof got);       /* EOF only after every byte, "end" included */
    ASSERT_TRUE(memcmp(got + sizeof big, "end", 3) == 0);
    ASSERT_EQ_INT(shutdowns, 1);
    pair_close(&p);
}

static void test_notify_calls_back(void)
{
    struct pair p;
    ASSERT_EQ_INT(pair_open(&p), 0);
    struct ferry_outq q = {0};
    calls = 0;
    ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, "bye", 3, LIMIT, true, on_sent), 0);
    ASSERT_EQ_INT(calls, 0);    /* never from inside the write */
    uv_run(&p.loop, UV_RUN_NOWAIT);
    ASSERT_EQ_INT(calls, 1);
    ASSERT_EQ_INT(last_status, 0);
    ASSERT_TRUE(ferry_outq_empty(&q));
    pair_close(&p);
}

static void test_closing_cancels_and_frees(void)
{
    struct pair p;
    ASSERT_EQ_INT(pair_open(&p), 0);
    struct ferry_outq q = {0};
    static char big[512 * 1024];
    ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, big, sizeof big, LIMIT, false,
                                   on_sent), 0);
    ASSERT_EQ_INT(ferry_outq_write(&q, (uv_stream_t *)&p.pipe, big, 1000, LIMIT, false, on_sent),
                  0);
    size_t held = q.bytes;
    ASSERT_TRUE(held > 0);
    calls = 0;
    freed_total = 0;
    pair_close(&p);
    ASSERT_EQ_INT(calls, 1);
    ASSERT_EQ_INT(last_status, UV_ECANCELED);
    ASSERT_EQ_INT(freed_total, held);
    ASSERT_EQ_INT(q.bytes, 0);
    ASSERT_TRUE(ferry_outq_empty(&q));
}

static void test_read_buffer(void)
{
    struct ferry_readbuf rb = {0};
    uv_buf_t a, b;
    ferry_readbuf_get(&rb, &a);
    ASSERT_EQ_INT(a.len, FERRY_READ_SIZE);
    ferry_readbuf_get(&rb, &b);     /* a read inside a's callback */
    ASSERT_EQ_INT(b.len, FERRY_READ_SIZE);
    ASSERT_TRUE(a.base != b.base);
    ferry_readbuf_put(&rb, &b);
    ASSERT_TRUE(rb.lent);
    ferry_readbuf_put(&rb, &a);
    ASSERT_TRUE(!rb.lent);
    uv_buf_t c;
    ferry_readbuf_get(&rb, &c);     /* the worker's buffer again */
    ASSERT_TRUE(c.base == a.base);
    ferry_readbuf_put(&rb, &c);
    ferry_readbuf_free(&rb);
}

int main(void)
{
    RUN(test_fast_path_queues_nothing);
    RUN(test_small_writes_to_a_peer_that_does_not_read);
    RUN(test_shutdown_waits_for_the_queue);
    RUN(test_notify_calls_back);
    RUN(test_closing_cancels_and_frees);
    RUN(test_read_buffer);
    UNIT_DONE();
}
