"""TLS between PostgreSQL clients and ferry: ferry answers SSLRequest with
'S' on a listener with a certificate and terminates TLS (the backend leg is
plaintext for now); clients with sslmode=require and verify-full against
a test CA work; a listener can require TLS; unencrypted bytes after an
SSLRequest end the session (CVE-2021-23214)."""

import socket
import struct
import subprocess

import psycopg2
import pytest

import harness
from fronts import pg_listener
from harness import make_config
from harness.pki import make_pki
from test_pg_protocol import error_fields, read_messages, startup_packet

USER, PASSWORD = harness.pg.TEST_USER, harness.pg.TEST_PASSWORD


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA and a server certificate for localhost / 127.0.0.1; and a
    second CA that signed nothing ferry serves (harness/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_listener(pg_pair, pki, **tls):
    return pg_listener(pg_pair, tls=dict({"cert_file": str(pki / "server.pem"),
                                          "key_file": str(pki / "server.key")}, **tls))


def connect(ferry, **kw):
    host, port = ferry.listener_addr("pg")
    params = dict(host=host, port=port, user=USER, password=PASSWORD, dbname="app",
                  connect_timeout=10)
    params.update(kw)
    return psycopg2.connect(**params)


def test_sslmode_require_and_verify_full(ferry_factory, pg_pair, pki):
    ferry = ferry_factory(make_config(tls_listener(pg_pair, pki), workers=1))
    for kw in ({"sslmode": "require"},
               {"sslmode": "verify-full", "sslrootcert": str(pki / "ca.pem"), "host": "localhost"},
               {"sslmode": "verify-full", "sslrootcert": str(pki / "ca.pem")}):   # IP SAN
        conn = connect(ferry, **kw)
        assert conn.info.ssl_in_use
        assert conn.info.ssl_attribute("protocol") in ("TLSv1.2", "TLSv1.3")
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, 40 + 2")
            assert cur.fetchone() == (USER, 42)
        conn.close()
    # plaintext clients are still served when TLS is not required
    conn = connect(ferry, sslmode="disable")
    assert not conn.info.ssl_in_use
    conn.close()


def test_verify_full_against_another_ca_fails(ferry_factory, pg_pair, pki):
    ferry = ferry_factory(make_config(tls_listener(pg_pair, pki), workers=1))
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry, sslmode="verify-full", sslrootcert=str(pki / "other.pem"), host="localhost")
    assert "certificate verify failed" in str(err.value)


def test_large_results_and_statements_over_tls(ferry_factory, pg_pair, pki):
    ferry = ferry_factory(make_config(tls_listener(pg_pair, pki), workers=1))
    conn = connect(ferry, sslmode="require")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT repeat('x', 1000) FROM generate_series(1, 20000)")   # ~20 MB out
        rows = cur.fetchall()
        assert len(rows) == 20000 and rows[-1][0] == "x" * 1000
        big = "y" * (8 * 1024 * 1024)                                           # 8 MB in
        cur.execute("SELECT length(%s)", (big,))
        assert cur.fetchone() == (len(big),)
    conn.close()


def test_listener_can_require_tls(ferry_factory, pg_pair, pki):
    ferry = ferry_factory(make_config(tls_listener(pg_pair, pki, required=True), workers=1))
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry, sslmode="disable")
    assert "ferry: this listener requires TLS" in str(err.value)
    conn = connect(ferry, sslmode="require")
    assert conn.info.ssl_in_use
    conn.close()


def test_terminated_auth_over_tls(ferry_factory, pg_pair, pki):
    lcfg = tls_listener(pg_pair, pki)
    lcfg["auth"] = {"mode": "terminated", "users": [{"name": USER, "password": PASSWORD}]}
    ferry = ferry_factory(make_config(lcfg, workers=1))
    conn = connect(ferry, sslmode="verify-full", sslrootcert=str(pki / "ca.pem"), host="localhost")
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (USER,)
    conn.close()
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry, sslmode="require", password="not-it")
    assert "password authentication failed" in str(err.value)


