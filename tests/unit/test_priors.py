"""The prior study of a job (delta radiomics, ``node.flow.priors``) against pynetdicom's own
Query/Retrieve SCP in this process: C-FIND at STUDY and SERIES level, C-GET at SERIES level,
serving small synthetic studies of one patient on several dates. The peer returns every study
of the patient whatever the Study Date asked (a peer may not apply range matching), so the
node's own window is what decides."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, SegmentationStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from demo.synthetic import PATIENT_ID, write_synthetic_study
from node.config import ConfigError, NodeConfig, load_config
from node.dicom.ingest import Ingest
from node.flow.executor import ship
from node.flow.jobs import JobRunner
from node.flow.priors import PriorFinder, window
from node.flow.router import Router
from node.state import Index
from node.state.jobs import JobSeries
from node.state.retention import DAY, Retention
from tests.conftest import free_port
from tests.fake_clock import FakeClock

CURRENT_DATE = "20240701"


@dataclass(frozen=True)
class Study:
    """One study at the peer: its UID, date, CT series UID and files (CT, then the SEG)."""

    uid: str
    date: str
    series_uid: str
    seg_sop_uid: str | None
    files: tuple[Path, ...]


def _study(directory: Path, seed: int, date: str, with_seg: bool = True) -> Study:
    """A 4-slice synthetic study of ``demo.synthetic``'s patient, dated ``date``."""
    written = write_synthetic_study(directory, shape=(4, 32, 32), seed=seed)
    files = [*written.ct_paths, *((written.seg_path,) if with_seg else ())]
    for path in files:
        ds = pydicom.dcmread(path)
        ds.StudyDate = date
        ds.save_as(path)
    seg_uid = str(pydicom.dcmread(written.seg_path).SOPInstanceUID) if with_seg else None
    return Study(written.study_instance_uid, date, written.ct_series_uid, seg_uid, tuple(files))


@dataclass
class Pacs:
    """What the in-process peer holds and was asked."""

    port: int
    files: list[Path] = field(default_factory=list)
    finds: list[Dataset] = field(default_factory=list)
    gets: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def headers(self) -> list[tuple[Path, Dataset]]:
        return [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in self.files]


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    state = Pacs(free_port())

    def on_find(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        with state.lock:
            state.finds.append(query)
        seen = set()
        for _, header in state.headers():
            if query.QueryRetrieveLevel == "STUDY":
                if header.PatientID != query.PatientID or header.StudyInstanceUID in seen:
                    continue
                seen.add(header.StudyInstanceUID)
                answer = Dataset()
                answer.QueryRetrieveLevel = "STUDY"
                answer.StudyInstanceUID = header.StudyInstanceUID
                answer.StudyDate = header.StudyDate
                answer.PatientID = header.PatientID
                yield 0xFF00, answer
            elif (header.StudyInstanceUID == query.StudyInstanceUID
                  and header.Modality == query.Modality
                  and header.SeriesInstanceUID not in seen):
                seen.add(header.SeriesInstanceUID)
                answer = Dataset()
                answer.QueryRetrieveLevel = "SERIES"
                answer.SeriesInstanceUID = header.SeriesInstanceUID
                yield 0xFF00, answer
        yield 0x0000, None

    def on_get(event: evt.Event) -> Iterator[int | tuple[int, Dataset | None]]:
        series = event.identifier.SeriesInstanceUID
        with state.lock:
            state.gets.append(series)
        paths = [p for p, h in state.headers() if h.SeriesInstanceUID == series]
        yield len(paths)
        for path in paths:
            yield 0xFF00, pydicom.dcmread(path)

    ae = AE(ae_title="PACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for storage in (CTImageStorage, SegmentationStorage):
        ae.add_supported_context(storage, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", state.port), block=False, evt_handlers=[
        (evt.EVT_C_FIND, on_find), (evt.EVT_C_GET, on_get)])
    try:
        yield state
    finally:
        server.shutdown()


def _config(tmp_path: Path, port: int, **prior: object) -> NodeConfig:
    source = {"name": "archive", "ae_title": "PACS", "host": "127.0.0.1", "port": port}
    return NodeConfig(state_dir=tmp_path / "node", retrieve={"sources": [source], "timeout": 5},
                      rules=[{"name": "ct", "modality": ["CT"],
                              "prior": {"source": "archive", **prior}}])


def _job(config: NodeConfig, index: Index, current: Study) -> int:
    """The current study received by the node, and its job queued with a pending lookup."""
    ingest = Ingest(config, index)
    for path in current.files:
        data = path.read_bytes()
        assert ingest.accept(data, lambda d=data: pydicom.dcmread(io.BytesIO(d)),
                             "SCANNER").status == 0
    job_id = index.jobs.add(current.series_uid, str(current.seg_sop_uid), "ct", "ct-liver-basic",
                            "digest", prior=True)
    assert job_id is not None
    return job_id


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Study]:
    """The current study, and the patient's other studies at the peer."""
    root = tmp_path_factory.mktemp("studies")
    return {
        "current": _study(root / "current", 0, CURRENT_DATE),
        "same_visit": _study(root / "same_visit", 1, CURRENT_DATE),  # min_interval_days: 1
        "no_seg": _study(root / "no_seg", 2, "20240301", with_seg=False),
        "prior": _study(root / "prior", 3, "20240101"),
        "older": _study(root / "older", 4, "20230601"),
        "too_old": _study(root / "too_old", 5, "20220701"),  # 731 days before
    }


