"""The node's result objects as OHIF Viewer 3.13.2 shows them (issue 17, item 4).

The synthetic demo study goes through ``job_plan`` (ct-liver-crlm, the shipped model); its
CT, its lesion SEG and every result object are stored in Debian's Orthanc with the DICOMweb
plugin; OHIF's prebuilt bundle (npm ``@ohif/app``, installed by scripts/ohif.sh) is served with
a same-origin proxy to Orthanc's ``/dicom-web/`` and driven in headless system Chromium by
Playwright (tests/integration/ohif.py). Each object is opened as a reader would, by
double-clicking its thumbnail, and the tests compare what OHIF holds in the page (its display
sets, measurements, segmentations, volumes and images) with the DICOM objects themselves:

- the reading report: every measurement group is one OHIF measurement with the group's values
  as OHIF formats them; a group with an outline is placed on the image its SCOORD is SELECTED
  FROM and drawn at the outline's points;
- the derived SEG: every segment is overlaid with the SEG's voxels, its centroid within 3 mm
  of the SEG's;
- each parametric map: an overlay volume whose values at sampled voxels are the map's;
- the summary Secondary Capture: shown, with its pixels;
- no console error or page error about these objects.

The browser session runs once per test session (with pytest-xdist: once, whichever worker
comes first; the others read its record), and its timings are printed: OHIF's time to open the
reading report is measured from the navigation to the study until every outlined measurement is
placed. Nothing here asserts a time.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import traceback
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.integration import ohif
from tests.integration.peers import ORTHANC

pytestmark = pytest.mark.integration

SEG_CENTROID_TOLERANCE_MM = 3.0
"""Issue 17: every derived SEG segment overlaid within 3 mm of its DICOM position."""

OUTLINE_TOLERANCE = 1e-3
"""Pixels (SCOORD Graphic Data as OHIF read it) and mm (the drawn points in patient
coordinates): the same numbers through DICOMweb JSON and float arithmetic."""

OHIF_PMAP_SCALE = 100.0
"""OHIF 3.13.2 multiplies every value of a parametric map by 100 when it makes the overlay
volume (extensions/cornerstone-dicom-pmap ``_loadParametricMap``, 9415.bundle.*.js: "The values
are multiplied by 100 in the viewport for better visibility", it tells the reader)."""

UNRELATED_ERRORS: tuple[tuple[str, str], ...] = (
    (r"favicon\.ico", "the browser's icon request: no DICOM object involved"),
    (r"[Ss]ervice ?[Ww]orker", "OHIF's offline cache; service workers are blocked in the test"),
    (r"ResizeObserver loop", "a layout notice of the browser, about no data"),
)
"""Console errors that cannot concern the node's objects, by their text, and why. Every other
console error or page error counts, including OHIF's route error boundary, which it logs with
console.debug ("Route viewer Error Boundary ...")."""


# --- the run -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """The demo outputs and what OHIF showed of them (``ohif.view_demo_outputs``)."""

    outputs: ohif.DemoOutputs
    observed: dict[str, Any]
    shots: Path


def _record(shared: Path) -> dict[str, Any]:
    """Make the outputs and view them in OHIF, once: the record of the run (or its error)."""
    try:
        outputs = ohif.make_demo_outputs(shared / "demo")
        observed = ohif.view_demo_outputs(outputs, shared / "peers", shared / "shots")
    except Exception:  # recorded: every test of the module reports it
        return {"error": traceback.format_exc()}
    return {"outputs": {k: (str(v) if isinstance(v, Path) else
                            [str(p) for p in v] if isinstance(v, list) else v)
                        for k, v in vars(outputs).items()},
            "observed": observed}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The session's one OHIF run; skipped without the tools (a failure under ``CI``)."""
    missing = ohif.missing_tools() + ([] if Path(ORTHANC).is_file() else ["Orthanc"])
    if missing:
        message = (f"needs {missing}: scripts/setup.sh --system-tools installs them (OHIF's "
                   "bundle: scripts/ohif.sh)")
        if os.environ.get("CI"):  # CI sets up with scripts/test.sh: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the session's workers
    shared = base / "ohif"
    shared.mkdir(exist_ok=True)
    with (shared / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record_path = shared / "run.json"
        if not record_path.exists():
            record_path.write_text(json.dumps(_record(shared), indent=1, default=str))
        record = json.loads(record_path.read_text())
    if "error" in record:
        pytest.fail(f"the OHIF run failed:\n{record['error']}")
    fields = record["outputs"]
    outputs = ohif.DemoOutputs(
        ct=[Path(p) for p in fields["ct"]], input_seg=Path(fields["input_seg"]),
        report=Path(fields["report"]), other_reports=[Path(p) for p in fields["other_reports"]],
        seg=Path(fields["seg"]), maps=[Path(p) for p in fields["maps"]],
        summary=Path(fields["summary"]), seconds=fields["seconds"])
    observed = record["observed"]
    timings = ", ".join(f"{k} {v:.1f}" for k, v in observed["timings"].items())
    print(f"\nOHIF {ohif.OHIF_VERSION} (seconds): {timings}; job_plan "
          f"{outputs.seconds:.1f} s; DICOMweb {observed['proxied']['requests']} requests, "
          f"{observed['proxied']['bytes'] / 1e6:.2f} MB; scrolled before painting: "
          f"{observed['nudged'] or 'none'}; screenshots in {shared / 'shots'}")
    return Run(outputs, observed, shared / "shots")


def _step(run: Run, name: str, value: Any, hint: str = "") -> Any:
    """``value`` (what OHIF held at the end of step ``name``), or fail with why it is not
    (and ``hint``, what in our object explains it)."""
    failure = run.observed["failures"].get(name)
    if value is None or failure:
        errors = "\n".join(_describe(e) for e in _errors(run.observed["console"])[:10])
        pytest.fail(f"OHIF did not show {name}: {failure or 'nothing read'}\n{hint}"
                    f"console errors:\n{errors or 'none'}")
    return value


def _describe(entry: dict[str, str]) -> str:
    return f"[{entry['type']}] {entry['text'][:600]}"


def _adds_colour(run: Run, name: str) -> None:
    """The viewport's screenshot after step ``name`` has colour drawn over the grey CT."""
    start = ohif.coloured_pixels(run.observed["shots"]["start"])
    shown = ohif.coloured_pixels(run.shots / f"{name}-viewport.png")
    assert shown >= start + ohif.DRAWN_PIXELS, (
        f"{name}: the viewport has {shown} coloured pixels, the CT alone {start}: nothing "
        f"drawn over the image ({run.shots / f'{name}-viewport.png'})")


# --- expected values, from the DICOM objects ----------------------------------------------

def _code(item: Any, attribute: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = getattr(item, attribute)[0]
    return code.CodingSchemeDesignator, code.CodeValue


def js_fixed2(value: float) -> str:
    """JavaScript's ``Number(value).toFixed(2)``: the exact binary value rounded half away
    from zero (ECMA-262 Number.prototype.toFixed), as OHIF formats a NUM."""
    return str(Decimal(float(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def ohif_label(num: Any) -> dict[str, str]:
    """OHIF's label of a NUM content item (cornerstone-dicom-sr
    ``_getLabelFromMeasuredValueSequence``): the concept's meaning, the value with two
    decimals (an empty string for 0, as JavaScript's falsy test gives) and the unit's code."""
    measured = num.MeasuredValueSequence[0]
    value = float(measured.NumericValue)
    shown = js_fixed2(value) if value else ""
    unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
    return {"label": num.ConceptNameCodeSequence[0].CodeMeaning, "value": f"{shown} {unit}"}


@dataclass
class ExpectedMeasurement:
    """One OHIF measurement as the SR defines it: OHIF merges the measurement groups that share
    a Tracking Unique Identifier (``_getMergedContentSequencesByTrackingUniqueIdentifiers``)."""

    tracking_uid: str
    tracking_id: str
    labels: list[dict[str, str]]
    outline: dict[str, Any] | None  # graphic type, data, SELECTED FROM sop and frame


def expected_measurements(report: Path) -> list[ExpectedMeasurement]:
    """Every measurement group of the TID 1500 report, merged by tracking UID, in order."""
    dataset = pydicom.dcmread(report)
    [measurements] = [i for i in dataset.ContentSequence if _code(i) == ("DCM", "126010")]
    merged: dict[str, ExpectedMeasurement] = {}
    for group in measurements.ContentSequence:
        if _code(group) != ("DCM", "125007"):
            continue
        items = list(group.ContentSequence)
        [uid] = [i.UID for i in items if _code(i) == ("DCM", "112040")]
        tracking_id = next((i.TextValue for i in items if _code(i) == ("DCM", "112039")), "")
        entry = merged.setdefault(uid, ExpectedMeasurement(uid, tracking_id, [], None))
        for item in items:
            if item.ValueType == "NUM" and item.get("MeasuredValueSequence"):
                entry.labels.append(ohif_label(item))
            elif item.ValueType == "SCOORD" and entry.outline is None:
                [selected] = [c for c in item.ContentSequence
                              if c.RelationshipType == "SELECTED FROM"]
                reference = selected.ReferencedSOPSequence[0]
                entry.outline = {
                    "graphic_type": item.GraphicType,
                    "data": [float(x) for x in item.GraphicData],
                    "sop": reference.ReferencedSOPInstanceUID,
                    "frame": int(reference.get("ReferencedFrameNumber") or 1)}
    return list(merged.values())


def image_to_patient(ct: pydicom.Dataset, points: np.ndarray) -> np.ndarray:
    """Patient coordinates (mm) of SCOORD image points (column, row) on the CT slice ``ct``:
    (0, 0) is the top left corner of the top left pixel, whose centre is Image Position
    (Patient) (PS3.3 C.18.6.1.1 and C.7.6.2.1.1)."""
    orientation = np.array(ct.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(s) for s in ct.PixelSpacing)
    origin = np.array(ct.ImagePositionPatient, float)
    return (origin + np.outer(points[:, 0] - 0.5, orientation[:3] * column_spacing)
            + np.outer(points[:, 1] - 0.5, orientation[3:] * row_spacing))


# --- the tests -----------------------------------------------------------------------------

def test_reading_report_groups_are_placed_on_their_slices_with_their_values(run: Run) -> None:
    expected = expected_measurements(run.outputs.report)
    unplaceable = [m.tracking_id for m in expected if m.outline is None]
    hint = (f"{len(unplaceable)} measurement groups have no image region (SCOORD): "
            f"{unplaceable}; OHIF 3.13.2 reads coords[0] of every measurement it has not placed "
            "(_checkIfCanAddMeasurementsToDisplaySet, 7248.bundle.*.js) and throws on a group "
            "without one, which stops its viewer route.\n" if unplaceable else "")
    state = _step(run, "sr", run.observed["sr"], hint)
    assert any(m.outline for m in expected), (
        f"{run.outputs.report.name}: no measurement group has an image region (SCOORD), so no "
        "viewer can place one")
    shown = {m["tracking_uid"]: m for m in state["measurements"]}
    assert sorted(shown) == sorted(m.tracking_uid for m in expected), (
        "OHIF's measurements are not the report's measurement groups: "
        f"{sorted(m['tracking_id'] for m in state['measurements'])} vs "
        f"{sorted(m.tracking_id for m in expected)}")
    annotations = {a["uid"]: a for a in state["annotations"]}
    ct = {d.SOPInstanceUID: d for d in (pydicom.dcmread(p, stop_before_pixels=True)
                                        for p in run.outputs.ct)}
    problems = []
    for want in expected:
        got = shown[want.tracking_uid]
        name = want.tracking_id
        # OHIF lists a group's NUMs first, in order, then its finding site
        if got["labels"][:len(want.labels)] != want.labels:
            problems.append(f"{name}: labels {got['labels']}, the SR's NUMs {want.labels}")
        if want.outline is None:
            continue
        outline = want.outline
        if not got["loaded"] or got["sop"] != outline["sop"]:
            problems.append(f"{name}: placed on {got['sop']} (loaded {got['loaded']}), the "
                            f"SCOORD is SELECTED FROM {outline['sop']}")
            continue
        if (got["frame"] or 1) != outline["frame"]:
            problems.append(f"{name}: frame {got['frame']}, SELECTED FROM {outline['frame']}")
        [coords] = got["coords"][:1]
        if (coords["graphic_type"] != outline["graphic_type"]
                or len(coords["data"]) != len(outline["data"])
                or not np.allclose(coords["data"], outline["data"], atol=OUTLINE_TOLERANCE)):
            problems.append(f"{name}: OHIF's outline {coords['graphic_type']} "
                            f"{coords['data'][:6]}..., the SR's {outline['graphic_type']} "
                            f"{outline['data'][:6]}...")
        annotation = annotations.get(want.tracking_uid)
        if annotation is None or f"/instances/{outline['sop']}/" not in (
                annotation["image_id"] or ""):
            problems.append(f"{name}: not drawn on {outline['sop']} "
                            f"({annotation and annotation['image_id']})")
            continue
        points = np.array(outline["data"], float).reshape(-1, 2)
        world = image_to_patient(ct[outline["sop"]], points)
        drawn = np.array(annotation["points"], float)
        if drawn.shape != world.shape or not np.allclose(drawn, world, atol=OUTLINE_TOLERANCE):
            problems.append(f"{name}: drawn at {drawn[:2].tolist()}..., the outline is at "
                            f"{world[:2].tolist()}... (patient mm)")
    assert not problems, "\n".join(problems)
    _adds_colour(run, "sr")
    outlined = sum(1 for m in expected if m.outline)
    opened = _step(run, "sr from navigation",
                   run.observed["timings"].get("sr from navigation"), hint)
    print(f"reading report: {len(expected)} measurements ({outlined} outlined, placed and "
          f"drawn), {sum(len(m.labels) for m in expected)} values; open in {opened:.1f} s from "
          "the navigation")


def test_derived_seg_segments_are_overlaid_at_their_dicom_positions(run: Run) -> None:
    import highdicom as hd

    state = _step(run, "seg", run.observed["seg"])
    seg = hd.seg.segread(run.outputs.seg)
    volume = seg.get_volume(combine_segments=False)
    shown = {s["index"]: s for s in state["segments"]}
    assert sorted(shown) == list(seg.segment_numbers), (
        f"OHIF's segments {sorted(shown)}, the SEG's {list(seg.segment_numbers)}")
    assert state["shown_in_viewport"], "the segmentation is not a representation of the viewport"
    problems = []
    for position, number in enumerate(seg.segment_numbers):
        label = seg.get_segment_description(number).SegmentLabel
        voxels = np.argwhere(volume.array[..., position])
        centre = (volume.affine @ np.r_[voxels.mean(axis=0), 1.0])[:3]
        got = shown[number]
        if got["label"] != label:
            problems.append(f"segment {number}: OHIF's label {got['label']!r}, SEG's {label!r}")
        if got["voxels"] != len(voxels):
            problems.append(f"{label}: {got['voxels']} voxels in OHIF's labelmap, "
                            f"{len(voxels)} in the SEG")
        if got["centroid"] is None:
            problems.append(f"{label}: not in OHIF's labelmap")
            continue
        distance = math.dist(got["centroid"], centre)
        if distance > SEG_CENTROID_TOLERANCE_MM:
            problems.append(f"{label}: overlaid {distance:.2f} mm from its DICOM position")
    assert not problems, "\n".join(problems)
    _adds_colour(run, "seg")
    worst = max(math.dist(shown[n]["centroid"],
                          (volume.affine @ np.r_[np.argwhere(volume.array[..., i]).mean(0),
                                                 1.0])[:3])
                for i, n in enumerate(seg.segment_numbers))
    print(f"derived SEG: {len(shown)} segments overlaid, voxel counts equal, centroids within "
          f"{worst:.3f} mm; shown {run.observed['timings']['seg']:.1f} s after the double-click")


def test_each_parametric_map_is_an_overlay_with_the_maps_values(run: Run) -> None:
    objects = run.observed["objects"]
    assert len(objects["map_series"]) == len(run.outputs.maps) >= 1
    lines = []
    for number, path in enumerate(run.outputs.maps, 1):
        dataset = pydicom.dcmread(path)
        state = _step(run, f"map-{number}", run.observed["maps"][dataset.SeriesInstanceUID])
        assert state["in_viewport"], f"{path.name}: not an overlay of the viewport"
        values = dataset.pixel_array.reshape(-1, dataset.Rows, dataset.Columns)
        padding = dataset.get("FloatPixelPaddingValue")
        voxels = run.observed["map_voxels"][dataset.SeriesInstanceUID]
        mismatches, padded = [], 0
        for (frame, row, column), sample in zip(voxels, state["samples"], strict=True):
            stored = values[frame, row, column]
            padded += padding is not None and stored == padding
            # OHIF's Float32Array of stored * 100, computed in double precision
            want = float(np.float32(float(stored) * OHIF_PMAP_SCALE))
            if sample["value"] != want:
                mismatches.append(f"voxel (frame {frame}, row {row}, column {column}) at OHIF "
                                  f"index {sample['ijk']}: OHIF {sample['value']}, the map "
                                  f"{float(stored)!r} (x{OHIF_PMAP_SCALE:g} = {want!r})")
        assert not mismatches, f"{path.name}:\n" + "\n".join(mismatches)
        assert padding is None or padded >= 1, f"{path.name}: no padding voxel was sampled"
        _adds_colour(run, f"map-{number}")
        lines.append(f"{dataset.SeriesDescription}: {len(voxels)} voxels equal "
                     f"({len(voxels) - padded} mapped, {padded} padding); shown "
                     f"{run.observed['timings'][f'map-{number}']:.1f} s after the double-click")
    print("parametric maps: " + "; ".join(lines))


def test_summary_secondary_capture_is_shown(run: Run) -> None:
    state = _step(run, "summary", run.observed["summary"])
    dataset = pydicom.dcmread(run.outputs.summary)
    pixels = dataset.pixel_array.reshape(dataset.Rows, dataset.Columns, -1)
    assert (state["rows"], state["columns"]) == (dataset.Rows, dataset.Columns)
    want = [pixels[r, c].tolist() for r, c in run.observed["summary_pixels"]]
    assert state["samples"] == want, "OHIF's image is not the summary's pixels"
    # rendered: the summary's most frequent saturated colour (its banner) is on the screen
    flat = pixels.reshape(-1, pixels.shape[-1]).astype(int)
    saturated = flat[(flat.max(1) - flat.min(1)) > 100]
    assert len(saturated), "the summary has no coloured pixel to look for"
    colours, counts = np.unique(saturated, axis=0, return_counts=True)
    colour = colours[counts.argmax()]
    screen = np.asarray(Image.open(run.shots / "summary-viewport.png").convert("RGB")).astype(int)
    found = int((np.abs(screen - colour).max(-1) <= 12).sum())
    assert found > 500, f"the summary's colour {colour.tolist()} is on {found} screen pixels"
    print(f"summary: {len(want)} pixels equal, shown "
          f"{run.observed['timings']['summary']:.1f} s after the double-click")


def _errors(console: list[dict[str, str]]) -> list[dict[str, str]]:
    """Console errors, page errors and OHIF's route error boundary (logged with debug)."""
    return [e for e in console if ohif.ConsoleEntry(**e).is_error]


def test_no_console_error_about_the_nodes_objects(run: Run) -> None:
    console = run.observed["console"]
    errors = _errors(console)
    unrelated = [(e, reason) for e in errors for pattern, reason in UNRELATED_ERRORS
                 if re.search(pattern, e["text"])]
    about_ours = [e for e in errors if e not in [u for u, _ in unrelated]]
    failed = run.observed["proxied"]["failed"]
    warnings = [e for e in console if e["type"] == "warning"]
    print(f"console: {len(console)} messages, {len(warnings)} warnings, {len(errors)} errors "
          f"({len(unrelated)} unrelated: " + "; ".join(
              f"{_describe(e)[:120]} ({reason})" for e, reason in unrelated) + ")")
    assert not failed, f"DICOMweb requests that failed: {failed}"
    assert not about_ours, "console errors:\n" + "\n".join(_describe(e) for e in about_ours)
