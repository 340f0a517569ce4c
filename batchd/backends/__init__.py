"""Backends: one module per server protocol, all behind ``base.Backend``."""

from __future__ import annotations

from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.errors import ConfigError


def make_backend(settings: Settings, url: str | None = None) -> Backend:
    """The backend the settings name; never falls back to another kind silently."""
    b = settings.backend
    url = url or b.hosts()[0]
    conns = max(4, b.lanes * 2)
    if b.kind == "ollama":
        from batchd.backends.ollama import OllamaBackend

        return OllamaBackend(url=url, timeout=b.timeout_seconds, connect_timeout=b.connect_timeout_seconds,
                             keep_alive=b.keep_alive, max_connections=conns)
    if b.kind == "openai":
        from batchd.backends.openai import OpenAIBackend

        return OpenAIBackend(url=url, timeout=b.timeout_seconds, connect_timeout=b.connect_timeout_seconds,
                             api_key=_api_key(settings), max_connections=conns)
    if b.kind == "embedded":
        from batchd.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(model_path=b.model_path, threads=b.threads, model_name=b.model)
    raise ConfigError("backend.kind", f"unknown backend {b.kind!r}")


def _api_key(settings: Settings) -> str | None:
    b = settings.backend
    if b.api_key_file is not None:
        try:
            return b.api_key_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError("backend.api_key_file", f"cannot read: {exc.strerror}") from exc
    return b.api_key
