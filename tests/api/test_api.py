"""The HTTP API (batchd.api): files, batches, limits, ids and auth, over real HTTP on loopback
(``ApiHarness`` in tests/support/api.py: the real daemon and ``serve()`` in a background thread)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

pytest.importorskip("fastapi")

from batchd.api.listen import check_listen  # noqa: E402
from batchd.api.models import BATCH_ID, FILE_ID  # noqa: E402
from batchd.api.server import serve  # noqa: E402
from batchd.config import ApiSettings, Settings  # noqa: E402
from batchd.errors import ConfigError  # noqa: E402
from batchd.ops import commands as ops  # noqa: E402
from tests.support.api import ApiHarness, free_port, jsonl, spool_files, upload  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

TOKEN = "s3cret-token-0123456789"


# -- files ----------------------------------------------------------------------------


def test_files_crud(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = start_api()
    data = jsonl(tmp_path, 3)
    r = upload(h, data, name="../../etc/Candidates 1.jsonl")
    assert r.status_code == 200, r.text
    f = r.json()
    assert FILE_ID.fullmatch(f["id"])
    assert f["object"] == "file" and f["purpose"] == "batch" and f["bytes"] == len(data)
    assert f["filename"] == "Candidates 1.jsonl"  # the client's path is dropped, never used
    assert spool_files(h.settings) == [f"{f['id']}.jsonl"]

    got = httpx.get(f"{h.url}/v1/files/{f['id']}").json()
    assert got == f
    assert httpx.get(f"{h.url}/v1/files/{f['id']}/content").content == data
    listing = httpx.get(h.url + "/v1/files").json()
    assert listing["object"] == "list" and [x["id"] for x in listing["data"]] == [f["id"]]
    assert listing["first_id"] == listing["last_id"] == f["id"] and listing["has_more"] is False

    r = httpx.delete(f"{h.url}/v1/files/{f['id']}")
    assert r.json() == {"id": f["id"], "object": "file", "deleted": True}
    assert httpx.get(f"{h.url}/v1/files/{f['id']}").status_code == 404
    assert httpx.get(f"{h.url}/v1/files/{f['id']}/content").status_code == 404
    assert spool_files(h.settings) == []


def test_file_list_pages(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api()
    ids = [upload(h, b"{}\n").json()["id"] for _ in range(3)]
    page = httpx.get(h.url + "/v1/files", params={"limit": 2}).json()
    assert [x["id"] for x in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = httpx.get(h.url + "/v1/files", params={"limit": 2, "after": page["last_id"]}).json()
    assert [x["id"] for x in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_upload_needs_purpose_batch_and_a_file(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api()
    r = upload(h, b"{}\n", purpose="fine-tune")
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = httpx.post(h.url + "/v1/files", data={"purpose": "batch"}, files={"other": ("x", b"1")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(h.url + "/v1/files", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415  # uploads are multipart only (test_api_security)
    assert spool_files(h.settings) == []


def test_upload_over_limit_is_413_without_reading_it(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api(max_upload_bytes=1000)
    assert upload(h, b"x" * 1000).status_code == 200  # exactly the limit is fine
    # Declared too large: refused from the Content-Length alone.
    r = upload(h, b"x" * 200_000)
    assert r.status_code == 413 and "max_upload_bytes" in r.json()["error"]["message"]
    # No Content-Length (chunked): counted while reading, refused at the limit.
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        ).encode()
        + b"y" * 5000
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    r = httpx.post(
        h.url + "/v1/files", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413
    assert len(spool_files(h.settings)) == 1  # only the accepted one; no part file left behind


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/file-123",
        "/v1/files/..%2F..%2Fetc%2Fpasswd",
        "/v1/files/file-..%2Fjournal.sqlite3/content",
        "/v1/files/FILE-0123456789abcdef01234567",
        "/v1/batches/batch_xyz",
        "/v1/batches/..%2Fx",
    ],
)
def test_malformed_ids_never_reach_a_lookup(start_api: Callable[..., ApiHarness], path: str) -> None:
    h = start_api()
    r = httpx.get(h.url + path)
    assert r.status_code in (400, 404)
    assert "error" in r.json()


def test_unknown_ids_are_404(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api()
    assert httpx.get(f"{h.url}/v1/files/file-{'0' * 24}").status_code == 404
    assert httpx.get(f"{h.url}/v1/batches/batch_{'0' * 24}").status_code == 404
    assert httpx.post(f"{h.url}/v1/batches/batch_{'0' * 24}/cancel").status_code == 404


# -- batches ----------------------------------------------------------------------------


def create(h: ApiHarness, file_id: str, **extra: Any) -> httpx.Response:
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    return httpx.post(h.url + "/v1/batches", json=body, headers=h.auth(), timeout=10)


def test_batch_create_validates_the_request(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = start_api()
    fid = upload(h, jsonl(tmp_path, 2)).json()["id"]
    assert create(h, fid, endpoint="/v1/audio/transcriptions").status_code == 400
    assert create(h, fid, completion_window="1h").status_code == 400
    assert create(h, fid, metadata={f"k{i}": "v" for i in range(17)}).status_code == 400
    assert create(h, f"file-{'1' * 24}").status_code == 404
    assert create(h, "../../journal").status_code == 400
    r = httpx.post(
        h.url + "/v1/batches", content=b"{" + b" " * 100_000 + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert (
        httpx.post(h.url + "/v1/batches", content=b"not json", headers={"content-type": "application/json"}).status_code
        == 400
    )


def batch(h: ApiHarness, batch_id: str) -> dict[str, Any]:
    r = httpx.get(f"{h.url}/v1/batches/{batch_id}", headers=h.auth())
    assert r.status_code == 200, r.text
    return dict(r.json())


def settled(h: ApiHarness, batch_id: str) -> dict[str, Any]:
    """The batch once its ingest is over."""
    return dict(wait_for(lambda: (x := batch(h, batch_id))["status"] != "validating" and x))


def test_batches_queue_as_jobs_and_list(
    start_api: Callable[..., ApiHarness], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = start_api()  # no daemon: jobs are validated and then wait in the queue
    ids = []
    for i in range(3):
        fid = upload(h, jsonl(tmp_path, 2 + i)).json()["id"]
        r = create(h, fid, metadata={"run": str(i)})
        assert r.status_code == 200, r.text
        b = r.json()
        assert BATCH_ID.fullmatch(b["id"]) and b["object"] == "batch" and b["input_file_id"] == fid
        # expires_at: when batchd deletes its outputs (api.retention_days), not the 24 h window it never enforces
        assert b["expires_at"] == b["created_at"] + 30 * 86400 and b["metadata"] == {"run": str(i)}
        ids.append(b["id"])
    for i, bid in enumerate(ids):
        b = settled(h, bid)
        assert b["status"] == "in_progress" and b["in_progress_at"] is not None
        assert b["request_counts"] == {"total": 2 + i, "completed": 0, "failed": 0}
        assert b["output_file_id"] is None and b["errors"] is None
    page = httpx.get(h.url + "/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = httpx.get(h.url + "/v1/batches", params={"after": page["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[:1] and rest["has_more"] is False

    # `batchd status` lists them with the others, marked as API jobs.
    capsys.readouterr()
    ops.status(h.settings, as_json=True, limit=10)
    out = capsys.readouterr().out
    active = orjson.loads(out[out.index("{\n") :])["active"]  # log lines from the server thread may precede it
    assert [v["source"] for v in active] == ["api"] * 3
    assert all(v["input"].startswith("api:") for v in active)

    # Cancelling a queued batch: the job is finalized as cancelled (the daemon publishes it).
    r = httpx.post(f"{h.url}/v1/batches/{ids[0]}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling" and r.json()["cancelling_at"]


def test_duplicate_upload_shares_the_first_run(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = start_api()
    data = jsonl(tmp_path, 2)
    first = create(h, upload(h, data).json()["id"]).json()["id"]
    wait_for(lambda: batch(h, first)["status"] == "in_progress")
    second = create(h, upload(h, data).json()["id"]).json()["id"]
    b = settled(h, second)
    assert b["status"] == "in_progress" and b["request_counts"]["total"] == 2
    assert httpx.post(f"{h.url}/v1/batches/{second}/cancel").status_code == 409


def test_deleting_the_upload_keeps_the_batch_input(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    h = start_api()
    fid = upload(h, jsonl(tmp_path, 2)).json()["id"]
    bid = create(h, fid).json()["id"]
    assert httpx.delete(f"{h.url}/v1/files/{fid}").status_code == 200
    assert wait_for(lambda: batch(h, bid)["status"] == "in_progress")


# -- auth and listening --------------------------------------------------------------


def test_token_is_required_when_set(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api(token=TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ):
        r = httpx.get(h.url + "/v1/files", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(h.url + "/nowhere").status_code == 401  # unknown paths too: nothing is probed freely
    assert (
        httpx.post(h.url + "/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "batch"}).status_code
        == 401
    )
    assert spool_files(h.settings) == []
    assert httpx.get(h.url + "/v1/files", headers=h.auth()).status_code == 200


@pytest.mark.parametrize(
    "listen, token, ok",
    [
        ("127.0.0.1:8089", None, True),
        ("localhost:8089", None, True),
        ("[::1]:8089", None, True),
        ("8089", None, True),
        (":8089", None, True),
        ("0.0.0.0:8089", None, False),
        ("[::]:8089", None, False),
        ("192.168.1.5:8089", None, False),
        ("batchd.example.org:8089", None, False),
        ("0.0.0.0:8089", TOKEN, True),
    ],
)
def test_non_loopback_listen_needs_a_token(listen: str, token: str | None, ok: bool) -> None:
    settings = Settings(api=ApiSettings(listen=listen, token=token))
    if ok:
        assert check_listen(settings)[1] == 8089
    else:
        with pytest.raises(ConfigError) as exc:
            check_listen(settings)
        assert exc.value.key == "api.token"


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:http", "127.0.0.1:70000"])
def test_malformed_listen_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_listen(Settings(api=ApiSettings(listen=listen)))
    assert exc.value.key == "api.listen"


def test_serve_refuses_to_start_exposed_without_a_token(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(api={"listen": "0.0.0.0:8089"})
    with pytest.raises(ConfigError):
        asyncio.run(serve(settings, asyncio.Event()))


def test_serve_reports_a_taken_port(make_settings: Callable[..., Settings]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(api={"listen": f"127.0.0.1:{taken.getsockname()[1]}"})
        with pytest.raises(ConfigError) as exc:
            asyncio.run(serve(settings, asyncio.Event()))
    assert exc.value.key == "api.listen"


def test_cancelling_the_api_task_closes_the_port(make_settings: Callable[..., Settings]) -> None:
    from batchd.api.server import start_api

    port = free_port()
    settings = make_settings(api={"listen": f"127.0.0.1:{port}"})

    async def main() -> None:
        task = start_api(settings, asyncio.Event())
        async with httpx.AsyncClient() as c:
            assert (await c.get(f"http://127.0.0.1:{port}/v1/files")).status_code == 200
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))  # free again

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_truncated_upload_is_refused(start_api: Callable[..., ApiHarness]) -> None:
    h = start_api()
    boundary = "cut"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        '{"custom_id": "a"'
    ).encode()  # no closing boundary: the client died mid-file
    r = httpx.post(
        h.url + "/v1/files", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 400 and "boundary" in r.json()["error"]["message"]
    assert spool_files(h.settings) == []


def test_metadata_priority_ranks_the_batch(start_api: Callable[..., ApiHarness], tmp_path: Path) -> None:
    from batchd.journal import Journal

    h = start_api()
    fid = upload(h, jsonl(tmp_path, 2)).json()["id"]
    for bad in ("high", "1001", ""):
        r = create(h, fid, metadata={"priority": bad})
        assert r.status_code == 400 and "metadata.priority" in r.text, (bad, r.text)
    b = settled(h, create(h, fid, metadata={"priority": " 7 "}).json()["id"])
    plain = settled(h, create(h, fid).json()["id"])
    journal = Journal(h.settings.journal_path)
    try:
        by_batch = {j.meta.get("batch_id"): j for j in journal.jobs()}
        assert by_batch[b["id"]].priority == 7 and by_batch[plain["id"]].priority is None
        assert {e.id: e.priority for e in journal.queue_entries(0)}[by_batch[b["id"]].id] == 7
    finally:
        journal.close()
