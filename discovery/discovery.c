/* The discovery thread: probe rounds every probe_interval over every
 * discovered listener's clusters, decide() when a round completes, log and
 * record writer changes, and publish a topology snapshot when a writer
 * changes. The thread owns its loop; other threads talk to it through a
 * mutex-guarded inbox and uv_async_send, and read its status under the same
 * mutex.
 */
#include "ferry/discovery.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <uv.h>

#include "internal.h"
#include "ferry/list.h"
#include "ferry/log.h"

const double disc_failover_bounds[FAILOVER_NBUCKETS] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

uint64_t disc_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void disc_lock(struct disc_core *c)
{
    if (c->d)
        pthread_mutex_lock(&c->d->lock);
}

void disc_unlock(struct disc_core *c)
{
    if (c->d)
        pthread_mutex_unlock(&c->d->lock);
}

/* ---- building and tearing down a core ---- */

static bool same_clusters(const struct ferry_listener_cfg *a, const struct ferry_listener_cfg *b)
{
    if (a->nclusters != b->nclusters)
        return false;
    for (size_t i = 0; i < a->nclusters; i++)
        if (strcmp(a->clusters[i].name, b->clusters[i].name) != 0 ||
            !ferry_hostport_equal(&a->clusters[i].endpoint, &b->clusters[i].endpoint))
            return false;
    return true;
}

static struct disc_core *core_new(uv_loop_t *loop, struct ferry_config *cfg,
                                  const struct disc_core *carry)
{
    struct disc_core *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->loop = loop;
    c->cfg = ferry_config_ref(cfg);
    for (size_t i = 0; i < cfg->nlisteners; i++)
        c->nls += cfg->listeners[i].probe_enabled;
    c->ls = calloc(c->nls ? c->nls : 1, sizeof *c->ls);
    if (!c->ls) {
        ferry_config_unref(c->cfg);
        free(c);
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ferry_listener_cfg *lcfg = &cfg->listeners[i];
        if (!lcfg->probe_enabled)
            continue;
        struct disc_listener *l = &c->ls[k++];
        l->owner = c;
        l->lcfg = lcfg;
        l->n = lcfg->nclusters < DISC_MAX_CLUSTERS ? lcfg->nclusters : DISC_MAX_CLUSTERS;
        l->cl = calloc(l->n, sizeof *l->cl);
        disc_decision_init(&l->decision, l->n);
        l->candidate = -1;
        l->aws_group = -1;
        for (size_t j = 0; j < l->n && l->cl; j++) {
            struct disc_cluster_view *v = &l->cl[j];
            v->owner = l;
            l->names[j] = lcfg->clusters[j].name;
            disc_probe_init(&v->probe, loop,
                            lcfg->protocol == FERRY_PROTO_MYSQL ? &disc_engine_mysql : &disc_engine_pg,
                            lcfg->name, &lcfg->clusters[j], lcfg, cfg->discovery.probe_timeout);
            c->open_handles++;
        }
        for (size_t o = 0; carry && o < carry->nls; o++) {
            const struct disc_listener *old = &carry->ls[o];
            if (strcmp(old->lcfg->name, lcfg->name) == 0 && same_clusters(old->lcfg, lcfg)) {
                l->decision = old->decision;
                l->changed_wall_ms = old->changed_wall_ms;
                l->lost_ms = old->lost_ms;
                l->candidate = old->candidate;
                memcpy(l->failover_buckets, old->failover_buckets, sizeof l->failover_buckets);
                l->failover_count = old->failover_count;
                l->failover_sum = old->failover_sum;
                l->failover_last = old->failover_last;
                l->fenced_writable_total = old->fenced_writable_total;
            }
        }
    }
    return c;
}

static void core_free(struct disc_core *c)
{
    for (size_t i = 0; i < c->nls; i++)
        free(c->ls[i].cl);
    free(c->ls);
    free(c->aws_groups);
    ferry_config_unref(c->cfg);
    free(c);
}

void disc_core_handle_closed(struct disc_core *c)
{
    if (--c->open_handles == 0)
        core_free(c);
}

static void on_probe_closed(struct disc_probe *p)
{
    struct disc_cluster_view *v = ferry_container_of(p, struct disc_cluster_view, probe);
    disc_core_handle_closed(v->owner->owner);
}

/* ---- Aurora's global writer endpoint ---- */

/* A lookup may outlive its core (the resolver thread does not know the
 * core closed): the core forgets it by clearing l. */
struct disc_gw_lookup {
    uv_getaddrinfo_t req;
    struct disc_listener *l;
    char name[FERRY_HOST_MAX];
};

static const char *gw_name(const struct disc_listener *l)
{
    return l->lcfg->global_writer_endpoint[0] ? l->lcfg->global_writer_endpoint : l->gw_learned;
}

