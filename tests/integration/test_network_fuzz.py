"""A network fuzzer for both protocols (issue 18), beside healthy clients.

For a bounded time (FERRY_NETFUZZ_SECONDS, default 20 s per run; CI runs it
with the gcc and with the ASan+UBSan build) a few threads open connections
to ferry's PostgreSQL and MySQL listeners, passthrough and terminated, and
send mutations of real traffic: startup packets, SSL/GSSENC/cancel
requests, SCRAM and handshake responses, and every command after a real
login (bit flips, inserted and deleted bytes, hostile length fields,
truncation, repetition, garbage tails, wrong MySQL sequence ids, commands
sent before the previous answer, single-byte writes). Meanwhile healthy
clients on the same listeners run queries without a pause.

Asserted: every healthy query succeeds (zero errors), ferry stays up and
answers /healthz, hostile input gets protocol errors rather than silence,
and ferry exits cleanly with no sanitizer report (conftest checks that).
The seed is printed; FERRY_NETFUZZ_SEED replays a run.
"""

import os
import random
import socket
import struct
import threading
import time

import psycopg2
import pymysql
import pytest

import harness
from fronts import my_listener, pg_listener
from harness import make_config
from harness.mariadb import TEST_DB, TEST_PASSWORD as MY_PASSWORD, TEST_USER as MY_USER
from test_mysql_protocol import CAPS, native_password, packet
from test_pg_protocol import startup_packet

SECONDS = float(os.environ.get("FERRY_NETFUZZ_SECONDS", "20"))
FUZZ_THREADS = 3
FUZZ_ROLE = "ferry_fuzz"        # no privileges, trusted on 127.0.0.1 by the harness
PG_USER, PG_PASSWORD = harness.pg.TEST_USER, harness.pg.TEST_PASSWORD
HOSTILE_LENGTHS = (0, 1, 3, 4, 5, 7, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x40000000, 10021)
# MySQL commands a mutation must never become: the server would act on
# them beyond this one session (COM_SHUTDOWN, COM_PROCESS_KILL) or start a
# replication stream (COM_BINLOG_DUMP, COM_REGISTER_SLAVE, COM_BINLOG_DUMP_GTID).
MY_FORBIDDEN = {0x08, 0x0C, 0x12, 0x15, 0x1E}


# ---------------------------------------------------------------------------
# seeds: real traffic, as bytes

