"""The emulator's state: ``Emulator``, an Ollama-speaking server on loopback with its knobs (latency, slots,
models, /api/ps), its loaded model (reloads when num_ctx, runner options or shift differ), its one-slot prompt
cache, what it observed (calls, peak concurrency, timings), and its faults (``faults.Faults``)."""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any

from tests.support.emulator import endpoints
from tests.support.emulator.eras import ERAS, Era
from tests.support.emulator.faults import Fault, Faults
from tests.support.emulator.model import count_tokens
from tests.support.emulator.routes import DEFAULT_NUM_CTX, Handler, Server
from tests.support.emulator.slots import SlotPool


class Emulator:
    """An Ollama-speaking server on 127.0.0.1, started in a thread."""

    def __init__(
        self,
        *,
        context_length: int = 8192,
        latency: float = 0.0,
        slots: int | None = None,
        models: tuple[str, ...] | list[str] = ("gemma3:4b",),
        port: int = 0,
        mode: str = "go",
        version: str | None = None,
        reload_seconds: float = 0.0,
        latency_max: float | None = None,
    ) -> None:
        self.era: Era = ERAS[mode]
        self.version = version or self.era.version
        #: seconds a (re)load takes; requests wait for it and report it as load_duration
        self.reload_seconds = reload_seconds
        #: model loads so far (the first one included); ``reloads`` leaves out the first
        self.loads = 0
        self._loaded_key: tuple[Any, ...] | None = None
        self._using = 0  # requests running on the loaded model
        self._queue: deque[object] = deque()  # requests waiting to be scheduled, in arrival order
        self._cached: list[dict[str, Any]] = []  # what the (one-slot) prompt cache holds
        self._reloading = False
        self.context_length = context_length
        self.latency = latency
        self.latency_max = latency_max
        self._latency_rng = random.Random(7)
        self.models = tuple(models)
        #: each model's Ollama capabilities (``endpoints``); tests narrow them
        self.capabilities = endpoints.capabilities_for(self.models)
        #: a model's /api/tags digest when a test re-pulls it (default: a hash of its name)
        self.digests: dict[str, str] = {}
        self.silent_truncate = False
        #: when set, every route answers this status (a proxy refusing credentials: 401/403; 404)
        self.refuse: int | None = None
        self.calls: list[dict[str, Any]] = []
        self.peak_concurrency = 0
        self.ps: dict[str, int] = {"size": 5_000_000_000, "size_vram": 5_000_000_000}
        self.loaded_ctx = min(DEFAULT_NUM_CTX, context_length)  # /api/ps reports the loaded num_ctx
        self.port = port  # 0 until start() picks a free one, then kept across down()/up()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.faults = Faults()
        self._inflight = 0
        self._pool = SlotPool(slots)
        #: (arrived, done) monotonic seconds of each chat request, when ``record`` is on (benchmarks)
        self.record = False
        self.timings: list[tuple[float, float]] = []
        self._wake = threading.Event()  # set on down/stop so sleeping handlers give up
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def ollama(cls, mode: str = "llamaserver", **kw: Any) -> Emulator:
        """A stock Ollama of that era: one slot (the rest queue) and a model load that takes time."""
        return cls(mode=mode, **{"slots": 1, "reload_seconds": 0.3, **kw})

    # lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Emulator:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again) on the remembered port."""
        if self._server is not None:
            return
        self._wake = threading.Event()
        self._server = Server(("127.0.0.1", self.port), Handler)
        self._server.emu = self
        self.port = self._server.server_address[1]
        # A short poll interval keeps down()/stop() quick; shutdown() waits one poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"emulator:{self.port}", daemon=True
        )
        self._thread.start()

    def down(self) -> None:
        """Refuse connections and cut open ones, as a dead server would; keep the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.cut_connections()  # before waking sleepers, so in-flight requests fail, not answer
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    stop = down

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # knobs
    @property
    def slots(self) -> int | None:
        return self._pool.slots

    @slots.setter
    def slots(self, value: int | None) -> None:
        self._pool.resize(value or None)

    def set_slots(self, value: int | None, at: float | None = None) -> None:
        """K parallel slots from now on, or ``at`` seconds after the emulator was made."""
        if at is None:
            self._pool.resize(value or None)
        else:
            self._pool.schedule(at, value or None)

    def request_latency(self) -> float:
        """This request's service time: ``latency``, or uniform in ``[latency, latency_max]``."""
        if self.latency_max is None or self.latency_max <= self.latency:
            return self.latency
        with self._lock:
            return self._latency_rng.uniform(self.latency, self.latency_max)

    def set_ps(
        self, *, size: int | None = None, size_vram: int | None = None, context_length: int | None = None
    ) -> None:
        if size is not None:
            self.ps["size"] = size
        if size_vram is not None:
            self.ps["size_vram"] = size_vram
        if context_length is not None:
            self.loaded_ctx = context_length

    def inject(self, fault: Fault, count: int = 1) -> None:
        self.faults.inject(fault, count)

    def fail_next(
        self, status: int = 503, count: int = 1, body: dict[str, Any] | str | bytes | None = None, *, after: int = 0
    ) -> None:
        """The next ``count`` chat calls fail, after ``after`` calls answered normally (deterministic,
        where waiting for progress and then injecting would race a fast job)."""
        self.inject(Fault("pass"), after)
        self.inject(Fault("fail", status=status, body=body), count)

    def fail_rate(self, status: int = 500, rate: float = 0.1, seed: int = 1) -> None:
        self.faults.fail_rate(status, rate, seed)

    def drop_next(self, count: int = 1) -> None:
        self.inject(Fault("drop"), count)

    def garbage_next(self, count: int = 1) -> None:
        self.inject(Fault("garbage"), count)

    def timeout_next(self, count: int = 1, seconds: float = 30.0) -> None:
        self.inject(Fault("timeout", seconds=seconds), count)

    def chaos(self, *, seed: int = 1, timeout_seconds: float = 5.0, **rates: float) -> None:
        """Random mixed faults (``Faults.chaos``): rates by kind, each request draws once."""
        self.faults.chaos(seed=seed, timeout_seconds=timeout_seconds, **rates)

    def clear_faults(self) -> None:
        self.faults.clear()

    # observations
    @property
    def chat_count(self) -> int:
        return len(self.calls)

    def reset_calls(self) -> None:
        """Forget recorded calls and the observed peak concurrency."""
        with self._lock:
            self.calls.clear()
            self.peak_concurrency = 0

    @property
    def reloads(self) -> int:
        return max(0, self.loads - 1)

    # used by the handler
    def _schedule(self, key: tuple[Any, ...], window: int) -> int:
        """Run on the loaded model, reloading it first when ``key`` differs; the wait in ns."""
        started = time.perf_counter()
        with self._cond:
            if key == self._loaded_key and not self._reloading and not self._queue:
                self._using += 1  # the fast path: the loaded model fits and nobody waits
                return 1_000_000
            # First come, first served (Ollama's scheduler queue): once a request waits for a
            # reload, later ones wait behind it even when they match the loaded model.
            ticket = object()
            self._queue.append(ticket)
            while self._queue[0] is not ticket or self._reloading or (key != self._loaded_key and self._using):
                self._cond.wait(0.05)  # Ollama reloads once the requests in flight are done
            self._queue.popleft()
            reload = key != self._loaded_key
            if reload:
                self._reloading = True
            else:
                self._using += 1
            self._cond.notify_all()
        if reload:
            if self.reload_seconds > 0:
                self._wake.wait(self.reload_seconds)
            with self._cond:
                self._loaded_key, self.loaded_ctx, self._reloading = key, window, False
                self.loads += 1
                self._using += 1
                self._cond.notify_all()
        return max(1_000_000, int((time.perf_counter() - started) * 1e9))

    def _cache_hit(self, messages: list[dict[str, Any]], answer: str) -> int:
        """Prompt tokens a one-slot prefix cache holds for ``messages`` (the last call plus its answer)."""
        with self._lock:
            held, self._cached = self._cached, [*messages, {"role": "assistant", "content": answer}]
        same = 0
        for a, b in zip(messages, held):
            if a.get("role") != b.get("role") or a.get("content") != b.get("content"):
                break
            same += 1
        return count_tokens(messages[:same])

    def _release(self) -> None:
        with self._cond:
            self._using -= 1
            if self._queue:
                self._cond.notify_all()

    def _arrive(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:  # the call's place in ``calls`` and its fault are drawn together
            self.calls.append(body)
            return self.faults.draw()

    def _work(self, seconds: float) -> None:
        """Hold a slot (if limited) for ``seconds``, counting concurrency."""
        arrived = time.monotonic()
        if not self._pool.acquire(self._wake):
            return
        try:
            with self._lock:
                self._inflight += 1
                self.peak_concurrency = max(self.peak_concurrency, self._inflight)
            if seconds > 0:
                self._wake.wait(seconds)
            with self._lock:
                self._inflight -= 1
                if self.record:
                    self.timings.append((arrived, time.monotonic()))
        finally:
            self._pool.release()
