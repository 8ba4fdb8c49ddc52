/* PostgreSQL codec: one table row per message (bytes, expected result, the
 * decoded fields rendered as text). Every input is copied to the end of a
 * buffer just before a PROT_NONE page so any over-read faults, and every
 * valid one is also fed cut at each offset (FERRY_NEED_MORE until whole).
 * Builders are checked byte-exact and by decoding what they produce. */
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#include "guard.h"
#include "pg/codec.h"
#include "unit.h"

/* ---- guard page ----------------------------------------------------------- */

static struct test_guard guard;     /* 16 KiB of data, then the PROT_NONE page */

/* Copies n bytes so that they end right before the guard page. */
static const uint8_t *at_guard(const void *src, size_t n)
{
    return test_guard_place(&guard, src, n);
}

/* ---- rendering decoded fields ------------------------------------------------ */

struct text {
    char s[512];
    size_t len;
};

static void say(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->len, sizeof t->s - t->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        t->len += (size_t)n < sizeof t->s - t->len ? (size_t)n : sizeof t->s - t->len - 1;
}

/* "key=value " with "-" for an absent slice. */
static void say_slice(struct text *t, const char *key, struct ferry_slice s)
{
    if (s.p)
        say(t, "%s=%.*s ", key, (int)s.len, (const char *)s.p);
    else
        say(t, "%s=- ", key);
}

static void say_list(struct text *t, const char *key, struct ferry_slice list)
{
    say(t, "%s=", key);
    for (struct ferry_slice item; pg_cstr_next(&list, &item);)
        say(t, "[%.*s]", (int)item.len, (const char *)item.p);
    say(t, " ");
}

static int render_startup(const uint8_t *buf, size_t len, struct text *t)
{
    struct pg_startup s;
    int rc = pg_decode_startup(buf, len, &s);
    if (rc < 0)
        return rc;
    static const char *const kinds[] = {"ssl", "gssenc", "cancel", "startup", "bad_version"};
    say(t, "%s ", kinds[s.kind]);
    if (s.kind == PG_STARTUP_CANCEL)
        say(t, "pid=%u key=%u ", s.cancel_pid, s.cancel_key);
    if (s.kind != PG_STARTUP_MESSAGE && s.kind != PG_STARTUP_BAD_VERSION)
        return rc;
    say(t, "v=%u.%u ", s.version >> 16, s.version & 0xffff);
    if (s.kind == PG_STARTUP_BAD_VERSION)
        return rc;
    say_slice(t, "user", s.user);
    say_slice(t, "database", s.database);
    say_slice(t, "options", s.options);
    say_slice(t, "app", s.application_name);
    say_slice(t, "replication", s.replication);
    say(t, "n=%u pq=%u neg=%d params=", s.nparams, s.nprotocol_options, pg_startup_needs_negotiation(&s));
    for (struct ferry_slice l = s.params, k, v; pg_param_next(&l, &k, &v);)
        say(t, "%.*s:%.*s;", (int)k.len, (const char *)k.p, (int)v.len, (const char *)v.p);
    return rc;
}

static int render_error(const uint8_t *b, size_t n, struct text *t)
{
    struct pg_error_fields e;
    int rc = pg_decode_error(b, n, &e);
    for (const char *c = PG_ERROR_FIELD_CODES; rc == 0 && *c; c++)
        if (pg_error_field(&e, *c).p)
            say(t, "%c=%.*s ", *c, (int)pg_error_field(&e, *c).len, (const char *)pg_error_field(&e, *c).p);
    return rc;
}

static int render_auth(const uint8_t *b, size_t n, struct text *t)
{
    struct pg_auth_request a;
    int rc = pg_decode_auth(b, n, &a);
    if (rc < 0)
        return rc;
    say(t, "code=%u ", a.code);
    if (a.code == PG_AUTH_MD5)
        say(t, "salt=%02x%02x%02x%02x ", a.md5_salt[0], a.md5_salt[1], a.md5_salt[2], a.md5_salt[3]);
    if (a.code == PG_AUTH_SASL)
        say_list(t, "mechs", a.data);
    else if (a.data.p)
        say_slice(t, "data", a.data);
    return rc;
}

