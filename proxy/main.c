/* ferry's entry point: the command line, and the main thread's loop, which
 * owns the listener registry and turns signals into reloads and drains. The
 * main thread never touches sessions; it only posts messages to workers.
 */
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "ferry/config.h"
#include "ferry/ctl.h"
#include "ferry/discovery.h"
#include "ferry/log.h"
#include "ferry/tls.h"
#include "ferry/version.h"
#include "proxy.h"

struct px_process px_proc = {.lock = PTHREAD_MUTEX_INITIALIZER};

enum { EXIT_RUNTIME = 1, EXIT_CONFIG = 2 };

static struct {
    uv_loop_t *loop;
    uv_signal_t sighup, sigterm, sigint;
    uv_timer_t drain_poll;
    struct px_admin *admin;
    bool admin_enabled;
    struct ferry_hostport admin_bind;
    const char *config_path;
    struct px_config_watch *watch;  /* NULL: watch_config off (or not possible) */
} mainloop;

uint64_t px_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One line per command for `ferry --help`, and each command's own help. */
static const struct command {
    const char *name, *synopsis, *summary, *help;
    bool config, json;          /* takes -c FILE (required) / --json */
} commands[] = {
    {"run", "ferry run -c FILE", "run the proxy in the foreground",
     "run the proxy in the foreground; logs go to stderr.\n"
     "  Exit 0 after a clean stop (SIGTERM, SIGINT), 1 when it cannot start or serve\n"
     "  (e.g. an address already in use), 2 for a bad config or command line.\n",
     true, false},
    {"check", "ferry check -c FILE", "validate FILE; exit 0 if valid, 2 if not",
     "validate FILE (and the files and environment variables it names);\n"
     "  exit 0 if valid, 2 with the file, key and reason if not.\n",
     true, false},
    {"discover", "ferry discover -c FILE [--json]", "probe once and print the writer decision",
     "probe every cluster once and print the decision; exit 0 with a\n"
     "  writer for every discovered listener, 1 without, 2 for a bad config.\n",
     true, true},
    {"ctl", "ferry ctl COMMAND [options]", "talk to a running ferry's admin endpoint",
     "talk to a running ferry's admin endpoint (status, sessions,\n"
     "  metrics, reload, pause, resume, switchover): ferry ctl --help.\n",
     false, false},
    {"version", "ferry version [--json]", "print the version (--json: build information)",
     "print the version; --json adds the git commit and the version of\n"
     "  every library ferry links.\n",
     false, true},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *out)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(out, "%s %-36s %s\n", i ? "      " : "usage:", commands[i].synopsis,
                commands[i].summary);
    fprintf(out, "       ferry COMMAND --help                 that command's options\n");
}

static void command_usage(const struct command *c, FILE *out)
{
    fprintf(out, "usage: %s\n  %s", c->synopsis, c->help);
    if (c->config)
        fprintf(out, "  -c, --config FILE   the config file (README: Configuration)\n");
    if (c->json)
        fprintf(out, "  --json              machine-readable output\n");
    fprintf(out, "  -h, --help          this help\n");
}

/* Builds the listener set for cfg, reusing listeners of the running set that
 * keep their identity. Returns an array of owned refs in cfg order, or NULL
 * (nothing leaked) with err filled. Main thread only. */
static struct px_listener **listeners_for(const struct ferry_config *cfg, char *err, size_t errlen)
{
    struct px_listener **out = calloc(cfg->nlisteners, sizeof *out);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ferry_listener_cfg *lcfg = &cfg->listeners[i];
        for (size_t k = 0; k < px_proc.nlisteners && !out[i]; k++)
            if (px_listener_matches(px_proc.listeners[k], lcfg))
                out[i] = px_listener_ref(px_proc.listeners[k]);
        /* An address this process does not hold yet must be free: our
         * SO_REUSEPORT bind would otherwise share it with another ferry. */
        bool held = false;
        for (size_t k = 0; k < px_proc.nlisteners && !out[i]; k++)
            held |= ferry_hostport_collide(&px_proc.listeners[k]->bind, &lcfg->bind);
        char why[FERRY_HOST_MAX + 80];
        if (!out[i] && !held && px_bind_probe(&lcfg->bind, why, sizeof why) != 0) {
            snprintf(err, errlen, "listeners[%zu] (%s): %s", i, lcfg->name, why);
            goto failed;
        }
        if (!out[i] && !(out[i] = px_listener_create(lcfg, px_proc.nworkers, err, errlen)))
            goto failed;
        /* a listener rebuilt (new bind) keeps the operator's pause by name */
        for (size_t k = 0; k < px_proc.nlisteners; k++)
            if (px_proc.listeners[k] != out[i] && strcmp(px_proc.listeners[k]->name, lcfg->name) == 0)
                out[i]->paused = __atomic_load_n(&px_proc.listeners[k]->paused, __ATOMIC_SEQ_CST);
    }
    return out;
