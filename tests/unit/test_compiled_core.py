"""The per-record modules run compiled (setup.py), and their Python source, the reference, passes the
same property and logic tests: the two builds answer alike because both pass them."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataflow import PURE

REPO = Path(__file__).resolve().parents[2]
# The tests that pin down what the shard decides, over random and hostile evidence.
REFERENCE_TESTS = (
    "tests/unit/test_never_misattributes.py", "tests/unit/test_attribution.py", "tests/unit/test_shard_logic.py",
    "tests/unit/test_packed.py", "tests/unit/test_clock.py", "tests/unit/test_ownership.py",
    "tests/unit/test_routing.py", "tests/unit/test_compiled_core.py",
)


def compiled_modules() -> tuple[str, ...]:
    tree = ast.parse((REPO / "setup.py").read_text())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and node.targets[0].id == "CORE")


def test_each_per_record_module_runs_the_build_this_run_asked_for():
    names = compiled_modules()
    assert "attribution" in names and "routing" in names
    for name in names:
        path = importlib.import_module(f"dataflow.{name}").__file__
        assert path.endswith(".py" if PURE else ".so"), f"dataflow.{name} ran from {path}"


@pytest.mark.skipif(PURE, reason="this is the reference run itself")
def test_the_python_source_passes_the_property_and_logic_tests():
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *REFERENCE_TESTS],
                         cwd=REPO, env=os.environ | {"DATAFLOW_PURE": "1"}, capture_output=True, text=True, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
