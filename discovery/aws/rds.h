/* RDS over the AWS query protocol (reference/aws.md §3, §4): request bodies
 * for DescribeGlobalClusters and DescribeDBClusters, and parsers for their
 * replies into plain structs. No I/O; thread: any.
 */
#ifndef FERRY_AWS_RDS_H
#define FERRY_AWS_RDS_H

#include <stdbool.h>
#include <stddef.h>

#include "ferry/wbuf.h"
#include "xml.h"

#define AWS_RDS_VERSION "2014-10-31"
#define AWS_ID_MAX 256          /* identifiers: RDS allows 63, names up to 255 */
#define AWS_ARN_MAX 512
#define AWS_STATE_MAX 48        /* status words: "available", "failing-over", ... */
#define AWS_HOST_MAX 256
#define AWS_REGION_MAX 32
#define AWS_MARKER_MAX 1024

/* One member of a global cluster (a regional DB cluster). */
struct aws_global_member {
    char cluster_arn[AWS_ARN_MAX];      /* DBClusterArn */
    char region[AWS_REGION_MAX];        /* from the ARN */
    char cluster_id[AWS_ID_MAX];        /* from the ARN: the DB cluster identifier */
    bool is_writer;                     /* IsWriter: this is the primary cluster */
    char write_forwarding[AWS_STATE_MAX]; /* GlobalWriteForwardingStatus, "" if absent */
    char sync_status[AWS_STATE_MAX];    /* SynchronizationStatus: connected|pending-resync|"" */
    char (*readers)[AWS_ARN_MAX];       /* owned: Readers (ARNs of secondaries; on the primary) */
    size_t nreaders;
};

/* FailoverState: present only while a switchover or failover is pending or running. */
struct aws_failover_state {
    bool present;
    char status[AWS_STATE_MAX];         /* pending|failing-over|switching-over|cancelling */
    char from_arn[AWS_ARN_MAX];
    char to_arn[AWS_ARN_MAX];
    bool data_loss_allowed;             /* true = failover, false = switchover */
};

struct aws_global_cluster {
    char id[AWS_ID_MAX];                /* GlobalClusterIdentifier */
    char arn[AWS_ARN_MAX];
    char status[AWS_STATE_MAX];
    char engine[AWS_STATE_MAX];
    char engine_version[AWS_STATE_MAX];
    char endpoint[AWS_HOST_MAX];        /* global writer endpoint, "" if absent */
    struct aws_global_member *members;  /* owned */
    size_t nmembers;
    struct aws_failover_state failover;
};

struct aws_global_clusters {
    struct aws_global_cluster *items;   /* owned */
    size_t n;
    char marker[AWS_MARKER_MAX];        /* "" = last page */
};

struct aws_db_cluster_member {
    char instance_id[AWS_ID_MAX];       /* DBInstanceIdentifier */
    bool is_writer;                     /* IsClusterWriter */
    long promotion_tier;
};

struct aws_db_cluster {
    char id[AWS_ID_MAX];                /* DBClusterIdentifier */
    char arn[AWS_ARN_MAX];
    char status[AWS_STATE_MAX];         /* "available" = healthy */
    char endpoint[AWS_HOST_MAX];        /* writer endpoint of this cluster */
    char reader_endpoint[AWS_HOST_MAX];
    long port;                          /* 0 if absent */
    char engine[AWS_STATE_MAX];
    char engine_version[AWS_STATE_MAX];
    char global_cluster_id[AWS_ID_MAX];
    char write_forwarding[AWS_STATE_MAX];
    char replication_source[AWS_ARN_MAX];
    bool iam_auth;                      /* IAMDatabaseAuthenticationEnabled */
    struct aws_db_cluster_member *members; /* owned */
    size_t nmembers;
};

struct aws_db_clusters {
    struct aws_db_cluster *items;       /* owned */
    size_t n;
    char marker[AWS_MARKER_MAX];
};

/* Request bodies, appended to b. id and marker may be NULL (all / first page).
 * Return 0, or -1 when b failed. */
int aws_rds_describe_global_clusters_body(struct ferry_wbuf *b, const char *global_cluster_id,
                                          const char *marker);
int aws_rds_describe_db_clusters_body(struct ferry_wbuf *b, const char *db_cluster_id,
                                      const char *marker);

/* Reply parsers. Return 0 and fill *out (free with the matching _free, also
 * after a failure), or -1 with the reason in err for garbage, truncated or
 * unexpected XML. */
int aws_rds_parse_global_clusters(const void *body, size_t len, struct aws_global_clusters *out,
                                  char err[AWS_ERRMSG_MAX]);
void aws_global_clusters_free(struct aws_global_clusters *gc);
int aws_rds_parse_db_clusters(const void *body, size_t len, struct aws_db_clusters *out,
                              char err[AWS_ERRMSG_MAX]);
void aws_db_clusters_free(struct aws_db_clusters *dc);

/* Splits "arn:<partition>:rds:<region>:<account>:cluster:<id>" into region
 * and id. Returns 0, or -1 when arn is not an RDS cluster ARN. */
int aws_rds_cluster_arn_split(const char *arn, char region[AWS_REGION_MAX], char id[AWS_ID_MAX]);

#endif
