"""Terminated authentication on the MySQL listener (issue 5): ferry greets
clients itself, checks their passwords (mysql_native_password;
caching_sha2_password with its fast path and its full authentication over
TLS or RSA), then logs into the writer with the stored password. A wrong
password gets 1045 and no backend connection. TLS towards clients."""

import hashlib
import socket
import ssl
import struct

import pymysql
import pytest

import harness
from fronts import listener_status, my_connect, my_listener
from harness import make_config
from harness.mariadb import TEST_DB, TEST_PASSWORD, TEST_USER
from harness.pki import make_pki
from test_mysql_protocol import native_password, packet, parse_err

SHA2_USER, SHA2_PASSWORD = "ferry_sha2", "sha2-secret"


def users(*extra):
    return [{"name": TEST_USER, "password": TEST_PASSWORD}, *extra]


def terminated(mariadb_pair, users_, **options):
    return my_listener(mariadb_pair, auth={"mode": "terminated", "users": users_}, **options)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sha2_user(mariadb_pair):
    """SHA2_USER exists on the server (which logs ferry in with native:
    MariaDB has no caching_sha2_password); ferry asks clients for sha2."""
    for server in (mariadb_pair.primary,):
        server.query(f"CREATE USER IF NOT EXISTS '{SHA2_USER}'@'%' IDENTIFIED BY '{SHA2_PASSWORD}'")
        server.query(f"GRANT ALL ON {TEST_DB}.* TO '{SHA2_USER}'@'%'")
    return {"name": SHA2_USER, "password": SHA2_PASSWORD, "method": "caching_sha2_password"}


