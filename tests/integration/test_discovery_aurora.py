"""ferry's discovery on the Aurora PostgreSQL Global Database stand-in
(harness/aurora.py), with SQL probes alone (no AWS): a secondary whose
writer endpoint does not resolve is inactive and seen through its reader
endpoint; the global topology
Aurora publishes (aurora_global_db_instance_status) in /v1/status and in
decide(), a managed switchover followed through the writer endpoint names,
and a failover that leaves the old primary writable (split brain) followed
without losing the fence."""

import pytest

import harness
from harness import PrivateHosts, make_config
from harness.aurora import AuroraGlobalPg
from harness.pg import TEST_PASSWORD, TEST_USER
from harness.proc import wait_for
from test_discovery import FAST, discovery_of, writer_of

pytestmark = pytest.mark.skipif(harness.hosts.available() is not None,
                                reason=f"private hosts: {harness.hosts.available()}")

PRIMARY, SECONDARY = "us-east-1", "eu-west-1"


@pytest.fixture
def aurora(tmp_path, ferry_bin):
    hosts = PrivateHosts(tmp_path)
    with AuroraGlobalPg(hosts) as g:
        config = make_config(g.ferry_listener("pg", aws=False,
                                              probe={"user": TEST_USER, "password": TEST_PASSWORD},
                                              global_writer_endpoint=g.global_name),
                             workers=1, discovery=FAST)
        ferry = harness.Ferry(config, tmp_path, argv_prefix=hosts.wrap())
        try:
            ferry.start()
            wait_for(lambda: writer_of(ferry, "pg") == PRIMARY, timeout=20,
                     what="ferry to find the writer in us-east-1")
            yield g, ferry
        finally:
            if ferry.is_running():
                assert ferry.stop() == 0, ferry.log_tail()


def instance_via(ferry):
    host, port = ferry.listener_addr("pg")
    return harness.pg.run_query(harness.pg.dsn(host, port),
                                "SELECT aurora_db_instance_identifier()")[0][0]


def topology(ferry, cluster):
    c = [c for c in discovery_of(ferry, "pg")["clusters"] if c["name"] == cluster][0]
    return {m["server_id"]: (m["region"], m["role"]) for m in c.get("aurora_topology", [])}


def test_status_shows_the_global_topology_and_a_switchover_is_followed(aurora):
    g, ferry = aurora
    wait_for(lambda: topology(ferry, PRIMARY), timeout=10, what="the topology read")
    assert topology(ferry, PRIMARY) == {"g1-use1-1": (PRIMARY, "writer"),
                                        "g1-use1-2": (PRIMARY, "reader"),
                                        "g1-euw1-1": (SECONDARY, "reader")}
    # the secondary's writer endpoint does not resolve: inactive, not a
    # failure, and seen (healthy, with the topology) through its reader endpoint
    wait_for(lambda: topology(ferry, SECONDARY), timeout=10, what="the secondary's topology")
    sec = [c for c in discovery_of(ferry, "pg")["clusters"] if c["name"] == SECONDARY][0]
    assert sec["state"] == "inactive" and sec["via"] == "reader_endpoint"
    assert sec["consecutive_failures"] == 0 and sec["probe_failures_total"] == 0
    assert topology(ferry, SECONDARY)["g1-use1-1"] == (PRIMARY, "writer")
    assert instance_via(ferry) == "g1-use1-1"
    gw = discovery_of(ferry, "pg")["global_writer_endpoint"]
    assert gw["name"] == g.global_name and gw["points_to"] == PRIMARY and gw["error"] is None
    g.switchover(SECONDARY)
    wait_for(lambda: writer_of(ferry, "pg") == SECONDARY, timeout=30, what="the switchover followed")
    wait_for(lambda: topology(ferry, SECONDARY).get("g1-euw1-1") == (SECONDARY, "writer"),
             timeout=10, what="the new writer's topology")
    d = discovery_of(ferry, "pg")
    assert d["split_brain"] is False
    assert not any(c["fenced"] for c in d["clusters"])     # the old writer was read-only
    assert instance_via(ferry) == "g1-euw1-1"
    wait_for(lambda: discovery_of(ferry, "pg")["global_writer_endpoint"]["points_to"] == SECONDARY,
             timeout=10, what="the global writer endpoint to follow")


def test_failover_leaving_the_old_primary_writable_is_followed_and_fenced(aurora):
    """A failover with data loss while the old primary region still runs and
    takes writes: each side's topology names itself (while both answer,
    Aurora's word settles nothing), the promotion (or the promoted side's
    topology, in a round where only it answered) wins, and the old writer
    is fenced."""
    g, ferry = aurora
    g.failover(SECONDARY, allow_data_loss=True, old_primary="writable")
    wait_for(lambda: writer_of(ferry, "pg") == SECONDARY, timeout=30, what="the failover followed")
    d = discovery_of(ferry, "pg")
    old = [c for c in d["clusters"] if c["name"] == PRIMARY][0]
    # its writer endpoint stops resolving (the stand-in, as Aurora, repoints
    # the names): seen through its reader endpoint, and still fenced
    assert old["state"] in ("writable", "inactive") and old["fenced"] is True
    wait_for(lambda: topology(ferry, PRIMARY).get("g1-use1-1") == (PRIMARY, "writer"),
             timeout=10, what="the old region still naming its own writer")
    last = ferry.status()["discovery"]["history"][-1]
    assert last["to"] == SECONDARY and "eu-west-1" in last["reason"]
    assert instance_via(ferry) == "g1-euw1-1"
