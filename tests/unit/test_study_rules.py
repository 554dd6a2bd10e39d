"""Study rules (issue 23): several series of one study by role, one job on a segmentation drawn
on one of them. The synthetic study's CT (portal venous, with contrast) is the series the SEG is
drawn on; copies of it under new UIDs are the arterial, delayed and unenhanced series. Routing
on a real index with a fake clock: the job is queued when the required roles and the SEG are
stable, whichever comes last; a missing required role waits, then fails the job naming it; the
job runner hands the executor each role's series, the segmented one first."""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.config import ConfigError, NodeConfig, RoleRule, SeriesRule, StudyRule, load_config
from node.flow.jobs import JobRunner
from node.flow.router import Router, mismatches
from node.flow.study_router import StudyRouter
from node.ops.health import check_health
from node.ops.rule_test import folder_headers, lines, verdicts
from node.ops.status import StatusServer
from node.state import Index
from node.state.instances import InstanceRow
from node.state.jobs import JobSeries
from node.state.migrations import LATEST, MIGRATIONS
from pipelines.study import JobInputs
from tests.fake_clock import FakeClock

STUDY_STABLE_AFTER = 300.0


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(4, 32, 32))


def _copy(study: SyntheticStudy, directory: Path, description: str, number: int,
          contrast: bool = True, b_values: list[float] | None = None) -> list[Path]:
    """The study's CT series under a new Series Instance UID and new SOP Instance UIDs, with
    ``description``, Series Number ``number``, with or without Contrast/Bolus Agent, each
    instance with the next of ``b_values`` (Diffusion b-value) when given."""
    folder = directory / description
    folder.mkdir(parents=True)
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[study.ct_series_uid, description])
    paths = []
    for i, path in enumerate(study.ct_paths):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=[ds.SOPInstanceUID, description])
        ds.SeriesDescription, ds.SeriesNumber = description, number
        if not contrast:
            del ds.ContrastBolusAgent
        if b_values:
            ds.DiffusionBValue = b_values[i % len(b_values)]
        paths.append(folder / path.name)
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="module")
def phases(study: SyntheticStudy, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, list[Path]]:
    """The study's series by name: ``pv`` (the synthetic CT, which the SEG references),
    ``arterial``, ``arterial_repeat`` (a later arterial series), ``delayed``, ``native`` (no
    contrast) and ``seg``."""
    directory = tmp_path_factory.mktemp("phases")
    return {"pv": list(study.ct_paths),
            "arterial": _copy(study, directory, "ARTERIAL", 3),
            "arterial_repeat": _copy(study, directory, "ARTERIAL repeat", 7),
            "delayed": _copy(study, directory, "DELAYED", 5),
            "native": _copy(study, directory, "NATIVE arterial", 1, contrast=False),
            "seg": [study.seg_path]}


def _rule(**changes: Any) -> StudyRule:
    fields: dict[str, Any] = {
        "name": "liver-phases", "preset": "ct-liver-basic",
        "roles": {"portal_venous": RoleRule(series_description="portal|venous|pv",
                                            contrast=True),
                  "arterial": RoleRule(series_description="arterial", contrast=True,
                                       preset="ct-liver-arterial"),
                  "delayed": RoleRule(series_description="delayed", contrast=True,
                                      required=False)},
        "segmented_on": ["portal_venous"], "study_stable_after": STUDY_STABLE_AFTER}
    return StudyRule(**{**fields, **changes})


