"""Reply schemas are self-contained and checked in linear time: no file read, no URL fetched, no ReDoS."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchd.errors import ConfigError
from batchd.pipeline import load_pipeline
from batchd.run.replies import ReplyChecker

SECRET_VALUE = "ROOT-ONLY-SECRET-7d1f"


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        body = orjson.dumps({"enum": ["fetched"]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    _Recorder.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.json"
    path.write_bytes(orjson.dumps({"enum": [SECRET_VALUE]}))
    os.chmod(path, 0o600)
    return path


def _schemas(url: str, secret: Path) -> list[dict[str, Any]]:
    return [
        {"type": "object", "properties": {"score": {"$ref": secret.as_uri()}}},
        {"type": "object", "properties": {"score": {"$ref": f"{url}/schema.json"}}},
        {"type": "object", "properties": {"score": {"$dynamicRef": f"{url}/dyn.json"}}},
        {"$id": f"{url}/base/", "type": "object", "properties": {"score": {"$ref": "other.json"}}},
        {"type": "object", "properties": {"score": {"$ref": "#/$defs/missing"}}},
    ]


def _toml(value: Any) -> str:
    """A value as a TOML inline value (JSON strings are TOML basic strings)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{orjson.dumps(k).decode()} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def _pipeline(tmp_path: Path, schema: dict[str, Any]) -> Path:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline.toml").write_text(f'user_template = "{{text}}"\nformat = {_toml(schema)}\n')
    return folder


def test_a_schema_reaching_outside_itself_is_refused_when_the_pipeline_loads(
    tmp_path: Path, recorder: tuple[str, list[str]], secret: Path
) -> None:
    url, hits = recorder
    for schema in _schemas(url, secret):
        with pytest.raises(ConfigError) as info:
            load_pipeline(_pipeline(tmp_path, schema))
        assert "format" in str(info.value) and SECRET_VALUE not in str(info.value), schema
    assert hits == []


def test_references_inside_the_schema_still_work(tmp_path: Path) -> None:
    schema = {
        "$defs": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
        "type": "object",
        "properties": {"score": {"$ref": "#/$defs/score"}, "$id": {"type": "string"}},
    }
    pipeline = load_pipeline(_pipeline(tmp_path, schema))
    assert pipeline.format == schema
    checker = ReplyChecker(schema)
    assert checker.problem('{"score": 5}') is None
    assert checker.problem('{"score": 50}') is not None


def test_reply_checking_never_reads_a_file_or_fetches_a_url(recorder: tuple[str, list[str]], secret: Path) -> None:
    """A schema from a journal written before the load-time check: the reply check still reaches nothing."""
    url, hits = recorder
    for schema in _schemas(url, secret):
        problem = ReplyChecker(schema).problem('{"score": "fetched"}')
        assert problem is not None and SECRET_VALUE not in problem, schema
    assert hits == []


def test_a_pattern_outside_re2_is_refused(tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "string", "pattern": "^(a)\\1$"}}}
    with pytest.raises(ConfigError, match="linear time"):
        load_pipeline(_pipeline(tmp_path, schema))


CATASTROPHIC = """
import time
from batchd.run.replies import ReplyChecker
schema = {
    "type": "object",
    "properties": {"score": {"type": "integer"}, "x": {"type": "string", "pattern": "^(a+)+$"}},
    "patternProperties": {"^(b+)+$": {"type": "string"}},
    "additionalProperties": False,
}
checker = ReplyChecker(schema)
print(checker.problem('{"score": 1, "x": "%s!"}' % ("a" * 40)))
print(checker.problem('{"score": 1, "%s!": "y"}' % ("b" * 40)))
"""


def test_a_catastrophic_pattern_is_checked_in_linear_time() -> None:
    """ReDoS: ``^(a+)+$`` against 40 ``a`` and a ``!`` (and the same through patternProperties on a key):
    Python's backtracking ``re`` takes ~2^40 steps (the reproduction never ended); RE2 answers at once.
    A subprocess so the old behaviour fails the deadline instead of hanging the test run."""
    proc = subprocess.run(
        [sys.executable, "-c", CATASTROPHIC], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert "does not match" in first and "not allowed" in second
