"""Settings: one object, read once in ``cli.main()`` and passed down.

Sources, strongest first: overrides passed to ``load_settings()`` (tests; the
command line itself only chooses the file, ``--config``), environment
``BATCHD_*`` (nested with ``__``; a list setting takes JSON or a
comma-separated list), the TOML file (``$BATCHD_CONFIG``, default
``/etc/batchd/batchd.toml``), defaults.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from batchd.errors import ConfigError
from batchd.keepalive import encode_keep_alive
from batchd.pipeline import Pipeline
from batchd.redact import looks_secret

DEFAULT_CONFIG = Path("/etc/batchd/batchd.toml")
ENV_PREFIX = "BATCHD_"
#: ``BATCHD_*`` variables that are not settings: the config path, install.sh's and the tests' knobs
OTHER_ENV = frozenset({"CONFIG", "PIP_ARGS", "INSTALL_EXTRAS", "PYTHON", "RELIABILITY_SCALE", "SYSTEM_TESTS"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendSettings(_Section):
    kind: Literal["ollama", "openai", "embedded"] = "ollama"
    url: str = "http://127.0.0.1:11434"
    #: several hosts of the same kind; when set, ``url`` is ignored
    urls: list[str] = Field(default_factory=list)
    model: str = "gemma3:4b"
    #: requests in flight at once: an integer pins it, "auto" lets ``batchd.run.lanes`` find the server's knee
    lanes: int | Literal["auto"] = "auto"
    #: bounds for "auto" (a pinned integer ignores them); lanes_max unset = 64 per host, at most 256
    lanes_min: int = Field(default=1, ge=1, le=256)
    lanes_max: int | None = Field(default=None, ge=1, le=256)
    timeout_seconds: float = Field(default=600.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_seconds: float = Field(default=1.0, ge=0)
    backoff_max_seconds: float = Field(default=60.0, ge=0)
    #: seconds (a number; negative: forever) or a Go duration ("30m", "1h30m"); see batchd.keepalive
    keep_alive: int | float | str = "30m"
    #: Ollama ``shift``: "off" sends shift=false (an answer that fills the window stops with done_reason
    #: length, which batchd sees); "server" sends none: the server's default (on), so on Ollama >= 0.30
    #: other clients that send none do not reload the model back and forth (README: shared Ollama)
    shift: Literal["off", "server"] = "off"
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

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: Any) -> Any:
        return encode_keep_alive(v)  # Ollama answers 400 to every request with a bad one

    @field_validator("lanes", mode="before")
    @classmethod
    def _lanes(cls, v: Any) -> Any:
        text = str(v).strip().lower()
        if text == "auto":
            return "auto"
        if isinstance(v, bool) or not text.isdigit() or not 1 <= int(text) <= 256:
            raise ValueError('lanes is an integer from 1 to 256, or "auto"')
        return int(text)

    @model_validator(mode="after")
    def _lane_bounds(self) -> BackendSettings:
        if self.lanes_max is not None and self.lanes_min > self.lanes_max:
            raise ValueError(f"lanes_min ({self.lanes_min}) is above lanes_max ({self.lanes_max})")
        return self

    def hosts(self) -> list[str]:
        return [u.rstrip("/") for u in (self.urls or [self.url])]

    @property
    def auto_lanes(self) -> bool:
        return self.lanes == "auto"

    def lane_bounds(self) -> tuple[int, int]:
        """(min, max) requests in flight: a pinned integer is both; the embedded model serves one at a time."""
        if self.lanes != "auto":
            return self.lanes, self.lanes
        if self.kind == "embedded":
            return 1, 1
        top = self.lanes_max or min(256, 64 * len(self.hosts()))
        return min(self.lanes_min, top), top


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
    #: security (issue 14): a file fails after this many invalid lines; the rest is summarised in one record
    max_invalid_lines: int = Field(default=1000, ge=0)
    #: issue 22: requests one inbox member (the claimed file's owner uid) may have queued or running at
    #: once, over all their jobs; a file that would go over fails with an error record. None: no limit
    max_queued_requests_per_owner: int | None = Field(default=None, ge=1)
    # -- images (issue 28) -------------------------------------------------------------
    #: one image's decoded size at most (a ``data:`` URI in an ``image_url`` part); lines must also fit max_line_bytes
    max_image_bytes: int = Field(default=8 * 1024**2, ge=1)
    #: images in one request at most
    max_images_per_request: int = Field(default=8, ge=0)


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
    # -- security (issue 14) -----------------------------------------------------------
    #: Host names (besides the listen address and loopback) this API answers to; "*" = any
    allowed_hosts: list[str] = Field(default_factory=list)
    #: uploads and the batches made from them (with their outputs) are deleted this long after creation
    retention_days: float = Field(default=30.0, gt=0)
    #: all API uploads and outputs together; a new upload over it is refused (507)
    max_stored_bytes: int = Field(default=20 * 1024**3, ge=1)


class MetricsSettings(_Section):
    """Prometheus exposition (``prom.py``); both outputs are off unless set."""

    #: ``host:port`` for ``GET /metrics``; a bare ``port`` (or ``:port``) listens on 127.0.0.1
    listen: str | None = None
    #: a node_exporter textfile-collector file (``*.prom``), rewritten atomically
    textfile: Path | None = None
    #: how often the textfile is rewritten and the journal-derived gauges refreshed
    interval_seconds: float = Field(default=5.0, ge=0.5)


class StatusPageSettings(_Section):
    """The live status page in the outbox root (``statuspage.py``)."""

    enabled: bool = True
    #: rewritten at most this often, and at once when a job changes state
    interval_seconds: float = Field(default=3.0, ge=0.5)
    #: finished jobs listed under the running and queued ones
    recent: int = Field(default=20, ge=0, le=500)


class WatchdogSettings(_Section):
    """The progress watchdog of a running job (``run/stall.py``)."""

    #: no request finished for this long while the backend answers and requests wait: log
    #: ``job_stalled`` and restart the job from the journal; unset = 10 x the p99 latency, at least 120 s
    stall_seconds: float | None = Field(default=None, gt=0)


class ScheduleSettings(_Section):
    """Who goes first (``batchd.schedule``)."""

    #: ``fair``: priority, then aging, then smallest remaining work; ``fifo``: claim order, no preemption
    policy: Literal["fair", "fifo"] = "fair"
    #: a job with no priority of its own or from its pipeline (files at the inbox root, API batches)
    default_priority: int = Field(default=0, ge=-1000, le=1000)
    #: a queued job waiting longer than this goes before the smaller jobs of its priority
    max_wait_minutes: float = Field(default=60.0, gt=0)


class PreviewSettings(_Section):
    """A first look at a running job (``outbox/STEM.preview/``) and fail-fast."""

    #: published after this many answers (and the fail-fast window's size); 0 = no preview, no fail-fast
    rows: int = Field(default=100, ge=0)
    #: refreshed this often after the first; 0 = only the first
    interval_minutes: float = Field(default=15.0, ge=0)
    #: a window of ``rows`` answers failing above this share with one error code pauses the job
    fail_fast_ratio: float = Field(default=0.95, gt=0, le=1.0)


class NotifySettings(_Section):
    """A word when a job ends: a signed webhook (Standard Webhooks) and/or a command."""

    webhook_url: str | None = None
    #: holds the ``whsec_…`` secret (base64 after the prefix)
    webhook_secret_file: Path | None = None
    #: run per final state with BATCHD_* variables (an argv: a string is split like a shell would)
    command: str | list[str] | None = None
    command_timeout_seconds: float = Field(default=30.0, gt=0)
    #: a webhook not delivered by then is given up
    max_age_hours: float = Field(default=24.0, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, v: Any) -> Any:
        if v is not None and not str(v).startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
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
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    status_page: StatusPageSettings = Field(default_factory=StatusPageSettings)
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)

    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    preview: PreviewSettings = Field(default_factory=PreviewSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    pipeline: Pipeline = Field(default_factory=Pipeline)

    @field_validator("inbox", "outbox", "state_dir", mode="before")
    @classmethod
    def _absolute_folder(cls, v: Any) -> Any:
        # Path("") is Path("."): an empty BATCHD_INBOX= would quietly mean "wherever we were started".
        if isinstance(v, (str, Path)) and (not str(v).strip() or not Path(v).is_absolute()):
            raise ValueError("must be an absolute folder path")
        return v

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
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        path = _CONFIG_PATH.get("path")
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def model_for(self, pipeline: Pipeline | None) -> str:
        return (pipeline.model if pipeline and pipeline.model else None) or self.backend.model

    @property
    def journal_path(self) -> Path:
        """The journal's SQLite file (``state_dir/journal.sqlite3``): the one place that names it."""
        return self.state_dir / "journal.sqlite3"


