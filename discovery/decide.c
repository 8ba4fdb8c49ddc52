/* The writer decision (see decide.h). Rules, in order; the first that
 * applies decides the round:
 * 1. Fold the observations into per-cluster memory (failure streaks, last
 *    OK, timeline) and note promotions: a cluster last seen read-only that
 *    is writable now has been promoted (the only way a replica becomes
 *    writable). Fences are released on evidence: seen read-only, or on a
 *    newer timeline than when fenced (re-promoted since).
 * 2. The operator's switchover target, once a probe finds it writable.
 * 3. A failover or switchover AWS reports in progress (FailoverState, fresh):
 *    its From cluster takes no new work; the To cluster becomes the writer
 *    once a probe finds it writable (a switchover), or only once AWS names it
 *    writer with the failover over (a failover that allows data loss).
 * 4. Aurora's topology (read this round, every instance agreeing) or AWS
 *    (fresh, no failover, newer than our last change) names another cluster
 *    writer and a probe finds it writable: it becomes the writer.
 * 5. A promotion wins over the current writer, whether it still accepts
 *    writes (keeping it is how a split brain loses every write made after
 *    the promotion) or is in doubt (no need to wait out writer_down_after).
 *    A cluster on a newer timeline than the writer was promoted from its
 *    history too (seen or not). Several promotions at once: hold writes.
 * 6. Keep the current writer unless it reports read-only (drop at once), has
 *    failed writer_down_after probes in a row, or has not been seen for
 *    stale_after_ms. Another writable cluster that nothing above explains is
 *    a split brain: keep the writer and flag it.
 * 7. Without a writer, pick the one healthy, writable, unfenced cluster; if
 *    several, the one AWS or Aurora's topology names writer, else the one
 *    Aurora's global writer endpoint points at (DNS may lag a move, so it
 *    only ever breaks such a tie), else the one on the newest timeline,
 *    else hold.
 * Whenever the role leaves a cluster that is still writable, that cluster is
 * fenced and the decision says so (cut_old), so sessions are cut from it.
 */
#include "decide.h"

#include <stdio.h>
#include <string.h>

void disc_decision_init(struct disc_decision *d, size_t nclusters)
{
    memset(d, 0, sizeof *d);
    d->writer = -1;
    d->last_writer = -1;
    d->requested = -1;
    d->failover_to = -1;
    d->n = nclusters < DISC_MAX_CLUSTERS ? nclusters : DISC_MAX_CLUSTERS;
    snprintf(d->reason, sizeof d->reason, "no probe has finished yet");
}

static void fold(struct disc_cluster *c, const struct disc_obs *o, uint64_t now)
{
    c->promoted = false;
    /* Aurora's topology names another writer, and this cluster answered
     * (its own instance is part of that agreement): it is a secondary now,
     * whatever its writer endpoint last said. This releases the fence of an
     * old primary that rejoined as a secondary, whose writer endpoint stays
     * inactive: it is never seen read-only there. */
    if (o->probe == DISC_PROBE_OK && o->topo == DISC_AWS_READER) {
        c->fenced = false;
        if (o->via_reader)
            c->writable = false;
    }
    c->lag_ms = o->lag_ms;      /* AWS's, whatever the probe did */
    c->lag_at_ms = o->lag_at_ms;
    switch (o->probe) {
    case DISC_PROBE_OK:
        if (o->via_reader) {
            /* healthy, but its writer endpoint is inactive: not writable
             * now (inactive), and nothing said about the writer it may
             * still have: `writable` keeps what the writer endpoint last
             * said (a fence stays; a later writable probe of a cluster
             * never seen writable is a promotion) */
            c->failures = 0;
            c->inactive++;
            c->seen_ok = true;
            c->last_ok_ms = now;
            break;
        }
        c->promoted = c->seen_ok && !c->writable && o->writable;
        c->failures = 0;
        c->inactive = 0;
        c->seen_ok = true;
        c->writable = o->writable;
        c->last_ok_ms = now;
        if (o->timeline)
            c->timeline = o->timeline;
        if (!o->writable)
            c->fenced = false;  /* demoted and observed: eligible again later */
        else if (c->fenced && o->timeline && c->fenced_timeline && o->timeline > c->fenced_timeline)
            c->fenced = false;  /* promoted again since it was fenced */
        break;
    case DISC_PROBE_FAILED:
        c->failures++;
        c->inactive = 0;
        break;
    case DISC_PROBE_INACTIVE:
        c->inactive++;          /* not a failure: see decide.h */
        break;
    case DISC_PROBE_NONE:
        break;
    }
}

