"""Discovery probes and the cluster endpoints' names and TLS: an endpoint
whose name does not resolve (an Aurora secondary's writer endpoint before
its promotion) is *inactive*, a state that costs no failure; a probe speaks
TLS exactly as the listener's backend_tls says, and a failed handshake or
certificate check is *tls-failed*, with the check named, and never a writer.

ferry runs under harness.PrivateHosts (its own /etc/hosts), so the tests
decide which names resolve, and when."""

import json
import subprocess
import time

import psycopg2
import pymysql
import pytest

import harness
from fronts import my_connect, pg_dsn
from harness import PrivateHosts, cluster, listener, make_config
from harness.hosts import available
from harness.mariadb import PROBE_PASSWORD, PROBE_USER, TEST_PASSWORD, TEST_USER
from harness.pki import make_pki
from harness.proc import wait_for

FAST = {"probe_interval": 0.1, "probe_timeout": 5, "writer_down_after": 2, "hold_timeout": 20}

NAME_A = "writer-a.cluster-ferry.us-east-1.rds.example.test"
NAME_B = "writer-b.cluster-ferry.eu-west-1.rds.example.test"
NAME_OTHER = "not-in-the-certificate.example.test"     # resolves, but the certificate lacks it

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


def test_writer_whose_endpoint_goes_inactive_is_dropped(ferry_factory, pg_pair, tmp_path):
    """The writer's own endpoint stops resolving (its cluster was demoted):
    dropped after writer_down_after rounds, as inactive, not as failures."""
    hosts = PrivateHosts(tmp_path)
    hosts.set(NAME_A, pg_pair.primary.host)
    hosts.set(NAME_B, pg_pair.replica.host)
    cfg = make_config(pg_by_name(pg_pair, NAME_A, NAME_B), workers=1, discovery=FAST)
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] == "region-a", timeout=15,
             what="region-a as writer")
    hosts.set(NAME_A, None)
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] is None, timeout=15, what="no writer")
    entry = discovery_of(ferry, "pg")
    assert "writer endpoint inactive (does not resolve) for 2 consecutive probes" in \
        entry["reason"], entry["reason"]
    a = clusters_of(ferry, "pg")["region-a"]
    assert a["state"] == "inactive" and a["consecutive_failures"] == 0, a
    # the name comes back before anyone else took over: the writer resumes
    hosts.set(NAME_A, pg_pair.primary.host)
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] == "region-a", timeout=15,
             what="region-a as writer again")
    assert log_count(ferry, "event=probe.endpoint_active listener=pg cluster=region-a") == 1


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


# ---- TLS, MariaDB ----

@pytest.fixture(scope="module")
def tls_only_mariadb():
    """A MariaDB pair serving TLS for NAME_A / NAME_B / localhost / 127.0.0.1
    that refuses every TCP client without it (require_secure_transport)."""
    with harness.MariaDBPair(tls=True, tls_names=(NAME_A, NAME_B)) as pair:
        for server in (pair.primary, pair.replica):
            server.query("SET GLOBAL require_secure_transport = ON")   # admin: unix socket
        yield pair


def my_tls_listener(pair, backend_tls, name_a=NAME_A, name_b=NAME_B):
    return listener("my", "mysql",
                    [cluster("region-a", f"{name_a}:{pair.primary.port}"),
                     cluster("region-b", f"{name_b}:{pair.replica.port}")],
                    probe={"user": PROBE_USER, "password": PROBE_PASSWORD},
                    auth={"mode": "terminated",
                          "users": [{"name": TEST_USER, "password": TEST_PASSWORD}]},
                    backend_tls=backend_tls)


def tls_hosts(tmp_path, pair):
    hosts = PrivateHosts(tmp_path)
    hosts.set(NAME_A, pair.primary.host)
    hosts.set(NAME_B, pair.replica.host)
    hosts.set(NAME_OTHER, pair.primary.host)
    return hosts


def test_mariadb_probes_verify_identity(ferry_factory, tls_only_mariadb, tmp_path):
    pair = tls_only_mariadb
    hosts = tls_hosts(tmp_path, pair)
    # without TLS the probes cannot log in at all: the servers insist on it
    plain = make_config(my_tls_listener(pair, {"mode": "disabled"}), workers=1, discovery=FAST)
    code, doc = discover(plain, tmp_path, hosts)
    assert code == 1 and doc[0]["clusters"][0]["state"] == "unreachable", doc

    cfg = make_config(my_tls_listener(pair, {"mode": "verify_identity", "ca_file": pair.tls_ca}),
                      workers=1, discovery=FAST)
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: discovery_of(ferry, "my")["writer"] == "region-a", timeout=15,
             what="region-a as writer")
    assert state_of(ferry, "my", "region-b") == "read-only"
    conn = my_connect(ferry)
    with conn.cursor() as cur:
        cur.execute("SELECT @@port, 40 + 2")
        assert cur.fetchone() == (pair.primary.port, 42)
    conn.close()
    code, doc = discover(cfg, tmp_path, hosts)
    assert code == 0 and [c["state"] for c in doc[0]["clusters"]] == ["writable", "read-only"]


