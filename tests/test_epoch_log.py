"""A fit whose output goes to a file (not a terminal) prints one line per epoch."""

import io
import re
from pathlib import Path

from segfm.callbacks import EpochLog
from segfm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "conf" / "medsam_npy_slices.yaml")


def test_redirected_fit_prints_a_line_per_epoch(npy_slices_root, tmp_path, capsys):
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
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    for line in lines:
        assert re.search(r"train_loss \d", line) and re.search(r"val_dice \d", line)
        assert re.search(r"\(\d+\.\d s\)$", line)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_nothing_is_printed_on_a_terminal_unless_asked():
    assert EpochLog(stream=_Terminal()).always is False
    quiet, loud = _Terminal(), _Terminal()

    class Trainer:
        is_global_zero = True
        callback_metrics: dict = {}  # noqa: RUF012
        max_epochs = 3
        current_epoch = 0

    for stream, always in ((quiet, False), (loud, True)):
        log = EpochLog(stream=stream, always=always)
        log.on_train_epoch_start(Trainer(), None)
        log.on_train_epoch_end(Trainer(), None)
    assert quiet.getvalue() == ""
    assert loud.getvalue().startswith("epoch 1/3  (")