failed:
    for (size_t k = 0; k < cfg->nlisteners; k++)
        px_listener_unref(out[k]);
    free(out);
    return NULL;
}

static void post_config(struct ferry_config *cfg, struct px_listener **pls)
{
    for (unsigned w = 0; w < px_proc.nworkers; w++) {
        struct px_msg *m = calloc(1, sizeof *m);
        struct px_listener **refs = calloc(cfg->nlisteners, sizeof *refs);
        if (!m || !refs) {
            /* Cannot happen in practice; a worker that misses a config keeps
             * the previous one, which is safe. */
            ferry_log(FERRY_LOG_ERROR, "worker.post_failed", "worker=%u error=\"out of memory\"", w);
            free(m);
            free(refs);
            continue;
        }
        for (size_t i = 0; i < cfg->nlisteners; i++)
            refs[i] = px_listener_ref(pls[i]);
        m->type = PX_MSG_CONFIG;
        m->cfg = ferry_config_ref(cfg);
        m->listeners = refs;
        m->nlisteners = cfg->nlisteners;
        px_worker_post(&px_proc.workers[w], m);
    }
}

static void log_listeners(const struct ferry_config *cfg)
{
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ferry_listener_cfg *l = &cfg->listeners[i];
        char bind[FERRY_HOST_MAX + 16], ep[FERRY_HOST_MAX + 16];
        const char *cluster;
        ferry_hostport_format(&l->bind, bind, sizeof bind);
        const struct ferry_hostport *route = px_route(l, NULL, &cluster);
        if (route)
            ferry_hostport_format(route, ep, sizeof ep);
        ferry_log(FERRY_LOG_INFO, "listener.ready", "name=%s protocol=%s bind=%s routing=%s cluster=%s backend=%s",
                  l->name, ferry_proto_name(l->protocol), bind, l->probe_enabled ? "discovered" : "static",
                  route ? cluster : "-", route ? ep : "-");
    }
}

/* Discovery thread: a new snapshot (takes the reference). Kept for the
 * admin endpoint and handed to every worker. */
static void publish_topology(struct ferry_topology *t, void *ud)
{
    (void)ud;
    pthread_mutex_lock(&px_proc.lock);
    struct ferry_topology *old = px_proc.topology;
    px_proc.topology = t;
    for (unsigned w = 0; w < px_proc.nworkers; w++) {
        struct px_msg *m = calloc(1, sizeof *m);
        if (!m)
            continue;   /* that worker keeps the previous snapshot; the next one reaches it */
        m->type = PX_MSG_TOPOLOGY;
        m->topology = ferry_topology_ref(t);
        px_worker_post(&px_proc.workers[w], m);
    }
    pthread_mutex_unlock(&px_proc.lock);
    ferry_topology_unref(old);
}

static bool any_discovered(const struct ferry_config *cfg)
{
    for (size_t i = 0; i < cfg->nlisteners; i++)
        if (cfg->listeners[i].probe_enabled)
            return true;
    return false;
}

/* Starts, reconfigures or keeps discovery for cfg. Once started it keeps
 * running (with nothing to probe) until shutdown. */
static void discovery_for(struct ferry_config *cfg)
{
    if (px_proc.discovery) {
        ferry_discovery_reconfigure(px_proc.discovery, cfg);
    } else if (any_discovered(cfg)) {
        px_proc.discovery = ferry_discovery_start(cfg, publish_topology, NULL);
        if (!px_proc.discovery)
            ferry_log(FERRY_LOG_ERROR, "discovery.start_failed", "error=\"out of memory\"");
    }
}

/* Swaps in a new config and listener set; takes ownership of both. */
static void install(struct ferry_config *cfg, struct px_listener **pls)
{
    pthread_mutex_lock(&px_proc.lock);
    struct ferry_config *old_cfg = px_proc.cfg;
    struct px_listener **old = px_proc.listeners;
    size_t nold = px_proc.nlisteners;
    px_proc.cfg = cfg;
    px_proc.listeners = pls;
    px_proc.nlisteners = cfg->nlisteners;
    px_proc.generation++;
    pthread_mutex_unlock(&px_proc.lock);
    ferry_log_set_level(cfg->log_level);
    ferry_log_set_json(cfg->log_format == FERRY_LOG_JSON);
    post_config(cfg, pls);
    discovery_for(cfg);
    for (size_t i = 0; i < nold; i++)
        px_listener_unref(old[i]);
    free(old);
    ferry_config_unref(old_cfg);
}

static bool admin_changed(const struct ferry_config *cfg)
{
    return cfg->admin_enabled != mainloop.admin_enabled ||
           (cfg->admin_enabled && !ferry_hostport_equal(&cfg->admin_bind, &mainloop.admin_bind));
}

