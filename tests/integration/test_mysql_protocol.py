"""The MySQL listener is protocol-aware: ferry follows every packet in both
directions, gives clients its own connection ids (KILL is translated),
maps prepared-statement ids, tracks transactions and schema, answers
hostile input with an ERR packet, reacts to read-only errors, and fences
sessions from an old writer. Real clients (PyMySQL, mysqlclient, the mariadb
CLI, a MariaDB Connector/C program) against real MariaDB servers."""

import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time

import pymysql
import pytest

import harness
from fronts import listener_status, my_connect, my_listener
from harness import make_config
from harness.mariadb import TEST_DB, TEST_PASSWORD, TEST_USER
from harness.proc import wait_for
from test_discovery import FAST, discovery_of, my_discovered, writer_of
from test_ops import ctl, metric, parse_metrics, post

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(params=["passthrough", "terminated"])
def ferry(request, ferry_factory, mariadb_pair):
    """The listener in both authentication modes: the relay after the
    handshake is the same code, the handshake is not."""
    options = {}
    if request.param == "terminated":
        options["auth"] = {"mode": "terminated",
                           "users": [{"name": TEST_USER, "password": TEST_PASSWORD}]}
    ferry = ferry_factory(make_config(my_listener(mariadb_pair, **options), workers=2))
    ferry.auth_mode = request.param
    return ferry


def mysqldb_connect(ferry, **kw):
    import MySQLdb  # python3-mysqldb (mysqlclient)
    host, port = ferry.listener_addr("my")
    return MySQLdb.connect(host=host, port=port, user=TEST_USER, passwd=TEST_PASSWORD,
                           db=TEST_DB, connect_timeout=10, **kw)


def my_metrics(ferry):
    m = parse_metrics(ferry.http_get("/metrics")[1])
    return (metric(m, "ferry_queries_total", listener="my"),
            metric(m, "ferry_transactions_total", listener="my"))


# --------------------------------------------------------------------------
# a raw client, for what libraries cannot send

CAPS = (0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | 0x20000 | 0x80000)  # LONG_PASSWORD, WITH_DB,
# PROTOCOL_41, TRANSACTIONS, SECURE_CONNECTION, MULTI_RESULTS, PLUGIN_AUTH


def native_password(password, scramble):
    h1 = hashlib.sha1(password.encode()).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(scramble + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3))


def packet(payload, seq):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


def parse_err(payload):
    assert payload[0] == 0xFF, payload
    code = struct.unpack("<H", payload[1:3])[0]
    assert payload[3:4] == b"#"
    return code, payload[4:9].decode(), payload[9:].decode()


