"""The hostile-inbox corpus (tests/data/bad): every file gets a clear outcome, nothing crashes.

All of it is dropped into one inbox together with a good file; one `batchd run
--once` must exit 0, give each file the outcome expectations.toml names, and
still complete the good file. Outbox folder names are always safe.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import orjson
import pytest

from tests.data import make_bad
from tests.support.emulator import Emulator
from tests.support.factories import Folders, outbox_entries, read_jsonl, write_jsonl
from tests.support.running import run_batchd

SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def _outcome(folder: Path) -> tuple[str, str, int]:
    m = orjson.loads((folder / "metrics.json").read_bytes())
    results = len(read_jsonl(folder / "results.jsonl"))
    errors = read_jsonl(folder / "errors.jsonl")
    text = " ".join(orjson.dumps(e).decode() for e in errors[:50]) + orjson.dumps(m.get("error")).decode()
    if m["status"] == "failed" and results == 0:
        return "rejected", text.lower(), results
    if m["status"] == "completed" and results == 0 and errors:
        return "rejected", text.lower(), results
    if m["status"] == "completed" and errors:
        return "partial", text.lower(), results
    if m["status"] == "completed":
        return "accepted", text.lower(), results
    return m["status"], text.lower(), results


@pytest.mark.slow
def test_whole_corpus_in_one_drop(folders: Folders, emulator: Emulator, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    files = make_bad.make_all(staging, install=False)
    make_bad.install_pipeline(folders.inbox)
    expectations = make_bad.load_expectations()
    for p in files:
        dest = folders.inbox / p.relative_to(staging)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(p, dest)
    good = write_jsonl(folders.inbox / "zz_good.jsonl", 5)
    env = folders.env(emulator.url, BATCHD_LIMITS__MAX_LINES="200000", BATCHD_BACKEND__ALLOWED_MODELS='["gemma3:4b"]')
    proc = run_batchd(env, "run", "--once", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    by_input: dict[str, Path] = {}
    for folder in outbox_entries(folders.outbox):
        assert SAFE.match(folder.name), f"unsafe outbox name {folder.name!r}"
        assert folder.resolve().parent == folders.outbox.resolve()
        m = orjson.loads((folder / "metrics.json").read_bytes())
        by_input[make_bad.label_for(m["input"])] = folder

    assert [r["custom_id"] for r in read_jsonl(by_input["zz_good.jsonl"] / "results.jsonl")] == good
    problems = []
    for p in files:
        label = make_bad.label_for(p)
        exp = expectations[label]
        allowed = make_bad.allowed_outcomes(exp)
        if exp["outcome"] == "ignored":
            if label in by_input:
                problems.append(f"{label}: ignored file was processed")
            continue
        if label not in by_input:
            problems.append(f"{label}: no outbox record (expected {allowed})")
            continue
        got, text, results = _outcome(by_input[label])
        if got not in allowed:
            problems.append(f"{label}: {got} (expected {allowed}): {text[:200]}")
            continue
        if (
            got in ("rejected", "partial")
            and make_bad.reasons(exp)
            and not any(r.lower() in text for r in make_bad.reasons(exp))
        ):
            problems.append(f"{label}: reason {text[:200]!r} lacks {make_bad.reasons(exp)}")
        if got == exp["outcome"] and "results" in exp and results != exp["results"]:
            problems.append(f"{label}: {results} results, expected {exp['results']}")
    assert not problems, "\n".join(problems)
    print(f"bad inputs: files={len(files)} outbox_records={len(by_input)} crashes=0 good_file=completed")
