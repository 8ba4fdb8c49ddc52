"""Free TCP ports on 127.0.0.1.

Ports are drawn at random from below the kernel's ephemeral range, not by
binding port 0: a port from the ephemeral range can be taken meanwhile as the
local end of some outgoing connection (a replica connecting to its primary,
ferry connecting to a backend) between the moment we pick it and the moment a
server binds it. Ports are also never handed out twice by one process, since a
stopped server keeps its port for a later restart.
"""

import random
import socket

HOST = "127.0.0.1"
_LOW, _HIGH = 20000, 32000
_handed_out = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port():
    """A port on 127.0.0.1 that nothing listens on and that this process has
    not handed out before."""
    lo_eph, hi_eph = _ephemeral_range()
    candidates = [p for p in range(_LOW, _HIGH) if not lo_eph <= p <= hi_eph]
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(candidates)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free TCP port found on {HOST} in {_LOW}..{_HIGH}")
