"""Runs the ferry binary under test and builds its configs.

The binary is $FERRY_BIN, else <repo>/build/ferry. Config format:
README.md (Configuration). A Ferry is ready when its admin endpoint answers GET /readyz
with 200 (or, with the admin endpoint disabled, when every listener accepts);
if the process exits first, start() raises with its log.
"""

import json
import os
import signal
from signal import SIGTERM
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from . import proc
from .ports import HOST, free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_ADMIN_BIND = "127.0.0.1:9187"   # README.md (Configuration)


def ferry_bin():
    return os.environ.get("FERRY_BIN") or str(REPO_ROOT / "build" / "ferry")


def require_binary():
    """The binary's path; raises naming the path when it is not there."""
    path = ferry_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise proc.HarnessError(
            f"ferry binary {path} not found or not executable: build it with "
            f"`cmake -S . -B build && cmake --build build`, or set FERRY_BIN")
    return path


# --------------------------------------------------------------------------
# config building

def hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def cluster(name, endpoint, writer=False):
    """One cluster entry; endpoint is "host:port" or anything with .host/.port
    (a harness server)."""
    if not isinstance(endpoint, str):
        endpoint = hostport(endpoint.host, endpoint.port)
    entry = {"name": name, "endpoint": endpoint}
    if writer:
        entry["writer"] = True
    return entry


# The test servers run without TLS, so every test listener opts out of
# ferry's secure default (verify-full) explicitly, as the README tells a local
# setup to. PostgreSQL also allows passwords to them: an unverified server
# otherwise gets the probe password only as SCRAM with channel binding, which
# needs TLS. A test of TLS towards the servers passes its own backend_tls.
LOCAL_BACKEND_TLS = {
    "postgresql": {"mode": "disable", "allow_insecure_password": True},
    "mysql": {"mode": "disabled"},
}


def listener(name, protocol, clusters, port=None, host=HOST, **options):
    """One listener entry on host:port (a free port when None); options are
    further listener keys (connect_timeout=..., session_buffer=...).
    backend_tls defaults to LOCAL_BACKEND_TLS[protocol]."""
    if protocol in LOCAL_BACKEND_TLS:
        options.setdefault("backend_tls", dict(LOCAL_BACKEND_TLS[protocol]))
    return {"name": name, "protocol": protocol,
            "bind": hostport(host, port or free_port()),
            "clusters": list(clusters), **options}


def make_config(*listeners, admin_port=None, log_level="debug", shutdown_timeout=5, **top):
    """A whole config: the given listener() entries, the admin endpoint on
    admin_port (a free port when None: never the default 9187, which another
    ferry may hold), and any further top-level keys. A test wanting no admin
    endpoint passes admin={"bind": None}."""
    config = {"log_level": log_level, "shutdown_timeout": shutdown_timeout,
              "admin": {"bind": hostport(HOST, admin_port or free_port())},
              "listeners": list(listeners)}
    config.update(top)
    return config


def write_config(config, path):
    """Writes config as JSON atomically, so a SIGHUP never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def check(config_or_path, timeout=10):
    """Runs `ferry check -c FILE`; returns (exit code, stdout, stderr). A dict
    is written to a temp file first."""
    if isinstance(config_or_path, dict):
        with tempfile.TemporaryDirectory(prefix="ferry-check-") as d:
            return check(write_config(config_or_path, os.path.join(d, "ferry.json")), timeout)
    res = subprocess.run([require_binary(), "check", "-c", str(config_or_path)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout, res.stderr


# --------------------------------------------------------------------------
# a running ferry

class Ferry:
    """One `ferry run` process with its config file and log in tmpdir."""

    READY_TIMEOUT = 10

    def __init__(self, config, tmpdir, name="ferry", argv_prefix=()):
        """argv_prefix: a command ferry runs under (e.g. hosts.PrivateHosts.wrap())."""
        self.config = config
        self.argv_prefix = list(argv_prefix)
        self.name = name
        self.config_path = os.path.join(str(tmpdir), f"{name}.json")
        self.log_path = os.path.join(str(tmpdir), f"{name}.log")
        self.proc = None
        write_config(config, self.config_path)

    def __repr__(self):
        return f"<Ferry {self.name} pid={self.pid}>"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    # -- addresses from the config
    def admin_addr(self):
        """(host, port) of the admin endpoint, None when disabled."""
        bind = self.config.get("admin", {}).get("bind", DEFAULT_ADMIN_BIND)
        return split_hostport(bind) if bind else None

    def listener_addr(self, name):
        for entry in self.config["listeners"]:
            if entry["name"] == name:
                return split_hostport(entry["bind"])
        raise KeyError(f"no listener {name!r} in {self.config_path}")

    # -- life cycle
    def start(self, timeout=READY_TIMEOUT):
        """Starts ferry and waits until it is ready; raises with the log if it
        exits or is not ready within timeout seconds."""
        if self.is_running():
            raise proc.HarnessError(f"{self!r} is already running")
        self.proc = proc.Proc([*self.argv_prefix, require_binary(), "run", "-c", self.config_path], self.log_path,
                              env=dict(os.environ), death_signal=signal.SIGKILL)
        if self.admin_addr():
            what = f"{self!r} GET /readyz to return 200"
            ready = lambda: self.http_get("/readyz", timeout=1)[0] == 200  # noqa: E731
        else:
            what = f"{self!r} listeners to accept"
            ready = lambda: all(proc.port_accepts(*split_hostport(entry["bind"]))  # noqa: E731
                                for entry in self.config["listeners"])
        try:
            proc.wait_for(ready, timeout=timeout, proc=self.proc, what=what)
        except TimeoutError:
            self.proc.kill()
            raise
        return self

    def is_running(self):
        return self.proc is not None and self.proc.is_running()

    def signal(self, sig):
        self.proc.signal(sig)

    def wait(self, timeout):
        """Waits for ferry to exit by itself; returns its exit code."""
        return self.proc.wait(timeout, what=repr(self))

    def stop(self, sig=SIGTERM, timeout=15):
        """Sends sig, returns the exit code; SIGKILLs and raises TimeoutError if
        ferry is still there after timeout seconds."""
        return self.proc.stop(sig, timeout=timeout, what=f"{self!r} to exit after {sig!r}")

    def kill(self):
        if self.proc:
            self.proc.kill()

    def reload(self, new_config):
        """Rewrites the config file and sends SIGHUP. Returns at once: what the
        reload did is for the test to observe."""
        self.config = new_config
        write_config(new_config, self.config_path)
        self.signal(signal.SIGHUP)

    # -- observing
    def http_get(self, path, timeout=5):
        """(status code, body text) of GET path on the admin endpoint."""
        host, port = self.admin_addr()
        url = f"http://{hostport(host, port)}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def status(self):
        """GET /v1/status, parsed; raises unless it answers 200."""
        code, body = self.http_get("/v1/status")
        if code != 200:
            raise proc.HarnessError(f"{self!r} GET /v1/status returned {code}: {body}")
        return json.loads(body)

    def rss_kib(self):
        """Resident set size in KiB, from /proc/PID/status."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise proc.HarnessError(f"no VmRSS for {self!r}")

    def log_text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=60):
        return proc.tail(self.log_path, lines)