class RawMy:
    """A MySQL client over a plain socket, one packet at a time."""

    def __init__(self, ferry, name="my"):
        self.sock = socket.create_connection(ferry.listener_addr(name), timeout=20)
        self.buf = b""
        self.greeting = None

    def close(self):
        self.sock.close()

    def _fill(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError(f"connection closed with {len(self.buf)} bytes buffered")
            self.buf += data

    def read(self):
        """(sequence id, payload) of the next packet."""
        self._fill(4)
        n = int.from_bytes(self.buf[:3], "little")
        self._fill(4 + n)
        seq, payload = self.buf[3], self.buf[4:4 + n]
        self.buf = self.buf[4 + n:]
        return seq, payload

    def read_until_eof(self):
        """Every packet until the connection closes."""
        out = []
        while True:
            try:
                out.append(self.read())
            except (EOFError, ConnectionResetError):
                return out

    def send(self, payload, seq=0):
        self.sock.sendall(packet(payload, seq))

    def login(self, user=TEST_USER, password=TEST_PASSWORD, db=TEST_DB, client_caps=CAPS):
        seq, g = self.read()
        assert seq == 0 and g[0] == 10, g
        end = g.index(b"\0", 1)
        conn_id = struct.unpack("<I", g[end + 1:end + 5])[0]
        part1 = g[end + 5:end + 13]
        caps = struct.unpack("<H", g[end + 14:end + 16])[0] | \
            struct.unpack("<H", g[end + 19:end + 21])[0] << 16
        rest = g[end + 32:]
        scramble = part1 + rest[:12]
        self.greeting = {"conn_id": conn_id, "caps": caps}
        body = (struct.pack("<IIB23x", client_caps, 1 << 24, 33) + user.encode() + b"\0" +
                bytes([20]) + native_password(password, scramble) + db.encode() + b"\0" +
                b"mysql_native_password\0")
        self.send(body, 1)
        seq, p = self.read()
        if p[0] == 0xFE:    # auth switch
            plugin_end = p.index(b"\0", 1)
            data = p[plugin_end + 1:].rstrip(b"\0")
            self.send(native_password(password, data[:20]), seq + 1)
            seq, p = self.read()
        assert p[0] == 0, p
        return self

    def query(self, sql):
        """Sends COM_QUERY; returns the response packets up to the end of
        the (last) result."""
        self.send(b"\x03" + sql.encode())
        return self.response()

    def response(self):
        out = []
        seq, p = self.read()
        out.append((seq, p))
        if p[0] in (0x00, 0xFF):
            return out
        eofs = 0
        while eofs < 2:     # definitions EOF, rows EOF (no DEPRECATE_EOF)
            seq, p = self.read()
            out.append((seq, p))
            if p[0] == 0xFE and len(p) < 9:
                eofs += 1
            elif p[0] == 0xFF:
                break
        return out


# --------------------------------------------------------------------------
# clients

def test_pymysql_multi_statements_and_results(ferry, mariadb_pair):
    conn = my_connect(ferry, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1; SELECT 2, 3; SELECT @@port")
            assert cur.fetchall() == ((1,),)
            assert cur.nextset() and cur.fetchall() == ((2, 3),)
            assert cur.nextset() and cur.fetchall() == ((mariadb_pair.primary.port,),)
            assert not cur.nextset()
            cur.execute("DROP PROCEDURE IF EXISTS two_results")
            cur.execute("CREATE PROCEDURE two_results() BEGIN SELECT 'a'; SELECT 'b', 'c'; END")
            cur.execute("CALL two_results()")
            assert cur.fetchall() == (("a",),)
            assert cur.nextset() and cur.fetchall() == (("b", "c"),)
            cur.execute("SELECT 42")            # the session is back in step
            assert cur.fetchall() == ((42,),)
            with pytest.raises(pymysql.err.ProgrammingError):
                cur.execute("SELECT * FROM no_such_table")
            cur.execute("SELECT 43")
            assert cur.fetchall() == ((43,),)
    finally:
        conn.close()


def test_mysqldb(ferry, mariadb_pair):
    conn = mysqldb_connect(ferry)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS t_mysqldb (id int primary key, v text)")
        cur.execute("REPLACE INTO t_mysqldb VALUES (1, %s)", ("mysqlclient",))
        conn.commit()
        cur.execute("SELECT v, @@port FROM t_mysqldb WHERE id = 1")
        assert cur.fetchone() == ("mysqlclient", mariadb_pair.primary.port)
        cur.execute("SELECT seq FROM seq_1_to_5000")
        assert len(cur.fetchall()) == 5000
        conn.select_db("information_schema")           # COM_INIT_DB
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("information_schema",)
        conn.ping()                                     # COM_PING
    finally:
        conn.close()
    assert mariadb_pair.primary.query("SELECT v FROM app.t_mysqldb") == [("mysqlclient",)]


def test_mariadb_cli_use_set_names_and_local_infile(ferry, mariadb_pair, tmp_path):
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{i}\tname {i}\n" for i in range(1, 1001)))
    host, port = ferry.listener_addr("my")
    script = (f"USE {TEST_DB}; SET NAMES utf8mb4; "
              "DROP TABLE IF EXISTS t_infile; CREATE TABLE t_infile (id int, v text); "
              f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE t_infile; "
              "SELECT COUNT(*), SUM(id), @@character_set_client, DATABASE() FROM t_infile;")
    out = subprocess.run(
        ["mariadb", "--no-defaults", "-h", host, "-P", str(port), "-u", TEST_USER,
         f"-p{TEST_PASSWORD}", "--protocol=TCP", "--local-infile=1", "-N", "-B",
         "information_schema", "-e", script],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1000", "500500", "utf8mb4", TEST_DB]


def test_pymysql_load_data_local_infile(ferry, tmp_path):
    data = tmp_path / "big.csv"
    data.write_text("".join(f"{i},{'x' * 100}\n" for i in range(20000)))   # ~2 MB
    conn = my_connect(ferry, local_infile=True)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE t_load (id int, v text)")
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE t_load "
                        "FIELDS TERMINATED BY ','")
            cur.execute("SELECT COUNT(*), SUM(id) FROM t_load")
            assert cur.fetchone() == (20000, sum(range(20000)))
    finally:
        conn.close()


def test_twenty_megabyte_blob_round_trip(ferry):
    blob = os.urandom(20 * 1024 * 1024)
    conn = my_connect(ferry, max_allowed_packet=64 * 1024 * 1024)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE t_blob (b longblob)")
            cur.execute("INSERT INTO t_blob VALUES (%s)", (blob,))   # > 16 MB: split packets
            cur.execute("SELECT b, LENGTH(b) FROM t_blob")
            got, length = cur.fetchone()
            assert length == len(blob)
            assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
            cur.execute("SELECT 1")                                  # still in step
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_prepared_statements_change_user_and_reset_connection(ferry, tmp_path):
    exe = tmp_path / "mysql_stmt_client"
    cflags = subprocess.run(["pkg-config", "--cflags", "--libs", "libmariadb"],
                            capture_output=True, text=True, check=True).stdout.split()
    subprocess.run(["gcc", "-o", str(exe), os.path.join(HERE, "mysql_stmt_client.c"), *cflags],
                   check=True, timeout=120)
    host, port = ferry.listener_addr("my")
    res = subprocess.run([str(exe), host, str(port), TEST_USER, TEST_PASSWORD, TEST_DB],
                         capture_output=True, text=True, timeout=60)
    lines = res.stdout.splitlines()
    ferry_id = int(lines[0].split(": ")[1])
    backend_id = int(lines[1].split(": ")[1])
    assert ferry_id != backend_id           # the client sees ferry's connection id
    common = ["params: 2", "row: 2 v1", "row: 4 v2", "row: 6 v3",
              "long data: 300000", "reset: ok",
              "cursor: 10 rows, sum 55",
              "row: 42 vafter close",
              "before reset: 7", "after reset: NULL"]
    # terminated mode too: ferry checks the new user's answer to its own
    # scramble, then logs in anew as that user
    assert res.returncode == 0, res.stdout + res.stderr
    assert lines[2:] == common + ["after change_user: information_schema",
                                  "row: 100 vchanged", "done"]


def test_sessions_show_user_database_and_transaction(ferry):
    conn = mysqldb_connect(ferry)
    try:
        def entry():
            doc = json.loads(ferry.http_get("/v1/sessions")[1])
            assert len(doc["sessions"]) == 1
            return doc["sessions"][0]
        e = entry()
        assert (e["user"], e["database"], e["transaction"]) == (TEST_USER, TEST_DB, "idle")
        assert e["connection_id"] == conn.thread_id()
        cur = conn.cursor()
        cur.execute("BEGIN")
        cur.execute("SELECT 1")
        assert entry()["transaction"] == "in_transaction"
        conn.commit()
        assert entry()["transaction"] == "idle"
        conn.select_db("information_schema")
        assert entry()["database"] == "information_schema"
        cur.execute("USE app")                          # COM_QUERY: seen through session tracking
        assert entry()["database"] == TEST_DB
    finally:
        conn.close()


def test_queries_and_transactions_are_counted(ferry):
    conn = my_connect(ferry)
    try:
        q0, t0 = my_metrics(ferry)
        with conn.cursor() as cur:
            for i in range(3):
                cur.execute("SELECT %s", (i,))
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
            cur.execute("COMMIT")
            cur.execute("START TRANSACTION")
            cur.execute("ROLLBACK")
        q1, t1 = my_metrics(ferry)
        assert q1 - q0 == 8
        assert t1 - t0 == 2
    finally:
        conn.close()


def test_kill_query_through_ferry(ferry):
    victim = my_connect(ferry)
    killer = my_connect(ferry)
    result = {}

    def sleep():
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(30)")
                result["rows"] = cur.fetchall()
        except pymysql.err.MySQLError as e:
            result["error"] = e.args[0]

    t = threading.Thread(target=sleep)
    t.start()
    try:
        def sleeping():
            with killer.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                            "WHERE INFO = 'SELECT SLEEP(30)'")
                return cur.fetchone()[0] == 1
        wait_for(sleeping, timeout=10, what="the SLEEP to run")
        with killer.cursor() as cur:
            cur.execute(f"KILL QUERY {victim.thread_id()}")   # ferry's id for the victim
        t.join(20)
        assert not t.is_alive()
        # MariaDB ends the killed SLEEP early with 1 (or "query interrupted")
        assert result in ({"rows": ((1,),)}, {"error": 1317}), result
        with victim.cursor() as cur:         # the victim's connection survives KILL QUERY
            cur.execute("SELECT 5")
            assert cur.fetchone() == (5,)
        assert "event=kill.translated" in ferry.log_text()
    finally:
        t.join(30)
        victim.close()
        killer.close()


def test_kill_of_unknown_ids_and_untranslatable_forms(ferry):
    conn = my_connect(ferry)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            backend_id = cur.fetchone()[0]
            with pytest.raises(pymysql.err.MySQLError) as err:
                cur.execute(f"KILL {backend_id}")      # a backend id is not a ferry id
            assert err.value.args[0] == 1094
            assert err.value.args[1] == f"ferry: Unknown thread id: {backend_id}"
            with pytest.raises(pymysql.err.MySQLError) as err:
                cur.execute("KILL USER ferry_test")
            assert err.value.args[0] == 1235 and err.value.args[1].startswith("ferry: ")
            cur.execute("SELECT 6")                    # the session goes on
            assert cur.fetchone() == (6,)
        raw = RawMy(ferry).login()
        raw.send(b"\x0c" + struct.pack("<I", 12345))   # COM_PROCESS_KILL, unknown
        seq, p = raw.read()
        assert seq == 1 and parse_err(p)[:2] == (1094, "HY000")
        raw.close()
    finally:
        conn.close()


def test_connection_ids_are_unique(ferry):
    conns = [my_connect(ferry) for _ in range(20)]
    try:
        ids = {c.thread_id() for c in conns}
        assert len(ids) == 20
    finally:
        for c in conns:
            c.close()


def test_commands_split_into_single_bytes(ferry):
    """Every command arrives one byte per read: ferry keeps the pieces of a
    packet it must look at until it is whole (statement ids, KILL)."""
    raw = RawMy(ferry).login()
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def trickle(payload, seq=0):
        for b in packet(payload, seq):
            raw.sock.send(bytes([b]))
            time.sleep(0.002)

    trickle(b"\x16SELECT ? + 40")                       # COM_STMT_PREPARE
    seq, ok = raw.read()
    assert ok[0] == 0 and len(ok) >= 12, ok
    stmt_id, ncols, nparams = struct.unpack("<IHH", ok[1:9])
    assert (ncols, nparams) == (1, 1)
    for _ in range(4):                                  # param def, EOF, column def, EOF
        raw.read()
    execute = (b"\x17" + struct.pack("<IBI", stmt_id, 0, 1) + b"\x00\x01" +
               b"\x08\x00" + struct.pack("<q", 2))
    trickle(execute)                                    # COM_STMT_EXECUTE, id rewritten
    packets = [raw.read() for _ in range(5)]           # count, def, EOF, row, EOF
    assert packets[3][1][0] == 0 and packets[4][1][0] == 0xFE
    assert b"42" in packets[3][1] or struct.pack("<q", 42) in packets[3][1]
    trickle(b"\x19" + struct.pack("<I", stmt_id))      # COM_STMT_CLOSE: no answer
    trickle(execute)
    seq, p = raw.read()
    assert seq == 1 and parse_err(p)[0] == 1243         # unknown statement now
    other = RawMy(ferry).login()
    trickle(b"\x03KILL QUERY " + str(other.greeting["conn_id"]).encode())
    seq, p = raw.read()
    assert p[0] == 0, p                                 # translated: the server accepted it
    rows = raw.query("SELECT 1")
    assert rows[3][1] == b"\x011"
    raw.close()
    other.close()


# --------------------------------------------------------------------------
# hostile input: that session gets an ERR and closes, the others go on

@pytest.fixture
def small_ferry(ferry_factory, mariadb_pair):
    return ferry_factory(make_config(my_listener(mariadb_pair, max_message_size=65536),
                                     workers=2))


def _bystander_works(ferry):
    assert harness.mariadb.run_query(my_connect(ferry), "SELECT 9") == [(9,)]


def test_garbage_instead_of_a_handshake_response(small_ferry):
    bystander = my_connect(small_ferry)
    raw = RawMy(small_ferry)
    seq, g = raw.read()
    assert seq == 0 and g[0] == 10
    raw.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    packets = raw.read_until_eof()
    assert len(packets) == 1
    seq, p = packets[0]
    code, state, msg = parse_err(p)
    assert seq == 2 and (code, state) == (1043, "08S01") and msg.startswith("ferry: ")
    with bystander.cursor() as cur:
        cur.execute("SELECT 8")
        assert cur.fetchone() == (8,)
    bystander.close()


TLS_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(64)) * 4   # not MySQL at all


