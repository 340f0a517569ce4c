"""OpenAI batch lines in batchd's terms: a request body as a backend-neutral ``ChatRequest`` (options in
Ollama's names), and the deterministic ids the results carry."""

from __future__ import annotations

import hashlib
from typing import Any

from batchd.backends.base import OPENAI_OPTION_KEYS, ChatRequest
from batchd.formats import from_response_format, to_response_format


def to_chat_request(body: dict[str, Any], *, model: str, num_ctx: int, custom_id: str = "") -> ChatRequest:
    """An OpenAI chat body as a backend-neutral request (options in Ollama's names)."""
    options: dict[str, Any] = dict(body.get("options") or {})
    for key, name in OPENAI_OPTION_KEYS.items():
        if body.get(key) is not None:
            options[name] = body[key]
    if isinstance(options.get("stop"), str):
        # OpenAI allows one string; Ollama answers 500 'option "stop" must be of type array'
        # (ollama/ollama api/types.go Options.FromMap) on every such request.
        options["stop"] = [options["stop"]]
    think = _think(body, options)
    fmt = from_response_format(body.get("response_format"))
    prompt = _prompt(body.get("prompt"))
    messages = [_message(m) for m in body.get("messages", [])]
    if prompt is not None and not messages:  # a completion: the prompt counts as the one message
        messages = [{"role": "user", "content": prompt}]
    tools = body.get("tools") or None
    return ChatRequest(
        model=body.get("model") or model,
        messages=messages,
        num_ctx=num_ctx,
        options=options,
        format=fmt,
        custom_id=custom_id,
        think=think,
        tools=tools,
        tool_choice=body.get("tool_choice") if tools else None,
        prompt=prompt,
    )


def _prompt(prompt: Any) -> str | None:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else None


def responses_as_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/responses`` body as the chat body that asks the same: ``instructions`` first as the system
    message, ``input`` as the turns, ``text.format`` as ``response_format``, ``max_output_tokens`` and
    ``reasoning.effort`` under their chat names. Every backend runs it as a chat."""
    chat: dict[str, Any] = {
        k: body[k] for k in ("model", "temperature", "top_p", "seed", "stop", "options") if body.get(k) is not None
    }
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        for item in given or []:
            content = item.get("content")
            text = content if isinstance(content, str) else "".join(p.get("text", "") for p in content or [])
            messages.append({"role": item.get("role", "user"), "content": text})
    chat["messages"] = messages
    fmt = (body.get("text") or {}).get("format")
    if isinstance(fmt, dict) and isinstance(fmt.get("schema"), dict):  # type json_schema
        named = str(fmt.get("name") or "reply")
        chat["response_format"] = to_response_format(fmt["schema"], name=named, strict=bool(fmt.get("strict")))
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        chat["response_format"] = to_response_format("json")
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    effort = (body.get("reasoning") or {}).get("effort")
    if isinstance(effort, str):
        chat["reasoning_effort"] = effort
    return chat


#: message keys carried beside role and content: an assistant's tool calls, a tool result's call id and name
_TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def _message(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"))}
    images = _images(m.get("content"))
    if images:  # the data: URIs; each backend sends them its way (backends.messages)
        out["images"] = images
    if m.get("tool_calls") or m["role"] == "tool":
        out.update({k: m[k] for k in _TOOL_KEYS if m.get(k) is not None})
    return out


def _think(body: dict[str, Any], options: dict[str, Any]) -> bool | str | None:
    """Thinking as the request (``think``, OpenAI ``reasoning_effort``) or the pipeline's options ask."""
    think = options.pop("think", None)  # a pipeline's options table: not a sampling option
    if body.get("think") is not None:
        think = body["think"]
    effort = body.get("reasoning_effort")
    if think is None and isinstance(effort, str):
        think = False if effort == "none" else effort
    return think if isinstance(think, (bool, str)) else None


def _images(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    urls = [p.get("image_url") for p in content if isinstance(p, dict) and p.get("type") == "image_url"]
    return [u.get("url", "") if isinstance(u, dict) else str(u) for u in urls]


def _text(content: Any) -> str:
    if content is None:  # an assistant turn that only calls tools
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def result_id(sha: str | None, custom_id: str | None, kind: str) -> str:
    """Deterministic ids: the same input gives the same ids, run after run (crash or not)."""
    h = hashlib.sha256(f"{sha}\0{custom_id}\0{kind}".encode()).hexdigest()[:24]
    return f"{kind}_{h}"
