/* PostgreSQL session-state tracker: message sequences as a client and a
 * server exchange them, including pipelined extended-protocol requests with
 * an error in the middle, Close, DISCARD ALL, transaction status changes,
 * the caps, and responses that match no request. */
#include <stdint.h>

#include "pg/state.h"
#include "unit.h"

/* ---- feeding helpers ------------------------------------------------------------ */

static int fe_raw(struct pg_state *s, uint8_t type, const void *body, size_t n)
{
    return pg_state_frontend(s, type, body, n);
}

/* Feeds every message of a built buffer as frontend traffic. */
static int fe_built(struct pg_state *s, struct ferry_wbuf *b)
{
    int rc = 0;
    for (size_t off = 0; off < b->len && rc == 0;) {
        uint8_t type;
        uint32_t total;
        if (pg_frame(b->data + off, b->len - off, 1 << 20, &type, &total) <= 0)
            return FERRY_BAD_MSG;
        rc = pg_state_frontend(s, type, b->data + off + 5, total - 5);
        off += total;
    }
    ferry_wbuf_reset(b);
    return rc;
}

static struct ferry_wbuf wb;

static void fe_parse(struct pg_state *s, const char *name, const char *query)
{
    static const uint32_t types[] = {23, 25};
    pg_build_parse(&wb, name, query, types, 2);
    fe_built(s, &wb);
}

static void fe_sync(struct pg_state *s)
{
    pg_build_sync(&wb);
    fe_built(s, &wb);
}

static void fe_query(struct pg_state *s, const char *sql)
{
    pg_build_query(&wb, sql);
    fe_built(s, &wb);
}

/* Close or Describe: kind 'S'/'P' and a name. */
static void fe_target(struct pg_state *s, uint8_t type, char kind, const char *name)
{
    uint8_t body[64];
    body[0] = (uint8_t)kind;
    size_t n = strlen(name) + 1;
    memcpy(body + 1, name, n);
    fe_raw(s, type, body, n + 1);
}

static void fe_bind(struct pg_state *s)
{
    fe_raw(s, 'B', "\0\0\0\0\0\0\0\0", 8);
}

static void fe_execute(struct pg_state *s)
{
    fe_raw(s, 'E', "\0\0\0\0\0", 5);
}

/* Feeds backend messages from a script of space-separated tokens: a type
 * letter, then for 'Z' the status, for 'C' the tag ('_' for spaces), for 'S'
 * "name=value"; 'K' and 'E' get a fixed valid body, others an empty one. Returns the first non-zero result. */
static int be(struct pg_state *s, const char *script)
{
    char tok[128];
    int rc = 0;
    for (const char *p = script; *p && rc == 0;) {
        size_t n = strcspn(p, " ");
        memcpy(tok, p, n);
        tok[n] = '\0';
        p += n + (p[n] == ' ');
        uint8_t type = (uint8_t)tok[0];
        char body[128];
        size_t blen = 0;
        if (type == 'Z') {
            body[0] = tok[1], blen = 1;
        } else if (type == 'C') {
            blen = strlen(tok + 1) + 1;
            memcpy(body, tok + 1, blen);
            for (char *u = body; *u; u++)
                *u = *u == '_' ? ' ' : *u;
        } else if (type == 'S') {
            blen = strlen(tok + 1) + 1;
            memcpy(body, tok + 1, blen);
            body[strcspn(body, "=")] = '\0';
        } else if (type == 'K') {
            memcpy(body, "\0\0\0\1\0\0\0\2", 8);
            blen = 8;
        } else if (type == 'E') {
            static const char err[] = "SERROR\0C42601\0Msyntax error\0";
            memcpy(body, err, sizeof err);
            blen = sizeof err;
        }
        rc = pg_state_backend(s, type, (const uint8_t *)body, blen);
    }
    return rc;
}

static struct pg_state *fresh(const struct pg_state_limits *lim)
{
    struct pg_state *s = pg_state_new(lim);
    if (s)
        be(s, "Sserver_version=15.4 K ZI");
    return s;
}

