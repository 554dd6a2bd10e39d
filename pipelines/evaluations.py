"""Quality control as SR content of a TID 1411 group (PS3.16 TID 1411 "Qualitative Evaluations").

Each measurement group carries two coded evaluations, the worst status of the series checks and
of the checks of the lesion the ROI belongs to (private codes ``qc.series`` and ``qc.roi`` with
value ``qc.pass``, ``qc.warn`` or ``qc.fail``), and one TEXT item ``qc.finding`` per check that
warned or failed, naming the check, its measured value and unit, the rule and what it means; the
robustness of single features is summarised by the count of unstable features. Every check,
passed or not, is in the result folder's qc.csv.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd

from pipelines.codes import PRIVATE_SCHEME
from pipelines.qc import QCCheck, QCReport

SERIES_QC = hd.sr.CodedConcept("qc.series", PRIVATE_SCHEME, "Series quality control")
ROI_QC = hd.sr.CodedConcept("qc.roi", PRIVATE_SCHEME, "Lesion quality control")
QC_FINDING = hd.sr.CodedConcept("qc.finding", PRIVATE_SCHEME, "Quality control finding")
STATUS = {
    "pass": hd.sr.CodedConcept("qc.pass", PRIVATE_SCHEME, "Passed"),
    "warn": hd.sr.CodedConcept("qc.warn", PRIVATE_SCHEME, "Warning"),
    "fail": hd.sr.CodedConcept("qc.fail", PRIVATE_SCHEME, "Failed"),
}


def qc_evaluations(series: QCReport, roi: QCReport) -> list[hd.sr.QualitativeEvaluation]:
    """The coded summary evaluations of one group: series status, then lesion status."""
    return [
        hd.sr.QualitativeEvaluation(name=SERIES_QC, value=STATUS[series.status]),
        hd.sr.QualitativeEvaluation(name=ROI_QC, value=STATUS[roi.status]),
    ]


def finding_text(check: QCCheck) -> str:
    """One line: ``<check>: <status>, <value> <unit> (rule <threshold>): <message>``, cut to the
    1024 characters of Text Value (UT allows more; viewers show less)."""
    value = "" if check.value is None else f"{check.value:.4g}" if isinstance(
        check.value, float) else str(check.value)
    measured = f"{value} {check.unit}".strip()
    rule = f" (rule {check.threshold})" if check.threshold else ""
    return f"{check.name}: {check.status}, {measured}{rule}: {check.message}"[:1024]


def _reported(check: QCCheck) -> bool:
    """Checks worth a line in the report: those that warned or failed, except the robustness of
    single features (one per feature, in qc.csv), which the count ``robustness.unstable``
    summarises."""
    if check.name == "robustness.unstable":
        return bool(check.value)
    per_feature = check.name.startswith("robustness.") and "_" in check.name
    return check.status in ("warn", "fail") and not per_feature


def qc_findings(series: QCReport, roi: QCReport) -> list[hd.sr.TextContentItem]:
    """A CONTAINS TEXT item per reported check (:func:`_reported`) of ``series`` and ``roi``."""
    return [
        hd.sr.TextContentItem(name=QC_FINDING, value=finding_text(check),
                              relationship_type="CONTAINS")
        for report in (series, roi)
        for check in report.checks
        if _reported(check)
    ]


def qc_lines(reports: Sequence[QCReport]) -> list[str]:
    """Short lines for the summary image: each report's status and what warned or failed, e.g.
    ``segment 1 (Lesion 1): warn - mask.border, robustness.unstable 77``."""
    lines = []
    for report in reports:
        named = [check.name if check.name != "robustness.unstable"
                 else f"{check.name} {check.value}"
                 for check in report.checks if _reported(check)]
        shown = ", ".join(named[:6]) + (f" and {len(named) - 6} more" if len(named) > 6 else "")
        subject = "Series" if report.scope == "series" else report.subject
        lines.append(f"{subject}: {report.status}" + (f" - {shown}" if shown else
                                                       f" ({len(report.checks)} checks)"))
    return lines
