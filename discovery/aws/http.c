/* libcurl multi on libuv: curl tells us which sockets to watch and when to
 * time out; uv_poll and a uv_timer tell curl when to act. Each transfer owns
 * its easy handle, header list, body copy and response buffer; completion is
 * reported through one callback. Closing cancels transfers first, then
 * closes handles, and frees only in the last close callback (libuv rule).
 */
#include "http.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "ferry/list.h"
#include "ferry/version.h"
#include "ferry/wbuf.h"

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_RESPONSE (4u << 20)

struct aws_http {
    uv_loop_t *loop;                    /* borrowed */
    CURLM *multi;                       /* owned */
    uv_timer_t timer;                   /* curl's timeout */
    struct ferry_list xfers;            /* struct xfer.node: transfers in flight */
    struct ferry_list socks;            /* struct sock.node: sockets being watched */
    size_t nxfers;
    unsigned open_handles;              /* uv handles not yet closed */
    bool closing;
    void (*closed_cb)(void *);
    void *closed_ud;
};

/* One watched socket. */
struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct aws_http *h;
    struct ferry_list node;
};

/* One request in flight. */
struct xfer {
    struct aws_http *h;
    CURL *easy;                         /* owned */
    struct curl_slist *headers;         /* owned */
    void *body;                         /* owned copy of the request body */
    struct ferry_wbuf resp;             /* owned response body */
    int64_t date;
    char request_id[96];
    char errbuf[CURL_ERROR_SIZE];
    aws_http_cb cb;
    void *ud;
    struct ferry_list node;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

/* Process-wide and never undone: curl_global_cleanup at runtime would race
 * with other users of libcurl in the process. */
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void handle_closed(struct aws_http *h)
{
    if (--h->open_handles > 0)
        return;
    void (*cb)(void *) = h->closed_cb;
    void *ud = h->closed_ud;
    free(h);
    if (cb)
        cb(ud);
}

static void sock_closed(uv_handle_t *handle)
{
    struct sock *s = handle->data;
    struct aws_http *h = s->h;
    free(s);
    handle_closed(h);
}

static void sock_close(struct sock *s)
{
    ferry_list_remove(&s->node);
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

/* ---- completion ---------------------------------------------------------- */

static void xfer_free(struct xfer *x)
{
    curl_slist_free_all(x->headers);
    curl_easy_cleanup(x->easy);
    ferry_wbuf_free(&x->resp);
    free(x->body);
    free(x);
}

/* Reports x's outcome, removes it from the multi handle and frees it. */
static void xfer_finish(struct xfer *x, CURLcode code, bool cancelled)
{
    struct aws_http *h = x->h;
    ferry_list_remove(&x->node);
    h->nxfers--;
    curl_multi_remove_handle(h->multi, x->easy);
    struct aws_http_response r = {
        .curl_code = (int)code,
        .curl_error = code == CURLE_OK ? "" : x->errbuf[0] ? x->errbuf : curl_easy_strerror(code),
        .timed_out = code == CURLE_OPERATION_TIMEDOUT,
        .cancelled = cancelled,
        .body = x->resp.data,
        .body_len = x->resp.failed ? 0 : x->resp.len,
        .date = x->date,
        .request_id = x->request_id,
    };
    if (cancelled)
        r.curl_error = "cancelled";
    else if (code == CURLE_OK)
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r.status);
    x->cb(&r, x->ud);
    xfer_free(x);
}

static void drain_done(struct aws_http *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct xfer *x = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        xfer_finish(x, m->data.result, false);
    }
}

/* ---- libuv → curl -------------------------------------------------------- */

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct sock *s = p->data;
    struct aws_http *h = s->h;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(h->multi, s->fd, flags, &running);   /* may free s */
    drain_done(h);
}

static void on_timer(uv_timer_t *t)
{
    struct aws_http *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain_done(h);
}

/* ---- curl → libuv -------------------------------------------------------- */

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct aws_http *h = userp;
    struct sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(h->multi, fd, NULL);
            sock_close(s);              /* before curl closes fd */
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        if (uv_poll_init_socket(h->loop, &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->h = h;
        s->poll.data = s;
        h->open_handles++;
        ferry_list_insert_tail(&h->socks, &s->node);
        curl_multi_assign(h->multi, fd, s);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
        events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, on_poll) < 0 ? -1 : 0;
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct aws_http *h = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&h->timer);
    else    /* 0 fires on the next loop turn: curl must not be re-entered from here */
        uv_timer_start(&h->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct xfer *x = userp;
    size_t n = size * nmemb;
    ferry_wbuf_put(&x->resp, ptr, n);
    return x->resp.failed ? 0 : n;      /* 0 aborts: the reply is over the cap */
}

/* Keeps the headers AWS error handling needs: Date (clock skew) and the
 * request id (for log lines). */
