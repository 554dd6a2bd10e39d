"""Benchmark: C-STORE ingest rate of the node's receiver against DCMTK storescp and Orthanc.

A CT series of 512 x 512 slices (300 by default) is sent over loopback by DCMTK ``storescu`` to
DCMTK ``storescp``, to Orthanc and to ``radiomics-node serve`` (durability on: every instance is
fsynced and indexed before the success status), alternating target by target in each round. Each
send uses a freshly written copy of the series with new UIDs, so no receiver sees a duplicate.
Every process runs with ``TCP_NODELAY=1`` (DCMTK and Orthanc read it from the environment).

Printed: MB/s of each target for one association, and for ``--parallel`` associations at once
(the series split among that many ``storescu`` processes; storescp then runs with ``--fork``),
the node's ratio to each reference, the CPU time each receiver spent per instance (its process
tree, user + system: less sensitive to a busy machine than the rate) and the peak resident memory
of each receiver's process tree (sampled every 50 ms with psutil).

    python bench/ingest.py                       # 300 slices, 3 rounds, 1 and 4 associations
    python bench/ingest.py --small               # CI smoke run: 20 slices, one round
    python bench/ingest.py --receivers 4         # the node with listener.processes: 4
    python bench/ingest.py --workdir /dev/shm    # all storage in memory: no flush latency
    python bench/ingest.py --baseline /tmp/before  # also the node of another checkout
                                                 # (e.g. git archive of the commit before)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.synthetic import write_synthetic_study
from tests.conftest import free_port
from tests.integration.peers import NodeService, orthanc, require_tools

ENV = {**os.environ, "TCP_NODELAY": "1"}


def write_series(template: pydicom.Dataset, out_dir: Path, slices: int, seed: int) -> list[Path]:
    """``slices`` CT instances cloned from ``template`` with new UIDs, positions and noise
    pixels (uncompressed, 512 x 512 int16 in the template), one file each."""
    out_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [*template.ImagePositionPatient[:2], -2.5 * k]
        pixels = rng.integers(0, 2000, (template.Rows, template.Columns), dtype=np.int16)
        ds.PixelData = pixels.tobytes()
        path = out_dir / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class PeakMemory:
    """Peak resident memory (bytes) of a process and all its descendants, sampled in a thread:
    the sum of their resident set sizes, except that a child forked without exec (the job's
    writer of early objects, ``node.flow.forked``; ``storescp --fork``'s association handlers)
    counts its unique set size only: the pages it shares with its parent by copy-on-write are in
    the parent's RSS already. (Proportional set sizes of every process, from
    ``/proc/PID/smaps_rollup``, would say the same but cost a third of a core at 20 samples a
    second, slowing what is measured.) Also the CPU time (user + system, seconds) they used
    while it ran, from the first and last sample of each process (a process started in between
    counts from zero; one that ended counts to its last sample, at most one interval short)."""

    def __init__(self, pid: int, interval: float = 0.05):
        self._root = psutil.Process(pid)
        self._interval = interval
        self.peak = 0
        self._cpu: dict[int, tuple[float, float]] = {}  # descendant pid -> first, last CPU s
        self._forked: dict[int, bool] = {}  # descendant pid -> forked from its parent, no exec
        self._root_start = self._root_cpu(self._root.cpu_times())
        self._root_used = 0.0
        self._alive_at_exit: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the root and its descendants between enter and exit: the root's own,
        those of children it reaped meanwhile (storescp --fork's per-association processes), and
        those of descendants still alive at exit, from their first sample."""
        return self._root_used + sum(last - first for pid, (first, last) in self._cpu.items()
                                     if pid in self._alive_at_exit)

    def _root_cpu(self, times: Any) -> tuple[float, float]:
        return times.user + times.system, times.children_user + times.children_system

    def _is_forked(self, process: psutil.Process) -> bool:
        if process.pid not in self._forked:
            parent = process.parent()
            self._forked[process.pid] = parent is not None and \
                process.cmdline() == parent.cmdline()
        return self._forked[process.pid]

    def _sample(self, first: bool = False) -> int:
        total = 0
        for process in self._root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += process.memory_full_info().uss if self._is_forked(process) \
                    else process.memory_info().rss
                times = process.cpu_times()
                used = times.user + times.system
                start = self._cpu[process.pid][0] if process.pid in self._cpu else \
                    (used if first else 0.0)
                self._cpu[process.pid] = (start, used)
        return total + self._root.memory_info().rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakMemory:
        with contextlib.suppress(psutil.Error):
            self.peak = self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self._sample())
            self._alive_at_exit = {p.pid for p in self._root.children(recursive=True)}
            own, reaped = self._root_cpu(self._root.cpu_times())
            self._root_used = own - self._root_start[0] + reaped - self._root_start[1]


