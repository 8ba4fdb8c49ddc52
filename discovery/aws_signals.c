/* AWS signals for discovery: RDS DescribeGlobalClusters says which member
 * cluster is the writer and whether a failover is in progress (decide()
 * rules 3 and 4; never a writer the probes have not confirmed), CloudWatch's
 * AuroraGlobalDBReplicationLag says how far each secondary is behind (absent
 * for the primary: a signal, not an error). One schedule per global cluster
 * (aws_schedule.h): a slow jittered heartbeat, sooner on suspicion or while
 * a failover is in progress, backing off when throttled, since the RDS API
 * budget is the whole fleet's. Any AWS failure is recorded and logged;
 * discovery goes on with the probes.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <unistd.h>

#include "client.h"
#include "ferry/log.h"
#include "internal.h"

#define AWS_TICK_MS 250         /* how often the schedules are looked at (no call by itself) */

static bool aws_enabled(const struct disc_listener *l)
{
    return l->lcfg->aws_global_cluster[0] != '\0';
}

/* The region to ask: the configured default first, then each member
 * cluster's region in turn after transport failures (a regional outage must
 * not blind us when another member region can answer). */
static const char *next_region(struct disc_listener *l, unsigned rotate)
{
    const char *regions[DISC_MAX_CLUSTERS + 1];
    size_t n = 0;
    if (l->owner->cfg->aws.region)
        regions[n++] = l->owner->cfg->aws.region;
    for (size_t j = 0; j < l->n; j++)
        if (l->lcfg->clusters[j].region[0])
            regions[n++] = l->lcfg->clusters[j].region;
    return n ? regions[rotate % n] : NULL;
}

static struct disc_cluster_view *cluster_by_id(struct disc_listener *l, const char *id,
                                               const char *region)
{
    for (size_t j = 0; j < l->n; j++) {
        const struct ferry_cluster_cfg *cc = &l->lcfg->clusters[j];
        /* AWS identifiers are case-insensitive (RDS stores them lower case) */
        if (strcasecmp(cc->db_cluster_identifier, id) == 0 &&
            (!cc->region[0] || !region[0] || strcasecmp(cc->region, region) == 0))
            return &l->cl[j];
    }
    return NULL;
}

static void record_error(struct disc_listener *l, const struct aws_status *st, bool lag)
{
    char msg[200];
    snprintf(msg, sizeof msg, "%.40s %.20s: %.60s%s%.60s", st->action, aws_err_class_name(st->cls),
             st->error.code[0] ? st->error.code : "", st->error.code[0] ? " " : "",
             st->error.message);
    disc_lock(l->owner);
    memcpy(l->aws_error, msg, sizeof msg);
    if (lag)
        l->lag_errors_total++;
    else
        l->aws_errors_total++;
    disc_unlock(l->owner);
    if (st->cls == AWS_ERR_ACCESS_DENIED)
        ferry_log(FERRY_LOG_ERROR, "aws.access_denied",
                  "listener=%s action=%s missing_iam_action=%s region=%s "
                  "action_taken=\"discovery goes on with SQL probes\"",
                  l->lcfg->name, st->action, st->iam_action ? st->iam_action : "?",
                  st->region ? st->region : "?");
    else
        ferry_log(FERRY_LOG_WARN, "aws.call_failed",
                  "listener=%s action=%s class=%s http_status=%ld region=%s attempts=%u "
                  "action_taken=\"discovery goes on with SQL probes\"",
                  l->lcfg->name, st->action, aws_err_class_name(st->cls), st->error.http_status,
                  st->region ? st->region : "?", st->attempts);
}

static struct disc_listener *group_listener(struct disc_aws_group *g, size_t *i)
{
    struct disc_core *c = g->core;
    for (; *i < c->nls; (*i)++)
        if (c->ls[*i].aws_group == (int)(g - c->aws_groups))
            return &c->ls[(*i)++];
    return NULL;
}

