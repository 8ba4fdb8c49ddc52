/* MySQL/MariaDB side of the load generator (libmariadb, blocking calls).
 * Plain mode sends text queries with literals; prepared mode uses server-side
 * prepared statements (binary protocol), prepared once per connection. */
#include "db.h"

#include <errmsg.h>
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { ST_SELECT, ST_INSERT, ST_UPDATE, ST_COUNT };

static const struct {
    const char *sql, *fmt;
    unsigned nparams;
} STMTS[ST_COUNT] = {
    [ST_SELECT] = {"SELECT v FROM bench_kv WHERE id = ?", "SELECT v FROM bench_kv WHERE id = %lld", 1},
    [ST_INSERT] = {"INSERT INTO bench_rw (id, k) VALUES (?, ?)",
                   "INSERT INTO bench_rw (id, k) VALUES (%lld, %lld)", 2},
    [ST_UPDATE] = {"UPDATE bench_kv SET v = v + 1 WHERE id = ?",
                   "UPDATE bench_kv SET v = v + 1 WHERE id = %lld", 1},
};

struct db_conn {
    MYSQL *my;
    MYSQL_STMT *st[ST_COUNT];
    bool broken;
};

/* Client-side errors (2000..2999: lost, gone, cannot connect) mean the
 * connection is unusable; server errors carry a SQLSTATE, often the generic
 * HY000, so their class is the error number ("my1290": read-only). */
static bool my_fail(struct db_conn *c, unsigned no, const char *state, const char *msg,
                    struct db_err *err)
{
    if (no >= 2000 && no < 3000) {
        c->broken = true;
        db_err_set(err, DB_ERR_LOST, NULL, msg);
    } else {
        db_err_set(err, DB_ERR_QUERY, state, msg);
        snprintf(err->code, sizeof err->code, "my%u", no % 100000);
    }
    return false;
}

static bool my_conn_fail(struct db_conn *c, struct db_err *err)
{
    return my_fail(c, mysql_errno(c->my), mysql_sqlstate(c->my), mysql_error(c->my), err);
}

static bool my_stmt_fail(struct db_conn *c, MYSQL_STMT *st, struct db_err *err)
{
    return my_fail(c, mysql_stmt_errno(st), mysql_stmt_sqlstate(st), mysql_stmt_error(st), err);
}

/* Runs sql and discards any result set. */
static bool my_exec(struct db_conn *c, const char *sql, struct db_err *err)
{
    if (mysql_real_query(c->my, sql, strlen(sql)) != 0)
        return my_conn_fail(c, err);
    MYSQL_RES *res = mysql_store_result(c->my);
    if (!res && mysql_field_count(c->my) != 0)
        return my_conn_fail(c, err);
    mysql_free_result(res);
    return true;
}

static bool my_stmt_run(struct db_conn *c, int which, const long long *args, struct db_err *err)
{
    MYSQL_STMT *st = c->st[which];
    MYSQL_BIND bind[2];
    memset(bind, 0, sizeof bind);
    for (unsigned i = 0; i < STMTS[which].nparams; i++) {
        bind[i].buffer_type = MYSQL_TYPE_LONGLONG;
        bind[i].buffer = (void *)&args[i];
    }
    if (mysql_stmt_bind_param(st, bind) != 0 || mysql_stmt_execute(st) != 0)
        return my_stmt_fail(c, st, err);
    if (mysql_stmt_field_count(st) > 0) {
        if (mysql_stmt_store_result(st) != 0)
            return my_stmt_fail(c, st, err);
        mysql_stmt_free_result(st);
    }
    return true;
}

static bool my_run(struct db_conn *c, int which, const long long *args, struct db_err *err)
{
    if (c->st[which])
        return my_stmt_run(c, which, args, err);
    char sql[256];
    if (STMTS[which].nparams == 1)
        snprintf(sql, sizeof sql, STMTS[which].fmt, args[0]);
    else
        snprintf(sql, sizeof sql, STMTS[which].fmt, args[0], args[1]);
    return my_exec(c, sql, err);
}

static bool my_prepare_all(struct db_conn *c, struct db_err *err)
{
    for (int i = 0; i < ST_COUNT; i++) {
        c->st[i] = mysql_stmt_init(c->my);
        if (!c->st[i])
            return my_conn_fail(c, err);
        if (mysql_stmt_prepare(c->st[i], STMTS[i].sql, strlen(STMTS[i].sql)) != 0)
            return my_stmt_fail(c, c->st[i], err);
    }
    return true;
}

