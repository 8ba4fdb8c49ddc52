/* The async AWS client: one struct op per API call, moved along
 * credentials → sign → HTTP → classify → (retry timer | deliver) on the
 * caller's loop. Per-operation knowledge (body, parser, IAM action) lives in
 * a small op_spec table; everything else is shared.
 */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "credprovider.h"
#include "ferry/list.h"
#include "ferry/log.h"
#include "form.h"
#include "http.h"
#include "sigv4.h"
#include "timefmt.h"

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_ATTEMPTS 3
#define DEFAULT_BACKOFF_BASE_MS 1000
#define DEFAULT_BACKOFF_CAP_MS 20000
#define DEFAULT_LAG_WINDOW_S 900    /* 15 min: a datapoint past the 10 min staleness mark is still
                                       seen (and shown stale) rather than vanishing */
/* Retry budget, SDK "standard" mode (reference §10): a regional brown-out
 * must not be amplified by every caller retrying at full rate. */
#define RETRY_TOKENS_MAX 500
#define RETRY_COST 5
#define RETRY_COST_TIMEOUT 10
#define FORM_CT "application/x-www-form-urlencoded; charset=utf-8"

struct aws_client {
    uv_loop_t *loop;                    /* borrowed */
    struct aws_http *http;              /* owned */
    struct aws_credprovider *creds;     /* owned; NULL once closing */
    enum aws_cred_source cred_source;   /* kept: still readable while closing */
    char region[32];
    char rds_endpoint[AWS_URL_MAX];     /* "" = AWS default */
    char monitoring_endpoint[AWS_URL_MAX];
    char ca_file[AWS_PATH_MAX];
    long timeout_ms;
    unsigned max_attempts, backoff_base_ms, backoff_cap_ms, lag_window_s;
    int64_t skew_s;                     /* add to local time: from a server Date after RequestExpired */
    int retry_tokens;
    uint64_t rng;                       /* xorshift state for backoff jitter */
    struct ferry_list ops;              /* struct op.node: calls not yet delivered */
    unsigned open_handles;              /* op timers + the http client */
    bool closing;
};

struct op;

/* What differs between API calls. */
struct op_spec {
    const char *service;                /* signing name and endpoint prefix */
    const char *action;
    const char *iam_action;
    /* Parses a 2xx body and calls the user's callback; on a parse failure
     * sets op->st to a bad_response error and returns -1 without calling. */
    int (*deliver)(struct op *op, const uint8_t *body, size_t len);
    /* Calls the user's callback with op->st and no result. */
    void (*fail)(struct op *op);
};

struct op {
    struct aws_client *c;
    const struct op_spec *spec;
    char region[32];
    struct ferry_wbuf body;             /* owned request body */
    struct aws_status st;
    uv_timer_t timer;                   /* retry delay, or deferred failure delivery */
    bool refreshed_creds;               /* one retry after ExpiredToken */
    bool skew_fixed;                    /* one retry after RequestExpired */
    bool deliver_pending;               /* timer fires delivery of st instead of a retry */
    int retry_spent;                    /* budget tokens this op took */
    union {
        aws_global_clusters_cb gc;
        aws_db_clusters_cb dc;
        aws_lag_cb lag;
    } cb;
    void *ud;
    char (*cluster_ids)[AWS_ID_MAX];    /* owned; lag calls only */
    size_t nclusters;
    struct ferry_list node;
};

static void op_attempt(struct op *op);

/* ---- small helpers ------------------------------------------------------- */

static int64_t now_s(const struct aws_client *c)
{
    return (int64_t)time(NULL) + c->skew_s;
}

static unsigned jitter(struct aws_client *c, unsigned max_ms)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return max_ms ? (unsigned)(c->rng % ((uint64_t)max_ms + 1)) : 0;
}

static void copy_opt(char *dst, size_t n, const char *src)
{
    snprintf(dst, n, "%s", src ? src : "");
}

