"""``radiomics-node models ...`` and ``radiomics-node export features``: model packages (list,
show, verify, install), the training toolkit (train, validate, demo-cohort) and the export of the
node's own features as one wide table."""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from models.card import feature_name
from node.config import load_config


def _models_list(args: argparse.Namespace) -> int:
    from models.package import ModelPackageError, load_package, package_sha256

    config = load_config(args.config)
    refused = 0
    pinned = set()
    for ref in config.models:
        pinned.add(ref.path.resolve())
        try:
            package = load_package(ref.path, ref.sha256)
        except ModelPackageError as exc:
            refused += 1
            print(f"REFUSED  {ref.path}: {exc.check}: {exc.reason}")
            continue
        card = package.card
        print(f"loaded   {card.name} {card.version}  preset {card.preset.name}  "
              f"sha256 {package.sha256}  {ref.path}")
    if config.models_dir.is_dir():
        for path in sorted(config.models_dir.iterdir()):
            if path.resolve() not in pinned and not path.name.startswith("."):
                print(f"unpinned {path}  sha256 {package_sha256(path)} (add it to models: to run "
                      "it)")
    if not config.models:
        print("no model pinned in the configuration (models:)")
    return 1 if refused else 0


def _models_show(args: argparse.Namespace) -> int:
    from models.package import ModelPackageError, load_package

    try:
        package = load_package(args.package, args.sha256)
    except ModelPackageError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"# {args.package}  sha256 {package.sha256}")
    print(yaml.safe_dump(package.card.model_dump(mode="json", exclude_none=True),
                         sort_keys=False, allow_unicode=True, width=100), end="")
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    from models.package import ModelPackageError, load_package

    try:
        package = load_package(args.package, args.sha256)
    except ModelPackageError as exc:
        print(f"FAILED {exc.check}: {exc.path}: {exc.reason}")
        return 1
    sha = "sha256 matches the pinned digest" if args.sha256 else "sha256 not pinned (--sha256)"
    print(f"{args.package}: OK ({package.card.name} {package.card.version})")
    for line in (sha, "schema: model.yaml valid", "trusted-types: skops types on the trusted "
                 "list", f"self-test: {len(package.selftest)} case(s) reproduced"):
        print(f"  {line}")
    print(f"  sha256 {package.sha256}")
    return 0


def _models_install(args: argparse.Namespace) -> int:
    from models.package import ModelPackageError, install_package

    config = load_config(args.config)
    try:
        target, digest = install_package(args.package, config.models_dir)
    except ModelPackageError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"installed {target}")
    print(f"sha256 {digest}")
    print("pin it in the configuration:")
    print(f"models:\n  - path: {target.resolve()}\n    sha256: {digest}")
    return 0


def _template(path: Path) -> Any:
    from pydantic import ValidationError

    from models.training import CardTemplate

    try:
        return CardTemplate.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SystemExit(f"{path}: not a card template: {exc}") from None


def _options(args: argparse.Namespace) -> Any:
    from models.training import Options

    return Options(classifier=args.classifier, lasso_alpha=args.lasso_alpha, mrmr_k=args.mrmr_k,
                   icc_threshold=args.icc_threshold, icc_form=args.icc_form, folds=args.folds,
                   seed=args.seed, bootstrap_replicates=args.bootstrap)


def _print_evaluation(evaluation: Any) -> None:
    e = evaluation
    print(f"  {e.cohort}: {e.n} cases, {e.positives} positive; "
          f"AUC {e.auc_delong['value']:.3f} (DeLong 95 % CI {e.auc_delong['low']:.3f}-"
          f"{e.auc_delong['high']:.3f}; bootstrap {e.auc_bootstrap['low']:.3f}-"
          f"{e.auc_bootstrap['high']:.3f}); sensitivity {e.sensitivity['value']:.2f}, "
          f"specificity {e.specificity['value']:.2f}; Hosmer-Lemeshow p "
          f"{e.hosmer_lemeshow['p_value']:.3f}"
          + ("" if e.c_index is None else f"; Harrell's C {e.c_index:.3f}"))


def _models_train(args: argparse.Namespace) -> int:
    from models.package import write_package
    from models.report import render
    from models.tables import TableError, read_feature_table, read_outcome_table
    from models.training import train

    template = _template(args.template)
    clinical = [c.name for c in template.clinical_inputs]
    try:
        external = None
        if args.external_features or args.external_outcomes:
            if not (args.external_features and args.external_outcomes):
                print("give both --external-features and --external-outcomes", file=sys.stderr)
                return 2
            external = (read_feature_table(args.external_features),
                        read_outcome_table(args.external_outcomes, clinical))
        result = train(
            template, read_feature_table(args.features),
            read_outcome_table(args.outcomes, clinical),
            stability=read_feature_table(args.reader2) if args.reader2 else None,
            external=external, options=_options(args),
        )
    except TableError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    digest = write_package(args.out, result.card, result.estimator, result.validation,
                           result.selftest_rows)
    # Beside the package, never in it: a file added to the package would change its digest.
    report = args.report or args.out.parent / f"{args.out.name}-report.html"
    report.write_text(render(result.card, result.evaluations, result.validation),
                      encoding="utf-8")
    print(f"model {result.card.name} {result.card.version}: {result.validation['model']}, "
          f"{len(result.card.features)} features, threshold {result.card.decision.threshold:.4f}")
    for evaluation in result.evaluations:
        _print_evaluation(evaluation)
    print(f"package {args.out}  sha256 {digest}")
    print(f"report  {report}")
    return 0


