/* ferry.json loader: every accepted default and every rejection message.
 * Messages are compared whole: they are the operator's interface. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "ferry/config.h"
#include "unit.h"

#define L0 "\"listeners\":[{\"name\":\"pg\",\"protocol\":\"postgresql\",\"bind\":\"127.0.0.1:6432\","
#define CL "\"clusters\":[{\"name\":\"a\",\"endpoint\":\"127.0.0.1:5432\"}]"

static char err[FERRY_ERR_MAX];

static void test_minimal_defaults(void)
{
    struct ferry_config *c = ferry_config_parse("ferry.json", "{" L0 CL "}]}", err);
    ASSERT_TRUE(c != NULL);
    ASSERT_TRUE(c->workers >= 1);
    ASSERT_EQ_INT(c->log_level, FERRY_LOG_INFO);
    ASSERT_TRUE(c->shutdown_timeout == 30);
    ASSERT_TRUE(c->admin_enabled);
    ASSERT_EQ_STR(c->admin_bind.host, "127.0.0.1");
    ASSERT_EQ_INT(c->admin_bind.port, 9187);
    ASSERT_EQ_INT(c->admin_max_connections, 1024);
    ASSERT_EQ_INT(c->admin_max_connections_per_peer, 16);
    ASSERT_TRUE(c->admin_request_timeout == 5.0);
    ASSERT_EQ_INT(c->nlisteners, 1);
    const struct ferry_listener_cfg *l = &c->listeners[0];
    ASSERT_EQ_STR(l->name, "pg");
    ASSERT_EQ_INT(l->protocol, FERRY_PROTO_POSTGRESQL);
    ASSERT_EQ_INT(l->bind.port, 6432);
    ASSERT_EQ_INT(l->max_client_connections, 10000);
    ASSERT_EQ_INT(l->max_login_clients, 1024);
    ASSERT_EQ_INT(l->max_login_clients_per_source, 256);
    ASSERT_TRUE(l->client_login_timeout == 15.0);
    ASSERT_TRUE(l->connect_timeout == 5.0);
    ASSERT_EQ_INT(l->session_buffer, 262144);
    ASSERT_TRUE(l->client_idle_timeout == 0);       /* off */
    ASSERT_TRUE(l->client_tcp.keepalive && l->client_tcp.user_timeout_ms == 0);
    ASSERT_EQ_INT(l->client_tcp.keepalive_idle, 60);
    ASSERT_EQ_INT(l->client_tcp.keepalive_interval, 10);
    ASSERT_EQ_INT(l->client_tcp.keepalive_count, 6);
    ASSERT_TRUE(l->server_tcp.keepalive);
    ASSERT_EQ_INT(l->server_tcp.keepalive_idle, 10);
    ASSERT_EQ_INT(l->server_tcp.keepalive_interval, 5);
    ASSERT_EQ_INT(l->server_tcp.keepalive_count, 3);
    ASSERT_EQ_INT(l->server_tcp.user_timeout_ms, 30000);
    ASSERT_EQ_INT(l->nclusters, 1);
    ASSERT_EQ_STR(ferry_listener_static_writer(l)->name, "a");
    ferry_config_unref(c);
}

