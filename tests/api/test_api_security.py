"""A web page in a browser on the same host must not drive the loopback API (real server, httpx)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")

from batchd.config import Settings  # noqa: E402
from tests.support.api import ApiHarness, jsonl, spool_files, upload  # noqa: E402


def _assert_refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


def test_a_rebound_host_name_is_refused(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = start_api()
    file_id = upload(h, jsonl(tmp_path, 2)).json()["id"]
    for path in ("/v1/files", f"/v1/files/{file_id}/content", "/v1/batches", "/nope"):
        _assert_refused(httpx.get(h.url + path, headers={"Host": "rebind.evil.example"}), 403, "forbidden_host")
    r = httpx.get(h.url + "/v1/files", headers={"Host": "rebind.evil.example:" + h.url.rsplit(":", 1)[1]})
    _assert_refused(r, 403, "forbidden_host")
    for ok in ("localhost", "127.0.0.1", "LOCALHOST:1234", "[::1]:80", "127.0.0.1:8080"):
        assert httpx.get(h.url + "/v1/files", headers={"Host": ok}).status_code == 200, ok


def test_a_configured_host_name_is_allowed(api_with: Callable[..., ApiHarness]) -> None:
    h = api_with(allowed_hosts=["batch.lab.example"])
    assert httpx.get(h.url + "/v1/files", headers={"Host": "batch.lab.example"}).status_code == 200
    _assert_refused(httpx.get(h.url + "/v1/files", headers={"Host": "other.example"}), 403, "forbidden_host")


def test_cross_site_requests_are_refused(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = start_api()
    data = jsonl(tmp_path, 2)
    r = httpx.post(
        h.url + "/v1/files",
        files={"file": ("x.jsonl", data)},
        data={"purpose": "batch"},
        headers={"Origin": "https://evil.example"},
    )
    _assert_refused(r, 403, "cross_site_request")
    r = httpx.post(
        h.url + "/v1/files", files={"file": ("x.jsonl", data)}, data={"purpose": "batch"}, headers={"Origin": "null"}
    )
    _assert_refused(r, 403, "cross_site_request")
    for site in ("cross-site", "same-site"):
        r = httpx.get(h.url + "/v1/files", headers={"Sec-Fetch-Site": site})
        _assert_refused(r, 403, "cross_site_request")
    assert spool_files(h.settings) == []
    # the same machine's own pages and tools still work
    assert httpx.get(h.url + "/v1/files", headers={"Sec-Fetch-Site": "same-origin", "Origin": h.url}).status_code == 200
    assert httpx.get(h.url + "/v1/files", headers={"Sec-Fetch-Site": "none"}).status_code == 200


def test_simple_request_content_types_are_refused(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    """What a no-cors fetch or a form can send without a preflight never reaches a handler."""
    h = start_api(daemon=False)
    file_id = upload(h, jsonl(tmp_path, 2)).json()["id"]
    body = f'{{"input_file_id": "{file_id}", "endpoint": "/v1/chat/completions", "completion_window": "24h"}}'
    for ctype in (
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = {"Content-Type": ctype} if ctype else {}
        r = httpx.post(h.url + "/v1/batches", content=body.encode(), headers=headers)
        _assert_refused(r, 415, "unsupported_media_type")
    assert httpx.get(h.url + "/v1/batches").json()["data"] == []
    # JSON on /v1/files is refused too: uploads are multipart only
    r = httpx.post(h.url + "/v1/files", content=b"{}", headers={"content-type": "application/json"})
    _assert_refused(r, 415, "unsupported_media_type")
    r = httpx.post(h.url + "/v1/files", content=b"purpose=batch", headers={"content-type": "text/plain"})
    _assert_refused(r, 415, "unsupported_media_type")
    ok = httpx.post(
        h.url + "/v1/batches", content=body.encode(), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200, ok.text


def test_the_guard_runs_before_the_token_check(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api(token="a-long-enough-token-123")
    r = httpx.get(h.url + "/v1/files", headers={"Host": "rebind.evil.example", **h.auth()})
    _assert_refused(r, 403, "forbidden_host")
    assert httpx.get(h.url + "/v1/files", headers=h.auth()).status_code == 200


@pytest.mark.parametrize(
    ("listen", "token", "ok"),
    [
        ("0.0.0.0:8089", "Zq9", False),
        ("0.0.0.0:8089", "short-token-15ch", True),
        ("0.0.0.0:8089", "short-token-15c", False),
        ("192.168.1.5:8089", "   ", False),
        ("127.0.0.1:8089", "", False),
        ("127.0.0.1:8089", "  ", False),
        ("127.0.0.1:8089", "x", True),
        ("127.0.0.1:8089", None, True),
    ],
)
def test_api_token_length_and_blank(listen: str, token: str | None, ok: bool) -> None:
    from batchd.api.listen import check_listen
    from batchd.config import ApiSettings
    from batchd.errors import ConfigError

    settings = Settings(api=ApiSettings(listen=listen, token=token))
    if ok:
        assert check_listen(settings)[1] == 8089
    else:
        with pytest.raises(ConfigError) as info:
            check_listen(settings)
        assert info.value.key == "api.token"
        assert token is None or not token.strip() or token not in str(info.value)
