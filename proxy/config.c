/* ferry.json loader: JSON (jansson) → validated, immutable struct ferry_config.
 * Every rejection names the file, the key path and the reason, so an operator
 * can fix the file without reading code. Nothing here touches the network.
 */
#include "ferry/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_ADMIN_BIND "127.0.0.1:9187"
#define DEFAULT_ADMIN_MAX_CONNECTIONS 1024
#define DEFAULT_ADMIN_MAX_CONNECTIONS_PER_PEER 16
#define DEFAULT_ADMIN_REQUEST_TIMEOUT 5.0

/* Parsing context: the file name for messages and the first error seen. */
struct cfg_ctx {
    const char *path;
    char *err;      /* borrowed: FERRY_ERR_MAX bytes */
    bool failed;
    bool admin_only;    /* ferry_config_load_admin: the admin section alone */
};

static void cfg_fail(struct cfg_ctx *c, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cfg_fail(struct cfg_ctx *c, const char *key, const char *fmt, ...)
{
    if (c->failed)
        return;     /* keep the first error: later ones are often consequences */
    c->failed = true;
    int n = snprintf(c->err, FERRY_ERR_MAX, "%s: %s%s", c->path, key ? key : "", key ? ": " : "");
    if (n < 0 || n >= FERRY_ERR_MAX)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, FERRY_ERR_MAX - (size_t)n, fmt, ap);
    va_end(ap);
}

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "unknown";
}

enum { KEY_MAX = 256 };

/* out = where + suffix, truncated to KEY_MAX; key paths only feed messages. */
static const char *subkey(char out[KEY_MAX], const char *where, const char *suffix)
{
    size_t a = strnlen(where, KEY_MAX - 1);
    size_t b = strnlen(suffix, KEY_MAX - 1 - a);
    memmove(out, where, a);
    memcpy(out + a, suffix, b);
    out[a + b] = '\0';
    return out;
}

/* out = where + "[i]" */
static const char *subkey_index(char out[KEY_MAX], const char *where, const char *array, size_t i)
{
    char idx[32];
    snprintf(idx, sizeof idx, "[%zu]", i);
    subkey(out, where, array);
    return subkey(out, out, idx);
}

/* Rejects keys of obj that are not in allowed (NULL-terminated). */
static void check_keys(struct cfg_ctx *c, const char *where, json_t *obj, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                ok = true;
        if (!ok) {
            char key[KEY_MAX];
            subkey(key, where, *where ? "." : "");
            cfg_fail(c, subkey(key, key, k), "unknown key");
            return;
        }
    }
}

/* Each getter: absent → keep *out (the default) and return false;
 * present and valid → set *out, return true; invalid → record an error. */
static bool get_string(struct cfg_ctx *c, json_t *obj, const char *k, const char *key,
                       const char **out)
{
    json_t *v = json_object_get(obj, k);
    if (!v)
        return false;
    if (!json_is_string(v)) {
        cfg_fail(c, key, "expected a string, got %s", json_type_name(v));
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool get_uint(struct cfg_ctx *c, json_t *obj, const char *k, const char *key,
                     long long lo, long long hi, long long *out)
{
    json_t *v = json_object_get(obj, k);
    if (!v)
        return false;
    if (!json_is_integer(v)) {
        cfg_fail(c, key, "expected an integer, got %s", json_type_name(v));
        return false;
    }
    long long n = json_integer_value(v);
    if (n < lo || n > hi) {
        cfg_fail(c, key, "%lld out of range %lld..%lld", n, lo, hi);
        return false;
    }
    *out = n;
    return true;
}

static bool get_seconds(struct cfg_ctx *c, json_t *obj, const char *k, const char *key,
                        double lo, double hi, double *out)
{
    json_t *v = json_object_get(obj, k);
    if (!v)
        return false;
    if (!json_is_number(v)) {
        cfg_fail(c, key, "expected a number of seconds, got %s", json_type_name(v));
        return false;
    }
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) {
        cfg_fail(c, key, "%g seconds out of range %g..%g", d, lo, hi);
        return false;
    }
    *out = d;
    return true;
}

static bool get_bool(struct cfg_ctx *c, json_t *obj, const char *k, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, k);
    if (!v)
        return false;
    if (!json_is_boolean(v)) {
        cfg_fail(c, key, "expected a boolean, got %s", json_type_name(v));
        return false;
    }
    *out = json_is_true(v);
    return true;
}

int ferry_hostport_parse(const char *s, struct ferry_hostport *out, char *why, size_t whylen)
{
    const char *colon;
    size_t hostlen;
    const char *host = s;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            snprintf(why, whylen, "\"%s\" is not [ipv6]:port", s);
            return -1;
        }
        host = s + 1;
        hostlen = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) {
            snprintf(why, whylen, "\"%s\" is not host:port", s);
            return -1;
        }
        hostlen = (size_t)(colon - s);
        if (memchr(s, ':', hostlen)) {
            snprintf(why, whylen, "\"%s\": write IPv6 addresses as [addr]:port", s);
            return -1;
        }
    }
    if (hostlen == 0 || hostlen >= FERRY_HOST_MAX) {
        snprintf(why, whylen, "\"%s\": host is empty or too long", s);
        return -1;
    }
    const char *p = colon + 1;
    if (*p == '\0') {
        snprintf(why, whylen, "\"%s\": missing port", s);
        return -1;
    }
    long port = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || port > 1000000) {
            snprintf(why, whylen, "\"%s\": port is not a number", s);
            return -1;
        }
        port = port * 10 + (*p - '0');
    }
    if (port < 1 || port > 65535) {
        snprintf(why, whylen, "port %ld out of range", port);
        return -1;
    }
    memcpy(out->host, host, hostlen);
    out->host[hostlen] = '\0';
    out->port = (uint16_t)port;
    return 0;
}

void ferry_hostport_format(const struct ferry_hostport *hp, char *out, size_t outlen)
{
    if (strchr(hp->host, ':'))
        snprintf(out, outlen, "[%s]:%u", hp->host, hp->port);
    else
        snprintf(out, outlen, "%s:%u", hp->host, hp->port);
}

