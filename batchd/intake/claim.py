"""Claiming: move a dropped file into the spool and turn it into a queued job.

The order makes every step restartable: copy to the spool (hashing as it
goes) and fsync; record file + job in one transaction; only then unlink the
inbox file. A crash between commit and unlink is finished by ``finish_claims``
at start-up, so a file is never claimed twice. Ingest writes requests in short
transactions while the job is ``ingesting``; recovery deletes a half-ingested
job's rows and ingests again from the spool.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from batchd.config import Settings
from batchd.errors import ConfigError, InputError, StorageError
from batchd.fsutil import READ_FLAGS, fsync_dir, open_dir_at
from batchd.intake.definition import checked_definition, work_key
from batchd.intake.inbox import Candidate, free_outbox_name, refusal, safe_stem
from batchd.intake.ingest import SUPPORTED, Limits, pipeline_prefix, read_csv, read_jsonl
from batchd.intake.quotas import OverOwnerLimit, TooManyInvalid
from batchd.journal import Job, JobState, Journal, NewClaim, NewRequest
from batchd.pipeline import HOSTILE_ERRORS, Pipeline, hostile_reason, load_pipeline_at

log = structlog.get_logger("batchd.claim")

CHUNK = 1 << 20
INSERT_BATCH = 5000


def _spool_refused(exc: OSError, dst: Path) -> StorageError:
    return StorageError.from_os("cannot write the spool copy", exc, dst)


class IngestCancelled(Exception):
    """A cancel arrived while the file was being read: stop reading."""


@dataclass(frozen=True)
class Claimed:
    job_id: str
    state: JobState


def display(name: str) -> str:
    """A file name as text people and SQLite can hold: bytes that are not UTF-8 become \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class _FolderChanged(Exception):
    """The pipeline folder is no longer the one the scan found (swapped, or made a symlink)."""


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _no_hook(step: str) -> None:
    return None


