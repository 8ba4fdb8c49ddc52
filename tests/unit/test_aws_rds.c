/* RDS DescribeGlobalClusters / DescribeDBClusters: request bodies and reply
 * parsing (shapes of the rds/2014-10-31 model, reference/aws.md §3-4),
 * including failover in flight, garbage and every truncation. */
#include <string.h>

#include "rds.h"
#include "unit.h"

#define ARN_USE1 "arn:aws:rds:us-east-1:123456789012:cluster:ferry-primary"
#define ARN_EUW1 "arn:aws:rds:eu-west-1:123456789012:cluster:ferry-secondary"

static const char global_body[] =
    "<DescribeGlobalClustersResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\">\n"
    "  <DescribeGlobalClustersResult>\n"
    "    <GlobalClusters>\n"
    "      <GlobalClusterMember>\n"
    "        <GlobalClusterIdentifier>ferry-global</GlobalClusterIdentifier>\n"
    "        <GlobalClusterResourceId>cluster-0a1b2c3d4e5f</GlobalClusterResourceId>\n"
    "        <GlobalClusterArn>arn:aws:rds::123456789012:global-cluster:ferry-global</GlobalClusterArn>\n"
    "        <Status>available</Status>\n"
    "        <Engine>aurora-postgresql</Engine>\n"
    "        <EngineVersion>15.4</EngineVersion>\n"
    "        <DeletionProtection>false</DeletionProtection>\n"
    "        <Endpoint>ferry-global.global-abc123.global.rds.amazonaws.com</Endpoint>\n"
    "        <GlobalClusterMembers>\n"
    "          <GlobalClusterMember>\n"
    "            <DBClusterArn>" ARN_USE1 "</DBClusterArn>\n"
    "            <Readers><member>" ARN_EUW1 "</member></Readers>\n"
    "            <IsWriter>true</IsWriter>\n"
    "            <GlobalWriteForwardingStatus>disabled</GlobalWriteForwardingStatus>\n"
    "            <SynchronizationStatus>connected</SynchronizationStatus>\n"
    "          </GlobalClusterMember>\n"
    "          <GlobalClusterMember>\n"
    "            <DBClusterArn>" ARN_EUW1 "</DBClusterArn>\n"
    "            <Readers/>\n"
    "            <IsWriter>false</IsWriter>\n"
    "            <GlobalWriteForwardingStatus>enabled</GlobalWriteForwardingStatus>\n"
    "            <SynchronizationStatus>connected</SynchronizationStatus>\n"
    "          </GlobalClusterMember>\n"
    "        </GlobalClusterMembers>\n"
    "      </GlobalClusterMember>\n"
    "    </GlobalClusters>\n"
    "  </DescribeGlobalClustersResult>\n"
    "  <ResponseMetadata><RequestId>0c6a4e1b-5d0f-4a6b-8f0e-1b2c3d4e5f60</RequestId></ResponseMetadata>\n"
    "</DescribeGlobalClustersResponse>\n";

static void test_global_clusters_body(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    ASSERT_EQ_INT(aws_rds_describe_global_clusters_body(&b, "ferry-global", NULL), 0);
    ferry_wbuf_u8(&b, 0);
    /* Exactly reference V5's body. */
    ASSERT_EQ_STR((char *)b.data,
                  "Action=DescribeGlobalClusters&Version=2014-10-31&GlobalClusterIdentifier=ferry-global");
    ferry_wbuf_reset(&b);
    ASSERT_EQ_INT(aws_rds_describe_db_clusters_body(&b, ARN_EUW1, "tok/1"), 0);
    ferry_wbuf_u8(&b, 0);
    ASSERT_EQ_STR((char *)b.data,
                  "Action=DescribeDBClusters&Version=2014-10-31&DBClusterIdentifier="
                  "arn%3Aaws%3Ards%3Aeu-west-1%3A123456789012%3Acluster%3Aferry-secondary&Marker=tok%2F1");
    ferry_wbuf_free(&b);
}

