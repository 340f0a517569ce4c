"""The conformance cases (``tests/support/conformance.py``) against the emulator in each server flavour.

Ollama's two eras through ``/api/chat`` as a stock server runs them (one slot,
the rest queue; a model load that takes time), and the emulator's vLLM-like
``/v1``. The real llama.cpp server runs the same list in its integration test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.support.conformance import CASES, Case, Server
from tests.support.emulator import Emulator

MODEL = "gemma3:4b"
NUM_CTX = 512


@pytest.fixture(scope="module", params=["go", "llamaserver", "vllm"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    flavour = request.param
    if flavour == "vllm":
        emu = Emulator(context_length=NUM_CTX, slots=2).start()
        yield Server(url=emu.url, kind="openai", model=MODEL, num_ctx=NUM_CTX, flavour="vllm")
    else:
        emu = Emulator.ollama(flavour, reload_seconds=0.1).start()
        yield Server(
            url=emu.url,
            kind="ollama",
            model=MODEL,
            num_ctx=NUM_CTX,
            flavour=flavour,
            overflow_has_numbers=flavour == "llamaserver",
        )
    emu.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_conformance(server: Server, case: Case) -> None:
    asyncio.run(case(server))
