/* MySQL/MariaDB probe engine on MariaDB Connector/C's non-blocking API
 * (mysql_*_start / mysql_*_cont), driven by the probe driver. Writable =
 * neither read_only nor innodb_read_only (Aurora readers set the latter),
 * and, on MariaDB, no replication SQL thread running: a server that still
 * applies its primary's stream has not been promoted, whatever read_only
 * says (replicas are often left with read_only off). Slaves_running is a
 * status variable: it needs no privilege.
 *
 * It connects to the address the driver resolved: given a name,
 * Connector/C would resolve it itself with a blocking getaddrinfo() on the
 * discovery loop. TLS follows backend_tls with Connector/C 3.3's options:
 * required = MYSQL_OPT_SSL_ENFORCE; verify_ca adds MYSQL_OPT_SSL_CA (the
 * chain is verified in the handshake); verify_identity adds
 * MYSQL_OPT_SSL_VERIFY_SERVER_CERT, whose host name check uses the MYSQL
 * handle's host, the address. Connector/C has no option for a separate
 * verification name, so the engine puts the endpoint's name into
 * mysql->host (a public field) right after the SSLRequest is written
 * (on_write below): Connector/C has set it from the greeting by then, and
 * the TLS handshake, where the certificate is checked, comes next. A
 * connect that ended without that (it cannot with Connector/C 3.3) is
 * tried once more, then fails the probe, rather than trust a check against
 * the address. Connector/C 3.3 goes on in plaintext when a server offers
 * no TLS in required and verify_ca; the engine then fails the probe after
 * the login. Its TLS handshake holds the loop for its round trips (see
 * io_wait), at most until the probe's deadline.
 *
 * Aurora MySQL: the first query on a connection also asks whether
 * information_schema has REPLICA_HOST_STATUS (Aurora) and
 * AURORA_GLOBAL_DB_INSTANCE_STATUS (a global database on Aurora MySQL
 * 3.04+). With the latter, every round then reads the global topology with
 * a second query on the same connection: who the global writer is
 * (SESSION_ID = 'MASTER_SESSION_ID'), in which region, and each instance's
 * visibility lag, as any instance of any region reports it. Without it (an
 * older version, a cluster outside a global database, MariaDB) there is no
 * topology and nothing else changes. A server error on that query (a grant
 * missing) leaves the round's answer as it is, without a topology.
 */
#include <errmsg.h>
#include <errno.h>
#include <fcntl.h>
#include <mysql.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "probe.h"

enum { MY_IDLE, MY_CONNECTING, MY_QUERYING, MY_STORING, MY_TOPO_QUERYING, MY_TOPO_STORING };

#define SELECT_RO "SELECT @@global.read_only, @@global.innodb_read_only, "
/* 1 when information_schema has the table (names upper-cased: MySQL 8 and
 * MariaDB spell information_schema's own tables in capitals there) */
#define I_S_HAS(table)                                                                          \
    "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'information_schema' " \
    "AND UPPER(TABLE_NAME) = '" table "'), "
#define AURORA_COLS I_S_HAS("REPLICA_HOST_STATUS") I_S_HAS("AURORA_GLOBAL_DB_INSTANCE_STATUS")
#define MARIADB_REPLICATING \
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVES_RUNNING')"
/* [mariadb][first query on the connection]: read_only, innodb_read_only,
 * Aurora, Aurora global topology, replicating */
static const char *const QUERIES[2][2] = {
    {SELECT_RO "0, 0, NULL", SELECT_RO AURORA_COLS "NULL"},
    {SELECT_RO "0, 0, " MARIADB_REPLICATING, SELECT_RO AURORA_COLS MARIADB_REPLICATING},
};
#define QUERY_COLS 5
/* Aurora MySQL's global topology: every instance of every region */
static const char *const QUERY_TOPOLOGY =
    "SELECT SERVER_ID, SESSION_ID, AWS_REGION, VISIBILITY_LAG_IN_MSEC "
    "FROM information_schema.aurora_global_db_instance_status";

