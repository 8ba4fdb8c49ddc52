/* ferry configuration: the parsed, validated, immutable form of ferry.json.
 *
 * A config is built once by ferry_config_load() and never changed after; a
 * reload builds a new one. It is reference-counted so that listeners and
 * sessions opened under an older config keep theirs alive until they end.
 */
#ifndef FERRY_CONFIG_H
#define FERRY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FERRY_NAME_MAX 64
#define FERRY_HOST_MAX 256
#define FERRY_ERR_MAX 512

enum ferry_log_level { FERRY_LOG_DEBUG, FERRY_LOG_INFO, FERRY_LOG_WARN, FERRY_LOG_ERROR };

enum ferry_proto { FERRY_PROTO_POSTGRESQL, FERRY_PROTO_MYSQL };

/* A "host:port" pair as written in the config; host is a name or a literal
 * address (IPv6 literals without the brackets). */
struct ferry_hostport {
    char host[FERRY_HOST_MAX];
    uint16_t port;
};

struct ferry_cluster_cfg {
    char name[FERRY_NAME_MAX];
    char region[FERRY_NAME_MAX];        /* optional, "" if not given */
    char db_cluster_identifier[FERRY_NAME_MAX]; /* optional: AWS DBClusterIdentifier */
    struct ferry_hostport endpoint;     /* the writer (cluster) endpoint: clients go here */
    struct ferry_hostport reader_endpoint; /* optional (host "" = none): probed while the
                                           writer endpoint does not resolve (an Aurora
                                           secondary), so its health and Aurora's topology
                                           are still seen */
    bool writer;                        /* static route until discovery lands */
};

/* TCP options ferry sets on one side's connections (listeners[].client_tcp_keepalive,
 * .server_tcp_keepalive, .server_tcp_user_timeout); ferry_tcp_apply() sets them. */
struct ferry_tcp_cfg {
    bool keepalive;                     /* SO_KEEPALIVE */
    uint16_t keepalive_idle;            /* seconds without traffic before the first probe */
    uint16_t keepalive_interval;        /* seconds between unanswered probes */
    uint16_t keepalive_count;           /* unanswered probes that end the connection */
    uint32_t user_timeout_ms;           /* TCP_USER_TIMEOUT: 0 = the kernel's (minutes) */
};

/* How ferry checks a client's password in terminated mode. */
enum ferry_auth_method {
    FERRY_AUTH_SCRAM, FERRY_AUTH_MD5, FERRY_AUTH_TRUST,             /* postgresql */
    FERRY_AUTH_MYSQL_NATIVE, FERRY_AUTH_CACHING_SHA2,               /* mysql */
};

/* A user of a listener with terminated authentication: ferry checks the
 * client itself, then logs into every backend as this user with password. */
struct ferry_user_cfg {
    char name[FERRY_NAME_MAX];
    enum ferry_auth_method method;      /* what ferry asks of the client */
    char *password;                     /* owned: backend password (and the client's unless
                                           scram_verifier is given). Never log it */
    char *scram_verifier;               /* owned; NULL = derived from password */
    void *derived;                      /* owned. postgresql: the SCRAM secret (struct
                                           pg_scram_secret), attached by the loader; mysql:
                                           atomic, the login cache made on first use */
};

