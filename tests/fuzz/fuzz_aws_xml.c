/* libFuzzer driver: every AWS reply parser (RDS, CloudWatch, STS, error,
 * container/IMDS JSON) on the same bytes. Invariants: no crash, no leak,
 * no read past the input, and a failed parse always explains itself. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "awserror.h"
#include "cloudwatch.h"
#include "credentials.h"
#include "rds.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[AWS_ERRMSG_MAX];
    struct aws_global_clusters gc;
    if (aws_rds_parse_global_clusters(data, size, &gc, err) < 0 && !err[0])
        abort();
    aws_global_clusters_free(&gc);
    struct aws_db_clusters dc;
    (void)aws_rds_parse_db_clusters(data, size, &dc, err);
    aws_db_clusters_free(&dc);
    struct aws_metric_data md;
    (void)aws_cw_parse_metric_data(data, size, &md, err);
    aws_metric_data_free(&md);
    struct aws_credentials c;
    (void)aws_creds_parse_sts(data, size, &c, err);
    (void)aws_creds_parse_json(data, size, &c, err);
    char role[128];
    (void)aws_imds_parse_role(data, size, role, sizeof role, err);
    struct aws_error e = {0};
    (void)aws_error_parse(data, size, 400, &e);
    (void)aws_error_classify(&e);
    return 0;
}
