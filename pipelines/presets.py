"""Extraction presets: a named, hashed pyradiomics parameter set read from YAML.

A preset fixes everything that decides a feature value (resampling, discretisation, image types,
feature classes), so its hash, written into every output, traces a value back to the settings that
made it (DESIGN.md, "What a pipeline is"). The ``radiomics`` block is a pyradiomics parameter set
(``setting``, ``voxelSetting``, ``imageType``, ``featureClass``) and is validated against
pyradiomics' own parameter schema (``radiomics/schemas/paramSchema.yaml``) when the preset is built.
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
from typing import Any

import pykwalify.core
import pykwalify.errors
import radiomics
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class Preset(BaseModel):
    """A named pyradiomics parameter set; see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str
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
        return value

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the preset: sorted keys, no spaces."""
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
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


def load_preset(name_or_path: str | Path) -> Preset:
    """Load a shipped preset by name (e.g. ``"ct-liver-basic"``) or a preset YAML file by path.

    A ``Path``, or a string ending in ``.yaml``/``.yml`` or containing a path separator, is read
    as a file; any other string is looked up among :func:`shipped_presets`.
    """
    text_path = str(name_or_path)
    is_path = (
        isinstance(name_or_path, Path)
        or text_path.endswith((".yaml", ".yml"))
        or any(sep in text_path for sep in ("/", "\\"))
    )
    if is_path:
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
