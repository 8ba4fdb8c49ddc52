/* ferry's bench load generator: N client threads against one PostgreSQL or
 * MySQL endpoint for a duration (or a number of transactions). Modes: select,
 * rw (records every acknowledged write id), connect (one connection per
 * transaction), idle (hold N connections), init (create the tables). It
 * survives failovers: errors are counted by class and clients reconnect.
 * With --dns-file it models a client that finds the writer through a DNS
 * name with a TTL (a Route53 failover record): see "the DNS-based client". */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "hist.h"
#include "stats.h"

#define MAX_CLIENTS 4096          /* rw ids carry the client index in 12 bits */
#define MAX_IDLE 200000
#define IDLE_THREADS 16
#define STOP_GRACE_NS 5000000000ull
#define NS 1000000000ull

enum mode { MODE_SELECT, MODE_RW, MODE_CONNECT, MODE_IDLE, MODE_INIT };
static const char *const MODE_NAMES[] = {"select", "rw", "connect", "idle", "init"};

struct opts {
    const char *dsn, *out_path, *acked_path, *label, *timeline_path, *dns_file;
    char dns_name[128];           /* the DSN's host=, looked up in dns_file */
    double dns_ttl;
    bool dns_per_client;          /* --dns-cache client: one cache per client */
    const struct db_driver *db;
    enum mode mode;
    int clients;
    double duration, hold;
    long transactions, rows;
    bool prepared;
    int64_t id_base;
    unsigned backoff_max_ms;
};

/* one timeline event: a transaction acknowledged (key "") or an error (its
 * class: "connect", "lost" or the SQLSTATE), µs of wall clock since t0_unix */
struct tev {
    int64_t t_us;
    int64_t id;                   /* rw mode: the acknowledged write's id; else 0 */
    char key[8];
};

struct tevvec {
    struct tev *v;
    size_t n, cap;
};

struct dns_cache {
    pthread_mutex_t mu;
    bool valid;
    uint64_t fetched_ns;
    char answer[256];             /* " host=H port=P", appended to the DSN */
};

struct client {
    const struct opts *o;
    int idx;
    struct dns_cache own_dns;     /* --dns-cache client */
    pthread_t thread;
    struct db_conn *conn;
    uint64_t rng;
    unsigned backoff;
    int64_t seq;
    _Atomic uint64_t txns, errors;
    atomic_bool done;
    struct hist hist;
    struct errtab errs;
    struct idvec acked, unknown;
    struct tevvec timeline;
};

struct interval {
    double t;
    uint64_t txns, errors;
};

struct run {
    struct client *clients;
    int n;
    struct interval *iv;
    size_t niv, cap;
    double elapsed;
    int stuck;
};

static atomic_bool g_stop;
static struct dns_cache g_dns = {.mu = PTHREAD_MUTEX_INITIALIZER};
static pthread_barrier_t g_start;
static uint64_t g_t0;            /* CLOCK_MONOTONIC ns as the clients start */
static double g_t0_unix;         /* the same moment on the wall clock */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / NS), .tv_nsec = (long)(ns % NS)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void sleep_until(uint64_t deadline)
{
    uint64_t now = now_ns();
    if (deadline > now)
        sleep_ns(deadline - now);
}

/* xorshift64*: a key in 1..rows */
static long random_key(struct client *c)
{
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return (long)((c->rng * 2685821657736338717ull) % (uint64_t)c->o->rows) + 1;
}

/* ---- one client ---------------------------------------------------------- */

/* The wall clock in s. Timeline events are stamped with it, not with the
 * monotonic clock: the drills set them beside the servers' logs and ferry's
 * history, which are wall-clock times, and this VM's wall clock is stepped
 * now and then (37 ms within 8 s once), which the monotonic clock is not. */
static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* id: the write id an acknowledged rw transaction committed, else 0 */
static void timeline_note(struct client *c, const char *key, int64_t id)
{
    if (!c->o->timeline_path)
        return;
    struct tevvec *tv = &c->timeline;
    if (tv->n == tv->cap) {
        size_t cap = tv->cap ? tv->cap * 2 : 4096;
        struct tev *v = realloc(tv->v, cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "loadgen: out of memory for the timeline\n");
            exit(1);
        }
        tv->v = v;
        tv->cap = cap;
    }
    struct tev *e = &tv->v[tv->n++];
    e->t_us = (int64_t)((wall_s() - g_t0_unix) * 1e6);
    e->id = id;
    snprintf(e->key, sizeof e->key, "%s", key);
}

