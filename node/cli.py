"""The ``radiomics-node`` command: serve, config check, demo."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from node import __version__, logs
from node.config import ConfigError, load_config


def _serve(args: argparse.Namespace) -> int:
    from node.service import Node

    config = load_config(args.config)
    logs.configure(config.log_level, config.log_file)
    node = Node(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    node.start()
    stop.wait()
    node.stop()
    return 0


def _config_check(args: argparse.Namespace) -> int:
    from pipelines.presets import load_preset

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{exc.path or 'configuration'}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    problems = []
    for rule in config.rules:
        try:
            load_preset(rule.preset)
        except Exception as exc:
            problems.append(f"rules.{rule.name}.preset: {exc}")
    if problems:
        print(f"{args.file}: {len(problems)} problem(s)")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    listener = config.listener
    print(f"{args.file}: OK")
    print(f"  listener   {listener.ae_title} on {listener.host}:{listener.port}")
    print(f"  state      {config.state_dir.resolve()}")
    print(f"  rules      {', '.join(f'{r.name} -> {r.preset}' for r in config.rules) or 'none'}")
    peers = ", ".join(f"{d.ae_title}@{d.host}:{d.port}" for d in config.destinations)
    print(f"  send to    {peers or 'nobody'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from node.demo import run_demo

    return run_demo(config_path=args.config, workdir=args.workdir, out_dir=args.out,
                    port=args.port, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radiomics-node",
        description="DICOM node: radiomics of liver lesions, reported back into the PACS.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the node: receive, process, deliver")
    serve.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    serve.set_defaults(func=_serve)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_config_check)

    demo = commands.add_parser(
        "demo", help="send a synthetic liver CT and its SEG to a node started here; print results"
    )
    demo.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--out", type=Path, default=Path("out"))
    demo.add_argument("--port", type=int, help="listener port (default: the configuration's)")
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the SR")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
