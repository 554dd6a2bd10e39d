"""Benchmark: parametric maps of a preset (default ct-liver-crlm) on the synthetic liver CT.

For each lesion: the mapped region on the source grid, the voxels pyradiomics evaluated on its
grid (per feature), the wall time of ``pipelines.outputs.parametric_map.compute_lesion_maps`` (all
the preset's map features) and the voxels per second; then the time to encode the Parametric Maps.
Serial, one process; the first lesion's time includes no warm-up (pyradiomics is imported before).

    python bench/maps.py                       # 512 x 512 x 60 CT, 0.8 x 0.8 x 2.5 mm
    python bench/maps.py --shape 20x96x96      # smoke run, a second
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.synthetic import write_synthetic_study
from pipelines.io.segmentation import read_segmentation
from pipelines.io.series import read_series
from pipelines.outputs.parametric_map import build_parametric_maps, compute_lesion_maps
from pipelines.science.presets import load_preset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ct-liver-crlm")
    parser.add_argument("--shape", default="60x512x512", help="slices x rows x columns")
    args = parser.parse_args(argv)
    shape = tuple(int(n) for n in args.shape.split("x"))
    preset = load_preset(args.preset)
    if not preset.maps.enabled:
        parser.error(f"preset {preset.name} has maps disabled")
    with tempfile.TemporaryDirectory() as folder:
        study = write_synthetic_study(Path(folder), shape=shape)  # type: ignore[arg-type]
        volume = read_series(list(study.ct_paths))
        seg = read_segmentation(study.seg_path, volume)
        print(f"{preset.name}: maps {', '.join(preset.maps.features)}, kernel radius "
              f"{preset.maps.kernel_radius}, margin {preset.maps.margin_mm:g} mm; CT "
              f"{args.shape}, spacing {volume.image.GetSpacing()}")
        maps = []
        for lesion in seg.segments:
            start = time.perf_counter()
            lesion_maps = compute_lesion_maps(volume.image, lesion, preset)
            seconds = time.perf_counter() - start
            size = next(iter(lesion_maps.maps.values())).GetSize()
            print(f"{lesion.label}: region {size[0]}x{size[1]}x{size[2]} source voxels, "
                  f"{lesion_maps.computed_voxels} voxels on pyradiomics' grid, {seconds:.2f} s, "
                  f"{lesion_maps.computed_voxels / seconds:.0f} voxels/s")
            maps.append(lesion_maps)
        start = time.perf_counter()
        objects = build_parametric_maps(volume, maps, preset,
                                        seg_sop_instance_uid=seg.sop_instance_uid)
        print(f"encoding {len(objects)} Parametric Maps of {objects[0].NumberOfFrames} frames: "
              f"{time.perf_counter() - start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