static int render_parse(const uint8_t *b, size_t n, struct text *t)
{
    struct pg_parse p;
    int rc = pg_decode_parse(b, n, &p);
    if (rc < 0)
        return rc;
    say_slice(t, "name", p.name);
    say_slice(t, "query", p.query);
    say(t, "types=");
    for (unsigned i = 0; i < p.nparam_types; i++)
        say(t, "%u,", pg_parse_param_type(&p, i));
    return rc;
}

static int render_body(const char *kind, const uint8_t *b, size_t n, struct text *t)
{
    int rc = FERRY_BAD_MSG;
    if (!strcmp(kind, "ready")) {
        char st = 0;
        if ((rc = pg_decode_ready(b, n, &st)) == 0)
            say(t, "status=%c", st);
    } else if (!strcmp(kind, "param")) {
        struct pg_parameter_status ps;
        if ((rc = pg_decode_parameter_status(b, n, &ps)) == 0)
            say_slice(t, "name", ps.name), say_slice(t, "value", ps.value);
    } else if (!strcmp(kind, "key")) {
        struct pg_backend_key k;
        if ((rc = pg_decode_backend_key(b, n, &k)) == 0)
            say(t, "pid=%u key=%u", k.pid, k.key);
    } else if (!strcmp(kind, "error")) {
        rc = render_error(b, n, t);
    } else if (!strcmp(kind, "auth")) {
        rc = render_auth(b, n, t);
    } else if (!strcmp(kind, "parse")) {
        rc = render_parse(b, n, t);
    } else if (!strcmp(kind, "bind")) {
        struct pg_bind bd;
        if ((rc = pg_decode_bind(b, n, &bd)) == 0)
            say_slice(t, "portal", bd.portal), say_slice(t, "stmt", bd.statement), say(t, "n=%u", bd.nparams);
    } else if (!strcmp(kind, "target")) {
        struct pg_target tg;
        if ((rc = pg_decode_target(b, n, &tg)) == 0)
            say(t, "kind=%c ", tg.kind), say_slice(t, "name", tg.name);
    } else if (!strcmp(kind, "cstr")) {
        struct ferry_slice s;
        if ((rc = pg_decode_cstr_body(b, n, &s)) == 0)
            say_slice(t, "text", s);
    } else if (!strcmp(kind, "sasl_initial")) {
        struct pg_sasl_initial si;
        if ((rc = pg_decode_sasl_initial(b, n, &si)) == 0)
            say_slice(t, "mech", si.mechanism), say_slice(t, "data", si.data);
    }
    return rc;
}

/* ---- startup table --------------------------------------------------------- */

struct startup_row {
    const char *bytes;          /* the whole packet, length word included */
    size_t len;
    int want;                   /* bytes consumed, or FERRY_BAD_MSG */
    const char *fields;         /* rendered fields when valid */
};
#define SROW(lit, want, fields) {lit, sizeof(lit) - 1, want, fields}
#define ALL -100                /* want: the whole input */

