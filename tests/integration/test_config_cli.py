"""The binary's handling of bad configs and command lines: the message names
the file, the key path and the reason; the exit code is 2; nothing starts."""

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

import harness
from fronts import pg_dsn, pg_listener
from harness import cluster, listener, make_config
from harness.proc import wait_for

GOOD_LISTENER = {"name": "pg", "protocol": "postgresql", "bind": "127.0.0.1:16432",
                 "clusters": [{"name": "a", "endpoint": "127.0.0.1:5432"}]}


def doc(**changes):
    listener_ = dict(GOOD_LISTENER, **changes)
    return json.dumps({"listeners": [listener_]})


CASES = [
    ("invalid-json", '{"listeners": [\n  {"name": "pg",, }\n]}',
     "{path}:2:17: invalid JSON: string or '}}' expected near ','"),
    ("unknown-key", json.dumps({"listeners": [GOOD_LISTENER], "listner": []}),
     "{path}: listner: unknown key"),
    ("wrong-type", doc(max_client_connections="10"),
     "{path}: listeners[0].max_client_connections: expected an integer, got a string"),
    ("login-timeout-range", doc(client_login_timeout=0),
     "{path}: listeners[0].client_login_timeout: 0 seconds out of range 0.1..3600"),
    ("login-clients-range", doc(max_login_clients=0),
     "{path}: listeners[0].max_login_clients: 0 out of range 1..1000000"),
    ("login-per-source-type", doc(max_login_clients_per_source="64"),
     "{path}: listeners[0].max_login_clients_per_source: expected an integer, got a string"),
    ("port-range", doc(bind="127.0.0.1:70000"),
     "{path}: listeners[0].bind: port 70000 out of range"),
    ("no-clusters", doc(clusters=[]),
     "{path}: listeners[0].clusters: a listener needs at least one cluster"),
    ("duplicate-bind", json.dumps({"listeners": [GOOD_LISTENER, dict(GOOD_LISTENER, name="pg2")]}),
     "{path}: listeners[1].bind: duplicate bind address (listeners[0] binds 127.0.0.1:16432)"),
    ("idle-timeout-range", doc(client_idle_timeout=-1),
     "{path}: listeners[0].client_idle_timeout: -1 seconds out of range 0..604800"),
    ("idle-timeout-fraction", doc(client_idle_timeout=0.5),
     "{path}: listeners[0].client_idle_timeout: 0.5 seconds: 0 turns it off, else at least 1 "
     "(idle sessions are looked at once a second)"),
    ("keepalive-type", doc(server_tcp_keepalive="yes"),
     "{path}: listeners[0].server_tcp_keepalive: expected true, false or an object of idle, "
     "interval, count; got a string"),
    ("keepalive-count", doc(server_tcp_keepalive={"idle": 5, "count": 200}),
     "{path}: listeners[0].server_tcp_keepalive.count: 200 out of range 1..127"),
    ("keepalive-zero", doc(client_tcp_keepalive={"interval": 0}),
     "{path}: listeners[0].client_tcp_keepalive.interval: 0 out of range 1..32767"),
    ("keepalive-unknown", doc(client_tcp_keepalive={"idel": 5}),
     "{path}: listeners[0].client_tcp_keepalive.idel: unknown key"),
    ("user-timeout-range", doc(server_tcp_user_timeout=5000),
     "{path}: listeners[0].server_tcp_user_timeout: 5000 seconds out of range 0..3600"),
    ("admin-open", json.dumps({"admin": {"bind": "0.0.0.0:19187"}, "listeners": [GOOD_LISTENER]}),
     "{path}: admin.bind: 0.0.0.0:19187 is not a loopback address and no admin token is set: "
     "whoever reaches it could POST /v1/pause, /v1/switchover, /v1/reload; set admin.token_file "
     "or admin.token_env (or, knowingly, admin.allow_unauthenticated_writes: true)"),
    ("admin-open-type", json.dumps({"admin": {"bind": "127.0.0.1:19187",
                                              "allow_unauthenticated_writes": "yes"},
                                    "listeners": [GOOD_LISTENER]}),
     "{path}: admin.allow_unauthenticated_writes: expected a boolean, got a string"),
]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("name, text, message", CASES, ids=[c[0] for c in CASES])
def test_bad_config(tmp_path, command, name, text, message):
    path = tmp_path / "ferry.json"
    path.write_text(text)
    res = subprocess.run([harness.require_binary(), command, "-c", str(path)],
                         capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert res.stderr.strip() == "ferry: " + message.format(path=path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    code, out, err = harness.check(str(path))
    assert code == 2
    assert err.strip() == f"ferry: {path}: cannot open: No such file or directory"


def test_valid_config(pg_pair):
    cfg = make_config(listener("pg", "postgresql", [cluster("a", pg_pair.primary, writer=True)]),
                      workers=3)
    code, out, err = harness.check(cfg)
    assert code == 0, err
    assert out.strip().endswith(": ok (1 listener, 3 workers)")


@pytest.mark.parametrize("argv, code", [
    ([], 2), (["run"], 2), (["frobnicate"], 2), (["version"], 0), (["--help"], 0)])
def test_command_line(argv, code):
    res = subprocess.run([harness.require_binary(), *argv], capture_output=True, text=True,
                         timeout=10, stdin=subprocess.DEVNULL)
    assert res.returncode == code
    if argv == ["version"]:
        assert res.stdout.startswith("ferry 0.")
    if code == 2:
        assert "usage: ferry" in res.stderr


def test_run_fails_cleanly_when_address_is_taken(tmp_path, pg_pair):
    import socket
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        port = blocker.getsockname()[1]
        cfg = make_config(listener("pg", "postgresql", [cluster("a", pg_pair.primary)], port=port))
        path = harness.ferry.write_config(cfg, str(tmp_path / "ferry.json"))
        res = subprocess.run([harness.require_binary(), "run", "-c", path], capture_output=True,
                             text=True, timeout=10, stdin=subprocess.DEVNULL)
        assert res.returncode == 1
        assert (f"ferry: listeners[0] (pg): 127.0.0.1:{port} is already in use by another process"
                in res.stderr.splitlines())
    finally:
        blocker.close()


def test_a_wildcard_bind_over_a_taken_address_exits(tmp_path, pg_pair):
    """0.0.0.0:P covers 127.0.0.1:P: another process listening on the latter
    makes the wildcard bind overlap it, and ferry says so."""
    import socket
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        port = blocker.getsockname()[1]
        cfg = make_config(listener("pg", "postgresql", [cluster("a", pg_pair.primary)], port=port,
                                   host="0.0.0.0"))
        res = run_briefly(harness.ferry.write_config(cfg, str(tmp_path / "ferry.json")))
        assert res.returncode == 1
        assert (f"ferry: listeners[0] (pg): 0.0.0.0:{port} is already in use by another process"
                in res.stderr.splitlines()), res.stderr
    finally:
        blocker.close()


def run_briefly(path, timeout=10):
    return subprocess.run([harness.require_binary(), "run", "-c", path], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_second_ferry_on_the_same_address_exits(ferry_factory, pg_pair, tmp_path):
    """Listeners share their port with SO_REUSEPORT (workers, reloads): a second
    ferry given the same config would take a share of the clients unseen. It
    refuses to start, naming the listener and the address; the first serves on."""
    first = ferry_factory(make_config(pg_listener(pg_pair), workers=2))
    host, port = first.listener_addr("pg")
    own_admin = dict(first.config, admin={"bind": f"127.0.0.1:{harness.ports.free_port()}"})
    second = harness.ferry.write_config(own_admin, str(tmp_path / "second.json"))
    res = run_briefly(second)
    assert res.returncode == 1, res.stderr
    assert (f"ferry: listeners[0] (pg): {host}:{port} is already in use by another process"
            in res.stderr.splitlines()), res.stderr
    # every new connection still reaches the first ferry (none to a half-started second)
    for _ in range(8):
        conn = harness.pg.connect(pg_dsn(first))
        conn.close()
    assert first.is_running() and first.http_get("/readyz")[0] == 200


def test_second_ferry_on_the_same_admin_address_exits(ferry_factory, pg_pair, tmp_path):
    first = ferry_factory(make_config(pg_listener(pg_pair), workers=1))
    admin_host, admin_port = first.admin_addr()
    cfg = make_config(pg_listener(pg_pair), workers=1)
    cfg["admin"] = dict(first.config["admin"])
    res = run_briefly(harness.ferry.write_config(cfg, str(tmp_path / "second.json")))
    assert res.returncode == 1, res.stderr
    assert (f"ferry: admin.bind: {admin_host}:{admin_port} is already in use by another process"
            in res.stderr.splitlines()), res.stderr
    assert first.http_get("/readyz")[0] == 200


def test_reload_checks_only_addresses_it_does_not_hold(ferry_factory, pg_pair):
    """A reload rebuilds a listener on an address ferry already holds (here:
    renamed, same bind) without tripping over itself; a new address another
    process holds fails the reload, and the running config stays."""
    import socket
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=2))
    renamed = dict(ferry.config, listeners=[dict(ferry.config["listeners"][0], name="pg2")])
    ferry.reload(renamed)
    wait_for(lambda: ferry.status()["config_generation"] == 2, timeout=10, what="generation 2")
    harness.pg.connect(pg_dsn(ferry, "pg2")).close()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    try:
        port = blocker.getsockname()[1]
        taken = pg_listener(pg_pair, name="pg3", bind=f"127.0.0.1:{port}")
        ferry.reload(dict(renamed, listeners=renamed["listeners"] + [taken]))
        wait_for(lambda: "event=config.reload_failed" in ferry.log_text(), timeout=10,
                 what="config.reload_failed")
        line = [x for x in ferry.log_text().splitlines() if "config.reload_failed" in x][0]
        assert f"listeners[1] (pg3): 127.0.0.1:{port} is already in use by another process" in line
        assert ferry.status()["config_generation"] == 2
    finally:
        blocker.close()


SECRET = "Hunter2x"
# (what replaces the password's JSON string, reason jansson gives)
BROKEN_SECRETS = [
    (f'"{SECRET}\n"', "unexpected newline"),                # unterminated on its line
    (f'"{SECRET}\\q"', "invalid escape"),
    (f'"{SECRET}\\u12"', "invalid escape"),
    (f'"{SECRET}\\ud800"', "invalid Unicode"),
    (f'{SECRET}', "invalid token"),                        # quotes forgotten
]


def broken_secret_config(pg_pair, where, bad):
    """A config whose user password (where="user") or probe password
    (where="probe") is `bad`, as JSON text."""
    if where == "user":
        lst = pg_listener(pg_pair, auth={"mode": "terminated",
                                         "users": [{"name": "ferry_test", "password": "@@@"}]})
    else:
        lst = pg_listener(pg_pair, probe={"user": "ferry_test", "password": "@@@"})
    return json.dumps(make_config(lst, workers=1), indent=2).replace('"@@@"', bad)


def secret_error(path, reason):
    return re.compile(rf"^{re.escape(str(path))}:\d+:\d+: invalid JSON: {reason} "
                      r"\(in a secret value, not shown\)$")


@pytest.mark.parametrize("where", ["user", "probe"])
@pytest.mark.parametrize("bad, reason", BROKEN_SECRETS, ids=[r for _, r in BROKEN_SECRETS])
def test_check_never_quotes_a_secret(tmp_path, pg_pair, where, bad, reason):
    path = tmp_path / "ferry.json"
    path.write_text(broken_secret_config(pg_pair, where, bad))
    code, out, err = harness.check(str(path))
    assert code == 2
    assert secret_error(path, reason).match(err.strip()[len("ferry: "):]), err
    assert SECRET[:4] not in err and SECRET not in out


def test_check_still_quotes_other_values(tmp_path):
    path = tmp_path / "ferry.json"
    path.write_text('{"listeners": [{"name": "pg\\q"}]}')
    code, _, err = harness.check(str(path))
    assert code == 2 and err.strip().endswith("invalid JSON: invalid escape near '\"pg\\q'")


@pytest.mark.parametrize("bad, reason", BROKEN_SECRETS[:2], ids=[r for _, r in BROKEN_SECRETS[:2]])
def test_reload_never_quotes_a_secret(ferry_factory, pg_pair, bad, reason):
    """SIGHUP and POST /v1/reload of a file broken inside a password: the log
    line and the 422 answer name file, line, column and reason, not the text."""
    ferry = ferry_factory(make_config(pg_listener(pg_pair), workers=1))
    with open(ferry.config_path, "w") as f:
        f.write(broken_secret_config(pg_pair, "user", bad))
    ferry.signal(signal.SIGHUP)
    wait_for(lambda: "event=config.reload_failed" in ferry.log_text(), timeout=10,
             what="config.reload_failed in the log")
    line = [x for x in ferry.log_text().splitlines() if "config.reload_failed" in x][0]
    m = re.search(r'error="([^"]*)"', line)
    assert m and secret_error(ferry.config_path, reason).match(m.group(1)), line
    host, port = ferry.admin_addr()
    req = urllib.request.Request(f"http://{host}:{port}/v1/reload", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 422
    body = json.loads(e.value.read())
    assert body["ok"] is False and secret_error(ferry.config_path, reason).match(body["message"])
    assert SECRET[:4] not in ferry.log_text()
    assert ferry.status()["config_generation"] == 1


COMMANDS = ["run", "check", "discover", "ctl", "version"]


def ferry_cli(*argv, env=None):
    return subprocess.run([harness.require_binary(), *argv], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL, env=env)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_help(command):
    for flag in ("--help", "-h"):
        res = ferry_cli(command, flag)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"usage: ferry {command}"), res.stdout
        assert "--help" in res.stdout and not res.stderr
    overview = ferry_cli("--help")
    assert overview.returncode == 0 and f"ferry {command}" in overview.stdout
    assert "ferry COMMAND --help" in overview.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option_is_named_and_exits_2(command, tmp_path):
    config = [] if command == "version" else ["-c", str(tmp_path / "ferry.json")]
    res = ferry_cli(command, *config, "--frobnicate")
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == f"ferry: {command}: unknown option --frobnicate", res.stderr
    assert f"usage: ferry {command}" in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["run"], "ferry: run: needs -c FILE"),
    (["check", "-c"], "ferry: check: -c needs a FILE"),
    (["discover", "-c", "x.json", "extra"], "ferry: discover: unexpected argument extra"),
    (["run", "-c", "x.json", "--json"], "ferry: run: unknown option --json"),
    (["ctl"], "ferry: ctl: needs a command"),
    (["ctl", "statuz"], 'ferry: ctl: unknown command "statuz"'),
    (["ctl", "status", "--admin"], "ferry: ctl: --admin needs a value"),
    (["ctl", "switchover"], "ferry: ctl: switchover needs a CLUSTER"),
])
def test_usage_errors_say_what_is_wrong(argv, message):
    res = ferry_cli(*argv)
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == message, res.stderr


