/* The session: one client connection, its backend connection and the relay
 * between them (session.c), plus what each protocol adds on top of the byte
 * relay (session_pg.c, session_mysql.c) through a small table of hooks.
 *
 * session.c owns the life cycle (accept, routing and holding, backend
 * connect, relay with backpressure, teardown); a protocol module only looks
 * at bytes as they pass, answers for the server where ferry must, and says
 * what happens to its sessions when the writer moves. A listener without a
 * protocol module is a plain byte relay.
 * Thread: everything here runs on the session's worker.
 */
#ifndef FERRY_SESSION_H
#define FERRY_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#include "ferry/log.h"
#include "ferry/outq.h"
#include "pg/stream.h"
#include "proxy.h"

struct px_session;

/* One side of a session. */
struct px_conn {
    uv_tcp_t tcp;
    struct px_session *owner;
    struct px_conn *peer;
    uv_shutdown_t shutdown_req;
    struct ferry_outq out;      /* bytes for this side its socket has not taken yet */
    bool close_when_sent;       /* close the session once `out` is written (an error) */
    bool open;                  /* tcp initialised: must be closed */
    bool reading;               /* uv_read_start in effect (EALREADY otherwise) */
    bool paused;                /* stopped for backpressure by the peer's queue */
    bool eof;                   /* this side sent EOF: nothing more to read */
    bool shut;                  /* our shutdown of this side completed */
    const char *name;           /* "client" | "server", for logs */
    struct ferry_tls *tls;      /* owned; NULL = plaintext. Reads are decrypted before the
                                   read callback sees them, writes encrypted */
    uv_read_cb plain_cb;        /* with tls: the callback that gets the plaintext */
    bool in_tls_loop;           /* with tls: handing plaintext out now */
    bool tls_settled;           /* server side: TLS negotiated (or declined) */
    bool counted;               /* server side: connected, in the backends gauge */
};

/* What a protocol's scan hook says about a chunk. */
enum px_scan {
    PX_SCAN_RELAY,      /* pass it on */
    PX_SCAN_DROP,       /* consumed (ferry answered) or the session ended */
    PX_SCAN_PARK,       /* client chunk at a safe point while paused: keep it, read no
                           more, and scan it again when released */
};

/* A backend connect and login under way, as the worker counts it
 * (px_session.login): waiting moves start only while no login that a
 * client waits for is under way. */
enum px_login {
    PX_LOGIN_NONE,
    PX_LOGIN_WAITED_ON,     /* a new client, a held or parked request */
    PX_LOGIN_BACKGROUND,    /* an idle session's move that no request waits for yet */
};

/* What a protocol adds to the relay. Every hook is optional. */
struct px_proto {
    /* Accepted (counted or not): the protocol starts its client phase, or
     * calls px_session_route() at once. NULL: route at once. */
    void (*begin)(struct px_session *s);
    /* Before session_fail's error goes out: true if the protocol keeps it
     * for later (PostgreSQL waits for the startup packet). */
    bool (*defer_error)(struct px_session *s, enum px_err kind, const char *text);
    /* The backend is connected: send what the client phase kept. True:
     * relay now (reading on both sides starts); false: the protocol starts
     * the relay itself later with px_session_start_relay(), or the session
     * ended. */
    bool (*connected)(struct px_session *s);
    /* A chunk read from src, before it is relayed. */
    enum px_scan (*scan)(struct px_session *s, struct px_conn *src, uint8_t *data, size_t n);
    /* A chunk from the server was queued to the client. */
    void (*relayed)(struct px_session *s);
    /* The server side hit EOF or an error while the session was live:
     * true when the protocol answered the client (session_fail). */
    bool (*server_lost)(struct px_session *s);
    /* The connect/startup timer fired before the session was routed:
     * true when handled. */
    bool (*timer)(struct px_session *s);
    /* The listener's writer moved since s was routed. cut: the old writer
     * still accepted writes when it lost the role (a split brain): nothing
     * in flight there may be acknowledged to the client. */
    void (*writer_moved)(struct px_session *s, bool cut);
    /* s can log into a backend by itself (terminated auth), so it may do
     * so ahead of a promotion (see session.c). */
    bool (*can_prelogin)(const struct px_session *s);
    /* The client is idle: logged in, no request in flight, no transaction
     * open, nothing ferry is doing for it (a move, a login). NULL: never
     * (client_idle_timeout does not apply). */
    bool (*idle)(const struct px_session *s);
    /* Adds protocol fields to a /v1/sessions entry. */
    void (*describe)(const struct px_session *s, json_t *entry);
    /* Frees protocol state (the session is going away). */
    void (*free)(struct px_session *s);
};

