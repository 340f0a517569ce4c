"""A hostile inbox user swapping a pipeline folder for a symlink while batchd claims from it.

The attacker owns ``inbox/p`` (a pipeline folder with their own ``rows.csv``);
the victim folder holds a ``pipeline.toml`` with a private rubric and a
``rows.csv`` the attacker cannot read. Whatever the moment of the swap, the
victim's file must not be copied into the spool (and from there published or
sent to the model), its rubric must not become a prompt, and it must not be
unlinked.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchd.config import Settings
from batchd.intake.claim import Claimer
from batchd.intake.inbox import Candidate, scan
from batchd.journal import Journal, NewClaim

SECRET = b"a\nTOP-SECRET-ROW\n"
RUBRIC = "PRIVATE-RUBRIC"


class Box:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.inbox = root / "inbox"
        self.state = root / "state"
        self.victim = root / "victim"
        for d in (self.inbox / "p", self.state, self.victim, root / "outbox"):
            d.mkdir(parents=True)
        (self.inbox / "p" / "pipeline.toml").write_text('user_template = "{a}"\n')
        self.drop()
        (self.victim / "pipeline.toml").write_text(f'system_prompt = "{RUBRIC}"\nuser_template = "{{a}}"\n')
        (self.victim / "rows.csv").write_bytes(SECRET)
        self.settings = Settings(inbox=self.inbox, outbox=root / "outbox", state_dir=self.state)

    def drop(self) -> None:
        (self.inbox / "p" / "rows.csv").write_bytes(b"a\nmine\n")

    def swap(self) -> None:
        """``inbox/p`` becomes a symlink to the victim's folder (the attacker keeps theirs as p.old)."""
        os.rename(self.inbox / "p", self.inbox / "p.old")
        os.symlink(self.victim, self.inbox / "p")

    def unswap(self) -> None:
        os.unlink(self.inbox / "p")
        os.rename(self.inbox / "p.old", self.inbox / "p")

    def assert_victim_safe(self, journal: Journal) -> None:
        assert (self.victim / "rows.csv").read_bytes() == SECRET, "the victim's file was deleted or changed"
        for f in (self.state / "spool").iterdir():
            assert b"TOP-SECRET" not in f.read_bytes(), f"the victim's file was copied into {f}"
        for job in journal.jobs():
            assert RUBRIC not in (job.pipeline_json or ""), "the victim's rubric became a prompt"
            for req in journal.iter_requests(job.id):
                assert "TOP-SECRET" not in repr(req), "the victim's row became a request"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    yield Box(tmp_path)


def _candidate(box: Box) -> Candidate:
    (cand,) = [c for c in scan(box.inbox) if c.pipeline == "p"]
    return cand


def test_swap_between_scan_and_claim_reaches_nothing_outside(box: Box) -> None:
    journal = Journal(box.state / "journal.sqlite3")
    try:
        cand = _candidate(box)
        box.swap()
        Claimer(settings=box.settings, journal=journal).claim(cand)
        box.assert_victim_safe(journal)
        assert (box.inbox / "p.old" / "rows.csv").exists()  # nothing claimed: the folder changed
    finally:
        journal.close()


@pytest.mark.parametrize("step", ["open_folder", "stat", "open_file", "unlink"])
def test_swap_at_every_step_of_a_claim_reaches_nothing_outside(box: Box, step: str) -> None:
    seen: list[str] = []

    def hook(at: str) -> None:
        seen.append(at)
        if at == step:
            box.swap()

    journal = Journal(box.state / "journal.sqlite3")
    try:
        Claimer(settings=box.settings, journal=journal, hook=hook).claim(_candidate(box))
        assert step in seen  # the swap did happen
        box.assert_victim_safe(journal)
        if step != "open_folder":  # the folder was already open: the attacker's own file was claimed
            assert [j.pipeline for j in journal.jobs()] == ["p"]
            assert not (box.inbox / "p.old" / "rows.csv").exists()
    finally:
        journal.close()


def test_a_folder_swapped_for_another_real_folder_is_not_claimed(box: Box) -> None:
    journal = Journal(box.state / "journal.sqlite3")
    try:
        cand = _candidate(box)
        os.rename(box.inbox / "p", box.inbox / "p.old")
        (box.inbox / "p").mkdir()
        (box.inbox / "p" / "pipeline.toml").write_text('user_template = "{a}"\n')
        (box.inbox / "p" / "rows.csv").write_bytes(b"a\nsomeone else\n")
        assert Claimer(settings=box.settings, journal=journal).claim(cand) is None
        assert (box.inbox / "p" / "rows.csv").exists() and journal.jobs() == []
    finally:
        journal.close()


