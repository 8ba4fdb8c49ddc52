/* MySQL sessions: what session_mysql.c (the packet walk of the relayed
 * conversation) and session_mysql_login.c (terminated authentication:
 * ferry's own greeting, the client's check, ferry's login into backends)
 * share. Private to those two files.
 */
#ifndef FERRY_SESSION_MYSQL_H
#define FERRY_SESSION_MYSQL_H

#include "mysql/state.h"
#include "session.h"

enum {
    SMALL_PACKET = 4096,        /* client commands up to this size are kept whole in one buffer */
    PREFIX = 64,                /* bytes of a longer command that must be contiguous */
    HS_MAX = 65536,             /* largest handshake / auth packet from the client */
    GREETING_MAX = 1024,        /* largest server greeting */
    SERVER_CAPTURE = 1 << 20,   /* most bytes of one server packet copied for the tracker */
    CHANGE_USER_MAX = 65536,    /* most bytes of a COM_CHANGE_USER ferry reads */
};

/* Errors ferry answers with (MySQL error numbers and SQLSTATEs). */
#define ER_HANDSHAKE 1043, "08S01"          /* ER_HANDSHAKE_ERROR */
#define ER_UNKNOWN_COM 1047, "08S01"        /* ER_UNKNOWN_COM_ERROR */
#define ER_NO_SUCH_THREAD 1094, "HY000"     /* ER_NO_SUCH_THREAD */
#define ER_WRONG_DB_NAME 1102, "42000"      /* ER_WRONG_DB_NAME */
#define ER_TOO_LARGE 1153, "08S01"          /* ER_NET_PACKET_TOO_LARGE */
#define ER_OUT_OF_ORDER 1156, "08S01"       /* ER_NET_PACKETS_OUT_OF_ORDER */
#define ER_NOT_SUPPORTED 1235, "42000"      /* ER_NOT_SUPPORTED_YET */
#define ER_MAX_STMTS 1461, "42000"          /* ER_MAX_PREPARED_STMT_COUNT_REACHED */
#define ER_MALFORMED 1835, "HY000"          /* ER_MALFORMED_PACKET */
#define ER_TXN_LOST 1213, "40001"           /* ER_LOCK_DEADLOCK: "retry the transaction" */
/* The server's stream ferry cannot follow. Not CR_MALFORMED_PACKET (2027):
 * Connector/C takes any server-sent 2xxx for a malformed packet itself. */
#define CR_MALFORMED 1835, "HY000"          /* ER_MALFORMED_PACKET */

/* Server errors that say the writer is read-only now. */
#define ER_OPTION_PREVENTS_STATEMENT 1290
#define ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION 1792
#define ER_READ_ONLY_MODE 1836

/* Where the session is. */
enum ms_phase {
    MS_GREETING,        /* waiting for the server's Handshake v10 */
    MS_RESPONSE,        /* waiting for the client's HandshakeResponse41 */
    MS_AUTH,            /* authentication exchange until the server's OK or ERR */
    MS_COMMAND,         /* command phase: my_state follows it */
    MS_PLAIN,           /* the server refused in the handshake: bytes pass, it closes */
};

/* One direction's packet scanner. */
struct my_dir {
    struct my_reasm reasm;
    uint8_t hdr[MY_HDR_LEN];    /* server side: header bytes gathered across chunks */
    size_t hdr_have;
    bool in_packet;             /* header read; left payload bytes to come */
    size_t left;
    bool last_frag;             /* this physical packet ends the logical one */
    bool in_logical;            /* inside a logical packet */
    bool at_payload_start;      /* first fragment's payload not looked at yet */
    uint32_t frags;
    uint8_t first_seq, last_seq;
    size_t cap_want;            /* payload bytes of the first fragment to capture */
    struct ferry_wbuf cap;      /* the captured bytes */
    long pkt_start;             /* offset of the logical packet's header in this buffer, -1 */
    long pay_off;               /* offset of its payload in this buffer, -1 */
    bool id_fixed;              /* a statement id was rewritten: the tracker wants the old one */
    uint32_t orig_id;
    struct ferry_wbuf carry;    /* bytes kept for the next chunk */
};

