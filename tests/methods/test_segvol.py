"""SegVol method: training step, prompt rules, pseudo masks, schedule, protocol segmenters."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data_tools.tiny_clip import write_tiny_clip
from segfm.errors import DataError
from segfm.evaluation.interactive import ClassPrompt
from segfm.inference.zoom import ZoomOptions
from segfm.methods.segvol import SegVol, SegVolLoss, dice_bce
from segfm.methods.segvol_inference import cvpr_box
from segfm.sample import ClassInfo

ROI = (16, 32, 32)
NAMES = {1: ClassInfo("liver"), 2: ClassInfo("kidney"), 3: ClassInfo("spleen")}


@pytest.fixture(autouse=True)
def one_thread():  # the tiny network is far faster on one thread of a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def _method(clip_dir: Path, **kwargs) -> SegVol:
    torch.manual_seed(0)
    args = {"arch": "tiny", "clip_dir": str(clip_dir), "roi_size": ROI, "lr_schedule": "constant"}
    method = SegVol(**(args | kwargs))
    method.log = lambda *a, **k: None  # no trainer attached
    return method


def _batch(classes: int = 2, pseudo: bool = True) -> dict:
    label = torch.zeros(2, 1, *ROI, dtype=torch.long)
    label[0, 0, 2:8, 4:20, 4:20] = 1
    label[1, 0, 8:14, 10:30, 2:12] = 2
    if classes > 2:
        label[0, 0, 10:15, 22:30, 22:30] = 3
    image = torch.rand(2, 1, *ROI) * 0.2 + 0.6 * (label > 0)
    batch = {"image": image, "label": label, "classes": [NAMES, NAMES]}
    if pseudo:
        regions = torch.zeros(2, 1, *ROI, dtype=torch.long)
        regions[:, :, :, 16:] = 1
        regions[:, :, 8:] += 2
        regions[:, :, :2] = -1
        batch["pseudo_label"] = regions
    return batch


def _count_encodes(method: SegVol) -> dict[str, int]:
    calls = {"n": 0}
    encode = method.model.encode

    def counting(image: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return encode(image)

    method.model.encode = counting  # type: ignore[method-assign]
    return calls


def test_loss_is_finite_and_decreases_with_one_encode_per_batch(clip_dir: Path) -> None:
    method = _method(clip_dir)
    calls = _count_encodes(method)
    batch = _batch()
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(5):
        loss = method._step(batch, step, "train")
        assert loss is not None and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert calls["n"] == 5
    assert losses[-1] < losses[0]
    # the frozen text tower gets no gradient, the decoder's text projection does
    assert method.model.text_encoder.dim_align.weight.grad is None
    assert method.model.mask_decoder.txt_align_upscaled_embedding.weight.grad is not None


@pytest.mark.parametrize("classes", [2, 3])
def test_every_class_and_combo_is_decoded_on_one_embedding(clip_dir: Path, classes: int) -> None:
    method = _method(clip_dir)
    calls = _count_encodes(method)
    decoded: list[tuple[int, bool, bool, bool]] = []
    decode = method.model.decode

    def recording(emb, text=None, points=None, boxes=None):
        decoded.append((emb.shape[0], text is not None, points is not None, boxes is not None))
        return decode(emb, text, points, boxes)

    method.model.decode = recording  # type: ignore[method-assign]
    method._step(_batch(classes, pseudo=False), 0, "val")
    assert calls["n"] == 1
    # rows = 2 samples x classes; each class is present in one sample only, so the empty
    # targets get no box or points: box/point-only combos decode the present targets only,
    # text combos decode the empty ones from their text alone
    present = classes
    empty = 2 * classes - present
    expected = [
        (present, True, True, False),
        (empty, True, False, False),  # point+text
        (present, True, False, True),
        (empty, True, False, False),  # box+text
        (present, True, False, False),
        (empty, True, False, False),  # text
        (present, False, False, True),  # box
        (present, False, True, False),  # point
        (present, False, True, True),  # box+point
    ]
    assert decoded == expected


def test_max_categories_limits_the_targets(clip_dir: Path) -> None:
    method = _method(clip_dir, loss=SegVolLoss(max_categories=1, prompt_combos=("text",)))
    masks, rows, names = method._targets(_batch(3)["label"][:, 0], [NAMES] * 2, torch.Generator())
    assert masks.shape[0] == 2 and rows.tolist() == [0, 1] and names[0] == names[1]


def test_pseudo_term_only_with_pseudo_masks(clip_dir: Path) -> None:
    method = _method(clip_dir, loss=SegVolLoss(prompt_combos=("box",)))
    logged: dict[str, float] = {}
    method.log = lambda name, value, **k: logged.__setitem__(name, float(value.detach()))
    method._step(_batch(pseudo=True), 0, "val")
    assert logged["val_ssl_loss"] > 0
    batch = _batch(pseudo=True)
    batch["pseudo_label"][:] = -1  # nothing valid: no pseudo term
    method._step(batch, 0, "val")
    assert logged["val_ssl_loss"] == 0
    assert logged["val_loss"] == pytest.approx(logged["val_sl_loss"])


def test_pseudo_box_pass_adds_regions_inside_the_box(clip_dir: Path) -> None:
    method = _method(clip_dir)
    regions = torch.full((8, 16, 16), -1)
    regions[0:6, 0:8, 0:8] = 0  # A, with B inside its box
    regions[2:4, 2:4, 2:4] = 1  # B: wholly inside A's box
    regions[4:8, 6:12, 6:12] = 2  # C: overlaps A's box, mostly outside it
    regions[4:6, 6:8, 6:8] = 0
    seen = set()
    for seed in range(12):
        generator = torch.Generator().manual_seed(seed)
        target, box, points = method._pseudo_target(regions, True, generator)
        assert points is None and box is not None
        picked = {int(v) for v in torch.unique(regions[target])}
        seen.add(min(picked))
        if 0 in picked:
            assert picked == {0, 1}
        else:
            assert len(picked) == 1
    assert 0 in seen


def test_dice_bce_matches_hand_arithmetic() -> None:
    logits = torch.zeros(1, 1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0] = 1  # 4 of 8 voxels
    # p = 0.5 everywhere: 1 - 2 * 2 / (4 + 4 + 1), plus BCE = ln 2
    assert dice_bce(logits, target).item() == pytest.approx(1 - 4 / 9 + math.log(2), rel=1e-6)
    valid = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    valid[0, 0, 0] = True  # two target voxels only: 1 - 2 * 1 / (1 + 2 + 1) + ln 2
    assert dice_bce(logits, target, valid).item() == pytest.approx(0.5 + math.log(2), rel=1e-6)
    # per slice (the original's squeeze at batch 1): slice 0 1 - 2 * 2 / (2 + 4 + 1), slice 1
    # 1 - 0 / (2 + 0 + 1) = 1; their mean, plus the same BCE
    per_slice = dice_bce(logits, target, per_slice=True).item()
    assert per_slice == pytest.approx((2 - 4 / 7) / 2 + math.log(2), rel=1e-6)


def test_warmup_cosine_schedule(clip_dir: Path) -> None:
    method = _method(clip_dir, lr_schedule="warmup_cosine", warmup_epochs=4, lr=1e-4)
    method._trainer = SimpleNamespace(max_epochs=12)
    config = method.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(12):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.step()
    # SegVol's warm-up from 0 over 4 epochs: 0, 1/3, 2/3, 1, then the cosine from 1
    assert rates[:5] == pytest.approx([0.0, 1e-4 / 3, 2e-4 / 3, 1e-4, 1e-4])
    assert rates[8] == pytest.approx(1e-4 * 0.5)
    assert all(b < a for a, b in itertools.pairwise(rates[4:]))


def test_bad_options_are_refused(clip_dir: Path) -> None:
    with pytest.raises(ValueError, match="prompt"):
        _method(clip_dir, prompt="mask")
    with pytest.raises(ValueError, match="overlap"):
        ZoomOptions(overlap=1.0)
    for loss in ({"prompt_combos": ("text", "scribble")}, {"ssl_weight": -1.0}):
        with pytest.raises(ValueError, match=next(iter(loss))):
            SegVolLoss(**loss)


def test_segment_text_and_predict_without_label(clip_dir: Path) -> None:
    method = _method(clip_dir).eval()
    seg = method.segment_text(torch.rand(20, 40, 36), [1.0] * 3, {2: "liver", 5: "kidney"}, {})
    assert seg.shape == (20, 40, 36) and set(torch.unique(seg).tolist()) <= {0, 2, 5}
    method.prompt = "box"
    with pytest.raises(DataError, match="no label"):
        method._class_prompts(None, [1], ["liver"], torch.Generator(), "case_x")


def test_normalize_none_keeps_unit_volumes_and_warns_on_raw_ones(clip_dir: Path) -> None:
    method = _method(clip_dir, normalize="none")
    unit = torch.rand(1, 1, 4, 8, 8)
    assert torch.equal(method._normalize(unit), unit)
    with pytest.warns(UserWarning, match="normalize: foreground"):
        method._normalize(unit * 255)
    with pytest.raises(ValueError, match="normalize"):
        _method(clip_dir, normalize="zscore")


def test_text_tokens_are_cached_per_prompt_until_the_next_run(clip_dir: Path) -> None:
    method = _method(clip_dir).eval()
    asked: list[list[str]] = []
    embed = method.model.embed_text

    def recording(names):
        asked.append(list(names))
        return embed(names)

    method.model.embed_text = recording  # type: ignore[method-assign]
    image = torch.rand(16, 32, 32)
    first = method.segment_text(image, [1.0] * 3, {1: "liver", 2: "kidney"}, {})
    again = method.segment_text(image, [1.0] * 3, {2: "kidney", 3: "liver", 4: "spleen"}, {})
    assert asked == [["liver", "kidney"], ["spleen"]]  # each string encoded once
    torch.testing.assert_close(method.text_tokens(["liver"]), embed(["liver"]))
    assert first.shape == again.shape == image.shape
    method._clear_text_cache()  # what test / predict epoch starts do
    method.text_tokens(["liver"])
    assert asked[-1] == ["liver"]


def test_segment_interactive_with_uneven_clicks(clip_dir: Path) -> None:
    method = _method(clip_dir).eval()
    box = {"z_min": 2, "z_max": 9, "z_mid": 5, "z_mid_y_min": 4, "z_mid_x_min": 6}
    box |= {"z_mid_y_max": 20, "z_mid_x_max": 25}
    prompts = {
        1: ClassPrompt(box=box, fg=[(5, 10, 10), (6, 12, 12)], bg=[(1, 1, 1)]),
        4: ClassPrompt(fg=[(12, 28, 28)]),  # clicks only: decoded with 5, which has more
        5: ClassPrompt(fg=[(3, 3, 3)], bg=[(10, 10, 10)]),
        7: ClassPrompt(),  # nothing yet: stays background
    }
    seg = method.segment_interactive(torch.rand(14, 30, 34) * 255, [1.0] * 3, prompts, None)
    assert seg.shape == (14, 30, 34) and set(torch.unique(seg).tolist()) <= {0, 1, 4, 5}
    assert cvpr_box(box, torch.device("cpu")).tolist() == [2, 4, 6, 9, 20, 25]


def test_inference_options_from_plain_data(clip_dir: Path) -> None:
    # a config or checkpoint may hand the group over as a dict (segfm test --ckpt_path did)
    method = _method(clip_dir, inference={"zoom_in": False, "overlap": 0.25})
    assert isinstance(method.inference, ZoomOptions)
    assert (method.inference.zoom_in, method.inference.overlap) == (False, 0.25)
