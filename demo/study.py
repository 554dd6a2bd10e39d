"""Synthetic liver studies of several series: multi-phase CT, multi-sequence MR and a prior CT.

For demonstrations and tests of study-level jobs: every voxel is made here, so the truth is known.
One fictitious patient (``PATIENT_ID``) has one anatomy, ``demo.synthetic``'s liver phantom laid
out for the canonical grid ``CANONICAL_GRID`` (an elliptic body of fat and soft tissue, an
ellipsoidal liver, "Lesion 1" of radius 18 mm and "Lesion 2" of 9 mm, each with a smoothed-noise
texture of its own drawn once from the seed). Each series samples that anatomy at its own voxel
centres, moved by a known rigid motion (the patient moved between breath holds), with white noise
of its own:

* ``write_multiphase_ct``: one CT study (PS3.3 A.3 CT Image IOD, single-frame), three series
  acquired ``CT_PHASES`` seconds after the contrast injection, one Frame of Reference (as one
  scanner session writes them), each series with the values of ``CT_ENHANCEMENT_HU``; the
  arterial and delayed series are moved against the portal venous one by ``CT_MISREGISTRATION``.
* ``write_multisequence_mr``: one MR study (PS3.3 A.4 MR Image IOD, single-frame): T1 before
  contrast, T2 HASTE, diffusion at b = 0, 400 and 800 s/mm2 in one series (Diffusion b-value
  (0018,9087) on each instance, as scanners write it into MR Image Storage: a Standard Extended
  SOP Class, PS3.4 B.1.3; the signal exactly ``S0 exp(-b ADC)`` with ``MR_ADC`` before noise;
  Image Type value 3 as a Siemens scanner writes it, M or DIFFUSION) and the hepatobiliary
  phase 20 min after gadoxetate, with ``MR_SIGNAL``; the DWI and HBP series moved against T2
  by ``MR_MISREGISTRATION``.
* ``write_prior_study``: the same patient's CT six months earlier, the lesions smaller by
  ``PRIOR_RADIUS_RATIO``, the patient lying differently by ``PRIOR_POSITIONING``.

Each study has one BINARY SEG (PS3.3 A.51) of "Lesion 1", "Lesion 2" and "Liver" (the organ,
lesions included; SCT Liver, which ``pipelines.science.rois.is_liver`` recognises) on its
reference series: portal venous for CT, T2 for MR. A lesion's Tracking UID derives from the seed
and its label only, so it is the same in every study of the patient (PS3.3 C.8.20.2.1,
longitudinal tracking).

Geometry: every series is axial, centred on the origin of the patient coordinate system (LPS,
PS3.3 C.7.6.2.1.1); a rigid motion ``T`` of a series maps a point of that series' patient
coordinates to the point of its reference series where the same anatomy lies, so that
``T.sitk_transform()`` resamples the reference series onto the series' grid (SimpleITK's
convention: fixed = this series, moving = the reference). Rotations are about the z axis through
the liver's centre. Lesions are spheres drawn as the voxels whose centres lie inside; values are
sampled at voxel centres without partial volume, so a lesion's mean over its truth mask is its
designed value up to texture and noise. Patient data are fictitious; UIDs derive from the seed,
the study and the options (pydicom.uid.generate_uid with entropy sources), dates and times are
fixed: the same arguments write the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy import ndimage

from demo.synthetic import (
    LESION_LABELS,
    LESION_TEXTURES,
    LIVER_TEXTURE,
    RESCALE_INTERCEPT,
    LiverAnatomy,
    body_regions,
    ct_slice,
    inside_ellipsoid,
    lesion_segmentation,
    liver_anatomy,
    smooth_texture,
)

PATIENT_NAME = "Synthetic^Multiphase"
PATIENT_ID = "SYNTH-LIVER-0002"
PATIENT_BIRTH_DATE = "19580614"
FOLLOW_UP_DATE, PRIOR_DATE, MR_DATE = "20240702", "20240103", "20240709"
INJECTION_TIME = "101500"  # CT: start of the iodinated bolus, on both CT dates
MR_INJECTION_TIME = "094000"  # MR: start of the gadoxetate bolus

SEG_LABELS = (*LESION_LABELS, "Liver")
ROLES = ("arterial", "portal_venous", "delayed")
MR_ROLES = ("t1_pre", "t2", "dwi", "hbp")
B_VALUES = (0, 400, 800)  # s/mm2


@dataclass(frozen=True)
class Grid:
    """An axial grid centred on the origin: ``shape`` (slices, rows, columns), square pixels of
    ``pixel_mm``, contiguous slices ``slice_mm`` apart and thick."""

    shape: tuple[int, int, int]
    pixel_mm: float
    slice_mm: float

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel centre coordinates (mm) along z (slices), y (rows) and x (columns)."""
        slices, rows, columns = self.shape
        return (
            (np.arange(slices) - (slices - 1) / 2) * self.slice_mm,
            (np.arange(rows) - (rows - 1) / 2) * self.pixel_mm,
            (np.arange(columns) - (columns - 1) / 2) * self.pixel_mm,
        )

    def half(self) -> np.ndarray:
        """Half-extents (mm) of the field of view along x, y and z."""
        slices, rows, columns = self.shape
        return np.array([columns * self.pixel_mm, rows * self.pixel_mm, slices * self.slice_mm]) / 2


