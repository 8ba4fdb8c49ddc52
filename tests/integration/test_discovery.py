"""Writer discovery against real servers: ferry probes every cluster, routes
new connections to the one that accepts writes, follows a promotion, holds
new clients while there is no writer, and explains every change in
/v1/status and its log."""

import json
import os
import subprocess
import threading
import time

import psycopg2
import pymysql
import pytest

import harness
from fronts import listener_status, my_connect, pg_dsn
from harness import cluster, listener, make_config
from harness.proc import wait_for
from harness.ports import free_port
from test_ops import metric, parse_metrics, post, post_json, query_in_thread

# Quick rounds, but a generous probe deadline: sanitizer builds on a busy
# machine can take over a second to connect.
FAST = {"probe_interval": 0.1, "probe_timeout": 5, "writer_down_after": 2, "hold_timeout": 20}


def pg_discovered(pair, name="pg", **options):
    return listener(name, "postgresql",
                    [cluster("region-a", pair.primary), cluster("region-b", pair.replica)],
                    probe={"user": "ferry_test", "password": "ferry_pw"}, **options)


def my_discovered(pair, **options):
    return listener("my", "mysql",
                    [cluster("region-a", pair.primary), cluster("region-b", pair.replica)],
                    probe={"user": "ferry_test", "password_env": "FERRY_TEST_PROBE_PW"}, **options)


def discovery_of(ferry, name):
    for entry in ferry.status()["discovery"]["listeners"]:
        if entry["name"] == name:
            return entry
    raise KeyError(name)


def writer_of(ferry, name):
    return discovery_of(ferry, name)["writer"]


def pg_port_via(ferry):
    return harness.pg.run_query(pg_dsn(ferry), "SELECT inet_server_port()")[0][0]


def test_pg_follows_promotion_and_holds_in_between(ferry_factory, own_pg):
    ferry = ferry_factory(make_config(pg_discovered(own_pg), workers=2, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    assert pg_port_via(ferry) == own_pg.primary.port
    entry = discovery_of(ferry, "pg")
    states = {c["name"]: c["state"] for c in entry["clusters"]}
    assert states == {"region-a": "writable", "region-b": "read-only"}
    assert listener_status(ferry, "pg")["route"]["cluster"] == "region-a"

    # Planned switchover, step 1: the old writer turns read-only.
    own_pg.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
    own_pg.primary.query("SELECT pg_reload_conf()")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="no writer")
    assert "region-a reports read-only" in discovery_of(ferry, "pg")["reason"]
    assert listener_status(ferry, "pg")["route"] is None

    # A client arriving now is held, not refused...
    result = {}

    def client():
        try:
            result["port"] = pg_port_via(ferry)
        except Exception as e:  # noqa: BLE001 - asserted below
            result["error"] = e

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.5)
    assert t.is_alive()   # still waiting for a writer
    # ...and released to the new writer once it is promoted.
    own_pg.replica.promote()
    t.join(20)
    assert result == {"port": own_pg.replica.port}
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=10, what="region-b as writer")
    st = ferry.status()
    history = [(h["listener"], h["from"], h["to"]) for h in st["discovery"]["history"]]
    assert history == [("pg", "none", "region-a"), ("pg", "region-a", "none"),
                       ("pg", "none", "region-b")]
    assert "region-b is the only writable cluster" in st["discovery"]["history"][-1]["reason"]
    assert discovery_of(ferry, "pg")["generation"] == 3
    m = parse_metrics(ferry.http_get("/metrics")[1])
    assert metric(m, "ferry_failover_duration_seconds_count", listener="pg") == 1
    assert metric(m, "ferry_failover_duration_seconds_sum", listener="pg") > 0.4  # the held gap
    log = ferry.log_text()
    assert "event=topology.writer_changed listener=pg from=none to=region-b generation=3" in log
    assert "ferry_pw" not in log and "ferry_pw" not in json.dumps(st)


def test_pg_unplanned_failover_when_writer_dies(ferry_factory, own_pg):
    ferry = ferry_factory(make_config(pg_discovered(own_pg), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="writer dropped")
    reason = discovery_of(ferry, "pg")["reason"]
    assert "region-a unreachable for 2 consecutive probes" in reason
    own_pg.replica.promote()
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=10, what="region-b as writer")
    assert pg_port_via(ferry) == own_pg.replica.port