bool ferry_hostport_equal(const struct ferry_hostport *a, const struct ferry_hostport *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

static bool is_wildcard(const char *host)
{
    return strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 || strcmp(host, "*") == 0;
}

bool ferry_hostport_loopback(const struct ferry_hostport *hp)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (strcmp(hp->host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, hp->host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, hp->host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

bool ferry_config_admin_open(const struct ferry_config *cfg)
{
    return cfg->admin_enabled && !cfg->admin_token && !ferry_hostport_loopback(&cfg->admin_bind);
}

bool ferry_hostport_collide(const struct ferry_hostport *a, const struct ferry_hostport *b)
{
    return a->port == b->port &&
           (strcmp(a->host, b->host) == 0 || is_wildcard(a->host) || is_wildcard(b->host));
}

static void get_hostport(struct cfg_ctx *c, json_t *obj, const char *k, const char *key,
                         struct ferry_hostport *out, bool required)
{
    const char *s = NULL;
    if (!get_string(c, obj, k, key, &s)) {
        if (required && !c->failed)
            cfg_fail(c, key, "required key is missing");
        return;
    }
    char why[256];
    if (ferry_hostport_parse(s, out, why, sizeof why) != 0)
        cfg_fail(c, key, "%s", why);
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= FERRY_NAME_MAX)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || *p == '.'))
            return false;
    return true;
}

/* A required string at v[k] (key path pkey + ".k", left in key); false,
 * with the error reported, when it is missing or not a string. */
static bool get_required_string(struct cfg_ctx *c, json_t *v, const char *k, const char *pkey,
                                char key[KEY_MAX], const char **out)
{
    char dotted[FERRY_NAME_MAX];
    snprintf(dotted, sizeof dotted, ".%s", k);
    if (get_string(c, v, k, subkey(key, pkey, dotted), out))
        return true;
    if (!c->failed)
        cfg_fail(c, key, "required key is missing");
    return false;
}

static void get_name(struct cfg_ctx *c, json_t *obj, const char *where, char out[FERRY_NAME_MAX])
{
    char key[KEY_MAX];
    const char *s = NULL;
    if (!get_required_string(c, obj, "name", where, key, &s))
        return;
    if (!valid_name(s)) {
        cfg_fail(c, key, "\"%s\" must be 1-63 characters of A-Z a-z 0-9 _ . -", s);
        return;
    }
    strcpy(out, s);
}

static void parse_cluster(struct cfg_ctx *c, json_t *v, const char *where, struct ferry_cluster_cfg *cl)
{
    static const char *const keys[] = {"name", "region", "db_cluster_identifier", "endpoint",
                                       "reader_endpoint", "writer", NULL};
    char key[KEY_MAX];
    if (!json_is_object(v)) {
        cfg_fail(c, where, "expected an object, got %s", json_type_name(v));
        return;
    }
    check_keys(c, where, v, keys);
    get_name(c, v, where, cl->name);
    const char *region = NULL;
    subkey(key, where, ".region");
    if (get_string(c, v, "region", key, &region)) {
        if (!valid_name(region))
            cfg_fail(c, key, "\"%s\" must be 1-63 characters of A-Z a-z 0-9 _ . -", region);
        else
            strcpy(cl->region, region);
    }
    const char *dbid = NULL;
    subkey(key, where, ".db_cluster_identifier");
    if (get_string(c, v, "db_cluster_identifier", key, &dbid)) {
        if (!valid_name(dbid))
            cfg_fail(c, key, "\"%s\" must be 1-63 characters of A-Z a-z 0-9 _ . -", dbid);
        else
            strcpy(cl->db_cluster_identifier, dbid);
    }
    subkey(key, where, ".endpoint");
    get_hostport(c, v, "endpoint", key, &cl->endpoint, true);
    subkey(key, where, ".reader_endpoint");
    get_hostport(c, v, "reader_endpoint", key, &cl->reader_endpoint, false);
    subkey(key, where, ".writer");
    get_bool(c, v, "writer", key, &cl->writer);
}

/* Reads a secret from the environment or a file; NULL (with an error) if it
 * cannot. The value is never put in a message. */