def test_the_most_recent_prior_with_a_segmentation_is_fetched_and_given_to_the_job(
        tmp_path: Path, pacs: Pacs, studies: dict[str, Study], clock: FakeClock) -> None:
    pacs.files = [p for s in studies.values() for p in s.files]
    config = _config(tmp_path, pacs.port)
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    assert index.jobs.claim() is None  # the lookup is pending
    resolved: list[int] = []
    PriorFinder(config, index, on_resolved=resolved.append).tick()
    prior, row = studies["prior"], index.priors.get(job_id)
    assert row is not None and resolved == [job_id]
    assert (row.state, row.prior_study_uid, row.series_uid, row.seg_sop_uid) == (
        "found", prior.uid, prior.series_uid, prior.seg_sop_uid)
    assert row.reason == (f"prior study {prior.uid} of 20240101 from archive: series "
                          f"{prior.series_uid}, segmentation {prior.seg_sop_uid}")
    [study_query] = [q for q in pacs.finds if q.QueryRetrieveLevel == "STUDY"]
    assert (study_query.PatientID, study_query.StudyDate) == (PATIENT_ID, "20220702-20240630")
    # the study without a segmentation is asked for its SEG and RTSTRUCT series, then skipped;
    # the prior's SEG series and its CT series fetched; nothing of the older studies
    assert [q.StudyInstanceUID for q in pacs.finds if q.QueryRetrieveLevel == "SERIES"] == \
        [studies["no_seg"].uid] * 2 + [prior.uid] * 2
    seg_series = str(pydicom.dcmread(prior.files[-1]).SeriesInstanceUID)
    assert pacs.gets == [seg_series, prior.series_uid]
    folder = config.priors_dir / f"job-{job_id}"
    assert row.folder == str(folder)
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(
        f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in prior.files[:-1])
    # nothing of the prior entered the spool or the index: no job of the old study
    assert not index.instances.has(str(prior.seg_sop_uid))
    assert not any(prior.uid in str(p) for p in config.spool_dir.rglob("*"))
    inputs = JobRunner(config, index, executor=object())._inputs(  # type: ignore[arg-type]
        index.jobs.get(job_id))
    assert inputs is not None and inputs.prior is not None
    assert inputs.prior.seg == str(folder / "seg" / f"{prior.seg_sop_uid}.dcm")
    assert inputs.prior.paths == tuple(sorted(str(p) for p in (folder / "images").iterdir()))
    _series, _seg, shipped = ship(inputs)  # the Dask executor ships the prior's files too
    assert shipped == ([Path(p).read_bytes() for p in inputs.prior.paths],
                       Path(inputs.prior.seg).read_bytes())
    assert index.jobs.claim().id == job_id  # type: ignore[union-attr]
    trail = [e["event"] for e in index.audit.study_trail(studies["current"].uid)["events"]]
    assert "prior study found" in trail


