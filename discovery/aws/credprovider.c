/* Fetching credentials for the chain's network sources, asynchronously on
 * the discovery loop: STS AssumeRoleWithWebIdentity (unsigned), the container
 * endpoint (ECS / EKS Pod Identity), and EC2 IMDSv2 (token PUT, role GET,
 * credentials GET). One fetch at a time; callers wait on it. Token files are
 * re-read on every fetch (kubelet rotates them): a read(2) of a small local
 * file, which is the one blocking call here and is taken deliberately.
 */
#include "credprovider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry/list.h"
#include "ferry/log.h"
#include "ferry/wbuf.h"

#define DEFAULT_TIMEOUT_MS 2000
#define REFRESH_AHEAD_S 300     /* reference §11: refresh ~5 min before Expiration */
#define EXPIRY_MARGIN_S 10      /* closer than this to expiry = unusable */
#define IMDS_TOKEN_TTL_S 21600
#define FORM_CT "Content-Type: application/x-www-form-urlencoded; charset=utf-8"

enum fetch_step { STEP_IDLE, STEP_STS, STEP_CONTAINER, STEP_IMDS_TOKEN, STEP_IMDS_ROLE, STEP_IMDS_CREDS };

struct waiter {
    aws_creds_cb cb;
    void *ud;
    struct ferry_list node;
};

struct aws_credprovider {
    struct aws_http *http;              /* borrowed */
    enum aws_cred_source source;
    struct aws_cred_env env;            /* secrets inside: wiped on free */
    struct aws_credentials creds;       /* current; access_key_id "" = none */
    int64_t refresh_at;                 /* epoch: start a background refresh from here */
    char region[32];
    char sts_url[AWS_URL_MAX];
    char imds_base[AWS_URL_MAX];
    char container_url[AWS_URL_MAX];
    char ca_file[AWS_PATH_MAX];
    long timeout_ms;
    enum fetch_step step;               /* STEP_IDLE = no fetch in flight */
    char imds_token[256];               /* secret */
    int64_t imds_token_expiry;
    char imds_role[128];
    bool imds_retried;                  /* one retry after a 401 (stale token) */
    struct ferry_list waiters;          /* struct waiter.node */
};

static void trim_slash(char *url)
{
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        url[--n] = '\0';
}

struct aws_credprovider *aws_credprovider_new(struct aws_http *http,
                                              const struct aws_credprovider_config *cfg)
{
    struct aws_credprovider *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->http = http;
    ferry_list_init(&p->waiters);
    if (cfg->env)
        p->env = *cfg->env;
    p->source = cfg->source != AWS_CRED_NONE ? cfg->source : aws_cred_env_pick(&p->env);
    snprintf(p->region, sizeof p->region, "%s", cfg->region ? cfg->region : p->env.region);
    p->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    snprintf(p->ca_file, sizeof p->ca_file, "%s", cfg->ca_file ? cfg->ca_file : "");

    if (cfg->sts_endpoint)
        snprintf(p->sts_url, sizeof p->sts_url, "%s", cfg->sts_endpoint);
    else if (p->env.sts_endpoint[0])
        snprintf(p->sts_url, sizeof p->sts_url, "%s", p->env.sts_endpoint);
    else
        snprintf(p->sts_url, sizeof p->sts_url, "https://sts.%s.amazonaws.com/",
                 p->region[0] ? p->region : "us-east-1");

    snprintf(p->imds_base, sizeof p->imds_base, "%s",
             cfg->imds_endpoint ? cfg->imds_endpoint
             : p->env.imds_endpoint[0] ? p->env.imds_endpoint : "http://169.254.169.254");
    trim_slash(p->imds_base);

    if (p->env.container_full_uri[0])
        snprintf(p->container_url, sizeof p->container_url, "%s", p->env.container_full_uri);
    else if (p->env.container_relative_uri[0] &&
             snprintf(p->container_url, sizeof p->container_url, "%s%s",
                      cfg->container_host ? cfg->container_host : "http://169.254.170.2",
                      p->env.container_relative_uri) >= (int)sizeof p->container_url)
        p->container_url[0] = '\0';    /* too long: fails as "not allowed" */

    if (p->source == AWS_CRED_STATIC && cfg->static_creds) {
        p->creds = *cfg->static_creds;
        p->creds.source = AWS_CRED_STATIC;
    } else if (p->source == AWS_CRED_ENV) {
        (void)aws_creds_from_env(&p->env, &p->creds);
    }
    return p;
}

enum aws_cred_source aws_credprovider_source(const struct aws_credprovider *p)
{
    return p->source;
}

static bool network_source(enum aws_cred_source s)
{
    return s == AWS_CRED_WEB_IDENTITY || s == AWS_CRED_CONTAINER || s == AWS_CRED_IMDS;
}

