/* MySQL auth: scrambles against values computed independently, stored-hash
 * verification, the RSA exchange with a key generated here, and whole
 * client <-> server exchanges between ferry's own two sides, right and
 * wrong passwords.
 *
 * Independent values (python3 hashlib), for password "secret":
 *   s1 = sha1(pw); s2 = sha1(s1); native = xor(s1, sha1(scramble + s2))
 *   a = sha256(pw); b = sha256(a); sha2 = xor(a, sha256(b + scramble))
 *   "*" + s2.hex().upper() is mysql.user's hash (= PASSWORD('secret')).
 * The native vector also matches what PyMySQL 1.0.2 really sent for that
 * scramble (see the "pymysql response" row in test_mysql_codec.c).
 */
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "auth.h"
#include "test_support.h"
#include "unit.h"

static const char *const PW = "secret";

static void unhex_exact(const char *hex, uint8_t *out, size_t n)
{
    if (my_test_unhex(hex, out, n) != n)
        abort();
}

static void test_native_vectors(void)
{
    uint8_t scramble[20], want[20], got[20];
    unhex_exact("2e376726247e73453f493568315846392757636a", scramble, 20);
    unhex_exact("b30008a31abcf5f9f03ebbfc74b601fe79566743", want, 20);
    ASSERT_EQ_INT(my_native_scramble(PW, 6, scramble, got), 20);
    ASSERT_TRUE(memcmp(got, want, 20) == 0);
    ASSERT_EQ_INT(my_native_scramble("", 0, scramble, got), 0);

    struct my_secret plain, stored = {0};
    ASSERT_EQ_INT(my_secret_from_password(&plain, PW, 6), 0);
    ASSERT_EQ_INT(my_secret_set_native_hash(&stored, "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7"), 0);
    ASSERT_TRUE(memcmp(plain.native_stage2, stored.native_stage2, 20) == 0);
    ASSERT_TRUE(my_native_verify(&plain, scramble, want, 20));
    ASSERT_TRUE(my_native_verify(&stored, scramble, want, 20));
    want[19] ^= 1;
    ASSERT_TRUE(!my_native_verify(&stored, scramble, want, 20));
    ASSERT_TRUE(!my_native_verify(&stored, scramble, want, 19));
    ASSERT_TRUE(!my_native_verify(&stored, scramble, NULL, 0));
    ASSERT_EQ_INT(my_secret_set_native_hash(&stored, "14E65567ABDB5135D0CFD9A70B3032C179A49EE7"), -1);
    ASSERT_EQ_INT(my_secret_set_native_hash(&stored, "*14E65567ABDB5135D0CFD9A70B3032C179A49EEZ"), -1);
    ASSERT_EQ_INT(my_secret_set_native_hash(&stored, "*14"), -1);
    /* empty password: only an empty response proves it */
    struct my_secret empty;
    my_secret_from_password(&empty, "", 0);
    ASSERT_TRUE(my_native_verify(&empty, scramble, NULL, 0));
    ASSERT_TRUE(!my_native_verify(&empty, scramble, want, 20));
}

static void test_sha2_vectors(void)
{
    uint8_t scramble[20], want[32], got[32], stage2[32];
    for (int i = 0; i < 20; i++)
        scramble[i] = (uint8_t)(i + 1);
    unhex_exact("746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9", want, 32);
    unhex_exact("3881219d087dd9c634373fd33dfa33a2cb6bfc6c520b64b8bb60ef2ceb534ae7", stage2, 32);
    ASSERT_EQ_INT(my_sha2_scramble(PW, 6, scramble, got), 32);
    ASSERT_TRUE(memcmp(got, want, 32) == 0);
    struct my_secret s;
    my_secret_from_password(&s, PW, 6);
    ASSERT_TRUE(memcmp(s.sha2_stage2, stage2, 32) == 0);
    struct my_secret hashed = {.has_sha2 = true};
    memcpy(hashed.sha2_stage2, stage2, 32);
    ASSERT_TRUE(my_sha2_verify_fast(&hashed, scramble, want, 32));
    ASSERT_TRUE(my_cleartext_verify(&hashed, (const uint8_t *)"secret", 7));  /* with its NUL */
    ASSERT_TRUE(!my_cleartext_verify(&hashed, (const uint8_t *)"secreT", 6));
    want[0] ^= 0x80;
    ASSERT_TRUE(!my_sha2_verify_fast(&hashed, scramble, want, 32));
    ASSERT_TRUE(!my_sha2_verify_fast(&hashed, scramble, want, 20));
    ASSERT_TRUE(my_cleartext_verify(&s, (const uint8_t *)"secret", 6));
    ASSERT_TRUE(!my_cleartext_verify(&s, (const uint8_t *)"secre", 5));
}

static EVP_PKEY *rsa_key;

