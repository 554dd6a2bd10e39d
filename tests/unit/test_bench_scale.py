"""Smoke run of bench/scale.py --small: two jobs on LocalClusters of one and two TCP worker
processes, each job's feature tasks on the cluster; it prints throughput, efficiency, the time of
one job (and its ratio to the job without Dask) and peak memory per cluster size (the benchmark
times; this test only checks that it works)."""

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"
ROW = re.compile(r"\s*(\d+) worker\(s\): 2 jobs +[\d.]+ s +([\d.]+) jobs/min +efficiency "
                 r"([\d.]+) +one job +[\d.]+ s \([\d.]+x\) +peak RSS one worker +(\d+) MiB, "
                 r"all workers +(\d+) MiB$")


def test_bench_scale_small_runs_on_one_and_two_workers() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--small"], capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2 jobs, 8 x 48 x 48 CT, two lesions each, preset ct-liver-basic"
    assert re.fullmatch(r"one job in this process, no Dask: [\d.]+ s", lines[1])
    rows = [ROW.match(line) for line in lines[2:4]]
    assert all(rows), lines
    assert [int(row.group(1)) for row in rows] == [1, 2]
    assert rows[0].group(3) == "1.00"  # the baseline of efficiency
    assert all(float(row.group(2)) > 0 and int(row.group(4)) > 0 for row in rows)
    assert int(rows[1].group(5)) > int(rows[1].group(4))  # two workers' peaks summed
    assert re.fullmatch(r"peak RSS of the submitting process \d+ MiB", lines[4])
