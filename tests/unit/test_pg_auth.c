/* PostgreSQL authentication: SCRAM-SHA-256 against RFC 7677's example
 * exchange byte for byte on both sides, ferry's client against ferry's
 * server, wrong passwords, malformed and channel-binding messages, the
 * verifier format, and MD5 against independently computed values. */
#include "pg/auth.h"
#include "unit.h"

/* RFC 7677 section 3: user "user", password "pencil". */
#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_CLIENT_FIRST "n,,n=user,r=" RFC_CLIENT_NONCE
#define RFC_SERVER_FIRST "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define RFC_CLIENT_FINAL "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
/* The same secret as PostgreSQL stores it; computed with
 *   python3 -c 'import hashlib,hmac,base64; s=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==");
 *   p=hashlib.pbkdf2_hmac("sha256",b"pencil",s,4096); c=hmac.new(p,b"Client Key",hashlib.sha256).digest();
 *   print(base64.b64encode(hashlib.sha256(c).digest()), base64.b64encode(hmac.new(p,b"Server Key",hashlib.sha256).digest()))' */
#define RFC_VERIFIER                                                                       \
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:" \
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

#define U8(lit) (const uint8_t *)(lit), sizeof(lit) - 1

static struct ferry_wbuf out;

/* The text in out (NUL-terminated copy for the string asserts). */
static const char *out_text(void)
{
    static char s[2048];
    size_t n = out.len < sizeof s - 1 ? out.len : sizeof s - 1;
    memcpy(s, out.data ? (const char *)out.data : "", n);
    s[n] = '\0';
    ferry_wbuf_reset(&out);
    return s;
}

/* A server exchange against the RFC 7677 user's secret. */
static void rfc_server_init(struct pg_scram_server *s)
{
    struct pg_scram_secret secret;
    if (pg_scram_secret_parse(RFC_VERIFIER, &secret) != PG_AUTH_RC_OK)
        abort();
    pg_scram_server_init(s, &secret);
}

/* A message that must be refused as malformed, with nothing written. */
static void expect_refused(const char *msg, int rc)
{
    if (rc != PG_AUTH_RC_MALFORMED)
        fprintf(stderr, "  accepted \"%s\"\n", msg);
    ASSERT_EQ_INT(rc, PG_AUTH_RC_MALFORMED);
    ASSERT_EQ_INT(out.len, 0);
}