static const struct startup_row startup_rows[] = {
    SROW("\000\000\000\010\004\322\026\057", ALL, "ssl "),
    SROW("\000\000\000\010\004\322\026\060", ALL, "gssenc "),
    SROW("\000\000\000\020\004\322\026\056\000\000\060\071\000\000\000\007", ALL, "cancel pid=12345 key=7 "),
    SROW("\000\000\000\067\000\003\000\000user\000alice\000database\000db1\000"
         "application_name\000psql\000\000", ALL,
         "startup v=3.0 user=alice database=db1 options=- app=psql replication=- n=3 pq=0 neg=0 "
         "params=user:alice;database:db1;application_name:psql;"),
    /* minor version 2 and a protocol option: NegotiateProtocolVersion needed */
    SROW("\000\000\000\032\000\003\000\002user\000u\000_pq_.x\000on\000\000", ALL,
         "startup v=3.2 user=u database=- options=- app=- replication=- n=2 pq=1 neg=1 "
         "params=user:u;_pq_.x:on;"),
    SROW("\000\000\000\011\000\003\000\000\000", ALL,   /* no parameters: only the terminator */
         "startup v=3.0 user=- database=- options=- app=- replication=- n=0 pq=0 neg=0 params="),
    SROW("\000\000\000\016\000\003\000\000opt\000\000\000", ALL,   /* an empty value is allowed */
         "startup v=3.0 user=- database=- options=- app=- replication=- n=1 pq=0 neg=0 params=opt:;"),
    SROW("\000\000\000\010\000\002\000\000", ALL, "bad_version v=2.0 "),
    /* malformed */
    SROW("\000\000\000\007\000\003\000", FERRY_BAD_MSG, NULL),                    /* length < 8 */
    SROW("\000\000\000\000", FERRY_BAD_MSG, NULL),                                /* length 0 */
    SROW("\177\377\377\377", FERRY_BAD_MSG, NULL),                                /* 2 GB claim */
    SROW("\377\377\377\377", FERRY_BAD_MSG, NULL),                                /* negative */
    SROW("\000\000\047\025", FERRY_BAD_MSG, NULL),                                /* 10005: one too many */
    SROW("\000\000\000\014\004\322\026\057\000\000\000\000", FERRY_BAD_MSG, NULL),/* SSLRequest too long */
    SROW("\000\000\000\014\004\322\026\056\000\000\000\001", FERRY_BAD_MSG, NULL),/* CancelRequest short */
    SROW("\000\000\000\010\004\322\026\061", FERRY_BAD_MSG, NULL),                /* unknown 1234.5681 */
    SROW("\000\000\000\010\000\003\000\000", FERRY_BAD_MSG, NULL),                /* no terminator */
    SROW("\000\000\000\015\000\003\000\000user\000", FERRY_BAD_MSG, NULL),        /* name without value */
    SROW("\000\000\000\017\000\003\000\000user\000u\000", FERRY_BAD_MSG, NULL),   /* no final NUL */
    SROW("\000\000\000\016\000\003\000\000user\000u", FERRY_BAD_MSG, NULL),       /* value without NUL */
    SROW("\000\000\000\020\000\003\000\000\000user\000u\000", FERRY_BAD_MSG, NULL),/* bytes after the end */
};

static void check_startup_row(size_t row)
{
    const struct startup_row *r = &startup_rows[row];
    struct text t = {.len = 0};
    int want = r->want == ALL ? (int)r->len : r->want;
    const uint8_t *buf = at_guard(r->bytes, r->len);
    int rc = render_startup(buf, r->len, &t);
    if (rc != want || (r->fields && strcmp(t.s, r->fields) != 0)) {
        fprintf(stderr, "  startup row \"%s\": rc %d (want %d), fields \"%s\"\n", r->fields, rc, want, t.s);
        ASSERT_TRUE(0);
    }
    if (want < 0)
        return;
    for (size_t cut = 0; cut < r->len; cut++) {
        struct pg_startup s;
        ASSERT_EQ_INT(pg_decode_startup(at_guard(r->bytes, cut), cut, &s), FERRY_NEED_MORE);
    }
}

/* Runs check on rows 0..n-1, naming the failing rows. */
static void run_table(const char *what, size_t n, void (*check)(size_t row))
{
    for (size_t i = 0; i < n; i++) {
        int before = unit_failed_asserts;
        check(i);
        if (unit_failed_asserts != before)
            fprintf(stderr, "  (%s row %zu)\n", what, i);
    }
}

static void test_startup_table(void)
{
    run_table("startup", sizeof startup_rows / sizeof startup_rows[0], check_startup_row);
}

/* The largest startup packet PostgreSQL accepts (10004 bytes with the length
 * word) decodes; a truncated prefix of it needs more; trailing bytes of the
 * next message are left alone. */
static void test_startup_limits(void)
{
    static uint8_t pkt[10004 + 3];
    memset(pkt, 'x', sizeof pkt);
    memcpy(pkt, "\000\000\047\024\000\003\000\000user\000", 13);
    pkt[10002] = 0;   /* end of the long value */
    pkt[10003] = 0;   /* list terminator */
    struct pg_startup s;
    ASSERT_EQ_INT(pg_decode_startup(at_guard(pkt, sizeof pkt), sizeof pkt, &s), 10004);
    ASSERT_EQ_INT(s.user.len, 10002 - 13);
    ASSERT_EQ_INT(pg_decode_startup(at_guard(pkt, 5000), 5000, &s), FERRY_NEED_MORE);
    ASSERT_EQ_INT(pg_decode_startup(at_guard(pkt, 3), 3, &s), FERRY_NEED_MORE);
}

/* ---- framing ----------------------------------------------------------------- */

struct frame_row {
    const char *bytes;
    size_t len;
    uint32_t max;
    int want;
};
#define FROW(lit, max, want) {lit, sizeof(lit) - 1, max, want}

