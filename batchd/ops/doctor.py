"""``batchd doctor``: every check prints OK, WARN or FAIL with the fix."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchd.backends.ollama import OllamaBackend
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError, ModelNotFound
from batchd.ops.checks import Check, Level
from batchd.redact import redact_url


def _folder(path: Path, name: str) -> Check:
    if not path.is_dir():
        return Check(Level.FAIL, f"{name} {path} does not exist", f"mkdir -p {path} (or set {name} in the config)")
    if not os.access(path, os.W_OK | os.X_OK):
        return Check(Level.FAIL, f"{name} {path} is not writable by uid {os.getuid()}", f"chown/chmod {path}")
    return Check(Level.OK, f"{name} {path} is writable")


def _readers(settings: Settings, *, uid: int | None = None, groups: list[int] | None = None) -> Check:
    """Results go to the outbox's group: the daemon must be in it, or chown fails and only it can read them."""
    import grp

    from batchd.publish.share import SharedFolder

    gid = SharedFolder.of(settings.outbox, group=settings.group).gid
    if gid is None:
        return Check(Level.OK, "outbox group: not known until the outbox exists")
    try:
        name = grp.getgrgid(gid).gr_name
    except KeyError:
        name = str(gid)
    uid = os.geteuid() if uid is None else uid
    groups = [os.getegid(), *os.getgroups()] if groups is None else groups
    if uid != 0 and gid not in groups:
        what = f"uid {uid} is not in group {name}, which owns the outbox: results would be readable by it only"
        return Check(Level.WARN, what, f"usermod -aG {name} <the daemon's user> (then restart it)")
    return Check(Level.OK, f"results are readable by group {name} (files 0640, folders 0750)")


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
        out.append(Check(Level.OK, f"{len(hosts)} hosts: lanes spread over them, a failed host is probed back in"))
    for url in hosts:
        out.extend(asyncio.run(_host(settings, url)))
    return out


async def _host(settings: Settings, url: str) -> list[Check]:
    from batchd.run.connect import make_backend

    kind, model = settings.backend.kind, settings.backend.model
    backend = make_backend(settings, url)
    try:
        try:
            await backend.ping()
        except BatchdError as exc:
            return [
                Check(Level.FAIL, f"{kind} backend at {redact_url(url)} does not answer: {exc.message}", _START[kind])
            ]
        res: list[Check] = [Check(Level.OK, f"{kind} backend at {backend.host} answers")]
        try:
            ctx = await backend.context_length(model)
        except ModelNotFound as exc:
            return [
                *res,
                Check(
                    Level.FAIL,
                    f"model {model} is not on {backend.host}: {exc.message}",
                    _PULL[kind].format(model=model),
                ),
            ]
        except BatchdError as exc:
            return [
                *res,
                Check(
                    Level.FAIL,
                    f"{backend.host}: {exc.message}",
                    "check backend.api_key / backend.api_key_file" if kind == "openai" else "",
                ),
            ]
        res.append(Check(Level.OK, f"model {model} present, context length {ctx or 'not reported'}"))
        res.append(_num_ctx(settings, ctx))
        if isinstance(backend, OllamaBackend):
            res.extend(await _ollama(settings, backend))
        elif kind == "openai":
            res.extend(await _ollama_behind_v1(url))
        for m in await backend.loaded():
            if m.size and m.size_vram < m.size:
                res.append(
                    Check(
                        Level.WARN,
                        f"{m.name}: {m.size - m.size_vram:,} of {m.size:,} bytes offloaded to CPU",
                        "use a smaller model/quantisation or a smaller num_ctx",
                    )
                )
        return res
    except BatchdError as exc:
        return [Check(Level.FAIL, f"backend {redact_url(url)}: {exc.message}", _START[kind])]
    finally:
        await backend.aclose()


