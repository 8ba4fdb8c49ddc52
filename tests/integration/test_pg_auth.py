"""Terminated authentication on a PostgreSQL listener: ferry checks the
client against its own user list (SCRAM-SHA-256, MD5, trust), then logs into
the backend with the user's stored password. A wrong password or an unknown
user gets 28P01 and never opens a backend connection."""

import base64
import collections
import hashlib
import hmac
import os
import socket
import struct
import threading
import time

import psycopg
import psycopg2
import pytest

import harness
from fronts import pg_listener
from harness import make_config
from harness.proc import wait_for
from test_discovery import FAST, discovery_of, pg_discovered, writer_of
from test_failover_sessions import switch_to_b

USER, PASSWORD = harness.pg.TEST_USER, harness.pg.TEST_PASSWORD


def terminated(pg_pair, users, **options):
    return make_config(pg_listener(pg_pair, auth={"mode": "terminated", "users": users}, **options),
                       workers=1)


def dsn(ferry, **kw):
    host, port = ferry.listener_addr("pg")
    return harness.pg.dsn(host, port, **kw)


def backends_of(pg_pair, user):
    return pg_pair.primary.query(
        f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'")[0][0]


@pytest.mark.parametrize("method", ["scram-sha-256", "md5"])
def test_client_proves_its_password_then_ferry_logs_in(ferry_factory, pg_pair, method):
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD,
                                                "method": method}]))
    with psycopg2.connect(dsn(ferry)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, current_setting('application_name')")
        assert cur.fetchone() == (USER, "")
        # the client got ferry's cancel key, not the backend's
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] != conn.get_backend_pid()
    log = ferry.log_text()
    assert PASSWORD not in log


def test_session_outlives_the_login_timer(ferry_factory, pg_pair):
    """The backend login runs under connect_timeout; a session that stays
    idle for longer than that must not be ended by it."""
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD}],
                                     connect_timeout=0.3))
    conn = psycopg2.connect(dsn(ferry))
    conn.autocommit = True
    time.sleep(1.0)
    with conn.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)
    conn.close()
    assert "backend.connect_failed" not in ferry.log_text()


def test_scram_verifier_for_clients_password_for_the_backend(ferry_factory, pg_pair):
    verifier = pg_pair.primary.query(
        f"SELECT rolpassword FROM pg_authid WHERE rolname = '{USER}'")[0][0]
    assert verifier.startswith("SCRAM-SHA-256$")
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD,
                                                "scram_verifier": verifier}]))
    assert harness.pg.run_query(dsn(ferry), "SELECT 1") == [(1,)]


def test_trust_user_needs_no_password_from_the_client(ferry_factory, pg_pair):
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD,
                                                "method": "trust"}]))
    host, port = ferry.listener_addr("pg")
    conn = psycopg2.connect(host=host, port=port, user=USER, dbname="app")   # no password
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (USER,)
    conn.close()


@pytest.mark.parametrize("user,password", [(USER, "Wr0ng-pass"), ("nobody", "Wr0ng-pass")])
def test_wrong_password_or_unknown_user_gets_28P01_and_no_backend(ferry_factory, pg_pair,
                                                                  user, password):
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD}]))
    before = backends_of(pg_pair, user)
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(dsn(ferry, user=user, password=password))
    assert f'ferry: password authentication failed for user "{user}"' in str(err.value)
    log = ferry.log_text()
    assert "session.routed" not in log and "session.connected" not in log
    assert backends_of(pg_pair, user) == before
    assert "Wr0ng-pass" not in log
    assert ferry.status()["listeners"][0]["auth_failures_total"] == 1
    assert 'ferry_errors_total{listener="pg",class="auth"} 1' in ferry.http_get("/metrics")[1]


Attempt = collections.namedtuple("Attempt", "method salt iterations error")


def sasl(mechanism, data):
    return (b"p" + struct.pack("!I", 4 + len(mechanism) + 1 + 4 + len(data)) + mechanism + b"\0" +
            struct.pack("!I", len(data)) + data)


