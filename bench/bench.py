"""bench/run's driver: starts PostgreSQL (and MariaDB, and bench/pgsink)
through the test harness, ferry, HAProxy and PgBouncer in front of the same
servers, runs each scenario through each target, and writes
bench/results/<timestamp>/ with report.md, plots and the raw JSON. The
failover drill (drill.py) starts its own servers. --smoke runs everything
tiny and checks the results are well formed. Usage: bench/run --help.
"""

import argparse
import dataclasses
import datetime
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
os.environ.setdefault("FERRY_BIN", os.path.join(REPO, "build-bench", "tree", "ferry"))

from harness import Ferry, MariaDBPair, PgPair, cluster, listener, make_config, proc  # noqa: E402

import conns  # noqa: E402
import drill  # noqa: E402
import drill_common  # noqa: E402
import drill_my  # noqa: E402
import peers  # noqa: E402
import profiling  # noqa: E402
import report  # noqa: E402
import tools  # noqa: E402

WORKERS = 2                 # ferry workers = HAProxy threads; PgBouncer has one thread
IDLE_CLIENTS = 2000
PG_SETTINGS = {             # on top of the harness's defaults, for both servers
    "max_connections": IDLE_CLIENTS + 300,   # ferry and HAProxy give each idle client a backend
    "log_connections": "off",                # connect scenarios would log every connection
    "shared_buffers": "256MB",               # pgbench scale 10 fits in memory
}
PGBENCH_SCALE = 10
LOADGEN_ROWS = 100000

# --smoke (CI): every scenario against every target, tiny: it proves the
# harness runs end to end and its results are well formed, never speed.
SMOKE = {"duration": 1.0, "pause": 0.1, "clients": 4, "pgbench_scale": 1, "rows": 10000}


@dataclass
class Scenario:
    name: str
    protocol: str           # "pg" or "mysql" (the shared servers it needs), "none": its own
    tool: str               # pgbench, sysbench, loadgen, idle, drill
    clients: int
    args: list = field(default_factory=list)
    title: str = ""
    targets: tuple = ("direct", "ferry", "haproxy", "pgbouncer")
    params: dict = field(default_factory=dict)   # scenario-specific sizes
    needs: tuple = ()       # further shared servers: "pg", "mysql", "sink" (bench/pgsink)
    smoke: dict = field(default_factory=dict)    # overrides of clients/params for --smoke

    def for_smoke(self):
        """The same scenario, tiny: few clients, small counts."""
        over = dict(self.smoke)
        clients = over.pop("clients", min(self.clients, SMOKE["clients"]))
        return dataclasses.replace(self, clients=clients,
                                   params={"rows": SMOKE["rows"], **self.params, **over})


