"""``embeds.Packer``'s rule on a loop the test controls: lines submitted before the loop next turns share a
call (per model and ``dimensions``, up to ``max_inputs``); a line submitted after that turn takes the next."""

from __future__ import annotations

import asyncio
import struct

from batchd.backends.base import EmbedRequest, EmbedResult
from batchd.errors import RequestError
from batchd.run.embeds import Packer


class _Recorder:
    """A backend whose vector for a text is its length: a line's vectors show whose they are."""

    def __init__(self, refuse: str | None = None) -> None:
        self.calls: list[EmbedRequest] = []
        self.refuse = refuse

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self.calls.append(request)
        await asyncio.sleep(0)
        if self.refuse is not None and self.refuse in request.inputs:
            raise RequestError("the input length exceeds the context length")
        return EmbedResult(
            vectors=[struct.pack("<f", len(t)) for t in request.inputs],
            prompt_tokens=sum(len(t) for t in request.inputs),
            model=request.model,
        )


def _packer(backend: _Recorder, max_inputs: int = 256) -> Packer:
    return Packer(backend, max_inputs=max_inputs)  # type: ignore[arg-type]


def _value(vectors: list[bytes]) -> list[int]:
    return [int(struct.unpack("<f", v)[0]) for v in vectors]


def test_lines_submitted_in_one_turn_share_one_call_and_get_their_own_vectors_back() -> None:
    backend = _Recorder()
    packer = _packer(backend)

    async def go() -> list[tuple[list[bytes], int]]:
        return await asyncio.gather(*(packer.embed("m", ["x" * (i + 1)], None) for i in range(8)))

    got = asyncio.run(go())
    assert len(backend.calls) == packer.calls == 1
    assert backend.calls[0].inputs == ["x" * (i + 1) for i in range(8)]
    assert [_value(v) for v, _ in got] == [[i + 1] for i in range(8)]
    assert sum(tokens for _, tokens in got) == sum(range(1, 9))  # the call's tokens, shared by length


def test_a_line_submitted_after_the_loop_turned_takes_the_next_call() -> None:
    backend = _Recorder()
    packer = _packer(backend)

    async def go() -> None:
        first = asyncio.ensure_future(packer.embed("m", ["a"], None))
        await asyncio.sleep(0)  # the loop turns: the first call is dispatched alone
        await asyncio.gather(first, packer.embed("m", ["b"], None), packer.embed("m", ["c"], None))

    asyncio.run(go())
    assert [c.inputs for c in backend.calls] == [["a"], ["b", "c"]]


def test_calls_split_by_model_dimensions_and_max_inputs() -> None:
    backend = _Recorder()
    packer = _packer(backend, max_inputs=4)

    async def go() -> None:
        await asyncio.gather(
            *(packer.embed("m", [f"t{i}"], None) for i in range(5)),
            packer.embed("m", ["p", "q"], 64),
            packer.embed("other", ["o"], None),
            packer.embed("m", ["u", "v", "w"], None),
        )

    asyncio.run(go())
    shapes = sorted((c.model, c.dimensions or 0, tuple(c.inputs)) for c in backend.calls)
    assert shapes == [
        ("m", 0, ("t0", "t1", "t2", "t3")),
        ("m", 0, ("t4", "u", "v", "w")),
        ("m", 64, ("p", "q")),
        ("other", 0, ("o",)),
    ]


def test_a_refused_input_is_tried_alone_and_fails_only_its_line() -> None:
    backend = _Recorder(refuse="bad")
    packer = _packer(backend)

    async def go() -> list[object]:
        return await asyncio.gather(*(packer.embed("m", [t], None) for t in ("a", "bad", "c")), return_exceptions=True)

    a, bad, c = asyncio.run(go())
    assert isinstance(bad, RequestError)
    assert [_value(v) for v, _ in (a, c)] == [[1], [1]]  # type: ignore[misc]
    assert [c.inputs for c in backend.calls] == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
