/* `ferry ctl`: the admin endpoint from the command line, for people (tables)
 * and scripts (--json, exit codes: 0 done, 1 ferry said no or could not be
 * reached, 2 bad usage). Blocking libcurl is fine here: it is a CLI.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/config.h"
#include "ferry/ctl.h"

struct body {
    char *data;
    size_t len;
};

static size_t collect(char *p, size_t size, size_t n, void *ud)
{
    struct body *b = ud;
    size_t add = size * n;
    char *grown = realloc(b->data, b->len + add + 1);
    if (!grown)
        return 0;
    memcpy(grown + b->len, p, add);
    b->data = grown;
    b->len += add;
    b->data[b->len] = '\0';
    return add;
}

/* Returns the HTTP status (0 when unreachable, with the reason in body). */
static long request(const char *base, const char *method, const char *path, const char *token,
                    const char *payload, struct body *out)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    CURL *c = curl_easy_init();
    if (!c)
        return 0;
    struct curl_slist *hdrs = NULL;
    char auth[600] = "";
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload ? payload : "");
        if (payload)
            hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 40L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    } else {
        free(out->data);
        out->data = strdup(curl_easy_strerror(rc));
        out->len = out->data ? strlen(out->data) : 0;
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    if (auth[0])
        memset(auth, 0, sizeof auth);
    return status;
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static void print_status(json_t *st)
{
    printf("ferry %s  state %s  uptime %.0fs  config generation %lld  workers %lld  paused %s\n",
           str(st, "version"), str(st, "state"),
           json_number_value(json_object_get(st, "uptime_seconds")),
           (long long)json_integer_value(json_object_get(st, "config_generation")),
           (long long)json_integer_value(json_object_get(st, "workers")),
           json_is_true(json_object_get(st, "paused")) ? "yes" : "no");
    printf("\n%-16s %-11s %-22s %-11s %-16s %8s %6s\n", "LISTENER", "PROTOCOL", "BIND", "ROUTING",
           "WRITER", "CLIENTS", "HELD");
    size_t i, j;
    json_t *l, *c;
    json_array_foreach(json_object_get(st, "listeners"), i, l) {
        json_t *route = json_object_get(l, "route");
        printf("%-16s %-11s %-22s %-11s %-16s %8lld %6lld\n", str(l, "name"), str(l, "protocol"),
               str(l, "bind"), str(l, "routing"), json_is_object(route) ? str(route, "cluster") : "NONE",
               (long long)json_integer_value(json_object_get(l, "clients_active")),
               (long long)json_integer_value(json_object_get(l, "clients_held")));
    }
    json_t *d = json_object_get(st, "discovery");
    json_array_foreach(json_object_get(d, "listeners"), i, l) {
        printf("\n%s: writer %s, generation %lld: %s\n", str(l, "name"), str(l, "writer"),
               (long long)json_integer_value(json_object_get(l, "generation")), str(l, "reason"));
        printf("  %-16s %-28s %-12s %s\n", "CLUSTER", "ENDPOINT", "STATE", "DETAIL");
        json_array_foreach(json_object_get(l, "clusters"), j, c)
            printf("  %-16s %-28s %-12s %s\n", str(c, "name"), str(c, "endpoint"), str(c, "state"),
                   str(c, "detail"));
    }
    json_t *h = json_object_get(d, "history");
    if (json_array_size(h)) {
        printf("\nwriter changes (most recent last):\n");
        json_array_foreach(h, i, c)
            printf("  %s  %s: %s -> %s (generation %lld) %s\n", str(c, "at"), str(c, "listener"),
                   str(c, "from"), str(c, "to"),
                   (long long)json_integer_value(json_object_get(c, "generation")), str(c, "reason"));
    }
}

static void print_sessions(json_t *doc)
{
    printf("%lld session%s (showing %zu from %lld)\n",
           (long long)json_integer_value(json_object_get(doc, "total")),
           json_integer_value(json_object_get(doc, "total")) == 1 ? "" : "s",
           json_array_size(json_object_get(doc, "sessions")),
           (long long)json_integer_value(json_object_get(doc, "offset")));
    printf("%8s %-14s %-22s %-10s %-14s %-22s %8s %12s %12s\n", "ID", "LISTENER", "CLIENT", "STATE",
           "CLUSTER", "BACKEND", "AGE_S", "FROM_CLIENT", "FROM_SERVER");
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(doc, "sessions"), i, x)
        printf("%8lld %-14s %-22s %-10s %-14s %-22s %8.1f %12lld %12lld\n",
               (long long)json_integer_value(json_object_get(x, "id")), str(x, "listener"),
               str(x, "client"), str(x, "state"), str(x, "cluster"), str(x, "backend"),
               json_number_value(json_object_get(x, "age_seconds")),
               (long long)json_integer_value(json_object_get(x, "bytes_from_client")),
               (long long)json_integer_value(json_object_get(x, "bytes_from_server")));
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry ctl status|sessions|metrics|reload|pause|resume [--json]\n"
            "       ferry ctl pause|resume --listener NAME\n"
            "       ferry ctl switchover CLUSTER [--listener NAME] [--timeout SECONDS]\n"
            "  each also takes [--admin URL | -c ferry.json] [--token-file FILE]\n"
            "  --admin URL         the admin endpoint (default http://127.0.0.1:9187)\n"
            "  -c, --config FILE   take admin.bind and the token (admin.token_file or\n"
            "                      admin.token_env) from ferry's config; nothing else in it is read\n"
            "  --token-file FILE   the bearer token (first line); else $FERRY_ADMIN_TOKEN\n"
            "  --json              print the endpoint's JSON as it is\n"
            "  -h, --help          this help\n"
            "  Exit 0 done, 1 ferry said no or could not be reached, 2 bad usage.\n");
}

