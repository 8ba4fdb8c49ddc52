"""The harness itself: real servers, real replication, real authentication.

These run without the ferry binary; if one fails, every ferry test built on
the harness is suspect.
"""

import datetime
import json
import time
import uuid

import psycopg2
import pymysql
import pytest

import harness
from harness import mariadb, pg, proc


def test_pg_replica_streams_rows_from_primary(pg_pair):
    assert pg_pair.primary.in_recovery() is False
    assert pg_pair.replica.in_recovery() is True
    token = uuid.uuid4().hex
    pg.run_query(pg_pair.primary.dsn(),
                 "CREATE TABLE IF NOT EXISTS harness_rows (token text)")
    pg.run_query(pg_pair.primary.dsn(), "INSERT INTO harness_rows VALUES (%s)", (token,))
    proc.wait_for(lambda: pg.run_query(pg_pair.replica.dsn(),
                                       "SELECT token FROM harness_rows WHERE token = %s",
                                       (token,)),
                  timeout=10, what="row to reach the PG replica")
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        pg.run_query(pg_pair.replica.dsn(), "INSERT INTO harness_rows VALUES ('x')")


@pytest.mark.parametrize("member", ["primary", "replica"])
def test_pg_ferry_test_needs_its_scram_password(pg_pair, member):
    server = getattr(pg_pair, member)
    rows = pg.run_query(server.dsn(), "SELECT current_user, current_database()")
    assert rows == [("ferry_test", "app")]
    stored = server.query("SELECT rolpassword FROM pg_authid WHERE rolname = 'ferry_test'")
    assert stored[0][0].startswith("SCRAM-SHA-256$")
    proc.wait_for(lambda: 'identity="ferry_test" method=scram-sha-256' in server.log_tail(200),
                  timeout=5, what="the server to log ferry_test's scram-sha-256 login")
    for bad in ("wrong", ""):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            pg.run_query(server.dsn(password=bad), "SELECT 1")
    # everyone else is trusted: the harness's own admin access needs no password
    assert server.query("SELECT current_user") == [("postgres",)]


def test_mariadb_replica_is_read_only_gtid_replica(mariadb_pair):
    primary, replica = mariadb_pair.primary, mariadb_pair.replica
    assert replica.query("SELECT @@read_only, @@gtid_strict_mode") == [(1, 1)]
    assert primary.query("SELECT @@read_only, @@log_bin, @@binlog_format") == [(0, 1, "ROW")]
    status = replica.replication_status()
    assert status["Using_Gtid"] == "Slave_Pos"
    assert status["Slave_IO_Running"] == status["Slave_SQL_Running"] == "Yes"

    token = uuid.uuid4().hex
    mariadb.run_query(primary.connect(), "CREATE TABLE IF NOT EXISTS harness_rows (token text)")
    mariadb.run_query(primary.connect(), "INSERT INTO harness_rows VALUES (%s)", (token,))
    proc.wait_for(lambda: mariadb.run_query(replica.connect(),
                                            "SELECT token FROM harness_rows WHERE token = %s",
                                            (token,)),
                  timeout=10, what="row to reach the MariaDB replica")
    with pytest.raises(pymysql.err.OperationalError) as e:
        mariadb.run_query(replica.connect(), "INSERT INTO harness_rows VALUES ('x')")
    assert e.value.args[0] == 1290  # ER_OPTION_PREVENTS_STATEMENT: read-only


@pytest.mark.parametrize("member", ["primary", "replica"])
def test_mariadb_ferry_test_needs_its_password(mariadb_pair, member):
    server = getattr(mariadb_pair, member)
    rows = mariadb.run_query(server.connect(), "SELECT CURRENT_USER(), DATABASE(), @@port")
    assert rows == [("ferry_test@%", "app", server.port)]
    plugins = server.query("SELECT DISTINCT plugin FROM mysql.user WHERE user = 'ferry_test'")
    assert plugins == [("mysql_native_password",)]
    for bad in ("wrong", ""):
        with pytest.raises(pymysql.err.OperationalError) as e:
            server.connect(password=bad)
        assert e.value.args[0] == 1045  # access denied


@pytest.mark.parametrize("pair_name,member,mode", [
    ("pg_pair", "replica", "fast"),
    ("pg_pair", "primary", "immediate"),
    ("mariadb_pair", "replica", "fast"),
    ("mariadb_pair", "primary", "immediate"),
])
def test_stop_and_restart(request, pair_name, member, mode):
    pair = request.getfixturevalue(pair_name)
    server = getattr(pair, member)
    server.stop(mode=mode)
    assert not server.is_running()
    assert not proc.port_accepts(server.host, server.port)
    server.start()
    assert server.is_running()
    assert proc.port_accepts(server.host, server.port)
    # the pair is whole again: replication resumed in the original direction
    pair.wait_streaming()
    pair.wait_replicated(timeout=20)


def test_make_config_matches_documented_format():
    config = harness.make_config(
        harness.listener("pg", "postgresql", [
            harness.cluster("region-a", "127.0.0.1:5432", writer=True),
            harness.cluster("region-b", "[::1]:5433")]),
        harness.listener("mysql", "mysql", [harness.cluster("region-a", "db:3306")],
                         port=3307, connect_timeout=0.5),
        workers=2)
    assert json.loads(json.dumps(config)) == config
    pg_l, my_l = config["listeners"]
    assert pg_l["clusters"] == [
        {"name": "region-a", "endpoint": "127.0.0.1:5432", "writer": True},
        {"name": "region-b", "endpoint": "[::1]:5433"}]
    assert my_l["bind"] == "127.0.0.1:3307" and my_l["connect_timeout"] == 0.5
    ports = {config["admin"]["bind"], pg_l["bind"], my_l["bind"]}
    assert len(ports) == 3 and "127.0.0.1:9187" not in ports
    assert config["workers"] == 2


