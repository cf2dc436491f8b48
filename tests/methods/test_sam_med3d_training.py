"""SAMMed3D's training step against SAM-Med3D's ``train.py``, run as a reference.

The reference (``benchmarks/reference/train_sam_med3d.py``) follows uni-medical/SAM-Med3D
@f3de1fa ``train.py`` lines 136 (the loss), 227-291 (``batch_forward``, ``get_points``,
``interaction``: 11 iterations, mask prompt alone at ``randint(2, 9)`` and the last, newest click
only, low-res logits fed back undetached, the loss summed), 343-365 (batch z-score, encoder once,
``loss /= accumulation_steps``) and ``utils/click_method.py`` lines 191-223
(``get_next_click3D_torch_2``). Both run on one batch with the same weights (medim's SAM-Med3D
classes, small, loaded into segfm's network) and the same draws: segfm draws its clicks and its
mask-only step, the reference is handed the same ones and must find each click in its own error
region and give it the same label. Loss and gradient norm per parameter group must agree within
1e-5. The statistics tests compare segfm's random draws with the original's rule over many
draws (seeded, so deterministic). The last test checks the optimiser step under accumulation
(``train.py`` 365-372) against Lightning's ``accumulate_grad_batches``.

The comparison runs in float64. In float32 the loss agreed on every draw but the gradients of 4
of 11 weight draws did not (a group norm 2e-4 apart, single parameters 2% apart): on draw 1001
one pre-activation of the decoder transformer's ReLU MLP (step 3, ``[2, 7, 2048]``) rounds to
exactly 0.0 in segfm and to 2.4e-7 in medim (a different float32 summation order), so that
unit's gradient is off in one and on in the other, and the 8 later steps carry the difference
back to every group. Float64 leaves no such tie (the two agree to 1e-13 per parameter), and with a
ReLU whose gradient is off below 1e-5 in both networks the float32 gap falls to 3e-6: not a
path of the code, a tie of a non-differentiable function.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader

import segfm.methods.sam_med3d as sam_med3d_module
from benchmarks.reference import train_sam_med3d as reference
from segfm.inference.click_windows import to_net
from segfm.methods import SAMMed3D
from segfm.methods.sam_med3d import ClickSimulation
from segfm.models import sam_med3d
from segfm.prompts import sample_error_clicks
from tests.official import randomize_

SIZE = 32


REF_SIZE = 32  # 2³ embedding grid, 8³ low-res logits
GROUPS = ("image_encoder", "prompt_encoder", "mask_decoder")  # the original's optimiser groups


def _small_pair(init: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """medim's SAM-Med3D classes at 32³ (randomised) and segfm's network with its weights."""
    medim = pytest.importorskip("medim.models.sam_med3d")
    torch.manual_seed(init)  # medim's own initialisation draws from the global generator
    width, depth, heads, window = 48, 2, 4, 2
    ref = medim.SAM_Med3D(
        image_encoder=medim.ImageEncoderViT3D(
            depth=depth,
            embed_dim=width,
            img_size=REF_SIZE,
            mlp_ratio=4,
            norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
            num_heads=heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=window,
            out_chans=384,
            in_chans=1,
        ),
        prompt_encoder=medim.PromptEncoder3D(
            embed_dim=384,
            image_embedding_size=(2, 2, 2),
            input_image_size=(REF_SIZE,) * 3,
            mask_in_chans=16,
        ),
        mask_decoder=medim.MaskDecoder3D(num_multimask_outputs=3, transformer_dim=384),
    )
    randomize_(ref, seed=7, scale=0.05)  # logits of either sign: clicks of both kinds
    ours = sam_med3d(
        image_size=REF_SIZE,
        encoder_embed_dim=width,
        encoder_depth=depth,
        encoder_num_heads=heads,
        encoder_global_attn_indexes=(1,),
        window_size=window,
    )
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.double(), ours.double()


def _float64_positions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let medim's positional encoding run in float64.

    It casts its coordinates to float32 (``torch.float32`` grid, ``coords.to(torch.float)``)
    before multiplying them by the Gaussian matrix, float64 here. The coordinates are multiples
    of 1/64 (grid centres ``(i + 0.5) / 2``, clicks ``(v + 0.5) / 32``), exact in float32, so
    casting them back to the matrix's dtype changes no value.
    """
    medim = pytest.importorskip("medim.models.sam_med3d")
    encode = medim.PositionEmbeddingRandom3D._pe_encoding

    def in_matrix_dtype(self: Any, coords: torch.Tensor) -> torch.Tensor:
        return encode(self, coords.to(self.positional_encoding_gaussian_matrix.dtype))

    monkeypatch.setattr(medim.PositionEmbeddingRandom3D, "_pe_encoding", in_matrix_dtype)