def test_hold_timeout_gives_a_clear_retryable_error(ferry_factory, pg_pair):
    only_replica = listener("pg", "postgresql", [cluster("region-b", pg_pair.replica)],
                            probe={"user": "ferry_test", "password": "ferry_pw"})
    ferry = ferry_factory(make_config(only_replica, workers=1,
                                      discovery=dict(FAST, hold_timeout=0.5)))
    wait_for(lambda: discovery_of(ferry, "pg")["clusters"][0]["state"] == "read-only",
             timeout=10, what="the replica to be probed")
    assert ferry.http_get("/readyz")[0] == 200   # it serves: new clients are held
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(pg_dsn(ferry) + " connect_timeout=10")
    assert "ferry: no writer for listener pg after waiting 0.5s" in str(err.value)
    assert listener_status(ferry, "pg")["clients_active"] == 0


def test_probe_login_failure_is_reported(ferry_factory, pg_pair):
    bad = listener("pg", "postgresql", [cluster("region-a", pg_pair.primary)],
                   probe={"user": "ferry_test", "password": "not-the-password"})
    ferry = ferry_factory(make_config(bad, workers=1, discovery=FAST))
    wait_for(lambda: discovery_of(ferry, "pg")["clusters"][0]["state"] == "unreachable",
             timeout=10, what="the probe to fail")
    detail = discovery_of(ferry, "pg")["clusters"][0]["detail"]
    assert "password authentication failed" in detail
    assert "not-the-password" not in ferry.log_text() + json.dumps(ferry.status())