static int start_fetch(struct aws_credprovider *p);

const struct aws_credentials *aws_credprovider_current(struct aws_credprovider *p, int64_t now)
{
    if (!p->creds.access_key_id[0])
        return NULL;
    if (p->creds.expiration == 0)
        return &p->creds;
    if (now >= p->creds.expiration - EXPIRY_MARGIN_S)
        return NULL;
    if (now >= p->refresh_at && p->step == STEP_IDLE && network_source(p->source))
        (void)start_fetch(p);           /* background: a failure keeps the current ones */
    return &p->creds;
}

void aws_credprovider_invalidate(struct aws_credprovider *p)
{
    if (network_source(p->source))
        aws_credentials_clear(&p->creds);
}

/* ---- completing a fetch -------------------------------------------------- */

static void notify(struct aws_credprovider *p, const struct aws_credentials *c,
                   enum aws_err_class cls, const struct aws_error *err)
{
    /* Detach the list first: a callback may call fetch() again. */
    struct ferry_list ready;
    ferry_list_init(&ready);
    if (!ferry_list_empty(&p->waiters)) {
        ready.next = p->waiters.next;
        ready.prev = p->waiters.prev;
        ready.next->prev = ready.prev->next = &ready;
        ferry_list_init(&p->waiters);
    }
    while (!ferry_list_empty(&ready)) {
        struct waiter *w = ferry_container_of(ready.next, struct waiter, node);
        ferry_list_remove(&w->node);
        w->cb(c, cls, err, w->ud);
        free(w);
    }
}

static void fetch_failed(struct aws_credprovider *p, enum aws_err_class cls, struct aws_error *err)
{
    p->step = STEP_IDLE;
    char code[FERRY_LOG_QUOTED_MAX(sizeof err->code)];     /* from the response */
    if (cls != AWS_ERR_CANCELLED)
        ferry_log(FERRY_LOG_WARN, "aws.credentials_failed", "source=%s class=%s http_status=%ld code=%s",
                  aws_cred_source_name(p->source), aws_err_class_name(cls), err->http_status,
                  ferry_log_quote(err->code[0] ? err->code : "-", code, sizeof code));
    notify(p, NULL, cls, err);
}

static void fetch_done(struct aws_credprovider *p, struct aws_credentials *c)
{
    int64_t now = (int64_t)time(NULL);
    c->source = p->source;
    p->creds = *c;
    aws_credentials_clear(c);
    p->step = STEP_IDLE;
    if (p->creds.expiration) {
        int64_t life = p->creds.expiration - now;
        int64_t ahead = life / 2 < REFRESH_AHEAD_S ? life / 2 : REFRESH_AHEAD_S;
        /* Jitter so that many ferry instances do not refresh in step. */
        ahead += ahead > 0 ? rand() % (ahead / 5 + 1) : 0;
        p->refresh_at = p->creds.expiration - ahead;
    }
    char akid[16];
    aws_akid_prefix(p->creds.access_key_id, akid);
    ferry_log(FERRY_LOG_INFO, "aws.credentials", "source=%s access_key_id=%s expires_in=%lld",
              aws_cred_source_name(p->source), akid,
              p->creds.expiration ? (long long)(p->creds.expiration - now) : -1LL);
    notify(p, &p->creds, AWS_OK, NULL);
}

/* Turns a non-success HTTP outcome into (class, error). Returns true when
 * resp is a 2xx reply. */
static bool http_ok(const struct aws_http_response *r, enum aws_err_class *cls, struct aws_error *err)
{
    memset(err, 0, sizeof *err);
    if (r->cancelled) {
        *cls = AWS_ERR_CANCELLED;
        snprintf(err->message, sizeof err->message, "cancelled");
        return false;
    }
    if (r->curl_code) {
        *cls = AWS_ERR_TRANSPORT;
        snprintf(err->message, sizeof err->message, "%s", r->curl_error);
        return false;
    }
    if (r->status >= 200 && r->status < 300)
        return true;
    (void)aws_error_parse(r->body, r->body_len, r->status, err);
    if (!err->request_id[0])
        snprintf(err->request_id, sizeof err->request_id, "%s", r->request_id);
    *cls = aws_error_classify(err);
    return false;
}

static void parse_failed(struct aws_credprovider *p, const char *why)
{
    struct aws_error err = {0};
    snprintf(err.message, sizeof err.message, "%s", why);
    fetch_failed(p, AWS_ERR_BAD_RESPONSE, &err);
}

/* ---- the sources --------------------------------------------------------- */

