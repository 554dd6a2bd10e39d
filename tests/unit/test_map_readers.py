"""What readers other than highdicom's volume see in a parametric map: one frame per source slice
in order along the slice normal with the source's rows and columns (OHIF fills the source's
volume with the frames as stored); a padding value no mapped voxel has, so a mapped 0 reads 0;
the Frame Anatomy without which dcmqi's ``paramap2itkimage`` crashes; dcmqi's values equal to
pydicom's; and the bytes of a map of a 600-slice CT bounded by its mapped voxels, not its grid
(docs/outputs.md, "Parametric maps")."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from pipelines.io.series import SeriesVolume
from pipelines.outputs.parametric_map import (
    LesionMaps,
    build_parametric_maps,
    lesions_anatomic_region,
    map_padding_value,
    slab_geometry,
)
from pipelines.science.presets import MapOptions, Preset
from tests.unit.outputs_case import OutputsCase, build_case

FEATURE = "firstorder_Mean"
PARAMAP2ITKIMAGE = "paramap2itkimage"  # dcmqi (PyPI dcmqi, the test extra)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> OutputsCase:
    return build_case(tmp_path_factory.mktemp("readers"))


def _preset(case: OutputsCase) -> Preset:
    maps = MapOptions(enabled=True, features=(FEATURE,), kernel_radius=1, margin_mm=2.0)
    return case.preset.model_copy(update={"maps": maps})


def _lesion_maps(case: OutputsCase) -> list[LesionMaps]:
    """A made-up map on a box at each lesion, its values from 0 (exactly, at voxel (0, 0, 0) of
    each box) up in steps of 0.25: a mapped 0 that must not read as padding."""
    maps = []
    for lesion in case.lesions:
        values = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7) * np.float32(0.25)
        maps.append(LesionMaps(lesion.number, lesion.label, lesion.index,
                               {FEATURE: sitk.GetImageFromArray(values)}, values.size))
    return maps


def _on_source_grid(case: OutputsCase, maps: list[LesionMaps]) -> np.ndarray:
    """The maps on the source grid (slice, row, column in source order), NaN where none is."""
    size = case.volume.image.GetSize()
    array = np.full(size[::-1], np.nan, dtype=np.float32)
    for lesion in maps:
        values = sitk.GetArrayFromImage(lesion.maps[FEATURE])
        x, y, z = lesion.index
        nz, ny, nx = values.shape
        array[z:z + nz, y:y + ny, x:x + nx] = values
    return array


@pytest.fixture(scope="module")
def written(case: OutputsCase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    [pm] = build_parametric_maps(case.volume, _lesion_maps(case), _preset(case),
                                 seg_sop_instance_uid=case.seg.sop_instance_uid)
    path = tmp_path_factory.mktemp("readers-out") / "map.dcm"
    pm.save_as(path, enforce_file_format=True)
    return path


def test_one_frame_per_source_slice_in_order_along_the_normal(
        case: OutputsCase, written: Path) -> None:
    """Frame k is source slice k (its position, its instance in the Derivation Image Sequence),
    slices ascending along row x column cosines, with the source's rows and columns."""
    pm = pydicom.dcmread(written)
    sources = case.volume.datasets
    assert pm.NumberOfFrames == len(sources) == case.volume.image.GetSize()[2]
    assert (pm.Rows, pm.Columns) == (sources[0].Rows, sources[0].Columns)
    cosines = np.array(sources[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    along = []
    for number, (frame, source) in enumerate(
            zip(pm.PerFrameFunctionalGroupsSequence, sources, strict=True), 1):
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, source.ImagePositionPatient, atol=1e-4)
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert frame.FrameContentSequence[0].DimensionIndexValues == number
        along.append(float(np.dot(position, normal)))
    assert np.all(np.diff(along) > 0)


def test_unmapped_voxels_are_padding_and_a_mapped_zero_reads_zero(
        case: OutputsCase, written: Path) -> None:
    """Stored values (pydicom and highdicom) are the maps at mapped voxels, bit for bit, zeros
    included, and the declared padding elsewhere; the padding is below every mapped value and 0,
    and the Real World Value Mapping's range starts at it, so that highdicom applies the mapping
    to the whole map (its default ``get_volume``)."""
    pm = pydicom.dcmread(written)
    assert pm.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    want = _on_source_grid(case, _lesion_maps(case))
    mapped = ~np.isnan(want)
    padding = np.float32(pm.FloatPixelPaddingValue)
    assert pm.FloatPixelPaddingRangeLimit == pm.FloatPixelPaddingValue
    assert padding < 0
    assert pm.pixel_array.dtype == np.float32
    volume = hd.pm.ParametricMap.from_dataset(pm).get_volume()
    on_source = volume.match_geometry(slab_geometry(case.volume, (0, len(want)))).array
    for stored in (pm.pixel_array, on_source):  # highdicom: float64, the same values
        np.testing.assert_array_equal(stored[mapped], want[mapped])
        assert (stored[~mapped] == padding).all()
    assert np.count_nonzero(pm.pixel_array[mapped] == 0) == len(case.lesions)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == float(padding)
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == float(np.nanmax(want))


def test_where_regions_overlap_the_range_is_of_the_values_written(case: OutputsCase) -> None:
    """The first lesion's lowest and highest values lie where the second lesion's region covers
    them: the Real World Value range, the padding and the window are of the values written."""
    first = np.full((4, 4, 4), 5.0, dtype=np.float32)
    first[2:, 2:, 2:] = [-50.0, 900.0]  # under the second region only
    second = np.full((4, 4, 4), 7.0, dtype=np.float32)
    maps = [LesionMaps(1, "Lesion 1", (10, 10, 5), {FEATURE: sitk.GetImageFromArray(first)}, 64),
            LesionMaps(2, "Lesion 2", (12, 12, 7), {FEATURE: sitk.GetImageFromArray(second)}, 64)]
    [pm] = build_parametric_maps(case.volume, maps, _preset(case),
                                 seg_sop_instance_uid=case.seg.sop_instance_uid)
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (mapping.DoubleFloatRealWorldValueFirstValueMapped,
            mapping.DoubleFloatRealWorldValueLastValueMapped) == (-1.0, 7.0)  # padding .. 7
    assert pm.FloatPixelPaddingValue == -1.0
    stored = pm.pixel_array
    assert np.count_nonzero(stored == 7.0) == 64 and np.count_nonzero(stored == 5.0) == 56


@pytest.mark.parametrize(("lowest", "padding"), [
    (0.0, -1.0), (3.5, -1.0), (-0.25, -2.0), (-1000.0, -1001.0), (-1000.5, -1002.0)])
def test_padding_is_one_below_the_smaller_of_zero_and_the_lowest_value(
        lowest: float, padding: float) -> None:
    assert map_padding_value(lowest) == np.float32(padding)


def test_padding_stays_below_values_float32_cannot_tell_from_their_integer_neighbours() -> None:
    lowest = float(np.float32(-3.0e9))  # float32 steps of 256 here: floor - 1 rounds back up
    assert np.float32(math.floor(lowest) - 1.0) == np.float32(lowest)
    assert map_padding_value(lowest) < np.float32(lowest)


def test_frame_anatomy_names_the_lesions_region(case: OutputsCase, written: Path) -> None:
    """The synthetic SEG's lesions lie in the liver (SCT 10200004), which is also the default;
    a region given is written as given; Frame Laterality U."""
    region = lesions_anatomic_region(case.seg, [lesion.number for lesion in case.lesions])
    assert region == hd.sr.CodedConcept.from_code(codes.SCT.Liver)
    [anatomy] = pydicom.dcmread(written).SharedFunctionalGroupsSequence[0].FrameAnatomySequence
    assert (anatomy.AnatomicRegionSequence[0].CodeValue,
            anatomy.AnatomicRegionSequence[0].CodingSchemeDesignator,
            anatomy.FrameLaterality) == ("10200004", "SCT", "U")
    abdomen = hd.sr.CodedConcept.from_code(codes.SCT.Abdomen)
    [pm] = build_parametric_maps(case.volume, _lesion_maps(case), _preset(case),
                                 seg_sop_instance_uid=case.seg.sop_instance_uid,
                                 anatomic_region=abdomen)
    [anatomy] = pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence
    assert anatomy.AnatomicRegionSequence[0].CodeValue == abdomen.value


def _paramap2itkimage() -> str:
    """dcmqi's reader, on PATH or beside this Python (the virtual environment's bin); fails, not
    skips, when it is missing, as ``dciodvfy`` does."""
    tool = shutil.which(PARAMAP2ITKIMAGE) or shutil.which(
        PARAMAP2ITKIMAGE, path=str(Path(sys.executable).parent))
    if tool is None:
        raise RuntimeError(f"{PARAMAP2ITKIMAGE} not found: install the test extra (dcmqi)")
    return tool


def test_dcmqi_reads_the_values_pydicom_reads(case: OutputsCase, written: Path,
                                              tmp_path: Path) -> None:
    """dcmqi's ``paramap2itkimage`` converts the map to NRRD on the source grid, every voxel
    equal to pydicom's Float Pixel Data (no bound needed: float32 both ways)."""
    run = subprocess.run([_paramap2itkimage(), "--inputDICOM", str(written),
                          "--outputDirectory", str(tmp_path)],
                         capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    image = sitk.ReadImage(str(tmp_path / "pmap.nrrd"))
    source = case.volume.image
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == source.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), source.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image),
                                  pydicom.dcmread(written).pixel_array)