static const struct frame_row frame_rows[] = {
    FROW("Z\000\000\000\005I", 1 << 20, 6),
    FROW("S\000\000\000\004", 1 << 20, 5),                     /* empty body */
    FROW("Z\000\000\000\005IQ\000", 1 << 20, 6),               /* the next message is not ours */
    FROW("Q\000\000\000\003", 1 << 20, FERRY_BAD_MSG),         /* length < 4 */
    FROW("Q\000\000\000\000", 1 << 20, FERRY_BAD_MSG),
    FROW("D\177\377\377\377", 1 << 20, FERRY_BAD_MSG),         /* 2 GB claim */
    FROW("D\377\377\377\377", UINT32_MAX, FERRY_BAD_MSG),      /* negative even without a limit */
    FROW("D\200\000\000\000", UINT32_MAX, FERRY_BAD_MSG),
    FROW("D\000\020\000\001", 1 << 20, FERRY_BAD_MSG),         /* max + 1 */
    FROW("D\000\020\000\000", 1 << 20, FERRY_NEED_MORE),       /* exactly max: wait for it */
};

static void test_frame_table(void)
{
    for (size_t i = 0; i < sizeof frame_rows / sizeof frame_rows[0]; i++) {
        const struct frame_row *r = &frame_rows[i];
        uint8_t type;
        uint32_t total;
        int rc = pg_frame(at_guard(r->bytes, r->len), r->len, r->max, &type, &total);
        if (rc != r->want)
            fprintf(stderr, "  frame row %zu: rc %d want %d\n", i, rc, r->want);
        ASSERT_EQ_INT(rc, r->want);
        ASSERT_EQ_INT(type, (uint8_t)r->bytes[0]);
        for (size_t cut = 0; rc > 0 && cut < (size_t)rc; cut++)
            ASSERT_EQ_INT(pg_frame(at_guard(r->bytes, cut), cut, r->max, &type, &total), FERRY_NEED_MORE);
    }
    uint8_t type;
    uint32_t total;
    ASSERT_EQ_INT(pg_frame(at_guard("D\000\020\000\000", 5), 5, 1 << 20, &type, &total), FERRY_NEED_MORE);
    ASSERT_EQ_INT(total, (1 << 20) + 1);    /* known from the header alone */
}

/* ---- bodies -------------------------------------------------------------------- */

struct body_row {
    const char *kind;           /* which decoder (render_body) */
    char type;                  /* message type byte */
    const char *body;           /* bytes after the length word */
    size_t len;
    int want;                   /* 0 or FERRY_BAD_MSG */
    const char *fields;
};
#define BROW(kind, type, lit, want, fields) {kind, type, lit, sizeof(lit) - 1, want, fields}

