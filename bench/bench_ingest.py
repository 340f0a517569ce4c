"""Ingest: a 170,000-row CSV claimed and journaled, timed, with the process's peak RSS.

Usage: python -m bench.bench_ingest [--rows 170000]

The CSV is written by a separate process so its memory does not count; the
claim runs in a fresh child process whose peak RSS (ru_maxrss) is reported.
Goal (issue 1): under 15 s and under 300 MB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from batchd.config import Settings
from batchd.intake.claim import Claimer
from batchd.intake.inbox import scan
from batchd.journal import Journal
root = Path(sys.argv[1])
settings = Settings(inbox=root / "inbox", outbox=root / "outbox", state_dir=root / "state",
                    pipeline={"system_prompt": "Score the candidate from 1 to 10.",
                              "user_template": "{name} ({title}, {years} years): {summary}",
                              "id_column": "id", "passthrough_columns": ["name"]})
journal = Journal(settings.state_dir / "journal.sqlite3")
claimer = Claimer(settings=settings, journal=journal)
t0 = time.perf_counter()
(cand,) = scan(settings.inbox)
claimed = claimer.claim(cand)
elapsed = time.perf_counter() - t0
job = journal.job(claimed.job_id)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": elapsed, "cpu_seconds": ru.ru_utime + ru.ru_stime, "state": job.state.value,
                  "requests": job.total,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_csv(path: Path, rows: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    words = "data pipeline spark sql python airflow kafka team led migrated built designed cloud".split()
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "title", "years", "summary"])
        for i in range(rows):
            summary = " ".join(rng.choice(words) for _ in range(rng.randint(20, 80)))
            w.writerow([f"C{i:06d}", f"Candidate {i}", "Data Engineer", rng.randint(0, 25), summary])
    return path.stat().st_size


def run(rows: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("inbox", "outbox", "state"):
            (root / sub).mkdir()
        size = write_csv(root / "inbox" / "candidates.csv", rows)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True, cwd=ROOT, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["file_mb"] = size / 1e6
        result["journal_mb"] = sum(p.stat().st_size for p in (root / "state").glob("journal*")) / 1e6
        return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=170_000)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run(args.rows)
    print(f"rows {r['requests']:,}  file {r['file_mb']:.1f} MB  journal {r['journal_mb']:.1f} MB")
    # CPU time beside wall time: on a shared, loaded machine wall time alone misleads.
    print(
        f"claim + journal: {r['seconds']:.2f} s wall, {r['cpu_seconds']:.2f} s CPU "
        f"({r['requests'] / r['seconds']:,.0f} rows/s), "
        f"peak RSS {r['peak_rss_mb']:.0f} MB, state {r['state']}"
    )
    ok = r["seconds"] < 15 and r["peak_rss_mb"] < 300
    print(
        f"SUMMARY ingest: {args.rows:,} rows in {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
        f"-> {'meets' if ok else 'MISSES'} the goal (<15 s, <300 MB); total {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
