"""The harness itself: systemd and journald really work inside the machine."""

from __future__ import annotations

import pytest
from harness import SystemdMachine

pytestmark = pytest.mark.system


def test_machine_runs_systemd_and_journald(machine: SystemdMachine) -> None:
    assert machine.boot_seconds is not None and machine.boot_seconds < 30
    assert machine.is_active("basic.target"), machine.diagnostics()
    assert machine.run("systemd-detect-virt", check=False).stdout.strip() == "container-other"
    # PID 1 inside is systemd, and the machine sees its own process tree.
    assert machine.read_text("/proc/1/comm").strip() == "systemd"

    r = machine.run("systemd-run", "--unit=hello", "--wait", "--collect", "/bin/true", check=False)
    assert r.returncode == 0, r.stderr + machine.diagnostics()

    entries = machine.wait_for(lambda: machine.journal("hello"), timeout=10, what="journal entries of hello.service")
    messages = [str(e.get("MESSAGE", "")) for e in entries]
    assert any("hello.service" in m for m in messages), messages


def test_files_written_from_the_host_are_seen_inside(machine: SystemdMachine) -> None:
    machine.write_file("/run/systest/probe.txt", "hi\n", mode=0o640, owner="root:root")
    assert machine.run("cat", "/run/systest/probe.txt").stdout == "hi\n"
    # The overlay keeps the host untouched.
    machine.run("sh", "-c", "echo x > /etc/systest-only-inside")
    assert machine.path("/etc/systest-only-inside").exists()
    from pathlib import Path

    assert not Path("/etc/systest-only-inside").exists()
