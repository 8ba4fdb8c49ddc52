/* MySQL packet framing (headers, logical payloads split at 0xFFFFFF),
 * length-encoded values, command-phase responses (OK, ERR, EOF, session
 * state changes, PREPARE_OK) and client commands (classification, id at
 * offset 1, COM_QUERY text, COM_CHANGE_USER). Connection-phase packets are
 * in handshake.c, KILL recognition in kill.c.
 */
#include "codec.h"

#include <string.h>

#include "internal.h"

/* ---- framing ------------------------------------------------------------ */

int my_header_decode(const uint8_t *p, size_t n, struct my_header *h)
{
    if (n < MY_HDR_LEN)
        return FERRY_NEED_MORE;
    h->len = ferry_get_u24le(p);
    h->seq = p[3];
    return MY_HDR_LEN;
}

void my_header_encode(uint8_t out[MY_HDR_LEN], uint32_t len, uint8_t seq)
{
    out[0] = (uint8_t)len;
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)(len >> 16);
    out[3] = seq;
}

int my_packet_decode(const uint8_t *p, size_t n, struct my_header *h, struct ferry_slice *payload)
{
    if (my_header_decode(p, n, h) < 0 || n - MY_HDR_LEN < h->len)
        return FERRY_NEED_MORE;
    payload->p = p + MY_HDR_LEN;
    payload->len = h->len;
    return MY_HDR_LEN + (int)h->len;
}

void my_reasm_init(struct my_reasm *r, size_t max)
{
    *r = (struct my_reasm){.max = (max == 0 || max > MY_LOGICAL_LIMIT) ? MY_LOGICAL_LIMIT : max};
}

int my_reasm_feed(struct my_reasm *r, const struct my_header *h)
{
    if (r->continuing && h->seq != r->next_seq)
        return FERRY_BAD_MSG;
    if (!r->continuing)
        r->total = 0;
    if (h->len > r->max - r->total)
        return FERRY_BAD_MSG;
    r->total += h->len;
    r->next_seq = (uint8_t)(h->seq + 1);
    r->continuing = h->len == MY_MAX_PHYSICAL;
    return r->continuing ? 0 : 1;
}

int my_logical_decode(const uint8_t *p, size_t n, size_t max, struct my_logical *out)
{
    struct my_reasm r;
    my_reasm_init(&r, max);
    size_t off = 0;
    for (uint32_t frag = 1;; frag++) {
        struct my_header h;
        if (my_header_decode(p + off, n - off, &h) < 0)
            return FERRY_NEED_MORE;
        int last = my_reasm_feed(&r, &h);
        if (last < 0)
            return FERRY_BAD_MSG;
        if (frag == 1) {
            out->first_seq = h.seq;
            out->payload = (struct ferry_slice){p + MY_HDR_LEN, h.len};
        }
        off += MY_HDR_LEN;
        if (n - off < h.len)
            return FERRY_NEED_MORE;
        off += h.len;
        if (last) {
            out->last_seq = h.seq;
            out->fragments = frag;
            out->len = r.total;
            return (int)off;
        }
    }
}

void my_logical_gather(const uint8_t *p, const struct my_logical *lp, uint8_t *dst)
{
    for (uint32_t i = 0; i < lp->fragments; i++) {
        size_t len = ferry_get_u24le(p);
        memcpy(dst, p + MY_HDR_LEN, len);
        dst += len;
        p += MY_HDR_LEN + len;
    }
}

size_t my_packet_begin(struct ferry_wbuf *b, uint8_t seq)
{
    size_t start = b->len;
    static const uint8_t zero[3];
    ferry_wbuf_put(b, zero, sizeof zero);
    ferry_wbuf_u8(b, seq);
    return start;
}

void my_packet_end(struct ferry_wbuf *b, size_t start)
{
    if (b->failed)
        return;
    size_t len = b->len - start - MY_HDR_LEN;
    if (len > MY_MAX_PHYSICAL - 1) {   /* 0xFFFFFF would announce a continuation */
        b->failed = true;
        return;
    }
    ferry_wbuf_patch_u24le(b, start, (uint32_t)len);
}

