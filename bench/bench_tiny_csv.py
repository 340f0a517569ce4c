"""Amplification: a CSV of many tiny rows claimed and journaled; journal size and the peak RSS.

Usage: python -m bench.bench_tiny_csv [--rows 1000000]

A 2 MB CSV of 1,000,000 one-letter rows (issue 22, item 5: it was a 149 MB journal and 200 MB of
memory). The claim runs in a fresh child process whose peak RSS (ru_maxrss) is reported; the journal
size is the database plus its WAL after the claim.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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
                    limits={"max_lines": 2_000_000},
                    pipeline={"system_prompt": "Score the word from 1 to 10.", "user_template": "Word: {text}"})
journal = Journal(settings.state_dir / "journal.sqlite3")
claimer = Claimer(settings=settings, journal=journal)
t0 = time.perf_counter()
(cand,) = scan(settings.inbox)
claimed = claimer.claim(cand)
elapsed = time.perf_counter() - t0
job = journal.job(claimed.job_id)
journal.close()
files = {p.name: p.stat().st_size for p in (root / "state").glob("journal.sqlite3*")}
size = sum(files.values())
print(json.dumps({"seconds": round(elapsed, 1), "state": job.state.value, "requests": job.total,
                  "journal_mb": round(size / 1e6, 1), "wal_mb": round(files.get("journal.sqlite3-wal", 0) / 1e6, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("inbox", "outbox", "state"):
            (root / name).mkdir()
        csv_path = root / "inbox" / "tiny.csv"
        csv_path.write_bytes(b"text\n" + b"a\n" * args.rows)
        size = csv_path.stat().st_size
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root)], capture_output=True, text=True, cwd=ROOT, check=False
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["csv_mb"] = round(size / 1e6, 1)
        result["journal_bytes_per_csv_byte"] = round(result["journal_mb"] / result["csv_mb"], 1)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
