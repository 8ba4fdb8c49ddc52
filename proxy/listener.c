/* Listening sockets: one per worker per listener, all bound to the same
 * address with SO_REUSEPORT so the kernel spreads accepts across workers.
 * libuv 1.44 has no flag for it, so the socket is built by hand here (on the
 * main thread, where a bind failure can still reject a start or a reload) and
 * handed to the worker, which adopts it with uv_tcp_open.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/log.h"
#include "proxy.h"

/* Resolves a bind address (literal or name, passive) to one sockaddr. */
static int resolve_bind(const struct ferry_hostport *hp, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", hp->port);
    const char *host = strcmp(hp->host, "*") == 0 ? NULL : hp->host;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0)
        return rc;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Returns a bound (not yet listening) socket, or -errno with err filled.
 * reuseport: share the port with ferry's other sockets on it (SO_REUSEPORT).
 * SO_REUSEADDR either way, so that connections of a previous run in
 * TIME_WAIT do not count; Linux still refuses a bind next to a listening
 * socket unless both sides share with SO_REUSEPORT. */
static int open_bound_socket(const struct sockaddr_storage *ss, socklen_t len, const char *addr,
                             bool reuseport, char *err, size_t errlen)
{
    const char *errpos = "socket";
    int one = 1, rc;
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto failed;
    errpos = "setsockopt(SO_REUSEADDR)";
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        goto failed;
    errpos = "setsockopt(SO_REUSEPORT)";
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto failed;
    if (ss->ss_family == AF_INET6) {
        errpos = "setsockopt(IPV6_V6ONLY)";
        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
            goto failed;
    }
    errpos = "bind";
    if (bind(fd, (const struct sockaddr *)ss, len) < 0)
        goto failed;
    return fd;
failed:
    rc = -errno;
    snprintf(err, errlen, "%s: %s: %s", addr, errpos, strerror(-rc));
    if (fd >= 0)
        close(fd);
    return rc;
}

int px_bind_probe(const struct ferry_hostport *hp, char *err, size_t errlen)
{
    char addr[FERRY_HOST_MAX + 16];
    ferry_hostport_format(hp, addr, sizeof addr);
    struct sockaddr_storage ss;
    socklen_t len;
    int rc = resolve_bind(hp, &ss, &len);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve: %s", addr, gai_strerror(rc));
        return -EINVAL;
    }
    int fd = open_bound_socket(&ss, len, addr, false, err, errlen);
    if (fd == -EADDRINUSE)
        snprintf(err, errlen, "%s is already in use by another process", addr);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

struct px_listener *px_listener_create(const struct ferry_listener_cfg *lcfg, unsigned nworkers,
                                       char *err, size_t errlen)
{
    char addr[FERRY_HOST_MAX + 16];
    ferry_hostport_format(&lcfg->bind, addr, sizeof addr);

    struct sockaddr_storage ss;
    socklen_t len;
    int rc = resolve_bind(&lcfg->bind, &ss, &len);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve: %s", addr, gai_strerror(rc));
        return NULL;
    }

    struct px_listener *pl = calloc(1, sizeof *pl);
    if (!pl)
        goto oom;
    pthread_mutex_init(&pl->greeting_lock, NULL);
    pthread_mutex_init(&pl->logins.lock, NULL);
    pl->fds = malloc(nworkers * sizeof *pl->fds);
    pl->stats = aligned_alloc(64, nworkers * sizeof *pl->stats);
    pl->logins.buckets = calloc(PX_LOGIN_BUCKETS, sizeof *pl->logins.buckets);
    if (!pl->fds || !pl->stats || !pl->logins.buckets)
        goto oom;
    memset(pl->stats, 0, nworkers * sizeof *pl->stats);
    pl->refs = 1;
    pl->nworkers = nworkers;
    snprintf(pl->name, sizeof pl->name, "%s", lcfg->name);
    pl->protocol = lcfg->protocol;
    pl->bind = lcfg->bind;
    for (unsigned i = 0; i < nworkers; i++)
        pl->fds[i] = -1;
    for (unsigned i = 0; i < nworkers; i++) {
        pl->fds[i] = open_bound_socket(&ss, len, addr, true, err, errlen);
        if (pl->fds[i] < 0) {
            px_listener_unref(pl);
            return NULL;
        }
    }
    return pl;
oom:
    snprintf(err, errlen, "%s: out of memory", addr);
    if (pl) {
        free(pl->fds);
        free(pl->stats);
        free(pl->logins.buckets);
        pthread_mutex_destroy(&pl->logins.lock);
        pthread_mutex_destroy(&pl->greeting_lock);
        free(pl);
    }
    return NULL;
}

struct px_listener *px_listener_ref(struct px_listener *pl)
{
    __atomic_add_fetch(&pl->refs, 1, __ATOMIC_RELAXED);
    return pl;
}

