"""listeners[].client_idle_timeout (issue 18 item 11): a client that is idle
(logged in, nothing in flight, outside a transaction) and sends nothing for
that long gets its protocol's idle-timeout error and is closed, its backend
with it: PostgreSQL FATAL 57P05 (as PostgreSQL's idle_session_timeout),
MySQL ERR 4031 (as MySQL 8's wait_timeout), with the sequence id the client
expects for the answer to its next command. Clients that keep sending, that
sit in an open transaction, or whose statement runs longer than the timeout
are not cut; without the key nothing is."""

import os
import select
import socket
import struct
import threading
import time

import psycopg2
import pymysql
import pytest

import harness
from fronts import listener_status, my_listener, pg_dsn, pg_listener
from harness import make_config
from harness.proc import wait_for

TIMEOUT = 2         # client_idle_timeout of the "on" listeners, seconds
SWEEP = 1           # ferry looks for idle clients once a second
SLACK = 3           # a loaded 2-CPU machine: generous


@pytest.fixture
def ferry(ferry_factory, pg_pair, mariadb_pair):
    return ferry_factory(make_config(
        pg_listener(pg_pair, "pg", client_idle_timeout=TIMEOUT),
        pg_listener(pg_pair, "pg_off"),
        my_listener(mariadb_pair, "my", client_idle_timeout=TIMEOUT),
        my_listener(mariadb_pair, "my_off"), workers=2))


def pg_connect(ferry, name, app):
    conn = psycopg2.connect(pg_dsn(ferry, name), application_name=app)
    conn.autocommit = True
    return conn


def pg_query(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall() if cur.description else []


def my_connect(ferry, name, **kw):
    host, port = ferry.listener_addr(name)
    return harness.mariadb.connect(host, port, **kw)


def my_query(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall()) if cur.description else []


def read_until_eof(sock, timeout):
    """Everything the peer sends until it closes; raises if it has not
    closed within timeout seconds."""
    sock.setblocking(False)
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"connection still open after {timeout}s (got {data!r})"
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            continue
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def backends(pg_pair, app):
    return pg_pair.primary.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))[0][0]


def test_postgresql_idle_client_gets_57P05_and_is_closed(ferry, pg_pair):
    conn = pg_connect(ferry, "pg", "idle-cut")
    assert pg_query(conn, "SELECT 1") == [(1,)]
    assert backends(pg_pair, "idle-cut") == 1
    start = time.monotonic()
    sock = socket.socket(fileno=os.dup(conn.fileno()))   # the client's own connection
    data = read_until_eof(sock, TIMEOUT + SWEEP + SLACK)
    elapsed = time.monotonic() - start
    sock.close()
    assert elapsed >= TIMEOUT - 0.2, f"cut after {elapsed:.2f}s, before client_idle_timeout"
    # one ErrorResponse: FATAL, SQLSTATE 57P05, PostgreSQL's own words
    assert data[:1] == b"E" and len(data) == 1 + struct.unpack("!I", data[1:5])[0]
    fields = dict((f[:1], f[1:].decode()) for f in data[5:].split(b"\0") if f)
    assert fields[b"S"] == "FATAL" and fields[b"C"] == "57P05", fields
    assert "terminating connection due to idle-session timeout" in fields[b"M"]
    # its backend went with it
    wait_for(lambda: backends(pg_pair, "idle-cut") == 0, timeout=10, what="backend closed")
    conn.close()

    # libpq reports a closed connection on the next statement, exactly as
    # it does after PostgreSQL's own idle_session_timeout (it drops the
    # FATAL that arrived while the connection was idle)
    conn = pg_connect(ferry, "pg", "idle-cut")
    time.sleep(TIMEOUT + SWEEP + SLACK)
    with pytest.raises(psycopg2.OperationalError, match="server closed the connection"):
        pg_query(conn, "SELECT 1")
    conn.close()
    assert listener_status(ferry, "pg")["idle_timeouts_total"] == 2
    _, metrics = ferry.http_get("/metrics")
    assert 'ferry_errors_total{listener="pg",class="idle_timeout"} 2' in metrics
    assert "idle-session timeout" in ferry.log_text()


