/* Admin HTTP endpoint (libmicrohttpd, its own thread): health, readiness,
 * status and metrics (read-only: counters through relaxed atomics, the
 * registry under px_proc.lock), and the mutating POST endpoints (reload,
 * pause, resume), which a bearer token protects when one is configured.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/discovery.h"
#include "ferry/log.h"
#include "ferry/version.h"
#include "proxy.h"

struct px_admin {
    struct MHD_Daemon *daemon;
};

struct req_body {
    size_t len;
    bool too_big;
    char data[4097];            /* NUL-terminated */
};

static enum MHD_Result reply_allow(struct MHD_Connection *c, unsigned code, const char *type,
                                   char *body, const char *allow)
{
    /* MHD frees body (MUSTFREE) once it is sent */
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    if (code == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"ferry\"");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, char *body)
{
    return reply_allow(c, code, type, body, NULL);
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned code, const char *text)
{
    char *body = strdup(text);
    return body ? reply(c, code, "text/plain; charset=utf-8", body) : MHD_NO;
}

/* Ready when every worker listens on the current listeners and discovery
 * (if any) has decided once. Caller holds px_proc.lock. */
static bool is_ready(const char **why)
{
    if (__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED)) {
        *why = "draining";
        return false;
    }
    if (__atomic_load_n(&px_proc.workers_ready, __ATOMIC_ACQUIRE) < px_proc.nworkers) {
        *why = "workers starting";
        return false;
    }
    /* A listener without a writer still serves: it holds new clients until
     * one appears (the failover window). Going unready then would make
     * Kubernetes drop the very clients ferry is holding, so readiness only
     * waits for discovery's first decision. */
    /* Decided from the config, not from px_proc.discovery: at start-up the
     * workers may be listening a moment before discovery is even running. */
    for (size_t i = 0; i < px_proc.cfg->nlisteners; i++)
        if (px_proc.cfg->listeners[i].probe_enabled &&
            !ferry_topology_find(px_proc.topology, px_proc.cfg->listeners[i].name)) {
            *why = "discovery has not finished its first probe round";
            return false;
        }
    return true;
}

static json_t *listener_status(const struct ferry_listener_cfg *lcfg, struct px_listener *pl)
{
    struct px_counters sum = px_listener_totals(pl);
    char bind[FERRY_HOST_MAX + 16], ep[FERRY_HOST_MAX + 16];
    const char *cluster = NULL;
    ferry_hostport_format(&lcfg->bind, bind, sizeof bind);
    const struct ferry_hostport *route = px_route(lcfg, px_proc.topology, &cluster);
    json_t *route_json = json_null();
    if (route) {
        ferry_hostport_format(route, ep, sizeof ep);
        route_json = json_pack("{s:s, s:s}", "cluster", cluster, "endpoint", ep);
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:b, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                     "s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                     "name", lcfg->name, "protocol", ferry_proto_name(lcfg->protocol), "bind", bind,
                     "routing", lcfg->probe_enabled ? "discovered" : "static", "route", route_json,
                     "paused", px_listener_paused(pl), "holding", px_listener_holding(pl),
                     "max_client_connections", (json_int_t)lcfg->max_client_connections,
                     "session_buffer", (json_int_t)lcfg->session_buffer,
                     "clients_active", (json_int_t)sum.active,
                     "clients_accepted_total", (json_int_t)sum.accepted,
                     "clients_refused_total", (json_int_t)sum.refused,
                     "clients_logging_in", (json_int_t)px_listener_logins(pl),
                     "login_timeouts_total", (json_int_t)sum.login_timeouts,
                     "backend_connect_failures_total", (json_int_t)sum.backend_connect_failed,
                     "bytes_from_clients_total", (json_int_t)sum.bytes_from_clients,
                     "bytes_from_servers_total", (json_int_t)sum.bytes_from_servers,
                     "clients_held", (json_int_t)sum.held,
                     "hold_timeouts_total", (json_int_t)sum.hold_timeouts,
                     "idle_timeouts_total", (json_int_t)sum.idle_timeouts,
                     "sessions_waiting_to_move", (json_int_t)sum.waiting_to_move,
                     "sessions_moved", (json_int_t)sum.moves,
                     "sessions_move_failed", (json_int_t)sum.moves_failed,
                     "failover_errors_total", (json_int_t)sum.errors_failover,
                     "protocol_errors_total", (json_int_t)sum.errors_protocol,
                     "auth_failures_total", (json_int_t)sum.errors_auth);
}

