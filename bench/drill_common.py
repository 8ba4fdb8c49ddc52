"""What the two failover drills (drill.py, PostgreSQL; drill_my.py, MariaDB)
do alike: ferry's discovery settings and detection time, ferry with a
passthrough and a terminated listener over the drill's pair, the idle
sessions held across the failover and checked afterwards, one loadgen `rw`
per target (--timeline, --acked) and the reading of its output (the
unavailability window, errors after t0, the throughput series), and the
cleanup. The servers, the failover steps, the DSNs and the old writer's log
are each drill's own. The split-brain drill (kind "split_brain": the replica
is promoted while the old writer stays up and writable) also shares ferry's
AWS-signals listener over the fake AWS endpoint and the reading of what was
lost before and after ferry switched.
"""

import datetime
import json
import os
import subprocess
import sys
import time

from harness import Ferry, cluster, listener, make_config, proc

import tools

KINDS = ("planned", "crash")
SPLIT_BRAIN = "split_brain"
# ferry's discovery in both drills; the detection time follows from it
DISCOVERY = {"probe_interval": 0.5, "probe_timeout": 1, "writer_down_after": 2,
             "hold_timeout": 30}
BIN_S = 0.1          # resolution of the throughput/error series


def detection_s(kind):
    """How long ferry needs to notice: one probe round for a writer that turns
    read-only, writer_down_after failed rounds for one that is gone."""
    d = DISCOVERY
    return d["probe_interval"] * (1 if kind == "planned" else d["writer_down_after"])


def params(defaults, sc, smoke):
    """defaults(smoke), with the scenario's own params and clients on top"""
    p = defaults(smoke)
    p.update({k: v for k, v in sc.params.items() if k in p}, clients=sc.clients)
    return p


def by_target(kinds, targets):
    """{kind: {target: result}} -> {target: {kind: result}}"""
    return {t: {k: kinds[k][t] for k in kinds} for t in targets}


# -- ferry ------------------------------------------------------------------

def start_ferry(pair, workdir, name, protocol, listeners, probe, auth, what, aws=None):
    """ferry with discovery over pair (region-a its primary, region-b its
    replica): listeners["ferry"] with passthrough authentication,
    listeners["ferry_terminated"] with auth, and with aws (a started FakeAWS)
    listeners["ferry_aws"], passthrough with AWS signals from it; returns
    once all pick region-a."""
    clusters = [cluster("region-a", pair.primary), cluster("region-b", pair.replica)]
    ls = [listener(listeners["ferry"], protocol, clusters, probe=probe),
          listener(listeners["ferry_terminated"], protocol, clusters, probe=probe, auth=auth)]
    top = {}
    if aws is not None:
        ls.append(listener(listeners["ferry_aws"], protocol, [
            dict(clusters[0], region="us-east-1", db_cluster_identifier=AWS_IDS["region-a"]),
            dict(clusters[1], region="eu-west-1", db_cluster_identifier=AWS_IDS["region-b"])],
            probe=probe, aws_global_cluster=AWS_GLOBAL))
        top["aws"] = dict(AWS_SETTINGS, credentials="env",
                          endpoints={"rds": aws.url, "monitoring": aws.url})
    names = [entry["name"] for entry in ls]
    cfg = make_config(*ls, log_level="info", workers=2, discovery=DISCOVERY, **top)
    ferry = Ferry(cfg, workdir, name=name)
    with _aws_credentials(aws is not None):
        ferry.start()
    proc.wait_for(lambda: writer(ferry, names) == "region-a", timeout=20, what=what)
    return ferry


# -- AWS signals: the fake AWS endpoint (tests/fakes/fake_aws.py) ------------

AWS_GLOBAL = "ferry-global"
AWS_IDS = {"region-a": "ferry-primary", "region-b": "ferry-secondary"}
# polled every second (its minimum), so AWS's word can arrive within the
# drill; a real fleet polls far less often (README: AWS budget)
AWS_SETTINGS = {"region": "us-east-1", "poll_interval": 1, "urgent_poll_interval": 1,
                "lag_poll_interval": 1}


def start_fake_aws():
    """the fake AWS endpoint (RDS and CloudWatch, SigV4 checked), naming
    region-a's cluster the writer"""
    fakes = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "tests", "fakes")
    if fakes not in sys.path:
        sys.path.insert(0, fakes)
    import fake_aws
    fake = fake_aws.FakeAWS().start()
    fake.set_writer(AWS_IDS["region-a"])
    return fake


