"""The bare client: C aiohttp tasks in a loop, one request each at a time, no journal (what any client gets).

Used by ``bench.bench_real_knee`` and ``bench.gpu`` as the mark ``lanes = "auto"``
is held against. ``python -m bench.bare URL CONCURRENCY REQUESTS MAX_TOKENS MODEL [START]``
prints the figures as one JSON line (``bench.gpu`` runs it with its venv's python,
which has aiohttp).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from bench.gpu import body


async def _run(url: str, conc: int, n: int, max_tokens: int, model: str, start: int) -> dict[str, Any]:
    import aiohttp

    lat: list[float] = []
    tokens = failed = 0
    todo = iter(range(start, start + n))
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker() -> None:
            nonlocal tokens, failed
            for i in todo:  # one shared iterator: each row is sent once, by whichever task is free
                t = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", json=body(i, max_tokens, model)) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status != 200:
                        failed += 1
                        continue
                lat.append(time.perf_counter() - t)
                tokens += int((reply.get("usage") or {}).get("completion_tokens") or 0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        took = time.perf_counter() - started
    lat.sort()
    return {
        "requests": n,
        "ok": n - failed,
        "rps": len(lat) / took,
        "tok_s": tokens / took,
        "p95": lat[int(0.95 * (len(lat) - 1))] if lat else None,
        "lanes": str(conc),
    }


def bare(url: str, conc: int, n: int, max_tokens: int, model: str, start: int = 0) -> dict[str, Any]:
    """Rows ``start`` .. ``start + n - 1`` at ``conc`` in flight: req/s, output tok/s, p95 (s), ok."""
    return asyncio.run(_run(url, conc, n, max_tokens, model, start))


if __name__ == "__main__":
    url, conc, n, max_tokens, model = sys.argv[1:6]
    start = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    print(json.dumps(bare(url.rstrip("/"), int(conc), int(n), int(max_tokens), model, start)))