def login_by_hand(ferry, user, password):
    """A terminated-mode login spoken by hand, as libpq does it (SCRAM-SHA-256
    with a real proof, or MD5). Returns what a client can observe: the
    method asked for (10 SASL, 5 MD5), the SCRAM salt and iteration count,
    and the ErrorResponse's fields (None: logged in)."""
    from test_pg_protocol import error_fields, read_messages, startup_packet
    salt = iterations = None
    with socket.create_connection(ferry.listener_addr("pg"), timeout=20) as s:
        s.sendall(startup_packet(user=user, database="app"))
        body = read_messages(s, until=b"R")[-1][1]
        method = struct.unpack("!I", body[:4])[0]
        if method == 5:         # md5(md5(password + user) + salt)
            inner = hashlib.md5((password + user).encode()).hexdigest().encode()
            answer = b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode() + b"\0"
            s.sendall(b"p" + struct.pack("!I", 4 + len(answer)) + answer)
        else:
            assert method == 10 and b"SCRAM-SHA-256\0" in body
            bare = b"n=,r=" + base64.b64encode(os.urandom(18))
            s.sendall(sasl(b"SCRAM-SHA-256", b"n,," + bare))
            t, body = read_messages(s, until=b"R")[-1]
            assert t == b"R" and struct.unpack("!I", body[:4])[0] == 11, (t, body)
            server_first = body[4:]
            attrs = dict(f.split(b"=", 1) for f in server_first.split(b","))
            salt, iterations = base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
            client_key = hmac.new(salted, b"Client Key", "sha256").digest()
            without_proof = b"c=biws,r=" + attrs[b"r"]
            signature = hmac.new(hashlib.sha256(client_key).digest(),
                                 bare + b"," + server_first + b"," + without_proof, "sha256").digest()
            proof = bytes(a ^ b for a, b in zip(client_key, signature))
            final = without_proof + b",p=" + base64.b64encode(proof)
            s.sendall(b"p" + struct.pack("!I", 4 + len(final)) + final)
        msgs = read_messages(s, until=b"Z")    # a refusal: the error, then EOF
    error = error_fields(msgs[-1][1]) if msgs[-1][0] == b"E" else None
    return Attempt(method, salt, iterations, error)


def same_error(known, unknown, known_user, unknown_user):
    """The two refusals are identical but for the user name they quote."""
    assert known.error and unknown.error
    assert known.error["C"] == unknown.error["C"] == "28P01"
    assert known.error == {k: v.replace(unknown_user, known_user) for k, v in unknown.error.items()}


def test_unknown_user_cannot_be_told_from_a_wrong_password(ferry_factory, pg_pair):
    """issue 18 item 8: an unknown name gets a salt derived from the name and
    a server secret (the same on every attempt, like a real user's), the real
    users' iteration count, and fails at the proof like a wrong password."""
    cfg = terminated(pg_pair, [{"name": USER, "password": PASSWORD}])
    ferry = ferry_factory(cfg)
    assert login_by_hand(ferry, USER, PASSWORD).error is None      # the hand-made client works
    real = [login_by_hand(ferry, USER, "Wr0ng-pass") for _ in range(2)]
    ghost = [login_by_hand(ferry, "ghost", "Wr0ng-pass") for _ in range(2)]
    other = login_by_hand(ferry, "ghost2", "Wr0ng-pass")
    assert real[0].salt == real[1].salt
    assert ghost[0].salt == ghost[1].salt
    assert len({real[0].salt, ghost[0].salt, other.salt}) == 3
    assert len(ghost[0].salt) == len(real[0].salt) == 16
    assert ghost[0].iterations == other.iterations == real[0].iterations
    same_error(real[0], ghost[0], USER, "ghost")
    # a reload keeps the server secret: the same salts, known and unknown
    ferry.reload(cfg)
    wait_for(lambda: ferry.status()["config_generation"] == 2, timeout=10, what="the reload")
    assert login_by_hand(ferry, "ghost", "x").salt == ghost[0].salt
    assert login_by_hand(ferry, USER, "x").salt == real[0].salt


def scram_verifier(password, iterations):
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    return "SCRAM-SHA-256$%d:%s$%s:%s" % (iterations, *(base64.b64encode(x).decode()
                                                         for x in (salt, stored, server)))


