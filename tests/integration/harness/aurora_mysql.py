"""A stand-in for an Aurora MySQL Global Database, for tests: two regions of
one MariaDB instance each (harness.MariaDBPair: the primary region's writer
and, in the secondary region, a GTID replica of it), the endpoint names of
harness/aurora.py (GlobalEndpoints: a secondary's writer endpoint does not
resolve until its cluster is promoted), and Aurora MySQL's information_schema
tables. Tests only; nothing here is product code.

Aurora MySQL publishes its topology in information_schema, which MariaDB
cannot extend. So every instance sits behind a small relay of the MySQL
protocol (RewritingRelay), which the endpoint names point at: it forwards
both directions unchanged, except that the text of a COM_QUERY is rewritten
(and its packet length fixed) where it names

    information_schema.aurora_global_db_instance_status
        -> ferry_aurora.AURORA_GLOBAL_DB_INSTANCE_STATUS
    information_schema.replica_host_status -> ferry_aurora.REPLICA_HOST_STATUS
    TABLE_SCHEMA = 'information_schema'
        -> TABLE_SCHEMA IN ('information_schema', 'ferry_aurora')
    @@aurora_server_id -> 'the instance identifier'

(case-insensitive), so a query written for Aurora, including one that looks
in information_schema.TABLES for those tables, runs unchanged against
ordinary tables in the schema ferry_aurora, which the stand-in maintains on
the writer and replication carries to the other instance. The same queries
sent straight to the MariaDB (not through the relay) find nothing: the
relay is what makes an instance look like Aurora MySQL. No TLS (the relay
parses the plaintext protocol; ferry's listener says backend_tls disabled),
no compression (ferry clears it).

Tables, with the columns AWS documents ("Aurora MySQL-specific
information_schema tables", Aurora User Guide, found with the `search` tool):

    AURORA_GLOBAL_DB_INSTANCE_STATUS: SERVER_ID, SESSION_ID (MASTER_SESSION_ID
      for the global writer, else the instance's UUID), AWS_REGION,
      DURABLE_LSN, HIGHEST_LSN_RCVD, OLDEST_READ_VIEW_TRX_ID,
      OLDEST_READ_VIEW_LSN, VISIBILITY_LAG_IN_MSEC. Only "Aurora MySQL
      version 3.04.0 and higher global databases" have it:
      global_status_table=False leaves it out (an older version, or a
      cluster outside a global database), and then only REPLICA_HOST_STATUS
      says Aurora.
    REPLICA_HOST_STATUS: SERVER_ID, SESSION_ID, REPLICA_LAG_IN_MILLISECONDS,
      LAST_UPDATE_TIMESTAMP (the other documented columns, I/O and CPU
      counters, are left out).

  Rows are written at the start and at each switchover, not kept live: the
  LSN columns hold the writer's GTID sequence number at that moment (MariaDB
  has no storage LSN an instance could share), lags are 0. Not as Aurora:
  REPLICA_HOST_STATUS lists every instance (Aurora: the local cluster's).

Operations:
    switchover(region)   the old writer turns read-only, the target applies
                         everything (GTID), is promoted, the names move
                         (GlobalEndpoints), the topology is rewritten on the
                         new writer, and the old writer replicates from it.
    failover(region, old_primary="writable")
                         the target stops replicating and accepts writes at
                         once while the old writer keeps doing so (a split
                         brain); each side's tables keep naming its own
                         writer until write_topology(on=...) says otherwise.
    write_topology(on=None)  rewrites the tables on the writer (replicated),
                         or on each instance of `on` locally (sql_log_bin=0),
                         for a test that sets what each side reports.

Use with ferry:

    hosts = harness.PrivateHosts(tmp_path)
    with AuroraGlobalMySQL(hosts) as g:
        lst = g.ferry_listener(aws=False, probe={"user": TEST_USER, "password": TEST_PASSWORD})
        Ferry(make_config(lst), tmp_path, argv_prefix=hosts.wrap()).start()
        g.switchover("eu-west-1")
"""

