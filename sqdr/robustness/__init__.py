"""``sqdr noise``: the accuracy of a trained SQDR-CNN under hardware noise, channel by channel and level by level.

Writes ``noise.csv``, ``noise.png`` and ``metrics.json`` (metrics ``test/acc`` for the noiseless model,
``test/acc@<channel>=<p>`` per grid point, ``test/acc@<preset>``) to ``<run>/noise/`` and, with ``--logger wandb``,
one W&B run in the experiment's group.

- :mod:`~sqdr.robustness.study`: the grid of noise settings and the accuracy at each (no files, no printing);
- :mod:`~sqdr.robustness.outputs`: the CSV table, figure, metrics file, printed table and W&B run;
- :mod:`~sqdr.robustness.command`: the command-line options and the order of the steps.
"""

from sqdr.robustness.command import NoiseOptions, main, run

__all__ = ["NoiseOptions", "main", "run"]
