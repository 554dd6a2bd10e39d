"""In-memory series for the QC tests: a SimpleITK image and hand-built slice headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from pipelines.io.series import SeriesVolume


def make_headers(
    slices: int, rows: int, columns: int, spacing_xyz: tuple[float, float, float],
    modality: str = "CT", **attributes: object,
) -> list[pydicom.Dataset]:
    """Axial slice headers on a regular grid from the origin, with ``attributes`` on every slice."""
    study, series, frame = (generate_uid(entropy_srcs=[modality, n]) for n in "abc")
    headers = []
    for k in range(slices):
        ds = pydicom.Dataset()
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[modality, str(k)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = modality
        ds.Manufacturer, ds.ManufacturerModelName = "Test", "Phantom"
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * spacing_xyz[2]]
        ds.SliceThickness = spacing_xyz[2]
        if modality == "CT":
            ds.KVP, ds.ConvolutionKernel = "120", "B30f"
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        headers.append(ds)
    return headers


def make_volume(
    values: np.ndarray, spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 2.0),
    modality: str = "CT", headers: list[pydicom.Dataset] | None = None, **attributes: object,
) -> SeriesVolume:
    """A SeriesVolume holding ``values`` (z, y, x) at the origin with axial slice headers."""
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing_xyz)
    if headers is None:
        headers = make_headers(*values.shape, spacing_xyz, modality, **attributes)
    paths = tuple(Path(f"slice{k:03d}.dcm") for k in range(len(headers)))
    return SeriesVolume(image=image, datasets=tuple(headers), paths=paths)


def mask_like(image: sitk.Image, voxels: np.ndarray) -> sitk.Image:
    """A 0/1 sitkUInt8 mask of ``voxels`` (z, y, x) on ``image``'s grid."""
    mask = sitk.GetImageFromArray(voxels.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def ball(shape: tuple[int, int, int], centre_zyx: tuple[float, float, float], radius_mm: float,
         spacing_xyz: tuple[float, float, float]) -> np.ndarray:
    """Voxels (z, y, x) whose centres lie within ``radius_mm`` of ``centre_zyx`` (indices)."""
    grid = np.indices(shape).astype(float)
    scale = np.array(spacing_xyz[::-1])[:, None, None, None]
    centre = np.array(centre_zyx)[:, None, None, None]
    return np.sqrt((((grid - centre) * scale) ** 2).sum(0)) <= radius_mm
