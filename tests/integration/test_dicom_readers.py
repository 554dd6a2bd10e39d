"""Readers written by others read every object the demo writes (issue 17, item 4): the demo's
synthetic study through ``pipelines.process.job_plan`` with the preset ct-liver-crlm and the
shipped demo model, once per module (shared by the xdist workers of a run), then

* dcmqi: ``tid1500reader`` parses both reports, and every value it extracts from the feature
  report equals features.csv to the decimal string (DS) the NUM carries, each identified by
  (Tracking Identifier, the group's Measurement Method, quantity code) with none shared and none
  missing, and it keeps every Algorithm Parameters item; the reading report's numbers equal
  features.csv and the model's output. ``segimage2itkimage`` reads the derived and the input SEG
  with every segment's voxel count equal to highdicom's; ``paramap2itkimage`` reads both maps
  with the values pydicom reads;
* PixelMed: ``DicomSRValidator`` validates both reports with 0 errors in a bounded heap, each
  document it reads parsed once (tests/integration/readers.py says why), and
  ``DicomInstanceValidator`` every object whose IOD it knows with 0 errors;
* dicom3tools: ``dciodvfy`` 0 errors on every object.

docs/outputs.md says which object is for whom."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import pickle
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pydicom.valuerep import DS

from demo.synthetic import write_synthetic_study
from models.shipped import DEMO_PACKAGE, DEMO_SHA256
from node.flow.executor import run_in_process
from pipelines.outputs.codes import PRIVATE_SCHEME, feature_concept, image_filter_concept
from pipelines.outputs.result import PipelineResult
from pipelines.process import job_plan
from pipelines.science.inference import ModelOutput
from tests.integration import readers
from tests.unit.outputs_case import dciodvfy

pytestmark = pytest.mark.integration

SHAPE = (40, 256, 256)  # the demo's study (docs/outputs.md)
PRESET = "ct-liver-crlm"

ROLES = {  # object -> its SOP class; the two maps in the order the result lists them
    "reading report": ComprehensiveSRStorage,
    "feature report": Comprehensive3DSRStorage,
    "derived SEG": SegmentationStorage,
    "parametric map 1": ParametricMapStorage,
    "parametric map 2": ParametricMapStorage,
    "summary image": SecondaryCaptureImageStorage,
}
SR_ROLES = ("reading report", "feature report")
STOCK_HEAP = "2g"  # PixelMed alone on the reading report: 0.7 GB live, slow to collect in 1 GB
MAP_ROLES = ("parametric map 1", "parametric map 2")

MODEL_PROBABILITY = ("model.prob", PRIVATE_SCHEME)  # pipelines.outputs.evaluations.model_items
ORIGINAL = "original"  # pyradiomics' image type of the unfiltered image
SD_OF_INTENSITY = (codes.SCT.StandardDeviation.value, codes.SCT.StandardDeviation.scheme_designator)
VARIANCE = "original_firstorder_Variance"  # the reading report's SD is its square root

Identity = tuple[str, str, str, str]
"""(Tracking Identifier, Measurement Method code value, quantity code value, its scheme)."""


@dataclass(frozen=True)
class Demo:
    """The demo's outputs and what they were made from."""

    result: PipelineResult
    input_seg: Path
    rows: tuple[dict[str, str], ...]  # features.csv
    modality: str

    def path(self, role: str) -> Path:
        """The file of the object ``role`` (a key of ``ROLES``)."""
        of_class = [o.path for o in self.result.objects if o.sop_class_uid == ROLES[role]]
        number = int(role.rsplit(" ", 1)[1]) if role in MAP_ROLES else 1
        assert len(of_class) >= number, f"no {role} among {self.result.objects}"
        return of_class[number - 1]


def _build_demo(directory: Path) -> Demo:
    study = write_synthetic_study(directory / "study", shape=SHAPE)
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, PRESET, directory / "results",
                                     models=[(DEMO_PACKAGE, DEMO_SHA256)]))
    with result.features_csv.open(newline="") as handle:
        rows = tuple(csv.DictReader(handle))
    modality = str(pydicom.dcmread(study.ct_paths[0], stop_before_pixels=True).Modality)
    return Demo(result, Path(study.seg_path), rows, modality)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo, made once per test run: under pytest-xdist the first worker to get here makes
    it in the run's shared temporary directory and the others load it from there."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's directory, above each worker's own
    directory = root / "dicom-readers-demo"
    saved = directory / "demo.pickle"
    with _locked(root / "dicom-readers-demo.lock"):
        if saved.is_file():
            return pickle.loads(saved.read_bytes())
        built = _build_demo(directory)
        saved.write_bytes(pickle.dumps(built))
        return built


