"""Failover drills under load on the Aurora PostgreSQL Global Database
stand-in (harness/aurora.py), through ferry with SQL probes alone and
terminated authentication (idle sessions move): writer endpoints that only
resolve for the primary, secondaries seen through their reader endpoints.

- a region outage: the primary region stops answering, AWS fails over to the
  secondary with data loss, the old region rejoins as a secondary; then the
  same the other way (A -> B -> A), with no operator action;
- a managed switchover with ferry restarted in the middle of it.

Each drill checks that writes resume on the new writer, that idle sessions
still work, and that nothing of ferry's clients reached the old writer after
ferry switched (the old writer is stopped in an outage; in a switchover it is
read-only, and its log is read)."""

import datetime

import pytest

import harness
from harness import PrivateHosts, make_config
from harness.aurora import AuroraGlobalPg
from harness.drill import PgLoad, create_table
from harness.pg import TEST_DB, TEST_PASSWORD, TEST_USER
from harness.proc import wait_for
from test_discovery import FAST, writer_of

import test_discovery_aurora
from test_discovery_aurora import PRIMARY, SECONDARY

pytestmark = test_discovery_aurora.pytestmark     # the same skip: private hosts need root


@pytest.fixture
def aurora(tmp_path, ferry_bin):
    hosts = PrivateHosts(tmp_path)
    with AuroraGlobalPg(hosts, regions=((PRIMARY, 1), (SECONDARY, 1))) as g:
        create_table(g.writer, TEST_DB, TEST_USER)
        yield g


def start_ferry(g, tmp_path, name="ferry"):
    lcfg = g.ferry_listener("pg", aws=False, probe={"user": TEST_USER, "password": TEST_PASSWORD},
                            global_writer_endpoint=g.global_name)
    lcfg["auth"] = {"mode": "terminated", "users": [{"name": TEST_USER, "password": TEST_PASSWORD}]}
    ferry = harness.Ferry(make_config(lcfg, workers=2, discovery=FAST), tmp_path, name=name,
                          argv_prefix=g.hosts.wrap())
    ferry.start()
    return ferry


def switched_at(ferry, to):
    at = [h["at"] for h in ferry.status()["discovery"]["history"] if h["to"] == to][-1]
    return datetime.datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


def ids_on(inst):
    return {r[0] for r in inst.query("SELECT id FROM drill_acks", dbname=TEST_DB)}


def load_on(ferry):
    host, port = ferry.listener_addr("pg")
    return PgLoad(harness.pg.dsn(host, port), writers=3, idle=3, prepared=0).start()


def outage_and_failover(g, ferry, load, old, new):
    """The region `old` stops answering, AWS fails over to `new` (data loss
    allowed), writes resume there; the old region rejoins as a secondary."""
    n = len(load.result.acked)
    g.failover(new, allow_data_loss=True, old_primary="stopped")
    wait_for(lambda: writer_of(ferry, "pg") == new, timeout=30, what=f"ferry to follow to {new}")
    t = switched_at(ferry, new)
    load.wait_for_acks(n + 100, timeout=30)
    resumed = load.result.acked_after(t)
    on_new = ids_on(g.writer)
    assert resumed, "writes resumed on the new writer"
    # lost writes are only those of the outage itself (asynchronous
    # replication: Aurora's RPO), never ones acknowledged after ferry switched
    late = {i: round(load.result.acked[i] - t, 3) for i in resumed if i not in on_new}
    assert not late, f"acknowledged after the switch to {new}, missing there: {late}"
    g.rejoin(old)
    wait_for(lambda: [c["state"] for c in ferry.status()["discovery"]["listeners"][0]["clusters"]
                      if c["name"] == old] == ["inactive"], timeout=30,
             what=f"{old} back as a healthy secondary (inactive writer endpoint)")


def test_region_outage_failover_there_and_back_under_load(aurora, tmp_path):
    g = aurora
    ferry = start_ferry(g, tmp_path)
    wait_for(lambda: writer_of(ferry, "pg") == PRIMARY, timeout=20, what="the writer")
    load = load_on(ferry)
    load.wait_for_acks(100)
    outage_and_failover(g, ferry, load, PRIMARY, SECONDARY)
    outage_and_failover(g, ferry, load, SECONDARY, PRIMARY)     # and back: no operator action
    result = load.stop()
    assert result.idle_checked == 3, result.error_log       # idle sessions moved twice
    assert result.errors_of("idle") == {}
    # the rejoined old primary's fence goes once its own instance reports
    # Aurora's topology naming the other writer (a round or two after it answers)
    wait_for(lambda: not any(c["fenced"] for c in
                             ferry.status()["discovery"]["listeners"][0]["clusters"]),
             timeout=20, what="the rejoined cluster's fence released")
    d = ferry.status()["discovery"]["listeners"][0]
    assert d["writer"] == PRIMARY
    assert d["global_writer_endpoint"]["points_to"] == PRIMARY


