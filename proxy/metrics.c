/* GET /metrics: Prometheus text exposition (format 0.0.4) built at scrape
 * time from the per-worker counters (summed here, never locked on the data
 * path), the discovery status and /proc. Names follow Prometheus practice:
 * ferry_ prefix, _total counters, base units (seconds, bytes).
 */
#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ferry/discovery.h"
#include "ferry/version.h"
#include "proxy.h"

static void help(FILE *f, const char *name, const char *type, const char *text)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

const char *px_fmt_double(double v, char buf[PX_DOUBLE_MAX])
{
    if (isnan(v))
        return strcpy(buf, "NaN");
    if (isinf(v))
        return strcpy(buf, v > 0 ? "+Inf" : "-Inf");
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, PX_DOUBLE_MAX, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

char *px_json_dumps(const json_t *doc, size_t flags)
{
    char *in = json_dumps(doc, flags);
    if (!in)
        return NULL;
    /* jansson writes reals with %.17g: rewrite each number token outside
     * strings that has a fraction or an exponent (a real; integers have
     * neither), keeping it a real (".0" when the short form has neither). */
    size_t n = strlen(in);
    char *out = malloc(n + 1);      /* a shortest form is never longer */
    if (!out)
        return in;
    size_t o = 0;
    bool in_string = false;
    for (size_t i = 0; i < n;) {
        char ch = in[i];
        if (in_string) {
            out[o++] = in[i++];
            if (ch == '\\' && i < n)
                out[o++] = in[i++];
            else if (ch == '"')
                in_string = false;
            continue;
        }
        if (ch == '"')
            in_string = true;
        if (ch != '-' && !isdigit((unsigned char)ch)) {
            out[o++] = in[i++];
            continue;
        }
        size_t end = i;
        bool real = false;
        while (end < n && strchr("0123456789+-.eE", in[end])) {
            real |= in[end] == '.' || in[end] == 'e' || in[end] == 'E';
            end++;
        }
        char num[PX_DOUBLE_MAX];
        if (real && end - i < sizeof num) {
            px_fmt_double(strtod(in + i, NULL), num);
            if (!strpbrk(num, ".eE"))
                strcat(num, ".0");
        }
        if (real && end - i < sizeof num && strlen(num) <= end - i) {
            memcpy(out + o, num, strlen(num));
            o += strlen(num);
        } else {
            memcpy(out + o, in + i, end - i);
            o += end - i;
        }
        i = end;
    }
    out[o] = '\0';
    free(in);
    return out;
}

static long long proc_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%lld %lld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * sysconf(_SC_PAGESIZE);
}

static long proc_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    long n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3;   /* ".", "..", and the directory's own descriptor */
}

#define PER_LISTENER SIZE_MAX     /* a family with several samples per listener */
#define FIELD(x) offsetof(struct px_counters, x)

