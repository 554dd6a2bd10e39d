"""A synthetic portal-venous abdominal CT with two liver lesions, and a DICOM SEG of the lesions.

For demonstrations and tests: every voxel is made here, so the truth is known. The CT is a series
of single-frame CT Image Storage instances (PS3.3 A.3 CT Image IOD), int16 stored values with
Rescale Intercept -1024 and Rescale Slope 1 (PS3.3 C.8.2.1.1.3), axial, in patient coordinates
(LPS, PS3.3 C.7.6.2.1.1) centred on the origin. The anatomy scales with the field of view: an
elliptic body of fat and soft tissue, and an ellipsoidal liver on the patient's right (negative x)
with a smoothed-noise parenchyma around 60 HU. Two spherical lesions sit in the liver: "Lesion 1"
(radius up to 18 mm, hypodense around 35 HU, heterogeneous) and "Lesion 2" (half that radius,
around 80 HU, smooth). Each lesion's texture has zero mean over its voxels, so its mean HU is its
designed mean up to the scanner's white noise. The SEG (PS3.3 A.51, BINARY) has one segment per
lesion, drawn as the voxels whose centres lie inside the sphere.

Patient data are fictitious. All UIDs derive from the seed and the grid
(pydicom.uid.generate_uid with entropy sources), and all dates are fixed, so a call with the same
arguments writes the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

PATIENT_NAME = "Synthetic^Liver"
PATIENT_ID = "SYNTH-LIVER-0001"
PATIENT_BIRTH_DATE = "19600229"
STUDY_DATE = "20240102"
STUDY_TIME = "101500"

RESCALE_INTERCEPT = -1024
AIR_HU, FAT_HU, SOFT_TISSUE_HU, LIVER_HU = -1000.0, -100.0, 40.0, 60.0
LESION_LABELS = ("Lesion 1", "Lesion 2")
LESION_HU = (35.0, 80.0)
LESION_RADIUS_MM = 18.0  # Lesion 1; Lesion 2 has half of it
SCANNER_NOISE_HU = 8.0
# (standard deviation in HU, smoothing sigma in mm) of the texture of liver, Lesion 1, Lesion 2
LIVER_TEXTURE = (8.0, 2.0)
LESION_TEXTURES = ((15.0, 1.5), (3.0, 4.0))


@dataclass(frozen=True)
class SyntheticLesion:
    """A spherical lesion: centre in patient coordinates (mm), radius (mm), designed mean HU."""

    label: str
    center_mm: tuple[float, float, float]
    radius_mm: float
    mean_hu: float


@dataclass(frozen=True)
class SyntheticStudy:
    """Files written by write_synthetic_study and the truth they were made from.

    ``ct_paths`` are in Instance Number order, head to feet; lesion centres are in mm in the
    patient coordinate system of the CT (PS3.3 C.7.6.2.1.1).
    """

    ct_paths: tuple[Path, ...]
    seg_path: Path
    lesions: tuple[SyntheticLesion, ...]
    study_instance_uid: str
    ct_series_uid: str


def write_synthetic_study(
    out_dir: Path,
    *,
    shape: tuple[int, int, int] = (60, 512, 512),
    pixel_spacing: float = 0.8,
    slice_thickness: float = 2.5,
    seed: int = 0,
) -> SyntheticStudy:
    """Write the CT series to ``out_dir/ct/`` and the SEG of its lesions to ``out_dir/seg.dcm``.

    ``shape`` is (slices, rows, columns); slices are ``slice_thickness`` mm apart and contiguous,
    pixels ``pixel_spacing`` mm square. Lesion radii shrink below 18 and 9 mm when the liver of
    a small field of view cannot hold them.

    Raises:
        ValueError: when the grid is empty, or too small or coarse to hold the liver or a lesion.
    """
    slices, rows, columns = shape
    if min(shape) < 1 or pixel_spacing <= 0 or slice_thickness <= 0:
        raise ValueError(f"shape {shape}, pixel_spacing and slice_thickness must be positive")
    out_dir = Path(out_dir)
    (out_dir / "ct").mkdir(parents=True, exist_ok=True)

    def uid(*names: object) -> str:
        grid = (shape, pixel_spacing, slice_thickness, seed)
        return generate_uid(
            entropy_srcs=["radiomics-node synthetic study", *map(str, grid)]
            + [str(name) for name in names]
        )

    # Voxel centres in patient coordinates (mm), the volume centred on the origin.
    z = (np.arange(slices) - (slices - 1) / 2) * slice_thickness
    y = (np.arange(rows) - (rows - 1) / 2) * pixel_spacing
    x = (np.arange(columns) - (columns - 1) / 2) * pixel_spacing
    half = np.array(
        [x[-1] + pixel_spacing / 2, y[-1] + pixel_spacing / 2, z[-1] + slice_thickness / 2]
    )
    anatomy = liver_anatomy(half)
    lesions = tuple(
        SyntheticLesion(label, centre, radius, mean_hu)
        for label, centre, radius, mean_hu in zip(
            LESION_LABELS, anatomy.lesion_centres, anatomy.lesion_radii, LESION_HU, strict=True
        )
    )

    rng = np.random.default_rng(seed)
    voxel_mm = (slice_thickness, pixel_spacing, pixel_spacing)
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    body, inner = body_regions(xx, yy, half)
    plane = np.where(body, np.where(inner, SOFT_TISSUE_HU, FAT_HU), AIR_HU)
    hu = np.repeat(plane, slices, axis=0).astype(np.float32)
    liver = inside_ellipsoid(xx, yy, zz, anatomy.liver_centre, anatomy.liver_axes)
    _fill(hu, "the liver", liver, LIVER_HU, LIVER_TEXTURE, voxel_mm, rng)
    masks = []
    for lesion, texture in zip(lesions, LESION_TEXTURES, strict=True):
        cx, cy, cz = lesion.center_mm
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= lesion.radius_mm**2
        _fill(hu, lesion.label, mask, lesion.mean_hu, texture, voxel_mm, rng)
        masks.append(mask)
    hu += rng.normal(0.0, SCANNER_NOISE_HU, hu.shape).astype(np.float32)
    stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, 0, 4095).astype(np.int16)

    study_uid, series_uid, frame_uid = uid("study"), uid("ct series"), uid("frame of reference")
    datasets = [
        ct_slice(
            stored[k],
            (float(x[0]), float(y[0]), float(z[k])),
            k,
            slices,
            pixel_spacing,
            slice_thickness,
            study_uid,
            series_uid,
            frame_uid,
            uid("ct", k),
        )
        for k in range(slices)
    ]
    ct_paths = []
    for dataset in reversed(datasets):
        path = out_dir / "ct" / f"{dataset.InstanceNumber:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        ct_paths.append(path)

    seg = lesion_segmentation(
        datasets, np.stack(masks, axis=-1), [lesion.label for lesion in lesions], uid
    )
    seg_path = out_dir / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    return SyntheticStudy(
        ct_paths=tuple(ct_paths),
        seg_path=seg_path,
        lesions=lesions,
        study_instance_uid=study_uid,
        ct_series_uid=series_uid,
    )


def _mm(point: np.ndarray) -> tuple[float, float, float]:
    return (float(point[0]), float(point[1]), float(point[2]))


@dataclass(frozen=True)
class LiverAnatomy:
    """Where the phantom's liver and lesions lie (mm, LPS) in a field of view whose half-extents
    along x, y and z are ``half``: the ellipsoidal liver's centre and semi-axes, and each
    lesion's centre and radius, in ``LESION_LABELS`` order."""

    liver_centre: np.ndarray
    liver_axes: np.ndarray
    lesion_centres: tuple[tuple[float, float, float], ...]
    lesion_radii: tuple[float, ...]


