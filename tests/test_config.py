from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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
    assert s.backend.lanes == "auto"
    assert s.context.mode == "conversation"
    assert s.watch.mode == "auto"
    assert s.api.listen is None


def test_toml_then_env_then_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "batchd.toml"
    cfg.write_text(
        'inbox = "/data/in"\noutbox = "/data/out"\n[backend]\nlanes = 3\nmodel = "from-toml"\n'
        '[context]\nnum_ctx = 4096\n[pipeline]\nuser_template = "Rate {name}"\n'
    )
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
        ("BATCHD_BACKEND__EMBED_LANES", "many", "backend.embed_lanes"),
        ("BATCHD_BACKEND__EMBED_LANES", "1025", "backend.embed_lanes"),
        ("BATCHD_BACKEND__EMBED_LANES_MAX", "0", "backend.embed_lanes_max"),
        ("BATCHD_BACKEND__KIND", "vllm", "backend.kind"),
        ("BATCHD_BACKEND__URL", "ftp://x", "backend.url"),
        ("BATCHD_CONTEXT__MODE", "chatty", "context.mode"),
        ("BATCHD_WATCH__MODE", "fanotify", "watch.mode"),
    ],
)
def test_wrong_value_exits_2_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], env: str, value: str, key: str
) -> None:
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


# -- list settings from the environment ----------------------------------------------------


