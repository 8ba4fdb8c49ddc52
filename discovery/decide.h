/* decide(): the writer decision for one listener's clusters, as a pure
 * function of the previous decision, the latest observations and the time.
 * All hysteresis, fencing and split-brain handling lives here so it can be
 * tested exhaustively with tables and no I/O.
 */
#ifndef FERRY_DECIDE_H
#define FERRY_DECIDE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DISC_MAX_CLUSTERS 16
#define DISC_REASON_MAX 200

/* INACTIVE: the cluster's writer endpoint does not resolve and nothing else
 * of the cluster answered. An Aurora secondary's writer endpoint is
 * inactive until that cluster is promoted: a state, not a failure, so it
 * costs no failure count (only a writer whose endpoint goes inactive is
 * dropped, after writer_down_after such rounds). */
enum disc_probe_outcome { DISC_PROBE_NONE, DISC_PROBE_OK, DISC_PROBE_FAILED, DISC_PROBE_INACTIVE };
enum disc_aws_role { DISC_AWS_UNKNOWN, DISC_AWS_WRITER, DISC_AWS_READER };
/* A cluster's part in a failover or switchover RDS reports in progress
 * (DescribeGlobalClusters FailoverState). */
enum disc_aws_failover { DISC_AWS_NO_FAILOVER, DISC_AWS_FAILOVER_FROM, DISC_AWS_FAILOVER_TO };

/* What discovery saw of one cluster since the last decision. */
struct disc_obs {
    enum disc_probe_outcome probe;      /* NONE: no probe finished since the last decision */
    bool writable;              /* probe OK: accepts writes (not in recovery, not read-only) */
    bool via_reader;            /* probe OK, but of the reader endpoint: the writer endpoint does
                                   not resolve (inactive). The cluster is healthy; its writer
                                   was not seen (no fence is released by it) */
    uint32_t timeline;          /* probe OK, PostgreSQL primary: its timeline (0 = unknown) */
    enum disc_aws_role topo;    /* Aurora's own global topology (aurora_global_db_instance_status,
                                   read this round, every instance that answered agreeing):
                                   WRITER for the cluster in the global writer's region */
    bool global_endpoint;       /* Aurora's global writer endpoint resolves to this cluster's
                                   writer endpoint (it only confirms: see decide.c rule 7) */
    enum disc_aws_role aws;     /* RDS DescribeGlobalClusters IsWriter, if known */
    enum disc_aws_failover aws_failover; /* FailoverState From / To this cluster */
    bool aws_data_loss;         /* FailoverState IsDataLossAllowed (a failover, not a switchover) */
    uint64_t aws_at_ms;         /* when AWS said so (0 = never) */
    double lag_ms;              /* CloudWatch AuroraGlobalDBReplicationLag, if lag_at_ms */
    uint64_t lag_at_ms;         /* when that datapoint was measured, on now_ms's clock (0 = no
                                   lag known: a primary, or no AWS signals) */
};

/* What decide() remembers of one cluster between decisions. */
struct disc_cluster {
    unsigned failures;          /* consecutive failed probes */
    unsigned inactive;          /* consecutive rounds with the writer endpoint inactive */
    bool seen_ok;               /* at least one probe succeeded */
    bool writable;              /* last successful probe said writable */
    bool fenced;                /* lost the writer role while still writable: not eligible
                                   until seen read-only, re-promoted (newer timeline) or named
                                   writer by AWS with no failover in progress */
    bool promoted;              /* this round: seen read-only before, writable now */
    uint32_t timeline;          /* last timeline seen (0 = unknown) */
    uint32_t fenced_timeline;   /* timeline when fenced */
    uint64_t last_ok_ms;        /* time of the last successful probe */
    double lag_ms;              /* the lag last observed (disc_obs), for disc_candidate() only */
    uint64_t lag_at_ms;
};

struct disc_params {
    unsigned writer_down_after; /* consecutive failures that drop the writer (>= 1) */
    uint64_t stale_after_ms;    /* a cluster not probed OK for this long counts as down */
    uint64_t aws_stale_after_ms;/* AWS data older than this is ignored */
    uint64_t lag_stale_after_ms;/* a lag measured longer ago is not used (0: none is) */
};

struct disc_decision {
    int writer;                 /* index of the writer cluster, -1 = none (hold) */
    int last_writer;            /* the most recent writer (>= 0), -1 = never had one */
    int requested;              /* operator switchover target, -1 = none; set by the caller,
                                   cleared once it is the writer */
    uint64_t generation;        /* +1 on every writer change */
    uint64_t changed_ms;        /* time of the last writer change (0 = none yet) */
    int failover_to;            /* AWS reports a failover / switchover to this cluster, -1 none */
    bool cut_old;               /* the last change took the role from a writer that still
                                   accepted writes: sessions must be cut from it at once
                                   (kept until the next change) */
    bool split_brain;           /* more than one cluster writable right now */
    bool changed;               /* the writer differs from the previous decision */
    char reason[DISC_REASON_MAX];
    size_t n;
    struct disc_cluster c[DISC_MAX_CLUSTERS];
};

/* Initial state: no writer, generation 0, nothing seen. */
void disc_decision_init(struct disc_decision *d, size_t nclusters);

/* next = decide(prev, obs[0..prev->n), now). names[] are used in reasons only.
 * Pure: no I/O, no clocks, no globals. next may not alias prev. */
void disc_decide(const struct disc_decision *prev, const struct disc_obs *obs,
                 const char *const *names, uint64_t now_ms, const struct disc_params *p,
                 struct disc_decision *next);

/* While there is no writer, or the writer's last probe failed (a crash is
 * confirmed only after writer_down_after failures), or AWS reports a
 * failover in progress: the cluster most likely to become the writer, so
 * that sessions waiting for one can log in there ahead of its promotion
 * (they send it nothing until it is the writer). The operator's switchover
 * target if healthy, else AWS's failover target if healthy, else the one
 * healthy, unfenced cluster other than the (last) writer; among several
 * such, the one with the least replication lag when every one of them has a
 * fresh lag (lag_stale_after_ms) and one is strictly least; -1 when the
 * writer is healthy, or there are none, or several and the lag does not
 * settle it. */
int disc_candidate(const struct disc_decision *d, uint64_t now_ms, const struct disc_params *p);

#endif
