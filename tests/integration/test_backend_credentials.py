"""No credential to a man in the middle by default (issue 18 item 1).

Fake servers (tests/fakes/mitm.py) decline TLS and ask for the password in a
form they can read: PostgreSQL's AuthenticationCleartextPassword, MySQL's
caching_sha2_password full authentication with their own RSA key. Whatever
they receive is what an attacker on the network path would have learnt.

- By default (no backend_tls) ferry wants TLS to a verified server: the fake
  gets no login at all.
- With a mode that does not verify the server (prefer / preferred), ferry
  still refuses to give these servers the password, in sessions and probes,
  and says why.
- Only backend_tls.allow_insecure_password lets the password through: the
  same fakes then receive it, which proves they would catch a regression.
"""

import json
import subprocess
import sys

import psycopg2
import pymysql
import pytest

import harness
from fakes_fixture import REPO_ROOT
from harness import cluster, free_port, make_config
from harness.ferry import hostport
from harness.ports import HOST
from harness.proc import wait_for

sys.path.insert(0, str(REPO_ROOT / "tests" / "fakes"))
from mitm import FakeMySQLServer, FakePgServer  # noqa: E402

USER, PASSWORD = "app_user", "mitm-bait-s3cret"


@pytest.fixture
def fake_pg():
    server = FakePgServer().start()
    yield server
    server.stop()


@pytest.fixture
def fake_my():
    server = FakeMySQLServer().start()
    yield server
    server.stop()


def mitm_config(protocol, fake, backend_tls=None, probe=False, passthrough=False):
    """One listener in front of fake: terminated auth with USER's stored
    password (or passthrough), statically routed, or discovered by a probe
    logging in as USER. backend_tls None = the product's default."""
    options = {} if passthrough else {
        "auth": {"mode": "terminated", "users": [{"name": USER, "password": PASSWORD}]}}
    if probe:
        options["probe"] = {"user": USER, "password": PASSWORD}
    if backend_tls is not None:
        options["backend_tls"] = backend_tls
    name = {"postgresql": "pg", "mysql": "my"}[protocol]
    listener = {"name": name, "protocol": protocol, "bind": hostport(HOST, free_port()),
                "clusters": [cluster("mitm", f"127.0.0.1:{fake.port}", writer=not probe)],
                **options}
    return make_config(listener, workers=1)


def pg_config(fake, backend_tls=None, **kw):
    return mitm_config("postgresql", fake, backend_tls, **kw)


def my_config(fake, backend_tls, **kw):
    return mitm_config("mysql", fake, backend_tls, **kw)


def pg_login(ferry):
    host, port = ferry.listener_addr("pg")
    with pytest.raises(psycopg2.OperationalError) as err:
        psycopg2.connect(host=host, port=port, user=USER, password=PASSWORD, dbname="app",
                         connect_timeout=10, sslmode="disable")
    return str(err.value)


def my_login(ferry):
    host, port = ferry.listener_addr("my")
    with pytest.raises(pymysql.err.MySQLError) as err:
        pymysql.connect(host=host, port=port, user=USER, password=PASSWORD, database="app",
                        connect_timeout=10)
    return str(err.value)


