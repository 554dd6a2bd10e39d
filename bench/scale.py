"""Benchmark: jobs per minute on a Dask cluster of 1, 2, 4, ... workers, parallel efficiency,
the time of one job alone against the same job in this process, and peak memory.

N copies of the synthetic liver study (``demo.synthetic``, one per seed) are processed as the
node's Dask executor runs them (``node.flow.executor.run_shipped_job``: the files travel as bytes,
the job's feature tasks, one per lesion and image type, go to the same cluster as arrays, the
outputs come back as bytes) on a ``distributed.LocalCluster`` of W single-threaded worker processes
talking TCP, for each W given, after one untimed job. Throughput is N jobs submitted at once;
efficiency is throughput(W) / (W / W0 x throughput(W0)) against the smallest W0 measured. "One
job" is a single job alone on the cluster (its lesions and image types are what spreads it over
workers), also as a ratio to the same job run by ``job_plan`` in this process without Dask
(the baseline, as the local executor runs it). Peak memory is the largest resident set of one
worker process and the sum of every worker's (an upper bound of them together; ``getrusage``
ru_maxrss), and of this process, which holds the N jobs' bytes as the node would and ran the
baseline job. On one machine the workers share its CPUs: efficiency falls once W exceeds the
free cores; across machines, start ``dask worker`` on each (docs/installation.md, "Scaling out
jobs to a Dask cluster").

    python bench/scale.py                         # 8 jobs of 60 x 512 x 512 on 1, 2, 4 workers
    python bench/scale.py --small                 # smoke run: 2 jobs of 8 x 48 x 48, 1 and 2
    python bench/scale.py --workers 1 2 4 8 16 --jobs 32
    python bench/scale.py --scheduler tcp://host:8786   # an existing cluster, as it is
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.synthetic import write_synthetic_study
from node.flow.executor import run_in_process, run_shipped_job
from pipelines.process import job_plan

Case = tuple[list[bytes], bytes]  # the CT slices' bytes and the SEG's, as the node ships them


def run(client: distributed.Client, cases: list[Case], preset: str) -> float:
    """Seconds to process every case on the cluster behind ``client``, all submitted at once."""
    start = time.perf_counter()
    futures = [client.submit(run_shipped_job, [("", images, preset)], seg, pure=False)
               for images, seg in cases]
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    if not all(r.result.objects and r.result.lesions for r in results):
        raise RuntimeError("a job returned no result object or no lesion")
    return elapsed


def _load_pipeline() -> None:
    """Import what a job needs, so that the first timed job does not pay for it."""
    import node.flow.executor  # noqa: F401
    import pipelines.process  # noqa: F401


def _peak_mib() -> float:
    """This process's peak resident set (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_process(case: Case, preset: str) -> float:
    """Seconds of ``job_plan`` on one case in this process, no Dask (the local executor's
    work; after a first untimed run that loads everything)."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        paths = []
        for number, data in enumerate(case[0]):
            paths.append(Path(tmp) / f"{number:05d}.dcm")
            paths[-1].write_bytes(data)
        seg = Path(tmp) / "seg.dcm"
        seg.write_bytes(case[1])
        run_in_process(job_plan(paths, seg, preset, Path(tmp) / "warm"))
        start = time.perf_counter()
        run_in_process(job_plan(paths, seg, preset, Path(tmp) / "out"))
        return time.perf_counter() - start


def measure(client: distributed.Client, cases: list[Case], preset: str) -> dict[str, float]:
    """One job alone (after an untimed one), then all cases at once, and the workers' peak
    memory."""
    client.run(_load_pipeline)
    run(client, cases[:1], preset)
    single = run(client, cases[:1], preset)
    together = run(client, cases, preset)
    peaks = list(client.run(_peak_mib).values())
    return {"workers": len(peaks), "single": single, "together": together,
            "peak_worker": max(peaks), "peak_workers": sum(peaks)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 tiny jobs on 1 and 2 workers")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--matrix", type=int, default=512, help="rows and columns of the CT")
    parser.add_argument("--preset", default="ct-liver-basic")
    parser.add_argument("--scheduler", help="use this cluster instead of local ones")
    args = parser.parse_args(argv)
    shape = (8, 48, 48) if args.small else (args.slices, args.matrix, args.matrix)
    if args.small:
        args.jobs, args.workers = 2, [1, 2]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        cases = []
        for seed in range(args.jobs):
            study = write_synthetic_study(Path(tmp) / f"s{seed}", shape=shape, seed=seed)
            cases.append(([p.read_bytes() for p in study.ct_paths], study.seg_path.read_bytes()))
    print(f"{args.jobs} jobs, {shape[0]} x {shape[1]} x {shape[2]} CT, two lesions each, "
          f"preset {args.preset}")
    baseline = in_process(cases[0], args.preset)
    print(f"one job in this process, no Dask: {baseline:.1f} s")
    rows = []
    if args.scheduler:
        with distributed.Client(args.scheduler) as client:
            rows.append(measure(client, cases, args.preset))
    else:
        for workers in args.workers:
            with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                          processes=True, protocol="tcp", host="127.0.0.1",
                                          dashboard_address=None, silence_logs=40) as cluster, \
                    distributed.Client(cluster) as client:
                rows.append(measure(client, cases, args.preset))
    base = min(rows, key=lambda row: row["workers"])
    for row in rows:
        rate = args.jobs / row["together"] * 60
        efficiency = (base["together"] * base["workers"]) / (row["together"] * row["workers"])
        print(f"{row['workers']:3.0f} worker(s): {args.jobs} jobs {row['together']:7.1f} s  "
              f"{rate:6.2f} jobs/min  efficiency {efficiency:4.2f}  "
              f"one job {row['single']:6.1f} s ({row['single'] / baseline:4.2f}x)  "
              f"peak RSS one worker "
              f"{row['peak_worker']:6.0f} MiB, all workers {row['peak_workers']:6.0f} MiB")
    print(f"peak RSS of the submitting process {_peak_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
