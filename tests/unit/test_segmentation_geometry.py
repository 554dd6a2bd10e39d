"""read_segmentation places SEG frames by their own geometry (PS3.3 C.7.6.16.2, C.8.20.2).

SEGs here are written by highdicom, as other tools write them: frames cropped to the segmented
region (fewer Rows x Columns than the source, each frame at its own Image Position (Patient)), and
LABELMAP segmentations with highdicom's background segment 0. The expected masks come from the
array handed to highdicom, mapped to the volume through highdicom's own affine, and the voxel
counts from highdicom's reading of the file (``segread(...).get_volume()``), not from the code
under test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipelines.io.segmentation import SegmentationError, read_segmentation
from pipelines.io.series import SeriesVolume, read_series

BINARY = hd.seg.SegmentationTypeValues.BINARY
LABELMAP = hd.seg.SegmentationTypeValues.LABELMAP
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Rotated 36.87 degrees in the axial plane: row and column cosines mix x and y.
OBLIQUE = (0.8, 0.6, 0.0, -0.6, 0.8, 0.0)


def _ct_series(
    folder: Path,
    size: tuple[int, int],
    z: Sequence[float],
    pixel_spacing: tuple[float, float] = (0.7, 0.9),
    orientation: tuple[float, ...] = AXIAL,
) -> list[pydicom.Dataset]:
    """Single-frame CT images of ``size`` (rows, columns) at ``z`` mm along the normal, written to
    ``folder``; ``pixel_spacing`` is (row spacing, column spacing)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    origin = np.array([-40.0, 25.0, 10.0])
    datasets = []
    for k, along in enumerate(z):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality, ds.PatientID, ds.PatientName = "CT", "geometry", "Geometry^Test"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20240101", "120000", "1", "")
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.ImagePositionPatient = [round(float(v), 6) for v in origin + along * normal]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 1.0
        ds.Rows, ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.zeros(size, dtype=np.int16).tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def _descriptions(count: int) -> list[hd.seg.SegmentDescription]:
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Lesion {number}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number in range(1, count + 1)
    ]


def _seg(
    sources: list[pydicom.Dataset],
    pixels: np.ndarray | hd.Volume,
    kind: hd.seg.SegmentationTypeValues = BINARY,
    segments: int = 1,
) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=_descriptions(segments),
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )


def _cropped_volume(
    sources: list[pydicom.Dataset], top: int, left: int, rows: int, columns: int
) -> hd.Volume:
    """highdicom's volume of the sources, cropped in-plane to rows x columns from (top, left)."""
    volume = hd.get_volume_from_series(sources)
    return volume[:, top:top + rows, left:left + columns]


def _on_volume(crop: hd.Volume, array: np.ndarray, volume: SeriesVolume) -> np.ndarray:
    """``array`` (on ``crop``'s voxels; nonzero values kept) on the volume's grid, (z, y, x)
    order, by way of highdicom's affine and SimpleITK's physical-point lookup."""
    out = np.zeros(sitk.GetArrayViewFromImage(volume.image).shape, dtype=array.dtype)
    indices = np.argwhere(array)
    for point, value in zip(crop.map_indices_to_reference(indices), array[array != 0],
                            strict=True):
        x, y, z = volume.image.TransformPhysicalPointToIndex(tuple(float(v) for v in point))
        out[z, y, x] = value
    return out


def _mask(segment: object) -> np.ndarray:
    return sitk.GetArrayFromImage(segment.mask)  # type: ignore[attr-defined]


def _highdicom_voxels(path: Path, number: int) -> int:
    """Voxels of one segment as highdicom reads the file on its own frames' geometry."""
    volume = hd.seg.segread(path).get_volume(segment_numbers=[number])
    return int(np.count_nonzero(volume.array))


def _lesion(shape: tuple[int, int, int], seed: int = 3) -> np.ndarray:
    """A blob that touches neither the first nor the last row or column of ``shape``."""
    rng = np.random.default_rng(seed)
    array = np.zeros(shape, dtype=np.uint8)
    array[:, 2:-2, 2:-2] = rng.random((shape[0], shape[1] - 4, shape[2] - 4)) > 0.5
    return array


