/* MySQL client/server protocol codec (the MySQL 8 protocol that Aurora
 * MySQL speaks; MariaDB servers are accepted as backends). Pure: no I/O, no
 * <uv.h>. Framing functions follow ferry/codec.h (bytes consumed,
 * FERRY_NEED_MORE, FERRY_BAD_MSG); body parsers take one complete payload
 * (header stripped) and return 0 or FERRY_BAD_MSG. Decoded fields are slices
 * into the caller's buffer. Builders append one whole packet (header
 * included) to a struct ferry_wbuf and leave failures sticky in it.
 * Thread: any; no global state.
 */
#ifndef FERRY_MY_CODEC_H
#define FERRY_MY_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/codec.h"
#include "ferry/wbuf.h"

enum {
    MY_HDR_LEN = 4,                 /* 3-byte length + sequence id */
    MY_MAX_PHYSICAL = 0xFFFFFF,     /* a payload this long continues in the next packet */
    MY_SCRAMBLE_LEN = 20,           /* auth-plugin-data of Handshake v10 */
    MY_LOGICAL_LIMIT = 1 << 30,     /* ceiling for any configured maximum (= MySQL's) */
};

/* Capability flags (Handshake v10 / HandshakeResponse41). */
#define MY_CLIENT_LONG_PASSWORD        (1u << 0)    /* MariaDB reads it as "CLIENT_MYSQL" */
#define MY_CLIENT_FOUND_ROWS           (1u << 1)
#define MY_CLIENT_LONG_FLAG            (1u << 2)
#define MY_CLIENT_CONNECT_WITH_DB      (1u << 3)
#define MY_CLIENT_NO_SCHEMA            (1u << 4)
#define MY_CLIENT_COMPRESS             (1u << 5)
#define MY_CLIENT_ODBC                 (1u << 6)
#define MY_CLIENT_LOCAL_FILES          (1u << 7)
#define MY_CLIENT_IGNORE_SPACE         (1u << 8)
#define MY_CLIENT_PROTOCOL_41          (1u << 9)
#define MY_CLIENT_INTERACTIVE          (1u << 10)
#define MY_CLIENT_SSL                  (1u << 11)
#define MY_CLIENT_IGNORE_SIGPIPE       (1u << 12)
#define MY_CLIENT_TRANSACTIONS         (1u << 13)
#define MY_CLIENT_RESERVED             (1u << 14)
#define MY_CLIENT_SECURE_CONNECTION    (1u << 15)
#define MY_CLIENT_MULTI_STATEMENTS     (1u << 16)
#define MY_CLIENT_MULTI_RESULTS        (1u << 17)
#define MY_CLIENT_PS_MULTI_RESULTS     (1u << 18)
#define MY_CLIENT_PLUGIN_AUTH          (1u << 19)
#define MY_CLIENT_CONNECT_ATTRS        (1u << 20)
#define MY_CLIENT_PLUGIN_AUTH_LENENC   (1u << 21)   /* CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA */
#define MY_CLIENT_CAN_HANDLE_EXPIRED   (1u << 22)
#define MY_CLIENT_SESSION_TRACK        (1u << 23)
#define MY_CLIENT_DEPRECATE_EOF        (1u << 24)
#define MY_CLIENT_OPTIONAL_METADATA    (1u << 25)
#define MY_CLIENT_ZSTD_COMPRESSION     (1u << 26)
#define MY_CLIENT_QUERY_ATTRIBUTES     (1u << 27)
#define MY_CLIENT_MULTI_FACTOR_AUTH    (1u << 28)
#define MY_CLIENT_CAPABILITY_EXTENSION (1u << 29)
#define MY_CLIENT_SSL_VERIFY_SERVER    (1u << 30)
#define MY_CLIENT_REMEMBER_OPTIONS     (1u << 31)