static void test_full_config(void)
{
    const char *json =
        "{\"workers\":3,\"log_level\":\"debug\",\"shutdown_timeout\":2.5,"
        "\"admin\":{\"bind\":\"[::1]:9000\",\"max_connections\":64,\"max_connections_per_peer\":64,"
        "\"request_timeout\":0.5},"
        "\"listeners\":[{\"name\":\"my\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"0.0.0.0:3307\","
        "\"max_client_connections\":5,\"connect_timeout\":0.5,\"session_buffer\":65536,"
        "\"client_idle_timeout\":300,\"client_tcp_keepalive\":false,"
        "\"server_tcp_keepalive\":{\"count\":9},\"server_tcp_user_timeout\":0,"
        "\"max_login_clients\":3,\"max_login_clients_per_source\":2,\"client_login_timeout\":1.5,"
        "\"clusters\":[{\"name\":\"us-east-1\",\"endpoint\":\"db.example:3306\"},"
        "{\"name\":\"eu-west-1\",\"endpoint\":\"[fd00::1]:3306\",\"writer\":true}]}]}";
    struct ferry_config *c = ferry_config_parse("ferry.json", json, err);
    ASSERT_TRUE(c != NULL);
    ASSERT_EQ_INT(c->workers, 3);
    ASSERT_EQ_INT(c->log_level, FERRY_LOG_DEBUG);
    ASSERT_TRUE(c->shutdown_timeout == 2.5);
    ASSERT_EQ_STR(c->admin_bind.host, "::1");
    ASSERT_EQ_INT(c->admin_max_connections, 64);
    ASSERT_EQ_INT(c->admin_max_connections_per_peer, 64);
    ASSERT_TRUE(c->admin_request_timeout == 0.5);
    const struct ferry_listener_cfg *l = &c->listeners[0];
    ASSERT_EQ_INT(l->protocol, FERRY_PROTO_MYSQL);
    ASSERT_EQ_INT(l->max_client_connections, 5);
    ASSERT_EQ_INT(l->max_login_clients, 3);
    ASSERT_EQ_INT(l->max_login_clients_per_source, 2);
    ASSERT_TRUE(l->client_login_timeout == 1.5);
    ASSERT_EQ_INT(l->session_buffer, 65536);
    ASSERT_TRUE(l->client_idle_timeout == 300);
    ASSERT_TRUE(!l->client_tcp.keepalive);
    ASSERT_TRUE(l->server_tcp.keepalive);
    ASSERT_EQ_INT(l->server_tcp.keepalive_idle, 10);    /* the others keep their defaults */
    ASSERT_EQ_INT(l->server_tcp.keepalive_count, 9);
    ASSERT_EQ_INT(l->server_tcp.user_timeout_ms, 0);    /* the kernel's */
    ASSERT_EQ_STR(l->clusters[0].endpoint.host, "db.example");
    ASSERT_EQ_STR(ferry_listener_static_writer(l)->name, "eu-west-1");
    ASSERT_EQ_STR(ferry_listener_static_writer(l)->endpoint.host, "fd00::1");
    ASSERT_TRUE(ferry_config_listener(c, "my") == l);
    ASSERT_TRUE(ferry_config_listener(c, "nope") == NULL);
    /* references: a second holder keeps it alive */
    ASSERT_TRUE(ferry_config_ref(c) == c);
    ferry_config_unref(c);
    ASSERT_EQ_STR(c->listeners[0].name, "my");
    ferry_config_unref(c);
}

