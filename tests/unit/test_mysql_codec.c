/* The MySQL codec, table-driven: each row is one whole packet (header
 * included) with the capabilities to read it under and the fields it must
 * give, rendered as text ("BAD" for rejected ones). Each row is also fed
 * split at every offset (FERRY_NEED_MORE until complete) and parsed from a
 * copy that ends at a PROT_NONE page, so any over-read faults.
 *
 * Rows marked "MariaDB 10.11.19" are real bytes captured from a throwaway
 * `mariadbd --skip-grant-tables` (Debian 12 package) with a python3 socket
 * script; the "pymysql" row is PyMySQL 1.0.2's HandshakeResponse41 to that
 * server's greeting (user app, password "secret", database shop).
 */
#include <stdarg.h>
#include <stdio.h>

#include "codec.h"
#include "test_support.h"
#include "guard.h"
#include "unit.h"

enum kind { HANDSHAKE, RESPONSE, OK, ERR, EOF_, PREPARE_OK, AUTH_SWITCH, MORE_DATA, CHANGE_USER,
            QUERY };

struct row {
    const char *name;
    enum kind kind;
    uint32_t caps;              /* negotiated capabilities to parse under */
    const char *hex;            /* the whole packet */
    const char *want;           /* rendered fields, or "BAD" */
};

#define TRACK (MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SESSION_TRACK)
#define P41 MY_CLIENT_PROTOCOL_41

