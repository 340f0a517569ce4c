"""The one place that builds a backend from the settings: ``make_backend`` and the ``openai`` key.

``backends/`` never sees ``Settings``: each backend takes plain arguments, and this module reads
``backend.*`` (kind, hosts, timeouts, lanes, key file, model path) to choose one and fill them in.
The daemon, ``batchd doctor`` and ``preflight`` call it.
"""

from __future__ import annotations

from batchd.backends.base import Backend
from batchd.config import Settings
from batchd.errors import ConfigError


def make_backend(settings: Settings, url: str | None = None) -> Backend:
    """The backend the settings name; never falls back to another kind silently.

    Several ``backend.urls`` (and no single ``url`` asked for) give a ``MultiBackend``
    over one backend per host. The embedded backend has no host: urls do not apply.
    """
    b = settings.backend
    hosts = b.hosts()
    if url is None and len(hosts) > 1 and b.kind != "embedded":
        from batchd.backends.multi import MultiBackend

        return MultiBackend([make_backend(settings, h) for h in hosts])
    url = url or hosts[0]
    conns = max(4, b.lane_bounds()[1] * 2)
    if b.kind == "ollama":
        from batchd.backends.ollama import OllamaBackend

        return OllamaBackend(
            url=url,
            timeout=b.timeout_seconds,
            connect_timeout=b.connect_timeout_seconds,
            keep_alive=b.keep_alive,
            max_connections=conns,
            send_shift_false=b.shift == "off",
        )
    if b.kind == "openai":
        from batchd.backends.openai import OpenAIBackend

        return OpenAIBackend(
            url=url,
            timeout=b.timeout_seconds,
            connect_timeout=b.connect_timeout_seconds,
            api_key=api_key(settings),
            max_connections=conns,
        )
    if b.kind == "embedded":
        from batchd.backends.embedded import EmbeddedBackend

        # The default backend.model ("gemma3:4b") is not what runs here: name the GGUF unless told.
        named = b.model if "model" in b.model_fields_set else None
        return EmbeddedBackend(
            model_path=b.model_path, threads=b.threads, model_name=named, cache_dir=settings.state_dir / "models"
        )
    raise ConfigError("backend.kind", f"unknown backend {b.kind!r}")


def api_key(settings: Settings) -> str | None:
    """The bearer token for an ``openai`` server: ``api_key_file``'s content, else ``api_key``."""
    b = settings.backend
    if b.api_key_file is not None:
        try:
            return b.api_key_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError("backend.api_key_file", f"cannot read: {exc.strerror}") from exc
    return b.api_key
