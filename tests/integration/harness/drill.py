"""A failover drill's client side for PostgreSQL: the load an application
puts on ferry while the writer moves, and what it saw.

PgLoad runs, all through one ferry listener:
- writers: short write transactions in a loop (INSERT of a unique id, COMMIT),
  recording every acknowledged id with its time, and every error by class;
  a writer that gets an error reconnects and goes on, as a pool would;
- idle sessions: connections opened with their own application_name and a
  SET, then left alone, used once at the end (a pool's idle connections);
- prepared sessions: psycopg 3 with server-side prepared statements and a
  TimeZone setting, running their statement every few milliseconds.

Load holds what any protocol's load shares (threads, ids, acknowledgements,
errors); drill_mysql.MyLoad is the same drill for MySQL.

PgLoad.stop() returns a DrillResult: acknowledged ids, errors by session kind
and class, and the longest gap between acknowledgements (the window in
which no write could complete). check_writes() then compares the ids with
what the new and the old writer hold.
"""

import threading
import time
from dataclasses import dataclass, field

import psycopg
import psycopg2

TABLE = "drill_acks"


def create_table(server, dbname, user):
    server.query(f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, writer int, "
                 f"at timestamptz DEFAULT clock_timestamp()); GRANT ALL ON {TABLE} TO {user}",
                 dbname=dbname)


def error_class(e):
    code = getattr(e, "pgcode", None) or getattr(getattr(e, "diag", None), "sqlstate", None)
    return code or type(e).__name__


@dataclass
class DrillResult:
    acked: dict = field(default_factory=dict)           # id -> time acknowledged (time.time())
    errors: dict = field(default_factory=dict)          # "kind:class" -> count
    error_log: list = field(default_factory=list)       # (time, kind, class, text)
    idle_checked: int = 0                               # idle sessions that worked at the end
    prepared_runs: int = 0

    def window_ms(self):
        """Longest gap between consecutive acknowledged writes, in ms."""
        times = sorted(self.acked.values())
        return max((b - a for a, b in zip(times, times[1:])), default=0) * 1000.0

    def last_ack(self):
        """Time of the latest acknowledgement so far (0 when none)."""
        return max(self.acked.values(), default=0)

    def acked_after(self, t):
        """Ids acknowledged after time t (time.time())."""
        return [i for i, at in self.acked.items() if at > t]

    def errors_of(self, kind):
        return {k.split(":", 1)[1]: v for k, v in self.errors.items() if k.startswith(kind + ":")}


def switchover(ferry, to):
    """POST /v1/switchover through `ferry ctl` in the background (it pauses,
    waits for `to` to be writable, resumes); returns the thread and its
    result holder."""
    from test_ops import ctl
    host, port = ferry.admin_addr()
    out = {}
    t = threading.Thread(target=lambda: out.update(res=ctl(
        "switchover", to, "--admin", f"http://{host}:{port}", "--timeout", "30")))
    t.start()
    return t, out


class Load:
    """What a drill's load has whatever the protocol: its threads, the ids
    it hands out, the acknowledgements and errors it records. Subclasses
    add the sessions (start/stop) and say how an error is classified."""

    def __init__(self, result=None):
        self.result = result or DrillResult()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []
        self.next_id = 0

    def classify(self, e):
        """The class an error is counted under."""
        raise NotImplementedError

    def _error(self, kind, e):
        cls = self.classify(e)
        with self.lock:
            key = f"{kind}:{cls}"
            self.result.errors[key] = self.result.errors.get(key, 0) + 1
            self.result.error_log.append((time.time(), kind, cls, str(e).strip()[:300]))

    def _take_id(self):
        with self.lock:
            self.next_id += 1
            return self.next_id

    def _start_threads(self):
        """Writers and prepared-statement sessions, each in its thread."""
        for n in range(self.nwriters):
            self._thread(self._writer, n)
        for n in range(self.nprepared):
            self._thread(self._prepared, n)
        for t in self.threads:
            t.start()
        return self

    def _acked(self, i):
        with self.lock:
            self.result.acked[i] = time.time()

    def _thread(self, target, *args):
        self.threads.append(threading.Thread(target=target, args=args, daemon=True))

    def _join(self):
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def wait_for_acks(self, n, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.result.acked) >= n:
                return
            time.sleep(0.02)
        raise TimeoutError(f"only {len(self.result.acked)} writes acknowledged")


