"""The emulator's faults: one injected misbehaviour (``Fault``) and ``Faults``, what the next chat requests
get: queued faults first, then a random failure rate, then a seeded mix (``chaos``). Thread-safe."""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by one chat request."""

    kind: Literal["fail", "drop", "garbage", "timeout", "pass"]  # pass: answer normally (a place holder)
    status: int = 500
    body: dict[str, Any] | str | bytes | None = None  # None: Ollama's usual message
    seconds: float = 0.0


class Faults:
    """Queued and random faults, drawn once per chat request (deterministic for a seed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._fail_rate: tuple[int, float] = (500, 0.0)
        self._rng = random.Random(1)
        self._chaos: tuple[random.Random, list[tuple[float, Fault]]] | None = None

    def inject(self, fault: Fault, count: int = 1) -> None:
        with self._lock:
            self._queue.extend([fault] * count)

    def fail_rate(self, status: int = 500, rate: float = 0.1, seed: int = 1) -> None:
        with self._lock:
            self._fail_rate, self._rng = (status, rate), random.Random(seed)

    def chaos(self, *, seed: int = 1, timeout_seconds: float = 5.0, **rates: float) -> None:
        """Random mixed faults: rates by kind, e.g. ``chaos(fail500=.05, fail503=.05, timeout=.05,
        drop=.02, garbage=.02)``; each request draws once (deterministic for a seed)."""
        table = []
        for name, rate in rates.items():
            if name.startswith("fail"):
                table.append((rate, Fault("fail", status=int(name[4:]))))
            elif name == "timeout":
                table.append((rate, Fault("timeout", seconds=timeout_seconds)))
            else:
                table.append((rate, Fault(name)))  # type: ignore[arg-type]
        with self._lock:
            self._chaos = (random.Random(seed), table)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._fail_rate = (500, 0.0)
            self._chaos = None

    def draw(self) -> Fault | None:
        """The fault for the chat request arriving now, or None: answer normally."""
        with self._lock:
            if self._queue:
                fault = self._queue.popleft()
                return None if fault.kind == "pass" else fault
            status, rate = self._fail_rate
            if rate and self._rng.random() < rate:
                return Fault("fail", status=status)
            if self._chaos is not None:
                rng, table = self._chaos
                roll = rng.random()
                for p, fault in table:
                    if roll < p:
                        return fault
                    roll -= p
        return None