/* backend_tls.mode as a MySQL listener's config says it */
static const char *const MYSQL_MODE_NAMES[] = {
    [FERRY_TLS_DISABLE] = "disabled", [FERRY_TLS_PREFER] = "preferred",
    [FERRY_TLS_REQUIRE] = "required", [FERRY_TLS_VERIFY_CA] = "verify_ca",
    [FERRY_TLS_VERIFY_FULL] = "verify_identity"};

static int fail(struct disc_probe_result *r, const char *what, MYSQL *m)
{
    snprintf(r->detail, sizeof r->detail, "%s: %.120s", what, m ? mysql_error(m) : "out of memory");
    return -1;
}

/* The TLS failure Connector/C reported, named as the check that failed. */
static int tls_fail(struct disc_probe *p, struct disc_probe_result *r, const char *why)
{
    r->tls_failed = true;
    if (strncmp(why, "TLS/SSL error: ", 15) == 0)
        why += 15;
    if (strcmp(why, "Validation of SSL server certificate failed") == 0)
        snprintf(r->detail, sizeof r->detail,
                 "TLS: server certificate does not match host name %.180s", p->endpoint.host);
    else if (strncmp(why, "error:", 6) == 0 || strstr(why, "SSL is required"))
        snprintf(r->detail, sizeof r->detail, "TLS: %.200s", why);
    else    /* X509_verify_cert_error_string() of the chain check */
        snprintf(r->detail, sizeof r->detail, "TLS: certificate verify failed: %.200s", why);
    return -1;
}

static int connect_failed(struct disc_probe *p, struct disc_probe_result *r)
{
    const char *why = mysql_error(p->conn);
    const char *prefix = "SSL connection error: ";
    if (strncmp(why, prefix, strlen(prefix)) == 0)
        why += strlen(prefix);
    return tls_fail(p, r, why);
}

/* Exported by libmariadb 3 (libmariadb_3 symbol version) for its plugins,
 * declared only in its internal headers: a function called after every
 * read and write on every connection of the process (mode 1 = write). */
int ma_pvio_register_callback(my_bool register_callback,
                              void (*callback_function)(int mode, MYSQL *mysql,
                                                        const unsigned char *buffer,
                                                        size_t length));

/* The probe inside a Connector/C call on this thread (the callbacks below
 * have no user pointer). */
static __thread struct disc_probe *in_call;

/* Just before the TLS handshake. Connector/C writes the SSLRequest, then
 * starts TLS in the same call; by then it has set mysql->host (from the
 * greeting) and turned the socket back to blocking (it reads with
 * MSG_DONTWAIT itself, but OpenSSL, which gets the socket, would block the
 * loop in read()). So after that write: non-blocking again, and for
 * verify_identity the endpoint's name as the host its check reads. */