static char *status_json(void)
{
    uint64_t buffered = 0, peak = 0, chunks = 0;
    for (unsigned i = 0; i < px_proc.nworkers; i++) {
        struct px_worker *w = &px_proc.workers[i];
        buffered += PX_STAT_GET(w->buffered_bytes);
        uint64_t p = PX_STAT_GET(w->buffered_peak);
        peak = p > peak ? p : peak;
        chunks += PX_STAT_GET(w->chunks_allocated);
    }
    pthread_mutex_lock(&px_proc.lock);
    const char *why = NULL;
    bool ready = is_ready(&why);
    json_t *ls = json_array();
    for (size_t i = 0; i < px_proc.nlisteners; i++)
        json_array_append_new(ls, listener_status(&px_proc.cfg->listeners[i], px_proc.listeners[i]));
    json_t *doc = json_pack(
        "{s:s, s:f, s:s, s:I, s:s, s:I, s:b, s:o, s:{s:I, s:I, s:I, s:I}}", "version",
        FERRY_VERSION, "uptime_seconds", (double)(px_now_ms() - px_proc.started_ms) / 1000.0,
        "state", __atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED) ? "draining" : "running",
        "config_generation", (json_int_t)px_proc.generation, "config_path", px_proc.cfg->path,
        "workers", (json_int_t)px_proc.nworkers, "ready", ready, "listeners", ls, "buffers",
        "queued_bytes", (json_int_t)buffered, "queued_bytes_peak", (json_int_t)peak,
        "chunk_bytes", (json_int_t)PX_CHUNK_SIZE, "chunks_allocated", (json_int_t)chunks);
    json_object_set_new(doc, "paused", json_boolean(__atomic_load_n(&px_proc.paused, __ATOMIC_RELAXED)));
    if (px_proc.discovery)
        json_object_set_new(doc, "discovery", ferry_discovery_status(px_proc.discovery));
    pthread_mutex_unlock(&px_proc.lock);
    char *out = json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);
    return out;
}

static enum MHD_Result get_healthz(struct MHD_Connection *c, const char *req)
{
    (void)req;
    return reply_text(c, MHD_HTTP_OK, "ok\n");
}

static enum MHD_Result get_readyz(struct MHD_Connection *c, const char *req)
{
    (void)req;
    pthread_mutex_lock(&px_proc.lock);
    const char *why = NULL;
    bool ready = is_ready(&why);
    pthread_mutex_unlock(&px_proc.lock);
    if (ready)
        return reply_text(c, MHD_HTTP_OK, "ready\n");
    char msg[128];
    snprintf(msg, sizeof msg, "not ready: %s\n", why);
    return reply_text(c, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
}

static enum MHD_Result get_status(struct MHD_Connection *c, const char *req)
{
    (void)req;
    char *body = status_json();
    if (!body)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "status unavailable\n");
    return reply(c, MHD_HTTP_OK, "application/json", body);
}

static enum MHD_Result get_metrics(struct MHD_Connection *c, const char *req)
{
    (void)req;
    char *body = px_metrics_text();
    if (!body)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics unavailable\n");
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body);
}

void px_collector_unref(struct px_collector *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        json_decref(c->sessions);
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->done);
        free(c);
    }
}

/* Asks every worker for its sessions; returns a JSON array (new reference)
 * sorted by id, with what answered within a second. */
static json_t *collect_sessions(void)
{
    struct px_collector *c = calloc(1, sizeof *c);
    if (!c)
        return json_array();
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->done, NULL);
    c->sessions = json_array();
    c->refs = 1;
    c->pending = px_proc.nworkers;
    for (unsigned w = 0; w < px_proc.nworkers; w++) {
        struct px_msg *m = calloc(1, sizeof *m);
        if (!m) {
            pthread_mutex_lock(&c->lock);
            c->pending--;
            pthread_mutex_unlock(&c->lock);
            continue;
        }
        m->type = PX_MSG_DESCRIBE;
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
        m->collector = c;
        px_worker_post(&px_proc.workers[w], m);
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    pthread_mutex_lock(&c->lock);
    while (c->pending > 0 && pthread_cond_timedwait(&c->done, &c->lock, &until) == 0)
        ;
    json_t *out = json_deep_copy(c->sessions);
    pthread_mutex_unlock(&c->lock);
    px_collector_unref(c);
    return out ? out : json_array();
}

