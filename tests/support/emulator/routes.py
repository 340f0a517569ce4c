"""The emulator's routes: the HTTP server and the handler that speaks Ollama's API (``/api/chat``, ``/api/ps``,
``/api/show``, ``/api/version``, ``/api/tags``) and the OpenAI-compatible ``/v1/chat/completions`` and
``/v1/models``, with each era's error bodies, reading and changing the ``Emulator`` it serves."""

from __future__ import annotations

import itertools
import json
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.support.emulator import endpoints
from tests.support.emulator.eras import bad_request, runner_key, shifts
from tests.support.emulator.model import (
    count_tokens,
    last_user_content,
    model_details,
    model_digest,
    reply_content,
    tokens,
)

if TYPE_CHECKING:
    from tests.support.emulator.state import Emulator

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


class Server(ThreadingHTTPServer):
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server
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
                            "digest": emu.digests.get(m) or model_digest(m),
                            "modified_at": _now_iso(0),
                            "details": model_details(m),
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
                            "digest": model_digest(m),
                            "details": model_details(m),
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
            arch = model_details(model)["family"]
            self._json(
                200,
                {
                    "modelfile": "",
                    "parameters": "",
                    "template": "{{ .Prompt }}",
                    "details": model_details(model),
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