/* ---- the DNS-based client (--dns-file) ------------------------------------
 * The DSN's host is a name; the "DNS" is a file of "NAME HOST:PORT" lines that
 * the failover drill rewrites when it promotes the replica, as a Route53
 * health check flips a failover record. The answer is cached for --dns-ttl
 * seconds, as a JVM's InetAddress cache or a caching stub resolver does:
 * a connect uses the cached answer while it is younger than the TTL and only
 * a connect after that reads the file again (nothing refreshes an idle
 * cache). By default one cache serves the whole process (one application,
 * one resolver); --dns-cache client gives every client thread its own. Every
 * read of the file is logged with its answer (timeline "MS dns HOST:PORT"). */

struct dns_lookup {
    int64_t t_us;
    char answer[72];
};

static struct {
    pthread_mutex_t mu;
    struct dns_lookup *v;
    size_t n, cap;
} g_dns_log = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void dns_log(const char *answer)
{
    pthread_mutex_lock(&g_dns_log.mu);
    if (g_dns_log.n == g_dns_log.cap) {
        size_t cap = g_dns_log.cap ? g_dns_log.cap * 2 : 256;
        struct dns_lookup *v = realloc(g_dns_log.v, cap * sizeof *v);
        if (!v) {
            fprintf(stderr, "loadgen: out of memory for the DNS log\n");
            exit(1);
        }
        g_dns_log.v = v;
        g_dns_log.cap = cap;
    }
    struct dns_lookup *l = &g_dns_log.v[g_dns_log.n++];
    l->t_us = (int64_t)((wall_s() - g_t0_unix) * 1e6);
    snprintf(l->answer, sizeof l->answer, "%s", answer);
    pthread_mutex_unlock(&g_dns_log.mu);
}

/* Reads the record for name from path into " host=H port=P"; false if the
 * file or the name is missing or malformed. */
static bool dns_read(const char *path, const char *name, char *answer, size_t size)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[512], n[128], hp[200];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%127s %199s", n, hp) != 2 || strcmp(n, name) != 0)
            continue;
        char *colon = strrchr(hp, ':');
        if (!colon || colon == hp || !colon[1])
            break;
        *colon = '\0';
        const char *host = hp;
        if (host[0] == '[' && colon[-1] == ']') {   /* [::1]:5432 */
            host++;
            colon[-1] = '\0';
        }
        snprintf(answer, size, " host=%s port=%s", host, colon + 1);
        found = true;
    }
    fclose(f);
    return found;
}

/* The DSN to connect with: o->dsn with the (cached) answer appended, which
 * overrides its host and port (libpq and db_my.c both take the last one). */
static bool dns_dsn(struct client *c, char *dsn, size_t size, struct db_err *err)
{
    const struct opts *o = c->o;
    struct dns_cache *dc = o->dns_per_client ? &c->own_dns : &g_dns;
    uint64_t now = now_ns();
    pthread_mutex_lock(&dc->mu);
    if (!dc->valid || now - dc->fetched_ns >= (uint64_t)(o->dns_ttl * 1e9)) {
        char answer[sizeof dc->answer];
        if (dns_read(o->dns_file, o->dns_name, answer, sizeof answer)) {
            snprintf(dc->answer, sizeof dc->answer, "%s", answer);
            dc->valid = true;
            dc->fetched_ns = now;
            char shown[72], h[128], pt[16];
            if (sscanf(answer, " host=%127s port=%15s", h, pt) == 2)
                snprintf(shown, sizeof shown, "%.50s:%s", h, pt);
            else
                snprintf(shown, sizeof shown, "?");
            dns_log(shown);
        } else {
            dc->valid = false;
            dns_log("none");
        }
    }
    bool ok = dc->valid;
    if (ok)
        snprintf(dsn, size, "%s%s", o->dsn, dc->answer);
    pthread_mutex_unlock(&dc->mu);
    if (!ok)
        db_err_set(err, DB_ERR_CONNECT, NULL, "dns: no record for the name in --dns-file");
    return ok;
}

