#!/usr/bin/python3
"""ferry demo: PostgreSQL and MariaDB primary/replica pairs behind one ferry.

Starts both pairs on free ports on 127.0.0.1, runs ferry with a `pg` and a
`mysql` listener (clusters region-a = primary, the writer, and region-b =
replica), runs a few queries through it with the psql and mariadb CLIs and
with psycopg and PyMySQL, then runs a small load through the PostgreSQL
listener and performs a planned switchover to region-b half-way, printing
the timeline (when the writer changed, how long writes waited, errors by
class, acknowledged writes lost), prints /v1/status, then stays up until
Ctrl-C.

    /usr/bin/python3 scripts/demo.py          # stay up, Ctrl-C to stop
    /usr/bin/python3 scripts/demo.py --once   # exit after the queries: 0 if all worked

The ferry binary is $FERRY_BIN, else build/ferry (scripts/demo.sh builds it).
"""

import argparse
import datetime
import json
import threading
import shlex
import os
import subprocess
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import psycopg  # noqa: E402
import pymysql  # noqa: E402

import harness  # noqa: E402
from harness import drill, mariadb, pg, proc  # noqa: E402
from harness.ferry import cluster, listener, make_config  # noqa: E402


def banner(text):
    print(f"\n=== {text}", flush=True)


