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
"""

import csv
import datetime
import json
import os
import subprocess
import time

import pymysql

from harness import Ferry, MariaDBPair, cluster, listener, make_config, proc
from harness.mariadb import TEST_DB, TEST_PASSWORD, TEST_USER

import drill
import tools

TARGETS = ("ferry", "ferry_terminated")
KINDS = drill.KINDS
USERS = {"ferry": "drill_my", "ferry_terminated": "drill_my_t"}
PASSWORD = "drill_my_pw"
LISTENERS = {"ferry": "drill-my", "ferry_terminated": "drill-my-t"}
DISCOVERY = drill.DISCOVERY


def defaults(smoke):
    """clients, seconds of load before t0 and after it, rows, idle sessions"""
    if smoke:
        return {"clients": 3, "before_s": 1.0, "after_s": 3.0, "rows": 1000, "idle": 3}
    return {"clients": 6, "before_s": 4.0, "after_s": 8.0, "rows": 10000, "idle": 10}


def detection_s(kind):
    return drill.detection_s(kind)


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


def _start_ferry(pair, workdir, kind):
    clusters = [cluster("region-a", pair.primary), cluster("region-b", pair.replica)]
    probe = {"user": TEST_USER, "password": TEST_PASSWORD}
    auth = {"mode": "terminated",
            "users": [{"name": USERS["ferry_terminated"], "password": PASSWORD}]}
    cfg = make_config(listener(LISTENERS["ferry"], "mysql", clusters, probe=probe),
                      listener(LISTENERS["ferry_terminated"], "mysql", clusters, probe=probe,
                               auth=auth),
                      log_level="info", workers=2, discovery=DISCOVERY)
    ferry = Ferry(cfg, workdir, name=f"ferry-drill-my-{kind}").start()
    proc.wait_for(lambda: _writer(ferry) == "region-a", timeout=20,
                  what="ferry to pick region-a as the MySQL writer")
    return ferry


def _writer(ferry):
    writers = {e["name"]: e["writer"] for e in ferry.status()["discovery"]["listeners"]}
    same = {writers.get(name) for name in LISTENERS.values()}
    return same.pop() if len(same) == 1 else None


def _dsn(ferry, target):
    host, port = ferry.listener_addr(LISTENERS[target])
    return (f"host={host} port={port} user={USERS[target]} password={PASSWORD} "
            f"dbname={TEST_DB}")


def _open_idle(ferry, target, n):
    host, port = ferry.listener_addr(LISTENERS[target])
    conns = []
    for _ in range(n):
        c = pymysql.connect(host=host, port=port, user=USERS[target], password=PASSWORD,
                            database=TEST_DB, autocommit=True, connect_timeout=5,
                            read_timeout=30, write_timeout=30)
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        conns.append(c)
    return conns


def _check_idle(conns, new_writer_port):
    """One statement on each idle session after the failover: how many
    worked on the new writer, and the errors by MySQL error number."""
    out = {"sessions": len(conns), "ok": 0, "errors": {}}
    for c in conns:
        try:
            with c.cursor() as cur:
                cur.execute("SELECT @@port")
                port = cur.fetchone()[0]
            key = "ok" if port == new_writer_port else "old_writer"
        except pymysql.err.MySQLError as e:
            key = f"my{e.args[0]}" if e.args and isinstance(e.args[0], int) else "other"
        if key == "ok":
            out["ok"] += 1
        else:
            out["errors"][key] = out["errors"].get(key, 0) + 1
        try:
            c.close()
        except pymysql.err.Error:
            pass
    return out


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
    with open(acked_path) as f:
        ids = [int(line) for line in f if line.strip()]
    found = 0
    for i in range(0, len(ids), 5000):
        chunk = ids[i:i + 5000]
        marks = ",".join(["%s"] * len(chunk))
        found += server.query(f"SELECT COUNT(*) FROM {TEST_DB}.bench_rw WHERE id IN ({marks})",
                              chunk)[0][0]
    return {"acked": len(ids), "found": found, "lost": len(ids) - found}


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
    queries, and of them the writes (INSERT/UPDATE)."""
    out = {name: {"statements": 0, "writes": 0} for name in since}
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
    return out


