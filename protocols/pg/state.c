/* PostgreSQL session-state tracker (see state.h for what it follows and its
 * limits). Requests that expect an answer wait in a FIFO ring; each backend
 * response completes the request at its head, because the server answers
 * strictly in order. Prepared statements live in an array sorted by name.
 */
#include "state.h"

#include <stdlib.h>
#include <string.h>

enum op_kind {
    OP_PARSE,           /* ends with ParseComplete */
    OP_BIND,            /* BindComplete */
    OP_DESCRIBE,        /* RowDescription or NoData (after ParameterDescription) */
    OP_EXECUTE,         /* CommandComplete, EmptyQueryResponse or PortalSuspended */
    OP_CLOSE,           /* CloseComplete */
    OP_SYNC,            /* ReadyForQuery */
    OP_QUERY,           /* simple query: ReadyForQuery */
    OP_FUNCTION_CALL,   /* ReadyForQuery */
};

struct op {
    uint8_t kind;               /* enum op_kind */
    bool untracked;             /* PARSE/CLOSE of a named statement not copied (over the caps) */
    struct pg_statement *stmt;  /* owned: PARSE of a named statement (pending copy), CLOSE 'S'
                                   of a named one (name only); NULL otherwise */
};

struct param {
    char *name;                 /* owned */
    char *value;                /* owned */
};

struct pg_state {
    struct pg_state_limits lim;
    struct op *ops;             /* owned ring of ops_cap; ops_len from ops_head */
    size_t ops_cap, ops_head, ops_len;
    size_t pending_bytes;       /* size of the statement copies held by ops */
    struct pg_statement **stmts; /* owned array of owned statements, sorted by name */
    size_t nstmts, stmts_cap;
    size_t stmt_bytes;          /* size of the kept statements */
    struct param *params;       /* owned, max_parameters entries */
    size_t nparams;
    struct pg_backend_key key;
    bool has_key;
    char tx_status;             /* 0 until the first ReadyForQuery */
    bool skipping;              /* the server ignores requests until the next Sync */
    bool lost;                  /* responses no longer match requests: tracking stopped */
    bool inexact;               /* the statement table may differ from the server's */
};

/* ---- statements ---------------------------------------------------------------- */

static size_t stmt_size(size_t name_len, size_t query_len, uint16_t ntypes)
{
    return sizeof(struct pg_statement) + (size_t)ntypes * 4 + name_len + query_len + 2;
}

/* One allocation: the struct, the types, then both strings. NULL if out of memory. */
static struct pg_statement *stmt_new(struct ferry_slice name, struct ferry_slice query, const struct pg_parse *p)
{
    uint16_t ntypes = p ? p->nparam_types : 0;
    struct pg_statement *st = malloc(stmt_size(name.len, query.len, ntypes));
    if (!st)
        return NULL;
    uint32_t *types = (uint32_t *)(st + 1);
    char *name_copy = (char *)(types + ntypes);
    char *query_copy = name_copy + name.len + 1;
    for (unsigned i = 0; i < ntypes; i++)
        types[i] = pg_parse_param_type(p, i);
    memcpy(name_copy, name.p, name.len);
    name_copy[name.len] = '\0';
    if (query.len)
        memcpy(query_copy, query.p, query.len);
    query_copy[query.len] = '\0';
    *st = (struct pg_statement){name_copy, name.len, query_copy, query.len, types, ntypes};
    return st;
}

static size_t stmt_bytes(const struct pg_statement *st)
{
    return stmt_size(st->name_len, st->query_len, st->nparam_types);
}

static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

