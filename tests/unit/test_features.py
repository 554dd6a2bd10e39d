"""Feature extraction reproduces pyradiomics' published baselines through the Preset machinery."""

import ast
import csv
import logging
from functools import cache
from pathlib import Path

import pytest
import SimpleITK as sitk

from pipelines.features import FeatureError, RoiFeatures, extract_features
from pipelines.presets import Preset, load_preset

CASES = ("brain2", "breast1")
CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
RELATIVE_TOLERANCE = 1e-6


@cache
def _image_and_mask(data_dir: Path, case: str) -> tuple[sitk.Image, sitk.Image]:
    return (
        sitk.ReadImage(str(data_dir / f"{case}_image.nrrd")),
        sitk.ReadImage(str(data_dir / f"{case}_label.nrrd")),
    )


def _baseline_column(data_dir: Path, feature_class: str, case: str) -> dict[str, str]:
    with (data_dir / "baseline" / f"baseline_{feature_class}.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index(case)
    return {row[0]: row[column] for row in rows[1:]}


@pytest.mark.parametrize("feature_class", CLASSES)
@pytest.mark.parametrize("case", CASES)
def test_reproduces_pyradiomics_baseline(refdata: Path, case: str, feature_class: str) -> None:
    data_dir = refdata / "pyradiomics" / "data"
    baseline = _baseline_column(data_dir, feature_class, case)
    preset = Preset(
        name=f"baseline-{case}-{feature_class}",
        description="settings of pyradiomics' baseline column",
        radiomics={
            "setting": ast.literal_eval(baseline["diagnostics_Configuration_Settings"]),
            "imageType": ast.literal_eval(baseline["diagnostics_Configuration_EnabledImageTypes"]),
            "featureClass": {feature_class: None},
        },
    )
    features = extract_features(*_image_and_mask(data_dir, case), preset)

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
