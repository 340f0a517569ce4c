"""kill -9 at random moments, many times: the outbox ends byte-identical to an uninterrupted run.

Scale with BATCHD_RELIABILITY_SCALE (default 1: 5,000 requests, 20 kills);
`bench/` runs larger. Isolated mode, because in conversation mode a restart
begins a fresh history, so token counts (not answers) legitimately differ.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.support.emulator import Emulator
from tests.support.factories import Folders, outbox_entries, read_jsonl, write_jsonl
from tests.support.running import REPO, batchd_cmd, run_batchd
from tests.support.waiting import wait_for

SCALE = float(os.environ.get("BATCHD_RELIABILITY_SCALE", "1"))


def _normalised(folder: Path) -> dict[str, bytes]:
    """The outbox files with what legitimately differs between runs removed (times, job ids)."""
    out = {}
    for name in ("results.jsonl", "errors.jsonl", "scores.csv", "input.jsonl"):
        data = (folder / name).read_bytes()
        if name == "results.jsonl":
            lines = []
            for row in read_jsonl(folder / name):
                row["response"]["body"].pop("created", None)
                lines.append(orjson.dumps(row))
            data = b"\n".join(lines)
        out[name] = data
    m = orjson.loads((folder / "metrics.json").read_bytes())
    out["metrics"] = orjson.dumps({k: m[k] for k in ("input", "sha256", "status", "request_counts", "model", "mode")})
    return out


def _env(folders: Folders, emulator: Emulator) -> dict[str, str]:
    return folders.env(emulator.url, BATCHD_BACKEND__LANES="2", BATCHD_CONTEXT__MODE="isolated")


@pytest.mark.slow
def test_twenty_kills_then_identical_outbox(tmp_path: Path, emulator: Emulator) -> None:
    n = int(5000 * SCALE)
    kills_wanted = max(5, int(20 * min(SCALE, 1)))
    emulator.latency = 0.001
    runs = {}
    for name in ("reference", "crashed"):
        root = tmp_path / name
        f = Folders(root, root / "inbox", root / "outbox", root / "state")
        for p in (f.inbox, f.outbox, f.state):
            p.mkdir(parents=True)
        (root / "batchd.toml").write_text("")
        write_jsonl(f.inbox / "big.jsonl", n, bad_every=997)
        runs[name] = f

    ref = run_batchd(_env(runs["reference"], emulator), "run", "--once", timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    f = runs["crashed"]
    rng = random.Random(20261127)
    kills = 0
    per_kill = n // (kills_wanted + 5)  # progress between kills stays bounded: all kills land before the end
    while kills < kills_wanted:
        proc = subprocess.Popen(
            batchd_cmd("run", "--once"),
            env=_env(f, emulator),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if rng.random() < 0.3:
            # early: start-up, recovery, claim, ingest
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.5))
            except subprocess.TimeoutExpired:
                pass
        else:
            # mid-requests, after a random amount of progress
            target = emulator.chat_count + rng.randint(1, per_kill)
            wait_for(lambda: emulator.chat_count >= target or proc.poll() is not None, timeout=300)
        if proc.poll() is not None:
            break  # finished on its own: no more moments to kill it at
        proc.kill()
        proc.wait()
        kills += 1
    final = run_batchd(_env(f, emulator), "run", "--once", timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= kills_wanted, f"only {kills} kills landed before the job finished"

    assert [p.name for p in outbox_entries(f.outbox)] == ["big"]  # no strays, no .partial, no big.2
    assert _normalised(f.outbox / "big") == _normalised(runs["reference"].outbox / "big")
    ids = [r["custom_id"] for r in read_jsonl(f.outbox / "big" / "results.jsonl")]
    ids += [e["custom_id"] for e in read_jsonl(f.outbox / "big" / "errors.jsonl")]
    assert len(ids) == len(set(ids)) == n
    db = sqlite3.connect(f.state / "journal.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"crash: requests={n} kills={kills} lost=0 duplicated=0 identical=yes integrity=ok")