static void test_parse_global_clusters(void)
{
    struct aws_global_clusters gc;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_rds_parse_global_clusters(global_body, strlen(global_body), &gc, err), 0);
    ASSERT_EQ_INT(gc.n, 1);
    const struct aws_global_cluster *g = &gc.items[0];
    ASSERT_EQ_STR(g->id, "ferry-global");
    ASSERT_EQ_STR(g->status, "available");
    ASSERT_EQ_STR(g->engine, "aurora-postgresql");
    ASSERT_EQ_STR(g->endpoint, "ferry-global.global-abc123.global.rds.amazonaws.com");
    ASSERT_EQ_INT(g->nmembers, 2);
    ASSERT_TRUE(g->members[0].is_writer);
    ASSERT_EQ_STR(g->members[0].region, "us-east-1");
    ASSERT_EQ_STR(g->members[0].cluster_id, "ferry-primary");
    ASSERT_EQ_INT(g->members[0].nreaders, 1);
    ASSERT_EQ_STR(g->members[0].readers[0], ARN_EUW1);
    ASSERT_TRUE(!g->members[1].is_writer);
    ASSERT_EQ_STR(g->members[1].region, "eu-west-1");
    ASSERT_EQ_STR(g->members[1].write_forwarding, "enabled");
    ASSERT_EQ_INT(g->members[1].nreaders, 0);
    ASSERT_TRUE(!g->failover.present);
    ASSERT_EQ_STR(gc.marker, "");
    aws_global_clusters_free(&gc);
}

static void test_parse_failover_in_flight(void)
{
    const char *b =
        "<DescribeGlobalClustersResponse><DescribeGlobalClustersResult><GlobalClusters>"
        "<GlobalClusterMember><GlobalClusterIdentifier>g</GlobalClusterIdentifier>"
        "<Status>failing-over</Status><GlobalClusterMembers>"
        "<GlobalClusterMember><DBClusterArn>" ARN_USE1 "</DBClusterArn><IsWriter>false</IsWriter>"
        "<SynchronizationStatus>pending-resync</SynchronizationStatus></GlobalClusterMember>"
        "<GlobalClusterMember><DBClusterArn>" ARN_EUW1 "</DBClusterArn><IsWriter>true</IsWriter>"
        "</GlobalClusterMember></GlobalClusterMembers>"
        "<FailoverState><Status>failing-over</Status><FromDbClusterArn>" ARN_USE1
        "</FromDbClusterArn><ToDbClusterArn>" ARN_EUW1 "</ToDbClusterArn>"
        "<IsDataLossAllowed>true</IsDataLossAllowed></FailoverState>"
        "</GlobalClusterMember></GlobalClusters><Marker>next-page</Marker>"
        "</DescribeGlobalClustersResult></DescribeGlobalClustersResponse>";
    struct aws_global_clusters gc;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_rds_parse_global_clusters(b, strlen(b), &gc, err), 0);
    const struct aws_global_cluster *g = &gc.items[0];
    ASSERT_TRUE(g->failover.present);
    ASSERT_EQ_STR(g->failover.status, "failing-over");
    ASSERT_EQ_STR(g->failover.to_arn, ARN_EUW1);
    ASSERT_TRUE(g->failover.data_loss_allowed);
    ASSERT_EQ_STR(g->members[0].sync_status, "pending-resync");
    ASSERT_TRUE(g->members[1].is_writer);
    ASSERT_EQ_STR(gc.marker, "next-page");
    aws_global_clusters_free(&gc);
}

static void test_empty_failover_state_is_absent(void)
{
    const char *b = "<DescribeGlobalClustersResponse><DescribeGlobalClustersResult><GlobalClusters>"
                    "<GlobalClusterMember><GlobalClusterIdentifier>g</GlobalClusterIdentifier>"
                    "<FailoverState/></GlobalClusterMember></GlobalClusters>"
                    "</DescribeGlobalClustersResult></DescribeGlobalClustersResponse>";
    struct aws_global_clusters gc;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_rds_parse_global_clusters(b, strlen(b), &gc, err), 0);
    ASSERT_TRUE(!gc.items[0].failover.present);
    ASSERT_EQ_INT(gc.items[0].nmembers, 0);
    aws_global_clusters_free(&gc);
}

