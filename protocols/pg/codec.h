/* PostgreSQL wire protocol 3.0 codec: the startup phase, message framing,
 * body decoders for the messages that carry session state, and builders for
 * the messages ferry sends itself.
 *
 * Conventions (ferry/codec.h): decoders return bytes consumed (> 0),
 * FERRY_NEED_MORE or FERRY_BAD_MSG; body decoders, which are handed one
 * complete body, return 0 or FERRY_BAD_MSG. Decoded fields are slices into
 * the caller's buffer (borrowed, not NUL-terminated); an absent optional
 * field has p == NULL. Builders append one whole message to a ferry_wbuf and
 * never fail on their own: the caller checks b->failed once at the end.
 * Pure code: no I/O, no <uv.h>; thread: any (no shared state).
 */
#ifndef FERRY_PG_CODEC_H
#define FERRY_PG_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/codec.h"
#include "ferry/wbuf.h"

#define PG_PROTOCOL(major, minor) ((uint32_t)(major) << 16 | (uint32_t)(minor))
#define PG_PROTOCOL_3_0 PG_PROTOCOL(3, 0)
#define PG_CANCEL_REQUEST_CODE 80877102u    /* 1234 << 16 | 5678 */
#define PG_SSL_REQUEST_CODE 80877103u       /* 1234 << 16 | 5679 */
#define PG_GSSENC_REQUEST_CODE 80877104u    /* 1234 << 16 | 5680 */

/* PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the most bytes a startup packet may
 * hold after its length word; it must hold at least the 4-byte version. */
#define PG_STARTUP_MAX_BODY 10000u
#define PG_HEADER_LEN 5u                    /* type byte + int32 length */

/* ---- startup phase (messages without a type byte) ---------------------- */

enum pg_startup_kind {
    PG_STARTUP_SSL,             /* SSLRequest: answer 'S' or 'N' */
    PG_STARTUP_GSSENC,          /* GSSENCRequest: answer 'N' */
    PG_STARTUP_CANCEL,          /* CancelRequest: cancel_pid, cancel_key */
    PG_STARTUP_MESSAGE,         /* StartupMessage 3.x: version, parameters */
    PG_STARTUP_BAD_VERSION,     /* a major version other than 3: version set;
                                   answer FATAL 0A000 "unsupported frontend protocol" */
};

struct pg_startup {
    enum pg_startup_kind kind;
    uint32_t version;                   /* MESSAGE, BAD_VERSION: major << 16 | minor */
    uint32_t cancel_pid;                /* CANCEL */
    uint32_t cancel_key;                /* CANCEL */
    struct ferry_slice user;            /* MESSAGE: well-known parameters (p == NULL if absent) */
    struct ferry_slice database;
    struct ferry_slice options;
    struct ferry_slice application_name;
    struct ferry_slice replication;
    struct ferry_slice params;          /* MESSAGE: every "name\0value\0" pair, validated;
                                           walk it with pg_param_next() */
    unsigned nparams;                   /* MESSAGE: number of pairs in params */
    unsigned nprotocol_options;         /* MESSAGE: pairs whose name starts "_pq_." */
};

/* Decodes the first message a client sends. Lengths outside 8..10004 (the
 * length word counts itself), wrong sizes for the fixed requests, a parameter
 * list that is not NUL-terminated pairs ending in one more NUL, or an empty
 * parameter name give FERRY_BAD_MSG. The "user" parameter is not required
 * here: its absence is an authentication error (28000) for the caller. */
int pg_decode_startup(const uint8_t *buf, size_t len, struct pg_startup *out);

/* True when a StartupMessage needs a NegotiateProtocolVersion answer: it asked
 * for a minor version above 0 or sent "_pq_." protocol options. */
bool pg_startup_needs_negotiation(const struct pg_startup *s);

/* Walks a validated "name\0value\0..." list (pg_startup.params): stores the
 * next pair, advances *list; false at the end. */