def server_connections(server):
    return int(server.query("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def test_native_login_queries_reach_the_writer_as_the_user(ferry_factory, mariadb_pair):
    ferry = ferry_factory(make_config(terminated(mariadb_pair, users()), workers=2))
    conn = my_connect(ferry)
    try:
        user, db = one(conn, "SELECT CURRENT_USER(), DATABASE()")
        assert user.startswith(TEST_USER + "@") and db == TEST_DB
        version = conn.get_server_info()
        # the backends' version, without MariaDB's replication prefix
        assert "MariaDB" in version and not version.startswith("5.5.5-"), version
        assert conn.thread_id() != one(conn, "SELECT CONNECTION_ID()")[0]   # ferry's id
    finally:
        conn.close()
    # the second session is greeted without a backend connection first
    conn = my_connect(ferry)
    assert one(conn, "SELECT 1") == (1,)
    conn.close()


def test_wrong_password_gets_1045_and_no_backend_connection(ferry_factory, mariadb_pair):
    ferry = ferry_factory(make_config(terminated(mariadb_pair, users()), workers=2))
    my_connect(ferry).close()       # the listener has learned the backends' greeting
    before = server_connections(mariadb_pair.primary)
    for user, password in ((TEST_USER, "wrong"), ("nobody", TEST_PASSWORD), (TEST_USER, "")):
        with pytest.raises(pymysql.err.OperationalError) as e:
            my_connect(ferry, user=user, password=password)
        assert e.value.args[0] == 1045, e.value.args
        assert "Access denied" in e.value.args[1] and "ferry" in e.value.args[1]
    # the one connection since is the query counting them
    assert server_connections(mariadb_pair.primary) - before == 1
    assert listener_status(ferry, "my")["auth_failures_total"] == 3


def sha2_scramble(password, scramble):
    p1 = hashlib.sha256(password.encode()).digest()
    p2 = hashlib.sha256(hashlib.sha256(p1).digest() + scramble).digest()
    return bytes(a ^ b for a, b in zip(p1, p2))


class Handshake:
    """The client side of a handshake, one packet at a time (raw socket)."""

    def __init__(self, ferry):
        self.sock = socket.create_connection(ferry.listener_addr("my"), timeout=20)
        self.buf = b""
        self.seq, greeting = self.read()
        assert greeting[0] == 10
        end = greeting.index(b"\0", 1)
        rest = greeting[end + 1:]
        self.scramble = rest[4:12] + rest[31:43]
        self.plugin = rest[44:rest.index(b"\0", 44)].decode()

    def read(self):
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:3], "little")
                if len(self.buf) >= 4 + n:
                    seq, payload = self.buf[3], self.buf[4:4 + n]
                    self.buf = self.buf[4 + n:]
                    return seq, payload
            data = self.sock.recv(65536)
            assert data, "ferry closed the connection"
            self.buf += data

    def send(self, payload):
        self.seq += 1
        self.sock.sendall(packet(payload, self.seq))

    def respond(self, user, auth, plugin):
        caps = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x20000 | 0x80000
        payload = (struct.pack("<IIB", caps, 1 << 24, 45) + bytes(23) + user.encode() + b"\0" +
                   bytes([len(auth)]) + auth + TEST_DB.encode() + b"\0" + plugin.encode() + b"\0")
        self.send(payload)

    def expect(self):
        self.seq, payload = self.read()
        return payload

    def full_auth_by_rsa(self, password):
        """caching_sha2_password's full authentication without TLS: asks
        for ferry's public key, sends the encrypted password; returns the
        answer (OK or ERR payload)."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        self.send(b"\x02")                      # the public key, please
        pem = self.expect()
        assert pem[0] == 1 and b"BEGIN PUBLIC KEY" in pem
        key = serialization.load_pem_public_key(pem[1:])
        plain = bytes(a ^ self.scramble[i % 20] for i, a in enumerate(password.encode() + b"\0"))
        self.send(key.encrypt(plain, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()),
                                                  algorithm=hashes.SHA1(), label=None)))
        return self.expect()


def test_caching_sha2_full_authentication_then_fast_path(ferry_factory, mariadb_pair, sha2_user):
    ferry = ferry_factory(make_config(terminated(mariadb_pair, [sha2_user]), workers=1))
    my_connect(ferry, user=SHA2_USER, password=SHA2_PASSWORD).close()   # PyMySQL: RSA itself
    ferry.stop()
    ferry.start()
    # a fresh ferry: the user is not cached, so full authentication (RSA here)
    h = Handshake(ferry)
    assert h.plugin == "caching_sha2_password"
    h.respond(SHA2_USER, sha2_scramble(SHA2_PASSWORD, h.scramble), "caching_sha2_password")
    assert h.expect() == b"\x01\x04"            # perform full authentication
    assert h.full_auth_by_rsa(SHA2_PASSWORD)[0] == 0x00     # OK
    # cached now: the scramble alone does it
    h = Handshake(ferry)
    h.respond(SHA2_USER, sha2_scramble(SHA2_PASSWORD, h.scramble), "caching_sha2_password")
    assert h.expect() == b"\x01\x03"            # fast authentication succeeded
    assert h.expect()[0] == 0x00
    # a wrong scramble of a cached user asks for the password in full, as
    # MySQL does (and as for an unknown user: see the next test)
    h = Handshake(ferry)
    h.respond(SHA2_USER, sha2_scramble("wrong", h.scramble), "caching_sha2_password")
    assert h.expect() == b"\x01\x04"
    code, state, text = parse_err(h.full_auth_by_rsa("wrong"))
    assert (code, state) == (1045, "28000") and SHA2_USER in text


def test_unknown_user_is_answered_like_a_wrong_password(ferry_factory, mariadb_pair, sha2_user):
    """issue 18 item 8, MySQL: an unknown name takes the listener's plugin
    (no AuthSwitchRequest) and full authentication, and gets the same 1045
    as a known user with a wrong password, cached or not."""
    ferry = ferry_factory(make_config(terminated(mariadb_pair, [sha2_user]), workers=1))

    def refusal(user, password):
        h = Handshake(ferry)
        h.respond(user, sha2_scramble(password, h.scramble), "caching_sha2_password")
        assert h.expect() == b"\x01\x04", user     # perform full authentication
        code, state, text = parse_err(h.full_auth_by_rsa(password))
        return code, state, text.replace(user, "<user>")

    uncached = refusal(SHA2_USER, "wrong")
    assert uncached[:2] == (1045, "28000")
    assert refusal("ghost", "wrong") == uncached
    my_connect(ferry, user=SHA2_USER, password=SHA2_PASSWORD).close()   # cached from here
    assert refusal(SHA2_USER, "wrong") == uncached
    assert refusal("ghost", "wrong") == uncached


def test_auth_switch_to_the_users_plugin(ferry_factory, mariadb_pair, sha2_user):
    """The greeting announces the first user's plugin; a user of the other
    gets an AuthSwitchRequest; a client answering for native is switched."""
    ferry = ferry_factory(make_config(terminated(mariadb_pair, [sha2_user, *users()]), workers=1))
    h = Handshake(ferry)
    assert h.plugin == "caching_sha2_password"
    h.respond(TEST_USER, b"", "caching_sha2_password")
    switch = h.expect()
    assert switch[0] == 0xFE and switch[1:].startswith(b"mysql_native_password\0")
    h.send(native_password(TEST_PASSWORD, switch[23:43]))
    assert h.expect()[0] == 0x00
    for user, password in ((TEST_USER, TEST_PASSWORD), (SHA2_USER, SHA2_PASSWORD)):
        conn = my_connect(ferry, user=user, password=password)
        assert one(conn, "SELECT CURRENT_USER()")[0].startswith(user + "@")
        conn.close()


def test_backend_refusal_reaches_the_client(ferry_factory, mariadb_pair):
    """A stored password the server does not take: the server's own 1045."""
    ferry = ferry_factory(make_config(terminated(
        mariadb_pair, [{"name": TEST_USER, "password": TEST_PASSWORD},
                       {"name": "ghost", "password": "boo"}]), workers=1))
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry, user="ghost", password="boo")
    assert e.value.args[0] == 1045 and "ghost" in e.value.args[1]
    assert one(my_connect(ferry), "SELECT 1") == (1,)


