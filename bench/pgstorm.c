/* pgstorm: a connection storm against a PostgreSQL endpoint. N connections
 * are started evenly within SPREAD seconds (non-blocking connect, one
 * thread, epoll); each sends a StartupMessage (no SSL; the server must
 * trust the user), waits for ReadyForQuery, sends "SELECT 1", waits for
 * ReadyForQuery, sends Terminate and closes. Prints one JSON document:
 * outcomes (ok, refused, reset, timeout, or the SQLSTATE of an
 * ErrorResponse), connect and ready time percentiles, the achieved attempt
 * rate, the peak of open connections and the drain time (first attempt to
 * last connection done).
 *
 *   pgstorm --port P [--host H] [--user U] [--dbname D] [-n N] [--spread S] [--timeout S] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
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
#include <time.h>
#include <unistd.h>

enum phase { CONNECTING, STARTUP, QUERY, DONE };

struct conn {
    int fd;
    enum phase phase;
    double start, connected, ready;
    uint8_t hdr[5];
    uint8_t have;
    uint32_t body;          /* body bytes of the current message still to read */
    char type;
    char err[64];           /* ErrorResponse body prefix */
    uint32_t errlen;
};

#define MAX_KEYS 16
static struct { char key[16]; long n; } g_out[MAX_KEYS];
static int g_nout;
static long g_open, g_peak;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void note(const char *key)
{
    for (int i = 0; i < g_nout; i++)
        if (strcmp(g_out[i].key, key) == 0) {
            g_out[i].n++;
            return;
        }
    if (g_nout < MAX_KEYS) {
        snprintf(g_out[g_nout].key, sizeof g_out[g_nout].key, "%s", key);
        g_out[g_nout++].n = 1;
    }
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint8_t g_startup[256];
static size_t g_startup_len;
static const uint8_t QUERY_MSG[] = {'Q', 0, 0, 0, 13, 'S', 'E', 'L', 'E', 'C', 'T', ' ', '1', 0};
static const uint8_t TERMINATE[] = {'X', 0, 0, 0, 4};

static void build_startup(const char *user, const char *db)
{
    size_t n = 8;
    const char *kv[] = {"user", user, "database", db, "application_name", "pgstorm"};
    for (int i = 0; i < 6; i++) {
        size_t l = strlen(kv[i]) + 1;
        if (n + l + 1 > sizeof g_startup) {
            fprintf(stderr, "pgstorm: user/dbname too long\n");
            exit(2);
        }
        memcpy(g_startup + n, kv[i], l);
        n += l;
    }
    g_startup[n++] = 0;
    put32(g_startup, (uint32_t)n);
    put32(g_startup + 4, 196608);
    g_startup_len = n;
}

static int g_ep;
static double *g_connect_ms, *g_ready_ms;
static long g_nconnect, g_nready;
static double g_last_done, g_t0;

static void finish(struct conn *c, const char *outcome)
{
    if (c->phase != CONNECTING || c->connected > 0)
        g_open--;
    note(outcome);
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->phase = DONE;
    g_last_done = now() - g_t0;
}

static bool send_all(struct conn *c, const uint8_t *p, size_t n)
{
    return send(c->fd, p, n, MSG_NOSIGNAL) == (ssize_t)n;
}

/* one whole message has arrived (for 'E': its first bytes in c->err) */
static void on_message(struct conn *c)
{
    if (c->type == 'E') {
        const char *code = "E?";
        for (uint32_t i = 0; i < c->errlen;) {
            if (c->err[i] == 'C') {
                code = c->err + i + 1;
                break;
            }
            i += (uint32_t)strnlen(c->err + i, c->errlen - i) + 1;
        }
        char key[16];
        snprintf(key, sizeof key, "%.5s", code);
        finish(c, key);
        return;
    }
    if (c->type != 'Z')
        return;
    if (c->phase == STARTUP) {
        c->ready = now();
        g_ready_ms[g_nready++] = (c->ready - c->start) * 1000;
        c->phase = QUERY;
        if (!send_all(c, QUERY_MSG, sizeof QUERY_MSG))
            finish(c, "reset");
    } else if (c->phase == QUERY) {
        send_all(c, TERMINATE, sizeof TERMINATE);
        finish(c, "ok");
    }
}

static void on_readable(struct conn *c)
{
    uint8_t buf[4096];
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (r <= 0) {
        finish(c, "reset");
        return;
    }
    const uint8_t *p = buf;
    size_t n = (size_t)r;
    while (n > 0 && c->phase != DONE) {
        if (c->have < 5) {
            size_t want = (size_t)(5 - c->have), k = want < n ? want : n;
            memcpy(c->hdr + c->have, p, k);
            c->have += (uint8_t)k;
            p += k;
            n -= k;
            if (c->have < 5)
                break;
            c->type = (char)c->hdr[0];
            c->body = ((uint32_t)c->hdr[1] << 24 | (uint32_t)c->hdr[2] << 16 |
                       (uint32_t)c->hdr[3] << 8 | c->hdr[4]) - 4;
            c->errlen = 0;
        }
        size_t k = c->body < n ? c->body : n;
        if (c->type == 'E' && c->errlen < sizeof c->err - 1) {
            size_t room = sizeof c->err - 1 - c->errlen, m = k < room ? k : room;
            memcpy(c->err + c->errlen, p, m);
            c->errlen += (uint32_t)m;
            c->err[c->errlen] = 0;
        }
        c->body -= (uint32_t)k;
        p += k;
        n -= k;
        if (c->body == 0) {
            c->have = 0;
            on_message(c);
        }
    }
}

static void on_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        finish(c, err == ECONNREFUSED ? "refused" : err == ETIMEDOUT ? "timeout" : "reset");
        return;
    }
    c->connected = now();
    g_connect_ms[g_nconnect++] = (c->connected - c->start) * 1000;
    if (++g_open > g_peak)
        g_peak = g_open;
    c->phase = STARTUP;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
    if (!send_all(c, g_startup, g_startup_len))
        finish(c, "reset");
}

