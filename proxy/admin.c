/* Admin HTTP endpoint (libmicrohttpd): health, readiness, status and metrics
 * (read-only: counters through relaxed atomics, the registry under
 * px_proc.lock), and the mutating POST endpoints (reload, pause, resume,
 * switchover), which a bearer token protects when one is configured.
 *
 * No number of slow or idle clients may hold up /healthz (the liveness
 * probe), so:
 *  - one MHD thread (epoll) serves every connection, and no handler blocks
 *    it: a request that waits for something (a reload on the main loop, a
 *    switchover, the workers' session lists) is a job, its connection
 *    suspended until the job is done;
 *  - each phase of a connection (receiving a whole request, then having its
 *    answer taken) must end within admin.request_timeout, counted from the
 *    phase's start and not from the last byte (a client sending a byte a
 *    second is cut off too): the reaper thread shuts down what overstays;
 *  - a connection accepted over admin.max_connections_per_peer (of its
 *    client address) or admin.max_connections takes the place of the
 *    oldest connection of that peer, or of all, that no job holds: a new
 *    request always gets in, and only clients that send nothing useful
 *    lose theirs.
 */
#include <arpa/inet.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/socket.h>
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

#define ADMIN_MAX_JOBS 8        /* requests waiting on other threads at once */
#define ADMIN_SLACK 32          /* MHD's limits over ferry's: connections ferry shut down
                                 * that MHD has not closed yet */
#define ADMIN_REAP_BATCH_MS 50  /* the reaper sleeps at least this long between rounds */

const char *const px_admin_drop_names[PX_ADMIN_DROP_N] = {"request_timeout", "peer_limit",
                                                          "connection_limit"};
struct px_admin_stats px_admin_stats;

struct admin_job;

/* One TCP connection: MHD's socket context. */
struct admin_conn {
    struct admin_conn *prev, *next;     /* px_admin's list, in accept order */
    int fd;                             /* MHD's: shut down here, never closed */
    struct sockaddr_storage peer;
    uint64_t since_ms;                  /* start of the current phase: receiving a request,
                                         * or having its answer taken */
    struct admin_job *job;              /* borrowed: the job holding its request (no
                                         * deadline meanwhile, never dropped) */
    bool dropped;                       /* shut down by ferry: MHD closes it next */
};

struct px_admin {
    struct MHD_Daemon *daemon;
    unsigned cfg_max, cfg_per_peer;     /* as configured (px_admin_applies) */
    double cfg_timeout;
    unsigned max_conns, max_per_peer;   /* in force: max_conns as the descriptor limit allows */
    uint64_t timeout_ms;
    pthread_t reaper;
    pthread_mutex_t lock;               /* everything below */
    pthread_cond_t cv;                  /* the reaper's sleep; a job done (px_admin_stop) */
    struct admin_conn *head, *tail;
    unsigned njobs, nthreads;           /* jobs not done; of them, on threads of their own */
    int refs;                           /* px_admin_start's, and one per job not done */
    bool stopping;                      /* also read without the lock (atomic) */
    bool reaper_idle;                   /* the reaper sleeps without a deadline */
};

/* A request that waits for another thread. Its connection is suspended
 * until the job is done; whoever finishes it resumes the connection, and
 * the access handler, called again, sends the answer. */
struct admin_job {
    struct px_admin *admin;             /* counted reference until done */
    unsigned (*run)(struct admin_job *j, char **text); /* on a thread of its own: returns
                                         * the status, text the JSON (owned); NULL: a
                                         * callback calls job_finish() */
    struct px_reload_wait reload;       /* POST /v1/reload */
    long limit, offset;                 /* GET /v1/sessions */
    char target[FERRY_NAME_MAX], listener[FERRY_NAME_MAX]; /* POST /v1/switchover */
    double timeout;
    int nlisteners;
    struct px_listener **held;          /* owned: the listeners the switchover holds */
    size_t nheld;
    void (*abandon)(struct admin_job *j); /* undoes what was started when run cannot run */
    /* under admin->lock: */
    struct MHD_Connection *conn;        /* borrowed; NULL once resumed */
    struct admin_conn *ac;              /* likewise */
    int refs;                           /* the request's and the doer's */
    bool done;
    unsigned code;                      /* the answer, once done */
    char *text;                         /* owned: JSON; NULL once handed to MHD */
};

