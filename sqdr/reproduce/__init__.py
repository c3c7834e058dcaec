"""``sqdr reproduce``: the paper's evaluation, with baselines and ablations, over seeds, resumable, in one command.

- :mod:`~sqdr.reproduce.plan`: the experiment set (``conf/reproduce/experiments.yaml``) expanded into runs;
- :mod:`~sqdr.reproduce.runner`: training or collecting each run (``result.json`` marks a finished one);
- :mod:`~sqdr.reproduce.report`: tables and figures, with the comparison to published spiking networks;
- :mod:`~sqdr.reproduce.command`: the command line.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """Run ``sqdr reproduce`` (imported on call, so ``sqdr --help`` does not load torch)."""
    from sqdr.reproduce.command import main as reproduce_main

    reproduce_main(argv)
