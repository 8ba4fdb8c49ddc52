"""Failover drill (MariaDB): a planned switchover and a crash of the writer
under read-write load through ferry's MySQL listeners (discovered, probing
both servers of a harness MariaDBPair: a primary and its GTID replica), one
with passthrough authentication ("ferry": idle sessions are fenced and get
1053) and one with terminated authentication ("ferry_terminated": ferry logs
in itself and moves idle sessions to the new writer), both at once.

MySQL has no equivalent of libpq's multi-host failover, so there is no
client-side reference to run beside ferry; the drill compares ferry with
the issue's target instead: writes resume within the detection time
(probe_interval for a writer that turns read-only, probe_interval x
writer_down_after for one that is gone) + 1 s of the promotion.

Each kind of drill gets a fresh MariaDBPair (the drill promotes its replica):

  planned  t0: the writer turns read-only (SET GLOBAL read_only = 1, which
           waits for write transactions in their commit); the replica
           catches up (MASTER_GTID_WAIT of the old writer's
           gtid_binlog_pos); the replica is promoted (STOP SLAVE; RESET
           SLAVE ALL; read_only = 0); the old writer is stopped (SIGTERM).
  crash    t0: SIGKILL of the writer; the replica is promoted at once.

Each target's loadgen runs `rw` over the MySQL protocol (BEGIN, INSERT,
UPDATE, COMMIT as text queries) with --timeline and --acked, as its own
user, so the old writer's general log (log_output = TABLE: the CSV file of
mysql.general_log, with µs timestamps, readable after the server stopped)
tells its statements apart from ferry's probes. From them: the window,
errors by class (MySQL error numbers, "my1290"), lost acknowledged writes
(ids missing on the new writer), statements that reached the old writer
after t0 and after the promotion, and idle sessions afterwards.

A third kind, split_brain (scenario split_brain_drill_mysql,
run_split_brain), on its own fresh pair: at t0 the replica alone is promoted
(STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0) and the old writer
stays up and writable; the fake AWS endpoint names the promoted cluster
writer at once. Targets: the two ferry listeners, a third one with AWS
signals ("ferry_aws", passthrough), and "direct": a client that connects to
the old writer's address, the anchor (MySQL has no multi-host client; this
is what an application with the writer's address, or a DNS name a health
check of the old writer keeps, does in a split brain). The figures are the
PostgreSQL split-brain drill's (drill.py); the old writer's general log is
switched off after the load, before it is read.

What this drill does like the PostgreSQL one (drill.py): ferry's discovery
and listeners, the idle sessions, the loadgen runs and the reading of their
output, and the cleanup, is in drill_common.py.
"""

import csv
import datetime
import os
import subprocess
import time

import pymysql

from harness import MariaDBPair, proc
from harness.mariadb import TEST_DB, TEST_PASSWORD, TEST_USER

import drill_common as common
import tools

TARGETS = ("ferry", "ferry_terminated")
SPLIT_TARGETS = ("ferry", "ferry_terminated", "ferry_aws", "direct")
KINDS = common.KINDS
USERS = {"ferry": "drill_my", "ferry_terminated": "drill_my_t", "ferry_aws": "drill_my_aws",
         "direct": "drill_my_direct"}
PASSWORD = "drill_my_pw"
LISTENERS = {"ferry": "drill-my", "ferry_terminated": "drill-my-t"}
SPLIT_LISTENERS = dict(LISTENERS, ferry_aws="drill-my-aws")
DISCOVERY = common.DISCOVERY


def defaults(smoke):
    """clients, seconds of load before t0 and after it, rows, idle sessions"""
    if smoke:
        return {"clients": 3, "before_s": 1.0, "after_s": 3.0, "rows": 1000, "idle": 3}
    return {"clients": 6, "before_s": 4.0, "after_s": 8.0, "rows": 10000, "idle": 10}


# --------------------------------------------------------------------------

def _setup_pair(rows):
    pair = MariaDBPair().start()
    a = pair.primary
    for user in USERS.values():
        for host in ("%", "localhost"):
            a.query(f"CREATE USER '{user}'@'{host}' IDENTIFIED VIA mysql_native_password "
                    f"USING PASSWORD('{PASSWORD}')")
            a.query(f"GRANT ALL ON {TEST_DB}.* TO '{user}'@'{host}'")
    direct = (f"host={a.host} port={a.port} user={USERS['ferry']} password={PASSWORD} "
              f"dbname={TEST_DB}")
    proc.run([tools.LOADGEN, "--driver", "mysql", "--mode", "init", "--rows", str(rows),
              "--dsn", direct], timeout=120, what="loadgen init (mysql drill)")
    pair.wait_replicated()
    # every statement the writer receives, with µs timestamps, in the CSV file
    # behind mysql.general_log (read directly, also once the server is gone)
    a.query("SET GLOBAL log_output = 'TABLE'")
    a.query("SET GLOBAL general_log = 1")
    return pair


