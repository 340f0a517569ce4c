"""Notice the server reloading the model under a running job.

Ollama reloads a model when a request's ``num_ctx``, ``shift`` or runner options
differ from the loaded runner's (ollama/ollama ``server/sched.go`` ``needsReload``),
after the requests in flight finish. batchd pins its own values, so a reload in
the middle of a job means another client of a shared server sends other ones:
the two of them can reload the model back and forth for hours. Two signs:

- a reply's ``load_duration`` jumps: warm calls report milliseconds, a reload seconds
  (every lane waiting on the same reload sees the jump: they count once);
- ``/api/ps`` shows a ``context_length`` other than the one seen before.

Each reload is a ``model_reloaded`` warning, a count in ``metrics.json`` and a note
in the status line.
"""

from __future__ import annotations

import structlog

from batchd.backends.base import LoadedModel
from batchd.metrics import JobMetrics

log = structlog.get_logger("batchd.reloads")

#: a load shorter than this is never a reload (a warm call takes milliseconds)
RELOAD_MIN_SECONDS = 0.2
#: ... and it must be this many times the shortest load the job has seen
JUMP_FACTOR = 10.0


class ReloadWatch:
    """Counts reloads into ``metrics.reloads``; ``num_ctx`` is the job's pinned window."""

    def __init__(self, *, metrics: JobMetrics, num_ctx: int, model: str) -> None:
        self.metrics = metrics
        self.num_ctx = num_ctx
        self.model = model
        self._shortest: float | None = None
        self._last_at = float("-inf")
        self._last_load = 0.0
        self._ps_ctx: int | None = None

    def on_reply(self, load_seconds: float | None, now: float) -> bool:
        """One reply's ``load_duration``; True when it shows a new reload."""
        if load_seconds is None:
            return False
        shortest = self._shortest
        self._shortest = load_seconds if shortest is None else min(shortest, load_seconds)
        if shortest is None:
            return False  # the job's first call may well load the model: that is no reload
        if load_seconds < RELOAD_MIN_SECONDS or load_seconds < JUMP_FACTOR * max(shortest, 0.001):
            return False
        if now - self._last_at < max(1.0, 2 * max(load_seconds, self._last_load)):
            return False  # another lane that waited on the same reload
        self._last_at, self._last_load = now, load_seconds
        self._reloaded("load_duration", load_seconds=round(load_seconds, 3))
        return True

    def on_ps(self, loaded: list[LoadedModel]) -> bool:
        """An ``/api/ps`` reading; True when the model's loaded window changed since the last one."""
        ctx = next((m.context_length for m in loaded if _same(m.name, self.model) and m.context_length), None)
        if ctx is None:
            return False
        before, self._ps_ctx = self._ps_ctx, ctx
        if ctx == self.num_ctx or ctx == before:
            return False  # batchd's own window (its first call may have loaded it), or no change
        if before is None:
            log.warning(
                "loaded_context_differs",
                model=self.model,
                context_length=ctx,
                num_ctx=self.num_ctx,
                hint="another client loaded it with its own num_ctx; batchd's calls will reload it",
            )
            return False
        self._reloaded("api_ps", context_length=ctx, was=before)
        return True

    def _reloaded(self, seen_by: str, **detail: object) -> None:
        self.metrics.reloads += 1
        log.warning(
            "model_reloaded",
            model=self.model,
            seen_by=seen_by,
            num_ctx=self.num_ctx,
            reloads=self.metrics.reloads,
            hint="another client sends a different num_ctx, shift or runner options: "
            "see README 'Shared Ollama without reload thrash'",
            **detail,
        )


def _same(name: str, model: str) -> bool:
    return name == model or name.removesuffix(":latest") == model.removesuffix(":latest")
