"""Signals and limits: SIGHUP reloads without dropping sessions (and keeps
the running config when the new file is bad), SIGTERM drains, and
max_client_connections closes the excess."""

import signal
import socket

import psycopg2
import pymysql
import pytest

import harness
from fronts import listener_status, my_connect, my_listener, pg_dsn, pg_listener
from harness import make_config
from harness.proc import wait_for


def generation(ferry):
    return ferry.status()["config_generation"]


def test_sighup_adds_listener_without_dropping_session(ferry_factory, pg_pair, mariadb_pair):
    cfg = make_config(pg_listener(pg_pair), workers=2)
    ferry = ferry_factory(cfg)
    conn = harness.pg.connect(pg_dsn(ferry))
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS t_reload (id serial primary key, note text)")
    conn.commit()
    cur.execute("INSERT INTO t_reload (note) VALUES ('before reload') RETURNING id")
    row_id = cur.fetchone()[0]

    new_cfg = dict(cfg, listeners=cfg["listeners"] + [my_listener(mariadb_pair)])
    ferry.reload(new_cfg)
    wait_for(lambda: generation(ferry) == 2, timeout=10, what="config generation 2")
    # the new listener serves
    my = my_connect(ferry)
    with my.cursor() as c:
        c.execute("SELECT 1")
        assert c.fetchone() == (1,)
    my.close()
    # the session opened before the reload is the same server session and commits
    cur.execute("INSERT INTO t_reload (note) VALUES ('after reload')")
    conn.commit()
    conn.close()
    rows = pg_pair.primary.query("SELECT note FROM t_reload WHERE id >= %s ORDER BY id",
                                 (row_id,), dbname="app")
    assert rows[:2] == [("before reload",), ("after reload",)]
    assert "event=config.reloaded generation=2 listeners=2 added=1 removed=0 kept=1" in ferry.log_text()


def test_sighup_removes_listener_but_keeps_its_sessions(ferry_factory, pg_pair, mariadb_pair):
    cfg = make_config(pg_listener(pg_pair), my_listener(mariadb_pair), workers=2)
    ferry = ferry_factory(cfg)
    my = my_connect(ferry)
    ferry.reload(dict(cfg, listeners=[cfg["listeners"][0]]))
    wait_for(lambda: generation(ferry) == 2, timeout=10, what="config generation 2")
    host, port = ferry.listener_addr("pg")
    my_host, my_port = harness.ferry.split_hostport(cfg["listeners"][1]["bind"])
    harness.proc.wait_port_closed(my_host, my_port, timeout=10, what="removed listener to close")
    with my.cursor() as c:   # the open session still works
        c.execute("SELECT 5")
        assert c.fetchone() == (5,)
    my.close()
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 3") == [(3,)]


@pytest.mark.parametrize("bad, reason", [
    ("{ not json", "invalid JSON"),
    ('{"listeners": [], "extra": 1}', "extra: unknown key"),
])
def test_invalid_reload_keeps_running_config(ferry_factory, pg_pair, bad, reason):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1))
    with open(ferry.config_path, "w") as f:
        f.write(bad)
    ferry.signal(signal.SIGHUP)
    wait_for(lambda: "event=config.reload_failed" in ferry.log_text(), timeout=10,
             what="config.reload_failed in the log")
    line = [x for x in ferry.log_text().splitlines() if "config.reload_failed" in x][0]
    assert ferry.config_path in line and reason in line
    assert "keeping the running config" in line
    assert generation(ferry) == 1
    assert harness.pg.run_query(pg_dsn(ferry), "SELECT 4") == [(4,)]
    assert ferry.is_running()


def test_reload_with_unbindable_address_keeps_running_config(ferry_factory, pg_pair):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)   # no SO_REUSEPORT: ferry cannot share it
    try:
        cfg = make_config(pg_listener(pg_pair), workers=1)
        ferry = ferry_factory(cfg)
        taken = pg_listener(pg_pair, name="pg2", port=blocker.getsockname()[1])
        ferry.reload(dict(cfg, listeners=cfg["listeners"] + [taken]))
        wait_for(lambda: "event=config.reload_failed" in ferry.log_text(), timeout=10,
                 what="config.reload_failed in the log")
        port = blocker.getsockname()[1]
        assert f"listeners[1] (pg2): 127.0.0.1:{port} is already in use by another process" \
            in ferry.log_text()
        assert generation(ferry) == 1
        assert harness.pg.run_query(pg_dsn(ferry), "SELECT 1") == [(1,)]
    finally:
        blocker.close()


def test_sigterm_lets_open_transaction_commit(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=2, shutdown_timeout=30))
    conn = harness.pg.connect(pg_dsn(ferry))
    conn.autocommit = False
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS t_drain (id serial primary key, note text)")
    conn.commit()
    cur.execute("INSERT INTO t_drain (note) VALUES ('in flight at SIGTERM') RETURNING id")
    row_id = cur.fetchone()[0]

    ferry.signal(signal.SIGTERM)
    wait_for(lambda: ferry.http_get("/readyz")[0] == 503, timeout=10, what="readyz 503 while draining")
    host, port = ferry.listener_addr("pg")
    harness.proc.wait_port_closed(host, port, timeout=10, what="listener to stop accepting")
    assert ferry.is_running()          # still serving the open session
    cur.execute("INSERT INTO t_drain (note) VALUES ('after SIGTERM')")
    conn.commit()
    conn.close()
    assert ferry.wait(15) == 0
    rows = pg_pair.primary.query("SELECT note FROM t_drain WHERE id >= %s ORDER BY id",
                                 (row_id,), dbname="app")
    assert rows == [("in flight at SIGTERM",), ("after SIGTERM",)]


def test_shutdown_timeout_closes_lingering_sessions(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1, shutdown_timeout=0.5))
    conn = harness.pg.connect(pg_dsn(ferry))
    ferry.signal(signal.SIGTERM)
    assert ferry.wait(15) == 0
    assert "event=shutdown.timeout" in ferry.log_text()
    with pytest.raises(psycopg2.OperationalError):
        conn.cursor().execute("SELECT 1")


def test_max_client_connections_mysql_error(ferry_factory, mariadb_pair):
    ferry = ferry_factory(make_config(my_listener(mariadb_pair, max_client_connections=1), workers=1))
    first = my_connect(ferry)
    with pytest.raises(pymysql.err.OperationalError) as err:
        my_connect(ferry)
    assert err.value.args[0] == 1040
    assert "ferry: too many clients on listener my" in err.value.args[1]
    first.close()


def test_max_client_connections(ferry_factory, pg_pair):
    ferry = ferry_factory(make_config(pg_listener(pg_pair, max_client_connections=2), workers=2))
    a = harness.pg.connect(pg_dsn(ferry))
    b = harness.pg.connect(pg_dsn(ferry))
    with pytest.raises(psycopg2.OperationalError) as err:
        harness.pg.connect(pg_dsn(ferry))
    assert "ferry: too many clients on listener pg (max_client_connections 2)" in str(err.value)
    wait_for(lambda: "event=listener.connection_refused" in ferry.log_text(), timeout=5,
             what="the refusal log line")
    assert listener_status(ferry, "pg")["clients_refused_total"] == 1
    a.close()
    wait_for(lambda: listener_status(ferry, "pg")["clients_active"] == 1, timeout=10,
             what="one session to remain")
    c = harness.pg.connect(pg_dsn(ferry))   # room again
    for conn in (b, c):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.close()
