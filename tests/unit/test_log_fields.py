"""Log fields are capped: a value a sender controls (a 200 kB Series Description) never makes a
log line longer than ``node.logs.MAX_FIELD_CHARS`` per string."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pydicom
import pytest

from demo.synthetic import write_synthetic_study
from node import logs
from node.config import NodeConfig, SeriesRule
from node.flow.router import Router
from node.logs import MAX_FIELD_CHARS, JsonFormatter, capped, fields
from node.state import Index
from node.state.instances import InstanceRow

HUGE = "A" * 200_000


def test_long_strings_are_cut_and_their_length_noted() -> None:
    cut = f"{'A' * MAX_FIELD_CHARS}... (200000 characters)"
    assert capped(HUGE) == cut
    assert capped("A" * MAX_FIELD_CHARS) == "A" * MAX_FIELD_CHARS  # at the limit: as it is
    assert capped({"rule": [f"{HUGE}", 3], "n": 1}) == {"rule": [cut, 3], "n": 1}
    assert capped((HUGE,)) == [cut] and capped({HUGE}) == [cut]
    assert fields(series_uid="1.2.3", description=HUGE) == {
        "fields": {"series_uid": "1.2.3", "description": cut}}


def test_other_objects_are_cut_as_the_formatter_writes_them() -> None:
    record = logging.LogRecord("node.test", logging.INFO, __file__, 1, "event", None, None)
    record.fields = {"path": Path(HUGE)}
    line = JsonFormatter().format(record)
    assert len(line) < MAX_FIELD_CHARS + 200
    assert json.loads(line)["path"].endswith("... (200000 characters)")


@pytest.mark.filterwarnings("ignore:The value for the data element:UserWarning",
                            "ignore:The value length:UserWarning")  # pydicom: LO too long
def test_a_200_kb_series_description_never_reaches_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The measured case: the router logs why each series matches no rule, quoting its Series
    Description; the line stays short."""
    study = write_synthetic_study(tmp_path / "study", shape=(4, 32, 32))
    config = NodeConfig(state_dir=tmp_path / "node",
                        rules=[SeriesRule(name="portal", series_description="portal")])
    index = Index(config.index_path)
    for path in study.ct_paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = HUGE
        ds.save_as(path)
        index.instances.add(InstanceRow(ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID,
                                       ds.SeriesInstanceUID, str(path), path.stat().st_size,
                                       "SCANNER"), "CT", now=100.0)
    log_path = tmp_path / "node.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("INFO", log_path)
    try:
        [series] = index.instances.mark_stable(150.0)
        assert Router(config, index).route(series) == []
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    [line] = [line for line in log_path.read_text().splitlines()
              if json.loads(line)["event"] == "series matches no rule"]
    assert len(line) < 2 * MAX_FIELD_CHARS
    [reason] = json.loads(line)["reasons"]["portal"]
    assert reason.endswith(" characters)") and HUGE not in line
    print(f"\n200 kB Series Description: a {len(line)}-character log line")
