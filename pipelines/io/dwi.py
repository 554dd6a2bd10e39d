"""A diffusion-weighted MR series as one volume per b-value.

A DWI series holds images at several diffusion weightings, in s/mm². Each instance's b-value is
read from, in turn:

* Diffusion b-value (0018,9087) (PS3.3 C.8.13.5.9 MR Diffusion Macro): in the MR Diffusion
  Sequence (0018,9117) of a multi-frame image's shared or per-frame functional groups, where all
  frames of one instance must share it, or at the top level, where many scanners write it in
  single-frame images;
* the vendors' private elements, found through their Private Creator (PS3.5 7.8.1), which
  single-frame MR images commonly carry instead: Siemens ``SIEMENS MR HEADER`` (0019,xx0C)
  B_value; GE ``GEMS_PARM_01`` (0043,xx39), whose first value is the b-value, plus 10^9 in some
  software versions (taken modulo 10^9); Philips ``Philips Imaging DD 001`` (2001,xx03) Diffusion
  B-Factor.

The instances of each b-value are read as one volume by :func:`pipelines.io.series.read_series`
(its rules on geometry apply); every b-value's volume must lie on one grid, and a b-value may
hold one image per position only (several diffusion directions not combined into a trace image
are refused rather than some of them silently dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipelines.io.series import SeriesError, SeriesVolume, read_series

# (Private Creator, group, element offset in the creator's block, vendor) of each private b-value.
VENDOR_B_VALUES = (
    ("SIEMENS MR HEADER", 0x0019, 0x0C, "Siemens"),
    ("GEMS_PARM_01", 0x0043, 0x39, "GE"),
    ("Philips Imaging DD 001", 0x2001, 0x03, "Philips"),
)
# GE adds 10^9 to the b-value in some software versions.
GE_B_VALUE_MODULUS = 1_000_000_000
# Voxel centres of two b-values' volumes may differ by this much (mm): header rounding only.
GRID_TOLERANCE_MM = 1e-3


class DwiError(SeriesError):
    """Files that are not one readable DWI series; the message names file, attribute and reason."""


@dataclass(frozen=True)
class DiffusionSeries:
    """One volume per b-value (s/mm²), ascending; all on one grid."""

    volumes: dict[float, SeriesVolume]

    @property
    def b_values(self) -> tuple[float, ...]:
        """The b-values in s/mm², ascending."""
        return tuple(self.volumes)


def b_value(dataset: pydicom.Dataset, path: Path) -> float:
    """The b-value (s/mm²) of one instance (module docstring for where it is looked up).

    Raises:
        DwiError: naming the file and the attributes looked for, when none holds a b-value, or
            when the frames of a multi-frame image have different b-values.
    """
    standard = _standard_b_values(dataset)
    if len(standard) > 1:
        raise DwiError(f"{path}: frames with different (0018,9087) DiffusionBValue "
                       f"{sorted(standard)}: one instance must hold one b-value")
    if standard:
        return standard.pop()
    for creator, group, offset, vendor in VENDOR_B_VALUES:
        try:
            element = dataset.private_block(group, creator)[offset]
        except KeyError:
            continue
        value = element.value
        first = value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value
        try:
            number = float(first)
        except (TypeError, ValueError):
            raise DwiError(f"{path}: {vendor} b-value ({group:04X},{element.tag.element:04X}) "
                           f"is {value!r}, not a number") from None
        return number % GE_B_VALUE_MODULUS if vendor == "GE" else number
    vendors = ", ".join(f"{vendor} ({group:04X},xx{offset:02X})"
                        for _, group, offset, vendor in VENDOR_B_VALUES)
    raise DwiError(f"{path}: no b-value: neither (0018,9087) DiffusionBValue nor a vendor "
                   f"element ({vendors})")


def _standard_b_values(dataset: pydicom.Dataset) -> set[float]:
    """DiffusionBValue of the image, or of each of its frames' MR Diffusion items."""
    if "DiffusionBValue" in dataset:
        return {float(dataset.DiffusionBValue)}
    found = set()
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in dataset.get(groups, []):
            for diffusion in item.get("MRDiffusionSequence", []):
                if "DiffusionBValue" in diffusion:
                    found.add(float(diffusion.DiffusionBValue))
    return found


def read_dwi(paths: Sequence[Path]) -> DiffusionSeries:
    """Read a DWI series into one volume per b-value, sorted by b-value.

    Raises:
        DwiError: an instance without a b-value, several images of one b-value at one position,
            or b-values on different grids (one line, naming the file or b-value).
        SeriesError: as :func:`pipelines.io.series.read_series` for each b-value's files.
    """
    if len(paths) == 0:
        raise DwiError("no files given: a DWI series needs at least one image")
    groups: dict[float, list[Path]] = {}
    for path in map(Path, paths):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as error:
            raise DwiError(f"{path}: not a readable DICOM file ({error})") from error
        groups.setdefault(b_value(header, path), []).append(path)
    volumes = {b: read_series(groups[b]) for b in sorted(groups)}
    first_b, first = next(iter(volumes.items()))
    for b, volume in volumes.items():
        if volume.grid is not None and volume.grid.dropped:
            dropped = volume.grid.dropped[0]
            raise DwiError(f"{dropped.path}: b = {b:g} s/mm² has several images at one position "
                           f"({len(volume.grid.dropped)} more than positions): diffusion "
                           f"directions must be combined into one image per position")
        if not _same_grid(first, volume):
            raise DwiError(f"b = {b:g} s/mm² lies on another grid than b = {first_b:g} s/mm² "
                           f"(size, origin, spacing or orientation): the b-values must share one")
    return DiffusionSeries(volumes)


def _same_grid(a: SeriesVolume, b: SeriesVolume) -> bool:
    """Same size and every corner voxel centre within the tolerance."""
    image_a, image_b = a.image, b.image
    if image_a.GetSize() != image_b.GetSize():
        return False
    nx, ny, nz = (n - 1 for n in image_a.GetSize())
    corners = [(i, j, k) for i in (0, nx) for j in (0, ny) for k in (0, nz)]
    return all(
        float(np.linalg.norm(np.subtract(image_a.TransformIndexToPhysicalPoint(index),
                                         image_b.TransformIndexToPhysicalPoint(index))))
        <= GRID_TOLERANCE_MM
        for index in corners)
