"""MariaDB primary + GTID replica for integration tests.

The data directory is initialised once and copied for the replica (faster
than two mariadb-install-db runs). The harness administers the servers as the
socket-authenticated account of the OS user it runs as (root@localhost when
root), over the unix socket in the temp dir; tests log in over TCP as
ferry_test with a mysql_native_password password, as ferry's clients will.
"""

import os
import pwd
import shutil
import signal

import pymysql

from . import proc
from .server import Pair, Server

TEST_USER = "ferry_test"
TEST_PASSWORD = "ferry_pw"
TEST_DB = "app"
REPL_USER = "ferry_repl"
REPL_PASSWORD = "ferry_repl_pw"

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

    def __init__(self, name, basedir, *, server_id, read_only=False):
        super().__init__(name, basedir)
        self.server_id = server_id
        self.read_only = read_only    # kept so a restart keeps the current setting
        self.socket = os.path.join(basedir, f"{name}.sock")

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
                f"--read-only={int(self.read_only)}"]

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


class MariaDBPair(Pair):
    TMP_PREFIX = "ferry-mariadb-"
    PROBE_TABLE = "ferry_harness.probe"

    def _setup(self):
        self.primary = MariaDBServer("primary", self.basedir, server_id=1)
        self.replica = MariaDBServer("replica", self.basedir, server_id=2, read_only=True)
        root = ["--user=root"] if proc.is_root() else []
        proc.run(["mariadb-install-db", *COMMON_OPTIONS, *root, "--skip-test-db",
                  "--auth-root-authentication-method=socket",
                  f"--auth-root-socket-user={_os_user()}",
                  f"--datadir={self.primary.datadir}"],
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
        )]:
            self.primary.query(sql)
        self.replica.replicate_from(self.primary)
        self.wait_streaming()
        self.wait_replicated()

    def wait_streaming(self, timeout=30):
        """Waits until both replication threads of the replica run."""
        def running():
            st = self.replica.replication_status() or {}
            if st.get("Slave_IO_Running") == "Yes" and st.get("Slave_SQL_Running") == "Yes":
                return True
            # raised, not returned, so that a timeout quotes the state
            raise proc.HarnessError(
                "replication state: " + ", ".join(f"{k}={st.get(k)!r}" for k in (
                    "Slave_IO_Running", "Slave_SQL_Running", "Last_IO_Error", "Last_SQL_Error")))
        proc.wait_for(running, timeout=timeout,
                      what=f"{self.replica!r} to replicate from {self.primary!r}")