static bool is_stale(const struct disc_cluster *c, uint64_t now, const struct disc_params *p)
{
    return !c->seen_ok || now - c->last_ok_ms > p->stale_after_ms;
}

/* Healthy and writable right now: the last probe succeeded and said so. */
static bool writable_now(const struct disc_cluster *c, uint64_t now, const struct disc_params *p)
{
    return c->failures == 0 && c->inactive == 0 && c->writable && !is_stale(c, now, p);
}

static bool aws_fresh(const struct disc_obs *o, uint64_t now, const struct disc_params *p)
{
    return o->aws_at_ms && now - o->aws_at_ms <= p->aws_stale_after_ms;
}

static bool aws_says_writer(const struct disc_obs *o, uint64_t now, const struct disc_params *p)
{
    return o->aws == DISC_AWS_WRITER && aws_fresh(o, now, p);
}

/* Why the current writer w must go, or NULL to keep it. */
static const char *writer_lost(const struct disc_cluster *c, uint64_t now,
                               const struct disc_params *p, char *buf, size_t len)
{
    if (c->failures >= p->writer_down_after) {
        snprintf(buf, len, "unreachable for %u consecutive probes", c->failures);
        return buf;
    }
    if (c->inactive >= p->writer_down_after) {
        snprintf(buf, len, "writer endpoint inactive (does not resolve) for %u consecutive probes",
                 c->inactive);
        return buf;
    }
    if (is_stale(c, now, p)) {
        snprintf(buf, len, "no successful probe for %llu ms",
                 (unsigned long long)(now - c->last_ok_ms));
        return buf;
    }
    if (c->failures == 0 && c->inactive == 0 && !c->writable)
        return "reports read-only";
    return NULL;
}

/* Fences c, remembering the timeline it was on (a newer one later means it
 * was promoted again: fold() releases the fence). */
static void fence(struct disc_cluster *c)
{
    if (!c->fenced)
        c->fenced_timeline = c->timeline;
    c->fenced = true;
}

/* Makes w (-1: none) the writer. A previous writer that still accepts
 * writes is fenced, and the decision asks for its sessions to be cut. */
static void set_writer(struct disc_decision *next, const struct disc_decision *prev, int w,
                       uint64_t now)
{
    int old = prev->writer >= 0 ? prev->writer : prev->last_writer;
    bool cut = false;
    /* Fenced when the role goes to another cluster, or is withdrawn from a
     * writer that still answers (a writer that only stopped answering may
     * come back as the writer when nobody else took over). */
    if (old >= 0 && old != w && next->c[old].writable &&
        (w >= 0 || (next->c[old].failures == 0 && next->c[old].inactive == 0))) {
        fence(&next->c[old]);
        cut = prev->writer == old;
    }
    if (w >= 0) {
        next->c[w].fenced = false;
        next->last_writer = w;
    }
    if (w != prev->writer) {
        next->writer = w;
        next->generation++;
        next->changed = true;
        next->changed_ms = now;
        next->cut_old = cut;    /* kept with this generation */
    }
}

/* FailoverState as the fresh AWS observations tell it: from/to indexes (-1
 * unknown); returns whether one is in progress. */
