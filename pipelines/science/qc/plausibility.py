"""Is the ROI plausible as a lesion of the preset's organ? Its volume and, on CT, its air and fat.

A mask that is the whole volume, the body or a slab of the abdomen measures without error and
gives features of something that is not a lesion (issue 20, item 6: a 16.8 L "lesion" of air at
-1024 HU). These checks fail such a region; they apply to lesions only, not to a segment measured
as the organ itself (``rois.liver.measure``).

- Volume: voxels times voxel volume, against ``max_lesion_volume_ml`` (the preset's
  ``rois.max_lesion_volume_ml`` when it sets one). A lesion lies within its organ, so it cannot
  much exceed the organ that holds it: a healthy adult liver measures 0.6 to 2.3 L on CT (Feng et
  al., World J Gastroenterol 2017;23:4968-4977, 369 adults), about 1.3 L for a body surface area
  of 1.8 m2 (Urata et al., Hepatology 1995;21:1317-1321). The default, 3 L (a sphere of 18 cm
  diameter), lies above the largest healthy liver; giant tumours beyond it (massive HCC, giant
  haemangioma) are rare enough that a person should look at the ROI before its features are used.
- Air (CT): the fraction of ROI voxels below ``ct_lesion_air_below_hu`` (-500 HU, midway between
  air at -1000 HU and water at 0 HU; lung parenchyma lies below it). A liver lesion holds gas
  only exceptionally (gas-forming abscess, after ablation).
- Fat (CT): the fraction of ROI voxels within ``ct_lesion_fat_hu_range`` (-190 to -30 HU, the
  adipose-tissue range of Kvist et al., Am J Clin Nutr 1988;48:1351-1361, the reference range of
  Yoshizumi et al., Radiology 1999;211:283-286). A mostly fatty ROI is subcutaneous or visceral
  fat, or a rare fat-containing lesion (lipoma, angiomyolipoma) that the radiomics of the preset's
  lesions do not describe.

Air and fat are Hounsfield units (CT values after the Modality LUT, PS3.3 C.8.2.1.1.3): MR
intensities have no absolute scale, so for any modality but CT the two checks are recorded as
``info`` without a value.
"""

from __future__ import annotations

import numpy as np

from pipelines.science.qc.report import QCCheck, Status
from pipelines.science.qc.settings import QCSettings

_SCOPE = "roi"
_HU = "[hnsf'U]"


def plausibility_checks(
    values: np.ndarray, voxel_mm3: float, modality: str, settings: QCSettings,
    *, max_volume_ml: float | None, limit_source: str,
) -> list[QCCheck]:
    """``lesion.volume``, ``lesion.air`` and ``lesion.fat`` of an ROI whose voxels hold
    ``values`` (modality values of the source image, one per ROI voxel, at least one) on a grid
    of ``voxel_mm3`` voxels.

    ``max_volume_ml`` is the volume limit (None: the volume is recorded as ``info``) and
    ``limit_source`` names where it comes from, for the message (e.g. ``"QCSettings
    max_lesion_volume_ml"``). Volume, air and fat above their limits ``fail``.
    """
    return [_volume(int(values.size), voxel_mm3, max_volume_ml, limit_source),
            *_composition(values, modality, settings)]


def _volume(count: int, voxel_mm3: float, limit: float | None, source: str) -> QCCheck:
    """The ROI's volume in mL; ``fail`` above ``limit``."""
    volume_ml = count * voxel_mm3 / 1000.0
    text = f"{count} voxels, {volume_ml:.5g} mL"
    if limit is None:
        return QCCheck("lesion.volume", _SCOPE, "info", volume_ml, "mL", "", text)
    ok = volume_ml <= limit
    return QCCheck("lesion.volume", _SCOPE, "pass" if ok else "fail", volume_ml, "mL",
                   f"<= {limit:g} mL", text if ok else
                   f"{text}: above {limit:g} mL ({source}), larger than any plausible lesion "
                   "of the organ: the ROI is not a lesion (e.g. the whole volume, the body or "
                   "the organ itself)")


def _composition(values: np.ndarray, modality: str, settings: QCSettings) -> list[QCCheck]:
    """The air and fat fractions of a CT ROI; ``info`` without a value for other modalities."""
    air = settings.ct_lesion_air_below_hu
    low, high = settings.ct_lesion_fat_hu_range
    if modality != "CT":
        return [QCCheck(f"lesion.{tissue}", _SCOPE, "info", None, "%", "",
                        f"{modality} values are not Hounsfield units (MR intensities have no "
                        f"absolute scale): the {tissue} fraction is measured on CT only")
                for tissue in ("air", "fat")]
    return [
        _fraction("lesion.air", int(np.count_nonzero(values < air)), int(values.size),
                  settings.ct_lesion_max_air_fraction, f"< {air:g} {_HU}",
                  f"below {air:g} HU (air or lung)",
                  "a lesion holds no such air; the ROI takes in air outside the body, bowel gas "
                  "or lung"),
        _fraction("lesion.fat", int(np.count_nonzero((values >= low) & (values <= high))),
                  int(values.size), settings.ct_lesion_max_fat_fraction,
                  f"in {low:g} to {high:g} {_HU}", f"from {low:g} to {high:g} HU (fat)",
                  "the ROI is mostly fat, not the tissue of a lesion"),
    ]


def _fraction(name: str, hits: int, count: int, maximum: float | None, band: str,
              what: str, meaning: str) -> QCCheck:
    """The percentage of ROI voxels in ``band``; ``fail`` above ``maximum`` (a fraction)."""
    percent = 100.0 * hits / count
    text = f"{percent:.3g} % of the ROI's voxels ({hits} of {count}) {what}"
    if maximum is None:
        return QCCheck(name, _SCOPE, "info", percent, "%", "", text)
    ok = hits <= maximum * count
    status: Status = "pass" if ok else "fail"
    return QCCheck(name, _SCOPE, status, percent, "%",
                   f"<= {100 * maximum:g} % of voxels {band}",
                   text if ok else f"{text}: above {100 * maximum:g} %, {meaning}")
