"""Live views: what the status page and the Prometheus outputs cost a running job.

    python -m bench.bench_live [--requests 10000] [--lanes 4] [--rounds 3]

``batchd run --once`` on the same N requests against a zero-latency emulator
process, alternating *off* (``[status_page] enabled = false``, no metrics) and
*on* (status page rewritten every 0.5 s, ``/metrics`` listening, a textfile
rewritten every 0.5 s: six and ten times more often than the defaults), so a
load change on the shared machine hits both. Reported per run: request-phase
req/s (``metrics.json``) and CPU ms per request of the batchd process.
"""

from __future__ import annotations

import argparse
import resource
import statistics

from bench.common import (
    EmulatorProcess,
    folders,
    free_port,
    header,
    load,
    machine,
    run_once,
    summary,
    write_requests,
)


def one(url: str, n: int, lanes: int, live: bool) -> tuple[float, float]:
    with folders("bench-live-") as f:
        write_requests(f.inbox / "bench.jsonl", n)
        extra = {"BATCHD_BACKEND__LANES": str(lanes), "BATCHD_CONTEXT__MODE": "isolated"}
        if live:
            extra.update(
                BATCHD_STATUS_PAGE__INTERVAL_SECONDS="0.5",
                BATCHD_METRICS__INTERVAL_SECONDS="0.5",
                BATCHD_METRICS__LISTEN=f"127.0.0.1:{free_port()}",
                BATCHD_METRICS__TEXTFILE=str(f.root / "batchd.prom"),
            )
        else:
            extra["BATCHD_STATUS_PAGE__ENABLED"] = "false"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run_once(f.env(url, **extra))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rate = float(f.metrics("bench")["performance"]["requests_per_second"])
        assert (f.outbox / "!status.html").exists() == live
        return rate, 1000 * cpu / n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    header(f"live views: {args.requests} requests, {args.lanes} lanes, {args.rounds} rounds; {machine()}")
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with EmulatorProcess(latency=0.0) as emu:
        for r in range(args.rounds):
            for live in (False, True):
                rate, cpu = one(emu.url, args.requests, args.lanes, live)
                results[live].append((rate, cpu))
                print(
                    f"round {r + 1} {'on ' if live else 'off'}: {rate:8.1f} req/s  {cpu:6.3f} CPU ms/req  "
                    f"load {load()}",
                    flush=True,
                )
    off = statistics.median(x[0] for x in results[False])
    on = statistics.median(x[0] for x in results[True])
    cpu_off = statistics.median(x[1] for x in results[False])
    cpu_on = statistics.median(x[1] for x in results[True])
    summary(
        "live",
        f"median req/s off {off:.1f}, on {on:.1f} ({100 * (on / off - 1):+.1f}%); "
        f"CPU ms/req off {cpu_off:.3f}, on {cpu_on:.3f}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
