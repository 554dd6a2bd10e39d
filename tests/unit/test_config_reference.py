"""docs/configuration.md is the reference rendered from the pydantic model, and it is current:
regenerate it with ``radiomics-node config reference > docs/configuration.md``."""

from __future__ import annotations

import pytest

from node.cli import main
from node.config import NodeConfig
from node.ops.reference import render_reference
from tests.conftest import REPO


def test_committed_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), (
        "docs/configuration.md is stale: radiomics-node config reference > docs/configuration.md")


def test_every_field_has_a_row_with_a_description() -> None:
    rows = [line for line in render_reference().splitlines() if line.startswith("| `")]
    names = {row.split("`")[1] for row in rows}
    assert set(NodeConfig.model_fields) <= names
    assert {"status.port", "retention.spool_days", "peers[].ae_title",
            "rules[].ranges{}.min", "retrieve.sources[].method"} <= names
    undocumented = [row for row in rows if row.rstrip().endswith("|  |")]
    assert undocumented == []


def test_cli_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()