def test_unencrypted_bytes_after_ssl_request_end_the_session(ferry_factory, pg_pair, pki):
    ferry = ferry_factory(make_config(tls_listener(pg_pair, pki), workers=1))
    ssl_request = struct.pack("!II", 8, 80877103)
    with socket.create_connection(ferry.listener_addr("pg"), timeout=10) as s:
        s.sendall(ssl_request + startup_packet())    # injected after the SSLRequest
        msgs = read_messages(s, until=b"E-never")
    assert msgs and msgs[0][0] == b"E"
    err = error_fields(msgs[0][1])
    assert err["C"] == "08P01" and "unencrypted bytes after the SSLRequest" in err["M"]
    conn = connect(ferry, sslmode="require")     # others are unaffected
    conn.close()


def test_unusable_certificate_is_a_config_error(tmp_path, pki, pg_pair):
    import json
    cfg = make_config(pg_listener(pg_pair, tls={"cert_file": str(tmp_path / "missing.pem"),
                                                "key_file": str(pki / "server.key")}))
    path = tmp_path / "ferry.json"
    path.write_text(json.dumps(cfg))
    res = subprocess.run([harness.require_binary(), "check", "-c", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert f"{path}: listeners[0].tls: " in res.stderr and "missing.pem" in res.stderr


def tls12_handshake(ferry, cipher):
    """openssl s_client through PostgreSQL's SSLRequest, TLS 1.2 with only
    `cipher` offered: (handshake succeeded, output)."""
    host, port = ferry.listener_addr("pg")
    res = subprocess.run(["openssl", "s_client", "-starttls", "postgres", "-connect",
                          f"{host}:{port}", "-tls1_2", "-cipher", cipher],
                         input="", capture_output=True, text=True, timeout=30)
    out = res.stdout + res.stderr
    return res.returncode == 0 and f"Cipher is {cipher}" in out, out


def test_client_tls_offers_forward_secret_aead_suites_only(ferry_factory, pg_pair, pki):
    """TLS 1.2 towards clients: ECDHE with AEAD ciphers only by default (no
    static-RSA key exchange, no CBC-SHA1); tls.ciphers changes the list and
    a list OpenSSL cannot use is a config error naming the key."""
    ferry = ferry_factory(make_config(tls_listener(pg_pair, pki)))
    ok, out = tls12_handshake(ferry, "ECDHE-ECDSA-AES128-GCM-SHA256")     # the test key is EC
    assert ok, out
    for weak in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"):
        ok, out = tls12_handshake(ferry, weak)
        assert not ok, f"{weak} accepted: {out}"
    ferry2 = ferry_factory(make_config(tls_listener(pg_pair, pki, ciphers="ECDHE-ECDSA-AES128-SHA")))
    ok, out = tls12_handshake(ferry2, "ECDHE-ECDSA-AES128-SHA")
    assert ok, out
    assert harness.check(make_config(tls_listener(pg_pair, pki, ciphers="NOPE")))[0] == 2


# ---- TLS between ferry and the backend ----

@pytest.fixture(scope="module")
def tls_pg(pki):
    """A PostgreSQL pair serving TLS with the test CA's certificate."""
    with harness.pg.tls_pair(pki) as pair:
        yield pair


def backend_ssl(ferry):
    conn = connect(ferry)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return cur.fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize("backend_tls", [
    {"mode": "prefer"},
    {"mode": "require"},
    {"ca_file": "ca.pem"},                      # the default mode: verify-full
    {"mode": "verify-full", "ca_file": "ca.pem"},
    {"mode": "verify-ca", "ca_file": "ca.pem"},
])
def test_backend_tls_modes(ferry_factory, tls_pg, pki, backend_tls):
    lcfg = pg_listener(tls_pg)
    lcfg["backend_tls"] = dict(backend_tls)
    if "ca_file" in backend_tls:
        lcfg["backend_tls"]["ca_file"] = str(pki / backend_tls["ca_file"])
    ferry = ferry_factory(make_config(lcfg, workers=1))
    ssl, version = backend_ssl(ferry)
    assert ssl is True and version.startswith("TLSv1.")


def test_backend_tls_default_verifies_against_the_system_store(ferry_factory, tls_pg):
    """No backend_tls at all: verify-full with the system's CAs, which do
    not include the test CA, so the session is refused before any login."""
    lcfg = pg_listener(tls_pg)
    del lcfg["backend_tls"]
    ferry = ferry_factory(make_config(lcfg, workers=1))
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry)
    assert "TLS with the writer region-a" in str(err.value)
    assert "certificate verify failed" in str(err.value)


def test_backend_verify_full_with_the_wrong_ca_fails(ferry_factory, tls_pg, pki):
    lcfg = pg_listener(tls_pg, backend_tls={"mode": "verify-full",
                                            "ca_file": str(pki / "other.pem")})
    ferry = ferry_factory(make_config(lcfg, workers=1))
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry)
    assert "TLS with the writer region-a" in str(err.value)
    assert "certificate verify failed" in str(err.value)


