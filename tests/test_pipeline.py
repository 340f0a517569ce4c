"""pipeline.toml loading: every key, and configuration errors that name what is wrong."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from batchd.config import load_settings
from batchd.errors import ConfigError, InputError
from batchd.intake.ingest import Limits, pipeline_prefix, read_csv
from batchd.pipeline import Pipeline, load_pipeline

LIMITS = Limits(max_lines=1000, max_line_bytes=1 << 20)
FULL = """
model = "gemma3:270m"
mode = "conversation"
system_prompt_file = "rubric.md"
user_template = "Title: {title}\\nYears: {years}"
id_column = "id"
score_field = "score"
passthrough_columns = ["name"]
reply_retries = 3
examples = [{ user = "Title: x\\nYears: 1", assistant = '{"score": 2, "why": "little"}' }]

[options]
temperature = 0
seed = 7
num_predict = 64
top_k = 20

[format]
type = "object"
required = ["score", "why"]
[format.properties.score]
type = "integer"
minimum = 1
maximum = 10
[format.properties.why]
type = "string"
"""


def _folder(tmp_path: Path, toml: str, rubric: str | None = "Be strict.") -> Path:
    folder = tmp_path / "jobs"
    folder.mkdir(exist_ok=True)
    (folder / "pipeline.toml").write_text(toml, encoding="utf-8")
    if rubric is not None:
        (folder / "rubric.md").write_text(rubric, encoding="utf-8")
    return folder


def _error(tmp_path: Path, toml: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_pipeline(_folder(tmp_path, toml))
    return info.value


def test_every_key_loads(tmp_path: Path) -> None:
    p = load_pipeline(_folder(tmp_path, FULL))
    assert (p.name, p.model, p.mode, p.id_column, p.reply_retries) == ("jobs", "gemma3:270m", "conversation", "id", 3)
    assert p.system_prompt == "Be strict." and p.system_prompt_file is None
    assert p.passthrough_columns == ["name"] and p.options["top_k"] == 20
    assert p.prefix_messages() == [
        {"role": "system", "content": "Be strict."},
        {"role": "user", "content": "Title: x\nYears: 1"},
        {"role": "assistant", "content": '{"score": 2, "why": "little"}'},
    ]
    prefix = pipeline_prefix(p, "fallback")
    assert prefix["model"] == "fallback"  # the caller resolves the model (Settings.model_for)
    assert prefix["max_tokens"] == 64 and prefix["seed"] == 7 and prefix["options"] == {"top_k": 20}
    assert prefix["response_format"]["json_schema"]["schema"]["properties"]["score"]["maximum"] == 10
    assert p.render_user({"title": "DBA", "years": "4", "name": "x"}) == "Title: DBA\nYears: 4"
    # What the journal stores must come back identical.
    assert Pipeline.model_validate_json(p.model_dump_json()) == p


def test_missing_template_column_is_named_at_header_time() -> None:
    p = Pipeline(user_template="{title} with {yaers} years", id_column="id")
    with pytest.raises(InputError) as info:
        read_csv(io.BufferedReader(io.BytesIO(b"id,title,years\n1,a,2\n")), p, LIMITS)
    msg = info.value.message
    assert "'yaers'" in msg and "user_template" in msg and "did you mean 'years'" in msg
    assert info.value.code == "pipeline_mismatch"


@pytest.mark.parametrize(
    ("kwargs", "column", "use"),
    [
        ({"id_column": "cid"}, "cid", "id_column"),
        ({"passthrough_columns": ["email"]}, "email", "passthrough_columns"),
    ],
)
def test_other_missing_columns_are_named(kwargs: dict, column: str, use: str) -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline(**kwargs).check_columns(["id", "title"])
    assert f"'{column}'" in info.value.problem and use in info.value.problem


def test_short_row_is_an_error_for_that_row_only() -> None:
    p = Pipeline(user_template="{a} {b}")
    _, rows = read_csv(io.BufferedReader(io.BytesIO(b"a,b\n1,2\n3\n4,5\n")), p, LIMITS)
    got = list(rows)
    assert [r.body is None for r in got] == [False, True, False]
    assert got[1].error is not None and "missing columns" in got[1].error["message"] and got[1].line == 3


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{a.b}", "must name a column"),
        ("{a[0]}", "must name a column"),
        ("{0}", "must name a column"),
        ("{}", "must name a column"),
        ("{years:d}", "format spec"),
        ("{name!r}", "format spec"),
        ("unclosed {name", "cannot parse"),
    ],
)
def test_bad_templates_fail_at_load(tmp_path: Path, template: str, words: str) -> None:
    err = _error(tmp_path, f"user_template = {template!r}\n".replace("'", '"'))
    assert "pipeline.toml" in err.key and "user_template" in err.key and words in err.problem


def test_literal_braces_are_fine() -> None:
    assert (
        Pipeline(user_template='JSON like {{"a": 1}} for {name}').render_user({"name": "x"})
        == 'JSON like {"a": 1} for x'
    )


def test_malformed_toml_names_the_file_and_line(tmp_path: Path) -> None:
    err = _error(tmp_path, 'user_template = "unterminated\n')
    assert err.key.endswith("pipeline.toml") and "line 1" in err.problem


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ('user_tempalte = "x"\n', "user_tempalte", "did you mean 'user_template'"),
        ('mode = "chatty"\n', "mode", "conversation"),
        ("reply_retries = 99\n", "reply_retries", "10"),
        ('options = "hot"\n', "options", "dictionary"),
        ('[format]\ntype = "objekt"\n', "format", "not a valid JSON schema"),
        ('[format]\ntype = "object"\nproperties = { rating = { type = "number" } }\n', "score_field", "rating"),
        ('passthrough_columns = ["status"]\n', "passthrough_columns", "clashes"),
        ('system_prompt = "a"\nsystem_prompt_file = "rubric.md"\n', "system_prompt_file", "not both"),
        ('system_prompt_file = "../../etc/passwd"\n', "system_prompt_file", "inside the pipeline folder"),
        ('system_prompt_file = "nope.md"\n', "system_prompt_file", "nope.md"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, toml: str, key: str, words: str) -> None:
    err = _error(tmp_path, toml)
    assert err.key.endswith(key) and str(tmp_path) in err.key
    assert words in err.problem


def test_main_config_pipeline_for_the_inbox_root(tmp_path: Path) -> None:
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Root rubric.", encoding="utf-8")
    cfg = tmp_path / "batchd.toml"
    cfg.write_text(
        f'[pipeline]\nuser_template = "Rate {{name}}"\nsystem_prompt_file = "{rubric}"\n'
        'passthrough_columns = ["name"]\n[pipeline.format]\ntype = "object"\n'
        '[pipeline.format.properties.score]\ntype = "integer"\n',
        encoding="utf-8",
    )
    s = load_settings(config=cfg)
    assert s.pipeline.system_prompt == "Root rubric." and s.pipeline.name == "default"
    assert s.pipeline.prefix_messages()[0]["content"] == "Root rubric."
    cfg.write_text('[pipeline]\nuser_template = "Rate {name.upper}"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(config=cfg)
    assert "user_template" in info.value.key
