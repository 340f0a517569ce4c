"""Watch: mount-type detection, the stability rule (injected clock), the observer wrapper."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from batchd.intake.watch import InboxWatcher, Signature, StabilityTracker, choose_mode, mount_type, signature
from tests.support.waiting import wait_for

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
30 27 0:40 / /srv rw,relatime shared:5 - ext4 /dev/vdb1 rw
31 30 0:41 / /srv/batchd/inbox rw,relatime shared:6 - cifs //nas/share rw,vers=3.1.1
32 30 0:42 / /srv/batchd/inbox-local rw,relatime - xfs /dev/vdc1 rw
33 27 0:43 / /mnt/nfs rw,relatime - nfs4 server:/export rw,vers=4.2
34 27 0:44 / /mnt/with\\040space rw,relatime - fuse.sshfs user@host:/x rw
35 27 0:45 / /mnt/over rw,relatime - nfs server:/a rw
36 27 0:46 / /mnt/over rw,relatime - tmpfs tmpfs rw
37 27 0:47 / /data rw - 9p data rw
"""


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/srv/batchd/inbox", "cifs"),
        ("/srv/batchd/inbox/scoring/x.csv", "cifs"),
        ("/srv/batchd/inbox-local", "xfs"),  # a shared prefix of characters is not a parent folder
        ("/srv/batchd/outbox", "ext4"),
        ("/srv", "ext4"),
        ("/home/me/inbox", "ext4"),
        ("/mnt/nfs/drop", "nfs4"),
        ("/mnt/with space/inbox", "fuse.sshfs"),
        ("/mnt/over/inbox", "tmpfs"),  # mounted over: the later line wins
        ("/data/inbox", "9p"),
    ],
)
def test_mount_type_longest_prefix(path: str, fstype: str) -> None:
    assert mount_type(Path(path), MOUNTINFO) == fstype


def test_mount_type_tolerates_junk_lines() -> None:
    assert mount_type(Path("/x"), "garbage\n\n1 2 3\n") is None


@pytest.mark.parametrize(
    ("inbox", "mode"),
    [
        ("/srv/batchd/inbox", "poll"),
        ("/mnt/nfs/in", "poll"),
        ("/mnt/with space/in", "poll"),
        ("/data/in", "poll"),
        ("/srv/batchd/inbox-local", "inotify"),
        ("/home/x", "inotify"),
    ],
)
def test_auto_mode_polls_network_mounts(inbox: str, mode: str) -> None:
    assert choose_mode("auto", Path(inbox), MOUNTINFO) == mode


def test_explicit_mode_wins() -> None:
    assert choose_mode("inotify", Path("/srv/batchd/inbox"), MOUNTINFO) == "inotify"
    assert choose_mode("poll", Path("/home/x"), MOUNTINFO) == "poll"


def test_auto_mode_reads_this_machines_mount_table(tmp_path: Path) -> None:
    assert choose_mode("auto", tmp_path) in ("inotify", "poll")


# -- StabilityTracker ----------------------------------------------------------------------

REG = stat.S_IFREG