def tls_listener(mariadb_pair, pki, users_, **tls):
    return terminated(mariadb_pair, users_, tls=dict({"cert_file": str(pki / "server.pem"),
                                                       "key_file": str(pki / "server.key")}, **tls))


def test_tls_towards_clients(ferry_factory, mariadb_pair, pki, sha2_user):
    ferry = ferry_factory(make_config(tls_listener(mariadb_pair, pki, [sha2_user, *users()],
                                                   required=True), workers=1))
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    for user, password in ((SHA2_USER, SHA2_PASSWORD), (TEST_USER, TEST_PASSWORD)):
        conn = my_connect(ferry, user=user, password=password, ssl=ctx)
        assert conn._sock.version().startswith("TLSv1.")
        assert one(conn, "SELECT CURRENT_USER()")[0].startswith(user + "@")
        conn.close()
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry)
    assert e.value.args[0] == 3159, e.value.args
    # mysqlclient (libmariadb) over TLS too, verifying ferry's certificate
    import MySQLdb
    host, port = ferry.listener_addr("my")
    conn = MySQLdb.connect(host=host, port=port, user=TEST_USER, passwd=TEST_PASSWORD, db=TEST_DB,
                           ssl={"ca": str(pki / "ca.pem")}, connect_timeout=10)
    cur = conn.cursor()
    cur.execute("SELECT 2")
    assert cur.fetchone() == (2,)
    conn.close()


@pytest.mark.parametrize("name,send,code", [
    ("garbage response", lambda h: h.send(b"\x01\x02\x03"), 1043),
    ("wrong sequence id", lambda h: h.sock.sendall(packet(b"\x00" * 40, 5)), 1156),
    ("oversized packet", lambda h: h.sock.sendall(b"\xff\xff\xff\x01" + b"\x00" * 100), 1043),
    ("TLS not offered", lambda h: h.send(struct.pack("<IIB", 0x800 | 0x200, 1 << 24, 45) + bytes(23)),
     1043),
])
def test_hostile_handshake_gets_an_err_and_others_go_on(ferry_factory, mariadb_pair, name, send,
                                                         code):
    ferry = ferry_factory(make_config(terminated(mariadb_pair, users()), workers=1))
    h = Handshake(ferry)
    send(h)
    seq, payload = h.read()
    assert parse_err(payload)[0] == code, name
    assert h.sock.recv(1) == b""                # and the session is closed
    assert one(my_connect(ferry), "SELECT 1") == (1,)


