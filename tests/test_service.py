"""sd_notify against a datagram socket bound where ``$NOTIFY_SOCKET`` points.

Every case runs twice: through systemd-python's ``sd_notify`` (skipped when it
is not installed) and through the plain-socket fallback (``use_libsystemd=False``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from batchd import service
from batchd.service import Notifier, ServiceDaemon, Signals, status_state
from tests.support.emulator import Emulator
from tests.support.factories import Folders, write_jsonl
from tests.support.waiting import until

HAVE_LIBSYSTEMD = service._libsystemd_notify() is not None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Listener:
    """The systemd side: a bound SOCK_DGRAM socket; ``take()`` returns the datagrams received so far."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    def take(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return out

    def wait(self, predicate: Callable[[list[str]], bool], timeout: float = 10) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while not predicate(got):
            assert time.monotonic() < deadline, f"not received within {timeout}s; got {got}"
            got += self.take()
            time.sleep(0.01)
        return got


@pytest.fixture(params=["libsystemd", "socket"])
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "libsystemd" and not HAVE_LIBSYSTEMD:
        pytest.skip("systemd-python is not installed (pip install 'batchd[systemd]')")
    return str(request.param)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Iterator[Listener]:
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
    folder = tempfile.mkdtemp(prefix="notify-")
    address = f"{folder}/notify" if request.param == "path" else f"@batchd-test-{os.getpid()}-{id(request)}"
    lst = Listener(address)
    try:
        yield lst
    finally:
        lst.sock.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_notifier(transport: str, listener: Listener, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Notifier]:
    # libsystemd's sd_notify reads $NOTIFY_SOCKET itself; the fallback uses the constructor's path.
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)

    def make(**kwargs: Any) -> Notifier:
        n = Notifier(socket_path=listener.address, use_libsystemd=transport == "libsystemd", **kwargs)
        assert n.backend == transport
        return n

    return make


def fields(datagram: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.splitlines())


def test_ready_with_status_then_stopping_once(make_notifier: Callable[..., Notifier], listener: Listener) -> None:
    n = make_notifier()
    assert n.ready("idle, 0 jobs done")
    assert n.stopping("stopping: finishing requests in flight")
    assert not n.stopping("again")  # once per process
    got = listener.wait(lambda g: len(g) >= 2)
    assert fields(got[0]) == {"READY": "1", "STATUS": "idle, 0 jobs done"}
    assert fields(got[1]) == {"STOPPING": "1", "STATUS": "stopping: finishing requests in flight"}
    assert listener.take() == []


def test_status_is_paced_but_a_change_of_state_goes_at_once(
    make_notifier: Callable[..., Notifier], listener: Listener
) -> None:
    clock = Clock()
    n = make_notifier(clock=clock, status_seconds=3.0)
    assert n.status("idle, 2 jobs done")
    assert not n.status("idle, 2 jobs done")  # unchanged: nothing to say
    clock.now += 0.5
    assert n.status("big.csv: 10/100 (10.0%), queue 0")  # idle -> running: at once
    clock.now += 1.0
    assert not n.status("big.csv: 20/100 (20.0%), 9.1 req/s, ETA 9s, queue 0")  # same job, too soon
    clock.now += 2.0
    assert n.status("big.csv: 40/100 (40.0%), 10.2 req/s, ETA 6s, queue 0")  # 3 s since the last one
    clock.now += 0.1
    assert n.status("waiting for backend at 127.0.0.1:11434 (down 1s)")  # running -> waiting
    clock.now += 0.1
    assert n.status("big.csv: 41/100 (41.0%), queue 0")  # and back
    assert n.status("other.csv: 0/5 (0.0%), queue 0")  # another job is another state
    # A line held back by the pacing goes out with a later flush(), once due.
    clock.now += 0.5
    assert not n.status("other.csv: 5/5 (100.0%), queue 0")
    assert not n.flush()
    clock.now += 3.0
    assert n.flush()
    assert not n.flush()
    n.status("multi\nline\tstatus")
    got = [fields(d)["STATUS"] for d in listener.wait(lambda g: len(g) >= 8)]
    assert got == [
        "idle, 2 jobs done",
        "big.csv: 10/100 (10.0%), queue 0",
        "big.csv: 40/100 (40.0%), 10.2 req/s, ETA 6s, queue 0",
        "waiting for backend at 127.0.0.1:11434 (down 1s)",
        "big.csv: 41/100 (41.0%), queue 0",
        "other.csv: 0/5 (0.0%), queue 0",
        "other.csv: 5/5 (100.0%), queue 0",
        "multi line status",
    ]


