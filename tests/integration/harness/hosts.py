"""Host names whose resolution a test controls, for ferry alone.

Aurora's cluster endpoints are DNS names: a secondary cluster's writer
endpoint does not resolve until that cluster is promoted, and a name moves
from one instance to another on failover. Tests model that with a hosts file
of their own that only the processes started through wrap() see: wrap()
runs a command in a private mount namespace (unshare -m) with that file
bind-mounted over /etc/hosts. The machine's own resolver configuration is
never touched. glibc reads /etc/hosts at every lookup (no nscd here), so a
change is seen by the next getaddrinfo().

    hosts = PrivateHosts(tmp_path)
    hosts.set("a.cluster-x.us-east-1.rds.example.test", "127.0.0.1")
    hosts.set("b.cluster-x.eu-west-1.rds.example.test", None)   # does not resolve
    Ferry(config, tmp_path, argv_prefix=hosts.wrap()).start()

Every instance behind a name listens on its own loopback address when a
name must move between servers with the same port (127.0.0.0/8 is all
local); next_address() hands out fresh ones. Use names under .test (RFC 6761):
they never resolve anywhere else, so a name the file lacks fails fast.
"""

import os
import shutil
from pathlib import Path

from .proc import HarnessError

# Files are rewritten in place (the bind mount pins the inode) with one
# write of a fixed size, so a reader never sees a truncated file.
_FILE_SIZE = 16384
_BASE = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]

_next_octet = [10]


def next_address():
    """A loopback address no other test of this process was given."""
    n = _next_octet[0]
    _next_octet[0] += 1
    if n >= 250 * 250:
        raise HarnessError("out of loopback addresses")
    return f"127.0.{10 + n // 250}.{1 + n % 250}"


def available():
    """Why private hosts cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (unshare -m and mount --bind)"
    for tool in ("unshare", "mount"):
        if not shutil.which(tool):
            return f"{tool} not found"
    return None


class PrivateHosts:
    def __init__(self, directory):
        self.path = Path(directory) / "hosts"
        self.names = {}         # name -> address
        self.path.write_bytes(b"\0" * 0)
        self._write()

    def set(self, name, address):
        """name resolves to address from the next lookup on; None: it does
        not resolve at all (NXDOMAIN, as an inactive Aurora writer endpoint)."""
        if address is None:
            self.names.pop(name, None)
        else:
            self.names[name] = address
        self._write()

    def get(self, name):
        return self.names.get(name)

    def _write(self):
        lines = _BASE + [f"{addr}\t{name}" for name, addr in sorted(self.names.items())]
        text = ("\n".join(lines) + "\n").encode()
        if len(text) >= _FILE_SIZE:
            raise HarnessError(f"{self.path}: too many names")
        data = text + b"#" * (_FILE_SIZE - len(text) - 1) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    def wrap(self):
        """argv prefix: runs the rest of the command line with this file as
        its /etc/hosts, and an nsswitch.conf whose hosts line is "files"
        alone: a name the file lacks fails at once (NXDOMAIN as far as the
        program can tell) instead of going to a DNS server, which may be
        slow or absent on a test machine. The pid stays the command's own
        (unshare and sh exec)."""
        why = available()
        if why:
            raise HarnessError(f"private hosts file: {why}")
        nss = self.path.with_name("nsswitch.conf")
        if not nss.exists():
            try:
                lines = Path("/etc/nsswitch.conf").read_text().splitlines()
            except OSError:
                lines = []
            lines = [ln for ln in lines if not ln.split(":", 1)[0].strip() == "hosts"]
            nss.write_text("\n".join(lines + ["hosts: files"]) + "\n")
        script = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/nsswitch.conf && shift && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(self.path), str(nss)]