SCENARIOS = [
    Scenario("pgbench_select", "pg", "pgbench", 32, ["-S"], "pgbench select-only, 32 clients"),
    Scenario("pgbench_tpcb", "pg", "pgbench", 16, [], "pgbench TPC-B-like, 16 clients"),
    Scenario("pgbench_connect", "pg", "pgbench", 16, ["-S", "-C"],
             "pgbench select-only, new connection per transaction (-C), 16 clients"),
    Scenario("select", "pg", "loadgen", 32, ["--mode", "select"],
             "loadgen point SELECT (simple protocol), 32 clients"),
    Scenario("select_prepared", "pg", "loadgen", 32, ["--mode", "select", "--prepared"],
             "loadgen point SELECT, prepared, 32 clients"),
    Scenario("rw", "pg", "loadgen", 16, ["--mode", "rw"],
             "loadgen BEGIN/INSERT/UPDATE/COMMIT, 16 clients, acknowledged ids checked"),
    Scenario("connect", "pg", "loadgen", 16, ["--mode", "connect"],
             "loadgen connect + SELECT + disconnect per transaction, 16 clients"),
    Scenario("idle_memory", "pg", "idle", IDLE_CLIENTS, [],
             f"{IDLE_CLIENTS} idle client connections: proxy RSS per connection",
             ("ferry", "haproxy", "pgbouncer"), smoke={"clients": 40}),
    Scenario("mysql_point_select", "mysql", "sysbench", 16, ["oltp_point_select"],
             "sysbench oltp_point_select, 16 threads", ("direct", "ferry", "haproxy")),
    Scenario("mysql_read_only", "mysql", "sysbench", 16, ["oltp_read_only"],
             "sysbench oltp_read_only, 16 threads", ("direct", "ferry", "haproxy")),
    Scenario("mysql_select", "mysql", "loadgen", 16, ["--mode", "select"],
             "loadgen point SELECT over the MySQL protocol, 16 clients",
             ("direct", "ferry", "haproxy")),
    Scenario("conn_storm", "pg", "storm", 4, [],
             "connection storm: 5,000 connects within 1 s (startup + SELECT 1 + close) to "
             "bench/pgsink behind each target, while 4 steady clients query PostgreSQL through "
             "the same target", params={"connections": 5000, "spread_s": 1.0,
                                        "drain_budget_s": 10},
             smoke={"connections": 300, "spread_s": 0.3, "drain_budget_s": 2}, needs=("sink",)),
    Scenario("stream_1gb", "pg", "stream", 1, [],
             "large result: psql COPY (SELECT repeat('x', 1000) FROM generate_series(1, "
             "1000000)) TO STDOUT, about 1 GB", params={"result_rows": 1000000},
             smoke={"result_rows": 10000}),
    Scenario("idle_sink", "sink", "sink_idle", 10000, [],
             "10,000 idle client connections, each with its backend session on bench/pgsink: "
             "proxy RSS against connections", ("ferry", "haproxy", "pgbouncer"),
             params={"steps": 4}, smoke={"clients": 200, "steps": 2}),
    Scenario("idle_pg_1000", "none", "pg_idle", 1000, [],
             "1,000 idle client connections, each with a real PostgreSQL backend (its own "
             "server, max_connections 1100, shared_buffers 16MB): proxy RSS per "
             "client+backend pair above the empty process", ("ferry", "haproxy", "pgbouncer"),
             smoke={"clients": 40}),
    Scenario("profile", "pg", "profile", 32, [],
             "profile of ferry under pgbench select-only, 32 clients: perf record -g, "
             "strace -c -f", ("ferry",)),
    Scenario("failover_drill", "none", "drill", 6, [],
             "failover drill, PostgreSQL: planned switchover and crash of the writer under "
             "loadgen rw, ferry (discovery; passthrough and terminated auth) vs libpq "
             "multi-host failover vs a DNS-based client (5 s TTL)", drill.TARGETS),
    Scenario("failover_drill_mysql", "none", "drill_my", 6, [],
             "failover drill, MariaDB: planned switchover and crash of the writer under "
             "loadgen rw over the MySQL protocol through ferry's discovered MySQL listeners "
             "(passthrough and terminated auth)",
             drill_my.TARGETS),
    Scenario("split_brain_drill", "none", "split_brain", 6, [],
             "split-brain drill, PostgreSQL: the replica is promoted under loadgen rw while the "
             "old writer stays up and writable; ferry (passthrough, terminated auth, passthrough "
             "with AWS signals from the fake AWS) vs libpq multi-host, which keeps the old "
             "writer", drill.SPLIT_TARGETS),
    Scenario("split_brain_drill_mysql", "none", "split_brain_my", 6, [],
             "split-brain drill, MariaDB: the replica is promoted under loadgen rw while the old "
             "writer stays up and writable; ferry (passthrough, terminated auth, passthrough with "
             "AWS signals) vs a client of the old writer's address", drill_my.SPLIT_TARGETS),
]
BY_NAME = {s.name: s for s in SCENARIOS}
# left out of the default run to keep it near 20 minutes; run them by name
OPTIONAL = {"select_prepared", "mysql_select"}
DEFAULT = [s.name for s in SCENARIOS if s.name not in OPTIONAL]


# --------------------------------------------------------------------------
# the environment: servers and proxies

