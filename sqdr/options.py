"""Typed options of a sub-command: a dataclass is the schema, jsonargparse parses it (``--config`` files included).

``sqdr noise`` and ``sqdr reproduce`` declare their options as a dataclass whose docstring documents each field;
these two functions turn it into a parser with ``--help`` and ``--config``, and parsed arguments back into it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, TypeVar

from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter

Options = TypeVar("Options")


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the examples below it kept one command per line."""


def options_parser(options: type[Any], *, prog: str, description: str, examples: str, config_help: str) -> ArgumentParser:
    """A parser for the fields of the dataclass ``options``, plus ``--config`` for a YAML file of them."""
    parser = ArgumentParser(prog=prog, description=description, epilog=examples, formatter_class=HelpFormatter)
    parser.add_argument("--config", action=ActionConfigFile, help=config_help)
    parser.add_class_arguments(options, as_group=False)
    return parser


def options_from(options: type[Options], parser: ArgumentParser, argv: list[str]) -> Options:
    """Command line (and ``--config`` files) to an ``options`` instance; bad values end in a usage error (exit 2)."""
    config = parser.parse_args(argv)
    return options(**{field.name: config[field.name] for field in fields(options)})
