"""``radiomics-node demo``: the whole path on one machine, with embedded defaults.

Writes a synthetic abdominal CT with two liver lesions and their DICOM SEG (``--study
multiphase``: arterial, portal venous and delayed CT of one study, moved against each other as a
patient breathes, and one SEG on the portal venous series, measured by a study rule), starts a node
(SQLite index, local spool) whose only destination is itself, with the colorectal-liver-metastasis
preset and the shipped demonstration model pinned, sends the study to it with a real C-STORE
client, waits until the node has received all its result objects back, prints the main numbers and
the model's output from the TID 1500 report and copies the objects to the output folder.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pydicom
from pydicom.uid import Comprehensive3DSRStorage

from demo.study import write_multiphase_ct
from demo.synthetic import write_synthetic_study
from models.shipped import DEMO_PACKAGE, DEMO_SHA256
from node import logs
from node.config import Destination, ModelRef, Peer, SeriesRule, StudyRule, load_config
from node.dicom.store_scu import c_store
from node.service import Node
from node.state.instances import InstanceRow
from pipelines.outputs.codes import feature_concept
from pipelines.outputs.report_parts import measurement_groups

COLUMNS: tuple[tuple[str, str], ...] = (
    ("original_shape_MeshVolume", "Volume mm3"),
    ("original_shape_Maximum3DDiameter", "Max diam mm"),
    ("original_firstorder_Mean", "Mean HU"),
    ("original_firstorder_Entropy", "Entropy"),
    ("original_glcm_Contrast", "GLCM contrast"),
    ("original_glszm_ZoneEntropy", "GLSZM zone entropy"),
)
"""The features the demo prints: key as pyradiomics names it, column heading."""


def report_table(sr_path: Path, modality: str = "CT") -> list[list[str]]:
    """Rows (ROI label, with its series' role in a study job, then one value per COLUMNS entry)
    read back from the feature report (``pipelines.outputs.feature_report``): its groups of one
    ROI, one per image filter, make one row, each value the first of its concept, which is the
    original image's (its group comes first); the groups of a change since a prior study (TID
    1502 Time Point) are left out. Read with pydicom: highdicom's parser checks every item of
    the tens of thousands of a study job's report."""
    codes = {feature_concept(key, modality).name.value: i for i, (key, _) in enumerate(COLUMNS)}
    rows: dict[str, list[str]] = {}
    for group in measurement_groups(pydicom.dcmread(sr_path)):
        texts = {item.ConceptNameCodeSequence[0].CodeMeaning: str(item.TextValue)
                 for item in group.ContentSequence if item.ValueType == "TEXT"}
        if "Time Point" in texts:
            continue
        session = texts.get("Activity Session")
        label = texts["Tracking Identifier"] + (f" ({session})" if session else "")
        values = rows.setdefault(label, ["-"] * len(COLUMNS))
        for item in group.ContentSequence:
            concept = item.ConceptNameCodeSequence[0]
            column = codes.get(concept.get("CodeValue") or concept.get("LongCodeValue")) \
                if item.ValueType == "NUM" else None
            if column is not None and values[column] == "-":
                values[column] = f"{float(item.MeasuredValueSequence[0].NumericValue):.4g}"
    return [[label, *values] for label, values in rows.items()]


def _print_table(rows: list[list[str]]) -> None:
    header = ["Lesion", *(heading for _, heading in COLUMNS)]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, [("-" * w) for w in widths], *rows]:
        print("  ".join(str(cell).rjust(w) if i else str(cell).ljust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))))


def _wait_for_results(node: Node, timeout: float) -> list[InstanceRow]:
    """Poll the index until the job is done and every result object it made has come back to
    the node; their index rows (the SR first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = node.index.jobs.all("failed")
        if failed:
            raise RuntimeError(f"job {failed[0].id} failed: {failed[0].reason}")
        deliveries = node.index.outbox.all()
        dead = [d for d in deliveries if d["state"] == "dead"]
        if dead:
            raise RuntimeError(f"delivery dead-lettered: {dead[0]['last_error']}")
        rows = [node.index.instances.get(d["sop_instance_uid"]) for d in deliveries]
        if node.index.jobs.all("done") and deliveries and all(
                d["state"] == "delivered" for d in deliveries) and all(rows):
            return sorted(rows, key=lambda r: r.sop_class_uid != Comprehensive3DSRStorage)
        time.sleep(0.2)
    raise TimeoutError(f"no report after {timeout:.0f} s")


def model_lines(sr_path: Path) -> list[str]:
    """The model output of each lesion, as the report states it (pipelines.outputs.evaluations)."""
    lines = []
    [measurements] = [item for item in pydicom.dcmread(sr_path).ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    for group in measurements.ContentSequence:
        items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in group.ContentSequence}
        if "model.identity" not in items:
            continue
        label = items["112039"].TextValue
        if "model.prob" in items:
            probability = float(items["model.prob"].MeasuredValueSequence[0].NumericValue)
            meaning = items["model.prob"].ConceptNameCodeSequence[0].CodeMeaning
            lines.append(f"{label}: {meaning} {probability:.2f}, "
                         f"{items['model.category'].TextValue}")
        else:
            lines.append(f"{label}: {items['model.notapplied'].TextValue}")
        if "model.disclaimer" in items:
            lines.append(f"  {items['model.disclaimer'].TextValue}")
    return lines


def _rules(study: str, preset: str) -> dict[str, list[SeriesRule] | list[StudyRule]]:
    """The demo's routing: a rule for the one CT, or a study rule of the three phases."""
    if study == "liver":
        return {"rules": [SeriesRule(name="demo", preset=preset, modality=["CT"])],
                "study_rules": []}
    return {"rules": [], "study_rules": [StudyRule.model_validate({
        "name": "demo-phases", "preset": preset, "segmented_on": ["portal_venous"],
        "roles": {"portal_venous": {"series_description": r"\bPV\b"},
                  "arterial": {"series_description": "ARTERIAL"},
                  "delayed": {"series_description": "DELAYED", "required": False}}})]}


