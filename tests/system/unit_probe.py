"""Stand-in for batchd under packaging/batchd.service: checks the sandbox lets it work.

Run by test_unit_sandbox.py inside the systemd machine as the unit's ExecStart
(stdlib only: it runs on the system python3, not batchd's venv). It does, once,
each thing the daemon needs from its environment, prints one JSON line
``PROBE {...}`` with a verdict per check, then behaves like a Type=notify
daemon: READY=1, WATCHDOG=1 from its loop, SIGHUP reloads, SIGTERM stops.
"""

from __future__ import annotations

import ctypes
import grp
import json
import os
import shutil
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

INBOX = Path("/srv/batchd/inbox")
OUTBOX = Path("/srv/batchd/outbox")
STOP = False
RELOADS = 0


def notify(message: str) -> None:
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


def check(results: dict[str, object], name: str, fn: Callable[[], object]) -> None:
    try:
        results[name] = fn()
    except Exception as exc:  # the verdict is the point: report, do not crash
        results[name] = f"{type(exc).__name__}: {exc}"


def state_dir_sqlite_wal() -> bool:
    state = Path(os.environ["BATCHD_STATE_DIR"])
    db_path = state / "probe.sqlite3"
    db = sqlite3.connect(db_path)
    try:
        mode = db.execute("pragma journal_mode=wal").fetchone()[0]
        db.execute("create table t(x)")
        db.execute("insert into t values (1)")
        db.commit()
    finally:
        db.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return bool(mode == "wal")


def claim_from_inbox() -> bool:
    """Copy a file someone else dropped into the spool, then remove it from the inbox."""
    src = INBOX / "dropped-by-root.csv"
    spool = Path(os.environ["BATCHD_STATE_DIR"]) / "probe-spool"
    spool.mkdir(exist_ok=True)
    shutil.copyfile(src, spool / src.name)
    src.unlink()
    shutil.rmtree(spool)
    return not src.exists()


def outbox_file_mode() -> str:
    """Mode and group of a file the daemon writes to the outbox (UMask + setgid)."""
    path = OUTBOX / "probe.txt"
    path.write_text("x")
    st = path.stat()
    result = f"{st.st_mode & 0o777:o} {grp.getgrgid(st.st_gid).gr_name}"
    path.unlink()
    return result


def chgrp_outbox() -> bool:
    path = OUTBOX / "probe-chgrp.txt"
    path.write_text("x")
    try:
        os.chown(path, -1, grp.getgrnam("batchd-users").gr_gid)
    finally:
        path.unlink()
    return True


def system_is_read_only() -> str:
    # /run/lock is world-writable (1777): only ProtectSystem=strict stops the write.
    try:
        Path("/run/lock/batchd-probe").write_text("x")
    except OSError as exc:
        return os.strerror(exc.errno or 0)
    return "writable"


def socket_error(family: int, kind: int, address: tuple[str, int] | None = None) -> str:
    try:
        s = socket.socket(family, kind)
    except OSError as exc:
        return os.strerror(exc.errno or 0)
    with s:
        if address is None:
            return "ok"
        s.settimeout(2)
        try:
            s.connect(address)
        except OSError as exc:
            return os.strerror(exc.errno or 0)
        return "connected"


def inotify() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(0))
    if fd < 0:
        return False
    wd = int(libc.inotify_add_watch(fd, str(INBOX).encode(), 0x100 | 0x08))  # CREATE|CLOSE_WRITE
    os.close(fd)
    return wd >= 0


def ctypes_callback() -> bool:
    # libffi closures (llama-cpp-python's log callback) under MemoryDenyWriteExecute.
    fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
    return bool(fn(1) == 2)


def rss_from_proc() -> bool:
    return "VmRSS:" in Path("/proc/self/status").read_text()


def mountinfo_from_proc() -> bool:
    return " /srv/batchd " in Path("/proc/self/mountinfo").read_text()


def main() -> int:
    global STOP, RELOADS

    def on_term(signum: int, frame: object) -> None:
        global STOP
        STOP = True

    def on_hup(signum: int, frame: object) -> None:
        global RELOADS
        RELOADS += 1

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_hup)

    results: dict[str, object] = {
        "uid_name": __import__("pwd").getpwuid(os.getuid()).pw_name,
        "groups": sorted(grp.getgrgid(g).gr_name for g in os.getgroups()),
        "env": {
            k: os.environ.get(k) for k in ("BATCHD_STATE_DIR", "STATE_DIRECTORY", "BATCHD_CONFIG", "WATCHDOG_USEC")
        },
    }
    check(results, "sqlite_wal", state_dir_sqlite_wal)
    check(results, "claim", claim_from_inbox)
    check(results, "outbox_file", outbox_file_mode)
    check(results, "chgrp", chgrp_outbox)
    check(results, "read_only_system", system_is_read_only)
    check(results, "config_readable", lambda: Path(os.environ["BATCHD_CONFIG"]).is_file())
    closed_port = ("127.0.0.1", 9)  # discard: nothing listens in the machine
    check(results, "tcp", lambda: socket_error(socket.AF_INET, socket.SOCK_STREAM, closed_port))
    check(results, "tcp6", lambda: socket_error(socket.AF_INET6, socket.SOCK_STREAM))
    check(results, "netlink", lambda: socket_error(socket.AF_NETLINK, socket.SOCK_RAW))
    check(results, "inotify", inotify)
    check(results, "ctypes_callback", ctypes_callback)
    check(results, "rss", rss_from_proc)
    check(results, "mountinfo", mountinfo_from_proc)
    check(results, "tmp_private", lambda: not Path("/tmp/host-marker").exists())
    print("PROBE " + json.dumps(results, sort_keys=True), flush=True)

    notify("READY=1\nSTATUS=probe ready")
    interval = int(os.environ.get("WATCHDOG_USEC", "2000000")) / 2e6
    seen = 0
    while not STOP:
        if RELOADS != seen:
            seen = RELOADS
            print(f"PROBE reloaded {seen}", flush=True)
            notify(f"STATUS=probe reloaded {seen}")
        notify("WATCHDOG=1")
        time.sleep(min(interval, 0.1))
    notify("STOPPING=1")
    print("PROBE stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
