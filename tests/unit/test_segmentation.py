"""read_segmentation on highdicom's reference SEGs of pydicom's CT2 series (PS3.3 A.51, C.8.20).

Expected masks are computed here from the SEG's raw frames and their per-frame functional groups
with plain pydicom, not through highdicom or the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from demo.synthetic import SyntheticStudy, write_synthetic_study
from pipelines.io.references import referenced_series_uids
from pipelines.io.segmentation import (
    Segment,
    SegmentationError,
    read_segmentation,
)
from pipelines.io.series import SeriesVolume, read_series

CT2 = Path("pydicom/test_files/dicomdirtests/77654033/CT2")
SEGS = Path("highdicom/data/test_files")
CT2_SERIES = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"


@pytest.fixture(scope="module")
def contiguous(refdata: Path) -> SeriesVolume:
    """CT2's three contiguous slices (17106 lies 202.5 mm away and read_series refuses it)."""
    return read_series([refdata / CT2 / name for name in ("17136", "17166", "17196")])


@pytest.fixture(scope="module")
def all_four(refdata: Path) -> SeriesVolume:
    """All four CT2 slices in z order on an index grid, built without read_series."""
    read = [
        (path, pydicom.dcmread(path, stop_before_pixels=True)) for path in (refdata / CT2).iterdir()
    ]
    read.sort(key=lambda item: float(item[1].ImagePositionPatient[2]))
    paths, datasets = zip(*read, strict=True)
    image = sitk.Image(16, 16, 4, sitk.sitkFloat32)
    image.SetOrigin(tuple(float(v) for v in datasets[0].ImagePositionPatient))
    image.SetSpacing((0.488281, 0.488281, 1.25))
    return SeriesVolume(image=image, datasets=datasets, paths=paths)


def _expected(
    seg_path: Path, volume: SeriesVolume, threshold: float = 0.5
) -> dict[int, np.ndarray]:
    """Segment number -> mask in the volume's slice order, from the raw frames."""
    seg = pydicom.dcmread(seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    if seg.SegmentationType == "FRACTIONAL":
        frames = frames / float(seg.MaximumFractionalValue) >= threshold
    uids = list(volume.sop_instance_uids)
    masks = {
        int(item.SegmentNumber): np.zeros((len(uids), seg.Rows, seg.Columns), dtype=np.uint8)
        for item in seg.SegmentSequence
    }
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = groups.DerivationImageSequence[0].SourceImageSequence[0]
        masks[number][uids.index(source.ReferencedSOPInstanceUID)] = frame > 0
    return masks


Change = Callable[[pydicom.Dataset], None]


def _altered(source: Path, target: Path, change: Change) -> Path:
    seg = pydicom.dcmread(source)
    change(seg)
    seg.save_as(target)
    return target


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _assert_on_grid(mask: sitk.Image, volume: SeriesVolume) -> None:
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == volume.image.GetSize()
    assert mask.GetOrigin() == volume.image.GetOrigin()
    assert mask.GetSpacing() == volume.image.GetSpacing()
    assert mask.GetDirection() == volume.image.GetDirection()


def _segmentation(sources: list, pixels: np.ndarray, kind: hd.seg.SegmentationTypeValues,
                  like: pydicom.Dataset, series_number: int) -> hd.seg.Segmentation:
    """A SEG of ``pixels`` on ``sources`` with the segment descriptions of the SEG ``like``."""
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=[
            hd.seg.SegmentDescription.from_dataset(item) for item in like.SegmentSequence
        ],
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )


@pytest.mark.parametrize("name", ["seg_image_ct_binary.dcm", "seg_image_ct_binary_fractional.dcm"])
def test_binary_masks_land_on_their_source_slices(
    refdata: Path, contiguous: SeriesVolume, name: str
) -> None:
    decoded = read_segmentation(refdata / SEGS / name, contiguous)

    (segment,) = decoded.segments
    expected = _expected(refdata / SEGS / name, contiguous)[1]
    np.testing.assert_array_equal(_array(segment.mask), expected)
    assert _array(segment.mask).sum(axis=(1, 2)).tolist() == [127, 256, 255]
    _assert_on_grid(segment.mask, contiguous)
    # only the box of the voxels is held, at its place on the source grid
    z, y, x = np.nonzero(expected)
    assert segment.index == (x.min(), y.min(), z.min())
    assert segment.region.GetSize() == tuple(int(np.ptp(v)) + 1 for v in (x, y, z))
    assert segment.region.GetOrigin() == contiguous.image.TransformIndexToPhysicalPoint(
        segment.index)
    assert (segment.number, segment.label, segment.algorithm_type) == (
        1,
        "first segment",
        "AUTOMATIC",
    )
    assert (segment.category.value, segment.category.scheme_designator) == ("85756007", "SCT")
    assert segment.property_type.meaning
    raw = pydicom.dcmread(refdata / SEGS / name, stop_before_pixels=True)
    assert decoded.sop_instance_uid == raw.SOPInstanceUID
    assert decoded.series_instance_uid == raw.SeriesInstanceUID
    assert decoded.sop_class_uid == "1.2.840.10008.5.1.4.1.1.66.4"
    assert decoded.path == refdata / SEGS / name


