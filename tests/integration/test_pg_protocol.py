"""The PostgreSQL listener is protocol-aware: it answers the startup phase
itself, maps cancel keys, checks every message length, tracks transaction
state, and reacts to a demoted writer's read-only errors."""

import socket
import struct
import subprocess
import threading
import time

import psycopg
import psycopg2
import pytest

import harness
from fronts import pg_dsn, pg_listener
from harness import make_config
from harness.proc import wait_for


@pytest.fixture
def ferry(ferry_factory, pg_pair):
    return ferry_factory(make_config(pg_listener(pg_pair), workers=2))


def startup_packet(user="postgres", database="postgres", version=196608):
    params = b"".join(k.encode() + b"\0" + v.encode() + b"\0"
                      for k, v in (("user", user), ("database", database))) + b"\0"
    body = struct.pack("!I", version) + params
    return struct.pack("!I", len(body) + 4) + body


def read_messages(sock, until=b"Z", timeout=10):
    """Reads (type, body) messages until one of type `until` or EOF."""
    sock.settimeout(timeout)
    buf, out = b"", []
    while True:
        while len(buf) >= 5:
            t, n = buf[:1], struct.unpack("!I", buf[1:5])[0]
            if len(buf) < 1 + n:
                break
            out.append((t, buf[5:1 + n]))
            buf = buf[1 + n:]
            if t == until:
                return out
        data = sock.recv(65536)
        if not data:
            return out
        buf += data


def error_fields(body):
    return {chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f}


def connect_raw(ferry):
    return socket.create_connection(ferry.listener_addr("pg"), timeout=10)


def test_cancel_through_ferry(ferry):
    conn = psycopg2.connect(pg_dsn(ferry))
    cur = conn.cursor()
    cur.execute("SELECT pg_backend_pid()")
    real_pid = cur.fetchone()[0]
    assert conn.get_backend_pid() != real_pid      # the client holds ferry's key, not the server's
    threading.Timer(0.5, conn.cancel).start()
    start = time.monotonic()
    with pytest.raises(psycopg2.errors.QueryCanceled):
        cur.execute("SELECT pg_sleep(30)")
    assert time.monotonic() - start < 20
    conn.rollback()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    conn.close()
    assert "event=cancel.forwarded" in ferry.log_text()