static void on_gw_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct disc_gw_lookup *g = ferry_container_of(req, struct disc_gw_lookup, req);
    struct disc_listener *l = g->l;
    if (l) {
        disc_lock(l->owner);
        l->gw_lookup = NULL;
        l->gw_wall_ms = disc_wall_ms();
        l->gw_addr[0] = '\0';
        l->gw_error[0] = '\0';
        if (status < 0 || !res)
            snprintf(l->gw_error, sizeof l->gw_error, "%s",
                     status < 0 ? uv_strerror(status) : "no address");
        else
            disc_addr_name(res, l->gw_addr, sizeof l->gw_addr);
        disc_unlock(l->owner);
    }
    uv_freeaddrinfo(res);
    free(g);
}

/* Whether the global writer endpoint's last answer is where cluster j's
 * writer endpoint resolved (the cluster AWS points writers at). */
static bool gw_points_at(const struct disc_listener *l, size_t j)
{
    return l->gw_addr[0] && l->cl[j].has_last && strcmp(l->cl[j].last.writer_addr, l->gw_addr) == 0;
}

/* Looks the global writer endpoint up afresh each round (no caching: where
 * it points moves with the writer); a lookup still in flight is not doubled. */
static void gw_lookup_start(struct disc_listener *l)
{
    const char *name = gw_name(l);
    if (!name[0] || l->gw_lookup)
        return;
    struct disc_gw_lookup *g = calloc(1, sizeof *g);
    if (!g)
        return;
    g->l = l;
    snprintf(g->name, sizeof g->name, "%s", name);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (uv_getaddrinfo(l->owner->loop, &g->req, on_gw_resolved, g->name, NULL, &hints) != 0) {
        free(g);
        return;
    }
    l->gw_lookup = g;
}

/* Closes every probe and the AWS side; the core frees itself when the last
 * handle has closed. */
static void core_close(struct disc_core *c)
{
    for (size_t i = 0; i < c->nls; i++)
        if (c->ls[i].gw_lookup)
            c->ls[i].gw_lookup->l = NULL;   /* it frees itself when it ends */
    c->open_handles++;      /* hold: AWS callbacks run (cancelled) inside disc_aws_close */
    disc_aws_close(c);
    for (size_t i = 0; i < c->nls; i++)
        for (size_t j = 0; j < c->ls[i].n; j++)
            disc_probe_close(&c->ls[i].cl[j].probe, on_probe_closed);
    disc_core_handle_closed(c);
}

/* ---- deciding and publishing ---- */

static struct disc_params params_of(const struct ferry_config *cfg)
{
    const struct ferry_discovery_cfg *dc = &cfg->discovery;
    return (struct disc_params){
        .writer_down_after = dc->writer_down_after,
        /* blind for writer_down_after intervals (plus one probe's time): stop trusting */
        .stale_after_ms = (uint64_t)((dc->writer_down_after * dc->probe_interval + dc->probe_timeout) * 1000.0),
        .aws_stale_after_ms = 120000,
        .lag_stale_after_ms = DISC_LAG_STALE_MS,
    };
}

static void observe_failover(struct disc_listener *l, int from, uint64_t now)
{
    if (l->decision.writer < 0) {
        if (from >= 0)
            l->lost_ms = now;
        return;
    }
    if (from < 0 && !l->lost_ms)
        return;     /* the first writer ever: not a failover */
    double secs = from >= 0 ? 0.0 : (double)(now - l->lost_ms) / 1000.0;
    l->lost_ms = 0;
    for (size_t b = 0; b < FAILOVER_NBUCKETS; b++)
        if (secs <= disc_failover_bounds[b])
            l->failover_buckets[b]++;
    l->failover_count++;
    l->failover_sum += secs;
    l->failover_last = secs;
}

static void record_change(struct disc_core *c, struct disc_listener *l, int from)
{
    const struct disc_decision *dd = &l->decision;
    observe_failover(l, from, uv_now(c->loop));
    const char *from_name = from >= 0 ? l->names[from] : "none";
    const char *to_name = dd->writer >= 0 ? l->names[dd->writer] : "none";
    char esc[FERRY_LOG_QUOTED_MAX(sizeof dd->reason)];
    ferry_log(dd->writer >= 0 ? FERRY_LOG_INFO : FERRY_LOG_WARN, "topology.writer_changed",
              "listener=%s from=%s to=%s generation=%llu reason=\"%s\"", l->lcfg->name, from_name,
              to_name, (unsigned long long)dd->generation,
              ferry_log_escape(dd->reason, esc, sizeof esc));
    l->changed_wall_ms = disc_wall_ms();
    if (!c->d)
        return;
    struct disc_history *h = &c->d->history[c->d->nhistory++ % HISTORY_MAX];
    h->wall_ms = l->changed_wall_ms;
    snprintf(h->listener, sizeof h->listener, "%s", l->lcfg->name);
    snprintf(h->from, sizeof h->from, "%s", from_name);
    snprintf(h->to, sizeof h->to, "%s", to_name);
    h->generation = dd->generation;
    snprintf(h->reason, sizeof h->reason, "%s", dd->reason);
}

