"""Hostile ``pipeline.toml`` files, generated: the honest file beside them is always published ``completed``.

Each example drops one generated pipeline folder (deep nesting, huge files, wrong types, integers over
64 bits, odd Unicode, bytes that are not UTF-8, schemas reaching outside themselves) with a CSV in it,
and an honest JSONL at the inbox root, then runs ``batchd run --once`` in process twice (a restart)
against the emulator. Profiles: ``ci`` (default, 12 examples) and ``long``
(``BATCHD_HOSTILE_PROFILE=long``, ``BATCHD_HOSTILE_EXAMPLES``, default 300; figure in RELIABILITY.md).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batchd.config import Settings
from batchd.journal import JobState, Journal
from tests.support.emulator import Emulator
from tests.support.factories import outbox_entries
from tests.support.running import run_daemon_once

_COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}
settings.register_profile("hostile-ci", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("hostile-long", max_examples=int(os.environ.get("BATCHD_HOSTILE_EXAMPLES", "300")), **_COMMON)
PROFILE = f"hostile-{os.environ.get('BATCHD_HOSTILE_PROFILE', 'ci')}"


@dataclass(frozen=True)
class Hostile:
    kind: str
    content: bytes
    #: False where the generated file may happen to be a valid pipeline (odd Unicode in a prompt)
    must_fail: bool = True


_ODD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=0, max_size=40
)
_ANY_TOML = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        _ODD,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_ODD, inner, max_size=4)),
    max_leaves=12,
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else ("inf" if value == float("inf") else "-inf" if value == -float("inf") else repr(value))
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{orjson.dumps(k).decode()} = {_toml_value(v)}" for k, v in value.items()) + "}"


TEMPLATE = 'user_template = "{text}"\n'


@st.composite
def hostile(draw: st.DrawFn) -> Hostile:
    kind = draw(
        st.sampled_from(
            [
                "deep_array",
                "deep_table",
                "huge_int",
                "wrong_type",
                "odd_unicode",
                "huge",
                "not_utf8",
                "schema_ref",
                "redos_schema",
                "bad_toml",
            ]
        )
    )
    if kind == "deep_array":
        n = draw(st.integers(min_value=300, max_value=20_000))
        return Hostile(kind, f"{TEMPLATE}options = {{x = {'[' * n}1{']' * n}}}\n".encode())
    if kind == "deep_table":
        n = draw(st.integers(min_value=255, max_value=2_000))
        return Hostile(kind, f"{TEMPLATE}options = {{x = {'{y = ' * n}1{'}' * n}}}\n".encode())
    if kind == "huge_int":
        big = draw(st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1)))
        where = draw(
            st.sampled_from(
                [
                    "options = {x = %d}",
                    "options = {x = [1, %d]}",
                    'format = {type = "object", properties = {score = {type = "integer", maximum = %d}}}',
                ]
            )
        )
        return Hostile(kind, (TEMPLATE + where % big + "\n").encode())
    if kind == "wrong_type":
        key = draw(
            st.sampled_from(
                [
                    "reply_retries",
                    "examples",
                    "format",
                    "user_template",
                    "passthrough_columns",
                    "options",
                    "mode",
                    "score_field",
                    "id_column",
                    "system_prompt_file",
                ]
            )
        )
        value = draw(_ANY_TOML.filter(lambda v: not isinstance(v, str) or key not in ("user_template",)))
        text = (TEMPLATE if key != "user_template" else "") + f"{key} = {_toml_value(value)}\n"
        return Hostile(kind, text.encode(), must_fail=False)
    if kind == "odd_unicode":
        prompt, name, key = draw(_ODD), draw(_ODD), draw(_ODD.filter(bool))
        text = f"system_prompt = {orjson.dumps(prompt).decode()}\nname = {orjson.dumps(name).decode()}\n{TEMPLATE}"
        text += f"options = {{{orjson.dumps(key).decode()} = 1}}\n"
        return Hostile(kind, text.encode(), must_fail=False)
    if kind == "huge":
        return Hostile(kind, TEMPLATE.encode() + b'system_prompt = "' + b"x" * (4 << 20) + b'"\n')
    if kind == "not_utf8":
        return Hostile(kind, TEMPLATE.encode() + draw(st.binary(min_size=1, max_size=40)) + b"\xff\xfe\n")
    if kind == "schema_ref":
        ref = draw(st.sampled_from(["file:///etc/shadow", "http://127.0.0.1:9/x", "other.json", "#/$defs/none"]))
        word = draw(st.sampled_from(["$ref", "$dynamicRef"]))
        text = f'{TEMPLATE}format = {{type = "object", properties = {{score = {{"{word}" = "{ref}"}}}}}}\n'
        return Hostile(kind, text.encode())
    if kind == "redos_schema":
        score = '{type = "string", pattern = "(a)\\\\1"}'  # a backreference: no linear-time engine runs it
        return Hostile(kind, f'{TEMPLATE}format = {{type = "object", properties = {{score = {score}}}}}\n'.encode())
    return Hostile(kind, draw(st.sampled_from([b"x = [[[\n", b"= 1\n", b"options = {x = 1, x = 2}\n", b"[a]\n[a]\n"])))


HONEST = (
    orjson.dumps(
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}]},
        }
    )
    + b"\n"
)


def _check(case: Hostile, emulator: Emulator) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inbox, outbox, state = root / "inbox", root / "outbox", root / "state"
        for p in (inbox, outbox, state):
            p.mkdir()
        (inbox / "m").mkdir()
        (inbox / "m" / "pipeline.toml").write_bytes(case.content)
        (inbox / "m" / "rows.csv").write_text("text\nhello\n")
        (inbox / "honest.jsonl").write_bytes(HONEST)
        s = Settings(
            inbox=inbox,
            outbox=outbox,
            state_dir=state,
            backend={"url": emulator.url, "lanes": 1, "backoff_seconds": 0.01, "backoff_max_seconds": 0.2},
        )
        run_daemon_once(s)  # an exception here is a crash of `run --once` (exit 1)
        run_daemon_once(s)  # the restart is clean
        journal = Journal(s.journal_path)
        try:
            jobs = {j.input_name: j for j in journal.jobs()}
        finally:
            journal.close()
        assert set(jobs) == {"honest.jsonl", "m/rows.csv"}, (case.kind, jobs)
        assert jobs["honest.jsonl"].state is JobState.COMPLETED, (case.kind, jobs["honest.jsonl"])
        bad = jobs["m/rows.csv"]
        if case.must_fail:
            assert bad.state is JobState.FAILED, (case.kind, bad)
        else:
            assert bad.state in (JobState.FAILED, JobState.COMPLETED), (case.kind, bad)
        if bad.state is JobState.FAILED:
            assert bad.error is not None and bad.error.get("message"), (case.kind, bad)
        assert len(outbox_entries(outbox)) == 2
        assert not any(p.name.endswith(".partial") for p in outbox.iterdir())
        spool = sorted(p.suffix for p in (state / "spool").iterdir())
        assert spool.count(".tmp") == 0


@settings(settings.get_profile(PROFILE))
@given(case=hostile())
def test_a_hostile_pipeline_folder_never_stops_the_honest_file(case: Hostile) -> None:
    event(case.kind)  # --hypothesis-show-statistics: how often each kind ran
    with Emulator() as emulator:
        _check(case, emulator)
