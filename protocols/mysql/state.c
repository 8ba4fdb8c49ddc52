/* MySQL session-state tracker (see state.h): a small state machine over
 * logical packets that knows where each response ends, plus the replayable
 * session state it learns from commands and OK packets on the way.
 */
#include "state.h"

#include <stdlib.h>
#include <string.h>

void my_state_limits_default(struct my_state_limits *lim)
{
    *lim = (struct my_state_limits){
        .max_stmts = 1024,
        .max_stmt_sql = 1 << 20,
        .max_sql_total = 16 << 20,
        .max_vars = 64,
        .max_name_len = 1024,
    };
}

void my_state_init(struct my_state *st, const struct my_state_limits *lim, uint32_t caps,
                   uint16_t charset)
{
    *st = (struct my_state){.caps = caps, .charset = charset, .autocommit = true,
                            .status = MY_STATUS_AUTOCOMMIT, .next_ferry_id = 1};
    if (lim)
        st->lim = *lim;
    else
        my_state_limits_default(&st->lim);
}

/* ---- owned strings, variables and statements ---------------------------- */

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        if (n)
            memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

static void clear_pending(struct my_state *st)
{
    free(st->pending);
    st->pending = NULL;
    st->pending_len = 0;
}

static void clear_vars(struct my_state *st)
{
    for (size_t i = 0; i < st->nvars; i++) {
        free(st->vars[i].name);
        free(st->vars[i].value);
    }
    free(st->vars);
    st->vars = NULL;
    st->nvars = 0;
    st->vars_incomplete = false;
}

static void clear_stmts(struct my_state *st)
{
    for (size_t i = 0; i < st->nstmts; i++)
        free(st->stmts[i].sql);
    free(st->stmts);
    st->stmts = NULL;
    st->nstmts = st->cap_stmts = 0;
    st->sql_total = 0;
}

void my_state_free(struct my_state *st)
{
    clear_pending(st);
    clear_vars(st);
    clear_stmts(st);
    free(st->schema);
    st->schema = NULL;
}

/* Replaces the schema; an empty name means none. false on out of memory. */
static bool set_schema(struct my_state *st, const uint8_t *p, size_t n)
{
    char *s = n ? dup_bytes(p, n) : NULL;
    if (n && !s)
        return false;
    free(st->schema);
    st->schema = s;
    return true;
}

static struct my_var *find_var(const struct my_state *st, const uint8_t *name, size_t n)
{
    for (size_t i = 0; i < st->nvars; i++)
        if (strlen(st->vars[i].name) == n && (n == 0 || memcmp(st->vars[i].name, name, n) == 0))
            return &st->vars[i];
    return NULL;
}

const char *my_state_var(const struct my_state *st, const char *name)
{
    const struct my_var *v = find_var(st, (const uint8_t *)name, strlen(name));
    return v ? v->value : NULL;
}

/* Records name = value; past a limit the variable is dropped and the state
 * marked incomplete. false only on out of memory. */
static bool set_var(struct my_state *st, struct ferry_slice name, struct ferry_slice value)
{
    if (name.len > st->lim.max_name_len || value.len > st->lim.max_name_len) {
        st->vars_incomplete = true;
        return true;
    }
    char *v = dup_bytes(value.p, value.len);
    if (!v)
        return false;
    struct my_var *var = find_var(st, name.p, name.len);
    if (var) {
        free(var->value);
        var->value = v;
        return true;
    }
    if (st->nvars >= st->lim.max_vars) {
        st->vars_incomplete = true;
        free(v);
        return true;
    }
    struct my_var *vars = realloc(st->vars, (st->nvars + 1) * sizeof *vars);
    char *n = dup_bytes(name.p, name.len);
    if (vars)
        st->vars = vars;
    if (!vars || !n) {
        free(v);
        free(n);
        return false;
    }
    st->vars[st->nvars++] = (struct my_var){.name = n, .value = v};
    return true;
}

