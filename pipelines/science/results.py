"""The features of one ROI, as the result encoders (report, derived SEG, summary) take them."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.io.segmentation import Segment
from pipelines.science.features import RoiFeatures

LABEL_LENGTH = 64  # Segment Label (0062,0005) is LO: 64 characters at most (PS3.5 6.2)


@dataclass(frozen=True)
class RoiResult:
    """Features of one segment, or of a ROI variant derived from it (``roi_variant`` other than
    None and "intra")."""

    segment: Segment
    features: RoiFeatures
    roi_variant: str | None = None

    @property
    def derived(self) -> bool:
        """Whether the ROI is a variant derived from the segment rather than the segment."""
        return self.roi_variant not in (None, "intra")

    @property
    def tracking_identifier(self) -> str:
        """The segment label, or "<label> / <ROI variant>" for a derived ROI, the label cut
        short so that the whole fits the 64 characters of a Segment Label (0062,0005), LO
        (PS3.5 6.2), which the derived SEG gives it too."""
        if not self.derived:
            return self.segment.label
        suffix = f" / {self.roi_variant}"
        return f"{self.segment.label[:max(LABEL_LENGTH - len(suffix), 1)]}{suffix}"
