"""The bytes behind API file objects: outbox files opened with no link followed, streamed in chunks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batchd.journal import FINISHED, Job

CHUNK = 1 << 20


@dataclass(frozen=True)
class Content:
    """A file's chunks and its size (the Content-Length)."""

    chunks: Iterator[bytes]
    size: int


def open_outbox_file(outbox: Path, job: Job, name: str) -> int | None:
    """An fd on ``outbox/<job folder>/<name>``, following no link at either level."""
    folder = job.outbox_name
    if job.state not in FINISHED or not folder or "/" in folder or folder in (".", ".."):
        return None
    try:
        dfd = os.open(outbox / folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def outbox_size(outbox: Path, job: Job, name: str) -> int | None:
    """The size of ``outbox/<job folder>/<name>``; None when it is not there (or not a plain file)."""
    fd = open_outbox_file(outbox, job, name)
    if fd is None:
        return None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def stream(fd: int) -> Content:
    """The file behind ``fd`` as chunks for a streaming response; the reader closes it."""
    fh = os.fdopen(fd, "rb")  # owns the fd from here: closed by the reader or by GC

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := fh.read(CHUNK):
                yield chunk
        finally:
            fh.close()

    return Content(chunks(), os.fstat(fd).st_size)
