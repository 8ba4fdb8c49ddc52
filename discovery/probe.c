/* The probe driver shared by every engine: resolves the endpoint's name on
 * the libuv threadpool (a name that does not exist is an inactive endpoint,
 * not a failure), runs an engine's step function on socket readiness,
 * enforces the deadline, and turns any failure into a dropped connection and
 * a FAILED result (see probe.h).
 */
#include "probe.h"

#include <netdb.h>
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
    if (p->resolving) {
        /* the threadpool may be stuck on a slow resolver: cancel if still
         * queued; a lookup already running is left to finish (the next run
         * waits for it rather than piling up another) */
        uv_cancel((uv_req_t *)&p->gai);
        snprintf(p->result.detail, sizeof p->result.detail,
                 "timed out after %gs resolving the endpoint's name", p->timeout);
    } else {
        snprintf(p->result.detail, sizeof p->result.detail, "timed out after %gs", p->timeout);
    }
    finish(p, true);
}

static void close_done(struct disc_probe *p);
static void resolve(struct disc_probe *p);
static bool is_literal(const char *host);
static void target_known(struct disc_probe *p);

/* Connects to p->endpoint: a literal address at once, a name once looked up. */
static void start_target(struct disc_probe *p)
{
    if (!is_literal(p->endpoint.host)) {
        resolve(p);
        return;
    }
    size_t n = strlen(p->endpoint.host);   /* an address: fits */
    if (n >= sizeof p->addr)
        n = sizeof p->addr - 1;
    memcpy(p->addr, p->endpoint.host, n);
    p->addr[n] = '\0';
    target_known(p);
}

/* The run's target address is known: a connection to another address (the
 * name moved, as a cluster endpoint does on failover) is dropped first. */
static void target_known(struct disc_probe *p)
{
    if (!p->via_reader)
        memcpy(p->result.writer_addr, p->addr, sizeof p->result.writer_addr);
    if (p->conn && strcmp(p->conn_addr, p->addr) != 0) {
        forget_poll(p);
        p->engine->drop(p);
    }
    if (!p->conn)
        memcpy(p->conn_addr, p->addr, sizeof p->conn_addr);
    advance(p);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct disc_probe *p = req->data;
    p->resolving = false;
    if (p->closing || !p->running) {
        uv_freeaddrinfo(res);
        if (p->closing && p->deadline_closed)
            close_done(p);
        return;
    }
    if ((status == UV_EAI_NONAME || status == UV_EAI_NODATA) && !p->via_reader) {
        /* NXDOMAIN (or a name with no address): an Aurora secondary's
         * writer endpoint until that cluster is promoted. Its reader
         * endpoint, if configured, still tells its health and topology. */
        p->result.inactive = true;
        snprintf(p->result.detail, sizeof p->result.detail,
                 "writer endpoint %.200s does not resolve", p->writer_ep.host);
        uv_freeaddrinfo(res);
        if (!p->reader_ep.host[0]) {
            finish(p, true);
            return;
        }
        p->via_reader = true;
        p->endpoint = p->reader_ep;
        start_target(p);
        return;
    } else if (status < 0 || !res) {
        snprintf(p->result.detail, sizeof p->result.detail, "resolve %.160s: %s", p->endpoint.host,
                 status < 0 ? uv_strerror(status) : "no address");
        finish(p, true);
    } else {
        /* the first address, as sessions connect to (proxy/session.c) */
        int rc = disc_addr_name(res, p->addr, sizeof p->addr);
        uv_freeaddrinfo(res);
        if (rc != 0) {
            snprintf(p->result.detail, sizeof p->result.detail, "resolve %.160s: %s",
                     p->endpoint.host, uv_strerror(rc));
            finish(p, true);
            return;
        }
        target_known(p);
        return;
    }
    uv_freeaddrinfo(res);
}

int disc_addr_name(const struct addrinfo *ai, char *out, size_t len)
{
    return ai->ai_family == AF_INET6 ? uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, out, len)
                                     : uv_ip4_name((struct sockaddr_in *)ai->ai_addr, out, len);
}

static bool is_literal(const char *host)
{
    struct sockaddr_in6 sa6;
    struct sockaddr_in sa4;
    return uv_ip4_addr(host, 0, &sa4) == 0 || uv_ip6_addr(host, 0, &sa6) == 0;
}

/* Looks the endpoint's name up afresh (no caching across runs), or waits
 * for a lookup a timed-out run left in flight. */
static void resolve(struct disc_probe *p)
{
    if (p->resolving)
        return;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    p->gai.data = p;
    int rc = uv_getaddrinfo(p->loop, &p->gai, on_resolved, p->endpoint.host, NULL, &hints);
    if (rc != 0) {
        snprintf(p->result.detail, sizeof p->result.detail, "resolve %.160s: %s", p->endpoint.host,
                 uv_strerror(rc));
        finish(p, true);
        return;
    }
    p->resolving = true;
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
    p->writer_ep = p->endpoint = cluster->endpoint;
    p->reader_ep = cluster->reader_endpoint;
    /* config.c stores libpq's names, whatever the protocol (proxy/tls.c is
     * not linked into discovery, so they are matched here) */
    static const char *const modes[] = {
        [FERRY_TLS_DISABLE] = "disable", [FERRY_TLS_PREFER] = "prefer",
        [FERRY_TLS_REQUIRE] = "require", [FERRY_TLS_VERIFY_CA] = "verify-ca",
        [FERRY_TLS_VERIFY_FULL] = "verify-full"};
    p->tls_mode = FERRY_TLS_PREFER;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(lcfg->backend_tls_mode, modes[i]) == 0)
            p->tls_mode = (enum ferry_tls_mode)i;
    snprintf(p->tls_mode_name, sizeof p->tls_mode_name, "%s", modes[p->tls_mode]);
    p->tls_ca_file = lcfg->backend_tls_ca_file ? strdup(lcfg->backend_tls_ca_file) : NULL;
    p->allow_insecure_password = lcfg->backend_allow_insecure_password;
    snprintf(p->user, sizeof p->user, "%s", lcfg->probe_user);
    snprintf(p->database, sizeof p->database, "%s", lcfg->probe_database);
    p->password = lcfg->probe_password ? strdup(lcfg->probe_password) : NULL;
    p->timeout = timeout;
    p->tcp = lcfg->server_tcp;
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
    p->attempts = 0;
    uv_timer_start(&p->deadline, on_deadline, (uint64_t)(p->timeout * 1000.0), 0);
    p->via_reader = false;
    p->endpoint = p->writer_ep;
    start_target(p);
    return 0;
}

static void close_done(struct disc_probe *p)
{
    if (p->password) {
        memset(p->password, 0, strlen(p->password));
        free(p->password);
        p->password = NULL;
    }
    free(p->tls_ca_file);
    p->tls_ca_file = NULL;
    p->close_cb(p);
}

static void on_deadline_closed(uv_handle_t *h)
{
    struct disc_probe *p = h->data;
    p->deadline_closed = true;
    if (!p->resolving)      /* else on_resolved finishes the close */
        close_done(p);
}

void disc_probe_close(struct disc_probe *p, void (*close_cb)(struct disc_probe *p))
{
    p->closing = true;
    p->running = false;
    forget_poll(p);
    p->engine->drop(p);
    p->close_cb = close_cb;
    if (p->resolving)
        uv_cancel((uv_req_t *)&p->gai);     /* its callback still runs (UV_EAI_CANCELED) */
    uv_close((uv_handle_t *)&p->deadline, on_deadline_closed);
}
