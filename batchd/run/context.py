"""What each call sends: one lane's conversation history inside a pinned context window.

Conversation mode: per lane, the request's prefix (system prompt + few-shot
examples) once at the top, then every earlier request's own messages with the
model's answer after them, then the new request. The next request of the lane
continues the same history, so the server's prefix cache covers everything
but the newest turn. Isolated mode: every request alone, prefix first.

Kept messages are stored as sent and never rewritten, so the system prompt and
kept turns stay byte-identical from call to call; only trimming (whole
exchanges, never part of one) changes the prefix the server can reuse. The
sliding trim therefore keeps a cached head: the first exchanges after the
prefix, frozen at the first trim, stay where they are, and the exchanges after
them go, oldest first, down to half the room at once. The server reuses
prefix + head from its cache; only the few recent exchanges kept after the head
are evaluated again, and the next calls extend the prompt until the next trim.

Sizes are predicted with a chars-per-token estimate calibrated from the
server's ``prompt_tokens`` (shared by all lanes of a job), plus ``num_predict``
headroom. When the server still overflows, cuts the prompt (``length`` at the
window, or far fewer prompt tokens than predicted) the lane trims harder and
the whole job lowers its trigger (``metrics.trim_at``).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import structlog

from batchd.backends.base import ChatResult
from batchd.config import ContextSettings
from batchd.errors import ContextLengthExceeded
from batchd.metrics import JobMetrics

log = structlog.get_logger("batchd.context")

Message = dict[str, Any]

#: a fair start for English text in BPE vocabularies; calibrated from the first reply on
CHARS_PER_TOKEN = 4.0
#: tokens a chat template adds around each message (role markers, separators)
MESSAGE_OVERHEAD = 4
#: the adaptive trigger never drops below this share of the window
MIN_TRIM_AT = 0.3
#: each overflow / truncation lowers the trigger by this factor for the rest of the job
TRIM_AT_STEP = 0.85
#: a sliding trim keeps history down to this share of its room at once, so trims come
#: in big steps and the calls in between extend the kept prompt (the cache holds it)
SLIDE_TO = 0.5
#: reported prompt tokens below this share of the prediction mean the server cut the prompt
TRUNCATED_BELOW = 0.75
TRUNCATED_BELOW_UNCALIBRATED = 0.5
#: a call that holds the whole previous one must grow by at least this share of the predicted growth
GROWTH_SEEN = 0.6
GROWTH_MIN_TOKENS = 32  # below this, tokenizer noise outweighs the signal
#: conversation mode is judged once this many calls per lane went out (each lane's first pays in full)
PAYING_AFTER_CALLS = 8


class Truncation(str, Enum):
    """How a reply shows its prompt did not fit; the value is the retry cause in metrics.json and the log."""

    #: the server counted fewer prompt tokens than were sent: it cut the prompt to its window
    PROMPT_TRUNCATED = "prompt_truncated"
    #: the answer stopped at the window's end (``finish_reason`` "length" with the window full)
    LENGTH_AT_WINDOW = "length_at_window"


class Lowered(str, Enum):
    """Why the job's trim trigger went down (``context_trigger_lowered``'s ``reason``)."""

    OVERFLOW = "overflow"  #: the server refused the prompt as too long
    TRUNCATION = "truncation"  #: the server cut the prompt silently


def split_prefix(messages: list[Message]) -> int:
    """Where a request's own part starts: its last user message (system + few-shot come before)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return 0


def _chars(message: Message) -> int:
    content = message.get("content")
    return len(content) if isinstance(content, str) else len(str(content or ""))


class TokenEstimate:
    """Prompt tokens from characters: a moving chars-per-token ratio fed by real counts."""

    def __init__(self, chars_per_token: float = CHARS_PER_TOKEN) -> None:
        self.ratio = chars_per_token
        self.samples = 0

    def message(self, message: Message) -> int:
        return max(1, math.ceil(_chars(message) / self.ratio)) + MESSAGE_OVERHEAD

    def messages(self, messages: list[Message]) -> int:
        return sum(self.message(m) for m in messages)

    def learn(self, messages: list[Message], prompt_tokens: int) -> None:
        content_tokens = prompt_tokens - MESSAGE_OVERHEAD * len(messages)
        if content_tokens <= 0:
            return
        observed = min(12.0, max(0.5, sum(_chars(m) for m in messages) / content_tokens))
        alpha = max(0.1, 1.0 / (self.samples + 2))  # quick at first, then a steady average
        self.ratio += alpha * (observed - self.ratio)
        self.samples += 1