def test_psycopg3_cancel(ferry):
    with psycopg.connect(pg_dsn(ferry), autocommit=True) as conn:
        threading.Timer(0.5, conn.cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")


@pytest.mark.parametrize("payload, sqlstate", [
    (b"\x00\x00\x00\x03garbage", "08P01"),                       # length below the minimum
    (struct.pack("!I", 1 << 30) + b"x" * 8, "08P01"),           # oversized startup claim
    (startup_packet(version=2 << 16), "0A000"),                  # protocol 2.0
])
def test_bad_startup_gets_a_fatal_error(ferry, payload, sqlstate):
    with connect_raw(ferry) as s:
        s.sendall(payload)
        msgs = read_messages(s, until=b"E")
    assert msgs and msgs[-1][0] == b"E"
    fields = error_fields(msgs[-1][1])
    assert fields["S"] == "FATAL" and fields["C"] == sqlstate
    assert fields["M"].startswith("ferry: ")
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 7") == [(7,)]   # others unaffected


@pytest.mark.parametrize("size", [10_021, 12_000, 40_000])
def test_oversized_first_packet_gets_a_fatal_error(ferry, size):
    """A startup packet longer than PostgreSQL's 10,000-byte limit, arriving
    in one read (more than the startup buffer holds): ferry answers 08P01
    like any invalid startup length, and under the sanitizer build it does so
    without undefined behaviour (the teardown checks the log)."""
    bystander = psycopg2.connect(pg_dsn(ferry))
    pad = size - len(startup_packet())
    with connect_raw(ferry) as s:
        s.sendall(startup_packet(user="u" * pad))
        msgs = read_messages(s, until=b"E")
    assert msgs and msgs[-1][0] == b"E"
    fields = error_fields(msgs[-1][1])
    assert fields["S"] == "FATAL" and fields["C"] == "08P01"
    assert fields["M"].startswith("ferry: ")
    cur = bystander.cursor()
    cur.execute("SELECT 7")
    assert cur.fetchone() == (7,)
    bystander.close()
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 8") == [(8,)]
    assert ferry.is_running()


def test_ssl_request_is_declined_then_startup_proceeds(ferry):
    with connect_raw(ferry) as s:
        s.sendall(struct.pack("!II", 8, 80877103))
        assert s.recv(1) == b"N"
        s.sendall(startup_packet())
        msgs = read_messages(s)
    assert msgs[-1] == (b"Z", b"I")
    keys = [m for m in msgs if m[0] == b"K"]
    assert len(keys) == 1 and len(keys[0][1]) == 8


def test_hostile_lengths_after_startup(ferry):
    bystander = psycopg2.connect(pg_dsn(ferry))
    with connect_raw(ferry) as s:
        s.sendall(startup_packet())
        assert read_messages(s)[-1][0] == b"Z"
        s.sendall(b"Q" + struct.pack("!I", 0x7fffffff) + b"SELECT 1")   # a 2 GB claim
        msgs = read_messages(s, until=b"E")
    fields = error_fields(msgs[-1][1])
    assert fields["C"] == "08P01" and "invalid message length" in fields["M"]
    with bystander.cursor() as cur:
        cur.execute("SELECT 8")
        assert cur.fetchone() == (8,)
    bystander.close()


def test_flood_of_tiny_messages_keeps_memory_bounded(ferry):
    rss_before = ferry.rss_kib()
    with connect_raw(ferry) as s:
        s.sendall(startup_packet())
        assert read_messages(s)[-1][0] == b"Z"
        sync = b"S\x00\x00\x00\x04"
        for _ in range(20):
            s.sendall(sync * 20000)        # 400,000 Syncs: each answered by ReadyForQuery
        s.sendall(b"X\x00\x00\x00\x04")
        s.settimeout(30)
        total = 0
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            total += len(data)
    assert total == 400000 * 6
    assert ferry.rss_kib() - rss_before < 32 * 1024


def test_sessions_show_transaction_state(ferry):
    conn = psycopg2.connect(pg_dsn(ferry))
    cur = conn.cursor()
    cur.execute("SELECT 1")           # psycopg2 opens a transaction
    import json
    doc = json.loads(ferry.http_get("/v1/sessions")[1])
    assert [x["transaction"] for x in doc["sessions"]] == ["in_transaction"]
    conn.rollback()
    doc = json.loads(ferry.http_get("/v1/sessions")[1])
    assert [x["transaction"] for x in doc["sessions"]] == ["idle"]
    conn.close()


def test_listen_notify_copy_and_notice(ferry):
    listener = psycopg2.connect(pg_dsn(ferry))
    listener.autocommit = True
    listener.cursor().execute("LISTEN ferry_channel")
    talker = psycopg2.connect(pg_dsn(ferry))
    talker.autocommit = True
    cur = talker.cursor()
    cur.execute("NOTIFY ferry_channel, 'hello'")
    cur.execute("DO $$ BEGIN RAISE NOTICE 'ferry notice'; END $$")
    assert any("ferry notice" in n for n in talker.notices)
    wait_for(lambda: (listener.poll(), listener.notifies)[1], timeout=10, what="the notification")
    assert listener.notifies[0].payload == "hello"
    cur.execute("CREATE TEMP TABLE c (x int)")
    import io
    cur.copy_expert("COPY c FROM STDIN", io.StringIO("".join(f"{i}\n" for i in range(10000))))
    out = io.StringIO()
    cur.copy_expert("COPY c TO STDOUT", out)
    assert out.getvalue().count("\n") == 10000
    listener.close()
    talker.close()


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes(ferry, pg_pair, mode):
    host, port = ferry.listener_addr("pg")
    env = {"PGPASSWORD": "ferry_pw", "PATH": "/usr/bin:/bin"}
    pgbench = "/usr/lib/postgresql/15/bin/pgbench"
    subprocess.run([pgbench, "-i", "-s", "1", "-q", "-h", host, "-p", str(port), "-U", "ferry_test",
                    "app"], env=env, check=True, capture_output=True, timeout=120)
    res = subprocess.run([pgbench, "-M", mode, "-c", "4", "-t", "50", "-h", host, "-p", str(port),
                          "-U", "ferry_test", "app"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "number of transactions actually processed: 200/200" in res.stdout
    assert "number of failed transactions: 0" in res.stdout


def test_read_only_error_triggers_a_probe_round(ferry_factory):
    with harness.PgPair() as pair:
        cfg = make_config(pg_listener(pair, probe={"user": "ferry_test", "password": "ferry_pw"}),
                          workers=1, discovery={"probe_interval": 60, "probe_timeout": 5})
        ferry = ferry_factory(cfg)
        wait_for(lambda: ferry.status()["discovery"]["listeners"][0]["writer"] == "region-a",
                 timeout=10, what="region-a as writer")
        conn = psycopg2.connect(pg_dsn(ferry))
        conn.autocommit = True
        pair.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
        pair.primary.query("SELECT pg_reload_conf()")
        time.sleep(0.3)
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            conn.cursor().execute("CREATE TABLE t_ro (x int)")
        wait_for(lambda: ferry.status()["discovery"]["listeners"][0]["writer"] is None,
                 timeout=15, what="the demoted writer to be dropped long before the next round")
        conn.close()
