"""What the two failover drills (drill.py, PostgreSQL; drill_my.py, MariaDB)
do alike: ferry's discovery settings and detection time, ferry with a
passthrough and a terminated listener over the drill's pair, the idle
sessions held across the failover and checked afterwards, one loadgen `rw`
per target (--timeline, --acked) and the reading of its output (the
unavailability window, errors after t0, the throughput series), and the
cleanup. The servers, the failover steps, the DSNs and the old writer's log
are each drill's own.
"""

import json
import os
import subprocess
import time

from harness import Ferry, cluster, listener, make_config, proc

import tools

KINDS = ("planned", "crash")
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

def start_ferry(pair, workdir, name, protocol, listeners, probe, auth, what):
    """ferry with discovery over pair (region-a its primary, region-b its
    replica): listeners["ferry"] with passthrough authentication,
    listeners["ferry_terminated"] with auth; returns once both pick region-a."""
    clusters = [cluster("region-a", pair.primary), cluster("region-b", pair.replica)]
    cfg = make_config(listener(listeners["ferry"], protocol, clusters, probe=probe),
                      listener(listeners["ferry_terminated"], protocol, clusters, probe=probe,
                               auth=auth),
                      log_level="info", workers=2, discovery=DISCOVERY)
    ferry = Ferry(cfg, workdir, name=name).start()
    proc.wait_for(lambda: writer(ferry, listeners.values()) == "region-a", timeout=20,
                  what=what)
    return ferry


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
          f"lost {res['acked_check']['lost']}, old writer: {res['old_writer']}", flush=True)
