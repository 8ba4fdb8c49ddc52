/* MySQL connection phase: Handshake v10 (parse a backend's, build ferry's),
 * HandshakeResponse41 and SSLRequest (parse a client's, build ferry's for a
 * backend), AuthSwitchRequest / AuthMoreData, and the capability policy that
 * decides which flags ferry offers and passes on.
 */
#include "codec.h"

#include <string.h>

#include "internal.h"

enum { RESERVED_LEN = 10, FILLER_LEN = 23, SSL_REQUEST_LEN = 32, SCRAMBLE_PART1 = 8 };

/* ---- Handshake v10 ------------------------------------------------------ */

/* Auth-plugin-data part 2: max(13, plugin data length - 8) bytes, of which a
 * trailing NUL is not part of the scramble. */
static void read_scramble_part2(struct my_reader *r, struct my_handshake *hs, uint8_t data_len)
{
    size_t len = data_len > SCRAMBLE_PART1 + 13 ? (size_t)data_len - SCRAMBLE_PART1 : 13;
    struct ferry_slice part2 = my_rd_bytes(r, len);
    if (part2.len && part2.p[part2.len - 1] == 0)
        part2.len--;
    if (part2.len > sizeof hs->scramble - SCRAMBLE_PART1) {
        r->bad = true;
        return;
    }
    if (part2.len)
        memcpy(hs->scramble + SCRAMBLE_PART1, part2.p, part2.len);
    hs->scramble_len += part2.len;
}

int my_handshake_parse(const uint8_t *p, size_t n, struct my_handshake *hs)
{
    struct my_reader r = my_reader_of(p, n);
    *hs = (struct my_handshake){0};
    if (my_rd_u8(&r) != 10)
        return FERRY_BAD_MSG;
    hs->server_version = my_rd_cstr(&r);
    hs->conn_id = my_rd_u32(&r);
    struct ferry_slice part1 = my_rd_bytes(&r, SCRAMBLE_PART1);
    if (part1.len)
        memcpy(hs->scramble, part1.p, SCRAMBLE_PART1);
    hs->scramble_len = SCRAMBLE_PART1;
    my_rd_u8(&r);               /* filler */
    hs->caps = my_rd_u16(&r);
    if (r.left == 0)            /* a pre-4.1 server stops here */
        return my_rd_result(&r);
    hs->charset = my_rd_u8(&r);
    hs->status = my_rd_u16(&r);
    hs->caps |= (uint32_t)my_rd_u16(&r) << 16;
    uint8_t data_len = my_rd_u8(&r);
    my_rd_bytes(&r, RESERVED_LEN);  /* MariaDB keeps extended caps in the last 4: ignored */
    if (hs->caps & MY_CLIENT_SECURE_CONNECTION)
        read_scramble_part2(&r, hs, data_len);
    if (hs->caps & MY_CLIENT_PLUGIN_AUTH)
        hs->auth_plugin = my_rd_cstr_or_rest(&r);   /* MySQL 5.5.7-5.5.9 omitted the NUL */
    if (!r.bad && hs->scramble_len < MY_SCRAMBLE_LEN && (hs->caps & MY_CLIENT_SECURE_CONNECTION))
        return FERRY_BAD_MSG;
    return my_rd_result(&r);
}

void my_handshake_build(struct ferry_wbuf *b, uint8_t seq, const struct my_handshake *hs)
{
    static const uint8_t zeros[RESERVED_LEN];
    size_t start = my_packet_begin(b, seq);
    ferry_wbuf_u8(b, 10);
    ferry_wbuf_put(b, hs->server_version.p, hs->server_version.len);
    ferry_wbuf_u8(b, 0);
    ferry_wbuf_u32le(b, hs->conn_id);
    ferry_wbuf_put(b, hs->scramble, SCRAMBLE_PART1);
    ferry_wbuf_u8(b, 0);
    ferry_wbuf_u16le(b, (uint16_t)hs->caps);
    ferry_wbuf_u8(b, hs->charset);
    ferry_wbuf_u16le(b, hs->status);
    ferry_wbuf_u16le(b, (uint16_t)(hs->caps >> 16));
    ferry_wbuf_u8(b, MY_SCRAMBLE_LEN + 1);
    ferry_wbuf_put(b, zeros, RESERVED_LEN);
    ferry_wbuf_put(b, hs->scramble + SCRAMBLE_PART1, MY_SCRAMBLE_LEN - SCRAMBLE_PART1);
    ferry_wbuf_u8(b, 0);
    ferry_wbuf_put(b, hs->auth_plugin.p, hs->auth_plugin.len);
    ferry_wbuf_u8(b, 0);
    my_packet_end(b, start);
}

/* ---- HandshakeResponse41 / SSLRequest ----------------------------------- */

bool my_is_ssl_request(const uint8_t *p, size_t n)
{
    return n == SSL_REQUEST_LEN && (ferry_get_u32le(p) & MY_CLIENT_SSL);
}