/* ---- lifecycle ----------------------------------------------------------- */

static void client_handle_closed(struct aws_client *c)
{
    if (--c->open_handles == 0 && c->closing)
        free(c);
}

static void http_closed(void *ud)
{
    client_handle_closed(ud);
}

static void op_closed(uv_handle_t *h)
{
    struct op *op = h->data;
    struct aws_client *c = op->c;
    ferry_wbuf_free(&op->body);
    free(op->cluster_ids);
    free(op);
    client_handle_closed(c);
}

/* Takes op off the client's list before its callback runs, so that a
 * callback freeing the client does not cancel (and call back) op again.
 * Idempotent. */
static void op_detach(struct op *op)
{
    ferry_list_remove(&op->node);
}

/* After the callback: op's memory goes in its timer's close callback. */
static void op_close(struct op *op)
{
    uv_timer_stop(&op->timer);
    uv_close((uv_handle_t *)&op->timer, op_closed);
}

static void log_failure(const struct op *op)
{
    const struct aws_status *st = &op->st;
    /* code, request id and message come from the response: quoted */
    char msg[FERRY_LOG_QUOTED_MAX(sizeof st->error.message)];
    char code[FERRY_LOG_QUOTED_MAX(sizeof st->error.code)];
    char rid[FERRY_LOG_QUOTED_MAX(sizeof st->error.request_id)];
    ferry_log_quote(st->error.message[0] ? st->error.message : "-", msg, sizeof msg);
    ferry_log_quote(st->error.code[0] ? st->error.code : "-", code, sizeof code);
    ferry_log_quote(st->error.request_id[0] ? st->error.request_id : "-", rid, sizeof rid);
    if (st->cls == AWS_ERR_ACCESS_DENIED) {
        ferry_log(FERRY_LOG_ERROR, "aws.access_denied",
                  "action=%s region=%s missing_iam_action=%s code=%s request_id=%s message=%s",
                  op->spec->action, op->region, op->spec->iam_action, code, rid, msg);
        return;
    }
    if (st->cls == AWS_ERR_CANCELLED)
        return;
    ferry_log(FERRY_LOG_WARN, "aws.request_failed",
              "action=%s region=%s class=%s http_status=%ld code=%s attempts=%u request_id=%s message=%s",
              op->spec->action, op->region, aws_err_class_name(st->cls), st->error.http_status,
              code, st->attempts, rid, msg);
}

static void op_fail(struct op *op)
{
    op_detach(op);
    log_failure(op);
    op->spec->fail(op);
    op_close(op);
}

static void on_timer(uv_timer_t *t)
{
    struct op *op = t->data;
    if (op->deliver_pending)
        op_fail(op);
    else
        op_attempt(op);
}

/* Fails op from a later loop turn: API calls never call back from inside. */
static void op_fail_later(struct op *op, enum aws_err_class cls, const char *why)
{
    op->st.cls = cls;
    copy_opt(op->st.error.message, sizeof op->st.error.message, why);
    op->deliver_pending = true;
    uv_timer_start(&op->timer, on_timer, 0, 0);
}

/* ---- retry decisions ----------------------------------------------------- */

/* Decides whether op gets another attempt after a failure of class cls, and
 * after how long. server_date (epoch, 0 if unknown) fixes clock skew. */
