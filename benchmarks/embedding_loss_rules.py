"""What each of segfm's InfoNCE sampling rules changes against the original SAM loss.

    OMP_NUM_THREADS=1 python benchmarks/embedding_loss_rules.py     # ~5 CPU minutes
    OMP_NUM_THREADS=1 python benchmarks/embedding_loss_rules.py --patch 32 96 96 --seeds 5

segfm departs from the original's loss (``sam/models/frameworks/sam.py`` of
alibaba-damo-academy/self-supervised-anatomical-embedding-v2) in four rules, each a setting of
``AnatomicalEmbedding(rules=LossRules(...))`` (see ``segfm.losses.infonce``). On fixed inputs
(one batch of generated pairs, the same weights, the same random draws: one seeded generator
per repeat) this computes the loss of

- the original: ``benchmarks/reference/train_anatomical_embedding.py`` (which segfm with all
  four original rules reproduces: the ``check`` column, largest difference);
- the original with one of segfm's rules, for each rule, and segfm's defaults (all four);

and reports the mean loss (fine, coarse, total) over the repeats, the mean absolute and relative
difference of the total to the original's, and the cosine between the gradient (all
parameters) and the original's. Two weight states: the seeded untrained tiny network, and the
same after ``--steps`` SGD steps with segfm's rules on other generated batches.

Inputs: ``data_tools.synthetic_embedding`` volumes of 48x128x128 voxels at 2 mm; six pairs of
views of ``--patch`` voxels (32x64x64 by default, 44 % of the original's 32x96x96, which takes
about twice as long; fewer than 250 coarse voxels per pair crash the original's ``topk``) at
2 mm x U(0.8, 1.2), 20 % independent, drawn by ``EmbeddingPairDataModule``; the published loss
settings (``sam_NIHLN.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference.anatomical_embedding import build_sam
from benchmarks.reference.train_anatomical_embedding import NIHLN, sam_loss
from data_tools.synthetic_embedding import build
from segfm.data.datamodules.embedding_pairs import EmbeddingPairDataModule
from segfm.data.embedding_datasets import collate_pairs
from segfm.methods.anatomical_embedding import AnatomicalEmbedding, LossRules

ORIGINAL = LossRules(excluded="zeroed", voxels="all", queries="overlap_box", exclude_positive=False)
SEGFM = LossRules()
VARIANTS = {
    "original": ORIGINAL,
    "+ excluded dropped": replace(ORIGINAL, excluded="dropped"),
    "+ voxels valid": replace(ORIGINAL, voxels="valid"),
    "+ queries valid": replace(ORIGINAL, queries="valid"),
    "+ exclude_positive": replace(ORIGINAL, exclude_positive=True),
    "segfm (all four)": SEGFM,
}


def _batches(root: Path, patch: tuple[int, int, int], pairs: int, count: int) -> list[dict]:
    dm = EmbeddingPairDataModule(
        str(root), patch_size=patch, val_fraction=0.0, batch_size=pairs, num_workers=0
    )
    dm.setup("fit")
    data = dm.datasets["train"]
    torch.manual_seed(0)
    samples = []
    while len(samples) < pairs * count:
        sample = data[0]
        # the original needs valid voxels in both views (its crops lie inside the volume)
        if all(sample[f"valid{v}"][:, ::2, ::2, ::2].any() for v in (1, 2)):
            samples.append(sample)
    return [collate_pairs(samples[i : i + pairs]) for i in range(0, len(samples), pairs)]


def _reference(task: AnatomicalEmbedding, batch: dict, seed: int) -> float:
    ref = build_sam(base_channels=4, out_channels=16, half_outputs=False)
    ref.load_state_dict(task.model.state_dict())
    ref.train()
    x = torch.stack([batch["view1"], batch["view2"]], 1).flatten(0, 1)
    pos = torch.stack([batch["position1"], batch["position2"]], 1).flatten(0, 1)[:, [1, 2, 0]]
    val = torch.stack([batch["valid1"], batch["valid2"]], 1).flatten(0, 1).float()
    with torch.no_grad():
        return float(sam_loss(ref(x), pos, val, NIHLN, torch.Generator().manual_seed(seed))["loss"])


def _measure(task: AnatomicalEmbedding, batch: dict, seeds: int) -> dict[str, dict]:
    params = [p for p in task.model.parameters() if p.requires_grad]
    out: dict[str, dict] = {}
    for name, rules in VARIANTS.items():
        task.rules = rules
        task.configure_losses()
        rows = []
        for seed in range(seeds):
            parts = task.sam_loss(batch, torch.Generator().manual_seed(seed))
            grad = torch.autograd.grad(parts["loss"], params)
            rows.append(
                SimpleNamespace(
                    **{k: float(v.detach()) for k, v in parts.items()},
                    grad=torch.cat([g.flatten() for g in grad]),
                )
            )
        out[name] = {"rows": rows}
    task.rules = SEGFM
    task.configure_losses()
    base = out["original"]["rows"]
    for _name, res in out.items():
        rows = res["rows"]
        res["fine"] = sum(r.fine_loss for r in rows) / len(rows)
        res["coarse"] = sum(r.coarse_loss for r in rows) / len(rows)
        res["loss"] = sum(r.loss for r in rows) / len(rows)
        res["abs"] = sum(abs(r.loss - b.loss) for r, b in zip(rows, base, strict=True)) / len(rows)
        res["rel"] = sum(abs(r.loss - b.loss) / b.loss for r, b in zip(rows, base, strict=True))
        res["rel"] /= len(rows)
        cos = [
            float(torch.nn.functional.cosine_similarity(r.grad, b.grad, dim=0))
            for r, b in zip(rows, base, strict=True)
        ]
        res["cos"] = sum(cos) / len(cos)
    check = max(abs(_reference(task, batch, s) - r.loss) for s, r in enumerate(base))
    out["original"]["check"] = check
    return out


def _table(title: str, out: dict[str, dict]) -> str:
    lines = [
        f"{title} (reference vs segfm with the original's rules: largest difference "
        f"{out['original']['check']:.1e})",
        "",
        "| rules | fine | coarse | total | abs. diff. | rel. diff. | gradient cosine |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in out.items():
        lines.append(
            f"| {name} | {r['fine']:.4f} | {r['coarse']:.4f} | {r['loss']:.4f} | "
            f"{r['abs']:.4f} | {100 * r['rel']:.2f} % | {r['cos']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print one table per weight state."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps of the 2nd state")
    parser.add_argument("--seeds", type=int, default=2, help="repeats (random draws)")
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64), help="view z y x")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--state", choices=("both", "untrained", "trained"), default="both")
    a = parser.parse_args(argv)
    patch, steps = tuple(a.patch), 10 if a.quick else a.steps
    with tempfile.TemporaryDirectory() as tmp:
        root = build(Path(tmp) / "data", num_cases=3, shape=(48, 128, 128), workers=1)
        batch = _batches(root, patch, pairs=6, count=1)[0]
        train = _batches(root, (16, 48, 48), pairs=2, count=steps)
    torch.manual_seed(0)
    task = AnatomicalEmbedding(arch="tiny")
    task.train()
    valid = torch.cat([batch["valid1"], batch["valid2"]]).float().mean()
    print(f"batch: 6 pairs of {patch} voxels, {100 * (1 - valid):.1f} % outside the volume\n")
    if a.state in ("both", "untrained"):
        print(_table("Untrained tiny network", _measure(task, batch, a.seeds)), "\n", flush=True)
    if a.state == "untrained":
        return
    opt = torch.optim.SGD(task.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    losses = []
    for b in train:
        opt.zero_grad()
        loss = task.sam_loss(b)["loss"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    k = max(len(losses) // 5, 1)
    print(f"training loss (16x48x48 views, 2 pairs): first {k} steps {sum(losses[:k]) / k:.3f}, "
          f"last {k} {sum(losses[-k:]) / k:.3f}\n")  # fmt: skip
    print(_table(f"After {steps} steps", _measure(task, batch, a.seeds)))


if __name__ == "__main__":
    main()