struct admin_req {
    struct px_admin *admin;
    struct admin_conn *ac;              /* borrowed: its connection's; NULL if untracked */
    struct admin_job *job;              /* counted reference once the request waits on one */
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
    json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:o, s:b, s:b}", "name", lcfg->name,
                            "protocol", ferry_proto_name(lcfg->protocol), "bind", bind,
                            "routing", lcfg->probe_enabled ? "discovered" : "static",
                            "route", route_json, "paused", px_listener_paused(pl),
                            "holding", px_listener_holding(pl));
    /* the numbers as a table: one json_pack format for 21 of them had to be
     * counted by hand, and merges twice got it wrong */
    const struct { const char *key; uint64_t value; } numbers[] = {
        {"max_client_connections", lcfg->max_client_connections},
        {"session_buffer", lcfg->session_buffer},
        {"clients_active", sum.active},
        {"clients_accepted_total", sum.accepted},
        {"clients_refused_total", sum.refused},
        {"clients_logging_in", px_listener_logins(pl)},
        {"login_timeouts_total", sum.login_timeouts},
        {"backend_connect_failures_total", sum.backend_connect_failed},
        {"bytes_from_clients_total", sum.bytes_from_clients},
        {"bytes_from_servers_total", sum.bytes_from_servers},
        {"clients_held", sum.held},
        {"hold_timeouts_total", sum.hold_timeouts},
        {"idle_timeouts_total", sum.idle_timeouts},
        {"sessions_waiting_to_move", sum.waiting_to_move},
        {"sessions_moved", sum.moves},
        {"sessions_move_failed", sum.moves_failed},
        {"sessions_ended_by_server", sum.ended_by_server},
        {"failover_errors_total", sum.errors_failover},
        {"protocol_errors_total", sum.errors_protocol},
        {"auth_failures_total", sum.errors_auth},
        {"backend_refused_total", sum.errors_backend_refused},
    };
    for (size_t i = 0; doc && i < sizeof numbers / sizeof numbers[0]; i++)
        json_object_set_new(doc, numbers[i].key, json_integer((json_int_t)numbers[i].value));
    return doc;
}

static char *status_json(void)
{
    uint64_t buffered = 0, peak = 0;
    for (unsigned i = 0; i < px_proc.nworkers; i++) {
        struct px_worker *w = &px_proc.workers[i];
        buffered += PX_STAT_GET(w->buffered_bytes);
        uint64_t p = PX_STAT_GET(w->buffered_peak);
        peak = p > peak ? p : peak;
    }
    pthread_mutex_lock(&px_proc.lock);
    const char *why = NULL;
    bool ready = is_ready(&why);
    json_t *ls = json_array();
    for (size_t i = 0; i < px_proc.nlisteners; i++)
        json_array_append_new(ls, listener_status(&px_proc.cfg->listeners[i], px_proc.listeners[i]));
    json_t *doc = json_pack(
        "{s:s, s:f, s:s, s:I, s:s, s:I, s:b, s:o, s:{s:I, s:I, s:I}}", "version",
        FERRY_VERSION, "uptime_seconds", (double)(px_now_ms() - px_proc.started_ms) / 1000.0,
        "state", __atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED) ? "draining" : "running",
        "config_generation", (json_int_t)px_proc.generation, "config_path", px_proc.cfg->path,
        "workers", (json_int_t)px_proc.nworkers, "ready", ready, "listeners", ls, "buffers",
        "queued_bytes", (json_int_t)buffered, "queued_bytes_peak", (json_int_t)peak,
        "read_bytes", (json_int_t)FERRY_READ_SIZE);
    json_object_set_new(doc, "paused", json_boolean(__atomic_load_n(&px_proc.paused, __ATOMIC_RELAXED)));
    if (px_proc.discovery)
        json_object_set_new(doc, "discovery", ferry_discovery_status(px_proc.discovery));
    pthread_mutex_unlock(&px_proc.lock);
    char *out = px_json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);
    return out;
}