def test_the_demo_writes_the_objects_the_readers_read(demo: Demo) -> None:
    """Two reports, a derived SEG, two parametric maps (ct-liver-crlm maps two features) and
    a summary image: the objects the tests below take by role."""
    written = Counter(o.sop_class_uid for o in demo.result.objects)
    assert written == Counter(ROLES.values()), demo.result.objects


# dcmqi ------------------------------------------------------------------------------------------

def _tracking_identifier(label: str, roi_variant: str) -> str:
    """The Tracking Identifier of a features.csv row's ROI: the segment label, "<label> / <ROI
    variant>" for a variant derived from it (``pipelines.science.results.RoiResult``)."""
    return label if roi_variant in ("", "intra") else f"{label} / {roi_variant}"


def _as_written(value: float | str) -> float:
    """The number a NUM's Numeric Value (0040,A30A), DS, carries for ``value``: the 16
    characters highdicom and the node's encoder write (``DS(..., auto_format=True)``), read
    back (``float`` of the DS itself would give the double it was made from)."""
    return float(str(DS(float(value), auto_format=True)))


def _model_outputs(demo: Demo) -> dict[str, float]:
    """Tracking Identifier of each lesion as drawn -> the probability the model gave it."""
    labels = {lesion.segment_number: lesion.label for lesion in demo.result.lesions}
    return {labels[model.segment_number]: model.outcome.probability
            for model in demo.result.models if isinstance(model.outcome, ModelOutput)}


def _expected_features(demo: Demo) -> dict[Identity, tuple[str, str]]:
    """Identity -> (features.csv value, UCUM unit code) of every features.csv row, and of the
    model's output, which the feature report gives in the lesion's group of the original image."""
    expected: dict[Identity, tuple[str, str]] = {}
    for row in demo.rows:
        concept = feature_concept(row["feature"], demo.modality)
        identity = (_tracking_identifier(row["segment_label"], row["roi_variant"]),
                    image_filter_concept(concept.image_filter).value,
                    concept.name.value, concept.name.scheme_designator)
        assert identity not in expected, f"features.csv gives {identity} twice"
        expected[identity] = (row["value"], concept.unit.value)
    for tracking, probability in _model_outputs(demo).items():
        identity = (tracking, image_filter_concept(ORIGINAL).value, *MODEL_PROBABILITY)
        expected[identity] = (repr(probability), "1")
    return expected


def _found(document: dict) -> list[tuple[Identity, dict]]:
    """(identity, dcmqi's item) of every measurement dcmqi extracted, in document order."""
    return [((group.get("TrackingIdentifier", ""),
              group.get("measurementMethod", {}).get("CodeValue", ""),
              item["quantity"]["CodeValue"], item["quantity"]["CodingSchemeDesignator"]), item)
            for group in document.get("Measurements", []) for item in group["measurementItems"]]


@pytest.fixture(scope="module")
def dcmqi_reports(demo: Demo, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[readers.ToolRun, dict]]:
    """Role -> (``tid1500reader`` run, the JSON it wrote) of both reports."""
    directory = tmp_path_factory.mktemp("tid1500reader")
    return {role: readers.tid1500reader(demo.path(role), directory) for role in SR_ROLES}


@pytest.mark.parametrize("role", SR_ROLES)
def test_dcmqi_parses_the_report(role: str, dcmqi_reports: dict) -> None:
    """Exit status 0, no error line, a measurement group for each of the report's groups."""
    run, document = dcmqi_reports[role]
    assert run.completed and not run.errors, run.describe()
    assert document.get("Measurements"), run.describe()


