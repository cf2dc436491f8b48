"""Anatomical embeddings from the CLI: fit beats the identity baseline, predict writes HDF5."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segfm.cli import main
from segfm.data.io.embeddings_h5 import read_embeddings
from tests.data.embedding.data import build

CONF = Path(__file__).resolve().parent / "conf"


@pytest.fixture(scope="module")
def embedding_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("embedding"))


def _common(config: str, root: Path, out: Path) -> list[str]:
    return [
        "--config", str(CONF / config),
        "--data.init_args.root", str(root),
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.version", "run",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


def test_fit_beats_identity_then_predict_writes_embeddings(
    embedding_root: Path, tmp_path: Path
) -> None:
    common = _common("anatomical_embedding_sam.yaml", embedding_root, tmp_path)
    main(["fit", *common])
    run = tmp_path / "lightning_logs" / "run"
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_med")]
    last = rows[-1]
    med, identity = float(last["val_med"]), float(last["val_med_identity"])
    assert 0 < med < identity, (med, identity)
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
