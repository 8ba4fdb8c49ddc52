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

void aws_sched_init(struct aws_sched *s, uint64_t heartbeat_ms, uint64_t seed, uint64_t now)
{
    *s = (struct aws_sched){.heartbeat_ms = heartbeat_ms ? heartbeat_ms : 1, .rng = seed | 1};
    uint64_t spread = heartbeat_ms < AWS_SCHED_FIRST_MAX_MS ? heartbeat_ms : AWS_SCHED_FIRST_MAX_MS;
    s->first_ms = now + next_rand(s) % (spread + 1);
    s->jitter = next_rand(s);
}

/* base plus a fixed share (0..20 %) of it drawn at the last start; the
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

uint64_t aws_sched_due(const struct aws_sched *s, enum aws_urgency u)
{
    if (s->busy)
        return UINT64_MAX;
    if (!s->last_start_ms)
        return u == AWS_URGENCY_HEARTBEAT ? s->first_ms : 0;
    uint64_t gap = u == AWS_URGENCY_MOVING      ? jittered(s, AWS_SCHED_MOVING_MS, false)
                   : u == AWS_URGENCY_SUSPICION ? jittered(s, AWS_SCHED_SUSPICION_MS, false)
                                                : jittered(s, s->heartbeat_ms, true);
    if (gap > s->heartbeat_ms && u != AWS_URGENCY_HEARTBEAT)
        gap = jittered(s, s->heartbeat_ms, true);   /* never slower than the heartbeat */
    if (gap < s->backoff_ms)
        gap = s->backoff_ms;
    return s->last_start_ms + gap;
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
