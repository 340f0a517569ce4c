"""A throwaway machine with a real systemd as PID 1, for system tests.

`SystemdMachine` boots ``/lib/systemd/systemd`` in private PID, mount, cgroup,
UTS and IPC namespaces, on a copy-on-write overlay of the host's ``/``, so a
test does what an operator does (``systemctl start batchd``, ``journalctl -u
batchd -o json``) and the host keeps none of it. Needs root; no container
engine. It shares the host's network namespace, so a server a test runs on
host loopback (the LLM emulator) is reachable from inside.

Recipe (DESIGN.md "A real systemd for tests"), with the changes this kind of
host needs (Firecracker VM, PID 1 is not systemd, hybrid cgroup v1 + v2 with
only hugetlb on v2, systemd 252, / on ext4):

* The overlay (tmpfs upper, ``lowerdir=/``) is mounted in the *host* mount
  namespace, under ``SystemdMachine.root``, so a test can read and write the
  machine's files directly and read its persistent journal after it stopped.
  The lower layer is only the root file system: anything the host has on
  another mount must be passed in ``binds``.
* A fresh ``proc`` instead of ``--rbind /proc``: a bind shows the host's PIDs
  (``/proc/1`` would be the host's init, and journald would look the senders
  of log lines up among the wrong processes). ``/proc/sys`` is read-only so
  boot units (systemd-sysctl) cannot change the host kernel's settings.
* A fresh read-only ``sysfs`` plus a fresh ``cgroup2`` at ``/sys/fs/cgroup``,
  in a cgroup namespace rooted at a cgroup made for the machine. Through the
  recipe's ``--rbind /sys`` systemd would see the host's hybrid hierarchy with
  its own cgroup at ``/`` and move services into the host's root cgroups, out
  of the memory cgroup this sandbox is confined to. Read-only ``/sys`` also
  keeps udev from re-triggering the host's devices. The cgroup is removed at
  stop; ``cgroup.kill`` is the last resort for stray processes.
* A private ``/dev`` (tmpfs with null, zero, full, random, urandom, tty, a new
  devpts instance, shm, and the host's ``/dev/nvidia*`` nodes when present)
  instead of ``--rbind /dev``: devtmpfs has a single instance, so journald's
  ``/dev/log`` link and other boot-time changes would land in the host's /dev.
  No ``/dev/kmsg``, and ``/dev/console`` is a file (``console.log``), so PID 1
  never writes to the host's console or kernel log; it logs to its journal.
* ``container=batchd-systest`` in PID 1's environment: systemd runs in
  container mode, so it leaves the host's ``kernel.core_pattern`` and
  ``pid_max`` alone and skips hardware units (timesyncd, udev, fstrim...).
* The checkout is mounted copy-on-write (a second overlay) rather than bound:
  ``pip install <checkout>`` builds in the source tree (``build/``,
  ``*.egg-info``), which must not land in the shared working tree.
* ``/etc/resolv.conf`` is copied into the overlay when it points into ``/run``
  (a fresh tmpfs inside), so pip can still resolve names.
* Boots ``basic.target``; this image enables PostgreSQL in multi-user.target.
  Inside the overlay ``/etc/fstab`` is emptied and the units that would mount
  the host kernel's debugfs, tracefs, configfs, fusectl and hugetlbfs are
  masked.
* Each machine records its owner process; ``cleanup_stale()`` kills and
  removes machines whose test run died (SIGKILL leaves systemd running).

Measured here: boot to ``basic.target`` active 0.6-0.7 s, poweroff ~0.3 s.

API (what a system test uses)::

    m = SystemdMachine(binds=[Bind("/root/.cache/pip")])   # + the checkout, copy-on-write
    with m:                                                # start(timeout=60) ... close()
        m.run("/work/main/packaging/install.sh", env={...})  # nsenter -p -m -u -i, clean env;
        m.run("/opt/batchd/venv/bin/batchd", "status", user="batchd")  # check=True raises
        m.write_file("/etc/batchd/batchd.toml", text, mode=0o640, owner="root:batchd")
        m.systemctl("start", "batchd")                       # also journalctl(...)
        m.wait_for(lambda: m.is_active("batchd"), timeout=30, what="batchd active")
        m.show("batchd", "StatusText")                       # {"StatusText": "..."}
        entries = m.journal("batchd")                        # journalctl -u batchd -o json
        m.path("/srv/batchd/outbox")                         # host path into the machine
        m.diagnostics()                                      # boot log + journal tail
    # after stop(): m.root and m.journalctl() still work until close()

``purge_batchd(m)`` removes an installation (unit, venv, config, state,
folders, users) so tests sharing the session machine start clean.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = Path("/lib/systemd/systemd")
REQUIRED_TOOLS = ("unshare", "nsenter", "mount", "umount", "pivot_root", "mknod")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINER_NAME = "batchd-systest"
# Boot units that would mount the host kernel's debugfs/tracefs/configfs/fusectl
# and hugetlbfs inside: none of a test's business, and they are global.
MASKED_UNITS = (
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
)


class BootError(RuntimeError):
    """The machine did not reach its target; ``str()`` carries the boot log tail."""


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside the machine.

    ``mode``: ``"rw"`` (bind; writes reach the host, e.g. a pip cache), ``"ro"``
    or ``"cow"`` (overlay; the machine sees the host's files, its writes stay in
    the machine).
    """

    source: Path | str
    target: Path | str | None = None
    mode: str = "rw"

    def __post_init__(self) -> None:
        if self.mode not in ("rw", "ro", "cow"):
            raise ValueError(f"Bind mode must be rw, ro or cow, not {self.mode!r}")


