/* Internals shared by the modules of proxy/: the runtime objects (listener,
 * worker, session) and the hand-offs between the main thread and workers.
 *
 * Threads: the main thread owns the listener registry and reloads; each
 * worker thread owns its loop, its listening handles and its sessions
 * outright; the admin thread only reads counters (relaxed atomics).
 */
#ifndef FERRY_PROXY_H
#define FERRY_PROXY_H

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#include "ferry/config.h"
#include "ferry/list.h"
#include "ferry/log.h"
#include "ferry/outq.h"
#include "ferry/topology.h"
#include "ferry/wbuf.h"


/* Counters one worker keeps for one listener. Written only by that worker,
 * read by the admin thread: relaxed atomics, one cache line per worker so the
 * workers never share a line. */
struct px_counters {
    uint64_t accepted;              /* client connections accepted */
    uint64_t refused;               /* closed at once: over max_client_connections,
                                       max_login_clients or max_login_clients_per_source */
    uint64_t login_timeouts;        /* no complete login within client_login_timeout */
    uint64_t active;                /* client sessions open now */
    uint64_t backends;              /* backend connections open now */
    uint64_t backend_connect_failed;
    uint64_t bytes_from_clients;
    uint64_t bytes_from_servers;
    uint64_t held;                  /* clients waiting for a writer now */
    uint64_t waiting_to_move;       /* idle sessions without a backend, moving when used */
    uint64_t queries;               /* PG: ReadyForQuery seen; MySQL: command responses */
    uint64_t transactions;          /* transactions ended (PG: T/E -> I; MySQL: IN_TRANS cleared) */
    uint64_t hold_timeouts;         /* clients that gave up waiting (got an error) */
    uint64_t idle_timeouts;         /* idle clients closed after client_idle_timeout */
    uint64_t moves;                 /* sessions moved to a new writer without an error */
    uint64_t moves_failed;          /* sessions that could not be moved: closed instead */
    uint64_t ended_by_server;       /* sessions the server ended on its own (its error relayed,
                                       no move: the writer had not moved) */
    uint64_t errors_protocol;       /* malformed/hostile/unsupported traffic: session ended */
    uint64_t errors_auth;           /* terminated auth: wrong password or unknown user */
    uint64_t errors_failover;       /* errors a writer move gave clients (reconnect, retry,
                                       outcome unknown) */
    uint64_t errors_backend_refused; /* passthrough: the server refused the login for
                                       another reason than the credentials */
} __attribute__((aligned(64)));


#define PX_STAT_ADD(field, n) __atomic_store_n(&(field), (field) + (uint64_t)(n), __ATOMIC_RELAXED)
#define PX_STAT_GET(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* A client's address without its port: what max_login_clients_per_source
 * counts by. */
struct px_source {
    uint8_t family;                 /* AF_INET, AF_INET6; 0 = unknown */
    uint8_t addr[16];               /* 4 bytes for AF_INET */
};

#define PX_LOGIN_BUCKETS 1024u

/* Clients of a listener logging in now, all workers: the total and a count
 * per source address (a chained hash table; an address leaves it when its
 * count drops to 0). */
struct px_logins {
    pthread_mutex_t lock;
    uint32_t total;
    struct px_login_source **buckets;   /* owned: PX_LOGIN_BUCKETS chains */
};

/* Why a connection is refused at accept. */
enum px_refusal {
    PX_REFUSE_NONE,
    PX_REFUSE_CLIENTS,              /* max_client_connections */
    PX_REFUSE_LOGINS,               /* max_login_clients */
    PX_REFUSE_SOURCE,               /* max_login_clients_per_source */
    PX_REFUSE_COUNT
};

/* A listening address as the process knows it. Identity is (name, protocol,
 * bind): a reload that keeps all three keeps the sockets and the counters.
 * Created by the main thread; referenced by the registry, by every worker
 * that listens on it and by every session accepted from it. */