def held_then_refused(ferry, connect):
    """A client gets the no-writer error after hold_timeout, never a backend."""
    t0 = time.monotonic()
    with pytest.raises(pymysql.err.OperationalError) as e:
        connect()
    assert time.monotonic() - t0 >= 0.8      # held first
    return e.value.args


def test_mariadb_probe_wrong_ca_or_name_is_tls_failed(ferry_factory, tls_only_mariadb, tmp_path,
                                                      pki):
    pair = tls_only_mariadb
    hosts = tls_hosts(tmp_path, pair)
    fast = dict(FAST, hold_timeout=1)
    # a CA that did not sign the servers' certificates
    cfg = make_config(my_tls_listener(pair, {"mode": "verify_identity",
                                             "ca_file": str(pki / "other.pem")}),
                      workers=1, discovery=fast)
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: clusters_of(ferry, "my")["region-a"]["probes_total"] >= 5, timeout=15,
             what="five probes")
    for c in clusters_of(ferry, "my").values():
        assert c["state"] == "tls-failed", c
        assert c["detail"].startswith("TLS: certificate verify failed: "), c
        assert c["consecutive_failures"] >= 2, c
    assert discovery_of(ferry, "my")["writer"] is None
    err = held_then_refused(ferry, lambda: my_connect(ferry))
    assert err[0] == 1053 and "no writer for listener my" in err[1], err
    assert log_count(ferry, "event=probe.tls_failed listener=my cluster=region-a") == 1

    # the right CA, but a name the certificate does not carry (the address
    # it resolves to, 127.0.0.1, is in it: the check must be on the name)
    cfg = make_config(my_tls_listener(pair, {"mode": "verify_identity", "ca_file": pair.tls_ca},
                                      name_a=NAME_OTHER), workers=1, discovery=fast)
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: clusters_of(ferry, "my")["region-a"]["probes_total"] >= 3, timeout=15,
             what="three probes")
    a = clusters_of(ferry, "my")["region-a"]
    assert a["state"] == "tls-failed", a
    assert a["detail"] == f"TLS: server certificate does not match host name {NAME_OTHER}", a
    assert discovery_of(ferry, "my")["writer"] is None
    # verify_ca does not check names: the same endpoint is fine there
    cfg = make_config(my_tls_listener(pair, {"mode": "verify_ca", "ca_file": pair.tls_ca},
                                      name_a=NAME_OTHER), workers=1, discovery=FAST)
    code, doc = discover(cfg, tmp_path, hosts)
    assert code == 0 and doc[0]["clusters"][0]["state"] == "writable", doc


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


# ---- TLS, PostgreSQL ----

TLS_ONLY_HBA = f"""
local   all         all                           trust
hostssl all         {harness.pg.TEST_USER}  127.0.0.1/32  scram-sha-256
hostssl all         all                           127.0.0.1/32  trust
hostssl replication all                           127.0.0.1/32  trust
"""


@pytest.fixture(scope="module")
def tls_only_pg(tmp_path_factory):
    """A PostgreSQL pair with ssl=on and only hostssl lines in pg_hba.conf;
    its certificate names NAME_A, NAME_B, localhost and 127.0.0.1."""
    pki_dir = make_pki(tmp_path_factory.mktemp("pgpki"), names=(NAME_A, NAME_B))
    with harness.pg.tls_pair(pki_dir, hba=TLS_ONLY_HBA) as pair:    # libpq prefers TLS: still served
        pair.pki = pki_dir
        yield pair


def pg_tls_listener(pair, backend_tls, name_a=NAME_A):
    return pg_by_name(pair, name_a, NAME_B, backend_tls=backend_tls)


