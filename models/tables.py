"""The toolkit's input tables, read with the csv module.

Feature table (written by ``radiomics-node export features`` and ``models demo-cohort``): one row
per lesion, a ``case_id`` column, descriptive columns, and one column per feature named
``"<roi_variant>/<pyradiomics key>"`` (:mod:`models.card`); a column is a feature exactly when its
name holds a ``/``. ``preset`` and ``preset_hash`` columns, when present, must hold one value.

Outcome table: ``case_id``, ``outcome`` (0 or 1), optionally ``time`` and ``event`` (0/1) for a
survival outcome, and any clinical columns the training names.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TableError(ValueError):
    """A table that cannot be used; the message names the file, the row or column, the reason."""


@dataclass(frozen=True)
class FeatureTable:
    """Feature values of cases: ``values[i, j]`` is feature ``names[j]`` of case ``case_ids[i]``."""

    path: Path
    case_ids: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray
    preset: str | None
    preset_hash: str | None

    def rows(self, case_ids: Sequence[str]) -> np.ndarray:
        """The rows of ``case_ids``, in that order."""
        where = {case: i for i, case in enumerate(self.case_ids)}
        return self.values[[where[c] for c in case_ids]]

    def columns(self, names: Sequence[str]) -> np.ndarray:
        """All rows, columns ``names`` in that order; TableError naming the missing ones."""
        where = {name: j for j, name in enumerate(self.names)}
        missing = [n for n in names if n not in where]
        if missing:
            raise TableError(f"{self.path}: no column for features {missing[:5]}"
                             f"{' and more' if len(missing) > 5 else ''}")
        return self.values[:, [where[n] for n in names]]


@dataclass(frozen=True)
class OutcomeTable:
    """Outcomes of cases, with optional survival times and clinical columns."""

    path: Path
    case_ids: tuple[str, ...]
    outcome: np.ndarray
    time: np.ndarray | None
    event: np.ndarray | None
    clinical: dict[str, np.ndarray]


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = list(reader)
    except OSError as exc:
        raise TableError(f"{path}: cannot read: {exc.strerror}") from None
    if not header:
        raise TableError(f"{path}: empty file")
    if "case_id" not in header:
        raise TableError(f"{path}: no case_id column (columns: {header[:8]})")
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise TableError(f"{path}: repeated columns {duplicates}")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise TableError(f"{path}: line {number}: {len(row)} cells, header has {len(header)}")
    ids = [row[header.index("case_id")] for row in rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise TableError(f"{path}: case_id repeated: {repeated[:5]}")
    return header, rows


def _number(path: Path, line: int, column: str, text: str) -> float:
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise TableError(f"{path}: line {line}, column {column!r}: {text!r} is not a number"
                         ) from None


def _single(path: Path, header: list[str], rows: list[list[str]], column: str) -> str | None:
    if column not in header:
        return None
    values = sorted({row[header.index(column)] for row in rows})
    if len(values) > 1:
        raise TableError(f"{path}: column {column!r} holds several values {values[:3]}: features "
                         "of different presets cannot be mixed")
    return values[0] if values else None


def read_feature_table(path: str | Path) -> FeatureTable:
    """Read a feature table (module docstring); empty cells become NaN."""
    path = Path(path)
    header, rows = _read(path)
    feature_columns = [j for j, name in enumerate(header) if "/" in name]
    if not feature_columns:
        raise TableError(f"{path}: no feature column ('<roi_variant>/<pyradiomics key>')")
    values = np.array(
        [[_number(path, i + 2, header[j], row[j]) for j in feature_columns]
         for i, row in enumerate(rows)],
        dtype=float,
    ).reshape(len(rows), len(feature_columns))
    return FeatureTable(
        path=path,
        case_ids=tuple(row[header.index("case_id")] for row in rows),
        names=tuple(header[j] for j in feature_columns),
        values=values,
        preset=_single(path, header, rows, "preset"),
        preset_hash=_single(path, header, rows, "preset_hash"),
    )


def read_outcome_table(path: str | Path, clinical: Sequence[str] = ()) -> OutcomeTable:
    """Read an outcome table with the named clinical columns (module docstring)."""
    path = Path(path)
    header, rows = _read(path)
    for column in ("outcome", *clinical):
        if column not in header:
            raise TableError(f"{path}: no column {column!r} (columns: {header})")

    def column(name: str) -> np.ndarray:
        j = header.index(name)
        return np.array([_number(path, i + 2, name, row[j]) for i, row in enumerate(rows)])

    outcome = column("outcome")
    bad = [i + 2 for i, v in enumerate(outcome) if v not in (0.0, 1.0)]
    if bad:
        raise TableError(f"{path}: column 'outcome' must be 0 or 1; lines {bad[:5]}")
    survival = "time" in header and "event" in header
    return OutcomeTable(
        path=path,
        case_ids=tuple(row[header.index("case_id")] for row in rows),
        outcome=outcome.astype(int),
        time=column("time") if survival else None,
        event=column("event") if survival else None,
        clinical={name: column(name) for name in clinical},
    )


def write_feature_table(path: str | Path, case_ids: Sequence[str],
                        descriptive: dict[str, Sequence[str]], names: Sequence[str],
                        values: np.ndarray) -> None:
    """Write a feature table: ``case_id``, the ``descriptive`` columns, then the features
    (floats with ``repr``, NaN as an empty cell)."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["case_id", *descriptive, *names])
        for i, case in enumerate(case_ids):
            out.writerow([case, *(column[i] for column in descriptive.values()),
                          *("" if math.isnan(v) else repr(float(v)) for v in values[i])])
