"""Pipelines: how one CSV row becomes one chat request.

A pipeline is a system prompt, optional few-shot examples, a user-message
template with ``{column}`` placeholders, an id column, model options and an
optional JSON schema for structured output. The default pipeline lives in the
main config (``[pipeline]``, used for CSV files at the inbox root; there a
``system_prompt_file`` must be an absolute path); ``inbox/<name>/pipeline.toml``
defines another. Everything that can be checked without the CSV is checked
when the pipeline loads; the template's columns are checked against the CSV
header before any row is read (``check_columns``).
"""

from __future__ import annotations

import os
import string
import tomllib
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

import jsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from batchd.errors import ConfigError
from batchd.fsutil import UnsafeFile, read_beneath
from batchd.schemas import schema_problem

PIPELINE_FILE = "pipeline.toml"
#: a pipeline.toml or system prompt file is read whole; anything bigger is not a pipeline
MAX_PIPELINE_BYTES = 4 << 20
#: the columns batchd adds to ``scores.csv`` itself; a passthrough column or schema field may not reuse them
RESERVED_COLUMNS = ("custom_id", "status", "attempts", "prompt_tokens", "completion_tokens")
#: what a hostile pipeline.toml can make parsing, validating, serialising or hashing raise (nesting
#: deeper than the recursion limit, an integer over 64 bits, a value of the wrong type): the file's
#: error record, never the daemon's crash
HOSTILE_ERRORS: tuple[type[Exception], ...] = (RecursionError, OverflowError, TypeError, ValueError)


def hostile_reason(exc: BaseException) -> str:
    """One line about a hostile definition, naming no content of it."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, RecursionError) or "recursion" in text.lower() or "depth" in text.lower():
        return "nested too deeply"
    if "64-bit" in text or isinstance(exc, OverflowError):
        return "holds an integer too large (over 64 bits)"
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc']) or 'pipeline'}: {err['msg']}"
    return f"{type(exc).__name__}: {text[:200]}"


def pipeline_json(pipeline: Pipeline) -> str:
    """The pipeline as the journal keeps it; raises (``HOSTILE_ERRORS``) what orjson, and so the job-definition
    hash and the request prefix, cannot hold: nesting over 254 levels, integers over 64 bits."""
    return orjson.dumps(pipeline.model_dump(mode="json")).decode()


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
    #: who goes first (``batchd.schedule``): higher first; None = ``[schedule] default_priority``
    priority: int | None = Field(default=None, ge=-1000, le=1000)
    #: ``chat`` (a reply per row) or ``embed`` (a vector per row: ``/v1/embeddings``, ``embeddings.npy``)
    task: Literal["chat", "embed"] = "chat"
    #: embed: the column whose text is embedded (else ``user_template`` renders it from the row)
    input_column: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Pipeline:
        if self.user_template is not None:
            template_fields(self.user_template)
        if self.system_prompt_file and not self.system_prompt:
            # The [pipeline] table of the main config; folder pipelines are resolved by load_pipeline().
            if not Path(self.system_prompt_file).is_absolute():
                # Relative to what? Under systemd the working directory is /.
                raise ConfigError(
                    "pipeline.system_prompt_file",
                    f"must be an absolute path in the main config (got {self.system_prompt_file!r})",
                )
            try:
                self.system_prompt = Path(self.system_prompt_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError("system_prompt_file", str(exc)) from exc
            self.system_prompt_file = None
        if isinstance(self.format, dict):
            try:
                jsonschema.Draft202012Validator.check_schema(self.format)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.absolute_path) or "format"
                raise ConfigError("format", f"not a valid JSON schema at {where}: {exc.message}") from exc
            problem = schema_problem(self.format)
            if problem is not None:
                raise ConfigError("format", f"refused at {problem}")
            fields = list(self.format.get("properties") or {})
            if fields and self.score_field not in fields:
                raise ConfigError(
                    "score_field",
                    f"{self.score_field!r} is not a property of [format] (properties: {', '.join(fields)})",
                )
        else:
            fields = []
        for col in self.passthrough_columns:
            if col in RESERVED_COLUMNS or col in fields:
                raise ConfigError("passthrough_columns", f"{col!r} clashes with a scores.csv column of that name")
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
        """Fail before any row is read, naming the column, when the file lacks one the pipeline needs."""
        uses = [(f, f"user_template placeholder {{{f}}}") for f in template_fields(self.user_template or "")]
        uses += [(c, "passthrough_columns entry") for c in self.passthrough_columns]
        if self.id_column:
            uses.append((self.id_column, "id_column"))
        if self.input_column and self.task == "embed":  # only an embed pipeline reads it
            uses.append((self.input_column, "input_column"))
        known = set(header)
        for column, use in uses:
            if column not in known:
                near = get_close_matches(column, header, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ConfigError(
                    f"pipeline {self.name!r}",
                    f"column {column!r} ({use}) is not in the CSV header{hint} (columns: {', '.join(header)})",
                )

    def render_input(self, row: dict[str, str]) -> str:
        """An embed row's text: its ``input_column``, else the rendered template."""
        return row.get(self.input_column, "") if self.input_column else self.render_user(row)

    def render_user(self, row: dict[str, str]) -> str:
        if self.user_template is None:
            return "\n".join(f"{k}: {v}" for k, v in row.items())
        return self.user_template.format_map(row)


