"""``sqdr sweep STUDY.yaml``: an Optuna study whose trials are ordinary ``sqdr fit`` runs.

Modules, each depending only on those listed before it:

- :mod:`~sqdr.sweep.storage`: SQLite, journal and PostgreSQL storages, the budget lock, password masking;
- :mod:`~sqdr.sweep.sampling`: search-space dimensions, samplers and pruners as subclass specs;
- :mod:`~sqdr.sweep.study`: the study file's schema and checks, and the study in storage;
- :mod:`~sqdr.sweep.trial`: one trial, one ``sqdr fit`` run;
- :mod:`~sqdr.sweep.workers`: worker processes sharing a study, exact budgets, dead workers' trials;
- :mod:`~sqdr.sweep.command`: the command line.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Run ``sqdr sweep`` (imported here on call, so ``sqdr.sweep.study`` alone stays light for ``sqdr report``)."""
    from sqdr.sweep.command import main as sweep_main

    sweep_main(argv)
