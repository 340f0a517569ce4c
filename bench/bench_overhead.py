"""Overhead: batchd against a bare httpx loop, both posting the same bodies to a zero-latency emulator.

    python -m bench.bench_overhead [--requests 20000] [--lanes 1,4] [--profile OUT.prof]

For each lane count K: a bare loop (K threads, each a sync ``httpx.Client``
posting its share of the bodies in order and writing nothing), then
``batchd run --once`` on a JSONL of the same N requests (isolated mode,
``lanes = K``, journal with synchronous=FULL commits, fsynced outbox), then
the bare loop again; the ratio uses the mean of the two bare runs so a load
change on the shared machine during the batchd run shows up as a spread.
batchd is reported twice: the request phase (``metrics.json``
``performance.requests_per_second``) and end to end (process start, claim,
ingest, run, publish, exit). Goal: request-phase ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import EmulatorProcess, chat_body, folders, header, load, run_once, summary, write_requests

GOAL = 0.8
NUM_CTX = 8192  # what batchd pins against the emulator (its context_length, under the 8192 cap)


def ollama_payload(i: int) -> bytes:
    """What batchd's Ollama backend posts for request ``i`` (same keys, same values)."""
    body = chat_body(i)
    return orjson.dumps(
        {
            "model": body["model"],
            "messages": body["messages"],
            "stream": False,
            "options": {"num_ctx": NUM_CTX},
            "truncate": False,
            "shift": False,
            "keep_alive": "30m",
        }
    )


def bare_loop(url: str, n: int, lanes: int) -> tuple[float, float]:
    """(wall, CPU) seconds for ``lanes`` threads, each with its own sync client, to post ``n`` bodies between them."""
    payloads = [ollama_payload(i) for i in range(n)]  # built before the clock starts, like batchd's ingest
    errors: list[str] = []

    def worker(share: list[bytes]) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for p in share:
                resp = client.post("/api/chat", content=p, headers={"content-type": "application/json"})
                data = orjson.loads(resp.content)
                if resp.status_code != 200 or "message" not in data:
                    errors.append(resp.text[:200])

    threads = [threading.Thread(target=worker, args=(payloads[k::lanes],)) for k in range(lanes)]
    started, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took, cpu = time.perf_counter() - started, time.process_time() - cpu
    if errors:
        raise RuntimeError(f"bare loop: {len(errors)} bad replies, first {errors[0]!r}")
    return took, cpu


def batchd_run(url: str, n: int, lanes: int, profile: str | None = None, root: Path | None = None) -> dict[str, Any]:
    with folders("bench-overhead-") as f:
        write_requests(f.inbox / "bench.jsonl", n)
        env = f.env(url, BATCHD_BACKEND__LANES=str(lanes), BATCHD_CONTEXT__MODE="isolated")
        # cProfile wraps the whole process: claim, ingest, run and publish, as run_once times them.
        prefix = [sys.executable, "-m", "cProfile", "-o", f"{profile}.lanes{lanes}"] if profile else None
        cpu = _children_cpu()
        wall = run_once(env, prefix=prefix, root=root)
        cpu = _children_cpu() - cpu
        m = f.metrics("bench")
        done = m["request_counts"]["completed"]
        if done != n:
            raise RuntimeError(f"batchd completed {done} of {n}")
        return {
            "job_rps": m["performance"]["requests_per_second"],
            "job_s": m["performance"]["elapsed_seconds"],
            "wall_s": wall,
            "e2e_rps": n / wall,
            "cpu_ms": cpu / n * 1000,
        }


def _children_cpu() -> float:
    # CPU seconds of finished children: the emulator is still running, so this is batchd alone.
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def measure(url: str, n: int, lanes: int, profile: str | None, root: Path | None = None) -> dict[str, Any]:
    load_before = load()
    bare1, cpu1 = bare_loop(url, n, lanes)
    b = batchd_run(url, n, lanes, profile, root)
    bare2, cpu2 = bare_loop(url, n, lanes)
    bare_rps = n / ((bare1 + bare2) / 2)
    return {
        "lanes": lanes,
        "n": n,
        "bare_rps": bare_rps,
        "bare_spread": abs(bare1 - bare2) / max(bare1, bare2),
        "bare_cpu_ms": (cpu1 + cpu2) / 2 / n * 1000,
        **b,
        "ratio": b["job_rps"] / bare_rps,
        "e2e_ratio": b["e2e_rps"] / bare_rps,
        "load": f"{load_before} -> {load()}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--lanes", default="1,4")
    ap.add_argument("--profile", help="run batchd under cProfile, writing PROFILE.lanesK")
    ap.add_argument("--batchd-root", type=Path, help="run the batchd package in this folder (a patched copy)")
    args = ap.parse_args(argv)
    header(f"overhead: {args.requests:,} requests, zero-latency emulator, lanes {args.lanes}")
    rows = []
    with EmulatorProcess(latency=0.0, slots=0) as emu:
        print(
            f"{'K':>2} {'bare/s':>8} {'spread':>6} {'job/s':>8} {'ratio':>6} {'e2e/s':>8} {'e2e ratio':>9} "
            f"{'job s':>6} {'wall s':>6} {'CPU ms/req b/bare':>17}  load 1/5/15 (before -> after)"
        )
        for k in (int(x) for x in args.lanes.split(",")):
            r = measure(emu.url, args.requests, k, args.profile, args.batchd_root)
            rows.append(r)
            print(
                f"{k:>2} {r['bare_rps']:>8.0f} {r['bare_spread']:>6.1%} {r['job_rps']:>8.0f} {r['ratio']:>6.2f} "
                f"{r['e2e_rps']:>8.0f} {r['e2e_ratio']:>9.2f} {r['job_s']:>6.1f} {r['wall_s']:>6.1f} "
                f"{r['cpu_ms']:>8.2f}/{r['bare_cpu_ms']:<8.2f}  {r['load']}",
                flush=True,
            )
    ok = all(r["ratio"] >= GOAL for r in rows)
    summary(
        "overhead",
        ", ".join(
            f"lanes={r['lanes']} ratio {r['ratio']:.2f} (e2e {r['e2e_ratio']:.2f}, "
            f"{r['job_rps']:.0f} vs bare {r['bare_rps']:.0f} req/s)"
            for r in rows
        )
        + f"; goal >= {GOAL}: {'met' if ok else 'NOT met'}; cores {os.cpu_count()}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