static void test_global_clusters_rejects(void)
{
    const char *bad[] = {
        "",
        "not xml at all",
        "<html><body>Service Unavailable</body></html>",
        "<DescribeDBClustersResponse><DescribeDBClustersResult/></DescribeDBClustersResponse>",
        "<DescribeGlobalClustersResponse/>",
        /* a member without its ARN, a non-cluster ARN, a bad boolean */
        ("<DescribeGlobalClustersResponse><DescribeGlobalClustersResult><GlobalClusters>"
        "<GlobalClusterMember><GlobalClusterMembers><GlobalClusterMember><IsWriter>true</IsWriter>"
        "</GlobalClusterMember></GlobalClusterMembers></GlobalClusterMember></GlobalClusters>"
        "</DescribeGlobalClustersResult></DescribeGlobalClustersResponse>"),
        ("<DescribeGlobalClustersResponse><DescribeGlobalClustersResult><GlobalClusters>"
        "<GlobalClusterMember><GlobalClusterMembers><GlobalClusterMember><DBClusterArn>arn:aws:rds:"
        "us-east-1:1:db:x</DBClusterArn></GlobalClusterMember></GlobalClusterMembers>"
        "</GlobalClusterMember></GlobalClusters></DescribeGlobalClustersResult>"
        "</DescribeGlobalClustersResponse>"),
        ("<DescribeGlobalClustersResponse><DescribeGlobalClustersResult><GlobalClusters>"
        "<GlobalClusterMember><GlobalClusterMembers><GlobalClusterMember><DBClusterArn>" ARN_USE1
        "</DBClusterArn><IsWriter>yes</IsWriter></GlobalClusterMember></GlobalClusterMembers>"
        "</GlobalClusterMember></GlobalClusters></DescribeGlobalClustersResult>"
        "</DescribeGlobalClustersResponse>"),
        /* an external entity must not be loaded or expanded */
        ("<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><DescribeGlobalClustersResponse>&x;"
        "</DescribeGlobalClustersResponse>"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct aws_global_clusters gc;
        char err[AWS_ERRMSG_MAX] = "";
        int rc = aws_rds_parse_global_clusters(bad[i], strlen(bad[i]), &gc, err);
        aws_global_clusters_free(&gc);
        if (rc != -1)
            fprintf(stderr, "  case %zu parsed\n", i);
        ASSERT_EQ_INT(rc, -1);
        ASSERT_TRUE(err[0] != '\0');
    }
}

static void test_global_clusters_every_truncation(void)
{
    size_t len = strlen(global_body) - 1;   /* the last byte is a newline */
    for (size_t n = 0; n < len; n++) {
        struct aws_global_clusters gc;
        char err[AWS_ERRMSG_MAX];
        int rc = aws_rds_parse_global_clusters(global_body, n, &gc, err);
        aws_global_clusters_free(&gc);
        if (rc != -1)
            fprintf(stderr, "  truncated at %zu parsed\n", n);
        ASSERT_EQ_INT(rc, -1);
    }
}

static const char db_body[] =
    "<DescribeDBClustersResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\">"
    "<DescribeDBClustersResult><DBClusters><DBCluster>"
    "<DBClusterIdentifier>ferry-secondary</DBClusterIdentifier>"
    "<DBClusterArn>" ARN_EUW1 "</DBClusterArn>"
    "<DbClusterResourceId>cluster-XYZ</DbClusterResourceId>"
    "<Status>available</Status>"
    "<Endpoint>ferry-secondary.cluster-def456.eu-west-1.rds.amazonaws.com</Endpoint>"
    "<ReaderEndpoint>ferry-secondary.cluster-ro-def456.eu-west-1.rds.amazonaws.com</ReaderEndpoint>"
    "<Port>5432</Port><Engine>aurora-postgresql</Engine><EngineVersion>15.4</EngineVersion>"
    "<GlobalClusterIdentifier>ferry-global</GlobalClusterIdentifier>"
    "<IAMDatabaseAuthenticationEnabled>true</IAMDatabaseAuthenticationEnabled>"
    "<DBClusterMembers>"
    "<DBClusterMember><DBInstanceIdentifier>ferry-secondary-1</DBInstanceIdentifier>"
    "<IsClusterWriter>true</IsClusterWriter><PromotionTier>1</PromotionTier></DBClusterMember>"
    "<DBClusterMember><DBInstanceIdentifier>ferry-secondary-2</DBInstanceIdentifier>"
    "<IsClusterWriter>false</IsClusterWriter><PromotionTier>2</PromotionTier></DBClusterMember>"
    "</DBClusterMembers></DBCluster></DBClusters></DescribeDBClustersResult>"
    "<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></DescribeDBClustersResponse>";

static void test_parse_db_clusters(void)
{
    struct aws_db_clusters dc;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_rds_parse_db_clusters(db_body, strlen(db_body), &dc, err), 0);
    ASSERT_EQ_INT(dc.n, 1);
    const struct aws_db_cluster *c = &dc.items[0];
    ASSERT_EQ_STR(c->id, "ferry-secondary");
    ASSERT_EQ_STR(c->status, "available");
    ASSERT_EQ_STR(c->endpoint, "ferry-secondary.cluster-def456.eu-west-1.rds.amazonaws.com");
    ASSERT_EQ_STR(c->reader_endpoint, "ferry-secondary.cluster-ro-def456.eu-west-1.rds.amazonaws.com");
    ASSERT_EQ_INT(c->port, 5432);
    ASSERT_TRUE(c->iam_auth);
    ASSERT_EQ_STR(c->global_cluster_id, "ferry-global");
    ASSERT_EQ_INT(c->nmembers, 2);
    ASSERT_TRUE(c->members[0].is_writer);
    ASSERT_EQ_STR(c->members[1].instance_id, "ferry-secondary-2");
    ASSERT_EQ_INT(c->members[1].promotion_tier, 2);
    aws_db_clusters_free(&dc);
    for (size_t n = 0; n < strlen(db_body); n++) {
        int rc = aws_rds_parse_db_clusters(db_body, n, &dc, err);
        aws_db_clusters_free(&dc);
        ASSERT_EQ_INT(rc, -1);
    }
}

