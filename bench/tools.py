"""Runs one load tool against one target and returns a uniform result dict:
tps, txns, latency percentiles (µs), errors, per-second throughput and a
latency CDF. Tools: pgbench, sysbench, ferry's loadgen (timed and idle).
Also the check of loadgen's acknowledged writes (--acked) against a server.
"""

import json
import math
import os
import re
import select
import subprocess
import time

from harness import proc

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
LOADGEN = os.path.join(BENCH_DIR, "build", "loadgen")
PGSINK = os.path.join(BENCH_DIR, "build", "pgsink")
PGSTORM = os.path.join(BENCH_DIR, "build", "pgstorm")
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PSQL = "/usr/lib/postgresql/15/bin/psql"
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}

PG_USER = PG_DB = "bench"
MY_USER, MY_PASSWORD, MY_DB = "ferry_test", "ferry_pw", "app"


def dsn(target):
    if target.protocol == "pg":
        db = getattr(target, "dbname", None) or PG_DB
        return f"host={target.host} port={target.port} user={PG_USER} dbname={db} connect_timeout=5"
    return (f"host={target.host} port={target.port} user={MY_USER} password={MY_PASSWORD} "
            f"dbname={MY_DB}")


def count_acked(acked_path, count_found):
    """How many of the write ids in a loadgen --acked file a server has:
    count_found(ids) counts those of a chunk of ids it finds."""
    with open(acked_path) as f:
        ids = [int(line) for line in f if line.strip()]
    found = 0
    for i in range(0, len(ids), 5000):
        found += count_found(ids[i:i + 5000])
    return {"acked": len(ids), "found": found, "lost": len(ids) - found}


def run_tool(argv, timeout, what):
    """Runs argv to completion; (stdout, stderr, exit code). Never raises on a
    non-zero exit: a tool that fails under load is a result, not a crash."""
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=timeout, env=proc.clean_env())
    except subprocess.TimeoutExpired as e:
        raise proc.HarnessError(f"{what} did not finish in {timeout}s") from e
    return res.stdout, res.stderr, res.returncode


# -- latency summaries --------------------------------------------------------

def summary_from_sorted(lat_us):
    """Percentiles and a ~220-point CDF from sorted latencies (µs)."""
    n = len(lat_us)
    if n == 0:
        return {"latency_us": {}, "cdf": []}
    pick = lambda q: lat_us[min(n - 1, max(0, math.ceil(q * n) - 1))]  # noqa: E731
    lat = {k: pick(q) for k, q in QUANTILES.items()}
    lat.update(mean=sum(lat_us) / n, min=lat_us[0], max=lat_us[-1])
    qs = [i / 200 for i in range(1, 200)] + [0.995, 0.999, 0.9995, 0.9999, 1.0]
    return {"latency_us": lat, "cdf": [[pick(q), q] for q in qs]}


def summary_from_buckets(buckets):
    """Percentiles and CDF from [[lower, upper, count], ...] (µs), each bucket
    taken at its midpoint."""
    n = sum(b[2] for b in buckets)
    if n == 0:
        return {"latency_us": {}, "cdf": []}
    cdf, seen = [], 0
    for lower, upper, count in buckets:
        seen += count
        cdf.append([(lower + upper) / 2, seen / n])
    lat = {}
    for key, q in QUANTILES.items():
        lat[key] = next(x for x, frac in cdf if frac >= q - 1e-12)
    lat.update(mean=sum((b[0] + b[1]) / 2 * b[2] for b in buckets) / n,
               min=cdf[0][0], max=cdf[-1][0])
    return {"latency_us": lat, "cdf": cdf}


def intervals_from_cumulative(points):
    """[(t, txns in the interval ending at t)] -> [[t, tps]]"""
    out, prev_t = [], 0.0
    for t, txns in points:
        if t > prev_t:
            out.append([round(t, 3), txns / (t - prev_t)])
        prev_t = t
    return out


# -- pgbench ------------------------------------------------------------------

PROGRESS = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps")


def read_pgbench_logs(prefix):
    """Latencies (µs) from pgbench -l files PREFIX.<pid>[.<thread>]; the files
    are removed afterwards. Failed or skipped transactions have no latency."""
    d, base = os.path.split(prefix)
    lat = []
    for name in os.listdir(d):
        if not name.startswith(base + "."):
            continue
        path = os.path.join(d, name)
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        os.remove(path)
    lat.sort()
    return lat


def run_pgbench(sc, target, duration, workdir):
    prefix = os.path.join(workdir, f"pgbench-{sc.name}-{target.name}")
    argv = [PGBENCH, "-h", target.host, "-p", str(target.port), "-U", PG_USER, "-n",
            *sc.args, "-c", str(sc.clients), "-j", "2", "-T", str(int(duration)),
            "-P", "1", "-l", f"--log-prefix={prefix}", PG_DB]
    out, err, code = run_tool(argv, duration + 120, f"pgbench {sc.name} via {target.name}")
    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    txns = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    aborted = len(re.findall(r"aborted", err))
    res = {"tool": "pgbench", "argv": argv, "exit_code": code,
           "tps": float(tps.group(1)) if tps else 0.0,
           "txns": int(txns.group(1)) if txns else 0,
           "errors": {"total": (int(failed.group(1)) if failed else 0) + aborted,
                      "aborted_clients": aborted},
           "intervals": [[float(t), float(v)] for t, v in PROGRESS.findall(err)],
           "stdout": out[-3000:], "stderr_tail": err[-1500:]}
    res.update(summary_from_sorted(read_pgbench_logs(prefix)))
    return res


# -- sysbench -----------------------------------------------------------------

