"""Failover drill (PostgreSQL): a planned switchover and a crash of the
writer under read-write load, through ferry (a discovered listener probing
both servers; once with passthrough authentication, once with terminated
authentication, which lets ferry move idle sessions to the new writer) and,
at the same moment on the same servers, through libpq's own multi-host
failover ("host=a,b target_session_attrs=read-write"), the comparison
target, and through a DNS-based client (below). Each target also holds a few
idle sessions across the failover and runs one statement on each afterwards:
errors for idle sessions.

The DNS-based client (target "dns") models an application that reaches the
writer through a DNS name with a 5 s TTL, as with a Route53 failover record:
loadgen --dns-file resolves the DSN's host name from a file of "NAME
HOST:PORT" lines and caches the answer for the TTL for the whole process (a
JVM's InetAddress cache, a caching stub resolver); only a connect made after
the TTL reads the file again. The drill rewrites the file the moment the
replica is promoted, which is when a Route53 health check could flip the
record at the earliest: Route53's own detection (by default 3 failed checks
30 s apart) and DNS propagation are NOT modelled, so the comparison is
generous to DNS. The load runs longer than the TTL before t0, so at t0 the
cached answer has expired, the state of a pool whose connections outlived
the TTL: the first reconnect after t0 looks the name up again.

Each kind of drill gets a fresh PgPair (the drill promotes its replica):

  planned  t0: the writer turns read-only (ALTER SYSTEM
           default_transaction_read_only + reload); in-flight read-write
           transactions finish; the replica catches up; the replica is
           promoted; the old writer is stopped (fast), as a switchover
           restarts it.
  crash    t0: the writer's whole process group gets SIGKILL; the replica is
           promoted at once.

Both loadgens run `rw` with --timeline (every acknowledged transaction and
error, timestamped) and --acked. From them: the unavailability window (the
longest gap between consecutive acknowledged transactions that ends after
t0), errors by class, lost acknowledged writes (acked ids missing on the new
writer), and, from the old writer's log (log_statement = mod, so every
INSERT/UPDATE it received is logged, and every error), the statements that
reached it after t0. Each target logs in as its own role, so the old
writer's log tells them apart.

A third kind, split_brain (scenario split_brain_drill, run_split_brain), on
its own fresh pair:

  split_brain  t0: the replica is promoted (pg_ctl promote) and nothing else:
           the old writer stays up and writable, as when a failover with data
           loss leaves the old primary cut off from the control plane but
           not from its clients. The fake AWS endpoint names the promoted
           cluster writer the moment the promotion completes.

Its targets: ferry passthrough, ferry terminated, ferry passthrough with AWS
signals (listener "drill-aws": aws_global_cluster over the fake AWS,
tests/fakes/fake_aws.py, polled every second), and libpq multi-host, the
anchor: libpq has no reason to leave a primary that still accepts writes, so
it shows what a split brain does without ferry. The DNS client is left out:
a Route53 health check of the old writer still passes, so its record would
not flip. Per target: when ferry switched (its /v1/status history), the
first acknowledged write found on the promoted cluster, the acknowledged
writes missing there split by when they were acknowledged (before t0, from
t0 to ferry's switch, after it; loadgen's timeline names each acknowledged
id), and the statements of the target's role the old writer logged after
the promotion and after ferry's switch.

What this drill does like the MariaDB one (drill_my.py): ferry's discovery
and listeners, the idle sessions, the loadgen runs and the reading of their
output, and the cleanup, is in drill_common.py.
"""

import datetime
import os
import time

from harness import PgPair, proc

import drill_common as common
import tools

import psycopg2

TARGETS = ("ferry", "ferry_terminated", "libpq", "dns")
SPLIT_TARGETS = ("ferry", "ferry_terminated", "ferry_aws", "libpq")
KINDS = common.KINDS
USERS = {"ferry": "drill_ferry", "ferry_terminated": "drill_ferry_t", "libpq": "drill_libpq",
         "dns": "drill_dns", "ferry_aws": "drill_ferry_aws"}
LISTENERS = {"ferry": "drill", "ferry_terminated": "drill-t"}
SPLIT_LISTENERS = dict(LISTENERS, ferry_aws="drill-aws")
TERMINATED_PASSWORD = "drill_pw"
DISCOVERY = common.DISCOVERY
PG_SETTINGS = {"log_statement": "mod", "log_connections": "off", "max_connections": 200,
               "log_timezone": "UTC"}