static struct my_stmt *find_stmt(const struct my_state *st, uint32_t ferry_id)
{
    for (size_t i = 0; i < st->nstmts; i++)
        if (st->stmts[i].ferry_id == ferry_id)
            return &st->stmts[i];
    return NULL;
}

const struct my_stmt *my_state_stmt_find(const struct my_state *st, uint32_t ferry_id)
{
    return find_stmt(st, ferry_id);
}

int my_state_stmt_rebind(struct my_state *st, uint32_t ferry_id, uint32_t backend_id)
{
    struct my_stmt *s = find_stmt(st, ferry_id);
    if (!s)
        return -1;
    s->backend_id = backend_id;
    return 0;
}

static void remove_stmt(struct my_state *st, uint32_t ferry_id)
{
    struct my_stmt *s = find_stmt(st, ferry_id);
    if (!s)
        return;
    st->sql_total -= s->sql_len;
    free(s->sql);
    *s = st->stmts[--st->nstmts];
}

/* Registers the statement whose SQL is pending; takes that SQL. */
static bool add_stmt(struct my_state *st, const struct my_prepare_ok *po)
{
    if (st->nstmts == st->cap_stmts) {
        size_t cap = st->cap_stmts ? st->cap_stmts * 2 : 8;
        struct my_stmt *s = realloc(st->stmts, cap * sizeof *s);
        if (!s)
            return false;
        st->stmts = s;
        st->cap_stmts = cap;
    }
    uint32_t id = st->next_ferry_id++;
    if (st->next_ferry_id == 0)     /* ids wrap after 2^32 prepares; 0 is never used */
        st->next_ferry_id = 1;
    st->stmts[st->nstmts++] = (struct my_stmt){
        .ferry_id = id, .backend_id = po->stmt_id, .num_params = po->num_params,
        .num_columns = po->num_columns, .sql = st->pending, .sql_len = st->pending_len};
    st->sql_total += st->pending_len;
    st->pending = NULL;
    st->pending_len = 0;
    st->prepared_id = id;
    return true;
}

/* ---- client commands ---------------------------------------------------- */

static bool keep_pending(struct my_state *st, struct ferry_slice s)
{
    st->pending = dup_bytes(s.p, s.len);
    st->pending_len = s.len;
    return st->pending != NULL;
}

static enum my_phase phase_for(enum my_reply reply)
{
    switch (reply) {
    case MY_REPLY_OK: return MY_PH_OK;
    case MY_REPLY_RESULT: return MY_PH_FIRST;
    case MY_REPLY_PREPARE: return MY_PH_FIRST;
    case MY_REPLY_ROWS: return MY_PH_ROWS;
    case MY_REPLY_FIELDS: return MY_PH_FIELDS;
    case MY_REPLY_AUTH: return MY_PH_AUTH;
    case MY_REPLY_STRING: return MY_PH_ONE;
    default: return MY_PH_IDLE;
    }
}

/* Checks limits and keeps what the reply will confirm. 0, MY_STATE_REFUSE,
 * or FERRY_BAD_MSG. */
static int note_command(struct my_state *st, const uint8_t *p, size_t n)
{
    struct ferry_slice rest = {p + 1, n - 1};
    uint32_t id;
    st->cursor = false;
    switch (p[0]) {
    case MY_COM_STMT_EXECUTE:
        /* id (4 bytes), then the flags: the server opens a cursor only for
         * CURSOR_TYPE_READ_ONLY, whatever else it says in its status. */
        st->cursor = n > 5 && (p[5] & MY_CURSOR_TYPE_READ_ONLY);
        return 0;
    case MY_COM_STMT_PREPARE:
        if (st->nstmts >= st->lim.max_stmts || rest.len > st->lim.max_stmt_sql ||
            rest.len > st->lim.max_sql_total - st->sql_total)
            return MY_STATE_REFUSE;
        return keep_pending(st, rest) ? 0 : FERRY_BAD_MSG;
    case MY_COM_INIT_DB:
        if (rest.len > st->lim.max_name_len)
            return MY_STATE_REFUSE;
        return keep_pending(st, rest) ? 0 : FERRY_BAD_MSG;
    case MY_COM_CHANGE_USER: {
        struct my_change_user cu;
        if (my_change_user_parse(p, n, st->caps, &cu) < 0)
            return FERRY_BAD_MSG;
        if (cu.database.len > st->lim.max_name_len)
            return MY_STATE_REFUSE;
        if (cu.charset)
            st->charset = cu.charset;
        return keep_pending(st, cu.database) ? 0 : FERRY_BAD_MSG;
    }
    case MY_COM_STMT_CLOSE:
        if (my_id_at_1_get(p, n, &id) < 0)
            return FERRY_BAD_MSG;
        remove_stmt(st, id);
        return 0;
    default:
        return 0;
    }
}

