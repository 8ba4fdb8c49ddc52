/* When to call RDS DescribeGlobalClusters: a pure schedule, so the fleet
 * simulation in bench/ (aws_fleet) runs the very code the product runs.
 *
 * The RDS API budget (about 12 requests/s sustained, a burst of 300, per
 * account and region, shared with every other tool) belongs to the whole
 * fleet of ferries, not to one process, and every ferry of a fleet sees a
 * failover at the same moment. So each ferry polls on a slow, jittered
 * heartbeat (aws.poll_interval), and sooner only while something is urgent
 * (its SQL probes cannot settle the writer, or RDS reported a failover in
 * progress): the first urgent poll at a random point of the urgent interval
 * (aws.urgent_poll_interval, at least 2 s in: a writer the probes settle
 * within 2 s costs no call), then one per urgent interval. After a
 * throttled call the next waits 5 s, doubling up to the heartbeat. The
 * defaults keep a fleet of 1,000 inside the budget (README, bench
 * aws_fleet). decide() never waits for a poll: AWS confirms, the SQL probes
 * decide.
 */
#ifndef FERRY_AWS_SCHEDULE_H
#define FERRY_AWS_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

enum aws_urgency {
    AWS_URGENCY_HEARTBEAT,      /* all is well */
    AWS_URGENCY_URGENT,         /* probes cannot settle the writer, or a failover in progress */
};

#define AWS_SCHED_URGENT_GRACE_MS 2000  /* urgent that long before the first urgent poll */
#define AWS_SCHED_FIRST_MAX_MS 60000    /* first poll spread over up to 60 s: a whole fleet restarted */
#define AWS_SCHED_BACKOFF_MIN_MS 5000   /* after a throttled call; doubles up to the heartbeat */

struct aws_sched {
    uint64_t heartbeat_ms;      /* aws.poll_interval */
    uint64_t urgent_ms;         /* aws.urgent_poll_interval */
    uint64_t last_start_ms;     /* loop time of the last poll started; 0 = none yet */
    uint64_t first_ms;          /* when the first heartbeat poll is due */
    uint64_t urgent_since_ms;   /* 0 = not urgent */
    uint64_t urgent_first_ms;   /* this urgent episode's first poll */
    uint64_t backoff_ms;        /* after throttling: no poll sooner than this after the last */
    uint64_t jitter;            /* this interval's jitter draw, fixed until the next start */
    uint64_t rng;               /* xorshift state */
    bool busy;                  /* a call is in flight */
    uint64_t calls, throttled;  /* totals, for status and the simulation */
};

/* seed: any value (the product uses its pid and the time); now: loop time. */
void aws_sched_init(struct aws_sched *s, uint64_t heartbeat_ms, uint64_t urgent_ms, uint64_t seed,
                    uint64_t now);

/* Tells the schedule how urgent things are now; call before aws_sched_due(). */
void aws_sched_urgency(struct aws_sched *s, enum aws_urgency u, uint64_t now);

/* Loop time at which the next poll is due (UINT64_MAX while a call is in flight). */
uint64_t aws_sched_due(const struct aws_sched *s);

void aws_sched_started(struct aws_sched *s, uint64_t now);
/* The call ended; throttled: RDS said Throttling even after the client's retries. */
void aws_sched_finished(struct aws_sched *s, bool throttled);

#endif