static void test_discovery_and_probe(void)
{
    struct ferry_config *c = ferry_config_parse("f.json", "{" L0 CL "}]}", err);
    ASSERT_TRUE(c != NULL);
    /* secure by default: the server's certificate and name are verified,
     * and no password goes to an unverified one */
    ASSERT_EQ_STR(c->listeners[0].backend_tls_mode, "verify-full");
    ASSERT_TRUE(!c->listeners[0].backend_allow_insecure_password);
    ASSERT_TRUE(c->discovery.probe_interval == 1.0 && c->discovery.probe_timeout == 1.0);
    ASSERT_EQ_INT(c->discovery.writer_down_after, 3);
    ASSERT_TRUE(c->discovery.hold_timeout == 30.0);
    ASSERT_TRUE(!c->listeners[0].probe_enabled);
    ferry_config_unref(c);

    setenv("FERRY_UNIT_PW", "s3cret", 1);
    c = ferry_config_parse("f.json",
                           "{\"discovery\":{\"probe_interval\":0.25,\"probe_timeout\":0.5,"
                           "\"writer_down_after\":2,\"hold_timeout\":5}," L0
                           "\"probe\":{\"user\":\"mon\",\"password_env\":\"FERRY_UNIT_PW\"},"
                           "\"clusters\":[{\"name\":\"a\",\"region\":\"us-east-1\",\"endpoint\":\"h:1\"}]}]}",
                           err);
    ASSERT_TRUE(c != NULL);
    ASSERT_TRUE(c->discovery.probe_interval == 0.25 && c->discovery.hold_timeout == 5);
    ASSERT_EQ_INT(c->discovery.writer_down_after, 2);
    const struct ferry_listener_cfg *l = &c->listeners[0];
    ASSERT_TRUE(l->probe_enabled);
    ASSERT_EQ_STR(l->probe_user, "mon");
    ASSERT_EQ_STR(l->probe_password, "s3cret");
    ASSERT_EQ_STR(l->probe_database, "postgres");
    ASSERT_EQ_STR(l->clusters[0].region, "us-east-1");
    ASSERT_EQ_STR(l->clusters[0].reader_endpoint.host, "");
    ASSERT_TRUE(c->aws.poll_interval == 300 && c->aws.urgent_poll_interval == 60);
    ferry_config_unref(c);
    c = ferry_config_parse("f.json",
                           "{" L0 "\"probe\":{\"user\":\"mon\"},"
                           "\"global_writer_endpoint\":\"g1.global-x.global.rds.example.test\","
                           "\"clusters\":[{\"name\":\"a\",\"endpoint\":\"w.example.test:1\","
                           "\"reader_endpoint\":\"r.example.test:2\"}]}]}",
                           err);
    ASSERT_TRUE(c != NULL);
    ASSERT_EQ_STR(c->listeners[0].global_writer_endpoint, "g1.global-x.global.rds.example.test");
    ASSERT_EQ_STR(c->listeners[0].clusters[0].reader_endpoint.host, "r.example.test");
    ASSERT_EQ_INT(c->listeners[0].clusters[0].reader_endpoint.port, 2);
    ferry_config_unref(c);

    char path[] = "/tmp/ferry-unit-pw-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_TRUE(fd >= 0);
    ASSERT_TRUE(write(fd, "from-file\n", 10) == 10);
    close(fd);
    char json[512];
    snprintf(json, sizeof json,
             "{" L0 "\"probe\":{\"user\":\"m\",\"password_file\":\"%s\",\"database\":\"d\"}," CL "}]}",
             path);
    c = ferry_config_parse("f.json", json, err);
    unlink(path);
    ASSERT_TRUE(c != NULL);
    ASSERT_EQ_STR(c->listeners[0].probe_password, "from-file");
    ASSERT_EQ_STR(c->listeners[0].probe_database, "d");
    ferry_config_unref(c);
}

static void test_terminated_auth_users(void)
{
    setenv("FERRY_UNIT_APP_PW", "app-secret", 1);
    struct ferry_config *c = ferry_config_parse(
        "f.json",
        "{" L0 "\"auth\":{\"mode\":\"terminated\",\"users\":["
        "{\"name\":\"app\",\"password_env\":\"FERRY_UNIT_APP_PW\"},"
        "{\"name\":\"legacy\",\"password\":\"l\",\"method\":\"md5\"},"
        "{\"name\":\"ci\",\"password\":\"c\",\"method\":\"trust\","
        "\"scram_verifier\":\"SCRAM-SHA-256$4096:c2FsdA==$a:b\"}]}," CL "}]}",
        err);
    ASSERT_TRUE(c != NULL);
    const struct ferry_listener_cfg *l = &c->listeners[0];
    ASSERT_TRUE(l->auth_terminated);
    ASSERT_EQ_INT(l->nusers, 3);
    const struct ferry_user_cfg *u = ferry_listener_user(l, "app");
    ASSERT_TRUE(u != NULL && u->method == FERRY_AUTH_SCRAM && u->scram_verifier == NULL);
    ASSERT_EQ_STR(u->password, "app-secret");
    ASSERT_TRUE(ferry_listener_user(l, "legacy")->method == FERRY_AUTH_MD5);
    ASSERT_TRUE(ferry_listener_user(l, "ci")->method == FERRY_AUTH_TRUST);
    ASSERT_EQ_STR(ferry_listener_user(l, "ci")->scram_verifier, "SCRAM-SHA-256$4096:c2FsdA==$a:b");
    ASSERT_TRUE(ferry_listener_user(l, "nobody") == NULL);
    ferry_config_unref(c);

    /* passthrough is the default: no users needed */
    c = ferry_config_parse("f.json", "{" L0 "\"auth\":{\"mode\":\"passthrough\"}," CL "}]}", err);
    ASSERT_TRUE(c != NULL && !c->listeners[0].auth_terminated && c->listeners[0].nusers == 0);
    ferry_config_unref(c);
}

static void test_admin_disabled(void)
{
    struct ferry_config *c = ferry_config_parse("f.json", "{\"admin\":{\"bind\":null}," L0 CL "}]}", err);
    ASSERT_TRUE(c != NULL);
    ASSERT_TRUE(!c->admin_enabled);
    ferry_config_unref(c);
}

