"""MariaDB primary + GTID replica for integration tests.

The data directory is initialised once and copied for the replica (faster
than two mariadb-install-db runs). The harness administers the servers as the
socket-authenticated account of the OS user it runs as (root@localhost when
root), over the unix socket in the temp dir; tests log in over TCP as
ferry_test with a mysql_native_password password, as ferry's clients will.
ferry_probe is a second login with no privileges for ferry's discovery
probes, so that a server's general log tells probes and clients apart.

Options of the pair: tls=True starts both servers with a certificate from
a test CA (pair.tls_ca is its path, pair.pki the directory of harness/pki.py's
files); semi_sync=True makes every commit acknowledged to a client wait until
a connected replica has the transaction, so that a writer killed at any
moment loses nothing it acknowledged (a failover drill can then demand that
every acknowledged write is on the new writer).

Role changes for failover drills (the servers keep their names, `primary` and
`replica`; which one is the writer is the test's business): switchover(old,
new) is a planned switchover that ends with old replicating from new, so it
can be repeated in the other direction; crash(old, new) kills old and
promotes new once it has applied everything it received.
"""

import os
import pwd
import shutil
import signal

import pymysql

from . import pki, proc
from .server import Pair, Server

TEST_USER = "ferry_test"
TEST_PASSWORD = "ferry_pw"
TEST_DB = "app"
REPL_USER = "ferry_repl"
REPL_PASSWORD = "ferry_repl_pw"
PROBE_USER = "ferry_probe"
PROBE_PASSWORD = "ferry_probe_pw"

# Small and unsafe-but-fast: these servers hold throwaway test data.
COMMON_OPTIONS = [
    "--no-defaults",  # must come first; the machine's my.cnf stays out
    "--skip-name-resolve",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=16M",
    "--innodb-flush-log-at-trx-commit=2",
    "--innodb-doublewrite=0",
    "--innodb-use-native-aio=0",
    "--sync-binlog=0",
    "--performance-schema=0",
    "--max-connect-errors=1000000",   # health probes must never get 127.0.0.1 blocked
    "--max-connections=1500",         # the relay tests hold 1000 sessions at once
    "--max-allowed-packet=64M",       # a 20 MB blob round trip through ferry
]

# Semi-synchronous replication on both servers, whichever is the writer: a
# client's commit returns once a replica acknowledged it (AFTER_SYNC: before
# other sessions can see it). With no semi-sync replica connected (a writer
# promoted after a crash) commits do not wait at all (wait_no_slave=0); a
# replica that stops acknowledging turns waits off after the timeout.
SEMI_SYNC_OPTIONS = [
    "--rpl-semi-sync-master-enabled=1",
    "--rpl-semi-sync-slave-enabled=1",
    "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    "--rpl-semi-sync-master-wait-no-slave=0",
    "--rpl-semi-sync-master-timeout=10000",
]


def _os_user():
    return pwd.getpwuid(os.geteuid()).pw_name


def connect(host, port, user=TEST_USER, password=TEST_PASSWORD, database=TEST_DB, **kw):
    """PyMySQL connection over TCP, autocommit, every step time-bounded."""
    return pymysql.connect(host=host, port=port, user=user, password=password,
                           database=database, autocommit=True, connect_timeout=5,
                           read_timeout=30, write_timeout=30, **kw)


def run_query(conn, sql, params=None):
    """Runs one statement on conn, closes it, returns the rows as a list."""
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


