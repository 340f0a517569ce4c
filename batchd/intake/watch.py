"""Watching the inbox: filesystem events in, stable candidate paths out.

``InboxWatcher`` runs watchdog's native observer (inotify) on local folders
and its ``PollingObserver`` on network mounts, where inotify never sees what
other machines write. It watches the inbox root and each first-level folder
(pipeline folders), never deeper: NAS junk folders such as ``#recycle`` can
hold millions of entries that polling would walk every few seconds.
``StabilityTracker`` turns the noisy event stream into "this file is done".
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from batchd.intake.inbox import candidate_for, is_ignored, is_ignored_dir
from batchd.pipeline import PIPELINE_FILE

log = structlog.get_logger("batchd.watch")

#: filesystems where inotify only sees this machine's writes (or nothing): poll them
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ocfs2",
        "gfs2",
        "davfs",
        "vboxsf",
        "virtiofs",
        "fuse.sshfs",
        "sshfs",
        "fuse.glusterfs",
        "fuse.rclone",
        "fuse.s3fs",
        "fuse.davfs2",
        "fuse.cephfs",
        "fuse.vmhgfs-fuse",
        "fuse.gcsfuse",
        "fuse.juicefs",
    }
)
MOUNTINFO = Path("/proc/self/mountinfo")


# -- which observer ---------------------------------------------------------------------


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_type(path: Path, mountinfo: str) -> str | None:
    """Filesystem type of the mount holding ``path`` (longest mount-point prefix wins)."""
    target = str(path)
    best, best_len = None, -1
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail.split():
            continue
        point = _unescape(fields[4])
        inside = target == point or point == "/" or target.startswith(point.rstrip("/") + "/")
        # ">=": a later line mounted over the same point hides the earlier one
        if inside and len(point) >= best_len:
            best, best_len = tail.split()[0], len(point)
    return best


def choose_mode(mode: str, inbox: Path, mountinfo: str | None = None) -> str:
    """``inotify`` or ``poll`` for a configured ``watch.mode`` (``auto`` reads the mount table)."""
    if mode != "auto":
        return mode
    if mountinfo is None:
        try:
            mountinfo = MOUNTINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "inotify"
    fstype = mount_type(inbox.resolve(), mountinfo)
    return "poll" if fstype in NETWORK_FS else "inotify"


# -- stability ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    kind: int
    size: int
    mtime_ns: int

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.kind)


def signature(path: Path) -> Signature | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return Signature(stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)


class StabilityTracker:
    """A file is claimed only when it has had no events for ``stable_seconds``,
    its size and mtime are unchanged at re-check, and it is still a regular file.

    ``seen()`` records an event (or a scan hit) with the entry's signature at
    that moment; every event restarts the quiet period. ``ready()`` re-checks
    each quiet entry: a changed size, mtime or type (a file replaced by a
    symlink, say) counts as a fresh event and the wait starts over; a vanished
    entry is forgotten. A slow SMB copy keeps producing events (inotify) or
    size/mtime changes (polling), so it is never handed over half-written.
    Entries that never were regular files (symlinks, FIFOs, a folder named
    ``x.csv``) are handed over once quiet too, because the claimer must refuse
    them with an error record; it only ``lstat``s them, never reads them.

    Time and ``lstat`` are injectable, so tests drive it without sleeping.
    Not thread-safe: call it from the event loop's thread only.
    """

    def __init__(
        self,
        *,
        stable_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], Signature | None] = signature,
    ) -> None:
        self.stable_seconds = stable_seconds
        self.clock = clock
        self._stat = stat
        self._last: dict[Path, float] = {}
        self._sig: dict[Path, Signature | None] = {}

    def __len__(self) -> int:
        return len(self._last)

    def __contains__(self, path: object) -> bool:
        return path in self._last

    def seen(self, path: Path, sig: Signature | None = None) -> None:
        """An event for ``path``: (re)start its quiet period."""
        self._last[path] = self.clock()
        self._sig[path] = sig if sig is not None else self._stat(path)

    def offer(self, path: Path, sig: Signature | None = None) -> None:
        """A scan hit: track it unless already tracked (a scan is not an event)."""
        if path not in self._last:
            self.seen(path, sig)

    def forget(self, path: Path) -> None:
        self._last.pop(path, None)
        self._sig.pop(path, None)

    def next_due(self) -> float | None:
        """Seconds until the earliest entry may be ready; None when nothing is tracked."""
        if not self._last:
            return None
        return max(0.0, min(self._last.values()) + self.stable_seconds - self.clock())

    def ready(self) -> list[Path]:
        """Entries that passed the rule, oldest modification first; they are no longer tracked."""
        now = self.clock()
        out: list[tuple[int, str, Path]] = []
        for path, last in list(self._last.items()):
            if now - last < self.stable_seconds:
                continue
            before, after = self._sig.get(path), self._stat(path)
            if after is None:
                self.forget(path)  # gone (claimed, deleted or renamed away)
                continue
            if after != before:
                # Changed without an event we saw (or the event came before the write): wait again.
                self._last[path], self._sig[path] = now, after
                continue
            self.forget(path)
            out.append((after.mtime_ns, str(path), path))
        out.sort()
        return [p for _, _, p in out]


# -- the observer -------------------------------------------------------------------------

_FILE_EVENTS = (FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent)


class _Handler(FileSystemEventHandler):
    """Runs on watchdog's thread: filter, then hand paths to the event loop's callbacks."""

    def __init__(self, watcher: InboxWatcher) -> None:
        self.w = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._route(event)
        except Exception:  # noqa: BLE001 - an exception here would kill the observer thread
            log.exception("watch_event_failed", path=str(event.src_path))

    def _route(self, event: FileSystemEvent) -> None:
        w = self.w
        if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
            path = Path(os.fsdecode(event.dest_path if isinstance(event, DirMovedEvent) else event.src_path))
            if path.parent == w.inbox:
                w.on_folder(path)  # a new pipeline folder (or a folder named like a file)
            return
        if isinstance(event, DirDeletedEvent):
            if Path(os.fsdecode(event.src_path)) == w.inbox:
                w.on_folder(w.inbox)  # the health check notices and restarts the watch
            return
        if isinstance(event, FileMovedEvent):
            path = Path(os.fsdecode(event.dest_path))  # renamed into (or within) the inbox
        elif isinstance(event, _FILE_EVENTS):
            path = Path(os.fsdecode(event.src_path))
        else:
            return  # opened, closed-without-write, deleted: nothing to claim
        if path.name == PIPELINE_FILE and path.parent.parent == w.inbox:
            w.on_folder(path.parent)  # files may already wait in a folder that just became a pipeline
            return
        if is_ignored(path.name, w.ignore) or candidate_for(w.inbox, path) is None:
            return
        w.on_path(path, signature(path))


class InboxWatcher:
    """One watchdog observer over the inbox root and its first-level folders.

    ``on_path(path, signature)`` and ``on_folder(path)`` are called on
    watchdog's thread; pass thread-safe callables (``loop.call_soon_threadsafe``
    wrappers). ``start()`` raises ``OSError`` when the inbox is not there.
    """

    def __init__(
        self,
        *,
        inbox: Path,
        mode: str,
        poll_seconds: float,
        ignore: tuple[str, ...],
        on_path: Callable[[Path, Signature | None], None],
        on_folder: Callable[[Path], None],
    ) -> None:
        self.inbox = inbox
        self.mode = mode
        self.poll_seconds = poll_seconds
        self.ignore = ignore
        self.on_path = on_path
        self.on_folder = on_folder
        self._observer: BaseObserver | None = None
        self._watches: dict[Path, ObservedWatch] = {}
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        st = os.stat(self.inbox)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(f"{self.inbox} is not a folder")
        self._identity = (st.st_dev, st.st_ino)
        observer: BaseObserver = PollingObserver(timeout=self.poll_seconds) if self.mode == "poll" else Observer()
        self._watches[self.inbox] = observer.schedule(_Handler(self), str(self.inbox), recursive=False)
        observer.start()
        self._observer = observer
        self.sync_folders()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        self._watches.clear()
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)

    def healthy(self) -> bool:
        """The inbox is still the folder we watch (not removed, not replaced) and its watch runs."""
        try:
            st = os.stat(self.inbox)
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != self._identity or self._observer is None:
            return False
        return self._alive(self.inbox)

    def sync_folders(self) -> list[Path]:
        """Watch new first-level folders, drop watches of vanished ones; returns the new folders."""
        with self._lock:
            observer = self._observer
            if observer is None:
                return []
            present = set()
            try:
                with os.scandir(self.inbox) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False) and not is_ignored_dir(entry.name):
                            present.add(Path(entry.path))
            except OSError:
                return []
            for folder in [f for f in self._watches if f != self.inbox]:
                if folder not in present or not self._alive(folder):
                    try:
                        observer.unschedule(self._watches.pop(folder))
                    except (KeyError, OSError):
                        pass
            added = []
            for folder in sorted(present - set(self._watches)):
                try:
                    self._watches[folder] = observer.schedule(_Handler(self), str(folder), recursive=False)
                    added.append(folder)
                except OSError as exc:  # vanished meanwhile, or out of inotify watches
                    log.warning("watch_folder_failed", folder=str(folder), error=str(exc))
            return added

    def _alive(self, folder: Path) -> bool:
        observer, watch = self._observer, self._watches.get(folder)
        if observer is None or watch is None:
            return False
        # watchdog ends a folder's emitter thread when the folder is deleted
        emitter = observer._emitter_for_watch.get(watch)  # noqa: SLF001 - no public accessor
        return emitter is not None and emitter.is_alive()
