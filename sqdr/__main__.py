"""``sqdr``: the one dispatcher of the command line.

Each sub-command's module is imported only when that command runs, so ``sqdr --help`` costs no torch import.
The process is configured (:func:`sqdr.runtime.configure`) before a sub-command runs, so before torch is imported.
Failures a user can fix, in any sub-command, end on the same path: :func:`sqdr.errors.exit_with`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sqdr.errors import exit_with, explain
from sqdr.runtime import configure

USAGE = """usage: sqdr {fit,validate,test,predict,sweep,noise,report,bench,reproduce} ...

  fit|validate|test|predict   train and evaluate SQDR-CNN (LightningCLI; `sqdr fit --help`)
  sweep STUDY.yaml            Optuna hyperparameter study (`sqdr sweep --help`)
  noise                       accuracy of a trained checkpoint under hardware noise (`sqdr noise --help`)
  report                      tables and figures from studies and runs (`sqdr report --help`)
  bench                       throughput of training, inference and the engines, in one run (`sqdr bench --help`)
  reproduce                   the paper's evaluation with baselines and ablations, resumable (`sqdr reproduce --help`)

Set SQDR_DEBUG=1 to see the traceback behind an error message.
"""


def _lightning(argv: list[str]) -> None:
    from sqdr.cli_help import is_plain_help, show_help

    if is_plain_help(argv):
        show_help(argv[0])
        return
    from sqdr.cli import main

    main(argv)


def _sweep(argv: list[str]) -> None:
    from sqdr.sweep import main

    main(argv)


def _noise(argv: list[str]) -> None:
    from sqdr.robustness import main

    main(argv)


def _report(argv: list[str]) -> None:
    from sqdr.report import main

    main(argv)


def _bench(argv: list[str]) -> None:
    from sqdr.bench import main

    main(argv)


def _reproduce(argv: list[str]) -> None:
    from sqdr.reproduce import main

    main(argv)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "fit": _lightning,
    "validate": _lightning,
    "test": _lightning,
    "predict": _lightning,
    "sweep": _sweep,
    "noise": _noise,
    "report": _report,
    "bench": _bench,
    "reproduce": _reproduce,
}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"error: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    if not {"-h", "--help"} & set(args[1:]):  # help texts need no settings, and stay instant without numba's import
        configure()
    try:
        command(args if command is _lightning else args[1:])
    except Exception as error:  # what a user can fix ends in one line (errors.explain); a bug keeps its traceback
        if explain(error) is None:
            raise
        exit_with(error)


if __name__ == "__main__":
    main()
