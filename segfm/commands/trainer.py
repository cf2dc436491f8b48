"""``segfm fit|validate|test|predict``: LightningCLI on segfm's base classes (subclass mode).

Imported only when one of these four subcommands is asked for (Lightning alone takes seconds to
import); only that subcommand's parser is built.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError, lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import segfm.accelerators  # noqa: F401  (registers accelerator npu, strategies single_npu / ddp_npu)
from segfm.commands.run_folder import new_folders, remove_unused
from segfm.commands.usage import registered_classes, usage_error
from segfm.data.base import BaseDataModule
from segfm.errors import CheckpointError, ConfigError
from segfm.methods.base import BaseTask
from segfm.utils.run_dir import run_dir
from segfm.utils.threads import THREADS_ENV, apply_thread_budget

#: exceptions of a class's ``__init__`` (or the Trainer's) that mean a wrong value in the config
BUILD_ERRORS = (ValueError, TypeError, MisconfigurationException)


class SegfmSaveConfig(SaveConfigCallback):
    """Save the resolved config with the run, and into W&B's run config when W&B logs.

    ``fit`` writes ``config.yaml``; other subcommands write ``config_<stage>.yaml``, so testing
    into the folder of a fit never overwrites the fit's config.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Pick the file name from the stage and the folder from the run, then save."""
        if self.already_saved:
            return
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
        name = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
        # Lightning saves into trainer.log_dir, the save_dir every W&B run shares: go one deeper
        folder = run_dir(trainer)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
        self.config_filename = os.path.relpath(folder / name, trainer.log_dir)
        try:
            super().setup(trainer, pl_module, stage)
        except RuntimeError as err:
            if "to NOT exist" not in str(err):
                raise
            msg = (
                f"{folder / name} exists: this run folder already holds a {stage} run; give "
                "another --trainer.logger.init_args.version (or move that file away)"
            )
            raise ConfigError(msg) from err

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Send the resolved config to every W&B logger (rank zero)."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = (
                    self.config.as_dict() if hasattr(self.config, "as_dict") else dict(self.config)
                )
                logger.experiment.config.update(config, allow_val_change=True)


def _check_ckpt_path(ckpt_path: str | None) -> None:
    """Refuse a missing or unreadable ``--ckpt_path`` in one line, before Lightning reads it."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or ckpt_path.startswith("registry"):
        return
    path = Path(ckpt_path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        msg = f"--ckpt_path {ckpt_path} {what}; give a .ckpt file written by segfm fit"
        raise CheckpointError(msg)
    if not zipfile.is_zipfile(path):
        msg = (
            f"--ckpt_path {ckpt_path} is not a readable PyTorch checkpoint (truncated or corrupt); "
            "copy it again or pick another checkpoint"
        )
        raise CheckpointError(msg)


def _root_cause(err: BaseException) -> BaseException:
    """The exception at the bottom of jsonargparse's wrapping (``raise ... from``)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _built_class(err: BaseException) -> type | None:
    """The class whose ``__init__`` raised ``err`` (the outermost one in its traceback)."""
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            return type(frame.f_locals["self"])
        tb = tb.tb_next
    return None


def build_error(err: BaseException) -> ConfigError | None:
    """One line naming the option whose class refused its value, or None if not a config error.

    Args:
        err: What building the model, data module, trainer or a callback raised.

    Returns:
        A :class:`ConfigError` to raise from ``err``, or None for an error of another kind.
    """
    cause = _root_cause(err)
    if not isinstance(cause, BUILD_ERRORS):
        return None
    cls = _built_class(cause)
    if cls is None:
        key = "config"
    elif issubclass(cls, LightningModule):
        key = f"--model ({cls.__name__})"
    elif issubclass(cls, LightningDataModule):
        key = f"--data ({cls.__name__})"
    elif issubclass(cls, Trainer):
        key = "--trainer"
    else:
        key = cls.__name__
    text = " ".join(str(cause).split()) or type(cause).__name__
    return ConfigError(f"{key}: {text}")