def test_unknown_users_get_the_verifiers_iteration_count_and_md5_when_users_take_it(
        ferry_factory, pg_pair):
    """Stored verifiers with 8192 iterations: unknown names are shown 8192 too,
    and so are users given only a password. On a listener whose users take
    md5, an unknown name is asked for MD5 and refused like a wrong password."""
    ferry = ferry_factory(terminated(pg_pair, [
        {"name": USER, "password": PASSWORD, "scram_verifier": scram_verifier(PASSWORD, 8192)},
        {"name": "second", "password": "pw2", "scram_verifier": scram_verifier("pw2", 8192)},
        {"name": "plain", "password": "pw3"}]))
    assert login_by_hand(ferry, USER, PASSWORD).error is None
    assert {login_by_hand(ferry, u, "x").iterations for u in (USER, "plain", "ghost")} == {8192}
    ferry.stop()
    md5 = make_config(pg_listener(pg_pair, auth={"mode": "terminated", "users": [
        {"name": USER, "password": PASSWORD, "method": "md5"}]}), workers=1)
    ferry = ferry_factory(md5)
    assert login_by_hand(ferry, USER, PASSWORD).error is None
    real, ghost = login_by_hand(ferry, USER, "x"), login_by_hand(ferry, "ghost", "x")
    assert real.method == ghost.method == 5
    same_error(real, ghost, USER, "ghost")


def test_bad_backend_password_is_a_clear_error(ferry_factory, pg_pair):
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": "not-the-real-one",
                                                "method": "trust"}]))
    host, port = ferry.listener_addr("pg")
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(host=host, port=port, user=USER, dbname="app")
    # the server's own refusal, relayed
    assert f'password authentication failed for user "{USER}"' in str(err.value)
    assert "not-the-real-one" not in ferry.log_text()


def test_garbage_instead_of_a_password_message(ferry_factory, pg_pair):
    from test_pg_protocol import error_fields, read_messages, startup_packet
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD}]))
    with socket.create_connection(ferry.listener_addr("pg"), timeout=10) as s:
        s.sendall(startup_packet(user=USER, database="app"))
        msgs = read_messages(s, until=b"R")
        assert msgs[-1][0] == b"R"      # AuthenticationSASL
        s.sendall(b"Q\x00\x00\x00\x09xxxx\x00")
        msgs = read_messages(s, until=b"E-never")
    err = error_fields(msgs[-1][1])
    assert err["S"] == "FATAL" and err["C"] == "08P01"
    assert ferry.status()["listeners"][0]["protocol_errors_total"] == 1
    # the listener still serves everyone else
    assert harness.pg.run_query(dsn(ferry), "SELECT 2") == [(2,)]


# ---- moving sessions to a new writer without the client noticing ----

def test_idle_session_moves_with_its_settings_and_prepared_statements(ferry_factory, own_pg):
    ferry = terminated_discovered(ferry_factory, own_pg, workers=2)
    own_pg.primary.query("CREATE TABLE marks (note text); GRANT ALL ON marks TO ferry_test",
                         dbname="app")
    own_pg.primary.query("CREATE SCHEMA s2; CREATE TABLE s2.t (v int); GRANT ALL ON SCHEMA s2 TO "
                         "ferry_test; GRANT ALL ON s2.t TO ferry_test", dbname="app")
    host, port = ferry.listener_addr("pg")
    conn = psycopg2.connect(harness.pg.dsn(host, port), application_name="mover")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET search_path TO s2, public")
    cur.execute("SET TimeZone TO 'Asia/Tokyo'")
    cur.execute("SET statement_timeout TO '7s'")
    cur.execute("PREPARE ignored AS SELECT 1")   # SQL-level: not followed (documented)
    cur.execute("DEALLOCATE ignored")
    p3 = psycopg.connect(harness.pg.dsn(host, port), autocommit=True, prepare_threshold=0)
    p3.execute("SELECT %s::int + 1", (1,))       # a named, server-side prepared statement
    pid_before = p3.info.backend_pid

    switch_to_b(ferry, own_pg)
    wait_for(lambda: "event=session.moved" in ferry.log_text(), timeout=15,
             what="an idle session to move")

    # the same psycopg3 connection: no error, on the new writer, its statement still works
    assert p3.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)
    assert p3.execute("SELECT inet_server_port()").fetchone() == (own_pg.replica.port,)
    assert p3.info.backend_pid == pid_before    # ferry's cancel key did not change
    p3.close()
    # the psycopg2 session used SQL-level PREPARE: ferry does not follow it, so that session is
    # closed with the reconnect error rather than moved with a missing statement
    with pytest.raises(psycopg2.OperationalError):
        cur.execute("SELECT 1")
    assert own_pg.primary.query("SELECT count(*) FROM marks", dbname="app") == [(0,)]


