"""The memoised IOD look-up (``pipelines.iod_lookup``) answers as highdicom's own and is the one
highdicom calls once it is installed."""

import highdicom._standard_utils
import highdicom.base
import highdicom.sr.content
import pytest
from pydicom import Dataset
from pydicom.uid import CTImageStorage, SegmentationStorage

from pipelines import iod_lookup

ATTRIBUTES = ("PixelData", "FloatPixelData", "NumberOfFrames", "ContentDate", "ContentTime",
              "PerFrameFunctionalGroupsSequence", "SegmentSequence", "NoSuchKeyword")


@pytest.mark.parametrize("exclude", [None, ["IconImageSequence"]])
def test_every_sop_class_gets_highdicoms_answer(exclude: list[str] | None) -> None:
    answered = 0
    for sop_class_uid in highdicom._standard_utils.get_sop_class_iod_map():
        for attribute in ATTRIBUTES:
            try:
                expected = iod_lookup.UNCACHED(attribute, sop_class_uid, exclude)
            except KeyError:  # a few IODs name a module highdicom's tables lack
                with pytest.raises(KeyError):
                    iod_lookup.is_attribute_in_iod(attribute, sop_class_uid, exclude)
                continue
            for _ in range(2):  # computed, then from the cache
                assert iod_lookup.is_attribute_in_iod(attribute, sop_class_uid,
                                                      exclude) is expected
            answered += 1
    assert answered > 1000


def test_an_unknown_sop_class_raises_as_highdicom_does() -> None:
    with pytest.raises(KeyError, match="No IOD found"):
        iod_lookup.is_attribute_in_iod("PixelData", "1.2.3.4")


def test_memoise_installs_it_where_highdicom_calls_it() -> None:
    iod_lookup.memoise()
    for module in (highdicom._standard_utils, highdicom.base, highdicom.sr.content):
        assert module.is_attribute_in_iod is iod_lookup.is_attribute_in_iod
    is_multiframe = highdicom._standard_utils.is_multiframe_image
    single, multi = Dataset(), Dataset()
    single.SOPClassUID, multi.SOPClassUID = CTImageStorage, SegmentationStorage
    assert (is_multiframe(single), is_multiframe(multi)) == (False, True)