def test_ferry_start_fails_fast_with_log(monkeypatch, tmp_path):
    # /bin/ls stands in for a ferry that exits at once: `ls run -c FILE`
    # complains about "run" on stderr and exits 2.
    monkeypatch.setenv("FERRY_BIN", "/bin/ls")
    ferry = harness.Ferry(harness.make_config(
        harness.listener("pg", "postgresql", [harness.cluster("a", "127.0.0.1:1")])), tmp_path)
    started = time.monotonic()
    with pytest.raises(harness.HarnessError, match=r"(?s)exited with code 2.*run"):
        ferry.start()
    assert time.monotonic() - started < 5
    assert not ferry.is_running()


def test_missing_ferry_binary_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FERRY_BIN", str(tmp_path / "nope"))
    with pytest.raises(harness.HarnessError, match="nope"):
        harness.require_binary()


def test_mariadb_tls_option():
    """MariaDBPair(tls=True): both servers serve TLS with a certificate from
    the harness's test CA (harness/pki.py), which clients can verify."""
    with harness.MariaDBPair(tls=True) as pair:
        for server in pair.servers():
            status = dict(mariadb.run_query(server.connect(ssl={"ca": pair.tls_ca}),
                                            "SHOW SESSION STATUS LIKE 'Ssl_%'"))
            assert status["Ssl_cipher"] != "" and status["Ssl_version"].startswith("TLSv1.")
        with pytest.raises(pymysql.err.OperationalError) as e:
            pair.primary.connect(ssl={"ca": str(pair.pki / "other.pem")})
        assert "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        plain = dict(mariadb.run_query(pair.primary.connect(),
                                       "SHOW SESSION STATUS LIKE 'Ssl_cipher'"))
        assert plain == {"Ssl_cipher": ""}
        pair.wait_replicated()


def test_mariadb_switchover_and_back_then_crash():
    """The role changes failover drills make: a planned switchover leaves
    the old writer a streaming replica of the new one, so it can be
    repeated the other way; a crash promotes the replica with everything
    it received. And the general log tells what a client sent after a
    moment, whatever the client's time_zone."""
    from harness.drill_mysql import log_statements, statements_after
    with harness.MariaDBPair(semi_sync=True) as pair:
        a, b = pair.primary, pair.replica
        assert a.semi_sync_status() == (True, 1)
        assert pair.switchover(a, b) == (b, a)
        assert [s.query("SELECT @@read_only")[0][0] for s in (a, b)] == [1, 0]
        assert a.replication_status()["Master_Port"] == b.port
        pair.wait_replicated(source=b, target=a)
        assert b.semi_sync_status() == (True, 1)
        pair.switchover(b, a)
        assert [s.query("SELECT @@read_only")[0][0] for s in (a, b)] == [0, 1]
        pair.wait_replicated(source=a, target=b)

        log_statements(a)
        conn = a.connect()
        with conn.cursor() as cur:
            cur.execute("SET time_zone = '+03:00'")
            cur.execute("SELECT 'before'")
            time.sleep(0.05)
            t0 = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
            time.sleep(0.05)
            cur.execute("SELECT 'after'")
        conn.close()
        after = [line.split("] ", 1)[1] for line in statements_after(a, t0.replace("+00:00", "Z"))]
        assert [cmd for cmd in after if not cmd.startswith("Quit")] == ["Query: SELECT 'after'"]

        token = uuid.uuid4().hex
        a.query("CREATE TABLE app.crash (token text)")
        a.query("INSERT INTO app.crash VALUES (%s)", (token,))   # acknowledged: on b too
        assert pair.crash(a, b) is b
        assert not a.is_running() and b.replication_status() is None
        assert b.query("SELECT @@read_only") == [(0,)]
        assert b.query("SELECT token FROM app.crash") == [(token,)]
        started = time.monotonic()
        b.query("INSERT INTO app.crash VALUES ('alone')")   # no replica: no wait
        assert time.monotonic() - started < 2


def test_private_hosts_resolve_only_inside_and_follow_changes(tmp_path):
    """A name in a PrivateHosts file resolves for a wrapped command only, and
    a change (including removal) is seen by the next lookup."""
    import subprocess
    from harness import PrivateHosts
    from harness.hosts import available
    if available():
        pytest.skip(available())
    hosts = PrivateHosts(tmp_path)
    name = "w.cluster-test.eu-west-1.rds.example.test"

    def lookup():
        r = subprocess.run([*hosts.wrap(), "getent", "hosts", name], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.split()[0] if r.returncode == 0 else None

    assert lookup() is None
    hosts.set(name, "127.0.3.7")
    assert lookup() == "127.0.3.7"
    hosts.set(name, "127.0.3.8")
    assert lookup() == "127.0.3.8"
    outside = subprocess.run(["getent", "hosts", name], capture_output=True, timeout=10)
    assert outside.returncode != 0
    hosts.set(name, None)
    assert lookup() is None
