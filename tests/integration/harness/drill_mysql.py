"""A failover drill's client side for MySQL/MariaDB (drill.py has the
PostgreSQL one): the load an application puts on a ferry mysql listener
while the writer moves, and what it saw.

MyLoad runs, all through one ferry listener, as ferry_test:
- writers: BEGIN; INSERT of a unique id; COMMIT in a loop, recording every
  acknowledged id with its time and every error by class; after an error a
  writer sends ROLLBACK (its outcome ignored), drops the connection and
  reconnects, as a pool would;
- idle sessions: connections that set time_zone and switch to a second
  schema (USE drill), then are left alone and used once by stop(), which
  records each one's outcome: "ok" (both settings still there), "lost
  settings", or the error class;
- prepared sessions: server-side prepared statements over the binary
  protocol (COM_STMT_PREPARE / COM_STMT_EXECUTE, which neither PyMySQL nor
  mysqlclient sends: BinaryStatement sends them on a PyMySQL connection),
  with their own time_zone, executed every few milliseconds, every result
  checked;
- transaction sessions: BEGIN and an INSERT (of a negative id, never
  acknowledged) left open; stop() then sends INSERT, COMMIT, ROLLBACK,
  SELECT 1 on each and records every step's outcome.

Errors are classified by MySQL error number as a string: ferry's own
("1053" writer moved, "1213" transaction lost, "2013" outcome unknown,
"2003" writer unreachable) and the server's alike; PyMySQL also reports a
connection that ended under it as 2013 (client side: "Lost connection")
or 2006 ("gone away"); other exceptions by their type name.

check_writes() compares the acknowledged ids with what the new and the old
writer hold; log_statements() and statements_after() read a server's general
log to see what ferry's clients sent it after a given moment.
"""

import datetime
import re
import struct
import time
from dataclasses import dataclass, field

import pymysql
from pymysql.protocol import FieldDescriptorPacket

from . import mariadb
from .drill import DrillResult, Load
from .proc import HarnessError

TABLE = "drill_acks"
SCHEMA = "drill"                    # the idle sessions' USE
IDLE_TIME_ZONE = "+03:00"
PREPARED_TIME_ZONE = "+05:30"
TXN_STEPS = ("INSERT", "COMMIT", "ROLLBACK", "SELECT")


def create_tables(writer, user=mariadb.TEST_USER):
    """The drill's table (who wrote each row: writer thread and server_id)
    and the idle sessions' second schema, created on writer as admin."""
    writer.query(f"CREATE TABLE IF NOT EXISTS {mariadb.TEST_DB}.{TABLE} (id BIGINT PRIMARY KEY, "
                 "writer INT, server_id INT, "
                 "at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")
    writer.query(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
    for host in ("%", "localhost"):
        writer.query(f"GRANT ALL ON {SCHEMA}.* TO '{user}'@'{host}'")


def error_class(e):
    args = getattr(e, "args", ())
    if isinstance(e, pymysql.err.MySQLError) and args and isinstance(args[0], int) and args[0]:
        return str(args[0])
    return type(e).__name__


# --------------------------------------------------------------------------
# the binary protocol's prepared statements on a PyMySQL connection

COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE = 0x16, 0x17, 0x19
T_LONG, T_LONGLONG, T_VAR_STRING = 0x03, 0x08, 0xFD
# VARCHAR, JSON, NEWDECIMAL, BLOB, VAR_STRING, STRING: length-encoded in binary rows
STRING_TYPES = {0x0F, 0xF5, 0xF6, 0xFC, 0xFD, 0xFE}


def _lenenc_int(n):
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)


def _read_lenenc_int(data, pos):
    first = data[pos]
    if first < 251:
        return first, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}[first]
    return int.from_bytes(data[pos + 1:pos + 1 + size], "little"), pos + 1 + size


