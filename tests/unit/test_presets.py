"""Presets: shipped presets load, hashes are canonical, and typos fail naming file and key."""

from pathlib import Path

import pytest
import yaml

from pipelines.science.presets import Preset, PresetError, load_preset, shipped_presets

ALL_3D_CLASSES = {"shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _valid() -> dict:
    return {
        "name": "test-preset",
        "description": "for tests",
        "radiomics": {
            "setting": {"binWidth": 25, "resampledPixelSpacing": None},
            "imageType": {"Original": {}},
            "featureClass": {"firstorder": None},
        },
    }


def test_ct_liver_basic_matches_contract() -> None:
    assert "ct-liver-basic" in shipped_presets()
    preset = load_preset("ct-liver-basic")
    assert preset.name == "ct-liver-basic"
    assert preset.radiomics["setting"]["binWidth"] == 25
    assert preset.radiomics["setting"]["resampledPixelSpacing"] is None
    assert preset.radiomics["imageType"] == {"Original": {}}
    assert set(preset.radiomics["featureClass"]) == ALL_3D_CLASSES
    assert all(v is None for v in preset.radiomics["featureClass"].values())


@pytest.mark.parametrize("name", shipped_presets())
def test_every_shipped_preset_loads_and_is_named_after_its_file(name: str) -> None:
    assert load_preset(name).name == name


def test_hash_is_sha256_of_canonical_json_and_ignores_key_order(tmp_path: Path) -> None:
    data = _valid()
    first = load_preset(_write(tmp_path, data))
    reordered = dict(reversed(list(data.items())))
    reordered["radiomics"] = dict(reversed(list(data["radiomics"].items())))
    second = Preset.model_validate(reordered)
    assert first.hash == second.hash
    assert len(first.hash) == 64 and int(first.hash, 16) >= 0
    changed = Preset.model_validate(
        {**data, "radiomics": {**data["radiomics"], "setting": {"binWidth": 10}}}
    )
    assert changed.hash != first.hash


def test_load_by_path_string(tmp_path: Path) -> None:
    path = _write(tmp_path, _valid())
    assert load_preset(str(path)) == load_preset(path)


@pytest.mark.parametrize(
    ("radiomics", "expected"),
    [
        ({"setting": {"binwidth": 25}}, "'binwidth' was not defined. at radiomics.setting"),
        ({"setting": {"binWidth": "wide"}}, "at radiomics.setting.binWidth"),
        ({"setting": {"binWidth": -1}}, "at radiomics.setting.binWidth"),
        ({"imageType": {"Log": {}}}, "radiomics.imageType.Log: unknown image type"),
        ({"featureClass": {"glmc": None}}, "radiomics.featureClass.glmc: unknown feature class"),
        ({"featureClass": {"glcm": ["Contrst"]}}, "radiomics.featureClass.glcm: unknown features"),
        ({"featureClass": {"glcm": "Contrast"}}, "radiomics.featureClass.glcm: expected a list"),
        ({"settings": {"binWidth": 25}}, "radiomics: unknown sections ['settings']"),
    ],
)
def test_typos_fail_naming_file_and_key(tmp_path: Path, radiomics: dict, expected: str) -> None:
    path = _write(tmp_path, {**_valid(), "radiomics": radiomics})
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_unknown_top_level_key_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, {**_valid(), "discription": "typo"})
    with pytest.raises(PresetError, match=r"discription: Extra inputs are not permitted"):
        load_preset(path)