def test_slices_without_frames_are_empty(refdata: Path, all_four: SeriesVolume) -> None:
    decoded = read_segmentation(refdata / SEGS / "seg_image_ct_binary.dcm", all_four)

    counts = _array(decoded.segments[0].mask).sum(axis=(1, 2)).tolist()
    assert counts == [0, 127, 256, 255]  # no frame references slice 17106


def test_overlapping_segments_are_kept_separate(refdata: Path, all_four: SeriesVolume) -> None:
    path = refdata / SEGS / "seg_image_ct_binary_overlap.dcm"

    decoded = read_segmentation(path, all_four)

    expected = _expected(path, all_four)
    assert [s.number for s in decoded.segments] == [1, 2]
    assert [s.label for s in decoded.segments] == ["first segment", "second segment"]
    first, second = (_array(s.mask) for s in decoded.segments)
    np.testing.assert_array_equal(first, expected[1])
    np.testing.assert_array_equal(second, expected[2])
    assert (first & second).any(), "the reference segments overlap"
    assert (first & ~second).any()
    for segment in decoded.segments:
        _assert_on_grid(segment.mask, all_four)


@pytest.mark.parametrize(("threshold", "voxels"), [(0.2, 661), (0.5, 638), (0.6, 0)])
def test_fractional_threshold_is_honoured(
    refdata: Path, contiguous: SeriesVolume, threshold: float, voxels: int
) -> None:
    path = refdata / SEGS / "seg_image_ct_true_fractional.dcm"

    decoded = read_segmentation(path, contiguous, fractional_threshold=threshold)

    mask = _array(decoded.segments[0].mask)
    np.testing.assert_array_equal(mask, _expected(path, contiguous, threshold)[1])
    assert int(mask.sum()) == voxels


def test_single_frame_seg_on_a_single_slice(refdata: Path) -> None:
    volume = read_series([refdata / "pydicom/test_files/CT_small.dcm"])
    path = refdata / SEGS / "seg_image_ct_binary_single_frame.dcm"

    decoded = read_segmentation(path, volume)

    np.testing.assert_array_equal(_array(decoded.segments[0].mask), _expected(path, volume)[1])
    assert int(_array(decoded.segments[0].mask).sum()) == 1832


def test_volume_slices_the_seg_does_not_list_are_empty(
    refdata: Path, all_four: SeriesVolume, tmp_path: Path
) -> None:
    def list_only_segmented_slices(seg: pydicom.Dataset) -> None:
        instances = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence = [
            item for item in instances if not item.ReferencedSOPInstanceUID.endswith(".93")
        ]

    path = _altered(
        refdata / SEGS / "seg_image_ct_binary.dcm",
        tmp_path / "listed.dcm",
        list_only_segmented_slices,
    )

    decoded = read_segmentation(path, all_four)

    assert _array(decoded.segments[0].mask).sum(axis=(1, 2)).tolist() == [0, 127, 256, 255]


def test_frames_on_slices_outside_the_volume_are_refused(
    refdata: Path, contiguous: SeriesVolume
) -> None:
    with pytest.raises(SegmentationError) as raised:
        read_segmentation(refdata / SEGS / "seg_image_ct_binary_overlap.dcm", contiguous)

    message = str(raised.value)
    assert "seg_image_ct_binary_overlap.dcm: frame 1" in message
    assert "(0008,1155) ReferencedSOPInstanceUID" in message
    assert "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.93" in message


def test_seg_of_another_series_is_refused(refdata: Path, contiguous: SeriesVolume) -> None:
    with pytest.raises(SegmentationError, match=r"\(0008,1115\) ReferencedSeriesSequence"):
        read_segmentation(refdata / SEGS / "seg_image_ct_binary_single_frame.dcm", contiguous)


def test_an_image_is_not_a_seg(refdata: Path, contiguous: SeriesVolume) -> None:
    with pytest.raises(SegmentationError, match=r"17136: \(0008,0016\) SOPClassUID"):
        read_segmentation(refdata / CT2 / "17136", contiguous)