int my_state_client_packet(struct my_state *st, const struct my_logical *pkt)
{
    const uint8_t *p = pkt->payload.p;
    size_t n = pkt->payload.len;
    if (st->phase == MY_PH_INFILE || st->phase == MY_PH_AUTH) {
        if (pkt->first_seq != st->next_seq)
            return FERRY_BAD_MSG;
        st->next_seq = (uint8_t)(pkt->last_seq + 1);
        if (st->phase == MY_PH_INFILE && pkt->len == 0)
            st->phase = MY_PH_FIRST;    /* end of file: the server answers OK or ERR */
        return 0;
    }
    if (st->phase != MY_PH_IDLE || pkt->first_seq != 0 || n == 0)
        return FERRY_BAD_MSG;
    const struct my_command *cmd = my_command_lookup(p[0]);
    if (cmd->reply == MY_REPLY_UNSUPPORTED)
        return MY_STATE_REFUSE;
    if ((cmd->flags & MY_CMD_ID_AT_1) && n < 5)
        return FERRY_BAD_MSG;
    clear_pending(st);
    int rc = note_command(st, p, n);
    if (rc < 0)
        return rc;
    st->cmd = p[0];
    st->next_seq = (uint8_t)(pkt->last_seq + 1);
    st->phase = cmd->code == MY_COM_QUIT ? MY_PH_CLOSED : phase_for(cmd->reply);
    return 0;
}

/* ---- server responses --------------------------------------------------- */

void my_state_apply_status(struct my_state *st, uint16_t status)
{
    st->status = status;
    st->in_trans = (status & MY_STATUS_IN_TRANS) != 0;
    st->autocommit = (status & MY_STATUS_AUTOCOMMIT) != 0;
}

/* Applies the session state changes an OK carries. false on malformed
 * records or out of memory. */
static bool apply_tracking(struct my_state *st, struct ferry_slice block)
{
    struct my_state_change ch;
    int rc;
    while ((rc = my_state_change_next(&block, &ch)) == 1) {
        bool ok = true;
        if (ch.type == MY_TRACK_SCHEMA)
            ok = ch.value.len <= st->lim.max_name_len && set_schema(st, ch.value.p, ch.value.len);
        else if (ch.type == MY_TRACK_SYSTEM_VARIABLES)
            ok = set_var(st, ch.name, ch.value);
        if (!ok)
            return false;
    }
    return rc == 0;
}

/* An OK that ends a command: what the command changed, then what the
 * server reports. false if the OK is malformed. */
static bool apply_ok(struct my_state *st, const uint8_t *p, size_t n)
{
    struct my_ok ok;
    if (my_ok_parse(p, n, st->caps, &ok) < 0)
        return false;
    if (st->cmd == MY_COM_RESET_CONNECTION || st->cmd == MY_COM_CHANGE_USER) {
        clear_stmts(st);
        clear_vars(st);
    }
    if ((st->cmd == MY_COM_INIT_DB || st->cmd == MY_COM_CHANGE_USER) &&
        !set_schema(st, (const uint8_t *)st->pending, st->pending_len))
        return false;
    my_state_apply_status(st, ok.status);
    return apply_tracking(st, ok.session_state);
}

