"""Failover drills for PostgreSQL under load (issue 10): writers recording
every acknowledged id, idle pooled sessions with their own settings, and
sessions with server-side prepared statements, all through one ferry
listener with terminated authentication, while the writer moves."""

import json

import pytest

import harness
from harness import make_config
from harness.drill import (PgLoad, check_writes, create_table, log_writes, statements_after,
                           switchover)
from harness.proc import wait_for
from test_discovery import FAST, pg_discovered, writer_of

USER, PASSWORD = harness.pg.TEST_USER, harness.pg.TEST_PASSWORD


def start(ferry_factory, pair):
    lcfg = pg_discovered(pair)
    lcfg["auth"] = {"mode": "terminated", "users": [{"name": USER, "password": PASSWORD}]}
    ferry = ferry_factory(make_config(lcfg, workers=2, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    create_table(pair.primary, harness.pg.TEST_DB, USER)
    return ferry


def load_on(ferry):
    host, port = ferry.listener_addr("pg")
    return PgLoad(harness.pg.dsn(host, port)).start()


def caught_up(pair):
    """The replica has replayed everything the primary wrote (the primary
    may be read-only now, so no marker row)."""
    lsn = pair.primary.query("SELECT pg_current_wal_lsn()::text")[0][0]
    wait_for(lambda: pair.replica.query(
        "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0], timeout=30,
        what="the replica to catch up")


def switched_at(ferry, to):
    return [h["at"] for h in ferry.status()["discovery"]["history"] if h["to"] == to][-1]


def holding(ferry, name):
    """A switchover of listener name is holding its new work."""
    return any(x["name"] == name and x["holding"] for x in ferry.status()["listeners"])


def held(ferry):
    return ferry.status()["listeners"][0]["clients_held"]


def report(name, result, ferry):
    listener = ferry.status()["listeners"][0]
    print(json.dumps({"drill": name, "acknowledged": len(result.acked),
                      "window_ms": round(result.window_ms()), "errors": result.errors,
                      "sessions_moved": listener["sessions_moved"],
                      "sessions_move_failed": listener["sessions_move_failed"]}))


@pytest.mark.parametrize("old_writer", ["read-only", "still-writable"])
def test_planned_switchover_under_load(ferry_factory, own_pg, old_writer):
    """The operator asks ferry to switch, then promotes the replica. ferry
    pauses new transactions, so nothing is in flight when the writer moves:
    no client sees an error, every acknowledged write is on the new writer,
    and the old writer (even when it stays writable: split brain) gets
    nothing after the switch."""
    ferry = start(ferry_factory, own_pg)
    log_writes(own_pg.primary)
    load = load_on(ferry)
    load.wait_for_acks(100)
    assert statements_after(own_pg.primary, "2000-01-01T00:00:00.000Z")  # the log does show them
    t, out = switchover(ferry, "region-b")
    wait_for(lambda: held(ferry) >= 5, timeout=10, what="the active sessions to park")
    if old_writer == "read-only":
        own_pg.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
        own_pg.primary.query("SELECT pg_reload_conf()")
    caught_up(own_pg)
    own_pg.replica.promote()
    t.join(40)
    assert out["res"].returncode == 0, out["res"].stderr
    n = len(load.result.acked)
    load.wait_for_acks(n + 100)
    result = load.stop()
    report(f"planned switchover, old writer {old_writer}", result, ferry)

    assert result.errors == {}, result.error_log
    assert result.idle_checked == 4 and result.prepared_runs > 0
    switch = switched_at(ferry, "region-b")
    lost, stale = check_writes(result, own_pg.replica, own_pg.primary, harness.pg.TEST_DB, switch)
    assert lost == [] and stale == 0
    # the old writer's own statement log: nothing reached it after the switch
    assert statements_after(own_pg.primary, switch) == []
    status = ferry.status()["listeners"][0]
    assert status["sessions_moved"] >= 4 + 3 + 2 and status["sessions_move_failed"] == 0


def test_crash_under_load(ferry_factory, own_pg):
    """The writer dies. Only sessions with a statement in flight see an
    error, and only "outcome unknown" (08007) or a failed connect while
    there is no writer; idle and prepared sessions that were between
    statements move on; writes resume on the new writer."""
    ferry = start(ferry_factory, own_pg)
    load = load_on(ferry)
    load.wait_for_acks(100)
    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="the writer to be dropped")
    own_pg.replica.promote()
    wait_for(lambda: writer_of(ferry, "pg") == "region-b", timeout=10, what="region-b as writer")
    n, mark = len(load.result.acked), load.result.last_ack()
    load.wait_for_acks(n + 100)
    result = load.stop()
    report("crash", result, ferry)

    assert result.errors_of("idle") == {}, result.error_log
    # 08007: a statement was in flight; 40001: a transaction was open between
    # statements. libpq shows a FATAL that ends a session mid-query as its own
    # "server closed the connection" (no SQLSTATE): those are the 08007 ones.
    allowed = {"08007", "40001", "OperationalError"}
    for kind in ("writer", "prepared"):
        assert set(result.errors_of(kind)) <= allowed, result.error_log
    for _, kind, cls, text in result.error_log:
        if cls == "OperationalError":
            assert "server closed the connection unexpectedly" in text or "ferry:" in text, text
    status = ferry.status()
    assert status["listeners"][0]["sessions_move_failed"] == 0
    # every error a client saw was counted as a failover error
    assert status["listeners"][0]["failover_errors_total"] >= sum(result.errors.values())
    last = status["discovery"]["listeners"][0]["last_failover_seconds"]
    assert last is not None and last > 0     # writer lost -> region-b: the held gap
    after = result.acked_after(mark)   # (id n itself may be one that was in flight)
    have = {r[0] for r in own_pg.replica.query("SELECT id FROM drill_acks",
                                               dbname=harness.pg.TEST_DB)}
    assert after and set(after) <= have     # writes after the failover are on the new writer


def test_repeated_switchovers_under_load(ferry_factory, own_pg):
    """A -> B -> A -> B under load, the old writer rewound into a standby of
    the new one each time (peers have shipped a bug where a read-only
    cluster is taken for the writer after repeated failovers): each switch
    as clean as the first, never a write sent to a read-only cluster."""
    ferry = start(ferry_factory, own_pg)
    load = load_on(ferry)
    load.wait_for_acks(50)
    servers = {"region-a": own_pg.primary, "region-b": own_pg.replica}
    current, other = "region-a", "region-b"
    for _ in range(3):
        old, new = servers[current], servers[other]
        t, out = switchover(ferry, other)
        wait_for(lambda: holding(ferry, "pg"), timeout=10, what="ferry to hold the pg listener")
        old.query("ALTER SYSTEM SET default_transaction_read_only = on")
        old.query("SELECT pg_reload_conf()")
        lsn = old.query("SELECT pg_current_wal_lsn()::text")[0][0]
        wait_for(lambda: new.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                   (lsn,))[0][0], timeout=30, what="the standby to catch up")
        new.promote()
        t.join(40)
        assert out["res"].returncode == 0, out["res"].stderr
        n = len(load.result.acked)
        load.wait_for_acks(n + 50)
        own_pg.follow(old, new)     # the old writer becomes the new one's standby
        assert writer_of(ferry, "pg") == other
        current, other = other, current
        load.wait_for_acks(len(load.result.acked) + 20)
    result = load.stop()
    report("repeated switchovers", result, ferry)

    assert result.errors == {}, result.error_log
    assert result.idle_checked == 4
    have = {r[0] for r in servers[current].query("SELECT id FROM drill_acks",
                                                  dbname=harness.pg.TEST_DB)}
    assert set(result.acked) <= have
    writers = [h["to"] for h in ferry.status()["discovery"]["history"] if h["to"] != "none"]
    assert writers == ["region-a", "region-b", "region-a", "region-b"]
