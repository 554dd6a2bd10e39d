"""NUM items encoded from templates, and the report's raw Content Sequences: the bytes pydicom
writes for the same items, read back by pydicom and highdicom, in either VR encoding."""

import io
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.uid import ImplicitVRLittleEndian, PositronEmissionTomographyImageStorage

from demo.synthetic import write_synthetic_study
from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import read_series
from pipelines.outputs.codes import feature_concept
from pipelines.outputs.feature_report import build_feature_report, prepare_report
from pipelines.outputs.sr_encoding import (
    _template,
    encoded_items,
    image_library,
    num_item,
    written_as_is_throughout,
)
from pipelines.science.features import extract_features, feature_keys
from pipelines.science.presets import load_preset
from tests.unit.test_report import Inputs, inputs  # noqa: F401 (fixture)

KEYS = ["original_firstorder_Mean", "original_shape_MeshVolume",
        "log-sigma-3-0-mm-3D_glcm_Contrast", "wavelet-LLH_gldm_GrayLevelVariance",
        "log-sigma-1-0-mm-3D_glszm_SmallAreaHighGrayLevelEmphasis"]  # Long Code Value filter
VALUES = [35.061234567891234, -1e-12, 123456789.25, 0.0, 2.0, 1e300, -0.1]


# single-byte, UTF-8, GB18030 and ISO 2022 with a multi-byte set: a NUM's texts are ASCII, and
# its template, made once without the report's character set, is what pydicom writes in each
CHARSETS = ["ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "GB18030",
            ["ISO 2022 IR 6", "ISO 2022 IR 87"]]


@pytest.mark.parametrize("charset", CHARSETS)
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", VALUES)
def test_num_item_is_the_item_highdicom_builds_as_pydicom_writes_it(
    key: str, value: float, charset: str | list[str]
) -> None:
    concept = feature_concept(key, "CT")
    expected = hd.sr.Measurement(name=concept.name, value=value, unit=concept.unit)[0]
    encodings = tuple(convert_encodings(charset))
    assert num_item(key, value, "CT", encodings) == encoded_items([expected], encodings)


def _report(inputs: Inputs) -> hd.sr.Comprehensive3DSR:  # noqa: F811
    return build_feature_report(inputs.volume, inputs.seg, inputs.rois, inputs.preset)


def _groups(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    [measurements] = [item for item in dataset.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "126010"]
    return [item for item in measurements.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "125007"]


def test_group_content_is_written_as_is_and_is_what_pydicom_writes(
    inputs: Inputs,  # noqa: F811
) -> None:
    report = _report(inputs)
    assert all(isinstance(group.get_item(0x0040A730), RawDataElement)
               for group in _groups(report))
    written = io.BytesIO()
    report.save_as(written, enforce_file_format=True)
    assert all(isinstance(group.get_item(0x0040A730), RawDataElement)
               for group in _groups(report)), "writing decoded the raw content"
    # pydicom decodes every item of the file and writes it again: the same bytes
    decoded = pydicom.dcmread(io.BytesIO(written.getvalue()))
    again = io.BytesIO()
    decoded.save_as(again, enforce_file_format=True)
    assert again.getvalue() == written.getvalue()


def test_report_in_implicit_vr_decodes_the_raw_content(
    inputs: Inputs, tmp_path: Path,  # noqa: F811
) -> None:
    report = _report(inputs)
    report.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    report.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    read = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(tmp_path / "implicit.dcm"))
    [group, *_] = read.content.get_volumetric_roi_measurement_groups()
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    roi = inputs.rois[0]
    assert len(group.get_measurements()) == len(roi.features.values)
    mean = feature_concept("original_firstorder_Mean", "CT").name.meaning
    assert values[mean] == pytest.approx(roi.features.values["original_firstorder_Mean"])


