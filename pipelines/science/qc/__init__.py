"""Quality control of a series and of each ROI on it (issue 4, "Quality control").

``assess_series(volume)`` records the acquisition and checks the series' integrity;
``assess_roi(volume, mask, ...)`` checks one ROI mask, its plausibility as a lesion (volume; air
and fat on CT), the image around it and, given a preset, the robustness of its features to a
one-voxel change of the contour. Each returns a
:class:`QCReport` of :class:`QCCheck` rows (pass, warn, fail or info, with the measured value,
its unit and the threshold); thresholds live in :class:`QCSettings`. docs/qc.md lists every check
with its threshold and source.
"""

from pipelines.science.qc.assess import assess_roi, assess_series
from pipelines.science.qc.report import CSV_COLUMNS, QCCheck, QCReport, Scope, Status, worst_status
from pipelines.science.qc.robustness import feature_robustness
from pipelines.science.qc.settings import QCSettings

__all__ = [
    "CSV_COLUMNS",
    "QCCheck",
    "QCReport",
    "QCSettings",
    "Scope",
    "Status",
    "assess_roi",
    "assess_series",
    "feature_robustness",
    "worst_status",
]
