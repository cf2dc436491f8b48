"""A failed start leaves no empty run folder behind; a folder with outputs is never deleted."""

from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from segfm.cli import main
from segfm.commands.run_folder import new_folders, remove_unused
from segfm.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "tests" / "conf" / "medsam_npy_slices.yaml")


def _fit(save_dir: Path, root: Path) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--data.init_args.root",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
    ]


def test_failed_fit_leaves_no_new_folder(tmp_path):
    with pytest.raises(DataError):
        main(_fit(tmp_path / "runs", tmp_path / "nowhere"))
    assert not (tmp_path / "runs").exists()


def test_failed_fit_keeps_earlier_runs(tmp_path):
    earlier = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"weights")
    with pytest.raises(DataError):
        main(_fit(tmp_path / "runs", tmp_path / "nowhere"))
    assert earlier.read_bytes() == b"weights"
    assert sorted(p.name for p in earlier.parents[2].iterdir()) == ["version_0"]


def test_only_folders_without_outputs_are_removed(tmp_path):
    logger = CSVLogger(save_dir=tmp_path / "runs")
    folders = new_folders(logger)
    assert folders == [tmp_path / "runs" / "lightning_logs" / "version_0", *folders[1:]]
    assert folders[-1] == tmp_path / "runs"
    run = folders[0]
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("trainer: {}\n")
    (run / "hparams.yaml").write_text("{}\n")
    (run / "checkpoints" / "epoch=0.ckpt").write_bytes(b"weights")
    assert remove_unused(folders) == []  # a checkpoint is an output
    (run / "checkpoints" / "epoch=0.ckpt").unlink()
    assert remove_unused(folders) == folders  # configs only: a failed start
    assert not (tmp_path / "runs").exists() and tmp_path.is_dir()


def test_existing_folders_are_never_watched(tmp_path):
    (tmp_path / "runs" / "lightning_logs" / "run").mkdir(parents=True)
    assert new_folders(CSVLogger(save_dir=tmp_path / "runs", version="run")) == []
