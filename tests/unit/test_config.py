"""Configuration: defaults for one machine, environment overrides, plain error messages."""

from pathlib import Path

import pytest
import yaml

from node.cli import main
from node.config import ConfigError, load_config


def test_defaults_serve_a_single_machine() -> None:
    config = load_config(None)
    assert config.listener.ae_title == "RADIOMICS"
    assert config.listener.port == 11112
    assert config.state_dir == Path("var")
    assert config.stable_after == 10
    assert [r.preset for r in config.rules] == ["ct-liver-basic"]


def test_empty_file_is_a_working_configuration(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("")
    assert load_config(path).listener.port == 11112


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("listener: {port: 11200, ae_title: FROMFILE}\nstable_after: 3\n")
    monkeypatch.setenv("RADIOMICS_NODE_LISTENER__PORT", "11300")
    monkeypatch.setenv("RADIOMICS_NODE_STABLE_AFTER", "7.5")
    config = load_config(path)
    assert config.listener.port == 11300
    assert config.listener.ae_title == "FROMFILE"
    assert config.stable_after == 7.5


def test_each_error_is_named_with_its_field(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "listener:\n  port: 99999\n  ae_titel: X\n"
        "rules:\n  - name: a\n    series_description: '(unclosed'\n"
        "    ranges: {SliceThickness: {min: 5, max: 1}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(caught.value.problems)
    assert "listener.port" in problems and "99999" in problems
    assert "listener.ae_titel: unknown field" in problems
    assert "rules.0.series_description" in problems and "regular expression" in problems
    assert "min 5.0 is greater than max 1.0" in problems


def test_range_keywords_must_be_numeric_dicom_attributes(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("rules:\n  - name: a\n    ranges: {PatientName: {min: 1}}\n")
    with pytest.raises(ConfigError, match="'PatientName' has VR PN, not a number"):
        load_config(path)
    path.write_text("rules:\n  - name: a\n    ranges: {SliceThicknes: {min: 1}}\n")
    with pytest.raises(ConfigError, match="'SliceThicknes' is not a DICOM keyword"):
        load_config(path)


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("listener:\n  port: [11112\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems[0].startswith("line ")
    assert "not valid YAML" in caught.value.problems[0]


def test_ae_title_longer_than_16_characters_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("listener: {ae_title: ABCDEFGHIJKLMNOPQ}\n")
    with pytest.raises(ConfigError, match=r"listener\.ae_title"):
        load_config(path)


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "destinations:\n  - {name: pacs, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}\n"
    )
    assert main(["config", "check", "--offline", str(good)]) == 0
    out = capsys.readouterr().out
    assert "checks passed" in out and "ORTHANC@127.0.0.1:4242" in out
    assert "ct-liver -> ct-liver-basic" in out

    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: r, preset: no-such-preset}\nworkers: 0\n")
    assert main(["config", "check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "workers" in out

    unknown_preset = tmp_path / "preset.yaml"
    unknown_preset.write_text("rules:\n  - {name: r, preset: no-such-preset}\n")
    assert main(["config", "check", str(unknown_preset)]) == 1
    assert "rules.r.preset" in capsys.readouterr().out


def test_a_rules_preset_file_is_resolved_beside_the_file_and_loaded(tmp_path: Path) -> None:
    """A site's own preset is a file: a relative path is taken from the configuration file's
    folder (the node may run elsewhere), and the preset is loaded with the configuration, so
    that a broken one stops the node at start rather than failing every job."""
    from pipelines.science.presets import load_preset

    site = tmp_path / "site"
    (site / "presets").mkdir(parents=True)
    own = load_preset("ct-liver-basic").model_dump(mode="json", exclude_none=True)
    (site / "presets" / "own.yaml").write_text(yaml.safe_dump({**own, "name": "own"}))
    path = site / "node.yaml"
    path.write_text("rules:\n  - {name: own, preset: presets/own.yaml}\n"
                    "  - {name: shipped, preset: ct-liver-basic}\n")
    config = load_config(path)
    assert [r.preset for r in config.rules] == [str(site / "presets" / "own.yaml"),
                                                "ct-liver-basic"]

    (site / "presets" / "own.yaml").write_text(yaml.safe_dump({**own, "name": "own",
                                                               "radiomics": {"setting": []}}))
    (site / "presets" / "typo.yml").write_text("name: typo\nradiomics: {setting: {binWidht: 5}}")
    path.write_text("rules:\n  - {name: own, preset: presets/own.yaml}\n"
                    "  - {name: typo, preset: presets/typo.yml}\n"
                    "  - {name: gone, preset: /nowhere/preset.yaml}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    problems = refused.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "rules.own.preset", "rules.typo.preset", "rules.gone.preset"]
    assert all("\n" not in p for p in problems)
    assert str(site / "presets" / "typo.yml") in problems[1] and "binWidht" in problems[1]
    assert "/nowhere/preset.yaml: cannot read preset" in problems[2]
