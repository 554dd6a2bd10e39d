"""Delta radiomics against a real PACS (Debian's Orthanc): the follow-up study's job finds the
patient's prior study in Orthanc and fetches its portal venous series and SEG through Orthanc's
DICOM interface (C-FIND, C-GET: kind dicom), through its REST API (``/tools/find`` and the
instance files: kind orthanc-rest) and, where Debian's DICOMweb plugin is installed, by QIDO-RS
and WADO-RS (kind dicomweb), into the job's prior folder, never the spool."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pydicom
import pytest

from demo.study import (
    PATIENT_ID,
    SyntheticMultiPhase,
    SyntheticPriorStudy,
    write_multiphase_ct,
    write_prior_study,
)
from node.config import NodeConfig
from node.dicom.ingest import Ingest
from node.flow.jobs import JobRunner
from node.flow.priors import PriorFinder
from node.flow.router import Router
from node.state import Index
from tests.conftest import free_port
from tests.fake_clock import FakeClock
from tests.integration.ohif import DICOMWEB_PLUGIN
from tests.integration.peers import OrthancServer, orthanc
from tests.integration.test_pacs import upload

pytestmark = pytest.mark.integration


KINDS = ["dicom", "orthanc-rest", *(["dicomweb"] if DICOMWEB_PLUGIN.is_file() else [])]
"""The kinds of source tried; dicomweb only with Debian's orthanc-dicomweb."""


def _source(pacs: OrthancServer, kind: str) -> dict:
    if kind == "orthanc-rest":
        return {"name": "pacs", "kind": "orthanc-rest", "url": pacs.url}
    if kind == "dicomweb":
        return {"name": "pacs", "kind": "dicomweb", "url": f"{pacs.url}/dicom-web"}
    return {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}


def _follow_up_job(config: NodeConfig, index: Index, follow_up: SyntheticMultiPhase) -> int:
    """The follow-up's portal venous series and SEG received and stable; the router queues the
    job of the rule with prior."""
    ingest = Ingest(config, index)
    for path in (*follow_up.portal_venous.paths, follow_up.seg_path):
        data = path.read_bytes()
        assert ingest.accept(data, lambda d=data: pydicom.dcmread(io.BytesIO(d)),
                             "SCANNER").status == 0
    router = Router(config, index)
    [job_id] = [job for series in index.instances.mark_stable(index.clock.time() + 1)
                for job in router.route(series)]
    assert index.priors.get(job_id).state == "pending"  # type: ignore[union-attr]
    return job_id


def test_prior_study_is_found_and_fetched_from_orthanc(
        tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    follow_up = write_multiphase_ct(tmp_path / "follow-up")
    prior: SyntheticPriorStudy = write_prior_study(tmp_path / "prior")
    prior_pv = prior.study.portal_venous
    prior_seg = pydicom.dcmread(prior.study.seg_path, stop_before_pixels=True)
    assert follow_up.patient_id == prior.study.patient_id == PATIENT_ID
    plugin = {"Plugins": [str(DICOMWEB_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}} if "dicomweb" in KINDS else {}
    with orthanc(tmp_path / "orthanc", {"node": ["RADIOMICS", "127.0.0.1", free_port()]},
                 settings=plugin) as pacs, caplog.at_level(logging.DEBUG):
        # the PACS holds the follow-up too (the current study: never its own prior)
        upload(pacs, [*prior_pv.paths, prior.study.seg_path, *follow_up.portal_venous.paths,
                      follow_up.seg_path])
        for kind in KINDS:
            config = NodeConfig(state_dir=tmp_path / kind, retrieve={"sources": [
                _source(pacs, kind)]}, rules=[{"name": "ct", "modality": ["CT"],
                                               "prior": {"source": "pacs"}}])
            index = Index(config.index_path, clock=clock)
            job_id = _follow_up_job(config, index, follow_up)
            PriorFinder(config, index).tick()
            row = index.priors.get(job_id)
            assert row is not None, kind
            assert (row.state, row.prior_study_uid, row.series_uid, row.seg_sop_uid) == (
                "found", prior.study.study_instance_uid, prior_pv.series_instance_uid,
                str(prior_seg.SOPInstanceUID)), (kind, row.reason)
            inputs = JobRunner(config, index, executor=object())._inputs(  # type: ignore[arg-type]
                index.jobs.get(job_id))
            assert inputs is not None and inputs.prior is not None
            assert len(inputs.prior.paths) == len(prior_pv.paths)
            assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                    for p in inputs.prior.paths} == {
                str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in prior_pv.paths}
            assert Path(inputs.prior.seg).read_bytes() == prior.study.seg_path.read_bytes() \
                or kind != "orthanc-rest"  # C-GET, WADO-RS: re-encoded; REST: Orthanc's file
            assert not index.instances.has(str(prior_seg.SOPInstanceUID))  # not in the spool
            index.close()
    # the node's own lines (pynetdicom's identifier dumps are below the WARNING level the node
    # sets for it: node.logs.configure)
    logged = [json.dumps(getattr(r, "fields", {})) + r.getMessage() for r in caplog.records
              if r.name.startswith("node.")]
    assert any("prior study found" in line for line in logged)
    assert not [line for line in logged if PATIENT_ID in line]