def test_no_prior_in_the_window(tmp_path: Path, pacs: Pacs, studies: dict[str, Study],
                                clock: FakeClock) -> None:
    """The current study, one of the same visit, one too old and one without a segmentation:
    none; the job is claimed and runs without a prior."""
    pacs.files = [p for name in ("current", "same_visit", "too_old", "no_seg")
                  for p in studies[name].files]
    config = _config(tmp_path, pacs.port)
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    PriorFinder(config, index).tick()
    row = index.priors.get(job_id)
    assert row is not None and row.state == "none"
    assert row.reason == (
        "no prior study: archive: studies of the patient from 20220702 to 20240630 other than "
        f"this one: 1 found ({studies['no_seg'].uid} (20240301): no SEG or RTSTRUCT)")
    assert pacs.gets == []
    assert not (config.priors_dir / f"job-{job_id}").exists()
    assert index.jobs.claim().id == job_id  # type: ignore[union-attr]
    inputs = JobRunner(config, index, executor=object())._inputs(  # type: ignore[arg-type]
        index.jobs.get(job_id))
    assert inputs is not None and inputs.prior is None


def test_a_prior_on_a_series_the_rule_does_not_match_is_not_used(
        tmp_path: Path, pacs: Pacs, studies: dict[str, Study], clock: FakeClock) -> None:
    pacs.files = [p for name in ("current", "prior") for p in studies[name].files]
    config = _config(tmp_path, pacs.port)
    config.rules[0].series_description = "^arterial$"
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    PriorFinder(config, index).tick()
    row = index.priors.get(job_id)
    assert row is not None and row.state == "none"
    assert row.reason.endswith(f"1 found ({studies['prior'].uid} (20240101): no segmentation "
                               "of a series matching the rule)")
    assert not (config.priors_dir / f"job-{job_id}").exists()


def test_network_errors_are_retried_with_back_off_then_the_job_runs_without(
        tmp_path: Path, studies: dict[str, Study], clock: FakeClock) -> None:
    port = free_port()  # nobody listens
    config = _config(tmp_path, port, retry_interval=10, max_attempts=3)
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    finder = PriorFinder(config, index)
    why = f"archive: no association with PACS@127.0.0.1:{port}"
    for attempts, wait in ((1, 10), (2, 20)):
        finder.tick()
        row = index.priors.get(job_id)
        assert row is not None
        assert (row.state, row.attempts, row.reason) == ("pending", attempts, why)
        assert row.next_attempt_at == clock.now + wait
        assert index.jobs.claim() is None
        clock.advance(wait - 1)
        finder.tick()  # not due yet
        assert index.priors.get(job_id).attempts == attempts  # type: ignore[union-attr]
        clock.advance(1)
    finder.tick()
    row = index.priors.get(job_id)
    assert row is not None and row.state == "failed"
    assert row.reason == f"{why} (gave up after 3 attempts)"
    assert index.jobs.claim().id == job_id  # type: ignore[union-attr]


def test_the_priors_folder_goes_with_the_jobs_results(
        tmp_path: Path, pacs: Pacs, studies: dict[str, Study], clock: FakeClock) -> None:
    pacs.files = [p for name in ("current", "prior") for p in studies[name].files]
    config = _config(tmp_path, pacs.port)
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    PriorFinder(config, index).tick()
    folder = config.priors_dir / f"job-{job_id}"
    assert folder.is_dir()
    retention = Retention(config, index)
    index.jobs.claim()
    retention.tick(clock.now + 365 * DAY)  # running: kept
    assert folder.is_dir()
    index.jobs.finish(job_id, [])
    retention.tick(clock.now + 365 * DAY)
    assert not folder.exists()


