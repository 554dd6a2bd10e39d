"""read_series: slice order, geometry and values of single-frame series (PS3.3 C.7.6.2, C.11.1)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipelines.io.series import SeriesError, read_series

CT2 = Path("pydicom/test_files/dicomdirtests/77654033/CT2")
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _stored(index: int, rows: int, columns: int) -> np.ndarray:
    """Stored values that tell slice, row and column apart."""
    r, c = np.mgrid[0:rows, 0:columns]
    return (100 * index + 10 * r + c).astype(np.int16)


def _write_slice(
    path: Path,
    index: int,
    position: tuple[float, float, float],
    *,
    orientation: tuple[float, ...] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.5, 0.7),
    rows: int = 4,
    columns: int = 5,
    slope: float = 1.0,
    intercept: float = -1024.0,
    **tags: object,
) -> Path:
    """A minimal CT slice; ``tags`` override attributes (None deletes one)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.FrameOfReferenceUID = "1.2.3.4.6"
    ds.Modality = "CT"
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = _stored(index, rows, columns).tobytes()
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _stack(
    folder: Path,
    positions: list[tuple[float, float, float]],
    **kwargs: object,
) -> list[Path]:
    """One slice per position, file i holding stored values _stored(i)."""
    return [
        _write_slice(folder / f"s{i}.dcm", i, position, **kwargs)
        for i, position in enumerate(positions)
    ]


def _dicom_point(ds: pydicom.Dataset, row: int, column: int) -> np.ndarray:
    """Patient coordinates of a pixel by the formula of PS3.3 C.7.6.2.1.1 (independent oracle)."""
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return (
        np.array([float(v) for v in ds.ImagePositionPatient])
        + orientation[:3] * column_spacing * column
        + orientation[3:] * row_spacing * row
    )


def _assert_geometry_matches_headers(volume) -> None:
    """Every voxel centre of the image lies where its slice's header puts that pixel."""
    image = volume.image
    columns, rows, _ = image.GetSize()
    for k, ds in enumerate(volume.datasets):
        for row, column in ((0, 0), (rows - 1, 0), (0, columns - 1), (rows - 1, columns - 1)):
            point = image.TransformIndexToPhysicalPoint((column, row, k))
            np.testing.assert_allclose(point, _dicom_point(ds, row, column), atol=1e-4)


def test_shuffled_files_give_the_same_image(tmp_path: Path) -> None:
    paths = _stack(tmp_path, [(0.0, 0.0, 2.0 * i) for i in range(6)])
    shuffled = paths.copy()
    random.Random(3).shuffle(shuffled)
    assert shuffled != paths

    in_order, out_of_order = read_series(paths), read_series(shuffled)

    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(in_order.image), sitk.GetArrayFromImage(out_of_order.image)
    )
    assert out_of_order.paths == tuple(paths)
    assert out_of_order.image.GetOrigin() == in_order.image.GetOrigin() == (0.0, 0.0, 0.0)


def test_values_are_rescaled_and_axes_follow_pixel_spacing(tmp_path: Path) -> None:
    paths = _stack(tmp_path, [(-10.0, 20.0, 3.0 * i) for i in range(3)], slope=2.0)

    volume = read_series(paths)

    image = volume.image
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == (5, 4, 3)  # columns, rows, slices
    np.testing.assert_allclose(image.GetSpacing(), (0.7, 0.5, 3.0))  # column, row, slice
    values = sitk.GetArrayFromImage(image)
    for k in range(3):
        np.testing.assert_array_equal(values[k], 2.0 * _stored(k, 4, 5) - 1024.0)
    assert volume.datasets[0].get("PixelData") is None
    _assert_geometry_matches_headers(volume)


def test_slice_spacing_comes_from_positions_not_slice_thickness(tmp_path: Path) -> None:
    paths = _stack(tmp_path, [(0.0, 0.0, 1.25 * i) for i in range(4)], SliceThickness=5.0)

    assert read_series(paths).image.GetSpacing()[2] == pytest.approx(1.25)


