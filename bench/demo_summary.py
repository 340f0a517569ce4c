"""Prints what `make demo` produced: where the outbox is, the first scores, the metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(outbox: Path) -> int:
    folders = sorted(p for p in outbox.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        print(f"no outbox folders in {outbox}")
        return 1
    print(f"\noutbox: {outbox.resolve()}")
    for folder in folders:
        m = json.loads((folder / "metrics.json").read_text())
        counts = m.get("request_counts", {})
        perf = m.get("performance", {})
        print(
            f"\n== {folder.name}/  ({m['input']}, status {m['status']}, "
            f"{counts.get('completed', 0)}/{counts.get('total', 0)} ok, {counts.get('failed', 0)} failed, "
            f"{perf.get('requests_per_second')} req/s, model {m.get('model')})"
        )
        scores = folder / "scores.csv"
        if scores.exists():
            lines = scores.read_text(encoding="utf-8-sig").splitlines()
            print("\n".join(lines[:6]))
        if (folder / "report.html").exists():
            print(f"report: {(folder / 'report.html').resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