/* px_admin_start(), after checking that no other process serves the
 * address (MHD's bind would say only that it failed). */
static struct px_admin *admin_start(const struct ferry_config *cfg, char *err, size_t errlen)
{
    char why[FERRY_HOST_MAX + 80];
    bool held = mainloop.admin && ferry_hostport_collide(&mainloop.admin_bind, &cfg->admin_bind);
    if (!held && px_bind_probe(&cfg->admin_bind, why, sizeof why) != 0) {
        snprintf(err, errlen, "admin.bind: %s", why);
        return NULL;
    }
    return px_admin_start(cfg, err, errlen);
}

static void post_all(enum px_msg_type type)
{
    for (unsigned w = 0; w < px_proc.nworkers; w++) {
        struct px_msg *m = calloc(1, sizeof *m);
        if (m) {
            m->type = type;
            px_worker_post(&px_proc.workers[w], m);
        }
    }
}

/* ---- loading a config: parse, then build what it names (TLS contexts) ---- */

static void release_attached(struct ferry_config *cfg)
{
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        ferry_tls_ctx_unref(cfg->listeners[i].tls_server_ctx);
        ferry_tls_ctx_unref(cfg->listeners[i].tls_backend_ctx);
        EVP_PKEY_free(cfg->listeners[i].mysql_rsa_key);
        if (cfg->listeners[i].protocol == FERRY_PROTO_POSTGRESQL)
            px_pg_auth_release(&cfg->listeners[i]);
    }
}

/* caching_sha2_password's full authentication without TLS encrypts the
 * password with ferry's RSA key; like MySQL (auto_generate_rsa_keys),
 * ferry makes one per listener that needs it, when the config is loaded. */
static bool needs_rsa_key(const struct ferry_listener_cfg *l)
{
    for (size_t u = 0; u < l->nusers; u++)
        if (l->users[u].method == FERRY_AUTH_CACHING_SHA2)
            return true;
    return false;
}

/* ferry_config_load() plus the TLS contexts of listeners with "tls": a
 * certificate or key that cannot be used is a config error like any other
 * ("path: listeners[i].tls: reason"). */
static struct ferry_config *load_config(const char *path, char err[FERRY_ERR_MAX])
{
    struct ferry_config *cfg = ferry_config_load(path, err);
    if (!cfg)
        return NULL;
    cfg->on_free = release_attached;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        struct ferry_listener_cfg *l = &cfg->listeners[i];
        char why[FERRY_ERR_MAX / 2];
        enum ferry_tls_mode mode = FERRY_TLS_DISABLE;
        ferry_tls_mode_parse(l->backend_tls_mode, &mode);
        if (mode != FERRY_TLS_DISABLE) {
            l->tls_backend_ctx = ferry_tls_client_ctx_new(mode, l->backend_tls_ca_file, why,
                                                          sizeof why);
            if (!l->tls_backend_ctx) {
                snprintf(err, FERRY_ERR_MAX, "%s: listeners[%zu].backend_tls: %s", path, i, why);
                ferry_config_unref(cfg);
                return NULL;
            }
        }
        if (l->protocol == FERRY_PROTO_POSTGRESQL && l->auth_terminated &&
            !px_pg_auth_prepare(l, why, sizeof why)) {
            snprintf(err, FERRY_ERR_MAX, "%s: listeners[%zu].%s", path, i, why);
            ferry_config_unref(cfg);
            return NULL;
        }
        if (needs_rsa_key(l) && !(l->mysql_rsa_key = EVP_RSA_gen(2048))) {
            snprintf(err, FERRY_ERR_MAX, "%s: listeners[%zu].auth: cannot make an RSA key", path, i);
            ferry_config_unref(cfg);
            return NULL;
        }
        if (!l->tls_cert_file)
            continue;
        enum ferry_tls_version min = FERRY_TLS_V1_2;
        ferry_tls_version_parse(l->tls_min_version, &min);
        l->tls_server_ctx = ferry_tls_server_ctx_new(l->tls_cert_file, l->tls_key_file, min,
                                                     l->tls_ciphers, l->tls_ciphersuites, why,
                                                     sizeof why);
        if (!l->tls_server_ctx) {
            snprintf(err, FERRY_ERR_MAX, "%s: listeners[%zu].tls: %s", path, i, why);
            ferry_config_unref(cfg);
            return NULL;
        }
    }
    return cfg;
}

/* Each client costs two descriptors (client + backend); the usual soft
 * limit of 1024 would cap ferry near 500 clients, so take the hard limit. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            ferry_log(FERRY_LOG_DEBUG, "ferry.fd_limit", "was=%llu now=%llu",
                      (unsigned long long)was, (unsigned long long)rl.rlim_cur);
    }
}

enum { FD_MARGIN = 128 };   /* admin endpoint, probes' spare, libuv's own, logs, AWS calls */

