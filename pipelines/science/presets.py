"""Extraction presets: a named, hashed recipe read from YAML.

A preset fixes everything that decides a feature value, so its hash, written into every output,
traces a value back to the settings that made it (DESIGN.md, "What a pipeline is"). Sections:

* ``radiomics``: a pyradiomics parameter set (``setting``, ``voxelSetting``, ``imageType``,
  ``featureClass``), validated against pyradiomics' own parameter schema
  (``radiomics/schemas/paramSchema.yaml``) and refused where it would interpolate image intensities
  with nearest neighbour (IBSI 1, section 2.4 "Interpolation": grey levels are interpolated with
  linear or cubic kernels; nearest neighbour is for masks only) or would silently skip resampling.
* ``series``, ``segmentation``: how the reading code treats irregular slice spacing and fractional
  SEG segments (PS3.3 C.8.20.2.3).
* ``preprocessing``: N4 bias field correction (Tustison et al., IEEE TMI 2010) and z-score
  intensity normalisation inside a reference region (IBSI 1, section 2.3 "Image processing"), and
  mask interpolation with a partial-volume threshold (IBSI 1, section 2.4 "mask interpolation").
* ``rois``: ROI variants derived from each lesion (``pipelines.science.rois``), HU ranges that rings
may
  exclude, how to find a liver segment in the SEG, and the largest plausible lesion (a QC limit,
  ``pipelines.science.qc``).
* ``maps``: voxel-wise feature maps around each lesion (``pipelines.outputs.parametric_map``): which
  features, the kernel radius, the margin around the lesion, and whether maps are made at all.

docs/presets.md describes every field; the hash covers all of them, defaults included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import pykwalify.core
import pykwalify.errors
import radiomics
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# pykwalify logs every schema violation at ERROR before raising; the exception raised here carries
# the same text, so keep pykwalify off stderr (it still propagates to the application's handlers).
logging.getLogger("pykwalify").addHandler(logging.NullHandler())

_SCHEMA_PATH = re.compile(r"Path: '([^']*)'")
_RADIOMICS_SECTIONS = ("setting", "voxelSetting", "imageType", "featureClass")


class PresetError(ValueError):
    """A preset that cannot be read or is not a valid pyradiomics parameter set."""


def _check_names(radiomics_params: dict[str, Any]) -> None:
    """Refuse unknown image types, feature classes and feature names, naming the key.

    pyradiomics' schema functions raise the same refusal but without the key path.
    """
    image_types = radiomics.getImageTypes()
    feature_classes = radiomics.getFeatureClasses()
    for image_type in radiomics_params.get("imageType") or {}:
        if image_type not in image_types:
            raise ValueError(
                f"radiomics.imageType.{image_type}: unknown image type; "
                f"known: {sorted(image_types)}"
            )
    for class_name, features in (radiomics_params.get("featureClass") or {}).items():
        if class_name not in feature_classes:
            raise ValueError(
                f"radiomics.featureClass.{class_name}: unknown feature class; "
                f"known: {sorted(feature_classes)}"
            )
        if features is None:
            continue
        if not isinstance(features, list):
            raise ValueError(
                f"radiomics.featureClass.{class_name}: expected a list of feature names or null, "
                f"got {type(features).__name__}"
            )
        unknown = sorted(set(features) - set(feature_classes[class_name].getFeatureNames()))
        if unknown:
            raise ValueError(f"radiomics.featureClass.{class_name}: unknown features {unknown}")


def _check_schema(radiomics_params: dict[str, Any]) -> None:
    """Validate against pyradiomics' pykwalify schema (types and ranges of every setting)."""
    schema_file, schema_funcs = radiomics.getParameterValidationFiles()
    try:
        with warnings.catch_warnings():
            # pykwalify loads pyradiomics' schema functions with the deprecated load_module().
            warnings.simplefilter("ignore", DeprecationWarning)
            core = pykwalify.core.Core(
                source_data=json.loads(json.dumps(radiomics_params)),
                schema_files=[schema_file],
                extensions=[schema_funcs],
            )
            core.validate(raise_exception=True)
    except pykwalify.errors.SchemaError as exc:
        errors = "; ".join(
            _SCHEMA_PATH.sub(
                lambda m: "at radiomics" + m.group(1).replace("/", "."), line.strip(" -")
            ).rstrip(".")
            for line in str(exc.msg).splitlines()[1:]
        )
        raise ValueError(f"pyradiomics parameter schema: {errors}") from None