@pytest.mark.parametrize("name, data, code, state", [
    ("length over max_message_size",
     struct.pack("<I", 1_000_000)[:3] + b"\x00" + b"\x03SELECT " + b"1" * 100, 1153, "08S01"),
    ("wrong sequence id", packet(b"\x03SELECT 1", 3), 1156, "08S01"),
    ("empty command", packet(b"", 0), 1835, "HY000"),
    ("pipelined commands", packet(b"\x0e", 0) * 100000, 1156, "08S01"),
    ("garbage", TLS_HELLO, 1153, "08S01"),
    ("long unsupported command", packet(b"\x12" + b"\x00" * 5000, 0), 1047, "08S01"),
], ids=["too long", "wrong sequence id", "empty command", "pipelined", "garbage",
        "long unsupported command"])
def test_hostile_commands_end_only_that_session(small_ferry, name, data, code, state):
    bystander = my_connect(small_ferry)
    raw = RawMy(small_ferry).login()
    rss = small_ferry.rss_kib()
    try:
        raw.sock.sendall(data)
    except OSError:
        pass    # ferry may hang up before it has read everything
    packets = raw.read_until_eof()
    assert len(packets) == 1, (name, packets)
    seq, p = packets[0]
    got_code, got_state, msg = parse_err(p)
    assert msg.startswith("ferry: "), msg
    assert seq == 1 and (got_code, got_state) == (code, state), (name, packets)
    assert small_ferry.rss_kib() - rss < 32 * 1024
    raw.close()
    with bystander.cursor() as cur:
        cur.execute("SELECT 8")
        assert cur.fetchone() == (8,)
    bystander.close()
    _bystander_works(small_ferry)