async def _ollama(settings: Settings, backend: OllamaBackend) -> list[Check]:
    """Ollama only: its version and what it lacks; how many requests it serves at once."""
    from batchd.backends.ollama_facts import version_notes

    version: str | None
    try:
        version = await backend.version()
    except BatchdError:
        version = None
    notes = version_notes(version)
    warnings = [text for level, text in notes if level == "warning"]
    res: list[Check] = []
    if warnings:
        res.append(Check(Level.WARN, warnings[0], "upgrade Ollama to 0.12.6 or later"))
    else:
        res.append(Check(Level.OK, f"Ollama {version}" + "".join(f"; {text}" for _, text in notes)))
    res.append(_parallel(settings.backend.lanes, _server_num_parallel(backend.host)))
    return res


async def _ollama_behind_v1(url: str) -> list[Check]:
    """The openai backend pointed at Ollama's own ``/v1``: it works, but blind."""
    probe = OllamaBackend(url=url.rstrip("/").removesuffix("/v1"), timeout=5, connect_timeout=2)
    try:
        version = await probe.version()
    except BatchdError:
        return []
    finally:
        await probe.aclose()
    return [
        Check(
            Level.WARN,
            (
                f"{probe.host} is Ollama {version}: its /v1 endpoint cuts prompts silently at the server's "
                "default window (OLLAMA_CONTEXT_LENGTH; num_ctx cannot be sent) and reports no cached tokens"
            ),
            "set backend.kind = ollama: batchd then pins num_ctx and sees an overflow as an error",
        )
    ]


def _parallel(lanes: int | str, found: tuple[int, str] | None) -> Check:
    """``found``: the server's OLLAMA_NUM_PARALLEL and where it was read, when batchd can see it."""
    if lanes == "auto":
        seen = (
            f"OLLAMA_NUM_PARALLEL={found[0]} ({found[1]})"
            if found is not None
            else "OLLAMA_NUM_PARALLEL not visible here (Ollama's default is 1)"
        )
        if found is not None and found[0] > 1:
            return Check(Level.OK, f"backend.lanes=auto: batchd finds the server's parallel slots itself; {seen}")
        return Check(
            Level.OK,
            (
                f"backend.lanes=auto: batchd finds the server's parallel slots itself; {seen}, so expect "
                "about one request at a time"
            ),
            (
                "for more throughput: systemctl edit ollama: [Service] "
                "Environment=OLLAMA_NUM_PARALLEL=4, then restart ollama (each parallel request needs its own "
                "num_ctx of VRAM)"
            ),
        )
    assert isinstance(lanes, int)
    if lanes <= 1:
        return Check(
            Level.OK, "backend.lanes=1: one request at a time (Ollama's OLLAMA_NUM_PARALLEL defaults to 1)", ""
        )
    if found is not None and found[0] >= lanes:
        return Check(Level.OK, f"OLLAMA_NUM_PARALLEL={found[0]} ({found[1]}) serves backend.lanes={lanes}")
    seen = (
        f"OLLAMA_NUM_PARALLEL={found[0]} ({found[1]})"
        if found is not None
        else "OLLAMA_NUM_PARALLEL is not set where batchd can see it, and Ollama's default is 1"
    )
    fewer = found[0] if found is not None else 1
    return Check(
        Level.WARN,
        f"backend.lanes={lanes}, but {seen}: extra lanes only queue on the server",
        (
            f"systemctl edit ollama: [Service] Environment=OLLAMA_NUM_PARALLEL={lanes}, then restart ollama "
            f"(each parallel request needs its own num_ctx of VRAM); or set backend.lanes = {fewer}"
        ),
    )