static size_t on_header(char *line, size_t size, size_t nitems, void *userp)
{
    struct xfer *x = userp;
    size_t n = size * nitems;
    char buf[256];
    if (n >= sizeof buf)
        return n;
    memcpy(buf, line, n);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    if (strncasecmp(buf, "Date:", 5) == 0) {
        time_t t = curl_getdate(buf + 5, NULL);
        x->date = t > 0 ? (int64_t)t : 0;
    } else if (strncasecmp(buf, "x-amzn-RequestId:", 17) == 0) {
        const char *v = buf + 17;
        while (*v == ' ')
            v++;
        snprintf(x->request_id, sizeof x->request_id, "%.95s", v);   /* ids are ~40 bytes */
    }
    return n;
}

/* ---- public -------------------------------------------------------------- */

struct aws_http *aws_http_new(uv_loop_t *loop)
{
    pthread_once(&curl_once, curl_init_once);
    struct aws_http *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->loop = loop;
    h->multi = curl_multi_init();
    if (!h->multi || uv_timer_init(loop, &h->timer) < 0) {
        if (h->multi)
            curl_multi_cleanup(h->multi);
        free(h);
        return NULL;
    }
    h->timer.data = h;
    h->open_handles = 1;
    ferry_list_init(&h->xfers);
    ferry_list_init(&h->socks);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    return h;
}

static int xfer_setup(struct xfer *x, const struct aws_http_request *req)
{
    CURL *e = x->easy;
    for (size_t i = 0; i < req->nheaders; i++) {
        struct curl_slist *l = curl_slist_append(x->headers, req->headers[i]);
        if (!l)
            return -1;
        x->headers = l;
    }
    /* curl would add Expect: 100-continue to larger POSTs (an unsigned extra
     * round trip); AWS does not need it. */
    struct curl_slist *l = curl_slist_append(x->headers, "Expect:");
    if (!l)
        return -1;
    x->headers = l;
    long timeout = req->timeout_ms > 0 ? req->timeout_ms : DEFAULT_TIMEOUT_MS;
    int rc = 0;
    rc |= curl_easy_setopt(e, CURLOPT_URL, req->url);
    rc |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    rc |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    rc |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
    rc |= curl_easy_setopt(e, CURLOPT_USERAGENT, "ferry/" FERRY_VERSION);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    rc |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    rc |= curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    rc |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    rc |= curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    if (req->ca_file)
        rc |= curl_easy_setopt(e, CURLOPT_CAINFO, req->ca_file);
    if (strcmp(req->method, "GET") != 0) {
        if (strcmp(req->method, "POST") != 0)
            rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
        /* POSTFIELDS even for an empty PUT body: it makes curl send
         * Content-Length: 0 rather than wait for an upload callback. */
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)req->body_len);
        rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body ? (char *)x->body : "");
    }
    return rc == 0 ? 0 : -1;
}

int aws_http_send(struct aws_http *h, const struct aws_http_request *req, aws_http_cb cb, void *ud)
{
    if (h->closing || !req->url || !req->method || !cb ||
        (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0))
        return -1;
    struct xfer *x = calloc(1, sizeof *x);
    if (!x)
        return -1;
    x->h = h;
    x->cb = cb;
    x->ud = ud;
    ferry_wbuf_init(&x->resp, req->max_response ? req->max_response : DEFAULT_MAX_RESPONSE);
    ferry_list_init(&x->node);
    if (req->body_len) {
        x->body = malloc(req->body_len);
        if (!x->body)
            goto fail;
        memcpy(x->body, req->body, req->body_len);
    }
    x->easy = curl_easy_init();
    if (!x->easy || xfer_setup(x, req) < 0)
        goto fail;
    if (curl_multi_add_handle(h->multi, x->easy) != CURLM_OK)
        goto fail;
    ferry_list_insert_tail(&h->xfers, &x->node);
    h->nxfers++;
    return 0;
fail:
    xfer_free(x);
    return -1;
}

size_t aws_http_pending(const struct aws_http *h)
{
    return h->nxfers;
}

static void timer_closed(uv_handle_t *t)
{
    handle_closed(t->data);
}

void aws_http_close(struct aws_http *h, void (*closed_cb)(void *ud), void *ud)
{
    if (h->closing)
        return;
    h->closing = true;
    h->closed_cb = closed_cb;
    h->closed_ud = ud;
    while (!ferry_list_empty(&h->xfers))
        xfer_finish(ferry_container_of(h->xfers.next, struct xfer, node), CURLE_ABORTED_BY_CALLBACK,
                    true);
    /* Cleanup may still report sockets (cached connections) through the
     * socket callback; whatever it leaves watched is closed below. */
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    while (!ferry_list_empty(&h->socks))
        sock_close(ferry_container_of(h->socks.next, struct sock, node));
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, timer_closed);
}