static bool client_connect(struct client *c, struct db_err *err)
{
    if (c->conn)
        return true;
    if (!c->o->dns_file) {
        c->conn = c->o->db->connect(c->o->dsn, c->o->prepared, err);
        return c->conn != NULL;
    }
    char dsn[1024];
    if (!dns_dsn(c, dsn, sizeof dsn, err))
        return false;
    c->conn = c->o->db->connect(dsn, c->o->prepared, err);
    return c->conn != NULL;
}

static void client_disconnect(struct client *c)
{
    if (c->conn)
        c->o->db->close(c->conn);
    c->conn = NULL;
}

static bool client_rw(struct client *c, struct db_err *err)
{
    int64_t id = c->o->id_base + ((int64_t)c->idx << 32) + ++c->seq;
    bool at_commit = false;
    if (c->o->db->rw(c->conn, id, random_key(c), &at_commit, err)) {
        idvec_push(&c->acked, id);
        return true;
    }
    if (at_commit)
        idvec_push(&c->unknown, id);
    return false;
}

static bool client_txn(struct client *c, struct db_err *err)
{
    if (!client_connect(c, err))
        return false;
    bool ok = c->o->mode == MODE_RW ? client_rw(c, err)
                                    : c->o->db->select(c->conn, random_key(c), err);
    if (c->o->mode == MODE_CONNECT)
        client_disconnect(c);
    return ok;
}

/* Errors after which this connection can never succeed again: the server
 * turned read-only (PostgreSQL 25006, MySQL 1290: a demoted writer; a client
 * must reconnect to find the new one), is shutting the session down (57P0x;
 * MySQL 1053, which ferry also sends when the writer moved; 1927: killed) or
 * the connection is broken (SQLSTATE class 08). */
static bool must_reconnect(const struct db_err *err)
{
    static const char *const STATES[] = {"25006", "57P01", "57P02", "57P03"};
    static const char *const CODES[] = {"my1290", "my1053", "my1927"};
    if (err->kind != DB_ERR_QUERY)
        return false;
    if (strncmp(err->sqlstate, "08", 2) == 0)
        return true;
    for (unsigned i = 0; i < sizeof STATES / sizeof STATES[0]; i++)
        if (strcmp(err->sqlstate, STATES[i]) == 0)
            return true;
    for (unsigned i = 0; i < sizeof CODES / sizeof CODES[0]; i++)
        if (strcmp(err->code, CODES[i]) == 0)
            return true;
    return false;
}

/* Counts the error, drops a broken connection, backs off 10 ms doubling up
 * to --backoff-max-ms (640 ms by default). */
static void client_error(struct client *c, const struct db_err *err)
{
    errtab_note(&c->errs, err);
    timeline_note(c, err->kind == DB_ERR_CONNECT ? "connect"
                     : err->kind == DB_ERR_LOST  ? "lost"
                     : err->code[0]              ? err->code
                                                 : err->sqlstate,
                  0);
    atomic_fetch_add_explicit(&c->errors, 1, memory_order_relaxed);
    if (c->conn && (!c->o->db->alive(c->conn) || must_reconnect(err)))
        client_disconnect(c);
    uint64_t ms = 10ull << (c->backoff < 10 ? c->backoff : 10);
    sleep_ns((ms < c->o->backoff_max_ms ? ms : c->o->backoff_max_ms) * 1000000ull);
    c->backoff++;
}

static void client_step(struct client *c)
{
    struct db_err err;
    uint64_t t0 = now_ns();
    if (!client_txn(c, &err)) {
        client_error(c, &err);
        return;
    }
    hist_record(&c->hist, now_ns() - t0);
    timeline_note(c, "", c->o->mode == MODE_RW && c->acked.n ? c->acked.v[c->acked.n - 1] : 0);
    atomic_fetch_add_explicit(&c->txns, 1, memory_order_relaxed);
    c->backoff = 0;
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    struct db_err err;
    if (c->o->mode != MODE_CONNECT && !client_connect(c, &err))
        client_error(c, &err);
    pthread_barrier_wait(&g_start);
    while (!atomic_load(&g_stop) &&
           (c->o->transactions == 0 || (long)atomic_load(&c->txns) < c->o->transactions))
        client_step(c);
    client_disconnect(c);
    atomic_store(&c->done, true);
    return NULL;
}

