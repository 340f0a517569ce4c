"""docs/PIPELINES.md is true: its snippets load, its worked examples run, its JSONL claims hold.

Blocks written as ```toml file=<folder>/<name>``` (and csv/markdown) are
files of a worked example and are dropped into an inbox as they are;
```text expect=<outbox path>``` blocks give the first line that file must
have; every other ```toml``` block must load as a pipeline on its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from batchd.errors import ConfigError
from batchd.pipeline import load_pipeline
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import REPO, run_batchd

DOC = REPO / "docs" / "PIPELINES.md"
_BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, dict[str, str], str]]:
    out = []
    for lang, info, body in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        attrs = dict(a.split("=", 1) for a in info.split() if "=" in a)
        out.append((lang, attrs, body))
    return out


def test_the_doc_has_both_worked_examples() -> None:
    files = {a["file"] for _, a, _ in blocks() if "file" in a}
    assert {
        "hiring/pipeline.toml",
        "hiring/rubric.md",
        "hiring/applicants.csv",
        "summaries/pipeline.toml",
        "summaries/tickets.csv",
    } <= files


@pytest.mark.parametrize("snippet", [b for lang, a, b in blocks() if lang == "toml" and "file" not in a])
def test_every_reference_snippet_loads_as_a_pipeline(tmp_path: Path, snippet: str) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "rubric.md").write_text("Be fair.\n")
    (folder / "pipeline.toml").write_text(snippet)
    try:
        load_pipeline(folder)
    except ConfigError as exc:
        pytest.fail(f"snippet does not load: {exc}\n{snippet}")


def test_every_key_of_the_pipeline_model_is_documented() -> None:
    from batchd.pipeline import Pipeline

    text = DOC.read_text(encoding="utf-8")
    table = text.split("## Reference: every key", 1)[1].split("###", 1)[0]
    rows = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert rows == set(Pipeline.model_fields)
    for key in Pipeline.model_fields:
        assert re.search(rf"^### .*`{key}`", text, re.MULTILINE), f"no section for {key}"


def _drop_examples(inbox: Path) -> None:
    for _, attrs, body in blocks():
        if "file" in attrs:
            path = inbox / attrs["file"]
            path.parent.mkdir(exist_ok=True)
            path.write_text(body, encoding="utf-8")


def test_the_worked_examples_run(folders: Folders, emulator: Emulator) -> None:
    env = folders.env(emulator.url)
    # Only the pipeline folders first, as a new user would set them up, then the CSVs.
    _drop_examples(folders.inbox)
    csvs = sorted(folders.inbox.glob("*/*.csv"))
    assert [p.name for p in csvs] == ["applicants.csv", "tickets.csv"]

    # The doc's `batchd render` line shows the first row with the rubric and the example.
    r = run_batchd(env, "render", str(folders.inbox / "hiring" / "applicants.csv"), "--row", "1")
    assert r.returncode == 0, r.stderr
    assert "You screen applicants for a Backend Engineer" in r.stdout
    assert "Current title: Senior Backend Engineer" in r.stdout and "Ada Park" not in r.stdout

    r = run_batchd(env, "run", "--once")
    assert r.returncode == 0, r.stderr
    expected = {a["expect"]: body.splitlines()[0] for _, a, body in blocks() if "expect" in a}
    assert set(expected) == {"applicants/scores.csv", "tickets/scores.csv"}
    for rel, header in expected.items():
        lines = (folders.outbox / rel).read_text(encoding="utf-8").splitlines()
        assert lines[0] == header
    hiring = folders.outbox / "applicants"
    assert [x["custom_id"] for x in read_jsonl(hiring / "results.jsonl")] == ["A-101", "A-102", "A-103"]
    assert read_jsonl(hiring / "errors.jsonl") == []
    rows = (hiring / "scores.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [["A-101", "ok"], ["A-102", "ok"], ["A-103", "ok"]]
    assert "Chloé Martin" in rows[2]
    tickets = folders.outbox / "tickets"
    assert [x["custom_id"] for x in read_jsonl(tickets / "results.jsonl")] == ["T-1", "T-2"]
    assert read_jsonl(tickets / "errors.jsonl") == []

    # What was sent: the hiring rows as schema-constrained, isolated requests without the name.
    hiring_calls = [c for c in emulator.calls if "Backend Engineer opening" in c["messages"][-1]["content"]]
    assert len(hiring_calls) == 3
    for call in hiring_calls:
        roles = [m["role"] for m in call["messages"]]
        assert roles == ["system", "user", "assistant", "user"]  # rubric, the example, the row
        assert call["format"]["required"] == ["score", "reasons", "recommendation"]
        assert call["options"]["temperature"] == 0 and call["options"]["num_predict"] == 200
        assert "Park" not in orjson.dumps(call).decode()
    ticket_calls = [c for c in emulator.calls if c["messages"][-1]["content"].startswith("Title: ")]
    assert [c["messages"][-1]["content"].splitlines()[0] for c in ticket_calls] == [
        "Title: Login fails",
        "Title: Slow reports",
    ]
    assert "The error says 'token expired'." in ticket_calls[0]["messages"][-1]["content"]
    assert all("format" not in c for c in ticket_calls)


def test_a_jsonl_in_a_pipeline_folder_takes_mode_model_and_score_columns_only(
    folders: Folders, emulator: Emulator
) -> None:
    emulator.models = ("gemma3:4b", "pipeline-model:1b")
    _drop_examples(folders.inbox)
    for p in folders.inbox.glob("*/*.csv"):
        p.unlink()
    pipeline = folders.inbox / "hiring" / "pipeline.toml"
    pipeline.write_text('model = "pipeline-model:1b"\n' + pipeline.read_text(encoding="utf-8"))
    lines = [
        {"custom_id": "named", "body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "one"}]}},
        {"custom_id": "unnamed", "body": {"messages": [{"role": "user", "content": "two"}]}},
    ]
    (folders.inbox / "hiring" / "extra.jsonl").write_bytes(
        b"".join(orjson.dumps({"method": "POST", "url": "/v1/chat/completions", **x}) + b"\n" for x in lines)
    )
    r = run_batchd(folders.env(emulator.url), "run", "--once")
    assert r.returncode == 0, r.stderr
    metrics = orjson.loads((folders.outbox / "extra" / "metrics.json").read_bytes())
    assert metrics["mode"] == "isolated"  # the pipeline's mode, not context.mode's conversation
    calls = {c["messages"][-1]["content"]: c for c in emulator.calls}
    assert calls["one"]["model"] == "gemma3:4b" and calls["two"]["model"] == "pipeline-model:1b"
    for call in calls.values():
        assert [m["role"] for m in call["messages"]] == ["user"]  # no rubric, no few-shot example
        assert "format" not in call  # no structured output, no reply checks
        assert "temperature" not in call.get("options", {})
    header = (folders.outbox / "extra" / "scores.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "custom_id,status,score,reasons,recommendation,attempts,prompt_tokens,completion_tokens"