/* Server status flags (OK and EOF packets). */
#define MY_STATUS_IN_TRANS             0x0001
#define MY_STATUS_AUTOCOMMIT           0x0002
#define MY_STATUS_MORE_RESULTS         0x0008
#define MY_STATUS_CURSOR_EXISTS        0x0040
#define MY_STATUS_LAST_ROW_SENT        0x0080
#define MY_STATUS_IN_TRANS_READONLY    0x2000
#define MY_STATUS_SESSION_STATE_CHANGED 0x4000

/* COM_STMT_EXECUTE flags. */
#define MY_CURSOR_TYPE_READ_ONLY       0x01

/* First payload byte of server responses. */
enum { MY_OK = 0x00, MY_AUTH_MORE_DATA = 0x01, MY_LOCAL_INFILE = 0xFB, MY_EOF = 0xFE, MY_ERR = 0xFF };

/* Error numbers and SQLSTATEs ferry uses for its own ERR packets. */
#define MY_ER_CON_COUNT_ERROR     1040   /* "08004" too many connections */
#define MY_ER_HANDSHAKE_ERROR     1043   /* "08S01" bad handshake */
#define MY_ER_ACCESS_DENIED       1045   /* "28000" */
#define MY_ER_UNKNOWN_COM_ERROR   1047   /* "08S01" */
#define MY_ER_SERVER_SHUTDOWN     1053   /* "08S01" */
#define MY_ER_NO_SUCH_THREAD      1094   /* "HY000" KILL of an unknown id */
#define MY_ER_NET_PACKET_TOO_LARGE 1153  /* "08S01" */
#define MY_ER_UNKNOWN_STMT_HANDLER 1243  /* "HY000" */
#define MY_ER_MALFORMED_PACKET    1835   /* "HY000" */

/* ---- framing ------------------------------------------------------------ */

struct my_header {
    uint32_t len;               /* payload bytes in this physical packet, 0..0xFFFFFF */
    uint8_t seq;                /* sequence id */
};

/* Reads the 4-byte header at p[0..n). Returns MY_HDR_LEN or FERRY_NEED_MORE. */
int my_header_decode(const uint8_t *p, size_t n, struct my_header *h);

/* Writes a header (len must be <= MY_MAX_PHYSICAL). */
void my_header_encode(uint8_t out[MY_HDR_LEN], uint32_t len, uint8_t seq);

/* One physical packet: returns MY_HDR_LEN + len, or FERRY_NEED_MORE. Never
 * FERRY_BAD_MSG: every length is valid on its own (see my_reasm for limits).
 * *payload points into p. */
int my_packet_decode(const uint8_t *p, size_t n, struct my_header *h, struct ferry_slice *payload);

/* Bookkeeping for logical payloads split across packets: a physical packet
 * of exactly 0xFFFFFF bytes continues in the next one (possibly empty).
 * Fed header by header, so a session can relay fragments as they arrive
 * without buffering the whole payload. */
struct my_reasm {
    size_t max;                 /* largest logical payload allowed, bytes */
    size_t total;               /* payload bytes of the current logical packet so far */
    uint8_t next_seq;           /* sequence id the next fragment must carry */
    bool continuing;            /* inside a logical packet (last fragment was 0xFFFFFF) */
};

/* max: 0 or above MY_LOGICAL_LIMIT means MY_LOGICAL_LIMIT. */
void my_reasm_init(struct my_reasm *r, size_t max);

/* Accounts one physical header. Returns 1 when this packet ends the logical
 * payload (the reassembler is then ready for the next one), 0 when more
 * fragments follow, FERRY_BAD_MSG on a sequence gap or a payload past max. */
int my_reasm_feed(struct my_reasm *r, const struct my_header *h);

/* One logical packet as found in a contiguous buffer. */
struct my_logical {
    uint8_t first_seq;          /* sequence id of the first fragment */
    uint8_t last_seq;           /* of the last fragment: the next packet follows it */
    uint32_t fragments;         /* physical packets, >= 1 */
    size_t len;                 /* payload bytes, headers excluded */
    struct ferry_slice payload; /* view: the whole payload if fragments == 1, else the first fragment */
};

/* Finds one whole logical packet at p[0..n) without copying. Returns the
 * bytes it spans (headers included), FERRY_NEED_MORE, or FERRY_BAD_MSG (see
 * my_reasm_feed; max as in my_reasm_init). */
