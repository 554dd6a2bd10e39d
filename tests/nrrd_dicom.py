"""pyradiomics' NRRD test cases as a DICOM MR series plus a DICOM SEG, for round-trip tests.

The image becomes single-frame MR Image Storage instances (PS3.3 A.4), one per NRRD slice, with
the NRRD's geometry: Image Position (Patient) of each slice from the NRRD origin, spacing and
direction; Image Orientation (Patient) from the direction's first two columns; Pixel Spacing as
(row spacing, column spacing). The NRRD's integer voxels are the stored values (no rescale), so
the DICOM holds exactly the NRRD's values. The label becomes a BINARY SEG (highdicom) of label 1.
Patient data are fictitious; UIDs derive from the case name.
"""

from __future__ import annotations

import ast
import csv
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from pipelines.science.presets import Preset

CLASSES = ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


@dataclass(frozen=True)
class ConvertedCase:
    mr_paths: tuple[Path, ...]
    seg_path: Path
    study_instance_uid: str
    series_instance_uid: str


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def baseline_preset(data_dir: Path, case: str) -> Preset:
    """All feature classes with the settings of the ``case`` column of pyradiomics' baselines."""
    with (data_dir / "baseline" / "baseline_glcm.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index(case)
    settings = {row[0]: row[column] for row in rows[1:]}
    return Preset(
        name=f"baseline-{case}",
        description="settings of pyradiomics' baseline column, all feature classes",
        radiomics={
            "setting": ast.literal_eval(settings["diagnostics_Configuration_Settings"]),
            "imageType": ast.literal_eval(settings["diagnostics_Configuration_EnabledImageTypes"]),
            "featureClass": {name: None for name in CLASSES},
        },
    )


def convert_case(data_dir: Path, case: str, out_dir: Path) -> ConvertedCase:
    """Write ``case``'s image as MR slices to ``out_dir/mr/``, its label as ``out_dir/seg.dcm``."""
    image = sitk.ReadImage(str(data_dir / f"{case}_image.nrrd"))
    label = sitk.ReadImage(str(data_dir / f"{case}_label.nrrd"))
    voxels = sitk.GetArrayFromImage(image)
    if (
        not np.array_equal(voxels, np.round(voxels))
        or voxels.min() < -32768
        or voxels.max() > 32767
    ):
        raise ValueError(f"{case}: voxels are not int16 values")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    column_spacing, row_spacing, _ = image.GetSpacing()

    def uid(*names: str) -> str:
        return generate_uid(entropy_srcs=["nrrd-dicom", case, *names])

    study, series, frame = uid("study"), uid("series"), uid("frame")
    (out_dir / "mr").mkdir(parents=True, exist_ok=True)
    datasets = []
    for k in range(voxels.shape[0]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("mr", str(k))
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            f"Roundtrip^{case}",
            case.upper(),
            "19700101",
            "O",
        )
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20240101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", "RT1"
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series, 3
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer = "radiomics-node tests"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTrainLength = "2D", 1
        ds.RepetitionTime, ds.EchoTime = 500, 15
        ds.ImagePositionPatient = [_ds(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [_ds(row_spacing), _ds(column_spacing)]
        ds.SliceThickness = _ds(image.GetSpacing()[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = voxels.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = voxels[k].astype("<i2").tobytes()
        path = out_dir / "mr" / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        datasets.append(ds)
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=(sitk.GetArrayFromImage(label) == 1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="Lesion",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Neoplasm,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=uid("seg series"),
        series_number=30,
        sop_instance_uid=uid("seg"),
        instance_number=1,
        manufacturer="radiomics-node tests",
        manufacturer_model_name="nrrd-dicom",
        software_versions="0",
        device_serial_number="0",
    )
    seg_path = out_dir / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    return ConvertedCase(
        tuple(out_dir / "mr" / f"{k:04d}.dcm" for k in range(voxels.shape[0])),
        seg_path,
        study,
        series,
    )


def sr_values(sr_path: Path) -> dict[tuple[str, str], float]:
    """(coding scheme, code value) of each NUM's concept name -> its value, read with highdicom."""
    sr = hd.sr.srread(sr_path)
    values = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            values[(measurement.name.scheme_designator, measurement.name.value)] = float(
                measurement.value
            )
    return values
