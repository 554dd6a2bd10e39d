"""Benchmark: one study end to end, from the last instance sent to the last result object stored
in a real Orthanc, and where that time goes.

The demo study (``demo.synthetic``: a 60 x 512 x 512 liver CT with two lesions and its SEG,
the ``ct-liver-crlm`` preset with the shipped demonstration model pinned, as ``radiomics-node
demo`` runs it) is sent by DCMTK ``storescu`` to ``radiomics-node serve`` (its own process),
whose only destination is Debian's Orthanc (C-STORE, verified by C-FIND; Orthanc lists the node
in its DicomModalities). Both run on 127.0.0.1 on free ports with ``TCP_NODELAY=1``. The node's
index records when each instance arrived, when each series became stable, when the job was
queued, started and finished with the seconds of each pipeline stage, and when Orthanc answered
the C-STORE of each result object (``node.state.jobs.JobStore.timeline``); this script reads them
after the run and prints the consecutive spans from the last instance sent (its arrival at the
node) to the last result stored (Orthanc's C-STORE success status), which add up to the total,
and as the reference for the delivery the time ``storescu`` takes to store the same result
objects in the same Orthanc:

    wait for stable   last instance sent -> both series stable (``stable_after`` + detection)
    routing           -> the job queued
    queue             -> the job runner claimed it
    worker hand-off   claim -> finish minus the pipeline's own stages (process start, arguments,
                      result, recording)
    pipeline stages   read series, read SEG, preprocessing, extraction, QC, models, encoding,
                      writing (``pipelines.outputs.result.StageTimes``), and beside the maps: what
                      the job spent starting the forked child that runs QC and the models and
                      encodes and writes the report, derived SEG and summary image while it
                      computes the maps, and
                      waiting for it (the child's own stages are printed, not counted)
    delivery          job finished -> Orthanc's success status for the last result object
                      (the report, derived SEG and summary image, and the maps of every
                      feature class but the last, go out while the job computes the maps;
                      the last class's maps after it finished)

The node's overhead is the total less the extraction and less the configured ``stable_after``
(issue 8: under 5 %). Peak resident memory (``bench.ingest.PeakMemory``) of the node with its
worker processes and of Orthanc is sampled every 50 ms (psutil).

    python bench/e2e.py                       # the demo study, ct-liver-crlm, stable_after 2 s
    python bench/e2e.py --stable-after 10     # the node's default stable wait
    python bench/e2e.py --warm                # the node's second job: worker processes warm
    python bench/e2e.py --task-processes 2    # a job's tasks in two processes of its own
    python bench/e2e.py --smoke               # CI smoke run: 12 x 64 x 64, ct-liver-basic
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import ENV, PeakMemory, _orthanc_pid
from demo.synthetic import write_synthetic_study
from models.shipped import DEMO_PACKAGE, DEMO_SHA256
from node.config import NodeConfig
from node.state import Index
from node.state.jobs import JobTimeline
from tests.conftest import free_port
from tests.integration.peers import NodeService, orthanc, require_tools

DEMO_SHAPE = (60, 512, 512)
SMOKE_SHAPE = (12, 64, 64)


@dataclass(frozen=True)
class Arrivals:
    """What the node's index says of the input: first and last instance received, and when the
    last of its series became stable (epoch seconds)."""

    first_received: float
    last_received: float
    stable: float


def arrivals(index_path: Path, study_uid: str) -> Arrivals:
    """Read the arrival and stability times of ``study_uid``'s series from the node's index."""
    with sqlite3.connect(f"file:{index_path}?mode=ro", uri=True) as db:
        first, last, stable = db.execute(
            """SELECT min(first_received), max(last_received), max(stable_at) FROM series
               WHERE study_uid=?""", (study_uid,)).fetchone()
    return Arrivals(first, last, stable)


def send(node: NodeService, files: list[str]) -> float:
    """``storescu`` sends ``files`` to the node over one association; its seconds."""
    start = time.perf_counter()
    subprocess.run(["storescu", "--required", "-aet", "BENCH", "-aec", node.ae_title,
                    "127.0.0.1", str(node.port), *files], check=True, capture_output=True,
                   env=ENV)
    return time.perf_counter() - start


def wait_for_results(node: NodeService, index_path: Path, pacs: httpx.Client, timeout: float,
                     number: int) -> JobTimeline:
    """Poll the node's index (SQLite WAL: readable beside the node) until its ``number``-th
    job is done and every delivery verified, then check with Orthanc's REST API
    (``/tools/lookup``) that each result object is there; the job's times. The times come from
    the node's index, so the polling interval does not enter them."""
    deadline = time.monotonic() + timeout
    index = Index(index_path)  # the node made it before it listened
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no results in Orthanc after {timeout:.0f} s:\n"
                                   + node.log_path.read_text()[-3000:])
            time.sleep(0.1)
            jobs = index.jobs.all()
            if any(job.state == "failed" for job in jobs):
                raise RuntimeError(f"job failed: {[job.reason for job in jobs]}")
            if len(jobs) < number or jobs[number - 1].state != "done":
                continue
            timeline = index.jobs.timeline(jobs[number - 1].id)
            if timeline.deliveries and all(d.delivered_at for d in timeline.deliveries):
                break
    finally:
        index.close()
    for delivery in timeline.deliveries:
        found = pacs.post("/tools/lookup", content=delivery.sop_instance_uid).raise_for_status()
        if not found.json():
            raise RuntimeError(f"{delivery.sop_instance_uid} delivered but not in Orthanc")
    return timeline