def test_hard_links_are_refused_like_symlinks(box: Box) -> None:
    os.unlink(box.inbox / "p" / "rows.csv")
    os.link(box.victim / "rows.csv", box.inbox / "p" / "rows.csv")
    journal = Journal(box.state / "journal.sqlite3")
    try:
        Claimer(settings=box.settings, journal=journal).claim(_candidate(box))
        (job,) = journal.jobs()
        assert job.kind == "rejected" and job.error is not None and job.error["code"] == "hardlink"
        box.assert_victim_safe(journal)
        assert (box.inbox / "p" / "rows.csv").exists()  # left alone
    finally:
        journal.close()


def test_finish_claims_does_not_follow_a_swapped_folder(box: Box) -> None:
    """A crash between commit and unlink: the restart's unlink must not go through a symlink."""
    journal = Journal(box.state / "journal.sqlite3")
    try:
        claimer = Claimer(settings=box.settings, journal=journal, hook=lambda at: _crash(at, "unlink"))
        with pytest.raises(_Crash):
            claimer.claim(_candidate(box))
        victim_file = box.victim / "rows.csv"
        st = (box.inbox / "p" / "rows.csv").stat()
        os.utime(victim_file, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.truncate(victim_file, st.st_size)  # same size and mtime as the claimed file: only the path differs
        os.utime(victim_file, ns=(st.st_atime_ns, st.st_mtime_ns))
        box.swap()
        Claimer(settings=box.settings, journal=journal).finish_claims()
        assert victim_file.exists()
    finally:
        journal.close()


class _Crash(Exception):
    pass


def _crash(at: str, step: str) -> None:
    if at == step:
        raise _Crash(at)


def test_racing_folder_swaps_never_leak_or_delete(box: Box) -> None:
    """A thread swaps ``inbox/p`` back and forth as fast as it can while batchd claims in a loop."""
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        rng = random.Random(17)
        while not stop.is_set():
            box.swap()
            time.sleep(rng.random() * 0.002)
            box.unswap()
            time.sleep(rng.random() * 0.002)
            swaps += 1

    # The attacker refills their own folder through a descriptor: never through the name the swapper moves.
    mine = os.open(box.inbox / "p", os.O_RDONLY | os.O_DIRECTORY)

    def refill() -> None:
        fd = os.open("rows.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=mine)
        os.write(fd, b"a\nmine\n")
        os.close(fd)

    journal = Journal(box.state / "journal.sqlite3")
    claimer = Claimer(settings=box.settings, journal=journal)
    thread = threading.Thread(target=swapper)
    thread.start()
    claims = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for cand in scan(box.inbox):
                _quietly(lambda c=cand: claimer.claim(c))
                claims += 1
            _quietly(refill)
            if not (box.victim / "rows.csv").exists():
                break
    finally:
        stop.set()
        thread.join()
        os.close(mine)
        try:
            assert swaps > 100 and claims > 10  # the race really ran
            box.assert_victim_safe(journal)
        finally:
            journal.close()


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError:  # the folder moved under our feet: that is the point
        pass


def test_a_file_another_claimer_recorded_meanwhile_is_left_to_it(box: Box) -> None:
    """Two claimers saw the same file; the other committed between our look-up and our claim."""
    journal = Journal(box.state / "journal.sqlite3")
    other = Journal(box.state / "journal.sqlite3")
    rows = box.inbox / "p" / "rows.csv"

    def hook(at: str) -> None:
        if at == "open_file":
            st = rows.stat()
            claim = NewClaim(
                job_id="theirs", name="rows.csv", inbox_path=b"p/rows.csv", spool="/elsewhere", sha256=None,
                size=st.st_size, mtime_ns=st.st_mtime_ns, input_name="p/rows.csv", stem="rows", kind="csv",
                pipeline="p", pipeline_json="{}",
            )  # fmt: skip
            assert other.claim(claim) is not None

    try:
        assert Claimer(settings=box.settings, journal=journal, hook=hook).claim(_candidate(box)) is None
        assert [j.id for j in journal.jobs()] == ["theirs"]
        assert rows.exists()  # theirs to unlink
        assert list((box.state / "spool").iterdir()) == []  # our copy is gone
    finally:
        other.close()
        journal.close()


def test_the_claim_records_the_uid_that_owned_the_file(box: Box) -> None:
    """Who dropped a file is who may cancel it and whose limit it counts against: the owner at claim time."""
    path = box.inbox / "p" / "rows.csv"
    if os.geteuid() == 0:
        os.chown(path, 4321, os.stat(path).st_gid)
    owner = os.stat(path).st_uid
    journal = Journal(box.settings.journal_path)
    claimed = Claimer(settings=box.settings, journal=journal).claim(_candidate(box))
    assert claimed is not None
    assert journal.job(claimed.job_id).owner_uid == owner
    if os.geteuid() == 0:
        assert owner == 4321  # not the daemon's own uid
