"""Embeddings: a 170,000-row CSV pipeline (``task = "embed"``, 768 dimensions) end to end against a 0 ms emulator.

Usage: python -m bench.bench_embed [--rows 170000] [--lanes 64]

The emulator runs as its own process (``--latency 0``, an embedding model beside the chat one,
``--record`` counts its calls); ``batchd run --once`` runs as a real subprocess whose resident
memory is sampled every 0.5 s from ``/proc``. Reported: rows/s end to end (process start to exit:
claim, ingest, the calls, publishing) and for the run alone (``metrics.json``), calls per row (the
packing), ``embeddings.npy``'s size and the publish time, the journal's growth against the raw
vector bytes, and peak RSS with the RSS at each quarter of the run (flat = no growth with rows).
Goal (issue 28): >= 2,000 rows/s, journal growth <= 1.5x the raw float32 bytes, RSS flat.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Folders, folders, header, machine, summary

DIMS = 768


def write_csv(path: Path, rows: int, seed: int = 11) -> None:
    rng = random.Random(seed)
    words = "search index corpus passage retrieval vector query document section title body note".split()
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id,text\n")
        for i in range(rows):
            fh.write(f"D{i:06d},{' '.join(rng.choice(words) for _ in range(rng.randint(12, 60)))}\n")


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(rows: int, lanes: int, profile: str | None = None) -> dict[str, object]:
    with folders("bench-embed-") as f, tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "calls.json"
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.support.emulator", "--port", "0", "--latency", "0", "--slots", "0",
             "--models", "gemma3:4b,nomic-embed-text", "--record", str(record)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert emu.stdout is not None
        url = emu.stdout.readline().strip().removeprefix("listening on ")
        try:
            return _measure(f, url, rows, lanes, emu, record, profile)
        finally:
            if emu.poll() is None:
                emu.terminate()
                emu.wait(timeout=30)


def _measure(
    f: Folders, url: str, rows: int, lanes: int, emu: subprocess.Popen[str], record: Path, profile: str | None
) -> dict[str, object]:
    folder = f.inbox / "docs"
    folder.mkdir()
    (folder / "pipeline.toml").write_text(
        'task = "embed"\nmodel = "nomic-embed-text"\ninput_column = "text"\nid_column = "id"\n'
    )
    write_csv(Path(tempfile.gettempdir()) / "bench-embed-docs.csv", rows)
    os.replace(Path(tempfile.gettempdir()) / "bench-embed-docs.csv", folder / "docs.csv")
    env = f.env(url, BATCHD_BACKEND__LANES=str(lanes), BATCHD_LOG__LEVEL="info", BATCHD_LOG__TARGET="json")
    log = f.root / "batchd.log"
    started = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, *(["-m", "cProfile", "-o", profile] if profile else []), "-m", "batchd", "run", "--once"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=sink,
        )
    samples: list[tuple[float, float]] = []
    at_start: int | None = None  # the journal once ingest is done: what the run adds is the vectors' cost
    while proc.poll() is None:
        if at_start is None and '"job_started"' in log.read_text(errors="replace"):
            at_start = sum(p.stat().st_size for p in f.state.glob("journal*"))
        rss = _rss_mb(proc.pid)
        if rss is not None:
            samples.append((time.perf_counter() - started, rss))
        time.sleep(0.5)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"batchd exited {proc.returncode}: {log.read_text()[-3000:]}")
    at = _events(log)
    emu.terminate()
    emu.wait(timeout=60)
    calls = len(json.loads(record.read_text())["timings"])
    out = f.outbox / "docs"
    metrics = f.metrics("docs")
    npy = out / "embeddings.npy"
    journal = sum(p.stat().st_size for p in f.state.glob("journal*"))
    quarters = [max((r for t, r in samples if t <= wall * q / 4), default=0.0) for q in (1, 2, 3, 4)]
    publish = at["job_published"] - at["job_finished"]
    return {
        "rows": rows,
        "lanes": lanes,
        "wall_s": round(wall, 1),
        "rows_per_s_end_to_end": round(rows / wall),
        "rows_per_s_run": metrics.get("performance", {}).get("requests_per_second"),
        "completed": metrics.get("requests", {}).get("completed"),
        "calls": calls,
        "calls_per_row": round(calls / rows, 4),
        "npy_mb": round(npy.stat().st_size / 1e6, 1),
        "npy_expected_mb": round((rows * DIMS * 4 + 128) / 1e6, 1),
        "results_jsonl_mb": round((out / "results.jsonl").stat().st_size / 1e6, 1),
        "ingest_s": round(at["job_queued"] - at["job_claimed"], 1),
        "run_s": round(at["job_finished"] - at["job_started"], 1),
        "publish_s": round(publish, 1),
        "journal_mb": round(journal / 1e6, 1),
        "raw_vector_mb": round(rows * DIMS * 4 / 1e6, 1),
        "journal_growth_mb": round((journal - (at_start or 0)) / 1e6, 1),
        "journal_growth_over_raw": round((journal - (at_start or 0)) / (rows * DIMS * 4), 3),
        "peak_rss_mb": round(max(r for _, r in samples), 1) if samples else None,
        "rss_by_quarter_mb": [round(q, 1) for q in quarters],
    }


def _events(log: Path) -> dict[str, float]:
    """When each job event was logged (the JSON log's ISO timestamps), in seconds."""
    from datetime import datetime

    at: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            at.setdefault(event.get("event", ""), datetime.fromisoformat(event["timestamp"]).timestamp())
    return at


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=170_000)
    ap.add_argument("--lanes", type=int, default=64)
    ap.add_argument("--profile", help="batchd's cProfile stats to this file (slower: finds the cost)")
    args = ap.parse_args(argv)
    header(f"embeddings: {args.rows:,} rows x {DIMS} dims, lanes {args.lanes}")
    print(machine(), flush=True)
    result = run(args.rows, args.lanes, args.profile)
    print(json.dumps(result, indent=2), flush=True)
    rate = float(result["rows_per_s_end_to_end"])  # type: ignore[arg-type]
    summary(
        "embed",
        f"{rate:,.0f} rows/s end to end ({'met' if rate >= 2000 else 'NOT met'}: goal >= 2,000), "
        f"{result['calls_per_row']} calls/row, journal growth {result['journal_growth_over_raw']}x raw, "
        f"peak RSS {result['peak_rss_mb']} MB",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