static enum MHD_Result get_healthz(struct MHD_Connection *c, struct admin_req *rq)
{
    (void)rq;
    return reply_text(c, MHD_HTTP_OK, "ok\n");
}

static enum MHD_Result get_readyz(struct MHD_Connection *c, struct admin_req *rq)
{
    (void)rq;
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

static enum MHD_Result get_status(struct MHD_Connection *c, struct admin_req *rq)
{
    (void)rq;
    char *body = status_json();
    if (!body)
        return reply_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "status unavailable\n");
    return reply(c, MHD_HTTP_OK, "application/json", body);
}

static enum MHD_Result get_metrics(struct MHD_Connection *c, struct admin_req *rq)
{
    (void)rq;
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

static char *json_body(bool ok, const char *msg)
{
    json_t *doc = json_pack("{s:b, s:s}", "ok", ok, "message", msg);
    char *body = json_dumps(doc, 0);
    json_decref(doc);
    return body;
}

static enum MHD_Result json_result(struct MHD_Connection *c, unsigned code, bool ok, const char *msg)
{
    char *body = json_body(ok, msg);
    return body ? reply(c, code, "application/json", body) : MHD_NO;
}

/* ---- jobs: requests that wait for another thread ---- */

/* a->lock held: a phase began (a deadline was set). */
static void wake_reaper(struct px_admin *a)
{
    if (a->reaper_idle) {
        a->reaper_idle = false;
        pthread_cond_broadcast(&a->cv);
    }
}

/* a->lock held. */
static void job_unref(struct admin_job *j)
{
    if (--j->refs == 0) {
        free(j->text);
        free(j);
    }
}

static void admin_unref(struct px_admin *a)
{
    pthread_mutex_lock(&a->lock);
    bool last = --a->refs == 0;
    pthread_mutex_unlock(&a->lock);
    if (last) {
        pthread_mutex_destroy(&a->lock);
        pthread_cond_destroy(&a->cv);
        free(a);
    }
}

/* a->lock held: gives j's connection back to MHD, whose access handler
 * then sends j's answer (or, j not done, says the endpoint is stopping). */
static void job_resume(struct admin_job *j)
{
    if (!j->conn)
        return;
    j->ac->job = NULL;
    j->ac->since_ms = px_now_ms();      /* the answer's turn */
    wake_reaper(j->admin);
    MHD_resume_connection(j->conn);
    j->conn = NULL;
    j->ac = NULL;
}

/* The work is done; the answer is code and text (owned JSON; NULL: out of
 * memory, the connection is closed). Any thread; j may be gone after. */
static void job_finish(struct admin_job *j, unsigned code, char *text)
{
    struct px_admin *a = j->admin;
    pthread_mutex_lock(&a->lock);
    j->code = code;
    j->text = text;
    j->done = true;
    job_resume(j);
    a->njobs--;
    if (j->run)
        a->nthreads--;
    pthread_cond_broadcast(&a->cv);
    job_unref(j);
    pthread_mutex_unlock(&a->lock);
    admin_unref(a);
}

static void *job_main(void *arg)
{
    struct admin_job *j = arg;
    char *text = NULL;
    unsigned code = j->run(j, &text);
    job_finish(j, code, text);
    return NULL;
}

/* Suspends rq's connection until j (calloc'd, inputs set) is done: on a
 * thread of its own when j->run is set, else the caller hands j to whoever
 * calls job_finish(). MHD thread. False (j->abandon run, j freed) when
 * ADMIN_MAX_JOBS are waiting already or the endpoint is stopping. */
static bool job_start(struct MHD_Connection *c, struct admin_req *rq, struct admin_job *j)
{
    struct px_admin *a = rq->admin;
    pthread_mutex_lock(&a->lock);
    if (a->stopping || a->njobs >= ADMIN_MAX_JOBS || !rq->ac) {
        pthread_mutex_unlock(&a->lock);
        if (j->abandon)
            j->abandon(j);
        free(j);
        return false;
    }
    j->admin = a;
    a->refs++;
    a->njobs++;
    a->nthreads += j->run != NULL;
    j->conn = c;
    j->ac = rq->ac;
    rq->ac->job = j;
    j->refs = 2;
    rq->job = j;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&a->lock);
    if (j->run) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, job_main, j) != 0) {
            if (j->abandon)
                j->abandon(j);
            job_finish(j, MHD_HTTP_SERVICE_UNAVAILABLE, json_body(false, "cannot start a thread"));
        }
        pthread_attr_destroy(&attr);
    }
    return true;
}