static int bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Names the mistake, shows the usage; the exit code for bad usage. */
static int bad_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("ferry: ctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    usage(stderr);
    return 2;
}

/* Reads a token file (first line). */
static char *read_token(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char buf[1024];
    char *ok = fgets(buf, sizeof buf, f);
    fclose(f);
    if (!ok)
        return NULL;
    buf[strcspn(buf, "\r\n")] = '\0';
    return strdup(buf);
}

/* The admin endpoint's URL and token from the config's admin section alone
 * (no listener, password file or variable is needed). 0, or 2 (said why). */
static int from_config(const char *path, char *base, size_t baselen, char **token)
{
    char err[FERRY_ERR_MAX];
    struct ferry_config *cfg = ferry_config_load_admin(path, err);
    if (!cfg) {
        fprintf(stderr, "ferry: %s\n", err);
        return 2;
    }
    if (!cfg->admin_enabled) {
        fprintf(stderr, "ferry: ctl: %s: admin.bind is null: that ferry has no admin endpoint\n", path);
        ferry_config_unref(cfg);
        return 2;
    }
    /* a wildcard bind is reached on the loopback address of its family */
    struct ferry_hostport hp = cfg->admin_bind;
    if (strcmp(hp.host, "0.0.0.0") == 0 || strcmp(hp.host, "*") == 0)
        snprintf(hp.host, sizeof hp.host, "127.0.0.1");
    else if (strcmp(hp.host, "::") == 0)
        snprintf(hp.host, sizeof hp.host, "::1");
    char text[FERRY_HOST_MAX + 16];
    ferry_hostport_format(&hp, text, sizeof text);
    snprintf(base, baselen, "http://%s", text);
    *token = cfg->admin_token ? strdup(cfg->admin_token) : NULL;
    ferry_config_unref(cfg);
    return 0;
}