int my_logical_decode(const uint8_t *p, size_t n, size_t max, struct my_logical *out);

/* Copies the payload of a multi-fragment logical packet found at p by
 * my_logical_decode into dst (lp->len bytes, caller-owned). */
void my_logical_gather(const uint8_t *p, const struct my_logical *lp, uint8_t *dst);

/* Starts a packet in b (placeholder header); returns its offset for
 * my_packet_end. Builders below use this pair. */
size_t my_packet_begin(struct ferry_wbuf *b, uint8_t seq);
/* Fills in the length; a payload over MY_MAX_PHYSICAL marks b failed. */
void my_packet_end(struct ferry_wbuf *b, size_t start);

/* ---- length-encoded integers and strings -------------------------------- */

/* Reads a length-encoded integer. Returns bytes used (1, 3, 4 or 9),
 * FERRY_NEED_MORE if truncated, FERRY_BAD_MSG for the 0xFF prefix. The NULL
 * marker 0xFB returns 1 with *is_null set (and *v = 0). */
int my_lenenc_decode(const uint8_t *p, size_t n, uint64_t *v, bool *is_null);

/* Reads a length-encoded string (NULL as above, empty slice). Returns bytes
 * used, FERRY_NEED_MORE if truncated, FERRY_BAD_MSG for 0xFF or a length
 * above MY_LOGICAL_LIMIT (which no packet can hold). */
int my_lenenc_str_decode(const uint8_t *p, size_t n, struct ferry_slice *s, bool *is_null);

void my_put_lenenc(struct ferry_wbuf *b, uint64_t v);
void my_put_lenenc_str(struct ferry_wbuf *b, const void *p, size_t n);

/* ---- connection phase --------------------------------------------------- */

/* Handshake v10 (server greeting). */
struct my_handshake {
    struct ferry_slice server_version;  /* view, without NUL */
    uint32_t conn_id;
    uint8_t scramble[32];       /* auth-plugin-data, parts 1 and 2 joined (copied) */
    size_t scramble_len;        /* 20 from MySQL/MariaDB; 8 from pre-4.1 servers */
    uint32_t caps;              /* lower and upper capability words */
    uint8_t charset;
    uint16_t status;
    struct ferry_slice auth_plugin; /* view; empty without CLIENT_PLUGIN_AUTH */
};

/* Parses a greeting payload. 0 or FERRY_BAD_MSG (not protocol 10, missing
 * NULs, short scramble; an ERR payload is also FERRY_BAD_MSG: check p[0]). */
int my_handshake_parse(const uint8_t *p, size_t n, struct my_handshake *hs);

/* Builds ferry's greeting (seq 0 normally). Writes zeroed reserved bytes, so
 * no MariaDB extended capabilities; scramble_len must be 20. */
void my_handshake_build(struct ferry_wbuf *b, uint8_t seq, const struct my_handshake *hs);

/* HandshakeResponse41, or the 32-byte SSLRequest that precedes TLS. */
struct my_response {
    uint32_t caps;
    uint32_t max_packet;
    uint8_t charset;
    bool ssl_request;           /* only caps, max_packet, charset are set */
    struct ferry_slice user;    /* views into the payload, without NULs */
    struct ferry_slice auth_response;
    bool has_database;          /* CLIENT_CONNECT_WITH_DB and a database was sent */
    struct ferry_slice database;
    struct ferry_slice auth_plugin;   /* empty without CLIENT_PLUGIN_AUTH */
    struct ferry_slice attrs;   /* raw key/value block; iterate with my_attr_next */
};

/* True if the payload is an SSLRequest (32 bytes, CLIENT_SSL set). */
bool my_is_ssl_request(const uint8_t *p, size_t n);

/* Parses a client's response. 0 or FERRY_BAD_MSG (no CLIENT_PROTOCOL_41,
 * missing NULs, lengths past the end). */
int my_response_parse(const uint8_t *p, size_t n, struct my_response *r);

