"""The audit trail of a study, as ``radiomics-node audit STUDY_UID`` prints it.

Who sent what comes from the instance rows (calling AE title and address of each association,
PS3.8 7.1.1.3) or, once retention removed them, from the ``spool removed`` audit row that kept
their senders; which job processed it, with which preset, preset hash and model versions, from
the job rows; what was sent where and when, and who asked for a retry, from the outbox and the
audit rows (``node.state.audit``).
"""

from __future__ import annotations

import json
import time

from node.state import Index


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"


def _detail(text: str | None) -> str:
    """An audit row's JSON detail as ``key=value`` pairs (empty values left out)."""
    if not text:
        return ""
    values = json.loads(text)
    return "  ".join(f"{k}={json.dumps(v) if isinstance(v, list | dict) else v}"
                     for k, v in sorted(values.items()) if v not in (None, "", [], {}))


def study_trail_lines(index: Index, study_uid: str) -> list[str]:
    """The trail of ``study_uid`` as printable lines (UTC times); empty when the index knows
    nothing of the study."""
    trail = index.audit.study_trail(study_uid)
    if not any(trail.values()):
        return []
    lines = [f"study {study_uid}", "", "received (UTC):"]
    for r in trail["received"]:
        lines.append(f"  {_when(r['first_received'])} .. {_when(r['last_received'])}  "
                     f"series {r['series_uid']}  {r['n_instances']} instance(s), {r['bytes']} B, "
                     f"SOP class {r['sop_class_uid']}  from {r['calling_ae']}@"
                     f"{r['peer_host'] or '?'}")
    if not trail["received"]:
        lines.append("  (no instance in the spool now; see 'spool removed' below)")
    lines += ["", "jobs:"]
    for j in trail["jobs"]:
        models = json.loads(j["models"]) if j["models"] else {}
        shown = ", ".join(f"{k} {v}" for k, v in sorted(models.items())) or "none"
        lines.append(f"  job {j['id']}  {j['state']}  rule {j['rule']}  preset {j['preset']} "
                     f"(hash {j['preset_hash'] or '-'})  models {shown}  attempts {j['attempts']}"
                     f"  started {_when(j['started_at'])}  finished {_when(j['finished_at'])}"
                     + (f"  reason: {j['reason']}" if j["reason"] else ""))
        lines.append(f"    source series {j['source_series_uid']}  SEG {j['seg_sop_uid']}")
        prior = index.priors.get(j["id"])
        if prior is not None:
            lines.append(f"    delta: {prior.state}"
                         + (f"  {prior.reason}" if prior.reason else ""))
    if not trail["jobs"]:
        lines.append("  (none)")
    lines += ["", "deliveries:"]
    for d in trail["deliveries"]:
        lines.append(f"  delivery {d['id']}  job {d['job_id']}  {d['state']}  to "
                     f"{d['destination']}  {d['sop_instance_uid']}  attempts {d['attempts']}  "
                     f"delivered {_when(d['delivered_at'])}  verified by {d['verified_by'] or '-'}")
    if not trail["deliveries"]:
        lines.append("  (none)")
    lines += ["", "events:"]
    for e in trail["events"]:
        where = "  ".join(part for part in (
            f"job {e['job_id']}" if e["job_id"] is not None else "",
            f"delivery {e['delivery_id']}" if e["delivery_id"] is not None else "",
            f"series {e['series_uid']}" if e["series_uid"] else "") if part)
        lines.append(f"  {_when(e['at'])}  {e['event']}  by {e['actor']}  {where}  "
                     f"{_detail(e['detail'])}".rstrip())
    return lines