/* ---- length-encoded values ---------------------------------------------- */

int my_lenenc_decode(const uint8_t *p, size_t n, uint64_t *v, bool *is_null)
{
    *v = 0;
    *is_null = false;
    if (n < 1)
        return FERRY_NEED_MORE;
    size_t width;
    switch (p[0]) {
    case 0xFB: *is_null = true; return 1;
    case 0xFC: width = 2; break;
    case 0xFD: width = 3; break;
    case 0xFE: width = 8; break;
    case 0xFF: return FERRY_BAD_MSG;
    default: *v = p[0]; return 1;
    }
    if (n < 1 + width)
        return FERRY_NEED_MORE;
    uint64_t x = 0;
    for (size_t i = width; i > 0; i--)
        x = x << 8 | p[i];
    *v = x;
    return (int)(1 + width);
}

int my_lenenc_str_decode(const uint8_t *p, size_t n, struct ferry_slice *s, bool *is_null)
{
    uint64_t len;
    int used = my_lenenc_decode(p, n, &len, is_null);
    *s = (struct ferry_slice){0};
    if (used < 0)
        return used;
    if (len > MY_LOGICAL_LIMIT)
        return FERRY_BAD_MSG;
    if (n - (size_t)used < len)
        return FERRY_NEED_MORE;
    *s = (struct ferry_slice){p + used, (size_t)len};
    return used + (int)len;
}

void my_put_lenenc(struct ferry_wbuf *b, uint64_t v)
{
    size_t width;
    if (v < 0xFB) {
        ferry_wbuf_u8(b, (uint8_t)v);
        return;
    }
    if (v <= 0xFFFF) {
        ferry_wbuf_u8(b, 0xFC);
        width = 2;
    } else if (v <= 0xFFFFFF) {
        ferry_wbuf_u8(b, 0xFD);
        width = 3;
    } else {
        ferry_wbuf_u8(b, 0xFE);
        width = 8;
    }
    for (size_t i = 0; i < width; i++)
        ferry_wbuf_u8(b, (uint8_t)(v >> (8 * i)));
}

void my_put_lenenc_str(struct ferry_wbuf *b, const void *p, size_t n)
{
    my_put_lenenc(b, n);
    ferry_wbuf_put(b, p, n);
}

/* ---- OK, ERR, EOF -------------------------------------------------------- */

int my_ok_parse(const uint8_t *p, size_t n, uint32_t caps, struct my_ok *ok)
{
    struct my_reader r = my_reader_of(p, n);
    *ok = (struct my_ok){0};
    uint8_t head = my_rd_u8(&r);
    if (head != MY_OK && head != MY_EOF)
        return FERRY_BAD_MSG;
    ok->affected_rows = my_rd_lenenc(&r);
    ok->last_insert_id = my_rd_lenenc(&r);
    ok->status = my_rd_u16(&r);
    ok->warnings = my_rd_u16(&r);
    if (!(caps & MY_CLIENT_SESSION_TRACK)) {
        ok->info = my_rd_rest(&r);
        return my_rd_result(&r);
    }
    /* Servers omit the info string when nothing follows the warnings. */
    if (r.left > 0)
        ok->info = my_rd_lenenc_str(&r);
    if ((ok->status & MY_STATUS_SESSION_STATE_CHANGED) && r.left > 0)
        ok->session_state = my_rd_lenenc_str(&r);
    return my_rd_result(&r);
}