class _aws_credentials:
    """ferry's environment while it starts: the fake's static key (ferry
    reads it with credentials "env"), nothing else of AWS_*"""

    def __init__(self, on):
        self.on, self.saved = on, {}

    def __enter__(self):
        if not self.on:
            return self
        import fake_aws
        keys = [k for k in os.environ if k.startswith("AWS_")]
        self.saved = {k: os.environ.pop(k) for k in keys}
        os.environ["AWS_ACCESS_KEY_ID"] = fake_aws.STATIC_AKID
        os.environ["AWS_SECRET_ACCESS_KEY"] = fake_aws.STATIC_SECRET
        return self

    def __exit__(self, *exc):
        if self.on:
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.pop(k, None)
            os.environ.update(self.saved)


def writer(ferry, names):
    """the writer all the listeners named agree on, or None"""
    writers = {e["name"]: e["writer"] for e in ferry.status()["discovery"]["listeners"]}
    same = {writers.get(name) for name in names}
    return same.pop() if len(same) == 1 else None


# -- idle sessions ----------------------------------------------------------

def open_idle(connect, n):
    """n autocommit sessions (connect() opens one) that ran one statement and
    now sit idle"""
    conns = []
    for _ in range(n):
        c = connect()
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        conns.append(c)
    return conns


def check_idle(conns, new_writer_port, port_query, error, error_key):
    """One statement (port_query: the server's port) on each idle session
    after the failover: how many worked (on the new writer), and the errors
    by error_key(e) of the driver's error class."""
    out = {"sessions": len(conns), "ok": 0, "errors": {}}
    for c in conns:
        try:
            with c.cursor() as cur:
                cur.execute(port_query)
                port = cur.fetchone()[0]
            key = "ok" if port == new_writer_port else "old_writer"
        except error as e:
            key = error_key(e)
        if key == "ok":
            out["ok"] += 1
        else:
            out["errors"][key] = out["errors"].get(key, 0) + 1
        try:
            c.close()
        except error:
            pass
    return out


# -- the load ---------------------------------------------------------------

def id_bases(targets):
    """distinct write ids per target and run: {target: --id-base}"""
    base = int(time.time()) & 0x3FFF
    return {t: ((base << 3) | i) << 44 for i, t in enumerate(targets)}


def start_loadgen(tag, driver, dsn, p, workdir, id_base, extra=()):
    """loadgen `rw` for before_s + after_s, its output in workdir/tag.*"""
    files = {k: os.path.join(workdir, f"{tag}.{k}") for k in ("json", "acked", "timeline", "err")}
    argv = [tools.LOADGEN, "--driver", driver, "--dsn", dsn, "--mode", "rw",
            "--clients", str(p["clients"]), "--rows", str(p["rows"]),
            "--duration", str(p["before_s"] + p["after_s"]), "--out", files["json"],
            "--acked", files["acked"], "--timeline", files["timeline"], "--label", tag,
            "--backoff-max-ms", "100", "--id-base", str(id_base), *extra]
    with open(files["err"], "w") as errf:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=errf, env=proc.clean_env())
    return {"argv": argv, "popen": popen, "files": files}


def collect(loads, idle, p, result, check, log):
    """Waits for each target's loadgen; {target: result(target, ld, exit code)}
    with "idle_sessions": check(the target's idle sessions)."""
    out = {}
    for target, ld in loads.items():
        try:
            code = ld["popen"].wait(p["before_s"] + p["after_s"] + 60)
        except subprocess.TimeoutExpired:
            ld["popen"].kill()
            code = "timeout"
        res = result(target, ld, code)
        res["idle_sessions"] = check(idle.pop(target))
        log(f"  {target}: idle sessions after the failover: {res['idle_sessions']}")
        out[target] = res
    return out


def cleanup(idle, loads, ferry, pair, log, close_error):
    """the drill's finally: idle sessions closed, loadgens killed, ferry and
    the servers stopped"""
    for conns in idle.values():
        for c in conns:
            try:
                c.close()
            except close_error:
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


# -- reading the load's output ----------------------------------------------

def read_loadgen(ld, code, what):
    """loadgen's --out JSON; HarnessError (what exited code: its stderr) if
    it failed"""
    files = ld["files"]
    if code != 0 or not os.path.exists(files["json"]):
        with open(files["err"]) as f:
            raise proc.HarnessError(f"{what} exited {code}: {f.read()[-500:]}")
    with open(files["json"]) as f:
        return json.load(f)


