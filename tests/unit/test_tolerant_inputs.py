"""What real files carry and the node must take: an empty Specific Character Set, sequences from
Implicit VR sources copied into results, multi-frame sources whose geometry is in functional
groups (the report's Image Library)."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from demo.synthetic import write_synthetic_study
from node.flow.executor import run_in_process
from pipelines.outputs.sr_encoding import image_library, written_as_is_throughout
from pipelines.process import job_plan


def test_an_empty_specific_character_set_is_the_default_repertoire(tmp_path: Path) -> None:
    study = write_synthetic_study(tmp_path / "study", shape=(10, 48, 48))
    for path in (*study.ct_paths, study.seg_path):
        dataset = pydicom.dcmread(path)
        dataset.SpecificCharacterSet = ""
        dataset.save_as(path)
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-basic",
                                      tmp_path / "out"))
    report = pydicom.dcmread(result.report.path)
    assert report.get("SpecificCharacterSet") in (None, "", "ISO_IR 192")
    assert len(hd.sr.Comprehensive3DSR.from_dataset(report).content
               .get_volumetric_roi_measurement_groups()) == len(result.lesions)


def test_a_sequence_read_from_implicit_vr_is_written_in_explicit_vr() -> None:
    """De-identification Method Code Sequence (0012,0064) as a PET series of TCIA carries it,
    read from Implicit VR Little Endian and copied into an object written in Explicit VR."""
    source = Dataset()
    source.file_meta = FileMetaDataset()
    source.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    source.DeidentificationMethodCodeSequence = [code]
    buffer = io.BytesIO()
    source.save_as(buffer, implicit_vr=True, little_endian=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    result = Dataset()
    result.file_meta = FileMetaDataset()
    result.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    result.DeidentificationMethodCodeSequence = read.DeidentificationMethodCodeSequence
    out = io.BytesIO()
    written_as_is_throughout(result).save_as(out, implicit_vr=False, little_endian=True)
    again = pydicom.dcmread(io.BytesIO(out.getvalue()), force=True)
    assert again.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_the_image_library_describes_a_multi_frame_source(refdata: Path) -> None:
    """A Legacy Converted Enhanced MR (PixelMed) has no image-level Pixel Spacing: the entry
    takes it, and the slice thickness, from the shared Pixel Measures, and gives no position
    for its four frames at four positions (TID 1604 describes one plane)."""
    path = refdata / "realworld/pixelmed-ibsi-phantom-lcemr-seg/image/phantom.dcm"
    image = pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(AttributeError):
        hd.sr.ImageLibrary([image])  # what highdicom 0.28 does with it
    holder = Dataset()
    holder.ContentSequence = [image_library([image], ("iso8859",))]
    buffer = io.BytesIO()
    holder.save_as(buffer, implicit_vr=False, little_endian=True)
    [library] = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True).ContentSequence
    [group] = library.ContentSequence
    [entry] = group.ContentSequence
    assert entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    names = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in entry.ContentSequence}
    measures = image.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(names["Horizontal Pixel Spacing"].MeasuredValueSequence[0].NumericValue) == \
        float(measures.PixelSpacing[1])
    assert "Slice Thickness" in names
    assert not any(name.startswith("Image Position") for name in names)



def test_absent_type_2_attributes_are_read_as_empty(tmp_path: Path) -> None:
    """A converter that leaves out Type 2 attributes (Patient ID, Study Date, Slice Thickness,
    ...): the study is processed, and the results hold no empty value where one is required
    (no Slice Thickness descriptor in the Image Library, the SEG's own voxel thickness)."""
    study = write_synthetic_study(tmp_path / "study", shape=(10, 48, 48))
    absent = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
              "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
              "Manufacturer", "SliceThickness")
    for path in study.ct_paths:
        dataset = pydicom.dcmread(path)
        for keyword in absent:
            if keyword in dataset:
                delattr(dataset, keyword)
        dataset.save_as(path)
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-crlm",
                                      tmp_path / "out"))
    objects = {o.sop_class_uid: pydicom.dcmread(o.path) for o in result.objects}
    report = objects["1.2.840.10008.5.1.4.1.1.88.34"]
    library = next(item for item in report.ContentSequence
                   if item.ConceptNameCodeSequence[0].CodeValue == "111028")
    names = {item.ConceptNameCodeSequence[0].CodeMeaning
             for group in library.ContentSequence for entry in group.ContentSequence
             for item in entry.ContentSequence}
    assert "Slice Thickness" not in names and "Horizontal Pixel Spacing" in names
    for sop_class in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30"):
        derived = objects[sop_class]
        measures = derived.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert float(measures.SliceThickness) == pytest.approx(2.5)