def test_configured_server_version_greets_without_a_backend(ferry_factory, mariadb_pair):
    """auth.server_version: the very first client is greeted at once, and a
    wrong password costs no backend connection even then."""
    auth = {"mode": "terminated", "users": users(), "server_version": "8.0.36-ferry"}
    ferry = ferry_factory(make_config(my_listener(mariadb_pair, auth=auth), workers=1))
    before = server_connections(mariadb_pair.primary)
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry, password="wrong")
    assert e.value.args[0] == 1045
    assert server_connections(mariadb_pair.primary) - before == 1
    conn = my_connect(ferry)
    assert conn.get_server_info() == "8.0.36-ferry" and one(conn, "SELECT 3") == (3,)
    conn.close()


@pytest.fixture(scope="module")
def tls_mariadb():
    """A MariaDB pair serving TLS with a certificate from its own test CA."""
    with harness.MariaDBPair(tls=True) as pair:
        yield pair


def ssl_cipher(conn):
    return one(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'")[1]


@pytest.mark.parametrize("mode", ["required", "verify_ca", "verify_identity"])
def test_tls_towards_backends(ferry_factory, tls_mariadb, mode):
    backend_tls = {"mode": mode, "ca_file": tls_mariadb.tls_ca}
    ferry = ferry_factory(make_config(terminated(tls_mariadb, users(), backend_tls=backend_tls),
                                      workers=1))
    conn = my_connect(ferry)
    assert ssl_cipher(conn) != ""           # the server sees a TLS session from ferry
    conn.close()


def test_backend_tls_failures_are_clear(ferry_factory, tls_mariadb, mariadb_pair, pki):
    # a CA that signed nothing the server serves
    ferry = ferry_factory(make_config(terminated(
        tls_mariadb, users(), backend_tls={"mode": "verify_ca", "ca_file": str(pki / "other.pem")}),
        workers=1))
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry)
    assert e.value.args[0] == 1053 and "certificate verify failed" in e.value.args[1], e.value.args
    # required, and the server has no TLS
    ferry = ferry_factory(make_config(terminated(mariadb_pair, users(),
                                                 backend_tls={"mode": "required"}), workers=1))
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry)
    assert e.value.args[0] == 1053 and "does not accept TLS" in e.value.args[1], e.value.args
    # preferred goes on in plaintext
    ferry = ferry_factory(make_config(terminated(mariadb_pair, users(),
                                                 backend_tls={"mode": "preferred"}), workers=1))
    conn = my_connect(ferry)
    assert ssl_cipher(conn) == ""
    conn.close()


def test_change_user_is_checked_by_ferry(ferry_factory, mariadb_pair, sha2_user):
    """COM_CHANGE_USER in terminated mode: ferry checks the new user's answer
    (switching it to that user's plugin), the session continues as that user
    on a fresh backend login; a wrong password ends the connection with 1045."""
    import MySQLdb
    ferry = ferry_factory(make_config(terminated(mariadb_pair, [*users(), sha2_user]), workers=1))
    host, port = ferry.listener_addr("my")
    conn = MySQLdb.connect(host=host, port=port, user=TEST_USER, passwd=TEST_PASSWORD,
                           db=TEST_DB, connect_timeout=10)
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    backend_before = cur.fetchone()[0]
    # to the sha2 user (ferry switches the client to caching_sha2_password;
    # not cached yet: full authentication, which libmariadb does over RSA
    # only when allowed, so give the user a cached login first)
    my_connect(ferry, user=SHA2_USER, password=SHA2_PASSWORD).close()
    conn.change_user(SHA2_USER, SHA2_PASSWORD, "information_schema")
    cur = conn.cursor()
    cur.execute("SELECT CURRENT_USER(), DATABASE(), CONNECTION_ID()")
    user, db, backend_after = cur.fetchone()
    assert user.startswith(SHA2_USER + "@") and db == "information_schema"
    assert backend_after != backend_before
    with pytest.raises(MySQLdb.OperationalError) as e:
        conn.change_user(TEST_USER, "wrong", TEST_DB)
    assert e.value.args[0] == 1045
    with pytest.raises(MySQLdb.OperationalError):
        conn.cursor().execute("SELECT 1")       # the connection is gone, as with MySQL
    assert listener_status(ferry, "my")["auth_failures_total"] == 1