def test_positions_decreasing_along_the_normal_are_reversed(tmp_path: Path) -> None:
    # Instance 1 is the most cranial slice, as a head-first CT is scanned.
    paths = _stack(tmp_path, [(0.0, 0.0, 100.0 - 2.5 * i) for i in range(5)])

    volume = read_series(paths)

    assert volume.paths == tuple(reversed(paths))
    assert volume.image.GetOrigin() == pytest.approx((0.0, 0.0, 90.0))
    assert volume.image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    values = sitk.GetArrayFromImage(volume.image)
    np.testing.assert_array_equal(values[0], _stored(4, 4, 5) - 1024.0)
    _assert_geometry_matches_headers(volume)


def test_normal_pointing_to_feet_sorts_along_the_normal(tmp_path: Path) -> None:
    # Column cosines (0, -1, 0): the normal row x column is (0, 0, -1).
    orientation = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    paths = _stack(tmp_path, [(0.0, 0.0, 2.0 * i) for i in range(4)], orientation=orientation)

    volume = read_series(paths)

    assert volume.paths == tuple(reversed(paths))
    assert volume.image.GetDirection() == pytest.approx((1, 0, 0, 0, -1, 0, 0, 0, -1))
    assert volume.image.GetSpacing()[2] == pytest.approx(2.0)
    _assert_geometry_matches_headers(volume)


def test_oblique_orientation_gives_its_direction_cosines(tmp_path: Path) -> None:
    rotation = sitk.VersorTransform((1.0, 2.0, 0.5), 0.6).GetMatrix()
    matrix = np.array(rotation).reshape(3, 3)
    row, col = matrix[:, 0], matrix[:, 1]
    normal = np.cross(row, col)
    origin = np.array([-30.0, 12.0, 7.0])
    positions = [tuple(origin + 1.5 * k * normal) for k in (2, 0, 3, 1)]
    paths = _stack(tmp_path, positions, orientation=(*row, *col))

    volume = read_series(paths)

    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, np.column_stack([row, col, normal]), atol=1e-9)
    np.testing.assert_allclose(volume.image.GetOrigin(), origin, atol=1e-6)
    assert volume.image.GetSpacing()[2] == pytest.approx(1.5)
    assert volume.paths == (paths[1], paths[3], paths[0], paths[2])
    _assert_geometry_matches_headers(volume)


@pytest.mark.parametrize(
    ("tags", "named"),
    [
        ({"SeriesInstanceUID": "1.2.3.4.99"}, "(0020,000E) SeriesInstanceUID"),
        ({"FrameOfReferenceUID": "1.2.3.4.99"}, "(0020,0052) FrameOfReferenceUID"),
        ({"Modality": "MR"}, "(0008,0060) Modality"),
        ({"orientation": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)}, "(0020,0037) ImageOrientationPatient"),
        ({"pixel_spacing": (0.5, 0.8)}, "(0028,0030) PixelSpacing"),
        ({"rows": 6}, "(0028,0010) Rows"),
        ({"columns": 6}, "(0028,0011) Columns"),
    ],
)
def test_mixed_series_are_refused_naming_file_and_tag(
    tmp_path: Path, tags: dict[str, object], named: str
) -> None:
    paths = _stack(tmp_path, [(0.0, 0.0, 2.0 * i) for i in range(3)])
    odd = _write_slice(tmp_path / "odd.dcm", 3, (0.0, 0.0, 6.0), **tags)

    with pytest.raises(SeriesError) as raised:
        read_series([*paths, odd])

    assert named in str(raised.value)
    assert "odd.dcm" in str(raised.value)


@pytest.mark.parametrize(
    ("positions", "reason"),
    [
        ([(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)], "irregular spacing"),
        ([(0.0, 0.4 * i, 2.0 * i) for i in range(4)], "gantry tilt"),
    ],
)
def test_stacks_off_a_regular_grid_are_refused(
    tmp_path: Path, positions: list[tuple[float, float, float]], reason: str
) -> None:
    paths = _stack(tmp_path, positions)

    with pytest.raises(SeriesError, match=reason) as raised:
        read_series(paths)

    assert "(0020,0032) ImagePositionPatient" in str(raised.value)