class ContextBudget:
    """The job-wide part shared by every lane: window, adaptive trigger, estimate, VRAM pressure."""

    def __init__(self, *, settings: ContextSettings, num_ctx: int, metrics: JobMetrics) -> None:
        self.settings = settings
        self.num_ctx = num_ctx
        self.metrics = metrics
        # A restarted job keeps the trigger it had learned.
        self.trim_at = min(metrics.trim_at or settings.trim_at, settings.trim_at)
        metrics.trim_at = self.trim_at
        self.estimate = TokenEstimate(metrics.chars_per_token or CHARS_PER_TOKEN)
        #: set by the VRAM policy: trim aggressively and stop growing histories
        self.pressure = False
        #: the window the server really applies; smaller than num_ctx once it was seen cutting prompts
        self.window = num_ctx
        self._cuts: list[int] = []
        #: the largest prompt the server counted in full: no window cut can happen below it
        self.largest_full = 0
        #: proven: this server counts only the prompt tokens its cache did not hold
        self.counts_cache_only = False

    @property
    def strategy(self) -> str:
        return "aggressive" if self.pressure else self.settings.strategy

    def trigger(self) -> int:
        return int(self.trim_at * self.window)

    def headroom(self, num_predict: int) -> int:
        # Room for the answer; capped so a small window still leaves room for a prompt.
        return max(1, min(num_predict, self.num_ctx // 2))

    def lower_trigger(self, reason: Lowered) -> None:
        new = max(MIN_TRIM_AT, round(self.trim_at * TRIM_AT_STEP, 3))
        if new < self.trim_at:
            log.warning("context_trigger_lowered", reason=reason.value, trim_at=new, was=self.trim_at)
            self.trim_at = new
            self.metrics.trim_at = new

    def learn_window(self, n_ctx: int) -> None:
        """The server named its window in an overflow error (llama.cpp's server, Ollama >= 0.30.1):
        believe it at once; a window larger than the pinned one changes nothing."""
        if 0 < n_ctx < self.window:
            log.warning("context_window_learned", window=n_ctx, num_ctx=self.num_ctx, source="server_error")
            self.window = n_ctx

    def check_paying(self, *, lanes: int, final: bool = False) -> None:
        """Conversation mode costs more than it saves when the server evaluated more prompt tokens
        than the same requests sent alone with their whole prefix: say so once (log and metrics)."""
        m = self.metrics
        evaluated = max(0, m.prompt_tokens - m.cached_prompt_tokens)
        if m.conversation_not_paying is not None:
            if final:  # the job's closing figures
                m.conversation_not_paying.update(
                    evaluated=evaluated, isolated_estimate=m.isolated_prompt_tokens, requests=m.requests_sent
                )
            return
        if m.requests_sent < PAYING_AFTER_CALLS * max(1, lanes) or evaluated <= m.isolated_prompt_tokens:
            return
        m.conversation_not_paying = {
            "evaluated": evaluated,
            "isolated_estimate": m.isolated_prompt_tokens,
            "requests": m.requests_sent,
        }
        log.warning(
            "conversation_not_paying",
            evaluated=evaluated,
            isolated_estimate=m.isolated_prompt_tokens,
            requests=m.requests_sent,
            hint='mode = "isolated" would evaluate fewer prompt tokens; a pipeline that sets '
            'mode = "conversation" by name is not warned',
        )

    def note_cut(self, cut_at: int) -> None:
        """A cut prompt came back with ``cut_at`` tokens. A cap shows as the same count twice:
        then it is the server's real window (one odd count must not shrink the job's window)."""
        if any(abs(cut_at - c) <= 0.03 * c for c in self._cuts):
            window = max(self.num_ctx // 8, min(self.window, cut_at))
            if window < self.window:
                log.warning("context_window_learned", window=window, num_ctx=self.num_ctx)
                self.window = window
        self._cuts = [*self._cuts[-7:], cut_at]


class Conversation:
    """One lane's view of the context window."""

    def __init__(
        self,
        *,
        settings: ContextSettings,
        num_ctx: int,
        metrics: JobMetrics,
        mode: str = "conversation",
        budget: ContextBudget | None = None,
        lane: int = 0,
    ) -> None:
        self.settings = settings
        self.num_ctx = num_ctx
        self.metrics = metrics
        self.mode = mode
        self.lane = lane
        self.budget = budget or ContextBudget(settings=settings, num_ctx=num_ctx, metrics=metrics)
        self.prefix: list[Message] | None = None
        self.model: str | None = None
        #: kept exchanges: each is a request's own messages plus the answer, as sent
        self.history: list[list[Message]] = []
        self._anchors = 0  # few-shot pairs in the prefix (they count as hybrid anchors)
        self._head = 0  # exchanges at the start of history that sliding trims keep (cached)
        self._harder = False
        self._drop_all = False
        self._overflows = 0
        self._sent: list[Message] = []
        self._predicted = 0
        self._cached = 0
        self._headroom = 0
        self._previous: list[Message] = []  # last call of this lane plus its answer (the server's cache)
        self._previous_prompt = 0  # its prompt tokens as the server counted them
        self._previous_predicted = 0
        self._extends = False  # this call starts with the whole previous call

    # -- building a call ---------------------------------------------------------

    def build(
        self, messages: list[Message], num_predict: int, *, prefix_len: int | None = None, model: str = ""
    ) -> list[Message]:
        """The messages to send for this request; ContextLengthExceeded when it cannot fit alone."""
        cut = split_prefix(messages) if prefix_len is None else min(prefix_len, len(messages))
        prefix, own = messages[:cut], messages[cut:]
        if prefix != self.prefix or model != self.model:
            # A different system prompt or model starts a fresh conversation.
            self.prefix, self.model, self.history, self._head = list(prefix), model, [], 0
            self._anchors = sum(1 for m in prefix if m.get("role") == "assistant")
        est = self.budget.estimate
        base = est.messages(prefix) + est.messages(own)
        if base > self.num_ctx:
            raise ContextLengthExceeded(
                f"the request alone needs about {base} tokens; the context window is {self.num_ctx}", status_code=None
            )
        self._headroom = self.budget.headroom(num_predict)
        if self.history:
            self._fit(base)
        sent = [*prefix, *(m for exchange in self.history for m in exchange), *own]
        self._sent = sent
        self._predicted = est.messages(sent)
        common = _common_prefix(sent, self._previous)
        self._cached = est.messages(common)
        self._extends = bool(self._previous) and len(common) == len(self._previous)
        return sent

    def _fit(self, base: int) -> None:
        """Trim the history so prompt + headroom stays under the trigger."""
        if self.mode != "conversation" or self._drop_all or self.budget.pressure:
            self._trim("aggressive", 0)
            self._drop_all = False
            return
        est = self.budget.estimate
        room = self.budget.trigger() - self._headroom - base
        kept = sum(est.messages(x) for x in self.history)
        if self._harder:
            self._harder = False
            self._trim(self.budget.strategy, min(room, kept // 2))
        elif kept > room:
            self._trim(self.budget.strategy, room)

    def _trim(self, strategy: str, room: int) -> None:
        est = self.budget.estimate
        before = len(self.history)
        if strategy == "aggressive" or room <= 0:
            self.history = []
        elif strategy == "hybrid":
            first = max(0, self.settings.keep_first - self._anchors)
            anchors = self.history[:first]
            tail = self.history[first:]
            tail = tail[len(tail) - min(len(tail), self.settings.keep_last) :]
            while tail and sum(est.messages(x) for x in anchors + tail) > room:
                tail = tail[1:]
            while anchors and sum(est.messages(x) for x in anchors) > room:
                anchors = anchors[1:]
            self.history = anchors + tail
        else:
            self._slide(int(room * SLIDE_TO))
        if strategy != "sliding" or room <= 0:
            self._head = 0
        dropped = before - len(self.history)
        if dropped:
            used = "aggressive" if room <= 0 else strategy
            self.metrics.trims[used] += 1
            log.info(
                "context_trimmed",
                lane=self.lane,
                strategy=used,
                dropped=dropped,
                kept=len(self.history),
                head=self._head,
                trim_at=self.budget.trim_at,
            )

    def _slide(self, target: int) -> None:
        """Sliding: keep the cached head, drop the oldest exchanges after it until ``target`` is met."""
        sizes = [self.budget.estimate.messages(x) for x in self.history]
        head = min(self._head, len(sizes))
        if head == 0:
            # The first trim freezes the head: the first exchanges that fit the target. They
            # sit right after the prefix in the server's cache and stay there from now on.
            while head < len(sizes) and sum(sizes[: head + 1]) <= target:
                head += 1
        while head and sum(sizes[:head]) > target:  # the window shrank: the head's end goes
            head -= 1
        kept, first = sum(sizes), head
        while first < len(sizes) and kept > target:
            kept -= sizes[first]
            first += 1
        self.history = self.history[:head] + self.history[first:]
        self._head = head

    # -- hearing back ----------------------------------------------------------------

    def counted(self, result: ChatResult) -> int:
        """The prompt tokens the server saw, as well as the reply tells; 0 when it does not say
        (older Ollama omits ``prompt_eval_count`` on a cache hit). A server that counts only the
        uncached part but reports the cached part beside it (``prompt_eval_cached_count``) is
        added up; one whose count already holds the cached part (OpenAI's) is taken as it is."""
        reported = result.prompt_tokens or 0
        cached = result.cached_tokens
        if reported and cached and abs(reported + cached - self._predicted) < abs(reported - self._predicted):
            return reported + cached
        return reported

    def truncation(self, result: ChatResult) -> Truncation | None:
        """Why the reply shows the prompt did not fit (``prompt_truncated``, ``length_at_window``), or None."""
        reported = self.counted(result)
        if reported and self._predicted and not self._counts_cache_only(reported):
            calibrated = self.budget.estimate.samples >= 1
            low = reported < (TRUNCATED_BELOW if calibrated else TRUNCATED_BELOW_UNCALIBRATED) * self._predicted
            if self._extends and self._previous_prompt:
                # The call holds the whole previous one, so it grew by what was added: the previous
                # answer and the new turn, estimated with one ratio (never two estimates subtracted).
                grown = self.budget.estimate.messages(self._sent[len(self._previous) - 1 :])
                if grown >= GROWTH_MIN_TOKENS:
                    low = low or reported < self._previous_prompt + GROWTH_SEEN * grown
            if low:
                return Truncation.PROMPT_TRUNCATED
        if result.finish_reason == "length" and reported + self._headroom > self.budget.window:
            return Truncation.LENGTH_AT_WINDOW
        return None

    def _counts_cache_only(self, reported: int) -> bool:
        # Some Ollama builds count only the prompt tokens not served from the cache
        # (ollama/ollama#3427, #16414): such a count matches the uncached part. A cut prompt
        # can look the same, so that reading is trusted only once proven on a call no
        # larger than one the server already counted in full (no window cut possible there).
        if not self._cached:
            return False
        uncached = self._predicted - self._cached
        if not abs(reported - uncached) <= 0.15 * self._predicted + 8 < abs(reported - self._predicted):
            return False
        if not self.budget.counts_cache_only and self._predicted <= 1.05 * self.budget.largest_full:
            log.info("server_counts_cache_only", reported=reported, predicted=self._predicted)
            self.budget.counts_cache_only = True
        return self.budget.counts_cache_only

    def on_overflow(
        self, cut_at: int | None = None, *, n_ctx: int | None = None, n_prompt_tokens: int | None = None
    ) -> bool:
        """The prompt did not fit after all (``cut_at``: the count of a silently cut prompt;
        ``n_ctx`` / ``n_prompt_tokens``: the window and the true prompt size where the server's
        error said them): lower the job's trigger; True when trimming can help."""
        self.budget.lower_trigger(Lowered.OVERFLOW if cut_at is None else Lowered.TRUNCATION)
        if cut_at:
            self.budget.note_cut(cut_at)
        if n_ctx:
            self.budget.learn_window(n_ctx)
        if n_prompt_tokens and self._sent:
            self.budget.estimate.learn(self._sent, n_prompt_tokens)  # a real tokenizer's count
            self.metrics.chars_per_token = round(self.budget.estimate.ratio, 3)
        if not self.history:
            return False
        # First overflow of a request: halve the history; a second one: drop all of it.
        self._overflows += 1
        if self._overflows > 1:
            self._drop_all = True
        else:
            self._harder = True
        return True

    def on_oom(self) -> None:
        """The server ran out of memory: the next call goes out with the prefix and the request only."""
        self._drop_all = True

    def record(self, messages: list[Message], result: ChatResult, *, prefix_len: int | None = None) -> None:
        """A reply arrived for ``messages`` (the request's own messages, not the history)."""
        est = self.budget.estimate
        reported = self.counted(result)
        counted = bool(reported) and not self._counts_cache_only(reported)
        if counted and self.truncation(result) is None:
            if abs(reported - self._predicted) <= 0.25 * self._predicted:
                self.budget.largest_full = max(self.budget.largest_full, reported)
            est.learn(self._sent, reported)
            self.metrics.chars_per_token = round(est.ratio, 3)
        self.metrics.isolated_prompt_tokens += est.messages(messages)
        if result.cached_tokens is None:
            self.metrics.cached_prompt_tokens += min(self._cached, reported or self._cached)
        answer: Message = {"role": "assistant", "content": result.content}
        if result.tool_calls:  # the call the model made is what the next turns must see
            answer["tool_calls"] = list(result.tool_calls)
        self._previous = [*self._sent, answer]
        self._previous_prompt = reported if counted else 0
        self._previous_predicted = self._predicted
        self._overflows = 0
        self._harder = self._drop_all = False  # this shape worked; pending reactions are spent
        cut = split_prefix(messages) if prefix_len is None else min(prefix_len, len(messages))
        if self.mode == "conversation" and not self.budget.pressure and cut < len(messages):
            # images go with the turn that carried them only: kept, each would cost the window on every call
            own = [{k: v for k, v in m.items() if k != "images"} if m.get("images") else m for m in messages[cut:]]
            self.history.append([*own, answer])


def _common_prefix(a: list[Message], b: list[Message]) -> list[Message]:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]