def test_moved_session_keeps_search_path_timezone_and_application_name(ferry_factory, own_pg):
    ferry = terminated_discovered(ferry_factory, own_pg, workers=1)
    own_pg.primary.query("CREATE SCHEMA s2; CREATE TABLE s2.marks (note text); GRANT ALL ON "
                         "SCHEMA s2 TO ferry_test; GRANT ALL ON s2.marks TO ferry_test",
                         dbname="app")
    host, port = ferry.listener_addr("pg")
    conn = psycopg2.connect(harness.pg.dsn(host, port), application_name="mover")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SET search_path TO s2, public")
    cur.execute("SET TimeZone TO 'Asia/Tokyo'")
    cur.execute("BEGIN; SET LOCAL work_mem TO '8MB'; COMMIT")
    cur.execute("SELECT set_config('DateStyle', 'SQL, DMY', false)")

    switch_to_b(ferry, own_pg)
    wait_for(lambda: "event=session.moved" in ferry.log_text(), timeout=15,
             what="the idle session to move")
    cur.execute("INSERT INTO marks VALUES ('after the move')")     # s2.marks via search_path
    cur.execute("SELECT inet_server_port(), current_setting('search_path'), "
                "current_setting('TimeZone'), current_setting('application_name'), "
                "current_setting('DateStyle'), current_setting('work_mem')")
    assert cur.fetchone() == (own_pg.replica.port, "s2, public", "Asia/Tokyo", "mover",
                              "SQL, DMY", "4MB")
    assert own_pg.replica.query("SELECT note FROM s2.marks", dbname="app") == [("after the move",)]
    assert own_pg.primary.query("SELECT count(*) FROM s2.marks", dbname="app") == [(0,)]
    status = ferry.status()
    pg = [l for l in status["listeners"] if l["name"] == "pg"][0]
    assert pg["sessions_moved"] == 1
    conn.close()


def test_transaction_gets_40001_then_the_session_moves_after_rollback(ferry_factory, own_pg):
    ferry = terminated_discovered(ferry_factory, own_pg, workers=1)
    own_pg.primary.query("CREATE TABLE marks (note text); GRANT ALL ON marks TO ferry_test",
                         dbname="app")
    conn = psycopg2.connect(dsn(ferry))
    cur = conn.cursor()                 # psycopg2 opens a transaction with the first statement
    cur.execute("INSERT INTO marks VALUES ('in the old transaction')")
    switch_to_b(ferry, own_pg)
    wait_for(lambda: "event=session.writer_moved" in ferry.log_text(), timeout=10,
             what="the session to learn of the move")
    with pytest.raises(psycopg2.errors.SerializationFailure) as err:
        cur.execute("INSERT INTO marks VALUES ('after the switch')")
    assert "moved away from region-a" in str(err.value)
    conn.rollback()                     # ferry answers ROLLBACK, then moves the session
    wait_for(lambda: "event=session.moved" in ferry.log_text(), timeout=15,
             what="the session to move after ROLLBACK")
    cur.execute("INSERT INTO marks VALUES ('retried')")
    conn.commit()
    cur.execute("SELECT inet_server_port()")
    assert cur.fetchone() == (own_pg.replica.port,)
    conn.close()
    assert own_pg.replica.query("SELECT note FROM marks", dbname="app") == [("retried",)]
    assert own_pg.primary.query("SELECT count(*) FROM marks", dbname="app") == [(0,)]


def terminated_discovered(ferry_factory, own_pg, workers=1, **discovery):
    """ferry with terminated auth in front of own_pg, discovering the
    writer (region-a) with fast probes."""
    lcfg = pg_discovered(own_pg)
    lcfg["auth"] = {"mode": "terminated", "users": [{"name": USER, "password": PASSWORD}]}
    ferry = ferry_factory(make_config(lcfg, workers=workers, discovery=dict(FAST, **discovery)))
    wait_for(lambda: writer_of(ferry, "pg") == "region-a", timeout=10, what="region-a as writer")
    return ferry


