"""Thresholds of the QC checks, validated by pydantic; docs/qc.md gives each one's source.

Defaults serve portal-venous liver CT radiomics. A threshold set to ``None`` turns its rule off:
the value is still measured and reported with status ``info``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

Range = tuple[float, float]


def _check_range(name: str, value: Range | None) -> None:
    if value is not None and not value[0] < value[1]:
        raise ValueError(f"{name}: lower bound {value[0]} must be below upper bound {value[1]}")


class QCSettings(BaseModel):
    """Every number that decides a QC verdict. See docs/qc.md for the source of each default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Acquisition record
    ct_max_slice_thickness_mm: float | None = Field(default=5.0, gt=0)
    ct_max_pixel_spacing_mm: float | None = Field(default=1.0, gt=0)
    mr_max_slice_thickness_mm: float | None = Field(default=None, gt=0)
    mr_max_pixel_spacing_mm: float | None = Field(default=None, gt=0)
    ct_kvp_range: Range | None = (80.0, 140.0)
    expect_contrast: bool | None = None
    contrast_delay_s: Range | None = None

    # Series integrity
    spacing_tolerance_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    orientation_tolerance: float = Field(default=1e-4, gt=0)
    ct_hu_range: Range = (-1100.0, 4000.0)
    ct_air_max_hu: float | None = -900.0

    # Masks
    min_roi_voxels: int = Field(default=64, ge=1)
    max_components: int = Field(default=1, ge=1)
    fully_connected: bool = True
    grid_tolerance_mm: float = Field(default=1e-3, gt=0)

    # Plausibility of a lesion (not of an organ measured as such)
    max_lesion_volume_ml: float | None = Field(default=3000.0, gt=0)
    ct_lesion_air_below_hu: float = -500.0
    ct_lesion_max_air_fraction: float | None = Field(default=0.2, gt=0, le=1)
    ct_lesion_fat_hu_range: Range = (-190.0, -30.0)
    ct_lesion_max_fat_fraction: float | None = Field(default=0.5, gt=0, le=1)

    # Image: noise, metal, bias field
    noise_ring_mm: Range = (2.0, 10.0)
    ct_tissue_hu_range: Range = (-50.0, 300.0)
    ct_max_noise_hu: float | None = Field(default=25.0, gt=0)
    min_reference_voxels: int = Field(default=100, ge=10)
    metal_hu: float = 2500.0
    metal_distance_mm: float = Field(default=20.0, ge=0)
    metal_min_voxels: int = Field(default=3, ge=1)
    bias_ring_mm: Range = (2.0, 30.0)
    bias_smoothing_mm: float = Field(default=10.0, gt=0)
    mr_min_piu_percent: float | None = Field(default=87.5, gt=0, le=100)
    mr_min_piu_percent_3t: float | None = Field(default=82.0, gt=0, le=100)

    # Feature robustness
    feature_robustness: bool = True
    robustness_max_relative_change: float = Field(default=0.15, gt=0)
    robustness_radius_voxels: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> QCSettings:
        for name in (
            "ct_kvp_range",
            "contrast_delay_s",
            "ct_hu_range",
            "ct_lesion_fat_hu_range",
            "noise_ring_mm",
            "ct_tissue_hu_range",
            "bias_ring_mm",
        ):
            _check_range(name, getattr(self, name))
        for name in ("noise_ring_mm", "bias_ring_mm"):
            if getattr(self, name)[0] < 0:
                raise ValueError(f"{name}: distances must not be negative")
        return self