static struct ferry_slice read_auth_response(struct my_reader *r, uint32_t caps)
{
    if (caps & MY_CLIENT_PLUGIN_AUTH_LENENC)
        return my_rd_lenenc_str(r);
    if (caps & MY_CLIENT_SECURE_CONNECTION)
        return my_rd_bytes(r, my_rd_u8(r));
    return my_rd_cstr(r);
}

int my_response_parse(const uint8_t *p, size_t n, struct my_response *out)
{
    struct my_reader r = my_reader_of(p, n);
    *out = (struct my_response){0};
    out->caps = my_rd_u32(&r);
    out->max_packet = my_rd_u32(&r);
    out->charset = my_rd_u8(&r);
    my_rd_bytes(&r, FILLER_LEN);
    if (r.bad || !(out->caps & MY_CLIENT_PROTOCOL_41))
        return FERRY_BAD_MSG;
    if (r.left == 0) {
        out->ssl_request = (out->caps & MY_CLIENT_SSL) != 0;
        return out->ssl_request ? 0 : FERRY_BAD_MSG;
    }
    out->user = my_rd_cstr(&r);
    out->auth_response = read_auth_response(&r, out->caps);
    if ((out->caps & MY_CLIENT_CONNECT_WITH_DB) && r.left > 0) {
        out->database = my_rd_cstr(&r);
        out->has_database = true;
    }
    if ((out->caps & MY_CLIENT_PLUGIN_AUTH) && r.left > 0)
        out->auth_plugin = my_rd_cstr(&r);
    if ((out->caps & MY_CLIENT_CONNECT_ATTRS) && r.left > 0)
        out->attrs = my_rd_lenenc_str(&r);
    /* A zstd level byte may follow with CLIENT_ZSTD_COMPRESSION; ferry never
     * offers compression, so anything left over is ignored. */
    return my_rd_result(&r);
}

void my_response_build(struct ferry_wbuf *b, uint8_t seq, const struct my_response *r)
{
    static const uint8_t filler[FILLER_LEN];
    size_t start = my_packet_begin(b, seq);
    ferry_wbuf_u32le(b, r->caps);
    ferry_wbuf_u32le(b, r->max_packet);
    ferry_wbuf_u8(b, r->charset);
    ferry_wbuf_put(b, filler, FILLER_LEN);
    if (!r->ssl_request) {
        ferry_wbuf_put(b, r->user.p, r->user.len);
        ferry_wbuf_u8(b, 0);
        if (r->caps & MY_CLIENT_PLUGIN_AUTH_LENENC) {
            my_put_lenenc_str(b, r->auth_response.p, r->auth_response.len);
        } else if (r->auth_response.len <= 0xFF) {
            ferry_wbuf_u8(b, (uint8_t)r->auth_response.len);
            ferry_wbuf_put(b, r->auth_response.p, r->auth_response.len);
        } else {
            b->failed = true;
        }
        if (r->caps & MY_CLIENT_CONNECT_WITH_DB) {
            ferry_wbuf_put(b, r->database.p, r->database.len);
            ferry_wbuf_u8(b, 0);
        }
        if (r->caps & MY_CLIENT_PLUGIN_AUTH) {
            ferry_wbuf_put(b, r->auth_plugin.p, r->auth_plugin.len);
            ferry_wbuf_u8(b, 0);
        }
        if (r->caps & MY_CLIENT_CONNECT_ATTRS)
            my_put_lenenc_str(b, r->attrs.p, r->attrs.len);
    }
    my_packet_end(b, start);
}

int my_attr_next(struct ferry_slice *rest, struct ferry_slice *key, struct ferry_slice *val)
{
    if (rest->len == 0)
        return 0;
    struct my_reader r = my_reader_of(rest->p, rest->len);
    *key = my_rd_lenenc_str(&r);
    *val = my_rd_lenenc_str(&r);
    return my_rd_advance(rest, &r);
}

/* ---- AuthSwitchRequest / AuthMoreData ----------------------------------- */

int my_auth_switch_parse(const uint8_t *p, size_t n, struct my_auth_switch *as)
{
    struct my_reader r = my_reader_of(p, n);
    *as = (struct my_auth_switch){0};
    if (my_rd_u8(&r) != MY_EOF || r.left == 0)
        return FERRY_BAD_MSG;
    as->plugin = my_rd_cstr(&r);
    as->data = my_rd_rest(&r);
    return my_rd_result(&r);
}

void my_auth_switch_build(struct ferry_wbuf *b, uint8_t seq, const char *plugin,
                          const uint8_t *data, size_t len)
{
    size_t start = my_packet_begin(b, seq);
    ferry_wbuf_u8(b, MY_EOF);
    ferry_wbuf_cstr(b, plugin);
    ferry_wbuf_put(b, data, len);
    ferry_wbuf_u8(b, 0);
    my_packet_end(b, start);
}

int my_auth_more_data_parse(const uint8_t *p, size_t n, struct ferry_slice *data)
{
    if (n < 1 || p[0] != MY_AUTH_MORE_DATA)
        return FERRY_BAD_MSG;
    *data = (struct ferry_slice){p + 1, n - 1};
    return 0;
}

