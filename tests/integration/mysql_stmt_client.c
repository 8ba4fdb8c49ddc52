/* A small MariaDB Connector/C client for test_mysql_protocol.py: the binary
 * protocol's server-side prepared statements (COM_STMT_PREPARE / EXECUTE /
 * SEND_LONG_DATA / FETCH with a cursor / RESET / CLOSE), COM_CHANGE_USER and
 * COM_RESET_CONNECTION, none of which PyMySQL or mysqlclient send. Prints one
 * line per step; the test compares them. Usage: HOST PORT USER PASSWORD DB
 */
#include <mysql.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static MYSQL *conn;

static void die(const char *what, const char *err)
{
    printf("FAIL %s: %s\n", what, err);
    exit(1);
}

static MYSQL_STMT *prepare(const char *sql)
{
    MYSQL_STMT *st = mysql_stmt_init(conn);
    if (!st || mysql_stmt_prepare(st, sql, (unsigned long)strlen(sql)) != 0)
        die("prepare", st ? mysql_stmt_error(st) : mysql_error(conn));
    return st;
}

/* One text-protocol query whose first column of its first row is printed. */
static void query_print(const char *label, const char *sql)
{
    if (mysql_query(conn, sql) != 0)
        die(sql, mysql_error(conn));
    MYSQL_RES *res = mysql_store_result(conn);
    MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
    printf("%s: %s\n", label, row && row[0] ? row[0] : "NULL");
    mysql_free_result(res);
}

static void execute_int_text(MYSQL_STMT *st, long long n, const char *s)
{
    MYSQL_BIND in[2], out[2];
    memset(in, 0, sizeof in);
    memset(out, 0, sizeof out);
    unsigned long slen = (unsigned long)strlen(s);
    in[0].buffer_type = MYSQL_TYPE_LONGLONG;
    in[0].buffer = &n;
    in[1].buffer_type = MYSQL_TYPE_STRING;
    in[1].buffer = (void *)s;
    in[1].buffer_length = slen;
    in[1].length = &slen;
    if (mysql_stmt_bind_param(st, in) != 0 || mysql_stmt_execute(st) != 0)
        die("execute", mysql_stmt_error(st));
    long long r0 = 0;
    char r1[64] = "";
    unsigned long r1len = 0;
    out[0].buffer_type = MYSQL_TYPE_LONGLONG;
    out[0].buffer = &r0;
    out[1].buffer_type = MYSQL_TYPE_STRING;
    out[1].buffer = r1;
    out[1].buffer_length = sizeof r1 - 1;
    out[1].length = &r1len;
    if (mysql_stmt_bind_result(st, out) != 0 || mysql_stmt_store_result(st) != 0)
        die("store", mysql_stmt_error(st));
    while (mysql_stmt_fetch(st) == 0)
        printf("row: %lld %.*s\n", r0, (int)r1len, r1);
    mysql_stmt_free_result(st);
}

