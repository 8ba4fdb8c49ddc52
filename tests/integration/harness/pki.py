"""A throwaway PKI made with the openssl CLI: a test CA, a server certificate
it signed for localhost / 127.0.0.1, and a second CA that signed nothing (for
"wrong CA" tests). Used by ferry's TLS tests and by servers the harness
starts with TLS.

Files written into the directory: ca.pem, ca.key, server.pem, server.key,
other.pem, other.key (P-256 keys, valid for two days).
"""

import os
import subprocess
from pathlib import Path

FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "other.pem", "other.key")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL)


def make_pki(directory, names=()):
    """Creates the files above in directory (made if missing); returns it
    as a Path. names: further DNS names the server certificate carries."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=ferry test CA", cwd=d)
    openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.pem", "-days", "2",
            "-subj", "/CN=some other CA", cwd=d)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            cwd=d)
    san = ",".join(["DNS:localhost", *(f"DNS:{name}" for name in names), "IP:127.0.0.1"])
    (d / "san.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    for name in FILES:
        if name.endswith(".key"):
            os.chmod(d / name, 0o600)
    return d
