"""The proxies ferry is measured against, run like the harness runs servers:
HAProxy (TCP mode) and PgBouncer (session mode) on free ports in a temp dir,
with no per-connection logging, plus what every target shares: its address,
and for a proxy its process's CPU seconds and resident memory from /proc.
"""

import os
import resource
import shutil
import subprocess

from harness import proc
from harness.ports import HOST, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid):
    """utime + stime of pid (all its threads) in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14 and 15 of stat


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise proc.HarnessError(f"no VmRSS for pid {pid}")


class Target:
    """Where a load generator connects: a database directly or a proxy in
    front of it. pid is None for a direct target (no proxy to measure)."""

    def __init__(self, name, protocol, host, port, pid=None, note="", dbname=None):
        self.name, self.protocol, self.host, self.port = name, protocol, host, port
        self.pid, self.note = pid, note
        self.dbname = dbname        # None: the bench database

    def __repr__(self):
        return f"<Target {self.name} {self.protocol} {self.host}:{self.port}>"

    def cpu_seconds(self):
        return proc_cpu_seconds(self.pid) if self.pid else None

    def rss_kib(self):
        return proc_rss_kib(self.pid) if self.pid else None


HAPROXY_CFG = """\
global
    nbthread {threads}
    maxconn {maxconn}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
"""

HAPROXY_PROXY = """\
listen {name}
    bind {host}:{port}
    server primary {backend_host}:{backend_port}
"""


class HAProxy:
    """haproxy -db (foreground) in TCP mode with nbthread threads and one
    `listen` section per backend; no logging at all."""

    def __init__(self, tmpdir, backends, threads):
        """backends: {name: (host, port)} -> one listener each on a free port."""
        self.ports = {name: free_port() for name in backends}
        # each connection costs two descriptors; stay inside our RLIMIT_NOFILE
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        text = HAPROXY_CFG.format(threads=threads, maxconn=min(40000, (nofile - 200) // 2))
        for name, (bhost, bport) in backends.items():
            text += HAPROXY_PROXY.format(name=name, host=HOST, port=self.ports[name],
                                         backend_host=bhost, backend_port=bport)
        self.cfg = os.path.join(tmpdir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write(text)
        self.log_path = os.path.join(tmpdir, "haproxy.log")
        self.proc = None

    def start(self):
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.proc = proc.Proc([exe, "-db", "-f", self.cfg], self.log_path)
        for port in self.ports.values():
            proc.wait_port(HOST, port, proc=self.proc, what=f"haproxy on {port}")
        return self

    def stop(self):
        if self.proc:
            self.proc.kill()


PGBOUNCER_INI = """\
[databases]
{dbname} = host={backend_host} port={backend_port} dbname={dbname}
{extra_dbs}
[pgbouncer]
listen_addr = {host}
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
pool_mode = session
default_pool_size = {pool_size}
max_client_conn = 20000
listen_backlog = 4096
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
"""


class PgBouncer:
    """pgbouncer (one process: PgBouncer is single-threaded) in session mode.
    It refuses to run as root, so as root it runs as the postgres user, in a
    directory that user owns. pool_size caps server connections per
    (database, user); idle clients that never query take none."""

    def __init__(self, backend, dbname, user, pool_size, extra_dbs=None):
        """extra_dbs: {name: (host, port)}: further databases, e.g. the sink"""
        self.run_as = "postgres" if proc.is_root() else None
        self.dir = proc.make_tempdir("ferry-bench-pgbouncer-", owner=self.run_as)
        self.port = free_port()
        userlist = os.path.join(self.dir, "userlist.txt")
        with open(userlist, "w") as f:
            f.write(f'"{user}" ""\n')
        self.ini = os.path.join(self.dir, "pgbouncer.ini")
        with open(self.ini, "w") as f:
            extra = "".join(f"{name} = host={h} port={p} dbname={name}\n"
                            for name, (h, p) in (extra_dbs or {}).items())
            f.write(PGBOUNCER_INI.format(dbname=dbname, backend_host=backend[0], extra_dbs=extra,
                                         backend_port=backend[1], host=HOST, port=self.port,
                                         userlist=userlist, pool_size=pool_size))
        self.log_path = os.path.join(self.dir, "pgbouncer.log")
        self.proc = None

    def start(self):
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.proc = proc.Proc([exe, self.ini], self.log_path, user=self.run_as)
        proc.wait_port(HOST, self.port, proc=self.proc, what="pgbouncer to listen")
        return self

    def stop(self):
        if self.proc:
            self.proc.kill()


class Sink:
    """bench/build/pgsink: a minimal PostgreSQL-protocol server (startup,
    AuthenticationOk, ReadyForQuery, one row per query) that can hold far
    more sessions than PostgreSQL, for the idle-memory and storm scenarios.
    count() asks it for (live sessions, sessions accepted so far)."""

    def __init__(self, binary, log_path):
        self.binary, self.log_path = binary, log_path
        self.popen = self.port = None
        self._cleanup = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen([self.binary, "--host", HOST, "--port", "0"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=log, text=True, start_new_session=True)
        self._cleanup = proc.on_cleanup(self.kill)
        line = self.popen.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.kill()
            raise proc.HarnessError(f"pgsink did not start: {line}; see {self.log_path}")
        self.port = int(line[1])
        proc.wait_port(HOST, self.port, what="pgsink to listen")
        return self

    @property
    def pid(self):
        return self.popen.pid if self.popen else None

    def count(self):
        self.popen.stdin.write("count\n")
        self.popen.stdin.flush()
        parts = self.popen.stdout.readline().split()   # conns N accepted N
        if len(parts) != 4:
            raise proc.HarnessError(f"pgsink answered {parts}")
        return int(parts[1]), int(parts[3])

    def stop(self):
        if self.popen and self.popen.poll() is None:
            self.popen.stdin.close()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self):
        if self.popen and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        if self._cleanup:
            proc.forget(self._cleanup)
            self._cleanup = None
