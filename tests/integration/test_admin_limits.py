"""The admin endpoint against slow, idle and greedy clients (issue 18 item 2).

/healthz, /metrics and authenticated POSTs keep answering while hundreds of
connections send nothing or a byte at a time; a request (or the taking of
its answer) that lasts over admin.request_timeout is cut off however active
it is; one client address holds at most admin.max_connections_per_peer
connections, and at admin.max_connections a new connection takes the place
of the oldest, so the liveness probe always gets in; requests that wait (a
switchover, a reload, the session list) hold up nobody, and the endpoint
restarts and stops cleanly under them.

The slow clients come from several loopback addresses (127.0.1.x, ...) so
that the per-peer limit does not simply close them.
"""

import http.client
import socket
import statistics
import threading
import time

import harness
from harness import cluster, listener, make_config
from harness.ports import free_port
from harness.proc import wait_for
from test_discovery import FAST, pg_discovered, writer_of
from test_ops import TOKEN, metric, parse_metrics, post, post_json


def static_config(**admin):
    """A ferry with one static listener (nothing behind it is needed) and the
    given admin keys."""
    lst = listener("pg", "postgresql", [cluster("region-a", "127.0.0.1:9", writer=True)])
    cfg = make_config(lst, workers=1)
    cfg["admin"].update(admin)
    return cfg


