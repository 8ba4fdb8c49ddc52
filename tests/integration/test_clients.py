"""Real clients through ferry: psql, psycopg2, psycopg 3 on the PostgreSQL
listener; the mariadb CLI and PyMySQL on the MySQL listener. Each check also
proves the session reached the writer (primary), not the replica."""

import subprocess

import psycopg
import pytest

import harness
from fronts import both, my_connect, pg_dsn


@pytest.fixture
def ferry(ferry_factory, pg_pair, mariadb_pair):
    return ferry_factory(both(pg_pair, mariadb_pair))


def test_psql(ferry, pg_pair):
    host, port = ferry.listener_addr("pg")
    out = subprocess.run(
        ["psql", "-X", "-At", "-h", host, "-p", str(port), "-U", "ferry_test", "-d", "app",
         "-c", "SELECT pg_is_in_recovery(), current_user, inet_server_port()"],
        env={"PGPASSWORD": "ferry_pw", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"f|ferry_test|{pg_pair.primary.port}"


def test_psycopg2(ferry, pg_pair):
    conn = harness.pg.connect(pg_dsn(ferry))
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS t_clients (id int primary key, v text)")
            cur.execute("INSERT INTO t_clients VALUES (1, 'psycopg2') "
                        "ON CONFLICT (id) DO UPDATE SET v = excluded.v")
            cur.execute("SELECT v, inet_server_port() FROM t_clients WHERE id = 1")
            assert cur.fetchone() == ("psycopg2", pg_pair.primary.port)
    finally:
        conn.close()
    # the write landed on the primary itself
    assert pg_pair.primary.query("SELECT v FROM t_clients WHERE id = 1", dbname="app") == [("psycopg2",)]


def test_psycopg3_with_prepared_statements(ferry):
    with psycopg.connect(pg_dsn(ferry), prepare_threshold=0, autocommit=True) as conn:
        for i in range(5):   # prepare_threshold=0: server-side prepared from the first run
            assert conn.execute("SELECT %s::int * 2", (i,)).fetchone() == (i * 2,)
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE tt (x int)")
            conn.execute("INSERT INTO tt SELECT generate_series(1, 1000)")
            assert conn.execute("SELECT sum(x) FROM tt").fetchone() == (500500,)


def test_wrong_password_is_rejected_by_the_server(ferry):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_dsn(ferry, password="wrong"))


def test_mariadb_cli(ferry, mariadb_pair):
    host, port = ferry.listener_addr("my")
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", host, "-P", str(port), "-u", "ferry_test",
         "-pferry_pw", "--protocol=TCP", "-N", "-B", "app",
         "-e", "SELECT @@read_only, @@port, DATABASE()"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", str(mariadb_pair.primary.port), "app"]


def test_pymysql(ferry, mariadb_pair):
    conn = my_connect(ferry)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS t_clients (id int primary key, v text)")
            cur.execute("REPLACE INTO t_clients VALUES (1, 'pymysql')")
            cur.execute("SELECT v, @@port FROM t_clients WHERE id = 1")
            assert cur.fetchone() == ("pymysql", mariadb_pair.primary.port)
    finally:
        conn.close()
    assert mariadb_pair.primary.query("SELECT v FROM app.t_clients WHERE id = 1") == [("pymysql",)]
