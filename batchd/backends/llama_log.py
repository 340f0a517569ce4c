"""llama.cpp's log (embedded backend) routed into batchd's log at debug level, never to the console."""

from __future__ import annotations

import ctypes
from typing import Any

import structlog

log = structlog.get_logger("batchd.backends.embedded")

#: ggml_log_level (ggml.h); 5 (CONT) continues the line before
LEVELS = {1: "debug", 2: "info", 3: "warn", 4: "error"}


class LlamaLog:
    """llama.cpp's own log (model loader, context, KV cache lines) as ``llama_cpp_log`` debug events.

    llama-cpp-python prints what its callback deems an error straight to stderr, even with
    ``verbose=False``, and its level table predates ggml's current one (1 is DEBUG, 2 INFO,
    3 WARN, 4 ERROR, 5 continue): ``make demo`` showed ``llama_kv_cache_iswa: using
    full-size SWA cache`` and ``llama_context: n_ctx_seq ...`` on the console. Real failures
    reach us as exceptions from Llama(); these lines are for ``log.level = "debug"``.
    """

    def __init__(self) -> None:
        self._pending = ""
        self._level = 2
        self.callback: Any = None

    def __call__(self, level: int, text: bytes, _user_data: Any) -> None:
        try:
            if level != 5:  # 5: the rest of the line before
                self._level = level
            self._pending += text.decode("utf-8", "replace")
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                if line.strip():
                    log.debug(
                        "llama_cpp_log", llama_level=LEVELS.get(self._level, str(self._level)), message=line.rstrip()
                    )
        except Exception:  # noqa: BLE001, S110 - an exception must not cross back into C
            pass


_LLAMA_LOG = LlamaLog()


def route_llama_log() -> None:
    """Install ``_LLAMA_LOG`` as llama.cpp's log callback (after llama_cpp installed its own on import)."""
    if _LLAMA_LOG.callback is not None:
        return
    import llama_cpp
    import llama_cpp.llama  # imports llama_cpp._logger, which sets its callback: ours goes after

    # ctypes keeps no reference of its own: the wrapper lives as long as the module does.
    _LLAMA_LOG.callback = llama_cpp.llama_log_callback(_LLAMA_LOG)
    llama_cpp.llama_log_set(_LLAMA_LOG.callback, ctypes.c_void_p(0))
