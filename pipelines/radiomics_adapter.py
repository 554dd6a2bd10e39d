"""The node's one reach past pyradiomics' public API (docs/dependencies.md): two names of
``pyradiomics-bhklab`` 3.1 (pinned ``>=3.1.4,<3.2``) that have no public equivalent.

* ``RadiomicsFeatureExtractor._setTolerance``: what the constructor does after validating its
  parameters, called on a copy of an extractor validated once (``pipelines.features``).
* ``RadiomicsFeaturesBase._applyBinning``: the discretisation every feature class applies to its
  image, overridden in a subclass for IBSI 1's grey levels (``pipelines.ibsi``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from radiomics.base import RadiomicsFeaturesBase
from radiomics.featureextractor import RadiomicsFeatureExtractor


def set_tolerance(extractor: RadiomicsFeatureExtractor) -> None:
    """Set SimpleITK's geometry tolerance from the extractor's settings, as its constructor
    does."""
    extractor._setTolerance()


def with_binning(feature_class: type[RadiomicsFeaturesBase],
                 apply_binning: Callable[[RadiomicsFeaturesBase, np.ndarray], np.ndarray],
                 ) -> type[RadiomicsFeaturesBase]:
    """A subclass of ``feature_class`` (same name) whose discretisation of an image array is
    ``apply_binning(self, array)``, returning the grey level of each voxel (pyradiomics'
    ``_applyBinning`` contract: it also sets ``self.coefficients["grayLevels"]`` and
    ``["Ng"]``)."""
    return type(feature_class.__name__, (feature_class,), {"_applyBinning": apply_binning})