bool pg_param_next(struct ferry_slice *list, struct ferry_slice *name, struct ferry_slice *value);

/* True when slice s holds exactly the C string z. */
bool pg_slice_eq(struct ferry_slice s, const char *z);

/* ---- framing of regular messages --------------------------------------- */

/* Reads the 5-byte header of the message at buf: *type and *total (type byte
 * + length, the whole message size; set as soon as the header is present, so
 * a caller may stream a large message on). Returns *total when the whole
 * message is in buf, FERRY_NEED_MORE when it is not yet, FERRY_BAD_MSG when
 * the length is below 4 or above max_len (a length counts itself; max_len is
 * capped at INT32_MAX - 1). */
int pg_frame(const uint8_t *buf, size_t len, uint32_t max_len, uint8_t *type, uint32_t *total);

/* ---- body decoders (body = the bytes after the length word) ------------ */

/* ReadyForQuery 'Z': *status = 'I' idle, 'T' in a transaction, 'E' failed. */
int pg_decode_ready(const uint8_t *body, size_t n, char *status);

struct pg_parameter_status {            /* ParameterStatus 'S' */
    struct ferry_slice name;
    struct ferry_slice value;
};
int pg_decode_parameter_status(const uint8_t *body, size_t n, struct pg_parameter_status *out);

struct pg_backend_key {                 /* BackendKeyData 'K'; CancelRequest */
    uint32_t pid;
    uint32_t key;
};
int pg_decode_backend_key(const uint8_t *body, size_t n, struct pg_backend_key *out);

/* ErrorResponse 'E' / NoticeResponse 'N'. Every field is a slice; fields of
 * unknown codes are skipped as the protocol asks. S, C and M are required
 * ("always present"); a field list must end with its terminating NUL. */
#define PG_ERROR_FIELD_CODES "SVCMDHPpqWstcdnFLR"
struct pg_error_fields {
    struct ferry_slice field[sizeof(PG_ERROR_FIELD_CODES) - 1]; /* by position in PG_ERROR_FIELD_CODES */
};
int pg_decode_error(const uint8_t *body, size_t n, struct pg_error_fields *out);
/* The field with that code ('S' severity, 'C' SQLSTATE, 'M' message, ...);
 * p == NULL if absent or not a known code. */
struct ferry_slice pg_error_field(const struct pg_error_fields *e, char code);

enum pg_auth_code {
    PG_AUTH_OK = 0,
    PG_AUTH_KERBEROS_V5 = 2,
    PG_AUTH_CLEARTEXT = 3,
    PG_AUTH_MD5 = 5,
    PG_AUTH_GSS = 7,
    PG_AUTH_GSS_CONTINUE = 8,
    PG_AUTH_SSPI = 9,
    PG_AUTH_SASL = 10,
    PG_AUTH_SASL_CONTINUE = 11,
    PG_AUTH_SASL_FINAL = 12,
};
struct pg_auth_request {                /* Authentication* 'R' */
    uint32_t code;                      /* enum pg_auth_code */
    uint8_t md5_salt[4];                /* PG_AUTH_MD5 */
    struct ferry_slice data;            /* SASL: mechanism list (walk with pg_cstr_next());
                                           SASL_CONTINUE/FINAL, GSS_CONTINUE: the data */
};
int pg_decode_auth(const uint8_t *body, size_t n, struct pg_auth_request *out);
/* Walks a validated list of NUL-terminated strings; false at the end. */
bool pg_cstr_next(struct ferry_slice *list, struct ferry_slice *item);

struct pg_parse {                       /* Parse 'P' (frontend) */
    struct ferry_slice name;            /* "" = the unnamed statement */
    struct ferry_slice query;
    uint16_t nparam_types;
    const uint8_t *param_types;         /* nparam_types big-endian int32 OIDs (0 = unspecified) */
};
int pg_decode_parse(const uint8_t *body, size_t n, struct pg_parse *out);
/* OID number i (< nparam_types) of a decoded Parse. */
uint32_t pg_parse_param_type(const struct pg_parse *p, unsigned i);