def test_truncated_packet_then_half_close(small_ferry):
    raw = RawMy(small_ferry).login()
    raw.sock.sendall(struct.pack("<I", 100)[:3] + b"\x00" + b"\x03SELECT")  # 7 of 100 bytes
    raw.sock.shutdown(socket.SHUT_WR)
    packets = raw.read_until_eof()
    assert len(packets) == 1
    code, state, msg = parse_err(packets[0][1])
    assert (code, state) == (1835, "HY000") and "truncated" in msg
    _bystander_works(small_ferry)


def test_unsupported_command_is_refused_and_the_session_goes_on(ferry):
    raw = RawMy(ferry).login()
    raw.send(b"\x12" + b"\x00" * 10)        # COM_BINLOG_DUMP
    seq, p = raw.read()
    assert seq == 1 and parse_err(p)[:2] == (1047, "08S01")
    rows = raw.query("SELECT 77")
    assert rows[-1][1][0] == 0xFE and any(p == b"\x0277" for _, p in rows)
    raw.close()


def test_tls_request_is_refused(ferry):
    raw = RawMy(ferry)
    seq, g = raw.read()
    raw.send(struct.pack("<IIB23x", CAPS | 0x800, 1 << 24, 33), 1)    # SSLRequest
    packets = raw.read_until_eof()
    assert [s for s, _ in packets] == [2]
    code, _, msg = parse_err(packets[0][1])
    assert code == 1043 and "TLS" in msg


