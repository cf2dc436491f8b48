"""``segfm verify-data``: check a dataset before training, every problem with its file and fix.

The checks belong to the formats: each data module's
:meth:`~segfm.data.base.BaseDataModule.verify` reads its root with the format's own readers
(:mod:`segfm.data.io`). This command only builds the data module as ``fit`` would, through
jsonargparse (a ``--data`` config or the ``data`` section of a run ``--config``, with the
``--data.init_args.*`` given over it), prints the report and sets the exit status.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from segfm.data import _MODULES
from segfm.data.base import BaseDataModule
from segfm.data.io.checks import Report
from segfm.errors import ConfigError, DataError


def _sections(config: str) -> set[str]:
    """The top-level keys of a run config, which must have ``data``."""
    path = Path(config)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = f"cannot read --config {path} ({reason}); give an existing YAML file"
        raise ConfigError(msg) from e
    if not isinstance(content, dict) or content.get("data") is None:
        msg = f"{path} has no data block; pass --data configs/data/<format>.yaml instead"
        raise ConfigError(msg)
    return set(content)


def _typed(data: dict[str, Any]) -> dict[str, Any]:
    """The ``--data`` options that were typed, not filled in with the class's defaults.

    The CLI hands this command the parsed ``--data``, every argument of its class present; one
    equal to its default is taken as the parser's fill-in, so it leaves the run config's value.
    A bare ``--data.init_args.X`` (parsed as the base class) keeps the run config's class.
    """
    module, _, name = str(data.get("class_path") or "segfm.data.BaseDataModule").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return data  # jsonargparse names the unknown class
    defaults = inspect.signature(cls.__init__).parameters
    args = {
        key: value
        for key, value in (data.get("init_args") or {}).items()
        if key not in defaults or defaults[key].default != value
    }
    return {"class_path": None if cls is BaseDataModule else data["class_path"], "init_args": args}


def build_data_module(data: dict[str, Any] | None, config: str | None) -> BaseDataModule:
    """The data module of ``--data`` and / or a run ``--config``, parsed as ``segfm fit`` does.

    Args:
        data: ``--data`` as the CLI parsed it (``class_path`` and ``init_args``), or ``None``.
        config: A run config whose ``data`` section is used, ``--data`` given over it.

    Returns:
        The data module (not set up).

    Raises:
        ConfigError: If the config is unreadable or has no ``data``, or the arguments are not
            those of a data module.
    """
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--data", type=BaseDataModule, sub_configs=True)
    args: list[str] = []
    origin = "--data"
    if config is not None:
        for section in _sections(config) - {"data"}:  # the run's other sections: not read here
            parser.add_argument(f"--{section}", type=Any)
        args += ["--config", config]
        origin = f"the data block of {config} (with --data)"
        if data is not None:
            typed = _typed(data)
            if typed.get("class_path") is not None:
                args += ["--data.class_path", typed["class_path"]]
            for key, value in (typed.get("init_args") or {}).items():
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                args += [f"--data.init_args.{key}", text]
    elif data is not None:
        plain = {k: v for k, v in data.items() if k != "__path__"}
        args += ["--data", json.dumps(plain, default=str)]
    try:
        return parser.instantiate(parser.parse_args(args)).data
    except Exception as e:  # jsonargparse's and the module's own checks, wrapped as they come
        reason = " ".join(str(e).split())[:300]
        msg = f"{origin}: not a valid data module ({reason}); see configs/data/*.yaml"
        raise ConfigError(msg) from e


def verify_data_command(
    data: BaseDataModule | None = None,
    config: str | None = None,
    max_cases: int | None = None,
    strict: bool = False,
) -> Report:
    """Check a dataset before training: every problem with its file and fix.

    Prints every problem, then a summary; ends with a one-line error (exit status 2) when a
    problem is fatal (``--strict``: any problem). Nothing is written.

    Args:
        data: The data module, as for ``fit``: ``--data configs/data/<format>.yaml`` and
            ``--data.init_args.root DIR``.
        config: A run config (``--config configs/medsam/demo.yaml``) whose ``data`` block is
            checked; ``--data.init_args.*`` given as well override its values.
        max_cases: Read at most this many cases per folder (files are always paired in full).
        strict: Treat warnings (empty labels, unusual spacing, ...) as fatal too.

    Returns:
        The report.

    Raises:
        ConfigError: If neither ``--data`` nor ``--config`` names a data module.
        DataError: If the dataset has a fatal problem (after printing them all).
    """
    if data is None and config is None:
        msg = "verify-data needs --data configs/data/<format>.yaml (or --config RUN.yaml)"
        raise ConfigError(msg)
    if isinstance(data, BaseDataModule):
        module = data
    else:
        plain = data.as_dict() if hasattr(data, "as_dict") else data
        module = build_data_module(plain, config)
    if type(module) is BaseDataModule:
        formats = ", ".join(name for name in _MODULES if name != "BaseDataModule")
        msg = (
            "verify-data checks a format: name the format with --data "
            f"configs/data/<format>.yaml ({formats})"
        )
        raise ConfigError(msg)
    report = module.verify(max_cases)
    print(report.text())
    fatal = report.problems if strict else report.errors
    if fatal:
        kind = ("problem" if strict else "error") + ("s" if len(fatal) > 1 else "")
        msg = (
            f"{report.root} has {len(fatal)} {kind} (listed above); fix them and run "
            "segfm verify-data again"
        )
        raise DataError(msg)
    return report
