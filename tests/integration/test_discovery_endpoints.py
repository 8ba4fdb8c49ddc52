"""Discovery probes and the cluster endpoints' names: an endpoint whose name
does not resolve (an Aurora secondary's writer endpoint before its
promotion) is *inactive*, a state that costs no failure.

ferry runs under harness.PrivateHosts (its own /etc/hosts), so the tests
decide which names resolve, and when."""

import json
import subprocess
import time

import pytest

import harness
from fronts import pg_dsn
from harness import PrivateHosts, cluster, listener, make_config
from harness.hosts import available
from harness.proc import wait_for

FAST = {"probe_interval": 0.1, "probe_timeout": 5, "writer_down_after": 2, "hold_timeout": 20}

NAME_A = "writer-a.cluster-ferry.us-east-1.rds.example.test"
NAME_B = "writer-b.cluster-ferry.eu-west-1.rds.example.test"

pytestmark = pytest.mark.skipif(available() is not None,
                                reason=f"private hosts: {available()}")


def start_ferry(factory, config, hosts, name=None):
    """ferry_factory's ferry, under the test's own hosts file."""
    f = harness.Ferry(config, factory.tmp_path, name=name or f"ferry{len(factory.created)}",
                      argv_prefix=hosts.wrap())
    factory.created.append(f)
    return f.start()


def discover(config, tmp_path, hosts):
    """`ferry discover --json` under the same hosts file: (exit code, doc)."""
    path = harness.ferry.write_config(config, str(tmp_path / "discover.json"))
    res = subprocess.run([*hosts.wrap(), harness.require_binary(), "discover", "-c", path,
                          "--json"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    return res.returncode, json.loads(res.stdout or "[]")


def discovery_of(ferry, name):
    for entry in ferry.status()["discovery"]["listeners"]:
        if entry["name"] == name:
            return entry
    raise KeyError(name)


def clusters_of(ferry, name):
    return {c["name"]: c for c in discovery_of(ferry, name)["clusters"]}


def state_of(ferry, name, cluster_name):
    return clusters_of(ferry, name)[cluster_name]["state"]


def log_count(ferry, text):
    return ferry.log_text().count(text)


# ---- inactive endpoints ----

def pg_by_name(pair, name_a, name_b, **options):
    return listener("pg", "postgresql",
                    [cluster("region-a", f"{name_a}:{pair.primary.port}"),
                     cluster("region-b", f"{name_b}:{pair.replica.port}")],
                    probe={"user": "ferry_test", "password": "ferry_pw"}, **options)


def test_unresolvable_endpoint_is_inactive_until_it_resolves(ferry_factory, own_pg, tmp_path):
    hosts = PrivateHosts(tmp_path)
    hosts.set(NAME_A, own_pg.primary.host)
    hosts.set(NAME_B, None)                 # the secondary's writer endpoint: no such name
    cfg = make_config(pg_by_name(own_pg, NAME_A, NAME_B), workers=1, discovery=FAST)
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] == "region-a", timeout=15,
             what="region-a as writer")
    wait_for(lambda: clusters_of(ferry, "pg")["region-b"]["probes_total"] >= 10, timeout=15,
             what="ten probes of region-b")
    b = clusters_of(ferry, "pg")["region-b"]
    assert b["state"] == "inactive", b
    assert b["detail"] == f"writer endpoint {NAME_B} does not resolve"
    assert b["consecutive_failures"] == 0 and b["probe_failures_total"] == 0, b
    assert state_of(ferry, "pg", "region-a") == "writable"
    # logged once, not every round
    assert log_count(ferry, "event=probe.endpoint_inactive listener=pg cluster=region-b "
                            f"endpoint={NAME_B}") == 1
    assert log_count(ferry, "event=probe.endpoint_active") == 0

    code, doc = discover(cfg, tmp_path, hosts)
    assert code == 0
    states = {c["name"]: (c["state"], c["detail"]) for c in doc[0]["clusters"]}
    assert states["region-b"] == ("inactive", f"writer endpoint {NAME_B} does not resolve")
    assert states["region-a"][0] == "writable"

    # Promotion of the secondary: its writer endpoint appears, the old writer
    # stops. No restart: the next lookups see the new name.
    own_pg.replica.promote()
    own_pg.primary.stop(mode="immediate")
    hosts.set(NAME_B, own_pg.replica.host)
    t0 = time.monotonic()
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] == "region-b", timeout=15,
             what="region-b as writer")
    assert time.monotonic() - t0 < 5
    assert state_of(ferry, "pg", "region-b") == "writable"
    assert log_count(ferry, "event=probe.endpoint_active listener=pg cluster=region-b") == 1
    port = harness.pg.run_query(pg_dsn(ferry), "SELECT inet_server_port()")[0][0]
    assert port == own_pg.replica.port


def test_a_name_that_fails_otherwise_is_a_failure_not_inactive(ferry_factory, pg_pair, tmp_path):
    """Only a name that does not exist is inactive: a refused connection to a
    name that resolves counts as a failed probe."""
    hosts = PrivateHosts(tmp_path)
    hosts.set(NAME_A, pg_pair.primary.host)
    hosts.set(NAME_B, "127.0.0.1")
    dead = harness.free_port()
    lcfg = listener("pg", "postgresql",
                    [cluster("region-a", f"{NAME_A}:{pg_pair.primary.port}"),
                     cluster("region-b", f"{NAME_B}:{dead}")],
                    probe={"user": "ferry_test", "password": "ferry_pw"})
    ferry = start_ferry(ferry_factory, make_config(lcfg, workers=1, discovery=FAST), hosts)
    wait_for(lambda: clusters_of(ferry, "pg")["region-b"]["consecutive_failures"] >= 2,
             timeout=15, what="region-b failing")
    assert state_of(ferry, "pg", "region-b") == "unreachable"
