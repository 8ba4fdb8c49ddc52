/* libFuzzer target for the PostgreSQL codec: the input goes to the startup
 * decoder, is split into frames, and every frame's body goes to every body
 * decoder, to the state tracker (direction chosen by the first byte), and
 * whole inputs to the SCRAM steps. Invariants: consumed <= len, decoded
 * slices lie inside the input, decode -> build -> decode is stable, and no
 * crash, leak or over-read. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pg/auth.h"
#include "pg/codec.h"
#include "pg/state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t *in_lo, *in_hi;    /* the current input, for slice checks */

static void check_slice(struct ferry_slice s)
{
    if (s.p && (s.p < in_lo || s.p + s.len > in_hi))
        abort();
}

static void check_rc(int rc, size_t len)
{
    if (rc > 0 && (size_t)rc > len)
        abort();
    if (rc <= 0 && rc != FERRY_NEED_MORE && rc != FERRY_BAD_MSG)
        abort();
}

static char *dup_cstr(struct ferry_slice s)
{
    char *c = malloc(s.len + 1);
    if (!c)
        abort();
    if (s.len)
        memcpy(c, s.p, s.len);
    c[s.len] = '\0';
    return c;
}

/* A decoded Parse rebuilt and decoded again gives the same fields. */
static void parse_round_trip(const struct pg_parse *p)
{
    char *name = dup_cstr(p->name), *query = dup_cstr(p->query);
    uint32_t *types = malloc((size_t)p->nparam_types * 4 + 4);
    for (unsigned i = 0; i < p->nparam_types; i++)
        types[i] = pg_parse_param_type(p, i);
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    pg_build_parse(&b, name, query, types, p->nparam_types);
    struct pg_parse again;
    if (b.failed || pg_decode_parse(b.data + 5, b.len - 5, &again) != 0 || again.nparam_types != p->nparam_types ||
        again.query.len != p->query.len || memcmp(again.param_types, p->param_types, (size_t)p->nparam_types * 4))
        abort();
    ferry_wbuf_free(&b);
    free(types);
    free(name);
    free(query);
}

static void decode_startup(const uint8_t *data, size_t size)
{
    struct pg_startup st;
    int rc = pg_decode_startup(data, size, &st);
    check_rc(rc, size);
    if (rc <= 0 || st.kind != PG_STARTUP_MESSAGE)
        return;
    check_slice(st.params);
    check_slice(st.user);
    unsigned n = 0;
    for (struct ferry_slice l = st.params, k, v; pg_param_next(&l, &k, &v); n++)
        check_slice(k), check_slice(v);
    if (n != st.nparams)
        abort();
}

static void decode_all_bodies(const uint8_t *b, size_t n)
{
    char status;
    struct pg_parameter_status ps;
    struct pg_backend_key key;
    struct pg_error_fields err;
    struct pg_auth_request auth;
    struct pg_parse parse;
    struct pg_bind bind;
    struct pg_target target;
    struct ferry_slice text;
    struct pg_sasl_initial si;
    (void)pg_decode_ready(b, n, &status);
    if (pg_decode_parameter_status(b, n, &ps) == 0)
        check_slice(ps.name), check_slice(ps.value);
    (void)pg_decode_backend_key(b, n, &key);
    if (pg_decode_error(b, n, &err) == 0)
        for (size_t i = 0; i < sizeof err.field / sizeof err.field[0]; i++)
            check_slice(err.field[i]);
    if (pg_decode_auth(b, n, &auth) == 0) {
        check_slice(auth.data);
        for (struct ferry_slice l = auth.data, m; auth.code == PG_AUTH_SASL && pg_cstr_next(&l, &m);)
            check_slice(m);
    }
    if (pg_decode_parse(b, n, &parse) == 0)
        parse_round_trip(&parse);
    if (pg_decode_bind(b, n, &bind) == 0)
        check_slice(bind.portal), check_slice(bind.statement);
    if (pg_decode_target(b, n, &target) == 0)
        check_slice(target.name);
    if (pg_decode_cstr_body(b, n, &text) == 0)
        check_slice(text);
    if (pg_decode_sasl_initial(b, n, &si) == 0)
        check_slice(si.mechanism), check_slice(si.data);
}

/* Frames from offset 1 on; each body to every decoder and to the tracker. */
static void decode_frames(const uint8_t *data, size_t size)
{
    struct pg_state_limits lim = {.max_statements = 8, .max_statement_bytes = 4096, .max_pending = 64};
    struct pg_state *s = pg_state_new(&lim);
    uint8_t directions = size ? data[0] : 0;
    unsigned i = 0;
    for (size_t off = 1; off < size; i++) {
        uint8_t type;
        uint32_t total;
        int rc = pg_frame(data + off, size - off, 1 << 16, &type, &total);
        check_rc(rc, size - off);
        if (rc <= 0)
            break;
        const uint8_t *body = data + off + PG_HEADER_LEN;
        size_t n = total - PG_HEADER_LEN;
        decode_all_bodies(body, n);
        if (directions >> (i % 8) & 1)
            (void)pg_state_backend(s, type, body, n);
        else
            (void)pg_state_frontend(s, type, body, n);
        off += total;
    }
    (void)pg_state_at_safe_point(s);
    for (size_t k = 0; k < pg_state_statement_count(s); k++)
        if (!pg_state_statement(s, pg_state_statement_at(s, k)->name, pg_state_statement_at(s, k)->name_len))
            abort();
    pg_state_free(s);
}

/* True unless some "i=<digits>" in the input asks for more than 10000
 * PBKDF2 iterations (slow, not interesting). */
static bool cheap_iterations(const uint8_t *data, size_t size)
{
    for (const uint8_t *p = data, *end = data + size; (p = memmem(p, (size_t)(end - p), "i=", 2)); p += 2) {
        unsigned long v = 0;
        for (const uint8_t *d = p + 2; d < end && *d >= '0' && *d <= '9' && v <= 10000; d++)
            v = v * 10 + (unsigned)(*d - '0');
        if (v > 10000)
            return false;
    }
    return true;
}

/* The server steps on the two halves of the input; the client's steps on
 * all of it. */
static void scram(const uint8_t *data, size_t size)
{
    static const uint8_t salt[4] = {1, 2, 3, 4};
    struct pg_scram_secret secret;
    if (pg_scram_secret_from_password("pw", 1, salt, sizeof salt, &secret) != 0)
        abort();
    struct ferry_wbuf out;
    ferry_wbuf_init(&out, 0);
    struct pg_scram_server srv;
    pg_scram_server_init(&srv, &secret);
    size_t half = size / 2;
    if (pg_scram_server_first(&srv, data, half, "srv", &out) == 0)
        (void)pg_scram_server_final(&srv, data + half, size - half, &out);
    struct pg_scram_client cli;
    if (cheap_iterations(data, size)) {
        pg_scram_client_first(&cli, "", "abc", &out);
        (void)pg_scram_client_final(&cli, "pw", data, size, &out);
        (void)pg_scram_client_verify(&cli, data, size);
    }
    (void)pg_md5_verify("pw", "u", salt, data, size);
    ferry_wbuf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    in_lo = data;
    in_hi = data + size;
    decode_startup(data, size);
    decode_frames(data, size);
    scram(data, size);
    return 0;
}
