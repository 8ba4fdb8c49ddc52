/* AWS error replies (reference/aws.md §2, §10): the query-protocol
 * <ErrorResponse> parsed into (HTTP status, Code, Message, RequestId), and a
 * classification that says what the caller does next (retry with backoff,
 * refresh credentials, fix the clock, give up). Pure; thread: any.
 */
#ifndef FERRY_AWS_AWSERROR_H
#define FERRY_AWS_AWSERROR_H

#include <stdbool.h>
#include <stddef.h>

enum aws_err_class {
    AWS_OK = 0,
    AWS_ERR_THROTTLED,          /* rate limit: retry with backoff, count it */
    AWS_ERR_TRANSIENT,          /* 5xx / internal failure: retry with backoff */
    AWS_ERR_TRANSPORT,          /* connect, TLS or timeout (curl): retry with backoff */
    AWS_ERR_EXPIRED_CREDS,      /* temporary credentials expired: refresh, retry once */
    AWS_ERR_CLOCK_SKEW,         /* request time off: correct from Date, retry once */
    AWS_ERR_AUTH,               /* bad key or signature: permanent */
    AWS_ERR_ACCESS_DENIED,      /* IAM policy lacks the action: permanent */
    AWS_ERR_CALLER,             /* not found / invalid parameter: permanent */
    AWS_ERR_BAD_RESPONSE,       /* unparseable or unexpected body: permanent */
    AWS_ERR_NO_CREDENTIALS,     /* the credentials chain found nothing usable */
    AWS_ERR_CANCELLED,          /* the client was freed first */
};

struct aws_error {
    long http_status;           /* 0 when no HTTP reply came back */
    char type[16];              /* "Sender" | "Receiver" | "" */
    char code[96];              /* "Throttling", "AccessDenied", ... or "" */
    char message[384];          /* AWS's message, or ferry's reason */
    char request_id[96];        /* from the body or the x-amzn-RequestId header */
};

/* Parses an <ErrorResponse><Error>…</Error><RequestId/></ErrorResponse> body
 * (also the EC2-style <Response><Errors><Error>). Fills out->type, code,
 * message and request_id (request_id only if the body has one) and sets
 * out->http_status. Returns 0, or -1 if the body is not such a document (then
 * only http_status is set). */
int aws_error_parse(const void *body, size_t len, long http_status, struct aws_error *out);

/* What to do about e (http_status and code; message for the SignatureDoesNotMatch
 * "Signature expired" case). An empty code falls back on the status: 429 →
 * throttled, 5xx → transient, other non-2xx → caller/bad response. */
enum aws_err_class aws_error_classify(const struct aws_error *e);

/* Whether a class is worth another attempt (with backoff or after a fix). */
bool aws_err_class_retryable(enum aws_err_class c);

/* Short stable name for logs and JSON: "throttled", "access_denied", ... */
const char *aws_err_class_name(enum aws_err_class c);

#endif
