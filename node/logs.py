"""Structured logs: one JSON object per line, with UIDs but never patient name, ID or birth date.

Callers pass facts as keyword fields (``log.info("instance stored", extra=fields(...))``); only
the fields given are written, so no dataset is ever dumped into a log line.
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
        return json.dumps(entry, default=str)


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """The ``extra`` argument that attaches ``values`` to a log record.

    Refuses the keywords of patient identity, so that a careless call fails in tests instead of
    leaking PHI in production.
    """
    leaked = PHI_KEYWORDS.intersection(values)
    if leaked:
        raise ValueError(f"patient identity must not be logged: {sorted(leaked)}")
    return {"fields": values}


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