class Node:
    """An index, the series router and the study router as the node's assembly tick drives
    them (``node.service.Node.assemble``), on a fake clock."""

    def __init__(self, tmp_path: Path, clock: FakeClock, rules: list[SeriesRule] | None = None,
                 study_rules: list[StudyRule] | None = None, reprocess: str = "on_change"):
        self.clock = clock
        self.config = NodeConfig(state_dir=tmp_path, rules=rules or [],
                                 study_rules=study_rules if study_rules is not None
                                 else [_rule()], reprocess=reprocess)
        self.index = Index(self.config.index_path, clock=clock)
        self.router = Router(self.config, self.index)
        self.studies = StudyRouter(self.config, self.index, self.router.repaired)

    def receive(self, *paths: list[Path]) -> None:
        for path in (p for group in paths for p in group):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            self.index.instances.add(InstanceRow(
                ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                str(path), path.stat().st_size, "SCANNER"), ds.Modality)

    def assemble(self, after: float = 20.0) -> list[int]:
        """``after`` seconds on, every series received so far stable and routed; then the
        study rules' due waits ended."""
        self.clock.advance(after)
        queued = []
        for series in self.index.instances.mark_stable(self.clock.time() - 10.0):
            queued += self.router.route(series) + self.studies.route(series)
        return queued + self.studies.give_up_due()


def _uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _study_jobs(node: Node) -> list[tuple[Any, list[JobSeries]]]:
    return [(job, node.index.jobs.series_of(job.id)) for job in node.index.jobs.all()
            if node.index.jobs.series_of(job.id)]


class RecordingExecutor:
    """An executor that keeps what it is given and never finishes a job."""

    def __init__(self) -> None:
        self.submitted: list[JobInputs] = []

    def submit(self, inputs: JobInputs, out_dir: Path, models: Any = (),
               written: Any = None) -> Future[Any]:
        self.submitted.append(inputs)
        return Future()

    def renew(self) -> None:
        """Nothing to renew."""

    def shutdown(self) -> None:
        """Nothing to stop."""


def test_all_required_roles_queue_one_study_job_segmented_role_first(
        tmp_path: Path, clock: FakeClock, phases: dict[str, list[Path]]) -> None:
    node = Node(tmp_path, clock)
    node.receive(phases["delayed"], phases["arterial"], phases["pv"], phases["seg"])
    queued = node.assemble()
    assert len(queued) == 1
    [(job, roles)] = _study_jobs(node)
    assert [(r.role, r.series_uid, r.preset) for r in roles] == [
        ("portal_venous", _uid(phases["pv"]), "ct-liver-basic"),
        ("arterial", _uid(phases["arterial"]), "ct-liver-arterial"),
        ("delayed", _uid(phases["delayed"]), "ct-liver-basic")]
    assert (job.rule, job.preset, job.state) == ("liver-phases", "ct-liver-basic", "queued")
    assert job.source_series_uid == _uid(phases["pv"])
    assert node.index.jobs.study_waits() == []
    assert node.assemble() == []  # routed again: same inputs, nothing new

    executor = RecordingExecutor()
    JobRunner(node.config, node.index, executor).tick()
    [inputs] = executor.submitted
    assert [item.role for item in inputs.series] == ["portal_venous", "arterial", "delayed"]
    assert [item.preset for item in inputs.series] == [
        "ct-liver-basic", "ct-liver-arterial", "ct-liver-basic"]
    assert sorted(inputs.segmented.paths) == sorted(str(p) for p in phases["pv"])
    assert sorted(inputs.series[1].paths) == sorted(str(p) for p in phases["arterial"])
    assert inputs.seg == str(phases["seg"][0])


@pytest.mark.parametrize("last", ["seg", "arterial", "pv"])
def test_the_job_is_queued_when_the_last_of_its_inputs_is_stable(
        tmp_path: Path, clock: FakeClock, phases: dict[str, list[Path]], last: str) -> None:
    node = Node(tmp_path, clock)
    node.receive(*[phases[name] for name in ("seg", "arterial", "pv") if name != last])
    assert node.assemble() == []
    if last == "arterial":  # the SEG and its series are there: it waits for the required role
        assert [w.rule for w in node.index.jobs.study_waits()] == ["liver-phases"]
    node.receive(phases[last])
    assert len(node.assemble()) == 1
    [(_, roles)] = _study_jobs(node)
    assert [r.role for r in roles] == ["portal_venous", "arterial"]  # delayed is optional
    assert node.index.jobs.study_waits() == []


