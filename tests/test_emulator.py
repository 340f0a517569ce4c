"""The Ollama emulator answers like Ollama: shapes, determinism, context rules, faults."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.emulator import Emulator, count_tokens, reply_content

MODEL = "gemma3:4b"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "strengths": {"type": "array", "items": {"type": "string"}},
        "concerns": {"type": "array", "items": {"type": "string"}},
        "recommendation": {"type": "string", "enum": ["hire", "maybe", "reject"]},
    },
    "required": ["score", "strengths", "concerns", "recommendation"],
}


@pytest.fixture
def make_emu() -> Iterator[Callable[..., Emulator]]:
    started: list[Emulator] = []

    def make(**kwargs: Any) -> Emulator:
        emu = Emulator(**kwargs).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def emu(make_emu: Callable[..., Emulator]) -> Emulator:
    return make_emu()


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url, timeout=5) as c:
        yield c


def chat(
    client: httpx.Client, content: str, history: list[dict[str, str]] | None = None, **extra: Any
) -> httpx.Response:
    messages = [*(history or []), {"role": "user", "content": content}]
    return client.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False, **extra})


def openai_chat(client: httpx.Client, content: str, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


# -- shapes -----------------------------------------------------------------


def test_chat_reply_has_ollama_fields(client: httpx.Client) -> None:
    messages = [{"role": "system", "content": "Rate it."}, {"role": "user", "content": "A CV."}]
    r = client.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False})
    assert r.status_code == 200
    data = r.json()
    assert data["model"] == MODEL and data["done"] is True and data["done_reason"] == "stop"
    assert data["created_at"].endswith("Z")
    assert data["message"] == {"role": "assistant", "content": reply_content("A CV.")}
    assert data["prompt_eval_count"] == count_tokens(messages) == (2 + 4) + (2 + 4)
    assert data["eval_count"] == -(-len(data["message"]["content"]) // 4)
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(data[key], int) and data[key] > 0


def test_streaming_chat_is_ndjson_ending_with_done(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "stream me"}]}
    r = client.post("/api/chat", json=body)  # stream absent means true
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert r.headers["content-type"] == "application/x-ndjson"
    assert [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    assert "".join(x["message"]["content"] for x in lines) == reply_content("stream me")
    assert lines[-1]["eval_count"] > 0 and lines[-1]["done_reason"] == "stop"


def test_info_endpoints(emu: Emulator, client: httpx.Client) -> None:
    assert client.get("/api/version").json() == {"version": "0.24.0"}  # the Go-runner era by default
    emu.set_ps(size=7_000, size_vram=3_000)
    ps = client.get("/api/ps").json()["models"][0]
    assert (ps["name"], ps["size"], ps["size_vram"]) == (MODEL, 7_000, 3_000)
    assert {"model", "context_length", "expires_at", "digest", "details"} <= ps.keys()
    show = client.post("/api/show", json={"model": MODEL}).json()
    arch = show["model_info"]["general.architecture"]
    assert show["model_info"][f"{arch}.context_length"] == emu.context_length
    assert "completion" in show["capabilities"]
    assert client.post("/api/show", json={"model": "nope:1b"}).status_code == 404
    tags = client.get("/api/tags").json()["models"]
    assert [t["name"] for t in tags] == [MODEL] and "modified_at" in tags[0]
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
    assert client.get("/api/nothing").status_code == 404


def test_ps_reports_the_loaded_num_ctx(client: httpx.Client) -> None:
    chat(client, "x", options={"num_ctx": 6000})
    assert client.get("/api/ps").json()["models"][0]["context_length"] == 6000


def test_unknown_model_is_404_on_both_endpoints(client: httpx.Client) -> None:
    r = client.post("/api/chat", json={"model": "llama9:1b", "messages": [], "stream": False})
    assert r.status_code == 404
    assert r.json() == {"error": 'model "llama9:1b" not found, try pulling it first'}
    r = client.post("/v1/chat/completions", json={"model": "llama9:1b", "messages": []})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_openai_reply_shape(client: httpx.Client) -> None:
    data = openai_chat(client, "hello").json()
    assert data["id"].startswith("chatcmpl-") and data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": reply_content("hello")}
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# -- determinism and formats -------------------------------------------------


def test_answer_depends_only_on_last_user_message(client: httpx.Client) -> None:
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    plain = chat(client, "Jane Doe, 5 years Python").json()["message"]["content"]
    assert chat(client, "Jane Doe, 5 years Python", history).json()["message"]["content"] == plain
    assert plain.startswith("Score: ") and plain.endswith(".")
    others = {chat(client, f"candidate {i}").json()["message"]["content"] for i in range(8)}
    assert len(others) > 1


def check_schema_reply(content: str) -> None:
    value = json.loads(content)
    assert set(value) == set(SCHEMA["required"])
    assert isinstance(value["score"], int) and 1 <= value["score"] <= 10
    for key in ("strengths", "concerns"):
        assert len(value[key]) == 2 and all(isinstance(s, str) and s for s in value[key])
    assert value["recommendation"] in ("hire", "maybe", "reject")


def test_schema_format_gives_valid_json(client: httpx.Client) -> None:
    for i in range(5):
        check_schema_reply(chat(client, f"cv {i}", format=SCHEMA).json()["message"]["content"])
    rf = {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA}}
    check_schema_reply(openai_chat(client, "cv 0", response_format=rf).json()["choices"][0]["message"]["content"])


def test_json_format_and_nested_schema() -> None:
    assert 1 <= json.loads(reply_content("x", "json"))["score"] <= 10
    nested = {
        "$defs": {"Item": {"type": "object", "properties": {"ok": {"type": "boolean"}}}},
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 1},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    value = json.loads(reply_content("x", nested))
    assert isinstance(value["items"][0]["ok"], bool) and len(value["items"]) == 1
    assert isinstance(value["note"], str) and 0 <= value["ratio"] <= 1


def test_markers_target_single_rows(client: httpx.Client) -> None:
    assert chat(client, "row <<GARBAGE>>", format=SCHEMA).json()["message"]["content"] == "not json at all"
    for _ in range(2):
        assert chat(client, "row <<FAIL:500>>").status_code == 500
    started = time.perf_counter()
    assert chat(client, "row <<SLOW:0.3>>").status_code == 200
    assert time.perf_counter() - started >= 0.28


# -- context window ---------------------------------------------------------


def test_overflow_is_400_only_with_truncate_false(emu: Emulator, client: httpx.Client) -> None:
    long = "x" * 4 * 5000  # 5,000 tokens > the 4,096 default window
    r = chat(client, long, truncate=False, shift=False)
    assert r.status_code == 400
    assert r.json() == {"error": "the input length exceeds the context length"}
    r = chat(client, long)
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == 4096  # silent cut
    assert chat(client, long, truncate=False, options={"num_ctx": 8192}).status_code == 200
    emu.silent_truncate = True
    assert chat(client, long, truncate=False).json()["prompt_eval_count"] == 4096


def test_num_ctx_is_capped_at_context_length(client: httpx.Client) -> None:
    long = "x" * 4 * 9000
    r = chat(client, long, truncate=False, options={"num_ctx": 32768})
    assert r.status_code == 400
    assert chat(client, long, options={"num_ctx": 32768}).json()["prompt_eval_count"] == 8192


def test_length_only_when_the_output_really_hit_the_window_or_num_predict(client: httpx.Client) -> None:
    content = "y" * 4 * 4000
    prompt = count_tokens([{"role": "user", "content": content}])
    # prompt + num_predict > window, but the answer fits: a real server says "stop"
    data = chat(client, content, options={"num_predict": 500}, shift=False).json()
    assert data["done_reason"] == "stop" and data["eval_count"] == -(-len(reply_content(content)) // 4)
    content = "y" * 4 * (4096 - 4 - 3)  # room for 3 tokens of answer
    prompt = count_tokens([{"role": "user", "content": content}])
    data = chat(client, content, shift=False).json()
    assert data["done_reason"] == "length" and data["eval_count"] == 4096 - prompt == 3
    data = chat(client, content).json()  # shift (Ollama's default) lets generation go past the window
    assert data["done_reason"] == "stop" and data["eval_count"] > 3
    data = chat(client, "short", options={"num_predict": 2}).json()
    assert data["done_reason"] == "length" and data["eval_count"] == 2
    assert data["message"]["content"] == reply_content("short")[:8]


def test_openai_overflow_is_context_length_exceeded(client: httpx.Client) -> None:
    r = openai_chat(client, "z" * 4 * 9000)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert "maximum context length is 8192 tokens" in error["message"]
    assert openai_chat(client, "z" * 4 * 8000, max_tokens=500).status_code == 400
    data = openai_chat(client, "short", max_tokens=1).json()
    assert data["choices"][0]["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 1


# -- faults -----------------------------------------------------------------


def test_fail_next_answers_errors_then_recovers(emu: Emulator, client: httpx.Client) -> None:
    emu.fail_next(status=503, count=2)
    for _ in range(2):
        r = chat(client, "a")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    assert chat(client, "a").status_code == 200
    emu.fail_next(status=500)
    r = openai_chat(client, "a")
    assert r.status_code == 500 and r.json()["error"]["message"].startswith("llama runner")
    emu.fail_next(status=502, body="<html>bad gateway</html>")
    assert chat(client, "a").text == "<html>bad gateway</html>"
    assert emu.chat_count == 5 and emu.calls[0]["messages"][-1]["content"] == "a"
    emu.reset_calls()
    assert emu.chat_count == 0


def test_fail_rate_is_deterministic(emu: Emulator, client: httpx.Client) -> None:
    def pattern() -> list[int]:
        emu.fail_rate(status=500, rate=0.3, seed=7)
        return [chat(client, "r").status_code for _ in range(30)]

    first = pattern()
    assert first == pattern() and 0 < first.count(500) < 30
    emu.fail_rate(rate=0.0)
    assert chat(client, "r").status_code == 200


def test_drop_and_garbage(emu: Emulator, client: httpx.Client) -> None:
    emu.drop_next()
    with pytest.raises(httpx.RemoteProtocolError):
        chat(client, "a")
    emu.garbage_next()
    r = chat(client, "a")
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    assert chat(client, "a").status_code == 200


def test_timeout_next_stalls_the_reply(emu: Emulator, client: httpx.Client) -> None:
    emu.timeout_next(seconds=2)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/api/chat", json={"model": MODEL, "messages": [], "stream": False}, timeout=0.2)
    assert chat(client, "a").status_code == 200


def test_down_refuses_then_up_serves_on_the_same_port(emu: Emulator, client: httpx.Client) -> None:
    assert chat(client, "a").status_code == 200  # leaves a pooled keep-alive connection
    port = emu.port
    emu.down()
    with pytest.raises(httpx.ConnectError):
        chat(client, "a")
    emu.up()
    assert emu.port == port
    assert chat(client, "a").status_code == 200


def test_down_cuts_requests_in_flight(make_emu: Callable[..., Emulator]) -> None:
    emu = make_emu(latency=2.0)
    errors: list[Exception] = []

    def one() -> None:
        try:
            httpx.post(emu.url + "/api/chat", json={"model": MODEL, "messages": []}, timeout=5)
        except httpx.TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=one)
    thread.start()
    deadline = time.monotonic() + 2
    while emu.chat_count == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    emu.down()
    thread.join()
    assert len(errors) == 1 and time.perf_counter() - started < 1


def test_slots_limit_concurrency(make_emu: Callable[..., Emulator]) -> None:
    emu = make_emu(slots=2, latency=0.2)
    clients = [httpx.Client(base_url=emu.url, timeout=5) for _ in range(6)]  # SSL setup is slow
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c, i=i: codes.append(chat(c, f"c{i}").status_code))
        for i, c in enumerate(clients)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in clients:
        c.close()
    assert codes == [200] * 6
    assert 0.55 <= elapsed < 1.5
    assert emu.peak_concurrency == 2


def test_runs_as_a_process() -> None:
    script = Path(__file__).parent / "support" / "emulator"  # a folder with __main__.py
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--slots", "4"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        assert httpx.get(line.split()[-1] + "/api/version").json()["version"] == "0.24.0"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()


@pytest.mark.parametrize(("mode", "shift_reloads"), [("go", False), ("llamaserver", True)])
def test_reloads_follow_the_era(make_emu: Callable[..., Emulator], mode: str, shift_reloads: bool) -> None:
    emu = make_emu(mode=mode, reload_seconds=0.05)
    with httpx.Client(base_url=emu.url, timeout=5) as c:

        def load_ms(**extra: Any) -> float:
            return chat(c, "x", **extra).json()["load_duration"] / 1e6

        assert load_ms(options={"num_ctx": 2048}) >= 50  # the first load
        assert load_ms(options={"num_ctx": 2048}) < 5  # warm
        assert (load_ms(options={"num_ctx": 2048}, shift=False) >= 50) is shift_reloads
        assert load_ms(options={"num_ctx": 2048, "num_gpu": 10}, shift=False) >= 50  # a runner option
        assert load_ms(options={"num_ctx": 2048, "num_gpu": 10, "temperature": 0.3}, shift=False) < 5  # sampling
        assert emu.reloads == (2 if shift_reloads else 1)
        assert c.get("/api/version").json()["version"] == {"go": "0.24.0", "llamaserver": "0.33.0"}[mode]


def test_the_eras_error_bodies(make_emu: Callable[..., Emulator]) -> None:
    long = "x" * 4 * 5000
    for mode in ("go", "llamaserver"):
        emu = make_emu(mode=mode)
        with httpx.Client(base_url=emu.url, timeout=5) as c:
            r = chat(c, long, truncate=False)
            assert r.status_code == 400
            if mode == "go":
                assert r.json() == {"error": "the input length exceeds the context length"}
            else:
                inner = json.loads(r.json()["error"])["error"]
                assert inner["type"] == "exceed_context_size_error" and inner["n_ctx"] == 4096
                assert inner["n_prompt_tokens"] == 5004 and inner["message"].startswith("request (5004 tokens)")
            assert chat(c, "x", options={"stop": "\n"}).json() == {"error": 'option "stop" must be of type array'}
            assert chat(c, "x", keep_alive="-1").status_code == 400
            assert chat(c, "x", keep_alive=-1).status_code == 200
            emu.fail_next(500)
            assert "runner" in chat(c, "x").json()["error"]