def test_pg_probes_verify_full(ferry_factory, tls_only_pg, tmp_path):
    pair = tls_only_pg
    hosts = tls_hosts(tmp_path, pair)
    # plaintext probes are refused by pg_hba.conf: the mode is really used
    plain = make_config(pg_tls_listener(pair, {"mode": "disable"}), workers=1)
    code, doc = discover(plain, tmp_path, hosts)
    assert code == 1 and doc[0]["clusters"][0]["state"] == "unreachable", doc
    assert "no pg_hba.conf entry" in doc[0]["clusters"][0]["detail"], doc

    cfg = make_config(pg_tls_listener(pair, {"mode": "verify-full",
                                             "ca_file": str(pair.pki / "ca.pem")}),
                      workers=1, discovery=FAST)
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] == "region-a", timeout=15,
             what="region-a as writer")
    assert state_of(ferry, "pg", "region-b") == "read-only"
    rows = harness.pg.run_query(pg_dsn(ferry), "SELECT inet_server_port(), ssl FROM pg_stat_ssl "
                                               "WHERE pid = pg_backend_pid()")
    assert rows == [(pair.primary.port, True)]
    code, doc = discover(cfg, tmp_path, hosts)
    assert code == 0 and [c["state"] for c in doc[0]["clusters"]] == ["writable", "read-only"]


def test_pg_probe_wrong_ca_or_name_is_tls_failed(ferry_factory, tls_only_pg, tmp_path):
    pair = tls_only_pg
    hosts = tls_hosts(tmp_path, pair)
    cfg = make_config(pg_tls_listener(pair, {"mode": "verify-full",
                                             "ca_file": str(pair.pki / "other.pem")}),
                      workers=1, discovery=dict(FAST, hold_timeout=1))
    ferry = start_ferry(ferry_factory, cfg, hosts)
    wait_for(lambda: clusters_of(ferry, "pg")["region-a"]["probes_total"] >= 5, timeout=15,
             what="five probes")
    for c in clusters_of(ferry, "pg").values():
        assert c["state"] == "tls-failed", c
        # the reason comes from a verify callback that libpq 15 lets ferry
        # add only once its TLS object exists (see probe_pg.c)
        assert c["detail"].startswith("TLS: ") and "certificate verify failed" in c["detail"], c
    assert discovery_of(ferry, "pg")["writer"] is None
    assert log_count(ferry, "event=probe.tls_failed listener=pg cluster=region-b") >= 1
    t0 = time.monotonic()
    with pytest.raises(psycopg2.OperationalError) as e:
        psycopg2.connect(pg_dsn(ferry) + " connect_timeout=10")
    assert time.monotonic() - t0 >= 0.8      # held first, never routed
    assert "ferry: no writer for listener pg after waiting 1s" in str(e.value), e.value

    code, doc = discover(make_config(pg_tls_listener(pair, {
        "mode": "verify-full", "ca_file": str(pair.pki / "ca.pem")}, name_a=NAME_OTHER)),
        tmp_path, hosts)
    a = doc[0]["clusters"][0]
    assert a["state"] == "tls-failed", a
    assert a["detail"] == (f'TLS: server certificate for "localhost" (and 3 other names) '
                           f'does not match host name "{NAME_OTHER}"'), a
    # verify-ca accepts it: the chain is right, names are not checked
    code, doc = discover(make_config(pg_tls_listener(pair, {
        "mode": "verify-ca", "ca_file": str(pair.pki / "ca.pem")}, name_a=NAME_OTHER)),
        tmp_path, hosts)
    assert doc[0]["clusters"][0]["state"] == "writable", doc


def test_sessions_connect_where_the_probe_resolved_the_writer(ferry_factory, pg_pair, tmp_path):
    """New sessions connect to the address discovery's last probe resolved
    for the writer's endpoint (and found writable), not to what a lookup of
    their own would say: the writer's name vanishing between two probe
    rounds does not stop them, and a connection storm costs no lookups."""
    hosts = PrivateHosts(tmp_path)
    hosts.set(NAME_A, "127.0.0.1")
    hosts.set(NAME_B, "127.0.0.1")
    slow = {"probe_interval": 30, "probe_timeout": 5, "writer_down_after": 2, "hold_timeout": 3}
    ferry = start_ferry(ferry_factory, make_config(pg_by_name(pg_pair, NAME_A, NAME_B),
                                                   workers=1, discovery=slow), hosts)
    wait_for(lambda: discovery_of(ferry, "pg")["writer"] == "region-a", timeout=10,
             what="region-a as writer")
    hosts.set(NAME_A, None)     # the next probe round is ~30 s away
    for _ in range(3):
        conn = psycopg2.connect(pg_dsn(ferry), connect_timeout=5)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            assert cur.fetchone() == (False,)
        conn.close()
    assert "resolve" not in ferry.log_text().split("writer_changed", 1)[1]
