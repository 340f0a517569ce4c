"""One POST to a webhook receiver (``publish.notify`` signs and journals it): the one place its HTTP
errors are caught. No redirects followed, no proxy from the environment, a hard timeout."""

from __future__ import annotations

import httpx

from batchd.redact import escape_controls


async def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """(status code, reason) of the answer, or (None, why) when none came."""
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            answer = await client.post(url, content=body, headers=headers)
        return answer.status_code, answer.reason_phrase
    except httpx.HTTPError as exc:
        return None, escape_controls(f"{type(exc).__name__}: {exc}")[:300]
