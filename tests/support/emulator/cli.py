"""The emulator as its own process: ``python -m tests.support.emulator --port 0 --latency 0 --slots 4`` prints
``listening on URL`` and serves until SIGTERM/SIGINT (``--record FILE`` writes each chat's timings on exit)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time

from tests.support.emulator.eras import ERAS
from tests.support.emulator.state import Emulator

DESCRIPTION = "Emulate an Ollama server on loopback so tests and benchmarks need no GPU."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument(
        "--slots",
        type=int,
        default=1,
        help="requests served at once, like OLLAMA_NUM_PARALLEL (default 1, the rest queue); 0: unlimited",
    )
    parser.add_argument("--latency-max", type=float, default=None, help="latency uniform in [latency, this]")
    parser.add_argument("--slots-at", default="", help="T:K[,T:K...]: K slots from T seconds after start")
    parser.add_argument("--record", default=None, help="on exit, write each chat's [arrived, done] here (JSON)")
    parser.add_argument("--mode", choices=sorted(ERAS), default="go", help="the Ollama era to speak")
    parser.add_argument("--version", default=None, help="the version /api/version reports (default: the era's)")
    parser.add_argument("--reload-seconds", type=float, default=0.0, help="what a model (re)load costs")
    parser.add_argument("--context-length", type=int, default=8192)
    parser.add_argument("--models", default="gemma3:4b", help="comma-separated")
    parser.add_argument("--silent-truncate", action="store_true")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="random 500s at this rate")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    emu = Emulator(
        context_length=args.context_length,
        latency=args.latency,
        slots=args.slots or None,
        models=tuple(args.models.split(",")),
        port=args.port,
        mode=args.mode,
        version=args.version,
        reload_seconds=args.reload_seconds,
        latency_max=args.latency_max,
    )
    for item in filter(None, args.slots_at.split(",")):
        at, k = item.split(":")
        emu.set_slots(int(k), at=float(at))
    emu.record = args.record is not None
    emu.silent_truncate = args.silent_truncate
    if args.fail_rate:
        emu.fail_rate(rate=args.fail_rate)
    with emu:
        print(f"listening on {emu.url}", flush=True)
        while not stop.wait(0.5):
            pass
    if args.record:
        with open(args.record, "w") as fh:
            wall0 = time.time() - (time.monotonic() - emu._pool.created)  # t0 on the wall clock
            json.dump({"t0": emu._pool.created, "t0_wall": wall0, "timings": emu.timings}, fh)
    return 0