def test_a_missing_required_role_waits_then_fails_naming_it_and_why_each_series_does_not(
        tmp_path: Path, clock: FakeClock, phases: dict[str, list[Path]]) -> None:
    node = Node(tmp_path, clock)
    node.receive(phases["pv"], phases["delayed"], phases["native"], phases["seg"])
    assert node.assemble() == []
    assert node.index.jobs.all() == []
    assert node.assemble(after=STUDY_STABLE_AFTER - 30.0) == []  # not yet: 290 s quiet
    assert node.index.jobs.all() == []
    [failed] = node.assemble(after=20.0)  # 310 s since the study's last instance
    job = node.index.jobs.get(failed)
    assert job.state == "failed" and job.rule == "liver-phases"
    assert "\n" not in job.reason
    assert job.reason.startswith("study rule liver-phases: required role arterial missing "
                                 "300 s after the study's last instance (arterial: ")
    assert f"series {_uid(phases['pv'])} ('Portal venous 2.5 mm (synthetic)') plays " \
        "portal_venous" in job.reason
    assert (f"series {_uid(phases['delayed'])} ('DELAYED'): SeriesDescription 'DELAYED' does "
            "not match /arterial/") in job.reason
    assert (f"series {_uid(phases['native'])} ('NATIVE arterial'): ContrastBolusAgent absent "
            "or empty, contrast required") in job.reason
    assert [r.role for r in node.index.jobs.series_of(job.id)] == ["portal_venous", "delayed"]
    assert node.index.jobs.study_waits() == []
    assert node.assemble(after=STUDY_STABLE_AFTER) == []  # given up once

    # the study's trail and the status page show it
    trail = node.index.audit.study_trail(str(pydicom.dcmread(phases["pv"][0]).StudyInstanceUID))
    assert [r["id"] for r in trail["jobs"]] == [job.id]
    assert any(r["event"] == "job failed" and "required role arterial" in r["detail"]
               for r in trail["events"])
    page = StatusServer(node.config, node.index, lambda: check_health(
        node.config, node.index, True, True, None)).render_page()
    assert "required role arterial missing" in page and "portal_venous, delayed" in page

    # retried by hand without the role: it fails again at once, naming it
    executor = RecordingExecutor()
    assert node.index.jobs.retry([job.id]) == [job.id]
    JobRunner(node.config, node.index, executor).tick()
    assert executor.submitted == []
    assert node.index.jobs.get(job.id).reason.startswith(
        "study rule liver-phases: required role(s) arterial missing;")

    # the arterial series comes after all: a new job of the new inputs
    node.receive(phases["arterial"])
    [again] = node.assemble()
    rerun = node.index.jobs.get(again)
    assert rerun.state == "queued"
    assert [r.role for r in node.index.jobs.series_of(again)] == [
        "portal_venous", "arterial", "delayed"]


def test_the_highest_series_number_plays_a_role_several_series_match(
        tmp_path: Path, clock: FakeClock, phases: dict[str, list[Path]],
        caplog: pytest.LogCaptureFixture) -> None:
    node = Node(tmp_path, clock)
    node.receive(phases["pv"], phases["arterial"], phases["arterial_repeat"], phases["seg"])
    with caplog.at_level("INFO"):
        node.assemble()
    [(_, roles)] = _study_jobs(node)
    assert [(r.role, r.series_uid) for r in roles] == [
        ("portal_venous", _uid(phases["pv"])), ("arterial", _uid(phases["arterial_repeat"]))]
    [record] = [r for r in caplog.records if r.getMessage().startswith("several series")]
    assert record.fields["other_series_uids"] == [_uid(phases["arterial"])]