void my_ok_build(struct ferry_wbuf *b, uint8_t seq, uint32_t caps, const struct my_ok *ok)
{
    size_t start = my_packet_begin(b, seq);
    ferry_wbuf_u8(b, MY_OK);
    my_put_lenenc(b, ok->affected_rows);
    my_put_lenenc(b, ok->last_insert_id);
    ferry_wbuf_u16le(b, ok->status);
    ferry_wbuf_u16le(b, ok->warnings);
    if (!(caps & MY_CLIENT_SESSION_TRACK)) {
        ferry_wbuf_put(b, ok->info.p, ok->info.len);
    } else if (ok->info.len || ok->session_state.len) {
        my_put_lenenc_str(b, ok->info.p, ok->info.len);
        if (ok->session_state.len)
            my_put_lenenc_str(b, ok->session_state.p, ok->session_state.len);
    }
    my_packet_end(b, start);
}

int my_err_parse(const uint8_t *p, size_t n, struct my_err *e)
{
    struct my_reader r = my_reader_of(p, n);
    *e = (struct my_err){0};
    if (my_rd_u8(&r) != MY_ERR)
        return FERRY_BAD_MSG;
    e->code = my_rd_u16(&r);
    if (r.left > 0 && r.p[0] == '#') {
        struct ferry_slice st = my_rd_bytes(&r, 6);
        if (st.len) {
            memcpy(e->sqlstate, st.p + 1, 5);
            e->has_sqlstate = true;
        }
    }
    e->message = my_rd_rest(&r);
    return my_rd_result(&r);
}

void my_err_build(struct ferry_wbuf *b, uint8_t seq, uint16_t code, const char *sqlstate,
                  const char *msg)
{
    size_t start = my_packet_begin(b, seq);
    ferry_wbuf_u8(b, MY_ERR);
    ferry_wbuf_u16le(b, code);
    ferry_wbuf_u8(b, '#');
    char state[5] = {'H', 'Y', '0', '0', '0'};
    for (size_t i = 0; i < 5 && sqlstate && sqlstate[i]; i++)
        state[i] = sqlstate[i];
    ferry_wbuf_put(b, state, sizeof state);
    ferry_wbuf_put(b, "ferry: ", 7);
    ferry_wbuf_put(b, msg, strlen(msg));
    my_packet_end(b, start);
}

bool my_is_eof(const uint8_t *p, size_t n)
{
    return n >= 1 && n < 9 && p[0] == MY_EOF;
}

int my_eof_parse(const uint8_t *p, size_t n, struct my_eof *eof)
{
    *eof = (struct my_eof){0};
    if (!my_is_eof(p, n))
        return FERRY_BAD_MSG;
    if (n == 1)
        return 0;
    struct my_reader r = my_reader_of(p + 1, n - 1);
    eof->warnings = my_rd_u16(&r);
    eof->status = my_rd_u16(&r);
    return my_rd_result(&r);
}

int my_state_change_next(struct ferry_slice *rest, struct my_state_change *out)
{
    *out = (struct my_state_change){0};
    if (rest->len == 0)
        return 0;
    struct my_reader r = my_reader_of(rest->p, rest->len);
    out->type = my_rd_u8(&r);
    struct ferry_slice data = my_rd_lenenc_str(&r);
    if (r.bad)
        return FERRY_BAD_MSG;
    struct my_reader d = my_reader_of(data.p, data.len);
    switch (out->type) {
    case MY_TRACK_SYSTEM_VARIABLES:
        out->name = my_rd_lenenc_str(&d);
        out->value = my_rd_lenenc_str(&d);
        break;
    case MY_TRACK_GTIDS:
        my_rd_u8(&d);           /* encoding specification: 0 = plain text */
        out->value = my_rd_lenenc_str(&d);
        break;
    case MY_TRACK_SCHEMA:
    case MY_TRACK_STATE_CHANGE:
    case MY_TRACK_TRANSACTION_CHARACTERISTICS:
    case MY_TRACK_TRANSACTION_STATE:
        out->value = my_rd_lenenc_str(&d);
        break;
    default:
        out->value = data;      /* unknown tracker: opaque */
        break;
    }
    if (d.bad)
        return FERRY_BAD_MSG;
    return my_rd_advance(rest, &r);
}