static void on_write(int mode, MYSQL *m, const unsigned char *buffer, size_t length)
{
    (void)buffer;
    (void)length;
    struct disc_probe *p = in_call;
    if (mode != 1 || !p || p->conn != m || p->tls_mode < FERRY_TLS_REQUIRE ||
        mysql_get_ssl_cipher(m))  /* TLS is up already */
        return;
    int fd = mysql_get_socket(m);
    int fl = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
    if (fl >= 0 && !(fl & O_NONBLOCK))
        (void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    if (p->tls_named || !m->host)
        return;
    char *name = strdup(p->endpoint.host);
    if (!name)
        return;
    free(m->host);  /* Connector/C's strdup; mysql_close() frees ours */
    m->host = name;
    p->tls_named = true;
}

/* Connector/C 3.3 runs the TLS handshake inside one _start/_cont call,
 * with poll() between handshake steps, even in its non-blocking API; this
 * hook replaces that poll(). Connector/C passes connect_timeout, which it
 * keeps in seconds, as milliseconds; the wait is bounded by the probe's own
 * deadline instead. The handshake still holds the discovery loop for its
 * round trips: a known limit. */
static int io_wait(my_socket fd, my_bool is_read, int timeout_ms)
{
    (void)timeout_ms;
    struct disc_probe *p = in_call;
    int ms = 1000;
    if (p) {
        uint64_t now = uv_hrtime(), end = p->started_ns + (uint64_t)(p->timeout * 1e9);
        ms = now >= end ? 0 : (int)((end - now) / 1000000) + 1;
    }
    /* is_read as Connector/C passes it (TRUE for both of SSL_connect's waits) */
    struct pollfd pfd = {.fd = fd, .events = is_read ? POLLIN : POLLOUT};
    int rc;
    do
        rc = poll(&pfd, 1, ms);
    while (rc < 0 && errno == EINTR);
    return rc;
}

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

static void hooks_init(void)
{
    ma_pvio_register_callback(1, on_write);
}

/* What the connector waits for, as uv poll events (a pure timeout wait is
 * covered by the driver's deadline). */
static int wait_for(struct disc_probe *p, int status, int *fd)
{
    *fd = mysql_get_socket(p->conn);
    int ev = 0;
    if (status & MYSQL_WAIT_READ)
        ev |= UV_READABLE;
    if (status & MYSQL_WAIT_WRITE)
        ev |= UV_WRITABLE;
    return ev ? ev : UV_READABLE;
}

static int ready_status(const struct disc_probe *p)
{
    int st = 0;
    if (p->ready_events & UV_READABLE)
        st |= MYSQL_WAIT_READ;
    if (p->ready_events & UV_WRITABLE)
        st |= MYSQL_WAIT_WRITE;
    return st ? st : MYSQL_WAIT_TIMEOUT;
}

static int start_query(struct disc_probe *p, struct disc_probe_result *r, int *fd);
static int start_store(struct disc_probe *p, struct disc_probe_result *r, int *fd);
static int start_connect(struct disc_probe *p, struct disc_probe_result *r, int *fd);
static void my_drop(struct disc_probe *p);

static int connected(struct disc_probe *p, struct disc_probe_result *r, int *fd, MYSQL *ret)
{
    if (!ret && strstr(mysql_error(p->conn), "restricted_auth")) {
        /* the guard set in start_connect(), in words an operator can act on */
        r->tls_failed = true;
        snprintf(r->detail, sizeof r->detail,
                 "refused to log in: the server is not verified (backend_tls.mode %s) and asked "
                 "for an authentication that can reveal the probe password to it; use "
                 "verify_identity or set backend_tls.allow_insecure_password",
                 MYSQL_MODE_NAMES[p->tls_mode]);
        return -1;
    }
    if (!ret && mysql_errno(p->conn) != CR_SSL_CONNECTION_ERROR)
        return fail(r, "connect", p->conn);
    if (!p->tls_named) {
        /* the certificate may have been checked against the address */
        if (p->attempts < 2) {
            my_drop(p);
            return start_connect(p, r, fd);
        }
        r->tls_failed = true;
        snprintf(r->detail, sizeof r->detail,
                 "TLS: the handshake ended before the host name %.160s could be set for its check",
                 p->endpoint.host);
        return -1;
    }
    if (!ret)
        return connect_failed(p, r);    /* a TLS failure */
    if (p->tls_mode >= FERRY_TLS_REQUIRE && !mysql_get_ssl_cipher(p->conn)) {
        r->tls_failed = true;
        snprintf(r->detail, sizeof r->detail, "TLS: the server does not accept TLS");
        return -1;
    }
    return start_query(p, r, fd);
}

static int start_connect(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    MYSQL *m = mysql_init(NULL);
    if (!m)
        return fail(r, "connect", NULL);
    p->conn = m;
    p->attempts++;
    unsigned timeout = (unsigned)(p->timeout + 0.999);
    mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &timeout);
    pthread_once(&hooks_once, hooks_init);
    mysql_optionsv(m, MARIADB_OPT_IO_WAIT, io_wait);
    /* preferred and disabled: plaintext, as before (Connector/C 3.3 has no
     * "TLS if offered": any TLS option asks for TLS) */
    my_bool on = 1;
    if (p->tls_mode >= FERRY_TLS_REQUIRE)
        mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &on);
    if (p->tls_mode >= FERRY_TLS_VERIFY_CA)
        mysql_options(m, MYSQL_OPT_SSL_CA, p->tls_ca_file ? p->tls_ca_file : DISC_SYSTEM_CA_BUNDLE);
    if (p->tls_mode == FERRY_TLS_VERIFY_FULL)
        mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
    /* A server ferry has not verified must not get the probe password in a
     * form it can read: Connector/C answers caching_sha2 / sha256 full
     * authentication with the password RSA-encrypted under whatever key the
     * server sends, and mysql_clear_password / dialog in cleartext. Only the
     * challenge-response plugins, then. verify_ca (and required) are not
     * enough: a server without TLS gets the login before Connector/C fails. */
    if (p->tls_mode < FERRY_TLS_VERIFY_FULL && !p->allow_insecure_password)
        mysql_optionsv(m, MARIADB_OPT_RESTRICTED_AUTH, "mysql_native_password,client_ed25519");
    /* an address endpoint is its own name */
    p->tls_named = p->tls_mode != FERRY_TLS_VERIFY_FULL || strcmp(p->addr, p->endpoint.host) == 0;
    MYSQL *ret = NULL;
    p->phase = MY_CONNECTING;
    int st = mysql_real_connect_start(&ret, m, p->addr, p->user, p->password,
                                      p->database[0] ? p->database : NULL, p->endpoint.port,
                                      NULL, 0);
    /* Connector/C has no keepalive or user-timeout option: the listener's
     * TCP options go on its socket once it exists (connecting or not) */
    int sock = mysql_get_socket(m);
    if (sock >= 0)
        (void)ferry_tcp_apply(sock, &p->tcp);
    return st ? wait_for(p, st, fd) : connected(p, r, fd, ret);
}