/* Descriptors cfg can need at once: a client and a backend connection per
 * allowed client (a login ahead of a promotion reuses the backend's), each
 * worker's listening socket per listener, a probe connection per cluster,
 * and FD_MARGIN. */
static unsigned long long fd_need(const struct ferry_config *cfg)
{
    unsigned long long need = FD_MARGIN;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ferry_listener_cfg *l = &cfg->listeners[i];
        need += 2ULL * l->max_client_connections + cfg->workers + l->nclusters;
    }
    return need;
}

/* When the open-file limit cannot hold what cfg allows, writes a warning
 * into out and returns true. hard: judge by the hard limit (what `run`
 * raises the soft one to), else by the soft limit in force. */
static bool fd_limit_low(const struct ferry_config *cfg, bool hard, char *out, size_t len)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return false;
    rlim_t limit = hard ? rl.rlim_max : rl.rlim_cur;
    unsigned long long need = fd_need(cfg);
    if (limit == RLIM_INFINITY || (unsigned long long)limit >= need)
        return false;
    snprintf(out, len, "the open-file limit (%llu) is below the %llu descriptors the listeners' "
             "max_client_connections need (2 per client + %d); raise it (ulimit -n, "
             "LimitNOFILE=, the container's nofile ulimit) or lower max_client_connections",
             (unsigned long long)limit, need, FD_MARGIN);
    return true;
}

/* After a start or reload: one warning when descriptors will run out first. */
static void warn_fd_limit(const struct ferry_config *cfg)
{
    char why[400];
    if (fd_limit_low(cfg, false, why, sizeof why))
        ferry_log(FERRY_LOG_WARN, "ferry.fd_limit_low", "reason=\"%s\"", why);
}

/* The error quotes the file (path, a JSON excerpt): escaped. */
static void log_reload_failed(const char *err)
{
    char esc[FERRY_LOG_QUOTED_MAX(FERRY_ERR_MAX)];
    ferry_log(FERRY_LOG_ERROR, "config.reload_failed",
              "generation=%llu error=\"%s\" action=\"keeping the running config\"",
              (unsigned long long)px_proc.generation, ferry_log_escape(err, esc, sizeof esc));
}

static void warn_admin_open(const struct ferry_config *cfg, bool to_stderr);
static void watch_apply(const struct ferry_config *cfg);

/* Reloads the config file; false (running config kept) with the reason in
 * err. Main thread only. */
static bool reload(char *err, size_t errlen)
{
    px_config_watch_rebase(mainloop.watch);
    struct ferry_config *cfg = load_config(mainloop.config_path, err);
    if (!cfg) {
        log_reload_failed(err);
        return false;
    }
    if (cfg->workers != px_proc.nworkers)
        ferry_log(FERRY_LOG_WARN, "config.reload_partial",
                  "key=workers running=%u configured=%u action=\"restart ferry to apply\"",
                  px_proc.nworkers, cfg->workers);
    struct px_listener **pls = listeners_for(cfg, err, errlen);
    struct px_admin *new_admin = NULL;
    if (pls && admin_changed(cfg) && cfg->admin_enabled)
        new_admin = admin_start(cfg, err, errlen);
    if (!pls || (admin_changed(cfg) && cfg->admin_enabled && !new_admin)) {
        log_reload_failed(err);
        if (pls) {
            for (size_t i = 0; i < cfg->nlisteners; i++)
                px_listener_unref(pls[i]);
            free(pls);
        }
        ferry_config_unref(cfg);
        return false;
    }
    if (admin_changed(cfg)) {
        warn_admin_open(cfg, false);
        px_admin_stop(mainloop.admin);
        mainloop.admin = new_admin;
        mainloop.admin_enabled = cfg->admin_enabled;
        mainloop.admin_bind = cfg->admin_bind;
    }
    size_t added = 0, kept = 0;
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        bool existed = false;
        for (size_t k = 0; k < px_proc.nlisteners; k++)
            existed |= px_proc.listeners[k] == pls[i];
        existed ? kept++ : added++;
    }
    size_t removed = px_proc.nlisteners - kept;
    if (cfg->admin_enabled && !px_admin_applies(mainloop.admin, cfg))
        ferry_log(FERRY_LOG_WARN, "config.reload_partial",
                  "key=admin action=\"max_connections, max_connections_per_peer and request_timeout "
                  "apply when the admin endpoint starts: restart ferry or change admin.bind\"");
    install(cfg, pls);
    watch_apply(cfg);
    ferry_log(FERRY_LOG_INFO, "config.reloaded",
              "generation=%llu listeners=%zu added=%zu removed=%zu kept=%zu",
              (unsigned long long)px_proc.generation, cfg->nlisteners, added, removed, kept);
    log_listeners(cfg);
    warn_fd_limit(cfg);
    snprintf(err, errlen, "config generation %llu in force", (unsigned long long)px_proc.generation);
    return true;
}

