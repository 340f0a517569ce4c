"""The conversation loop end to end: Daemon.run_once() against an emulator with a small window."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batchd.config import Settings
from tests.support.emulator import Emulator, count_tokens
from tests.support.factories import outbox_entries, read_jsonl
from tests.support.running import run_daemon_once

SYSTEM = {"role": "system", "content": "You score job candidates from 1 to 10. Reply with one short line."}


def drop_jsonl(inbox: Path, name: str, users: list[str]) -> list[str]:
    ids = []
    with (inbox / name).open("wb") as fh:
        for i, text in enumerate(users):
            ids.append(f"c{i:04d}")
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": ids[-1],
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {"model": "gemma3:4b", "messages": [SYSTEM, {"role": "user", "content": text}]},
                    }
                )
                + b"\n"
            )
    return ids


def run_once(settings: Settings) -> dict[str, Any]:
    run_daemon_once(settings)
    (folder,) = [p for p in outbox_entries(settings.outbox) if not p.name.startswith(".")]
    return {
        "metrics": orjson.loads((folder / "metrics.json").read_bytes()),
        "results": read_jsonl(folder / "results.jsonl"),
        "errors": read_jsonl(folder / "errors.jsonl"),
    }


def test_small_window_no_call_overflows_and_a_giant_fails_alone(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.context_length = 512
    settings = make_settings(backend={"lanes": 2}, context={"num_ctx": 512, "num_predict": 64})
    users = [f"Candidate {i}: " + "has done solid work in logistics. " * 4 for i in range(40)]
    users[17] = "Candidate 17: " + "an enormous CV. " * 300  # ~1200 tokens: larger than the window
    ids = drop_jsonl(settings.inbox, "cands.jsonl", users)
    out = run_once(settings)

    assert emulator.calls, "nothing was sent"
    for call in emulator.calls:
        assert count_tokens(call["messages"]) <= 512
        assert call["messages"][0] == SYSTEM
        assert call["truncate"] is False
    assert {call["options"]["num_ctx"] for call in emulator.calls} == {512}
    assert not any("enormous" in m["content"] for c in emulator.calls for m in c["messages"])

    assert [r["custom_id"] for r in out["results"]] == [i for i in ids if i != "c0017"]  # input order
    (err,) = out["errors"]
    assert err["custom_id"] == "c0017" and err["error"]["code"] == "context_length_exceeded"
    m = out["metrics"]
    assert m["status"] == "completed" and m["mode"] == "conversation"
    assert m["request_counts"]["failed"] == 1 and m["request_counts"]["completed"] == 39
    assert m["context"]["trims_total"] >= 2 and m["context"]["trims"]["sliding"] >= 2
    assert 0 < m["context"]["peak"] <= 512 and m["context"]["num_ctx"] == 512
    assert m["tokens"]["prompt_cached_estimate"] > 0 and m["tokens"]["isolated_prompt_estimate"] > 0


def test_conversation_carries_earlier_exchanges(make_settings: Callable[..., Settings], emulator: Emulator) -> None:
    settings = make_settings(context={"num_ctx": 4096})
    ids = drop_jsonl(settings.inbox, "three.jsonl", [f"Candidate {i} has a good record." for i in range(3)])
    out = run_once(settings)
    first, second, third = emulator.calls
    answer = out["results"][0]["response"]["body"]["choices"][0]["message"]["content"]
    assert first["messages"] == [SYSTEM, {"role": "user", "content": "Candidate 0 has a good record."}]
    assert second["messages"][:3] == [*first["messages"], {"role": "assistant", "content": answer}]
    assert third["messages"][: len(second["messages"])] == second["messages"]  # byte-identical kept turns
    assert [r["custom_id"] for r in out["results"]] == ids


def test_isolated_mode_sends_each_request_alone(make_settings: Callable[..., Settings], emulator: Emulator) -> None:
    settings = make_settings(backend={"lanes": 2}, context={"mode": "isolated"})
    drop_jsonl(settings.inbox, "iso.jsonl", [f"Candidate {i}." for i in range(10)])
    out = run_once(settings)
    assert all(len(c["messages"]) == 2 and c["messages"][0] == SYSTEM for c in emulator.calls)
    assert out["metrics"]["mode"] == "isolated" and out["metrics"]["context"]["trims_total"] == 0


def test_silent_truncation_is_detected_and_learned(make_settings: Callable[..., Settings], emulator: Emulator) -> None:
    # The server really applies 512 tokens, cuts longer prompts and answers 200 anyway.
    emulator.context_length = 512
    emulator.silent_truncate = True
    settings = make_settings(context={"num_ctx": 4096, "num_predict": 64})
    drop_jsonl(settings.inbox, "long.jsonl", [f"Candidate {i}: " + "x" * 1600 for i in range(8)])
    out = run_once(settings)
    m = out["metrics"]
    assert m["request_counts"]["completed"] == 8 and not out["errors"]
    assert m["context"]["truncations_detected"] >= 1
    assert m["retries"]["by_cause"]["prompt_truncated"] == m["context"]["truncations_detected"]
    assert m["context"]["trim_at"] < 0.75
    # Once the cut showed the real window twice, later calls fit it.
    assert m["context"]["truncations_detected"] <= 3
    assert all(count_tokens(c["messages"]) <= 512 for c in emulator.calls[-3:])


def test_csv_pipeline_keeps_few_shot_anchors_in_every_call(
    make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.context_length = 512
    pipeline = {
        "system_prompt": SYSTEM["content"],
        "user_template": "{name}: {cv}",
        "examples": [{"user": "Ann: ten years as a nurse", "assistant": "Score: 7/10. Solid background."}],
    }
    settings = make_settings(
        context={"num_ctx": 512, "num_predict": 48, "strategy": "hybrid", "keep_first": 1, "keep_last": 2},
        pipeline=pipeline,
    )
    with (settings.inbox / "cands.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "cv"])
        for i in range(24):
            w.writerow([f"Person {i}", "worked in retail and logistics for years " * 2])
    out = run_once(settings)
    shots = [
        SYSTEM,
        {"role": "user", "content": "Ann: ten years as a nurse"},
        {"role": "assistant", "content": "Score: 7/10. Solid background."},
    ]
    assert len(emulator.calls) == 24
    for call in emulator.calls:
        assert call["messages"][:3] == shots
        assert count_tokens(call["messages"]) <= 512
    assert out["metrics"]["context"]["trims"].get("hybrid", 0) >= 1
    assert out["metrics"]["request_counts"]["completed"] == 24
