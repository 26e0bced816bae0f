"""flowattr's attribution job. `make` compiles its per-record modules (setup.py); with DATAFLOW_PURE=1 in
the environment they are imported from their Python source instead: the reference the property tests
also run, and the build to read in a debugger."""

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

PURE = os.environ.get("DATAFLOW_PURE") == "1"


class SourceFirst(importlib.abc.MetaPathFinder):
    """Finds this package's modules as their .py files, ahead of the compiled modules beside them."""

    def find_spec(self, name, path, target=None):
        if name.startswith(f"{__name__}."):
            source = Path(__file__).parent / f"{name.removeprefix(__name__ + '.')}.py"
            if source.exists():
                return importlib.util.spec_from_file_location(name, source)
        return None


if PURE:
    sys.meta_path.insert(0, SourceFirst())
