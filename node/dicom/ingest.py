"""Ingest: the one path by which an instance enters the node, whoever brought it (a C-STORE from a
peer, an instance pulled from Orthanc, a C-GET of a missing source series).

Identity checks first; then the bytes as the sender encoded them are written durably to the spool
and the instance is indexed; only then does the caller hear success (PS3.4 B.2.3 status 0x0000).
Whatever the node acknowledged, it has on disk and indexed, with the size and sha256 of the bytes
written. Refused input is kept in quarantine with a reason that names the tag. A caller that asked
for particular instances (``node.flow.retrieve``) passes what they must hold, and anything else is
refused the same way.

An instance already indexed that arrives again is answered success without being stored twice,
after its spool copy is checked against the row (file present, same size, same sha256: only
duplicates cost a read of the spool copy). A copy damaged behind the node's back (missing,
truncated, overwritten) is replaced by the arriving bytes, durably, and its series is routed again
(``Index.instances.replace_file``): a job that failed on the damaged copy runs again under the
``reprocess`` policy (``node.flow.router``).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from node.config import NodeConfig
from node.dicom.part10 import Part10
from node.dicom.validation import (
    CANNOT_UNDERSTAND,
    DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    Refusal,
    check_data_set_encoding,
    check_elements,
    check_pixels,
    check_size,
    check_sop_class,
    check_transfer_syntax,
    element_value,
)
from node.logs import PHI_KEYWORDS, fields
from node.state import Index
from node.state.instances import InstanceRow
from node.state.quarantine import quarantine
from node.state.spool import is_uid, spool_damage, spool_path, write_durably

log = logging.getLogger(__name__)

SUCCESS = 0x0000

HASH_THREADS = 8
"""Threads of a process hashing instances while they are written to the spool (hashlib lets
the other threads run while it hashes, the write waits on the disk: the two overlap)."""

@dataclass(frozen=True)
class Outcome:
    """The answer for the sender: a C-STORE status and, on failure, a comment naming the tag
    (``tag``, e.g. ``(0020,000D) StudyInstanceUID``, for callers that count refusals)."""

    status: int
    comment: str = ""
    tag: str = ""

    @property
    def no_room(self) -> bool:
        """The node's own disk refused the instance (free space below ``min_free_bytes``, a
        failed spool write): 0xA700 without a tag; the same instance may be stored later."""
        return self.status == OUT_OF_RESOURCES and not self.tag

    def as_dataset(self) -> Dataset:
        """The status as a C-STORE response dataset with Error Comment (0000,0902)."""
        status = Dataset()
        status.Status = self.status
        if self.comment:
            status.ErrorComment = self.comment[:64]  # LO: 64 characters at most (PS3.5 6.2)
        return status


IDENTITY = (
    ("(0008,0016) SOPClassUID", "SOPClassUID"),
    ("(0008,0018) SOPInstanceUID", "SOPInstanceUID"),
    ("(0020,000D) StudyInstanceUID", "StudyInstanceUID"),
    ("(0020,000E) SeriesInstanceUID", "SeriesInstanceUID"),
)
"""The attributes without which an instance cannot be filed (PS3.3 C.12.1, C.7.2.1, C.7.3.1)."""


def identify(dataset: Dataset, expected_class: str | None = None,
             expected_instance: str | None = None) -> dict[str, str]:
    """The identity UIDs of ``dataset`` by keyword; raise Refusal naming the bad tag.

    ``expected_class`` and ``expected_instance`` are the C-STORE request's Affected SOP Class and
    Instance UIDs, which the dataset must repeat (PS3.7 9.1.1.1).
    """
    values: dict[str, str] = {}
    for tag, keyword in IDENTITY:
        value = str(element_value(dataset, keyword, "") or "")
        if not is_uid(value):
            reason = "missing" if not value else f"not a valid UID: {value[:40]!r}"
            raise Refusal(CANNOT_UNDERSTAND, tag, reason)
        values[keyword] = value
    if expected_class is not None and values["SOPClassUID"] != expected_class:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "(0008,0016) SOPClassUID",
                      f"dataset says {values['SOPClassUID']}, command says {expected_class}")
    if expected_instance is not None and values["SOPInstanceUID"] != expected_instance:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "(0008,0018) SOPInstanceUID",
                      "differs from the command's Affected SOP Instance UID")
    return values


def tag_name(keyword: str) -> str:
    """``(gggg,eeee) Keyword`` for a data dictionary keyword (PS3.6)."""
    tag = Tag(tag_for_keyword(keyword))
    return f"({tag.group:04X},{tag.element:04X}) {keyword}"


def check_expected(dataset: Dataset, expected: Mapping[str, str]) -> None:
    """Refuse, with 0xC000 (PS3.4 B.2.3 Table B.2-1, Error: Cannot understand), an instance
    whose value of a keyword of ``expected`` differs from the value given (both stripped of
    padding, an absent element read as empty): e.g. an instance a retrieval brought from another
    study, series or patient than the one asked for. The reason names the tag and both values.

    The status: 0xA7xx (Out of Resources) would tell the sender to try again later and 0xA9xx
    says the data set breaks its IOD; the instance is neither, it is one the node cannot take as
    what it asked for, and the Cxxx class is Table B.2-1's failure for a data set the SCP does
    not process, which no sender retries."""
    for keyword, value in expected.items():
        actual = str(element_value(dataset, keyword, "") or "").strip()
        if actual != value.strip():
            raise Refusal(CANNOT_UNDERSTAND, tag_name(keyword),
                          f"dataset says {actual[:64]!r}, the request expects {value[:64]!r}")


def content_sha256(data: bytes | Part10) -> str:
    """Hex sha256 of the bytes a spool file of ``data`` holds: its Part 10 encoding, the
    buffers in file order (PS3.10 7)."""
    digest = hashlib.sha256()
    for chunk in data.chunks if isinstance(data, Part10) else (data,):
        digest.update(chunk)
    return digest.hexdigest()


def loggable_reason(refusal: Refusal) -> str:
    """The refusal's reason for a log line: without the values when the tag is one of patient
    identity (``node.logs.PHI_KEYWORDS``)."""
    if refusal.tag.rsplit(" ", 1)[-1] in PHI_KEYWORDS:
        return "differs from what the request expects (values not logged: patient identity)"
    return refusal.reason


_hashers = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="ingest-hash")


def check_instance(data: bytes | Part10, decode: Callable[[], Dataset], max_bytes: int,
                   expected_class: str | None = None, expected_instance: str | None = None,
                   expected: Mapping[str, str] | None = None) -> tuple[Dataset, dict[str, str]]:
    """Every check an instance passes before the node keeps it (``node.dicom.validation``: size up
    to ``max_bytes``, transfer syntax, every element decodable, identity, ``expected``, SOP
    class, Pixel Data against the Image Pixel module); returns the decoded data set and its
    identity UIDs. Raises Refusal naming the status and tag; anything ``decode`` raises on
    malformed input becomes a 0xC000 Refusal."""
    try:
        check_size(len(data), max_bytes)
        if isinstance(data, Part10):
            syntax = data.transfer_syntax
            check_data_set_encoding(syntax, data.body[:6])
        else:
            syntax = check_transfer_syntax(data)
        dataset = decode()
        check_elements(dataset)
        identity = identify(dataset, expected_class, expected_instance)
        if expected:
            check_expected(dataset, expected)
        check_sop_class(identity["SOPClassUID"])
        check_pixels(dataset, identity["SOPClassUID"], syntax)
    except Refusal:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise Refusal(CANNOT_UNDERSTAND, "(dataset)", f"cannot decode: {exc}") from exc
    return dataset, identity


class Ingest:
    """Checks, stores durably and indexes instances; shared by every way data comes in."""

    def __init__(self, config: NodeConfig, index: Index):
        self._config = config
        self._index = index
        self._spool_dir = config.spool_dir  # (a property that joins paths on every call)
        self._spool_dir.mkdir(parents=True, exist_ok=True)

    def accept(self, data: bytes | Part10, decode: Callable[[], Dataset], source: str,
               expected_class: str | None = None,
               expected_instance: str | None = None, host: str | None = None, *,
               expected: Mapping[str, str] | None = None) -> Outcome:
        """Take one instance: ``data`` is its Part 10 encoding (as one buffer, or as a header and
        the data set as received: ``node.dicom.part10``), ``decode`` parses it, ``source``
        says who brought it (e.g. the calling AE title) and ``host`` from which address (kept in
        the index for the audit trail). Never raises for bad input: the checks of
        ``node.dicom.validation`` (size, transfer syntax, every element decodable, identity, SOP
        class, Pixel Data against the Image Pixel module) refuse it with a status naming the tag.
        ``expected`` (keyword -> value, e.g. the Study and Series Instance UIDs and the Patient
        ID a retrieval asked for) is checked after identity (:func:`check_expected`). A refused
        instance is quarantined, never indexed; its log line leaves out patient identity."""
        try:
            dataset, identity = check_instance(
                data, decode, self._config.limits.max_instance_bytes, expected_class,
                expected_instance, expected)
        except Refusal as refusal:
            kept = quarantine(self._config.quarantine_dir, bytes(data), source=source,
                              tag=refusal.tag, reason=refusal.reason,
                              now=self._index.clock.time())
            log.warning("instance refused", extra=fields(
                source=source, status=f"0x{refusal.status:04X}", tag=refusal.tag,
                reason=loggable_reason(refusal), quarantined=kept.name))
            return Outcome(refusal.status, f"{refusal.tag}: {refusal.reason}", refusal.tag)
        return self._store(identity, str(element_value(dataset, "Modality", "") or ""), data,
                           source, host)

    def _store(self, identity: dict[str, str], modality: str, data: bytes | Part10, source: str,
               host: str | None) -> Outcome:
        sop_uid = identity["SOPInstanceUID"]
        stored = self._index.instances.get(sop_uid)
        if stored is not None:
            return self._again(stored, identity, data, source)
        target = spool_path(self._spool_dir, identity["StudyInstanceUID"],
                            identity["SeriesInstanceUID"], sop_uid)
        digest = _hashers.submit(content_sha256, data)  # hashed while it is written
        refused = self._write(target, data, sop_uid)
        if refused is not None:
            return refused
        row = InstanceRow(sop_uid, identity["SOPClassUID"], identity["StudyInstanceUID"],
                          identity["SeriesInstanceUID"], str(target), len(data), source, host,
                          digest.result())
        self._index.instances.add(row, modality)
        if log.isEnabledFor(logging.DEBUG):  # (the fields are not built for nothing)
            log.debug("instance stored", extra=fields(
                sop_instance_uid=sop_uid, series_uid=row.series_uid, modality=modality,
                source=source, host=host, bytes=row.size))
        return Outcome(SUCCESS)

    def _again(self, stored: InstanceRow, identity: dict[str, str], data: bytes | Part10,
               source: str) -> Outcome:
        """An instance already indexed (``stored``) arrives again: success, stored once. Its
        spool copy is checked (``node.state.spool.spool_damage``); a damaged one is replaced by
        ``data`` and its series routed again (``Index.instances.replace_file``), unless ``data``
        names another study or series than the row (then it is no copy of the same file: the row
        stays as it is, with a warning). A replacement the disk refuses is answered as a new
        instance's would be (0xA700, :meth:`_write`), so the sender may try again."""
        sop_uid = stored.sop_instance_uid
        damage = spool_damage(stored)
        if damage is None:
            log.debug("duplicate instance ignored", extra=fields(
                sop_instance_uid=sop_uid, source=source))
            return Outcome(SUCCESS)
        if (identity["StudyInstanceUID"], identity["SeriesInstanceUID"]) != (
                stored.study_uid, stored.series_uid):
            log.warning("damaged spool copy not replaced: the instance arrives in another series",
                        extra=fields(sop_instance_uid=sop_uid, series_uid=stored.series_uid,
                                     arriving_series_uid=identity["SeriesInstanceUID"],
                                     damage=damage, source=source))
            return Outcome(SUCCESS)
        refused = self._write(Path(stored.path), data, sop_uid)
        if refused is not None:
            return refused
        self._index.instances.replace_file(sop_uid, len(data), content_sha256(data))
        log.warning("damaged spool copy replaced", extra=fields(
            sop_instance_uid=sop_uid, series_uid=stored.series_uid, damage=damage,
            source=source, bytes=len(data)))
        return Outcome(SUCCESS)

    def _write(self, target: Path, data: bytes | Part10, sop_uid: str) -> Outcome | None:
        """Write ``data`` durably to ``target`` (``node.state.spool.write_durably``); None when
        written, else the answer for the sender: 0xA700 (PS3.4 B.2.3, Out of Resources) when
        free disk is below ``min_free_bytes`` (nothing written) or the write fails."""
        free = shutil.disk_usage(self._spool_dir).free
        if free < self._config.min_free_bytes:
            log.error("disk below floor: store refused", extra=fields(
                sop_instance_uid=sop_uid, free_bytes=free,
                min_free_bytes=self._config.min_free_bytes))
            return Outcome(OUT_OF_RESOURCES, f"free disk {free // 2**20} MiB below the floor")
        try:
            write_durably(target, *(data.chunks if isinstance(data, Part10) else (data,)),
                          direct=self._config.spool_direct_io)
        except OSError as exc:
            log.error("spool write failed", extra=fields(sop_instance_uid=sop_uid,
                                                         error=exc.strerror))
            return Outcome(OUT_OF_RESOURCES, f"spool write failed: {exc.strerror}")
        return None
