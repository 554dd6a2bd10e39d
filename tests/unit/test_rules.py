"""Series rules: Modality, SeriesDescription regex, numeric ranges, ImageType with exclusions."""

from pydicom.dataset import Dataset

from node.config import NumericRange, SeriesRule
from node.flow.router import matching_rules, mismatches


def header(**values: object) -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.SeriesDescription = "Abdomen PV 2.5mm"
    ds.SliceThickness = "2.5"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


RULE = SeriesRule(
    name="pv",
    modality=["CT"],
    series_description=r"\b(pv|portal)",
    ranges={"SliceThickness": NumericRange(min=1.0, max=3.0)},
    image_type_includes=["AXIAL"],
    image_type_excludes=["LOCALIZER", "DERIVED"],
)


def test_all_conditions_hold() -> None:
    assert mismatches(RULE, header()) == []


def test_modality() -> None:
    assert [m.keyword for m in mismatches(RULE, header(Modality="MR"))] == ["Modality"]


def test_description_regex_is_case_insensitive_search() -> None:
    assert mismatches(RULE, header(SeriesDescription="ABDOMEN PORTAL VENOUS")) == []
    found = mismatches(RULE, header(SeriesDescription="Arterial 2.5mm"))
    assert [m.keyword for m in found] == ["SeriesDescription"]


def test_numeric_range_ends_included_and_missing_value_fails() -> None:
    assert mismatches(RULE, header(SliceThickness="3.0")) == []
    assert mismatches(RULE, header(SliceThickness="1")) == []
    too_thick = mismatches(RULE, header(SliceThickness="5"))
    assert too_thick[0].keyword == "SliceThickness" and "outside" in too_thick[0].reason
    ds = header()
    del ds.SliceThickness
    assert mismatches(RULE, ds)[0].reason == "missing or not a single number"


def test_image_type_inclusion_and_exclusion() -> None:
    assert [m.keyword for m in mismatches(RULE, header(ImageType=["ORIGINAL", "PRIMARY"]))] == [
        "ImageType"
    ]
    localizer = header(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER", "AXIAL"])
    assert "excluded" in mismatches(RULE, localizer)[0].reason
    single_valued = header(ImageType="AXIAL")
    assert mismatches(RULE, single_valued) == []


def test_several_failures_are_all_reported() -> None:
    found = mismatches(RULE, header(Modality="MR", SliceThickness="8", ImageType=["DERIVED"]))
    assert {m.keyword for m in found} == {"Modality", "SliceThickness", "ImageType"}


def test_matching_rules_keeps_configuration_order() -> None:
    loose = SeriesRule(name="any-ct", modality=["CT"])
    mr = SeriesRule(name="mr", modality=["MR"])
    assert [r.name for r in matching_rules([RULE, mr, loose], header())] == ["pv", "any-ct"]
