"""aio.wait_first: the first done ends the wait, the rest it wrapped are cancelled."""

from __future__ import annotations

import asyncio

from batchd.aio import wait_first


def test_the_first_done_wins_and_the_rest_are_cancelled() -> None:
    cancelled: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_first(sleeper("slow", 30), sleeper("fast", 0.01), sleeper("slower", 60))
        await asyncio.sleep(0)  # let the cancellations land
        return loop.time() - started

    assert asyncio.run(scenario()) < 5
    assert sorted(cancelled) == ["slow", "slower"]


def test_timeout_cancels_them_all() -> None:
    async def scenario() -> bool:
        event = asyncio.Event()
        waiter = asyncio.ensure_future(event.wait())  # the caller's own task: left alone
        stop = asyncio.Event()
        await wait_first(waiter, stop.wait(), timeout=0.01)
        alive = not waiter.done()
        waiter.cancel()
        return alive

    assert asyncio.run(scenario()) is True


def test_a_cancelled_caller_cancels_what_it_wrapped() -> None:
    cancelled: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("inner")
            raise

    async def scenario() -> None:
        outer = asyncio.create_task(wait_first(forever()))
        await asyncio.sleep(0.01)
        outer.cancel()
        await asyncio.gather(outer, return_exceptions=True)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert cancelled == ["inner"]