def _reference_batch() -> dict[str, torch.Tensor]:
    """Two crops ``[2, 1, z, y, x]``: boxes of different sizes, brighter than the noise."""
    gen = torch.Generator().manual_seed(11)
    label = torch.zeros(2, 1, REF_SIZE, REF_SIZE, REF_SIZE, dtype=torch.long)
    label[0, 0, 5:20, 10:22, 8:15] = 1
    label[1, 0, 15:25, 4:14, 12:30] = 1
    image = torch.randn(label.shape, generator=gen) * 30.0 + 40.0 * label
    return {"image": image.double(), "label": label}


def _group_norms(model: torch.nn.Module) -> dict[str, float]:
    norms = {}
    for group in GROUPS:
        grads = [p.grad.flatten() for p in getattr(model, group).parameters() if p.grad is not None]
        norms[group] = float(torch.cat(grads).double().norm())
    return norms


@pytest.mark.parametrize(
    ("init", "seed"),
    [
        (1004, 0),
        (1004, 1),
        (1002, 0),
        (1001, 0),  # a ReLU tie in float32 (see the module docstring)
        (1003, 2),
    ],
)
def test_training_step_equals_the_original(
    init: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _float64_positions(monkeypatch)
    ref, ours = _small_pair(init)
    method = SAMMed3D(
        arch="tiny",
        image_size=REF_SIZE,
        normalize="zscore_batch",
        click_simulation=ClickSimulation(train_iterations=11, raw_logit_errors=True),
        lambda_ce=0.0,
        export_official=False,
    )
    method.model = ours
    method.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []  # segfm's clicks, (z, y, x)
    mask_only: list[int] = []
    sample = sam_med3d_module.sample_error_clicks

    def spy_clicks(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        coords, labels = sample(*args, **kwargs)
        drawn.append((coords, labels))
        return coords, labels

    decode = ours.decode

    def spy_decode(embeddings: torch.Tensor, points: Any = None, **kwargs: Any) -> Any:
        if points is None:
            mask_only.append(len(drawn) - 1)
        return decode(embeddings, points=points, **kwargs)

    monkeypatch.setattr(sam_med3d_module, "sample_error_clicks", spy_clicks)
    ours.decode = spy_decode  # type: ignore[method-assign]
    batch = _reference_batch()
    torch.manual_seed(seed)
    loss = method.training_step(batch, 0)
    loss.backward()
    assert len(drawn) == 11 and mask_only[-1] == 10 and len(mask_only) == 2
    random_insert = mask_only[0]

    # the reference, handed segfm's clicks (transposed to the network's x, y, z)
    wanted = iter([coords.flip(-1) for coords, _ in drawn])
    current: list[torch.Tensor] = []

    def draw(points: torch.Tensor) -> int:
        if not current:
            current.extend(next(wanted))
        voxel = current.pop(0)
        rows = (points[:, 1:] == voxel).all(dim=1).nonzero()
        assert rows.numel() == 1, f"segfm clicked {voxel.tolist()}, not an error of the original"
        return int(rows[0, 0])

    clicks: list[tuple[torch.Tensor, torch.Tensor]] = []
    ref_loss, _ = reference.train_step(
        ref, to_net(batch["image"]), to_net(batch["label"]), random_insert, draw, 11, clicks
    )
    ref_loss.backward()
    labels = torch.stack([lab[:, 0] for _, lab in clicks])
    assert torch.equal(labels, torch.stack([lab for _, lab in drawn]))
    assert bool((labels == 0).any()) and bool((labels == 1).any())  # both kinds of click
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    ours_norms, ref_norms = _group_norms(ours), _group_norms(ref)
    for group in GROUPS:
        assert ours_norms[group] > 0
        assert ours_norms[group] == pytest.approx(ref_norms[group], rel=1e-5, abs=1e-7), group
    ref_params = dict(ref.named_parameters())
    for name, param in ours.named_parameters():  # every parameter, in float64
        theirs = ref_params[name].grad
        assert (param.grad is None) == (theirs is None), name  # unused tokens and heads: None
        if param.grad is not None:
            assert param.grad.dtype == torch.float64, name
            torch.testing.assert_close(param.grad, theirs, rtol=1e-9, atol=1e-11, msg=name)


def test_clicks_are_uniform_over_the_error_region_positive_iff_missed() -> None:
    # get_next_click3D_torch_2: a voxel uniform over FN | FP, positive iff in FN
    target = torch.zeros(5, 6, 7, dtype=torch.bool)
    target[1:4, 1:4, 1:5] = True  # 36 voxels
    pred = torch.zeros_like(target)
    pred[1:4, 1:4, 1:3] = True  # 18 of them found: FN = 18 voxels
    pred[0, 0, :5] = True  # FP = 5 voxels
    fn, fp = target & ~pred, pred & ~target
    error = [tuple(v) for v in torch.argwhere(fn | fp).tolist()]
    assert len(error) == 23
    draws = 23 * 400
    coords, labels = sample_error_clicks(
        pred.expand(draws, -1, -1, -1),
        target.expand(draws, -1, -1, -1),
        generator=torch.Generator().manual_seed(0),
    )
    counts = dict.fromkeys(error, 0)
    for voxel, label in zip(coords.tolist(), labels.tolist(), strict=True):
        assert tuple(voxel) in counts, voxel  # only errors are clicked
        counts[tuple(voxel)] += 1
        assert label == int(fn[tuple(voxel)])  # positive iff a false negative
    observed = np.array(list(counts.values()))
    assert stats.chisquare(observed).pvalue > 1e-3  # uniform over the 23 voxels
    share = labels.float().mean().item()  # positives: |FN| / |FN | FP|
    assert abs(share - 18 / 23) < 3 * np.sqrt((18 / 23) * (5 / 23) / draws)


def test_mask_only_step_is_uniform_like_numpy_randint_2_9() -> None:
    method = SAMMed3D(arch="tiny", image_size=SIZE, export_official=False)
    generator = torch.Generator().manual_seed(0)
    n = 3500
    steps = []
    for _ in range(n):
        drawn = method.draw_mask_only_steps(generator)
        assert 10 in drawn  # the last of 11 iterations, always
        steps.append(min(drawn))
    original = np.random.RandomState(2023).randint(2, 9, size=n)  # train.py line 273
    assert set(steps) == set(original.tolist()) == set(range(2, 9))
    observed = np.bincount(steps, minlength=9)[2:]
    assert stats.chisquare(observed).pvalue > 1e-3  # uniform over 2..8
    table = np.stack([observed, np.bincount(original, minlength=9)[2:]])
    assert stats.chi2_contingency(table).pvalue > 1e-3  # the same law as the original's draws
    method.click_simulation.mask_only_steps = False
    assert method.draw_mask_only_steps(generator) == set()


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for i in range(n):
        label = torch.zeros(1, SIZE, SIZE, SIZE, dtype=torch.long)
        lo = 4 + 3 * i
        label[0, lo : lo + 12, 6:20, 8 : 18 + i] = 1
        image = torch.randn(1, SIZE, SIZE, SIZE, generator=gen) + 2.0 * label
        out.append({"image": image, "label": label})
    return out


class _Seed(pl.Callback):
    """Seeds the global generator before every training batch (the clicks are drawn from it)."""

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(100 + batch_idx)


class _Grads(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        self.grads.append(
            {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        )


def test_lightning_accumulation_averages_the_batches_as_the_original() -> None:
    torch.manual_seed(0)
    method = SAMMed3D(
        arch="tiny",
        image_size=SIZE,
        click_simulation=ClickSimulation(train_iterations=2),
        lambda_ce=0.0,
        lr_schedule="constant",
        export_official=False,
    )
    manual = copy.deepcopy(method)
    accumulate = 3
    batches = _batches(accumulate)
    grads = _Grads()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_Seed(), grads],
    )
    loader = DataLoader(batches, batch_size=1, generator=torch.Generator().manual_seed(0))
    trainer.fit(method, train_dataloaders=loader)
    assert len(grads.grads) == 1

    # the original: loss /= accumulation_steps; backward for each batch; one optimiser step
    manual.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    for i, batch in enumerate(batches):
        torch.manual_seed(100 + i)
        batch = {k: v[None] for k, v in batch.items()}
        loss = manual.training_step(batch, i)
        (loss / accumulate).backward()
    expected = {n: p.grad for n, p in manual.named_parameters() if p.grad is not None}
    assert expected.keys() == grads.grads[0].keys()
    for name, grad in expected.items():
        torch.testing.assert_close(grads.grads[0][name], grad, atol=1e-7, rtol=1e-5, msg=name)
