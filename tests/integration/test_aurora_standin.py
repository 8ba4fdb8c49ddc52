"""The Aurora Global Database stand-in (harness/aurora.py) against what AWS
documents (reference/aws.md §3, §4, §12, §13): endpoint names that resolve
or not inside hosts.wrap(), Aurora's status functions on every instance,
the fake AWS (SigV4-signed requests, through ferry's own aws_probe and
botocore's signer) agreeing with pg_is_in_recovery() after a switchover and
a failover, a split brain, a rejoin, TLS-only instances, and ferry itself
following a switchover through the names."""

import re
import socket
import subprocess
import threading
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from contextlib import contextmanager

import psycopg2
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import harness
from fakes_fixture import Probe, fake_aws_module, probe_bin
from fake_aws import STATIC_AKID, STATIC_SECRET, FakeAWS
from harness import PrivateHosts, make_config
from harness.aurora import MASTER, AuroraGlobalPg
from harness.pg import TEST_PASSWORD, TEST_USER, pg_bin
from harness.proc import wait_for

pytestmark = pytest.mark.skipif(harness.hosts.available() is not None,
                                reason=f"private hosts: {harness.hosts.available()}")

PRIMARY, SECONDARY = "us-east-1", "eu-west-1"


@pytest.fixture
def hosts(tmp_path):
    return PrivateHosts(tmp_path)


@contextmanager
def global_db(hosts, **options):
    """A stand-in and a fake AWS serving its topology; both stopped after."""
    with AuroraGlobalPg(hosts, **options) as g:
        fake = FakeAWS(source=g).start()
        try:
            yield g, fake
        finally:
            fake.stop()


# ---- observing through the names (inside hosts.wrap()) ---------------------

def resolve(hosts, name):
    """What a wrapped process resolves name to (getent), None when it does not."""
    res = subprocess.run([*hosts.wrap(), "getent", "hosts", name], capture_output=True,
                         text=True, timeout=10)
    if res.returncode == 2:
        return None
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[0]


def psql(hosts, g, name, sql, user="postgres", dbname="app", **conn):
    """Runs sql with psql inside hosts.wrap(), connecting to the name;
    returns its rows as lists of strings."""
    params = dict(host=name, port=g.port, user=user, dbname=dbname, connect_timeout=5, **conn)
    conninfo = " ".join(f"{k}={v}" for k, v in params.items())
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": TEST_PASSWORD}
    res = subprocess.run([*hosts.wrap(), pg_bin("psql"), "-X", "-A", "-t", "-F", "|",
                          "-d", conninfo, "-c", sql], capture_output=True, text=True,
                         timeout=30, env=env)
    assert res.returncode == 0, res.stderr
    return [line.split("|") for line in res.stdout.splitlines() if line]


def master_of(inst, user="postgres", dbname="postgres"):
    """(server_id, aws_region) of the MASTER_SESSION_ID row(s) an instance reports."""
    return inst.query("SELECT server_id, aws_region FROM aurora_global_db_instance_status() "
                      "WHERE session_id = %s", (MASTER,), user=user, dbname=dbname,
                      password=TEST_PASSWORD if user == TEST_USER else None)


def writable(inst):
    return not inst.query("SELECT pg_is_in_recovery()")[0][0]


# ---- the fake AWS, signed ------------------------------------------------

def probe(fake, *args):
    """ferry's own AWS client (aws_probe) against the fake: one call's result."""
    call = Probe(probe_bin(), fake)(*args).call
    assert call["ok"], call
    return call["result"]


