"""A peer side by side: batchd and the PyPI tool ``batchllm-ai`` on the same CSV, same backend, same concurrency.

    python -m bench.bench_peer [--slots 4] [--latency 0.1] [--down 20] [--real-rows 0]

1. Throughput: the emulator's OpenAI-compatible ``/v1/chat/completions`` with
   K slots and a fixed latency (ideal K / latency req/s); batchd
   (``BATCHD_BACKEND__KIND=openai``, ``lanes = K``, the candidates pipeline) and
   ``batchllm run -c K`` (rubric as ``-s``, the pipeline's user template as
   ``-t``) on ``inbox.example/candidates/candidates.csv``.
2. Outage: the same, but the emulator process is SIGKILLed a third of the way
   in and a new one started on the same port ``--down`` seconds later. What
   each tool then does is recorded: exit status, rows done / failed, rows
   answered more than once, and for batchllm whether ``--checkpoint
   --retry-failed`` finishes the job.
3. Optional (``--real-rows N``): the first N candidates through llama.cpp's
   server with Gemma 3 270M, concurrency 1, both tools.

batchllm-ai must be installed (``pip install batchllm-ai``); it is skipped
with a note otherwise.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, EmulatorProcess, Folders, folders, free_port, header, load, summary

EXAMPLE = REPO / "inbox.example" / "candidates"
STEM = "candidates"


def rows_of(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def pipeline_parts() -> tuple[str, str]:
    """(system prompt, user template) of the example pipeline, for batchllm's ``-s`` and ``-t``."""
    import tomllib

    spec = tomllib.loads((EXAMPLE / "pipeline.toml").read_text(encoding="utf-8"))
    return (EXAMPLE / spec["system_prompt_file"]).read_text(encoding="utf-8"), spec["user_template"].strip()


