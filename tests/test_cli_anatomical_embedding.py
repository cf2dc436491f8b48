"""Anatomical embeddings from the CLI: training improves matching, predict writes HDF5."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segfm.cli import main
from segfm.data.io.embeddings_h5 import read_embeddings
from tests.data.embedding.data import build

CONF = Path(__file__).resolve().parent / "conf"


@pytest.fixture(scope="module")
def embedding_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("embedding"))


def _common(config: str, root: Path, out: Path, version: str = "run") -> list[str]:
    return [
        "--config", str(CONF / config),
        "--data.init_args.root", str(root),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.version", version,
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def _val_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("val_med")]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: the tiny fit is then reproducible run to run (and faster on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_improves_matching_then_predict_writes_embeddings(
    embedding_root: Path, tmp_path: Path, one_thread: None
) -> None:
    common = _common("anatomical_embedding_sam.yaml", embedding_root, tmp_path)
    # the same seed gives the same initial network: validate measures it untrained
    main(
        [
            "validate",
            *_common("anatomical_embedding_sam.yaml", embedding_root, tmp_path, "untrained"),
        ]
    )
    main(["fit", *common])
    logs = tmp_path / "lightning_logs"
    (untrained,) = _val_rows(logs / "untrained")
    epochs = _val_rows(logs / "run")
    assert len(epochs) == 12
    # the best epoch, as the checkpoint callback (monitor val_med, mode min) keeps it
    best = min(epochs, key=lambda r: float(r["val_med"]))
    before, after = float(untrained["val_med"]), float(best["val_med"])
    identity = float(best["val_med_identity"])
    assert float(untrained["val_med_identity"]) == pytest.approx(identity)  # the same points
    assert 0 < after < 0.85 * before, (before, after)
    assert after < 0.75 * identity, (after, identity)
    run = logs / "run"
    ckpt = sorted((run / "checkpoints").glob("*.ckpt"))[-1]

    out = tmp_path / "predict"
    main(["predict", *common, "--ckpt_path", str(ckpt), "--model.init_args.output_dir", str(out)])
    files = sorted((out / "embeddings").glob("*.h5"))
    assert [f.stem for f in files] == ["vol_0", "vol_1", "vol_2"]
    for f in files:
        emb = read_embeddings(f)
        source = nib.load(embedding_root / f"{f.stem}.nii.gz")
        assert emb.image_shape == (24, 48, 48)
        assert emb.fine.shape == (16, 12, 24, 24) and emb.coarse.shape == (16, 6, 3, 3)
        np.testing.assert_allclose(emb.affine, source.affine[:, [2, 1, 0, 3]])
        norms = np.linalg.norm(emb.fine.astype(np.float32), axis=0)
        np.testing.assert_allclose(norms, 1.0, atol=2e-3)


@pytest.mark.parametrize(
    "config", ["anatomical_embedding_sam_pp.yaml", "anatomical_embedding_cross_sam.yaml"]
)
def test_other_stages_train(config: str, embedding_root: Path, tmp_path: Path) -> None:
    main(["fit", *_common(config, embedding_root, tmp_path)])
    with open(tmp_path / "lightning_logs" / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val_med") for r in rows)