static int cred_send(struct aws_credprovider *p, const char *method, const char *url,
                const char *const *headers, size_t nheaders, const void *body, size_t len,
                aws_http_cb cb)
{
    struct aws_http_request req = {
        .method = method, .url = url, .headers = headers, .nheaders = nheaders, .body = body,
        .body_len = len, .timeout_ms = p->timeout_ms, .ca_file = p->ca_file[0] ? p->ca_file : NULL,
        .max_response = 64 * 1024,
    };
    return aws_http_send(p->http, &req, cb, p);
}

/* Ends a fetch with reply r, read by parse when it is a 2xx. */
static void finish_fetch(struct aws_credprovider *p, const struct aws_http_response *r,
                         int (*parse)(const void *, size_t, struct aws_credentials *,
                                      char[AWS_ERRMSG_MAX]))
{
    enum aws_err_class cls;
    struct aws_error err;
    if (!http_ok(r, &cls, &err)) {
        fetch_failed(p, cls, &err);
        return;
    }
    struct aws_credentials c;
    char why[AWS_ERRMSG_MAX];
    if (parse(r->body, r->body_len, &c, why) < 0)
        parse_failed(p, why);
    else
        fetch_done(p, &c);
}

static void on_sts(const struct aws_http_response *r, void *ud)
{
    finish_fetch(ud, r, aws_creds_parse_sts);
}

static int fetch_web_identity(struct aws_credprovider *p)
{
    char *token = malloc(AWS_TOKEN_MAX * 4);
    if (!token)
        return -1;
    int rc = aws_read_token_file(p->env.web_identity_token_file, token, AWS_TOKEN_MAX * 4);
    if (rc < 0) {
        free(token);
        ferry_log(FERRY_LOG_WARN, "aws.credentials_failed",
                  "source=web_identity reason=\"cannot read AWS_WEB_IDENTITY_TOKEN_FILE: %s\"",
                  strerror(-rc));
        return -1;
    }
    char session[80];
    if (p->env.role_session_name[0])
        snprintf(session, sizeof session, "%s", p->env.role_session_name);
    else
        snprintf(session, sizeof session, "ferry-%lld", (long long)time(NULL));
    struct ferry_wbuf body;
    ferry_wbuf_init(&body, 0);
    rc = aws_sts_web_identity_body(&body, p->env.role_arn, session, token, strlen(token));
    free(token);
    static const char *const headers[] = {FORM_CT, "Accept: text/xml"};
    if (rc == 0)
        rc = cred_send(p, "POST", p->sts_url, headers, 2, body.data, body.len, on_sts);
    ferry_wbuf_free(&body);
    if (rc == 0)
        p->step = STEP_STS;
    return rc;
}

static void on_json_creds(const struct aws_http_response *r, void *ud)
{
    finish_fetch(ud, r, aws_creds_parse_json);
}

static int fetch_container(struct aws_credprovider *p)
{
    if (!aws_container_uri_allowed(p->container_url)) {
        ferry_log(FERRY_LOG_WARN, "aws.credentials_failed",
                  "source=container reason=\"plain-http container URI must be loopback or the ECS/EKS agent address\"");
        return -1;
    }
    char auth[AWS_TOKEN_MAX + 32] = "";
    const char *headers[1];
    size_t nh = 0;
    char token[AWS_TOKEN_MAX];
    token[0] = '\0';
    if (p->env.container_auth_token_file[0]) {     /* the file wins over the literal */
        int rc = aws_read_token_file(p->env.container_auth_token_file, token, sizeof token);
        if (rc < 0) {
            ferry_log(FERRY_LOG_WARN, "aws.credentials_failed",
                      "source=container reason=\"cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: %s\"",
                      strerror(-rc));
            return -1;
        }
    } else {
        snprintf(token, sizeof token, "%s", p->env.container_auth_token);
    }
    if (token[0]) {
        snprintf(auth, sizeof auth, "Authorization: %s", token);
        headers[nh++] = auth;
    }
    int rc = cred_send(p, "GET", p->container_url, headers, nh, NULL, 0, on_json_creds);
    memset(token, 0, sizeof token);
    memset(auth, 0, sizeof auth);
    if (rc == 0)
        p->step = STEP_CONTAINER;
    return rc;
}

static int imds_get_role(struct aws_credprovider *p);
static int imds_get_token(struct aws_credprovider *p);

/* A 401 from IMDS means our session token went stale: get a new one, once. */
static bool imds_stale_token(struct aws_credprovider *p, const struct aws_http_response *r)
{
    if (r->curl_code || r->status != 401 || p->imds_retried)
        return false;
    p->imds_retried = true;
    p->imds_token[0] = '\0';
    return imds_get_token(p) == 0;
}

static void on_imds_creds(const struct aws_http_response *r, void *ud)
{
    struct aws_credprovider *p = ud;
    if (!imds_stale_token(p, r))
        on_json_creds(r, ud);
}