def template_fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError("user_template", f"cannot parse template: {exc}") from exc
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        # Attribute/index access ({a.b}, {a[0]}) and positions ({0}) would not name a column.
        if not field or field.isdigit() or not field.replace("_", "a").replace(" ", "a").replace("-", "a").isalnum():
            raise ConfigError(
                "user_template",
                f"placeholder {{{field}}} must name a column "
                "(letters, digits, _ - and spaces; write {{ and }} for literal braces)",
            )
        # A spec like {n:d} fails on some rows only (every CSV value is text): refuse it up front.
        if spec or conversion:
            raise ConfigError("user_template", f"placeholder {{{field}}} may not carry a format spec or conversion")
        fields.append(field)
    return fields


def load_pipeline(folder: Path) -> Pipeline:
    """Read ``folder/pipeline.toml``; any problem is a ConfigError naming the file."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(str(folder / PIPELINE_FILE), f"cannot read: {exc.strerror or exc}") from exc
    try:
        return load_pipeline_at(fd, folder)
    finally:
        os.close(fd)


def load_pipeline_at(dir_fd: int, folder: Path) -> Pipeline:
    """Read ``pipeline.toml`` (and its ``system_prompt_file``) through an open folder descriptor.

    Neither file may be a symlink, a hard link, anything but a regular file, or
    (the prompt) outside the folder: a group member must not be able to make
    batchd read a file they cannot read themselves. ``folder`` only names things
    in messages; the descriptor is what is read.
    """
    where = str(folder / PIPELINE_FILE)
    try:
        text = read_beneath(dir_fd, PIPELINE_FILE, MAX_PIPELINE_BYTES).decode("utf-8")
        data = tomllib.loads(text)
    except UnsafeFile as exc:
        raise ConfigError(where, f"refused: {exc.strerror}") from exc
    except OSError as exc:
        raise ConfigError(where, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(where, "cannot read: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(where, "not usable: nested too deeply") from exc
    data.setdefault("name", folder.name)
    unknown = sorted(set(data) - set(Pipeline.model_fields))
    if unknown:
        near = get_close_matches(unknown[0], list(Pipeline.model_fields), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{where}: {unknown[0]}", f"unknown key{hint}")
    prompt_file = data.pop("system_prompt_file", None)
    if prompt_file:
        if data.get("system_prompt"):
            raise ConfigError(f"{where}: system_prompt_file", "give system_prompt or system_prompt_file, not both")
        if not isinstance(prompt_file, str):
            raise ConfigError(f"{where}: system_prompt_file", "must be a file name")
        try:
            data["system_prompt"] = read_beneath(dir_fd, prompt_file, MAX_PIPELINE_BYTES).decode("utf-8")
        except UnsafeFile as exc:
            raise ConfigError(f"{where}: system_prompt_file", f"{prompt_file!r} refused: {exc.strerror}") from exc
        except OSError as exc:
            raise ConfigError(
                f"{where}: system_prompt_file", f"cannot read {prompt_file!r}: {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: system_prompt_file", "cannot read: not UTF-8 text") from exc
    try:
        pipeline = Pipeline.model_validate(data)
        pipeline_json(pipeline)
        return pipeline
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "pipeline"
        value = err.get("input")
        shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
        raise ConfigError(f"{where}: {key}", f"{err['msg']}{shown}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.key}", exc.problem) from exc
    except HOSTILE_ERRORS as exc:
        raise ConfigError(where, f"not usable: {hostile_reason(exc)}") from exc
