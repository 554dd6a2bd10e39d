"""The status page in headless Chromium: it renders (a 1280 x 900 screenshot that is not blank,
with the table header colour of the page's style sheet). Skipped where Chromium is not installed
(``scripts/setup.sh --system-tools`` installs it). With ``RADIOMICS_NODE_UPDATE_SCREENSHOT=1``
the screenshot replaces ``docs/images/status-page.png``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from node.config import NodeConfig
from node.service import Node
from node.state import Index
from node.state.instances import InstanceRow
from tests.conftest import REPO, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADER_GREY = (0xE4, 0xE7, 0xEB)  # "th { background: #e4e7eb }" in node.ops.status.STYLE


def _populate(index: Index) -> None:
    """Three studies from two senders; jobs done, running, queued and failed (one by QC); one
    dead-lettered delivery."""
    base = "1.2.826.0.1.3680043.8.498.7"
    now = time.time()
    for s, (ae, host) in enumerate([("CT_SCANNER", "10.1.2.3"), ("ORTHANC", "10.1.2.10"),
                                    ("CT_SCANNER", "10.1.2.3")]):
        study, ct, seg = f"{base}.{s}", f"{base}.{s}.1", f"{base}.{s}.2"
        for i in range(60):
            index.instances.add(InstanceRow(f"{ct}.{i}", "1.2.840.10008.5.1.4.1.1.2", study, ct,
                                           f"/spool/{s}/{i}.dcm", 526_000, ae, host), "CT",
                               now=now - 3600 * (3 - s) + i)
        index.instances.add(InstanceRow(f"{seg}.1", "1.2.840.10008.5.1.4.1.1.66.4", study, seg,
                                       f"/spool/{s}/seg.dcm", 90_000, ae, host), "SEG",
                           now=now - 3600 * (3 - s) + 70)
        index.jobs.add(ct, f"{seg}.1", "ct-liver", "ct-liver-crlm", f"d{s}")
    index.instances.mark_stable(now - 3600, now=now - 3590)
    first = index.jobs.claim()
    index.jobs.finish(first.id, [("pacs", "/results/job-1/sr.dcm", f"{base}.90.1")],
                     preset_hash="9f3c1a7e52d0", models={"crlm-recurrence": "1.0.0"})
    index.outbox.mark_verified(index.outbox.all(first.id)[0]["id"], "c-find")
    second = index.jobs.claim()
    index.jobs.finish(second.id, [("pacs", "/results/job-2/sr.dcm", f"{base}.91.1")],
                     preset_hash="9f3c1a7e52d0", models={"crlm-recurrence": "1.0.0"})
    index.outbox.mark_attempt_failed(index.outbox.all(second.id)[0]["id"],
                              "C-STORE at PACS@10.1.2.10:104: association refused", retry_at=None)
    third = index.jobs.claim()
    index.jobs.fail(third.id, "QC failed: (0018,0050) SliceThickness 7.5 mm above 5 mm")
    index.jobs.add(f"{base}.2.1", f"{base}.2.2.1", "ct-liver", "ct-liver-basic", "d9")
    index.jobs.claim()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node whose scheduler ticks do not run during the test (an hour apart): its job runner
    would otherwise claim the jobs ``_populate`` claims itself."""
    running = Node(NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                              status={"port": 0}, scan_interval=3600))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(scripts/setup.sh --system-tools installs it)")
def test_status_page_in_headless_chromium(node: Node, tmp_path: Path) -> None:
    _populate(node.index)
    host, port = node.status_address
    shot = tmp_path / "status-page.png"
    run = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,900", f"http://{host}:{port}/"],
        capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text and tables, not a blank page
    assert any(colour == HEADER_GREY for _, colour in colours)  # the page's own style sheet
    if os.environ.get("RADIOMICS_NODE_UPDATE_SCREENSHOT") == "1":
        target = REPO / "docs" / "images" / "status-page.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