DNS_NAME = "writer.drill.internal"


def defaults(smoke):
    """clients per target, seconds of load before t0 and after it, the DNS
    client's TTL (the load runs longer than it before t0)"""
    if smoke:
        return {"clients": 3, "before_s": 1.5, "after_s": 4.0, "rows": 1000, "idle": 3,
                "dns_ttl": 1.0}
    return {"clients": 6, "before_s": 6.0, "after_s": 10.0, "rows": 10000, "idle": 10,
            "dns_ttl": 5.0}


# --------------------------------------------------------------------------

def _setup_pair(rows, workdir, log, settings=PG_SETTINGS):
    pair = PgPair(settings=settings).start()
    a = pair.primary
    a.query(f"CREATE ROLE {tools.PG_USER} LOGIN")
    a.query(f"CREATE DATABASE {tools.PG_DB} OWNER {tools.PG_USER}")
    for user in USERS.values():
        a.query(f"CREATE ROLE {user} LOGIN PASSWORD '{TERMINATED_PASSWORD}'")
    direct = f"host={a.host} port={a.port} user={tools.PG_USER} dbname={tools.PG_DB}"
    proc.run([tools.LOADGEN, "--mode", "init", "--rows", str(rows), "--dsn", direct],
             timeout=120, what="loadgen init (drill)")
    a.query(f"GRANT ALL ON bench_kv, bench_rw TO {', '.join(USERS.values())}",
            dbname=tools.PG_DB)
    pair.wait_replicated()
    return pair


def _start_ferry(pair, workdir, kind, aws=None):
    probe = {"user": "ferry_test", "password": "ferry_pw"}
    auth = {"mode": "terminated",
            "users": [{"name": USERS["ferry_terminated"], "password": TERMINATED_PASSWORD,
                       "method": "trust"}]}
    return common.start_ferry(pair, workdir, f"ferry-drill-{kind}", "postgresql",
                              SPLIT_LISTENERS if aws else LISTENERS, probe, auth,
                              "ferry to pick region-a as the writer", aws=aws)


def write_dns(path, server):
    """The DNS record: DNS_NAME points at server (written atomically, as a
    record flips for every resolver at once)."""
    with open(path + ".tmp", "w") as f:
        f.write(f"{DNS_NAME} {server.host}:{server.port}\n")
    os.replace(path + ".tmp", path)


def _dsn(target, pair, ferry, resolved=False):
    """target's DSN; for dns the name (loadgen resolves it), or with resolved
    the address the record holds now (the idle sessions, opened by psycopg2)"""
    user = USERS[target]
    if target == "dns":
        a = pair.primary
        host, port = (a.host, a.port) if resolved else (DNS_NAME, 1)
        return f"host={host} port={port} user={user} dbname={tools.PG_DB} connect_timeout=2"
    if target in SPLIT_LISTENERS:
        host, port = ferry.listener_addr(SPLIT_LISTENERS[target])
        return f"host={host} port={port} user={user} dbname={tools.PG_DB} connect_timeout=5"
    a, b = pair.primary, pair.replica
    return (f"host={a.host},{b.host} port={a.port},{b.port} user={user} dbname={tools.PG_DB} "
            "target_session_attrs=read-write connect_timeout=2")


def _open_idle(dsn, n):
    """n idle autocommit sessions to dsn"""
    def connect():
        c = psycopg2.connect(dsn)
        c.autocommit = True
        return c
    return common.open_idle(connect, n)


def _check_idle(conns, new_writer_port):
    """the idle sessions after the failover; errors by SQLSTATE or class"""
    return common.check_idle(
        conns, new_writer_port, "SELECT inet_server_port()", psycopg2.Error,
        lambda e: e.pgcode or ("lost" if isinstance(e, psycopg2.OperationalError) else "other"))


def _ferry_sessions(ferry, out, listeners=LISTENERS):
    """ferry's own count of sessions it moved to the new writer (terminated
    auth) or failed to move, per listener, and why moves failed (its log)."""
    by_name = {e.get("name"): e for e in ferry.status().get("listeners", [])}
    reasons = {}
    for line in ferry.log_text().splitlines():
        if "event=session.move_failed" in line and 'reason="' in line:
            why = line.split('reason="', 1)[1].rstrip('"')
            reasons[why] = reasons.get(why, 0) + 1
    for target, name in listeners.items():
        e = by_name.get(name, {})
        if target in out:
            out[target]["ferry_sessions"] = {
                "moved": e.get("sessions_moved"), "move_failed": e.get("sessions_move_failed"),
                "move_failed_reasons": reasons if target == "ferry_terminated" else {}}


