"""TCP keepalive and TCP_USER_TIMEOUT on ferry's connections (issue 18 item
11): every backend connection, sessions and writer-discovery probes alike,
carries listeners[].server_tcp_keepalive and server_tcp_user_timeout, and
client connections client_tcp_keepalive, read back from ferry's own sockets.
And what they are for: a writer that vanishes behind a partition (packets
dropped, no RST, no FIN) ends a statement in flight there in about
server_tcp_user_timeout, instead of after the kernel's ~15 minutes."""

import socket
import struct
import threading
import time

import psycopg2
import pymysql
import pytest

import harness
from harness import cluster, listener, make_config
from harness.sockopts import tcp_connections
from test_pg_protocol import error_fields, read_messages, startup_packet

PROBE = {"user": "ferry_test", "password": "ferry_pw"}
FAST = {"probe_interval": 0.2, "probe_timeout": 1, "writer_down_after": 2}


def options(conn):
    return (conn["keepalive"], conn["keepidle"], conn["keepintvl"], conn["keepcnt"],
            conn["user_timeout_ms"])


def to_port(conns, port):
    return [options(c) for c in conns if c["peer"][1] == port]


def from_port(conns, port):
    return [options(c) for c in conns if c["local"][1] == port]


def test_socket_options_on_sessions_probes_and_clients(ferry_factory, pg_pair, mariadb_pair):
    pg = listener("pg", "postgresql", [cluster("a", pg_pair.primary), cluster("b", pg_pair.replica)],
                  probe=PROBE, server_tcp_keepalive={"idle": 7, "interval": 3, "count": 4},
                  server_tcp_user_timeout=12.5,
                  client_tcp_keepalive={"idle": 20, "interval": 4, "count": 2})
    my = listener("my", "mysql", [cluster("a", mariadb_pair.primary),
                                  cluster("b", mariadb_pair.replica)],
                  probe=PROBE, server_tcp_keepalive={"idle": 8, "interval": 2, "count": 5},
                  server_tcp_user_timeout=9, client_tcp_keepalive=False)
    ferry = ferry_factory(make_config(pg, my, workers=1, discovery=FAST))
    harness.proc.wait_for(lambda: all(d["writer"] == "a" for d in ferry.status()["discovery"]["listeners"]),
                          timeout=15, what="both writers")     # every probe connected
    pg_conn = psycopg2.connect(harness.pg.dsn(*ferry.listener_addr("pg")))
    my_conn = harness.mariadb.connect(*ferry.listener_addr("my"))
    try:
        conns = tcp_connections(ferry.pid)
    finally:
        pg_conn.close()
        my_conn.close()
    pg_server = (True, 7, 3, 4, 12500)
    my_server = (True, 8, 2, 5, 9000)
    # the writer: the session's connection and the probe's
    assert to_port(conns, pg_pair.primary.port) == [pg_server] * 2
    assert to_port(conns, mariadb_pair.primary.port) == [my_server] * 2
    # the replica: probes only (libpq's parameters / set on Connector/C's socket)
    assert to_port(conns, pg_pair.replica.port) == [pg_server]
    assert to_port(conns, mariadb_pair.replica.port) == [my_server]
    # clients: keepalive as configured, or off; never a user timeout
    assert from_port(conns, ferry.listener_addr("pg")[1]) == [(True, 20, 4, 2, 0)]
    assert [o[0] for o in from_port(conns, ferry.listener_addr("my")[1])] == [False]


def test_socket_option_defaults(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(
        listener("pg", "postgresql", [cluster("a", pg_pair.primary)]), workers=1))
    conn = psycopg2.connect(harness.pg.dsn(*ferry.listener_addr("pg")))
    try:
        conns = tcp_connections(ferry.pid)
    finally:
        conn.close()
    assert to_port(conns, pg_pair.primary.port) == [(True, 10, 5, 3, 30000)]
    assert from_port(conns, ferry.listener_addr("pg")[1]) == [(True, 60, 10, 6, 0)]


USER_TIMEOUT = 2    # server_tcp_user_timeout in the partition tests, seconds
BOUND = 12          # the statement must have failed by then (the kernel: ~15 min)