def unavailable_reason() -> str | None:
    """Why a machine cannot boot here, or None when it should."""
    if os.geteuid() != 0:
        return "needs root (namespaces, mounts, cgroups)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (util-linux)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} not found (install systemd)"
    if _cgroup2_parent() is None:
        return "no writable cgroup2 hierarchy for the machine's cgroup"
    return None


def _cgroup2_parent() -> Path | None:
    """The host cgroup2 directory this process is in, where the machine's cgroup goes."""
    mount = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            mount = Path(left.split()[4])
            break
    if mount is None:
        return None
    own = "/"
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            own = line[3:]
    parent = mount / own.lstrip("/")
    return parent if os.access(parent, os.W_OK) else None


def cleanup_stale(min_age: float = 60) -> list[Path]:
    """Kill and remove machines whose test process died (SIGKILL, a crash); return them.

    A machine records its owner (pid and start time). One whose owner is gone
    is killed through its cgroup, unmounted and deleted. Without an owner file
    a machine is only touched after ``min_age`` seconds (it may be booting).
    """
    parent = _cgroup2_parent()
    removed = []
    for base in Path(tempfile.gettempdir()).glob("batchd-machine-*"):
        try:
            owner = (base / "owner").read_text().split()
        except OSError:
            owner = []
        if owner and _alive(int(owner[0]), owner[1]):
            continue
        try:
            if not owner and time.time() - base.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        cgroup = parent / base.name if parent else None
        if cgroup is not None and cgroup.exists():
            deadline = time.monotonic() + 10
            while not _remove_tree(cgroup) and time.monotonic() < deadline:
                try:
                    (cgroup / "cgroup.kill").write_text("1")
                except OSError:
                    pass
                time.sleep(0.05)
        for mnt in (base / "m", base):
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: tells a live owner from a reused PID."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start_time: str) -> bool:
    try:
        return _start_time(pid) == start_time
    except (OSError, IndexError):
        return False


def _remove_tree(cgroup: Path) -> bool:
    """rmdir a cgroup and its children, deepest first; False while some are busy."""
    dirs = sorted((Path(d) for d, _, _ in os.walk(cgroup)), key=lambda p: -len(p.parts))
    try:
        for d in dirs:
            d.rmdir()
    except OSError:
        return False
    return True


