"""QCReport, QCCheck and QCSettings of pipelines.science.qc."""

from __future__ import annotations

import csv
import io
import math

import pytest
from pydantic import ValidationError

from pipelines.science.qc import CSV_COLUMNS, QCCheck, QCReport, QCSettings, worst_status


def _check(name: str, status: str, value: object = 1.0) -> QCCheck:
    return QCCheck(name, "roi", status, value, "mm", "<= 1 mm", f"{name} is {value}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("statuses", "worst"),
    [
        ([], "pass"),
        (["info"], "pass"),
        (["info", "pass"], "pass"),
        (["pass", "warn", "info"], "warn"),
        (["warn", "fail", "pass"], "fail"),
    ],
)
def test_summary_is_the_worst_check(statuses: list[str], worst: str) -> None:
    report = QCReport("s", "roi", tuple(_check(f"c{i}", s) for i, s in enumerate(statuses)))

    assert worst_status(statuses) == worst  # type: ignore[arg-type]
    assert report.status == worst


def test_unknown_status_and_scope_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown QC status 'ok'"):
        _check("x", "ok")
    with pytest.raises(ValueError, match="unknown QC scope"):
        QCCheck("x", "study", "pass", 1, "", "", "")  # type: ignore[arg-type]


def test_rows_round_trip_through_csv() -> None:
    report = QCReport("1.2.3", "series", (
        QCCheck("a", "series", "pass", 0.1 + 0.2, "mm", "<= 1 mm", "ok"),
        QCCheck("b", "series", "info", None, "", "", "not recorded"),
        QCCheck("c", "series", "warn", math.inf, "%", "<= 15 %", "moves"),
    ))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(report.to_rows())

    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))

    assert [r["check"] for r in rows] == ["a", "b", "c"]
    assert float(rows[0]["value"]) == 0.1 + 0.2
    assert rows[1]["value"] == "" and rows[2]["value"] == "inf"
    assert {r["subject"] for r in rows} == {"1.2.3"}


def test_check_lookup_and_failing() -> None:
    report = QCReport("s", "roi", (_check("a", "pass"), _check("b", "warn"), _check("c", "fail")))

    assert report.check("b").status == "warn"
    assert [c.name for c in report.failing()] == ["b", "c"]
    assert report.extended([_check("d", "info")]).checks[-1].name == "d"
    with pytest.raises(KeyError, match="no QC check 'z'"):
        report.check("z")


def test_settings_defaults_and_validation() -> None:
    settings = QCSettings()

    assert settings.ct_max_slice_thickness_mm == 5.0
    assert settings.robustness_max_relative_change == 0.15
    with pytest.raises(ValidationError, match="ct_hu_range: lower bound 4000"):
        QCSettings(ct_hu_range=(4000, -1100))
    with pytest.raises(ValidationError, match="noise_ring_mm: distances must not be negative"):
        QCSettings(noise_ring_mm=(-1, 5))
    with pytest.raises(ValidationError, match="extra"):
        QCSettings(slice_thickness=5)  # type: ignore[call-arg]