def _tall_volume(case: OutputsCase, slices: int, rows: int, columns: int) -> SeriesVolume:
    """A CT grid of ``slices`` x ``rows`` x ``columns`` (0.8 x 0.8 x 2.5 mm) whose instances are
    the case's first header with their own position and UID (no pixels: the maps need none)."""
    template = case.volume.datasets[0]
    datasets = []
    for k in range(slices):
        dataset = copy.copy(template)
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=["tall grid", str(k)])
        dataset.InstanceNumber = k + 1
        dataset.Rows, dataset.Columns = rows, columns
        dataset.PixelSpacing = [0.8, 0.8]
        dataset.ImagePositionPatient = [-204.8, -204.8, 2.5 * k]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        datasets.append(dataset)
    image = sitk.Image(columns, rows, slices, sitk.sitkFloat32)
    image.SetOrigin((-204.8, -204.8, 0.0))
    image.SetSpacing((0.8, 0.8, 2.5))
    return SeriesVolume(image, tuple(datasets), tuple(Path(f"{k}.dcm") for k in range(slices)))


def test_a_600_slice_map_costs_its_mapped_voxels_not_its_grid(
        case: OutputsCase, tmp_path: Path) -> None:
    """600 x 512 x 512 (629 MB of float32) with a 48 x 48 x 16 mapped region of values no
    compression can shrink (random float32, 4 bytes each): the file is those bytes and about 1
    byte per kilobyte of padding (deflate's limit), under 1 MB in all."""
    volume = _tall_volume(case, 600, 512, 512)
    values = np.random.default_rng(0).gamma(4.0, 1.0, (16, 48, 48)).astype(np.float32)
    maps = [LesionMaps(1, "Lesion 1", (200, 150, 300), {FEATURE: sitk.GetImageFromArray(values)},
                       values.size)]
    [pm] = build_parametric_maps(volume, maps, _preset(case), seg_sop_instance_uid="1.2.3.4")
    assert pm.NumberOfFrames == 600
    path = tmp_path / "tall.dcm"
    pm.save_as(path, enforce_file_format=True)
    raw = 600 * 512 * 512 * 4
    assert path.stat().st_size < 4 * values.size + raw // 1000 + 200_000 < 1_000_000