def test_switchover_with_ferry_restarted_in_the_middle(aurora, tmp_path):
    """ferry is restarted while the switchover runs (FailoverState visible,
    the old writer read-only or already gone, the new one not yet
    promoted): the new process finds the state from scratch and follows."""
    import threading
    g = aurora
    ferry = start_ferry(g, tmp_path)
    wait_for(lambda: writer_of(ferry, "pg") == PRIMARY, timeout=20, what="the writer")
    op = threading.Thread(target=lambda: g.switchover(SECONDARY, pause=3.0))
    op.start()
    wait_for(lambda: g.failover_state is not None, timeout=10, what="the switchover to begin")
    ferry.stop()
    ferry2 = start_ferry(g, tmp_path, name="ferry2")
    op.join(90)
    assert not op.is_alive()
    wait_for(lambda: writer_of(ferry2, "pg") == SECONDARY, timeout=30,
             what="the restarted ferry to find the new writer")
    load = load_on(ferry2)
    load.wait_for_acks(50)
    result = load.stop()
    assert result.errors == {}, result.error_log
    assert set(result.acked) <= ids_on(g.writer)


def test_failover_with_data_loss_led_by_aws_under_load(aurora, tmp_path, monkeypatch):
    """With the AWS signals (the fake AWS serving the stand-in's own view):
    a failover with data loss while the old primary stays up and writable.
    From the moment ferry reads FailoverState it sends nothing more to the
    old primary (its From cluster) and holds writes until AWS names the new
    writer; then writes resume there. Nothing acknowledged after that moment
    was written on the old primary."""
    import threading
    from fakes_fixture import fake_aws_module
    STATIC_AKID, STATIC_SECRET = fake_aws_module.STATIC_AKID, fake_aws_module.STATIC_SECRET
    FakeAWS = fake_aws_module.FakeAWS
    g = aurora
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STATIC_AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STATIC_SECRET)
    fake = FakeAWS(source=g).start()
    try:
        lcfg = g.ferry_listener("pg", probe={"user": TEST_USER, "password": TEST_PASSWORD})
        lcfg["auth"] = {"mode": "terminated",
                        "users": [{"name": TEST_USER, "password": TEST_PASSWORD}]}
        config = make_config(lcfg, workers=2, discovery=FAST,
                             aws={"region": PRIMARY, "poll_interval": 1, "urgent_poll_interval": 1,
                                  "lag_poll_interval": 60, "credentials": "env",
                                  "endpoints": {"rds": fake.url, "monitoring": fake.url}})
        ferry = harness.Ferry(config, tmp_path, argv_prefix=g.hosts.wrap()).start()
        wait_for(lambda: writer_of(ferry, "pg") == PRIMARY, timeout=20, what="the writer")
        old = g.writer
        load = load_on(ferry)
        load.wait_for_acks(100)
        op = threading.Thread(target=lambda: g.failover(SECONDARY, allow_data_loss=True,
                                                        old_primary="writable", pause=3.0))
        op.start()
        wait_for(lambda: writer_of(ferry, "pg") is None, timeout=15,
                 what="ferry to read FailoverState and hold writes")
        held_at = max(h["at"] for h in ferry.status()["discovery"]["history"])
        t_hold = datetime.datetime.fromisoformat(held_at.replace("Z", "+00:00")).timestamp()
        op.join(90)
        wait_for(lambda: writer_of(ferry, "pg") == SECONDARY, timeout=30,
                 what="AWS to name the new writer")
        n = len(load.result.acked)
        load.wait_for_acks(n + 100, timeout=30)
        result = load.stop()
        reason = ferry.status()["discovery"]["history"][-1]["reason"]
        assert "AWS names eu-west-1 writer" in reason or "Aurora topology names eu-west-1" in reason
        # the old primary, still writable, took nothing acknowledged after the hold
        on_old = ids_on(old)
        late = [i for i in result.acked_after(t_hold + 0.5) if i in on_old]
        assert late == [], f"acknowledged on the old primary after ferry held: {late[:10]}"
        assert set(result.acked_after(t_hold + 0.5)) <= ids_on(g.writer)
        assert result.idle_checked == 3, result.error_log
    finally:
        fake.stop()
