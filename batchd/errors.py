"""The one exception tree of batchd, grouped by what the caller does next.

    BatchdError
    ├── ConfigError                 exit 2 with one line naming the key (key, problem)
    ├── TransientError              retry or pause; never a verdict on the request
    │   ├── BackendUnavailable      connection refused / reset: pause the job, no attempt burned
    │   ├── BackendTimeout          the call took too long: retried, counts an attempt
    │   ├── BackendBusy             429 / 503: retry after `retry_after`
    │   └── BackendServerError      5xx: retry with backoff (status_code)
    │       └── BackendOutOfMemory  runner crashed / OOM: trim hard, back off, retry
    ├── RequestError                permanent for one request: to errors.jsonl (status_code, code)
    │   ├── ContextLengthExceeded   prompt larger than the window even after trimming
    │   ├── BadRequest              other 400s from the server
    │   ├── Unsupported             the backend cannot do what the line asks (tools, images, embeddings)
    │   └── InvalidReply            reply not JSON / fails the schema after retries
    ├── JobError                    the whole job stops at once (job_id)
    │   ├── ModelNotFound           404: 170,000 copies of it help nobody
    │   └── Unauthorized            401/403: the credentials are refused
    ├── InputError                  a dropped file that cannot become a job (to the outbox)
    │   └── LineError               one bad line; valid lines still run (line, code)
    └── StorageError                the journal or the outbox cannot be written (disk full)

httpx exceptions are translated in the backend modules only, sqlite3 ones in the
journal only; everyone else sees these classes.
"""

from __future__ import annotations

import errno
from typing import Any


class BatchdError(Exception):
    """Root of every error batchd raises on purpose."""

    code = "batchd_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def as_record(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class ConfigError(BatchdError):
    code = "config_error"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class TransientError(BatchdError):
    code = "transient"
    #: name used to count retries by cause in metrics.json
    cause = "transient"


class BackendUnavailable(TransientError):
    code = "backend_unavailable"
    cause = "unavailable"


class BackendTimeout(TransientError):
    code = "timeout"
    cause = "timeout"


class BackendBusy(TransientError):
    code = "server_busy"
    cause = "busy"

    def __init__(self, message: str, *, status_code: int = 503, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class BackendServerError(TransientError):
    code = "server_error"
    cause = "server_error"

    def __init__(self, message: str, *, status_code: int = 500) -> None:
        super().__init__(message)
        self.status_code = status_code


class BackendOutOfMemory(BackendServerError):
    code = "out_of_memory"
    cause = "oom"


class RequestError(BatchdError):
    code = "request_error"

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        if code:
            self.code = code


class ContextLengthExceeded(RequestError):
    """``n_ctx``: the window the server applied; ``n_prompt_tokens``: its count of the prompt
    (llama.cpp's server and Ollama >= 0.30.1 say both; None where the server did not)."""

    code = "context_length_exceeded"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = 400,
        n_ctx: int | None = None,
        n_prompt_tokens: int | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.n_ctx = n_ctx
        self.n_prompt_tokens = n_prompt_tokens


class BadRequest(RequestError):
    code = "bad_request"


class Unsupported(RequestError):
    """The line asks for something this backend or model cannot do: failed clearly, never dropped."""

    code = "unsupported"


class InvalidReply(RequestError):
    code = "invalid_reply"

    def __init__(self, message: str, *, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw


class JobError(BatchdError):
    code = "job_error"

    def __init__(self, message: str, *, job_id: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status_code = status_code


class ModelNotFound(JobError):
    code = "model_not_found"


class Unauthorized(JobError):
    """401/403: a wrong or missing API key (or a proxy in front) refuses every request alike."""

    code = "unauthorized"


class InputError(BatchdError):
    """A file in the inbox that cannot become a job, or not all of it."""

    code = "invalid_input"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code
        self.path = path


class LineError(InputError):
    def __init__(self, message: str, *, line: int, code: str = "invalid_line") -> None:
        super().__init__(message, code=code)
        self.line = line

    def as_record(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "line": self.line}


class StorageError(BatchdError):
    """``path``: the file or folder that refused; ``full``: out of space or quota (ENOSPC, EDQUOT,
    SQLite's "disk is full"), as against unwritable (EIO, EROFS, a share gone, a read-only journal)."""

    code = "storage_error"

    def __init__(self, message: str, *, path: str | None = None, full: bool = False, reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.full = full
        #: the cause in a few words ("No space left on device", "disk I/O error"); the message if unset
        self.reason = reason or message

    @classmethod
    def from_os(cls, message: str, exc: OSError, path: object = None) -> StorageError:
        """An ``OSError`` met while writing ``path`` (its ``filename`` when not given)."""
        where = path if path is not None else exc.filename
        return cls(
            f"{message}: {exc}",
            path=str(where) if where is not None else None,
            full=exc.errno in FULL_ERRNOS,
            reason=exc.strerror or str(exc),
        )


#: the errnos that mean "no space" (the work waits for space) rather than "cannot write here"
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