@pytest.mark.parametrize(
    ("size", "crop", "orientation"),
    [
        ((16, 16), (1, 1, 14, 14), AXIAL),  # 14 x 14 frames one pixel in on a 16 x 16 series
        ((16, 20), (2, 3, 11, 13), AXIAL),  # rows and columns differ: a swap would show
        ((16, 20), (4, 1, 12, 17), OBLIQUE),  # in-plane rotated: offsets need both cosines
    ],
)
def test_cropped_frames_land_at_their_own_position(
    tmp_path: Path, size: tuple[int, int], crop: tuple[int, int, int, int],
    orientation: tuple[float, ...],
) -> None:
    sources = _ct_series(tmp_path / "ct", size, z=[0.0, 1.5, 3.0], orientation=orientation)
    volume = read_series(sorted((tmp_path / "ct").iterdir()))
    cropped = _cropped_volume(sources, *crop)
    array = _lesion(cropped.spatial_shape)
    seg = _seg(sources, cropped.with_array(array))
    path = tmp_path / "cropped.dcm"
    seg.save_as(path)
    first = seg.PerFrameFunctionalGroupsSequence[0]
    assert (seg.Rows, seg.Columns) == crop[2:]
    # highdicom names the source slice but says the pixels are not its pixels
    assert first.DerivationImageSequence[0].SourceImageSequence[0].SpatialLocationsPreserved == "NO"

    decoded = read_segmentation(path, volume)

    (segment,) = decoded.segments
    expected = _on_volume(cropped, array, volume)
    np.testing.assert_array_equal(_mask(segment), expected)
    assert int(_mask(segment).sum()) == int(array.sum()) == _highdicom_voxels(path, 1)


def test_510_by_510_frames_on_a_512_by_512_series(tmp_path: Path) -> None:
    sources = _ct_series(tmp_path / "ct", (512, 512), z=[0.0, 2.5], pixel_spacing=(0.8, 0.8))
    volume = read_series(sorted((tmp_path / "ct").iterdir()))
    cropped = _cropped_volume(sources, 1, 1, 510, 510)
    array = np.zeros(cropped.spatial_shape, dtype=np.uint8)
    array[:, 200:260, 300:330] = 1
    array[0, 0, 0] = array[-1, -1, -1] = 1  # the frames' corners, one pixel in from the slice's
    seg = _seg(sources, cropped.with_array(array))
    path = tmp_path / "seg510.dcm"
    seg.save_as(path)
    assert (seg.Rows, seg.Columns) == (510, 510)

    (segment,) = read_segmentation(path, volume).segments

    mask = _mask(segment)
    np.testing.assert_array_equal(mask, _on_volume(cropped, array, volume))
    assert int(mask.sum()) == _highdicom_voxels(path, 1) == 2 * 60 * 30 + 2
    # a Segment keeps only the box of its voxels: the corners make it 510 x 510
    assert segment.index == (1, 1, 0)
    assert segment.region.GetSize() == (510, 510, 2)


def test_cropped_frames_give_the_full_frames_masks_on_a_resampled_volume(
    tmp_path: Path,
) -> None:
    """A cropped SEG (frames re-cut with pydicom from a full-frame one) decodes like the full-frame
    SEG on a volume resampled from an irregular stack (a missing slice)."""
    sources = _ct_series(tmp_path / "ct", (16, 20), z=[0.0, 1.5, 3.0, 6.0])
    volume = read_series(sorted((tmp_path / "ct").iterdir()), irregular_grid="resample")
    assert volume.resampled
    array = _lesion((4, 16, 20), seed=5)
    full = _seg(sources, array)
    full_path = tmp_path / "full.dcm"
    full.save_as(full_path)
    cropped_path = _recut(full_path, tmp_path / "recut.dcm", top=2, left=2, rows=12, columns=16)

    expected = read_segmentation(full_path, volume).segments[0]
    (segment,) = read_segmentation(cropped_path, volume).segments

    np.testing.assert_array_equal(_mask(segment), _mask(expected))
    assert int(_mask(segment).sum()) > 0


