"""Memory per session is bounded by session_buffer (issue 18 item 3).

Clients that send and never read their answers must not make ferry hold
more than session_buffer per direction and session (plus one read): ferry
stops reading the side that feeds a full queue, counts the memory a queue
holds (not the payload bytes: a few bytes must not pin a whole buffer), and
gives the memory back once those sessions are gone. Meanwhile healthy
clients on the same ferry keep working.

PostgreSQL: the pipelined client that used to cost 124 MiB for one session
(thousands of tiny `Query` messages, answers never read: every answer read
from the server pinned a 32 KiB chunk). MySQL: ferry's tracker refuses a
command sent before the previous answer ended (issue 23), so there the
never-reading client asks for one huge result and ferry must stop reading
the server.
"""

import socket
import struct
import time

import psycopg2
import pytest

import harness
from fronts import listener_status, my_connect, my_listener, pg_dsn, pg_listener
from harness import make_config
from harness.mariadb import TEST_DB, TEST_PASSWORD, TEST_USER
from harness.proc import wait_for
from test_mysql_protocol import RawMy
from test_pg_protocol import read_messages, startup_packet

KIB, MIB = 1024, 1024 * 1024
SESSIONS = 20
SESSION_BUFFER = 64 * KIB
READ = 64 * KIB      # ferry's largest single read (status buffers.read_bytes)
# What a stalled session may hold (README, Performance): per direction
# session_buffer plus the last read before ferry stopped reading; plus a
# constant for the allocator's own slack. Measured here: 20 stalled
# pipelining sessions held 3.2 MiB over the base RSS (about 11 MiB); before
# the fix 18 MiB RSS (3,708 chunks of 32 KiB allocated, 116 MiB).
PER_SESSION = 2 * (SESSION_BUFFER + READ)
SLACK = 4 * MIB


def rss_counts(ferry):
    """False for the sanitizer build: ASan's allocator keeps freed memory in
    its quarantine (and malloc_trim does not reach it), so RSS says nothing
    about ferry's buffers there; the buffer counters still do."""
    with open(harness.require_binary(), "rb") as f:
        return b"AddressSanitizer" not in f.read()


def pg_query(sql):
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", 4 + len(body)) + body


def trickle(socks, msg, rounds, gap=0.001):
    """Sends msg once on every socket per round, `gap` apart, never reading:
    each answer then leaves the server as a write of its own, and ferry
    reads it as a read of its own (the case that used to pin a 32 KiB chunk
    per answer). Stops early once ferry stops taking them."""
    for _ in range(rounds):
        taken = 0
        for s in socks:
            try:
                taken += s.send(msg) == len(msg)
            except BlockingIOError:
                pass
        if not taken:
            return
        time.sleep(gap)


def connect_small(ferry, name):
    """A client socket with a small receive buffer and segment size: a
    client that stops reading is then felt by ferry after some KiB, not
    after the megabyte of send buffer the kernel gives a loopback
    connection (sized from its 64 KiB segments)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.settimeout(10)
    s.connect(ferry.listener_addr(name))
    return s


def push_until_stalled(socks, blob, quiet=2.0, limit=90.0):
    """Sends blob over and over on every socket (non-blocking, never
    reading) until no socket has taken a byte for `quiet` seconds: ferry has
    stopped reading them all. Returns the bytes each one took."""
    rest = [blob] * len(socks)
    sent = [0] * len(socks)
    quiet_since = time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        progress = False
        for i, s in enumerate(socks):
            try:
                n = s.send(rest[i])
            except BlockingIOError:
                continue
            sent[i] += n
            rest[i] = rest[i][n:] or blob
            progress = progress or n > 0
        if progress:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > quiet:
            return sent
        else:
            time.sleep(0.05)
    pytest.fail(f"ferry kept reading the never-reading clients for {limit}s: {sent}")


def wait_server_flow_stalled(ferry, name, quiet=2.0, limit=90.0):
    """Waits until bytes from the servers of listener `name` stop moving."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = listener_status(ferry, name)["bytes_from_servers_total"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            return now
        time.sleep(0.1)
    pytest.fail(f"the server-to-client flow of {name} never stalled")


def settled_rss(ferry):
    """RSS in bytes once it stopped falling (ferry trims a second after the
    queues were freed)."""
    time.sleep(2.5)
    last = ferry.rss_kib()
    for _ in range(20):
        time.sleep(0.5)
        now = ferry.rss_kib()
        if now >= last:
            break
        last = now
    return min(last, now) * KIB


def assert_bounded(ferry, base):
    """SESSIONS stalled sessions hold no more than their bound, in RSS and
    in the buffer counters."""
    held = ferry.rss_kib() * KIB - base
    bound = SESSIONS * PER_SESSION + SLACK
    b = ferry.status()["buffers"]
    print(f"base {base / MIB:.1f} MiB, held {held / MIB:.1f} MiB, bound {bound / MIB:.1f} MiB, "
          f"buffers {b}")
    assert held < bound or not rss_counts(ferry), \
        f"{held / MIB:.1f} MiB held by {SESSIONS} stalled sessions (bound {bound / MIB:.1f} MiB)"
    assert b["read_bytes"] == READ
    # most memory one direction of one session ever held: session_buffer
    # plus what the last read before the stop added
    assert 0 < b["queued_bytes_peak"] <= SESSION_BUFFER + READ, b
    assert b["queued_bytes"] <= SESSIONS * PER_SESSION, b