def store_again(pacs: httpx.Client, port: int, files: list[Path]) -> float:
    """The reference for the delivery span: delete ``files`` (the node's result objects) from
    Orthanc and send them again with ``storescu`` over one association; its seconds."""
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        for found in pacs.post("/tools/lookup", content=uid).raise_for_status().json():
            pacs.delete(f"/instances/{found['ID']}").raise_for_status()
    start = time.perf_counter()
    subprocess.run(["storescu", "--required", "-aet", "BENCH", "-aec", "ORTHANC", "127.0.0.1",
                    str(port), *map(str, files)], check=True, capture_output=True, env=ENV)
    return time.perf_counter() - start


def _row(name: str, seconds: float, note: str = "") -> str:
    return f"  {name:24s}{seconds:9.3f} s{('  ' + note) if note else ''}"


def workers_ready(log_path: Path) -> list[float]:
    """Epoch seconds of the node's "job worker ready" log lines (``node.flow.executor``), in
    order."""
    times = []
    for line in log_path.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "job worker ready":
            stamp, millis = entry["ts"].rstrip("Z").split(".")
            times.append(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
                         + int(millis) / 1000)
    return times


def report(timeline: JobTimeline, seen: Arrivals, storescu_s: float, stable_after: float,
           scan_interval: float, reference_s: float) -> list[str]:
    """The lines that split the time from the last instance sent (its arrival at the node) to
    the last result stored in Orthanc (its C-STORE success status at the node), and the node's
    overhead."""
    assert timeline.started_at is not None and timeline.finished_at is not None
    beside = {name.removeprefix("early_objects."): value
              for name, value in timeline.stages.items() if name.startswith("early_objects.")}
    stages = {name: value for name, value in timeline.stages.items()
              if not name.startswith("early_objects.")}
    stored = max(d.sent_at for d in timeline.deliveries if d.sent_at is not None)
    early = sum(1 for d in timeline.deliveries
                if d.sent_at is not None and d.sent_at <= timeline.finished_at)
    verified = max(d.delivered_at for d in timeline.deliveries if d.delivered_at is not None)
    sent = seen.last_received
    total = stored - sent
    pipeline = sum(stages.values())
    spans = [
        ("wait for stable", seen.stable - sent, f"configured stable_after {stable_after:g} s, "
         f"scan_interval {scan_interval:g} s"),
        ("routing", timeline.queued_at - seen.stable, ""),
        ("queue", timeline.started_at - timeline.queued_at, ""),
        ("worker hand-off", timeline.finished_at - timeline.started_at - pipeline,
         "process start, arguments and result, recording"),
        ("read series", stages["read_series"], ""),
        ("read SEG", stages["read_segmentation"], ""),
        ("preprocessing", stages["preprocessing"], "normalisation, ROI variants"),
        ("extraction", stages["extraction"], "features, robustness ROIs, voxel-wise maps"),
        ("QC and models", stages["qc"] + stages["models"],
         "in the child beside the maps" if "qc" in beside else ""),
        ("encoding", sum(v for k, v in stages.items() if k.startswith("encode_")),
         ", ".join(f"{k.removeprefix('encode_')} {v:.2f}" for k, v in stages.items()
                   if k.startswith("encode_"))),
        ("writing", stages["writing"], "result objects and CSVs"),
        ("beside the maps", stages.get("beside_maps", 0.0),
         "starting the children that run QC and the models and write the report, SEG, "
         "summary and first maps, and waiting for them; "
         "in the child, off this path: " + ", ".join(f"{k.removeprefix('encode_')} {v:.2f}"
                                                     for k, v in beside.items())
         if beside else "the report, SEG and summary were written in the job's process"),
        ("delivery", stored - timeline.finished_at,
         f"{len(timeline.deliveries) - early} objects, C-STORE "
         f"({early} more stored before the job finished, while the maps were computed); "
         f"storescu of the same {len(timeline.deliveries) - early} objects to Orthanc: "
         f"{reference_s:.3f} s"),
    ]
    overhead = total - stages["extraction"] - stable_after
    seconds = {name: value for name, value, _ in spans}
    service = seconds["wait for stable"] - stable_after + sum(
        seconds[name] for name in ("routing", "queue", "worker hand-off", "delivery"))
    lines = [
        _row("receive", seen.last_received - seen.first_received,
             f"first..last instance at the node (storescu ran {storescu_s:.3f} s)"),
        f"last instance sent -> last result stored in Orthanc: {total:.3f} s",
        *(_row(name, seconds, note) for name, seconds, note in spans),
        _row("sum of the spans", sum(s for _, s, _ in spans), ""),
        _row("(verified by C-FIND)", verified - stored, "after the last store, not in the total"),
        f"node overhead (total - extraction - stable_after): {overhead:.3f} s = "
        f"{100 * overhead / total:.1f} % of the total (issue 8: under 5 %)",
        f"  in the node's service (stable detection, routing, queue, hand-off, delivery): "
        f"{service:.3f} s = {100 * service / total:.1f} %",
        f"  in the pipeline beside extraction (reading, preprocessing, QC, models, encoding, "
        f"writing, beside the maps): {overhead - service:.3f} s = "
        f"{100 * (overhead - service) / total:.1f} %",
        f"  of which the PACS storing the results after the job finished (storescu of the "
        f"same objects): "
        f"{reference_s:.3f} s = {100 * reference_s / total:.1f} %; the node's own overhead "
        f"beside it: {overhead - reference_s:.3f} s = "
        f"{100 * (overhead - reference_s) / total:.1f} %",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"{SMOKE_SHAPE} CT, ct-liver-basic, no model (CI smoke run)")
    parser.add_argument("--stable-after", type=float, default=2.0,
                        help="the node's stable_after in seconds (default 2)")
    default_scan = NodeConfig.model_fields["scan_interval"].default
    parser.add_argument("--scan-interval", type=float, default=default_scan,
                        help=f"the node's scan_interval in seconds (default {default_scan:g}, "
                        "the node's default)")
    parser.add_argument("--warm", action="store_true",
                        help="send a small warm-up study first and measure the node's second "
                        "job (worker processes started, libraries loaded)")
    parser.add_argument("--task-processes", type=int, default=0,
                        help="the node's executor.task_processes: processes that run a job's "
                        "feature and map tasks (default 0: in the job's own process)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    shape = SMOKE_SHAPE if args.smoke else DEMO_SHAPE
    preset = "ct-liver-basic" if args.smoke else "ct-liver-crlm"
    require_tools("storescu")

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        study = write_synthetic_study(work / "study", shape=shape)
        warm_up = write_synthetic_study(work / "warm-up", shape=SMOKE_SHAPE, seed=1) \
            if args.warm else None
        files = [str(p) for p in (*study.ct_paths, study.seg_path)]
        size = sum(Path(f).stat().st_size for f in files)
        orthanc_ports = (free_port(), free_port())
        destination = {"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1",
                       "port": orthanc_ports[0]}
        node = NodeService(work / "node", {
            "rules": [{"name": "bench", "preset": preset, "modality": ["CT"]}],
            "models": [] if args.smoke else [{"path": str(DEMO_PACKAGE), "sha256": DEMO_SHA256}],
            "destinations": [destination], "stable_after": args.stable_after,
            "scan_interval": args.scan_interval,
            "executor": {"kind": "local", "task_processes": args.task_processes},
        })
        index_path = NodeConfig(state_dir=node.state_dir).index_path
        # Orthanc answers C-FIND (the node's delivery check) only to its DicomModalities
        modalities = {"radiomics": [node.ae_title, "127.0.0.1", node.port]}
        with orthanc(work / "orthanc", modalities, ports=orthanc_ports) as pacs:
            node.start()
            try:
                assert node._process is not None
                with PeakMemory(node._process.pid) as node_memory, \
                        PeakMemory(_orthanc_pid(pacs.dicom_port)) as orthanc_memory:
                    if warm_up is not None:
                        send(node, [str(p) for p in (*warm_up.ct_paths, warm_up.seg_path)])
                        wait_for_results(node, index_path, pacs.http, args.timeout, 1)
                    storescu_s = send(node, files)
                    timeline = wait_for_results(node, index_path, pacs.http, args.timeout,
                                                2 if warm_up else 1)
            finally:
                node.stop()
            assert timeline.finished_at is not None
            late = sorted(NodeConfig(state_dir=node.state_dir).results_dir
                          / f"job-{timeline.job_id}" / f"{d.sop_instance_uid}.dcm"
                          for d in timeline.deliveries
                          if d.sent_at is not None and d.sent_at > timeline.finished_at)
            reference_s = store_again(pacs.http, pacs.dicom_port, late)
        seen = arrivals(index_path, study.study_instance_uid)
        ready = workers_ready(node.log_path)

    lines = report(timeline, seen, storescu_s, args.stable_after, args.scan_interval,
                   reference_s)
    print(f"{shape[0]} x {shape[1]} x {shape[2]} CT + SEG ({len(files)} instances, "
          f"{size / 1e6:.1f} MB), preset {preset}"
          f"{'' if args.smoke else ' + shipped model'}, {os.cpu_count()} CPUs, loopback, "
          f"TCP_NODELAY=1, {'second job (after a warm-up study)' if args.warm else 'first job'} "
          f"after the node started, task_processes {args.task_processes}")
    for line in lines:
        print(line)
    if ready and timeline.started_at is not None:
        lead = timeline.started_at - ready[-1]
        print(f"job worker ready (imports, highdicom's tables) {lead:.3f} s before the job was "
              f"claimed{' (negative: the job waited for it)' if lead < 0 else ''}")
    print(f"peak resident memory: node + worker processes "
          f"{node_memory.peak / 2**20:.0f} MiB, "
          f"Orthanc {orthanc_memory.peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