static bool plan_retry(struct op *op, int64_t server_date, uint64_t *delay_ms)
{
    struct aws_client *c = op->c;
    enum aws_err_class cls = op->st.cls;
    *delay_ms = 0;
    if (!aws_err_class_retryable(cls) || op->st.attempts >= c->max_attempts)
        return false;
    if (cls == AWS_ERR_EXPIRED_CREDS) {
        if (op->refreshed_creds)
            return false;
        op->refreshed_creds = true;
        aws_credprovider_invalidate(c->creds);
        return true;
    }
    if (cls == AWS_ERR_CLOCK_SKEW) {
        if (op->skew_fixed || server_date == 0)
            return false;
        op->skew_fixed = true;
        c->skew_s = server_date - (int64_t)time(NULL);
        ferry_log(FERRY_LOG_WARN, "aws.clock_skew", "offset_s=%lld", (long long)c->skew_s);
        return true;
    }
    int cost = op->st.error.http_status == 0 && cls == AWS_ERR_TRANSPORT ? RETRY_COST_TIMEOUT
                                                                         : RETRY_COST;
    if (c->retry_tokens < cost) {
        ferry_log(FERRY_LOG_WARN, "aws.retry_budget_exhausted", "action=%s region=%s",
                  op->spec->action, op->region);
        return false;
    }
    c->retry_tokens -= cost;
    op->retry_spent += cost;
    uint64_t cap = (uint64_t)c->backoff_base_ms << (op->st.attempts < 16 ? op->st.attempts : 16);
    if (cap > c->backoff_cap_ms)
        cap = c->backoff_cap_ms;
    *delay_ms = jitter(c, (unsigned)cap);
    return true;
}

static void retry_or_fail(struct op *op, int64_t server_date)
{
    uint64_t delay;
    if (op->c->closing || !plan_retry(op, server_date, &delay)) {
        op_fail(op);
        return;
    }
    char code[FERRY_LOG_QUOTED_MAX(sizeof op->st.error.code)];
    ferry_log(FERRY_LOG_INFO, "aws.retry",
              "action=%s region=%s class=%s http_status=%ld code=%s attempt=%u delay_ms=%llu",
              op->spec->action, op->region, aws_err_class_name(op->st.cls),
              op->st.error.http_status,
              ferry_log_quote(op->st.error.code[0] ? op->st.error.code : "-", code, sizeof code),
              op->st.attempts, (unsigned long long)delay);
    uv_timer_start(&op->timer, on_timer, delay, 0);
}

static void succeeded(struct op *op)
{
    struct aws_client *c = op->c;
    /* Refund what this op spent, or one token for a first-try success. */
    c->retry_tokens += op->retry_spent ? op->retry_spent : 1;
    if (c->retry_tokens > RETRY_TOKENS_MAX)
        c->retry_tokens = RETRY_TOKENS_MAX;
}

/* ---- HTTP ---------------------------------------------------------------- */

static void on_http(const struct aws_http_response *r, void *ud)
{
    struct op *op = ud;
    struct aws_status *st = &op->st;
    memset(&st->error, 0, sizeof st->error);
    if (r->cancelled) {
        st->cls = AWS_ERR_CANCELLED;
        copy_opt(st->error.message, sizeof st->error.message, "cancelled");
        op_fail(op);
        return;
    }
    if (r->curl_code) {
        st->cls = AWS_ERR_TRANSPORT;
        copy_opt(st->error.message, sizeof st->error.message, r->curl_error);
        retry_or_fail(op, 0);
        return;
    }
    st->error.http_status = r->status;
    if (r->status >= 200 && r->status < 300) {
        st->cls = AWS_OK;
        op_detach(op);
        if (op->spec->deliver(op, r->body, r->body_len) == 0) {
            succeeded(op);
            op_close(op);
        } else {
            op_fail(op);                /* garbage or truncated: not retried */
        }
        return;
    }
    (void)aws_error_parse(r->body, r->body_len, r->status, &st->error);
    if (!st->error.request_id[0])
        copy_opt(st->error.request_id, sizeof st->error.request_id, r->request_id);
    st->cls = aws_error_classify(&st->error);
    retry_or_fail(op, r->date);
}

/* Splits the endpoint URL into what SigV4 signs: the Host header value
 * (with the port when the URL names one) and the decoded path. */