int ferry_ctl_main(int argc, char **argv)
{
    const char *cmd = NULL, *admin = NULL, *cfg_path = NULL, *token_file = NULL;
    const char *target = NULL, *listener = NULL, *timeout = NULL;
    bool as_json = false;
    static const char *const valued[] = {"--listener", "--timeout", "--admin", "-c", "--config",
                                         "--token-file"};
    const char **slot[] = {&listener, &timeout, &admin, &cfg_path, &cfg_path, &token_file};
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        int v = -1;
        for (int k = 0; k < (int)(sizeof valued / sizeof valued[0]); k++)
            if (strcmp(arg, valued[k]) == 0)
                v = k;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(arg, "--json") == 0) {
            as_json = true;
        } else if (v >= 0) {
            if (i + 1 >= argc)
                return bad_usage("%s needs a value", arg);
            *slot[v] = argv[++i];
        } else if (arg[0] == '-') {
            return bad_usage("unknown option %s", arg);
        } else if (!cmd) {
            cmd = arg;
        } else if (strcmp(cmd, "switchover") == 0 && !target) {
            target = arg;
        } else {
            return bad_usage("unexpected argument %s", arg);
        }
    }
    static const struct {
        const char *name, *method, *path;
    } cmds[] = {{"status", "GET", "/v1/status"}, {"metrics", "GET", "/metrics"},
                {"reload", "POST", "/v1/reload"}, {"pause", "POST", "/v1/pause"},
                {"resume", "POST", "/v1/resume"}, {"sessions", "GET", "/v1/sessions?limit=1000"},
                {"switchover", "POST", "/v1/switchover"}};
    int which = -1;
    for (int i = 0; cmd && i < (int)(sizeof cmds / sizeof cmds[0]); i++)
        if (strcmp(cmd, cmds[i].name) == 0)
            which = i;
    if (!cmd)
        return bad_usage("needs a command");
    if (which < 0)
        return bad_usage("unknown command \"%s\"", cmd);
    if (strcmp(cmd, "switchover") == 0 && !target)
        return bad_usage("switchover needs a CLUSTER");
    if (cfg_path && admin)
        return bad_usage("give --admin or -c, not both");
    char *payload = NULL;
    if (target) {
        json_t *req = json_pack("{s:s}", "to", target);
        if (listener)
            json_object_set_new(req, "listener", json_string(listener));
        if (timeout)
            json_object_set_new(req, "timeout", json_real(atof(timeout)));
        payload = json_dumps(req, JSON_COMPACT);
        json_decref(req);
    } else if (listener && (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0)) {
        json_t *req = json_pack("{s:s}", "listener", listener);     /* one listener only */
        payload = json_dumps(req, JSON_COMPACT);
        json_decref(req);
    }

    char base[300] = "http://127.0.0.1:9187";
    char *token = NULL;
    if (cfg_path && from_config(cfg_path, base, sizeof base, &token) != 0) {
        free(payload);
        return 2;
    }
    if (admin)
        snprintf(base, sizeof base, "%s", admin);
    if (token_file) {
        free(token);
        if (!(token = read_token(token_file))) {
            fprintf(stderr, "ferry: ctl: cannot read token file %s\n", token_file);
            free(payload);
            return 2;
        }
    } else if (!token && getenv("FERRY_ADMIN_TOKEN")) {
        token = strdup(getenv("FERRY_ADMIN_TOKEN"));
    }
    base[strcspn(base, "\n")] = '\0';
    size_t bl = strlen(base);
    if (bl && base[bl - 1] == '/')
        base[bl - 1] = '\0';

    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct body b = {0};
    long status = request(base, cmds[which].method, cmds[which].path, token, payload, &b);
    free(payload);
    curl_global_cleanup();
    if (token) {
        memset(token, 0, strlen(token));
        free(token);
    }
    int rc = status >= 200 && status < 300 ? 0 : 1;
    if (status == 0) {
        fprintf(stderr, "ferry: cannot reach the admin endpoint %s: %s\n", base, b.data ? b.data : "");
    } else if (as_json || which == 1) {
        fputs(b.data ? b.data : "", stdout);
        if (b.len && b.data[b.len - 1] != '\n')
            putchar('\n');
    } else {
        json_t *doc = json_loads(b.data ? b.data : "", 0, NULL);
        if (which == 0 && doc && rc == 0)
            print_status(doc);
        else if (which == 5 && doc && rc == 0)
            print_sessions(doc);
        else if (doc)
            fprintf(rc ? stderr : stdout, "%s: %s\n", cmd, str(doc, "message"));
        else
            fprintf(rc ? stderr : stdout, "%s: HTTP %ld %s", cmd, status, b.data ? b.data : "\n");
        json_decref(doc);
    }
    if (status && rc)
        fprintf(stderr, "ferry: %s failed: HTTP %ld\n", cmd, status);
    free(b.data);
    return rc;
}
