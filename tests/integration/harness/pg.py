"""PostgreSQL 15 primary + streaming replica for integration tests.

Authentication is set up so tests can tell ferry passes it through untouched:
the role ferry_test must log in over TCP with a scram-sha-256 password,
every other role (the harness's own `postgres`) is trusted on 127.0.0.1.
PostgreSQL refuses to run as root, so as root every server-side program runs
as the `postgres` system user.
"""

import contextlib
import os
import pwd
import shutil
import signal
import tempfile

import psycopg2

from . import proc
from .server import Pair, Server

PG_BIN = os.environ.get("FERRY_PG_BIN", "/usr/lib/postgresql/15/bin")
ADMIN_USER = "postgres"
TEST_USER = "ferry_test"
TEST_PASSWORD = "ferry_pw"
TEST_DB = "app"

# Settings both servers share; the replica gets them through pg_basebackup.
# Per-server ones (port, sockets, name) are passed on the command line.
POSTGRESQL_CONF = """
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
hot_standby = on
wal_retrieve_retry_interval = '200ms'   # replica reconnects fast after a primary restart
password_encryption = 'scram-sha-256'
wal_log_hints = on                      # pg_rewind can turn an old primary into a standby
fsync = off
shared_buffers = 32MB
log_connections = on
log_line_prefix = '%m [%p] %q%u@%d '
"""

# First match wins: ferry_test must prove its password, the rest is trusted.
PG_HBA_CONF = f"""
local all         all                       trust
host  all         {TEST_USER}  127.0.0.1/32  scram-sha-256
host  all         {TEST_USER}  ::1/128       scram-sha-256
host  all         all          127.0.0.1/32  trust
host  all         all          ::1/128       trust
host  replication all          127.0.0.1/32  trust
"""


def pg_bin(name):
    return os.path.join(PG_BIN, name)


def dsn(host, port, user=TEST_USER, dbname=TEST_DB, password=None):
    """A libpq keyword DSN. ferry_test's password is filled in by default, so
    the same call works against a server and against ferry in front of it."""
    if password is None and user == TEST_USER:
        password = TEST_PASSWORD
    parts = [f"host={host}", f"port={port}", f"user={user}", f"dbname={dbname}",
             "connect_timeout=5"]
    if password is not None:
        parts.append(f"password={password}")
    return " ".join(parts)


def connect(dsn_string, statement_timeout_ms=30000):
    """psycopg2 connection in autocommit mode with bounded connect and
    statement times, so a hung server fails a test instead of hanging it."""
    conn = psycopg2.connect(dsn_string, options=f"-c statement_timeout={statement_timeout_ms}")
    conn.autocommit = True
    return conn


def run_query(dsn_string, sql, params=None):
    """Runs one statement on a fresh connection; returns its rows ([] if none)."""
    conn = connect(dsn_string)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


class PgServer(Server):
    """One postgres process; stop modes are pg_ctl's, sent as its signals."""

    STOP_MODES = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
    DEATH_SIGNAL = signal.SIGQUIT

    def argv(self):
        return [pg_bin("postgres"), "-D", self.datadir, "-p", str(self.port),
                "-c", f"listen_addresses={self.host}",
                "-c", f"unix_socket_directories={self.basedir}",
                "-c", f"cluster_name={self.name}"]

    def dsn(self, user=TEST_USER, dbname=TEST_DB, password=None):
        return dsn(self.host, self.port, user=user, dbname=dbname, password=password)

    def query(self, sql, params=None, *, user=ADMIN_USER, dbname="postgres", password=None):
        """Runs sql as the (trusted) superuser unless told otherwise."""
        return run_query(self.dsn(user=user, dbname=dbname, password=password), sql, params)

    def ready(self):
        return self.query("SELECT 1") == [(1,)]

    def in_recovery(self):
        return self.query("SELECT pg_is_in_recovery()")[0][0]

    def pg_ctl(self, *args, timeout=60):
        return proc.run([pg_bin("pg_ctl"), "-D", self.datadir, *args], user=self.run_as,
                        timeout=timeout, what=f"pg_ctl {args[0]} on {self!r}")

    def promote(self, timeout=30):
        """Ends recovery (pg_ctl promote) and waits until writes are accepted."""
        self.pg_ctl("promote", "-W")
        proc.wait_for(lambda: not self.in_recovery(), timeout=timeout,
                      what=f"{self!r} to leave recovery after promote")


