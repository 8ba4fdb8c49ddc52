/* aws_probe: a test driver for ferry_aws. Runs one AWS call (optionally
 * several times in a row) through the async client on a uv loop and prints
 * one JSON line per call on stdout; logs go to stderr. Used by
 * tests/integration/test_aws_client.py against tests/fakes/fake_aws.py.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "client.h"
#include "ferry/log.h"

struct run {
    struct aws_client *client;
    const char *cmd;                    /* "global", "clusters", "lag" */
    const char *region;
    char **args;                        /* borrowed from argv */
    int nargs;
    int remaining;                      /* calls still to make */
    int failures;
    uv_timer_t cancel;                  /* --cancel-after-ms: frees the client mid-call */
};

static const char *usage =
    "usage: aws_probe [options] global [GLOBAL_CLUSTER_ID]\n"
    "       aws_probe [options] clusters [DB_CLUSTER_ID]\n"
    "       aws_probe [options] lag CLUSTER_ID...\n"
    "options: --region R --rds-endpoint URL --monitoring-endpoint URL --sts-endpoint URL\n"
    "         --imds-endpoint URL --container-host URL --ca-file F --timeout-ms N\n"
    "         --attempts N --backoff-ms N --repeat N --log-level debug|info|warn|error\n";

static json_t *status_json(const struct aws_status *st)
{
    json_t *o = json_pack("{s:s, s:s, s:b, s:i, s:b, s:s}", "action", st->action, "region",
                          st->region, "ok", st->cls == AWS_OK, "attempts", (json_int_t)st->attempts,
                          "more", st->more, "iam_action", st->iam_action);
    if (st->cls != AWS_OK)
        json_object_set_new(o, "error",
                            json_pack("{s:s, s:i, s:s, s:s, s:s}", "class",
                                      aws_err_class_name(st->cls), "http_status",
                                      (json_int_t)st->error.http_status, "code", st->error.code,
                                      "message", st->error.message, "request_id",
                                      st->error.request_id));
    return o;
}

static void next_call(struct run *r);

static void emit(struct run *r, const struct aws_status *st, json_t *result)
{
    json_t *o = status_json(st);
    json_object_set_new(o, "credentials",
                        json_string(aws_cred_source_name(aws_client_cred_source(r->client))));
    if (result)
        json_object_set_new(o, "result", result);
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(o);
    if (st->cls != AWS_OK)
        r->failures++;
    next_call(r);
}

static void on_global(const struct aws_status *st, const struct aws_global_clusters *gc, void *ud)
{
    json_t *list = gc ? json_array() : NULL;
    for (size_t i = 0; gc && i < gc->n; i++) {
        const struct aws_global_cluster *g = &gc->items[i];
        json_t *members = json_array();
        const char *writer = NULL;
        for (size_t j = 0; j < g->nmembers; j++) {
            const struct aws_global_member *m = &g->members[j];
            if (m->is_writer)
                writer = m->cluster_id;
            json_array_append_new(members,
                                  json_pack("{s:s, s:s, s:s, s:b, s:s, s:s, s:i}", "arn",
                                            m->cluster_arn, "region", m->region, "cluster_id",
                                            m->cluster_id, "is_writer", m->is_writer,
                                            "write_forwarding", m->write_forwarding, "sync_status",
                                            m->sync_status, "readers", (json_int_t)m->nreaders));
        }
        json_t *o = json_pack("{s:s, s:s, s:s, s:o, s:s?}", "id", g->id, "status", g->status,
                              "engine", g->engine, "members", members, "writer", writer);
        if (g->failover.present)
            json_object_set_new(o, "failover",
                                json_pack("{s:s, s:s, s:s, s:b}", "status", g->failover.status,
                                          "from", g->failover.from_arn, "to", g->failover.to_arn,
                                          "data_loss_allowed", g->failover.data_loss_allowed));
        json_array_append_new(list, o);
    }
    emit(ud, st, list);
}

static void on_clusters(const struct aws_status *st, const struct aws_db_clusters *dc, void *ud)
{
    json_t *list = dc ? json_array() : NULL;
    for (size_t i = 0; dc && i < dc->n; i++) {
        const struct aws_db_cluster *c = &dc->items[i];
        json_t *members = json_array();
        for (size_t j = 0; j < c->nmembers; j++)
            json_array_append_new(members, json_pack("{s:s, s:b}", "instance",
                                                     c->members[j].instance_id, "is_writer",
                                                     c->members[j].is_writer));
        json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:s, s:i, s:o}", "id", c->id,
                                              "status", c->status, "endpoint", c->endpoint,
                                              "reader_endpoint", c->reader_endpoint, "port",
                                              (json_int_t)c->port, "members", members));
    }
    emit(ud, st, list);
}

