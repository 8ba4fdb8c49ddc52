/* Writer discovery: probes every cluster of every listener that has a
 * "probe" section, decides the writer (decide.c) and publishes immutable
 * topology snapshots. Runs on its own thread and loop; nothing it does
 * blocks. Listeners without "probe" are routed statically and not listed.
 */
#ifndef FERRY_DISCOVERY_H
#define FERRY_DISCOVERY_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/config.h"
#include "ferry/topology.h"

struct ferry_discovery;

/* Called on the discovery thread with a new snapshot (one reference, which
 * the callee takes) whenever a writer changes, and once after the first
 * round. */
typedef void (*ferry_topology_publish_cb)(struct ferry_topology *t, void *ud);

/* Starts the discovery thread for cfg (a reference is taken). NULL on error. */
struct ferry_discovery *ferry_discovery_start(struct ferry_config *cfg,
                                              ferry_topology_publish_cb publish, void *ud);

/* Any thread: switch to a new config. Decisions of listeners whose cluster
 * set (names and endpoints) is unchanged carry over. */
void ferry_discovery_reconfigure(struct ferry_discovery *d, struct ferry_config *cfg);

/* Any thread: start a probe round now (live traffic saw a reason to look).
 * Safe until ferry_discovery_free(), also after stop (then a no-op). */
void ferry_discovery_probe_now(struct ferry_discovery *d);

/* Any thread: asks for a planned switchover to `cluster` on `listener` (NULL:
 * every discovered listener that has a cluster of that name). The target
 * becomes the writer as soon as a probe finds it writable, even while the
 * old writer still accepts writes (that one is then fenced). Returns the
 * number of listeners it applies to (0: unknown cluster). */
int ferry_discovery_switchover(struct ferry_discovery *d, const char *listener, const char *cluster);

/* Any thread: withdraws pending switchover requests (a timed-out switchover
 * must not fire later, when nobody is waiting for it). */
void ferry_discovery_switchover_cancel(struct ferry_discovery *d);

/* Any thread: true when every listener the switchover named has `cluster`
 * as its writer now. */
bool ferry_discovery_writer_is(struct ferry_discovery *d, const char *listener, const char *cluster);

/* What discovery says of a listener's writer after a session's backend
 * ended without the writer having moved (proxy/session.c). */
enum ferry_writer_verdict {
    FERRY_VERDICT_PENDING,      /* no probe of the writer has answered since `since` */
    FERRY_VERDICT_HEALTHY,      /* the writer of generation gen answered a probe that
                                   began after `since`, writable and still the writer */
    FERRY_VERDICT_MOVED,        /* the writer is no longer the one of generation gen */
};

/* Any thread: the verdict on the writer of `listener` at generation `gen`
 * for a backend lost at `since_ns` (uv_hrtime()). Unknown listener: MOVED. */
enum ferry_writer_verdict ferry_discovery_writer_verdict(struct ferry_discovery *d,
                                                         const char *listener, uint64_t gen,
                                                         uint64_t since_ns);

/* Any thread: stops the thread and closes every connection; d stays valid
 * (status and probe_now still work) until ferry_discovery_free(). */
void ferry_discovery_stop(struct ferry_discovery *d);
void ferry_discovery_free(struct ferry_discovery *d);

/* Any thread: JSON of the per-listener decision, last observation of each
 * cluster and the writer-change history. New reference. */
json_t *ferry_discovery_status(struct ferry_discovery *d);

/* `ferry discover`: one probe round on the calling thread, then decide.
 * Returns a JSON document (new reference) and sets *has_writer when every
 * probed listener has a writer. */
json_t *ferry_discovery_once(struct ferry_config *cfg, bool *has_writer);

#endif