# The TOML path is chosen by load_settings() before validation; a module-level slot
# because pydantic-settings calls settings_customise_sources as a classmethod.
_CONFIG_PATH: dict[str, Path | None] = {"path": None}


def config_path(config: Path | None = None) -> Path:
    """The TOML file ``load_settings(config)`` reads (it may not exist)."""
    return config or Path(os.environ.get("BATCHD_CONFIG") or DEFAULT_CONFIG)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from file + environment + overrides; ConfigError names the bad key."""
    path = config_path(config)
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
    except SettingsError as exc:
        raise _env_error(exc) from exc
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - exit 2, never a traceback: the unit does not restart on 2
        raise ConfigError("settings", f"{type(exc).__name__}: {exc}") from exc
    finally:
        _CONFIG_PATH["path"] = None


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "settings"
    value = err.get("input")
    # Never echo a value that may be a secret: a misspelt key's (``api_kye``) or a secret-looking key's.
    hidden = err.get("type") == "extra_forbidden" or looks_secret(key)
    shown = "" if isinstance(value, dict) or value is None or hidden else f" (got {value!r})"
    msg = str(err["msg"]).removeprefix("Value error, ")  # our own validators' text, without pydantic's tag
    return ConfigError(key, f"{msg}{shown}")


# -- the environment --------------------------------------------------------------------------


def _is_str_list(annotation: Any) -> bool:
    return get_origin(annotation) is list and get_args(annotation) in ((str,), ())


class _BadEnvValue(ValueError):
    def __init__(self, key: str, value: str, reason: str) -> None:
        super().__init__(reason)
        self.key, self.value, self.reason = key, value, reason


class _EnvSource(EnvSettingsSource):
    """``BATCHD_*`` variables; a list setting also takes ``a,b,c`` (systemd drop-ins, shells).

    pydantic-settings reads complex values as JSON only, and a value that is not JSON
    escapes as a ``SettingsError`` traceback (exit 1, which the unit restarts forever).
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        try:
            # pydantic-settings itself passes None here (explode_env_vars), despite its annotation.
            return super().decode_complex_value(field_name, field, value)  # type: ignore[arg-type]
        except ValueError as exc:
            if field is not None and _is_str_list(field.annotation) and isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            raise _BadEnvValue(field_name, str(value), f"not valid JSON ({exc})") from exc

    def explode_env_vars(self, field_name: str, field: FieldInfo, env_vars: Mapping[str, str | None]) -> dict[str, Any]:
        exploded = super().explode_env_vars(field_name, field, env_vars)
        # An empty value is never decoded above: for a list it means "no entries".
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            for key, value in exploded.items():
                sub = section.model_fields.get(key)
                if value == "" and sub is not None and _is_str_list(sub.annotation):
                    exploded[key] = []
        return exploded