def _planned(pair, events, flip):
    a, b = pair.primary, pair.replica
    a.query("ALTER SYSTEM SET default_transaction_read_only = on")
    a.query("SELECT pg_reload_conf()")
    events["read_only"] = time.time()
    # read-write transactions begun before the reload may still commit: let
    # them finish, so that what the replica has is everything acknowledged
    time.sleep(0.2)
    proc.wait_for(lambda: a.query(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
        "AND backend_type = 'client backend'")[0][0] == 0,
        timeout=10, what="write transactions on the old writer to end")
    lsn = a.query("SELECT pg_current_wal_lsn()::text")[0][0]
    proc.wait_for(lambda: b.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                  (lsn,))[0][0],
                  timeout=20, what="the replica to replay everything the writer wrote")
    events["caught_up"] = time.time()
    b.promote()
    events["promoted"] = time.time()
    flip()
    events["dns_flipped"] = time.time()
    a.stop(mode="fast")
    events["old_writer_stopped"] = time.time()


def _crash(pair, events, flip):
    pair.primary.kill()            # SIGKILL to postmaster and backends at once
    events["killed"] = time.time()
    pair.replica.promote()
    events["promoted"] = time.time()
    flip()
    events["dns_flipped"] = time.time()


def _lost(server, acked_path):
    return tools.count_acked(acked_path, lambda chunk: server.query(
        "SELECT count(*) FROM bench_rw WHERE id = ANY(%s)", (chunk,), dbname=tools.PG_DB)[0][0])


def _log_time(line):
    """unix time of a log line with log_line_prefix '%m ...' in UTC, or None"""
    try:
        dt = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp()


def _old_writer_statements(log_path, offset, user, since, samples=3):
    """Per moment in since ({name: unix time}): the statements (INSERT/UPDATE,
    logged by log_statement = mod as they arrive; all with log_statement =
    all) and errors the old writer logged for user's sessions at or after it
    (log lines carry ms), and the first few of those lines."""
    out = {name: {"statements": 0, "errors": 0, "first": []} for name in since}
    tag = f" {user}@{tools.PG_DB} "
    with open(log_path, "rb") as f:
        f.seek(offset)
        for raw in f:
            line = raw.decode("utf-8", "replace")
            if tag not in line:
                continue
            kind = ("statements" if "LOG:  statement:" in line else
                    "errors" if "ERROR:" in line else None)
            t = _log_time(line)
            if kind is None or t is None:
                continue
            for name, when in since.items():
                if t >= when - 0.0005:       # the log has ms resolution
                    out[name][kind] += 1
                    if len(out[name]["first"]) < samples:
                        out[name]["first"].append(line.strip()[:200])
    return out


def drill_once(kind, p, workdir, log):
    """One drill of kind through both targets; {target: result}, plus events."""
    pair = ferry = None
    loads, idle = {}, {}
    try:
        log(f"failover_drill {kind}: fresh PostgreSQL pair, ferry with discovery {DISCOVERY}")
        pair = _setup_pair(p["rows"], workdir, log)
        ferry = _start_ferry(pair, workdir, kind)
        dns_file = os.path.join(workdir, f"drill-{kind}.dns")
        write_dns(dns_file, pair.primary)
        dns_args = ("--dns-file", dns_file, "--dns-ttl", str(p["dns_ttl"]))
        ids = common.id_bases(TARGETS)
        for target in TARGETS:               # idle sessions first: the loads start together
            idle[target] = _open_idle(_dsn(target, pair, ferry, resolved=True), p["idle"])
        for target in TARGETS:
            loads[target] = common.start_loadgen(f"drill-{kind}-{target}", "pg",
                                                 _dsn(target, pair, ferry), p, workdir, ids[target],
                                                 dns_args if target == "dns" else ())
        time.sleep(p["before_s"])
        old = pair.primary
        log_offset = os.path.getsize(old.log_path)
        events = {}
        t0 = time.time()
        log(f"failover_drill {kind}: t0, " + ("the writer turns read-only" if kind == "planned"
                                               else "kill -9 the writer"))
        (_planned if kind == "planned" else _crash)(pair, events,
                                                    lambda: write_dns(dns_file, pair.replica))
        log("  " + ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in events.items()))
        out = common.collect(
            loads, idle, p,
            lambda target, ld, code: _result(target, ld, code, t0, events, pair, old,
                                             log_offset, p),
            lambda conns: _check_idle(conns, pair.replica.port), log)
        _ferry_sessions(ferry, out)
        for target in (t for t in LISTENERS if t in out):
            log(f"  {target}: ferry's session moves {out[target].get('ferry_sessions')}")
        out["_events"] = {k: round(v - t0, 3) for k, v in events.items()}
        out["_t0_unix"] = t0
        out["_ferry_history"] = ferry.status()["discovery"]["history"]
        return out
    finally:
        common.cleanup(idle, loads, ferry, pair, log, psycopg2.Error)


