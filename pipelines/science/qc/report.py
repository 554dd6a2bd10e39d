"""QC results: one :class:`QCCheck` per measured property, gathered in a :class:`QCReport`.

A check has a status among ``pass``, ``warn``, ``fail`` and ``info``. ``info`` records a value
that has no threshold (e.g. the manufacturer); it never lowers a report's summary. The summary of a
report is its worst check: ``fail`` over ``warn`` over ``pass``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail", "info"]
Scope = Literal["series", "roi"]
Value = float | int | str | None

_SEVERITY: dict[str, int] = {"info": 0, "pass": 0, "warn": 1, "fail": 2}
CSV_COLUMNS = ("subject", "scope", "check", "status", "value", "unit", "threshold", "message")


def worst_status(statuses: Iterable[Status]) -> Status:
    """``fail`` if any is ``fail``, else ``warn`` if any is ``warn``, else ``pass``."""
    worst: Status = "pass"
    for status in statuses:
        if status not in _SEVERITY:
            raise ValueError(f"unknown QC status {status!r}; known: {sorted(_SEVERITY)}")
        if _SEVERITY[status] > _SEVERITY[worst]:
            worst = status
    return worst


@dataclass(frozen=True)
class QCCheck:
    """One measured property and its verdict.

    ``value`` is the measured value (``None`` when the header does not record it), ``unit`` its
    UCUM unit (``""`` for text and counts), ``threshold`` the rule it was held against in words
    (e.g. ``"<= 5 mm"``; ``""`` for an ``info`` record) and ``message`` what it means.
    """

    name: str
    scope: Scope
    status: Status
    value: Value
    unit: str
    threshold: str
    message: str

    def __post_init__(self) -> None:
        if self.status not in _SEVERITY:
            raise ValueError(f"{self.name}: unknown QC status {self.status!r}")
        if self.scope not in ("series", "roi"):
            raise ValueError(f"{self.name}: unknown QC scope {self.scope!r}")


@dataclass(frozen=True)
class QCReport:
    """The checks of one series (``scope="series"``) or one ROI (``scope="roi"``).

    ``subject`` names what was checked: the Series Instance UID, or the ROI (e.g. the segment
    number and label).
    """

    subject: str
    scope: Scope
    checks: tuple[QCCheck, ...]

    @property
    def status(self) -> Status:
        """Worst status of the checks; ``pass`` for a report without warn or fail."""
        return worst_status(check.status for check in self.checks)

    def check(self, name: str) -> QCCheck:
        """The check called ``name``; ``KeyError`` naming the known checks if there is none."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"{self.subject}: no QC check {name!r}; has {[c.name for c in self.checks]}")

    def failing(self) -> tuple[QCCheck, ...]:
        """The checks with status ``warn`` or ``fail``, in report order."""
        return tuple(c for c in self.checks if c.status in ("warn", "fail"))

    def extended(self, checks: Sequence[QCCheck]) -> QCReport:
        """A report on the same subject with ``checks`` appended."""
        return QCReport(self.subject, self.scope, (*self.checks, *checks))

    def to_rows(self) -> list[dict[str, str]]:
        """One row per check with the keys of :data:`CSV_COLUMNS`, as text for ``csv.DictWriter``.

        Floats are written with ``repr`` (round-trips exactly); ``None`` as an empty cell.
        """
        return [
            {
                "subject": self.subject,
                "scope": check.scope,
                "check": check.name,
                "status": check.status,
                "value": _text(check.value),
                "unit": check.unit,
                "threshold": check.threshold,
                "message": check.message,
            }
            for check in self.checks
        ]


def _text(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)
