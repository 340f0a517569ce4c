"""The embedded backend's model identity: its GGUF file's sha256, cached by path, size and mtime.

Hashing a 250 MB GGUF takes ~0.5 s, an 8 GB one ~15 s: done once per file version, remembered in
memory and (with a cache folder) in ``gguf-sha256.json`` there, so a restart does not hash again.
A file replaced in place gets a new size or mtime, hence a new hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_MEMORY: dict[tuple[str, int, int], str] = {}
CACHE_FILE = "gguf-sha256.json"


def gguf_sha256(path: Path, cache_dir: Path | None = None) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _MEMORY:
        return _MEMORY[key]
    cache = cache_dir / CACHE_FILE if cache_dir is not None else None
    stored: dict[str, str] = {}
    if cache is not None:
        try:
            stored = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
    label = "|".join(map(str, key))
    digest = stored.get(label) if isinstance(stored, dict) else None
    if not isinstance(digest, str):
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        digest = h.hexdigest()
        if cache is not None:
            try:
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps({**stored, label: digest}), encoding="utf-8")
                os.replace(tmp, cache)
            except OSError:
                pass  # a read-only cache folder: hash again next start
    _MEMORY[key] = digest
    return digest
