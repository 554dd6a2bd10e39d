"""The checks of a segmentation propagated onto another series of a study job, as a series QC
report (``pipelines.science.registration.RegistrationQC`` in the rows every QC report has: qc.csv,
the feature report's evaluations, the summary image).

One ``info`` row each for the method, the final Mattes mutual information, the displacement at
the lesions' centre and the rotation; one row for the normalised mutual information around the
lesions and one per lesion for its round-trip Dice, each ``pass`` or ``fail`` against its
threshold (``RegistrationSettings``). A failed row fails the series: it is not measured.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipelines.science.qc.report import QCCheck, QCReport
from pipelines.science.registration import RegistrationQC, RegistrationSettings

METHODS = {
    "identical-grid": "copied (same frame of reference, identical grid)",
    "resampled": "resampled (same frame of reference)",
    "rigid": "rigid registration (Mattes mutual information)",
    "affine": "rigid then affine registration (Mattes mutual information)",
}
"""Each propagation method in words, for reports and the derived SEG's segment descriptions."""


def describe(qc: RegistrationQC) -> str:
    """How the segmentation came onto the series, in words."""
    return METHODS[qc.method]


def registration_report(role: str, series_uid: str, qc: RegistrationQC,
                        lesions: Sequence[str], settings: RegistrationSettings
                        ) -> QCReport:
    """The propagation onto the series ``series_uid`` of ``role`` as a series QC report;
    ``lesions`` names each mask's lesion, in ``qc.round_trip_dice`` order."""
    checks = [
        QCCheck("propagation method", "series", "info", qc.method, "", "",
                f"{describe(qc)} onto series {series_uid}"),
        QCCheck("registration translation", "series", "info", round(qc.translation_mm, 2),
                "mm", "", "displacement of the target at the lesions' centre"),
        QCCheck("registration rotation", "series", "info", round(qc.rotation_degrees, 2),
                "deg", "", "rotation of the transform"),
    ]
    checks += [QCCheck("registration", "series", "fail", reason, "", "", "the optimiser left the "
                       "images' overlap: nothing was propagated")
               for reason in qc.reasons if reason.startswith("the registration failed")]
    if qc.metric is not None:
        checks.append(QCCheck("registration metric", "series", "info", round(qc.metric, 4), "",
                              "", "final Mattes mutual information (lower is better)"))
    if qc.normalised_mutual_information is not None:
        nmi = qc.normalised_mutual_information
        limit = settings.min_normalised_mutual_information
        checks.append(QCCheck(
            "registration NMI", "series", "pass" if nmi >= limit else "fail", round(nmi, 4), "",
            f">= {limit}", "normalised mutual information of the aligned images around the "
            "lesions (unrelated images score near 1)"))
    limit = settings.min_round_trip_dice
    for name, dice in zip(lesions, qc.round_trip_dice, strict=True):
        checks.append(QCCheck(
            f"round-trip overlap {name}", "series", "pass" if dice >= limit else "fail",
            round(dice, 3), "", f">= {limit}",
            "Dice of the lesion as drawn with its propagation brought back by the registration "
            "the other way"))
    return QCReport(f"{role}: propagation", "series", tuple(checks))
