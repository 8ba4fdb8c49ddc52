"""Fake database servers that play a man in the middle (issue 18 item 1).

Each one accepts any number of connections, declines TLS, and asks for the
password in a form it can read:

- FakePgServer answers an SSLRequest with 'N', then the StartupMessage with
  AuthenticationCleartextPassword, and records every PasswordMessage.
- FakeMySQLServer greets without CLIENT_SSL as caching_sha2_password, asks
  for full authentication, answers a public-key request with its own RSA key
  and records (and decrypts) whatever comes back.

Both then refuse the login and close. What they record is what a real man
in the middle would have learnt: tests assert it stays empty unless the
config allows insecure passwords.
"""

import os
import socket
import struct
import threading

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class _FakeServer:
    """A thread accepting connections on 127.0.0.1:<free port>; each
    connection runs self.session(conn) in its own thread."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.host, self.port = self.sock.getsockname()
        self.lock = threading.Lock()
        self.connections = 0
        self.events = []            # (kind, detail) in arrival order
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass

    def record(self, kind, detail=b""):
        with self.lock:
            self.events.append((kind, detail))

    def seen(self, kind):
        with self.lock:
            return [d for k, d in self.events if k == kind]

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        conn.settimeout(10)
        try:
            self.session(conn)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()


class FakePgServer(_FakeServer):
    """Declines TLS, asks for a cleartext password, records what it gets."""

    SSL_REQUEST = 80877103

    def session(self, conn):
        length = struct.unpack("!I", _recv_exact(conn, 4))[0]
        body = _recv_exact(conn, length - 4)
        if struct.unpack("!I", body[:4])[0] == self.SSL_REQUEST:
            self.record("ssl_request")
            conn.sendall(b"N")
            length = struct.unpack("!I", _recv_exact(conn, 4))[0]
            body = _recv_exact(conn, length - 4)
        self.record("startup", body)
        conn.sendall(b"R" + struct.pack("!II", 8, 3))      # AuthenticationCleartextPassword
        kind = _recv_exact(conn, 1)
        length = struct.unpack("!I", _recv_exact(conn, 4))[0]
        payload = _recv_exact(conn, length - 4)
        if kind == b"p":
            self.record("password", payload.rstrip(b"\0"))
        fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
        conn.sendall(b"E" + struct.pack("!I", 4 + len(fields)) + fields)


class FakeMySQLServer(_FakeServer):
    """Greets as caching_sha2_password without TLS, asks for full
    authentication, hands out its own RSA key, records what it gets."""

    CAPS = (0x00000001 | 0x00000004 | 0x00000008 | 0x00000200 | 0x00008000 | 0x00080000
            | 0x00100000 | 0x00200000)   # LONG_PASSWORD, LONG_FLAG, CONNECT_WITH_DB,
    # PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH, CONNECT_ATTRS, PLUGIN_AUTH_LENENC
    PLUGIN = b"caching_sha2_password"

    def __init__(self):
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    @staticmethod
    def _packet(seq, payload):
        return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload

    @staticmethod
    def _read(conn):
        head = _recv_exact(conn, 4)
        n = head[0] | head[1] << 8 | head[2] << 16
        return head[3], _recv_exact(conn, n)

    def session(self, conn):
        scramble = os.urandom(20).replace(b"\0", b"\1")
        caps = self.CAPS
        greeting = (b"\x0a" + b"8.0.36-fake\0" + struct.pack("<I", 7) + scramble[:8] + b"\0"
                    + struct.pack("<H", caps & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
                    + struct.pack("<H", caps >> 16) + bytes([21]) + b"\0" * 10
                    + scramble[8:] + b"\0" + self.PLUGIN + b"\0")
        conn.sendall(self._packet(0, greeting))
        seq, response = self._read(conn)
        self.record("handshake_response", response)
        # AuthMoreData: perform full authentication
        conn.sendall(self._packet(seq + 1, b"\x01\x04"))
        seq, answer = self._read(conn)
        if answer == b"\x02":
            self.record("key_request")
            conn.sendall(self._packet(seq + 1, b"\x01" + self.public_pem))
            seq, answer = self._read(conn)
            try:
                plain = self.key.decrypt(answer, padding.OAEP(
                    mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
                xored = bytes(b ^ scramble[i % 20] for i, b in enumerate(plain))
                self.record("password", xored.rstrip(b"\0"))
            except ValueError:
                self.record("undecryptable", answer)
        else:
            self.record("password", answer.rstrip(b"\0"))
        err = b"\xff" + struct.pack("<H", 1045) + b"#28000" + b"Access denied"
        conn.sendall(self._packet(seq + 1, err))
