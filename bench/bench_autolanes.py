"""Benchmark: does ``backend.lanes = "auto"`` find a server's knee as well as the best hand-picked number?

For each K (parallel slots the server has, unknown to batchd), the emulator runs
as its own process (``--slots K --latency 0.05 --latency-max 0.2``: each request
takes 50-200 ms once it has a slot; beyond K, requests queue). batchd runs
``run --once`` (a real subprocess, isolated mode) with lanes fixed at 1, 4, 16,
64 and with ``auto``. Job sizes are scaled so each run lasts about
``--seconds`` (fixed) or ``--auto-seconds`` (auto) at the rate it can reach.

Measured at the server (the emulator records each chat's arrival and end):
rate = requests / (last end - first arrival), p95 = 95th percentile of
arrival-to-end (queue + service), in flight over time. Goals (issue 16):

- auto reaches >= 0.9 of the best fixed rate within the first 60 s (``t90``:
  the first 4 s window at that rate) and holds it after the first 10% of the
  job (``rate after 10%``);
- auto's p95 <= 1.5x the best fixed setting's (best = highest rate; settings
  within 5% of it count as tied and the lowest p95 among them is taken);
- at K = 1 never more than 2 in flight for long (``>2 in flight``: share of time);
- ``--change``: K drops 16 -> 4 mid-run; auto follows (in flight <= 1.5 x 4 at
  the server) within 30 s, and every request completes.

    python -m bench.bench_autolanes [--ks 1,4,16,64] [--lanes 1,4,16,64] [--seconds 8]
                                    [--auto-seconds 20] [--change] [--no-matrix]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, folders, header, run_once, summary, write_requests

LAT_MIN, LAT_MAX = 0.05, 0.2
MEAN = (LAT_MIN + LAT_MAX) / 2


class Server:
    """The emulator process with K slots, recording every chat's timing into a file."""

    def __init__(self, slots: int, record: Path, slots_at: str = "") -> None:
        cmd = [
            sys.executable,
            "-m",
            "tests.support.emulator",
            "--port",
            "0",
            "--latency",
            str(LAT_MIN),
            "--latency-max",
            str(LAT_MAX),
            "--slots",
            str(slots),
            "--record",
            str(record),
        ]
        if slots_at:
            cmd += ["--slots-at", slots_at]
        self.record = record
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def finish(self) -> tuple[float, float, list[tuple[float, float]]]:
        """(t0 monotonic, t0 wall clock, [(arrived, done), ...]) of the emulator's run."""
        self.proc.terminate()
        self.proc.wait(timeout=30)
        data = json.loads(self.record.read_text())
        return float(data["t0"]), float(data["t0_wall"]), [(float(a), float(b)) for a, b in data["timings"]]


