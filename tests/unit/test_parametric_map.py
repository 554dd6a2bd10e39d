"""Parametric maps: the values pyradiomics' voxel-based extraction gives, checked against an
independent local mean, on the region the preset bounds; computed as picklable array tasks (one
per lesion and feature class) whose maps equal one extraction of every feature, in this process
or in others; encoded as a DICOM Parametric Map that highdicom reads back with the same values
and geometry and dciodvfy accepts (what other readers see: ``test_map_readers``)."""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from radiomics.featureextractor import RadiomicsFeatureExtractor
from scipy import ndimage

import pipelines.outputs.parametric_map as parametric_map
from pipelines.outputs.parametric_map import (
    LesionMaps,
    MapError,
    MapTask,
    MapTaskResult,
    build_parametric_maps,
    compute_lesion_maps,
    compute_maps,
    lesion_map_tasks,
    map_feature_groups,
    maps_plan,
    parametric_maps,
    run_map_task,
)
from pipelines.plan import run_tasks
from pipelines.science.presets import MapOptions, Preset, PresetError, load_preset
from tests.conftest import REPO
from tests.unit.outputs_case import OutputsCase, build_case, dciodvfy

MARGIN_MM = 2.0


def _with_maps(preset: Preset, features: tuple[str, ...], radius: int = 1,
               **setting: object) -> Preset:
    maps = MapOptions(enabled=True, features=features, kernel_radius=radius, margin_mm=MARGIN_MM)
    radiomics = {**preset.radiomics, "setting": {**preset.settings, **setting}}
    return preset.model_copy(update={"maps": maps, "radiomics": radiomics})


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> OutputsCase:
    return build_case(tmp_path_factory.mktemp("maps"))


@pytest.fixture(scope="module")
def mean_maps(case: OutputsCase) -> list[LesionMaps]:
    preset = _with_maps(case.preset, ("firstorder_Mean", "glcm_Contrast"))
    return [compute_lesion_maps(case.volume.image, lesion, preset) for lesion in case.lesions]


