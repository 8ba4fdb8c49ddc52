/* Topology snapshots: which cluster is the writer of each discovered
 * listener right now. Built by the discovery thread, immutable once
 * published, reference-counted (atomically) so every worker can hold the
 * one it routes with while discovery publishes the next.
 */
#ifndef FERRY_TOPOLOGY_H
#define FERRY_TOPOLOGY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/config.h"

#define FERRY_REASON_MAX 200

struct ferry_topology_listener {
    char name[FERRY_NAME_MAX];          /* listener name */
    int writer;                         /* cluster index in the listener config, -1: none (hold) */
    char writer_cluster[FERRY_NAME_MAX];
    struct ferry_hostport writer_endpoint;
    char writer_addr[48];               /* the address discovery's last probe of the writer
                                           endpoint resolved and found writable ("" = none):
                                           sessions connect there, without a lookup of
                                           their own; the name stays the TLS identity */
    uint64_t generation;                /* this listener's writer generation */
    uint64_t changed_ms;                /* wall clock (ms since epoch) of the last change */
    bool split_brain;
    bool cut_old;                       /* the previous writer still accepted writes when it
                                           lost the role: sessions are cut from it at once */
    char reason[FERRY_REASON_MAX];
    /* while there is no writer, or the writer is in doubt: the cluster likely
     * to be promoted (-1: none known); sessions waiting for a writer may log
     * in there ahead of time (proxy/session.c) */
    int candidate;
    char candidate_cluster[FERRY_NAME_MAX];
    struct ferry_hostport candidate_endpoint;
    char candidate_addr[48];            /* as writer_addr, for the candidate ("" = none) */
};

struct ferry_topology {
    int refs;                           /* atomic */
    uint64_t serial;                    /* +1 per snapshot published */
    size_t n;
    struct ferry_topology_listener listeners[]; /* n entries */
};

struct ferry_topology *ferry_topology_new(size_t n);   /* refs = 1, zeroed, no writers */
struct ferry_topology *ferry_topology_ref(struct ferry_topology *t);
void ferry_topology_unref(struct ferry_topology *t);   /* NULL ignored */

/* The entry for a listener, or NULL when the listener is not discovered. */
const struct ferry_topology_listener *ferry_topology_find(const struct ferry_topology *t,
                                                          const char *listener);

#endif
