"""SAM: an image encoder, a prompt encoder and a mask decoder, for 2D images or 3D volumes.

Follows segment-anything's ``modeling/sam.py`` and its ``SamPredictor``: the image is encoded
once and any number of prompt sets are decoded on the shared embedding. ``forward`` is not under
``torch.no_grad`` so the whole network can be fine-tuned.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segfm.models.image_encoder import ImageEncoderViT
from segfm.models.mask_decoder import MaskDecoder
from segfm.models.prompt_encoder import PromptEncoder

Points = tuple[Tensor, Tensor]


class Sam(nn.Module):
    """Promptable segmentation network (SAM, MedSAM, SAM-Med3D).

    Args:
        image_encoder: Encoder of ``[B, C, *S]`` images to ``[B, C', *g]`` embeddings.
        prompt_encoder: Encoder of points, boxes and masks on that grid.
        mask_decoder: Decoder of masks from both.
        pixel_mean: Per-channel mean used by :meth:`preprocess` (non-persistent buffer, so
            state dicts keep exactly the released checkpoints' keys).
        pixel_std: Per-channel standard deviation used by :meth:`preprocess`.
    """

    mask_threshold: float = 0.0

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        dims = {image_encoder.spatial_dims, prompt_encoder.spatial_dims, mask_decoder.spatial_dims}
        if len(dims) != 1:
            msg = (
                "image_encoder, prompt_encoder and mask_decoder must have the same spatial_dims, "
                f"got {image_encoder.spatial_dims}, {prompt_encoder.spatial_dims} and "
                f"{mask_decoder.spatial_dims}"
            )
            raise ValueError(msg)
        sd = image_encoder.spatial_dims
        grid = (image_encoder.embedding_size,) * sd
        if (
            prompt_encoder.image_embedding_size != grid
            or prompt_encoder.input_image_size != (image_encoder.img_size,) * sd
        ):
            msg = (
                f"prompt_encoder is made for embeddings {prompt_encoder.image_embedding_size} of "
                f"inputs {prompt_encoder.input_image_size}, but the image encoder gives {grid} "
                f"for {image_encoder.img_size} px"
            )
            raise ValueError(msg)
        widths = (image_encoder.out_chans, prompt_encoder.embed_dim, mask_decoder.transformer_dim)
        if len(set(widths)) != 1:
            msg = (
                "image_encoder.out_chans, prompt_encoder.embed_dim and "
                f"mask_decoder.transformer_dim must be equal, got {widths}"
            )
            raise ValueError(msg)
        if len(pixel_mean) != len(pixel_std) or any(s <= 0 for s in pixel_std):
            msg = (
                "pixel_mean and pixel_std need one entry per channel and std > 0, "
                f"got {pixel_mean} and {pixel_std}"
            )
            raise ValueError(msg)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        shape = (-1,) + (1,) * sd
        self.register_buffer(
            "pixel_mean",
            torch.tensor(pixel_mean, dtype=torch.float32).view(shape),
            persistent=False,
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(shape), persistent=False
        )

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return self.image_encoder.spatial_dims

    @property
    def image_size(self) -> int:
        """Side of the square (cubic) encoder input in pixels."""
        return self.image_encoder.img_size

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid ``g``; low-res masks have side ``4 g``."""
        return self.image_encoder.embedding_size

    def preprocess(self, images: Tensor) -> Tensor:
        """SAM's normalisation ``(x - pixel_mean) / pixel_std``, zero-padded to the input size.

        Args:
            images: Images ``[B, C, *S]`` with each side at most :attr:`image_size`.

        Returns:
            ``[B, C, image_size, ...]``.
        """
        x = (images - self.pixel_mean) / self.pixel_std
        pad: list[int] = []
        for s in reversed(x.shape[2:]):
            pad += [0, self.image_size - s]
        return F.pad(x, pad)

    def encode(self, images: Tensor) -> Tensor:
        """Encode preprocessed images.

        Args:
            images: ``[B, C, *S]`` at the encoder's input size.

        Returns:
            Image embeddings ``[B, C', *g]``.
        """
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: Tensor,
        points: Points | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        multimask_output: bool = False,
        image_index: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Decode ``N`` prompt sets on shared image embeddings.

        Args:
            image_embeddings: ``[B, C', *g]`` from :meth:`encode`.
            points: Coordinates ``[N, P, spatial_dims]`` in input pixels (``x, y`` in 2D as SAM;
                voxel indices in axis order in 3D as SAM-Med3D) and labels ``[N, P]``
                (1 foreground, 0 background, -1 padding).
            boxes: ``[N, 2 * spatial_dims]``: two corners (``x0, y0, x1, y1`` in 2D).
            masks: Low-res mask logits ``[N, 1, *4g]`` (e.g. a previous prediction).
            multimask_output: Return SAM's 3 ambiguity masks instead of one mask.
            image_index: ``[N]`` int64: the image of each prompt set. By default prompt set ``i``
                belongs to image ``i`` (``N == B``), or every set to the only image when ``B == 1``.

        Returns:
            Low-res mask logits ``[N, M, *4g]`` and IoU predictions ``[N, M]``, ``M`` = 3 with
            ``multimask_output`` else 1.
        """
        self._check_prompts(image_embeddings, points, boxes, masks)
        count = None if image_index is None else int(image_index.shape[0])
        if count is None and points is None and boxes is None and masks is None:
            count = image_embeddings.shape[0]
        sparse, dense = self.prompt_encoder(points, boxes, masks, batch_size=count)
        embeddings = self._select_images(image_embeddings, sparse.shape[0], image_index)
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def forward(
        self,
        images: Tensor,
        points: Points | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Encode images and decode one prompt set per image.

        Args:
            images: Preprocessed images ``[B, C, *S]`` at the encoder's input size.
            points: Coordinates ``[B, P, spatial_dims]`` and labels ``[B, P]``.
            boxes: ``[B, 2 * spatial_dims]``.
            masks: ``[B, 1, *4g]``.
            multimask_output: Return 3 ambiguity masks instead of one.

        Returns:
            Low-res mask logits ``[B, M, *4g]`` and IoU predictions ``[B, M]``.
        """
        return self.decode(self.encode(images), points, boxes, masks, multimask_output)

    def postprocess(self, low_res_logits: Tensor, size: int | Sequence[int]) -> Tensor:
        """Upsample mask logits (bilinear in 2D, trilinear in 3D, ``align_corners=False``).

        Args:
            low_res_logits: ``[N, M, *4g]``.
            size: Output size (one int for every axis, or one per axis).

        Returns:
            ``[N, M, *size]``.
        """
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        out_size = (size,) * self.spatial_dims if isinstance(size, int) else tuple(size)
        return F.interpolate(low_res_logits, size=out_size, mode=mode, align_corners=False)

    def _check_prompts(
        self,
        image_embeddings: Tensor,
        points: Points | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> None:
        sd = self.spatial_dims
        grid = (self.embedding_size,) * sd
        if image_embeddings.ndim != sd + 2 or tuple(image_embeddings.shape[2:]) != grid:
            shape = ", ".join(map(str, grid))
            msg = f"image_embeddings must be [B, C, {shape}], got {list(image_embeddings.shape)}"
            raise ValueError(msg)
        if points is not None:
            coords, labels = points
            if (
                coords.ndim != 3
                or coords.shape[-1] != sd
                or tuple(labels.shape) != tuple(coords.shape[:2])
            ):
                msg = (
                    f"points must be coords [N, P, {sd}] and labels [N, P], "
                    f"got {list(coords.shape)} and {list(labels.shape)}"
                )
                raise ValueError(msg)
        if boxes is not None and (boxes.ndim != 2 or boxes.shape[-1] != 2 * sd):
            msg = f"boxes must be [N, {2 * sd}], got {list(boxes.shape)}"
            raise ValueError(msg)
        low_res = tuple(4 * g for g in grid)
        if masks is not None and (
            masks.ndim != sd + 2 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != low_res
        ):
            msg = f"masks must be [N, 1, {', '.join(map(str, low_res))}], got {list(masks.shape)}"
            raise ValueError(msg)

    @staticmethod
    def _select_images(image_embeddings: Tensor, count: int, image_index: Tensor | None) -> Tensor:
        """One embedding row per prompt set: ``[N, C', *g]``."""
        b = image_embeddings.shape[0]
        if image_index is None:
            if b == count:
                return image_embeddings
            if b == 1:
                return image_embeddings.expand(count, *image_embeddings.shape[1:])
            msg = (
                f"{count} prompt sets for {b} images: pass image_index [N] mapping each prompt "
                "set to its image"
            )
            raise ValueError(msg)
        if image_index.shape != (count,) or image_index.dtype not in (torch.int64, torch.int32):
            got = f"{image_index.dtype} {list(image_index.shape)}"
            msg = f"image_index must be an integer tensor [{count}], got {got}"
            raise ValueError(msg)
        return image_embeddings.index_select(0, image_index.to(image_embeddings.device))
