"""Writes bench/results/<run>/report.md from the collected results: one
summary table of ratios, a table per scenario, the idle-memory table, and
gnuplot PNGs (throughput over time per target, latency CDF per target).
"""

import os
import subprocess

TARGET_ORDER = ("direct", "ferry", "haproxy", "pgbouncer")

NOISE_NOTE = (
    "Absolute numbers are noisy: on this shared 2-core machine the servers, the proxy and "
    "the load generator compete for the same CPUs, and absolute figures move 10-30 % between "
    "runs. Ratios between targets measured side by side in the same run are what count; the "
    "proxy's own CPU time per transaction (utime+stime from /proc/PID/stat around each run, "
    "10 ms tick resolution) is the steadiest figure.")


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(v):
    return f"{v:.2f} ×" if v else "–"


# -- plots ----------------------------------------------------------------------

def _write_series(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(" ".join(str(x) for x in row) + "\n")


def _gnuplot(script, cwd):
    try:
        r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True,
                           cwd=cwd, timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def plot_scenario(plotdir, name, title, targets):
    """(tps png, cdf png) file names relative to the report, None if not drawn."""
    datadir = os.path.join(plotdir, "data")
    os.makedirs(datadir, exist_ok=True)
    tps_lines, cdf_lines = [], []
    for t in TARGET_ORDER:
        res = targets.get(t)
        if not res:
            continue
        if res.get("intervals"):
            _write_series(os.path.join(datadir, f"{name}-{t}-tps.dat"), res["intervals"])
            tps_lines.append(f"'data/{name}-{t}-tps.dat' using 1:2 with linespoints title '{t}'")
        if res.get("cdf"):
            _write_series(os.path.join(datadir, f"{name}-{t}-cdf.dat"), res["cdf"])
            cdf_lines.append(f"'data/{name}-{t}-cdf.dat' using 1:2 with lines lw 2 title '{t}'")
    common = "set terminal pngcairo size 900,500 font ',10'\nset grid\nset key outside right\n"
    out = [None, None]
    if tps_lines and _gnuplot(
            common + f"set output '{name}-tps.png'\nset title \"{title}: throughput\"\n"
            "set xlabel 'seconds'\nset ylabel 'transactions per second'\nset yrange [0:*]\n"
            "plot " + ", ".join(tps_lines) + "\n", plotdir):
        out[0] = f"plots/{name}-tps.png"
    if cdf_lines and _gnuplot(
            common + f"set output '{name}-cdf.png'\nset title \"{title}: latency CDF\"\n"
            "set logscale x\nset xlabel 'latency (µs, log scale)'\nset ylabel 'fraction of transactions'\n"
            "set yrange [0:1]\nset key bottom right\nplot " + ", ".join(cdf_lines) + "\n", plotdir):
        out[1] = f"plots/{name}-cdf.png"
    return out


# -- tables ---------------------------------------------------------------------

def scenario_table(targets):
    direct, hap = targets.get("direct", {}), targets.get("haproxy", {})
    lines = ["| target | tps | × direct | × HAProxy | p50 µs | p90 µs | p99 µs | p99.9 µs "
             "| errors | proxy CPU µs/txn | CPU × HAProxy | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in TARGET_ORDER:
        r = targets.get(t)
        if not r:
            continue
        lat = r.get("latency_us", {})
        cpu = r.get("proxy_cpu_us_per_txn")
        rounds = r.get("rounds_tps", [])
        tps = fmt(r["tps"]) + (f" ({fmt(min(rounds))}–{fmt(max(rounds))})" if len(rounds) > 1 else "")
        lines.append(
            f"| {t} | {tps} | {fmt_ratio(ratio(r['tps'], direct.get('tps')))} "
            f"| {fmt_ratio(ratio(r['tps'], hap.get('tps')))} | {fmt(lat.get('p50'))} "
            f"| {fmt(lat.get('p90'))} | {fmt(lat.get('p99'))} | {fmt(lat.get('p999'))} "
            f"| {errors_text(r)} | {fmt(cpu, 1)} "
            f"| {fmt_ratio(ratio(cpu, hap.get('proxy_cpu_us_per_txn')))} "
            f"| {fmt(r.get('load1_before'), 1)} |")
    return lines


def errors_text(r):
    e = r.get("errors", {})
    total = e.get("total", 0)
    if not total:
        return "0"
    parts = [f"{k} {v}" for k, v in (("connect", e.get("connect")), ("lost", e.get("lost"))) if v]
    parts += [f"SQLSTATE {k}xxx {v}" for k, v in e.get("sqlstate_class", {}).items()]
    return f"{total} ({', '.join(parts)})" if parts else str(total)


def acked_lines(targets):
    rows = [(t, targets[t]["acked_check"]) for t in TARGET_ORDER
            if t in targets and targets[t].get("acked_check")]
    if not rows:
        return []
    out = ["", "Acknowledged writes checked against the primary afterwards:", "",
           "| target | acknowledged | found | lost | COMMIT outcome unknown |", "|---|---:|---:|---:|---:|"]
    for t, a in rows:
        unknown = targets[t].get("raw", {}).get("commit_unknown", 0)
        out.append(f"| {t} | {a['acked']:,} | {a['found']:,} | {a['lost']:,} | {unknown} |")
    return out


def idle_table(targets):
    lines = ["| proxy | connected | errors | connect time s | RSS empty KiB | RSS before KiB "
             "| RSS with clients KiB | KiB per client | server backends held |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in TARGET_ORDER:
        r = targets.get(t)
        if r and r.get("failed"):
            lines.append(f"| {t} | failed: {r['failed'][:200]} |||||||||")
        elif r:
            lines.append(
                f"| {t} | {r['connected']:,} | {r['errors']['total']} | {fmt(r.get('connect_s'), 1)} "
                f"| {fmt(r.get('baseline_rss_kib'))} | {fmt(r['rss_before_kib'])} "
                f"| {fmt(r['rss_after_kib'])} | {fmt(r['rss_per_conn_kib'], 2)} "
                f"| {r['server_backends']:,} |")
    return lines


def summary_table(results):
    lines = ["| scenario | ferry × direct | HAProxy × direct | PgBouncer × direct | ferry × HAProxy "
             "| proxy CPU µs/txn: ferry / HAProxy / PgBouncer | ferry CPU × HAProxy |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for name, sc in results.items():
        tg = sc.get("targets")
        if sc.get("status") != "done" or sc["tool"] == "idle" or not tg:
            continue
        tps = {t: tg[t]["tps"] for t in tg}
        cpu = {t: tg[t].get("proxy_cpu_us_per_txn") for t in tg}
        lines.append(
            f"| {name} | {fmt_ratio(ratio(tps.get('ferry'), tps.get('direct')))} "
            f"| {fmt_ratio(ratio(tps.get('haproxy'), tps.get('direct')))} "
            f"| {fmt_ratio(ratio(tps.get('pgbouncer'), tps.get('direct')))} "
            f"| {fmt_ratio(ratio(tps.get('ferry'), tps.get('haproxy')))} "
            f"| {fmt(cpu.get('ferry'), 1)} / {fmt(cpu.get('haproxy'), 1)} / {fmt(cpu.get('pgbouncer'), 1)} "
            f"| {fmt_ratio(ratio(cpu.get('ferry'), cpu.get('haproxy')))} |")
    return lines


# -- the document -----------------------------------------------------------------

def short_version(text):
    """'HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://...' -> 'HAProxy 2.6.12-1+deb12u4':
    the first word and the first word that starts with a digit"""
    words = text.split()
    number = next((w for w in words[1:] if w[:1].isdigit()), "")
    return f"{words[0]} {number}".strip() if words else "?"


def header(meta):
    v = {k: short_version(x) if isinstance(x, str) else x
         for k, x in meta.get("versions", {}).items()}
    load = [meta.get("loadavg_start"), meta.get("loadavg_end")]
    load_text = " → ".join("/".join(f"{x:.1f}" for x in l) for l in load if l)
    return [
        f"# ferry bench report, {meta['started']}", "",
        f"- command: `{meta['command']}` ({meta['duration_s']:g} s per run, "
        f"{meta['rounds']} round(s); with several rounds the median-tps run is shown, range in brackets)",
        f"- ferry: git {meta['git']}, built from {meta.get('ferry_source', '?')}, Release, "
        f"workers = {meta['workers']}; "
        f"{v.get('haproxy', '?')} in TCP mode with nbthread {meta['workers']}; "
        f"{v.get('pgbouncer', '?')} in session mode, which is single-threaded "
        "(one process, one CPU at most)",
        f"- servers: {v.get('postgres', '?')} and {v.get('mariadb', '?')}, from the test harness, "
        f"extra PostgreSQL settings {meta['pg_settings']}; all on 127.0.0.1",
        f"- machine: {v.get('cpus', '?')} CPUs, Linux {v.get('kernel', '?')}, load average "
        f"(1/5/15 min) {load_text} (the `load avg` column is the 1-minute figure as each run "
        f"started); fork+exec of /bin/true takes {fmt(v.get('fork_exec_ms'), 1)} ms here, and "
        "PostgreSQL forks a process per connection, which bounds every connect-per-transaction figure",
        f"- load tools: {v.get('pgbench', '?')}, {v.get('sysbench', '?')}, bench/loadgen", "",
        f"> {NOISE_NOTE}", ""]


def scenario_section(outdir, name, sc):
    lines = [f"## {name}: {sc['title']}", ""]
    if sc.get("status") != "done":
        return lines + [f"Not run: {sc.get('status')}.", ""]
    if sc["tool"] == "idle":
        return lines + idle_table(sc["targets"]) + [
            "", "RSS of the proxy process before and while holding the connections; "
            "for ferry and HAProxy every client also holds a PostgreSQL backend, PgBouncer "
            "gives idle clients none.", ""]
    lines += scenario_table(sc["targets"]) + acked_lines(sc["targets"]) + [""]
    tps_png, cdf_png = plot_scenario(os.path.join(outdir, "plots"), name, name, sc["targets"])
    lines += [f"![{alt}]({p})" for alt, p in (("throughput", tps_png), ("latency CDF", cdf_png))
              if p] + [""]
    return lines


def not_done_section():
    return ["## Not measured yet", "",
            "- `failover_drill` is a stub: once writer discovery and failover land it will "
            "run loadgen `rw` and `select` through each target while the primary is switched "
            "over (planned) and crashed, for PostgreSQL and MariaDB, and report the "
            "unavailability window, client errors by class, lost acknowledged writes and "
            "statements that reached the old writer.",
            "- Not yet: 10,000 idle connections against a protocol sink, connection storms, "
            "1 GB result streaming, the DNS-switch comparison, perf profiles.", ""]


def write(outdir, meta, results):
    os.makedirs(os.path.join(outdir, "plots"), exist_ok=True)
    lines = header(meta) + ["## Summary", ""] + summary_table(results) + [
        "", "tps ratios are target tps / reference tps in the same run; CPU is the proxy "
        "process's own CPU time divided by the transactions it carried.", ""]
    for name, sc in results.items():
        lines += scenario_section(outdir, name, sc)
    lines += not_done_section() + ["Raw data: `raw/results.json` (every run, with the "
                                   "tools' command lines and output tails).", ""]
    path = os.path.join(outdir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


if __name__ == "__main__":
    import json
    import sys
    with open(os.path.join(sys.argv[1], "raw", "results.json")) as f:
        data = json.load(f)
    print(write(sys.argv[1], data["meta"], data["results"]))
