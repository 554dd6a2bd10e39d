"""DWI series read per b-value (pipelines.io.dwi) and its ADC map (pipelines.science.adc).

A synthetic single-frame MR DWI series (MR Image Storage, one instance per slice and b-value) is
written with a known ADC per region: liver 1000, lesion 1500 (10^-6 mm²/s), background without
signal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from pipelines.io.dwi import DwiError, b_value, read_dwi
from pipelines.science.adc import AdcError, adc_map

B_VALUES = (0, 400, 800)
SHAPE = (6, 40, 40)  # slices, rows, columns
PIXEL_SPACING = 1.5
SLICE_SPACING = 5.0
LIVER_ADC, LESION_ADC = 1000.0, 1500.0
LIVER_S0, LESION_S0 = 900.0, 1100.0
NOISE_SD = 2.0


def regions() -> tuple[np.ndarray, np.ndarray]:
    """Liver (a disc in every slice, lesion excluded) and lesion (a smaller disc) masks."""
    _, rows, cols = np.indices(SHAPE)
    liver = (rows - 20) ** 2 + (cols - 20) ** 2 <= 16**2
    lesion = (rows - 22) ** 2 + (cols - 17) ** 2 <= 6**2
    return liver & ~lesion, lesion


def signal(b: float, rng: np.random.Generator) -> np.ndarray:
    liver, lesion = regions()
    s = np.zeros(SHAPE)
    s[liver] = LIVER_S0 * np.exp(-b * LIVER_ADC * 1e-6)
    s[lesion] = LESION_S0 * np.exp(-b * LESION_ADC * 1e-6)
    inside = liver | lesion
    s[inside] += rng.normal(0.0, NOISE_SD, int(inside.sum()))
    return np.clip(np.rint(s), 0, None).astype(np.uint16)


BValueWriter = Callable[[pydicom.Dataset, float], None]


def standard_b(ds: pydicom.Dataset, b: float) -> None:
    ds.DiffusionBValue = float(b)


def siemens_b(ds: pydicom.Dataset, b: float) -> None:
    ds.Manufacturer = "SIEMENS"
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x0C, "IS", int(b))


def write_dwi(folder: Path, write_b: BValueWriter = standard_b,
              origin_of: Callable[[float], tuple[float, float, float]] = lambda b: (-30.0, -30.0,
                                                                                     0.0),
              ) -> list[Path]:
    """The series as MR Image Storage instances (PS3.3 A.4), one per slice and b-value."""
    folder.mkdir(exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    paths = []
    number = 0
    for b in B_VALUES:
        pixels = signal(b, rng)
        for k in range(SHAPE[0]):
            number += 1
            sop = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
            ds.PatientName, ds.PatientID = "Synthetic^DWI", "SYNTH-DWI"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.FrameOfReferenceUID = frame
            ds.Modality = "MR"
            ds.InstanceNumber = number
            ds.ScanningSequence, ds.SequenceVariant = "EP", "SK"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"]
            x, y, z = origin_of(b)
            ds.ImagePositionPatient = [x, y, z + k * SLICE_SPACING]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing = [PIXEL_SPACING, PIXEL_SPACING]
            ds.SliceThickness = SLICE_SPACING
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 0
            ds.PixelData = np.ascontiguousarray(pixels[k], dtype="<u2").tobytes()
            write_b(ds, b)
            path = folder / f"b{b}_{k:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def test_adc_is_fitted_within_two_percent_per_region(tmp_path: Path) -> None:
    series = read_dwi(write_dwi(tmp_path / "dwi"))
    assert series.b_values == (0.0, 400.0, 800.0)
    result = adc_map(series)
    adc = sitk.GetArrayFromImage(result.image)
    liver, lesion = regions()
    errors = {name: float(adc[mask].mean()) / truth - 1.0
              for name, mask, truth in (("liver", liver, LIVER_ADC),
                                        ("lesion", lesion, LESION_ADC))}
    print(f"\nADC relative error of the regional mean: {errors}")
    assert abs(errors["liver"]) < 0.02
    assert abs(errors["lesion"]) < 0.02
    assert result.image.GetPixelID() == sitk.sitkFloat32
    assert result.image.GetSpacing() == (PIXEL_SPACING, PIXEL_SPACING, SLICE_SPACING)
    # No signal outside the liver: nothing fitted there, ADC 0.
    fitted = sitk.GetArrayFromImage(result.fitted).astype(bool)
    assert not fitted[~(liver | lesion)].any()
    assert (adc[~fitted] == 0).all()
    assert result.method.describe() == (
        "ADC (10^-6 mm2/s): mono-exponential S(b) = S0 exp(-b ADC), log-linear least squares, "
        "b = 0, 400, 800 s/mm2")
    high = adc_map(series, min_b_value=200)
    assert high.method.b_values == (400.0, 800.0)
    assert abs(float(sitk.GetArrayFromImage(high.image)[lesion].mean()) / LESION_ADC - 1) < 0.02
    with pytest.raises(AdcError, match="leave 1 at or above 500"):
        adc_map(series, min_b_value=500)


def test_a_siemens_b_value_is_read_when_the_standard_one_is_absent(tmp_path: Path) -> None:
    series = read_dwi(write_dwi(tmp_path / "dwi", siemens_b))
    assert series.b_values == (0.0, 400.0, 800.0)
    assert all(len(v.datasets) == SHAPE[0] for v in series.volumes.values())


def test_vendor_b_values_ge_modulo_and_philips() -> None:
    ge = pydicom.Dataset()
    ge.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(
        0x39, "IS", [1_000_000_800, 8, 0, 0])
    assert b_value(ge, Path("ge.dcm")) == 800.0
    philips = pydicom.Dataset()
    philips.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x03, "FL", 400.0)
    assert b_value(philips, Path("philips.dcm")) == 400.0
    # The element without its Private Creator is not the vendor's: not read.
    anonymous = pydicom.Dataset()
    anonymous.add_new(0x0019100C, "IS", 800)
    with pytest.raises(DwiError, match=r"^anonymous.dcm: no b-value"):
        b_value(anonymous, Path("anonymous.dcm"))


def test_an_instance_without_b_value_is_refused_naming_it(tmp_path: Path) -> None:
    def missing_one(ds: pydicom.Dataset, b: float) -> None:
        if not (b == 400 and ds.ImagePositionPatient[2] == 2 * SLICE_SPACING):
            standard_b(ds, b)

    paths = write_dwi(tmp_path / "dwi", missing_one)
    with pytest.raises(DwiError) as refused:
        read_dwi(paths)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'dwi' / 'b400_02.dcm'}: no b-value: neither "
                              "(0018,9087) DiffusionBValue nor a vendor element")


def test_b_values_on_different_grids_are_refused(tmp_path: Path) -> None:
    paths = write_dwi(tmp_path / "dwi", origin_of=lambda b: (-30.0, -30.0, 2.0 if b else 0.0))
    with pytest.raises(DwiError, match=r"^b = 400 s/mm² lies on another grid than b = 0"):
        read_dwi(paths)


def test_several_images_of_one_b_value_at_one_position_are_refused(tmp_path: Path) -> None:
    def directions(ds: pydicom.Dataset, b: float) -> None:
        standard_b(ds, 800 if b == 400 else b)  # b = 400 images counted as a second b = 800

    with pytest.raises(DwiError, match=r"b = 800 s/mm² has several images at one position"):
        read_dwi(write_dwi(tmp_path / "dwi", directions))