static void test_rsa_round_trip(void)
{
    uint8_t scramble[20];
    RAND_bytes(scramble, sizeof scramble);
    struct ferry_wbuf pem, cipher, plain;
    ferry_wbuf_init(&pem, 0);
    ferry_wbuf_init(&cipher, 0);
    ferry_wbuf_init(&plain, 0);
    ASSERT_EQ_INT(my_rsa_public_pem(rsa_key, &pem), 0);
    ASSERT_TRUE(pem.len > 26 && memcmp(pem.data, "-----BEGIN PUBLIC KEY-----", 26) == 0);
    ASSERT_EQ_INT(my_sha2_rsa_encrypt(pem.data, pem.len, PW, 6, scramble, &cipher), 0);
    ASSERT_EQ_INT(cipher.len, 256);
    ASSERT_EQ_INT(my_sha2_rsa_decrypt(rsa_key, cipher.data, cipher.len, scramble, &plain), 0);
    ASSERT_TRUE(plain.len == 6 && memcmp(plain.data, PW, 6) == 0);
    /* another scramble gives another password, or no trailing NUL: rejected */
    scramble[0] ^= 1;
    ferry_wbuf_reset(&plain);
    ASSERT_EQ_INT(my_sha2_rsa_decrypt(rsa_key, cipher.data, cipher.len, scramble, &plain), 0);
    ASSERT_TRUE(plain.len == 6 && memcmp(plain.data, PW, 6) != 0);
    scramble[6] ^= 1;
    ferry_wbuf_reset(&plain);
    ASSERT_EQ_INT(my_sha2_rsa_decrypt(rsa_key, cipher.data, cipher.len, scramble, &plain), -1);
    cipher.data[10] ^= 1;
    ASSERT_EQ_INT(my_sha2_rsa_decrypt(rsa_key, cipher.data, cipher.len, scramble, &plain), -1);
    ASSERT_EQ_INT(my_sha2_rsa_encrypt((const uint8_t *)"junk", 4, PW, 6, scramble, &cipher), -1);
    ferry_wbuf_free(&pem);
    ferry_wbuf_free(&cipher);
    ferry_wbuf_free(&plain);
}

/* ---- whole exchanges between ferry's client and server sides ------------- */

struct exchange {
    const char *client_pw;
    bool sha2;                  /* plugin the server announces */
    bool tls;                   /* both legs of this link */
    bool client_knows_key;      /* client configured with the server's public key */
    bool server_has_key;        /* server holds an RSA key pair */
    bool stored_native_only;    /* server knows only the "*HEX" hash */
    enum my_auth_verdict want;
    int want_round_trips;       /* client packets sent */
};