def test_dcmqi_extracts_every_feature_distinctly_and_equal_to_features_csv(
        demo: Demo, dcmqi_reports: dict, record_property: pytest.RecordProperty) -> None:
    """Every value ``tid1500reader`` extracts from the feature report is one of features.csv's
    (or the model's output), told apart from all others by (Tracking Identifier, the group's
    Measurement Method, quantity), equal to the csv's double written as DS, with its UCUM
    unit; and every features.csv row is among them."""
    run, document = dcmqi_reports["feature report"]
    found = _found(document)
    expected = _expected_features(demo)
    shared = {identity: n for identity, n in Counter(i for i, _ in found).items() if n > 1}
    assert not shared, (f"{len(shared)} identities dcmqi cannot tell apart, e.g. "
                        f"{list(shared.items())[:5]}\n{run.describe(20)}")
    by_identity = dict(found)
    missing = sorted(set(expected) - set(by_identity))
    unknown = sorted(set(by_identity) - set(expected))
    assert not missing, f"{len(missing)} of {len(expected)} values not found, e.g. {missing[:5]}"
    assert not unknown, f"{len(unknown)} values not in features.csv, e.g. {unknown[:5]}"
    differ = [(identity, item["value"], expected[identity][0])
              for identity, item in by_identity.items()
              if float(item["value"]) != _as_written(expected[identity][0])]
    assert not differ, f"{len(differ)} values differ (dcmqi, csv), e.g. {differ[:5]}"
    units = [(identity, item["units"]["CodeValue"], expected[identity][1])
             for identity, item in by_identity.items()
             if (item["units"]["CodeValue"], item["units"]["CodingSchemeDesignator"])
             != (expected[identity][1], "UCUM")]
    assert not units, f"{len(units)} units differ (dcmqi, expected), e.g. {units[:5]}"
    relative = max(abs(float(item["value"]) - float(expected[identity][0]))
                   / max(abs(float(expected[identity][0])), np.finfo(float).tiny)
                   for identity, item in by_identity.items())
    record_property("values_compared", len(by_identity))
    record_property("max_relative_difference_to_double", relative)


def _groups(path: Path) -> list[Dataset]:
    """The Measurement Group containers (DCM 125007) of the report, in document order."""
    report = pydicom.dcmread(path)
    [measurements] = [item for item in report.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return [item for item in measurements.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "125007"]


def _texts(group: Dataset, code: str) -> list[str]:
    return [str(item.TextValue) for item in group.ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code]


@pytest.mark.parametrize("role", SR_ROLES)
def test_dcmqi_keeps_every_algorithm_parameter(role: str, demo: Demo,
                                               dcmqi_reports: dict) -> None:
    """Each group's Algorithm Name, Version and every Algorithm Parameters item (TID 4019) as
    pydicom reads them are what dcmqi gives, and the parameters name the preset and its hash."""
    run, document = dcmqi_reports[role]
    groups = _groups(demo.path(role))
    assert len(document.get("Measurements", [])) == len(groups), run.describe(20)
    for group, read in zip(groups, document["Measurements"], strict=True):
        algorithm = read.get("measurementAlgorithmIdentification", {})
        assert ([algorithm.get("AlgorithmName")], [algorithm.get("AlgorithmVersion")],
                algorithm.get("AlgorithmParameters", [])) == (
                    _texts(group, "111001"), _texts(group, "111003"), _texts(group, "111002"))
        parameters = " ".join(algorithm["AlgorithmParameters"])
        assert demo.result.preset in parameters and demo.result.preset_hash in parameters


def test_dcmqi_reads_the_reading_reports_numbers_and_joins_them_to_the_feature_report(
        demo: Demo, dcmqi_reports: dict, record_property: pytest.RecordProperty) -> None:
    """Each reading group's numbers are its ROI's features of the original image in
    features.csv, the standard deviation of intensity the square root of its variance, the
    model's output the lesion's; each lesion as drawn of features.csv has a group, with the
    Tracking Identifier and Tracking Unique Identifier of its groups in the feature report."""
    _, document = dcmqi_reports["reading report"]
    original = {identity[:1] + identity[2:]: value
                for identity, (value, _) in _expected_features(demo).items()
                if identity[1] == image_filter_concept(ORIGINAL).value}
    variances = {_tracking_identifier(row["segment_label"], row["roi_variant"]): row["value"]
                 for row in demo.rows if row["feature"] == VARIANCE}
    compared, wrong = 0, []
    for group in document["Measurements"]:
        tracking = group["TrackingIdentifier"]
        quantities = Counter((i["quantity"]["CodeValue"], i["quantity"]["CodingSchemeDesignator"])
                             for i in group["measurementItems"])
        assert max(quantities.values()) == 1, f"{tracking}: a quantity twice: {quantities}"
        for item in group["measurementItems"]:
            quantity = (item["quantity"]["CodeValue"], item["quantity"]["CodingSchemeDesignator"])
            if quantity == SD_OF_INTENSITY:
                want: float | str | None = math.sqrt(float(variances[tracking]))
            else:
                want = original.get((tracking, *quantity))
            if want is None or float(item["value"]) != _as_written(want):
                wrong.append((tracking, quantity, item["value"], want))
            compared += 1
    assert not wrong, f"reading report values not as features.csv (dcmqi, csv): {wrong[:8]}"
    # a group per lesion as drawn (pipelines.outputs.reading_report: none for a derived ROI)
    rois = {_tracking_identifier(row["segment_label"], row["roi_variant"]) for row in demo.rows
            if row["roi_variant"] in ("", "intra")}
    reading = {(g["TrackingIdentifier"], g["TrackingUniqueIdentifier"])
               for g in document["Measurements"]}
    _, features = dcmqi_reports["feature report"]
    feature = {(g["TrackingIdentifier"], g["TrackingUniqueIdentifier"])
               for g in features["Measurements"]}
    assert {tracking for tracking, _ in reading} == rois
    assert reading <= feature
    record_property("values_compared", compared)


def _segment_voxels(path: Path) -> dict[str, int]:
    """Segment label -> voxels in the segment, as highdicom reads the SEG."""
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))
    counts = {}
    for number in seg.segment_numbers:
        label = seg.get_segment_description(number).segment_label
        volume = seg.get_volume(segment_numbers=[number])
        counts[label] = int(np.count_nonzero(volume.array))
    assert len(counts) == len(seg.segment_numbers), "segment labels are not unique"
    return counts


