"""The ``segfm`` command: Lightning's fit/validate/test/predict plus segfm's own subcommands.

This module stays light: ``segfm --help`` is built from the plain data below and imports neither
torch nor Lightning. A subcommand's module is imported only when that subcommand is parsed:
segfm's own subcommands (:mod:`segfm.commands`) are functions whose signature is the command
line and whose docstring is the help; the four Trainer subcommands run
:mod:`segfm.commands.trainer` (LightningCLI).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from importlib import import_module
from typing import Any, NoReturn

import segfm
from segfm.commands.help_cache import cached_help, keep_help
from segfm.commands.usage import UsageError, usage_error
from segfm.errors import SegfmError


@dataclass(frozen=True)
class Subcommand:
    """One subcommand of ``segfm``.

    Attributes:
        description: One whole sentence: the listing's line and the subcommand's help. For
            segfm's own subcommands it is the first line of the function's docstring.
        target: ``"module:function"`` of segfm's own subcommands; None for a Trainer method.
    """

    description: str
    target: str | None = None


SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand("Train a method on a data module, validating and checkpointing as it goes."),
    "validate": Subcommand("Run one pass over the validation split and log its loss and metrics."),
    "test": Subcommand(
        "Evaluate a method on the test split and write its tables, predictions and overlays."
    ),
    "predict": Subcommand("Segment the predict split and write the predictions, without scoring."),
    "export": Subcommand(
        "Write the network of a Lightning checkpoint as an official checkpoint file.",
        "segfm.commands.export:export",
    ),
    "evaluate": Subcommand(
        "Score a folder of saved predictions against the ground truth, case by case.",
        "segfm.commands.evaluate:evaluate",
    ),
    "challenge-predict": Subcommand(
        "Segment every case of a challenge inputs folder into the outputs folder (predict.sh).",
        "segfm.commands.challenge:challenge_predict",
    ),
    "challenge-eval": Subcommand(
        "Run the challenge's official evaluation loop on a submission folder, without docker.",
        "segfm.commands.challenge:challenge_eval",
    ),
    "serve": Subcommand(
        "Serve a promptable model to 3D Slicer (SlicerNNInteractive) and a web page.",
        "segfm.commands.serve:serve",
    ),
    "verify-data": Subcommand(
        "Check a dataset before training: every problem with its file and fix.",
        "segfm.commands.verify_data:verify_data_command",
    ),
    "track": Subcommand(
        "Track DeepLesion lesions with saved embeddings and report CPM and MED (DLT pairs).",
        "segfm.commands.track:track",
    ),
    "register": Subcommand(
        "Register a moving volume to a fixed one with anatomical-embedding matches (+ deedsBCV).",
        "segfm.commands.register:register",
    ),
}

HELP = ("-h", "--help")


def overview() -> str:
    """The text of ``segfm --help``: usage, what segfm is, and one line per subcommand."""
    width = min(shutil.get_terminal_size().columns, 100)
    names = ",".join(SUBCOMMANDS)
    lines = [f"usage: segfm [-h] [--debug] {{{names}}} ...", "", (segfm.__doc__ or "").strip(), ""]
    lines.append("subcommands (segfm SUBCOMMAND --help lists its options):")
    pad = max(map(len, SUBCOMMANDS)) + 4
    for name, sub in SUBCOMMANDS.items():
        wrapped = textwrap.wrap(sub.description, width - pad, break_on_hyphens=False) or [""]
        lines.append(f"  {name:<{pad - 2}}{wrapped[0]}")
        lines += [" " * pad + rest for rest in wrapped[1:]]
    lines += [
        "",
        "options:",
        "  -h, --help  Show this help message and exit.",
        "  --debug     Show the full traceback of an error (or set SEGFM_DEBUG=1).",
    ]
    return "\n".join(lines)


def _find_subcommand(words: list[str]) -> tuple[int, str] | None:
    """The position and name of the first word that is not an option (or a config file)."""
    skip = False
    for i, word in enumerate(words):
        if skip:
            skip = False
        elif word in ("-c", "--config"):
            skip = True
        elif not word.startswith("-"):
            return i, word
    return None


def _own_parser(name: str, fn: Any) -> Any:
    """A jsonargparse parser of a function: its typed parameters are the options."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog=f"segfm {name}", description=SUBCOMMANDS[name].description, exit_on_error=False
    )
    # sub_configs: a class-typed argument also takes a YAML file (verify-data --data X.yaml)
    parser.add_function_arguments(fn, fail_untyped=True, sub_configs=True)
    return parser


