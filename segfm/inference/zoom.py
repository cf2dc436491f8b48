"""SegVol's zoom-out-zoom-in inference: a global pass, then sliding windows over the target.

Follows SegVol's ``inference_demo.py``: the volume is resized to the network's window and
segmented (zoom-out); the bounding box of the global foreground, grown to at least a window,
is then covered with MONAI's ``sliding_window_inference`` (overlap 0.5, constant blending), and
the windows' logits replace the global ones inside it (zoom-in). Differences, each a fix:

- one encoder pass per window decodes every class (the original re-ran both passes per class);
  the windows cover the union of the classes' regions and each class keeps the windows' logits
  inside its own region only;
- a window where a class has no box or point (the global prediction does not reach it) decodes
  that class from its text alone, or keeps the global logits without text, instead of feeding
  SegVol's sentinel box ``[-1] * 6`` as a real prompt;
- prompts are given on the volume's own grid and mapped onto each grid exactly (nearest);
- with a ``cache`` (an :class:`~segfm.inference.cache.EmbeddingCache` store of the volume), the
  global embedding and every zoom-in window's are encoded once per volume: the next prompts on
  the same volume (a click after a box) run the decoder, and the encoder only on windows not
  seen yet.
"""

from __future__ import annotations

from collections.abc import Hashable, MutableMapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import Tensor

from segfm.models.segvol import SegVol
from segfm.prompts.boxes import mask_box


@dataclass
class ClassPrompts:
    """The prompts of one class on the volume's grid.

    Args:
        text: Text token ``[C]`` (:meth:`SegVol.embed_text`), or None.
        box: ``(d0, h0, w0, d1, h1, w1)``, corners inclusive, or None.
        points: Voxel indices ``[P, 3]`` and labels ``[P]`` (1, 0, -1), or None.
    """

    text: Tensor | None = None
    box: Tensor | None = None
    points: tuple[Tensor, Tensor] | None = None


def map_index(index: Tensor, source: Sequence[int], target: Sequence[int]) -> Tensor:
    """Voxel indices ``[..., 3]`` of a grid of ``source`` size to the nearest of ``target``."""
    scale = torch.tensor(target, dtype=torch.float32, device=index.device) / torch.tensor(
        source, dtype=torch.float32, device=index.device
    )
    top = torch.tensor(target, device=index.device) - 1
    return torch.minimum(((index.float() + 0.5) * scale).floor(), top).clamp(min=0)


def _crop_points(
    points: tuple[Tensor, Tensor], lo: Sequence[int], size: Sequence[int]
) -> tuple[Tensor, Tensor] | None:
    """Points inside the window at ``lo`` of ``size``, shifted; None if no positive is inside."""
    coords, labels = points
    start = torch.tensor(lo, device=coords.device, dtype=coords.dtype)
    shifted = coords - start
    inside = ((shifted >= 0) & (shifted < torch.tensor(size, device=coords.device))).all(-1)
    keep = inside & (labels >= 0)
    if not bool((keep & (labels == 1)).any()):
        return None
    labels = torch.where(keep, labels, torch.full_like(labels, -1.0))
    return torch.where(keep[:, None], shifted, torch.zeros_like(shifted)), labels