def rds(fake, action, **params):
    """A SigV4-signed RDS query (botocore's signer) to the fake; the parsed
    XML with namespaces stripped. For the members aws_probe does not print."""
    body = urllib.parse.urlencode({"Action": action, "Version": "2014-10-31", **params})
    req = AWSRequest(method="POST", url=fake.url + "/", data=body, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(Credentials(STATIC_AKID, STATIC_SECRET), "rds", "us-east-1").add_auth(req)
    prepared = req.prepare()
    http = urllib.request.Request(prepared.url, data=prepared.body.encode(), method="POST",
                                  headers=dict(prepared.headers))
    with urllib.request.urlopen(http, timeout=10) as r:
        text = r.read().decode()
    return ET.fromstring(re.sub(r' xmlns="[^"]+"', "", text, count=1))


def global_cluster(fake):
    root = rds(fake, "DescribeGlobalClusters")
    (gc,) = root.findall("./DescribeGlobalClustersResult/GlobalClusters/GlobalClusterMember")
    return gc


def failover_state(fake):
    fs = global_cluster(fake).find("FailoverState")
    return None if fs is None else {c.tag: c.text for c in fs}


def sync_status(fake, cluster_id):
    for m in global_cluster(fake).findall("./GlobalClusterMembers/GlobalClusterMember"):
        if m.findtext("DBClusterArn").endswith(f":cluster:{cluster_id}"):
            return m.findtext("SynchronizationStatus")
    raise KeyError(cluster_id)


def run_in_thread(fn, *args, **kw):
    """Runs an operation in a thread, so a test can watch it; join() returns
    its result or raises its exception."""
    out = {}

    def target():
        try:
            out["result"] = fn(*args, **kw)
        except BaseException as e:  # noqa: BLE001 - re-raised in join()
            out["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join(timeout=120):
        t.join(timeout)
        assert not t.is_alive(), f"{fn.__name__} did not finish within {timeout}s"
        if "error" in out:
            raise out["error"]
        return out["result"]
    return join


def arn(cluster_id, region):
    return fake_aws_module.cluster_arn(region, cluster_id)


# ---- tests -----------------------------------------------------------------

def test_names_functions_and_aws_view(hosts):
    with global_db(hosts) as (g, fake):
        pri, sec = g.cluster(PRIMARY), g.cluster(SECONDARY)
        writer, reader, sec_reader = pri.instances[0], pri.instances[1], sec.instances[0]
        assert pri.writer_name == f"g1-use1.cluster-{pri.hash}.us-east-1.rds.example.test"

        # Names resolve only inside hosts.wrap(); the secondary's writer endpoint not at all.
        assert resolve(hosts, sec.writer_name) is None
        assert resolve(hosts, sec.reader_name) == sec_reader.host
        assert resolve(hosts, pri.writer_name) == writer.host
        assert resolve(hosts, pri.reader_name) == reader.host
        assert resolve(hosts, g.global_name) == writer.host
        assert resolve(hosts, sec_reader.endpoint) == sec_reader.host
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo(pri.writer_name, g.port)
        # ... and lead to the right servers.
        assert psql(hosts, g, sec.reader_name,
                    "SELECT aurora_db_instance_identifier(), pg_is_in_recovery()",
                    user=TEST_USER) == [["g1-euw1-1", "t"]]
        assert psql(hosts, g, pri.writer_name,
                    "SELECT aurora_db_instance_identifier(), pg_is_in_recovery()") == \
            [["g1-use1-1", "f"]]

        # Every instance of every region reports the same global view.
        everyone = {(i.instance_id, i.cluster.region) for i in g.instances()}
        for inst in g.instances():
            for user, db in (("postgres", "postgres"), (TEST_USER, "app")):
                pw = TEST_PASSWORD if user == TEST_USER else None
                assert inst.query("SELECT aurora_db_instance_identifier()", user=user,
                                  dbname=db, password=pw) == [(inst.instance_id,)]
                rows = inst.query("SELECT server_id, session_id, aws_region "
                                  "FROM aurora_global_db_instance_status()", user=user,
                                  dbname=db, password=pw)
                assert {(r[0], r[2]) for r in rows} == everyone
                assert master_of(inst, user, db) == [("g1-use1-1", PRIMARY)]
                for server_id, session_id, _ in rows:
                    if server_id != "g1-use1-1":
                        uuid.UUID(session_id)           # readers: their UUID
            status = {r[0]: r[1:] for r in inst.query(
                "SELECT aws_region, durability_lag_in_msec, rpo_lag_in_msec, "
                "last_lag_calculation_time = 'epoch'::timestamptz, highest_lsn_written "
                "FROM aurora_global_db_status()")}
            assert status[PRIMARY][:3] == (-1, -1, True)
            assert status[SECONDARY][2] is False
            if inst in (writer, sec_reader):    # a reader knows only its own and the writer's LSNs
                assert status[SECONDARY][0] >= 0
            assert status[PRIMARY][3] > 0
        # aurora_replica_status(): the local cluster only
        assert sorted(reader.query("SELECT server_id, session_id = %s FROM aurora_replica_status()",
                                   (MASTER,))) == [("g1-use1-1", True), ("g1-use1-2", False)]
        assert sec_reader.query("SELECT server_id, session_id = %s FROM aurora_replica_status()",
                                (MASTER,)) == [("g1-euw1-1", False)]
        # real LSNs: the writer sees its readers' positions
        lsns = writer.query("SELECT server_id, durable_lsn FROM aurora_global_db_instance_status()")
        assert all(lsn and lsn > 0 for _, lsn in lsns), lsns

        # The fake AWS, driven by the same topology.
        (gc,) = probe(fake, "global", "g1")
        assert gc["writer"] == "g1-use1" and gc["status"] == "available" and "failover" not in gc
        assert {(m["cluster_id"], m["region"], m["is_writer"], m["sync_status"])
                for m in gc["members"]} == {("g1-use1", PRIMARY, True, "connected"),
                                            ("g1-euw1", SECONDARY, False, "connected")}
        assert global_cluster(fake).findtext("Endpoint") == g.global_name
        clusters = {c["id"]: c for c in probe(fake, "clusters")}
        assert clusters["g1-use1"]["endpoint"] == pri.writer_name
        assert clusters["g1-euw1"]["endpoint"] == ""              # omitted for a secondary
        assert clusters["g1-euw1"]["reader_endpoint"] == sec.reader_name
        assert clusters["g1-use1"]["port"] == g.port
        assert {(m["instance"], m["is_writer"]) for c in clusters.values()
                for m in c["members"]} == {("g1-use1-1", True), ("g1-use1-2", False),
                                           ("g1-euw1-1", False)}
        lag = {x["cluster_id"]: x for x in probe(fake, "lag", "g1-euw1", "g1-use1")}
        assert lag["g1-euw1"]["present"] and lag["g1-euw1"]["lag_ms"] >= 0
        assert not lag["g1-use1"]["present"]                       # primaries publish nothing
        assert all(r["signature_ok"] for r in fake.requests_for(kind="api"))

        # A ferry config built from the stand-in is valid.
        config = make_config(
            g.ferry_listener("pg", probe={"user": TEST_USER, "password": TEST_PASSWORD}),
            aws={"region": PRIMARY, "credentials": "env",
                 "endpoints": {"rds": fake.url, "monitoring": fake.url}})
        code, _, err = harness.check(config)
        assert code == 0, err


def test_switchover(hosts):
    with global_db(hosts, writer_dns_delay=5.0, demoted_writer_linger=5.0) as (g, fake):
        pri, sec = g.cluster(PRIMARY), g.cluster(SECONDARY)
        old, new = pri.instances[0], sec.instances[0]
        join = run_in_thread(g.switchover, SECONDARY, pause=1.0)
        fs = wait_for(lambda: failover_state(fake), timeout=10, what="FailoverState")
        assert fs == {"Status": "switching-over", "FromDbClusterArn": arn("g1-use1", PRIMARY),
                      "ToDbClusterArn": arn("g1-euw1", SECONDARY), "IsDataLossAllowed": "false"}
        assert probe(fake, "global", "g1")[0]["writer"] == "g1-use1"   # IsWriter moves at the end
        assert join() is new

        # right after: the new writer name is not resolvable yet (cached NXDOMAIN), the
        # demoted cluster's still points at its old writer, now read-only
        assert resolve(hosts, sec.writer_name) is None
        assert resolve(hosts, pri.writer_name) == old.host
        assert psql(hosts, g, pri.writer_name, "SELECT pg_is_in_recovery()") == [["t"]]
        assert resolve(hosts, g.global_name) == new.host
        wait_for(lambda: resolve(hosts, sec.writer_name) == new.host, timeout=10,
                 what="the new primary's writer endpoint to resolve")
        wait_for(lambda: resolve(hosts, pri.writer_name) is None, timeout=10,
                 what="the demoted writer endpoint to go inactive")
        assert psql(hosts, g, sec.writer_name,
                    "SELECT aurora_db_instance_identifier(), pg_is_in_recovery()") == \
            [["g1-euw1-1", "f"]]

        # SQL, the functions and AWS agree on the new writer
        assert [i.instance_id for i in g.instances() if writable(i)] == ["g1-euw1-1"]
        for inst in g.instances():
            assert master_of(inst) == [("g1-euw1-1", SECONDARY)]
        assert new.query("SELECT aws_region FROM aurora_global_db_status() "
                         "WHERE durability_lag_in_msec = -1") == [(SECONDARY,)]
        (gc,) = probe(fake, "global", "g1")
        assert gc["writer"] == "g1-euw1" and "failover" not in gc and gc["status"] == "available"
        assert all(m["sync_status"] == "connected" for m in gc["members"])
        clusters = {c["id"]: c for c in probe(fake, "clusters")}
        assert clusters["g1-euw1"]["endpoint"] == sec.writer_name
        assert clusters["g1-use1"]["endpoint"] == ""
        lag = {x["cluster_id"]: x["present"] for x in probe(fake, "lag", "g1-euw1", "g1-use1")}
        assert lag == {"g1-euw1": False, "g1-use1": True}

        # the old writer is a read-only replica of the new one, RPO 0
        with pytest.raises(psycopg2.Error, match="read-only transaction"):
            old.query("CREATE TABLE nope (x int)", user=TEST_USER, dbname="app",
                      password=TEST_PASSWORD)
        new.query("CREATE TABLE after_switch (x int)", dbname="app")
        new.query("INSERT INTO after_switch VALUES (42)", dbname="app")
        for inst in g.instances():
            wait_for(lambda inst=inst: inst.query("SELECT x FROM after_switch", dbname="app")
                     == [(42,)], timeout=10, what=f"{inst!r} to replicate from the new writer")

        # and back
        assert g.switchover(PRIMARY) is old
        assert [i.instance_id for i in g.instances() if writable(i)] == ["g1-use1-1"]
        for inst in g.instances():
            assert master_of(inst) == [("g1-use1-1", PRIMARY)]
        assert probe(fake, "global", "g1")[0]["writer"] == "g1-use1"


def test_failover_split_brain_then_rejoin(hosts):
    with global_db(hosts) as (g, fake):
        pri, sec = g.cluster(PRIMARY), g.cluster(SECONDARY)
        old, new = pri.instances[0], sec.instances[0]
        old.query("CREATE TABLE t (side text)", dbname="app")
        wait_for(lambda: new.query("SELECT to_regclass('t') IS NOT NULL", dbname="app")[0][0],
                 timeout=10, what="the table to replicate")

        join = run_in_thread(g.failover, SECONDARY, old_primary="writable", pause=1.0)
        fs = wait_for(lambda: failover_state(fake), timeout=10, what="FailoverState")
        assert fs["Status"] == "failing-over" and fs["IsDataLossAllowed"] == "true"
        assert fs["ToDbClusterArn"] == arn("g1-euw1", SECONDARY)
        join()
        assert failover_state(fake) is None

        # split brain: two writable instances, each naming itself the writer
        assert writable(old) and writable(new)
        old.query("INSERT INTO t VALUES ('old side')", dbname="app")
        new.query("INSERT INTO t VALUES ('new side')", dbname="app")
        assert master_of(old) == [("g1-use1-1", PRIMARY)]          # its stale view
        assert master_of(new) == [("g1-euw1-1", SECONDARY)]
        assert master_of(pri.instances[1]) == [("g1-use1-1", PRIMARY)]   # still follows old
        # only AWS settles it
        (gc,) = probe(fake, "global", "g1")
        assert gc["writer"] == "g1-euw1"
        assert sync_status(fake, "g1-use1") == "pending-resync"
        assert resolve(hosts, sec.writer_name) == new.host
        assert resolve(hosts, pri.writer_name) is None
        assert resolve(hosts, g.global_name) == new.host

        # rejoin: pending-resync while rebuilt, then a connected read-only secondary
        join = run_in_thread(g.rejoin, PRIMARY, pause=1.0)
        wait_for(lambda: not old.is_running() or sync_status(fake, "g1-use1") == "pending-resync",
                 timeout=10, what="pending-resync during the rejoin")
        join()
        assert sync_status(fake, "g1-use1") == "connected"
        assert [i.instance_id for i in g.instances() if writable(i)] == ["g1-euw1-1"]
        for inst in g.instances():
            assert master_of(inst) == [("g1-euw1-1", SECONDARY)]
            # the old side's unreplicated write is lost
            assert inst.query("SELECT side FROM t ORDER BY side", dbname="app") == [("new side",)]


def test_region_outage_failover(hosts):
    with global_db(hosts, regions=((PRIMARY, 1), (SECONDARY, 1))) as (g, fake):
        pri, sec = g.cluster(PRIMARY), g.cluster(SECONDARY)
        old, new = pri.instances[0], sec.instances[0]
        assert g.failover(SECONDARY, old_primary="stopped") is new
        assert not old.is_running()
        # names still resolve, the instance does not answer
        assert resolve(hosts, old.endpoint) == old.host
        with pytest.raises(psycopg2.OperationalError):
            old.query("SELECT 1", timeout=2)
        assert writable(new) and master_of(new) == [("g1-euw1-1", SECONDARY)]
        assert sync_status(fake, "g1-use1") == "pending-resync"
        assert resolve(hosts, sec.writer_name) == new.host
        g.rejoin(PRIMARY)
        assert not writable(old) and master_of(old) == [("g1-euw1-1", SECONDARY)]
        assert sync_status(fake, "g1-use1") == "connected"

        # a secondary's outage: its reader endpoint resolves but nothing answers
        g.isolate_region(PRIMARY)
        assert resolve(hosts, pri.reader_name) == old.host
        with pytest.raises(psycopg2.OperationalError):
            old.query("SELECT 1", timeout=2)
        assert writable(new)
        g.rejoin(PRIMARY)
        assert psql(hosts, g, pri.reader_name, "SELECT aurora_db_instance_identifier()") == \
            [["g1-use1-1"]]


def test_tls_only_instances(hosts):
    with global_db(hosts, tls=True, regions=((PRIMARY, 1), (SECONDARY, 1))) as (g, fake):
        pri, sec = g.cluster(PRIMARY), g.cluster(SECONDARY)
        writer, reader = pri.instances[0], sec.instances[0]
        for inst in (writer, reader):
            with pytest.raises(psycopg2.OperationalError, match="no encryption"):
                psycopg2.connect(host=inst.host, port=g.port, user=TEST_USER,
                                 password=TEST_PASSWORD, dbname="app", sslmode="disable",
                                 connect_timeout=5)
        # verified TLS by name: hostaddr skips resolution, the name is what is verified
        for name, inst in ((pri.writer_name, writer), (g.global_name, writer),
                           (writer.endpoint, writer), (sec.reader_name, reader)):
            conn = psycopg2.connect(host=name, hostaddr=inst.host, port=g.port, user=TEST_USER,
                                    password=TEST_PASSWORD, dbname="app", sslmode="verify-full",
                                    sslrootcert=g.tls_ca, connect_timeout=5)
            try:
                assert conn.info.ssl_in_use
                with conn.cursor() as cur:
                    cur.execute("SELECT aurora_db_instance_identifier()")
                    assert cur.fetchone() == (inst.instance_id,)
            finally:
                conn.close()
        with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
            psycopg2.connect(host=pri.writer_name, hostaddr=writer.host, port=g.port,
                             user=TEST_USER, password=TEST_PASSWORD, dbname="app",
                             sslmode="verify-full", sslrootcert=g.other_ca, connect_timeout=5)
        # through real resolution too
        assert psql(hosts, g, sec.reader_name, "SELECT ssl FROM pg_stat_ssl WHERE pid = "
                    "pg_backend_pid()", user=TEST_USER, sslmode="verify-full",
                    sslrootcert=g.tls_ca) == [["t"]]
        # replication itself runs over TLS
        assert writer.query("SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s "
                            "USING (pid)") == [(True,)]


def test_ferry_follows_a_switchover_through_the_names(hosts, tmp_path, ferry_bin, monkeypatch):
    """Smoke test that ferry's discovery can run against the stand-in: probes
    over the writer endpoint names (the secondary's does not resolve), the
    AWS signals from the fake, and a switchover."""
    from test_discovery import FAST, discovery_of, writer_of
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", STATIC_AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", STATIC_SECRET)
    with global_db(hosts) as (g, fake):
        config = make_config(
            g.ferry_listener("pg", probe={"user": TEST_USER, "password": TEST_PASSWORD}),
            workers=1, discovery=FAST,
            aws={"region": PRIMARY, "poll_interval": 1, "lag_poll_interval": 1,
                 "credentials": "env", "endpoints": {"rds": fake.url, "monitoring": fake.url}})
        ferry = harness.Ferry(config, tmp_path, argv_prefix=hosts.wrap())
        try:
            ferry.start()
            wait_for(lambda: writer_of(ferry, "pg") == PRIMARY, timeout=20,
                     what="ferry to find the writer in us-east-1")
            host, port = ferry.listener_addr("pg")
            via = harness.pg.dsn(host, port)
            assert harness.pg.run_query(via, "SELECT aurora_db_instance_identifier()") == \
                [("g1-use1-1",)]
            g.switchover(SECONDARY)
            wait_for(lambda: writer_of(ferry, "pg") == SECONDARY, timeout=30,
                     what="ferry to follow the switchover")
            wait_for(lambda: harness.pg.run_query(via, "SELECT aurora_db_instance_identifier()")
                     == [("g1-euw1-1",)], timeout=20, what="new clients to reach the new writer")
            entry = discovery_of(ferry, "pg")
            assert entry["split_brain"] is False
        finally:
            if ferry.is_running():
                code = ferry.stop()
                assert code == 0, ferry.log_tail()
