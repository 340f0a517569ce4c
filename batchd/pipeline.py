"""Pipelines: how one CSV row becomes one chat request.

A pipeline is a system prompt, optional few-shot examples, a user-message
template with ``{column}`` placeholders, an id column, model options and an
optional JSON schema for structured output. The default pipeline lives in the
main config (``[pipeline]``); ``inbox/<name>/pipeline.toml`` defines another.
"""

from __future__ import annotations

import string
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from batchd.errors import ConfigError

PIPELINE_FILE = "pipeline.toml"


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    user: str
    assistant: str


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    model: str | None = None
    mode: Literal["conversation", "isolated"] | None = None
    system_prompt: str = ""
    system_prompt_file: str | None = None
    user_template: str | None = None
    id_column: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    format: dict[str, Any] | Literal["json"] | None = None
    score_field: str = "score"
    passthrough_columns: list[str] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)
    reply_retries: int = Field(default=2, ge=0, le=10)

    @model_validator(mode="after")
    def _template_parses(self) -> Pipeline:
        if self.user_template is not None:
            template_fields(self.user_template)
        return self

    def prefix_messages(self) -> list[dict[str, str]]:
        """System prompt and few-shot examples: byte-identical for every row."""
        messages: list[dict[str, str]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        for ex in self.examples:
            messages.append({"role": "user", "content": ex.user})
            messages.append({"role": "assistant", "content": ex.assistant})
        return messages

    def check_columns(self, header: list[str]) -> None:
        """Fail at load time, naming the column, when the template needs one the file lacks."""
        wanted = set(template_fields(self.user_template or ""))
        wanted.update(self.passthrough_columns)
        if self.id_column:
            wanted.add(self.id_column)
        missing = sorted(wanted - set(header))
        if missing:
            raise ConfigError(
                f"pipeline {self.name!r}",
                f"column {missing[0]!r} is not in the CSV header (columns: {', '.join(header)})",
            )

    def render_user(self, row: dict[str, str]) -> str:
        if self.user_template is None:
            return "\n".join(f"{k}: {v}" for k, v in row.items())
        return self.user_template.format_map(row)


def template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError("pipeline.user_template", f"cannot parse template: {exc}") from exc
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if not field or not field.replace("_", "a").replace(" ", "a").replace("-", "a").isalnum():
            raise ConfigError("pipeline.user_template", f"placeholder {{{field}}} must name a column")
        fields.append(field)
    return fields


def load_pipeline(folder: Path) -> Pipeline:
    """Read ``folder/pipeline.toml``; any problem is a ConfigError naming the file."""
    path = folder / PIPELINE_FILE
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(where, f"cannot read: {exc}") from exc
    data.setdefault("name", folder.name)
    prompt_file = data.get("system_prompt_file")
    if prompt_file:
        target = (folder / prompt_file).resolve()
        if folder.resolve() not in target.parents:
            raise ConfigError(where, "system_prompt_file must stay inside the pipeline folder")
        try:
            data["system_prompt"] = target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(where, f"system_prompt_file: {exc}") from exc
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "pipeline"
        raise ConfigError(f"{where}: {key}", err["msg"]) from exc
    except ConfigError as exc:
        raise ConfigError(where, exc.message) from exc