static void listener_metrics(FILE *f)
{
    struct {
        const char *name, *type, *text;
        size_t field;       /* the one counter of each listener's sample, or PER_LISTENER */
    } const families[] = {
        {"ferry_client_connections", "gauge", "Client connections open now.", FIELD(active)},
        {"ferry_client_connections_total", "counter", "Client connections by outcome.", PER_LISTENER},
        {"ferry_clients_held", "gauge", "Clients waiting for a writer.", FIELD(held)},
        {"ferry_errors_total", "counter", "Errors ferry reported to clients, by class.", PER_LISTENER},
        {"ferry_received_bytes_total", "counter", "Bytes received, by side (client or server).",
         PER_LISTENER},
        {"ferry_queries_total", "counter",
         "Commands completed (PostgreSQL: ReadyForQuery; MySQL: a command's whole response).",
         FIELD(queries)},
        {"ferry_transactions_total", "counter", "Transactions ended (protocol-aware listeners).",
         FIELD(transactions)},
        {"ferry_backend_connections", "gauge", "Backend connections open now.", FIELD(backends)},
        {"ferry_sessions_waiting_to_move", "gauge",
         "Idle sessions whose writer moved, without a backend until used or moved in the background.",
         FIELD(waiting_to_move)},
        {"ferry_sessions_moved_total", "counter",
         "Sessions moved to a new writer without an error to the client (terminated auth).",
         FIELD(moves)},
        {"ferry_sessions_move_failed_total", "counter",
         "Sessions that could not be moved to a new writer: closed instead.", FIELD(moves_failed)},
        {"ferry_sessions_ended_by_server_total", "counter",
         "Sessions the server ended on its own while the writer stayed the writer (not moved).",
         FIELD(ended_by_server)},
    };
    /* px_counters is cache-line aligned: calloc does not promise that */
    size_t bytes = (px_proc.nlisteners ? px_proc.nlisteners : 1) * sizeof(struct px_counters);
    struct px_counters *sums = aligned_alloc(64, bytes);
    if (!sums)
        return;
    memset(sums, 0, bytes);
    for (size_t i = 0; i < px_proc.nlisteners; i++)
        sums[i] = px_listener_totals(px_proc.listeners[i]);
    for (size_t k = 0; k < sizeof families / sizeof families[0]; k++) {
        help(f, families[k].name, families[k].type, families[k].text);
        for (size_t i = 0; i < px_proc.nlisteners; i++) {
            const char *l = px_proc.listeners[i]->name;
            const struct px_counters *c = &sums[i];
            if (families[k].field != PER_LISTENER) {
                uint64_t v;
                memcpy(&v, (const char *)c + families[k].field, sizeof v);
                fprintf(f, "%s{listener=\"%s\"} %llu\n", families[k].name, l, (unsigned long long)v);
                continue;
            }
            switch (k) {
            case 1:
                fprintf(f, "ferry_client_connections_total{listener=\"%s\",outcome=\"accepted\"} %llu\n"
                           "ferry_client_connections_total{listener=\"%s\",outcome=\"refused\"} %llu\n",
                        l, (unsigned long long)c->accepted, l, (unsigned long long)c->refused);
                break;
            case 3:
                fprintf(f, "ferry_errors_total{listener=\"%s\",class=\"too_many_clients\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"backend_connect\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"hold_timeout\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"login_timeout\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"protocol\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"auth\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"failover\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"idle_timeout\"} %llu\n"
                           "ferry_errors_total{listener=\"%s\",class=\"backend_refused\"} %llu\n",
                        l, (unsigned long long)c->refused, l,
                        (unsigned long long)c->backend_connect_failed, l,
                        (unsigned long long)c->hold_timeouts, l,
                        (unsigned long long)c->login_timeouts, l,
                        (unsigned long long)c->errors_protocol, l,
                        (unsigned long long)c->errors_auth, l,
                        (unsigned long long)c->errors_failover, l,
                        (unsigned long long)c->idle_timeouts, l,
                        (unsigned long long)c->errors_backend_refused);
                break;
            case 4:
                fprintf(f, "ferry_received_bytes_total{listener=\"%s\",side=\"client\"} %llu\n"
                           "ferry_received_bytes_total{listener=\"%s\",side=\"server\"} %llu\n",
                        l, (unsigned long long)c->bytes_from_clients, l,
                        (unsigned long long)c->bytes_from_servers);
                break;
            }
        }
    }
    free(sums);
}