/* The address cluster j's writer endpoint resolved to when its last probe
 * answered through it ("" if it did not: sessions then look the name up). */
static const char *verified_addr(const struct disc_listener *l, int j)
{
    const struct disc_cluster_view *v = &l->cl[j];
    return v->has_last && v->last.ok && !v->last.inactive ? v->last.writer_addr : "";
}

static struct ferry_topology *snapshot(struct disc_core *c)
{
    struct ferry_topology *t = ferry_topology_new(c->nls);
    if (!t)
        return NULL;
    t->serial = c->d ? ++c->d->serial : 1;
    for (size_t i = 0; i < c->nls; i++) {
        const struct disc_listener *l = &c->ls[i];
        struct ferry_topology_listener *e = &t->listeners[i];
        snprintf(e->name, sizeof e->name, "%s", l->lcfg->name);
        e->writer = l->decision.writer;
        e->generation = l->decision.generation;
        e->changed_ms = l->changed_wall_ms;
        e->split_brain = l->decision.split_brain;
        e->cut_old = l->decision.cut_old;
        snprintf(e->reason, sizeof e->reason, "%s", l->decision.reason);
        if (e->writer >= 0) {
            snprintf(e->writer_cluster, sizeof e->writer_cluster, "%s", l->names[e->writer]);
            e->writer_endpoint = l->lcfg->clusters[e->writer].endpoint;
            snprintf(e->writer_addr, sizeof e->writer_addr, "%s", verified_addr(l, e->writer));
        }
        e->candidate = l->candidate;
        if (e->candidate >= 0) {
            snprintf(e->candidate_cluster, sizeof e->candidate_cluster, "%s",
                     l->names[e->candidate]);
            e->candidate_endpoint = l->lcfg->clusters[e->candidate].endpoint;
            snprintf(e->candidate_addr, sizeof e->candidate_addr, "%s",
                     verified_addr(l, e->candidate));
        }
    }
    return t;
}

static void fast_rounds(struct ferry_discovery *d, double probe_interval);

/* The writer is in doubt (its last probe failed: a crash is confirmed only
 * after writer_down_after failures in a row), or there is none since less
 * than hold_timeout (clients wait for the promotion to be seen). */
static bool in_doubt(const struct disc_listener *l, uint64_t wall_now, double hold_timeout)
{
    const struct disc_decision *dd = &l->decision;
    if (dd->writer >= 0)
        return dd->c[dd->writer].failures > 0;
    return dd->last_writer >= 0 && l->changed_wall_ms &&
           wall_now - l->changed_wall_ms < (uint64_t)(hold_timeout * 1000.0);
}

/* The global writer's region as Aurora reports it this round, if every
 * instance that answered with a topology names the same one ("" if none or
 * they disagree: an isolated old primary still names itself, and then
 * Aurora's word settles nothing). */
static void topology_writer_region(const struct disc_listener *l, char *out, size_t len)
{
    out[0] = '\0';
    for (size_t j = 0; j < l->n; j++) {
        const struct disc_cluster_view *v = &l->cl[j];
        if (v->obs.probe != DISC_PROBE_OK || !v->last.ok)
            continue;
        for (size_t k = 0; k < v->last.ntopo; k++) {
            const struct disc_topo_member *m = &v->last.topo[k];
            if (!m->writer || !m->region[0])
                continue;
            if (out[0] && strcasecmp(out, m->region) != 0) {
                out[0] = '\0';
                return;
            }
            snprintf(out, len, "%s", m->region);
        }
    }
}

