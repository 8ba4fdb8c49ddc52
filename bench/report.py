"""Writes bench/results/<run>/report.md from the collected results: one
summary table of ratios, a table per scenario, the idle-memory table, and
gnuplot PNGs (throughput over time per target, latency CDF per target).
"""

import datetime
import os
import subprocess

TARGET_ORDER = ("direct", "ferry", "haproxy", "pgbouncer")
DRILL_TARGETS = ("ferry", "ferry_terminated", "libpq", "dns")
MY_DRILL_TARGETS = ("ferry", "ferry_terminated")
SPLIT_TARGETS = {"split_brain": ("ferry", "ferry_terminated", "ferry_aws", "libpq"),
                 "split_brain_my": ("ferry", "ferry_terminated", "ferry_aws", "direct")}
RUN_TOOLS = ("pgbench", "sysbench", "loadgen")     # timed runs with tps and latency
PROFILE_FREQ = 999                                  # bench/profiling.py PERF_FREQ

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
    common = "set terminal pngcairo size 900,500 font ',10' noenhanced\nset grid\nset key outside right\n"
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


def plot_drill(plotdir, kind, targets, names=DRILL_TARGETS, prefix="drill"):
    """Acknowledged transactions and errors per second through a failover,
    one line per target, t = 0 when the failure is injected."""
    datadir = os.path.join(plotdir, "data")
    os.makedirs(datadir, exist_ok=True)
    ack, err = [], []
    for t in names:
        series = targets.get(t, {}).get(kind, {}).get("series")
        if not series:
            continue
        name = f"{prefix}-{kind}-{t}.dat"
        _write_series(os.path.join(datadir, name), series)
        ack.append(f"'data/{name}' using 1:2 with lines lw 2 title '{t}'")
        err.append(f"'data/{name}' using 1:3 with lines lw 2 title '{t}'")
    if not ack:
        return None
    png = f"{prefix}-{kind}.png"
    script = ("set terminal pngcairo size 900,650 font ',10' noenhanced\n"
              f"set output '{png}'\nset grid\nset key outside right\n"
              "set multiplot layout 2,1\n"
              f"set title \"{prefix} ({kind}): acknowledged transactions\"\n"
              "set ylabel 'per second (100 ms bins)'\nset yrange [0:*]\n"
              "set arrow 1 from 0, graph 0 to 0, graph 1 nohead dt 2\n"
              "plot " + ", ".join(ack) + "\n"
              f"set title \"{prefix} ({kind}): client errors\"\n"
              "set xlabel 'seconds since the failure (t0)'\n"
              "plot " + ", ".join(err) + "\nunset multiplot\n")
    return f"plots/{png}" if _gnuplot(script, plotdir) else None


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
                f"| {fmt(r.get('baseline_rss_kib', r.get('rss_empty_kib')))} "
                f"| {fmt(r['rss_before_kib'])} "
                f"| {fmt(r['rss_after_kib'])} | {fmt(r['rss_per_conn_kib'], 2)} "
                f"| {r['server_backends']:,} |")
    return lines