/* ---- a timed run ----------------------------------------------------------- */

static void run_sample(struct run *r, double t)
{
    struct interval cur = {.t = t};
    for (int i = 0; i < r->n; i++) {
        cur.txns += atomic_load_explicit(&r->clients[i].txns, memory_order_relaxed);
        cur.errors += atomic_load_explicit(&r->clients[i].errors, memory_order_relaxed);
    }
    if (r->niv == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 64;
        r->iv = realloc(r->iv, r->cap * sizeof *r->iv);
        if (!r->iv) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(1);
        }
    }
    r->iv[r->niv++] = cur;   /* cumulative; turned into deltas when written */
}

static bool run_all_done(const struct run *r)
{
    for (int i = 0; i < r->n; i++)
        if (!atomic_load(&r->clients[i].done))
            return false;
    return true;
}

/* Joins the clients that finish within the grace time; the others are stuck
 * in a blocking call (a dead peer) and are left behind, counted. */
static void run_stop(struct run *r)
{
    atomic_store(&g_stop, true);
    uint64_t deadline = now_ns() + STOP_GRACE_NS;
    while (!run_all_done(r) && now_ns() < deadline)
        sleep_ns(10000000);
    for (int i = 0; i < r->n; i++) {
        if (atomic_load(&r->clients[i].done))
            pthread_join(r->clients[i].thread, NULL);
        else
            r->stuck++;
    }
}

static void run_timed(struct run *r, const struct opts *o)
{
    /* the timeline's origin, set before the clients make their first
     * connection (timed when it fails, and its DNS lookup logged) */
    struct timespec wall;
    g_t0 = now_ns();
    clock_gettime(CLOCK_REALTIME, &wall);
    g_t0_unix = (double)wall.tv_sec + (double)wall.tv_nsec / 1e9;
    pthread_barrier_init(&g_start, NULL, (unsigned)r->n + 1);
    for (int i = 0; i < r->n; i++)
        if (pthread_create(&r->clients[i].thread, NULL, client_main, &r->clients[i]) != 0) {
            fprintf(stderr, "loadgen: cannot start client thread %d\n", i);
            exit(1);
        }
    pthread_barrier_wait(&g_start);
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(o->duration * 1e9);
    for (uint64_t next = t0 + NS;; next += NS) {
        bool last = o->transactions == 0 ? next >= end : run_all_done(r);
        sleep_until(last && o->transactions == 0 ? end : next);
        run_sample(r, (double)(now_ns() - t0) / 1e9);
        if (last || run_all_done(r))
            break;
    }
    r->elapsed = (double)(now_ns() - t0) / 1e9;
    run_stop(r);
}

/* ---- output ----------------------------------------------------------------- */

