"""Clients that have not logged in yet (issue 18 item 6): a limit of their
own per listener and per client address, refused at once with the
protocol's "too many connections" error and without a backend connection;
client_login_timeout ends a stalled login with a protocol error; the
open-file limit is checked against max_client_connections; accept failures
log one line per second with a count."""

import re
import resource
import socket
import struct
import time

import psycopg2
import pytest

import harness
from fronts import listener_status, my_connect, my_listener, pg_dsn, pg_listener
from harness import make_config
from harness.ferry import write_config
from harness.proc import wait_for

PG_STARTUP_USER = harness.pg.TEST_USER     # must prove a SCRAM password at the server


def raw_connect(ferry, name, source="127.0.0.1"):
    host, port = ferry.listener_addr(name)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect((host, port))
    return s


def pg_startup(user=PG_STARTUP_USER, database=harness.pg.TEST_DB):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def read_pg_message(s, want):
    """Reads backend messages until one of type want; returns its body."""
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError(f"closed before a {want!r} message; got {buf!r}")
            buf += chunk
        n = struct.unpack("!I", buf[1:5])[0]
        typ, body, buf = buf[:1], buf[5:1 + n], buf[1 + n:]
        if typ == want:
            return body


def pg_error_fields(body):
    return {f[:1].decode(): f[1:].decode() for f in body.split(b"\0") if f}


def read_all_until_closed(s, timeout):
    s.settimeout(timeout)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def metric(ferry, name, listener):
    _, text = ferry.http_get("/metrics")
    m = re.search(rf'^{re.escape(name)}{{listener="{listener}"}} (\d+)$', text, re.M)
    return int(m.group(1)) if m else None


def query_one(dsn):
    conn = harness.pg.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 41 + 1")
            return cur.fetchone()[0]
    finally:
        conn.close()


def close_all(socks):
    for s in socks:
        s.close()


def test_pg_stalled_clients_are_bounded(ferry_factory, pg_pair):
    """300 sockets from one address that send nothing and 40 that send a
    startup packet and stall in the server's SCRAM exchange: each address
    gets max_login_clients_per_source login slots and the rest are refused
    with 53300 at once; the stalled ones hold no more server connections
    than their slots; a client from another address on the same listener
    and one on another listener log in and query."""
    ferry = ferry_factory(make_config(
        pg_listener(pg_pair, max_login_clients=100, max_login_clients_per_source=20,
                    client_login_timeout=60),
        pg_listener(pg_pair, name="pg2"), workers=2))
    silent = [raw_connect(ferry, "pg", "127.0.0.2") for _ in range(300)]
    stalled = []
    for _ in range(40):
        s = raw_connect(ferry, "pg", "127.0.0.3")
        s.sendall(pg_startup())
        stalled.append(s)
    try:
        wait_for(lambda: listener_status(ferry, "pg")["clients_refused_total"] >= 280 + 20,
                 timeout=20, what="300 refusals")
        # a silent one beyond the limit that sends its startup packet now
        # gets the refusal (ferry waits for it, as libpq needs)
        late = silent[-1]
        late.sendall(pg_startup())
        late.settimeout(10)
        assert late.recv(1) == b"E"
        assert b"53300" in read_all_until_closed(late, 10)
        assert listener_status(ferry, "pg")["clients_logging_in"] == 40
        # the first 20 of 127.0.0.3 got AuthenticationSASL from the server;
        # the other 20 a FATAL 53300 from ferry, once their startup packet was in
        refused = 0
        for s in stalled:
            s.settimeout(10)
            first = s.recv(1)
            if first == b"E":
                refused += 1
                s.setblocking(True)
                rest = read_all_until_closed(s, 10)
                err = pg_error_fields(rest[4:])
                assert err["S"] == "FATAL" and err["C"] == "53300", err
                assert "too many clients logging in from this address on listener pg " \
                       "(max_login_clients_per_source 20)" in err["M"]
            else:
                assert first == b"R"
        assert refused == 20
        # only the stalled logins with a slot cost a server connection
        assert metric(ferry, "ferry_backend_connections", "pg") == 20
        # healthy clients: another address on the same listener, and pg2
        assert query_one(pg_dsn(ferry)) == 42
        assert query_one(pg_dsn(ferry, "pg2")) == 42
        # the refusal log lines are rate-limited: far fewer than 300
        lines = ferry.log_text().count("event=listener.connection_refused")
        assert 1 <= lines <= 20, lines
    finally:
        close_all(silent + stalled)