def _objects_in(value: Any) -> Iterable[Any]:
    """``value`` and everything its dataclass fields, tuples, lists and dicts hold."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _objects_in(getattr(value, field.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _objects_in(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _objects_in(key)
            yield from _objects_in(item)


def _assert_same_maps(got: list[LesionMaps], want: list[LesionMaps]) -> None:
    """Bit for bit: index, voxel counts, feature order, geometry, pixel type and values."""
    assert len(got) == len(want)
    for ours, theirs in zip(got, want, strict=True):
        assert (ours.segment_number, ours.label, ours.index, ours.computed_voxels) == \
            (theirs.segment_number, theirs.label, theirs.index, theirs.computed_voxels)
        assert list(ours.maps) == list(theirs.maps)
        for name, image in ours.maps.items():
            other = theirs.maps[name]
            assert image.GetPixelID() == other.GetPixelID()
            assert (image.GetOrigin(), image.GetSpacing(), image.GetDirection(),
                    image.GetSize()) == (other.GetOrigin(), other.GetSpacing(),
                                         other.GetDirection(), other.GetSize())
            assert sitk.GetArrayFromImage(image).tobytes() == \
                sitk.GetArrayFromImage(other).tobytes()


def _batched(preset: Preset, voxel_batch: int) -> Preset:
    return preset.model_copy(update={"maps": preset.maps.model_copy(
        update={"voxel_batch": voxel_batch})})


def _pyradiomics_maps(task: MapTask) -> dict[str, np.ndarray]:
    """Plain pyradiomics: one voxel-based extraction of every map feature of the preset on the
    task's crop and mapped box, on pyradiomics' grid (what the maps were before tasks)."""
    options = task.preset.maps
    classes: dict[str, list[str]] = {}
    for name in options.features:
        feature_class, _, feature = name.partition("_")
        classes.setdefault(feature_class, []).append(feature)
    with warnings.catch_warnings():  # pykwalify's deprecated load_module()
        warnings.simplefilter("ignore", DeprecationWarning)
        extractor = RadiomicsFeatureExtractor({
            "setting": {**task.preset.settings, "label": 1, "additionalInfo": False},
            "voxelSetting": {"kernelRadius": options.kernel_radius,
                             "maskedKernel": options.masked_kernel,
                             "voxelBatch": options.voxel_batch, "initValue": math.nan},
            "imageType": {"Original": {}}, "featureClass": classes,
        })
    crop = task.crop.image()
    mask = np.zeros(task.crop.array.shape, dtype=np.uint8)
    (x0, y0, z0), (x1, y1, z1) = task.mapped
    mask[z0:z1, y0:y1, x0:x1] = 1
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(crop)
    result = extractor.execute(crop, mask_image, label=1, voxelBased=True)
    return {name: sitk.GetArrayFromImage(result[f"original_{name}"]) for name in options.features}


def test_map_tasks_are_arrays_and_their_parts_make_one_extraction(case: OutputsCase) -> None:
    """One task per feature class and run of voxel batches; each, pickled as a worker receives
    it, returns the values of its own voxels, and together they give, bit for bit, what one
    pyradiomics extraction of every map feature gives (NaN where nothing is mapped)."""
    preset = _batched(_with_maps(case.preset, ("firstorder_Mean", "glcm_Contrast",
                                               "firstorder_Entropy")), 40)
    tasks = lesion_map_tasks(case.volume.image, case.lesions[0], preset)
    parts = tasks[0].part[1]
    assert parts > 1
    # per feature class, in preset order within it, then per part of the voxel batches
    assert [(t.features, t.part) for t in tasks] == [
        *((("firstorder_Mean", "firstorder_Entropy"), (k, parts)) for k in range(parts)),
        *((("glcm_Contrast",), (k, parts)) for k in range(parts))]
    reference = _pyradiomics_maps(tasks[0])
    merged: dict[str, np.ndarray] = {}
    for task in tasks:
        contents = list(_objects_in(task))
        assert any(isinstance(item, np.ndarray) for item in contents)
        assert not any(isinstance(item, sitk.Image | Path) for item in contents)
        result = run_map_task(pickle.loads(pickle.dumps(task, protocol=5)))
        assert list(result) == list(task.features)
        for name, part in result.items():
            assert part.indices.size and part.grid.size[::-1] == reference[name].shape
            values = merged.setdefault(name, np.full(reference[name].shape, np.nan))
            assert np.isnan(values.flat[part.indices]).all()  # no voxel is in two parts
            values.flat[part.indices] = part.values
    assert list(merged) == ["firstorder_Mean", "firstorder_Entropy", "glcm_Contrast"]
    for name, values in merged.items():
        assert values.tobytes() == reference[name].tobytes(), name


def test_maps_are_the_same_in_this_process_in_two_and_through_a_map_function(
    case: OutputsCase, mean_maps: list[LesionMaps]
) -> None:
    preset = _with_maps(case.preset, ("firstorder_Mean", "glcm_Contrast"))
    here = compute_maps(case.volume.image, case.lesions, preset)
    _assert_same_maps(here, mean_maps)
    shipped: list[MapTask] = []

    def through_pickle(fn: Callable[[MapTask], MapTaskResult], tasks: Iterable[MapTask]
                       ) -> list[MapTaskResult]:
        shipped.extend(tasks)
        return [fn(pickle.loads(pickle.dumps(task, protocol=5))) for task in shipped]

    _assert_same_maps(run_tasks(maps_plan(case.volume.image, case.lesions, preset),
                                through_pickle), here)
    assert len(shipped) == sum(len(lesion_map_tasks(case.volume.image, lesion, preset))
                               for lesion in case.lesions)
    batched = _batched(preset, 40)  # several parts per feature class
    _assert_same_maps(run_tasks(maps_plan(case.volume.image, case.lesions, batched)),
                      compute_maps(case.volume.image, case.lesions, batched))


def test_maps_of_one_feature_class_at_a_time_are_the_maps_of_all_at_once(
    case: OutputsCase, mean_maps: list[LesionMaps]
) -> None:
    """``pipelines.process.job_plan`` computes, encodes and sends the maps one feature class at a
    time: each group's maps, and the Parametric Maps made of them (UIDs, Series Number,
    pixels), are those of one computation of every map feature; a feature the preset does not
    map is refused."""
    preset = _with_maps(case.preset, ("firstorder_Mean", "glcm_Contrast"))
    groups = map_feature_groups(preset)
    assert groups == [("firstorder_Mean",), ("glcm_Contrast",)]
    assert map_feature_groups(_with_maps(case.preset, (
        "glcm_Contrast", "firstorder_Mean", "glcm_Idm"))) == [
        ("glcm_Contrast", "glcm_Idm"), ("firstorder_Mean",)]
    at_once = build_parametric_maps(case.volume, mean_maps, preset,
                                    seg_sop_instance_uid=case.seg.sop_instance_uid)
    one_by_one = []
    for group in groups:
        lesion_maps = compute_maps(case.volume.image, case.lesions, preset, features=group)
        assert all(list(m.maps) == list(group) for m in lesion_maps)
        one_by_one += build_parametric_maps(case.volume, lesion_maps, preset,
                                            seg_sop_instance_uid=case.seg.sop_instance_uid)
    assert [(pm.SOPInstanceUID, pm.SeriesInstanceUID, pm.SeriesNumber) for pm in one_by_one] == \
        [(pm.SOPInstanceUID, pm.SeriesInstanceUID, pm.SeriesNumber) for pm in at_once]
    assert [pm.FloatPixelData for pm in one_by_one] == [pm.FloatPixelData for pm in at_once]
    with pytest.raises(MapError, match="maps no glcm_Idm"):
        compute_maps(case.volume.image, case.lesions, preset, features=("glcm_Idm",))


def test_map_region_is_the_lesion_box_plus_margin(case: OutputsCase,
                                                  mean_maps: list[LesionMaps]) -> None:
    spacing = np.array(case.volume.image.GetSpacing())
    for lesion, maps in zip(case.lesions, mean_maps, strict=True):
        z, y, x = np.nonzero(sitk.GetArrayFromImage(lesion.mask))
        margin = np.ceil(MARGIN_MM / spacing).astype(int)
        lower = np.maximum(np.array([x.min(), y.min(), z.min()]) - margin, 0)
        upper = np.array([x.max(), y.max(), z.max()]) + 1 + margin
        assert maps.index == tuple(lower)
        assert maps.maps["firstorder_Mean"].GetSize() == tuple(upper - lower)
        assert maps.maps["firstorder_Mean"].GetPixelID() == sitk.sitkFloat32


def test_mean_map_is_the_local_mean_of_the_kernel(case: OutputsCase,
                                                  mean_maps: list[LesionMaps]) -> None:
    """Kernel radius 1, unmasked kernel: each voxel's value is the mean of its 3 x 3 x 3
    neighbourhood of the source image (scipy, not pyradiomics)."""
    hu = sitk.GetArrayFromImage(case.volume.image).astype(np.float64)
    local_mean = ndimage.uniform_filter(hu, size=3, mode="nearest")
    for maps in mean_maps:
        values = sitk.GetArrayFromImage(maps.maps["firstorder_Mean"])
        x, y, z = maps.index
        nz, ny, nx = values.shape
        want = local_mean[z:z + nz, y:y + ny, x:x + nx]
        inner = (slice(1, -1),) * 3  # the image border has no full kernel; the crop is inside
        np.testing.assert_allclose(values[inner], want[inner], rtol=0, atol=1e-3)


def test_resampling_onto_the_source_spacing_gives_the_source_map(
    case: OutputsCase, mean_maps: list[LesionMaps]
) -> None:
    """A preset that resamples to the source's own spacing exercises the resample-and-return
    path; interpolation at the grid's own points must give back the unresampled map."""
    spacing = list(case.volume.image.GetSpacing())
    preset = _with_maps(case.preset, ("firstorder_Mean",), resampledPixelSpacing=spacing,
                        interpolator="sitkBSpline")
    lesion = case.lesions[1]
    resampled = compute_lesion_maps(case.volume.image, lesion, preset)
    plain = mean_maps[1]
    assert resampled.index == plain.index
    np.testing.assert_allclose(sitk.GetArrayFromImage(resampled.maps["firstorder_Mean"]),
                               sitk.GetArrayFromImage(plain.maps["firstorder_Mean"]),
                               rtol=0, atol=1e-2)


