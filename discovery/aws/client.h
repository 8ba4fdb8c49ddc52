/* ferry's AWS client: the async API the discovery thread calls. Signs with
 * SigV4, takes credentials from the chain, retries throttling / 5xx /
 * transport errors with jittered backoff under a retry budget, refreshes
 * credentials on ExpiredToken, corrects clock skew, and reports each call's
 * outcome (with the IAM action it needed) through one callback.
 *
 * Thread: everything on the thread running `loop`; callbacks run there.
 * Nothing blocks (except reading a small web-identity token file).
 */
#ifndef FERRY_AWS_CLIENT_H
#define FERRY_AWS_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "awserror.h"
#include "cloudwatch.h"
#include "credentials.h"
#include "rds.h"

struct aws_client;

struct aws_client_config {
    const char *region;                 /* default region; NULL = AWS_REGION / AWS_DEFAULT_REGION */
    /* Endpoint overrides, e.g. "http://127.0.0.1:PORT" (tests, VPC endpoints).
     * NULL = https://<service>.<region>.amazonaws.com. Signing region and
     * service do not change with the endpoint. */
    const char *rds_endpoint;
    const char *monitoring_endpoint;
    const char *sts_endpoint;           /* NULL = AWS_ENDPOINT_URL_STS, else regional STS */
    const char *imds_endpoint;          /* NULL = AWS_EC2_METADATA_SERVICE_ENDPOINT, else 169.254.169.254 */
    const char *container_host;         /* base for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI */
    const char *ca_file;                /* PEM CA bundle for https; NULL = system */
    enum aws_cred_source cred_source;   /* AWS_CRED_NONE = the chain, picked from the environment */
    const struct aws_credentials *static_creds; /* with AWS_CRED_STATIC; copied */
    const char *(*getenv_fn)(const char *name); /* NULL = getenv (tests inject a table) */
    long timeout_ms;                    /* per attempt; 0 = 5000 */
    unsigned max_attempts;              /* 0 = 3 (SDK standard mode) */
    unsigned backoff_base_ms;           /* 0 = 1000: delay = rand(0,1) * min(base * 2^n, cap) */
    unsigned backoff_cap_ms;            /* 0 = 20000 */
    unsigned lag_window_s;              /* GetMetricData look-back; 0 = 900 */
};

/* How a call ended. Borrowed for the duration of the callback. */
struct aws_status {
    enum aws_err_class cls;             /* AWS_OK on success */
    struct aws_error error;             /* HTTP status, Code, Message, RequestId (of the last attempt) */
    const char *action;                 /* "DescribeGlobalClusters" */
    const char *iam_action;             /* "rds:DescribeGlobalClusters": what the IAM policy must allow */
    const char *region;                 /* where the call went */
    unsigned attempts;                  /* HTTP attempts made (0 if credentials failed first) */
    bool more;                          /* a Marker/NextToken came back: results are one page */
};

/* Replication lag of one cluster from the latest datapoint in the window.
 * present == false: no datapoint — the cluster is (currently) the primary,
 * or CloudWatch has nothing yet. That is a signal, not an error. */
struct aws_lag {
    const char *cluster_id;             /* as passed in */
    bool present;
    double lag_ms;                      /* Maximum over the newest 1-minute bucket */
    int64_t at;                         /* that bucket's timestamp, epoch seconds */
    size_t npoints;                     /* datapoints in the window */
    const char *status;                 /* CloudWatch StatusCode: "Complete", "PartialData", ... */
};

/* Result callbacks: the result pointer is NULL unless st->cls == AWS_OK, and
 * borrowed for the duration of the call. */
typedef void (*aws_global_clusters_cb)(const struct aws_status *st,
                                       const struct aws_global_clusters *gc, void *ud);
typedef void (*aws_db_clusters_cb)(const struct aws_status *st, const struct aws_db_clusters *dc,
                                   void *ud);
typedef void (*aws_lag_cb)(const struct aws_status *st, const struct aws_lag *lags, size_t n,
                           void *ud);

/* Creates a client on loop; reads the environment once (credential source,
 * region). Returns NULL on allocation failure. */
struct aws_client *aws_client_new(uv_loop_t *loop, const struct aws_client_config *cfg);

/* The credential source chosen (for logs and status). */
enum aws_cred_source aws_client_cred_source(const struct aws_client *c);

/* RDS DescribeGlobalClusters in `region` (NULL = the default region; any
 * member region can answer, so call a surviving one when the primary is
 * impaired). global_cluster_id NULL = all. Returns 0 (cb will run exactly
 * once, never from inside this call) or -1 (cb will not run). */
int aws_describe_global_clusters(struct aws_client *c, const char *region,
                                 const char *global_cluster_id, aws_global_clusters_cb cb, void *ud);

/* RDS DescribeDBClusters for one cluster identifier or ARN (NULL = all) in
 * region. Same conventions. */
int aws_describe_db_clusters(struct aws_client *c, const char *region, const char *db_cluster_id,
                             aws_db_clusters_cb cb, void *ud);

/* CloudWatch GetMetricData: AuroraGlobalDBReplicationLag for each of
 * cluster_ids (DB cluster identifiers, not ARNs; all in `region`, the
 * secondaries' region), 1 <= n <= 500. Same conventions; lags[i] belongs to
 * cluster_ids[i]. */
int aws_get_replication_lag(struct aws_client *c, const char *region,
                            const char *const *cluster_ids, size_t n, aws_lag_cb cb, void *ud);

/* Cancels everything in flight (callbacks run with AWS_ERR_CANCELLED before
 * this returns), closes all handles, and frees c once they are closed: run
 * the loop until it has no more handles before uv_loop_close(). */
void aws_client_free(struct aws_client *c);

#endif
