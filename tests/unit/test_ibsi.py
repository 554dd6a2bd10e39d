"""IBSI 1 digital phantom: the ``ibsi-digital-phantom`` preset through the pipeline's extraction
(``extract_lesions``) against the IBSI consensus values (Zwanenburg et al., Radiology 2020; IBSI 1
reference manual arXiv:1612.07003, table of digital phantom reference values).

A feature passes when |value - consensus| <= tolerance + half a unit of the consensus value's
third significant digit (IBSI publishes the phantom's values rounded to three significant digits,
most with tolerance 0). Every pyradiomics feature that IBSI defines is listed in ``IBSI_TAGS``;
``DEVIATIONS`` lists the known differences with their cause, and the test fails if one of them
starts to agree (then the entry is wrong) or if any other feature disagrees.
"""

import csv
import math
from functools import cache
from pathlib import Path

import pytest
import SimpleITK as sitk

from pipelines.science.features import RoiFeatures, extract_lesions
from pipelines.science.presets import load_preset
from pipelines.science.rois import RoiMask

PHANTOM = Path("ibsi1/ibsi_1_digital_phantom/nifti")
CONSENSUS = Path("ibsi1/reference_values/ibsi_1_reference_values_digital_phantom.csv")

# pyradiomics "<class>_<feature>" -> IBSI tag(s). Texture matrices are 3D, averaged over the 13
# directions (pyradiomics' default), hence the _3D_avg / _3D tags.
IBSI_TAGS: dict[str, tuple[str, ...]] = {
    "shape_MeshVolume": ("morph_volume",),
    "shape_VoxelVolume": ("morph_vol_approx",),
    "shape_SurfaceArea": ("morph_area_mesh",),
    "shape_SurfaceVolumeRatio": ("morph_av",),
    "shape_Sphericity": ("morph_sphericity",),
    "shape_Maximum3DDiameter": ("morph_diam",),
    "shape_MajorAxisLength": ("morph_pca_maj_axis",),
    "shape_MinorAxisLength": ("morph_pca_min_axis",),
    "shape_LeastAxisLength": ("morph_pca_least_axis",),
    "shape_Elongation": ("morph_pca_elongation",),
    "shape_Flatness": ("morph_pca_flatness",),
    "firstorder_Mean": ("stat_mean",),
    "firstorder_Variance": ("stat_var",),
    "firstorder_Skewness": ("stat_skew",),
    "firstorder_Kurtosis": ("stat_kurt",),
    "firstorder_Median": ("stat_median",),
    "firstorder_Minimum": ("stat_min",),
    "firstorder_10Percentile": ("stat_p10",),
    "firstorder_90Percentile": ("stat_p90",),
    "firstorder_Maximum": ("stat_max",),
    "firstorder_InterquartileRange": ("stat_iqr",),
    "firstorder_Range": ("stat_range",),
    "firstorder_MeanAbsoluteDeviation": ("stat_mad",),
    "firstorder_RobustMeanAbsoluteDeviation": ("stat_rmad",),
    "firstorder_Energy": ("stat_energy",),
    "firstorder_RootMeanSquared": ("stat_rms",),
    "firstorder_Entropy": ("ih_entropy",),
    "firstorder_Uniformity": ("ih_uniformity",),
    "glcm_MaximumProbability": ("cm_joint_max_3D_avg",),
    "glcm_JointAverage": ("cm_joint_avg_3D_avg",),
    "glcm_SumSquares": ("cm_joint_var_3D_avg",),
    "glcm_JointEntropy": ("cm_joint_entr_3D_avg",),
    "glcm_DifferenceAverage": ("cm_diff_avg_3D_avg", "cm_dissimilarity_3D_avg"),
    "glcm_DifferenceVariance": ("cm_diff_var_3D_avg",),
    "glcm_DifferenceEntropy": ("cm_diff_entr_3D_avg",),
    "glcm_SumAverage": ("cm_sum_avg_3D_avg",),
    "glcm_SumEntropy": ("cm_sum_entr_3D_avg",),
    "glcm_JointEnergy": ("cm_energy_3D_avg",),
    "glcm_Contrast": ("cm_contrast_3D_avg",),
    "glcm_Id": ("cm_inv_diff_3D_avg",),
    "glcm_Idn": ("cm_inv_diff_norm_3D_avg",),
    "glcm_Idm": ("cm_inv_diff_mom_3D_avg",),
    "glcm_Idmn": ("cm_inv_diff_mom_norm_3D_avg",),
    "glcm_InverseVariance": ("cm_inv_var_3D_avg",),
    "glcm_Correlation": ("cm_corr_3D_avg",),
    "glcm_Autocorrelation": ("cm_auto_corr_3D_avg",),
    "glcm_ClusterTendency": ("cm_clust_tend_3D_avg",),
    "glcm_ClusterShade": ("cm_clust_shade_3D_avg",),
    "glcm_ClusterProminence": ("cm_clust_prom_3D_avg",),
    "glcm_Imc1": ("cm_info_corr1_3D_avg",),
    "glcm_Imc2": ("cm_info_corr2_3D_avg",),
    "glrlm_ShortRunEmphasis": ("rlm_sre_3D_avg",),
    "glrlm_LongRunEmphasis": ("rlm_lre_3D_avg",),
    "glrlm_LowGrayLevelRunEmphasis": ("rlm_lgre_3D_avg",),
    "glrlm_HighGrayLevelRunEmphasis": ("rlm_hgre_3D_avg",),
    "glrlm_ShortRunLowGrayLevelEmphasis": ("rlm_srlge_3D_avg",),
    "glrlm_ShortRunHighGrayLevelEmphasis": ("rlm_srhge_3D_avg",),
    "glrlm_LongRunLowGrayLevelEmphasis": ("rlm_lrlge_3D_avg",),
    "glrlm_LongRunHighGrayLevelEmphasis": ("rlm_lrhge_3D_avg",),
    "glrlm_GrayLevelNonUniformity": ("rlm_glnu_3D_avg",),
    "glrlm_GrayLevelNonUniformityNormalized": ("rlm_glnu_norm_3D_avg",),
    "glrlm_RunLengthNonUniformity": ("rlm_rlnu_3D_avg",),
    "glrlm_RunLengthNonUniformityNormalized": ("rlm_rlnu_norm_3D_avg",),
    "glrlm_RunPercentage": ("rlm_r_perc_3D_avg",),
    "glrlm_GrayLevelVariance": ("rlm_gl_var_3D_avg",),
    "glrlm_RunVariance": ("rlm_rl_var_3D_avg",),
    "glrlm_RunEntropy": ("rlm_rl_entr_3D_avg",),
    "glszm_SmallAreaEmphasis": ("szm_sze_3D",),
    "glszm_LargeAreaEmphasis": ("szm_lze_3D",),
    "glszm_LowGrayLevelZoneEmphasis": ("szm_lgze_3D",),
    "glszm_HighGrayLevelZoneEmphasis": ("szm_hgze_3D",),
    "glszm_SmallAreaLowGrayLevelEmphasis": ("szm_szlge_3D",),
    "glszm_SmallAreaHighGrayLevelEmphasis": ("szm_szhge_3D",),
    "glszm_LargeAreaLowGrayLevelEmphasis": ("szm_lzlge_3D",),
    "glszm_LargeAreaHighGrayLevelEmphasis": ("szm_lzhge_3D",),
    "glszm_GrayLevelNonUniformity": ("szm_glnu_3D",),
    "glszm_GrayLevelNonUniformityNormalized": ("szm_glnu_norm_3D",),
    "glszm_SizeZoneNonUniformity": ("szm_zsnu_3D",),
    "glszm_SizeZoneNonUniformityNormalized": ("szm_zsnu_norm_3D",),
    "glszm_ZonePercentage": ("szm_z_perc_3D",),
    "glszm_GrayLevelVariance": ("szm_gl_var_3D",),
    "glszm_ZoneVariance": ("szm_zs_var_3D",),
    "glszm_ZoneEntropy": ("szm_zs_entr_3D",),
    "gldm_SmallDependenceEmphasis": ("ngl_lde_3D",),
    "gldm_LargeDependenceEmphasis": ("ngl_hde_3D",),
    "gldm_LowGrayLevelEmphasis": ("ngl_lgce_3D",),
    "gldm_HighGrayLevelEmphasis": ("ngl_hgce_3D",),
    "gldm_SmallDependenceLowGrayLevelEmphasis": ("ngl_ldlge_3D",),
    "gldm_SmallDependenceHighGrayLevelEmphasis": ("ngl_ldhge_3D",),
    "gldm_LargeDependenceLowGrayLevelEmphasis": ("ngl_hdlge_3D",),
    "gldm_LargeDependenceHighGrayLevelEmphasis": ("ngl_hdhge_3D",),
    "gldm_GrayLevelNonUniformity": ("ngl_glnu_3D",),
    "gldm_DependenceNonUniformity": ("ngl_dcnu_3D",),
    "gldm_DependenceNonUniformityNormalized": ("ngl_dcnu_norm_3D",),
    "gldm_GrayLevelVariance": ("ngl_gl_var_3D",),
    "gldm_DependenceVariance": ("ngl_dc_var_3D",),
    "gldm_DependenceEntropy": ("ngl_dc_entr_3D",),
    "ngtdm_Coarseness": ("ngt_coarseness_3D",),
    "ngtdm_Contrast": ("ngt_contrast_3D",),
    "ngtdm_Busyness": ("ngt_busyness_3D",),
    "ngtdm_Complexity": ("ngt_complexity_3D",),
    "ngtdm_Strength": ("ngt_strength_3D",),
}
# pyradiomics features with no IBSI counterpart (docs/feature-codes.md, private codes).
NOT_IN_IBSI = {
    "shape_Maximum2DDiameterSlice", "shape_Maximum2DDiameterColumn", "shape_Maximum2DDiameterRow",
    "firstorder_TotalEnergy", "glcm_MCC",
}
# Definitions that differ: IBSI's value is pyradiomics' value transformed like this.
TRANSFORMS = {
    # IBSI 1 section 3.3.4 (IPH6) is excess kurtosis, m4/m2^2 - 3; pyradiomics omits the -3.
    "firstorder_Kurtosis": lambda value: value - 3.0,
}
# Known deviations that remain after the transforms, with their cause.
DEVIATIONS = {
    "morph_pca_min_axis": (
        "pyradiomics normalises the covariance of the voxel coordinates by N (shape.py); the "
        "consensus values match the sample covariance, N - 1: each IBSI axis length is "
        "pyradiomics' times sqrt(74/73) = 1.0068 (9.245 -> 9.308). 9.245 lies 0.065 below "
        "9.31 +- 0.06"
    ),
    "morph_pca_least_axis": (
        "same cause as the minor axis (8.478 -> 8.536); 8.478 lies 0.062 below 8.54 +- 0.05. "
        "The major axis (11.325 -> 11.402) stays inside its tolerance of 0.1"
    ),
}


