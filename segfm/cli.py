"""The ``segfm`` command: Lightning's fit/validate/test/predict plus segfm's own subcommands."""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

import segfm.accelerators  # noqa: F401  (registers accelerator npu, strategies single_npu / ddp_npu)
from segfm.data.base import BaseDataModule
from segfm.errors import CheckpointError, SegfmError
from segfm.evaluate import evaluate
from segfm.export import export
from segfm.methods.base import BaseTask, run_dir
from segfm.register import register
from segfm.track import track
from segfm.verify import verify_data_command

#: segfm's own subcommands: thin wrappers whose arguments come from the library function
EXTRA_SUBCOMMANDS: dict[str, Callable[..., Any]] = {
    "export": export,
    "evaluate": evaluate,
    "verify-data": verify_data_command,
    "track": track,
    "register": register,
}


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
        super().setup(trainer, pl_module, stage)

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


class SegfmCLI(LightningCLI):
    """LightningCLI on segfm's base classes (subclass mode) with extra subcommands."""

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        super()._add_subcommands(parser, **kwargs)
        subcommands = parser._subcommands_action
        for name, fn in EXTRA_SUBCOMMANDS.items():
            description = (fn.__doc__ or "").strip().splitlines()[0]
            sub = LightningArgumentParser(description=description)
            # sub_configs: a class-typed argument also takes a YAML file (verify-data --data X.yaml)
            sub.add_function_arguments(fn, fail_untyped=True, sub_configs=True)
            subcommands.add_subcommand(name, sub, help=description)

    def _parse_ckpt_path(self) -> None:
        # Lightning merges a checkpoint's hyper-parameters over the parsed config, so
        # `test --ckpt_path X --model.init_args.output_dir Y` would silently lose Y. When the
        # config names the method, its options (and the command line) win; weights still come
        # from the checkpoint. Without a method in the config, the checkpoint supplies it.
        subcommand = self.config.get("subcommand")
        if subcommand in EXTRA_SUBCOMMANDS:
            return
        if subcommand:
            _check_ckpt_path(self.config[subcommand].get("ckpt_path"))
        model = self.config[subcommand].get("model") if subcommand else None
        if model is not None and model.get("class_path"):
            return
        super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        if self.config.get("subcommand") in EXTRA_SUBCOMMANDS:
            return
        super()._set_seed()

    def instantiate_classes(self) -> None:
        """Instantiate model, data and trainer, except for segfm's own subcommands."""
        if self.subcommand in EXTRA_SUBCOMMANDS:
            return
        super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand in EXTRA_SUBCOMMANDS:
            EXTRA_SUBCOMMANDS[subcommand](**self.config[subcommand].as_dict())
            return
        super()._run_subcommand(subcommand)


def main(args: list[str] | None = None) -> SegfmCLI | None:
    """Run the segfm command line.

    Args:
        args: Arguments instead of ``sys.argv[1:]`` (for tests and notebooks).

    Returns:
        The CLI object when called with ``args`` (tests, notebooks); None when run from the
        console (the console script passes the return value to ``sys.exit``, which would print
        an object and exit with status 1).
    """
    debug = os.environ.get("SEGFM_DEBUG", "") not in ("", "0")
    argv = sys.argv if args is None else list(args)  # DDP workers re-run sys.argv: edit it in place
    if "--debug" in argv:
        argv.remove("--debug")
        debug = True
    if "WANDB_SWEEP_ID" not in os.environ:  # a sweep agent's runs report to the sweep
        os.environ.setdefault("WANDB_MODE", "offline")
    try:
        cli = SegfmCLI(
            model_class=BaseTask,
            datamodule_class=BaseDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults={"logger": lazy_instance(CSVLogger, save_dir="runs")},
            save_config_callback=SegfmSaveConfig,
            args=None if args is None else argv,
        )
    except SegfmError as err:
        if debug:
            raise
        print(f"segfm: error: {err}", file=sys.stderr)
        print("segfm: run again with --debug (or SEGFM_DEBUG=1) for the traceback", file=sys.stderr)
        if args is None:
            raise SystemExit(2) from None
        raise
    return None if args is None else cli