def test_missing_attribute_is_named(tmp_path: Path) -> None:
    path = _write_slice(tmp_path / "bare.dcm", 0, (0.0, 0.0, 0.0), PixelSpacing=None)

    with pytest.raises(SeriesError, match=r"bare\.dcm: \(0028,0030\) PixelSpacing is missing"):
        read_series([path])


def test_multiframe_without_functional_groups_and_non_dicom_files_are_refused(
    tmp_path: Path,
) -> None:
    multiframe = _write_slice(tmp_path / "mf.dcm", 0, (0.0, 0.0, 0.0), NumberOfFrames=2)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")

    with pytest.raises(SeriesError, match=r"mf\.dcm: \(0028,0008\) NumberOfFrames is 2 without"):
        read_series([multiframe])
    with pytest.raises(SeriesError, match=r"notes\.txt: not a readable DICOM file"):
        read_series([text])
    with pytest.raises(SeriesError, match="no files"):
        read_series([])


def test_real_ct_series_with_a_gap_is_refused(refdata: Path) -> None:
    # Slice 17106 lies 202.5 mm below the other three, which are 1.25 mm apart.
    paths = sorted((refdata / CT2).iterdir())

    with pytest.raises(SeriesError, match=r"202\.500, 1\.250, 1\.250") as raised:
        read_series(paths)

    assert "(0020,0032) ImagePositionPatient" in str(raised.value)


def test_real_ct_series_contiguous_slices(refdata: Path) -> None:
    names = ["17196", "17136", "17166"]
    volume = read_series([refdata / CT2 / name for name in names])

    headers = [pydicom.dcmread(refdata / CT2 / name) for name in ("17136", "17166", "17196")]
    assert volume.sop_instance_uids == tuple(h.SOPInstanceUID for h in headers)
    assert volume.series_instance_uid == headers[0].SeriesInstanceUID
    assert volume.study_instance_uid == headers[0].StudyInstanceUID
    assert volume.frame_of_reference_uid == headers[0].FrameOfReferenceUID
    assert volume.modality == "CT"
    assert volume.image.GetSize() == (16, 16, 3)
    np.testing.assert_allclose(volume.image.GetSpacing(), (0.488281, 0.488281, 1.25), atol=1e-5)
    np.testing.assert_allclose(volume.image.GetOrigin(), (-125.0, -128.100006, 103.019997))
    values = sitk.GetArrayFromImage(volume.image)
    for k, header in enumerate(headers):
        expected = header.pixel_array * float(header.RescaleSlope) + float(header.RescaleIntercept)
        np.testing.assert_array_equal(values[k], expected)
    _assert_geometry_matches_headers(volume)


def test_single_slice_takes_slice_thickness(refdata: Path) -> None:
    volume = read_series([refdata / "pydicom/test_files/CT_small.dcm"])

    assert volume.image.GetSize() == (128, 128, 1)
    assert volume.image.GetSpacing()[2] == pytest.approx(5.0)


def _linear(points: np.ndarray) -> np.ndarray:
    """A linear function of patient coordinates, which linear interpolation reproduces exactly."""
    return 3.0 * points[..., 0] - 2.0 * points[..., 1] + 5.0 * points[..., 2] + 100.0


def _linear_slice_pixels(position: tuple[float, float, float], rows: int, columns: int) -> bytes:
    r, c = np.mgrid[0:rows, 0:columns]
    # AXIAL orientation, pixel spacing (0.5, 0.7): column index moves x, row index moves y.
    points = np.stack(
        [position[0] + 0.7 * c, position[1] + 0.5 * r, np.full(r.shape, position[2])], axis=-1
    )
    return np.rint(_linear(points)).astype(np.int16).tobytes()


def _linear_stack(folder: Path, positions: list[tuple[float, float, float]]) -> list[Path]:
    return [
        _write_slice(
            folder / f"s{i}.dcm",
            i,
            position,
            rows=8,
            columns=9,
            intercept=0.0,
            PixelData=_linear_slice_pixels(position, 8, 9),
        )
        for i, position in enumerate(positions)
    ]