extern const struct px_proto px_proto_pg;
extern const struct px_proto px_proto_mysql;

/* PostgreSQL per-session state (session_pg.c). */
struct px_pg_session {
    bool startup_done;                      /* the StartupMessage has been read */
    struct ferry_wbuf startup;              /* client bytes of the startup phase */
    size_t startup_off;                     /* parsed up to here */
    size_t startup_msg;                     /* the StartupMessage starts here */
    enum px_err fail_kind;                  /* error to send once the startup packet is in */
    char *fail_text;                        /* owned; that error's text */
    struct pg_stream scan_c2s, scan_s2c;    /* message scanners, one per direction */
    char txn;                               /* last ReadyForQuery status: I, T, E; 0 = none yet */
    bool inflight;                          /* client sent something not yet answered by ReadyForQuery */
    bool terminating;                       /* client sent Terminate */
    bool fenced;                            /* stale and cut from the server: ferry answers */
    bool end_at_idle;                       /* stale: close once the server says idle */
    bool server_fatal;                      /* the server sent a FATAL/PANIC ErrorResponse:
                                               it is ending the session and said why */
    char fatal_state[6];                    /* its SQLSTATE ("" unknown) */
    bool cleartext_refused;                 /* passthrough: an unverified server asked the
                                               client for its password in cleartext */
    bool login_refused;                     /* passthrough: the server answered the login
                                               with an error (it closes next) */
    uint32_t cancel_pid;                    /* the key pair ferry gave the client; 0 = none */
    /* terminated authentication (session_pg.c) */
    const struct ferry_user_cfg *user;      /* borrowed from cfg; NULL = passthrough */
    uint8_t auth_phase;                     /* enum pg_auth_phase */
    bool client_ready;                      /* the client has its parameters and key */
    size_t startup_len;                     /* bytes of the StartupMessage */
    struct px_pg_login *login;              /* owned while authenticating either side */
    /* what a move to another backend replays (terminated mode) */
    bool moving;                            /* logging into a new writer: requests park */
    bool restoring;                         /* replaying session state there */
    bool unmovable;                         /* state ferry could not follow: close instead */
    unsigned replay_left;                   /* ReadyForQuery answers still due */
    struct ferry_wbuf sets;                 /* Query frames of SET statements, in order */
    struct ferry_wbuf pending_set;          /* a SET sent, not yet confirmed by 'Z' I */
    struct ferry_wbuf statements;           /* Parse frames of named prepared statements */
    char *params[4];                        /* owned: last reported values (see session_pg.c) */
};

