"""The features of one ROI, as the result encoders (report, derived SEG, summary) take them."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.features import RoiFeatures
from pipelines.segmentation import Segment


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
        """The segment label, or "<label> / <ROI variant>" for a derived ROI."""
        return f"{self.segment.label} / {self.roi_variant}" if self.derived else self.segment.label