static char *read_secret_file(struct cfg_ctx *c, const char *key, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        cfg_fail(c, key, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    bool too_long = !feof(f);
    fclose(f);
    if (too_long) {
        cfg_fail(c, key, "%s: longer than %zu bytes", path, sizeof buf - 1);
        return NULL;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;    /* files written by editors and `echo` end in a newline */
    buf[n] = '\0';
    char *out = strdup(buf);
    memset(buf, 0, sizeof buf);
    return out;
}

/* The object listener[name], its key path in skey ("where.name"); NULL
 * when it is absent or wrong (not an object, unknown keys: reported). */
static json_t *section(struct cfg_ctx *c, json_t *listener, const char *where, const char *name,
                       const char *const *keys, char skey[KEY_MAX])
{
    json_t *v = json_object_get(listener, name);
    if (!v || c->failed)
        return NULL;
    char dotted[FERRY_NAME_MAX];
    snprintf(dotted, sizeof dotted, ".%s", name);
    subkey(skey, where, dotted);
    if (!json_is_object(v)) {
        cfg_fail(c, skey, "expected an object, got %s", json_type_name(v));
        return NULL;
    }
    check_keys(c, skey, v, keys);
    return c->failed ? NULL : v;
}

/* A required name of 1-63 bytes at v[k] into out (FERRY_NAME_MAX bytes). */
static bool get_required_name(struct cfg_ctx *c, json_t *v, const char *k, const char *pkey,
                              char *out)
{
    char key[KEY_MAX];
    const char *s = NULL;
    if (!get_required_string(c, v, k, pkey, key, &s))
        return false;
    if (strlen(s) == 0 || strlen(s) >= FERRY_NAME_MAX) {
        cfg_fail(c, key, "must be 1-63 bytes");
        return false;
    }
    strcpy(out, s);
    return true;
}

/* One of "password", "password_env", "password_file" of object v (at
 * pkey) into *out (owned; left NULL when none is given). */
static void parse_secret(struct cfg_ctx *c, json_t *v, const char *pkey, char **out)
{
    char key[KEY_MAX];
    const char *s = NULL;
    int sources = 0;
    sources += json_object_get(v, "password") != NULL;
    sources += json_object_get(v, "password_env") != NULL;
    sources += json_object_get(v, "password_file") != NULL;
    if (sources > 1) {
        cfg_fail(c, pkey, "give only one of password, password_env, password_file");
        return;
    }
    if (get_string(c, v, "password", subkey(key, pkey, ".password"), &s))
        *out = strdup(s);
    if (get_string(c, v, "password_env", subkey(key, pkey, ".password_env"), &s)) {
        const char *val = getenv(s);
        if (!val)
            cfg_fail(c, key, "environment variable %s is not set", s);
        else
            *out = strdup(val);
    }
    if (get_string(c, v, "password_file", subkey(key, pkey, ".password_file"), &s))
        *out = read_secret_file(c, key, s);
}

static void parse_probe(struct cfg_ctx *c, json_t *listener, const char *where,
                        struct ferry_listener_cfg *l)
{
    static const char *const keys[] = {"user", "password", "password_env", "password_file",
                                       "database", NULL};
    char key[KEY_MAX], pkey[KEY_MAX];
    json_t *v = section(c, listener, where, "probe", keys, pkey);
    if (!v)
        return;
    l->probe_enabled = true;
    const char *s = NULL;
    if (!get_required_name(c, v, "user", pkey, l->probe_user))
        return;
    strcpy(l->probe_database, l->protocol == FERRY_PROTO_POSTGRESQL ? "postgres" : "");
    if (get_string(c, v, "database", subkey(key, pkey, ".database"), &s)) {
        if (strlen(s) >= FERRY_NAME_MAX)
            cfg_fail(c, key, "longer than 63 bytes");
        else
            strcpy(l->probe_database, s);
    }
    parse_secret(c, v, pkey, &l->probe_password);
}

static void parse_method(struct cfg_ctx *c, const char *key, const char *s, enum ferry_proto proto,
                         enum ferry_auth_method *out)
{
    static const struct {
        const char *name;
        enum ferry_proto proto;
        enum ferry_auth_method method;
    } methods[] = {
        {"scram-sha-256", FERRY_PROTO_POSTGRESQL, FERRY_AUTH_SCRAM},
        {"md5", FERRY_PROTO_POSTGRESQL, FERRY_AUTH_MD5},
        {"trust", FERRY_PROTO_POSTGRESQL, FERRY_AUTH_TRUST},
        {"mysql_native_password", FERRY_PROTO_MYSQL, FERRY_AUTH_MYSQL_NATIVE},
        {"caching_sha2_password", FERRY_PROTO_MYSQL, FERRY_AUTH_CACHING_SHA2},
    };
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (methods[i].proto == proto && strcmp(methods[i].name, s) == 0) {
            *out = methods[i].method;
            return;
        }
    cfg_fail(c, key, "\"%s\" is not one of %s", s, proto == FERRY_PROTO_MYSQL
             ? "mysql_native_password, caching_sha2_password" : "scram-sha-256, md5, trust");
}

static void parse_user(struct cfg_ctx *c, json_t *v, const char *ukey, enum ferry_proto proto,
                       struct ferry_user_cfg *u)
{
    static const char *const keys[] = {"name", "method", "password", "password_env",
                                       "password_file", "scram_verifier", NULL};
    char key[KEY_MAX];
    const char *s = NULL;
    if (!json_is_object(v)) {
        cfg_fail(c, ukey, "expected an object, got %s", json_type_name(v));
        return;
    }
    check_keys(c, ukey, v, keys);
    if (!get_required_name(c, v, "name", ukey, u->name))
        return;
    /* MySQL: Aurora MySQL's default plugin, which every client speaks */
    u->method = proto == FERRY_PROTO_MYSQL ? FERRY_AUTH_MYSQL_NATIVE : FERRY_AUTH_SCRAM;
    if (get_string(c, v, "method", subkey(key, ukey, ".method"), &s))
        parse_method(c, key, s, proto, &u->method);
    parse_secret(c, v, ukey, &u->password);
    if (!c->failed && !u->password)
        cfg_fail(c, ukey, "needs the user's backend password (password, password_env or password_file)");
    if (get_string(c, v, "scram_verifier", subkey(key, ukey, ".scram_verifier"), &s)) {
        if (proto != FERRY_PROTO_POSTGRESQL)
            cfg_fail(c, key, "only postgresql listeners take a SCRAM verifier");
        else if (strncmp(s, "SCRAM-SHA-256$", 14) != 0)
            cfg_fail(c, key, "expected \"SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>\"");
        else
            u->scram_verifier = strdup(s);
    }
}

/* "tls": {"cert_file", "key_file", "required", "min_version"}: TLS towards
 * clients (the files are read when the config is put to use). */
/* In passthrough mode ferry relays the MySQL handshake: TLS on one leg
 * would shift every sequence id of the exchange by one on the other. */
#define MYSQL_TLS_NEEDS_TERMINATED \
    "mysql listeners take TLS only with \"auth\": {\"mode\": \"terminated\"} (ferry must own the handshake)"

static void parse_tls(struct cfg_ctx *c, json_t *listener, const char *where,
                      struct ferry_listener_cfg *l)
{
    static const char *const keys[] = {"cert_file", "key_file", "required", "min_version",
                                       "ciphers", "ciphersuites", NULL};
    char key[KEY_MAX], tkey[KEY_MAX];
    json_t *v = section(c, listener, where, "tls", keys, tkey);
    if (!v)
        return;
    if (l->protocol == FERRY_PROTO_MYSQL && !l->auth_terminated) {
        cfg_fail(c, tkey, MYSQL_TLS_NEEDS_TERMINATED);
        return;
    }
    const char *s = NULL;
    if (!get_required_string(c, v, "cert_file", tkey, key, &s))
        return;
    l->tls_cert_file = strdup(s);
    if (!get_required_string(c, v, "key_file", tkey, key, &s))
        return;
    l->tls_key_file = strdup(s);
    get_bool(c, v, "required", subkey(key, tkey, ".required"), &l->tls_required);
    strcpy(l->tls_min_version, "1.2");
    if (get_string(c, v, "min_version", subkey(key, tkey, ".min_version"), &s)) {
        if (strcmp(s, "1.2") != 0 && strcmp(s, "1.3") != 0)
            cfg_fail(c, key, "\"%s\" is not one of 1.2, 1.3", s);
        else
            strcpy(l->tls_min_version, s);
    }
    if (get_string(c, v, "ciphers", subkey(key, tkey, ".ciphers"), &s))
        l->tls_ciphers = strdup(s);     /* checked when the context is made */
    if (get_string(c, v, "ciphersuites", subkey(key, tkey, ".ciphersuites"), &s))
        l->tls_ciphersuites = strdup(s);
}

/* "backend_tls": {"mode", "ca_file", "allow_insecure_password"}: TLS
 * towards the clusters. Each protocol's own mode names (libpq's sslmode, the
 * MySQL client's --ssl-mode); stored as the PostgreSQL ones, which
 * proxy/tls.c parses. The default verifies the server's certificate and name
 * (verify-full / verify_identity): ferry talks to AWS across networks and
 * holds passwords, so a local setup without TLS says so in its config. */
static void parse_backend_tls(struct cfg_ctx *c, json_t *listener, const char *where,
                              struct ferry_listener_cfg *l)
{
    static const char *const keys[] = {"mode", "ca_file", "allow_insecure_password", NULL};
    static const char *const modes[] = {"disable", "prefer", "require", "verify-ca",
                                        "verify-full", NULL};
    static const char *const mysql_modes[] = {"disabled", "preferred", "required", "verify_ca",
                                              "verify_identity", NULL};
    bool mysql = l->protocol == FERRY_PROTO_MYSQL;
    const char *const *names = mysql ? mysql_modes : modes;
    char key[KEY_MAX], tkey[KEY_MAX];
    strcpy(l->backend_tls_mode, "verify-full");
    json_t *v = section(c, listener, where, "backend_tls", keys, tkey);
    size_t i = 4;                               /* verify-full */
    const char *s = NULL;
    if (v && get_string(c, v, "mode", subkey(key, tkey, ".mode"), &s)) {
        i = 0;
        while (names[i] && strcmp(names[i], s) != 0)
            i++;
        if (!names[i]) {
            cfg_fail(c, key, "\"%s\" is not one of %s", s, mysql
                     ? "disabled, preferred, required, verify_ca, verify_identity"
                     : "disable, prefer, require, verify-ca, verify-full");
            return;
        }
    }
    if (mysql && i > 0 && !l->auth_terminated) {
        cfg_fail(c, v ? key : subkey(key, where, ".backend_tls.mode"),
                 "%s; the default is verify_identity, so a passthrough listener sets "
                 "\"backend_tls\": {\"mode\": \"disabled\"} explicitly",
                 MYSQL_TLS_NEEDS_TERMINATED);
        return;
    }
    strcpy(l->backend_tls_mode, modes[i]);
    if (!v)
        return;
    if (get_string(c, v, "ca_file", subkey(key, tkey, ".ca_file"), &s))
        l->backend_tls_ca_file = strdup(s);
    get_bool(c, v, "allow_insecure_password", subkey(key, tkey, ".allow_insecure_password"),
             &l->backend_allow_insecure_password);
}

/* "auth": {"mode": "passthrough" | "terminated", "users": [...]} */
static void parse_auth(struct cfg_ctx *c, json_t *listener, const char *where,
                       struct ferry_listener_cfg *l)
{
    static const char *const keys[] = {"mode", "users", "server_version", NULL};
    char key[KEY_MAX], akey[KEY_MAX];
    json_t *v = section(c, listener, where, "auth", keys, akey);
    if (!v)
        return;
    const char *mode = "passthrough";
    get_string(c, v, "mode", subkey(key, akey, ".mode"), &mode);
    if (strcmp(mode, "terminated") == 0)
        l->auth_terminated = true;
    else if (strcmp(mode, "passthrough") != 0)
        cfg_fail(c, key, "\"%s\" is not one of passthrough, terminated", mode);
    if (c->failed)
        return;
    const char *version = NULL;
    if (get_string(c, v, "server_version", subkey(key, akey, ".server_version"), &version)) {
        if (l->protocol != FERRY_PROTO_MYSQL || !l->auth_terminated)
            cfg_fail(c, key, "only mysql listeners in terminated mode send their own greeting");
        else if (!*version || strlen(version) >= sizeof l->server_version)
            cfg_fail(c, key, "expected 1-63 characters");
        else
            strcpy(l->server_version, version);
        if (c->failed)
            return;
    }
    json_t *users = json_object_get(v, "users");
    subkey(key, akey, ".users");
    if (!users) {
        if (l->auth_terminated)
            cfg_fail(c, key, "required key is missing (terminated mode checks clients against it)");
        return;
    }
    if (!json_is_array(users) || json_array_size(users) == 0) {
        cfg_fail(c, key, "expected a non-empty array, got %s", json_type_name(users));
        return;
    }
    l->users = calloc(json_array_size(users), sizeof *l->users);
    if (!l->users) {
        cfg_fail(c, key, "out of memory");
        return;
    }
    size_t i;
    json_t *u;
    json_array_foreach(users, i, u) {
        char ukey[KEY_MAX];
        subkey_index(ukey, akey, ".users", i);
        parse_user(c, u, ukey, l->protocol, &l->users[l->nusers++]);
        if (c->failed)
            return;
        for (size_t j = 0; j + 1 < l->nusers; j++)
            if (strcmp(l->users[j].name, l->users[i].name) == 0) {
                cfg_fail(c, ukey, "user \"%s\" is listed twice", l->users[i].name);
                return;
            }
    }
}

static void parse_discovery(struct cfg_ctx *c, json_t *root, struct ferry_discovery_cfg *d)
{
    static const char *const keys[] = {"probe_interval", "probe_timeout", "writer_down_after",
                                       "hold_timeout", NULL};
    *d = (struct ferry_discovery_cfg){.probe_interval = 1.0, .probe_timeout = 1.0,
                                      .writer_down_after = 3, .hold_timeout = 30.0};
    json_t *v = json_object_get(root, "discovery");
    if (!v)
        return;
    if (!json_is_object(v)) {
        cfg_fail(c, "discovery", "expected an object, got %s", json_type_name(v));
        return;
    }
    check_keys(c, "discovery", v, keys);
    get_seconds(c, v, "probe_interval", "discovery.probe_interval", 0.05, 3600, &d->probe_interval);
    get_seconds(c, v, "probe_timeout", "discovery.probe_timeout", 0.05, 60, &d->probe_timeout);
    long long n;
    if (get_uint(c, v, "writer_down_after", "discovery.writer_down_after", 1, 100, &n))
        d->writer_down_after = (unsigned)n;
    get_seconds(c, v, "hold_timeout", "discovery.hold_timeout", 0, 3600, &d->hold_timeout);
}

static void get_owned_string(struct cfg_ctx *c, json_t *obj, const char *k, const char *key,
                             char **out)
{
    const char *s = NULL;
    if (get_string(c, obj, k, key, &s))
        *out = strdup(s);
}

static void parse_aws(struct cfg_ctx *c, json_t *root, struct ferry_aws_cfg *a)
{
    static const char *const keys[] = {"region", "poll_interval", "urgent_poll_interval",
                                       "lag_poll_interval",
                                       "endpoints", "ca_file", "credentials", NULL};
    static const char *const ekeys[] = {"rds", "monitoring", "sts", "imds", NULL};
    static const char *const sources[] = {"chain", "static", "env", "web_identity", "container",
                                          "imds", NULL};
    a->poll_interval = 300;   /* the fleet shares the RDS budget: aws_schedule.h */
    a->urgent_poll_interval = 60;   /* sized for a fleet of 1,000: aws_schedule.h */
    a->lag_poll_interval = 60;
    json_t *v = json_object_get(root, "aws");
    if (!v)
        return;
    if (!json_is_object(v)) {
        cfg_fail(c, "aws", "expected an object, got %s", json_type_name(v));
        return;
    }
    check_keys(c, "aws", v, keys);
    get_owned_string(c, v, "region", "aws.region", &a->region);
    get_seconds(c, v, "poll_interval", "aws.poll_interval", 1, 3600, &a->poll_interval);
    get_seconds(c, v, "urgent_poll_interval", "aws.urgent_poll_interval", 1, 3600,
                &a->urgent_poll_interval);
    get_seconds(c, v, "lag_poll_interval", "aws.lag_poll_interval", 1, 3600, &a->lag_poll_interval);
    get_owned_string(c, v, "ca_file", "aws.ca_file", &a->ca_file);
    const char *src = NULL;
    if (get_string(c, v, "credentials", "aws.credentials", &src)) {
        int found = -1;
        for (int i = 0; sources[i]; i++)
            if (strcmp(sources[i], src) == 0)
                found = i;
        if (found < 0 || found == 1)    /* "static" keys never live in the config file */
            cfg_fail(c, "aws.credentials",
                     "\"%s\" is not one of chain, env, web_identity, container, imds", src);
        else
            a->credentials = found;
    }
    json_t *e = json_object_get(v, "endpoints");
    if (e) {
        if (!json_is_object(e)) {
            cfg_fail(c, "aws.endpoints", "expected an object, got %s", json_type_name(e));
            return;
        }
        check_keys(c, "aws.endpoints", e, ekeys);
        get_owned_string(c, e, "rds", "aws.endpoints.rds", &a->rds_endpoint);
        get_owned_string(c, e, "monitoring", "aws.endpoints.monitoring", &a->monitoring_endpoint);
        get_owned_string(c, e, "sts", "aws.endpoints.sts", &a->sts_endpoint);
        get_owned_string(c, e, "imds", "aws.endpoints.imds", &a->imds_endpoint);
    }
}

/* listeners[].<name>: true (the defaults in *t), false (off), or an object
 * of idle / interval / count overriding them. */
static void parse_keepalive(struct cfg_ctx *c, json_t *v, const char *where, const char *name,
                            struct ferry_tcp_cfg *t)
{
    static const char *const keys[] = {"idle", "interval", "count", NULL};
    char key[KEY_MAX];
    subkey(key, where, ".");
    subkey(key, key, name);
    json_t *ka = json_object_get(v, name);
    if (!ka || json_is_true(ka))
        return;
    if (json_is_false(ka)) {
        t->keepalive = false;
        return;
    }
    if (!json_is_object(ka)) {
        cfg_fail(c, key, "expected true, false or an object of idle, interval, count; got %s",
                 json_type_name(ka));
        return;
    }
    check_keys(c, key, ka, keys);
    /* the kernel's bounds (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT) */
    static const struct { const char *k; long long hi; } limits[] = {
        {"idle", 32767}, {"interval", 32767}, {"count", 127}};
    uint16_t *out[] = {&t->keepalive_idle, &t->keepalive_interval, &t->keepalive_count};
    for (size_t i = 0; i < 3; i++) {
        char ikey[KEY_MAX];
        long long n;
        subkey(ikey, key, ".");
        if (get_uint(c, ka, limits[i].k, subkey(ikey, ikey, limits[i].k), 1, limits[i].hi, &n))
            *out[i] = (uint16_t)n;
    }
}

/* Idle clients and the TCP options of both sides (see struct ferry_tcp_cfg). */
static void parse_timeouts(struct cfg_ctx *c, json_t *v, const char *where,
                           struct ferry_listener_cfg *l)
{
    char key[KEY_MAX];
    subkey(key, where, ".client_idle_timeout");
    if (get_seconds(c, v, "client_idle_timeout", key, 0, 604800, &l->client_idle_timeout) &&
        l->client_idle_timeout > 0 && l->client_idle_timeout < 1)
        cfg_fail(c, key, "%g seconds: 0 turns it off, else at least 1 (idle sessions are "
                 "looked at once a second)", l->client_idle_timeout);
    l->client_tcp = (struct ferry_tcp_cfg){.keepalive = true, .keepalive_idle = 60,
                                           .keepalive_interval = 10, .keepalive_count = 6};
    parse_keepalive(c, v, where, "client_tcp_keepalive", &l->client_tcp);
    l->server_tcp = (struct ferry_tcp_cfg){.keepalive = true, .keepalive_idle = 10,
                                           .keepalive_interval = 5, .keepalive_count = 3,
                                           .user_timeout_ms = 30000};
    parse_keepalive(c, v, where, "server_tcp_keepalive", &l->server_tcp);
    double ut = 30;
    subkey(key, where, ".server_tcp_user_timeout");
    if (get_seconds(c, v, "server_tcp_user_timeout", key, 0, 3600, &ut))
        l->server_tcp.user_timeout_ms = (uint32_t)(ut * 1000.0 + 0.5);
}

/* A listener's count of clients (1..1000000), def when absent. */
static void get_client_limit(struct cfg_ctx *c, json_t *v, const char *where, const char *k,
                             uint32_t def, uint32_t *out)
{
    char key[KEY_MAX];
    long long n;
    *out = def;
    subkey(key, subkey(key, where, "."), k);
    if (get_uint(c, v, k, key, 1, 1000000, &n))
        *out = (uint32_t)n;
}

static void parse_listener(struct cfg_ctx *c, json_t *v, const char *where, struct ferry_listener_cfg *l)
{
    static const char *const keys[] = {"name", "protocol", "bind", "max_client_connections",
                                       "max_login_clients", "max_login_clients_per_source",
                                       "client_login_timeout", "connect_timeout", "session_buffer", "max_message_size", "probe",
                                       "aws_global_cluster", "global_writer_endpoint",
                                       "clusters", "auth", "tls",
                                       "backend_tls",
                                       "client_idle_timeout", "client_tcp_keepalive",
                                       "server_tcp_keepalive", "server_tcp_user_timeout", NULL};
    char key[KEY_MAX];
    if (!json_is_object(v)) {
        cfg_fail(c, where, "expected an object, got %s", json_type_name(v));
        return;
    }
    check_keys(c, where, v, keys);
    get_name(c, v, where, l->name);

    const char *proto = NULL;
    if (get_required_string(c, v, "protocol", where, key, &proto)) {
        if (strcmp(proto, "postgresql") == 0)
            l->protocol = FERRY_PROTO_POSTGRESQL;
        else if (strcmp(proto, "mysql") == 0)
            l->protocol = FERRY_PROTO_MYSQL;
        else
            cfg_fail(c, key, "\"%s\" is not one of postgresql, mysql", proto);
    }

    subkey(key, where, ".bind");
    get_hostport(c, v, "bind", key, &l->bind, true);

    long long n;
    get_client_limit(c, v, where, "max_client_connections", 10000, &l->max_client_connections);
    /* clients that have not logged in yet: bounded apart from the rest
     * (each may hold a backend connection in passthrough mode) */
    get_client_limit(c, v, where, "max_login_clients", 1024, &l->max_login_clients);
    get_client_limit(c, v, where, "max_login_clients_per_source", 256,
                     &l->max_login_clients_per_source);
    l->client_login_timeout = 15.0;
    subkey(key, where, ".client_login_timeout");
    get_seconds(c, v, "client_login_timeout", key, 0.1, 3600, &l->client_login_timeout);
    l->connect_timeout = 5.0;
    subkey(key, where, ".connect_timeout");
    get_seconds(c, v, "connect_timeout", key, 0.01, 300, &l->connect_timeout);
    l->session_buffer = 256 * 1024;
    subkey(key, where, ".session_buffer");
    if (get_uint(c, v, "session_buffer", key, 16384, 64LL * 1024 * 1024, &n))
        l->session_buffer = (size_t)n;

    l->max_message_size = 1024u * 1024 * 1024;
    subkey(key, where, ".max_message_size");
    if (get_uint(c, v, "max_message_size", key, 1024, 1024LL * 1024 * 1024, &n))
        l->max_message_size = (uint32_t)n;
    parse_timeouts(c, v, where, l);
    parse_probe(c, v, where, l);
    parse_auth(c, v, where, l);
    parse_tls(c, v, where, l);
    parse_backend_tls(c, v, where, l);
    const char *gid = NULL;
    subkey(key, where, ".aws_global_cluster");
    if (get_string(c, v, "aws_global_cluster", key, &gid)) {
        if (!valid_name(gid))
            cfg_fail(c, key, "\"%s\" must be 1-63 characters of A-Z a-z 0-9 _ . -", gid);
        else if (!l->probe_enabled)
            cfg_fail(c, key, "needs \"probe\": AWS confirms what the probes see, it never decides alone");
        else
            strcpy(l->aws_global_cluster, gid);
    }
    const char *gwe = NULL;
    subkey(key, where, ".global_writer_endpoint");
    if (get_string(c, v, "global_writer_endpoint", key, &gwe)) {
        if (!gwe[0] || strlen(gwe) >= FERRY_HOST_MAX || strpbrk(gwe, " :/[]"))
            cfg_fail(c, key, "\"%s\" must be a host name (no port)", gwe);
        else if (!l->probe_enabled)
            cfg_fail(c, key, "needs \"probe\": the global writer endpoint confirms what the probes see");
        else
            strcpy(l->global_writer_endpoint, gwe);
    }

    subkey(key, where, ".clusters");
    json_t *arr = json_object_get(v, "clusters");
    if (!arr) {
        cfg_fail(c, key, "required key is missing");
        return;
    }
    if (!json_is_array(arr)) {
        cfg_fail(c, key, "expected an array, got %s", json_type_name(arr));
        return;
    }
    if (json_array_size(arr) == 0) {
        cfg_fail(c, key, "a listener needs at least one cluster");
        return;
    }
    l->nclusters = json_array_size(arr);
    l->clusters = calloc(l->nclusters, sizeof *l->clusters);
    if (!l->clusters) {
        cfg_fail(c, key, "out of memory");
        return;
    }
    size_t writers = 0;
    for (size_t j = 0; j < l->nclusters && !c->failed; j++) {
        subkey_index(key, where, ".clusters", j);
        parse_cluster(c, json_array_get(arr, j), key, &l->clusters[j]);
        for (size_t k = 0; k < j && !c->failed; k++)
            if (strcmp(l->clusters[k].name, l->clusters[j].name) == 0)
                cfg_fail(c, key, "duplicate cluster name \"%s\"", l->clusters[j].name);
        if (l->clusters[j].writer && ++writers > 1) {
            subkey_index(key, where, ".clusters", j);
            subkey(key, key, ".writer");
            cfg_fail(c, key, "only one cluster per listener can be marked writer");
        }
    }
}

/* admin.*: also all that `ferry ctl -c` reads (ferry_config_load_admin). */
static void parse_admin(struct cfg_ctx *c, json_t *root, struct ferry_config *cfg)
{
    char why[256];
    cfg->admin_enabled = true;
    cfg->admin_max_connections = DEFAULT_ADMIN_MAX_CONNECTIONS;
    cfg->admin_max_connections_per_peer = DEFAULT_ADMIN_MAX_CONNECTIONS_PER_PEER;
    cfg->admin_request_timeout = DEFAULT_ADMIN_REQUEST_TIMEOUT;
    ferry_hostport_parse(DEFAULT_ADMIN_BIND, &cfg->admin_bind, why, sizeof why);
    json_t *admin = json_object_get(root, "admin");
    if (admin) {
        static const char *const akeys[] = {"bind", "token_file", "token_env", "max_connections",
                                            "max_connections_per_peer", "request_timeout",
                                            "allow_unauthenticated_writes", NULL};
        if (!json_is_object(admin)) {
            cfg_fail(c, "admin", "expected an object, got %s", json_type_name(admin));
        } else {
            check_keys(c, "admin", admin, akeys);
            json_t *b = json_object_get(admin, "bind");
            if (json_is_null(b))
                cfg->admin_enabled = false;
            else
                get_hostport(c, admin, "bind", "admin.bind", &cfg->admin_bind, false);
            const char *src = NULL;
            if (json_object_get(admin, "token_file") && json_object_get(admin, "token_env"))
                cfg_fail(c, "admin", "give only one of token_file, token_env");
            else if (get_string(c, admin, "token_file", "admin.token_file", &src))
                cfg->admin_token = read_secret_file(c, "admin.token_file", src);
            if (!c->failed && get_string(c, admin, "token_env", "admin.token_env", &src)) {
                const char *val = getenv(src);
                if (!val || !*val)
                    cfg_fail(c, "admin.token_env", "environment variable %s is not set", src);
                else
                    cfg->admin_token = strdup(val);
            }
            if (cfg->admin_token && strlen(cfg->admin_token) < 16)
                cfg_fail(c, "admin", "the admin token must be at least 16 characters");
            long long lim;
            if (get_uint(c, admin, "max_connections", "admin.max_connections", 16, 65536, &lim))
                cfg->admin_max_connections = (unsigned)lim;
            if (get_uint(c, admin, "max_connections_per_peer", "admin.max_connections_per_peer", 1,
                         65536, &lim))
                cfg->admin_max_connections_per_peer = (unsigned)lim;
            get_seconds(c, admin, "request_timeout", "admin.request_timeout", 0.5, 300,
                        &cfg->admin_request_timeout);
            if (!c->failed && cfg->admin_max_connections_per_peer > cfg->admin_max_connections)
                cfg_fail(c, "admin.max_connections_per_peer", "%u is above admin.max_connections (%u)",
                         cfg->admin_max_connections_per_peer, cfg->admin_max_connections);
            get_bool(c, admin, "allow_unauthenticated_writes", "admin.allow_unauthenticated_writes",
                     &cfg->admin_allow_unauthenticated_writes);
        }
    }
    if (!c->failed && ferry_config_admin_open(cfg) && !cfg->admin_allow_unauthenticated_writes) {
        char addr[FERRY_HOST_MAX + 16];
        ferry_hostport_format(&cfg->admin_bind, addr, sizeof addr);
        cfg_fail(c, "admin.bind", "%s is not a loopback address and no admin token is set: whoever "
                 "reaches it could POST /v1/pause, /v1/switchover, /v1/reload; set "
                 "admin.token_file or admin.token_env (or, knowingly, "
                 "admin.allow_unauthenticated_writes: true)", addr);
    }
}

static void parse_root(struct cfg_ctx *c, json_t *root, struct ferry_config *cfg)
{
    static const char *const keys[] = {"workers", "log_level", "log_format", "shutdown_timeout",
                                       "watch_config", "admin", "discovery", "aws", "listeners",
                                       NULL};
    if (!json_is_object(root)) {
        cfg_fail(c, NULL, "the top level must be an object, got %s", json_type_name(root));
        return;
    }
    if (c->admin_only) {
        parse_admin(c, root, cfg);
        return;
    }
    check_keys(c, "", root, keys);

    long long n = 0;
    get_uint(c, root, "workers", "workers", 0, 256, &n);
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus > 0 ? cpus : 1;
    }
    cfg->workers = (unsigned)n;

    const char *lvl = NULL;
    cfg->log_level = FERRY_LOG_INFO;
    if (get_string(c, root, "log_level", "log_level", &lvl)) {
        static const char *const names[] = {"debug", "info", "warn", "error"};
        bool ok = false;
        for (int i = 0; i < 4; i++)
            if (strcmp(lvl, names[i]) == 0) {
                cfg->log_level = (enum ferry_log_level)i;
                ok = true;
            }
        if (!ok)
            cfg_fail(c, "log_level", "\"%s\" is not one of debug, info, warn, error", lvl);
    }

    const char *fmt = NULL;
    cfg->log_format = FERRY_LOG_TEXT;
    if (get_string(c, root, "log_format", "log_format", &fmt)) {
        if (strcmp(fmt, "json") == 0)
            cfg->log_format = FERRY_LOG_JSON;
        else if (strcmp(fmt, "text") != 0)
            cfg_fail(c, "log_format", "\"%s\" is not one of text, json", fmt);
    }

    cfg->shutdown_timeout = 30;
    get_seconds(c, root, "shutdown_timeout", "shutdown_timeout", 0, 3600, &cfg->shutdown_timeout);

    cfg->watch_config = true;
    get_bool(c, root, "watch_config", "watch_config", &cfg->watch_config);

    parse_discovery(c, root, &cfg->discovery);
    parse_aws(c, root, &cfg->aws);

    parse_admin(c, root, cfg);

    json_t *arr = json_object_get(root, "listeners");
    if (!arr) {
        cfg_fail(c, "listeners", "required key is missing");
        return;
    }
    if (!json_is_array(arr)) {
        cfg_fail(c, "listeners", "expected an array, got %s", json_type_name(arr));
        return;
    }
    if (json_array_size(arr) == 0) {
        cfg_fail(c, "listeners", "at least one listener is required");
        return;
    }
    cfg->nlisteners = json_array_size(arr);
    cfg->listeners = calloc(cfg->nlisteners, sizeof *cfg->listeners);
    if (!cfg->listeners) {
        cfg_fail(c, "listeners", "out of memory");
        return;
    }
    char key[KEY_MAX];
    for (size_t i = 0; i < cfg->nlisteners && !c->failed; i++) {
        struct ferry_listener_cfg *l = &cfg->listeners[i];
        subkey_index(key, "", "listeners", i);
        parse_listener(c, json_array_get(arr, i), key, l);
        for (size_t k = 0; k < i && !c->failed; k++) {
            if (strcmp(cfg->listeners[k].name, l->name) == 0) {
                subkey_index(key, "", "listeners", i);
                subkey(key, key, ".name");
                cfg_fail(c, key, "duplicate listener name \"%s\"", l->name);
            } else if (ferry_hostport_collide(&cfg->listeners[k].bind, &l->bind)) {
                char other[300];
                ferry_hostport_format(&cfg->listeners[k].bind, other, sizeof other);
                subkey_index(key, "", "listeners", i);
                subkey(key, key, ".bind");
                cfg_fail(c, key, "duplicate bind address (listeners[%zu] binds %s)", k, other);
            }
        }
        if (!c->failed && cfg->admin_enabled && ferry_hostport_collide(&cfg->admin_bind, &l->bind)) {
            subkey_index(key, "", "listeners", i);
            subkey(key, key, ".bind");
            cfg_fail(c, key, "same address as admin.bind");
        }
    }
}

static void wipe_free(char *secret)
{
    if (secret) {
        memset(secret, 0, strlen(secret));
        free(secret);
    }
}

static void config_free(struct ferry_config *cfg)
{
    if (!cfg)
        return;
    if (cfg->on_free)
        cfg->on_free(cfg);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        free(cfg->listeners[i].clusters);
        wipe_free(cfg->listeners[i].probe_password);
        for (size_t u = 0; u < cfg->listeners[i].nusers; u++) {
            struct ferry_user_cfg *user = &cfg->listeners[i].users[u];
            wipe_free(user->password);
            wipe_free(user->scram_verifier);
            free(user->derived);    /* a pg_scram_secret: its keys stand in for the password */
        }
        free(cfg->listeners[i].users);
        free(cfg->listeners[i].tls_cert_file);
        free(cfg->listeners[i].tls_key_file);
        free(cfg->listeners[i].backend_tls_ca_file);
        free(cfg->listeners[i].tls_ciphers);
        free(cfg->listeners[i].tls_ciphersuites);
    }
    free(cfg->listeners);
    wipe_free(cfg->admin_token);
    free(cfg->aws.region);
    free(cfg->aws.rds_endpoint);
    free(cfg->aws.monitoring_endpoint);
    free(cfg->aws.sts_endpoint);
    free(cfg->aws.imds_endpoint);
    free(cfg->aws.ca_file);
    free(cfg->path);
    free(cfg);
}

