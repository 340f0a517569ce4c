"""Small filesystem helpers shared by the claimer, pipelines, the outbox and the status files.

The ``*_at`` helpers work relative to an open folder descriptor and never
follow a symbolic link: that is how batchd reads a group-writable inbox with
more rights than the people who write there (an ``openat2`` with
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``, done by hand because Python has no
``openat2``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

#: a folder, never through a symlink
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: a file to read: a symlink is not followed, a FIFO swapped in does not hang the daemon
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(OSError):
    """A path batchd will not read: a symlink, a hard link, not a regular file, or outside its folder."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def split_beneath(rel: str) -> list[str]:
    """The components of a relative path that stays beneath its folder; UnsafeFile otherwise."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise UnsafeFile(errno.EINVAL, "must stay inside the pipeline folder (a relative path without '..')")
    return parts


def open_dir_at(dir_fd: int, name: str) -> int:
    """Open the sub-folder ``name`` of ``dir_fd``; a symlink raises OSError (ELOOP or ENOTDIR)."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_beneath(dir_fd: int, rel: str, flags: int = READ_FLAGS) -> int:
    """Open ``rel`` under ``dir_fd`` one component at a time, following no symlink on the way."""
    parts = split_beneath(rel)
    opened: list[int] = []
    cur = dir_fd
    try:
        for part in parts[:-1]:
            cur = open_dir_at(cur, part)
            opened.append(cur)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeFile(exc.errno, "is a symbolic link (or goes through one); batchd never follows links") from exc
        raise
    finally:
        for fd in opened:
            os.close(fd)


def check_single_regular(st: os.stat_result) -> None:
    """Refuse what is not one plain file: a second hard link could be someone else's file."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(errno.ELOOP, "is a symbolic link; batchd never follows links")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(errno.EINVAL, "is not a regular file")
    if st.st_nlink > 1:
        raise UnsafeFile(errno.EMLINK, "has more than one hard link; copy the file in instead")


def read_beneath(dir_fd: int, rel: str, limit: int = 1 << 20) -> bytes:
    """The bytes of a plain regular file ``rel`` under ``dir_fd``, at most ``limit`` of them."""
    fd = open_beneath(dir_fd, rel)
    with os.fdopen(fd, "rb") as fh:
        check_single_regular(os.fstat(fh.fileno()))
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(errno.EFBIG, f"is over {limit:,} bytes")
    return data


def write_atomic(path: Path, data: bytes, *, mode: int = 0o640, gid: int | None = None) -> bool:
    """Replace ``path`` so that a reader sees the old content or the new, never a part.

    The temp file sits in the same folder (``rename`` is atomic only within one
    filesystem) and starts with a dot, so listings and the inbox rules pass it
    by. It gets ``mode`` whatever the umask and, when given, group ``gid``;
    returns False when that ``fchown`` was refused (the file is written anyway).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    owned = True
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if gid is not None:
                try:
                    os.fchown(fh.fileno(), -1, gid)
                except PermissionError:
                    owned = False  # not a member of that group; a setgid folder still passes its group on
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return owned