def read_timeline(path, t0_unix, t_event, lookups=None):
    """[(t relative to t_event in s, key)] sorted; key "" for an ack. The
    DNS client's lookups ("MS dns HOST:PORT") go to lookups as (t, answer)."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            t = t0_unix + float(parts[0]) / 1e3 - t_event
            if parts[1] == "dns":
                if lookups is not None and len(parts) >= 3:
                    lookups.append((t, parts[2]))
            elif parts[1] == "err" and len(parts) >= 3:
                out.append((t, parts[2]))
            elif parts[1] == "ok":
                out.append((t, ""))
    out.sort()
    if lookups is not None:
        lookups.sort()
    return out


def window(events, end_rel):
    """(window s, last ack before it, first ack after it): the longest gap
    between consecutive acknowledgements among those around t=0 that ends
    after t=0; window None if nothing was acknowledged after t=0."""
    acks = [t for t, k in events if not k]
    before = [t for t in acks if t <= 0]
    after = [t for t in acks if t > 0]
    if not after:
        return None, (before[-1] if before else None), None
    best = (0.0, None, None)
    prev = before[-1] if before else after[0]
    for t in after:
        if t - prev > best[0]:
            best = (t - prev, prev, t)
        prev = t
    return best


def series(events, lo, hi):
    """[[t, acks per s, errors per s]] in BIN_S bins from lo to hi (relative s)"""
    n = int(round((hi - lo) / BIN_S))
    acks, errs = [0] * n, [0] * n
    for t, k in events:
        i = int((t - lo) / BIN_S)
        if 0 <= i < n:
            (errs if k else acks)[i] += 1
    return [[round(lo + (i + 0.5) * BIN_S, 3), acks[i] / BIN_S, errs[i] / BIN_S]
            for i in range(n)]


def load_result(raw, evs, t0, events, p, ld, **checks):
    """One target's result from its loadgen output (raw: the JSON, evs: the
    timeline relative to t0), with the drill's own checks after the window
    figures."""
    win, last_ack, first_ack = window(evs, p["after_s"])
    errs_after = {}
    for t, k in evs:
        if k and t > 0:
            errs_after[k] = errs_after.get(k, 0) + 1
    return {"txns": raw["txns"], "tps": raw["tps"], "errors": raw["errors"],
            "errors_after_t0": errs_after, "commit_unknown": raw["commit_unknown"],
            "stuck_clients": raw["stuck_clients"],
            "window_ms": win * 1000 if win is not None else None,
            "last_ack_before_ms": last_ack * 1000 if last_ack is not None else None,
            "first_ack_after_ms": first_ack * 1000 if first_ack is not None else None,
            # from the moment the new writer was promoted to the first acknowledged
            # write after the gap: what the client path adds to the promotion
            "resumed_after_promotion_ms": ((first_ack - (events["promoted"] - t0)) * 1000
                                           if first_ack is not None else None),
            **checks,
            # binned up to where this loadgen stopped, so its end is no drop to zero
            "series": series(evs, -p["before_s"],
                             min(p["after_s"], raw["t0_unix"] + raw["elapsed_s"] - t0)),
            "events_in_timeline": len(evs), "argv": ld["argv"],
            "latency_us": raw["latency_us"]}


def print_result(label, raw, res, codes):
    """the bench log's line for one target: window, errors by raw["errors"][codes],
    lost writes, statements to the old writer"""
    w = res["window_ms"]
    print(f"[bench {time.strftime('%H:%M:%S')}]   {label}: "
          + (f"window {w:.0f} ms" if w is not None else "NO acknowledged write after t0")
          + f", errors {raw['errors']['total']} {raw['errors'].get(codes, {})}, "
          f"lost {res['acked_check']['lost']}, old writer: {_counts(res['old_writer'])}",
          flush=True)


def _counts(old_writer):
    """the old writer's statement counts without the sample lines"""
    return {k: {n: c for n, c in v.items() if n != "first"} for k, v in old_writer.items()}


# -- the split-brain drill's figures -----------------------------------------

def read_acks(path, t0_unix):
    """{write id: unix time acknowledged} from a loadgen `rw` --timeline
    ("MS ok ID" lines; t0_unix: the run's origin from its JSON)"""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "ok":
                out[int(parts[2])] = t0_unix + float(parts[0]) / 1e3
    return out


def iso_epoch(at):
    """unix time of ferry's "2026-12-03T17:06:28.123Z", None if not one"""
    try:
        return datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


def switch_time(history, listener_name, to, t0):
    """(unix time, reason) of ferry's first change of listener_name's writer
    to `to` at or after t0 (its /v1/status history, ms resolution), or
    (None, None)"""
    for h in history:
        t = iso_epoch(h.get("at"))
        if h.get("listener") == listener_name and h.get("to") == to and t is not None \
                and t >= t0 - 0.001:
            return t, h.get("reason")
    return None, None


