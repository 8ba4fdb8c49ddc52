"""Profile of ferry under pgbench select-only (32 clients), in two passes on
the shared PostgreSQL primary, through ferry's static listener:

1. `perf record -g` attached to the ferry process for the run (software
   clock event at 999 Hz; hardware counters are usually not available in a
   VM): the top symbols by self time, the split by shared object (kernel,
   ferry, libc, libuv), and the time inside each system call (the libc
   entry point's share with its children: the kernel's call chains are
   complete). ferry is a Release build without frame pointers, so its own
   call chains are partial; the self-time figures are not affected.
2. `strace -c -f` attached to every ferry thread for a second, shorter run:
   system calls per transaction, by call. strace slows ferry a lot, so that
   pass's throughput means nothing; the count per transaction does.

If perf cannot record (perf_event_paranoid, no perf binary, a sandbox), the
first pass says why and the report still carries the strace pass and
ferry's CPU time per transaction from /proc.
"""

import os
import re
import shutil
import signal
import subprocess
import time

from harness import proc

import tools

PERF_FREQ = 999
TOP_SYMBOLS = 25


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _pgbench_argv(target, clients, duration):
    return [tools.PGBENCH, "-h", target.host, "-p", str(target.port), "-U", tools.PG_USER, "-n",
            "-S", "-c", str(clients), "-j", "2", "-T", str(max(1, int(duration))), tools.PG_DB]


def _pgbench(target, clients, duration):
    out, err, code = tools.run_tool(_pgbench_argv(target, clients, duration), duration + 120,
                                    "pgbench (profile)")
    txns = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    if code != 0 or not txns:
        raise proc.HarnessError(f"pgbench (profile) exited {code}: {err[-500:]}")
    return int(txns.group(1)), float(tps.group(1)) if tps else 0.0


