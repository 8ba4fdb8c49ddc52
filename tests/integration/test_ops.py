"""Operating ferry: Prometheus metrics that parse and move with traffic, the
mutating admin endpoints behind a bearer token, pause/resume, `ferry ctl`,
and JSON logs."""

import json
import math
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

import harness
from fronts import both, listener_status, pg_dsn, pg_listener
from harness import make_config
from harness.proc import wait_for

TOKEN = "s3cret-admin-token-0123456789"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*)?\})? (\S+)$')


def parse_metrics(text):
    """Parses Prometheus text format 0.0.4 strictly enough to catch mistakes:
    every sample belongs to a family declared with HELP and TYPE, counters
    end in _total, values are numbers. Returns {(name, labels): value}."""
    types, helps, samples = {}, set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"TYPE repeated: {line}"
            if kind == "counter":
                assert name.endswith("_total"), line
            types[name] = kind
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), m.group(3) or "", m.group(5)
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
            assert family in types and family in helps, f"sample without HELP/TYPE: {line}"
            assert name.startswith(("ferry_", "process_"))
            v = float(value)
            assert not math.isnan(v)
            key = (name, labels)
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = v
    return samples


def metric(samples, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for (n, l), v in samples.items():
        if n == name and all(part in l.split(",") for part in want.split(",") if part):
            return v
    raise KeyError(f"{name}{{{want}}}")


def post(ferry, path, token=None, body=b""):
    """POST to the admin endpoint; (status, parsed JSON or text). A dict body
    is sent as JSON."""
    host, port = ferry.admin_addr()
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://{host}:{port}{path}", method="POST", data=data)
    if data:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        reply = e.read()
        return e.code, (json.loads(reply) if reply.startswith(b"{") else reply.decode())


def test_metrics_parse_and_move_with_traffic(ferry_factory, pg_pair, mariadb_pair):
    ferry = ferry_factory(both(pg_pair, mariadb_pair))
    code, text = ferry.http_get("/metrics")
    assert code == 200
    before = parse_metrics(text)
    assert metric(before, "ferry_client_connections_total", listener="pg", outcome="accepted") == 0
    harness.pg.run_query(pg_dsn(ferry), "SELECT 1")
    conn = harness.pg.connect(pg_dsn(ferry))
    open_now = parse_metrics(ferry.http_get("/metrics")[1])
    assert metric(open_now, "ferry_backend_connections", listener="pg") == 1
    assert metric(open_now, "ferry_client_connections", listener="pg") == 1
    conn.autocommit = False
    for _ in range(3):                      # three transaction blocks
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()
    conn.close()
    after = parse_metrics(ferry.http_get("/metrics")[1])
    assert metric(after, "ferry_transactions_total", listener="pg") == 3
    assert metric(after, "ferry_queries_total", listener="pg") >= 1 + 2 * 3
    assert metric(after, "ferry_client_connections_total", listener="pg", outcome="accepted") == 2
    assert metric(after, "ferry_received_bytes_total", listener="pg", side="server") > 0
    wait_for(lambda: metric(parse_metrics(ferry.http_get("/metrics")[1]),
                            "ferry_backend_connections", listener="pg") == 0,
             timeout=10, what="the backend connections to close")
    assert metric(after, "ferry_config_generation") == 1
    assert metric(after, "ferry_workers") == 2
    assert metric(after, "process_open_fds") > 0
    assert metric(after, "process_resident_memory_bytes") > 1 << 20


def test_metrics_cover_discovery(ferry_factory, pg_pair):
    probed = pg_listener(pg_pair, probe={"user": "ferry_test", "password": "ferry_pw"})
    ferry = ferry_factory(make_config(probed, workers=1,
                                      discovery={"probe_interval": 0.1, "probe_timeout": 5}))
    wait_for(lambda: metric(parse_metrics(ferry.http_get("/metrics")[1]),
                            "ferry_probes_total", listener="pg", cluster="region-b") >= 3,
             timeout=10, what="three probe rounds")
    m = parse_metrics(ferry.http_get("/metrics")[1])
    assert metric(m, "ferry_writer", listener="pg", cluster="region-a") == 1
    assert metric(m, "ferry_writer", listener="pg", cluster="region-b") == 0
    assert metric(m, "ferry_cluster_writable", listener="pg", cluster="region-b") == 0
    assert metric(m, "ferry_cluster_up", listener="pg", cluster="region-b") == 1
    assert metric(m, "ferry_topology_generation", listener="pg") == 1
    assert metric(m, "ferry_probe_failures_total", listener="pg", cluster="region-a") == 0
    assert 0 < metric(m, "ferry_probe_duration_seconds", listener="pg", cluster="region-a") < 5
    assert metric(m, "ferry_failover_duration_seconds_count", listener="pg") == 0


def test_admin_errors_and_token(ferry_factory, pg_pair, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_ADMIN_TOKEN", TOKEN)
    cfg = make_config(pg_listener(pg_pair), workers=1)
    cfg["admin"]["token_env"] = "FERRY_TEST_ADMIN_TOKEN"
    ferry = ferry_factory(cfg)
    assert ferry.http_get("/metrics")[0] == 200           # reads stay open
    code, body = post(ferry, "/v1/reload")
    assert code == 401 and body["ok"] is False
    assert post(ferry, "/v1/reload", token="wrong-token-wrong-token")[0] == 401
    assert post(ferry, "/v1/nothing", token=TOKEN)[0] == 404
    assert post(ferry, "/healthz", token=TOKEN)[0] == 405
    code, body = post(ferry, "/v1/reload", token=TOKEN)
    assert code == 200 and body == {"ok": True, "message": "config generation 2 in force"}
    log = ferry.log_text()
    assert "event=admin.unauthorized method=POST path=/v1/reload peer=127.0.0.1" in log
    assert TOKEN not in log and "wrong-token" not in log


def get(ferry, path, token=None):
    """GET from the admin endpoint with an optional bearer token; (status, body text)."""
    host, port = ferry.admin_addr()
    req = urllib.request.Request(f"http://{host}:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sessions_need_the_token_when_one_is_set(ferry_factory, pg_pair, tmp_path):
    """/v1/sessions lists client addresses, users and databases: with a token
    configured it answers 401 without it, like the POSTs; health, readiness,
    metrics and status stay open; `ferry ctl sessions` sends the token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = make_config(pg_listener(pg_pair), workers=1)
    cfg["admin"]["token_file"] = str(token_file)
    ferry = ferry_factory(cfg)
    conn = harness.pg.connect(pg_dsn(ferry))
    conn.cursor().execute("SELECT 1")
    for path in ("/v1/sessions", "/v1/sessions?limit=10&offset=0"):
        code, body = get(ferry, path)
        assert code == 401 and json.loads(body)["ok"] is False
        assert "ferry_test" not in body and "127.0.0.1" not in body
        assert get(ferry, path, token="wrong-token-wrong-token")[0] == 401
    code, body = get(ferry, "/v1/sessions", token=TOKEN)
    assert code == 200 and json.loads(body)["sessions"][0]["user"] == "ferry_test"
    for path in ("/healthz", "/readyz", "/metrics", "/v1/status"):
        assert get(ferry, path)[0] == 200, path
    host, port = ferry.admin_addr()
    url = f"http://{host}:{port}"
    denied = ctl("sessions", "--admin", url)
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr and "ferry_test" not in denied.stdout
    for args in (["-c", ferry.config_path], ["--admin", url, "--token-file", str(token_file)]):
        ok = ctl("sessions", *args)
        assert ok.returncode == 0 and ok.stdout.startswith("1 session"), ok.stderr
    conn.close()
    log = ferry.log_text()
    assert "event=admin.unauthorized method=GET path=/v1/sessions peer=127.0.0.1" in log
    assert TOKEN not in log and "wrong-token" not in log


def test_reload_endpoint_reports_a_bad_file(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1))
    with open(ferry.config_path, "w") as f:
        f.write('{"listeners": 5}')
    code, body = post(ferry, "/v1/reload")
    assert code == 422
    assert body["message"] == f"{ferry.config_path}: listeners: expected an array, got an integer"
    assert ferry.status()["config_generation"] == 1


def query_in_thread(dsn, sql):
    """Runs sql on a new connection in a thread; its .result gets "rows"."""
    t = threading.Thread(target=lambda: t.result.update(rows=harness.pg.run_query(dsn, sql)))
    t.result = {}
    t.start()
    return t


def test_pause_holds_new_clients_until_resume(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=2))
    assert post(ferry, "/v1/pause")[0] == 200
    assert ferry.status()["paused"] is True
    t = query_in_thread(pg_dsn(ferry), "SELECT 42")
    wait_for(lambda: listener_status(ferry, "pg")["clients_held"] == 1, timeout=10,
             what="the client to be held")
    time.sleep(0.3)
    assert t.is_alive()
    assert post(ferry, "/v1/resume")[0] == 200
    t.join(20)
    assert t.result == {"rows": [(42,)]}
    assert listener_status(ferry, "pg")["clients_held"] == 0
    assert ferry.status()["paused"] is False


def test_pause_of_one_listener(ferry_factory, pg_pair):
    """POST /v1/pause {"listener": "b"} holds b's new clients only; resuming
    one listener while all are paused leaves the others paused."""
    ferry = ferry_factory(make_config(pg_listener(pg_pair, "a"), pg_listener(pg_pair, "b"),
                                      workers=2))
    assert post(ferry, "/v1/pause", body={"listener": "b"})[0] == 200
    held = query_in_thread(pg_dsn(ferry, "b"), "SELECT 2")
    wait_for(lambda: listener_status(ferry, "b")["clients_held"] == 1, timeout=10,
             what="b's client to be held")
    assert harness.pg.run_query(pg_dsn(ferry, "a"), "SELECT 1") == [(1,)]
    assert held.is_alive()
    assert [listener_status(ferry, n)["paused"] for n in "ab"] == [False, True]
    assert ferry.status()["paused"] is False
    assert post(ferry, "/v1/pause", body={"listener": "nope"})[0] == 404
    assert post(ferry, "/v1/pause", body=b"[1]")[0] == 400
    assert post(ferry, "/v1/resume", body={"listener": "b"})[0] == 200
    held.join(20)
    assert held.result == {"rows": [(2,)]}
    # all paused, then a resumed: b stays paused
    assert post(ferry, "/v1/pause")[0] == 200
    assert post(ferry, "/v1/resume", body={"listener": "a"})[0] == 200
    assert [listener_status(ferry, n)["paused"] for n in "ab"] == [False, True]
    assert harness.pg.run_query(pg_dsn(ferry, "a"), "SELECT 3") == [(3,)]
    assert post(ferry, "/v1/resume")[0] == 200
    assert [listener_status(ferry, n)["paused"] for n in "ab"] == [False, False]


def test_pause_holds_the_next_transaction_of_existing_sessions(ferry_factory, pg_pair):
    """PgBouncer's PAUSE for sessions already open: an idle session's next
    statement waits for resume; a transaction already open runs to its end."""
    import psycopg2
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1))
    idle = psycopg2.connect(pg_dsn(ferry))
    idle.autocommit = True
    busy = psycopg2.connect(pg_dsn(ferry))
    busy.autocommit = True
    with idle.cursor() as cur:      # both sessions are past their startup
        cur.execute("SELECT 1")
    with busy.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t (v int)")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t VALUES (1)")

    assert post(ferry, "/v1/pause")[0] == 200
    result = {}

    def idle_query():
        with idle.cursor() as cur:
            cur.execute("SELECT 42")
            result["rows"] = cur.fetchall()

    t = threading.Thread(target=idle_query)
    t.start()
    wait_for(lambda: listener_status(ferry, "pg")["clients_held"] == 1, timeout=10,
             what="the idle session's statement to be held")
    with busy.cursor() as cur:      # the open transaction is not held
        cur.execute("INSERT INTO t VALUES (2)")
        cur.execute("COMMIT")
    time.sleep(0.3)
    assert t.is_alive() and "rows" not in result
    sessions = json.loads(ferry.http_get("/v1/sessions")[1])["sessions"]
    assert sorted(s["state"] for s in sessions) == ["active", "held"]

    assert post(ferry, "/v1/resume")[0] == 200
    t.join(20)
    assert result == {"rows": [(42,)]}
    assert listener_status(ferry, "pg")["clients_held"] == 0
    with busy.cursor() as cur:      # the next statement after COMMIT ran normally
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (2,)
    idle.close()
    busy.close()


def test_a_paused_session_gives_up_after_hold_timeout(ferry_factory, pg_pair):
    # a raw socket: libpq's PQexec keeps only the last error (its own "server
    # closed the connection") of a FATAL that ends a session mid-query
    from test_pg_protocol import error_fields, read_messages, startup_packet
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1,
                                      discovery={"hold_timeout": 0.5}))
    with socket.create_connection(ferry.listener_addr("pg"), timeout=10) as s:
        s.sendall(startup_packet())
        assert read_messages(s)[-1][0] == b"Z"
        assert post(ferry, "/v1/pause")[0] == 200
        s.sendall(b"Q" + struct.pack("!I", 13) + b"SELECT 1\0")
        msgs = read_messages(s, until=b"E-never")
    assert [t for t, _ in msgs] == [b"E"]
    err = error_fields(msgs[0][1])
    assert err["S"] == "FATAL" and err["C"] == "57P03"
    assert err["M"] == "ferry: listener pg is paused by the operator; gave up after 0.5s"
    assert listener_status(ferry, "pg")["clients_held"] == 0
    assert post(ferry, "/v1/resume")[0] == 200
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 7") == [(7,)]


def ctl(*args, env=None):
    return subprocess.run([harness.require_binary(), "ctl", *args], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)


def test_ctl_against_a_running_ferry(ferry_factory, pg_pair, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    cfg = make_config(pg_listener(pg_pair, probe={"user": "ferry_test", "password": "ferry_pw"}),
                      workers=1)
    cfg["admin"]["token_file"] = str(token_file)
    ferry = ferry_factory(cfg)
    wait_for(lambda: ferry.status()["discovery"]["listeners"][0]["writer"] == "region-a",
             timeout=10, what="a writer")
    host, port = ferry.admin_addr()
    url = f"http://{host}:{port}"

    res = ctl("status", "--admin", url)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^pg\s+postgresql\s+\S+\s+discovered\s+region-a\s+0\s+0$", res.stdout, re.M)
    assert "pg: writer region-a, generation 1" in res.stdout
    doc = json.loads(ctl("status", "--admin", url, "--json").stdout)
    assert doc["listeners"][0]["name"] == "pg"
    assert "ferry_workers 1" in ctl("metrics", "--admin", url).stdout

    denied = ctl("pause", "--admin", url)
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr
    ok = ctl("pause", "-c", ferry.config_path)          # admin address and token from the config
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "pause: paused: new clients and new transactions are held until resume"
    assert ctl("resume", "--admin", url, "--token-file", str(token_file)).returncode == 0
    res = ctl("reload", "-c", ferry.config_path)
    assert res.returncode == 0 and "config generation 2 in force" in res.stdout

    assert ctl("frobnicate").returncode == 2
    gone = ctl("status", "--admin", f"http://127.0.0.1:{harness.free_port()}")
    assert gone.returncode == 1 and "cannot reach the admin endpoint" in gone.stderr


def test_json_logs(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1, log_format="json"))
    harness.pg.run_query(pg_dsn(ferry), "SELECT 1")
    lines = [json.loads(line) for line in ferry.log_text().splitlines() if line.strip()]
    events = [entry["event"] for entry in lines]
    assert "ferry.started" in events and "listener.ready" in events
    ready = next(entry for entry in lines if entry["event"] == "listener.ready")
    assert ready["name"] == "pg" and ready["protocol"] == "postgresql" and ready["level"] == "info"
    assert all(re.match(r"^\d{4}-\d\d-\d\dT", entry["ts"]) for entry in lines)


def post_json(ferry, path, payload, token=None):
    """POST a JSON document (None sends a truncated one)."""
    return post(ferry, path, token, payload if payload is not None else b"{")


def test_sessions_list_and_paging(ferry_factory, pg_pair, mariadb_pair):
    ferry = ferry_factory(both(pg_pair, mariadb_pair))
    a = harness.pg.connect(pg_dsn(ferry))
    b = harness.pg.connect(pg_dsn(ferry))
    a.cursor().execute("SELECT 1")
    code, body = ferry.http_get("/v1/sessions")
    doc = json.loads(body)
    assert code == 200 and doc["total"] == 2 and doc["offset"] == 0
    s0 = doc["sessions"][0]
    assert s0["listener"] == "pg" and s0["state"] == "active" and s0["cluster"] == "region-a"
    assert s0["user"] == "ferry_test" and s0["database"] == "app"
    assert s0["backend"] == f"127.0.0.1:{pg_pair.primary.port}"
    assert s0["client"].startswith("127.0.0.1:") and s0["bytes_from_server"] > 0
    assert doc["sessions"][0]["id"] < doc["sessions"][1]["id"]
    page = json.loads(ferry.http_get("/v1/sessions?limit=1&offset=1")[1])
    assert page["total"] == 2 and [x["id"] for x in page["sessions"]] == [doc["sessions"][1]["id"]]
    assert ferry.http_get("/v1/sessions?limit=-1")[0] == 400
    host, port = ferry.admin_addr()
    out = ctl("sessions", "--admin", f"http://{host}:{port}")
    assert out.returncode == 0 and out.stdout.startswith("2 sessions")
    assert out.stdout.count(" active ") == 2
    a.close()
    b.close()
    wait_for(lambda: json.loads(ferry.http_get("/v1/sessions")[1])["total"] == 0, timeout=10,
             what="the sessions to be gone")
    assert "ferry_pw" not in body