class FakeFS:
    """A clock and an lstat the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.files: dict[Path, Signature] = {}

    def clock(self) -> float:
        return self.now

    def stat(self, path: Path) -> Signature | None:
        return self.files.get(path)

    def write(self, path: Path, size: int, kind: int = REG) -> None:
        self.files[path] = Signature(kind, size, int(self.now * 1e9))


@pytest.fixture
def fs() -> FakeFS:
    return FakeFS()


@pytest.fixture
def tracker(fs: FakeFS) -> StabilityTracker:
    return StabilityTracker(stable_seconds=2.0, clock=fs.clock, stat=fs.stat)


def test_quiet_unchanged_file_is_ready_once(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv")
    fs.write(p, 10)
    tracker.seen(p)
    fs.now += 1.9
    assert tracker.ready() == []
    fs.now += 0.1
    assert tracker.ready() == [p]
    assert tracker.ready() == [] and p not in tracker


def test_every_event_restarts_the_quiet_period(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/slow.csv")
    for size in range(1, 6):  # a slow copy: a write every 1.5 s, each with its event
        fs.write(p, size * 100)
        tracker.seen(p)
        fs.now += 1.5
        assert tracker.ready() == []
    fs.now += 0.5
    assert tracker.ready() == [p]


def test_change_without_event_restarts_the_wait(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv")
    fs.write(p, 10)
    tracker.seen(p)
    fs.now += 3
    fs.write(p, 20)  # grew, but the event was lost (inotify overflow, poll gap)
    assert tracker.ready() == []
    assert tracker.next_due() == pytest.approx(2.0)
    fs.now += 2
    assert tracker.ready() == [p]


def test_same_size_new_mtime_is_a_change(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv")
    fs.write(p, 10)
    tracker.seen(p)
    fs.now += 2
    fs.write(p, 10)
    assert tracker.ready() == []


def test_regular_file_replaced_by_symlink_waits_again(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv")
    fs.write(p, 10)
    tracker.seen(p)
    fs.files[p] = Signature(stat.S_IFLNK, 10, fs.files[p].mtime_ns)
    fs.now += 2
    assert tracker.ready() == []
    fs.now += 2
    assert tracker.ready() == [p]  # now quiet as a symlink: the claimer refuses it with a record


def test_vanished_file_is_forgotten(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv.part")
    fs.write(p, 10)
    tracker.seen(p)
    del fs.files[p]
    fs.now += 5
    assert tracker.ready() == [] and len(tracker) == 0


def test_scan_offer_does_not_reset_an_event(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv")
    fs.write(p, 10)
    tracker.seen(p)
    fs.now += 1.5
    tracker.offer(p)  # a periodic rescan finds it again
    fs.now += 0.5
    assert tracker.ready() == [p]


def test_signature_passed_with_the_event_is_the_baseline(fs: FakeFS, tracker: StabilityTracker) -> None:
    p = Path("/in/a.csv")
    fs.write(p, 10)
    tracker.seen(p, Signature(REG, 5, 0))  # the event thread saw it smaller
    fs.now += 2
    assert tracker.ready() == []


def test_ready_in_modification_order(fs: FakeFS, tracker: StabilityTracker) -> None:
    b, a = Path("/in/b.csv"), Path("/in/a.csv")
    fs.write(b, 1)
    fs.now += 0.001
    fs.write(a, 1)
    tracker.seen(a)
    tracker.seen(b)
    fs.now += 2
    assert tracker.ready() == [b, a]


def test_next_due(fs: FakeFS, tracker: StabilityTracker) -> None:
    assert tracker.next_due() is None
    fs.write(Path("/x.csv"), 1)
    tracker.seen(Path("/x.csv"))
    fs.now += 0.5
    assert tracker.next_due() == pytest.approx(1.5)


def test_signature_of_real_files(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(b"abc")
    sig = signature(f)
    assert sig is not None and sig.regular and sig.size == 3
    (tmp_path / "link.csv").symlink_to(f)
    link = signature(tmp_path / "link.csv")
    assert link is not None and not link.regular
    assert signature(tmp_path / "missing.csv") is None


# -- InboxWatcher (real observers, short waits on conditions) ------------------------------


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_watcher_reports_candidates_and_skips_junk(tmp_path: Path, mode: str) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "scoring").mkdir(parents=True)
    (inbox / "scoring" / "pipeline.toml").write_text('user_template = "{x}"\n')
    (inbox / "plain").mkdir()
    seen: list[Path] = []
    folders: list[Path] = []
    lock = threading.Lock()

    def on_path(path: Path, sig: Signature | None) -> None:
        with lock:
            seen.append(path)

    w = InboxWatcher(
        inbox=inbox, mode=mode, poll_seconds=0.05, ignore=("*.bak",), on_path=on_path, on_folder=folders.append
    )
    w.start()
    try:
        assert w.healthy()
        for name in (".hidden.csv", "~$x.csv", "a.tmp", "b.csv.part", "c.bak", "plain/d.csv"):
            (inbox / name).write_text("x")
        (inbox / "b.csv.part").rename(inbox / "b.csv")
        (inbox / "scoring" / "e.csv").write_text("x\n1\n")
        (inbox / "scoring" / "notes.txt").write_text("pipeline assets are not inputs")
        wait_for(lambda: {inbox / "b.csv", inbox / "scoring" / "e.csv"} <= set(seen), timeout=10)
        with lock:
            names = {p.relative_to(inbox).as_posix() for p in seen}
        assert names == {"b.csv", "scoring/e.csv"}
    finally:
        w.stop()


def test_watcher_notices_a_removed_inbox(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    w = InboxWatcher(
        inbox=inbox, mode="inotify", poll_seconds=0.05, ignore=(), on_path=lambda p, s: None, on_folder=lambda p: None
    )
    w.start()
    try:
        inbox.rmdir()
        inbox.mkdir()  # back at once, but a different folder: the old watch is dead
        wait_for(lambda: not w.healthy(), timeout=10)
    finally:
        w.stop()
    with pytest.raises(OSError):
        InboxWatcher(
            inbox=tmp_path / "nope",
            mode="poll",
            poll_seconds=0.05,
            ignore=(),
            on_path=lambda p, s: None,
            on_folder=lambda p: None,
        ).start()


def test_watcher_adds_new_pipeline_folders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    seen: list[Path] = []
    folders: list[Path] = []
    w = InboxWatcher(
        inbox=inbox,
        mode="inotify",
        poll_seconds=0.05,
        ignore=(),
        on_path=lambda p, s: seen.append(p),
        on_folder=folders.append,
    )
    w.start()
    try:
        (inbox / "late").mkdir()
        wait_for(lambda: folders, timeout=10)
        assert w.sync_folders() == [inbox / "late"]
        (inbox / "late" / "pipeline.toml").write_text("")
        (inbox / "late" / "f.csv").write_text("a\n1\n")
        wait_for(lambda: inbox / "late" / "f.csv" in seen, timeout=10)
    finally:
        w.stop()