def test_backend_tls_required_but_not_offered(ferry_factory, pg_pair):
    lcfg = pg_listener(pg_pair, backend_tls={"mode": "require"})
    ferry = ferry_factory(make_config(lcfg, workers=1))
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry)
    assert "the server does not accept TLS" in str(err.value)
    lcfg = pg_listener(pg_pair, backend_tls={"mode": "disable"})
    ferry = ferry_factory(make_config(lcfg, workers=1))
    assert backend_ssl(ferry)[0] is False


def test_tls_on_both_sides_with_terminated_auth(ferry_factory, tls_pg, pki):
    lcfg = tls_listener(tls_pg, pki)
    lcfg["backend_tls"] = {"mode": "verify-full", "ca_file": str(pki / "ca.pem")}
    lcfg["auth"] = {"mode": "terminated", "users": [{"name": USER, "password": PASSWORD}]}
    ferry = ferry_factory(make_config(lcfg, workers=1))
    conn = connect(ferry, sslmode="verify-full", sslrootcert=str(pki / "ca.pem"), host="localhost")
    assert conn.info.ssl_in_use
    with conn.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (True,)
        cur.execute("SELECT repeat('z', 1000) FROM generate_series(1, 5000)")
        assert len(cur.fetchall()) == 5000
    conn.close()


def test_passthrough_scram_over_tls_on_both_sides(ferry_factory, tls_pg, pki):
    """The backend offers SCRAM-SHA-256-PLUS on its TLS connection, whose
    channel binding can never match a client's TLS connection to ferry.
    ferry hides the PLUS mechanism, which is enough for clients on plaintext
    to ferry. A client on TLS to ferry then says "I could bind, you cannot"
    (gs2 'y'), which a TLS backend rightly rejects as a downgrade; ferry
    cannot rewrite that without breaking the proof. So in passthrough mode
    with TLS on both sides, clients set channel_binding=disable (or the
    listener uses terminated auth, where ferry itself logs in)."""
    lcfg = tls_listener(tls_pg, pki)
    lcfg["backend_tls"] = {"mode": "require"}
    ferry = ferry_factory(make_config(lcfg, workers=1))
    conn = connect(ferry, sslmode="disable")        # plaintext client: plain SCRAM
    conn.close()
    conn = connect(ferry, sslmode="require", channel_binding="disable")
    assert conn.info.ssl_in_use
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (USER, True)
    conn.close()
    with pytest.raises(psycopg2.OperationalError) as err:
        connect(ferry, sslmode="require")           # libpq's default channel_binding=prefer
    assert "channel binding negotiation error" in str(err.value)
