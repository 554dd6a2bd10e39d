"""Who made a result object: the name and version that every object the node writes carries in
its Manufacturer (0008,0070), Software Versions (0018,1020), Algorithm Identification and
Contributing Equipment."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pydicom.dataset import Dataset

ALGORITHM_NAME = "radiomics-node"
MANUFACTURER = "radiomics-node"


def software_version() -> str:
    """Installed version of the radiomics-node distribution; 0.1.0 when run from a checkout."""
    try:
        return version("radiomics-node")
    except PackageNotFoundError:
        return "0.1.0"


LIBRARIES = ("pyradiomics-bhklab", "highdicom", "pydicom", "SimpleITK", "numpy", "scikit-learn")
"""The libraries whose versions decide a result's values or encoding."""


def library_versions() -> list[str]:
    """``"<distribution> <version>"`` of radiomics-node and each of LIBRARIES installed."""
    found = [f"radiomics-node {software_version()}"]
    for name in LIBRARIES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    return found


def contributing_equipment(description: str) -> Dataset:
    """A Contributing Equipment Sequence (0018,A001) item (PS3.3 C.7.5.1, General Equipment)
    naming radiomics-node as Processing Equipment (DCM 109102, CID 7005) with the versions of the
    software and libraries that made the object."""
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = ALGORITHM_NAME
    item.SoftwareVersions = library_versions()
    item.ContributionDescription = description[:1024]
    purpose = Dataset()
    purpose.CodeValue = "109102"
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = "Processing Equipment"
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item