static void core_decide(struct disc_core *c)
{
    struct disc_params p = params_of(c->cfg);
    uint64_t now = uv_now(c->loop);
    bool changed = false, ask_aws = false, doubt = false;
    disc_lock(c);
    for (size_t i = 0; i < c->nls; i++) {
        struct disc_listener *l = &c->ls[i];
        struct disc_obs obs[DISC_MAX_CLUSTERS];
        char topo_region[32];
        topology_writer_region(l, topo_region, sizeof topo_region);
        for (size_t j = 0; j < l->n; j++) {
            obs[j] = l->cl[j].obs;
            const char *region = l->lcfg->clusters[j].region;
            obs[j].topo = !topo_region[0] || !region[0]             ? DISC_AWS_UNKNOWN
                          : strcasecmp(region, topo_region) == 0 ? DISC_AWS_WRITER
                                                                   : DISC_AWS_READER;
            /* "a reader" counts only where this cluster's own instance was
             * part of the agreement (decide.c releases a fence on it) */
            if (obs[j].topo == DISC_AWS_READER &&
                !(l->cl[j].obs.probe == DISC_PROBE_OK && l->cl[j].last.ntopo))
                obs[j].topo = DISC_AWS_UNKNOWN;
            obs[j].global_endpoint = gw_points_at(l, j);
            l->cl[j].obs.probe = DISC_PROBE_NONE;
            /* CloudWatch's lag for disc_candidate(), its measurement time
             * moved onto the loop clock decide() runs on */
            const struct disc_cluster_view *v = &l->cl[j];
            obs[j].lag_at_ms = 0;
            if (v->lag_wall_ms && v->lag_present && v->lag_at > 0) {
                uint64_t wall = disc_wall_ms(), at = (uint64_t)v->lag_at * 1000;
                uint64_t age = wall > at ? wall - at : 0;
                obs[j].lag_ms = v->lag_ms;
                obs[j].lag_at_ms = now > age ? now - age : 1;
            }
        }
        struct disc_decision next;
        char esc[FERRY_LOG_QUOTED_MAX(sizeof next.reason)];
        int from = l->decision.writer;
        disc_decide(&l->decision, obs, l->names, now, &p, &next);
        bool split_news = next.split_brain && !l->decision.split_brain;
        l->decision = next;
        /* sessions whose backend ended wait for this (writer_verdict) */
        if (next.changed || next.writer < 0)
            l->writer_ok_ns = 0;
        else if (obs[next.writer].probe == DISC_PROBE_OK && obs[next.writer].writable &&
                 !next.c[next.writer].failures)
            l->writer_ok_ns = l->cl[next.writer].obs_started_ns;
        if (next.changed) {
            record_change(c, l, from);
            changed = true;
            if (next.cut_old && from >= 0) {
                l->fenced_writable_total++;
                ferry_log(FERRY_LOG_ERROR, "topology.writable_writer_fenced",
                          "listener=%s fenced=%s writer=%s action=\"sessions cut from %s: nothing "
                          "more is relayed there and nothing in flight there is acknowledged\" "
                          "reason=\"%s\"", l->lcfg->name, l->names[from],
                          next.writer >= 0 ? l->names[next.writer] : "none", l->names[from],
                          ferry_log_escape(next.reason, esc, sizeof esc));
            }
        }
        int candidate = disc_candidate(&next, now, &p);
        if (candidate != l->candidate) {
            l->candidate = candidate;
            changed = true;     /* published: waiting sessions may log in there */
        }
        /* new sessions connect to the writer's address as last verified: a
         * name that moved (within the cluster) is published at once */
        const char *addr = next.writer >= 0 ? verified_addr(l, next.writer) : "";
        if (addr[0] && strcmp(addr, l->writer_addr) != 0) {
            if (l->writer_addr[0] && next.writer == l->writer_addr_of)
                ferry_log(FERRY_LOG_INFO, "topology.writer_address_changed",
                          "listener=%s cluster=%s from=%s to=%s", l->lcfg->name,
                          l->names[next.writer], l->writer_addr, addr);
            changed = true;
        }
        snprintf(l->writer_addr, sizeof l->writer_addr, "%s", addr);
        l->writer_addr_of = next.writer;
        if (split_news)
            ferry_log(FERRY_LOG_ERROR, "topology.split_brain", "listener=%s reason=\"%s\"",
                      l->lcfg->name, ferry_log_escape(next.reason, esc, sizeof esc));
        if (next.split_brain)
            ask_aws = true;
        if (in_doubt(l, disc_wall_ms(), c->cfg->discovery.hold_timeout))
            doubt = true;
    }
    c->decided = true;
    disc_unlock(c);
    if (ask_aws)
        disc_aws_poll_soon(c);  /* AWS can settle who the writer is */
    if (doubt && c->d)
        fast_rounds(c->d, c->cfg->discovery.probe_interval);
    if (c->d && (changed || !c->published)) {
        struct ferry_topology *t = snapshot(c);
        if (t) {
            c->published = true;
            c->d->publish(t, c->d->ud);
        }
    }
}

/* An inactive endpoint and a TLS failure are logged when they begin and
 * when they end (a TLS failure also when its reason changes), not every
 * round. Names and details are quoted: they come from config and servers. */