static void write_latency(FILE *out, const struct hist *h)
{
    static const struct { const char *name; double q; } Q[] = {
        {"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}, {"p999", 0.999}};
    fprintf(out, "{\"mean\":%.3f,\"min\":%.3f",
            h->n ? (double)h->sum / (double)h->n / 1e3 : 0.0, h->n ? (double)h->min / 1e3 : 0.0);
    for (unsigned i = 0; i < sizeof Q / sizeof Q[0]; i++)
        fprintf(out, ",\"%s\":%.3f", Q[i].name, (double)hist_quantile(h, Q[i].q) / 1e3);
    fprintf(out, ",\"max\":%.3f}", (double)h->max / 1e3);
}

static void write_intervals(FILE *out, const struct run *r)
{
    struct interval prev = {0};
    fputc('[', out);
    for (size_t i = 0; i < r->niv; i++) {
        const struct interval *cur = &r->iv[i];
        fprintf(out, "%s{\"t\":%.3f,\"txns\":%llu,\"errors\":%llu}", i ? "," : "", cur->t,
                (unsigned long long)(cur->txns - prev.txns),
                (unsigned long long)(cur->errors - prev.errors));
        prev = *cur;
    }
    fputc(']', out);
}

static void write_header(FILE *out, const struct opts *o)
{
    fputs("{\"label\":", out);
    json_string(out, o->label ? o->label : "");
    fprintf(out, ",\"driver\":\"%s\",\"mode\":\"%s\",\"prepared\":%s,\"clients\":%d",
            o->db->name, MODE_NAMES[o->mode], o->prepared ? "true" : "false", o->clients);
}

static void write_result(FILE *out, const struct opts *o, const struct run *r,
                         const struct hist *h, const struct errtab *errs, const size_t ids[2])
{
    write_header(out, o);
    fprintf(out, ",\"duration_s\":%.3f,\"elapsed_s\":%.3f,\"txns\":%llu,\"tps\":%.1f",
            o->duration, r->elapsed, (unsigned long long)h->n,
            r->elapsed > 0 ? (double)h->n / r->elapsed : 0.0);
    fprintf(out, ",\"acked_writes\":%zu,\"commit_unknown\":%zu,\"stuck_clients\":%d",
            ids[0], ids[1], r->stuck);
    fprintf(out, ",\"t0_unix\":%.6f", g_t0_unix);
    fputs(",\"errors\":", out);
    errtab_write_json(errs, out);
    fputs(",\"latency_us\":", out);
    write_latency(out, h);
    if (o->dns_file) {
        pthread_mutex_lock(&g_dns_log.mu);
        fprintf(out, ",\"dns\":{\"ttl_s\":%.3f,\"cache\":\"%s\",\"lookups\":%zu}", o->dns_ttl,
                o->dns_per_client ? "client" : "process", g_dns_log.n);
        pthread_mutex_unlock(&g_dns_log.mu);
    }
    fputs(",\"intervals\":", out);
    write_intervals(out, r);
    fputs(",\"histogram_us\":", out);
    hist_write_json(h, out);
    fputs("}\n", out);
}

static void write_ids(const char *path, const struct run *r, bool unknown)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "loadgen: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    for (int i = 0; i < r->n; i++) {
        const struct idvec *iv = unknown ? &r->clients[i].unknown : &r->clients[i].acked;
        for (size_t j = 0; j < iv->n; j++)
            fprintf(f, "%lld\n", (long long)iv->v[j]);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "loadgen: cannot write %s\n", path);
        exit(1);
    }
}

/* "MS ok" ("MS ok ID" in rw mode: the write it acknowledged) or "MS err CLASS"
 * per event, ms since t0_unix; per client, unsorted; then "MS dns HOST:PORT"
 * per read of --dns-file */
static void write_timeline(const char *path, const struct run *r)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "loadgen: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    for (int i = 0; i < r->n; i++) {
        if (atomic_load(&r->clients[i].done) == false)
            continue;   /* a stuck client's thread may still be writing */
        const struct tevvec *tv = &r->clients[i].timeline;
        for (size_t j = 0; j < tv->n; j++) {
            double ms = (double)tv->v[j].t_us / 1e3;
            if (tv->v[j].key[0])
                fprintf(f, "%.3f err %s\n", ms, tv->v[j].key);
            else if (tv->v[j].id)
                fprintf(f, "%.3f ok %lld\n", ms, (long long)tv->v[j].id);
            else
                fprintf(f, "%.3f ok\n", ms);
        }
    }
    pthread_mutex_lock(&g_dns_log.mu);
    for (size_t j = 0; j < g_dns_log.n; j++)
        fprintf(f, "%.3f dns %s\n", (double)g_dns_log.v[j].t_us / 1e3, g_dns_log.v[j].answer);
    pthread_mutex_unlock(&g_dns_log.mu);
    if (fclose(f) != 0) {
        fprintf(stderr, "loadgen: cannot write %s\n", path);
        exit(1);
    }
}

static FILE *open_out(const char *path)
{
    if (!path || strcmp(path, "-") == 0)
        return stdout;
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "loadgen: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    return f;
}

static void close_out(FILE *f)
{
    if ((f == stdout ? fflush(f) : fclose(f)) != 0) {
        fprintf(stderr, "loadgen: writing the result failed\n");
        exit(1);
    }
}

