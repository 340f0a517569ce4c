"""Settings: one object, read once in ``cli.main()`` and passed down.

Sources, strongest first: command-line overrides (init kwargs), environment
``BATCHD_*`` (nested with ``__``), the TOML file (``$BATCHD_CONFIG``, default
``/etc/batchd/batchd.toml``), defaults.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from batchd.errors import ConfigError
from batchd.pipeline import Pipeline

DEFAULT_CONFIG = Path("/etc/batchd/batchd.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendSettings(_Section):
    kind: Literal["ollama", "openai", "embedded"] = "ollama"
    url: str = "http://127.0.0.1:11434"
    #: several hosts of the same kind; when set, ``url`` is ignored
    urls: list[str] = Field(default_factory=list)
    model: str = "gemma3:4b"
    lanes: int = Field(default=1, ge=1, le=256)
    timeout_seconds: float = Field(default=600.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=60.0, ge=0)
    keep_alive: str = "30m"
    api_key: str | None = Field(default=None, repr=False)
    api_key_file: Path | None = None
    allowed_models: list[str] = Field(default_factory=list)
    #: embedded backend: GGUF file; unset = Gemma 3 270M from its PyPI package
    model_path: Path | None = None
    threads: int | None = Field(default=None, ge=1)

    @field_validator("url", "urls")
    @classmethod
    def _http_only(cls, v: Any) -> Any:
        for u in [v] if isinstance(v, str) else v:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"{u!r} is not an http(s) URL")
        return v

    def hosts(self) -> list[str]:
        return [u.rstrip("/") for u in (self.urls or [self.url])]


class ContextSettings(_Section):
    mode: Literal["conversation", "isolated"] = "conversation"
    #: pinned for every call; unset = the model's own, capped at ``num_ctx_cap``
    num_ctx: int | None = Field(default=None, ge=256)
    num_ctx_cap: int = Field(default=8192, ge=256)
    trim_at: float = Field(default=0.75, gt=0.05, le=1.0)
    strategy: Literal["sliding", "hybrid", "aggressive"] = "sliding"
    keep_first: int = Field(default=1, ge=0)
    keep_last: int = Field(default=4, ge=0)
    #: completion headroom when a request sets no num_predict / max_tokens
    num_predict: int = Field(default=512, ge=1)


class WatchSettings(_Section):
    mode: Literal["auto", "inotify", "poll"] = "auto"
    stable_seconds: float = Field(default=2.0, ge=0)
    rescan_seconds: float = Field(default=60.0, gt=0)
    poll_seconds: float = Field(default=2.0, gt=0)
    ignore: list[str] = Field(default_factory=list)


class LimitsSettings(_Section):
    max_file_bytes: int = Field(default=2 * 1024**3, ge=1)
    max_lines: int = Field(default=1_000_000, ge=1)
    max_line_bytes: int = Field(default=1024**2, ge=64)


class VramSettings(_Section):
    source: Literal["auto", "nvml", "ollama", "none"] = "auto"
    high_water: float = Field(default=0.92, gt=0, le=1)
    low_water: float = Field(default=0.80, gt=0, le=1)
    gpu_index: int = Field(default=0, ge=0)


class LogSettings(_Section):
    target: Literal["auto", "journald", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    progress_every_percent: float = Field(default=5.0, gt=0, le=100)


class ApiSettings(_Section):
    listen: str | None = None
    token: str | None = Field(default=None, repr=False)
    max_upload_bytes: int = Field(default=512 * 1024**2, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BATCHD_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    inbox: Path = Path("/srv/batchd/inbox")
    outbox: Path = Path("/srv/batchd/outbox")
    state_dir: Path = Path("/var/lib/batchd")
    #: group that owns outbox files (the users of the shared folder); unset = process group
    group: str | None = None
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    backend: BackendSettings = Field(default_factory=BackendSettings)
    context: ContextSettings = Field(default_factory=ContextSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    vram: VramSettings = Field(default_factory=VramSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    pipeline: Pipeline = Field(default_factory=Pipeline)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `toml_file` in model_config alone does nothing: the source must be listed here.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_PATH.get("path")
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def model_for(self, pipeline: Pipeline | None) -> str:
        return (pipeline.model if pipeline and pipeline.model else None) or self.backend.model


# The TOML path is chosen by load_settings() before validation; a module-level slot
# because pydantic-settings calls settings_customise_sources as a classmethod.
_CONFIG_PATH: dict[str, Path | None] = {"path": None}


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from file + environment + overrides; ConfigError names the bad key."""
    path = config or Path(os.environ.get("BATCHD_CONFIG") or DEFAULT_CONFIG)
    explicit = config is not None or "BATCHD_CONFIG" in os.environ
    if path.exists():
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read config: {exc}") from exc
        _CONFIG_PATH["path"] = path
    elif explicit:
        raise ConfigError("BATCHD_CONFIG", f"{path} does not exist")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _config_error(exc) from exc
    finally:
        _CONFIG_PATH["path"] = None


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "settings"
    value = err.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    return ConfigError(key, f"{err['msg']}{shown}")