/* Each row: a whole document and the exact message it must produce. */
static const struct {
    const char *json;
    const char *want;
} bad[] = {
    {"{" L0 CL "}],}", "ferry.json:1:132: invalid JSON: string or '}' expected near '}'"},
    {"[]", "ferry.json: the top level must be an object, got an array"},
    {"{}", "ferry.json: listeners: required key is missing"},
    {"{\"listeners\":[]}", "ferry.json: listeners: at least one listener is required"},
    {"{\"listeners\":{}}", "ferry.json: listeners: expected an array, got an object"},
    {"{\"wrokers\":1," L0 CL "}]}", "ferry.json: wrokers: unknown key"},
    {"{\"workers\":\"2\"," L0 CL "}]}", "ferry.json: workers: expected an integer, got a string"},
    {"{\"workers\":300," L0 CL "}]}", "ferry.json: workers: 300 out of range 0..256"},
    {"{\"workers\":1.5," L0 CL "}]}", "ferry.json: workers: expected an integer, got a number"},
    {"{\"log_level\":\"loud\"," L0 CL "}]}",
     "ferry.json: log_level: \"loud\" is not one of debug, info, warn, error"},
    {"{\"shutdown_timeout\":-1," L0 CL "}]}",
     "ferry.json: shutdown_timeout: -1 seconds out of range 0..3600"},
    {"{\"shutdown_timeout\":true," L0 CL "}]}",
     "ferry.json: shutdown_timeout: expected a number of seconds, got a boolean"},
    {"{\"admin\":{\"bind\":\"localhost\"}," L0 CL "}]}",
     "ferry.json: admin.bind: \"localhost\" is not host:port"},
    {"{\"admin\":{\"port\":1}," L0 CL "}]}", "ferry.json: admin.port: unknown key"},
    {"{\"admin\":{\"max_connections\":8}," L0 CL "}]}",
     "ferry.json: admin.max_connections: 8 out of range 16..65536"},
    {"{\"admin\":{\"max_connections\":32,\"max_connections_per_peer\":33}," L0 CL "}]}",
     "ferry.json: admin.max_connections_per_peer: 33 is above admin.max_connections (32)"},
    {"{\"admin\":{\"max_connections_per_peer\":0}," L0 CL "}]}",
     "ferry.json: admin.max_connections_per_peer: 0 out of range 1..65536"},
    {"{\"admin\":{\"request_timeout\":0.1}," L0 CL "}]}",
     "ferry.json: admin.request_timeout: 0.1 seconds out of range 0.5..300"},
    {"{\"admin\":{\"bind\":\"127.0.0.1:6432\"}," L0 CL "}]}",
     "ferry.json: listeners[0].bind: same address as admin.bind"},
    {"{\"listeners\":[{\"name\":\"pg\",\"protocol\":\"postgresql\",\"bind\":\"127.0.0.1:70000\"," CL "}]}",
     "ferry.json: listeners[0].bind: port 70000 out of range"},
    {"{\"listeners\":[{\"name\":\"pg\",\"protocol\":\"postgresql\",\"bind\":\"127.0.0.1:0\"," CL "}]}",
     "ferry.json: listeners[0].bind: port 0 out of range"},
    {"{\"listeners\":[{\"name\":\"pg\",\"protocol\":\"postgresql\",\"bind\":\"127.0.0.1:x1\"," CL "}]}",
     "ferry.json: listeners[0].bind: \"127.0.0.1:x1\": port is not a number"},
    {"{\"listeners\":[{\"name\":\"pg\",\"protocol\":\"postgresql\",\"bind\":\"::1:5432\"," CL "}]}",
     "ferry.json: listeners[0].bind: \"::1:5432\": write IPv6 addresses as [addr]:port"},
    {"{\"listeners\":[{\"name\":\"pg\",\"protocol\":\"postgresql\"," CL "}]}",
     "ferry.json: listeners[0].bind: required key is missing"},
    {"{\"listeners\":[{\"name\":\"pg\",\"protocol\":\"oracle\",\"bind\":\"127.0.0.1:1\"," CL "}]}",
     "ferry.json: listeners[0].protocol: \"oracle\" is not one of postgresql, mysql"},
    {"{\"listeners\":[{\"name\":\"p g\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:1\"," CL "}]}",
     "ferry.json: listeners[0].name: \"p g\" must be 1-63 characters of A-Z a-z 0-9 _ . -"},
    {"{\"listeners\":[{\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:1\"," CL "}]}",
     "ferry.json: listeners[0].name: required key is missing"},
    {"{" L0 "\"clusters\":[]}]}", "ferry.json: listeners[0].clusters: a listener needs at least one cluster"},
    {"{" L0 "\"port\":1," CL "}]}", "ferry.json: listeners[0].port: unknown key"},
    {"{" L0 "\"max_client_connections\":0," CL "}]}",
     "ferry.json: listeners[0].max_client_connections: 0 out of range 1..1000000"},
    {"{" L0 "\"max_login_clients\":0," CL "}]}",
     "ferry.json: listeners[0].max_login_clients: 0 out of range 1..1000000"},
    {"{" L0 "\"max_login_clients_per_source\":\"8\"," CL "}]}",
     "ferry.json: listeners[0].max_login_clients_per_source: expected an integer, got a string"},
    {"{" L0 "\"client_login_timeout\":0," CL "}]}",
     "ferry.json: listeners[0].client_login_timeout: 0 seconds out of range 0.1..3600"},
    {"{" L0 "\"connect_timeout\":0," CL "}]}",
     "ferry.json: listeners[0].connect_timeout: 0 seconds out of range 0.01..300"},
    {"{" L0 "\"session_buffer\":1024," CL "}]}",
     "ferry.json: listeners[0].session_buffer: 1024 out of range 16384..67108864"},
    {"{" L0 "\"clusters\":[{\"name\":\"a\"}]}]}",
     "ferry.json: listeners[0].clusters[0].endpoint: required key is missing"},
    {"{" L0 "\"clusters\":[{\"name\":\"a\",\"endpoint\":\"h:1\",\"writer\":1}]}]}",
     "ferry.json: listeners[0].clusters[0].writer: expected a boolean, got an integer"},
    {"{" L0 "\"clusters\":[{\"name\":\"a\",\"endpoint\":\"h:1\",\"role\":\"w\"}]}]}",
     "ferry.json: listeners[0].clusters[0].role: unknown key"},
    {"{" L0 "\"clusters\":[{\"name\":\"a\",\"endpoint\":\"h:1\"},{\"name\":\"a\",\"endpoint\":\"h:2\"}]}]}",
     "ferry.json: listeners[0].clusters[1]: duplicate cluster name \"a\""},
    {"{" L0 "\"clusters\":[{\"name\":\"a\",\"endpoint\":\"h:1\",\"writer\":true},"
     "{\"name\":\"b\",\"endpoint\":\"h:2\",\"writer\":true}]}]}",
     "ferry.json: listeners[0].clusters[1].writer: only one cluster per listener can be marked writer"},
    {"{\"listeners\":[{\"name\":\"a\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:1\"," CL "},"
     "{\"name\":\"b\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:1\"," CL "}]}",
     "ferry.json: listeners[1].bind: duplicate bind address (listeners[0] binds 127.0.0.1:1)"},
    {"{\"listeners\":[{\"name\":\"a\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"0.0.0.0:1\"," CL "},"
     "{\"name\":\"b\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:1\"," CL "}]}",
     "ferry.json: listeners[1].bind: duplicate bind address (listeners[0] binds 0.0.0.0:1)"},
    {"{\"listeners\":[{\"name\":\"a\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:1\"," CL "},"
     "{\"name\":\"a\",\"protocol\":\"mysql\",\"backend_tls\":{\"mode\":\"disabled\"},\"bind\":\"127.0.0.1:2\"," CL "}]}",
     "ferry.json: listeners[1].name: duplicate listener name \"a\""},
    {"{\"discovery\":{\"interval\":1}," L0 CL "}]}", "ferry.json: discovery.interval: unknown key"},
    {"{\"discovery\":{\"writer_down_after\":0}," L0 CL "}]}",
     "ferry.json: discovery.writer_down_after: 0 out of range 1..100"},
    {"{\"discovery\":{\"probe_timeout\":\"1s\"}," L0 CL "}]}",
     "ferry.json: discovery.probe_timeout: expected a number of seconds, got a string"},
    {"{" L0 "\"auth\":{\"mode\":\"terminated\"}," CL "}]}",
     "ferry.json: listeners[0].auth.users: required key is missing (terminated mode checks clients against it)"},
    {"{" L0 "\"auth\":{\"mode\":\"open\"}," CL "}]}",
     "ferry.json: listeners[0].auth.mode: \"open\" is not one of passthrough, terminated"},
    {"{" L0 "\"auth\":{\"mode\":\"terminated\",\"users\":[{\"name\":\"app\"}]}," CL "}]}",
     "ferry.json: listeners[0].auth.users[0]: needs the user's backend password (password, password_env or password_file)"},
    {"{" L0 "\"auth\":{\"mode\":\"terminated\",\"users\":[{\"name\":\"app\",\"password\":\"p\",\"method\":\"plain\"}]}," CL "}]}",
     "ferry.json: listeners[0].auth.users[0].method: \"plain\" is not one of scram-sha-256, md5, trust"},
    {"{" L0 "\"auth\":{\"mode\":\"terminated\",\"users\":[{\"name\":\"a\",\"password\":\"p\"},{\"name\":\"a\",\"password\":\"q\"}]}," CL "}]}",
     "ferry.json: listeners[0].auth.users[1]: user \"a\" is listed twice"},
    {"{" L0 "\"auth\":{\"mode\":\"terminated\",\"users\":[{\"name\":\"a\",\"password\":\"p\",\"scram_verifier\":\"md5abc\"}]}," CL "}]}",
     "ferry.json: listeners[0].auth.users[0].scram_verifier: expected \"SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>\""},
    {"{\"listeners\":[{\"name\":\"my\",\"protocol\":\"mysql\",\"bind\":\"127.0.0.1:1\",\"auth\":{\"mode\":\"terminated\",\"users\":[{\"name\":\"a\",\"password\":\"p\",\"method\":\"md5\"}]}," CL "}]}",
     "ferry.json: listeners[0].auth.users[0].method: \"md5\" is not one of mysql_native_password, caching_sha2_password"},
    {"{\"listeners\":[{\"name\":\"my\",\"protocol\":\"mysql\",\"bind\":\"127.0.0.1:1\",\"backend_tls\":{\"mode\":\"required\"}," CL "}]}",
     "ferry.json: listeners[0].backend_tls.mode: mysql listeners take TLS only with \"auth\": {\"mode\": \"terminated\"} (ferry must own the handshake); the default is verify_identity, so a passthrough listener sets \"backend_tls\": {\"mode\": \"disabled\"} explicitly"},
    /* the secure default is an error for a passthrough mysql listener that says nothing */
    {"{\"listeners\":[{\"name\":\"my\",\"protocol\":\"mysql\",\"bind\":\"127.0.0.1:1\"," CL "}]}",
     "ferry.json: listeners[0].backend_tls.mode: mysql listeners take TLS only with \"auth\": {\"mode\": \"terminated\"} (ferry must own the handshake); the default is verify_identity, so a passthrough listener sets \"backend_tls\": {\"mode\": \"disabled\"} explicitly"},
    {"{\"listeners\":[{\"name\":\"p\",\"protocol\":\"postgresql\",\"bind\":\"127.0.0.1:1\",\"backend_tls\":{\"allow_insecure_password\":\"yes\"}," CL "}]}",
     "ferry.json: listeners[0].backend_tls.allow_insecure_password: expected a boolean, got a string"},
    {"{\"listeners\":[{\"name\":\"my\",\"protocol\":\"mysql\",\"bind\":\"127.0.0.1:1\",\"backend_tls\":{\"mode\":\"require\"}," CL "}]}",
     "ferry.json: listeners[0].backend_tls.mode: \"require\" is not one of disabled, preferred, required, verify_ca, verify_identity"},
    {"{" L0 "\"auth\":{\"mode\":\"terminated\",\"server_version\":\"8.0\",\"users\":[{\"name\":\"a\",\"password\":\"p\"}]}," CL "}]}",
     "ferry.json: listeners[0].auth.server_version: only mysql listeners in terminated mode send their own greeting"},
    {"{" L0 "\"probe\":{\"password\":\"x\"}," CL "}]}",
     "ferry.json: listeners[0].probe.user: required key is missing"},
    {"{" L0 "\"probe\":{\"user\":\"u\",\"password\":\"x\",\"password_env\":\"HOME\"}," CL "}]}",
     "ferry.json: listeners[0].probe: give only one of password, password_env, password_file"},
    {"{" L0 "\"probe\":{\"user\":\"u\",\"password_env\":\"FERRY_UNIT_NO_SUCH_VAR\"}," CL "}]}",
     "ferry.json: listeners[0].probe.password_env: environment variable FERRY_UNIT_NO_SUCH_VAR is not set"},
    {"{" L0 "\"probe\":{\"user\":\"u\",\"password_file\":\"/nonexistent/pw\"}," CL "}]}",
     "ferry.json: listeners[0].probe.password_file: cannot open /nonexistent/pw: No such file or directory"},
    {"{" L0 "\"probe\":{\"user\":\"u\",\"pass\":\"x\"}," CL "}]}",
     "ferry.json: listeners[0].probe.pass: unknown key"},
    {"{" L0 "\"clusters\":[{\"name\":\"a\",\"region\":\"us east\",\"endpoint\":\"h:1\"}]}]}",
     "ferry.json: listeners[0].clusters[0].region: \"us east\" must be 1-63 characters of A-Z a-z 0-9 _ . -"},
    {"{\"admin\":{\"token_env\":\"HOME\",\"token_file\":\"/x\"}," L0 CL "}]}",
     "ferry.json: admin: give only one of token_file, token_env"},
    {"{\"admin\":{\"token_env\":\"FERRY_UNIT_SHORT\"}," L0 CL "}]}",
     "ferry.json: admin: the admin token must be at least 16 characters"},
    {"{\"log_format\":\"xml\"," L0 CL "}]}", "ferry.json: log_format: \"xml\" is not one of text, json"},
    {"{" L0 "\"probe\":{\"user\":\"u\"},\"global_writer_endpoint\":\"g.example.test:5432\"," CL "}]}",
     "ferry.json: listeners[0].global_writer_endpoint: \"g.example.test:5432\" must be a host name (no port)"},
    {"{" L0 "\"global_writer_endpoint\":\"g.example.test\"," CL "}]}",
     "ferry.json: listeners[0].global_writer_endpoint: needs \"probe\": the global writer endpoint confirms what the probes see"},
    {"{" L0 "\"probe\":{\"user\":\"u\"},\"clusters\":[{\"name\":\"a\",\"endpoint\":\"h:1\",\"reader_endpoint\":\"r\"}]}]}",
     "ferry.json: listeners[0].clusters[0].reader_endpoint: \"r\" is not host:port"},
    {"{\"aws\":{\"urgent_poll_interval\":0}," L0 CL "}]}",
     "ferry.json: aws.urgent_poll_interval: 0 seconds out of range 1..3600"},
    {"{\"workers\":1,\"workers\":2," L0 CL "}]}",
     "ferry.json:1:22: invalid JSON: duplicate object key near '\"workers\"'"},
    /* a syntax error inside a secret never quotes the secret's text */
    {"{\"a\":{\"password\":\"Hunter2x\n\"}}",
     "ferry.json:1:26: invalid JSON: unexpected newline (in a secret value, not shown)"},
    {"{\"a\":{\"password\":\"Hunter2x\\q\"}}",
     "ferry.json:1:28: invalid JSON: invalid escape (in a secret value, not shown)"},
    {"{\"a\":{\"password\":\"Hunter2x\\u12\"}}",
     "ferry.json:1:31: invalid JSON: invalid escape (in a secret value, not shown)"},
    {"{\"a\":{\"password\":\"Hunter2x\\ud800\"}}",
     "ferry.json:1:33: invalid JSON: invalid Unicode (in a secret value, not shown)"},
    {"{\"a\":{\"password\":\"Hunter2x\xff\"}}",
     "ferry.json:1:26: invalid JSON: unable to decode byte (in a secret value, not shown)"},
    {"{\"a\":{\"password\":Hunter2x}}",
     "ferry.json:1:23: invalid JSON: invalid token (in a secret value, not shown)"},
    {"{\"a\":{\"scram_verifier\":\"SCRAM-SHA-256$4096:Hunter2x",
     "ferry.json:1:51: invalid JSON: premature end of input (in a secret value, not shown)"},
    {"{\"a\":{\"pass\\u0077ord\":\"Hunter2x\\q\"}}",
     "ferry.json:1:33: invalid JSON: invalid escape (in a secret value, not shown)"},
    /* other values are still quoted, and so is the token after a secret */
    {"{\"a\":{\"name\":\"Plain\\q\"}}", "ferry.json:1:21: invalid JSON: invalid escape near '\"Plain\\q'"},
    {"{\"a\":{\"password\":\"Hunter2x\" \"next\"}}",
     "ferry.json:1:34: invalid JSON: '}' expected near '\"next\"'"},
};

