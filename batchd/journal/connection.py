"""The journal's connection: opened with WAL, ``busy_timeout`` and ``synchronous=FULL``, one
``transaction()`` (``BEGIN IMMEDIATE``); sqlite3 errors are translated into ``StorageError`` here."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchd.errors import StorageError
from batchd.journal.schema import migrate


def _enable_wal(db: sqlite3.Connection, *, deadline_s: float = 30.0) -> None:
    """``journal_mode=WAL``, retried: on a fresh file another process may be switching it at the same
    moment, and SQLite answers that race with SQLITE_BUSY at once, without calling the busy handler
    (four openers of one new journal: "database is locked" in 10 of 30 rounds of 10, 0 of 30 retried)."""
    deadline = time.monotonic() + deadline_s
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(0.2, pause * 2)


def _storage(message: str, exc: sqlite3.Error, path: Path) -> StorageError:
    """A sqlite3 error as ``StorageError``: full (SQLITE_FULL: the disk or a quota) or unwritable
    (SQLITE_IOERR, SQLITE_READONLY, SQLITE_CANTOPEN: a share gone, a read-only mount), with the path."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    full = name.startswith("SQLITE_FULL") or "disk is full" in str(exc)
    return StorageError(f"{message}: {exc}", path=str(path), full=full, reason=str(exc))


class Connection:
    """One SQLite connection, owned; the base of ``Journal`` and of its mixins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA busy_timeout=30000")
            _enable_wal(self._db)
            # FULL: a committed batch survives power loss, not only kill -9; one fsync per batch.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            migrate(self._db)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open journal {path}: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot create journal folder for {path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _storage("journal busy or unwritable", exc, self.path) from exc
        try:
            yield self._db
        except sqlite3.Error as exc:
            self._rollback()
            raise _storage("journal write failed", exc, self.path) from exc
        except BaseException:
            self._rollback()
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _storage("journal commit failed", exc, self.path) from exc

    def _rollback(self) -> None:
        """Undo the open transaction; SQLite may have rolled it back itself (a full disk, an I/O
        error end it), and a failed ROLLBACK must not hide the error that brought us here."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _storage("journal read failed", exc, self.path) from exc

    def _query_named(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as ``{column name: value}``, the names from the cursor (a SELECT list may grow)."""
        try:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        except sqlite3.Error as exc:
            raise _storage("journal read failed", exc, self.path) from exc

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])
