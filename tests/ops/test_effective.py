"""The service records its effective settings; operator commands from a shell use them."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchd import cli
from batchd.config import Settings
from batchd.ops.effective import FILE_NAME, load_for_operator, redact, write_record
from batchd.service import Notifier, ServiceDaemon
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.waiting import until

SECRET = "s3cr3t-value"


@pytest.fixture
def no_batchd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A root shell: no BATCHD_* of its own (the unit's Environment= is not there)."""
    for key in list(os.environ):
        if key.startswith("BATCHD_"):
            monkeypatch.delenv(key)


def _toml(folders: Folders, url: str) -> Path:
    """/etc/batchd/batchd.toml as the operator sees it: the default URL, the API key."""
    path = folders.root / "batchd.toml"
    path.write_text(
        f'state_dir = "{folders.state}"\ninbox = "{folders.inbox}"\noutbox = "{folders.outbox}"\n'
        f'[backend]\nurl = "{url}"\napi_key = "{SECRET}"\n'
    )
    return path


def test_the_record_keeps_no_secret(folders: Folders) -> None:
    settings = Settings(
        state_dir=folders.state,
        backend={
            "url": f"http://bob:{SECRET}@gpu1:8000",
            "urls": [f"https://u:{SECRET}@gpu2/v1"],
            "api_key": SECRET,
            "api_key_file": "/etc/batchd/key",
        },
        api={"token": SECRET, "listen": "127.0.0.1:8080"},
    )
    path = write_record(settings, config=Path("/etc/batchd/batchd.toml"), pid=4242)
    assert path == folders.state / FILE_NAME
    text = path.read_text()
    assert SECRET not in text
    body = orjson.loads(text)
    assert body["pid"] == 4242 and body["config_file"] == "/etc/batchd/batchd.toml" and body["written_at"]
    rec = body["settings"]
    assert rec["backend"]["url"] == "http://***@gpu1:8000"
    assert rec["backend"]["urls"] == ["https://***@gpu2/v1"]
    assert "api_key" not in rec["backend"] and rec["backend"]["api_key_file"] == "/etc/batchd/key"
    assert "token" not in rec["api"] and rec["api"]["listen"] == "127.0.0.1:8080"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not list(folders.state.glob(".*tmp"))


def test_redact_leaves_plain_values_alone() -> None:
    plain = {"url": "http://127.0.0.1:11434", "mail": "a@b", "pipeline": {"system_prompt": "token: x"}}
    assert redact(plain) == plain


