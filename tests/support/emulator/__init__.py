"""Emulate an Ollama server on loopback so tests and benchmarks need no GPU.

One job: speak Ollama's HTTP protocol (and the OpenAI-compatible
``/v1/chat/completions`` that Ollama and vLLM serve) from a real
``ThreadingHTTPServer`` in a background thread, with deterministic replies
(``model``), context-window rules, a loaded-model state and injectable faults.

Eras (``mode``, see ``eras``): ``go`` is Ollama 0.12.6-0.24 (version
"0.24.0", the Go runner's last release: there is no 0.25-0.29), ``llamaserver``
is >= 0.30.1 (version "0.33.0"); each with its own error bodies. The loaded
model is reloaded (``reload_seconds`` of sleep, reported as ``load_duration``)
when a request's num_ctx, runner options or (llamaserver) shift differ, after
the requests in flight finish. ``Emulator.ollama(mode)``
gives a stock server: one slot (``OLLAMA_NUM_PARALLEL=1``, the rest queue) and a
real reload cost; ``Emulator()`` keeps tests fast (unlimited slots, free reloads).

Markers in the last user message target single rows: ``<<GARBAGE>>`` (content
is not JSON), ``<<SLOW:0.5>>`` (extra seconds while holding a slot),
``<<FAIL:500>>`` (always that status).

Slots (``slots=K``, ``slots.SlotPool``): K requests are served at once,
more wait for a slot in arrival order, so their latency grows; ``set_slots(K)``
changes K at once, ``set_slots(K, at=T)`` T seconds after start. ``latency_max``
draws each request's latency uniformly from ``[latency, latency_max]``.

Run standalone: ``python -m tests.support.emulator --port 0 --latency 0 --slots 4 [--mode llamaserver]``
(``--latency-max 0.2 --slots-at 30:4 --record FILE`` for the slots and timings above).
Stdlib only on purpose: the benchmark and the system tests start it as a bare
process; and it imports nothing from batchd, an independent oracle of Ollama's behaviour.

Modules by concern: ``state`` (``Emulator``), ``faults``, ``slots``, ``routes`` (the HTTP handler), ``cli``,
and its own facts: ``eras`` (each Ollama era's behaviour) and ``model`` (token counts, replies).
"""

from tests.support.emulator.faults import Fault
from tests.support.emulator.model import count_tokens, last_user_content, reply_content, tokens
from tests.support.emulator.state import Emulator

__all__ = ["Emulator", "Fault", "count_tokens", "last_user_content", "reply_content", "tokens"]
