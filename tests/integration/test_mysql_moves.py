"""MySQL sessions move to the new writer (issue 10) when ferry terminates
authentication: idle sessions keep their connection, their SET / USE state
and their prepared statements, and see no error; sessions inside a
transaction get 1213 (40001) until ROLLBACK and then move; passthrough
sessions get 1053. Real MariaDB primary + replica (own pair per test)."""

import os
import subprocess

import pymysql
import pytest

from fronts import listener_status, my_connect
from harness import make_config
from harness.mariadb import TEST_PASSWORD, TEST_USER
from harness.proc import wait_for
from test_discovery import FAST, my_discovered, writer_of

HERE = os.path.dirname(os.path.abspath(__file__))


def start(ferry_factory, pair, monkeypatch, terminated=True):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", TEST_PASSWORD)
    options = {}
    if terminated:
        options["auth"] = {"mode": "terminated",
                           "users": [{"name": TEST_USER, "password": TEST_PASSWORD}]}
    ferry = ferry_factory(make_config(my_discovered(pair, **options), workers=2, discovery=FAST))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")
    pair.primary.query("CREATE TABLE IF NOT EXISTS app.moves (id int PRIMARY KEY, v text)")
    pair.primary.query("CREATE DATABASE IF NOT EXISTS other")
    pair.primary.query(f"GRANT ALL ON other.* TO '{TEST_USER}'@'%'")
    return ferry


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def switch(ferry, pair):
    """Planned: the writer turns read-only, the replica catches up and is
    promoted; ferry follows."""
    pair.primary.set_read_only(True)
    pair.replica.promote()
    wait_for(lambda: writer_of(ferry, "my") == "region-b", timeout=15, what="region-b as writer")


def test_idle_sessions_move_with_their_state(ferry_factory, own_mariadb, monkeypatch):
    ferry = start(ferry_factory, own_mariadb, monkeypatch)
    conns = []
    for i in range(3):
        c = my_connect(ferry)
        one(c, "SET time_zone = '+03:00'")
        one(c, "USE other")
        one(c, "SET @mark = %s", (i,))
        conns.append(c)
    before = [one(c, "SELECT CONNECTION_ID()")[0] for c in conns]
    switch(ferry, own_mariadb)
    for i, c in enumerate(conns):
        server_id, tz, db, mark = one(c, "SELECT @@server_id, @@time_zone, DATABASE(), @mark")
        assert server_id == own_mariadb.replica.server_id
        assert (tz, db, int(mark)) == ("+03:00", "other", i)
        assert one(c, "SELECT CONNECTION_ID()")[0] != before[i]   # a new backend session
        one(c, "INSERT INTO app.moves VALUES (%s, 'after')", (i,))  # the new writer takes writes
    status = listener_status(ferry, "my")
    assert status["sessions_moved"] >= 3 and status["failover_errors_total"] == 0
    assert own_mariadb.replica.query("SELECT count(*) FROM app.moves")[0][0] == 3
    for c in conns:
        c.close()


def test_transaction_gets_1213_until_rollback_then_moves(ferry_factory, own_mariadb, monkeypatch):
    ferry = start(ferry_factory, own_mariadb, monkeypatch)
    c = my_connect(ferry)
    one(c, "SET time_zone = '-02:00'")
    c.begin()
    one(c, "INSERT INTO app.moves VALUES (100, 'lost')")
    switch(ferry, own_mariadb)
    with pytest.raises(pymysql.err.OperationalError) as e:
        one(c, "INSERT INTO app.moves VALUES (101, 'lost')")
    assert e.value.args[0] == 1213 and "ferry" in e.value.args[1]
    with pytest.raises(pymysql.err.OperationalError):
        c.commit()                      # still the lost transaction: 1213 again
    c.rollback()
    assert one(c, "SELECT @@server_id, @@time_zone") == (own_mariadb.replica.server_id, "-02:00")
    one(c, "INSERT INTO app.moves VALUES (102, 'kept')")
    assert own_mariadb.replica.query("SELECT id FROM app.moves ORDER BY id") == [(102,)]
    c.close()