def _clock_offset(server):
    """unix time - the server's local time (what its general log records), s"""
    local, unix = server.query("SELECT NOW(6), UNIX_TIMESTAMP(NOW(6))")[0]
    return float(unix) - local.replace(tzinfo=datetime.timezone.utc).timestamp()


def _start_ferry(pair, workdir, kind, aws=None):
    probe = {"user": TEST_USER, "password": TEST_PASSWORD}
    auth = {"mode": "terminated",
            "users": [{"name": USERS["ferry_terminated"], "password": PASSWORD}]}
    return common.start_ferry(pair, workdir, f"ferry-drill-my-{kind}", "mysql",
                              SPLIT_LISTENERS if aws else LISTENERS, probe, auth,
                              "ferry to pick region-a as the MySQL writer", aws=aws)


def _addr(ferry, target, pair=None):
    """(host, port) target's clients connect to: its ferry listener, or for
    "direct" the old writer itself"""
    if target == "direct":
        return pair.primary.host, pair.primary.port
    return ferry.listener_addr(SPLIT_LISTENERS[target])


def _dsn(ferry, target, pair=None):
    host, port = _addr(ferry, target, pair)
    return (f"host={host} port={port} user={USERS[target]} password={PASSWORD} "
            f"dbname={TEST_DB}")


def _open_idle(ferry, target, n, pair=None):
    """n idle autocommit sessions through target's listener"""
    host, port = _addr(ferry, target, pair)
    return common.open_idle(
        lambda: pymysql.connect(host=host, port=port, user=USERS[target], password=PASSWORD,
                                database=TEST_DB, autocommit=True, connect_timeout=5,
                                read_timeout=30, write_timeout=30), n)


def _check_idle(conns, new_writer_port):
    """the idle sessions after the failover; errors by MySQL error number"""
    return common.check_idle(
        conns, new_writer_port, "SELECT @@port", pymysql.err.MySQLError,
        lambda e: f"my{e.args[0]}" if e.args and isinstance(e.args[0], int) else "other")


def _planned(pair, events):
    a, b = pair.primary, pair.replica
    a.set_read_only(True)            # returns once write transactions in COMMIT are done
    events["read_only"] = time.time()
    gtid = a.query("SELECT @@gtid_binlog_pos")[0][0]
    waited = b.query("SELECT MASTER_GTID_WAIT(%s, 20)", (gtid,))[0][0]
    if waited != 0:
        raise proc.HarnessError(f"the replica did not reach the old writer's GTID {gtid}")
    events["caught_up"] = time.time()
    b.promote()                      # STOP SLAVE; RESET SLAVE ALL; read_only = 0
    events["promoted"] = time.time()
    a.stop(mode="fast")
    events["old_writer_stopped"] = time.time()


def _crash(pair, events):
    pair.primary.kill()              # SIGKILL, its whole process group
    events["killed"] = time.time()
    pair.replica.promote()
    events["promoted"] = time.time()


def _lost(server, acked_path):
    def count_found(chunk):
        marks = ",".join(["%s"] * len(chunk))
        return server.query(f"SELECT COUNT(*) FROM {TEST_DB}.bench_rw WHERE id IN ({marks})",
                            chunk)[0][0]
    return tools.count_acked(acked_path, count_found)


