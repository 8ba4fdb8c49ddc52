"""A stand-in for an Aurora PostgreSQL Global Database, for tests: real
PostgreSQL 15 servers, DNS names the test controls, Aurora's SQL status
functions and the fake AWS API (tests/fakes/fake_aws.py) all driven by one
topology. Tests only; nothing here is product code.

What is modelled, and how (quotes are AWS's documentation; reference/aws.md
§3, §4, §12, §13 summarises it):

* A global cluster of regional clusters. The first region is the primary:
  a writer and readers. Every other region is a secondary: readers only.
  Every instance is a PostgreSQL physical streaming replica of the global
  writer: secondary instances stream straight from it (no cascading), as
  Aurora's secondaries receive the primary's redo. Counts are parameters;
  the default is writer + 1 reader in us-east-1 and 1 reader in eu-west-1
  (three postgres processes: this machine has two CPUs).

* Endpoints are DNS names in a harness.PrivateHosts file, seen only by
  processes started through hosts.wrap() (ferry, psql, getent). Every
  instance listens on its own loopback address (harness.next_address()) and
  all on the same port, so a name moves between instances by changing its
  address. Names live under .test (RFC 6761), shaped like Aurora's:

      g1-use1.cluster-c0123456789.us-east-1.rds.example.test     cluster (writer) endpoint
      g1-use1.cluster-ro-c0123456789.us-east-1.rds.example.test  reader endpoint
      g1-use1-1.c0123456789.us-east-1.rds.example.test           instance endpoint
      g1.global-0a1b2c3d4e.global.rds.example.test               global writer endpoint

  "Only the primary region has an active writer endpoint": a secondary's
  cluster endpoint does not resolve until that cluster is promoted (then,
  with writer_dns_delay, only after that many seconds: a resolver's cached
  negative answer). After a switchover or failover the demoted cluster's
  writer name keeps pointing at its old, now read-only (or unreachable)
  writer for demoted_writer_linger seconds, then stops resolving. The reader
  endpoint names one instance of its cluster that is not the global writer
  (Aurora: "if the cluster contains only a primary instance, the reader
  endpoint connects to the primary"); Aurora's per-connection balancing over
  several readers is NOT modelled: a hosts file maps a name to one address.
  The global writer endpoint ("a DNS name Aurora repoints to the current
  primary's writer") follows the writer at the promotion.

* Aurora's SQL functions, with the names and columns AWS documents, in every
  database listed in `databases` (default `postgres` and `app`; databases
  created later do not have them), schema public, SECURITY DEFINER so an unprivileged probe user sees real LSNs.
  Column lists from the Aurora User Guide pages "aurora_global_db_instance_status",
  "aurora_global_db_status" and "aurora_replica_status"
  (docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/<name>.html),
  found with the `search` tool, corpus docs/pages:

    aurora_global_db_instance_status(): server_id, session_id, aws_region,
      durable_lsn, highest_lsn_rcvd, feedback_epoch, feedback_xmin,
      oldest_read_view_lsn, visibility_lag_in_msec. "A value of
      MASTER_SESSION_ID identifies the Writer (primary) DB instance."
    aurora_global_db_status(): aws_region, highest_lsn_written,
      durability_lag_in_msec ("A value of -1 identifies the primary DB
      cluster"), rpo_lag_in_msec (-1 likewise), last_lag_calculation_time
      ("1970-01-01 00:00:00+00 means this is the primary DB cluster"),
      feedback_epoch, feedback_xmin.
    aurora_replica_status(): the documented leading columns server_id,
      session_id ("For the primary instance, session_id is always
      MASTER_SESSION_ID"; readers: their UUID), durable_lsn,
      highest_lsn_rcvd, current_read_lsn, replica_lag_in_msec,
      last_update_timestamp, feedback_xmin, feedback_epoch; rows for the
      local regional cluster only. The other documented columns (I/O and
      CPU counters) are left out.
    aurora_db_instance_identifier(): this instance's name.

  The topology lives in tables (schema aurora_standin) that the stand-in
  writes on the global writer; physical replication carries them to every
  instance, so every instance reports the same global view, slightly lagged,
  as Aurora's do. The instance's own name comes from a custom GUC,
  aurora_standin.instance_id, given on each postmaster's command line (not
  in postgresql.conf: pg_basebackup and pg_rewind copy that file between
  instances). After a failover the stand-in rewrites the tables on the new
  writer. An old primary left running (split brain) keeps its old tables:
  it still names itself the writer, as an isolated Aurora primary would.
  LSNs are real: pg_lsn - '0/0' as bigint. On the writer its own row is
  pg_current_wal_flush_lsn() and every other row comes from
  pg_stat_replication (flush / write / replay LSN, replay_lag in ms,
  backend_xmin as feedback_xmin with epoch 0: NULL unless settings= turns
  hot_standby_feedback on); on a reader its own row comes
  from pg_last_wal_receive_lsn() / pg_last_wal_replay_lsn() and the
  writer's row is what this reader received; other readers' LSNs are NULL
  there (Aurora fills them from its storage layer, which has no counterpart
  here). Region lags (durability, RPO) are the largest replay lag among the
  region's instances, not Aurora's storage-level timestamps.
  Not documented by AWS, so chosen here: a secondary cluster's
  aurora_replica_status() has no MASTER_SESSION_ID row.

* Operations, each ending in the documented state (every one returns once
  the functions on every instance that follows the writer show the new
  topology and the AWS view has moved; names move at once or after the
  delays above):
    switchover(region)   "Secondaries are synchronised first, so RPO is 0;
                         the old primary is demoted to a read-only secondary":
                         the old writer turns read-only
                         (default_transaction_read_only, client sessions
                         ended), the target replays everything, the old
                         writer stops, the target is promoted, readers
                         follow it (primary_conninfo reload) and the old
                         writer is rewound (pg_rewind) into a standby.
                         FailoverState (IsDataLossAllowed=false) is set
                         throughout.
    failover(region, old_primary="stopped"|"writable")
                         "For regional outages. Unreplicated commits are
                         lost": the target is promoted without waiting.
                         "stopped": the old region's instances are stopped
                         first (isolate_region); "writable": the old writer
                         keeps running and accepting writes, its readers keep
                         streaming from it: a split brain that only the AWS
                         view (IsWriter) settles. FailoverState
                         (IsDataLossAllowed=true) during the operation; the
                         old cluster is SynchronizationStatus=pending-resync
                         afterwards.
    isolate_region(region) its instances stop (immediate shutdown): their
                         names still resolve, connections are refused. A
                         blackhole (packets dropped, connects time out) is
                         NOT modelled; netcut.py can do that per port, but
                         not for a name on its own address.
    rejoin(region)       "Aurora re-adds the old primary as a secondary
                         (SynchronizationStatus=pending-resync until
                         resynced)": every instance of the region is rebuilt
                         from the writer with pg_basebackup (its unreplicated
                         writes are gone; AWS's snapshot of them is not
                         modelled) and streams again; then connected.
  pause=seconds on each keeps FailoverState / pending-resync visible that
  long before the work starts, for tests that watch the operation run. The
  operations may run in any thread (a test's watcher thread): servers are
  always started from one long-lived launcher thread, since the kernel's
  death signal (proc.py) follows the thread that started a process.

* The fake AWS: FakeAWS(source=standin) answers DescribeGlobalClusters
  (members with IsWriter, Readers, SynchronizationStatus; global Endpoint;
  Status; FailoverState {Status, FromDbClusterArn, ToDbClusterArn,
  IsDataLossAllowed} while an operation runs), DescribeDBClusters (Endpoint
  omitted for secondaries, ReaderEndpoint, DBClusterMembers with
  IsClusterWriter: true only for the global writer) and CloudWatch
  AuroraGlobalDBReplicationLag for secondaries only (the largest
  pg_stat_replication replay_lag of the cluster's instances, 0 when caught
  up; no datapoint when none streams). Shapes: botocore's rds service model
  (the Debian python3-botocore 1.29 model predates SynchronizationStatus,
  IsDataLossAllowed and the global Endpoint; those follow the RDS API
  Reference pages GlobalClusterMember, FailoverState, GlobalCluster).
  Not modelled: DB cluster Status other than "available" (an isolated
  region's cluster still says available), RDS events, API unavailability
  in an impaired region (fake_aws.fail_next does that separately).

* tls=True: TLS-only instances. ssl=on, pg_hba has hostssl lines only, a CA
  of the stand-in's own (tls_ca; other_ca signed nothing), and per instance
  a certificate whose SANs are its instance name, its cluster's writer and
  reader names, the global writer name and its address.

Aurora MySQL has a stand-in of its own, harness/aurora_mysql.py (MariaDB
behind a protocol relay); it shares the names and their moves
(GlobalEndpoints, below). Not modelled: storage-level replication
(Aurora readers share a volume; here each instance has its own copy),
reader endpoint balancing, write forwarding, RPO capping
(rds.global_db_rpo), cluster endpoints' TTLs beyond the two delays above.

Use with ferry:

    hosts = harness.PrivateHosts(tmp_path)
    with AuroraGlobalPg(hosts) as g:
        fake = FakeAWS(source=g).start()
        lst = g.ferry_listener("pg", probe={"user": "ferry_test", "password": "ferry_pw"})
        # lst["clusters"] == [{"name": "us-east-1", "region": "us-east-1",
        #     "endpoint": "g1-use1.cluster-c….us-east-1.rds.example.test:PORT",
        #     "db_cluster_identifier": "g1-use1"}, {... "eu-west-1" ...}]
        # and lst["aws_global_cluster"] == "g1"
        config = make_config(lst, aws={"region": "us-east-1", "credentials": "env",
                             "endpoints": {"rds": fake.url, "monitoring": fake.url}})
        Ferry(config, tmp_path, argv_prefix=hosts.wrap()).start()
        g.switchover("eu-west-1")
"""

