"""The README cannot drift from the CLI: its commands parse, and the ``batchd`` ones run.

Every ``sh`` code block is split into commands. ``batchd`` commands must parse
with the real argument parser and are then run against the emulator;
anything else must be one of the programs in ``OTHER_PROGRAMS`` (an explicit
allow-list: a new tool in the README is a decision, not an accident). The
``## Command line`` synopsis must list every subcommand and option the parser
has, and parse; the sample configuration error must be what the code prints.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from batchd.cli import _parser, main
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.running import REPO, run_batchd

README = REPO / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: programs the README may show besides batchd (run by hand, not by this test)
OTHER_PROGRAMS = {
    "make",
    "pip",
    "git",
    "cd",
    "cp",
    "systemctl",
    "journalctl",
    "jq",
    "sudoedit",
    "usermod",
    "curl",
    "packaging/install.sh",
}
#: placeholders the README uses in synopsis lines, and a value that parses in their place
PLACEHOLDERS = {"FILE.csv": "x.csv", "FILE": "x.csv", "P": "p", "OUT.jsonl": "o.jsonl", "N": "1", "JOB": "b5f7"}
_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _text() -> str:
    return README.read_text(encoding="utf-8")


def code_blocks(lang: str) -> list[str]:
    return [body for kind, body in _FENCE.findall(_text()) if kind == lang]


def commands(block: str) -> list[list[str]]:
    """Each simple command of a shell block: env assignments and sudo dropped, split at |, && and ;."""
    out: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in [*words, "|"]:
            if word in ("|", "&&", ";"):
                while current and (_ENV.match(current[0]) or current[0] == "sudo"):
                    current.pop(0)
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
    return out


def batchd_commands() -> list[list[str]]:
    return [c[1:] for block in code_blocks("sh") for c in commands(block) if c[0] == "batchd"]


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return _parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"README command does not parse: batchd {shlex.join(argv)}") from exc


def test_every_shell_command_is_batchd_or_an_allowed_program() -> None:
    found = [c for block in code_blocks("sh") for c in commands(block)]
    assert len(found) > 20  # the extraction works at all
    for command in found:
        program = command[0]
        assert program == "batchd" or program in OTHER_PROGRAMS, f"unexpected program in the README: {command}"
        if "/" in program:
            assert (REPO / program).is_file(), program


def test_every_batchd_command_in_a_code_block_parses() -> None:
    found = batchd_commands()
    assert {c[0] for c in found} >= {"run", "status", "cancel", "retry", "doctor"}
    for argv in found:
        _parse(argv)


def test_every_inline_batchd_command_parses() -> None:
    spans = re.findall(r"`(?:sudo )?batchd ([a-z][^`]*)`", _text())
    assert spans
    for span in spans:
        argv = shlex.split(span.split(" | ")[0])
        _parse([PLACEHOLDERS.get(w, w) for w in argv])


def test_the_batchd_commands_run_against_the_emulator(folders: Folders, emulator: Emulator) -> None:
    env = folders.env(emulator.url)
    (folders.inbox / "hello.jsonl").write_text(
        '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "gemma3:4b", "messages": [{"role": "user", "content": "hi"}]}}\n'
    )
    expected = {"cancel": 2, "retry": 2}  # the README's sample ids are not in this journal: exit 2, one line
    ran = set()
    for argv in sorted(batchd_commands(), key=lambda a: a[0] != "run"):  # run first: status has a job to show
        if argv[0] == "run" and "--once" not in argv:
            continue  # the service itself: run --once is the same code and returns
        r = run_batchd(env, *argv, timeout=120)
        assert r.returncode == expected.get(argv[0], 0), f"batchd {shlex.join(argv)}: {r.stdout}{r.stderr}"
        assert "Traceback" not in r.stderr, r.stderr
        if argv[0] in expected:
            assert r.stderr.startswith("batchd: configuration error: JOB: no job ") and r.stderr.count("\n") == 1
        ran.add(argv[0])
    assert ran >= {"run", "status", "cancel", "retry", "doctor"}
    assert (folders.outbox / "hello" / "results.jsonl").exists()


def _synopsis() -> list[str]:
    section = _text().split("\n## Command line\n", 1)[1]
    block = _FENCE.search(section)
    assert block is not None
    return [line for line in block.group(2).splitlines() if line.strip()]


def test_the_synopsis_lists_every_command_and_option_and_parses() -> None:
    lines = _synopsis()
    shown: dict[str, set[str]] = {}
    for line in lines:
        usage = re.split(r"\s{2,}", line.strip())[0]
        for part in usage.split(" | "):
            words = part.replace("[", " ").replace("]", " ").split()
            assert words[0] == "batchd", line
            argv = [PLACEHOLDERS.get(w, w) for w in words[1:] if w != "COMMAND" and w != "..."]
            if argv and argv[0] == "--config":
                argv = argv[:2]
            if argv != ["--version"] and argv[:1] != ["--config"]:
                _parse(argv)
                shown.setdefault(argv[0], set()).update(w for w in words if w.startswith("-"))
            else:
                shown.setdefault("", set()).update(w for w in words if w.startswith("-"))
    parser = _parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) <= set(shown), (
        f"commands missing from the synopsis: {set(subparsers.choices) - set(shown)}"
    )
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and "--help" not in action.option_strings:
                assert set(action.option_strings) & shown[name], (
                    f"batchd {name} {action.option_strings[-1]} is missing from the synopsis"
                )
    top = {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}
    assert top <= shown.get("", set()), f"top-level options missing from the synopsis: {top - shown.get('', set())}"


def test_the_python_example_compiles() -> None:
    for block in code_blocks("python"):
        compile(block, "README.md", "exec")


def test_the_sample_configuration_error_is_what_batchd_prints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = re.findall(r"`(batchd: configuration error: [^`]+)`", _text())
    assert samples
    (tmp_path / "c.toml").write_text("")
    monkeypatch.setenv("BATCHD_CONFIG", str(tmp_path / "c.toml"))
    for sample in samples:
        key, value = re.fullmatch(r"batchd: configuration error: ([\w.]+): .*\(got '(.*)'\)", sample).groups()
        env = "BATCHD_" + key.upper().replace(".", "__")
        monkeypatch.setenv(env, value)
        assert main(["status"]) == 2
        assert capsys.readouterr().err == sample + "\n"
        monkeypatch.delenv(env)


def test_the_reliability_page_names_tests_that_exist() -> None:
    # docs/RELIABILITY.md: a bare test_x.py is in tests/reliability/, others carry their folder.
    text = (REPO / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    names = set(re.findall(r"`((?:[a-z]+/)?test_\w+\.py)`", text))
    assert len(names) >= 8
    for name in names:
        path = REPO / "tests" / (name if "/" in name else f"reliability/{name}")
        assert path.is_file(), f"docs/RELIABILITY.md names {name}, which is not {path}"


def test_the_scores_csv_columns_are_listed_in_their_real_order() -> None:
    from batchd.publish.scores import ScoreSheet

    row = re.search(r"^\| `scores\.csv` \| (.+) \|$", _text(), re.MULTILINE)
    assert row is not None
    words = {
        "the score": "score",
        "the pipeline's passthrough columns": "passthrough",
        "the other schema fields": "field",
    }
    listed = [words.get(part, part.strip("`")) for part in row.group(1).split(", ")]
    real = ScoreSheet(fields=["score", "field"], passthrough=["passthrough"]).header()
    assert listed == real
