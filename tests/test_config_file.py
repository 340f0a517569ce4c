"""``packaging/batchd.toml`` lists every setting with its real default, and nothing else.

The rule the file follows (and this test enforces): a key with a default is set
to that default; a key that is unset by default (``None``) appears commented
out, ``# key = <example>``, under its section. Any key may also have a
commented example; every example must be a valid value. Adding a setting to
``batchd.config`` without adding it to the file (or the reverse) fails here,
naming the key and the line to add.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batchd.config import Settings, load_settings
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import REPO, run_batchd

CONFIG = REPO / "packaging" / "batchd.toml"
_HEADER = re.compile(r"^\[([a-z_]+)\]\s*(#.*)?$")
_COMMENTED_KEY = re.compile(r"^#\s?([a-z_]+) = (.+)$")


def model_keys(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, default) for every setting; sections (nested models) are walked, dicts are leaves."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from model_keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.get_default(call_default_factory=True)


def set_keys(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    sections = {
        n
        for n, f in Settings.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }
    for key, value in data.items():
        if not prefix and key in sections:
            yield from set_keys(value, f"{key}.")
        else:
            yield f"{prefix}{key}", value


def commented_keys(text: str) -> dict[str, list[Any]]:
    """``# key = value`` lines, by dotted key, each value parsed as TOML."""
    found: dict[str, list[Any]] = {}
    section = ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            section = header.group(1) + "."
            continue
        m = _COMMENTED_KEY.match(line)
        if m:
            value = tomllib.loads(f"v = {m.group(2)}")["v"]
            found.setdefault(section + m.group(1), []).append(value)
    return found


def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("BATCHD_"):
            monkeypatch.delenv(name)


def test_every_setting_is_in_the_shipped_config_and_nothing_else() -> None:
    text = CONFIG.read_text(encoding="utf-8")
    given = dict(set_keys(tomllib.loads(text)))
    commented = commented_keys(text)
    problems = []
    for key, default in model_keys():
        section, _, name = key.rpartition(".")
        where = f"under [{section}]" if section else "at the top"
        if default is None:
            if key in given:
                problems.append(f"{key} is unset by default: comment it out ({where}: # {name} = <example>)")
            elif key not in commented:
                problems.append(f"{key} is missing: add '# {name} = <example>' {where}, with a comment")
        elif key not in given:
            problems.append(f"{key} is missing: add '{name} = {default!r}' {where}, with a comment")
    known = dict(model_keys())
    for key in [*given, *commented]:
        if key not in known:
            problems.append(f"{key} is in packaging/batchd.toml but is no setting")
    assert not problems, "\n".join(problems)


def test_the_values_in_the_shipped_config_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_env(monkeypatch)
    from_file = load_settings(config=CONFIG)
    assert from_file.model_dump() == Settings().model_dump()


def test_commented_examples_are_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # Uncommenting an example must give a working setting, not an error.
    _no_env(monkeypatch)
    for key, values in commented_keys(CONFIG.read_text(encoding="utf-8")).items():
        section, _, name = key.rpartition(".")
        for value in values:
            if key == "pipeline.system_prompt_file":
                continue  # names a file that exists only where someone wrote it
            data = {section: {name: value}} if section else {name: value}
            Settings.model_validate(data)


def test_the_shipped_config_runs_any_csv_at_the_inbox_root(folders: Folders, emulator: Emulator) -> None:
    (folders.inbox / "anything.csv").write_text("colour,shape\nred,circle\nblue,square\n", encoding="utf-8")
    env = folders.env(emulator.url, BATCHD_CONFIG=str(CONFIG))
    r = run_batchd(env, "run", "--once")
    assert r.returncode == 0, r.stderr
    out = folders.outbox / "anything"
    results = read_jsonl(out / "results.jsonl")
    assert [x["custom_id"] for x in results] == ["row-1", "row-2"]
    assert read_jsonl(out / "errors.jsonl") == []
    sent = [m for call in emulator.calls for m in call["messages"]]
    assert {"role": "user", "content": "colour: red\nshape: circle"} in sent
    assert not any(m["role"] == "system" for m in sent)


def test_the_commented_example_pipeline_runs_when_uncommented(
    folders: Folders, emulator: Emulator, tmp_path: Path
) -> None:
    # The example keys of [pipeline] together are a working pipeline for a role,name,experience,id CSV.
    text = CONFIG.read_text(encoding="utf-8")
    examples = {
        k.removeprefix("pipeline."): v[0]
        for k, v in commented_keys(text).items()
        # (not a file, a model or an image column the example CSV does not have)
        if k.startswith("pipeline.")
        and k not in ("pipeline.system_prompt_file", "pipeline.model", "pipeline.image_column")
    }
    lines = [f"{k} = {_toml(v)}" for k, v in examples.items()]
    cfg = tmp_path / "example.toml"
    cfg.write_text("[pipeline]\n" + "\n".join(lines) + "\n")
    (folders.inbox / "people.csv").write_text("id,role,name,experience\nA1,Engineer,Ada,10 years\n")
    r = run_batchd(folders.env(emulator.url, BATCHD_CONFIG=str(cfg)), "run", "--once")
    assert r.returncode == 0, r.stderr
    out = folders.outbox / "people"
    assert read_jsonl(out / "errors.jsonl") == []
    header, row = (out / "scores.csv").read_text().splitlines()[:2]
    assert header.startswith("custom_id,status,score,name,reason,")
    cid, status, score, name, *_ = row.split(",")
    assert (cid, status, name) == ("A1", "ok", "Ada") and 0 <= int(score) <= 100
    (call,) = emulator.calls
    assert call["messages"][-1]["content"] == "Role: Engineer\nCandidate: Ada\nExperience: 10 years"
    assert call["format"]["required"] == ["score", "reason"]


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)
