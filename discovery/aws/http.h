/* A non-blocking HTTP(S) client on a caller's uv loop: libcurl's multi
 * interface driven by uv_poll (CURLMOPT_SOCKETFUNCTION) and one uv_timer
 * (CURLMOPT_TIMERFUNCTION), as in libcurl's multi-uv.c example. Knows
 * nothing of AWS. Thread: every call on the loop's thread; callbacks run
 * there too.
 */
#ifndef FERRY_AWS_HTTP_H
#define FERRY_AWS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

struct aws_http;

struct aws_http_request {
    const char *method;                 /* "GET", "POST", "PUT" */
    const char *url;                    /* http:// or https:// only */
    const char *const *headers;         /* "Name: value" lines; copied */
    size_t nheaders;
    const void *body;                   /* copied; NULL/0 = none */
    size_t body_len;
    long timeout_ms;                    /* whole transfer; 0 = 10 s */
    const char *ca_file;                /* PEM bundle; NULL = system default */
    size_t max_response;                /* body cap; 0 = 4 MiB; beyond it the transfer fails */
};

struct aws_http_response {
    int curl_code;                      /* CURLE_OK (0) when an HTTP reply arrived */
    const char *curl_error;             /* "" on success; reason otherwise */
    bool timed_out;                     /* curl_code is CURLE_OPERATION_TIMEDOUT */
    bool cancelled;                     /* aws_http_close() ended it */
    long status;                        /* HTTP status; 0 without a reply */
    const uint8_t *body;                /* borrowed until the callback returns */
    size_t body_len;
    int64_t date;                       /* the reply's Date header, epoch; 0 if none */
    const char *request_id;             /* x-amzn-RequestId header, or "" */
};

/* Called exactly once per accepted request, on the loop thread. The callback
 * may send new requests (not after aws_http_close()). */
typedef void (*aws_http_cb)(const struct aws_http_response *resp, void *ud);

/* Creates a client on loop (curl_global_init is done once per process here).
 * Returns NULL on failure. */
struct aws_http *aws_http_new(uv_loop_t *loop);

/* Starts a request. Returns 0 (cb will be called), or -1 (cb will not be
 * called: bad arguments, closing, or out of memory). */
int aws_http_send(struct aws_http *h, const struct aws_http_request *req, aws_http_cb cb, void *ud);

/* Number of transfers in flight. */
size_t aws_http_pending(const struct aws_http *h);

/* Ends every transfer in flight (their callbacks run now, with cancelled
 * set), then closes all libuv handles; closed_cb(ud) runs once the last one
 * is closed and h is freed. Run the loop until then before uv_loop_close(). */
void aws_http_close(struct aws_http *h, void (*closed_cb)(void *ud), void *ud);

#endif
