"""What happens to open PostgreSQL sessions when the writer moves (until
ferry can move them without an error, which needs terminated auth): idle
ones are closed at once with a reconnect error, ones in a transaction are
stopped at their next statement with a retryable error, nothing more ever
reaches the old writer, and a statement in flight when the writer dies gets
"outcome unknown" — never a made-up success or failure."""

import socket
import struct
import time

import psycopg2
import pytest

import harness
from fronts import pg_dsn
from harness.proc import wait_for
from test_discovery import FAST, discovery_of, pg_discovered, writer_of
from test_ops import ctl

from harness import make_config


def start(ferry_factory, pair):
    ferry = ferry_factory(make_config(pg_discovered(pair), workers=2, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    return ferry


def switch_to_b(ferry, pair):
    """Planned switchover with the old writer still writable (the harshest
    case for fencing): promote B, then ask ferry to switch."""
    pair.replica.promote()
    host, port = ferry.admin_addr()
    res = ctl("switchover", "region-b", "--admin", f"http://{host}:{port}", "--timeout", "20")
    assert res.returncode == 0, res.stderr


def test_idle_session_closed_and_nothing_reaches_the_old_writer(ferry_factory, own_pg):
    ferry = start(ferry_factory, own_pg)
    own_pg.primary.query("CREATE TABLE marks (note text); GRANT ALL ON marks TO ferry_test",
                         dbname="app")
    idle = psycopg2.connect(pg_dsn(ferry))
    idle.autocommit = True
    idle.cursor().execute("SELECT 1")
    switch_to_b(ferry, own_pg)
    wait_for(lambda: "event=session.writer_moved" in ferry.log_text(), timeout=10,
             what="the idle session to be fenced")
    # closed like a server's admin shutdown (libpq reports the lost connection)
    with pytest.raises(psycopg2.OperationalError):
        idle.cursor().execute("INSERT INTO marks VALUES ('stale write')")
    assert ('reason="the writer of listener pg moved away from region-a; reconnect to reach the '
            'new writer"') in ferry.log_text()
    # the old writer is still writable, yet never saw the statement
    assert own_pg.primary.query("SELECT count(*) FROM marks", dbname="app") == [(0,)]
    fresh = psycopg2.connect(pg_dsn(ferry))
    cur = fresh.cursor()
    cur.execute("SELECT inet_server_port()")
    assert cur.fetchone() == (own_pg.replica.port,)
    fresh.close()


def test_transaction_gets_a_retryable_error_on_its_next_statement(ferry_factory, own_pg):
    ferry = start(ferry_factory, own_pg)
    own_pg.primary.query("CREATE TABLE marks (note text); GRANT ALL ON marks TO ferry_test",
                         dbname="app")
    conn = psycopg2.connect(pg_dsn(ferry))
    cur = conn.cursor()
    cur.execute("INSERT INTO marks VALUES ('in the open transaction')")   # BEGIN implied
    switch_to_b(ferry, own_pg)
    wait_for(lambda: "event=session.writer_moved" in ferry.log_text(), timeout=10,
             what="the busy session to be marked")
    with pytest.raises(psycopg2.errors.SerializationFailure) as err:    # 40001: retry
        cur.execute("INSERT INTO marks VALUES ('after the switch')")
    assert "transaction was rolled back; retry it" in str(err.value)
    with pytest.raises(psycopg2.errors.SerializationFailure):           # still the lost txn
        cur.execute("SELECT 1")
    conn.rollback()                                  # answered by ferry, then it hangs up
    wait_for(lambda: conn.closed or _dead(conn), timeout=10, what="the session to end")
    retry = psycopg2.connect(pg_dsn(ferry))          # the application's retry
    rc = retry.cursor()
    rc.execute("INSERT INTO marks VALUES ('retried') RETURNING inet_server_port()")
    assert rc.fetchone() == (own_pg.replica.port,)
    retry.commit()
    retry.close()
    wait_for(lambda: own_pg.primary.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND usename = 'ferry_test' "
        "AND application_name <> 'ferry-probe'", dbname="app") == [(0,)],
             timeout=10, what="the old session to be gone from region-a")
    assert own_pg.primary.query("SELECT count(*) FROM marks", dbname="app") == [(0,)]
    assert own_pg.replica.query("SELECT note FROM marks", dbname="app") == [("retried",)]


def _dead(conn):
    try:
        conn.cursor().execute("SELECT 1")
        return False
    except psycopg2.Error:
        return True


def test_statement_in_flight_when_the_writer_dies_is_outcome_unknown(ferry_factory, own_pg):
    from test_pg_protocol import error_fields, read_messages, startup_packet
    ferry = start(ferry_factory, own_pg)
    with socket.create_connection(ferry.listener_addr("pg"), timeout=10) as s:
        s.sendall(startup_packet())
        assert read_messages(s)[-1][0] == b"Z"
        q = b"SELECT pg_sleep(20)\0"
        s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
        time.sleep(0.5)
        own_pg.primary.stop(mode="immediate")
        msgs = read_messages(s, until=b"E-never")
    errors = [error_fields(body) for t, body in msgs if t == b"E"]
    assert errors, msgs
    last = errors[-1]
    assert last["S"] == "FATAL" and last["C"] == "08007"
    assert "its outcome is unknown" in last["M"]