static enum MHD_Result busy(struct MHD_Connection *c)
{
    return json_result(c, MHD_HTTP_SERVICE_UNAVAILABLE, false,
                       "too many admin requests waiting (a reload, switchover or session list); "
                       "try again");
}

/* ---- the endpoints that wait ---- */

static unsigned sessions_page(struct admin_job *j, char **text)
{
    json_t *all = collect_sessions();
    size_t n = json_array_size(all);
    json_t **items = calloc(n ? n : 1, sizeof *items);
    for (size_t i = 0; items && i < n; i++)
        items[i] = json_array_get(all, i);
    if (items)
        qsort(items, n, sizeof *items, by_id);
    json_t *page = json_array();
    for (size_t i = (size_t)j->offset; items && i < n && i < (size_t)j->offset + (size_t)j->limit; i++)
        json_array_append(page, items[i]);
    free(items);
    json_t *doc = json_pack("{s:I, s:I, s:I, s:o}", "total", (json_int_t)n, "offset",
                            (json_int_t)j->offset, "limit", (json_int_t)j->limit, "sessions", page);
    json_decref(all);
    *text = px_json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);
    return MHD_HTTP_OK;
}

static enum MHD_Result get_sessions(struct MHD_Connection *c, struct admin_req *rq)
{
    long limit, offset;
    if (!query_uint(c, "limit", 100, 1000, &limit) || !query_uint(c, "offset", 0, LONG_MAX, &offset))
        return json_result(c, MHD_HTTP_BAD_REQUEST, false, "limit and offset are non-negative integers");
    struct admin_job *j = calloc(1, sizeof *j);
    if (!j)
        return MHD_NO;
    j->run = sessions_page;
    j->limit = limit;
    j->offset = offset;
    return job_start(c, rq, j) ? MHD_YES : busy(c);
}

/* A switchover whose wait cannot run: nothing may stay held. */
static void switchover_abandon(struct admin_job *j)
{
    ferry_discovery_switchover_cancel(px_proc.discovery);
    px_switchover_release(j->held, j->nheld);
    j->held = NULL;
}

/* Waits for the switchover post_switchover() started; on the job's thread. */
static unsigned switchover_wait(struct admin_job *j, char **text)
{
    const char *lp = j->listener[0] ? j->listener : NULL;
    uint64_t start = px_now_ms(), deadline = start + (uint64_t)(j->timeout * 1000.0);
    bool done = false;
    /* a shutdown ends the wait, and so does a restart of this endpoint */
    while (!(done = ferry_discovery_writer_is(px_proc.discovery, lp, j->target)) &&
           px_now_ms() < deadline && !__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED) &&
           !__atomic_load_n(&j->admin->stopping, __ATOMIC_RELAXED))
        usleep(20 * 1000);
    if (!done)
        ferry_discovery_switchover_cancel(px_proc.discovery);
    px_switchover_release(j->held, j->nheld);
    j->held = NULL;
    char msg[300];
    double secs = (double)(px_now_ms() - start) / 1000.0;
    if (!done) {
        snprintf(msg, sizeof msg, "%s did not become writable within %gs; clients released to "
                 "the current writer", j->target, j->timeout);
        ferry_log(FERRY_LOG_WARN, "topology.switchover_timeout", "to=%s timeout=%g", j->target,
                  j->timeout);
        *text = json_body(false, msg);
        return MHD_HTTP_GATEWAY_TIMEOUT;
    }
    snprintf(msg, sizeof msg, "%s is the writer of %d listener%s after %.3fs", j->target,
             j->nlisteners, j->nlisteners == 1 ? "" : "s", secs);
    ferry_log(FERRY_LOG_INFO, "topology.switchover_done", "to=%s listeners=%d seconds=%.3f",
              j->target, j->nlisteners, secs);
    *text = json_body(true, msg);
    return MHD_HTTP_OK;
}

