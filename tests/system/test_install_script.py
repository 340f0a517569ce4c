"""packaging/install.sh inside the systemd machine: install, re-run, uninstall.

Offline: the wheel is built on the host (skipped when that fails, e.g. no
package index), then installed inside with --no-index --no-deps and no extras,
so this checks the script's own steps, not the dependency downloads. The
end-to-end test installs the real thing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SystemdMachine, purge_batchd

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
INSTALL = str(REPO / "packaging/install.sh")
OFFLINE = {"BATCHD_INSTALL_EXTRAS": "", "BATCHD_PIP_ARGS": "--no-index --no-deps"}
KEPT = ("/etc/batchd", "/var/lib/batchd", "/srv/batchd")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """batchd's wheel, built from a copy of the checkout (in-tree builds write build/)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "build", "*.egg-info", ".*cache", ".venv", "__pycache__", ".benchmarks"
        ),
    )
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist")]
        + [str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheels = list((work / "dist").glob("batchd-*.whl"))
    if r.returncode or not wheels:
        pytest.skip(f"cannot build batchd's wheel here: {r.stderr.strip()[-300:]}")
    return wheels[0]


@pytest.fixture
def clean_machine(machine: SystemdMachine) -> Iterator[SystemdMachine]:
    purge_batchd(machine)
    yield machine
    purge_batchd(machine)
    machine.run("rm", "-rf", "/tmp/wheelhouse", check=False)


def _stat(m: SystemdMachine, path: str) -> str:
    return m.run("stat", "-c", "%a %U %G", path).stdout.strip()


@pytest.mark.slow
def test_install_rerun_uninstall(clean_machine: SystemdMachine, wheel: Path) -> None:
    m = clean_machine
    inside = f"/tmp/wheelhouse/{wheel.name}"
    m.write_file(inside, wheel.read_bytes())

    r = m.run(INSTALL, "--source", inside, env=OFFLINE, check=False, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "==> Done: batchd " in r.stdout

    assert "batchd-users" in m.run("id", "-nG", "batchd").stdout.split()
    assert _stat(m, "/srv/batchd/inbox") == "3770 batchd batchd-users"
    assert _stat(m, "/srv/batchd/outbox") == "2750 batchd batchd-users"
    assert _stat(m, "/etc/batchd/batchd.toml") == "640 root batchd"
    assert m.path("/opt/batchd/venv/bin/batchd").exists()
    props = m.show("batchd", "LoadState", "FragmentPath", "UnitFileState")
    assert props == {
        "LoadState": "loaded",
        "FragmentPath": "/etc/systemd/system/batchd.service",
        "UnitFileState": "disabled",
    }, props

    # A re-run upgrades in place and keeps the operator's config.
    m.write_file("/etc/batchd/batchd.toml", 'inbox = "/srv/batchd/inbox"\n')
    r = m.run(INSTALL, "--source", inside, env=OFFLINE, check=False, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exists; upgrading in place" in r.stdout
    assert m.read_text("/etc/batchd/batchd.toml") == 'inbox = "/srv/batchd/inbox"\n'

    r = m.run(INSTALL, "--uninstall", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m.show("batchd", "LoadState")["LoadState"] == "not-found"
    assert not m.path("/opt/batchd").exists()
    for kept in KEPT:
        assert kept in r.stdout
    assert m.path("/etc/batchd/batchd.toml").exists()
    assert m.path("/srv/batchd/inbox").is_dir()


def test_install_refuses_non_root(machine: SystemdMachine) -> None:
    r = machine.run("bash", INSTALL, user="nobody", check=False)
    assert r.returncode == 1
    assert "must run as root" in r.stderr


def test_install_rejects_unknown_argument(machine: SystemdMachine) -> None:
    r = machine.run(INSTALL, "--frobnicate", check=False)
    assert r.returncode == 2
    assert "unknown argument: --frobnicate" in r.stderr
