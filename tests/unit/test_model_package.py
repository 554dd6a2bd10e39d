"""Model packages: every load check refuses a bad package with the file and the check named;
install copies and prints the digest to pin; the CLI's models commands."""

from __future__ import annotations

import json
import operator
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import skops.io
import yaml
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from models.card import ModelCard, split_feature_name
from models.package import (
    CARD_FILE,
    ESTIMATOR_FILE,
    SELFTEST_FILE,
    ModelPackageError,
    install_package,
    load_package,
    package_sha256,
)
from node.cli import main
from tests.unit.model_helpers import trained


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    _, package, digest = trained(tmp_path_factory.mktemp("train"))
    return package, digest


@pytest.fixture
def copy(built: tuple[Path, str], tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(built[0], target)
    return target


def test_loads_with_its_pin_and_as_a_zip(built: tuple[Path, str], tmp_path: Path) -> None:
    path, digest = built
    package = load_package(path, digest)
    assert package.sha256 == digest == package_sha256(path)
    assert len(package.selftest) == 5
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for file in sorted(path.iterdir()):
            handle.write(file, f"test-model/{file.name}")  # one top folder, as zip -r makes
    assert load_package(archive, digest).sha256 == digest


def test_wrong_pin_is_refused(built: tuple[Path, str]) -> None:
    with pytest.raises(ModelPackageError, match="sha256: digest") as error:
        load_package(built[0], "0" * 64)
    assert error.value.check == "sha256"


def test_tampered_card_fails_the_pin_then_the_schema(built: tuple[Path, str], copy: Path) -> None:
    card = yaml.safe_load((copy / CARD_FILE).read_text())
    card["decision"]["threshold"] = 1.5
    (copy / CARD_FILE).write_text(yaml.safe_dump(card))
    with pytest.raises(ModelPackageError) as pinned:
        load_package(copy, built[1])
    assert pinned.value.check == "sha256"
    with pytest.raises(ModelPackageError, match=r"decision\.threshold") as unpinned:
        load_package(copy)
    assert unpinned.value.check == "schema" and unpinned.value.path == copy / CARD_FILE


def test_selftest_mismatch_is_refused(copy: Path) -> None:
    cases = json.loads((copy / SELFTEST_FILE).read_text())
    cases["cases"][2]["probability"] += 1e-6
    (copy / SELFTEST_FILE).write_text(json.dumps(cases))
    with pytest.raises(ModelPackageError, match="case 3: probability") as error:
        load_package(copy)
    assert error.value.check == "self-test"


def test_untrusted_type_is_refused(copy: Path) -> None:
    rogue = Pipeline([("f", FunctionTransformer(operator.neg))])
    (copy / ESTIMATOR_FILE).write_bytes(skops.io.dumps(rogue))
    with pytest.raises(ModelPackageError, match=r"_operator\.neg") as error:
        load_package(copy)
    assert error.value.check == "trusted-types"


def test_pickle_is_refused(copy: Path) -> None:
    (copy / ESTIMATOR_FILE).write_bytes(pickle.dumps({"not": "skops"}))
    with pytest.raises(ModelPackageError, match="not a skops file") as error:
        load_package(copy)
    assert error.value.check == "trusted-types"


def test_missing_file_is_refused(copy: Path) -> None:
    (copy / SELFTEST_FILE).unlink()
    with pytest.raises(ModelPackageError, match=f"missing {SELFTEST_FILE}"):
        load_package(copy)


def test_card_rules(built: tuple[Path, str]) -> None:
    data = yaml.safe_load((built[0] / CARD_FILE).read_text())
    assert split_feature_name("intra + 2 mm ring, without air/fat/original_glcm_Contrast") == (
        "intra + 2 mm ring, without air/fat", "original_glcm_Contrast")
    for change, message in (
        ({"disclaimer": ""}, "give the disclaimer"),
        ({"features": ["no_variant_name"]}, "roi_variant"),
        ({"metrics": [{"cohort": "nowhere", "name": "AUC", "value": 0.5}]}, "nowhere"),
    ):
        with pytest.raises(ValueError, match=message):
            ModelCard.model_validate({**data, **change})


def test_install_copies_and_prints_the_pin(built: tuple[Path, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    assert main(["models", "install", str(built[0]), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    target = tmp_path / "state" / "models" / "test-model-0.1"
    assert f"sha256 {built[1]}" in printed and str(target) in printed
    assert package_sha256(target) == built[1]
    assert install_package(built[0], tmp_path / "state" / "models") == (target, built[1])

    config.write_text(f"state_dir: {tmp_path / 'state'}\nmodels:\n"
                      f"  - path: {target}\n    sha256: {built[1]}\n")
    assert main(["models", "list", "--config", str(config)]) == 0
    assert "loaded   test-model 0.1" in capsys.readouterr().out
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmodels:\n"
                      f"  - path: {target}\n    sha256: {'f' * 64}\n")
    assert main(["models", "list", "--config", str(config)]) == 1
    assert "REFUSED" in capsys.readouterr().out


def test_verify_and_show(built: tuple[Path, str], copy: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "verify", str(built[0]), "--sha256", built[1]]) == 0
    assert "self-test: 5 case(s) reproduced" in capsys.readouterr().out
    assert main(["models", "show", str(built[0])]) == 0
    shown = capsys.readouterr().out
    assert "not_for_clinical_use: true" in shown and "preset:" in shown
    (copy / SELFTEST_FILE).write_text("{}")
    assert main(["models", "verify", str(copy)]) == 1
    assert f"FAILED self-test: {copy / SELFTEST_FILE}" in capsys.readouterr().out