/* One listener's view of a reply (its clusters, its failover text). */
static void apply_global_cluster(struct disc_listener *l, const struct aws_global_cluster *g,
                                 bool moving, uint64_t now, uint64_t wall)
{
    l->aws_ok_total++;
    l->aws_error[0] = '\0';
    l->aws_failover[0] = '\0';
    if (g)
        snprintf(l->gw_learned, sizeof l->gw_learned, "%s", g->endpoint);
    if (!g) {
        snprintf(l->aws_error, sizeof l->aws_error, "global cluster %s not in the reply",
                 l->lcfg->aws_global_cluster);
        return;
    }
    if (g->failover.present)
        snprintf(l->aws_failover, sizeof l->aws_failover, "%.32s from %.300s to %.300s (%s)",
                 g->failover.status, g->failover.from_arn, g->failover.to_arn,
                 g->failover.data_loss_allowed ? "failover" : "switchover");
    else if (moving)
        snprintf(l->aws_failover, sizeof l->aws_failover, "%.32s", g->status);
    for (size_t m = 0; m < g->nmembers; m++) {
        const struct aws_global_member *mem = &g->members[m];
        struct disc_cluster_view *v = cluster_by_id(l, mem->cluster_id, mem->region);
        if (!v)
            continue;
        /* While RDS reports a failover in progress its IsWriter is in
         * flux: record the roles as unknown rather than stale, and
         * which side of the move each cluster is on (decide.c rule 3). */
        v->obs.aws = moving           ? DISC_AWS_UNKNOWN
                     : mem->is_writer ? DISC_AWS_WRITER
                                      : DISC_AWS_READER;
        v->obs.aws_failover = DISC_AWS_NO_FAILOVER;
        if (g->failover.present && strcasecmp(mem->cluster_arn, g->failover.from_arn) == 0)
            v->obs.aws_failover = DISC_AWS_FAILOVER_FROM;
        else if (g->failover.present && strcasecmp(mem->cluster_arn, g->failover.to_arn) == 0)
            v->obs.aws_failover = DISC_AWS_FAILOVER_TO;
        v->obs.aws_data_loss = g->failover.present && g->failover.data_loss_allowed;
        v->obs.aws_at_ms = now;
        v->aws_wall_ms = wall;
        snprintf(v->aws_sync, sizeof v->aws_sync, "%.31s", mem->sync_status);
    }
}

static void on_global_clusters(const struct aws_status *st, const struct aws_global_clusters *gc,
                               void *ud)
{
    struct disc_aws_group *grp = ud;
    aws_sched_finished(&grp->sched, st->cls == AWS_ERR_THROTTLED);
    if (st->cls == AWS_ERR_CANCELLED)
        return;
    size_t it = 0;
    struct disc_listener *l;
    if (st->cls != AWS_OK) {
        if (st->cls == AWS_ERR_TRANSPORT || st->cls == AWS_ERR_TRANSIENT)
            grp->region_next++;
        while ((l = group_listener(grp, &it)))
            record_error(l, st, false);
        return;
    }
    const struct aws_global_cluster *g = NULL;
    for (size_t i = 0; i < gc->n; i++)
        if (strcasecmp(gc->items[i].id, grp->id) == 0)
            g = &gc->items[i];
    /* A failover or switchover in progress: FailoverState, or the global
     * cluster's own Status while RDS has not filled FailoverState in. */
    grp->moving = g && (g->failover.present || strcasecmp(g->status, "switching-over") == 0 ||
                        strcasecmp(g->status, "failing-over") == 0);
    uint64_t now = uv_now(grp->core->loop), wall = disc_wall_ms();
    disc_lock(grp->core);
    while ((l = group_listener(grp, &it)))
        apply_global_cluster(l, g, grp->moving, now, wall);
    disc_unlock(grp->core);
}

/* How soon a group wants AWS's word: a failover in progress, or a listener
 * whose writer is in doubt, missing or not alone in accepting writes. */
static enum aws_urgency urgency(struct disc_aws_group *g)
{
    if (g->moving)
        return AWS_URGENCY_URGENT;
    size_t it = 0;
    struct disc_listener *l;
    while ((l = group_listener(g, &it))) {
        const struct disc_decision *d = &l->decision;
        if (d->split_brain || d->writer < 0 || d->c[d->writer].failures || d->c[d->writer].inactive)
            return AWS_URGENCY_URGENT;
    }
    return AWS_URGENCY_HEARTBEAT;
}

static void poll_global(struct disc_core *c)
{
    uint64_t now = uv_now(c->loop);
    for (size_t k = 0; k < c->n_aws_groups; k++) {
        struct disc_aws_group *g = &c->aws_groups[k];
        aws_sched_urgency(&g->sched, urgency(g), now);
        if (now < aws_sched_due(&g->sched))
            continue;
        size_t it = 0;
        struct disc_listener *l = group_listener(g, &it);
        if (!l)
            continue;
        aws_sched_started(&g->sched, now);
        if (aws_describe_global_clusters(c->aws, next_region(l, g->region_next), g->id,
                                         on_global_clusters, g) != 0)
            aws_sched_finished(&g->sched, false);
    }
}