import concurrent.futures
import hashlib
import os
import pwd
import shutil
import threading
import time
import uuid

import psycopg2

from . import proc
from .ferry import listener
from .hosts import PrivateHosts, next_address
from .pg import (ADMIN_USER, POSTGRESQL_CONF, TEST_DB, TEST_PASSWORD, TEST_USER, PgServer, pg_bin,
                 run_query)
from .pki import make_pki, openssl
from .ports import free_port

RUN_AS = "postgres" if proc.is_root() else None
_LAUNCHER = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="aurora-launcher")
DOMAIN = "rds.example.test"
MASTER = "MASTER_SESSION_ID"

# The topology tables and Aurora's functions, installed in each database.
SCHEMA_SQL = """
CREATE SCHEMA aurora_standin;
CREATE TABLE aurora_standin.instances (
    server_id text PRIMARY KEY,
    session_id text NOT NULL,            -- the instance's UUID (readers' session_id)
    aws_region text NOT NULL,
    db_cluster_identifier text NOT NULL,
    ord int NOT NULL);
CREATE TABLE aurora_standin.global_state (
    id int PRIMARY KEY CHECK (id = 1),
    global_writer text NOT NULL,
    primary_region text NOT NULL,
    generation int NOT NULL,
    updated_at timestamptz NOT NULL);
GRANT USAGE ON SCHEMA aurora_standin TO PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA aurora_standin TO PUBLIC;

CREATE FUNCTION public.aurora_db_instance_identifier() RETURNS text
LANGUAGE sql STABLE AS $f$ SELECT current_setting('aurora_standin.instance_id', true) $f$;

CREATE FUNCTION public.aurora_global_db_instance_status(
    OUT server_id text, OUT session_id text, OUT aws_region text, OUT durable_lsn bigint,
    OUT highest_lsn_rcvd bigint, OUT feedback_epoch integer, OUT feedback_xmin bigint,
    OUT oldest_read_view_lsn bigint, OUT visibility_lag_in_msec real)
RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $f$
WITH g AS (SELECT global_writer FROM aurora_standin.global_state WHERE id = 1),
     me AS (SELECT current_setting('aurora_standin.instance_id', true) AS id,
                   pg_is_in_recovery() AS standby,
                   pg_last_wal_receive_lsn() AS rcvd, pg_last_wal_replay_lsn() AS replayed,
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn() END
                       AS flushed,
                   pg_last_xact_replay_timestamp() AS replay_ts),
     rep AS (SELECT DISTINCT ON (application_name) application_name, flush_lsn, write_lsn,
                    replay_lsn, replay_lag, backend_xmin
             FROM pg_stat_replication ORDER BY application_name, state = 'streaming' DESC)
SELECT i.server_id,
       CASE WHEN i.server_id = g.global_writer THEN 'MASTER_SESSION_ID' ELSE i.session_id END,
       i.aws_region,
       (CASE WHEN i.server_id = me.id THEN coalesce(me.flushed, me.rcvd, me.replayed)
             WHEN NOT me.standby THEN r.flush_lsn
             WHEN i.server_id = g.global_writer THEN coalesce(me.rcvd, me.replayed) END
        - '0/0'::pg_lsn)::bigint,
       (CASE WHEN i.server_id = me.id THEN coalesce(me.flushed, me.rcvd, me.replayed)
             WHEN NOT me.standby THEN r.write_lsn
             WHEN i.server_id = g.global_writer THEN coalesce(me.rcvd, me.replayed) END
        - '0/0'::pg_lsn)::bigint,
       CASE WHEN r.backend_xmin IS NOT NULL THEN 0 END,
       r.backend_xmin::text::bigint,
       (CASE WHEN i.server_id = me.id THEN coalesce(me.flushed, me.replayed)
             WHEN NOT me.standby THEN r.replay_lsn END
        - '0/0'::pg_lsn)::bigint,
       CASE WHEN i.server_id = g.global_writer THEN 0
            WHEN i.server_id = me.id AND me.rcvd IS NOT NULL AND me.rcvd > me.replayed
                THEN coalesce(extract(epoch FROM now() - me.replay_ts) * 1000, 0)::real
            WHEN i.server_id = me.id THEN 0
            WHEN NOT me.standby AND r.application_name IS NOT NULL
                THEN coalesce(extract(epoch FROM r.replay_lag) * 1000, 0)::real END
FROM aurora_standin.instances i CROSS JOIN g CROSS JOIN me
LEFT JOIN rep r ON r.application_name = i.server_id AND NOT me.standby
ORDER BY i.ord
$f$;

CREATE FUNCTION public.aurora_global_db_status(
    OUT aws_region text, OUT highest_lsn_written bigint, OUT durability_lag_in_msec bigint,
    OUT rpo_lag_in_msec bigint, OUT last_lag_calculation_time timestamptz,
    OUT feedback_epoch integer, OUT feedback_xmin bigint)
RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $f$
SELECT s.aws_region, max(s.highest_lsn_rcvd),
       CASE WHEN s.aws_region = g.primary_region THEN -1
            ELSE ceil(max(s.visibility_lag_in_msec))::bigint END,
       CASE WHEN s.aws_region = g.primary_region THEN -1
            ELSE ceil(max(s.visibility_lag_in_msec))::bigint END,
       CASE WHEN s.aws_region = g.primary_region THEN 'epoch'::timestamptz ELSE now() END,
       min(s.feedback_epoch), min(s.feedback_xmin)
FROM public.aurora_global_db_instance_status() s
CROSS JOIN (SELECT primary_region FROM aurora_standin.global_state WHERE id = 1) g
GROUP BY s.aws_region, g.primary_region
ORDER BY s.aws_region <> g.primary_region, s.aws_region
$f$;

CREATE FUNCTION public.aurora_replica_status(
    OUT server_id text, OUT session_id text, OUT durable_lsn bigint, OUT highest_lsn_rcvd bigint,
    OUT current_read_lsn bigint, OUT replica_lag_in_msec real,
    OUT last_update_timestamp timestamptz, OUT feedback_xmin bigint, OUT feedback_epoch integer)
RETURNS SETOF record LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $f$
SELECT s.server_id, s.session_id, s.durable_lsn, s.highest_lsn_rcvd, s.oldest_read_view_lsn,
       s.visibility_lag_in_msec, now(), s.feedback_xmin, s.feedback_epoch
FROM public.aurora_global_db_instance_status() s
JOIN aurora_standin.instances i ON i.server_id = s.server_id
WHERE i.db_cluster_identifier = (SELECT db_cluster_identifier FROM aurora_standin.instances
                                 WHERE server_id = current_setting('aurora_standin.instance_id', true))
$f$;
"""


