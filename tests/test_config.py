from __future__ import annotations

from pathlib import Path

import pytest

from batchd.cli import main
from batchd.config import Settings, load_settings
from batchd.errors import ConfigError


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BATCHD_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    s = load_settings()
    assert s.inbox == Path("/srv/batchd/inbox")
    assert s.outbox == Path("/srv/batchd/outbox")
    assert s.state_dir == Path("/var/lib/batchd")
    assert s.backend.kind == "ollama"
    assert s.backend.url == "http://127.0.0.1:11434"
    assert s.backend.lanes == 1
    assert s.context.mode == "conversation"
    assert s.watch.mode == "auto"
    assert s.api.listen is None


def test_toml_then_env_then_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "batchd.toml"
    cfg.write_text('inbox = "/data/in"\noutbox = "/data/out"\n[backend]\nlanes = 3\nmodel = "from-toml"\n'
                   '[context]\nnum_ctx = 4096\n[pipeline]\nuser_template = "Rate {name}"\n')
    monkeypatch.setenv("BATCHD_CONFIG", str(cfg))
    monkeypatch.setenv("BATCHD_BACKEND__MODEL", "from-env")
    monkeypatch.setenv("BATCHD_OUTBOX", "/env/out")
    monkeypatch.setenv("BATCHD_WATCH__STABLE_SECONDS", "7.5")
    s = load_settings(inbox=Path("/flag/in"))
    assert s.inbox == Path("/flag/in")  # command-line override beats everything
    assert s.outbox == Path("/env/out")  # env beats the file
    assert s.backend.model == "from-env"
    assert s.backend.lanes == 3  # file beats defaults
    assert s.context.num_ctx == 4096
    assert s.watch.stable_seconds == 7.5
    assert s.pipeline.user_template == "Rate {name}"


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("BATCHD_BACKEND__LANES", "many", "backend.lanes"),
        ("BATCHD_BACKEND__KIND", "vllm", "backend.kind"),
        ("BATCHD_BACKEND__URL", "ftp://x", "backend.url"),
        ("BATCHD_CONTEXT__MODE", "chatty", "context.mode"),
        ("BATCHD_WATCH__MODE", "fanotify", "watch.mode"),
    ],
)
def test_wrong_value_exits_2_naming_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], env: str, value: str,
                                            key: str) -> None:
    (tmp_path / "c.toml").write_text("")
    monkeypatch.setenv("BATCHD_CONFIG", str(tmp_path / "c.toml"))
    monkeypatch.setenv(env, value)
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert key in err[0]


def test_unknown_key_in_file_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[backend]\nlanez = 2\n")
    monkeypatch.setenv("BATCHD_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "backend.lanez" in str(info.value)


def test_broken_toml_and_missing_explicit_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("inbox = [unclosed\n")
    monkeypatch.setenv("BATCHD_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings()
    monkeypatch.setenv("BATCHD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_settings_can_be_built_directly(tmp_path: Path) -> None:
    s = Settings(inbox=tmp_path, backend={"lanes": 4, "urls": ["http://a:1", "http://b:2"]})
    assert s.backend.hosts() == ["http://a:1", "http://b:2"]
