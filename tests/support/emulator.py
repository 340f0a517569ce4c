"""Emulate an Ollama server on loopback so tests and benchmarks need no GPU.

One job: speak Ollama's HTTP protocol (and the OpenAI-compatible
``/v1/chat/completions`` that Ollama and vLLM serve) from a real
``ThreadingHTTPServer`` in a background thread, with deterministic replies
(``emulator_model``), context-window rules, a loaded-model state and injectable faults.

Eras (``mode``, see ``emulator_eras``): ``go`` is Ollama 0.12.6-0.24 (version
"0.24.0", the Go runner's last release: there is no 0.25-0.29), ``llamaserver``
is >= 0.30.1 (version "0.33.0"); each with its own error bodies. The loaded
model is reloaded (``reload_seconds`` of sleep, reported as ``load_duration``)
when a request's num_ctx, runner options or (llamaserver) shift differ, after
the requests in flight finish. ``Emulator.ollama(mode)``
gives a stock server: one slot (``OLLAMA_NUM_PARALLEL=1``, the rest queue) and a
real reload cost; ``Emulator()`` keeps tests fast (unlimited slots, free reloads).

Markers in the last user message target single rows: ``<<GARBAGE>>`` (content
is not JSON), ``<<SLOW:0.5>>`` (extra seconds while holding a slot),
``<<FAIL:500>>`` (always that status).

Slots (``slots=K``, ``tests.support.slots.SlotPool``): K requests are served at once,
more wait for a slot in arrival order, so their latency grows; ``set_slots(K)``
changes K at once, ``set_slots(K, at=T)`` T seconds after start. ``latency_max``
draws each request's latency uniformly from ``[latency, latency_max]``.

Run standalone: ``python -m tests.support.emulator --port 0 --latency 0 --slots 4 [--mode llamaserver]``
(``--latency-max 0.2 --slots-at 30:4 --record FILE`` for the slots and timings above).
Stdlib only on purpose: the benchmark and the system tests start it as a bare
process.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script: tests/ is on sys.path, not the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.support import emulator_endpoints as endpoints  # noqa: E402
from tests.support.emulator_eras import ERAS, Era, bad_request, runner_key, shifts  # noqa: E402
from tests.support.emulator_model import count_tokens, last_user_content, reply_content, tokens  # noqa: E402,F401
from tests.support.slots import SlotPool  # noqa: E402

DEFAULT_NUM_CTX = 4096  # what Ollama gives a model when the request names no num_ctx
ERROR_MESSAGES = {
    400: "bad request",
    404: 'model "{model}" not found, try pulling it first',
    429: "too many requests, please try again later",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_OPENAI_CODES = {404: "model_not_found", 429: "rate_limit_exceeded", 503: "server_busy"}
_completion_ids = itertools.count(1)
_GARBAGE_BODY = b'{"model": "gemma3:4b", "message": {"role": "assist'  # cut mid-object


# -- faults and the emulator -------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by one chat request."""

    kind: Literal["fail", "drop", "garbage", "timeout", "pass"]  # pass: answer normally (a place holder)
    status: int = 500
    body: dict[str, Any] | str | bytes | None = None  # None: Ollama's usual message
    seconds: float = 0.0


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
        #: each model's Ollama capabilities (``emulator_endpoints``); tests narrow them
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
        self._faults: deque[Fault] = deque()
        self._fail_rate: tuple[int, float] = (500, 0.0)
        self._rng = random.Random(1)
        self._chaos: tuple[random.Random, list[tuple[float, Fault]]] | None = None
        self._inflight = 0
        self._pool = SlotPool(slots)
        #: (arrived, done) monotonic seconds of each chat request, when ``record`` is on (benchmarks)
        self.record = False
        self.timings: list[tuple[float, float]] = []
        self._wake = threading.Event()  # set on down/stop so sleeping handlers give up
        self._server: _Server | None = None
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
        self._server = _Server(("127.0.0.1", self.port), _Handler)
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
        with self._lock:
            self._faults.extend([fault] * count)

    def fail_next(
        self, status: int = 503, count: int = 1, body: dict[str, Any] | str | bytes | None = None, *, after: int = 0
    ) -> None:
        """The next ``count`` chat calls fail, after ``after`` calls answered normally (deterministic,
        where waiting for progress and then injecting would race a fast job)."""
        self.inject(Fault("pass"), after)
        self.inject(Fault("fail", status=status, body=body), count)

    def fail_rate(self, status: int = 500, rate: float = 0.1, seed: int = 1) -> None:
        with self._lock:
            self._fail_rate, self._rng = (status, rate), random.Random(seed)

    def drop_next(self, count: int = 1) -> None:
        self.inject(Fault("drop"), count)

    def garbage_next(self, count: int = 1) -> None:
        self.inject(Fault("garbage"), count)

    def timeout_next(self, count: int = 1, seconds: float = 30.0) -> None:
        self.inject(Fault("timeout", seconds=seconds), count)

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

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fail_rate = (500, 0.0)
            self._chaos = None

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
        with self._lock:
            self.calls.append(body)
            if self._faults:
                fault = self._faults.popleft()
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # the default 5 drops SYNs under a burst: 1 s retransmit stalls
    emu: Emulator

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()

    def cut_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # peers hanging up are normal here
            super().handle_error(request, client_address)