static void log_state_change(struct disc_cluster_view *v, const struct disc_probe *p,
                             const struct disc_probe_result *r)
{
    char ep[FERRY_HOST_MAX * 2], detail[sizeof r->detail * 2];
    ferry_log_quote(p->writer_ep.host, ep, sizeof ep);
    if (r->inactive && !v->logged_inactive)
        ferry_log(FERRY_LOG_INFO, "probe.endpoint_inactive",
                  "listener=%s cluster=%s endpoint=%s reason=\"does not resolve\"", p->listener,
                  p->cluster, ep);
    else if (!r->inactive && v->logged_inactive)
        ferry_log(FERRY_LOG_INFO, "probe.endpoint_active", "listener=%s cluster=%s endpoint=%s",
                  p->listener, p->cluster, ep);
    v->logged_inactive = r->inactive;

    if (r->tls_failed && (!v->logged_tls || strcmp(v->logged_tls_detail, r->detail) != 0)) {
        ferry_log(FERRY_LOG_WARN, "probe.tls_failed", "listener=%s cluster=%s endpoint=%s error=%s",
                  p->listener, p->cluster, ep, ferry_log_quote(r->detail, detail, sizeof detail));
        snprintf(v->logged_tls_detail, sizeof v->logged_tls_detail, "%s", r->detail);
        v->logged_tls = true;
    } else if (r->ok && v->logged_tls) {
        ferry_log(FERRY_LOG_INFO, "probe.tls_ok", "listener=%s cluster=%s endpoint=%s",
                  p->listener, p->cluster, ep);
        v->logged_tls = false;
    }
}

static void on_probe_result(struct disc_probe *p, const struct disc_probe_result *r, void *ud)
{
    struct disc_cluster_view *v = ud;
    struct disc_core *c = v->owner->owner;
    disc_lock(c);
    v->last = *r;
    v->has_last = true;
    v->last_wall_ms = disc_wall_ms();
    /* tls-failed is a failed probe for decide(); only its status differs */
    v->obs.probe = r->ok ? DISC_PROBE_OK : r->inactive ? DISC_PROBE_INACTIVE : DISC_PROBE_FAILED;
    v->obs_started_ns = p->started_ns;
    v->probes_total++;
    v->failures_total += !r->ok && !r->inactive;
    v->obs.writable = r->writable;
    v->obs.via_reader = r->ok && r->inactive;
    v->obs.timeline = r->ok ? r->timeline : 0;
    disc_unlock(c);
    log_state_change(v, p, r);
    if (!r->ok && ferry_log_enabled(FERRY_LOG_DEBUG)) {
        char detail[sizeof r->detail * 2];
        ferry_log(FERRY_LOG_DEBUG, "probe.failed", "listener=%s cluster=%s error=%s", p->listener,
                  p->cluster, ferry_log_quote(r->detail, detail, sizeof detail));
    }
    if (--c->outstanding == 0)
        core_decide(c);
}

/* Starts every probe that is not still busy with the previous round. */
static void core_round(struct disc_core *c)
{
    for (size_t i = 0; i < c->nls; i++)
        gw_lookup_start(&c->ls[i]);
    for (size_t i = 0; i < c->nls; i++)
        for (size_t j = 0; j < c->ls[i].n; j++) {
            struct disc_cluster_view *v = &c->ls[i].cl[j];
            c->outstanding++;
            if (disc_probe_run(&v->probe, on_probe_result, v) != 0)
                c->outstanding--;
        }
    if (c->outstanding == 0 && c->nls == 0)
        core_decide(c);
}

/* ---- status ---- */

json_t *disc_iso_time(uint64_t ms)
{
    if (!ms)
        return json_null();
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char buf[96];   /* ints may be wide as far as the compiler knows */
    snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
    return json_string(buf);
}

static const char *cluster_state(const struct disc_cluster_view *v)
{
    if (!v->has_last)
        return "unknown";
    if (v->last.inactive)
        return "inactive";
    if (v->last.tls_failed)
        return "tls-failed";
    if (!v->last.ok)
        return "unreachable";
    return v->last.writable ? "writable" : "read-only";
}