/* Builds a response (ferry logging into a backend). Which optional fields
 * appear follows r->caps; auth data is lenenc with
 * CLIENT_PLUGIN_AUTH_LENENC, else one length byte. With r->ssl_request
 * builds the SSLRequest. */
void my_response_build(struct ferry_wbuf *b, uint8_t seq, const struct my_response *r);

/* Iterates connect attributes: *rest is advanced. 1 = one pair read, 0 =
 * end, FERRY_BAD_MSG = malformed. */
int my_attr_next(struct ferry_slice *rest, struct ferry_slice *key, struct ferry_slice *val);

/* AuthSwitchRequest (0xFE, plugin NUL, data) and AuthMoreData (0x01, data). */
struct my_auth_switch {
    struct ferry_slice plugin;  /* view, without NUL */
    struct ferry_slice data;    /* view; servers append a NUL to a 20-byte scramble: use the first 20 */
};
/* 0 or FERRY_BAD_MSG (a lone 0xFE, the pre-4.1 "old password" switch, is bad). */
int my_auth_switch_parse(const uint8_t *p, size_t n, struct my_auth_switch *as);
/* Writes plugin NUL data NUL, as MySQL does. */
void my_auth_switch_build(struct ferry_wbuf *b, uint8_t seq, const char *plugin,
                          const uint8_t *data, size_t len);
/* 0 (data = bytes after 0x01) or FERRY_BAD_MSG. */
int my_auth_more_data_parse(const uint8_t *p, size_t n, struct ferry_slice *data);
void my_auth_more_data_build(struct ferry_wbuf *b, uint8_t seq, const uint8_t *data, size_t len);

/* ---- capability policy -------------------------------------------------- */

/* Bits that change the wire format of later packets: they must be the same
 * on the client leg and the backend leg, since ferry relays those packets
 * unchanged. A backend (e.g. after failover) lacking one of the client's
 * negotiated bits cannot take over that session. */
#define MY_CAPS_WIRE_FORMAT                                                                \
    (MY_CLIENT_PROTOCOL_41 | MY_CLIENT_DEPRECATE_EOF | MY_CLIENT_SESSION_TRACK |             \
     MY_CLIENT_QUERY_ATTRIBUTES | MY_CLIENT_MULTI_RESULTS | MY_CLIENT_PS_MULTI_RESULTS |     \
     MY_CLIENT_LOCAL_FILES | MY_CLIENT_MULTI_STATEMENTS)

/* What ferry puts in a greeting to clients: what the backend offers (its
 * greeting's caps, or a remembered one in terminated mode) masked by what
 * ferry supports, plus what ferry always needs, plus CLIENT_SSL when ferry
 * has a certificate for clients. See codec.c for each flag. */
uint32_t my_caps_offer(uint32_t server_caps, bool client_tls);

/* What ferry sends in its HandshakeResponse41 to a backend, given the caps
 * the client negotiated and the backend's greeting; CLIENT_SSL when the
 * backend leg uses TLS. CONNECT_WITH_DB is left to the caller. */
uint32_t my_caps_for_backend(uint32_t client_caps, uint32_t server_caps, bool backend_tls);

/* ---- command phase: server responses ------------------------------------ */

struct my_ok {
    uint64_t affected_rows;
    uint64_t last_insert_id;
    uint16_t status;            /* MY_STATUS_* */
    uint16_t warnings;
    struct ferry_slice info;    /* view; human-readable */
    struct ferry_slice session_state;   /* view; raw block, iterate with my_state_change_next */
};

/* OK packet (header 0x00, or 0xFE as the CLIENT_DEPRECATE_EOF terminator).
 * caps: negotiated capabilities (SESSION_TRACK changes the layout).
 * 0 or FERRY_BAD_MSG. */
int my_ok_parse(const uint8_t *p, size_t n, uint32_t caps, struct my_ok *ok);

/* Builds an OK (header 0x00) with info and, when caps has SESSION_TRACK and
 * ok->session_state is non-empty, the state block (status should then carry
 * MY_STATUS_SESSION_STATE_CHANGED). */