static const struct row rows[] = {
    /* MariaDB 10.11.19 greeting: bit 0 clear and extended caps 0x1d in the reserved bytes. */
    {"mariadb greeting", HANDSHAKE, 0,
     "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100030000002e376726"
     "247e734500fef7080200ff81150000000000001d0000003f493568315846392757636a006d7973716c5f6e617469"
     "76655f70617373776f726400",
     "v='5.5.5-10.11.19-MariaDB-0+deb12u1' id=3 caps=0x81fff7fe cs=8 st=0x0002 "
     "scr=2e376726247e73453f493568315846392757636a plugin='mysql_native_password'"},
    {"greeting without NUL after plugin (MySQL 5.5.7)", HANDSHAKE, 0,
     "350000000a3500010000000102030405060708000ff708020008801500000000000000000000090a0b0c0d0e0f10"
     "1112131400636163686967",
     "v='5' id=1 caps=0x8008f70f cs=8 st=0x0002 scr=0102030405060708090a0b0c0d0e0f1011121314 "
     "plugin='cachig'"},
    {"greeting, version without NUL", HANDSHAKE, 0, "060000000a352e352e35", "BAD"},
    {"greeting, protocol 9", HANDSHAKE, 0, "0200000009ff", "BAD"},
    {"greeting, short scramble", HANDSHAKE, 0,
     "240000000a3500010000000102030405060708000ff708020008801500000000000000000000090a", "BAD"},
    /* PyMySQL 1.0.2 against the greeting above. */
    {"pymysql response", RESPONSE, 0,
     "8a0000010da23a00ffffff002d00000000000000000000000000000000000000000000006170700014b30008a31abc"
     "f5f9f03ebbfc74b601fe7956674373686f70006d7973716c5f6e61746976655f70617373776f726400350c5f636c"
     "69656e745f6e616d650770796d7973716c045f70696404373435320f5f636c69656e745f76657273696f6e0531"
     "2e302e32",
     "caps=0x003aa20d max=16777215 cs=45 user='app' auth=b30008a31abcf5f9f03ebbfc74b601fe79566743 "
     "db='shop' plugin='mysql_native_password' attrs=[_client_name=pymysql,_pid=7452,"
     "_client_version=1.0.2]"},
    {"ssl request", RESPONSE, 0,
     "20000001000a0a00000000012d0000000000000000000000000000000000000000000000",
     "ssl caps=0x000a0a00 cs=45"},
    {"response, lenenc auth, no db", RESPONSE, 0,
     "2a000001008228000000000121000000000000000000000000000000000000000000000075000201026162630000",
     "caps=0x00288200 max=16777216 cs=33 user='u' auth=0102 db=- plugin='abc' attrs=[]"},
    {"response without PROTOCOL_41", RESPONSE, 0,
     "2000000100800000000000012d0000000000000000000000000000000000000000000000", "BAD"},
    {"response, user without NUL", RESPONSE, 0,
     "21000001008208000000000121000000000000000000000000000000000000000000000075", "BAD"},
    {"response, auth length past end", RESPONSE, 0,
     "24000001008208000000000121000000000000000000000000000000000000000000000075001401", "BAD"},
    {"response, attrs lenenc claims 2^64", RESPONSE, 0,
     "2f0000010082180000000001210000000000000000000000000000000000000000000000750000616200feffffffffffffffff",
     "BAD"},
    /* MariaDB 10.11.19 OKs: after login; BEGIN; CREATE DATABASE. */
    {"ok after login", OK, P41, "0700000200000002000000",
     "rows=0 id=0 st=0x0002 warn=0 info='' state=[]"},
    {"ok in transaction", OK, P41, "0700000100000003000000",
     "rows=0 id=0 st=0x0003 warn=0 info='' state=[]"},
    {"ok create database", OK, P41, "0700000100010002000000",
     "rows=1 id=0 st=0x0002 warn=0 info='' state=[]"},
    {"ok load data, info", OK, P41,
     "37000004000100020000002f5265636f7264733a2031202044656c657465643a20302020536b69707065643a2030"
     "20205761726e696e67733a2030",
     "rows=1 id=0 st=0x0002 warn=0 info='/Records: 1  Deleted: 0  Skipped: 0  Warnings: 0' "
     "state=[]"},
    /* MariaDB 10.11.19 with CLIENT_SESSION_TRACK: USE mysql; SET autocommit=0;
     * SET session_track_system_variables='*'; SET NAMES utf8mb4. */
    {"ok track schema", OK, TRACK, "110000010000000240000000080106056d7973716c",
     "rows=0 id=0 st=0x4002 warn=0 info='' state=[1:'mysql']"},
    {"ok track autocommit", OK, TRACK,
     "1a000001000000004000000011000f0a6175746f636f6d6d6974034f4646",
     "rows=0 id=0 st=0x4000 warn=0 info='' state=[0:autocommit='OFF']"},
    {"ok track session_track_system_variables", OK, TRACK,
     "2c00000100000002400000002300211e73657373696f6e5f747261636b5f73797374656d5f7661726961626c6573"
     "012a",
     "rows=0 id=0 st=0x4002 warn=0 info='' state=[0:session_track_system_variables='*']"},
    {"ok track set names", OK, TRACK,
     "6b000001000000004000000062001d146368617261637465725f7365745f636c69656e7407757466386d623400"
     "21186368617261637465725f7365745f636f6e6e656374696f6e07757466386d6234001e1563686172616374"
     "65725f7365745f726573756c747307757466386d6234",
     "rows=0 id=0 st=0x4000 warn=0 info='' state=[0:character_set_client='utf8mb4',"
     "0:character_set_connection='utf8mb4',0:character_set_results='utf8mb4']"},
    {"ok deprecate-eof terminator", OK, TRACK, "07000004fe000000000000",
     "rows=0 id=0 st=0x0000 warn=0 info='' state=[]"},
    {"ok with 8-byte lenenc rows", OK, P41, "0f00000100fe00000000010000000002000000",
     "rows=4294967296 id=0 st=0x0002 warn=0 info='' state=[]"},
    {"ok, state tracker types 2..5", OK, TRACK,
     "2300000100000000400000001a020201310303000161050908545f5f5f5f5f5f5f040201780a00",
     "rows=0 id=0 st=0x4000 warn=0 info='' state=[2:'1',3:'a',5:'T_______',4:'x',10:'']"},
    {"ok truncated status", OK, P41, "050000010000000200", "BAD"},
    {"ok state block past end", OK, TRACK, "0a00000100000002400000000901", "BAD"},
    {"ok tracker record past end", OK, TRACK, "0c000001000000024000000003010501",
     "rows=0 id=0 st=0x4002 warn=0 info='' state=[BAD]"},
    {"ok lenenc 0xff", OK, P41, "0700000100ff0002000000", "BAD"},
    {"ok lenenc NULL", OK, P41, "0700000100fb0002000000", "BAD"},
    {"not an ok", OK, P41, "0700000101000002000000", "BAD"},
    /* MariaDB 10.11.19 ERR: SELECT * FROM nosuch.t; LOAD DATA without a schema. */
    {"err no such table", ERR, P41,
     "27000001ff7a042334325330325461626c6520276e6f737563682e742720646f65736e2774206578697374",
     "code=1146 state=42S02 msg='Table 'nosuch.t' doesn't exist'"},
    {"err no database", ERR, P41,
     "1d000001ff16042333443030304e6f2064617461626173652073656c6563746564",
     "code=1046 state=3D000 msg='No database selected'"},
    {"err without sqlstate (handshake)", ERR, 0, "09000000ff1304426164206873",
     "code=1043 state= msg='Bad hs'"},
    {"err truncated code", ERR, P41, "02000001ff13", "BAD"},
    {"err truncated sqlstate", ERR, P41, "07000001ff130423343253", "BAD"},
    /* MariaDB 10.11.19 EOF after SELECT 1 rows; and with MORE_RESULTS (SELECT 1; SELECT 2). */
    {"eof", EOF_, P41, "05000005fe00000200", "warn=0 st=0x0002"},
    {"eof more results", EOF_, P41, "05000005fe00000a00", "warn=0 st=0x000a"},
    {"eof pre-4.1", EOF_, P41, "01000005fe", "warn=0 st=0x0000"},
    {"eof truncated", EOF_, P41, "03000005fe0000", "BAD"},
    {"eof too long is a row", EOF_, P41, "09000005fe0000000000000000", "BAD"},
    /* MariaDB 10.11.19 PREPARE_OK for SELECT ? + 1, ? and SELECT ?. */
    {"prepare ok 2 params", PREPARE_OK, P41, "0c000001000100000002000200000000",
     "stmt=1 cols=2 params=2 warn=0"},
    {"prepare ok 1 param", PREPARE_OK, P41, "0c000001000200000001000100000000",
     "stmt=2 cols=1 params=1 warn=0"},
    {"prepare ok without warnings", PREPARE_OK, P41, "0a0000010007000000000001000a",
     "stmt=7 cols=0 params=1 warn=0"},
    {"prepare ok without filler", PREPARE_OK, P41, "09000001000700000000000100", "BAD"},
    {"prepare ok truncated", PREPARE_OK, P41, "06000001000100000000", "BAD"},
    {"auth switch native", AUTH_SWITCH, 0,
     "2c000002fe6d7973716c5f6e61746976655f70617373776f7264007a51673469366f4e79363d72484e2f3e2d6229"
     "4100",
     "plugin='mysql_native_password' data=7a51673469366f4e79363d72484e2f3e2d62294100"},
    {"auth switch, lone 0xfe (old password)", AUTH_SWITCH, 0, "01000002fe", "BAD"},
    {"auth switch, plugin without NUL", AUTH_SWITCH, 0, "04000002fe616263", "BAD"},
    {"auth more data fast ok", MORE_DATA, 0, "020000020103", "data=03"},
    {"auth more data, wrong header", MORE_DATA, 0, "020000020203", "BAD"},
    {"change user", CHANGE_USER, MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION |
     MY_CLIENT_PLUGIN_AUTH,
     "0e00000011620002010264620021006e6100",
     "user='b' auth=0102 db='db' cs=33 plugin='na'"},
    {"change user, auth past end", CHANGE_USER, MY_CLIENT_SECURE_CONNECTION, "0500000011620009aa", "BAD"},
    {"query plain", QUERY, P41, "0900000003534c454550283129", "sql='SLEEP(1)'"},
    {"query with attributes, none", QUERY, P41 | MY_CLIENT_QUERY_ATTRIBUTES,
     "0600000003000153454c", "sql='SEL'"},
    /* 2 attributes: LONGLONG 5 named "a", VARCHAR NULL named "b"; bitmap 0x02. */
    {"query with attributes", QUERY, P41 | MY_CLIENT_QUERY_ATTRIBUTES,
     "18000000030201020108000161fd000162050000000000000053454c",
     "sql='SEL'"},
    {"query attributes, bind flag 0", QUERY, P41 | MY_CLIENT_QUERY_ATTRIBUTES,
     "0700000003010100005345", "BAD"},
    {"query attributes, count 2^32", QUERY, P41 | MY_CLIENT_QUERY_ATTRIBUTES,
     "0b00000003fe000000000100000001", "BAD"},
};

