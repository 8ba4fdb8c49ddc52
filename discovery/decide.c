/* The writer decision (see decide.h). Rules, in order:
 * 1. Fold the observations into per-cluster memory (failure streaks, last OK).
 * 2. Keep the current writer unless it reports read-only (drop at once), has
 *    failed writer_down_after probes in a row, or has not been seen for
 *    stale_after_ms. A writer kept while another cluster is also writable is
 *    a split brain: keep it and flag it.
 * 3. Without a writer, pick the one healthy, writable, unfenced cluster; if
 *    several, the one AWS names writer (fresh data only), else hold.
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
    d->n = nclusters < DISC_MAX_CLUSTERS ? nclusters : DISC_MAX_CLUSTERS;
    snprintf(d->reason, sizeof d->reason, "no probe has finished yet");
}

static void fold(struct disc_cluster *c, const struct disc_obs *o, uint64_t now)
{
    switch (o->probe) {
    case DISC_PROBE_OK:
        c->failures = 0;
        c->inactive = 0;
        c->seen_ok = true;
        c->writable = o->writable;
        c->last_ok_ms = now;
        if (!o->writable)
            c->fenced = false;  /* demoted and observed: eligible again later */
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

static bool aws_says_writer(const struct disc_obs *o, uint64_t now, const struct disc_params *p)
{
    return o->aws == DISC_AWS_WRITER && o->aws_at_ms && now - o->aws_at_ms <= p->aws_stale_after_ms;
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
    if (c->failures == 0 && !c->writable)
        return "reports read-only";
    return NULL;
}

void disc_decide(const struct disc_decision *prev, const struct disc_obs *obs,
                 const char *const *names, uint64_t now, const struct disc_params *p,
                 struct disc_decision *next)
{
    *next = *prev;
    next->changed = false;
    for (size_t i = 0; i < next->n; i++)
        fold(&next->c[i], &obs[i], now);

    size_t nwritable = 0;
    for (size_t i = 0; i < next->n; i++)
        nwritable += writable_now(&next->c[i], now, p);

    /* A planned switchover the operator asked for: as soon as the target is
     * healthy and writable it becomes the writer, even while the old writer
     * still accepts writes (it is fenced). Until then nothing changes. */
    int want = prev->requested;
    if (want >= 0 && (size_t)want < next->n && want != prev->writer &&
        writable_now(&next->c[want], now, p)) {
        int old = prev->writer;
        if (old >= 0 && next->c[old].writable)
            next->c[old].fenced = true;
        next->c[want].fenced = false;
        next->writer = next->last_writer = want;
        next->requested = -1;
        next->generation++;
        next->changed = true;
        next->split_brain = nwritable > 1;
        snprintf(next->reason, sizeof next->reason, "switchover to %s requested by the operator",
                 names[want]);
        return;
    }
    if (want == prev->writer)
        next->requested = -1;

    int w = prev->writer;
    char why[96], lost[DISC_REASON_MAX] = "";
    if (w >= 0) {
        const char *gone = writer_lost(&next->c[w], now, p, why, sizeof why);
        if (!gone) {
            next->split_brain = nwritable > 1;
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
    int pick = -1, candidates = 0, aws_pick = -1;
    for (size_t i = 0; i < next->n; i++) {
        const struct disc_cluster *c = &next->c[i];
        if (!writable_now(c, now, p) || c->fenced)
            continue;
        candidates++;
        pick = (int)i;
        if (aws_says_writer(&obs[i], now, p))
            aws_pick = (int)i;
    }
    const char *sep = lost[0] ? "; " : "";
    next->split_brain = nwritable > 1;
    if (candidates == 1) {
        w = pick;
        snprintf(next->reason, sizeof next->reason, "%s%s%s is the only writable cluster", lost,
                 sep, names[w]);
    } else if (candidates > 1 && aws_pick >= 0) {
        w = aws_pick;
        snprintf(next->reason, sizeof next->reason,
                 "%s%s%d clusters writable; AWS names %s writer and a probe confirms it", lost, sep,
                 candidates, names[w]);
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
     * again until a probe has seen it read-only. */
    int old = prev->last_writer;
    if (w >= 0 && old >= 0 && old != w && next->c[old].writable)
        next->c[old].fenced = true;
    if (w >= 0)
        next->last_writer = w;
    if (w != prev->writer) {
        next->writer = w;
        next->generation++;
        next->changed = true;
    }
}

int disc_candidate(const struct disc_decision *d, uint64_t now, const struct disc_params *p)
{
    if (d->writer >= 0 && d->c[d->writer].failures == 0 && d->c[d->writer].inactive == 0)
        return -1;      /* a healthy writer: nobody waits */
    int want = d->requested;
    if (want >= 0 && (size_t)want < d->n && d->c[want].failures == 0 && d->c[want].inactive == 0 &&
        !is_stale(&d->c[want], now, p))
        return want;
    int pick = -1;
    for (size_t i = 0; i < d->n; i++) {
        const struct disc_cluster *c = &d->c[i];
        if ((int)i == d->writer || (int)i == d->last_writer || c->fenced || c->failures ||
            c->inactive || is_stale(c, now, p))
            continue;
        if (pick >= 0)
            return -1;      /* several: which one is promoted is anybody's guess */
        pick = (int)i;
    }
    return pick;
}
