"""packaging/: the example config, sysusers and tmpfiles snippets, without a machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"


def test_example_config_is_valid_settings() -> None:
    config = pytest.importorskip("batchd.config", reason="batchd.config not importable")
    settings = config.load_settings(PACKAGING / "batchd.toml")
    assert str(settings.inbox) == "/srv/batchd/inbox"
    assert str(settings.outbox) == "/srv/batchd/outbox"
    assert settings.backend.kind == "ollama"
    # The installed config runs any CSV at the inbox root: no template, the default `column: value` rendering
    # (the example pipeline is shown commented out; tests/test_config_file.py runs it uncommented).
    assert settings.pipeline.user_template is None


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles not installed",
)
def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    for cmd in (
        ["systemd-sysusers", f"--root={tmp_path}", str(PACKAGING / "batchd.sysusers")],
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create"] + [str(PACKAGING / "batchd.tmpfiles")],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def entries(name: str) -> dict[str, list[str]]:
        lines = (tmp_path / "etc" / name).read_text().splitlines()
        return {line.split(":")[0]: line.split(":") for line in lines}

    passwd, groups = entries("passwd"), entries("group")
    user = passwd["batchd"]
    assert user[5] == "/var/lib/batchd"
    assert groups["batchd-users"][3].split(",") == ["batchd"]
    uid, users_gid = int(user[2]), int(groups["batchd-users"][2])

    def mode_owner(rel: str) -> tuple[str, int, int]:
        st = (tmp_path / rel).stat()
        return f"{st.st_mode & 0o7777:o}", st.st_uid, st.st_gid

    assert mode_owner("srv/batchd") == ("755", 0, 0)
    assert mode_owner("srv/batchd/inbox") == ("3770", uid, users_gid)
    assert mode_owner("srv/batchd/outbox") == ("2750", uid, users_gid)


def test_install_script_parses() -> None:
    script = str(PACKAGING / "install.sh")
    r = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", script], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