static int by_id(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "id"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "id"));
    return x < y ? -1 : x > y;
}

/* Reads a non-negative integer query argument; false if malformed. */
static bool query_uint(struct MHD_Connection *c, const char *name, long dflt, long max, long *out)
{
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    *out = dflt;
    if (!v)
        return true;
    char *end;
    long n = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || n < 0)
        return false;
    *out = n > max ? max : n;
    return true;
}

static enum MHD_Result json_result(struct MHD_Connection *c, unsigned code, bool ok, const char *msg);

static enum MHD_Result get_sessions(struct MHD_Connection *c, const char *body)
{
    (void)body;
    long limit, offset;
    if (!query_uint(c, "limit", 100, 1000, &limit) || !query_uint(c, "offset", 0, LONG_MAX, &offset))
        return json_result(c, MHD_HTTP_BAD_REQUEST, false, "limit and offset are non-negative integers");
    json_t *all = collect_sessions();
    size_t n = json_array_size(all);
    json_t **items = calloc(n ? n : 1, sizeof *items);
    for (size_t i = 0; items && i < n; i++)
        items[i] = json_array_get(all, i);
    if (items)
        qsort(items, n, sizeof *items, by_id);
    json_t *page = json_array();
    for (size_t i = (size_t)offset; items && i < n && i < (size_t)offset + (size_t)limit; i++)
        json_array_append(page, items[i]);
    free(items);
    json_t *doc = json_pack("{s:I, s:I, s:I, s:o}", "total", (json_int_t)n, "offset",
                            (json_int_t)offset, "limit", (json_int_t)limit, "sessions", page);
    json_decref(all);
    char *text = json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);
    return text ? reply(c, MHD_HTTP_OK, "application/json", text) : MHD_NO;
}

/* POST /v1/switchover {"to": cluster, "listener": optional, "timeout": seconds}:
 * hold new clients, ask discovery to make the target the writer as soon as
 * a probe finds it writable (the promotion itself is the operator's or
 * AWS's), wait for it, release the held clients. */
static enum MHD_Result post_switchover(struct MHD_Connection *c, const char *body)
{
    json_error_t jerr;
    json_t *req = json_loads(body ? body : "", 0, &jerr);
    const char *to = NULL, *listener = NULL;
    double timeout = 60;
    if (!req || json_unpack(req, "{s:s, s?:s, s?:F}", "to", &to, "listener", &listener, "timeout",
                            &timeout) != 0 || timeout <= 0 || timeout > 3600) {
        json_decref(req);
        return json_result(c, MHD_HTTP_BAD_REQUEST, false,
                           "expected {\"to\": \"<cluster>\", \"listener\": \"<name>\" (optional), "
                           "\"timeout\": <seconds> (optional, default 60)}");
    }
    char target[FERRY_NAME_MAX], lname[FERRY_NAME_MAX];
    snprintf(target, sizeof target, "%s", to);
    snprintf(lname, sizeof lname, "%s", listener ? listener : "");
    json_decref(req);
    if (!px_proc.discovery)
        return json_result(c, MHD_HTTP_CONFLICT, false, "no listener uses writer discovery (probe)");
    const char *lp = lname[0] ? lname : NULL;
    size_t nheld;   /* only the listeners switched are held; an operator's pause stays */
    struct px_listener **held = px_switchover_hold(lp, target, &nheld);
    int n = ferry_discovery_switchover(px_proc.discovery, lp, target);
    if (n == 0) {
        px_switchover_release(held, nheld);
        char msg[256];
        snprintf(msg, sizeof msg, "no discovered listener%s%s has a cluster named %s",
                 lp ? " " : "", lp ? lp : "", target);
        return json_result(c, MHD_HTTP_NOT_FOUND, false, msg);
    }
    uint64_t start = px_now_ms(), deadline = start + (uint64_t)(timeout * 1000.0);
    bool done = false;
    while (!(done = ferry_discovery_writer_is(px_proc.discovery, lp, target)) &&
           px_now_ms() < deadline && !__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED))
        usleep(20 * 1000);  /* a shutdown ends the wait: it stops this endpoint */
    if (!done)
        ferry_discovery_switchover_cancel(px_proc.discovery);
    px_switchover_release(held, nheld);
    char msg[300];
    double secs = (double)(px_now_ms() - start) / 1000.0;
    if (!done) {
        snprintf(msg, sizeof msg, "%s did not become writable within %gs; clients released to "
                 "the current writer", target, timeout);
        ferry_log(FERRY_LOG_WARN, "topology.switchover_timeout", "to=%s timeout=%g", target, timeout);
        return json_result(c, MHD_HTTP_GATEWAY_TIMEOUT, false, msg);
    }
    snprintf(msg, sizeof msg, "%s is the writer of %d listener%s after %.3fs", target, n,
             n == 1 ? "" : "s", secs);
    ferry_log(FERRY_LOG_INFO, "topology.switchover_done", "to=%s listeners=%d seconds=%.3f", target,
              n, secs);
    return json_result(c, MHD_HTTP_OK, true, msg);
}