void my_ok_build(struct ferry_wbuf *b, uint8_t seq, uint32_t caps, const struct my_ok *ok);

struct my_err {
    uint16_t code;
    bool has_sqlstate;          /* "#XXXXX" present (always with PROTOCOL_41 outside the handshake) */
    char sqlstate[6];           /* NUL-terminated copy; "" without */
    struct ferry_slice message; /* view */
};
/* ERR packet: 0 or FERRY_BAD_MSG. */
int my_err_parse(const uint8_t *p, size_t n, struct my_err *e);

/* Builds an ERR that ferry originates: the message is prefixed "ferry: ".
 * sqlstate: 5 characters. */
void my_err_build(struct ferry_wbuf *b, uint8_t seq, uint16_t code, const char *sqlstate,
                  const char *msg);

struct my_eof {
    uint16_t warnings;
    uint16_t status;
};
/* True for a classic EOF packet: 0xFE and fewer than 9 bytes. */
bool my_is_eof(const uint8_t *p, size_t n);
/* 0 or FERRY_BAD_MSG. A 1-byte EOF (pre-4.1) gives zeros. */
int my_eof_parse(const uint8_t *p, size_t n, struct my_eof *eof);

/* Session state change records inside an OK (CLIENT_SESSION_TRACK). */
enum my_track_type {
    MY_TRACK_SYSTEM_VARIABLES = 0,
    MY_TRACK_SCHEMA = 1,
    MY_TRACK_STATE_CHANGE = 2,
    MY_TRACK_GTIDS = 3,
    MY_TRACK_TRANSACTION_CHARACTERISTICS = 4,
    MY_TRACK_TRANSACTION_STATE = 5,
};
struct my_state_change {
    uint8_t type;               /* enum my_track_type; others are passed over */
    struct ferry_slice name;    /* system variable name (type 0), else empty */
    struct ferry_slice value;   /* variable value, schema, "1", GTID set, or state string */
};
/* Reads the next record of ok->session_state; *rest is advanced. 1 = one
 * record, 0 = end, FERRY_BAD_MSG = malformed. */
int my_state_change_next(struct ferry_slice *rest, struct my_state_change *out);

/* COM_STMT_PREPARE_OK. */
struct my_prepare_ok {
    uint32_t stmt_id;
    uint16_t num_columns;
    uint16_t num_params;
    uint16_t warnings;
};
/* 0 or FERRY_BAD_MSG. */
int my_prepare_ok_parse(const uint8_t *p, size_t n, struct my_prepare_ok *po);

/* ---- command phase: client commands ------------------------------------- */

enum my_com {
    MY_COM_SLEEP = 0x00, MY_COM_QUIT = 0x01, MY_COM_INIT_DB = 0x02, MY_COM_QUERY = 0x03,
    MY_COM_FIELD_LIST = 0x04, MY_COM_CREATE_DB = 0x05, MY_COM_DROP_DB = 0x06,
    MY_COM_REFRESH = 0x07, MY_COM_SHUTDOWN = 0x08, MY_COM_STATISTICS = 0x09,
    MY_COM_PROCESS_INFO = 0x0A, MY_COM_CONNECT = 0x0B, MY_COM_PROCESS_KILL = 0x0C,
    MY_COM_DEBUG = 0x0D, MY_COM_PING = 0x0E, MY_COM_TIME = 0x0F,
    MY_COM_DELAYED_INSERT = 0x10, MY_COM_CHANGE_USER = 0x11, MY_COM_BINLOG_DUMP = 0x12,
    MY_COM_TABLE_DUMP = 0x13, MY_COM_CONNECT_OUT = 0x14, MY_COM_REGISTER_SLAVE = 0x15,
    MY_COM_STMT_PREPARE = 0x16, MY_COM_STMT_EXECUTE = 0x17, MY_COM_STMT_SEND_LONG_DATA = 0x18,
    MY_COM_STMT_CLOSE = 0x19, MY_COM_STMT_RESET = 0x1A, MY_COM_SET_OPTION = 0x1B,
    MY_COM_STMT_FETCH = 0x1C, MY_COM_DAEMON = 0x1D, MY_COM_BINLOG_DUMP_GTID = 0x1E,
    MY_COM_RESET_CONNECTION = 0x1F,
};

