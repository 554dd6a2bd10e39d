"""Deterministic UIDs of the objects the node derives from one job's inputs.

The same rule as the TID 1500 reports (``pipelines.outputs.report_parts``):
``pydicom.uid.generate_uid`` with entropy sources, i.e. pydicom's UID root followed by a number
derived from the SHA-512 hash of the sources (a valid UID under PS3.5 section 9), the sources being
the source series and each of its instances, the input SEG, the preset hash and the software
version, plus what distinguishes one object from another (its kind, a feature name). A rerun on the
same inputs writes the same UIDs; a series that grew gets new ones.
"""

from __future__ import annotations

from pydicom.uid import generate_uid

from pipelines.io.series import SeriesVolume
from pipelines.outputs.software import ALGORITHM_NAME, software_version


def result_uid(volume: SeriesVolume, seg_sop_instance_uid: str, preset_hash: str,
               *parts: str) -> str:
    """A UID that depends on the job's inputs (module docstring) and on ``parts``."""
    return generate_uid(entropy_srcs=[
        ALGORITHM_NAME, volume.series_instance_uid, *volume.sop_instance_uids,
        seg_sop_instance_uid, preset_hash, software_version(), *parts,
    ])