def _attach(argv, what):
    """Starts a tracer attached to a running process; returns its Popen."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(0.5)                       # attached (or failed) by now
    if p.poll() is not None:
        _, err = p.communicate()
        raise proc.HarnessError(f"{what} exited {p.returncode}: {err.strip()[-400:]}")
    return p


def _detach(p, what, timeout=120):
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise proc.HarnessError(f"{what} did not stop after SIGINT")
    return err


# -- perf -----------------------------------------------------------------------

# "  44.25%  [kernel.kallsyms]  [k] pvm_irq_enable   -   -" (perf 6 adds IPC columns)
PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[([.k])\]\s+(\S+)")
PERF_DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)")
# --children: "  61.88%   6.73%  [.] __GI___libc_write   -   -"
PERF_CHILDREN_LINE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)%\s+\[([.k])\]\s+(\S+)")
# the system-call entry points in libc (user side of each call; with --children
# their share includes the kernel work of the call, all of its TCP stack)
SYSCALL_ENTRIES = {"__GI___libc_write": "write", "__libc_write": "write", "write": "write",
                   "read": "read", "__GI___libc_read": "read", "__libc_read": "read",
                   "epoll_ctl": "epoll_ctl", "epoll_wait": "epoll_wait",
                   "epoll_pwait": "epoll_wait", "__GI___writev": "writev", "writev": "writev",
                   "__libc_recvmsg": "recvmsg", "__libc_sendmsg": "sendmsg",
                   "accept4": "accept4", "setsockopt": "setsockopt", "close": "close",
                   "__close": "close", "__GI___close": "close"}


def _perf_report(perf, data, sort, limit, children=False):
    argv = [perf, "report", "-i", data, "--stdio", "--children" if children else "--no-children",
            "-g", "none", "--sort", sort, "--percent-limit", str(limit)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise proc.HarnessError(f"perf report exited {r.returncode}: {r.stderr[-400:]}")
    return [line for line in r.stdout.splitlines() if line.strip() and not line.startswith("#")]


def _perf_callers(perf, data):
    """For the top kernel symbols: which ferry functions led there, from the
    (partial) frame-pointer call chains: perf report -G (caller graph)."""
    argv = [perf, "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol",
            "-g", "caller,0.5,callee,function,percent", "--percent-limit", "3"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return r.stdout[-12000:] if r.returncode == 0 else ""


def perf_pass(target, clients, duration, workdir):
    perf = shutil.which("perf")
    if not perf:
        return {"available": False, "why": "no perf binary (apt package linux-perf)"}
    data = os.path.join(workdir, "perf-ferry.data")
    argv = [perf, "record", "-g", "-F", str(PERF_FREQ), "-p", str(target.pid), "-o", data]
    try:
        rec = _attach(argv, "perf record")
    except proc.HarnessError as e:
        paranoid = "?"
        try:
            with open("/proc/sys/kernel/perf_event_paranoid") as f:
                paranoid = f.read().strip()
        except OSError:
            pass
        return {"available": False, "why": f"{e} (perf_event_paranoid = {paranoid})"}
    cpu0 = target.cpu_seconds()
    try:
        txns, tps = _pgbench(target, clients, duration)
    finally:
        err = _detach(rec, "perf record")
    cpu = target.cpu_seconds() - cpu0
    samples = re.search(r"\((\d+) samples\)", err)
    symbols = []
    for line in _perf_report(perf, data, "dso,symbol", 0.3)[:TOP_SYMBOLS * 2]:
        m = PERF_LINE.match(line)
        if m:
            symbols.append({"percent": float(m.group(1)), "dso": m.group(2),
                            "kernel": m.group(3) == "k", "symbol": m.group(4)})
    dsos = []
    for line in _perf_report(perf, data, "dso", 0.5):
        m = PERF_DSO_LINE.match(line)
        if m:
            dsos.append({"percent": float(m.group(1)), "dso": m.group(2)})
    # inclusive time per system call, from the libc entry points' children
    # (kernel call chains are complete; ferry's own frames are not)
    by_call = {}
    for line in _perf_report(perf, data, "symbol", 0.2, children=True):
        m = PERF_CHILDREN_LINE.match(line)
        if m and m.group(3) == "." and m.group(4) in SYSCALL_ENTRIES:
            call = SYSCALL_ENTRIES[m.group(4)]
            by_call[call] = by_call.get(call, 0.0) + float(m.group(1))
    syscalls = sorted(({"syscall": k, "percent": v} for k, v in by_call.items()),
                      key=lambda x: -x["percent"])
    callers = _perf_callers(perf, data)
    with open(os.path.join(workdir, "perf-callers.txt"), "w") as f:
        f.write(callers)
    return {"available": True, "argv": argv, "txns": txns, "tps": tps, "cpu_s": cpu,
            "cpu_us_per_txn": cpu * 1e6 / txns if txns else None,
            "samples": int(samples.group(1)) if samples else None,
            "top_symbols": symbols[:TOP_SYMBOLS], "by_dso": dsos, "by_syscall": syscalls,
            "callers_excerpt": callers[:6000]}


# -- strace -----------------------------------------------------------------------

STRACE_LINE = re.compile(r"^\s*([\d.]+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def strace_pass(target, clients, duration, workdir):
    strace = shutil.which("strace")
    if not strace:
        return {"available": False, "why": "no strace binary"}
    out_path = os.path.join(workdir, "strace-ferry.txt")
    argv = [strace, "-c", "-f", "-p", str(target.pid), "-o", out_path]
    try:
        tr = _attach(argv, "strace")
    except proc.HarnessError as e:
        return {"available": False, "why": str(e)}
    try:
        txns, tps = _pgbench(target, clients, duration)
    finally:
        _detach(tr, "strace")
    calls = []
    total = None
    with open(out_path) as f:
        for line in f:
            m = STRACE_LINE.match(line)
            if not m:
                continue
            row = {"syscall": m.group(6), "calls": int(m.group(4)),
                   "errors": int(m.group(5) or 0), "time_percent": float(m.group(1))}
            if row["syscall"] == "total":
                total = row
            else:
                calls.append(row)
    calls.sort(key=lambda r: -r["calls"])
    for r in calls:
        r["per_txn"] = r["calls"] / txns if txns else None
    return {"available": True, "argv": argv, "txns": txns, "tps_under_strace": tps,
            "duration_s": duration,
            "calls_per_txn": total["calls"] / txns if total and txns else None,
            "syscalls": calls[:15]}


def _attempt(profiler_pass, *args):
    """profiler_pass(*args), or why it could not run: {"available": False, "why": ...}"""
    try:
        return profiler_pass(*args)
    except (proc.HarnessError, OSError, subprocess.SubprocessError) as e:
        return {"available": False, "why": str(e)}


def run_profile(env, sc, duration):
    target = env.targets[("pg", "ferry")]
    clients = sc.clients
    log(f"{sc.name}: pgbench -S, {clients} clients, {duration:g} s through ferry under perf record")
    cpu0 = target.cpu_seconds()
    base_txns, base_tps = _pgbench(target, clients, duration)
    base_cpu = target.cpu_seconds() - cpu0
    log(f"  without a profiler: {base_tps:.0f} tps, ferry CPU {base_cpu * 1e6 / base_txns:.1f} µs/txn")
    res = {"clients": clients, "duration_s": duration,
           "baseline": {"txns": base_txns, "tps": base_tps, "cpu_s": base_cpu,
                        "cpu_us_per_txn": base_cpu * 1e6 / base_txns if base_txns else None}}
    res["perf"] = p = _attempt(perf_pass, target, clients, duration, env.workdir)
    log("  perf: " + (f"{p['tps']:.0f} tps under perf, {p.get('samples')} samples; top: "
                      + ", ".join(f"{s['symbol']} {s['percent']:.1f}%"
                                  for s in p["top_symbols"][:5])
                      if p.get("available") else f"not available: {p['why']}"))
    short = max(1.0, duration / 2)
    res["strace"] = s = _attempt(strace_pass, target, clients, short, env.workdir)
    log("  strace: " + (f"{s['calls_per_txn']:.2f} syscalls per transaction: "
                        + ", ".join(f"{r['syscall']} {r['per_txn']:.2f}" for r in s["syscalls"][:5])
                        if s.get("available") and s.get("calls_per_txn") else
                        f"not available: {s.get('why', 'no data')}"))
    return res
