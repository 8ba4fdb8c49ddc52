"""What a PostgreSQL and a MariaDB test server have in common.

pg.py and mariadb.py only say how their server is set up, started, queried and
promoted; starting, stopping with a mode, waiting, logs, cleanup and the
primary+replica pair life cycle live here once.
"""

import os
import signal
import uuid

from . import proc
from .ports import HOST, free_port


class Server:
    """One database server process on 127.0.0.1 with a data directory we own.

    Subclasses define argv(), ready() and query(), and STOP_MODES: the
    signal that asks the server for each kind of shutdown."""

    STOP_MODES = {"fast": signal.SIGTERM, "immediate": signal.SIGKILL}
    DEATH_SIGNAL = signal.SIGTERM   # sent by the kernel if the harness dies
    START_TIMEOUT = 60

    def __init__(self, name, basedir, *, run_as=None):
        self.name = name                  # "primary" / "replica" (initially)
        self.basedir = basedir
        self.datadir = os.path.join(basedir, name)
        self.log_path = os.path.join(basedir, f"{name}.log")
        self.host = HOST
        self.port = free_port()
        self.run_as = run_as              # system user to run as, None: ourselves
        self.proc = None

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port}>"

    # -- to be defined by each kind of server
    def argv(self):
        raise NotImplementedError

    def ready(self):
        """True once the server answers a real query (not just accepts TCP)."""
        raise NotImplementedError

    def query(self, sql, params=None):
        raise NotImplementedError

    # -- life cycle
    def start(self, timeout=None):
        if self.is_running():
            raise proc.HarnessError(f"{self!r} is already running")
        timeout = timeout or self.START_TIMEOUT
        self.proc = proc.Proc(self.argv(), self.log_path, user=self.run_as,
                              death_signal=self.DEATH_SIGNAL)
        proc.wait_for(self.ready, timeout=timeout, proc=self.proc,
                      what=f"{self!r} to answer queries")
        return self

    def stop(self, mode="fast", timeout=60):
        """Stops the server with the shutdown kind mode (see STOP_MODES) and
        waits until the process and its port are gone."""
        if mode not in self.STOP_MODES:
            raise ValueError(f"{self!r}: stop mode {mode!r} not in {sorted(self.STOP_MODES)}")
        if self.proc is not None:
            self.proc.stop(self.STOP_MODES[mode], timeout=timeout,
                           what=f"{self!r} to stop ({mode})")
        proc.wait_port_closed(self.host, self.port, what=f"{self!r} port to close")

    def kill(self):
        """Last-resort cleanup: SIGKILL the process group, never raises."""
        if self.proc is not None:
            self.proc.kill()

    def is_running(self):
        return self.proc is not None and self.proc.is_running()

    def log_tail(self, lines=40):
        return proc.tail(self.log_path, lines)


class Pair:
    """A primary and a streaming replica, set up from scratch in a temp dir.

    Use as a context manager or call start()/stop(); either way the servers are
    killed at interpreter exit if still running. `primary` and `replica` are
    the servers in their initial roles; after a promotion they keep their
    names, the roles are the test's business."""

    TMP_PREFIX = "ferry-db-"
    RUN_AS = None          # system user the servers must run as
    PROBE_TABLE = None     # table wait_replicated() writes to

    def __init__(self):
        self.basedir = None
        self.primary = None
        self.replica = None
        self._cleanup = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self.basedir = proc.make_tempdir(self.TMP_PREFIX, owner=self.RUN_AS)
        self._cleanup = proc.on_cleanup(self._kill_all)
        try:
            self._setup()
        except BaseException:
            self.stop()
            raise
        return self

    def _setup(self):
        """Creates, starts and connects self.primary and self.replica."""
        raise NotImplementedError

    def servers(self):
        return [s for s in (self.primary, self.replica) if s is not None]

    def stop(self):
        """Stops both servers (replica first, so it does not log reconnect noise);
        falls back to SIGKILL if a clean stop fails."""
        errors = []
        for s in reversed(self.servers()):
            try:
                if s.is_running():
                    s.stop()
            except Exception as e:  # noqa: BLE001 - stop the other one too
                errors.append(f"{s!r}: {e}")
                s.kill()
        if self._cleanup:
            proc.forget(self._cleanup)
            self._cleanup = None
        if errors:
            raise proc.HarnessError("stopping servers failed: " + "; ".join(errors))

    def _kill_all(self):
        for s in self.servers():
            s.kill()

    def ensure_running(self):
        """Restarts whichever server a test left stopped."""
        for s in self.servers():
            if not s.is_running():
                s.start()

    def log_tails(self, lines=20):
        return {s.name: s.log_tail(lines) for s in self.servers()}

    def wait_replicated(self, timeout=30, source=None, target=None):
        """Writes a unique row on source (the primary) and waits until target
        (the replica) returns it: proof that replication flows end to end."""
        source = source or self.primary
        target = target or self.replica
        token = uuid.uuid4().hex
        table = self.PROBE_TABLE
        source.query(f"CREATE TABLE IF NOT EXISTS {table} (token VARCHAR(64))")
        source.query(f"INSERT INTO {table} (token) VALUES (%s)", (token,))
        proc.wait_for(
            lambda: target.query(f"SELECT 1 FROM {table} WHERE token = %s", (token,)),
            timeout=timeout, what=f"row {token} written on {source!r} to reach {target!r}")
