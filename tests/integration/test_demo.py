"""The README's first command, scripted: the demo brings up its own servers
and ferry, runs queries through both listeners and exits 0 with --once."""

import os
import re
import subprocess
import sys

import harness

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_once():
    res = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "scripts", "demo.py"), "--once"],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, FERRY_BIN=harness.ferry_bin()))
    sys.stdout.write(res.stdout[-4000:])
    assert res.returncode == 0, res.stderr[-4000:]
    assert "psql -h 127.0.0.1 -p" in res.stdout
    assert "mariadb -h 127.0.0.1 -P" in res.stdout
    assert '"config_generation": 1' in res.stdout
    assert "pg: writer region-a (generation " in res.stdout
    assert "mysql: writer region-a" in res.stdout
    assert re.search(r"writer (region-a|none) -> region-b: ", res.stdout)
    assert "lost: 0; rows on the old writer after the switch: 0" in res.stdout
    assert "errors for idle sessions: 0" in res.stdout
