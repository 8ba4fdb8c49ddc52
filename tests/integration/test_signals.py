"""What ferry tells its operator: errors counted by cause, the metrics page in
the exposition format Prometheus's own checker accepts, numbers written in
their shortest form."""

import json
import re
import shutil
import subprocess

import psycopg2
import pymysql
import pytest

import harness
from fronts import both, listener_status, my_connect, pg_dsn
from harness.proc import wait_for
from test_ops import metric, parse_metrics


def errors(ferry, listener):
    m = parse_metrics(ferry.http_get("/metrics")[1])
    return {cls: metric(m, "ferry_errors_total", **{"listener": listener, "class": cls})
            for cls in ("auth", "backend_refused", "failover")}


def login_refused_line(ferry, code):
    lines = [x for x in ferry.log_text().splitlines()
             if "event=session.login_refused" in x and f'code="{code}"' in x]
    return lines[0] if lines else None


def wait_counted(ferry, listener, cls, n=1):
    wait_for(lambda: errors(ferry, listener)[cls] == n, timeout=10,
             what=f"ferry_errors_total{{class={cls}}} == {n}")


@pytest.fixture
def passthrough(ferry_factory, pg_pair, mariadb_pair):
    return ferry_factory(both(pg_pair, mariadb_pair))


def test_pg_wrong_password_in_passthrough_is_auth_not_failover(passthrough):
    ferry = passthrough
    with pytest.raises(psycopg2.OperationalError) as e:
        harness.pg.connect(pg_dsn(ferry, password="wrong"))
    assert "password authentication failed" in str(e.value)     # the server's own error
    wait_counted(ferry, "pg", "auth")
    assert errors(ferry, "pg") == {"auth": 1, "backend_refused": 0, "failover": 0}
    line = login_refused_line(ferry, "28P01")
    assert line and "class=auth" in line and "listener=pg" in line, ferry.log_tail()
    assert 'message="password authentication failed for user \\"ferry_test\\""' in line
    assert "in flight" not in ferry.log_text() and "outcome is unknown" not in ferry.log_text()
    assert listener_status(ferry, "pg")["auth_failures_total"] == 1


def test_pg_unknown_database_in_passthrough_is_backend_refused(passthrough):
    ferry = passthrough
    with pytest.raises(psycopg2.OperationalError) as e:
        harness.pg.connect(pg_dsn(ferry, dbname="no_such_db"))
    assert "does not exist" in str(e.value)
    wait_counted(ferry, "pg", "backend_refused")
    assert errors(ferry, "pg") == {"auth": 0, "backend_refused": 1, "failover": 0}
    line = login_refused_line(ferry, "3D000")
    assert line and "class=backend_refused" in line, ferry.log_tail()
    assert listener_status(ferry, "pg")["backend_refused_total"] == 1


def test_mysql_wrong_password_in_passthrough_is_auth(passthrough):
    ferry = passthrough
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry, password="wrong")
    assert e.value.args[0] == 1045
    wait_counted(ferry, "my", "auth")
    assert errors(ferry, "my") == {"auth": 1, "backend_refused": 0, "failover": 0}
    line = login_refused_line(ferry, "1045")
    assert line and "class=auth" in line and "listener=my" in line, ferry.log_tail()
    assert 'message="Access denied for user' in line


def test_mysql_unknown_database_in_passthrough_is_backend_refused(passthrough):
    ferry = passthrough
    with pytest.raises(pymysql.err.OperationalError) as e:
        my_connect(ferry, database="no_such_db")
    code = e.value.args[0]
    assert code in (1044, 1049)     # no access to it (SQLSTATE 42000) / unknown: not the password
    wait_counted(ferry, "my", "backend_refused")
    assert errors(ferry, "my") == {"auth": 0, "backend_refused": 1, "failover": 0}
    assert "class=backend_refused" in (login_refused_line(ferry, code) or ""), ferry.log_tail()


def promtool():
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/install-deps.sh installs Debian's prometheus package"
    return path


def test_metrics_page_passes_promtool(passthrough):
    ferry = passthrough
    harness.pg.run_query(pg_dsn(ferry), "SELECT 1")
    text = ferry.http_get("/metrics")[1]
    res = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), \
        res.stdout + res.stderr
    m = parse_metrics(text)
    assert metric(m, "ferry_sessions_moved_total", listener="pg") == 0
    assert metric(m, "ferry_sessions_move_failed_total", listener="my") == 0
    assert metric(m, "process_cpu_seconds_total") > 0
    assert metric(m, "process_resident_memory_bytes") > 1 << 20
    assert metric(m, "process_open_fds") > 0
    assert metric(m, "process_max_fds") >= metric(m, "process_open_fds")
    with open(f"/proc/{ferry.pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = int(next(x for x in f if x.startswith("btime")).split()[1])
    assert abs(metric(m, "process_start_time_seconds") - (btime + ticks / 100)) < 5
    assert not any(name.startswith("ferry_process_") for name, _ in m)


REAL = re.compile(r'(?<![\w."])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w."])')


def digits(token):
    """The significant digits of a decimal number token."""
    mantissa = re.split(r"[eE]", token.lstrip("-"))[0].replace(".", "")
    return mantissa.strip("0") or "0"


def assert_shortest(text):
    reals = [t for t in REAL.findall(text) if "." in t or "e" in t.lower()]
    assert reals
    for token in reals:
        assert digits(token) == digits(repr(float(token))), \
            f"{token} is not the shortest form of {float(token)!r}"


def test_numbers_are_written_shortest(passthrough):
    """%.17g writes 0.1 as 0.10000000000000001: every real on /metrics and
    /v1/status has exactly the digits of the shortest round-trip form."""
    ferry = passthrough
    for _ in range(5):      # different uptimes: most thousandths need 17 digits in %.17g
        body = ferry.http_get("/v1/status")[1]
        json.loads(body)
        assert_shortest(body)
        metrics = "\n".join(x for x in ferry.http_get("/metrics")[1].splitlines()
                            if not x.startswith("#"))
        assert_shortest(" ".join(x.rsplit(" ", 1)[1] for x in metrics.splitlines()))