def in_thread(fn):
    """Runs fn in a thread; returns a function that waits up to BOUND
    seconds and gives (seconds taken, exception raised)."""
    out = {}
    start = time.monotonic()

    def run():
        try:
            fn()
            out["error"] = None
        except Exception as e:     # noqa: BLE001 - the test looks at it
            out["error"] = e
        out["took"] = time.monotonic() - start

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result():
        t.join(BOUND)
        assert not t.is_alive(), f"the statement still hangs after {BOUND}s"
        return out["took"], out["error"]
    return result


@pytest.fixture
def partitioned(ferry_factory, pg_pair, mariadb_pair):
    """ferry (static routes) in front of both writers through NetCut relays."""
    with harness.NetCut(pg_pair.primary.host, pg_pair.primary.port) as pg_net, \
            harness.NetCut(mariadb_pair.primary.host, mariadb_pair.primary.port) as my_net:
        tcp = {"server_tcp_user_timeout": USER_TIMEOUT,
               "server_tcp_keepalive": {"idle": 1, "interval": 1, "count": 3}}
        ferry = ferry_factory(make_config(
            listener("pg", "postgresql", [cluster("a", f"127.0.0.1:{pg_net.port}")], **tcp),
            listener("my", "mysql", [cluster("a", f"127.0.0.1:{my_net.port}")], **tcp),
            workers=1))
        yield ferry, pg_net, my_net


def query(sql):
    q = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(q) + 4) + q


def pg_session(ferry):
    """A raw PostgreSQL session through ferry (libpq shows a FATAL that ends
    a session mid-statement only as "server closed the connection")."""
    s = socket.create_connection(ferry.listener_addr("pg"), timeout=10)
    s.sendall(startup_packet())
    assert read_messages(s)[-1][0] == b"Z"
    return s


def pg_outcome(sock, start):
    """(seconds since start, the last error's fields) once ferry closes."""
    msgs = read_messages(sock, until=b"never", timeout=BOUND)
    errors = [error_fields(body) for t, body in msgs if t == b"E"]
    return time.monotonic() - start, errors[-1] if errors else msgs


def test_statement_sent_into_a_partition_fails_in_about_the_user_timeout(partitioned):
    """What ferry sends is never acknowledged: TCP_USER_TIMEOUT ends the
    backend connection, and the client gets "outcome unknown" (PostgreSQL
    08007; MySQL: the connection closes, the client's own 2013)."""
    ferry, pg_net, my_net = partitioned
    pg = pg_session(ferry)
    host, port = ferry.listener_addr("my")
    my_conn = pymysql.connect(host=host, port=port, user="ferry_test", password="ferry_pw",
                              database="app", autocommit=True, read_timeout=BOUND + 10)
    my_conn.cursor().execute("SELECT 1")
    pg_net.blackhole()
    my_net.blackhole()
    start = time.monotonic()
    my_done = in_thread(lambda: my_conn.cursor().execute("SELECT 2"))
    pg.sendall(query("SELECT 2"))
    took, last = pg_outcome(pg, start)
    assert last["S"] == "FATAL" and last["C"] == "08007", last
    assert USER_TIMEOUT - 0.5 <= took < USER_TIMEOUT + 6, took
    took, error = my_done()
    assert isinstance(error, pymysql.err.OperationalError) and error.args[0] == 2013, error
    assert USER_TIMEOUT - 0.5 <= took < USER_TIMEOUT + 6, took
    pg.close()
    my_conn.close()


def test_statement_in_flight_when_the_writer_is_partitioned(partitioned):
    """The statement was delivered, then the writer vanished: nothing is
    unacknowledged, so keepalive probes go out; unanswered, they end the
    connection once server_tcp_user_timeout has passed without a word."""
    ferry, pg_net, _ = partitioned
    pg = pg_session(ferry)
    pg.sendall(query("SELECT pg_sleep(60)"))
    time.sleep(0.5)     # it reached the server
    pg_net.blackhole()
    took, last = pg_outcome(pg, time.monotonic())
    assert last["S"] == "FATAL" and last["C"] == "08007", last
    assert "its outcome is unknown" in last["M"]
    assert took < USER_TIMEOUT + 6, took
    pg.close()