def test_idle_session_survives_a_crash_and_waits_for_the_new_writer(ferry_factory, own_pg):
    """Unplanned failover: the writer dies while a session is idle. Its next
    statement waits (held) while there is no writer and runs on the new one
    once it is promoted: the client sees a slow statement, not an error."""
    ferry = terminated_discovered(ferry_factory, own_pg)
    host, port = ferry.listener_addr("pg")
    conn = psycopg.connect(harness.pg.dsn(host, port), autocommit=True, prepare_threshold=0)
    conn.execute("SET TimeZone TO 'UTC'")
    assert conn.execute("SELECT %s::int * 2", (2,)).fetchone() == (4,)

    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="the writer to be dropped")
    result = {}

    def statement():
        try:
            result["row"] = conn.execute("SELECT %s::int * 2, inet_server_port(), "
                                         "current_setting('TimeZone')", (21,)).fetchone()
        except Exception as e:  # noqa: BLE001 - asserted below
            result["error"] = e

    t = threading.Thread(target=statement)
    t.start()
    wait_for(lambda: listener_held(ferry) == 1, timeout=10, what="the statement to be held")
    own_pg.replica.promote()
    t.join(30)
    assert result == {"row": (42, own_pg.replica.port, "UTC")}
    conn.close()
    assert ferry.status()["listeners"][0]["sessions_moved"] == 1


def test_idle_sessions_move_after_the_logins_clients_wait_for(ferry_factory, own_pg):
    """After a crash, idle sessions wait for their move without a backend
    and without a hold timer (nothing of theirs times out: hold_timeout is 4 s
    here and the outage lasts longer); the client that is waiting (a new
    connection) logs in before any idle session moves (here ahead of the
    promotion), and then every idle session moves by itself and works."""
    ferry = terminated_discovered(ferry_factory, own_pg, workers=1, hold_timeout=4)
    host, port = ferry.listener_addr("pg")
    idle = [psycopg.connect(harness.pg.dsn(host, port), autocommit=True) for _ in range(4)]
    for i, c in enumerate(idle):
        c.execute(f"SET application_name TO 'idle{i}'")
    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="the writer to be dropped")
    wait_for(lambda: listener(ferry)["sessions_waiting_to_move"] == 4, timeout=10,
             what="the idle sessions to wait for their move")
    time.sleep(4.5)                     # longer than hold_timeout: they are not held
    assert listener(ferry)["clients_held"] == 0
    t, result = client_in_thread(host, port)
    wait_for(lambda: listener(ferry)["clients_held"] == 1, timeout=10, what="the new client held")
    own_pg.replica.promote()
    t.join(30)
    assert result == {"hot_standby": "off", "port": own_pg.replica.port}
    wait_for(lambda: listener(ferry)["sessions_moved"] == 4, timeout=15,
             what="the idle sessions to move in the background")
    log = ferry.log_text()
    first_move = log.index("event=session.moved")
    assert log.index("event=session.logged_in", log.index("to=none")) < first_move
    for i, c in enumerate(idle):
        assert c.execute("SELECT inet_server_port(), current_setting('application_name')"
                         ).fetchone() == (own_pg.replica.port, f"idle{i}")
        c.close()
    assert listener(ferry)["sessions_waiting_to_move"] == 0
    assert listener(ferry)["failover_errors_total"] == 0


def test_held_client_logs_in_ahead_of_the_promotion(ferry_factory, own_pg):
    """While there is no writer, a held client of a terminated listener is
    logged into the replica discovery expects to be promoted (its only
    healthy one), so the login is done when the promotion is: its statement
    runs there once it is the writer, and never before (an INSERT sent to
    the standby would fail with 25006). The client is told in_hot_standby =
    off: it talks to that server only as the writer."""
    ferry = terminated_discovered(ferry_factory, own_pg, workers=1)
    own_pg.primary.query("CREATE TABLE early (note text); GRANT ALL ON early TO ferry_test",
                         dbname="app")
    own_pg.wait_replicated()
    host, port = ferry.listener_addr("pg")
    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="the writer to be dropped")
    assert discovery_of(ferry, "pg")["candidate"] == "region-b"
    t, result = client_in_thread(host, port, "INSERT INTO early VALUES ('held')",
                                 application_name="early")
    wait_for(lambda: "event=session.ready_ahead_of_promotion" in ferry.log_text(), timeout=10,
             what="the held client to log into the replica")
    assert listener(ferry)["clients_held"] == 1
    assert own_pg.replica.query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'early'")[0][0] == 1
    assert own_pg.replica.query("SELECT count(*) FROM early", dbname="app") == [(0,)]
    own_pg.replica.promote()
    t.join(30)
    assert result == {"hot_standby": "off", "port": own_pg.replica.port}
    assert own_pg.replica.query("SELECT note FROM early", dbname="app") == [("held",)]
    assert discovery_of(ferry, "pg")["candidate"] is None


