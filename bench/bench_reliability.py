"""The reliability suites at full size (issue "[7] Prove it"): 50,000 requests with 20 kills, 6,000 under faults
with a 60 s outage, 1,000 files at once, a 170,000-row CSV with RSS sampled every second, and a
30-minute soak. About an hour on 2 cores; CI runs the same tests at a tenth of the size.

Usage: python -m bench.bench_reliability [pytest args]
       python -m bench.bench_reliability --lifecycle [N]   the lifecycle property suite's long profile
                                                           (N examples in process, N/3 with kill -9; default 60)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lifecycle(examples: int) -> int:
    env = {**os.environ, "BATCHD_LIFECYCLE_PROFILE": "long", "BATCHD_LIFECYCLE_EXAMPLES": str(examples)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:logging",
        "--timeout=7200",
        "tests/reliability/test_lifecycle_properties.py",
    ]
    print("running:", " ".join(cmd), f"with BATCHD_LIFECYCLE_PROFILE=long BATCHD_LIFECYCLE_EXAMPLES={examples}")
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["--lifecycle"]:
        return lifecycle(int(argv[1]) if len(argv) > 1 else 60)
    env = {**os.environ, "BATCHD_RELIABILITY_SCALE": os.environ.get("BATCHD_RELIABILITY_SCALE", "10")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "--timeout=7200", "tests/reliability", *(argv or [])]
    print("running:", " ".join(cmd), "with BATCHD_RELIABILITY_SCALE=" + env["BATCHD_RELIABILITY_SCALE"])
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
