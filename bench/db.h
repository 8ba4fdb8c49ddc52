/* The load generator's view of a database: connect, one select-only or one
 * read-write transaction, schema setup. One implementation per wire protocol
 * (db_pg.c: libpq; db_my.c: libmariadb); errors come back classified. */
#ifndef BENCH_DB_H
#define BENCH_DB_H

#include <stdbool.h>
#include <stdint.h>

enum db_err_kind {
    DB_ERR_CONNECT,   /* could not connect or log in */
    DB_ERR_LOST,      /* the connection broke, no SQLSTATE from the server */
    DB_ERR_QUERY,     /* the server answered with an error (sqlstate set) */
};

struct db_err {
    enum db_err_kind kind;
    char sqlstate[6];
    /* the driver's own code when the SQLSTATE says too little: MySQL's
     * error number as "my1290" (its SQLSTATE is often the generic HY000);
     * empty for PostgreSQL */
    char code[8];
    char msg[200];
};

struct db_conn;

struct db_driver {
    const char *name;
    /* dsn: "host=H port=P user=U dbname=D [password=X]"; prepared: prepare
     * the statements once per connection and run them by name */
    struct db_conn *(*connect)(const char *dsn, bool prepared, struct db_err *err);
    void (*close)(struct db_conn *c);
    bool (*alive)(struct db_conn *c);
    bool (*select)(struct db_conn *c, long key, struct db_err *err);
    /* BEGIN; INSERT id; UPDATE key; COMMIT. *at_commit: the error came from
     * COMMIT, so the write may or may not have been applied */
    bool (*rw)(struct db_conn *c, int64_t id, long key, bool *at_commit, struct db_err *err);
    /* (re)creates bench_kv with rows rows and an empty bench_rw */
    bool (*init)(struct db_conn *c, long rows, struct db_err *err);
};

extern const struct db_driver db_pg;
extern const struct db_driver db_mysql;

void db_err_set(struct db_err *err, enum db_err_kind kind, const char *sqlstate, const char *msg);

#endif