struct ferry_listener_cfg {
    char name[FERRY_NAME_MAX];
    enum ferry_proto protocol;
    struct ferry_hostport bind;
    uint32_t max_client_connections;
    uint32_t max_login_clients;         /* clients not logged in yet (all workers) */
    uint32_t max_login_clients_per_source; /* ... of them from one client address */
    double client_login_timeout;        /* seconds from accept to a completed login */
    double connect_timeout;             /* seconds */
    size_t session_buffer;              /* bytes per session and direction */
    uint32_t max_message_size;          /* PostgreSQL: largest message length accepted */
    double client_idle_timeout;         /* seconds an idle client may send nothing; 0 = off */
    struct ferry_tcp_cfg client_tcp;    /* keepalive towards clients */
    struct ferry_tcp_cfg server_tcp;    /* keepalive and user timeout towards backends
                                           (sessions and probes) */
    bool probe_enabled;                 /* "probe" given: discovery decides the writer */
    char aws_global_cluster[FERRY_NAME_MAX]; /* "" = no AWS signals for this listener */
    char global_writer_endpoint[FERRY_HOST_MAX]; /* Aurora's global writer endpoint (a name),
                                           "" = learned from DescribeGlobalClusters, if used */
    char probe_user[FERRY_NAME_MAX];
    char *probe_password;               /* owned; NULL = none. Never log it */
    char probe_database[FERRY_NAME_MAX];
    struct ferry_cluster_cfg *clusters; /* owned, nclusters entries */
    size_t nclusters;
    char *tls_cert_file;                /* owned; NULL = no TLS towards clients */
    char *tls_key_file;                 /* owned */
    bool tls_required;                  /* clients without TLS are refused */
    char tls_min_version[8];            /* "1.2" or "1.3" */
    char *tls_ciphers;                  /* owned; NULL = FERRY_TLS_DEFAULT_CIPHERS (TLS 1.2) */
    char *tls_ciphersuites;             /* owned; NULL = OpenSSL's TLS 1.3 suites */
    void *tls_server_ctx;               /* struct ferry_tls_ctx *, attached by the loader
                                           (proxy/main.c); released by on_free */
    char backend_tls_mode[16];          /* disable | prefer | require | verify-ca | verify-full */
    char *backend_tls_ca_file;          /* owned; NULL = the system's store */
    bool backend_allow_insecure_password; /* a password may go in a form the server can
                                           read (cleartext, RSA under its key) to a server
                                           ferry has not verified: see
                                           px_session_may_reveal_password() */
    void *tls_backend_ctx;              /* struct ferry_tls_ctx *, attached by the loader;
                                           NULL when the mode is disable */
    bool auth_terminated;               /* "auth": {"mode": "terminated"} */
    char server_version[64];            /* mysql terminated: greeting's version; "" = the
                                           backends' (learned from their greetings) */
    void *mysql_rsa_key;                /* EVP_PKEY *, attached by the loader when a mysql
                                           user takes caching_sha2_password; on_free frees */
    uint32_t scram_mock_iterations;     /* postgresql terminated: the SCRAM iteration count
                                           unknown users are shown (most verifiers' count),
                                           set by the loader */
    bool mock_md5;                      /* postgresql terminated: unknown users are asked for
                                           MD5 (more users take md5 than scram-sha-256) */
    struct ferry_user_cfg *users;       /* owned, nusers entries (terminated mode) */
    size_t nusers;
};

/* Writer discovery tunables (top-level "discovery"). */
struct ferry_discovery_cfg {
    double probe_interval;              /* seconds between probe rounds */
    double probe_timeout;               /* seconds a probe (connect + query) may take */
    unsigned writer_down_after;         /* consecutive failed probes that drop a writer */
    double hold_timeout;                /* seconds a new client waits for a writer */
};

/* AWS access for the discovery signals (top-level "aws"). Strings owned. */
struct ferry_aws_cfg {
    char *region;                       /* NULL = AWS_REGION / AWS_DEFAULT_REGION */
    double poll_interval;               /* DescribeGlobalClusters heartbeat, seconds */
    double urgent_poll_interval;        /* ... while probes cannot settle the writer or a
                                           failover is in progress, seconds */
    double lag_poll_interval;           /* GetMetricData, seconds */
    char *rds_endpoint;                 /* NULL = https://rds.<region>.amazonaws.com */
    char *monitoring_endpoint;
    char *sts_endpoint;
    char *imds_endpoint;
    char *ca_file;
    int credentials;                    /* enum aws_cred_source; 0 = the chain */
};

