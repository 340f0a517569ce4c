"""``NAME.cancel``: a dropper stops their own job from the share.

An empty file ``NAME.cancel`` beside where ``NAME`` was dropped (the inbox root or a pipeline folder)
cancels the newest unfinished job claimed from ``NAME`` there, when the ``.cancel`` file is owned by the
uid that owned ``NAME`` (``Job.owner_uid``) or by root. Anything else is refused, visibly (the log names
the user; ``Journal.add_refusal`` feeds the status page). Either way the ``.cancel`` file is removed.

The inbox is sticky and group-writable (3770): a member can create names but not remove or rename
another member's files, so the owner of a ``.cancel`` file is who made it. What is refused and why:

- not a regular file (a symlink is never followed: ``lstat``; a folder is left alone, noted once);
- a hard link (``st_nlink`` > 1: a member could link someone else's file under a ``.cancel`` name and
  borrow its owner) or not empty (the same trick with a data file);
- no unfinished job from ``NAME`` there, or the owner is neither the dropper nor root.

A flood is paced: at most ``MAX_PER_PASS`` files per pass (the rest next pass), refusals logged one by
one up to ``LOG_PER_PASS`` and then counted, the journal keeps the newest few hundred.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

import structlog

from batchd.fsutil import DIR_FLAGS, open_dir_at
from batchd.intake.inbox import is_ignored_dir
from batchd.journal import Journal
from batchd.pipeline import PIPELINE_FILE

log = structlog.get_logger("batchd.intake")

SUFFIX = ".cancel"
MAX_PER_PASS = 64
LOG_PER_PASS = 10


@dataclass(frozen=True)
class Verdict:
    """What one ``.cancel`` file did: ``cancelled`` (``answer``: the journal's word) or refused (``reason``)."""

    name: str
    uid: int
    user: str
    job_id: str | None
    reason: str | None = None
    answer: str | None = None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class CancelDesk:
    """One pass over the inbox's ``.cancel`` files (``run_pass``), from intake's worker thread."""

    def __init__(self, inbox: Path, journal: Journal) -> None:
        self.inbox = inbox
        self.journal = journal
        #: folders named ``x.cancel`` (left alone): refused once, not every pass
        self._noted: set[tuple[int, int]] = set()

    def run_pass(self) -> list[Verdict]:
        verdicts: list[Verdict] = []
        try:
            root = os.open(self.inbox, DIR_FLAGS)
        except OSError:
            return verdicts  # the inbox is away: intake says so
        try:
            for folder in [None, *self._pipeline_folders(root)]:
                if len(verdicts) >= MAX_PER_PASS:
                    break
                try:
                    fd = root if folder is None else open_dir_at(root, folder)
                except OSError:
                    continue  # swapped for a symlink or gone: nothing to act on there
                try:
                    for name in sorted(n for n in os.listdir(fd) if n.endswith(SUFFIX) and len(n) > len(SUFFIX)):
                        if len(verdicts) >= MAX_PER_PASS:
                            break
                        verdict = self._act(fd, folder, name)
                        if verdict is not None:
                            verdicts.append(verdict)
                finally:
                    if fd != root:
                        os.close(fd)
        finally:
            os.close(root)
        self._log(verdicts)
        return verdicts

    def _pipeline_folders(self, root: int) -> list[str]:
        out = []
        for name in os.listdir(root):
            if is_ignored_dir(name):
                continue
            try:
                st = os.stat(name, dir_fd=root, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) and os.path.exists(os.path.join(self.inbox, name, PIPELINE_FILE)):
                    out.append(name)
            except OSError:
                continue
        return sorted(out)

    def _act(self, fd: int, folder: str | None, name: str) -> Verdict | None:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None  # gone meanwhile
        target = name[: -len(SUFFIX)]
        rel = target if folder is None else f"{folder}/{target}"
        shown = rel + SUFFIX
        uid, user = st.st_uid, user_name(st.st_uid)
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in self._noted:
                return None
            self._noted.add((st.st_dev, st.st_ino))
            return self._refuse(shown, uid, user, None, "not_a_file")
        verdict: Verdict
        if not stat.S_ISREG(st.st_mode):
            verdict = self._refuse(shown, uid, user, None, "not_a_file")  # a symlink, a FIFO, ...
        elif st.st_nlink != 1:
            verdict = self._refuse(shown, uid, user, None, "hard_link")
        elif st.st_size != 0:
            verdict = self._refuse(shown, uid, user, None, "not_empty")
        else:
            job = self.journal.newest_unfinished_from(os.fsencode(rel))
            if job is None:
                verdict = self._refuse(shown, uid, user, None, "no_unfinished_job")
            elif uid != 0 and uid != job.owner_uid:
                verdict = self._refuse(shown, uid, user, job.id, "not_the_owner")
            else:
                answer = self.journal.request_cancel(job.id)
                verdict = Verdict(shown, uid, user, job.id, answer=answer.value)
        self._remove(fd, name, st)
        return verdict

    def _refuse(self, name: str, uid: int, user: str, job_id: str | None, reason: str) -> Verdict:
        self.journal.add_refusal(name=name, uid=uid, user=user, job_id=job_id, reason=reason)
        return Verdict(name, uid, user, job_id, reason=reason)

    @staticmethod
    def _remove(fd: int, name: str, seen: os.stat_result) -> None:
        """Unlink the ``.cancel`` file acted on, not one put in its place meanwhile (nothing is followed)."""
        try:
            now = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (seen.st_dev, seen.st_ino):
                os.unlink(name, dir_fd=fd)
        except OSError as exc:
            log.warning("cancel_file_not_removed", name=name, error=str(exc))

    @staticmethod
    def _log(verdicts: list[Verdict]) -> None:
        refused = 0
        for v in verdicts:
            if v.reason is None:
                log.info("job_cancel_dropped", name=v.name, job_id=v.job_id, user=v.user, uid=v.uid, answer=v.answer)
                continue
            refused += 1
            if refused <= LOG_PER_PASS:
                log.warning("cancel_refused", name=v.name, user=v.user, uid=v.uid, job_id=v.job_id, reason=v.reason)
        if refused > LOG_PER_PASS:
            log.warning("cancel_refused_more", count=refused - LOG_PER_PASS)