def _run_own(name: str, words: list[str]) -> Any:
    """Parse the options of one of segfm's own subcommands and call its function."""
    from jsonargparse import ArgumentError

    module, _, function = (SUBCOMMANDS[name].target or "").partition(":")
    fn = getattr(import_module(module), function)
    parser = _own_parser(name, fn)
    try:
        config = parser.parse_args(words)
    except ArgumentError as err:
        raise usage_error(err, parser, f"segfm {name} --help") from err
    return fn(**config.as_dict())


def _run_trainer(name: str, args: list[str] | None) -> Any:
    """Run fit/validate/test/predict through LightningCLI."""
    from segfm.commands.trainer import run_trainer

    descriptions = {k: v.description for k, v in SUBCOMMANDS.items() if v.target is None}
    return run_trainer(name, descriptions, args)


def _help(name: str, words: list[str], args: list[str] | None) -> NoReturn:
    """``segfm NAME --help``: the kept text, or the parser's, rendered once and kept.

    The Trainer subcommands' parsers import Lightning (seconds), and so does verify-data's.
    """
    text = cached_help(name)
    if text is None:
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                if SUBCOMMANDS[name].target is None:
                    _run_trainer(name, args)
                else:
                    _run_own(name, words[1:])
        except SystemExit as done:
            if done.code not in (0, None):
                raise
        text = buffer.getvalue()
        keep_help(name, text)
    sys.stdout.write(text)
    raise SystemExit(0)


def _fail(lines: list[str], console: bool, err: BaseException) -> NoReturn:
    for line in lines:
        print(f"segfm: {line}", file=sys.stderr)
    if console or not isinstance(err, SegfmError):
        raise SystemExit(2) from None
    raise err


def _dispatch(words: list[str], args: list[str] | None) -> Any:
    found = _find_subcommand(words)
    if found is None:
        if words and not set(words) & set(HELP):
            hint = "segfm --help"
            msg = f"choose a subcommand: {', '.join(SUBCOMMANDS)}"
            raise UsageError(msg, hint)
        print(overview(), file=sys.stdout if words else sys.stderr)
        raise SystemExit(0 if words else 2)
    position, name = found
    if name not in SUBCOMMANDS:
        near = difflib.get_close_matches(name, list(SUBCOMMANDS), n=1)
        fix = f"did you mean {near[0]}?" if near else f"choose one of {', '.join(SUBCOMMANDS)}"
        msg = f"unknown subcommand '{name}'; {fix}"
        raise UsageError(msg, "segfm --help")
    if position == 0 and words[1:] in (["--help"], ["-h"]):
        _help(name, words, args)
    if SUBCOMMANDS[name].target is not None:
        if position:
            msg = f"put the options after the subcommand: segfm {name} {' '.join(words[:position])}"
            raise UsageError(msg, f"segfm {name} --help")
        return _run_own(name, words[1:])
    return _run_trainer(name, args)


def main(args: list[str] | None = None) -> Any:
    """Run the segfm command line.

    Errors in the command line or in the values given to the classes end in one line naming the
    option and the fix (exit status 2); ``--debug`` or ``SEGFM_DEBUG=1`` shows the traceback.

    Args:
        args: Arguments instead of ``sys.argv[1:]`` (for tests and notebooks).

    Returns:
        With ``args``: the CLI object of a Trainer subcommand (model, data module, trainer) or
        what segfm's own subcommand returned. None when run from the console (the console
        script passes the return value to ``sys.exit``, which would print an object and exit
        with status 1).
    """
    debug = os.environ.get("SEGFM_DEBUG", "") not in ("", "0")
    argv = sys.argv if args is None else list(args)  # DDP workers re-run sys.argv: edit it in place
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if "WANDB_SWEEP_ID" not in os.environ:  # a sweep agent's runs report to the sweep
        os.environ.setdefault("WANDB_MODE", "offline")
    words = argv[1:] if args is None else argv
    console = args is None
    try:
        result = _dispatch(words, None if console else argv)
    except UsageError as err:
        if debug:
            raise
        _fail([f"error: {err}", f"see {err.hint} for the options"], console, err)
    except SegfmError as err:
        if debug:
            raise
        lines = [f"error: {err}", "run again with --debug (or SEGFM_DEBUG=1) for the traceback"]
        _fail(lines, console, err)
    return None if console else result
