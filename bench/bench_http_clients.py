"""HTTP client CPU per request: why batchd keeps its hand-written asyncio + h11 transport.

    python -m bench.bench_http_clients [--requests 3000] [--concurrency 1,4]

Every client posts the same Ollama ``/api/chat`` body to a zero-latency emulator
in another process and parses the JSON reply; the figure is this process's CPU
time per request (``time.process_time``), which is what the daemon spends on
the request path while the GPU works. Measured side by side in one run, in a
rotating order so a load change on a shared machine hits every client alike:

- ``httpx``: ``httpx.AsyncClient`` with its default transport (httpcore);
- ``httpx-aiohttp``: ``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport``;
- ``batchd``: ``httpx.AsyncClient`` over ``batchd.backends.transport.AsyncioTransport``;
- ``aiohttp``: a raw ``aiohttp.ClientSession`` loop (the floor: no httpx at all).

The two aiohttp rows need ``pip install aiohttp httpx-aiohttp`` and print ``n/a``
without them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from batchd.backends.transport import AsyncioTransport
from bench.common import EmulatorProcess, header

BODY = orjson.dumps(
    {
        "model": "gemma3:4b",
        "stream": False,
        "options": {"num_ctx": 8192},
        "messages": [
            {"role": "system", "content": "Score the candidate 1-10."},
            {"role": "user", "content": "role: engineer\nname: Ada\nexperience: 12"},
        ],
    }
)
HEADERS = {"content-type": "application/json"}

Post = Callable[[], Awaitable[dict[str, Any]]]


def limits(k: int) -> httpx.Limits:
    return httpx.Limits(max_connections=k, max_keepalive_connections=k)


async def _drive(post: Post, n: int, k: int) -> float:
    """CPU seconds per request for ``n`` posts, ``k`` at a time."""
    for _ in range(min(50, n)):  # warm: connections open, code paths hot
        await post()
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            data = await post()
            assert "message" in data, data

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(k)))
    return (time.process_time() - cpu) / n


async def with_httpx(url: str, n: int, k: int, transport: httpx.AsyncBaseTransport | None) -> float:
    kwargs: dict[str, Any] = {"transport": transport} if transport is not None else {"limits": limits(k)}
    async with httpx.AsyncClient(base_url=url, timeout=30, **kwargs) as client:

        async def post() -> dict[str, Any]:
            resp = await client.post("/api/chat", content=BODY, headers=HEADERS)
            return orjson.loads(resp.content)  # type: ignore[no-any-return]

        return await _drive(post, n, k)


async def with_aiohttp(url: str, n: int, k: int) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=k)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def post() -> dict[str, Any]:
            async with session.post("/api/chat", data=BODY, headers=HEADERS) as resp:
                return orjson.loads(await resp.read())  # type: ignore[no-any-return]

        return await _drive(post, n, k)


def clients(k: int) -> dict[str, Callable[[str, int], Awaitable[float]] | None]:
    table: dict[str, Callable[[str, int], Awaitable[float]] | None] = {
        "httpx": lambda url, n: with_httpx(url, n, k, None),
        "httpx-aiohttp": None,
        "batchd": lambda url, n: with_httpx(url, n, k, AsyncioTransport(limits=limits(k))),
        "aiohttp": None,
    }
    try:
        import aiohttp  # noqa: F401
        from httpx_aiohttp import AiohttpTransport

        def aio_transport() -> httpx.AsyncBaseTransport:
            import aiohttp as a

            return AiohttpTransport(client=lambda: a.ClientSession(connector=a.TCPConnector(limit=k)))

        table["httpx-aiohttp"] = lambda url, n: with_httpx(url, n, k, aio_transport())
        table["aiohttp"] = lambda url, n: with_aiohttp(url, n, k)
    except ImportError:
        pass
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--rounds", type=int, default=3, help="rotations of the client order; the median is shown")
    args = ap.parse_args(argv)
    header("HTTP client CPU per request (zero-latency emulator)")
    emu = EmulatorProcess(latency=0.0).start()
    try:
        ks = [int(x) for x in args.concurrency.split(",")]
        results: dict[tuple[str, int], list[float]] = {}
        for k in ks:
            table = clients(k)
            names = [name for name, fn in table.items() if fn is not None]
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    fn = table[name]
                    assert fn is not None
                    results.setdefault((name, k), []).append(asyncio.run(fn(emu.url, args.requests)))
        print(
            f"{'client':<15}"
            + "".join(f"{f'{k} conn ms/req':>16}" for k in ks)
            + "".join(f"{f'vs batchd @{k}':>14}" for k in ks)
        )
        for name in clients(ks[0]):
            cells, ratios = [], []
            for k in ks:
                got = sorted(results.get((name, k), []))
                mine = sorted(results.get(("batchd", k), []))
                if not got:
                    cells.append(f"{'n/a':>16}")
                    ratios.append(f"{'n/a':>14}")
                    continue
                med, base = got[len(got) // 2], mine[len(mine) // 2]
                cells.append(f"{med * 1000:>16.3f}")
                ratios.append(f"{med / base:>14.2f}")
            print(f"{name:<15}" + "".join(cells) + "".join(ratios))
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
