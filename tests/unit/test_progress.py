"""``radiomics-node process`` shows a progress bar on stderr when stderr is a terminal, and
nothing there otherwise; the result lines on stdout are the same either way."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import yaml

from demo.synthetic import write_synthetic_study
from node.cli import main


class Terminal(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("progress")
    write_synthetic_study(root / "study", shape=(6, 48, 48))
    preset = root / "mean.yaml"
    preset.write_text(yaml.safe_dump({
        "name": "mean-only", "description": "first order mean",
        "radiomics": {"setting": {"binWidth": 25}, "imageType": {"Original": {}},
                      "featureClass": {"firstorder": ["Mean"]}}}))
    return root / "study", preset


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(folder: tuple[Path, Path], tmp_path: Path, tty: bool,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    study, preset = folder
    stderr = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(["process", str(study), "--preset", str(preset), "--out",
                 str(tmp_path / "out")]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert "2 ROI(s), 2 values" in line
    if tty:
        assert "processing" in stderr.getvalue() and "1/1" in stderr.getvalue()
    else:
        assert stderr.getvalue() == ""