/* ---- replication lag ---- */

struct lag_call {
    struct disc_listener *l;
    char region[FERRY_NAME_MAX];
};

static void on_lag(const struct aws_status *st, const struct aws_lag *lags, size_t n, void *ud)
{
    struct lag_call *call = ud;
    struct disc_listener *l = call->l;
    l->lag_busy = false;
    if (st->cls == AWS_ERR_CANCELLED) {
        free(call);
        return;
    }
    if (st->cls != AWS_OK) {
        record_error(l, st, true);
        free(call);
        return;
    }
    uint64_t wall = disc_wall_ms();
    disc_lock(l->owner);
    l->lag_ok_total++;
    for (size_t i = 0; i < n; i++) {
        struct disc_cluster_view *v = cluster_by_id(l, lags[i].cluster_id, call->region);
        if (!v)
            continue;
        v->lag_present = lags[i].present;
        v->lag_ms = lags[i].present ? lags[i].lag_ms : 0.0;
        v->lag_at = lags[i].present ? lags[i].at : 0;
        v->lag_wall_ms = wall;
    }
    disc_unlock(l->owner);
    free(call);
}

static void poll_lag(struct disc_core *c)
{
    for (size_t i = 0; i < c->nls; i++) {
        struct disc_listener *l = &c->ls[i];
        if (!aws_enabled(l) || l->lag_busy)
            continue;
        /* One GetMetricData per region with every identified cluster there
         * (CloudWatch is regional; the metric lives with each secondary). */
        for (size_t j = 0; j < l->n; j++) {
            const char *region = l->lcfg->clusters[j].region;
            bool first = true;
            for (size_t k = 0; k < j; k++)
                first &= strcmp(l->lcfg->clusters[k].region, region) != 0;
            if (!first || !l->lcfg->clusters[j].db_cluster_identifier[0])
                continue;
            const char *ids[DISC_MAX_CLUSTERS];
            size_t nids = 0;
            for (size_t k = j; k < l->n; k++)
                if (strcmp(l->lcfg->clusters[k].region, region) == 0 &&
                    l->lcfg->clusters[k].db_cluster_identifier[0])
                    ids[nids++] = l->lcfg->clusters[k].db_cluster_identifier;
            struct lag_call *call = calloc(1, sizeof *call);
            if (!call)
                continue;
            call->l = l;
            snprintf(call->region, sizeof call->region, "%s", region);
            if (aws_get_replication_lag(c->aws, region[0] ? region : NULL, ids, nids, on_lag, call) == 0)
                l->lag_busy = true;
            else
                free(call);
        }
    }
}

/* ---- timers and life cycle ---- */

static void on_aws_timer(uv_timer_t *t)
{
    poll_global(t->data);
}

/* One group per distinct global cluster (identifiers case-insensitive). */
static bool make_groups(struct disc_core *c)
{
    c->aws_groups = calloc(c->nls ? c->nls : 1, sizeof *c->aws_groups);
    if (!c->aws_groups)
        return false;
    uint64_t seed = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull ^ uv_hrtime();
    uint64_t heartbeat = (uint64_t)(c->cfg->aws.poll_interval * 1000.0);
    uint64_t urgent = (uint64_t)(c->cfg->aws.urgent_poll_interval * 1000.0);
    for (size_t i = 0; i < c->nls; i++) {
        struct disc_listener *l = &c->ls[i];
        if (!aws_enabled(l))
            continue;
        size_t k = 0;
        while (k < c->n_aws_groups && strcasecmp(c->aws_groups[k].id, l->lcfg->aws_global_cluster))
            k++;
        if (k == c->n_aws_groups) {
            struct disc_aws_group *g = &c->aws_groups[c->n_aws_groups++];
            snprintf(g->id, sizeof g->id, "%s", l->lcfg->aws_global_cluster);
            g->core = c;
            aws_sched_init(&g->sched, heartbeat, urgent, seed + k, uv_now(c->loop));
        }
        l->aws_group = (int)k;
    }
    return true;
}

static void on_lag_timer(uv_timer_t *t)
{
    poll_lag(t->data);
}

