"""One way to turn an image into RGB: for files, PIL images, numpy arrays and tensors alike, in bounded memory.

**Files** (:func:`open_image`, used by :func:`~instruction_vit.data.read_image`): the header is read first and an
image over the pixel limit (``max_pixels``; default :data:`DEFAULT_MAX_PIXELS`, 150 MP) is refused by name before
anything is decoded. That limit replaces Pillow's process-wide bomb check (``Image.MAX_IMAGE_PIXELS``: a warning
over 89 MP, an error over 179 MP), per call: Pillow's global is never changed, its warning is not printed for an
image the limit accepts, and a limit raised above 179 MP is honoured.

**Reduced while decoding**: a caller that says how large the image must be (``min_side``: the shorter side its
transform resizes to) gets an image whose shorter side is about ``f``-fold smaller, ``f`` the integer factor that
keeps it at least :data:`MARGIN` (3) times ``min_side``; an image whose shorter side is under ``2 * MARGIN *
min_side`` is not reduced at all (bit-identical to a plain full decode). JPEGs are decoded at 1/2, 1/4 or 1/8
scale by libjpeg (``draft``); then Pillow's antialiased bicubic resize (after a box reduction that leaves it 3x,
its ``reducing_gap``) brings every image to :func:`reduced_size`, over the picture's exact extent: the transform's
own resize then lands on the same places of the picture as on the full image. Measured on a real photo enlarged to
2000-12000 px, the 224-px model input moves by at most 2 8-bit steps (mean 0.1-0.2, 0.1 % of values by more than
one step; ``bench/image_memory.py --fidelity``). ``L`` and ``RGB`` images are resized whole, other modes strip by
strip, each strip converted to RGB first: a full-size RGB copy is never made.

**Modes** (:func:`to_rgb`), the same rule for every source:

* 8-bit modes (1, L, P, RGB, RGBA, LA, PA, CMYK, YCbCr, ...): Pillow's ``convert("RGB")``; alpha is dropped
  (not composited: the colour under a transparent pixel is kept), a palette's transparency likewise;
* 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit integer (``I``, read as 16-bit samples:
  what Pillow opens a 16-bit PNG as in older versions): the high byte (``value >> 8``, values clipped to 0..65535),
  so the full 16-bit range maps onto 0..255 (``convert("RGB")`` would clip everything over 255 to white);
* 32-bit float (``F``): Pillow's ``convert("RGB")`` (values taken on the 0..255 scale, truncated and clipped).

**Arrays** (:func:`as_image`): numpy arrays ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)``, ``(H, W, 4)`` (channels
last) and torch tensors ``[H, W]``, ``[1, H, W]``, ``[3, H, W]``, ``[4, H, W]`` (channels first, as torchvision),
of dtype ``uint8``, ``uint16`` (as a 16-bit PNG holds them: greyscale as ``I;16``, colour by its high byte, as
Pillow reads a 16-bit colour PNG) or float in [0, 1] (``round(255 * x)`` half up, as ``torchvision.utils.save_image``
writes it). Anything else is refused in one line naming its shape and dtype.

The rule this gives: an in-memory image has the same model input as the same image saved to a PNG (TIFF for
modes PNG cannot hold) and read back.
"""

from __future__ import annotations

import math
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..limits import DEFAULT_MAX_IMAGE_PIXELS
from ..errors import DataError

DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
MARGIN = 3  # a reduced image keeps its shorter side >= MARGIN x what the transform needs
REDUCING_GAP = 3.0  # Pillow: box-reduce first, leaving at least this much to the bicubic ("indistinguishable")
STRIP_PIXELS = 1 << 22  # source pixels converted to RGB at a time while reducing (16 MB of RGB)
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> mode of uint8 pixels
# Image.open's bomb warning is silenced per call with warnings.catch_warnings, which swaps the process's filter
# list: the lock keeps two of our calls (probes run in threads) from restoring each other's lists out of order.
_OPEN_LOCK = threading.Lock()