def test_prepared_statements_move(ferry_factory, own_mariadb, monkeypatch, tmp_path):
    """A MariaDB Connector/C program with server-side prepared statements
    keeps using them across the switch."""
    ferry = start(ferry_factory, own_mariadb, monkeypatch)
    host, port = ferry.listener_addr("my")
    exe = tmp_path / "mysql_stmt_client"
    cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmariadb"],
                            capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["gcc", "-o", str(exe), os.path.join(HERE, "mysql_stmt_client.c"), *cflags],
                   check=True, timeout=120)
    proc = subprocess.Popen([str(exe), host, str(port), TEST_USER, TEST_PASSWORD, "app", "wait"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        switch(ferry, own_mariadb)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "row: 14 vafter" in out and f"server_id: {own_mariadb.replica.server_id}" in out


def test_passthrough_sessions_get_1053(ferry_factory, own_mariadb, monkeypatch):
    ferry = start(ferry_factory, own_mariadb, monkeypatch, terminated=False)
    c = my_connect(ferry)
    one(c, "SELECT 1")
    switch(ferry, own_mariadb)
    with pytest.raises(pymysql.err.OperationalError) as e:
        one(c, "SELECT 1")
    assert e.value.args[0] == 1053
    assert one(my_connect(ferry), "SELECT @@server_id")[0] == own_mariadb.replica.server_id


def test_crash_moves_idle_sessions_and_in_flight_gets_2013(ferry_factory, own_mariadb, monkeypatch):
    """The writer is killed: an idle session moves once the replica is
    promoted (no error); a statement in flight gets 2013, outcome unknown."""
    ferry = start(ferry_factory, own_mariadb, monkeypatch)
    idle = my_connect(ferry)
    one(idle, "SET time_zone = '+01:00'")
    busy = my_connect(ferry)
    errors = []

    def sleeper():
        try:
            one(busy, "SELECT SLEEP(20)")
        except pymysql.err.OperationalError as e:
            errors.append(e.args)

    import threading
    t = threading.Thread(target=sleeper)
    t.start()
    wait_for(lambda: any(r[4] == "Query" and "SLEEP" in (r[7] or "")
                         for r in own_mariadb.primary.query("SHOW PROCESSLIST")),
             timeout=10, what="the SLEEP running")
    own_mariadb.primary.kill()
    t.join(30)
    assert errors and errors[0][0] == 2013, errors     # the connection ended mid-statement
    assert "its outcome is unknown" in ferry.log_text()
    own_mariadb.replica.promote()
    wait_for(lambda: writer_of(ferry, "my") == "region-b", timeout=15, what="region-b as writer")
    assert one(idle, "SELECT @@server_id, @@time_zone") == (own_mariadb.replica.server_id,
                                                              "+01:00")


def test_no_writer_holds_logins_then_they_go_through(ferry_factory, own_mariadb, monkeypatch):
    """With no writer, an authenticated client waits for its OK (held) and
    gets it when a writer appears within hold_timeout."""
    ferry = start(ferry_factory, own_mariadb, monkeypatch)
    my_connect(ferry).close()           # greeting learned
    own_mariadb.primary.set_read_only(True)
    wait_for(lambda: writer_of(ferry, "my") is None, timeout=15, what="no writer")
    import threading
    got = []
    t = threading.Thread(target=lambda: got.append(one(my_connect(ferry), "SELECT @@server_id")))
    t.start()
    wait_for(lambda: listener_status(ferry, "my")["clients_held"] == 1, timeout=10,
             what="the client held")
    own_mariadb.replica.promote()
    t.join(20)
    assert got == [(own_mariadb.replica.server_id,)]


def test_no_writer_past_hold_timeout_is_a_clear_error(ferry_factory, own_mariadb, monkeypatch):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", TEST_PASSWORD)
    auth = {"mode": "terminated", "users": [{"name": TEST_USER, "password": TEST_PASSWORD}]}
    ferry = ferry_factory(make_config(my_discovered(own_mariadb, auth=auth), workers=1,
                                      discovery=dict(FAST, hold_timeout=1)))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")
    my_connect(ferry).close()
    own_mariadb.primary.set_read_only(True)
    wait_for(lambda: writer_of(ferry, "my") is None, timeout=15, what="no writer")
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry)
    assert e.value.args[0] == 1053 and "writer" in e.value.args[1], e.value.args


def test_split_brain_nothing_lands_on_the_old_writer(ferry_factory, own_mariadb, monkeypatch):
    """The replica is promoted while the old writer still takes writes (split
    brain); the operator's switchover makes the replica the writer. Idle
    sessions move, and nothing written through ferry lands on the old one."""
    from test_ops import post_json
    ferry = start(ferry_factory, own_mariadb, monkeypatch)
    conns = [my_connect(ferry) for _ in range(3)]
    for c in conns:
        one(c, "SET time_zone = '+05:00'")
    own_mariadb.replica.promote()           # the old writer stays writable
    code, body = post_json(ferry, "/v1/switchover", {"to": "region-b", "listener": "my",
                                                      "timeout": 15})
    assert code == 200, body
    for i, c in enumerate(conns):
        one(c, "INSERT INTO app.moves VALUES (%s, 'split')", (200 + i,))
        assert one(c, "SELECT @@server_id, @@time_zone") == (own_mariadb.replica.server_id,
                                                             "+05:00")
    assert own_mariadb.primary.query("SELECT count(*) FROM app.moves WHERE v = 'split'") == [(0,)]
    assert own_mariadb.replica.query("SELECT count(*) FROM app.moves WHERE v = 'split'") == [(3,)]