static void test_rfc7677_client(void)
{
    struct pg_scram_client c;
    ASSERT_EQ_INT(pg_scram_client_first(&c, "user", RFC_CLIENT_NONCE, &out), PG_AUTH_RC_OK);
    ASSERT_EQ_STR(out_text(), RFC_CLIENT_FIRST);
    ASSERT_EQ_INT(pg_scram_client_final(&c, "pencil", U8(RFC_SERVER_FIRST), &out), PG_AUTH_RC_OK);
    ASSERT_EQ_STR(out_text(), RFC_CLIENT_FINAL);
    struct pg_scram_client forged = c;
    ASSERT_EQ_INT(pg_scram_client_verify(&forged, U8("v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")),
                  PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(pg_scram_client_verify(&c, U8(RFC_SERVER_FINAL)), PG_AUTH_RC_OK);
    pg_scram_client_clear(&c);
}

static void test_rfc7677_server(void)
{
    struct pg_scram_server s;
    rfc_server_init(&s);
    ASSERT_EQ_INT(pg_scram_server_first(&s, U8(RFC_CLIENT_FIRST), RFC_SERVER_NONCE, &out), PG_AUTH_RC_OK);
    ASSERT_EQ_STR(out_text(), RFC_SERVER_FIRST);
    ASSERT_EQ_INT(pg_scram_server_final(&s, U8(RFC_CLIENT_FINAL), &out), PG_AUTH_RC_OK);
    ASSERT_EQ_STR(out_text(), RFC_SERVER_FINAL);
    pg_scram_server_clear(&s);
}

static void test_verifier_parse_format_and_derive(void)
{
    struct pg_scram_secret parsed, derived;
    static const uint8_t salt[] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                   0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};
    ASSERT_EQ_INT(pg_scram_secret_parse(RFC_VERIFIER, &parsed), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(pg_scram_secret_from_password("pencil", 4096, salt, sizeof salt, &derived), PG_AUTH_RC_OK);
    ASSERT_TRUE(memcmp(&parsed, &derived, sizeof parsed) == 0);
    char text[200];
    ASSERT_TRUE(pg_scram_secret_format(&derived, text, sizeof text));
    ASSERT_EQ_STR(text, RFC_VERIFIER);
    ASSERT_TRUE(!pg_scram_secret_format(&derived, text, 50));
    static const char *const bad[] = {
        "md5abc",
        "SCRAM-SHA-256$0:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$x:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4q==:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
        "SCRAM-SHA-256$4096:$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ASSERT_EQ_INT(pg_scram_secret_parse(bad[i], &parsed), PG_AUTH_RC_MALFORMED);
}

/* ferry's client against ferry's server with random nonces and salt, as
 * PostgreSQL clients do it (empty user name). */
static int round_trip(const struct pg_scram_secret *secret, const char *user, const char *password)
{
    struct pg_scram_client c;
    struct pg_scram_server s;
    struct ferry_wbuf c2s, s2c;
    ferry_wbuf_init(&c2s, 0);
    ferry_wbuf_init(&s2c, 0);
    pg_scram_server_init(&s, secret);
    int rc = pg_scram_client_first(&c, user, NULL, &c2s);
    if (rc == 0)
        rc = pg_scram_server_first(&s, c2s.data, c2s.len, NULL, &s2c);
    ferry_wbuf_reset(&c2s);
    if (rc == 0)
        rc = pg_scram_client_final(&c, password, s2c.data, s2c.len, &c2s);
    ferry_wbuf_reset(&s2c);
    if (rc == 0)
        rc = pg_scram_server_final(&s, c2s.data, c2s.len, &s2c);
    if (rc == 0)
        rc = pg_scram_client_verify(&c, s2c.data, s2c.len);
    bool wrote_final = s2c.len > 0;
    ferry_wbuf_free(&c2s);
    ferry_wbuf_free(&s2c);
    pg_scram_client_clear(&c);
    pg_scram_server_clear(&s);
    return rc == PG_AUTH_RC_REJECTED && wrote_final ? 99 : rc;   /* a rejection must write nothing */
}

static void test_round_trip_and_wrong_password(void)
{
    struct pg_scram_secret from_password, from_verifier;
    ASSERT_EQ_INT(pg_scram_secret_from_password("correct horse", 4096, NULL, 0, &from_password), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(from_password.salt_len, 16);
    ASSERT_EQ_INT(pg_scram_secret_parse(RFC_VERIFIER, &from_verifier), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(round_trip(&from_password, "", "correct horse"), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(round_trip(&from_verifier, "", "pencil"), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(round_trip(&from_verifier, "we,ird=name", "pencil"), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(round_trip(&from_password, "", "correct hors"), PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(round_trip(&from_verifier, "", "Pencil"), PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(round_trip(&from_verifier, "", ""), PG_AUTH_RC_REJECTED);
}

/* PostgreSQL's scram_mock_salt(): SHA-256(user + nonce) truncated; values from
 *   python3 -c 'import hashlib; print(hashlib.sha256(b"nobody" + bytes(range(32))).digest()[:16].hex())' */
static void test_mock_secret(void)
{
    uint8_t nonce[PG_SCRAM_MOCK_NONCE_LEN], salt[PG_SCRAM_SALT_LEN];
    for (size_t i = 0; i < sizeof nonce; i++)
        nonce[i] = (uint8_t)i;
    static const uint8_t want[PG_SCRAM_SALT_LEN] = {0xb0, 0x01, 0xb6, 0xdb, 0x70, 0xd7, 0x8c, 0xe5,
                                                    0xb7, 0xda, 0x7e, 0xee, 0x64, 0x9c, 0xe5, 0xc6};
    ASSERT_EQ_INT(pg_scram_mock_salt(nonce, "nobody", salt), PG_AUTH_RC_OK);
    ASSERT_TRUE(memcmp(salt, want, sizeof want) == 0);
    struct pg_scram_secret a, b;
    ASSERT_EQ_INT(pg_scram_secret_mock(nonce, "nobody", 8192, &a), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(pg_scram_secret_mock(nonce, "nobody", 8192, &b), PG_AUTH_RC_OK);
    ASSERT_TRUE(a.mock && a.iterations == 8192 && a.salt_len == PG_SCRAM_SALT_LEN);
    ASSERT_TRUE(memcmp(a.salt, want, sizeof want) == 0 && memcmp(b.salt, want, sizeof want) == 0);
    ASSERT_TRUE(memcmp(a.stored_key, b.stored_key, PG_SCRAM_KEY_LEN) != 0);   /* random keys */
    ASSERT_EQ_INT(pg_scram_secret_mock(nonce, "nobody2", 8192, &b), PG_AUTH_RC_OK);
    ASSERT_TRUE(memcmp(a.salt, b.salt, PG_SCRAM_SALT_LEN) != 0);
    /* even with the right keys a mock secret fails at the proof check */
    struct pg_scram_secret real;
    ASSERT_EQ_INT(pg_scram_secret_parse(RFC_VERIFIER, &real), PG_AUTH_RC_OK);
    ASSERT_TRUE(!real.mock);
    real.mock = true;
    ASSERT_EQ_INT(round_trip(&real, "", "pencil"), PG_AUTH_RC_REJECTED);
}

static void test_client_first_escapes_user(void)
{
    struct pg_scram_client c;
    ASSERT_EQ_INT(pg_scram_client_first(&c, "a,b=c", "xyz", &out), PG_AUTH_RC_OK);
    ASSERT_EQ_STR(out_text(), "n,,n=a=2Cb=3Dc,r=xyz");
    ASSERT_EQ_INT(pg_scram_client_first(&c, "", "bad,nonce", &out), PG_AUTH_RC_MALFORMED);
    ASSERT_EQ_INT(pg_scram_client_first(&c, "", NULL, &out), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(strlen(out_text()), 3 + 2 + 3 + 24);     /* "n,," "n=" ",r=" + 24 base64 */
}

/* Client-first messages a server must refuse: channel binding, an
 * authorization identity, a mandatory extension, missing or bad parts. */
static void test_server_refuses_bad_client_first(void)
{
    static const char *const bad[] = {
        "p=tls-server-end-point,,n=,r=abc", "n,a=bob,n=,r=abc", "n,,m=ext,n=,r=abc", "n,,n=,x=abc",
        "n,,n=", "n,,n=,r=", "n,,n=,r=a b", "n,,n=,r=abc,", "x,,n=,r=abc", "n,,", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct pg_scram_server s;
        rfc_server_init(&s);
        expect_refused(bad[i], pg_scram_server_first(&s, (const uint8_t *)bad[i], strlen(bad[i]), "srv", &out));
    }
    struct pg_scram_server s;   /* "y,,": the client could bind, but we offered no -PLUS */
    rfc_server_init(&s);
    ASSERT_EQ_INT(pg_scram_server_first(&s, U8("y,,n=,r=abc"), "srv", &out), PG_AUTH_RC_OK);
    ASSERT_EQ_STR(out_text(), "r=abcsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    ASSERT_EQ_INT(pg_scram_server_final(&s, U8("c=biws,r=abcsrv,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="), &out),
                  PG_AUTH_RC_MALFORMED);   /* c= must repeat "y,," */
}

static void test_server_refuses_bad_client_final(void)
{
    static const char *const bad[] = {
        "c=eSws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=" RFC_CLIENT_NONCE "x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE,
        "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndV",
        "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=,x=1",
        "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct pg_scram_server s;
        rfc_server_init(&s);
        ASSERT_EQ_INT(pg_scram_server_first(&s, U8(RFC_CLIENT_FIRST), RFC_SERVER_NONCE, &out), PG_AUTH_RC_OK);
        ferry_wbuf_reset(&out);
        expect_refused(bad[i], pg_scram_server_final(&s, (const uint8_t *)bad[i], strlen(bad[i]), &out));
    }
    /* an extension before the proof is skipped, and covered by the proof: this one is wrong */
    struct pg_scram_server s;
    rfc_server_init(&s);
    pg_scram_server_first(&s, U8(RFC_CLIENT_FIRST), RFC_SERVER_NONCE, &out);
    ferry_wbuf_reset(&out);
    ASSERT_EQ_INT(pg_scram_server_final(&s, U8("c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE
                                              ",x=ext,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="), &out),
                  PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(pg_scram_server_final(&s, U8(RFC_CLIENT_FINAL), &out), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(pg_scram_server_final(&s, U8(RFC_CLIENT_FINAL), &out), PG_AUTH_RC_MALFORMED); /* done */
    ferry_wbuf_reset(&out);
}

static void test_client_refuses_bad_server_messages(void)
{
    static const char *const bad[] = {
        "r=someoneelse" RFC_SERVER_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=" RFC_CLIENT_NONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",            /* not extended */
        "r=" RFC_CLIENT_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        "r=" RFC_CLIENT_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
        "r=" RFC_CLIENT_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001",       /* over ferry's cap */
        "r=" RFC_CLIENT_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ=,i=4096",
        "r=" RFC_CLIENT_NONCE "x,s=,i=4096",
        "r=" RFC_CLIENT_NONCE "x,i=4096",
        "m=x,r=" RFC_CLIENT_NONCE "x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct pg_scram_client c;
        pg_scram_client_first(&c, "user", RFC_CLIENT_NONCE, &out);
        ferry_wbuf_reset(&out);
        expect_refused(bad[i], pg_scram_client_final(&c, "pencil", (const uint8_t *)bad[i], strlen(bad[i]), &out));
    }
    struct pg_scram_client c = {.step = 1};     /* first sent, final not yet */
    ASSERT_EQ_INT(pg_scram_client_verify(&c, U8(RFC_SERVER_FINAL)), PG_AUTH_RC_MALFORMED); /* out of order */
    pg_scram_client_first(&c, "user", RFC_CLIENT_NONCE, &out);
    pg_scram_client_final(&c, "pencil", U8(RFC_SERVER_FIRST), &out);
    ferry_wbuf_reset(&out);
    ASSERT_EQ_INT(pg_scram_client_verify(&c, U8("e=invalid-proof")), PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(pg_scram_client_verify(&c, U8("v=short")), PG_AUTH_RC_MALFORMED);
}

/* Expected values computed independently:
 *   python3 -c 'import hashlib; i=hashlib.md5(b"s3cret"+b"alice").hexdigest(); print("md5"+i);
 *   print("md5"+hashlib.md5(i.encode()+bytes([1,2,3,4])).hexdigest())' */
#define MD5_STORED "md58213e4d0d5792b064442db7988e9f4c4"
#define MD5_RESPONSE "md5b79948bbeb35dee03ab8fe15a839030b"

static void test_md5(void)
{
    static const uint8_t salt[4] = {1, 2, 3, 4};
    char s[PG_MD5_LEN + 1];
    pg_md5_stored("alice", "s3cret", s);
    ASSERT_EQ_STR(s, MD5_STORED);
    pg_md5_response("alice", "s3cret", salt, s);
    ASSERT_EQ_STR(s, MD5_RESPONSE);
    ASSERT_EQ_INT(pg_md5_verify(MD5_STORED, "alice", salt, U8(MD5_RESPONSE)), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(pg_md5_verify("s3cret", "alice", salt, U8(MD5_RESPONSE)), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(pg_md5_verify("s3cret", "bob", salt, U8(MD5_RESPONSE)), PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(pg_md5_verify("s3cret!", "alice", salt, U8(MD5_RESPONSE)), PG_AUTH_RC_REJECTED);
    static const uint8_t other_salt[4] = {1, 2, 3, 5};
    ASSERT_EQ_INT(pg_md5_verify(MD5_STORED, "alice", other_salt, U8(MD5_RESPONSE)), PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(pg_md5_verify(MD5_STORED, "alice", salt, (const uint8_t *)MD5_RESPONSE, 34), PG_AUTH_RC_REJECTED);
    ASSERT_EQ_INT(pg_md5_verify(MD5_STORED, "alice", salt, U8("")), PG_AUTH_RC_REJECTED);
}

static void test_random(void)
{
    uint8_t a[16] = {0}, b[16] = {0};
    ASSERT_EQ_INT(pg_auth_random(a, sizeof a), PG_AUTH_RC_OK);
    ASSERT_EQ_INT(pg_auth_random(b, sizeof b), PG_AUTH_RC_OK);
    ASSERT_TRUE(memcmp(a, b, sizeof a) != 0);
}

int main(void)
{
    ferry_wbuf_init(&out, 0);
    RUN(test_rfc7677_client);
    RUN(test_rfc7677_server);
    RUN(test_verifier_parse_format_and_derive);
    RUN(test_round_trip_and_wrong_password);
    RUN(test_mock_secret);
    RUN(test_client_first_escapes_user);
    RUN(test_server_refuses_bad_client_first);
    RUN(test_server_refuses_bad_client_final);
    RUN(test_client_refuses_bad_server_messages);
    RUN(test_md5);
    RUN(test_random);
    ferry_wbuf_free(&out);
    UNIT_DONE();
}
