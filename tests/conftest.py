"""Shared by every test folder: the fault tests' figures (tests/reliability.py), and which build of the
per-record modules the tests run: the compiled one that `make` builds (setup.py), or with DATAFLOW_PURE=1
their Python source, the reference (dataflow/__init__.py; tests/unit/test_compiled_core.py runs the
property tests so)."""

from pathlib import Path

import pytest

from dataflow import PURE
from tests.reliability import Figures

PACKAGE = Path(__file__).resolve().parent.parent / "dataflow"


def pytest_configure(config):
    # A compiled module shadows its source: tests of an edited source (or of its C declarations) must not
    # run its old build.
    stale = [f"dataflow/{source.name}" for so in PACKAGE.glob("*.so")
             for source in (PACKAGE / f"{so.name.split('.')[0]}.py", PACKAGE / f"{so.name.split('.')[0]}.pxd")
             if source.exists() and source.stat().st_mtime > so.stat().st_mtime]
    if stale and not PURE:
        pytest.exit(f"the source of {', '.join(sorted(stale))} changed since it was compiled: run `make core`", returncode=4)


@pytest.fixture(scope="session")
def figures():
    collected = Figures()
    yield collected
    collected.save()
