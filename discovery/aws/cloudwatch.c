/* CloudWatch GetMetricData in the query protocol (the reference's choice:
 * one form encoder and one XML parser serve RDS, STS and CloudWatch alike).
 * Builds the per-cluster lag queries and turns the reply's parallel
 * Timestamps/Values lists into series.
 */
#include "cloudwatch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"
#include "timefmt.h"

int aws_cw_metric_data_body(struct ferry_wbuf *b, const char *metric_name,
                            const char *const *cluster_ids, const char *const *query_ids,
                            size_t n, unsigned period, int64_t start, int64_t end,
                            const char *next_token)
{
    if (n == 0 || n > AWS_CW_MAX_QUERIES)
        return -1;
    char num[24];
    aws_form_begin(b, "GetMetricData", AWS_CW_VERSION);
    for (size_t i = 0; i < n; i++) {
        const char *q = "MetricDataQueries.member";
        size_t k = i + 1;               /* query-protocol lists count from 1 */
        char id[24];
        snprintf(id, sizeof id, "m%zu", i);
        aws_form_addf(b, query_ids ? query_ids[i] : id, "%s.%zu.Id", q, k);
        aws_form_addf(b, "AWS/RDS", "%s.%zu.MetricStat.Metric.Namespace", q, k);
        aws_form_addf(b, metric_name, "%s.%zu.MetricStat.Metric.MetricName", q, k);
        aws_form_addf(b, "DBClusterIdentifier", "%s.%zu.MetricStat.Metric.Dimensions.member.1.Name",
                      q, k);
        aws_form_addf(b, cluster_ids[i], "%s.%zu.MetricStat.Metric.Dimensions.member.1.Value", q, k);
        snprintf(num, sizeof num, "%u", period);
        aws_form_addf(b, num, "%s.%zu.MetricStat.Period", q, k);
        /* Maximum: the worst lag in the bucket is what freshness decisions need.
         * No Unit: a mismatched unit silently returns nothing. */
        aws_form_addf(b, "Maximum", "%s.%zu.MetricStat.Stat", q, k);
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
