"""Scenarios about connections rather than queries, against bench/pgsink (a
minimal PostgreSQL-protocol server that can hold more sessions than
PostgreSQL here) behind each proxy:

- conn_storm: bench/build/pgstorm opens N connections within SPREAD seconds
  through a target to the sink (startup, SELECT 1, Terminate), while a
  steady loadgen `select` session runs through the same target to the real
  PostgreSQL: accepted / refused / errors, time to drain, and the stall the
  storm causes for the existing sessions.
- idle_sink: up to 10,000 idle client connections through a proxy, each with
  its backend session on the sink: the proxy's RSS against the number of
  connections, and per client+backend pair.
"""

import json
import os
import resource
import subprocess
import time

from harness import proc

import tools


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- connection storm -----------------------------------------------------------

def _max_gap_ms(acks, lo, hi):
    """Longest time without an acknowledged transaction within [lo, hi]
    (unix s), counting the stretches from lo to the first ack and from the
    last ack to hi."""
    pts = [lo] + [t for t in acks if lo < t < hi] + [hi]
    return max(b - a for a, b in zip(pts, pts[1:])) * 1000


def storm_one(env, sc, name):
    p = sc.params
    steady_t, sink_t = env.targets[("pg", name)], env.targets[("sink", name)]
    before, budget = 1.0, p["spread_s"] + p["drain_budget_s"]
    tag = f"{sc.name}-{name}"
    files = {k: os.path.join(env.workdir, f"{tag}.{k}") for k in ("json", "timeline")}
    argv = tools.loadgen_argv(steady_t, "--mode", "select", "--clients", str(sc.clients),
                              "--duration", str(before + budget), "--out", files["json"],
                              "--timeline", files["timeline"], "--label", tag)
    if p.get("rows"):
        argv += ["--rows", str(p["rows"])]
    steady = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=proc.clean_env())
    try:
        time.sleep(before)
        cpu0, rss0 = sink_t.cpu_seconds(), sink_t.rss_kib()
        storm_argv = [tools.PGSTORM, "--host", sink_t.host, "--port", str(sink_t.port),
                      "--user", tools.PG_USER, "--dbname", sink_t.dbname,
                      "-n", str(p["connections"]), "--spread", str(p["spread_s"]),
                      "--timeout", str(p["drain_budget_s"])]
        out, err, code = tools.run_tool(storm_argv, budget + 60, f"pgstorm via {name}")
        if code != 0:
            raise proc.HarnessError(f"pgstorm via {name} exited {code}: {err[-500:]}")
        storm = json.loads(out)
        cpu = sink_t.cpu_seconds() - cpu0 if cpu0 is not None else None
        rss1 = sink_t.rss_kib()
        _, serr = steady.communicate(timeout=budget + 60)
    finally:
        if steady.poll() is None:
            steady.kill()
            steady.wait()
    if steady.returncode != 0:
        raise proc.HarnessError(f"steady loadgen via {name} exited {steady.returncode}: "
                                f"{serr[-500:]}")
    with open(files["json"]) as f:
        raw = json.load(f)
    acks = []
    with open(files["timeline"]) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "ok":
                acks.append(raw["t0_unix"] + float(parts[0]) / 1e3)
    acks.sort()
    s0 = storm["started_unix"]
    s1 = s0 + max(storm["drain_s"], 0.001)
    during = [t for t in acks if s0 <= t <= s1]
    before_acks = [t for t in acks if s0 - 0.8 <= t < s0]
    res = {
        "storm": storm, "proxy_cpu_s": cpu, "argv": storm_argv,
        "proxy_rss_before_kib": rss0, "proxy_rss_after_kib": rss1,
        "steady": {"clients": sc.clients, "txns": raw["txns"], "errors": raw["errors"],
                   "latency_us": raw["latency_us"],
                   "tps_before": len(before_acks) / 0.8,
                   "tps_during": len(during) / (s1 - s0),
                   "max_gap_before_ms": _max_gap_ms(acks, s0 - 0.8, s0),
                   "max_gap_during_ms": _max_gap_ms(acks, s0, s1),
                   "covered_storm": raw["t0_unix"] + raw["elapsed_s"] >= s1},
        "ok": storm["ok"], "errors": {"total": storm["n"] - storm["ok"]}}
    if cpu is not None and storm["ok"]:
        res["proxy_cpu_us_per_conn"] = cpu * 1e6 / storm["ok"]
    st = res["steady"]
    log(f"  {storm['ok']}/{storm['n']} ok {storm['outcomes']}, drained in {storm['drain_s']:.2f} s, "
        f"peak open {storm['peak_open']}; steady session: longest gap "
        f"{st['max_gap_during_ms']:.0f} ms during vs {st['max_gap_before_ms']:.0f} ms before, "
        f"{st['tps_during']:.0f} vs {st['tps_before']:.0f} tps")
    return res