def test_parametric_map_reads_back_with_the_computed_values(
    case: OutputsCase, mean_maps: list[LesionMaps], tmp_path: Path
) -> None:
    preset = _with_maps(case.preset, ("firstorder_Mean", "glcm_Contrast"))
    objects = build_parametric_maps(case.volume, mean_maps, preset,
                                    seg_sop_instance_uid=case.seg.sop_instance_uid)
    assert [o.ContentDescription for o in objects] == ["firstorder_Mean map", "glcm_Contrast map"]
    assert len({o.SeriesInstanceUID for o in objects}) == 2
    hu = sitk.GetArrayFromImage(case.volume.image)
    for pm, name, unit in zip(objects, ("firstorder_Mean", "glcm_Contrast"),
                              ("[hnsf'U]", "1"), strict=True):
        path = tmp_path / f"{name}.dcm"
        pm.save_as(path, enforce_file_format=True)
        errors, _ = dciodvfy(path)
        assert errors == []
        read = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
        assert read.StudyInstanceUID == case.volume.study_instance_uid
        assert read.FrameOfReferenceUID == case.volume.frame_of_reference_uid
        assert [s.SeriesInstanceUID for s in read.ReferencedSeriesSequence] == [
            case.volume.series_instance_uid]
        mapping = read.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == unit
        quantity = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
        assert quantity.CodingSchemeDesignator == "IBSI"
        assert quantity.CodeValue == {"firstorder_Mean": "Q4LE", "glcm_Contrast": "ACUI"}[name]

        # stored values: the real world values (slope 1, intercept 0) and, off the mapped
        # regions, the padding, which highdicom would refuse to map (outside the mapping's range)
        stored, z0 = _in_source_order(read.get_volume(apply_real_world_transform=False),
                                      case.volume.image)
        assert z0 == 0 and stored.shape == hu.shape
        mapped = np.zeros(stored.shape, dtype=bool)
        for maps in mean_maps:
            values = sitk.GetArrayFromImage(maps.maps[name])
            x, y, z = maps.index
            nz, ny, nx = values.shape
            mapped[z:z + nz, y:y + ny, x:x + nx] = True
            got = stored[z - z0:z - z0 + nz, y:y + ny, x:x + nx]
            if maps is mean_maps[-1]:  # the last lesion wins where regions overlap
                np.testing.assert_array_equal(got, values)
            else:
                overlap = np.zeros(values.shape, dtype=bool)
                for other in mean_maps[mean_maps.index(maps) + 1:]:
                    ox, oy, oz = other.index
                    osz = other.maps[name].GetSize()
                    overlap[max(oz - z, 0):oz - z + osz[2], max(oy - y, 0):oy - y + osz[1],
                            max(ox - x, 0):ox - x + osz[0]] = True
                np.testing.assert_array_equal(got[~overlap], values[~overlap])
        assert (stored[~mapped] == np.float32(read.FloatPixelPaddingValue)).all()