static bool aws_failover(const struct disc_obs *obs, size_t n, uint64_t now,
                         const struct disc_params *p, int *from, int *to, bool *data_loss)
{
    *from = *to = -1;
    *data_loss = false;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (obs[i].aws_failover == DISC_AWS_NO_FAILOVER || !aws_fresh(&obs[i], now, p))
            continue;
        any = true;
        *data_loss |= obs[i].aws_data_loss;
        if (obs[i].aws_failover == DISC_AWS_FAILOVER_FROM)
            *from = (int)i;
        else
            *to = (int)i;
    }
    return any;
}

/* Rule 3. Returns true when the round is decided. */
static bool follow_aws_failover(const struct disc_decision *prev, const struct disc_obs *obs,
                                const char *const *names, uint64_t now,
                                const struct disc_params *p, struct disc_decision *next)
{
    int from, to;
    bool data_loss;
    if (!aws_failover(obs, next->n, now, p, &from, &to, &data_loss))
        return false;
    next->failover_to = to;
    const char *what = data_loss ? "failover" : "switchover";
    const char *to_name = to >= 0 ? names[to] : "?";
    if (from >= 0 && next->c[from].writable && next->c[from].failures == 0)
        fence(&next->c[from]);      /* no new work for the cluster being left */
    if (to >= 0 && to == prev->writer)
        return true;    /* already there; AWS catches up */
    if (to >= 0 && !data_loss && writable_now(&next->c[to], now, p)) {
        set_writer(next, prev, to, now);
        snprintf(next->reason, sizeof next->reason,
                 "AWS reports a switchover to %s in progress and a probe finds it writable", to_name);
        return true;
    }
    if (prev->writer >= 0 && from >= 0 && prev->writer != from)
        return false;   /* AWS moves the role away from another cluster than ours */
    set_writer(next, prev, -1, now);
    if (next->changed)
        snprintf(next->reason, sizeof next->reason,
                 "AWS reports a %s from %s to %s in progress: holding writes until %s", what,
                 from >= 0 ? names[from] : "?", to_name,
                 data_loss ? "AWS names the new writer" : "the target is writable");
    return true;
}

/* Rule 4. */
static bool follow_named_writer(const struct disc_decision *prev, const struct disc_obs *obs,
                                const char *const *names, uint64_t now,
                                const struct disc_params *p, struct disc_decision *next)
{
    for (size_t i = 0; i < next->n; i++) {
        bool topo = obs[i].topo == DISC_AWS_WRITER;
        bool aws = aws_says_writer(&obs[i], now, p) && obs[i].aws_at_ms > prev->changed_ms;
        if ((int)i == prev->writer || !(topo || aws) || !writable_now(&next->c[i], now, p))
            continue;
        bool old_writable = prev->writer >= 0 && writable_now(&next->c[prev->writer], now, p);
        set_writer(next, prev, (int)i, now);
        snprintf(next->reason, sizeof next->reason, "%s names %s writer and a probe confirms it%s%s%s",
                 topo ? "the Aurora topology" : "AWS", names[i], old_writable ? "; " : "",
                 old_writable ? names[prev->writer] : "", old_writable ? " still accepts writes: fenced" : "");
        return true;
    }
    return false;
}

/* Rule 5: clusters promoted this round, or on a newer timeline than the
 * writable writer (promoted from its history while we did not look). */
