"""Benchmark: ``lanes = "auto"`` against the real llama.cpp server, beside every fixed lane count and a bare client.

Issue 21's question: does ``auto`` reach the best throughput any client gets from a
real batching server whose slot count it is not told? For each ``--slots`` S (the
server's ``--parallel``), one ``llama-server`` (built by ``make llama-server``,
``tests/realserver``: Gemma 3 270M, ``--threads 2`` by default) serves, one after
the other, the same ``--requests`` rows (``bench.gpu.body``: ~60 prompt tokens,
``--max-tokens`` out) to

- a **bare client** at each concurrency C in ``--lanes``: C aiohttp tasks in a
  loop, one request each at a time, no journal, nothing else (what any client
  can get from that server at C in flight);
- ``batchd run --once`` with ``backend.lanes`` = C (fixed), and with ``auto``
  (openai backend, isolated mode; the metrics are batchd's own ``metrics.json``).

It prints each row (req/s, output tok/s, p95, the 1-minute load average when the
row started; for auto where its lanes ended, their maximum, and any scan levels its
lanes_series records), then per S: auto / best fixed and auto / best bare (goal: >= 0.95 and >= 0.9).
With ``--rounds R`` the whole sequence runs R times against the same server, and each
mode counts with its median run: on a shared 2-core box neighbouring runs of one setting
differ by 20-50%, and "the best fixed" of single runs is the luckiest of six draws.

    python -m bench.bench_real_knee [--slots 4,8,16] [--requests 240] [--max-tokens 8] [--rounds 1]
                                    [--lanes 1,2,4,8,16,32] [--threads 2] [--server-bin PATH]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.bare import bare
from bench.common import header, load, summary
from bench.gpu import batchd_run, fresh_rows
from tests.support.realserver import ALIAS, LlamaServer, gemma_gguf, llama_server_binary

#: tokens of context per slot: the rows need ~60 prompt tokens and --max-tokens more
CTX_PER_SLOT = 512


def knee_of(series: list[list[Any]]) -> str:
    """Where auto's scans went: the levels and the knee, from metrics.json's lanes_series."""
    steps = [f"{lanes}{'*' if why == 'knee' else ''}" for _, lanes, why in series if why in ("scan", "knee", "start")]
    return "scan " + ">".join(steps) if steps else ""


def row(slots: int, mode: str, r: dict[str, Any], load1: float) -> str:
    rps = f"{r['rps']:.2f}" if r.get("rps") else "FAILED"
    tok = f"{r['tok_s']:.1f}" if r.get("tok_s") else "-"
    p95 = f"{r['p95']:.3f}" if r.get("p95") else "-"
    extra = r["lanes"] if mode == "batchd auto" else ""
    if r.get("series") and mode == "batchd auto":
        extra += "; " + knee_of(r["series"])
    return f"{slots:>5} {mode:<14} {r['requests']:>5} {r['ok']:>5} {rps:>7} {tok:>9} {p95:>7} {load1:>6.2f}  {extra}"


def measure(url: str, slots: int, args: argparse.Namespace, runs: Iterator[int]) -> list[tuple[str, dict[str, Any]]]:
    """Every row against the server at ``url`` (``slots``: its parallel slots, for the table).

    ``runs`` numbers the runs of the whole bench: each run sends rows no other run sent.
    """
    results: list[tuple[str, dict[str, Any]]] = []
    bare(url, slots, 2 * slots, args.max_tokens, ALIAS)  # warm-up (rows 0 ..): the first calls are slow
    plan: list[tuple[str, str]] = []
    for c in args.lanes.split(","):
        plan += [(f"bare {c}", c), (f"batchd {c}", c)]
        if c == args.auto_after:  # auto in the middle of the sequence: load drifts over a run
            plan.append(("batchd auto", "auto"))
    if not any(mode == "batchd auto" for mode, _ in plan):
        plan.append(("batchd auto", "auto"))
    if args.auto_only:
        plan = [("batchd auto", "auto")]
    for mode, lanes in plan:
        load1 = os.getloadavg()[0]
        start = fresh_rows(next(runs), args.requests)  # rows the server has not seen: none cached
        try:
            if mode.startswith("bare"):
                r = bare(url, int(lanes), args.requests, args.max_tokens, ALIAS, start)
            else:
                r = batchd_run(sys.executable, url, lanes, args.requests, args.max_tokens, "none", ALIAS, start)
        except Exception as exc:  # noqa: BLE001 - one failed row is reported, the others still run
            r = {"requests": args.requests, "ok": 0, "rps": None, "lanes": lanes, "error": str(exc)[:200]}
        if r["ok"] < r["requests"]:
            r["rps"] = None  # a rate over failed rows means nothing
        results.append((mode, r))
        print(row(slots, mode, r, load1), flush=True)
    return results


def medians(rounds: list[list[tuple[str, dict[str, Any]]]]) -> list[tuple[str, dict[str, Any]]]:
    """Each mode's run with the median req/s over the rounds (a failed run counts as the slowest)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i, (mode, _) in enumerate(rounds[0]):
        runs = sorted((r[i][1] for r in rounds), key=lambda r: r["rps"] or 0.0)
        out.append((mode, runs[(len(runs) - 1) // 2]))
    return out


def ratios(results: list[tuple[str, dict[str, Any]]]) -> tuple[float | None, float | None, str, str]:
    def best(prefix: str) -> tuple[str, float]:
        rows = [(m, r["rps"]) for m, r in results if m.startswith(prefix) and m != "batchd auto" and r["rps"]]
        return max(rows, key=lambda x: x[1]) if rows else ("-", 0.0)

    auto = next((r["rps"] for m, r in results if m == "batchd auto"), None)
    (fixed_mode, fixed), (bare_mode, bare_rps) = best("batchd "), best("bare ")
    return (
        auto / fixed if auto and fixed else None,
        auto / bare_rps if auto and bare_rps else None,
        f"{fixed_mode} {fixed:.2f}/s",
        f"{bare_mode} {bare_rps:.2f}/s",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--slots", default="4,8,16", help="the server's --parallel, one server each")
    ap.add_argument("--requests", type=int, default=240, help="rows per run (each run its own rows, none cached)")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--lanes", default="1,2,4,8,16,32", help="fixed lanes and bare-client concurrencies")
    ap.add_argument("--auto-after", default="4", help="run auto after this concurrency's pair (default: mid-run)")
    ap.add_argument("--auto-only", action="store_true", help="only the auto row (a rerun after a change)")
    ap.add_argument("--rounds", type=int, default=1, help="run the plan this many times; each mode's median run counts")
    ap.add_argument("--threads", type=int, default=2, help="llama-server --threads")
    ap.add_argument("--server-bin", type=Path, help="a llama-server binary (default: the cached build)")
    ap.add_argument("--log-dir", default="/tmp", help="where the servers' logs go")
    ap.add_argument("--url", help="measure this running server instead (its slots: the one --slots value)")
    args = ap.parse_args(argv)
    binary = args.server_bin or (llama_server_binary(wait=0) if not args.url else Path("-"))
    gguf = gemma_gguf() if not args.url else Path("-")
    if isinstance(binary, str) or isinstance(gguf, str):
        print(f"cannot run: {binary if isinstance(binary, str) else gguf}")
        return 2
    header("bench_real_knee: auto vs fixed lanes vs a bare aiohttp client on the real llama-server")
    print(f"# {args.requests} rows of {args.max_tokens} output tokens per run, --threads {args.threads}", flush=True)
    print(f"{'slots':>5} {'mode':<14} {'reqs':>5} {'ok':>5} {'req/s':>7} {'tok/s':>9} {'p95 s':>7} {'load1':>6}")
    started = time.perf_counter()
    runs = itertools.count()
    failed = False
    lines = []
    for slots in (int(s) for s in args.slots.split(",")):
        if args.url:
            rounds = [measure(args.url.rstrip("/"), slots, args, runs) for _ in range(args.rounds)]
        else:
            log = Path(args.log_dir) / f"llama-server-{slots}.log"
            ctx = slots * CTX_PER_SLOT
            with LlamaServer(binary, gguf, slots=slots, ctx=ctx, threads=args.threads, log_path=log) as srv:
                rounds = [measure(srv.url, slots, args, runs) for _ in range(args.rounds)]
        results = medians(rounds)
        if args.rounds > 1:
            print(f"# slots {slots}: the median of {args.rounds} rounds per mode", flush=True)
            for mode, r in results:
                print(row(slots, mode, r, float("nan")), flush=True)
        vs_fixed, vs_bare, best_fixed, best_bare = ratios(results)
        failed |= vs_fixed is None or vs_bare is None
        f = f"{vs_fixed:.3f}" if vs_fixed else "-"
        b = f"{vs_bare:.3f}" if vs_bare else "-"
        lines.append(f"slots {slots}: auto/best fixed {f} ({best_fixed}), auto/best bare {b} ({best_bare})")
        print("# " + lines[-1], flush=True)
    for line in lines:
        summary("real_knee", line)
    print(f"# {time.perf_counter() - started:.0f} s in all, load {load()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
