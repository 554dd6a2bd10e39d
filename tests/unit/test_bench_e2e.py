"""Smoke run of bench/e2e.py --smoke --warm: storescu sends a small warm-up study, then another
small study and its SEG to the node, which delivers its results to a real Orthanc; the time from
the last instance sent to the last result stored is printed with its split. The benchmark times;
this test checks that it runs, that every result reached Orthanc (the benchmark looks each one up
there) and that the spans it prints add up to the total."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.peers import ORTHANC

BENCH = Path(__file__).resolve().parents[2] / "bench" / "e2e.py"
SPANS = ["wait for stable", "routing", "queue", "worker hand-off", "read series", "read SEG",
         "preprocessing", "extraction", "QC and models", "encoding", "writing", "beside the maps",
         "delivery"]


def _seconds(lines: list[str], name: str) -> float:
    [line] = [line for line in lines if line.startswith(f"  {name} ")]
    return float(re.search(r"(-?\d+\.\d+) s", line).group(1))


@pytest.mark.skipif(shutil.which("storescu") is None or not Path(ORTHANC).is_file(),
                    reason="needs DCMTK and Orthanc (scripts/setup.sh --system-tools)")
def test_bench_e2e_smoke_delivers_to_orthanc_and_splits_the_time() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--warm", "--stable-after", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("12 x 64 x 64 CT + SEG (13 instances")
    total = float(re.search(r"last result stored in Orthanc: (\d+\.\d+) s", done.stdout).group(1))
    spans = [_seconds(lines, name) for name in SPANS]
    assert all(seconds >= 0 for seconds in spans), done.stdout
    assert _seconds(lines, "wait for stable") >= 1  # the configured stable_after at least
    assert sum(spans) == pytest.approx(total, abs=0.01)
    assert _seconds(lines, "sum of the spans") == pytest.approx(total, abs=0.002)
    assert "node overhead" in done.stdout and "% of the total" in done.stdout
    assert re.search(r"peak resident memory: node \+ worker processes \d+ MiB, "
                     r"Orthanc \d+ MiB", done.stdout)
    # --warm: the measured job is the second, so its worker was ready before it was claimed
    ready = re.search(r"job worker ready \(imports, highdicom's tables\) (-?\d+\.\d+) s before "
                      r"the job was claimed", done.stdout)
    assert ready and float(ready.group(1)) > 0, done.stdout