def test_pg_max_login_clients(ferry_factory, pg_pair):
    """The listener-wide limit, from several addresses: psycopg2 gets FATAL
    53300 naming max_login_clients; a client that logs in leaves room."""
    ferry = ferry_factory(make_config(
        pg_listener(pg_pair, max_login_clients=6, max_login_clients_per_source=3), workers=1))
    socks = [raw_connect(ferry, "pg", f"127.0.0.{2 + i // 3}") for i in range(6)]
    try:
        wait_for(lambda: listener_status(ferry, "pg")["clients_logging_in"] == 6, timeout=10,
                 what="six logins under way")
        with pytest.raises(psycopg2.OperationalError) as err:
            harness.pg.connect(pg_dsn(ferry))
        assert "ferry: too many clients logging in on listener pg (max_login_clients 6)" \
            in str(err.value)
        close_all(socks[:1])
        wait_for(lambda: listener_status(ferry, "pg")["clients_logging_in"] == 5, timeout=10,
                 what="a slot to free")
        assert query_one(pg_dsn(ferry)) == 42
        # a logged-in client holds no login slot
        conn = harness.pg.connect(pg_dsn(ferry))
        assert listener_status(ferry, "pg")["clients_logging_in"] == 5
        conn.close()
    finally:
        close_all(socks)


def test_pg_login_timeout(ferry_factory, pg_pair):
    """client_login_timeout: a client that sends nothing, and one stalled in
    the server's SCRAM exchange (passthrough), get FATAL 08P01 "login
    timeout" after about the configured time, and are closed."""
    ferry = ferry_factory(make_config(pg_listener(pg_pair, client_login_timeout=1.5), workers=1))
    silent = raw_connect(ferry, "pg")
    stalled = raw_connect(ferry, "pg")
    stalled.sendall(pg_startup())
    stalled.settimeout(10)
    read_pg_message(stalled, b"R")      # the server's AuthenticationSASL: now stall
    start = time.monotonic()
    for s in (silent, stalled):
        data = read_all_until_closed(s, 15)
        assert data[:1] == b"E", data
        err = pg_error_fields(data[5:])
        assert err["S"] == "FATAL" and err["C"] == "08P01", err
        assert err["M"].startswith("ferry: login timeout: the client did not complete its login "
                                   "within 1.5s (client_login_timeout of listener pg)"), err
        s.close()
    assert time.monotonic() - start < 10
    assert listener_status(ferry, "pg")["login_timeouts_total"] == 2
    wait_for(lambda: metric(ferry, "ferry_backend_connections", "pg") == 0, timeout=10,
             what="the stalled login's server connection to close")
    # a normal client is not affected by the short timeout once logged in
    conn = harness.pg.connect(pg_dsn(ferry))
    time.sleep(2)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


def test_pg_terminated_login_timeout(ferry_factory, pg_pair):
    """Terminated auth: stalled in ferry's own SCRAM exchange, the same error."""
    users = [{"name": harness.pg.TEST_USER, "password": harness.pg.TEST_PASSWORD}]
    ferry = ferry_factory(make_config(pg_listener(
        pg_pair, client_login_timeout=1, auth={"mode": "terminated", "users": users}), workers=1))
    s = raw_connect(ferry, "pg")
    s.sendall(pg_startup())
    s.settimeout(10)
    read_pg_message(s, b"R")
    body = read_pg_message(s, b"E")
    assert pg_error_fields(body)["C"] == "08P01"
    assert metric(ferry, "ferry_backend_connections", "pg") == 0
    s.close()