class Env:
    def __init__(self, protocols, workdir, smoke=False):
        self.workdir = workdir
        self.smoke = smoke
        self.pgbench_scale = SMOKE["pgbench_scale"] if smoke else PGBENCH_SCALE
        self.rows = SMOKE["rows"] if smoke else LOADGEN_ROWS
        self.pg = self.my = self.ferry = self.haproxy = self.pgbouncer = self.sink = None
        self.targets = {}           # (protocol, name) -> peers.Target
        self.protocols = protocols

    def start(self):
        if "pg" in self.protocols:
            self._start_pg()
        if "mysql" in self.protocols:
            self._start_mysql()
        if "sink" in self.protocols:
            log("starting bench/pgsink, the minimal PostgreSQL-protocol server")
            self.sink = peers.Sink(tools.PGSINK, os.path.join(self.workdir, "pgsink.log")).start()
        self._start_proxies()
        return self

    def _start_pg(self):
        log("starting PostgreSQL 15 primary + replica (harness PgPair)")
        self.pg = PgPair(settings=PG_SETTINGS).start()
        p = self.pg.primary
        p.query(f"CREATE ROLE {tools.PG_USER} LOGIN")
        p.query(f"CREATE DATABASE {tools.PG_DB} OWNER {tools.PG_USER}")
        direct = peers.Target("direct", "pg", p.host, p.port)
        self.targets[("pg", "direct")] = direct
        log(f"loading: loadgen init ({self.rows} rows), pgbench -i -s {self.pgbench_scale}")
        proc.run([tools.LOADGEN, "--mode", "init", "--rows", str(self.rows),
                  "--dsn", tools.dsn(direct)], timeout=120, what="loadgen init")
        proc.run([tools.PGBENCH, "-i", "-q", "-s", str(self.pgbench_scale), "-h", p.host,
                  "-p", str(p.port), "-U", tools.PG_USER, tools.PG_DB], timeout=300,
                 what="pgbench -i")

    def _start_mysql(self):
        log("starting MariaDB primary + replica (harness MariaDBPair)")
        self.my = MariaDBPair().start()
        p = self.my.primary
        direct = peers.Target("direct", "mysql", p.host, p.port)
        self.targets[("mysql", "direct")] = direct
        proc.run([tools.LOADGEN, "--driver", "mysql", "--mode", "init", "--rows",
                  str(self.rows), "--dsn", tools.dsn(direct)], timeout=120,
                 what="loadgen init (mysql)")
        proc.run(tools.sysbench_argv("oltp_point_select", direct, 1, 10, "prepare"),
                 timeout=120, what="sysbench prepare")

    def _backends(self):
        b = {}
        if self.pg:
            b["pg"] = (self.pg.primary.host, self.pg.primary.port)
        if self.my:
            b["mysql"] = (self.my.primary.host, self.my.primary.port)
        if self.sink:
            b["sink"] = ("127.0.0.1", self.sink.port)
        return b

    def _start_proxies(self):
        backends = self._backends()
        self.baseline_rss = {}
        if not backends:            # only scenarios that start their own servers
            return
        protocol_name = {"pg": "postgresql", "mysql": "mysql", "sink": "postgresql"}
        config = make_config(*[listener(f"bench-{p}", protocol_name[p],
                                        [cluster("primary", f"{h}:{port}", writer=True)])
                               for p, (h, port) in backends.items()],
                             log_level="warn", workers=WORKERS)
        log(f"starting ferry ({os.environ['FERRY_BIN']}, workers={WORKERS}), "
            f"HAProxy (nbthread {WORKERS}), PgBouncer (session mode, single-threaded)")
        self.ferry = Ferry(config, self.workdir, name="ferry").start()
        self.haproxy = peers.HAProxy(self.workdir, backends, WORKERS).start()
        wire = {"pg": "pg", "mysql": "mysql", "sink": "pg"}
        dbname = {"sink": "sink"}
        for p in backends:
            host, port = self.ferry.listener_addr(f"bench-{p}")
            self.targets[(p, "ferry")] = peers.Target("ferry", wire[p], host, port, self.ferry.pid,
                                                      dbname=dbname.get(p))
            self.targets[(p, "haproxy")] = peers.Target(
                "haproxy", wire[p], "127.0.0.1", self.haproxy.ports[p], self.haproxy.proc.pid,
                dbname=dbname.get(p))
        if "sink" in backends:
            self.targets[("sink", "direct")] = peers.Target("direct", "pg", *backends["sink"],
                                                            dbname="sink")
        if "pg" in backends or "sink" in backends:
            main = ("pg", tools.PG_DB) if "pg" in backends else ("sink", "sink")
            extra = {"sink": backends["sink"]} if "pg" in backends and "sink" in backends else {}
            self.pgbouncer = peers.PgBouncer(backends[main[0]], main[1], tools.PG_USER,
                                             pool_size=40, extra_dbs=extra).start()
            for p in ("pg", "sink"):
                if p in backends:
                    self.targets[(p, "pgbouncer")] = peers.Target(
                        "pgbouncer", "pg", "127.0.0.1", self.pgbouncer.port,
                        self.pgbouncer.proc.pid, dbname=dbname.get(p))
        self.baseline_rss = {name: t.rss_kib() for (p, name), t in self.targets.items()
                             if t.pid and p == "pg"}

    def stop(self):
        for thing in (self.pgbouncer, self.haproxy, self.ferry, self.sink, self.my, self.pg):
            if thing is None:
                continue
            try:
                thing.stop()
            except Exception as e:  # noqa: BLE001 - stop the rest
                log(f"stopping {thing!r}: {e}")

    def versions(self):
        def first_line(argv):
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return (r.stdout or r.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "?"
        return {"haproxy": first_line(["haproxy", "-v"]),
                "pgbouncer": first_line(["pgbouncer", "--version"]),
                "postgres": first_line([tools.PGBENCH.replace("pgbench", "postgres"), "--version"]),
                "pgbench": first_line([tools.PGBENCH, "--version"]),
                "sysbench": first_line(["sysbench", "--version"]),
                "mariadb": first_line(["mariadbd", "--version"]),
                "kernel": os.uname().release, "cpus": os.cpu_count(),
                "fork_exec_ms": fork_exec_ms()}


def fork_exec_ms(n=20):
    """Mean cost of fork+exec+exit of /bin/true: PostgreSQL forks a backend
    per connection, so this bounds the connect-per-transaction scenarios."""
    t0 = time.monotonic()
    for _ in range(n):
        subprocess.run(["/bin/true"], check=False)
    return (time.monotonic() - t0) * 1000 / n


# --------------------------------------------------------------------------
# running scenarios

def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


RUNNERS = {"pgbench": tools.run_pgbench, "sysbench": tools.run_sysbench,
           "loadgen": tools.run_loadgen}


def run_one(env, sc, target, duration):
    """One tool run through one target, with the proxy's CPU time around it."""
    cpu0 = target.cpu_seconds()
    load1 = os.getloadavg()[0]
    t0 = time.monotonic()
    res = RUNNERS[sc.tool](sc, target, duration, env.workdir)
    res["wall_s"] = time.monotonic() - t0
    res["load1_before"] = load1
    if cpu0 is not None:
        cpu = target.cpu_seconds() - cpu0
        res["proxy_cpu_s"] = cpu
        res["proxy_cpu_us_per_txn"] = cpu * 1e6 / res["txns"] if res["txns"] else None
    if res.get("acked_file"):
        res["acked_check"] = check_acked(env, res["acked_file"])
    return res


def check_acked(env, path):
    """How many acknowledged write ids are missing from bench_rw on the primary."""
    return tools.count_acked(path, lambda chunk: env.pg.primary.query(
        "SELECT count(*) FROM bench_rw WHERE id = ANY(%s)", (chunk,),
        user=tools.PG_USER, dbname=tools.PG_DB)[0][0])


def pick_median(runs):
    """Of several rounds, the run with the median tps, annotated with the range."""
    ordered = sorted(runs, key=lambda r: r["tps"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_tps"] = [r["tps"] for r in runs]
    return chosen


def run_scenario(env, sc, args):
    if sc.tool == "drill":
        return drill.run(sc, env.workdir, log, env.smoke)
    if sc.tool == "drill_my":
        return drill_my.run(sc, env.workdir, log, env.smoke)
    if sc.tool == "split_brain":
        return drill.run_split_brain(sc, env.workdir, log, env.smoke)
    if sc.tool == "split_brain_my":
        return drill_my.run_split_brain(sc, env.workdir, log, env.smoke)
    if sc.tool == "pg_idle":
        return {"status": "done", "targets": conns.run_pg_idle(sc, env.workdir, WORKERS),
                "settings": conns.PG_IDLE_SETTINGS}
    if sc.tool == "profile":
        return {"status": "done",
                "targets": {"ferry": profiling.run_profile(env, sc, args.duration)}}
    if sc.tool == "storm":
        return {"status": "done", "targets": conns.run_storm(env, sc)}
    if sc.tool == "sink_idle":
        return {"status": "done", "targets": conns.run_sink_idle(env, sc),
                "fd_cap_pairs": conns.max_pairs()}
    if sc.tool == "stream":
        return {"status": "done", "targets": run_stream(env, sc, args)}
    if sc.tool == "idle":
        return {"status": "done", "targets": run_idle(env, sc)}
    runs = {}
    for rnd in range(args.rounds):
        for name in sc.targets:
            target = env.targets[(sc.protocol, name)]
            log(f"{sc.name} via {name} (round {rnd + 1}/{args.rounds}, {args.duration:g} s)")
            res = run_one(env, sc, target, args.duration)
            log(f"  {res['tps']:.0f} tps, p99 {res['latency_us'].get('p99', 0):.0f} µs, "
                f"errors {res['errors'].get('total', 0)}"
                + (f", proxy CPU {res['proxy_cpu_us_per_txn']:.1f} µs/txn"
                   if res.get("proxy_cpu_us_per_txn") else ""))
            runs.setdefault(name, []).append(res)
            time.sleep(args.pause)
    return {"status": "done", "targets": {n: pick_median(r) for n, r in runs.items()}}


def run_stream(env, sc, args):
    rows = sc.params["result_rows"]
    runs = {}
    for rnd in range(args.rounds):
        for name in sc.targets:
            target = env.targets[("pg", name)]
            log(f"{sc.name} via {name} (round {rnd + 1}/{args.rounds}): COPY of {rows:,} rows")
            r = tools.run_stream(target, rows)
            log(f"  {r['bytes'] / 1e6:,.0f} MB in {r['seconds']:.2f} s = {r['mb_per_s']:,.0f} MB/s"
                + (f", proxy CPU {r['proxy_cpu_s']:.2f} s" if r["proxy_cpu_s"] is not None else ""))
            runs.setdefault(name, []).append(r)
            time.sleep(args.pause)
    out = {}
    for name, rs in runs.items():         # the median-throughput round
        ordered = sorted(rs, key=lambda r: r["mb_per_s"])
        out[name] = dict(ordered[(len(ordered) - 1) // 2], rounds_mb_per_s=[r["mb_per_s"] for r in rs])
    return out


def run_guarded(env, sc, args):
    """A scenario that fails is reported as failed; the run goes on."""
    try:
        return run_scenario(env, sc, args)
    except Exception as e:  # noqa: BLE001 - reported (and fails --smoke); the run goes on
        log(f"{sc.name}: failed: {e!r}\n{traceback.format_exc()}")
        return {"status": f"failed: {e!r}"}


def pg_backends(env, timeout=120):
    """Backends connected to the bench database. Retried: while thousands of
    backends start or exit, a new connection can time out."""
    def count():
        rows = env.pg.primary.query(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (tools.PG_DB,))
        return (rows[0][0],)      # a tuple, so that 0 counts as an answer
    return proc.wait_for(count, timeout=timeout, what="a count of PostgreSQL backends")[0]


def run_idle(env, sc):
    out = {}
    for name in sc.targets:
        try:
            out[name] = idle_one(env, sc, env.targets[("pg", name)])
        except (proc.HarnessError, TimeoutError) as e:
            log(f"  failed: {e}")
            out[name] = {"failed": str(e)}
    return out


def idle_one(env, sc, target):
    """RSS of target's proxy before and while sc.clients idle clients hold
    connections through it, and how many PostgreSQL backends they took."""
    proc.wait_for(lambda: pg_backends(env) < 100, timeout=120,
                  what="backends of the previous idle run to exit")
    before, backends_before = target.rss_kib(), pg_backends(env)
    log(f"{sc.name} via {target.name}: opening {sc.clients} idle connections")
    measure = lambda: (target.rss_kib(), pg_backends(env))  # noqa: E731
    ok, errs, (after, backends), raw = tools.hold_idle(target, sc.clients, measure)
    per = (after - before) / ok if ok else None
    log(f"  {ok} connected ({errs} errors) in {raw.get('connect_s', 0):.1f} s; "
        f"RSS {before} -> {after} KiB = {per or 0:.2f} KiB/conn; "
        f"server backends +{backends - backends_before}")
    return {"connected": ok, "errors": {"total": errs}, "rss_before_kib": before,
            "rss_after_kib": after, "rss_per_conn_kib": per,
            "baseline_rss_kib": env.baseline_rss.get(target.name),
            "server_backends": backends - backends_before, "raw": raw,
            "connect_s": raw.get("connect_s")}


# --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", metavar="scenario",
                    help=f"default: all but {', '.join(sorted(OPTIONAL))}; known: {', '.join(BY_NAME)}")
    ap.add_argument("--duration", type=float, default=10, help="seconds per run (default 10)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat each scenario, targets interleaved; the median-tps run is reported")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    ap.add_argument("--out", default=None, help="results dir (default bench/results/<timestamp>)")
    ap.add_argument("--smoke", action="store_true",
                    help="CI smoke: every scenario (unless named) against every target with tiny "
                         f"durations ({SMOKE['duration']:g} s) and counts; exits non-zero if a "
                         "scenario fails or yields no or malformed data. Never judges speed")
    args = ap.parse_args(argv)
    for name in args.scenarios:
        if name not in BY_NAME:
            ap.error(f"unknown scenario {name!r}; known: {', '.join(BY_NAME)}")
    if args.smoke:
        args.duration, args.pause, args.rounds = SMOKE["duration"], SMOKE["pause"], 1
        args.scenarios = args.scenarios or list(BY_NAME)
    args.scenarios = args.scenarios or DEFAULT
    return args


def raise_nofile():
    """2000 idle clients cost ferry and HAProxy two descriptors each; every
    child started from here inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
    except (ValueError, OSError):   # no CAP_SYS_RESOURCE: the hard limit is it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < 3 * IDLE_CLIENTS:
        log(f"warning: RLIMIT_NOFILE {soft} is low for {IDLE_CLIENTS} idle clients")


def main(argv):
    t_start = time.monotonic()
    args = parse_args(argv)
    proc.raise_on_termination_signals()
    raise_nofile()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = args.out or os.path.join(BENCH_DIR, "results", stamp)
    os.makedirs(os.path.join(outdir, "raw"), exist_ok=True)
    scenarios = [BY_NAME[n] for n in args.scenarios]
    if args.smoke:
        scenarios = [sc.for_smoke() for sc in scenarios]
    protocols = {p for s in scenarios for p in (s.protocol, *s.needs)
                 if p in ("pg", "mysql", "sink")}
    workdir = proc.make_tempdir("ferry-bench-")
    env = Env(protocols, workdir, smoke=args.smoke)
    meta = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": "bench/run " + " ".join(argv), "smoke": args.smoke,
            "duration_s": args.duration,
            "rounds": args.rounds, "workers": WORKERS, "pg_settings": PG_SETTINGS,
            "git": git_describe(), "ferry_source": os.environ.get("FERRY_SRC", "?")}
    results = {}
    try:
        env.start()
        meta["versions"] = env.versions()
        meta["loadavg_start"] = os.getloadavg()
        meta["baseline_rss_kib"] = env.baseline_rss
        for sc in scenarios:
            results[sc.name] = {"title": sc.title, "tool": sc.tool, "protocol": sc.protocol,
                                "clients": sc.clients, **run_guarded(env, sc, args)}
            save(outdir, meta, results)
    finally:
        env.stop()
    meta["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    meta["loadavg_end"] = os.getloadavg()
    save(outdir, meta, results)
    path = report.write(outdir, meta, results)
    log(f"report: {path}")
    if args.smoke:
        problems = smoke_problems(scenarios, results, path)
        elapsed = time.monotonic() - t_start
        for p in problems:
            log(f"smoke: FAIL: {p}")
        log(f"smoke: {len(scenarios)} scenarios in {elapsed:.0f} s: "
            + ("FAILED" if problems else "all ran and produced well-formed results"))
        return 1 if problems else 0
    return 0


# --------------------------------------------------------------------------
# --smoke: did every scenario run, and is what it produced well formed?

def _run_problems(name, target, r):
    """A timed tool run (pgbench, sysbench, loadgen) through one target."""
    out = []
    if r.get("exit_code", 0) != 0:
        out.append(f"{name} via {target}: tool exited {r['exit_code']}: "
                   f"{(r.get('stderr_tail') or '')[-300:]}")
    if not r.get("txns") or not r.get("tps"):
        out.append(f"{name} via {target}: no transactions")
    if not r.get("latency_us", {}).get("p50"):
        out.append(f"{name} via {target}: no latency data")
    if r.get("errors", {}).get("total"):
        # steady load through a healthy proxy: an error is a finding
        out.append(f"{name} via {target}: {r['errors']['total']} client errors: {r['errors']}")
    if r.get("acked_check", {}).get("lost"):
        out.append(f"{name} via {target}: lost acknowledged writes {r['acked_check']}")
    return out


def smoke_problems(scenarios, results, report_path):
    problems = []
    if not os.path.isfile(report_path) or os.path.getsize(report_path) < 200:
        problems.append(f"no report at {report_path}")
    for sc in scenarios:
        res = results.get(sc.name)
        if res is None:
            problems.append(f"{sc.name}: did not run")
            continue
        if res.get("status") != "done":
            problems.append(f"{sc.name}: {res.get('status')}")
            continue
        check = SMOKE_CHECKS.get(sc.tool)
        targets = res.get("targets", {})
        for t in sc.targets:
            r = targets.get(t)
            if not r:
                problems.append(f"{sc.name}: no result for target {t}")
            elif r.get("failed"):
                problems.append(f"{sc.name} via {t}: {r['failed']}")
            elif check:
                problems += check(sc.name, t, r)
    return problems


def _idle_problems(name, target, r):
    if r.get("connected", 0) <= 0 or r.get("rss_after_kib") is None:
        return [f"{name} via {target}: no connections or no RSS: {r}"]
    if r.get("errors", {}).get("total"):
        return [f"{name} via {target}: {r['errors']['total']} connect errors"]
    return []


def _drill_problems(name, target, r):
    out = []
    for kind in drill.KINDS:
        k = r.get(kind)
        if not k:
            out.append(f"{name} {kind} via {target}: no result")
            continue
        if not k.get("txns") or not k.get("series") or not k.get("events_in_timeline"):
            out.append(f"{name} {kind} via {target}: no load data")
        if k.get("window_ms") is None:
            out.append(f"{name} {kind} via {target}: no acknowledged write after the failover")
        if "lost" not in k.get("acked_check", {}):
            out.append(f"{name} {kind} via {target}: acknowledged writes not checked")
        if not k.get("idle_sessions", {}).get("sessions"):
            out.append(f"{name} {kind} via {target}: idle sessions not checked")
    return out


def _split_brain_problems(name, target, r):
    """The split-brain drill's figures are there and consistent (never how
    fast, nor how much was lost: those are findings for the report)."""
    kind = drill_common.SPLIT_BRAIN
    k = r.get(kind)
    if not k:
        return [f"{name} {kind} via {target}: no result"]
    out = []
    if not k.get("txns") or not k.get("series") or not k.get("events_in_timeline"):
        out.append(f"{name} via {target}: no load data")
    a, ls = k.get("acked_check", {}), k.get("lost_split", {})
    if "lost" not in a or not a.get("acked"):
        out.append(f"{name} via {target}: acknowledged writes not checked: {a}")
    elif ls.get("before_t0", 0) + ls.get("t0_to_switch", 0) + (ls.get("after_switch") or 0) \
            != a["lost"]:
        out.append(f"{name} via {target}: lost writes {a['lost']} but split {ls}")
    if not k.get("idle_sessions", {}).get("sessions"):
        out.append(f"{name} via {target}: idle sessions not checked")
    ow = k.get("old_writer", {})
    if "after_promotion" not in ow:
        out.append(f"{name} via {target}: the old writer's log not read")
    if target.startswith("ferry"):
        # ferry must follow the promotion and write there; when is the report's
        if k.get("switch_ms") is None or ls.get("after_switch") is None \
                or "after_switch" not in ow:
            out.append(f"{name} via {target}: ferry never switched to the promoted cluster "
                       f"(history: {k.get('switch_reason')})")
        if k.get("first_write_on_promoted_ms") is None:
            out.append(f"{name} via {target}: no acknowledged write on the promoted cluster")
    return out


def _profile_problems(name, target, r):
    out = []
    if not r.get("baseline", {}).get("txns"):
        out.append(f"{name}: pgbench through ferry ran no transactions")
    for tool in ("perf", "strace"):
        t = r.get(tool, {})
        if t.get("available") is False:
            if not t.get("why"):
                out.append(f"{name}: {tool} not available and no reason given")
        elif tool == "perf" and not t.get("top_symbols"):
            out.append(f"{name}: perf recorded no symbols")
        elif tool == "strace" and not t.get("calls_per_txn"):
            out.append(f"{name}: strace counted no system calls")
    return out


def _storm_problems(name, target, r):
    out = []
    st = r.get("storm", {})
    if not st.get("n") or sum(st.get("outcomes", {}).values()) != st["n"]:
        out.append(f"{name} via {target}: malformed storm result {st}")
    if not st.get("ok"):
        out.append(f"{name} via {target}: no storm connection succeeded: {st.get('outcomes')}")
    if not r.get("steady", {}).get("txns"):
        out.append(f"{name} via {target}: the steady session ran no transactions")
    return out


def _stream_problems(name, target, r):
    if r.get("exit_code") != 0 or r.get("bytes") != r.get("expected_bytes"):
        return [f"{name} via {target}: psql exited {r.get('exit_code')}, {r.get('bytes')} bytes "
                f"of {r.get('expected_bytes')}: {r.get('stderr_tail', '')[-300:]}"]
    return []


def _sink_idle_problems(name, target, r):
    out = _idle_problems(name, target, r)
    if len(r.get("points", [])) < 2:
        out.append(f"{name} via {target}: no RSS points")
    return out


SMOKE_CHECKS = {"pgbench": _run_problems, "sysbench": _run_problems, "loadgen": _run_problems,
                "idle": _idle_problems, "drill": _drill_problems, "drill_my": _drill_problems,
                "split_brain": _split_brain_problems, "split_brain_my": _split_brain_problems,
                "storm": _storm_problems, "stream": _stream_problems,
                "sink_idle": _sink_idle_problems, "pg_idle": _idle_problems,
                "profile": _profile_problems}


def git_describe():
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def save(outdir, meta, results):
    with open(os.path.join(outdir, "raw", "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