def settle(pid: int, quiet_s: float = 0.05, within: float = 60.0) -> None:
    """Wait until process ``pid`` and its descendants use less than ``quiet_s`` CPU seconds in a
    second (e.g. the node's job worker done importing the pipeline), at most ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with PeakMemory(pid) as meter:
            time.sleep(1.0)
        if meter.cpu_seconds < quiet_s:
            return


@dataclass
class Target:
    """A receiver under test: its name, AE title, port, the PID of its root process."""

    name: str
    ae_title: str
    port: int
    pid: int
    rates: dict[int, list[float]] = field(default_factory=dict)
    cpu_ms: dict[int, list[float]] = field(default_factory=dict)  # CPU ms per instance
    peak: int = 0
    stored: Path | None = None  # where the node spools: every instance sent must be there


def send(target: Target, files: list[Path], associations: int) -> float:
    """Send ``files`` to ``target`` over ``associations`` storescu processes; MB/s. The
    receiver's CPU milliseconds per instance go to ``target.cpu_ms``."""
    size = sum(p.stat().st_size for p in files)
    chunks = [files[i::associations] for i in range(associations)]
    with tempfile.TemporaryDirectory() as logs, PeakMemory(target.pid) as memory:
        start = time.perf_counter()
        senders = [
            subprocess.Popen(
                ["storescu", "--required", "-aet", "BENCH", "-aec", target.ae_title,
                 "127.0.0.1", str(target.port), *map(str, chunk)],
                stdout=(Path(logs) / f"{n}.log").open("w"), stderr=subprocess.STDOUT, env=ENV)
            for n, chunk in enumerate(chunks)]
        codes = [s.wait() for s in senders]
        elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"storescu to {target.name} exited with {codes}")
    target.cpu_ms.setdefault(associations, []).append(memory.cpu_seconds * 1e3 / len(files))
    target.peak = max(target.peak, memory.peak)
    return size / elapsed / 1e6