def split_brain_figures(acks, on_new, on_old, t0, promoted, switched, row_time=None):
    """What a split brain did to one target's writes.
    acks: {id: unix time acknowledged} (read_acks);
    on_new(ids) / on_old(ids): the ids of a chunk the promoted cluster / the
    old writer has;
    t0: the drill's promotion call; promoted: the moment the promoted
    cluster took writes; switched: when ferry made it the writer (None: the
    target has no such moment, as libpq).
    Lost = acknowledged but missing on the promoted cluster: acknowledged
    before t0 (replication had not shipped them yet: lost on any path),
    between t0 and ferry's switch, and after the switch (what ferry must keep
    at zero). A write made on the promoted cluster is one it has and the old
    writer has not (what both have was replicated before the split);
    row_time(id), if given, is the unix time the promoted cluster stamped on
    that row (its `at` column: PostgreSQL's now(), the transaction's start;
    MariaDB's the INSERT's start), a cross-check of the acknowledgement's
    time. Times in ms relative to `promoted`."""
    ids = list(acks)
    found = _ids_of(on_new, ids)
    lost = sorted(acks[i] for i in ids if i not in found)
    late = [t - switched for t in lost if switched is not None and t > switched]
    after_t0 = [i for i in found if acks[i] > t0]
    replicated = _ids_of(on_old, after_t0)
    on_new_only = [acks[i] for i in after_t0 if i not in replicated]
    first_new = min(on_new_only) if on_new_only else None
    first_id = next((i for i in after_t0 if i not in replicated and acks[i] == first_new), None)
    first_row = float(row_time(first_id)) if row_time and first_id is not None else None
    ms = lambda t: (t - promoted) * 1000 if t is not None else None  # noqa: E731
    return {
        "acked_check": {"acked": len(ids), "found": len(found), "lost": len(lost)},
        "acked_after_t0": sum(1 for t in acks.values() if t > t0),
        "acked_on_promoted_only": len(on_new_only),
        "lost_split": {
            "before_t0": sum(1 for t in lost if t <= t0),
            "t0_to_switch": sum(1 for t in lost if t > t0 and (switched is None or t <= switched)),
            "after_switch": len(late) if switched is not None else None,
            "after_switch_50ms": sum(1 for d in late if d > 0.05) if switched is not None else None,
            "after_switch_latest_ms": max(late) * 1000 if late else None},
        "t0_ms": ms(t0),
        "switch_ms": ms(switched),
        "first_write_on_promoted_ms": ms(first_new),
        "first_write_on_promoted_row_ms": ms(first_row),
        "goal_ms": (DISCOVERY["probe_interval"] + 0.1) * 1000}


def _ids_of(present, ids):
    """the set of ids present(chunk) finds, asked 5,000 at a time"""
    found = set()
    for i in range(0, len(ids), 5000):
        found |= set(present(ids[i:i + 5000]))
    return found


def print_split_brain(label, raw, res):
    """the bench log's line for one target of the split-brain drill"""
    ls = res["lost_split"]
    print(f"[bench {time.strftime('%H:%M:%S')}]   {label}: switch "
          f"{_ms(res['switch_ms'])}, first write on the promoted cluster "
          f"{_ms(res['first_write_on_promoted_ms'])} (after the promotion), acked "
          f"{res['acked_check']['acked']}, lost {res['acked_check']['lost']} (before t0 "
          f"{ls['before_t0']}, t0..switch {ls['t0_to_switch']}, after switch "
          f"{ls['after_switch']}), errors {raw['errors']['total']}, old writer: "
          f"{_counts(res['old_writer'])}", flush=True)


def _ms(v):
    return f"{v:+.0f} ms" if v is not None else "never"


def split_brain_finish(out, status, aws_listener, events, t0, old_writable):
    """What a split-brain drill adds to its per-target results at the end
    (either protocol): the AWS listener's counters and roles, the events and
    ferry's history, whether the old writer still accepted writes."""
    aws = next((e for e in status["discovery"]["listeners"] if e.get("name") == aws_listener), {})
    out["ferry_aws"]["aws"] = {"counters": aws.get("aws"),
                               "roles": {c["name"]: (c.get("aws") or {}).get("role")
                                         for c in aws.get("clusters", [])}}
    out["_events"] = {k: round(v - t0, 3) for k, v in events.items()}
    out["_t0_unix"] = t0
    out["_ferry_history"] = status["discovery"]["history"]
    out["_old_writer_writable_at_end"] = old_writable


def split_brain_scenario(out, targets, p):
    """A split-brain drill's scenario result (either protocol) from what
    its split_brain_once() returned."""
    kind = SPLIT_BRAIN
    return {"status": "done", "targets": {t: {kind: out[t]} for t in targets},
            "drills": {kind: {"events": out["_events"], "ferry_history": out["_ferry_history"],
                              "t0_unix": out["_t0_unix"],
                              "old_writer_writable_at_end": out["_old_writer_writable_at_end"]}},
            "params": p, "discovery": DISCOVERY, "aws": AWS_SETTINGS}
