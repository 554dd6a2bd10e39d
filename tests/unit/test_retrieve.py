"""Retrieval requests without a PACS: an unreachable source, a series that comes by itself, a
request whose UIDs are not UIDs or whose segmentation is gone; the exact keys a source is asked
for; and ``Ingest.accept`` refusing an instance that is not what a retrieval asked for."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.clock import SYSTEM_CLOCK, Clock
from node.config import NodeConfig
from node.dicom.ingest import Ingest, Outcome
from node.dicom.orthanc import OrthancClient
from node.flow.retrieve import RetrieveError, Retriever, RetrieveRefused, _query, _Tally
from node.state import Index
from node.state.instances import InstanceRow
from tests.conftest import free_port
from tests.fake_clock import FakeClock

SERIES = "1.2.826.0.1.3680043.8.498.10"
STUDY = "1.2.826.0.1.3680043.8.498.11"
SEG_SOP = "1.2.826.0.1.3680043.8.498.13"


def _segmentation(index: Index, directory: Path, patient_id: str = "PATIENT-1") -> None:
    """Index a segmentation header (SOP Instance UID ``SEG_SOP``) with ``patient_id``: the
    retriever reads the Patient ID every retrieved instance must carry from its file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID = SEG_SOP, STUDY
    ds.SeriesInstanceUID, ds.PatientID, ds.Modality = "1.2.826.0.1.3680043.8.498.14", \
        patient_id, "SEG"
    path = directory / "seg.dcm"
    directory.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    index.instances.add(InstanceRow(SEG_SOP, SegmentationStorage, STUDY, ds.SeriesInstanceUID,
                                   str(path), path.stat().st_size, "SCANNER"), "SEG")


def _node(tmp_path: Path, port: int, series: str = SERIES, study: str = STUDY,
          clock: Clock = SYSTEM_CLOCK) -> tuple[NodeConfig, Index]:
    source = {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": port}
    config = NodeConfig(state_dir=tmp_path / "node", retrieve={
        "sources": [source], "wait": 0.3, "retry_interval": 0.05, "timeout": 2})
    index = Index(config.index_path, clock=clock)
    _segmentation(index, tmp_path / "seg")
    assert index.retrievals.request(series, study, SEG_SOP)
    assert not index.retrievals.request(series, study, SEG_SOP)  # asked once
    return config, index


def test_unreachable_source_is_retried_then_the_request_fails(tmp_path: Path,
                                                             clock: FakeClock) -> None:
    port = free_port()
    config, index = _node(tmp_path, port, clock=clock)
    retriever = Retriever(config, index)
    retriever.tick()
    [row] = index.retrievals.all()
    assert (row.state, row.attempts) == ("waiting", 1)
    assert row.reason == f"archive: no association with ARCHIVE@127.0.0.1:{port}"
    retriever.tick()  # not due yet: nothing tried
    assert index.retrievals.all()[0].attempts == 1
    clock.advance(0.3)  # the wait (0.3 s) is over
    retriever.tick()
    [row] = index.retrievals.all()
    assert row.state == "failed"
    assert row.reason == (f"source series {SERIES} not received within 0.3 s and not retrievable "
                          f"from archive (archive: no association with ARCHIVE@127.0.0.1:{port})")


def test_series_that_arrives_by_itself_ends_the_request(tmp_path: Path) -> None:
    config, index = _node(tmp_path, free_port())
    index.instances.add(InstanceRow("1.2.826.0.1.3680043.8.498.12", "1.2.840.10008.5.1.4.1.1.2",
                                   STUDY, SERIES, "/nowhere", 1, "SCANNER"), "CT")
    Retriever(config, index).tick()
    [row] = index.retrievals.all()
    assert (row.state, row.attempts, row.reason) == ("received", 0, None)


def test_retriever_expects_the_request_and_the_segmentations_patient(tmp_path: Path) -> None:
    config, index = _node(tmp_path, free_port())
    [row] = index.retrievals.all()
    assert Retriever(config, index).expected(row) == {
        "StudyInstanceUID": STUDY, "SeriesInstanceUID": SERIES, "PatientID": "PATIENT-1"}


@pytest.mark.parametrize(("series", "study", "named"), [
    ("", STUDY, "SeriesInstanceUID ''"),
    ("*", STUDY, "SeriesInstanceUID '*'"),
    (SERIES, "1.2.3*", "StudyInstanceUID '1.2.3*'"),
])
def test_request_whose_uids_are_not_uids_fails_without_asking(
        tmp_path: Path, series: str, study: str, named: str) -> None:
    """A request left by an older node (before the router checked references) is not sent:
    such a value is a wildcard to a PACS. It fails at once, no source asked (the source here
    does not listen: asking would show in the reason)."""
    config, index = _node(tmp_path, free_port(), series, study)
    Retriever(config, index).tick()
    [row] = index.retrievals.all()
    assert (row.state, row.attempts) == ("failed", 0)
    assert row.reason == f"not retrieved: {named} is not a UID (PS3.5 9.1)"


def test_request_whose_segmentation_is_gone_fails_without_asking(tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path / "node", retrieve={"sources": [
        {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()}]})
    index = Index(config.index_path)
    index.retrievals.request(SERIES, STUDY, SEG_SOP)  # its segmentation never indexed
    Retriever(config, index).tick()
    [row] = index.retrievals.all()
    assert (row.state, row.attempts) == ("failed", 0)
    assert row.reason == (f"not retrieved: segmentation {SEG_SOP} is no longer in the node (its "
                          "Patient ID is what the series must carry)")


@pytest.mark.parametrize("value", ["", "*", "1.2.3*", "1" * 65, "1.2.3\\1.2.4"])
def test_sources_are_asked_for_exact_uids_only(value: str) -> None:
    """Defence in depth below the router: neither the C-GET/C-MOVE identifier nor Orthanc's
    find is built from a value Orthanc would match as a wildcard ("" and "*" match all)."""
    for study, series in ((value, SERIES), (STUDY, value)):
        with pytest.raises(ValueError, match="not a UID"):
            _query(study, series)
        with OrthancClient("http://127.0.0.1:9") as client, \
                pytest.raises(ValueError, match="not a UID"):
            client.find_series(study, series)  # refused before any request is made


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(4, 32, 32))


