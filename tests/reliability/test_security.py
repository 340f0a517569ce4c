"""Security properties of what batchd writes and whom it talks to."""

from __future__ import annotations

import grp
import os
import stat

import orjson
import pytest

from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import run_batchd


def test_outputs_are_0640_0750_with_the_users_group_whatever_the_input_mode(
    folders: Folders, emulator: Emulator
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another group needs root")
    group = next(g for g in ("nogroup", "daemon", "users") if _has_group(g))
    write_jsonl(folders.inbox / "x.jsonl", 3)
    os.chmod(folders.inbox / "x.jsonl", 0o666)  # a world-writable drop must not make world-readable results
    proc = run_batchd(folders.env(emulator.url, BATCHD_GROUP=group), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    gid = grp.getgrnam(group).gr_gid
    out = folders.outbox / "x"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and out.stat().st_gid == gid
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f
        assert f.stat().st_gid == gid, f


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_symlinks_are_never_followed_out_of_the_inbox(folders: Folders, emulator: Emulator) -> None:
    secret = folders.root / "secret.jsonl"
    write_jsonl(secret, 2)
    (folders.inbox / "link.jsonl").symlink_to(secret)
    (folders.inbox / "pipe").mkdir()
    (folders.inbox / "pipe" / "pipeline.toml").write_text('user_template = "{a}"\n')
    (folders.inbox / "pipe" / "rows.csv").symlink_to("/etc/passwd")
    proc = run_batchd(folders.env(emulator.url), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    assert emulator.chat_count == 0
    for name in ("link", "rows"):
        (err,) = read_jsonl(folders.outbox / name / "errors.jsonl")
        assert err["error"]["code"] == "symlink"
        assert not (folders.outbox / name / "input.jsonl").exists()
        assert not (folders.outbox / name / "input.csv").exists()
    assert secret.exists() and (folders.inbox / "link.jsonl").is_symlink()  # neither touched


def test_a_request_cannot_send_batchd_elsewhere(folders: Folders, emulator: Emulator) -> None:
    lines = [
        {
            "custom_id": "abs",
            "method": "POST",
            "url": "http://169.254.169.254/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "x"}]},
        },
        {
            "custom_id": "host",
            "method": "POST",
            "url": "//evil.example/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "x"}]},
        },
        {
            "custom_id": "model",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "other", "messages": [{"role": "user", "content": "x"}]},
        },
        {
            "custom_id": "ok",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "x"}]},
        },
    ]
    (folders.inbox / "r.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    env = folders.env(emulator.url, BATCHD_BACKEND__ALLOWED_MODELS='["gemma3:4b"]')
    assert run_batchd(env, "run", "--once").returncode == 0
    errors = {e["custom_id"]: e["error"]["code"] for e in read_jsonl(folders.outbox / "r" / "errors.jsonl")}
    assert errors == {"abs": "invalid_url", "host": "invalid_url", "model": "model_not_allowed"}
    assert emulator.chat_count == 1  # only the configured backend was called, once


def test_api_keys_never_reach_logs_or_outputs(folders: Folders, emulator: Emulator) -> None:
    key = "sk-test-" + "9" * 24
    key_file = folders.root / "key"
    key_file.write_text(key + "\n")
    write_jsonl(folders.inbox / "k.jsonl", 3)
    (folders.inbox / "fail.jsonl").write_bytes(
        orjson.dumps(
            {
                "custom_id": "f",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "<<FAIL:400>>"}]},
            }
        )
        + b"\n"
    )
    env = folders.env(
        emulator.url,
        BATCHD_BACKEND__KIND="openai",
        BATCHD_BACKEND__API_KEY_FILE=str(key_file),
        BATCHD_LOG__LEVEL="debug",
    )
    proc = run_batchd(env, "run", "--once")
    assert proc.returncode == 0, proc.stderr
    assert emulator.calls  # the key was used...
    assert key not in proc.stderr + proc.stdout  # ...but never logged
    for path in folders.outbox.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    for path in folders.state.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
