"""A received data set in the DICOM File Format (PS3.10 7.1) without copying it: the preamble and
File Meta Information the node writes in front, and the data set's bytes as the sender encoded
them.

pynetdicom's ``Event.encoded_dataset()`` builds the same bytes by encoding a pydicom
``FileMetaDataset`` and joining it with a copy of the data set; on a 512 x 512 CT slice that was
about a tenth of the receiver's CPU time per instance (docs/history/performance.md, "Ingest",
first round). The header
here is encoded directly (explicit VR little endian, PS3.10 Table 7.1-1; byte for byte what
pydicom writes, tests/unit/test_part10.py) and the two parts go to disk with one ``writev``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"
"""The 128-byte preamble and the DICM prefix (PS3.10 7.1)."""


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element with a 16-bit length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    """A string value padded to even length (PS3.5 6.2: UIDs with NUL, other strings with a
    space)."""
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information (group 0002) for one received instance:
    version 00\\01, Media Storage SOP Class and Instance UIDs, Transfer Syntax UID and the
    receiving implementation's class UID and version name (pynetdicom's, as ``Event.file_meta``
    gives; PS3.10 Table 7.1-1)."""
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
        _element(0x0002, 0x0002, b"UI", _text(sop_class_uid, b"\0")),
        _element(0x0002, 0x0003, b"UI", _text(sop_instance_uid, b"\0")),
        _element(0x0002, 0x0010, b"UI", _text(transfer_syntax, b"\0")),
        _element(0x0002, 0x0012, b"UI", _text(PYNETDICOM_IMPLEMENTATION_UID, b"\0")),
        _element(0x0002, 0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
    ))
    length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(body)))
    return PREAMBLE + length + body


@dataclass(frozen=True)
class Part10:
    """A Part 10 file as two buffers: ``header`` (preamble and File Meta Information) and
    ``body`` (the data set as received, encoded in ``transfer_syntax``)."""

    header: bytes
    body: bytes | memoryview
    transfer_syntax: str

    def __len__(self) -> int:
        return len(self.header) + len(self.body)

    def __bytes__(self) -> bytes:
        return self.header + bytes(self.body)

    @property
    def chunks(self) -> tuple[bytes | memoryview, ...]:
        """The buffers in file order, for ``os.writev``."""
        return self.header, self.body
