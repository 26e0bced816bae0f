"""Shared by every test folder: the fault tests' figures (tests/reliability.py), and which build of the
per-record modules the tests run: the compiled one that `make` builds (setup.py), or with DATAFLOW_PURE=1
their Python source, the reference (tests/unit/test_compiled_core.py runs the property tests so)."""

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.reliability import Figures

PACKAGE = Path(__file__).resolve().parent.parent / "dataflow"
PURE = os.environ.get("DATAFLOW_PURE") == "1"


class SourceFirst(importlib.abc.MetaPathFinder):
    """Finds dataflow's modules as their .py files, ahead of the compiled modules beside them."""

    def find_spec(self, name, path, target=None):
        if name.startswith("dataflow."):
            source = PACKAGE / f"{name.removeprefix('dataflow.')}.py"
            if source.exists():
                return importlib.util.spec_from_file_location(name, source)
        return None


if PURE:
    sys.meta_path.insert(0, SourceFirst())


def pytest_configure(config):
    # A compiled module shadows its source: tests of an edited source must not run its old build.
    sources = {so: PACKAGE / f"{so.name.split('.')[0]}.py" for so in PACKAGE.glob("*.so")}
    stale = [f"dataflow/{py.name}" for so, py in sources.items() if py.stat().st_mtime > so.stat().st_mtime]
    if stale and not PURE:
        pytest.exit(f"the source of {', '.join(sorted(stale))} changed since it was compiled: run `make core`", returncode=4)


@pytest.fixture(scope="session")
def figures():
    collected = Figures()
    yield collected
    collected.save()