/* ---- requests from the admin thread ---- */

static struct {
    pthread_mutex_t lock;
    uv_async_t async;           /* on the main loop */
    bool open;                  /* async initialised and not yet closed */
    struct px_reload_wait *waiting; /* reloads asked for and not yet run */
} control = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Answers every waiter of list (each may free itself in done). */
static void answer_reloads(struct px_reload_wait *list, bool ok, const char *msg)
{
    while (list) {
        struct px_reload_wait *next = list->next;
        list->done(list, ok, msg);
        list = next;
    }
}

static void on_control(uv_async_t *h)
{
    (void)h;
    pthread_mutex_lock(&control.lock);
    struct px_reload_wait *list = control.waiting;
    control.waiting = NULL;
    pthread_mutex_unlock(&control.lock);
    if (!list)
        return;
    /* one reload answers every request that came before it started */
    char msg[FERRY_ERR_MAX + 64];
    bool ok;
    if (__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED)) {
        ok = false;
        snprintf(msg, sizeof msg, "draining: reload ignored");
    } else {
        ok = reload(msg, sizeof msg);
    }
    answer_reloads(list, ok, msg);
}

void px_control_reload(struct px_reload_wait *w)
{
    pthread_mutex_lock(&control.lock);
    if (!control.open) {
        pthread_mutex_unlock(&control.lock);
        w->done(w, false, "shutting down");
        return;
    }
    w->next = control.waiting;
    control.waiting = w;
    uv_async_send(&control.async);
    pthread_mutex_unlock(&control.lock);
}

bool px_set_paused(const char *listener, bool paused)
{
    pthread_mutex_lock(&px_proc.lock);
    struct px_listener *named = NULL;
    for (size_t i = 0; listener && i < px_proc.nlisteners; i++)
        if (strcmp(px_proc.listeners[i]->name, listener) == 0)
            named = px_proc.listeners[i];
    bool changed = false;
    if (!listener) {
        changed = __atomic_exchange_n(&px_proc.paused, paused, __ATOMIC_SEQ_CST) != paused;
        for (size_t i = 0; !paused && i < px_proc.nlisteners; i++)
            changed |= __atomic_exchange_n(&px_proc.listeners[i]->paused, 0, __ATOMIC_SEQ_CST) != 0;
    } else if (named) {
        if (!paused && __atomic_load_n(&px_proc.paused, __ATOMIC_SEQ_CST)) {
            /* one listener resumed while all were paused: the others stay */
            for (size_t i = 0; i < px_proc.nlisteners; i++)
                __atomic_store_n(&px_proc.listeners[i]->paused, 1, __ATOMIC_SEQ_CST);
            __atomic_store_n(&px_proc.paused, 0, __ATOMIC_SEQ_CST);
        }
        changed = __atomic_exchange_n(&named->paused, paused, __ATOMIC_SEQ_CST) != paused;
    }
    pthread_mutex_unlock(&px_proc.lock);
    if (listener && !named)
        return false;
    if (!changed)
        return true;
    char qu[FERRY_LOG_QUOTED_MAX(FERRY_NAME_MAX)];
    ferry_log(FERRY_LOG_INFO, paused ? "ferry.paused" : "ferry.resumed", "%s%s %s",
              listener ? "listener=" : "listeners=all",
              listener ? ferry_log_quote(listener, qu, sizeof qu) : "",
              paused ? "new clients and new transactions are held until resume"
                     : "held clients are released");
    if (!paused)
        post_all(PX_MSG_RELEASE);
    return true;
}

struct px_listener **px_switchover_hold(const char *listener, const char *cluster, size_t *n)
{
    *n = 0;
    pthread_mutex_lock(&px_proc.lock);
    struct px_listener **out = calloc(px_proc.nlisteners ? px_proc.nlisteners : 1, sizeof *out);
    for (size_t i = 0; out && i < px_proc.nlisteners; i++) {
        const struct ferry_listener_cfg *l = &px_proc.cfg->listeners[i];
        if (l->probe_enabled && (!listener || strcmp(l->name, listener) == 0) &&
            ferry_listener_cluster(l, cluster)) {
            out[(*n)++] = px_listener_ref(px_proc.listeners[i]);
            __atomic_add_fetch(&px_proc.listeners[i]->switchovers, 1, __ATOMIC_SEQ_CST);
        }
    }
    pthread_mutex_unlock(&px_proc.lock);
    if (*n == 0) {
        free(out);
        return NULL;
    }
    return out;
}

void px_switchover_release(struct px_listener **pls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        __atomic_sub_fetch(&pls[i]->switchovers, 1, __ATOMIC_SEQ_CST);
        px_listener_unref(pls[i]);
    }
    free(pls);
    if (n)
        post_all(PX_MSG_RELEASE);   /* those not paused otherwise go on */
}