class Demo:
    def __init__(self):
        self.pg = self.my = self.ferry = None
        self.failures = []

    # -- setup
    def start(self):
        harness.require_binary()   # fail before spending seconds on servers
        banner("starting PostgreSQL 15 primary + streaming replica")
        self.pg = harness.PgPair().start()
        banner("starting MariaDB primary + GTID replica")
        self.my = harness.MariaDBPair().start()
        # Both listeners discover their writer by probing; nothing is marked.
        probe = {"user": pg.TEST_USER, "password": pg.TEST_PASSWORD}
        # The pg listener authenticates clients itself (terminated auth), so
        # it can log idle sessions into the new writer during the switchover.
        auth = {"mode": "terminated",
                "users": [{"name": pg.TEST_USER, "password": pg.TEST_PASSWORD}]}
        # These local servers have no TLS: the demo opts out of ferry's
        # default (verify the server's certificate and name, never give a
        # password to a server that is not verified) explicitly. Against
        # RDS, leave backend_tls out or name the RDS CA bundle (README).
        local_pg = {"mode": "disable", "allow_insecure_password": True}
        local_my = {"mode": "disabled"}
        config = make_config(
            listener("pg", "postgresql", [cluster("region-a", self.pg.primary),
                                          cluster("region-b", self.pg.replica)], probe=probe,
                     auth=auth, backend_tls=local_pg),
            listener("mysql", "mysql", [cluster("region-a", self.my.primary),
                                        cluster("region-b", self.my.replica)],
                     probe={"user": mariadb.TEST_USER, "password": mariadb.TEST_PASSWORD},
                     backend_tls=local_my),
            log_level="info", discovery={"probe_interval": 0.2, "probe_timeout": 3})
        banner(f"starting ferry ({harness.ferry_bin()})")
        self.ferry = harness.Ferry(config, proc.make_tempdir("ferry-demo-")).start()
        print(json.dumps(config, indent=2))

    def stop(self):
        for name, thing in (("ferry", self.ferry), ("MariaDB", self.my), ("PostgreSQL", self.pg)):
            if thing is None:
                continue
            try:
                if name == "ferry":
                    if thing.is_running():
                        print(f"ferry exited with code {thing.stop()}")
                else:
                    thing.stop()
                    print(f"{name} stopped")
            except Exception as e:  # noqa: BLE001 - stop the rest regardless
                print(f"stopping {name} failed: {e}", file=sys.stderr)

    def addr(self, name):
        return self.ferry.listener_addr(name)

    # -- showing
    def print_connect_help(self):
        pg_host, pg_port = self.addr("pg")
        my_host, my_port = self.addr("mysql")
        admin_host, admin_port = self.ferry.admin_addr()
        banner("connect through ferry")
        print(f"  PostgreSQL: PGPASSWORD={pg.TEST_PASSWORD} psql -h {pg_host} -p {pg_port} "
              f"-U {pg.TEST_USER} {pg.TEST_DB}")
        print(f"  MariaDB:    mariadb -h {my_host} -P {my_port} -u {mariadb.TEST_USER} "
              f"-p{mariadb.TEST_PASSWORD} {mariadb.TEST_DB}")
        print(f"  admin:      curl http://{admin_host}:{admin_port}/v1/status")
        print(f"  ferry log:  {self.ferry.log_path}")
        print(f"  backends:   pg region-a (primary) :{self.pg.primary.port}, "
              f"region-b (replica) :{self.pg.replica.port}; "
              f"mysql region-a :{self.my.primary.port}, region-b :{self.my.replica.port}")

    def step(self, title, fn):
        """Runs one demo step; a failure is reported and counted, not fatal."""
        banner(title)
        try:
            fn()
            print("-> ok")
        except Exception as e:  # noqa: BLE001 - the demo reports and goes on
            print(f"-> FAILED: {e}")
            self.failures.append(title)

    def cli(self, argv, env=None):
        res = subprocess.run(argv, env=proc.clean_env(**(env or {})), stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
        print("$ " + shlex.join(argv))
        print(res.stdout + res.stderr, end="")
        if res.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited with code {res.returncode}")

    def run_queries(self):
        pg_host, pg_port = self.addr("pg")
        my_host, my_port = self.addr("mysql")

        self.step("psql through ferry", lambda: self.cli(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", pg_host, "-p", str(pg_port),
             "-U", pg.TEST_USER, "-d", pg.TEST_DB, "-c",
             "SELECT current_user, current_database(), inet_server_port() AS backend_port, "
             "pg_is_in_recovery() AS in_recovery"],
            env={"PGPASSWORD": pg.TEST_PASSWORD, "PGCONNECT_TIMEOUT": "5"}))

        self.step("mariadb CLI through ferry", lambda: self.cli(
            ["mariadb", "--no-defaults", "--connect-timeout=5", "--table",
             "-h", my_host, "-P", str(my_port), "-u", mariadb.TEST_USER,
             f"-p{mariadb.TEST_PASSWORD}", mariadb.TEST_DB, "-e",
             "SELECT CURRENT_USER() AS user, DATABASE() AS db, @@port AS backend_port, "
             "@@server_id AS server_id, @@read_only AS read_only"]))

        self.step("psycopg through ferry: write, read back, see it on region-b", self.pg_roundtrip)
        self.step("PyMySQL through ferry: write, read back, see it on region-b",
                  self.mysql_roundtrip)

    def pg_roundtrip(self):
        host, port = self.addr("pg")
        token = uuid.uuid4().hex
        with psycopg.connect(host=host, port=port, user=pg.TEST_USER, password=pg.TEST_PASSWORD,
                             dbname=pg.TEST_DB, connect_timeout=5, autocommit=True) as conn:
            backend_port = conn.execute("SELECT inet_server_port()").fetchone()[0]
            conn.execute("CREATE TABLE IF NOT EXISTS demo_items (token text, at timestamptz)")
            conn.execute("INSERT INTO demo_items VALUES (%s, now())", (token,))
            count = conn.execute("SELECT count(*) FROM demo_items").fetchone()[0]
        print(f"backend port {backend_port}; demo_items now has {count} row(s)")
        self.expect_writer("pg", backend_port, self.pg)
        proc.wait_for(lambda: self.pg.replica.query(
            "SELECT 1 FROM demo_items WHERE token = %s", (token,), dbname=pg.TEST_DB),
            timeout=10, what="the row to reach region-b")
        print("row replicated to region-b")

    def mysql_roundtrip(self):
        host, port = self.addr("mysql")
        token = uuid.uuid4().hex
        conn = mariadb.connect(host, port)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@port")
                backend_port = cur.fetchone()[0]
                cur.execute("CREATE TABLE IF NOT EXISTS demo_items (token text, at datetime)")
                cur.execute("INSERT INTO demo_items VALUES (%s, now())", (token,))
                cur.execute("SELECT count(*) FROM demo_items")
                count = cur.fetchone()[0]
        finally:
            conn.close()
        print(f"backend port {backend_port}; demo_items now has {count} row(s)")
        self.expect_writer("mysql", backend_port, self.my)
        proc.wait_for(lambda: self.my.replica.query(
            f"SELECT 1 FROM {mariadb.TEST_DB}.demo_items WHERE token = %s", (token,)),
            timeout=10, what="the row to reach region-b")
        print("row replicated to region-b")

    @staticmethod
    def expect_writer(listener_name, backend_port, pair):
        if backend_port != pair.primary.port:
            raise RuntimeError(f"listener {listener_name} routed to port {backend_port}, "
                               f"expected the region-a writer on {pair.primary.port}")
        print(f"routed to region-a, the writer (port {backend_port})")

    def switchover_under_load(self):
        """A planned switchover of the pg listener half-way through a load:
        ferry pauses new transactions, the operator (here: this script)
        makes region-a read-only and promotes region-b once it has caught
        up, ferry moves every session to region-b and resumes."""
        host, port = self.addr("pg")
        drill.create_table(self.pg.primary, pg.TEST_DB, pg.TEST_USER)
        load = drill.PgLoad(pg.dsn(host, port)).start()
        print(f"load: {load.nwriters} writers (short INSERT+COMMIT transactions), "
              f"{load.nidle} idle pooled sessions, {load.nprepared} sessions with prepared "
              "statements")
        load.wait_for_acks(50)
        time.sleep(1.0)
        t0 = time.time()
        admin_host, admin_port = self.ferry.admin_addr()
        out = {}

        def switch():
            import urllib.request
            body = json.dumps({"to": "region-b", "listener": "pg", "timeout": 30}).encode()
            req = urllib.request.Request(f"http://{admin_host}:{admin_port}/v1/switchover",
                                         data=body, method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                out["answer"] = json.loads(r.read())

        t = threading.Thread(target=switch)
        t.start()
        # the switchover holds the listeners it switches (not a global pause)
        proc.wait_for(lambda: any(x["name"] == "pg" and x["holding"]
                                  for x in self.ferry.status()["listeners"]),
                      timeout=10, what="ferry to hold the pg listener")
        self.pg.primary.query("ALTER SYSTEM SET default_transaction_read_only = on")
        self.pg.primary.query("SELECT pg_reload_conf()")
        lsn = self.pg.primary.query("SELECT pg_current_wal_lsn()::text")[0][0]
        proc.wait_for(lambda: self.pg.replica.query(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))[0][0], timeout=30,
            what="region-b to catch up")
        self.pg.replica.promote()
        t.join(60)
        print(f"POST /v1/switchover: {out.get('answer')}")
        n = len(load.result.acked)
        load.wait_for_acks(n + 50)
        time.sleep(1.0)
        result = load.stop()
        status = self.ferry.status()
        switched = [h for h in status["discovery"]["history"] if h["to"] == "region-b"][-1]
        lost, stale = drill.check_writes(result, self.pg.replica, self.pg.primary, pg.TEST_DB,
                                         switched["at"])
        listener_status = [x for x in status["listeners"] if x["name"] == "pg"][0]

        banner("switchover timeline (pg listener)")
        for h in status["discovery"]["history"]:
            if h["listener"] == "pg":
                at = datetime.datetime.fromisoformat(h["at"].replace("Z", "+00:00")).timestamp()
                print(f"  {at - t0:+7.3f}s  writer {h['from']} -> {h['to']}: {h['reason']}")
        print(f"  longest wait between acknowledged writes: {result.window_ms():.0f} ms")
        print(f"  acknowledged writes: {len(result.acked)}; lost: {len(lost)}; "
              f"rows on the old writer after the switch: {stale}")
        for kind in ("writer", "idle", "prepared"):
            errs = result.errors_of(kind)
            print(f"  errors for {kind} sessions: {sum(errs.values())} {errs or ''}")
        print(f"  sessions moved to region-b without an error: {listener_status['sessions_moved']}")
        if lost or stale or result.errors_of("idle") or not out.get("answer", {}).get("ok"):
            raise RuntimeError("the switchover lost writes, wrote to the old writer, "
                               "or gave idle sessions an error")

    def print_topology(self):
        banner("discovered topology (GET /v1/status .discovery)")
        for entry in self.ferry.status()["discovery"]["listeners"]:
            print(f"  {entry['name']}: writer {entry['writer']} (generation {entry['generation']}: "
                  f"{entry['reason']})")
            for c in entry["clusters"]:
                print(f"    {c['name']:<9} {c['endpoint']:<16} {c['state']:<10} {c['detail']}")

    def print_status(self):
        banner("GET /v1/status")
        try:
            print(json.dumps(self.ferry.status(), indent=2))
        except Exception as e:  # noqa: BLE001
            print(f"-> FAILED: {e}")
            self.failures.append("/v1/status")

    def wait_for_ctrl_c(self):
        banner("ferry is up; press Ctrl-C to stop everything")
        while self.ferry.is_running():
            time.sleep(0.5)
        print(f"ferry exited on its own with code {self.ferry.proc.returncode}; log tail:")
        print(self.ferry.log_tail())
        return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true",
                        help="exit after the queries: 0 if all of them worked, 1 if not")
    args = parser.parse_args()
    proc.raise_on_termination_signals()   # SIGTERM shuts down like Ctrl-C

    demo = Demo()
    try:
        demo.start()
        demo.print_connect_help()
        demo.step("writer discovery", demo.print_topology)
        demo.run_queries()
        demo.step("planned switchover under load", demo.switchover_under_load)
        demo.print_status()
        if demo.failures:
            print(f"\n{len(demo.failures)} step(s) failed: {', '.join(demo.failures)}")
        if args.once:
            return 1 if demo.failures else 0
        return demo.wait_for_ctrl_c()
    except KeyboardInterrupt:
        banner("interrupted: shutting down")
        return 0 if not args.once else 130
    except (harness.HarnessError, TimeoutError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
