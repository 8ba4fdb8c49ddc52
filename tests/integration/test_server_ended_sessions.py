"""A session the server ends on its own is not revived (issue 24 items 1
and 5). When the server ends an idle session (pg_terminate_backend,
idle_session_timeout, MariaDB's KILL and wait_timeout) while its writer
stays the writer, the client sees what it would see directly: the server's
own error, once, and then a closed connection; ferry neither logs in again
(losing temporary tables, locks and session state behind the client's back)
nor adds an error of its own. A writer that really goes away still moves
idle sessions (test_failover_*, test_mysql_moves)."""

import os
import socket
import struct
import subprocess
import time

import psycopg2
import pymysql
import pytest

import harness
from fronts import listener_status, my_connect, pg_dsn
from harness import make_config
from harness.mariadb import TEST_PASSWORD as MY_PASSWORD, TEST_USER as MY_USER
from harness.proc import wait_for
from test_discovery import FAST, my_discovered, pg_discovered, writer_of

MODES = ["terminated", "passthrough"]


def pg_ferry(ferry_factory, pair, mode):
    options = {}
    if mode == "terminated":
        options["auth"] = {"mode": "terminated", "users": [
            {"name": harness.pg.TEST_USER, "password": harness.pg.TEST_PASSWORD}]}
    ferry = ferry_factory(make_config(pg_discovered(pair, **options), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    return ferry


def my_ferry(ferry_factory, pair, mode, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", MY_PASSWORD)
    options = {}
    if mode == "terminated":
        options["auth"] = {"mode": "terminated",
                           "users": [{"name": MY_USER, "password": MY_PASSWORD}]}
    ferry = ferry_factory(make_config(my_discovered(pair, **options), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")
    return ferry


def pg_backends(pair, app):
    return pair.primary.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))[0][0]


def pg_connect(ferry, app):
    conn = psycopg2.connect(pg_dsn(ferry))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET application_name = %s", (app,))
    return conn


def server_words(conn, timeout=5):
    """What reached the idle client before its connection ended: a list of
    (message type, {field code: value}) read off a copy of libpq's socket,
    and whether the connection ended (EOF) after them."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    deadline = time.monotonic() + timeout
    data = b""
    ended = False
    try:
        while time.monotonic() < deadline:     # a revived session may send more and more
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                ended = True
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        sock.close()
    messages = []
    while len(data) >= 5:
        kind, length = data[:1], struct.unpack("!I", data[1:5])[0]
        body, data = data[5:1 + length], data[1 + length:]
        fields = {}
        for part in body.split(b"\0"):
            if part:
                fields[chr(part[0])] = part[1:].decode()
        messages.append((kind, fields))
    return messages, ended


def assert_one_fatal(conn, sqlstate):
    messages, ended = server_words(conn)
    assert [(k, f.get("V"), f.get("C")) for k, f in messages] == [(b"E", "FATAL", sqlstate)], \
        messages
    assert ended, "the connection stayed open after the server's FATAL"


def assert_closed(conn):
    """The next statement finds the connection gone (no revived session)."""
    with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")


@pytest.mark.parametrize("mode", MODES)
def test_pg_idle_session_timeout_ends_the_session_once(ferry_factory, pg_pair, mode):
    ferry = pg_ferry(ferry_factory, pg_pair, mode)
    app = f"revive-timeout-{mode}"
    conn = pg_connect(ferry, app)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (a int)")
        cur.execute("SET idle_session_timeout = '1s'")
    time.sleep(3)
    # the server's FATAL, once, then the end (as direct); no new session
    # where "relation t does not exist"
    assert_one_fatal(conn, "57P05")
    assert_closed(conn)
    # nothing logs in again behind the client (the replayed SET would end
    # each new session after a second, for ever)
    time.sleep(2.5)
    assert pg_backends(pg_pair, app) == 0
    st = listener_status(ferry, "pg")
    assert st["sessions_moved"] == 0
    assert st["sessions_ended_by_server"] == 1
    assert st["failover_errors_total"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_pg_terminate_backend_of_an_idle_session_is_not_revived(ferry_factory, pg_pair, mode):
    ferry = pg_ferry(ferry_factory, pg_pair, mode)
    app = f"revive-kill-{mode}"
    conn = pg_connect(ferry, app)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (a int)")
    pg_pair.primary.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = %s", (app,))
    assert_one_fatal(conn, "57P01")
    assert_closed(conn)
    assert pg_backends(pg_pair, app) == 0
    st = listener_status(ferry, "pg")
    assert st["sessions_moved"] == 0 and st["sessions_ended_by_server"] == 1


def psql_stderr(dsn, sql):
    res = subprocess.run(["psql", "-X", dsn, "-c", sql], capture_output=True, text=True,
                         timeout=60)
    return res.stderr


@pytest.mark.parametrize("mode", MODES)
def test_pg_terminate_own_backend_gives_exactly_the_servers_fatal(ferry_factory, pg_pair, mode):
    ferry = pg_ferry(ferry_factory, pg_pair, mode)
    sql = "SELECT pg_terminate_backend(pg_backend_pid())"
    direct = psql_stderr(pg_pair.primary.dsn(), sql)
    through = psql_stderr(pg_dsn(ferry), sql)
    assert direct.count("FATAL") == 1, direct
    assert through == direct    # not followed by ferry's "its outcome is unknown"
    st = listener_status(ferry, "pg")
    assert st["sessions_ended_by_server"] == 1
    assert st["failover_errors_total"] == 0


def my_one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


@pytest.mark.parametrize("mode", MODES)
def test_mysql_wait_timeout_is_not_revived(ferry_factory, mariadb_pair, monkeypatch, mode):
    ferry = my_ferry(ferry_factory, mariadb_pair, mode, monkeypatch)
    conn = my_connect(ferry)
    my_one(conn, "CREATE TEMPORARY TABLE tt (a int)")
    my_one(conn, "SET SESSION wait_timeout = 2")
    time.sleep(4)
    with pytest.raises(pymysql.err.OperationalError) as err:
        my_one(conn, "SELECT * FROM tt")     # revived: 1146 Table 'tt' doesn't exist
    assert err.value.args[0] in (2006, 2013), err.value
    if mode == "terminated":
        st = listener_status(ferry, "my")
        assert st["sessions_moved"] == 0 and st["sessions_ended_by_server"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_mysql_client_that_kills_its_own_connection_is_not_revived(ferry_factory, mariadb_pair,
                                                                  monkeypatch, mode):
    ferry = my_ferry(ferry_factory, mariadb_pair, mode, monkeypatch)
    conn = my_connect(ferry)
    my_one(conn, "SET @mark = 42")
    own = conn.thread_id()    # the id ferry gave the client
    with pytest.raises(pymysql.err.OperationalError) as err:
        my_one(conn, f"KILL {own}")
    assert err.value.args[0] == 1927, err.value     # the server's own answer
    time.sleep(1)
    with pytest.raises(pymysql.err.OperationalError) as err:
        my_one(conn, "SELECT @mark")
    assert err.value.args[0] in (2006, 2013), err.value
    if mode == "terminated":
        st = listener_status(ferry, "my")
        assert st["sessions_moved"] == 0 and st["sessions_ended_by_server"] == 1