@contextlib.contextmanager
def storescp(workdir: Path, fork: bool) -> Iterator[Target]:
    """DCMTK storescp writing into ``workdir`` (``--fork``: a child process per association)."""
    port = free_port()
    workdir.mkdir(parents=True)
    process = subprocess.Popen(
        ["storescp", *(["--fork"] if fork else []), "-aet", "STORESCP", "-od", str(workdir),
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(0.5)
    try:
        yield Target("storescp --fork" if fork else "storescp", "STORESCP", port, process.pid)
    finally:
        process.terminate()
        process.wait()


@contextlib.contextmanager
def node(workdir: Path, receivers: int, repo: Path | None = None) -> Iterator[Target]:
    """``radiomics-node serve`` with its default durability, no rules (nothing but ingest); from
    the source tree ``repo`` ("node before") when given, else from this one."""
    port = free_port()
    listener = {"port": port, **({"processes": receivers} if receivers > 1 else {})}
    service = NodeService(workdir, {"rules": [], "stable_after": 3600,
                                    "listener": listener,
                                    "limits": {"max_associations_per_peer": 8}},
                          **({"repo": repo} if repo is not None else {}))
    service.port = port
    service.start()
    try:
        assert service._process is not None
        settle(service._process.pid)  # its job worker starts with it and imports the pipeline
        name = "node before" if repo is not None else "node"
        yield Target(f"{name} ({receivers} receiver{'s' if receivers > 1 else ''})",
                     service.ae_title, service.port, service._process.pid,
                     stored=service.state_dir / "spool")
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20 slices, one round (CI smoke)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4,
                        help="associations at once in the parallel runs (0: none)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the series and every receiver's storage go (default: the "
                        "system temporary folder); /dev/shm takes the disk's flush time out")
    parser.add_argument("--receivers", type=int, default=4,
                        help="listener.processes of the node for the parallel runs")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="source tree of the code before a change: its node is one more "
                        "target ('node before'), in turn with the others in every round")
    args = parser.parse_args(argv)
    if args.small:
        args.slices, args.rounds = 20, 1
    require_tools("storescu", "storescp")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-", dir=args.workdir) as tmp:
        work = Path(tmp)
        template = pydicom.dcmread(
            write_synthetic_study(work / "template", shape=(8, 512, 512)).ct_paths[0])
        counter = iter(range(10**6))
        results: list[tuple[int, list[Target]]] = []
        modes = [(1, 1)] + ([(args.parallel, args.receivers)] if args.parallel > 1 else [])
        for associations, receivers in modes:
            with contextlib.ExitStack() as stack:
                targets = [
                    stack.enter_context(storescp(work / f"scp-{associations}", associations > 1)),
                    stack.enter_context(node(work / f"node-{associations}", receivers)),
                ]
                if args.baseline is not None:
                    targets.append(stack.enter_context(
                        node(work / f"before-{associations}", receivers, args.baseline)))
                pacs = stack.enter_context(orthanc(work / f"orthanc-{associations}", {}))
                targets.insert(1, Target("Orthanc", pacs.aet, pacs.dicom_port, _orthanc_pid(
                    pacs.dicom_port)))
                for _ in range(args.rounds):
                    for target in targets:
                        n = next(counter)
                        files = write_series(template, work / f"series-{n}", args.slices, n)
                        target.rates.setdefault(associations, []).append(
                            send(target, files, associations))
                        shutil.rmtree(work / f"series-{n}")
                for target in targets:
                    if target.stored is not None:
                        kept = len(list(target.stored.glob("*/*/*.dcm")))
                        if kept != args.slices * args.rounds:
                            raise RuntimeError(f"{target.name} stored {kept} of "
                                               f"{args.slices * args.rounds} instances")
            results.append((associations, targets))

    size = args.slices * 512 * 512 * 2 / 1e6
    print(f"{args.slices} slices of 512 x 512 ({size:.0f} MB of pixel data), {args.rounds} "
          f"round(s), loopback, TCP_NODELAY=1, {os.cpu_count()} CPUs, storage in "
          f"{args.workdir or tempfile.gettempdir()}")
    ok = True
    for associations, targets in results:
        print(f"\n{associations} association(s) at once:")
        medians = {t.name: statistics.median(t.rates[associations]) for t in targets}
        for target in targets:
            rates = " ".join(f"{r:6.1f}" for r in target.rates[associations])
            cpu = statistics.median(target.cpu_ms[associations])
            print(f"  {target.name:22s} median {medians[target.name]:7.1f} MB/s  (rounds: "
                  f"{rates})  CPU {cpu:5.2f} ms/instance  peak RSS {target.peak / 2**20:6.0f} MiB")
        ours = [name for name in medians if name.startswith("node")]
        for node_name in ours:
            prefix = "node" if node_name.startswith("node (") else "node before"
            for name, rate in medians.items():
                if name not in ours:
                    print(f"  {prefix} / {name:15s} {medians[node_name] / rate:5.2f} x")
        if len(ours) == 2:
            print(f"  node / node before      {medians[ours[0]] / medians[ours[1]]:5.2f} x")
        ok = ok and all(r > 0 for r in medians.values())
    return 0 if ok else 1


def _orthanc_pid(port: int) -> int:
    """The PID of the process listening on ``port`` (Orthanc started by tests.integration)."""
    for connection in psutil.net_connections("tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN":
            return int(connection.pid)
    raise RuntimeError(f"no process listens on port {port}")


if __name__ == "__main__":
    sys.exit(main())
