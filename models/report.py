"""A self-contained HTML report of a training or validation run: a TRIPOD-style summary table
(Collins et al., Ann Intern Med 2015;162:55-63, items 4-16: source of data, participants,
outcome, predictors, sample size, model development and performance), the performance of each
cohort, the DeLong comparisons, and ROC, calibration and decision curves drawn with matplotlib
and embedded as base64 PNG, so the one file travels alone.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt

from models.card import ModelCard
from models.training import Evaluation


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                   metadata={"Software": None})
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(evaluations: Sequence[Evaluation]) -> str:
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    roc, cal, dca = axes
    for e in evaluations:
        roc.plot(e.roc["fpr"], e.roc["tpr"],
                 label=f"{e.cohort}: AUC {e.auc_delong['value']:.3f}")
        cal.plot(e.calibration["predicted"], e.calibration["observed"], "o-", label=e.cohort)
        dca.plot(e.decision_curve["threshold"], e.decision_curve["model"], label=e.cohort)
    last = evaluations[-1]
    dca.plot(last.decision_curve["threshold"], last.decision_curve["treat_all"], "k--",
             label=f"treat all ({last.cohort})")
    dca.axhline(0.0, color="grey", lw=1, label="treat none")
    roc.plot([0, 1], [0, 1], color="grey", lw=1)
    cal.plot([0, 1], [0, 1], color="grey", lw=1)
    roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    cal.set(xlabel="mean predicted probability", ylabel="observed fraction",
            title="Calibration (quantile bins)", xlim=(0, 1), ylim=(0, 1))
    low = min(min(e.decision_curve["model"]) for e in evaluations)
    high = max(max(e.decision_curve["model"]) for e in evaluations)
    dca.set(xlabel="threshold probability", ylabel="net benefit", title="Decision curve",
            ylim=(max(low, -0.1) - 0.02, high + 0.05))
    for axis in axes:
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    return _png(figure)


def _interval(d: dict[str, float], digits: int = 3) -> str:
    return f"{d['value']:.{digits}f} ({d['low']:.{digits}f} to {d['high']:.{digits}f})"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(card: ModelCard, evaluations: Sequence[Evaluation],
           record: dict[str, Any] | None = None, title: str | None = None) -> str:
    """The HTML report of ``evaluations`` of the model ``card`` describes; ``record`` is the
    training record (``validation.json``) when the report is of a training run."""
    record = record or {}
    tripod = [
        ("Model", f"{card.name} {card.version}: {card.description}"),
        ("Intended use", card.intended_use),
        ("Not for clinical use", card.disclaimer if card.not_for_clinical_use else "no"),
        ("Outcome (TRIPOD 6)", f"{card.outcome.name}: {card.outcome.definition}"),
        ("Source of data, participants (TRIPOD 4, 5)", "; ".join(
            f"{c.name} ({c.role}): {c.cases} cases, {c.positives} positive. {c.description}"
            for c in card.cohorts)),
        ("Predictors (TRIPOD 7)", f"{len(card.features)} radiomics features of preset "
         f"{card.preset.name} (sha256 {card.preset.hash[:12]}...)"
         + (f"; clinical: {', '.join(c.name for c in card.clinical_inputs)}"
            if card.clinical_inputs else "")),
        ("Missing data (TRIPOD 9)", "features with missing values dropped; clinical inputs "
         "not imputed"),
        ("Model development (TRIPOD 10)", "; ".join(card.training.steps)),
        ("Decision threshold", f"{card.decision.threshold:.4f} ({card.decision.threshold_method})"),
        ("Acquisition domain", card.domain.model_dump_json(exclude_none=True)),
    ]
    performance = [
        (e.cohort, e.n, e.positives, _interval(e.auc_delong), _interval(e.auc_bootstrap),
         _interval(e.sensitivity), _interval(e.specificity),
         f"{e.hosmer_lemeshow['statistic']:.2f} (df {e.hosmer_lemeshow['dof']}, "
         f"p {e.hosmer_lemeshow['p_value']:.3f})",
         "" if e.c_index is None else f"{e.c_index:.3f}")
        for e in evaluations
    ]
    sections = [
        f"<h1>{html.escape(title or f'{card.name} {card.version}')}</h1>",
        (f"<p class='warn'>{html.escape(card.disclaimer)}</p>"
         if card.not_for_clinical_use else ""),
        "<h2>Summary (TRIPOD)</h2>", _table(tripod, ("item", "")),
        "<h2>Performance</h2>",
        _table(performance, ("cohort", "cases", "positive", "AUC (DeLong 95 % CI)",
                             "AUC (bootstrap 95 % CI)", "sensitivity (Wilson)",
                             "specificity (Wilson)", "Hosmer-Lemeshow", "Harrell's C")),
        f"<img alt='ROC, calibration and decision curves' src='data:image/png;base64,"
        f"{_plots(evaluations)}'>",
    ]
    if record.get("classifiers_cv_auc"):
        sections += ["<h2>Classifiers, internal cross-validation</h2>", _table(
            [(name, f"{auc:.3f}") for name, auc in record["classifiers_cv_auc"].items()],
            ("classifier", "out-of-fold AUC"))]
    if record.get("delong_comparisons"):
        sections += ["<h2>DeLong comparisons (same out-of-fold cases)</h2>", _table(
            [(c["a"], c["b"], f"{c['difference']:+.3f}", f"{c['z']:.2f}", f"{c['p_value']:.3f}")
             for c in record["delong_comparisons"]],
            ("model", "compared with", "AUC difference", "z", "p (two-sided)"))]
    if record.get("stability"):
        sections += ["<h2>Feature stability</h2>", _table(
            list(record["stability"].items()), ("", ""))]
    sections += ["<h2>Features</h2>", _table(
        [(i + 1, f) for i, f in enumerate(card.features)], ("mRMR rank", "feature"))]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left;vertical-align:top}img{max-width:100%}"
             ".warn{background:#fee;border:1px solid #c00;padding:8px;font-weight:bold}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(card.name)}</title><style>{style}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")
