/* libFuzzer target for the MySQL codec and state tracker: the input is a
 * stream of packets. Byte 0 picks the negotiated capabilities and byte 1
 * which side each packet comes from; every logical packet is given to
 * every body parser, to KILL recognition, and to the state tracker.
 * Invariants: consumed <= len, parsed slices stay inside the input, what
 * parses re-encodes to the same fields, and no crash, leak or over-read.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "auth.h"
#include "codec.h"
#include "state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint32_t caps_choices[] = {
    MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION,
    MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SESSION_TRACK | MY_CLIENT_DEPRECATE_EOF |
        MY_CLIENT_LOCAL_FILES | MY_CLIENT_PLUGIN_AUTH | MY_CLIENT_CONNECT_ATTRS,
    MY_CLIENT_PROTOCOL_41 | MY_CLIENT_QUERY_ATTRIBUTES | MY_CLIENT_MULTI_RESULTS |
        MY_CLIENT_SECURE_CONNECTION | MY_CLIENT_PLUGIN_AUTH,
    0xFFFFFFFF,
};

static void inside(const uint8_t *p, size_t n, struct ferry_slice s)
{
    if (s.len && (s.p < p || s.p + s.len > p + n))
        abort();
}

static void round_trip_ok(const uint8_t *p, size_t n, uint32_t caps)
{
    struct my_ok ok, again;
    if (my_ok_parse(p, n, caps, &ok) < 0 || p[0] != MY_OK)
        return;
    inside(p, n, ok.info);
    inside(p, n, ok.session_state);
    struct ferry_slice rest = ok.session_state;
    struct my_state_change ch;
    while (my_state_change_next(&rest, &ch) == 1)
        inside(p, n, ch.value);
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    my_ok_build(&b, 0, caps, &ok);
    if (!b.failed) {
        if (my_ok_parse(b.data + MY_HDR_LEN, b.len - MY_HDR_LEN, caps, &again) < 0 ||
            again.affected_rows != ok.affected_rows || again.status != ok.status ||
            again.info.len != ok.info.len)
            abort();
    }
    ferry_wbuf_free(&b);
}

static void round_trip_handshake(const uint8_t *p, size_t n)
{
    struct my_handshake hs, again;
    if (my_handshake_parse(p, n, &hs) < 0)
        return;
    inside(p, n, hs.server_version);
    inside(p, n, hs.auth_plugin);
    if (hs.scramble_len != MY_SCRAMBLE_LEN ||
        (hs.auth_plugin.len && memchr(hs.auth_plugin.p, 0, hs.auth_plugin.len)) ||
        !(hs.caps & MY_CLIENT_SECURE_CONNECTION) || !(hs.caps & MY_CLIENT_PLUGIN_AUTH))
        return;
    struct ferry_wbuf b;
    ferry_wbuf_init(&b, 0);
    my_handshake_build(&b, 0, &hs);
    if (my_handshake_parse(b.data + MY_HDR_LEN, b.len - MY_HDR_LEN, &again) < 0 ||
        again.conn_id != hs.conn_id || again.caps != hs.caps ||
        memcmp(again.scramble, hs.scramble, MY_SCRAMBLE_LEN) != 0)
        abort();
    ferry_wbuf_free(&b);
}

static void parse_response(const uint8_t *p, size_t n)
{
    struct my_response r;
    if (my_response_parse(p, n, &r) < 0)
        return;
    inside(p, n, r.user);
    inside(p, n, r.auth_response);
    inside(p, n, r.attrs);
    struct ferry_slice k, v, rest = r.attrs;
    while (my_attr_next(&rest, &k, &v) == 1) {
        inside(p, n, k);
        inside(p, n, v);
    }
}

/* Every body parser on one payload; results are only checked for bounds. */
/* ferry checking a client's auth packets (terminated mode): each packet
 * is a first response and, when asked for more, the next ones; its length
 * picks the plugin, TLS or not, cached or not (an RSA key is there). */
static void auth_steps(const uint8_t *p, size_t n)
{
    static EVP_PKEY *key;
    if (!key)
        key = EVP_RSA_gen(1024);
    struct my_secret secret;
    my_secret_from_password(&secret, "secret", 6);
    for (int v = (int)(n % 8); v >= 0; v = -1) {
        struct my_secret sec = secret;
        sec.has_sha2 = v & 4;
        struct my_auth_server srv = {.secret = &sec, .sha2 = v & 1, .tls = v & 2,
                                     .key = key};
        memset(srv.scramble, 'x', sizeof srv.scramble);
        struct ferry_wbuf out;
        ferry_wbuf_init(&out, 4096);
        for (int step = 0; step < 3; step++)
            if (my_auth_server_step(&srv, p, n, &out) != MY_AUTH_CONTINUE)
                break;
        ferry_wbuf_free(&out);
    }
}

static void parse_all(const uint8_t *p, size_t n, uint32_t caps)
{
    struct my_err e;
    struct my_eof eof;
    struct my_prepare_ok po;
    struct my_auth_switch as;
    struct my_change_user cu;
    struct ferry_slice s;
    uint64_t id;
    round_trip_ok(p, n, caps);
    round_trip_handshake(p, n);
    auth_steps(p, n);
    parse_response(p, n);
    if (my_err_parse(p, n, &e) == 0)
        inside(p, n, e.message);
    my_eof_parse(p, n, &eof);
    my_prepare_ok_parse(p, n, &po);
    if (my_auth_switch_parse(p, n, &as) == 0)
        inside(p, n, as.data);
    my_auth_more_data_parse(p, n, &s);
    if (my_change_user_parse(p, n, caps, &cu) == 0)
        inside(p, n, cu.attrs);
    if (my_query_text(p, n, caps, &s) == 0) {
        inside(p, n, s);
        my_kill_parse(s.p, s.len, &id);
    }
    my_kill_parse(p, n, &id);
    my_is_ssl_request(p, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t caps = caps_choices[data[0] % 4];
    uint8_t sides = data[1];
    data += 2;
    size -= 2;
    struct my_state_limits lim;
    my_state_limits_default(&lim);
    lim.max_stmts = 4;
    lim.max_vars = 4;
    struct my_state st;
    my_state_init(&st, &lim, caps, 45);
    size_t off = 0;
    for (int i = 0; off < size; i++) {
        struct my_logical lp;
        int used = my_logical_decode(data + off, size - off, 1 << 20, &lp);
        if (used < 0)
            break;
        if ((size_t)used > size - off)
            abort();
        inside(data + off, (size_t)used, lp.payload);
        parse_all(lp.payload.p, lp.payload.len, caps);
        if (sides & (1u << (i % 8)))
            my_state_server_packet(&st, &lp);
        else
            my_state_client_packet(&st, &lp);
        off += (size_t)used;
    }
    my_state_free(&st);
    return 0;
}