def liver_anatomy(half: np.ndarray) -> LiverAnatomy:
    """The anatomy scaled to ``half``: the liver on the patient's right, Lesion 1 of radius up to
    ``LESION_RADIUS_MM`` (at most 0.45 of the liver's shortest semi-axis), Lesion 2 of half it."""
    liver_centre = np.array([-0.30, -0.05, 0.0]) * half
    liver_axes = np.array([0.38, 0.42, 0.90]) * half
    radius = min(LESION_RADIUS_MM, 0.45 * float(liver_axes.min()))
    return LiverAnatomy(
        liver_centre=liver_centre,
        liver_axes=liver_axes,
        lesion_centres=(
            _mm(liver_centre + [-0.40, 0.20, 0.10] * liver_axes),
            _mm(liver_centre + [0.40, -0.30, -0.15] * liver_axes),
        ),
        lesion_radii=(radius, radius / 2),
    )


def body_regions(x: np.ndarray, y: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the elliptic body (skin inwards) and of its soft tissue inside the fat layer, at
    points of coordinates ``x`` and ``y`` (mm, broadcast together)."""
    body = (x / (0.88 * half[0])) ** 2 + (y / (0.70 * half[1])) ** 2 <= 1
    inner = (x / (0.80 * half[0])) ** 2 + (y / (0.62 * half[1])) ** 2 <= 1
    return body, inner


def inside_ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: np.ndarray, axes: np.ndarray
) -> np.ndarray:
    """Whether points of coordinates ``x``, ``y``, ``z`` (mm, broadcast together) lie inside the
    axis-aligned ellipsoid of ``centre`` and semi-axes ``axes``."""
    return (
        ((x - centre[0]) / axes[0]) ** 2
        + ((y - centre[1]) / axes[1]) ** 2
        + ((z - centre[2]) / axes[2]) ** 2
    ) <= 1


def _fill(
    hu: np.ndarray,
    name: str,
    region: np.ndarray,
    mean_hu: float,
    texture: tuple[float, float],
    voxel_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> None:
    """Set ``region`` to ``mean_hu`` plus smoothed gaussian noise of zero mean over the region.

    The noise is made in the region's bounding box only, which keeps large volumes fast.
    """
    box, noise = smooth_texture(name, region, texture, voxel_mm, rng)
    hu[box][region[box]] = mean_hu + noise[region[box]]


def smooth_texture(
    name: str,
    region: np.ndarray,
    texture: tuple[float, float],
    voxel_mm: tuple[float, float, float],
    rng: np.random.Generator,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Gaussian noise smoothed by ``texture``'s sigma (mm) in ``region``'s bounding box.

    Returns the box and the noise on it, scaled to ``texture``'s standard deviation and shifted to
    zero mean over the region's voxels; draws from ``rng`` once, a box's worth of normals.

    Raises:
        ValueError: when ``region`` (called ``name`` in the message) holds no voxel.
    """
    if not region.any():
        raise ValueError(f"{name} holds no voxel centre: the grid is too small or too coarse")
    std, sigma_mm = texture
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    inside = region[box]
    noise = ndimage.gaussian_filter(
        rng.standard_normal(inside.shape).astype(np.float32),
        sigma=[sigma_mm / size for size in voxel_mm],
        mode="reflect",
    )
    noise *= std / max(float(noise[inside].std()), 1e-6)
    noise -= float(noise[inside].mean())
    return box, noise


def ct_slice(
    pixels: np.ndarray,
    position: tuple[float, float, float],
    index: int,
    slices: int,
    pixel_spacing: float,
    slice_thickness: float,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    sop_uid: str,
) -> pydicom.Dataset:
    """One CT Image Storage instance with the modules of the CT Image IOD (PS3.3 A.3.3)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    # SOP Common (C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = STUDY_DATE, STUDY_TIME
    # Patient (C.7.1.1), fictitious
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.PatientSex = "O"
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = STUDY_DATE, STUDY_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYNTH1"
    ds.AccessionNumber = "SYNTH0001"
    ds.StudyDescription = "Synthetic CT abdomen, portal venous"
    # General Series (C.7.3.1)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.SeriesDate, ds.SeriesTime = STUDY_DATE, STUDY_TIME
    ds.SeriesDescription = "Portal venous 2.5 mm (synthetic)"
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "HFS"
    # Frame of Reference (C.7.4.1)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment (C.7.5.1)
    ds.Manufacturer = "radiomics-node"
    ds.ManufacturerModelName = "synthetic liver phantom"
    # General Image (C.7.6.1); instance 1 is the most cranial slice, as scanned head to feet
    ds.InstanceNumber = slices - index
    ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
    ds.AcquisitionDate, ds.AcquisitionTime = STUDY_DATE, STUDY_TIME
    ds.BurnedInAnnotation = "NO"
    # Image Plane (C.7.6.2)
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = list(position)
    ds.SliceThickness = slice_thickness
    ds.SliceLocation = position[2]
    # Contrast/Bolus (C.7.6.4): required when contrast was given, as in a portal venous phase
    ds.ContrastBolusAgent = "Iodinated contrast agent"
    ds.ContrastBolusRoute = "IV"
    # CT Image (C.8.2.1) and Image Pixel (C.7.6.3)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.KVP = 120
    ds.ConvolutionKernel = "STANDARD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    # VOI LUT (C.11.2): a liver window
    ds.WindowCenter, ds.WindowWidth = 60, 160
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def lesion_segmentation(
    source: list[pydicom.Dataset],
    masks: np.ndarray,
    labels: Sequence[str],
    uid: Callable[..., str],
    *,
    date: str = STUDY_DATE,
    time: str = STUDY_TIME,
) -> hd.seg.Segmentation:
    """A BINARY SEG (PS3.3 A.51) with one MANUAL segment per label, frames on the source slices.

    ``masks`` is (slices, rows, columns, segments) in the order of ``source``. A segment labelled
    "Liver" is the organ (SCT Anatomical Structure / Liver, as ``pipelines.science.rois.is_liver``
    recognises it), any other a lesion (SCT Morphologically Abnormal Structure / Neoplasm, finding
    site Liver). Every date and time is ``date`` and ``time``, every UID ``uid``'s.
    """
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=(
                codes.SCT.AnatomicalStructure
                if label == "Liver"
                else codes.SCT.MorphologicallyAbnormalStructure
            ),
            segmented_property_type=codes.SCT.Liver if label == "Liver" else codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=uid("tracking", label),
            tracking_id=label,
            anatomic_regions=None if label == "Liver" else [codes.SCT.Liver],
        )
        for number, label in enumerate(labels, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uid("seg series"),
        series_number=100,
        sop_instance_uid=uid("seg"),
        instance_number=1,
        manufacturer="radiomics-node",
        manufacturer_model_name="synthetic liver phantom",
        software_versions="radiomics-node synthetic study",
        device_serial_number="SYNTHETIC",
        content_label="LESIONS",
        content_description="Liver lesions of the synthetic phantom",
        content_creator_name="Synthetic^Reader",
        series_description="Lesions (synthetic)",
        content_date=date,
        content_time=time,
        series_date=date,
        series_time=time,
    )
    # highdicom stamps times with the clock and draws a random Dimension Organization UID
    # (PS3.3 C.7.6.17); the phantom is dated like its study and its UIDs follow the seed.
    seg.InstanceCreationDate, seg.InstanceCreationTime = date, time
    for equipment in seg.ContributingEquipmentSequence:
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = date + time
    organization = uid("dimension organization")
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = organization
    return seg