def _fresh_lock() -> None:
    """A forked child (a loader worker) gets a free lock, whatever another thread of the parent held."""
    global _OPEN_LOCK
    _OPEN_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock)


# -- files: the header, the limit, the decode --------------------------------------------------------------
def too_large(name: Any, size: tuple[int, int], max_pixels: int) -> DataError:
    """The one-line refusal of an image over the pixel limit: its name, size, the limit and how to raise it."""
    w, h = size
    return DataError(f"image {name} is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of {max_pixels / 1e6:g} MP "
                     "(from its header; nothing was decoded); raise it with data.max_image_pixels=N (train, eval) or "
                     "--max-pixels N / max_pixels=N (predict), or shrink the image")


def open_image(source: str | Path | IO[bytes], max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: Any = None) -> Image.Image:
    """The image of a file (or binary stream), header read and nothing decoded; one over ``max_pixels`` (``None``:
    no limit) is closed and refused with :func:`too_large`. Pillow's own bomb check is replaced, not changed."""
    name = source if name is None else name
    image = _open(source)
    if max_pixels is not None and image.size[0] * image.size[1] > max_pixels:
        size = image.size
        image.close()
        raise too_large(name, size, max_pixels)
    return image


def _open(source: str | Path | IO[bytes]) -> Image.Image:
    """``Image.open`` without its bomb warning; past its hard limit (2x ``Image.MAX_IMAGE_PIXELS``), the same
    identification through Pillow's registered openers (what ``Image.open`` walks), minus that check."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError:
            pass
    return _open_unchecked(source)


def _open_unchecked(source: str | Path | IO[bytes]) -> Image.Image:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            prefix = f.read(16)
    else:
        source.seek(0)
        prefix = source.read(16)
    Image.init()
    for fmt in list(Image.ID):
        factory, accept = Image.OPEN[fmt]
        verdict = accept(prefix) if accept is not None else True
        if not verdict or isinstance(verdict, str):
            continue
        try:
            if isinstance(source, (str, Path)):
                return factory(str(source), None)  # opens (and owns) the file itself
            source.seek(0)
            return factory(source, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError(f"cannot identify image file {source!r}")


def decode(source: str | Path | IO[bytes], min_side: int | None = None,
           max_pixels: int | None = DEFAULT_MAX_PIXELS, name: Any = None) -> Image.Image:
    """The RGB image of a file: limit checked on the header, reduced while decoding for ``min_side`` (JPEG: first
    at 1/2, 1/4 or 1/8 scale by libjpeg, leaving at least a 2x reduction to :func:`to_rgb`, which puts the
    partial blocks of that scaling back in place), converted by the one rule. Pillow's errors propagate (the caller
    names the file); a mode that has no RGB conversion is a :class:`DataError` naming it."""
    with open_image(source, max_pixels, name) as image:
        extent = None
        factor = reduce_factor(image.size, min_side)
        if factor > 1 and image.format in ("JPEG", "MPO"):
            scale = next(s for s in (8, 4, 2, 1) if 2 * s <= factor)
            w, h = image.size
            if scale > 1 and image.draft("RGB", (w // scale, h // scale)) is not None:
                extent = (w / scale, h / scale)  # the last column and row may be partial blocks
        image.load()
        try:
            return to_rgb(image, min_side, extent)
        except DataError as err:
            raise DataError(f"cannot read image {name if name is not None else source}: {err}") from err


# -- reduction ---------------------------------------------------------------------------------------------
def reduce_factor(size: tuple[float, float], min_side: int | None) -> int:
    """The integer factor that keeps the shorter side of ``size`` at least ``MARGIN * min_side``; 1 (no reduction)
    without ``min_side`` or when the image is not at least twice that."""
    if not min_side or min_side < 1:
        return 1
    factor = int(min(size) // (MARGIN * min_side))
    return factor if factor >= 2 else 1


def reduced_size(extent: tuple[float, float], factor: int, min_side: int) -> tuple[int, int]:
    """The size of a picture of ``extent`` reduced by about ``factor``: the shorter side rounded, the longer one
    the nearest to the exact aspect that the transform's resize (shorter side to ``min_side``, the longer one
    truncated, as torchvision does) takes to the same size as the full picture: then every output pixel of the
    transform averages the same place of the picture."""
    ex, ey = extent
    short, long = (ex, ey) if ex <= ey else (ey, ex)
    new_short = max(1, round(short / factor))
    exact = long * new_short / short
    target = int(min_side * long / short)  # the full picture's longer side after the transform's resize
    fits = [n for n in range(max(1, round(exact) - 3), round(exact) + 4) if int(min_side * n / new_short) == target]
    new_long = min(fits, key=lambda n: abs(n - exact)) if fits else max(1, round(exact))
    return (new_short, new_long) if ex <= ey else (new_long, new_short)


def needed_side(img_size: int, crop_pct: float = 1.0) -> int:
    """The shorter side the evaluation transform resizes to (timm: ``floor(img_size / crop_pct)``)."""
    return math.floor(img_size / crop_pct)


def train_side(img_size: int, min_scale: float, max_ratio: float = 4 / 3) -> int | None:
    """The shorter side at which RandomResizedCrop's smallest crop (area ``min_scale``, aspect up to ``max_ratio``)
    still spans ``img_size`` pixels: ``img_size * sqrt(max_ratio / min_scale)`` (None: the crop may be any size)."""
    if min_scale <= 0:
        return None
    return math.ceil(img_size * math.sqrt(max_ratio / min_scale))


# -- modes -------------------------------------------------------------------------------------------------
def to_rgb(image: Image.Image, min_side: int | None = None,
           extent: tuple[float, float] | None = None) -> Image.Image:
    """``image`` in RGB by the module's mode rule, reduced for ``min_side`` as a file would be: by about
    :func:`reduce_factor` to :func:`reduced_size`, with Pillow's antialiased bicubic resize (a box reduction first
    where it leaves 3x for the bicubic, Pillow's ``reducing_gap``) over ``extent``, the picture's width and height
    in pixels (fractional where a JPEG's scaled decode left partial blocks; default: its size): the picture keeps
    its exact centre and scale. ``L`` and ``RGB`` are reduced in one go, other modes strip by strip, each strip
    converted before it is reduced: a full-size RGB copy is never made."""
    ex, ey = extent or image.size
    factor = reduce_factor((ex, ey), min_side)
    if factor == 1 and extent is None:
        return _rgb(image)
    size = reduced_size((ex, ey), factor, min_side) if factor > 1 else image.size
    if image.mode in ("L", "RGB"):  # resampling and conversion commute for these
        return _rgb(_resize(image, size, (0, 0, ex, ey)))
    w, h = size
    out = Image.new("RGB", size)
    step = ey / h  # source rows per output row
    pad = 2 * step + 2  # the bicubic filter's reach, in source rows
    rows = max(1, STRIP_PIXELS // max(1, round(image.width * step)))  # output rows per strip
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        y0, y1 = r0 * step, r1 * step
        top, bottom = max(0, math.floor(y0 - pad)), min(image.height, math.ceil(y1 + pad))
        strip = _rgb(image.crop((0, top, image.width, bottom)))
        out.paste(_resize(strip, (w, r1 - r0), (0, y0 - top, ex, y1 - top)), (0, r0))
    return out


def _resize(image: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    return image.resize(size, Image.BICUBIC, box=box, reducing_gap=REDUCING_GAP)


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT:
        high = np.clip(np.asarray(image), 0, 65535) >> 8
        image = Image.fromarray(high.astype(np.uint8))  # L
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the same RGB as convert("RGB"), without Pillow's warning about tRNS bytes
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise DataError(f"an image of mode {image.mode} cannot be converted to RGB ({err}); save it as RGB, "
                        "greyscale or 16-bit greyscale") from err


# -- in-memory images --------------------------------------------------------------------------------------
def as_image(value: Any) -> Image.Image:
    """A PIL image of ``value``: a PIL image as it is, a numpy array or a torch tensor by the layouts the module
    lists; any other value, shape or dtype is a :class:`DataError` naming it."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return _from_numpy(value)
    if isinstance(value, torch.Tensor):
        return _from_tensor(value)
    raise DataError(f"cannot read {type(value).__name__} as an image: give a file path, a PIL image, a numpy array "
                    "(H, W[, C]) or a torch tensor ([C, ]H, W)")


def rgb_image(value: Any, min_side: int | None = None) -> Image.Image:
    """The RGB image of an in-memory image (:func:`as_image`, then :func:`to_rgb`): what the same image saved
    to a file and read with the same ``min_side`` gives."""
    return to_rgb(as_image(value), min_side)


def _from_tensor(tensor: torch.Tensor) -> Image.Image:
    """A PIL image of a ``[H, W]`` or ``[C, H, W]`` tensor (channels first)."""
    shape, dtype = list(tensor.shape), str(tensor.dtype).replace("torch.", "")
    if not (tensor.dim() == 2 or tensor.dim() == 3 and shape[0] in ARRAY_MODES) or 0 in shape:
        hint = ("; a batch? pass its images one by one" if tensor.dim() == 4 else
                "; channels last? use .permute(2, 0, 1)" if tensor.dim() == 3 and shape[-1] in ARRAY_MODES else "")
        raise DataError(f"cannot read a tensor of shape {shape} ({dtype}) as an image: give [H, W] or [C, H, W] "
                        f"with C 1, 3 or 4 (channels first){hint}")
    array = tensor.detach().cpu()
    if array.dtype == torch.bfloat16:
        array = array.float()  # no numpy twin
    array = array.permute(1, 2, 0) if array.dim() == 3 else array
    return _from_array(array.numpy(), f"tensor of shape {shape} ({dtype})")


def _from_numpy(array: np.ndarray) -> Image.Image:
    """A PIL image of an ``(H, W)`` or ``(H, W, C)`` array (channels last)."""
    shape = tuple(array.shape)
    if not (array.ndim == 2 or array.ndim == 3 and shape[-1] in ARRAY_MODES) or 0 in shape:
        hint = "; channels first? use .transpose(1, 2, 0)" if array.ndim == 3 and shape[0] in ARRAY_MODES else ""
        raise DataError(f"cannot read a numpy array of shape {shape} ({array.dtype}) as an image: give (H, W) or "
                        f"(H, W, C) with C 1, 3 or 4 (channels last){hint}")
    return _from_array(array, f"numpy array of shape {shape} ({array.dtype})")


def _from_array(array: np.ndarray, kind: str) -> Image.Image:
    """A PIL image of an ``(H, W[, C])`` array of a checked layout, by its dtype; ``kind`` names it in messages."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array))  # I;16: what a 16-bit greyscale PNG opens as
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)  # as Pillow reads a 16-bit colour PNG: its high bytes
    elif np.issubdtype(array.dtype, np.floating):
        lo, hi = float(array.min()), float(array.max())
        if not (lo >= 0.0 and hi <= 1.0):  # NaN fails too
            raise DataError(f"a float {kind} must hold values in [0, 1] (found {lo:g} to {hi:g}): pass the image "
                            "before normalisation, or as uint8")
        array = np.floor(array.astype(np.float32) * 255 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DataError(f"cannot read a {kind} as an image: its dtype must be uint8, uint16 or float in [0, 1]")
    return Image.fromarray(np.ascontiguousarray(array))  # L, RGB or RGBA


__all__ = ["DEFAULT_MAX_PIXELS", "MARGIN", "as_image", "decode", "needed_side", "open_image", "reduce_factor",
           "rgb_image", "to_rgb", "too_large", "train_side"]