def test_version_json_has_build_info():
    plain = ferry_cli("version")
    res = ferry_cli("version", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert plain.stdout.startswith(f"ferry {doc['version']} ")
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?|unknown", doc["git_commit"]), doc
    libs = doc["libraries"]
    assert set(libs) == {"libuv", "openssl", "libpq", "mariadb_connector_c", "jansson",
                         "libmicrohttpd", "libcurl", "libxml2"}
    assert all(re.search(r"\d+\.\d+", v) for v in libs.values()), libs
    assert f"libuv {libs['libuv']}" in plain.stdout
    assert libs["openssl"].startswith("OpenSSL 3")


def test_ctl_reads_only_the_admin_section(ferry_factory, pg_pair, tmp_path, monkeypatch):
    """`ferry ctl -c` needs the admin address and token, not the listeners'
    passwords: a config whose password variables are unset in ctl's
    environment (they are in ferry's) still drives ferry."""
    token_file = tmp_path / "token"
    token_file.write_text("ctl-token-0123456789abcdef\n")
    users = [{"name": "ferry_test", "password_env": "FERRY_TEST_CTL_PW"}]
    cfg = make_config(pg_listener(pg_pair, auth={"mode": "terminated", "users": users}), workers=1)
    cfg["admin"]["token_file"] = str(token_file)
    monkeypatch.setenv("FERRY_TEST_CTL_PW", "ferry_pw")
    ferry = ferry_factory(cfg)
    without = {k: v for k, v in os.environ.items() if k != "FERRY_TEST_CTL_PW"}
    res = ferry_cli("ctl", "status", "-c", ferry.config_path, env=without)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ferry 0.") and "state running" in res.stdout
    res = ferry_cli("ctl", "reload", "-c", ferry.config_path, env=without)   # POST: the token
    assert res.returncode == 0, res.stderr
    bad = dict(cfg, admin=dict(cfg["admin"], bind=None))
    path = harness.ferry.write_config(bad, str(tmp_path / "noadmin.json"))
    res = ferry_cli("ctl", "status", "-c", path, env=without)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"ferry: ctl: {path}: admin.bind is null: "
                                  "that ferry has no admin endpoint")