def _allowed(reference: float, tolerance: float) -> float:
    """The IBSI tolerance plus half a unit of the third significant digit of the reference."""
    rounding = 0.0 if reference == 0 else 0.5 * 10 ** (math.floor(math.log10(abs(reference))) - 2)
    return tolerance + rounding


@cache
def _consensus(refdata: Path) -> dict[str, tuple[float, float]]:
    with (refdata / CONSENSUS).open(encoding="utf-8-sig", newline="") as handle:
        return {
            row["tag"]: (float(row["reference value"]), float(row["tolerance"] or 0))
            for row in csv.DictReader(handle)
            if row["reference value"]
        }


@cache
def _phantom_features(refdata: Path) -> RoiFeatures:
    image = sitk.ReadImage(str(refdata / PHANTOM / "image" / "phantom.nii.gz"))
    mask = sitk.Cast(sitk.ReadImage(str(refdata / PHANTOM / "mask" / "mask.nii.gz")),
                     sitk.sitkUInt8)
    [lesion] = extract_lesions(image, [[RoiMask("intra", mask, (0, 0, 0))]],
                               load_preset("ibsi-digital-phantom"))
    return lesion["intra"]


def test_every_computed_feature_is_mapped_or_declared_not_ibsi(refdata: Path) -> None:
    computed = {key.removeprefix("original_") for key in _phantom_features(refdata).values}
    assert computed == set(IBSI_TAGS) | NOT_IN_IBSI
    consensus = _consensus(refdata)
    assert all(tag in consensus for tags in IBSI_TAGS.values() for tag in tags)


@pytest.mark.parametrize(
    ("feature", "tag"), [(f, t) for f, tags in IBSI_TAGS.items() for t in tags]
)
def test_feature_against_ibsi_consensus(refdata: Path, feature: str, tag: str) -> None:
    value = _phantom_features(refdata).values[f"original_{feature}"]
    value = TRANSFORMS.get(feature, lambda v: v)(value)
    reference, tolerance = _consensus(refdata)[tag]
    within = abs(value - reference) <= _allowed(reference, tolerance)
    if tag in DEVIATIONS:
        assert not within, f"{tag} now agrees with IBSI ({value}); remove it from DEVIATIONS"
    else:
        assert within, (tag, value, reference, tolerance)