/* Keys whose value is a secret written inline in ferry.json. */
static bool secret_key(const char *k, size_t n)
{
    static const char *const keys[] = {"password", "scram_verifier", NULL};
    if (memchr(k, '\\', n))
        return true;    /* an escaped key may spell one of them */
    for (size_t i = 0; keys[i]; i++)
        if (strlen(keys[i]) == n && memcmp(k, keys[i], n) == 0)
            return true;
    return false;
}

/* True when byte offset pos of the JSON text lies in the value of a secret
 * key (inside its string, just past its closing quote, or in a bare token
 * after the colon): jansson's
 * "near '…'" excerpt is then the secret's own text. A small scan of the
 * text's tokens up to pos, not a parser: it errs towards true. */
static bool json_pos_in_secret(const char *text, size_t pos)
{
    const char *str = NULL;     /* the string being scanned, NULL outside */
    const char *key = NULL;     /* the last string closed, while it may be a key */
    size_t keylen = 0;
    bool secret = false;        /* after "<secret key>": until the value ends */
    bool str_secret = false;    /* the string being scanned is a secret value */
    bool last_secret = false;   /* the string closed at i - 1 was one */
    for (size_t i = 0; i < pos && text[i]; i++) {
        char ch = text[i];
        last_secret = false;
        if (str) {
            if (ch == '\\' && i + 1 < pos && text[i + 1])
                i++;
            else if (ch == '"') {
                if (str_secret)
                    secret = false, last_secret = true;     /* the value is complete */
                else
                    key = str + 1, keylen = (size_t)(text + i - key);
                str = NULL;
            }
            continue;
        }
        if (ch == '"') {
            str = text + i;
            str_secret = secret;
        } else if (ch == ':') {
            secret = key && secret_key(key, keylen);
            key = NULL;
        } else if (ch == ',' || ch == '{' || ch == '}' || ch == '[' || ch == ']') {
            secret = false;
            key = NULL;
        }
    }
    /* jansson checks a string's escapes and UTF-8 once it has read the
     * closing quote: an error there stops just past it */
    return str ? str_secret : secret || last_secret;
}

