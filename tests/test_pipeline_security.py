"""pipeline.toml and the files it names are read beneath the pipeline folder, never through a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchd.errors import ConfigError
from batchd.pipeline import load_pipeline


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "rubric.md").write_text("PRIVATE-RUBRIC")
    (tmp_path / "elsewhere" / "pipeline.toml").write_text('system_prompt = "PRIVATE-RUBRIC"\n')
    (tmp_path / "elsewhere" / "batchd.toml").write_text('[backend]\napi_key_file = "/etc/k"\nsecret_name = 1\n')
    p = tmp_path / "p"
    p.mkdir()
    return p


def _error(folder: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_pipeline(folder)
    return str(info.value)


def test_a_symlinked_pipeline_toml_is_refused(folder: Path) -> None:
    (folder / "pipeline.toml").symlink_to(folder.parent / "elsewhere" / "pipeline.toml")
    message = _error(folder)
    assert "symbolic link" in message and "PRIVATE" not in message


def test_a_symlink_to_a_config_file_does_not_leak_its_keys(folder: Path) -> None:
    (folder / "pipeline.toml").symlink_to(folder.parent / "elsewhere" / "batchd.toml")
    message = _error(folder)
    assert "api_key_file" not in message and "secret_name" not in message and "backend" not in message


def test_a_hard_linked_pipeline_toml_is_refused(folder: Path) -> None:
    os.link(folder.parent / "elsewhere" / "pipeline.toml", folder / "pipeline.toml")
    assert "hard link" in _error(folder)


def test_a_pipeline_toml_that_is_a_fifo_does_not_hang(folder: Path) -> None:
    os.mkfifo(folder / "pipeline.toml")
    assert "regular file" in _error(folder)


@pytest.mark.parametrize("how", ["symlink", "hardlink", "dotdot", "absolute", "through_linked_dir"])
def test_system_prompt_file_stays_beneath_the_folder(folder: Path, how: str) -> None:
    secret = folder.parent / "elsewhere" / "rubric.md"
    name = "rubric.md"
    if how == "symlink":
        (folder / "rubric.md").symlink_to(secret)
    elif how == "hardlink":
        os.link(secret, folder / "rubric.md")
    elif how == "dotdot":
        name = "../elsewhere/rubric.md"
    elif how == "absolute":
        name = str(secret)
    else:
        (folder / "sub").symlink_to(folder.parent / "elsewhere")
        name = "sub/rubric.md"
    (folder / "pipeline.toml").write_text(f'system_prompt_file = "{name}"\nuser_template = "{{a}}"\n')
    message = _error(folder)
    assert "PRIVATE" not in message


def test_a_system_prompt_file_in_a_subfolder_still_works(folder: Path) -> None:
    (folder / "prompts").mkdir()
    (folder / "prompts" / "rubric.md").write_text("Score it.")
    (folder / "pipeline.toml").write_text('system_prompt_file = "prompts/rubric.md"\nuser_template = "{a}"\n')
    assert load_pipeline(folder).system_prompt == "Score it."
