"""The training augmentation of BiomedParse v2's loader, without its uint8 wrap-arounds.

The original (``src/datasets/biomedparse_dataset.py``, ``DataAugmentation``) works on the 8-bit
RGB slice and its label; segfm's :class:`SliceAugment` does the same on tensors. With probability
``prob`` (0.5): a rotation by ``k`` x 90 degrees (``k`` uniform in 0..3), one flip (rows,
columns or both, uniform), then with probability ``prob`` a zoom crop (the slice zero-padded by
``int(2 * 0.1 * side + 1)``, a window of ``1 +- 0.1`` times the side centred within ``+- 0.1``
sides of the centre, resized back: bilinear image, nearest label), an intensity shift uniform in
``+- 0.1 * 255`` (always), with probability ``prob`` Gaussian noise of a standard deviation
uniform in 0..25, and with probability ``prob`` salt-and-pepper noise on 2-10 % of the pixels.
Then, whatever happened before, channels 1 and 2 (the two neighbours) are swapped with
probability ``swap`` (0.5).

Fixed on purpose: the original casts the Gaussian noise to uint8, so negative noise wraps to
values near 255, and never clips the result; here the noise stays signed and the image is clipped
to 0-255. Labels keep their integer ids (the original's uint8 cast wraps instance ids > 255).
Random numbers come from torch's generator, which Lightning seeds per worker.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segfm.transforms.resize import resize


def _uniform(low: float, high: float) -> float:
    """A float drawn uniformly in ``[low, high)``."""
    return low + (high - low) * float(torch.rand(()))


class SliceAugment:
    """Augment a 2.5D slice and its label (see the module docstring).

    Args:
        prob: Probability of the augmentation block, and of each optional step inside it.
        crop_ratio: Zoom and centre jitter of the crop, as a fraction of the side.
        shift_ratio: Intensity shift, as a fraction of 255.
        noise_std: Largest standard deviation of the Gaussian noise.
        salt_pepper: Add salt-and-pepper noise (as the original, which enables it).
        swap: Probability of swapping channels 1 and 2.
    """

    def __init__(
        self,
        prob: float = 0.5,
        crop_ratio: float = 0.1,
        shift_ratio: float = 0.1,
        noise_std: float = 25.0,
        salt_pepper: bool = True,
        swap: float = 0.5,
    ) -> None:
        for name, value in (("prob", prob), ("swap", swap), ("crop_ratio", crop_ratio)):
            if not 0 <= value <= 1:
                msg = f"{name} must be in [0, 1], got {value}"
                raise ValueError(msg)
        if shift_ratio < 0 or noise_std < 0:
            msg = f"shift_ratio and noise_std must be >= 0, got {shift_ratio}, {noise_std}"
            raise ValueError(msg)
        self.prob, self.crop_ratio, self.shift_ratio = prob, crop_ratio, shift_ratio
        self.noise_std, self.salt_pepper, self.swap = noise_std, salt_pepper, swap

    def _chance(self, p: float) -> bool:
        return float(torch.rand(())) < p

    def _crop(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """Zoom crop: a jittered window of the zero-padded slice, resized back."""
        h, w = image.shape[-2:]
        r = self.crop_ratio
        pad = int(2 * h * r + 1)
        image = F.pad(image, (pad, pad, pad, pad))
        label = F.pad(label, (pad, pad, pad, pad))
        scale = 1 + _uniform(-r, r)
        new_h, new_w = h * scale, w * scale
        cy, cx = h / 2 + _uniform(-r, r) * h, w / 2 + _uniform(-r, r) * w
        y1, y2 = pad + int(cy - new_h / 2), pad + int(cy + new_h / 2)
        x1, x2 = pad + int(cx - new_w / 2), pad + int(cx + new_w / 2)
        image = F.interpolate(
            image[None, :, y1:y2, x1:x2], size=(h, w), mode="bilinear", align_corners=False
        )[0]
        return image, resize(label[:, y1:y2, x1:x2], (h, w), "nearest")

    def _salt_pepper(self, image: Tensor) -> Tensor:
        """Set 2-10 % of the pixels (drawn with replacement) to 0 or 255 in every channel."""
        h, w = image.shape[-2:]
        n = int(h * w * _uniform(0.02, 0.1))
        rows, cols = torch.randint(h, (n,)), torch.randint(w, (n,))
        values = (torch.rand(n) < 0.5).float() * 255  # salt or pepper, even odds
        image = image.clone()
        image[:, rows, cols] = values
        return image

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        """Augment one sample.

        Args:
            image: float32 ``[3, S, S]``, 0-255.
            label: int64 ``[1, S, S]``.

        Returns:
            The augmented image (float32, clipped to 0-255) and label (same ids).
        """
        if self._chance(self.prob):
            k = int(torch.randint(4, ()))
            image, label = torch.rot90(image, k, (1, 2)), torch.rot90(label, k, (1, 2))
            dims = [(1,), (2,), (1, 2)][int(torch.randint(3, ()))]
            image, label = torch.flip(image, dims), torch.flip(label, dims)
            if self._chance(self.prob):
                image, label = self._crop(image, label)
            image = image + _uniform(-255.0, 255.0) * self.shift_ratio
            if self._chance(self.prob):
                image = image + torch.randn_like(image) * _uniform(0, self.noise_std)
            if self.salt_pepper and self._chance(self.prob):
                image = self._salt_pepper(image)
            image = image.clamp(0, 255)
        if self._chance(self.swap):
            image = image[[0, 2, 1]]
        return image.contiguous(), label.contiguous()