static void test_db_clusters_bad_port(void)
{
    const char *b = "<DescribeDBClustersResponse><DescribeDBClustersResult><DBClusters><DBCluster>"
                    "<Port>54x</Port></DBCluster></DBClusters></DescribeDBClustersResult>"
                    "</DescribeDBClustersResponse>";
    struct aws_db_clusters dc;
    char err[AWS_ERRMSG_MAX];
    ASSERT_EQ_INT(aws_rds_parse_db_clusters(b, strlen(b), &dc, err), -1);
    aws_db_clusters_free(&dc);
    ASSERT_TRUE(strstr(err, "Port") != NULL);
}

static void test_arn_split(void)
{
    char region[AWS_REGION_MAX], id[AWS_ID_MAX];
    ASSERT_EQ_INT(aws_rds_cluster_arn_split(ARN_EUW1, region, id), 0);
    ASSERT_EQ_STR(region, "eu-west-1");
    ASSERT_EQ_STR(id, "ferry-secondary");
    ASSERT_EQ_INT(aws_rds_cluster_arn_split("arn:aws-cn:rds:cn-north-1:1:cluster:c", region, id), 0);
    ASSERT_EQ_STR(region, "cn-north-1");
    ASSERT_EQ_INT(aws_rds_cluster_arn_split("arn:aws:rds:us-east-1:1:db:x", region, id), -1);
    ASSERT_EQ_INT(aws_rds_cluster_arn_split("arn:aws:rds::1:cluster:x", region, id), -1);
    ASSERT_EQ_INT(aws_rds_cluster_arn_split("ferry-secondary", region, id), -1);
    ASSERT_EQ_INT(aws_rds_cluster_arn_split("arn:aws:rds:us-east-1:1:cluster:", region, id), -1);
}

int main(void)
{
    RUN(test_global_clusters_body);
    RUN(test_parse_global_clusters);
    RUN(test_parse_failover_in_flight);
    RUN(test_empty_failover_state_is_absent);
    RUN(test_global_clusters_rejects);
    RUN(test_global_clusters_every_truncation);
    RUN(test_parse_db_clusters);
    RUN(test_db_clusters_bad_port);
    RUN(test_arn_split);
    UNIT_DONE();
}