def _recut(source: Path, target: Path, top: int, left: int, rows: int, columns: int) -> Path:
    """A BINARY SEG's frames cut to rows x columns from (top, left), each frame's Image Position
    (Patient) moved to its new first pixel (PS3.3 C.7.6.2.1.1)."""
    seg = pydicom.dcmread(source)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    cut = frames[:, top:top + rows, left:left + columns]
    assert cut.sum() == frames.sum(), "the cut must keep every set pixel"
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(
        [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    row_spacing, column_spacing = (
        float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    shift = left * column_spacing * orientation[:3] + top * row_spacing * orientation[3:]
    for groups in seg.PerFrameFunctionalGroupsSequence:
        item = groups.PlanePositionSequence[0]
        item.ImagePositionPatient = [
            round(float(v), 6) for v in np.array([float(v) for v in item.ImagePositionPatient])
            + shift
        ]
    seg.Rows, seg.Columns = rows, columns
    seg.PixelData = pack_bits(cut.ravel())
    seg.save_as(target)
    return target


@pytest.fixture
def series16(tmp_path: Path) -> tuple[list[pydicom.Dataset], SeriesVolume]:
    sources = _ct_series(tmp_path / "ct", (16, 16), z=[0.0, 1.5, 3.0])
    return sources, read_series(sorted((tmp_path / "ct").iterdir()))


@pytest.fixture
def cropped16(
    tmp_path: Path, series16: tuple[list[pydicom.Dataset], SeriesVolume]
) -> tuple[Path, SeriesVolume]:
    """A BINARY SEG of 14 x 14 frames one pixel in on the 16 x 16 series."""
    sources, volume = series16
    cropped = _cropped_volume(sources, 1, 1, 14, 14)
    path = tmp_path / "cropped.dcm"
    _seg(sources, cropped.with_array(_lesion(cropped.spatial_shape))).save_as(path)
    return path, volume


Change = Callable[[pydicom.Dataset], None]


def _altered(source: Path, change: Change) -> Path:
    seg = pydicom.dcmread(source)
    change(seg)
    target = source.with_name("altered.dcm")
    seg.save_as(target)
    return target


def _refusal(path: Path, volume: SeriesVolume) -> str:
    with pytest.raises(SegmentationError) as raised:
        read_segmentation(path, volume)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def _moved(frame: int, by: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> Change:
    """Move one frame's Image Position (Patient) by ``by(row cosines, column cosines, normal)``
    (mm)."""
    def change(seg: pydicom.Dataset) -> None:
        orientation = np.array([float(v) for v in (
            seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
            .ImageOrientationPatient)])
        row, column = orientation[:3], orientation[3:]
        item = seg.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0]
        position = np.array([float(v) for v in item.ImagePositionPatient])
        item.ImagePositionPatient = [
            round(float(v), 6) for v in position + by(row, column, np.cross(row, column))
        ]
    return change


def test_a_frame_half_a_pixel_off_the_grid_is_refused(cropped16: tuple[Path, SeriesVolume]) -> None:
    path, volume = cropped16
    # half a column (0.9 mm columns) along the row direction
    altered = _altered(path, _moved(1, lambda row, column, normal: 0.45 * row))

    message = _refusal(altered, volume)

    assert "frame 2: (0020,0032) ImagePositionPatient" in message
    assert "1.000 rows and 1.500 columns" in message
    assert "not on the volume's pixel grid" in message


def test_a_frame_moved_by_whole_pixels_lands_there(cropped16: tuple[Path, SeriesVolume]) -> None:
    path, volume = cropped16
    # one pixel up and one left: the frame's first pixel on the slice's first pixel
    altered = _altered(path, _moved(0, lambda row, column, normal: -0.9 * row - 0.7 * column))

    moved = _mask(read_segmentation(altered, volume).segments[0])
    original = _mask(read_segmentation(path, volume).segments[0])

    k = _slice_of_frame(path, 0, volume)
    others = [j for j in range(3) if j != k]
    np.testing.assert_array_equal(moved[k, :-1, :-1], original[k, 1:, 1:])
    np.testing.assert_array_equal(moved[others], original[others])
    assert int(moved.sum()) == int(original.sum())


def _slice_of_frame(path: Path, frame: int, volume: SeriesVolume) -> int:
    """The volume's slice on whose plane a SEG frame's Image Position (Patient) lies."""
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    item = seg.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0]
    point = tuple(float(v) for v in item.ImagePositionPatient)
    return int(volume.image.TransformPhysicalPointToIndex(point)[2])


def test_set_pixels_outside_the_volume_are_refused(cropped16: tuple[Path, SeriesVolume]) -> None:
    path, volume = cropped16
    # three columns left: the frame's columns 0 and 1 fall off the slice, and its lesion starts at
    # column 2, so nothing is lost yet; four columns left loses the lesion's first column
    three = _altered(path, _moved(0, lambda row, column, normal: -2.7 * row))
    kept = _mask(read_segmentation(three, volume).segments[0])
    assert int(kept.sum()) == int(_mask(read_segmentation(path, volume).segments[0]).sum())

    four = _altered(path, _moved(0, lambda row, column, normal: -3.6 * row))
    message = _refusal(four, volume)

    assert "frame 1: " in message
    assert "outside the volume" in message
    assert "(0020,0032) ImagePositionPatient" in message
    assert "row 1, column -3" in message


def test_a_frame_off_its_source_slice_along_the_normal_is_refused(
    cropped16: tuple[Path, SeriesVolume],
) -> None:
    path, volume = cropped16
    altered = _altered(path, _moved(2, lambda row, column, normal: 0.75 * normal))

    message = _refusal(altered, volume)

    assert "frame 3: (0020,0032) ImagePositionPatient" in message
    assert "but its source slice" in message


def test_a_frame_of_another_pixel_spacing_is_refused(cropped16: tuple[Path, SeriesVolume]) -> None:
    path, volume = cropped16

    def finer(seg: pydicom.Dataset) -> None:
        measures = pydicom.Dataset()
        measures.PixelSpacing = [0.35, 0.45]
        measures.SliceThickness = 1.0
        seg.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence = [measures]

    message = _refusal(_altered(path, finer), volume)

    assert "altered.dcm: frame 2: (0028,0030) PixelSpacing is [0.35, 0.45]" in message
    assert "the volume's is [0.7, 0.9]" in message


def test_a_frame_of_another_orientation_is_refused(cropped16: tuple[Path, SeriesVolume]) -> None:
    path, volume = cropped16

    def turned(seg: pydicom.Dataset) -> None:
        item = pydicom.Dataset()
        item.ImageOrientationPatient = list(OBLIQUE)
        seg.PerFrameFunctionalGroupsSequence[0].PlaneOrientationSequence = [item]

    message = _refusal(_altered(path, turned), volume)

    assert "frame 1: (0020,0037) ImageOrientationPatient is [0.8, 0.6" in message


def test_a_seg_of_another_frame_of_reference_names_both_uids(
    cropped16: tuple[Path, SeriesVolume],
) -> None:
    path, volume = cropped16
    other = generate_uid()

    message = _refusal(_altered(path, lambda seg: setattr(seg, "FrameOfReferenceUID", other)),
                       volume)

    assert f"(0020,0052) FrameOfReferenceUID is {other}" in message
    assert volume.frame_of_reference_uid in message


def _without_plane_positions(preserved: str) -> Change:
    """No Plane Position (Patient) in any frame (nor as a dimension, so that highdicom opens the
    file), and Spatial Locations Preserved ``preserved`` in each source reference."""
    def change(seg: pydicom.Dataset) -> None:
        keep = [i for i, item in enumerate(seg.DimensionIndexSequence)
                if item.DimensionIndexPointer != 0x00200032]
        seg.DimensionIndexSequence = [seg.DimensionIndexSequence[i] for i in keep]
        for groups in seg.PerFrameFunctionalGroupsSequence:
            del groups.PlanePositionSequence
            content = groups.FrameContentSequence[0]
            content.DimensionIndexValues = [content.DimensionIndexValues[i] for i in keep]
            for source in groups.DerivationImageSequence[0].SourceImageSequence:
                source.SpatialLocationsPreserved = preserved
    return change


@pytest.mark.parametrize(
    ("preserved", "named"),
    [
        ("NO", "frame 1: (0028,135A) SpatialLocationsPreserved is 'NO' and it has no "
               "(0020,9113) PlanePositionSequence"),
        ("YES", "frame 1 has no (0020,9113) PlanePositionSequence and its (0028,0010) Rows x "
                "(0028,0011) Columns are 14 x 14, its source slice's 16 x 16"),
    ],
)
def test_a_cropped_frame_without_plane_position_is_refused(
    cropped16: tuple[Path, SeriesVolume], preserved: str, named: str,
) -> None:
    path, volume = cropped16

    message = _refusal(_altered(path, _without_plane_positions(preserved)), volume)

    assert named in message


def test_a_frame_without_plane_position_lies_on_its_source_pixel_for_pixel(
    tmp_path: Path, series16: tuple[list[pydicom.Dataset], SeriesVolume],
) -> None:
    sources, volume = series16
    geometry = hd.get_volume_from_series(sources)
    array = _lesion(geometry.spatial_shape)
    path = tmp_path / "full.dcm"
    _seg(sources, geometry.with_array(array)).save_as(path)

    (segment,) = read_segmentation(_altered(path, _without_plane_positions("YES")),
                                   volume).segments

    np.testing.assert_array_equal(_mask(segment), _on_volume(geometry, array, volume))


def test_frames_placed_by_position_alone_when_no_source_is_named(
    cropped16: tuple[Path, SeriesVolume],
) -> None:
    path, volume = cropped16

    def anonymous(seg: pydicom.Dataset) -> None:
        for groups in seg.PerFrameFunctionalGroupsSequence:
            del groups.DerivationImageSequence

    by_position = _mask(read_segmentation(_altered(path, anonymous), volume).segments[0])

    np.testing.assert_array_equal(by_position, _mask(read_segmentation(path, volume).segments[0]))


def test_a_frame_naming_an_image_outside_the_volume_is_placed_by_position(
    cropped16: tuple[Path, SeriesVolume],
) -> None:
    """A reference to an image that is not a slice of the volume (another series of the same
    frame of reference, a duplicate dropped by read_series) does not place the frame: its Plane
    Position does."""
    path, volume = cropped16

    def elsewhere(seg: pydicom.Dataset) -> None:
        source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        source.SourceImageSequence[0].ReferencedSOPInstanceUID = generate_uid()

    moved = _mask(read_segmentation(_altered(path, elsewhere), volume).segments[0])

    np.testing.assert_array_equal(moved, _mask(read_segmentation(path, volume).segments[0]))


def _labelmap(
    tmp_path: Path, series16: tuple[list[pydicom.Dataset], SeriesVolume], cropped: bool
) -> tuple[Path, np.ndarray, SeriesVolume]:
    """A LABELMAP SEG with segments 1 and 2 (highdicom adds segment 0, Background), and the
    labels it holds on the volume's grid."""
    sources, volume = series16
    geometry = (
        _cropped_volume(sources, 1, 1, 14, 14) if cropped
        else hd.get_volume_from_series(sources)
    )
    labels = np.zeros(geometry.spatial_shape, dtype=np.uint8)
    labels[:, 3:7, 2:9] = 1
    labels[1:, 9:12, 4:12] = 2
    seg = _seg(sources, geometry.with_array(labels), LABELMAP, segments=2)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    path = tmp_path / "labelmap.dcm"
    seg.save_as(path)
    return path, _on_volume(geometry, labels, volume), volume


def test_highdicom_writes_a_background_segment_0(
    tmp_path: Path, series16: tuple[list[pydicom.Dataset], SeriesVolume],
) -> None:
    path, _, _ = _labelmap(tmp_path, series16, cropped=False)
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    background = seg.SegmentSequence[0]
    assert [int(item.SegmentNumber) for item in seg.SegmentSequence] == [0, 1, 2]
    assert background.SegmentLabel == "Background"
    code = background.SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "125040", "DCM", "Background")
    assert seg.PixelPaddingValue == 0


def _without_padding(seg: pydicom.Dataset) -> None:
    del seg.PixelPaddingValue


def _as_segmentation_storage(seg: pydicom.Dataset) -> None:
    """Segmentation Type LABELMAP in a plain Segmentation Storage object, no Pixel Padding."""
    del seg.PixelPaddingValue
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"


def _background_numbered_3(seg: pydicom.Dataset) -> None:
    """Background described as a third segment, by its property type alone."""
    del seg.PixelPaddingValue
    background = seg.SegmentSequence[0]
    seg.SegmentSequence = [*seg.SegmentSequence[1:], background]
    background.SegmentNumber = 3
    background.SegmentLabel = "Outside"


@pytest.mark.parametrize("cropped", [False, True])
@pytest.mark.parametrize(
    "change",
    [None, _without_padding, _as_segmentation_storage, _background_numbered_3],
)
def test_a_label_map_background_is_no_segment(
    tmp_path: Path, series16: tuple[list[pydicom.Dataset], SeriesVolume], cropped: bool,
    change: Change | None,
) -> None:
    path, labels, volume = _labelmap(tmp_path, series16, cropped)
    if change is not None:
        path = _altered(path, change)

    decoded = read_segmentation(path, volume)

    assert [s.number for s in decoded.segments] == [1, 2]
    assert [s.label for s in decoded.segments] == ["Lesion 1", "Lesion 2"]
    for segment in decoded.segments:
        np.testing.assert_array_equal(_mask(segment), labels == segment.number)
    assert [int(_mask(s).sum()) for s in decoded.segments] == [
        int((labels == 1).sum()), int((labels == 2).sum())]
    if change is None:
        assert [int(_mask(s).sum()) for s in decoded.segments] == [
            _highdicom_voxels(path, 1), _highdicom_voxels(path, 2)]


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    target = path.with_name("truncated.dcm")
    target.write_bytes(data[: len(data) * 2 // 3])
    return target


def _changed(change: Change) -> Callable[[Path], Path]:
    return lambda path: _altered(path, change)


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (_truncated, "truncated.dcm: "),
        (_changed(lambda seg: seg.PerFrameFunctionalGroupsSequence.pop()),
         "(5200,9230) PerFrameFunctionalGroupsSequence has 2 items for 3 frames"),
        (_changed(lambda seg: delattr(seg.SegmentSequence[0], "SegmentNumber")), "SegmentNumber"),
        (_changed(lambda seg: delattr(
            seg.SegmentSequence[0], "SegmentedPropertyCategoryCodeSequence")),
         "SegmentedPropertyCategoryCodeSequence"),
        (_changed(lambda seg: setattr(seg, "PixelData", seg.PixelData[:5])),
         "(7FE0,0010) PixelData cannot be decoded"),
        (_changed(lambda seg: delattr(
            seg.SharedFunctionalGroupsSequence[0], "SegmentIdentificationSequence")),
         "(0062,000A) SegmentIdentificationSequence"),
    ],
)
def test_no_library_error_escapes(
    cropped16: tuple[Path, SeriesVolume], damage: Callable[[Path], Path], named: str,
) -> None:
    path, volume = cropped16

    message = _refusal(damage(path), volume)

    assert named in message