import re
import socket
import threading
import uuid

from . import proc
from .aurora import MASTER, GlobalEndpoints, RegionalCluster, _hash
from .hosts import next_address
from .mariadb import PROBE_USER, TEST_USER, MariaDBPair
from .ports import free_port

SCHEMA = "ferry_aurora"
COM_QUERY = 0x03
MAX_PAYLOAD = 0xFFFFFF

TABLES_SQL = {
    "AURORA_GLOBAL_DB_INSTANCE_STATUS": """(
        SERVER_ID varchar(100) NOT NULL PRIMARY KEY,
        SESSION_ID varchar(100) NOT NULL,
        AWS_REGION varchar(100) NOT NULL,
        DURABLE_LSN bigint unsigned,
        HIGHEST_LSN_RCVD bigint unsigned,
        OLDEST_READ_VIEW_TRX_ID bigint unsigned,
        OLDEST_READ_VIEW_LSN bigint unsigned,
        VISIBILITY_LAG_IN_MSEC float(10,0) unsigned)""",
    "REPLICA_HOST_STATUS": """(
        SERVER_ID varchar(100) NOT NULL PRIMARY KEY,
        SESSION_ID varchar(100) NOT NULL,
        REPLICA_LAG_IN_MILLISECONDS double,
        LAST_UPDATE_TIMESTAMP datetime(6))""",
}

_TABLE_RE = re.compile(rb"information_schema\s*\.\s*`?(aurora_global_db_instance_status|"
                       rb"replica_host_status)\b`?", re.IGNORECASE)
_SCHEMA_RE = re.compile(rb"TABLE_SCHEMA\s*=\s*'information_schema'", re.IGNORECASE)
_SERVER_ID_RE = re.compile(rb"@@(?:global\.)?aurora_server_id\b", re.IGNORECASE)


def rewrite_query(sql, instance_id):
    """The query text (bytes) as the relay of instance_id sends it on."""
    sql = _TABLE_RE.sub(lambda m: SCHEMA.encode() + b"." + m.group(1).upper(), sql)
    sql = _SCHEMA_RE.sub(f"TABLE_SCHEMA IN ('information_schema', '{SCHEMA}')".encode(), sql)
    return _SERVER_ID_RE.sub(f"'{instance_id}'".encode(), sql)


def _recv_exact(sock, n):
    data = sock.recv(n, socket.MSG_WAITALL)
    return data if len(data) == n else None