static struct ferry_config *parse_text(const char *path, const char *text, bool admin_only,
                                       char err[FERRY_ERR_MAX])
{
    struct cfg_ctx c = {.path = path, .err = err, .failed = false, .admin_only = admin_only};
    json_error_t jerr;
    /* Duplicate keys are rejected: which one wins is otherwise a surprise. */
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        /* jansson quotes the token it stopped in ("near '…'") and some of
         * its bytes ("invalid Unicode '\uD800'", "byte 0xff"): for a secret,
         * keep only the words of the reason */
        bool hide = json_pos_in_secret(text, (size_t)jerr.position);
        if (hide) {
            char *near = strstr(jerr.text, " near ");
            if (near)
                *near = '\0';
            size_t n = 0;
            while (jerr.text[n] && (isalpha((unsigned char)jerr.text[n]) || jerr.text[n] == ' '))
                n++;
            while (n && jerr.text[n - 1] == ' ')
                n--;
            jerr.text[n] = '\0';
        }
        snprintf(err, FERRY_ERR_MAX, "%s:%d:%d: invalid JSON: %s%s", path, jerr.line, jerr.column,
                 jerr.text, hide ? " (in a secret value, not shown)" : "");
        return NULL;
    }
    struct ferry_config *cfg = calloc(1, sizeof *cfg);
    if (!cfg || !(cfg->path = strdup(path))) {
        cfg_fail(&c, NULL, "out of memory");
    } else {
        parse_root(&c, root, cfg);
    }
    json_decref(root);
    if (c.failed) {
        config_free(cfg);
        return NULL;
    }
    cfg->refs = 1;
    return cfg;
}

