"""The node with a DICOMweb PACS (Debian's Orthanc 1.10.1 with its DICOMweb plugin 1.7, HTTP basic
authentication required): a study stored in Orthanc by STOW-RS reaches the node, its results go
back by STOW-RS and are verified by QIDO-RS, and its FHIR DiagnosticReport is then accepted by
the FHIR endpoint (a recording of HAPI FHIR's answers, tests/fhir_recording.py: no FHIR server
installs here); a missing source series is fetched by QIDO-RS and
WADO-RS; wrong credentials give a reason naming the service and the HTTP status."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydantic import SecretStr

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import NodeConfig
from node.dicom.dicomweb import DicomWebError, DicomWebPeer
from node.dicom.ingest import Ingest
from node.flow.retrieve import Retriever
from node.flow.router import Router
from node.ops.check import check_config
from node.state import Index
from tests.fhir_recording import Recording, recorded_fhir_server
from tests.integration.ohif import DICOMWEB_PLUGIN, dicomweb_orthanc
from tests.integration.peers import NodeService
from tests.integration.test_pacs import SHAPE, sr_instances, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DICOMWEB_PLUGIN.is_file(),
                       reason=f"{DICOMWEB_PLUGIN} (Debian orthanc-dicomweb) not installed"),
]

AUTH = ("radiomics", "dicomweb-secret")


@pytest.fixture
def study(tmp_path: Path) -> SyntheticStudy:
    return write_synthetic_study(tmp_path / "study", shape=SHAPE)


def stow(url: str, paths: list[Path]) -> None:
    """Store files in the PACS as a DICOMweb-only modality or gateway would (STOW-RS)."""
    with DicomWebPeer(url, AUTH[0], SecretStr(AUTH[1])) as peer:
        for path in paths:
            peer.store(path.read_bytes())


def test_study_stored_by_stow_rs_returns_results_by_stow_rs(tmp_path: Path,
                                                            study: SyntheticStudy) -> None:
    recording = Recording(token="ehr-token")
    with dicomweb_orthanc(tmp_path / "orthanc", auth=AUTH) as pacs, \
            recorded_fhir_server(recording) as fhir:
        dicomweb = f"{pacs.url}/dicom-web"
        node = NodeService(tmp_path / "node", {
            "orthanc_feeds": [{"name": "pacs", "url": pacs.url, "username": AUTH[0],
                               "password": AUTH[1], "poll_interval": 0.5, "start": "oldest"}],
            "destinations": [{"name": "pacs-web", "kind": "dicomweb", "url": dicomweb,
                              "username": AUTH[0], "password": AUTH[1]},
                             {"name": "ehr", "kind": "fhir", "url": fhir,
                              "token": "ehr-token"}],
        })
        node.start()
        try:
            stow(dicomweb, [*study.ct_paths, study.seg_path])
            reports = wait_for(lambda: sr_instances(pacs, study.study_instance_uid), 180,
                               "both reports stored back by STOW-RS", node.log_path)
            index = Index(node.state_dir / "index.sqlite3")
            wait_for(lambda: {d["state"] for d in index.outbox.with_checks()} == {"delivered"}, 60,
                     "every delivery verified", node.log_path)
            rows = index.outbox.with_checks()
            deliveries = [d for d in rows if d["destination"] == "pacs-web"]
            [report] = [d for d in rows if d["destination"] == "ehr"]
            headers = [pydicom.dcmread(d["path"], stop_before_pixels=True) for d in deliveries]
            with DicomWebPeer(dicomweb, AUTH[0], SecretStr(AUTH[1])) as peer:
                found = [peer.has_instance(h.StudyInstanceUID, h.SeriesInstanceUID,
                                           h.SOPInstanceUID) for h in headers]
        finally:
            node.stop()
    assert sorted(pydicom.dcmread(io.BytesIO(sr)).Modality for sr in reports) == ["SR", "SR"]
    assert len(deliveries) == 3  # ct-liver-basic: the two reports and the summary image
    assert {(d["state"], d["verified_by"]) for d in deliveries} == {("delivered", "qido-rs")}
    assert found == [True] * 3
    # the RIS/EHR heard of the results once the PACS held them, by one transaction
    assert (report["verified_by"], report["attempts"]) == ("fhir-search", 1)
    assert report["sent_at"] >= max(d["delivered_at"] for d in deliveries)
    [posted] = recording.posted
    [diagnostic] = recording.resources["DiagnosticReport"].values()
    assert diagnostic["imagingStudy"][0]["identifier"]["value"] == \
        f"urn:oid:{study.study_instance_uid}"
    assert len(posted["entry"]) == 1 + len(recording.resources["Observation"])
    senders = {r.calling_ae for r in index.instances.of_series(study.ct_series_uid)}
    assert senders == {"orthanc:pacs"}


def test_missing_source_series_is_fetched_by_qido_and_wado_rs(
        tmp_path: Path, study: SyntheticStudy) -> None:
    with dicomweb_orthanc(tmp_path / "orthanc", auth=AUTH) as pacs:
        dicomweb = f"{pacs.url}/dicom-web"
        stow(dicomweb, list(study.ct_paths))  # the PACS has the CT; only the SEG reaches the node
        source = {"name": "pacs-web", "kind": "dicomweb", "url": dicomweb,
                  "username": AUTH[0], "password": AUTH[1]}
        config = NodeConfig(state_dir=tmp_path / "node", retrieve={"sources": [source]})
        config.spool_dir.mkdir(parents=True)
        index = Index(config.index_path)
        data = study.seg_path.read_bytes()
        Ingest(config, index).accept(data, lambda: pydicom.dcmread(io.BytesIO(data)), "SCANNER")
        router = Router(config, index)
        [seg_series] = index.instances.mark_stable(index.clock.time() + 1)
        assert router.route(seg_series) == []
        Retriever(config, index).tick()
    [request] = index.retrievals.all()
    assert request.state == "fetched", request.reason
    rows = index.instances.of_series(study.ct_series_uid)
    assert len(rows) == SHAPE[0] and {r.calling_ae for r in rows} == {"dicomweb:pacs-web"}
    originals = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in study.ct_paths}
    for row in rows:
        fetched = pydicom.dcmread(row.path)
        assert (fetched.pixel_array == originals[fetched.SOPInstanceUID].pixel_array).all()
    [ct_series] = index.instances.mark_stable(index.clock.time() + 1)
    [job_id] = router.route(ct_series)
    assert index.jobs.get(job_id).source_series_uid == study.ct_series_uid


def test_wrong_credentials_are_named_with_service_and_status(tmp_path: Path) -> None:
    with dicomweb_orthanc(tmp_path / "orthanc", auth=AUTH) as pacs:
        dicomweb = f"{pacs.url}/dicom-web"
        peer = DicomWebPeer(dicomweb, AUTH[0], SecretStr("wrong"))
        with peer, pytest.raises(DicomWebError, match=r"QIDO-RS .*/dicom-web: HTTP 401") as caught:
            peer.reachable()
        assert caught.value.status == 401
        checks = {}
        for password in ("wrong", AUTH[1]):
            config = NodeConfig(state_dir=tmp_path / "node", destinations=[
                {"name": "pacs-web", "kind": "dicomweb", "url": dicomweb, "username": AUTH[0],
                 "password": password}])
            [result] = [r for r in check_config(config, timeout=10)
                        if r.name == "destination pacs-web"]
            checks[password] = result
    assert not checks["wrong"].ok and "HTTP 401" in checks["wrong"].detail
    assert checks[AUTH[1]].ok and "QIDO-RS answered" in checks[AUTH[1]].detail
