"""Feature extraction reproduces pyradiomics' published baselines through the Preset machinery:
every column of brain2 and breast1 (default, _2d, _FBN, _combined, _flatRegion, _normalization,
_resampling, _resegmentation) through extract_lesions, the pipeline's multi-ROI path; its tasks
give the same values wherever they run."""

import ast
import csv
import logging
import pickle
import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from radiomics.featureextractor import RadiomicsFeatureExtractor

import pipelines.science.features as features_module
from pipelines.plan import run_tasks
from pipelines.science.features import (
    ArrayImage,
    FeatureError,
    FeatureTask,
    RoiFeatures,
    TaskResult,
    extract_features,
    extract_lesions,
    features_plan,
    validated_extractor,
)
from pipelines.science.presets import Preset, load_preset
from pipelines.science.rois import RoiMask

CASES = ("brain2", "breast1")
CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
RELATIVE_TOLERANCE = 1e-6


@cache
def _image_and_mask(data_dir: Path, case: str) -> tuple[sitk.Image, sitk.Image]:
    return (
        sitk.ReadImage(str(data_dir / f"{case}_image.nrrd")),
        sitk.ReadImage(str(data_dir / f"{case}_label.nrrd")),
    )


@cache
def _baseline(data_dir: Path, feature_class: str) -> list[list[str]]:
    with (data_dir / "baseline" / f"baseline_{feature_class}.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def _baseline_column(data_dir: Path, feature_class: str, column: str) -> dict[str, str]:
    rows = _baseline(data_dir, feature_class)
    index = rows[0].index(column)
    return {row[0]: row[index] for row in rows[1:]}


def _columns(data_dir: Path) -> list[tuple[str, str]]:
    """(feature class, column) for every brain2/breast1 column; shape2D needs absent images."""
    return [
        (feature_class, column)
        for feature_class in CLASSES
        for column in _baseline(data_dir, feature_class)[0][1:]
        if column.split("_")[0] in CASES
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "baseline_column" in metafunc.fixturenames:
        from tests.conftest import REFDATA

        data_dir = REFDATA / "pyradiomics" / "data"
        columns = _columns(data_dir) if data_dir.is_dir() else [("firstorder", "brain2")]
        metafunc.parametrize(
            "baseline_column", columns, ids=[f"{c}-{k}" for k, c in columns]
        )


def test_every_brain2_and_breast1_column_is_parametrised(refdata: Path) -> None:
    columns = _columns(refdata / "pyradiomics" / "data")
    suffixes = {column.partition("_")[2] for _, column in columns}
    assert suffixes == {"", "2d", "FBN", "combined", "flatRegion", "normalization",
                        "resampling", "resegmentation"}
    # per case: glcm 8, glrlm 8, glszm 7, gldm 7, ngtdm 7, shape 2, firstorder 4 columns
    assert len(columns) == 2 * (8 + 8 + 7 + 7 + 7 + 2 + 4)


def test_reproduces_pyradiomics_baseline(
    refdata: Path, baseline_column: tuple[str, str]
) -> None:
    feature_class, column = baseline_column
    data_dir = refdata / "pyradiomics" / "data"
    baseline = _baseline_column(data_dir, feature_class, column)
    preset = Preset(
        name=f"baseline-{column}-{feature_class}",
        description="settings of pyradiomics' baseline column",
        radiomics={
            "setting": ast.literal_eval(baseline["diagnostics_Configuration_Settings"]),
            "imageType": ast.literal_eval(baseline["diagnostics_Configuration_EnabledImageTypes"]),
            "featureClass": {feature_class: None},
        },
    )
    image, mask = _image_and_mask(data_dir, column.split("_")[0])
    roi = RoiMask("intra", sitk.Cast(mask == 1, sitk.sitkUInt8), (0, 0, 0))
    [lesion] = extract_lesions(image, [[roi]], preset)
    features = lesion["intra"]

    expected = {k: float(v) for k, v in baseline.items() if not k.startswith("diagnostics_")}
    assert set(features.values) == set(expected)
    deviations = {}
    for key, want in expected.items():
        got = features.values[key]
        if want == 0:
            assert got == 0, key
        else:
            deviations[key] = abs(1 - got / want)
    worst = max(deviations, key=deviations.get)
    assert deviations[worst] < RELATIVE_TOLERANCE, (worst, features.values[worst], expected[worst])


def test_ct_liver_basic_computes_all_classes_and_separates_diagnostics(refdata: Path) -> None:
    image, mask = _image_and_mask(refdata / "pyradiomics" / "data", "brain2")
    features = extract_features(image, mask, load_preset("ct-liver-basic"))
    assert isinstance(features, RoiFeatures)
    assert {key.split("_")[1] for key in features.values} == set(CLASSES)
    assert all(key.startswith("original_") for key in features.values)
    assert all(type(value) is float for value in features.values.values())
    assert features.diagnostics
    assert all(key.startswith("diagnostics_") for key in features.diagnostics)
    assert all(isinstance(value, str) for value in features.diagnostics.values())
    assert features.diagnostics["diagnostics_Configuration_EnabledImageTypes"] == "{'Original': {}}"


def test_label_selects_the_roi(refdata: Path) -> None:
    image, mask = _image_and_mask(refdata / "pyradiomics" / "data", "brain2")
    relabelled = sitk.Cast(mask, sitk.sitkUInt8) * 7
    preset = Preset(
        name="voxel-count",
        description="shape only",
        radiomics={"featureClass": {"shape": ["VoxelVolume"]}},
    )
    at_seven = extract_features(image, relabelled, preset, label=7)
    at_one = extract_features(image, mask, preset, label=1)
    assert at_seven.values == at_one.values
    with pytest.raises(FeatureError, match=r"preset voxel-count, label 3: pyradiomics: .*[Ll]abel"):
        extract_features(image, relabelled, preset, label=3)


def test_pyradiomics_info_logging_is_kept_off_stderr(
    refdata: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    image, mask = _image_and_mask(refdata / "pyradiomics" / "data", "breast1")
    preset = Preset(name="p", description="d", radiomics={"featureClass": {"firstorder": None}})
    with caplog.at_level(logging.DEBUG, logger="pipelines"):
        extract_features(image, mask, preset)
    assert capfd.readouterr().err == ""
    assert not [r for r in caplog.records if r.name.startswith("radiomics") and r.levelno < 30]


def test_tasks_run_anywhere_give_the_serial_values_in_the_serial_order(tmp_path: Path) -> None:
    """features_plan's tasks (one per lesion and image type, LoG per sigma) through a map that
    pickles each task and its result, as a Dask worker receives them: the same values, keys and
    diagnostics, in the same order, as the serial path; no SimpleITK object in a task."""
    from demo.synthetic import write_synthetic_study
    from pipelines.io.segmentation import read_segmentation
    from pipelines.io.series import read_series
    from pipelines.science.rois import build_variants

    study = write_synthetic_study(tmp_path, shape=(10, 48, 48))
    volume = read_series(list(study.ct_paths))
    preset = load_preset("ct-liver-crlm")  # resampling; Original, LoG 3 and 5 mm, Wavelet
    lesions = [build_variants(volume.image, segment, preset.rois.variants, preset.rois.hu_ranges)
               for segment in read_segmentation(study.seg_path, volume).segments]
    shipped: list[FeatureTask] = []

    def pickling_map(fn: Callable[[FeatureTask], TaskResult],
                     tasks: Iterable[FeatureTask]) -> Iterator[TaskResult]:
        for task in tasks:
            data = pickle.dumps(task, protocol=5)
            assert b"SimpleITK" not in data
            shipped.append(pickle.loads(data))
            yield pickle.loads(pickle.dumps(fn(shipped[-1]), protocol=5))

    serial = extract_lesions(volume.image, lesions, preset)
    mapped = run_tasks(features_plan(volume.image, lesions, preset), pickling_map)

    units = [(t.unit.image_type, t.unit.custom.get("sigma")) for t in shipped[:4]]
    assert units == [("Original", None), ("LoG", [3.0]), ("LoG", [5.0]), ("Wavelet", None)]
    assert len(shipped) == 4 * len(lesions) == 8
    assert [t.head for t in shipped] == [True, False, False, False] * len(lesions)
    for by_name, by_name_mapped, rois in zip(serial, mapped, lesions, strict=True):
        assert list(by_name) == list(by_name_mapped) == [roi.name for roi in rois]
        for name, features in by_name.items():
            assert list(features.values.items()) == list(by_name_mapped[name].values.items())
            assert features.diagnostics == by_name_mapped[name].diagnostics
            assert len(features.values) == 14 + 93 * 11  # shape + 11 images x 93 features


def test_array_image_keeps_pixels_type_and_geometry(refdata: Path) -> None:
    image, _ = _image_and_mask(refdata / "pyradiomics" / "data", "breast1")
    again = ArrayImage.of(image).image()
    assert again.GetPixelID() == image.GetPixelID()
    assert (again.GetOrigin(), again.GetSpacing(), again.GetDirection()) == \
        (image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    assert (sitk.GetArrayViewFromImage(again) == sitk.GetArrayViewFromImage(image)).all()


def test_complex_values_with_a_rounding_imaginary_part_are_taken_as_real_and_others_refused():
    """NumPy may give pyradiomics' eigenvalue-based features as complex numbers (NumPy 2.5.2
    warned on every job); one with a zero or rounding-size imaginary part is its real part, with
    no ComplexWarning, and one with a real imaginary part fails the extraction, naming the key."""
    from pipelines.science.features import _as_features

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features = _as_features({"original_shape_MajorAxisLength": np.complex128(12.5 + 0j),
                                 "original_glcm_MCC": np.complex128(0.5 + 1e-12j),
                                 "original_firstorder_Mean": np.float64(3.0)}, "test ROI")
    assert features.values == {"original_shape_MajorAxisLength": 12.5, "original_glcm_MCC": 0.5,
                               "original_firstorder_Mean": 3.0}
    with pytest.raises(FeatureError, match="original_glcm_MCC: not a real number"):
        _as_features({"original_glcm_MCC": np.complex128(0.5 + 0.01j)}, "test ROI")


def test_validated_extractors_are_copies_made_once_per_parameters() -> None:
    """pyradiomics validates its parameters (pykwalify) once per process and parameters; each
    caller gets its own copy, with the same settings, and invalid parameters are refused every
    time."""
    made: list[dict] = []

    class Counted(RadiomicsFeatureExtractor):
        def __init__(self, params: dict) -> None:
            made.append(params)
            super().__init__(params)

    preset = load_preset("ct-liver-crlm")
    first = validated_extractor(preset.radiomics, Counted)
    second = validated_extractor(preset.radiomics, Counted)
    assert len(made) == 1 and first is not second and isinstance(first, Counted)
    assert first.settings == second.settings and first.enabledImagetypes == \
        second.enabledImagetypes and first.enabledFeatures == second.enabledFeatures
    first.settings["binWidth"] = 1
    assert validated_extractor(preset.radiomics, Counted).settings["binWidth"] == 25
    other = {**preset.radiomics, "setting": {**preset.settings, "binWidth": 10}}
    assert validated_extractor(other, Counted).settings["binWidth"] == 10 and len(made) == 2
    for width in range(features_module.VALIDATED_KEPT):  # 64 more: the first two are dropped
        validated_extractor({**preset.radiomics, "setting": {**preset.settings,
                                                             "binWidth": 100 + width}}, Counted)
    validated_extractor(other, Counted)
    validated_extractor(preset.radiomics, Counted)
    assert len(made) == 2 + features_module.VALIDATED_KEPT + 2
    bad = {**preset.radiomics, "setting": {**preset.settings, "binWidth": "wide"}}
    for _ in range(2):
        with pytest.raises(RuntimeError, match="binWidth"):  # pykwalify's SchemaError
            validated_extractor(bad, Counted)