class RewritingRelay:
    """Accepts MySQL clients on (host, port) and relays each to backend,
    rewriting the text of every COM_QUERY with rewrite(bytes) -> bytes.
    Threads: one accepting, two per connection."""

    def __init__(self, host, port, backend, rewrite):
        self.host, self.port, self.backend, self.rewrite = host, port, backend, rewrite
        self.rewritten = 0          # queries changed, for tests
        self._listener = None
        self._socks = set()
        self._lock = threading.Lock()

    def start(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        self._listener = s
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.host}").start()
        return self

    def stop(self):
        if self._listener:
            self._listener.shutdown(socket.SHUT_RDWR)    # wakes accept()
            self._listener.close()
            self._listener = None
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            self._shut(s)

    def _accept(self):
        listener = self._listener
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.backend, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()  # the instance is down: refused, as it would be
                continue
            with self._lock:
                self._socks |= {client, server}
            for fn, args in ((self._requests, (client, server)), (self._copy, (server, client))):
                threading.Thread(target=fn, args=args, daemon=True).start()

    @staticmethod
    def _shut(sock):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _done(self, *socks):
        with self._lock:
            self._socks -= set(socks)
        for s in socks:
            self._shut(s)

    def _copy(self, src, dst):
        """Server to client: unchanged."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._done(src, dst)

    def _requests(self, client, server):
        """Client to server, packet by packet: a command is a packet with
        sequence id 0 (not the continuation of a 16 MiB one)."""
        continuing = False
        try:
            while (header := _recv_exact(client, 4)) is not None:
                length, seq = int.from_bytes(header[:3], "little"), header[3]
                payload = _recv_exact(client, length) if length else b""
                if payload is None:
                    break
                if seq == 0 and not continuing and payload[:1] == bytes([COM_QUERY]):
                    sql = self.rewrite(payload[1:])
                    if sql != payload[1:] and len(sql) + 1 < MAX_PAYLOAD:
                        payload = bytes([COM_QUERY]) + sql
                        header = len(payload).to_bytes(3, "little") + bytes([seq])
                        self.rewritten += 1
                continuing = length == MAX_PAYLOAD
                server.sendall(header + payload)
        except OSError:
            pass
        finally:
            self._done(client, server)


class AuroraMySQLInstance:
    """One DB instance: a MariaDBServer behind its relay, which listens on
    its own loopback address and the stand-in's port."""

    def __init__(self, instance_id, cluster, server, port):
        self.instance_id = instance_id
        self.cluster = cluster
        self.server = server
        self.host = next_address()
        self.port = port
        self.session_uuid = str(uuid.uuid4())
        self.endpoint = cluster.instance_endpoint(instance_id)
        self.relay = RewritingRelay(self.host, port, (server.host, server.port),
                                    lambda sql: rewrite_query(sql, instance_id))

    def __repr__(self):
        return f"<AuroraMySQLInstance {self.instance_id} {self.host}:{self.port}>"

    def is_running(self):
        return self.server.is_running()

    def query(self, sql, params=None):
        """Runs sql on the MariaDB itself (as the admin, not through the relay)."""
        return self.server.query(sql, params)