def test_duplicate_positions_keep_the_newest_acquisition(tmp_path: Path) -> None:
    paths = _stack(tmp_path, [(0.0, 0.0, 2.0 * i) for i in range(3)], AcquisitionTime="101000")
    older = _write_slice(tmp_path / "older.dcm", 7, (0.0, 0.0, 2.0), AcquisitionTime="095900")
    newer = _write_slice(tmp_path / "newer.dcm", 8, (0.0, 0.0, 4.0), AcquisitionTime="101500.5")
    same_time = _write_slice(
        tmp_path / "same_time.dcm", 9, (0.0, 0.0, 0.0), AcquisitionTime="101000", InstanceNumber=99
    )

    volume = read_series([older, *paths, newer, same_time])

    assert volume.paths == (same_time, paths[1], newer)
    values = sitk.GetArrayFromImage(volume.image)
    for k, index in enumerate((9, 1, 8)):
        np.testing.assert_array_equal(values[k], _stored(index, 4, 5) - 1024.0)
    assert volume.grid is not None
    dropped = {(d.path, d.kept.sop_instance_uid) for d in volume.grid.dropped}
    kept_uids = volume.sop_instance_uids
    assert dropped == {
        (older, kept_uids[1]),
        (paths[2], kept_uids[2]),
        (paths[0], kept_uids[0]),
    }
    assert volume.grid.uniform_spacing and not volume.grid.resampled


@pytest.mark.parametrize(
    ("positions", "uniform", "tilted", "slices"),
    [
        ([(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)], False, False, 6),
        ([(0.0, 0.3 * i, 2.0 * i) for i in range(4)], True, True, 4),
        ([(0.35 * i, 0.0, z) for i, z in enumerate((0.0, 1.5, 3.0, 6.0))], False, True, 5),
    ],
)
def test_irregular_stacks_are_resampled_on_request(
    tmp_path: Path,
    positions: list[tuple[float, float, float]],
    uniform: bool,
    tilted: bool,
    slices: int,
) -> None:
    paths = _linear_stack(tmp_path, positions)

    with pytest.raises(SeriesError, match="irregular_grid='resample'"):
        read_series(paths)
    volume = read_series(paths, irregular_grid="resample")

    grid = volume.grid
    assert grid is not None
    assert (grid.uniform_spacing, grid.tilted, grid.resampled) == (uniform, tilted, True)
    expected_tilt = np.degrees(
        np.arctan2(
            np.hypot(*np.subtract(positions[-1], positions[0])[:2]),
            positions[-1][2] - positions[0][2],
        )
    )
    assert grid.tilt_degrees == pytest.approx(expected_tilt)
    assert grid.slice_gaps_mm == pytest.approx(np.diff([p[2] for p in positions]))
    image = volume.image
    assert image.GetSize() == (9, 8, slices)
    assert image.GetOrigin() == pytest.approx(positions[0])
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    values = sitk.GetArrayFromImage(image)
    # Away from the rows/columns that the in-plane shift (< 2 pixels) fills from the edge, a voxel
    # holds the linear function at its own centre (stored values were rounded: +-0.5).
    margin = 2
    for k in range(slices):
        for r in range(margin, 8 - margin):
            for c in range(margin, 9 - margin):
                point = np.array(image.TransformIndexToPhysicalPoint((c, r, k)))
                assert values[k, r, c] == pytest.approx(_linear(point), abs=0.51)
    assert len(volume.slices) == len(positions)


def _legacy_enhanced(paths: list[Path], target: Path) -> Path:
    import highdicom as hd

    frames = [pydicom.dcmread(p) for p in paths]
    for ds in frames:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "A^B", "1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "1200", "", "1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.Manufacturer = "", 1, "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        frames,
        series_instance_uid="1.2.3.4.5",
        series_number=1,
        sop_instance_uid=generate_uid(entropy_srcs=[str(target)]),
        instance_number=1,
    )
    enhanced.save_as(target, enforce_file_format=True)
    return target