void px_listener_unref(struct px_listener *pl)
{
    if (!pl || __atomic_sub_fetch(&pl->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (unsigned i = 0; i < pl->nworkers; i++)
        if (pl->fds[i] >= 0)
            close(pl->fds[i]);      /* never handed to a worker */
    free(pl->fds);
    free(pl->stats);
    /* every session holds a reference: no login is under way any more */
    free(pl->logins.buckets);
    pthread_mutex_destroy(&pl->logins.lock);
    pthread_mutex_destroy(&pl->greeting_lock);
    free(pl);
}

bool px_listener_paused(const struct px_listener *pl)
{
    return __atomic_load_n(&px_proc.paused, __ATOMIC_RELAXED) ||
           __atomic_load_n(&pl->paused, __ATOMIC_RELAXED);
}

bool px_listener_holding(const struct px_listener *pl)
{
    return __atomic_load_n(&pl->switchovers, __ATOMIC_RELAXED) > 0;
}

bool px_listener_matches(const struct px_listener *pl, const struct ferry_listener_cfg *lcfg)
{
    return strcmp(pl->name, lcfg->name) == 0 && pl->protocol == lcfg->protocol &&
           ferry_hostport_equal(&pl->bind, &lcfg->bind);
}

struct px_counters px_listener_totals(const struct px_listener *pl)
{
    struct px_counters sum = {0};
    for (unsigned w = 0; w < pl->nworkers; w++) {
        const struct px_counters *c = &pl->stats[w];
        sum.accepted += PX_STAT_GET(c->accepted);
        sum.refused += PX_STAT_GET(c->refused);
        sum.login_timeouts += PX_STAT_GET(c->login_timeouts);
        sum.active += PX_STAT_GET(c->active);
        sum.backend_connect_failed += PX_STAT_GET(c->backend_connect_failed);
        sum.bytes_from_clients += PX_STAT_GET(c->bytes_from_clients);
        sum.bytes_from_servers += PX_STAT_GET(c->bytes_from_servers);
        sum.held += PX_STAT_GET(c->held);
        sum.waiting_to_move += PX_STAT_GET(c->waiting_to_move);
        sum.queries += PX_STAT_GET(c->queries);
        sum.transactions += PX_STAT_GET(c->transactions);
        sum.hold_timeouts += PX_STAT_GET(c->hold_timeouts);
        sum.idle_timeouts += PX_STAT_GET(c->idle_timeouts);
        sum.moves += PX_STAT_GET(c->moves);
        sum.backends += PX_STAT_GET(c->backends);
        sum.moves_failed += PX_STAT_GET(c->moves_failed);
        sum.ended_by_server += PX_STAT_GET(c->ended_by_server);
        sum.errors_protocol += PX_STAT_GET(c->errors_protocol);
        sum.errors_auth += PX_STAT_GET(c->errors_auth);
        sum.errors_failover += PX_STAT_GET(c->errors_failover);
        sum.errors_backend_refused += PX_STAT_GET(c->errors_backend_refused);
    }
    return sum;
}

/* ---- clients logging in ---- */

struct px_login_source {
    struct px_source src;
    uint32_t count;                 /* clients from src logging in now (> 0) */
    struct px_login_source *next;
};

static unsigned source_hash(const struct px_source *src)
{
    uint32_t h = 2166136261u ^ src->family;    /* FNV-1a */
    for (size_t i = 0; i < sizeof src->addr; i++)
        h = (h ^ src->addr[i]) * 16777619u;
    return h % PX_LOGIN_BUCKETS;
}

static struct px_login_source **source_slot(struct px_logins *l, const struct px_source *src)
{
    struct px_login_source **it = &l->buckets[source_hash(src)];
    while (*it && memcmp(&(*it)->src, src, sizeof *src) != 0)
        it = &(*it)->next;
    return it;
}

enum px_refusal px_listener_login_begin(struct px_listener *pl, const struct px_source *src,
                                        uint32_t max_login, uint32_t per_source)
{
    struct px_logins *l = &pl->logins;
    enum px_refusal verdict = PX_REFUSE_NONE;
    pthread_mutex_lock(&l->lock);
    struct px_login_source **slot = source_slot(l, src);
    if (l->total >= max_login) {
        verdict = PX_REFUSE_LOGINS;
    } else if (*slot && (*slot)->count >= per_source) {
        verdict = PX_REFUSE_SOURCE;
    } else if (!*slot && !(*slot = calloc(1, sizeof **slot))) {
        verdict = PX_REFUSE_LOGINS;     /* out of memory: as if full */
    } else {
        (*slot)->src = *src;
        (*slot)->count++;
        l->total++;
    }
    pthread_mutex_unlock(&l->lock);
    return verdict;
}

void px_listener_login_end(struct px_listener *pl, const struct px_source *src)
{
    struct px_logins *l = &pl->logins;
    pthread_mutex_lock(&l->lock);
    struct px_login_source **slot = source_slot(l, src);
    struct px_login_source *e = *slot;
    if (e) {
        l->total--;
        if (--e->count == 0) {
            *slot = e->next;
            free(e);
        }
    }
    pthread_mutex_unlock(&l->lock);
}

uint32_t px_listener_logins(struct px_listener *pl)
{
    pthread_mutex_lock(&pl->logins.lock);
    uint32_t n = pl->logins.total;
    pthread_mutex_unlock(&pl->logins.lock);
    return n;
}