class AuroraGlobalMySQL(GlobalEndpoints):
    """An Aurora MySQL global database of two regions, one instance each;
    see the module docstring. Use as a context manager, or start()/stop()."""

    PROTOCOL = "mysql"
    LISTENER = "my"

    def __init__(self, hosts, *, global_id="g1", regions=("us-east-1", "eu-west-1"),
                 global_status_table=True, writer_dns_delay=0.0, demoted_writer_linger=0.0):
        self._init_names(hosts, global_id, writer_dns_delay, demoted_writer_linger)
        if len(regions) != 2:
            raise ValueError("the MySQL stand-in has two regions (a MariaDB primary and replica)")
        self.regions = list(regions)
        self.global_status_table = global_status_table
        self.generation = 0
        self.pair = None

    def _prepare(self):
        self.pair = MariaDBPair()
        self.pair.start()

    def stop(self):
        for t in self._timers:
            t.cancel()
        for inst in self.instances():
            inst.relay.stop()
        if self.pair:
            self.pair.stop()

    def _setup(self):
        self.port = free_port()
        account = _hash(self.global_id, "account")
        for region, server in zip(self.regions, (self.pair.primary, self.pair.replica)):
            c = RegionalCluster(self.global_id, region, account)
            c.instances.append(AuroraMySQLInstance(f"{c.cluster_id}-1", c, server, self.port))
            self.clusters.append(c)
        self.primary = self.clusters[0]
        self.writer = self.primary.instances[0]
        w = self.writer.server
        w.query(f"CREATE DATABASE {SCHEMA}")
        for table, columns in TABLES_SQL.items():
            if table != "AURORA_GLOBAL_DB_INSTANCE_STATUS" or self.global_status_table:
                w.query(f"CREATE TABLE {SCHEMA}.{table} {columns}")
        w.query("CREATE TABLE ferry_harness.aurora_generation (id int PRIMARY KEY, n int)")
        for user in (TEST_USER, PROBE_USER):
            for host in ("%", "localhost"):
                w.query(f"GRANT SELECT ON {SCHEMA}.* TO '{user}'@'{host}'")
        self.write_topology()
        for inst in self.instances():
            inst.relay.start()
        self._point_all()
        self.wait_converged()
        self._event("started")

    # ---- topology --------------------------------------------------------

    def _topology_sql(self, on):
        """The statements that make on's tables show the current topology."""
        lsn = int(on.server.gtid_binlog_pos().split("-")[-1] or 0)
        stmts = [(f"DELETE FROM {SCHEMA}.REPLICA_HOST_STATUS", None)]
        if self.global_status_table:
            stmts.append((f"DELETE FROM {SCHEMA}.AURORA_GLOBAL_DB_INSTANCE_STATUS", None))
        for c in self.clusters:
            for i in c.instances:
                session = MASTER if i is self.writer else i.session_uuid
                stmts.append((f"INSERT INTO {SCHEMA}.REPLICA_HOST_STATUS "
                              "VALUES (%s, %s, 0, NOW(6))", (i.instance_id, session)))
                if self.global_status_table:
                    stmts.append((f"INSERT INTO {SCHEMA}.AURORA_GLOBAL_DB_INSTANCE_STATUS "
                                  "VALUES (%s, %s, %s, %s, %s, 0, %s, 0)",
                                  (i.instance_id, session, c.region, lsn,
                                   None if i is self.writer else lsn, lsn)))
        stmts.append(("REPLACE INTO ferry_harness.aurora_generation VALUES (1, %s)",
                      (self.generation,)))
        return stmts

    def write_topology(self, on=None):
        """Rewrites the tables on the writer, which replicates them; or, with
        on (instances), on each of those alone, not replicated."""
        self.generation += 1
        for inst in on or [self.writer]:
            conn = inst.server.admin_connect()
            try:
                with conn.cursor() as cur:
                    if on:
                        cur.execute("SET SESSION sql_log_bin = 0")
                    cur.execute("START TRANSACTION")
                    for sql, params in self._topology_sql(inst):
                        cur.execute(sql, params)
                    cur.execute("COMMIT")
            finally:
                conn.close()
        self._event(f"topology generation {self.generation} (writer {self.writer.instance_id})"
                    + (f" on {[i.instance_id for i in on]}" if on else ""))

    def wait_converged(self, timeout=30):
        """Waits until every running instance shows the current generation."""
        for inst in self.instances():
            if inst.is_running():
                proc.wait_for(lambda inst=inst: inst.query(
                    "SELECT n FROM ferry_harness.aurora_generation")[0][0] == self.generation,
                    timeout=timeout, what=f"{inst!r} to show topology generation {self.generation}")

    # ---- operations ------------------------------------------------------

    def switchover(self, target_region, timeout=30):
        """Planned switchover to target_region's instance; returns it."""
        old = self.writer
        old_cluster, target = old.cluster, self.cluster(target_region)
        if target is old_cluster:
            raise ValueError(f"{target_region} is already the primary region")
        new = target.instances[0]
        self.pair.demote(old.server)
        self._event(f"{old.instance_id} read-only")
        self.pair.catch_up(new.server, old.server, timeout=timeout)
        new.server.promote()
        self.writer, self.primary = new, target
        self._event(f"{new.instance_id} promoted")
        self._move_writer_names(old_cluster, new)
        self.write_topology()
        self.pair.rejoin(old.server, new.server, timeout=timeout)
        self._point_readers()
        self.wait_converged(timeout)
        return new

    def failover(self, target_region, old_primary="writable"):
        """The target is promoted at once and the old writer keeps accepting
        writes (only "writable" is modelled). Returns the new writer."""
        if old_primary != "writable":
            raise ValueError("the MySQL stand-in models old_primary='writable' only")
        old = self.writer
        old_cluster, target = old.cluster, self.cluster(target_region)
        new = target.instances[0]
        new.server.promote()
        self.writer, self.primary = new, target
        self._event(f"{new.instance_id} promoted (failover, old primary writable)")
        self._move_writer_names(old_cluster, new)
        self.write_topology(on=[new])
        self._point_readers()
        return new