/* Index of the statement called name, or where it would be inserted. */
static size_t stmt_find(const struct pg_state *s, const char *name, size_t len, bool *found)
{
    size_t lo = 0, hi = s->nstmts;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(s->stmts[mid]->name, s->stmts[mid]->name_len, name, len);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static void stmt_remove_at(struct pg_state *s, size_t i)
{
    s->stmt_bytes -= stmt_bytes(s->stmts[i]);
    free(s->stmts[i]);
    memmove(&s->stmts[i], &s->stmts[i + 1], (s->nstmts - i - 1) * sizeof s->stmts[0]);
    s->nstmts--;
}

static void stmt_remove(struct pg_state *s, const char *name, size_t len)
{
    bool found;
    size_t i = stmt_find(s, name, len, &found);
    if (found)
        stmt_remove_at(s, i);
}

static void stmts_clear(struct pg_state *s)
{
    while (s->nstmts)
        stmt_remove_at(s, s->nstmts - 1);
}

static bool stmts_reserve(struct pg_state *s)
{
    if (s->nstmts < s->stmts_cap)
        return true;
    size_t cap = s->stmts_cap ? s->stmts_cap * 2 : 16;
    struct pg_statement **p = realloc(s->stmts, cap * sizeof *p);
    if (!p)
        return false;
    s->stmts = p;
    s->stmts_cap = cap;
    return true;
}

/* Takes ownership of st: keeps it (replacing one of the same name) if the
 * caps allow, else frees it and marks the table inexact. */
static void stmt_keep(struct pg_state *s, struct pg_statement *st)
{
    stmt_remove(s, st->name, st->name_len);
    bool found;
    size_t i = stmt_find(s, st->name, st->name_len, &found);
    if (s->nstmts >= s->lim.max_statements || stmt_bytes(st) > s->lim.max_statement_bytes - s->stmt_bytes ||
        !stmts_reserve(s)) {
        free(st);
        s->inexact = true;
        return;
    }
    memmove(&s->stmts[i + 1], &s->stmts[i], (s->nstmts - i) * sizeof s->stmts[0]);
    s->stmts[i] = st;
    s->nstmts++;
    s->stmt_bytes += stmt_bytes(st);
}

/* ---- the request ring ----------------------------------------------------------- */

static struct op *op_at(const struct pg_state *s, size_t i) { return &s->ops[(s->ops_head + i) % s->ops_cap]; }

static void op_release(struct pg_state *s, struct op *o)
{
    if (o->stmt) {
        s->pending_bytes -= stmt_bytes(o->stmt);
        free(o->stmt);
        o->stmt = NULL;
    }
}

static struct op op_pop(struct pg_state *s)
{
    struct op o = *op_at(s, 0);
    s->ops_head = (s->ops_head + 1) % s->ops_cap;
    s->ops_len--;
    return o;
}

static void op_drop_head(struct pg_state *s)
{
    struct op o = op_pop(s);
    op_release(s, &o);
}

/* Stops tracking for good: the server's view can no longer be followed. */
static void lose_track(struct pg_state *s)
{
    while (s->ops_len)
        op_drop_head(s);
    s->lost = true;
    s->inexact = true;
}

static bool ops_grow(struct pg_state *s)
{
    size_t cap = s->ops_cap ? s->ops_cap * 2 : 16;
    struct op *p = malloc(cap * sizeof *p);
    if (!p)
        return false;
    for (size_t i = 0; i < s->ops_len; i++)
        p[i] = *op_at(s, i);
    free(s->ops);
    s->ops = p;
    s->ops_cap = cap;
    s->ops_head = 0;
    return true;
}

/* Queues a request; ownership of o.stmt passes to the ring. */
static void op_push(struct pg_state *s, struct op o)
{
    if (s->ops_len >= s->lim.max_pending || (s->ops_len == s->ops_cap && !ops_grow(s))) {
        op_release(s, &o);
        lose_track(s);
        return;
    }
    *op_at(s, s->ops_len) = o;
    s->ops_len++;
}

static bool head_is(const struct pg_state *s, enum op_kind kind)
{
    return s->ops_len && op_at(s, 0)->kind == kind;
}

/* The response to the request at the head: it must be of that kind. */
static bool op_complete(struct pg_state *s, enum op_kind kind, struct op *out)
{
    if (!head_is(s, kind)) {
        lose_track(s);
        return false;
    }
    *out = op_pop(s);
    return true;
}

/* ---- frontend ------------------------------------------------------------------- */

/* A copy of a named statement for a pending request, if the byte cap allows. */
static struct op op_with_copy(struct pg_state *s, enum op_kind kind, struct ferry_slice name,
                              struct ferry_slice query, const struct pg_parse *p)
{
    struct op o = {.kind = kind};
    if (name.len == 0)
        return o;
    size_t need = stmt_size(name.len, query.len, p ? p->nparam_types : 0);
    o.stmt = need <= s->lim.max_statement_bytes - s->pending_bytes ? stmt_new(name, query, p) : NULL;
    o.untracked = !o.stmt;
    if (o.stmt)
        s->pending_bytes += need;
    return o;
}

static int on_parse(struct pg_state *s, const uint8_t *body, size_t n)
{
    struct pg_parse p;
    if (pg_decode_parse(body, n, &p) < 0)
        return FERRY_BAD_MSG;
    op_push(s, op_with_copy(s, OP_PARSE, p.name, p.query, &p));
    return 0;
}

static int on_close(struct pg_state *s, const uint8_t *body, size_t n)
{
    struct pg_target t;
    if (pg_decode_target(body, n, &t) < 0)
        return FERRY_BAD_MSG;
    struct ferry_slice none = {(const uint8_t *)"", 0};
    op_push(s, t.kind == 'S' ? op_with_copy(s, OP_CLOSE, t.name, none, NULL) : (struct op){.kind = OP_CLOSE});
    return 0;
}

static int request_kind(uint8_t type)
{
    switch (type) {
    case 'B': return OP_BIND;
    case 'D': return OP_DESCRIBE;
    case 'E': return OP_EXECUTE;
    case 'Q': return OP_QUERY;
    case 'F': return OP_FUNCTION_CALL;
    default: return -1;     /* Flush, copy data/done/fail, Terminate: no answer of their own */
    }
}

int pg_state_frontend(struct pg_state *s, uint8_t type, const uint8_t *body, size_t n)
{
    if (s->lost)
        return 0;
    if (type == 'S') {
        s->skipping = false;
        op_push(s, (struct op){.kind = OP_SYNC});
        return 0;
    }
    if (s->skipping)
        return 0;
    if (type == 'P')
        return on_parse(s, body, n);
    if (type == 'C')
        return on_close(s, body, n);
    int kind = request_kind(type);
    if (kind >= 0)
        op_push(s, (struct op){.kind = (uint8_t)kind});
    return 0;
}

/* ---- backend -------------------------------------------------------------------- */

/* Completes the PARSE or CLOSE at the head; a named statement that was not
 * copied (over the caps) leaves the table inexact. */
static bool complete_named(struct pg_state *s, enum op_kind kind, struct op *o)
{
    if (!op_complete(s, kind, o))
        return false;
    if (o->untracked)
        s->inexact = true;
    return true;
}

static void on_parse_complete(struct pg_state *s)
{
    struct op o;
    if (complete_named(s, OP_PARSE, &o) && o.stmt) {
        s->pending_bytes -= stmt_bytes(o.stmt);
        stmt_keep(s, o.stmt);
    }
}

static void on_close_complete(struct pg_state *s)
{
    struct op o;
    if (!complete_named(s, OP_CLOSE, &o))
        return;
    if (o.stmt)
        stmt_remove(s, o.stmt->name, o.stmt->name_len);
    op_release(s, &o);
}

static bool ends_with_ready(uint8_t kind)
{
    return kind == OP_SYNC || kind == OP_QUERY || kind == OP_FUNCTION_CALL;
}

/* An error to an extended-protocol request makes the server skip to the next
 * Sync: the failed request and all after it up to that Sync are dropped, and
 * without a Sync in flight, later requests are ignored until one comes.
 * Errors during a simple query, a function call or a Sync skip nothing. */
static void on_error(struct pg_state *s)
{
    if (s->ops_len == 0 || ends_with_ready(op_at(s, 0)->kind))
        return;
    while (s->ops_len && op_at(s, 0)->kind != OP_SYNC)
        op_drop_head(s);
    s->skipping = s->ops_len == 0;
}

/* ReadyForQuery answers the Sync, Query or FunctionCall at the head. */
static int on_ready(struct pg_state *s, const uint8_t *body, size_t n)
{
    char status;
    if (pg_decode_ready(body, n, &status) < 0)
        return FERRY_BAD_MSG;
    s->tx_status = status;
    if (s->ops_len == 0)
        return 0;           /* the one that ends the startup phase */
    if (!ends_with_ready(op_at(s, 0)->kind)) {
        lose_track(s);
        return 0;
    }
    op_drop_head(s);
    return 0;
}

static int on_command_complete(struct pg_state *s, const uint8_t *body, size_t n)
{
    struct ferry_slice tag;
    if (pg_decode_cstr_body(body, n, &tag) < 0)
        return FERRY_BAD_MSG;
    if (pg_slice_eq(tag, "DISCARD ALL") || pg_slice_eq(tag, "DEALLOCATE ALL")) {
        stmts_clear(s);
        s->inexact = false;
    } else if (pg_slice_eq(tag, "PREPARE") || pg_slice_eq(tag, "DEALLOCATE")) {
        s->inexact = true;  /* SQL-level statements share the namespace; not followed */
    }
    if (head_is(s, OP_EXECUTE))
        op_drop_head(s);
    return 0;
}

static int on_parameter_status(struct pg_state *s, const uint8_t *body, size_t n);

/* Messages that end a request, by type; 0 for the others. */
static int on_response(struct pg_state *s, uint8_t type)
{
    struct op o;
    switch (type) {
    case '1': on_parse_complete(s); break;
    case '3': on_close_complete(s); break;
    case '2':
        if (op_complete(s, OP_BIND, &o))
            op_release(s, &o);
        break;
    case 'n':
        if (op_complete(s, OP_DESCRIBE, &o))
            op_release(s, &o);
        break;
    case 'T':               /* also sent inside a simple query: ends only a Describe */
        if (head_is(s, OP_DESCRIBE))
            op_drop_head(s);
        break;
    case 'I':               /* EmptyQueryResponse: also inside a simple query */
    case 's':               /* PortalSuspended */
        if (head_is(s, OP_EXECUTE))
            op_drop_head(s);
        else if (type == 's')
            lose_track(s);
        break;
    case 'E': on_error(s); break;
    }
    return 0;
}

int pg_state_backend(struct pg_state *s, uint8_t type, const uint8_t *body, size_t n)
{
    switch (type) {
    case 'Z': return s->lost ? pg_decode_ready(body, n, &s->tx_status) : on_ready(s, body, n);
    case 'S': return on_parameter_status(s, body, n);
    case 'K':
        s->has_key = pg_decode_backend_key(body, n, &s->key) == 0;
        return s->has_key ? 0 : FERRY_BAD_MSG;
    case 'C': return s->lost ? 0 : on_command_complete(s, body, n);
    default: return s->lost ? 0 : on_response(s, type);
    }
}

/* ---- parameters ------------------------------------------------------------------- */

static char *dup_slice(struct ferry_slice v)
{
    char *c = malloc(v.len + 1);
    if (c) {
        if (v.len)
            memcpy(c, v.p, v.len);
        c[v.len] = '\0';
    }
    return c;
}

static struct param *param_find(const struct pg_state *s, struct ferry_slice name)
{
    for (size_t i = 0; i < s->nparams; i++)
        if (pg_slice_eq(name, s->params[i].name))
            return &s->params[i];
    return NULL;
}

/* Keeps the newest value; names past max_parameters are not kept. */
static int on_parameter_status(struct pg_state *s, const uint8_t *body, size_t n)
{
    struct pg_parameter_status ps;
    if (pg_decode_parameter_status(body, n, &ps) < 0)
        return FERRY_BAD_MSG;
    struct param *p = param_find(s, ps.name);
    if (!p && s->nparams >= s->lim.max_parameters)
        return 0;
    char *value = dup_slice(ps.value);
    char *name = p ? NULL : dup_slice(ps.name);
    if (!value || (!p && !name)) {
        free(value);
        free(name);
        return 0;
    }
    if (!p) {
        p = &s->params[s->nparams++];
        *p = (struct param){name, NULL};
    }
    free(p->value);
    p->value = value;
    return 0;
}

const char *pg_state_parameter(const struct pg_state *s, const char *name)
{
    struct param *p = param_find(s, (struct ferry_slice){(const uint8_t *)name, strlen(name)});
    return p ? p->value : NULL;
}

bool pg_state_parameter_at(const struct pg_state *s, size_t i, const char **name, const char **value)
{
    if (i >= s->nparams)
        return false;
    *name = s->params[i].name;
    *value = s->params[i].value;
    return true;
}

/* ---- lifetime and queries ----------------------------------------------------------- */

struct pg_state *pg_state_new(const struct pg_state_limits *limits)
{
    struct pg_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (limits)
        s->lim = *limits;
    s->lim.max_statements = s->lim.max_statements ? s->lim.max_statements : 1024;
    s->lim.max_statement_bytes = s->lim.max_statement_bytes ? s->lim.max_statement_bytes : 4u << 20;
    s->lim.max_pending = s->lim.max_pending ? s->lim.max_pending : 65536;
    s->lim.max_parameters = s->lim.max_parameters ? s->lim.max_parameters : 64;
    s->params = calloc(s->lim.max_parameters, sizeof *s->params);
    if (!s->params) {
        free(s);
        return NULL;
    }
    return s;
}

void pg_state_free(struct pg_state *s)
{
    if (!s)
        return;
    while (s->ops_len)
        op_drop_head(s);
    free(s->ops);
    stmts_clear(s);
    free(s->stmts);
    for (size_t i = 0; i < s->nparams; i++) {
        free(s->params[i].name);
        free(s->params[i].value);
    }
    free(s->params);
    free(s);
}

char pg_state_tx_status(const struct pg_state *s) { return s->tx_status; }
bool pg_state_lost(const struct pg_state *s) { return s->lost; }
bool pg_state_statements_exact(const struct pg_state *s) { return !s->inexact; }

bool pg_state_at_safe_point(const struct pg_state *s)
{
    return s->tx_status == 'I' && s->ops_len == 0 && !s->skipping && !s->lost;
}

bool pg_state_backend_key(const struct pg_state *s, struct pg_backend_key *out)
{
    if (s->has_key)
        *out = s->key;
    return s->has_key;
}

const struct pg_statement *pg_state_statement(const struct pg_state *s, const char *name, size_t len)
{
    bool found;
    size_t i = stmt_find(s, name, len, &found);
    return found ? s->stmts[i] : NULL;
}

size_t pg_state_statement_count(const struct pg_state *s) { return s->nstmts; }

const struct pg_statement *pg_state_statement_at(const struct pg_state *s, size_t i)
{
    return i < s->nstmts ? s->stmts[i] : NULL;
}
