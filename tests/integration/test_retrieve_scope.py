"""A retrieval brings the series a segmentation names, of its study and patient, and nothing else,
against a real PACS (Debian's Orthanc 1.10.1) that holds two studies of two patients.

The measured attack (issue 20): a SEG whose Referenced Series Instance UID was "" made the node
retrieve every instance of the PACS (the empty UID reached Orthanc's ``/tools/find`` as
match-all), index them and queue jobs on them. Here a SEG of study A names the CT series of study
B (another patient), or names "" or "*", and each retrieval method is tried; a cap bounds what one
retrieval stores. The legitimate retrieval is ``test_pacs.test_missing_source_series_is_fetched``.
"""

from __future__ import annotations

import io
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.clock import SYSTEM_CLOCK, Clock
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.dicom.receiver import Receiver
from node.flow.retrieve import Retriever
from node.flow.router import Router
from node.state import Index
from node.state.audit import SEGMENTATION_NOT_PROCESSED
from tests.conftest import free_port
from tests.fake_clock import FakeClock
from tests.integration.peers import OrthancServer, orthanc
from tests.integration.test_pacs import SCANNER, pacs_peer, upload

pytestmark = pytest.mark.integration

SHAPE = (20, 64, 64)
OTHER_PATIENT_ID = "OTHER-PATIENT-B"
METHODS = ["c-get", "c-move", "orthanc-rest"]


@dataclass(frozen=True)
class TwoPatients:
    """Study A (the synthetic patient) and study B (another patient): B's CT series files, its
    Study and Series Instance UIDs."""

    a: SyntheticStudy
    b_ct_paths: list[Path]
    b_study_uid: str
    b_series_uid: str


@pytest.fixture
def two_patients(tmp_path: Path) -> TwoPatients:
    """Two synthetic studies; the second rewritten as another patient's, with new Study and
    Series Instance UIDs (its SEG is not used)."""
    a = write_synthetic_study(tmp_path / "a", shape=SHAPE, seed=0)
    b = write_synthetic_study(tmp_path / "b", shape=SHAPE, seed=1)
    study_uid, series_uid = generate_uid(), generate_uid()
    for path in b.ct_paths:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = OTHER_PATIENT_ID, "Other^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.save_as(path)
    return TwoPatients(a, list(b.ct_paths), study_uid, series_uid)


def _seg_naming(study: SyntheticStudy, directory: Path, series_uid: str) -> bytes:
    """Study A's SEG (a new instance) whose Referenced Series Sequence names ``series_uid``."""
    seg = pydicom.dcmread(study.seg_path)
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = series_uid
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.SeriesInstanceUID = generate_uid()
    path = directory / f"seg-{seg.SOPInstanceUID}.dcm"
    seg.save_as(path)
    return path.read_bytes()


def _source(pacs: OrthancServer, method: str) -> dict:
    if method == "orthanc-rest":
        return {"name": "pacs", "kind": "orthanc-rest", "url": pacs.url}
    return {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port,
            "method": method}


def _indexed(config: NodeConfig) -> dict[tuple[str, str], int]:
    """Instances in the node's index by (study, calling AE): what the node took in."""
    db = sqlite3.connect(f"file:{config.index_path}?mode=ro", uri=True)
    try:
        return {(study, source): count for study, source, count in db.execute(
            "SELECT study_uid, calling_ae, count(*) FROM instances GROUP BY 1, 2")}
    finally:
        db.close()


def _node(tmp_path: Path, pacs: OrthancServer, node_port: int, sources: list[dict],
          clock: Clock = SYSTEM_CLOCK, **retrieve: object) -> tuple[NodeConfig, Index]:
    config = NodeConfig(state_dir=tmp_path / "node", listener={"port": node_port},
                        peers=[pacs_peer(pacs), SCANNER],
                        retrieve={"sources": sources, "wait": 0.5, "retry_interval": 0.1,
                                  **retrieve})
    config.spool_dir.mkdir(parents=True)
    return config, Index(config.index_path, clock=clock)


def _receive_seg(config: NodeConfig, index: Index, data: bytes) -> Router:
    """The SEG arrives from the scanner and is stable; the router has routed it."""
    outcome = Ingest(config, index).accept(data, lambda: pydicom.dcmread(io.BytesIO(data)),
                                           "SCANNER")
    assert outcome.status == 0, outcome.comment
    router = Router(config, index)
    [seg_series] = index.instances.mark_stable(index.clock.time() + 1)
    assert router.route(seg_series) == []
    return router


