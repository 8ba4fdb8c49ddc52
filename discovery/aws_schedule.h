/* When to call RDS DescribeGlobalClusters: a pure schedule, so the fleet
 * simulation in bench/ runs the very code the product runs.
 *
 * The RDS API budget (about 12 requests/s sustained, a burst of 300, per
 * account and region, shared with every other tool) belongs to the whole
 * fleet of ferries, not to one process. So each ferry polls on a slow,
 * jittered heartbeat, sooner only on suspicion (probes disagree, the writer
 * is in doubt or gone) or while RDS reports a failover in progress, and
 * backs off across polls when it is throttled. decide() never waits for a
 * poll: AWS confirms, the SQL probes decide.
 */
#ifndef FERRY_AWS_SCHEDULE_H
#define FERRY_AWS_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

enum aws_urgency {
    AWS_URGENCY_HEARTBEAT,      /* all is well: aws.poll_interval */
    AWS_URGENCY_SUSPICION,      /* probes disagree, writer in doubt or none */
    AWS_URGENCY_MOVING,         /* RDS reported a failover / switchover in progress */
};

#define AWS_SCHED_SUSPICION_MS 5000     /* at most one suspicion poll per 5 s (+ up to 20 %) */
#define AWS_SCHED_MOVING_MS 3000        /* aws.md §14: 2-5 s while FailoverState is set */
#define AWS_SCHED_FIRST_MAX_MS 10000    /* first poll spread over up to 10 s: a fleet restart */
#define AWS_SCHED_BACKOFF_MIN_MS 5000   /* after a throttled call; doubles up to the heartbeat */

struct aws_sched {
    uint64_t heartbeat_ms;      /* aws.poll_interval */
    uint64_t last_start_ms;     /* loop time of the last poll started; 0 = none yet */
    uint64_t first_ms;          /* when the first poll is due (set by aws_sched_init) */
    uint64_t backoff_ms;        /* after throttling: no poll sooner than this after the last */
    uint64_t jitter;            /* this interval's jitter draw, fixed until the next start */
    uint64_t rng;               /* xorshift state */
    bool busy;                  /* a call is in flight */
    uint64_t calls, throttled;  /* totals, for status and the simulation */
};

/* seed: any value (the product uses its pid and the time); now: loop time. */
void aws_sched_init(struct aws_sched *s, uint64_t heartbeat_ms, uint64_t seed, uint64_t now);

/* Loop time at which the next poll is due for this urgency (never while busy:
 * UINT64_MAX). */
uint64_t aws_sched_due(const struct aws_sched *s, enum aws_urgency u);

void aws_sched_started(struct aws_sched *s, uint64_t now);
/* The call ended; throttled: RDS said Throttling even after the client's retries. */
void aws_sched_finished(struct aws_sched *s, bool throttled);

#endif