static void on_drain_poll(uv_timer_t *t)
{
    for (unsigned i = 0; i < px_proc.nworkers; i++)
        if (!__atomic_load_n(&px_proc.workers[i].finished, __ATOMIC_ACQUIRE))
            return;
    uv_close((uv_handle_t *)&mainloop.sighup, NULL);
    px_config_watch_stop(mainloop.watch);
    mainloop.watch = NULL;
    uv_close((uv_handle_t *)&mainloop.sigterm, NULL);
    uv_close((uv_handle_t *)&mainloop.sigint, NULL);
    uv_close((uv_handle_t *)t, NULL);
    pthread_mutex_lock(&control.lock);
    control.open = false;
    struct px_reload_wait *list = control.waiting;
    control.waiting = NULL;
    pthread_mutex_unlock(&control.lock);
    answer_reloads(list, false, "shutting down");
    uv_close((uv_handle_t *)&control.async, NULL);
}

/* SIGHUP, or the watched config file changed: the same reload. */
static void reload_unless_draining(void)
{
    char err[FERRY_ERR_MAX + 64];
    if (__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED))
        ferry_log(FERRY_LOG_WARN, "config.reload_ignored", "reason=draining");
    else
        reload(err, sizeof err);
}

static void on_config_changed(void *arg)
{
    (void)arg;
    reload_unless_draining();
}

/* Starts or stops watching the config file as cfg's watch_config says. */
static void watch_apply(const struct ferry_config *cfg)
{
    if (cfg->watch_config && !mainloop.watch &&
        !__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED))
        mainloop.watch = px_config_watch_start(mainloop.loop, mainloop.config_path,
                                               on_config_changed, NULL);
    else if (!cfg->watch_config && mainloop.watch) {
        px_config_watch_stop(mainloop.watch);
        mainloop.watch = NULL;
        ferry_log(FERRY_LOG_INFO, "config.watch_stopped", "reason=\"watch_config is false\"");
    }
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    if (signum == SIGHUP) {
        reload_unless_draining();
        return;
    }
    if (__atomic_load_n(&px_proc.draining, __ATOMIC_RELAXED)) {
        ferry_log(FERRY_LOG_WARN, "shutdown.forced", "signal=%s", strsignal(signum));
        post_all(PX_MSG_CLOSE_ALL);
        return;
    }
    __atomic_store_n(&px_proc.draining, 1, __ATOMIC_RELAXED);
    ferry_log(FERRY_LOG_INFO, "shutdown.draining", "signal=%s shutdown_timeout=%g",
              strsignal(signum), px_proc.cfg->shutdown_timeout);
    post_all(PX_MSG_DRAIN);
    uv_timer_start(&mainloop.drain_poll, on_drain_poll, 20, 20);
}

/* TLS settings towards the servers that a review would flag: a mode that
 * does not verify the server, and passwords allowed to such a server. Each
 * said once, at start (log) or by `ferry check` (stderr). */
static void warn_backend_tls(const struct ferry_config *cfg, bool to_stdout)
{
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ferry_listener_cfg *l = &cfg->listeners[i];
        enum ferry_tls_mode mode = FERRY_TLS_VERIFY_FULL;
        ferry_tls_mode_parse(l->backend_tls_mode, &mode);
        if (mode >= FERRY_TLS_VERIFY_CA)
            continue;
        const char *what = l->backend_allow_insecure_password
            ? "servers are not verified and backend_tls.allow_insecure_password lets ferry "
              "send them passwords in cleartext or under their own RSA key"
            : "servers are not verified: ferry gives them no cleartext or RSA-encrypted "
              "password (PostgreSQL probes log in only with SCRAM over TLS)";
        if (to_stdout)
            fprintf(stderr, "ferry: warning: listeners[%zu] (%s): backend_tls.mode %s: %s\n", i,
                    l->name, l->backend_tls_mode, what);
        else
            ferry_log(FERRY_LOG_WARN, "config.backend_tls_unverified",
                      "listener=%s mode=%s allow_insecure_password=%s detail=\"%s\"", l->name,
                      l->backend_tls_mode, l->backend_allow_insecure_password ? "true" : "false",
                      what);
    }
}

/* admin.allow_unauthenticated_writes in force: said at start (log) and by
 * `ferry check` (stderr), as the backend_tls warnings. */
static void warn_admin_open(const struct ferry_config *cfg, bool to_stderr)
{
    if (!ferry_config_admin_open(cfg))
        return;
    char addr[FERRY_HOST_MAX + 16];
    ferry_hostport_format(&cfg->admin_bind, addr, sizeof addr);
    const char *what = "admin.allow_unauthenticated_writes: whoever reaches the admin endpoint "
                       "can pause, switch over and reload ferry";
    if (to_stderr)
        fprintf(stderr, "ferry: warning: admin.bind %s: %s\n", addr, what);
    else
        ferry_log(FERRY_LOG_WARN, "config.admin_unauthenticated", "bind=%s detail=\"%s\"", addr,
                  what);
}

