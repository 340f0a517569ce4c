"""kill -9 in the middle of a CSV embedding job, then run again: each row's vector exactly once, in order."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from tests.support.emulator import Emulator
from tests.support.emulator.endpoints import vector
from tests.support.factories import Folders, read_jsonl
from tests.support.running import REPO, batchd_cmd, run_batchd
from tests.support.waiting import wait_for

EMBED = "nomic-embed-text"
ROWS = 12000


@pytest.fixture
def embedder() -> Iterator[Emulator]:
    emu = Emulator(models=("gemma3:4b", EMBED))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


def _vectors_journaled(folders: Folders) -> int:
    path = folders.state / "journal.sqlite3"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])
    except sqlite3.OperationalError:  # the schema not there yet
        return 0
    finally:
        db.close()


def test_kill_9_mid_embedding_job_then_resume_writes_each_vector_once(folders: Folders, embedder: Emulator) -> None:
    folder = folders.inbox / "docs"
    folder.mkdir()
    (folder / "pipeline.toml").write_text(
        f'task = "embed"\nmodel = "{EMBED}"\ninput_column = "text"\nid_column = "id"\n', encoding="utf-8"
    )
    texts = [f"Passage {i} on warehouse topic {i % 13}" for i in range(ROWS)]
    (folder / "docs.csv").write_text(
        "id,text\n" + "".join(f"d{i},{t}\n" for i, t in enumerate(texts)), encoding="utf-8"
    )
    env = folders.env(embedder.url, BATCHD_BACKEND__LANES="8")
    proc = subprocess.Popen(
        batchd_cmd("run", "--once"), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _vectors_journaled(folders) >= 1000, timeout=120)
    finally:
        proc.kill()  # SIGKILL: no handler runs, no flush, no cleanup
        proc.wait()
    assert not (folders.outbox / "docs").exists()
    journaled = _vectors_journaled(folders)
    assert 1000 <= journaled < ROWS  # really mid-job

    again = run_batchd(env, "run", "--once", timeout=300)
    assert again.returncode == 0, again.stderr
    out = folders.outbox / "docs"
    ids = (out / "embeddings_ids.csv").read_text(encoding="utf-8").splitlines()
    assert ids == ["id", *(f"d{i}" for i in range(ROWS))]  # every row once, in input order
    matrix = np.load(out / "embeddings.npy")
    assert matrix.shape == (ROWS, 768) and matrix.dtype == np.float32
    for i in (0, journaled - 1, journaled, ROWS - 1):  # before and after the kill
        assert np.allclose(matrix[i], np.asarray(vector(texts[i]), dtype=np.float32), atol=1e-6)
    results = read_jsonl(out / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"d{i}" for i in range(ROWS))
    db = sqlite3.connect(folders.state / "journal.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == ROWS  # nothing stored twice
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