static bool has_stmt(const struct pg_state *s, const char *name)
{
    return pg_state_statement(s, name, strlen(name)) != NULL;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_transaction_status(void)
{
    struct pg_state *s = fresh(NULL);
    ASSERT_TRUE(s);
    ASSERT_TRUE(pg_state_at_safe_point(s));
    fe_query(s, "BEGIN");
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* in flight */
    ASSERT_EQ_INT(be(s, "CBEGIN ZT"), 0);
    ASSERT_EQ_INT(pg_state_tx_status(s), 'T');
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* inside a transaction */
    fe_query(s, "select nope");
    be(s, "E ZE");
    ASSERT_EQ_INT(pg_state_tx_status(s), 'E');
    ASSERT_TRUE(!pg_state_at_safe_point(s));
    fe_query(s, "ROLLBACK");
    be(s, "CROLLBACK");
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* ReadyForQuery not yet seen */
    be(s, "ZI");
    ASSERT_TRUE(pg_state_at_safe_point(s));
    pg_state_free(s);
}

static void test_parse_confirmed_by_parse_complete(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "s1", "select $1, $2");
    fe_sync(s);
    ASSERT_TRUE(!has_stmt(s, "s1"));                /* sent, not confirmed */
    be(s, "1");
    const struct pg_statement *st = pg_state_statement(s, "s1", 2);
    ASSERT_TRUE(st);
    ASSERT_EQ_STR(st->query, "select $1, $2");
    ASSERT_EQ_INT(st->nparam_types, 2);
    ASSERT_EQ_INT(st->param_types[0], 23);
    ASSERT_EQ_INT(st->param_types[1], 25);
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* the Sync is still in flight */
    be(s, "ZI");
    ASSERT_TRUE(pg_state_at_safe_point(s));
    ASSERT_TRUE(pg_state_statements_exact(s));
    pg_state_free(s);
}

/* Parse s1 / Bind / Execute / Parse s2 (fails) / Parse s4 / Bind / Execute /
 * Sync / Parse s3 / Sync: the server skips s4..Execute, s1 and s3 survive. */
static void test_pipeline_error_discards_until_sync(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "s1", "select 1");
    fe_bind(s);
    fe_execute(s);
    fe_parse(s, "s2", "selec 2");
    fe_parse(s, "s4", "select 4");
    fe_bind(s);
    fe_execute(s);
    fe_sync(s);
    fe_parse(s, "s3", "select 3");
    fe_sync(s);
    ASSERT_EQ_INT(be(s, "1 2 CSELECT_1 E"), 0);
    ASSERT_TRUE(has_stmt(s, "s1"));
    ASSERT_TRUE(!has_stmt(s, "s2"));
    ASSERT_TRUE(!pg_state_at_safe_point(s));
    ASSERT_EQ_INT(be(s, "ZI 1 ZI"), 0);
    ASSERT_TRUE(has_stmt(s, "s3"));
    ASSERT_TRUE(!has_stmt(s, "s4"));
    ASSERT_EQ_INT(pg_state_statement_count(s), 2);
    ASSERT_TRUE(!pg_state_lost(s));
    ASSERT_TRUE(pg_state_at_safe_point(s));
    pg_state_free(s);
}

/* The error arrives before the client sent its Sync: what the client sends
 * until that Sync is ignored by the server, so it is by the tracker too. */
static void test_error_before_sync_is_sent(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "bad", "selec");
    be(s, "E");
    fe_parse(s, "s2", "select 2");                  /* skipped by the server */
    fe_query(s, "select 3");                        /* this too */
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* skipping until Sync */
    fe_sync(s);
    be(s, "ZI");
    ASSERT_TRUE(pg_state_at_safe_point(s));
    ASSERT_EQ_INT(pg_state_statement_count(s), 0);
    fe_parse(s, "s5", "select 5");                  /* back to normal */
    fe_sync(s);
    be(s, "1 ZI");
    ASSERT_TRUE(has_stmt(s, "s5"));
    ASSERT_TRUE(!pg_state_lost(s));
    pg_state_free(s);
}

/* An error inside a simple query skips nothing after it. */
static void test_simple_query_error_skips_nothing(void)
{
    struct pg_state *s = fresh(NULL);
    fe_query(s, "select nope");
    fe_parse(s, "s1", "select 1");
    fe_sync(s);
    ASSERT_EQ_INT(be(s, "E ZI 1 ZI"), 0);
    ASSERT_TRUE(has_stmt(s, "s1"));
    ASSERT_TRUE(pg_state_at_safe_point(s));
    pg_state_free(s);
}