struct px_my_session {
    enum ms_phase phase;
    uint8_t hs_next;            /* sequence id of the next handshake packet */
    bool client_turn;           /* handshake: the server waits for the client */
    bool greeted;               /* the greeting went to the client: its sequence applies */
    uint32_t offered;           /* capabilities in the greeting ferry relayed */
    uint32_t ferry_id;          /* connection id the client sees; 0 = none yet */
    uint32_t backend_id;        /* the server's thread id */
    bool st_init;
    struct my_state st;         /* from the client's response on */
    struct my_dir c2s, s2c;
    bool fenced;                /* cut from the old writer: ferry answers every command */
    bool txn_lost;              /* fenced inside a transaction that has not seen ROLLBACK */
    bool server_cut;            /* ferry half-closed the server side */
    bool fail_set;              /* the next px_session_fail uses these: */
    uint16_t fail_code;
    const char *fail_state;
    uint8_t fail_seq;
    char pending_user[FERRY_NAME_MAX];  /* COM_CHANGE_USER in flight */
    /* terminated authentication (session_mysql_login.c) */
    const struct ferry_user_cfg *user;  /* borrowed from cfg; NULL = passthrough */
    struct my_login *login;             /* owned while either side authenticates */
    struct ferry_wbuf hello;            /* the client's HandshakeResponse41 payload: what
                                           ferry logs into backends with */
    /* what a move to another backend replays (terminated mode) */
    bool moving;                        /* logging into a new writer: requests park */
    bool unmovable;                     /* state ferry could not follow: close instead */
    struct ferry_wbuf replay;           /* SET / USE statements that succeeded, in order:
                                           each a u32 length and the text */
    struct ferry_wbuf pending_sql;      /* such a statement sent, its answer not yet seen */
    uint8_t scramble[20];               /* ferry's, from its greeting (terminated mode) */
    bool changing_user;                 /* COM_CHANGE_USER: checking, then logging in anew */
};


static inline struct px_my_session *mys(const struct px_session *s)
{
    return s->u.my;
}

/* ---- session_mysql.c ---- */

/* Ends the session with this ERR (sequence seq); kind counts it. */
void mys_fail(struct px_session *s, enum px_err kind, uint16_t code, const char *sqlstate,
              uint8_t seq, const char *text);
/* A connection id for the client: unique in the process, mapped to the
 * server and its thread id for KILL (mys_id_update once they are known). */
uint32_t mys_id_register(const struct sockaddr_storage *addr, uint32_t backend_id);
void mys_id_update(uint32_t id, const struct sockaddr_storage *addr, uint32_t backend_id);

/* ---- session_mysql_login.c ---- */

/* Terminated mode: ferry greets the client and checks it. */
void mys_login_begin(struct px_session *s);
/* The backend is connected: log into it (relay starts when done). */
bool mys_login_connected(struct px_session *s);
/* The session timer fired during a login: true when handled. */
bool mys_login_timer(struct px_session *s);
void mys_login_free(struct px_my_session *m);
/* Terminated mode, logged in, every change of state seen, at a safe point
 * outside a transaction. */
bool mys_movable(const struct px_session *s);
/* Logs into the writer of now and replays the session there; the client's
 * next command waits meanwhile (parked). */
void mys_move_begin(struct px_session *s);
/* Terminated mode: a COM_CHANGE_USER payload (the command cut from the
 * stream); ferry checks the client and logs in anew as that user. */
void mys_change_user(struct px_session *s, const uint8_t *p, size_t n);
/* Client bytes while a COM_CHANGE_USER is checked (auth answers: taken,
 * DROP) or logging in anew (PARK: the next command waits). */
enum px_scan mys_change_user_packet(struct px_session *s, const uint8_t *data, size_t n);

#endif
