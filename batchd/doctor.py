"""``batchd doctor``: every check prints OK, WARN or FAIL with the fix."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from batchd.config import Settings
from batchd.errors import BatchdError

Check = tuple[str, str, str]  # (level, what, fix)


def _folder(path: Path, name: str) -> Check:
    if not path.is_dir():
        return "FAIL", f"{name} {path} does not exist", f"mkdir -p {path} (or set {name} in the config)"
    if not os.access(path, os.W_OK | os.X_OK):
        return "FAIL", f"{name} {path} is not writable by uid {os.getuid()}", f"chown/chmod {path}"
    return "OK", f"{name} {path} is writable", ""


def _backend(settings: Settings) -> list[Check]:
    from batchd.backends import make_backend

    out: list[Check] = []

    async def probe(url: str) -> list[Check]:
        backend = make_backend(settings, url)
        model = settings.backend.model
        try:
            await backend.ping()
            res: list[Check] = [("OK", f"{settings.backend.kind} backend at {backend.host} answers", "")]
            ctx = await backend.context_length(model)
            res.append(("OK", f"model {model} present, context length {ctx or 'unknown'}", ""))
            num_ctx = settings.context.num_ctx or min(ctx or settings.context.num_ctx_cap,
                                                      settings.context.num_ctx_cap)
            res.append(("OK", f"jobs will pin num_ctx={num_ctx}", ""))
            for m in await backend.loaded():
                if m.size and m.size_vram < m.size:
                    res.append(("WARN", f"{m.name}: {m.size - m.size_vram:,} of {m.size:,} bytes offloaded to CPU",
                                "use a smaller model/quantisation or a smaller num_ctx"))
            return res
        except BatchdError as exc:
            return [("FAIL", f"backend {backend.host}: {exc.message}",
                     "start the server (systemctl start ollama) or fix backend.url / backend.model")]
        finally:
            await backend.aclose()

    for url in settings.backend.hosts() if settings.backend.kind != "embedded" else [""]:
        out.extend(asyncio.run(probe(url)))
    return out


def _gpu(settings: Settings) -> Check:
    try:
        from batchd.vram import probe_nvml  # type: ignore[attr-defined]
    except ImportError:
        probe_nvml = None
    if probe_nvml is None:
        return "WARN", "VRAM monitoring not available in this build", ""
    try:
        text = probe_nvml(settings.vram.gpu_index)
        return "OK", text, ""
    except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
        return "WARN", f"NVML: {exc}", "pip install 'batchd[gpu]' and check the NVIDIA driver (nvidia-smi)"


def _inotify() -> Check:
    path = Path("/proc/sys/fs/inotify/max_user_watches")
    try:
        n = int(path.read_text())
    except (OSError, ValueError):
        return "WARN", "cannot read inotify limits", ""
    if n < 1024:
        return "WARN", f"fs.inotify.max_user_watches={n} is low", "sysctl fs.inotify.max_user_watches=65536"
    return "OK", f"inotify max_user_watches={n}", ""


def _unit() -> Check:
    unit = Path("/etc/systemd/system/batchd.service")
    exe = shutil.which("systemd-analyze")
    if not unit.exists() or exe is None:
        return "WARN", "batchd.service not installed (or no systemd-analyze)", "sudo packaging/install.sh"
    try:
        out = subprocess.run([exe, "security", "--no-pager", "batchd.service"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "WARN", f"systemd-analyze failed: {exc}", ""
    for line in out.splitlines():
        if "Overall exposure level" in line:
            return "OK", line.strip().replace("→ ", ""), ""
    return "WARN", "could not read the unit's exposure score", ""


def run_checks(settings: Settings) -> int:
    checks: list[Callable[[], list[Check]]] = [
        lambda: [("OK", "configuration is valid", "")],
        lambda: [_folder(settings.inbox, "inbox"), _folder(settings.outbox, "outbox"),
                 _folder(settings.state_dir, "state_dir")],
        lambda: _backend(settings),
        lambda: [_gpu(settings)],
        lambda: [_inotify()],
        lambda: [_unit()],
    ]
    worst = 0
    for check in checks:
        for level, what, fix in check():
            print(f"{level:<4} {what}" + (f"\n     fix: {fix}" if fix and level != "OK" else ""))
            worst = max(worst, {"OK": 0, "WARN": 0, "FAIL": 1}[level])
    return worst