void disc_aws_start(struct disc_core *c)
{
    bool any = false;
    for (size_t i = 0; i < c->nls; i++)
        any |= aws_enabled(&c->ls[i]);
    if (!any)
        return;
    const struct ferry_aws_cfg *a = &c->cfg->aws;
    struct aws_client_config ac = {
        .region = a->region,
        .rds_endpoint = a->rds_endpoint,
        .monitoring_endpoint = a->monitoring_endpoint,
        .sts_endpoint = a->sts_endpoint,
        .imds_endpoint = a->imds_endpoint,
        .ca_file = a->ca_file,
        .cred_source = (enum aws_cred_source)a->credentials,
    };
    c->aws = aws_client_new(c->loop, &ac);
    if (!c->aws || !make_groups(c)) {
        ferry_log(FERRY_LOG_ERROR, "aws.start_failed", "error=\"out of memory\"");
        return;
    }
    uv_timer_init(c->loop, &c->aws_timer);
    uv_timer_init(c->loop, &c->lag_timer);
    c->aws_timer.data = c->lag_timer.data = c;
    c->aws_timers = true;
    c->open_handles += 2;
    uint64_t lag = (uint64_t)(a->lag_poll_interval * 1000.0);
    uv_timer_start(&c->aws_timer, on_aws_timer, 0, AWS_TICK_MS);
    uv_timer_start(&c->lag_timer, on_lag_timer, 0, lag);
}

void disc_aws_poll_soon(struct disc_core *c)
{
    if (c->aws)
        poll_global(c);     /* the schedules say whether a call is due */
}

static void on_timer_closed(uv_handle_t *h)
{
    disc_core_handle_closed(h->data);
}

void disc_aws_close(struct disc_core *c)
{
    if (c->aws) {
        aws_client_free(c->aws);    /* pending callbacks run now, cancelled */
        c->aws = NULL;
    }
    if (c->aws_timers) {
        c->aws_timers = false;
        uv_close((uv_handle_t *)&c->aws_timer, on_timer_closed);
        uv_close((uv_handle_t *)&c->lag_timer, on_timer_closed);
    }
}

/* ---- status ---- */

static const char *role_name(enum disc_aws_role r)
{
    return r == DISC_AWS_WRITER ? "writer" : r == DISC_AWS_READER ? "reader" : "unknown";
}

/* The lag as CloudWatch published it: the newest datapoint's value and its
 * own time (lag_measured_at), when ferry read it (lag_observed_at), how old
 * the measurement is now and whether that is stale. null while none. */
json_t *disc_aws_cluster_json(const struct disc_cluster_view *v)
{
    if (!aws_enabled(v->owner))
        return NULL;
    bool known = v->lag_wall_ms && v->lag_present;
    uint64_t measured = known && v->lag_at > 0 ? (uint64_t)v->lag_at * 1000 : 0, now = disc_wall_ms();
    double age = measured ? (now > measured ? (double)(now - measured) / 1000.0 : 0.0) : 0.0;
    return json_pack("{s:s, s:o, s:s, s:o, s:o, s:o, s:o, s:o}", "role", role_name(v->obs.aws),
                     "observed_at", disc_iso_time(v->aws_wall_ms), "sync_status", v->aws_sync,
                     "replication_lag_ms", known ? json_real(v->lag_ms) : json_null(),
                     "lag_measured_at", disc_iso_time(measured),
                     "lag_observed_at", disc_iso_time(v->lag_wall_ms),
                     "lag_age_seconds", measured ? json_real(age) : json_null(),
                     "lag_stale", measured ? json_boolean(age * 1000.0 > DISC_LAG_STALE_MS) : json_null());
}

json_t *disc_aws_listener_json(const struct disc_listener *l)
{
    if (!aws_enabled(l))
        return NULL;
    const struct aws_sched *sc = l->aws_group >= 0 && l->owner->aws_groups
                                     ? &l->owner->aws_groups[l->aws_group].sched
                                     : NULL;
    json_t *out = json_pack("{s:s, s:s?, s:s?, s:I, s:I, s:I, s:I}", "global_cluster",
                     l->lcfg->aws_global_cluster, "last_error", l->aws_error[0] ? l->aws_error : NULL,
                     "failover", l->aws_failover[0] ? l->aws_failover : NULL,
                     "describe_global_clusters_ok_total", (json_int_t)l->aws_ok_total,
                     "describe_global_clusters_errors_total", (json_int_t)l->aws_errors_total,
                     "get_metric_data_ok_total", (json_int_t)l->lag_ok_total,
                     "get_metric_data_errors_total", (json_int_t)l->lag_errors_total);
    if (out && sc) {
        /* the shared schedule of this listener's global cluster */
        json_object_set_new(out, "describe_global_clusters_throttled_total",
                            json_integer((json_int_t)sc->throttled));
        json_object_set_new(out, "poll_backoff_ms", json_integer((json_int_t)sc->backoff_ms));
    }
    return out;
}
