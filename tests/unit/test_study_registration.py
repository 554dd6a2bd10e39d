"""The registration of a study job on the synthetic studies' known misregistrations
(demo.study): the arterial and delayed CT against the portal venous one, the DWI and
hepatobiliary MR against T2, and the prior CT against the follow-up. The target registration
error (TRE) at each lesion's centre stays below a millimetre (the CT's voxels are 2.5 mm), the
propagated lesions overlap the truth drawn on the target and the QC passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from demo.study import write_multiphase_ct, write_multisequence_mr, write_prior_study
from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import read_series
from pipelines.science.registration import dice_coefficient, propagate

TRE_LIMIT_MM = 1.0


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("studies")
    return {"ct": write_multiphase_ct(folder / "ct"), "mr": write_multisequence_mr(folder / "mr"),
            "prior": write_prior_study(folder / "prior")}


def _lesions(paths: tuple[Path, ...], seg: Path) -> tuple[sitk.Image, list[sitk.Image]]:
    volume = read_series(list(paths))
    decoded = read_segmentation(seg, volume)
    return volume.image, [s.mask for s in decoded.segments if s.label != "Liver"]


CASES = ["ct arterial", "ct delayed", "mr dwi", "mr hbp", "prior"]


@pytest.mark.parametrize("case", CASES)
def test_known_misregistration_is_recovered(case: str, studies: dict[str, object]) -> None:
    ct, mr, prior = studies["ct"], studies["mr"], studies["prior"]
    if case == "prior":  # the prior's lesions carried onto the follow-up
        segmented, masks = _lesions(prior.study.portal_venous.paths, prior.study.seg_path)
        target_series = ct.portal_venous
        truth = prior.to_follow_up.sitk_transform().GetInverse()  # follow-up -> prior points
        same_frame = False
    else:
        study = ct if case.startswith("ct") else mr
        reference = study.series[study.reference_role]
        segmented, masks = _lesions(reference.paths, study.seg_path)
        target_series = study.series[case.split()[1]]
        truth = target_series.to_reference.sitk_transform()  # target -> reference points
        same_frame = True
    paths = target_series.b_value_paths[0] if target_series.b_value_paths \
        else target_series.paths
    target = read_series(list(paths)).image
    result = propagate(segmented, target, masks, same_frame_of_reference=same_frame)
    tre = [float(np.linalg.norm(np.subtract(result.transform.TransformPoint(c),
                                            truth.TransformPoint(c))))
           for c in target_series.lesion_centres_mm]
    # the truth drawn on the target: each lesion mask resampled through the true transform
    drawn = [sitk.Resample(mask, target, truth, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
             for mask in masks]
    overlap = [dice_coefficient(a, b) for a, b in zip(result.masks, drawn, strict=True)]
    print(f"\n{case}: TRE {[round(e, 2) for e in tre]} mm, Dice with truth "
          f"{[round(d, 3) for d in overlap]}, round trip "
          f"{[round(d, 3) for d in result.qc.round_trip_dice]}, translation "
          f"{result.qc.translation_mm:.2f} mm, rotation {result.qc.rotation_degrees:.2f} deg")
    assert result.qc.method == "rigid"
    assert result.qc.passed, result.qc.reasons
    assert max(tre) < TRE_LIMIT_MM
    assert min(overlap) > 0.8
