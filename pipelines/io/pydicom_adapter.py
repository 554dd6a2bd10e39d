"""The node's reach past pydicom 3.0's public API (docs/dependencies.md), in one module: two names
that have no public equivalent for what the callers need.

* ``pydicom.filereader._read_file_meta_info``: the File Meta Information (PS3.10 7.1) read from
  an open stream positioned after the preamble; the public ``read_file_meta_info`` takes a path
  and would make the receiver write each instance to disk before checking it.
* ``Dataset._character_set``: the character set a dataset's text is in, its own Specific
  Character Set or, for a nested item without one, its parent's (PS3.5 6.1).
"""

from __future__ import annotations

from typing import BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info


def read_file_meta_info(stream: BinaryIO) -> FileMetaDataset:
    """The File Meta Information group read from ``stream``, positioned at its first element."""
    return _read_file_meta_info(stream)


def character_set(dataset: Dataset) -> str | list[str]:
    """The Python encodings of ``dataset``'s text (its own or its parent's character set)."""
    return dataset._character_set