int main(int argc, char **argv)
{
    if (argc != 6 && !(argc == 7 && strcmp(argv[6], "wait") == 0)) {
        fprintf(stderr, "usage: %s HOST PORT USER PASSWORD DB [wait]\n", argv[0]);
        return 2;
    }
    conn = mysql_init(NULL);
    unsigned timeout = 10;
    mysql_options(conn, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(conn, MYSQL_OPT_READ_TIMEOUT, &timeout);
    if (!mysql_real_connect(conn, argv[1], argv[3], argv[4], argv[5], (unsigned)atoi(argv[2]),
                            NULL, 0))
        die("connect", mysql_error(conn));
    printf("thread id: %lu\n", mysql_thread_id(conn));
    query_print("backend id", "SELECT CONNECTION_ID()");

    /* prepare, execute three times with parameters */
    MYSQL_STMT *calc = prepare("SELECT ? * 2, CONCAT('v', ?)");
    printf("params: %lu\n", mysql_stmt_param_count(calc));
    for (int i = 1; i <= 3; i++) {
        char s[8];
        snprintf(s, sizeof s, "%d", i);
        execute_int_text(calc, i, s);
    }
    if (argc == 7) {
        /* "wait": the statement must still work after whatever the test
         * does meanwhile (a move to another writer) */
        printf("ready\n");
        fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 3;
        execute_int_text(calc, 7, "after");
        query_print("server_id", "SELECT @@server_id");
        mysql_stmt_close(calc);
        mysql_close(conn);
        return 0;
    }

    /* a second statement alive at the same time, parameters sent as long data */
    MYSQL_STMT *len = prepare("SELECT LENGTH(?)");
    MYSQL_BIND in;
    memset(&in, 0, sizeof in);
    in.buffer_type = MYSQL_TYPE_BLOB;
    if (mysql_stmt_bind_param(len, &in) != 0)
        die("bind long", mysql_stmt_error(len));
    char *piece = malloc(100000);
    memset(piece, 'x', 100000);
    for (int i = 0; i < 3; i++)
        if (mysql_stmt_send_long_data(len, 0, piece, 100000) != 0)
            die("send_long_data", mysql_stmt_error(len));
    free(piece);
    long long got = 0;
    MYSQL_BIND out;
    memset(&out, 0, sizeof out);
    out.buffer_type = MYSQL_TYPE_LONGLONG;
    out.buffer = &got;
    if (mysql_stmt_execute(len) != 0 || mysql_stmt_bind_result(len, &out) != 0 ||
        mysql_stmt_store_result(len) != 0 || mysql_stmt_fetch(len) != 0)
        die("long data execute", mysql_stmt_error(len));
    printf("long data: %lld\n", got);
    mysql_stmt_free_result(len);
    if (mysql_stmt_reset(len) != 0)     /* COM_STMT_RESET */
        die("reset", mysql_stmt_error(len));
    printf("reset: ok\n");

    /* a read-only cursor: rows come by COM_STMT_FETCH, three at a time */
    MYSQL_STMT *cur = prepare("SELECT seq FROM seq_1_to_10");
    unsigned long type = CURSOR_TYPE_READ_ONLY, prefetch = 3;
    mysql_stmt_attr_set(cur, STMT_ATTR_CURSOR_TYPE, &type);
    mysql_stmt_attr_set(cur, STMT_ATTR_PREFETCH_ROWS, &prefetch);
    long long seq = 0, sum = 0;
    int rows = 0;
    memset(&out, 0, sizeof out);
    out.buffer_type = MYSQL_TYPE_LONGLONG;
    out.buffer = &seq;
    if (mysql_stmt_execute(cur) != 0 || mysql_stmt_bind_result(cur, &out) != 0)
        die("cursor execute", mysql_stmt_error(cur));
    while (mysql_stmt_fetch(cur) == 0) {
        rows++;
        sum += seq;
    }
    printf("cursor: %d rows, sum %lld\n", rows, sum);

    /* close one, the others keep working */
    mysql_stmt_close(len);
    execute_int_text(calc, 21, "after close");
    mysql_stmt_close(cur);
    mysql_stmt_close(calc);

    /* COM_RESET_CONNECTION drops user variables */
    if (mysql_query(conn, "SET @ferry_var = 7") != 0)
        die("set", mysql_error(conn));
    query_print("before reset", "SELECT @ferry_var");
    if (mysql_reset_connection(conn) != 0)
        die("reset_connection", mysql_error(conn));
    query_print("after reset", "SELECT @ferry_var");

    /* COM_CHANGE_USER to another schema; statements work afterwards */
    if (mysql_change_user(conn, argv[3], argv[4], "information_schema") != 0)
        die("change_user", mysql_error(conn));
    query_print("after change_user", "SELECT DATABASE()");
    MYSQL_STMT *again = prepare("SELECT ? * 2, CONCAT('v', ?)");
    execute_int_text(again, 50, "changed");
    mysql_stmt_close(again);
    mysql_close(conn);
    printf("done\n");
    return 0;
}
