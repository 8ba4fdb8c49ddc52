/* Admin HTTP endpoint (libmicrohttpd, its own thread): health, readiness and
 * a JSON status document. It only reads: counters through relaxed atomics,
 * the config and listener registry under px_proc.lock.
 */
#include <arpa/inet.h>
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

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, char *body)
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
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, "Allow", "GET");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
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
    if (px_proc.discovery && !px_proc.topology) {
        *why = "discovery has not finished its first probe round";
        return false;
    }
    return true;
}

static json_t *listener_status(const struct ferry_listener_cfg *lcfg, struct px_listener *pl)
{
    struct px_counters sum = {0};
    for (unsigned w = 0; w < pl->nworkers; w++) {
        sum.accepted += PX_STAT_GET(pl->stats[w].accepted);
        sum.refused += PX_STAT_GET(pl->stats[w].refused);
        sum.active += PX_STAT_GET(pl->stats[w].active);
        sum.backend_connect_failed += PX_STAT_GET(pl->stats[w].backend_connect_failed);
        sum.bytes_from_clients += PX_STAT_GET(pl->stats[w].bytes_from_clients);
        sum.bytes_from_servers += PX_STAT_GET(pl->stats[w].bytes_from_servers);
    }
    char bind[FERRY_HOST_MAX + 16], ep[FERRY_HOST_MAX + 16];
    const char *cluster = NULL;
    ferry_hostport_format(&lcfg->bind, bind, sizeof bind);
    const struct ferry_hostport *route = px_route(lcfg, px_proc.topology, &cluster);
    json_t *route_json = json_null();
    if (route) {
        ferry_hostport_format(route, ep, sizeof ep);
        route_json = json_pack("{s:s, s:s}", "cluster", cluster, "endpoint", ep);
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                     "name", lcfg->name, "protocol", ferry_proto_name(lcfg->protocol), "bind", bind,
                     "routing", lcfg->probe_enabled ? "discovered" : "static", "route", route_json,
                     "max_client_connections", (json_int_t)lcfg->max_client_connections,
                     "session_buffer", (json_int_t)lcfg->session_buffer,
                     "clients_active", (json_int_t)sum.active,
                     "clients_accepted_total", (json_int_t)sum.accepted,
                     "clients_refused_total", (json_int_t)sum.refused,
                     "backend_connect_failures_total", (json_int_t)sum.backend_connect_failed,
                     "bytes_from_clients_total", (json_int_t)sum.bytes_from_clients,
                     "bytes_from_servers_total", (json_int_t)sum.bytes_from_servers);
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
    if (px_proc.discovery)
        json_object_set_new(doc, "discovery", ferry_discovery_status(px_proc.discovery));
    pthread_mutex_unlock(&px_proc.lock);
    char *out = json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);
    return out;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)cls, (void)version, (void)upload, (void)upload_size, (void)con_cls;
    bool known = strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0 ||
                 strcmp(url, "/v1/status") == 0;
    if (!known)
        return reply_text(c, MHD_HTTP_NOT_FOUND, "not found\n");
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");

    if (strcmp(url, "/healthz") == 0)
        return reply_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0) {
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
    char *body = status_json();
    if (!body)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "status unavailable\n");
    return reply(c, MHD_HTTP_OK, "application/json", body);
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
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (res->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (a)
        a->daemon = MHD_start_daemon(flags, bind->port, NULL, NULL, on_request, NULL,
                                     MHD_OPTION_SOCK_ADDR, res->ai_addr,
                                     MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
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
