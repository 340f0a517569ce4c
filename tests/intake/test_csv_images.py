"""A CSV pipeline's ``image_column``: each cell names an image beneath the pipeline folder, read at ingest
into the row's journaled body, and sent exactly as a JSONL line's ``image_url`` part; a bad cell fails
its row alone."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from openai.types.chat import ChatCompletion

from batchd.config import Settings
from batchd.errors import ConfigError
from batchd.intake.claim import Claimer
from batchd.intake.inbox import scan
from batchd.journal import Journal
from batchd.ops import commands as ops
from batchd.pipeline import load_pipeline
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import run_daemon_once

PNG = b"\x89PNG\r\n\x1a\n" + b"harbour-pixels" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"cat-pixels" * 8
SECRET = b"\x89PNG\r\n\x1a\nTOP-SECRET-PIXELS"
PIPELINE = 'mode = "isolated"\nuser_template = "Describe {name}."\nid_column = "id"\nimage_column = "photo"\n'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _folder(folders: Folders, csv: str, pipeline: str = PIPELINE) -> Path:
    folder = folders.inbox / "cards"
    (folder / "images" / "sub").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(PNG)
    (folder / "images" / "sub" / "b.jpg").write_bytes(JPEG)
    (folder / "pipeline.toml").write_text(pipeline)
    (folder / "cards.csv").write_text(csv)
    return folder


def _outcome(folders: Folders) -> tuple[dict[str, dict], dict[str, dict]]:
    out = folders.outbox / "cards"
    results = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    # a row refused at intake or by batchd: "error"; a server's answer: the error in "response.body"
    lines = read_jsonl(out / "errors.jsonl") if (out / "errors.jsonl").exists() else []
    errors = {e["custom_id"]: e["error"] or e["response"]["body"]["error"] for e in lines}
    return results, errors


def _sent(emulator: Emulator) -> dict[str, dict]:
    """The last user message of each chat call, by the row's text."""
    sent = {}
    for call in emulator.calls:
        if "messages" in call:
            m = call["messages"][-1]
            text = m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]
            sent[text] = m
    return sent


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_rows_image_reaches_the_server_as_a_jsonl_lines_would(
    kind: str, folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    _folder(folders, "id,name,photo\na,Harbour,images/a.png\nb,Cat, ./images/sub/b.jpg\nc,Nothing,\n")
    run_daemon_once(make_settings(backend={"kind": kind}))
    results, errors = _outcome(folders)
    assert set(results) == {"a", "b", "c"} and errors == {}
    for r in results.values():
        ChatCompletion.model_validate(r["response"]["body"])
    sent = _sent(emulator)
    if kind == "ollama":  # /api/chat: the bare base64 of the file's exact bytes beside the text
        assert sent["Describe Harbour."] == {"role": "user", "content": "Describe Harbour.", "images": [_b64(PNG)]}
        assert sent["Describe Cat."]["images"] == [_b64(JPEG)]
    else:  # an OpenAI server: the text part, then the image part with its type from the magic bytes
        assert sent["Describe Harbour."]["content"] == [
            {"type": "text", "text": "Describe Harbour."},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64(PNG)}"}},
        ]
        assert sent["Describe Cat."]["content"][1]["image_url"]["url"] == f"data:image/jpeg;base64,{_b64(JPEG)}"
    assert sent["Describe Nothing."] == {"role": "user", "content": "Describe Nothing."}  # empty cell: no image