def test_legacy_converted_enhanced_multiframe_equals_its_single_frames(tmp_path: Path) -> None:
    positions = [(-10.0, 20.0, 100.0 - 3.0 * i) for i in range(4)]
    paths = _stack(tmp_path, positions, slope=2.0)
    enhanced = _legacy_enhanced(paths, tmp_path / "enhanced.dcm")

    single, multi = read_series(paths), read_series([enhanced])

    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(multi.image), sitk.GetArrayFromImage(single.image)
    )
    assert multi.image.GetOrigin() == pytest.approx(single.image.GetOrigin())
    assert multi.image.GetSpacing() == pytest.approx(single.image.GetSpacing())
    assert multi.image.GetDirection() == pytest.approx(single.image.GetDirection())
    assert multi.paths == (enhanced,)
    assert multi.datasets[0].get("PixelData") is None
    assert [s.frame_number for s in multi.slices] == [4, 3, 2, 1]
    assert [s.position for s in multi.slices] == [pytest.approx(p) for p in reversed(positions)]


def test_per_frame_pixel_value_transformation_and_geometry(tmp_path: Path) -> None:
    enhanced = _legacy_enhanced(
        _stack(tmp_path, [(0.0, 0.0, 2.0 * i) for i in range(3)]), tmp_path / "enhanced.dcm"
    )
    ds = pydicom.dcmread(enhanced)
    for frame, groups in enumerate(ds.PerFrameFunctionalGroupsSequence):
        transform = pydicom.Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = frame + 1, -10 * frame
        transform.RescaleType = "US"
        groups.PixelValueTransformationSequence = [transform]
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.save_as(enhanced)

    values = sitk.GetArrayFromImage(read_series([enhanced]).image)

    for frame, groups in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = round(float(groups.PlanePositionSequence[0].ImagePositionPatient[2]) / 2.0)
        np.testing.assert_array_equal(values[k], (frame + 1) * _stored(k, 4, 5) - 10.0 * frame)

    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    ds.save_as(enhanced)
    with pytest.raises(SeriesError, match=r"enhanced\.dcm frame 1: \(0028,0030\) PixelSpacing"):
        read_series([enhanced])


def test_ibsi_deprecated_legacy_converted_mr_phantom_is_parsed(refdata: Path) -> None:
    path = refdata / "ibsi1/ibsi_1_digital_phantom/dicom_deprecated/image/phantom.deprecated"
    nifti = sitk.ReadImage(str(refdata / "ibsi1/ibsi_1_digital_phantom/nifti/image/phantom.nii.gz"))

    volume = read_series([path])

    assert volume.modality == "MR"
    assert volume.image.GetSize() == (5, 4, 4)
    assert len(volume.slices) == 4 and {s.sop_instance_uid for s in volume.slices} == {
        volume.sop_instance_uids[0]
    }
    # The deprecated DICOM's geometry is known to be wrong (IBSI withdrew it), its values are not:
    # the 80 voxel values match the NIfTI phantom's as a multiset.
    np.testing.assert_array_equal(
        np.sort(sitk.GetArrayFromImage(volume.image), axis=None),
        np.sort(sitk.GetArrayFromImage(nifti), axis=None).astype(np.float32),
    )


@pytest.mark.parametrize("variant", ["RLE", "jp2klossless", "jpeg_ls_lossless"])
def test_compressed_transfer_syntaxes_decode_to_the_uncompressed_pixels(
    refdata: Path, variant: str
) -> None:
    files = refdata / "pydicom/test_files"
    reference = read_series([files / "MR_small.dcm"])

    compressed = read_series([files / f"MR_small_{variant}.dcm"])

    syntax = pydicom.dcmread(files / f"MR_small_{variant}.dcm").file_meta.TransferSyntaxUID
    assert syntax.is_compressed
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(compressed.image), sitk.GetArrayFromImage(reference.image)
    )
    assert compressed.image.GetOrigin() == reference.image.GetOrigin()
