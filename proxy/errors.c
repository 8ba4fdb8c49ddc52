/* Errors ferry originates before any server has spoken, in the client's
 * protocol: a PostgreSQL FATAL ErrorResponse (libpq reads it even in answer
 * to an SSLRequest) or a MySQL ERR packet with sequence id 0 in place of the
 * server greeting (what mysqld itself sends for "Too many connections").
 */
#include <stdio.h>
#include <string.h>

#include "ferry/log.h"
#include "pg/codec.h"
#include "proxy.h"
#include "session.h"

struct err_code {
    const char *sqlstate;
    uint16_t mysql_errno;
};

static struct err_code code_of(enum ferry_proto proto, enum px_err kind)
{
    switch (kind) {
    case PX_ERR_TOO_MANY_CLIENTS:
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08004", 1040}   /* ER_CON_COUNT_ERROR */
                                          : (struct err_code){"53300", 0};     /* too_many_connections */
    case PX_ERR_NO_WRITER:
        /* 57P03 cannot_connect_now; MySQL 1053 ER_SERVER_SHUTDOWN (08S01): both retryable */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08S01", 1053}
                                          : (struct err_code){"57P03", 0};
    case PX_ERR_PROTOCOL:   /* 08P01 protocol_violation; MySQL ER_NET_PACKETS_OUT_OF_ORDER-class */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08S01", 1156}
                                          : (struct err_code){"08P01", 0};
    case PX_ERR_UNSUPPORTED:
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08004", 1251}
                                          : (struct err_code){"0A000", 0};
    case PX_ERR_WRITER_MOVED:   /* 57P01 admin_shutdown: pools reconnect */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08S01", 1053}
                                          : (struct err_code){"57P01", 0};
    case PX_ERR_TXN_LOST:       /* 40001 serialization_failure: "retry the transaction" */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"40001", 1213}
                                          : (struct err_code){"40001", 0};
    case PX_ERR_OUTCOME_UNKNOWN: /* 08007 transaction_resolution_unknown. MySQL sessions are
                                    closed instead (clients then report their own 2013);
                                    1927 ER_CONNECTION_KILLED if it ever gets here */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"70100", 1927}
                                          : (struct err_code){"08007", 0};
    case PX_ERR_TLS_REQUIRED:   /* 28000 invalid_authorization_specification (as pg_hba) */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"28000", 3159}
                                          : (struct err_code){"28000", 0};
    case PX_ERR_AUTH_FAILED:    /* 28P01 invalid_password; MySQL ER_ACCESS_DENIED_ERROR */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"28000", 1045}
                                          : (struct err_code){"28P01", 0};
    case PX_ERR_IDLE_TIMEOUT:
        /* 57P05 idle_session_timeout, what PostgreSQL's idle_session_timeout
         * sends; MySQL 8.0.24+ sends 4031 ER_CLIENT_INTERACTION_TIMEOUT
         * (HY000) for wait_timeout */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"HY000", 4031}
                                          : (struct err_code){"57P05", 0};
    case PX_ERR_LOGIN_TIMEOUT:
        /* 08P01 as PgBouncer's client_login_timeout; MySQL 1159
         * ER_NET_READ_INTERRUPTED "Got timeout reading communication packets" */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08S01", 1159}
                                          : (struct err_code){"08P01", 0};
    case PX_ERR_BACKEND_DOWN:
        /* not 2003: Connector/C takes a server-sent 2xxx (a client-side
         * number) for a malformed packet. 1053 ER_SERVER_SHUTDOWN: retry */
        return proto == FERRY_PROTO_MYSQL ? (struct err_code){"08S01", 1053}
                                          : (struct err_code){"08006", 0};     /* connection_failure */
    }
    return (struct err_code){"XX000", 1105};
}

void px_error_message(enum ferry_proto proto, enum px_err kind, const char *text,
                      struct ferry_wbuf *out)
{
    struct err_code code = code_of(proto, kind);
    if (proto == FERRY_PROTO_POSTGRESQL) {
        pg_build_error(out, "FATAL", code.sqlstate, text);  /* adds the "ferry: " prefix */
        return;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "ferry: %s", text);
    size_t start = out->len;
    ferry_wbuf_u24le(out, 0);
    ferry_wbuf_u8(out, 0);              /* sequence id: first packet */
    ferry_wbuf_u8(out, 0xff);
    ferry_wbuf_u16le(out, code.mysql_errno);
    ferry_wbuf_u8(out, '#');
    ferry_wbuf_put(out, code.sqlstate, 5);
    ferry_wbuf_put(out, msg, strlen(msg));
    ferry_wbuf_patch_u24le(out, start, (uint32_t)(out->len - start - 4));
}

void px_session_login_refused(struct px_session *s, const char *code, const char *sqlstate,
                              const char *msg, size_t msglen)
{
    bool auth = strncmp(sqlstate, "28", 2) == 0;
    struct px_counters *c = px_session_stats(s);
    if (auth)
        PX_STAT_ADD(c->errors_auth, 1);
    else
        PX_STAT_ADD(c->errors_backend_refused, 1);
    /* the server's words, bounded: they may quote a user or database name */
    char text[256], esc_code[FERRY_LOG_QUOTED_MAX(16)], esc_text[FERRY_LOG_QUOTED_MAX(sizeof text)];
    snprintf(text, sizeof text, "%.*s", (int)(msglen < sizeof text ? msglen : sizeof text - 1),
             msg ? msg : "");
    ferry_log(FERRY_LOG_INFO, "session.login_refused",
              "listener=%s session=%llu cluster=%s class=%s code=\"%s\" message=\"%s\" "
              "detail=\"the server refused the client's login; the client has its error\"",
              s->pl->name, (unsigned long long)s->id, s->cluster, auth ? "auth" : "backend_refused",
              ferry_log_escape(code, esc_code, sizeof esc_code),
              ferry_log_escape(text, esc_text, sizeof esc_text));
}