def _server_num_parallel(host: str) -> tuple[int, str] | None:
    """OLLAMA_NUM_PARALLEL of a local Ollama: its systemd unit's environment, else this process's."""
    if not re.match(r"https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?$", host):
        return None
    exe = shutil.which("systemctl")
    if exe is not None:
        try:
            out = subprocess.run(
                [exe, "show", "ollama.service", "--property=Environment", "--value"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        found = re.search(r"(?:^|\s)OLLAMA_NUM_PARALLEL=(\d+)", out)
        if found:
            return int(found.group(1)), "ollama.service"
    value = os.environ.get("OLLAMA_NUM_PARALLEL", "")
    return (int(value), "environment") if value.isdigit() else None


async def _embedded(settings: Settings) -> list[Check]:
    from batchd.backends.embedded import EmbeddedBackend
    from batchd.run.connect import make_backend

    try:
        backend = make_backend(settings)
    except ConfigError as exc:
        return [
            Check(Level.FAIL, f"embedded backend: {exc}", "pip install 'batchd[embedded]' or fix backend.model_path")
        ]
    assert isinstance(backend, EmbeddedBackend)
    res: list[Check] = [
        Check(
            Level.OK,
            (
                f"embedded llama.cpp importable, {backend.threads} threads, one call at a time; "
                "requests' model names are ignored"
            ),
        )
    ]
    if settings.backend.lanes != "auto" and settings.backend.lanes > 1:
        res.append(
            Check(
                Level.WARN,
                (
                    f"backend.lanes={settings.backend.lanes}: the embedded model serves one call at a "
                    "time, extra lanes only queue"
                ),
                "set backend.lanes = 1",
            )
        )
    path = backend.model_file()
    if path is None:  # assembling writes ~250 MB: leave it to the service user on the first job
        res.append(Check(Level.OK, "default model Gemma 3 270M: assembled into state_dir/models on the first job"))
        return res
    try:
        ctx = await backend.context_length(settings.backend.model)
    except BatchdError as exc:
        return [
            *res,
            Check(Level.FAIL, f"embedded model {path}: {exc.message}", "point backend.model_path at a GGUF file"),
        ]
    finally:
        await backend.aclose()
    res.append(Check(Level.OK, f"model {path.name} loads, trained context length {ctx or 'unknown'}"))
    res.append(_num_ctx(settings, ctx))
    return res


def _num_ctx(settings: Settings, ctx: int | None) -> Check:
    num_ctx = settings.context.num_ctx or min(ctx or settings.context.num_ctx_cap, settings.context.num_ctx_cap)
    if ctx and num_ctx > ctx:
        return Check(
            Level.WARN, f"context.num_ctx={num_ctx} is larger than the model's {ctx}", f"set context.num_ctx <= {ctx}"
        )
    return Check(Level.OK, f"jobs will pin num_ctx={num_ctx}")


def _gpu(settings: Settings, *, nvml: Any = None) -> Check:
    """NVML sees the configured card; ``nvml`` is a stand-in for ``pynvml`` in tests."""
    from batchd.run.vram import probe_nvml

    wanted = settings.vram.source
    if wanted in ("none", "ollama"):
        return Check(Level.OK, f"vram.source = {wanted}: NVML not used")
    # auto falls back to Ollama's /api/ps (no per-process view, coarser); nvml was asked for by name.
    level = Level.FAIL if wanted == "nvml" else Level.WARN
    fallback = "" if wanted == "nvml" else "; until then VRAM is read from Ollama's /api/ps"
    try:
        return Check(Level.OK, probe_nvml(settings.vram.gpu_index, nvml=nvml))
    except ImportError:
        return Check(
            level,
            "NVML: nvidia-ml-py is not installed",
            "pip install 'batchd[gpu]' into batchd's venv (install.sh does)" + fallback,
        )
    except Exception as exc:  # noqa: BLE001 - pynvml's NVMLError family, OSError; doctor reports, never crashes
        text = f"{type(exc).__name__}: {exc}"
        if any(k in text for k in ("LibraryNotFound", "Library Not Found", "DriverNotLoaded", "Driver Not Loaded")):
            return Check(
                level,
                f"NVML: no NVIDIA driver found ({text})",
                "install the NVIDIA driver (nvidia-smi must work)" + fallback,
            )
        if "InvalidArgument" in text:
            return Check(
                level,
                f"NVML: there is no GPU {settings.vram.gpu_index} ({text})",
                "set vram.gpu_index to the card Ollama uses (nvidia-smi -L)",
            )
        if "NoPermission" in text or isinstance(exc, PermissionError):
            return Check(
                level,
                f"NVML: no access to the GPU ({text})",
                "the unit needs DeviceAllow= for /dev/nvidiactl and /dev/nvidia<N> (packaging/batchd.service)",
            )
        return Check(level, f"NVML: {text}", "check the NVIDIA driver (nvidia-smi)" + fallback)


#: what the shipped unit scores (tests/system/test_unit_security.py); more means a weaker sandbox
EXPOSURE_TARGET = 2.0
_EXPOSURE = re.compile(r"Overall exposure level for \S+: ([\d.]+)")


def _unit(root: Path = Path("/")) -> Check:
    """The installed unit's sandbox, drop-ins included, scored by ``systemd-analyze security``."""
    candidates = [
        root / "etc/systemd/system/batchd.service",
        root / "lib/systemd/system/batchd.service",
        root / "usr/lib/systemd/system/batchd.service",
    ]
    if not any(p.exists() for p in candidates):
        return Check(Level.WARN, "batchd.service is not installed", "sudo packaging/install.sh")
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return Check(
            Level.WARN, "cannot score the unit's sandbox: systemd-analyze not found", "apt-get install systemd"
        )
    # --offline: score the unit files as written (no running manager needed, systemd >= 250).
    cmd = [exe, "security", "--no-pager", "--offline=yes", "batchd.service"]
    if root != Path("/"):
        cmd.insert(2, f"--root={root}")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(Level.WARN, f"systemd-analyze failed: {exc}")
    found = _EXPOSURE.search(r.stdout)
    if found is None:
        why = (r.stderr.strip().splitlines() or ["no score in its output"])[-1]
        return Check(
            Level.WARN, f"could not score batchd.service: {why}", "systemd >= 250 has systemd-analyze --offline"
        )
    score = float(found.group(1))
    if score > EXPOSURE_TARGET:
        return Check(
            Level.WARN,
            f"batchd.service exposure {score:.1f} (the shipped unit scores <= {EXPOSURE_TARGET:.1f})",
            ("a drop-in weakened the sandbox: see systemctl cat batchd and systemd-analyze security batchd.service"),
        )
    return Check(Level.OK, f"batchd.service sandbox exposure {score:.1f} (<= {EXPOSURE_TARGET:.1f})")


def _inotify() -> Check:
    path = Path("/proc/sys/fs/inotify/max_user_watches")
    try:
        n = int(path.read_text())
    except (OSError, ValueError):
        return Check(Level.WARN, "cannot read inotify limits")
    if n < 1024:
        return Check(Level.WARN, f"fs.inotify.max_user_watches={n} is low", "sysctl fs.inotify.max_user_watches=65536")
    return Check(Level.OK, f"inotify max_user_watches={n}")


def _config(settings: Settings) -> Check:
    """What ``batchd run`` checks before it starts (``preflight``), so the two never disagree."""
    from batchd.ops import preflight

    try:
        preflight.check(settings)
    except ConfigError as exc:
        return Check(
            Level.FAIL,
            f"configuration: {exc.key}: {exc.problem}",
            f"fix {exc.key} in the config file or its BATCHD_* variable: `batchd run` refuses to start (exit 2)",
        )
    return Check(Level.OK, "configuration is valid")


def run_checks(settings: Settings) -> int:
    """Print every check; exit 2 when the configuration is invalid (as ``run`` would), 1 on any other FAIL."""
    config = _config(settings)
    checks: list[Callable[[], list[Check]]] = [
        lambda: [config],
        lambda: [
            _folder(settings.inbox, "inbox"),
            _folder(settings.outbox, "outbox"),
            _folder(settings.state_dir, "state_dir"),
            _readers(settings),
        ],
        lambda: _backend(settings),
        lambda: [_gpu(settings)],
        lambda: [_inotify()],
        lambda: [_unit()],
    ]
    worst = 0
    for check in checks:
        for answer in check():
            print(answer.text())
            worst = max(worst, 1 if answer.level is Level.FAIL else 0)
    return 2 if config.level is Level.FAIL else worst
