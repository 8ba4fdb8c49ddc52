/* RDS DescribeGlobalClusters / DescribeDBClusters: form bodies out, XML
 * replies in. The element name GlobalClusterMember is used both for the
 * top-level list items and for the members list, so parsing walks by depth
 * from the Result element, never by searching the document.
 */
#include "rds.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "form.h"

/* Describe* bodies share one shape: an optional identifier and a Marker. */
static int describe_body(struct ferry_wbuf *b, const char *action, const char *id_param,
                         const char *id, const char *marker)
{
    aws_form_begin(b, action, AWS_RDS_VERSION);
    if (id)
        aws_form_add(b, id_param, id);
    if (marker && *marker)
        aws_form_add(b, "Marker", marker);
    return b->failed ? -1 : 0;
}

int aws_rds_describe_global_clusters_body(struct ferry_wbuf *b, const char *global_cluster_id,
                                          const char *marker)
{
    return describe_body(b, "DescribeGlobalClusters", "GlobalClusterIdentifier",
                         global_cluster_id, marker);
}

int aws_rds_describe_db_clusters_body(struct ferry_wbuf *b, const char *db_cluster_id,
                                      const char *marker)
{
    return describe_body(b, "DescribeDBClusters", "DBClusterIdentifier", db_cluster_id, marker);
}

int aws_rds_cluster_arn_split(const char *arn, char region[AWS_REGION_MAX], char id[AWS_ID_MAX])
{
    /* arn : partition : service : region : account : resource-type : id */
    const char *f[7];
    const char *p = arn;
    for (int i = 0; i < 6; i++) {
        f[i] = p;
        p = strchr(p, ':');
        if (!p)
            return -1;
        p++;
    }
    f[6] = p;
    size_t rlen = (size_t)(f[4] - f[3] - 1);
    if (strncmp(f[0], "arn:", 4) != 0 || strncmp(f[2], "rds:", 4) != 0 ||
        strncmp(f[5], "cluster:", 8) != 0 || rlen == 0 || rlen >= AWS_REGION_MAX ||
        !*f[6] || strlen(f[6]) >= AWS_ID_MAX)
        return -1;
    memcpy(region, f[3], rlen);
    region[rlen] = '\0';
    strcpy(id, f[6]);
    return 0;
}

static int parse_global_member(xmlNodePtr m, struct aws_global_member *gm, char err[AWS_ERRMSG_MAX])
{
    AWS_XML_TEXT(m, "DBClusterArn", gm->cluster_arn);
    if (!gm->cluster_arn[0]) {
        snprintf(err, AWS_ERRMSG_MAX, "GlobalClusterMember without DBClusterArn");
        return -1;
    }
    if (aws_rds_cluster_arn_split(gm->cluster_arn, gm->region, gm->cluster_id) < 0) {
        snprintf(err, AWS_ERRMSG_MAX, "DBClusterArn is not an RDS cluster ARN");
        return -1;
    }
    if (aws_xml_bool(m, "IsWriter", &gm->is_writer, err) < 0)
        return -1;
    AWS_XML_TEXT(m, "GlobalWriteForwardingStatus", gm->write_forwarding);
    AWS_XML_TEXT(m, "SynchronizationStatus", gm->sync_status);
    xmlNodePtr readers = aws_xml_child(m, "Readers");
    size_t n = aws_xml_count(readers, "member");
    gm->readers = aws_parse_calloc(n, sizeof *gm->readers, err);
    if (!gm->readers)
        return -1;
    for (xmlNodePtr r = aws_xml_child(readers, "member"); r; r = aws_xml_next(r))
        if (aws_xml_node_text(r, gm->readers[gm->nreaders++], AWS_ARN_MAX, err) < 0)
            return -1;
    return 0;
}

static int parse_failover(xmlNodePtr f, struct aws_failover_state *fs, char err[AWS_ERRMSG_MAX])
{
    /* An empty <FailoverState/> (or one without Status) means nothing in flight. */
    AWS_XML_TEXT(f, "Status", fs->status);
    fs->present = fs->status[0] != '\0';
    AWS_XML_TEXT(f, "FromDbClusterArn", fs->from_arn);
    AWS_XML_TEXT(f, "ToDbClusterArn", fs->to_arn);
    return aws_xml_bool(f, "IsDataLossAllowed", &fs->data_loss_allowed, err);
}

