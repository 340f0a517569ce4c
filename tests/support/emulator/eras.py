"""The two Ollama eras the emulator speaks: their version strings, error bodies and reload rules.

Read from ollama/ollama (the search tool's ``read_file`` / a mirror of v0.33):

- ``go`` (0.12.6 - 0.24.0, the last Go-runner release; 0.30.0 followed it): the Go runner. Overflow
  with ``truncate: false`` is
  ``400 {"error": "the input length exceeds the context length"}``; a crashed runner is
  ``500 "llama runner process has terminated: ..."``; ``server/sched.go`` reloads the model
  when ``num_ctx`` or a runner option differs.
- ``llamaserver`` (>= 0.30.1): llama.cpp's ``llama-server`` underneath. ``llm/llama_server.go``
  passes the runner's error body through as the *string* ``error``, so overflow is
  ``400 {"error": "{\\"error\\":{\\"code\\":400,...,\\"type\\":\\"exceed_context_size_error\\",...}}"}``;
  a crash is ``500 "model runner has unexpectedly stopped, ..."``; ``needsReload`` also reloads
  when ``shift`` differs (``resolveContextShift``: unset means true for most models).

Both: ``api/types.go`` ``Options.FromMap`` answers ``500 option "stop" must be of type array`` to a
string ``stop``; ``Duration.UnmarshalJSON`` answers 400 to a ``keep_alive`` that is neither a number
nor a Go duration; ``done_reason`` is ``stop`` or ``length``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

#: options that shape the loaded runner (api/types.go ``type Runner``; older ones read at load time)
RUNNER_OPTIONS = (
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "use_mlock",
    "numa",
    "low_vram",
    "f16_kv",
    "vocab_only",
)
GO_CRASH = "llama runner process has terminated: exit status 2"
LLAMASERVER_CRASH = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)
_GO_DURATION = re.compile(r"-?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")


@dataclass(frozen=True)
class Era:
    name: str
    version: str
    crash: str
    #: a different ``shift`` reloads the model (>= 0.30)
    shift_reloads: bool

    def overflow(self, n_prompt: int, n_ctx: int) -> dict[str, Any]:
        """The 400 body for a prompt that does not fit with ``truncate: false``."""
        if self.name == "go":
            return {"error": "the input length exceeds the context length"}
        inner = {
            "error": {
                "code": 400,
                "message": f"request ({n_prompt} tokens) exceeds the available context "
                f"size ({n_ctx} tokens), try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": n_prompt,
                "n_ctx": n_ctx,
            }
        }
        return {"error": json.dumps(inner, separators=(",", ":"))}

    def overflows(self, n_prompt: int, n_ctx: int) -> bool:
        # llama-server refuses a prompt that leaves no room at all; the Go runner one over the window
        return n_prompt >= n_ctx if self.name == "llamaserver" else n_prompt > n_ctx


ERAS = {
    "go": Era("go", "0.24.0", GO_CRASH, shift_reloads=False),
    "llamaserver": Era("llamaserver", "0.33.0", LLAMASERVER_CRASH, shift_reloads=True),
}


def bad_request(body: dict[str, Any]) -> tuple[int, str] | None:
    """What both eras refuse before scheduling: ``(status, message)`` or None."""
    opts = body.get("options") or {}
    if isinstance(opts, dict) and "stop" in opts and not isinstance(opts["stop"], list):
        return 500, 'option "stop" must be of type array'
    keep = body.get("keep_alive")
    if isinstance(keep, str) and keep != "0" and not _GO_DURATION.fullmatch(keep):
        return 400, f'time: missing unit in duration "{keep}"'
    return None


def runner_key(era: Era, body: dict[str, Any], num_ctx: int) -> tuple[Any, ...]:
    """What must match the loaded runner for a request to use it without a reload."""
    opts = body.get("options") or {}
    shift = body.get("shift")
    shift_key = (True if shift is None else bool(shift)) if era.shift_reloads else None
    return (body.get("model"), num_ctx, shift_key, tuple((k, repr(opts.get(k))) for k in RUNNER_OPTIONS))


def shifts(body: dict[str, Any]) -> bool:
    """Whether generation may shift the context when it fills (Ollama's default: yes)."""
    return body.get("shift") is not False
