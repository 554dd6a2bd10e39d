"""The IBSI 1 CT phantom's configurations A-E through ``radiomics-node process`` compared with
MIRP (PyPI ``mirp``, the IBSI-compliant implementation of the IBSI 1 lead, Zwanenburg) on the
same DICOM CT + RTSTRUCT with the same settings (IBSI 1 reference manual, chapter 5, table of
configurations): per configuration, how many mapped features agree within ``--rtol``, and each
one that does not. With ``--liver``, the same on each lesion of the node's synthetic liver CT
(CT series + SEG; MIRP reads the CT as NIfTI written by SimpleITK and each segment as a NIfTI
mask written by highdicom, because MIRP 2.7 refuses a SEG whose frames cover only the slices a
segment is on). By hand: ``python -m bench.ibsi_mirp [--rtol 0.01] [--liver] [A B C D E]``; the
CI tests are in tests/unit/test_ibsi_ct_phantom.py (configuration C, both). Prints one line per
configuration (and lesion) and per disagreement; the measured result is in docs/presets.md.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from tests.unit.ibsi_ct_phantom import (
    CONFIGURATIONS,
    PHANTOM,
    preset_of,
    process_phantom,
    tags_for,
)
from tests.unit.test_ibsi import TRANSFORMS

REFDATA = Path(__file__).resolve().parents[2] / "shared" / "refdata"

# MIRP's names of the aggregation methods -> the preset's (pipelines.science.presets.IbsiOptions)
_MIRP_AGGREGATION = {"3D_avg": "3d_average", "3D_mrg": "3d_volume_merge",
                     "2.5D_d_mrg": "2.5d_direction_merge", "2.5D_v_mrg": "2.5d_volume_merge",
                     "3D": "3d", "2.5D": "2.5d"}
# MIRP's column suffixes -> the reference tags' ("fbs_w25.0", "d1", "a0.0" name settings)
_MIRP_NAME = re.compile(r"_(d1(\.0)?|a0(\.0)?|fb[sn]_[wn][0-9.]+)(?=_|$)")
_MIRP_AGGREGATION_NAME = {"3d_avg": "3D_avg", "3d_v_mrg": "3D_comb", "2.5d_d_mrg": "2_5D_avg",
                          "2.5d_v_mrg": "2_5D_comb", "3d": "3D", "2.5d": "2_5D"}


def mirp_settings(configuration: str) -> dict[str, Any]:
    """MIRP's keyword arguments for the configuration's preset."""
    preset = preset_of(configuration)
    setting = preset.settings
    assert preset.ibsi is not None
    spacing = setting.get("resampledPixelSpacing")
    two_d = preset.ibsi.texture_aggregation.get("glcm", "3D_avg").startswith("2.5D")
    kwargs: dict[str, Any] = {
        "image_modality": "CT", "by_slice": two_d, "anti_aliasing": False,
        "base_feature_families": ["morphology", "statistics", "intensity_histogram", "glcm",
                                  "glrlm", "glszm", "ngtdm", "ngldm"],
        "glcm_distance": 1.0, "ngldm_distance": 1.0, "ngtdm_distance": 1.0,
        "ngldm_difference_level": 0.0,
    }
    if preset.ibsi.ivh is not None:
        kwargs["base_feature_families"].append("intensity_volume_histogram")
        kwargs["ivh_discretisation_method"] = preset.ibsi.ivh.discretisation
        if preset.ibsi.ivh.bin_width is not None:
            kwargs["ivh_discretisation_bin_width"] = float(preset.ibsi.ivh.bin_width)
        if preset.ibsi.ivh.bin_count is not None:
            kwargs["ivh_discretisation_n_bins"] = preset.ibsi.ivh.bin_count
    if spacing is not None:
        kwargs.update(new_spacing=next(float(s) for s in spacing if s),
                      spline_order=3 if setting["interpolator"] == "sitkBSpline" else 1,
                      roi_spline_order=1,
                      roi_interpolation_mask_inclusion_threshold=(
                          preset.preprocessing.mask_partial_volume_threshold))
    reseg = preset.ibsi.resegmentation
    if reseg.range is not None:
        kwargs["resegmentation_intensity_range"] = [float(b) for b in reseg.range]
    if reseg.outlier_sigma is not None:
        kwargs["resegmentation_sigma"] = reseg.outlier_sigma
    if setting.get("binCount") is not None:
        kwargs.update(base_discretisation_method="fixed_bin_number",
                      base_discretisation_n_bins=setting["binCount"])
    else:
        kwargs.update(base_discretisation_method="fixed_bin_size",
                      base_discretisation_bin_width=float(setting["binWidth"]))
    for family, mirp_family in (("glcm", "glcm"), ("glrlm", "glrlm"), ("glszm", "glszm"),
                                ("gldm", "ngldm"), ("ngtdm", "ngtdm")):
        method = preset.ibsi.texture_aggregation[family]
        kwargs[f"{mirp_family}_spatial_method"] = _MIRP_AGGREGATION[method]
    return kwargs


def mirp_features(image: Path, mask: Path, configuration: str, roi_name: str | None = None
                  ) -> dict[str, float]:
    """MIRP's features of the ROI ``roi_name`` of ``mask`` (the whole mask when None) on
    ``image`` (a DICOM folder or a NIfTI file each) with the configuration's settings, by IBSI
    reference tag."""
    from mirp import extract_features  # a test dependency, imported where it is used

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [table] = extract_features(image=str(image), mask=str(mask),
                                   **({"roi_name": roi_name} if roi_name else {}),
                                   **mirp_settings(configuration))
    values = {}
    for column in table.columns:
        name = _MIRP_NAME.sub("", column)
        for mirp, suffix in _MIRP_AGGREGATION_NAME.items():
            if name.endswith(f"_{mirp}"):
                name = name.removesuffix(f"_{mirp}") + f"_{suffix}"
                break
        try:
            values[name] = float(table[column].iloc[0])
        except (TypeError, ValueError):
            continue
    return values


def mirp_values(refdata: Path, configuration: str) -> dict[str, float]:
    """MIRP's features of the phantom (DICOM CT + RTSTRUCT), by IBSI reference tag."""
    dicom = refdata / PHANTOM / "dicom"
    return mirp_features(dicom / "image", dicom / "mask", configuration, roi_name="GTV-1")