static int finish(struct my_state *st)
{
    st->phase = MY_PH_IDLE;
    clear_pending(st);
    return MY_STATE_DONE;
}

/* OK or EOF that may announce another result set. */
static int end_of_result(struct my_state *st, uint16_t status)
{
    if (status & MY_STATUS_MORE_RESULTS) {
        st->phase = MY_PH_FIRST;
        return 0;
    }
    return finish(st);
}

/* After a definitions block: the next block, the rows, or the end. */
static int end_of_block(struct my_state *st)
{
    if (st->next_block) {
        st->defs_left = st->next_block;
        st->next_block = 0;
        st->phase = MY_PH_DEFS;
        return 0;
    }
    if (!st->rows_follow)
        return finish(st);
    /* A cursor the client asked for sends no rows now (they come by
     * COM_STMT_FETCH). MariaDB also sets CURSOR_EXISTS on a result set of
     * a prepared CALL whose procedure opened a cursor, with or without the
     * client's cursor flag, and then sends the rows: such a result set
     * announces more results (a cursor is never followed by any). */
    if (st->cmd == MY_COM_STMT_EXECUTE && st->cursor &&
        (st->status & MY_STATUS_CURSOR_EXISTS) && !(st->status & MY_STATUS_MORE_RESULTS) &&
        !(st->caps & MY_CLIENT_DEPRECATE_EOF))
        return finish(st);
    st->phase = MY_PH_ROWS;
    return 0;
}

static int start_defs(struct my_state *st, uint32_t first, uint32_t second, bool rows)
{
    st->defs_left = first;
    st->next_block = second;
    st->rows_follow = rows;
    if (first == 0)
        return end_of_block(st);
    st->phase = MY_PH_DEFS;
    return 0;
}

/* A terminator of rows or fields: 0xFE and short (EOF), or with
 * DEPRECATE_EOF an OK under 0xFFFFFF bytes (a row starting 0xFE has an
 * 8-byte length, so its first fragment is full). Returns its status via
 * *status; false if the packet is a row. */
static bool is_terminator(const struct my_state *st, const struct my_logical *pkt, uint16_t *status)
{
    const uint8_t *p = pkt->payload.p;
    size_t n = pkt->payload.len;
    if (n == 0 || p[0] != MY_EOF)
        return false;
    if (st->caps & MY_CLIENT_DEPRECATE_EOF) {
        struct my_ok ok;
        if (pkt->len >= MY_MAX_PHYSICAL || my_ok_parse(p, n, st->caps, &ok) < 0)
            return false;
        *status = ok.status;
        return true;
    }
    struct my_eof eof;
    if (my_eof_parse(p, n, &eof) < 0)
        return false;
    *status = eof.status;
    return true;
}

static int on_first(struct my_state *st, const struct my_logical *pkt)
{
    const uint8_t *p = pkt->payload.p;
    size_t n = pkt->payload.len;
    if (n == 0)
        return FERRY_BAD_MSG;
    if (p[0] == MY_OK && st->cmd == MY_COM_STMT_PREPARE) {
        struct my_prepare_ok po;
        if (my_prepare_ok_parse(p, n, &po) < 0 || !add_stmt(st, &po))
            return FERRY_BAD_MSG;
        int rc = start_defs(st, po.num_params, po.num_columns, false);
        return rc | MY_STATE_PREPARED;
    }
    if (p[0] == MY_OK) {
        if (!apply_ok(st, p, n))
            return FERRY_BAD_MSG;
        return end_of_result(st, st->status);
    }
    if (p[0] == MY_LOCAL_INFILE) {
        /* after a text query or a prepared LOAD DATA LOCAL, and only when
         * the client negotiated LOCAL_FILES (otherwise hostile) */
        if ((st->cmd != MY_COM_QUERY && st->cmd != MY_COM_STMT_EXECUTE) ||
            !(st->caps & MY_CLIENT_LOCAL_FILES))
            return FERRY_BAD_MSG;
        st->phase = MY_PH_INFILE;
        return 0;
    }
    uint64_t columns;
    bool is_null;
    if (my_lenenc_decode(p, n, &columns, &is_null) != (int)n || is_null || columns == 0 ||
        columns > 0xFFFF || st->cmd == MY_COM_STMT_PREPARE)
        return FERRY_BAD_MSG;
    return start_defs(st, (uint32_t)columns, 0, true);
}