/* Everything discovery knows, from its JSON status (one lock, one copy). */
static void discovery_metrics(FILE *f, json_t *st)
{
    json_t *ls = json_object_get(st, "listeners");
    size_t i, j;
    json_t *l, *c;
    help(f, "ferry_topology_generation", "gauge", "Writer generation per listener (+1 per writer change).");
    json_array_foreach(ls, i, l)
        fprintf(f, "ferry_topology_generation{listener=\"%s\"} %lld\n",
                json_string_value(json_object_get(l, "name")),
                (long long)json_integer_value(json_object_get(l, "generation")));
    help(f, "ferry_split_brain", "gauge",
         "1 while more than one cluster of a listener accepts writes (alert on it).");
    json_array_foreach(ls, i, l)
        fprintf(f, "ferry_split_brain{listener=\"%s\"} %d\n",
                json_string_value(json_object_get(l, "name")),
                json_is_true(json_object_get(l, "split_brain")));
    help(f, "ferry_writable_writer_fenced_total", "counter",
         "Writers that lost the role while still accepting writes (a promotion, AWS or the "
         "operator named another); their sessions were cut at once.");
    json_array_foreach(ls, i, l)
        fprintf(f, "ferry_writable_writer_fenced_total{listener=\"%s\"} %lld\n",
                json_string_value(json_object_get(l, "name")),
                (long long)json_integer_value(json_object_get(l, "writable_writer_fenced_total")));
    help(f, "ferry_writer", "gauge", "1 for the cluster that is the writer of a listener.");
    json_array_foreach(ls, i, l) {
        const char *w = json_string_value(json_object_get(l, "writer"));
        json_array_foreach(json_object_get(l, "clusters"), j, c) {
            const char *name = json_string_value(json_object_get(c, "name"));
            fprintf(f, "ferry_writer{listener=\"%s\",cluster=\"%s\"} %d\n",
                    json_string_value(json_object_get(l, "name")), name, w && strcmp(w, name) == 0);
        }
    }
    struct {
        const char *metric, *type, *text, *key;
    } const per_cluster[] = {
        {"ferry_cluster_up", "gauge", "1 when the last probe of the cluster succeeded.", NULL},
        {"ferry_cluster_writable", "gauge", "1 when the last probe found the cluster writable.", NULL},
        {"ferry_probe_duration_seconds", "gauge", "Duration of the last probe.", "latency_ms"},
        {"ferry_probes_total", "counter", "Probes run.", "probes_total"},
        {"ferry_probe_failures_total", "counter", "Probes that failed or timed out.", "probe_failures_total"},
    };
    for (size_t k = 0; k < sizeof per_cluster / sizeof per_cluster[0]; k++) {
        help(f, per_cluster[k].metric, per_cluster[k].type, per_cluster[k].text);
        json_array_foreach(ls, i, l) {
            json_array_foreach(json_object_get(l, "clusters"), j, c) {
                const char *state = json_string_value(json_object_get(c, "state"));
                double v;
                if (k == 0)
                    v = strcmp(state, "writable") == 0 || strcmp(state, "read-only") == 0;
                else if (k == 1)
                    v = strcmp(state, "writable") == 0;
                else if (k == 2)
                    v = json_number_value(json_object_get(c, per_cluster[k].key)) / 1000.0;
                else
                    v = json_number_value(json_object_get(c, per_cluster[k].key));
                char num[PX_DOUBLE_MAX];
                fprintf(f, "%s{listener=\"%s\",cluster=\"%s\"} %s\n", per_cluster[k].metric,
                        json_string_value(json_object_get(l, "name")),
                        json_string_value(json_object_get(c, "name")), px_fmt_double(v, num));
            }
        }
    }
    static const char *const lag_metric[][3] = {
        {"ferry_replication_lag_seconds", "replication_lag_ms",
         "AuroraGlobalDBReplicationLag from CloudWatch, its newest datapoint (secondaries only; "
         "absent for the primary)."},
        {"ferry_replication_lag_age_seconds", "lag_age_seconds",
         "How long ago CloudWatch measured that datapoint (its own timestamp); over 600 it is "
         "stale and not used to pick the candidate."},
    };
    for (size_t k = 0; k < 2; k++) {
        help(f, lag_metric[k][0], "gauge", lag_metric[k][2]);
        json_array_foreach(ls, i, l) {
            json_array_foreach(json_object_get(l, "clusters"), j, c) {
                json_t *v = json_object_get(json_object_get(c, "aws"), lag_metric[k][1]);
                char num[PX_DOUBLE_MAX];
                if (json_is_number(v))
                    fprintf(f, "%s{listener=\"%s\",cluster=\"%s\"} %s\n", lag_metric[k][0],
                            json_string_value(json_object_get(l, "name")),
                            json_string_value(json_object_get(c, "name")),
                            px_fmt_double(json_number_value(v) / (k == 0 ? 1000.0 : 1.0), num));
            }
        }
    }
    help(f, "ferry_aws_calls_total", "counter", "AWS API calls by API and outcome.");
    json_array_foreach(ls, i, l) {
        json_t *aws = json_object_get(l, "aws");
        if (!aws)
            continue;
        static const char *const apis[][3] = {
            {"DescribeGlobalClusters", "describe_global_clusters_ok_total", "describe_global_clusters_errors_total"},
            {"GetMetricData", "get_metric_data_ok_total", "get_metric_data_errors_total"}};
        for (size_t k = 0; k < 2; k++)
            fprintf(f, "ferry_aws_calls_total{listener=\"%s\",api=\"%s\",outcome=\"ok\"} %lld\n"
                       "ferry_aws_calls_total{listener=\"%s\",api=\"%s\",outcome=\"error\"} %lld\n",
                    json_string_value(json_object_get(l, "name")), apis[k][0],
                    (long long)json_integer_value(json_object_get(aws, apis[k][1])),
                    json_string_value(json_object_get(l, "name")), apis[k][0],
                    (long long)json_integer_value(json_object_get(aws, apis[k][2])));
    }
    help(f, "ferry_failover_duration_seconds", "histogram",
         "Time from losing a writer to having the next one.");
    json_array_foreach(ls, i, l) {
        const char *name = json_string_value(json_object_get(l, "name"));
        json_t *h = json_object_get(l, "failover_seconds");
        json_t *b;
        char num[PX_DOUBLE_MAX];
        json_array_foreach(json_object_get(h, "buckets"), j, b)
            fprintf(f, "ferry_failover_duration_seconds_bucket{listener=\"%s\",le=\"%s\"} %lld\n", name,
                    px_fmt_double(json_number_value(json_object_get(b, "le")), num),
                    (long long)json_integer_value(json_object_get(b, "count")));
        long long count = (long long)json_integer_value(json_object_get(h, "count"));
        fprintf(f, "ferry_failover_duration_seconds_bucket{listener=\"%s\",le=\"+Inf\"} %lld\n", name, count);
        fprintf(f, "ferry_failover_duration_seconds_sum{listener=\"%s\"} %s\n", name,
                px_fmt_double(json_number_value(json_object_get(h, "sum")), num));
        fprintf(f, "ferry_failover_duration_seconds_count{listener=\"%s\"} %lld\n", name, count);
    }
}

