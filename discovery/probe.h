/* SQL probes: one per (listener, cluster). A probe resolves the endpoint's
 * name (uv_getaddrinfo, every run), connects to the first address (reusing
 * its connection while it stays healthy and the name still points there),
 * asks whether the server accepts writes, and reports one result per run.
 * TLS follows the listener's backend_tls, as sessions do. Everything is
 * non-blocking on the discovery loop; every run has a deadline, and any
 * error or timeout throws the connection away so a dead server can never
 * wedge the monitor.
 */
#ifndef FERRY_PROBE_H
#define FERRY_PROBE_H

#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <uv.h>

#include "ferry/config.h"
#include "ferry/tls.h"

struct disc_probe;

/* One instance of an Aurora global database, as Aurora itself reports it
 * (PostgreSQL: aurora_global_db_instance_status(); MySQL:
 * information_schema.aurora_global_db_instance_status). */
#define DISC_TOPO_MAX 16
struct disc_topo_member {
    char server_id[64];         /* the DB instance identifier */
    char region[32];            /* aws_region */
    bool writer;                /* session_id = 'MASTER_SESSION_ID': the global writer */
    double lag_ms;              /* visibility_lag_in_msec; < 0 unknown */
};

/* The trust store of a verify mode without backend_tls.ca_file. Sessions
 * load OpenSSL's default paths (proxy/tls.c); on Debian its default file,
 * /usr/lib/ssl/cert.pem, is a link to this bundle. libpq 15 has no
 * sslrootcert=system, and Connector/C verifies a chain only with a CA set. */
#define DISC_SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

struct disc_probe_result {
    bool ok;                    /* connected and got an answer */
    bool writable;              /* ok: the server accepts writes */
    bool aurora;                /* ok: Aurora status functions/tables exist */
    bool replicating;           /* ok: still applying a replication stream (MariaDB), so not
                                   the writer whatever read_only says */
    uint32_t timeline;          /* ok, PostgreSQL not in recovery: its timeline (0 unknown) */
    char writer_addr[INET6_ADDRSTRLEN]; /* what the writer endpoint resolved to this run ("") */
    size_t ntopo;               /* ok, Aurora: the global topology as this instance sees it */
    struct disc_topo_member topo[DISC_TOPO_MAX];
    bool inactive;              /* the writer endpoint's name does not exist (NXDOMAIN):
                                   an Aurora secondary's writer endpoint. A state, not a
                                   failure. ok too: the reader endpoint answered */
    bool tls_failed;            /* !ok: the TLS handshake or a check backend_tls
                                   asks for failed (detail names the check) */
    char detail[256];           /* ok: what the server said; else why it failed */
    double latency_ms;
};

typedef void (*disc_probe_cb)(struct disc_probe *p, const struct disc_probe_result *r, void *ud);

/* Engine-specific part: a step function driven by socket readiness. */
struct disc_engine {
    const char *name;
    /* Starts or continues the work; returns the uv poll events it waits for,
     * 0 when finished (the result is filled in), or -1 on a fatal error (the
     * result's detail says why). fd is set to the socket to wait on. */
    int (*step)(struct disc_probe *p, struct disc_probe_result *r, int *fd);
    void (*drop)(struct disc_probe *p);   /* discard the connection (non-blocking) */
};

extern const struct disc_engine disc_engine_pg;
extern const struct disc_engine disc_engine_mysql;

struct disc_probe {
    uv_loop_t *loop;
    const struct disc_engine *engine;
    char listener[FERRY_NAME_MAX];
    char cluster[FERRY_NAME_MAX];
    struct ferry_hostport writer_ep;    /* the cluster's (writer) endpoint */
    struct ferry_hostport reader_ep;    /* its reader endpoint; host "" = none */
    struct ferry_hostport endpoint;     /* this run's target: writer_ep, or reader_ep while
                                           the writer endpoint does not resolve */
    bool via_reader;            /* this run fell back to the reader endpoint */
    enum ferry_tls_mode tls_mode;   /* the listener's backend_tls.mode */
    char tls_mode_name[16];     /* the same as libpq's sslmode */
    char *tls_ca_file;          /* owned copy of backend_tls.ca_file; NULL = system bundle */
    bool allow_insecure_password; /* backend_tls.allow_insecure_password */
    char user[FERRY_NAME_MAX];
    char *password;             /* owned copy; never logged */
    char database[FERRY_NAME_MAX];
    double timeout;             /* seconds */
    struct ferry_tcp_cfg tcp;   /* the listener's server_tcp_keepalive / _user_timeout */

    /* this run's target: the endpoint's first address (the name itself
     * stays the TLS identity) */
    char addr[INET6_ADDRSTRLEN];

    /* engine state */
    void *conn;                 /* PGconn* / MYSQL* ; NULL = not connected */
    char conn_addr[INET6_ADDRSTRLEN];   /* the address conn is connected to */
    int phase;                  /* engine-defined */
    int attempts;               /* engine-defined: connects started in this run */
    bool tls_named;             /* engine-defined: the TLS identity was set in time */
    void *tls_hooked;           /* engine-defined: the TLS object a hook was put on */
    long tls_verify_error;      /* engine-defined: X509 error the handshake saw (0 = none) */
    bool aurora_checked;
    bool aurora;
    bool aurora_global;         /* engine-defined: Aurora's global topology is there to read
                                   (MySQL: information_schema has the table) */
    void *scratch;              /* engine-defined (e.g. a MYSQL_RES) */

    /* driver state */
    bool running;
    bool closing;
    bool resolving;             /* gai is in flight (it may outlive a timed-out run) */
    bool deadline_closed;       /* closing: the timer has closed (close_cb waits for gai) */
    uv_getaddrinfo_t gai;
    uint64_t started_ns;
    uv_poll_t *poll;            /* owned; re-created when the socket changes */
    int poll_fd;
    uv_timer_t deadline;
    int ready_events;           /* UV_READABLE/UV_WRITABLE seen by the last poll */
    disc_probe_cb cb;
    void *ud;
    void (*close_cb)(struct disc_probe *p);
    struct disc_probe_result result;
};

/* The first address of a lookup as text ("127.0.0.1", "::1"): what the
 * probes and the global writer endpoint lookup compare. 0 or a uv error. */
int disc_addr_name(const struct addrinfo *ai, char *out, size_t len);

/* Initialises p (the caller owns the memory and the strings are copied). */
int disc_probe_init(struct disc_probe *p, uv_loop_t *loop, const struct disc_engine *engine,
                    const char *listener, const struct ferry_cluster_cfg *cluster,
                    const struct ferry_listener_cfg *lcfg, double timeout);

/* Starts one run; cb is called exactly once, on the loop. No-op (returns
 * UV_EBUSY) while a run is in progress. */
int disc_probe_run(struct disc_probe *p, disc_probe_cb cb, void *ud);

/* Drops the connection and closes the handles; close_cb(p) once done. */
void disc_probe_close(struct disc_probe *p, void (*close_cb)(struct disc_probe *p));

#endif