static const struct body_row body_rows[] = {
    BROW("ready", 'Z', "I", 0, "status=I"),
    BROW("ready", 'Z', "T", 0, "status=T"),
    BROW("ready", 'Z', "E", 0, "status=E"),
    BROW("ready", 'Z', "X", FERRY_BAD_MSG, NULL),
    BROW("ready", 'Z', "", FERRY_BAD_MSG, NULL),
    BROW("ready", 'Z', "II", FERRY_BAD_MSG, NULL),
    BROW("param", 'S', "TimeZone\000UTC\000", 0, "name=TimeZone value=UTC "),
    BROW("param", 'S', "application_name\000\000", 0, "name=application_name value= "),
    BROW("param", 'S', "TimeZone\000UTC", FERRY_BAD_MSG, NULL),
    BROW("param", 'S', "TimeZone\000UTC\000x", FERRY_BAD_MSG, NULL),
    BROW("key", 'K', "\000\000\060\071\177\377\377\377", 0, "pid=12345 key=2147483647"),
    BROW("key", 'K', "\000\000\060\071\000", FERRY_BAD_MSG, NULL),
    BROW("error", 'E', "SERROR\000VERROR\000C42P01\000Mrelation \"t\" does not exist\000P15\000"
                       "Fparse_relation.c\000L1384\000Rparser_open_table\000\000", 0,
         "S=ERROR V=ERROR C=42P01 M=relation \"t\" does not exist P=15 F=parse_relation.c L=1384 "
         "R=parser_open_table "),
    BROW("error", 'N', "SNOTICE\000C00000\000Mhi\000Zunknown code\000\000", 0, "S=NOTICE C=00000 M=hi "),
    BROW("error", 'E', "SERROR\000C42P01\000Mx\000", FERRY_BAD_MSG, NULL),      /* no terminator */
    BROW("error", 'E', "SERROR\000C42P01\000Mx", FERRY_BAD_MSG, NULL),          /* field without NUL */
    BROW("error", 'E', "SERROR\000Mx\000\000", FERRY_BAD_MSG, NULL),            /* no SQLSTATE */
    BROW("error", 'E', "SERROR\000C42P01\000Mx\000\000junk", FERRY_BAD_MSG, NULL),
    BROW("auth", 'R', "\000\000\000\000", 0, "code=0 "),
    BROW("auth", 'R', "\000\000\000\003", 0, "code=3 "),
    BROW("auth", 'R', "\000\000\000\005\001\002\003\004", 0, "code=5 salt=01020304 "),
    BROW("auth", 'R', "\000\000\000\012SCRAM-SHA-256-PLUS\000SCRAM-SHA-256\000\000", 0,
         "code=10 mechs=[SCRAM-SHA-256-PLUS][SCRAM-SHA-256] "),
    BROW("auth", 'R', "\000\000\000\013r=abc,s=c2FsdA==,i=4096", 0, "code=11 data=r=abc,s=c2FsdA==,i=4096 "),
    BROW("auth", 'R', "\000\000\000\014v=xyz", 0, "code=12 data=v=xyz "),
    BROW("auth", 'R', "\000\000\000\005\001\002\003", FERRY_BAD_MSG, NULL),     /* short salt */
    BROW("auth", 'R', "\000\000\000\000\000", FERRY_BAD_MSG, NULL),             /* trailing byte */
    BROW("auth", 'R', "\000\000\000\012\000", FERRY_BAD_MSG, NULL),             /* no mechanism */
    BROW("auth", 'R', "\000\000\000\012SCRAM-SHA-256\000", FERRY_BAD_MSG, NULL),/* list not ended */
    BROW("auth", 'R', "\000\000\000\052", FERRY_BAD_MSG, NULL),                 /* unknown code 42 */
    BROW("auth", 'R', "\000\000", FERRY_BAD_MSG, NULL),
    BROW("parse", 'P', "s1\000select $1, $2\000\000\002\000\000\000\027\000\000\000\000", 0,
         "name=s1 query=select $1, $2 types=23,0,"),
    BROW("parse", 'P', "\000select 1\000\000\000", 0, "name= query=select 1 types="),
    BROW("parse", 'P', "s1\000select 1\000\000\002\000\000\000\027", FERRY_BAD_MSG, NULL), /* count > body */
    BROW("parse", 'P', "s1\000select 1\000\377\377", FERRY_BAD_MSG, NULL),
    BROW("parse", 'P', "s1\000select 1", FERRY_BAD_MSG, NULL),                   /* missing NUL */
    BROW("parse", 'P', "s1\000select 1\000\000\000x", FERRY_BAD_MSG, NULL),       /* trailing byte */
    BROW("bind", 'B', "p1\000s1\000\000\001\000\001\000\002\000\000\000\00242\377\377\377\377\000\000", 0,
         "portal=p1 stmt=s1 n=2"),
    BROW("bind", 'B', "\000\000\000\000\000\000\000\000", 0, "portal= stmt= n=0"),
    BROW("bind", 'B', "\000\000\000\000\000\001\000\000\000\011ab\000\000", FERRY_BAD_MSG, NULL), /* value > body */
    BROW("bind", 'B', "\000\000\000\000\000\001\377\377\377\376\000\000", FERRY_BAD_MSG, NULL), /* length -2 */
    BROW("bind", 'B', "\000\000\000\005\000\000\000\000\000\000", FERRY_BAD_MSG, NULL), /* formats > body */
    BROW("bind", 'B', "\000\000\000\000\000\000", FERRY_BAD_MSG, NULL),                 /* no result formats */
    BROW("target", 'C', "Ss1\000", 0, "kind=S name=s1 "),
    BROW("target", 'D', "P\000", 0, "kind=P name= "),
    BROW("target", 'C', "Xs1\000", FERRY_BAD_MSG, NULL),
    BROW("target", 'C', "Ss1", FERRY_BAD_MSG, NULL),
    BROW("target", 'C', "", FERRY_BAD_MSG, NULL),
    BROW("cstr", 'Q', "select 1;\000", 0, "text=select 1; "),
    BROW("cstr", 'Q', "select 1;", FERRY_BAD_MSG, NULL),
    BROW("cstr", 'Q', "select\0001;\000", FERRY_BAD_MSG, NULL),                 /* NUL inside */
    BROW("cstr", 'p', "secret\000", 0, "text=secret "),
    BROW("sasl_initial", 'p', "SCRAM-SHA-256\000\000\000\000\005n,,n=", 0, "mech=SCRAM-SHA-256 data=n,,n= "),
    BROW("sasl_initial", 'p', "SCRAM-SHA-256\000\377\377\377\377", 0, "mech=SCRAM-SHA-256 data=- "),
    BROW("sasl_initial", 'p', "SCRAM-SHA-256\000\000\000\000\011n,,n=", FERRY_BAD_MSG, NULL),
    BROW("sasl_initial", 'p', "SCRAM-SHA-256\000\200\000\000\000", FERRY_BAD_MSG, NULL),
    BROW("sasl_initial", 'p', "SCRAM-SHA-256\000\000\000", FERRY_BAD_MSG, NULL),
};