class BinaryStatement:
    """One server-side prepared statement on a PyMySQL connection, spoken
    with COM_STMT_PREPARE / COM_STMT_EXECUTE (PyMySQL's packet reader does
    the framing and raises the server's, or ferry's, ERR packets as
    MySQLError with the error number). Parameters: int or str; result
    columns: strings and integers."""

    def __init__(self, conn, sql):
        self.conn = conn
        conn._execute_command(COM_STMT_PREPARE, sql)
        data = conn._read_packet().get_all_data()
        if data[0] != 0:
            raise pymysql.err.InternalError(f"unexpected PREPARE response {data[:16]!r}")
        self.id, ncolumns, self.nparams = struct.unpack_from("<IHH", data, 1)
        for n in (self.nparams, ncolumns):   # definitions, each list ended by an EOF
            if n:
                for _ in range(n):
                    conn._read_packet()
                self._expect_eof()

    def _expect_eof(self):
        pkt = self.conn._read_packet()
        if not pkt.is_eof_packet():
            raise pymysql.err.InternalError(f"expected EOF, got {pkt.get_all_data()[:16]!r}")

    def execute(self, *params):
        """Runs the statement; returns its rows as a list of tuples."""
        if len(params) != self.nparams:
            raise ValueError(f"{self.nparams} parameters needed, {len(params)} given")
        body = struct.pack("<IBI", self.id, 0, 1)       # no cursor, one iteration
        if params:
            types, values = b"", b""
            for p in params:
                if isinstance(p, int):
                    types += bytes([T_LONGLONG, 0])
                    values += struct.pack("<q", p)
                else:
                    raw = str(p).encode()
                    types += bytes([T_VAR_STRING, 0])
                    values += _lenenc_int(len(raw)) + raw
            body += bytes((len(params) + 7) // 8) + b"\x01" + types + values
        self.conn._execute_command(COM_STMT_EXECUTE, body)
        first = self.conn._read_packet()
        if first.is_ok_packet():
            return []
        ncolumns = first.read_length_encoded_integer()
        coltypes = [self.conn._read_packet(FieldDescriptorPacket).type_code
                    for _ in range(ncolumns)]
        self._expect_eof()
        rows = []
        while True:
            pkt = self.conn._read_packet()
            if pkt.is_eof_packet():
                return rows
            rows.append(self._row(pkt.get_all_data(), coltypes))

    @staticmethod
    def _row(data, coltypes):
        nulls = data[1:1 + (len(coltypes) + 9) // 8]
        pos = 1 + len(nulls)
        row = []
        for i, t in enumerate(coltypes):
            if nulls[(i + 2) // 8] & (1 << ((i + 2) % 8)):
                row.append(None)
            elif t in STRING_TYPES:
                n, pos = _read_lenenc_int(data, pos)
                row.append(data[pos:pos + n].decode())
                pos += n
            elif t == T_LONGLONG:
                row.append(struct.unpack_from("<q", data, pos)[0])
                pos += 8
            elif t == T_LONG:
                row.append(struct.unpack_from("<i", data, pos)[0])
                pos += 4
            else:
                raise pymysql.err.InternalError(f"column type {t} not decoded by the drill")
        return tuple(row)

    def close(self):
        """COM_STMT_CLOSE (no response)."""
        self.conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", self.id))


# --------------------------------------------------------------------------
# the load

@dataclass
class MyDrillResult(DrillResult):
    idle_outcomes: list = field(default_factory=list)   # per idle session: "ok" / error class
    txn_outcomes: list = field(default_factory=list)    # per transaction session: one per TXN_STEPS


def _discard(conn):
    """What a pool does with a connection that failed: ROLLBACK, close."""
    if conn is None:
        return
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - it is being replaced either way
        pass
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass


class MyLoad(Load):
    def __init__(self, host, port, writers=3, idle=4, prepared=2, transactions=2):
        super().__init__(MyDrillResult())
        self.host, self.port = host, port
        self.nwriters, self.nidle, self.nprepared, self.ntxn = writers, idle, prepared, transactions
        self.idle = []
        self.txn = []

    def classify(self, e):
        return error_class(e)

    def connect(self, **kw):
        """A connection through ferry as ferry_test to the app schema,
        autocommit, every step time-bounded (ferry may hold a new client
        for up to hold_timeout while there is no writer)."""
        return mariadb.connect(self.host, self.port, **kw)

    def _writer(self, n):
        conn = None
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = self.connect()
                i = self._take_id()
                with conn.cursor() as cur:
                    cur.execute("BEGIN")
                    cur.execute(f"INSERT INTO {TABLE} (id, writer, server_id) "
                                "VALUES (%s, %s, @@server_id)", (i, n))
                    cur.execute("COMMIT")
                self._acked(i)
            except Exception as e:  # noqa: BLE001 - classified and counted
                self._error("writer", e)
                _discard(conn)
                conn = None
                time.sleep(0.01)
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def _prepared(self, n):
        conn, k = None, 0
        sql = "SELECT CONCAT(?, '|', @@session.time_zone, '|', ?)"
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = self.connect()
                    with conn.cursor() as cur:
                        cur.execute(f"SET time_zone = '{PREPARED_TIME_ZONE}'")
                    stmt = BinaryStatement(conn, sql)
                k += 1
                rows = stmt.execute(f"prepared-{n}", k)
                if rows != [(f"prepared-{n}|{PREPARED_TIME_ZONE}|{k}",)]:
                    raise AssertionError(f"prepared session {n} got {rows}")
                with self.lock:
                    self.result.prepared_runs += 1
            except Exception as e:  # noqa: BLE001 - classified and counted
                self._error("prepared", e)
                _discard(conn)
                conn = None
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def start(self):
        for _ in range(self.nidle):
            conn = self.connect()
            with conn.cursor() as cur:
                cur.execute(f"SET time_zone = '{IDLE_TIME_ZONE}'")
                cur.execute(f"USE {SCHEMA}")
            self.idle.append(conn)
        for n in range(self.ntxn):
            conn = self.connect()
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute(f"INSERT INTO {TABLE} (id, writer, server_id) "
                            "VALUES (%s, -1, @@server_id)", (-1 - n,))
            self.txn.append(conn)
        return self._start_threads()

    def stop(self):
        """Stops the threads, then uses every idle and transaction session
        once; returns the MyDrillResult."""
        self._join()
        for conn in self.idle:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT @@session.time_zone, DATABASE()")
                    row = cur.fetchone()
                if row != (IDLE_TIME_ZONE, SCHEMA):
                    raise AssertionError(f"idle session lost its settings: {row}")
                self.result.idle_checked += 1
                self.result.idle_outcomes.append("ok")
            except AssertionError as e:
                self._error("idle", e)
                self.result.idle_outcomes.append("lost settings")
            except Exception as e:  # noqa: BLE001 - classified
                self._error("idle", e)
                self.result.idle_outcomes.append(self.classify(e))
            finally:
                conn.close()
        for n, conn in enumerate(self.txn):
            outcomes = []
            for step, sql in zip(TXN_STEPS, (
                    f"INSERT INTO {TABLE} (id, writer, server_id) "
                    f"VALUES ({-100 - n}, -1, @@server_id)", "COMMIT", "ROLLBACK", "SELECT 1")):
                try:
                    with conn.cursor() as cur:
                        cur.execute(sql)
                    outcomes.append("ok")
                except Exception as e:  # noqa: BLE001 - classified
                    outcomes.append(self.classify(e))
                    with self.lock:
                        self.result.error_log.append((time.time(), "transaction", outcomes[-1],
                                                      f"{step}: {str(e).strip()[:300]}"))
            self.result.txn_outcomes.append(outcomes)
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
        return self.result


# --------------------------------------------------------------------------
# what the servers hold and saw

def _utc(iso_time):
    """ferry's "2026-01-02T03:04:05.678Z" as MariaDB's DATETIME(6) text."""
    at = datetime.datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    return at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _utc_query(server, sql, params=None):
    """server.query() with TIMESTAMP values read and compared in UTC."""
    return mariadb.run_query(server.admin_connect(init_command="SET time_zone = '+00:00'"),
                             sql, params)


def check_writes(result, new_writer, old_writer, switch_time):
    """(acknowledged ids missing on the new writer, rows the old writer
    itself wrote after switch_time, an ISO timestamp; 0 when it is down)."""
    have = {r[0] for r in new_writer.query(f"SELECT id FROM {mariadb.TEST_DB}.{TABLE}")}
    lost = sorted(set(result.acked) - have)
    stale = 0
    if old_writer.is_running():
        stale = _utc_query(old_writer, f"SELECT COUNT(*) FROM {mariadb.TEST_DB}.{TABLE} "
                           "WHERE server_id = %s AND at > %s",
                           (old_writer.server_id, _utc(switch_time)))[0][0]
    return lost, stale


def log_statements(server):
    """Turns on server's general log, into the mysql.general_log table:
    unlike the log file (one timestamp per second) the table has every
    command's time in microseconds, which statements_after() compares with
    the moment ferry switched."""
    server.query("SET GLOBAL log_output = 'TABLE'")
    server.query("SET GLOBAL general_log = 1")


_SET_TIME_ZONE = re.compile(r"\s*SET\s+(?:SESSION\s+|LOCAL\s+|@@(?:SESSION\.|LOCAL\.)?)?"
                            r"time_zone\s*=\s*'([^']*)'\s*;?\s*", re.IGNORECASE)


def _zone_offset(value):
    if value.upper() == "SYSTEM":
        return datetime.timedelta(0)        # the harness runs servers with TZ=UTC
    m = re.fullmatch(r"([+-])(\d{1,2}):(\d\d)", value)
    if not m:
        raise HarnessError(f"statements_after() cannot place commands of a session with "
                           f"time_zone {value!r} in time: use an offset like '+03:00'")
    delta = datetime.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return delta if m.group(1) == "+" else -delta


def statements_after(server, iso_time, user=mariadb.TEST_USER):
    """What user's connections sent server after iso_time (ferry's
    "2026-01-02T03:04:05.678Z"), from its general log: one line per
    command, connects included. Give ferry's probes another login
    (mariadb.PROBE_USER) so that this is only what ferry's clients sent.

    MariaDB writes a command's event_time into the log table in the time
    zone of the session that sent it, so rows are read in the order they
    were logged and each session's SET time_zone (to an offset) is
    followed to bring its times back to UTC."""
    since = datetime.datetime.fromisoformat(_utc(iso_time))
    rows = _utc_query(server, "SELECT event_time, thread_id, command_type, argument "
                      "FROM mysql.general_log WHERE user_host LIKE %s",
                      (f"%[{user}] @%",))    # no ORDER BY: the CSV table's order is the log's
    zone, found = {}, []
    for at, thread, command, arg in rows:
        if isinstance(arg, bytes):
            arg = arg.decode("utf-8", "replace")
        if command == "Connect":
            zone[thread] = datetime.timedelta(0)
        at_utc = at - zone.get(thread, datetime.timedelta(0))
        if at_utc > since:
            found.append(f"{at_utc.isoformat(' ')} [{thread}] {command}: {arg}")
        m = _SET_TIME_ZONE.fullmatch(arg) if command == "Query" else None
        if m:
            zone[thread] = _zone_offset(m.group(1))     # from its next command on
    return found