static bool follow_promotion(const struct disc_decision *prev, const struct disc_obs *obs,
                             const char *const *names, uint64_t now, const struct disc_params *p,
                             struct disc_decision *next)
{
    int w = prev->writer;
    char why[96];
    if (w < 0 || writer_lost(&next->c[w], now, p, why, sizeof why))
        return false;   /* no writer to win over: rule 7 picks among the writable */
    bool w_writable = writable_now(&next->c[w], now, p);
    int pick = -1, npromoted = 0, aws_pick = -1;
    for (size_t i = 0; i < next->n; i++) {
        const struct disc_cluster *c = &next->c[i];
        if ((int)i == w || c->fenced || !writable_now(c, now, p))
            continue;
        bool newer = c->timeline && next->c[w].timeline && c->timeline > next->c[w].timeline;
        if (!c->promoted && !newer)
            continue;
        npromoted++;
        pick = (int)i;
        if (aws_says_writer(&obs[i], now, p) || obs[i].topo == DISC_AWS_WRITER)
            aws_pick = (int)i;
    }
    if (npromoted == 0)
        return false;
    if (npromoted > 1 && aws_pick < 0) {
        set_writer(next, prev, -1, now);
        next->split_brain = true;
        snprintf(next->reason, sizeof next->reason,
                 "split brain: %d clusters promoted at once and AWS does not settle it; holding writes",
                 npromoted);
        return true;
    }
    if (aws_pick >= 0)
        pick = aws_pick;
    set_writer(next, prev, pick, now);
    if (w_writable)
        snprintf(next->reason, sizeof next->reason,
                 "%s promoted while %s still accepts writes (split brain): %s fenced", names[pick],
                 names[w], names[w]);
    else
        snprintf(next->reason, sizeof next->reason,
                 "%s promoted while %s is not answering (%u failed probes): %s is the writer",
                 names[pick], names[w], next->c[w].failures, names[pick]);
    return true;
}

void disc_decide(const struct disc_decision *prev, const struct disc_obs *obs,
                 const char *const *names, uint64_t now, const struct disc_params *p,
                 struct disc_decision *next)
{
    *next = *prev;
    next->changed = false;
    next->failover_to = -1;
    for (size_t i = 0; i < next->n; i++)
        fold(&next->c[i], &obs[i], now);

    size_t nwritable = 0;
    for (size_t i = 0; i < next->n; i++)
        nwritable += writable_now(&next->c[i], now, p);
    next->split_brain = nwritable > 1;

    /* A planned switchover the operator asked for: as soon as the target is
     * healthy and writable it becomes the writer, even while the old writer
     * still accepts writes (it is fenced). Until then nothing changes. */
    int want = prev->requested;
    if (want >= 0 && (size_t)want < next->n && want != prev->writer &&
        writable_now(&next->c[want], now, p)) {
        set_writer(next, prev, want, now);
        next->requested = -1;
        snprintf(next->reason, sizeof next->reason, "switchover to %s requested by the operator",
                 names[want]);
        return;
    }
    if (want == prev->writer)
        next->requested = -1;

    if (follow_aws_failover(prev, obs, names, now, p, next) ||
        follow_named_writer(prev, obs, names, now, p, next) ||
        follow_promotion(prev, obs, names, now, p, next))
        return;

    int w = prev->writer;
    char why[96], lost[DISC_REASON_MAX] = "";
    if (w >= 0) {
        const char *gone = writer_lost(&next->c[w], now, p, why, sizeof why);
        if (!gone) {
            if (next->split_brain)
                snprintf(next->reason, sizeof next->reason,
                         "split brain: %s stays writer while another cluster is also writable",
                         names[w]);
            else if (prev->split_brain)
                snprintf(next->reason, sizeof next->reason,
                         "%s stays writer; split brain resolved", names[w]);
            return;
        }
        snprintf(lost, sizeof lost, "%s %s", names[w], gone);
        w = -1;
    }