class MariaDBServer(Server):
    STOP_MODES = {"fast": signal.SIGTERM, "immediate": signal.SIGKILL}

    def __init__(self, name, basedir, *, server_id, read_only=False, tls=None, options=()):
        """tls: (ca, cert, key) file paths to serve TLS with, None: no TLS;
        options: further mariadbd options."""
        super().__init__(name, basedir)
        self.server_id = server_id
        self.read_only = read_only    # kept so a restart keeps the current setting
        self.socket = os.path.join(basedir, f"{name}.sock")
        self.tls = tls
        self.options = list(options)

    def argv(self):
        root = ["--user=root"] if proc.is_root() else []
        return ["mariadbd", *COMMON_OPTIONS, *root,
                f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--pid-file={os.path.join(self.basedir, self.name + '.pid')}",
                f"--tmpdir={self.basedir}",
                f"--port={self.port}", f"--bind-address={self.host}",
                f"--server-id={self.server_id}",
                "--log-bin=binlog", "--relay-log=relay", "--binlog-format=ROW",
                "--log-slave-updates=1", "--gtid-strict-mode=1",
                f"--read-only={int(self.read_only)}", *self._tls_options(), *self.options]

    def _tls_options(self):
        if not self.tls:
            return []
        ca, cert, key = self.tls
        return [f"--ssl-ca={ca}", f"--ssl-cert={cert}", f"--ssl-key={key}"]

    def admin_connect(self, **kw):
        """Connection as the socket-authenticated admin account."""
        return pymysql.connect(unix_socket=self.socket, user=_os_user(), autocommit=True,
                               connect_timeout=5, read_timeout=30, write_timeout=30, **kw)

    def connect(self, user=TEST_USER, password=TEST_PASSWORD, database=TEST_DB, **kw):
        """Connection over TCP as a client would make it (ferry_test by default)."""
        return connect(self.host, self.port, user, password, database, **kw)

    def query(self, sql, params=None):
        """Runs sql as the admin over the unix socket; returns the rows."""
        return run_query(self.admin_connect(), sql, params)

    def ready(self):
        try:
            return self.query("SELECT 1") == [(1,)]
        except pymysql.err.OperationalError as e:
            if e.args[0] in (1045, 1698):  # access denied: setup is wrong, not slow
                raise proc.GiveUp(f"{self!r}: {e}") from e
            raise

    def replication_status(self):
        """SHOW SLAVE STATUS as a dict, None when not a replica."""
        rows = run_query(self.admin_connect(cursorclass=pymysql.cursors.DictCursor),
                         "SHOW SLAVE STATUS")
        return rows[0] if rows else None

    def set_read_only(self, on):
        self.query(f"SET GLOBAL read_only = {1 if on else 0}")
        self.read_only = bool(on)

    def replicate_from(self, primary):
        """Makes this server a GTID replica of primary and starts replication."""
        self.query(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
            "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            (primary.host, primary.port, REPL_USER, REPL_PASSWORD))
        self.query("START SLAVE")

    def promote(self):
        """Stops replicating for good and accepts writes."""
        self.query("STOP SLAVE")
        self.query("RESET SLAVE ALL")
        self.set_read_only(False)

    # -- GTID positions, for switchovers
    def gtid_binlog_pos(self):
        """The GTID position of the last transaction in this server's binlog."""
        return self.query("SELECT @@global.gtid_binlog_pos")[0][0]

    def wait_gtid(self, pos, timeout=30):
        """Waits until this replica has applied everything up to pos."""
        got = self.query("SELECT MASTER_GTID_WAIT(%s, %s)", (pos, timeout))[0][0]
        if got != 0:
            raise proc.HarnessError(f"{self!r} did not reach GTID position {pos!r} within "
                                    f"{timeout}s: {self.replication_status()}")

    def wait_relay_applied(self, timeout=30):
        """Waits until the SQL thread has applied every transaction the IO
        thread received (Gtid_IO_Pos), as before promoting a replica whose
        primary died."""
        st = self.replication_status()
        if st is None:
            raise proc.HarnessError(f"{self!r} is not a replica")
        if st.get("Gtid_IO_Pos"):
            self.wait_gtid(st["Gtid_IO_Pos"], timeout)

    def follow(self, primary):
        """Turns this server (a former writer, or a replica of another
        server) into a read-only GTID replica of primary, continuing from
        what its own binlog holds."""
        self.set_read_only(True)
        self.query("STOP SLAVE")
        self.query("RESET SLAVE ALL")
        self.query("SET GLOBAL gtid_slave_pos = @@global.gtid_binlog_pos")
        self.replicate_from(primary)

    def semi_sync_status(self):
        """(Rpl_semi_sync_master_status == ON, number of semi-sync replicas)."""
        st = dict(self.query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'"))
        return st.get("Rpl_semi_sync_master_status") == "ON", \
            int(st.get("Rpl_semi_sync_master_clients", 0))


class MariaDBPair(Pair):
    TMP_PREFIX = "ferry-mariadb-"
    PROBE_TABLE = "ferry_harness.probe"

    def __init__(self, *, tls=False, semi_sync=False, tls_names=()):
        """tls: both servers serve TLS with a certificate from a test CA
        (for localhost, 127.0.0.1 and tls_names); semi_sync: semi-synchronous
        replication (see SEMI_SYNC_OPTIONS)."""
        super().__init__()
        self.tls = tls
        self.tls_names = tuple(tls_names)
        self.semi_sync = semi_sync
        self.pki = None     # directory of harness/pki.py's files when tls

    @property
    def tls_ca(self):
        """Path of the CA certificate that signed the servers' certificates."""
        return str(self.pki / "ca.pem") if self.pki else None

    def _setup(self):
        tls = None
        if self.tls:
            self.pki = pki.make_pki(os.path.join(self.basedir, "pki"), names=self.tls_names)
            tls = tuple(str(self.pki / name) for name in ("ca.pem", "server.pem", "server.key"))
        options = SEMI_SYNC_OPTIONS if self.semi_sync else []
        self.primary = MariaDBServer("primary", self.basedir, server_id=1, tls=tls,
                                     options=options)
        self.replica = MariaDBServer("replica", self.basedir, server_id=2, read_only=True,
                                     tls=tls, options=options)
        root = ["--user=root"] if proc.is_root() else []
        proc.run(["mariadb-install-db", *COMMON_OPTIONS, *root, "--skip-test-db",
                  "--auth-root-authentication-method=socket",
                  f"--auth-root-socket-user={_os_user()}",
                  f"--datadir={self.primary.datadir}",
                  f"--tmpdir={self.basedir}"],   # not /tmp, which others may sweep
                 env=proc.clean_env(), timeout=120, what="mariadb-install-db")
        shutil.copytree(self.primary.datadir, self.replica.datadir, symlinks=True)

        self.primary.start()
        self.replica.start()
        # Everything below is written to the primary's binlog, and the replica,
        # starting from an empty gtid_slave_pos, replays all of it: both end up
        # with the same users and databases, as after a real failover.
        for sql in [
            f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'",
            f"CREATE DATABASE {TEST_DB}",
            "CREATE DATABASE ferry_harness",
        ] + [stmt for host in ("%", "localhost") for stmt in (
            f"CREATE USER '{TEST_USER}'@'{host}' IDENTIFIED VIA mysql_native_password "
            f"USING PASSWORD('{TEST_PASSWORD}')",
            f"GRANT ALL ON {TEST_DB}.* TO '{TEST_USER}'@'{host}'",
            f"CREATE USER '{PROBE_USER}'@'{host}' IDENTIFIED VIA mysql_native_password "
            f"USING PASSWORD('{PROBE_PASSWORD}')",
        )]:
            self.primary.query(sql)
        self.replica.replicate_from(self.primary)
        self.wait_streaming()
        self.wait_replicated()
        if self.semi_sync:
            self.wait_semi_sync(self.primary)

    def wait_streaming(self, timeout=30, replica=None, primary=None):
        """Waits until both replication threads of replica (self.replica by
        default) run."""
        replica = replica or self.replica
        primary = primary or self.primary

        def running():
            st = replica.replication_status() or {}
            if st.get("Slave_IO_Running") == "Yes" and st.get("Slave_SQL_Running") == "Yes":
                return True
            # raised, not returned, so that a timeout quotes the state
            raise proc.HarnessError(
                "replication state: " + ", ".join(f"{k}={st.get(k)!r}" for k in (
                    "Slave_IO_Running", "Slave_SQL_Running", "Last_IO_Error", "Last_SQL_Error")))
        proc.wait_for(running, timeout=timeout,
                      what=f"{replica!r} to replicate from {primary!r}")

    def wait_semi_sync(self, writer, timeout=30):
        """Waits until writer's commits wait for a replica's acknowledgement."""
        proc.wait_for(lambda: writer.semi_sync_status() >= (True, 1), timeout=timeout,
                      what=f"{writer!r} to replicate semi-synchronously")

    # -- role changes
    def switchover(self, old=None, new=None, *, timeout=30):
        """Planned switchover from old (the writer, self.primary by default)
        to new (its replica, self.replica by default): old turns read-only,
        new applies everything old wrote (GTID), new is promoted, and old
        becomes new's replica. Calling it again with the roles swapped
        switches back. Returns (new, old)."""
        old = old or self.primary
        new = new or self.replica
        self.demote(old)
        self.catch_up(new, old, timeout=timeout)
        new.promote()
        self.rejoin(old, new, timeout=timeout)
        return new, old

    def demote(self, old):
        """First step of a planned switchover: the writer turns read-only
        (clients without SUPER get 1290 for writes and commits from now on)."""
        old.set_read_only(True)

    def catch_up(self, new, old, *, timeout=30):
        """Waits until new has applied everything in old's binlog."""
        new.wait_gtid(old.gtid_binlog_pos(), timeout=timeout)

    def rejoin(self, old, new, *, timeout=30):
        """Makes old (a former writer, running) a replica of new, streaming."""
        old.follow(new)
        self.wait_streaming(timeout=timeout, replica=old, primary=new)
        if self.semi_sync:
            self.wait_semi_sync(new, timeout=timeout)

    def crash(self, old=None, new=None, *, promote=True, timeout=30):
        """Unplanned failover: old (the writer, self.primary by default) is
        killed with SIGKILL, then new (self.replica by default) is promoted
        as by promote_after_crash(), unless promote=False leaves that to the
        test (to watch ferry without a writer first). old stays down: it
        may hold transactions new never received. Returns new."""
        old = old or self.primary
        new = new or self.replica
        old.stop(mode="immediate")
        if promote:
            self.promote_after_crash(new, timeout=timeout)
        return new

    def promote_after_crash(self, new, *, timeout=30):
        """Promotes the replica new once it has applied everything it had
        received from its dead primary."""
        new.wait_relay_applied(timeout=timeout)
        new.promote()
