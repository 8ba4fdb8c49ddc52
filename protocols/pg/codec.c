/* PostgreSQL protocol 3.0 codec: startup packets, frame headers, the bodies
 * of the messages that carry session state, and builders for what ferry
 * sends. Every decoder reads through one bounds-checked cursor with a sticky
 * failure flag, so a body is valid only if it was consumed exactly.
 */
#include "codec.h"

#include <string.h>

/* A bounds-checked reader over one body: any read past the end sets bad and
 * yields zeros/empty slices; the caller checks once with rd_finish(). */
struct rd {
    const uint8_t *p;   /* buffer view: next unread byte */
    size_t n;           /* bytes left */
    bool bad;           /* sticky: a read did not fit */
};

static const uint8_t *rd_take(struct rd *r, size_t k)
{
    if (r->bad || k > r->n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *at = r->p;
    r->p += k;
    r->n -= k;
    return at;
}

static uint8_t rd_u8(struct rd *r)
{
    const uint8_t *at = rd_take(r, 1);
    return at ? at[0] : 0;
}

static uint16_t rd_u16(struct rd *r)
{
    const uint8_t *at = rd_take(r, 2);
    return at ? ferry_get_u16be(at) : 0;
}

static uint32_t rd_u32(struct rd *r)
{
    const uint8_t *at = rd_take(r, 4);
    return at ? ferry_get_u32be(at) : 0;
}

static struct ferry_slice rd_bytes(struct rd *r, size_t k)
{
    const uint8_t *at = rd_take(r, k);
    return (struct ferry_slice){at, at ? k : 0};
}

/* A NUL-terminated string; the slice excludes the NUL. */
static struct ferry_slice rd_cstr(struct rd *r)
{
    const uint8_t *nul = r->bad || r->n == 0 ? NULL : memchr(r->p, 0, r->n);
    if (!nul) {
        r->bad = true;
        return (struct ferry_slice){NULL, 0};
    }
    struct ferry_slice s = {r->p, (size_t)(nul - r->p)};
    rd_take(r, s.len + 1);
    return s;
}

/* 0 when every read fitted and the body was consumed exactly. */
static int rd_finish(const struct rd *r) { return r->bad || r->n ? FERRY_BAD_MSG : 0; }

bool pg_slice_eq(struct ferry_slice s, const char *z)
{
    size_t n = strlen(z);
    return s.p && s.len == n && memcmp(s.p, z, n) == 0;
}

bool pg_cstr_next(struct ferry_slice *list, struct ferry_slice *item)
{
    if (!list->p || list->len == 0)
        return false;
    struct rd r = {list->p, list->len, false};
    *item = rd_cstr(&r);
    list->p = r.p;
    list->len = r.n;
    return !r.bad;
}

bool pg_param_next(struct ferry_slice *list, struct ferry_slice *name, struct ferry_slice *value)
{
    return pg_cstr_next(list, name) && pg_cstr_next(list, value);
}

/* ---- startup ---------------------------------------------------------- */

static void note_startup_param(struct pg_startup *s, struct ferry_slice name, struct ferry_slice value)
{
    static const struct {
        const char *name;
        size_t off;
    } known[] = {
        {"user", offsetof(struct pg_startup, user)},
        {"database", offsetof(struct pg_startup, database)},
        {"options", offsetof(struct pg_startup, options)},
        {"application_name", offsetof(struct pg_startup, application_name)},
        {"replication", offsetof(struct pg_startup, replication)},
    };
    s->nparams++;
    if (name.len >= 5 && memcmp(name.p, "_pq_.", 5) == 0)
        s->nprotocol_options++;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (pg_slice_eq(name, known[i].name))
            *(struct ferry_slice *)((char *)s + known[i].off) = value;
}

/* The parameter pairs of a StartupMessage: non-empty names, each with a
 * value, and one final NUL as the very last byte (as PostgreSQL insists). */
static int decode_startup_params(struct rd *r, struct pg_startup *s)
{
    s->params = (struct ferry_slice){r->p, 0};
    for (;;) {
        struct ferry_slice name = rd_cstr(r);
        if (r->bad)
            return FERRY_BAD_MSG;
        if (name.len == 0)
            break;
        struct ferry_slice value = rd_cstr(r);
        if (r->bad)
            return FERRY_BAD_MSG;
        note_startup_param(s, name, value);
    }
    s->params.len = (size_t)(r->p - s->params.p) - 1;
    return rd_finish(r);
}

static int decode_startup_body(struct rd *r, struct pg_startup *s)
{
    uint32_t code = rd_u32(r);
    switch (code) {
    case PG_SSL_REQUEST_CODE:
        s->kind = PG_STARTUP_SSL;
        return rd_finish(r);
    case PG_GSSENC_REQUEST_CODE:
        s->kind = PG_STARTUP_GSSENC;
        return rd_finish(r);
    case PG_CANCEL_REQUEST_CODE:
        s->kind = PG_STARTUP_CANCEL;
        s->cancel_pid = rd_u32(r);
        s->cancel_key = rd_u32(r);
        return rd_finish(r);
    }
    if (code >> 16 == 1234)
        return FERRY_BAD_MSG;           /* an unknown special request */
    s->version = code;
    if (code >> 16 != 3) {
        s->kind = PG_STARTUP_BAD_VERSION;
        return 0;
    }
    s->kind = PG_STARTUP_MESSAGE;
    return decode_startup_params(r, s);
}

int pg_decode_startup(const uint8_t *buf, size_t len, struct pg_startup *out)
{
    if (len < 4)
        return FERRY_NEED_MORE;
    uint32_t total = ferry_get_u32be(buf);
    if (total < 8 || total - 4 > PG_STARTUP_MAX_BODY)
        return FERRY_BAD_MSG;
    if (len < total)
        return FERRY_NEED_MORE;
    memset(out, 0, sizeof *out);
    struct rd r = {buf + 4, total - 4, false};
    int rc = decode_startup_body(&r, out);
    return rc < 0 ? rc : (int)total;
}

bool pg_startup_needs_negotiation(const struct pg_startup *s)
{
    return s->kind == PG_STARTUP_MESSAGE && ((s->version & 0xffff) > 0 || s->nprotocol_options > 0);
}

/* ---- framing ------------------------------------------------------------ */

int pg_frame(const uint8_t *buf, size_t len, uint32_t max_len, uint8_t *type, uint32_t *total)
{
    *type = len ? buf[0] : 0;
    *total = 0;
    if (len < PG_HEADER_LEN)
        return FERRY_NEED_MORE;
    uint32_t mlen = ferry_get_u32be(buf + 1);
    if (max_len > INT32_MAX - 1)
        max_len = INT32_MAX - 1;
    if (mlen < 4 || mlen > max_len)
        return FERRY_BAD_MSG;
    *total = mlen + 1;
    return len >= *total ? (int)*total : FERRY_NEED_MORE;
}

/* ---- body decoders -------------------------------------------------------- */

int pg_decode_ready(const uint8_t *body, size_t n, char *status)
{
    if (n != 1 || (body[0] != 'I' && body[0] != 'T' && body[0] != 'E'))
        return FERRY_BAD_MSG;
    *status = (char)body[0];
    return 0;
}

int pg_decode_parameter_status(const uint8_t *body, size_t n, struct pg_parameter_status *out)
{
    struct rd r = {body, n, false};
    out->name = rd_cstr(&r);
    out->value = rd_cstr(&r);
    return rd_finish(&r);
}

int pg_decode_backend_key(const uint8_t *body, size_t n, struct pg_backend_key *out)
{
    struct rd r = {body, n, false};
    out->pid = rd_u32(&r);
    out->key = rd_u32(&r);
    return rd_finish(&r);
}

static int error_field_index(char code)
{
    const char *at = code ? strchr(PG_ERROR_FIELD_CODES, code) : NULL;
    return at ? (int)(at - PG_ERROR_FIELD_CODES) : -1;
}

struct ferry_slice pg_error_field(const struct pg_error_fields *e, char code)
{
    int i = error_field_index(code);
    return i < 0 ? (struct ferry_slice){NULL, 0} : e->field[i];
}

int pg_decode_error(const uint8_t *body, size_t n, struct pg_error_fields *out)
{
    memset(out, 0, sizeof *out);
    struct rd r = {body, n, false};
    for (uint8_t code; (code = rd_u8(&r)) != 0;) {
        struct ferry_slice value = rd_cstr(&r);
        int i = error_field_index((char)code);
        if (i >= 0)
            out->field[i] = value;
    }
    if (rd_finish(&r) < 0 || !pg_error_field(out, 'S').p || !pg_error_field(out, 'C').p ||
        !pg_error_field(out, 'M').p)
        return FERRY_BAD_MSG;
    return 0;
}

/* A SASL mechanism list: at least one non-empty name, then an empty one. */
static struct ferry_slice rd_mechanisms(struct rd *r)
{
    struct ferry_slice list = {r->p, 0};
    unsigned count = 0;
    for (struct ferry_slice m = rd_cstr(r); !r->bad && m.len; m = rd_cstr(r))
        count++;
    if (count == 0)
        r->bad = true;
    if (!r->bad)
        list.len = (size_t)(r->p - list.p) - 1;
    return list;
}

int pg_decode_auth(const uint8_t *body, size_t n, struct pg_auth_request *out)
{
    memset(out, 0, sizeof *out);
    struct rd r = {body, n, false};
    out->code = rd_u32(&r);
    switch (out->code) {
    case PG_AUTH_OK:
    case PG_AUTH_KERBEROS_V5:
    case PG_AUTH_CLEARTEXT:
    case PG_AUTH_GSS:
    case PG_AUTH_SSPI:
        break;
    case PG_AUTH_MD5: {
        const uint8_t *salt = rd_take(&r, 4);
        if (salt)
            memcpy(out->md5_salt, salt, 4);
        break;
    }
    case PG_AUTH_SASL:
        out->data = rd_mechanisms(&r);
        break;
    case PG_AUTH_GSS_CONTINUE:
    case PG_AUTH_SASL_CONTINUE:
    case PG_AUTH_SASL_FINAL:
        out->data = rd_bytes(&r, r.n);
        break;
    default:
        return FERRY_BAD_MSG;
    }
    return rd_finish(&r);
}

int pg_decode_parse(const uint8_t *body, size_t n, struct pg_parse *out)
{
    struct rd r = {body, n, false};
    out->name = rd_cstr(&r);
    out->query = rd_cstr(&r);
    out->nparam_types = rd_u16(&r);
    out->param_types = rd_take(&r, (size_t)out->nparam_types * 4);
    return rd_finish(&r);
}

uint32_t pg_parse_param_type(const struct pg_parse *p, unsigned i)
{
    return ferry_get_u32be(p->param_types + (size_t)i * 4);
}

/* Bind's tail: format codes, parameter values (int32 length, -1 = NULL),
 * result format codes. Only the structure is checked. */
static void rd_bind_values(struct rd *r, uint16_t *nparams)
{
    rd_take(r, (size_t)rd_u16(r) * 2);
    *nparams = rd_u16(r);
    for (unsigned i = 0; i < *nparams && !r->bad; i++) {
        int32_t vlen = (int32_t)rd_u32(r);
        if (vlen < -1)
            r->bad = true;
        else if (vlen > 0)
            rd_take(r, (size_t)vlen);
    }
    rd_take(r, (size_t)rd_u16(r) * 2);
}

int pg_decode_bind(const uint8_t *body, size_t n, struct pg_bind *out)
{
    struct rd r = {body, n, false};
    out->portal = rd_cstr(&r);
    out->statement = rd_cstr(&r);
    rd_bind_values(&r, &out->nparams);
    return rd_finish(&r);
}

int pg_decode_target(const uint8_t *body, size_t n, struct pg_target *out)
{
    struct rd r = {body, n, false};
    out->kind = (char)rd_u8(&r);
    out->name = rd_cstr(&r);
    if (out->kind != 'S' && out->kind != 'P')
        return FERRY_BAD_MSG;
    return rd_finish(&r);
}

int pg_decode_cstr_body(const uint8_t *body, size_t n, struct ferry_slice *out)
{
    struct rd r = {body, n, false};
    *out = rd_cstr(&r);
    return rd_finish(&r);
}

int pg_decode_sasl_initial(const uint8_t *body, size_t n, struct pg_sasl_initial *out)
{
    struct rd r = {body, n, false};
    out->mechanism = rd_cstr(&r);
    int32_t dlen = (int32_t)rd_u32(&r);
    if (dlen < -1)
        return FERRY_BAD_MSG;
    out->data = dlen == -1 ? (struct ferry_slice){NULL, 0} : rd_bytes(&r, (size_t)dlen);
    return rd_finish(&r);
}

/* ---- builders ------------------------------------------------------------- */

/* Starts a message: its type byte (none for startup-phase packets) and a
 * length word to patch; returns where the length word is. */
static size_t msg_begin(struct ferry_wbuf *b, uint8_t type)
{
    if (type)
        ferry_wbuf_u8(b, type);
    size_t at = b->len;
    ferry_wbuf_u32be(b, 0);
    return at;
}

static void msg_end(struct ferry_wbuf *b, size_t at) { ferry_wbuf_patch_u32be(b, at, (uint32_t)(b->len - at)); }

/* A message whose body is exactly the given bytes. */
static void build_raw(struct ferry_wbuf *b, uint8_t type, const void *body, size_t n)
{
    size_t at = msg_begin(b, type);
    ferry_wbuf_put(b, body, n);
    msg_end(b, at);
}

static void build_cstr(struct ferry_wbuf *b, uint8_t type, const char *s)
{
    build_raw(b, type, s, strlen(s) + 1);
}

void pg_build_error(struct ferry_wbuf *b, const char *severity, const char *sqlstate,
                    const char *message)
{
    size_t at = msg_begin(b, 'E');
    ferry_wbuf_u8(b, 'S');
    ferry_wbuf_cstr(b, severity);
    ferry_wbuf_u8(b, 'V');
    ferry_wbuf_cstr(b, severity);
    ferry_wbuf_u8(b, 'C');
    ferry_wbuf_cstr(b, sqlstate);
    ferry_wbuf_u8(b, 'M');
    ferry_wbuf_put(b, "ferry: ", 7);
    ferry_wbuf_cstr(b, message);
    ferry_wbuf_u8(b, 0);
    msg_end(b, at);
}

void pg_build_command_complete(struct ferry_wbuf *b, const char *tag) { build_cstr(b, 'C', tag); }

void pg_build_ready(struct ferry_wbuf *b, char status)
{
    uint8_t s = (uint8_t)status;
    build_raw(b, 'Z', &s, 1);
}

void pg_build_parameter_status(struct ferry_wbuf *b, const char *name, const char *value)
{
    size_t at = msg_begin(b, 'S');
    ferry_wbuf_cstr(b, name);
    ferry_wbuf_cstr(b, value);
    msg_end(b, at);
}

void pg_build_backend_key(struct ferry_wbuf *b, uint32_t pid, uint32_t key)
{
    size_t at = msg_begin(b, 'K');
    ferry_wbuf_u32be(b, pid);
    ferry_wbuf_u32be(b, key);
    msg_end(b, at);
}

static void build_auth(struct ferry_wbuf *b, uint32_t code, const void *data, size_t n)
{
    size_t at = msg_begin(b, 'R');
    ferry_wbuf_u32be(b, code);
    ferry_wbuf_put(b, data, n);
    msg_end(b, at);
}

void pg_build_auth_ok(struct ferry_wbuf *b) { build_auth(b, PG_AUTH_OK, NULL, 0); }
void pg_build_auth_cleartext(struct ferry_wbuf *b) { build_auth(b, PG_AUTH_CLEARTEXT, NULL, 0); }
void pg_build_auth_md5(struct ferry_wbuf *b, const uint8_t salt[4]) { build_auth(b, PG_AUTH_MD5, salt, 4); }

void pg_build_auth_sasl(struct ferry_wbuf *b, const char *const *mechanisms, size_t n)
{
    size_t at = msg_begin(b, 'R');
    ferry_wbuf_u32be(b, PG_AUTH_SASL);
    for (size_t i = 0; i < n; i++)
        ferry_wbuf_cstr(b, mechanisms[i]);
    ferry_wbuf_u8(b, 0);
    msg_end(b, at);
}

void pg_build_auth_sasl_continue(struct ferry_wbuf *b, const void *data, size_t n)
{
    build_auth(b, PG_AUTH_SASL_CONTINUE, data, n);
}

void pg_build_auth_sasl_final(struct ferry_wbuf *b, const void *data, size_t n)
{
    build_auth(b, PG_AUTH_SASL_FINAL, data, n);
}

void pg_build_negotiate_version(struct ferry_wbuf *b, uint32_t newest_minor,
                                const struct ferry_slice *unrecognized, size_t n)
{
    size_t at = msg_begin(b, 'v');
    ferry_wbuf_u32be(b, newest_minor);
    ferry_wbuf_u32be(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        ferry_wbuf_put(b, unrecognized[i].p, unrecognized[i].len);
        ferry_wbuf_u8(b, 0);
    }
    msg_end(b, at);
}

void pg_build_startup(struct ferry_wbuf *b, const char *const *kv, size_t nparams)
{
    size_t at = msg_begin(b, 0);
    ferry_wbuf_u32be(b, PG_PROTOCOL_3_0);
    for (size_t i = 0; i < 2 * nparams; i++)
        ferry_wbuf_cstr(b, kv[i]);
    ferry_wbuf_u8(b, 0);
    msg_end(b, at);
}

void pg_build_ssl_request(struct ferry_wbuf *b)
{
    size_t at = msg_begin(b, 0);
    ferry_wbuf_u32be(b, PG_SSL_REQUEST_CODE);
    msg_end(b, at);
}

void pg_build_cancel_request(struct ferry_wbuf *b, uint32_t pid, uint32_t key)
{
    size_t at = msg_begin(b, 0);
    ferry_wbuf_u32be(b, PG_CANCEL_REQUEST_CODE);
    ferry_wbuf_u32be(b, pid);
    ferry_wbuf_u32be(b, key);
    msg_end(b, at);
}

void pg_build_query(struct ferry_wbuf *b, const char *sql) { build_cstr(b, 'Q', sql); }

void pg_build_parse(struct ferry_wbuf *b, const char *name, const char *query,
                    const uint32_t *types, uint16_t ntypes)
{
    size_t at = msg_begin(b, 'P');
    ferry_wbuf_cstr(b, name);
    ferry_wbuf_cstr(b, query);
    ferry_wbuf_u16be(b, ntypes);
    for (unsigned i = 0; i < ntypes; i++)
        ferry_wbuf_u32be(b, types[i]);
    msg_end(b, at);
}

void pg_build_sync(struct ferry_wbuf *b) { build_raw(b, 'S', NULL, 0); }
void pg_build_terminate(struct ferry_wbuf *b) { build_raw(b, 'X', NULL, 0); }
void pg_build_password(struct ferry_wbuf *b, const char *password) { build_cstr(b, 'p', password); }

void pg_build_sasl_initial(struct ferry_wbuf *b, const char *mechanism, const void *data, size_t n)
{
    size_t at = msg_begin(b, 'p');
    ferry_wbuf_cstr(b, mechanism);
    ferry_wbuf_u32be(b, (uint32_t)n);
    ferry_wbuf_put(b, data, n);
    msg_end(b, at);
}

void pg_build_sasl_response(struct ferry_wbuf *b, const void *data, size_t n) { build_raw(b, 'p', data, n); }