def test_unknown_shipped_name_lists_the_shipped_ones() -> None:
    with pytest.raises(PresetError, match=r"ct-livr: no shipped preset.*ct-liver-basic"):
        load_preset("ct-livr")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"absent\.yaml: cannot read preset"):
        load_preset(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(PresetError, match=r"bad\.yaml: not valid YAML"):
        load_preset(bad)
    bad.write_text("- a list", encoding="utf-8")
    with pytest.raises(PresetError, match=r"bad\.yaml: expected a mapping"):
        load_preset(bad)


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        ({"radiomics": {"setting": {"interpolator": "sitkNearestNeighbor"}}},
         "nearest neighbour is refused for images"),
        ({"radiomics": {"setting": {"interpolator": 1}}}, "nearest neighbour is refused"),
        ({"radiomics": {"setting": {"resampledPixelSpacing": [1, 1, 1], "interpolator": None}}},
         "pyradiomics would silently not resample"),
        ({"radiomics": {"setting": {"resampledPixelSpacing": [1, 1, 1],
                                    "interpolator": "sitkGaussian"}}},
         "'sitkGaussian' is not supported for resampling"),
        ({"radiomics": {"setting": {"binWidth": 25, "binCount": 32}}},
         "binWidth and binCount are both set"),
        ({"rois": {"variants": [{"kind": "ring"}]}}, "kind ring needs distance_mm"),
        ({"rois": {"variants": [{"kind": "intra", "distance_mm": 2}]}}, "intra takes no distance"),
        ({"rois": {"variants": [{"kind": "erosion", "distance_mm": 2, "exclude": ["air"]}]}},
         "exclude and clip_to_liver apply to rings"),
        ({"rois": {"variants": [{"kind": "ring", "distance_mm": 2, "exclude": ["air"]}]}},
         "exclude names ['air'] not in rois.hu_ranges"),
        ({"rois": {"variants": [{"kind": "intra"}, {"kind": "intra"}]}},
         "duplicate variants ['intra']"),
        ({"modality": "MR", "rois": {"hu_ranges": {"air": [None, -500]}, "variants": [
            {"kind": "ring", "distance_mm": 2, "exclude": ["air"]}]}},
         "HU exclusions need modality CT"),
        ({"rois": {"hu_ranges": {"fat": [-30, -190]}}}, "lower bound -30.0 above upper"),
        ({"rois": {"liver": {"label_regex": "(liver"}}}, "rois.liver.label_regex"),
        ({"preprocessing": {"zscore": {"reference": "roi"}},
          "radiomics": {"setting": {"normalize": True}}}, "choose one"),
        ({"series": {"irregular_spacing": "interpolate"}}, "irregular_spacing"),
        ({"segmentation": {"fractional_threshold": 0}}, "fractional_threshold"),
    ],
)
def test_preprocessing_and_roi_sections_are_validated(
    tmp_path: Path, update: dict, expected: str
) -> None:
    path = _write(tmp_path, {**_valid(), **update})
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_defaults_are_explicit_and_hashed() -> None:
    basic = load_preset("ct-liver-basic")
    assert basic.series.irregular_spacing == "refuse"
    assert basic.segmentation.fractional_threshold == 0.5
    assert [v.name for v in basic.rois.variants] == ["intra"]
    dumped = basic.model_dump()
    assert dumped["series"] == {"irregular_spacing": "refuse"}
    changed = basic.model_copy(update={"segmentation": basic.segmentation.model_copy(
        update={"fractional_threshold": 0.4})})
    assert changed.hash != basic.hash


def test_shipped_science_presets_match_their_recipes() -> None:
    crlm = load_preset("ct-liver-crlm")
    setting = crlm.radiomics["setting"]
    assert (setting["resampledPixelSpacing"], setting["interpolator"], setting["binWidth"]) == (
        [1, 1, 1], "sitkBSpline", 25)
    assert crlm.radiomics["imageType"]["LoG"] == {"sigma": [3.0, 5.0]}
    assert set(crlm.radiomics["imageType"]) == {"Original", "LoG", "Wavelet"}
    assert set(crlm.radiomics["featureClass"]) == ALL_3D_CLASSES
    assert [(v.kind, v.distance_mm) for v in crlm.rois.variants] == [
        ("intra", None), ("intra_ring", 2), ("intra_ring", 4), ("intra_ring", 6)]
    hcc = load_preset("mr-liver-hcc")
    assert hcc.modality == "MR" and hcc.preprocessing.zscore.reference == "liver"
    assert hcc.radiomics["setting"]["binCount"] == 32
    assert set(hcc.radiomics["imageType"]) == {"Original", "LoG"}
    ibsi = load_preset("ibsi-digital-phantom")
    assert ibsi.radiomics["setting"]["binWidth"] == 1
    assert ibsi.radiomics["setting"]["resampledPixelSpacing"] is None
    assert ibsi.radiomics["setting"]["force2D"] is False


@pytest.mark.parametrize(("change", "words"), [
    ({"maps": {"enabled": True, "features": ["glcm_Contrast"]}}, "parametric maps"),
    ({"modality": "MR"}, "needs modality CT"),
    ({"radiomics": {"setting": {"binWidth": 25, "resegmentRange": [-500, 400]}}},
     "both re-segment"),
    ({"radiomics": {"setting": {"binWidth": 25, "force2D": True}}}, "force2D"),
    ({"ibsi": {"texture_aggregation": {"glszm": "3D_avg"}}}, "pyradiomics builds"),
    ({"ibsi": {"discretisation": "pyradiomics", "texture_aggregation": {"glcm": "2D_avg"}}},
     r"per-slice 2D for \['glcm'\] needs ibsi.discretisation ibsi"),
])
def test_ibsi_section_refuses_what_it_replaces(change: dict, words: str) -> None:
    data = load_preset("ibsi-ct-phantom-E").model_dump()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    with pytest.raises(ValueError, match=words):
        Preset.model_validate(data)
