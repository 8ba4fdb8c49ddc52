/* aws_fleet: N ferries sharing one account's RDS API budget, in simulated
 * time, each running the product's own DescribeGlobalClusters schedule
 * (discovery/aws_schedule.c, compiled in as is).
 *
 * The RDS side is a token bucket (default: 12 requests/s sustained, a burst
 * of 300, as RDS documents per account and region); a request without a
 * token is throttled. Each call makes up to 3 attempts like ferry's client
 * (discovery/aws/client.c: a throttled attempt is retried after a random
 * delay up to 1 s << attempt, capped at 20 s); the client's retry-token
 * budget is not modelled (it only lowers the request count).
 *
 * Scenario: the fleet starts over --start-spread seconds (a DaemonSet
 * rollout; 0 = all at once), runs steady until --failover-at, then RDS
 * reports a failover in progress for --failover-for seconds; every node's
 * SQL probes cannot settle the writer for --detect seconds from the
 * failover (urgent), then see the new writer. A node that got a reply
 * during the failover stays urgent until a reply says it is over.
 *
 * Output (one JSON object): calls and requests, throttled requests and
 * calls, calls per node per hour in steady state, the fleet's peak requests
 * per second, and per node how long after the failover ended its first
 * successful reply came (AWS's confirmation; p50/p99/max). ferry's writer
 * decision never waits for a poll (decide() takes AWS's word when it has it
 * and the SQL probes' otherwise), so throttling delays confirmation, not
 * the switch: "decisions_waiting_on_aws" is 0 by construction, and the
 * confirmation delay is what throttling costs.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../discovery/aws_schedule.h"

#define TICK_MS 10
#define CALL_LATENCY_MS 80
#define ATTEMPTS 3

struct node {
    struct aws_sched s;
    uint64_t started_ms;        /* when this ferry started */
    bool moving;                /* its last successful reply reported a failover */
    bool in_call;
    int attempt;                /* attempts made in the current call */
    uint64_t next_attempt_ms;   /* when the current call's next attempt goes out */
    bool confirmed;             /* a successful, not-moving reply after the failover ended */
    uint64_t confirmed_ms;
    uint64_t rng;
};