/* POST /v1/switchover {"to": cluster, "listener": optional, "timeout": seconds}:
 * hold new clients, ask discovery to make the target the writer as soon as
 * a probe finds it writable (the promotion itself is the operator's or
 * AWS's), wait for it (a job), release the held clients. */
static enum MHD_Result post_switchover(struct MHD_Connection *c, struct admin_req *rq)
{
    json_error_t jerr;
    json_t *req = json_loads(rq->data, 0, &jerr);
    const char *to = NULL, *listener = NULL;
    double timeout = 60;
    if (!req || json_unpack(req, "{s:s, s?:s, s?:F}", "to", &to, "listener", &listener, "timeout",
                            &timeout) != 0 || timeout <= 0 || timeout > 3600) {
        json_decref(req);
        return json_result(c, MHD_HTTP_BAD_REQUEST, false,
                           "expected {\"to\": \"<cluster>\", \"listener\": \"<name>\" (optional), "
                           "\"timeout\": <seconds> (optional, default 60)}");
    }
    struct admin_job *j = calloc(1, sizeof *j);
    if (!j) {
        json_decref(req);
        return MHD_NO;
    }
    j->run = switchover_wait;
    j->timeout = timeout;
    snprintf(j->target, sizeof j->target, "%s", to);
    snprintf(j->listener, sizeof j->listener, "%s", listener ? listener : "");
    json_decref(req);
    if (!px_proc.discovery) {
        free(j);
        return json_result(c, MHD_HTTP_CONFLICT, false, "no listener uses writer discovery (probe)");
    }
    const char *lp = j->listener[0] ? j->listener : NULL;
    /* only the listeners switched are held; an operator's pause stays */
    j->held = px_switchover_hold(lp, j->target, &j->nheld);
    j->nlisteners = ferry_discovery_switchover(px_proc.discovery, lp, j->target);
    if (j->nlisteners == 0) {
        px_switchover_release(j->held, j->nheld);
        char msg[256];
        snprintf(msg, sizeof msg, "no discovered listener%s%s has a cluster named %s",
                 lp ? " " : "", lp ? lp : "", j->target);
        free(j);
        return json_result(c, MHD_HTTP_NOT_FOUND, false, msg);
    }
    j->abandon = switchover_abandon;
    return job_start(c, rq, j) ? MHD_YES : busy(c);
}

static void reload_done(struct px_reload_wait *w, bool ok, const char *msg)
{
    struct admin_job *j = (struct admin_job *)(void *)((char *)w - offsetof(struct admin_job, reload));
    job_finish(j, ok ? MHD_HTTP_OK : MHD_HTTP_UNPROCESSABLE_CONTENT, json_body(ok, msg));
}

/* The main loop reloads; its answer finishes the job. */
static enum MHD_Result post_reload(struct MHD_Connection *c, struct admin_req *rq)
{
    struct admin_job *j = calloc(1, sizeof *j);
    if (!j)
        return MHD_NO;
    j->reload.done = reload_done;
    if (!job_start(c, rq, j))
        return busy(c);
    px_control_reload(&j->reload);
    return MHD_YES;
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

static enum MHD_Result post_pause(struct MHD_Connection *c, struct admin_req *rq)
{
    return set_paused(c, rq->data, true);
}

static enum MHD_Result post_resume(struct MHD_Connection *c, struct admin_req *rq)
{
    return set_paused(c, rq->data, false);
}

struct admin_route {
    const char *path;
    const char *method;         /* GET routes also answer HEAD */
    bool mutating;              /* changes something: logged as admin.request */
    bool token;                 /* needs the bearer token when one is configured:
                                 * every mutating route, and reads that expose
                                 * clients (addresses, users, databases) */
    enum MHD_Result (*handle)(struct MHD_Connection *c, struct admin_req *rq);
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

static const char *peer_name(const struct sockaddr *sa, char *out, size_t outlen)
{
    snprintf(out, outlen, "?");
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)outlen);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)outlen);
    return out;
}