def pg_msg(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def pg_after_login(rng):
    """One or a few frontend messages of a logged-in session."""
    name = rng.choice([b"", b"s1"])
    choices = [
        pg_msg(b"Q", b"SELECT 1\0"),
        pg_msg(b"Q", b"BEGIN; SELECT 2; COMMIT\0"),
        pg_msg(b"P", name + b"\0SELECT $1::int\0" + struct.pack("!hI", 1, 23))
        + pg_msg(b"B", b"\0" + name + b"\0" + struct.pack("!hh", 0, 1) + struct.pack("!i", 1)
                 + b"7" + struct.pack("!h", 0))
        + pg_msg(b"E", b"\0" + struct.pack("!i", 0)) + pg_msg(b"S", b""),
        pg_msg(b"D", b"S" + name + b"\0") + pg_msg(b"H", b""),
        pg_msg(b"C", b"S" + name + b"\0") + pg_msg(b"S", b""),
        pg_msg(b"Q", b"COPY (SELECT 1) TO STDOUT\0"),
        pg_msg(b"d", b"1\t2\n") + pg_msg(b"c", b""),
        pg_msg(b"f", b"no\0"),
        pg_msg(b"p", b"secret\0"),
        pg_msg(b"X", b""),
    ]
    return b"".join(rng.choice(choices) for _ in range(rng.randint(1, 3)))


def pg_first_packets(rng):
    ssl = struct.pack("!II", 8, 80877103)
    gss = struct.pack("!II", 8, 80877104)
    cancel = struct.pack("!IIII", 16, 80877102, rng.getrandbits(32), rng.getrandbits(32))
    startup = startup_packet(user=FUZZ_ROLE, database="postgres")
    return rng.choice([startup, ssl + startup, gss + startup, cancel, ssl, startup + startup,
                       startup_packet(user=PG_USER) + pg_msg(b"p", b"SCRAM-SHA-256\0"
                                                             + struct.pack("!i", 5) + b"n,,n=")])


def my_command(rng):
    stmt_id = struct.pack("<I", rng.choice([1, 2, 0xFFFFFFFF]))
    return rng.choice([
        b"\x03SELECT 1",
        b"\x03SELECT 1; SELECT 2",
        b"\x16SELECT ?",
        b"\x17" + stmt_id + b"\x00\x01\x00\x00\x00\x00\x01\x08\x00" + struct.pack("<q", 5),
        b"\x19" + stmt_id,
        b"\x1a" + stmt_id,
        b"\x18" + stmt_id + b"\x00\x00data",
        b"\x1c" + stmt_id + struct.pack("<I", 10),
        b"\x04t\0",
        b"\x0e",
        b"\x02" + TEST_DB.encode(),
        b"\x1b\x00\x00",
        b"\x1f",
        b"\x11" + MY_USER.encode() + b"\0\x00" + TEST_DB.encode() + b"\0",
        b"\x01",
        bytes([rng.randrange(0x20, 0x100)]) + b"x",
    ])


def my_handshake_response(rng, scramble):
    return (struct.pack("<IIB23x", CAPS, 1 << 24, 33) + MY_USER.encode() + b"\0" + bytes([20])
            + native_password(MY_PASSWORD, scramble) + TEST_DB.encode() + b"\0"
            + b"mysql_native_password\0")


# ---------------------------------------------------------------------------
# mutations

def mutate(rng, data, length_at=()):
    """A hostile variant of data. length_at: offsets of 4-byte length fields
    (big-endian for PostgreSQL, positive) or 3-byte ones (MySQL, negative
    offsets encoded as -(offset + 1))."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(8)
        if op == 0 and data:                       # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and length_at:                # hostile length field
            at = rng.choice(length_at)
            value = rng.choice(HOSTILE_LENGTHS)
            if at >= 0 and at + 4 <= len(data):
                data[at:at + 4] = struct.pack("!I", value & 0xFFFFFFFF)
            elif at < 0 and -at - 1 + 3 <= len(data):
                o = -at - 1
                data[o:o + 3] = struct.pack("<I", value & 0xFFFFFF)[:3]
        elif op == 2 and data:                     # truncation
            del data[rng.randrange(len(data)):]
        elif op == 3:                              # inserted bytes
            i = rng.randrange(len(data) + 1)
            data[i:i] = os.urandom(rng.randint(1, 16))
        elif op == 4 and len(data) > 1:            # deleted bytes
            i = rng.randrange(len(data))
            del data[i:i + rng.randint(1, 4)]
        elif op == 5:                              # repetition
            data = data * rng.randint(2, 4)
        elif op == 6:                              # garbage tail
            data += os.urandom(rng.randint(1, 64))
        else:                                      # interesting bytes
            if data:
                i = rng.randrange(len(data))
                data[i] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("Z"), ord("E")])
    return bytes(data)


def send(sock, rng, data):
    """All at once, or (sometimes) in single bytes."""
    if rng.random() < 0.05 and len(data) < 64:
        for b in data:
            sock.sendall(bytes([b]))
    else:
        sock.sendall(data)


def drain(sock, seconds):
    """What ferry says within seconds (until it closes)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while len(got) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except (socket.timeout, ConnectionResetError, OSError):
        pass
    return got


# ---------------------------------------------------------------------------
# one fuzz case per protocol

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.cases = 0
        self.errors_seen = 0        # ferry (or the server through it) answered with an error

        self.closed_by = {}         # exception name -> count: cases ferry cut short

    def add(self, answer, error_marker):
        with self.lock:
            self.cases += 1
            if error_marker(answer):
                self.errors_seen += 1

    def closed(self, exc):
        with self.lock:
            self.cases += 1
            name = type(exc).__name__
            self.closed_by[name] = self.closed_by.get(name, 0) + 1


def pg_login_raw(addr):
    """A real passthrough login as the unprivileged trusted role."""
    sock = socket.create_connection(addr, timeout=5)
    sock.sendall(startup_packet(user=FUZZ_ROLE, database="postgres"))
    buf = b""
    while b"Z\x00\x00\x00\x05" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("login closed")
        buf += chunk
    return sock


def pg_case(rng, addr, terminated):
    # a terminated listener asks the trusted role for SCRAM: only its
    # startup phase is fuzzed (its login is exercised by the SCRAM seed)
    if terminated or rng.random() < 0.4:    # the startup phase: the length comes first
        data, length_at = pg_first_packets(rng), 0
        sock = socket.create_connection(addr, timeout=5)
    else:                       # after a login: a type byte, then the length
        sock = pg_login_raw(addr)
        data, length_at = pg_after_login(rng), 1
    try:
        send(sock, rng, mutate(rng, data, (length_at,)))
        return drain(sock, 0.3)
    finally:
        sock.close()


def pg_error(answer):
    return b"E" in answer[:1] or b"\x00C08P01\x00" in answer or b"SFATAL" in answer


def my_login_raw(addr):
    sock = socket.create_connection(addr, timeout=5)
    head = drain_exact(sock, 4)
    n = int.from_bytes(head[:3], "little")
    g = drain_exact(sock, n)
    end = g.index(b"\0", 1)
    scramble = g[end + 5:end + 13] + g[end + 32:end + 44]
    return sock, scramble


def drain_exact(sock, n):
    sock.settimeout(5)
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            raise EOFError("closed")
        got += chunk
    return got


def my_case(rng, addr):
    sock, scramble = my_login_raw(addr)
    try:
        login = packet(my_handshake_response(rng, scramble), 1)
        if rng.random() < 0.35:                     # the handshake itself
            send(sock, rng, mutate(rng, login, (-1,)))
            return drain(sock, 0.3)
        sock.sendall(login)
        head = drain_exact(sock, 4)
        ok = drain_exact(sock, int.from_bytes(head[:3], "little"))
        if ok[:1] != b"\x00":
            return ok
        cmds = b""
        for _ in range(rng.randint(1, 3)):          # several: commands before the answer
            cmd = my_command(rng)
            seq = 0 if rng.random() < 0.8 else rng.randrange(256)
            cmds += packet(cmd, seq)
        data = mutate(rng, cmds, (-1,))
        if len(data) > 4 and data[4] in MY_FORBIDDEN:
            data = data[:4] + b"\x03" + data[5:]
        send(sock, rng, data)
        return drain(sock, 0.3)
    finally:
        sock.close()


def my_error(answer):
    return b"\xff" in answer[4:5] or b"#08S01" in answer or b"#HY000" in answer


# ---------------------------------------------------------------------------

@pytest.fixture
def fuzz_role(pg_pair):
    pg_pair.primary.query(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                          f"'{FUZZ_ROLE}') THEN CREATE ROLE {FUZZ_ROLE} LOGIN; END IF; END $$")
    return FUZZ_ROLE


def pg_client(ferry, name):
    host, port = ferry.listener_addr(name)
    conn = psycopg2.connect(host=host, port=port, user=PG_USER, password=PG_PASSWORD,
                            dbname="postgres", connect_timeout=10)
    conn.autocommit = True
    return conn, "SELECT %s::int + 1"


def my_client(ferry, name):
    host, port = ferry.listener_addr(name)
    conn = pymysql.connect(host=host, port=port, user=MY_USER, password=MY_PASSWORD,
                           database=TEST_DB, connect_timeout=10, autocommit=True)
    return conn, "SELECT %s + 1"


def healthy(connect, ferry, name, stop, result):
    """Queries without a pause until stop; the first error ends the loop
    and is kept in result["error"]."""
    conn, sql = connect(ferry, name)
    try:
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute(sql, (result["ok"],))
                assert cur.fetchone()[0] == result["ok"] + 1
                result["ok"] += 1
    except Exception as e:  # noqa: BLE001 - reported by the test
        result["error"] = repr(e)
    finally:
        conn.close()


def test_network_fuzz_beside_healthy_clients(ferry_factory, pg_pair, mariadb_pair, fuzz_role):
    seed = int(os.environ.get("FERRY_NETFUZZ_SEED", str(random.randrange(1 << 32))))
    print(f"network fuzz seed {seed} ({SECONDS} s)")
    pg_users = [{"name": PG_USER, "password": PG_PASSWORD}]
    my_users = [{"name": MY_USER, "password": MY_PASSWORD}]
    ferry = ferry_factory(make_config(
        pg_listener(pg_pair, name="pg"),
        pg_listener(pg_pair, name="pgt", auth={"mode": "terminated", "users": pg_users}),
        my_listener(mariadb_pair, name="my"),
        my_listener(mariadb_pair, name="myt", auth={"mode": "terminated", "users": my_users}),
        workers=2, log_level="info"))
    stop = threading.Event()
    results = {name: {"ok": 0, "error": None} for name in ("pg", "pgt", "my", "myt")}
    threads = [threading.Thread(target=healthy,
                                args=(pg_client if name.startswith("pg") else my_client, ferry,
                                      name, stop, results[name]), daemon=True)
               for name in results]
    stats = {"pg": Stats(), "my": Stats()}
    failures = []

    def fuzz(index):
        rng = random.Random(seed + index)
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline and not failures:
            proto = rng.choice(["pg", "my"])
            name = proto + rng.choice(["", "t"])
            try:
                if proto == "pg":
                    answer = pg_case(rng, ferry.listener_addr(name), name == "pgt")
                    stats[proto].add(answer, pg_error)
                else:
                    stats[proto].add(my_case(rng, ferry.listener_addr(name)), my_error)
            except (OSError, EOFError) as e:
                stats[proto].closed(e)  # ferry closing a hostile session is fine
            if not ferry.is_running():
                failures.append(f"ferry died (seed {seed}, thread {index})")

    for t in threads:
        t.start()
    fuzzers = [threading.Thread(target=fuzz, args=(i,), daemon=True) for i in range(FUZZ_THREADS)]
    for t in fuzzers:
        t.start()
    for t in fuzzers:
        t.join(SECONDS + 60)
    stop.set()
    for t in threads:
        t.join(30)

    assert not failures, failures
    assert ferry.is_running()
    status, body = ferry.http_get("/healthz")
    assert status == 200, body
    for name, result in results.items():
        assert result["error"] is None, f"healthy {name} client failed (seed {seed}): " \
                                        f"{result['error']}"
        assert result["ok"] > 0, f"healthy {name} client never ran"
    for proto, s in stats.items():
        print(f"{proto}: {s.cases} cases, {s.errors_seen} answered with an error, "
              f"cut short: {s.closed_by}")
        assert s.cases >= 20, f"{proto}: only {s.cases} fuzz cases ran"
        assert s.errors_seen > 0, f"{proto}: no hostile input ever got an error"
    # still serving new clients after all that
    host, port = ferry.listener_addr("pgt")
    with psycopg2.connect(host=host, port=port, user=PG_USER, password=PG_PASSWORD,
                          dbname="postgres", connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