class SegfmCLI(LightningCLI):
    """LightningCLI on segfm's base classes, with only the requested subcommand's parser.

    Args:
        subcommand: The one of ``fit``, ``validate``, ``test``, ``predict`` to build a parser for.
        descriptions: One-sentence help of each subcommand.
        **kwargs: LightningCLI's arguments.
    """

    def __init__(self, subcommand: str, descriptions: dict[str, str], **kwargs: Any) -> None:
        self.only, self.descriptions = subcommand, descriptions
        self.watched: list[Path] = []
        super().__init__(**kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """The requested subcommand and the Trainer arguments it skips."""
        return {k: v for k, v in LightningCLI.subcommands().items() if k == self.only}

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """A parser that raises on errors (segfm reports them in one line) instead of exiting."""
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        for name in self.subcommands():
            kwargs.setdefault(name, {}).setdefault("description", self.descriptions[name])
        super()._add_subcommands(parser, **kwargs)

    def _add_arguments(self, parser: LightningArgumentParser) -> None:
        super()._add_arguments(parser)
        listed = {"model": "A method", "data": "A data module"}
        for action in parser._actions:
            if action.dest in listed:
                what, names = listed[action.dest], registered_classes(action.dest)
                action.help = (
                    f"{what}: a class path, a YAML file with class_path and init_args, or "
                    f"--{action.dest}.init_args.NAME VALUE. One of: {', '.join(names)}."
                )
                # the registry's list replaces jsonargparse's, which has only the classes imported
                action.extra_help = lambda: ""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse the command line; a usage error ends in one line naming the option."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise usage_error(err, parser, f"segfm {self.only} --help") from err

    def _parse_ckpt_path(self) -> None:
        # Lightning merges a checkpoint's hyper-parameters over the parsed config, so
        # `test --ckpt_path X --model.init_args.output_dir Y` would silently lose Y. When the
        # config names the method, its options (and the command line) win; weights still come
        # from the checkpoint. Without a method in the config, the checkpoint supplies it.
        subcommand = self.config.get("subcommand")
        if subcommand:
            _check_ckpt_path(self.config[subcommand].get("ckpt_path"))
        model = self.config[subcommand].get("model") if subcommand else None
        if model is not None and model.get("class_path"):
            return
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a wrong value ends in one line naming its option."""
        try:
            super().instantiate_classes()
        except Exception as err:
            error = build_error(err)
            if error is None:
                raise
            raise error from err
        if rank_zero_only.rank == 0:  # other ranks never create the run folder
            self.watched = [p for logger in self.trainer.loggers for p in new_folders(logger)]

    def _set_threads(self) -> None:
        """Intra-op threads so that compute and loader workers fit the cores (one log line)."""
        workers = int(getattr(self.datamodule, "num_workers", 0) or 0)
        on_cpu = type(self.trainer.accelerator).__name__ == "CPUAccelerator"
        try:
            threads, why = apply_thread_budget(workers, self.trainer.num_devices if on_cpu else 1)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        rank_zero_info(
            f"segfm: {threads} compute thread(s) per process ({why}); ${THREADS_ENV} sets it"
        )

    def _run_subcommand(self, subcommand: str) -> None:
        self._set_threads()
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            remove_unused(self.watched)  # a failed start leaves no empty run folder behind
            raise


def run_trainer(subcommand: str, descriptions: dict[str, str], args: list[str] | None) -> SegfmCLI:
    """Parse the command line of a Trainer subcommand, build the classes and run it.

    Args:
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        descriptions: One-sentence help of each subcommand.
        args: The arguments (without the program name); None reads ``sys.argv``.

    Returns:
        The CLI, with its model, data module and trainer.
    """
    return SegfmCLI(
        subcommand,
        descriptions,
        model_class=BaseTask,
        datamodule_class=BaseDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={"logger": lazy_instance(CSVLogger, save_dir="runs")},
        save_config_callback=SegfmSaveConfig,
        parser_kwargs={"prog": "segfm"},
        args=args,
    )
