"""Quality control and model results as SR content of a TID 1411 group (PS3.16 TID 1411
"Qualitative Evaluations"), and as lines of the summary image.

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
from pydicom.dataset import Dataset

from pipelines.outputs.codes import PRIVATE_SCHEME
from pipelines.science.inference import ModelIdentity, ModelOutput, NotApplied
from pipelines.science.qc import QCCheck, QCReport

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


def check_findings(checks: Sequence[QCCheck]) -> list[hd.sr.TextContentItem]:
    """A CONTAINS TEXT item per check, whatever its status (e.g. every check of a study job's
    registration: how a series' ROIs came onto it)."""
    return [hd.sr.TextContentItem(name=QC_FINDING, value=finding_text(check),
                                  relationship_type="CONTAINS") for check in checks]


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
        # a study job's other series are named by role ("arterial: series")
        subject = report.subject if report.scope == "roi" or ": " in report.subject \
            else "Series"
        lines.append(f"{subject}: {report.status}" + (f" - {shown}" if shown else
                                                       f" ({len(report.checks)} checks)"))
    return lines


MODEL_PROBABILITY_UNIT = hd.sr.CodedConcept("1", "UCUM", "no units")
MODEL_CATEGORY = hd.sr.CodedConcept("model.category", PRIVATE_SCHEME, "Model risk category")
MODEL_IDENTITY = hd.sr.CodedConcept("model.identity", PRIVATE_SCHEME, "Model")
MODEL_NOT_APPLIED = hd.sr.CodedConcept("model.notapplied", PRIVATE_SCHEME, "Model not applied")
MODEL_DISCLAIMER = hd.sr.CodedConcept("model.disclaimer", PRIVATE_SCHEME, "Model disclaimer")


def _identity_text(model: ModelIdentity) -> str:
    return (f"{model.name} {model.version} (package sha256 {model.sha256}); intended use: "
            f"{model.intended_use}")[:1024]


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type="CONTAINS")


def model_items(result: ModelOutput | NotApplied) -> list[Dataset]:
    """SR content of one model on one lesion, for the lesion's own group (PS3.16 TID 1411
    allows measurements and evaluations of the finding): which model (name, version, package
    sha256, intended use); when it ran, the probability of its outcome as a NUM (UCUM ``1``,
    private code ``model.prob``) and the risk category at the card's threshold; when it did not,
    ``model.notapplied`` with every failed condition; and the card's disclaimer when the model is
    not for clinical use."""
    items: list[Dataset] = [_text(MODEL_IDENTITY, _identity_text(result.model))]
    if isinstance(result, ModelOutput):
        items.append(hd.sr.NumContentItem(
            name=hd.sr.CodedConcept("model.prob", PRIVATE_SCHEME,
                                    f"Probability of {result.outcome}"[:64]),
            value=result.probability, unit=MODEL_PROBABILITY_UNIT,
            relationship_type="CONTAINS"))
        items.append(_text(MODEL_CATEGORY,
                           f"{result.category} (threshold {result.threshold:g})"))
    else:
        reasons = "; ".join(reason.message for reason in result.reasons)
        items.append(_text(MODEL_NOT_APPLIED, f"{result.model.name} not applied: {reasons}"))
    if result.model.not_for_clinical_use:
        items.append(_text(MODEL_DISCLAIMER, result.model.disclaimer or "Not for clinical use."))
    return items


def model_line(label: str, result: ModelOutput | NotApplied) -> str:
    """One line of the summary image about one model on one lesion."""
    model = f"{result.model.name} {result.model.version}"
    if isinstance(result, ModelOutput):
        return (f"{label}: {model}: P({result.outcome}) = {result.probability:.2f}, "
                f"{result.category} (threshold {result.threshold:g})")
    first = result.reasons[0].message if result.reasons else "no reason recorded"
    more = f" (+{len(result.reasons) - 1} more)" if len(result.reasons) > 1 else ""
    return f"{label}: {model} not applied: {first}{more}"