static void test_close_statement_and_portal(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "s1", "select 1");
    fe_parse(s, "s2", "select 2");
    fe_sync(s);
    be(s, "1 1 ZI");
    fe_target(s, 'C', 'S', "s1");
    fe_target(s, 'C', 'P', "s2");                   /* a portal named like a statement */
    fe_target(s, 'C', 'S', "never");                /* closing a missing one is no error */
    fe_sync(s);
    ASSERT_TRUE(has_stmt(s, "s1"));                 /* until CloseComplete */
    be(s, "3 3 3 ZI");
    ASSERT_TRUE(!has_stmt(s, "s1"));
    ASSERT_TRUE(has_stmt(s, "s2"));
    ASSERT_TRUE(pg_state_at_safe_point(s));
    pg_state_free(s);
}

/* Parse then Close of the same name in one pipeline. */
static void test_parse_and_close_pipelined(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "s1", "select 1");
    fe_target(s, 'C', 'S', "s1");
    fe_sync(s);
    be(s, "1 3 ZI");
    ASSERT_EQ_INT(pg_state_statement_count(s), 0);
    pg_state_free(s);
}

static void test_discard_all_and_sql_prepare(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "s1", "select 1");
    fe_parse(s, "s2", "select 2");
    fe_sync(s);
    be(s, "1 1 ZI");
    fe_query(s, "PREPARE q AS select 1");
    be(s, "CPREPARE ZI");
    ASSERT_TRUE(!pg_state_statements_exact(s));
    fe_query(s, "DISCARD ALL");
    be(s, "CDISCARD_ALL");
    ASSERT_EQ_INT(pg_state_statement_count(s), 0);
    ASSERT_TRUE(pg_state_statements_exact(s));
    be(s, "ZI");
    fe_parse(s, "s3", "select 3");
    fe_sync(s);
    be(s, "1 ZI");
    fe_query(s, "DEALLOCATE ALL");
    be(s, "CDEALLOCATE_ALL ZI");
    ASSERT_EQ_INT(pg_state_statement_count(s), 0);
    ASSERT_TRUE(pg_state_at_safe_point(s));
    pg_state_free(s);
}

static void test_unnamed_statement_not_kept(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "", "select 1");
    fe_bind(s);
    fe_target(s, 'D', 'P', "");
    fe_execute(s);
    fe_sync(s);
    ASSERT_EQ_INT(be(s, "1 2 T CSELECT_1 ZI"), 0);
    ASSERT_EQ_INT(pg_state_statement_count(s), 0);
    ASSERT_TRUE(pg_state_at_safe_point(s));
    ASSERT_TRUE(!pg_state_lost(s));
    pg_state_free(s);
}

/* Describe of a statement (ParameterDescription then NoData), a suspended
 * portal, an empty query, and row descriptions inside a simple query. */
static void test_describe_suspend_and_simple_rows(void)
{
    struct pg_state *s = fresh(NULL);
    fe_parse(s, "s1", "insert into t values ($1)");
    fe_target(s, 'D', 'S', "s1");
    fe_bind(s);
    fe_execute(s);
    fe_bind(s);
    fe_execute(s);
    fe_sync(s);
    ASSERT_EQ_INT(be(s, "1 t n 2 s 2 I ZI"), 0);
    fe_query(s, "select 1; select 2");
    ASSERT_EQ_INT(be(s, "T D CSELECT_1 T D CSELECT_1 ZI"), 0);
    ASSERT_TRUE(!pg_state_lost(s));
    ASSERT_TRUE(pg_state_at_safe_point(s));
    ASSERT_TRUE(has_stmt(s, "s1"));
    pg_state_free(s);
}

static void test_parameters_and_key(void)
{
    struct pg_state *s = pg_state_new(NULL);
    struct pg_backend_key k;
    ASSERT_TRUE(!pg_state_backend_key(s, &k));
    ASSERT_EQ_INT(pg_state_tx_status(s), 0);
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* no ReadyForQuery yet */
    static const uint8_t key[] = {0, 0, 0x30, 0x39, 0, 0, 0, 7};
    ASSERT_EQ_INT(pg_state_backend(s, 'K', key, sizeof key), 0);
    ASSERT_EQ_INT(be(s, "STimeZone=UTC SDateStyle=ISO STimeZone=Europe/Paris ZI"), 0);
    ASSERT_TRUE(pg_state_backend_key(s, &k));
    ASSERT_EQ_INT(k.pid, 12345);
    ASSERT_EQ_INT(k.key, 7);
    ASSERT_EQ_STR(pg_state_parameter(s, "TimeZone"), "Europe/Paris");
    ASSERT_EQ_STR(pg_state_parameter(s, "DateStyle"), "ISO");
    ASSERT_TRUE(pg_state_parameter(s, "search_path") == NULL);
    const char *name, *value;
    ASSERT_TRUE(pg_state_parameter_at(s, 1, &name, &value));
    ASSERT_EQ_STR(name, "DateStyle");
    ASSERT_TRUE(!pg_state_parameter_at(s, 2, &name, &value));
    pg_state_free(s);
}

