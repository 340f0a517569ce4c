"""Conversation against isolated mode on llama.cpp's real server, at two window sizes.

``llama-server`` (built by ``tests/support/realserver/build_llama_server.sh``) serves
Gemma 3 270M with 4 parallel slots; batchd runs the same JSONL of candidate rows
(a system prompt, one user message, ``max_tokens`` 16) through the ``openai``
backend with 4 lanes, once per mode, for each window per slot. The server's
own ``timings.cache_n`` gives the prompt tokens it reused, so *evaluated* is
what it really computed. ``--old-ref REV`` adds a run of batchd as it was at
that git revision (``git archive``), to compare trimming policies.

    python -m bench.bench_conversation_real [--rows 80] [--windows 512,2048] [--old-ref main]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.common import REPO, folders, header, load, run_once, summary
from tests.support.realserver import ALIAS, LlamaServer, gemma_gguf, llama_server_binary

STEM = "rows"
SYSTEM = (
    "You score job candidates for a warehouse team lead role from 1 to 10. Reply with the score and one short reason."
)
_FIELDS = ["logistics", "retail", "a bakery", "the army", "a call centre", "farming", "shipping", "nursing"]
_SKILLS = ["forklift licence", "Excel", "first aid", "Spanish", "people management", "SAP", "night shifts"]


def candidate(i: int) -> str:
    return (
        f"Candidate {i}: {3 + i % 17} years in {_FIELDS[i % len(_FIELDS)]}, "
        f"knows {_SKILLS[i % len(_SKILLS)]} and {_SKILLS[(i * 3 + 1) % len(_SKILLS)]}. "
        f"Led a team of {2 + i % 9} people; reliable, on time, asks good questions."
    )


def write_rows(path: Path, rows: int, max_tokens: int) -> None:
    with path.open("wb") as fh:
        for i in range(rows):
            body = {
                "model": ALIAS,
                "max_tokens": max_tokens,
                "temperature": 0,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": candidate(i)}],
            }
            fh.write(
                orjson.dumps({"custom_id": f"c{i:04d}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + b"\n"
            )


def export(ref: str, into: Path) -> Path:
    """batchd as it was at ``ref``: its package extracted from ``git archive``."""
    data = subprocess.run(["git", "archive", ref, "batchd"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(url: str, *, mode: str, rows: int, lanes: int, max_tokens: int, root: Path | None) -> dict[str, Any]:
    with folders(f"bench-conv-{mode}-") as f:
        write_rows(f.inbox / f"{STEM}.jsonl", rows, max_tokens)
        env = f.env(
            url,
            BATCHD_BACKEND__KIND="openai",
            BATCHD_BACKEND__MODEL=ALIAS,
            BATCHD_BACKEND__LANES=str(lanes),
            BATCHD_BACKEND__TIMEOUT_SECONDS="300",
            BATCHD_CONTEXT__MODE=mode,
        )
        if root is not None:
            env["PYTHONPATH"] = str(root)
        wall = run_once(env, timeout=3600, root=root)
        m = f.metrics(STEM)
        tok, ctx, perf = m["tokens"], m["context"], m["performance"]
        return {
            "completed": m["request_counts"]["completed"],
            "failed": m["request_counts"]["failed"],
            "calls": perf["requests_sent"],
            "sent": tok["prompt"],
            "cached": tok["prompt_cached_estimate"],
            "evaluated": tok["prompt_evaluated_estimate"],
            "isolated": tok["isolated_prompt_estimate"],
            "misses": tok.get("prompt_cache_misses"),
            "saved": tok["saved_fraction"],
            "trims": ctx["trims_total"],
            "truncations": ctx["truncations_detected"],
            "overflows": m["retries"]["by_cause"].get("context_overflow", 0),
            "not_paying": bool(ctx.get("conversation_not_paying")),
            "num_ctx": ctx["num_ctx"],
            "rps": perf["requests_per_second"],
            "wall_s": round(wall, 1),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=80)
    ap.add_argument("--windows", default="512,2048", help="tokens per slot, comma-separated")
    ap.add_argument("--slots", type=int, default=4, help="server slots = batchd lanes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--modes", default="isolated,conversation")
    ap.add_argument("--old-ref", help="also run conversation mode with batchd at this git revision")
    ap.add_argument("--server-args", default="", help="extra llama-server flags, e.g. --swa-full")
    args = ap.parse_args(argv)

    binary, model = llama_server_binary(wait=0), gemma_gguf()
    if isinstance(binary, str) or isinstance(model, str):
        print(f"skipped: {binary if isinstance(binary, str) else model}")
        return 0
    header(
        f"conversation vs isolated on llama-server: Gemma 3 270M, {args.rows} rows, {args.slots} slots/lanes, "
        f"max_tokens {args.max_tokens}, threads {args.threads} {args.server_args}".rstrip()
    )
    print(
        f"{'window':>6} {'mode':>16} {'ok':>4} {'calls':>5} {'sent':>7} {'evaluated':>9} {'isolated est':>12} "
        f"{'saved':>6} {'misses':>6} {'trims':>5} {'trunc':>5} {'ovfl':>4} {'req/s':>6}  load (before -> after)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-conv-") as tmp:
        old = export(args.old_ref, Path(tmp)) if args.old_ref else None
        variants = [(mode, None) for mode in args.modes.split(",")]
        if old is not None:
            variants.append(("conversation", old))
        for window in (int(w) for w in args.windows.split(",")):
            log = Path(tmp) / f"server-{window}.log"
            with LlamaServer(
                binary,
                model,
                slots=args.slots,
                ctx=window * args.slots,
                threads=args.threads,
                log_path=log,
                extra=tuple(args.server_args.split()),
            ) as server:
                for mode, root in variants:
                    before = load()
                    r = run(
                        server.url, mode=mode, rows=args.rows, lanes=args.slots, max_tokens=args.max_tokens, root=root
                    )
                    label = f"{mode}@{args.old_ref}" if root else mode
                    print(
                        f"{window:>6} {label:>16} {r['completed']:>4} {r['calls']:>5} {r['sent']:>7,} "
                        f"{r['evaluated']:>9,} {r['isolated']:>12,} {r['saved']:>6} {r['misses']!s:>6} "
                        f"{r['trims']:>5} {r['truncations']:>5} {r['overflows']:>4} {r['rps']:>6.3f}  "
                        f"{before} -> {load()}",
                        flush=True,
                    )
                    summary(
                        "conversation_real",
                        f"window={window} mode={label} " + " ".join(f"{k}={v}" for k, v in r.items()),
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
