/* PostgreSQL probe engine: libpq's non-blocking connect (PQconnectStartParams
 * + PQconnectPoll) and query (PQsendQuery + PQconsumeInput), driven by the
 * probe driver. Writable = not in recovery and transactions not read-only.
 * TLS: libpq's sslmode is backend_tls.mode (the same names); it connects to
 * the resolved address (hostaddr) and checks the certificate against the
 * endpoint's name (host).
 */
#include <libpq-fe.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"

enum { PG_IDLE, PG_CONNECTING, PG_FLUSHING, PG_READING };

/* The first query on a connection also asks whether Aurora's global
 * database status function exists; later ones skip that. A primary also
 * names its current WAL file, whose first 8 hex digits are its timeline: a
 * promoted standby starts a newer one, which tells a promoted cluster from
 * the primary it left when both accept writes (needs no privilege). */
#define QUERY_TIMELINE \
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END"
static const char *const QUERY_FIRST =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), "
    "to_regproc('aurora_global_db_instance_status') IS NOT NULL, " QUERY_TIMELINE;
static const char *const QUERY =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), NULL, " QUERY_TIMELINE;
/* On Aurora, every later round also reads the global topology, which any
 * instance of any region reports: who the global writer is
 * (MASTER_SESSION_ID), in which region, and each instance's lag. A second
 * statement of the same Query: if it fails (a grant missing), the first
 * result still counts and the topology is simply unknown. */
static const char *const QUERY_AURORA =
    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'), NULL, " QUERY_TIMELINE
    "; SELECT 'topology', server_id, session_id = 'MASTER_SESSION_ID', aws_region, "
    "visibility_lag_in_msec FROM aurora_global_db_instance_status()";

static int fail(struct disc_probe_result *r, const char *what, PGconn *c)
{
    const char *msg = c ? PQerrorMessage(c) : "out of memory";
    size_t n = strcspn(msg, "\n");
    snprintf(r->detail, sizeof r->detail, "%s: %.*s", what, (int)(n > 200 ? 200 : n), msg);
    return -1;
}

/* A failure while libpq was in its TLS phase (SSLRequest answer, handshake,
 * certificate and host name checks). libpq 15 says only "certificate verify
 * failed"; the reason comes from the verify callback below. */
static int tls_fail(struct disc_probe *p, struct disc_probe_result *r, PGconn *c)
{
    r->tls_failed = true;
    if (p->tls_verify_error != X509_V_OK) {
        snprintf(r->detail, sizeof r->detail, "TLS: certificate verify failed: %s",
                 X509_verify_cert_error_string(p->tls_verify_error));
        return -1;
    }
    /* 'connection to server at "10.0.0.1", port 5432 failed: <what>' */
    const char *msg = PQerrorMessage(c);
    const char *what = strstr(msg, " failed: ");
    what = what ? what + 9 : msg;
    size_t n = strcspn(what, "\n");
    snprintf(r->detail, sizeof r->detail, "TLS: %.*s", (int)(n > 240 ? 240 : n), what);
    return -1;
}

static int verify_index = -1;
static pthread_once_t verify_once = PTHREAD_ONCE_INIT;

