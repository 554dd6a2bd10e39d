"""Smoke run of bench/ingest.py --small: storescu sends a small CT to storescp, Orthanc and the
node (one association, then four at once over four receiver processes); the node stores every
instance (the benchmark checks its spool) and a rate and ratio is printed for each target. The
benchmark itself times; this test only checks that it works."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.peers import ORTHANC

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest.py"


@pytest.mark.skipif(shutil.which("storescp") is None or not Path(ORTHANC).is_file(),
                    reason="needs DCMTK and Orthanc (scripts/setup.sh --system-tools)")
def test_bench_ingest_small_runs_and_stores_everything() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--small"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("20 slices of 512 x 512")
    rates = [line for line in lines if "MB/s" in line]
    assert len(rates) == 6 and all("peak RSS" in line for line in rates)
    assert sum("node / " in line for line in lines) == 4