struct opts {
    unsigned nodes;
    double heartbeat_s, urgent_s, hours, start_spread_s, failover_at_s, failover_for_s, detect_s;
    double rate, burst;
};

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void usage(void)
{
    fprintf(stderr, "usage: aws_fleet [--nodes N] [--heartbeat S] [--urgent S] [--hours H] [--start-spread S]\n"
                    "                 [--failover-at S] [--failover-for S] [--detect S]\n"
                    "                 [--rate R] [--burst B]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct opts o = {1000, 300, 60, 1, 60, 1800, 60, 2, 12, 300};
    for (int i = 1; i < argc; i++) {
        double *v = NULL;
        if (!strcmp(argv[i], "--heartbeat")) v = &o.heartbeat_s;
        else if (!strcmp(argv[i], "--urgent")) v = &o.urgent_s;
        else if (!strcmp(argv[i], "--hours")) v = &o.hours;
        else if (!strcmp(argv[i], "--start-spread")) v = &o.start_spread_s;
        else if (!strcmp(argv[i], "--failover-at")) v = &o.failover_at_s;
        else if (!strcmp(argv[i], "--failover-for")) v = &o.failover_for_s;
        else if (!strcmp(argv[i], "--detect")) v = &o.detect_s;
        else if (!strcmp(argv[i], "--rate")) v = &o.rate;
        else if (!strcmp(argv[i], "--burst")) v = &o.burst;
        else if (!strcmp(argv[i], "--nodes") && i + 1 < argc) { o.nodes = (unsigned)atoi(argv[++i]); continue; }
        if (!v || i + 1 >= argc)
            usage();
        *v = atof(argv[++i]);
    }
    if (o.nodes == 0 || o.nodes > 100000 || o.hours <= 0)
        usage();
    struct node *n = calloc(o.nodes, sizeof *n);
    if (!n)
        return 1;
    uint64_t seed = 0x2545F4914F6CDD1Dull;
    uint64_t end_ms = (uint64_t)(o.hours * 3600e3);
    uint64_t f0 = (uint64_t)(o.failover_at_s * 1e3), f1 = f0 + (uint64_t)(o.failover_for_s * 1e3);
    uint64_t d1 = f0 + (uint64_t)(o.detect_s * 1e3);
    for (unsigned i = 0; i < o.nodes; i++) {
        n[i].rng = seed + i * 0x9E3779B97F4A7C15ull + 1;
        n[i].started_ms = o.start_spread_s > 0 ? rnd(&n[i].rng) % (uint64_t)(o.start_spread_s * 1e3 + 1) : 0;
        aws_sched_init(&n[i].s, (uint64_t)(o.heartbeat_s * 1e3), (uint64_t)(o.urgent_s * 1e3),
                       rnd(&n[i].rng), n[i].started_ms + 1);
    }
    double tokens = o.burst;
    uint64_t requests = 0, throttled_req = 0, calls = 0, throttled_calls = 0;
    uint64_t steady_calls = 0;                  /* calls started outside [f0 - 10 s, f1 + 10 min) */
    uint64_t window_ms = 0, window_req = 0, peak_rps = 0, min_tokens_x10 = (uint64_t)(o.burst * 10);
    for (uint64_t now = 1; now <= end_ms; now += TICK_MS) {
        tokens += o.rate * TICK_MS / 1000.0;
        if (tokens > o.burst)
            tokens = o.burst;
        bool moving_now = now >= f0 && now < f1;
        for (unsigned i = 0; i < o.nodes; i++) {
            struct node *x = &n[i];
            if (now < x->started_ms)
                continue;
            if (!x->in_call) {
                bool urgent = x->moving || (now >= f0 && now < d1);
                aws_sched_urgency(&x->s, urgent ? AWS_URGENCY_URGENT : AWS_URGENCY_HEARTBEAT, now);
                if (now < aws_sched_due(&x->s))
                    continue;
                aws_sched_started(&x->s, now);
                calls++;
                if (now + 10000 < f0 || now >= f1 + 600000)
                    steady_calls++;
                x->in_call = true;
                x->attempt = 0;
                x->next_attempt_ms = now;
            }
            if (now < x->next_attempt_ms)
                continue;
            /* one attempt: a request against the bucket, answered after the latency */
            requests++;
            window_req++;
            x->attempt++;
            bool ok = tokens >= 1.0;
            if (ok)
                tokens -= 1.0;
            else
                throttled_req++;
            if (!ok && x->attempt < ATTEMPTS) {
                uint64_t cap = 1000ull << x->attempt;
                if (cap > 20000)
                    cap = 20000;
                x->next_attempt_ms = now + CALL_LATENCY_MS + rnd(&x->rng) % (cap + 1);
                continue;
            }
            x->in_call = false;
            aws_sched_finished(&x->s, !ok);
            if (!ok) {
                throttled_calls++;
                continue;
            }
            x->moving = moving_now;
            if (now >= f1 && !x->confirmed) {
                x->confirmed = true;
                x->confirmed_ms = now - f1;
            }
        }
        if ((uint64_t)(tokens * 10) < min_tokens_x10)
            min_tokens_x10 = (uint64_t)(tokens * 10);
        window_ms += TICK_MS;
        if (window_ms >= 1000) {
            if (window_req > peak_rps)
                peak_rps = window_req;
            window_ms = window_req = 0;
        }
    }
    uint64_t *conf = calloc(o.nodes, sizeof *conf);
    unsigned nconf = 0;
    for (unsigned i = 0; i < o.nodes; i++)
        if (n[i].confirmed)
            conf[nconf++] = n[i].confirmed_ms;
    qsort(conf, nconf, sizeof *conf, cmp_u64);
    double steady_hours = (o.hours * 3600.0 - 10.0 - (o.failover_for_s + 600.0)) / 3600.0;
    printf("{\"nodes\": %u, \"heartbeat_s\": %g, \"urgent_s\": %g, \"detect_s\": %g, \"hours\": %g, \"rate\": %g, \"burst\": %g,\n"
           " \"calls\": %llu, \"requests\": %llu, \"throttled_requests\": %llu, \"throttled_calls\": %llu,\n"
           " \"steady_calls_per_node_hour\": %.1f, \"steady_fleet_requests_per_s\": %.2f,\n"
           " \"peak_requests_per_s\": %llu, \"min_tokens\": %.1f,\n"
           " \"confirmed_nodes\": %u, \"confirmation_after_failover_end_s\": "
           "{\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f},\n"
           " \"decisions_waiting_on_aws\": 0}\n",
           o.nodes, o.heartbeat_s, o.urgent_s, o.detect_s, o.hours, o.rate, o.burst, (unsigned long long)calls,
           (unsigned long long)requests, (unsigned long long)throttled_req,
           (unsigned long long)throttled_calls,
           steady_hours > 0 ? (double)steady_calls / o.nodes / steady_hours : 0.0,
           steady_hours > 0 ? (double)steady_calls / (steady_hours * 3600.0) : 0.0,
           (unsigned long long)peak_rps, (double)min_tokens_x10 / 10.0, nconf,
           nconf ? conf[nconf / 2] / 1e3 : NAN, nconf ? conf[(size_t)(nconf * 0.99)] / 1e3 : NAN,
           nconf ? conf[nconf - 1] / 1e3 : NAN);
    free(conf);
    free(n);
    return 0;
}
