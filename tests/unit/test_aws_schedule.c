/* The DescribeGlobalClusters schedule (discovery/aws_schedule.c): spacing
 * per urgency with its jitter, the first poll's spread, throttling backoff,
 * and no second call while one is in flight. */
#include <stdio.h>

#include "aws_schedule.h"
#include "unit.h"

#define HEARTBEAT 300000u

static void test_first_poll_spread_and_suspicion_at_once(void)
{
    for (uint64_t seed = 1; seed < 200; seed++) {
        struct aws_sched s;
        aws_sched_init(&s, HEARTBEAT, seed, 1000);
        uint64_t due = aws_sched_due(&s, AWS_URGENCY_HEARTBEAT);
        ASSERT_TRUE(due >= 1000 && due <= 1000 + AWS_SCHED_FIRST_MAX_MS);
        ASSERT_TRUE(aws_sched_due(&s, AWS_URGENCY_SUSPICION) == 0);    /* no reason to wait */
    }
}

static void test_spacing_per_urgency(void)
{
    uint64_t lo[3] = {UINT64_MAX, UINT64_MAX, UINT64_MAX}, hi[3] = {0, 0, 0};
    for (uint64_t seed = 1; seed < 500; seed++) {
        struct aws_sched s;
        aws_sched_init(&s, HEARTBEAT, seed, 0);
        aws_sched_started(&s, 5000);
        ASSERT_TRUE(aws_sched_due(&s, AWS_URGENCY_HEARTBEAT) == UINT64_MAX);   /* busy */
        aws_sched_finished(&s, false);
        for (int u = 0; u < 3; u++) {
            uint64_t gap = aws_sched_due(&s, (enum aws_urgency)u) - 5000;
            lo[u] = gap < lo[u] ? gap : lo[u];
            hi[u] = gap > hi[u] ? gap : hi[u];
        }
    }
    /* heartbeat ± 20 %, suspicion and moving + up to 20 %; draws spread out */
    ASSERT_TRUE(lo[0] >= HEARTBEAT * 4 / 5 && hi[0] <= HEARTBEAT * 6 / 5 && hi[0] - lo[0] > HEARTBEAT / 4);
    ASSERT_TRUE(lo[1] >= AWS_SCHED_SUSPICION_MS && hi[1] <= AWS_SCHED_SUSPICION_MS * 6 / 5 &&
                hi[1] > lo[1]);
    ASSERT_TRUE(lo[2] >= AWS_SCHED_MOVING_MS && hi[2] <= AWS_SCHED_MOVING_MS * 6 / 5);
}

static void test_never_slower_than_the_heartbeat(void)
{
    struct aws_sched s;
    aws_sched_init(&s, 2000, 7, 0);     /* a heartbeat shorter than the suspicion spacing */
    aws_sched_started(&s, 1000);
    aws_sched_finished(&s, false);
    ASSERT_TRUE(aws_sched_due(&s, AWS_URGENCY_SUSPICION) - 1000 <= 2400);
}

static void test_throttling_backs_off_and_recovers(void)
{
    struct aws_sched s;
    aws_sched_init(&s, HEARTBEAT, 3, 0);
    uint64_t now = 1000, prev_gap = 0;
    for (int i = 0; i < 12; i++) {
        aws_sched_started(&s, now);
        aws_sched_finished(&s, true);
        uint64_t gap = aws_sched_due(&s, AWS_URGENCY_MOVING) - now;
        ASSERT_TRUE(gap >= AWS_SCHED_BACKOFF_MIN_MS);
        ASSERT_TRUE(gap >= prev_gap || gap >= HEARTBEAT);     /* doubles until the cap */
        ASSERT_TRUE(gap <= HEARTBEAT * 6 / 5);
        prev_gap = gap;
        now += gap;
    }
    ASSERT_TRUE(prev_gap >= HEARTBEAT);
    ASSERT_EQ_INT((int)s.throttled, 12);
    aws_sched_started(&s, now);
    aws_sched_finished(&s, false);      /* one success: back to the normal spacing */
    ASSERT_TRUE(aws_sched_due(&s, AWS_URGENCY_MOVING) - now <= AWS_SCHED_MOVING_MS * 6 / 5);
}

int main(void)
{
    RUN(test_first_poll_spread_and_suspicion_at_once);
    RUN(test_spacing_per_urgency);
    RUN(test_never_slower_than_the_heartbeat);
    RUN(test_throttling_backs_off_and_recovers);
    UNIT_DONE();
}