static json_t *listener_json(const struct disc_listener *l)
{
    const struct disc_decision *dd = &l->decision;
    json_t *clusters = json_array();
    for (size_t j = 0; j < l->n; j++) {
        const struct disc_cluster_view *v = &l->cl[j];
        char ep[FERRY_HOST_MAX + 16];
        ferry_hostport_format(&l->lcfg->clusters[j].endpoint, ep, sizeof ep);
        json_array_append_new(clusters, json_pack(
            "{s:s, s:s, s:s, s:s, s:f, s:i, s:b, s:b, s:o, s:I, s:I}", "name", l->names[j],
            "endpoint", ep, "state", cluster_state(v), "detail", v->has_last ? v->last.detail : "",
            "latency_ms", v->has_last ? v->last.latency_ms : 0.0,
            "consecutive_failures", (int)dd->c[j].failures, "fenced", dd->c[j].fenced,
            "aurora", v->has_last && v->last.aurora, "observed_at", disc_iso_time(v->last_wall_ms),
            "probes_total", (json_int_t)v->probes_total,
            "probe_failures_total", (json_int_t)v->failures_total));
        if (v->has_last && v->last.ok && v->last.inactive)     /* seen through the reader endpoint */
            json_object_set_new(json_array_get(clusters, j), "via", json_string("reader_endpoint"));
        if (dd->c[j].timeline)
            json_object_set_new(json_array_get(clusters, j), "timeline",
                                json_integer(dd->c[j].timeline));
        if (v->has_last && v->last.ok && v->last.ntopo) {
            /* the global topology as this cluster's instance reports it */
            json_t *members = json_array();
            for (size_t k = 0; k < v->last.ntopo; k++) {
                const struct disc_topo_member *m = &v->last.topo[k];
                json_array_append_new(members, json_pack(
                    "{s:s, s:s, s:s, s:o}", "server_id", m->server_id, "region", m->region, "role",
                    m->writer ? "writer" : "reader", "visibility_lag_ms",
                    m->lag_ms >= 0 ? json_real(m->lag_ms) : json_null()));
            }
            json_object_set_new(json_array_get(clusters, j), "aurora_topology", members);
        }
        json_t *aws = disc_aws_cluster_json(v);
        if (aws)
            json_object_set_new(json_array_get(clusters, j), "aws", aws);
    }
    json_t *buckets = json_array();
    for (size_t b = 0; b < FAILOVER_NBUCKETS; b++)
        json_array_append_new(buckets, json_pack("{s:f, s:I}", "le", disc_failover_bounds[b], "count",
                                                 (json_int_t)l->failover_buckets[b]));
    json_t *out = json_pack("{s:s, s:s?, s:I, s:s, s:b, s:o, s:o, s:{s:o, s:I, s:f}}", "name",
                     l->lcfg->name, "writer", dd->writer >= 0 ? l->names[dd->writer] : NULL,
                     "generation", (json_int_t)dd->generation, "reason", dd->reason,
                     "split_brain", dd->split_brain, "changed_at", disc_iso_time(l->changed_wall_ms),
                     "clusters", clusters, "failover_seconds", "buckets", buckets, "count",
                     (json_int_t)l->failover_count, "sum", l->failover_sum);
    json_object_set_new(out, "candidate",
                        l->candidate >= 0 ? json_string(l->names[l->candidate]) : json_null());
    if (gw_name(l)[0]) {
        int points_to = -1;
        for (size_t j = 0; j < l->n; j++)
            if (gw_points_at(l, j))
                points_to = (int)j;
        json_object_set_new(out, "global_writer_endpoint", json_pack(
            "{s:s, s:s?, s:s?, s:s?, s:o}", "name", gw_name(l),
            "address", l->gw_addr[0] ? l->gw_addr : NULL,
            "points_to", points_to >= 0 ? l->names[points_to] : NULL,
            "error", l->gw_error[0] ? l->gw_error : NULL, "observed_at", disc_iso_time(l->gw_wall_ms)));
    }
    json_object_set_new(out, "writable_writer_fenced_total",
                        json_integer((json_int_t)l->fenced_writable_total));
    json_object_set_new(out, "last_failover_seconds",
                        l->failover_count ? json_real(l->failover_last) : json_null());
    return out;
}

static json_t *core_json(const struct disc_core *c)
{
    json_t *ls = json_array();
    for (size_t i = 0; i < c->nls; i++) {
        json_t *l = listener_json(&c->ls[i]);
        json_t *aws = disc_aws_listener_json(&c->ls[i]);
        if (aws)
            json_object_set_new(l, "aws", aws);
        json_array_append_new(ls, l);
    }
    return ls;
}

json_t *ferry_discovery_status(struct ferry_discovery *d)
{
    pthread_mutex_lock(&d->lock);
    json_t *hist = json_array();
    size_t first = d->nhistory > HISTORY_MAX ? d->nhistory - HISTORY_MAX : 0;
    for (size_t i = first; i < d->nhistory; i++) {
        const struct disc_history *h = &d->history[i % HISTORY_MAX];
        json_array_append_new(hist, json_pack("{s:o, s:s, s:s, s:s, s:I, s:s}", "at",
                                              disc_iso_time(h->wall_ms), "listener", h->listener,
                                              "from", h->from, "to", h->to, "generation",
                                              (json_int_t)h->generation, "reason", h->reason));
    }
    json_t *out = json_pack("{s:o, s:o}", "listeners", d->core ? core_json(d->core) : json_array(),
                            "history", hist);
    pthread_mutex_unlock(&d->lock);
    return out;
}