/* The answer of rq's job, once MHD calls the handler again after resuming. */
static enum MHD_Result job_answer(struct MHD_Connection *c, struct admin_req *rq)
{
    struct px_admin *a = rq->admin;
    pthread_mutex_lock(&a->lock);
    bool done = rq->job->done;
    unsigned code = rq->job->code;
    char *text = rq->job->text;
    rq->job->text = NULL;
    pthread_mutex_unlock(&a->lock);
    if (!done)
        return json_result(c, MHD_HTTP_SERVICE_UNAVAILABLE, false, "the admin endpoint is stopping");
    return text ? reply(c, code, "application/json", text) : MHD_NO;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    struct px_admin *a = cls;
    /* Collect the body (small JSON at most), answer once it is complete. */
    struct admin_req *rq = *con_cls;
    if (!rq) {
        if (!(rq = calloc(1, sizeof *rq)))
            return MHD_NO;
        rq->admin = a;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        rq->ac = ci ? ci->socket_context : NULL;
        *con_cls = rq;
        return MHD_YES;
    }
    if (rq->job)
        return job_answer(c, rq);
    if (*upload_size) {
        size_t room = sizeof rq->data - 1 - rq->len;
        if (*upload_size > room)
            rq->too_big = true;
        else
            memcpy(rq->data + rq->len, upload, *upload_size), rq->len += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    if (rq->ac) {
        pthread_mutex_lock(&a->lock);
        rq->ac->since_ms = px_now_ms();     /* the request is in: the answer's turn */
        pthread_mutex_unlock(&a->lock);
    }
    if (rq->too_big)
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
        char peer[INET6_ADDRSTRLEN];
        ferry_log(FERRY_LOG_WARN, "admin.unauthorized", "method=%s path=%s peer=%s",
                  ferry_log_quote(method, qm, sizeof qm), ferry_log_quote(url, qp, sizeof qp),
                  peer_name(ci ? ci->client_addr : NULL, peer, sizeof peer));
        return json_result(c, MHD_HTTP_UNAUTHORIZED, false, "missing or wrong bearer token");
    }
    if (r->mutating)
        ferry_log(FERRY_LOG_INFO, "admin.request", "method=%s path=%s",
                  ferry_log_quote(method, qm, sizeof qm), ferry_log_quote(url, qp, sizeof qp));
    return r->handle(c, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    (void)c, (void)why;
    struct px_admin *a = cls;
    struct admin_req *rq = *con_cls;
    if (!rq)
        return;
    pthread_mutex_lock(&a->lock);
    if (rq->ac) {
        rq->ac->since_ms = px_now_ms();     /* the next request's turn (keep-alive) */
        wake_reaper(a);
    }
    if (rq->job) {
        if (rq->job->conn) {    /* not expected: MHD ends no suspended request */
            rq->job->ac->job = NULL;
            rq->job->conn = NULL;
            rq->job->ac = NULL;
        }
        job_unref(rq->job);
    }
    pthread_mutex_unlock(&a->lock);
    free(rq);
    *con_cls = NULL;
}

/* ---- connections: limits and deadlines ---- */

static bool same_peer(const struct sockaddr_storage *x, const struct sockaddr_storage *y)
{
    if (x->ss_family != y->ss_family)
        return false;
    if (x->ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)(const void *)x)->sin_addr,
                      &((const struct sockaddr_in *)(const void *)y)->sin_addr,
                      sizeof(struct in_addr)) == 0;
    if (x->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)(const void *)x)->sin6_addr,
                      &((const struct sockaddr_in6 *)(const void *)y)->sin6_addr,
                      sizeof(struct in6_addr)) == 0;
    return false;
}

/* a->lock held. MHD sees the end of the stream and closes the connection
 * (and calls on_completed for a request under way). */