struct px_session {
    struct px_worker *owner;
    struct px_listener *pl;                 /* owned ref: counters, name */
    struct ferry_config *cfg;               /* owned ref: keeps lcfg alive */
    const struct ferry_listener_cfg *lcfg;  /* borrowed from cfg */
    const struct px_proto *proto;           /* the listener's protocol hooks */
    struct px_conn client;
    struct px_conn server;
    uv_timer_t timer;                       /* startup / hold / connect timeout */
    uv_timer_t login_timer;                 /* client_login_timeout, until logged_in */
    uv_connect_t connect_req;
    uv_getaddrinfo_t *gai;                  /* owned while a name lookup runs, else NULL */
    bool connected;
    bool closing;
    bool counted;                           /* holds a max_client_connections slot */
    bool login_slot;                        /* holds a max_login_clients(_per_source) slot */
    bool out_of_fds;                        /* the last backend connect found no descriptor */
    bool logged_in;                         /* the client completed its login */
    uint64_t login_left_ms;                 /* login timer paused while held: what was left */
    struct px_source source;                /* the client's address (login limits) */
    bool held;                              /* waiting for a writer (in owner->held) */
    bool failing;                           /* an error message is on its way to the client */
    bool stale;                             /* the writer moved since this session was routed */
    bool relaying;                          /* the relay runs (not connecting, logging in,
                                               or moving to another backend) */
    struct px_chunk *parked;                /* owned: a copy of the client request held at a
                                               safe point */
    bool retry_connect;                     /* a failed backend connect holds (and retries on
                                               the next topology) instead of failing: moving */
    bool hold_after_drop;                   /* scratch: the dropped backend was unreachable */
    bool retry_soon;                        /* held after a failed connect: try the writer
                                               again shortly, not only on a new topology */
    bool move_waiting;                      /* an idle session's move waits for its client or
                                               a quiet moment (in owner->to_move once its
                                               old backend is gone) */
    uint8_t login;                          /* enum px_login: the backend connect and login
                                               under way, as the worker counts it */
    bool verdict_wait;                      /* the backend ended with the writer unchanged:
                                               waiting for discovery's verdict (moved or
                                               healthy), client not read, no backend */
    uint64_t lost_ns;                       /* uv_hrtime() when that backend ended */
    struct ferry_wbuf server_said;          /* the server's last message, held back while
                                               the verdict is awaited (PostgreSQL's FATAL) */
    bool prelogin;                          /* connected to the candidate while there is no
                                               writer: logging in ahead of its promotion */
    bool prelogin_ready;                    /* ... and logged in: waits for the topology */
    uint64_t prelogin_serial;               /* topology snapshot of the last such attempt */
    uint64_t hold_until;                    /* when this wait for a writer gives up; 0 = none */
    uint64_t topo_gen;                      /* writer generation the session was routed with */
    struct sockaddr_storage server_addr;    /* where the backend connection went */
    int pending_closes;                     /* close callbacks still due */
    uint64_t id;
    const char *endpoint;                   /* backend address, for logs: "-", or owned
                                               (sized to fit: every idle pair counts) */
    char cluster[FERRY_NAME_MAX];           /* backend cluster name, for logs */
    char peer[64];                          /* client address "ip:port" */
    char user[FERRY_NAME_MAX];              /* from the protocol's login ("" if unknown) */
    char database[FERRY_NAME_MAX];
    uint64_t created_ms;
    uint64_t last_traffic;                  /* loop time (ms) bytes last passed either way */
    uint64_t bytes_from_client;
    uint64_t bytes_from_server;
    struct ferry_list link;                 /* in owner->sessions */
    struct ferry_list held_link;            /* in owner->held while held */
    struct ferry_list move_link;            /* in owner->to_move while its move waits */
    union {
        struct px_pg_session pg;
        struct px_my_session *my;           /* owned (session_mysql.c) */
    } u;
};

/* session.c services for the protocol modules */
struct px_counters *px_session_stats(struct px_session *s);
/* Idempotent teardown; frees once every handle has closed. */
void px_session_close(struct px_session *s, enum ferry_log_level lvl, const char *reason);
/* Sends one error to the client in the listener's protocol, then closes. */
void px_session_fail(struct px_session *s, enum px_err kind, const char *text);
/* The same without the defer_error hook and the log line. */
void px_session_send_error(struct px_session *s, enum px_err kind, const char *text);
/* Writes bytes ferry made (taking buf's memory) to conn; close_after: end
 * the session once written. 0 or a libuv error (buf freed either way). */
int px_session_write(struct px_session *s, struct px_conn *conn, struct ferry_wbuf *buf,
                     bool close_after);
/* Counts an error ferry gave the client by its class (px_session_fail
 * counts its own; this is for errors that do not end the session). */
void px_session_count_error(struct px_session *s, enum px_err kind);
/* Passthrough: the server answered the client's login with an error and
 * ends the connection (the client has the server's own error). Counted as
 * auth when the SQLSTATE is of class 28 (invalid authorization: wrong
 * password, unknown user), else as backend_refused (unknown database, too
 * many connections, starting up...), and logged with the server's code.
 * code: SQLSTATE (PostgreSQL) or error number (MySQL); sqlstate may be "". */
void px_session_login_refused(struct px_session *s, const char *code, const char *sqlstate,
                              const char *msg, size_t msglen);
/* The session's listener is paused by the operator (POST /v1/pause) or held
 * by a switchover: no new transaction may start. */
bool px_session_paused(const struct px_session *s);
/* Routes the session, or holds it while there is no writer. */
void px_session_route(struct px_session *s);
/* TLS towards the client from now on (the listener's certificate): hello
 * is ciphertext that already arrived (n may be 0); reads go through the
 * engine into cb. False: the session is closing. */
bool px_session_client_tls(struct px_session *s, const void *hello, size_t n, uv_read_cb cb);
/* A protocol's own exchange: sends b (taking its memory) to c, reads c's
 * answer into cb, and arms the session timer at ms (0: stops it, for the
 * client's login, which client_login_timeout bounds). False: the session is
 * closing (the write or the read failed). */
bool px_session_ask(struct px_session *s, struct px_conn *c, struct ferry_wbuf *b, uv_read_cb cb,
                    uint64_t ms);