static enum my_auth_verdict run_exchange(const struct exchange *x, int *trips)
{
    struct my_secret secret = {0};
    if (x->stored_native_only)
        my_secret_set_native_hash(&secret, "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
    else
        my_secret_from_password(&secret, PW, 6);
    struct ferry_wbuf pem, to_server, to_client;
    ferry_wbuf_init(&pem, 0);
    ferry_wbuf_init(&to_server, 0);
    ferry_wbuf_init(&to_client, 0);
    my_rsa_public_pem(rsa_key, &pem);
    struct my_auth_server srv = {.secret = &secret, .sha2 = x->sha2, .tls = x->tls,
                                 .key = x->server_has_key ? rsa_key : NULL};
    RAND_bytes(srv.scramble, MY_SCRAMBLE_LEN);
    struct my_auth_client cli = {.password = x->client_pw, .password_len = strlen(x->client_pw),
                                 .tls = x->tls, .may_reveal = true,
                                 .server_key = x->client_knows_key ? pem.data : NULL,
                                 .server_key_len = pem.len};
    const char *plugin = x->sha2 ? MY_PLUGIN_SHA2 : MY_PLUGIN_NATIVE;
    enum my_auth_verdict v = MY_AUTH_DENIED;
    *trips = 0;
    if (my_auth_client_start(&cli, (struct ferry_slice){(const uint8_t *)plugin, strlen(plugin)},
                             (struct ferry_slice){srv.scramble, 20}, &to_server) < 0)
        goto out;
    for (*trips = 1; *trips < 6; ++*trips) {
        ferry_wbuf_reset(&to_client);
        v = my_auth_server_step(&srv, to_server.data, to_server.len, &to_client);
        if (v != MY_AUTH_CONTINUE)
            break;
        bool reply;
        ferry_wbuf_reset(&to_server);
        if (my_auth_client_more(&cli, (struct ferry_slice){to_client.data, to_client.len},
                                &to_server, &reply) < 0 || !reply) {
            v = MY_AUTH_DENIED;
            break;
        }
    }
    if (v == MY_AUTH_OK && to_client.len) {     /* fast-auth success: nothing to answer */
        bool reply = true;
        if (my_auth_client_more(&cli, (struct ferry_slice){to_client.data, to_client.len},
                                &to_server, &reply) < 0 || reply)
            v = MY_AUTH_DENIED;
    }
out:
    ferry_wbuf_free(&pem);
    ferry_wbuf_free(&to_server);
    ferry_wbuf_free(&to_client);
    return v;
}

static void test_exchanges(void)
{
    static const struct exchange cases[] = {
        {"secret", false, false, false, false, false, MY_AUTH_OK, 1},
        {"secreT", false, false, false, false, false, MY_AUTH_DENIED, 1},
        {"secret", false, false, false, false, true, MY_AUTH_OK, 1},
        {"secret", true, false, false, false, false, MY_AUTH_OK, 1},        /* sha2 fast path */
        /* a wrong fast-path scramble asks for the password in full, as MySQL */
        {"wrong", true, true, false, true, false, MY_AUTH_DENIED, 2},
        /* server knows only the native hash: sha2 needs the password in full */
        {"secret", true, true, false, false, true, MY_AUTH_OK, 2},          /* cleartext over TLS */
        {"secreT", true, true, false, false, true, MY_AUTH_DENIED, 2},
        {"secret", true, false, false, true, true, MY_AUTH_OK, 3},          /* RSA, key requested */
        {"secret", true, false, true, true, true, MY_AUTH_OK, 2},           /* RSA, key known */
        {"secreT", true, false, false, true, true, MY_AUTH_DENIED, 3},
        {"secret", true, false, false, false, true, MY_AUTH_DENIED, 2},     /* no TLS, no key */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int trips;
        enum my_auth_verdict v = run_exchange(&cases[i], &trips);
        if (v != cases[i].want || trips != cases[i].want_round_trips)
            fprintf(stderr, "  exchange case %zu: verdict %d after %d packets\n", i, v, trips);
        ASSERT_EQ_INT(v, cases[i].want);
        ASSERT_EQ_INT(trips, cases[i].want_round_trips);
    }
}

static void test_client_refusals(void)
{
    struct my_auth_client cli = {.password = PW, .password_len = 6};
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    static const uint8_t scramble[21] = {1};
    struct ferry_slice data = {scramble, 21};
    ASSERT_EQ_INT(my_auth_client_start(&cli, (struct ferry_slice){(const uint8_t *)"dialog", 6},
                                       data, &out), -1);
    ASSERT_EQ_INT(my_auth_client_start(&cli, (struct ferry_slice){(const uint8_t *)MY_PLUGIN_SHA2,
                                       21}, (struct ferry_slice){scramble, 8}, &out), -1);
    ASSERT_EQ_INT(my_auth_client_start(&cli, (struct ferry_slice){(const uint8_t *)MY_PLUGIN_NATIVE,
                                       21}, data, &out), 0);
    ASSERT_EQ_INT(out.len, 20);
    bool reply;
    static const uint8_t fast[] = {MY_SHA2_FAST_OK};
    /* AuthMoreData means nothing to mysql_native_password */
    ASSERT_EQ_INT(my_auth_client_more(&cli, (struct ferry_slice){fast, 1}, &out, &reply), -1);
    ferry_wbuf_free(&out);
}

/* A server ferry has not verified that asks for full authentication (or
 * sends a public key unasked) gets nothing: the password would be readable
 * by it, TLS or not (issue 18 item 1). The scramble of the fast path is
 * still fine: it proves the password without revealing it. */
static void test_full_auth_needs_verified_server(void)
{
    static const uint8_t scramble[20] = {7};
    static const uint8_t full[] = {MY_SHA2_FULL_AUTH}, fast[] = {MY_SHA2_FAST_OK};
    struct ferry_wbuf pem, out;
    ferry_wbuf_init(&pem, 0);
    ferry_wbuf_init(&out, 0);
    my_rsa_public_pem(rsa_key, &pem);
    for (int tls = 0; tls <= 1; tls++) {
        struct my_auth_client cli = {.password = PW, .password_len = 6, .tls = tls};
        ferry_wbuf_reset(&out);
        ASSERT_EQ_INT(my_auth_client_start(&cli, (struct ferry_slice){(const uint8_t *)MY_PLUGIN_SHA2,
                                           strlen(MY_PLUGIN_SHA2)}, (struct ferry_slice){scramble, 20},
                                           &out), 0);
        ASSERT_EQ_INT(out.len, 32);                 /* the scramble */
        ferry_wbuf_reset(&out);
        bool reply = false;
        ASSERT_EQ_INT(my_auth_client_more(&cli, (struct ferry_slice){fast, 1}, &out, &reply), 0);
        ASSERT_TRUE(!reply);
        ASSERT_EQ_INT(my_auth_client_more(&cli, (struct ferry_slice){full, 1}, &out, &reply),
                      MY_AUTH_CLIENT_INSECURE);
        ASSERT_EQ_INT(out.len, 0);
        /* a key the server pushes unasked is refused too */
        ASSERT_TRUE(my_auth_client_more(&cli, (struct ferry_slice){pem.data, pem.len}, &out,
                                        &reply) < 0);
        ASSERT_EQ_INT(out.len, 0);
    }
    ferry_wbuf_free(&pem);
    ferry_wbuf_free(&out);
}

int main(void)
{
    rsa_key = EVP_RSA_gen(2048);
    if (!rsa_key)
        return 2;
    RUN(test_native_vectors);
    RUN(test_sha2_vectors);
    RUN(test_rsa_round_trip);
    RUN(test_exchanges);
    RUN(test_client_refusals);
    RUN(test_full_auth_needs_verified_server);
    EVP_PKEY_free(rsa_key);
    UNIT_DONE();
}
