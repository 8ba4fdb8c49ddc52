"""Failover drills for MySQL (MariaDB) under load (issue 10): writers
recording every acknowledged id, idle pooled sessions with their own
settings, sessions with server-side prepared statements and sessions in an
open transaction, all through one ferry mysql listener with discovery,
while the writer moves (harness/drill_mysql.py has the load).

Each drill runs in both authentication modes. Passthrough: a session open
when the writer moves cannot be logged into the new writer, so ferry fences
it: an idle one is cut from the old writer at once and its next command gets
1053 (reconnect); one in a transaction gets 1213/40001 until ROLLBACK
(answered OK), then 1053. Terminated: ferry logs such sessions into the new
writer itself and replays their SET / USE / prepared statements, so they
see no error (a transaction still gets 1213 until ROLLBACK). Either way
nothing from ferry's clients reaches the old writer after the switch, and
writers go on on the new writer. The pair replicates semi-synchronously, so
even after a crash every acknowledged write must be on the new writer."""

import json

import pytest

import harness
from harness import cluster, listener, make_config, mariadb
from harness.drill import switchover
from harness.drill_mysql import (MyLoad, check_writes, create_tables, log_statements,
                                 statements_after)
from harness.proc import wait_for
from test_discovery import FAST, writer_of

AUTH_MODES = ["passthrough", "terminated"]

# What a session that was idle when the writer moved (open, no transaction,
# no command in flight) sees on its next command, per authentication mode
# and drill: the one parameter that differs between the modes. Passthrough
# cannot move it: a planned switchover cuts it (1053, "reconnect"), a crash
# ends it with its server (PyMySQL: 2013, "Lost connection"). Terminated
# moves it, its time_zone and schema with it: "ok".
IDLE_AFTER_MOVE = {
    "passthrough": {"planned": "1053", "crash": "2013"},
    "terminated": {"planned": "ok", "crash": "ok"},
}


def idle_outcome(auth, drill):
    return IDLE_AFTER_MOVE[auth][drill]


def txn_outcome(auth, drill):
    """A session in a transaction when the writer moved (or died), then
    INSERT, COMMIT, ROLLBACK, SELECT 1: the transaction is lost (1213,
    retry) until ROLLBACK, which ferry answers; the session then moves
    (terminated: "ok") or gets 1053 (passthrough), after a crash too."""
    return ["1213", "1213", "ok", "ok" if auth == "terminated" else "1053"]


def parked_errors(auth, count):
    """What the paused sessions' parked commands get when the writer moves
    under them: 1053 each (passthrough), nothing (terminated: moved)."""
    return {"1053": count} if idle_outcome(auth, "planned") == "1053" else {}


@pytest.fixture
def pair():
    with harness.MariaDBPair(semi_sync=True) as p:
        yield p


