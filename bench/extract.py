"""Benchmark: ct-liver-crlm on a synthetic 3-lesion CT, plain pyradiomics vs the pipeline.

Plain: one ``RadiomicsFeatureExtractor.execute`` per ROI (3 lesions x 4 ROI variants) on the whole
image with that ROI's full-size mask, serially, as a user of pyradiomics would. Pipeline:
``pipelines.science.features.features_plan`` on the same ROIs (cropped resampling onto pyradiomics'
exact grid, filtered images shared per window, lesions in ``--workers`` processes). Each way runs in
a fresh process so its peak resident memory (VmHWM reset after the synthetic case is built, and
getrusage of its worker processes) is its own. Also shown: how far a naive crop (crop the source
around the lesion, then let pyradiomics resample it) moves the features, which is why the
pipeline keeps pyradiomics' grid.

    python bench/extract.py            # 512 x 512 x 120 CT, as in issue 4
    python bench/extract.py --small    # CI smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.io.segmentation import Segment
from pipelines.plan import run_tasks
from pipelines.science.features import extract_features, extract_lesions, features_plan
from pipelines.science.presets import load_preset
from pipelines.science.rois import RoiMask, build_variants, on_full_grid

PRESET = "ct-liver-crlm"
# (centre as fractions of the half field of view, radius in mm, mean HU, texture SD in HU)
LESIONS = (((-0.45, 0.05, 0.1), 15.0, 40.0, 15.0), ((-0.25, -0.25, -0.2), 10.0, 85.0, 6.0),
           ((-0.55, -0.2, 0.3), 7.0, 30.0, 10.0))


def phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 0
            ) -> tuple[sitk.Image, list[Segment]]:
    """A portal-venous-like CT (body fat/soft tissue, textured liver) with three spherical
    lesions, as a SimpleITK image (HU, float32) and one Segment per lesion."""
    from pydicom.sr.codedict import codes

    rng = np.random.default_rng(seed)
    z, y, x = (
        (np.arange(n) - (n - 1) / 2) * h
        for n, h in zip(shape, (spacing[2], spacing[1], spacing[0]), strict=True)
    )
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    half = np.array([x[-1], y[-1], z[-1]])
    body = (xx / (0.9 * half[0])) ** 2 + (yy / (0.7 * half[1])) ** 2 <= 1
    hu = np.where(body, -100.0, -1000.0).astype(np.float32) * np.ones((shape[0], 1, 1), np.float32)
    liver = (((xx + 0.35 * half[0]) / (0.45 * half[0])) ** 2 + (yy / (0.5 * half[1])) ** 2
             + (zz / (0.95 * half[2])) ** 2) <= 1
    noise = sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32)), 1.0)
    hu[liver] = 100.0 + 15.0 * sitk.GetArrayFromImage(noise)[liver] / 0.2
    segments = []
    for number, (centre, radius, mean, sd) in enumerate(LESIONS, start=1):
        cx, cy, cz = (f * h for f, h in zip(centre, half, strict=True))
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2 <= radius**2
        hu[inside] = mean + sd * rng.standard_normal(int(inside.sum()))
        mask = sitk.GetImageFromArray(inside.astype(np.uint8))
        mask.SetSpacing(spacing)
        segments.append(Segment(number, f"Lesion {number}", mask, codes.SCT.Neoplasm,
                                codes.SCT.Neoplasm, "MANUAL"))
    hu += rng.normal(0, 8, hu.shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    return image, segments


_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _reset_peak() -> None:
    """Reset this process's peak resident set (Linux: writing 5 to clear_refs resets VmHWM), so
    that building the synthetic case does not count as extraction memory."""
    if _CLEAR_REFS.exists():
        _CLEAR_REFS.write_text("5")


def _peak_mib() -> float:
    """Peak resident memory since _reset_peak of this process or of any worker it started."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if _STATUS.exists():
        hwm = [line for line in _STATUS.read_text().splitlines() if line.startswith("VmHWM:")]
        own = int(hwm[0].split()[1]) if hwm else own
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _case(small: bool) -> tuple[sitk.Image, list[list[RoiMask]]]:
    shape, spacing = ((40, 160, 160), (0.8, 0.8, 2.5)) if small else (
        (120, 512, 512), (0.78, 0.78, 2.0))
    image, segments = phantom(shape, spacing)
    preset = load_preset(PRESET)
    rois = [build_variants(image, s, preset.rois.variants, preset.rois.hu_ranges)
            for s in segments]
    return image, rois