def test_greeting_clears_capabilities_ferry_cannot_relay(ferry):
    raw = RawMy(ferry).login()
    caps = raw.greeting["caps"]
    assert not caps & 0x20                  # CLIENT_COMPRESS
    assert not caps & 0x800                 # CLIENT_SSL
    assert not caps & (1 << 26)             # CLIENT_ZSTD_COMPRESSION
    assert caps & 0x1                       # "CLIENT_MYSQL": no MariaDB extensions
    assert caps & (1 << 23)                 # CLIENT_SESSION_TRACK is kept
    rows = raw.query("SELECT CONNECTION_ID()")
    backend = int(rows[3][1][1:])
    assert backend != raw.greeting["conn_id"]
    raw.close()


# --------------------------------------------------------------------------
# pause, read-only errors, fencing on a writer move

def test_pause_holds_an_idle_sessions_next_command(ferry_factory, mariadb_pair):
    ferry = ferry_factory(make_config(my_listener(mariadb_pair), workers=1))
    idle = my_connect(ferry)
    busy = my_connect(ferry)
    with busy.cursor() as cur:
        cur.execute("CREATE TEMPORARY TABLE t (v int)")
        cur.execute("BEGIN")
        cur.execute("INSERT INTO t VALUES (1)")
    assert post(ferry, "/v1/pause")[0] == 200
    result = {}

    def idle_query():
        with idle.cursor() as cur:
            cur.execute("SELECT 42")
            result["rows"] = cur.fetchall()

    t = threading.Thread(target=idle_query)
    t.start()
    wait_for(lambda: listener_status(ferry, "my")["clients_held"] == 1, timeout=10,
             what="the idle session's command to be held")
    with busy.cursor() as cur:      # the open transaction runs to its end
        cur.execute("INSERT INTO t VALUES (2)")
        cur.execute("COMMIT")
    time.sleep(0.3)
    assert t.is_alive() and "rows" not in result
    assert post(ferry, "/v1/resume")[0] == 200
    t.join(20)
    assert result == {"rows": ((42,),)}
    assert listener_status(ferry, "my")["clients_held"] == 0
    idle.close()
    busy.close()