struct px_listener {
    int refs;                       /* atomic */
    char name[FERRY_NAME_MAX];
    enum ferry_proto protocol;
    struct ferry_hostport bind;
    unsigned nworkers;
    int *fds;                       /* owned: one bound socket per worker; -1 once handed over */
    struct px_counters *stats;      /* owned: nworkers entries */
    uint32_t clients;               /* atomic: open client connections, all workers */
    /* Why new work on this listener waits (new clients, an idle session's
     * next transaction): the operator's pause (POST /v1/pause naming it, or
     * px_proc.paused for all) and switchovers naming it are separate, so the
     * end of one never lifts the other. Any thread. */
    int paused;                     /* atomic: the operator paused this listener */
    int switchovers;                /* atomic: switchovers under way holding it */
    struct px_logins logins;        /* clients that have not logged in yet */
    /* one log line a second per cause (all workers) */
    struct ferry_log_limit log_refused[PX_REFUSE_COUNT];
    struct ferry_log_limit log_login_timeout;
    struct ferry_log_limit log_accept_failed[3];    /* EMFILE, ENFILE, any other error */
    struct ferry_log_limit log_out_of_fds;  /* backend connects without a descriptor */
    /* mysql, terminated mode: what the last backend greeting said, for
     * ferry's own greeting (session_mysql_login.c) */
    pthread_mutex_t greeting_lock;
    char server_version[64];        /* "" = no backend seen yet */
    uint32_t server_caps;
    uint8_t server_charset;
};

struct px_listener *px_listener_create(const struct ferry_listener_cfg *lcfg, unsigned nworkers,
                                       char *err, size_t errlen);
/* Whether another process listens on hp (listeners share their port with
 * SO_REUSEPORT, so binding them would not tell): binds a probe socket
 * without it. 0 free, -EADDRINUSE taken ("ADDR is already in use by another
 * process" in err), another -errno (err says why). Main thread. */
int px_bind_probe(const struct ferry_hostport *hp, char *err, size_t errlen);
struct px_listener *px_listener_ref(struct px_listener *pl);
void px_listener_unref(struct px_listener *pl);
bool px_listener_matches(const struct px_listener *pl, const struct ferry_listener_cfg *lcfg);
/* Sums every worker's counters of a listener (any thread). */
struct px_counters px_listener_totals(const struct px_listener *pl);
/* The operator's pause (all listeners or this one) / a switchover's hold
 * (any thread). */
bool px_listener_paused(const struct px_listener *pl);
bool px_listener_holding(const struct px_listener *pl);
/* A client from src starts logging in: PX_REFUSE_NONE when it may (it holds
 * a login slot until px_listener_login_end), else the limit it would pass
 * (max_login: all of the listener's; per_source: from src). Any thread. */
enum px_refusal px_listener_login_begin(struct px_listener *pl, const struct px_source *src,
                                        uint32_t max_login, uint32_t per_source);
void px_listener_login_end(struct px_listener *pl, const struct px_source *src);
/* Clients logging in now (any thread). */
uint32_t px_listener_logins(struct px_listener *pl);

/* What the main thread asks a worker to do. Queued under the worker's mutex
 * and drained in its async callback (uv_async_send coalesces). */
enum px_msg_type {
    PX_MSG_CONFIG,      /* apply cfg + listeners */
    PX_MSG_DRAIN,       /* stop accepting; close sessions after shutdown_timeout */
    PX_MSG_CLOSE_ALL,   /* close every session now (second signal) */
    PX_MSG_TOPOLOGY,    /* a new topology snapshot: route new sessions, release held ones */
    PX_MSG_RELEASE,     /* resumed: route held sessions again */
    PX_MSG_DESCRIBE,    /* add every session to collector (GET /v1/sessions) */
};

struct px_msg {
    enum px_msg_type type;
    struct ferry_config *cfg;       /* owned ref (CONFIG) */
    struct px_listener **listeners; /* owned refs, cfg order (CONFIG) */
    size_t nlisteners;              /* entries in listeners */
    struct ferry_topology *topology;/* owned ref (TOPOLOGY) */
    struct px_collector *collector; /* owned ref (DESCRIBE) */
    struct px_msg *next;
};