struct ferry_config *ferry_config_parse(const char *path, const char *text, char err[FERRY_ERR_MAX])
{
    return parse_text(path, text, false, err);
}

static struct ferry_config *load(const char *path, bool admin_only, char err[FERRY_ERR_MAX])
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, FERRY_ERR_MAX, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    /* Config files are small; a cap keeps a wrong path (a device, a huge
     * file) from eating memory. */
    enum { MAX_CONFIG = 4 * 1024 * 1024 };
    char *text = malloc(MAX_CONFIG + 1);
    size_t n = text ? fread(text, 1, MAX_CONFIG + 1, f) : 0;
    int rerr = ferror(f) ? errno : 0;
    fclose(f);
    if (!text) {
        snprintf(err, FERRY_ERR_MAX, "%s: out of memory", path);
        return NULL;
    }
    if (rerr) {
        snprintf(err, FERRY_ERR_MAX, "%s: cannot read: %s", path, strerror(rerr));
        free(text);
        return NULL;
    }
    if (n > MAX_CONFIG) {
        snprintf(err, FERRY_ERR_MAX, "%s: file larger than %d bytes", path, MAX_CONFIG);
        free(text);
        return NULL;
    }
    text[n] = '\0';
    if (strlen(text) != n) {
        snprintf(err, FERRY_ERR_MAX, "%s: invalid JSON: file contains a NUL byte", path);
        free(text);
        return NULL;
    }
    struct ferry_config *cfg = parse_text(path, text, admin_only, err);
    free(text);
    return cfg;
}

