"""Training augmentation on the device, batch-wise and per sample, from uint8 store batches ``[B, S, S, 3]``.

Each sample gets its own RandomResizedCrop, horizontal flip and RandAugment-style ops (timm's config string
``rand-mM-nN-mstdS``: N ops per sample, each applied with probability 0.5, magnitude M/10 with Gaussian noise
S). The crop, the flip and the geometric ops (rotate, shear, translate) compose into one affine map per sample,
so a single ``grid_sample`` does them all; the colour ops (brightness, contrast, colour, sharpness, solarize,
solarize-add, posterize, auto-contrast, equalize, invert) follow, per sample: timm's 15 RandAugment ops. One
difference from timm's PIL RandAugment: the ops are applied in a fixed order rather than the sampled one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
COLOUR = ("brightness", "contrast", "color", "sharpness", "solarize", "solarize_add", "posterize", "autocontrast",
          "equalize", "invert")
OPS = GEOMETRIC + COLOUR


def parse_randaugment(spec: str | None) -> tuple[int, float, float]:
    """``(num_ops, magnitude in [0, 1], magnitude std in [0, 1])`` from timm's ``rand-m9-n2-mstd0.5``."""
    if not spec:
        return 0, 0.0, 0.0
    if not spec.startswith("rand"):
        raise ValueError(f"GPU augmentation reads RandAugment strings 'rand-m9-n2-mstd0.5', not {spec!r}")
    fields = dict(re.findall(r"-(mstd|m|n|inc)([\d.]+)", spec))
    return int(fields.get("n", 2)), float(fields.get("m", 9)) / 10, float(fields.get("mstd", 0)) / 10


@dataclass(frozen=True)
class GpuAugment:
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5"

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``[B, S, S, 3]`` on any device -> normalised float ``[B, 3, size, size]`` on that device."""
        x = images.permute(0, 3, 1, 2).float() / 255
        b, device = x.shape[0], x.device
        num_ops, magnitude, mstd = parse_randaugment(self.randaugment)
        chosen = self._choose_ops(b, num_ops, device)
        mag = (magnitude + mstd * torch.randn(b, device=device)).clamp(0, 1)
        sign = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)

        # Crop (area fraction, aspect ratio, centre) and flip, as an affine map of output coords to input coords.
        area = torch.empty(b, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(b, device=device).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]))
        w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, device=device) * (1 - w) + w / 2) * 2 - 1
        cy = (torch.rand(b, device=device) * (1 - h) + h / 2) * 2 - 1
        flip = torch.where(torch.rand(b, device=device) < self.hflip, -1.0, 1.0)
        crop = torch.zeros(b, 2, 3, device=device)
        crop[:, 0, 0], crop[:, 0, 2], crop[:, 1, 1], crop[:, 1, 2] = w * flip, cx, h, cy

        # Geometric RandAugment ops, applied to the output coordinates before the crop.
        angle = chosen["rotate"] * sign * mag * math.radians(30)
        shear_x, shear_y = chosen["shear_x"] * sign * mag * 0.3, chosen["shear_y"] * sign * mag * 0.3
        shift_x = chosen["translate_x"] * sign * mag * 0.45 * 2
        shift_y = chosen["translate_y"] * sign * mag * 0.45 * 2
        cos, sin = angle.cos(), angle.sin()
        geo = torch.zeros(b, 3, 3, device=device)
        geo[:, 0, 0], geo[:, 0, 1], geo[:, 0, 2] = cos + shear_x * sin, -sin + shear_x * cos, shift_x
        geo[:, 1, 0], geo[:, 1, 1], geo[:, 1, 2] = sin + shear_y * cos, cos - shear_y * sin, shift_y
        geo[:, 2, 2] = 1
        theta = crop @ geo
        grid = F.affine_grid(theta, (b, 3, self.size, self.size), align_corners=False)
        x = F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5  # grey fill

        x = self._colour(x, chosen, mag)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return x.clamp_(0, 1).sub_(mean).div_(std)

    def _choose_ops(self, b: int, num_ops: int, device) -> dict[str, Tensor]:
        """Per sample, ``num_ops`` ops drawn uniformly (with replacement, as timm), each kept with p = 0.5."""
        counts = torch.zeros(b, len(OPS), device=device)
        if num_ops:
            picks = torch.randint(0, len(OPS), (b, num_ops), device=device)
            keep = (torch.rand(b, num_ops, device=device) < 0.5).float()
            counts.scatter_add_(1, picks, keep)
        return {op: (counts[:, i] > 0).float() for i, op in enumerate(OPS)}

    @staticmethod
    def _colour(x: Tensor, chosen: dict[str, Tensor], mag: Tensor, masked: bool | None = None) -> Tensor:
        """Colour ops, each on the samples that drew it. On CUDA every op runs on the whole batch and is masked
        (no host sync); elsewhere it runs on the chosen samples only (much less work on a CPU) and writes into
        ``x``, which must be the caller's own tensor."""
        masked = x.is_cuda if masked is None else masked
        for name, op in COLOUR_OPS.items():
            if masked:
                x = torch.where(chosen[name].view(-1, 1, 1, 1) > 0, op(x, mag.view(-1, 1, 1, 1)), x)
            else:
                idx = torch.nonzero(chosen[name]).flatten()
                if idx.numel():
                    x[idx] = op(x[idx], mag[idx].view(-1, 1, 1, 1))  # in place: x is this call's own tensor
        return x


def _factor(m: Tensor) -> Tensor:
    return 1 + m * 0.9 * torch.where(torch.rand_like(m) < 0.5, -1.0, 1.0)


def _grey(x: Tensor) -> Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(base: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    return base + (x - base) * factor


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    return _blend(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1), x, _factor(m))


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    step = 256 / 2 ** (8 - (m * 4).round()).clamp(4, 8)
    return torch.floor(x * 255 / step) * step / 255


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-6), x)


def equalize(x: Tensor, m: Tensor | None = None) -> Tensor:
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


COLOUR_OPS = {  # name -> f(images [b, 3, h, w] in [0, 1], magnitude [b, 1, 1, 1] in [0, 1])
    "brightness": lambda x, m: x * _factor(m),
    "contrast": lambda x, m: _blend(_grey(x).mean((2, 3), keepdim=True), x, _factor(m)),
    "color": lambda x, m: _blend(_grey(x), x, _factor(m)),
    "sharpness": _sharpness,
    "solarize": lambda x, m: torch.where(x >= 1 - m, 1 - x, x),
    "solarize_add": lambda x, m: torch.where(x < 0.5, (x + m * 110 / 255).clamp(max=1), x),
    "posterize": _posterize,
    "autocontrast": _autocontrast,
    "equalize": equalize,
    "invert": lambda x, m: 1 - x,
}