static int report(const struct opts *o, struct run *r)
{
    struct hist *h = malloc(sizeof *h);
    struct errtab *errs = calloc(1, sizeof *errs);
    size_t ids[2] = {0, 0};
    if (!h || !errs) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    hist_init(h);
    for (int i = 0; i < r->n; i++) {
        hist_merge(h, &r->clients[i].hist);
        errtab_merge(errs, &r->clients[i].errs);
        ids[0] += r->clients[i].acked.n;
        ids[1] += r->clients[i].unknown.n;
    }
    if (o->acked_path) {
        char unknown_path[4096];
        snprintf(unknown_path, sizeof unknown_path, "%s.unknown", o->acked_path);
        write_ids(o->acked_path, r, false);
        write_ids(unknown_path, r, true);
    }
    if (o->timeline_path)
        write_timeline(o->timeline_path, r);
    FILE *out = open_out(o->out_path);
    write_result(out, o, r, h, errs, ids);
    close_out(out);
    free(h);
    free(errs);
    return 0;
}

static int run_load(const struct opts *o)
{
    struct run r = {.n = o->clients, .clients = calloc((size_t)o->clients, sizeof(struct client))};
    if (!r.clients) {
        fprintf(stderr, "loadgen: out of memory\n");
        return 1;
    }
    for (int i = 0; i < r.n; i++) {
        struct client *c = &r.clients[i];
        c->o = o;
        c->idx = i;
        c->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        pthread_mutex_init(&c->own_dns.mu, NULL);
        hist_init(&c->hist);
    }
    run_timed(&r, o);
    int rc = report(o, &r);
    fprintf(stderr, "loadgen: %s %s: %zu samples, elapsed %.1f s, %d stuck\n", o->db->name,
            MODE_NAMES[o->mode], r.niv, r.elapsed, r.stuck);
    return rc;
}

/* ---- idle and init modes -------------------------------------------------- */

struct idle_part {
    const struct opts *o;
    int first, step;
    struct db_conn **conns;
    int ok;
    struct errtab errs;
};

static void *idle_connect(void *arg)
{
    struct idle_part *p = arg;
    for (int i = p->first; i < p->o->clients; i += p->step) {
        struct db_err err;
        p->conns[i] = p->o->db->connect(p->o->dsn, false, &err);
        if (p->conns[i])
            p->ok++;
        else
            errtab_note(&p->errs, &err);
    }
    return NULL;
}

/* Waits until stdin reaches EOF (the caller is done measuring) or hold
 * seconds pass, whichever comes first. */
static void idle_hold(double hold)
{
    uint64_t end = now_ns() + (uint64_t)(hold * 1e9);
    char buf[256];
    for (uint64_t now = now_ns(); now < end; now = now_ns()) {
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        int ms = (int)((end - now) / 1000000) + 1;
        if (poll(&pfd, 1, ms > 1000 ? 1000 : ms) > 0 && read(0, buf, sizeof buf) <= 0)
            return;
    }
}

static void idle_report(const struct opts *o, int ok, const struct errtab *errs, double secs)
{
    FILE *out = open_out(o->out_path);
    write_header(out, o);
    fprintf(out, ",\"connected\":%d,\"connect_s\":%.3f,\"errors\":", ok, secs);
    errtab_write_json(errs, out);
    fputs("}\n", out);
    close_out(out);
}