struct ferry_config {
    char *path;                         /* owned: file it was loaded from */
    struct ferry_discovery_cfg discovery;
    struct ferry_aws_cfg aws;
    unsigned workers;                   /* resolved: never 0 */
    enum ferry_log_level log_level;
    double shutdown_timeout;            /* seconds */
    bool watch_config;                  /* reload when the file (or its symlink) changes */
    bool admin_enabled;
    struct ferry_hostport admin_bind;
    char *admin_token;                  /* owned; NULL = mutating endpoints open. Never log it */
    unsigned admin_max_connections;     /* admin connections open at once (all peers) */
    unsigned admin_max_connections_per_peer; /* ... from one client address */
    double admin_request_timeout;       /* seconds to send a whole request, and to take its answer */
    bool admin_allow_unauthenticated_writes; /* a non-loopback admin.bind without a token is
                                           refused unless this is set */
    enum { FERRY_LOG_TEXT, FERRY_LOG_JSON } log_format;
    struct ferry_listener_cfg *listeners; /* owned, nlisteners entries */
    size_t nlisteners;
    int refs;                           /* atomic; see ferry_config_ref() */
    /* Releases what a loader attached to the config (TLS contexts); NULL = nothing. */
    void (*on_free)(struct ferry_config *cfg);
};

/* Loads and validates path. On success returns a config with one reference.
 * On failure returns NULL and writes "path: key.path: reason" into err.
 * Thread: any; no global state. */
struct ferry_config *ferry_config_load(const char *path, char err[FERRY_ERR_MAX]);

/* Only the admin section of path (bind, token, limits), validated as
 * ferry_config_load does; no listener is read and no other file or
 * environment variable is needed (`ferry ctl -c`). */
struct ferry_config *ferry_config_load_admin(const char *path, char err[FERRY_ERR_MAX]);

/* Same, from a string already in memory; path is used in messages only. */
struct ferry_config *ferry_config_parse(const char *path, const char *json,
                                        char err[FERRY_ERR_MAX]);

/* Reference counting; thread-safe. unref frees at zero. NULL is ignored. */
struct ferry_config *ferry_config_ref(struct ferry_config *cfg);
void ferry_config_unref(struct ferry_config *cfg);

/* Listener by name, or NULL. */
const struct ferry_listener_cfg *ferry_config_listener(const struct ferry_config *cfg,
                                                        const char *name);

/* Cluster by name, or NULL. */
const struct ferry_cluster_cfg *ferry_listener_cluster(const struct ferry_listener_cfg *l,
                                                       const char *name);

/* User by name in a terminated-auth listener, or NULL. */
const struct ferry_user_cfg *ferry_listener_user(const struct ferry_listener_cfg *l, const char *name);

/* The cluster that static routing sends clients to (marked writer, else the first). */
const struct ferry_cluster_cfg *ferry_listener_static_writer(const struct ferry_listener_cfg *l);

/* Parses "host:port" / "[v6]:port". Returns 0, or -1 with reason in why. */
int ferry_hostport_parse(const char *s, struct ferry_hostport *out, char *why, size_t whylen);

/* Formats as "host:port" or "[v6]:port". */
void ferry_hostport_format(const struct ferry_hostport *hp, char *out, size_t outlen);

bool ferry_hostport_equal(const struct ferry_hostport *a, const struct ferry_hostport *b);
/* Whether hp is a loopback address (127.0.0.0/8, ::1, "localhost"). */
bool ferry_hostport_loopback(const struct ferry_hostport *hp);
/* The admin endpoint takes POSTs from anyone who reaches it: enabled, no
 * token, not on loopback (only with admin.allow_unauthenticated_writes). */
bool ferry_config_admin_open(const struct ferry_config *cfg);
/* Two binds collide when they share a port and either host, or a wildcard
 * (IPv4 or IPv6: conservative). */
bool ferry_hostport_collide(const struct ferry_hostport *a, const struct ferry_hostport *b);

/* Sets t's options on a connected (or connecting) TCP socket. 0 or -errno
 * of the first setsockopt that failed (the others are still tried). */
int ferry_tcp_apply(int fd, const struct ferry_tcp_cfg *t);

const char *ferry_proto_name(enum ferry_proto p);
const char *ferry_log_level_name(enum ferry_log_level l);

#endif
