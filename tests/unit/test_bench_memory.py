"""Smoke run of bench/memory.py --small with the basic preset: a ten-lesion SEG on the synthetic
CT is processed in a worker process and the peak resident memory is printed (the benchmark
measures; this test checks that it works and that all ten lesions were measured)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "memory.py"


def test_bench_memory_small_processes_ten_lesions() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--small", "--preset", "ct-liver-basic"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = done.stdout.splitlines()[:2]
    assert first.startswith("ct-liver-basic: 40 x 128 x 128 CT, 10 lesions, 10 ROIs")
    assert second.startswith("peak resident memory node + worker:") and "MiB" in second