@pytest.mark.parametrize(("keyword", "value", "shown"), [
    ("StudyInstanceUID", "1.2.826.0.1.3680043.8.498.99", True),
    ("SeriesInstanceUID", "1.2.826.0.1.3680043.8.498.98", True),
    ("PatientID", "ANOTHER-PATIENT", False),
])
def test_accept_refuses_an_instance_that_is_not_the_one_expected(
        tmp_path: Path, study: SyntheticStudy, caplog: pytest.LogCaptureFixture, keyword: str,
        value: str, shown: bool) -> None:
    """Checked after identity: 0xC000, a comment naming the tag and both values, the instance
    quarantined and not indexed; the log line leaves the values out for a Patient ID."""
    config = NodeConfig(state_dir=tmp_path / "node")
    index = Index(config.index_path)
    data = study.ct_paths[0].read_bytes()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    expected = {"StudyInstanceUID": str(header.StudyInstanceUID),
                "SeriesInstanceUID": str(header.SeriesInstanceUID),
                "PatientID": str(header.PatientID)}
    actual, expected[keyword] = expected[keyword], value
    with caplog.at_level(logging.WARNING, logger="node.dicom.ingest"):
        outcome = Ingest(config, index).accept(
            data, lambda: pydicom.dcmread(io.BytesIO(data)), "c-get:archive", expected=expected)
    tag = {"StudyInstanceUID": "(0020,000D)", "SeriesInstanceUID": "(0020,000E)",
           "PatientID": "(0010,0020)"}[keyword]
    assert outcome.status == 0xC000 and outcome.tag == f"{tag} {keyword}"
    assert outcome.comment == (f"{tag} {keyword}: dataset says {actual!r}, the request "
                               f"expects {value!r}")
    assert not index.instances.has(str(header.SOPInstanceUID))
    [reason_file] = config.quarantine_dir.glob("*.reason.json")
    assert json.loads(reason_file.read_text())["tag"] == f"{tag} {keyword}"
    [record] = caplog.records
    logged = json.dumps(record.fields)
    assert record.fields["tag"] == f"{tag} {keyword}"
    assert (actual in logged and value in logged) is shown
    assert str(header.PatientID) not in logged


def test_accept_stores_an_instance_that_is_the_one_expected(
        tmp_path: Path, study: SyntheticStudy) -> None:
    config = NodeConfig(state_dir=tmp_path / "node")
    index = Index(config.index_path)
    data = study.ct_paths[0].read_bytes()
    header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    expected = {"StudyInstanceUID": str(header.StudyInstanceUID),
                "SeriesInstanceUID": str(header.SeriesInstanceUID),
                "PatientID": str(header.PatientID)}
    assert Ingest(config, index).accept(data, lambda: pydicom.dcmread(io.BytesIO(data)),
                                        "c-get:archive", expected=expected).status == 0
    assert index.instances.has(str(header.SOPInstanceUID))


def test_what_a_source_offered_decides_whether_the_request_is_tried_again() -> None:
    """Refusals of the instances themselves end the request (the same would come again); the
    node's own disk refusing them is tried again; a mix with stored instances is a fetch."""
    study = Outcome(0xC000, "(0020,000D) StudyInstanceUID: ...", "(0020,000D) StudyInstanceUID")
    disk = Outcome(0xA700, "free disk 10 MiB below the floor")
    refused = _Tally(cap=10)
    for _ in range(3):
        refused.add(study)
    with pytest.raises(RetrieveRefused, match=r"refused all 3 instances offered, none stored "
                                              r"\(quarantined; \(0020,000D\) "
                                              r"StudyInstanceUID: 3\)"):
        refused.result()
    full = _Tally(cap=10)
    full.add(disk)
    with pytest.raises(RetrieveError) as raised:
        full.result()
    assert not isinstance(raised.value, RetrieveRefused)
    mixed = _Tally(cap=10)
    mixed.add(Outcome(0))
    mixed.add(study)
    assert mixed.result() == 1