static int start_query(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    const char *info = mysql_get_server_info(p->conn);
    bool mariadb = info && strstr(info, "MariaDB");
    const char *q = QUERIES[mariadb][!p->aurora_checked];
    int err = 0;
    int st = mysql_real_query_start(&err, p->conn, q, (unsigned long)strlen(q));
    p->phase = MY_QUERYING;
    if (st)
        return wait_for(p, st, fd);
    return err ? fail(r, "query", p->conn) : start_store(p, r, fd);
}

static int start_topology(struct disc_probe *p, struct disc_probe_result *r, int *fd);

static int stored(struct disc_probe *p, struct disc_probe_result *r, int *fd, MYSQL_RES *res)
{
    p->phase = MY_IDLE;
    if (!res)
        return fail(r, "query", p->conn);
    MYSQL_ROW row = mysql_fetch_row(res);
    if (!row || mysql_num_fields(res) != QUERY_COLS || !row[0] || !row[1]) {
        mysql_free_result(res);
        snprintf(r->detail, sizeof r->detail, "query: unexpected result");
        return -1;
    }
    if (!p->aurora_checked) {
        p->aurora = row[2] && strcmp(row[2], "0") != 0;
        p->aurora_global = p->aurora && row[3] && strcmp(row[3], "0") != 0;
        p->aurora_checked = true;
    }
    r->ok = true;
    r->aurora = p->aurora;
    r->replicating = row[4] && strcmp(row[4], "0") != 0;
    r->writable = strcmp(row[0], "0") == 0 && strcmp(row[1], "0") == 0 && !r->replicating;
    snprintf(r->detail, sizeof r->detail, "read_only=%.8s innodb_read_only=%.8s%s%.8s", row[0],
             row[1], r->replicating ? " replicating (Slaves_running=" : "",
             r->replicating ? row[4] : "");
    if (r->replicating)
        strncat(r->detail, ")", sizeof r->detail - strlen(r->detail) - 1);
    mysql_free_result(res);
    return p->aurora_global ? start_topology(p, r, fd) : 0;
}

static int start_store(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    MYSQL_RES *res = NULL;
    int st = mysql_store_result_start(&res, p->conn);
    p->phase = MY_STORING;
    return st ? wait_for(p, st, fd) : stored(p, r, fd, res);
}

/* The topology query failed. A server error (a grant missing, the table
 * gone) costs only the topology: the round's answer stands and the
 * connection stays. A client error (the connection lost) fails the probe. */