static int on_rows(struct my_state *st, const struct my_logical *pkt)
{
    uint16_t status;
    if (!is_terminator(st, pkt, &status))
        return 0;
    if ((st->caps & MY_CLIENT_DEPRECATE_EOF) && !apply_ok(st, pkt->payload.p, pkt->payload.len))
        return FERRY_BAD_MSG;
    my_state_apply_status(st, status);
    if (st->phase == MY_PH_FIELDS)
        return finish(st);
    return end_of_result(st, status);
}

static int on_defs_eof(struct my_state *st, const struct my_logical *pkt)
{
    struct my_eof eof;
    if (my_eof_parse(pkt->payload.p, pkt->payload.len, &eof) < 0)
        return FERRY_BAD_MSG;
    my_state_apply_status(st, eof.status);
    return end_of_block(st);
}

static int on_ok_reply(struct my_state *st, const struct my_logical *pkt)
{
    const uint8_t *p = pkt->payload.p;
    size_t n = pkt->payload.len;
    if (n > 0 && p[0] == MY_OK && apply_ok(st, p, n))
        return finish(st);
    struct my_eof eof;
    if (my_eof_parse(p, n, &eof) == 0) {
        my_state_apply_status(st, eof.status);
        return finish(st);
    }
    return FERRY_BAD_MSG;
}

static int on_auth(struct my_state *st, const struct my_logical *pkt)
{
    uint8_t head = pkt->payload.len ? pkt->payload.p[0] : 0;
    if (head == MY_OK)
        return apply_ok(st, pkt->payload.p, pkt->payload.len) ? finish(st) : FERRY_BAD_MSG;
    if (head == MY_EOF || head == MY_AUTH_MORE_DATA)
        return 0;   /* the client answers; its packets continue the sequence */
    return FERRY_BAD_MSG;
}

static int dispatch_server(struct my_state *st, const struct my_logical *pkt)
{
    switch (st->phase) {
    case MY_PH_FIRST:
        return on_first(st, pkt);
    case MY_PH_DEFS:
        if (--st->defs_left > 0)
            return 0;
        if (!(st->caps & MY_CLIENT_DEPRECATE_EOF)) {
            st->phase = MY_PH_DEFS_EOF;
            return 0;
        }
        return end_of_block(st);
    case MY_PH_DEFS_EOF:
        return on_defs_eof(st, pkt);
    case MY_PH_ROWS:
    case MY_PH_FIELDS:
        return on_rows(st, pkt);
    case MY_PH_OK:
        return on_ok_reply(st, pkt);
    case MY_PH_AUTH:
        return on_auth(st, pkt);
    case MY_PH_ONE:
        return finish(st);
    default:
        return FERRY_BAD_MSG;   /* idle, closed, or the client's turn (INFILE) */
    }
}

int my_state_server_packet(struct my_state *st, const struct my_logical *pkt)
{
    bool is_err = pkt->payload.len > 0 && pkt->payload.p[0] == MY_ERR;
    /* An ERR may also arrive unasked (e.g. the server's idle timeout) before a close. */
    if (is_err && (st->phase == MY_PH_IDLE || st->phase == MY_PH_CLOSED))
        return finish(st);
    if (pkt->first_seq != st->next_seq)
        return FERRY_BAD_MSG;
    st->next_seq = (uint8_t)(pkt->last_seq + 1);
    /* No definition or row starts with 0xFF, so an ERR ends the command
     * wherever it comes (and with it any further result sets). */
    if (is_err)
        return finish(st);
    return dispatch_server(st, pkt);
}

bool my_state_at_safe_point(const struct my_state *st)
{
    return st->phase == MY_PH_IDLE && !st->in_trans;
}
