"""Who made a result object: the name and version that every object the node writes carries in
its Manufacturer (0008,0070), Software Versions (0018,1020) and Algorithm Identification."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

ALGORITHM_NAME = "radiomics-node"
MANUFACTURER = "radiomics-node"


def software_version() -> str:
    """Installed version of the radiomics-node distribution; 0.1.0 when run from a checkout."""
    try:
        return version("radiomics-node")
    except PackageNotFoundError:
        return "0.1.0"
