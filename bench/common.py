"""Shared helpers for the benchmarks: emulator process, batchd runs in temp folders, machine facts.

Every benchmark drives real processes: the emulator is started as
``python -m tests.support.emulator --port 0 ...`` (its first stdout line is
``listening on URL``) and batchd as ``python -m batchd run --once`` with
``BATCHD_*`` variables, exactly what an operator would run. Nothing here
imports batchd, so a benchmark measures the installed code, not a copy.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.factories import Folders as TestFolders

REPO = Path(__file__).resolve().parent.parent
MODEL = "gemma3:4b"  # the emulator's default model name


# -- machine facts -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    """The 1/5/15-minute load averages: figures on a shared machine mean little without them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}/{five:.2f}/{fifteen:.2f}"


def machine() -> str:
    return (
        f"{os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load {load()}"
    )


def header(title: str) -> None:
    print(f"\n== {title}\n# {machine()}", flush=True)


def summary(name: str, text: str) -> str:
    line = f"SUMMARY {name}: {text}"
    print(line, flush=True)
    return line


# -- the emulator as a process -----------------------------------------------------------


class EmulatorProcess:
    """``python -m tests.support.emulator`` in its own process; ``kill()`` + ``start()`` keep the port."""

    def __init__(self, *, latency: float = 0.0, slots: int = 0, port: int = 0, context_length: int = 8192) -> None:
        self.latency, self.slots, self.port, self.context_length = latency, slots, port, context_length
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> EmulatorProcess:
        cmd = [
            sys.executable,
            "-m",
            "tests.support.emulator",
            "--port",
            str(self.port),
            "--latency",
            str(self.latency),
            "--slots",
            str(self.slots),
            "--context-length",
            str(self.context_length),
        ]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
            if line.startswith("listening on "):
                break
            self.proc.wait(timeout=5)
            # A restart on a fixed port can race the old socket's teardown: retry until the deadline.
            if time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise RuntimeError(f"emulator did not start: {line!r} {err[-500:]}")
            time.sleep(0.2)
        self.url = line.removeprefix("listening on ")
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        """SIGKILL: the backend dies mid-request, as a crashed server would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait, with a deadline, until ``url`` answers any HTTP status (a server finished loading)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
            conn.request("GET", parts.path or "/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


# -- batchd in temp folders ---------------------------------------------------------------


class Folders(TestFolders):
    """The tests' temp folders, with the quieter logging and quick retries benchmarks want."""

    def env(self, url: str, **extra: str) -> dict[str, str]:
        return super().env(
            url,
            **{
                "BATCHD_LOG__LEVEL": "warning",
                "BATCHD_VRAM__SOURCE": "none",
                # Quick retries so an outage is noticed and left within a second, not a minute.
                "BATCHD_BACKEND__BACKOFF_SECONDS": "0.1",
                "BATCHD_BACKEND__BACKOFF_MAX_SECONDS": "1",
                **extra,
            },
        )

    def metrics(self, stem: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.outbox / stem / "metrics.json").read_text())
        return data

    def lines(self, stem: str, name: str) -> list[dict[str, Any]]:
        path = self.outbox / stem / name
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@contextmanager
def folders(prefix: str = "bench-") -> Iterator[Folders]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        root = Path(tmp)
        f = Folders(root, root / "inbox", root / "outbox", root / "state")
        for p in (f.inbox, f.outbox, f.state):
            p.mkdir()
        (root / "batchd.toml").write_text("# bench\n")
        yield f


def run_once(
    env: dict[str, str], timeout: float = 900, prefix: list[str] | None = None, root: Path | None = None
) -> float:
    """``batchd run --once``; returns wall seconds (process start to exit). Raises on a non-zero exit.

    ``prefix`` replaces the interpreter (e.g. ``[python, -m, cProfile, -o, OUT]``); ``-m batchd`` follows.
    ``root``: run the ``batchd`` package found there instead (a patched copy, to measure a fix).
    """
    started = time.perf_counter()
    proc = subprocess.run(
        [*(prefix or [sys.executable]), "-m", "batchd", "run", "--once"],
        cwd=root or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"batchd exited {proc.returncode}: {proc.stderr[-3000:]}")
    return wall


def chat_body(i: int) -> dict[str, Any]:
    """One short chat body; the same bodies go to batchd and to the bare loops."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You score job candidates from 1 to 10. Answer with one line."},
            {"role": "user", "content": f"Candidate {i}: five years in warehouse logistics, forklift licence."},
        ],
    }


def write_requests(path: Path, n: int) -> None:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {"custom_id": f"r{i:06d}", "method": "POST", "url": "/v1/chat/completions", "body": chat_body(i)}
                )
                + "\n"
            )
