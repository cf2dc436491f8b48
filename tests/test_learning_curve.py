"""Every fit keeps learning_curve.png and learning_curve.csv in its run folder."""

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from segfm.callbacks import LearningCurve
from segfm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "medsam_npy_slices.yaml")


def test_fit_writes_the_curve_of_every_epoch(npy_slices_root, tmp_path):
    main(
        [
            "fit",
            "--config",
            TINY,
            "--data.init_args.root",
            str(npy_slices_root),
            "--trainer.max_epochs",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path),
        ]
    )
    [table] = tmp_path.rglob("learning_curve.csv")
    rows = list(csv.DictReader(table.open()))
    assert [r["epoch"] for r in rows] == ["1.0", "2.0"]
    for row in rows:
        assert 0 <= float(row["val_dsc"]) <= 1 and float(row["train_loss"]) > 0
    picture = np.asarray(Image.open(table.with_suffix(".png")).convert("RGB"))
    assert picture.shape[0] >= 400 and picture.shape[1] >= 1000
    # the series are drawn in colour, not only the black axes and text
    assert ((picture[..., 0] != picture[..., 1]) | (picture[..., 1] != picture[..., 2])).sum() > 200


def test_the_chart_draws_each_series_in_its_own_colour(tmp_path):
    curve = LearningCurve()
    curve.rows = [
        {"epoch": 1.0, "train_loss": 0.9, "val_dsc": 0.2},
        {"epoch": 2.0, "train_loss": 0.5, "val_dsc": 0.6},
        {"epoch": 3.0, "train_loss": 0.3, "val_dsc": float("nan")},
    ]
    curve.write(tmp_path, "Model")
    picture = np.asarray(Image.open(tmp_path / "learning_curve.png").convert("RGB"))
    blue = (picture == (0, 114, 178)).all(axis=-1)  # first series of each chart
    orange = (picture == (213, 94, 0)).all(axis=-1)
    left, right = blue[:, :560], blue[:, 560:]
    assert left.sum() > 50 and right.sum() > 50  # train_loss left, val_dsc right
    assert orange.sum() == 0  # one series per chart
    rows = list(csv.DictReader((tmp_path / "learning_curve.csv").open()))
    assert rows[2]["val_dsc"] == "nan" and rows[0]["train_loss"] == "0.9"


def test_a_trainer_without_logger_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Trainer:
        loggers: list = []  # noqa: RUF012
        is_global_zero = True
        sanity_checking = False
        current_epoch = 0
        callback_metrics: dict = {}  # noqa: RUF012

    LearningCurve().on_train_epoch_end(Trainer(), None)
    assert list(tmp_path.iterdir()) == []