static int url_parts(const char *url, char *host, size_t hostlen, char *path, size_t pathlen)
{
    CURLU *u = curl_url();
    char *h = NULL, *port = NULL, *p = NULL;
    int rc = -1;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PATH, &p, CURLU_URLDECODE) == CURLUE_OK) {
        bool has_port = curl_url_get(u, CURLUPART_PORT, &port, 0) == CURLUE_OK;
        int n = has_port ? snprintf(host, hostlen, "%s:%s", h, port) : snprintf(host, hostlen, "%s", h);
        int m = snprintf(path, pathlen, "%s", *p ? p : "/");
        rc = n > 0 && (size_t)n < hostlen && m > 0 && (size_t)m < pathlen ? 0 : -1;
    }
    curl_free(h);
    curl_free(port);
    curl_free(p);
    curl_url_cleanup(u);
    return rc;
}

static void op_endpoint(const struct op *op, char *url, size_t n)
{
    const struct aws_client *c = op->c;
    const char *override = strcmp(op->spec->service, "rds") == 0 ? c->rds_endpoint
                                                                 : c->monitoring_endpoint;
    if (override[0])
        snprintf(url, n, "%s", override);
    else
        snprintf(url, n, "https://%s.%s.amazonaws.com/", op->spec->service, op->region);
}

/* Signs op's body with creds and starts the HTTP request. */
static void op_send(struct op *op, const struct aws_credentials *creds)
{
    struct aws_client *c = op->c;
    char url[AWS_URL_MAX], host[300], path[512], amz_date[AWS_AMZ_DATE_LEN + 1];
    op_endpoint(op, url, sizeof url);
    if (url_parts(url, host, sizeof host, path, sizeof path) < 0) {
        op_fail_later(op, AWS_ERR_CALLER, "invalid endpoint URL");
        return;
    }
    aws_amz_date(now_s(c), amz_date);
    struct aws_kv sh[4] = {{"Content-Type", FORM_CT}, {"Host", host}, {"X-Amz-Date", amz_date}};
    size_t nsh = 3;
    if (creds->session_token[0])
        sh[nsh++] = (struct aws_kv){"X-Amz-Security-Token", creds->session_token};
    struct aws_sigv4_request sr = {
        .method = "POST", .path = path, .headers = sh, .nheaders = nsh, .body = op->body.data,
        .body_len = op->body.len, .region = op->region, .service = op->spec->service,
        .amz_date = amz_date,
    };
    struct aws_sigv4_key key = {creds->access_key_id, creds->secret_access_key};
    struct aws_sigv4_out sig;
    int rc = aws_sigv4_sign(&sr, &key, &sig);

    /* The header lines curl sends: exactly the signed values, plus the
     * Authorization header. */
    char l_ct[128], l_host[320], l_date[48], l_token[AWS_TOKEN_MAX + 32], l_auth[512];
    snprintf(l_ct, sizeof l_ct, "Content-Type: %s", FORM_CT);
    snprintf(l_host, sizeof l_host, "Host: %s", host);
    snprintf(l_date, sizeof l_date, "X-Amz-Date: %s", amz_date);
    snprintf(l_token, sizeof l_token, "X-Amz-Security-Token: %s", creds->session_token);
    int an = rc == 0 ? snprintf(l_auth, sizeof l_auth, "Authorization: %s",
                                (const char *)sig.authorization.data) : -1;
    aws_sigv4_out_free(&sig);
    const char *headers[] = {l_ct, l_host, l_date, l_auth, l_token};
    struct aws_http_request req = {
        .method = "POST", .url = url, .headers = headers, .nheaders = creds->session_token[0] ? 5 : 4,
        .body = op->body.data, .body_len = op->body.len, .timeout_ms = c->timeout_ms,
        .ca_file = c->ca_file[0] ? c->ca_file : NULL,
    };
    op->st.attempts++;
    if (rc < 0 || an < 0 || (size_t)an >= sizeof l_auth ||
        aws_http_send(c->http, &req, on_http, op) < 0)
        op_fail_later(op, AWS_ERR_CALLER, "cannot sign or send the request");
    memset(l_token, 0, sizeof l_token);
}