def test_window() -> None:
    config = _config(Path("/nowhere"), 1, window_days=30, min_interval_days=0)
    assert window("20240301", config.rules[0].prior) == ("20240131", "20240301")  # type: ignore
    with pytest.raises(ValueError):
        window("2024-03-01", config.rules[0].prior)  # type: ignore[arg-type]


@pytest.mark.parametrize(("prior", "source", "message"), [
    ("{source: nowhere}", "", "rules.ct.prior.source: 'nowhere' is not a retrieve.sources name "
     "(have: archive)"),
    ("{source: archive}", ", method: c-move", "rules.ct.prior.source: 'archive' uses method "
     "c-move, whose instances arrive at the listener and would be processed as a new study; "
     "use c-get, orthanc-rest or dicomweb"),
    ("{source: archive, window_days: 10, min_interval_days: 20}", "",
     "rules.0.prior: Value error, min_interval_days (20) is beyond window_days (10)"),
])
def test_prior_configuration_is_checked(tmp_path: Path, prior: str, source: str,
                                        message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "retrieve:\n  sources:\n    - {name: archive, ae_title: PACS, host: 127.0.0.1, "
        f"port: 11112{source}}}\nrules:\n  - {{name: ct, modality: [CT], prior: {prior}}}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert len(raised.value.problems) == 1
    assert message in raised.value.problems[0]


def test_a_rule_with_prior_queues_its_jobs_with_a_pending_lookup(
        tmp_path: Path, studies: dict[str, Study], clock: FakeClock) -> None:
    """The router adds the lookup with the job (``JobStore.add``), a rule without prior adds
    none; a study job too (``JobStore.add_study``), but not one recorded failed."""
    for with_prior in (True, False):
        config = _config(tmp_path / str(with_prior), free_port())
        if not with_prior:
            config.rules[0].prior = None
        index = Index(config.index_path, clock=clock)
        ingest = Ingest(config, index)
        for path in studies["current"].files:
            data = path.read_bytes()
            ingest.accept(data, lambda d=data: pydicom.dcmread(io.BytesIO(d)), "SCANNER")
        router = Router(config, index)
        queued = [job for series in index.instances.mark_stable(clock.now + 1)
                  for job in router.route(series)]
        assert len(queued) == 1
        row = index.priors.get(queued[0])
        assert (row.state if row else None) == ("pending" if with_prior else None)
    series = [JobSeries("portal_venous", "1.2.826.0.1.3680043.8.498.1", "ct-liver-basic")]
    queued_id = index.jobs.add_study(series, "1.2.826.0.1.3680043.8.498.2", "study", "a",
                                     prior=True)
    failed_id = index.jobs.add_study(series, "1.2.826.0.1.3680043.8.498.3", "study", "b",
                                     prior=True, failed="required role(s) arterial missing")
    assert index.priors.get(queued_id).state == "pending"  # type: ignore[arg-type,union-attr]
    assert index.priors.get(failed_id) is None  # type: ignore[arg-type]


def test_the_current_study_is_never_its_own_prior(
        tmp_path: Path, pacs: Pacs, studies: dict[str, Study], clock: FakeClock) -> None:
    """With min_interval_days 0 the job's own date is in the window: its own study (which the
    peer holds too) is left out by its UID, another study of that day is the prior."""
    config = _config(tmp_path, pacs.port, min_interval_days=0)
    index = Index(config.index_path, clock=clock)
    pacs.files = list(studies["current"].files)
    alone = _job(config, index, studies["current"])
    PriorFinder(config, index).tick()
    row = index.priors.get(alone)
    assert row is not None and row.state == "none"
    assert row.reason.endswith("other than this one: 0 found")
    pacs.files += studies["same_visit"].files
    job_id = index.jobs.add(studies["current"].series_uid, "1.2.826.0.1.3680043.8.498.7", "ct",
                            "ct-liver-basic", "digest", prior=True)
    assert job_id is not None
    PriorFinder(config, index).tick()
    row = index.priors.get(job_id)
    assert row is not None and row.state == "found"
    assert row.prior_study_uid == studies["same_visit"].uid


class _Planned(Exception):
    """Raised by the stand-in plan: the test needs the inputs a cluster task made, not a run."""


def test_a_cluster_task_writes_the_shipped_prior_and_passes_it_to_the_plan(
        tmp_path: Path, studies: dict[str, Study], monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_shipped_job`` on a Dask worker: the prior's images and segmentation shipped as
    bytes are written there and handed to the job's plan as ``JobInputs.prior``."""
    import pipelines.study
    from node.flow.executor import run_shipped_job
    from pipelines.study import JobInputs, PriorInputs, one_series

    current, prior = studies["current"], studies["prior"]
    inputs = JobInputs(one_series([str(p) for p in current.files[:-1]], str(current.files[-1]),
                                  "ct-liver-basic").series, str(current.files[-1]),
                       PriorInputs(tuple(str(p) for p in prior.files[:-1]), str(prior.files[-1])))
    planned: list[JobInputs] = []

    def plan(given: JobInputs, *_: object, **__: object) -> None:
        planned.append(given)
        assert given.prior is not None  # read while the task's folder exists
        assert [Path(p).read_bytes() for p in given.prior.paths] == \
            [p.read_bytes() for p in prior.files[:-1]]
        assert Path(given.prior.seg).read_bytes() == prior.files[-1].read_bytes()
        raise _Planned

    monkeypatch.setattr(pipelines.study, "study_plan", plan)
    series, seg, shipped = ship(inputs)
    with pytest.raises(_Planned):
        run_shipped_job(series, seg, (), shipped)
    assert len(planned) == 1


def test_a_prior_with_an_instance_the_node_refuses_is_not_used(
        tmp_path: Path, pacs: Pacs, studies: dict[str, Study], clock: FakeClock) -> None:
    """The peer's C-GET of the prior's CT series brings an instance of another patient: it is
    quarantined, the lookup fails at once without retry (the same would come again), the
    folder is removed and the job runs without a prior; the reason names the tag, not the
    values (patient identity)."""
    prior = studies["prior"]
    copies = []
    for path in prior.files:
        ds = pydicom.dcmread(path)
        if path == prior.files[0]:
            ds.PatientID = "ANOTHER-PATIENT"
        copy = tmp_path / "peer" / path.name
        copy.parent.mkdir(exist_ok=True)
        ds.save_as(copy)
        copies.append(copy)
    pacs.files = [*studies["current"].files, *copies]
    config = _config(tmp_path, pacs.port)
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    PriorFinder(config, index).tick()
    row = index.priors.get(job_id)
    assert row is not None and (row.state, row.attempts) == ("failed", 1)
    assert row.reason == (f"archive: series {prior.series_uid}: 1 instance(s) refused ((0010,0020) "
                          "PatientID: differs from what the request expects (values not logged: "
                          "patient identity)); not used")
    assert "ANOTHER-PATIENT" not in row.reason and PATIENT_ID not in row.reason
    assert len(list(config.quarantine_dir.glob("*.reason.json"))) == 1
    assert not (config.priors_dir / f"job-{job_id}").exists()
    assert index.jobs.claim().id == job_id  # type: ignore[union-attr]


def test_an_unexpected_error_is_bounded_like_a_network_error(
        tmp_path: Path, studies: dict[str, Study], clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a lookup raises, its job is not held back for ever: tried again, then failed
    with the error's type and first line."""
    from node.dicom.query import DicomQuery

    def broken(*_: object) -> None:
        raise RuntimeError("disk gone\nmore")

    monkeypatch.setattr(DicomQuery, "studies", broken)
    config = _config(tmp_path, free_port(), retry_interval=5, max_attempts=2)
    index = Index(config.index_path, clock=clock)
    job_id = _job(config, index, studies["current"])
    finder = PriorFinder(config, index)
    finder.tick()
    assert index.priors.get(job_id).state == "pending"  # type: ignore[union-attr]
    clock.advance(5)
    finder.tick()
    row = index.priors.get(job_id)
    assert row is not None and row.state == "failed"
    assert row.reason == "archive: RuntimeError: disk gone (gave up after 2 attempts)"