def _env_error(exc: SettingsError) -> ConfigError:
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, _BadEnvValue):
        cause = cause.__cause__
    if cause is None:
        return ConfigError("environment", f"{exc}: {exc.__cause__}" if exc.__cause__ else str(exc))
    names = [
        k
        for k, v in os.environ.items()
        if k.upper().startswith(ENV_PREFIX) and k.upper().endswith(f"__{cause.key.upper()}") and v == cause.value
    ]
    return ConfigError(names[0] if names else cause.key, cause.reason)


def env_names() -> list[str]:
    """Every ``BATCHD_*`` name that sets something (nested ones one level deep)."""
    names = [f"{ENV_PREFIX}{n}" for n in sorted(OTHER_ENV)]
    for name, field in Settings.model_fields.items():
        names.append(f"{ENV_PREFIX}{name.upper()}")
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names += [f"{ENV_PREFIX}{name.upper()}__{key.upper()}" for key in section.model_fields]
    return names


def unknown_env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per ``BATCHD_*`` variable that names no setting (it would be ignored silently).

    A misspelt key inside a known section (``BATCHD_BACKEND__LANEZ``) is already an error.
    """
    known = env_names()
    out = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        head = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if head in Settings.model_fields or head.upper() in OTHER_ENV:
            continue
        near = get_close_matches(name.upper(), known, n=1, cutoff=0.75)
        hint = f" (did you mean {near[0]}?)" if near else ""
        out.append(f"unknown environment variable {name} is ignored{hint}")
    return out