def _in_source_order(volume: hd.Volume, image: sitk.Image) -> tuple[np.ndarray, int]:
    """The read volume's array with its slices in the source's order, and the source slice of
    its first one; fails unless every voxel lies on a source voxel centre."""
    to_source = np.linalg.solve(_affine4(image), volume.affine)
    steps, start = to_source[:3, :3], to_source[:3, 3]
    sign = round(steps[0, 0])
    np.testing.assert_allclose(steps, np.diag([sign, 1, 1]), atol=1e-6)
    np.testing.assert_allclose(start, np.round(start), atol=1e-6)
    assert round(start[1]) == 0 and round(start[2]) == 0
    array = volume.array if sign == 1 else volume.array[::-1]
    first = round(start[0]) if sign == 1 else round(start[0]) - volume.array.shape[0] + 1
    return array, first


def _affine4(image: sitk.Image) -> np.ndarray:
    """(slice, row, column) index to LPS affine, written out from the SimpleITK geometry."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    affine = np.eye(4)
    affine[:3, :3] = np.column_stack([direction[:, 2] * sz, direction[:, 1] * sy,
                                      direction[:, 0] * sx])
    affine[:3, 3] = image.GetOrigin()
    return affine


def test_uids_are_deterministic_and_follow_the_preset(case: OutputsCase,
                                                      mean_maps: list[LesionMaps]) -> None:
    preset = _with_maps(case.preset, ("firstorder_Mean",))
    first = build_parametric_maps(case.volume, mean_maps, preset,
                                  seg_sop_instance_uid=case.seg.sop_instance_uid)[0]
    again = build_parametric_maps(case.volume, mean_maps, preset,
                                  seg_sop_instance_uid=case.seg.sop_instance_uid)[0]
    other = build_parametric_maps(case.volume, mean_maps, preset.model_copy(
        update={"description": "changed"}), seg_sop_instance_uid=case.seg.sop_instance_uid)[0]
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_disabled_maps_make_nothing(case: OutputsCase) -> None:
    assert not case.preset.maps.enabled
    assert parametric_maps(case.volume, case.volume.image, case.lesions, case.preset,
                           seg_sop_instance_uid=case.seg.sop_instance_uid) == []


def test_shipped_presets_map_settings() -> None:
    assert not load_preset("ct-liver-basic").maps.enabled
    crlm = load_preset("ct-liver-crlm").maps
    assert crlm.enabled
    assert crlm.features == ("firstorder_Entropy", "glcm_Contrast")


@pytest.mark.parametrize(("maps", "reason"), [
    ({"enabled": True}, "at least one feature"),
    ({"features": ["shape_Sphericity"]}, "shape_Sphericity"),
    ({"features": ["glcm_Nope"]}, "unknown glcm feature"),
    ({"features": ["glcm_Contrast", "glcm_Contrast"]}, "duplicates"),
    ({"kernel_radius": 0}, "kernel_radius"),
])
def test_map_options_are_validated(tmp_path: Path, maps: dict, reason: str) -> None:
    data = yaml.safe_load((REPO / "pipelines/presets/ct-liver-basic.yaml").read_text())
    data["maps"] = maps
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PresetError, match=reason):
        load_preset(path)


def test_empty_lesion_is_refused(case: OutputsCase) -> None:
    lesion = case.lesions[0]
    empty = type(lesion)(lesion.number, lesion.label, lesion.mask * 0, lesion.category,
                         lesion.property_type, lesion.algorithm_type)
    preset = _with_maps(case.preset, ("firstorder_Mean",))
    with pytest.raises(MapError, match=r"Lesion 1.*no voxel"):
        compute_lesion_maps(case.volume.image, empty, preset)


def test_small_valued_map_gets_a_window_dciodvfy_accepts(
    case: OutputsCase, mean_maps: list[LesionMaps], tmp_path: Path
) -> None:
    """A map whose values span less than 1 (GLCM contrast of smooth tissue) needs a window
    narrower than 1, which only VOI LUT Function LINEAR_EXACT allows (PS3.3 C.11.2.1.2.1)."""
    preset = _with_maps(case.preset, ("firstorder_Mean",))
    small = [LesionMaps(m.segment_number, m.label, m.index,
                        {"firstorder_Mean": m.maps["firstorder_Mean"] * 1e-4}, m.computed_voxels)
             for m in mean_maps]
    [pm] = build_parametric_maps(case.volume, small, preset,
                                 seg_sop_instance_uid=case.seg.sop_instance_uid)
    voi = pm.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    assert float(voi.WindowWidth) < 1 and voi.VOILUTFunction == "LINEAR_EXACT"
    path = tmp_path / "small.dcm"
    pm.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []


def test_in_this_process_each_lesion_and_class_is_one_task(
        case: OutputsCase, monkeypatch: pytest.MonkeyPatch) -> None:
    """In one process the voxel batches are not split into tasks (each task resamples its
    crop): one task per lesion and feature class, with the maps of the split tasks."""
    preset = _batched(_with_maps(case.preset, ("firstorder_Mean", "glcm_Contrast")), 40)
    assert lesion_map_tasks(case.volume.image, case.lesions[0], preset)[0].part[1] > 1
    run: list[MapTask] = []

    def counted(task: MapTask) -> MapTaskResult:
        run.append(task)
        return run_map_task(task)

    monkeypatch.setattr(parametric_map, "run_map_task", counted)
    here = compute_maps(case.volume.image, case.lesions, preset)
    assert [(t.where, t.features, t.part) for t in run] == [
        (t.where, t.features, (0, 1)) for lesion in case.lesions
        for t in lesion_map_tasks(case.volume.image, lesion, preset, split=False)]
    assert len(run) == 2 * len(case.lesions)
    _assert_same_maps(here, run_tasks(maps_plan(case.volume.image, case.lesions, preset),
                                      lambda fn, tasks: [fn(t) for t in tasks]))
