"""Small data the tests generate."""

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


def colour_folder(root: Path, per_class: int = 16, colours: dict | None = None, size: int = 16) -> Path:
    """An image folder whose classes are noisy solid colours: learnable in a few steps by a tiny ViT."""
    rng = np.random.default_rng(0)
    for name, colour in (colours or COLOURS).items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