static void on_lag(const struct aws_status *st, const struct aws_lag *lags, size_t n, void *ud)
{
    json_t *list = lags ? json_array() : NULL;
    for (size_t i = 0; lags && i < n; i++) {
        json_t *o = json_pack("{s:s, s:b, s:s, s:i}", "cluster_id", lags[i].cluster_id, "present",
                              lags[i].present, "status", lags[i].status, "points",
                              (json_int_t)lags[i].npoints);
        if (lags[i].present) {
            json_object_set_new(o, "lag_ms", json_real(lags[i].lag_ms));
            json_object_set_new(o, "at", json_integer(lags[i].at));
        }
        json_array_append_new(list, o);
    }
    emit(ud, st, list);
}

static void on_cancel(uv_timer_t *t)
{
    struct run *r = t->data;
    uv_close((uv_handle_t *)t, NULL);
    r->remaining = 0;
    aws_client_free(r->client);         /* in-flight calls report "cancelled" */
}

static void next_call(struct run *r)
{
    if (r->remaining-- <= 0) {
        if (!uv_is_closing((uv_handle_t *)&r->cancel))
            uv_close((uv_handle_t *)&r->cancel, NULL);
        aws_client_free(r->client);     /* the loop ends once its handles close */
        return;
    }
    const char *arg = r->nargs > 0 ? r->args[0] : NULL;
    int rc;
    if (strcmp(r->cmd, "global") == 0)
        rc = aws_describe_global_clusters(r->client, r->region, arg, on_global, r);
    else if (strcmp(r->cmd, "clusters") == 0)
        rc = aws_describe_db_clusters(r->client, r->region, arg, on_clusters, r);
    else
        rc = aws_get_replication_lag(r->client, r->region, (const char *const *)r->args,
                                     (size_t)r->nargs, on_lag, r);
    if (rc < 0) {
        fprintf(stderr, "aws_probe: the call could not be started\n");
        r->failures++;
        aws_client_free(r->client);
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"region", 1, NULL, 'r'}, {"rds-endpoint", 1, NULL, 'R'},
        {"monitoring-endpoint", 1, NULL, 'M'}, {"sts-endpoint", 1, NULL, 'S'},
        {"imds-endpoint", 1, NULL, 'I'}, {"container-host", 1, NULL, 'C'},
        {"ca-file", 1, NULL, 'a'}, {"timeout-ms", 1, NULL, 't'}, {"attempts", 1, NULL, 'n'},
        {"backoff-ms", 1, NULL, 'b'}, {"repeat", 1, NULL, 'p'}, {"log-level", 1, NULL, 'l'},
        {"cancel-after-ms", 1, NULL, 'x'},
        {NULL, 0, NULL, 0},
    };
    struct aws_client_config cfg = {0};
    struct run r = {.remaining = 1};
    long cancel_after_ms = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r': cfg.region = optarg; r.region = optarg; break;
        case 'R': cfg.rds_endpoint = optarg; break;
        case 'M': cfg.monitoring_endpoint = optarg; break;
        case 'S': cfg.sts_endpoint = optarg; break;
        case 'I': cfg.imds_endpoint = optarg; break;
        case 'C': cfg.container_host = optarg; break;
        case 'a': cfg.ca_file = optarg; break;
        case 't': cfg.timeout_ms = atol(optarg); break;
        case 'n': cfg.max_attempts = (unsigned)atoi(optarg); break;
        case 'b': cfg.backoff_base_ms = (unsigned)atoi(optarg); break;
        case 'p': r.remaining = atoi(optarg); break;
        case 'x': cancel_after_ms = atol(optarg); break;
        case 'l':
            ferry_log_set_level(strcmp(optarg, "debug") == 0 ? FERRY_LOG_DEBUG
                                : strcmp(optarg, "warn") == 0 ? FERRY_LOG_WARN
                                : strcmp(optarg, "error") == 0 ? FERRY_LOG_ERROR : FERRY_LOG_INFO);
            break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind >= argc || (strcmp(argv[optind], "global") != 0 &&
                           strcmp(argv[optind], "clusters") != 0 && strcmp(argv[optind], "lag") != 0) ||
        (strcmp(argv[optind], "lag") == 0 && optind + 1 >= argc)) {
        fputs(usage, stderr);
        return 2;
    }
    r.cmd = argv[optind];
    r.args = argv + optind + 1;
    r.nargs = argc - optind - 1;

    uv_loop_t loop;
    uv_loop_init(&loop);
    r.client = aws_client_new(&loop, &cfg);
    if (!r.client) {
        fprintf(stderr, "aws_probe: cannot create the AWS client\n");
        return 1;
    }
    uv_timer_init(&loop, &r.cancel);
    r.cancel.data = &r;
    if (cancel_after_ms > 0)
        uv_timer_start(&r.cancel, on_cancel, (uint64_t)cancel_after_ms, 0);
    next_call(&r);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    if (rc != 0) {
        fprintf(stderr, "aws_probe: handles left open: %s\n", uv_strerror(rc));
        return 3;
    }
    return r.failures ? 1 : 0;
}