    /* Choose among healthy, writable, unfenced clusters. */
    int pick = -1, candidates = 0, aws_pick = -1, tl_pick = -1, gw_pick = -1, ngw = 0;
    uint32_t tl_best = 0;
    bool tl_tie = false;
    for (size_t i = 0; i < next->n; i++) {
        const struct disc_cluster *c = &next->c[i];
        if (!writable_now(c, now, p) || c->fenced)
            continue;
        candidates++;
        pick = (int)i;
        if (aws_says_writer(&obs[i], now, p) || obs[i].topo == DISC_AWS_WRITER)
            aws_pick = (int)i;
        if (obs[i].global_endpoint)
            gw_pick = (int)i, ngw++;
        if (!c->timeline || (tl_pick >= 0 && c->timeline == tl_best))
            tl_tie = true;
        else if (c->timeline > tl_best)
            tl_pick = (int)i, tl_best = c->timeline;
    }
    const char *sep = lost[0] ? "; " : "";
    if (candidates == 1) {
        w = pick;
        snprintf(next->reason, sizeof next->reason, "%s%s%s is the only writable cluster", lost,
                 sep, names[w]);
    } else if (candidates > 1 && aws_pick >= 0) {
        w = aws_pick;
        snprintf(next->reason, sizeof next->reason,
                 "%s%s%d clusters writable; %s names %s writer and a probe confirms it", lost, sep,
                 candidates, obs[w].topo == DISC_AWS_WRITER ? "the Aurora topology" : "AWS", names[w]);
    } else if (candidates > 1 && ngw == 1) {
        w = gw_pick;
        snprintf(next->reason, sizeof next->reason,
                 "%s%s%d clusters writable; the global writer endpoint points at %s", lost, sep,
                 candidates, names[w]);
    } else if (candidates > 1 && tl_pick >= 0 && !tl_tie) {
        w = tl_pick;
        snprintf(next->reason, sizeof next->reason,
                 "%s%s%d clusters writable; %s is on the newest timeline (%u): promoted last", lost,
                 sep, candidates, names[w], tl_best);
    } else if (candidates > 1) {
        snprintf(next->reason, sizeof next->reason,
                 "%s%ssplit brain: %d clusters writable and AWS does not settle it; holding writes",
                 lost, sep, candidates);
    } else if (lost[0]) {
        snprintf(next->reason, sizeof next->reason, "%s; no other writable cluster", lost);
    } else if (prev->writer < 0 && strncmp(prev->reason, "no probe", 8) == 0) {
        /* still holding since start: say whether anything answered; a later
         * hold keeps the reason it started with */
        bool any_ok = false;
        for (size_t i = 0; i < next->n; i++)
            any_ok |= next->c[i].seen_ok;
        snprintf(next->reason, sizeof next->reason, "%s",
                 any_ok ? "no writable cluster" : "no probe has succeeded yet");
    }
    /* Fencing: once another cluster takes over, the old writer may still
     * accept writes (a partition, an unplanned failover); it is not eligible
     * again until there is evidence it was demoted or promoted anew. */
    if (w >= 0 || prev->writer >= 0)
        set_writer(next, prev, w, now);
}

int disc_candidate(const struct disc_decision *d, uint64_t now, const struct disc_params *p)
{
    bool failing_over = d->failover_to >= 0 && d->failover_to != d->writer;
    if (!failing_over && d->writer >= 0 && d->c[d->writer].failures == 0 &&
        d->c[d->writer].inactive == 0)
        return -1;      /* a healthy writer: nobody waits */
    int want = d->requested;
    if (want >= 0 && (size_t)want < d->n && d->c[want].failures == 0 && d->c[want].inactive == 0 &&
        !is_stale(&d->c[want], now, p))
        return want;
    want = d->failover_to;
    if (want >= 0 && (size_t)want < d->n && d->c[want].failures == 0 && d->c[want].inactive == 0 &&
        !is_stale(&d->c[want], now, p))
        return want;
    if (failing_over)
        return -1;      /* AWS named a target that is not healthy: wait for it */
    int pick = -1, several = 0;
    bool lag_known = true, tie = false;
    for (size_t i = 0; i < d->n; i++) {
        const struct disc_cluster *c = &d->c[i];
        if ((int)i == d->writer || (int)i == d->last_writer || c->fenced || c->failures ||
            c->inactive || is_stale(c, now, p))
            continue;
        several += pick >= 0;
        /* Several: which one is promoted is anybody's guess, unless AWS
         * says how far behind each is; the least lagged loses the least
         * if it is the one promoted (and is AWS's usual pick). */
        lag_known &= c->lag_at_ms && c->lag_at_ms <= now && now - c->lag_at_ms <= p->lag_stale_after_ms;
        if (pick >= 0 && c->lag_ms == d->c[pick].lag_ms)
            tie = true;
        else if (pick < 0 || c->lag_ms < d->c[pick].lag_ms)
            pick = (int)i, tie = false;
    }
    return several && (!lag_known || tie) ? -1 : pick;
}
