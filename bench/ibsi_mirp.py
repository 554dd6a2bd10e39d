"""The IBSI 1 CT phantom's configurations A-E through ``radiomics-node process`` compared with
MIRP (PyPI ``mirp``, the IBSI-compliant implementation of the IBSI 1 lead, Zwanenburg) on the
same DICOM CT + RTSTRUCT with the same settings (IBSI 1 reference manual, chapter 5, table of
configurations): per configuration, how many mapped features agree within ``--rtol``, and each
one that does not. By hand: ``python -m bench.ibsi_mirp [--rtol 0.01] [A B C D E]``; the CI
smoke test is tests/unit/test_ibsi_ct_phantom.py (configuration C). Prints one line per
configuration and per disagreement; the measured result is in docs/presets.md.
"""

from __future__ import annotations

import argparse
import re
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

# MIRP's names of the aggregation methods -> the preset's (pipelines.presets.IbsiOptions)
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


def mirp_values(refdata: Path, configuration: str) -> dict[str, float]:
    """MIRP's features of the phantom (DICOM CT + RTSTRUCT), by IBSI reference tag."""
    from mirp import extract_features  # a test dependency, imported where it is used

    dicom = refdata / PHANTOM / "dicom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [table] = extract_features(image=str(dicom / "image"), mask=str(dicom / "mask"),
                                   roi_name="GTV-1", **mirp_settings(configuration))
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


def main() -> None:
    """Compare the configurations named on the command line (all five by default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configurations", nargs="*", default=list(CONFIGURATIONS))
    parser.add_argument("--rtol", type=float, default=0.01)
    args = parser.parse_args()
    for configuration in args.configurations:
        with tempfile.TemporaryDirectory() as out:
            node = process_phantom(REFDATA, configuration, Path(out))
        rows = agreement(node, mirp_values(REFDATA, configuration), configuration, args.rtol)
        print(f"{configuration}: {sum(r[3] for r in rows)}/{len(rows)} within {args.rtol:g}")
        for tag, value, other, within in rows:
            if not within:
                print(f"  {tag}: node {value:.6g}, MIRP {other:.6g}")


if __name__ == "__main__":
    main()
