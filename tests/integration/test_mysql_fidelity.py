"""Binary-protocol responses ferry must follow exactly as the server sends
them (issue 24): a prepared CALL of a procedure that declares a cursor, and
a prepared LOAD DATA LOCAL INFILE. Each runs over a raw socket through ferry
and direct to the same MariaDB; the responses must be the same bytes and the
session must go on."""

import struct

from test_mysql_protocol import CAPS, RawMy, ferry  # noqa: F401

LOCAL_FILES = 0x80
CURSOR_TYPE_READ_ONLY = 0x01


class Direct:
    """Stands in for a ferry: RawMy connects to the server itself."""

    def __init__(self, server):
        self.server = server

    def listener_addr(self, name):
        return (self.server.host, self.server.port)


class Raw(RawMy):
    def prepare(self, sql):
        """COM_STMT_PREPARE; returns the statement id."""
        self.send(b"\x16" + sql.encode())
        seq, p = self.read()
        assert p[0] == 0, p
        stmt_id, columns, params = struct.unpack("<IHH", p[1:9])
        for n in (params, columns):
            if n:
                for _ in range(n + 1):      # definitions and their EOF
                    self.read()
        return stmt_id

    def execute(self, stmt_id, flags=0):
        self.send(b"\x17" + struct.pack("<IBI", stmt_id, flags, 1))

    def results(self):
        """Every packet up to the end of the last result set (no
        DEPRECATE_EOF): a list of (seq, payload)."""
        out = []
        while True:
            seq, p = self.read()
            out.append((seq, p))
            if p[0] == 0xFF:
                return out
            if p[0] == 0x00:
                status = struct.unpack("<H", p[3:5])[0] if len(p) >= 5 else 0
                if not status & 0x08:
                    return out
                continue
            eofs = 0
            while eofs < 2:
                seq, p = self.read()
                out.append((seq, p))
                if p[0] == 0xFF:
                    return out
                if p[0] == 0xFE and len(p) < 9:
                    eofs += 1
            if not struct.unpack("<H", p[3:5])[0] & 0x08:
                return out


def rows_text(packets):
    return b"".join(p for _, p in packets)


def check_in_step(c):
    out = c.query("SELECT 42")
    assert out[-2][1] == b"\x0242", out


def cursor_call(conn):
    c = conn.login()
    c.query("DROP PROCEDURE IF EXISTS p_cursor")
    c.query("CREATE PROCEDURE p_cursor() BEGIN DECLARE c CURSOR FOR SELECT 1; OPEN c; "
            "SELECT 'b', 10; END")
    sid = c.prepare("CALL p_cursor()")
    c.execute(sid)
    out = c.results()
    check_in_step(c)
    # the server sends the rows even when the client asked for a cursor
    c.execute(sid, CURSOR_TYPE_READ_ONLY)
    again = c.results()
    check_in_step(c)
    c.close()
    return out, again


def test_prepared_call_of_a_procedure_that_declares_a_cursor(ferry, mariadb_pair):
    direct, direct_again = cursor_call(Raw(Direct(mariadb_pair.primary)))
    assert direct_again == direct
    # MariaDB 10.11 sets CURSOR_EXISTS (with MORE_RESULTS) on the
    # definitions' EOF, then sends the row
    statuses = [struct.unpack("<H", p[3:5])[0] for _, p in direct if p[0] == 0xFE]
    assert statuses[0] & 0x40, direct
    assert any(b"\x01b" in p for _, p in direct), direct
    through, again = cursor_call(Raw(ferry))
    assert through == direct
    assert again == direct


def test_a_cursor_the_client_asks_for_still_waits_for_fetch(ferry):
    c = Raw(ferry).login()
    sid = c.prepare("SELECT seq FROM seq_1_to_3")
    c.execute(sid, CURSOR_TYPE_READ_ONLY)
    out = []
    while True:     # count, definition, EOF with CURSOR_EXISTS: no rows now
        seq, p = c.read()
        out.append(p)
        if p[0] == 0xFE:
            break
    assert struct.unpack("<H", out[-1][3:5])[0] & 0x40
    c.send(b"\x1c" + struct.pack("<II", sid, 10))       # COM_STMT_FETCH
    rows = []
    while True:
        seq, p = c.read()
        if p[0] == 0xFE:
            break
        rows.append(p)
    assert len(rows) == 3
    check_in_step(c)
    c.close()


def load_local(conn, caps):
    c = conn.login(client_caps=caps)
    c.query("DROP TABLE IF EXISTS t_ps_infile")
    c.query("CREATE TABLE t_ps_infile (id int, v text)")
    sid = c.prepare("LOAD DATA LOCAL INFILE 'ps.tsv' INTO TABLE t_ps_infile")
    c.execute(sid)
    seq, p = c.read()
    out = [(seq, p)]
    if p[0] == 0xFB:                        # the server asks for the file
        assert p[1:] == b"ps.tsv"
        c.send(b"1\tone\n2\ttwo\n", seq + 1)
        c.send(b"", seq + 2)
        out.append(c.read())
    return c, out


def test_prepared_load_data_local_infile(ferry, mariadb_pair):
    c, direct = load_local(Raw(Direct(mariadb_pair.primary)), CAPS | LOCAL_FILES)
    c.close()
    assert direct[0][1][0] == 0xFB and direct[-1][1][0] == 0x00, direct
    c, through = load_local(Raw(ferry), CAPS | LOCAL_FILES)
    assert through == direct
    out = c.query("SELECT COUNT(*), SUM(id) FROM t_ps_infile")
    assert [p for _, p in out if p[:1] == b"\x01" or p[:1] == b"\x03"][-1] == b"\x012\x013"
    check_in_step(c)
    c.close()
