"""Testing the routing rules against a study: for each image series, the rules it matches, or
for each rule the first condition it fails and the value it saw (``node.flow.router.mismatches``,
the check the router itself makes), and for each study rule the roles it may play or each role's
first failed condition; for each segmentation, the series it references and whether the study
holds them. ``radiomics-node rules test DIR|STUDY_UID`` prints it, the status page shows
it for the last studies received.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.config import SeriesRule, StudyRule, load_config
from node.flow.router import SEGMENTATION_MODALITIES, RuleMismatch, b_values_of, mismatches
from node.state import Index
from pipelines.io.references import referenced_series_uids


@dataclass(frozen=True)
class RoleVerdict:
    """What one study rule makes of one image series: the roles whose conditions it meets
    (``roles``, in configuration order) and, for each role it does not, the first condition
    failed (``failed``). Which of several matching series plays a role is the router's choice
    (``node.flow.study_router``)."""

    rule: str
    roles: tuple[str, ...] = ()
    failed: tuple[tuple[str, RuleMismatch], ...] = ()


@dataclass(frozen=True)
class SeriesVerdict:
    """What the rules make of one series: for an image series the names of the rules it
    matches (``matched``), for each rule it does not the first condition failed (``failed``)
    and each study rule's role verdict (``study``); for a segmentation, the series it references
    (``references``)."""

    series_uid: str
    modality: str
    description: str
    matched: tuple[str, ...] = ()
    failed: tuple[tuple[str, RuleMismatch], ...] = ()
    references: tuple[str, ...] | None = None
    study: tuple[RoleVerdict, ...] = ()


def role_verdict(rule: StudyRule, header: Dataset,
                 b_values: Callable[[], set[float]] | None = None) -> RoleVerdict:
    """The roles of ``rule`` the series of ``header`` may play; ``b_values`` as for
    ``node.flow.router.mismatches``."""
    roles, failed = [], []
    for name, role in rule.roles.items():
        found = mismatches(role, header, b_values)
        if found:
            failed.append((name, found[0]))
        else:
            roles.append(name)
    return RoleVerdict(rule.name, tuple(roles), tuple(failed))


def verdict(rules: Iterable[SeriesRule], header: Dataset, study_rules: Iterable[StudyRule] = (),
            b_values: Callable[[], set[float]] | None = None) -> SeriesVerdict:
    """The verdict of ``rules`` and ``study_rules`` on the series whose first instance's header
    is ``header`` (``b_values``: the b-values of all its instances, for roles that ask)."""
    base = {"series_uid": str(header.get("SeriesInstanceUID", "")),
            "modality": str(header.get("Modality", "")),
            "description": str(header.get("SeriesDescription", ""))}
    if base["modality"] in SEGMENTATION_MODALITIES:  # what the router pairs, not matches
        return SeriesVerdict(**base, references=tuple(sorted(referenced_series_uids(header))))
    matched, failed = [], []
    for rule in rules:
        found = mismatches(rule, header)
        if found:
            failed.append((rule.name, found[0]))
        else:
            matched.append(rule.name)
    study = tuple(role_verdict(rule, header, b_values) for rule in study_rules)
    return SeriesVerdict(**base, matched=tuple(matched), failed=tuple(failed), study=study)


def verdicts(rules: Iterable[SeriesRule], headers: Mapping[str, Dataset],
             study_rules: Iterable[StudyRule] = (),
             paths: Mapping[str, list[str]] | None = None) -> list[SeriesVerdict]:
    """The verdict on each series of ``headers`` (series UID -> a header), image series first,
    each group in series UID order; ``paths`` (series UID -> its files) gives the b-values of
    every instance to roles that ask for them (else the header's own)."""
    rules, study_rules = list(rules), list(study_rules)
    found = []
    for uid, header in sorted(headers.items()):
        files = (paths or {}).get(uid)
        reader = (lambda files=files: b_values_of(files)) if files else None
        found.append(verdict(rules, header, study_rules, reader))
    return sorted(found, key=lambda v: (v.references is not None, v.series_uid))


def _role_line(v: RoleVerdict) -> str:
    """``study rule R: role a, b`` or ``study rule R: no role (a: K reason; ...)``."""
    if v.roles:
        noun = "role" if len(v.roles) == 1 else "roles"
        return f"study rule {v.rule}: {noun} {', '.join(v.roles)}"
    failed = "; ".join(f"{role}: {miss.keyword} {miss.reason}" for role, miss in v.failed)
    return f"study rule {v.rule}: no role ({failed})"


def lines(found: list[SeriesVerdict]) -> list[str]:
    """The verdicts as printable lines, one block per series (the command's output; the status
    page shows :func:`summary` per series)."""
    present = {v.series_uid for v in found}
    out = []
    for v in found:
        shown = f", {v.description!r}" if v.description else ""
        title = f"series {v.series_uid} ({v.modality}{shown})"
        if v.references is not None:
            refs = [f"{uid}{'' if uid in present else ' (not in this study)'}"
                    for uid in v.references]
            out.append(f"{title}: segmentation of {', '.join(refs) or 'no series it names'}")
            continue
        if v.matched:
            out.append(f"{title}: matches {', '.join(v.matched)}")
        else:
            out.append(f"{title}: matches no rule")
            out.extend(f"  {rule}: {miss.keyword} {miss.reason}" for rule, miss in v.failed)
        out.extend(f"  {_role_line(role)}" for role in v.study)
    return out


def summary(v: SeriesVerdict) -> str:
    """One line for a table cell: the rules matched, or each rule's first failed condition;
    then each study rule's roles the series may play (or each role's first failed
    condition)."""
    if v.references is not None:
        return f"segmentation of {', '.join(v.references) or 'no series it names'}"
    if v.matched:
        line = f"matches {', '.join(v.matched)}"
    else:
        failed = "; ".join(f"{rule}: {miss.keyword} {miss.reason}" for rule, miss in v.failed)
        line = f"matches no rule ({failed})" if failed else \
            "matches no rule (no rule configured)"
    return "; ".join([line, *(_role_line(role) for role in v.study)])


def series_summary(index: Index, rules: Iterable[SeriesRule], series_uid: str,
                   study_rules: Iterable[StudyRule] = ()) -> str:
    """:func:`summary` of a series the node holds, from the header of its first instance (a
    role's b-values from its header alone: the page reads one file per series); what went
    wrong when that cannot be read."""
    instances = index.instances.of_series(series_uid)
    if not instances:
        return "no instance left in the spool"
    try:
        header = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"cannot read {instances[0].path}: {exc}"
    return summary(verdict(rules, header, study_rules))


def folder_headers(folder: Path, paths: dict[str, list[str]] | None = None
                   ) -> dict[str, Dataset]:
    """One header (no pixel data) per series of the DICOM files under ``folder``; files that
    are not DICOM are passed over. ``paths``, when given, receives each series' files."""
    headers: dict[str, Dataset] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        headers.setdefault(uid, header)
        if paths is not None:
            paths.setdefault(uid, []).append(str(path))
    return headers


def study_headers(index: Index, study_uid: str, paths: dict[str, list[str]] | None = None
                  ) -> dict[str, Dataset]:
    """One header per series of ``study_uid`` the node holds (from its spool); ``paths``, when
    given, receives each series' spool files."""
    headers: dict[str, Dataset] = {}
    for row in index.audit.study_trail(study_uid)["received"]:
        if row["series_uid"] in headers:
            continue
        instances = index.instances.of_series(row["series_uid"])
        if instances:
            headers[row["series_uid"]] = pydicom.dcmread(instances[0].path,
                                                         stop_before_pixels=True)
            if paths is not None:
                paths[row["series_uid"]] = [instance.path for instance in instances]
    return headers


def _test(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.rules and not config.study_rules:
        print("the configuration has no rules", file=sys.stderr)
        return 1
    paths: dict[str, list[str]] = {}
    if Path(args.target).is_dir():
        headers = folder_headers(Path(args.target), paths)
    else:
        index = Index(config.index_path)
        try:
            headers = study_headers(index, args.target, paths)
        finally:
            index.close()
    if not headers:
        print(f"{args.target}: no DICOM series (a folder, or a study the node holds)",
              file=sys.stderr)
        return 1
    found = verdicts(config.rules, headers, config.study_rules, paths)
    print("\n".join(lines(found)))
    return 0 if any(v.matched or any(r.roles for r in v.study) for v in found) else 1


def add_commands(commands: Any) -> None:
    """``rules test``."""
    rules = commands.add_parser("rules", help="routing rules: test them against a study")
    rule_commands = rules.add_subparsers(dest="rules_command", required=True)
    test = rule_commands.add_parser(
        "test", help="which rule each series of a folder or of a received study matches, or "
        "the first condition each rule fails and the value it saw; and which roles of each "
        "study rule it may play, or each role's first failed condition")
    test.add_argument("target", help="a folder of DICOM files, or a Study Instance UID the "
                      "node has received")
    test.add_argument("--config", type=Path, help="YAML configuration (defaults when omitted)")
    test.set_defaults(func=_test)