def test_logged_in_ahead_on_a_cluster_that_is_not_promoted_moves_to_the_one_that_is(
        ferry_factory, own_pg):
    """The writer turns read-only (a switchover begins), a held client logs
    into the replica ahead of its promotion, then the switchover is called
    off and the old writer takes writes again: the client's session moves
    to it (its statement runs there, never on the replica)."""
    ferry = terminated_discovered(ferry_factory, own_pg, workers=1)
    a = own_pg.primary
    a.query("CREATE TABLE called_off (note text); GRANT ALL ON called_off TO ferry_test",
            dbname="app")
    host, port = ferry.listener_addr("pg")
    a.query("ALTER SYSTEM SET default_transaction_read_only = on")
    a.query("SELECT pg_reload_conf()")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="the writer to be dropped")
    t, result = client_in_thread(host, port, "INSERT INTO called_off VALUES ('kept')")
    wait_for(lambda: "event=session.ready_ahead_of_promotion" in ferry.log_text(), timeout=10,
             what="the held client to log into the replica")
    a.query("ALTER SYSTEM RESET default_transaction_read_only")
    a.query("SELECT pg_reload_conf()")
    t.join(30)
    assert result == {"hot_standby": "off", "port": a.port}
    assert a.query("SELECT note FROM called_off", dbname="app") == [("kept",)]
    assert listener(ferry)["sessions_moved"] == 1


def listener(ferry):
    return ferry.status()["listeners"][0]


def client_in_thread(host, port, statement=None, **connect_kw):
    """A client in a thread: connects (autocommit), runs statement, asks the
    server's port. Returns (thread, result); result gets "hot_standby" (as
    reported at login) and "port", or "error"."""
    result = {}

    def run():
        try:
            with psycopg.connect(harness.pg.dsn(host, port), autocommit=True, **connect_kw) as c:
                result["hot_standby"] = c.info.parameter_status("in_hot_standby")
                if statement:
                    c.execute(statement)
                result["port"] = c.execute("SELECT inet_server_port()").fetchone()[0]
        except Exception as e:  # noqa: BLE001 - the caller asserts on result
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_held_move_gives_up_after_hold_timeout(ferry_factory, own_pg):
    ferry = terminated_discovered(ferry_factory, own_pg, hold_timeout=1)
    host, port = ferry.listener_addr("pg")
    conn = psycopg.connect(harness.pg.dsn(host, port), autocommit=True)
    own_pg.primary.stop(mode="immediate")
    wait_for(lambda: writer_of(ferry, "pg") is None, timeout=10, what="the writer to be dropped")
    with pytest.raises(psycopg.OperationalError) as err:
        conn.execute("SELECT 1")
    assert "no writer for listener pg after waiting 1s" in str(err.value)
    assert listener_held(ferry) == 0


def listener_held(ferry):
    return ferry.status()["listeners"][0]["clients_held"]