def run_plain(small: bool) -> tuple[float, float, list[dict[str, dict[str, float]]]]:
    """Every ROI through plain pyradiomics; (seconds, peak MiB, values)."""
    image, lesions = _case(small)
    preset = load_preset(PRESET)
    _reset_peak()
    start = time.perf_counter()
    values = [{roi.name: extract_features(image, on_full_grid(roi, image), preset).values
               for roi in rois} for rois in lesions]
    return time.perf_counter() - start, _peak_mib(), values


def run_pipeline(small: bool, workers: int
                 ) -> tuple[float, float, list[dict[str, dict[str, float]]]]:
    """Every ROI through the pipeline's feature plan (``features_plan``); (seconds, peak MiB,
    values)."""
    image, lesions = _case(small)
    preset = load_preset(PRESET)
    _reset_peak()
    start = time.perf_counter()
    if workers > 1:  # the plan's tasks in spawned processes, as a node's task processes run them
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = run_tasks(features_plan(image, lesions, preset), pool.map)
    else:
        result = extract_lesions(image, lesions, preset)
    values = [{name: features.values for name, features in by_name.items()} for by_name in result]
    return time.perf_counter() - start, _peak_mib(), values


def run_naive_crop(small: bool) -> float:
    """Largest relative change of lesion 1's intra features when the source is cropped around
    the lesion (10 voxels of margin) before pyradiomics resamples it."""
    image, lesions = _case(small)
    preset = load_preset(PRESET)
    roi = lesions[0][0]
    full = extract_features(image, on_full_grid(roi, image), preset).values
    index = [max(0, i - 10) for i in roi.index]
    size = [min(n - i, s + 20) for n, i, s in
            zip(image.GetSize(), index, roi.mask.GetSize(), strict=True)]
    cropped = sitk.RegionOfInterest(image, size, index)
    naive = extract_features(cropped, sitk.RegionOfInterest(on_full_grid(roi, image), size, index),
                             preset).values
    return max(abs(naive[k] / full[k] - 1) for k in full if full[k] != 0)


def _in_fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="small CT for a CI smoke run")
    parser.add_argument("--workers", type=int, default=min(3, os.cpu_count() or 1),
                        help="lesion processes of the pipeline (default: min(3, CPUs))")
    args = parser.parse_args(argv)

    plain_s, plain_mib, plain = _in_fresh_process(run_plain, args.small)
    pipe_s, pipe_mib, pipe = _in_fresh_process(run_pipeline, args.small, args.workers)
    naive = _in_fresh_process(run_naive_crop, args.small)
    worst = 0.0
    for expected, got in zip(plain, pipe, strict=True):
        for name, values in expected.items():
            for key, want in values.items():
                have = got[name][key]
                worst = max(worst, abs(have - want) if want == 0 else abs(have / want - 1))
    rois = sum(len(v) for v in plain)
    features = len(next(iter(plain[0].values())))
    print(f"{PRESET}: {len(plain)} lesions, {rois} ROIs, {features} features per ROI"
          f"{' (--small)' if args.small else ''}")
    print(f"plain pyradiomics per ROI : {plain_s:8.1f} s   peak {plain_mib:7.0f} MiB")
    print(f"pipeline ({args.workers} workers)     : {pipe_s:8.1f} s   peak {pipe_mib:7.0f} MiB")
    print(f"speed-up                  : {plain_s / pipe_s:8.2f} x")
    print(f"largest relative difference pipeline vs plain: {worst:.2e}")
    print(f"naive crop before resampling moves a feature by up to {100 * naive:.0f} %")
    return 0 if worst < 1e-6 and math.isfinite(plain_s / pipe_s) else 1


if __name__ == "__main__":
    sys.exit(main())
