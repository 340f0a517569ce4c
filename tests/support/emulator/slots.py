"""The emulator's parallel slots: K requests served at once, the rest wait their turn in arrival order.

That is how Ollama (``OLLAMA_NUM_PARALLEL``) and llama.cpp's server (``--parallel``)
behave: a request beyond K queues, so its latency grows by the time it waits.
K can change while requests run (``resize``), or at a given time
(``schedule(at, k)``, seconds after the pool was made): a smaller K lets the
running requests finish and admits no new one until fewer than K run.
Stdlib only, like the emulator.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class SlotPool:
    """A counting semaphore whose size can change; waiters are served first come, first served."""

    def __init__(self, slots: int | None) -> None:
        self._cond = threading.Condition()  # an RLock inside: _apply_plan may run while held
        self._slots = slots  # None: unlimited
        self._busy = 0
        self._queue: deque[object] = deque()
        self._plan: list[tuple[float, int | None]] = []
        self._t0 = self.created = time.monotonic()
        self.waiting_peak = 0

    @property
    def slots(self) -> int | None:
        self._apply_plan()
        return self._slots

    @property
    def busy(self) -> int:
        return self._busy

    def resize(self, slots: int | None) -> None:
        with self._cond:
            self._slots = slots
            self._cond.notify_all()

    def schedule(self, at: float, slots: int | None) -> None:
        """Change K ``at`` seconds after this pool was made (``--slots-at`` on the command line)."""
        with self._cond:
            self._plan.append((at, slots))
            self._plan.sort(key=lambda p: p[0])

    def _apply_plan(self) -> None:
        if not self._plan:
            return
        now = time.monotonic() - self._t0
        with self._cond:
            while self._plan and self._plan[0][0] <= now:
                self._slots = self._plan.pop(0)[1]
                self._cond.notify_all()

    def acquire(self, cancel: threading.Event | None = None) -> bool:
        """Wait for a slot; False when ``cancel`` was set meanwhile."""
        self._apply_plan()
        me = object()
        with self._cond:
            self._queue.append(me)
            self.waiting_peak = max(self.waiting_peak, len(self._queue))
            while self._queue[0] is not me or (self._slots is not None and self._busy >= self._slots):
                if cancel is not None and cancel.is_set():
                    self._queue.remove(me)
                    self._cond.notify_all()
                    return False
                # a plan may change K while we wait: wake now and then to apply it
                self._cond.wait(0.05 if self._plan or cancel is not None else None)
                self._apply_plan()
            self._queue.popleft()
            self._busy += 1
            self._cond.notify_all()
        return True

    def release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()
