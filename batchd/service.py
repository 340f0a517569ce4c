"""systemd glue: sd_notify for ``Type=notify``, a daemon that reports through it, and its signals.

``Notifier`` speaks the notify protocol (one datagram of ``KEY=value`` lines
to ``$NOTIFY_SOCKET``): ``READY=1`` once watching, ``STATUS=`` one line at a
calm pace, ``WATCHDOG=1`` at half ``WatchdogSec``, ``RELOADING=1`` /
``READY=1`` around a SIGHUP reload, ``STOPPING=1`` on shutdown. It uses
systemd-python's ``sd_notify`` when installed and a plain ``AF_UNIX`` socket
otherwise; without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.

The environment is read by the caller (``cli``) and handed in, so tests build
a ``Notifier`` for a socket of their own. One exception is inherent:
libsystemd's ``sd_notify`` reads ``$NOTIFY_SOCKET`` itself.

``Signals`` wires SIGTERM/SIGINT (stop) and SIGHUP (reload) to a ``ServiceDaemon``.
Its handlers only set flags and schedule work on the event loop; the logging
and the ``STOPPING=1`` happen in a loop callback. The one exception is a second
SIGTERM/SIGINT, which ends the process at once with ``os._exit(1)``: the
operator asked twice, requests in flight are abandoned, and the journal (which
commits every result) is still the truth for the next start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from batchd.daemon import Daemon
from batchd.ops.effective import write_record

log = structlog.get_logger("batchd.service")

#: STATUS= is sent at most this often, unless the daemon changes state (idle -> job -> waiting)
STATUS_SECONDS = 3.0


def _libsystemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon as sd_daemon  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return None
    notify: Callable[[str], bool] = sd_daemon.notify
    return notify


def status_state(text: str) -> str:
    """What kind of status a line is: ``idle``, ``waiting``, ``stopping`` or the job's input name.

    A change of kind is sent at once; within one kind, updates are paced.
    """
    head = text.split(",", 1)[0]
    for kind in ("idle", "waiting", "stopping", "reloading"):
        if head.startswith(kind):
            return kind
    return "job:" + text.split(": ", 1)[0]


class Notifier:
    """sd_notify messages for one process. See the module docstring."""

    def __init__(
        self,
        *,
        socket_path: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        pid: int | None = None,
        use_libsystemd: bool = True,
        status_seconds: float = STATUS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        monotonic_usec: Callable[[], int] | None = None,
    ) -> None:
        self.socket_path = socket_path or None
        pid = os.getpid() if pid is None else pid
        # WATCHDOG_PID names the process systemd expects pings from; a child that inherited
        # the environment must stay quiet (sd_watchdog_enabled(3)).
        mine = watchdog_pid is None or watchdog_pid == pid
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 and mine else None
        self.status_seconds = status_seconds
        self.clock = clock
        self.monotonic_usec = monotonic_usec or (lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        self._libsystemd = _libsystemd_notify() if use_libsystemd and self.socket_path else None
        self._sock: socket.socket | None = None
        self._last_ping: float | None = None
        self._status: tuple[float, str, str] | None = None  # (sent at, text, state)
        self._pending: str | None = None
        self._stopping = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **kwargs: Any) -> Notifier:
        """A notifier for what systemd put into the environment (``NOTIFY_SOCKET``, ``WATCHDOG_*``)."""

        def number(name: str) -> int | None:
            try:
                return int(environ.get(name, ""))
            except ValueError:
                return None

        return cls(
            socket_path=environ.get("NOTIFY_SOCKET"),
            watchdog_usec=number("WATCHDOG_USEC"),
            watchdog_pid=number("WATCHDOG_PID"),
            **kwargs,
        )

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    @property
    def backend(self) -> str:
        """``libsystemd``, ``socket`` or ``off``: which path the messages take."""
        if not self.enabled:
            return "off"
        return "libsystemd" if self._libsystemd is not None else "socket"

    @property
    def watchdog_seconds(self) -> float | None:
        """Seconds between pings (half the watchdog timeout), None when no watchdog is armed."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    # -- messages -------------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1"]
        if status:
            lines.append(self._status_line(status))
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """Send ``STATUS=`` when the line changed and either its kind changed or it is time to.

        A line held back by the pacing is sent by ``flush()`` once it is due.
        """
        text = _one_line(text)
        self._pending = None
        if self._status is not None:
            at, last, last_state = self._status
            if text == last:
                return False
            if status_state(text) == last_state and self.clock() - at < self.status_seconds:
                self._pending = text
                return False
        return self.notify(self._status_line(text))

    def flush(self) -> bool:
        """Send the status line held back by the pacing, if it is due now (call it often)."""
        if self._pending is None or self._status is None or self.clock() - self._status[0] < self.status_seconds:
            return False
        return self.status(self._pending)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``, at most every half interval: callers may call it as often as they like."""
        interval = self.watchdog_seconds
        if interval is None or not self.enabled:
            return False
        now = self.clock()
        if self._last_ping is not None and now - self._last_ping < interval:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # systemd >= 253 (Type=notify-reload) wants the CLOCK_MONOTONIC time of the reload
        # request; older versions ignore the extra field.
        return self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={self.monotonic_usec()}", self._status_line("reloading configuration")
        )

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``, once per process."""
        if self._stopping:
            return False
        self._stopping = True
        return self.notify("STOPPING=1", *([self._status_line(status)] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (``EXTEND_TIMEOUT_USEC``)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def notify(self, *lines: str) -> bool:
        """Send one datagram; False when not under systemd or the send failed (never raises)."""
        if self.socket_path is None:
            return False
        message = "\n".join(lines)
        if self._libsystemd is not None:
            try:
                return bool(self._libsystemd(message))
            except (OSError, ValueError):
                return False
        return self._send(message.encode())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- internals --------------------------------------------------------------------

    def _status_line(self, text: str) -> str:
        text = _one_line(text)
        self._status = (self.clock(), text, status_state(text))
        return f"STATUS={text}"

    def _send(self, data: bytes) -> bool:
        path = self.socket_path
        assert path is not None
        if path.startswith("@"):
            address = "\0" + path[1:]  # abstract namespace (sd_notify(3))
        elif path.startswith("/"):
            address = path
        else:
            return False  # vsock: (systemd >= 254 in VMs) needs libsystemd
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, address)
        except OSError:
            # systemd gone or the socket replaced: the next message tries a fresh socket.
            self.close()
            return False
        return True


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


class ServiceDaemon(Daemon):
    """The daemon with its hooks wired to a ``Notifier`` (what ``batchd run`` runs)."""

    def __init__(
        self, *, notifier: Notifier, config: Path | None = None, unit_state_dir: Path | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.notifier = notifier
        self.config = config
        #: the unit's StateDirectory= ($STATE_DIRECTORY), where operator commands look for the record
        self.unit_state_dir = unit_state_dir

    def on_ready(self) -> None:
        self.notifier.ready(self.status_line())

    def on_status(self, text: str) -> None:
        self.notifier.status(text)  # the one pacer: the daemon offers a line every heartbeat

    def on_watchdog(self) -> None:
        self.notifier.watchdog()
        # The daemon offers a line only when it changes: the last one of a burst (a short job
        # ending) may have been held back by the pacing.
        self.notifier.flush()

    def on_reloading(self) -> None:
        self.notifier.reloading()

    def on_reloaded(self) -> None:
        self.notifier.ready(self.status_line())

    def on_settings(self) -> None:
        # For `batchd doctor`/`status` from a shell, which does not see the unit's Environment=.
        write_record(self.settings, config=self.config, unit_state_dir=self.unit_state_dir)

    def on_stopping(self) -> None:
        self.notifier.stopping("stopping: finishing requests in flight")

    def stop_requested(self, signame: str) -> None:
        """A stop signal arrived (called on the loop, never in the handler): log it, tell systemd at
        once (not when the job loop gets there: ``systemctl status`` shows why we linger)."""
        grace = self.settings.shutdown_grace_seconds
        log.info("stop_requested", signal=signame, grace_seconds=grace)
        self.notifier.stopping(f"stopping: finishing requests in flight (up to {grace:g}s)")

    async def aclose(self) -> None:
        await super().aclose()
        self.notifier.close()


class Signals:
    """SIGTERM/SIGINT stop the daemon, a second one exits at once; SIGHUP reloads. See the module docstring."""

    STOP = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, daemon: ServiceDaemon, *, exit_now: Callable[[int], object] = os._exit) -> None:
        self.daemon = daemon
        self.exit_now = exit_now
        self.stops = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the handlers on ``loop`` (they go when the loop is closed)."""
        self._loop = loop
        for sig in self.STOP:
            loop.add_signal_handler(sig, self.on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.daemon.reload)  # a flag; the heartbeat applies it

    def on_stop(self, signum: int) -> None:
        """Set the stop flag and schedule the announcement; a second signal exits now."""
        self.stops += 1
        if self.stops > 1:
            self.exit_now(1)  # the documented exception: no clean-up, the journal is the truth
            return
        assert self._loop is not None, "install() first"
        self._loop.call_soon(self.daemon.stop_requested, signal.Signals(signum).name)
        self.daemon.stop.set()
