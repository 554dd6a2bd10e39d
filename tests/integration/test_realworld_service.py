"""Every real-world case of ``../shared/refdata/realworld`` through the service, as a site runs it:
DCMTK storescu sends the case's image series and its segmentation (SEG or RTSTRUCT) to a node
started with one rule (the case's modality, the case's preset: a shipped name or a preset file)
whose destination is Debian's Orthanc.

The expectations are the table beside the data (``cases.tsv``, read here, not copied): a case
with ``refusal_ok`` '-' must be processed, and its SR, its summary image and its derived SEG
(when the job writes one) must arrive in Orthanc in the case's study, measuring the table's ROI
count. A refusal-ok case may be processed likewise, or be refused by the job (its failure
reason) or by the router (a segmentation that references no series): then the one-line reason,
in the node's JSON log and on its status page, names a file of the case (the spool file, named
by its SOP Instance UID) and matches the case's regex. A reason is never a traceback.
"""

from __future__ import annotations

import csv
import html
import io
import os
import re
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from node.state.audit import SEGMENTATION_NOT_PROCESSED
from tests.conftest import REFDATA
from tests.integration.peers import (
    NodeService,
    OrthancServer,
    node_service,
    orthanc,
    phi_leaks,
    require_tools,
)

pytestmark = pytest.mark.integration

CASES_TSV = REFDATA / "realworld" / "cases.tsv"

OUTCOMES = ("job done", "job failed", SEGMENTATION_NOT_PROCESSED,
            "segmentation without its source series")
"""Log events that end a case in the node: a job done or failed, a segmentation the router
refused, a source series that never came (``node.flow.retrieve``)."""

DEADLINE_S = 900.0
"""Seconds from the last instance sent to the case's outcome, and again to its deliveries (the
545-slice PET case and the 45 s extraction of tcia-sts001 on a shared two-core machine)."""


@dataclass(frozen=True)
class Case:
    """One row of cases.tsv: the case's folder, its preset (a shipped name, or a YAML path
    relative to the table's folder), the ROIs a correct run measures, and the regex a refusal
    must match (None: the case must be processed)."""

    case_dir: str
    preset: str
    rois: int
    refusal_ok: str | None