def _stack_points(points: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Point sets of different lengths as ``[N, P, 3]`` and ``[N, P]``, padded with label -1.

    Classes prompted together may have different numbers of clicks (the interactive protocol
    adds one per class only where it finds an error); SAM's "not a point" padding evens them.
    """
    size = max(c.shape[0] for c, _ in points)
    coords = torch.stack([F.pad(c, (0, 0, 0, size - c.shape[0])) for c, _ in points])
    labels = torch.stack([F.pad(v, (0, size - v.shape[0]), value=-1.0) for _, v in points])
    return coords, labels


def _decode_groups(
    model: SegVol, embedding: Tensor, prompts: list[ClassPrompts]
) -> dict[int, Tensor]:
    """Low-res logits of the classes that have a prompt, batched by prompt kinds."""
    groups: dict[tuple[bool, bool, bool], list[int]] = {}
    for k, p in enumerate(prompts):
        kinds = (p.text is not None, p.box is not None, p.points is not None)
        if any(kinds):
            groups.setdefault(kinds, []).append(k)
    out: dict[int, Tensor] = {}
    for (has_text, has_box, has_points), ks in groups.items():
        text = torch.stack([prompts[k].text for k in ks]) if has_text else None  # type: ignore[misc]
        boxes = torch.stack([prompts[k].box for k in ks]) if has_box else None  # type: ignore[misc]
        points = _stack_points([prompts[k].points for k in ks]) if has_points else None  # type: ignore[misc]
        rows = embedding.expand(len(ks), *embedding.shape[1:])
        low = model.decode(rows, text, points, boxes)
        out |= {k: low[i] for i, k in enumerate(ks)}
    return out


def _roi(foreground: Tensor, window: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """SegVol's ROI: the foreground's box grown to at least ``window``, inside the volume."""
    box = mask_box(foreground)
    if box is None:
        return None
    lo, hi = box[:3].long().tolist(), (box[3:].long() + 1).tolist()
    for a, (n, w) in enumerate(zip(foreground.shape, window, strict=True)):
        grow = max(0, w - (hi[a] - lo[a]))
        lo[a], hi[a] = max(0, lo[a] - grow // 2), min(n, hi[a] + grow - grow // 2)
    return lo, hi


@dataclass(frozen=True)
class ZoomOptions:
    """How zoom-out-zoom-in runs (SegVol's inference settings).

    Attributes:
        zoom_in: Run the zoom-in pass after the global one (False: the global pass only).
        overlap: Overlap of the zoom-in sliding windows, in [0, 1).
        threshold: Probability of foreground, in (0, 1).
        sw_batch_size: Windows encoded together.
    """

    zoom_in: bool = True
    overlap: float = 0.5
    threshold: float = 0.5
    sw_batch_size: int = 1

    def __post_init__(self) -> None:
        """Check the values."""
        checks = {
            "overlap": 0 <= self.overlap < 1,
            "threshold": 0 < self.threshold < 1,
            "sw_batch_size": self.sw_batch_size >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                msg = f"invalid inference.{name}: {getattr(self, name)!r} (see ZoomOptions)"
                raise ValueError(msg)


@torch.no_grad()
def zoom_out_zoom_in(
    model: SegVol,
    image: Tensor,
    prompts: list[ClassPrompts],
    options: ZoomOptions | None = None,
    cache: MutableMapping[Hashable, Tensor] | None = None,
) -> Tensor:
    """Segment the prompted classes of one volume.

    Args:
        model: The network (in evaluation mode).
        image: Intensities ``[1, D, H, W]`` of any size.
        prompts: One entry per class, each with at least one prompt.
        options: Zoom-in pass, window overlap, threshold and window batch (defaults: SegVol's).
        cache: Embeddings of this volume by window, kept between calls (None: encode all).

    Returns:
        Logits ``[K, D, H, W]``, one channel per entry of ``prompts``.
    """
    options = options or ZoomOptions()
    overlap, zoom_in = options.overlap, options.zoom_in
    threshold, sw_batch_size = options.threshold, options.sw_batch_size
    if not prompts:
        return image.new_zeros((0, *image.shape[1:]))
    shape, window = tuple(image.shape[1:]), model.roi_size
    # zoom-out: the whole volume at the window size, prompts mapped onto it
    small = F.interpolate(image[None].float(), size=window, mode="nearest-exact")
    mapped = []
    for p in prompts:
        box = None
        if p.box is not None:
            box = torch.cat(
                [map_index(p.box[:3], shape, window), map_index(p.box[3:], shape, window)]
            )
        points = None
        if p.points is not None:
            points = (map_index(p.points[0], shape, window), p.points[1])
        mapped.append(ClassPrompts(p.text, box, points))
    cache = {} if cache is None else cache
    if ("global",) not in cache:
        cache[("global",)] = model.encode(small)
    low = _decode_groups(model, cache[("global",)], mapped)
    glob = torch.stack([low[k] for k in range(len(prompts))])  # [K, 1, *4g]
    logits = F.interpolate(model.postprocess(glob, window), size=shape, mode="nearest")[:, 0]
    if not zoom_in:
        return logits
    # zoom-in over the union of the classes' regions, each class keeps its own region
    fg = torch.sigmoid(logits) > threshold  # [K, *S]
    regions = [_roi(fg[k], window) for k in range(len(prompts))]
    if all(r is None for r in regions):
        return logits
    lo = [min(r[0][a] for r in regions if r is not None) for a in range(3)]
    hi = [max(r[1][a] for r in regions if r is not None) for a in range(3)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    pad = [max(0, w - (b - a)) for a, b, w in zip(lo, hi, window, strict=True)]
    flat_pad = [v for p in reversed(pad) for v in (0, p)]  # F.pad wants the last axis first
    roi_image = F.pad(image[(slice(None), *crop)], flat_pad)[None]  # [1, 1, *crop]
    roi_fg = F.pad(fg[(slice(None), *crop)], flat_pad)
    roi_global = F.pad(logits[(slice(None), *crop)], flat_pad)

    def encoded(windows: Tensor, coords: list[list[slice]]) -> list[Tensor]:
        # a window's pixels are those of the volume between these corners, zero-padded; plain
        # ints (MONAI's are numpy's), so the keys load with torch.load(weights_only=True)
        keys = [
            (
                "window",
                tuple(int(a + s.start) for a, s in zip(lo, where[2:], strict=True)),
                tuple(int(min(b, a + s.stop)) for a, b, s in zip(lo, hi, where[2:], strict=True)),
            )
            for where in coords
        ]
        missing = [w for w, key in enumerate(keys) if key not in cache]
        if missing:
            fresh = model.encode(windows[missing])
            for i, w in enumerate(missing):
                cache[keys[w]] = fresh[i : i + 1]
        return [cache[key] for key in keys]

    def predictor(windows: Tensor, coords: list[list[slice]]) -> Tensor:
        embeddings = encoded(windows, coords)
        out = []
        for w, where in enumerate(coords):
            spatial = where[2:]
            starts = [s.start for s in spatial]
            local = []
            for k, p in enumerate(prompts):
                box = None
                if p.box is not None:  # the zoom-out prediction's box in this window
                    box = mask_box(roi_fg[(k, *spatial)])
                points = (
                    None
                    if p.points is None
                    else _crop_points(
                        (p.points[0] - torch.tensor(lo, device=image.device), p.points[1]),
                        starts,
                        window,
                    )
                )
                local.append(ClassPrompts(p.text, box, points))
            low = _decode_groups(model, embeddings[w], local)
            fallback = roi_global[(slice(None), *spatial)]
            full = [
                model.postprocess(low[k][None], window)[0, 0] if k in low else fallback[k]
                for k in range(len(prompts))
            ]
            out.append(torch.stack(full))
        return torch.stack(out)  # [n, K, *window]

    roi_logits = sliding_window_inference(
        roi_image.float(),
        window,
        sw_batch_size,
        predictor,
        overlap=overlap,
        mode="constant",
        with_coord=True,
    )[0]  # type: ignore[index]
    for k, region in enumerate(regions):
        if region is None:
            continue
        own = tuple(slice(a, b) for a, b in zip(*region, strict=True))
        rel = tuple(slice(a - o, b - o) for a, b, o in zip(*region, lo, strict=True))
        logits[(k, *own)] = roi_logits[(k, *rel)]
    return logits