def run_storm(env, sc):
    out = {}
    for name in sc.targets:
        log(f"{sc.name} via {name}: {sc.params['connections']} connections within "
            f"{sc.params['spread_s']:g} s to the sink, {sc.clients} steady clients to PostgreSQL")
        out[name] = storm_one(env, sc, name)
        _wait_sink_quiet(env)
    return out


# -- idle connections against the sink --------------------------------------------

def max_pairs():
    """ferry and HAProxy need two descriptors per client+backend pair and
    cannot raise RLIMIT_NOFILE above the hard limit; leave some room."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return max(100, (hard - 400) // 2)


def _wait_sink_quiet(env, timeout=60):
    """Waits until the sink's session count stops falling (closes from the
    previous run done); returns it."""
    last = [None]

    def settled():
        n = env.sink.count()[0]
        done = last[0] is not None and n >= last[0]
        last[0] = n
        return (n,) if done else None
    time.sleep(0.3)
    return proc.wait_for(settled, timeout=timeout, interval=0.5,
                         what="the sink's sessions of the previous run to close")[0]


def _open_idle(target, count):
    """A loadgen holding count idle connections through target; returns
    (popen, connected, errors) once they are all open."""
    p = subprocess.Popen(tools.loadgen_argv(target, "--mode", "idle", "--clients", str(count),
                                            "--hold", "600"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=proc.clean_env())
    line = tools._read_line(p, 300).split()
    if len(line) != 3 or line[0] != "ready":
        p.kill()
        p.wait()
        raise proc.HarnessError(f"loadgen idle via {target.name}: no ready line ({line})")
    return p, int(line[1]), int(line[2])


def sink_idle_one(env, sc, name):
    target = env.targets[("sink", name)]
    total = min(sc.clients, max_pairs())
    steps = sc.params["steps"]
    sizes = [total // steps + (1 if i < total % steps else 0) for i in range(steps)]
    base_sessions = _wait_sink_quiet(env)
    time.sleep(0.5)
    rss0 = target.rss_kib()
    points = [[0, rss0, 0]]
    holders, connected, errors = [], 0, 0
    t0 = time.monotonic()
    try:
        for size in sizes:
            p, ok, errs = _open_idle(target, size)
            holders.append(p)
            connected += ok
            errors += errs
            time.sleep(0.5)                  # let the proxy settle after the last connect
            sessions = env.sink.count()[0] - base_sessions
            points.append([connected, target.rss_kib(), sessions])
            log(f"  {connected} connected ({errors} errors): RSS {points[-1][1]} KiB, "
                f"sink sessions +{sessions}")
        connect_s = time.monotonic() - t0
    finally:
        for p in holders:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in holders:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    last = points[-1]
    per = (last[1] - rss0) / last[0] if last[0] else None
    log(f"  {name}: {per or 0:.2f} KiB per idle client (+{last[1] - rss0} KiB for {last[0]}), "
        f"backend sessions held {last[2]}")
    return {"connected": connected, "wanted": total, "errors": {"total": errors},
            "rss_before_kib": rss0, "rss_after_kib": last[1], "rss_per_conn_kib": per,
            "server_backends": last[2], "points": points, "connect_s": connect_s,
            "fd_cap_pairs": max_pairs()}


def run_sink_idle(env, sc):
    out = {}
    for name in sc.targets:
        log(f"{sc.name} via {name}: up to {min(sc.clients, max_pairs())} idle connections "
            f"to the sink in {sc.params['steps']} steps")
        try:
            out[name] = sink_idle_one(env, sc, name)
        except (proc.HarnessError, TimeoutError) as e:
            log(f"  failed: {e}")
            out[name] = {"failed": str(e)}
    return out


# -- idle connections, each with a real PostgreSQL backend ----------------------------

PG_IDLE_SETTINGS = {"max_connections": 1100, "shared_buffers": "16MB",
                    "log_connections": "off"}


def _start_single_pg(settings):
    """One PostgreSQL server (no replica), from the harness, with settings."""
    from harness import PgPair, PgServer

    class SinglePg(PgPair):
        def _setup(self):
            self.primary = PgServer("primary", self.basedir, run_as=self.RUN_AS)
            self._init_primary()
            self.primary.start()

    pg = SinglePg(settings=settings).start()
    pg.primary.query(f"CREATE ROLE {tools.PG_USER} LOGIN")
    pg.primary.query(f"CREATE DATABASE {tools.PG_DB} OWNER {tools.PG_USER}")
    return pg


def _pg_backends(server):
    def count():
        rows = server.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                            (tools.PG_DB,))
        return (rows[0][0],)
    return proc.wait_for(count, timeout=120, what="a count of PostgreSQL backends")[0]


def pg_idle_one(target, n, server):
    """target's RSS empty (fresh process, nothing connected yet) and while n
    idle clients hold a connection through it; the backends they took."""
    time.sleep(0.5)
    empty = target.rss_kib()
    backends0 = _pg_backends(server)
    p, ok, errs = _open_idle(target, n)
    try:
        time.sleep(1.0)                      # let the proxy settle after the last connect
        rss = target.rss_kib()
        backends = _pg_backends(server) - backends0
    finally:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    # the backends go with their clients; PgBouncer keeps the one it opened
    # for the pool's server parameters (server_idle_timeout), up to its pool size
    slack = 40 if target.name == "pgbouncer" else 0
    try:
        proc.wait_for(lambda: _pg_backends(server) <= backends0 + slack, timeout=120,
                      what=f"the backends of the idle clients via {target.name} to exit")
    except TimeoutError as e:
        log(f"  {e}")
    per = (rss - empty) / ok if ok else None
    log(f"  {target.name}: {ok} connected ({errs} errors): RSS {empty} -> {rss} KiB = "
        f"{per or 0:.2f} KiB per pair; PostgreSQL backends +{backends}")
    return {"connected": ok, "wanted": n, "errors": {"total": errs}, "rss_before_kib": empty,
            "rss_empty_kib": empty, "rss_after_kib": rss, "rss_per_conn_kib": per,
            "server_backends": backends}


def run_pg_idle(sc, workdir, workers):
    """pg_idle_1000: its own PostgreSQL (max_connections 1100, small
    shared_buffers) and a fresh ferry, HAProxy and PgBouncer in front of it;
    sc.clients idle clients through each in turn."""
    from harness import Ferry, cluster, listener, make_config
    import peers

    log(f"{sc.name}: starting PostgreSQL with {PG_IDLE_SETTINGS}")
    pg = _start_single_pg(PG_IDLE_SETTINGS)
    out, procs = {}, []
    try:
        a = pg.primary
        backend = (a.host, a.port)
        ferry = Ferry(make_config(listener("idle-pg", "postgresql",
                                           [cluster("primary", f"{a.host}:{a.port}",
                                                    writer=True)]),
                                  log_level="warn", workers=workers),
                      workdir, name="ferry-pg-idle").start()
        procs.append(ferry)
        haproxy = peers.HAProxy(workdir, {"pg": backend}, workers).start()
        procs.append(haproxy)
        bouncer = peers.PgBouncer(backend, tools.PG_DB, tools.PG_USER, pool_size=40).start()
        procs.append(bouncer)
        fh, fp = ferry.listener_addr("idle-pg")
        targets = {"ferry": peers.Target("ferry", "pg", fh, fp, ferry.pid),
                   "haproxy": peers.Target("haproxy", "pg", "127.0.0.1", haproxy.ports["pg"],
                                           haproxy.proc.pid),
                   "pgbouncer": peers.Target("pgbouncer", "pg", "127.0.0.1", bouncer.port,
                                             bouncer.proc.pid)}
        for name in sc.targets:
            log(f"{sc.name} via {name}: {sc.clients} idle connections to PostgreSQL")
            try:
                out[name] = pg_idle_one(targets[name], sc.clients, a)
            except (proc.HarnessError, TimeoutError) as e:
                log(f"  failed: {e}")
                out[name] = {"failed": str(e)}
    finally:
        for thing in reversed(procs):
            try:
                thing.stop()
            except Exception as e:  # noqa: BLE001 - stop the rest
                log(f"  stopping {thing!r}: {e}")
        pg.stop()
    return out