@dataclass(frozen=True)
class RigidMotion:
    """``p -> R(p - centre) + centre + translation``, R a rotation of ``angle_z_deg`` about z
    (right-handed, LPS): a point of a series to the point of its reference series (mm)."""

    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    angle_z_deg: float = 0.0
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous matrix of the motion."""
        angle = math.radians(self.angle_z_deg)
        rotation = np.array(
            [
                [math.cos(angle), -math.sin(angle), 0.0],
                [math.sin(angle), math.cos(angle), 0.0],
                [0.0, 0.0, 1.0],
            ]
        )
        centre = np.array(self.centre_mm)
        matrix = np.eye(4)
        matrix[:3, :3] = rotation
        matrix[:3, 3] = centre - rotation @ centre + np.array(self.translation_mm)
        return matrix

    def sitk_transform(self) -> sitk.Euler3DTransform:
        """The same motion as SimpleITK's Euler3DTransform (angles in radians)."""
        transform = sitk.Euler3DTransform()
        transform.SetCenter(self.centre_mm)
        transform.SetRotation(0.0, 0.0, math.radians(self.angle_z_deg))
        transform.SetTranslation(self.translation_mm)
        return transform


# The canonical grid: the follow-up portal venous series; the anatomy is laid out for it.
CANONICAL_GRID = Grid((48, 128, 128), 2.5, 2.5)


@dataclass(frozen=True)
class _CtPhase:
    description: str
    series_number: int
    seconds_after_injection: int
    grid: Grid


CT_PHASES = {
    "arterial": _CtPhase("Abdomen ARTERIAL 2.0", 3, 35, Grid((60, 128, 128), 2.5, 2.0)),
    "portal_venous": _CtPhase("Abdomen PV 2.5", 4, 70, CANONICAL_GRID),
    "delayed": _CtPhase("Abdomen DELAYED 5.0", 5, 180, Grid((24, 128, 128), 2.5, 5.0)),
}
# Mean HU per phase and tissue. Lesion 1 is hypervascular (HCC-like: arterial enhancement, portal
# venous and delayed washout), Lesion 2 a hypovascular metastasis (slow, weak enhancement).
CT_ENHANCEMENT_HU: dict[str, dict[str, float]] = {
    "arterial": {"air": -1000.0, "fat": -100.0, "soft tissue": 50.0, "liver": 70.0,
                 "Lesion 1": 140.0, "Lesion 2": 40.0},
    "portal_venous": {"air": -1000.0, "fat": -100.0, "soft tissue": 60.0, "liver": 110.0,
                      "Lesion 1": 90.0, "Lesion 2": 60.0},
    "delayed": {"air": -1000.0, "fat": -100.0, "soft tissue": 55.0, "liver": 95.0,
                "Lesion 1": 70.0, "Lesion 2": 65.0},
}  # fmt: skip
CT_NOISE_HU = 8.0
# Texture standard deviation (HU, every phase) and smoothing (mm), as demo.synthetic's.
CT_TEXTURE = {"liver": LIVER_TEXTURE, **dict(zip(LESION_LABELS, LESION_TEXTURES, strict=True))}
# (translation mm, degrees about z through the liver centre): each series to portal venous.
CT_MISREGISTRATION = {"arterial": ((2.0, -1.5, 3.0), 2.0), "delayed": ((-1.5, 2.5, -4.0), -1.5)}
# The prior study: each lesion's radius over its follow-up radius, and the prior portal venous
# series to the follow-up one (the patient lay 6 mm left, 8 mm anterior, 12 mm lower, turned 3°).
PRIOR_RADIUS_RATIO = {"Lesion 1": 0.8, "Lesion 2": 0.6}
PRIOR_POSITIONING = ((6.0, -8.0, 12.0), 3.0)