static void on_creds(const struct aws_credentials *creds, enum aws_err_class cls,
                     const struct aws_error *err, void *ud)
{
    struct op *op = ud;
    if (creds) {
        op_send(op, creds);
        return;
    }
    op->st.error = *err;
    if (cls != AWS_ERR_CANCELLED && aws_err_class_retryable(cls)) {
        /* The metadata endpoint or STS had a transient failure: back off and
         * try the whole call again, counted as an attempt. */
        op->st.cls = cls;
        op->st.attempts++;
        retry_or_fail(op, 0);
        return;
    }
    op->st.cls = cls == AWS_ERR_CANCELLED ? cls : AWS_ERR_NO_CREDENTIALS;
    op_fail(op);
}

static void op_attempt(struct op *op)
{
    struct aws_client *c = op->c;
    const struct aws_credentials *creds = aws_credprovider_current(c->creds, now_s(c));
    if (creds) {
        op_send(op, creds);
        return;
    }
    if (aws_credprovider_fetch(c->creds, on_creds, op) < 0)
        op_fail_later(op, AWS_ERR_NO_CREDENTIALS,
                      "no AWS credentials (environment, web identity, container or IMDS)");
}

/* ---- the calls ----------------------------------------------------------- */

static int deliver_global_clusters(struct op *op, const uint8_t *body, size_t len)
{
    struct aws_global_clusters gc;
    char err[AWS_ERRMSG_MAX];
    if (aws_rds_parse_global_clusters(body, len, &gc, err) < 0) {
        aws_global_clusters_free(&gc);
        op->st.cls = AWS_ERR_BAD_RESPONSE;
        copy_opt(op->st.error.message, sizeof op->st.error.message, err);
        return -1;
    }
    op->st.more = gc.marker[0] != '\0';
    op->cb.gc(&op->st, &gc, op->ud);
    aws_global_clusters_free(&gc);
    return 0;
}

static void fail_global_clusters(struct op *op)
{
    op->cb.gc(&op->st, NULL, op->ud);
}

static int deliver_db_clusters(struct op *op, const uint8_t *body, size_t len)
{
    struct aws_db_clusters dc;
    char err[AWS_ERRMSG_MAX];
    if (aws_rds_parse_db_clusters(body, len, &dc, err) < 0) {
        aws_db_clusters_free(&dc);
        op->st.cls = AWS_ERR_BAD_RESPONSE;
        copy_opt(op->st.error.message, sizeof op->st.error.message, err);
        return -1;
    }
    op->st.more = dc.marker[0] != '\0';
    op->cb.dc(&op->st, &dc, op->ud);
    aws_db_clusters_free(&dc);
    return 0;
}

static void fail_db_clusters(struct op *op)
{
    op->cb.dc(&op->st, NULL, op->ud);
}

static int deliver_lag(struct op *op, const uint8_t *body, size_t len)
{
    struct aws_metric_data md;
    char err[AWS_ERRMSG_MAX];
    struct aws_lag *lags = NULL;
    if (aws_cw_parse_metric_data(body, len, &md, err) < 0 ||
        !(lags = calloc(op->nclusters, sizeof *lags))) {
        aws_metric_data_free(&md);
        op->st.cls = AWS_ERR_BAD_RESPONSE;
        copy_opt(op->st.error.message, sizeof op->st.error.message, lags ? err : "out of memory");
        return -1;
    }
    for (size_t i = 0; i < op->nclusters; i++) {
        char id[24];
        snprintf(id, sizeof id, "m%zu", i);
        const struct aws_metric_series *s = aws_metric_data_find(&md, id);
        struct aws_lag *l = &lags[i];
        l->cluster_id = op->cluster_ids[i];
        l->status = s ? s->status : "";
        /* the newest datapoint, with its own timestamp: when AWS measured
         * the lag, not when we read it. None: primary, or no data yet. */
        l->npoints = aws_cw_newest(&md, id, &l->lag_ms, &l->at);
        l->present = l->npoints > 0;
    }
    op->st.more = md.next_token[0] != '\0';
    op->cb.lag(&op->st, lags, op->nclusters, op->ud);
    free(lags);
    aws_metric_data_free(&md);
    return 0;
}

