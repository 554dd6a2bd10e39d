"""Plausibility of an ROI as a lesion (pipelines.science.qc.plausibility, issue 20 item 6): a
whole-volume "lesion" of air fails on its volume and air fraction, in qc.csv rows, SR and summary
lines alike; real lesions pass; MR is not held to Hounsfield units; an organ measured as such is not
checked; the preset limit leaves the hash of every shipped preset as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from pydantic import ValidationError

from demo.synthetic import write_synthetic_study
from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import SeriesVolume, read_series
from pipelines.outputs.evaluations import STATUS, qc_evaluations, qc_findings, qc_lines
from pipelines.science.presets import Preset, PresetError, load_preset
from pipelines.science.qc import QCSettings, assess_roi, assess_series
from tests.unit.qc_volumes import ball, make_volume, mask_like

PLAUSIBILITY = ("lesion.volume", "lesion.air", "lesion.fat")
# Hashes of the shipped presets before rois.max_lesion_volume_ml existed: a preset that does not
# set it keeps its hash (Preset.hash, _ADDED_LATER), which model packages and results name.
SHIPPED_HASHES = {
    "ct-liver-basic": "0beac344dd02151f4db0612189f4872c62b4bde1f0728e2f4a52dca5326d8ca4",
    "ct-liver-crlm": "19e6963d5a11494032c59adb2791d5035e9565833a6defa5026f5cf1e8601673",
    "mr-liver-hcc": "57264a950859e2f166932a800fda64eba6c3617e260bb824eda48acb97b7ad3d",
    "ibsi-digital-phantom": "cb1b3176d1c82e4a31a4440669368071ae2c6f29061d1d1b8614c1778c276de1",
}


def _study(folder: Path, **grid: float) -> tuple[SeriesVolume, list[sitk.Image]]:
    """The small synthetic CT and its two lesion masks."""
    study = write_synthetic_study(folder, shape=(10, 48, 48), **grid)
    volume = read_series(list(study.ct_paths))
    seg = read_segmentation(study.seg_path, volume)
    return volume, [segment.mask for segment in seg.segments]


def _whole_grid(volume: SeriesVolume) -> sitk.Image:
    return mask_like(volume.image, np.ones(sitk.GetArrayViewFromImage(volume.image).shape, bool))


@pytest.fixture(scope="module")
def coarse(tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    """The synthetic CT on 8 x 8 x 10 mm voxels: 23,040 voxels make 14.7 L, half of it air
    outside the body, like the 16.8 L whole-volume "lesion" of issue 20."""
    volume, _ = _study(tmp_path_factory.mktemp("coarse"), pixel_spacing=8.0,
                       slice_thickness=10.0)
    return volume


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[SeriesVolume, list[sitk.Image]]:
    return _study(tmp_path_factory.mktemp("synthetic"))


def test_whole_volume_of_air_fails_on_volume_and_air(coarse: SeriesVolume) -> None:
    report = assess_roi(coarse, _whole_grid(coarse), subject="segment 1 (Lesion 1)")

    volume, air = report.check("lesion.volume"), report.check("lesion.air")
    assert report.status == "fail"
    assert (volume.status, volume.unit, volume.threshold) == ("fail", "mL", "<= 3000 mL")
    assert volume.value == pytest.approx(10 * 48 * 48 * 8 * 8 * 10 / 1000)
    assert volume.message.startswith("23040 voxels, 14746 mL: above 3000 mL")
    assert "QCSettings max_lesion_volume_ml" in volume.message
    assert (air.status, air.unit) == ("fail", "%") and air.value > 20.0
    assert "below -500 HU" in air.message and "above 20 %" in air.message
    assert report.check("lesion.fat").status == "pass"
    assert report.check("mask.border").status == "warn"  # what QC said before: warn only


def test_failure_reaches_qc_rows_sr_and_summary(coarse: SeriesVolume) -> None:
    """The checks travel like every other QC failure: a qc.csv row each, a coded ``qc.fail`` and
    a finding each in the SR, their names on the summary image."""
    series = assess_series(coarse)
    roi = assess_roi(coarse, _whole_grid(coarse), subject="segment 1 (Lesion 1)")

    rows = {row["check"]: row for row in roi.to_rows()}
    assert [rows[name]["status"] for name in ("lesion.volume", "lesion.air")] == ["fail"] * 2
    assert rows["lesion.volume"]["threshold"] == "<= 3000 mL"
    assert float(rows["lesion.air"]["value"]) == roi.check("lesion.air").value  # plain repr
    lesion_status = qc_evaluations(series, roi)[1][0]
    assert lesion_status.ConceptCodeSequence[0].CodeValue == STATUS["fail"].value
    findings = [item.TextValue for item in qc_findings(series, roi)]
    assert any(text.startswith("lesion.volume: fail, 1.475e+04 mL (rule <= 3000 mL)")
               for text in findings)
    assert any(text.startswith("lesion.air: fail,") for text in findings)
    line = qc_lines([roi])[0]
    assert line.startswith("segment 1 (Lesion 1): fail - ")
    assert "lesion.volume" in line and "lesion.air" in line


def test_synthetic_lesions_pass(synthetic: tuple[SeriesVolume, list[sitk.Image]]) -> None:
    volume, lesions = synthetic

    for lesion in lesions:
        report = assess_roi(volume, lesion)
        assert [report.check(name).status for name in PLAUSIBILITY] == ["pass"] * 3
        assert report.check("lesion.air").value == 0.0


def test_preset_limit_overrides_the_settings(
    synthetic: tuple[SeriesVolume, list[sitk.Image]],
) -> None:
    """The whole 37 mL grid of the default synthetic CT passes the 3 L default and fails a preset
    that allows 20 mL; the preset's limit comes before QCSettings'."""
    volume, _ = synthetic
    basic = load_preset("ct-liver-basic")
    small = basic.model_copy(update={"rois": basic.rois.model_copy(
        update={"max_lesion_volume_ml": 20.0})})
    settings = QCSettings(feature_robustness=False)

    default = assess_roi(volume, _whole_grid(volume), settings, preset=basic)
    limited = assess_roi(volume, _whole_grid(volume), settings, preset=small)

    assert default.check("lesion.volume").status == "pass"
    check = limited.check("lesion.volume")
    assert (check.status, check.threshold) == ("fail", "<= 20 mL")
    assert "preset ct-liver-basic rois.max_lesion_volume_ml" in check.message


def test_organ_is_not_held_to_a_lesions_plausibility(coarse: SeriesVolume) -> None:
    report = assess_roi(coarse, _whole_grid(coarse), organ=True)

    assert not {check.name for check in report.checks} & set(PLAUSIBILITY)


def test_mr_roi_is_not_failed_on_hounsfield_units() -> None:
    """MR values that would be air in HU: the air and fat checks are ``info`` without a value,
    saying why; the volume still applies."""
    shape, spacing = (12, 32, 32), (1.0, 1.0, 2.0)
    volume = make_volume(np.full(shape, -1000.0), spacing, "MR")
    roi = mask_like(volume.image, ball(shape, (6.0, 16.0, 16.0), 6.0, spacing))

    report = assess_roi(volume, roi)

    for name in ("lesion.air", "lesion.fat"):
        check = report.check(name)
        assert (check.status, check.value) == ("info", None)
        assert "MR values are not Hounsfield units" in check.message
        assert "measured on CT only" in check.message
    assert report.check("lesion.volume").status == "pass"


def test_fat_fraction_fails_and_rules_turn_off() -> None:
    shape, spacing = (12, 32, 32), (1.0, 1.0, 2.0)
    values = np.full(shape, 60.0)
    inside = ball(shape, (6.0, 16.0, 16.0), 6.0, spacing)
    values[inside & (np.indices(shape)[2] < 18)] = -100.0  # fat over more than half the ROI
    volume = make_volume(values, spacing)
    roi = mask_like(volume.image, inside)
    off = QCSettings(max_lesion_volume_ml=None, ct_lesion_max_air_fraction=None,
                     ct_lesion_max_fat_fraction=None)

    fat = assess_roi(volume, roi).check("lesion.fat")
    unruled = assess_roi(volume, roi, off)

    assert fat.status == "fail" and fat.value > 50.0
    assert fat.threshold == "<= 50 % of voxels in -190 to -30 [hnsf'U]"
    assert [unruled.check(name).status for name in PLAUSIBILITY] == ["info"] * 3
    assert unruled.check("lesion.fat").value == fat.value


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError, match="ct_lesion_fat_hu_range: lower bound -30"):
        QCSettings(ct_lesion_fat_hu_range=(-30, -190))
    with pytest.raises(ValidationError, match="ct_lesion_max_air_fraction"):
        QCSettings(ct_lesion_max_air_fraction=1.5)
    with pytest.raises(ValidationError, match="max_lesion_volume_ml"):
        QCSettings(max_lesion_volume_ml=0)


@pytest.mark.parametrize("name", sorted(SHIPPED_HASHES))
def test_shipped_preset_hashes_are_unchanged(name: str) -> None:
    preset = load_preset(name)

    assert preset.rois.max_lesion_volume_ml is None
    assert preset.hash == SHIPPED_HASHES[name]


def test_preset_limit_is_validated_and_hashed(tmp_path: Path) -> None:
    data = load_preset("ct-liver-basic").model_dump(mode="json")
    path = tmp_path / "limited.yaml"

    data["rois"]["max_lesion_volume_ml"] = 500
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    limited = load_preset(path)
    data["rois"]["max_lesion_volume_ml"] = 0
    path.write_text(yaml.safe_dump(data), encoding="utf-8")

    assert isinstance(limited, Preset) and limited.rois.max_lesion_volume_ml == 500
    assert limited.hash != SHIPPED_HASHES["ct-liver-basic"]
    with pytest.raises(PresetError, match=r"rois\.max_lesion_volume_ml"):
        load_preset(path)