def region_code(region):
    """us-east-1 -> use1, ap-southeast-2 -> apse2 (as in the brief's g1-use1)."""
    parts = region.split("-")
    return parts[0] + "".join(p[0] for p in parts[1:-1]) + parts[-1]


def _hash(*parts, n=10):
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:n]


def hba(tls):
    """Every role but ferry_test is trusted from loopback (ferry_test proves
    its SCRAM password); with tls only hostssl lines exist, so a plaintext
    connection finds no entry and is refused."""
    kind = "hostssl" if tls else "host"
    return (f"local all         all                       trust\n"
            f"{kind} all         {TEST_USER}  127.0.0.0/8   scram-sha-256\n"
            f"{kind} all         all          127.0.0.0/8   trust\n"
            f"{kind} replication all          127.0.0.0/8   trust\n")


class AuroraInstance(PgServer):
    """One DB instance: a postgres on its own loopback address, the global
    port, its own socket directory, and its name in a GUC."""

    def __init__(self, instance_id, cluster, basedir, port, tls_files=None):
        super().__init__(instance_id, basedir, run_as=RUN_AS)
        self.instance_id = instance_id
        self.cluster = cluster
        self.host = next_address()
        self.port = port
        self.sockdir = os.path.join(basedir, f"sock-{instance_id}")
        self.tls_files = tls_files          # (cert, key) or None
        self.session_uuid = str(uuid.uuid4())
        self.endpoint = cluster.instance_endpoint(instance_id)

    def __repr__(self):
        return f"<AuroraInstance {self.instance_id} {self.host}:{self.port}>"

    def start(self, timeout=None):
        """Started from one long-lived thread: the kernel sends the death
        signal (PR_SET_PDEATHSIG, proc.py) when the creating *thread* ends,
        and tests run operations in short-lived threads to watch them."""
        return _LAUNCHER.submit(PgServer.start, self, timeout).result()

    def argv(self):
        argv = [pg_bin("postgres"), "-D", self.datadir, "-p", str(self.port),
                "-c", f"listen_addresses={self.host}",
                "-c", f"unix_socket_directories={self.sockdir}",
                "-c", f"cluster_name={self.instance_id}",
                "-c", f"aurora_standin.instance_id={self.instance_id}"]
        if self.tls_files:
            cert, key = self.tls_files
            argv += ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
        return argv

    def query(self, sql, params=None, *, user=ADMIN_USER, dbname="postgres", password=None,
              timeout=5):
        dsn = self.dsn(user=user, dbname=dbname, password=password).replace(
            "connect_timeout=5", f"connect_timeout={timeout}")
        return run_query(dsn, sql, params)


