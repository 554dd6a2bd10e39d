"""assess_series: acquisition record, header integrity and CT value range (pipelines.science.qc)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from demo.synthetic import write_synthetic_study
from pipelines.io.series import SeriesVolume, read_series
from pipelines.science.qc import QCSettings, assess_series
from tests.unit.qc_volumes import make_headers, make_volume

SHAPE = (8, 16, 16)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SeriesVolume:
    study = write_synthetic_study(tmp_path_factory.mktemp("qc"), shape=(12, 64, 64))
    return read_series(list(study.ct_paths))


def _ct(**attributes: object) -> SeriesVolume:
    """Soft tissue at 40 HU with air (-1000 HU) in the first row of every slice."""
    values = np.full(SHAPE, 40.0)
    values[:, 0, :] = -1000.0
    return make_volume(values, **attributes)


def test_clean_synthetic_ct_passes_with_its_acquisition_recorded(synthetic: SeriesVolume) -> None:
    report = assess_series(synthetic)

    assert report.status == "pass"
    assert report.scope == "series" and report.subject == synthetic.series_instance_uid
    assert {c.status for c in report.checks} <= {"pass", "info"}
    assert report.check("acquisition.modality").value == "CT"
    assert report.check("acquisition.convolution_kernel").value == "STANDARD"
    assert report.check("acquisition.kvp").value == 120.0
    assert report.check("acquisition.slice_thickness").status == "pass"
    assert report.check("acquisition.slice_spacing").value == pytest.approx(2.5)
    assert report.check("acquisition.pixel_spacing").value == pytest.approx(0.8)
    assert report.check("acquisition.contrast_agent").value == "Iodinated contrast agent"
    assert report.check("acquisition.contrast_delay").value is None
    for name in ("frame_of_reference", "orientation", "matrix", "duplicate_slices",
                 "missing_slices", "uniform_spacing", "stack_alignment", "hu_range", "hu_air"):
        assert report.check(f"integrity.{name}").status == "pass", name
    rows = report.to_rows()
    assert len(rows) == len(report.checks)
    assert rows[0]["check"] == "acquisition.modality" and rows[0]["value"] == "CT"


def test_thick_slices_coarse_pixels_and_high_kvp_warn() -> None:
    report = assess_series(make_volume(np.zeros(SHAPE), spacing_xyz=(1.2, 1.2, 6.0), KVP="150"))

    for name, value in (("slice_thickness", 6.0), ("pixel_spacing", 1.2), ("kvp", 150.0)):
        check = report.check(f"acquisition.{name}")
        assert (check.status, check.value) == ("warn", pytest.approx(value)), name


def test_settings_move_and_remove_acquisition_limits() -> None:
    volume = make_volume(np.zeros(SHAPE), spacing_xyz=(1.2, 1.2, 6.0))
    loose = QCSettings(ct_max_slice_thickness_mm=None, ct_max_pixel_spacing_mm=1.5)

    report = assess_series(volume, loose)

    assert report.check("acquisition.slice_thickness").status == "info"
    assert report.check("acquisition.pixel_spacing").status == "pass"


def test_values_that_differ_between_slices_warn() -> None:
    headers = make_headers(*SHAPE, (1.0, 1.0, 2.0))
    headers[3].KVP = "100"
    headers[4].ConvolutionKernel = "B70f"

    report = assess_series(make_volume(np.zeros(SHAPE), headers=headers))

    assert report.check("acquisition.kvp").status == "warn"
    assert report.check("acquisition.kvp").value == "120, 100"
    assert report.check("acquisition.convolution_kernel").status == "warn"


def test_spacing_above_slice_thickness_warns_of_gaps() -> None:
    volume = make_volume(np.zeros(SHAPE), spacing_xyz=(1.0, 1.0, 3.0), SliceThickness=2.0)

    check = assess_series(volume).check("acquisition.slice_spacing")

    assert (check.status, check.value) == ("warn", 3.0)


@pytest.mark.parametrize(
    ("start", "status", "delay"), [("101400", "pass", 70.0), ("101300", "warn", 130.0)]
)
def test_contrast_delay_against_the_portal_venous_window(start: str, status: str,
                                                         delay: float) -> None:
    volume = _ct(ContrastBolusAgent="Iohexol", ContrastBolusStartTime=start,
                 AcquisitionTime="101510")

    check = assess_series(volume, QCSettings(contrast_delay_s=(60, 90))).check(
        "acquisition.contrast_delay")

    assert (check.status, check.value) == (status, pytest.approx(delay))


def test_expected_contrast_missing_warns() -> None:
    check = assess_series(_ct(), QCSettings(expect_contrast=True)).check(
        "acquisition.contrast_agent")

    assert check.status == "warn" and check.value is None


def test_mr_record_has_field_strength_sequence_timing_and_b_values() -> None:
    headers = make_headers(
        *SHAPE, (1.5, 1.5, 5.0), "MR", MagneticFieldStrength=1.5, ScanningSequence="EP",
        SequenceVariant="SK", SequenceName="ep_b800", RepetitionTime=4000, EchoTime=60,
        FlipAngle=90)
    for k, ds in enumerate(headers):
        ds.DiffusionBValue = (0, 50, 800)[k % 3]

    report = assess_series(make_volume(np.full(SHAPE, 300.0), (1.5, 1.5, 5.0), headers=headers))

    assert report.status == "pass"
    assert report.check("acquisition.field_strength").value == 1.5
    assert "SequenceName=ep_b800" in str(report.check("acquisition.sequence").value)
    assert report.check("acquisition.repetition_time").value == 4000.0
    assert report.check("acquisition.echo_time").value == 60.0
    assert report.check("acquisition.flip_angle").value == 90.0
    assert report.check("acquisition.b_values").value == "0, 50, 800"
    assert "acquisition.kvp" not in {c.name for c in report.checks}


def _headers() -> list:
    return make_headers(*SHAPE, (1.0, 1.0, 2.0))


def test_missing_slice_fails() -> None:
    headers = _headers()
    del headers[3]

    report = assess_series(make_volume(np.zeros((7, 16, 16)), headers=headers))

    check = report.check("integrity.missing_slices")
    assert (check.status, check.value) == ("fail", 1)
    assert report.status == "fail"
    assert report.check("integrity.uniform_spacing").status == "pass"


def test_duplicate_slice_fails() -> None:
    headers = _headers()
    headers.insert(4, copy.deepcopy(headers[4]))

    check = assess_series(make_volume(np.zeros((9, 16, 16)), headers=headers)).check(
        "integrity.duplicate_slices")

    assert (check.status, check.value) == ("fail", 1)


def test_irregular_spacing_warns() -> None:
    headers = _headers()
    headers[4].ImagePositionPatient = [0.0, 0.0, 4 * 2.0 + 0.6]

    check = assess_series(make_volume(np.zeros(SHAPE), headers=headers)).check(
        "integrity.uniform_spacing")

    assert check.status == "warn" and check.value == pytest.approx(0.6)


def test_sheared_stack_warns_as_gantry_tilt() -> None:
    headers = _headers()
    for k, ds in enumerate(headers):
        ds.ImagePositionPatient = [0.0, k * 0.5, k * 2.0]

    check = assess_series(make_volume(np.zeros(SHAPE), headers=headers)).check(
        "integrity.stack_alignment")

    assert check.status == "warn"
    assert check.value == pytest.approx(np.degrees(np.arctan2(0.5, 2.0)), rel=1e-3)


@pytest.mark.parametrize(
    ("keyword", "value", "check"),
    [
        ("FrameOfReferenceUID", "1.2.3.4", "integrity.frame_of_reference"),
        ("ImageOrientationPatient", [1, 0, 0, 0, 0.99, 0.141], "integrity.orientation"),
        ("Rows", 32, "integrity.matrix"),
        ("PixelSpacing", [0.9, 0.9], "integrity.matrix"),
    ],
)
def test_one_slice_off_the_series_fails(keyword: str, value: object, check: str) -> None:
    headers = _headers()
    setattr(headers[2], keyword, value)

    report = assess_series(make_volume(np.zeros(SHAPE), headers=headers))

    assert report.check(check).status == "fail"
    assert report.status == "fail"


def test_wrong_rescale_intercept_fails_the_hu_range() -> None:
    values = np.full(SHAPE, 40.0)
    values[:, 0, :] = -1000.0
    shifted = make_volume(values - 2000.0)  # intercept applied twice

    check = assess_series(shifted).check("integrity.hu_range")

    assert check.status == "fail"
    assert check.value == "-3000 to -1960"


def test_doubled_slope_fails_the_hu_range() -> None:
    values = np.full(SHAPE, 40.0)
    values[:, :, 0] = 2500.0  # bone; with slope 2 it reads 5000
    check = assess_series(make_volume(values * 2)).check("integrity.hu_range")

    assert check.status == "fail"


def test_missing_intercept_warns_that_there_is_no_air() -> None:
    values = np.full(SHAPE, 40.0)
    values[:, 0, :] = -1000.0

    report = assess_series(make_volume(values + 1024.0))

    assert report.check("integrity.hu_range").status == "pass"
    assert (report.check("integrity.hu_air").status, report.check("integrity.hu_air").value) == (
        "warn", 24.0)


def test_padding_outside_the_field_of_view_is_left_out() -> None:
    values = np.full(SHAPE, 40.0)
    values[:, 0, :] = -1000.0
    values[:, -3:, :] = -3024.0  # 19 % of the voxels, no Pixel Padding Value

    report = assess_series(make_volume(values))

    assert report.check("integrity.hu_range").status == "pass"
    assert report.check("integrity.hu_range").value == "-1000 to 40"


def test_pixel_padding_value_is_left_out_through_the_rescale() -> None:
    values = np.full(SHAPE, 40.0)
    values[:, 0, :] = -1000.0
    values[0, 1, 1] = -2024.0  # one voxel of padding, too few for the heuristic

    plain = assess_series(make_volume(values))
    tagged = assess_series(make_volume(values, PixelPaddingValue=-1000))

    assert plain.check("integrity.hu_range").status == "fail"
    assert tagged.check("integrity.hu_range").status == "pass"