static enum MHD_Result json_result(struct MHD_Connection *c, unsigned code, bool ok, const char *msg)
{
    json_t *doc = json_pack("{s:b, s:s}", "ok", ok, "message", msg);
    char *body = json_dumps(doc, 0);
    json_decref(doc);
    return body ? reply(c, code, "application/json", body) : MHD_NO;
}

static enum MHD_Result post_reload(struct MHD_Connection *c, const char *req)
{
    (void)req;
    char msg[FERRY_ERR_MAX + 64];
    bool ok = px_control_reload(msg, sizeof msg);
    return json_result(c, ok ? MHD_HTTP_OK : MHD_HTTP_UNPROCESSABLE_CONTENT, ok, msg);
}

/* POST /v1/pause, /v1/resume with an optional {"listener": "<name>"}: the
 * operator's pause of one listener or (no body) of all. */
static enum MHD_Result set_paused(struct MHD_Connection *c, const char *body, bool paused)
{
    json_error_t jerr;
    json_t *req = body && body[0] ? json_loads(body, 0, &jerr) : json_object();
    const char *listener = NULL;
    if (!req || json_unpack(req, "{s?:s}", "listener", &listener) != 0) {
        json_decref(req);
        return json_result(c, MHD_HTTP_BAD_REQUEST, false,
                           "expected no body or {\"listener\": \"<name>\"}");
    }
    char name[FERRY_NAME_MAX], msg[FERRY_NAME_MAX + 96];
    snprintf(name, sizeof name, "%s", listener ? listener : "");
    json_decref(req);
    if (!px_set_paused(name[0] ? name : NULL, paused)) {
        snprintf(msg, sizeof msg, "no listener named %s", name);
        return json_result(c, MHD_HTTP_NOT_FOUND, false, msg);
    }
    snprintf(msg, sizeof msg, "%s%s%s", paused ? "paused" : "resumed", name[0] ? ": listener " : "",
             name);
    if (paused)
        snprintf(msg + strlen(msg), sizeof msg - strlen(msg),
                 ": new clients and new transactions are held until resume");
    return json_result(c, MHD_HTTP_OK, true, msg);
}

static enum MHD_Result post_pause(struct MHD_Connection *c, const char *req)
{
    return set_paused(c, req, true);
}

static enum MHD_Result post_resume(struct MHD_Connection *c, const char *req)
{
    return set_paused(c, req, false);
}

struct admin_route {
    const char *path;
    const char *method;         /* GET routes also answer HEAD */
    bool mutating;              /* changes something: logged as admin.request */
    bool token;                 /* needs the bearer token when one is configured:
                                 * every mutating route, and reads that expose
                                 * clients (addresses, users, databases) */
    enum MHD_Result (*handle)(struct MHD_Connection *c, const char *body);
};

static const struct admin_route routes[] = {
    {"/healthz", "GET", false, false, get_healthz},
    {"/readyz", "GET", false, false, get_readyz},
    {"/v1/status", "GET", false, false, get_status},
    {"/metrics", "GET", false, false, get_metrics},
    {"/v1/reload", "POST", true, true, post_reload},
    {"/v1/pause", "POST", true, true, post_pause},
    {"/v1/resume", "POST", true, true, post_resume},
    {"/v1/sessions", "GET", false, true, get_sessions},
    {"/v1/switchover", "POST", true, true, post_switchover},
};