/* ---- rendering parsed fields --------------------------------------------- */

struct text {
    char buf[1024];
    size_t len;
};

static void add(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->len, sizeof t->buf - t->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->len += (size_t)n < sizeof t->buf - t->len ? (size_t)n : sizeof t->buf - t->len - 1;
}

static void add_hex(struct text *t, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        add(t, "%02x", p[i]);
}

static void add_str(struct text *t, struct ferry_slice s)
{
    add(t, "%.*s", (int)s.len, (const char *)s.p);
}

static void render_handshake(struct text *t, const uint8_t *p, size_t n)
{
    struct my_handshake hs;
    if (my_handshake_parse(p, n, &hs) < 0)
        return add(t, "BAD");
    add(t, "v='");
    add_str(t, hs.server_version);
    add(t, "' id=%u caps=0x%08x cs=%u st=0x%04x scr=", hs.conn_id, hs.caps, hs.charset, hs.status);
    add_hex(t, hs.scramble, hs.scramble_len);
    add(t, " plugin='");
    add_str(t, hs.auth_plugin);
    add(t, "'");
}

static void render_attrs(struct text *t, struct ferry_slice attrs)
{
    struct ferry_slice k, v;
    int rc;
    add(t, " attrs=[");
    for (int i = 0; (rc = my_attr_next(&attrs, &k, &v)) == 1; i++) {
        add(t, i ? "," : "");
        add_str(t, k);
        add(t, "=");
        add_str(t, v);
    }
    add(t, rc < 0 ? "BAD]" : "]");
}

static void render_response(struct text *t, const uint8_t *p, size_t n)
{
    struct my_response r;
    if (my_response_parse(p, n, &r) < 0)
        return add(t, "BAD");
    if (r.ssl_request)
        return add(t, "ssl caps=0x%08x cs=%u", r.caps, r.charset);
    add(t, "caps=0x%08x max=%u cs=%u user='", r.caps, r.max_packet, r.charset);
    add_str(t, r.user);
    add(t, "' auth=");
    add_hex(t, r.auth_response.p, r.auth_response.len);
    if (r.has_database) {
        add(t, " db='");
        add_str(t, r.database);
        add(t, "'");
    } else {
        add(t, " db=-");
    }
    add(t, " plugin='");
    add_str(t, r.auth_plugin);
    add(t, "'");
    render_attrs(t, r.attrs);
}

static void render_state(struct text *t, struct ferry_slice block)
{
    struct my_state_change ch;
    int rc;
    add(t, " state=[");
    for (int i = 0; (rc = my_state_change_next(&block, &ch)) == 1; i++) {
        add(t, "%s%u:", i ? "," : "", ch.type);
        if (ch.name.len) {
            add_str(t, ch.name);
            add(t, "=");
        }
        add(t, "'");
        add_str(t, ch.value);
        add(t, "'");
    }
    add(t, rc < 0 ? "BAD]" : "]");
}

static void render_ok(struct text *t, const uint8_t *p, size_t n, uint32_t caps)
{
    struct my_ok ok;
    if (my_ok_parse(p, n, caps, &ok) < 0)
        return add(t, "BAD");
    add(t, "rows=%llu id=%llu st=0x%04x warn=%u info='", (unsigned long long)ok.affected_rows,
        (unsigned long long)ok.last_insert_id, ok.status, ok.warnings);
    add_str(t, ok.info);
    add(t, "'");
    render_state(t, ok.session_state);
}