static int cmd_check(const char *path)
{
    char err[FERRY_ERR_MAX];
    struct ferry_config *cfg = load_config(path, err);
    if (!cfg) {
        fprintf(stderr, "ferry: %s\n", err);
        return EXIT_CONFIG;
    }
    printf("%s: ok (%zu listener%s, %u workers)\n", path, cfg->nlisteners,
           cfg->nlisteners == 1 ? "" : "s", cfg->workers);
    warn_backend_tls(cfg, true);
    warn_admin_open(cfg, true);
    char why[400];
    if (fd_limit_low(cfg, true, why, sizeof why))
        fprintf(stderr, "ferry: %s: warning: %s\n", path, why);
    ferry_config_unref(cfg);
    return 0;
}

/* Said twice: to the person who started ferry, and to the log. */
static void start_failed(const char *err)
{
    char esc[FERRY_LOG_QUOTED_MAX(FERRY_ERR_MAX)];
    fprintf(stderr, "ferry: %s\n", err);
    ferry_log(FERRY_LOG_ERROR, "ferry.start_failed", "error=\"%s\"",
              ferry_log_escape(err, esc, sizeof esc));
}

static int cmd_run(const char *path)
{
    char err[FERRY_ERR_MAX];
    struct ferry_config *cfg = load_config(path, err);
    if (!cfg) {
        fprintf(stderr, "ferry: %s\n", err);
        return EXIT_CONFIG;
    }
    signal(SIGPIPE, SIG_IGN);
    ferry_log_set_level(cfg->log_level);
    ferry_log_set_json(cfg->log_format == FERRY_LOG_JSON);
    raise_fd_limit();
    warn_backend_tls(cfg, false);
    warn_admin_open(cfg, false);
    mainloop.config_path = path;
    px_proc.started_ms = px_now_ms();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    px_proc.started_unix = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
    px_proc.nworkers = cfg->workers;
    px_proc.workers = calloc(cfg->workers, sizeof *px_proc.workers);
    struct px_listener **pls = px_proc.workers ? listeners_for(cfg, err, sizeof err) : NULL;
    if (!pls) {
        start_failed(err);
        free(px_proc.workers);
        ferry_config_unref(cfg);
        return EXIT_RUNTIME;
    }
    mainloop.admin_enabled = cfg->admin_enabled;
    mainloop.admin_bind = cfg->admin_bind;
    if (cfg->admin_enabled && !(mainloop.admin = admin_start(cfg, err, sizeof err))) {
        start_failed(err);
        for (size_t i = 0; i < cfg->nlisteners; i++)
            px_listener_unref(pls[i]);
        free(pls);
        free(px_proc.workers);
        ferry_config_unref(cfg);
        return EXIT_RUNTIME;
    }

    mainloop.loop = uv_default_loop();
    uv_signal_init(mainloop.loop, &mainloop.sighup);
    uv_signal_init(mainloop.loop, &mainloop.sigterm);
    uv_signal_init(mainloop.loop, &mainloop.sigint);
    uv_timer_init(mainloop.loop, &mainloop.drain_poll);
    uv_signal_start(&mainloop.sighup, on_signal, SIGHUP);
    uv_signal_start(&mainloop.sigterm, on_signal, SIGTERM);
    uv_signal_start(&mainloop.sigint, on_signal, SIGINT);
    uv_async_init(mainloop.loop, &control.async, on_control);
    control.open = true;

    for (unsigned i = 0; i < px_proc.nworkers; i++) {
        if (px_worker_start(&px_proc.workers[i], i) != 0) {
            ferry_log(FERRY_LOG_ERROR, "ferry.start_failed", "error=\"cannot start worker %u\"", i);
            exit(EXIT_RUNTIME);
        }
    }
    char admin[FERRY_HOST_MAX + 16] = "disabled";
    if (cfg->admin_enabled)
        ferry_hostport_format(&cfg->admin_bind, admin, sizeof admin);
    ferry_log(FERRY_LOG_INFO, "ferry.started", "version=%s config=%s workers=%u admin=%s pid=%ld",
              FERRY_VERSION, path, px_proc.nworkers, admin, (long)getpid());
    install(cfg, pls);
    log_listeners(cfg);
    warn_fd_limit(cfg);
    watch_apply(cfg);

    uv_run(mainloop.loop, UV_RUN_DEFAULT);

    /* Stop discovery first (its publish posts to workers), free it last
     * (workers may still ask it for a probe round until they are joined,
     * and an admin request such as a waiting switchover may still read it
     * until the admin endpoint has stopped). */
    ferry_discovery_stop(px_proc.discovery);
    px_admin_stop(mainloop.admin);
    for (unsigned i = 0; i < px_proc.nworkers; i++)
        px_worker_join(&px_proc.workers[i]);
    ferry_discovery_free(px_proc.discovery);
    px_proc.discovery = NULL;
    ferry_topology_unref(px_proc.topology);
    uv_loop_close(mainloop.loop);
    for (size_t i = 0; i < px_proc.nlisteners; i++)
        px_listener_unref(px_proc.listeners[i]);
    free(px_proc.listeners);
    ferry_config_unref(px_proc.cfg);
    free(px_proc.workers);
    ferry_log(FERRY_LOG_INFO, "ferry.stopped", "reason=shutdown");
    return 0;
}