static void test_statement_caps(void)
{
    struct pg_state_limits lim = {.max_statements = 2, .max_statement_bytes = 4096};
    struct pg_state *s = fresh(&lim);
    fe_parse(s, "a", "select 1");
    fe_parse(s, "b", "select 2");
    fe_parse(s, "c", "select 3");
    fe_sync(s);
    be(s, "1 1 1 ZI");
    ASSERT_EQ_INT(pg_state_statement_count(s), 2);
    ASSERT_TRUE(!pg_state_statements_exact(s));
    ASSERT_EQ_STR(pg_state_statement_at(s, 0)->name, "a");
    ASSERT_EQ_STR(pg_state_statement_at(s, 1)->name, "b");
    ASSERT_TRUE(pg_state_statement_at(s, 2) == NULL);
    /* a statement bigger than the byte cap is never copied, even pending */
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    fe_query(s, "DISCARD ALL");
    be(s, "CDISCARD_ALL ZI");
    fe_parse(s, "big", big);
    fe_sync(s);
    be(s, "1 ZI");
    ASSERT_EQ_INT(pg_state_statement_count(s), 0);
    ASSERT_TRUE(!pg_state_statements_exact(s));
    ASSERT_TRUE(pg_state_at_safe_point(s));
    pg_state_free(s);
}

static void test_too_many_pending_loses_track(void)
{
    struct pg_state_limits lim = {.max_pending = 4};
    struct pg_state *s = fresh(&lim);
    for (int i = 0; i < 5; i++)
        fe_sync(s);
    ASSERT_TRUE(pg_state_lost(s));
    be(s, "ZI ZI ZI ZI ZI");
    ASSERT_EQ_INT(pg_state_tx_status(s), 'I');
    ASSERT_TRUE(!pg_state_at_safe_point(s));        /* never again */
    pg_state_free(s);
}

static void test_unmatched_response_loses_track(void)
{
    struct pg_state *s = fresh(NULL);
    be(s, "2");                                     /* BindComplete, nothing bound */
    ASSERT_TRUE(pg_state_lost(s));
    ASSERT_TRUE(!pg_state_at_safe_point(s));
    pg_state_free(s);
    s = fresh(NULL);
    fe_parse(s, "s1", "select 1");
    fe_sync(s);
    be(s, "ZI");                                    /* ReadyForQuery before ParseComplete */
    ASSERT_TRUE(pg_state_lost(s));
    pg_state_free(s);
}

static void test_malformed_bodies(void)
{
    struct pg_state *s = fresh(NULL);
    ASSERT_EQ_INT(fe_raw(s, 'P', "s1\0select", 9), FERRY_BAD_MSG);
    ASSERT_EQ_INT(fe_raw(s, 'C', "Xs1", 4), FERRY_BAD_MSG);
    ASSERT_EQ_INT(pg_state_backend(s, 'Z', (const uint8_t *)"Q", 1), FERRY_BAD_MSG);
    ASSERT_EQ_INT(pg_state_backend(s, 'S', (const uint8_t *)"TimeZone", 8), FERRY_BAD_MSG);
    ASSERT_EQ_INT(pg_state_backend(s, 'K', (const uint8_t *)"1234", 4), FERRY_BAD_MSG);
    ASSERT_EQ_INT(pg_state_backend(s, 'C', (const uint8_t *)"SELECT", 6), FERRY_BAD_MSG);
    pg_state_free(s);
}

int main(void)
{
    ferry_wbuf_init(&wb, 0);
    RUN(test_transaction_status);
    RUN(test_parse_confirmed_by_parse_complete);
    RUN(test_pipeline_error_discards_until_sync);
    RUN(test_error_before_sync_is_sent);
    RUN(test_simple_query_error_skips_nothing);
    RUN(test_close_statement_and_portal);
    RUN(test_parse_and_close_pipelined);
    RUN(test_discard_all_and_sql_prepare);
    RUN(test_unnamed_statement_not_kept);
    RUN(test_describe_suspend_and_simple_rows);
    RUN(test_parameters_and_key);
    RUN(test_statement_caps);
    RUN(test_too_many_pending_loses_track);
    RUN(test_unmatched_response_loses_track);
    RUN(test_malformed_bodies);
    ferry_wbuf_free(&wb);
    UNIT_DONE();
}
