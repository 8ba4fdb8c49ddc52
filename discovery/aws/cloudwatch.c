/* CloudWatch GetMetricData in the query protocol (the reference's choice:
 * one form encoder and one XML parser serve RDS, STS and CloudWatch alike).
 * Builds the per-cluster lag queries and turns the reply's parallel
 * Timestamps/Values lists into series.
 */
#include "cloudwatch.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "timefmt.h"

/* Which dimension set AuroraGlobalDBReplicationLag is published under is
 * not documented where it would matter: the Aurora metrics reference lists
 * the metric without its dimensions, the dimensions page lists the sets
 * (DBClusterIdentifier; DBClusterIdentifier, Role; SourceRegion; ...)
 * without their metrics, the Aurora MySQL labs' Global Database page
 * (awsauroralabsmy.com/global/monitor, aws-samples/amazon-aurora-labs-for-
 * mysql docs/global/monitor/index.md) picks the metric from the console
 * group "DBClusterIdentifier, SourceRegion" (an older version of the lab
 * says "SourceRegion"), while the dashboard source on that same page, and
 * many Terraform examples, name DBClusterIdentifier alone. GetMetricData's
 * MetricStat returns data only for the exact set (an empty series, as for a
 * primary, otherwise: a wrong guess would look like "no lag known" for
 * ever). So each query is a SEARCH() without a metric schema, on property
 * designators with exact (quoted) values: it matches the metric under
 * whichever set carries this cluster's DBClusterIdentifier, and
 * aws_cw_newest() merges the series if there are several. */
static bool rds_identifier(const char *id)
{
    if (!*id)
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-'))
            return false;      /* nothing to escape in a SEARCH term: see search syntax */
    return true;
}

int aws_cw_metric_data_body(struct ferry_wbuf *b, const char *metric_name,
                            const char *const *cluster_ids, const char *const *query_ids,
                            size_t n, unsigned period, int64_t start, int64_t end,
                            const char *next_token)
{
    if (n == 0 || n > AWS_CW_MAX_QUERIES)
        return -1;
    aws_form_begin(b, "GetMetricData", AWS_CW_VERSION);
    for (size_t i = 0; i < n; i++) {
        const char *q = "MetricDataQueries.member";
        size_t k = i + 1;               /* query-protocol lists count from 1 */
        char id[24], lower[256], expr[512];
        if (!rds_identifier(cluster_ids[i]) || strlen(cluster_ids[i]) >= sizeof lower)
            return -1;
        /* RDS stores identifiers lower case, and CloudWatch's dimension
         * values come from RDS; an exact search term is case-sensitive. */
        for (size_t j = 0; (lower[j] = (char)tolower((unsigned char)cluster_ids[i][j])); j++)
            ;
        snprintf(id, sizeof id, "m%zu", i);
        /* Maximum: the worst lag in the bucket is what freshness decisions
         * need. No unit: a mismatched unit silently returns nothing. */
        snprintf(expr, sizeof expr,
                 "SEARCH('Namespace=\"AWS/RDS\" MetricName=\"%s\" DBClusterIdentifier=\"%s\"', "
                 "'Maximum', %u)", metric_name, lower, period);
        aws_form_addf(b, query_ids ? query_ids[i] : id, "%s.%zu.Id", q, k);
        aws_form_addf(b, expr, "%s.%zu.Expression", q, k);
    }
    char ts[AWS_ISO8601_LEN + 1];
    aws_iso8601(start, ts);
    aws_form_add(b, "StartTime", ts);
    aws_iso8601(end, ts);
    aws_form_add(b, "EndTime", ts);
    aws_form_add(b, "ScanBy", "TimestampDescending");
    if (next_token && *next_token)
        aws_form_add(b, "NextToken", next_token);
    return b->failed ? -1 : 0;
}

static int parse_series(xmlNodePtr m, void *item, char err[AWS_ERRMSG_MAX])
{
    struct aws_metric_series *s = item;
    AWS_XML_TEXT(m, "Id", s->id);
    AWS_XML_TEXT(m, "Label", s->label);
    AWS_XML_TEXT(m, "StatusCode", s->status);
    xmlNodePtr ts = aws_xml_child(m, "Timestamps");
    xmlNodePtr vs = aws_xml_child(m, "Values");
    size_t n = aws_xml_count(ts, "member");
    if (aws_xml_count(vs, "member") != n) {
        snprintf(err, AWS_ERRMSG_MAX, "series %.64s: Timestamps and Values differ in length", s->id);
        return -1;
    }
    s->timestamps = aws_parse_calloc(n, sizeof *s->timestamps, err);
    s->values = aws_parse_calloc(n, sizeof *s->values, err);
    if (!s->timestamps || !s->values)
        return -1;
    xmlNodePtr t = aws_xml_child(ts, "member"), v = aws_xml_child(vs, "member");
    for (; t && v; t = aws_xml_next(t), v = aws_xml_next(v), s->n++) {
        char buf[64];
        if (aws_xml_node_text(t, buf, sizeof buf, err) < 0 ||
            aws_parse_iso8601(buf, &s->timestamps[s->n]) < 0) {
            snprintf(err, AWS_ERRMSG_MAX, "series %.64s: bad timestamp", s->id);
            return -1;
        }
        char *end;
        if (aws_xml_node_text(v, buf, sizeof buf, err) < 0)
            return -1;
        errno = 0;
        s->values[s->n] = strtod(buf, &end);
        if (errno || end == buf || *end) {
            snprintf(err, AWS_ERRMSG_MAX, "series %.64s: bad value", s->id);
            return -1;
        }
    }
    return 0;
}

int aws_cw_parse_metric_data(const void *body, size_t len, struct aws_metric_data *out,
                             char err[AWS_ERRMSG_MAX])
{
    memset(out, 0, sizeof *out);
    return aws_xml_parse_list(body, len, "GetMetricData", "NextToken", out->next_token,
                              sizeof out->next_token, "MetricDataResults", "member",
                              sizeof *out->series, (void **)&out->series, &out->n, parse_series, err);
}

void aws_metric_data_free(struct aws_metric_data *md)
{
    for (size_t i = 0; i < md->n; i++) {
        free(md->series[i].timestamps);
        free(md->series[i].values);
    }
    free(md->series);
    md->series = NULL;
    md->n = 0;
}

const struct aws_metric_series *aws_metric_data_find(const struct aws_metric_data *md,
                                                     const char *id)
{
    for (size_t i = 0; i < md->n; i++)
        if (strcmp(md->series[i].id, id) == 0)
            return &md->series[i];
    return NULL;
}

size_t aws_cw_newest(const struct aws_metric_data *md, const char *id, double *value, int64_t *at)
{
    size_t points = 0;
    for (size_t i = 0; i < md->n; i++) {
        const struct aws_metric_series *s = &md->series[i];
        if (strcmp(s->id, id) != 0)
            continue;
        /* by timestamp, whatever ScanBy did */
        for (size_t k = 0; k < s->n; k++, points++) {
            if (points == 0 || s->timestamps[k] > *at ||
                (s->timestamps[k] == *at && s->values[k] > *value)) {
                *at = s->timestamps[k];
                *value = s->values[k];
            }
        }
    }
    return points;
}