static void fail_lag(struct op *op)
{
    op->cb.lag(&op->st, NULL, 0, op->ud);
}

static const struct op_spec spec_global_clusters = {
    "rds", "DescribeGlobalClusters", "rds:DescribeGlobalClusters",
    deliver_global_clusters, fail_global_clusters,
};
static const struct op_spec spec_db_clusters = {
    "rds", "DescribeDBClusters", "rds:DescribeDBClusters", deliver_db_clusters, fail_db_clusters,
};
static const struct op_spec spec_lag = {
    "monitoring", "GetMetricData", "cloudwatch:GetMetricData", deliver_lag, fail_lag,
};

/* Allocates an op for spec in region (NULL = default); NULL when the client
 * is closing, the region is unknown, or out of memory. */
static struct op *op_new(struct aws_client *c, const struct op_spec *spec, const char *region, void *ud)
{
    if (c->closing)
        return NULL;
    const char *r = region && *region ? region : c->region;
    if (!*r || strlen(r) >= sizeof ((struct op *)0)->region)
        return NULL;
    struct op *op = calloc(1, sizeof *op);
    if (!op)
        return NULL;
    op->c = c;
    op->spec = spec;
    op->ud = ud;
    strcpy(op->region, r);
    op->st.action = spec->action;
    op->st.iam_action = spec->iam_action;
    op->st.region = op->region;
    ferry_wbuf_init(&op->body, 1 << 20);
    ferry_list_init(&op->node);
    return op;
}

/* Starts op whose body is built; on a build failure frees it and returns -1. */
static int op_start(struct op *op, int built)
{
    struct aws_client *c = op->c;
    if (built < 0 || uv_timer_init(c->loop, &op->timer) < 0) {
        ferry_wbuf_free(&op->body);
        free(op->cluster_ids);
        free(op);
        return -1;
    }
    op->timer.data = op;
    c->open_handles++;
    ferry_list_insert_tail(&c->ops, &op->node);
    op_attempt(op);                     /* every outcome arrives on a later loop turn */
    return 0;
}

int aws_describe_global_clusters(struct aws_client *c, const char *region,
                                 const char *global_cluster_id, aws_global_clusters_cb cb, void *ud)
{
    struct op *op = cb ? op_new(c, &spec_global_clusters, region, ud) : NULL;
    if (!op)
        return -1;
    op->cb.gc = cb;
    return op_start(op, aws_rds_describe_global_clusters_body(&op->body, global_cluster_id, NULL));
}

int aws_describe_db_clusters(struct aws_client *c, const char *region, const char *db_cluster_id,
                             aws_db_clusters_cb cb, void *ud)
{
    struct op *op = cb ? op_new(c, &spec_db_clusters, region, ud) : NULL;
    if (!op)
        return -1;
    op->cb.dc = cb;
    return op_start(op, aws_rds_describe_db_clusters_body(&op->body, db_cluster_id, NULL));
}

int aws_get_replication_lag(struct aws_client *c, const char *region,
                            const char *const *cluster_ids, size_t n, aws_lag_cb cb, void *ud)
{
    if (n == 0 || n > AWS_CW_MAX_QUERIES)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (!cluster_ids[i] || strlen(cluster_ids[i]) >= AWS_ID_MAX)
            return -1;
    struct op *op = cb ? op_new(c, &spec_lag, region, ud) : NULL;
    if (!op)
        return -1;
    op->cb.lag = cb;
    op->cluster_ids = calloc(n, sizeof *op->cluster_ids);
    if (!op->cluster_ids)
        return op_start(op, -1);
    for (size_t i = 0; i < n; i++)
        strcpy(op->cluster_ids[i], cluster_ids[i]);
    op->nclusters = n;
    /* Whole minutes (reference §5); the end is the next minute boundary so
     * the newest complete bucket is inside the window. */
    int64_t end = (now_s(c) / 60 + 1) * 60;
    int64_t start = end - (int64_t)c->lag_window_s;
    return op_start(op, aws_cw_metric_data_body(&op->body, AWS_CW_LAG_METRIC, cluster_ids, NULL,
                                                n, 60, start, end, NULL));
}

