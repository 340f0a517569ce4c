"""Waiting with a deadline, never a fixed sleep: ``wait_for`` (blocking) and ``until`` (inside an event loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class _Poll:
    """The one poll-until rule of the tests: a truthy value ends it, the deadline fails it, saying
    what was awaited (and ``describe()``, the state worth seeing when it fails)."""

    def __init__(self, predicate: Callable[[], Any], timeout: float, describe: Callable[[], object] | None) -> None:
        self.predicate, self.timeout, self.describe = predicate, timeout, describe
        self.deadline = time.monotonic() + timeout

    def check(self) -> Any:
        value = self.predicate()
        if not value and time.monotonic() > self.deadline:
            seen = f"; {self.describe()}" if self.describe is not None else ""
            raise AssertionError(f"condition not met within {self.timeout}s: {self.predicate}{seen}")
        return value


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    *,
    describe: Callable[[], object] | None = None,
) -> Any:
    """Poll a condition with a deadline (never a fixed sleep); returns its first truthy value. Blocking."""
    poll = _Poll(predicate, timeout, describe)
    while not (value := poll.check()):
        time.sleep(interval)
    return value


async def until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.01,
    *,
    describe: Callable[[], object] | None = None,
) -> Any:
    """``wait_for`` inside a running event loop: sleeps with ``asyncio.sleep`` so the loop runs meanwhile."""
    poll = _Poll(predicate, timeout, describe)
    while not (value := poll.check()):
        await asyncio.sleep(interval)
    return value
