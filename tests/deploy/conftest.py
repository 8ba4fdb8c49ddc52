import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import deploylib  # noqa: E402


@pytest.fixture(scope="session")
def ferry_binary():
    path = deploylib.ferry_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"ferry binary {path} not found or not executable: build it "
                    f"(cmake -S . -B build && cmake --build build) or set FERRY_BIN")
    return path


@pytest.fixture(scope="session")
def dockerfile():
    return deploylib.load_dockerfile()


@pytest.fixture(scope="session")
def base_docs():
    return deploylib.base_docs()
