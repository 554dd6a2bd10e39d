"""Attributes that every result object shares with its source study or with the node's other
objects, set the same way by each builder (report, derived SEG, summary image, parametric maps).

* Study: a PACS, a worklist and a viewer's study browser show and match a study by its General
  Study attributes (PS3.3 C.7.2.1); each object the node adds to the study carries the source's
  values, so the study reads the same whichever of its instances a system looks at (dicom3tools'
  ``dcentvfy`` checks exactly this). highdicom copies the whole General Study module into the SR,
  the SEG and the parametric maps but only some of its attributes into a Secondary Capture (no
  Study Description, no Issuer of Accession Number); :func:`copy_study_attributes` makes the
  objects agree whatever the constructor copied.
* Slice Thickness of the Pixel Measures (PS3.3 C.7.6.16.2.1): highdicom copies the source's, which
  a source may leave empty (Type 2 in its Image Plane Module); a derived multi-frame object's is
  then the thickness of its own voxels, the spacing of its frames
  (:func:`fill_unknown_slice_thickness`).
* Content Creator's Name (0070,0084), Type 2 in the Content Identification Macro (PS3.3 C.10.9)
  of the Segmentation (C.8.20.2) and Parametric Map (C.8.32.1) Image Modules: the objects are made
  by the node, with no operator, so the name is the node's (:data:`CONTENT_CREATOR_NAME`). The SR
  document (PS3.3 A.35.13) and the Secondary Capture Image (A.8.1) IODs have no such attribute.
"""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset

from pipelines.outputs.software import ALGORITHM_NAME

STUDY_ATTRIBUTES = (
    "StudyDate",                        # (0008,0020) Type 2
    "StudyTime",                        # (0008,0030) Type 2
    "AccessionNumber",                  # (0008,0050) Type 2
    "IssuerOfAccessionNumberSequence",  # (0008,0051) Type 3: whose Accession Number it is
    "ReferringPhysicianName",           # (0008,0090) Type 2
    "StudyID",                          # (0020,0010) Type 2
    "StudyDescription",                 # (0008,1030) Type 3
)
"""General Study attributes (PS3.3 C.7.2.1) a result object copies from its source."""

CONTENT_CREATOR_NAME = f"{ALGORITHM_NAME}^"
"""Content Creator's Name (0070,0084, PN) of the SEG and the parametric maps: the node's name as
the family name component (PS3.5 6.2.1: the ``^`` delimits it; dciodvfy takes a name without
any delimiter for the retired form), since no person operated it."""


def copy_study_attributes(target: Dataset, source: Dataset) -> None:
    """Set each of :data:`STUDY_ATTRIBUTES` that ``source`` (an instance of the source series)
    holds, empty or not, on ``target`` (a result object in the same study) to a copy of the
    source's element; an attribute the source lacks is left as ``target`` has it (a Type 2
    attribute stays as its constructor wrote it, empty)."""
    for keyword in STUDY_ATTRIBUTES:
        if keyword in source:
            target[keyword] = copy.deepcopy(source[keyword])


def fill_unknown_slice_thickness(target: Dataset, spacing_between_slices: float) -> None:
    """Where ``target``'s shared Pixel Measures (PS3.3 C.7.6.16.2.1) have an empty or absent
    Slice Thickness (0018,0050), set it to ``spacing_between_slices`` (mm), the extent of the
    derived object's own voxels along the normal; a thickness given is left as it is."""
    for shared in target.get("SharedFunctionalGroupsSequence", []):
        for measures in shared.get("PixelMeasuresSequence", []):
            if measures.get("SliceThickness") in (None, ""):
                measures.SliceThickness = float(spacing_between_slices)
