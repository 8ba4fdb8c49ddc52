/* Routing: which endpoint a new backend connection of a listener goes to.
 * Today this is the cluster the config marks as writer; the discovery module
 * replaces it with the writer of the current topology snapshot.
 */
#include "proxy.h"

const struct ferry_hostport *px_route(const struct ferry_listener_cfg *lcfg, const char **cluster)
{
    const struct ferry_cluster_cfg *c = ferry_listener_static_writer(lcfg);
    if (cluster)
        *cluster = c->name;
    return &c->endpoint;
}
