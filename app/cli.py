"""The `qsim` command line: train, evaluate, calibrate, import, reindex and serve.

Each subcommand imports what it needs when it runs, so `qsim --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable

from app import __version__

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, summary: str, configure: Callable[[argparse.ArgumentParser], None]):
    def register(handler: Handler) -> Handler:
        _COMMANDS[name] = (summary, configure, handler)
        return handler

    return register


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


class CommandError(Exception):
    """A failure the user can fix; printed without a traceback, exit status 2."""


# ---------------------------------------------------------------------------------------------- main


# Modules whose import registers their subcommands (each keeps heavy imports inside its handlers).
COMMAND_MODULES = (
    "app.model.cli", "app.evaluation.cli", "app.questions.cli", "app.feedback.cli", "app.clusters.cli", "app.server",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(
        prog="qsim",
        description="qsim: find the support questions already asked that mean the same as a new one.",
    )
    parser.add_argument("--version", action="version", version=f"qsim {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, configure, handler) in _COMMANDS.items():
        p = sub.add_parser(name, help=summary, formatter_class=_HelpFormatter)
        configure(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        # Every failure is one line and exit status 2; the traceback only with --debug.
        if args.debug:
            raise
        print(f"qsim {args.command}: error: {describe(error)}", file=sys.stderr)
        return 2


def describe(error: BaseException) -> str:
    """One line for an error: the messages of a settings validation error without pydantic's
    decoration, the message of anything else (with its type when the message alone is unclear)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from app.model.artifact import ArtifactError
    from app.model.config import ConfigFileError
    from app.model.data import CorpusError
    from app.model.text import EmptyTextError
    from app.model.train import TrainingDiverged

    if isinstance(error, ValidationError):
        parts = []
        for item in error.errors():
            message = item["msg"].removeprefix("Value error, ")
            where = ".".join(str(part) for part in item["loc"])
            if error.title == "Settings" and item["loc"]:  # the service's settings: name the variable
                where = f"QSIM_{str(item['loc'][0]).upper()}"
            parts.append(f"{where}: {message}" if where else message)
        return "invalid settings: " + "; ".join(parts)
    if isinstance(error, SettingsError):  # an environment value pydantic-settings could not decode
        field = re.search(r'field "(\w+)"', str(error))
        name = f"QSIM_{field.group(1).upper()}" if field else "a QSIM_ variable"
        return f"invalid settings: {name} must be JSON for a list or an object (e.g. [\"https://desk.example\"])"
    message = " ".join(str(error).split()) or error.__class__.__name__
    plain = (CommandError, ArtifactError, ConfigFileError, CorpusError, EmptyTextError, FileNotFoundError, TrainingDiverged)
    return message if isinstance(error, plain) else f"{message} ({error.__class__.__name__})"

if __name__ == "__main__":
    # Run as a script, this module is __main__; commands register on the importable app.cli.
    from app.cli import main as registered_main

    sys.exit(registered_main())