@pytest.fixture
def empty_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    monkeypatch.setenv("BATCHD_CONFIG", str(cfg))
    return cfg


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("BATCHD_BACKEND__URLS", "http://a:1,http://b:2", ["http://a:1", "http://b:2"]),
        ("BATCHD_BACKEND__URLS", " http://a:1 , http://b:2 ", ["http://a:1", "http://b:2"]),
        ("BATCHD_BACKEND__URLS", "http://a:1", ["http://a:1"]),
        ("BATCHD_BACKEND__URLS", '["http://a:1", "http://b:2"]', ["http://a:1", "http://b:2"]),
        ("BATCHD_BACKEND__URLS", "", []),
        ("BATCHD_BACKEND__ALLOWED_MODELS", "gemma3:4b,gemma3:12b", ["gemma3:4b", "gemma3:12b"]),
        ("BATCHD_BACKEND__ALLOWED_MODELS", '["gemma3:4b"]', ["gemma3:4b"]),
        ("BATCHD_WATCH__IGNORE", "*.bak", ["*.bak"]),
        ("BATCHD_WATCH__IGNORE", "*.bak,scratch-*", ["*.bak", "scratch-*"]),
    ],
)
def test_list_settings_from_env_take_commas_or_json(
    monkeypatch: pytest.MonkeyPatch, empty_config: Path, env: str, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv(env, value)
    s = load_settings()
    section, key = env.removeprefix("BATCHD_").lower().split("__")
    assert getattr(getattr(s, section), key) == expected


def test_bad_list_value_from_env_exits_2_in_one_line(
    monkeypatch: pytest.MonkeyPatch, empty_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCHD_BACKEND__URLS", "ftp://a,http://b")
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backend.urls" in err[0] and "ftp://a" in err[0]


def test_undecodable_env_value_exits_2_in_one_line(
    monkeypatch: pytest.MonkeyPatch, empty_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A dict setting is JSON only; pydantic-settings raises its own SettingsError for it.
    monkeypatch.setenv("BATCHD_PIPELINE__OPTIONS", "{not json")
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("batchd: configuration error: BATCHD_PIPELINE__OPTIONS: ")
    assert "JSON" in err[0]


@pytest.mark.parametrize("command", ["status", "run"])  # operator commands load through effective.py
def test_any_unexpected_error_while_loading_settings_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    import batchd.config
    import batchd.ops.effective

    def broken(**_: object) -> Settings:
        raise RuntimeError("something nobody foresaw")

    # cli imports load_settings when it runs (so `batchd --version` needs no pydantic)
    monkeypatch.setattr(batchd.config, "load_settings", broken)
    monkeypatch.setattr(batchd.ops.effective, "load_settings", broken)
    assert main([command]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["batchd: configuration error: settings: RuntimeError: something nobody foresaw"]


# -- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["BATCHD_INBOX", "BATCHD_OUTBOX", "BATCHD_STATE_DIR"])
@pytest.mark.parametrize("value", ["", "relative/folder", "."])
def test_empty_or_relative_folder_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, empty_config: Path, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.key == env.removeprefix("BATCHD_").lower()
    assert "absolute" in info.value.problem


def test_folders_in_the_file_must_be_absolute_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('inbox = "in"\n')
    monkeypatch.setenv("BATCHD_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="absolute"):
        load_settings()


# -- unknown BATCHD_* variables ---------------------------------------------------------------


def test_unknown_variables_are_named_with_a_hint() -> None:
    from batchd.config import unknown_env_warnings

    env = {
        "BATCHD_STATEDIR": "/x",
        "BATCHD_BACKEND__URL": "http://a",
        "BATCHD_CONFIG": "/etc/x.toml",
        "BATCHD_PIP_ARGS": "--no-index",
        "BATCHD_INSTALL_EXTRAS": "gpu",
        "BATCHD_PYTHON": "python3",
        "BATCHD_RELIABILITY_SCALE": "10",
        "BATCHD_SYSTEM_TESTS": "0",
        "BATCHD_inbox": "/in",
        "BATCHD_BAKEND__URL": "http://b",
        "HOME": "/root",
        "XBATCHD_FOO": "1",
    }
    warnings = unknown_env_warnings(env)
    assert warnings == [  # sorted by name
        "unknown environment variable BATCHD_BAKEND__URL is ignored (did you mean BATCHD_BACKEND__URL?)",
        "unknown environment variable BATCHD_STATEDIR is ignored (did you mean BATCHD_STATE_DIR?)",
    ]


def test_unknown_variable_warns_on_stderr_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, empty_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BATCHD_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BATCHD_STATEDIR", "/somewhere")
    assert main(["status", "--json"]) == 0
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [
        "batchd: warning: unknown environment variable BATCHD_STATEDIR is ignored (did you mean BATCHD_STATE_DIR?)"
    ]
    assert out.out.startswith("{")  # stdout stays machine-readable


def test_main_config_system_prompt_file_must_be_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Relative to what? Under systemd the working directory is /, in a shell it is wherever you are.
    (tmp_path / "rubric.md").write_text("Be fair.")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[pipeline]\nsystem_prompt_file = "rubric.md"\n')
    monkeypatch.setenv("BATCHD_CONFIG", str(cfg))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.key == "pipeline.system_prompt_file" and "absolute" in info.value.problem
    cfg.write_text(f'[pipeline]\nsystem_prompt_file = "{tmp_path / "rubric.md"}"\n')
    assert load_settings().pipeline.system_prompt == "Be fair."


def test_load_settings_turns_any_error_into_a_config_error(monkeypatch: pytest.MonkeyPatch, empty_config: Path) -> None:
    # SIGHUP reloads call load_settings() directly: they must get a ConfigError too, never a crash.
    import batchd.config

    def broken(**_: object) -> Settings:
        raise KeyError("surprise")

    monkeypatch.setattr(batchd.config, "Settings", broken)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert (info.value.key, info.value.problem) == ("settings", "KeyError: 'surprise'")


def test_the_journal_path_is_named_in_one_place(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).journal_path == tmp_path / "journal.sqlite3"
    package = Path(__file__).resolve().parents[1] / "batchd"
    naming = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "journal.sqlite3" in p.read_text())
    assert naming == ["config.py"]


# -- the embedding lines' own lanes ----------------------------------------------------------


def test_embed_lanes_default_to_auto_up_to_a_full_call_per_host_and_apart_from_lanes(tmp_path: Path) -> None:
    s = Settings(inbox=tmp_path)
    assert s.backend.embed_lanes == "auto" and s.backend.embed_lane_bounds() == (16, 256)
    two = Settings(inbox=tmp_path, backend={"lanes": 2, "urls": ["http://a:1", "http://b:2"]})
    assert two.backend.embed_lane_bounds() == (16, 512) and two.backend.lane_bounds() == (2, 2)
    # the embedded backend serves one call at a time, but more lines in flight still make bigger calls
    embedded = Settings(inbox=tmp_path, backend={"kind": "embedded"})
    assert embedded.backend.lane_bounds() == (1, 1) and embedded.backend.embed_lane_bounds() == (16, 256)
    bounded = Settings(inbox=tmp_path, backend={"embed_lanes_min": 1, "embed_lanes_max": 1024})
    assert bounded.backend.embed_lane_bounds() == (1, 1024)
    small = Settings(inbox=tmp_path, backend={"embed_lanes_max": 4})  # the default min follows a lower max
    assert small.backend.embed_lane_bounds() == (4, 4)


def test_embed_lanes_from_the_environment_pin_the_embedding_pool_only(
    monkeypatch: pytest.MonkeyPatch, empty_config: Path
) -> None:
    monkeypatch.setenv("BATCHD_BACKEND__EMBED_LANES", "8")
    s = load_settings()
    assert s.backend.embed_lanes == 8 and s.backend.embed_lane_bounds() == (8, 8)
    assert s.backend.lanes == "auto"


def test_embed_lanes_min_above_max_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"embed_lanes_min \(20\) is above embed_lanes_max \(10\)"):
        Settings(inbox=tmp_path, backend={"embed_lanes_min": 20, "embed_lanes_max": 10})
    with pytest.raises(ValidationError, match='embed_lanes is an integer from 1 to 1024, or "auto"'):
        Settings(inbox=tmp_path, backend={"embed_lanes": 0})
