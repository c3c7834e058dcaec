"""``sqdr report``: tables and figures of an Optuna study (``sqdr report STUDY.yaml``) or of the ``sqdr fit`` runs
under a folder (``sqdr report runs/``).

Modules: :mod:`~sqdr.report.output` (tables and figures written whole), :mod:`~sqdr.report.study` (a study's
trials, Pareto front, noise curve), :mod:`~sqdr.report.runs` (fit runs side by side), :mod:`~sqdr.report.command`.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Run ``sqdr report`` (imported here on call, like the other commands)."""
    from sqdr.report.command import main as report_main

    report_main(argv)