/* A worker's listening handle for one listener. */
struct px_accepting {
    uv_tcp_t tcp;
    struct px_worker *owner;
    struct px_listener *pl;                 /* owned ref */
    const struct ferry_listener_cfg *lcfg;  /* borrowed from owner->cfg */
    bool keep;                              /* scratch during reconcile */
    struct ferry_list link;                 /* in owner->accepting */
};

struct px_worker {
    unsigned index;
    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wakeup;
    uv_timer_t drain_timer;
    pthread_mutex_t lock;           /* guards inbox only */
    struct px_msg *inbox;           /* FIFO, oldest first */
    bool inbox_closed;              /* under lock: wakeup is closing, drop posts */
    int finished;                   /* atomic: the loop has returned */
    struct ferry_config *cfg;       /* owned ref: the config new sessions get */
    struct ferry_list accepting;    /* px_accepting */
    struct ferry_list sessions;     /* px_session */
    struct ferry_list held;         /* px_session waiting for a writer (also in sessions) */
    struct ferry_list to_move;      /* idle px_session whose move waits (also in sessions) */
    uv_timer_t move_timer;          /* starts waiting moves (session.c) */
    uv_timer_t idle_timer;          /* looks for idle clients once a second (session.c) */
    unsigned nidle_timed;           /* sessions whose listener has a client_idle_timeout */
    unsigned nto_move;
    bool moves_blocked;             /* no waiting move could be routed: wait for a topology */
    uint64_t moves_retry_at;        /* a waiting move failed to connect: none before this */
    unsigned logins_waited_on;      /* backend logins under way that a client waits for */
    unsigned background_moves;      /* moves of idle sessions under way */
    struct ferry_topology *topology;/* owned ref: latest snapshot, NULL before the first */
    unsigned nsessions;
    bool draining;
    bool configured;                /* first CONFIG applied */
    struct ferry_readbuf readbuf;   /* every read of this worker's sessions lands here */
    uv_timer_t trim_timer;          /* malloc_trim() after queues freed much (session.c) */
    size_t released;                /* queue bytes freed since the last trim */
    uint64_t buffered_bytes;        /* atomic read by admin: memory of sessions' write queues */
    uint64_t buffered_peak;         /* atomic read by admin: most one direction ever held */
};

int px_worker_start(struct px_worker *w, unsigned index);
void px_worker_post(struct px_worker *w, struct px_msg *m);   /* any thread; takes m */
void px_worker_join(struct px_worker *w);

/* session.c: worker-side entry points */
void px_session_accept(struct px_accepting *a);
void px_session_close_all(struct px_worker *w, const char *reason);
void px_session_trim_init(struct px_worker *w);     /* before the loop runs */
void px_session_release_held(struct px_worker *w); /* route held sessions again */
void px_session_topology_changed(struct px_worker *w); /* fence sessions on an old writer */
void px_session_moves_init(struct px_worker *w);    /* before the loop runs */
void px_session_idle_init(struct px_worker *w);     /* before the loop runs */
/* worker.c: called by session.c when a session has been freed */
void px_worker_session_ended(struct px_worker *w);

/* The process: registry of listeners and the workers; read by admin. */
struct px_process {
    pthread_mutex_t lock;           /* guards cfg, listeners, generation */
    struct ferry_config *cfg;       /* owned ref: config in force */
    struct px_listener **listeners; /* owned refs, cfg order */
    size_t nlisteners;
    uint64_t generation;            /* 1 at start, +1 per successful reload */
    struct ferry_topology *topology;/* owned ref: latest snapshot (for admin) */
    struct ferry_discovery *discovery; /* NULL when no listener is discovered */
    struct px_worker *workers;
    unsigned nworkers;
    unsigned workers_ready;         /* atomic: workers that applied a config */
    int draining;                   /* atomic */
    int paused;                     /* atomic: POST /v1/pause without a listener: every
                                       listener's new clients and transactions held */
    uint64_t started_ms;
    double started_unix;                /* wall clock at start (process_start_time_seconds) */
};

