/* The MySQL session-state tracker, driven by scripts of whole packets: each
 * step is one packet from the client (C) or the server (S) and the result
 * the tracker must return. Server packets marked "MariaDB 10.11.19" were
 * captured from a throwaway mariadbd with a python3 socket script (see
 * test_mysql_codec.c); client packets are what that script sent.
 */
#include <stdio.h>

#include "state.h"
#include "test_support.h"
#include "unit.h"

struct step {
    char dir;                   /* 'C' client, 'S' server */
    const char *hex;            /* one whole packet */
    int want;                   /* tracker result */
};

#define DONE MY_STATE_DONE
#define BAD FERRY_BAD_MSG
#define BASE_CAPS (MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION | MY_CLIENT_PLUGIN_AUTH | \
                   MY_CLIENT_TRANSACTIONS | MY_CLIENT_MULTI_STATEMENTS | MY_CLIENT_MULTI_RESULTS | \
                   MY_CLIENT_PS_MULTI_RESULTS)

/* Plays steps; returns the index of the first mismatch, or -1. */
static int play(struct my_state *st, const struct step *steps, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t buf[256];
        size_t len = my_test_unhex(steps[i].hex, buf, sizeof buf);
        struct my_logical lp;
        if (my_logical_decode(buf, len, 0, &lp) != (int)len)
            return (int)i;
        int rc = steps[i].dir == 'C' ? my_state_client_packet(st, &lp)
                                     : my_state_server_packet(st, &lp);
        if (rc != steps[i].want) {
            fprintf(stderr, "  step %zu (%c %s): got %d, want %d\n", i, steps[i].dir,
                    steps[i].hex, rc, steps[i].want);
            return (int)i;
        }
    }
    return -1;
}

#define PLAY(st, steps) ASSERT_EQ_INT(play((st), (steps), sizeof(steps) / sizeof((steps)[0])), -1)

/* MariaDB 10.11.19: SELECT 1 (text result set with EOFs). */
static const struct step select1[] = {
    {'C', "090000000353454c4543542031", 0},
    {'S', "0100000101", 0},
    {'S', "17000002036465660000000131000c3f0001000000038100000000", 0},
    {'S', "05000003fe00000200", 0},
    {'S', "020000040131", 0},
    {'S', "05000005fe00000200", DONE},
};

static void test_text_result_and_transactions(void)
{
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS, 45);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    PLAY(&st, select1);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    static const struct step begin[] = {
        {'C', "0600000003424547494e", 0},
        {'S', "0700000100000003000000", DONE},      /* MariaDB 10.11.19: IN_TRANS */
    };
    PLAY(&st, begin);
    ASSERT_TRUE(st.in_trans && st.autocommit);
    ASSERT_TRUE(!my_state_at_safe_point(&st));
    PLAY(&st, select1);     /* an EOF's status does not end the transaction */
    static const struct step commit[] = {
        {'C', "0700000003434f4d4d4954", 0},
        {'S', "0700000100000002000000", DONE},
    };
    PLAY(&st, commit);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    my_state_free(&st);
}

static void test_multi_results(void)
{
    /* MariaDB 10.11.19: SELECT 1; SELECT 2 (MORE_RESULTS 0x0008 on the first). */
    static const struct step multi[] = {
        {'C', "130000000353454c45435420313b2053454c4543542032", 0},
        {'S', "0100000101", 0},
        {'S', "17000002036465660000000131000c3f0001000000038100000000", 0},
        {'S', "05000003fe00000a00", 0},
        {'S', "020000040131", 0},
        {'S', "05000005fe00000a00", 0},
        {'S', "0100000601", 0},
        {'S', "17000007036465660000000132000c3f0001000000038100000000", 0},
        {'S', "05000008fe00000200", 0},
        {'S', "020000090132", 0},
        {'S', "0500000afe00000200", DONE},
    };
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS, 45);
    PLAY(&st, multi);
    /* OK with MORE_RESULTS, then an ERR ends everything */
    static const struct step ok_then_err[] = {
        {'C', "0400000003782079", 0},
        {'S', "0700000100000008000000", 0},
        {'S', "0a000002ff7a0423343253303278", DONE},
    };
    PLAY(&st, ok_then_err);
    my_state_free(&st);
}