def _general_log_rows(server):
    path = os.path.join(server.datadir, "mysql", "general_log.CSV")
    try:
        f = open(path, newline="", encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with f:
        for row in csv.reader(f, escapechar="\\", doublequote=False):
            if len(row) >= 6:
                yield row


def _old_writer_statements(server, offset, user, since):
    """Per moment in since ({name: unix time}): the statements of user's
    sessions the old writer's general log recorded at or after it: all
    queries, and of them the writes (INSERT/UPDATE), and the first three."""
    out = {name: {"statements": 0, "writes": 0, "first": []} for name in since}
    tag = f"{user}["
    for event_time, user_host, _tid, _sid, command, argument in (
            r[:6] for r in _general_log_rows(server)):
        if command != "Query" or not user_host.startswith(tag):
            continue
        try:
            local = datetime.datetime.strptime(event_time, "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            continue
        t = local.replace(tzinfo=datetime.timezone.utc).timestamp() + offset
        write = argument.lstrip()[:6].upper() in ("INSERT", "UPDATE")
        for name, when in since.items():
            if t >= when:
                out[name]["statements"] += 1
                out[name]["writes"] += int(write)
                if len(out[name]["first"]) < 3:
                    out[name]["first"].append(f"{event_time} {argument[:160]}")
    return out


def drill_once(kind, p, workdir, log):
    pair = ferry = None
    loads, idle = {}, {}
    try:
        log(f"failover_drill_mysql {kind}: fresh MariaDB pair, ferry with discovery {DISCOVERY}")
        pair = _setup_pair(p["rows"])
        offset = _clock_offset(pair.primary)
        ferry = _start_ferry(pair, workdir, kind)
        for target in TARGETS:               # idle sessions first: the loads start together
            idle[target] = _open_idle(ferry, target, p["idle"])
        ids = common.id_bases(TARGETS)
        for target in TARGETS:
            loads[target] = common.start_loadgen(f"drill-my-{kind}-{target}", "mysql",
                                                 _dsn(ferry, target), p, workdir, ids[target])
        time.sleep(p["before_s"])
        old = pair.primary
        events = {}
        t0 = time.time()
        log(f"failover_drill_mysql {kind}: t0, " + ("the writer turns read-only"
                                                    if kind == "planned" else "kill -9 the writer"))
        (_planned if kind == "planned" else _crash)(pair, events)
        log("  " + ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in events.items()))
        out = common.collect(
            loads, idle, p,
            lambda target, ld, code: _result(kind, target, ld, code, t0, events, pair, old,
                                             offset, p),
            lambda conns: _check_idle(conns, pair.replica.port), log)
        status = ferry.status()
        listeners = {e.get("name"): e for e in status.get("listeners", [])}
        for target, res in out.items():
            e = listeners.get(LISTENERS[target], {})
            res["ferry_sessions"] = {"moved": e.get("sessions_moved"),
                                     "move_failed": e.get("sessions_move_failed")}
            res["ferry_history"] = [h for h in status["discovery"]["history"]
                                    if h.get("listener") == LISTENERS[target]]
            res["events"] = {k: round(v - t0, 3) for k, v in events.items()}
            res["t0_unix"] = t0
        return out
    finally:
        common.cleanup(idle, loads, ferry, pair, log, pymysql.err.Error)


def _result(kind, target, ld, code, t0, events, pair, old, offset, p):
    raw = common.read_loadgen(ld, code, f"mysql drill loadgen via {target}")
    evs = common.read_timeline(ld["files"]["timeline"], raw["t0_unix"], t0)
    res = common.load_result(
        raw, evs, t0, events, p, ld,
        promoted_ms=(events["promoted"] - t0) * 1000,
        detection_s=common.detection_s(kind),
        acked_check=_lost(pair.replica, ld["files"]["acked"]),
        old_writer=_old_writer_statements(
            old, offset, USERS[target],
            {"after_failure": events.get("read_only", events.get("killed")),
             "after_t0": t0, "after_promotion": events["promoted"]}))
    common.print_result(f"{target} (mysql)", raw, res, "codes")
    return res


def run(sc, workdir, log, smoke):
    p = common.params(defaults, sc, smoke)
    kinds = {kind: drill_once(kind, p, workdir, log) for kind in KINDS}
    return {"status": "done", "targets": common.by_target(kinds, TARGETS), "params": p,
            "discovery": DISCOVERY}


# -- the split-brain drill -----------------------------------------------------

def split_defaults(smoke):
    """clients, seconds of load before t0 and after it, rows, idle sessions"""
    if smoke:
        return {"clients": 3, "before_s": 1.0, "after_s": 3.0, "rows": 1000, "idle": 3}
    return {"clients": 6, "before_s": 3.0, "after_s": 5.0, "rows": 10000, "idle": 10}


def _present(server):
    """present(ids): the ids of a chunk that server's bench_rw has"""
    def present(chunk):
        marks = ",".join(["%s"] * len(chunk))
        return [r[0] for r in server.query(
            f"SELECT id FROM {TEST_DB}.bench_rw WHERE id IN ({marks})", chunk)]
    return present


def split_brain_once(p, workdir, log):
    """The replica promoted under load while the writer stays up and
    writable; {target: result}, plus the events and ferry's history."""
    kind = common.SPLIT_BRAIN
    pair = ferry = fake = None
    loads, idle = {}, {}
    try:
        log(f"split_brain_drill_mysql: fresh MariaDB pair, fake AWS, ferry with discovery "
            f"{DISCOVERY}")
        pair = _setup_pair(p["rows"])
        offset = _clock_offset(pair.primary)
        fake = common.start_fake_aws()
        ferry = _start_ferry(pair, workdir, kind, aws=fake)
        for target in SPLIT_TARGETS:         # idle sessions first: the loads start together
            idle[target] = _open_idle(ferry, target, p["idle"], pair)
        ids = common.id_bases(SPLIT_TARGETS)
        for target in SPLIT_TARGETS:
            loads[target] = common.start_loadgen(f"drill-my-{kind}-{target}", "mysql",
                                                 _dsn(ferry, target, pair), p, workdir, ids[target])
        time.sleep(p["before_s"])
        old, new = pair.primary, pair.replica
        events = {}
        t0 = time.time()
        log("split_brain_drill_mysql: t0, the replica is promoted; the writer stays up and "
            "writable")
        new.promote()                # STOP SLAVE; RESET SLAVE ALL; read_only = 0
        events["promoted"] = time.time()
        fake.set_writer(common.AWS_IDS["region-b"])
        events["aws_names_promoted"] = time.time()
        log("  " + ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in events.items()))
        codes = {}
        for target, ld in loads.items():
            try:
                codes[target] = ld["popen"].wait(p["before_s"] + p["after_s"] + 60)
            except subprocess.TimeoutExpired:
                ld["popen"].kill()
                codes[target] = "timeout"
        idle_after = {}
        for target in SPLIT_TARGETS:
            idle_after[target] = _check_idle(idle.pop(target), new.port)
            log(f"  {target}: idle sessions after the promotion: {idle_after[target]}")
        status = ferry.status()
        # still a split brain at the end: the old writer was never demoted
        writable = old.query("SELECT @@read_only")[0][0] == 0
        old.query("SET GLOBAL general_log = 0")    # its CSV file complete and no longer growing
        out = {}
        for target, ld in loads.items():
            out[target] = _split_result(target, ld, codes[target], t0, events, old, new, offset,
                                        p, status)
            out[target]["idle_sessions"] = idle_after[target]
        listeners = {e.get("name"): e for e in status.get("listeners", [])}
        for target, name in SPLIT_LISTENERS.items():
            e = listeners.get(name, {})
            out[target]["ferry_sessions"] = {"moved": e.get("sessions_moved"),
                                             "move_failed": e.get("sessions_move_failed")}
        common.split_brain_finish(out, status, SPLIT_LISTENERS["ferry_aws"], events, t0, writable)
        return out
    finally:
        common.cleanup(idle, loads, ferry, pair, log, pymysql.err.Error)
        if fake:
            fake.stop()