def _frame_item(seg: pydicom.Dataset, keyword: str, frame: int = 0) -> pydicom.Dataset:
    return seg.PerFrameFunctionalGroupsSequence[frame][keyword][0]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda seg: setattr(
                _frame_item(seg, "PlanePositionSequence", 1),
                "ImagePositionPatient",
                [-125.0, -128.1, 110.0],
            ),
            "frame 2: (0020,0032) ImagePositionPatient",
        ),
        (
            lambda seg: setattr(
                seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0],
                "PixelSpacing",
                [0.5, 0.5],
            ),
            "(0028,0030) PixelSpacing",
        ),
        (
            lambda seg: setattr(seg, "FrameOfReferenceUID", "1.2.3"),
            "(0020,0052) FrameOfReferenceUID",
        ),
        (
            lambda seg: [
                delattr(_frame_item(seg, "DerivationImageSequence"), "SourceImageSequence"),
                setattr(
                    _frame_item(seg, "PlanePositionSequence"),
                    "ImagePositionPatient",
                    [-125.0, -128.1, 50.0],
                ),
            ],
            "frame 1: (0020,0032) ImagePositionPatient is [-125.0, -128.1, 50.0], on no slice",
        ),
    ],
)
def test_frames_off_their_source_geometry_are_refused(
    refdata: Path, contiguous: SeriesVolume, tmp_path: Path, change: Change, named: str
) -> None:
    path = _altered(refdata / SEGS / "seg_image_ct_binary.dcm", tmp_path / "altered.dcm", change)

    with pytest.raises(SegmentationError) as raised:
        read_segmentation(path, contiguous)

    assert "altered.dcm" in str(raised.value)
    assert named in str(raised.value)


def test_a_frame_whose_locations_are_not_preserved_is_placed_by_its_plane_position(
    refdata: Path, contiguous: SeriesVolume, tmp_path: Path
) -> None:
    """Spatial Locations Preserved (0028,135A) NO says the frame's pixels are not its source's;
    its own Plane Position (Patient) still places it (PS3.3 C.7.6.16.2.3), here on the same
    pixels."""
    def not_preserved(seg: pydicom.Dataset) -> None:
        for groups in seg.PerFrameFunctionalGroupsSequence:
            groups.DerivationImageSequence[0].SourceImageSequence[0].SpatialLocationsPreserved = (
                "NO")

    source = refdata / SEGS / "seg_image_ct_binary.dcm"
    path = _altered(source, tmp_path / "not_preserved.dcm", not_preserved)

    (segment,) = read_segmentation(path, contiguous).segments

    np.testing.assert_array_equal(_array(segment.mask), _expected(source, contiguous)[1])


def test_threshold_outside_unit_interval_is_refused(
    refdata: Path, contiguous: SeriesVolume
) -> None:
    with pytest.raises(SegmentationError, match="fractional_threshold"):
        read_segmentation(refdata / SEGS / "seg_image_ct_true_fractional.dcm", contiguous, 0.0)


def test_referenced_series_uids(refdata: Path) -> None:
    seg = pydicom.dcmread(refdata / SEGS / "seg_image_ct_binary.dcm", stop_before_pixels=True)

    assert referenced_series_uids(seg) == {CT2_SERIES}
    assert referenced_series_uids(pydicom.Dataset()) == set()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(
        tmp_path_factory.mktemp("synthetic"),
        shape=(12, 64, 64),
        pixel_spacing=3.0,
        slice_thickness=4.0,
    )


def test_frames_without_source_references_are_placed_by_position(
    refdata: Path, all_four: SeriesVolume, tmp_path: Path
) -> None:
    def drop_sources(seg: pydicom.Dataset) -> None:
        for groups in seg.PerFrameFunctionalGroupsSequence:
            del groups.DerivationImageSequence

    source = refdata / SEGS / "seg_image_ct_binary_overlap.dcm"
    path = _altered(source, tmp_path / "positional.dcm", drop_sources)

    by_position = read_segmentation(path, all_four)
    by_reference = read_segmentation(source, all_four)

    for mine, theirs in zip(by_position.segments, by_reference.segments, strict=True):
        np.testing.assert_array_equal(_array(mine.mask), _array(theirs.mask))
        assert int(_array(mine.mask).sum()) > 0