def test_without_a_template_the_image_column_is_not_sent_as_text(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    _folder(folders, "name,photo\nHarbour,images/a.png\n", pipeline='image_column = "photo"\n')
    run_daemon_once(make_settings())
    (message,) = [c["messages"][-1] for c in emulator.calls if "messages" in c]
    assert message == {"role": "user", "content": "name: Harbour", "images": [_b64(PNG)]}


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_a_model_without_vision_fails_the_image_rows_with_the_servers_reason(
    kind: str, folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    emulator.capabilities["gemma3:4b"] = ("completion", "tools")
    _folder(folders, "id,name,photo\na,Harbour,images/a.png\nc,Nothing,\n")
    run_daemon_once(make_settings(backend={"kind": kind}))
    results, errors = _outcome(folders)
    assert set(results) == {"c"} and set(errors) == {"a"}
    if kind == "ollama":  # asked of /api/show before any image is sent
        assert errors["a"]["code"] == "unsupported" and "has no vision" in errors["a"]["message"]
        assert not any(m.get("images") for c in emulator.calls for m in c.get("messages", []))
    else:  # the server's own refusal
        assert "image input is not supported" in errors["a"]["message"]


def test_every_cell_that_leaves_the_folder_or_is_no_plain_image_fails_only_its_row(
    tmp_path: Path, folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(SECRET)
    rows = {
        "ok": ("images/a.png", None),
        "blank": ("", None),
        "dotdot": ("../../outside/secret.png", "must stay inside the pipeline folder"),
        "absolute": (str(outside / "secret.png"), "must stay inside the pipeline folder"),
        "passwd": ("/etc/passwd", "must stay inside the pipeline folder"),
        "link_out": ("images/out.png", "symbolic link"),
        "linked_dir": ("elsewhere/secret.png", "symbolic link"),
        "link_in": ("images/alias.png", "symbolic link"),
        "hardlink": ("images/hard.png", "hard link"),
        "fifo": ("images/pipe.png", "not a regular file"),
        "folder": ("images/sub", "not a regular file"),
        "big": ("images/big.png", "over limits.max_image_bytes"),
        "text": ("images/notes.png", "not a PNG, JPEG, WebP or GIF image"),
        "missing": ("images/none.png", "not found"),
    }
    folder = _folder(folders, "id,name,photo\n" + "".join(f"{k},{k},{cell}\n" for k, (cell, _) in rows.items()))
    (folder / "images" / "out.png").symlink_to(outside / "secret.png")
    (folder / "elsewhere").symlink_to(outside)
    (folder / "images" / "alias.png").symlink_to("a.png")
    os.link(outside / "secret.png", folder / "images" / "hard.png")
    os.mkfifo(folder / "images" / "pipe.png")
    (folder / "images" / "big.png").write_bytes(PNG + b"x" * 5000)
    (folder / "images" / "notes.png").write_text("just some notes, not an image\n")
    run_daemon_once(make_settings(limits={"max_image_bytes": 4096}))
    results, errors = _outcome(folders)
    assert set(results) == {"ok", "blank"}, errors
    for cid, (cell, reason) in rows.items():
        if reason is None:
            continue
        assert errors[cid]["code"] == "invalid_image", (cid, errors[cid])
        message = errors[cid]["message"]
        assert reason in message and "'photo'" in message and repr(cell) in message, (cid, message)
        assert "TOP-SECRET" not in message
    assert "TOP-SECRET" not in repr(emulator.calls) and _b64(SECRET) not in repr(emulator.calls)


def test_a_character_device_is_refused_without_being_opened(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    folder = _folder(folders, "id,name,photo\nok,ok,images/a.png\ndev,dev,images/zero.png\n")
    try:
        os.mknod(folder / "images" / "zero.png", stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    run_daemon_once(make_settings())
    results, errors = _outcome(folders)
    assert set(results) == {"ok"}
    assert errors["dev"]["code"] == "invalid_image" and "not a regular file" in errors["dev"]["message"]


@pytest.mark.skipif(os.geteuid() != 0, reason="files of other owners need root to make")
def test_an_image_the_csvs_owner_could_not_read_is_refused(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    """docs/SECURITY.md promise 1: batchd reads no file for a member that the member could not read."""
    me, other = 4242, 4343
    folder = _folder(
        folders,
        "id,name,photo\nmine,mine,images/mine.png\ntheirs,theirs,images/theirs.png\n"
        "public,public,images/public.png\nlocked,locked,private/p.png\n",
    )
    for name, owner, mode in (("mine", me, 0o600), ("theirs", other, 0o600), ("public", other, 0o644)):
        path = folder / "images" / f"{name}.png"
        path.write_bytes(PNG + name.encode())
        os.chown(path, owner, 0)
        path.chmod(mode)
    (folder / "private").mkdir(mode=0o700)
    (folder / "private" / "p.png").write_bytes(SECRET)
    os.chown(folder / "private", other, 0)
    os.chown(folder / "cards.csv", me, 0)
    run_daemon_once(make_settings())
    results, errors = _outcome(folders)
    assert set(results) == {"mine", "public"}
    assert "not readable by the user who dropped the CSV" in errors["theirs"]["message"]
    assert "folder the file's dropper cannot open" in errors["locked"]["message"]
    assert "TOP-SECRET" not in repr(emulator.calls)


def test_the_image_is_read_at_ingest_and_one_row_at_a_time(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal is the truth: the bytes sent are those read at ingest (the file may change after), and
    ingest never holds more than one row's image (each image row is journaled at once)."""
    _folder(folders, "id,name,photo\n" + "".join(f"r{i},n{i},images/a.png\n" for i in range(6)) + "t,text,\n")
    settings = make_settings()
    batches: list[int] = []
    insert = Journal.insert_requests

    def spy(self: Journal, job_id: str, rows: list, db: object) -> int:
        batches.append(sum("~img" in (r.body or {}) for r in rows))
        return insert(self, job_id, rows, db)

    monkeypatch.setattr(Journal, "insert_requests", spy)
    journal = Journal(settings.journal_path)
    try:
        (cand,) = scan(settings.inbox)
        claimed = Claimer(settings=settings, journal=journal).claim(cand)
        assert claimed is not None
    finally:
        journal.close()
    assert max(batches) == 1 and sum(batches) == 6
    (folders.inbox / "cards" / "images" / "a.png").write_bytes(JPEG)  # changed after ingest
    run_daemon_once(settings)
    results, _ = _outcome(folders)
    assert len(results) == 7
    assert {m["images"][0] for m in _sent(emulator).values() if m.get("images")} == {_b64(PNG)}


def test_a_csvs_images_together_stay_under_max_file_bytes(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    """A small CSV naming one image many times must not become a journal many times its size."""
    _folder(folders, "id,name,photo\n" + "".join(f"r{i},n{i},images/a.png\n" for i in range(5)))
    run_daemon_once(make_settings(limits={"max_file_bytes": 3 * len(PNG) + 50}))
    results, errors = _outcome(folders)
    assert set(results) == {"r0", "r1", "r2"} and set(errors) == {"r3", "r4"}
    assert "over limits.max_file_bytes" in errors["r3"]["message"]


def test_a_rows_image_must_fit_max_line_bytes_as_a_jsonl_line_would(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    """The runner holds a chunk of rows at once: a CSV row's image is no bigger than a JSONL line may be."""
    folder = _folder(folders, "id,name,photo\nsmall,small,images/a.png\nwide,wide,images/wide.png\n")
    (folder / "images" / "wide.png").write_bytes(PNG * 4)
    run_daemon_once(make_settings(limits={"max_line_bytes": 400}))
    results, errors = _outcome(folders)
    assert set(results) == {"small"} and set(errors) == {"wide"}
    assert "over limits.max_line_bytes (400;" in errors["wide"]["message"]


def test_an_embed_pipeline_with_an_image_column_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pipeline.toml").write_text('task = "embed"\ninput_column = "text"\nimage_column = "photo"\n')
    with pytest.raises(ConfigError, match="embedding images is not supported"):
        load_pipeline(tmp_path)


def test_a_missing_image_column_fails_the_file_naming_it(
    folders: Folders, make_settings: Callable[..., Settings], emulator: Emulator
) -> None:
    _folder(folders, "id,name,picture\na,Harbour,images/a.png\n")
    run_daemon_once(make_settings())
    metrics = orjson.loads((folders.outbox / "cards" / "metrics.json").read_bytes())
    assert "pipeline_mismatch" in repr(metrics) and "image_column" in repr(metrics), metrics


def test_convert_and_render_read_the_images_beside_the_csv(
    folders: Folders, make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(folders, "id,name,photo\na,Harbour,images/a.png\nb,Away,../x.png\n")
    out = folder.parent.parent / "out.jsonl"
    ops.convert(make_settings(), folder / "cards.csv", pipeline=None, output=out)
    (line,) = read_jsonl(out)
    assert line["body"]["messages"][-1]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{_b64(PNG)}"
    assert "skipped row 2" in capsys.readouterr().err
    ops.render(make_settings(), folder / "cards.csv", pipeline=None, row=1)
    assert f"Describe Harbour.\n[image/png image, {len(PNG):,} bytes]" in capsys.readouterr().out
