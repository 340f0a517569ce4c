"""A CSV row's image: its ``image_column`` cell names a file beneath the CSV's folder, read at ingest.

The cell is a path relative to the folder the CSV was dropped into (the pipeline folder). The file
is opened one component at a time from that folder's descriptor, never through a symlink (every
folder on the way ``O_NOFOLLOW``, the file ``lstat``-ed, opened ``O_NOFOLLOW | O_NONBLOCK`` and
checked again by ``fstat``), and must be one plain regular file (no FIFO, device, socket or second
hard link) that the uid who owned the CSV could read itself (docs/SECURITY.md promise 1). At most
``max_image_bytes + 1`` bytes are read; the magic bytes decide the type (PNG, JPEG, WebP, GIF). The
result is a ``data:`` URI journaled in the row's body: the journal is the truth, so a file changed
later changes nothing. Every refusal is an ``ImageRefused`` with a message for that row alone.
"""

from __future__ import annotations

import base64
import errno
import os
import pwd
from pathlib import Path

from batchd.fsutil import DIR_FLAGS, READ_FLAGS, UnsafeFile, check_single_regular, open_dir_at, split_beneath

#: the row body's key for its image (a ``data:`` URI); ``ingest.full_body`` makes it an ``image_url`` part
IMAGE_KEY = "~img"
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after b"RIFF" and the length
)


#: where a CSV's image cells point: (a folder, the pipeline folder beneath it or None, the uid that
#: dropped the CSV or None); the pipeline folder is opened without following a link
ImageSource = tuple[Path, str | None, int | None]


class ImageRefused(Exception):
    """This row's image cannot be used; the message says why, naming the cell, never the file's content."""


def sniff(head: bytes) -> str | None:
    """The image's MIME type from its first bytes, or None when it is none batchd sends."""
    for magic, at, mime in _MAGIC:
        if head[at : at + len(magic)] == magic and (at == 0 or head.startswith(b"RIFF")):
            return mime
    return None


def _groups(uid: int) -> frozenset[int]:
    try:
        entry = pwd.getpwuid(uid)
        return frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except (KeyError, OSError):  # a uid without a name: only what everyone may do
        return frozenset()


def allowed(st: os.stat_result, uid: int | None, groups: frozenset[int], want: int) -> bool:
    """Whether ``uid`` may do ``want`` (4 read, 1 search) on a file with ``st``: the classic owner, group,
    other bits; None (no owner known: the CLI, run as its user) and root may."""
    if uid is None or uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & (want << 6))
    if st.st_gid in groups:
        return bool(st.st_mode & (want << 3))
    return bool(st.st_mode & want)


class ImageFolder:
    """The CSV's folder (``source``), opened on the first image cell, read for one row at a time;
    ``close()`` when the rows are done. Without a source, or with images off (``on`` False: limits.
    max_images_per_request = 0), every image cell is refused; so is every image after ``budget`` bytes
    of them (``limits.max_file_bytes``: one CSV naming one big image a million times must not become a
    journal a million times its size). The ``data:`` URI must fit ``max_uri`` (``limits.max_line_bytes``),
    as the JSONL line holding it would: the runner holds a chunk of rows at once, so a row is no bigger."""

    def __init__(
        self, source: ImageSource | None, max_bytes: int, budget: int, max_uri: int, *, on: bool = True
    ) -> None:
        self.source, self.max_bytes, self.budget, self.max_uri, self.on = source, max_bytes, budget, max_uri, on
        self.owner_uid = source[2] if source else None
        self._fd: int | None = None
        self._groups: frozenset[int] | None = None

    def _dir(self) -> int:
        if self.source is None:
            raise ImageRefused("images are not read here (no folder to read them from)")
        if self._fd is None:
            top, folder, _ = self.source
            root = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._fd = root if folder is None else open_dir_at(root, folder)
            except OSError as exc:
                raise ImageRefused(f"the folder {folder!r} cannot be opened ({exc.strerror})") from exc
            finally:
                if self._fd != root:
                    os.close(root)
            self._groups = frozenset() if self.owner_uid in (None, 0) else _groups(self.owner_uid)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def data_uri(self, cell: str) -> str:
        """The image ``cell`` names as a ``data:`` URI; ImageRefused with the reason otherwise."""
        if not self.on:
            raise ImageRefused("images are off (limits.max_images_per_request = 0)")
        rel = "/".join(p for p in cell.strip().split("/") if p != ".") if not cell.startswith("/") else cell
        try:
            parts = split_beneath(rel)
            data = self._read(parts)
        except UnsafeFile as exc:
            raise ImageRefused(f"image {cell!r} refused: {exc.strerror}") from exc
        except FileNotFoundError as exc:
            raise ImageRefused(f"image {cell!r} not found (the path is relative to the CSV's folder)") from exc
        except OSError as exc:
            raise ImageRefused(f"image {cell!r} cannot be read: {exc.strerror or exc}") from exc
        if len(data) > self.max_bytes:
            raise ImageRefused(f"image {cell!r} is over limits.max_image_bytes ({self.max_bytes:,} bytes)")
        mime = sniff(data[:16])
        if mime is None:
            raise ImageRefused(f"image {cell!r} is not a PNG, JPEG, WebP or GIF image")
        uri = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        if len(uri) > self.max_uri:
            raise ImageRefused(
                f"image {cell!r} is {len(uri):,} bytes as a data: URI, over limits.max_line_bytes "
                f"({self.max_uri:,}; a JSONL line could not hold it either): raise it for bigger images"
            )
        if len(data) > self.budget:
            raise ImageRefused(f"image {cell!r} would take this CSV's images over limits.max_file_bytes")
        self.budget -= len(data)
        return uri

    def _read(self, parts: list[str]) -> bytes:
        cur = self._dir()
        groups = self._groups or frozenset()
        opened: list[int] = []
        try:
            for part in parts[:-1]:
                try:
                    cur = os.open(part, DIR_FLAGS, dir_fd=cur)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise UnsafeFile(exc.errno, "goes through a symbolic link or a non-folder") from exc
                    raise
                opened.append(cur)
                if not allowed(os.fstat(cur), self.owner_uid, groups, 1):
                    raise UnsafeFile(errno.EACCES, "is in a folder the file's dropper cannot open")
            # lstat first: a FIFO or a device is refused before it is ever opened
            check_single_regular(os.stat(parts[-1], dir_fd=cur, follow_symlinks=False))
            try:
                fd = os.open(parts[-1], READ_FLAGS, dir_fd=cur)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeFile(exc.errno, "is a symbolic link; batchd never follows links") from exc
                raise
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                check_single_regular(st)
                if not allowed(st, self.owner_uid, groups, 4):
                    raise UnsafeFile(errno.EACCES, "is not readable by the user who dropped the CSV")
                return fh.read(self.max_bytes + 1)
        finally:
            for fd in opened:
                os.close(fd)