struct pg_bind {                        /* Bind 'B' (frontend); the rest is validated */
    struct ferry_slice portal;
    struct ferry_slice statement;
    uint16_t nparams;
};
int pg_decode_bind(const uint8_t *body, size_t n, struct pg_bind *out);

struct pg_target {                      /* Close 'C' / Describe 'D' (frontend) */
    char kind;                          /* 'S' statement or 'P' portal */
    struct ferry_slice name;
};
int pg_decode_target(const uint8_t *body, size_t n, struct pg_target *out);

/* Query 'Q' and PasswordMessage 'p': one NUL-terminated string filling the body. */
int pg_decode_cstr_body(const uint8_t *body, size_t n, struct ferry_slice *out);

struct pg_sasl_initial {                /* SASLInitialResponse 'p' */
    struct ferry_slice mechanism;
    struct ferry_slice data;            /* p == NULL when the client sent length -1 */
};
int pg_decode_sasl_initial(const uint8_t *body, size_t n, struct pg_sasl_initial *out);
/* SASLResponse 'p' is opaque data: the body itself. */

/* ---- builders ----------------------------------------------------------- */

/* ErrorResponse from ferry: S and V = severity ("ERROR", "FATAL"), C =
 * sqlstate (5 characters), M = "ferry: " + message. */
void pg_build_error(struct ferry_wbuf *b, const char *severity, const char *sqlstate,
                    const char *message);
void pg_build_ready(struct ferry_wbuf *b, char status);
void pg_build_command_complete(struct ferry_wbuf *b, const char *tag);
void pg_build_parameter_status(struct ferry_wbuf *b, const char *name, const char *value);
void pg_build_backend_key(struct ferry_wbuf *b, uint32_t pid, uint32_t key);
void pg_build_auth_ok(struct ferry_wbuf *b);
void pg_build_auth_cleartext(struct ferry_wbuf *b);
void pg_build_auth_md5(struct ferry_wbuf *b, const uint8_t salt[4]);
void pg_build_auth_sasl(struct ferry_wbuf *b, const char *const *mechanisms, size_t n);
void pg_build_auth_sasl_continue(struct ferry_wbuf *b, const void *data, size_t n);
void pg_build_auth_sasl_final(struct ferry_wbuf *b, const void *data, size_t n);
/* NegotiateProtocolVersion 'v': the newest minor version ferry supports and
 * the protocol options ("_pq_." names) it did not recognize. */
void pg_build_negotiate_version(struct ferry_wbuf *b, uint32_t newest_minor,
                                const struct ferry_slice *unrecognized, size_t n);
/* StartupMessage 3.0 from nparams (name, value) pairs: kv[2i], kv[2i + 1]. */
void pg_build_startup(struct ferry_wbuf *b, const char *const *kv, size_t nparams);
void pg_build_ssl_request(struct ferry_wbuf *b);
void pg_build_cancel_request(struct ferry_wbuf *b, uint32_t pid, uint32_t key);
void pg_build_query(struct ferry_wbuf *b, const char *sql);
/* Parse with ntypes parameter type OIDs (to re-create a prepared statement). */
void pg_build_parse(struct ferry_wbuf *b, const char *name, const char *query,
                    const uint32_t *types, uint16_t ntypes);
void pg_build_sync(struct ferry_wbuf *b);
void pg_build_terminate(struct ferry_wbuf *b);
void pg_build_password(struct ferry_wbuf *b, const char *password);
void pg_build_sasl_initial(struct ferry_wbuf *b, const char *mechanism, const void *data, size_t n);
void pg_build_sasl_response(struct ferry_wbuf *b, const void *data, size_t n);

#endif