class PgPair(Pair):
    TMP_PREFIX = "ferry-pg-"
    RUN_AS = "postgres" if proc.is_root() else None
    PROBE_TABLE = "ferry_harness_probe"

    def __init__(self, settings=None):
        """settings: extra postgresql.conf entries for both servers, e.g.
        {"max_connections": 2100}; they override the defaults above."""
        super().__init__()
        self.settings = dict(settings or {})

    def _setup(self):
        self.primary = PgServer("primary", self.basedir, run_as=self.RUN_AS)
        self._init_primary()
        self.primary.start()
        self.primary.query(f"CREATE ROLE {TEST_USER} LOGIN PASSWORD '{TEST_PASSWORD}'")
        self.primary.query(f"CREATE DATABASE {TEST_DB} OWNER {TEST_USER}")

        self.replica = PgServer("replica", self.basedir, run_as=self.RUN_AS)
        proc.run([pg_bin("pg_basebackup"), "-h", self.primary.host, "-p", str(self.primary.port),
                  "-U", ADMIN_USER, "-D", self.replica.datadir, "-R", "-X", "stream",
                  "--checkpoint=fast", "--no-sync"],
                 user=self.RUN_AS, timeout=120, what="pg_basebackup")
        self.replica.start()
        self.wait_streaming()
        self.wait_replicated()

    def _init_primary(self):
        p = self.primary
        proc.run([pg_bin("initdb"), "-D", p.datadir, "-U", ADMIN_USER, "--auth=trust",
                  "--locale=C", "--encoding=UTF8", "--no-sync"],
                 user=self.RUN_AS, timeout=120, what="initdb")
        # Written by us (maybe as root) into files postgres owns: append and
        # overwrite keep the owner and mode initdb gave them.
        with open(os.path.join(p.datadir, "postgresql.conf"), "a") as f:
            f.write(POSTGRESQL_CONF)
            f.writelines(f"{key} = '{value}'\n" for key, value in self.settings.items())
        with open(os.path.join(p.datadir, "pg_hba.conf"), "w") as f:
            f.write(PG_HBA_CONF)

    def follow(self, old, new, timeout=60):
        """Turns old (a former primary, running or not) into a streaming
        standby of new (promoted) with pg_rewind, as an operator does after
        a switchover, so the roles can be switched back."""
        new.query("CHECKPOINT")     # pg_rewind reads the new timeline from the control file
        if old.is_running():
            old.stop(mode="fast")
        proc.run([pg_bin("pg_rewind"), "-D", old.datadir, "-R", "--no-sync",
                  "--source-server", f"host={new.host} port={new.port} user={ADMIN_USER} "
                  "dbname=postgres"],
                 user=self.RUN_AS, timeout=timeout, what=f"pg_rewind {old!r} from {new!r}")
        old.start()
        old.query("ALTER SYSTEM RESET default_transaction_read_only")
        old.query("SELECT pg_reload_conf()")
        proc.wait_for(lambda: new.query(
            "SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
            "AND state = 'streaming'", (old.name,)),
            timeout=timeout, what=f"{old!r} to stream from {new!r}")

    def wait_streaming(self, timeout=30):
        """Waits until the primary reports the replica's WAL stream as live."""
        proc.wait_for(
            lambda: self.primary.query(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
                "AND state = 'streaming'", (self.replica.name,)),
            timeout=timeout, what=f"{self.replica!r} to stream from {self.primary!r}")


@contextlib.contextmanager
def tls_pair(pki_dir, hba=None):
    """A PgPair serving TLS with pki_dir's server.pem/server.key (copied
    where the server, run as postgres, may own its key); hba: a pg_hba.conf
    text to put in force on both servers (e.g. hostssl lines only)."""
    d = tempfile.mkdtemp(prefix="ferry-pgtls-")
    os.chmod(d, 0o755)
    for name in ("server.pem", "server.key"):
        shutil.copy(os.path.join(str(pki_dir), name), d)
        if os.geteuid() == 0:   # the server runs as postgres and insists on owning its key
            pw = pwd.getpwnam("postgres")
            os.chown(os.path.join(d, name), pw.pw_uid, pw.pw_gid)
    os.chmod(os.path.join(d, "server.key"), 0o600)
    pair = PgPair(settings={"ssl": "on", "ssl_cert_file": os.path.join(d, "server.pem"),
                            "ssl_key_file": os.path.join(d, "server.key")}).start()
    try:
        if hba is not None:
            for server in (pair.primary, pair.replica):
                with open(os.path.join(server.datadir, "pg_hba.conf"), "w") as f:
                    f.write(hba)        # overwrite keeps postgres as the owner
                server.query("SELECT pg_reload_conf()")
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(d, ignore_errors=True)
