/* PostgreSQL probe engine: libpq's non-blocking connect (PQconnectStartParams
 * + PQconnectPoll) and query (PQsendQuery + PQconsumeInput), driven by the
 * probe driver. Writable = not in recovery and transactions not read-only.
 * It connects to the address the driver resolved (hostaddr).
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

#include "probe.h"

enum { PG_IDLE, PG_CONNECTING, PG_FLUSHING, PG_READING };

/* The first query on a connection also asks whether Aurora's global
 * database status function exists; later ones skip that. */
static const char *const QUERY_FIRST =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), "
    "to_regproc('aurora_global_db_instance_status') IS NOT NULL";
static const char *const QUERY =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), NULL";

static int fail(struct disc_probe_result *r, const char *what, PGconn *c)
{
    const char *msg = c ? PQerrorMessage(c) : "out of memory";
    size_t n = strcspn(msg, "\n");
    snprintf(r->detail, sizeof r->detail, "%s: %.*s", what, (int)(n > 120 ? 120 : n), msg);
    return -1;
}

static int start_connect(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    char port[8], timeout[16];
    snprintf(port, sizeof port, "%u", p->endpoint.port);
    snprintf(timeout, sizeof timeout, "%d", (int)(p->timeout + 0.999));
    /* the address the driver resolved; host stays the endpoint's name */
    const char *keys[] = {"host", "hostaddr", "port", "user", "password", "dbname",
                          "application_name", "connect_timeout", NULL};
    const char *vals[] = {p->endpoint.host, p->addr, port, p->user,
                          p->password ? p->password : "", p->database, "ferry-probe", timeout,
                          NULL};
    PGconn *c = PQconnectStartParams(keys, vals, 0);
    p->conn = c;
    if (!c || PQstatus(c) == CONNECTION_BAD)
        return fail(r, "connect", c);
    p->phase = PG_CONNECTING;
    *fd = PQsocket(c);
    return UV_WRITABLE;     /* libpq: start as if PQconnectPoll returned WRITING */
}

static int send_query(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    PGconn *c = p->conn;
    if (PQsetnonblocking(c, 1) != 0 || !PQsendQuery(c, p->aurora_checked ? QUERY : QUERY_FIRST))
        return fail(r, "query", c);
    p->phase = PG_FLUSHING;
    *fd = PQsocket(c);
    return UV_WRITABLE;
}

static void read_row(struct disc_probe *p, struct disc_probe_result *r, PGresult *res)
{
    const char *recovery = PQgetvalue(res, 0, 0);
    const char *ro = PQgetvalue(res, 0, 1);
    if (!p->aurora_checked) {
        p->aurora = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
        p->aurora_checked = true;
    }
    r->ok = true;
    r->aurora = p->aurora;
    r->writable = strcmp(recovery, "f") == 0 && strcmp(ro, "off") == 0;
    snprintf(r->detail, sizeof r->detail, "in_recovery=%s transaction_read_only=%s",
             strcmp(recovery, "t") == 0 ? "true" : "false", ro);
}

static int pg_step(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    PGconn *c = p->conn;
    switch (p->phase) {
    case PG_IDLE:
        return c ? send_query(p, r, fd) : start_connect(p, r, fd);
    case PG_CONNECTING:
        switch (PQconnectPoll(c)) {
        case PGRES_POLLING_FAILED:
            return fail(r, "connect", c);
        case PGRES_POLLING_READING:
            *fd = PQsocket(c);
            return UV_READABLE;
        case PGRES_POLLING_WRITING:
            *fd = PQsocket(c);
            return UV_WRITABLE;
        default:
            return send_query(p, r, fd);
        }
    case PG_FLUSHING: {
        if ((p->ready_events & UV_READABLE) && !PQconsumeInput(c))
            return fail(r, "query", c);
        int rc = PQflush(c);
        if (rc < 0)
            return fail(r, "query", c);
        *fd = PQsocket(c);
        if (rc == 1)
            return UV_READABLE | UV_WRITABLE;
        p->phase = PG_READING;
        return UV_READABLE;
    }
    case PG_READING:
        if (!PQconsumeInput(c))
            return fail(r, "query", c);
        while (!PQisBusy(c)) {
            PGresult *res = PQgetResult(c);
            if (!res) {
                p->phase = PG_IDLE;
                return r->ok ? 0 : fail(r, "query", c);
            }
            if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 3)
                read_row(p, r, res);
            PQclear(res);
        }
        *fd = PQsocket(c);
        return UV_READABLE;
    }
    snprintf(r->detail, sizeof r->detail, "internal: bad phase %d", p->phase);
    return -1;
}

static void pg_drop(struct disc_probe *p)
{
    if (p->conn)
        PQfinish(p->conn);
    p->conn = NULL;
    p->phase = PG_IDLE;
    p->aurora_checked = false;
}

const struct disc_engine disc_engine_pg = {"postgresql", pg_step, pg_drop};
