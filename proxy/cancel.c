/* PostgreSQL cancel keys. Every client gets a key pair made up by ferry;
 * this process-wide table maps it to the real key of the backend the
 * session is on and that backend's address, so a CancelRequest (which
 * arrives on a new connection, maybe on another worker) reaches the right
 * server. Touched once at session start and end and per cancel: a mutex is
 * fine here, the relay path never takes it.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "proxy.h"

#define BUCKETS 4096

struct cancel_entry {
    uint32_t pid, key;                  /* what the client was given */
    uint32_t backend_pid, backend_key;  /* what the server gave ferry */
    struct sockaddr_storage addr;       /* the server */
    struct cancel_entry *next;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cancel_entry *table[BUCKETS];

static struct cancel_entry **bucket(uint32_t pid)
{
    return &table[pid % BUCKETS];
}

static bool in_use(uint32_t pid)
{
    for (struct cancel_entry *e = *bucket(pid); e; e = e->next)
        if (e->pid == pid)
            return true;
    return false;
}

bool px_cancel_register(const struct sockaddr *server, uint32_t backend_pid, uint32_t backend_key,
                        uint32_t *pid, uint32_t *key)
{
    struct cancel_entry *e = calloc(1, sizeof *e);
    if (!e)
        return false;
    memcpy(&e->addr, server, server->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                           : sizeof(struct sockaddr_in));
    e->backend_pid = backend_pid;
    e->backend_key = backend_key;
    pthread_mutex_lock(&table_lock);
    do {
        uint32_t r[2] = {0, 0};
        if (getrandom(r, sizeof r, 0) != sizeof r) {
            pthread_mutex_unlock(&table_lock);
            free(e);
            return false;
        }
        e->pid = (r[0] & 0x7fffffffu) | 1u;    /* a positive int32, like a real pid */
        e->key = r[1];
    } while (in_use(e->pid));
    e->next = *bucket(e->pid);
    *bucket(e->pid) = e;
    pthread_mutex_unlock(&table_lock);
    *pid = e->pid;
    *key = e->key;
    return true;
}

bool px_cancel_lookup(uint32_t pid, uint32_t key, struct sockaddr_storage *server,
                      uint32_t *backend_pid, uint32_t *backend_key)
{
    bool found = false;
    pthread_mutex_lock(&table_lock);
    for (struct cancel_entry *e = *bucket(pid); e; e = e->next)
        if (e->pid == pid && e->key == key) {
            *server = e->addr;
            *backend_pid = e->backend_pid;
            *backend_key = e->backend_key;
            found = true;
        }
    pthread_mutex_unlock(&table_lock);
    return found;
}

void px_cancel_update(uint32_t pid, const struct sockaddr *server, uint32_t backend_pid,
                      uint32_t backend_key)
{
    pthread_mutex_lock(&table_lock);
    for (struct cancel_entry *e = *bucket(pid); e; e = e->next)
        if (e->pid == pid) {
            memcpy(&e->addr, server, server->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                                   : sizeof(struct sockaddr_in));
            e->backend_pid = backend_pid;
            e->backend_key = backend_key;
        }
    pthread_mutex_unlock(&table_lock);
}

void px_cancel_unregister(uint32_t pid)
{
    pthread_mutex_lock(&table_lock);
    for (struct cancel_entry **p = bucket(pid); *p; p = &(*p)->next)
        if ((*p)->pid == pid) {
            struct cancel_entry *e = *p;
            *p = e->next;
            free(e);
            break;
        }
    pthread_mutex_unlock(&table_lock);
}