static void render_err(struct text *t, const uint8_t *p, size_t n)
{
    struct my_err e;
    if (my_err_parse(p, n, &e) < 0)
        return add(t, "BAD");
    add(t, "code=%u state=%s msg='", e.code, e.sqlstate);
    add_str(t, e.message);
    add(t, "'");
}

static void render_eof(struct text *t, const uint8_t *p, size_t n)
{
    struct my_eof e;
    if (my_eof_parse(p, n, &e) < 0)
        return add(t, "BAD");
    add(t, "warn=%u st=0x%04x", e.warnings, e.status);
}

static void render_prepare_ok(struct text *t, const uint8_t *p, size_t n)
{
    struct my_prepare_ok po;
    if (my_prepare_ok_parse(p, n, &po) < 0)
        return add(t, "BAD");
    add(t, "stmt=%u cols=%u params=%u warn=%u", po.stmt_id, po.num_columns, po.num_params,
        po.warnings);
}

static void render_auth_switch(struct text *t, const uint8_t *p, size_t n)
{
    struct my_auth_switch as;
    if (my_auth_switch_parse(p, n, &as) < 0)
        return add(t, "BAD");
    add(t, "plugin='");
    add_str(t, as.plugin);
    add(t, "' data=");
    add_hex(t, as.data.p, as.data.len);
}

static void render_more_data(struct text *t, const uint8_t *p, size_t n)
{
    struct ferry_slice d;
    if (my_auth_more_data_parse(p, n, &d) < 0)
        return add(t, "BAD");
    add(t, "data=");
    add_hex(t, d.p, d.len);
}

static void render_change_user(struct text *t, const uint8_t *p, size_t n, uint32_t caps)
{
    struct my_change_user cu;
    if (my_change_user_parse(p, n, caps, &cu) < 0)
        return add(t, "BAD");
    add(t, "user='");
    add_str(t, cu.user);
    add(t, "' auth=");
    add_hex(t, cu.auth_response.p, cu.auth_response.len);
    add(t, " db='");
    add_str(t, cu.database);
    add(t, "' cs=%u plugin='", cu.charset);
    add_str(t, cu.auth_plugin);
    add(t, "'");
}

static void render_query(struct text *t, const uint8_t *p, size_t n, uint32_t caps)
{
    struct ferry_slice sql;
    if (my_query_text(p, n, caps, &sql) < 0)
        return add(t, "BAD");
    add(t, "sql='");
    add_str(t, sql);
    add(t, "'");
}

static void render(struct text *t, const struct row *r, const uint8_t *p, size_t n)
{
    switch (r->kind) {
    case HANDSHAKE: render_handshake(t, p, n); break;
    case RESPONSE: render_response(t, p, n); break;
    case OK: render_ok(t, p, n, r->caps); break;
    case ERR: render_err(t, p, n); break;
    case EOF_: render_eof(t, p, n); break;
    case PREPARE_OK: render_prepare_ok(t, p, n); break;
    case AUTH_SWITCH: render_auth_switch(t, p, n); break;
    case MORE_DATA: render_more_data(t, p, n); break;
    case CHANGE_USER: render_change_user(t, p, n, r->caps); break;
    case QUERY: render_query(t, p, n, r->caps); break;
    }
}

static struct test_guard guard;

/* Every prefix of the packet is FERRY_NEED_MORE; the whole is one packet. */
static int check_framing(const uint8_t *pkt, size_t len, struct ferry_slice *payload)
{
    struct my_header h;
    for (size_t k = 0; k < len; k++)
        if (my_packet_decode(test_guard_place(&guard, pkt, k), k, &h, payload) != FERRY_NEED_MORE)
            return -1;
    return my_packet_decode(test_guard_place(&guard, pkt, len), len, &h, payload) == (int)len ? 0 : -1;
}

static void test_packet_table(void)
{
    int failures = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const struct row *r = &rows[i];
        uint8_t pkt[512];
        size_t len = my_test_unhex(r->hex, pkt, sizeof pkt);
        struct ferry_slice payload;
        if (check_framing(pkt, len, &payload) < 0) {
            fprintf(stderr, "  row '%s': framing (length field %u, bytes %zu)\n", r->name,
                    ferry_get_u24le(pkt), len);
            failures++;
            continue;
        }
        uint8_t *p = test_guard_place(&guard, pkt + MY_HDR_LEN, len - MY_HDR_LEN);
        struct text t = {{0}, 0};
        render(&t, r, p, len - MY_HDR_LEN);
        if (strcmp(t.buf, r->want) != 0) {
            fprintf(stderr, "  row '%s'\n    got:  %s\n    want: %s\n", r->name, t.buf, r->want);
            failures++;
        }
    }
    ASSERT_EQ_INT(failures, 0);
}

/* ---- length-encoded integers --------------------------------------------- */