struct ferry_config *ferry_config_load(const char *path, char err[FERRY_ERR_MAX])
{
    return load(path, false, err);
}

struct ferry_config *ferry_config_load_admin(const char *path, char err[FERRY_ERR_MAX])
{
    return load(path, true, err);
}

struct ferry_config *ferry_config_ref(struct ferry_config *cfg)
{
    if (cfg)
        __atomic_add_fetch(&cfg->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void ferry_config_unref(struct ferry_config *cfg)
{
    if (cfg && __atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(cfg);
}

const struct ferry_listener_cfg *ferry_config_listener(const struct ferry_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (strcmp(cfg->listeners[i].name, name) == 0)
            return &cfg->listeners[i];
    return NULL;
}

const struct ferry_cluster_cfg *ferry_listener_cluster(const struct ferry_listener_cfg *l,
                                                       const char *name)
{
    for (size_t i = 0; i < l->nclusters; i++)
        if (strcmp(l->clusters[i].name, name) == 0)
            return &l->clusters[i];
    return NULL;
}

const struct ferry_user_cfg *ferry_listener_user(const struct ferry_listener_cfg *l, const char *name)
{
    for (size_t i = 0; i < l->nusers; i++)
        if (strcmp(l->users[i].name, name) == 0)
            return &l->users[i];
    return NULL;
}

const struct ferry_cluster_cfg *ferry_listener_static_writer(const struct ferry_listener_cfg *l)
{
    for (size_t i = 0; i < l->nclusters; i++)
        if (l->clusters[i].writer)
            return &l->clusters[i];
    return &l->clusters[0];
}

const char *ferry_proto_name(enum ferry_proto p)
{
    return p == FERRY_PROTO_MYSQL ? "mysql" : "postgresql";
}

const char *ferry_log_level_name(enum ferry_log_level l)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    return (unsigned)l < 4 ? names[l] : "?";
}
