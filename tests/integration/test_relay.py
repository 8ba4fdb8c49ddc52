"""The byte relay under load: large results arrive intact, a thousand clients
at once all get their answers, and a client that stops reading does not make
ferry buffer without bound."""

import hashlib
import resource
import subprocess
import threading
import time

import psycopg2
import pytest

import harness
from fronts import both, listener_status, my_connect, my_listener, pg_dsn, pg_listener
from harness import make_config

# ~106 MB of COPY text: 110,000 rows of an int and 960 hex characters.
BIG_COPY = ("COPY (SELECT i, repeat(md5(i::text), 30) FROM generate_series(1, 110000) i) "
            "TO STDOUT")


class Digest:
    """A write-only file object for copy_expert that hashes and counts."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, data):
        data = data.encode() if isinstance(data, str) else data
        self.h.update(data)
        self.n += len(data)


def copy_digest(dsn):
    conn = psycopg2.connect(dsn)
    try:
        d = Digest()
        with conn.cursor() as cur:
            cur.copy_expert(BIG_COPY, d)
        return d.n, d.h.hexdigest()
    finally:
        conn.close()


def test_large_result_is_byte_identical(ferry_factory, pg_pair, mariadb_pair):
    ferry = ferry_factory(both(pg_pair, mariadb_pair))
    direct = copy_digest(pg_pair.primary.dsn())
    through = copy_digest(pg_dsn(ferry))
    assert direct[0] >= 100 * 1000 * 1000
    assert through == direct
    st = listener_status(ferry, "pg")
    assert st["bytes_from_servers_total"] >= direct[0]


def test_thousand_concurrent_clients(ferry_factory, pg_pair, mariadb_pair):
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * n), hard))
    # every client logs in at once from one address, which can pass the
    # login limits' defaults on a slow (sanitizer) build: this test is about
    # concurrent sessions, so the limits allow all of them
    limits = {"max_login_clients": n, "max_login_clients_per_source": n}
    ferry = ferry_factory(make_config(pg_listener(pg_pair, **limits),
                                      my_listener(mariadb_pair, **limits), workers=2))
    barrier = threading.Barrier(n + 1, timeout=120)
    results, errors = {}, []

    def client(i):
        conn = None
        try:
            conn = my_connect(ferry)
            barrier.wait()       # every client holds its connection at once
            with conn.cursor() as cur:
                cur.execute("SELECT %s, CONNECTION_ID()", (i,))
                results[i] = cur.fetchone()
            barrier.wait()
        except Exception as e:   # noqa: BLE001 - collected and asserted below
            errors.append(f"client {i}: {e!r}")
            barrier.abort()
        finally:
            if conn:
                conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    active = listener_status(ferry, "my")["clients_active"]
    barrier.wait()
    for t in threads:
        t.join(60)
    assert errors == []
    assert active == n
    assert sorted(r[0] for r in results.values()) == list(range(n))
    assert len({r[1] for r in results.values()}) == n   # n distinct server sessions
    harness.proc.wait_for(lambda: listener_status(ferry, "my")["clients_active"] == 0,
                          timeout=30, what="all 1000 sessions to close")


def test_slow_reader_does_not_grow_memory(ferry_factory, pg_pair):
    session_buffer = 64 * 1024
    ferry = ferry_factory(make_config(pg_listener(pg_pair, session_buffer=session_buffer),
                                      workers=1))
    host, port = ferry.listener_addr("pg")
    rss_before = ferry.rss_kib()
    # psql writes COPY output to a pipe nobody reads: once the pipe is full it
    # stops reading its socket, which is what a stalled client looks like.
    psql = subprocess.Popen(
        ["psql", "-X", "-h", host, "-p", str(port), "-U", "ferry_test", "-d", "app",
         "-c", BIG_COPY.replace("110000", "1000000")],
        env={"PGPASSWORD": "ferry_pw", "PATH": "/usr/bin:/bin"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        # Wait until the flow has stalled: bytes from the server stop moving.
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = listener_status(ferry, "pg")["bytes_from_servers_total"]
            if now != last:
                last, stable_since = now, time.monotonic()
            elif now > 0 and time.monotonic() - stable_since > 1.5:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the server-to-client flow never stalled")
        st = ferry.status()
        # ~1 GB was asked for; only kernel buffers plus ferry's bound moved.
        assert last < 64 * 1024 * 1024
        assert 0 < st["buffers"]["queued_bytes_peak"] <= session_buffer + st["buffers"]["read_bytes"]
        assert st["buffers"]["queued_bytes"] <= session_buffer + st["buffers"]["read_bytes"]
        assert ferry.rss_kib() - rss_before < 16 * 1024
        assert psql.poll() is None
    finally:
        psql.kill()
        psql.wait(10)
    harness.proc.wait_for(lambda: listener_status(ferry, "pg")["clients_active"] == 0,
                          timeout=30, what="the stalled session to close after its client died")
