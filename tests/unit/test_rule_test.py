"""``radiomics-node rules test``: the rule each series matches, or each rule's first failed
condition with the value it saw, on a folder and on a study the node has received."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
import yaml

from demo.synthetic import SyntheticStudy, write_synthetic_study
from node.cli import main
from node.config import NodeConfig, SeriesRule
from node.dicom.ingest import Ingest
from node.ops.health import Health
from node.ops.rule_test import folder_headers, lines, verdicts
from node.ops.status import StatusServer
from node.state import Index

RULES = [
    {"name": "ct-arterial", "preset": "ct-liver-basic", "modality": ["CT"],
     "series_description": "arterial"},
    {"name": "ct-thin", "preset": "ct-liver-basic", "modality": ["CT"],
     "ranges": {"SliceThickness": {"max": 1.0}}},
    {"name": "mr-t2", "preset": "mr-liver-hcc", "modality": ["MR"]},
    {"name": "ct-any", "preset": "ct-liver-basic", "modality": ["CT"]},
]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), shape=(4, 32, 32))


def _config(tmp_path: Path, rules: list[dict]) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "rules": rules}))
    return path


def test_each_rule_names_its_first_failed_condition_and_the_value(study: SyntheticStudy) -> None:
    folder = study.ct_paths[0].parent.parent
    found = verdicts([SeriesRule(**rule) for rule in RULES], folder_headers(folder))
    image, segmentation = found
    assert image.series_uid == study.ct_series_uid and image.matched == ("ct-any",)
    failed = {rule: (miss.keyword, miss.reason) for rule, miss in image.failed}
    assert failed == {
        "ct-arterial": ("SeriesDescription",
                        "'Portal venous 2.5 mm (synthetic)' does not match /arterial/"),
        "ct-thin": ("SliceThickness", "2.5 outside [None, 1.0]"),
        "mr-t2": ("Modality", "'CT' not in ['MR']"),
    }
    assert segmentation.references == (study.ct_series_uid,)
    printed = lines(found)
    assert printed[0].endswith("matches ct-any")
    assert printed[1].endswith(f"segmentation of {study.ct_series_uid}")


def test_cli_on_a_folder_explains_a_series_no_rule_matches(tmp_path: Path, study: SyntheticStudy,
                                                           capsys: pytest.CaptureFixture) -> None:
    config = _config(tmp_path, RULES[:3])
    assert main(["rules", "test", str(study.ct_paths[0].parent.parent), "--config",
                 str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"series {study.ct_series_uid} (CT, 'Portal venous 2.5 mm (synthetic)'): "
                      "matches no rule")
    assert out[1:4] == [
        "  ct-arterial: SeriesDescription 'Portal venous 2.5 mm (synthetic)' does not match "
        "/arterial/",
        "  ct-thin: SliceThickness 2.5 outside [None, 1.0]",
        "  mr-t2: Modality 'CT' not in ['MR']",
    ]


def _received(tmp_path: Path, study: SyntheticStudy, rules: list[dict]) -> tuple[NodeConfig,
                                                                                  Index]:
    config = NodeConfig(state_dir=tmp_path / "state", rules=rules)
    config.spool_dir.mkdir(parents=True)
    index = Index(config.index_path)
    ingest = Ingest(config, index)
    for path in [*study.ct_paths, study.seg_path]:
        data = path.read_bytes()
        ingest.accept(data, lambda data=data: pydicom.dcmread(io.BytesIO(data)), "SCANNER")
    return config, index


def test_status_page_shows_the_rules_verdict_of_recent_series(tmp_path: Path,
                                                             study: SyntheticStudy) -> None:
    config, index = _received(tmp_path, study, RULES[:3])
    page = StatusServer(config, index, lambda: Health(())).render_page()
    index.close()
    assert ("matches no rule (ct-arterial: SeriesDescription &#x27;Portal venous 2.5 mm "
            "(synthetic)&#x27; does not match /arterial/; ct-thin: SliceThickness 2.5 outside "
            "[None, 1.0]; mr-t2: Modality &#x27;CT&#x27; not in [&#x27;MR&#x27;])") in page
    assert f"segmentation of {study.ct_series_uid}" in page


def test_cli_on_a_received_study(tmp_path: Path, study: SyntheticStudy,
                                 capsys: pytest.CaptureFixture) -> None:
    config_path = _config(tmp_path, RULES)
    _, index = _received(tmp_path, study, RULES)
    index.close()
    assert main(["rules", "test", study.study_instance_uid, "--config", str(config_path)]) == 0
    out = capsys.readouterr().out
    assert f"series {study.ct_series_uid} (CT, 'Portal venous 2.5 mm (synthetic)'): matches " \
           "ct-any" in out
    assert f"segmentation of {study.ct_series_uid}\n" in out + "\n"
    assert main(["rules", "test", "1.2.3.4", "--config", str(config_path)]) == 1
    assert "no DICOM series" in capsys.readouterr().err