def test_label_map_seg_gives_the_binary_seg_masks(
    synthetic: SyntheticStudy, tmp_path: Path
) -> None:
    volume = read_series(list(synthetic.ct_paths))
    binary = read_segmentation(synthetic.seg_path, volume)
    sources = [pydicom.dcmread(p) for p in synthetic.ct_paths]
    uids = [ds.SOPInstanceUID for ds in sources]
    labels = np.zeros(sitk.GetArrayFromImage(volume.image).shape, dtype=np.uint8)
    for segment in binary.segments:
        labels[_array(segment.mask) > 0] = segment.number
    order = [list(volume.sop_instance_uids).index(uid) for uid in uids]
    labelmap = _segmentation(sources, labels[order], hd.seg.SegmentationTypeValues.LABELMAP,
                             binary.dataset, series_number=7)
    assert labelmap.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    path = tmp_path / "labelmap.dcm"
    labelmap.save_as(path)

    decoded = read_segmentation(path, volume)

    assert [s.number for s in decoded.segments] == [1, 2]
    assert [s.label for s in decoded.segments] == ["Lesion 1", "Lesion 2"]
    for mine, theirs in zip(decoded.segments, binary.segments, strict=True):
        np.testing.assert_array_equal(_array(mine.mask), _array(theirs.mask))
        assert (mine.category, mine.property_type, mine.algorithm_type) == (
            theirs.category,
            theirs.property_type,
            "MANUAL",
        )
        assert int(_array(mine.mask).sum()) > 0


def test_seg_of_a_multiframe_source_uses_referenced_frame_numbers(
    synthetic: SyntheticStudy, tmp_path: Path
) -> None:
    single = read_series(list(synthetic.ct_paths))
    binary = read_segmentation(synthetic.seg_path, single)
    frames = [pydicom.dcmread(p) for p in synthetic.ct_paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        frames,
        series_instance_uid=generate_uid(),
        series_number=3,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    enhanced_path = tmp_path / "enhanced.dcm"
    enhanced.save_as(enhanced_path)
    multi = read_series([enhanced_path])
    # Masks in the enhanced image's frame order: frame f lies at its Plane Position.
    positions = [
        tuple(float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient)
        for g in enhanced.PerFrameFunctionalGroupsSequence
    ]
    z_of = {s.position: k for k, s in enumerate(single.slices)}
    masks = np.stack([_array(s.mask) for s in binary.segments], axis=-1)
    seg = _segmentation([enhanced], masks[[z_of[p] for p in positions]],
                        hd.seg.SegmentationTypeValues.BINARY, binary.dataset, series_number=8)
    path = tmp_path / "seg_on_enhanced.dcm"
    seg.save_as(path)
    assert (
        "ReferencedFrameNumber"
        in (
            seg.PerFrameFunctionalGroupsSequence[0]
            .DerivationImageSequence[0]
            .SourceImageSequence[0]
        )
    )

    decoded = read_segmentation(path, multi)

    for mine, theirs in zip(decoded.segments, binary.segments, strict=True):
        np.testing.assert_array_equal(_array(mine.mask), _array(theirs.mask))


def test_ibsi_deprecated_seg_on_its_legacy_converted_mr(refdata: Path) -> None:
    phantom = refdata / "ibsi1/ibsi_1_digital_phantom"
    volume = read_series([phantom / "dicom_deprecated/image/phantom.deprecated"])
    nifti_mask = sitk.ReadImage(str(phantom / "nifti/mask/mask.nii.gz"))

    decoded = read_segmentation(phantom / "dicom_deprecated/mask/mask.deprecated", volume)

    (segment,) = decoded.segments
    _assert_on_grid(segment.mask, volume)
    assert int(_array(segment.mask).sum()) == int(sitk.GetArrayFromImage(nifti_mask).sum())
    # The frames name no source image: each is placed by its Plane Position (Patient).
    raw = pydicom.dcmread(phantom / "dicom_deprecated/mask/mask.deprecated")
    assert "DerivationImageSequence" not in raw.PerFrameFunctionalGroupsSequence[0]


def test_a_segment_from_a_full_grid_mask_keeps_its_box_and_rebuilds_the_mask() -> None:
    array = np.zeros((6, 20, 30), dtype=np.uint8)
    array[2:4, 5:9, 10:13] = 1
    array[3, 6, 11] = 0
    mask = sitk.GetImageFromArray(array)
    mask.SetSpacing((0.8, 0.7, 2.5))
    mask.SetOrigin((-5.0, 3.0, 7.5))
    code = hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
    segment = Segment(1, "Lesion", mask, code, code, "MANUAL")
    assert segment.index == (10, 5, 2)
    assert segment.region.GetSize() == (3, 4, 2)
    assert segment.region.GetOrigin() == mask.TransformIndexToPhysicalPoint((10, 5, 2))
    full = segment.mask
    np.testing.assert_array_equal(sitk.GetArrayFromImage(full), array)
    assert (full.GetOrigin(), full.GetSpacing(), full.GetDirection()) == (
        mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection())

    empty = Segment(2, "Empty", mask * 0, code, code, "MANUAL")
    assert empty.region.GetSize() == (1, 1, 1)
    assert not sitk.GetArrayFromImage(empty.mask).any()