def subset_csv(dst: Path, rows: int | None) -> Path:
    lines = (EXAMPLE / "candidates.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines if rows is None else lines[: rows + 1]), encoding="utf-8")
    return dst


# -- batchd ----------------------------------------------------------------------------------


def start_batchd(f: Folders, url: str, lanes: int, rows: int | None, json_only: bool = False) -> subprocess.Popen[str]:
    folder = f.inbox / STEM
    folder.mkdir()
    (folder / "rubric.md").write_bytes((EXAMPLE / "rubric.md").read_bytes())
    toml = (EXAMPLE / "pipeline.toml").read_text(encoding="utf-8")
    if json_only:  # llama-cpp-python's server refuses json_schema (see bench_prefix)
        toml = toml[: toml.index("\n[format]")] + "\n"
        toml = re.sub(r"^\[options\]", 'format = "json"\n\n[options]', toml, count=1, flags=re.M)
    (folder / "pipeline.toml").write_text(toml, encoding="utf-8")
    subset_csv(folder / f"{STEM}.csv", rows)
    env = f.env(
        url, BATCHD_BACKEND__KIND="openai", BATCHD_BACKEND__LANES=str(lanes), BATCHD_BACKEND__TIMEOUT_SECONDS="300"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "batchd", "run", "--once"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def batchd_outcome(f: Folders, proc: subprocess.Popen[str], started: float, n: int) -> dict[str, Any]:
    _, err = proc.communicate(timeout=900)
    wall = time.perf_counter() - started
    out: dict[str, Any] = {"tool": "batchd", "exit": proc.returncode, "wall_s": wall, "rows": n}
    if proc.returncode != 0:
        out["note"] = err.strip().splitlines()[-1][:200] if err.strip() else ""
        return out
    m = f.metrics(STEM)
    ids = [r["custom_id"] for r in f.lines(STEM, "results.jsonl")] + [
        r["custom_id"] for r in f.lines(STEM, "errors.jsonl")
    ]
    out.update(
        done=m["request_counts"]["completed"],
        failed=m["request_counts"]["failed"],
        job_rps=m["performance"]["requests_per_second"],
        e2e_rps=n / wall,
        duplicates=len(ids) - len(set(ids)),
        missing=n - len(set(ids)),
        outages=m.get("outages", {}),
        retries=m.get("retries", {}).get("total"),
    )
    return out


# -- batchllm --------------------------------------------------------------------------------


def batchllm_cmd(csv_path: Path, out: Path, url: str, k: int, ckpt: Path, *extra: str) -> list[str]:
    system, template = pipeline_parts()
    exe = shutil.which("batchllm") or "batchllm"
    return [
        exe,
        "run",
        str(csv_path),
        "-o",
        str(out),
        "-m",
        "gemma3:4b",
        "-s",
        system,
        "-t",
        template,
        "-c",
        str(k),
        "--base-url",
        f"{url}/v1",
        "--api-key",
        "none",
        "--input-column",
        "candidate_id",
        "--max-tokens",
        "200",
        "--temperature",
        "0",
        "--checkpoint",
        str(ckpt),
        *extra,
    ]


def batchllm_outcome(proc: subprocess.Popen[str], started: float, out: Path, n: int) -> dict[str, Any]:
    stdout, stderr = proc.communicate(timeout=900)
    wall = time.perf_counter() - started
    res: dict[str, Any] = {"tool": "batchllm", "exit": proc.returncode, "wall_s": wall, "rows": n}
    if out.exists():
        with out.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        ids = [r["candidate_id"] for r in rows]
        res.update(
            done=sum(1 for r in rows if not r["error"] and r["output"]),
            failed=sum(1 for r in rows if r["error"]),
            duplicates=len(ids) - len(set(ids)),
            missing=n - len(set(ids)),
            e2e_rps=n / wall,
            error_types=sorted({r["error_type"] for r in rows if r["error_type"]}),
        )
        tput = re.search(r"Throughput\D+([\d.]+) items/s", stdout)
        if tput:
            res["own_rps"] = float(tput.group(1))
    else:
        res["note"] = (stderr.strip() or stdout.strip()).splitlines()[-1][:200] if (stderr or stdout) else ""
    return res


def have_batchllm() -> bool:
    return shutil.which("batchllm") is not None


# -- the scenarios ---------------------------------------------------------------------------


def throughput(k: int, latency: float) -> list[dict[str, Any]]:
    n = rows_of(EXAMPLE / "candidates.csv")
    res = []
    with EmulatorProcess(latency=latency, slots=k) as emu:
        with folders("bench-peer-") as f:
            lb = load()
            started = time.perf_counter()
            r = batchd_outcome(f, start_batchd(f, emu.url, k, None), started, n)
            r["load"] = f"{lb} -> {load()}"
            res.append(r)
        if have_batchllm():
            with folders("bench-peer-") as f:
                src, out = subset_csv(f.root / "candidates.csv", None), f.root / "out.csv"
                lb = load()
                started = time.perf_counter()
                proc = subprocess.Popen(
                    batchllm_cmd(src, out, emu.url, k, f.root / "ck.jsonl"),
                    cwd=f.root,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                r = batchllm_outcome(proc, started, out, n)
                r["load"] = f"{lb} -> {load()}"
                res.append(r)
    return res


def outage(k: int, latency: float, down: float) -> list[dict[str, Any]]:
    n = rows_of(EXAMPLE / "candidates.csv")
    kill_after = n / (k / latency) / 3  # a third of the ideal run time
    res = []
    for tool in ("batchd", "batchllm"):
        if tool == "batchllm" and not have_batchllm():
            continue
        emu = EmulatorProcess(latency=latency, slots=k, port=free_port()).start()
        try:
            with folders("bench-peer-outage-") as f:
                started = time.perf_counter()
                if tool == "batchd":
                    proc = start_batchd(f, emu.url, k, None)
                else:
                    src, out, ck = subset_csv(f.root / "candidates.csv", None), f.root / "out.csv", f.root / "ck.jsonl"
                    proc = subprocess.Popen(
                        batchllm_cmd(src, out, emu.url, k, ck),
                        cwd=f.root,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                time.sleep(kill_after)  # a benchmark scenario, not a test: the kill lands mid-run by design
                emu.kill()
                killed_at = time.perf_counter() - started
                exited_while_down = None
                deadline = time.monotonic() + down
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        exited_while_down = time.perf_counter() - started
                        break
                    time.sleep(0.1)
                emu.start()
                r = batchd_outcome(f, proc, started, n) if tool == "batchd" else batchllm_outcome(proc, started, out, n)
                r.update(killed_at=killed_at, down_s=down, exited_while_down=exited_while_down)
                if tool == "batchllm" and r.get("failed"):
                    # The documented way back: rerun with the same checkpoint and --retry-failed.
                    out2 = f.root / "out2.csv"
                    t2 = time.perf_counter()
                    proc2 = subprocess.Popen(
                        batchllm_cmd(src, out2, emu.url, k, ck, "--retry-failed"),
                        cwd=f.root,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    r2 = batchllm_outcome(proc2, t2, out2, n)
                    r["rerun"] = {key: r2.get(key) for key in ("exit", "done", "failed", "duplicates", "missing")}
                    r["rerun"]["wall_s"] = round(r2["wall_s"], 1)
                res.append(r)
        finally:
            emu.stop()
    return res


def real_model(rows: int, threads: int) -> list[dict[str, Any]]:
    from bench.bench_prefix import llama_server

    res = []
    log = Path(f"/tmp/bench-peer-llama-{os.getpid()}.log")
    with llama_server(threads, log) as url:
        with folders("bench-peer-real-") as f:
            started = time.perf_counter()
            res.append(batchd_outcome(f, start_batchd(f, url, 1, rows, json_only=True), started, rows))
        if have_batchllm():
            with folders("bench-peer-real-") as f:
                src, out = subset_csv(f.root / "candidates.csv", rows), f.root / "out.csv"
                started = time.perf_counter()
                proc = subprocess.Popen(
                    batchllm_cmd(src, out, url, 1, f.root / "ck.jsonl", "--expect-json"),
                    cwd=f.root,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                res.append(batchllm_outcome(proc, started, out, rows))
    return res


def fmt(r: dict[str, Any]) -> str:
    keys = (
        "exit",
        "done",
        "failed",
        "duplicates",
        "missing",
        "job_rps",
        "own_rps",
        "e2e_rps",
        "wall_s",
        "outages",
        "retries",
        "error_types",
        "killed_at",
        "exited_while_down",
        "rerun",
        "note",
        "load",
    )
    parts = []
    for key in keys:
        if key in r and r[key] is not None:
            v = r[key]
            parts.append(f"{key}={v:.2f}" if isinstance(v, float) else f"{key}={v}")
    return f"{r['tool']:>8}: " + " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--slots", type=int, default=4, help="emulator slots = batchd lanes = batchllm -c")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--down", type=float, default=20.0, help="seconds the backend stays dead")
    ap.add_argument("--real-rows", type=int, default=0, help="candidates through llama.cpp's server (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp server threads (--real-rows)")
    args = ap.parse_args(argv)
    if not have_batchllm():
        print("batchllm not found: pip install batchllm-ai (peer runs skipped)")
    k, lat = args.slots, args.latency
    header(
        f"peer: batchd vs batchllm-ai, emulator /v1/chat/completions, {k} slots x {lat}s (ideal {k / lat:.0f} req/s)"
    )
    tp = throughput(k, lat)
    for r in tp:
        print(fmt(r), flush=True)
    print(f"# outage: backend SIGKILLed a third of the way in, restarted on the same port after {args.down:.0f}s")
    out = outage(k, lat, args.down)
    for r in out:
        print(fmt(r), flush=True)
    real = []
    if args.real_rows:
        print(f"# real model: {args.real_rows} candidates, llama.cpp server (Gemma 3 270M), concurrency 1")
        real = real_model(args.real_rows, args.threads)
        for r in real:
            print(fmt(r), flush=True)
    by = {r["tool"]: r for r in tp}
    text = (
        f"emulator {k}x{lat}s: batchd {by['batchd'].get('e2e_rps', 0):.1f} req/s end to end "
        f"(job {by['batchd'].get('job_rps', 0):.1f})"
    )
    if "batchllm" in by:
        ratio = by["batchd"].get("e2e_rps", 0) / by["batchllm"]["e2e_rps"] if by["batchllm"].get("e2e_rps") else 0
        text += f", batchllm {by['batchllm'].get('e2e_rps', 0):.1f} req/s, ratio {ratio:.2f}"
    ob = {r["tool"]: r for r in out}
    if "batchd" in ob:
        text += (
            f"; outage: batchd {ob['batchd'].get('done')}/{ob['batchd']['rows']} done, "
            f"{ob['batchd'].get('duplicates')} duplicates"
        )
    if "batchllm" in ob:
        b = ob["batchllm"]
        text += f", batchllm {b.get('done')}/{b['rows']} done {b.get('failed')} failed" + (
            f" (rerun --retry-failed: {b['rerun'].get('done')} done)" if b.get("rerun") else ""
        )
    if real:
        rb = {r["tool"]: r for r in real}
        text += "; real model: " + ", ".join(f"{t} {r.get('e2e_rps', 0):.3f} req/s" for t, r in rb.items())
    summary("peer", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