extern struct px_process px_proc;

/* Routing: the endpoint new sessions of this listener go to: the static
 * writer for listeners without "probe", else the writer of topo (NULL while
 * there is none: hold). The result points into lcfg or topo; do not keep it
 * beyond the caller's reference to them. */
const struct ferry_hostport *px_route(const struct ferry_listener_cfg *lcfg,
                                      const struct ferry_topology *topo, const char **cluster);
/* While a discovered listener has no writer, or its writer is in doubt: the
 * cluster likely to be promoted (NULL: none known), where waiting sessions
 * may log in early. */
const struct ferry_hostport *px_route_candidate(const struct ferry_listener_cfg *lcfg,
                                                const struct ferry_topology *topo,
                                                const char **cluster);
/* The address discovery resolved for the writer (or the candidate) of a
 * discovered listener in topo, to connect to without a lookup; NULL when
 * there is none (static routing, literal endpoints, not resolved yet). */
const char *px_route_address(const struct ferry_listener_cfg *lcfg,
                             const struct ferry_topology *topo, bool candidate);

/* Errors ferry itself sends to a client before any server has spoken,
 * in the listener's protocol. */
enum px_err {
    PX_ERR_TOO_MANY_CLIENTS,    /* max_client_connections or a login limit reached */
    PX_ERR_NO_WRITER,           /* hold_timeout passed without a writer */
    PX_ERR_BACKEND_DOWN,        /* the writer could not be reached */
    PX_ERR_PROTOCOL,            /* malformed or hostile traffic from the client */
    PX_ERR_UNSUPPORTED,         /* a protocol version or feature ferry does not speak */
    PX_ERR_WRITER_MOVED,        /* idle session on a writer that is no longer the writer */
    PX_ERR_TXN_LOST,            /* the same, inside a transaction: rolled back, retry */
    PX_ERR_OUTCOME_UNKNOWN,     /* the writer vanished with a statement in flight */
    PX_ERR_AUTH_FAILED,         /* terminated auth: wrong password or unknown user */
    PX_ERR_TLS_REQUIRED,        /* the listener requires TLS and the client has none */
    PX_ERR_IDLE_TIMEOUT,        /* client_idle_timeout: an idle client sent nothing */
    PX_ERR_LOGIN_TIMEOUT,       /* no complete login within client_login_timeout */
};
void px_error_message(enum ferry_proto proto, enum px_err kind, const char *text,
                      struct ferry_wbuf *out);

/* Prometheus text exposition of everything above; malloc'd, caller frees.
 * Admin thread; takes px_proc.lock. */
char *px_metrics_text(void);

/* A cross-thread gathering of session descriptions: the admin thread posts
 * one DESCRIBE per worker and waits until every worker has answered (or a
 * timeout). Reference-counted: the admin thread and each message hold one. */
struct px_collector {
    int refs;                       /* atomic */
    pthread_mutex_t lock;
    pthread_cond_t done;
    unsigned pending;               /* workers yet to answer */
    struct json_t *sessions;        /* JSON array, appended under lock */
};
void px_collector_unref(struct px_collector *c);
void px_session_describe_all(struct px_worker *w, struct px_collector *c);  /* worker thread */

/* cancel.c: PostgreSQL cancel keys (any thread). register makes up the key
 * pair the client sees; false when out of memory or entropy. */
bool px_cancel_register(const struct sockaddr *server, uint32_t backend_pid, uint32_t backend_key,
                        uint32_t *pid, uint32_t *key);
bool px_cancel_lookup(uint32_t pid, uint32_t key, struct sockaddr_storage *server,
                      uint32_t *backend_pid, uint32_t *backend_key);
void px_cancel_unregister(uint32_t pid);
/* The session moved to another backend: the client's key now cancels there. */
void px_cancel_update(uint32_t pid, const struct sockaddr *server, uint32_t backend_pid,
                      uint32_t backend_key);