def _start_loadgen(dsn, p, workdir, kind, target, id_base):
    tag = f"drill-my-{kind}-{target}"
    files = {k: os.path.join(workdir, f"{tag}.{k}") for k in ("json", "acked", "timeline", "err")}
    argv = [tools.LOADGEN, "--driver", "mysql", "--dsn", dsn, "--mode", "rw",
            "--clients", str(p["clients"]), "--rows", str(p["rows"]),
            "--duration", str(p["before_s"] + p["after_s"]), "--out", files["json"],
            "--acked", files["acked"], "--timeline", files["timeline"], "--label", tag,
            "--backoff-max-ms", "100", "--id-base", str(id_base)]
    with open(files["err"], "w") as errf:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=errf, env=proc.clean_env())
    return {"argv": argv, "popen": popen, "files": files}


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
        base = int(time.time()) & 0x3FFF     # distinct write ids per target and run
        for i, target in enumerate(TARGETS):
            loads[target] = _start_loadgen(_dsn(ferry, target), p, workdir, kind, target,
                                           ((base << 3) | i) << 44)
        time.sleep(p["before_s"])
        old = pair.primary
        events = {}
        t0 = time.time()
        log(f"failover_drill_mysql {kind}: t0, " + ("the writer turns read-only"
                                                    if kind == "planned" else "kill -9 the writer"))
        (_planned if kind == "planned" else _crash)(pair, events)
        log("  " + ", ".join(f"{k} +{(v - t0) * 1000:.0f} ms" for k, v in events.items()))
        out = {}
        for target, ld in loads.items():
            try:
                code = ld["popen"].wait(p["before_s"] + p["after_s"] + 60)
            except subprocess.TimeoutExpired:
                ld["popen"].kill()
                code = "timeout"
            res = _result(kind, target, ld, code, t0, events, pair, old, offset, p)
            res["idle_sessions"] = _check_idle(idle.pop(target), pair.replica.port)
            log(f"  {target}: idle sessions after the failover: {res['idle_sessions']}")
            out[target] = res
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
        for conns in idle.values():
            for c in conns:
                try:
                    c.close()
                except pymysql.err.Error:
                    pass
        for ld in loads.values():
            if ld["popen"].poll() is None:
                ld["popen"].kill()
                ld["popen"].wait()
        if ferry:
            ferry.kill()
        if pair:
            try:
                pair.stop()
            except proc.HarnessError as e:
                log(f"  stopping the drill's servers: {e}")


def _result(kind, target, ld, code, t0, events, pair, old, offset, p):
    files = ld["files"]
    if code != 0 or not os.path.exists(files["json"]):
        with open(files["err"]) as f:
            raise proc.HarnessError(f"mysql drill loadgen via {target} exited {code}: "
                                    f"{f.read()[-500:]}")
    with open(files["json"]) as f:
        raw = json.load(f)
    evs = drill._read_timeline(files["timeline"], raw["t0_unix"], t0)
    window, last_ack, first_ack = drill._window(evs, p["after_s"])
    errs_after = {}
    for t, k in evs:
        if k and t > 0:
            errs_after[k] = errs_after.get(k, 0) + 1
    promoted = events["promoted"] - t0
    res = {"txns": raw["txns"], "tps": raw["tps"], "errors": raw["errors"],
           "errors_after_t0": errs_after, "commit_unknown": raw["commit_unknown"],
           "stuck_clients": raw["stuck_clients"],
           "window_ms": window * 1000 if window is not None else None,
           "last_ack_before_ms": last_ack * 1000 if last_ack is not None else None,
           "first_ack_after_ms": first_ack * 1000 if first_ack is not None else None,
           "promoted_ms": promoted * 1000,
           "resumed_after_promotion_ms": ((first_ack - promoted) * 1000
                                          if first_ack is not None else None),
           "detection_s": detection_s(kind),
           "acked_check": _lost(pair.replica, files["acked"]),
           "old_writer": _old_writer_statements(
               old, offset, USERS[target],
               {"after_failure": events.get("read_only", events.get("killed")),
                             "after_t0": t0, "after_promotion": events["promoted"]}),
           "series": drill._series(evs, -p["before_s"],
                                   min(p["after_s"], raw["t0_unix"] + raw["elapsed_s"] - t0)),
           "events_in_timeline": len(evs), "argv": ld["argv"],
           "latency_us": raw["latency_us"]}
    w = res["window_ms"]
    print(f"[bench {time.strftime('%H:%M:%S')}]   {target} (mysql): "
          + (f"window {w:.0f} ms" if w is not None else "NO acknowledged write after t0")
          + f", errors {raw['errors']['total']} {raw['errors'].get('codes', {})}, "
          f"lost {res['acked_check']['lost']}, old writer: {res['old_writer']}", flush=True)
    return res


def run(sc, workdir, log, smoke):
    p = defaults(smoke)
    p.update({k: v for k, v in sc.params.items() if k in p}, clients=sc.clients)
    kinds = {kind: drill_once(kind, p, workdir, log) for kind in KINDS}
    targets = {t: {k: kinds[k][t] for k in KINDS} for t in TARGETS}
    return {"status": "done", "targets": targets, "params": p, "discovery": DISCOVERY}
