/* Internals shared by discovery.c (probes, decisions, the thread) and
 * aws_signals.c (RDS and CloudWatch polling): the per-config "core" with its
 * listeners and per-cluster views. Discovery thread only, except the fields
 * that ferry_discovery_status() reads under ferry_discovery.lock.
 */
#ifndef FERRY_DISCOVERY_INTERNAL_H
#define FERRY_DISCOVERY_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "aws_schedule.h"
#include "decide.h"
#include "ferry/discovery.h"
#include "probe.h"

struct aws_client;

#define HISTORY_MAX 32
/* A CloudWatch lag datapoint measured longer ago than this is stale: shown
 * so (lag_stale), and not used to pick the candidate. AWS publishes one a
 * minute, queryable a few minutes later (reference/aws.md §12). */
#define DISC_LAG_STALE_MS (10 * 60 * 1000)
#define FAILOVER_NBUCKETS 10
extern const double disc_failover_bounds[FAILOVER_NBUCKETS];

struct disc_core;
struct disc_listener;

struct disc_cluster_view {
    struct disc_probe probe;
    struct disc_listener *owner;
    struct disc_obs obs;                /* since the last decision */
    struct disc_probe_result last;      /* for status */
    uint64_t last_wall_ms;
    bool has_last;
    uint64_t probes_total;
    uint64_t failures_total;            /* failed probes (an inactive endpoint is none) */
    uint64_t obs_started_ns;            /* uv_hrtime() when the probe behind obs began */
    bool logged_inactive;               /* probe.endpoint_inactive logged, not yet _active */
    bool logged_tls;                    /* probe.tls_failed logged, not yet tls_ok */
    char logged_tls_detail[sizeof ((struct disc_probe_result *)0)->detail];
    /* AWS (obs.aws / obs.aws_at_ms hold the role for decide()) */
    uint64_t aws_wall_ms;               /* when RDS last named its role */
    char aws_sync[32];                  /* SynchronizationStatus, e.g. pending-resync */
    bool lag_present;                   /* CloudWatch had a datapoint */
    double lag_ms;                      /* the newest datapoint's value */
    int64_t lag_at;                     /* its own timestamp: when AWS measured it, epoch s */
    uint64_t lag_wall_ms;               /* when we read it (0 = never) */
};

struct disc_gw_lookup;

struct disc_listener {
    struct disc_core *owner;
    const struct ferry_listener_cfg *lcfg;  /* borrowed from owner->cfg */
    size_t n;
    struct disc_cluster_view *cl;       /* owned, n entries */
    const char *names[DISC_MAX_CLUSTERS];
    struct disc_decision decision;
    uint64_t changed_wall_ms;
    uint64_t lost_ms;                   /* loop time the last writer was lost (0: has one) */
    uint64_t writer_ok_ns;              /* uv_hrtime() when the newest probe that found the
                                           writer writable, and left it the writer, began
                                           (0: none since it became the writer) */
    int candidate;                      /* disc_candidate() as last published, -1 none */
    char writer_addr[48];               /* the writer's address as last published ("" none) */
    int writer_addr_of;                 /* the cluster it belonged to */
    /* failover duration: from losing a writer to having the next one */
    uint64_t failover_buckets[FAILOVER_NBUCKETS];
    uint64_t failover_count;
    double failover_sum;
    double failover_last;               /* seconds the last failover took (if failover_count) */
    uint64_t fenced_writable_total;     /* writers that lost the role while still writable */
    /* Aurora's global writer endpoint, looked up every round (a signal
     * that only confirms: decide.c rule 7) */
    char gw_learned[FERRY_HOST_MAX];    /* DescribeGlobalClusters' Endpoint ("" = none) */
    struct disc_gw_lookup *gw_lookup;   /* in flight, NULL = none */
    char gw_addr[INET6_ADDRSTRLEN];     /* its last answer ("" = none yet / did not resolve) */
    char gw_error[128];                 /* why the last lookup failed, "" if it did not */
    uint64_t gw_wall_ms;                /* when the last lookup ended */
    /* AWS */
    int aws_group;                      /* index in owner->aws_groups, -1 = no AWS signals */
    bool lag_busy;
    char aws_error[200];                /* last failure, "" after a success */
    char aws_failover[700];             /* FailoverState as RDS reports it, "" if none */
    uint64_t aws_ok_total, aws_errors_total, lag_ok_total, lag_errors_total;
};

struct disc_history {
    uint64_t wall_ms;
    char listener[FERRY_NAME_MAX];
    char from[FERRY_NAME_MAX];
    char to[FERRY_NAME_MAX];
    uint64_t generation;
    char reason[DISC_REASON_MAX];
};

/* One DescribeGlobalClusters schedule per global cluster, however many
 * listeners use it: the RDS budget is the fleet's (aws_schedule.h). */
struct disc_aws_group {
    char id[FERRY_NAME_MAX];            /* GlobalClusterIdentifier */
    struct disc_core *core;
    struct aws_sched sched;
    unsigned region_next;               /* rotates through member regions on transport errors */
    bool moving;                        /* the last reply reported a failover in progress */
};

/* One config's worth of probes and decisions, on one loop. */
struct disc_core {
    uv_loop_t *loop;
    struct ferry_config *cfg;           /* owned ref */
    struct disc_listener *ls;           /* owned, nls entries */
    size_t nls;
    unsigned outstanding;               /* probes of the current round still running */
    unsigned open_handles;              /* probes and timers not yet closed (teardown) */
    struct aws_client *aws;             /* owned; NULL without AWS signals */
    struct disc_aws_group *aws_groups;  /* owned, n_aws_groups entries */
    size_t n_aws_groups;
    uv_timer_t aws_timer;               /* checks every group's schedule (AWS_TICK_MS) */
    uv_timer_t lag_timer;               /* GetMetricData every aws.lag_poll_interval */
    bool aws_timers;                    /* the two timers are initialised */
    bool published;                     /* a first snapshot went out */
    bool decided;                       /* at least one decision made */
    struct ferry_discovery *d;          /* NULL in `ferry discover` */
};

struct ferry_discovery {
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wakeup;
    uv_timer_t round_timer;
    pthread_mutex_t lock;               /* guards everything below and core's status data */
    struct ferry_config *pending_cfg;   /* owned ref: reconfigure request */
    bool stop;
    bool probe_now;
    char switch_listener[FERRY_NAME_MAX]; /* pending switchover: "" = every listener */
    char switch_cluster[FERRY_NAME_MAX];  /* "" = none pending */
    bool switch_cancel;                 /* drop every pending switchover request */
    struct disc_core *core;             /* current */
    ferry_topology_publish_cb publish;
    void *ud;
    uint64_t serial;
    struct disc_history history[HISTORY_MAX];
    size_t nhistory;                    /* total ever recorded */
};


/* Locks the status mutex when the core belongs to a running discovery. */
void disc_lock(struct disc_core *c);
void disc_unlock(struct disc_core *c);
uint64_t disc_wall_ms(void);
json_t *disc_iso_time(uint64_t ms);
/* One handle of the core has closed; frees the core after the last. */
void disc_core_handle_closed(struct disc_core *c);

/* aws_signals.c */
void disc_aws_start(struct disc_core *c);       /* no-op unless a listener has aws_global_cluster */
void disc_aws_close(struct disc_core *c);       /* cancels calls, closes the timers */
void disc_aws_poll_soon(struct disc_core *c);   /* probes disagree: ask AWS now (rate-limited) */
json_t *disc_aws_listener_json(const struct disc_listener *l);
json_t *disc_aws_cluster_json(const struct disc_cluster_view *v);

#endif
