"""Benchmark: jobs per minute on a Dask cluster of 1, 2, 4, ... workers, and parallel efficiency.

N copies of the synthetic liver study (``pipelines.synthetic``, one per seed) are processed as the
node's Dask executor runs them (``node.executor.run_shipped_job``: the files travel as bytes, the
outputs come back as bytes) on a ``distributed.LocalCluster`` of W single-threaded worker
processes talking TCP, for each W given. Efficiency is throughput(W) / (W x throughput(1)). On
one machine the workers share its CPUs: efficiency falls once W exceeds the cores; across
machines, start ``dask worker`` on each (docs/performance.md).

    python bench/scale.py                         # 8 jobs of 60 x 512 x 512 on 1, 2, 4 workers
    python bench/scale.py --small                 # CI smoke run: 2 jobs of 12 x 64 x 64, 1 and 2
    python bench/scale.py --scheduler tcp://host:8786   # an existing cluster, as it is
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.executor import run_shipped_job
from pipelines.synthetic import write_synthetic_study


def run(client: distributed.Client, cases: list[tuple[list[bytes], bytes]], preset: str
        ) -> float:
    """Seconds to process every case on the cluster behind ``client``."""
    start = time.perf_counter()
    futures = [client.submit(run_shipped_job, images, seg, preset, pure=False)
               for images, seg in cases]
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    if not all(r.result.objects for r in results):
        raise RuntimeError("a job returned no result object")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 tiny jobs on 1 and 2 workers")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--preset", default="ct-liver-basic")
    parser.add_argument("--scheduler", help="use this cluster instead of local ones")
    args = parser.parse_args(argv)
    shape = (12, 64, 64) if args.small else (60, 512, 512)
    if args.small:
        args.jobs, args.workers = 2, [1, 2]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        cases = []
        for seed in range(args.jobs):
            study = write_synthetic_study(Path(tmp) / f"s{seed}", shape=shape, seed=seed)
            cases.append(([p.read_bytes() for p in study.ct_paths], study.seg_path.read_bytes()))
    print(f"{args.jobs} jobs, {shape[0]} x {shape[1]} x {shape[2]} CT, preset {args.preset}")
    timings: dict[int, float] = {}
    if args.scheduler:
        with distributed.Client(args.scheduler) as client:
            workers = len(client.scheduler_info()["workers"])
            timings[workers] = run(client, cases, args.preset)
    else:
        for workers in args.workers:
            with distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                          processes=True, dashboard_address=None,
                                          silence_logs=40) as cluster, \
                    distributed.Client(cluster) as client:
                run(client, cases[:1], args.preset)  # warm: imports in every worker it reached
                timings[workers] = run(client, cases, args.preset)
    base = min(timings)
    for workers, seconds in timings.items():
        rate = args.jobs / seconds * 60
        efficiency = (timings[base] * base) / (seconds * workers)
        print(f"{workers:3d} worker(s): {seconds:7.1f} s  {rate:6.2f} jobs/min  "
              f"efficiency {efficiency:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