/* ---- client -------------------------------------------------------------- */

struct aws_client *aws_client_new(uv_loop_t *loop, const struct aws_client_config *cfg)
{
    struct aws_client *c = calloc(1, sizeof *c);
    struct aws_cred_env *env = calloc(1, sizeof *env);
    if (!c || !env)
        goto fail;
    aws_cred_env_read(env, cfg->getenv_fn ? cfg->getenv_fn : (const char *(*)(const char *))getenv);
    c->loop = loop;
    copy_opt(c->region, sizeof c->region, cfg->region ? cfg->region : env->region);
    copy_opt(c->rds_endpoint, sizeof c->rds_endpoint, cfg->rds_endpoint);
    copy_opt(c->monitoring_endpoint, sizeof c->monitoring_endpoint, cfg->monitoring_endpoint);
    copy_opt(c->ca_file, sizeof c->ca_file, cfg->ca_file);
    c->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->max_attempts = cfg->max_attempts ? cfg->max_attempts : DEFAULT_ATTEMPTS;
    c->backoff_base_ms = cfg->backoff_base_ms ? cfg->backoff_base_ms : DEFAULT_BACKOFF_BASE_MS;
    c->backoff_cap_ms = cfg->backoff_cap_ms ? cfg->backoff_cap_ms : DEFAULT_BACKOFF_CAP_MS;
    c->lag_window_s = cfg->lag_window_s ? cfg->lag_window_s : DEFAULT_LAG_WINDOW_S;
    c->retry_tokens = RETRY_TOKENS_MAX;
    c->rng = uv_hrtime() | 1;
    ferry_list_init(&c->ops);
    c->http = aws_http_new(loop);
    if (!c->http)
        goto fail;
    c->open_handles = 1;
    struct aws_credprovider_config pc = {
        .source = cfg->cred_source, .static_creds = cfg->static_creds, .env = env,
        .region = c->region, .sts_endpoint = cfg->sts_endpoint, .imds_endpoint = cfg->imds_endpoint,
        .container_host = cfg->container_host, .ca_file = cfg->ca_file,
    };
    c->creds = aws_credprovider_new(c->http, &pc);
    OPENSSL_cleanse(env, sizeof *env);     /* it held the env's secrets */
    free(env);
    env = NULL;
    if (!c->creds) {
        aws_client_free(c);
        return NULL;
    }
    c->cred_source = aws_credprovider_source(c->creds);
    ferry_log(FERRY_LOG_INFO, "aws.client", "region=%s credentials=%s", c->region[0] ? c->region : "-",
              aws_cred_source_name(c->cred_source));
    return c;
fail:
    free(env);
    if (c && c->http)
        aws_http_close(c->http, NULL, NULL);
    free(c);
    return NULL;
}

enum aws_cred_source aws_client_cred_source(const struct aws_client *c)
{
    return c->cred_source;
}

void aws_client_free(struct aws_client *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    /* 1. Cancel HTTP: ops in flight and the credential fetch complete now. */
    aws_http_close(c->http, http_closed, c);
    /* 2. Ops still waiting for credentials are failed by the provider. */
    aws_credprovider_free(c->creds);
    c->creds = NULL;
    /* 3. Ops waiting on a retry timer. */
    while (!ferry_list_empty(&c->ops)) {
        struct op *op = ferry_container_of(c->ops.next, struct op, node);
        op->st.cls = AWS_ERR_CANCELLED;
        copy_opt(op->st.error.message, sizeof op->st.error.message, "cancelled");
        op_fail(op);
    }
}