static int topology_failed(struct disc_probe *p, struct disc_probe_result *r)
{
    p->phase = MY_IDLE;
    if (mysql_errno(p->conn) >= CR_MIN_ERROR)
        return fail(r, "topology query", p->conn);
    size_t n = strlen(r->detail);
    snprintf(r->detail + n, sizeof r->detail - n, "; no topology: %.100s", mysql_error(p->conn));
    return 0;
}

static int topology_stored(struct disc_probe *p, struct disc_probe_result *r, MYSQL_RES *res)
{
    p->phase = MY_IDLE;
    if (!res)
        return topology_failed(p, r);
    r->ntopo = 0;
    MYSQL_ROW row;
    while (mysql_num_fields(res) == 4 && (row = mysql_fetch_row(res)) &&
           r->ntopo < DISC_TOPO_MAX) {
        struct disc_topo_member *m = &r->topo[r->ntopo++];
        snprintf(m->server_id, sizeof m->server_id, "%s", row[0] ? row[0] : "");
        m->writer = row[1] && strcmp(row[1], "MASTER_SESSION_ID") == 0;
        snprintf(m->region, sizeof m->region, "%s", row[2] ? row[2] : "");
        m->lag_ms = row[3] ? strtod(row[3], NULL) : -1.0;
    }
    mysql_free_result(res);
    return 0;
}

static int start_topology_store(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    MYSQL_RES *res = NULL;
    int st = mysql_store_result_start(&res, p->conn);
    p->phase = MY_TOPO_STORING;
    return st ? wait_for(p, st, fd) : topology_stored(p, r, res);
}

static int start_topology(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    int err = 0;
    int st = mysql_real_query_start(&err, p->conn, QUERY_TOPOLOGY,
                                    (unsigned long)strlen(QUERY_TOPOLOGY));
    p->phase = MY_TOPO_QUERYING;
    if (st)
        return wait_for(p, st, fd);
    return err ? topology_failed(p, r) : start_topology_store(p, r, fd);
}

static int my_step_in(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    int st, err = 0;
    MYSQL *ret = NULL;
    MYSQL_RES *res = NULL;
    switch (p->phase) {
    case MY_IDLE:
        return p->conn ? start_query(p, r, fd) : start_connect(p, r, fd);
    case MY_CONNECTING:
        st = mysql_real_connect_cont(&ret, p->conn, ready_status(p));
        return st ? wait_for(p, st, fd) : connected(p, r, fd, ret);
    case MY_QUERYING:
        st = mysql_real_query_cont(&err, p->conn, ready_status(p));
        if (st)
            return wait_for(p, st, fd);
        return err ? fail(r, "query", p->conn) : start_store(p, r, fd);
    case MY_STORING:
        st = mysql_store_result_cont(&res, p->conn, ready_status(p));
        return st ? wait_for(p, st, fd) : stored(p, r, fd, res);
    case MY_TOPO_QUERYING:
        st = mysql_real_query_cont(&err, p->conn, ready_status(p));
        if (st)
            return wait_for(p, st, fd);
        return err ? topology_failed(p, r) : start_topology_store(p, r, fd);
    case MY_TOPO_STORING:
        st = mysql_store_result_cont(&res, p->conn, ready_status(p));
        return st ? wait_for(p, st, fd) : topology_stored(p, r, res);
    }
    snprintf(r->detail, sizeof r->detail, "internal: bad phase %d", p->phase);
    return -1;
}

static int my_step(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    in_call = p;
    int events = my_step_in(p, r, fd);
    in_call = NULL;
    return events;
}

static void my_drop(struct disc_probe *p)
{
    if (p->conn) {
        /* mysql_close() sends COM_QUIT and could block on a dead peer; shut
         * the socket first so that write fails at once. */
        int fd = mysql_get_socket(p->conn);
        if (fd >= 0)
            shutdown(fd, SHUT_RDWR);
        mysql_close(p->conn);
    }
    p->conn = NULL;
    p->phase = MY_IDLE;
    p->aurora_checked = false;
    p->aurora_global = false;
}

const struct disc_engine disc_engine_mysql = {"mysql", my_step, my_drop};
