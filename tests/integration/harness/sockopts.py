"""The TCP options of another process's sockets, read from copies of its
descriptors (pidfd_getfd(2), Linux 5.6+: the caller needs ptrace rights over
the process, which a parent has over the ferry it started). For tests that
check what ferry set on its connections (keepalive, TCP_USER_TIMEOUT)."""

import ctypes
import os
import socket

SYS_PIDFD_GETFD = 438       # the same number on every architecture since 5.6
_libc = ctypes.CDLL(None, use_errno=True)


def _getfd(pidfd, fd):
    new = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if new < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return new


def tcp_connections(pid):
    """Every connected TCP socket of pid: a list of dicts with local and peer
    (host, port) and the options keepalive (bool), keepidle, keepintvl,
    keepcnt (seconds / probes) and user_timeout_ms."""
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
                sock = socket.socket(fileno=_getfd(pidfd, int(name)))
            except OSError:
                continue        # closed meanwhile
            try:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or \
                        sock.type != socket.SOCK_STREAM:
                    continue
                try:
                    peer = sock.getpeername()[:2]
                except OSError:
                    continue    # listening, or not connected yet
                tcp = socket.IPPROTO_TCP
                found.append({
                    "local": sock.getsockname()[:2], "peer": peer,
                    "keepalive": bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
                    "keepidle": sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
                    "keepintvl": sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
                    "keepcnt": sock.getsockopt(tcp, socket.TCP_KEEPCNT),
                    "user_timeout_ms": sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT)})
            finally:
                sock.close()
    finally:
        os.close(pidfd)
    return found
