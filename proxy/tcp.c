/* TCP options on ferry's connections: keepalive with its three timings and
 * TCP_USER_TIMEOUT, so that a peer that vanished without a FIN or RST (a
 * partition, a dead host) is noticed in seconds rather than after the
 * kernel's defaults (2 h of keepalive idle, ~15 min of retransmissions).
 * Shared by the sessions (proxy/) and the probes (discovery/).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "ferry/config.h"

static int set_int(int fd, int level, int opt, int value, int rc)
{
    if (setsockopt(fd, level, opt, &value, sizeof value) != 0 && rc == 0)
        return -errno;
    return rc;
}

int ferry_tcp_apply(int fd, const struct ferry_tcp_cfg *t)
{
    int rc = set_int(fd, SOL_SOCKET, SO_KEEPALIVE, t->keepalive ? 1 : 0, 0);
    if (t->keepalive) {
        rc = set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, t->keepalive_idle, rc);
        rc = set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, t->keepalive_interval, rc);
        rc = set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, t->keepalive_count, rc);
    }
    if (t->user_timeout_ms)
        rc = set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, (int)t->user_timeout_ms, rc);
    return rc;
}