@dataclass(frozen=True)
class _MrProtocol:
    description: str
    series_number: int
    minutes_after_start: float  # of the session, at 09:30:00
    grid: Grid
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    acquisition_type: str
    repetition_ms: float
    echo_ms: float
    flip_deg: float
    echo_train: int
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND")
    contrast: bool = False  # acquired after the gadoxetate bolus


_T1 = {"scanning_sequence": ("GR",), "sequence_variant": ("SP", "SS"), "scan_options": ("FS",),
       "acquisition_type": "3D", "repetition_ms": 3.9, "echo_ms": 1.9, "flip_deg": 10.0,
       "echo_train": 1}  # fmt: skip
MR_PROTOCOLS = {
    "t1_pre": _MrProtocol("T1 VIBE pre", 3, 1, Grid((40, 160, 160), 1.8, 3.0), **_T1),
    "t2": _MrProtocol("T2 HASTE", 4, 4, Grid((24, 192, 192), 1.5, 5.0), ("SE",), ("SK", "SP"),
                      ("FS",), "2D", 1400.0, 92.0, 160.0, 128),
    "dwi": _MrProtocol("DWI b0 400 800", 5, 7, Grid((24, 128, 128), 2.5, 5.0), ("SE", "EP"),
                       ("SK", "SP"), ("FS",), "2D", 4500.0, 60.0, 90.0, 64,
                       ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")),
    "hbp": _MrProtocol("T1 HBP 20min", 6, 30, Grid((40, 160, 160), 1.8, 3.0), **_T1,
                       contrast=True),
}  # fmt: skip
# Signal (arbitrary units) per sequence and tissue; for DWI the b = 0 signal S0. Lesion 1 is
# T2-bright and restricts diffusion little, both lesions lack hepatocytes (dark in HBP).
MR_SIGNAL: dict[str, dict[str, float]] = {
    "t1_pre": {"air": 0.0, "fat": 900.0, "soft tissue": 350.0, "liver": 450.0,
               "Lesion 1": 300.0, "Lesion 2": 280.0},
    "t2": {"air": 0.0, "fat": 600.0, "soft tissue": 250.0, "liver": 200.0,
           "Lesion 1": 450.0, "Lesion 2": 550.0},
    "dwi": {"air": 0.0, "fat": 60.0, "soft tissue": 300.0, "liver": 350.0,
            "Lesion 1": 600.0, "Lesion 2": 650.0},
    "hbp": {"air": 0.0, "fat": 700.0, "soft tissue": 300.0, "liver": 800.0,
            "Lesion 1": 250.0, "Lesion 2": 200.0},
}  # fmt: skip
# Apparent diffusion coefficient per tissue (mm2/s).
MR_ADC = {"air": 0.0, "fat": 0.3e-3, "soft tissue": 1.5e-3, "liver": 1.1e-3,
          "Lesion 1": 1.6e-3, "Lesion 2": 1.8e-3}  # fmt: skip
MR_NOISE = 4.0  # standard deviation of the white noise, every sequence (arbitrary units)
# Texture standard deviation as a fraction of the tissue's signal, smoothing as CT_TEXTURE's.
MR_TEXTURE_FRACTION = {"liver": 0.04, "Lesion 1": 0.08, "Lesion 2": 0.02}
# (translation mm, degrees about z through the liver centre): each series to T2.
MR_MISREGISTRATION = {"dwi": ((0.0, 3.0, -5.0), 0.0), "hbp": ((-2.0, 1.5, 4.0), -2.0)}


@dataclass(frozen=True)
class StudyLesion:
    """A spherical lesion of a study: its radius and volume (4/3 pi r^3, mm3), its centre in
    the reference series (mm) and its designed mean per series role (HU, or MR signal; for DWI
    the b = 0 signal)."""

    label: str
    radius_mm: float
    volume_mm3: float
    centre_mm: tuple[float, float, float]
    values: Mapping[str, float]


@dataclass(frozen=True)
class SyntheticSeries:
    """One written series: ``paths`` in Instance Number order (head to feet; DWI: by b-value,
    then head to feet, and ``b_value_paths`` the files of each b-value); ``to_reference`` maps
    its patient coordinates to the reference series' (identity for the reference itself);
    ``lesion_centres_mm`` (in ``LESION_LABELS`` order) and ``liver_centre_mm``, the centre of the
    ellipsoidal liver, are in this series' patient coordinates."""

    role: str
    series_instance_uid: str
    series_description: str
    frame_of_reference_uid: str
    paths: tuple[Path, ...]
    to_reference: RigidMotion
    lesion_centres_mm: tuple[tuple[float, float, float], ...]
    liver_centre_mm: tuple[float, float, float]
    b_value_paths: Mapping[int, tuple[Path, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticMultiPhase:
    """A written CT study: its series by role (``ROLES``), the SEG (``seg_path``, segments
    ``SEG_LABELS``) on the ``reference_role`` series, the lesions' truth."""

    study_instance_uid: str
    patient_id: str
    study_date: str
    series: Mapping[str, SyntheticSeries]
    reference_role: str
    seg_path: Path
    lesions: tuple[StudyLesion, ...]

    @property
    def arterial(self) -> SyntheticSeries:
        """The arterial series (KeyError for a prior study written without it)."""
        return self.series["arterial"]

    @property
    def portal_venous(self) -> SyntheticSeries:
        """The portal venous series, the reference of the study."""
        return self.series["portal_venous"]

    @property
    def delayed(self) -> SyntheticSeries:
        """The delayed series (KeyError for a prior study written without it)."""
        return self.series["delayed"]


@dataclass(frozen=True)
class SyntheticMultiSequence:
    """A written MR study: its series by role (``MR_ROLES``), the SEG on T2 (the reference),
    the lesions' truth, the ADC of each tissue (mm2/s) and the DWI b-values (s/mm2)."""

    study_instance_uid: str
    patient_id: str
    study_date: str
    series: Mapping[str, SyntheticSeries]
    reference_role: str
    seg_path: Path
    lesions: tuple[StudyLesion, ...]
    adc_mm2_per_s: Mapping[str, float]
    b_values: tuple[int, ...]


@dataclass(frozen=True)
class LesionGrowth:
    """A lesion from the prior study to the follow-up: radii (mm), volumes (mm3), ratios
    (prior over follow-up radius; follow-up over prior volume, the cube of its inverse)."""

    label: str
    prior_radius_mm: float
    follow_up_radius_mm: float
    radius_ratio: float
    prior_volume_mm3: float
    follow_up_volume_mm3: float
    volume_ratio: float


@dataclass(frozen=True)
class SyntheticPriorStudy:
    """The prior CT study; ``to_follow_up`` maps its portal venous series' patient coordinates
    to those of ``write_multiphase_ct``'s portal venous series (same seed)."""

    study: SyntheticMultiPhase
    to_follow_up: RigidMotion
    growth: tuple[LesionGrowth, ...]


@dataclass(frozen=True)
class _Anatomy:
    """The patient: anatomy on the canonical grid and each tissue's texture there (zero mean and
    unit standard deviation over the tissue, zero away from its bounding box)."""

    layout: LiverAnatomy
    textures: Mapping[str, np.ndarray]


def _anatomy(seed: int) -> _Anatomy:
    layout = liver_anatomy(CANONICAL_GRID.half())
    z, y, x = CANONICAL_GRID.axes()
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    regions = {"liver": inside_ellipsoid(xx, yy, zz, layout.liver_centre, layout.liver_axes)}
    for label, (cx, cy, cz), radius in zip(
        LESION_LABELS, layout.lesion_centres, layout.lesion_radii, strict=True
    ):
        regions[label] = (xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= radius**2
    voxel_mm = (CANONICAL_GRID.slice_mm, CANONICAL_GRID.pixel_mm, CANONICAL_GRID.pixel_mm)
    rng = np.random.default_rng(seed)
    textures = {}
    for name, region in regions.items():
        box, noise = smooth_texture(name, region, (1.0, CT_TEXTURE[name][1]), voxel_mm, rng)
        field_ = np.zeros(CANONICAL_GRID.shape, np.float32)
        field_[box] = noise
        textures[name] = field_
    return _Anatomy(layout, textures)


def _render(
    grid: Grid,
    to_canonical: np.ndarray,
    anatomy: _Anatomy,
    values: Mapping[str, float],
    texture_std: Mapping[str, float],
    radius_scale: Mapping[str, float],
) -> tuple[np.ndarray, np.ndarray]:
    """The anatomy sampled at ``grid``'s voxel centres moved by ``to_canonical`` (4x4): values
    (float64, (slices, rows, columns)) and masks (bool, (slices, rows, columns, segments) in
    ``SEG_LABELS`` order). Each tissue is its value plus ``texture_std`` times its texture."""
    z, y, x = grid.axes()
    points = np.stack(np.meshgrid(x, y, z, indexing="ij"), axis=-1).transpose(2, 1, 0, 3)
    q = points @ to_canonical[:3, :3].T + to_canonical[:3, 3]
    qx, qy, qz = q[..., 0], q[..., 1], q[..., 2]
    layout = anatomy.layout
    body, inner = body_regions(qx, qy, CANONICAL_GRID.half())
    out = np.where(body, np.where(inner, values["soft tissue"], values["fat"]), values["air"])
    liver = inside_ellipsoid(qx, qy, qz, layout.liver_centre, layout.liver_axes)
    masks = []
    regions = [("liver", liver)]
    for label, centre, radius in zip(
        LESION_LABELS, layout.lesion_centres, layout.lesion_radii, strict=True
    ):
        scaled = radius * radius_scale.get(label, 1.0)
        lesion = np.sum((q - np.array(centre)) ** 2, axis=-1) <= scaled**2
        masks.append(lesion)
        regions.append((label, lesion))
    masks.append(liver)
    canonical_z, canonical_y, canonical_x = CANONICAL_GRID.axes()
    origin = np.array([canonical_z[0], canonical_y[0], canonical_x[0]])
    step = np.array([CANONICAL_GRID.slice_mm, CANONICAL_GRID.pixel_mm, CANONICAL_GRID.pixel_mm])
    for name, region in regions:
        inside = q[region][:, ::-1]  # (z, y, x) of the region's voxels
        texture = ndimage.map_coordinates(
            anatomy.textures[name], ((inside - origin) / step).T, order=1, mode="nearest"
        )
        out[region] = values[name] + texture_std.get(name, 0.0) * texture
    return out, np.stack(masks, axis=-1)


@dataclass(frozen=True)
class _Uid:
    """UIDs from the seed, the study and names; Tracking UIDs from the seed and label only."""

    seed: int
    study: str

    def __call__(self, *names: object) -> str:
        scope = "patient" if names and names[0] == "tracking" else self.study
        return generate_uid(
            entropy_srcs=["radiomics-node synthetic studies", str(self.seed), scope]
            + [str(name) for name in names]
        )


def _clock(date: str, time: str, seconds: float) -> tuple[str, str]:
    moment = datetime.strptime(date + time, "%Y%m%d%H%M%S") + timedelta(seconds=seconds)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _motion(
    spec: tuple[tuple[float, float, float], float] | None, centre: np.ndarray
) -> RigidMotion:
    if spec is None:
        return RigidMotion()
    translation, angle = spec
    return RigidMotion(translation, angle, (float(centre[0]), float(centre[1]), float(centre[2])))


def _centres(
    motion: np.ndarray, anatomy: _Anatomy
) -> tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]:
    """The lesions' and the liver's centres in the series whose points ``motion`` moves to the
    canonical grid."""
    inverse = np.linalg.inv(motion)
    centres = []
    for centre in (*anatomy.layout.lesion_centres, anatomy.layout.liver_centre):
        point = inverse[:3, :3] @ np.array(centre) + inverse[:3, 3]
        centres.append((float(point[0]), float(point[1]), float(point[2])))
    return tuple(centres[:-1]), centres[-1]


def write_multiphase_ct(
    out_dir: Path,
    *,
    seed: int = 0,
    misregistration: bool = True,
    one_frame_of_reference: bool = True,
) -> SyntheticMultiPhase:
    """Write the arterial, portal venous and delayed CT series to ``out_dir/<role>/`` and the SEG
    of the portal venous series to ``out_dir/seg.dcm``; dated ``FOLLOW_UP_DATE``.

    With ``misregistration`` (default) the arterial and delayed series are moved against the portal
    venous one by ``CT_MISREGISTRATION``, else all three are aligned. With
    ``one_frame_of_reference`` (default) the series share one Frame of Reference UID, else each
    has its own (PS3.3 C.7.4.1: the same UID only where the coordinates are the same).
    """
    anatomy = _anatomy(seed)
    centre = anatomy.layout.liver_centre
    motions = {
        role: _motion(CT_MISREGISTRATION.get(role) if misregistration else None, centre)
        for role in ROLES
    }
    return _write_ct_study(
        Path(out_dir),
        anatomy,
        _Uid(seed, f"multiphase ct {misregistration} {one_frame_of_reference}"),
        seed,
        FOLLOW_UP_DATE,
        motions,
        np.eye(4),
        {},
        one_frame_of_reference,
        1,
    )


def write_prior_study(
    out_dir: Path, *, seed: int = 0, phases: Sequence[str] = ("portal_venous",)
) -> SyntheticPriorStudy:
    """Write the prior CT study of ``write_multiphase_ct``'s patient (same ``seed``): ``phases``
    (portal venous at least; by default only it) to ``out_dir/<role>/``, the SEG of its portal
    venous series to ``out_dir/seg.dcm``; dated ``PRIOR_DATE``, lesions of
    ``PRIOR_RADIUS_RATIO`` times their follow-up radii at the same place in the liver, the patient
    positioned differently by ``PRIOR_POSITIONING``, the other phases moved against the portal
    venous one by ``CT_MISREGISTRATION``.

    Raises:
        ValueError: when ``phases`` lacks portal venous or names an unknown phase.
    """
    if "portal_venous" not in phases or not set(phases) <= set(ROLES):
        raise ValueError(f"phases {tuple(phases)}: portal_venous and any of {ROLES} only")
    anatomy = _anatomy(seed)
    centre = anatomy.layout.liver_centre
    positioning = _motion(PRIOR_POSITIONING, centre)
    motions = {
        role: _motion(CT_MISREGISTRATION.get(role), centre) for role in ROLES if role in phases
    }
    study = _write_ct_study(
        Path(out_dir),
        anatomy,
        _Uid(seed, f"prior ct {sorted(phases)}"),
        seed,
        PRIOR_DATE,
        motions,
        positioning.matrix(),
        PRIOR_RADIUS_RATIO,
        True,
        2,
    )
    growth = []
    for label, radius in zip(LESION_LABELS, anatomy.layout.lesion_radii, strict=True):
        ratio = PRIOR_RADIUS_RATIO[label]
        prior, follow_up = (4 / 3 * math.pi * r**3 for r in (radius * ratio, radius))
        growth.append(
            LesionGrowth(label, radius * ratio, radius, ratio, prior, follow_up, follow_up / prior)
        )
    return SyntheticPriorStudy(study, positioning, tuple(growth))


def _write_ct_study(
    out_dir: Path,
    anatomy: _Anatomy,
    uid: _Uid,
    seed: int,
    date: str,
    motions: Mapping[str, RigidMotion],
    to_canonical: np.ndarray,
    radius_scale: Mapping[str, float],
    one_frame_of_reference: bool,
    study_number: int,
) -> SyntheticMultiPhase:
    """The CT series of ``motions``' roles, each sampled through its motion then
    ``to_canonical`` (the study's portal venous series to the canonical grid), and the SEG;
    ``study_number`` keeps the white noise of each study's series its own."""
    study_uid = uid("study")
    series = {}
    for role, motion in motions.items():
        phase = CT_PHASES[role]
        composed = to_canonical @ motion.matrix()
        hu, masks = _render(
            phase.grid,
            composed,
            anatomy,
            CT_ENHANCEMENT_HU[role],
            {name: texture[0] for name, texture in CT_TEXTURE.items()},
            radius_scale,
        )
        rng = np.random.default_rng([seed, study_number, ROLES.index(role)])
        hu += rng.normal(0.0, CT_NOISE_HU, hu.shape)
        stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, 0, 4095).astype(np.int16)
        frame_uid = uid("frame of reference", "" if one_frame_of_reference else role)
        series_uid = uid("series", role)
        _, acquired = _clock(date, INJECTION_TIME, phase.seconds_after_injection)
        z, y, x = phase.grid.axes()
        datasets = []
        for k in range(phase.grid.shape[0]):
            ds = ct_slice(
                stored[k],
                (float(x[0]), float(y[0]), float(z[k])),
                k,
                phase.grid.shape[0],
                phase.grid.pixel_mm,
                phase.grid.slice_mm,
                study_uid,
                series_uid,
                frame_uid,
                uid("instance", role, k),
            )
            _ct_session(ds, date, acquired, phase, role)
            datasets.append(ds)
        paths = _save(datasets, out_dir / role, "")
        lesion_centres, liver_centre = _centres(composed, anatomy)
        series[role] = SyntheticSeries(
            role=role,
            series_instance_uid=series_uid,
            series_description=phase.description,
            frame_of_reference_uid=frame_uid,
            paths=paths,
            to_reference=motion,
            lesion_centres_mm=lesion_centres,
            liver_centre_mm=liver_centre,
        )
        if role == "portal_venous":
            seg = lesion_segmentation(datasets, masks, SEG_LABELS, uid, date=date, time=acquired)
            seg_path = out_dir / "seg.dcm"
            seg.save_as(seg_path, enforce_file_format=True)
    lesions = _lesions(
        anatomy, series["portal_venous"], radius_scale, CT_ENHANCEMENT_HU, tuple(motions)
    )
    return SyntheticMultiPhase(
        study_instance_uid=study_uid,
        patient_id=PATIENT_ID,
        study_date=date,
        series=series,
        reference_role="portal_venous",
        seg_path=seg_path,
        lesions=lesions,
    )


def _lesions(
    anatomy: _Anatomy,
    reference: SyntheticSeries,
    radius_scale: Mapping[str, float],
    table: Mapping[str, Mapping[str, float]],
    roles: Sequence[str],
) -> tuple[StudyLesion, ...]:
    lesions = []
    for index, (label, radius) in enumerate(
        zip(LESION_LABELS, anatomy.layout.lesion_radii, strict=True)
    ):
        scaled = radius * radius_scale.get(label, 1.0)
        lesions.append(
            StudyLesion(
                label=label,
                radius_mm=scaled,
                volume_mm3=4 / 3 * math.pi * scaled**3,
                centre_mm=reference.lesion_centres_mm[index],
                values={role: table[role][label] for role in roles},
            )
        )
    return tuple(lesions)


def _ct_session(ds: pydicom.Dataset, date: str, acquired: str, phase: _CtPhase, role: str) -> None:
    """Dates, times, study, series and contrast of one phase on ``demo.synthetic.ct_slice``'s
    instance: General Study (C.7.2.1), General Series (C.7.3.1), Contrast/Bolus (C.7.6.4)."""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE
    ds.StudyDate, ds.StudyTime = date, INJECTION_TIME
    ds.StudyID = "SYNTH2"
    ds.AccessionNumber = f"SYNTH{date}"
    ds.StudyDescription = "Synthetic CT abdomen, multiphase liver"
    ds.SeriesNumber = phase.series_number
    ds.SeriesDescription = phase.description
    ds.SeriesDate, ds.SeriesTime = date, acquired
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, acquired
    ds.ContentDate, ds.ContentTime = date, acquired
    ds.AcquisitionDate, ds.AcquisitionTime = date, acquired
    ds.AcquisitionDateTime = date + acquired
    ds.AcquisitionNumber = phase.series_number
    ds.ContrastBolusStartTime = INJECTION_TIME
    ds.ContrastBolusVolume = 100
    ds.ContrastBolusIngredient = "IODINE"
    ds.ContrastBolusIngredientConcentration = 350
    ds.ContrastFlowRate = [4]
    ds.ImageComments = f"synthetic {role.replace('_', ' ')} phase"


def _save(datasets: Sequence[pydicom.Dataset], directory: Path, prefix: str) -> tuple[Path, ...]:
    """Each dataset to ``directory/<prefix><Instance Number>.dcm``, in Instance Number order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for dataset in sorted(datasets, key=lambda ds: int(ds.InstanceNumber)):
        path = directory / f"{prefix}{int(dataset.InstanceNumber):04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return tuple(paths)


def write_multisequence_mr(out_dir: Path, *, seed: int = 0) -> SyntheticMultiSequence:
    """Write the T1 pre-contrast, T2, DWI and hepatobiliary-phase MR series to
    ``out_dir/<role>/`` (DWI files ``b<b-value>-<Instance Number>.dcm``) and the SEG of the T2
    series to ``out_dir/seg.dcm``; dated ``MR_DATE``, the same patient as the CT studies. The
    DWI and HBP series are moved against T2 by ``MR_MISREGISTRATION``; DWI signal is
    ``S0 (1 + texture) exp(-b ADC)`` plus white noise, S0 ``MR_SIGNAL["dwi"]``, ADC ``MR_ADC``.
    """
    out_dir = Path(out_dir)
    anatomy = _anatomy(seed)
    uid = _Uid(seed, "multisequence mr")
    study_uid, frame_uid = uid("study"), uid("frame of reference")
    series = {}
    for number, role in enumerate(MR_ROLES):
        protocol = MR_PROTOCOLS[role]
        motion = _motion(MR_MISREGISTRATION.get(role), anatomy.layout.liver_centre)
        values = MR_SIGNAL[role]
        texture_std = {name: f * values[name] for name, f in MR_TEXTURE_FRACTION.items()}
        signal, masks = _render(protocol.grid, motion.matrix(), anatomy, values, texture_std, {})
        rng = np.random.default_rng([seed, 3, number])
        if role == "dwi":
            adc, _ = _render(protocol.grid, motion.matrix(), anatomy, MR_ADC, {}, {})
            stacks = [(b, signal * np.exp(-b * adc)) for b in B_VALUES]
        else:
            stacks = [(None, signal)]
        series_uid = uid("series", role)
        _, acquired = _clock(MR_DATE, "093000", protocol.minutes_after_start * 60)
        z, y, x = protocol.grid.axes()
        slices = protocol.grid.shape[0]
        datasets = []
        for index, (b_value, stack) in enumerate(stacks):
            noisy = stack + rng.normal(0.0, MR_NOISE, stack.shape)
            stored = np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)
            for k in range(slices):
                datasets.append(
                    _mr_slice(
                        stored[k],
                        (float(x[0]), float(y[0]), float(z[k])),
                        index * slices + slices - k,
                        protocol,
                        b_value,
                        (study_uid, series_uid, frame_uid, uid("instance", role, b_value, k)),
                        acquired,
                    )
                )
        directory = out_dir / role
        if role == "dwi":
            by_b = {
                b: _save(datasets[i * slices : (i + 1) * slices], directory, f"b{b:04d}-")
                for i, b in enumerate(B_VALUES)
            }
            paths = tuple(path for b in B_VALUES for path in by_b[b])
        else:
            by_b, paths = {}, _save(datasets, directory, "")
        lesion_centres, liver_centre = _centres(motion.matrix(), anatomy)
        series[role] = SyntheticSeries(
            role=role,
            series_instance_uid=series_uid,
            series_description=protocol.description,
            frame_of_reference_uid=frame_uid,
            paths=paths,
            to_reference=motion,
            lesion_centres_mm=lesion_centres,
            liver_centre_mm=liver_centre,
            b_value_paths=by_b,
        )
        if role == "t2":
            seg = lesion_segmentation(datasets, masks, SEG_LABELS, uid, date=MR_DATE, time=acquired)
            seg_path = out_dir / "seg.dcm"
            seg.save_as(seg_path, enforce_file_format=True)
    return SyntheticMultiSequence(
        study_instance_uid=study_uid,
        patient_id=PATIENT_ID,
        study_date=MR_DATE,
        series=series,
        reference_role="t2",
        seg_path=seg_path,
        lesions=_lesions(anatomy, series["t2"], {}, MR_SIGNAL, MR_ROLES),
        adc_mm2_per_s=dict(MR_ADC),
        b_values=B_VALUES,
    )


def _mr_slice(
    pixels: np.ndarray,
    position: tuple[float, float, float],
    instance_number: int,
    protocol: _MrProtocol,
    b_value: int | None,
    uids: tuple[str, str, str, str],
    acquired: str,
) -> pydicom.Dataset:
    """One MR Image Storage instance with the modules of the MR Image IOD (PS3.3 A.4.3)."""
    study_uid, series_uid, frame_uid, sop_uid = uids
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    # SOP Common (C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = MR_DATE, acquired
    # Patient (C.7.1.1), fictitious
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.PatientBirthDate, ds.PatientSex = PATIENT_BIRTH_DATE, "O"
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = MR_DATE, "093000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "SYNTH3"
    ds.AccessionNumber = f"SYNTH{MR_DATE}"
    ds.StudyDescription = "Synthetic MR liver, gadoxetate"
    # General Series (C.7.3.1)
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = protocol.series_number
    ds.SeriesDate, ds.SeriesTime = MR_DATE, acquired
    ds.SeriesDescription = protocol.description
    ds.BodyPartExamined = "ABDOMEN"
    ds.PatientPosition = "HFS"
    # Frame of Reference (C.7.4.1)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment (C.7.5.1)
    ds.Manufacturer = "radiomics-node"
    ds.ManufacturerModelName = "synthetic liver phantom"
    # General Image (C.7.6.1); instance 1 is the most cranial slice of the first b-value
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = MR_DATE, acquired
    ds.AcquisitionDate, ds.AcquisitionTime = MR_DATE, acquired
    ds.AcquisitionNumber = 1
    ds.BurnedInAnnotation = "NO"
    # Image Plane (C.7.6.2)
    ds.PixelSpacing = [protocol.grid.pixel_mm, protocol.grid.pixel_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = list(position)
    ds.SliceThickness = protocol.grid.slice_mm
    ds.SliceLocation = position[2]
    # Contrast/Bolus (C.7.6.4): gadoxetate, given before the hepatobiliary phase only
    if protocol.contrast:
        ds.ContrastBolusAgent = "Gadoxetate disodium"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusStartTime = MR_INJECTION_TIME
    # MR Image (C.8.3.1)
    ds.ImageType = list(protocol.image_type)
    ds.ScanningSequence = list(protocol.scanning_sequence)
    ds.SequenceVariant = list(protocol.sequence_variant)
    ds.ScanOptions = list(protocol.scan_options)
    ds.MRAcquisitionType = protocol.acquisition_type
    ds.RepetitionTime = protocol.repetition_ms
    ds.EchoTime = protocol.echo_ms
    ds.EchoTrainLength = protocol.echo_train
    ds.FlipAngle = protocol.flip_deg
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = 1.5
    ds.ImagingFrequency = 63.87
    ds.SpacingBetweenSlices = protocol.grid.slice_mm
    ds.NumberOfAverages = 1
    ds.EchoNumbers = 1
    ds.SequenceName = f"*ep_b{b_value}" if b_value is not None else protocol.description
    if b_value is not None:
        ds.DiffusionBValue = float(b_value)  # (0018,9087), as scanners write it here too
    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 500, 1000
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds
