"""Which image series a segmentation (SEG or RT Structure Set) says it was drawn on.

* SEG: Referenced Series Sequence (0008,1115) of the Common Instance Reference Module
  (PS3.3 C.12.2), which lists every series in the same study that holds an instance the SEG
  references.
* RTSTRUCT: Referenced Frame of Reference Sequence (3006,0010) > RT Referenced Study Sequence
  (3006,0012) > RT Referenced Series Sequence (3006,0014) of the Structure Set Module
  (PS3.3 C.8.8.5); the study item names its study as Referenced SOP Instance UID (0008,1155).

These are read from the header alone, the same way by the CLI's folder discovery, the decoding of
a segmentation and the node's router.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"

_SEG_PATH = (("(0008,1115)", "ReferencedSeriesSequence"),)
_RT_PATH = (("(3006,0010)", "ReferencedFrameOfReferenceSequence"),
            ("(3006,0012)", "RTReferencedStudySequence"),
            ("(3006,0014)", "RTReferencedSeriesSequence"))


def is_rtstruct(dataset: Dataset) -> bool:
    """Whether ``dataset`` is an RT Structure Set (SOP Class UID, PS3.4 B.5)."""
    return str(dataset.get("SOPClassUID", "")) == RTSTRUCT_SOP_CLASS_UID


def kind(dataset: Dataset) -> str:
    """``"RTSTRUCT"`` or ``"SEG"``."""
    return "RTSTRUCT" if is_rtstruct(dataset) else "SEG"


def text(item: Dataset, keyword: str) -> str:
    """The value of ``keyword`` in ``item`` as encoded (several values joined by a backslash,
    PS3.5 6.4), stripped; empty when absent."""
    value = item.get(keyword, "")
    if isinstance(value, MultiValue):
        return "\\".join(map(str, value)).strip()
    return str(value or "").strip()


def _rt_studies(dataset: Dataset) -> Iterator[Dataset]:
    for frame in dataset.get("ReferencedFrameOfReferenceSequence") or []:
        yield from frame.get("RTReferencedStudySequence") or []


def reference_values(dataset: Dataset) -> list[tuple[str, str]]:
    """Every value by which ``dataset`` names its series, and for an RTSTRUCT their studies, as
    (where: the tags from the top, value as encoded), empty values included."""
    if not is_rtstruct(dataset):
        return [("(0008,1115) ReferencedSeriesSequence > (0020,000E) SeriesInstanceUID",
                 text(series, "SeriesInstanceUID"))
                for series in dataset.get("ReferencedSeriesSequence") or []]
    path = " > ".join(f"{tag} {keyword}" for tag, keyword in _RT_PATH[:2])
    studies = list(_rt_studies(dataset))
    found = [(f"{path} > (0008,1155) ReferencedSOPInstanceUID",
              text(study, "ReferencedSOPInstanceUID")) for study in studies]
    found += [(f"{path} > (3006,0014) RTReferencedSeriesSequence > (0020,000E) "
               "SeriesInstanceUID", text(series, "SeriesInstanceUID"))
              for study in studies for series in study.get("RTReferencedSeriesSequence") or []]
    return found


def referenced_series_uids(dataset: Dataset) -> set[str]:
    """Series Instance UIDs that ``dataset`` (a SEG or an RTSTRUCT) references, empty values
    dropped (module docstring)."""
    if is_rtstruct(dataset):
        uids = {text(series, "SeriesInstanceUID") for study in _rt_studies(dataset)
                for series in study.get("RTReferencedSeriesSequence") or []}
    else:
        uids = {text(series, "SeriesInstanceUID")
                for series in dataset.get("ReferencedSeriesSequence") or []}
    return uids - {""}


def missing_reference(dataset: Dataset) -> str:
    """Why ``dataset`` names no series, as ``<kind> references no series (<where>)``: the first
    sequence on the path to the series UIDs that is absent (not in any item of the one before)
    or empty, or that its items hold no Series Instance UID."""
    parents: list[Dataset] = [dataset]
    names: list[str] = []
    for tag, keyword in _RT_PATH if is_rtstruct(dataset) else _SEG_PATH:
        names.append(f"{tag} {keyword}")
        items = [item for parent in parents for item in parent.get(keyword) or []]
        if not items:
            state = "empty" if any(keyword in parent for parent in parents) else "absent"
            return f"{kind(dataset)} references no series ({' > '.join(names)} {state})"
        parents = items
    return (f"{kind(dataset)} references no series ({' > '.join(names)} items hold no "
            "SeriesInstanceUID)")


def source_study_uid(dataset: Dataset, series_uid: str) -> str:
    """The Study Instance UID of the study that holds ``series_uid`` as ``dataset`` names it
    (PS3.4 C.4.3 needs the study key to retrieve it): for an RTSTRUCT, the Referenced SOP
    Instance UID of the RT Referenced Study item that lists the series (a structure set may
    reference a series of another study); otherwise, and when that item lacks it, the
    segmentation's own Study Instance UID (a SEG's references are in its study)."""
    if is_rtstruct(dataset):
        for study in _rt_studies(dataset):
            listed = {text(series, "SeriesInstanceUID")
                      for series in study.get("RTReferencedSeriesSequence") or []}
            study_uid = text(study, "ReferencedSOPInstanceUID")
            if series_uid in listed and study_uid:
                return study_uid
    return str(dataset.StudyInstanceUID)
