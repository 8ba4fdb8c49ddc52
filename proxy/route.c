/* Routing: which endpoint a new backend connection of a listener goes to:
 * the writer of the current topology snapshot for discovered listeners, the
 * cluster the config marks as writer for the others.
 */
#include <string.h>

#include "proxy.h"

/* The snapshot may predate a reload that changed this listener's clusters:
 * trust its cluster i only while the config's cluster i still matches. */
static const struct ferry_hostport *matching(const struct ferry_listener_cfg *lcfg, int i,
                                             const char *name, const struct ferry_hostport *ep,
                                             const char **cluster)
{
    const struct ferry_cluster_cfg *c = &lcfg->clusters[i];
    if (strcmp(c->name, name) != 0 || !ferry_hostport_equal(&c->endpoint, ep))
        return NULL;
    if (cluster)
        *cluster = c->name;
    return &c->endpoint;
}

const struct ferry_hostport *px_route(const struct ferry_listener_cfg *lcfg,
                                      const struct ferry_topology *topo, const char **cluster)
{
    if (!lcfg->probe_enabled) {
        const struct ferry_cluster_cfg *c = ferry_listener_static_writer(lcfg);
        if (cluster)
            *cluster = c->name;
        return &c->endpoint;
    }
    const struct ferry_topology_listener *t = ferry_topology_find(topo, lcfg->name);
    if (!t || t->writer < 0 || (size_t)t->writer >= lcfg->nclusters)
        return NULL;
    return matching(lcfg, t->writer, t->writer_cluster, &t->writer_endpoint, cluster);
}

const char *px_route_address(const struct ferry_listener_cfg *lcfg,
                             const struct ferry_topology *topo, bool candidate)
{
    const struct ferry_topology_listener *t =
        lcfg->probe_enabled ? ferry_topology_find(topo, lcfg->name) : NULL;
    if (!t)
        return NULL;
    const char *addr = candidate ? t->candidate_addr : t->writer_addr;
    return addr[0] ? addr : NULL;
}

const struct ferry_hostport *px_route_candidate(const struct ferry_listener_cfg *lcfg,
                                                const struct ferry_topology *topo,
                                                const char **cluster)
{
    const struct ferry_topology_listener *t =
        lcfg->probe_enabled ? ferry_topology_find(topo, lcfg->name) : NULL;
    if (!t || t->candidate < 0 || (size_t)t->candidate >= lcfg->nclusters)
        return NULL;
    return matching(lcfg, t->candidate, t->candidate_cluster, &t->candidate_endpoint, cluster);
}