def run_demo(config_path: Path | None, workdir: Path, out_dir: Path, port: int | None,
             timeout: float, preset: str = "ct-liver-crlm", study: str = "liver") -> int:
    """Run the demo on the ``study`` (``liver`` or ``multiphase``); returns the process exit
    code."""
    config = load_config(config_path)
    listener = config.listener.model_copy(update={"port": port or config.listener.port})
    state_dir = workdir / "state"
    shutil.rmtree(state_dir, ignore_errors=True)  # a fresh node, so the study is new to it
    config = config.model_copy(update={
        "state_dir": state_dir,
        **_rules(study, preset),
        "models": [ModelRef(path=DEMO_PACKAGE, sha256=DEMO_SHA256)],
        "log_file": state_dir / "node.log",
        "listener": listener,
        # any free port: the demo must not fail where 8080 is taken
        "status": config.status.model_copy(update={"port": 0}),
        "destinations": [Destination(name="self", ae_title=listener.ae_title,
                                     host="127.0.0.1", port=listener.port,
                                     verify=False)],  # the listener answers no C-FIND
        # the only peers: the demo's scanner, and the node itself sending its report back
        "peers": [Peer(name="demo-scanner", ae_title="DEMO_SCANNER", host="127.0.0.1"),
                  Peer(name="self", ae_title=listener.ae_title, host="127.0.0.1",
                       port=listener.port, receive_results=True)],
    })
    state_dir.mkdir(parents=True, exist_ok=True)
    logs.configure(config.log_level, config.log_file)

    if study == "liver":
        print("writing a synthetic liver CT with two lesions and its SEG ...", flush=True)
        written = write_synthetic_study(workdir / "input")
        paths = [*written.ct_paths, written.seg_path]
    else:
        print("writing a synthetic arterial, portal venous and delayed CT with two lesions and "
              "one SEG ...", flush=True)
        phases = write_multiphase_ct(workdir / "input")
        paths = [*(path for series in phases.series.values() for path in series.paths),
                 phases.seg_path]
    study_uid = pydicom.dcmread(paths[-1], stop_before_pixels=True).StudyInstanceUID
    node = Node(config)
    node.start()
    try:
        if node.status_address is not None:
            host, http_port = node.status_address
            print(f"status page: http://{host}:{http_port}/", flush=True)
        print(f"node {listener.ae_title} listening on 127.0.0.1:{listener.port}; "
              f"sending {len(paths) - 1} CT slices and 1 SEG by C-STORE ...", flush=True)
        statuses = c_store("DEMO_SCANNER", Destination(
            name="node", ae_title=listener.ae_title, host="127.0.0.1", port=listener.port),
            [pydicom.dcmread(p) for p in paths])
        refused = [p.name for p, s in zip(paths, statuses, strict=True) if s != 0]
        if refused:
            print(f"the node refused {len(refused)} instance(s): {refused}", file=sys.stderr)
            return 1
        sent_at = time.monotonic()
        print(f"waiting {config.stable_after:g} s for the series to be stable, then processing ...",
              flush=True)
        results = _wait_for_results(node, timeout)
        elapsed = time.monotonic() - sent_at
    finally:
        node.stop()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for row in results:
        kind = pydicom.dcmread(row.path, stop_before_pixels=True).Modality.lower()
        kept.append(out_dir / f"radiomics-{kind}-{row.sop_instance_uid}.dcm")
        shutil.copyfile(row.path, kept[-1])
    print(f"\n{len(results)} result objects back in study {study_uid} "
          f"{elapsed:.1f} s after the last instance was sent (preset {preset}):\n")
    _print_table(report_table(kept[0]))
    print("\nModel (shipped demonstration model):")
    for line in model_lines(kept[0]):
        print(f"  {line}")
    print("\nWritten:")
    for path in kept:
        print(f"  {path}")
    print(f"node log: {state_dir / 'node.log'}")
    return 0