/* ---- the thread ---- */

static void on_round(uv_timer_t *t)
{
    struct ferry_discovery *d = t->data;
    core_round(d->core);
}

static void restart_rounds(struct ferry_discovery *d)
{
    uint64_t ms = (uint64_t)(d->core->cfg->discovery.probe_interval * 1000.0);
    uv_timer_start(&d->round_timer, on_round, 0, ms ? ms : 1);
}

/* While a writer is in doubt the next round comes after a fifth of
 * probe_interval (at least 20 ms): the failover window is mostly detection
 * time. Probes still busy from the round before are not started twice. */
static void fast_rounds(struct ferry_discovery *d, double probe_interval)
{
    uint64_t every = (uint64_t)(probe_interval * 1000.0);
    uint64_t soon = every / 5 > 20 ? every / 5 : 20;
    if (soon < every)
        uv_timer_start(&d->round_timer, on_round, soon, every ? every : 1);
}

static void on_wakeup(uv_async_t *h)
{
    struct ferry_discovery *d = h->data;
    pthread_mutex_lock(&d->lock);
    bool stop = d->stop, now = d->probe_now;
    struct ferry_config *cfg = d->pending_cfg;
    d->pending_cfg = NULL;
    d->probe_now = false;
    char sw_listener[FERRY_NAME_MAX], sw_cluster[FERRY_NAME_MAX];
    memcpy(sw_listener, d->switch_listener, sizeof sw_listener);
    memcpy(sw_cluster, d->switch_cluster, sizeof sw_cluster);
    d->switch_cluster[0] = '\0';
    if (d->switch_cancel && d->core)
        for (size_t i = 0; i < d->core->nls; i++)
            d->core->ls[i].decision.requested = -1;
    d->switch_cancel = false;
    if (sw_cluster[0] && d->core) {
        /* applied here, under the lock, on the thread that owns decisions */
        for (size_t i = 0; i < d->core->nls; i++) {
            struct disc_listener *l = &d->core->ls[i];
            if (sw_listener[0] && strcmp(sw_listener, l->lcfg->name) != 0)
                continue;
            for (size_t j = 0; j < l->n; j++)
                if (strcmp(l->names[j], sw_cluster) == 0)
                    l->decision.requested = (int)j;
        }
        now = true;
        ferry_log(FERRY_LOG_INFO, "topology.switchover_requested", "listener=%s to=%s",
                  sw_listener[0] ? sw_listener : "*", sw_cluster);
    }
    pthread_mutex_unlock(&d->lock);

    if (stop) {
        ferry_config_unref(cfg);
        uv_close((uv_handle_t *)&d->round_timer, NULL);
        uv_close((uv_handle_t *)&d->wakeup, NULL);
        pthread_mutex_lock(&d->lock);
        struct disc_core *c = d->core;
        d->core = NULL;
        pthread_mutex_unlock(&d->lock);
        core_close(c);
        return;
    }
    if (cfg) {
        struct disc_core *next = core_new(&d->loop, cfg, d->core);
        ferry_config_unref(cfg);
        if (!next) {
            ferry_log(FERRY_LOG_ERROR, "discovery.reconfigure_failed", "error=\"out of memory\"");
        } else {
            next->d = d;
            disc_aws_start(next);
            pthread_mutex_lock(&d->lock);
            struct disc_core *old = d->core;
            d->core = next;
            pthread_mutex_unlock(&d->lock);
            core_close(old);
            restart_rounds(d);   /* first round of the new config at once; it publishes */
            return;
        }
    }
    if (now)
        restart_rounds(d);
}

static void *discovery_main(void *arg)
{
    struct ferry_discovery *d = arg;
    uv_run(&d->loop, UV_RUN_DEFAULT);
    return NULL;
}

struct ferry_discovery *ferry_discovery_start(struct ferry_config *cfg,
                                              ferry_topology_publish_cb publish, void *ud)
{
    struct ferry_discovery *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    pthread_mutex_init(&d->lock, NULL);
    d->publish = publish;
    d->ud = ud;
    if (uv_loop_init(&d->loop) != 0) {
        free(d);
        return NULL;
    }
    d->core = core_new(&d->loop, cfg, NULL);
    if (!d->core) {
        uv_loop_close(&d->loop);
        free(d);
        return NULL;
    }
    d->core->d = d;
    disc_aws_start(d->core);
    uv_async_init(&d->loop, &d->wakeup, on_wakeup);
    d->wakeup.data = d;
    uv_timer_init(&d->loop, &d->round_timer);
    d->round_timer.data = d;
    restart_rounds(d);
    if (pthread_create(&d->thread, NULL, discovery_main, d) != 0) {
        /* not started: nothing else references d */
        abort();
    }
    return d;
}