def _result(target, ld, code, t0, events, pair, old, log_offset, p):
    raw = common.read_loadgen(ld, code, f"drill loadgen via {target}")
    lookups = []
    evs = common.read_timeline(ld["files"]["timeline"], raw["t0_unix"], t0, lookups)
    res = common.load_result(
        raw, evs, t0, events, p, ld,
        acked_check=_lost(pair.replica, ld["files"]["acked"]),
        old_writer=_old_writer_statements(
            old.log_path, log_offset, USERS[target],
            {"after_failure": events.get("read_only", events.get("killed")),
             "after_promotion": events["promoted"]}))
    if raw.get("dns"):
        res["dns"] = _dns_summary(raw["dns"], lookups, events, t0, pair)
    common.print_result(target, raw, res, "sqlstate")
    return res


def _dns_summary(dns, lookups, events, t0, pair):
    """What the DNS client's resolver did around t0: the answer cached at t0
    and its age, the lookups after t0 (ms, answer), the first that returned
    the new writer."""
    new = f"{pair.replica.host}:{pair.replica.port}"
    before = [x for x in lookups if x[0] <= 0]
    after = [x for x in lookups if x[0] > 0]
    first_new = next((t for t, a in after if a == new), None)
    return {"ttl_s": dns["ttl_s"], "cache": dns["cache"], "lookups": dns["lookups"],
            "cached_at_t0": before[-1][1] if before else None,
            "cached_age_at_t0_ms": -before[-1][0] * 1000 if before else None,
            "lookups_after_t0": [[round(t * 1000), a] for t, a in after[:20]],
            "first_new_answer_ms": first_new * 1000 if first_new is not None else None,
            "flipped_ms": (events["dns_flipped"] - t0) * 1000}


def run(sc, workdir, log, smoke):
    p = common.params(defaults, sc, smoke)
    kinds = {}
    for kind in KINDS:
        kinds[kind] = drill_once(kind, p, workdir, log)
    targets = common.by_target(kinds, TARGETS)
    extra = {k: {"events": kinds[k]["_events"], "ferry_history": kinds[k]["_ferry_history"],
                 "t0_unix": kinds[k]["_t0_unix"]} for k in KINDS}
    for t in targets.values():
        for kind, r in t.items():
            r["detection_s"] = common.detection_s(kind)
    return {"status": "done", "targets": targets, "drills": extra, "params": p,
            "discovery": DISCOVERY}


# -- the split-brain drill -----------------------------------------------------

def split_defaults(smoke):
    """clients per target, seconds of load before and after t0, idle sessions"""
    if smoke:
        return {"clients": 3, "before_s": 1.5, "after_s": 3.0, "rows": 1000, "idle": 3}
    return {"clients": 6, "before_s": 3.0, "after_s": 5.0, "rows": 10000, "idle": 10}


def _present(server):
    """present(ids): the ids of a chunk that server's bench_rw has"""
    return lambda chunk: [r[0] for r in server.query(
        "SELECT id FROM bench_rw WHERE id = ANY(%s)", (chunk,), dbname=tools.PG_DB)]