def analyse(timings: list[tuple[float, float]], t0: float | None = None) -> dict[str, Any]:
    timings = sorted(timings)
    start = timings[0][0]
    ends = sorted(b for _, b in timings)
    span = ends[-1] - start
    lat = sorted(b - a for a, b in timings)
    # in flight at the server over time: +1 at arrival, -1 at end
    events = sorted([(a, 1) for a, _ in timings] + [(b, -1) for _, b in timings])
    level, last, above2, above1, peak = 0, start, 0.0, 0.0, 0
    for t, d in events:
        if level > 2:
            above2 += t - last
        if level > 1:
            above1 += t - last
        level += d
        peak = max(peak, level)
        last = t
    return {
        "n": len(timings),
        "start": start,
        "span": span,
        "rate": len(timings) / span if span else 0.0,
        "p50": lat[len(lat) // 2],
        "p95": lat[int(0.95 * (len(lat) - 1))],
        "peak": peak,
        "above2": above2 / span if span else 0.0,
        "above1": above1 / span if span else 0.0,
        "ends": ends,
        "events": events,
        "t0": t0,
    }


def t90(a: dict[str, Any], target: float, window: float = 4.0) -> float | None:
    """Seconds from the first request until a ``window`` in which the rate reaches ``target``."""
    ends, start = a["ends"], a["start"]
    j = 0
    for i, t in enumerate(ends):
        while ends[j] < t - window:
            j += 1
        if t - start >= window and (i - j + 1) / window >= target:
            return t - window - start
    return None


def rate_after(a: dict[str, Any], fraction: float) -> float:
    ends = a["ends"]
    k = int(len(ends) * fraction)
    if k >= len(ends) - 1:
        return 0.0
    return (len(ends) - 1 - k) / (ends[-1] - ends[k])


def run(k: int, lanes: str, n: int, *, slots_at: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    with folders("bench-autolanes-") as f:
        write_requests(f.inbox / "bench.jsonl", n)
        server = Server(k, f.root / "timings.json", slots_at)
        try:
            env = f.env(server.url, BATCHD_BACKEND__LANES=lanes, BATCHD_CONTEXT__MODE="isolated")
            wall = run_once(env, timeout=900)
        finally:
            t0, wall0, timings = server.finish()
        metrics = f.metrics("bench")
        errors = f.lines("bench", "errors.jsonl")
    a = analyse(timings, t0)
    a["wall0"] = wall0
    a.update(
        wall=wall,
        errors=len(errors),
        completed=metrics["request_counts"]["completed"],
        total=n,
        job_rps=metrics["performance"]["requests_per_second"],
        lanes_series=metrics.get("lanes_series") or [],
        lanes_max=(metrics.get("lanes") or {}).get("max"),
    )
    return a, metrics


def matrix(ks: list[int], fixed: list[int], seconds: float, auto_seconds: float) -> bool:
    print(
        f"{'K':>3} {'lanes':>5} {'reqs':>6} {'rate/s':>8} {'vs best':>7} {'p50 s':>6} {'p95 s':>6} "
        f"{'p95/best':>8} {'t90 s':>6} {'after10%':>8} {'peak':>5} {'>2 inflt':>8} {'changes':>7} {'wall s':>6}",
        flush=True,
    )
    ok = True
    for k in ks:
        rows = {}
        for lanes in fixed:
            n = max(20, int(min(lanes, k) / MEAN * seconds))
            a, _ = run(k, str(lanes), n)
            rows[lanes] = a
            print(
                f"{k:>3} {lanes:>5} {n:>6} {a['rate']:>8.1f} {'':>7} {a['p50']:>6.3f} {a['p95']:>6.3f} "
                f"{'':>8} {'':>6} {'':>8} {a['peak']:>5} {a['above2']:>8.1%} {'':>7} {a['wall']:>6.1f}",
                flush=True,
            )
        top = max(r["rate"] for r in rows.values())
        tied = [lanes for lanes, r in rows.items() if r["rate"] >= 0.95 * top]
        best_lanes = min(tied, key=lambda lanes: rows[lanes]["p95"])
        best = rows[best_lanes]
        n = max(40, int(k / MEAN * auto_seconds))
        a, _ = run(k, "auto", n)
        reach = t90(a, 0.9 * best["rate"])
        after = rate_after(a, 0.10)
        changes = max(0, len(a["lanes_series"]) - 1)
        good = (
            reach is not None
            and reach <= 60
            and after >= 0.9 * best["rate"]
            and a["p95"] <= 1.5 * best["p95"]
            and a["errors"] == 0
            and a["completed"] == n
            and (k != 1 or a["above2"] <= 0.05)
        )
        ok &= good
        print(
            f"{k:>3} {'auto':>5} {n:>6} {a['rate']:>8.1f} {a['rate'] / best['rate']:>7.3f} {a['p50']:>6.3f} "
            f"{a['p95']:>6.3f} {a['p95'] / best['p95']:>8.2f} "
            f"{reach if reach is not None else float('nan'):>6.1f} {after / best['rate']:>8.3f} {a['peak']:>5} "
            f"{a['above2']:>8.1%} {changes:>7} {a['wall']:>6.1f}  best fixed {best_lanes} "
            f"({best['rate']:.1f}/s, p95 {best['p95']:.3f}); lanes at end {a['lanes_series'][-1][1]}, "
            f"max {a['lanes_max']}  {'ok' if good else 'GOAL MISSED'}",
            flush=True,
        )
    return ok


def buckets(a: dict[str, Any], width: float = 2.0) -> list[float]:
    """Mean requests in flight at the server per ``width`` seconds since the emulator started."""
    acc: dict[int, float] = {}
    level, last = 0, a["t0"]
    for t, d in a["events"]:
        pos = last
        while pos < t:  # spread the interval over the buckets it covers
            b = int((pos - a["t0"]) // width)
            edge = min(t, a["t0"] + (b + 1) * width)
            acc[b] = acc.get(b, 0.0) + level * (edge - pos)
            pos = edge
        level += d
        last = t
    top = max(acc) if acc else -1
    return [acc.get(b, 0.0) / width for b in range(top + 1)]


def change(seconds_before: float, seconds_after: float) -> bool:
    """K = 16 for the first ``seconds_before`` s after the server starts, then 4."""
    n = int(16 / MEAN * seconds_before + 4 / MEAN * seconds_after)
    a, _ = run(16, "auto", n, slots_at=f"{seconds_before}:4")
    level = buckets(a)
    first = int(seconds_before // 2) + 1  # the first whole bucket after the drop
    settled = [b for b in range(first, len(level) - 1) if all(x <= 6.0 for x in level[b : len(level) - 1])]
    followed = settled[0] * 2.0 - seconds_before if settled else None
    series = [(round(t - a["wall0"], 1), lanes, why) for t, lanes, why in a["lanes_series"]]
    after_drop = [s for s in series if s[0] >= seconds_before]
    before = [s for s in series if s[0] < seconds_before]
    print(
        f"before the drop: {len(before)} lanes values, last {before[-1] if before else None}, "
        f"max {max((s[1] for s in before), default=None)}; in flight at the server (2 s means) "
        f"{' '.join(f'{x:.0f}' for x in level[:first])}",
        flush=True,
    )
    good = followed is not None and followed <= 30 and a["errors"] == 0 and a["completed"] == n
    print(
        f"K 16 -> 4 at {seconds_before:.0f} s: {n} requests, {a['completed']} completed, {a['errors']} errors, "
        f"rate {a['rate']:.1f}/s; in flight at the server (2 s means) "
        f"{' '.join(f'{x:.0f}' for x in level[first - 3 : first + 5])} around the drop; <= 6 from "
        f"{followed if followed is not None else 'never'}{' s after the drop on' if followed is not None else ''}; "
        f"lanes changes after the drop (s, lanes, reason): {after_drop[:6]}{' ...' if len(after_drop) > 6 else ''}"
        f"  {'ok' if good else 'GOAL MISSED'}",
        flush=True,
    )
    return good


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--ks", default="1,4,16,64", help="server slots K to try")
    ap.add_argument("--lanes", default="1,4,16,64", help="fixed lane counts to compare with")
    ap.add_argument("--seconds", type=float, default=8.0, help="target length of each fixed run")
    ap.add_argument("--auto-seconds", type=float, default=20.0, help="target length of each auto run")
    ap.add_argument("--change", action="store_true", help="also run K 16 -> 4 mid-run")
    ap.add_argument("--no-matrix", action="store_true", help="only the K change run")
    ap.add_argument("--before", type=float, default=20.0, help="--change: seconds at K = 16")
    ap.add_argument("--after", type=float, default=40.0, help="--change: seconds at K = 4")
    args = ap.parse_args(argv)
    header(f"autolanes: K slots unknown to batchd, latency {LAT_MIN}-{LAT_MAX} s; fixed lanes {args.lanes} vs auto")
    started = time.perf_counter()
    ok = True
    if not args.no_matrix:
        ok &= matrix(
            [int(x) for x in args.ks.split(",")],
            [int(x) for x in args.lanes.split(",")],
            args.seconds,
            args.auto_seconds,
        )
    if args.change or args.no_matrix:
        ok &= change(args.before, args.after)
    summary("autolanes", f"goals {'met' if ok else 'NOT met'} ({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
