"""Training augmentation on the device, batch-wise and per sample, from uint8 store batches ``[B, S, S, 3]``.

Each sample gets its own RandomResizedCrop and horizontal flip (one affine warp), then timm's RandAugment as timm
defines it for a config string such as ``rand-m9-mstd0.5``: ``n`` layers (default 2), each drawing one of timm's
15 ops uniformly (with replacement), applied with probability ``p`` (default 0.5), with its own magnitude (Gaussian
noise ``mstd`` around ``m``, clipped to [0, ``mmax``]) and its own sign; the layers run in the order drawn. Every
op's argument is timm's own level-to-argument map (``inc1`` selects timm's "increasing" set), and each op matches
timm's PIL implementation to within interpolation and 8-bit rounding (tested op by op against timm). With
RandAugment off, ``color_jitter`` gives torchvision's ColorJitter (brightness, contrast, saturation, in a random
order per sample), as timm's transform does.

Differences from the PIL pipeline, all small: warps interpolate bilinearly (timm's RandAugment picks bilinear or
bicubic; the crop's resize is bicubic with antialiasing in PIL), and images stay in float between ops instead of
being rounded to 8 bits after each.

On CUDA each op runs on the whole batch and is kept where drawn (``torch.where``: no host synchronisation); on a CPU
it runs on the samples that drew it only (much less work), the two paths giving the same images.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

# timm's RandAugment ops, in the order of timm's _RAND_TRANSFORMS.
OPS = ("autocontrast", "equalize", "invert", "rotate", "posterize", "solarize", "solarize_add", "color",
       "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
LEVELS = 10.0  # timm's _LEVEL_DENOM: magnitudes are levels in [0, 10]


@dataclass(frozen=True)
class RandAugmentSpec:
    """A timm RandAugment config string, parsed: ``rand-m9-n2-mstd0.5-p0.5-mmax10-inc0``."""

    num_ops: int = 2
    magnitude: float = 10.0  # timm's default when the string names no m
    magnitude_std: float = 0.0  # math.inf: uniform in [0, magnitude] (timm: mstd > 100)
    magnitude_max: float = LEVELS
    prob: float = 0.5
    increasing: bool = False


def parse_randaugment(spec: str | None) -> RandAugmentSpec | None:
    """The :class:`RandAugmentSpec` of a timm config string, read as timm reads it; ``None`` for no RandAugment."""
    if not spec:
        return None
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"device augmentation reads timm RandAugment strings such as 'rand-m9-mstd0.5', "
                          f"not {spec!r}")
    fields: dict = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", part)
        if match is None:
            raise ConfigError(f"RandAugment string {spec!r}: section {part!r} is not one of m, n, p, mstd, mmax, "
                              "inc with a number (named transform sets 't...' are not supported by the device path; "
                              "use data.gpu_augment=false)")
        fields[match[1]] = float(match[2])
    mstd = fields.get("mstd", 0.0)
    return RandAugmentSpec(num_ops=int(fields.get("n", 2)), magnitude=int(fields.get("m", LEVELS)),
                           magnitude_std=math.inf if mstd > 100 else mstd,
                           magnitude_max=int(fields.get("mmax", LEVELS)), prob=fields.get("p", 0.5),
                           increasing=bool(int(fields.get("inc", 0))))


@dataclass(frozen=True)
class GpuAugment:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5"
    color_jitter: float = 0.0  # used only with RandAugment off (as timm's create_transform)

    def __post_init__(self):
        _ = self.spec  # a bad string fails here, not in the first training step

    @cached_property
    def spec(self) -> RandAugmentSpec | None:
        return parse_randaugment(self.randaugment)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``[B, S, S, 3]`` on any device -> normalised float ``[B, 3, size, size]`` on that device."""
        x = images.permute(0, 3, 1, 2).float() / 255
        b, device = x.shape[0], x.device
        fill = torch.tensor([round(255 * m) / 255 for m in self.mean], device=device).view(1, 3, 1, 1)
        x = warp(x, self._crop(b, device), self.size, fill)
        spec = self.spec
        if spec is not None and spec.num_ops:
            picks, applied, level, sign = sample_layers(spec, b, device)
            x = apply_layers(x, picks, applied, level, sign, spec.increasing, fill)
        elif self.color_jitter:
            x = color_jitter(x, self.color_jitter)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return x.clamp_(0, 1).sub_(mean).div_(std)

    def _crop(self, b: int, device) -> Tensor:
        """RandomResizedCrop and flip: ``[b, 2, 3]`` output -> input. As timm (and torchvision): up to 10 draws of
        (area fraction, log aspect ratio), the first that fits the image is taken, else the whole (square) image."""
        tries = (b, 10)
        area = torch.empty(tries, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(tries, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        w_all, h_all = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
        fits = (w_all <= 1) & (h_all <= 1)
        first = fits.float().argmax(1, keepdim=True)  # the first draw that fits (0 when none does)
        anyfit = fits.any(1)
        w = torch.where(anyfit, w_all.gather(1, first).squeeze(1), 1.0)
        h = torch.where(anyfit, h_all.gather(1, first).squeeze(1), 1.0)
        cx = (torch.rand(b, device=device) * (1 - w) + w / 2) * 2 - 1
        cy = (torch.rand(b, device=device) * (1 - h) + h / 2) * 2 - 1
        flip = torch.where(torch.rand(b, device=device) < self.hflip, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
        return theta


def warp(x: Tensor, theta: Tensor, size: int, fill: Tensor) -> Tensor:
    """Bilinear affine warp (``theta``: output -> input, normalised coordinates); ``fill`` outside the image."""
    grid = F.affine_grid(theta, (x.shape[0], x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def sample_layers(spec: RandAugmentSpec, b: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per sample and layer: the op drawn, whether it applies, its level in [0, mmax] and its sign."""
    shape = (b, spec.num_ops)
    picks = torch.randint(0, len(OPS), shape, device=device)
    applied = torch.rand(shape, device=device) < spec.prob
    if math.isinf(spec.magnitude_std):
        level = torch.rand(shape, device=device) * spec.magnitude
    else:
        level = spec.magnitude + spec.magnitude_std * torch.randn(shape, device=device)
    level = level.clamp(0, spec.magnitude_max)
    sign = torch.where(torch.rand(shape, device=device) < 0.5, -1.0, 1.0)
    return picks, applied, level, sign


def apply_layers(x: Tensor, picks: Tensor, applied: Tensor, level: Tensor, sign: Tensor, increasing: bool,
                 fill: Tensor, masked: bool | None = None) -> Tensor:
    """RandAugment layers ``[b, n]`` in order; each sample runs the op it drew with its own level and sign."""
    masked = x.is_cuda if masked is None else masked
    if not masked:
        x = x.clone()  # the subset path writes into its tensor
    for j in range(picks.shape[1]):
        geometric = torch.zeros_like(applied[:, j])
        theta = torch.eye(2, 3, device=x.device).repeat(x.shape[0], 1, 1)
        for i, name in enumerate(OPS):
            drew = applied[:, j] & (picks[:, j] == i)
            arg = op_argument(name, level[:, j], sign[:, j], increasing)
            if name in GEOMETRIC:
                theta = torch.where(drew.view(-1, 1, 1), op_matrix(name, arg), theta)
                geometric |= drew
            else:
                x = _where(x, drew, lambda v, a, op=COLOUR_OPS[name]: op(v, a).clamp(0, 1), arg, masked)
        x = _where(x, geometric, lambda v, t: warp(v, t, v.shape[-1], fill), theta, masked)
    return x


def _where(x: Tensor, mask: Tensor, fn, arg: Tensor, masked: bool) -> Tensor:
    """``fn(x, arg)`` on the samples of ``mask``, ``x`` elsewhere."""
    if masked:
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, arg), x)
    idx = torch.nonzero(mask).flatten()
    if idx.numel():
        x[idx] = fn(x[idx], arg[idx])
    return x


def op_argument(name: str, level: Tensor, sign: Tensor, increasing: bool = False) -> Tensor:
    """timm's level-to-argument map of op ``name`` (``_RAND_TRANSFORMS``, or ``_RAND_INCREASING_TRANSFORMS``)."""
    f = level / LEVELS
    if name == "rotate":
        return sign * f * 30  # degrees
    if name in ("shear_x", "shear_y"):
        return sign * f * 0.3
    if name in ("translate_x", "translate_y"):
        return sign * f * 0.45  # fraction of the side (timm's translate_pct)
    if name == "posterize":  # bits kept
        return 4 - torch.floor(f * 4) if increasing else torch.floor(f * 4)
    if name == "solarize":  # threshold (0..256)
        return 256 - torch.floor(f * 256) if increasing else torch.floor(f * 256)
    if name == "solarize_add":
        return torch.floor(f * 110)
    if name in ("color", "contrast", "brightness", "sharpness"):  # enhancement factor
        return (1 + sign * f * 0.9).clamp_min(0.1) if increasing else f * 1.8 + 0.1
    return torch.zeros_like(f)  # autocontrast, equalize, invert: no argument


def op_matrix(name: str, arg: Tensor) -> Tensor:
    """``[b, 2, 3]`` output -> input maps in normalised coordinates (square images) equal to timm's PIL ops:
    rotation about the centre (counter-clockwise), shears about the top-left corner, translations."""
    b = arg.shape[0]
    theta = torch.eye(2, 3, device=arg.device).repeat(b, 1, 1)
    if name == "rotate":
        angle = torch.deg2rad(arg)
        theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
        theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    elif name == "shear_x":  # PIL: x_in = x + f * y, with y from the top edge
        theta[:, 0, 1], theta[:, 0, 2] = arg, arg
    elif name == "shear_y":
        theta[:, 1, 0], theta[:, 1, 2] = arg, arg
    elif name == "translate_x":  # PIL: x_in = x + pct * width
        theta[:, 0, 2] = 2 * arg
    elif name == "translate_y":
        theta[:, 1, 2] = 2 * arg
    else:
        raise ValueError(f"{name} is not a geometric op")
    return theta


def color_jitter(x: Tensor, strength: float) -> Tensor:
    """torchvision's ColorJitter(brightness, contrast, saturation = ``strength``): factors uniform in
    [1 - s, 1 + s], the three in a random order per sample (timm's transform when RandAugment is off)."""
    b, device = x.shape[0], x.device
    order = torch.rand(b, 3, device=device).argsort(1)
    factors = torch.empty(b, 3, device=device).uniform_(max(0.0, 1 - strength), 1 + strength)
    ops = ("brightness", "contrast", "color")
    for j in range(3):
        for i, name in enumerate(ops):
            drew = order[:, j] == i
            x = torch.where(drew.view(-1, 1, 1, 1), COLOUR_OPS[name](x, factors[:, i]).clamp(0, 1), x)
    return x


def _view(arg: Tensor) -> Tensor:
    return arg.view(-1, 1, 1, 1)


def _grey(x: Tensor) -> Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(base: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    return base + (x - base) * _view(factor)


def _smooth(x: Tensor) -> Tensor:
    """PIL's ImageFilter.SMOOTH (3x3, centre 5, others 1, /13); the one-pixel border is left as it is, as PIL."""
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(x.shape[1], 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return out


def _posterize(x: Tensor, bits: Tensor) -> Tensor:
    step = _view(2 ** (8 - bits.clamp(0, 8)))
    return torch.floor((x * 255).round() / step) * step / 255


def _autocontrast(x: Tensor, _: Tensor) -> Tensor:
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-6), x)


def equalize(x: Tensor, _: Tensor | None = None) -> Tensor:
    """PIL's ``ImageOps.equalize`` per image and channel, batch-wise (x in [0, 1], quantised to 8 bits)."""
    b, c, h, w = x.shape
    levels = (x * 255).round().clamp(0, 255).long().reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float))
    last = (hist > 0).float() * torch.arange(256, device=x.device)  # the highest occupied level's count is left out
    step = torch.div(hist.sum(1) - hist.gather(1, last.argmax(1, keepdim=True)).squeeze(1), 255, rounding_mode="floor")
    safe = step.clamp_min(1).unsqueeze(1)
    lut = torch.div(hist.cumsum(1) - hist + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = torch.where(step.unsqueeze(1) > 0, lut.clamp(max=255), torch.arange(256, device=x.device).float())
    return (lut.gather(1, levels) / 255).view(b, c, h, w)


COLOUR_OPS = {  # name -> f(images [b, 3, h, w] in [0, 1], argument [b] from op_argument)
    "autocontrast": _autocontrast,
    "equalize": equalize,
    "invert": lambda x, _: 1 - x,
    "posterize": _posterize,
    "solarize": lambda x, t: torch.where(x * 255 >= _view(t) - 0.5, 1 - x, x),
    "solarize_add": lambda x, a: torch.where(x * 255 < 127.5, (x + _view(a) / 255).clamp(max=1), x),
    "color": lambda x, f: _blend(_grey(x), x, f),
    "contrast": lambda x, f: _blend((_grey(x).mean((2, 3), keepdim=True) * 255).round() / 255, x, f),
    "brightness": lambda x, f: x * _view(f),
    "sharpness": lambda x, f: _blend(_smooth(x), x, f),
}