static void test_lenenc(void)
{
    static const struct {
        const char *hex;
        int rc;
        uint64_t v;
        bool is_null;
    } cases[] = {
        {"", FERRY_NEED_MORE, 0, false},
        {"00", 1, 0, false},
        {"fa", 1, 250, false},
        {"fb", 1, 0, true},
        {"fc", FERRY_NEED_MORE, 0, false},
        {"fcfb00", 3, 251, false},
        {"fcffff", 3, 0xFFFF, false},
        {"fd010203", 4, 0x030201, false},
        {"fd0102", FERRY_NEED_MORE, 0, false},
        {"fe0102030405060708", 9, 0x0807060504030201ull, false},
        {"feffffffffffffffff", 9, UINT64_MAX, false},
        {"fe01020304050607", FERRY_NEED_MORE, 0, false},
        {"ff", FERRY_BAD_MSG, 0, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t b[16];
        size_t n = my_test_unhex(cases[i].hex, b, sizeof b);
        uint64_t v;
        bool is_null;
        int rc = my_lenenc_decode(test_guard_place(&guard, b, n), n, &v, &is_null);
        ASSERT_EQ_INT(rc, cases[i].rc);
        if (rc > 0) {
            ASSERT_TRUE(v == cases[i].v);
            ASSERT_EQ_INT(is_null, cases[i].is_null);
        }
    }
}

static void test_lenenc_str_and_round_trip(void)
{
    struct ferry_slice s;
    bool is_null;
    uint8_t b[] = {0x03, 'a', 'b', 'c', 0xfb, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    ASSERT_EQ_INT(my_lenenc_str_decode(test_guard_place(&guard, b, 4), 4, &s, &is_null), 4);
    ASSERT_TRUE(s.len == 3 && memcmp(s.p, "abc", 3) == 0 && !is_null);
    ASSERT_EQ_INT(my_lenenc_str_decode(test_guard_place(&guard, b, 3), 3, &s, &is_null),
                  FERRY_NEED_MORE);
    ASSERT_EQ_INT(my_lenenc_str_decode(test_guard_place(&guard, b + 4, 1), 1, &s, &is_null), 1);
    ASSERT_TRUE(is_null && s.len == 0);
    /* A string claiming 2^64-1 bytes can never arrive: rejected, not waited for. */
    ASSERT_EQ_INT(my_lenenc_str_decode(test_guard_place(&guard, b + 5, 9), 9, &s, &is_null),
                  FERRY_BAD_MSG);

    static const uint64_t values[] = {0, 250, 251, 0xFFFF, 0x10000, 0xFFFFFF, 0x1000000,
                                      UINT64_MAX};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        struct ferry_wbuf w;
        ferry_wbuf_init(&w, 0);
        my_put_lenenc(&w, values[i]);
        uint64_t v;
        ASSERT_EQ_INT(my_lenenc_decode(w.data, w.len, &v, &is_null), (int)w.len);
        ASSERT_TRUE(v == values[i] && !is_null);
        ferry_wbuf_free(&w);
    }
}

/* ---- logical packets over 16 MB ------------------------------------------ */

/* A payload of len bytes in 0xFFFFFF fragments, seqs from seq0. */
static uint8_t *split_payload(size_t len, uint8_t seq0, size_t *total)
{
    size_t frags = len / MY_MAX_PHYSICAL + 1;
    uint8_t *buf = malloc(len + frags * MY_HDR_LEN);
    size_t off = 0, left = len;
    for (size_t f = 0; f < frags; f++) {
        size_t n = left < MY_MAX_PHYSICAL ? left : MY_MAX_PHYSICAL;
        my_header_encode(buf + off, (uint32_t)n, (uint8_t)(seq0 + f));
        for (size_t i = 0; i < n; i++)
            buf[off + MY_HDR_LEN + i] = (uint8_t)((len - left + i) * 7);
        off += MY_HDR_LEN + n;
        left -= n;
    }
    *total = off;
    return buf;
}

static void test_logical_large(void)
{
    static const size_t sizes[] = {MY_MAX_PHYSICAL, MY_MAX_PHYSICAL + 5, 2 * MY_MAX_PHYSICAL};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t total;
        uint8_t *buf = split_payload(sizes[i], 0xFE, &total);   /* seq wraps 0xFF -> 0x00 */
        struct my_logical lp;
        ASSERT_EQ_INT(my_logical_decode(buf, total, 0, &lp), (int)total);
        ASSERT_EQ_INT(lp.len, sizes[i]);
        ASSERT_EQ_INT(lp.fragments, sizes[i] / MY_MAX_PHYSICAL + 1);
        ASSERT_EQ_INT(lp.first_seq, 0xFE);
        ASSERT_EQ_INT(lp.last_seq, (uint8_t)(0xFE + lp.fragments - 1));
        size_t cuts[] = {0, 3, 4, MY_MAX_PHYSICAL + 3, MY_MAX_PHYSICAL + 4, total - 1};
        for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++)
            ASSERT_EQ_INT(my_logical_decode(buf, cuts[c], 0, &lp), FERRY_NEED_MORE);
        ASSERT_EQ_INT(my_logical_decode(buf, total, 0, &lp), (int)total);
        uint8_t *flat = malloc(lp.len);
        my_logical_gather(buf, &lp, flat);
        ASSERT_TRUE(flat[0] == 0 && flat[lp.len - 1] == (uint8_t)((lp.len - 1) * 7));
        ASSERT_TRUE(lp.len == MY_MAX_PHYSICAL || flat[MY_MAX_PHYSICAL] == (uint8_t)(MY_MAX_PHYSICAL * 7u));
        free(flat);
        /* over the configured maximum, and a sequence gap */
        ASSERT_EQ_INT(my_logical_decode(buf, total, sizes[i] - 1, &lp), FERRY_BAD_MSG);
        buf[MY_MAX_PHYSICAL + MY_HDR_LEN + 3] ^= 0x10;
        ASSERT_EQ_INT(my_logical_decode(buf, total, 0, &lp), FERRY_BAD_MSG);
        free(buf);
    }
}