def assert_returned(ferry, name, base):
    """Once the stalled sessions are gone their memory is too."""
    wait_for(lambda: listener_status(ferry, name)["clients_active"] == 0, timeout=30,
             what="the stalled sessions to close")
    assert ferry.status()["buffers"]["queued_bytes"] == 0
    assert settled_rss(ferry) - base < SLACK or not rss_counts(ferry)


def close_all(socks):
    for s in socks:
        s.close()


@pytest.fixture
def pg_ferry(ferry_factory, pg_pair):
    return ferry_factory(make_config(pg_listener(pg_pair, session_buffer=SESSION_BUFFER),
                                     workers=2, log_level="info"))


def healthy_pg(ferry):
    conn = psycopg2.connect(pg_dsn(ferry))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM generate_series(1, 1000)")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_pg_pipelined_clients_that_never_read(pg_ferry):
    ferry = pg_ferry
    assert healthy_pg(ferry) == 1000
    base = settled_rss(ferry)
    socks = []
    for _ in range(SESSIONS):
        s = connect_small(ferry, "pg")
        s.sendall(startup_packet())
        assert read_messages(s)[-1][0] == b"Z"
        s.setblocking(False)
        socks.append(s)
    try:
        trickle(socks, pg_query("SELECT 1"), 7000, gap=0.0005)
        # then as fast as ferry takes them, until it stops reading every client
        push_until_stalled(socks, pg_query("SELECT 1") * 2000)
        wait_server_flow_stalled(ferry, "pg")
        assert_bounded(ferry, base)
        # the other sessions of this ferry are not affected
        assert healthy_pg(ferry) == 1000
        wait_for(lambda: listener_status(ferry, "pg")["clients_active"] == SESSIONS,
                 timeout=30, what="the healthy session to close")
    finally:
        close_all(socks)
    assert_returned(ferry, "pg", base)
    assert healthy_pg(ferry) == 1000


@pytest.fixture
def my_ferry(ferry_factory, mariadb_pair):
    return ferry_factory(make_config(my_listener(mariadb_pair, session_buffer=SESSION_BUFFER),
                                     workers=2, log_level="info"))


def healthy_my(ferry):
    conn = my_connect(ferry)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM seq_1_to_1000")
            return cur.fetchone()[0]
    finally:
        conn.close()


# ~400 MB per session if ferry kept reading
HUGE_RESULT = "SELECT REPEAT('x', 1000000) FROM seq_1_to_400"


def test_mysql_huge_results_never_read(my_ferry):
    ferry = my_ferry
    assert healthy_my(ferry) == 1000
    base = settled_rss(ferry)
    clients = [RawMy(ferry).login(TEST_USER, TEST_PASSWORD, TEST_DB) for _ in range(SESSIONS)]
    try:
        for c in clients:
            c.send(b"\x03" + HUGE_RESULT.encode())
        moved = wait_server_flow_stalled(ferry, "my")
        # ferry stopped reading the servers: only its bound and the kernel's
        # socket buffers moved, not the 8 GB asked for
        assert moved < SESSIONS * 16 * MIB, moved
        assert_bounded(ferry, base)
        assert healthy_my(ferry) == 1000
    finally:
        for c in clients:
            c.close()
    assert_returned(ferry, "my", base)
    assert healthy_my(ferry) == 1000


def test_memory_is_returned_after_large_queues(ferry_factory, pg_pair):
    """Sessions with a large session_buffer may hold much while their
    clients stall; once they are gone ferry gives it back (malloc_trim),
    rather than keeping its high-water mark."""
    big = 4 * MIB
    ferry = ferry_factory(make_config(pg_listener(pg_pair, session_buffer=big), workers=1,
                                      log_level="info"))
    assert healthy_pg(ferry) == 1000
    base = settled_rss(ferry)
    socks = []
    for _ in range(SESSIONS):
        s = socket.create_connection(ferry.listener_addr("pg"), timeout=10)
        s.sendall(startup_packet())
        assert read_messages(s)[-1][0] == b"Z"
        s.setblocking(False)
        socks.append(s)
    try:
        # large answers, never read: each session's queue towards its client fills
        push_until_stalled(socks, pg_query("SELECT repeat('x', 100000)") * 20)
        wait_server_flow_stalled(ferry, "pg")
        b = ferry.status()["buffers"]
        assert b["queued_bytes"] >= SESSIONS * big // 2, b
        held = ferry.rss_kib() * KIB - base
        assert held >= SESSIONS * big // 2
        assert held < SESSIONS * 2 * (big + READ) + SLACK or not rss_counts(ferry)
    finally:
        close_all(socks)
    wait_for(lambda: listener_status(ferry, "pg")["clients_active"] == 0, timeout=30,
             what="the stalled sessions to close")
    after = settled_rss(ferry)
    print(f"base {base / MIB:.1f} MiB, held {held / MIB:.1f} MiB, after {after / MIB:.1f} MiB")
    assert after - base < SLACK or not rss_counts(ferry), \
        f"{(after - base) / MIB:.1f} MiB kept after the sessions closed"