/* The client completed its login (terminated: ferry checked it; passthrough:
 * the server said AuthenticationOk / OK): it no longer counts against the
 * login limits and client_login_timeout. Idempotent. */
void px_session_logged_in(struct px_session *s);
/* (Re)starts the session's one timer; when it fires, the protocol's timer
 * hook is asked first, then hold / connect timeouts apply. */
void px_session_arm_timer(struct px_session *s, uint64_t ms);
/* Starts (or resumes) the relay on both sides of a connected session; a
 * request parked meanwhile goes through the protocol's scan again first.
 * Ends the session's wait for a writer (hold_timeout counts anew). */
void px_session_start_relay(struct px_session *s);
/* The backend could not be reached or refused service (shutting down):
 * counted and logged; the client gets an error, or, while retry_connect,
 * the session waits for the next topology. */
void px_session_backend_failed(struct px_session *s, const char *error);
/* The server ended the session on its own (the writer did not move): what
 * it said is relayed (with server_said, if held), nothing of ferry's is
 * added, and the session closes once that is written. why: for the log
 * (the server's SQLSTATE or error number, or how the connection ended). */
void px_session_end_by_server(struct px_session *s, const char *why);
/* The backend of an idle session that could move ended, and the server
 * gave no reason that rules out the writer going away (a crash, a
 * shutdown, a KILL, a timeout all look alike here). The session drops the
 * backend, stops reading its client, asks discovery to probe now, and
 * waits for the verdict: the writer moved (a new topology) -> the
 * protocol's writer_moved hook moves it as today; the same writer answered
 * a probe that began after the loss -> px_session_end_by_server. Without
 * discovery (a static writer, which never moves) it ends at once. */
void px_session_await_verdict(struct px_session *s, const char *why);
/* Drops the backend connection and routes the session again (to the
 * writer of now, or held until there is one); the client side stays. The
 * protocol's connected hook runs again on the new connection. */
void px_session_reconnect(struct px_session *s);
/* An idle session's move to the writer of now: drops the backend connection
 * like px_session_reconnect, but connects again only when the client sends
 * a request (the protocol parks it) or, before that, when no login a client
 * waits for is under way on this worker (see "moving idle sessions" in
 * session.c). */
void px_session_move(struct px_session *s);
/* Starts reading conn into cb (decrypting first when conn has TLS;
 * plaintext the engine still holds is handed to cb at once). 0 or a libuv
 * error. */
int px_conn_read_start(struct px_conn *c, uv_read_cb cb);
/* Sends the ciphertext conn's engine holds (handshake messages). 0 or a
 * libuv error. */
int px_conn_tls_flush(struct px_session *s, struct px_conn *c);
/* Stops reading one side (e.g. before ferry answers for the server). */
void px_conn_stop_reading(struct px_conn *c);
/* Half-closes the server side: the server sees EOF once queued bytes went. */
void px_session_shutdown_server(struct px_session *s);
/* The read buffer allocator (the worker's one buffer) for reads of a
 * protocol's own phases. */
void px_session_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
/* Returns a read buffer from px_session_alloc. */
void px_session_free_buf(struct px_session *s, const uv_buf_t *buf);
/* A read callback of a protocol's own phase: appends what was read to into
 * (NULL: dropped), returns the buffer, and returns nread (> 0 bytes taken,
 * 0 nothing happened, < 0 the side ended: UV_EOF or an error). */
ssize_t px_session_read_into(struct px_session *s, struct ferry_wbuf *into, ssize_t nread,
                             const uv_buf_t *buf);
/* "the writer of listener L moved away from C; ..." */
void px_session_writer_moved_text(const struct px_session *s, char *out, size_t len, bool in_txn);
/* Live traffic says the writer may have changed: probe now. */
void px_session_probe_now(const struct px_session *s);
/* Whether ferry may send the stored password to this session's backend in
 * a form the server can read (cleartext, or RSA-encrypted under a key the
 * server sent): only over TLS to a server whose certificate ferry verified
 * (backend_tls.mode verify-ca / verify-full), or when the listener says
 * backend_tls.allow_insecure_password. Challenge-response methods (SCRAM,
 * MD5, mysql_native_password, the caching_sha2 scramble) need no check. */
bool px_session_may_reveal_password(const struct px_session *s);
/* Why px_session_may_reveal_password() said no, for the session's error. */
void px_session_insecure_password_text(const struct px_session *s, const char *asked,
                                       char *out, size_t len);

#endif