@pytest.mark.parametrize("method", METHODS)
def test_seg_naming_a_series_of_another_patients_study_gets_nothing_of_it(
        tmp_path: Path, two_patients: TwoPatients, method: str, clock: FakeClock) -> None:
    """The request asks for B's series in A's study (the SEG's own, PS3.3 C.12.2). Orthanc
    1.10.1 looks a C-GET or C-MOVE up by the SERIES-level key alone and sends B's series anyway;
    its ``/tools/find`` with both keys finds nothing.

    - orthanc-rest: nothing found, nothing downloaded; the request fails when ``wait`` is over.
    - c-get: each of the 20 instances offered is refused (0xC000, StudyInstanceUID) and
      quarantined, none indexed; the request fails at once saying so.
    - c-move: the sub-operations are ordinary C-STOREs at the listener, which cannot tell them
      from any other: B's 20 instances are stored; the request fails at once naming the
      StudyInstanceUID, and the router does not pair B's series with A's SEG: no job.
    """
    a, b_series = two_patients.a, two_patients.b_series_uid
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", node_port]}) as pacs:
        upload(pacs, [*a.ct_paths, *two_patients.b_ct_paths])  # 40 instances, 2 patients
        config, index = _node(tmp_path, pacs, node_port, [_source(pacs, method)], clock)
        receiver = Receiver(config, index)  # C-MOVE's sub-operations arrive here
        receiver.start()
        try:
            router = _receive_seg(config, index, _seg_naming(a, tmp_path, b_series))
            [request] = index.retrievals.all()
            assert (request.series_uid, request.study_uid) == (b_series, a.study_instance_uid)
            retriever = Retriever(config, index)
            retriever.tick()
            if method == "orthanc-rest":
                assert index.retrievals.all()[0].state == "waiting"
                clock.advance(0.5)  # the wait is over
                retriever.tick()
        finally:
            receiver.stop()
    [request] = index.retrievals.all()
    indexed = _indexed(config)
    b_indexed = sum(n for (study, _), n in indexed.items() if study == two_patients.b_study_uid)
    quarantined = len(list(config.quarantine_dir.glob("*.reason.json"))) \
        if config.quarantine_dir.is_dir() else 0
    print(f"\n{method}: request {request.state}: {request.reason}\n"
          f"  study B instances indexed: {b_indexed} of 20; quarantined: {quarantined}")
    assert request.state == "failed"
    assert OTHER_PATIENT_ID not in (request.reason or "")
    if method == "orthanc-rest":
        assert b_indexed == 0 and quarantined == 0
        assert request.reason.endswith("(pacs: has no such series)")
    elif method == "c-get":
        assert b_indexed == 0 and quarantined == 20
        assert request.reason == (
            f"source series {b_series} not retrieved from pacs: what was offered was refused "
            "(pacs: refused all 20 instances offered, none stored (quarantined; (0020,000D) "
            "StudyInstanceUID: 20))")
    else:
        assert b_indexed == 20 and {source for (_, source) in indexed} == {"SCANNER", "ORTHANC"}
        assert "(0020,000D) StudyInstanceUID differs from the request" in request.reason
        [b_series_row] = [s for s in index.instances.mark_stable(index.clock.time() + 1)
                          if s.series_uid == b_series]
        assert router.route(b_series_row) == []
        [audit] = index.audit.rows(SEGMENTATION_NOT_PROCESSED, 10)
        assert f"of study {two_patients.b_study_uid}, not of study {a.study_instance_uid}" \
            in audit["detail"]
    assert index.jobs.all() == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # pydicom, of "*"
@pytest.mark.parametrize("value", ["", "*"])
def test_seg_naming_an_empty_or_wildcard_series_retrieves_nothing(
        tmp_path: Path, two_patients: TwoPatients, value: str, clock: FakeClock) -> None:
    """The measured attack itself, with every method configured (c-get, c-move, orthanc-rest in
    that order): the SEG is not processed, nothing is requested, 0 of the PACS's 40 instances
    are indexed."""
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", node_port]}) as pacs:
        upload(pacs, [*two_patients.a.ct_paths, *two_patients.b_ct_paths])
        config, index = _node(tmp_path, pacs, node_port,
                              [{**_source(pacs, m), "name": m} for m in METHODS], clock)
        receiver = Receiver(config, index)
        receiver.start()
        try:
            _receive_seg(config, index, _seg_naming(two_patients.a, tmp_path, value))
            Retriever(config, index).tick()
            clock.advance(0.5)  # the wait is over: a request would fail now
            Retriever(config, index).tick()
        finally:
            receiver.stop()
    assert index.retrievals.all() == [] and index.jobs.all() == []
    assert _indexed(config) == {(two_patients.a.study_instance_uid, "SCANNER"): 1}  # the SEG
    [audit] = index.audit.rows(SEGMENTATION_NOT_PROCESSED, 10)
    assert ("items hold no SeriesInstanceUID" if value == "" else "'*' is not a UID") \
        in audit["detail"]


@pytest.mark.parametrize("method", ["c-get", "orthanc-rest"])
def test_retrieval_stores_at_most_max_instances(
        tmp_path: Path, two_patients: TwoPatients, method: str) -> None:
    """``retrieve.max_instances`` 5 against a series of 20: orthanc-rest downloads nothing
    (Orthanc lists the instances first); C-GET stores the first 5 and refuses the other 15
    with 0xA700 (the count is known only as the stores arrive). Either fails the request at
    once with the reason."""
    a = two_patients.a
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", node_port]}) as pacs:
        upload(pacs, list(a.ct_paths))
        config, index = _node(tmp_path, pacs, node_port, [_source(pacs, method)],
                              max_instances=5)
        _receive_seg(config, index, a.seg_path.read_bytes())
        Retriever(config, index).tick()
    [request] = index.retrievals.all()
    stored = len(index.instances.of_series(a.ct_series_uid))
    print(f"\n{method}, max_instances 5: {stored} of 20 stored; {request.reason}")
    assert request.state == "failed"
    if method == "orthanc-rest":
        assert stored == 0
        assert request.reason.endswith(
            "(pacs: the series lists 20 instances, more than retrieve.max_instances (5): none "
            "fetched)")
    else:
        assert stored == 5
        assert request.reason.endswith(
            "(pacs: offered more than retrieve.max_instances (5) instances: 15 refused "
            "(0xA700), 5 stored)")
