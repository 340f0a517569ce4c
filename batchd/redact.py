"""Text that is safe to show: credentials out of URLs, secrets out of errors, control characters escaped."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

#: key names whose values are never echoed (a misspelt ``api_kye`` still looks like a secret)
_SECRETISH = re.compile(r"(key|token|secret|passw|pwd|credential|auth)", re.IGNORECASE)
#: C0 and C1 controls and DEL: terminal escapes (clear line, set window title, ...) live here; and the
#: invisible and direction-changing characters (zero-width, bidi overrides and isolates, line and
#: paragraph separators, BOM) that make a file name read as another
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def redact_url(url: str) -> str:
    """``http://user:pass@host/x`` → ``http://***@host/x``; any other string comes back unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def host_of(url: str) -> str:
    """The ``host:port`` of a backend URL to show a person: no scheme, no ``user:password@`` (nor ``***@``)."""
    return url.split("://", 1)[-1].rsplit("@", 1)[-1]


def looks_secret(key: str) -> bool:
    return bool(_SECRETISH.search(key))


def escape_controls(text: str) -> str:
    """Control, zero-width and bidi characters as visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), so a
    file name can neither drive a terminal nor pass for another name."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