def summary_table(results):
    if not any(sc.get("status") == "done" and sc["tool"] in RUN_TOOLS for sc in results.values()):
        return ["(no throughput scenario in this run)"]
    lines = ["| scenario | ferry × direct | HAProxy × direct | PgBouncer × direct | ferry × HAProxy "
             "| proxy CPU µs/txn: ferry / HAProxy / PgBouncer | ferry CPU × HAProxy |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for name, sc in results.items():
        tg = sc.get("targets")
        if sc.get("status") != "done" or sc["tool"] not in RUN_TOOLS or not tg:
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


def key_figures(results):
    """One line per non-tps scenario: the figure the issue sets a target for,
    ferry's next to the others measured in the same run."""
    out = []
    for name, sc in results.items():
        tg = sc.get("targets") or {}
        if sc.get("status") != "done":
            continue
        if sc["tool"] == "drill":
            for kind in ("planned", "crash"):
                rs = {t: tg.get(t, {}).get(kind, {}) for t in DRILL_TARGETS if t in tg}
                lw = rs.get("libpq", {}).get("window_ms")
                dw = rs.get("dns", {}).get("window_ms")
                parts = []
                for t, r in rs.items():
                    w, idle = r.get("window_ms"), r.get("idle_sessions", {})
                    rel = ([f"{fmt_ratio(ratio(w, lw))} libpq"] if t not in ("libpq", "dns") else []) + \
                          ([f"{fmt_ratio(ratio(w, dw))} DNS"] if t.startswith("ferry") else [])
                    parts.append(f"{t} {fmt(w)} ms" + (f" ({', '.join(rel)})" if rel else "")
                                 + f", lost {r.get('acked_check', {}).get('lost', '–')}"
                                 + _idle_fine(idle))
                out.append(f"- {name} {kind}: unavailability window " + "; ".join(parts))
        elif sc["tool"] == "drill_my":
            for kind, t, r in _my_drill_results(tg):
                resumed, limit = r.get("resumed_after_promotion_ms"), _limit_ms(r)
                out.append(f"- {name} {kind}: {t} window {fmt(r.get('window_ms'))} ms, writes "
                           f"resumed {fmt(resumed)} ms after the promotion (target ≤ "
                           f"{limit:,.0f} ms: {'met' if resumed is not None and resumed <= limit else 'NOT met'}), "
                           f"lost {r.get('acked_check', {}).get('lost', '–')}, statements to the old "
                           f"writer after the promotion "
                           f"{r.get('old_writer', {}).get('after_promotion', {}).get('statements', '–')}"
                           + _idle_fine(r.get("idle_sessions", {})))
        elif sc["tool"] in SPLIT_TARGETS:
            parts = []
            for t in SPLIT_TARGETS[sc["tool"]]:
                r = tg.get(t, {}).get("split_brain")
                if not r:
                    continue
                ls = r.get("lost_split", {})
                parts.append(
                    f"{t}: switch {_signed(r.get('switch_ms'))}, first write on the promoted "
                    f"cluster {_signed(r.get('first_write_on_promoted_ms'))}, lost "
                    f"{r.get('acked_check', {}).get('lost', '–')} (after the switch "
                    f"{fmt(ls.get('after_switch'))})")
            out.append(f"- {name} (ms after the promotion): " + "; ".join(parts))
        elif sc["tool"] == "profile":
            r = tg.get("ferry", {})
            p, st = r.get("perf", {}), r.get("strace", {})
            top = ", ".join(f"{x['symbol']} {x['percent']:.1f} %" for x in p.get("top_symbols", [])[:4])
            out.append(f"- {name}: ferry {fmt(r.get('baseline', {}).get('cpu_us_per_txn'), 1)} CPU µs "
                       f"per transaction; " + (f"perf top self time: {top}" if p.get("available")
                                               else f"perf not available ({p.get('why')})")
                       + (f"; {st['calls_per_txn']:.2f} system calls per transaction"
                          if st.get("calls_per_txn") else ""))
        elif sc["tool"] == "storm":
            parts = [f"{t} {r['storm']['ok']:,}/{r['storm']['n']:,} ok in {r['storm']['drain_s']:.2f} s, "
                     f"steady-session stall {r['steady']['max_gap_during_ms']:.0f} ms"
                     for t in TARGET_ORDER if (r := tg.get(t)) and not r.get("failed")]
            out.append(f"- {name}: " + "; ".join(parts))
        elif sc["tool"] == "stream":
            d = tg.get("direct", {}).get("mb_per_s")
            parts = [f"{t} {r['mb_per_s']:,.0f} MB/s ({fmt_ratio(ratio(r['mb_per_s'], d))} direct)"
                     for t in TARGET_ORDER if (r := tg.get(t))]
            out.append(f"- {name}: " + "; ".join(parts))
        elif sc["tool"] in ("idle", "sink_idle", "pg_idle"):
            parts = [f"{t} {r['rss_per_conn_kib']:.2f} KiB per connection ({r['connected']:,})"
                     for t in TARGET_ORDER
                     if (r := tg.get(t)) and r.get("rss_per_conn_kib") is not None]
            out.append(f"- {name}: " + "; ".join(parts))
    return (["Other scenarios, in brief:", ""] + out + [""]) if out else []


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
    smoke = (["> **Smoke run** (`--smoke`): tiny durations and counts, to prove the harness "
              "works end to end. Its numbers mean nothing.", ""] if meta.get("smoke") else [])
    return [
        f"# ferry bench report, {meta['started']}", "", *smoke,
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


def _errors_by_class(e):
    parts = [f"{k} {e[k]}" for k in ("connect", "lost") if e.get(k)]
    parts += [f"{k} {v}" for k, v in e.get("sqlstate", {}).items()]
    parts += [f"{k} {v}" for k, v in e.get("codes", {}).items()]
    return ", ".join(parts) or "none"


def _since_t0(at, t0_unix):
    """ferry's history time ("2026-11-26T04:21:57.231Z") as "+N ms" after t0"""
    if not at or t0_unix is None:
        return ""
    try:
        t = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return ""
    return f"{(t - t0_unix) * 1000:+,.0f} ms "


def _my_drill_results(tg):
    """(kind, target, result) of each MariaDB drill that ran, planned first"""
    for kind in ("planned", "crash"):
        for t in MY_DRILL_TARGETS:
            r = tg.get(t, {}).get(kind)
            if r:
                yield kind, t, r


def _limit_ms(r):
    """the issue's target for writes to resume after the promotion: ferry's
    detection time + 1 s, in ms"""
    return (r["detection_s"] + 1) * 1000


def _goal_text(resumed, limit):
    return f"{'met' if resumed <= limit else 'NOT met'} (≤ {limit:,.0f} ms)"


def _idle_text(idle):
    """a drill's idle sessions for a table cell: fine/all (errors by class)"""
    if not idle:
        return "–"
    return f"{idle['ok']}/{idle['sessions']}" + (
        " (" + ", ".join(f"{k} {v}" for k, v in idle["errors"].items()) + ")"
        if idle.get("errors") else "")


def _idle_fine(idle):
    """a drill's idle sessions for a key-figures line"""
    return f", idle sessions fine {idle['ok']}/{idle['sessions']}" if idle else ""


def drill_section(outdir, sc):
    d = sc.get("discovery", {})
    p = sc.get("params", {})
    lines = [
        f"{p.get('clients', '?')} loadgen `rw` clients per target for {p.get('before_s', '?')} s "
        f"before and {p.get('after_s', '?')} s after t0 (the failure), both targets at once on "
        "the same servers. ferry: a discovered listener over both servers "
        f"(probe_interval {d.get('probe_interval')} s, writer_down_after "
        f"{d.get('writer_down_after')}), with passthrough authentication (`ferry`) and with "
        "terminated authentication (`ferry_terminated`: ferry logs sessions into the new "
        "writer itself, so idle ones move); libpq: `host=A,B target_session_attrs=read-write`; "
        f"dns: a client that reaches the writer through a DNS name cached for "
        f"{fmt(p.get('dns_ttl'), 0)} s (below). "
        f"Each target also holds {p.get('idle', '?')} idle sessions across the failover and "
        "runs one statement on each afterwards. "
        "Clients back off 10..100 ms after an error and reconnect after 25006/57P0x.", "",
        "The DNS-based client (`dns`) models a Route53 failover record: loadgen `--dns-file` "
        "resolves the DSN's host name from a file (`NAME HOST:PORT`) and caches the answer for "
        f"the TTL ({fmt(p.get('dns_ttl'), 0)} s) for the whole process, as a JVM's "
        "InetAddress cache or a caching stub resolver does; only a connect made after the TTL "
        "reads the file again. The drill rewrites the file the moment the replica is promoted, "
        "the earliest a Route53 health check could flip the record. **Not included**: "
        "Route53's own detection (health checks every 30 s by default, 3 failures before the "
        "record flips, so about 90 s, or 30 s with fast 10 s checks) and resolver propagation; "
        "the ratio below is therefore generous to DNS. The load ran "
        f"{p.get('before_s', '?')} s before t0, longer than the TTL, so the cached answer had "
        "expired at t0 (a pool whose connections outlived the TTL): the first reconnect after "
        "t0 looked the name up again, before the record flipped, and kept that answer for a "
        "whole TTL.", "",
        "- planned: t0 the writer turns read-only; in-flight write transactions end; the replica "
        "catches up and is promoted; the old writer is stopped (fast).",
        "- crash: t0 `kill -9` of the writer's postmaster and backends; the replica is promoted "
        "at once. Replication is asynchronous, so a write acknowledged just before the crash "
        "can be missing on the new writer whichever the client path.", "",
        "| drill | target | window ms | × libpq | × DNS | resumed ms after the promotion "
        "| target: resumed ≤ detection + 1 s | errors by class "
        "| acked writes | lost | COMMIT unknown | old writer: statements (errors) after the "
        "failure / after the promotion | idle sessions fine afterwards |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|"]
    tg = sc["targets"]
    for kind in ("planned", "crash"):
        ref = tg.get("libpq", {}).get(kind, {}).get("window_ms")
        dref = tg.get("dns", {}).get(kind, {}).get("window_ms")
        for t in DRILL_TARGETS:
            r = tg.get(t, {}).get(kind)
            if not r:
                continue
            w = r.get("window_ms")
            resumed = r.get("resumed_after_promotion_ms")
            goal = (_goal_text(resumed, _limit_ms(r))
                    if t.startswith("ferry") and resumed is not None else "–")
            ow = r.get("old_writer", {})
            fa, ap = ow.get("after_failure", {}), ow.get("after_promotion", {})
            a = r.get("acked_check", {})
            lines.append(
                f"| {kind} | {t} | {fmt(w) if w is not None else 'no recovery'} "
                f"| {fmt_ratio(ratio(w, ref)) if t != 'libpq' else '1.00 ×'} "
                f"| {fmt_ratio(ratio(w, dref)) if t != 'dns' else '1.00 ×'} "
                f"| {fmt(resumed)} | {goal} "
                f"| {r['errors'].get('total', 0)}: {_errors_by_class(r['errors'])} "
                f"| {a.get('acked', 0):,} | {a.get('lost', '–')} | {r.get('commit_unknown', 0)} "
                f"| {fa.get('statements', 0)} ({fa.get('errors', 0)}) / "
                f"{ap.get('statements', 0)} ({ap.get('errors', 0)}) "
                f"| {_idle_text(r.get('idle_sessions', {}))} |")
    lines.append("")
    for kind in ("planned", "crash"):
        d = tg.get("dns", {}).get(kind, {}).get("dns")
        if not d:
            continue
        looks = ", ".join(f"+{t:,} ms → {a}" for t, a in d.get("lookups_after_t0", [])[:6])
        age = d.get("cached_age_at_t0_ms")
        lines.append(
            f"- dns, {kind}: at t0 the cache held {d.get('cached_at_t0')} (looked up "
            f"{fmt(age)} ms before t0, TTL {fmt(d.get('ttl_s') * 1000)} ms: "
            f"{'expired' if age is not None and age >= d['ttl_s'] * 1000 else 'still fresh'}); "
            f"record flipped at +{fmt(d.get('flipped_ms'))} ms; lookups after t0: {looks or 'none'}; "
            f"first answer with the new writer at +{fmt(d.get('first_new_answer_ms'))} ms")
    lines.append("")
    for kind, info in sc.get("drills", {}).items():
        ev = ", ".join(f"{k} +{v * 1000:.0f} ms" for k, v in info.get("events", {}).items())
        hist = "; ".join(f"{_since_t0(h.get('at'), info.get('t0_unix'))}"
                         f"{h.get('from')} → {h.get('to')} ({h.get('reason')})"
                         for h in info.get("ferry_history", [])
                         if h.get("listener") == "drill" and h.get("from") != "none"
                         or h.get("listener") == "drill" and h.get("to") != "region-a")
        lines.append(f"- {kind}: {ev}. ferry's writer changes: {hist or 'none'}")
    lines += ["", "The window is the longest gap between consecutive acknowledged transactions "
              "(all clients of the target merged) that ends after t0; it includes the time the "
              "drill itself takes to promote the replica (events above), the same for every "
              "target. *Resumed after the promotion* is the first acknowledged write after the "
              "gap minus the moment the drill saw the promotion complete (it polls, so a "
              "fast client can come out slightly negative): what the client path adds; "
              "ferry's target compares it with its detection time (one probe interval for a "
              "read-only writer, writer_down_after intervals for a dead one) + 1 s. "
              "Ferry's writer changes are those of the passthrough listener (the terminated one "
              "sees the same). Statements to the old "
              "writer come from its log (`log_statement = mod`, each target logs in as its "
              "own role): INSERT/UPDATE it received, and errors it raised, at or after the "
              "moment it stopped being writable (read-only or killed) / after the replica's "
              "promotion.", ""]
    for kind in ("planned", "crash"):
        png = plot_drill(os.path.join(outdir, "plots"), kind, tg)
        if png:
            lines += [f"![failover drill {kind}]({png})", ""]
    return lines


def drill_my_section(outdir, sc):
    d = sc.get("discovery", {})
    p = sc.get("params", {})
    lines = [
        f"{p.get('clients', '?')} loadgen `rw` clients over the MySQL protocol (BEGIN, INSERT, "
        f"UPDATE, COMMIT as text queries) for {p.get('before_s', '?')} s before and "
        f"{p.get('after_s', '?')} s after t0 per target, through two MySQL listeners of one "
        "ferry, discovered over a MariaDB primary and its GTID replica (probe_interval "
        f"{d.get('probe_interval')} s, writer_down_after {d.get('writer_down_after')}): "
        "`ferry` with passthrough authentication (idle sessions are fenced: their next "
        "command gets 1053) and `ferry_terminated` with terminated authentication (ferry "
        "logs in itself and moves idle sessions to the new writer); both targets at once, "
        f"each with {p.get('idle', '?')} idle "
        "sessions that run one statement afterwards. MySQL has no client-side multi-host "
        "failover like libpq's, so there is no reference client: the target is the issue's, "
        "writes resuming within the detection time (one probe interval for a writer that "
        "turns read-only, probe_interval × writer_down_after for one that is gone) + 1 s of "
        "the promotion. Errors are classed by MySQL error number (`my1290` read-only, "
        "`my1053` writer moved, `my1213` transaction lost); `lost` and `connect` are "
        "client-side (2000-range) errors.", "",
        "- planned: t0 `SET GLOBAL read_only = 1` on the writer; the replica catches up "
        "(`MASTER_GTID_WAIT` of the old writer's `gtid_binlog_pos`) and is promoted "
        "(`STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0`); the old writer is stopped.",
        "- crash: t0 `kill -9` of the writer; the replica is promoted at once.", "",
        "| drill | target | window ms | promoted at ms | resumed ms after the promotion "
        "| target: resumed ≤ detection + 1 s | errors by class | acked writes | lost "
        "| COMMIT unknown | old writer: statements (writes) after t0 / after it stopped being "
        "writable / after the promotion | idle sessions fine afterwards |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|---|---|"]
    tgs = sc["targets"]
    for kind, t, r in _my_drill_results(tgs):
        resumed = r.get("resumed_after_promotion_ms")
        goal = _goal_text(resumed, _limit_ms(r)) if resumed is not None else "no recovery"
        ow = r.get("old_writer", {})
        cells = " / ".join(f"{ow.get(k, {}).get('statements', 0)} ({ow.get(k, {}).get('writes', 0)})"
                           for k in ("after_t0", "after_failure", "after_promotion"))
        a = r.get("acked_check", {})
        w = r.get("window_ms")
        lines.append(
            f"| {kind} | {t} | {fmt(w) if w is not None else 'no recovery'} | {fmt(r.get('promoted_ms'))} "
            f"| {fmt(resumed)} | {goal} "
            f"| {r['errors'].get('total', 0)}: {_errors_by_class(r['errors'])} "
            f"| {a.get('acked', 0):,} | {a.get('lost', '–')} | {r.get('commit_unknown', 0)} "
            f"| {cells} | {_idle_text(r.get('idle_sessions', {}))} |")
    lines.append("")
    for kind in ("planned", "crash"):
        r = tgs.get("ferry", {}).get(kind)
        if not r:
            continue
        moved = tgs.get("ferry_terminated", {}).get(kind, {}).get("ferry_sessions")
        ev = ", ".join(f"{k} +{v * 1000:.0f} ms" for k, v in r.get("events", {}).items())
        hist = "; ".join(f"{_since_t0(h.get('at'), r.get('t0_unix'))}{h.get('from')} → "
                         f"{h.get('to')} ({h.get('reason')})" for h in r.get("ferry_history", [])[1:])
        lines.append(f"- {kind}: {ev}. ferry's writer changes (passthrough listener): "
                     f"{hist or 'none'}" + (f"; sessions moved by the terminated listener: "
                                             f"{moved.get('moved')}, failed moves "
                                             f"{moved.get('move_failed')}" if moved else ""))
    lines += ["", "Window, *resumed after the promotion* and the idle sessions as in the "
              "PostgreSQL drill. Statements to the old writer come from its general log "
              "(`log_output = TABLE`, read from the CSV file, µs timestamps): the drill user's "
              "queries, and of them INSERT/UPDATE, at or after t0 (some arrive before "
              "`read_only` takes effect and commit normally), after the moment `read_only` "
              "returned or the writer was killed, and after the promotion. The general log "
              "records statements as they arrive, also those the server then refused.", ""]
    for kind in ("planned", "crash"):
        png = plot_drill(os.path.join(outdir, "plots"), kind, sc["targets"],
                         names=MY_DRILL_TARGETS, prefix="drill-mysql")
        if png:
            lines += [f"![MariaDB failover drill {kind}]({png})", ""]
    return lines


def _signed(v):
    return f"{v:+,.0f} ms" if v is not None else "never"


def _t0_ms(sc, names):
    """the promotion call relative to the moment the promoted cluster took writes"""
    for t in names:
        v = sc["targets"].get(t, {}).get("split_brain", {}).get("t0_ms")
        if v is not None:
            return v
    return None


def split_brain_section(outdir, sc):
    """the split-brain drill (PostgreSQL or MariaDB)"""
    d, p, a = sc.get("discovery", {}), sc.get("params", {}), sc.get("aws", {})
    mysql = sc["tool"] == "split_brain_my"
    names = SPLIT_TARGETS[sc["tool"]]
    anchor = names[-1]
    info = sc.get("drills", {}).get("split_brain", {})
    goal = (d.get("probe_interval", 0) + 0.1) * 1000
    lines = [
        f"{p.get('clients', '?')} loadgen `rw` clients per target for {p.get('before_s', '?')} s "
        f"before and {p.get('after_s', '?')} s after t0, all targets at once on the same "
        "servers, each with " + f"{p.get('idle', '?')} idle sessions. At t0 the replica is "
        "promoted (" + ("`STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0`" if mysql
                        else "`pg_ctl promote`") + ") and nothing else: the old writer stays "
        "up and writable (a split brain; still writable at the end: "
        f"{info.get('old_writer_writable_at_end')}). ferry: discovery over both servers "
        f"(probe_interval {d.get('probe_interval')} s); `ferry` passthrough, "
        "`ferry_terminated` terminated auth, `ferry_aws` passthrough with AWS signals from the "
        f"fake AWS endpoint (DescribeGlobalClusters every {a.get('poll_interval')} s), which "
        "names the promoted cluster writer the moment the drill sees the promotion complete. "
        + ("`direct`: a client of the old writer's address, the anchor (no MySQL client has "
           "multi-host failover): what an application does without ferry."
           if mysql else
           "`libpq`: `host=A,B target_session_attrs=read-write`, the anchor: libpq has no "
           "reason to leave a primary that still accepts writes, so it keeps writing there, "
           "which is what a split brain does without ferry. The DNS client is left out: a "
           "Route53 health check of the old writer still passes, so the record would not "
           "flip."), "",
        "Times are ms after the promoted cluster took writes (" + (
            "`read_only = 0` returned" if mysql else "its log's \"archive recovery "
            "complete\", the end of recovery, just before it takes writes") + "; t0, the promotion call, "
        f"was {_signed(_t0_ms(sc, names))}). *Switch*: ferry's "
        "/v1/status history entry for the change to the promoted cluster. *First write on the "
        "promoted cluster*: the first acknowledged write that the promoted cluster has and the "
        "old writer has not (what both have was replicated before the split), when its "
        "client got the acknowledgement (in brackets: the time the promoted cluster stamped "
        "on the row, its `at` column: " + ("the INSERT's start" if mysql else
                                            "`now()`, the transaction's start")
        + f"); the goal is one probe interval + 100 ms = {goal:,.0f} ms. *Lost*: acknowledged "
        "writes missing on the promoted cluster, by when they were acknowledged (loadgen's "
        "timeline names each id): before t0 (replication had not shipped them: lost on any "
        "path), from t0 to ferry's switch (the detection window), after the switch (ferry's "
        "promise: zero; in brackets those more than 50 ms after it, the tolerance of "
        "`tests/integration/test_split_brain.py` for the hop from discovery to the workers, "
        "and the latest). *Old writer*: the target role's statements the old writer logged "
        + ("(general log, µs)" if mysql else
           "(server log with `log_statement = all` in this drill, so BEGIN and COMMIT count; ms)")
        + " after the promotion / after ferry's switch / more than 50 ms after it.", "",
        "| target | switch | first write on the promoted cluster | goal | acked (after t0) "
        "| lost: total | before t0 | t0 → switch | after switch (> 50 ms; latest) | old writer: after "
        "promotion / switch / switch + 50 ms | errors by class | idle sessions fine |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|"]
    for t in names:
        r = sc["targets"].get(t, {}).get("split_brain")
        if not r:
            continue
        ls, ac, ow = r.get("lost_split", {}), r.get("acked_check", {}), r.get("old_writer", {})
        first = r.get("first_write_on_promoted_ms")
        met = ("–" if not t.startswith("ferry") else "never" if first is None else
               "met" if first <= goal else "NOT met")
        late = ls.get("after_switch")
        owc = " / ".join(fmt(ow[k]["statements"]) if k in ow else "–"
                         for k in ("after_promotion", "after_switch", "after_switch_50ms"))
        row = r.get("first_write_on_promoted_row_ms")
        lines.append(
            f"| {t} | {_signed(r.get('switch_ms'))} | {_signed(first)}"
            + (f" (row {_signed(row)})" if row is not None else "") + f" | {met} "
            f"| {fmt(ac.get('acked'))} ({fmt(r.get('acked_after_t0'))}) | {fmt(ac.get('lost'))} "
            f"| {fmt(ls.get('before_t0'))} | {fmt(ls.get('t0_to_switch'))} "
            f"| {fmt(late)}" + (f" ({fmt(ls.get('after_switch_50ms'))}; "
                                f"{_signed(ls.get('after_switch_latest_ms'))})" if late else "") +
            f" | {owc} | {r['errors'].get('total', 0)}: {_errors_by_class(r['errors'])} "
            f"| {_idle_text(r.get('idle_sessions', {}))} |")
    ev = ", ".join(f"{k} +{v * 1000:.0f} ms" for k, v in info.get("events", {}).items())
    hist = "; ".join(f"{_since_t0(h.get('at'), info.get('t0_unix'))}{h.get('listener')}: "
                     f"{h.get('from')} → {h.get('to')} ({h.get('reason')})"
                     for h in info.get("ferry_history", []) if h.get("from") != "none")
    for t in names:
        first = (sc["targets"].get(t, {}).get("split_brain", {}).get("old_writer", {})
                 .get("after_switch", {}).get("first"))
        if first:
            lines.append(f"- {t}: first statements the old writer logged after ferry's switch: "
                         + "; ".join(f"`{x}`" for x in first))
    aws = sc["targets"].get("ferry_aws", {}).get("split_brain", {}).get("aws", {})
    counters = aws.get("counters") or {}
    lines += ["", f"- events after t0: {ev}. ferry's writer changes: {hist or 'none'}",
              f"- ferry_aws: AWS roles at the end {aws.get('roles')}; DescribeGlobalClusters ok "
              f"{counters.get('describe_global_clusters_ok_total')}, errors "
              f"{counters.get('describe_global_clusters_errors_total')}", ""]
    png = plot_drill(os.path.join(outdir, "plots"), "split_brain", sc["targets"], names=names,
                     prefix="split-brain-mysql" if mysql else "split-brain")
    if png:
        lines += [f"![split-brain drill]({png})", ""]
    return lines


def pg_idle_section(sc, results):
    lines = idle_table(sc["targets"])
    st = sc.get("settings", {})
    lines += ["", f"Each proxy is a fresh process (RSS empty = before any client), in front of "
              f"its own PostgreSQL 15 ({', '.join(f'{k} {v}' for k, v in st.items())}); "
              "each idle client holds a PostgreSQL backend through ferry and HAProxy, none "
              "through PgBouncer (session mode gives a client a server connection at its first "
              "query).", ""]
    rows = []
    for name, label in (("idle_pg_1000", "real PostgreSQL backends (this scenario)"),
                        ("idle_memory", "real PostgreSQL backends (idle_memory)"),
                        ("idle_sink", "bench/pgsink sessions (idle_sink)")):
        other = results.get(name, {})
        if other.get("status") != "done":
            continue
        tg = other.get("targets", {})
        n = max((r.get("connected", 0) for r in tg.values() if isinstance(r, dict)), default=0)
        rows.append(f"| {label} | {n:,} | " + " | ".join(
            fmt(tg.get(t, {}).get("rss_per_conn_kib"), 2) for t in ("ferry", "haproxy", "pgbouncer"))
            + " |")
    if len(rows) > 1:
        lines += ["KiB of proxy RSS per idle client+backend pair, side by side (same run):", "",
                  "| backends | pairs | ferry | HAProxy | PgBouncer |", "|---|---:|---:|---:|---:|",
                  *rows, ""]
    return lines


def profile_section(outdir, sc):
    r = sc["targets"].get("ferry", {})
    b, p, st = r.get("baseline", {}), r.get("perf", {}), r.get("strace", {})
    lines = [f"pgbench select-only, {r.get('clients', '?')} clients, {fmt(r.get('duration_s'), 0)} s "
             "per pass, through ferry's static listener to the shared primary.", "",
             f"- without a profiler: {fmt(b.get('tps'))} tps, ferry CPU "
             f"{fmt(b.get('cpu_us_per_txn'), 1)} µs per transaction"]
    if p.get("available"):
        lines += [f"- under `perf record -g -F {PROFILE_FREQ}` (software cpu-clock event): "
                  f"{fmt(p.get('tps'))} tps, {fmt(p.get('samples'))} samples, ferry CPU "
                  f"{fmt(p.get('cpu_us_per_txn'), 1)} µs per transaction", "",
                  "Where ferry's CPU time goes, by shared object (self time):", "",
                  "| share | object |", "|---:|---|"]
        lines += [f"| {x['percent']:.1f} % | {x['dso']} |" for x in p.get("by_dso", [])]
        if p.get("by_syscall"):
            lines += ["", "Inside system calls (the libc entry point with everything below it, "
                      "kernel TCP stack included; on loopback a write also runs the receiver's "
                      "TCP processing and wakes it):", "", "| share | system call |", "|---:|---|"]
            lines += [f"| {x['percent']:.1f} % | {x['syscall']} |" for x in p["by_syscall"]]
        lines += ["", "Top symbols by self time (`[k]` kernel):", "",
                  "| share | object | symbol |", "|---:|---|---|"]
        lines += [f"| {x['percent']:.2f} % | {x['dso']} | {'[k] ' if x['kernel'] else ''}"
                  f"{x['symbol']} |" for x in p.get("top_symbols", [])]
        lines += ["", "ferry is a Release build without frame pointers, so call chains are "
                  "partial; caller graphs: `perf-callers.txt` in the run's work directory and "
                  "`raw/results.json`.", ""]
    else:
        lines += [f"- perf: not available: {p.get('why')}; the CPU figures above come from "
                  "/proc/PID/stat.", ""]
    if st.get("available") and st.get("calls_per_txn"):
        lines += [f"System calls (`strace -c -f` attached to every ferry thread, a "
                  f"{fmt(st.get('duration_s'), 0)} s pass; strace slows ferry, so the "
                  f"{fmt(st.get('tps_under_strace'))} tps of that pass mean nothing): "
                  f"**{st['calls_per_txn']:.2f} system calls per transaction**.", "",
                  "| system call | calls | per transaction | errors |", "|---|---:|---:|---:|"]
        lines += [f"| {x['syscall']} | {x['calls']:,} | {x['per_txn']:.3f} | {x['errors']:,} |"
                  for x in st.get("syscalls", [])]
        lines.append("")
    else:
        lines += [f"strace: not available: {st.get('why', 'no data')}", ""]
    return lines


def storm_section(sc):
    tg = sc["targets"]
    ref = tg.get("haproxy", {}).get("storm", {}).get("drain_s")
    lines = ["| target | ok | outcomes | attempts/s | drain s | × HAProxy | peak open "
             "| connect ms p50 / p99 / max | ready ms p50 / p99 | proxy CPU µs/conn "
             "| steady: longest gap ms before → during | steady tps before → during "
             "| steady errors | proxy RSS KiB before → after |",
             "|---|---:|---|---:|---:|---:|---:|---|---|---:|---|---|---:|---|"]
    for t in TARGET_ORDER:
        r = tg.get(t)
        if not r:
            continue
        if r.get("failed"):
            lines.append(f"| {t} | failed: {r['failed'][:200]} |||||||||||||")
            continue
        st, sd = r["storm"], r["steady"]
        c, rd = st.get("connect_ms", {}), st.get("ready_ms", {})
        outcomes = ", ".join(f"{k} {v:,}" for k, v in st["outcomes"].items())
        cover = "" if sd.get("covered_storm") else " (steady run ended before the drain)"
        lines.append(
            f"| {t} | {st['ok']:,} / {st['n']:,} | {outcomes} | {fmt(st.get('attempt_rate_per_s'))} "
            f"| {fmt(st['drain_s'], 2)} | {fmt_ratio(ratio(st['drain_s'], ref))} | {st['peak_open']:,} "
            f"| {fmt(c.get('p50'), 1)} / {fmt(c.get('p99'), 1)} / {fmt(c.get('max'), 1)} "
            f"| {fmt(rd.get('p50'), 1)} / {fmt(rd.get('p99'), 1)} "
            f"| {fmt(r.get('proxy_cpu_us_per_conn'), 1)} "
            f"| {fmt(sd['max_gap_before_ms'], 1)} → {fmt(sd['max_gap_during_ms'], 1)}{cover} "
            f"| {fmt(sd['tps_before'])} → {fmt(sd['tps_during'])} "
            f"| {sd['errors'].get('total', 0)} "
            f"| {fmt(r.get('proxy_rss_before_kib'))} → {fmt(r.get('proxy_rss_after_kib'))} |")
    return lines + [
        "", "`direct` is the storm straight to the sink (and the steady clients straight to "
        "PostgreSQL): what the client and the sink manage without a proxy. Drain: from the "
        "first connect attempt to the last connection done. Connect: TCP connect; ready: "
        "the first ReadyForQuery after the startup packet (both as pgstorm saw them, on the "
        "same CPUs). The steady session's longest gap between acknowledged transactions "
        "during the storm is the stall an existing session saw; before: the same over the "
        "0.8 s before the storm.", ""]


def stream_section(sc):
    tg = sc["targets"]
    d, h = tg.get("direct", {}).get("mb_per_s"), tg.get("haproxy", {}).get("mb_per_s")
    lines = ["| target | bytes | seconds | MB/s | × direct | × HAProxy | proxy CPU s per GB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in TARGET_ORDER:
        r = tg.get(t)
        if not r:
            continue
        rounds = r.get("rounds_mb_per_s", [])
        mb = fmt(r["mb_per_s"]) + (f" ({fmt(min(rounds))}–{fmt(max(rounds))})"
                                   if len(rounds) > 1 else "")
        lines.append(f"| {t} | {r['bytes']:,} | {fmt(r['seconds'], 2)} | {mb} "
                     f"| {fmt_ratio(ratio(r['mb_per_s'], d))} | {fmt_ratio(ratio(r['mb_per_s'], h))} "
                     f"| {fmt(r.get('proxy_cpu_s_per_gb'), 2)} |")
    return lines + ["", "psql writes the COPY data to a pipe the harness reads and counts; "
                    "PostgreSQL generating the rows, psql, the proxy and the reader share the "
                    "CPUs.", ""]


def plot_rss(plotdir, name, targets):
    datadir = os.path.join(plotdir, "data")
    os.makedirs(datadir, exist_ok=True)
    lines = []
    for t in TARGET_ORDER:
        pts = targets.get(t, {}).get("points")
        if not pts:
            continue
        _write_series(os.path.join(datadir, f"{name}-{t}-rss.dat"),
                      [[n, rss / 1024] for n, rss, _ in pts])
        lines.append(f"'data/{name}-{t}-rss.dat' using 1:2 with linespoints lw 2 title '{t}'")
    if not lines:
        return None
    script = ("set terminal pngcairo size 900,500 font ',10' noenhanced\nset grid\nset key outside right\n"
              f"set output '{name}-rss.png'\nset title \"{name}: proxy RSS against idle "
              "connections\"\nset xlabel 'idle client connections'\n"
              "set ylabel 'RSS (MiB)'\nset yrange [0:*]\nplot " + ", ".join(lines) + "\n")
    return f"plots/{name}-rss.png" if _gnuplot(script, plotdir) else None


def sink_idle_section(outdir, name, sc):
    lines = idle_table(sc["targets"])
    cap = sc.get("fd_cap_pairs")
    lines += ["", "RSS of the proxy process before and while holding the connections, each "
              "with a backend session on bench/pgsink (PgBouncer gives idle clients none). "
              f"At most {cap:,} pairs: the hard RLIMIT_NOFILE here cannot be raised and ferry "
              "and HAProxy need two descriptors per pair." if cap else "", ""]
    png = plot_rss(os.path.join(outdir, "plots"), name, sc["targets"])
    return lines + ([f"![RSS against connections]({png})", ""] if png else [])


def scenario_section(outdir, name, sc, results=None):
    lines = [f"## {name}: {sc['title']}", ""]
    if sc.get("status") != "done":
        return lines + [f"Not run: {sc.get('status')}.", ""]
    if sc["tool"] == "storm":
        return lines + storm_section(sc)
    if sc["tool"] == "stream":
        return lines + stream_section(sc)
    if sc["tool"] == "sink_idle":
        return lines + sink_idle_section(outdir, name, sc)
    if sc["tool"] == "drill":
        return lines + drill_section(outdir, sc)
    if sc["tool"] == "drill_my":
        return lines + drill_my_section(outdir, sc)
    if sc["tool"] in SPLIT_TARGETS:
        return lines + split_brain_section(outdir, sc)
    if sc["tool"] == "pg_idle":
        return lines + pg_idle_section(sc, results or {})
    if sc["tool"] == "profile":
        return [f"## Profile ({name}): {sc['title']}", ""] + profile_section(outdir, sc)
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
            "- The DNS comparison leaves out Route53's own health-check delay and resolver "
            "propagation (see the failover drill); MySQL has no multi-host client to compare "
            "ferry's MariaDB drill with; the profile is of the PostgreSQL select path only.", ""]


def write(outdir, meta, results):
    os.makedirs(os.path.join(outdir, "plots"), exist_ok=True)
    lines = header(meta) + ["## Summary", ""] + summary_table(results) + [
        "", "tps ratios are target tps / reference tps in the same run; CPU is the proxy "
        "process's own CPU time divided by the transactions it carried.", ""] + key_figures(results)
    for name, sc in results.items():
        lines += scenario_section(outdir, name, sc, results)
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
