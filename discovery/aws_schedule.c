/* The DescribeGlobalClusters schedule (see aws_schedule.h). */
#include "aws_schedule.h"

static uint64_t next_rand(struct aws_sched *s)
{
    uint64_t x = s->rng ? s->rng : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s->rng = x;
    return x;
}

void aws_sched_init(struct aws_sched *s, uint64_t heartbeat_ms, uint64_t urgent_ms, uint64_t seed,
                    uint64_t now)
{
    *s = (struct aws_sched){.heartbeat_ms = heartbeat_ms ? heartbeat_ms : 1,
                            .urgent_ms = urgent_ms ? urgent_ms : 1,
                            .rng = seed | 1};
    uint64_t spread = heartbeat_ms < AWS_SCHED_FIRST_MAX_MS ? heartbeat_ms : AWS_SCHED_FIRST_MAX_MS;
    s->first_ms = now + next_rand(s) % (spread + 1);
    s->jitter = next_rand(s);
}

void aws_sched_urgency(struct aws_sched *s, enum aws_urgency u, uint64_t now)
{
    if (u == AWS_URGENCY_HEARTBEAT) {
        s->urgent_since_ms = 0;
        return;
    }
    if (s->urgent_since_ms)
        return;
    /* a new urgent episode: every ferry of a fleet starts one at the same
     * moment, so the first poll lands anywhere in the urgent interval */
    s->urgent_since_ms = now ? now : 1;
    uint64_t lo = AWS_SCHED_URGENT_GRACE_MS, hi = s->urgent_ms > lo ? s->urgent_ms : lo;
    s->urgent_first_ms = s->urgent_since_ms + lo + next_rand(s) % (hi - lo + 1);
}

/* base + a fixed share (0..20 %) of it drawn at the last start; the
 * heartbeat also goes down by up to 20 %, so a fleet started together
 * drifts apart instead of polling in step. */
static uint64_t jittered(const struct aws_sched *s, uint64_t base, bool both_ways)
{
    uint64_t span = base / 5;
    if (!span)
        return base;
    uint64_t j = s->jitter % (both_ways ? 2 * span + 1 : span + 1);
    return both_ways ? base - span + j : base + j;
}

uint64_t aws_sched_due(const struct aws_sched *s)
{
    if (s->busy)
        return UINT64_MAX;
    uint64_t heartbeat = s->last_start_ms ? s->last_start_ms + jittered(s, s->heartbeat_ms, true)
                                          : s->first_ms;
    uint64_t due = heartbeat;
    if (s->urgent_since_ms) {
        uint64_t urgent = s->urgent_first_ms;
        if (s->last_start_ms && s->last_start_ms + jittered(s, s->urgent_ms, false) > urgent)
            urgent = s->last_start_ms + jittered(s, s->urgent_ms, false);
        if (urgent < due)
            due = urgent;   /* never slower than the heartbeat */
    }
    if (s->last_start_ms && due < s->last_start_ms + s->backoff_ms)
        due = s->last_start_ms + s->backoff_ms;
    return due;
}

void aws_sched_started(struct aws_sched *s, uint64_t now)
{
    s->busy = true;
    s->last_start_ms = now ? now : 1;
    s->jitter = next_rand(s);
    s->calls++;
}

void aws_sched_finished(struct aws_sched *s, bool throttled)
{
    s->busy = false;
    if (!throttled) {
        s->backoff_ms = 0;
        return;
    }
    s->throttled++;
    /* doubles per throttled call, up to the heartbeat; plus up to 20 % so a
     * throttled fleet does not come back in step */
    uint64_t b = s->backoff_ms ? s->backoff_ms * 2 : AWS_SCHED_BACKOFF_MIN_MS;
    if (b > s->heartbeat_ms)
        b = s->heartbeat_ms;
    s->backoff_ms = b + next_rand(s) % (b / 5 + 1);
}
