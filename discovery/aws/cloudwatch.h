/* CloudWatch GetMetricData over the AWS query protocol (reference/aws.md §5,
 * §12): the request body for AuroraGlobalDBReplicationLag per secondary DB
 * cluster, and the reply parser. An empty series is a signal (the cluster is
 * the primary, or no datapoint yet), not an error. No I/O; thread: any.
 */
#ifndef FERRY_AWS_CLOUDWATCH_H
#define FERRY_AWS_CLOUDWATCH_H

#include <stddef.h>
#include <stdint.h>

#include "ferry/wbuf.h"
#include "xml.h"

#define AWS_CW_VERSION "2010-08-01"
#define AWS_CW_LAG_METRIC "AuroraGlobalDBReplicationLag"
#define AWS_CW_MAX_QUERIES 500
#define AWS_CW_TOKEN_MAX 2048

/* Body of a GetMetricData call asking, for each DB cluster cluster_ids[i],
 * the Maximum of AWS/RDS metric_name over period-second buckets between
 * start and end (epoch seconds; the caller aligns them to whole minutes),
 * newest first. Each query is a SEARCH() expression on the namespace, the
 * metric name and DBClusterIdentifier, so it finds the metric whatever other
 * dimensions it is published with (AuroraGlobalDBReplicationLag: see the
 * comment in cloudwatch.c); identifiers are sent lower case, as RDS stores
 * them. Query i gets Id query_ids[i], or "m<i>" when query_ids is NULL (an
 * Id must start with a lowercase letter). next_token may be NULL. Returns 0,
 * or -1 when n is 0 or above AWS_CW_MAX_QUERIES, an identifier is empty or
 * not letters, digits and hyphens (an RDS identifier never is), or b failed. */
int aws_cw_metric_data_body(struct ferry_wbuf *b, const char *metric_name,
                            const char *const *cluster_ids, const char *const *query_ids,
                            size_t n, unsigned period, int64_t start, int64_t end,
                            const char *next_token);

struct aws_metric_series {
    char id[256];               /* the query Id */
    char label[256];
    char status[32];            /* Complete | PartialData | InternalError | Forbidden */
    int64_t *timestamps;        /* owned; epoch seconds, in the reply's order */
    double *values;             /* owned; values[i] belongs to timestamps[i] */
    size_t n;                   /* 0 = no datapoints in the window */
};

struct aws_metric_data {
    struct aws_metric_series *series; /* owned */
    size_t n;
    char next_token[AWS_CW_TOKEN_MAX]; /* "" = complete */
};

/* Parses a GetMetricDataResponse. Returns 0, or -1 with the reason in err
 * (garbage, truncated, mismatched Timestamps/Values counts, bad numbers).
 * Free *out with aws_metric_data_free() in both cases. */
int aws_cw_parse_metric_data(const void *body, size_t len, struct aws_metric_data *out,
                             char err[AWS_ERRMSG_MAX]);
void aws_metric_data_free(struct aws_metric_data *md);

/* The series with Id id, or NULL (the first, when a SEARCH returned several). */
const struct aws_metric_series *aws_metric_data_find(const struct aws_metric_data *md,
                                                     const char *id);

/* The newest datapoint of query id across every series of the reply with
 * that Id (a SEARCH expression returns one series per matching metric, all
 * under the query's Id): *value is its value (the largest, when several
 * series have a point at that time) and *at its timestamp, epoch seconds.
 * Returns the number of datapoints the reply has for id; 0 = absent (the
 * outputs are untouched). */
size_t aws_cw_newest(const struct aws_metric_data *md, const char *id, double *value, int64_t *at);

#endif