/* The process_* family of Prometheus's client libraries, same names, units
 * and types. */
static void process_metrics(FILE *f)
{
    char num[PX_DOUBLE_MAX];
    struct rusage ru;
    double cpu = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
              ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
    help(f, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    fprintf(f, "process_cpu_seconds_total %s\n", px_fmt_double(cpu, num));
    help(f, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    fprintf(f, "process_resident_memory_bytes %lld\n", proc_rss_bytes());
    help(f, "process_open_fds", "gauge", "Number of open file descriptors.");
    fprintf(f, "process_open_fds %ld\n", proc_open_fds());
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        help(f, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        fprintf(f, "process_max_fds %s\n",
                rl.rlim_cur == RLIM_INFINITY ? "+Inf" : px_fmt_double((double)rl.rlim_cur, num));
    }
    help(f, "process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.");
    fprintf(f, "process_start_time_seconds %s\n", px_fmt_double(px_proc.started_unix, num));
}

char *px_metrics_text(void)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (!f)
        return NULL;
    uint64_t queued = 0;
    for (unsigned i = 0; i < px_proc.nworkers; i++)
        queued += PX_STAT_GET(px_proc.workers[i].buffered_bytes);

    pthread_mutex_lock(&px_proc.lock);
    help(f, "ferry_info", "gauge", "Build information.");
    fprintf(f, "ferry_info{version=\"%s\"} 1\n", FERRY_VERSION);
    help(f, "ferry_uptime_seconds", "gauge", "Seconds since ferry started.");
    fprintf(f, "ferry_uptime_seconds %.3f\n", (double)(px_now_ms() - px_proc.started_ms) / 1000.0);
    help(f, "ferry_config_generation", "gauge", "Config generation (+1 per successful reload).");
    fprintf(f, "ferry_config_generation %llu\n", (unsigned long long)px_proc.generation);
    help(f, "ferry_workers", "gauge", "Worker threads.");
    fprintf(f, "ferry_workers %u\n", px_proc.nworkers);
    listener_metrics(f);
    json_t *st = px_proc.discovery ? ferry_discovery_status(px_proc.discovery) : NULL;
    pthread_mutex_unlock(&px_proc.lock);
    if (st) {
        discovery_metrics(f, st);
        json_decref(st);
    }
    help(f, "ferry_admin_connections", "gauge", "Connections to the admin endpoint open now.");
    fprintf(f, "ferry_admin_connections %u\n", __atomic_load_n(&px_admin_stats.open, __ATOMIC_RELAXED));
    help(f, "ferry_admin_connections_dropped_total", "counter",
         "Admin connections ferry closed: over admin.request_timeout, or to make room for a newer "
         "one (per-peer or total limit).");
    for (int i = 0; i < PX_ADMIN_DROP_N; i++)
        fprintf(f, "ferry_admin_connections_dropped_total{reason=\"%s\"} %llu\n", px_admin_drop_names[i],
                (unsigned long long)__atomic_load_n(&px_admin_stats.dropped[i], __ATOMIC_RELAXED));
    help(f, "ferry_buffer_queued_bytes", "gauge", "Bytes queued in session buffers.");
    fprintf(f, "ferry_buffer_queued_bytes %llu\n", (unsigned long long)queued);
    process_metrics(f);
    fclose(f);
    return out;
}
