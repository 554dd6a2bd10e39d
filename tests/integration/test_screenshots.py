"""docs/screenshots.py end to end: every output object stored in one Orthanc study, the summary
image shown by Orthanc's Web Viewer in headless Chromium, the SR rendered by dsr2html."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

pytestmark = pytest.mark.integration

SCRIPT = REPO / "docs" / "screenshots.py"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")
BANNER_RGB = (0xC6, 0x28, 0x28)


def test_screenshots_show_the_summary_in_the_web_viewer(tmp_path: Path) -> None:
    if shutil.which("chromium") is None or not PLUGIN.is_file():
        message = ("needs chromium and orthanc-webviewer (scripts/setup.sh --system-tools "
                   "installs them)")
        if os.environ.get("CI"):  # CI sets up with scripts/test.sh: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    [study_line] = [line for line in done.stdout.splitlines() if line.startswith("Orthanc study")]
    # CT, input SEG, two reports, derived SEG, two parametric maps (OT), summary (OT): one study
    assert study_line.endswith("series ['CT', 'OT', 'OT', 'OT', 'SEG', 'SEG', 'SR', 'SR']")
    viewer = np.asarray(Image.open(tmp_path / "viewer-summary.png").convert("RGB")).astype(int)
    banner = np.all(np.abs(viewer - BANNER_RGB) <= 8, axis=-1).sum()
    assert banner > 1000, "the Web Viewer does not show the summary's banner"
    for name in ("sr-html.png", "sr-html-measurements.png"):
        page = np.asarray(Image.open(tmp_path / name).convert("L"))
        assert (page < 128).mean() > 0.01, f"{name} is blank"
