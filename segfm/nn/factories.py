"""Layer classes chosen by the number of spatial dimensions (MONAI's factory style)."""

from __future__ import annotations

from torch import nn

SPATIAL_DIMS = (2, 3)


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if segfm's networks support it, else raise.

    Args:
        spatial_dims: Number of spatial dimensions of the data (2 for images, 3 for volumes).

    Returns:
        The same number.

    Raises:
        ValueError: If it is not 2 or 3.
    """
    if spatial_dims not in SPATIAL_DIMS:
        msg = f"spatial_dims must be one of {SPATIAL_DIMS}, got {spatial_dims!r}"
        raise ValueError(msg)
    return spatial_dims


def conv_type(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """The convolution class for ``spatial_dims`` (``nn.Conv2d`` or ``nn.Conv3d``).

    Args:
        spatial_dims: 2 or 3.

    Returns:
        The class, to be instantiated with the usual ``nn.ConvNd`` arguments.
    """
    return nn.Conv2d if check_spatial_dims(spatial_dims) == 2 else nn.Conv3d


def conv_transpose_type(
    spatial_dims: int,
) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """The transposed convolution class for ``spatial_dims``.

    Args:
        spatial_dims: 2 or 3.

    Returns:
        ``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``.
    """
    return nn.ConvTranspose2d if check_spatial_dims(spatial_dims) == 2 else nn.ConvTranspose3d


def as_tuple(
    value: int | tuple[int, ...] | list[int], spatial_dims: int, name: str
) -> tuple[int, ...]:
    """Broadcast an int to ``spatial_dims`` copies, or check a sequence's length.

    Args:
        value: One size for every axis, or one per axis.
        spatial_dims: Number of axes.
        name: Argument name used in the error message.

    Returns:
        A tuple of ``spatial_dims`` ints.

    Raises:
        ValueError: If a sequence has the wrong length or an entry is not positive.
    """
    out = (value,) * spatial_dims if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != spatial_dims or any(v <= 0 for v in out):
        msg = f"{name} must be a positive int or {spatial_dims} positive ints, got {value!r}"
        raise ValueError(msg)
    return out
