"""Screenshots of the node's outputs as real software shows them, for docs/outputs.md.

1. A synthetic liver CT and its lesion SEG go through ``pipelines.process.job_plan`` with
   ct-liver-crlm and the demonstration model: the reading and the feature report (TID 1500), the
   derived SEG, the parametric maps and the summary Secondary Capture.
2. Debian's Orthanc with its Web Viewer plugin (package ``orthanc-webviewer``) runs on free
   loopback ports with its own storage; every object is stored by REST (POST /instances) and the
   study must hold them all.
3. Headless Chromium opens the Web Viewer on the summary series and saves a screenshot;
   DCMTK ``dsr2html`` renders the reading report as HTML and Chromium saves a screenshot of
   that.

    python docs/screenshots.py                   # writes docs/images/*.png
    python docs/screenshots.py --out /tmp/shots  # anywhere else

Needs Orthanc, the orthanc-webviewer plugin, chromium and dcmtk (``apt-get install orthanc
orthanc-webviewer chromium dcmtk``). Orthanc and Chromium are stopped by their process ids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import SecondaryCaptureImageStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.synthetic import write_synthetic_study
from models.shipped import DEMO_PACKAGE, DEMO_SHA256
from node.flow.executor import run_in_process
from pipelines.process import job_plan
from tests.conftest import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
WEB_VIEWER_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")
PRESET = "ct-liver-crlm"
SHAPE = (40, 256, 256)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def orthanc_with_web_viewer(workdir: Path) -> Iterator[httpx.Client]:
    """Orthanc with the Web Viewer plugin on free loopback ports; yields its REST client."""
    http_port = free_port()
    config = {
        "Name": "radiomics-node-screenshots",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomPort": free_port(),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(WEB_VIEWER_PLUGIN)],
        "WebViewer": {"CachePath": str(workdir / "web-viewer-cache")},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    with (workdir / "orthanc.log").open("w") as log:
        process = subprocess.Popen([ORTHANC, str(workdir / "orthanc.json")], stdout=log,
                                   stderr=subprocess.STDOUT)
        client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"Orthanc exited: {(workdir / 'orthanc.log').read_text()}")
                try:
                    if client.get("/system").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not answer within 60 s")
                time.sleep(0.2)
            plugins = client.get("/plugins").raise_for_status().json()
            if "web-viewer" not in plugins:
                raise RuntimeError(f"{WEB_VIEWER_PLUGIN}: not loaded by Orthanc ({plugins})")
            yield client
        finally:
            client.close()
            _stop(process)


def screenshot(url: str, target: Path, workdir: Path, size: tuple[int, int] = (1280, 1000),
               budget_ms: int = 10000) -> None:
    """Headless Chromium's screenshot of ``url`` into ``target`` (PNG)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("chromium not on PATH: apt-get install chromium")
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=workdir))
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
               "--hide-scrollbars", f"--screenshot={target}", url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise RuntimeError(f"chromium did not finish the screenshot of {url} in 120 s") from None
    if process.returncode != 0 or not target.is_file():
        raise RuntimeError(f"chromium failed on {url}: {output.decode(errors='replace')[-2000:]}")


def _scrolled_to_measurements(html: Path) -> Path:
    """A page showing ``html`` from its "Imaging Measurements" heading: the heading gets an id
    (nothing else of dsr2html's rendering changes) and an iframe opens the page at that fragment
    (headless Chromium paints nothing when the top-level page itself is scrolled to a fragment).
    """
    text = html.read_text(encoding="utf-8", errors="replace")
    heading = "<h2>Imaging Measurements</h2>"
    if heading not in text:
        raise RuntimeError(f"{html}: no {heading!r} in dsr2html's output")
    html.write_text(text.replace(heading, '<h2 id="measurements">Imaging Measurements</h2>'),
                    encoding="utf-8")
    wrapper = html.with_name("sr-measurements.html")
    wrapper.write_text('<!DOCTYPE html><html><body style="margin:0"><iframe src="'
                       f'{html.name}#measurements" style="width:1280px;height:1000px;border:0">'
                       "</iframe></body></html>", encoding="utf-8")
    return wrapper


def build_objects(workdir: Path) -> tuple[list[Path], Path, Path]:
    """(every file to store, the reading report, the summary SC) for the synthetic study: the CT,
    its SEG and the objects its job plan writes, with the shipped demonstration model pinned."""
    study = write_synthetic_study(workdir / "study", shape=SHAPE)
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, PRESET, workdir / "result",
                                     models=[(DEMO_PACKAGE, DEMO_SHA256)]))
    [summary] = [o.path for o in result.objects
                 if o.sop_class_uid == SecondaryCaptureImageStorage]
    return ([*study.ct_paths, study.seg_path, *(o.path for o in result.objects)],
            result.reading_report.path, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="radiomics-screenshots-") as folder:
        workdir = Path(folder)
        files, sr_path, summary_path = build_objects(workdir)
        summary_series = pydicom.dcmread(summary_path, stop_before_pixels=True).SeriesInstanceUID
        with orthanc_with_web_viewer(workdir / "orthanc") as orthanc:
            for path in files:
                orthanc.post("/instances", content=path.read_bytes()).raise_for_status()
            [study_id] = orthanc.get("/studies").raise_for_status().json()
            series = orthanc.get(f"/studies/{study_id}/series").raise_for_status().json()
            modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
            print(f"Orthanc study {study_id}: series {modalities}")
            [sc_id] = [s["ID"] for s in series
                       if s["MainDicomTags"]["SeriesInstanceUID"] == summary_series]
            base = str(orthanc.base_url).rstrip("/")
            viewer = f"{base}/web-viewer/app/viewer.html?series={sc_id}"
            screenshot(viewer, args.out / "viewer-summary.png", workdir)
        html = workdir / "sr.html"
        subprocess.run(["dsr2html", str(sr_path), str(html)], check=True, capture_output=True)
        screenshot(html.as_uri(), args.out / "sr-html.png", workdir, size=(1280, 1000),
                   budget_ms=2000)
        screenshot(_scrolled_to_measurements(html).as_uri(),
                   args.out / "sr-html-measurements.png", workdir, size=(1280, 1000),
                   budget_ms=2000)
    print(f"wrote viewer-summary.png, sr-html.png and sr-html-measurements.png in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
