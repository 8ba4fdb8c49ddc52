/* PostgreSQL side of the load generator (libpq, blocking calls, one
 * connection per client thread). Plain mode sends simple-protocol queries
 * with literals; prepared mode prepares once per connection. */
#include "db.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct db_conn {
    PGconn *pg;
    bool prepared;
};

/* each statement as prepared (with $n) and as plain text (with literals) */
struct stmt {
    const char *name, *sql, *fmt;
    int nparams;
};
static const struct stmt ST_SELECT = {"sel", "SELECT v FROM bench_kv WHERE id = $1",
                                      "SELECT v FROM bench_kv WHERE id = %lld", 1};
static const struct stmt ST_INSERT = {"ins", "INSERT INTO bench_rw (id, k) VALUES ($1, $2)",
                                      "INSERT INTO bench_rw (id, k) VALUES (%lld, %lld)", 2};
static const struct stmt ST_UPDATE = {"upd", "UPDATE bench_kv SET v = v + 1 WHERE id = $1",
                                      "UPDATE bench_kv SET v = v + 1 WHERE id = %lld", 1};

static void pg_fail(struct db_conn *c, const PGresult *res, struct db_err *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *msg = res ? PQresultErrorMessage(res) : "";
    if (!msg || !*msg)
        msg = PQerrorMessage(c->pg);
    if (state)
        db_err_set(err, DB_ERR_QUERY, state, msg);
    else
        db_err_set(err, DB_ERR_LOST, NULL, msg);
}

/* Runs res's statement check and frees it; true when its status is want. */
static bool pg_check(struct db_conn *c, PGresult *res, ExecStatusType want, struct db_err *err)
{
    bool ok = res && PQresultStatus(res) == want;
    if (!ok)
        pg_fail(c, res, err);
    PQclear(res);
    return ok;
}

static bool pg_exec(struct db_conn *c, const char *sql, struct db_err *err)
{
    PGresult *res = PQexec(c->pg, sql);
    bool rows = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    return pg_check(c, res, rows ? PGRES_TUPLES_OK : PGRES_COMMAND_OK, err);
}

static bool pg_prepare_all(struct db_conn *c, struct db_err *err)
{
    const struct stmt *all[] = {&ST_SELECT, &ST_INSERT, &ST_UPDATE};
    for (unsigned i = 0; i < sizeof all / sizeof all[0]; i++) {
        PGresult *res = PQprepare(c->pg, all[i]->name, all[i]->sql, all[i]->nparams, NULL);
        if (!pg_check(c, res, PGRES_COMMAND_OK, err))
            return false;
    }
    return true;
}

/* NOTICEs and WARNINGs (a DROP IF EXISTS, a server shutting down) are not
 * errors of the load and would flood stderr */
static void pg_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void pg_close(struct db_conn *c)
{
    if (!c)
        return;
    PQfinish(c->pg);
    free(c);
}

static struct db_conn *pg_connect(const char *dsn, bool prepared, struct db_err *err)
{
    struct db_conn *c = calloc(1, sizeof *c);
    if (!c) {
        db_err_set(err, DB_ERR_CONNECT, NULL, "out of memory");
        return NULL;
    }
    c->prepared = prepared;
    c->pg = PQconnectdb(dsn);
    PQsetNoticeProcessor(c->pg, pg_quiet, NULL);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        db_err_set(err, DB_ERR_CONNECT, NULL, PQerrorMessage(c->pg));
        pg_close(c);
        return NULL;
    }
    if (prepared && !pg_prepare_all(c, err)) {
        pg_close(c);
        return NULL;
    }
    return c;
}

static bool pg_alive(struct db_conn *c)
{
    return PQstatus(c->pg) == CONNECTION_OK;
}

/* Runs a prepared statement or, in plain mode, sql_fmt with the literals. */
static PGresult *pg_run(struct db_conn *c, const struct stmt *st, const long long *args)
{
    int n = st->nparams;
    char vals[2][24];
    const char *params[2];
    for (int i = 0; i < n; i++) {
        snprintf(vals[i], sizeof vals[i], "%lld", args[i]);
        params[i] = vals[i];
    }
    if (c->prepared)
        return PQexecPrepared(c->pg, st->name, n, params, NULL, NULL, 0);
    char sql[256];
    if (n == 1)
        snprintf(sql, sizeof sql, st->fmt, args[0]);
    else
        snprintf(sql, sizeof sql, st->fmt, args[0], args[1]);
    return PQexec(c->pg, sql);
}

static bool pg_select(struct db_conn *c, long key, struct db_err *err)
{
    long long arg = key;
    PGresult *res = pg_run(c, &ST_SELECT, &arg);
    return pg_check(c, res, PGRES_TUPLES_OK, err);
}

static void pg_rollback(struct db_conn *c)
{
    if (PQstatus(c->pg) == CONNECTION_OK && PQtransactionStatus(c->pg) != PQTRANS_IDLE)
        PQclear(PQexec(c->pg, "ROLLBACK"));
}

static bool pg_rw(struct db_conn *c, int64_t id, long key, bool *at_commit, struct db_err *err)
{
    long long ins[2] = {(long long)id, key}, upd = key;
    *at_commit = false;
    bool ok = pg_exec(c, "BEGIN", err) &&
              pg_check(c, pg_run(c, &ST_INSERT, ins), PGRES_COMMAND_OK, err) &&
              pg_check(c, pg_run(c, &ST_UPDATE, &upd), PGRES_COMMAND_OK, err);
    if (!ok) {
        pg_rollback(c);
        return false;
    }
    *at_commit = true;
    return pg_exec(c, "COMMIT", err);
}

static bool pg_init(struct db_conn *c, long rows, struct db_err *err)
{
    char fill[160];
    snprintf(fill, sizeof fill,
             "INSERT INTO bench_kv SELECT g, 0 FROM generate_series(1, %ld) g", rows);
    return pg_exec(c, "DROP TABLE IF EXISTS bench_kv, bench_rw", err) &&
           pg_exec(c, "CREATE TABLE bench_kv (id integer PRIMARY KEY, v bigint NOT NULL)", err) &&
           pg_exec(c, "CREATE TABLE bench_rw (id bigint PRIMARY KEY, k integer NOT NULL, "
                      "at timestamptz NOT NULL DEFAULT now())", err) &&
           pg_exec(c, fill, err) && pg_exec(c, "VACUUM ANALYZE bench_kv", err);
}

const struct db_driver db_pg = {
    .name = "pg",
    .connect = pg_connect,
    .close = pg_close,
    .alive = pg_alive,
    .select = pg_select,
    .rw = pg_rw,
    .init = pg_init,
};