static void launch(struct conn *c, const struct sockaddr_in *addr)
{
    c->start = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        note("no_fd");
        c->phase = DONE;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (const struct sockaddr *)addr, sizeof *addr) == 0 || errno == EINPROGRESS)
        return;     /* EPOLLOUT tells when it is done, also when it is already */
    finish(c, errno == ECONNREFUSED ? "refused" : "connect_error");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void write_pct(const char *name, double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    printf(",\"%s\":{", name);
    if (n > 0)
        printf("\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f", v[(long)(n * 0.5)],
               v[n * 99 / 100 < n ? n * 99 / 100 : n - 1], v[n - 1]);
    printf("}");
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *user = "bench", *db = "bench";
    int port = 0;
    long n = 5000;
    double spread = 1.0, timeout = 20.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--host") == 0) host = v;
        else if (strcmp(k, "--port") == 0) port = atoi(v);
        else if (strcmp(k, "--user") == 0) user = v;
        else if (strcmp(k, "--dbname") == 0) db = v;
        else if (strcmp(k, "-n") == 0) n = atol(v);
        else if (strcmp(k, "--spread") == 0) spread = atof(v);
        else if (strcmp(k, "--timeout") == 0) timeout = atof(v);
        else {
            fprintf(stderr, "pgstorm: unknown option %s\n", k);
            return 2;
        }
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (port <= 0 || n <= 0 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "usage: pgstorm --port P [--host IPv4] [--user U] [--dbname D] [-n N] "
                        "[--spread S] [--timeout S]\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    build_startup(user, db);
    struct conn *conns = calloc((size_t)n, sizeof *conns);
    g_connect_ms = calloc((size_t)n, sizeof(double));
    g_ready_ms = calloc((size_t)n, sizeof(double));
    g_ep = epoll_create1(0);
    if (!conns || !g_connect_ms || !g_ready_ms || g_ep < 0)
        return 1;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    g_t0 = now();
    long launched = 0, done_checked = 0;
    double first = 0, last = 0;
    struct epoll_event evs[512];
    for (;;) {
        double t = now() - g_t0;
        while (launched < n && t >= spread * (double)launched / (double)n) {
            if (launched == 0)
                first = t;
            last = t;
            launch(&conns[launched++], &addr);
        }
        /* timeouts, scanned from the oldest unfinished connection */
        while (done_checked < launched && conns[done_checked].phase == DONE)
            done_checked++;
        for (long i = done_checked; i < launched; i++) {
            struct conn *c = &conns[i];
            if (c->phase == DONE)
                continue;
            if (now() - c->start < timeout)
                break;
            finish(c, "timeout");
        }
        if (launched == n && done_checked == n)
            break;
        int wait_ms = launched < n ? 1 : 100;
        int k = epoll_wait(g_ep, evs, 512, wait_ms);
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->phase == DONE)
                continue;
            if (c->phase == CONNECTING)
                on_connected(c);
            else
                on_readable(c);
        }
    }
    double total = now() - g_t0;
    printf("{\"n\":%ld,\"spread_s\":%.3f,\"started_unix\":%.6f,\"outcomes\":{", n, spread,
           (double)wall.tv_sec + (double)wall.tv_nsec / 1e9);
    long ok = 0;
    for (int i = 0; i < g_nout; i++) {
        printf("%s\"%s\":%ld", i ? "," : "", g_out[i].key, g_out[i].n);
        if (strcmp(g_out[i].key, "ok") == 0)
            ok = g_out[i].n;
    }
    printf("},\"ok\":%ld,\"attempts_span_s\":%.3f,\"attempt_rate_per_s\":%.1f", ok, last - first,
           last > first ? (double)(n - 1) / (last - first) : 0.0);
    printf(",\"drain_s\":%.3f,\"wall_s\":%.3f,\"peak_open\":%ld", g_last_done, total, g_peak);
    write_pct("connect_ms", g_connect_ms, g_nconnect);
    write_pct("ready_ms", g_ready_ms, g_nready);
    printf("}\n");
    return 0;
}