static void my_close(struct db_conn *c)
{
    if (!c)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        if (c->st[i])
            mysql_stmt_close(c->st[i]);
    mysql_close(c->my);
    free(c);
}

struct my_dsn {
    char host[128], user[64], password[128], dbname[64];
    unsigned port;
};

/* "host=H port=P user=U dbname=D password=X", space separated, no quoting */
static bool my_parse_dsn(const char *dsn, struct my_dsn *d)
{
    *d = (struct my_dsn){.port = 3306};
    snprintf(d->host, sizeof d->host, "127.0.0.1");
    char copy[512], *save = NULL;
    snprintf(copy, sizeof copy, "%s", dsn);
    for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(tok, '=');
        if (!eq)
            return false;
        *eq++ = '\0';
        if (strcmp(tok, "host") == 0) snprintf(d->host, sizeof d->host, "%s", eq);
        else if (strcmp(tok, "port") == 0) d->port = (unsigned)atoi(eq);
        else if (strcmp(tok, "user") == 0) snprintf(d->user, sizeof d->user, "%s", eq);
        else if (strcmp(tok, "password") == 0) snprintf(d->password, sizeof d->password, "%s", eq);
        else if (strcmp(tok, "dbname") == 0) snprintf(d->dbname, sizeof d->dbname, "%s", eq);
    }
    return true;
}

static struct db_conn *my_connect(const char *dsn, bool prepared, struct db_err *err)
{
    struct my_dsn d;
    struct db_conn *c = calloc(1, sizeof *c);
    unsigned timeout = 5;
    if (!c || !my_parse_dsn(dsn, &d) || !(c->my = mysql_init(NULL))) {
        db_err_set(err, DB_ERR_CONNECT, NULL, "bad DSN or out of memory");
        free(c);
        return NULL;
    }
    mysql_options(c->my, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    if (!mysql_real_connect(c->my, d.host, d.user, d.password, d.dbname, d.port, NULL, 0)) {
        db_err_set(err, DB_ERR_CONNECT, NULL, mysql_error(c->my));
        my_close(c);
        return NULL;
    }
    if (prepared && !my_prepare_all(c, err)) {
        my_close(c);
        return NULL;
    }
    return c;
}

static bool my_alive(struct db_conn *c)
{
    return !c->broken;
}

static bool my_select(struct db_conn *c, long key, struct db_err *err)
{
    long long arg = key;
    return my_run(c, ST_SELECT, &arg, err);
}

static bool my_rw(struct db_conn *c, int64_t id, long key, bool *at_commit, struct db_err *err)
{
    long long ins[2] = {(long long)id, key}, upd = key;
    *at_commit = false;
    bool ok = my_exec(c, "BEGIN", err) && my_run(c, ST_INSERT, ins, err) &&
              my_run(c, ST_UPDATE, &upd, err);
    if (!ok) {
        struct db_err ignored;
        if (!c->broken)
            my_exec(c, "ROLLBACK", &ignored);
        return false;
    }
    *at_commit = true;
    return my_exec(c, "COMMIT", err);
}

static bool my_init(struct db_conn *c, long rows, struct db_err *err)
{
    char fill[200];
    snprintf(fill, sizeof fill,
             "INSERT INTO bench_kv SELECT seq, 0 FROM seq_1_to_%ld", rows);
    return my_exec(c, "DROP TABLE IF EXISTS bench_kv, bench_rw", err) &&
           my_exec(c, "CREATE TABLE bench_kv (id INT PRIMARY KEY, v BIGINT NOT NULL) "
                      "ENGINE=InnoDB", err) &&
           my_exec(c, "CREATE TABLE bench_rw (id BIGINT PRIMARY KEY, k INT NOT NULL, "
                      "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB", err) &&
           my_exec(c, fill, err) && my_exec(c, "ANALYZE TABLE bench_kv", err);
}

const struct db_driver db_mysql = {
    .name = "mysql",
    .connect = my_connect,
    .close = my_close,
    .alive = my_alive,
    .select = my_select,
    .rw = my_rw,
    .init = my_init,
};