@pytest.mark.parametrize("mode", ["passthrough", "terminated"])
def test_psycopg3_pipeline_and_automatic_prepares(ferry_factory, pg_pair, mode):
    """psycopg 3's pipeline mode (many Parse/Bind/Execute before one Sync)
    and its automatic server-side prepares, through ferry in both modes."""
    users = [{"name": USER, "password": PASSWORD}]
    lcfg = pg_listener(pg_pair, auth={"mode": mode, "users": users})
    ferry = ferry_factory(make_config(lcfg, workers=1))
    with psycopg.connect(dsn(ferry), autocommit=True, prepare_threshold=2) as conn:
        conn.execute("CREATE TEMP TABLE p (i int, t text)")
        with conn.pipeline():
            for i in range(200):
                conn.execute("INSERT INTO p VALUES (%s, %s)", (i, f"row {i}"))
            cur = conn.execute("SELECT count(*), sum(i) FROM p")
        assert cur.fetchone() == (200, sum(range(200)))
        for i in range(5):      # prepared after the second use, then reused
            assert conn.execute("SELECT t FROM p WHERE i = %s", (i,)).fetchone() == (f"row {i}",)
        with pytest.raises(psycopg.errors.DivisionByZero):
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT 1 / 0")
                conn.execute("SELECT 2")
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_a_long_prepared_statement_moves_too(ferry_factory, own_pg):
    """A Parse much longer than one read (it arrives split) is still seen
    whole, so the session stays movable and its statement is re-created."""
    ferry = terminated_discovered(ferry_factory, own_pg)
    host, port = ferry.listener_addr("pg")
    conn = psycopg.connect(harness.pg.dsn(host, port), autocommit=True, prepare_threshold=0)
    sql = "SELECT %s::int + 1 /* " + "x" * 200000 + " */"
    assert conn.execute(sql, (1,)).fetchone() == (2,)
    switch_to_b(ferry, own_pg)
    wait_for(lambda: "event=session.moved" in ferry.log_text(), timeout=15,
             what="the session to move")
    assert conn.execute(sql, (41,)).fetchone() == (42,)
    assert conn.execute("SELECT inet_server_port()").fetchone() == (own_pg.replica.port,)
    assert "movable=no" not in ferry.log_text()
    conn.close()


def test_terminated_mode_negotiates_a_newer_minor_version(ferry_factory, pg_pair):
    """A client asking for protocol 3.9 and a _pq_ option gets
    NegotiateProtocolVersion (3.0, the option not recognised) from ferry,
    then the authentication request, and the session works."""
    import struct
    from test_pg_protocol import read_messages
    ferry = ferry_factory(terminated(pg_pair, [{"name": USER, "password": PASSWORD,
                                                "method": "trust"}]))
    params = b"user\0" + USER.encode() + b"\0database\0app\0_pq_.future\0on\0\0"
    packet = struct.pack("!II", 8 + len(params), (3 << 16) | 9) + params
    with socket.create_connection(ferry.listener_addr("pg"), timeout=10) as s:
        s.sendall(packet)
        msgs = read_messages(s)
    assert msgs[0][0] == b"v"
    newest, n = struct.unpack("!II", msgs[0][1][:8])
    assert (newest, n) == (0, 1) and msgs[0][1][8:] == b"_pq_.future\0"
    assert msgs[1] == (b"R", struct.pack("!I", 0))     # trust: AuthenticationOk
    assert msgs[-1][0] == b"Z"                         # logged into the backend


@pytest.fixture(scope="module")
def methods_pg():
    """A pair whose primary asks md5_user for an MD5 password and pw_user for
    a cleartext one (the harness's ferry_test gets SCRAM, postgres trust)."""
    import os
    with harness.PgPair() as pair:
        pair.primary.query("SET password_encryption = 'md5'; "
                           "CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret'; "
                           "CREATE ROLE pw_user LOGIN PASSWORD 'pw-secret'")
        hba = os.path.join(pair.primary.datadir, "pg_hba.conf")
        with open(hba) as f:
            text = f.read()
        with open(hba, "w") as f:      # first match wins: these go first
            f.write("host all md5_user 127.0.0.1/32 md5\n"
                    "host all pw_user 127.0.0.1/32 password\n" + text)
        pair.primary.query("SELECT pg_reload_conf()")
        for user in ("md5_user", "pw_user"):    # the server really asks them for a password
            with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
                psycopg2.connect(host=pair.primary.host, port=pair.primary.port, user=user,
                                 password="wrong", dbname="postgres")
        yield pair


@pytest.mark.parametrize("mode", ["passthrough", "terminated"])
@pytest.mark.parametrize("user,password", [("md5_user", "md5-secret"), ("pw_user", "pw-secret")])
def test_backend_md5_and_cleartext_logins(ferry_factory, methods_pg, mode, user, password):
    users = [{"name": user, "password": password}]
    ferry = ferry_factory(make_config(pg_listener(methods_pg,
                                                  auth={"mode": mode, "users": users}),
                                      workers=1))
    host, port = ferry.listener_addr("pg")
    conn = psycopg2.connect(host=host, port=port, user=user, password=password,
                            dbname="postgres", connect_timeout=10)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (user,)
    conn.close()
    assert password not in ferry.log_text()
