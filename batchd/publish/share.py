"""The shared folder's rules: what batchd publishes belongs to the readers' group, 0640 files, 0750 folders."""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("batchd.share")

#: what the people who drop files may do with what batchd publishes: read, never write
FILE_MODE = 0o640
#: No setgid bit: the unit's RestrictSUIDSGID=yes makes a chmod that sets it fail with EPERM
#: (seen under tests/system), so every file gets the group explicitly instead of inheriting it.
DIR_MODE = 0o750

#: (folder, gid) pairs whose chown failure was logged: once per folder, not once per file
_WARNED: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class SharedFolder:
    """A folder others read through its group (the outbox): what batchd puts there is theirs to read.

    The group is the configured ``group`` when set, else the folder's own group
    (``batchd-users`` for ``/srv/batchd/outbox``). The process's primary group
    (``batchd``) is never right: the readers are not in it. Modes are set
    explicitly after creation, so neither the umask nor the mode of the file a
    copy came from matters. Group first, then mode: an unprivileged chown may
    clear mode bits.
    """

    root: Path
    gid: int | None

    @classmethod
    def of(cls, root: Path, *, group: str | None) -> SharedFolder:
        if group:
            try:
                return cls(root, grp.getgrnam(group).gr_gid)
            except KeyError:
                log.warning("outbox_group_missing", group=group)
        try:
            return cls(root, root.stat().st_gid)
        except OSError:
            return cls(root, None)  # not there yet: the caller creates it, in the process's group

    def publish_fd(self, fd: int, *, is_dir: bool = False, name: str = "") -> None:
        """Hand an open file or folder to the share's group with the share's mode."""
        if self.gid is not None:
            try:
                os.fchown(fd, -1, self.gid)
            except OSError as exc:
                # Without CAP_CHOWN the kernel only allows a group the daemon is a member of.
                if (str(self.root), self.gid) not in _WARNED:
                    _WARNED.add((str(self.root), self.gid))
                    log.warning(
                        "outbox_chown_failed",
                        path=name,
                        gid=self.gid,
                        error=str(exc),
                        fix="make the daemon's user a member of that group (usermod -aG GROUP batchd)",
                    )
        os.fchmod(fd, DIR_MODE if is_dir else FILE_MODE)

    def publish_path(self, path: Path) -> None:
        """``publish_fd`` for a path (never following a link)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            self.publish_fd(fd, is_dir=stat.S_ISDIR(os.fstat(fd).st_mode), name=str(path))
        finally:
            os.close(fd)

    def mkdir(self, path: Path) -> None:
        """A new folder inside, with the share's group and mode."""
        path.mkdir(mode=0o700)  # nobody else sees it until publish_path() below
        self.publish_path(path)

    def create(self, path: Path) -> int:
        """A new file inside, opened for writing (O_EXCL, no link followed), group and mode already set."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            self.publish_fd(fd, name=str(path))
        except BaseException:
            os.close(fd)
            raise
        return fd