def test_a_shell_without_config_of_its_own_gets_the_services_settings(
    folders: Folders, no_batchd_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _toml(folders, "http://127.0.0.1:11434")
    service = Settings(
        state_dir=folders.state,
        inbox=folders.inbox,
        outbox=folders.outbox,
        backend={"url": "http://10.0.0.7:8000", "lanes": 4, "api_key": SECRET},
    )
    write_record(service, config=toml, pid=77)
    import batchd.config

    monkeypatch.setattr(batchd.config, "DEFAULT_CONFIG", toml)  # /etc/batchd/batchd.toml in this test
    loaded = load_for_operator(None, environ={})
    assert loaded.settings.backend.url == "http://10.0.0.7:8000" and loaded.settings.backend.lanes == 4
    assert loaded.settings.backend.api_key == SECRET  # from the TOML: the record has none
    assert loaded.source.startswith(f"service's effective settings from {folders.state / FILE_NAME} (written ")
    assert loaded.source.endswith(" by pid 77)")

    # A shell that names its own configuration gets exactly that.
    mine = load_for_operator(toml, environ={})
    assert mine.settings.backend.url == "http://127.0.0.1:11434"
    assert mine.source == f"{toml} + environment"
    mine = load_for_operator(None, environ={"BATCHD_BACKEND__LANES": "2"})
    assert mine.settings.backend.url == "http://127.0.0.1:11434"

    # No record (the service never ran): the local files, and why.
    (folders.state / FILE_NAME).unlink()
    alone = load_for_operator(None, environ={})
    assert alone.settings.backend.url == "http://127.0.0.1:11434"
    assert (
        alone.source == f"{toml} + environment (the service has not recorded its settings in "
        f"{folders.state / FILE_NAME})"
    )


def test_a_hidden_url_password_comes_back_from_the_local_config(
    folders: Folders, no_batchd_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://bob:{SECRET}@127.0.0.1:9"
    toml = _toml(folders, url)
    write_record(Settings(state_dir=folders.state, backend={"url": url}), config=toml)
    import batchd.config

    monkeypatch.setattr(batchd.config, "DEFAULT_CONFIG", toml)
    assert load_for_operator(None, environ={}).settings.backend.url == url


def test_a_record_from_another_version_falls_back_and_says_so(
    folders: Folders, no_batchd_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = _toml(folders, "http://127.0.0.1:11434")
    (folders.state / FILE_NAME).write_bytes(orjson.dumps({"settings": {"no_such_key": 1}, "pid": 1}))
    import batchd.config

    monkeypatch.setattr(batchd.config, "DEFAULT_CONFIG", toml)
    loaded = load_for_operator(None, environ={})
    assert loaded.settings.backend.url == "http://127.0.0.1:11434"
    assert "does not fit: no_such_key" in loaded.source


def test_doctor_checks_the_services_backend_and_says_where_its_settings_came_from(
    folders: Folders,
    emulator: Emulator,
    no_batchd_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    toml = _toml(folders, "http://127.0.0.1:9")  # nothing listens there: the service uses the emulator
    write_record(
        Settings(
            state_dir=folders.state,
            inbox=folders.inbox,
            outbox=folders.outbox,
            backend={"url": emulator.url},
            vram={"source": "none"},
        ),
        config=toml,
        pid=99,
    )
    import batchd.config

    monkeypatch.setattr(batchd.config, "DEFAULT_CONFIG", toml)
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith(f"configuration: service's effective settings from {folders.state / FILE_NAME} ")
    assert first.endswith("by pid 99)")
    assert f"OK   ollama backend at {emulator.url} answers" in out, out
    assert "127.0.0.1:9 " not in out
    assert code in (0, 1)  # the unit-hardening check may WARN here; the backend part is what counts

    monkeypatch.setenv("BATCHD_CONFIG", str(toml))  # the shell names its own: that one, and it says so
    cli.main(["doctor"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"configuration: {toml} + environment"
    assert "FAIL ollama backend at http://127.0.0.1:9 does not answer" in out


def test_the_service_records_its_settings_at_start_and_after_a_reload(
    make_settings: Callable[..., Settings], folders: Folders
) -> None:
    settings = make_settings(backend={"api_key": SECRET, "lanes": 2})
    current = {"settings": settings}
    daemon = ServiceDaemon(
        notifier=Notifier(socket_path=None),
        settings=settings,
        config=Path("/etc/x.toml"),
        reload_settings=lambda: current["settings"],
    )
    daemon.heartbeat_seconds = 0.02
    record = folders.state / FILE_NAME

    def recorded() -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = orjson.loads(record.read_bytes())
            return loaded
        except (OSError, orjson.JSONDecodeError):
            return {}

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        await until(lambda: recorded().get("settings", {}).get("backend", {}).get("lanes") == 2, describe=recorded)
        assert recorded()["pid"] == os.getpid() and recorded()["config_file"] == "/etc/x.toml"
        current["settings"] = make_settings(backend={"api_key": SECRET, "lanes": 5})
        daemon.reload()
        await until(lambda: recorded()["settings"]["backend"]["lanes"] == 5, describe=recorded)
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    asyncio.run(scenario())
    assert SECRET not in record.read_text()


def test_a_drop_in_that_moves_the_state_dir_is_still_found(
    folders: Folders, no_batchd_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Environment=BATCHD_STATE_DIR=/data/batchd` in a drop-in: the journal moves, but the shell's settings
    still name the unit's StateDirectory (/var/lib/batchd). The daemon leaves its record there too, so the
    operator's commands find the service's settings, the moved state dir among them."""
    unit_dir = folders.state  # $STATE_DIRECTORY, what the shell's settings name
    moved = folders.root / "data-batchd"
    moved.mkdir()  # the daemon made it: it holds the journal
    toml = _toml(folders, "http://127.0.0.1:11434")
    service = Settings(
        state_dir=moved, inbox=folders.inbox, outbox=folders.outbox, backend={"url": "http://10.0.0.9:8000"}
    )
    written = write_record(service, config=toml, pid=88, unit_state_dir=unit_dir)
    assert written == moved / FILE_NAME and (unit_dir / FILE_NAME).read_bytes() == written.read_bytes()
    import batchd.config

    monkeypatch.setattr(batchd.config, "DEFAULT_CONFIG", toml)
    loaded = load_for_operator(None, environ={})
    assert loaded.settings.state_dir == moved and loaded.settings.backend.url == "http://10.0.0.9:8000"
    # Without a StateDirectory (run by hand), only the settings' own state dir gets the record.
    (unit_dir / FILE_NAME).unlink()
    write_record(service, config=toml, pid=89, unit_state_dir=None)
    assert not (unit_dir / FILE_NAME).exists()
