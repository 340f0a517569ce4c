"""Small asyncio helpers that are no one module's business: ``wait_first``, ``supervised``, ``Sleep``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

#: ``asyncio.sleep`` or a test's fake: what the runner, the gate and the daemon wait with
Sleep = Callable[[float], Awaitable[None]]


async def wait_first(*aws: Awaitable[object], timeout: float | None = None) -> None:
    """Wait until the first of ``aws`` is done (or ``timeout`` passes), then cancel the rest.

    Coroutines are wrapped in tasks here and cancelled here, also when the caller
    is cancelled. A task or future the caller passed in stays the caller's: it is
    left running (look at ``.done()``, cancel it if you mean to). Nothing is
    raised for an awaitable that failed: await the one you care about.
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, aw in zip(tasks, aws):
            if task is not aw and not task.done():
                task.cancel()


def supervised(
    work: Coroutine[Any, Any, None], name: str, on_error: Callable[[str, BaseException], None]
) -> asyncio.Task[None]:
    """A task whose unhandled exception goes to ``on_error(name, exc)`` the moment it dies, so whoever
    waits on its work hears of it (a cancel is not an error). The runner's lanes, feeder, monitor."""
    task = asyncio.create_task(work, name=name)

    def ended(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and (exc := t.exception()) is not None:
            on_error(name, exc)

    task.add_done_callback(ended)
    return task
