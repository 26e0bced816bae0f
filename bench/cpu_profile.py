"""`python -m bench.cpu_profile OUT MODULE [ARG ...]`: runs MODULE as `python -m MODULE ARG ...` would,
under cProfile timed by the process's CPU clock, and writes the stats to OUT when it ends.

`python -m cProfile` times by the wall clock: a job that spends minutes waiting for its arrival clock
would show that wait as time spent in the runtime, and the shares of a profile would not be shares of
what the job costs. The CPU clock counts every thread of the process, so what the Kafka clients' own
threads spend is charged to whatever the worker is doing meanwhile, mostly the runtime's own loop."""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def profile_module(out: str, module: str, args: list[str]) -> None:
    sys.argv = [module, *args]
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    profile_module(sys.argv[1], sys.argv[2], sys.argv[3:])
