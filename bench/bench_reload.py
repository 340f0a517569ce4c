"""Reload thrash on a shared Ollama: what a neighbour client costs batchd, per setting.

    python -m bench.bench_reload [--rows 60] [--reload 0.5] [--latency 0.02] [--every 0.3]

The emulator speaks Ollama >= 0.30 (``llamaserver``: a different ``shift`` reloads the
model) with one slot and a model load of ``--reload`` seconds. A neighbour client sends
a plain request (same num_ctx, no shift, no runner options) every ``--every`` seconds
while batchd's Ollama backend sends ``--rows`` requests one after the other:

- ``shift=off``: batchd's default, ``shift: false``;
- ``shift=server``: ``backend.shift = "server"`` (send none);
- ``num_gpu line``: shift=server, but the lines carry ``num_gpu`` and it is sent through
  (what batchd did before it stripped runner options).

Prints rows/s, wall seconds and the emulator's reload count per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

import httpx

from batchd.backends.base import ChatRequest
from batchd.backends.ollama import OllamaBackend
from tests.support.emulator import Emulator

MODEL = "gemma3:4b"
NUM_CTX = 4096


def neighbour(url: str, every: float, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.wait(every):
            client.post(
                "/api/chat",
                json={
                    "model": MODEL,
                    "stream": False,
                    "options": {"num_ctx": NUM_CTX},
                    "messages": [{"role": "user", "content": "neighbour"}],
                },
            )


async def batch(url: str, rows: int, *, shift: bool, options: dict[str, object]) -> None:
    backend = OllamaBackend(url=url, send_shift_false=shift)
    try:
        for i in range(rows):
            await backend.chat(
                ChatRequest(
                    model=MODEL,
                    num_ctx=NUM_CTX,
                    options={"num_predict": 8, **options},
                    messages=[{"role": "user", "content": f"Candidate {i}."}],
                )
            )
    finally:
        await backend.aclose()


def run(name: str, args: argparse.Namespace, *, shift: bool, options: dict[str, object]) -> None:
    with Emulator.ollama("llamaserver", reload_seconds=args.reload, latency=args.latency) as emu:
        stop = threading.Event()
        thread = threading.Thread(target=neighbour, args=(emu.url, args.every, stop), daemon=True)
        thread.start()
        started = time.perf_counter()
        asyncio.run(batch(emu.url, args.rows, shift=shift, options=options))
        wall = time.perf_counter() - started
        stop.set()
        thread.join()
        print(f"{name:<14} {args.rows / wall:6.2f} rows/s  {wall:6.1f} s  reloads {emu.reloads}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=60)
    ap.add_argument("--reload", type=float, default=0.5)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--every", type=float, default=0.3)
    args = ap.parse_args()
    run("shift=off", args, shift=True, options={})
    run("shift=server", args, shift=False, options={})
    run("num_gpu line", args, shift=False, options={"num_gpu": 99})


if __name__ == "__main__":
    main()
