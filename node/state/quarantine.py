"""Quarantine: input the node could not accept is kept, never dropped, next to a reason file."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from node.state.spool import write_durably


def quarantine(quarantine_dir: Path, data: bytes, *, source: str, tag: str, reason: str,
               now: float) -> Path:
    """Keep ``data`` under ``quarantine_dir`` with a ``.reason.json`` naming source, tag and reason.

    ``source`` says where the bytes came from (calling AE title or a file path); ``tag`` names the
    DICOM attribute at fault, e.g. ``(0008,0018) SOPInstanceUID``; ``now`` (epoch seconds) names
    the file and is recorded as ``quarantined_at``. Returns the kept file's path.
    """
    stem = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "-" + uuid.uuid4().hex[:12]
    kept = quarantine_dir / f"{stem}.dcm"
    write_durably(kept, data)
    record = {"file": kept.name, "source": source, "tag": tag, "reason": reason,
              "quarantined_at": now}
    write_durably(quarantine_dir / f"{stem}.reason.json", json.dumps(record, indent=2).encode())
    return kept
