/* MySQL/MariaDB probe engine on MariaDB Connector/C's non-blocking API
 * (mysql_*_start / mysql_*_cont), driven by the probe driver. Writable =
 * neither read_only nor innodb_read_only (Aurora readers set the latter).
 * It connects to the address the driver resolved: given a name,
 * Connector/C would resolve it itself with a blocking getaddrinfo() on the
 * discovery loop.
 */
#include <mysql.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "probe.h"

enum { MY_IDLE, MY_CONNECTING, MY_QUERYING, MY_STORING };

static const char *const QUERY_FIRST =
    "SELECT @@global.read_only, @@global.innodb_read_only, "
    "(SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'information_schema' "
    "AND TABLE_NAME = 'REPLICA_HOST_STATUS')";
static const char *const QUERY = "SELECT @@global.read_only, @@global.innodb_read_only, 0";

static int fail(struct disc_probe_result *r, const char *what, MYSQL *m)
{
    snprintf(r->detail, sizeof r->detail, "%s: %.120s", what, m ? mysql_error(m) : "out of memory");
    return -1;
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

static int connected(struct disc_probe *p, struct disc_probe_result *r, int *fd, MYSQL *ret)
{
    if (!ret)
        return fail(r, "connect", p->conn);
    return start_query(p, r, fd);
}

static int start_connect(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    MYSQL *m = mysql_init(NULL);
    if (!m)
        return fail(r, "connect", NULL);
    p->conn = m;
    unsigned timeout = (unsigned)(p->timeout + 0.999);
    mysql_options(m, MYSQL_OPT_NONBLOCK, 0);
    mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &timeout);
    mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &timeout);
    MYSQL *ret = NULL;
    int st = mysql_real_connect_start(&ret, m, p->addr, p->user, p->password,
                                      p->database[0] ? p->database : NULL, p->endpoint.port,
                                      NULL, 0);
    p->phase = MY_CONNECTING;
    return st ? wait_for(p, st, fd) : connected(p, r, fd, ret);
}

static int start_query(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    const char *q = p->aurora_checked ? QUERY : QUERY_FIRST;
    int err = 0;
    int st = mysql_real_query_start(&err, p->conn, q, (unsigned long)strlen(q));
    p->phase = MY_QUERYING;
    if (st)
        return wait_for(p, st, fd);
    return err ? fail(r, "query", p->conn) : start_store(p, r, fd);
}

static int stored(struct disc_probe *p, struct disc_probe_result *r, MYSQL_RES *res)
{
    p->phase = MY_IDLE;
    if (!res)
        return fail(r, "query", p->conn);
    MYSQL_ROW row = mysql_fetch_row(res);
    if (!row || mysql_num_fields(res) != 3 || !row[0] || !row[1]) {
        mysql_free_result(res);
        snprintf(r->detail, sizeof r->detail, "query: unexpected result");
        return -1;
    }
    if (!p->aurora_checked) {
        p->aurora = row[2] && strcmp(row[2], "0") != 0;
        p->aurora_checked = true;
    }
    r->ok = true;
    r->aurora = p->aurora;
    r->writable = strcmp(row[0], "0") == 0 && strcmp(row[1], "0") == 0;
    snprintf(r->detail, sizeof r->detail, "read_only=%s innodb_read_only=%s", row[0], row[1]);
    mysql_free_result(res);
    return 0;
}

static int start_store(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    MYSQL_RES *res = NULL;
    int st = mysql_store_result_start(&res, p->conn);
    p->phase = MY_STORING;
    return st ? wait_for(p, st, fd) : stored(p, r, res);
}

static int my_step(struct disc_probe *p, struct disc_probe_result *r, int *fd)
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
        return st ? wait_for(p, st, fd) : stored(p, r, res);
    }
    snprintf(r->detail, sizeof r->detail, "internal: bad phase %d", p->phase);
    return -1;
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
}

const struct disc_engine disc_engine_mysql = {"mysql", my_step, my_drop};