def as_nifti(ct_dir: Path, seg_path: Path, out: Path) -> tuple[Path, dict[int, Path]]:
    """The CT series of ``ct_dir`` as ``out/image.nii.gz`` (SimpleITK's series reader) and each
    segment of the SEG ``seg_path`` as ``out/segment-<n>.nii.gz`` on that grid (highdicom's
    frames by source instance): MIRP's inputs, read by neither of the node's readers."""
    import highdicom as hd
    import numpy as np
    import pydicom
    import SimpleITK as sitk

    out.mkdir(parents=True, exist_ok=True)
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(ct_dir))
    reader.SetFileNames(files)
    image = reader.Execute()
    sitk.WriteImage(image, str(out / "image.nii.gz"))
    seg = hd.seg.segread(seg_path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    masks = {}
    for number in seg.get_segment_numbers():
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=sources, segment_numbers=[number],
            assert_missing_frames_are_empty=True)
        mask = sitk.GetImageFromArray(frames[..., 0].astype(np.uint8))
        mask.CopyInformation(image)
        masks[number] = out / f"segment-{number}.nii.gz"
        sitk.WriteImage(mask, str(masks[number]))
    return out / "image.nii.gz", masks


def liver_ct(out: Path) -> Path:
    """A small synthetic liver CT with two lesions (``demo.synthetic``: 40 slices of
    256 x 256, 1.25 mm pixels, 2.5 mm slices) written under ``out``; its folder."""
    from demo.synthetic import write_synthetic_study

    write_synthetic_study(out, shape=(40, 256, 256), pixel_spacing=1.25, slice_thickness=2.5)
    return out


def node_features(study: Path, configuration: str, out: Path) -> dict[int, dict[str, float]]:
    """``radiomics-node process`` on ``study`` with the configuration's preset; the features
    CSV's values by segment number and pyradiomics key."""
    subprocess.run([sys.executable, "-m", "node.cli", "process", str(study), "--preset",
                    f"ibsi-ct-phantom-{configuration}", "--out", str(out)], check=True,
                   capture_output=True)
    [features] = out.glob("*/features.csv")
    values: dict[int, dict[str, float]] = {}
    with features.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            values.setdefault(int(row["segment_number"]), {})[row["feature"]] = float(
                row["value"])
    return values


def agreement(node: dict[str, float], mirp: dict[str, float], configuration: str, rtol: float
              ) -> list[tuple[str, float, float, bool]]:
    """(tag, node value, MIRP value, within rtol) of every mapped feature MIRP computes."""
    rows = []
    for feature, tags in tags_for(preset_of(configuration)).items():
        value = TRANSFORMS.get(feature, lambda v: v)(node[f"original_{feature}"])
        for tag in tags:
            if tag in mirp:
                other = mirp[tag]
                rows.append((tag, value, other, abs(value - other) <= rtol * max(abs(other),
                                                                                  1e-12)))
    return rows


def _print(label: str, rows: list[tuple[str, float, float, bool]], rtol: float) -> None:
    print(f"{label}: {sum(r[3] for r in rows)}/{len(rows)} within {rtol:g}")
    for tag, value, other, within in rows:
        if not within:
            print(f"  {tag}: node {value:.6g}, MIRP {other:.6g}")


def main() -> None:
    """Compare the configurations named on the command line (all five by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configurations", nargs="*", default=list(CONFIGURATIONS))
    parser.add_argument("--rtol", type=float, default=0.01)
    parser.add_argument("--liver", action="store_true",
                        help="the synthetic liver CT's lesions instead of the phantom")
    args = parser.parse_args()
    for configuration in args.configurations:
        with tempfile.TemporaryDirectory() as tmp:
            if not args.liver:
                node = process_phantom(REFDATA, configuration, Path(tmp))
                rows = agreement(node, mirp_values(REFDATA, configuration), configuration,
                                 args.rtol)
                _print(configuration, rows, args.rtol)
                continue
            study = liver_ct(Path(tmp) / "study")
            image, masks = as_nifti(study / "ct", study / "seg.dcm", Path(tmp) / "nifti")
            lesions = node_features(study, configuration, Path(tmp) / "out")
            for number, mask in masks.items():
                rows = agreement(lesions[number], mirp_features(image, mask, configuration),
                                 configuration, args.rtol)
                _print(f"{configuration}, lesion {number}", rows, args.rtol)


if __name__ == "__main__":
    main()
