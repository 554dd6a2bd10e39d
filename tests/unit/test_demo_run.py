"""``radiomics-node demo --study multiphase``: the three phases of one study sent to a node
started here, measured by a study rule, the table read back with a row per lesion and phase."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from demo.run import run_demo
from tests.conftest import free_port


def test_the_multiphase_demo_measures_every_phase(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(config_path=None, workdir=tmp_path / "work", out_dir=tmp_path / "out",
                    port=free_port(), timeout=900, preset="ct-liver-basic",
                    study="multiphase") == 0
    printed = capsys.readouterr().out
    rows = [line.split()[0:3] for line in printed.splitlines()
            if re.match(r"Lesion \d", line)]
    assert sorted(" ".join(row) for row in rows) == sorted(
        f"Lesion {n} ({phase})" for n in (1, 2) for phase in ("portal_venous", "arterial",
                                                               "delayed"))
    # both reports, the summary image and a derived SEG per registered phase
    assert len(list((tmp_path / "out").glob("radiomics-seg-*.dcm"))) == 2
    assert len(list((tmp_path / "out").glob("radiomics-sr-*.dcm"))) == 2
