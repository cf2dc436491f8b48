"""Reference of the official SAM training loss, in plain torch, statement by statement.

A re-implementation (not a copy) of ``Sam.loss``, ``Sam.single_fine_loss`` and
``Sam.coarse_loss`` of alibaba-damo-academy/self-supervised-anatomical-embedding-v2 @035bbfc,
``sam/models/frameworks/sam.py``:

- lines 107-141 ``loss``: positions (``meshgrid``, channels y, x, z in mm) interpolated
  trilinearly to the fine (/2) and coarse (/4, /16, /16) grids, validity by nearest
  interpolation; the fine loss averaged over the pairs, plus the coarse loss;
- lines 143-209 ``single_fine_loss``, views without overlap: random view-1 points are their own
  positives, against the top ``after_select_neg_number`` of their view-1 similarities times the
  exclusion mask;
- lines 210-387, overlapping views: candidate queries inside the bounding box of both views'
  valid voxels (``pre_select_pos_number`` drawn), positives within ``positive_distance`` among
  all other-view voxels (or within 0.5 mm of the closest when none), ``after_select_pos_number``
  drawn per direction; negatives ranked by (fine + coarse similarity) x mask (0 within
  ``ignore_distance``), top ``pre_select_neg_number``, ``after_select_neg_number`` drawn per
  query, logits their fine similarities; cross-entropy at ``temperature`` over both directions;
- lines 389-565 ``coarse_loss``: positives within ``coarse_positive_distance`` and |dz| < 8 mm
  (view 1 to 2, hard-coded) or < ``coarse_z_thres`` (view 2 to 1); negatives similarity x mask
  (0 within ``coarse_ignore_distance``), top ``coarse_pre_select_neg_number``,
  ``coarse_after_select_neg_number`` drawn per query, plus ``coarse_global_select_number`` voxels
  of the other pairs per direction; the per-pair losses summed and divided by the pair count.

The settings (``train_cfg``) are those of ``configs/sam/sam_NIHLN.py`` lines 65-79
(:data:`NIHLN`). Every ``torch.randperm`` takes the injected ``generator`` (the original drew
from the global generator), in the original's order.

Deliberate differences: the channel count is read from the input (the original hard-codes
128); the loss runs on the CPU in the inputs' precision (the original cast positions, validity
and embeddings to float16 and ran under CUDA autocast); the other pairs' voxel indices are sorted
(the original listed a ``set`` difference, which CPython iterates in ascending order for these
small integers).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import linalg as LA

NIHLN = SimpleNamespace(
    pre_select_pos_number=2000,
    after_select_pos_number=100,
    pre_select_neg_number=2000,
    after_select_neg_number=500,
    positive_distance=2.0,
    ignore_distance=20.0,
    coarse_positive_distance=25.0,
    coarse_ignore_distance=5.0,
    coarse_z_thres=6.0,
    coarse_pre_select_neg_number=250,
    coarse_after_select_neg_number=200,
    coarse_global_select_number=1000,
    temperature=0.5,
)


def meshgrid3d(shape: tuple[int, ...]) -> Tensor:
    """Voxel indices ``[D, H, W, 3]`` (z, y, x) of a grid, as ``Sam.meshgrid3d``."""
    axes = [torch.linspace(0.0, n - 1, n) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), 3)


def _mask(dist: Tensor, radius: float) -> Tensor:
    """Ones, with 0 where ``dist < radius`` (the original's ``use_mask``)."""
    use_mask = torch.ones_like(dist)
    ind = torch.stack(torch.where(dist < radius))
    use_mask[ind[0, :], ind[1, :]] = 0
    return use_mask


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """``LA.norm`` of all differences of ``[3, n]`` and ``[3, m]`` points: ``[n, m]``."""
    return LA.norm(a.view(-1, a.shape[1], 1) - b.view(-1, 1, b.shape[1]), dim=0)


def sam_loss(
    feats: list[Tensor],
    meshgrid: Tensor,
    valid: Tensor,
    cfg: SimpleNamespace = NIHLN,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """``Sam.loss``: the fine loss averaged over pairs plus the coarse loss.

    Args:
        feats: ``[fine, coarse]`` embeddings ``[N, C, D/2, H/2, W/2]``, ``[N, C, D/4, H/16,
            W/16]`` (views ``2i`` and ``2i + 1`` form pair ``i``; spatial axes z, y, x).
        meshgrid: Positions ``[N, 3, D, H, W]`` in mm, channels (y, x, z).
        valid: ``[N, 1, D, H, W]`` (1 inside the source volume).
        cfg: ``train_cfg``.
        generator: Source of every random permutation.

    Returns:
        ``loss``, ``fine_loss`` and ``coarse_loss`` (0-d).
    """
    n, _, d, h, w = meshgrid.shape
    output_half = F.interpolate(meshgrid, size=(d // 2, h // 2, w // 2), mode="trilinear",
                                align_corners=False)  # fmt: skip
    output_416 = F.interpolate(meshgrid, size=(d // 4, h // 16, w // 16), mode="trilinear",
                               align_corners=False)  # fmt: skip
    valid_half = F.interpolate(valid, size=(d // 2, h // 2, w // 2))
    valid_416 = F.interpolate(valid, size=(d // 4, h // 16, w // 16))
    fine_loss = 0.0
    for i in range(n // 2):
        s = slice(2 * i, 2 * i + 2)
        fine_loss = fine_loss + single_fine_loss(
            feats[0][s], feats[1][s], output_half[s], valid_half[s], cfg, generator
        )
    fine_loss = fine_loss / (n // 2)
    coarse_loss = coarse_loss_fn(feats[1], output_416, valid_416, cfg, generator)
    return {"loss": fine_loss + coarse_loss, "fine_loss": fine_loss, "coarse_loss": coarse_loss}


def single_fine_loss(
    fine_feat: Tensor,
    coarse_feat: Tensor,
    fine_grid: Tensor,
    fine_vaild: Tensor,
    cfg: SimpleNamespace,
    generator: torch.Generator | None,
) -> Tensor:
    """``Sam.single_fine_loss`` of one pair (lines 143-387)."""
    ch = fine_feat.shape[1]
    g = generator
    view_1_fine = fine_feat[0].reshape(ch, -1)
    view_2_fine = fine_feat[1].reshape(ch, -1)
    fine_local_grid = meshgrid3d(fine_feat.shape[2:])  # z y x
    box = []
    for axis in range(3):
        lo = [fine_grid[v, axis, fine_vaild[v, 0] > 0].min() for v in (0, 1)]
        hi = [fine_grid[v, axis, fine_vaild[v, 0] > 0].max() for v in (0, 1)]
        box.append([max(lo), min(hi)])
    if any(a > b for a, b in box):  # no overlap
        index_use = torch.randperm(fine_local_grid[..., 0].numel(), generator=g)
        q_index = index_use[: cfg.after_select_pos_number]
        q_loc = fine_local_grid.view(-1, 3)[q_index, :].long()
        pos1_mm_use = fine_grid[0, :, q_loc[:, 0], q_loc[:, 1], q_loc[:, 2]]
        pos1_mm_all = fine_grid[0].reshape(3, -1)
        use_mask_1_1 = _mask(_dist(pos1_mm_use, pos1_mm_all), cfg.ignore_distance)
        q_fine_feat = fine_feat[0, :, q_loc[:, 0], q_loc[:, 1], q_loc[:, 2]].permute(1, 0)
        neg_fine = torch.einsum("nc,ck->nk", q_fine_feat, view_1_fine) * use_mask_1_1
        inner = torch.einsum("nc,nc->n", q_fine_feat, q_fine_feat).view(-1, 1)
        neg_fine_use_index = neg_fine.topk(cfg.after_select_neg_number)[1]
        neg_fine_use = neg_fine.gather(1, neg_fine_use_index)
        logits = torch.cat([inner, neg_fine_use], dim=1) / cfg.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        return F.cross_entropy(logits, labels)
    inside = []
    for v in (0, 1):
        sub = fine_vaild[v, 0] > 0
        for axis in range(3):
            sub = sub & (fine_grid[v, axis] >= box[axis][0]) & (fine_grid[v, axis] <= box[axis][1])
        inside.append(sub)
    pos1_index_overlap = fine_local_grid[inside[0], :]
    pos2_index_overlap = fine_local_grid[inside[1], :]
    pos_index_all = fine_local_grid.view(-1, 3)
    pos1_mm_overlap = fine_grid[0, :, inside[0]]
    pos2_mm_overlap = fine_grid[1, :, inside[1]]
    points1_select = torch.randperm(pos1_mm_overlap.shape[1], generator=g)[
        : cfg.pre_select_pos_number
    ]
    points2_select = torch.randperm(pos2_mm_overlap.shape[1], generator=g)[
        : cfg.pre_select_pos_number
    ]
    pos1_use = pos1_mm_overlap[:, points1_select]
    pos2_use = pos2_mm_overlap[:, points2_select]
    pos1_mm_all = fine_grid[0].reshape(3, -1)
    pos2_mm_all = fine_grid[1].reshape(3, -1)
    with torch.no_grad():
        dist1_1 = _dist(pos1_use, pos1_mm_all)
        dist1_2 = _dist(pos1_use, pos2_mm_all)
        dist2_1 = _dist(pos2_use, pos1_mm_all)
        dist2_2 = _dist(pos2_use, pos2_mm_all)
    pos1 = torch.unique(torch.where(dist1_2 < cfg.positive_distance)[0])
    pos2 = torch.unique(torch.where(dist2_1 < cfg.positive_distance)[0])
    if pos1.shape[0] == 0:
        pos1 = torch.unique(torch.where(dist1_2 < dist1_2.min() + 0.5)[0])
        pos2 = torch.unique(torch.where(dist2_1 < dist2_1.min() + 0.5)[0])
    if pos1.shape[0] > cfg.after_select_pos_number:
        pos1 = pos1[torch.randperm(pos1.shape[0], generator=g)[: cfg.after_select_pos_number]]
    if pos2.shape[0] > cfg.after_select_pos_number:
        pos2 = pos2[torch.randperm(pos2.shape[0], generator=g)[: cfg.after_select_pos_number]]
    dist1_1, dist1_2 = dist1_1[pos1, :], dist1_2[pos1, :]
    dist2_1, dist2_2 = dist2_1[pos2, :], dist2_2[pos2, :]
    pos1_source, pos2_source = points1_select[pos1], points2_select[pos2]
    pos1_target, pos2_target = dist1_2.min(dim=1)[1], dist2_1.min(dim=1)[1]
    r = cfg.ignore_distance
    neg_mask1 = torch.cat([_mask(dist1_1, r), _mask(dist1_2, r)], dim=1)
    neg_mask2 = torch.cat([_mask(dist2_1, r), _mask(dist2_2, r)], dim=1)
    coarse_feat_resample = F.interpolate(coarse_feat, fine_feat.shape[2:], mode="trilinear",
                                         align_corners=False)  # fmt: skip
    coarse_feat_resample = F.normalize(coarse_feat_resample, dim=1)
    view_1_coarse = coarse_feat_resample[0].reshape(ch, -1)
    view_2_coarse = coarse_feat_resample[1].reshape(ch, -1)
    q1 = pos1_index_overlap[pos1_source].long()
    k1 = pos_index_all[pos1_target].long()
    q2 = pos2_index_overlap[pos2_source].long()
    k2 = pos_index_all[pos2_target].long()
    q_view1_fine_feat = fine_feat[0, :, q1[:, 0], q1[:, 1], q1[:, 2]].transpose(0, 1)
    k_view1_fine_feat = fine_feat[1, :, k1[:, 0], k1[:, 1], k1[:, 2]].transpose(0, 1)
    q_view2_fine_feat = fine_feat[1, :, q2[:, 0], q2[:, 1], q2[:, 2]].transpose(0, 1)
    k_view2_fine_feat = fine_feat[0, :, k2[:, 0], k2[:, 1], k2[:, 2]].transpose(0, 1)
    q_view1_coarse_feat = coarse_feat_resample[0, :, q1[:, 0], q1[:, 1], q1[:, 2]].transpose(0, 1)
    q_view2_coarse_feat = coarse_feat_resample[1, :, q2[:, 0], q2[:, 1], q2[:, 2]].transpose(0, 1)
    inner_view1 = torch.einsum("nc,nc->n", q_view1_fine_feat, k_view1_fine_feat).view(-1, 1)
    inner_view2 = torch.einsum("nc,nc->n", q_view2_fine_feat, k_view2_fine_feat).view(-1, 1)
    both_fine = torch.cat((view_1_fine, view_2_fine), dim=1)
    both_coarse = torch.cat((view_1_coarse, view_2_coarse), dim=1)
    neg_fine_view1 = torch.einsum("nc,ck->nk", q_view1_fine_feat, both_fine)
    neg_coarse_view1 = torch.einsum("nc,ck->nk", q_view1_coarse_feat, both_coarse)
    neg_fine_view2 = torch.einsum("nc,ck->nk", q_view2_fine_feat, both_fine)
    neg_coarse_view2 = torch.einsum("nc,ck->nk", q_view2_coarse_feat, both_coarse)
    neg_all_view1 = (neg_fine_view1 + neg_coarse_view1) * neg_mask1
    neg_all_view2 = (neg_fine_view2 + neg_coarse_view2) * neg_mask2
    neg_candidate_view1_index = neg_all_view1.topk(cfg.pre_select_neg_number, dim=1)[1]
    neg_candidate_view2_index = neg_all_view2.topk(cfg.pre_select_neg_number, dim=1)[1]
    neg_use = []
    for cand, neg_fine in (
        (neg_candidate_view1_index, neg_fine_view1),
        (neg_candidate_view2_index, neg_fine_view2),
    ):
        rows = torch.zeros((cand.shape[0], cfg.after_select_neg_number))
        for i in range(cand.shape[0]):
            use_index = cand[i, torch.randperm(cand[i, :].shape[0], generator=g)[
                : cfg.after_select_neg_number]]  # fmt: skip
            rows[i, :] = neg_fine[i, use_index]  # the unmasked fine similarity
        neg_use.append(rows)
    logits_view1 = torch.cat([inner_view1, neg_use[0]], dim=1)
    logits_view2 = torch.cat([inner_view2, neg_use[1]], dim=1)
    logits = torch.cat([logits_view1, logits_view2], dim=0) / cfg.temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels)


def coarse_loss_fn(
    coarse_feat: Tensor,
    coarse_grid: Tensor,
    coarse_valid: Tensor,
    cfg: SimpleNamespace,
    generator: torch.Generator | None,
) -> Tensor:
    """``Sam.coarse_loss`` of a batch of pairs (lines 389-565; validity is not used)."""
    g = generator
    b, ch = coarse_feat.shape[:2]
    coarse_feat_flatten = coarse_feat.reshape(b, ch, -1).permute(1, 0, 2).reshape(ch, -1)
    total = 0.0
    for i in range(b // 2):
        view1_feat_coarse = coarse_feat[2 * i].reshape(ch, -1)
        view2_feat_coarse = coarse_feat[2 * i + 1].reshape(ch, -1)
        view1_loc_coarse = coarse_grid[2 * i].reshape(3, -1)
        view2_loc_coarse = coarse_grid[2 * i + 1].reshape(3, -1)
        m = view1_feat_coarse.shape[1]
        global_use_index_list = [j + 2 * i * m for j in range(2 * m)]
        global_index_list = list(range(b * m))
        global_search_index_list = sorted(set(global_index_list) - set(global_use_index_list))
        global_search_index = torch.tensor(global_search_index_list, dtype=torch.long)
        with torch.no_grad():
            dist = _dist(view1_loc_coarse, view2_loc_coarse)
            dist_z_1 = _dist(view1_loc_coarse[2:3], view2_loc_coarse[2:3])
            dist_z_2 = _dist(view2_loc_coarse[2:3], view1_loc_coarse[2:3])
            dist_1_1 = _dist(view1_loc_coarse, view1_loc_coarse)
            dist_2_2 = _dist(view2_loc_coarse, view2_loc_coarse)
        pos_view1_coarse_can = torch.unique(torch.where(dist < cfg.coarse_positive_distance)[0])
        key_view1_coarse_can = dist[pos_view1_coarse_can].min(dim=1)[1]
        ok1 = dist_z_1[pos_view1_coarse_can, key_view1_coarse_can] < 8
        pos_view1_coarse, key_view1_coarse = pos_view1_coarse_can[ok1], key_view1_coarse_can[ok1]
        dist_t = dist.transpose(0, 1)
        pos_view2_coarse_can = torch.unique(torch.where(dist_t < cfg.coarse_positive_distance)[0])
        key_view2_coarse_can = dist_t[pos_view2_coarse_can].min(dim=1)[1]
        ok2 = dist_z_2[pos_view2_coarse_can, key_view2_coarse_can] < cfg.coarse_z_thres
        pos_view2_coarse, key_view2_coarse = pos_view2_coarse_can[ok2], key_view2_coarse_can[ok2]
        both = torch.cat((view1_feat_coarse, view2_feat_coarse), dim=1)
        if pos_view1_coarse.shape[0] > 0:
            q_view1 = view1_feat_coarse[:, pos_view1_coarse].transpose(0, 1)
            k_view1 = view2_feat_coarse[:, key_view1_coarse].transpose(0, 1)
            q_view2 = view2_feat_coarse[:, pos_view2_coarse].transpose(0, 1)
            k_view2 = view1_feat_coarse[:, key_view2_coarse].transpose(0, 1)
            r = cfg.coarse_ignore_distance
            neg_mask1 = torch.cat(
                [_mask(dist_1_1[pos_view1_coarse], r), _mask(dist[pos_view1_coarse], r)], dim=1
            )
            neg_mask2 = torch.cat(
                [_mask(dist_t[pos_view2_coarse], r), _mask(dist_2_2[pos_view2_coarse], r)], dim=1
            )
            inner_view1 = torch.einsum("nc,nc->n", q_view1, k_view1).view(-1, 1)
            inner_view2 = torch.einsum("nc,nc->n", q_view2, k_view2).view(-1, 1)
            neg_coarse_view1 = torch.einsum("nc,ck->nk", q_view1, both) * neg_mask1
            neg_coarse_view2 = torch.einsum("nc,ck->nk", q_view2, both) * neg_mask2
            neg_use = []
            for neg in (neg_coarse_view1, neg_coarse_view2):
                cand = neg.topk(cfg.coarse_pre_select_neg_number, dim=1)[1]
                rows = torch.zeros((neg.shape[0], cfg.coarse_after_select_neg_number))
                for j in range(neg.shape[0]):
                    use_index = cand[j, torch.randperm(cand.shape[1], generator=g)][
                        : cfg.coarse_after_select_neg_number
                    ]
                    rows[j, : use_index.shape[0]] = neg[j, use_index]  # masked: 0 if excluded
                neg_use.append(rows)
            glob = []
            for q in (q_view1, q_view2):
                index = global_search_index[
                    torch.randperm(len(global_search_index_list), generator=g)[
                        : cfg.coarse_global_select_number
                    ]
                ]
                glob.append(torch.einsum("nc,ck->nk", q, coarse_feat_flatten[:, index]))
            logits_view1 = torch.cat([inner_view1, neg_use[0], glob[0]], dim=1)
            logits_view2 = torch.cat([inner_view2, neg_use[1], glob[1]], dim=1)
        else:  # no positive: each voxel against its own view pair (itself first) and the others
            glob = []
            for _ in range(2):
                index = global_search_index[
                    torch.randperm(len(global_search_index_list), generator=g)[
                        : cfg.coarse_global_select_number
                    ]
                ]
                glob.append(coarse_feat_flatten[:, index])
            k = cfg.coarse_after_select_neg_number + 1
            logits_view1 = torch.cat([
                torch.einsum("nc,ck->nk", view1_feat_coarse.T, both).topk(k, dim=1)[0],
                torch.einsum("nc,ck->nk", view1_feat_coarse.T, glob[0]),
            ], dim=1)  # fmt: skip
            logits_view2 = torch.cat([
                torch.einsum("nc,ck->nk", view2_feat_coarse.T, both).topk(k, dim=1)[0],
                torch.einsum("nc,ck->nk", view2_feat_coarse.T, glob[1]),
            ], dim=1)  # fmt: skip
        logits = torch.cat([logits_view1, logits_view2], dim=0) / cfg.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        total = total + F.cross_entropy(logits, labels)
    return total / (b / 2)


def sam_pp_semantic_loss(
    feats: list[list[Tensor]], masks: list[Tensor], temperature: float = 0.1
) -> Tensor:
    """SAM++'s inter-volume step: ``loss_inter`` and ``single_inter_loss``.

    ``sam/models/frameworks/sam_v2_uniform_cross_volume_mask_dual_head_mean_vector.py`` lines
    95-130 (``forward_train``: with ``np.random.rand() < 0.4`` the labelled images are embedded
    one at a time, ``extract_feat(image.unsqueeze(0))``, and this loss replaces the SAM loss),
    162-195 (``loss_inter``, ``single_inter_loss``) and 663-673 (``get_mean_vector``), with
    ``SupConMeanLoss.forward`` of ``sam/models/losses/supconloss.py`` lines 328-385
    (``temperature`` 0.1 and ``base_temperature`` 1.0 in ``configs/samv2/samv2_NIHLN.py``).

    Args:
        feats: Per image (pairs ``2i``, ``2i + 1``), the outputs ``[fine, coarse, semantic]`` of
            the network run on that image alone (each ``[1, C, d, h, w]``).
        masks: Per image, its label map ``[1, D, H, W]`` (0 = background).
        temperature: SupConMean temperature.

    Returns:
        The loss (0-d), averaged over the pairs.
    """
    total = 0.0
    n = len(feats)
    for i in range(n // 2):
        views, labels = [], []
        for j in (2 * i, 2 * i + 1):
            sem = feats[j][2]
            views.append(sem.reshape(sem.shape[1], -1).unsqueeze(1).permute(2, 1, 0))  # [N, 1, C]
            mask = F.interpolate(masks[j].float().unsqueeze(0), size=sem.shape[2:]).view(-1)
            labels.append(mask)
        fine_feats, fine_labels = torch.cat(views, dim=0), torch.cat(labels, dim=0)
        # get_mean_vector
        organs = [label for label in torch.unique(fine_labels).tolist() if label > 0]
        protos = torch.stack(
            [fine_feats[torch.where(fine_labels == label)[0], 0, :].mean(dim=0) for label in organs]
        )
        proto_labels = torch.tensor(organs)
        # SupConMeanLoss.forward
        mask_p_f = torch.eq(proto_labels.view(-1, 1), fine_labels.view(-1, 1).T).float()
        features = fine_feats.squeeze(1)
        dots = torch.matmul(protos, features.T) / temperature
        logits = dots - dots.max(dim=1, keepdim=True)[0].max().detach()
        log_prob = logits - torch.log(torch.exp(logits).sum(1, keepdim=True))
        uses = mask_p_f.sum(1) > 0
        mask_p_f, log_prob = mask_p_f[uses, :], log_prob[uses, :]
        mean_log_prob_pos = (mask_p_f * log_prob).sum(1) / mask_p_f.sum(1)
        total = total + (-1.0 * mean_log_prob_pos).mean()
    return total / (n // 2)
