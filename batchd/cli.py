"""The ``batchd`` command line: settings are read once here and passed down.

Exit codes: 0 ok, 2 bad usage or configuration (one line naming the key),
1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from batchd import __version__
from batchd.errors import BatchdError, ConfigError

if TYPE_CHECKING:
    from batchd.config import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batchd", description="Folder-driven LLM batch daemon.")
    p.add_argument("--version", action="version", version=f"batchd {__version__}")
    p.add_argument("--config", type=Path, help="TOML config file (default $BATCHD_CONFIG or /etc/batchd/batchd.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--once", action="store_true", help="drain the inbox and pending work, then exit 0")

    st = sub.add_parser("status", help="show running, queued and recent jobs")
    st.add_argument("--json", action="store_true")
    st.add_argument("--limit", type=int, default=20)

    conv = sub.add_parser("convert", help="render a CSV into OpenAI batch JSONL, as the daemon would")
    conv.add_argument("file", type=Path)
    conv.add_argument("--pipeline", "-p", help="pipeline folder name in the inbox, or a folder path")
    conv.add_argument("-o", "--output", type=Path)

    render = sub.add_parser("render", help="print the exact messages of one CSV row")
    render.add_argument("file", type=Path)
    render.add_argument("--pipeline", "-p")
    render.add_argument("--row", type=int, default=1, help="1-based data row")

    for name, text in (
        ("cancel", "cancel a queued or running job"),
        ("retry", "re-run the failed requests of a job (or resume one that needs attention)"),
        ("resume", "resume a job paused because it needs attention"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("job")
    prio = sub.add_parser("priority", help="set a job's priority (higher runs first)")
    prio.add_argument("job")
    prio.add_argument("value", type=int)

    sub.add_parser("doctor", help="check configuration, folders, backend, GPU and unit hardening")
    return p


#: commands about the running service: they use its recorded settings (see effective.py)
OPERATOR_COMMANDS = ("status", "cancel", "retry", "resume", "priority", "doctor")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # --version and --help end here, before any dependency is imported
    from batchd.config import load_settings, unknown_env_warnings
    from batchd.ops.effective import load_for_operator

    try:
        source = ""
        try:
            if args.command in OPERATOR_COMMANDS:
                # Run from a shell: the service's settings (drop-ins included) unless this shell names its own.
                loaded = load_for_operator(args.config)
                settings, source = loaded.settings, loaded.source
            else:
                settings = load_settings(config=args.config)
        except BatchdError:
            raise
        except Exception as exc:  # noqa: BLE001 - exit 2 in one line: the unit does not restart on 2
            raise ConfigError("settings", f"{type(exc).__name__}: {exc}") from exc
        for warning in unknown_env_warnings(os.environ):
            print(f"batchd: warning: {warning}", file=sys.stderr)
        return _dispatch(args, settings, source=source)
    except ConfigError as exc:
        print(f"batchd: configuration error: {exc.key}: {exc.problem}", file=sys.stderr)
        return 2
    except BatchdError as exc:
        print(f"batchd: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings, *, source: str = "") -> int:
    cmd = args.command
    if cmd == "run":
        return _run(settings, once=args.once, config=args.config)
    from batchd.ops import commands as ops

    if cmd == "status":
        return ops.status(settings, as_json=args.json, limit=args.limit)
    if cmd == "convert":
        return ops.convert(settings, args.file, pipeline=args.pipeline, output=args.output)
    if cmd == "render":
        return ops.render(settings, args.file, pipeline=args.pipeline, row=args.row)
    if cmd == "cancel":
        return ops.cancel(settings, args.job)
    if cmd == "retry":
        return ops.retry(settings, args.job)
    if cmd == "resume":
        return ops.resume(settings, args.job)
    if cmd == "priority":
        return ops.priority(settings, args.job, args.value)
    if cmd == "doctor":
        return ops.doctor(settings, source=source)
    raise ConfigError("command", f"unknown command {cmd!r}")


def _run(settings: Settings, *, once: bool, config: Path | None = None) -> int:
    from batchd import logs
    from batchd.config import load_settings
    from batchd.ops import preflight
    from batchd.service import Notifier, ServiceDaemon, Signals

    preflight.check(settings)  # the same checks as `batchd doctor`: exit 2 before anything starts
    logs.configure(
        target=settings.log.target,
        level=settings.log.level,
        under_journal=logs.stderr_is_journal(os.environ.get("JOURNAL_STREAM")),
    )
    # NOTIFY_SOCKET and WATCHDOG_* come from systemd (Type=notify); without them this is a no-op.
    notifier = Notifier.from_environ(os.environ)

    async def go() -> int:
        # SIGHUP re-reads the same sources (file + environment) the first load used.
        daemon = ServiceDaemon(
            notifier=notifier,
            settings=settings,
            config=config,
            reload_settings=lambda: load_settings(config=config),
            # systemd's StateDirectory= (a colon-separated list when several are set; ours is the first)
            unit_state_dir=Path(state.split(":")[0]) if (state := os.environ.get("STATE_DIRECTORY")) else None,
        )
        Signals(daemon).install(asyncio.get_running_loop())
        try:
            return await (daemon.run_once() if once else daemon.run())
        finally:
            await daemon.aclose()

    return asyncio.run(go())