/* What the server sends back for a command. */
enum my_reply {
    MY_REPLY_UNSUPPORTED = 0,   /* ferry refuses the command (replication, unknown, ...) */
    MY_REPLY_NONE,              /* no response: QUIT, STMT_CLOSE, STMT_SEND_LONG_DATA */
    MY_REPLY_OK,                /* OK or ERR (EOF also accepted: old COM_SET_OPTION) */
    MY_REPLY_RESULT,            /* OK, ERR, LOCAL INFILE request, or result sets */
    MY_REPLY_ROWS,              /* rows then a terminator (COM_STMT_FETCH) */
    MY_REPLY_FIELDS,            /* column definitions then EOF (COM_FIELD_LIST) */
    MY_REPLY_PREPARE,           /* PREPARE_OK and its definitions, or ERR */
    MY_REPLY_AUTH,              /* an auth exchange ending with OK or ERR (CHANGE_USER) */
    MY_REPLY_STRING,            /* one packet, whatever it holds (COM_STATISTICS) */
};

/* Per-command flags. */
#define MY_CMD_ID_AT_1       0x01   /* u32 id at payload offset 1 (stmt id; connection id for PROCESS_KILL) */
#define MY_CMD_RESETS        0x02   /* drops prepared statements and session variables on success */

struct my_command {
    uint8_t code;               /* enum my_com */
    const char *name;           /* "COM_QUERY" ... for logs */
    enum my_reply reply;
    unsigned flags;             /* MY_CMD_* */
};

/* The table row for a command byte; a row with MY_REPLY_UNSUPPORTED and name
 * "COM_UNKNOWN" for bytes ferry does not know. Never NULL; static storage. */
const struct my_command *my_command_lookup(uint8_t code);

/* u32 id at offset 1 of a command (MY_CMD_ID_AT_1) or of a PREPARE_OK.
 * 0 or FERRY_BAD_MSG (payload shorter than 5 bytes). */
int my_id_at_1_get(const uint8_t *p, size_t n, uint32_t *id);
int my_id_at_1_set(uint8_t *p, size_t n, uint32_t id);

/* The SQL text of a COM_QUERY payload (p[0] == 0x03). With
 * CLIENT_QUERY_ATTRIBUTES in caps the attribute block before it is skipped.
 * 0 or FERRY_BAD_MSG. */
int my_query_text(const uint8_t *p, size_t n, uint32_t caps, struct ferry_slice *sql);

/* COM_CHANGE_USER fields the session needs (the rest is auth). */
struct my_change_user {
    struct ferry_slice user;
    struct ferry_slice auth_response;
    struct ferry_slice database;
    uint16_t charset;           /* 0 if absent */
    struct ferry_slice auth_plugin;
    struct ferry_slice attrs;
};
/* caps: negotiated. 0 or FERRY_BAD_MSG. */
int my_change_user_parse(const uint8_t *p, size_t n, uint32_t caps, struct my_change_user *cu);

/* KILL statements in COM_QUERY text, so ferry ids can be translated. */
enum my_kill_kind {
    MY_KILL_NONE = 0,           /* not a KILL statement */
    MY_KILL_CONNECTION,         /* KILL <id> / KILL CONNECTION <id> */
    MY_KILL_QUERY,              /* KILL QUERY <id> */
    MY_KILL_UNPARSED,           /* starts with KILL but is not the plain form (e.g.
                                   MariaDB's KILL USER, an id expression): the
                                   session must not forward it untranslated */
};
/* Recognises [ws|comments] KILL [CONNECTION|QUERY] <decimal id> [ws|comments]
 * [;] case-insensitively; comments are slash-star, "-- " and "#" lines;
 * executable comments are read as code. */
enum my_kill_kind my_kill_parse(const uint8_t *sql, size_t n, uint64_t *id);

#endif
