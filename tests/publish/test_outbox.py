"""The outbox files of a published job: ids that tell lines apart, and who may read them.

The people who drop files are members of the outbox's group (``batchd-users``),
not of the daemon's own primary group: every folder and file in a published
job must carry the share's group and group-read, however it was made (copied
from the spool, renamed from ``.partial``, an error record for a rejected file).
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from batchd.config import Settings
from batchd.publish.share import SharedFolder
from tests.support.factories import Folders, outbox_entries, read_jsonl, write_jsonl
from tests.support.running import run_daemon_once


@pytest.fixture
def strict_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _other_group() -> int:
    """A group that is not this process's own: root can hand files to any; others to a supplementary one."""
    if os.geteuid() == 0:
        for name in ("nogroup", "daemon", "users"):
            try:
                return grp.getgrnam(name).gr_gid
            except KeyError:
                continue
    others = [g for g in os.getgroups() if g != os.getegid()]
    if not others:
        pytest.skip("needs root or a supplementary group to hand files to")
    return others[0]


def _published(outbox: Path) -> list[Path]:
    return [outbox / d for d in sorted(os.listdir(outbox))] + sorted(p for d in outbox.iterdir() for p in d.rglob("*"))


def _assert_group_readable(paths: list[Path], gid: int) -> None:
    assert paths
    for p in paths:
        st = p.lstat()
        want = 0o750 if stat.S_ISDIR(st.st_mode) else 0o640
        assert (oct(stat.S_IMODE(st.st_mode)), st.st_gid) == (oct(want), gid), p


def test_every_published_file_carries_the_outbox_group_under_umask_0077(
    folders: Folders, make_settings: Callable[..., Settings], strict_umask: None
) -> None:
    gid = _other_group()
    os.chown(folders.outbox, -1, gid)
    os.chmod(folders.outbox, 0o2750)  # as tmpfiles.d makes it
    write_jsonl(folders.inbox / "batch.jsonl", 20, bad_every=7)
    os.chmod(folders.inbox / "batch.jsonl", 0o600)  # the spool copy keeps no trace of the drop's mode
    (folders.inbox / "notes.txt").write_text("not a batch\n")  # rejected: an error record only
    run_daemon_once(make_settings())
    names = [p.name for p in outbox_entries(folders.outbox)]
    assert names == ["batch", "notes"], names
    # the live status page at the root is published for the same readers (checked below with the rest)
    assert {"!status.html", "!status.json"} <= set(os.listdir(folders.outbox))
    assert {p.name for p in (folders.outbox / "batch").iterdir()} >= {
        "results.jsonl",
        "errors.jsonl",
        "scores.csv",
        "metrics.json",
        "report.html",
        "input.jsonl",
    }
    _assert_group_readable(_published(folders.outbox), gid)


def test_outbox_root_without_setgid_still_hands_its_group_down(
    folders: Folders, make_settings: Callable[..., Settings], strict_umask: None
) -> None:
    gid = _other_group()
    os.chown(folders.outbox, -1, gid)
    os.chmod(folders.outbox, 0o750)  # an NFS export made by hand: no setgid bit
    write_jsonl(folders.inbox / "plain.jsonl", 3)
    run_daemon_once(make_settings())
    _assert_group_readable(_published(folders.outbox), gid)


def test_a_configured_group_wins_over_the_outbox_root_group(
    folders: Folders, make_settings: Callable[..., Settings], strict_umask: None
) -> None:
    gid = _other_group()
    write_jsonl(folders.inbox / "g.jsonl", 3)
    run_daemon_once(make_settings(group=grp.getgrgid(gid).gr_name))
    assert folders.outbox.stat().st_gid != gid
    _assert_group_readable(_published(folders.outbox), gid)


def test_shared_folder_fixes_a_file_made_elsewhere(tmp_path: Path, strict_umask: None) -> None:
    """A file another writer made under umask 077 (a status page, a rename from a temp) gets the same treatment."""
    gid = _other_group()
    os.chown(tmp_path, -1, gid)
    share = SharedFolder.of(tmp_path, group=None)
    assert share.gid == gid
    made = tmp_path / "page.html"
    made.write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    share.publish_path(made)
    share.publish_path(sub)
    _assert_group_readable([made, sub], gid)


def test_every_output_line_has_its_own_id(folders: Folders, make_settings: Callable[..., Settings]) -> None:
    good = {
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}]},
    }
    lines = [
        b"not json at all",
        b'{"method": "POST"}',  # no custom_id
        orjson.dumps({**good, "custom_id": "a"}),
        orjson.dumps({**good}),  # valid body, no custom_id
        orjson.dumps({**good, "custom_id": "a"}),  # duplicate of line 3
        b"[1, 2]",
    ]
    (folders.inbox / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run_daemon_once(make_settings())
    out = folders.outbox / "mixed"
    results, errors = read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl")
    assert [r["custom_id"] for r in results] == ["a"]
    assert sorted(e["line"] for e in errors) == [1, 2, 4, 5, 6]
    ids = [r["id"] for r in results + errors]
    assert len(ids) == len(set(ids)) == 6, ids
