"""The ``radiomics-node`` command: serve, config check, demo, outbox list and retry, audit;
models and export (node.ops.model_commands); index check and rebuild (node.ops.index_commands); jobs
list and retry (node.ops.job_commands); rules test (node.ops.rule_test)."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from node import __version__, logs
from node.config import ConfigError, load_config
from node.ops.index_commands import add_commands as add_index_commands
from node.ops.index_commands import open_configured
from node.ops.job_commands import add_commands as add_job_commands
from node.ops.model_commands import add_commands as add_model_commands
from node.ops.rule_test import add_commands as add_rule_commands

if TYPE_CHECKING:
    from node.state import Index

INDEX_DAMAGED = 3
"""Exit status of ``serve`` when the index is damaged (``node.state.IndexDamaged``)."""


def _serve(args: argparse.Namespace) -> int:
    from node.flow.executor import make_executor

    config = load_config(args.config)
    logs.configure(config.log_level, config.log_file)
    # the job workers start first: they import the pipeline while this process imports the rest
    # of the node (seconds each), so the first study after a start does not wait for them
    executor = make_executor(config)
    from node.service import Node
    from node.state import IndexDamaged

    try:
        node = Node(config, executor=executor)
        node.start()
    except IndexDamaged as exc:
        # one line in the log and on stderr, no traceback: what is wrong and what to do
        logging.getLogger("node").error("index damaged: not started", extra=logs.fields(
            index=str(exc.path), problem=exc.problem))
        print(f"{exc}; stop here and run `radiomics-node index rebuild"
              f"{f' --config {args.config}' if args.config else ''}` (docs/runbook.md)",
              file=sys.stderr)
        executor.shutdown()
        return INDEX_DAMAGED
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    node.stop()
    return 0


def _config_check(args: argparse.Namespace) -> int:
    """Validate the file, then everything it points at (``node.ops.check``); exit 1 on failures."""
    from node.ops.check import check_config, report

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"FAIL  {exc.path or 'configuration'}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    listener = config.listener
    print(f"ok    {args.file}: valid; listener {listener.ae_title} on "
          f"{listener.host}:{listener.port}, "
          f"rules {', '.join(f'{r.name} -> {r.preset}' for r in config.rules) or 'none'}")
    text, code = report(args.file, check_config(config, offline=args.offline,
                                                timeout=args.timeout))
    print(text)
    return code


def _config_reference(args: argparse.Namespace) -> int:
    """Print the configuration reference (Markdown) rendered from the pydantic model."""
    from node.ops.reference import render_reference

    sys.stdout.write(render_reference())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from demo.run import run_demo

    return run_demo(config_path=args.config, workdir=args.workdir, out_dir=args.out,
                    port=args.port, timeout=args.timeout, preset=args.preset,
                    study=args.study)


def _outbox_index(args: argparse.Namespace) -> Index | None:
    """The index of the configured node (:func:`node.ops.index_commands.open_configured`)."""
    return open_configured(args.config)


def _outbox_list(args: argparse.Namespace) -> int:
    index = _outbox_index(args)
    if index is None:
        return 1
    try:
        rows = index.outbox.with_checks(args.state)
    finally:
        index.close()
    print(f"{'id':>5}  {'state':9}  {'tries':>5}  {'destination':12}  {'when (UTC)':19}  "
          f"{'verified by':14}  sop instance uid / last error")
    for row in rows:
        delivered = row["state"] == "delivered"
        when = row["delivered_at"] if delivered else row["next_attempt_at"]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(when)) if when else "-"
        detail = row["sop_instance_uid"] + ("" if delivered or not row["last_error"]
                                            else f"  [{row['last_error']}]")
        print(f"{row['id']:>5}  {row['state']:9}  {row['attempts']:>5}  "
              f"{row['destination'][:12]:12}  {stamp:19}  {row['verified_by'] or '-':14}  {detail}")
    print(f"{len(rows)} deliver{'y' if len(rows) == 1 else 'ies'}")
    return 0


def _outbox_retry(args: argparse.Namespace) -> int:
    if not args.all_dead and not args.ids:
        print("name delivery ids or --all-dead", file=sys.stderr)
        return 2
    index = _outbox_index(args)
    if index is None:
        return 1
    try:
        reset = index.outbox.retry(None if args.all_dead else args.ids,
                                       actor=f"cli:{getpass.getuser()}")
    finally:
        index.close()
    print(f"{len(reset)} deliver{'y' if len(reset) == 1 else 'ies'} due again now, attempts "
          f"reset: {', '.join(map(str, reset)) or 'none'}")
    skipped = sorted(set(args.ids or []) - set(reset))
    if skipped:
        print(f"not retried (no such delivery, or already delivered): "
              f"{', '.join(map(str, skipped))}", file=sys.stderr)
        return 1
    return 0


def _audit(args: argparse.Namespace) -> int:
    """Print the audit trail of a study from the index."""
    from node.ops.audit import study_trail_lines

    index = _outbox_index(args)
    if index is None:
        return 1
    try:
        lines = study_trail_lines(index, args.study_uid)
    finally:
        index.close()
    if not lines:
        print(f"the index knows nothing of study {args.study_uid}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _process(args: argparse.Namespace) -> int:
    """Pair the segmentations in a folder with their series and run the pipeline on each pair."""
    from collections import Counter

    import pydicom
    from tqdm import tqdm

    from node.flow.executor import run_in_process
    from node.flow.jobs import failure_reason
    from pipelines.io.discovery import discover
    from pipelines.io.references import missing_reference
    from pipelines.process import job_plan
    from pipelines.science.presets import load_preset

    preset = load_preset(args.preset)
    found = discover(args.dir)
    per_series = Counter(pair.series.series_instance_uid for pair in found.pairs)
    failed = 0
    # a progress bar on stderr for people at a terminal; results stay plain lines on stdout
    progress = tqdm(found.pairs, desc="processing", unit="pair", file=sys.stderr,
                    disable=not sys.stderr.isatty())
    for pair in progress:
        series, segmentation = pair.series, pair.segmentation
        out = args.out / series.series_instance_uid
        if per_series[series.series_instance_uid] > 1:
            out = out / segmentation.sop_instance_uid
        where = (f"series {series.series_instance_uid} ({series.modality}, "
                 f"{len(series.paths)} files) + {segmentation.kind} {segmentation.path}")
        try:
            result = run_in_process(job_plan(series.paths, segmentation.path, preset, out))
        except Exception as exc:  # one failed pair must not stop the others; it is reported
            failed += 1
            tqdm.write(f"{where}: FAILED: {failure_reason(exc)}", file=sys.stdout)
            continue
        features = sum(len(lesion.features) for lesion in result.lesions)
        tqdm.write(f"{where}: {len(result.lesions)} ROI(s), {features} values -> {out}",
                   file=sys.stdout)
        for line in result.not_measured:
            tqdm.write(line, file=sys.stdout)
    progress.close()
    for segmentation in found.unpaired:
        if segmentation.referenced_series:
            print(f"{segmentation.path}: {segmentation.kind} references series "
                  f"{', '.join(sorted(segmentation.referenced_series))}, not found under "
                  f"{args.dir}: not processed")
        else:
            header = pydicom.dcmread(segmentation.path, stop_before_pixels=True)
            print(f"{segmentation.path}: {missing_reference(header)}: not processed")
    if not found.pairs:
        print(f"{args.dir}: no segmentation paired with an image series ({len(found.series)} "
              f"series, {len(found.unpaired)} unpaired segmentation(s))")
    return 1 if failed or not found.pairs else 0


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
    check = config_commands.add_parser(
        "check", help="validate a configuration and what it points at (peers by C-ECHO, "
        "destinations, presets, models, TLS files)")
    check.add_argument("file", type=Path)
    check.add_argument("--offline", action="store_true", help="do not contact peers")
    check.add_argument("--timeout", type=float, default=5.0,
                       help="seconds to wait for each peer (default 5)")
    check.set_defaults(func=_config_check)
    reference = config_commands.add_parser(
        "reference", help="print every configuration field with type, default and description "
        "(Markdown; docs/configuration.md)")
    reference.set_defaults(func=_config_reference)

    demo = commands.add_parser(
        "demo", help="send a synthetic liver CT and its SEG to a node started here; print results"
    )
    demo.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    demo.add_argument("--workdir", type=Path, default=Path("var/demo"))
    demo.add_argument("--out", type=Path, default=Path("out"))
    demo.add_argument("--port", type=int, help="listener port (default: the configuration's)")
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the SR")
    demo.add_argument("--preset", default="ct-liver-crlm",
                      help="the pipeline preset (default: ct-liver-crlm, which the shipped "
                      "demonstration model is for)")
    demo.add_argument("--study", choices=("liver", "multiphase"), default="liver",
                      help="liver: one portal venous CT and its SEG (a rule's job); multiphase: "
                      "arterial, portal venous and delayed CT of one study and one SEG on the "
                      "portal venous series (a study rule's job, the SEG registered onto the "
                      "other phases)")
    demo.set_defaults(func=_demo)

    process = commands.add_parser(
        "process", help="offline: features of every segmentation in a folder, results to a folder"
    )
    process.add_argument("dir", type=Path, help="folder of DICOM images and SEG/RTSTRUCT")
    process.add_argument("--preset", required=True, help="preset name or YAML path")
    process.add_argument("--out", type=Path, required=True,
                         help="results go to OUT/<source series UID>/")
    process.set_defaults(func=_process)

    outbox = commands.add_parser("outbox", help="deliveries of results: list, send again")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    listing = outbox_commands.add_parser("list", help="deliveries, oldest first")
    listing.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    listing.add_argument("--state", choices=["pending", "delivered", "dead"])
    listing.set_defaults(func=_outbox_list)
    retry = outbox_commands.add_parser(
        "retry", help="send deliveries again now, attempts reset (dead or pending ones)")
    retry.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    retry.add_argument("ids", type=int, nargs="*", metavar="ID", help="delivery ids")
    retry.add_argument("--all-dead", action="store_true", help="every dead-lettered delivery")
    retry.set_defaults(func=_outbox_retry)

    audit = commands.add_parser(
        "audit", help="the audit trail of a study: senders, jobs, deliveries, retries")
    audit.add_argument("study_uid", help="Study Instance UID")
    audit.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    audit.set_defaults(func=_audit)

    add_model_commands(commands)
    add_index_commands(commands)
    add_job_commands(commands)
    add_rule_commands(commands)
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