int my_prepare_ok_parse(const uint8_t *p, size_t n, struct my_prepare_ok *po)
{
    struct my_reader r = my_reader_of(p, n);
    *po = (struct my_prepare_ok){0};
    if (my_rd_u8(&r) != MY_OK)
        return FERRY_BAD_MSG;
    po->stmt_id = my_rd_u32(&r);
    po->num_columns = my_rd_u16(&r);
    po->num_params = my_rd_u16(&r);
    my_rd_u8(&r);               /* reserved filler */
    if (r.left >= 2)
        po->warnings = my_rd_u16(&r);
    return my_rd_result(&r);
}

/* ---- client commands ---------------------------------------------------- */

static const struct my_command commands[] = {
    {MY_COM_QUIT, "COM_QUIT", MY_REPLY_NONE, 0},
    {MY_COM_INIT_DB, "COM_INIT_DB", MY_REPLY_OK, 0},
    {MY_COM_QUERY, "COM_QUERY", MY_REPLY_RESULT, 0},
    {MY_COM_FIELD_LIST, "COM_FIELD_LIST", MY_REPLY_FIELDS, 0},
    {MY_COM_CREATE_DB, "COM_CREATE_DB", MY_REPLY_OK, 0},
    {MY_COM_DROP_DB, "COM_DROP_DB", MY_REPLY_OK, 0},
    {MY_COM_REFRESH, "COM_REFRESH", MY_REPLY_OK, 0},
    {MY_COM_STATISTICS, "COM_STATISTICS", MY_REPLY_STRING, 0},
    {MY_COM_PROCESS_INFO, "COM_PROCESS_INFO", MY_REPLY_RESULT, 0},
    {MY_COM_PROCESS_KILL, "COM_PROCESS_KILL", MY_REPLY_OK, MY_CMD_ID_AT_1},
    {MY_COM_PING, "COM_PING", MY_REPLY_OK, 0},
    {MY_COM_CHANGE_USER, "COM_CHANGE_USER", MY_REPLY_AUTH, MY_CMD_RESETS},
    {MY_COM_STMT_PREPARE, "COM_STMT_PREPARE", MY_REPLY_PREPARE, 0},
    {MY_COM_STMT_EXECUTE, "COM_STMT_EXECUTE", MY_REPLY_RESULT, MY_CMD_ID_AT_1},
    {MY_COM_STMT_SEND_LONG_DATA, "COM_STMT_SEND_LONG_DATA", MY_REPLY_NONE, MY_CMD_ID_AT_1},
    {MY_COM_STMT_CLOSE, "COM_STMT_CLOSE", MY_REPLY_NONE, MY_CMD_ID_AT_1},
    {MY_COM_STMT_RESET, "COM_STMT_RESET", MY_REPLY_OK, MY_CMD_ID_AT_1},
    {MY_COM_SET_OPTION, "COM_SET_OPTION", MY_REPLY_OK, 0},
    {MY_COM_STMT_FETCH, "COM_STMT_FETCH", MY_REPLY_ROWS, MY_CMD_ID_AT_1},
    {MY_COM_RESET_CONNECTION, "COM_RESET_CONNECTION", MY_REPLY_OK, MY_CMD_RESETS},
};

const struct my_command *my_command_lookup(uint8_t code)
{
    static const struct my_command unknown = {0, "COM_UNKNOWN", MY_REPLY_UNSUPPORTED, 0};
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].code == code)
            return &commands[i];
    return &unknown;
}

int my_id_at_1_get(const uint8_t *p, size_t n, uint32_t *id)
{
    if (n < 5)
        return FERRY_BAD_MSG;
    *id = ferry_get_u32le(p + 1);
    return 0;
}

int my_id_at_1_set(uint8_t *p, size_t n, uint32_t id)
{
    if (n < 5)
        return FERRY_BAD_MSG;
    for (int i = 0; i < 4; i++)
        p[1 + i] = (uint8_t)(id >> (8 * i));
    return 0;
}

