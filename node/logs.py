"""Structured logs: one JSON object per line, with UIDs but never patient name, ID or birth date.

Callers pass facts as keyword fields (``log.info("instance stored", extra=fields(...))``); only
the fields given are written, so no dataset is ever dumped into a log line, and each string in
them is cut to ``MAX_FIELD_CHARS`` (a value a sender controls, such as a 200 kB Series
Description, never reaches a log line whole).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

PHI_KEYWORDS = frozenset({"PatientName", "PatientID", "PatientBirthDate"})
"""Patient Module attributes (PS3.3 C.7.1.1) that must never reach a log line."""

MAX_FIELD_CHARS = 1024
"""The longest string a log field keeps: room for a one-line reason that names a file, a tag and
a value (a few hundred characters), far below the values a sender controls (an LO element is
64 characters, PS3.5 6.2, but a non-conformant one may hold 200 kB)."""


def capped(value: Any) -> Any:
    """``value`` with every string longer than ``MAX_FIELD_CHARS`` (also inside dicts, lists,
    tuples and sets, which become lists) cut there and ended with ``... (<n> characters)``;
    other values unchanged."""
    if isinstance(value, str):
        if len(value) <= MAX_FIELD_CHARS:
            return value
        return f"{value[:MAX_FIELD_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {key: capped(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [capped(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line: time, level, logger, event and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=lambda other: capped(str(other)))


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra`` argument that attaches ``values`` to a log record.

    Refuses the keywords of patient identity, so that a careless call fails in tests instead of
    leaking PHI in production. Long strings are cut (:func:`capped`).
    """
    leaked = PHI_KEYWORDS.intersection(values)
    if leaked:
        raise ValueError(f"patient identity must not be logged: {sorted(leaked)}")
    return {"fields": {key: capped(value) for key, value in values.items()}}


def configure(level: str = "INFO", path: Path | None = None) -> None:
    """Send every logger's records as JSON lines to ``path`` (appended) or stderr; quiet the
    chatty libraries."""
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if path is None else logging.FileHandler(path)
    )
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in (
        "pynetdicom", "apscheduler", "radiomics", "pykwalify", "highdicom", "httpx", "httpcore"
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pydicom warns about each invalid value it meets; the node reports refusals itself, with
    # the tag, so those warnings would only repeat (or, in bulk, bury) the useful line.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
