"""``batchd doctor``: every check prints OK, WARN or FAIL with the fix."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError, ModelNotFound

Check = tuple[str, str, str]  # (level, what, fix)


def _folder(path: Path, name: str) -> Check:
    if not path.is_dir():
        return "FAIL", f"{name} {path} does not exist", f"mkdir -p {path} (or set {name} in the config)"
    if not os.access(path, os.W_OK | os.X_OK):
        return "FAIL", f"{name} {path} is not writable by uid {os.getuid()}", f"chown/chmod {path}"
    return "OK", f"{name} {path} is writable", ""


_START = {
    "ollama": "start the server (systemctl start ollama) or fix backend.url",
    "openai": "start the OpenAI-compatible server (vLLM, llama.cpp server, ...) or fix backend.url / backend.urls",
}
_PULL = {
    "ollama": "ollama pull {model} (or set backend.model)",
    "openai": "serve {model} on that server (vLLM --served-model-name) or set backend.model to a listed id",
}


def _backend(settings: Settings) -> list[Check]:
    """Every backend kind: reachable, model present, context length; each host of several."""
    if settings.backend.kind == "embedded":
        return asyncio.run(_embedded(settings))
    hosts = settings.backend.hosts()
    out: list[Check] = []
    if len(hosts) > 1:
        out.append(("OK", f"{len(hosts)} hosts: lanes spread over them, a failed host is probed back in", ""))
    for url in hosts:
        out.extend(asyncio.run(_host(settings, url)))
    return out


async def _host(settings: Settings, url: str) -> list[Check]:
    from batchd.backends import make_backend

    kind, model = settings.backend.kind, settings.backend.model
    backend = make_backend(settings, url)
    try:
        try:
            await backend.ping()
        except BatchdError as exc:
            return [("FAIL", f"{kind} backend at {url} does not answer: {exc.message}", _START[kind])]
        res: list[Check] = [("OK", f"{kind} backend at {backend.host} answers", "")]
        try:
            ctx = await backend.context_length(model)
        except ModelNotFound as exc:
            return [*res, ("FAIL", f"model {model} is not on {backend.host}: {exc.message}",
                           _PULL[kind].format(model=model))]
        except BatchdError as exc:
            return [*res, ("FAIL", f"{backend.host}: {exc.message}",
                           "check backend.api_key / backend.api_key_file" if kind == "openai" else "")]
        res.append(("OK", f"model {model} present, context length {ctx or 'not reported'}", ""))
        res.append(_num_ctx(settings, ctx))
        for m in await backend.loaded():
            if m.size and m.size_vram < m.size:
                res.append(("WARN", f"{m.name}: {m.size - m.size_vram:,} of {m.size:,} bytes offloaded to CPU",
                            "use a smaller model/quantisation or a smaller num_ctx"))
        return res
    except BatchdError as exc:
        return [("FAIL", f"backend {url}: {exc.message}", _START[kind])]
    finally:
        await backend.aclose()


async def _embedded(settings: Settings) -> list[Check]:
    from batchd.backends import make_backend
    from batchd.backends.embedded import EmbeddedBackend

    try:
        backend = make_backend(settings)
    except ConfigError as exc:
        return [("FAIL", f"embedded backend: {exc}", "pip install 'batchd[embedded]' or fix backend.model_path")]
    assert isinstance(backend, EmbeddedBackend)
    res: list[Check] = [("OK", f"embedded llama.cpp importable, {backend.threads} threads, one call at a time; "
                               "requests' model names are ignored", "")]
    if settings.backend.lanes > 1:
        res.append(("WARN", f"backend.lanes={settings.backend.lanes}: the embedded model serves one call at a "
                            "time, extra lanes only queue", "set backend.lanes = 1"))
    path = backend.model_file()
    if path is None:  # assembling writes ~250 MB: leave it to the service user on the first job
        res.append(("OK", "default model Gemma 3 270M: assembled into state_dir/models on the first job", ""))
        return res
    try:
        ctx = await backend.context_length(settings.backend.model)
    except BatchdError as exc:
        return [*res, ("FAIL", f"embedded model {path}: {exc.message}", "point backend.model_path at a GGUF file")]
    finally:
        await backend.aclose()
    res.append(("OK", f"model {path.name} loads, trained context length {ctx or 'unknown'}", ""))
    res.append(_num_ctx(settings, ctx))
    return res


def _num_ctx(settings: Settings, ctx: int | None) -> Check:
    num_ctx = settings.context.num_ctx or min(ctx or settings.context.num_ctx_cap, settings.context.num_ctx_cap)
    if ctx and num_ctx > ctx:
        return ("WARN", f"context.num_ctx={num_ctx} is larger than the model's {ctx}",
                f"set context.num_ctx <= {ctx}")
    return ("OK", f"jobs will pin num_ctx={num_ctx}", "")


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