def _cases() -> list[Case]:
    """The rows of cases.tsv (comment lines start with #); none when the reference data is
    absent (the ``refdata`` fixture then skips, or fails in CI)."""
    if not CASES_TSV.is_file():
        return []
    lines = [line for line in CASES_TSV.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return [Case(row["case_dir"], row["preset"], int(row["rois"]),
                 None if row["refusal_ok"] == "-" else row["refusal_ok"])
            for row in csv.DictReader(lines, delimiter="\t")]


def _preset(case: Case, table_folder: Path) -> str:
    """The rule's preset: a shipped preset's name as it is, a file as its absolute path."""
    if case.preset.endswith((".yaml", ".yml")) or "/" in case.preset:
        return str((table_folder / case.preset).resolve())
    return case.preset


def _outcome(node: NodeService) -> dict:
    """The first log event of ``OUTCOMES``, waited for up to ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        ended = [e for e in node.events() if e["event"] in OUTCOMES]
        if ended:
            return ended[0]
        assert time.monotonic() < deadline, node.log_path.read_text()[-4000:]
        time.sleep(0.5)


def _deliveries(node: NodeService, job_id: int) -> list[sqlite3.Row]:
    """The outbox rows of ``job_id``, read from the node's index without writing to it."""
    db = sqlite3.connect(f"file:{node.state_dir / 'index.sqlite3'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM outbox WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
    finally:
        db.close()


def _in_orthanc(pacs: OrthancServer, sop_instance_uid: str) -> str | None:
    """Orthanc's id of the instance with ``sop_instance_uid`` (REST /tools/lookup), if stored."""
    found = pacs.http.post("/tools/lookup", content=sop_instance_uid).raise_for_status().json()
    return next((item["ID"] for item in found if item["Type"] == "Instance"), None)


def _check_results(case: Case, node: NodeService, pacs: OrthancServer, job_id: int,
                   study_uid: str) -> None:
    """Every object the job wrote arrives in Orthanc in the case's study; among them the SR and
    the summary image; the features measure the table's ROI count."""
    deadline = time.monotonic() + DEADLINE_S
    while not (rows := _deliveries(node, job_id)) or \
            any(row["state"] != "delivered" for row in rows):
        assert not any(row["state"] == "dead" for row in rows), [dict(r) for r in rows]
        assert time.monotonic() < deadline, node.log_path.read_text()[-4000:]
        time.sleep(0.5)
    classes = []
    for row in rows:
        orthanc_id = _in_orthanc(pacs, row["sop_instance_uid"])
        assert orthanc_id is not None, f"{row['path']} not in Orthanc"
        stored = pydicom.dcmread(io.BytesIO(pacs.http.get(
            f"/instances/{orthanc_id}/file").raise_for_status().content), stop_before_pixels=True)
        assert stored.StudyInstanceUID == study_uid, row["path"]
        classes.append(stored.SOPClassUID)
    assert Comprehensive3DSRStorage in classes and SecondaryCaptureImageStorage in classes
    with (node.state_dir / "results" / f"job-{job_id}" / "features.csv").open() as handle:
        segments = {row["segment_number"] for row in csv.DictReader(handle)}
    assert len(segments) == case.rois, sorted(segments)


def _check_refusal(case: Case, node: NodeService, outcome: dict, case_uids: set[str]) -> None:
    """The refusal is one line that names a file of the case and matches its regex, and the
    status page shows it."""
    reason = outcome.get("reason", "")
    assert case.refusal_ok is not None, f"{case.case_dir} must be processed; {outcome}"
    assert "\n" not in reason and "Traceback" not in reason, reason
    assert re.search(case.refusal_ok, reason), reason
    assert any(uid in reason for uid in case_uids), f"names no file of the case: {reason}"
    page = httpx.get(node.status_url + "/", timeout=30).raise_for_status().text
    assert reason in html.unescape(page)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.case_dir) for case in _cases()]
                         or [pytest.param(None, id="no-reference-data")])
def test_case_through_the_service(tmp_path: Path, refdata: Path, case: Case) -> None:
    require_tools("storescu")
    folder = refdata / "realworld" / case.case_dir
    images = sorted((folder / "image").iterdir())
    segmentations = sorted(p for kind in ("seg", "rtstruct") if (folder / kind).is_dir()
                           for p in (folder / kind).iterdir())
    assert images and len(segmentations) == 1, folder
    image = pydicom.dcmread(images[0], stop_before_pixels=True)
    case_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                 for p in [*images, *segmentations]}
    rule = {"name": "realworld", "preset": _preset(case, refdata / "realworld"),
            "modality": [str(image.Modality)]}
    with orthanc(tmp_path / "orthanc", {}) as pacs:
        destination = {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                       "port": pacs.dicom_port,
                       "verify": False}  # Orthanc answers C-FIND only to its DicomModalities
        with node_service(tmp_path / "node", {"rules": [rule],
                                              "destinations": [destination]}) as node:
            subprocess.run(
                ["storescu", "--required", "-aet", "SCANNER", "-aec", node.ae_title, "127.0.0.1",
                 str(node.port), *map(str, [*images, *segmentations])],
                check=True, capture_output=True, env={**os.environ, "TCP_NODELAY": "1"})
            outcome = _outcome(node)
            if outcome["event"] == "job done":
                _check_results(case, node, pacs, outcome["job_id"], str(image.StudyInstanceUID))
            else:
                _check_refusal(case, node, outcome, case_uids)
    # the case's own patient is in no log line either (logs carry UIDs, never identity)
    identity = [str(image.get(keyword) or "") for keyword in
                ("PatientName", "PatientID", "PatientBirthDate")]
    identity += [value.replace("^", " ") for value in identity]
    leaks = phi_leaks([node.log_path, node.log_path.parent / "stderr.log"],
                      sorted({value.strip() for value in identity if len(value.strip()) >= 3}))
    assert not leaks, "patient identity in node logs:\n" + "\n".join(leaks[:20])