def read_my_packet(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise EOFError("closed")
        head += chunk
    n = int.from_bytes(head[:3], "little")
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise EOFError("closed")
        body += chunk
    return head[3], body


def my_err(body):
    assert body[:1] == b"\xff", body
    return int.from_bytes(body[1:3], "little"), body[9:].decode()


def test_mysql_stalled_clients_are_bounded(ferry_factory, mariadb_pair):
    """MySQL passthrough connects to the server at accept: only clients with
    a login slot do; the rest get ERR 1040 at once (before any greeting)
    and no server connection; a healthy client logs in meanwhile."""
    ferry = ferry_factory(make_config(
        my_listener(mariadb_pair, max_login_clients=50, max_login_clients_per_source=10,
                    client_login_timeout=60),
        my_listener(mariadb_pair, name="my2"), workers=2))
    socks = [raw_connect(ferry, "my", "127.0.0.2") for _ in range(100)]
    try:
        greeted = refused = 0
        for s in socks:
            seq, body = read_my_packet(s)
            if body[:1] == b"\xff":
                code, msg = my_err(body)
                assert (seq, code) == (0, 1040)
                assert "ferry: too many clients logging in from this address on listener my " \
                       "(max_login_clients_per_source 10)" in msg
                refused += 1
            else:
                assert body[:1] == b"\x0a"     # the server's Handshake v10
                greeted += 1
        assert (greeted, refused) == (10, 90)
        assert metric(ferry, "ferry_backend_connections", "my") == 10
        for name in ("my", "my2"):
            assert harness.mariadb.run_query(my_connect(ferry, name), "SELECT 6 * 7") == [(42,)]
    finally:
        close_all(socks)


def test_mysql_login_timeout(ferry_factory, mariadb_pair):
    """A client that takes the greeting and answers nothing gets ERR 1159
    after client_login_timeout, with the sequence id after its response."""
    ferry = ferry_factory(make_config(my_listener(mariadb_pair, client_login_timeout=1),
                                      workers=1))
    s = raw_connect(ferry, "my")
    seq, body = read_my_packet(s)
    assert body[:1] == b"\x0a"
    seq, body = read_my_packet(s)
    code, msg = my_err(body)
    assert (seq, code) == (2, 1159)
    assert "ferry: login timeout" in msg
    assert read_all_until_closed(s, 10) == b""
    s.close()
    assert listener_status(ferry, "my")["login_timeouts_total"] == 1
    assert harness.mariadb.run_query(my_connect(ferry), "SELECT 1") == [(1,)]


def nofile(limit):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def test_check_warns_when_fd_limit_is_low(tmp_path, pg_pair):
    import subprocess
    config = make_config(pg_listener(pg_pair))      # max_client_connections 10000
    path = write_config(config, str(tmp_path / "ferry.json"))
    res = subprocess.run([harness.require_binary(), "check", "-c", path], capture_output=True,
                         text=True, timeout=10, preexec_fn=nofile(256))
    assert res.returncode == 0
    assert re.search(rf"^ferry: {re.escape(path)}: warning: the open-file limit \(256\) is below the "
                     r"\d+ descriptors the listeners' max_client_connections need", res.stderr,
                     re.M), res.stdout + res.stderr
    small = make_config(pg_listener(pg_pair, max_client_connections=20))
    path = write_config(small, str(tmp_path / "small.json"))
    res = subprocess.run([harness.require_binary(), "check", "-c", path], capture_output=True,
                         text=True, timeout=10, preexec_fn=nofile(256))
    assert res.returncode == 0 and "open-file limit" not in res.stderr, res.stderr


def test_descriptor_exhaustion_logs_once_a_second(ferry_factory, pg_pair, tmp_path):
    """Under a low open-file limit, ferry warns at start; clients past it
    fail for want of descriptors, and the log says so about once a second
    with a count of the lines it left out, not once per client."""
    ferry = harness.Ferry(make_config(pg_listener(pg_pair, max_client_connections=500),
                                      workers=1, log_level="info"),
                          tmp_path, argv_prefix=["prlimit", "--nofile=64:64", "--"])
    ferry_factory.created.append(ferry)
    ferry.start()
    assert "event=ferry.fd_limit_low" in ferry.log_text()
    socks = []
    deadline = time.monotonic() + 2.5
    try:
        while time.monotonic() < deadline:     # clients keep coming for 2.5 s
            try:
                s = raw_connect(ferry, "pg")
                s.sendall(pg_startup())
                socks.append(s)
            except OSError:
                pass
            if len(socks) > 200:
                close_all(socks[:100])
                del socks[:100]
        time.sleep(0.5)
        log = ferry.log_text()
        lines = [ln for ln in log.splitlines() if "too many open files" in ln]
        assert 1 <= len(lines) <= 8, "\n".join(lines[:20])
        assert any(re.search(r" suppressed=\d+$", ln) for ln in lines), "\n".join(lines)
    finally:
        close_all(socks)
    # with descriptors back, a client logs in
    wait_for(lambda: listener_status(ferry, "pg")["clients_active"] == 0, timeout=20,
             what="the sessions to end")
    assert query_one(pg_dsn(ferry)) == 42