static void drop(struct admin_conn *ac, enum px_admin_drop why)
{
    ac->dropped = true;
    shutdown(ac->fd, SHUT_RDWR);
    __atomic_add_fetch(&px_admin_stats.dropped[why], 1, __ATOMIC_RELAXED);
    char peer[INET6_ADDRSTRLEN];
    ferry_log(FERRY_LOG_DEBUG, "admin.connection_dropped", "peer=%s reason=%s",
              peer_name((const struct sockaddr *)&ac->peer, peer, sizeof peer),
              px_admin_drop_names[why]);
}

/* a->lock held; ac was just accepted. Over the per-peer limit the peer's
 * connection that has been longest in its phase goes, over the total limit
 * the longest-waiting of all; connections held by a job never go. With no
 * such connection, ac goes itself. */
static void admit(struct px_admin *a, struct admin_conn *ac)
{
    unsigned total = 0, same = 0;
    struct admin_conn *oldest = NULL, *oldest_same = NULL;
    for (struct admin_conn *p = a->head; p; p = p->next) {
        if (p->dropped)
            continue;
        bool sp = same_peer(&p->peer, &ac->peer);
        total++;
        same += sp;
        if (p == ac || p->job)
            continue;
        if (!oldest || p->since_ms < oldest->since_ms)
            oldest = p;
        if (sp && (!oldest_same || p->since_ms < oldest_same->since_ms))
            oldest_same = p;
    }
    if (same > a->max_per_peer)
        drop(oldest_same ? oldest_same : ac, PX_ADMIN_DROP_PEER_LIMIT);
    else if (total > a->max_conns)
        drop(oldest ? oldest : ac, PX_ADMIN_DROP_LIMIT);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct px_admin *a = cls;
    struct admin_conn *ac = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (!ac)
            return;
        pthread_mutex_lock(&a->lock);
        if (ac->job) {          /* not expected: MHD closes no suspended connection */
            ac->job->conn = NULL;
            ac->job->ac = NULL;
        }
        *(ac->prev ? &ac->prev->next : &a->head) = ac->next;
        *(ac->next ? &ac->next->prev : &a->tail) = ac->prev;
        pthread_mutex_unlock(&a->lock);
        __atomic_sub_fetch(&px_admin_stats.open, 1, __ATOMIC_RELAXED);
        free(ac);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fd = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *addr =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!fd)
        return;
    if (!(ac = calloc(1, sizeof *ac))) {
        shutdown(fd->connect_fd, SHUT_RDWR);    /* untracked connections are not served */
        return;
    }
    ac->fd = fd->connect_fd;
    if (addr && addr->client_addr && addr->client_addr->sa_family == AF_INET)
        memcpy(&ac->peer, addr->client_addr, sizeof(struct sockaddr_in));
    else if (addr && addr->client_addr && addr->client_addr->sa_family == AF_INET6)
        memcpy(&ac->peer, addr->client_addr, sizeof(struct sockaddr_in6));
    __atomic_add_fetch(&px_admin_stats.open, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&a->lock);
    ac->since_ms = px_now_ms();
    ac->prev = a->tail;
    *(a->tail ? &a->tail->next : &a->head) = ac;
    a->tail = ac;
    admit(a, ac);
    wake_reaper(a);
    pthread_mutex_unlock(&a->lock);
    *socket_context = ac;
}

/* Shuts down every connection whose phase has lasted over the request
 * timeout (MHD's own timeout only counts silence). */
static void *reaper_main(void *arg)
{
    struct px_admin *a = arg;
    pthread_mutex_lock(&a->lock);
    while (!a->stopping) {
        uint64_t now = px_now_ms(), next = UINT64_MAX;
        for (struct admin_conn *ac = a->head; ac; ac = ac->next) {
            if (ac->dropped || ac->job)
                continue;
            uint64_t due = ac->since_ms + a->timeout_ms;
            if (due <= now)
                drop(ac, PX_ADMIN_DROP_TIMEOUT);
            else if (due < next)
                next = due;
        }
        a->reaper_idle = next == UINT64_MAX;
        if (a->reaper_idle) {
            pthread_cond_wait(&a->cv, &a->lock);
            continue;
        }
        uint64_t wait_ms = next - now < ADMIN_REAP_BATCH_MS ? ADMIN_REAP_BATCH_MS : next - now;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)(wait_ms / 1000);
        until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L)
            until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&a->cv, &a->lock, &until);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* ---- start, stop ---- */