/* Skips one binary-protocol value of the given MYSQL_TYPE_*. */
static void skip_binary_value(struct my_reader *r, uint8_t type)
{
    switch (type) {
    case 0x01: my_rd_bytes(r, 1); break;                    /* TINY */
    case 0x02: case 0x0D: my_rd_bytes(r, 2); break;         /* SHORT, YEAR */
    case 0x03: case 0x09: case 0x04: my_rd_bytes(r, 4); break;  /* LONG, INT24, FLOAT */
    case 0x08: case 0x05: my_rd_bytes(r, 8); break;         /* LONGLONG, DOUBLE */
    case 0x07: case 0x0A: case 0x0B: case 0x0C:             /* TIMESTAMP, DATE, TIME, DATETIME */
        my_rd_bytes(r, my_rd_u8(r));
        break;
    case 0x06: break;                                       /* NULL */
    default: my_rd_lenenc_str(r); break;                    /* strings, decimals, blobs, JSON */
    }
}

/* Skips the query attributes that precede the text with CLIENT_QUERY_ATTRIBUTES. */
static void skip_query_attributes(struct my_reader *r)
{
    uint64_t count = my_rd_lenenc(r);
    if (my_rd_lenenc(r) != 1)   /* parameter_set_count: always 1 */
        r->bad = true;
    if (count == 0 || r->bad)
        return;
    if (count > r->left) {      /* each parameter needs at least a byte */
        r->bad = true;
        return;
    }
    struct ferry_slice nulls = my_rd_bytes(r, (size_t)((count + 7) / 8));
    if (my_rd_u8(r) != 1) {     /* new_params_bind_flag: types follow */
        r->bad = true;
        return;
    }
    struct my_reader types = *r;    /* walked again, in step with the values */
    for (uint64_t i = 0; i < count && !r->bad; i++) {
        my_rd_u16(r);           /* type and unsigned flag */
        my_rd_lenenc_str(r);    /* name */
    }
    for (uint64_t i = 0; i < count && !r->bad; i++) {
        uint8_t type = my_rd_u8(&types);
        my_rd_u8(&types);
        my_rd_lenenc_str(&types);
        if (!(nulls.p[i / 8] & (1u << (i % 8))))
            skip_binary_value(r, type);
    }
}

int my_query_text(const uint8_t *p, size_t n, uint32_t caps, struct ferry_slice *sql)
{
    struct my_reader r = my_reader_of(p, n);
    *sql = (struct ferry_slice){0};
    if (my_rd_u8(&r) != MY_COM_QUERY)
        return FERRY_BAD_MSG;
    if (caps & MY_CLIENT_QUERY_ATTRIBUTES)
        skip_query_attributes(&r);
    *sql = my_rd_rest(&r);
    return my_rd_result(&r);
}

int my_change_user_parse(const uint8_t *p, size_t n, uint32_t caps, struct my_change_user *cu)
{
    struct my_reader r = my_reader_of(p, n);
    *cu = (struct my_change_user){0};
    if (my_rd_u8(&r) != MY_COM_CHANGE_USER)
        return FERRY_BAD_MSG;
    cu->user = my_rd_cstr(&r);
    if (caps & MY_CLIENT_SECURE_CONNECTION)
        cu->auth_response = my_rd_bytes(&r, my_rd_u8(&r));
    else
        cu->auth_response = my_rd_cstr(&r);
    cu->database = my_rd_cstr(&r);
    if (r.left > 0)
        cu->charset = my_rd_u16(&r);
    if ((caps & MY_CLIENT_PLUGIN_AUTH) && r.left > 0)
        cu->auth_plugin = my_rd_cstr(&r);
    if ((caps & MY_CLIENT_CONNECT_ATTRS) && r.left > 0)
        cu->attrs = my_rd_lenenc_str(&r);
    return my_rd_result(&r);
}
