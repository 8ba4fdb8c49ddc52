/* The credentials chain's transport half: holds the current credentials and
 * fetches new ones (STS web identity, container endpoint, EC2 IMDSv2) over
 * aws_http, refreshing ahead of expiry. Thread: the loop's thread only.
 */
#ifndef FERRY_AWS_CREDPROVIDER_H
#define FERRY_AWS_CREDPROVIDER_H

#include <stdint.h>

#include "awserror.h"
#include "credentials.h"
#include "http.h"

struct aws_credprovider;

struct aws_credprovider_config {
    enum aws_cred_source source;        /* AWS_CRED_NONE = pick from env (aws_cred_env_pick) */
    const struct aws_credentials *static_creds; /* for AWS_CRED_STATIC; copied */
    const struct aws_cred_env *env;     /* copied: the environment snapshot */
    const char *region;                 /* STS regional endpoint region */
    const char *sts_endpoint;           /* override; else env, else https://sts.<region>.amazonaws.com */
    const char *imds_endpoint;          /* override; else env, else http://169.254.169.254 */
    const char *container_host;         /* base for RELATIVE_URI; NULL = http://169.254.170.2 */
    const char *ca_file;                /* for https endpoints; NULL = system */
    long timeout_ms;                    /* per HTTP request; 0 = 2000 */
};

/* Called once per aws_credprovider_fetch(): creds on success (borrowed for
 * the call), or NULL with err set (cls says whether a retry may help). */
typedef void (*aws_creds_cb)(const struct aws_credentials *creds, enum aws_err_class cls,
                             const struct aws_error *err, void *ud);

/* Returns NULL on allocation failure. http is borrowed and must outlive p. */
struct aws_credprovider *aws_credprovider_new(struct aws_http *http,
                                              const struct aws_credprovider_config *cfg);

/* The source in use (resolved from the environment on creation). */
enum aws_cred_source aws_credprovider_source(const struct aws_credprovider *p);

/* Credentials usable at `now` (epoch seconds), or NULL when there are none
 * yet or they are about to expire; then call aws_credprovider_fetch(). When
 * they are usable but inside the refresh window, a background refresh starts
 * and the current ones are returned. Borrowed until the next call into p. */
const struct aws_credentials *aws_credprovider_current(struct aws_credprovider *p, int64_t now);

/* Gets fresh credentials from a network source; cb runs later on the loop
 * (never from inside this call). Concurrent callers share one fetch. Returns
 * 0, or -1 when cb will not run: the source needs no fetch (env and static
 * credentials are always current) or there is none, or out of memory. */
int aws_credprovider_fetch(struct aws_credprovider *p, aws_creds_cb cb, void *ud);

/* Forgets the current credentials (after an ExpiredToken reply) so the next
 * request fetches new ones. */
void aws_credprovider_invalidate(struct aws_credprovider *p);

/* Fails every waiting fetch with AWS_ERR_CANCELLED and frees p. Call after
 * aws_http_close() has cancelled the transfers p started. */
void aws_credprovider_free(struct aws_credprovider *p);

#endif
