"""Benchmark: peak resident memory of one job on a 600-slice CT with ten lesions (ct-liver-crlm).

The CT is the synthetic liver phantom (``demo.synthetic``) with 600 slices of 512 x 512; a
BINARY SEG with ten spherical lesions along the liver is written beside it with highdicom. The
job runs as the node runs it: ``node.flow.executor.run_local_job`` in a spawned worker process
(``node.flow.executor.LocalExecutor``: its ``LocalRunner`` has the report, derived SEG and summary
image written by a forked child while the maps are computed), while a thread
samples the resident memory of this process (the node's role: it only submits) and of every
process below it (``bench.ingest.PeakMemory``, every 50 ms). Issue 8 asks for 4 GiB at
most, node and workers together.

    python bench/memory.py            # 600 x 512 x 512, ten lesions
    python bench/memory.py --small    # 40 x 128 x 128, ten small lesions
    python bench/memory.py --small --preset ct-liver-basic    # CI smoke run, seconds
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import PeakMemory
from demo.synthetic import write_synthetic_study
from node.flow.executor import run_local_job
from pipelines.study import one_series

PRESET = "ct-liver-crlm"
LIMIT = 4 * 2**30


def ten_lesion_seg(ct_paths: list[Path], out: Path, radius_mm: float) -> None:
    """A BINARY SEG of ten spheres of ``radius_mm`` spaced along the liver's long axis."""
    datasets = [pydicom.dcmread(p) for p in ct_paths]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    first = datasets[0]
    spacing = float(first.PixelSpacing[0])
    x0, y0 = (float(v) for v in first.ImagePositionPatient[:2])
    xs = x0 + spacing * np.arange(first.Columns)
    ys = y0 + spacing * np.arange(first.Rows)
    half = np.array([xs[-1], ys[-1], z[-1]])
    labels = np.zeros((len(datasets), first.Rows, first.Columns), np.uint8)
    centre_x, centre_y = -0.30 * half[0], -0.05 * half[1]
    for number, fz in enumerate(np.linspace(-0.7, 0.7, 10), start=1):
        cz = fz * 0.9 * half[2]
        near = np.flatnonzero(np.abs(z - cz) <= radius_mm)
        inside = ((xs[None, :] - centre_x) ** 2 + (ys[:, None] - centre_y) ** 2)[None] \
            + ((z[near] - cz) ** 2)[:, None, None] <= radius_mm**2
        labels[near] = np.where(inside, number, labels[near])
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=f"Lesion {n}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=pydicom.uid.generate_uid(), tracking_id=f"Lesion {n}")
        for n in range(1, 11)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=pydicom.uid.generate_uid(),
        series_number=100, sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
        manufacturer="radiomics-node", manufacturer_model_name="bench/memory.py",
        software_versions="bench", device_serial_number="BENCH")
    seg.save_as(out, enforce_file_format=True)


def write_case(out: Path, shape: tuple[int, int, int], radius: float) -> tuple[list[str], str]:
    """The CT and its ten-lesion SEG (run in its own process so that building them does not
    count as the node's memory); their paths."""
    study = write_synthetic_study(out / "study", shape=shape)
    seg = out / "seg10.dcm"
    ten_lesion_seg(list(study.ct_paths), seg, radius)
    return [str(p) for p in study.ct_paths], str(seg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="40 x 128 x 128 (CI smoke run)")
    parser.add_argument("--preset", default=PRESET, help=f"preset (default {PRESET})")
    args = parser.parse_args(argv)
    shape, radius = ((40, 128, 128), 6.0) if args.small else ((600, 512, 512), 12.0)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            ct_paths, seg = pool.submit(write_case, Path(tmp), shape, radius).result()
        with PeakMemory(multiprocessing.current_process().pid) as memory, \
                ProcessPoolExecutor(1, mp_context=context) as pool:
            start = time.perf_counter()
            result = pool.submit(run_local_job, one_series(ct_paths, seg, args.preset),
                                 str(Path(tmp) / "out")).result()
            elapsed = time.perf_counter() - start
    lesions = len({lesion.segment_number for lesion in result.lesions})
    print(f"{args.preset}: {shape[0]} x {shape[1]} x {shape[2]} CT, {lesions} lesions, "
          f"{len(result.lesions)} ROIs, {len(result.objects)} result objects, {elapsed:.0f} s")
    print(f"peak resident memory node + worker: {memory.peak / 2**20:.0f} MiB "
          f"(limit {LIMIT / 2**20:.0f} MiB)")
    return 0 if lesions == 10 and memory.peak <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
