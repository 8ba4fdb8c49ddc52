/* The DescribeGlobalClusters schedule (discovery/aws_schedule.c): the
 * heartbeat and its jitter, urgent episodes (a grace period, the first poll
 * spread over the urgent interval, then one per interval), throttling
 * backoff, and no second call while one is in flight. */
#include <stdio.h>

#include "aws_schedule.h"
#include "unit.h"

#define HEARTBEAT 300000u
#define URGENT 60000u

static void test_first_poll_spread(void)
{
    for (uint64_t seed = 1; seed < 200; seed++) {
        struct aws_sched s;
        aws_sched_init(&s, HEARTBEAT, URGENT, seed, 1000);
        uint64_t due = aws_sched_due(&s);
        ASSERT_TRUE(due >= 1000 && due <= 1000 + AWS_SCHED_FIRST_MAX_MS);
    }
}

static void test_heartbeat_jitter(void)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint64_t seed = 1; seed < 500; seed++) {
        struct aws_sched s;
        aws_sched_init(&s, HEARTBEAT, URGENT, seed, 0);
        aws_sched_started(&s, 5000);
        ASSERT_TRUE(aws_sched_due(&s) == UINT64_MAX);   /* busy */
        aws_sched_finished(&s, false);
        uint64_t gap = aws_sched_due(&s) - 5000;
        lo = gap < lo ? gap : lo;
        hi = gap > hi ? gap : hi;
    }
    ASSERT_TRUE(lo >= HEARTBEAT * 4 / 5 && hi <= HEARTBEAT * 6 / 5 && hi - lo > HEARTBEAT / 4);
}

static void test_urgent_episode(void)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint64_t seed = 1; seed < 500; seed++) {
        struct aws_sched s;
        aws_sched_init(&s, HEARTBEAT, URGENT, seed, 0);
        aws_sched_started(&s, 1000);
        aws_sched_finished(&s, false);
        aws_sched_urgency(&s, AWS_URGENCY_URGENT, 100000);
        uint64_t first = aws_sched_due(&s) - 100000;
        /* a grace period, then anywhere in the urgent interval: a fleet spreads out */
        ASSERT_TRUE(first >= AWS_SCHED_URGENT_GRACE_MS && first <= URGENT);
        lo = first < lo ? first : lo;
        hi = first > hi ? first : hi;
        aws_sched_urgency(&s, AWS_URGENCY_URGENT, 100500);     /* the same episode */
        ASSERT_TRUE(aws_sched_due(&s) - 100000 == first);
        aws_sched_started(&s, 100000 + first);
        aws_sched_finished(&s, false);
        uint64_t next = aws_sched_due(&s) - (100000 + first);
        ASSERT_TRUE(next >= URGENT && next <= URGENT * 6 / 5);
        aws_sched_urgency(&s, AWS_URGENCY_HEARTBEAT, 100000 + first + 1);   /* settled */
        ASSERT_TRUE(aws_sched_due(&s) - (100000 + first) >= HEARTBEAT * 4 / 5);
    }
    ASSERT_TRUE(hi - lo > URGENT / 2);
}

static void test_never_slower_than_the_heartbeat(void)
{
    struct aws_sched s;
    aws_sched_init(&s, 2000, URGENT, 7, 0);
    aws_sched_started(&s, 1000);
    aws_sched_finished(&s, false);
    aws_sched_urgency(&s, AWS_URGENCY_URGENT, 1500);
    ASSERT_TRUE(aws_sched_due(&s) - 1000 <= 2400);
}

static void test_throttling_backs_off_and_recovers(void)
{
    struct aws_sched s;
    aws_sched_init(&s, HEARTBEAT, 3000, 3, 0);
    uint64_t now = 1000, prev_gap = 0;
    aws_sched_urgency(&s, AWS_URGENCY_URGENT, now);
    for (int i = 0; i < 12; i++) {
        aws_sched_started(&s, now);
        aws_sched_finished(&s, true);
        uint64_t gap = aws_sched_due(&s) - now;
        ASSERT_TRUE(gap >= AWS_SCHED_BACKOFF_MIN_MS);
        ASSERT_TRUE(gap >= prev_gap || gap >= HEARTBEAT);     /* doubles until the cap */
        ASSERT_TRUE(gap <= HEARTBEAT * 6 / 5);
        prev_gap = gap;
        now += gap;
    }
    ASSERT_TRUE(prev_gap >= HEARTBEAT);
    ASSERT_EQ_INT((int)s.throttled, 12);
    aws_sched_started(&s, now);
    aws_sched_finished(&s, false);      /* one success: back to the urgent spacing */
    ASSERT_TRUE(aws_sched_due(&s) - now <= 3600);
}

int main(void)
{
    RUN(test_first_poll_spread);
    RUN(test_heartbeat_jitter);
    RUN(test_urgent_episode);
    RUN(test_never_slower_than_the_heartbeat);
    RUN(test_throttling_backs_off_and_recovers);
    UNIT_DONE();
}
