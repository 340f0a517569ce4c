"""Run the benchmarks in sequence and print their one-line summaries (``python -m bench``, ``make bench``).

Each benchmark runs as its own process, so one that fails (a missing optional
package, a backend that would not start) is reported and the others still run.
Sizes are chosen to finish in about 20-25 minutes on a 2-core machine; the
flags below scale them. Figures go into ``docs/BENCHMARKS.md`` by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, machine

BENCH = Path(__file__).resolve().parent


def plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    runs = [
        ("overhead", ["bench.bench_overhead", "--requests", str(args.requests)]),
        ("lanes", ["bench.bench_lanes"]),
        ("autolanes", ["bench.bench_autolanes", "--change"]),
        ("prefix", ["bench.bench_prefix", "--rows", str(args.prefix_rows)]),
        ("peer", ["bench.bench_peer", "--real-rows", str(args.peer_real_rows)]),
        ("ingest", ["bench.bench_ingest", "--rows", str(args.ingest_rows)]),
        ("http", ["bench.bench_http_clients"]),
    ]
    only = set(args.only.split(",")) if args.only else None
    # bench_lanes.py belongs to another module owner and may be absent in a partial checkout.
    return [
        (name, argv)
        for name, argv in runs
        if (only is None or name in only) and (BENCH / f"{argv[0].split('.')[1]}.py").exists()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", help="comma-separated subset: overhead,lanes,autolanes,prefix,peer,ingest,http")
    ap.add_argument("--requests", type=int, default=20_000, help="overhead: requests per run")
    ap.add_argument("--prefix-rows", type=int, default=8, help="prefix: candidates per run (6 runs)")
    ap.add_argument("--peer-real-rows", type=int, default=0, help="peer: candidates through llama.cpp's server")
    ap.add_argument("--ingest-rows", type=int, default=170_000)
    args = ap.parse_args(argv)
    print(f"# batchd benchmarks; {machine()}", flush=True)
    summaries: list[str] = []
    failed = []
    t0 = time.perf_counter()
    for name, cmd in plan(args):
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", *cmd], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # pass through as it comes: some runs take minutes
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        code = proc.wait()
        took = time.perf_counter() - started
        found = [x for x in lines if x.lower().startswith(("summary ", "summary:"))]
        summaries.append(
            (found[-1] if found else f"SUMMARY {name}: no summary line") + f"  [{took:.0f} s, exit {code}]"
        )
        if code != 0:
            failed.append(name)
    print(f"\n# summaries ({time.perf_counter() - t0:.0f} s in all)")
    for s in summaries:
        print(s)
    if failed:
        print(f"# non-zero exit: {', '.join(failed)} (a missed goal, or an error above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