static void test_prepared_statements(void)
{
    /* MariaDB 10.11.19: prepare SELECT ? + 1, ? (2 params, 2 columns). */
    static const struct step prepare[] = {
        {'C', "1000000016" "53454c454354203f202b20312c203f", 0},
        {'S', "0c000001000100000002000200000000", MY_STATE_PREPARED},
        {'S', "1700000203646566000000013f000c3f0000000000068000000000", 0},
        {'S', "1700000303646566000000013f000c3f0000000000068000000000", 0},
        {'S', "05000004fe00000200", 0},
        {'S', "1b00000503646566000000053f202b2031000c3f0011000000058000000000", 0},
        {'S', "1700000603646566000000013f000c3f0000000000068000000000", 0},
        {'S', "05000007fe00000200", DONE},
    };
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS, 45);
    PLAY(&st, prepare);
    ASSERT_EQ_INT(st.prepared_id, 1);
    const struct my_stmt *s = my_state_stmt_find(&st, 1);
    ASSERT_TRUE(s && s->backend_id == 1 && s->num_params == 2 && s->num_columns == 2);
    ASSERT_EQ_STR(s->sql, "SELECT ? + 1, ?");
    /* MariaDB 10.11.19: COM_STMT_EXECUTE of SELECT ? with 7, a binary result set. */
    static const struct step execute[] = {
        {'C', "1600000017010000000001000000000108000700000000000000", 0},
        {'S', "0100000101", 0},
        {'S', "1700000203646566000000013f000c3f0015000000088100000000", 0},
        {'S', "05000003fe00000200", 0},
        {'S', "0a00000400000700000000000000", 0},
        {'S', "05000005fe00000200", DONE},
        {'C', "050000001a01000000", 0},                 /* COM_STMT_RESET */
        {'S', "0700000100000002000000", DONE},
        {'C', "050000001901000000", 0},                 /* COM_STMT_CLOSE: no reply */
    };
    PLAY(&st, execute);
    ASSERT_TRUE(my_state_stmt_find(&st, 1) == NULL);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    /* a cursor: the EOF after the definitions carries CURSOR_EXISTS, no rows follow */
    static const struct step cursor[] = {
        {'C', "0b0000001601000000" "53454c454354", 0},
        {'S', "0c000001000900000001000000000000", MY_STATE_PREPARED},
        {'S', "1700000203646566000000013f000c3f0000000000068000000000", 0},
        {'S', "05000003fe00000200", DONE},
        {'C', "0b0000001702000000010100000000", 0},
        {'S', "0100000101", 0},
        {'S', "1700000203646566000000013f000c3f0000000000068000000000", 0},
        {'S', "05000003fe00004200", DONE},
        {'C', "090000001c020000000a000000", 0},        /* COM_STMT_FETCH */
        {'S', "0a00000100000700000000000000", 0},
        {'S', "05000002fe00008200", DONE},
    };
    PLAY(&st, cursor);
    ASSERT_TRUE(my_state_stmt_find(&st, 2) && my_state_stmt_find(&st, 2)->backend_id == 9);
    ASSERT_EQ_INT(my_state_stmt_rebind(&st, 2, 44), 0);
    ASSERT_EQ_INT(my_state_stmt_find(&st, 2)->backend_id, 44);
    ASSERT_EQ_INT(my_state_stmt_rebind(&st, 3, 44), -1);
    /* COM_RESET_CONNECTION drops every statement */
    static const struct step reset[] = {
        {'C', "010000001f", 0},
        {'S', "0700000100000002000000", DONE},
    };
    PLAY(&st, reset);
    ASSERT_EQ_INT(st.nstmts, 0);
    my_state_free(&st);
}

static void test_schema_and_tracking(void)
{
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS | MY_CLIENT_SESSION_TRACK | MY_CLIENT_DEPRECATE_EOF, 45);
    /* MariaDB 10.11.19 with session tracking; client sent the COM_QUERYs. */
    static const struct step tracked[] = {
        {'C', "0600000002" "6d7973716c", 0},    /* COM_INIT_DB mysql */
        {'S', "0700000100000002000000", DONE},
        {'C', "0500000003" "55534520", 0},      /* "USE " (text does not matter) */
        {'S', "110000010000000240000000080106056d7973716d", DONE},   /* schema -> mysqm */
        {'C', "1100000003" "534554206175746f636f6d6d69743d30", 0},
        {'S', "1a000001000000004000000011000f0a6175746f636f6d6d6974034f4646", DONE},
        {'C', "0900000003" "53454c4543542031", 0},
        {'S', "0100000101", 0},
        {'S', "17000002036465660000000131000c3f0001000000038100000000", 0},
        {'S', "020000030131", 0},
        {'S', "07000004fe000000000000", DONE},      /* DEPRECATE_EOF terminator */
    };
    PLAY(&st, tracked);
    ASSERT_EQ_STR(st.schema, "mysqm");
    ASSERT_EQ_STR(my_state_var(&st, "autocommit"), "OFF");
    ASSERT_TRUE(!st.autocommit);
    ASSERT_TRUE(my_state_var(&st, "nope") == NULL);
    my_state_free(&st);
}

