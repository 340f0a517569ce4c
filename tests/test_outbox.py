"""The outbox files of a published job: ids that tell lines apart."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from batchd.config import Settings
from tests.conftest import Folders, read_jsonl, run_daemon_once


def test_every_output_line_has_its_own_id(folders: Folders, make_settings: Callable[..., Settings]) -> None:
    good = {"method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}]}}
    lines = [
        b"not json at all",
        b'{"method": "POST"}',                                    # no custom_id
        orjson.dumps({**good, "custom_id": "a"}),
        orjson.dumps({**good}),                                  # valid body, no custom_id
        orjson.dumps({**good, "custom_id": "a"}),                # duplicate of line 3
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
