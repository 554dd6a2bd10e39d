"""pyradiomics' brain2 and breast1 as DICOM MR + SEG through a job (``job_plan``): the SR has the
values extract_features gives on the NRRD files (issue 4, "DICOM round trip").

brain2's NRRD grid is left-handed (direction diag(1, -1, 1)). A DICOM image's slice normal is
always row x column (PS3.3 C.7.6.2.1.1), so the series holds the same voxels at the same places
with the slice order reversed. pyradiomics' marching-cubes mesh is not invariant under reflecting
an axis, so the three mesh-surface features (SurfaceArea, Sphericity, SurfaceVolumeRatio) are
compared with the NRRD flipped along its slice axis (same voxels, same physical places,
right-handed); every other feature with the NRRD as stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from node.flow.executor import run_in_process
from pipelines.outputs.codes import feature_concept
from pipelines.process import job_plan
from pipelines.science.features import extract_features
from tests.nrrd_dicom import baseline_preset, convert_case, sr_values

RELATIVE_TOLERANCE = 1e-6
MESH_SURFACE = {
    "original_shape_SurfaceArea",
    "original_shape_Sphericity",
    "original_shape_SurfaceVolumeRatio",
}


@pytest.mark.parametrize(("case", "left_handed"), [("brain2", True), ("breast1", False)])
def test_sr_values_equal_the_nrrd_features(
    refdata: Path, tmp_path: Path, case: str, left_handed: bool
) -> None:
    data_dir = refdata / "pyradiomics" / "data"
    preset = baseline_preset(data_dir, case)
    image = sitk.ReadImage(str(data_dir / f"{case}_image.nrrd"))
    label = sitk.ReadImage(str(data_dir / f"{case}_label.nrrd"))
    assert (np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) < 0) == left_handed
    expected = extract_features(image, label, preset).values
    if left_handed:
        flip = [False, False, True]
        right_handed = extract_features(
            sitk.Flip(image, flip, flipAboutOrigin=False),
            sitk.Flip(label, flip, flipAboutOrigin=False),
            preset,
        ).values
        expected = {k: right_handed[k] if k in MESH_SURFACE else v for k, v in expected.items()}
    converted = convert_case(data_dir, case, tmp_path / "dicom")

    result = run_in_process(job_plan(converted.mr_paths, converted.seg_path, preset,
                                      tmp_path / "out"))

    sr = result.report
    values = sr_values(sr.path)
    assert len(values) == len(expected) > 100
    for key, want in expected.items():
        concept = feature_concept(key, "MR")
        got = values[(concept.name.scheme_designator, concept.name.value)]
        assert got == pytest.approx(want, rel=RELATIVE_TOLERANCE, abs=1e-12), key
