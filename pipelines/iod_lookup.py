"""highdicom's look-up of an attribute in an IOD, memoised.

Building a derived object, highdicom asks of every source image whether its IOD is a
multi-frame one (``highdicom._standard_utils.is_multiframe_image``; PS3.3 A.1.4: whether the
IOD has the Multi-frame module), and the SR encoder asks the same of each referenced image. It
answers by walking every attribute of every module of the IOD in its tables of PS3.3
(``is_attribute_in_iod``): 0.5 ms a source image, about half of the 0.1 s that encoding one
Parametric Map of the 60-slice demo series takes, and that encoding of the last feature
class's maps is on the job's path (docs/history/performance.md, "End to end",
tenth round). The answer depends
only on the attribute, the SOP class and the excluded path elements, and the tables do not
change while a process runs, so :func:`memoise` puts a cached look-up in the places highdicom
0.28 (the versions ``pyproject.toml`` allows) calls it from. Nothing else changes: the cached
look-up returns what highdicom's does (``tests/unit/test_iod_lookup.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import highdicom._standard_utils
import highdicom.base
import highdicom.sr.content

# the modules that call the look-up: _standard_utils itself (is_multiframe_image,
# does_iod_have_pixel_data) and those that import it by name
CALLERS = (highdicom._standard_utils, highdicom.base, highdicom.sr.content)
UNCACHED: Callable[..., bool] = highdicom._standard_utils.is_attribute_in_iod


@functools.cache
def _cached(attribute: str, sop_class_uid: str, exclude: tuple[str, ...] | None) -> bool:
    return UNCACHED(attribute, sop_class_uid, exclude)


def is_attribute_in_iod(attribute: str, sop_class_uid: str,
                        exclude_path_elements: Sequence[str] | None = None) -> bool:
    """highdicom's ``is_attribute_in_iod``, answered once for each set of arguments."""
    return _cached(attribute, str(sop_class_uid),
                   None if exclude_path_elements is None else tuple(exclude_path_elements))


def memoise() -> None:
    """Have highdicom use :func:`is_attribute_in_iod` (module docstring); once is enough."""
    for module in CALLERS:
        module.is_attribute_in_iod = is_attribute_in_iod