static void test_rejections(void)
{
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        struct ferry_config *c = ferry_config_parse("ferry.json", bad[i].json, err);
        if (c) {
            fprintf(stderr, "  row %zu accepted: %s\n", i, bad[i].json);
            ferry_config_unref(c);
        }
        ASSERT_TRUE(c == NULL);
        if (strcmp(err, bad[i].want) != 0)
            fprintf(stderr, "  row %zu\n", i);
        ASSERT_EQ_STR(err, bad[i].want);
    }
}

static void test_files(void)
{
    ASSERT_TRUE(ferry_config_load("/nonexistent/ferry.json", err) == NULL);
    ASSERT_EQ_STR(err, "/nonexistent/ferry.json: cannot open: No such file or directory");

    char path[] = "/tmp/ferry-unit-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_TRUE(fd >= 0);
    const char *text = "{\n  \"listeners\": [\n    {\"name\": \"pg\",, }\n  ]\n}\n";
    ASSERT_TRUE(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    struct ferry_config *c = ferry_config_load(path, err);
    char want[FERRY_ERR_MAX];
    snprintf(want, sizeof want, "%s:3:19: invalid JSON: string or '}' expected near ','", path);
    ASSERT_TRUE(c == NULL);
    ASSERT_EQ_STR(err, want);

    FILE *f = fopen(path, "w");
    fputs("{" L0 CL "}]}", f);
    fclose(f);
    c = ferry_config_load(path, err);
    unlink(path);
    ASSERT_TRUE(c != NULL);
    ASSERT_EQ_STR(c->path, path);
    ferry_config_unref(c);

    ASSERT_TRUE(ferry_config_load("/tmp", err) == NULL);
    ASSERT_EQ_STR(err, "/tmp: cannot read: Is a directory");
}

static void test_hostport(void)
{
    struct ferry_hostport hp;
    char why[128], out[300];
    ASSERT_EQ_INT(ferry_hostport_parse("[::1]:5432", &hp, why, sizeof why), 0);
    ASSERT_EQ_STR(hp.host, "::1");
    ASSERT_EQ_INT(hp.port, 5432);
    ferry_hostport_format(&hp, out, sizeof out);
    ASSERT_EQ_STR(out, "[::1]:5432");
    ASSERT_EQ_INT(ferry_hostport_parse("db.internal:65535", &hp, why, sizeof why), 0);
    ferry_hostport_format(&hp, out, sizeof out);
    ASSERT_EQ_STR(out, "db.internal:65535");
    ASSERT_EQ_INT(ferry_hostport_parse(":5432", &hp, why, sizeof why), -1);
    ASSERT_EQ_STR(why, "\":5432\": host is empty or too long");
    ASSERT_EQ_INT(ferry_hostport_parse("h:", &hp, why, sizeof why), -1);
    ASSERT_EQ_STR(why, "\"h:\": missing port");
    ASSERT_EQ_INT(ferry_hostport_parse("[::1]5432", &hp, why, sizeof why), -1);
    ASSERT_EQ_STR(why, "\"[::1]5432\" is not [ipv6]:port");
    ASSERT_EQ_INT(ferry_hostport_parse("h:99999999999999", &hp, why, sizeof why), -1);
    ASSERT_EQ_STR(why, "\"h:99999999999999\": port is not a number");
}

int main(void)
{
    setenv("FERRY_UNIT_SHORT", "short", 1);
    RUN(test_minimal_defaults);
    RUN(test_full_config);
    RUN(test_terminated_auth_users);
    RUN(test_admin_disabled);
    RUN(test_discovery_and_probe);
    RUN(test_rejections);
    RUN(test_files);
    RUN(test_hostport);
    UNIT_DONE();
}
