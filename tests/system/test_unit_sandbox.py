"""packaging/batchd.service under a real systemd: the sandbox admits what batchd does.

The unit is installed as it ships, with only ExecStart swapped for
unit_probe.py (stdlib only), which exercises state dir, inbox, outbox,
sockets, inotify and sd_notify, and reports a verdict per check.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SystemdMachine, purge_batchd

pytestmark = pytest.mark.system

HERE = Path(__file__).resolve().parent
PACKAGING = HERE.parents[1] / "packaging"
PROBE = "/usr/local/lib/batchd-probe/unit_probe.py"


def _host_has_ipv6() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


@pytest.fixture
def probe_unit(machine: SystemdMachine) -> Iterator[SystemdMachine]:
    """Users, folders, config and the unit as install.sh lays them out; all removed after."""
    m = machine
    purge_batchd(m)
    m.write_file("/usr/lib/sysusers.d/batchd.conf", (PACKAGING / "batchd.sysusers").read_text())
    m.run("systemd-sysusers", "/usr/lib/sysusers.d/batchd.conf")
    m.write_file("/usr/lib/tmpfiles.d/batchd.conf", (PACKAGING / "batchd.tmpfiles").read_text())
    m.run("systemd-tmpfiles", "--create", "/usr/lib/tmpfiles.d/batchd.conf")
    m.write_file(
        "/etc/batchd/batchd.toml",
        (PACKAGING / "batchd.toml").read_text(),
        mode=0o640,
        owner="root:batchd",
    )
    m.write_file(PROBE, (HERE / "unit_probe.py").read_text(), mode=0o644)
    m.write_file("/srv/batchd/inbox/dropped-by-root.csv", "id,name\n1,Ada\n", mode=0o640)
    m.run("chgrp", "batchd-users", "/srv/batchd/inbox/dropped-by-root.csv")
    m.write_file("/tmp/host-marker", "")
    unit = (PACKAGING / "batchd.service").read_text()
    unit = unit.replace("ExecStart=/opt/batchd/venv/bin/batchd run", f"ExecStart=/usr/bin/python3 {PROBE}")
    m.write_file("/etc/systemd/system/batchd.service", unit)
    m.systemctl("daemon-reload")
    try:
        yield m
    finally:
        purge_batchd(m)
        m.run("rm", "-rf", "/usr/local/lib/batchd-probe", "/tmp/host-marker", check=False)


def _probe_report(m: SystemdMachine) -> dict[str, object]:
    for entry in m.journal("batchd"):
        message = str(entry.get("MESSAGE", ""))
        if message.startswith("PROBE {"):
            return dict(json.loads(message[len("PROBE ") :]))
    raise AssertionError("no PROBE line in the journal\n" + m.diagnostics())


def test_sandbox_admits_what_batchd_needs(probe_unit: SystemdMachine) -> None:
    m = probe_unit
    # Type=notify: start returns once the probe sent READY=1.
    r = m.systemctl("start", "batchd", check=False)
    assert r.returncode == 0, r.stderr + m.diagnostics()
    props = m.show("batchd", "ActiveState", "StatusText", "NRestarts", "WatchdogUSec")
    assert props["ActiveState"] == "active", props
    assert props["StatusText"] == "probe ready", props

    # No complaints from systemd while setting the sandbox up (a DeviceAllow=
    # path that does not exist, an unknown group, a failed mount...).
    warnings = [str(e.get("MESSAGE")) for e in m.journal("batchd", "-p", "warning")]
    assert not warnings, warnings

    report = _probe_report(m)
    assert report["uid_name"] == "batchd"
    groups = report["groups"]
    assert isinstance(groups, list) and {"batchd", "batchd-users"} <= set(groups), groups
    assert report["env"] == {
        "BATCHD_STATE_DIR": "/var/lib/batchd",
        "STATE_DIRECTORY": "/var/lib/batchd",
        "BATCHD_CONFIG": "/etc/batchd/batchd.toml",
        "WATCHDOG_USEC": "120000000",
    }
    expected = {
        "sqlite_wal": True,
        "claim": True,
        "outbox_file": "640 batchd-users",  # UMask=0027 + the outbox's setgid bit
        "chgrp": True,
        "read_only_system": "Read-only file system",  # ProtectSystem=strict
        "config_readable": True,
        "tcp": "Connection refused",  # allowed; nothing listens on port 9
        "tcp6": "ok" if _host_has_ipv6() else report["tcp6"],
        "netlink": "Address family not supported by protocol",  # RestrictAddressFamilies
        "inotify": True,
        "ctypes_callback": True,  # libffi closures survive MemoryDenyWriteExecute
        "rss": True,
        "mountinfo": True,
        "tmp_private": True,
    }
    got = {k: report.get(k) for k in expected}
    assert got == expected

    # ExecReload sends SIGHUP to the main process.
    m.systemctl("reload", "batchd")
    m.wait_for(
        lambda: m.show("batchd", "StatusText")["StatusText"] == "probe reloaded 1",
        timeout=10,
        what="STATUS after reload",
    )

    started = time.monotonic()
    m.systemctl("stop", "batchd")
    assert time.monotonic() - started < 10
    props = m.show("batchd", "ActiveState", "Result", "NRestarts")
    assert props == {"ActiveState": "inactive", "Result": "success", "NRestarts": "0"}, props