class RegionalCluster:
    def __init__(self, global_id, region, account_hash):
        self.region = region
        self.cluster_id = f"{global_id}-{region_code(region)}"
        self.hash = "c" + _hash(account_hash, region, n=11)
        self.writer_name = f"{self.cluster_id}.cluster-{self.hash}.{region}.{DOMAIN}"
        self.reader_name = f"{self.cluster_id}.cluster-ro-{self.hash}.{region}.{DOMAIN}"
        self.instances = []
        self.sync_status = "connected"
        self.status = "available"

    def __repr__(self):
        return f"<RegionalCluster {self.cluster_id} {self.region}>"

    def instance_endpoint(self, instance_id):
        return f"{instance_id}.{self.hash}.{self.region}.{DOMAIN}"


class GlobalEndpoints:
    """What every stand-in of a global database has, whatever the engine:
    regional clusters of instances, each instance behind its own loopback
    address (inst.host) on the stand-in's port, the Aurora-shaped endpoint
    names in a PrivateHosts file and how they move, ferry's cluster entries,
    the life cycle, and an event log. Subclasses say PROTOCOL and define
    _prepare(), _setup() (which builds self.clusters) and stop()."""

    PROTOCOL = None     # ferry's listener protocol
    LISTENER = None     # ferry_listener()'s default name

    def _init_names(self, hosts, global_id, writer_dns_delay, demoted_writer_linger):
        self.hosts = hosts
        self.global_id = global_id
        self.writer_dns_delay = writer_dns_delay
        self.demoted_writer_linger = demoted_writer_linger
        self.global_name = f"{global_id}.global-{_hash(global_id)}.global.{DOMAIN}"
        self.port = None
        self.clusters = []
        self.writer = None          # the instance that is the global writer (our view)
        self.primary = None         # the cluster AWS calls IsWriter
        self.events = []            # (monotonic time, text), for tests and debugging
        self._state = threading.RLock()
        self._name_gen = {}
        self._timers = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """_prepare() (what stop() can undo), then _setup(); stops what was
        started if that fails."""
        self._prepare()
        try:
            self._setup()
        except BaseException:
            self.stop()
            raise
        return self

    def _event(self, text):
        self.events.append((time.monotonic(), text))

    def _point_all(self):
        """The names at the start: every instance's, the primary's writer
        endpoint and the global one at the writer, secondaries' writer
        endpoints inactive, reader endpoints at a reader."""
        for inst in self.instances():
            self.hosts.set(inst.endpoint, inst.host)
        self._point(self.global_name, self.writer)
        self._point(self.primary.writer_name, self.writer)
        for c in self.clusters:
            if c is not self.primary:
                self._point(c.writer_name, None)
        self._point_readers()

    # ---- lookup ----------------------------------------------------------

    def instances(self):
        return [i for c in self.clusters for i in c.instances]

    def cluster(self, region):
        for c in self.clusters:
            if c.region == region or c.cluster_id == region:
                return c
        raise KeyError(f"no regional cluster {region!r}")

    def instance(self, instance_id):
        for i in self.instances():
            if i.instance_id == instance_id:
                return i
        raise KeyError(instance_id)

    def resolve(self, name):
        """The address name resolves to in the hosts file now (None: NXDOMAIN)."""
        return self.hosts.get(name)

    def endpoints(self):
        """{name: address or None} of every endpoint name the stand-in owns."""
        names = [self.global_name] + [n for c in self.clusters
                                      for n in (c.writer_name, c.reader_name)]
        names += [i.endpoint for i in self.instances()]
        return {n: self.hosts.get(n) for n in names}

    # ---- ferry configuration ---------------------------------------------

    def ferry_clusters(self):
        """Cluster entries for a ferry listener: one per region, named after
        the region, its writer (cluster) endpoint name, its reader endpoint
        name (probed while the writer endpoint does not resolve), region and
        db_cluster_identifier."""
        return [{"name": c.region, "endpoint": f"{c.writer_name}:{self.port}",
                 "reader_endpoint": f"{c.reader_name}:{self.port}",
                 "region": c.region, "db_cluster_identifier": c.cluster_id}
                for c in self.clusters]

    def ferry_listener(self, name=None, aws=True, **options):
        """A harness.listener() entry over ferry_clusters(); aws=True adds
        aws_global_cluster (ferry needs a `probe` object with it)."""
        if aws:
            options.setdefault("aws_global_cluster", self.global_id)
        name = name or self.LISTENER
        return listener(name, self.PROTOCOL, self.ferry_clusters(), **options)

    # ---- DNS -------------------------------------------------------------

    def _point(self, name, inst, after=0.0):
        """name resolves to inst (None: does not resolve) from now on, or
        after `after` seconds unless changed again meanwhile."""
        with self._state:
            gen = self._name_gen.get(name, 0) + 1
            self._name_gen[name] = gen

        def apply():
            with self._state:
                if self._name_gen.get(name) == gen:
                    self.hosts.set(name, inst.host if inst is not None else None)
                    self._event(f"dns {name} -> {inst.instance_id if inst else 'NXDOMAIN'}")
        if after > 0:
            t = threading.Timer(after, apply)
            t.daemon = True
            self._timers.append(t)
            t.start()
        else:
            apply()

    def _point_readers(self):
        for c in self.clusters:
            others = [i for i in c.instances if i is not self.writer]
            self._point(c.reader_name, (others or c.instances)[0])

    def _move_writer_names(self, old_cluster, new_writer):
        """At a promotion: the global endpoint follows at once, the new
        primary's writer name after writer_dns_delay, the old primary's
        writer name lingers on its old writer, then goes inactive."""
        self._point(self.global_name, new_writer)
        new_cluster = new_writer.cluster
        if new_cluster is not old_cluster:
            self._point(new_cluster.writer_name, new_writer, after=self.writer_dns_delay)
            self._point(old_cluster.writer_name, None, after=self.demoted_writer_linger)
        else:
            self._point(new_cluster.writer_name, new_writer)