static void on_imds_role(const struct aws_http_response *r, void *ud)
{
    struct aws_credprovider *p = ud;
    if (imds_stale_token(p, r))
        return;
    enum aws_err_class cls;
    struct aws_error err;
    if (!http_ok(r, &cls, &err)) {
        fetch_failed(p, cls, &err);
        return;
    }
    char why[AWS_ERRMSG_MAX];
    if (aws_imds_parse_role(r->body, r->body_len, p->imds_role, sizeof p->imds_role, why) < 0) {
        parse_failed(p, why);
        return;
    }
    char url[AWS_URL_MAX + 192], hdr[300];
    snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/%s", p->imds_base,
             p->imds_role);
    snprintf(hdr, sizeof hdr, "X-aws-ec2-metadata-token: %s", p->imds_token);
    const char *headers[] = {hdr};
    p->step = STEP_IMDS_CREDS;
    if (cred_send(p, "GET", url, headers, 1, NULL, 0, on_imds_creds) < 0)
        parse_failed(p, "cannot start the IMDS credentials request");
}

static void on_imds_token(const struct aws_http_response *r, void *ud)
{
    struct aws_credprovider *p = ud;
    enum aws_err_class cls;
    struct aws_error err;
    if (!http_ok(r, &cls, &err)) {
        /* 403/404/405 would mean IMDSv1 only: ferry does not fall back. */
        fetch_failed(p, cls, &err);
        return;
    }
    size_t n = r->body_len;
    while (n > 0 && (r->body[n - 1] == '\n' || r->body[n - 1] == '\r' || r->body[n - 1] == ' '))
        n--;
    if (n == 0 || n >= sizeof p->imds_token || memchr(r->body, '\n', n) || memchr(r->body, '\0', n)) {
        parse_failed(p, "IMDS session token empty or invalid");
        return;
    }
    memcpy(p->imds_token, r->body, n);
    p->imds_token[n] = '\0';
    p->imds_token_expiry = (int64_t)time(NULL) + IMDS_TOKEN_TTL_S;
    if (imds_get_role(p) < 0)
        parse_failed(p, "cannot start the IMDS role request");
}

static int imds_get_token(struct aws_credprovider *p)
{
    char url[AWS_URL_MAX + 32];
    snprintf(url, sizeof url, "%s/latest/api/token", p->imds_base);
    static const char *const headers[] = {"X-aws-ec2-metadata-token-ttl-seconds: 21600"};
    p->step = STEP_IMDS_TOKEN;
    return cred_send(p, "PUT", url, headers, 1, NULL, 0, on_imds_token);
}

static int imds_get_role(struct aws_credprovider *p)
{
    char url[AWS_URL_MAX + 64], hdr[300];
    snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/", p->imds_base);
    snprintf(hdr, sizeof hdr, "X-aws-ec2-metadata-token: %s", p->imds_token);
    const char *headers[] = {hdr};
    p->step = STEP_IMDS_ROLE;
    return cred_send(p, "GET", url, headers, 1, NULL, 0, on_imds_role);
}

static int fetch_imds(struct aws_credprovider *p)
{
    p->imds_retried = false;
    /* Reuse the session token until an hour before its TTL runs out. */
    int rc = p->imds_token[0] && time(NULL) < p->imds_token_expiry - 3600 ? imds_get_role(p)
                                                                          : imds_get_token(p);
    if (rc < 0)
        p->step = STEP_IDLE;
    return rc;
}

static int start_fetch(struct aws_credprovider *p)
{
    switch (p->source) {
    case AWS_CRED_WEB_IDENTITY: return fetch_web_identity(p);
    case AWS_CRED_CONTAINER: return fetch_container(p);
    case AWS_CRED_IMDS: return fetch_imds(p);
    default: return -1;
    }
}

int aws_credprovider_fetch(struct aws_credprovider *p, aws_creds_cb cb, void *ud)
{
    if (!network_source(p->source))
        return -1;
    if (p->step == STEP_IDLE && start_fetch(p) < 0)
        return -1;
    struct waiter *w = calloc(1, sizeof *w);
    if (!w)
        return -1;      /* the fetch goes on; its result is cached for the next caller */
    w->cb = cb;
    w->ud = ud;
    ferry_list_insert_tail(&p->waiters, &w->node);
    return 0;
}

void aws_credprovider_free(struct aws_credprovider *p)
{
    if (!p)
        return;
    struct aws_error err = {0};
    snprintf(err.message, sizeof err.message, "cancelled");
    notify(p, NULL, AWS_ERR_CANCELLED, &err);
    aws_credentials_clear(&p->creds);
    memset(p->imds_token, 0, sizeof p->imds_token);
    memset(&p->env, 0, sizeof p->env);
    free(p);
}