static void test_reasm_streaming(void)
{
    struct my_reasm r;
    my_reasm_init(&r, 20 << 20);
    struct my_header h = {MY_MAX_PHYSICAL, 3};
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), 0);
    h = (struct my_header){10, 4};
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), 1);
    ASSERT_EQ_INT(r.total, MY_MAX_PHYSICAL + 10);
    h = (struct my_header){1, 0};       /* a new logical packet: any seq */
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), 1);
    ASSERT_EQ_INT(r.total, 1);
    h = (struct my_header){MY_MAX_PHYSICAL, 1};
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), 0);
    h = (struct my_header){MY_MAX_PHYSICAL, 2};
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), FERRY_BAD_MSG);    /* past 20 MiB */
    my_reasm_init(&r, 0);
    h = (struct my_header){MY_MAX_PHYSICAL, 1};
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), 0);
    h = (struct my_header){0, 9};
    ASSERT_EQ_INT(my_reasm_feed(&r, &h), FERRY_BAD_MSG);    /* gap */
}

/* ---- builders ------------------------------------------------------------ */

/* Checks that b holds exactly one packet with this seq; returns its payload. */
static struct ferry_slice one_packet(const struct ferry_wbuf *b, uint8_t seq)
{
    struct my_header h;
    struct ferry_slice payload = {0};
    if (b->failed || my_packet_decode(b->data, b->len, &h, &payload) != (int)b->len || h.seq != seq)
        return (struct ferry_slice){0};
    return payload;
}

static void test_build_handshake(void)
{
    struct my_handshake hs = {.server_version = {(const uint8_t *)"8.0.36-ferry", 12},
                              .conn_id = 77, .scramble_len = 20,
                              .caps = my_caps_offer(0xFFFFFFFF, true), .charset = 255,
                              .status = MY_STATUS_AUTOCOMMIT,
                              .auth_plugin = {(const uint8_t *)"caching_sha2_password", 21}};
    for (int i = 0; i < 20; i++)
        hs.scramble[i] = (uint8_t)(0x30 + i);
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    my_handshake_build(&b, 0, &hs);
    struct ferry_slice p = one_packet(&b, 0);
    struct my_handshake got;
    ASSERT_EQ_INT(my_handshake_parse(p.p, p.len, &got), 0);
    ASSERT_EQ_INT(got.conn_id, 77);
    ASSERT_EQ_INT(got.caps, hs.caps);
    ASSERT_TRUE(got.caps & MY_CLIENT_LONG_PASSWORD);    /* no MariaDB client mode */
    ASSERT_TRUE(!(got.caps & MY_CLIENT_COMPRESS));
    ASSERT_EQ_INT(got.scramble_len, 20);
    ASSERT_TRUE(memcmp(got.scramble, hs.scramble, 20) == 0);
    ASSERT_TRUE(got.auth_plugin.len == 21 && memcmp(got.auth_plugin.p, "caching_sha2_password", 21) == 0);
    /* the 10 reserved bytes (MariaDB's extended caps) are zero */
    static const uint8_t zeros[10];
    ASSERT_TRUE(memcmp(p.p + 1 + 13 + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1, zeros, 10) == 0);
    ferry_wbuf_free(&b);
}

static void test_build_response(void)
{
    static const uint8_t auth[20] = {1, 2, 3};
    static const uint8_t attrs[] = {3, 'k', 'e', 'y', 1, 'v'};
    struct my_response r = {
        .caps = my_caps_for_backend(0xFFFFFFFF, 0xFFFFFFFF, true) | MY_CLIENT_CONNECT_WITH_DB,
        .max_packet = 1 << 24, .charset = 45,
        .user = {(const uint8_t *)"ferry", 5}, .auth_response = {auth, 20},
        .database = {(const uint8_t *)"shop", 4}, .auth_plugin = {(const uint8_t *)"p", 1},
        .attrs = {attrs, sizeof attrs}};
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    for (int lenenc = 0; lenenc < 2; lenenc++) {
        r.caps = lenenc ? r.caps | MY_CLIENT_PLUGIN_AUTH_LENENC : r.caps & ~MY_CLIENT_PLUGIN_AUTH_LENENC;
        ferry_wbuf_reset(&b);
        my_response_build(&b, 1, &r);
        struct ferry_slice p = one_packet(&b, 1);
        struct my_response got;
        ASSERT_EQ_INT(my_response_parse(p.p, p.len, &got), 0);
        ASSERT_EQ_INT(got.caps, r.caps);
        ASSERT_TRUE(got.user.len == 5 && memcmp(got.user.p, "ferry", 5) == 0);
        ASSERT_TRUE(got.auth_response.len == 20 && memcmp(got.auth_response.p, auth, 20) == 0);
        ASSERT_TRUE(got.has_database && got.database.len == 4);
        ASSERT_TRUE(got.attrs.len == sizeof attrs);
    }
    r.ssl_request = true;
    ferry_wbuf_reset(&b);
    my_response_build(&b, 1, &r);
    struct ferry_slice p = one_packet(&b, 1);
    ASSERT_TRUE(my_is_ssl_request(p.p, p.len));
    ferry_wbuf_free(&b);
}

