"""The node's one reach past pyradiomics' public API (docs/dependencies.md): what
``pyradiomics-bhklab`` 3.1 (pinned ``>=3.1.4,<3.2``) offers no public way to do.

* ``RadiomicsFeatureExtractor._setTolerance``: what the constructor does after validating its
  parameters, called on a copy of an extractor validated once (``pipelines.science.features``).
* ``RadiomicsFeatureExtractor._getDefaultSettings``: the settings an extractor starts from, for
  a window extracted without an extractor's own preprocessing (``pipelines.science.features``).
* ``RadiomicsFeaturesBase._applyBinning``: the discretisation every feature class applies to its
  image, overridden in a subclass for IBSI 1's grey levels (``pipelines.science.ibsi``).
* How ``RadiomicsFeaturesBase._calculateVoxels`` works in voxel-based extraction: runs of
  ``voxelBatch`` voxels of ``labelledVoxelCoordinates``, in order, each computed on its own
  voxels' kernels over the same discretised image, so that a run of them can be computed alone
  (:func:`keep_voxel_batches`; ``pipelines.outputs.parametric_map`` splits a lesion's maps so).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from radiomics.base import RadiomicsFeaturesBase
from radiomics.featureextractor import RadiomicsFeatureExtractor


def set_tolerance(extractor: RadiomicsFeatureExtractor) -> None:
    """Set SimpleITK's geometry tolerance from the extractor's settings, as its constructor
    does."""
    extractor._setTolerance()


def default_settings() -> dict[str, Any]:
    """The settings a new extractor starts from, before a parameter file's or a caller's."""
    return RadiomicsFeatureExtractor._getDefaultSettings()  # type: ignore[no-any-return]


def keep_voxel_batches(feature_class: RadiomicsFeaturesBase, part: tuple[int, int]) -> None:
    """Narrow ``feature_class`` (made for voxel-based extraction, not yet executed) to part
    ``k`` of ``n`` (``part``) of its voxel batches, so that ``execute`` maps only their voxels
    and leaves the others at ``initValue``; every part's batches are the batches of the whole
    extraction, so the parts together give its maps (module docstring)."""
    number, parts = part
    voxels = feature_class.labelledVoxelCoordinates
    batch = feature_class.settings.get("voxelBatch", -1)
    batch = batch if batch > 0 else max(voxels.shape[1], 1)
    batches = -(-voxels.shape[1] // batch)
    first, last = batches * number // parts, batches * (number + 1) // parts
    feature_class.labelledVoxelCoordinates = voxels[:, first * batch:last * batch]


def with_binning(feature_class: type[RadiomicsFeaturesBase],
                 apply_binning: Callable[[RadiomicsFeaturesBase, np.ndarray], np.ndarray],
                 ) -> type[RadiomicsFeaturesBase]:
    """A subclass of ``feature_class`` (same name) whose discretisation of an image array is
    ``apply_binning(self, array)``, returning the grey level of each voxel (pyradiomics'
    ``_applyBinning`` contract: it also sets ``self.coefficients["grayLevels"]`` and
    ``["Ng"]``)."""
    return type(feature_class.__name__, (feature_class,), {"_applyBinning": apply_binning})
