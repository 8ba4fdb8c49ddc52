/* Parsing and classifying AWS error replies. The classification table is
 * reference/aws.md §10; everything that decides "retry or not" lives here so
 * that the client's retry loop is a switch on one enum.
 */
#include "awserror.h"

#include <string.h>
#include <strings.h>

#include "xml.h"

int aws_error_parse(const void *body, size_t len, long http_status, struct aws_error *out)
{
    char err[AWS_ERRMSG_MAX];
    out->http_status = http_status;
    xmlDocPtr doc = aws_xml_parse(body, len, err);
    if (!doc)
        return -1;
    xmlNodePtr root = xmlDocGetRootElement(doc);
    xmlNodePtr e = aws_xml_child(root, "Error");         /* <ErrorResponse><Error> */
    if (!e)
        e = aws_xml_path(root, "Errors/Error");          /* EC2 style <Response> */
    if (!e && root && strcmp((const char *)root->name, "Error") == 0)
        e = root;                                        /* bare <Error> */
    int rc = -1;
    if (e) {
        /* Overlong fields are cut, not refused: the code still classifies. */
        if (aws_xml_text_cut(e, "Code", out->code, sizeof out->code))
            rc = 0;
        aws_xml_text_cut(e, "Type", out->type, sizeof out->type);
        aws_xml_text_cut(e, "Message", out->message, sizeof out->message);
        if (!aws_xml_text_cut(root, "RequestId", out->request_id, sizeof out->request_id))
            aws_xml_text_cut(root, "RequestID", out->request_id, sizeof out->request_id);
    }
    xmlFreeDoc(doc);
    return rc;
}

struct code_class {
    const char *code;
    enum aws_err_class cls;
};

static const struct code_class codes[] = {
    {"Throttling", AWS_ERR_THROTTLED},
    {"ThrottlingException", AWS_ERR_THROTTLED},
    {"ThrottledException", AWS_ERR_THROTTLED},
    {"RequestThrottled", AWS_ERR_THROTTLED},
    {"RequestThrottledException", AWS_ERR_THROTTLED},
    {"RequestLimitExceeded", AWS_ERR_THROTTLED},
    {"TooManyRequestsException", AWS_ERR_THROTTLED},
    {"SlowDown", AWS_ERR_THROTTLED},
    {"InternalFailure", AWS_ERR_TRANSIENT},
    {"InternalError", AWS_ERR_TRANSIENT},
    {"InternalServiceError", AWS_ERR_TRANSIENT},
    {"ServiceUnavailable", AWS_ERR_TRANSIENT},
    {"RequestTimeout", AWS_ERR_TRANSIENT},
    {"RequestTimeoutException", AWS_ERR_TRANSIENT},
    {"PriorRequestNotComplete", AWS_ERR_TRANSIENT},
    {"IDPCommunicationError", AWS_ERR_TRANSIENT},
    {"ExpiredToken", AWS_ERR_EXPIRED_CREDS},
    {"ExpiredTokenException", AWS_ERR_EXPIRED_CREDS},
    {"RequestExpired", AWS_ERR_CLOCK_SKEW},
    {"RequestTimeTooSkewed", AWS_ERR_CLOCK_SKEW},
    {"InvalidSignatureException", AWS_ERR_CLOCK_SKEW},
    {"InvalidClientTokenId", AWS_ERR_AUTH},
    {"UnrecognizedClientException", AWS_ERR_AUTH},
    {"SignatureDoesNotMatch", AWS_ERR_AUTH},
    {"IncompleteSignature", AWS_ERR_AUTH},
    {"MissingAuthenticationToken", AWS_ERR_AUTH},
    {"AuthFailure", AWS_ERR_AUTH},
    {"InvalidIdentityToken", AWS_ERR_AUTH},
    {"IDPRejectedClaim", AWS_ERR_AUTH},
    {"AccessDenied", AWS_ERR_ACCESS_DENIED},
    {"AccessDeniedException", AWS_ERR_ACCESS_DENIED},
    {"UnauthorizedOperation", AWS_ERR_ACCESS_DENIED},
};

enum aws_err_class aws_error_classify(const struct aws_error *e)
{
    if (e->code[0]) {
        for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
            if (strcmp(e->code, codes[i].code) != 0)
                continue;
            /* AWS answers a stale timestamp with SignatureDoesNotMatch
             * "Signature expired: ..." — a clock problem, not a bad key. */
            if (codes[i].cls == AWS_ERR_AUTH && strcmp(e->code, "SignatureDoesNotMatch") == 0 &&
                strcasestr(e->message, "expired"))
                return AWS_ERR_CLOCK_SKEW;
            return codes[i].cls;
        }
    }
    if (e->http_status == 429)
        return AWS_ERR_THROTTLED;
    if (e->http_status >= 500)
        return AWS_ERR_TRANSIENT;
    if (e->http_status >= 200 && e->http_status < 300)
        return AWS_OK;
    return e->code[0] ? AWS_ERR_CALLER : AWS_ERR_BAD_RESPONSE;
}

bool aws_err_class_retryable(enum aws_err_class c)
{
    switch (c) {
    case AWS_ERR_THROTTLED:
    case AWS_ERR_TRANSIENT:
    case AWS_ERR_TRANSPORT:
    case AWS_ERR_EXPIRED_CREDS:
    case AWS_ERR_CLOCK_SKEW:
        return true;
    default:
        return false;
    }
}

const char *aws_err_class_name(enum aws_err_class c)
{
    switch (c) {
    case AWS_OK: return "ok";
    case AWS_ERR_THROTTLED: return "throttled";
    case AWS_ERR_TRANSIENT: return "transient";
    case AWS_ERR_TRANSPORT: return "transport";
    case AWS_ERR_EXPIRED_CREDS: return "expired_credentials";
    case AWS_ERR_CLOCK_SKEW: return "clock_skew";
    case AWS_ERR_AUTH: return "auth";
    case AWS_ERR_ACCESS_DENIED: return "access_denied";
    case AWS_ERR_CALLER: return "caller";
    case AWS_ERR_BAD_RESPONSE: return "bad_response";
    case AWS_ERR_NO_CREDENTIALS: return "no_credentials";
    case AWS_ERR_CANCELLED: return "cancelled";
    }
    return "unknown";
}