def _now_iso(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _details(name: str) -> dict[str, Any]:
    family = name.split(":")[0].split(".")[0]
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "4.3B",
        "quantization_level": "Q4_K_M",
    }


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server
    hdrs: dict[str, str]

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        with self.server.conns_lock:
            self.server.conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
        pass

    def handle_one_request(self) -> None:
        # The stdlib parses headers with the email package (~80 us); a dict is enough here
        # and keeps the zero-latency emulator well above the 2,000 req/s the benchmark needs.
        line = self.rfile.readline(65537)
        parts = line.split()
        if len(parts) != 3:
            self.close_connection = True
            return
        hdrs: dict[str, str] = {}
        while (h := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
            k, _, v = h.partition(b":")
            hdrs[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
        self.hdrs, self.path = hdrs, parts[1].decode("latin-1").split("?")[0]
        self.close_connection = parts[2] != b"HTTP/1.1" or hdrs.get("connection", "").lower() == "close"
        method = parts[0].decode("latin-1")
        if method in ("GET", "POST"):
            getattr(self, "do_" + method)()
        else:
            self._send(405, b"405 method not allowed", "text/plain")

    # plumbing
    def _send(self, status: int, body: bytes, ctype: str = "application/json; charset=utf-8", extra: str = "") -> None:
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        )
        self.wfile.write(head.encode() + body)  # one write: no Nagle/delayed-ACK stall

    def _json(self, status: int, obj: Any, extra: str = "") -> None:
        self._send(status, json.dumps(obj).encode(), extra=extra)

    def _error(self, status: int, message: str, openai: bool, code: str | None = None) -> None:
        extra = "Retry-After: 1\r\n" if status in (429, 503) else ""
        if not openai:
            return self._json(status, {"error": message}, extra)
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._json(
            status,
            {"error": {"message": message, "type": kind, "param": None, "code": code or _OPENAI_CODES.get(status)}},
            extra,
        )

    def _stream(self, ctype: str, pieces: list[bytes]) -> None:
        out = [f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()]
        out += [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
        self.wfile.write(b"".join(out))

    def _read_body(self) -> bytes:  # httpx and the openai SDK always send Content-Length
        return self.rfile.read(int(self.hdrs.get("content-length") or 0))

    # routes
    def _refused(self) -> bool:
        status = self.server.emu.refuse
        if status is None:
            return False
        self._read_body()  # 0 bytes for a GET
        self._json(status, {"error": "unauthorized" if status in (401, 403) else "404 page not found"})
        return True

    def do_GET(self) -> None:
        emu, path = self.server.emu, self.path
        if self._refused():
            return
        if path == "/api/version":
            self._json(200, {"version": emu.version})
        elif path == "/api/tags":
            self._json(
                200,
                {
                    "models": [
                        {
                            "name": m,
                            "model": m,
                            "size": emu.ps["size"],
                            "digest": emu.digests.get(m) or _digest(m),
                            "modified_at": _now_iso(0),
                            "details": _details(m),
                        }
                        for m in emu.models
                    ]
                },
            )
        elif path == "/api/ps":
            m = emu.models[0]
            self._json(
                200,
                {
                    "models": [
                        {
                            "name": m,
                            "model": m,
                            "size": emu.ps["size"],
                            "size_vram": emu.ps["size_vram"],
                            "context_length": emu.loaded_ctx,
                            "expires_at": _now_iso(time.time() + 300),
                            "digest": _digest(m),
                            "details": _details(m),
                        }
                    ]
                },
            )
        elif path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "created": 0, "owned_by": "library"} for m in emu.models],
                },
            )
        elif path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path in ("/api/chat", "/api/show", "/v1/chat/completions"):
            self._send(405, b"405 method not allowed", "text/plain")
        else:
            self._send(404, b"404 page not found", "text/plain")

    def do_POST(self) -> None:
        if self._refused():
            return
        path, raw = self.path, self._read_body()
        if path in ("/api/chat", "/v1/chat/completions"):
            self._chat(raw, openai=path.startswith("/v1"))
        elif path in endpoints.ROUTES:  # /api/embed, /v1/embeddings, /api/generate, /v1/completions
            self._send(*endpoints.ROUTES[path](self.server.emu, raw, path.startswith("/v1")))
        elif path == "/api/show":
            emu = self.server.emu
            try:
                model = json.loads(raw or b"{}").get("model") or ""
            except (ValueError, AttributeError):
                return self._json(400, {"error": "invalid JSON body"})
            if not self._known(model):
                return self._json(404, {"error": f"model '{model}' not found"})
            arch = _details(model)["family"]
            self._json(
                200,
                {
                    "modelfile": "",
                    "parameters": "",
                    "template": "{{ .Prompt }}",
                    "details": _details(model),
                    "capabilities": list(emu.capabilities.get(model, ("completion",))),
                    "model_info": {"general.architecture": arch, f"{arch}.context_length": emu.context_length},
                },
            )
        else:
            self._send(404, b"404 page not found", "text/plain")

    def _known(self, model: str) -> bool:
        models = self.server.emu.models
        return model in models or f"{model}:latest" in models

    def _chat(self, raw: bytes, openai: bool) -> None:
        emu = self.server.emu
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            emu._arrive({"_raw": raw.decode(errors="replace")})
            return self._error(400, "invalid JSON body", openai)
        fault = emu._arrive(body)
        model = str(body.get("model") or "")
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return self._error(400, "messages must be a list of objects", openai)
        if fault is not None:
            if fault.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.kind == "garbage":
                return self._send(200, _GARBAGE_BODY)
            if fault.kind == "fail":
                if fault.body is None:
                    known = {**ERROR_MESSAGES, 500: emu.era.crash}
                    return self._error(
                        fault.status, known.get(fault.status, "internal error").format(model=model), openai
                    )
                data = (
                    fault.body
                    if isinstance(fault.body, bytes)
                    else (fault.body.encode() if isinstance(fault.body, str) else json.dumps(fault.body).encode())
                )
                return self._send(fault.status, data)
            emu._wake.wait(fault.seconds)  # "timeout": stall, then answer normally
        last = last_user_content(messages)
        if "<<FAIL:" in last:
            status = int(last.split("<<FAIL:", 1)[1].split(">>", 1)[0])
            return self._error(status, ERROR_MESSAGES.get(status, "error").format(model=model), openai)
        if not model:
            return self._error(400, "model is required", openai)
        if not self._known(model):
            msg = ERROR_MESSAGES[404].format(model=model)
            return self._error(404, msg if not openai else f"model '{model}' not found", openai)
        lacking = endpoints.missing(emu.capabilities.get(model, ()), body)
        if lacking is not None:
            return self._error(400, endpoints.refusal(model, lacking), openai)
        blind = endpoints.image_refusal(emu.capabilities.get(model, ()), messages, openai)
        if blind is not None:
            return self._error(*blind, openai)
        if openai:
            self._openai(body, messages, last)
        else:
            self._ollama(body, messages, last)

    def _generate(self, last: str) -> float:
        slow = 0.0
        if "<<SLOW:" in last:
            slow = float(last.split("<<SLOW:", 1)[1].split(">>", 1)[0])
        started = time.perf_counter()
        self.server.emu._work(self.server.emu.request_latency() + slow)
        return time.perf_counter() - started

    def _ollama(self, body: dict[str, Any], messages: list[dict[str, Any]], last: str) -> None:
        emu = self.server.emu
        refused = bad_request(body)
        if refused is not None:
            return self._error(*refused, openai=False)
        opts = body.get("options") or {}
        window = min(int(opts.get("num_ctx") or DEFAULT_NUM_CTX), emu.context_length)
        load_ns = emu._schedule(runner_key(emu.era, body, window), window)
        try:
            self._ollama_reply(body, messages, last, window, load_ns)
        finally:
            emu._release()

    def _ollama_reply(
        self, body: dict[str, Any], messages: list[dict[str, Any]], last: str, window: int, load_ns: int
    ) -> None:
        emu = self.server.emu
        opts = body.get("options") or {}
        prompt = count_tokens(messages)
        if emu.era.overflows(prompt, window) and body.get("truncate") is False and not emu.silent_truncate:
            return self._json(400, emu.era.overflow(prompt, window))
        truncated = prompt > window
        content = reply_content(last, body.get("format"))
        evals, reason = tokens(content), "stop"
        num_predict = int(opts.get("num_predict") or 0)
        limit = num_predict if num_predict > 0 else None
        if not truncated and not shifts(body):  # with shift (the default) generation never hits the window
            limit = window - prompt if limit is None else min(limit, window - prompt)
        if limit is not None and evals > limit:  # "length" only when the output really hit the limit
            content, evals, reason = content[: max(limit, 0) * 4], max(limit, 0), "length"
        elapsed_ns = max(2, int(self._generate(last) * 1e9))
        counted = window if truncated else prompt
        cached = emu._cache_hit(messages, content)
        if emu.version == "0.30.0":  # it counted only what the prompt cache did not hold (fixed in 0.30.1)
            counted = max(1, counted - cached)
        counts = {
            "done_reason": reason,
            "total_duration": load_ns + elapsed_ns,
            "load_duration": load_ns,
            "prompt_eval_count": counted,
            "prompt_eval_duration": elapsed_ns // 5,
            "eval_count": evals,
            "eval_duration": elapsed_ns - elapsed_ns // 5,
        }
        model, created = body["model"], _now_iso()
        if body.get("stream", True) is False:
            return self._json(
                200,
                {
                    "model": model,
                    "created_at": created,
                    "message": endpoints.ollama_message(content, endpoints.tool_calls(body, messages)),
                    "done": True,
                    **counts,
                },
            )
        pieces = [content[i : i + 16] for i in range(0, len(content), 16)]
        chunks = [
            json.dumps(
                {"model": model, "created_at": created, "message": {"role": "assistant", "content": p}, "done": False}
            ).encode()
            + b"\n"
            for p in pieces
        ]
        chunks.append(
            json.dumps(
                {
                    "model": model,
                    "created_at": created,
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    **counts,
                }
            ).encode()
            + b"\n"
        )
        self._stream("application/x-ndjson", chunks)

    def _openai(self, body: dict[str, Any], messages: list[dict[str, Any]], last: str) -> None:
        emu = self.server.emu
        window, prompt = emu.context_length, count_tokens(messages)
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
        # vLLM refuses when prompt + max_tokens does not fit; it never truncates silently.
        if (prompt > window or prompt + max_tokens > window) and not emu.silent_truncate:
            return self._error(
                400,
                (
                    f"This model's maximum context length is {window} tokens. However, you requested "
                    f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
                    "completion). Please reduce the length of the messages or completion."
                ),
                openai=True,
                code="context_length_exceeded",
            )
        rf = body.get("response_format") or {}
        fmt: Any = None
        if rf.get("type") == "json_schema":
            fmt = (rf.get("json_schema") or {}).get("schema") or {}
        elif rf.get("type") == "json_object":
            fmt = "json"
        content = reply_content(last, fmt)
        completion, reason = tokens(content), "stop"
        cap = min(max_tokens, window - prompt) if max_tokens else window - prompt
        if prompt <= window and completion > cap:
            content, completion, reason = content[: max(cap, 0) * 4], max(cap, 0), "length"
        self._generate(last)
        prompt = min(prompt, window)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        head = {"id": f"chatcmpl-{next(_completion_ids):024x}", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return self._json(
                200,
                {
                    **head,
                    "object": "chat.completion",
                    "choices": [endpoints.openai_choice(content, reason, endpoints.tool_calls(body, messages))],
                    "usage": usage,
                },
            )
        events = [
            {
                **head,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": content[i : i + 16]}, "finish_reason": None}
                ],
            }
            for i in range(0, len(content), 16)
        ]
        events.append(
            {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        data = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        self._stream("text/event-stream", data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
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


if __name__ == "__main__":
    sys.exit(main())