def test_paused_session_gives_up_with_the_right_sequence_id(ferry_factory, mariadb_pair):
    ferry = ferry_factory(make_config(my_listener(mariadb_pair), workers=1,
                                      discovery={"hold_timeout": 0.5}))
    raw = RawMy(ferry).login()
    assert post(ferry, "/v1/pause")[0] == 200
    try:
        raw.send(b"\x03SELECT 1")
        packets = raw.read_until_eof()
    finally:
        assert post(ferry, "/v1/resume")[0] == 200
    assert [s for s, _ in packets] == [1]
    code, state, msg = parse_err(packets[0][1])
    assert (code, state) == (1053, "08S01")
    assert msg == "ferry: listener my is paused by the operator; gave up after 0.5s"


def start_discovered(ferry_factory, pair, monkeypatch, **discovery):
    monkeypatch.setenv("FERRY_TEST_PROBE_PW", TEST_PASSWORD)
    ferry = ferry_factory(make_config(my_discovered(pair), workers=2,
                                      discovery=dict(FAST, **discovery)))
    wait_for(lambda: writer_of(ferry, "my") == "region-a", timeout=10, what="region-a as writer")
    return ferry


def switch_to_b(ferry, pair):
    """Planned switchover with the old writer still writable (split brain,
    the harshest case for fencing)."""
    pair.replica.promote()
    host, port = ferry.admin_addr()
    res = ctl("switchover", "region-b", "--admin", f"http://{host}:{port}", "--timeout", "20")
    assert res.returncode == 0, res.stderr


def make_marks(pair):
    pair.primary.query("CREATE TABLE app.marks (note text)")
    wait_for(lambda: pair.replica.query("SELECT COUNT(*) FROM information_schema.TABLES "
                                        "WHERE TABLE_NAME = 'marks'") == [(1,)],
             timeout=10, what="the table on the replica")


def test_idle_session_is_fenced_and_nothing_reaches_the_old_writer(
        ferry_factory, own_mariadb, monkeypatch):
    ferry = start_discovered(ferry_factory, own_mariadb, monkeypatch)
    make_marks(own_mariadb)
    idle = my_connect(ferry)
    with idle.cursor() as cur:
        cur.execute("SELECT 1")
    switch_to_b(ferry, own_mariadb)
    wait_for(lambda: "event=session.writer_moved" in ferry.log_text(), timeout=10,
             what="the idle session to be fenced")
    with pytest.raises(pymysql.err.MySQLError) as err:
        with idle.cursor() as cur:
            cur.execute("INSERT INTO marks VALUES ('stale write')")
    assert err.value.args[0] == 1053
    assert err.value.args[1] == ("ferry: the writer of listener my moved away from region-a; "
                                 "reconnect to reach the new writer")
    # the old writer is still writable, yet never saw the statement
    assert own_mariadb.primary.query("SELECT COUNT(*) FROM app.marks") == [(0,)]
    fresh = my_connect(ferry)
    with fresh.cursor() as cur:
        cur.execute("SELECT @@port")
        assert cur.fetchone() == (own_mariadb.replica.port,)
    fresh.close()