/* The admin endpoint takes at most a quarter of the descriptors: clients
 * and their server connections need the rest. */
static unsigned fd_budget(unsigned want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        want + ADMIN_SLACK <= rl.rlim_cur / 4)
        return want;
    rlim_t quarter = rl.rlim_cur / 4;
    unsigned got = quarter > ADMIN_SLACK + 16 ? (unsigned)(quarter - ADMIN_SLACK) : 16;
    ferry_log(FERRY_LOG_WARN, "admin.max_connections_reduced",
              "configured=%u now=%u fd_limit=%llu reason=\"a quarter of the descriptor limit\"", want,
              got, (unsigned long long)rl.rlim_cur);
    return got;
}

bool px_admin_applies(const struct px_admin *a, const struct ferry_config *cfg)
{
    return !a || (a->cfg_max == cfg->admin_max_connections &&
                  a->cfg_per_peer == cfg->admin_max_connections_per_peer &&
                  a->cfg_timeout == cfg->admin_request_timeout);
}

struct px_admin *px_admin_start(const struct ferry_config *cfg, char *err, size_t errlen)
{
    const struct ferry_hostport *bind = &cfg->admin_bind;
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
    if (!a) {
        freeaddrinfo(res);
        snprintf(err, errlen, "admin.bind %s: out of memory", addr);
        return NULL;
    }
    a->cfg_max = cfg->admin_max_connections;
    a->cfg_per_peer = cfg->admin_max_connections_per_peer;
    a->cfg_timeout = cfg->admin_request_timeout;
    a->max_conns = fd_budget(a->cfg_max);
    a->max_per_peer = a->cfg_per_peer < a->max_conns ? a->cfg_per_peer : a->max_conns;
    a->timeout_ms = (uint64_t)(a->cfg_timeout * 1000.0);
    a->refs = 1;
    pthread_mutex_init(&a->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* One polling thread for every connection; requests that wait are
     * suspended (jobs). MHD's own limits sit ADMIN_SLACK above ferry's,
     * which admit() enforces by dropping older connections; MHD's timeout
     * (silence) backs up the reaper's (whole phases). */
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (res->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    a->daemon = MHD_start_daemon(flags, bind->port, NULL, NULL, on_request, a,
                                 MHD_OPTION_SOCK_ADDR, res->ai_addr,
                                 MHD_OPTION_CONNECTION_LIMIT, a->max_conns + ADMIN_SLACK,
                                 MHD_OPTION_PER_IP_CONNECTION_LIMIT, a->max_per_peer + ADMIN_SLACK,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((a->timeout_ms + 999) / 1000),
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, a, MHD_OPTION_END);
    freeaddrinfo(res);
    if (!a->daemon) {
        snprintf(err, errlen, "admin.bind %s: cannot listen (address in use or not local?)", addr);
        admin_unref(a);
        return NULL;
    }
    if (pthread_create(&a->reaper, NULL, reaper_main, a) != 0) {
        snprintf(err, errlen, "admin.bind %s: cannot start a thread", addr);
        MHD_stop_daemon(a->daemon);
        admin_unref(a);
        return NULL;
    }
    return a;
}

void px_admin_stop(struct px_admin *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    __atomic_store_n(&a->stopping, true, __ATOMIC_RELAXED);
    /* MHD must not stop with a suspended connection: each goes back (its
     * handler says the endpoint is stopping). A reload job outlives this
     * (the reload that stops this endpoint is one), holding a reference;
     * jobs on threads end promptly and are waited for, since they read
     * what the caller frees next (discovery). */
    for (struct admin_conn *ac = a->head; ac; ac = ac->next)
        if (ac->job)
            job_resume(ac->job);
    pthread_cond_broadcast(&a->cv);
    while (a->nthreads > 0)
        pthread_cond_wait(&a->cv, &a->lock);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->reaper, NULL);
    MHD_stop_daemon(a->daemon);
    admin_unref(a);
}