class PgLoad(Load):
    def __init__(self, dsn, writers=3, idle=4, prepared=2):
        super().__init__()
        self.dsn = dsn
        self.nwriters, self.nidle, self.nprepared = writers, idle, prepared
        self.idle = []

    def classify(self, e):
        return error_class(e)

    def _writer(self, n):
        conn = None
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, application_name=f"drill-writer-{n}")
                with conn.cursor() as cur:
                    i = self._take_id()
                    cur.execute(f"INSERT INTO {TABLE} (id, writer) VALUES (%s, %s)", (i, n))
                conn.commit()
                self._acked(i)
            except psycopg2.Error as e:
                self._error("writer", e)
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - it is being replaced
                    pass
                conn = None
                time.sleep(0.01)
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def _prepared(self, n):
        conn = None
        while not self.stopping.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=0)
                    conn.execute("SET TimeZone TO 'Pacific/Auckland'")
                row = conn.execute("SELECT %s::int + 1, current_setting('TimeZone')",
                                   (n,)).fetchone()
                if row != (n + 1, "Pacific/Auckland"):
                    raise AssertionError(f"prepared session {n} got {row}")
                with self.lock:
                    self.result.prepared_runs += 1
            except (psycopg.Error, AssertionError) as e:
                self._error("prepared", e)
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    def start(self):
        for n in range(self.nidle):
            conn = psycopg2.connect(self.dsn, application_name=f"drill-idle-{n}")
            conn.autocommit = True
            conn.cursor().execute("SET statement_timeout TO '9s'")
            self.idle.append(conn)
        return self._start_threads()

    def stop(self):
        self._join()
        for n, conn in enumerate(self.idle):
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT current_setting('application_name'), "
                                "current_setting('statement_timeout')")
                    row = cur.fetchone()
                if row != (f"drill-idle-{n}", "9s"):
                    raise AssertionError(f"idle session {n} lost its settings: {row}")
                self.result.idle_checked += 1
            except (psycopg2.Error, AssertionError) as e:
                self._error("idle", e)
            finally:
                conn.close()
        return self.result


def check_writes(result, new_writer, old_writer, dbname, switch_time):
    """(acknowledged ids missing on the new writer, rows the old writer took
    after switch_time, given as an ISO timestamp)."""
    have = {r[0] for r in new_writer.query(f"SELECT id FROM {TABLE}", dbname=dbname)}
    lost = sorted(set(result.acked) - have)
    stale = old_writer.query(f"SELECT count(*) FROM {TABLE} WHERE at > %s", (switch_time,),
                             dbname=dbname)[0][0] if old_writer.is_running() else 0
    return lost, stale


def log_writes(server):
    """Makes server log every data-changing statement (log_statement=mod),
    so statements_after() can read what reached it."""
    server.query("ALTER SYSTEM SET log_statement = 'mod'")
    server.query("SELECT pg_reload_conf()")


def statements_after(server, iso_time, needle=f"INSERT INTO {TABLE}"):
    """Lines of server's log that logged a statement containing needle after
    iso_time (ferry's "2026-01-02T03:04:05.678Z"): what reached it then."""
    import datetime
    since = datetime.datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    found = []
    with open(server.log_path, errors="replace") as f:
        for line in f:
            if "statement: " not in line or needle not in line:
                continue
            stamp = " ".join(line.split(" ", 3)[:3])     # "2026-01-02 03:04:05.678 UTC"
            try:
                at = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f UTC").replace(
                    tzinfo=datetime.timezone.utc)
            except ValueError:
                continue
            if at > since:
                found.append(line.rstrip())
    return found