class Claimer:
    def __init__(self, *, settings: Settings, journal: Journal, hook: Callable[[str], None] = _no_hook) -> None:
        self.settings = settings
        self.journal = journal
        #: called before each filesystem step of a claim ("open_folder", "stat", "open_file",
        #: "unlink"): the seam the folder-swap tests use to race the claim deterministically
        self.hook = hook
        self.spool = settings.state_dir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.limits = Limits(
            max_lines=settings.limits.max_lines,
            max_line_bytes=settings.limits.max_line_bytes,
            allowed_models=tuple(settings.backend.allowed_models),
            max_image_bytes=settings.limits.max_image_bytes,
            max_images=settings.limits.max_images_per_request,
        )

    # -- start-up -------------------------------------------------------------

    def finish_claims(self) -> None:
        """Unlink inbox files whose claim committed before a crash; drop stray spool temps."""
        for file_id, inbox_path, size, mtime_ns in self.journal.unlinked_claims():
            rel = os.fsdecode(inbox_path)
            try:
                with self._folder(rel.rpartition("/")[0] or None, None) as dir_fd:
                    name = rel.rpartition("/")[2]
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if (
                        st.st_size == size
                        and st.st_mtime_ns == mtime_ns
                        and stat.S_ISREG(st.st_mode)
                        and st.st_nlink == 1
                    ):
                        os.unlink(name, dir_fd=dir_fd)
            except (FileNotFoundError, _FolderChanged):
                pass
            except OSError as exc:
                log.warning("claim_unlink_failed", input=display(rel), error=str(exc))
                continue
            self.journal.mark_file_removed(file_id)
        for stray in self.spool.glob("*.tmp"):
            stray.unlink(missing_ok=True)

    # -- claim ----------------------------------------------------------------

    def claim(self, cand: Candidate) -> Claimed | None:
        """Claim one stable candidate; None when it is not ready (or already handled).

        Its folder (the inbox root or a pipeline folder) is opened once, without
        following a symlink and checked against the scan; every later step
        (pipeline.toml, stat, open, unlink) is relative to that descriptor, so
        swapping ``inbox/<p>`` for a link elsewhere mid-claim reaches nothing
        outside the inbox.
        """
        try:
            with self._folder(cand.pipeline, cand.folder_id) as dir_fd:
                return self._claim_in(cand, dir_fd)
        except FileNotFoundError:
            return None
        except _FolderChanged as exc:
            log.warning("input_folder_changed", input=display(cand.rel), reason=str(exc))
            return None

    @contextmanager
    def _folder(self, pipeline: str | None, expected: tuple[int, int] | None) -> Iterator[int]:
        # The inbox root itself is the operator's setting (its parent is not group-writable), so
        # it may be a symlink; nothing below it is followed.
        root = os.open(self.settings.inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if pipeline is None:
                yield root
                return
            self.hook("open_folder")
            try:
                fd = open_dir_at(root, pipeline)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _FolderChanged(f"{pipeline!r} is no longer a folder (a symlink?)") from exc
                raise
            try:
                st = os.fstat(fd)
                if expected is not None and (st.st_dev, st.st_ino) != expected:
                    raise _FolderChanged(f"{pipeline!r} is another folder than the one scanned")
                yield fd
            finally:
                os.close(fd)
        finally:
            os.close(root)

    def _claim_in(self, cand: Candidate, dir_fd: int) -> Claimed | None:
        name = cand.path.name
        self.hook("stat")
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._reject(cand, None, f"cannot stat the file: {exc.strerror}", "unreadable")
        if self.journal.find_claim(os.fsencode(cand.rel), st.st_size, st.st_mtime_ns) is not None:
            return None
        problem = refusal(cand, st, self.settings.limits.max_file_bytes)
        if problem:
            return self._reject(cand, st, *problem)
        kind = SUPPORTED[cand.path.suffix.lower()]
        try:
            pipeline = (
                self.settings.pipeline
                if cand.pipeline is None
                else load_pipeline_at(dir_fd, self.settings.inbox / cand.pipeline)
            )
            definition = checked_definition(cand.pipeline, pipeline, self.settings)
        except ConfigError as exc:
            return self._reject(cand, st, f"pipeline {cand.pipeline!r} is broken: {exc.message}", "pipeline_error")
        except HOSTILE_ERRORS as exc:
            reason = f"pipeline {cand.pipeline!r} is broken: {hostile_reason(exc)}"
            return self._reject(cand, st, reason, "pipeline_error")
        job_id = new_job_id()
        tmp = self.spool / f"{job_id}.tmp"
        try:
            self.hook("open_file")
            sha, size = self._copy(dir_fd, name, st, tmp)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            log.info("input_vanished", input=display(cand.rel))
            return None
        except InputError as exc:
            tmp.unlink(missing_ok=True)
            return self._reject(cand, st, exc.message, exc.code)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return self._reject(cand, st, f"cannot read the file: {exc.strerror or exc}", "unreadable")
        try:
            after = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return None
        if _identity(after) != _identity(st) or size != st.st_size:
            tmp.unlink(missing_ok=True)  # still being written (or replaced): the watcher comes back later
            log.info("input_still_changing", input=display(cand.rel))
            return None
        spooled = self.spool / f"{job_id}.{kind}"
        os.replace(tmp, spooled)
        fsync_dir(self.spool)
        try:
            file_id = self._record(cand, st, job_id, spooled, sha, size, kind, definition)
        except BaseException:
            spooled.unlink(missing_ok=True)  # no spool copy without its journal row (a rescan would add another)
            raise
        if file_id is None:  # another claimer recorded this file meanwhile: it is theirs
            spooled.unlink(missing_ok=True)
            return None
        self._reserve(job_id, safe_stem(cand.path.name))
        if self._unlink(dir_fd, name, st, cand):
            self.journal.mark_file_removed(file_id)
        log.info("job_claimed", job_id=job_id, input=display(cand.rel), bytes=size, sha256=sha, pipeline=cand.pipeline)
        return Claimed(job_id, self.ingest(job_id))

    def _record(
        self,
        cand: Candidate,
        st: os.stat_result,
        job_id: str,
        spooled: Path,
        sha: str,
        size: int,
        kind: str,
        definition: str,
    ) -> int | None:
        return self.journal.claim(
            NewClaim(
                job_id=job_id,
                name=display(cand.path.name),
                inbox_path=os.fsencode(cand.rel),
                spool=str(spooled),
                sha256=sha,
                size=size,
                mtime_ns=st.st_mtime_ns,
                input_name=display(cand.rel),
                stem=safe_stem(cand.path.name),
                kind=kind,
                pipeline=cand.pipeline,
                pipeline_json=definition,
                owner_uid=st.st_uid,
            )
        )

    def _reserve(self, job_id: str, stem: str) -> None:
        """The job's outbox folder name, held from the claim on: a job published sooner cannot take it."""
        name = free_outbox_name(stem, self.settings.outbox, self.journal.reserved_outbox_names())
        self.journal.update_job(job_id, outbox_name=name)

    def _unlink(self, dir_fd: int, name: str, st: os.stat_result, cand: Candidate) -> bool:
        """Remove the claimed file, and only that file: the name must still point at its inode.
        False when the claimed file is still there (start-up tries again)."""
        self.hook("unlink")
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                log.warning("claim_unlink_skipped", input=display(cand.rel), reason="the name now holds another file")
                return True
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("claim_unlink_failed", input=display(cand.rel), error=str(exc))
            return False
        return True

    def _copy(self, dir_fd: int, name: str, st: os.stat_result, dst: Path) -> tuple[str, int]:
        # O_NOFOLLOW: a file swapped for a symlink after the stat still is not followed;
        # O_NONBLOCK: a FIFO swapped in does not hang the daemon.
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        digest = hashlib.sha256()
        size = 0
        limit = self.settings.limits.max_file_bytes
        with os.fdopen(fd, "rb") as fin:
            opened = os.fstat(fin.fileno())
            if not stat.S_ISREG(opened.st_mode):
                raise InputError("is not a regular file", code="not_a_file")
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise FileNotFoundError(errno.ENOENT, "replaced since it was looked at")  # come back later
            if opened.st_nlink > 1:
                raise InputError("has more than one hard link; batchd only takes plain files", code="hardlink")
            # A write the disk refuses (full, quota, I/O error, read-only) is a StorageError: the claim
            # waits and the file stays in the inbox; never a verdict on the input (reading it is).
            try:
                try:
                    fout = open(dst, "wb")  # noqa: SIM115 - closed by the with below
                except OSError as exc:
                    raise _spool_refused(exc, dst) from exc
                with fout:
                    while chunk := fin.read(CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise InputError(f"file grew over limits.max_file_bytes ({limit:,})", code="too_large")
                        digest.update(chunk)
                        try:
                            fout.write(chunk)
                        except OSError as exc:
                            raise _spool_refused(exc, dst) from exc
                    try:
                        fout.flush()
                        os.fsync(fout.fileno())
                    except OSError as exc:
                        raise _spool_refused(exc, dst) from exc
            except StorageError:
                dst.unlink(missing_ok=True)
                raise
        return digest.hexdigest(), size

    def _reject(self, cand: Candidate, st: os.stat_result | None, message: str, code: str) -> Claimed:
        """Record a file that cannot become a job; it stays in the inbox, untouched."""
        job_id = new_job_id()
        self.journal.reject_file(
            job_id=job_id,
            name=display(cand.path.name),
            inbox_path=os.fsencode(cand.rel),
            size=st.st_size if st else -1,
            mtime_ns=st.st_mtime_ns if st else -1,
            input_name=display(cand.rel),
            stem=safe_stem(cand.path.name),
            pipeline=cand.pipeline,
            error={"code": code, "message": message},
        )
        self._reserve(job_id, safe_stem(cand.path.name))
        log.warning("input_rejected", job_id=job_id, input=display(cand.rel), code=code, reason=message)
        return Claimed(job_id, JobState.FINALIZING)

    # -- ingest ---------------------------------------------------------------

    def ingest(self, job_id: str) -> JobState:
        """Parse the spooled file into request rows; restartable from scratch."""
        job = self.journal.job(job_id)
        assert job is not None
        if job.spool is None:  # a row no claim of ours writes: fail it rather than crash start-up on it
            return self._unusable(job, "it has no spool copy")
        try:
            # A journal row from before the pipeline checks may hold what cannot be hashed or sent.
            pipeline = Pipeline.model_validate_json(job.pipeline_json or "{}")
            model = self.settings.model_for(pipeline)
            mode = job.meta.get("mode") or pipeline.mode or self.settings.context.mode  # an API batch's own
            key = work_key(job.sha256 or "", job.pipeline, pipeline, self.settings)
        except ConfigError as exc:
            return self._unusable(job, exc.message)
        except HOSTILE_ERRORS as exc:
            return self._unusable(job, hostile_reason(exc))
        twin = self.journal.claim_work(job.id, key)
        if twin is not None:
            log.info("job_duplicate", job_id=job.id, input=job.input_name, duplicate_of=twin)
            return JobState.FINALIZING
        self.journal.restart_ingest(job.id)  # a half-done earlier ingest starts over
        try:
            total, invalid, columns, prefix = self._parse_into(job, pipeline, model)
            prefix_json = orjson.dumps(prefix).decode() if prefix else None
        except FileNotFoundError:
            return self._unusable(job, "its spool copy is gone")
        except IngestCancelled:
            total, invalid, columns, prefix_json = 0, 0, [], None
        except TooManyInvalid as exc:
            # Only the invalid lines stay (errors.jsonl lists them); nothing of this file runs.
            self.journal.fail_ingest(job.id, exc.as_record(), keep_invalid=True)
            log.warning("input_invalid", job_id=job.id, input=job.input_name, code=exc.code, reason=exc.message)
            return JobState.FINALIZING
        except InputError as exc:
            self.journal.fail_ingest(job.id, exc.as_record())
            log.warning("input_invalid", job_id=job.id, input=job.input_name, code=exc.code, reason=exc.message)
            return JobState.FINALIZING
        except HOSTILE_ERRORS as exc:
            return self._unusable(job, hostile_reason(exc))
        state = self.journal.finish_ingest(
            job.id,
            total=total,
            columns=columns,
            model=model,
            mode=mode,
            prefix_json=prefix_json,
        )
        if state is JobState.QUEUED:
            log.info("job_queued", job_id=job.id, input=job.input_name, requests=total, invalid=invalid, mode=mode)
        else:
            log.info("job_cancelled", job_id=job.id, input=job.input_name, during="ingest")
        return state

    def _unusable(self, job: Job, reason: str) -> JobState:
        """The job's definition cannot be hashed, parsed or sent: it fails, the queue goes on."""
        error = {"code": "pipeline_error", "message": f"the job cannot be ingested: {reason}"}
        self.journal.fail_ingest(job.id, error)
        log.warning("input_invalid", job_id=job.id, input=job.input_name, code="pipeline_error", reason=reason)
        return JobState.FINALIZING

    def _parse_into(
        self, job: Job, pipeline: Pipeline, model: str
    ) -> tuple[int, int, list[str], dict[str, Any] | None]:
        assert job.spool is not None
        columns: list[str] = []
        prefix = None
        with open(job.spool, "rb") as fh:
            if job.kind == "csv":
                columns, rows = read_csv(fh, pipeline, self.limits)
                prefix = pipeline_prefix(pipeline, model)
            else:
                rows = read_jsonl(fh, self.limits, endpoint=job.meta.get("endpoint"))
            total = invalid = valid = 0
            batch: list[NewRequest] = []
            cap = self.settings.limits.max_invalid_lines
            room = self._owner_room(job)
            for r in rows:
                batch.append(r)
                invalid += r.error is not None
                valid += r.error is None
                if room is not None and valid > room[2] - room[1]:
                    raise OverOwnerLimit(*room)
                if invalid > cap:
                    # A small file of junk lines must not become a flood of records (errors, scores,
                    # journal): stop reading, keep the first `cap` line errors, say the rest in one.
                    total += self._insert(job.id, batch)
                    raise TooManyInvalid(cap, r.line or total)
                if len(batch) >= INSERT_BATCH:
                    total += self._insert(job.id, batch)
                    if self.journal.cancel_requested(job.id):
                        raise IngestCancelled(job.id)
            total += self._insert(job.id, batch)
        if total == 0:
            raise InputError("file has no requests (empty, or only a header)", code="empty_file")
        return total, invalid, columns, prefix

    def _owner_room(self, job: Job) -> tuple[int, int, int] | None:
        """(uid, queued elsewhere, cap) when the owner's requests are capped, else None."""
        cap = self.settings.limits.max_queued_requests_per_owner
        if cap is None or job.owner_uid is None:
            return None
        return job.owner_uid, self.journal.queued_of_owner(job.owner_uid, job.id), cap

    def _insert(self, job_id: str, batch: list[NewRequest]) -> int:
        if not batch:
            return 0
        with self.journal.transaction() as db:
            n = self.journal.insert_requests(job_id, batch, db)
        batch.clear()
        return n