SB_INTERVAL = re.compile(r"^\[ (\d+)s \] thds: \d+ tps: ([\d.]+)", re.M)
SB_HIST = re.compile(r"^\s*([\d.]+) \|\**\s+(\d+)$", re.M)


def sysbench_argv(test, target, threads, duration, command):
    return ["sysbench", test, "--db-driver=mysql", f"--mysql-host={target.host}",
            f"--mysql-port={target.port}", f"--mysql-user={MY_USER}",
            f"--mysql-password={MY_PASSWORD}", f"--mysql-db={MY_DB}", "--tables=1",
            "--table-size=10000", f"--threads={threads}", f"--time={int(duration)}",
            "--report-interval=1", "--histogram=on", command]


def run_sysbench(sc, target, duration, workdir):
    argv = sysbench_argv(sc.args[0], target, sc.clients, duration, "run")
    out, err, code = run_tool(argv, duration + 120, f"sysbench {sc.name} via {target.name}")
    txns = re.search(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec", out)
    errors = re.search(r"ignored errors:\s+(\d+)", out)
    res = {"tool": "sysbench", "argv": argv, "exit_code": code,
           "tps": float(txns.group(2)) if txns else 0.0,
           "txns": int(txns.group(1)) if txns else 0,
           "errors": {"total": int(errors.group(1)) if errors else 0},
           "intervals": [[float(t), float(v)] for t, v in SB_INTERVAL.findall(out)],
           "stdout": out[-3000:], "stderr_tail": err[-1500:]}
    # sysbench's histogram rows are (latency ms, count); treat each as a bucket
    rows = [(float(v) * 1000, int(n)) for v, n in SB_HIST.findall(out)]
    res.update(summary_from_buckets([[v, v, n] for v, n in rows]))
    return res


# -- loadgen ------------------------------------------------------------------

def loadgen_argv(target, *more):
    return [LOADGEN, "--driver", target.protocol, "--dsn", dsn(target), *more]


def run_loadgen(sc, target, duration, workdir):
    tag = f"{sc.name}-{target.name}"
    out_path = os.path.join(workdir, f"loadgen-{tag}.json")
    argv = loadgen_argv(target, *sc.args, "--clients", str(sc.clients),
                        "--duration", str(duration), "--out", out_path, "--label", tag)
    if sc.params.get("rows"):
        argv += ["--rows", str(sc.params["rows"])]
    acked = None
    if "rw" in sc.args:
        acked = os.path.join(workdir, f"acked-{tag}.txt")
        argv += ["--acked", acked]
    _, err, code = run_tool(argv, duration + 120, f"loadgen {tag}")
    if code != 0:
        raise proc.HarnessError(f"loadgen {tag} exited {code}: {err}")
    with open(out_path) as f:
        raw = json.load(f)
    res = {"tool": "loadgen", "argv": argv, "exit_code": code, "tps": raw["tps"],
           "txns": raw["txns"], "errors": raw["errors"], "raw": raw, "acked_file": acked,
           "intervals": intervals_from_cumulative([(i["t"], i["txns"]) for i in raw["intervals"]])}
    res.update(summary_from_buckets(raw["histogram_us"]))
    res["latency_us"].update({k: raw["latency_us"][k] for k in QUANTILES})   # loadgen's own
    return res


# -- large result streaming -----------------------------------------------------

def run_stream(target, rows, timeout=600):
    """psql runs COPY (SELECT repeat('x', 1000) FROM generate_series(1, rows))
    TO STDOUT through target; we read its output (1001 bytes a row) and time
    it. Returns bytes, seconds, MB/s and the proxy's CPU seconds."""
    sql = f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {int(rows)})) TO STDOUT"
    argv = [PSQL, "-X", "-q", "-h", target.host, "-p", str(target.port), "-U", PG_USER,
            "-d", PG_DB, "-c", sql]
    cpu0 = target.cpu_seconds()
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=proc.clean_env())
    nbytes = 0
    try:
        fd = p.stdout.fileno()
        while True:
            if time.monotonic() - t0 > timeout:
                raise proc.HarnessError(f"psql COPY via {target.name}: over {timeout} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            nbytes += len(chunk)
        err = p.stderr.read().decode("utf-8", "replace")
        code = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    secs = time.monotonic() - t0
    cpu = target.cpu_seconds() - cpu0 if cpu0 is not None else None
    return {"argv": argv, "exit_code": code, "stderr_tail": err[-1500:], "bytes": nbytes,
            "expected_bytes": int(rows) * 1001, "seconds": secs,
            "mb_per_s": nbytes / 1e6 / secs if secs > 0 else 0.0, "proxy_cpu_s": cpu,
            "proxy_cpu_s_per_gb": cpu * 1e9 / nbytes if cpu is not None and nbytes else None}


def _read_line(p, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([p.stdout], [], [], 0.5)
        if ready:
            return p.stdout.readline()
        if p.poll() is not None:
            break
    return ""


def hold_idle(target, clients, measure, timeout=180):
    """Opens clients idle connections through target with loadgen, calls
    measure() while they are all open, then closes them. Returns (connected,
    errors, measure's value, loadgen's JSON)."""
    argv = loadgen_argv(target, "--mode", "idle", "--clients", str(clients), "--hold", "600")
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=proc.clean_env())
    try:
        line = _read_line(p, timeout).split()
        if len(line) != 3 or line[0] != "ready":
            raise proc.HarnessError(f"loadgen idle via {target.name}: no ready line ({line})")
        time.sleep(1.0)                 # let the proxy settle after the last connect
        value = measure()
        p.stdin.close()
        out = p.stdout.read()
        p.wait(60)
        return int(line[1]), int(line[2]), value, json.loads(out)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