def connect_from(source, addr, first=b""):
    """A TCP connection to the admin endpoint from source (a loopback address)
    that sends first and then nothing."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(addr)
    if first:
        s.sendall(first)
    return s


def is_open(s):
    """True while ferry has not closed (or reset) the connection."""
    s.settimeout(0)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def timed_get(addr, path, source=None, timeout=2.0):
    """(status or the error, seconds) of one GET on a fresh connection."""
    start = time.monotonic()
    conn = http.client.HTTPConnection(*addr, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - start
    except OSError as e:
        return repr(e), time.monotonic() - start
    finally:
        conn.close()


def dropped(ferry, reason):
    return metric(parse_metrics(ferry.http_get("/metrics")[1]),
                  "ferry_admin_connections_dropped_total", reason=reason)


SLOW_STARTS = [
    b"",                                                        # connects, sends nothing
    b"GET /metr",                                               # half a request line
    b"GET /healthz HTTP/1.1\r\nHost: ferry\r\nX-Slow: ",        # headers, then a byte at a time
]


def test_health_metrics_and_posts_answer_beside_200_slow_clients(ferry_factory, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_ADMIN_TOKEN", TOKEN)
    ferry = ferry_factory(static_config(token_env="FERRY_TEST_ADMIN_TOKEN"))
    addr = ferry.admin_addr()
    # 25 client addresses with 8 connections each: under the per-peer limit
    slow = [connect_from(f"127.0.1.{1 + i // 8}", addr, SLOW_STARTS[i % 3]) for i in range(200)]
    stop = threading.Event()

    def dribble():
        while not stop.wait(0.3):
            for s in slow[2::3]:
                try:
                    s.send(b"a")
                except OSError:
                    pass

    dribbler = threading.Thread(target=dribble)
    dribbler.start()
    times = {"/healthz": [], "/metrics": []}
    try:
        for _ in range(10):
            for path, seen in times.items():
                status, secs = timed_get(addr, path)
                assert status == 200, f"GET {path} beside 200 slow clients: {status} after {secs:.2f}s"
                seen.append(secs)
        assert post(ferry, "/v1/pause", token=TOKEN)[0] == 200
        assert ferry.status()["paused"] is True
        assert post(ferry, "/v1/resume", token=TOKEN)[0] == 200
        assert ferry.status()["paused"] is False
        # the slow clients were held all along, not closed to make room
        assert sum(is_open(s) for s in slow) == 200
    finally:
        stop.set()
        dribbler.join()
        for s in slow:
            s.close()
    for path, seen in times.items():
        assert statistics.median(seen) < 0.1, f"{path}: {seen}"
        assert max(seen) < 1.0, f"{path}: {seen}"


def test_a_request_must_arrive_whole_within_request_timeout(ferry_factory):
    ferry = ferry_factory(static_config(request_timeout=1))
    addr = ferry.admin_addr()
    start = time.monotonic()
    idle = connect_from("127.0.0.1", addr)
    dribbler = connect_from("127.0.0.1", addr, SLOW_STARTS[2])
    closed = {}
    while len(closed) < 2 and time.monotonic() - start < 8:
        time.sleep(0.2)
        try:
            dribbler.send(b"a")     # never silent for long...
        except OSError:
            pass
        for name, s in (("idle", idle), ("dribbler", dribbler)):
            if name not in closed and not is_open(s):
                closed[name] = time.monotonic() - start
    # ...yet cut off: the timeout counts from the request's start
    assert set(closed) == {"idle", "dribbler"}, closed
    assert all(0.8 <= secs <= 4 for secs in closed.values()), closed
    # the dribbler at least (MHD's own timeout for silence may beat ferry's to the idle one)
    assert dropped(ferry, "request_timeout") >= 1
    # a client that sends its request in time is answered, and may keep the
    # connection for the next one
    conn = http.client.HTTPConnection(*addr, timeout=5)
    for _ in range(2):
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"ok\n")
    conn.close()
    # the limits apply when the endpoint starts: a reload says so
    ferry.reload(dict(ferry.config, admin=dict(ferry.config["admin"], request_timeout=2)))
    wait_for(lambda: "event=config.reload_partial key=admin" in ferry.log_text(), timeout=10,
             what="config.reload_partial for the admin limits")


def test_one_peer_holds_at_most_its_limit(ferry_factory):
    ferry = ferry_factory(static_config(max_connections_per_peer=4))
    addr = ferry.admin_addr()
    greedy = [connect_from("127.0.2.1", addr) for _ in range(7)]
    # the newest four stay; each one over the limit took the oldest's place
    wait_for(lambda: [is_open(s) for s in greedy] == [False] * 3 + [True] * 4,
             timeout=5, what="the three oldest connections of 127.0.2.1 closed")
    other = connect_from("127.0.2.2", addr)
    # the peer's own new request still gets in, in place of its oldest idle one
    assert timed_get(addr, "/healthz", source="127.0.2.1")[0] == 200
    wait_for(lambda: [is_open(s) for s in greedy] == [False] * 4 + [True] * 3,
             timeout=5, what="127.0.2.1's oldest closed for its request")
    assert is_open(other)
    assert dropped(ferry, "peer_limit") == 4
    for s in greedy + [other]:
        s.close()


def test_at_the_connection_limit_the_liveness_probe_still_gets_in(ferry_factory):
    ferry = ferry_factory(static_config(max_connections=16, max_connections_per_peer=4))
    addr = ferry.admin_addr()
    # six peers with four idle connections each: 24 for 16 places
    idle = [connect_from(f"127.0.3.{1 + i // 4}", addr) for i in range(24)]
    wait_for(lambda: [is_open(s) for s in idle] == [False] * 8 + [True] * 16,
             timeout=5, what="the eight oldest idle connections closed")
    for _ in range(5):
        status, secs = timed_get(addr, "/healthz")
        assert status == 200 and secs < 1.0, (status, secs)
    assert dropped(ferry, "connection_limit") >= 9       # 8, and room for the first request
    for s in idle:
        s.close()


def waiting_switchover(ferry, timeout, result):
    """Starts POST /v1/switchover to the replica (it never becomes writable,
    so the request waits timeout seconds) on a thread."""
    def run():
        start = time.monotonic()
        try:
            result["answer"] = post_json(ferry, "/v1/switchover", {"to": "region-b", "timeout": timeout})
        except OSError as e:
            result["answer"] = repr(e)
        result["seconds"] = time.monotonic() - start

    t = threading.Thread(target=run)
    t.start()
    return t


def test_waiting_requests_hold_up_nobody(ferry_factory, pg_pair):
    """One MHD thread serves everything: a switchover waiting for its target,
    the session list and a reload must not stall /healthz or /metrics."""
    ferry = ferry_factory(make_config(pg_discovered(pg_pair), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    addr = ferry.admin_addr()
    switchovers = [{}, {}]
    threads = [waiting_switchover(ferry, 3, r) for r in switchovers]
    time.sleep(0.3)
    for _ in range(5):
        for path in ("/healthz", "/metrics", "/v1/status", "/v1/sessions"):
            status, secs = timed_get(addr, path)
            assert status == 200 and secs < 1.0, (path, status, secs)
    code, body = post(ferry, "/v1/reload")
    assert code == 200 and "config generation 2 in force" in body["message"]
    assert all(t.is_alive() for t in threads)
    for t in threads:
        t.join(15)
    for r in switchovers:
        code, body = r["answer"]
        assert code == 504 and "region-b did not become writable within 3s" in body["message"]
        assert 2.9 <= r["seconds"] < 10
    assert writer_of(ferry, "pg") == "region-a" and ferry.status()["paused"] is False


def test_restart_and_stop_under_a_waiting_request(ferry_factory, pg_pair):
    """A reload that moves the admin endpoint, and a shutdown, while a
    switchover waits: its connection is handed back and closed (MHD must
    not stop with a suspended connection), the new endpoint answers, ferry
    exits 0."""
    cfg = make_config(pg_discovered(pg_pair), workers=1, discovery=FAST)
    ferry = ferry_factory(cfg)
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    first = {}
    t = waiting_switchover(ferry, 30, first)
    time.sleep(0.3)
    moved = dict(cfg, admin={"bind": f"127.0.0.1:{free_port()}"})
    ferry.reload(moved)
    wait_for(lambda: ferry.http_get("/healthz", timeout=1) == (200, "ok\n"), timeout=10,
             what="the admin endpoint on its new port")
    t.join(10)
    assert not t.is_alive() and first["seconds"] < 10, first
    assert first["answer"] == (503, {"ok": False, "message": "the admin endpoint is stopping"}) \
        or "Error" in str(first["answer"]), first
    # (the new endpoint answers a moment before the reload has installed the config)
    wait_for(lambda: ferry.status()["config_generation"] == 2, timeout=5, what="generation 2")
    assert ferry.status()["paused"] is False
    second = {}
    t = waiting_switchover(ferry, 30, second)
    time.sleep(0.3)
    assert ferry.stop(timeout=15) == 0
    t.join(10)
    assert not t.is_alive() and second["seconds"] < 10, second
