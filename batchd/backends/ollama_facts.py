"""What batchd must know about the Ollama it talks to: versions and runner options.

Read from ollama/ollama (v0.33 and the tags named below); each rule cites where.

- Runner options (``api/types.go`` ``type Runner``; ``server/sched.go`` ``needsReload``): a request
  whose ``num_ctx``, ``num_batch``, ``num_gpu``, ``main_gpu``, ``use_mmap`` or ``num_thread`` differ
  from the loaded runner's reloads the model, after the requests in flight finish. On a shared
  server two clients with different values reload it back and forth. Older releases also read
  ``use_mlock``, ``numa``, ``low_vram``, ``f16_kv``, ``vocab_only`` at load time.
- ``keep_alive``: in the root leaf ``batchd.keepalive`` (the settings check it too).
- Versions: ``truncate``/``shift`` arrived in 0.12.6 (below it they are ignored and overflowing
  prompts are cut silently); 0.30.0 replaced the Go runner by llama.cpp's ``llama-server`` and
  counted only uncached prompt tokens in ``prompt_eval_count`` (fixed in 0.30.1, which also brought
  the JSON overflow error with ``n_ctx`` / ``n_prompt_tokens``).
"""

from __future__ import annotations

import re
from typing import Any

#: options that shape the loaded runner, not the request; num_ctx is pinned per job by batchd
RUNNER_OPTIONS = frozenset(
    {
        "num_ctx",
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
    }
)

#: first release that honours ``truncate: false`` / ``shift: false`` (ollama/ollama v0.12.6)
TRUNCATE_SINCE = (0, 12, 6)
#: first release on llama.cpp's llama-server (ollama/ollama v0.30.0)
LLAMA_SERVER_SINCE = (0, 30, 0)
#: the release whose prompt_eval_count left out cached tokens
CACHE_ONLY_COUNTS = (0, 30, 0)

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


def strip_runner_options(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``options`` without the runner options, and the names that were dropped (sorted)."""
    dropped = sorted(k for k in options if k in RUNNER_OPTIONS)
    if not dropped:
        return options, []
    return {k: v for k, v in options.items() if k not in RUNNER_OPTIONS}, dropped


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """``"0.33.0"`` / ``"v0.12.6-rc1"`` as a tuple; None for ``"0.0.0"`` (a source build) or junk."""
    found = _VERSION.match((text or "").strip())
    if found is None:
        return None
    version = (int(found.group(1)), int(found.group(2)), int(found.group(3) or 0))
    return None if version == (0, 0, 0) else version


def version_notes(text: str | None) -> list[tuple[str, str]]:
    """``(level, message)`` about what this Ollama version lacks; level ``warning`` or ``info``."""
    version = parse_version(text)
    if version is None:
        return [("info", f"Ollama version {text or 'unknown'!r} is not a release number; assuming a current one")]
    if version < TRUNCATE_SINCE:
        return [
            (
                "warning",
                f"Ollama {text} ignores truncate/shift (they arrived in 0.12.6): prompts over "
                "num_ctx are cut silently and still answer 200; batchd can only infer cuts from "
                "done_reason and prompt_eval_count. Upgrade Ollama.",
            )
        ]
    if version[:3] == CACHE_ONLY_COUNTS:
        return [
            (
                "info",
                f"Ollama {text} counts only uncached prompt tokens in prompt_eval_count "
                "(fixed in 0.30.1): cache hits look like short prompts",
            )
        ]
    return []