def test_nested_datasets_are_marked_unless_they_hold_an_ambiguous_vr() -> None:
    """An element whose VR depends on the transfer syntax (US or SS here) keeps pydicom's
    resolution; the rest is written without it, and both read back as they were."""
    lut = pydicom.Dataset()
    lut.PixelRepresentation = 1
    lut.add_new(0x00283002, "US or SS", [256, -10, 16])  # LUT Descriptor
    item = pydicom.Dataset()
    item.CodeMeaning = "plain"
    root = pydicom.Dataset()
    root.SpecificCharacterSet = "ISO_IR 192"
    root.ContentSequence = [item]
    root.ModalityLUTSequence = [lut]

    written_as_is_throughout(root)

    assert root.original_encoding == (False, True) == item.original_encoding
    assert lut.original_encoding == (None, None)
    out = io.BytesIO()
    pydicom.dcmwrite(out, root, implicit_vr=False, little_endian=True)
    back = pydicom.dcmread(io.BytesIO(out.getvalue()), force=True)
    assert back.ContentSequence[0].CodeMeaning == "plain"
    assert back.ModalityLUTSequence[0][0x00283002].VR == "SS"


def _images(refdata: Path) -> dict[str, list[pydicom.Dataset]]:
    """Source images of several kinds: CT with Spacing Between Slices, MR, PET, two frames of
    reference, a CT without Frame of Reference UID."""
    ct = pydicom.dcmread(refdata / "pydicom/test_files/CT_small.dcm", stop_before_pixels=True)
    mr = pydicom.dcmread(refdata / "pydicom/test_files/MR_small.dcm", stop_before_pixels=True)
    slices = []
    for number in range(3):
        copy = ct.copy()
        copy.SOPInstanceUID = f"1.2.3.{number + 1}"
        copy.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.5 * number]
        slices.append(copy)
    pet = ct.copy()
    pet.SOPClassUID, pet.Modality = PositronEmissionTomographyImageStorage, "PT"
    other = ct.copy()
    other.SOPInstanceUID, other.FrameOfReferenceUID = "1.2.3.9", "1.2.3.99"
    bare = ct.copy()
    del bare.FrameOfReferenceUID
    del bare.SpacingBetweenSlices
    return {"CT": slices, "MR": [mr], "PET": [pet], "two frames of reference": [ct, other],
            "no frame of reference": [bare], "CT and MR": [ct, mr]}


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192"])
def test_image_library_is_highdicoms(refdata: Path, charset: str) -> None:
    encodings = tuple(convert_encodings(charset))
    for kind, images in _images(refdata).items():
        expected = encoded_items([hd.sr.ImageLibrary(images)[0]], encodings)
        assert encoded_items([image_library(images, encodings)], encodings) == expected, kind


def test_image_library_of_other_images_is_left_to_highdicom(refdata: Path) -> None:
    ct = pydicom.dcmread(refdata / "pydicom/test_files/CT_small.dcm", stop_before_pixels=True)
    ct.Modality = "OT"  # not cross-sectional for highdicom: no TID 1604 descriptors
    library = image_library([ct], ("iso8859",))
    assert not isinstance(library.get_item(0x0040A730), RawDataElement)
    assert encoded_items([library], ("iso8859",)) == encoded_items(
        [hd.sr.ImageLibrary([ct])[0]], ("iso8859",))


@pytest.mark.parametrize("preset", ["ct-liver-basic", "ct-liver-crlm"])
def test_feature_keys_are_the_keys_an_extraction_gives(tmp_path: Path, preset: str) -> None:
    """Original, LoG per sigma and wavelet decompositions (crlm), shape on the original only,
    on a series large enough for every filter (pyradiomics skips a LoG sigma wider than the
    image: a thinner series has fewer keys, whose templates are then made but not used)."""
    chosen = load_preset(preset)
    study = write_synthetic_study(tmp_path, shape=(24, 64, 64))
    volume = read_series(list(study.ct_paths))
    segment = read_segmentation(study.seg_path, volume).segments[-1]
    extracted = extract_features(volume.image, segment.mask, chosen)
    assert sorted(feature_keys(chosen)) == sorted(extracted.values)


def test_a_report_after_prepare_report_makes_no_template(
    inputs: Inputs,  # noqa: F811
) -> None:
    """A job worker prepares its presets' templates when it starts; its first report then
    makes none, and is the report made without them."""
    _template.cache_clear()
    before = _report(inputs)
    _template.cache_clear()
    modalities = 1 if inputs.preset.modality else 2  # none named: CT and MR
    assert prepare_report(inputs.preset) == modalities * len(feature_keys(inputs.preset))
    made = _template.cache_info().misses
    after = _report(inputs)
    assert _template.cache_info().misses == made
    assert _groups(after) == _groups(before)
