"""What ``batchd run`` refuses at start-up beyond the ``Settings`` model; ``batchd doctor`` asks the same.

Settings that parse but cannot work (an API address that is not ``host:port``,
an exposed API without a token, a key file nobody can read) stop ``run`` with
exit 2 before anything starts; ``doctor`` calls the same function, so it can
never call valid what ``run`` refuses. Add a check here, not in either caller.
"""

from __future__ import annotations

from batchd.config import Settings


def check(settings: Settings) -> None:
    """Raise ConfigError (naming the key) for the first setting ``run`` could not start with."""
    if settings.api.listen:
        from batchd.api.listen import check_listen, ensure_installed

        check_listen(settings)
        ensure_installed()
    if settings.backend.kind == "openai" and settings.backend.api_key_file is not None:
        from batchd.run.connect import api_key

        api_key(settings)