def _split_result(target, ld, code, t0, events, old, new, offset, p, status):
    raw = common.read_loadgen(ld, code, f"mysql split-brain loadgen via {target}")
    timeline = ld["files"]["timeline"]
    evs = common.read_timeline(timeline, raw["t0_unix"], t0)
    switched, reason = (common.switch_time(status["discovery"]["history"],
                                           SPLIT_LISTENERS[target], "region-b", t0)
                        if target in SPLIT_LISTENERS else (None, None))
    fig = common.split_brain_figures(
        common.read_acks(timeline, raw["t0_unix"]), _present(new), _present(old), t0,
        events["promoted"], switched,
        row_time=lambda i: new.query(f"SELECT UNIX_TIMESTAMP(at) FROM {TEST_DB}.bench_rw "
                                     "WHERE id = %s", (i,))[0][0])
    since = {"after_t0": t0, "after_promotion": events["promoted"]}
    if switched is not None:
        since.update(after_switch=switched, after_switch_50ms=switched + 0.05)
    res = common.load_result(
        raw, evs, t0, events, p, ld, **fig, switch_reason=reason,
        promoted_ms=(events["promoted"] - t0) * 1000,
        old_writer=_old_writer_statements(old, offset, USERS[target], since))
    common.print_split_brain(f"{target} (mysql)", raw, res)
    return res


def run_split_brain(sc, workdir, log, smoke):
    p = common.params(split_defaults, sc, smoke)
    return common.split_brain_scenario(split_brain_once(p, workdir, log), SPLIT_TARGETS, p)
