"""Model packages: a directory or zip file that the node loads only after checking it.

A package holds four files at its top level (a zip may hold them under one folder):

* ``model.yaml``: the card (:class:`models.card.ModelCard`);
* ``model.skops``: the fitted scikit-learn estimator, saved with skops (never pickle: loading a
  pickle runs whatever code it names);
* ``validation.json``: the validation results the card's metrics were taken from;
* ``selftest.json``: input rows and the probabilities the estimator must give for them.

Loading checks, in order, and refuses the package at the first failure with a
:class:`ModelPackageError` naming the file and the check:

1. ``sha256``: the package's digest equals the one the site pinned in its configuration;
2. ``schema``: the card is valid;
3. ``trusted-types``: every type skops would have to build is a scikit-learn/numpy type skops
   trusts by default or one of :data:`TRUSTED_TYPES` (``skops.io.get_untrusted_types``), and the
   estimator loads with exactly those trusted;
4. ``estimator``: it has ``predict_proba`` and takes as many columns as the card has inputs;
5. ``self-test``: it reproduces every self-test probability within the tolerance.

The digest covers the contents, not the container: sha256 over the lines
``"<sha256 of file>  <relative path>\\n"`` of every file, sorted by path (the format of
``sha256sum``), so a directory and its zip have the same digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import skops.io
import yaml
from pydantic import ValidationError

from models.card import ModelCard

CARD_FILE = "model.yaml"
ESTIMATOR_FILE = "model.skops"
VALIDATION_FILE = "validation.json"
SELFTEST_FILE = "selftest.json"
REQUIRED_FILES = (CARD_FILE, ESTIMATOR_FILE, VALIDATION_FILE, SELFTEST_FILE)

# Types outside skops' default trust that the toolkit's estimators contain. Anything else in a
# package refuses it: skops would have to import and build a type nobody reviewed.
TRUSTED_TYPES = frozenset({
    "models.estimators.LassoSelector",
    "models.estimators.MRMRSelector",
    "models.estimators.Nomogram",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.tree._tree.Tree",  # the fitted trees of the random forest preset
})
SELFTEST_TOLERANCE = 1e-9


class ModelPackageError(ValueError):
    """A package that failed a check: ``path`` is the file, ``check`` the check that failed."""

    def __init__(self, path: Path | str, check: str, reason: str) -> None:
        self.path = Path(path)
        self.check = check
        self.reason = reason
        super().__init__(f"{path}: {check}: {reason}")


@dataclass(frozen=True)
class SelfTestCase:
    """One row of inputs (card input name -> value) and the probability it must give."""

    inputs: dict[str, float]
    probability: float


def package_files(path: Path) -> dict[str, bytes]:
    """Relative POSIX path -> bytes of every file of a package directory or zip."""
    if path.is_dir():
        return {
            file.relative_to(path).as_posix(): file.read_bytes()
            for file in sorted(path.rglob("*"))
            if file.is_file()
        }
    if not path.is_file():
        raise ModelPackageError(path, "read", "no such directory or file")
    if not zipfile.is_zipfile(path):
        raise ModelPackageError(path, "read", "neither a directory nor a zip file")
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ModelPackageError(path, "read", f"zip member {info.filename!r} leaves the "
                                        "package")
            files[name.as_posix()] = archive.read(info)
    # A zip of a folder holds "folder/model.yaml": strip one common top folder.
    tops = {name.split("/", 1)[0] for name in files}
    if CARD_FILE not in files and len(tops) == 1 and all("/" in n for n in files):
        top = tops.pop()
        files = {name[len(top) + 1:]: data for name, data in files.items()}
    return files


def digest_of(files: Mapping[str, bytes]) -> str:
    """The package digest of ``files`` (relative path -> bytes); see the module docstring."""
    lines = "".join(
        f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n" for name in sorted(files)
    )
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def package_sha256(path: str | Path) -> str:
    """The digest of the package at ``path`` (directory or zip), as a site pins it."""
    return digest_of(package_files(Path(path)))


def _card(path: Path, text: bytes) -> ModelCard:
    where = path / CARD_FILE
    try:
        data = yaml.safe_load(text.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelPackageError(where, "schema", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ModelPackageError(where, "schema", "expected a mapping at the top level")
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ModelPackageError(where, "schema", reasons) from None


def _estimator(path: Path, data: bytes, n_inputs: int) -> Any:
    where = path / ESTIMATOR_FILE
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises many kinds on a damaged file; all refuse it
        raise ModelPackageError(where, "trusted-types", f"not a skops file: {exc}") from None
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise ModelPackageError(where, "trusted-types",
                                f"types not on the trusted list: {', '.join(refused)}")
    try:
        estimator = skops.io.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise ModelPackageError(where, "trusted-types", f"skops could not load it: {exc}") from None
    if not hasattr(estimator, "predict_proba"):
        raise ModelPackageError(where, "estimator",
                                f"{type(estimator).__name__} has no predict_proba")
    expected = getattr(estimator, "n_features_in_", None)
    if expected != n_inputs:
        raise ModelPackageError(where, "estimator", f"takes {expected} input columns; the card "
                                f"names {n_inputs} (features, then clinical inputs)")
    return estimator


def _selftest(path: Path, data: bytes, card: ModelCard) -> tuple[SelfTestCase, ...]:
    where = path / SELFTEST_FILE
    try:
        raw = json.loads(data)
        cases = tuple(
            SelfTestCase({k: float(v) for k, v in item["inputs"].items()},
                         float(item["probability"]))
            for item in raw["cases"]
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelPackageError(where, "self-test", f"not a self-test file: {exc!r}") from None
    if not cases:
        raise ModelPackageError(where, "self-test", "holds no case")
    for number, case in enumerate(cases, start=1):
        if set(case.inputs) != set(card.input_names):
            missing = sorted(set(card.input_names) - set(case.inputs))
            extra = sorted(set(case.inputs) - set(card.input_names))
            raise ModelPackageError(where, "self-test", f"case {number}: inputs differ from the "
                                    f"card's (missing {missing}, extra {extra})")
    return cases


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, checked model package. Build with :func:`load_package`."""

    path: Path
    card: ModelCard
    sha256: str
    estimator: Any
    validation: dict[str, Any]
    selftest: tuple[SelfTestCase, ...]

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def predict_proba(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Probability of the positive outcome for each row (card input name -> value).

        Raises:
            KeyError: a row lacks one of the card's inputs.
        """
        names = self.card.input_names
        X = np.array([[float(row[name]) for name in names] for row in rows], dtype=float)
        return np.asarray(self.estimator.predict_proba(X))[:, 1]


def run_selftest(package: ModelPackage) -> None:
    """Raise :class:`ModelPackageError` (check ``self-test``) unless every self-test case gives
    its probability within :data:`SELFTEST_TOLERANCE`."""
    got = package.predict_proba([case.inputs for case in package.selftest])
    for number, (case, value) in enumerate(zip(package.selftest, got, strict=True), start=1):
        if not math.isfinite(value) or abs(value - case.probability) > SELFTEST_TOLERANCE:
            raise ModelPackageError(
                package.path / SELFTEST_FILE, "self-test",
                f"case {number}: probability {value!r}, expected {case.probability!r} "
                f"(tolerance {SELFTEST_TOLERANCE:g})")


def load_package(path: str | Path, sha256: str | None = None) -> ModelPackage:
    """Load and check the package at ``path`` (see the module docstring).

    ``sha256`` is the digest the site pinned; None skips that check only (``models verify`` and
    ``models show`` of a package not yet pinned).

    Raises:
        ModelPackageError: naming the file and the check that failed.
    """
    path = Path(path)
    files = package_files(path)
    digest = digest_of(files)
    if sha256 is not None and digest != sha256.lower():
        raise ModelPackageError(path, "sha256", f"digest {digest}, pinned {sha256.lower()}")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ModelPackageError(path, "schema", f"missing {', '.join(missing)}")
    card = _card(path, files[CARD_FILE])
    estimator = _estimator(path, files[ESTIMATOR_FILE], len(card.input_names))
    try:
        validation = json.loads(files[VALIDATION_FILE])
    except ValueError as exc:
        raise ModelPackageError(path / VALIDATION_FILE, "schema", f"not JSON: {exc}") from None
    if not isinstance(validation, dict):
        raise ModelPackageError(path / VALIDATION_FILE, "schema", "expected a JSON object")
    package = ModelPackage(path, card, digest, estimator, validation,
                           _selftest(path, files[SELFTEST_FILE], card))
    run_selftest(package)
    return package


def write_package(out_dir: str | Path, card: ModelCard, estimator: Any,
                  validation: Mapping[str, Any], selftest_rows: Sequence[Mapping[str, float]]
                  ) -> str:
    """Write a package directory: the card, the skops estimator, the validation results and
    self-test cases computed now from ``selftest_rows``; return its digest.

    The written package is loaded back with every check before this returns.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = card.input_names
    X = np.array([[float(row[name]) for name in names] for row in selftest_rows], dtype=float)
    probabilities = np.asarray(estimator.predict_proba(X))[:, 1]
    cases = [
        {"inputs": {name: float(value) for name, value in zip(names, row, strict=True)},
         "probability": float(p)}
        for row, p in zip(X, probabilities, strict=True)
    ]
    card_text = yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False, allow_unicode=True,
                               width=100)
    (out / CARD_FILE).write_text(card_text, encoding="utf-8")
    (out / ESTIMATOR_FILE).write_bytes(skops.io.dumps(estimator))
    (out / VALIDATION_FILE).write_text(json.dumps(validation, indent=1, sort_keys=True) + "\n",
                                       encoding="utf-8")
    (out / SELFTEST_FILE).write_text(json.dumps({"cases": cases}, indent=1) + "\n",
                                     encoding="utf-8")
    return load_package(out).sha256


def install_package(source: str | Path, models_dir: str | Path) -> tuple[Path, str]:
    """Check the package at ``source`` and copy it as a directory to
    ``models_dir/<name>-<version>``; return that path and the digest to pin.

    Raises:
        ModelPackageError: the package fails a check, or the target exists with other contents.
    """
    package = load_package(source)
    target = Path(models_dir) / f"{package.name}-{package.version}"
    if target.exists():
        if package_sha256(target) == package.sha256:
            return target, package.sha256
        raise ModelPackageError(target, "install", "exists with different contents; remove it "
                                "or raise the card's version")
    files = package_files(Path(source))
    staging = target.with_name(f".{target.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    for name, data in files.items():
        destination = staging / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)
    staging.rename(target)
    return target, package.sha256