/* session_pg.c, for the config loader (main thread): a postgresql
 * terminated listener's SCRAM secrets and what unknown users are shown
 * (false with the reason, "auth...: why", in why); release wipes and frees
 * the secrets. */
bool px_pg_auth_prepare(struct ferry_listener_cfg *l, char *why, size_t whylen);
void px_pg_auth_release(struct ferry_listener_cfg *l);

/* main.c: what the admin thread asks of the main thread; any thread but
 * the main one. px_control_reload() returns at once: done runs on the main
 * thread once the reload has run (ok: the new config is in force; msg says
 * which generation, or why not), or at once on the caller's thread when
 * ferry is shutting down. w stays the caller's; done may free it. */
struct px_reload_wait {
    struct px_reload_wait *next;    /* main.c's list */
    void (*done)(struct px_reload_wait *w, bool ok, const char *msg);
};
void px_control_reload(struct px_reload_wait *w);
/* The operator's pause / resume of one listener (by name) or, NULL, of all
 * (resuming all also lifts every listener's own pause); false: no listener
 * of that name. Switchovers do not touch it. */
bool px_set_paused(const char *listener, bool paused);
/* A switchover's hold: the discovered listeners named listener (NULL: any)
 * that have a cluster named cluster; returns them (owned refs, *n entries,
 * NULL when none) for px_switchover_release(), which ends the hold. */
struct px_listener **px_switchover_hold(const char *listener, const char *cluster, size_t *n);
void px_switchover_release(struct px_listener **pls, size_t n);

/* Numbers for /metrics and the admin JSON (metrics.c). px_fmt_double: the
 * shortest text that reads back as v (%.15g, %.16g or %.17g, whichever is
 * first to round-trip), NaN, +Inf, -Inf as Prometheus spells them.
 * px_json_dumps: json_dumps with every real so written. */
#define PX_DOUBLE_MAX 32
const char *px_fmt_double(double v, char buf[PX_DOUBLE_MAX]);
char *px_json_dumps(const json_t *doc, size_t flags);

/* admin HTTP (admin.c). Start and stop: main thread. */
/* watch_config: calls on_change on the main loop when the content of the
 * config file at path changes (path's directory is watched, so a symlink
 * swapped over it counts). NULL, logged, when it cannot watch. Stop closes
 * the handles; the watch is freed when they are. Main thread only. */
struct px_config_watch;
struct px_config_watch *px_config_watch_start(uv_loop_t *loop, const char *path,
                                              void (*on_change)(void *), void *arg);
void px_config_watch_stop(struct px_config_watch *w);
/* Takes the file's content now as the one in force (a reload is about to
 * read it), so a SIGHUP reload is not followed by a second, watched one. */
void px_config_watch_rebase(struct px_config_watch *w);

struct px_admin;
struct px_admin *px_admin_start(const struct ferry_config *cfg, char *err, size_t errlen);
void px_admin_stop(struct px_admin *a);
/* Connections the admin endpoint closed itself, by reason; and how many are
 * open. Process-wide (across restarts of the endpoint), atomics. */
enum px_admin_drop {
    PX_ADMIN_DROP_TIMEOUT,      /* a request (or its answer) took over admin.request_timeout */
    PX_ADMIN_DROP_PEER_LIMIT,   /* room for a newer connection of the same client address */
    PX_ADMIN_DROP_LIMIT,        /* room for a newer connection at admin.max_connections */
    PX_ADMIN_DROP_N
};
extern const char *const px_admin_drop_names[PX_ADMIN_DROP_N];
struct px_admin_stats {
    unsigned open;
    uint64_t dropped[PX_ADMIN_DROP_N];
};
extern struct px_admin_stats px_admin_stats;
/* Whether a runs with cfg's admin limits (max_connections,
 * max_connections_per_peer, request_timeout); they apply at its start. */
bool px_admin_applies(const struct px_admin *a, const struct ferry_config *cfg);

uint64_t px_now_ms(void);

#endif