def discover(config, tmp_path):
    """`ferry discover --json`: one probe round. (exit code, cluster doc, stderr)."""
    path = harness.ferry.write_config(config, str(tmp_path / "discover.json"))
    res = subprocess.run([harness.require_binary(), "discover", "-c", path, "--json"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    doc = json.loads(res.stdout or "[]")
    return res.returncode, doc[0]["clusters"][0], res.stderr


def test_default_wants_a_verified_server_and_gives_a_plaintext_one_nothing(ferry_factory,
                                                                          fake_pg):
    ferry = ferry_factory(pg_config(fake_pg))
    error = pg_login(ferry)
    assert "TLS" in error, error
    assert fake_pg.seen("ssl_request"), "ferry asked for TLS first"
    assert fake_pg.seen("startup") == [] and fake_pg.seen("password") == []
    assert PASSWORD not in ferry.log_text()


def test_unverified_pg_server_gets_no_cleartext_password(ferry_factory, fake_pg):
    ferry = ferry_factory(pg_config(fake_pg, {"mode": "prefer"}))
    error = pg_login(ferry)
    assert "asked for the password in cleartext" in error, error
    assert "allow_insecure_password" in error, error
    assert fake_pg.seen("startup"), "the fake got the login up to the password request"
    assert fake_pg.seen("password") == []
    log = ferry.log_text()
    assert "event=config.backend_tls_unverified listener=pg mode=prefer " \
           "allow_insecure_password=false" in log
    assert PASSWORD not in log


def test_allow_insecure_password_lets_the_cleartext_password_through(ferry_factory, fake_pg):
    """The opt-in, and the proof that the fake catches a password."""
    ferry = ferry_factory(pg_config(fake_pg, {"mode": "prefer",
                                              "allow_insecure_password": True}))
    pg_login(ferry)                     # the fake refuses every login
    wait_for(lambda: fake_pg.seen("password"), timeout=10, what="the fake to get a password")
    assert fake_pg.seen("password") == [PASSWORD.encode()]
    assert "allow_insecure_password=true" in ferry.log_text()


@pytest.mark.parametrize("allow", [False, True])
def test_passthrough_relays_no_cleartext_request_from_an_unverified_server(ferry_factory,
                                                                          fake_pg, allow):
    """The client's own password, relayed by ferry, is kept from the same
    servers as ferry's stored ones."""
    ferry = ferry_factory(pg_config(fake_pg, {"mode": "prefer", "allow_insecure_password": allow},
                                    passthrough=True))
    error = pg_login(ferry)
    if allow:
        wait_for(lambda: fake_pg.seen("password"), timeout=10, what="the fake to get a password")
        assert fake_pg.seen("password") == [PASSWORD.encode()]
        return
    assert "asked for the client's password in cleartext" in error, error
    assert fake_pg.seen("startup") and fake_pg.seen("password") == []


@pytest.mark.parametrize("allow", [False, True])
def test_pg_probe_password_only_with_channel_binding_to_unverified(tmp_path, fake_pg, allow):
    tls = {"mode": "prefer", "allow_insecure_password": allow}
    code, doc, _ = discover(pg_config(fake_pg, tls, probe=True), tmp_path)
    assert doc["state"] != "writable", doc
    if allow:
        assert fake_pg.seen("password") == [PASSWORD.encode()]
        return
    assert fake_pg.seen("startup"), "the probe reached the fake"
    assert fake_pg.seen("password") == []
    assert doc["state"] == "tls-failed", doc
    assert doc["detail"].startswith("refused to log in: the server is not verified "
                                    "(backend_tls.mode prefer)"), doc


def test_pg_probe_default_sends_nothing_to_a_plaintext_server(tmp_path, fake_pg):
    code, doc, _ = discover(pg_config(fake_pg, None, probe=True), tmp_path)
    assert doc["state"] == "tls-failed", doc
    assert fake_pg.seen("startup") == [] and fake_pg.seen("password") == []


def test_unverified_mysql_server_gets_no_rsa_wrapped_password(ferry_factory, fake_my):
    ferry = ferry_factory(my_config(fake_my, {"mode": "preferred"}))
    error = my_login(ferry)
    assert "asked for the password in full" in error, error
    assert fake_my.seen("handshake_response"), "ferry answered the greeting (a scramble)"
    assert fake_my.seen("key_request") == [] and fake_my.seen("password") == []
    assert PASSWORD not in ferry.log_text()


def test_mysql_allow_insecure_password_sends_it_under_the_servers_key(ferry_factory, fake_my):
    ferry = ferry_factory(my_config(fake_my, {"mode": "preferred",
                                              "allow_insecure_password": True}))
    my_login(ferry)
    wait_for(lambda: fake_my.seen("password"), timeout=10, what="the fake to get a password")
    assert fake_my.seen("key_request")
    assert fake_my.seen("password") == [PASSWORD.encode()]


@pytest.mark.parametrize("allow", [False, True])
def test_mysql_probe_password_to_unverified_server(tmp_path, fake_my, allow):
    tls = {"mode": "disabled", "allow_insecure_password": allow}
    code, doc, _ = discover(my_config(fake_my, tls, probe=True), tmp_path)
    assert doc["state"] != "writable", doc
    if allow:
        assert fake_my.seen("password") == [PASSWORD.encode()]
    else:
        assert fake_my.seen("key_request") == [] and fake_my.seen("password") == [], doc
        assert doc["state"] == "tls-failed", doc
        assert doc["detail"].startswith("refused to log in: the server is not verified "
                                        "(backend_tls.mode disabled)"), doc


def test_mysql_probe_default_sends_nothing_to_a_plaintext_server(tmp_path, fake_my):
    code, doc, _ = discover(my_config(fake_my, {"mode": "verify_identity"}, probe=True), tmp_path)
    assert doc["state"] == "tls-failed", doc
    assert fake_my.seen("handshake_response") == [] and fake_my.seen("password") == []


def test_check_warns_about_unverified_servers(pg_pair, tmp_path):
    unverified = pg_config(pg_pair.primary, {"mode": "require"})
    code, out, err = harness.check(unverified)
    assert code == 0, err
    assert "warning: listeners[0] (pg): backend_tls.mode require: servers are not verified" in err
    code, out, err = harness.check(pg_config(pg_pair.primary))
    assert code == 0 and "backend_tls" not in err, err


def test_mysql_passthrough_must_opt_out_of_the_tls_default(tmp_path, mariadb_pair):
    listener = {"name": "my", "protocol": "mysql", "bind": "127.0.0.1:13306",
                "clusters": [cluster("a", mariadb_pair.primary, writer=True)]}
    code, out, err = harness.check(make_config(listener))
    assert code == 2
    assert "listeners[0].backend_tls.mode: mysql listeners take TLS only with" in err, err
    assert 'sets "backend_tls": {"mode": "disabled"} explicitly' in err, err
