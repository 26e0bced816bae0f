"""`make bench` for the job: one broker and one simulated fleet loaded once, then each benchmark in
turn (throughput, ceilings, scale out, memory, the sustained run), each writing out/bench/NAME.json.

    .venv/bin/python -m bench.run            # the whole run
    .venv/bin/python -m bench.run --quick    # a smaller fleet, a short sustained run, to try it out
    .venv/bin/python -m bench.run --only memory,sustained   # some of them again, after a change
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import ceilings, fleet, memory, scale_out, sustained, throughput
from bench.harness import guarded, save

BENCHMARKS = ["throughput", "ceilings", "scale_out", "memory", "sustained"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each throughput figure; the median is kept")
    parser.add_argument("--sustained-s", type=int, default=480, help="length of the paced stream at the defaults")
    parser.add_argument("--sustained-rates", type=lambda text: tuple(int(r) for r in text.split(",")),
                        default=sustained.RATES, help="its flows per second, one run at each (comma-separated)")
    parser.add_argument("--sustained-rounds", type=int, default=sustained.ROUNDS, help="how many times to run every rate")
    parser.add_argument("--only", type=lambda text: text.split(","), default=BENCHMARKS,
                        help=f"a comma-separated choice of {','.join(BENCHMARKS)} (each rewrites its own figures)")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"--only: no benchmark {', '.join(sorted(unknown))} (there are {', '.join(BENCHMARKS)})")
    from broker.launch import Broker

    with tempfile.TemporaryDirectory(prefix="flowattr-bench-") as tmp, Broker() as broker:
        workdir, bootstrap = Path(tmp), broker.bootstrap
        started = time.monotonic()
        if {"throughput", "ceilings", "scale_out"} & set(args.only):
            records = fleet.generate(0.2 if args.quick else 1.0, workdir / "input")
            fleet.load_topics(bootstrap, records)
        if "throughput" in args.only:
            save("throughput", throughput.run(records, workdir, bootstrap, 1 if args.quick else args.repeat), started)
            started = time.monotonic()
        if "ceilings" in args.only:
            save("ceilings", ceilings.run(records, bootstrap, 1 if args.quick else args.repeat), started)
            started = time.monotonic()
        if "scale_out" in args.only:
            save("scale_out", scale_out.run(records, workdir, bootstrap), started)
            started = time.monotonic()
        if "memory" in args.only:
            save("memory", memory.measure(5_000 if args.quick else 20_000), started)
            started = time.monotonic()
        if "sustained" in args.only:
            result: dict = {}
            guarded("sustained", lambda: sustained.run_rates(bootstrap, workdir, 90 if args.quick else args.sustained_s,
                                                             args.sustained_rates, 1 if args.quick else args.sustained_rounds),
                    result)
            if "runs" in result["sustained"]:
                sustained.draw(result["sustained"])
                save("sustained", result["sustained"], started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
