"""ferry's discovery on the Aurora MySQL Global Database stand-in
(harness/aurora_mysql.py): the MySQL probe reads
information_schema.aurora_global_db_instance_status into /v1/status
(aurora_topology) and decide(), as the PostgreSQL probe does with
aurora_global_db_instance_status(); a managed switchover is followed; an
Aurora MySQL without that table (older than 3.04, or not in a global
database) and a plain MariaDB work as before, without a topology."""

import pytest

import harness
from harness import PrivateHosts, make_config
from harness.aurora_mysql import AuroraGlobalMySQL
from harness.mariadb import TEST_PASSWORD, TEST_USER, connect, run_query
from harness.proc import wait_for
from test_discovery import FAST, discovery_of, my_discovered, writer_of

pytestmark = pytest.mark.skipif(harness.hosts.available() is not None,
                                reason=f"private hosts: {harness.hosts.available()}")

PRIMARY, SECONDARY = "us-east-1", "eu-west-1"
PROBE = {"user": TEST_USER, "password": TEST_PASSWORD}


@pytest.fixture
def standin(tmp_path, ferry_bin):
    """start(**stand-in options) -> (stand-in, start_ferry()); both stopped after."""
    hosts = PrivateHosts(tmp_path)
    made = []

    def start(**options):
        g = AuroraGlobalMySQL(hosts, **options).start()
        made.append(g)

        def start_ferry():
            config = make_config(g.ferry_listener(aws=False, probe=PROBE), workers=1,
                                 discovery=FAST)
            ferry = harness.Ferry(config, tmp_path, argv_prefix=hosts.wrap())
            made.append(ferry)
            return ferry.start()
        return g, start_ferry
    yield start
    for thing in reversed(made):
        if isinstance(thing, harness.Ferry):
            if thing.is_running():
                assert thing.stop() == 0, thing.log_tail()
        else:
            thing.stop()


def cluster_of(ferry, name):
    return [c for c in discovery_of(ferry, "my")["clusters"] if c["name"] == name][0]


def topology(ferry, cluster):
    return {m["server_id"]: (m["region"], m["role"])
            for m in cluster_of(ferry, cluster).get("aurora_topology", [])}


def instance_via(ferry):
    """The instance a client reaches through ferry (the relay names it)."""
    return run_query(connect(*ferry.listener_addr("my")), "SELECT @@aurora_server_id")[0][0]


def test_status_shows_the_global_topology_and_a_switchover_is_followed(standin):
    g, start_ferry = standin()
    ferry = start_ferry()
    wait_for(lambda: writer_of(ferry, "my") == PRIMARY, timeout=20,
             what="ferry to find the writer in us-east-1")
    wait_for(lambda: topology(ferry, PRIMARY) and topology(ferry, SECONDARY), timeout=10,
             what="the topology read from both regions")
    expected = {"g1-use1-1": (PRIMARY, "writer"), "g1-euw1-1": (SECONDARY, "reader")}
    assert topology(ferry, PRIMARY) == expected
    # the secondary's writer endpoint does not resolve: seen through its
    # reader endpoint, healthy, with the same topology
    sec = cluster_of(ferry, SECONDARY)
    assert sec["state"] == "inactive" and sec["via"] == "reader_endpoint"
    assert sec["aurora"] is True and sec["probe_failures_total"] == 0
    assert topology(ferry, SECONDARY) == expected
    member = cluster_of(ferry, PRIMARY)["aurora_topology"][0]
    assert member["visibility_lag_ms"] == 0
    assert instance_via(ferry) == "g1-use1-1"

    g.switchover(SECONDARY)
    wait_for(lambda: writer_of(ferry, "my") == SECONDARY, timeout=30,
             what="the switchover followed")
    moved = {"g1-use1-1": (PRIMARY, "reader"), "g1-euw1-1": (SECONDARY, "writer")}
    wait_for(lambda: topology(ferry, SECONDARY) == moved and topology(ferry, PRIMARY) == moved,
             timeout=10, what="both regions to report the new writer")
    d = discovery_of(ferry, "my")
    assert d["split_brain"] is False and not any(c["fenced"] for c in d["clusters"])
    assert instance_via(ferry) == "g1-euw1-1"


def test_the_topology_names_the_writer_when_both_clusters_accept_writes(standin):
    """Both regions' writers accept writes (the old primary was never made
    read-only) and both writer endpoints resolve; every instance reports
    eu-west-1's as the global writer. Without the topology ferry could not
    choose and would hold writes (split brain); with it, eu-west-1 it is."""
    g, start_ferry = standin(demoted_writer_linger=3600)   # us-east-1's name stays
    g.failover(SECONDARY, old_primary="writable")
    g.write_topology(on=g.instances())
    ferry = start_ferry()
    wait_for(lambda: writer_of(ferry, "my") == SECONDARY, timeout=20,
             what="the writer the topology names")
    d = discovery_of(ferry, "my")
    assert {c["name"]: c["state"] for c in d["clusters"]} == {PRIMARY: "writable",
                                                              SECONDARY: "writable"}
    last = ferry.status()["discovery"]["history"][-1]
    assert last["to"] == SECONDARY and "the Aurora topology names eu-west-1 writer" in \
        last["reason"], last
    assert instance_via(ferry) == "g1-euw1-1"


def test_aurora_mysql_without_the_global_table_has_no_topology(standin):
    """An Aurora MySQL older than 3.04, or a cluster outside a global
    database: REPLICA_HOST_STATUS says Aurora, there is no
    aurora_global_db_instance_status, and the probes alone find the writer."""
    g, start_ferry = standin(global_status_table=False)
    ferry = start_ferry()
    wait_for(lambda: writer_of(ferry, "my") == PRIMARY, timeout=20, what="the writer found")
    wait_for(lambda: cluster_of(ferry, SECONDARY)["state"] == "inactive", timeout=10,
             what="the secondary probed")
    for name in (PRIMARY, SECONDARY):
        c = cluster_of(ferry, name)
        assert c["aurora"] is True and "aurora_topology" not in c, c
        assert c["consecutive_failures"] == 0
    assert "no topology" not in cluster_of(ferry, PRIMARY)["detail"]
    assert instance_via(ferry) == "g1-use1-1"


def test_plain_mariadb_has_no_topology(ferry_factory, mariadb_pair, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", TEST_PASSWORD)
    ferry = ferry_factory(make_config(my_discovered(mariadb_pair), workers=1, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")
    wait_for(lambda: all(c["state"] != "unknown" for c in discovery_of(ferry, "my")["clusters"]),
             timeout=10, what="both clusters probed")
    for c in discovery_of(ferry, "my")["clusters"]:
        assert c["aurora"] is False and "aurora_topology" not in c, c
    assert {c["name"]: c["state"] for c in discovery_of(ferry, "my")["clusters"]} == \
        {"region-a": "writable", "region-b": "read-only"}
