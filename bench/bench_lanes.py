"""Benchmark: do K lanes keep an Ollama with K parallel slots busy?

For each K, start the emulator as its own process with K slots and a fixed
latency L (so the ideal is K / L requests per second), drop ``per_lane * K``
requests into a fresh inbox, run ``batchd run --once`` (a real subprocess,
isolated mode, ``BATCHD_BACKEND__LANES=K``) and compare the job's own request
rate (``metrics.json`` ``performance.requests_per_second``) with the ideal.
The goal is a ratio of at least 0.9. Wall time including process start-up is
reported beside it, and so is the transport ceiling: the mean latency one
plain sequential client sees from the same emulator (HTTP and scheduling on a
loaded machine add to L before batchd does anything), so ``vs ceiling`` shows
batchd's own share of any shortfall.

    python3 bench/bench_lanes.py [--latency 0.2] [--lanes 1,2,4,8] [--per-lane 40]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.9
if str(REPO) not in sys.path:  # run as a script, python3 bench/bench_lanes.py
    sys.path.insert(0, str(REPO))

from tests.support.running import batchd_env  # noqa: E402


def start_emulator(latency: float, slots: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.emulator",
            "--port",
            "0",
            "--latency",
            str(latency),
            "--slots",
            str(slots),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def transport_latency(url: str, n: int = 20) -> float:
    """Mean seconds per call for one plain keep-alive client: the best any lane can do."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps(
        {
            "model": "gemma3:4b",
            "messages": [{"role": "user", "content": "ping"}],
            "stream": False,
            "options": {"num_ctx": 8192},
        }
    )
    took = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            conn.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            took.append(time.perf_counter() - started)
    finally:
        conn.close()
    return sum(took) / len(took)


def write_input(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            body = {
                "model": "gemma3:4b",
                "messages": [
                    {"role": "system", "content": "You score job candidates from 1 to 10."},
                    {"role": "user", "content": f"Candidate {i}: five years in warehouse logistics."},
                ],
            }
            fh.write(
                json.dumps({"custom_id": f"c{i:05d}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + "\n"
            )


def env_for(root: Path, url: str, lanes: int) -> dict[str, str]:
    return batchd_env(
        root,
        url,
        BATCHD_BACKEND__LANES=str(lanes),
        BATCHD_CONTEXT__MODE="isolated",
        BATCHD_LOG__LEVEL="warning",
        BATCHD_VRAM__SOURCE="none",
    )


def run_one(lanes: int, latency: float, per_lane: int) -> dict[str, Any]:
    n = per_lane * lanes
    emu, url = start_emulator(latency, lanes)
    try:
        raw = transport_latency(url)
        with tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp:
            root = Path(tmp)
            for sub in ("inbox", "outbox", "state"):
                (root / sub).mkdir()
            (root / "batchd.toml").write_text("# bench\n")
            write_input(root / "inbox" / "bench.jsonl", n)
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "batchd", "run", "--once"],
                cwd=REPO,
                env=env_for(root, url, lanes),
                capture_output=True,
                text=True,
                timeout=600,
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"batchd exited {proc.returncode}: {proc.stderr[-2000:]}")
            metrics = json.loads((root / "outbox" / "bench" / "metrics.json").read_text())
    finally:
        emu.terminate()
        emu.wait(timeout=10)
    perf = metrics["performance"]
    ideal = lanes / latency
    rps = perf["requests_per_second"]
    return {
        "lanes": lanes,
        "requests": n,
        "completed": metrics["request_counts"]["completed"],
        "ideal_rps": round(ideal, 2),
        "job_rps": rps,
        "ratio": round(rps / ideal, 3),
        "transport_s": round(raw, 4),
        "vs_ceiling": round(rps / (lanes / raw), 3),
        "job_seconds": perf["elapsed_seconds"],
        "wall_seconds": round(wall, 2),
        "wall_rps": round(n / wall, 2),
        "wall_ratio": round(n / wall / ideal, 3),
        "latency_p50": perf["latency_p50"],
        "latency_p95": perf["latency_p95"],
    }


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, load average {load:.2f} at start"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--latency", type=float, default=0.2, help="emulator seconds per request")
    ap.add_argument("--lanes", default="1,2,4,8", help="comma-separated K values")
    ap.add_argument("--per-lane", type=int, default=40, help="requests per lane (total = per_lane * K)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = ap.parse_args(argv)
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {machine()}")
    print(f"# latency {args.latency}s, {args.per_lane} requests per lane, isolated mode")
    head = (
        f"{'K':>3} {'reqs':>5} {'ideal/s':>8} {'job/s':>8} {'ratio':>6} {'raw s':>7} {'vs ceiling':>10} "
        f"{'job s':>7} {'wall s':>7} {'wall/s':>7} {'wall ratio':>10} {'p50':>6} {'p95':>6}"
    )
    print(head)
    rows = []
    for k in (int(x) for x in args.lanes.split(",")):
        r = run_one(k, args.latency, args.per_lane)
        rows.append(r)
        print(
            f"{r['lanes']:>3} {r['requests']:>5} {r['ideal_rps']:>8.2f} {r['job_rps']:>8.2f} {r['ratio']:>6.3f} "
            f"{r['transport_s']:>7.4f} {r['vs_ceiling']:>10.3f} {r['job_seconds']:>7.2f} "
            f"{r['wall_seconds']:>7.2f} {r['wall_rps']:>7.2f} {r['wall_ratio']:>10.3f} "
            f"{r['latency_p50']:>6.3f} {r['latency_p95']:>6.3f}",
            flush=True,
        )
    worst = min(rows, key=lambda r: r["ratio"])
    ok = all(r["ratio"] >= GOAL for r in rows) and all(r["completed"] == r["requests"] for r in rows)
    print(
        f"summary: lanes {args.lanes} at {args.latency}s latency reach {min(r['ratio'] for r in rows):.3f}"
        f"-{max(r['ratio'] for r in rows):.3f} of K/latency (worst K={worst['lanes']}); "
        f"goal >= {GOAL}: {'met' if ok else 'NOT met'}"
    )
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
