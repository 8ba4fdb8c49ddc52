/* Routing: which endpoint a new backend connection of a listener goes to:
 * the writer of the current topology snapshot for discovered listeners, the
 * cluster the config marks as writer for the others.
 */
#include <string.h>

#include "proxy.h"

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
    /* The snapshot may predate a reload that changed this listener's
     * clusters: trust it only while the cluster at that index matches. */
    const struct ferry_cluster_cfg *c = &lcfg->clusters[t->writer];
    if (strcmp(c->name, t->writer_cluster) != 0 || !ferry_hostport_equal(&c->endpoint, &t->writer_endpoint))
        return NULL;
    if (cluster)
        *cluster = c->name;
    return &c->endpoint;
}