static int run_idle(const struct opts *o)
{
    struct db_conn **conns = calloc((size_t)o->clients, sizeof *conns);
    struct idle_part part[IDLE_THREADS];
    pthread_t threads[IDLE_THREADS];
    int nt = o->clients < IDLE_THREADS ? o->clients : IDLE_THREADS, ok = 0;
    struct errtab errs = {0};
    if (!conns)
        return 1;
    uint64_t t0 = now_ns();
    for (int t = 0; t < nt; t++) {
        part[t] = (struct idle_part){.o = o, .first = t, .step = nt, .conns = conns};
        if (pthread_create(&threads[t], NULL, idle_connect, &part[t]) != 0)
            return 1;
    }
    for (int t = 0; t < nt; t++) {
        pthread_join(threads[t], NULL);
        ok += part[t].ok;
        errtab_merge(&errs, &part[t].errs);
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    printf("ready %d %llu\n", ok, (unsigned long long)errtab_total(&errs));
    fflush(stdout);
    idle_hold(o->hold);
    for (int i = 0; i < o->clients; i++)
        if (conns[i])
            o->db->close(conns[i]);
    free(conns);
    idle_report(o, ok, &errs, secs);
    return 0;
}

static int run_init(const struct opts *o)
{
    struct db_err err;
    struct db_conn *c = o->db->connect(o->dsn, false, &err);
    bool ok = c && o->db->init(c, o->rows, &err);
    if (c)
        o->db->close(c);
    if (!ok)
        fprintf(stderr, "loadgen: init failed: %s\n", err.msg);
    return ok ? 0 : 1;
}

/* ---- command line ----------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: loadgen --dsn DSN [--driver pg|mysql] [--mode select|rw|connect|idle|init]\n"
          "               [--clients N] [--duration S | --transactions N] [--prepared]\n"
          "               [--rows N] [--out FILE] [--acked FILE] [--id-base N]\n"
          "               [--hold S] [--label TEXT] [--timeline FILE] [--backoff-max-ms N]\n"
          "               [--dns-file FILE [--dns-ttl S] [--dns-cache process|client]]\n"
          "  DSN: \"host=H port=P user=U dbname=D [password=X]\" (both drivers)\n"
          "  select: point SELECT on bench_kv; rw: BEGIN, INSERT unique id, UPDATE, COMMIT;\n"
          "  connect: connect + point SELECT + disconnect per transaction;\n"
          "  idle: open --clients connections, print \"ready OK ERRORS\", hold them until\n"
          "        stdin closes or --hold seconds pass; init: create bench_kv (--rows) and bench_rw.\n"
          "  --acked FILE: rw mode writes each acknowledged id to FILE, one a line, and\n"
          "        the ids whose COMMIT failed (outcome unknown) to FILE.unknown.\n"
          "  --timeline FILE: every acknowledged transaction (\"MS ok\"; rw: \"MS ok ID\")\n"
          "        and error (\"MS err CLASS\"), ms since the run started (t0_unix in the JSON).\n"
          "  After an error a client backs off 10 ms, doubling up to --backoff-max-ms\n"
          "        (default 640); after SQLSTATE 25006/57P0x/08xxx or MySQL 1290/1053/1927\n"
          "        it reconnects. MySQL errors are classed by number (\"my1290\").\n"
          "  --dns-file FILE (select, rw, connect): the DSN's host is a name, looked\n"
          "        up in FILE (lines \"NAME HOST:PORT\") when connecting; the answer is\n"
          "        cached --dns-ttl seconds (default 5) for the whole process, or per\n"
          "        client with --dns-cache client, and only a connect after that reads\n"
          "        FILE again. Every read is in the timeline (\"MS dns HOST:PORT\").\n"
          "  Output: one JSON document (stdout or --out).\n", f);
}

static int mode_of(const char *s)
{
    for (unsigned i = 0; i < sizeof MODE_NAMES / sizeof MODE_NAMES[0]; i++)
        if (strcmp(s, MODE_NAMES[i]) == 0)
            return (int)i;
    return -1;
}

static const struct db_driver *driver_of(const char *s)
{
    return strcmp(s, "pg") == 0 ? &db_pg : strcmp(s, "mysql") == 0 ? &db_mysql : NULL;
}

static bool parse_num(const char *s, double lo, double hi, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return errno == 0 && end != s && *end == '\0' && *v >= lo && *v <= hi;
}

static bool set_opt(struct opts *o, int ch, const char *arg)
{
    double v = 0;
    int m;
    switch (ch) {
    case 'd': o->dsn = arg; return true;
    case 'D': return (o->db = driver_of(arg)) != NULL;
    case 'm': return (m = mode_of(arg)) >= 0 && ((o->mode = (enum mode)m), true);
    case 'c': return parse_num(arg, 1, MAX_IDLE, &v) && ((o->clients = (int)v), true);
    case 'T': return parse_num(arg, 0.1, 86400, &o->duration);
    case 't': return parse_num(arg, 1, 1e12, &v) && ((o->transactions = (long)v), true);
    case 'r': return parse_num(arg, 1, 1e9, &v) && ((o->rows = (long)v), true);
    case 'p': o->prepared = true; return true;
    case 'o': o->out_path = arg; return true;
    case 'a': o->acked_path = arg; return true;
    case 'b': return parse_num(arg, 0, 4e18, &v) && ((o->id_base = (int64_t)v), true);
    case 'H': return parse_num(arg, 0, 86400, &o->hold);
    case 'l': o->label = arg; return true;
    case 'L': o->timeline_path = arg; return true;
    case 'B': return parse_num(arg, 1, 60000, &v) && ((o->backoff_max_ms = (unsigned)v), true);
    case 'F': o->dns_file = arg; return true;
    case 'S': return parse_num(arg, 0, 86400, &o->dns_ttl);
    case 'C':
        if (strcmp(arg, "process") != 0 && strcmp(arg, "client") != 0)
            return false;
        o->dns_per_client = strcmp(arg, "client") == 0;
        return true;
    default: return false;
    }
}

static const struct option LONGOPTS[] = {
    {"dsn", required_argument, NULL, 'd'},      {"driver", required_argument, NULL, 'D'},
    {"mode", required_argument, NULL, 'm'},     {"clients", required_argument, NULL, 'c'},
    {"duration", required_argument, NULL, 'T'}, {"transactions", required_argument, NULL, 't'},
    {"rows", required_argument, NULL, 'r'},     {"prepared", no_argument, NULL, 'p'},
    {"out", required_argument, NULL, 'o'},      {"acked", required_argument, NULL, 'a'},
    {"id-base", required_argument, NULL, 'b'},  {"hold", required_argument, NULL, 'H'},
    {"label", required_argument, NULL, 'l'},    {"help", no_argument, NULL, 'h'},
    {"timeline", required_argument, NULL, 'L'}, {"backoff-max-ms", required_argument, NULL, 'B'},
    {"dns-file", required_argument, NULL, 'F'}, {"dns-ttl", required_argument, NULL, 'S'},
    {"dns-cache", required_argument, NULL, 'C'},
    {NULL, 0, NULL, 0}};

/* The value of the DSN's host= keyword ("host=a port=..." separated by spaces). */
static bool dsn_host(const char *dsn, char *out, size_t size)
{
    for (const char *p = dsn; (p = strstr(p, "host=")) != NULL; p += 5) {
        if (p != dsn && p[-1] != ' ')
            continue;
        size_t n = strcspn(p + 5, " ");
        if (n == 0 || n >= size)
            return false;
        memcpy(out, p + 5, n);
        out[n] = '\0';
        return true;
    }
    return false;
}

static bool parse_args(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.db = &db_pg, .mode = MODE_SELECT, .clients = 8, .duration = 10,
                       .hold = 3600, .rows = 100000, .backoff_max_ms = 640, .dns_ttl = 5,
                       .id_base = (int64_t)(time(NULL) & 0x3FFFF) << 44};
    int ch;
    while ((ch = getopt_long(argc, argv, "", LONGOPTS, NULL)) != -1) {
        if (ch == 'h') {
            usage(stdout);
            exit(0);
        }
        if (!set_opt(o, ch, optarg)) {
            fprintf(stderr, "loadgen: bad option %s%s%s\n", argv[optind - 1],
                    optarg ? " " : "", optarg ? optarg : "");
            return false;
        }
    }
    if (!o->dsn || optind != argc)
        return false;
    if (o->mode != MODE_IDLE && o->clients > MAX_CLIENTS) {
        fprintf(stderr, "loadgen: at most %d clients outside idle mode\n", MAX_CLIENTS);
        return false;
    }
    if (o->transactions)
        o->duration = 0;
    if (o->dns_file && !dsn_host(o->dsn, o->dns_name, sizeof o->dns_name)) {
        fprintf(stderr, "loadgen: --dns-file needs a host=NAME in the DSN\n");
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (!parse_args(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    switch (o.mode) {
    case MODE_INIT: return run_init(&o);
    case MODE_IDLE: return run_idle(&o);
    default: return run_load(&o);
    }
}