# Interpolators the pipeline resamples images with, and the source margin (voxels) each needs so
# that a cropped source gives the values of the whole one: linear reads 2 voxels per axis; cubic
# B-spline coefficients come from a recursive filter whose boundary influence decays as
# |z|^d, z = sqrt(3) - 2 (Unser, IEEE Signal Process. Mag. 1999), below 1e-13 after 24 voxels.
IMAGE_INTERPOLATORS = {"sitkLinear": 2, "sitkBSpline": 24}
_NEAREST = ("sitkNearestNeighbor", 1)


def _check_preprocessing_settings(setting: dict[str, Any]) -> None:
    """Refuse nearest-neighbour image interpolation, resampling that pyradiomics would skip, and
    two discretisations at once."""
    interpolator = setting.get("interpolator", "sitkBSpline")
    if interpolator in _NEAREST:
        raise ValueError(
            "radiomics.setting.interpolator: nearest neighbour is refused for images (IBSI 1, "
            "section 2.4: grey levels are interpolated with linear or cubic kernels); use one of "
            f"{sorted(IMAGE_INTERPOLATORS)}"
        )
    spacing = setting.get("resampledPixelSpacing")
    if spacing is not None:
        if interpolator is None:
            raise ValueError(
                "radiomics.setting.interpolator: null while resampledPixelSpacing is set; "
                "pyradiomics would silently not resample"
            )
        if interpolator not in IMAGE_INTERPOLATORS:
            raise ValueError(
                f"radiomics.setting.interpolator: {interpolator!r} is not supported for "
                f"resampling; use one of {sorted(IMAGE_INTERPOLATORS)}"
            )
    if setting.get("binWidth") is not None and setting.get("binCount") is not None:
        raise ValueError(
            "radiomics.setting: binWidth and binCount are both set; pyradiomics would use "
            "binCount only (IBSI 1, section 2.7: choose fixed bin size or fixed bin number)"
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesOptions(_Section):
    """How pipelines.io.series treats a stack whose slices are not equally spaced."""

    irregular_spacing: Literal["refuse", "resample"] = "refuse"


class SegmentationOptions(_Section):
    """How pipelines.io.segmentation turns FRACTIONAL segments into masks (PS3.3 C.8.20.2.3)."""

    fractional_threshold: float = Field(default=0.5, gt=0.0, le=1.0)


class N4Options(_Section):
    """N4 bias field correction (SimpleITK N4BiasFieldCorrectionImageFilter)."""

    shrink_factor: int = Field(default=4, ge=1)
    iterations: tuple[int, ...] = Field(default=(50, 50, 50, 50), min_length=1)


class ZScoreOptions(_Section):
    """Intensity z-score, (I - mean) / SD with mean and SD over the reference region's voxels."""

    reference: Literal["liver", "roi"]


class PreprocessingOptions(_Section):
    """Image and mask preprocessing done by the pipeline before pyradiomics
    (pipelines.science.preprocess).

    ``mask_partial_volume_threshold``: null resamples masks with nearest neighbour, as pyradiomics
    does; a number in (0, 1] resamples them linearly and keeps voxels at or above it (IBSI 1,
    section 2.4, "mask interpolation", partial volume threshold 0.5).
    """

    n4: N4Options | None = None
    zscore: ZScoreOptions | None = None
    mask_partial_volume_threshold: float | None = Field(default=None, gt=0.0, le=1.0)


class CodeRef(_Section):
    """A coded concept by value and coding scheme designator."""

    value: str = Field(min_length=1)
    scheme: str = Field(min_length=1)


class LiverSegmentRule(_Section):
    """A segment is the liver when its Segmented Property Type Code Sequence (0062,000F) is
    ``property_type`` or its Segment Label (0062,0005) matches ``label_regex`` (an RT ROI: its
    RT ROI Identification Code or ROI Name). The liver is the reference region of a liver
    z-score and what rings are clipped to; with ``measure`` it is also measured itself, as drawn
    (whole-liver radiomics: the ``intra`` variant only, since rings around the organ are not
    perilesional tissue)."""

    property_type: CodeRef = CodeRef(value="10200004", scheme="SCT")  # SCT Liver
    label_regex: str | None = r"(?i)^\s*liver\s*$"
    measure: bool = False

    @field_validator("label_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"rois.liver.label_regex: {exc}") from None
        return value


class RoiVariant(_Section):
    """One region derived from a lesion; see pipelines.science.rois for the geometry."""

    kind: Literal["intra", "ring", "intra_ring", "erosion"]
    distance_mm: float | None = Field(default=None, gt=0.0)
    exclude: tuple[str, ...] = ()
    clip_to_liver: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> RoiVariant:
        if self.kind == "intra":
            if self.distance_mm is not None:
                raise ValueError("rois.variants: kind intra takes no distance_mm")
        elif self.distance_mm is None:
            raise ValueError(f"rois.variants: kind {self.kind} needs distance_mm")
        if self.kind not in ("ring", "intra_ring") and (self.exclude or self.clip_to_liver):
            raise ValueError(
                "rois.variants: exclude and clip_to_liver apply to rings; "
                f"kind {self.kind} has none"
            )
        return self

    @property
    def name(self) -> str:
        """Readable, unique name: ``intra``, ``4 mm ring``, ``intra + 4 mm ring``,
        ``eroded 2 mm``, with ``, liver only`` and ``, without air/fat`` when they apply."""
        distance = f"{self.distance_mm or 0:g} mm"
        base = {
            "intra": "intra",
            "ring": f"{distance} ring",
            "intra_ring": f"intra + {distance} ring",
            "erosion": f"eroded {distance}",
        }[self.kind]
        if self.clip_to_liver:
            base += ", liver only"
        if self.exclude:
            base += f", without {'/'.join(self.exclude)}"
        return base


class RoiOptions(_Section):
    """ROI variants of each lesion and what rings may exclude.

    ``max_lesion_volume_ml``: the largest plausible lesion of the preset's organ; a larger lesion
    segment fails quality control (``lesion.volume``, docs/qc.md). Null keeps the node's
    ``QCSettings.max_lesion_volume_ml`` (3 L, for the liver).
    """

    variants: tuple[RoiVariant, ...] = Field(default=(RoiVariant(kind="intra"),), min_length=1)
    hu_ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    liver: LiverSegmentRule = LiverSegmentRule()
    max_lesion_volume_ml: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _consistent(self) -> RoiOptions:
        names = [variant.name for variant in self.variants]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rois.variants: duplicate variants {duplicates}")
        for name, (low, high) in self.hu_ranges.items():
            if low is None and high is None:
                raise ValueError(f"rois.hu_ranges.{name}: give a lower or an upper bound")
            if low is not None and high is not None and low > high:
                raise ValueError(f"rois.hu_ranges.{name}: lower bound {low} above upper {high}")
        for variant in self.variants:
            unknown = sorted(set(variant.exclude) - set(self.hu_ranges))
            if unknown:
                raise ValueError(
                    f"rois.variants: {variant.name}: exclude names {unknown} not in rois.hu_ranges"
                )
        return self


# Texture matrix aggregation (IBSI 1, section 3.6.2 "Aggregating features"): how pyradiomics
# builds each family's matrices. GLCM and GLRLM have per-direction matrices, averaged (avg) or
# merged (mrg) over directions; GLSZM, NGTDM and NGLDM (pyradiomics GLDM) have none. 2.5D: the
# neighbourhood lies in the slice plane (pyradiomics force2D) and the slices are merged; 3D: the
# 26-connected neighbourhood; 2D: each slice's own matrices and features, the features averaged
# over the slices (pipelines.science.ibsi runs the family per slice).
DIRECTIONAL_AGGREGATIONS = ("2D_avg", "2D_s_mrg", "2.5D_d_mrg", "2.5D_v_mrg", "3D_avg", "3D_mrg")
NON_DIRECTIONAL_AGGREGATIONS = ("2D", "2.5D", "3D")
PER_SLICE_AGGREGATIONS = ("2D_avg", "2D_s_mrg", "2D")
_DIRECTIONAL_FAMILIES = ("glcm", "glrlm")
_NON_DIRECTIONAL_FAMILIES = ("glszm", "gldm", "ngtdm")


class IbsiResegmentation(_Section):
    """Re-segmentation of the intensity mask (IBSI 1, section 2.5): the intensity mask keeps the
    ROI's voxels inside the closed ``range`` (a null bound: unbounded) and inside mean +-
    ``outlier_sigma`` x SD (population SD) of the ROI's voxels; either, both or neither. With
    both, mean and SD are those of the whole ROI (the morphological mask), as MIRP, the IBSI
    lead's implementation, combines them. Morphology keeps the morphological mask."""

    range: tuple[float | None, float | None] | None = None
    outlier_sigma: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _bounded(self) -> IbsiResegmentation:
        if self.range is not None:
            low, high = self.range
            if low is None and high is None:
                raise ValueError("ibsi.resegmentation.range: give a lower or an upper bound")
            if low is not None and high is not None and low > high:
                raise ValueError(
                    f"ibsi.resegmentation.range: lower bound {low} above upper {high}"
                )
        return self


class IbsiIvh(_Section):
    """The intensity-volume histogram's discretisation (IBSI 1, sections 2.7 and 3.5; features in
    ``pipelines.science.ivh``): ``none`` (integer intensities, CT), ``fixed_bin_size`` with
    ``bin_width`` counted from the re-segmentation range's lower bound, or ``fixed_bin_number``
    with ``bin_count``."""

    discretisation: Literal["none", "fixed_bin_size", "fixed_bin_number"] = "none"
    bin_width: float | None = Field(default=None, gt=0.0)
    bin_count: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _one_parameter(self) -> IbsiIvh:
        wanted = {"none": None, "fixed_bin_size": "bin_width",
                  "fixed_bin_number": "bin_count"}[self.discretisation]
        for name in ("bin_width", "bin_count"):
            given = getattr(self, name) is not None
            if given != (name == wanted):
                raise ValueError(
                    f"ibsi.ivh.{name}: {'needed' if not given else 'not used'} with "
                    f"discretisation {self.discretisation}"
                )
        return self


class IbsiOptions(_Section):
    """Image processing as IBSI 1 chapter 2 defines it, done by the pipeline
    (pipelines.science.ibsi) where pyradiomics does it differently; the section's presence opts in.

    * with ``radiomics.setting.resampledPixelSpacing``, the image is interpolated once onto a
      grid centred on the original grid (IBSI 1, section 2.4 "Interpolation", grid alignment
      "align grid centres"; pyradiomics aligns the grid on the image origin), with the preset's
      ``interpolator``; masks with ``preprocessing.mask_partial_volume_threshold``.
    * ``round_intensities``: interpolated intensities are rounded to the nearest integer (IBSI 1,
      section 2.4: for modalities with integer values, CT).
    * ``resegmentation``: range and outlier re-segmentation together (IBSI 1, section 2.5),
      instead of pyradiomics' ``resegmentRange`` (one or the other).
    * ``discretisation``: ``ibsi``: grey levels by IBSI 1, section 2.7: fixed bin size from the
      re-segmentation range's lower bound (the ROI's minimum without one), fixed bin number from
      the ROI's minimum to its maximum; the bin width or count is pyradiomics' ``binWidth`` or
      ``binCount``. ``pyradiomics``: pyradiomics' bins (bin width: edges at multiples of the
      width).
    * ``texture_aggregation``: per texture family, how its matrices are aggregated (IBSI 1,
      section 3.6.2); families not named keep pyradiomics' settings (3D, directions averaged,
      unless ``force2D`` or ``weightingNorm`` say otherwise).
    * ``ivh``: the intensity-volume histogram features (IBSI 1, section 3.5) of the original
      image with that discretisation (:class:`IbsiIvh`); none without it.
    """

    round_intensities: bool = False
    resegmentation: IbsiResegmentation = IbsiResegmentation()
    discretisation: Literal["ibsi", "pyradiomics"] = "ibsi"
    texture_aggregation: dict[str, str] = Field(default_factory=dict)
    ivh: IbsiIvh | None = None

    @field_validator("texture_aggregation")
    @classmethod
    def _known_aggregation(cls, value: dict[str, str]) -> dict[str, str]:
        for family, method in value.items():
            if family in _DIRECTIONAL_FAMILIES:
                allowed = DIRECTIONAL_AGGREGATIONS
            elif family in _NON_DIRECTIONAL_FAMILIES:
                allowed = NON_DIRECTIONAL_AGGREGATIONS
            else:
                raise ValueError(
                    f"ibsi.texture_aggregation.{family}: not a texture family; known: "
                    f"{[*_DIRECTIONAL_FAMILIES, *_NON_DIRECTIONAL_FAMILIES]}"
                )
            if method not in allowed:
                raise ValueError(
                    f"ibsi.texture_aggregation.{family}: {method!r}; pyradiomics builds "
                    f"{list(allowed)}"
                )
        return value


# (path in the preset, default) of fields added after presets were pinned by hash
_ADDED_LATER: tuple[tuple[tuple[str, ...], object], ...] = (
    (("rois", "liver", "measure"), False),
    (("rois", "max_lesion_volume_ml"), None),
    (("ibsi",), None),
    (("ibsi", "ivh"), None),
)

_NOT_VOXEL_BASED = ("shape", "shape2D")  # pyradiomics computes shape per ROI only


class MapOptions(_Section):
    """Voxel-wise feature maps (pyradiomics voxel-based extraction,
    ``pipelines.outputs.parametric_map``).

    ``features`` are ``<class>_<feature>`` names such as ``glcm_Contrast``, computed on the
    Original image; ``kernel_radius`` (voxels of the extraction grid) sets the neighbourhood each
    voxel's value describes; ``margin_mm`` the tissue around the lesion's bounding box that is
    mapped too; ``masked_kernel`` whether kernels see only mapped voxels (pyradiomics
    ``maskedKernel``); ``voxel_batch`` how many voxels pyradiomics computes at once (memory).
    """

    enabled: bool = False
    features: tuple[str, ...] = ()
    kernel_radius: int = Field(default=2, ge=1)
    margin_mm: float = Field(default=10.0, ge=0.0)
    masked_kernel: bool = False
    voxel_batch: int = Field(default=1000, ge=1)

    @model_validator(mode="after")
    def _known_features(self) -> MapOptions:
        if self.enabled and not self.features:
            raise ValueError("maps.features: enabled maps need at least one feature")
        classes = radiomics.getFeatureClasses()
        for name in self.features:
            feature_class, _, feature = name.partition("_")
            if feature_class in _NOT_VOXEL_BASED or feature_class not in classes:
                raise ValueError(
                    f"maps.features: {name!r}: expected <class>_<feature> with a class among "
                    f"{sorted(set(classes) - set(_NOT_VOXEL_BASED))}"
                )
            if feature not in classes[feature_class].getFeatureNames():
                raise ValueError(f"maps.features: {name!r}: unknown {feature_class} feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"maps.features: duplicates in {list(self.features)}")
        return self


class Preset(BaseModel):
    """A named extraction recipe; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str
    modality: Literal["CT", "MR"] | None = None
    series: SeriesOptions = SeriesOptions()
    segmentation: SegmentationOptions = SegmentationOptions()
    preprocessing: PreprocessingOptions = PreprocessingOptions()
    rois: RoiOptions = RoiOptions()
    maps: MapOptions = MapOptions()
    ibsi: IbsiOptions | None = None
    radiomics: dict[str, Any]

    @field_validator("radiomics")
    @classmethod
    def _valid_pyradiomics_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(_RADIOMICS_SECTIONS))
        if unknown:
            raise ValueError(
                f"radiomics: unknown sections {unknown}; known: {list(_RADIOMICS_SECTIONS)}"
            )
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"radiomics: not plain JSON-compatible data ({exc})") from None
        _check_names(value)
        _check_schema(value)
        _check_preprocessing_settings(value.get("setting") or {})
        return value

    @model_validator(mode="after")
    def _sections_agree(self) -> Preset:
        if self.modality != "CT" and any(v.exclude for v in self.rois.variants):
            raise ValueError(
                "rois.variants: HU exclusions need modality CT (Hounsfield units, PS3.3 "
                f"C.8.2.1.1.3); modality is {self.modality}"
            )
        setting = self.radiomics.get("setting") or {}
        if self.preprocessing.zscore is not None and setting.get("normalize"):
            raise ValueError(
                "preprocessing.zscore and radiomics.setting.normalize both normalise intensities; "
                "choose one"
            )
        if self.ibsi is not None:
            self._ibsi_agrees(self.ibsi, setting)
        return self

    def _ibsi_agrees(self, ibsi: IbsiOptions, setting: dict[str, Any]) -> None:
        """Refuse IBSI processing together with the pyradiomics settings it replaces."""
        if self.maps.enabled:
            raise ValueError(
                "ibsi: parametric maps are computed by pyradiomics' voxel-based extraction, "
                "without the IBSI processing; disable maps or remove ibsi"
            )
        if ibsi.round_intensities and self.modality != "CT":
            raise ValueError(
                "ibsi.round_intensities: rounding to integers is for integer-valued modalities "
                f"(IBSI 1, section 2.4): needs modality CT; modality is {self.modality}"
            )
        if ibsi.round_intensities and (self.preprocessing.zscore is not None
                                       or setting.get("normalize")):
            raise ValueError(
                "ibsi.round_intensities: normalised intensities are not integer-valued; "
                "remove the normalisation or the rounding"
            )
        reseg = ibsi.resegmentation
        if (reseg.range is not None or reseg.outlier_sigma is not None) and setting.get(
            "resegmentRange"
        ) is not None:
            raise ValueError(
                "ibsi.resegmentation and radiomics.setting.resegmentRange both re-segment; "
                "choose one"
            )
        per_slice = sorted(family for family, method in ibsi.texture_aggregation.items()
                           if method in PER_SLICE_AGGREGATIONS)
        if per_slice and ibsi.discretisation != "ibsi":
            raise ValueError(
                f"ibsi.texture_aggregation: per-slice 2D for {per_slice} needs "
                "ibsi.discretisation ibsi (grey levels of the whole ROI, IBSI 1 section 2.7)"
            )
        if ibsi.texture_aggregation and (
            setting.get("force2D") or setting.get("weightingNorm") is not None
        ):
            raise ValueError(
                "ibsi.texture_aggregation sets each family's force2D and weightingNorm; "
                "leave radiomics.setting.force2D false and weightingNorm null"
            )

    @property
    def settings(self) -> dict[str, Any]:
        """A copy of the pyradiomics ``setting`` block (empty when the preset has none)."""
        return dict(self.radiomics.get("setting") or {})

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the preset: sorted keys, no spaces. A field
        added after presets were pinned by hash (``_ADDED_LATER``) is in it only when set away
        from its default, so that a preset that does not use it keeps its hash (model packages
        and earlier results name it)."""
        dump = self.model_dump()
        for path, default in _ADDED_LATER:
            holder: Any = dump
            for key in path[:-1]:
                holder = holder.get(key) if isinstance(holder, dict) else None
            if isinstance(holder, dict) and path[-1] in holder and holder[path[-1]] == default:
                del holder[path[-1]]
        canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _preset_dir() -> Traversable:
    """The ``presets/`` data folder inside the ``pipelines`` package."""
    return resources.files("pipelines") / "presets"


def shipped_presets() -> list[str]:
    """Names of the presets that ship in ``pipelines/presets/*.yaml``, sorted."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in _preset_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def _preset_from_text(text: str, source: str) -> Preset:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PresetError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{source}: expected a mapping at the top level")
    try:
        return Preset.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            str(err["ctx"]["error"])
            if err["type"] == "value_error"
            else f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise PresetError(f"{source}: {reasons}") from None


def is_preset_file(name_or_path: str | Path) -> bool:
    """Whether :func:`load_preset` reads ``name_or_path`` as a file rather than a shipped
    preset's name: a ``Path``, or a string ending in ``.yaml``/``.yml`` or holding a path
    separator."""
    text = str(name_or_path)
    return (isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml"))
            or any(sep in text for sep in ("/", "\\")))


def load_preset(name_or_path: str | Path | Preset) -> Preset:
    """Load a shipped preset by name (e.g. ``"ct-liver-basic"``) or a preset YAML file by path;
    a Preset already loaded is returned as it is.

    A ``Path``, or a string ending in ``.yaml``/``.yml`` or containing a path separator, is read
    as a file (:func:`is_preset_file`); any other string is looked up among
    :func:`shipped_presets`.
    """
    if isinstance(name_or_path, Preset):
        return name_or_path
    text_path = str(name_or_path)
    if is_preset_file(name_or_path):
        path = Path(name_or_path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PresetError(f"{path}: cannot read preset: {exc.strerror}") from None
        return _preset_from_text(text, str(path))
    if text_path not in shipped_presets():
        raise PresetError(
            f"{text_path}: no shipped preset of that name; shipped: {shipped_presets()}"
        )
    resource = _preset_dir() / f"{text_path}.yaml"
    preset = _preset_from_text(resource.read_text(encoding="utf-8"), f"{resource}")
    if preset.name != text_path:
        raise PresetError(f"{resource}: name {preset.name!r} differs from the file name")
    return preset