def _promotion_logged(log_path, offset, wait_s=3.0):
    """unix time of the promoted server's "archive recovery complete" line
    in its log from offset: the end of recovery, just before it takes writes
    (and before it logs "ready to accept connections"), so an early bound.
    Waits up to wait_s for the line (the drill saw the promotion by polling,
    the log may lag under load); None if it never came."""
    deadline = time.time() + wait_s
    while True:
        with open(log_path, "rb") as f:
            f.seek(offset)
            for raw in f:
                line = raw.decode("utf-8", "replace")
                if "LOG:  archive recovery complete" in line:
                    return _log_time(line)
        if time.time() > deadline:
            return None
        time.sleep(0.05)


def split_brain_once(p, workdir, log):
    """The replica promoted under load while the writer stays up and
    writable; {target: result}, plus the events and ferry's history."""
    kind = common.SPLIT_BRAIN
    pair = ferry = fake = None
    loads, idle = {}, {}
    try:
        log(f"split_brain_drill: fresh PostgreSQL pair, fake AWS, ferry with discovery {DISCOVERY}")
        # every statement logged (COMMIT too), to see what reached the old writer
        pair = _setup_pair(p["rows"], workdir, log, dict(PG_SETTINGS, log_statement="all"))
        fake = common.start_fake_aws()
        ferry = _start_ferry(pair, workdir, kind, aws=fake)
        ids = common.id_bases(SPLIT_TARGETS)
        for target in SPLIT_TARGETS:         # idle sessions first: the loads start together
            idle[target] = _open_idle(_dsn(target, pair, ferry), p["idle"])
        for target in SPLIT_TARGETS:
            loads[target] = common.start_loadgen(f"drill-{kind}-{target}", "pg",
                                                 _dsn(target, pair, ferry), p, workdir, ids[target])
        time.sleep(p["before_s"])
        old, new = pair.primary, pair.replica
        log_offset = os.path.getsize(old.log_path)
        new_offset = os.path.getsize(new.log_path)
        events = {}
        t0 = time.time()
        log("split_brain_drill: t0, the replica is promoted; the writer stays up and writable")
        new.promote()
        events["promoted"] = time.time()
        # the moment it took writes, from its own log (the drill polls: late)
        events["writable"] = _promotion_logged(new.log_path, new_offset) or events["promoted"]
        fake.set_writer(common.AWS_IDS["region-b"])
        events["aws_names_promoted"] = time.time()
        log("  " + ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in events.items()))
        out = common.collect(
            loads, idle, p,
            lambda target, ld, code: _split_result(target, ld, code, t0, events, old, new,
                                                   log_offset, p, ferry),
            lambda conns: _check_idle(conns, new.port), log)
        _ferry_sessions(ferry, out, SPLIT_LISTENERS)
        # still a split brain at the end: the old writer was never demoted
        common.split_brain_finish(out, ferry.status(), SPLIT_LISTENERS["ferry_aws"], events, t0,
                                  not old.query("SELECT pg_is_in_recovery()")[0][0])
        return out
    finally:
        common.cleanup(idle, loads, ferry, pair, log, psycopg2.Error)
        if fake:
            fake.stop()


def _split_result(target, ld, code, t0, events, old, new, log_offset, p, ferry):
    raw = common.read_loadgen(ld, code, f"split-brain loadgen via {target}")
    timeline = ld["files"]["timeline"]
    evs = common.read_timeline(timeline, raw["t0_unix"], t0)
    switched, reason = (common.switch_time(ferry.status()["discovery"]["history"],
                                           SPLIT_LISTENERS[target], "region-b", t0)
                        if target in SPLIT_LISTENERS else (None, None))
    fig = common.split_brain_figures(
        common.read_acks(timeline, raw["t0_unix"]), _present(new), _present(old), t0,
        events["writable"], switched,
        row_time=lambda i: new.query("SELECT extract(epoch FROM at) FROM bench_rw WHERE id = %s",
                                     (i,), dbname=tools.PG_DB)[0][0])
    since = {"after_t0": t0, "after_promotion": events["writable"]}
    if switched is not None:
        since.update(after_switch=switched, after_switch_50ms=switched + 0.05)
    res = common.load_result(
        raw, evs, t0, events, p, ld, **fig, switch_reason=reason,
        old_writer=_old_writer_statements(old.log_path, log_offset, USERS[target], since))
    common.print_split_brain(target, raw, res)
    return res


def run_split_brain(sc, workdir, log, smoke):
    p = common.params(split_defaults, sc, smoke)
    return common.split_brain_scenario(split_brain_once(p, workdir, log), SPLIT_TARGETS, p)
