"""The bytes of the SlicerNNInteractive protocol: npy volumes in, bit-packed masks out.

The 3D Slicer extension uploads the image as a plain ``.npy`` file and segments as gzipped
``.npy`` files; every answer to a prompt is the current target's mask, one bit per voxel in C
order (``numpy.packbits``), gzipped. Everything read here is bounded: an npy header is checked
before its data is read, and a gzip stream is inflated only up to a limit, so a small
compressed upload cannot grow into gigabytes (a "gzip bomb").
"""

from __future__ import annotations

import gzip
import io
import zlib

import numpy as np

from segfm.serve.errors import RequestError

#: dtypes an image may have (numbers; no objects, no strings)
_IMAGE_KINDS = "biuf"
#: bytes read per step while inflating a gzip stream
_CHUNK = 1 << 20


def gunzip(data: bytes, limit: int, what: str) -> bytes:
    """Inflate a gzip stream (of one or more members), refusing to produce over ``limit`` bytes.

    Raises:
        RequestError: If ``data`` is not gzip or inflates beyond ``limit``.
    """
    out = bytearray()
    pending = data
    try:
        while pending:
            inflater = zlib.decompressobj(wbits=31)
            while pending:
                out += inflater.decompress(pending, _CHUNK)
                if len(out) > limit:
                    msg = (
                        f"{what} inflates to more than {limit:,} bytes, more than a mask of the "
                        "uploaded image can be; send the gzipped .npy of one mask of its shape"
                    )
                    raise RequestError(msg, status=413)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                msg = f"{what} is a truncated gzip stream; send the whole file"
                raise RequestError(msg)
            pending = inflater.unused_data  # the next member, if any
    except zlib.error as e:
        msg = f"{what} is not gzip-compressed ({e}); send np.save's bytes through gzip.compress"
        raise RequestError(msg) from e
    return bytes(out)


def read_npy(data: bytes, what: str, max_voxels: int) -> np.ndarray:
    """A 3D numeric array from ``.npy`` bytes, its header checked before the data is read.

    Raises:
        RequestError: If the bytes are not a 3D numeric npy array of at most ``max_voxels``.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        msg = f"{what} is not a .npy file ({e}); send the bytes np.save writes"
        raise RequestError(msg) from e
    if dtype.hasobject or dtype.kind not in _IMAGE_KINDS:
        msg = f"{what} holds {dtype}; send a numeric array (integers, floats or booleans)"
        raise RequestError(msg)
    if len(shape) != 3 or min(shape) < 1:
        msg = f"{what} has shape {tuple(shape)}; send one 3D volume (slices, rows, columns)"
        raise RequestError(msg)
    voxels = int(np.prod(shape))
    if voxels > max_voxels:
        msg = f"{what} has {voxels:,} voxels, over this server's limit of {max_voxels:,}"
        raise RequestError(msg, status=413)
    expected = voxels * dtype.itemsize
    body = data[stream.tell() :]
    if len(body) < expected:
        msg = f"{what} is cut short: {len(body):,} of {expected:,} bytes of data; send all of it"
        raise RequestError(msg)
    array = np.frombuffer(body, dtype=dtype, count=voxels)
    array = array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)
    return np.ascontiguousarray(array)


def read_gzipped_npy(data: bytes, what: str, max_voxels: int) -> np.ndarray:
    """:func:`read_npy` of a gzipped upload, inflated no further than the limit allows."""
    limit = max_voxels * 8 + 4096  # the largest array of max_voxels plus an npy header
    return read_npy(gunzip(data, limit, what), what, max_voxels)


def pack_mask(mask: np.ndarray) -> bytes:
    """One bit per voxel, C order, gzipped: the answer to every prompt."""
    return gzip.compress(np.packbits(mask.astype(bool), axis=None).tobytes(), compresslevel=1)


def unpack_mask(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 mask of :func:`pack_mask`'s bytes once the gzip layer is removed."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: int(np.prod(shape))]
    return bits.reshape(shape).astype(np.uint8)
