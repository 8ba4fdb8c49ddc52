"""Process plumbing shared by every server the harness runs.

Why this exists: integration tests start real servers, and a test run that
fails, is interrupted or is killed must not leave them behind. Every process
started here therefore

* runs in its own session/process group, so one killpg() takes it and all of
  its children (postgres backends, ...) and a Ctrl-C on the terminal reaches
  only the harness, which then shuts things down in order;
* is asked by the kernel to die when the harness dies (PR_SET_PDEATHSIG), which
  covers even SIGKILL of the test runner;
* is recorded in a cleanup registry that atexit drains.

Every wait is bounded and its timeout error names what was awaited.
"""

import atexit
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from signal import SIGTERM
import time

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """A server or ferry did not do what the harness needed from it."""


class GiveUp(HarnessError):
    """Raised by a wait_for() predicate when waiting longer cannot help
    (a wrong password will not get right)."""


# --------------------------------------------------------------------------
# cleanup registry

_cleanups = []


def on_cleanup(fn):
    """Registers fn to run at interpreter exit (LIFO); returns fn so that an
    orderly shutdown can call it early and then forget() it."""
    _cleanups.append(fn)
    return fn


def forget(fn):
    """Drops fn from the registry (after it ran in an orderly shutdown)."""
    try:
        _cleanups.remove(fn)
    except ValueError:
        pass


@atexit.register
def run_cleanups():
    """Runs every registered cleanup, newest first, never letting one failure
    stop the rest."""
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            print(f"harness cleanup {fn!r} failed: {e}")


def raise_on_termination_signals():
    """Turns SIGTERM and SIGHUP into KeyboardInterrupt, so that pytest and the
    demo unwind through their finalizers instead of dying without atexit."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------
# users and directories

def is_root():
    return os.geteuid() == 0


def make_tempdir(prefix, owner=None):
    """A fresh directory for one server set, removed at exit.

    owner: a system user name that must own it (postgres refuses to run as
    root). It is then created under /tmp, which every user can traverse,
    rather than under a TMPDIR the owner may not be able to reach."""
    parent = "/tmp" if owner else tempfile.gettempdir()
    _sweep_stale_tempdirs(parent, prefix)
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    with open(os.path.join(path, _OWNER_FILE), "w") as f:
        f.write(str(os.getpid()))
    if owner:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    if not os.environ.get("FERRY_KEEP_TMP"):
        on_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


_OWNER_FILE = ".harness-owner-pid"


def _sweep_stale_tempdirs(parent, prefix):
    """Removes temp dirs left by harness runs that were SIGKILLed (atexit never
    ran; their servers died with them through PR_SET_PDEATHSIG)."""
    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if not name.startswith(prefix):
            continue
        try:
            with open(os.path.join(path, _OWNER_FILE)) as f:
                os.kill(int(f.read()), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            pass  # not ours, unreadable, or its owner is alive


def user_args(user):
    """Popen keyword arguments that run a child as user (None: as ourselves)."""
    if not user:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def clean_env(**extra):
    """A small, predictable environment for servers and CLI tools: no PG*/MYSQL*
    variables from the developer's shell leak into what the tests start."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(argv, *, user=None, timeout=60, env=None, what=None):
    """Runs a setup command to completion; raises HarnessError with its output
    when it fails or overruns."""
    what = what or os.path.basename(argv[0])
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=timeout, env=env or clean_env(),
                             start_new_session=True, **user_args(user))
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{what} did not finish within {timeout}s: {argv}\n"
                           f"{e.stdout or ''}{e.stderr or ''}") from None
    if res.returncode != 0:
        raise HarnessError(f"{what} failed with exit code {res.returncode}: {argv}\n"
                           f"{res.stdout}{res.stderr}")
    return res


# --------------------------------------------------------------------------
# long-running processes

class Proc:
    """A long-running child in its own process group, output appended to a log
    file, killed at harness exit if still running."""

    def __init__(self, argv, log_path, *, user=None, env=None,
                 death_signal=SIGTERM):
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env or clean_env(), start_new_session=True,
                preexec_fn=lambda: _libc.prctl(_PR_SET_PDEATHSIG, int(death_signal)),
                **user_args(user))
        self.pid = self.popen.pid
        self._cleanup = on_cleanup(self.kill)

    def __repr__(self):
        return f"<Proc {self.pid} {os.path.basename(self.argv[0])}>"

    def is_running(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def signal(self, sig):
        """Signals the main process only (servers forward to their children)."""
        if self.is_running():
            self.popen.send_signal(sig)

    def wait(self, timeout, what=None):
        """Returns the exit code; raises TimeoutError naming what was awaited."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"timed out after {timeout}s waiting for "
                               f"{what or self!r} to exit") from None
        self._reap_group()
        return code

    def stop(self, sig=SIGTERM, timeout=30, what=None):
        """Sends sig and waits for the exit. On timeout the whole group is
        SIGKILLed and TimeoutError raised: a hang is a finding, not noise."""
        self.signal(sig)
        try:
            return self.wait(timeout, what)
        except TimeoutError:
            self.kill()
            raise

    def kill(self):
        """SIGKILL to the whole process group; never raises."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        forget(self._cleanup)

    def _reap_group(self):
        # The leader is gone; stray children (a backend that outlived its
        # postmaster) must not hold ports into the next test.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        forget(self._cleanup)

    def log_tail(self, lines=40):
        return tail(self.log_path, lines)


def tail(path, lines=40):
    """Last lines of a text file, '' when it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------
# waiting

def wait_for(predicate, *, timeout, what, interval=0.05, proc=None):
    """Polls predicate() until it returns a truthy value, which is returned.

    Exceptions from predicate count as "not yet" (a server still starting up
    refuses connections); the last one is quoted in the timeout error. If proc
    dies meanwhile, fails at once with its log tail instead of waiting out the
    timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except GiveUp as e:
            raise GiveUp(f"gave up waiting for {what}: {e}") from e
        except Exception as e:  # noqa: BLE001 - "not ready yet"
            last = e
        if proc is not None and not proc.is_running():
            raise HarnessError(f"{proc!r} exited with code {proc.returncode} while waiting "
                               f"for {what}; log {proc.log_path}:\n{proc.log_tail()}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last})" if last else ""
            log = f"\nlog {proc.log_path}:\n{proc.log_tail()}" if proc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}{log}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def port_accepts(host, port, timeout=0.5):
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host, port, *, timeout=10, proc=None, what=None):
    wait_for(lambda: port_accepts(host, port), timeout=timeout, proc=proc,
             what=what or f"{host}:{port} to accept connections")


def wait_port_closed(host, port, *, timeout=10, what=None):
    wait_for(lambda: not port_accepts(host, port), timeout=timeout,
             what=what or f"{host}:{port} to stop accepting connections")