static void test_build_ok_err(void)
{
    static const uint8_t state[] = {1, 6, 5, 'm', 'y', 's', 'q', 'l'};
    struct my_ok ok = {.affected_rows = 300, .last_insert_id = 70000,
                       .status = MY_STATUS_AUTOCOMMIT | MY_STATUS_SESSION_STATE_CHANGED,
                       .warnings = 2, .info = {(const uint8_t *)"hi", 2},
                       .session_state = {state, sizeof state}};
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    static const uint32_t caps[] = {P41, TRACK};
    for (size_t i = 0; i < 2; i++) {
        ferry_wbuf_reset(&b);
        my_ok_build(&b, 2, caps[i], &ok);
        struct ferry_slice p = one_packet(&b, 2);
        struct my_ok got;
        ASSERT_EQ_INT(my_ok_parse(p.p, p.len, caps[i], &got), 0);
        ASSERT_TRUE(got.affected_rows == 300 && got.last_insert_id == 70000 && got.warnings == 2);
        ASSERT_EQ_INT(got.status, ok.status);
        ASSERT_EQ_INT(got.session_state.len, caps[i] == TRACK ? sizeof state : 0);
    }
    ferry_wbuf_reset(&b);
    my_err_build(&b, 1, MY_ER_ACCESS_DENIED, "28000", "access denied for user 'app'");
    struct ferry_slice p = one_packet(&b, 1);
    struct my_err e;
    ASSERT_EQ_INT(my_err_parse(p.p, p.len, &e), 0);
    ASSERT_EQ_INT(e.code, 1045);
    ASSERT_EQ_STR(e.sqlstate, "28000");
    ASSERT_TRUE(e.message.len > 7 && memcmp(e.message.p, "ferry: access denied", 20) == 0);
    ferry_wbuf_reset(&b);
    static const uint8_t scramble[20] = {9};
    my_auth_switch_build(&b, 2, "mysql_native_password", scramble, 20);
    p = one_packet(&b, 2);
    struct my_auth_switch as;
    ASSERT_EQ_INT(my_auth_switch_parse(p.p, p.len, &as), 0);
    ASSERT_EQ_INT(as.data.len, 21);     /* scramble + NUL, as MySQL sends it */
    ferry_wbuf_reset(&b);
    my_auth_more_data_build(&b, 3, (const uint8_t *)"\x04", 1);
    p = one_packet(&b, 3);
    struct ferry_slice d;
    ASSERT_EQ_INT(my_auth_more_data_parse(p.p, p.len, &d), 0);
    ASSERT_TRUE(d.len == 1 && d.p[0] == 4);
    /* a builder never emits a 0xFFFFFF-byte packet (that would announce a continuation) */
    struct ferry_wbuf big;
    ferry_wbuf_init(&big, 0);
    size_t start = my_packet_begin(&big, 0);
    uint8_t *chunk = calloc(1, MY_MAX_PHYSICAL);
    ferry_wbuf_put(&big, chunk, MY_MAX_PHYSICAL);
    my_packet_end(&big, start);
    ASSERT_TRUE(big.failed);
    free(chunk);
    ferry_wbuf_free(&big);
    ferry_wbuf_free(&b);
}

/* ---- commands, ids, capabilities ----------------------------------------- */

static void test_commands(void)
{
    ASSERT_EQ_INT(my_command_lookup(MY_COM_QUERY)->reply, MY_REPLY_RESULT);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_STMT_CLOSE)->reply, MY_REPLY_NONE);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_STMT_SEND_LONG_DATA)->reply, MY_REPLY_NONE);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_QUIT)->reply, MY_REPLY_NONE);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_STMT_PREPARE)->reply, MY_REPLY_PREPARE);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_CHANGE_USER)->flags, MY_CMD_RESETS);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_RESET_CONNECTION)->flags, MY_CMD_RESETS);
    ASSERT_EQ_INT(my_command_lookup(MY_COM_BINLOG_DUMP)->reply, MY_REPLY_UNSUPPORTED);
    ASSERT_EQ_INT(my_command_lookup(0xFA)->reply, MY_REPLY_UNSUPPORTED);  /* MariaDB bulk execute */
    ASSERT_EQ_STR(my_command_lookup(MY_COM_STMT_EXECUTE)->name, "COM_STMT_EXECUTE");
    static const uint8_t with_id[] = {MY_COM_STMT_EXECUTE, MY_COM_STMT_CLOSE, MY_COM_STMT_RESET,
                                      MY_COM_STMT_SEND_LONG_DATA, MY_COM_STMT_FETCH,
                                      MY_COM_PROCESS_KILL};
    for (size_t i = 0; i < sizeof with_id; i++)
        ASSERT_TRUE(my_command_lookup(with_id[i])->flags & MY_CMD_ID_AT_1);

    uint8_t exec[] = {MY_COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0};
    uint32_t id;
    ASSERT_EQ_INT(my_id_at_1_get(exec, sizeof exec, &id), 0);
    ASSERT_EQ_INT(id, 1);
    ASSERT_EQ_INT(my_id_at_1_set(exec, sizeof exec, 0xA1B2C3D4), 0);
    ASSERT_TRUE(exec[1] == 0xD4 && exec[4] == 0xA1 && exec[5] == 0);
    ASSERT_EQ_INT(my_id_at_1_get(exec, 4, &id), FERRY_BAD_MSG);
    ASSERT_EQ_INT(my_id_at_1_set(exec, 4, 1), FERRY_BAD_MSG);
}

