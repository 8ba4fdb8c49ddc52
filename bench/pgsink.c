/* pgsink: a minimal PostgreSQL server for proxy benchmarks that need more
 * backends than PostgreSQL can hold here (10,000 idle sessions, connection
 * storms). It speaks just enough of protocol 3.0: SSLRequest/GSSENCRequest
 * are answered 'N'; a StartupMessage gets AuthenticationOk, a few
 * ParameterStatus, BackendKeyData and ReadyForQuery; every simple Query
 * gets one row ("1"), CommandComplete and ReadyForQuery; Sync gets
 * ReadyForQuery; Terminate or EOF closes; other messages are skipped.
 * One thread, epoll, no per-connection buffers beyond a few bytes.
 *
 *   pgsink [--host H] [--port P]    prints "listening PORT" once bound;
 *   a line on stdin is answered with "conns N accepted N" (live sessions,
 *   all accepted so far); EOF on stdin stops it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
    int fd;
    bool startup;           /* still in the startup phase */
    uint8_t hdr[8];         /* startup: length + code; then: type + length */
    uint8_t have;           /* header bytes read */
    uint32_t skip;          /* body bytes still to skip */
    uint8_t type;           /* message whose body is being skipped */
};

static long g_conns, g_accepted;

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* appends message type t with body (n bytes) to out at *len */
static void msg(uint8_t *out, size_t *len, char t, const void *body, size_t n)
{
    out[*len] = (uint8_t)t;
    put32(out + *len + 1, (uint32_t)(n + 4));
    memcpy(out + *len + 5, body, n);
    *len += 5 + n;
}

static void param(uint8_t *out, size_t *len, const char *k, const char *v)
{
    char body[128];
    size_t kl = strlen(k) + 1, vl = strlen(v) + 1;
    memcpy(body, k, kl);
    memcpy(body + kl, v, vl);
    msg(out, len, 'S', body, kl + vl);
}

static bool send_all(int fd, const uint8_t *p, size_t n)
{
    /* replies are a few hundred bytes: the socket buffer takes them whole */
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    return w == (ssize_t)n;
}

static bool reply_startup(struct conn *c)
{
    uint8_t out[512];
    size_t len = 0;
    uint8_t auth[4] = {0, 0, 0, 0}, key[8];
    msg(out, &len, 'R', auth, 4);
    param(out, &len, "server_version", "15.0 (pgsink)");
    param(out, &len, "server_encoding", "UTF8");
    param(out, &len, "client_encoding", "UTF8");
    param(out, &len, "DateStyle", "ISO, MDY");
    param(out, &len, "integer_datetimes", "on");
    param(out, &len, "standard_conforming_strings", "on");
    put32(key, (uint32_t)c->fd);
    put32(key + 4, 0x5eed);
    msg(out, &len, 'K', key, 8);
    msg(out, &len, 'Z', "I", 1);
    return send_all(c->fd, out, len);
}

static bool reply_query(struct conn *c)
{
    static const uint8_t rowdesc[] = {0, 1, '?', 'c', 'o', 'l', 'u', 'm', 'n', '?', 0,
                                      0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff,
                                      0xff, 0xff, 0, 0};
    static const uint8_t datarow[] = {0, 1, 0, 0, 0, 1, '1'};
    uint8_t out[128];
    size_t len = 0;
    msg(out, &len, 'T', rowdesc, sizeof rowdesc);
    msg(out, &len, 'D', datarow, sizeof datarow);
    msg(out, &len, 'C', "SELECT 1", 9);
    msg(out, &len, 'Z', "I", 1);
    return send_all(c->fd, out, len);
}

static void conn_close(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
    g_conns--;
}

/* A whole header has arrived (and its body, if skip is now 0): act on it.
 * false: close the connection. */
static bool on_message(struct conn *c)
{
    if (c->startup) {
        uint32_t code = get32(c->hdr + 4);
        if (code == 80877103 || code == 80877104)    /* SSLRequest, GSSENCRequest */
            return send(c->fd, "N", 1, MSG_NOSIGNAL) == 1;
        if (code == 80877102)                         /* CancelRequest: nothing to cancel */
            return false;
        c->startup = false;
        return reply_startup(c);
    }
    switch (c->type) {
    case 'Q': return reply_query(c);
    case 'S': return send_all(c->fd, (const uint8_t *)"Z\0\0\0\5I", 6);
    case 'X': return false;
    default: return true;
    }
}

/* false: close */
static bool conn_input(struct conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (c->skip > 0) {
            size_t k = n < c->skip ? n : c->skip;
            c->skip -= (uint32_t)k;
            p += k;
            n -= k;
            if (c->skip == 0 && !on_message(c))
                return false;
            continue;
        }
        size_t want = c->startup ? 8 : 5;
        size_t k = want - c->have < n ? want - c->have : n;
        memcpy(c->hdr + c->have, p, k);
        c->have += (uint8_t)k;
        p += k;
        n -= k;
        if (c->have < want)
            break;
        c->have = 0;
        uint32_t len = c->startup ? get32(c->hdr) : get32(c->hdr + 1);
        if (c->startup ? (len < 8 || len > 10000) : len < 4)
            return false;
        if (!c->startup)
            c->type = c->hdr[0];
        c->skip = len - (c->startup ? 8 : 4);
        if (c->skip == 0 && !on_message(c))
            return false;
    }
    return true;
}

static int listen_on(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (fd < 0 || inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 4096) != 0)
        return -1;
    socklen_t al = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &al);
    printf("listening %d\n", ntohs(a.sin_port));
    fflush(stdout);
    return fd;
}

static void accept_all(int ep, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;     /* EAGAIN, or out of descriptors: retried on the next event */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->startup = true;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            free(c);
            continue;
        }
        g_conns++;
        g_accepted++;
    }
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0)
            host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_on(host, port), ep = epoll_create1(0);
    if (lfd < 0 || ep < 0) {
        perror("pgsink");
        return 1;
    }
    static int lmark, imark;     /* their addresses tell the events apart */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &lmark};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &imark;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    struct epoll_event evs[256];
    uint8_t buf[16384];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR) {
            perror("pgsink: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &lmark) {
                accept_all(ep, lfd);
            } else if (p == &imark) {
                ssize_t r = read(0, buf, sizeof buf);
                if (r <= 0)
                    return 0;
                printf("conns %ld accepted %ld\n", g_conns, g_accepted);
                fflush(stdout);
            } else {
                struct conn *c = p;
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                if (r <= 0 || !conn_input(c, buf, (size_t)r))
                    conn_close(ep, c);
            }
        }
    }
}