def test_series_rules_work_beside_study_rules(tmp_path: Path, clock: FakeClock,
                                              phases: dict[str, list[Path]]) -> None:
    node = Node(tmp_path, clock, rules=[SeriesRule(name="ct-liver")], reprocess="never")
    node.receive(phases["pv"], phases["arterial"], phases["seg"])
    assert len(node.assemble()) == 2
    series_jobs = [job for job in node.index.jobs.all() if not node.index.jobs.series_of(job.id)]
    [series_job] = series_jobs
    assert (series_job.rule, series_job.source_series_uid) == ("ct-liver", _uid(phases["pv"]))
    [(study_job, _)] = _study_jobs(node)
    assert study_job.inputs_digest != series_job.inputs_digest
    assert node.index.jobs.for_inputs(series_job.source_series_uid, series_job.seg_sop_uid,
                                      "ct-liver-basic") == [series_job]

    executor = RecordingExecutor()
    JobRunner(node.config.model_copy(update={"workers": 2}), node.index, executor).tick()
    assert sorted(tuple(i.role for i in inputs.series) for inputs in executor.submitted) == [
        ("",), ("portal_venous", "arterial")]


def test_a_segmentation_on_a_role_not_in_segmented_on_queues_no_study_job(
        tmp_path: Path, clock: FakeClock, phases: dict[str, list[Path]]) -> None:
    node = Node(tmp_path, clock, study_rules=[_rule(segmented_on=["arterial"])])
    node.receive(phases["pv"], phases["arterial"], phases["seg"])
    assert node.assemble(after=STUDY_STABLE_AFTER * 2) == []
    assert node.index.jobs.all() == [] and node.index.jobs.study_waits() == []


def test_a_forgotten_instance_of_a_role_fails_the_queued_study_job(
        tmp_path: Path, clock: FakeClock, phases: dict[str, list[Path]]) -> None:
    node = Node(tmp_path, clock)
    node.receive(phases["pv"], phases["arterial"], phases["seg"])
    [job_id] = node.assemble()
    arterial = pydicom.dcmread(phases["arterial"][0], stop_before_pixels=True).SOPInstanceUID
    node.index.instances.forget(arterial, "spool file damaged")
    assert node.index.jobs.get(job_id).state == "failed"


def _header(**values: Any) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.ImageType = values.pop("Modality", "MR"), ["ORIGINAL", "PRIMARY"]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_role_conditions_contrast_tags_and_b_values() -> None:
    dwi = RoleRule(modality=["MR"], tags={"ScanningSequence": "EP", "SequenceName": "ep_b"},
                   b_values=[0, 800], contrast=False)
    header = _header(ScanningSequence=["SE", "EP"], SequenceName="ep_b800t")
    assert mismatches(dwi, header, lambda: {0.0, 50.0, 800.5}) == []
    [missing] = mismatches(dwi, header, lambda: {0.0, 50.0})
    assert (missing.keyword, missing.reason) == ("DiffusionBValue", "lacks ['800'] (has 0, 50)")
    t2 = mismatches(dwi, _header(ScanningSequence="SE", ContrastBolusAgent="Gd"),
                    lambda: set())
    assert [m.keyword for m in t2] == ["ContrastBolusAgent", "ScanningSequence",
                                       "SequenceName", "DiffusionBValue"]
    assert t2[1].reason == "'SE' does not match /EP/" and t2[2].reason == "missing"
    # without the series' instances: the header's own b-value
    assert mismatches(RoleRule(modality=["MR"], b_values=[800]),
                      _header(DiffusionBValue=800)) == []


def _load(tmp_path: Path, study_rules: list[dict[str, Any]], **more: Any) -> NodeConfig:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"study_rules": study_rules, **more}))
    return load_config(path)


