"""The binary's handling of bad configs and command lines: the message names
the file, the key path and the reason; the exit code is 2; nothing starts."""

import json
import subprocess

import pytest

import harness
from harness import cluster, listener, make_config

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
    ("port-range", doc(bind="127.0.0.1:70000"),
     "{path}: listeners[0].bind: port 70000 out of range"),
    ("no-clusters", doc(clusters=[]),
     "{path}: listeners[0].clusters: a listener needs at least one cluster"),
    ("duplicate-bind", json.dumps({"listeners": [GOOD_LISTENER, dict(GOOD_LISTENER, name="pg2")]}),
     "{path}: listeners[1].bind: duplicate bind address (listeners[0] binds 127.0.0.1:16432)"),
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
        assert f"127.0.0.1:{port}: bind: Address already in use" in res.stderr
    finally:
        blocker.close()
