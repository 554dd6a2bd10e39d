"""A synthetic cohort of liver lesions whose texture and peritumoral ring depend on a latent
outcome, from two simulated sites, for the demonstration model (issue 6, "The model that ships").

No clinical data is available to the project, so the shipped model is trained on lesions made
here. Each case is a small CT volume of liver parenchyma with one lesion; a latent risk ``z``
(standard normal) shapes it:

* the lesion is more heterogeneous and coarser-textured with higher ``z`` (texture SD
  ``12 + 5 z`` HU, smoothing ``1.5 + 0.5 z`` mm, clipped);
* a 3 mm peritumoral rim (a stand-in for the growth pattern at the tumour-liver interface)
  is brighter with higher ``z`` (``+12 z`` HU over the liver);
* the lesion is larger with higher ``z`` (radius ``9 + 1.5 z`` mm, clipped to 5..15 mm).

Time to recurrence is exponential with hazard ``ln 2 / 24 * exp(1.2 z)`` per month (median
24 months at ``z = 0``), censored uniformly between 24 and 60 months; the binary outcome is
recurrence within 24 months (never censored before 24, so always known).

Sites differ like two scanners: site A reconstructs 2.5 mm slices of 0.8 mm pixels with a
smooth kernel (``STANDARD``: image blurred by a 0.6 mm Gaussian, noise of 9 HU SD correlated over
0.3 mm); site B 2 mm slices of 0.75 mm pixels with a sharper kernel (``B40f``: 0.5 mm blur, 10 HU
noise). A larger gap (site A at 0.8 mm and 8 HU, site B at 0.4 mm and 14 HU) shifts the
high-frequency wavelet features by tens of site-A standard deviations, and a site-A model then
calls every site-B lesion high risk: the kernel dependence of texture features that
multi-site radiomics studies report. Features are extracted by
the pipeline's own code (``pipelines.science.rois.build_variants`` and
``pipelines.science.features.features_plan``) with a preset, exactly as a job does
(``pipelines.process.job_plan``).
A second table re-extracts a subset of site A with a perturbed contour (axes scaled by
``1 + N(0, 0.05)``, centre moved by ``N(0, 0.5)`` mm), for the ICC stability filter.

Everything derives from the seed: the same arguments write the same tables.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
import yaml
from scipy import ndimage

from pipelines.io.segmentation import Segment
from pipelines.plan import Tasks, run_tasks
from pipelines.science.features import extract_lesions
from pipelines.science.presets import Preset, load_preset
from pipelines.science.rois import build_variants

LIVER_HU = 60.0
LESION_HU = 40.0
_NEOPLASM = hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
_ABNORMAL = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")


@dataclass(frozen=True)
class Site:
    """How one simulated scanner reconstructs: grid, kernel blur and noise."""

    name: str
    pixel_mm: float
    slice_mm: float
    kernel: str
    kernel_blur_mm: float
    noise_hu: float


SITES = (
    Site("A", 0.8, 2.5, "STANDARD", 0.6, 9.0),
    Site("B", 0.75, 2.0, "B40f", 0.5, 10.0),
)
MANUFACTURER = "radiomics-node"
SERIES_DESCRIPTION = "Portal venous (synthetic cohort)"


@dataclass(frozen=True)
class Case:
    """One lesion: its id, site, latent risk, outcome and survival."""

    case_id: str
    site: Site
    seed: int
    z: float
    time_months: float
    event: int
    outcome: int


def _cases(n_a: int, n_b: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cases = []
    for site, count in zip(SITES, (n_a, n_b), strict=True):
        for k in range(count):
            z = float(rng.standard_normal())
            rate = math.log(2) / 24 * math.exp(1.2 * z)
            t = float(rng.exponential(1 / rate))
            censor = float(rng.uniform(24, 60))
            cases.append(Case(f"{site.name}-{k + 1:03d}", site, int(rng.integers(2**31)), z,
                              round(min(t, censor), 2), int(t <= censor), int(t <= 24)))
    return cases


def _phantom(case: Case, perturbed: bool) -> tuple[sitk.Image, sitk.Image]:
    """The CT volume (HU, float32) and lesion mask of a case; ``perturbed`` draws the second
    reader's contour of the same image."""
    rng = np.random.default_rng(case.seed)
    site, z = case.site, case.z
    radius = float(np.clip(9 + 1.5 * z + rng.normal(0, 1.0), 5, 15))
    axes = radius * rng.uniform(0.85, 1.15, 3)
    half = radius * 1.15 + 22  # ring, pyradiomics' padding and a margin
    spacing = np.array([site.slice_mm, site.pixel_mm, site.pixel_mm])  # z, y, x
    shape = tuple(math.ceil(2 * half / s) for s in spacing)
    coords = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*coords, indexing="ij")
    r = np.sqrt((zz / axes[0]) ** 2 + (yy / axes[1]) ** 2 + (xx / axes[2]) ** 2)

    def texture(sd: float, sigma_mm: float) -> np.ndarray:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_mm / spacing)
        return noise * (sd / max(float(noise.std()), 1e-6))

    hu = LIVER_HU + texture(8.0, 2.0)
    rim = (r > 1) & (r * radius <= radius + 3.0)
    hu[rim] += 12.0 * z + texture(6.0, 1.0)[rim]
    inside = r <= 1
    lesion_texture = texture(float(np.clip(12 + 5 * z, 3, 30)),
                             float(np.clip(1.5 + 0.5 * z, 0.5, 3.0)))
    hu[inside] = LESION_HU + rng.normal(0, 3) + lesion_texture[inside]
    hu = ndimage.gaussian_filter(hu, site.kernel_blur_mm / spacing)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 0.5 * site.kernel_blur_mm / spacing)
    hu += noise * (site.noise_hu / float(noise.std()))
    mask = inside
    if perturbed:
        reader = np.random.default_rng(case.seed + 1)
        scaled = axes * (1 + reader.normal(0, 0.05, 3))
        shift = reader.normal(0, 0.5, 3)
        mask = np.sqrt(((zz - shift[0]) / scaled[0]) ** 2 + ((yy - shift[1]) / scaled[1]) ** 2
                       + ((xx - shift[2]) / scaled[2]) ** 2) <= 1
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin(tuple(float(c[0]) for c in coords[::-1]))
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    return image, mask_image