void ferry_discovery_reconfigure(struct ferry_discovery *d, struct ferry_config *cfg)
{
    pthread_mutex_lock(&d->lock);
    ferry_config_unref(d->pending_cfg);
    d->pending_cfg = ferry_config_ref(cfg);
    uv_async_send(&d->wakeup);
    pthread_mutex_unlock(&d->lock);
}

void ferry_discovery_probe_now(struct ferry_discovery *d)
{
    pthread_mutex_lock(&d->lock);
    if (!d->stop) {     /* after stop the async handle is closed */
        d->probe_now = true;
        uv_async_send(&d->wakeup);
    }
    pthread_mutex_unlock(&d->lock);
}

/* Listeners of the current core that a switchover (listener, cluster)
 * names; calls fn for each. Caller holds d->lock. */
static int each_switch_target(struct ferry_discovery *d, const char *listener, const char *cluster,
                              bool (*fn)(const struct disc_listener *l, size_t j))
{
    int matched = 0, ok = 0;
    for (size_t i = 0; d->core && i < d->core->nls; i++) {
        const struct disc_listener *l = &d->core->ls[i];
        if (listener && strcmp(listener, l->lcfg->name) != 0)
            continue;
        for (size_t j = 0; j < l->n; j++)
            if (strcmp(l->names[j], cluster) == 0) {
                matched++;
                ok += !fn || fn(l, j);
            }
    }
    return fn ? (ok == matched && matched > 0) : matched;
}

int ferry_discovery_switchover(struct ferry_discovery *d, const char *listener, const char *cluster)
{
    pthread_mutex_lock(&d->lock);
    int n = each_switch_target(d, listener, cluster, NULL);
    if (n > 0 && !d->stop) {
        snprintf(d->switch_listener, sizeof d->switch_listener, "%s", listener ? listener : "");
        snprintf(d->switch_cluster, sizeof d->switch_cluster, "%s", cluster);
        uv_async_send(&d->wakeup);
    }
    pthread_mutex_unlock(&d->lock);
    return n;
}

void ferry_discovery_switchover_cancel(struct ferry_discovery *d)
{
    pthread_mutex_lock(&d->lock);
    if (!d->stop) {
        d->switch_cancel = true;
        d->switch_cluster[0] = '\0';
        uv_async_send(&d->wakeup);
    }
    pthread_mutex_unlock(&d->lock);
}

static bool is_writer(const struct disc_listener *l, size_t j)
{
    return l->decision.writer == (int)j;
}

bool ferry_discovery_writer_is(struct ferry_discovery *d, const char *listener, const char *cluster)
{
    pthread_mutex_lock(&d->lock);
    bool yes = each_switch_target(d, listener, cluster, is_writer) == 1;
    pthread_mutex_unlock(&d->lock);
    return yes;
}

enum ferry_writer_verdict ferry_discovery_writer_verdict(struct ferry_discovery *d,
                                                         const char *listener, uint64_t gen,
                                                         uint64_t since_ns)
{
    enum ferry_writer_verdict v = FERRY_VERDICT_MOVED;
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; d->core && i < d->core->nls; i++) {
        const struct disc_listener *l = &d->core->ls[i];
        if (strcmp(listener, l->lcfg->name) != 0)
            continue;
        if (l->decision.writer < 0 || l->decision.generation != gen)
            break;
        v = l->writer_ok_ns >= since_ns ? FERRY_VERDICT_HEALTHY : FERRY_VERDICT_PENDING;
        break;
    }
    pthread_mutex_unlock(&d->lock);
    return v;
}

void ferry_discovery_stop(struct ferry_discovery *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->lock);
    bool running = !d->stop;
    d->stop = true;
    if (running)
        uv_async_send(&d->wakeup);
    pthread_mutex_unlock(&d->lock);
    if (running) {
        pthread_join(d->thread, NULL);
        uv_loop_close(&d->loop);
    }
}

void ferry_discovery_free(struct ferry_discovery *d)
{
    if (!d)
        return;
    ferry_discovery_stop(d);
    ferry_config_unref(d->pending_cfg);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* ---- one-shot (`ferry discover`) ---- */

json_t *ferry_discovery_once(struct ferry_config *cfg, bool *has_writer)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct disc_core *c = core_new(&loop, cfg, NULL);
    json_t *out = NULL;
    *has_writer = false;
    if (c) {
        core_round(c);
        while (!c->decided && uv_run(&loop, UV_RUN_ONCE))
            ;
        out = core_json(c);
        *has_writer = c->nls > 0;
        for (size_t i = 0; i < c->nls; i++)
            *has_writer &= c->ls[i].decision.writer >= 0;
        core_close(c);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return out ? out : json_array();
}