def mysql_ferry(ferry_factory, pair, auth):
    """ferry with a discovered mysql listener "my" over the pair in auth mode
    (probes log in as ferry_probe, so the general log's ferry_test lines are
    ferry's clients alone), once it has found the primary."""
    lcfg = listener("my", "mysql", [cluster("region-a", pair.primary),
                                    cluster("region-b", pair.replica)],
                    probe={"user": mariadb.PROBE_USER, "password": mariadb.PROBE_PASSWORD})
    if auth == "terminated":
        lcfg["auth"] = {"mode": "terminated", "users": [
            {"name": mariadb.TEST_USER, "password": mariadb.TEST_PASSWORD}]}
    ferry = ferry_factory(make_config(lcfg, workers=2, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")
    return ferry


def start(ferry_factory, pair, auth):
    """mysql_ferry(), and the drill's tables on both servers."""
    ferry = mysql_ferry(ferry_factory, pair, auth)
    create_tables(pair.primary)
    pair.catch_up(pair.replica, pair.primary)
    for server in pair.servers():
        log_statements(server)
    return ferry


def load_on(ferry):
    return MyLoad(*ferry.listener_addr("my")).start()


def held(ferry):
    return ferry.status()["listeners"][0]["clients_held"]


def moved_from(ferry, name):
    """When the writer last moved away from cluster name."""
    return [h["at"] for h in ferry.status()["discovery"]["history"] if h["from"] == name][-1]


def failover_errors(ferry):
    """Errors ferry sent because the writer moved or was lost (/v1/status)."""
    return ferry.status()["listeners"][0]["failover_errors_total"]


def ferry_errors(result):
    """Errors the load's clients got from ferry itself ("ferry: ...")."""
    return sum("ferry:" in text for _, _, _, text in result.error_log)


def report(name, result, ferry):
    listener_status = ferry.status()["listeners"][0]
    print(json.dumps({"drill": name, "acknowledged": len(result.acked),
                      "window_ms": round(result.window_ms()), "errors": result.errors,
                      "idle": result.idle_outcomes, "transactions": result.txn_outcomes,
                      "prepared_runs": result.prepared_runs,
                      "error_texts": sorted({f"{kind}:{cls}: {text[:90]}"
                                             for _, kind, cls, text in result.error_log}),
                      "failover_errors_total": listener_status["failover_errors_total"],
                      "sessions_moved": listener_status.get("sessions_moved"),
                      "sessions_move_failed": listener_status.get("sessions_move_failed")}))


def planned_switch(ferry, load, pair, old, new, to):
    """ferry is told to switch (it pauses: every writer's and prepared
    session's next command parks), then the operator switches the pair:
    old read-only, new caught up and promoted, old replicating from new."""
    t, out = switchover(ferry, to)
    wait_for(lambda: held(ferry) >= load.nwriters + load.nprepared, timeout=10,
             what="the active sessions to park")
    pair.switchover(old, new)
    t.join(40)
    assert out["res"].returncode == 0, out["res"].stderr


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_planned_switchover_under_load(ferry_factory, pair, auth):
    """Nothing is in flight when the writer moves (ferry paused first), so
    no write is lost or sent to the old writer. Every session that was open
    fares as IDLE_AFTER_MOVE says (passthrough: the paused and the idle
    ones get 1053 and reconnect; terminated: they move, no error), open
    transactions get 1213 until ROLLBACK; writes go on on the new writer."""
    ferry = start(ferry_factory, pair, auth)
    load = load_on(ferry)
    load.wait_for_acks(100)
    assert statements_after(pair.primary, "2000-01-01T00:00:00.000Z")  # the log does show them
    planned_switch(ferry, load, pair, pair.primary, pair.replica, "region-b")
    n, mark = len(load.result.acked), load.result.last_ack()
    load.wait_for_acks(n + 100)
    result = load.stop()
    report(f"planned switchover, {auth}", result, ferry)

    switch = moved_from(ferry, "region-a")
    # the old writer's general log: nothing from ferry's clients after the switch
    assert statements_after(pair.primary, switch) == []
    lost, stale = check_writes(result, pair.replica, pair.primary, switch)
    assert lost == [] and stale == 0
    # each paused command (one per writer and prepared session) is answered
    # by ferry: reconnect; the reconnected sessions see nothing more
    assert result.errors_of("writer") == parked_errors(auth, load.nwriters), result.error_log
    assert result.errors_of("prepared") == parked_errors(auth, load.nprepared), result.error_log
    assert result.idle_outcomes == [idle_outcome(auth, "planned")] * load.nidle, result.error_log
    assert result.txn_outcomes == [txn_outcome(auth, "planned")] * load.ntxn, result.error_log
    assert result.prepared_runs > 0
    # every error a client saw was ferry's, and counted as a failover error
    assert failover_errors(ferry) == ferry_errors(result), result.error_log
    status = ferry.status()["listeners"][0]
    if auth == "terminated":
        assert status["sessions_move_failed"] == 0
        assert status["sessions_moved"] >= load.nwriters + load.nprepared + load.nidle
    # writes resumed, on the new writer
    after = result.acked_after(mark)
    have = {r[0] for r in pair.replica.query("SELECT id FROM app.drill_acks")}
    assert len(after) >= 100 and set(after) <= have
    assert ferry.status()["discovery"]["listeners"][0]["writer"] == "region-b"


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_crash_under_load(ferry_factory, pair, auth):
    """The writer dies (SIGKILL). A command in flight gets "outcome unknown"
    (the connection ends: the client's own 2013); a session between commands
    ends with its server (passthrough) or moves once the replica is promoted
    (terminated); one in a transaction gets 1213 until ROLLBACK (as in a
    switchover); new connections may fail with 1053 until
    ferry has dropped the dead writer, and are then held until the replica
    is promoted. With semi-sync replication every acknowledged write is on
    the new writer, and writes resume there."""
    ferry = start(ferry_factory, pair, auth)
    load = load_on(ferry)
    load.wait_for_acks(100)
    pair.crash(pair.primary, pair.replica, promote=False)
    wait_for(lambda: writer_of(ferry, "my") is None, timeout=10, what="the writer to be dropped")
    pair.promote_after_crash(pair.replica)
    wait_for(lambda: writer_of(ferry, "my") == "region-b", timeout=10, what="region-b as writer")
    n, mark = len(load.result.acked), load.result.last_ack()
    load.wait_for_acks(n + 100)
    result = load.stop()
    report(f"crash, {auth}", result, ferry)

    lost, _ = check_writes(result, pair.replica, pair.primary, moved_from(ferry, "region-a"))
    assert lost == []
    # 2013: the connection ended in flight (ferry's "outcome unknown") or
    # between commands (PyMySQL's "Lost connection"); 2006: PyMySQL could not
    # even send; 1053: ferry could not reach the dead writer before
    # discovery dropped it; 1213: a writer's transaction was lost between
    # its statements
    allowed = {"2013", "2006", "1053", "1213"}
    for kind in ("writer", "prepared"):
        assert set(result.errors_of(kind)) <= allowed, result.error_log
    for _, kind, cls, text in result.error_log:
        if cls == "1053":
            assert "ferry: cannot reach the writer region-a" in text or "writer" in text, text
        elif cls == "2013":
            assert "Lost connection" in text, text
    assert result.idle_outcomes == [idle_outcome(auth, "crash")] * load.nidle, result.error_log
    assert result.txn_outcomes == [txn_outcome(auth, "crash")] * load.ntxn, result.error_log
    status = ferry.status()
    last = status["discovery"]["listeners"][0]["last_failover_seconds"]
    assert last is not None and last > 0
    after = result.acked_after(mark)
    have = {r[0] for r in pair.replica.query("SELECT id FROM app.drill_acks")}
    assert len(after) >= 100 and set(after) <= have


@pytest.mark.parametrize("auth", AUTH_MODES)
def test_repeated_switchovers_under_load(ferry_factory, pair, auth):
    """A -> B -> A -> B under load, the old writer made a replica of the
    new one each time: each switch as clean as the first (passthrough: only
    the parked sessions' 1053; terminated: no error at all), nothing from
    ferry's clients reaches the writer that was left, never a write sent to
    a read-only server (1290)."""
    ferry = start(ferry_factory, pair, auth)
    load = load_on(ferry)
    load.wait_for_acks(50)
    servers = {"region-a": pair.primary, "region-b": pair.replica}
    current, other = "region-a", "region-b"
    for _ in range(3):
        old, new = servers[current], servers[other]
        planned_switch(ferry, load, pair, old, new, other)
        n = len(load.result.acked)
        load.wait_for_acks(n + 50)
        assert writer_of(ferry, "my") == other
        # checked now: old becomes the writer again in the next round
        assert statements_after(old, moved_from(ferry, current)) == []
        current, other = other, current
    result = load.stop()
    report(f"repeated switchovers, {auth}", result, ferry)

    assert result.errors_of("writer") == parked_errors(auth, 3 * load.nwriters), result.error_log
    assert result.errors_of("prepared") == parked_errors(auth, 3 * load.nprepared), \
        result.error_log
    assert failover_errors(ferry) == ferry_errors(result), result.error_log
    assert result.idle_outcomes == [idle_outcome(auth, "planned")] * load.nidle, result.error_log
    assert result.txn_outcomes == [txn_outcome(auth, "planned")] * load.ntxn, result.error_log
    lost, _ = check_writes(result, servers[current], servers[other],
                           "2000-01-01T00:00:00.000Z")
    assert lost == []
    writers = [h["to"] for h in ferry.status()["discovery"]["history"] if h["to"] != "none"]
    assert writers == ["region-a", "region-b", "region-a", "region-b"]
