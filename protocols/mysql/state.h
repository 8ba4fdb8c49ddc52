/* MySQL session-state tracker: follows one client/backend conversation
 * packet by packet (headers plus the few bodies that matter) to know when a
 * command's response is complete, whether a transaction is open, and what
 * must be replayed on another backend: schema, tracked session variables,
 * prepared statements (ferry id -> backend id, with their SQL). Pure and
 * memory-bounded (struct my_state_limits). Thread: the session's owner only.
 */
#ifndef FERRY_MY_STATE_H
#define FERRY_MY_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

struct my_state_limits {
    size_t max_stmts;           /* prepared statements per session */
    size_t max_stmt_sql;        /* SQL bytes of one statement */
    size_t max_sql_total;       /* SQL bytes of all statements of a session */
    size_t max_vars;            /* tracked session variables */
    size_t max_name_len;        /* bytes of a variable name, value, or schema */
};

/* 1024 statements, 1 MiB each, 16 MiB in all, 64 variables of 1 KiB. */
void my_state_limits_default(struct my_state_limits *lim);

struct my_stmt {
    uint32_t ferry_id;          /* the id the client sees */
    uint32_t backend_id;        /* the id on the current backend */
    uint16_t num_params;
    uint16_t num_columns;
    char *sql;                  /* owned; sql_len bytes plus a NUL */
    size_t sql_len;
};

struct my_var {
    char *name;                 /* owned, NUL-terminated */
    char *value;                /* owned, NUL-terminated */
};

/* Where the conversation is; the comment says what ends the phase. */
enum my_phase {
    MY_PH_IDLE,                 /* no command in flight: a client command */
    MY_PH_FIRST,                /* first packet of a (next) result: OK, ERR, 0xFB, column count */
    MY_PH_DEFS,                 /* defs_left more definitions */
    MY_PH_DEFS_EOF,             /* the EOF after a definitions block (no DEPRECATE_EOF) */
    MY_PH_ROWS,                 /* rows until a terminator or ERR */
    MY_PH_FIELDS,               /* COM_FIELD_LIST definitions until a terminator or ERR */
    MY_PH_INFILE,               /* client sends file data until an empty packet */
    MY_PH_AUTH,                 /* COM_CHANGE_USER exchange until OK or ERR */
    MY_PH_OK,                   /* OK, ERR (or EOF) */
    MY_PH_ONE,                  /* any one packet (COM_STATISTICS) */
    MY_PH_CLOSED,               /* COM_QUIT sent: nothing more */
};

struct my_state {
    struct my_state_limits lim;
    uint32_t caps;              /* negotiated capabilities */
    uint16_t status;            /* last server status flags */
    bool in_trans;              /* SERVER_STATUS_IN_TRANS */
    bool autocommit;            /* SERVER_STATUS_AUTOCOMMIT */
    uint16_t charset;           /* collation id from the handshake or COM_CHANGE_USER */
    char *schema;               /* owned; NULL = none */
    struct my_var *vars;        /* owned array of nvars */
    size_t nvars;
    bool vars_incomplete;       /* a variable was dropped at a limit: not replayable */
    struct my_stmt *stmts;      /* owned array of nstmts (cap_stmts allocated) */
    size_t nstmts, cap_stmts;
    size_t sql_total;           /* SQL bytes held by stmts */
    uint32_t next_ferry_id;     /* next statement id handed to the client */
    uint32_t prepared_id;       /* ferry id of the statement the last PREPARE_OK created */
    /* the command in flight */
    enum my_phase phase;
    uint8_t cmd;                /* enum my_com */
    uint8_t next_seq;           /* sequence id the next packet must carry */
    uint32_t defs_left;         /* definitions left in this block */
    uint32_t next_block;        /* definitions in the block after it (prepare: columns) */
    bool rows_follow;           /* rows come after the definitions */
    bool cursor;                /* a COM_STMT_EXECUTE that asked for a cursor
                                   (CURSOR_TYPE_READ_ONLY): its rows come by COM_STMT_FETCH */
    char *pending;              /* owned: SQL being prepared, or schema of INIT_DB / CHANGE_USER */
    size_t pending_len;
};

/* Results of my_state_client_packet / my_state_server_packet, besides 0. */
enum {
    MY_STATE_REFUSE = -3,       /* client: refuse with an ERR (unsupported command or a
                                   limit); the packet must not be forwarded, state unchanged */
    MY_STATE_DONE = 1,          /* server: the command's response is complete */
    MY_STATE_PREPARED = 2,      /* server: a PREPARE_OK registered st->prepared_id; write it
                                   at offset 1 (my_id_at_1_set) before relaying */
};

/* caps: negotiated with the client; charset: from its HandshakeResponse41.
 * lim may be NULL (defaults). Starts idle, autocommit on. */
void my_state_init(struct my_state *st, const struct my_state_limits *lim, uint32_t caps,
                   uint16_t charset);
void my_state_free(struct my_state *st);

/* One logical packet from the client (with the ids the client used).
 * 0, MY_STATE_REFUSE, or FERRY_BAD_MSG (wrong sequence id, a command while
 * one is in flight, malformed command). */
int my_state_client_packet(struct my_state *st, const struct my_logical *pkt);

/* One logical packet from the backend (pkt->payload may be only the first
 * fragment of a long row). A bit set of MY_STATE_DONE / MY_STATE_PREPARED,
 * 0, or FERRY_BAD_MSG (unexpected packet, wrong sequence id, a LOCAL INFILE
 * request the client did not allow, out of memory). */
int my_state_server_packet(struct my_state *st, const struct my_logical *pkt);

/* No transaction open and no command in flight. */
bool my_state_at_safe_point(const struct my_state *st);

/* Takes the server status flags of an OK ferry read outside the tracker
 * (the login's): status, transaction and autocommit. */
void my_state_apply_status(struct my_state *st, uint16_t status);

/* Borrowed pointer valid until the next state call; NULL if unknown. */
const struct my_stmt *my_state_stmt_find(const struct my_state *st, uint32_t ferry_id);

/* After re-preparing a statement on another backend. 0 or -1 (unknown id). */
int my_state_stmt_rebind(struct my_state *st, uint32_t ferry_id, uint32_t backend_id);

/* Value of a tracked variable (borrowed), or NULL. */
const char *my_state_var(const struct my_state *st, const char *name);

#endif
