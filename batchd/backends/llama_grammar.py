"""Decoding under a JSON schema for the embedded backend (llama.cpp in-process).

``gbnf_ready`` prepares a schema for llama-cpp-python's schema-to-grammar
converter; ``GreedyGrammar`` is the logits processor that makes greedy decoding
under that grammar affordable on a big vocabulary. llama-cpp-python is imported
only when they are used (the ``embedded`` extra).
"""

from __future__ import annotations

import ctypes
from typing import Any

import orjson

from batchd.errors import BadRequest


def gbnf_ready(schema: dict[str, Any]) -> bytes:
    """The schema with small integer ranges spelled out as enums.

    llama-cpp-python's schema-to-grammar converter ignores minimum/maximum (a TODO in
    llama_grammar.py), so a 1-10 score came back as 9000000000000000; an enum it does honour.
    """

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: walk(v) for k, v in node.items()}
        lo, hi = out.get("minimum"), out.get("maximum")
        if (
            out.get("type") == "integer"
            and isinstance(lo, int)
            and isinstance(hi, int)
            and 0 <= hi - lo <= 256
            and "enum" not in out
        ):
            out = {k: v for k, v in out.items() if k not in ("type", "minimum", "maximum")}
            out["enum"] = list(range(lo, hi + 1))
        return out

    return orjson.dumps(walk(schema))


class GreedyGrammar:
    """Greedy decoding under a grammar that asks the grammar about the model's own pick first.

    llama-cpp-python puts the grammar sampler on the whole vocabulary at every step;
    with Gemma's 262k tokens that cost 300-600 ms a token on a 2-core box, 3-4x the
    model itself. llama.cpp's own sampler (common/sampling.cpp) first checks only the
    token it would pick and filters the full vocabulary only when that one is
    refused; this does the same as a logits processor: it returns one-hot logits
    (so repeat/presence/frequency penalties do not apply on this path).
    """

    def __init__(self, llm: Any, gbnf: str, *, start: int) -> None:
        import llama_cpp

        self._c = llama_cpp
        self._smpl = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
        if not self._smpl:
            raise BadRequest("llama.cpp could not parse the grammar made from the JSON schema")
        self._seen = start
        self._one = (llama_cpp.llama_token_data * 1)()
        self.full_checks = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        for token in input_ids[self._seen :]:  # the tokens picked since the last call
            self._c.llama_sampler_accept(self._smpl, int(token))
        self._seen = len(input_ids)
        best = int(np.argmax(scores))
        if not self._allows(best, float(scores[best])):
            self.full_checks += 1
            best = self._best_allowed(scores)
        out = np.full_like(scores, -np.inf)
        out[best] = 0.0
        return out

    def _allows(self, token: int, logit: float) -> bool:
        self._one[0] = self._c.llama_token_data(token, logit, 0.0)
        arr = self._c.llama_token_data_array(data=self._one, size=1, selected=-1, sorted=False)
        self._c.llama_sampler_apply(self._smpl, ctypes.byref(arr))
        return bool(self._one[0].logit != float("-inf"))

    def _best_allowed(self, scores: Any) -> int:
        import numpy as np

        data = np.zeros(
            len(scores), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        )
        data["id"] = np.arange(len(scores), dtype=np.intc)
        data["logit"] = scores
        ptr = data.ctypes.data_as(ctypes.POINTER(self._c.llama_token_data))
        arr = self._c.llama_token_data_array(data=ptr, size=len(scores), selected=-1, sorted=False)
        self._c.llama_sampler_apply(self._smpl, ctypes.byref(arr))
        return int(np.argmax(data["logit"]))

    def close(self) -> None:
        if self._smpl:
            self._c.llama_sampler_free(self._smpl)
            self._smpl = None
