"""Fixtures for ferry's integration tests.

pg_pair and mariadb_pair are started once per session and always stopped;
tests that promote, demote or otherwise change roles should build their own
PgPair()/MariaDBPair() (with-statement) rather than reshape the shared ones.
When a test fails, the tail of every ferry log it produced (and of the server
logs it used) is added to its report.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import proc  # noqa: E402


def pytest_configure(config):
    # SIGTERM to pytest unwinds through fixture finalizers like Ctrl-C does.
    proc.raise_on_termination_signals()


@pytest.fixture(scope="session")
def pg_pair():
    pair = harness.PgPair().start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture(scope="session")
def mariadb_pair():
    pair = harness.MariaDBPair().start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def own_pg():
    """A PostgreSQL pair of the test's own, for tests that promote or stop servers."""
    with harness.PgPair() as pair:
        yield pair


@pytest.fixture
def own_mariadb():
    """A MariaDB pair of the test's own, for tests that switch roles."""
    with harness.MariaDBPair() as pair:
        yield pair


@pytest.fixture(scope="session")
def ferry_bin():
    """Path of the ferry binary; errors (not skips) when it is missing."""
    return harness.require_binary()


class FerryFactory:
    """ferry_factory(config, name="ferry", start=True) -> Ferry; every ferry
    made is stopped at teardown."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.created = []

    def __call__(self, config, name=None, start=True):
        ferry = harness.Ferry(config, self.tmp_path, name=name or f"ferry{len(self.created)}")
        self.created.append(ferry)
        if start:
            ferry.start()
        return ferry

    def stop_all(self):
        """Stops what still runs; every ferry must have exited 0 (a leak or
        undefined behaviour under the sanitizer build exits non-zero) and
        logged no sanitizer report."""
        errors = []
        for f in self.created:
            if f.proc is None:
                continue
            try:
                code = f.stop() if f.is_running() else f.proc.returncode
            except Exception as e:  # noqa: BLE001 - stop the others too
                errors.append(f"{f!r}: {e}")
                continue
            if code != 0:
                errors.append(f"{f!r} exited with {code}")
            log = f.log_text()
            for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if marker in log:
                    errors.append(f"{f!r} logged {marker!r}")
        if errors:
            pytest.fail("ferry did not stop cleanly: " + "; ".join(errors) +
                        "\n" + "\n".join(f.log_tail() for f in self.created))


@pytest.fixture
def ferry_factory(ferry_bin, tmp_path):
    factory = FerryFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    fixtures = getattr(item, "funcargs", {})
    factory = fixtures.get("ferry_factory")
    for f in (factory.created if factory else []):
        report.sections.append((f"ferry log {f.name} ({f.log_path}), last lines", f.log_tail()))
    for key in ("pg_pair", "mariadb_pair"):
        pair = fixtures.get(key)
        if pair is not None:
            for name, text in pair.log_tails().items():
                report.sections.append((f"{key} {name} log, last lines", text))