class SystemdMachine:
    """systemd as PID 1 over a throwaway overlay of ``/``. See the module docstring.

    ``root`` is the host path of the machine's ``/`` overlay (valid from
    ``start()`` until ``close()``, including after ``stop()``); it lacks what is
    mounted inside (``/run``, ``/tmp``, binds). ``path()`` sees those too while
    the machine runs.
    """

    def __init__(
        self,
        *,
        binds: Iterable[Bind] = (),
        checkout: Path | str | None = REPO_ROOT,
        target: str = "basic.target",
        gpu_devices: bool = True,
    ) -> None:
        self.binds = list(binds)
        if checkout is not None:
            self.binds.insert(0, Bind(checkout, mode="cow"))
        self.target = target
        self.gpu_devices = gpu_devices
        self.pid: int | None = None
        self.boot_seconds: float | None = None
        self._base: Path | None = None
        self._cgroup: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def root(self) -> Path:
        if self._base is None:
            raise RuntimeError("machine not started")
        return self._base / "m"

    @property
    def boot_log(self) -> Path:
        """Set-up commands, then everything PID 1 writes to its console."""
        if self._base is None:
            raise RuntimeError("machine not started")
        return self._base / "console.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> SystemdMachine:
        reason = unavailable_reason()
        if reason:
            raise BootError(reason)
        started = time.monotonic()
        try:
            self._prepare()
            self._spawn()
            self._wait_booted(started + timeout)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 20) -> None:
        """Power off; SIGKILL the machine's PID 1 if that takes over ``timeout``."""
        if self._proc is None:
            return
        if self.running and self.pid is not None:
            try:
                self._nsenter(["systemctl", "poweroff", "--no-block"], check=False, timeout=10)
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass  # SIGKILL below
        if self._proc.poll() is None:
            if self.pid is not None:
                _kill(self.pid)
            self._kill_cgroup()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        self._kill_cgroup()
        self._remove_cgroup()
        self.pid = None

    def close(self) -> None:
        """Stop, then unmount and delete everything the machine left on the host."""
        self.stop()
        self._proc = None
        self._remove_cgroup()
        if self._base is not None:
            for mnt in (self._base / "m", self._base):
                if os.path.ismount(mnt):
                    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
                        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            try:
                self._base.rmdir()
            except OSError:
                pass
            self._base = None

    def __enter__(self) -> SystemdMachine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driving it --------------------------------------------------------

    def run(
        self,
        *cmd: str,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (its PID and mount namespaces), clean environment.

        ``user`` runs it as that user (runuser). ``check`` raises
        CalledProcessError carrying stdout/stderr.
        """
        argv = list(cmd)
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        return self._nsenter(argv, check=check, input=input, env=env, timeout=timeout)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=120)

    def journalctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """journalctl inside; after stop(), the host reads the machine's journal files."""
        if self.running:
            return self.run("journalctl", "--no-pager", *args, check=check, timeout=120)
        directory = self.root / "var/log/journal"
        return subprocess.run(
            ["journalctl", "--no-pager", "-D", str(directory), *args],
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def journal(self, unit: str | None = None, *args: str) -> list[dict[str, object]]:
        """Journal entries as dicts (``journalctl -o json``), optionally of one unit."""
        extra = ["-u", unit] if unit else []
        out = self.journalctl(*extra, "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def is_active(self, unit: str) -> bool:
        return self.systemctl("is-active", "--quiet", unit, check=False).returncode == 0

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties as a dict (all of them when none named)."""
        args = [f"--property={p}" for p in props]
        out = self.systemctl("show", unit, *args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str | os.PathLike[str]) -> Path:
        """Host path of a path inside the machine.

        While it runs: through ``/proc/<pid>/root`` (sees /run, /tmp and binds).
        After stop(): in ``root`` (the overlay only).
        """
        rel = str(inside).lstrip("/")
        if self.running and self.pid is not None:
            return Path(f"/proc/{self.pid}/root") / rel
        return self.root / rel

    def write_file(
        self,
        inside: str | os.PathLike[str],
        content: str | bytes,
        *,
        mode: int | None = None,
        owner: str | None = None,
    ) -> Path:
        """Write a file inside (parents created); ``owner`` is ``user[:group]`` inside."""
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.systest-tmp")
        tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            tmp.chmod(mode)
        tmp.replace(target)  # a watcher inside never sees a half-written file
        if owner is not None:
            self.run("chown", owner, str(inside))
        return target

    def read_text(self, inside: str | os.PathLike[str]) -> str:
        return self.path(inside).read_text()

    @staticmethod
    def wait_for(
        predicate: Callable[[], T],
        timeout: float = 30,
        interval: float = 0.1,
        what: str = "condition",
    ) -> T:
        """Poll ``predicate`` until it returns something truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    def diagnostics(self, lines: int = 60) -> str:
        """Boot log and journal tail, for assertion messages."""
        parts = []
        if self._base is not None and self.boot_log.exists():
            tail = self.boot_log.read_text(errors="replace").splitlines()[-lines:]
            parts.append("--- boot log ---\n" + "\n".join(tail))
        if self.running:
            j = self.journalctl("-n", str(lines), check=False)
            parts.append("--- journal ---\n" + j.stdout + j.stderr)
        return "\n".join(parts)

    # -- internals ---------------------------------------------------------

    def _nsenter(
        self,
        argv: Sequence[str],
        *,
        check: bool,
        timeout: float,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if self.pid is None:
            raise RuntimeError("machine not running")
        environ = {
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "TERM": "dumb",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
        }
        environ.update(env or {})
        full = ["nsenter", "-t", str(self.pid), "-p", "-m", "-u", "-i", "--", *argv]
        return subprocess.run(
            full,
            check=check,
            input=input,
            capture_output=True,
            text=True,
            env=environ,
            timeout=timeout,
        )

    def _prepare(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="batchd-machine-"))
        self._base = base
        _sh(f"mount -t tmpfs -o mode=0700 batchd-machine {q(base)}")
        (base / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        for d in ("u", "w", "m"):
            (base / d).mkdir()
        _sh(
            f"mount -t overlay batchd-machine -o lowerdir=/,upperdir={q(base / 'u')},"
            f"workdir={q(base / 'w')} {q(base / 'm')}"
        )
        resolv = Path("/etc/resolv.conf")
        if resolv.is_symlink() and os.path.realpath(resolv).startswith("/run/"):
            text = resolv.read_text() if resolv.exists() else ""
            (base / "m/etc/resolv.conf").unlink()
            (base / "m/etc/resolv.conf").write_text(text)
        etc = base / "m/etc"
        # The machine's mounts are the harness's: no fstab entries for the host's disks.
        if (etc / "fstab").exists():
            (etc / "fstab").write_text("# emptied by tests/system/harness.py\n")
        for unit in MASKED_UNITS:
            link = etc / "systemd/system" / unit
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        parent = _cgroup2_parent()
        assert parent is not None
        self._cgroup = parent / base.name
        self._cgroup.mkdir()
        (base / "setup.sh").write_text(self._setup_script())

    def _setup_script(self) -> str:
        """Runs as PID 1 of the new namespaces; ends by exec'ing systemd."""
        assert self._base is not None
        m = self._base / "m"
        lines = [
            "set -eux",
            f"M={q(m)}",
            'mount -t proc proc "$M/proc"',
            'mount --bind "$M/proc/sys" "$M/proc/sys"',
            'mount -o remount,bind,ro "$M/proc/sys"',
            'mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$M/sys"',
            'mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$M/sys/fs/cgroup"',
            'mount -t tmpfs -o mode=755,nosuid,size=1m batchd-dev "$M/dev"',
        ]
        for name, major, minor in (
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ):
            lines.append(f'mknod -m 666 "$M/dev/{name}" c {major} {minor}')
        if self.gpu_devices:
            for node in sorted(Path("/dev").glob("nvidia*")):
                st = node.stat()
                if node.is_char_device():
                    maj, mnr = os.major(st.st_rdev), os.minor(st.st_rdev)
                    mode = st.st_mode & 0o777
                    lines.append(f'mknod -m {mode:o} "$M/dev/{node.name}" c {maj} {mnr}')
        lines += [
            # PID 1 logs to /dev/console: make it our log file, not the host's console.
            f': > "$M/dev/console"; mount --bind {q(self._base / "console.log")} "$M/dev/console"',
            'mkdir -m 755 "$M/dev/pts"',
            'mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$M/dev/pts"',
            'ln -s pts/ptmx "$M/dev/ptmx"',
            'mkdir -m 1777 "$M/dev/shm"',
            'mount -t tmpfs -o mode=1777,nosuid,nodev batchd-shm "$M/dev/shm"',
            'ln -s /proc/self/fd "$M/dev/fd"',
            'ln -s /proc/self/fd/0 "$M/dev/stdin"',
            'ln -s /proc/self/fd/1 "$M/dev/stdout"',
            'ln -s /proc/self/fd/2 "$M/dev/stderr"',
            'mount -t tmpfs -o mode=755,nosuid,nodev batchd-run "$M/run"',
            'mount -t tmpfs -o mode=1777,nosuid,nodev batchd-tmp "$M/tmp"',
        ]
        for i, b in enumerate(self.binds):
            src = Path(b.source).resolve()
            dst = f'"$M"{q(str(Path(b.target or b.source)))}'
            mk = f"mkdir -p {dst}" if src.is_dir() else f"mkdir -p $(dirname {dst}); touch {dst}"
            lines.append(mk)
            if b.mode == "cow":
                layer = self._base / f"cow{i}"
                lines.append(f"mkdir -p {q(layer / 'u')} {q(layer / 'w')}")
                lines.append(
                    f"mount -t overlay batchd-cow -o lowerdir={q(src)},"
                    f"upperdir={q(layer / 'u')},workdir={q(layer / 'w')} {dst}"
                )
            else:
                lines.append(f"mount --bind {q(src)} {dst}")
                if b.mode == "ro":
                    lines.append(f"mount -o remount,bind,ro {dst}")
        lines += [
            'cd "$M"',
            "mkdir -p .oldroot",
            "pivot_root . .oldroot",
            "umount -l /.oldroot",
            "rmdir /.oldroot",
            f"exec env -i container={CONTAINER_NAME} {SYSTEMD} --system --unit={q(self.target)} --show-status=yes",
        ]
        return "\n".join(lines) + "\n"

    def _spawn(self) -> None:
        assert self._base is not None and self._cgroup is not None
        # Join the machine's cgroup first, so the cgroup namespace is rooted there.
        outer = (
            f"echo $$ > {q(self._cgroup / 'cgroup.procs')} && exec unshare --pid --fork "
            f"--mount --cgroup --uts --ipc --propagation private sh {q(self._base / 'setup.sh')}"
        )
        log = open(self._base / "console.log", "ab")
        try:
            self._proc = subprocess.Popen(
                ["sh", "-c", outer],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": DEFAULT_PATH},
            )
        finally:
            log.close()

    def _wait_booted(self, deadline: float) -> None:
        assert self._proc is not None
        while self.pid is None:
            self._check_alive()
            self.pid = _systemd_child(self._proc.pid)
            if self.pid is None:
                self._check_deadline(deadline, "systemd to start")
                time.sleep(0.02)
        while True:
            self._check_alive()
            r = self._nsenter(["systemctl", "is-active", "--quiet", self.target], check=False, timeout=10)
            if r.returncode == 0:
                return
            self._check_deadline(deadline, f"{self.target} to become active")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise BootError(f"machine exited with {self._proc.returncode}\n{self.diagnostics()}")

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise BootError(f"timed out waiting for {what}\n{self.diagnostics()}")

    def _kill_cgroup(self) -> None:
        if self._cgroup is not None and (self._cgroup / "cgroup.kill").exists():
            try:
                (self._cgroup / "cgroup.kill").write_text("1")
            except OSError:
                pass

    def _remove_cgroup(self) -> None:
        if self._cgroup is None or not self._cgroup.exists():
            self._cgroup = None
            return
        deadline = time.monotonic() + 10
        while not _remove_tree(self._cgroup):
            if time.monotonic() > deadline:
                return
            self._kill_cgroup()
            time.sleep(0.05)
        self._cgroup = None


# Everything packaging/install.sh (or a test imitating it) puts into a machine.
BATCHD_PATHS = (
    "/etc/systemd/system/batchd.service",
    "/etc/systemd/system/batchd.service.d",
    "/opt/batchd",
    "/etc/batchd",
    "/var/lib/batchd",
    "/srv/batchd",
    "/usr/lib/sysusers.d/batchd.conf",
    "/usr/lib/tmpfiles.d/batchd.conf",
)


def purge_batchd(m: SystemdMachine) -> None:
    """Stop batchd and remove every trace of an installation, users included.

    System tests share one machine: each starts from (and leaves) a machine
    without batchd, whatever the test before it did.
    """
    m.systemctl("stop", "batchd.service", check=False)
    m.run("rm", "-rf", *BATCHD_PATHS, check=False)
    for cmd in (("userdel", "batchd"), ("groupdel", "batchd-users"), ("groupdel", "batchd")):
        m.run(*cmd, check=False)
    m.systemctl("daemon-reload", check=False)
    m.systemctl("reset-failed", check=False)


def q(value: object) -> str:
    return shlex.quote(str(value))


def _sh(cmd: str) -> None:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if r.returncode:
        raise BootError(f"{cmd}: {r.stderr.strip() or r.returncode}")


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        pass
    # Kernels without CONFIG_PROC_CHILDREN: scan for processes whose parent is pid.
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid):
            found.append(stat.parent.name)
    return found


def _systemd_child(unshare_pid: int) -> int | None:
    """Host PID of the machine's PID 1 once it has exec'd systemd, else None."""
    for child in _children(unshare_pid):
        try:
            exe = os.readlink(f"/proc/{child}/exe")
        except OSError:
            continue
        if os.path.basename(exe) == "systemd":
            return int(child)
    return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
