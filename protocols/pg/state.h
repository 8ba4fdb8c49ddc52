/* PostgreSQL session state, tracked from the messages that pass through:
 * transaction status, reported parameters, the backend's cancel key, and the
 * named prepared statements (so a session can be re-created on another
 * backend), plus whether the session is at a safe point to move.
 *
 * Feed every frontend message (client → server) and every backend message
 * (server → client) after authentication, in the order they pass, as type
 * byte + body. Pure: no I/O; thread: the owning worker only.
 *
 * What is tracked, and its limits:
 * - Prepared statements made with protocol-level Parse: a Parse counts only
 *   once its ParseComplete arrives; Close('S') removes one on CloseComplete.
 *   Responses are matched to requests in order. After an ErrorResponse to an
 *   extended-protocol message the server skips everything up to the next
 *   Sync: unconfirmed requests before that Sync are dropped, and requests
 *   the client sends meanwhile are ignored, as the server ignores them.
 * - The unnamed statement is not kept (it does not outlive the next Parse).
 * - CommandComplete "DISCARD ALL" or "DEALLOCATE ALL" (simple or extended
 *   query) empties the table. SQL-level PREPARE and DEALLOCATE <name> are
 *   not followed: seeing their tags marks the table inexact
 *   (pg_state_statements_exact() false) until the next DISCARD/DEALLOCATE ALL.
 * - Statements beyond the configured caps are not kept and also mark the
 *   table inexact. More requests in flight than max_pending, or a response
 *   that matches no request, lose track of the session for good
 *   (pg_state_lost(): never at a safe point again; close it, don't move it).
 */
#ifndef FERRY_PG_STATE_H
#define FERRY_PG_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

struct pg_state_limits {
    size_t max_statements;      /* named prepared statements kept; 0 = 1024 */
    size_t max_statement_bytes; /* their total size (names, SQL, types); 0 = 4 MiB */
    size_t max_pending;         /* requests awaiting a response; 0 = 65536 */
    size_t max_parameters;      /* ParameterStatus names kept; 0 = 64 */
};

/* One kept prepared statement; owned by the tracker, valid until the next
 * message is fed. name and query are NUL-terminated. */
struct pg_statement {
    const char *name;
    size_t name_len;
    const char *query;
    size_t query_len;
    const uint32_t *param_types;    /* nparam_types OIDs, host order */
    uint16_t nparam_types;
};

struct pg_state;

/* A new tracker (transaction status 'I' not yet seen); NULL when out of
 * memory. limits may be NULL (all defaults). Free with pg_state_free(). */
struct pg_state *pg_state_new(const struct pg_state_limits *limits);
void pg_state_free(struct pg_state *s);

/* Feeds one message. Returns 0, or FERRY_BAD_MSG when a body the tracker
 * reads is malformed (the session should end with 08P01). */
int pg_state_frontend(struct pg_state *s, uint8_t type, const uint8_t *body, size_t n);
int pg_state_backend(struct pg_state *s, uint8_t type, const uint8_t *body, size_t n);

/* 'I', 'T' or 'E' from the last ReadyForQuery; 0 before the first one. */
char pg_state_tx_status(const struct pg_state *s);

/* Idle: the last ReadyForQuery said 'I', no request awaits a response, the
 * server is not skipping to a Sync, and the tracker has not lost track. */
bool pg_state_at_safe_point(const struct pg_state *s);
bool pg_state_lost(const struct pg_state *s);
bool pg_state_statements_exact(const struct pg_state *s);

/* The backend's BackendKeyData; false if none was seen. */
bool pg_state_backend_key(const struct pg_state *s, struct pg_backend_key *out);

/* The current value of a reported parameter (borrowed, NUL-terminated), or
 * NULL; and iteration over all of them by index (false past the end). */
const char *pg_state_parameter(const struct pg_state *s, const char *name);
bool pg_state_parameter_at(const struct pg_state *s, size_t i, const char **name, const char **value);

/* Prepared statements: lookup by name, count, and by index (name order). */
const struct pg_statement *pg_state_statement(const struct pg_state *s, const char *name, size_t len);
size_t pg_state_statement_count(const struct pg_state *s);
const struct pg_statement *pg_state_statement_at(const struct pg_state *s, size_t i);

#endif