def test_transaction_gets_a_retryable_error_until_rollback(ferry_factory, own_mariadb,
                                                           monkeypatch):
    ferry = start_discovered(ferry_factory, own_mariadb, monkeypatch)
    make_marks(own_mariadb)
    conn = my_connect(ferry)
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute("INSERT INTO marks VALUES ('in the open transaction')")
    switch_to_b(ferry, own_mariadb)
    wait_for(lambda: "event=session.writer_moved" in ferry.log_text(), timeout=10,
             what="the busy session to be marked")
    for sql in ("INSERT INTO marks VALUES ('after the switch')", "COMMIT", "SELECT 1"):
        with pytest.raises(pymysql.err.MySQLError) as err:
            cur.execute(sql)
        assert err.value.args[0] == 1213, sql
        assert "transaction was rolled back; retry it" in err.value.args[1]
    conn.rollback()                         # answered by ferry with OK
    with pytest.raises(pymysql.err.MySQLError) as err:
        cur.execute("SELECT 1")             # then the session ends
    assert err.value.args[0] == 1053
    conn.close()
    retry = my_connect(ferry)
    with retry.cursor() as rc:
        rc.execute("INSERT INTO marks VALUES ('retried')")
        rc.execute("SELECT @@port")
        assert rc.fetchone() == (own_mariadb.replica.port,)
    retry.close()
    assert own_mariadb.primary.query("SELECT COUNT(*) FROM app.marks") == [(0,)]
    assert own_mariadb.replica.query("SELECT note FROM app.marks") == [("retried",)]


def test_read_only_error_triggers_a_probe_round(ferry_factory, own_mariadb, monkeypatch):
    ferry = start_discovered(ferry_factory, own_mariadb, monkeypatch, probe_interval=60)
    make_marks(own_mariadb)
    conn = my_connect(ferry)
    own_mariadb.primary.set_read_only(True)
    with pytest.raises(pymysql.err.MySQLError) as err:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO marks VALUES ('read-only')")
    assert err.value.args[0] == 1290
    wait_for(lambda: writer_of(ferry, "my") is None, timeout=15,
             what="the demoted writer to be dropped long before the next round")
    assert "event=session.read_only_error" in ferry.log_text()
    states = {c["name"]: c["state"] for c in discovery_of(ferry, "my")["clusters"]}
    assert states["region-a"] == "read-only"
    conn.close()


def test_statement_in_flight_when_the_writer_dies_is_outcome_unknown(
        ferry_factory, own_mariadb, monkeypatch):
    ferry = start_discovered(ferry_factory, own_mariadb, monkeypatch)
    raw = RawMy(ferry).login()
    raw.send(b"\x03SELECT SLEEP(20)")
    wait_for(lambda: own_mariadb.primary.query(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(20)'")
        == [(1,)], timeout=10, what="the statement to run")
    own_mariadb.primary.stop(mode="immediate")
    # no ERR: the connection ends, which clients report as their own 2013
    # (CR_SERVER_LOST), MySQL's "outcome unknown"
    assert raw.read_until_eof() == []
    assert "its outcome is unknown" in ferry.log_text()


def test_sysbench_oltp_read_write(ferry, tmp_path):
    """sysbench's oltp_read_write (prepared statements, transactions,
    multi-row results) through ferry, in both authentication modes."""
    host, port = ferry.listener_addr("my")
    common = ["--db-driver=mysql", f"--mysql-host={host}", f"--mysql-port={port}",
              f"--mysql-user={TEST_USER}", f"--mysql-password={TEST_PASSWORD}",
              f"--mysql-db={TEST_DB}", "--tables=1", "--table-size=1000", "--threads=1"]
    # one thread: with two, the server's own deadlocks (which sysbench
    # ignores and counts) would make "no errors" a matter of luck
    for step in (["cleanup"], ["prepare"], ["--time=3", "--report-interval=0", "run"],
                 ["cleanup"]):
        res = subprocess.run(["sysbench", "oltp_read_write", *common, *step], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (step, res.stdout[-2000:], res.stderr[-2000:])
        if step[-1] == "run":
            txns = int(re.search(r"transactions:\s+(\d+)", res.stdout).group(1))
            errors = int(re.search(r"ignored errors:\s+(\d+)", res.stdout).group(1))
            assert txns > 0 and errors == 0, res.stdout[-2000:]