def test_mariadb_follows_read_only_switch(ferry_factory, own_mariadb, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", "ferry_pw")
    ferry = ferry_factory(make_config(my_discovered(own_mariadb), workers=2, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")

    def port_via():
        conn = my_connect(ferry)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@port")
                return cur.fetchone()[0]
        finally:
            conn.close()

    assert port_via() == own_mariadb.primary.port
    own_mariadb.primary.set_read_only(True)
    own_mariadb.replica.promote()
    wait_for(lambda: writer_of(ferry, "my") == "region-b", timeout=10, what="region-b as writer")
    assert port_via() == own_mariadb.replica.port
    states = {c["name"]: c["state"] for c in discovery_of(ferry, "my")["clusters"]}
    assert states == {"region-a": "read-only", "region-b": "writable"}


def test_reload_adds_discovery_to_a_static_listener(ferry_factory, pg_pair):
    static = listener("pg", "postgresql", [cluster("region-a", pg_pair.primary, writer=True),
                                           cluster("region-b", pg_pair.replica)])
    cfg = make_config(static, workers=1, discovery=FAST)
    ferry = ferry_factory(cfg)
    assert "discovery" not in ferry.status()
    assert listener_status(ferry, "pg")["routing"] == "static"
    discovered = dict(static, probe={"user": "ferry_test", "password": "ferry_pw"})
    ferry.reload(dict(cfg, listeners=[discovered]))
    wait_for(lambda: "discovery" in ferry.status() and writer_of(ferry, "pg") == "region-a",
             timeout=10, what="discovery to start on reload")
    assert listener_status(ferry, "pg")["routing"] == "discovered"
    assert pg_port_via(ferry) == pg_pair.primary.port


def run_discover(cfg, tmp_path, *args):
    path = harness.ferry.write_config(cfg, str(tmp_path / "ferry.json"))
    return subprocess.run([harness.require_binary(), "discover", "-c", path, *args],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_discover_command(tmp_path, pg_pair, mariadb_pair, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", "ferry_pw")
    cfg = make_config(pg_discovered(pg_pair), my_discovered(mariadb_pair))
    res = run_discover(cfg, tmp_path, "--json")
    assert res.returncode == 0, res.stderr
    doc = {entry["name"]: entry for entry in json.loads(res.stdout)}
    assert doc["pg"]["writer"] == "region-a" and doc["my"]["writer"] == "region-a"
    assert [c["state"] for c in doc["pg"]["clusters"]] == ["writable", "read-only"]
    text = run_discover(cfg, tmp_path)
    assert text.returncode == 0
    assert "listener pg: writer region-a (region-a is the only writable cluster)" in text.stdout

    dead = make_config(listener("pg", "postgresql", [cluster("a", f"127.0.0.1:{free_port()}")],
                                probe={"user": "u", "password": "p"}))
    res = run_discover(dead, tmp_path)
    assert res.returncode == 1
    assert "writer NONE" in res.stdout and "unreachable" in res.stdout


def test_failed_backend_connect_triggers_a_probe_round(ferry_factory, own_pg):
    """With a 60 s probe interval only live traffic can explain a quick switch:
    a client that finds the writer gone makes discovery look at once, and is
    itself held (not refused) until the new writer takes it."""
    slow = dict(FAST, probe_interval=60, writer_down_after=1)
    ferry = ferry_factory(make_config(pg_discovered(own_pg), workers=1, discovery=slow))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    own_pg.primary.stop(mode="immediate")
    own_pg.replica.promote()
    conn = psycopg2.connect(pg_dsn(ferry) + " connect_timeout=20")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT inet_server_port()")
            assert cur.fetchone()[0] == own_pg.replica.port
    finally:
        conn.close()
    assert writer_of(ferry, "pg") == "region-b"     # long before the next timed round
    assert "event=backend.connect_failed" in ferry.log_text()


def test_planned_switchover_endpoint(ferry_factory, own_pg):
    ferry = ferry_factory(make_config(pg_discovered(own_pg), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    from test_ops import post_json, ctl
    code, body = post_json(ferry, "/v1/switchover", {"to": "region-b", "timeout": 0.5})
    assert code == 504 and "region-b did not become writable within 0.5s" in body["message"]
    assert ferry.status()["paused"] is False and writer_of(ferry, "pg") == "region-a"
    assert post_json(ferry, "/v1/switchover", {"to": "region-z"})[0] == 404
    assert post_json(ferry, "/v1/switchover", None)[0] == 400

    # The operator promotes region-b; region-a still accepts writes. A
    # promotion wins: keeping region-a would lose every write made there.
    own_pg.replica.promote()
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=10, what="the promotion followed")
    assert pg_port_via(ferry) == own_pg.replica.port
    last = ferry.status()["discovery"]["history"][-1]
    assert (last["from"], last["to"]) == ("region-a", "region-b")
    assert "region-b promoted while region-a still accepts writes" in last["reason"]
    # the old writer is fenced: it stays out even though it is writable
    d = discovery_of(ferry, "pg")
    a = [c for c in d["clusters"] if c["name"] == "region-a"][0]
    assert a["state"] == "writable" and a["fenced"] is True
    assert d["split_brain"] is True and d["writable_writer_fenced_total"] == 1
    metrics = ferry.http_get("/metrics")[1]
    assert 'ferry_split_brain{listener="pg"} 1' in metrics
    assert 'ferry_writable_writer_fenced_total{listener="pg"} 1' in metrics
    assert "event=topology.writable_writer_fenced listener=pg fenced=region-a writer=region-b" \
        in ferry.log_text()
    # the operator can still move the role back by hand (it releases the fence)
    host, port = ferry.admin_addr()
    res = ctl("switchover", "region-a", "--admin", f"http://{host}:{port}", "--timeout", "20")
    assert res.returncode == 0, res.stderr
    assert "region-a is the writer of 1 listener" in res.stdout
    assert pg_port_via(ferry) == own_pg.primary.port
    last = ferry.status()["discovery"]["history"][-1]
    assert last["reason"] == "switchover to region-a requested by the operator"


def test_switchover_holds_only_its_listener(ferry_factory, pg_pair):
    """issue 18 item 5: a switchover scoped to listener a holds a's new
    clients; listener b, on the same clusters, serves statements meanwhile."""
    ferry = ferry_factory(make_config(pg_discovered(pg_pair, "a"), pg_discovered(pg_pair, "b"),
                                      workers=2, discovery=FAST))
    for name in "ab":
        wait_for(lambda: writer_of(ferry, name) == "region-a", timeout=10, what="region-a as writer")
    open_b = psycopg2.connect(pg_dsn(ferry, "b"))
    open_b.autocommit = True
    switchover = {}
    switching = threading.Thread(target=lambda: switchover.update(answer=post_json(
        ferry, "/v1/switchover", {"to": "region-b", "listener": "a", "timeout": 10})))
    switching.start()
    held_a = query_in_thread(pg_dsn(ferry, "a") + " connect_timeout=30", "SELECT 1")  # last wins
    wait_for(lambda: listener_status(ferry, "a")["clients_held"] == 1, timeout=10,
             what="a's new client to be held")
    new_b = query_in_thread(pg_dsn(ferry, "b"), "SELECT 2")
    new_b.join(8)
    with open_b.cursor() as cur:        # an open session's next statement too
        cur.execute("SELECT 3")
        assert cur.fetchall() == [(3,)]
    assert new_b.result == {"rows": [(2,)]} and switching.is_alive()
    a, b = listener_status(ferry, "a"), listener_status(ferry, "b")
    assert (a["holding"], b["holding"], a["paused"], b["paused"]) == (True, False, False, False)
    assert b["clients_held"] == 0 and held_a.is_alive()
    switching.join(30)
    assert switchover["answer"][0] == 504       # region-b never became writable
    held_a.join(20)
    assert held_a.result == {"rows": [(1,)]}    # released to the writer it has
    assert listener_status(ferry, "a")["holding"] is False
    open_b.close()


def test_switchover_end_keeps_the_operators_pause(ferry_factory, pg_pair):
    """issue 18 item 5: the operator paused; a switchover starts and ends;
    clients stay paused until /v1/resume."""
    ferry = ferry_factory(make_config(pg_discovered(pg_pair), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    assert post(ferry, "/v1/pause")[0] == 200
    held = query_in_thread(pg_dsn(ferry), "SELECT 42")
    wait_for(lambda: listener_status(ferry, "pg")["clients_held"] == 1, timeout=10,
             what="the client to be held")
    assert post_json(ferry, "/v1/switchover", {"to": "region-b", "timeout": 0.5})[0] == 504
    held.join(1.0)
    assert held.is_alive() and "rows" not in held.result
    status = listener_status(ferry, "pg")
    assert ferry.status()["paused"] is True and status["paused"] is True
    assert status["holding"] is False and status["clients_held"] == 1
    assert post(ferry, "/v1/resume")[0] == 200
    held.join(20)
    assert held.result == {"rows": [(42,)]}


def test_network_partition_drops_the_writer_and_heals(ferry_factory, pg_pair):
    """A partition is not a refusal: probes hang until their deadline. The
    writer is dropped after writer_down_after of them and, since nobody else
    took over, resumes when the network heals."""
    with harness.NetCut(pg_pair.primary.host, pg_pair.primary.port) as net:
        lst = listener("pg", "postgresql", [cluster("region-a", f"127.0.0.1:{net.port}"),
                                            cluster("region-b", pg_pair.replica)],
                       probe={"user": "ferry_test", "password": "ferry_pw"})
        ferry = ferry_factory(make_config(lst, workers=1, discovery=dict(
            FAST, probe_timeout=0.5, hold_timeout=30)))
        wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a")
        net.cut()
        wait_for(lambda: writer_of(ferry, "pg") is None, timeout=15, what="the partitioned writer dropped")
        a = discovery_of(ferry, "pg")["clusters"][0]
        assert a["state"] == "unreachable" and "timed out after 0.5s" in a["detail"]
        net.restore()
        wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=15, what="region-a back")
        assert pg_port_via(ferry) == pg_pair.primary.port


def test_not_ready_until_discovery_has_decided(ferry_factory, pg_pair):
    """Readiness waits for the first decision (a blackholed cluster makes the
    first round last a whole probe deadline), then turns 200 even though the
    decision is "no writer": ferry holds clients rather than refusing them."""
    with harness.NetCut(pg_pair.primary.host, pg_pair.primary.port) as net:
        net.cut()
        lst = listener("pg", "postgresql", [cluster("region-a", f"127.0.0.1:{net.port}")],
                       probe={"user": "ferry_test", "password": "ferry_pw"})
        ferry = ferry_factory(make_config(lst, workers=1, discovery=dict(FAST, probe_timeout=3)),
                              start=False)
        ferry.proc = harness.proc.Proc([harness.require_binary(), "run", "-c", ferry.config_path],
                                       ferry.log_path, env=dict(os.environ))
        wait_for(lambda: "event=listener.ready" in ferry.log_text(), timeout=10,
                 what="ferry to start listening")
        code, body = ferry.http_get("/readyz")
        assert (code, body) == (503, "not ready: discovery has not finished its first probe round\n")
        wait_for(lambda: ferry.http_get("/readyz")[0] == 200, timeout=15, what="readiness")
        assert writer_of(ferry, "pg") is None