static void test_local_infile(void)
{
    /* MariaDB 10.11.19: LOAD DATA LOCAL INFILE 'x.txt' INTO TABLE t. */
    static const struct step infile[] = {
        {'C', "0300000003782e", 0},
        {'S', "06000001fb782e747874", 0},
        {'C', "02000002310a", 0},
        {'C', "00000003", 0},
        {'S', "37000004000100020000002f5265636f7264733a2031202044656c657465643a20302020536b6970"
              "7065643a203020205761726e696e67733a2030", DONE},
    };
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS | MY_CLIENT_LOCAL_FILES, 45);
    PLAY(&st, infile);
    my_state_free(&st);
    /* a file request the client never allowed is a protocol violation */
    static const struct step refused[] = {
        {'C', "0300000003782e", 0},
        {'S', "06000001fb782e747874", BAD},
    };
    my_state_init(&st, NULL, BASE_CAPS, 45);
    PLAY(&st, refused);
    my_state_free(&st);
}

/* Issue 24 item 2: MariaDB 10.11.19 sets CURSOR_EXISTS on the result set of
 * a prepared CALL whose procedure opened a cursor (status 0x4a with
 * MORE_RESULTS), with or without the client's cursor flag, then sends the
 * rows; only a cursor the client asked for (and no more results) waits for
 * COM_STMT_FETCH. */
static void test_cursor_exists_without_a_cursor(void)
{
    static const struct step call_prepare[] = {
        {'C', "090000001643414c4c20702829", 0},                     /* CALL p() */
        {'S', "0c000001000100000000000000000000", DONE | MY_STATE_PREPARED},
    };
    /* the server's answer to COM_STMT_EXECUTE of CALL p(): 2 columns,
     * one row, then the procedure's final OK */
    static const struct step call_rows[] = {
        {'S', "0100000102", 0},
        {'S', "1700000203646566000000013f000c3f0000000000068000000000", 0},
        {'S', "1700000303646566000000013f000c3f0000000000068000000000", 0},
        {'S', "05000004fe00004a00", 0},
        {'S', "0800000500000162" "0a000000", 0},
        {'S', "05000006fe00004a00", 0},
        {'S', "0700000700000002000000", DONE},
    };
    static const struct step exec_plain[] = {
        {'C', "0b0000001701000000000100000000", 0},
    };
    static const struct step exec_cursor[] = {
        {'C', "0b0000001701000000010100000000", 0},                /* CURSOR_TYPE_READ_ONLY */
    };
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS, 45);
    PLAY(&st, call_prepare);
    PLAY(&st, exec_plain);
    PLAY(&st, call_rows);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    PLAY(&st, exec_cursor);
    PLAY(&st, call_rows);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    /* CURSOR_EXISTS on a single result set the client asked no cursor for:
     * the rows still follow */
    static const struct step single[] = {
        {'C', "0b0000001701000000000100000000", 0},
        {'S', "0100000101", 0},
        {'S', "1700000203646566000000013f000c3f0000000000068000000000", 0},
        {'S', "05000003fe00004200", 0},
        {'S', "0a00000400000700000000000000", 0},
        {'S', "05000005fe00000200", DONE},
    };
    PLAY(&st, single);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    my_state_free(&st);
}

/* Issue 24 item 3: a prepared LOAD DATA LOCAL INFILE gets the file request
 * after COM_STMT_EXECUTE, accepted only when the client negotiated
 * LOCAL_FILES. */
static void test_prepared_local_infile(void)
{
    static const struct step infile[] = {
        {'C', "0b0000001701000000000100000000", 0},
        {'S', "06000001fb782e747874", 0},
        {'C', "02000002310a", 0},
        {'C', "00000003", 0},
        {'S', "0700000400010002000000", DONE},
    };
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS | MY_CLIENT_LOCAL_FILES, 45);
    PLAY(&st, infile);
    ASSERT_TRUE(my_state_at_safe_point(&st));
    my_state_free(&st);
    static const struct step refused[] = {
        {'C', "0b0000001701000000000100000000", 0},
        {'S', "06000001fb782e747874", BAD},
    };
    my_state_init(&st, NULL, BASE_CAPS, 45);
    PLAY(&st, refused);
    my_state_free(&st);
    /* other commands still may not ask for a file */
    static const struct step ping[] = {
        {'C', "010000000e", 0},
        {'S', "06000001fb782e747874", BAD},
    };
    my_state_init(&st, NULL, BASE_CAPS | MY_CLIENT_LOCAL_FILES, 45);
    PLAY(&st, ping);
    my_state_free(&st);
}