/* Frames the body with its header, then checks framing at every cut and the
 * decoded body, each at the guard page. */
static void check_body_row(size_t row)
{
    const struct body_row *r = &body_rows[row];
    uint8_t msg[256];
    msg[0] = (uint8_t)r->type;
    uint32_t mlen = (uint32_t)r->len + 4;
    msg[1] = (uint8_t)(mlen >> 24), msg[2] = (uint8_t)(mlen >> 16), msg[3] = (uint8_t)(mlen >> 8), msg[4] = (uint8_t)mlen;
    memcpy(msg + 5, r->body, r->len);
    uint8_t type;
    uint32_t total;
    for (size_t cut = 0; cut < r->len + 5; cut++)
        ASSERT_EQ_INT(pg_frame(at_guard(msg, cut), cut, 1 << 20, &type, &total), FERRY_NEED_MORE);
    ASSERT_EQ_INT(pg_frame(at_guard(msg, r->len + 5), r->len + 5, 1 << 20, &type, &total), (int)r->len + 5);
    ASSERT_EQ_INT(type, (uint8_t)r->type);
    struct text t = {.len = 0};
    int rc = render_body(r->kind, at_guard(r->body, r->len), r->len, &t);
    if (rc != r->want || (r->fields && strcmp(t.s, r->fields) != 0)) {
        fprintf(stderr, "  %s row: rc %d (want %d), fields \"%s\"\n    want \"%s\"\n", r->kind, rc, r->want,
                t.s, r->fields ? r->fields : "");
        ASSERT_TRUE(0);
    }
}

static void test_body_table(void)
{
    run_table("body", sizeof body_rows / sizeof body_rows[0], check_body_row);
}

/* Every body decoder on every prefix of every body in the table, each prefix
 * ending at the guard page: no decoder reads past what it was given. */
static void test_body_prefixes_never_overread(void)
{
    for (size_t i = 0; i < sizeof body_rows / sizeof body_rows[0]; i++) {
        const struct body_row *r = &body_rows[i];
        for (size_t cut = 0; cut < r->len; cut++) {
            struct text t = {.len = 0};
            (void)render_body(r->kind, at_guard(r->body, cut), cut, &t);
        }
    }
}

/* ---- builders ------------------------------------------------------------------- */

#define ASSERT_BYTES(b, lit)                                                               \
    do {                                                                                   \
        ASSERT_TRUE(!(b)->failed);                                                         \
        ASSERT_EQ_INT((b)->len, sizeof(lit) - 1);                                          \
        ASSERT_TRUE(memcmp((b)->data, lit, sizeof(lit) - 1) == 0);                         \
    } while (0)