@pytest.mark.parametrize("role", ["derived SEG", "input SEG"])
def test_dcmqi_reads_each_segment_with_highdicoms_voxels(role: str, demo: Demo,
                                                         tmp_path: Path) -> None:
    """``segimage2itkimage`` writes one image per segment (its label in meta.json) with as
    many voxels set as highdicom reads in that segment, for every segment of the SEG."""
    path = demo.input_seg if role == "input SEG" else demo.path(role)
    run = readers.segimage2itkimage(path, tmp_path)
    assert run.completed and not run.errors, run.describe()
    attributes = json.loads((tmp_path / "meta.json").read_text())["segmentAttributes"]
    read: dict[str, int] = {}
    for number, segments in enumerate(attributes, 1):
        [segment] = segments  # one segment per file when not merged
        image = sitk.ReadImage(str(tmp_path / f"{number}.nrrd"))
        read[segment["SegmentLabel"]] = int(np.count_nonzero(sitk.GetArrayViewFromImage(image)))
    assert read == _segment_voxels(path), run.describe(20)


@pytest.mark.parametrize("role", MAP_ROLES)
def test_dcmqi_reads_each_map_with_pydicoms_values(role: str, demo: Demo,
                                                   tmp_path: Path) -> None:
    """``paramap2itkimage``'s image holds, at the position of each frame of the map, that
    frame's values as pydicom reads them (float32 both ways: equal, not close)."""
    path = demo.path(role)
    run = readers.paramap2itkimage(path, tmp_path)
    assert run.completed and not run.errors, run.describe()
    image = sitk.ReadImage(str(tmp_path / "pmap.nrrd"))
    array = sitk.GetArrayFromImage(image)
    pm = pydicom.dcmread(path)
    frames = pm.pixel_array.reshape(-1, pm.Rows, pm.Columns)
    assert array.shape[1:] == (pm.Rows, pm.Columns) and array.shape[0] == len(frames)
    for frame, group in zip(frames, pm.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        column, row, slice_index = image.TransformPhysicalPointToIndex(position)
        assert (column, row) == (0, 0)
        np.testing.assert_array_equal(array[slice_index], frame)


# PixelMed ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``CachingDocumentsTransformerFactory`` compiled (``readers.caching_factory``)."""
    return readers.caching_factory(tmp_path_factory.mktemp("java"))


@pytest.mark.parametrize("role", SR_ROLES)
def test_pixelmed_validates_the_report_in_a_bounded_heap(role: str, demo: Demo,
                                                         factory: Path) -> None:
    """``DicomSRValidator`` (template TID 1500 and the SR IOD), each document it reads parsed
    once (``readers.sr_validator``), runs to its end within ``readers.PIXELMED_HEAP`` of Java
    heap and reports 0 errors."""
    run = readers.sr_validator(demo.path(role), factory)
    assert run.completed, run.describe()
    assert "Root Template Validation Complete" in run.lines, run.describe()
    assert "IOD validation complete" in run.lines, run.describe()
    assert not run.errors, run.describe()


def test_pixelmed_prints_the_same_with_each_document_parsed_once(demo: Demo,
                                                                 factory: Path) -> None:
    """On the reading report, which PixelMed as Debian ships it validates in a bounded heap as
    well (``STOCK_HEAP``: it keeps a copy of its context groups per lookup),
    ``readers.sr_validator`` prints exactly what ``DicomSRValidator`` prints alone."""
    path = demo.path("reading report")
    alone = readers.pixelmed("DicomSRValidator", path, heap=STOCK_HEAP)
    assert alone.completed, alone.describe()
    assert readers.sr_validator(path, factory).lines == alone.lines


PIXELMED_LATERALITY = "GeneralSeriesModule/Laterality/: : Missing conditional attribute"
"""The one error PixelMed reports on a SEG of the liver: its rule asks for General Series
Laterality (0020,0060) whenever no Image or Frame Laterality is sent, while PS3.3 C.7.3.1 makes
it Type 2C, required only for a paired body part (dciodvfy reports its presence as an error for
BodyPartExamined ABDOMEN, copied from the source). PixelMed reports it on the input SEG too."""


def _pixelmed_errors(path: Path, iod: str) -> list[str]:
    run = readers.pixelmed("DicomInstanceValidator", path)
    assert run.completed, run.describe()
    assert f"Found {iod} IOD" in run.lines, run.describe()
    assert "IOD validation complete" in run.lines, run.describe()
    return run.errors


@pytest.mark.parametrize("role", [role for role in ROLES if role not in SR_ROLES])
def test_pixelmed_validates_every_iod_it_knows(role: str, demo: Demo) -> None:
    """``DicomInstanceValidator`` reports 0 errors on each object but the reports (whose IOD
    ``DicomSRValidator`` checks) whose IOD it checks (the IODs its compiled stylesheet lists;
    for the others it prints "IOD (SOP Class) unrecognized" and checks nothing, and dciodvfy
    checks them), except, on a SEG, the Laterality error on which PixelMed departs from the
    standard (``PIXELMED_LATERALITY``), which it reports on the input SEG as well."""
    path = demo.path(role)
    sop_class = str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
    iods = readers.pixelmed_iods()
    if sop_class not in iods:
        pytest.skip(f"PixelMed's DicomInstanceValidator has no IOD for {role} "
                    f"({pydicom.uid.UID(sop_class).name}); it checks only {sorted(iods.values())}")
    errors = _pixelmed_errors(path, iods[sop_class])
    if sop_class == SegmentationStorage:
        assert any(PIXELMED_LATERALITY in line
                   for line in _pixelmed_errors(demo.input_seg, iods[sop_class]))
        errors = [line for line in errors if PIXELMED_LATERALITY not in line]
    assert not errors, "\n".join(errors)


# dicom3tools ------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", list(ROLES))
def test_dciodvfy_finds_no_error(role: str, demo: Demo) -> None:
    """dciodvfy: 0 errors (a deflated map is checked as the same data set in Explicit VR
    Little Endian, ``tests.unit.outputs_case.dciodvfy``)."""
    readers.tool("dciodvfy")
    errors, warnings = dciodvfy(demo.path(role))
    assert not errors, "\n".join([*errors, *sorted(set(warnings))])