def case_features(case: Case, preset: Preset, perturbed: bool = False) -> dict[str, float]:
    """``"<roi_variant>/<pyradiomics key>"`` -> value for every ROI variant of the case's
    lesion, computed as a job computes them (``pipelines.process.measure``)."""
    image, mask = _phantom(case, perturbed)
    segment = Segment(1, "Lesion", mask, _ABNORMAL, _NEOPLASM, "MANUAL")
    rois = build_variants(image, segment, preset.rois.variants, preset.rois.hu_ranges, None)
    (features,) = extract_lesions(image, [rois], preset, names=[case.case_id])
    return {f"{variant}/{key}": value for variant, roi in features.items()
            for key, value in roi.values.items()}


def _job(args: tuple[Case, Preset, bool]) -> dict[str, float]:
    return case_features(*args)


def _write_table(path: Path, cases: Sequence[Case], rows: Sequence[dict[str, float]],
                 preset: Preset) -> None:
    names = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["case_id", "site", "preset", "preset_hash", *names])
        for case, row in zip(cases, rows, strict=True):
            out.writerow([case.case_id, case.site.name, preset.name, preset.hash,
                          *(repr(row[n]) for n in names)])


def _write_outcomes(path: Path, cases: Sequence[Case], rows: Sequence[dict[str, float]]) -> None:
    diameter = "intra/original_shape_Maximum3DDiameter"
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["case_id", "outcome", "time", "event", "max_lesion_diameter_mm"])
        for case, row in zip(cases, rows, strict=True):
            out.writerow([case.case_id, case.outcome, case.time_months, case.event,
                          repr(row[diameter])])


def domain() -> dict[str, object]:
    """The acquisition domain the two sites cover, as a card's ``domain`` section."""
    return {
        "modality": ["CT"],
        "series_description": "(?i)portal|venous",
        "convolution_kernels": [site.kernel for site in SITES],
        "slice_thickness_mm": {"min": min(s.slice_mm for s in SITES),
                               "max": max(s.slice_mm for s in SITES)},
        "manufacturers": [MANUFACTURER],
        "contrast": True,
    }


def write_cohort(out_dir: str | Path, *, lesions: int = 200, stability_cases: int = 30,
                 preset: str | Preset = "ct-liver-crlm", seed: int = 0) -> dict[str, Path]:
    """:func:`cohort_plan` run in this process, case after case."""
    return run_tasks(cohort_plan(out_dir, lesions=lesions, stability_cases=stability_cases,
                                 preset=preset, seed=seed))


def cohort_plan(out_dir: str | Path, *, lesions: int = 200, stability_cases: int = 30,
                preset: str | Preset = "ct-liver-crlm", seed: int = 0
                ) -> Generator[Tasks[tuple[Case, Preset, bool], dict[str, float]],
                               list[dict[str, float]], dict[str, Path]]:
    """A plan (``pipelines.plan``: one :class:`~pipelines.plan.Tasks` step, a case's features
    per task, run wherever the caller maps it) that writes the cohort to ``out_dir``:
    ``features-site-a.csv``, ``features-site-b.csv``, ``features-site-a-reader2.csv`` (the first
    ``stability_cases`` of site A, perturbed contours), ``outcomes-site-a.csv``,
    ``outcomes-site-b.csv`` and ``domain.yaml``; its result is those paths by name. Site A gets
    60 % of the lesions, site B the rest."""
    preset = load_preset(preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_a = round(lesions * 0.6)
    cases = _cases(n_a, lesions - n_a, seed)
    site_a = [c for c in cases if c.site.name == "A"]
    site_b = [c for c in cases if c.site.name == "B"]
    reader2 = site_a[:stability_cases]
    jobs = [(c, preset, False) for c in cases] + [(c, preset, True) for c in reader2]
    rows = yield Tasks(_job, jobs)
    by_case = dict(zip([c.case_id for c in cases], rows[: len(cases)], strict=True))
    paths = {
        "features_a": out / "features-site-a.csv",
        "features_b": out / "features-site-b.csv",
        "reader2": out / "features-site-a-reader2.csv",
        "outcomes_a": out / "outcomes-site-a.csv",
        "outcomes_b": out / "outcomes-site-b.csv",
        "domain": out / "domain.yaml",
    }
    for cases_of, features_key, outcomes_key in ((site_a, "features_a", "outcomes_a"),
                                                 (site_b, "features_b", "outcomes_b")):
        rows_of = [by_case[c.case_id] for c in cases_of]
        _write_table(paths[features_key], cases_of, rows_of, preset)
        _write_outcomes(paths[outcomes_key], cases_of, rows_of)
    if reader2:
        _write_table(paths["reader2"], reader2, rows[len(cases):], preset)
    else:
        del paths["reader2"]
    paths["domain"].write_text(yaml.safe_dump(domain(), sort_keys=False), encoding="utf-8")
    return paths
