"""Screenshots of the node's outputs in OHIF Viewer 3.13.2, for docs/outputs.md.

The same run as tests/integration/test_ohif.py (``tests/integration/ohif.py``): the synthetic
demo study through ``job_plan`` (ct-liver-crlm, the shipped model), every object stored in
Debian's Orthanc with its DICOMweb plugin, OHIF's prebuilt bundle served with a same-origin
proxy to it, headless system Chromium driven by Playwright opening each object by its
thumbnail. Writes:

- ``ohif-sr.png``: the reading report's measurements drawn on their slice;
- ``ohif-seg.png``: the derived SEG overlaid on the CT;
- ``ohif-map.png``: the last parametric map the node writes, overlaid on the CT.

A screenshot is written only when OHIF showed its object (the step finished and drew over the
CT); otherwise the script says why and exits with status 1. Each PNG is reduced to a 128-colour
palette (a few hundred kB at most).

    python docs/ohif_screenshots.py                   # writes docs/images/ohif-*.png
    python docs/ohif_screenshots.py --out /tmp/shots  # anywhere else

Needs what the test needs: scripts/setup.sh --system-tools (orthanc, orthanc-dicomweb, chromium,
Playwright) and scripts/ohif.sh (the bundle). Everything it starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration import ohif


def save_small(source: Path, target: Path, colours: int = 128) -> int:
    """Write ``source`` to ``target`` as a palette PNG of ``colours`` colours; its size."""
    image = Image.open(source).convert("RGB").quantize(colors=colours)
    image.save(target, optimize=True)
    return target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    args = parser.parse_args(argv)
    missing = ohif.missing_tools()
    if missing:
        print(f"missing {missing}: run scripts/setup.sh --system-tools and scripts/ohif.sh")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="radiomics-ohif-") as folder:
        workdir = Path(folder)
        outputs = ohif.make_demo_outputs(workdir / "demo")
        observed = ohif.view_demo_outputs(outputs, workdir / "peers", workdir / "shots")
        start = ohif.coloured_pixels(observed["shots"]["start"])
        last_map = f"map-{len(outputs.maps)}"
        status = 0
        for name, step in (("ohif-sr.png", "sr"), ("ohif-seg.png", "seg"),
                           ("ohif-map.png", last_map)):
            drawn = ohif.coloured_pixels(workdir / "shots" / f"{step}-viewport.png")
            failure = observed["failures"].get(step)
            if failure or drawn < start + ohif.DRAWN_PIXELS:
                print(f"{name}: not written, OHIF did not show {step}: "
                      f"{failure or 'nothing drawn over the CT'}")
                status = 1
                continue
            size = save_small(Path(observed["shots"][step]), args.out / name)
            print(f"{name}: {size / 1000:.0f} kB")
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in observed["timings"].items())
        print(f"OHIF {ohif.OHIF_VERSION}: {timings}")
    return status


if __name__ == "__main__":
    sys.exit(main())