def test_mysql_idle_client_gets_4031_and_is_closed(ferry):
    conn = my_connect(ferry, "my")
    assert my_query(conn, "SELECT 1") == [(1,)]
    start = time.monotonic()
    data = read_until_eof(conn._sock, TIMEOUT + SWEEP + SLACK)
    elapsed = time.monotonic() - start
    assert elapsed >= TIMEOUT - 0.2, f"cut after {elapsed:.2f}s, before client_idle_timeout"
    # one ERR packet, sequence id 1: the answer to the client's next command
    length, seq = int.from_bytes(data[:3], "little"), data[3]
    assert len(data) == 4 + length and seq == 1 and data[4] == 0xFF, data
    code, state = struct.unpack("<H", data[5:7])[0], data[8:13].decode()
    assert (code, state) == (4031, "HY000")
    assert b"idle-session timeout" in data
    conn.close()

    # a client library reads it as its next command's error
    conn = my_connect(ferry, "my")
    time.sleep(TIMEOUT + SWEEP + SLACK)
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_query(conn, "SELECT 1")
    assert e.value.args[0] == 4031
    conn.close()
    assert listener_status(ferry, "my")["idle_timeouts_total"] == 2


def test_busy_clients_are_not_cut(ferry, pg_pair, mariadb_pair):
    """Past several timeouts: a client that keeps sending, one in an open
    transaction, one whose statement runs longer than the timeout, and
    idle clients of listeners without the key all still work."""
    span = 2 * TIMEOUT + SWEEP + 1
    pg_txn = pg_connect(ferry, "pg", "idle-txn")
    pg_txn.autocommit = False
    pg_query(pg_txn, "SELECT 1")                        # BEGIN went with it
    my_txn = my_connect(ferry, "my")
    my_query(my_txn, "BEGIN")
    pg_idle_off = pg_connect(ferry, "pg_off", "idle-off")
    my_idle_off = my_connect(ferry, "my_off")
    pg_long, my_long = pg_connect(ferry, "pg", "idle-long"), my_connect(ferry, "my")
    pg_chat, my_chat = pg_connect(ferry, "pg", "idle-chat"), my_connect(ferry, "my")
    results = {}

    def long_statement(key, fn):
        try:
            results[key] = fn()
        except Exception as e:     # noqa: BLE001 - reported below
            results[key] = e

    threads = [threading.Thread(target=long_statement, args=(
                   "pg", lambda: pg_query(pg_long, f"SELECT pg_sleep({span}), 'pg'"))),
               threading.Thread(target=long_statement, args=(
                   "my", lambda: my_query(my_long, f"SELECT SLEEP({span}), 'my'")))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + span
    while time.monotonic() < deadline:
        assert pg_query(pg_chat, "SELECT 2") == [(2,)]
        assert my_query(my_chat, "SELECT 2") == [(2,)]
        time.sleep(TIMEOUT / 4)
    for t in threads:
        t.join(span + 30)
    assert results == {"pg": [("", "pg")], "my": [(0, "my")]}

    pg_query(pg_txn, "SELECT 3")
    pg_txn.commit()
    my_query(my_txn, "SELECT 3")
    my_query(my_txn, "COMMIT")
    assert pg_query(pg_idle_off, "SELECT 4") == [(4,)]
    assert my_query(my_idle_off, "SELECT 4") == [(4,)]
    # the transaction ended: now it is idle, and cut like any other
    wait_for(lambda: listener_status(ferry, "pg")["idle_timeouts_total"] >= 3,
             timeout=TIMEOUT + SWEEP + SLACK + 2 * TIMEOUT, what="idle clients cut")
    for c in (pg_txn, pg_idle_off, pg_long, pg_chat, my_txn, my_idle_off, my_long, my_chat):
        c.close()
    assert listener_status(ferry, "pg_off")["idle_timeouts_total"] == 0
    assert listener_status(ferry, "my_off")["idle_timeouts_total"] == 0
