"""The admin endpoint: health, readiness, status, and clean errors for
unknown paths and methods."""

import urllib.error
import urllib.request

import harness
from fronts import both, listener_status, pg_dsn


def test_endpoints(ferry_factory, pg_pair, mariadb_pair):
    ferry = ferry_factory(both(pg_pair, mariadb_pair))
    assert ferry.http_get("/healthz") == (200, "ok\n")
    assert ferry.http_get("/readyz") == (200, "ready\n")
    assert ferry.http_get("/nope")[0] == 404

    host, port = ferry.admin_addr()
    req = urllib.request.Request(f"http://{host}:{port}/v1/status", method="POST", data=b"{}")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("POST /v1/status was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405
        assert e.headers["Allow"] == "GET"

    harness.pg.run_query(pg_dsn(ferry), "SELECT 1")
    st = ferry.status()
    assert st["version"].startswith("0.")
    assert st["state"] == "running" and st["ready"] is True
    assert st["config_generation"] == 1
    assert st["config_path"] == ferry.config_path
    assert st["workers"] == 2
    assert [entry["name"] for entry in st["listeners"]] == ["pg", "my"]
    pg = listener_status(ferry, "pg")
    assert pg["protocol"] == "postgresql"
    assert pg["route"] == {"cluster": "region-a",
                           "endpoint": f"127.0.0.1:{pg_pair.primary.port}"}
    assert pg["clients_accepted_total"] == 1
    assert pg["bytes_from_clients_total"] > 0 and pg["bytes_from_servers_total"] > 0


def test_passwords_never_reach_the_log(ferry_factory, pg_pair, mariadb_pair):
    ferry = ferry_factory(both(pg_pair, mariadb_pair))
    harness.pg.run_query(pg_dsn(ferry), "SELECT 1")
    assert "ferry_pw" not in ferry.log_text()