def _models_validate(args: argparse.Namespace) -> int:
    from models.package import ModelPackageError, load_package
    from models.report import render
    from models.tables import TableError, read_feature_table, read_outcome_table
    from models.training import validate

    try:
        package = load_package(args.package, args.sha256)
        clinical = [c.name for c in package.card.clinical_inputs]
        evaluation = validate(package, read_feature_table(args.features),
                              read_outcome_table(args.outcomes, clinical), args.cohort,
                              _options(args))
    except (ModelPackageError, TableError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{package.card.name} {package.card.version} at threshold "
          f"{package.card.decision.threshold:.4f}:")
    _print_evaluation(evaluation)
    if args.report:
        args.report.write_text(render(package.card, [evaluation],
                                      title=f"{package.card.name} {package.card.version}: "
                                      f"validation on {args.cohort}"), encoding="utf-8")
        print(f"report {args.report}")
    return 0


DEMO_TEMPLATE = {
    "name": "crlm-recurrence-demo",
    "version": "1.0.0",
    "description": "Recurrence of colorectal liver metastases within 24 months, from CT "
    "radiomics of the lesion and its peritumoral rings plus the largest lesion diameter "
    "(demonstration).",
    "intended_use": "Demonstrates how radiomics-node runs, gates and reports a validated model. "
    "Trained and validated on synthetic lesions only: it says nothing about patients.",
    "not_for_clinical_use": True,
    "disclaimer": "Demonstration model, trained on synthetic data, not for clinical use.",
    "outcome": {"name": "recurrence within 24 months",
                "definition": "synthetic: time to recurrence below 24 months, drawn from a "
                "latent risk that also shapes lesion texture, rim and size "
                "(demo.cohort)",
                "positive": "recurrence within 24 months"},
    "clinical_inputs": [{"name": "max_lesion_diameter_mm", "source": "seg",
                         "key": "max_lesion_diameter_mm", "unit": "mm",
                         "description": "largest maximum 3D diameter of the study's lesions"}],
    "development_cohort": "synthetic site A",
    "external_cohort": "synthetic site B",
}


def _models_demo_cohort(args: argparse.Namespace) -> int:
    from demo.cohort import cohort_plan
    from pipelines.plan import run_tasks

    plan = cohort_plan(args.out, lesions=args.lesions, stability_cases=args.stability_cases,
                       preset=args.preset, seed=args.seed)
    if args.workers > 1:  # the cases' features in spawned processes
        with ProcessPoolExecutor(max_workers=args.workers,
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            paths = run_tasks(plan, lambda fn, jobs: pool.map(fn, jobs, chunksize=4))
    else:
        paths = run_tasks(plan)
    template = {**DEMO_TEMPLATE, "domain": yaml.safe_load(paths["domain"].read_text())}
    template_path = args.out / "card-template.yaml"
    template_path.write_text(yaml.safe_dump(template, sort_keys=False, width=100),
                             encoding="utf-8")
    for name, path in {**paths, "template": template_path}.items():
        print(f"{name:12} {path}")
    out = args.out
    print("train with:\n  radiomics-node models train "
          f"--features {out}/features-site-a.csv --outcomes {out}/outcomes-site-a.csv "
          + (f"--reader2 {out}/features-site-a-reader2.csv " if "reader2" in paths else "")
          + f"--external-features {out}/features-site-b.csv "
          f"--external-outcomes {out}/outcomes-site-b.csv --template {template_path} "
          "--out crlm-recurrence-demo")
    return 0


def export_features(results_dir: Path, out: Path) -> tuple[int, int]:
    """Write every ``features.csv`` under ``results_dir`` (the long format of
    ``pipelines.process``) as one wide table: one row per lesion (result folder and segment),
    columns ``case_id`` (``<result folder>/<segment number>``), ``result``,
    ``source_series_uid``, ``segment_number``, ``segment_label``, ``preset``, ``preset_hash``,
    then ``"<roi_variant>/<pyradiomics key>"`` per feature (``"<role>:..."`` for a study job's
    feature of another series than the one its lesion was drawn on, whose rows come first;
    ``models.card.feature_name``). Returns (rows, feature columns).

    Raises:
        ValueError: naming the file, when a file lacks the expected columns.
    """
    rows: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, str]] = defaultdict(dict)
    columns: dict[str, None] = {}
    segmented: dict[str, str] = {}  # case -> the role of the series its lesion was drawn on
    for path in sorted(results_dir.rglob("features.csv")):
        result = path.parent.relative_to(results_dir).as_posix()
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            needed = {"source_series_uid", "segment_number", "segment_label", "roi_variant",
                      "preset", "preset_hash", "feature", "value"}
            if not needed <= set(reader.fieldnames or ()):
                raise ValueError(f"{path}: columns {reader.fieldnames}; expected {sorted(needed)}")
            for line in reader:
                case = f"{result}/{line['segment_number']}"
                rows.setdefault(case, {
                    "result": result, "source_series_uid": line["source_series_uid"],
                    "segment_number": line["segment_number"],
                    "segment_label": line["segment_label"], "preset": line["preset"],
                    "preset_hash": line["preset_hash"]})
                role = line.get("role") or ""
                drawn_on = segmented.setdefault(case, role)  # its rows come first
                name = feature_name(line["roi_variant"], line["feature"],
                                    "" if role == drawn_on else role)
                columns.setdefault(name)
                values[case][name] = line["value"]
    descriptive = ["result", "source_series_uid", "segment_number", "segment_label", "preset",
                   "preset_hash"]
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", *descriptive, *columns])
        for case, row in rows.items():
            writer.writerow([case, *(row[d] for d in descriptive),
                             *(values[case].get(c, "") for c in columns)])
    return len(rows), len(columns)