void my_auth_more_data_build(struct ferry_wbuf *b, uint8_t seq, const uint8_t *data, size_t len)
{
    size_t start = my_packet_begin(b, seq);
    ferry_wbuf_u8(b, MY_AUTH_MORE_DATA);
    ferry_wbuf_put(b, data, len);
    my_packet_end(b, start);
}

/* ---- capability policy --------------------------------------------------
 *
 * ferry reads packet headers on every packet and bodies of the packets that
 * change session state, and relays the rest unchanged. So a flag is kept
 * only if ferry can still frame and follow the stream with it, and a flag
 * that changes the format of relayed packets (MY_CAPS_WIRE_FORMAT) must be
 * negotiated identically on both legs.
 *
 * - CLIENT_COMPRESS (and CLIENT_ZSTD_COMPRESSION): never offered, cleared
 *   towards backends. Compressed framing wraps packets in another header,
 *   so ferry could neither see packet boundaries nor OK status flags without
 *   inflating every byte; TLS is the supported way to protect the link.
 * - CLIENT_DEPRECATE_EOF: kept when client and backend both have it. The
 *   state tracker follows result sets in both forms (EOF after definitions
 *   and rows, or a 0xFE OK terminator).
 * - CLIENT_SESSION_TRACK: kept when both have it. It changes the OK layout,
 *   so it cannot be turned on for the backend alone; when kept, ferry reads
 *   schema, system variables and transaction state from OK packets, which
 *   is what lets it replay a session on another backend. Without it, schema
 *   comes only from COM_INIT_DB and COM_CHANGE_USER.
 * - CLIENT_QUERY_ATTRIBUTES: kept when both have it (MySQL 8.0.23+; MariaDB
 *   lacks it). It prefixes COM_QUERY and changes COM_STMT_EXECUTE, which
 *   ferry relays as is; my_query_text() skips the prefix for KILL parsing.
 * - CLIENT_MULTI_STATEMENTS: kept when the client asks and the backend has
 *   it. Results are followed through SERVER_MORE_RESULTS_EXISTS; note that
 *   KILL translation only looks at the first statement of a query.
 * - CLIENT_LOCAL_FILES: kept only when the client asks (a client that did
 *   not ask must never be sent a file request) and the backend has it. The
 *   0xFB request and the file packets are relayed; ferry tracks the
 *   exchange so that it knows when the command ends.
 * - CLIENT_MULTI_RESULTS, CLIENT_PS_MULTI_RESULTS: kept when both have them
 *   (stored procedures need them).
 * - CLIENT_OPTIONAL_METADATA, MULTI_FACTOR_AUTH, CAPABILITY_EXTENSION:
 *   cleared; they change result-set or auth formats ferry does not follow.
 * - CLIENT_SSL: per leg (ferry's client certificate; the backend TLS mode).
 * - PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH: always; ferry speaks no
 *   pre-4.1 protocol. LONG_PASSWORD is always set in ferry's greeting: to
 *   MariaDB clients a clear bit 0 means "MariaDB server", which would make
 *   them use MariaDB extended capabilities that an Aurora backend lacks.
 */
#define MY_CAPS_REQUIRED                                                                   \
    (MY_CLIENT_LONG_PASSWORD | MY_CLIENT_PROTOCOL_41 | MY_CLIENT_SECURE_CONNECTION |         \
     MY_CLIENT_PLUGIN_AUTH)

#define MY_CAPS_SUPPORTED                                                                  \
    (MY_CAPS_REQUIRED | MY_CLIENT_FOUND_ROWS | MY_CLIENT_LONG_FLAG |                         \
     MY_CLIENT_CONNECT_WITH_DB | MY_CLIENT_NO_SCHEMA | MY_CLIENT_ODBC |                      \
     MY_CLIENT_LOCAL_FILES | MY_CLIENT_IGNORE_SPACE | MY_CLIENT_INTERACTIVE |                \
     MY_CLIENT_IGNORE_SIGPIPE | MY_CLIENT_TRANSACTIONS | MY_CLIENT_MULTI_STATEMENTS |        \
     MY_CLIENT_MULTI_RESULTS | MY_CLIENT_PS_MULTI_RESULTS | MY_CLIENT_CONNECT_ATTRS |        \
     MY_CLIENT_PLUGIN_AUTH_LENENC | MY_CLIENT_CAN_HANDLE_EXPIRED | MY_CLIENT_SESSION_TRACK | \
     MY_CLIENT_DEPRECATE_EOF | MY_CLIENT_QUERY_ATTRIBUTES)

uint32_t my_caps_offer(uint32_t server_caps, bool client_tls)
{
    return (server_caps & MY_CAPS_SUPPORTED) | MY_CAPS_REQUIRED | (client_tls ? MY_CLIENT_SSL : 0);
}

uint32_t my_caps_for_backend(uint32_t client_caps, uint32_t server_caps, bool backend_tls)
{
    uint32_t caps = client_caps & server_caps & MY_CAPS_SUPPORTED & ~MY_CLIENT_CONNECT_WITH_DB;
    return caps | MY_CAPS_REQUIRED | (backend_tls ? MY_CLIENT_SSL : 0);
}