@pytest.mark.parametrize("listener", ["path"], indirect=True)
def test_one_pacer_a_line_every_heartbeat_paced_by_the_notifier(
    make_notifier: Callable[..., Notifier], listener: Listener, make_settings: Callable[..., Any]
) -> None:
    # The daemon offers its status line on every heartbeat (1 s here, on a fake clock) and paces
    # nothing itself; the notifier alone decides what reaches systemd.
    clock = Clock()
    daemon = ServiceDaemon(notifier=make_notifier(clock=clock, status_seconds=3.0), settings=make_settings())
    assert not hasattr(daemon, "status_seconds")
    offered = [
        "idle, 0 jobs done",
        *(f"big.csv: {n}/10 ({10 * n:.1f}%), queue 0" for n in range(1, 6)),
        "idle, 1 jobs done",
        "idle, 1 jobs done",
    ]
    for line in offered:  # one heartbeat each: watchdog hook (flushes a held line), then the status line
        daemon.on_watchdog()
        daemon.on_status(line)
        clock.now += 1.0
    daemon.on_watchdog()
    got = [fields(d)["STATUS"] for d in listener.wait(lambda g: len(g) >= 4)]
    # idle at once; the job's first line at once (a change of kind); 3 s later the line held back
    # (3/10, flushed by that heartbeat's watchdog hook); idle again at once; the repeated idle line never.
    assert got == [
        "idle, 0 jobs done",
        "big.csv: 1/10 (10.0%), queue 0",
        "big.csv: 3/10 (30.0%), queue 0",
        "idle, 1 jobs done",
    ]
    assert listener.take() == []
    daemon.journal.close()


def test_watchdog_pings_at_half_the_interval(make_notifier: Callable[..., Notifier], listener: Listener) -> None:
    clock = Clock()
    n = make_notifier(clock=clock, watchdog_usec=10_000_000, watchdog_pid=os.getpid())
    assert n.watchdog_seconds == 5.0
    sent = []
    for _ in range(40):  # the heartbeat calls every 0.5 s here, for 20 s
        sent.append(n.watchdog())
        clock.now += 0.5
    assert sent.count(True) == 4 and sent[0]  # at 0, 5, 10, 15 s
    assert [i for i, s in enumerate(sent) if s] == [0, 10, 20, 30]
    got = listener.wait(lambda g: len(g) >= 4)
    assert got == ["WATCHDOG=1"] * 4


@pytest.mark.parametrize("usec,pid", [(None, None), (10_000_000, 1), (0, None)])
def test_no_watchdog_unless_armed_for_this_process(
    make_notifier: Callable[..., Notifier], listener: Listener, usec: int | None, pid: int | None
) -> None:
    # WATCHDOG_PID of another process (a child inherited the environment): stay quiet.
    n = make_notifier(watchdog_usec=usec, watchdog_pid=pid)
    assert n.watchdog_seconds is None
    assert not n.watchdog()
    n.ready()
    assert listener.wait(lambda g: len(g) >= 1) == ["READY=1"]