static void verify_index_init(void)
{
    verify_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Notes why the chain failed, and changes nothing: libpq's own callback
 * also returns ok as is. */
static int verify_cb(int ok, X509_STORE_CTX *ctx)
{
    if (!ok) {
        SSL *ssl = X509_STORE_CTX_get_ex_data(ctx, SSL_get_ex_data_X509_STORE_CTX_idx());
        struct disc_probe *p = ssl ? SSL_get_ex_data(ssl, verify_index) : NULL;
        if (p && p->tls_verify_error == X509_V_OK)
            p->tls_verify_error = X509_STORE_CTX_get_error(ctx);
    }
    return ok;
}

/* Once libpq has made its SSL object (it waits for the server's reply to
 * its ClientHello), hook the verify callback onto it. A server answering
 * within the same call as the ClientHello left would only cost the reason. */
static void hook_tls(struct disc_probe *p, PGconn *c)
{
    if (p->tls_mode < FERRY_TLS_VERIFY_CA)
        return;
    SSL *ssl = PQsslStruct(c, "OpenSSL");
    if (!ssl || ssl == p->tls_hooked)
        return;
    pthread_once(&verify_once, verify_index_init);
    if (verify_index < 0 || !SSL_set_ex_data(ssl, verify_index, p))
        return;
    SSL_set_verify(ssl, SSL_get_verify_mode(ssl), verify_cb);
    p->tls_hooked = ssl;
}

/* The probe password may reach the server only as SCRAM with channel
 * binding: the server is not verified and the config does not allow more. */
static bool password_guarded(const struct disc_probe *p)
{
    return p->tls_mode < FERRY_TLS_VERIFY_CA && !p->allow_insecure_password && p->password &&
           p->password[0];
}

/* A login that failed; libpq's words for the guard above say "channel
 * binding", which means nothing to an operator who never asked for it. */
static int connect_fail(struct disc_probe *p, struct disc_probe_result *r, PGconn *c)
{
    if (!password_guarded(p) || !strstr(PQerrorMessage(c), "channel binding"))
        return fail(r, "connect", c);
    r->tls_failed = true;
    snprintf(r->detail, sizeof r->detail,
             "refused to log in: the server is not verified (backend_tls.mode %s) and did not "
             "offer SCRAM over TLS, the one way the probe password cannot be read by it; use "
             "verify-full or set backend_tls.allow_insecure_password", p->tls_mode_name);
    return -1;
}

static int start_connect(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    char port[8], timeout[16], ka_idle[8], ka_intvl[8], ka_cnt[8], user_timeout[16];
    snprintf(port, sizeof port, "%u", p->endpoint.port);
    snprintf(timeout, sizeof timeout, "%d", (int)(p->timeout + 0.999));
    /* the listener's TCP options, as libpq's own parameters name them */
    snprintf(ka_idle, sizeof ka_idle, "%u", p->tcp.keepalive_idle);
    snprintf(ka_intvl, sizeof ka_intvl, "%u", p->tcp.keepalive_interval);
    snprintf(ka_cnt, sizeof ka_cnt, "%u", p->tcp.keepalive_count);
    snprintf(user_timeout, sizeof user_timeout, "%u", p->tcp.user_timeout_ms);
    /* Verify modes check against backend_tls.ca_file or the system bundle.
     * Without verification (prefer, require) sslrootcert names a file that
     * cannot exist: else a ~/.postgresql/root.crt would make libpq verify
     * where sessions do not. */
    const char *rootcert = p->tls_mode >= FERRY_TLS_VERIFY_CA
                               ? (p->tls_ca_file ? p->tls_ca_file : DISC_SYSTEM_CA_BUNDLE)
                               : "/dev/null/no-root-cert";
    /* A server ferry has not verified must not get the probe password in
     * cleartext. libpq 15 has no require_auth (16 has): channel_binding=
     * require is its one way to refuse a cleartext (or MD5) request before
     * answering it, and SCRAM-SHA-256-PLUS also exposes a TLS man in the
     * middle. So an unverified probe logs in only with SCRAM over TLS. */
    bool guard = password_guarded(p);
    const char *keys[] = {"host", "hostaddr", "port", "user", "password", "dbname",
                          "application_name", "connect_timeout", "sslmode", "sslrootcert",
                          "channel_binding", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "tcp_user_timeout", NULL};
    const char *vals[] = {p->endpoint.host, p->addr, port, p->user,
                          p->password ? p->password : "", p->database, "ferry-probe", timeout,
                          p->tls_mode_name, rootcert, guard ? "require" : "prefer",
                          p->tcp.keepalive ? "1" : "0", ka_idle, ka_intvl, ka_cnt, user_timeout,
                          NULL};
    p->tls_hooked = NULL;
    p->tls_verify_error = X509_V_OK;
    PGconn *c = PQconnectStartParams(keys, vals, 0);
    p->conn = c;
    if (!c || PQstatus(c) == CONNECTION_BAD)
        return fail(r, "connect", c);
    p->phase = PG_CONNECTING;
    *fd = PQsocket(c);
    return UV_WRITABLE;     /* libpq: start as if PQconnectPoll returned WRITING */
}

static int send_query(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    PGconn *c = p->conn;
    const char *q = !p->aurora_checked ? QUERY_FIRST : p->aurora ? QUERY_AURORA : QUERY;
    if (PQsetnonblocking(c, 1) != 0 || !PQsendQuery(c, q))
        return fail(r, "query", c);
    p->phase = PG_FLUSHING;
    *fd = PQsocket(c);
    return UV_WRITABLE;
}

static void read_row(struct disc_probe *p, struct disc_probe_result *r, PGresult *res)
{
    const char *recovery = PQgetvalue(res, 0, 0);
    const char *ro = PQgetvalue(res, 0, 1);
    if (!p->aurora_checked) {
        p->aurora = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
        p->aurora_checked = true;
    }
    r->ok = true;
    r->aurora = p->aurora;
    r->writable = strcmp(recovery, "f") == 0 && strcmp(ro, "off") == 0;
    const char *wal = PQgetvalue(res, 0, 3);
    char tl[9] = "";
    if (!PQgetisnull(res, 0, 3) && strlen(wal) >= 8 && strspn(wal, "0123456789ABCDEFabcdef") >= 8) {
        memcpy(tl, wal, 8);
        r->timeline = (uint32_t)strtoul(tl, NULL, 16);
    }
    if (r->timeline)
        snprintf(r->detail, sizeof r->detail, "in_recovery=%s transaction_read_only=%s timeline=%u",
                 strcmp(recovery, "t") == 0 ? "true" : "false", ro, r->timeline);
    else
        snprintf(r->detail, sizeof r->detail, "in_recovery=%s transaction_read_only=%s",
                 strcmp(recovery, "t") == 0 ? "true" : "false", ro);
}

static void read_topology(struct disc_probe_result *r, PGresult *res)
{
    int n = PQntuples(res);
    r->ntopo = 0;
    for (int i = 0; i < n && r->ntopo < DISC_TOPO_MAX; i++) {
        struct disc_topo_member *m = &r->topo[r->ntopo++];
        snprintf(m->server_id, sizeof m->server_id, "%s", PQgetvalue(res, i, 1));
        m->writer = strcmp(PQgetvalue(res, i, 2), "t") == 0;
        snprintf(m->region, sizeof m->region, "%s", PQgetvalue(res, i, 3));
        m->lag_ms = PQgetisnull(res, i, 4) ? -1.0 : strtod(PQgetvalue(res, i, 4), NULL);
    }
}

static int pg_step(struct disc_probe *p, struct disc_probe_result *r, int *fd)
{
    PGconn *c = p->conn;
    switch (p->phase) {
    case PG_IDLE:
        return c ? send_query(p, r, fd) : start_connect(p, r, fd);
    case PG_CONNECTING: {
        bool in_tls = PQstatus(c) == CONNECTION_SSL_STARTUP;
        switch (PQconnectPoll(c)) {
        case PGRES_POLLING_FAILED:
            return in_tls ? tls_fail(p, r, c) : connect_fail(p, r, c);
        case PGRES_POLLING_READING:
            hook_tls(p, c);
            *fd = PQsocket(c);
            return UV_READABLE;
        case PGRES_POLLING_WRITING:
            hook_tls(p, c);
            *fd = PQsocket(c);
            return UV_WRITABLE;
        default:
            return send_query(p, r, fd);
        }
    }
    case PG_FLUSHING: {
        if ((p->ready_events & UV_READABLE) && !PQconsumeInput(c))
            return fail(r, "query", c);
        int rc = PQflush(c);
        if (rc < 0)
            return fail(r, "query", c);
        *fd = PQsocket(c);
        if (rc == 1)
            return UV_READABLE | UV_WRITABLE;
        p->phase = PG_READING;
        return UV_READABLE;
    }
    case PG_READING:
        if (!PQconsumeInput(c))
            return fail(r, "query", c);
        while (!PQisBusy(c)) {
            PGresult *res = PQgetResult(c);
            if (!res) {
                p->phase = PG_IDLE;
                return r->ok ? 0 : fail(r, "query", c);
            }
            if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && PQnfields(res) == 4)
                read_row(p, r, res);
            else if (PQresultStatus(res) == PGRES_TUPLES_OK && PQnfields(res) == 5 && r->ok)
                read_topology(r, res);
            PQclear(res);
        }
        *fd = PQsocket(c);
        return UV_READABLE;
    }
    snprintf(r->detail, sizeof r->detail, "internal: bad phase %d", p->phase);
    return -1;
}

static void pg_drop(struct disc_probe *p)
{
    if (p->conn)
        PQfinish(p->conn);
    p->conn = NULL;
    p->tls_hooked = NULL;
    p->phase = PG_IDLE;
    p->aurora_checked = false;
}

const struct disc_engine disc_engine_pg = {"postgresql", pg_step, pg_drop};
