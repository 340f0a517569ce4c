"""The ASGI app: OpenAI's ``/v1/files`` and ``/v1/batches`` routes over ``BatchService``.

Every handler is ``async def`` on purpose: the journal connection belongs to
the daemon's event-loop thread, and FastAPI would run plain ``def`` handlers
in a thread pool. Bodies are read by hand with a byte limit (never by FastAPI's
unbounded body parsing); ids are checked against their format before any
look-up; the bearer token is checked for every path, known or not.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from batchd.api.batches import ApiError, BatchService
from batchd.api.guard import RequestGuard
from batchd.api.models import BATCH_ID, FILE_ID, BatchCreate, FileDeleted, Page, error_body, new_file_id
from batchd.api.uploads import UploadError, receive_upload
from batchd.errors import BatchdError

#: JSON request bodies (batch creation) are small; anything bigger is a mistake or an attack
MAX_JSON_BYTES = 64 * 1024
#: multipart framing and the purpose field on top of the file itself
MULTIPART_SLACK = 64 * 1024


def create_app(
    service: BatchService, *, token: str | None, listen_host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = ()
) -> ASGIApp:
    app = FastAPI(title="batchd", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return _error(exc.status, exc.message, code=exc.code, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _bad_query(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        param = str(first.get("loc", ["", "?"])[-1])
        return _error(400, f"{param}: {first.get('msg', 'invalid')}", param=param)

    @app.exception_handler(BatchdError)
    async def _batchd_error(_: Request, exc: BatchdError) -> Response:
        return _error(500, exc.message, type_="server_error", code=exc.code)

    # -- files ------------------------------------------------------------------------

    @app.post("/v1/files")
    async def upload_file(request: Request) -> Response:
        limit = service.upload_limit()
        declared = _content_length(request)
        if declared is not None and declared > limit + MULTIPART_SLACK:
            raise ApiError(413, f"upload is larger than api.max_upload_bytes ({limit:,})", param="file")
        service.room_for(declared or 0)
        file_id = new_file_id()
        try:
            up = await receive_upload(
                request.stream(),
                content_type=request.headers.get("content-type", ""),
                folder=service.uploads,
                file_id=file_id,
                limit=limit,
            )
        except UploadError as exc:
            raise ApiError(exc.status, exc.message, param=exc.param) from exc
        except ClientDisconnect as exc:  # the part file is already gone; nobody reads this answer
            raise ApiError(400, "client went away during the upload") from exc
        try:
            service.room_for(up.size)  # counted while it streamed in: a chunked body declares nothing
        except ApiError:
            if up.path is not None:
                up.path.unlink(missing_ok=True)
            raise
        if up.fields.get("purpose") != "batch":
            if up.path is not None:
                up.path.unlink(missing_ok=True)
            raise ApiError(400, "purpose must be 'batch'", param="purpose")
        return _json(service.add_upload(up, file_id=file_id))

    @app.get("/v1/files")
    async def list_files(limit: int = Query(100, ge=1, le=10000), after: str | None = None) -> Response:
        if after is not None:
            _check(after, "file")
        service.retention.expire()
        data, more = service.list_files(after=after, limit=limit)
        return _json(_page(data, more))

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> Response:
        rec = service.file_record(_check(file_id, "file"))
        obj = service.file_object(rec)
        assert obj is not None
        return _json(obj)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        content = service.content(service.file_record(_check(file_id, "file")))
        return StreamingResponse(
            content.chunks, media_type="application/octet-stream", headers={"content-length": str(content.size)}
        )

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str) -> Response:
        rec = service.file_record(_check(file_id, "file"))
        service.delete_file(rec)
        return _json(FileDeleted(id=rec.id))

    # -- batches ------------------------------------------------------------------------

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> Response:
        raw = await _json_body(request)
        try:
            body = BatchCreate.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = str(first["loc"][0]) if first["loc"] else None
            raise ApiError(400, f"{param}: {first['msg']}", param=param) from exc
        _check(body.input_file_id, "file", param="input_file_id")
        return _json(service.create_batch(body))

    @app.get("/v1/batches")
    async def list_batches(limit: int = Query(20, ge=1, le=100), after: str | None = None) -> Response:
        if after is not None:
            _check(after, "batch")
        service.retention.expire()
        data, more = service.list_batches(after=after, limit=limit)
        return _json(_page(data, more))

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> Response:
        return _json(service.batch_object(service.batch_record(_check(batch_id, "batch"))))

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> Response:
        return _json(await service.cancel(service.batch_record(_check(batch_id, "batch"))))

    inner: ASGIApp = BearerAuth(app, token) if token else app
    # Outermost: a browser's cross-site or rebound request is refused before anything else looks at it.
    return RequestGuard(inner, listen_host=listen_host, allowed_hosts=allowed_hosts)


class BearerAuth:
    """``Authorization: Bearer <api.token>`` on every request, compared in constant time."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._ok(dict(scope.get("headers") or [])):
            response = _error(
                401,
                "Missing or invalid bearer token (api.token)",
                type_="invalid_request_error",
                code="invalid_api_key",
            )
            response.headers["www-authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _ok(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        # compare_digest even for a wrong scheme, so timing says nothing about which part failed
        return hmac.compare_digest(given.strip(), self.token) and scheme.lower() == b"bearer"


def _check(value: str, kind: str, *, param: str | None = None) -> str:
    pattern = FILE_ID if kind == "file" else BATCH_ID
    if not pattern.fullmatch(value):
        raise ApiError(400, f"invalid {kind} id {value[:80]!r}", code="invalid_id", param=param or f"{kind}_id")
    return value


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid Content-Length") from exc


async def _json_body(request: Request) -> Any:
    declared = _content_length(request)
    if declared is not None and declared > MAX_JSON_BYTES:
        raise ApiError(413, f"request body over {MAX_JSON_BYTES:,} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > MAX_JSON_BYTES:
            raise ApiError(413, f"request body over {MAX_JSON_BYTES:,} bytes")
    try:
        return orjson.loads(buf)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from exc


def _page(data: list[Any], more: bool) -> Page:
    return Page(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more)


def _json(model: BaseModel) -> Response:
    return Response(orjson.dumps(model.model_dump(mode="json")), media_type="application/json")


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Response:
    return JSONResponse(error_body(message, type_=type_, code=code, param=param), status_code=status)
