"""Smoke run of bench/extract.py --small: it runs both ways, finds equal values and prints the
speed-up and peak memory (the benchmark itself times; this test only checks that it works)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "extract.py"


def test_bench_extract_small_runs_and_finds_equal_values() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--small", "--workers", "2"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ct-liver-crlm: 3 lesions, 12 ROIs")
    assert any(line.startswith("speed-up") for line in lines)
    assert sum("peak" in line and "MiB" in line for line in lines) == 2
    [difference] = [line for line in lines if line.startswith("largest relative difference")]
    assert float(difference.split()[-1]) < 1e-6