def _export_features(args: argparse.Namespace) -> int:
    results = args.results or load_config(args.config).results_dir
    if not results.is_dir():
        print(f"{results}: no results folder", file=sys.stderr)
        return 1
    try:
        count, columns = export_features(results, args.out)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{count} lesion(s), {columns} feature column(s) -> {args.out}")
    return 0 if count else 1


def _toolkit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classifier", choices=["svm", "random_forest", "mlp", "logistic"],
                        help="default: the best internal AUC of the four")
    parser.add_argument("--lasso-alpha", type=float, default=0.001)
    parser.add_argument("--mrmr-k", type=int, default=15)
    parser.add_argument("--icc-threshold", type=float, default=0.75)
    parser.add_argument("--icc-form", choices=["3,1", "2,1"], default="3,1")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")


def add_commands(commands: Any) -> None:
    """Add ``models`` and ``export`` to the ``radiomics-node`` subcommands."""
    models = commands.add_parser("models", help="model packages and the training toolkit")
    sub = models.add_subparsers(dest="models_command", required=True)
    listing = sub.add_parser("list", help="pinned models (loaded or refused) and installed ones")
    listing.add_argument("--config", type=Path)
    listing.set_defaults(func=_models_list)
    for name, func, text in (("show", _models_show, "print a package's card"),
                             ("verify", _models_verify, "run every check on a package")):
        command = sub.add_parser(name, help=text)
        command.add_argument("package", type=Path)
        command.add_argument("--sha256", help="the digest to check against")
        command.set_defaults(func=func)
    install = sub.add_parser("install", help="check a package, copy it to state_dir/models, "
                             "print the sha256 to pin")
    install.add_argument("package", type=Path)
    install.add_argument("--config", type=Path)
    install.set_defaults(func=_models_install)

    train = sub.add_parser("train", help="train, validate and package a model")
    train.add_argument("--features", type=Path, required=True)
    train.add_argument("--outcomes", type=Path, required=True)
    train.add_argument("--template", type=Path, required=True, help="card template (YAML)")
    train.add_argument("--reader2", type=Path, help="second reader / perturbed-mask features")
    train.add_argument("--external-features", type=Path)
    train.add_argument("--external-outcomes", type=Path)
    train.add_argument("--out", type=Path, required=True, help="package directory to write")
    train.add_argument("--report", type=Path, help="HTML report (default: beside the package)")
    _toolkit_options(train)
    train.set_defaults(func=_models_train)

    validate = sub.add_parser("validate", help="evaluate a package on a cohort")
    validate.add_argument("package", type=Path)
    validate.add_argument("--features", type=Path, required=True)
    validate.add_argument("--outcomes", type=Path, required=True)
    validate.add_argument("--cohort", default="validation cohort")
    validate.add_argument("--sha256")
    validate.add_argument("--report", type=Path)
    _toolkit_options(validate)
    validate.set_defaults(func=_models_validate)

    demo = sub.add_parser("demo-cohort", help="write the synthetic two-site cohort")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--lesions", type=int, default=200)
    demo.add_argument("--stability-cases", type=int, default=30)
    demo.add_argument("--preset", default="ct-liver-crlm")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(func=_models_demo_cohort)

    export = commands.add_parser("export", help="export the node's results")
    export_sub = export.add_subparsers(dest="export_command", required=True)
    features = export_sub.add_parser("features", help="results/*/features.csv as one wide table")
    features.add_argument("--config", type=Path)
    features.add_argument("--results", type=Path, help="default: state_dir/results")
    features.add_argument("--out", type=Path, required=True)
    features.set_defaults(func=_export_features)
