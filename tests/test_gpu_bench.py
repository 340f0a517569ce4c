"""bench/gpu.sh: the "no GPU" line here, and its measuring half against the emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.emulator import Emulator

REPO = Path(__file__).resolve().parent.parent


def _no_gpu_here() -> bool:
    from bench.gpu import detect_gpu

    return detect_gpu()[0] is None


@pytest.mark.skipif(not _no_gpu_here(), reason="this machine has a GPU: the script would install and measure")
def test_without_a_gpu_it_says_so_and_exits_0() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    for cmd in (["bash", "bench/gpu.sh"], [sys.executable, "-m", "bench.gpu"]):
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("no GPU: ") and "nothing measured" in out.stdout
        assert "pip" not in out.stdout  # nothing was installed


def test_measures_old_tool_and_batchd_lanes_against_a_server(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import gpu

    with Emulator(latency=0.01, slots=2) as emu:
        code = gpu.main(
            [
                "--url",
                emu.url,
                "--allow-no-gpu",
                "--requests",
                "24",
                "--old-requests",
                "6",
                "--lanes",
                "1,auto",
                "--max-tokens",
                "16",
            ]
        )
        calls = list(emu.calls)
    out = capsys.readouterr().out
    assert code == 0, out
    table = out[out.index("mode ") :].splitlines()
    assert [line.split()[0:3] for line in table[1:4]] == [
        ["old", "tool", "6"],
        ["batchd", "lanes", "1"],
        ["batchd", "lanes", "auto"],
    ]
    for line in table[1:4]:
        assert float(line[22:].split()[2]) > 0  # req/s, after the 22-character mode column
    assert table[3].split("  ")[-1].strip().startswith("auto (")  # the lanes auto ended at, and its max
    # then the bare client at each integer lane count (where aiohttp is installed), and auto's two ratios
    bare = [line for line in table if line.startswith("bare client")]
    assert [line.split()[2] for line in bare] == ([] if "aiohttp is not installed" in out else ["1"])
    ratios = next(line for line in table if line.startswith("# auto/best fixed "))
    assert float(ratios.split()[3]) > 0 and "auto/best bare" in ratios
    # every run sent rows of its own: llama.cpp answers a prompt it has seen from its cache (1.5x faster)
    prompts = [call["messages"][-1]["content"] for call in calls]
    runs = 3 + len(bare)  # old tool, lanes 1, lanes auto, the bare clients
    assert len(prompts) == len(set(prompts)) == 6 + 24 * (runs - 1), len(prompts)


def test_a_run_whose_rows_fail_is_reported_failed_not_fast(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import gpu

    with Emulator(latency=0.0, models=("other:1b",)) as emu:  # batchd asks for a model it does not serve
        code = gpu.main(
            [
                "--url",
                emu.url,
                "--allow-no-gpu",
                "--requests",
                "5",
                "--old-requests",
                "2",
                "--lanes",
                "1",
                "--model",
                "gemma3:4b",
            ]
        )
    out = capsys.readouterr().out
    assert code == 1
    assert "batchd lanes 1: FAILED 5 of 5 requests" in out
    row = next(line for line in out.splitlines() if line.startswith("batchd lanes 1 "))
    assert "FAILED" in row