@pytest.mark.parametrize("admin, allowed", [
    ({"bind": "127.0.0.2:{port}"}, True),
    ({"bind": "[::1]:{port}"}, True),
    ({"bind": "localhost:{port}"}, True),
    ({"bind": None}, True),
    ({"bind": "0.0.0.0:{port}", "token_env": "FERRY_TEST_ADMIN_TOKEN"}, True),
    ({"bind": "0.0.0.0:{port}"}, False),
    ({"bind": "[::]:{port}"}, False),
    ({"bind": "0.0.0.0:{port}", "allow_unauthenticated_writes": False}, False),
])
def test_admin_beyond_loopback_needs_a_token(tmp_path, pg_pair, monkeypatch, admin, allowed):
    monkeypatch.setenv("FERRY_TEST_ADMIN_TOKEN", "admin-token-0123456789")
    admin = {k: (v.format(port=harness.ports.free_port()) if isinstance(v, str) else v)
             for k, v in admin.items()}
    cfg = make_config(pg_listener(pg_pair), workers=1, admin=admin)
    code, out, err = harness.check(cfg)
    if allowed:
        assert code == 0, err
        assert "allow_unauthenticated_writes" not in err
    else:
        assert code == 2 and "is not a loopback address and no admin token is set" in err, err


def test_allow_unauthenticated_writes_is_a_logged_choice(ferry_factory, pg_pair):
    port = harness.ports.free_port()
    cfg = make_config(pg_listener(pg_pair), workers=1,
                      admin={"bind": f"0.0.0.0:{port}", "allow_unauthenticated_writes": True})
    code, _, err = harness.check(cfg)
    assert code == 0, err
    assert (f"ferry: warning: admin.bind 0.0.0.0:{port}: admin.allow_unauthenticated_writes: "
            "whoever reaches the admin endpoint can pause, switch over and reload ferry"
            in err.splitlines()), err
    ferry = ferry_factory(dict(cfg, admin=dict(cfg["admin"], bind=f"127.0.0.1:{port}")))
    assert "config.admin_unauthenticated" not in ferry.log_text()      # loopback: nothing to say
    ferry.stop()
    ferry = ferry_factory(cfg, name="open")
    line = [x for x in ferry.log_text().splitlines() if "event=config.admin_unauthenticated" in x]
    assert line and "level=warn" in line[0] and f"bind=0.0.0.0:{port}" in line[0], ferry.log_tail()
