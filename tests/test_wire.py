"""The typed replies parse what the real servers send, and tell a missing counter from a zero."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from batchd.backends.wire import ChatCompletion, OllamaChatResponse, OllamaPsResponse, OllamaShowResponse, OpenAIModelList

# A /api/chat reply as Ollama 0.33 sends it (api/types.go ChatResponse + Metrics), one unknown field added.
OLLAMA_CHAT = {
    "model": "gemma3:4b", "created_at": "2026-11-28T10:00:00Z",
    "message": {"role": "assistant", "content": "{\"score\": 7}"},
    "done": True, "done_reason": "stop", "total_duration": 5_000_000, "load_duration": 1_000,
    "prompt_eval_count": 120, "prompt_eval_cached_count": 100, "prompt_eval_duration": 10, "eval_count": 6,
    "eval_duration": 20, "some_future_field": [1, 2],
}


def test_ollama_chat_reply_reads_as_attributes() -> None:
    r = OllamaChatResponse.model_validate(OLLAMA_CHAT)
    assert (r.message.content, r.done_reason, r.prompt_eval_count, r.prompt_eval_cached_count, r.eval_count) == (
        "{\"score\": 7}", "stop", 120, 100, 6)


def test_a_missing_counter_is_none_not_zero() -> None:
    # Older servers omit prompt_eval_count on a full cache hit: "unknown" must stay distinguishable from 0.
    r = OllamaChatResponse.model_validate({"message": {"content": "ok"}, "done": True})
    assert r.prompt_eval_count is None and r.done_reason is None and r.load_duration is None


def test_a_reply_without_message_content_is_refused() -> None:
    with pytest.raises(ValidationError):
        OllamaChatResponse.model_validate({"done": True})


def test_show_and_ps() -> None:
    show = OllamaShowResponse.model_validate({"model_info": {"general.architecture": "gemma3",
                                                             "gemma3.context_length": 131072}})
    assert show.context_length() == 131072
    assert OllamaShowResponse.model_validate({}).context_length() is None
    ps = OllamaPsResponse.model_validate({"models": [{"name": "gemma3:4b", "size": 10, "size_vram": 8,
                                                      "context_length": 8192}]})
    assert ps.models[0].size_vram == 8 and ps.models[0].context_length == 8192


@pytest.mark.parametrize(("body", "cached"), [
    ({"usage": {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 8}}}, 8),  # vLLM / OpenAI
    ({"usage": {"prompt_tokens": 10}, "timings": {"cache_n": 7, "prompt_n": 3}}, 7),  # llama.cpp server
    ({"usage": {"prompt_tokens": 10}}, None),  # Ollama's /v1: says nothing
])
def test_chat_completion_cached_tokens_from_either_field(body: dict[str, object], cached: int | None) -> None:
    c = ChatCompletion.model_validate({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], **body})
    assert c.cached_tokens() == cached and c.choices[0].message.content == "x"


def test_model_list() -> None:
    models = OpenAIModelList.model_validate({"data": [{"id": "m", "meta": {"n_ctx": 512}}, {"id": "v", "max_model_len": 4096}]})
    assert [m.id for m in models.data] == ["m", "v"] and models.data[0].meta["n_ctx"] == 512
