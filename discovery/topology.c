/* Topology snapshot allocation and lookup; see ferry/topology.h. */
#include "ferry/topology.h"

#include <stdlib.h>
#include <string.h>

struct ferry_topology *ferry_topology_new(size_t n)
{
    struct ferry_topology *t = calloc(1, sizeof *t + n * sizeof t->listeners[0]);
    if (t) {
        t->refs = 1;
        t->n = n;
        for (size_t i = 0; i < n; i++)
            t->listeners[i].writer = t->listeners[i].candidate = -1;
    }
    return t;
}

struct ferry_topology *ferry_topology_ref(struct ferry_topology *t)
{
    if (t)
        __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
    return t;
}

void ferry_topology_unref(struct ferry_topology *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(t);
}

const struct ferry_topology_listener *ferry_topology_find(const struct ferry_topology *t,
                                                          const char *listener)
{
    for (size_t i = 0; t && i < t->n; i++)
        if (strcmp(t->listeners[i].name, listener) == 0)
            return &t->listeners[i];
    return NULL;
}