static void test_build_exact(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    pg_build_error(&b, "FATAL", "08P01", "bad");
    ASSERT_BYTES(&b, "E\000\000\000\046SFATAL\000VFATAL\000C08P01\000Mferry: bad\000\000");
    ferry_wbuf_reset(&b);
    pg_build_ready(&b, 'I');
    pg_build_sync(&b);
    pg_build_terminate(&b);
    ASSERT_BYTES(&b, "Z\000\000\000\005IS\000\000\000\004X\000\000\000\004");
    ferry_wbuf_reset(&b);
    pg_build_ssl_request(&b);
    pg_build_cancel_request(&b, 12345, 7);
    ASSERT_BYTES(&b, "\000\000\000\010\004\322\026\057\000\000\000\020\004\322\026\056\000\000\060\071\000\000\000\007");
    ferry_wbuf_reset(&b);
    const char *kv[] = {"user", "u", "database", "d"};
    pg_build_startup(&b, kv, 2);
    ASSERT_BYTES(&b, "\000\000\000\033\000\003\000\000user\000u\000database\000d\000\000");
    ferry_wbuf_reset(&b);
    struct ferry_slice opt = {(const uint8_t *)"_pq_.x", 6};
    pg_build_negotiate_version(&b, 0, &opt, 1);
    ASSERT_BYTES(&b, "v\000\000\000\023\000\000\000\000\000\000\000\001_pq_.x\000");
    ferry_wbuf_reset(&b);
    static const uint8_t salt[4] = {1, 2, 3, 4};
    pg_build_auth_md5(&b, salt);
    pg_build_auth_ok(&b);
    pg_build_auth_cleartext(&b);
    ASSERT_BYTES(&b, "R\000\000\000\014\000\000\000\005\001\002\003\004R\000\000\000\010\000\000\000\000"
                     "R\000\000\000\010\000\000\000\003");
    ferry_wbuf_reset(&b);
    pg_build_sasl_initial(&b, "SCRAM-SHA-256", "n,,", 3);
    pg_build_sasl_response(&b, "c=", 2);
    ASSERT_BYTES(&b, "p\000\000\000\031SCRAM-SHA-256\000\000\000\000\003n,,p\000\000\000\006c=");
    ferry_wbuf_free(&b);
}

/* Messages built by ferry decode back to what went in. */
static void test_build_decode_roundtrip(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    const char *mechs[] = {"SCRAM-SHA-256"};
    pg_build_auth_sasl(&b, mechs, 1);
    pg_build_auth_sasl_continue(&b, "r=x", 3);
    pg_build_auth_sasl_final(&b, "v=y", 3);
    pg_build_parameter_status(&b, "TimeZone", "UTC");
    pg_build_backend_key(&b, 1, 2);
    static const uint32_t types[] = {23, 25};
    pg_build_parse(&b, "s1", "select $1, $2", types, 2);
    pg_build_query(&b, "select 1");
    pg_build_password(&b, "md5abc");
    ASSERT_TRUE(!b.failed);
    static const char *const want[] = {
        "code=10 mechs=[SCRAM-SHA-256] ", "code=11 data=r=x ", "code=12 data=v=y ", "name=TimeZone value=UTC ",
        "pid=1 key=2", "name=s1 query=select $1, $2 types=23,25,", "text=select 1 ", "text=md5abc ",
    };
    static const char *const kinds[] = {"auth", "auth", "auth", "param", "key", "parse", "cstr", "cstr"};
    size_t off = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        uint8_t type;
        uint32_t total;
        int rc = pg_frame(b.data + off, b.len - off, 1 << 20, &type, &total);
        ASSERT_TRUE(rc > 0);
        struct text t = {.len = 0};
        ASSERT_EQ_INT(render_body(kinds[i], b.data + off + 5, total - 5, &t), 0);
        ASSERT_EQ_STR(t.s, want[i]);
        off += total;
    }
    ASSERT_EQ_INT(off, b.len);
    ferry_wbuf_free(&b);
}

static void test_build_sticky_failure(void)
{
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 16);
    pg_build_error(&b, "ERROR", "57P01", "terminating connection");
    ASSERT_TRUE(b.failed);
    pg_build_sync(&b);    /* nothing more is written */
    ASSERT_TRUE(b.failed);
    ferry_wbuf_free(&b);
}

int main(void)
{
    if (test_guard_init(&guard, 16384) != 0) {
        perror("guard page");
        return 2;
    }
    RUN(test_startup_table);
    RUN(test_startup_limits);
    RUN(test_frame_table);
    RUN(test_body_table);
    RUN(test_body_prefixes_never_overread);
    RUN(test_build_exact);
    RUN(test_build_decode_roundtrip);
    RUN(test_build_sticky_failure);
    UNIT_DONE();
}