@pytest.mark.parametrize(("rule", "message"), [
    ({"name": "x", "roles": {"pv": {}}, "segmented_on": ["art"]},
     "study_rules.0: Value error, segmented_on names unknown roles ['art']; roles are ['pv']"),
    ({"name": "x", "roles": {"pv": {"required": False}}},
     "study_rules.0.roles: Value error, at least one role must be required"),
    ({"name": "x", "roles": {"portal venous": {}}},
     "study_rules.0.roles: Value error, role names must be identifiers (letters, digits, _); "
     "got ['portal venous']"),
    ({"name": "x", "roles": {"dwi": {"tags": {"SequenceNam": "ep"}}}},
     "study_rules.0.roles.dwi.tags: Value error, 'SequenceNam' is not a DICOM keyword"),
    ({"name": "x", "roles": {"dwi": {"tags": {"SequenceName": "ep("}}}},
     "study_rules.0.roles.dwi.tags: Value error, SequenceName: not a valid regular expression"),
    ({"name": "x", "roles": {"pv": {"contrast": "maybe"}}},
     "study_rules.0.roles.pv.contrast: Input should be a valid boolean"),
    ({"name": "ct-liver", "roles": {"pv": {}}},
     "Value error, rule names must be unique across rules and study_rules; repeated: ct-liver"),
])
def test_study_rule_errors_are_one_readable_line(tmp_path: Path, rule: dict[str, Any],
                                                 message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, [rule])
    [problem] = raised.value.problems
    assert message in problem and "\n" not in problem


def test_a_study_rule_loads_from_yaml_and_series_rules_keep_their_keys(tmp_path: Path) -> None:
    config = _load(tmp_path, [{
        "name": "liver-mr", "preset": "ct-liver-basic", "segmented_on": ["hbp"],
        "study_stable_after": 900,
        "roles": {"hbp": {"modality": ["MR"], "series_description": "hbp|20 ?min"},
                  "t2": {"modality": ["MR"], "tags": {"ScanningSequence": "SE"}},
                  "dwi": {"modality": ["MR"], "b_values": [0, 800], "required": False}}}],
        rules=[{"name": "ct", "modality": ["CT"], "ranges": {"SliceThickness": {"max": 5}}}])
    [rule] = config.study_rules
    assert rule.segmentable == ["hbp"] and rule.preset_of("dwi") == "ct-liver-basic"
    assert [name for name, role in rule.roles.items() if role.required] == ["hbp", "t2"]
    assert set(SeriesRule.model_fields) == {
        "name", "preset", "modality", "series_description", "ranges", "image_type_includes",
        "image_type_excludes", "priority", "prior"}


def test_an_index_of_the_previous_version_gains_the_study_tables(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:2]:
        step.apply(db)
    db.execute("PRAGMA user_version=2")
    db.execute("""INSERT INTO jobs (source_series_uid, seg_sop_uid, rule, preset, inputs_digest,
                  state, created_at) VALUES ('1.2', '1.3', 'ct-liver', 'p', 'd', 'done', 1)""")
    db.close()
    index = Index(path, clock=FakeClock())
    try:
        [job] = index.jobs.all()
        assert index.jobs.series_of(job.id) == [] and index.jobs.study_waits() == []
        assert index.jobs.for_inputs("1.2", "1.3", "p") == [job]
        assert index.jobs.add_study([JobSeries("pv", "1.2", "p"), JobSeries("art", "1.4", "p")],
                                    "1.3", "study", "d2") is not None
    finally:
        index.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == LATEST


def test_rules_test_shows_each_series_role_verdict(tmp_path: Path,
                                                   phases: dict[str, list[Path]]) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("pv", "arterial", "native", "seg"):
        for path in phases[name]:
            (folder / f"{name}-{path.name}").write_bytes(path.read_bytes())
    paths: dict[str, list[str]] = {}
    headers = folder_headers(folder, paths)
    out = lines(verdicts([], headers, [_rule()], paths))
    text = "\n".join(out)
    pv, arterial, native = (_uid(phases[n]) for n in ("pv", "arterial", "native"))
    assert "  study rule liver-phases: role portal_venous" in \
        out[out.index(next(line for line in out if line.startswith(f"series {pv}"))) + 1]
    assert f"series {arterial} (CT, 'ARTERIAL'): matches no rule\n" \
        "  study rule liver-phases: role arterial" in text
    assert f"series {native} (CT, 'NATIVE arterial'): matches no rule\n" \
        "  study rule liver-phases: no role (portal_venous: SeriesDescription 'NATIVE arterial' " \
        "does not match /portal|venous|pv/; arterial: ContrastBolusAgent absent or empty, " \
        "contrast required; delayed: SeriesDescription" in text
