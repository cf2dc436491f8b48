"""SAM++'s semantic loss: organ prototypes contrasted against every voxel (SupConMeanLoss)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SupConMeanLoss(nn.Module):
    """Supervised contrastive loss of class prototypes against voxels.

    As ``SupConMeanLoss`` in ``sam/models/losses/supconloss.py`` of the original: the prototype of
    each label > 0 is the mean embedding of its voxels (over both images of the pair); each
    prototype's similarities to all voxels, divided by ``temperature``, are soft-maxed over the
    voxels, and the loss is minus the mean log-probability of the voxels of its own label,
    averaged over prototypes and scaled by ``base_temperature``.

    Args:
        temperature: Softmax temperature (0.1 in SAM++).
        base_temperature: Scale of the loss (1.0).
    """

    def __init__(self, temperature: float = 0.1, base_temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            msg = f"temperatures must be > 0, got {temperature}, {base_temperature}"
            raise ValueError(msg)
        self.temperature, self.base_temperature = temperature, base_temperature

    @staticmethod
    def prototypes(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mean embedding ``[K, E]`` of each label > 0 and those labels ``[K]``."""
        ids = torch.unique(labels)
        ids = ids[ids > 0]
        means = [features[labels == i].mean(dim=0) for i in ids]
        if not means:
            return features.new_zeros(0, features.shape[1]), ids
        return torch.stack(means), ids

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """The loss.

        Args:
            features: Voxel embeddings ``[N, E]`` (both images concatenated).
            labels: Their labels ``[N]`` (0 = background, a negative only).

        Returns:
            The loss (0-d); 0 when no label > 0 is present.
        """
        if features.ndim != 2 or labels.shape != features.shape[:1]:
            shapes = f"{tuple(features.shape)}, {tuple(labels.shape)}"
            msg = f"need features [N, E] and labels [N], got {shapes}"
            raise ValueError(msg)
        protos, ids = self.prototypes(features, labels)
        if ids.numel() == 0:
            return features.sum() * 0.0
        log_prob = torch.log_softmax(protos @ features.T / self.temperature, dim=1)  # [K, N]
        positive = (ids[:, None] == labels[None]).float()
        mean_log_prob = (positive * log_prob).sum(1) / positive.sum(1)
        return -self.base_temperature * mean_log_prob.mean()
