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
from harness import DEFAULT_PATH, SystemdMachine, purge_batchd

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
INSTALL = str(REPO / "packaging/install.sh")
OFFLINE = {"BATCHD_INSTALL_EXTRAS": "", "BATCHD_PIP_ARGS": "--no-index --no-deps"}
KEPT = ("/etc/batchd", "/var/lib/batchd", "/srv/batchd")
# A python3 as pyenv or conda would put it first on root's PATH: under /root, which
# ProtectHome=yes hides from the unit. A link to the system's python keeps it offline and fast.
HOME_PYTHON_DIR = "/root/.pyenv-systest/bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """batchd's wheel, built from a copy of the checkout (in-tree builds write build/)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", ".*cache", ".venv", "__pycache__", ".benchmarks"),
    )
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist")] + [str(src)],
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


@pytest.fixture
def home_python(clean_machine: SystemdMachine) -> Iterator[str]:
    m = clean_machine
    m.run("mkdir", "-p", HOME_PYTHON_DIR)
    m.run("ln", "-sf", "/usr/bin/python3", f"{HOME_PYTHON_DIR}/python3")
    yield f"{HOME_PYTHON_DIR}/python3"
    m.run("rm", "-rf", HOME_PYTHON_DIR.rsplit("/", 1)[0], check=False)


@pytest.mark.slow
def test_install_passes_over_a_python3_under_root(clean_machine: SystemdMachine, home_python: str, wheel: Path) -> None:
    """root's python3 is pyenv's: the venv is built on /usr/bin/python3, and batchd runs it."""
    m = clean_machine
    inside = f"/tmp/wheelhouse/{wheel.name}"
    m.write_file(inside, wheel.read_bytes())
    env = {**OFFLINE, "PATH": f"{HOME_PYTHON_DIR}:{DEFAULT_PATH}"}
    assert m.run("sh", "-c", "command -v python3", env=env).stdout.strip() == home_python
    r = m.run(INSTALL, "--source", inside, env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{home_python}, under a home directory that batchd.service cannot see" in r.stdout
    assert "using /usr/bin/python3" in r.stdout
    assert "home = /usr/bin\n" in m.read_text("/opt/batchd/venv/pyvenv.cfg")
    assert not m.run("readlink", "-f", "/opt/batchd/venv/bin/python").stdout.startswith("/root/")
    # install.sh's own last check, and the same by hand
    assert "Checking that batchd can run /opt/batchd/venv/bin/batchd" in r.stdout
    assert m.run("/opt/batchd/venv/bin/batchd", "--version", user="batchd").stdout.startswith("batchd ")


def test_install_refuses_an_explicit_python_under_root(clean_machine: SystemdMachine, home_python: str) -> None:
    r = clean_machine.run(INSTALL, env={**OFFLINE, "BATCHD_PYTHON": home_python}, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("install.sh:")]  # one line says it all
    assert "cannot see (ProtectHome=yes)" in line and "fix: BATCHD_PYTHON=/usr/bin/python3" in line, line
    assert not clean_machine.path("/opt/batchd/venv").exists()


def test_install_refuses_a_python_the_service_user_cannot_reach(clean_machine: SystemdMachine) -> None:
    """Outside any home, but behind a 0700 folder: batchd could not run the venv either."""
    m = clean_machine
    m.run("mkdir", "-p", "/opt/private-py/bin")
    m.run("chmod", "0700", "/opt/private-py")
    m.run("ln", "-sf", "/usr/bin/python3", "/opt/private-py/bin/python3")
    try:
        r = m.run(INSTALL, env={**OFFLINE, "BATCHD_PYTHON": "/opt/private-py/bin/python3"}, check=False)
    finally:
        m.run("rm", "-rf", "/opt/private-py", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("install.sh:")]
    assert "which the batchd user cannot run" in line and "fix: BATCHD_PYTHON=/usr/bin/python3" in line, line


def test_install_refuses_non_root(machine: SystemdMachine) -> None:
    # A copy nobody can read: the checkout may sit in a 0700 home (/root/src/batchd).
    script = "/tmp/batchd-install-probe/install.sh"
    machine.write_file(script, Path(INSTALL).read_bytes(), mode=0o755)
    machine.path(script).parent.chmod(0o755)
    try:
        r = machine.run("bash", script, user="nobody", check=False)
    finally:
        machine.run("rm", "-rf", "/tmp/batchd-install-probe", check=False)
    assert r.returncode == 1, r.stderr
    assert "must run as root" in r.stderr


def test_install_rejects_unknown_argument(machine: SystemdMachine) -> None:
    r = machine.run(INSTALL, "--frobnicate", check=False)
    assert r.returncode == 2
    assert "unknown argument: --frobnicate" in r.stderr
