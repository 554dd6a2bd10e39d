"""discover: a folder sorted into series and segmentations; `radiomics-node process` on it."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pydicom
import pytest
import yaml

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.cli import main
from pipelines.io.discovery import discover

SEGS = Path("highdicom/data/test_files")
SMALL = {"shape": (10, 48, 48), "pixel_spacing": 4.0, "slice_thickness": 5.0}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticStudy, SyntheticStudy]:
    root = tmp_path_factory.mktemp("studies")
    return (
        write_synthetic_study(root / "a", seed=1, **SMALL),
        write_synthetic_study(root / "b", seed=2, **SMALL),
    )


def _folder(tmp_path: Path, studies: tuple[SyntheticStudy, ...], refdata: Path) -> Path:
    folder = tmp_path / "in"
    for n, study in enumerate(studies):
        shutil.copytree(study.ct_paths[0].parent, folder / f"nested{n}" / "ct")
        shutil.copyfile(study.seg_path, folder / f"seg{n}.dcm")
    (folder / "README.txt").write_text("not DICOM")
    shutil.copyfile(refdata / SEGS / "seg_image_ct_binary.dcm", folder / "orphan_seg.dcm")
    return folder


def test_series_and_segmentations_are_paired(
    tmp_path: Path,
    studies: tuple[SyntheticStudy, SyntheticStudy],
    refdata: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = _folder(tmp_path, studies, refdata)

    with caplog.at_level(logging.WARNING, logger="pipelines.io.discovery"):
        found = discover(folder)

    assert set(found.series) == {s.ct_series_uid for s in studies}
    for study in studies:
        series = found.series[study.ct_series_uid]
        assert series.modality == "CT"
        assert sorted(p.name for p in series.paths) == sorted(p.name for p in study.ct_paths)
    assert [
        (p.series.series_instance_uid, p.segmentation.path.name) for p in found.pairs
    ] == sorted([(studies[0].ct_series_uid, "seg0.dcm"), (studies[1].ct_series_uid, "seg1.dcm")])
    assert all(p.segmentation.kind == "SEG" for p in found.pairs)
    (orphan,) = found.unpaired
    assert orphan.path.name == "orphan_seg.dcm"
    assert [(p.name, reason.split(" (")[0]) for p, reason in found.skipped] == [
        ("README.txt", "not a DICOM file")
    ]
    assert "README.txt: skipped, not a DICOM file" in caplog.text


def test_rtstruct_is_paired_through_its_referenced_series(
    tmp_path: Path, studies: tuple[SyntheticStudy, SyntheticStudy]
) -> None:
    folder = tmp_path / "rt"
    shutil.copytree(studies[0].ct_paths[0].parent, folder / "ct")
    rt = pydicom.Dataset()
    rt.file_meta = pydicom.dataset.FileMetaDataset()
    rt.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    rt.SOPClassUID = rt.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    rt.SOPInstanceUID = rt.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    rt.SeriesInstanceUID, rt.Modality = pydicom.uid.generate_uid(), "RTSTRUCT"
    series = pydicom.Dataset()
    series.SeriesInstanceUID = studies[0].ct_series_uid
    study = pydicom.Dataset()
    study.RTReferencedSeriesSequence = [series]
    frame = pydicom.Dataset()
    frame.RTReferencedStudySequence = [study]
    rt.ReferencedFrameOfReferenceSequence = [frame]
    rt.save_as(folder / "rs.dcm", enforce_file_format=True)
    sr = pydicom.Dataset()
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = pydicom.uid.Comprehensive3DSRStorage
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    sr.SeriesInstanceUID, sr.Modality = pydicom.uid.generate_uid(), "SR"
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)

    found = discover(folder)

    ((pair),) = found.pairs
    assert pair.segmentation.kind == "RTSTRUCT"
    assert pair.series.series_instance_uid == studies[0].ct_series_uid
    assert [p.name for p, _ in found.skipped] == ["sr.dcm"]


def test_process_command_writes_results_per_series(
    tmp_path: Path,
    studies: tuple[SyntheticStudy, SyntheticStudy],
    refdata: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _folder(tmp_path, studies, refdata)
    preset = tmp_path / "firstorder.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "name": "firstorder-test",
                "description": "first order only",
                "radiomics": {
                    "setting": {"binWidth": 25},
                    "imageType": {"Original": {}},
                    "featureClass": {"firstorder": ["Mean", "Maximum"]},
                },
            }
        )
    )
    out = tmp_path / "out"

    code = main(["process", str(folder), "--preset", str(preset), "--out", str(out)])

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 3
    for study in studies:
        [line] = [x for x in lines if study.ct_series_uid in x]
        assert "2 ROI(s), 4 values" in line
        written = out / study.ct_series_uid
        objects = [pydicom.dcmread(p, stop_before_pixels=True) for p in written.glob("*.dcm")]
        assert {o.StudyInstanceUID for o in objects} == {study.study_instance_uid}
        # the reading and the feature report, the summary image
        assert sorted(o.Modality for o in objects) == ["OT", "SR", "SR"]
        with (written / "features.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert {(r["segment_label"], r["feature"]) for r in rows} == {
            (label, f"original_firstorder_{name}")
            for label in ("Lesion 1", "Lesion 2")
            for name in ("Mean", "Maximum")
        }
    assert "orphan_seg.dcm: SEG references series" in lines[-1]
    assert "not processed" in lines[-1]
