"""The ``sqdr report`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from sqdr.errors import UserError
from sqdr.files import check_writable
from sqdr.sweep.study import load_study_file


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sqdr report",
        description=(
            "Tables (CSV and Markdown) and figures of an Optuna study or of `sqdr fit` runs. "
            "A study: every trial, the best ones or the Pareto front with the command that re-runs each, and "
            "its figures. Runs: every version_N/ under the folder with the config keys that differ between runs, "
            "final and best metrics, and training curves."
        ),
    )
    parser.add_argument(
        "target",
        type=str,
        help="A study file (e.g. sweeps/params_vs_accuracy_digits.yaml) or a folder of fit runs (e.g. runs/).",
    )
    parser.add_argument(
        "--out",
        type=str | None,
        default=None,
        help=(
            "Output folder; tables go to OUT/tables/, figures to OUT/figures/. Default: the study's "
            "<runs_dir>/<study>/report/, or TARGET/report/ for runs, so the committed results/ change only "
            "when asked for (--out results)."
        ),
    )
    parser.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help="Where the study lives, if not in the study file's storage (sqlite:///, journal: or postgresql://).",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    target = Path(args.target)
    if target.is_dir():
        from sqdr.report.runs import report_runs

        report_runs(target, check_writable(args.out or target / "report"))
    elif target.is_file():
        from sqdr.report.study import report_study

        spec = load_study_file(target, storage=args.storage)
        report_study(spec, check_writable(args.out or spec.trials_dir / "report"))
    else:
        raise UserError(f"{target} does not exist; pass a study file (sweeps/*.yaml) or a folder of runs (runs/).")