/* Constant-time check of "Authorization: Bearer <token>". */
static bool authorized(struct MHD_Connection *c)
{
    pthread_mutex_lock(&px_proc.lock);
    char *token = px_proc.cfg->admin_token ? strdup(px_proc.cfg->admin_token) : NULL;
    bool required = px_proc.cfg->admin_token != NULL;
    pthread_mutex_unlock(&px_proc.lock);
    if (!required)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    bool ok = false;
    if (token && h && strncmp(h, "Bearer ", 7) == 0) {
        const char *given = h + 7;
        size_t n = strlen(token), m = strlen(given);
        unsigned char diff = (unsigned char)(n != m);
        for (size_t i = 0; i < n; i++)
            diff |= (unsigned char)(token[i] ^ (i < m ? given[i] : 0));
        ok = diff == 0;
    }
    if (token) {
        memset(token, 0, strlen(token));
        free(token);
    }
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls, (void)version;
    /* Collect the body (small JSON at most), answer once it is complete. */
    struct req_body *rb = *con_cls;
    if (!rb) {
        if (!(rb = calloc(1, sizeof *rb)))
            return MHD_NO;
        *con_cls = rb;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t room = sizeof rb->data - 1 - rb->len;
        if (*upload_size > room)
            rb->too_big = true;
        else
            memcpy(rb->data + rb->len, upload, *upload_size), rb->len += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    if (rb->too_big)
        return json_result(c, MHD_HTTP_CONTENT_TOO_LARGE, false, "request body over 4 KiB");
    const struct admin_route *r = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(url, routes[i].path) == 0)
            r = &routes[i];
    if (!r)
        return reply_text(c, MHD_HTTP_NOT_FOUND, "not found\n");
    bool head_ok = strcmp(r->method, "GET") == 0 && strcmp(method, "HEAD") == 0;
    if (strcmp(method, r->method) != 0 && !head_ok) {
        char *body = strdup("method not allowed\n");
        return body ? reply_allow(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                                  body, r->method)
                    : MHD_NO;
    }
    char qm[64], qp[512];   /* the method and decoded path come from the client */
    if (r->token && !authorized(c)) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        char peer[INET6_ADDRSTRLEN] = "?";
        if (ci && ci->client_addr) {
            const struct sockaddr *sa = ci->client_addr;
            if (sa->sa_family == AF_INET)
                inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, peer, sizeof peer);
            else if (sa->sa_family == AF_INET6)
                inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, peer, sizeof peer);
        }
        ferry_log(FERRY_LOG_WARN, "admin.unauthorized", "method=%s path=%s peer=%s",
                  ferry_log_quote(method, qm, sizeof qm), ferry_log_quote(url, qp, sizeof qp), peer);
        return json_result(c, MHD_HTTP_UNAUTHORIZED, false, "missing or wrong bearer token");
    }
    if (r->mutating)
        ferry_log(FERRY_LOG_INFO, "admin.request", "method=%s path=%s",
                  ferry_log_quote(method, qm, sizeof qm), ferry_log_quote(url, qp, sizeof qp));
    return r->handle(c, rb->data);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    (void)cls, (void)c, (void)why;
    free(*con_cls);
    *con_cls = NULL;
}

struct px_admin *px_admin_start(const struct ferry_hostport *bind, char *err, size_t errlen)
{
    char addr[FERRY_HOST_MAX + 16];
    ferry_hostport_format(bind, addr, sizeof addr);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", bind->port);
    int rc = getaddrinfo(strcmp(bind->host, "*") == 0 ? NULL : bind->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "admin.bind %s: cannot resolve: %s", addr, gai_strerror(rc));
        return NULL;
    }
    struct px_admin *a = calloc(1, sizeof *a);
    /* a thread per connection: a switchover request waits for the new
     * writer while /metrics and /v1/status keep answering */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (res->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (a)
        a->daemon = MHD_start_daemon(flags, bind->port, NULL, NULL, on_request, NULL,
                                     MHD_OPTION_SOCK_ADDR, res->ai_addr,
                                     MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                     MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
    freeaddrinfo(res);
    if (!a || !a->daemon) {
        snprintf(err, errlen, "admin.bind %s: cannot listen (address in use or not local?)", addr);
        free(a);
        return NULL;
    }
    return a;
}

void px_admin_stop(struct px_admin *a)
{
    if (!a)
        return;
    MHD_stop_daemon(a->daemon);
    free(a);
}