static int cmd_discover(const char *path, bool as_json)
{
    char err[FERRY_ERR_MAX];
    struct ferry_config *cfg = load_config(path, err);
    if (!cfg) {
        fprintf(stderr, "ferry: %s\n", err);
        return EXIT_CONFIG;
    }
    ferry_log_set_level(FERRY_LOG_WARN);
    bool has_writer = false;
    json_t *doc = ferry_discovery_once(cfg, &has_writer);
    if (as_json) {
        char *text = px_json_dumps(doc, JSON_INDENT(2));
        printf("%s\n", text ? text : "[]");
        free(text);
    } else if (json_array_size(doc) == 0) {
        printf("no listener has a \"probe\" section: nothing to discover\n");
    } else {
        size_t i;
        json_t *l;
        json_array_foreach(doc, i, l) {
            json_t *w = json_object_get(l, "writer");
            printf("listener %s: writer %s (%s)\n", json_string_value(json_object_get(l, "name")),
                   json_is_string(w) ? json_string_value(w) : "NONE",
                   json_string_value(json_object_get(l, "reason")));
            size_t j;
            json_t *c;
            json_array_foreach(json_object_get(l, "clusters"), j, c)
                printf("  %-20s %-28s %-11s %s\n", json_string_value(json_object_get(c, "name")),
                       json_string_value(json_object_get(c, "endpoint")),
                       json_string_value(json_object_get(c, "state")),
                       json_string_value(json_object_get(c, "detail")));
        }
    }
    json_decref(doc);
    ferry_config_unref(cfg);
    return has_writer ? 0 : 1;
}

/* What a command's arguments asked for. */
struct command_args {
    const char *config;
    bool json, help;
};

/* Parses argv[2..] for c: -c/--config FILE (or --config=FILE), --json,
 * -h/--help. 0, or EXIT_CONFIG with the mistake named on stderr. */
static int parse_args(const struct command *c, int argc, char **argv, struct command_args *a)
{
    char bad[160] = "";
    for (int i = 2; i < argc && !bad[0]; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0)
            a->help = true;
        else if (c->json && strcmp(arg, "--json") == 0)
            a->json = true;
        else if (c->config && (strcmp(arg, "-c") == 0 || strcmp(arg, "--config") == 0)) {
            if (i + 1 < argc)
                a->config = argv[++i];
            else
                snprintf(bad, sizeof bad, "%s needs a FILE", arg);
        } else if (c->config && strncmp(arg, "--config=", 9) == 0)
            a->config = arg + 9;
        else if (arg[0] != '-')
            snprintf(bad, sizeof bad, "unexpected argument %.100s", arg);
        else
            snprintf(bad, sizeof bad, "unknown option %.100s", arg);
    }
    if (!bad[0] && !a->help && c->config && !a->config)
        snprintf(bad, sizeof bad, "needs -c FILE");
    if (!bad[0])
        return 0;
    fprintf(stderr, "ferry: %s: %s\n", c->name, bad);
    command_usage(c, stderr);
    return EXIT_CONFIG;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return EXIT_CONFIG;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0)
        return ferry_version_main(false);
    const struct command *c = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(cmd, commands[i].name) == 0)
            c = &commands[i];
    if (!c) {
        fprintf(stderr, "ferry: unknown command \"%s\"\n", cmd);
        usage(stderr);
        return EXIT_CONFIG;
    }
    if (strcmp(cmd, "ctl") == 0)
        return ferry_ctl_main(argc - 2, argv + 2);     /* its own options and help */
    struct command_args a = {0};
    int rc = parse_args(c, argc, argv, &a);
    if (rc != 0)
        return rc;
    if (a.help) {
        command_usage(c, stdout);
        return 0;
    }
    if (strcmp(cmd, "version") == 0)
        return ferry_version_main(a.json);
    if (strcmp(cmd, "discover") == 0)
        return cmd_discover(a.config, a.json);
    return strcmp(cmd, "run") == 0 ? cmd_run(a.config) : cmd_check(a.config);
}
