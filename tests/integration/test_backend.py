"""When the backend is down or unreachable, the client's connection ends
promptly, the other listener keeps serving, and the listener recovers as soon
as the backend is back."""

import socket
import threading
import time

import psycopg2
import pymysql
import subprocess

import pytest

import harness
from fronts import listener_status, my_connect, my_listener, pg_dsn
from harness import cluster, listener, make_config
from harness.ports import free_port


class Blackhole:
    """A loopback port whose accept queue is full, so new SYNs are dropped
    and a connect hangs, like a host behind a dead route."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.fillers = []
        for _ in range(3):   # fill the queue; the later ones stay in SYN_SENT
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.1)

    def close(self):
        for s in self.fillers + [self.server]:
            s.close()


def pg_listener_to(port, **options):
    return listener("pg", "postgresql", [cluster("region-a", f"127.0.0.1:{port}", writer=True)],
                    **options)


def test_unreachable_backend_times_out_and_other_listener_serves(ferry_factory, mariadb_pair):
    hole = Blackhole()
    try:
        ferry = ferry_factory(make_config(pg_listener_to(hole.port, connect_timeout=0.5),
                                          my_listener(mariadb_pair), workers=2))
        start = time.monotonic()
        with pytest.raises(psycopg2.OperationalError) as err:
            psycopg2.connect(pg_dsn(ferry) + " connect_timeout=20")
        elapsed = time.monotonic() - start
        assert (f"ferry: cannot reach the writer region-a (127.0.0.1:{hole.port}): "
                "timed out after 0.5s") in str(err.value)
        # ferry gave up (0.5 s), not the client's own 20 s timeout
        assert elapsed < 15
        harness.proc.wait_for(lambda: "timed out after 0.5s" in ferry.log_text(), timeout=5,
                              what="the connect timeout log line")
        assert listener_status(ferry, "pg")["backend_connect_failures_total"] == 1
        assert listener_status(ferry, "pg")["clients_active"] == 0
        # the MySQL listener is unaffected
        conn = my_connect(ferry)
        with conn.cursor() as cur:
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        conn.close()
    finally:
        hole.close()


def test_refused_backend_ends_client_at_once(ferry_factory):
    port = free_port()   # nothing listens here
    ferry = ferry_factory(make_config(pg_listener_to(port), workers=1))
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(pg_dsn(ferry) + " connect_timeout=20")
    assert "ferry: cannot reach the writer region-a" in str(err.value)
    assert "connection refused" in str(err.value)
    assert listener_status(ferry, "pg")["backend_connect_failures_total"] == 1
    assert "connection refused" in ferry.log_text()


def test_mysql_client_gets_err_packet_when_backend_refuses(ferry_factory):
    port = free_port()
    ferry = ferry_factory(make_config(
        listener("my", "mysql", [cluster("region-a", f"127.0.0.1:{port}", writer=True)]), workers=1))
    with pytest.raises(pymysql.err.OperationalError) as err:
        my_connect(ferry)
    assert err.value.args[0] == 1053
    assert f"ferry: cannot reach the writer region-a (127.0.0.1:{port})" in err.value.args[1]
    # Connector/C (the mariadb CLI) shows ferry's words too: a server-sent
    # 2xxx number would be "malformed packet" to it
    host, lport = ferry.listener_addr("my")
    res = subprocess.run(["mariadb", "--no-defaults", "-h", host, "-P", str(lport), "-u", "x",
                          "-e", "SELECT 1"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "1053" in res.stderr, res.stderr
    assert "ferry: cannot reach the writer" in res.stderr and "malformed" not in res.stderr


def test_backend_restart_recovers(ferry_factory, pg_pair, mariadb_pair):
    cfg = make_config(
        listener("pg", "postgresql", [cluster("region-a", pg_pair.primary, writer=True)]),
        my_listener(mariadb_pair), workers=2)
    ferry = ferry_factory(cfg)
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 1") == [(1,)]
    pg_pair.primary.stop(mode="fast")
    try:
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(pg_dsn(ferry) + " connect_timeout=20")
        conn = my_connect(ferry)
        with conn.cursor() as cur:
            cur.execute("SELECT 7")
            assert cur.fetchone() == (7,)
        conn.close()
    finally:
        pg_pair.primary.start()
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 2") == [(2,)]
    assert ferry.status()["ready"] is True


class Gate:
    """A TCP forwarder to a server on a fixed port that a test can shut (new
    connections refused) and open again; the server itself stays up, so
    whatever connects after open() finds it ready."""

    def __init__(self, target):
        self.target = target
        self.port = free_port()
        self.listener = None
        self.open()

    def open(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def shut(self):
        self.listener.shutdown(socket.SHUT_RDWR)    # wakes the accept and stops listening
        self.listener.close()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while (data := a.recv(65536)):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_discovered_writer_blip_holds_and_retries(ferry_factory, pg_pair):
    """A discovered writer that refuses connections but stays the writer
    (discovery keeps it: a blip) does not fail a new client at once: it is
    held and the connect is retried until the writer takes it."""
    from test_discovery import FAST, writer_of
    from harness.proc import wait_for
    gate = Gate((pg_pair.primary.host, pg_pair.primary.port))
    slow = dict(FAST, probe_interval=60, writer_down_after=100)   # discovery will not drop it
    lcfg = listener("pg", "postgresql", [cluster("region-a", f"127.0.0.1:{gate.port}")],
                    probe={"user": "ferry_test", "password": "ferry_pw"})
    ferry = ferry_factory(make_config(lcfg, workers=1, discovery=slow))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    gate.shut()
    got = []
    t = threading.Thread(target=lambda: got.append(harness.pg.run_query(
        pg_dsn(ferry) + " connect_timeout=30", "SELECT inet_server_port()")))
    t.start()
    wait_for(lambda: ferry.log_text().count("event=backend.connect_failed") >= 2, timeout=10,
             what="a few connect attempts")
    gate.open()
    t.join(30)
    assert got == [[(pg_pair.primary.port,)]]
    assert listener_status(ferry, "pg")["clients_held"] == 0


def test_endpoint_names_are_resolved(ferry_factory, pg_pair):
    """A cluster endpoint given by name goes through the resolver (on the
    libuv threadpool); a name that does not resolve is a clear error."""
    ferry = ferry_factory(make_config(
        listener("byname", "postgresql", [cluster("a", f"localhost:{pg_pair.primary.port}",
                                                   writer=True)]),
        listener("nowhere", "postgresql", [cluster("a", "no-such-host.invalid:5432",
                                                    writer=True)]), workers=1))
    assert harness.pg.run_query(pg_dsn(ferry, "byname"), "SELECT 1") == [(1,)]
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(pg_dsn(ferry, "nowhere"))
    assert "ferry: cannot reach the writer a (no-such-host.invalid:5432): resolve:" in str(err.value)