def test_reloading_carries_monotonic_usec(make_notifier: Callable[..., Notifier], listener: Listener) -> None:
    n = make_notifier(monotonic_usec=lambda: 123456789)
    n.reloading()
    n.ready("idle, 0 jobs done")
    got = listener.wait(lambda g: len(g) >= 2)
    assert fields(got[0]) == {"RELOADING": "1", "MONOTONIC_USEC": "123456789", "STATUS": "reloading configuration"}
    assert fields(got[1])["READY"] == "1"
    real = Notifier(socket_path=listener.address, use_libsystemd=False)
    real.reloading()
    usec = int(fields(listener.wait(lambda g: len(g) >= 1)[0])["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000


def test_from_environ_and_no_socket_is_a_no_op(listener: Listener) -> None:
    n = Notifier.from_environ(
        {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "120000000", "WATCHDOG_PID": str(os.getpid())},
        use_libsystemd=False,
    )
    assert n.enabled and n.watchdog_seconds == 60.0
    assert Notifier.from_environ({"WATCHDOG_USEC": "x"}).watchdog_seconds is None
    off = Notifier.from_environ({})
    assert off.backend == "off"
    for call in (off.ready, off.watchdog, off.reloading, off.stopping):
        assert call() is False
    assert off.status("idle") is False


def test_a_vanished_socket_never_raises(tmp_path: Path) -> None:
    n = Notifier(socket_path=str(tmp_path / "gone"), use_libsystemd=False)
    assert n.ready() is False
    assert Notifier(socket_path="vsock:2:1234", use_libsystemd=False).ready() is False


def test_status_states() -> None:
    assert status_state("idle, 3 jobs done, queue 1") == "idle"
    assert status_state("waiting for backend at h:1 (down 2s)") == "waiting"
    assert status_state("a, b.csv: 1/2 (50.0%), queue 0") == "job:a, b.csv"


@pytest.mark.parametrize("listener", ["path"], indirect=True)
def test_daemon_reports_ready_status_watchdog_reload_and_stopping(
    make_notifier: Callable[..., Notifier],
    listener: Listener,
    make_settings: Callable[..., Any],
    folders: Folders,
    emulator: Emulator,
) -> None:
    emulator.latency = 0.01
    settings = make_settings(watch={"mode": "inotify"})
    notifier = make_notifier(watchdog_usec=200_000, status_seconds=0.2)
    daemon = ServiceDaemon(notifier=notifier, settings=settings, reload_settings=lambda: settings)
    # A fast heartbeat: the daemon offers a status line on each, and a 0.6 s job can fall between
    # two 1 s heartbeats.
    daemon.heartbeat_seconds = 0.05
    received: list[str] = []

    def kinds() -> list[str]:
        return [d.split("=", 1)[0] for d in received]

    async def heard(pred: Callable[[], bool]) -> None:
        def check() -> bool:
            received.extend(listener.take())
            return pred()

        await until(check, timeout=20, describe=lambda: received)

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        await heard(lambda: "READY" in kinds())
        write_jsonl(folders.inbox / "job.jsonl", 60)
        await heard(lambda: any(d.startswith("STATUS=job.jsonl: ") for d in received))
        await heard(lambda: "STATUS=idle, 1 jobs done" in received)
        daemon.reload()
        await heard(lambda: "RELOADING" in kinds() and "READY" in kinds()[kinds().index("RELOADING") :])
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    with structlog.testing.capture_logs() as events:
        asyncio.run(scenario())
    received.extend(listener.take())
    # The heartbeat also logs the job's progress, named by its id (journalctl -u batchd JOB_ID=...).
    progress = [e for e in events if e["event"] == "job_progress"]
    assert progress and all(e["job_id"] and e["input"] == "job.jsonl" and e["total"] == 60 for e in progress)
    percents = [e["percent"] for e in progress]
    assert percents == sorted(set(percents)) and percents[-1] <= 100
    # Pings and status lines start with the heartbeat, before READY=1: harmless, and systemctl
    # status can show what a slow start-up is doing.
    told = [k for k in kinds() if k not in ("WATCHDOG", "STATUS")]
    assert told[0] == "READY"
    assert told[-1] == "STOPPING"
    assert kinds().count("WATCHDOG") >= 2
    assert fields(received[kinds().index("RELOADING")])["MONOTONIC_USEC"].isdigit()
    lines = [fields(d)["STATUS"] for d in received if d.startswith("STATUS=job.jsonl")]
    assert re.fullmatch(r"job\.jsonl: [\d,]+/60 \(\d+\.\d%\)(, [\d.]+ req/s, ETA \w+)?, queue \d", lines[0])
    assert (folders.outbox / "job").is_dir()


@pytest.mark.parametrize("listener", ["path"], indirect=True)
def test_signal_handlers_only_set_flags_the_loop_logs_and_notifies(
    make_notifier: Callable[..., Notifier], listener: Listener, make_settings: Callable[..., Any]
) -> None:
    daemon = ServiceDaemon(notifier=make_notifier(), settings=make_settings(shutdown_grace_seconds=7))
    exits: list[int] = []
    signals = Signals(daemon, exit_now=exits.append)

    async def scenario() -> list[dict[str, Any]]:
        signals.install(asyncio.get_running_loop())
        os.kill(os.getpid(), signal.SIGHUP)  # a real signal: the installed handler sets the reload flag
        for _ in range(100):
            if daemon._reload_asked:
                break
            await asyncio.sleep(0.01)
        assert daemon._reload_asked
        with structlog.testing.capture_logs() as events:
            signals.on_stop(signal.SIGTERM)
            # In the handler: flags only. Nothing logged or sent yet.
            assert daemon.stop.is_set() and events == [] and listener.take() == []
            await asyncio.sleep(0)  # the loop runs the scheduled announcement
            signals.on_stop(signal.SIGINT)  # the second one: exit now (os._exit in service)
        return events

    events = asyncio.run(scenario())
    assert [(e["event"], e["signal"], e["grace_seconds"]) for e in events] == [("stop_requested", "SIGTERM", 7)]
    assert exits == [1]
    got = listener.wait(lambda g: len(g) >= 1)
    assert fields(got[0]) == {"STOPPING": "1", "STATUS": "stopping: finishing requests in flight (up to 7s)"}
    daemon.journal.close()