static void test_caps_policy(void)
{
    uint32_t all = 0xFFFFFFFF;
    uint32_t offer = my_caps_offer(all, false);
    ASSERT_TRUE(!(offer & (MY_CLIENT_COMPRESS | MY_CLIENT_ZSTD_COMPRESSION | MY_CLIENT_SSL |
                           MY_CLIENT_OPTIONAL_METADATA | MY_CLIENT_MULTI_FACTOR_AUTH)));
    ASSERT_TRUE(offer & MY_CLIENT_DEPRECATE_EOF && offer & MY_CLIENT_SESSION_TRACK &&
                offer & MY_CLIENT_QUERY_ATTRIBUTES && offer & MY_CLIENT_LOCAL_FILES);
    ASSERT_TRUE(my_caps_offer(all, true) & MY_CLIENT_SSL);
    /* MariaDB 10.11's greeting (bit 0 clear): ferry still says "MySQL" */
    uint32_t mariadb = 0x81fff7fe;
    ASSERT_TRUE(my_caps_offer(mariadb, false) & MY_CLIENT_LONG_PASSWORD);
    ASSERT_TRUE(!(my_caps_offer(mariadb, false) & MY_CLIENT_QUERY_ATTRIBUTES));
    /* towards a backend: both must have it; LOCAL_FILES only if the client asked */
    uint32_t client = MY_CLIENT_PROTOCOL_41 | MY_CLIENT_DEPRECATE_EOF | MY_CLIENT_COMPRESS |
                      MY_CLIENT_CONNECT_WITH_DB;
    uint32_t be = my_caps_for_backend(client, mariadb, false);
    ASSERT_TRUE(be & MY_CLIENT_DEPRECATE_EOF);
    ASSERT_TRUE(!(be & (MY_CLIENT_COMPRESS | MY_CLIENT_LOCAL_FILES | MY_CLIENT_SSL |
                        MY_CLIENT_CONNECT_WITH_DB | MY_CLIENT_SESSION_TRACK)));
    ASSERT_TRUE(my_caps_for_backend(client, mariadb, true) & MY_CLIENT_SSL);
}

/* ---- KILL ---------------------------------------------------------------- */

static void test_kill(void)
{
    static const struct {
        const char *sql;
        enum my_kill_kind kind;
        uint64_t id;
    } cases[] = {
        {"KILL 5", MY_KILL_CONNECTION, 5},
        {"kill query 42", MY_KILL_QUERY, 42},
        {"  Kill\tConnection\n7 ;", MY_KILL_CONNECTION, 7},
        {"/* hi */ KILL /* x */ QUERY -- c\n 9", MY_KILL_QUERY, 9},
        {"# line\nKILL 3;;  ", MY_KILL_CONNECTION, 3},
        {"/*!50000 KILL QUERY */ 11", MY_KILL_QUERY, 11},
        {"KILL 18446744073709551615", MY_KILL_CONNECTION, UINT64_MAX},
        {"KILL 18446744073709551616", MY_KILL_UNPARSED, 0},
        {"KILL QUERY", MY_KILL_UNPARSED, 0},
        {"KILL 5; SELECT 1", MY_KILL_UNPARSED, 0},
        {"KILL HARD QUERY 5", MY_KILL_UNPARSED, 0},
        {"KILL USER app", MY_KILL_UNPARSED, 0},
        {"KILL (5)", MY_KILL_UNPARSED, 0},
        {"KILL 0x5", MY_KILL_UNPARSED, 0},
        {"KILLER 5", MY_KILL_NONE, 0},
        {"SELECT 'KILL 5'", MY_KILL_NONE, 0},
        {"/* unterminated KILL 5", MY_KILL_NONE, 0},
        {"--KILL 5", MY_KILL_NONE, 0},          /* "--" without a space is minus minus */
        {"", MY_KILL_NONE, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].sql);
        uint64_t id = 99;
        enum my_kill_kind k = my_kill_parse(test_guard_place(&guard, cases[i].sql, n), n, &id);
        if (k != cases[i].kind || id != cases[i].id)
            fprintf(stderr, "  sql: %s\n", cases[i].sql);
        ASSERT_EQ_INT(k, cases[i].kind);
        ASSERT_TRUE(id == cases[i].id);
    }
}

int main(void)
{
    if (test_guard_init(&guard, 1 << 16) < 0)
        return 2;
    RUN(test_packet_table);
    RUN(test_lenenc);
    RUN(test_lenenc_str_and_round_trip);
    RUN(test_logical_large);
    RUN(test_reasm_streaming);
    RUN(test_build_handshake);
    RUN(test_build_response);
    RUN(test_build_ok_err);
    RUN(test_commands);
    RUN(test_caps_policy);
    RUN(test_kill);
    test_guard_free(&guard);
    UNIT_DONE();
}