static void test_violations_and_limits(void)
{
    struct my_state st;
    struct my_state_limits lim;
    my_state_limits_default(&lim);
    lim.max_stmts = 1;
    lim.max_vars = 1;
    my_state_init(&st, &lim, BASE_CAPS | MY_CLIENT_SESSION_TRACK, 45);
    static const struct step steps[] = {
        {'C', "010000010e", BAD},               /* a command must start at seq 0 */
        {'C', "0100000012", MY_STATE_REFUSE},   /* COM_BINLOG_DUMP */
        {'C', "01000000fa", MY_STATE_REFUSE},   /* MariaDB COM_STMT_BULK_EXECUTE */
        {'C', "00000000", BAD},                 /* empty command */
        {'C', "020000001701", BAD},             /* EXECUTE without a statement id */
        {'S', "0700000100000002000000", BAD},   /* unsolicited OK */
        {'S', "0a000000ff7a0423343253303278", DONE},   /* unsolicited ERR (idle timeout) */
        {'C', "010000000e", 0},                 /* COM_PING */
        {'C', "010000000e", BAD},               /* a second command while one is in flight */
        {'S', "0700000200000002000000", BAD},   /* wrong sequence id */
        {'S', "0700000100000002000000", DONE},
        {'C', "0300000016782e", 0},
        {'S', "0c000001000100000000000000000000", MY_STATE_PREPARED | DONE},
        {'C', "0300000016782e", MY_STATE_REFUSE},   /* max_stmts = 1 */
        {'C', "010000001a", BAD},               /* STMT_RESET without id */
        /* two tracked variables with max_vars = 1 */
        {'C', "0300000003782e", 0},
        {'S', "1500000100000000400000000c000401610131000401620132", DONE},
        {'C', "010000000d", MY_STATE_REFUSE},   /* COM_DEBUG */
        {'C', "0100000001", 0},                 /* COM_QUIT */
        {'C', "010000000e", BAD},
    };
    PLAY(&st, steps);
    ASSERT_TRUE(st.vars_incomplete);
    ASSERT_EQ_INT(st.nvars, 1);
    ASSERT_EQ_STR(my_state_var(&st, "a"), "1");
    ASSERT_EQ_INT(st.phase, MY_PH_CLOSED);
    my_state_free(&st);
}

static void test_change_user_and_long_rows(void)
{
    struct my_state st;
    my_state_init(&st, NULL, BASE_CAPS | MY_CLIENT_DEPRECATE_EOF, 45);
    static const struct step change[] = {
        {'C', "0300000016782e", 0},
        {'S', "0c000001000100000000000000000000", MY_STATE_PREPARED | DONE},
        /* COM_CHANGE_USER b, auth 0102, db "db", charset 33, plugin "na" */
        {'C', "0e00000011620002010264620021006e6100", 0},
        {'S', "17000001fe6d7973716c5f6e61746976655f70617373776f726400", 0},   /* auth switch */
        {'C', "02000002aabb", 0},
        {'S', "0700000300000002000000", DONE},
    };
    PLAY(&st, change);
    ASSERT_EQ_INT(st.nstmts, 0);
    ASSERT_EQ_STR(st.schema, "db");
    ASSERT_EQ_INT(st.charset, 33);
    my_state_free(&st);

    /* With DEPRECATE_EOF a row whose first column is >= 16 MB starts with
     * 0xFE: its first fragment is full, so it is a row, not the terminator. */
    my_state_init(&st, NULL, BASE_CAPS | MY_CLIENT_DEPRECATE_EOF, 45);
    static const struct step head[] = {
        {'C', "0900000003" "53454c4543542031", 0},
        {'S', "0100000101", 0},
        {'S', "17000002036465660000000131000c3f0001000000038100000000", 0},
    };
    PLAY(&st, head);
    uint8_t first[16] = {0xFE, 0x00, 0x00, 0x00, 0x01};
    struct my_logical row = {.first_seq = 3, .last_seq = 4, .fragments = 2,
                             .len = MY_MAX_PHYSICAL + 10, .payload = {first, sizeof first}};
    ASSERT_EQ_INT(my_state_server_packet(&st, &row), 0);
    static const struct step end[] = {{'S', "07000005fe000000000000", DONE}};
    PLAY(&st, end);
    my_state_free(&st);
}

int main(void)
{
    RUN(test_text_result_and_transactions);
    RUN(test_multi_results);
    RUN(test_prepared_statements);
    RUN(test_schema_and_tracking);
    RUN(test_local_infile);
    RUN(test_cursor_exists_without_a_cursor);
    RUN(test_prepared_local_infile);
    RUN(test_violations_and_limits);
    RUN(test_change_user_and_long_rows);
    UNIT_DONE();
}