class AuroraGlobalPg(GlobalEndpoints):
    """An Aurora PostgreSQL global database made of real servers; see the
    module docstring. Use as a context manager, or start()/stop()."""

    TMP_PREFIX = "ferry-aurora-"
    PROTOCOL = "postgresql"
    LISTENER = "pg"

    def __init__(self, hosts=None, *, global_id="g1",
                 regions=(("us-east-1", 2), ("eu-west-1", 1)), tls=False,
                 writer_dns_delay=0.0, demoted_writer_linger=0.0, settings=None,
                 databases=("postgres", TEST_DB)):
        """hosts: the PrivateHosts the names go into (None: one of our own in
        the temp dir). regions: (region, instance count) pairs, the first
        the primary (its first instance the writer). writer_dns_delay:
        seconds a promoted cluster's writer name keeps not resolving.
        demoted_writer_linger: seconds a demoted cluster's writer name still
        points at its old writer. settings: extra postgresql.conf entries."""
        if not regions or any(n < 1 for _, n in regions):
            raise ValueError("every region needs at least one instance")
        self._init_names(hosts, global_id, writer_dns_delay, demoted_writer_linger)
        self.region_spec = [(r, int(n)) for r, n in regions]
        self.tls = tls
        self.settings = dict(settings or {})
        self.databases = list(databases)
        self.basedir = None
        self.failover_state = None  # dict(status, from, to, data_loss) while an operation runs
        self.generation = 0
        self.pki = None
        self._op = threading.Lock()
        self._lag_cache = (0.0, {})
        self._cleanup = None

    # ---- life cycle ------------------------------------------------------

    def _prepare(self):
        self.basedir = proc.make_tempdir(self.TMP_PREFIX, owner=RUN_AS)
        self._cleanup = proc.on_cleanup(self._kill_all)

    def stop(self):
        """Stops every instance (readers first), never leaving one behind."""
        for t in self._timers:
            t.cancel()
        errors = []
        for inst in sorted(self.instances(), key=lambda i: i is self.writer):
            try:
                if inst.is_running():
                    inst.stop()
            except Exception as e:  # noqa: BLE001 - stop the others too
                errors.append(f"{inst!r}: {e}")
                inst.kill()
        if self._cleanup:
            proc.forget(self._cleanup)
            self._cleanup = None
        if errors:
            raise proc.HarnessError("stopping the Aurora stand-in failed: " + "; ".join(errors))

    def _kill_all(self):
        for t in self._timers:
            t.cancel()
        for inst in self.instances():
            inst.kill()

    def _setup(self):
        if self.hosts is None:
            self.hosts = PrivateHosts(self.basedir)
        self.port = free_port()
        if self.tls:
            self.pki = make_pki(os.path.join(self.basedir, "pki"))
        account = _hash(self.global_id, "account")
        for region, count in self.region_spec:
            c = RegionalCluster(self.global_id, region, account)
            self.clusters.append(c)
            for n in range(1, count + 1):
                iid = f"{c.cluster_id}-{n}"
                files = self._make_cert(iid, c) if self.tls else None
                inst = AuroraInstance(iid, c, self.basedir, self.port, files)
                os.makedirs(inst.sockdir)
                _chown(inst.sockdir)
                c.instances.append(inst)
        self.primary = self.clusters[0]
        self.writer = self.primary.instances[0]
        self._init_writer(self.writer)
        self._write_topology()
        for inst in self.instances():
            if inst is not self.writer:
                self._basebackup(inst, self.writer)
                inst.start()
        for inst in self.instances():
            if inst is not self.writer:
                self._wait_streaming(inst, self.writer)
        self._point_all()
        self.wait_converged()
        self._event("started")

    def _init_writer(self, w):
        proc.run([pg_bin("initdb"), "-D", w.datadir, "-U", ADMIN_USER, "--auth=trust",
                  "--locale=C", "--encoding=UTF8", "--no-sync"],
                 user=RUN_AS, timeout=120, what="initdb")
        with open(os.path.join(w.datadir, "postgresql.conf"), "a") as f:
            f.write(POSTGRESQL_CONF)
            f.writelines(f"{k} = '{v}'\n" for k, v in self.settings.items())
        with open(os.path.join(w.datadir, "pg_hba.conf"), "w") as f:
            f.write(hba(self.tls))
        w.start()
        w.query(f"CREATE ROLE {TEST_USER} LOGIN PASSWORD '{TEST_PASSWORD}'")
        for db in self.databases:
            if db != "postgres":
                w.query(f"CREATE DATABASE {db} OWNER {TEST_USER}")
            w.query(SCHEMA_SQL, dbname=db)

    def _make_cert(self, iid, cluster):
        """A certificate from the stand-in's CA for the instance's names
        (instance, its cluster's writer and reader, the global writer)."""
        d = self.pki
        names = [cluster.instance_endpoint(iid), cluster.writer_name,
                 cluster.reader_name, self.global_name]
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", *ec, "-keyout", f"{iid}.key", "-out", f"{iid}.csr", "-subj",
                f"/CN={names[0]}", cwd=d)
        (d / f"{iid}.ext").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names)
                                      + "\n")
        openssl("x509", "-req", "-in", f"{iid}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{iid}.pem", "-days", "2", "-extfile", f"{iid}.ext",
                cwd=d)
        os.chmod(d / f"{iid}.key", 0o600)
        _chown(d / f"{iid}.key")
        _chown(d / f"{iid}.pem")
        return str(d / f"{iid}.pem"), str(d / f"{iid}.key")

    @property
    def tls_ca(self):
        """The CA that signed every instance certificate (tls=True)."""
        return str(self.pki / "ca.pem") if self.pki else None

    @property
    def other_ca(self):
        """A CA that signed nothing the stand-in serves."""
        return str(self.pki / "other.pem") if self.pki else None

    # ---- topology --------------------------------------------------------

    def _write_topology(self, on=None):
        """Rewrites the topology tables on the writer (on): replication
        carries them everywhere else."""
        on = on or self.writer
        self.generation += 1
        rows = [(i.instance_id, i.session_uuid, c.region, c.cluster_id, n)
                for n, (c, i) in enumerate((c, i) for c in self.clusters for i in c.instances)]
        for db in self.databases:
            conn = psycopg2.connect(on.dsn(user=ADMIN_USER, dbname=db))
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("DELETE FROM aurora_standin.instances")
                    cur.executemany("INSERT INTO aurora_standin.instances VALUES (%s,%s,%s,%s,%s)",
                                    rows)
                    cur.execute("INSERT INTO aurora_standin.global_state VALUES (1,%s,%s,%s,now()) "
                                "ON CONFLICT (id) DO UPDATE SET global_writer = excluded.global_writer, "
                                "primary_region = excluded.primary_region, "
                                "generation = excluded.generation, updated_at = now()",
                                (on.instance_id, on.cluster.region, self.generation))
            finally:
                conn.close()

    def followers(self):
        """Running instances that replicate from the writer (not the writer,
        not an isolated or split-off region)."""
        return [i for i in self.instances()
                if i is not self.writer and i.is_running() and i.cluster.sync_status == "connected"]

    def wait_converged(self, timeout=30):
        """Waits until every follower shows the current topology generation."""
        for inst in [self.writer] + self.followers():
            proc.wait_for(lambda inst=inst: inst.query(
                "SELECT generation FROM aurora_standin.global_state")[0][0] == self.generation,
                timeout=timeout, what=f"{inst!r} to replay topology generation {self.generation}")

    # ---- replication plumbing --------------------------------------------

    def _basebackup(self, inst, source):
        if os.path.exists(inst.datadir):
            shutil.rmtree(inst.datadir)
        proc.run([pg_bin("pg_basebackup"), "-h", source.host, "-p", str(source.port),
                  "-U", ADMIN_USER, "-D", inst.datadir, "-R", "-X", "stream",
                  "--checkpoint=fast", "--no-sync"],
                 user=RUN_AS, timeout=120, what=f"pg_basebackup {inst!r} from {source!r}")

    def _streaming(self, inst, writer):
        return writer.query("SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
                            "AND state = 'streaming'", (inst.instance_id,))

    def _wait_streaming(self, inst, writer, timeout=30):
        proc.wait_for(lambda: self._streaming(inst, writer), timeout=timeout,
                      what=f"{inst!r} to stream from {writer!r}")

    def _repoint(self, inst, writer, wait=True):
        """A running standby streams from writer (a reload of
        primary_conninfo); it follows writer's new timeline if it has not
        replayed past the fork, else (after 10 s) it is rebuilt from writer.
        wait=False only repoints: before a promotion, so that the standby
        cascades from the candidate and cannot get ahead of it."""
        conninfo = f"host={writer.host} port={writer.port} user={ADMIN_USER}"
        try:
            inst.query("ALTER SYSTEM SET primary_conninfo = %s", (conninfo,))
            inst.query("SELECT pg_reload_conf()")
            if wait:
                self._wait_streaming(inst, writer, timeout=10)
        except Exception as e:  # noqa: BLE001 - fall back to a fresh copy
            self._event(f"{inst.instance_id} could not follow ({e}); rebuilding")
            self._rebuild(inst, writer)

    def _rebuild(self, inst, writer):
        if inst.is_running():
            inst.stop(mode="immediate")
        self._basebackup(inst, writer)
        inst.start()
        self._wait_streaming(inst, writer)

    def _rewind(self, old, writer):
        """A cleanly stopped former writer becomes a standby of writer."""
        writer.query("CHECKPOINT")
        proc.run([pg_bin("pg_rewind"), "-D", old.datadir, "-R", "--no-sync", "--source-server",
                  f"host={writer.host} port={writer.port} user={ADMIN_USER} dbname=postgres"],
                 user=RUN_AS, timeout=60, what=f"pg_rewind {old!r} from {writer!r}")
        old.start()
        old.query("ALTER SYSTEM RESET default_transaction_read_only")
        old.query("SELECT pg_reload_conf()")
        self._wait_streaming(old, writer)

    def _set_failover(self, status, old_cluster, new_cluster, data_loss):
        with self._state:
            self.failover_state = None if status is None else {
                "status": status, "from": old_cluster.cluster_id, "to": new_cluster.cluster_id,
                "data_loss": data_loss}
            self._event(f"FailoverState {self.failover_state}")

    def _finish(self, new_cluster):
        with self._state:
            self.primary = new_cluster
            self.failover_state = None
            self._lag_cache = (0.0, {})
            self._event(f"IsWriter -> {new_cluster.cluster_id}")

    # ---- operations ------------------------------------------------------

    def switchover(self, target_region, pause=0.0, timeout=60):
        """SwitchoverGlobalCluster: RPO 0; the old primary becomes a read-only
        secondary. Returns the new writer instance."""
        with self._op:
            old = self.writer
            old_cluster, target = old.cluster, self.cluster(target_region)
            if target is old_cluster:
                raise ValueError(f"{target_region} is already the primary region")
            if any(not i.is_running() for i in self.instances()) or \
                    any(c.sync_status != "connected" for c in self.clusters):
                raise proc.HarnessError("switchover needs a healthy global database (AWS: "
                                        "'healthy global database only'); use failover()")
            new = target.instances[0]
            self._set_failover("switching-over", old_cluster, target, False)
            time.sleep(pause)
            # demote: no new writes on the old writer, sessions ended
            old.query("ALTER SYSTEM SET default_transaction_read_only = on")
            old.query("SELECT pg_reload_conf()")
            proc.wait_for(lambda: old.query("SHOW default_transaction_read_only")[0][0] == "on",
                          timeout=10, what=f"{old!r} to turn read-only")
            old.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
            self._event(f"{old.instance_id} read-only")
            # synchronise the target, then stop the old writer (its shutdown
            # checkpoint reaches every standby) and promote
            lsn = old.query("SELECT pg_current_wal_lsn()::text")[0][0]
            proc.wait_for(lambda: new.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                            (lsn,))[0][0],
                          timeout=timeout, what=f"{new!r} to replay {lsn}")
            old.stop(mode="fast")
            new.promote(timeout=timeout)
            self.writer = new
            self._event(f"{new.instance_id} promoted")
            self._move_writer_names(old_cluster, new)
            self._write_topology()
            for inst in self.instances():
                if inst not in (new, old) and inst.is_running():
                    self._repoint(inst, new)
            self._rewind(old, new)
            self._point_readers()
            self.wait_converged(timeout)
            self._finish(target)
            return new

    def failover(self, target_region, allow_data_loss=True, old_primary="stopped", pause=0.0,
                 timeout=60):
        """FailoverGlobalCluster with AllowDataLoss: the target is promoted at
        once. old_primary "stopped": the old primary region is down (its
        instances stopped first); "writable": it keeps running and keeps
        accepting writes (split brain). Returns the new writer instance.
        allow_data_loss=False is a switchover, as in the API."""
        if not allow_data_loss:
            return self.switchover(target_region, pause=pause, timeout=timeout)
        if old_primary not in ("stopped", "writable"):
            raise ValueError(f"old_primary {old_primary!r}: 'stopped' or 'writable'")
        with self._op:
            old = self.writer
            old_cluster, target = old.cluster, self.cluster(target_region)
            if target is old_cluster:
                raise ValueError(f"{target_region} is already the primary region")
            new = next((i for i in target.instances if i.is_running()), None)
            if new is None:
                raise proc.HarnessError(f"no running instance in {target_region}")
            self._set_failover("failing-over", old_cluster, target, True)
            if old_primary == "stopped":
                self._isolate(old_cluster)
            time.sleep(pause)
            followers = [i for i in self.instances() if i is not new and i.is_running()
                         and i.cluster is not old_cluster]
            for inst in followers:
                self._repoint(inst, new, wait=False)
            new.promote(timeout=timeout)
            self.writer = new
            old_cluster.sync_status = "pending-resync"
            self._event(f"{new.instance_id} promoted (failover, old primary {old_primary})")
            self._move_writer_names(old_cluster, new)
            self._write_topology()
            for inst in followers:
                self._repoint(inst, new)
            self._point_readers()
            self.wait_converged(timeout)
            self._finish(target)
            return new

    def isolate_region(self, region):
        """The region's instances stop answering (immediate shutdown); their
        names keep resolving."""
        with self._op:
            self._isolate(self.cluster(region))

    def _isolate(self, cluster):
        for inst in cluster.instances:
            if inst.is_running():
                inst.stop(mode="immediate")
        self._event(f"{cluster.region} isolated")

    def rejoin(self, region, pause=0.0, timeout=60):
        """The region (an old primary after a failover, or an isolated
        secondary) comes back as a secondary: SynchronizationStatus
        pending-resync while its instances are rebuilt from the writer, then
        connected once they all stream."""
        with self._op:
            c = self.cluster(region)
            if c is self.writer.cluster:
                raise ValueError(f"{region} holds the writer")
            with self._state:
                c.sync_status = "pending-resync"
            time.sleep(pause)
            for inst in c.instances:
                if inst.is_running():
                    inst.stop(mode="fast")
            for inst in c.instances:
                self._basebackup(inst, self.writer)
                inst.start()
            for inst in c.instances:
                self._wait_streaming(inst, self.writer, timeout)
            self._point_readers()
            with self._state:
                c.sync_status = "connected"
                self._lag_cache = (0.0, {})
            self.wait_converged(timeout)
            self._event(f"{region} rejoined")

    restore = rejoin

    # ---- the AWS view ----------------------------------------------------

    def _lags(self):
        """Replication lag in ms per secondary cluster id, from the writer's
        pg_stat_replication (cached for a second; {} when unreachable)."""
        with self._state:
            at, cached = self._lag_cache
            if time.monotonic() - at < 1.0:
                return cached
            writer = self.writer
        lags = {}
        try:
            rows = writer.query("SELECT application_name, "
                                "coalesce(extract(epoch FROM replay_lag) * 1000, 0)::float8 "
                                "FROM pg_stat_replication WHERE state = 'streaming'", timeout=1)
            by_instance = dict(rows)
            for c in self.clusters:
                values = [by_instance[i.instance_id] for i in c.instances
                          if i.instance_id in by_instance]
                if values and c is not self.primary:
                    lags[c.cluster_id] = [round(max(values), 1)]
        except Exception:  # noqa: BLE001 - no datapoint, as CloudWatch shows none
            pass
        with self._state:
            self._lag_cache = (time.monotonic(), lags)
        return lags

    def aws_view(self):
        """The state the fake AWS serves (tests/fakes/fake_aws.py, source=)."""
        lags = self._lags()
        with self._state:
            fs = dict(self.failover_state) if self.failover_state else None
            members = []
            for c in self.clusters:
                is_primary = c is self.primary
                members.append({
                    "cluster_id": c.cluster_id, "region": c.region, "writer": is_primary,
                    "sync_status": c.sync_status, "status": c.status,
                    "endpoint": c.writer_name if is_primary else None,
                    "reader_endpoint": c.reader_name, "port": self.port,
                    "instances": [(i.instance_id, is_primary and i is self.writer)
                                  for i in c.instances]})
            return {"global_id": self.global_id, "status": fs["status"] if fs else "available",
                    "engine": "aurora-postgresql", "engine_version": "15.4",
                    "endpoint": self.global_name, "members": members, "failover": fs,
                    "lag": {k: v for k, v in lags.items()
                            if k != self.primary.cluster_id}}


def _chown(path):
    if RUN_AS:
        pw = pwd.getpwnam(RUN_AS)
        os.chown(path, pw.pw_uid, pw.pw_gid)
