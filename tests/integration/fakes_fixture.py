"""Fixtures for the fake AWS endpoint (tests/fakes/fake_aws.py) and the
aws_probe driver binary. Import the fixtures into a test module:

    from fakes_fixture import fake_aws, aws_probe  # noqa: F401

The probe binary is $FERRY_AWS_PROBE, else discovery/aws/aws_probe next to
$FERRY_BIN's build directory, else <repo>/build/discovery/aws/aws_probe.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "fakes"))

import fake_aws as fake_aws_module  # noqa: E402

from harness.proc import HarnessError  # noqa: E402

PROBE_TIMEOUT = 60          # seconds; every probe run is bounded
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def probe_bin():
    if os.environ.get("FERRY_AWS_PROBE"):
        return os.environ["FERRY_AWS_PROBE"]
    if os.environ.get("FERRY_BIN"):
        return str(Path(os.environ["FERRY_BIN"]).parent / "discovery" / "aws" / "aws_probe")
    return str(REPO_ROOT / "build" / "discovery" / "aws" / "aws_probe")


class ProbeResult:
    def __init__(self, proc):
        self.returncode = proc.returncode
        self.stderr = proc.stderr
        self.calls = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

    @property
    def call(self):
        assert len(self.calls) == 1, f"expected one call, got {self.calls!r}\n{self.stderr}"
        return self.calls[0]


class Probe:
    """aws_probe(args, env=None) runs the driver against the fake with a clean
    environment (nothing AWS_* leaks in from the caller) and returns a
    ProbeResult; it fails the test on any sanitizer report."""

    def __init__(self, path, fake):
        self.path, self.fake = path, fake

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AWS_") and k not in ("http_proxy", "https_proxy",
                                                          "HTTP_PROXY", "HTTPS_PROXY")}
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def static_env(self, secret=fake_aws_module.STATIC_SECRET):
        return self.env(AWS_ACCESS_KEY_ID=fake_aws_module.STATIC_AKID,
                        AWS_SECRET_ACCESS_KEY=secret)

    def __call__(self, *args, env=None, region="us-east-1", backoff_ms=20, timeout_ms=3000):
        cmd = [self.path, "--region", region, "--rds-endpoint", self.fake.url,
               "--monitoring-endpoint", self.fake.url, "--backoff-ms", str(backoff_ms),
               "--timeout-ms", str(timeout_ms), *args]
        proc = subprocess.run(cmd, env=env if env is not None else self.static_env(),
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        for marker in SANITIZER_MARKERS:
            if marker in proc.stderr:
                pytest.fail(f"aws_probe logged {marker!r}:\n{proc.stderr}")
        if proc.returncode not in (0, 1):
            pytest.fail(f"aws_probe exited {proc.returncode}:\n{proc.stderr}")
        return ProbeResult(proc)


@pytest.fixture
def fake_aws():
    fake = fake_aws_module.FakeAWS().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def aws_probe(fake_aws):
    path = probe_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError(f"aws_probe binary {path} not found: build it with "
                           f"`cmake --build build`, or set FERRY_AWS_PROBE")
    return Probe(path, fake_aws)