static int parse_global_cluster(xmlNodePtr g, void *item, char err[AWS_ERRMSG_MAX])
{
    struct aws_global_cluster *gc = item;
    AWS_XML_TEXT(g, "GlobalClusterIdentifier", gc->id);
    AWS_XML_TEXT(g, "GlobalClusterArn", gc->arn);
    AWS_XML_TEXT(g, "Status", gc->status);
    AWS_XML_TEXT(g, "Engine", gc->engine);
    AWS_XML_TEXT(g, "EngineVersion", gc->engine_version);
    AWS_XML_TEXT(g, "Endpoint", gc->endpoint);
    xmlNodePtr members = aws_xml_child(g, "GlobalClusterMembers");
    size_t n = aws_xml_count(members, "GlobalClusterMember");
    gc->members = aws_parse_calloc(n, sizeof *gc->members, err);
    if (!gc->members)
        return -1;
    for (xmlNodePtr m = aws_xml_child(members, "GlobalClusterMember"); m; m = aws_xml_next(m))
        if (parse_global_member(m, &gc->members[gc->nmembers++], err) < 0)
            return -1;
    return parse_failover(aws_xml_child(g, "FailoverState"), &gc->failover, err);
}

int aws_rds_parse_global_clusters(const void *body, size_t len, struct aws_global_clusters *out,
                                  char err[AWS_ERRMSG_MAX])
{
    memset(out, 0, sizeof *out);
    return aws_xml_parse_list(body, len, "DescribeGlobalClusters", "Marker", out->marker,
                              sizeof out->marker, "GlobalClusters", "GlobalClusterMember",
                              sizeof *out->items, (void **)&out->items, &out->n,
                              parse_global_cluster, err);
}

void aws_global_clusters_free(struct aws_global_clusters *gc)
{
    for (size_t i = 0; i < gc->n; i++) {
        for (size_t j = 0; j < gc->items[i].nmembers; j++)
            free(gc->items[i].members[j].readers);
        free(gc->items[i].members);
    }
    free(gc->items);
    gc->items = NULL;
    gc->n = 0;
}

static int parse_db_cluster(xmlNodePtr c, void *item, char err[AWS_ERRMSG_MAX])
{
    struct aws_db_cluster *dc = item;
    AWS_XML_TEXT(c, "DBClusterIdentifier", dc->id);
    AWS_XML_TEXT(c, "DBClusterArn", dc->arn);
    AWS_XML_TEXT(c, "Status", dc->status);
    AWS_XML_TEXT(c, "Endpoint", dc->endpoint);
    AWS_XML_TEXT(c, "ReaderEndpoint", dc->reader_endpoint);
    AWS_XML_TEXT(c, "Engine", dc->engine);
    AWS_XML_TEXT(c, "EngineVersion", dc->engine_version);
    AWS_XML_TEXT(c, "GlobalClusterIdentifier", dc->global_cluster_id);
    AWS_XML_TEXT(c, "GlobalWriteForwardingStatus", dc->write_forwarding);
    AWS_XML_TEXT(c, "ReplicationSourceIdentifier", dc->replication_source);
    if (aws_xml_long(c, "Port", &dc->port, err) < 0 ||
        aws_xml_bool(c, "IAMDatabaseAuthenticationEnabled", &dc->iam_auth, err) < 0)
        return -1;
    xmlNodePtr members = aws_xml_child(c, "DBClusterMembers");
    size_t n = aws_xml_count(members, "DBClusterMember");
    dc->members = aws_parse_calloc(n, sizeof *dc->members, err);
    if (!dc->members)
        return -1;
    for (xmlNodePtr m = aws_xml_child(members, "DBClusterMember"); m; m = aws_xml_next(m)) {
        struct aws_db_cluster_member *dm = &dc->members[dc->nmembers++];
        AWS_XML_TEXT(m, "DBInstanceIdentifier", dm->instance_id);
        if (aws_xml_bool(m, "IsClusterWriter", &dm->is_writer, err) < 0 ||
            aws_xml_long(m, "PromotionTier", &dm->promotion_tier, err) < 0)
            return -1;
    }
    return 0;
}

int aws_rds_parse_db_clusters(const void *body, size_t len, struct aws_db_clusters *out,
                              char err[AWS_ERRMSG_MAX])
{
    memset(out, 0, sizeof *out);
    return aws_xml_parse_list(body, len, "DescribeDBClusters", "Marker", out->marker,
                              sizeof out->marker, "DBClusters", "DBCluster", sizeof *out->items,
                              (void **)&out->items, &out->n, parse_db_cluster, err);
}

void aws_db_clusters_free(struct aws_db_clusters *dc)
{
    for (size_t i = 0; i < dc->n; i++)
        free(dc->items[i].members);
    free(dc->items);
    dc->items = NULL;
    dc->n = 0;
}
