"""The job's per-record modules compiled to C extension modules (Cython, from the same Python source,
with the C types its .pxd files declare beside each module), built by `pip install` and by `make`; the
source stays the reference that the property tests also run as plain Python
(tests/unit/test_compiled_core.py)."""

from Cython.Build import cythonize
from setuptools import setup

# The modules every flow passes through: routing, the shard, its packed holdings, clocks, ranges, and the
# writers of answers. Not dataflow/flow.py: `python -m bytewax.run` accepts a dataflow factory only as a
# plain Python function. Profiling hooks stay in (they cost nothing measurable until a profiler runs) so
# that `make bench` can still say where the time goes.
CORE = ("routing", "attribution", "packed", "clock", "ownership", "file_io", "publish")

setup(
    ext_modules=cythonize(
        [f"dataflow/{name}.py" for name in CORE],
        build_dir=".build/cython",
        compiler_directives={"language_level": 3, "annotation_typing": False, "profile": True},
        quiet=True,
    )
)
